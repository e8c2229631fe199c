//! Sieve syntax (RFC 5228 §2 and §8): the lexer and the parser into a
//! generic tree of commands, tests and arguments. Meaning (which commands
//! exist, what their arguments must be) is checked by `compile`.
//!
//! Every error names the line and column where it was found. Limits keep
//! a hostile script small: nesting depth, string length, script size.

use super::SieveError;

/// The deepest nesting of blocks and test lists.
const MAX_DEPTH: usize = 32;
/// The longest script.
pub const MAX_SCRIPT: usize = crate::config::SIEVE_SCRIPT_MAX;

/// A script file's bytes as text. RFC 5228 §8.1 lets a comment hold any
/// octets (a Latin-1 signature, say), so bytes that are not UTF-8 inside
/// a comment become `?`; anywhere else they are an error naming where.
pub fn script_text(bytes: &[u8]) -> Result<std::borrow::Cow<'_, str>, SieveError> {
    if let Ok(text) = std::str::from_utf8(bytes) {
        return Ok(text.into());
    }
    let in_comment = comment_mask(bytes);
    let mut text = String::with_capacity(bytes.len());
    let mut at = 0;
    for chunk in bytes.utf8_chunks() {
        text.push_str(chunk.valid());
        at += chunk.valid().len();
        let invalid = chunk.invalid();
        if invalid.is_empty() {
            continue;
        }
        if !in_comment.get(at).copied().unwrap_or(false) {
            let before = &bytes[..at];
            let line = before.iter().filter(|&&b| b == b'\n').count() + 1;
            let line_start = before
                .iter()
                .rposition(|&b| b == b'\n')
                .map_or(0, |i| i + 1);
            let column = String::from_utf8_lossy(&before[line_start..])
                .chars()
                .count()
                + 1;
            return Err(SieveError {
                line,
                column,
                message: "this is not UTF-8 text (only a comment may hold other bytes)".into(),
            });
        }
        text.extend(std::iter::repeat_n('?', invalid.len()));
        at += invalid.len();
    }
    Ok(text.into())
}

/// Which bytes of a script are inside a `#` or `/* */` comment, found by
/// the lexer's rules for strings and `text:` blocks (whose quotes and
/// hashes are not comments).
fn comment_mask(bytes: &[u8]) -> Vec<bool> {
    let mut mask = vec![false; bytes.len()];
    let mut i = 0;
    let at_line_start = |i: usize| i == 0 || bytes[i - 1] == b'\n';
    while i < bytes.len() {
        match bytes[i] {
            b'#' => {
                while i < bytes.len() && bytes[i] != b'\n' {
                    mask[i] = true;
                    i += 1;
                }
            }
            b'/' if bytes.get(i + 1) == Some(&b'*') => {
                let end = bytes[i + 2..]
                    .windows(2)
                    .position(|w| w == b"*/")
                    .map_or(bytes.len(), |p| i + 2 + p + 2);
                mask[i..end].iter_mut().for_each(|m| *m = true);
                i = end;
            }
            b'"' => {
                i += 1;
                while i < bytes.len() && bytes[i] != b'"' {
                    i += if bytes[i] == b'\\' { 2 } else { 1 };
                }
                i += 1;
            }
            b't' | b'T'
                if bytes.len() >= i + 5
                    && bytes[i..i + 5].eq_ignore_ascii_case(b"text:")
                    && (i == 0
                        || !(bytes[i - 1].is_ascii_alphanumeric() || bytes[i - 1] == b'_')) =>
            {
                // The rest of this line may be a comment; then lines up to
                // one that is a lone dot.
                i += 5;
                while i < bytes.len() && bytes[i] != b'\n' {
                    if bytes[i] == b'#' {
                        while i < bytes.len() && bytes[i] != b'\n' {
                            mask[i] = true;
                            i += 1;
                        }
                        break;
                    }
                    i += 1;
                }
                i += 1;
                while i < bytes.len() {
                    let end = bytes[i..]
                        .iter()
                        .position(|&b| b == b'\n')
                        .map_or(bytes.len(), |p| i + p);
                    let line = &bytes[i..end];
                    let is_dot = line == b"." || line == b".\r";
                    i = end + 1;
                    if is_dot && at_line_start(end - line.len()) {
                        break;
                    }
                }
            }
            _ => i += 1,
        }
    }
    mask
}

#[derive(Debug, Clone, PartialEq)]
pub enum Arg {
    Strings(Vec<String>),
    Number(u64),
    Tag(String),
}

#[derive(Debug, Clone, PartialEq)]
pub struct Test {
    pub name: String,
    pub args: Vec<Arg>,
    pub tests: Vec<Test>,
    pub line: usize,
    pub column: usize,
}

#[derive(Debug, Clone, PartialEq)]
pub struct Command {
    pub name: String,
    pub args: Vec<Arg>,
    pub tests: Vec<Test>,
    pub block: Option<Vec<Command>>,
    pub line: usize,
    pub column: usize,
}

#[derive(Debug, Clone, PartialEq)]
enum Token {
    Identifier(String),
    Tag(String),
    Number(u64),
    String(String),
    Punct(char),
}

struct Lexer<'a> {
    text: &'a [u8],
    at: usize,
    line: usize,
    column: usize,
}

impl<'a> Lexer<'a> {
    fn error(&self, message: impl Into<String>) -> SieveError {
        SieveError {
            line: self.line,
            column: self.column,
            message: message.into(),
        }
    }

    fn peek_byte(&self) -> Option<u8> {
        self.text.get(self.at).copied()
    }

    fn bump(&mut self) -> Option<u8> {
        let b = self.peek_byte()?;
        self.at += 1;
        if b == b'\n' {
            self.line += 1;
            self.column = 1;
        } else if b & 0xC0 != 0x80 {
            self.column += 1;
        }
        Some(b)
    }

    fn skip_blanks(&mut self) -> Result<(), SieveError> {
        loop {
            match self.peek_byte() {
                Some(b' ' | b'\t' | b'\r' | b'\n') => {
                    self.bump();
                }
                Some(b'#') => {
                    while let Some(b) = self.bump() {
                        if b == b'\n' {
                            break;
                        }
                    }
                }
                Some(b'/') if self.text.get(self.at + 1) == Some(&b'*') => {
                    let (line, column) = (self.line, self.column);
                    self.bump();
                    self.bump();
                    loop {
                        match self.bump() {
                            Some(b'*') if self.peek_byte() == Some(b'/') => {
                                self.bump();
                                break;
                            }
                            Some(_) => {}
                            None => {
                                return Err(SieveError {
                                    line,
                                    column,
                                    message: "comment not closed with */".into(),
                                });
                            }
                        }
                    }
                }
                _ => return Ok(()),
            }
        }
    }

    /// The next token with where it starts, or `None` at the end.
    fn next(&mut self) -> Result<Option<(Token, usize, usize)>, SieveError> {
        self.skip_blanks()?;
        let (line, column) = (self.line, self.column);
        let Some(b) = self.peek_byte() else {
            return Ok(None);
        };
        let token = match b {
            b'a'..=b'z' | b'A'..=b'Z' | b'_' => Token::Identifier(self.word()),
            b':' => {
                self.bump();
                match self.peek_byte() {
                    Some(b'a'..=b'z' | b'A'..=b'Z' | b'_') => Token::Tag(self.word()),
                    _ => return Err(self.error("a tag is ':' followed by a name")),
                }
            }
            b'0'..=b'9' => Token::Number(self.number()?),
            b'"' => Token::String(self.quoted()?),
            b'[' | b']' | b'(' | b')' | b'{' | b'}' | b',' | b';' => {
                self.bump();
                Token::Punct(b as char)
            }
            _ => {
                let shown = String::from_utf8_lossy(
                    &self.text[self.at..(self.at + 4).min(self.text.len())],
                )
                .chars()
                .next()
                .unwrap_or('?');
                return Err(self.error(format!("unexpected {shown:?}")));
            }
        };
        // `text:` starts a multi-line string (§2.4.2).
        if matches!(&token, Token::Identifier(word) if word == "text")
            && self.peek_byte() == Some(b':')
        {
            self.bump();
            return Ok(Some((Token::String(self.multiline()?), line, column)));
        }
        Ok(Some((token, line, column)))
    }

    fn word(&mut self) -> String {
        let start = self.at;
        while let Some(b'a'..=b'z' | b'A'..=b'Z' | b'_' | b'0'..=b'9') = self.peek_byte() {
            self.bump();
        }
        String::from_utf8_lossy(&self.text[start..self.at]).to_ascii_lowercase()
    }

    fn number(&mut self) -> Result<u64, SieveError> {
        let start = self.at;
        while let Some(b'0'..=b'9') = self.peek_byte() {
            self.bump();
        }
        let digits = std::str::from_utf8(&self.text[start..self.at]).unwrap_or("0");
        let n: u64 = digits
            .parse()
            .map_err(|_| self.error(format!("{digits} is too large a number")))?;
        let scale: u64 = match self.peek_byte() {
            Some(b'K' | b'k') => 1 << 10,
            Some(b'M' | b'm') => 1 << 20,
            Some(b'G' | b'g') => 1 << 30,
            _ => 1,
        };
        if scale > 1 {
            self.bump();
        }
        n.checked_mul(scale)
            .ok_or_else(|| self.error(format!("{digits} is too large a number")))
    }

    fn quoted(&mut self) -> Result<String, SieveError> {
        let (line, column) = (self.line, self.column);
        self.bump();
        let mut out = Vec::new();
        loop {
            match self.bump() {
                Some(b'"') => break,
                Some(b'\\') => match self.bump() {
                    Some(b) => out.push(b),
                    None => break,
                },
                Some(b) => out.push(b),
                None => {
                    return Err(SieveError {
                        line,
                        column,
                        message: "string not closed with \"".into(),
                    });
                }
            }
        }
        String::from_utf8(out).map_err(|_| SieveError {
            line,
            column,
            message: "a string that is not UTF-8".into(),
        })
    }

    /// `text:` … CRLF `.` CRLF, with dot-stuffing (§2.4.2).
    fn multiline(&mut self) -> Result<String, SieveError> {
        let (line, column) = (self.line, self.column);
        // The rest of the `text:` line may hold blanks and a comment.
        while let Some(b) = self.bump() {
            if b == b'\n' {
                break;
            }
        }
        let mut out = String::new();
        loop {
            let start = self.at;
            while let Some(b) = self.bump() {
                if b == b'\n' {
                    break;
                }
            }
            if start == self.at {
                return Err(SieveError {
                    line,
                    column,
                    message: "multi-line string not ended by a line with a single '.'".into(),
                });
            }
            let raw = String::from_utf8_lossy(&self.text[start..self.at]);
            let text = raw.trim_end_matches('\n').trim_end_matches('\r');
            if text == "." {
                return Ok(out);
            }
            let text = text
                .strip_prefix('.')
                .filter(|t| t.starts_with('.'))
                .unwrap_or(text);
            out.push_str(text);
            out.push_str("\r\n");
        }
    }
}

/// Parses a script into commands.
pub fn parse(script: &str) -> Result<Vec<Command>, SieveError> {
    if script.len() > MAX_SCRIPT {
        return Err(SieveError {
            line: 1,
            column: 1,
            message: format!("the script is over {MAX_SCRIPT} bytes"),
        });
    }
    let mut lexer = Lexer {
        text: script.as_bytes(),
        at: 0,
        line: 1,
        column: 1,
    };
    let mut tokens = Vec::new();
    while let Some(token) = lexer.next()? {
        tokens.push(token);
    }
    let end = (lexer.line, lexer.column);
    let mut parser = Parser { tokens, at: 0, end };
    let commands = parser.commands(0)?;
    if let Some((_, line, column)) = parser.tokens.get(parser.at) {
        return Err(SieveError {
            line: *line,
            column: *column,
            message: "'}' without a block to close".into(),
        });
    }
    Ok(commands)
}

struct Parser {
    tokens: Vec<(Token, usize, usize)>,
    at: usize,
    end: (usize, usize),
}

impl Parser {
    fn peek(&self) -> Option<&Token> {
        self.tokens.get(self.at).map(|(t, _, _)| t)
    }

    fn here(&self) -> (usize, usize) {
        self.tokens
            .get(self.at)
            .map(|(_, l, c)| (*l, *c))
            .unwrap_or(self.end)
    }

    fn error(&self, message: impl Into<String>) -> SieveError {
        let (line, column) = self.here();
        SieveError {
            line,
            column,
            message: message.into(),
        }
    }

    fn is(&self, c: char) -> bool {
        self.peek() == Some(&Token::Punct(c))
    }

    fn commands(&mut self, depth: usize) -> Result<Vec<Command>, SieveError> {
        if depth > MAX_DEPTH {
            return Err(self.error(format!("blocks nest deeper than {MAX_DEPTH}")));
        }
        let mut out = Vec::new();
        while let Some(token) = self.peek() {
            if *token == Token::Punct('}') {
                break;
            }
            let (line, column) = self.here();
            let Some(Token::Identifier(name)) = self.peek().cloned() else {
                return Err(self.error("a command name was expected here"));
            };
            self.at += 1;
            let (args, tests) = self.arguments(depth)?;
            let block = if self.is(';') {
                self.at += 1;
                None
            } else if self.is('{') {
                self.at += 1;
                let block = self.commands(depth + 1)?;
                if !self.is('}') {
                    return Err(self.error("block not closed with '}'"));
                }
                self.at += 1;
                Some(block)
            } else {
                return Err(self.error(format!("';' or '{{' expected after {name}")));
            };
            out.push(Command {
                name,
                args,
                tests,
                block,
                line,
                column,
            });
        }
        Ok(out)
    }

    /// `*argument [test / test-list]`
    fn arguments(&mut self, depth: usize) -> Result<(Vec<Arg>, Vec<Test>), SieveError> {
        let mut args = Vec::new();
        loop {
            match self.peek().cloned() {
                Some(Token::Tag(tag)) => {
                    self.at += 1;
                    args.push(Arg::Tag(tag));
                }
                Some(Token::Number(n)) => {
                    self.at += 1;
                    args.push(Arg::Number(n));
                }
                Some(Token::String(s)) => {
                    self.at += 1;
                    args.push(Arg::Strings(vec![s]));
                }
                Some(Token::Punct('[')) => args.push(Arg::Strings(self.string_list()?)),
                _ => break,
            }
        }
        let tests = match self.peek().cloned() {
            Some(Token::Identifier(_)) => vec![self.test(depth + 1)?],
            Some(Token::Punct('(')) => self.test_list(depth + 1)?,
            _ => Vec::new(),
        };
        Ok((args, tests))
    }

    fn string_list(&mut self) -> Result<Vec<String>, SieveError> {
        self.at += 1;
        let mut out = Vec::new();
        loop {
            match self.peek().cloned() {
                Some(Token::String(s)) => {
                    self.at += 1;
                    out.push(s);
                }
                _ => return Err(self.error("a string was expected in the list")),
            }
            if self.is(',') {
                self.at += 1;
                continue;
            }
            if self.is(']') {
                self.at += 1;
                return Ok(out);
            }
            return Err(self.error("',' or ']' expected in a string list"));
        }
    }

    fn test(&mut self, depth: usize) -> Result<Test, SieveError> {
        if depth > MAX_DEPTH {
            return Err(self.error(format!("tests nest deeper than {MAX_DEPTH}")));
        }
        let (line, column) = self.here();
        let Some(Token::Identifier(name)) = self.peek().cloned() else {
            return Err(self.error("a test was expected here"));
        };
        self.at += 1;
        let (args, tests) = self.arguments(depth)?;
        Ok(Test {
            name,
            args,
            tests,
            line,
            column,
        })
    }

    fn test_list(&mut self, depth: usize) -> Result<Vec<Test>, SieveError> {
        self.at += 1;
        let mut out = Vec::new();
        loop {
            out.push(self.test(depth + 1)?);
            if self.is(',') {
                self.at += 1;
                continue;
            }
            if self.is(')') {
                self.at += 1;
                return Ok(out);
            }
            return Err(self.error("',' or ')' expected in a test list"));
        }
    }
}

#[cfg(test)]
mod tests {

    #[test]
    fn other_bytes_may_stand_in_comments_only() {
        // A Latin-1 "é" in a hash comment, a bracket comment, and after
        // the `text:` that opens a multi-line string.
        let fine = b"# caf\xe9\r\n/* na\xefve */ keep; # \"quoted\xe9\r\nif true { vacation text: # \xe9\r\nhi\r\n.\r\n; }\r\n";
        let text = script_text(fine).unwrap();
        assert!(text.contains("caf?") && text.contains("na?ve"), "{text}");
        // In a string, a multi-line string, or code: an error naming where.
        for (bad, line, column) in [
            (&b"keep;\r\nfileinto \"caf\xe9\";"[..], 2, 14),
            (&b"vacation text:\r\nsch\xf6n\r\n.\r\n;"[..], 2, 4),
            (&b"\"# not a comment \xe9\""[..], 1, 18),
            (&b"keep\xff;"[..], 1, 5),
        ] {
            let error = script_text(bad).unwrap_err();
            assert_eq!((error.line, error.column), (line, column), "{bad:?}");
        }
    }

    use super::*;

    #[test]
    fn parses_the_rfc_example_shapes() {
        let script = "require [\"fileinto\"];\r\n# comment\r\nif header :contains \"from\" \"coyote\" {\r\n  discard;\r\n} elsif anyof (not address :all :is \"to\" \"x@y\", size :over 100K) {\r\n  fileinto \"INBOX.x\";\r\n}\r\n/* block\r\ncomment */ keep;\r\n";
        let commands = parse(script).unwrap();
        assert_eq!(commands.len(), 4);
        assert_eq!(commands[1].name, "if");
        assert_eq!(commands[2].name, "elsif");
        assert_eq!(commands[2].tests[0].name, "anyof");
        assert_eq!(
            commands[2].tests[0].tests[1].args[1],
            Arg::Number(100 << 10)
        );
    }

    #[test]
    fn multiline_strings_and_escapes() {
        let commands = parse("x text:  # c\r\n..dot\r\nline\r\n.\r\n \"a\\\"b\";").unwrap();
        assert_eq!(
            commands[0].args,
            [
                Arg::Strings(vec![".dot\r\nline\r\n".into()]),
                Arg::Strings(vec!["a\"b".into()])
            ]
        );
    }

    #[test]
    fn errors_name_line_and_column() {
        for (script, line, column) in [
            ("keep", 1, 5),
            ("if true {\n  keep;\n", 3, 1),
            ("keep;\n}", 2, 1),
            ("x \"open", 1, 3),
            ("x [\"a\" \"b\"];", 1, 8),
            ("/* never", 1, 1),
        ] {
            let e = parse(script).unwrap_err();
            assert_eq!((e.line, e.column), (line, column), "{script:?}: {e}");
        }
        let deep = "if true {".repeat(100);
        assert!(parse(&deep).unwrap_err().message.contains("nest"));
    }

    proptest::proptest! {
        #[test]
        fn never_panics(text in "\\PC{0,400}") {
            let _ = parse(&text);
        }

        #[test]
        fn any_bytes_read_as_text_or_an_error_without_a_panic(
            bytes in proptest::collection::vec(proptest::prelude::any::<u8>(), 0..400)
        ) {
            match script_text(&bytes) {
                Ok(text) => {
                    proptest::prop_assert_eq!(text.chars().count() >= 1, !bytes.is_empty());
                    if let Ok(utf8) = std::str::from_utf8(&bytes) {
                        proptest::prop_assert_eq!(&*text, utf8);
                    }
                }
                Err(error) => proptest::prop_assert!(error.line >= 1 && error.column >= 1),
            }
        }

        #[test]
        fn never_panics_on_sieve_shaped_junk(text in "(if|keep|\"[a-z]*\"|:is|\\[|\\]|\\(|\\)|\\{|\\}|;|,|[0-9]+K| |text:\\r\\n|\\.\\r\\n){0,60}") {
            let _ = parse(&text);
        }
    }
}
