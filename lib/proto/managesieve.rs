//! ManageSieve (RFC 5804) commands and responses, without I/O.
//!
//! A command is a line of space-separated words and strings: the command
//! name (an atom, any case), then quoted strings, literals and numbers,
//! then CRLF. The session frames it with [`literal_at_end`] (a line, the
//! announced bytes, the next line) and hands the whole to
//! [`Command::parse`].
//!
//! Literals from the client are `{N+}` (RFC 5804 §4, `literal-c2s`):
//! ManageSieve has no continuation request, so the bytes follow at once.
//! `{N}` (IMAP's synchronizing form, which some clients send) is read the
//! same way: there is nothing to wait for.

pub use crate::proto::imap::command::literal_at_end;
use crate::proto::imap::response;
use crate::proto::strings::{self, StringError};

/// Longest quoted string (RFC 5804 §4: "quoted" strings are for short
/// values; anything longer goes in a literal).
pub const QUOTED_MAX: usize = 1024;

/// One client command.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Command {
    /// AUTHENTICATE mechanism [initial-response].
    Authenticate {
        mechanism: String,
        initial: Option<String>,
    },
    StartTls,
    Logout,
    Capability,
    HaveSpace {
        name: String,
        size: u64,
    },
    PutScript {
        name: String,
        script: Vec<u8>,
    },
    ListScripts,
    /// SETACTIVE; "" deactivates.
    SetActive(String),
    GetScript(String),
    DeleteScript(String),
    RenameScript {
        old: String,
        new: String,
    },
    CheckScript(Vec<u8>),
    /// NOOP [tag]: the tag comes back in the response code (RFC 5804 §2.11).
    Noop(Option<String>),
    Unauthenticate,
}

impl Command {
    /// The command's name, for messages.
    pub fn name(&self) -> &'static str {
        match self {
            Command::Authenticate { .. } => "AUTHENTICATE",
            Command::StartTls => "STARTTLS",
            Command::Logout => "LOGOUT",
            Command::Capability => "CAPABILITY",
            Command::HaveSpace { .. } => "HAVESPACE",
            Command::PutScript { .. } => "PUTSCRIPT",
            Command::ListScripts => "LISTSCRIPTS",
            Command::SetActive(_) => "SETACTIVE",
            Command::GetScript(_) => "GETSCRIPT",
            Command::DeleteScript(_) => "DELETESCRIPT",
            Command::RenameScript { .. } => "RENAMESCRIPT",
            Command::CheckScript(_) => "CHECKSCRIPT",
            Command::Noop(_) => "NOOP",
            Command::Unauthenticate => "UNAUTHENTICATE",
        }
    }

    /// Parses one command: its line(s) with the literals inline, ending
    /// with CRLF (a bare LF is taken too).
    pub fn parse(input: &[u8]) -> Result<Command, ParseError> {
        let mut p = Parser { input, pos: 0 };
        let name = p.atom()?.to_ascii_uppercase();
        let command = match name.as_str() {
            "AUTHENTICATE" => {
                let mechanism = p.text()?.to_ascii_uppercase();
                let initial = p.optional(Parser::text)?;
                Command::Authenticate { mechanism, initial }
            }
            "STARTTLS" => Command::StartTls,
            "LOGOUT" => Command::Logout,
            "CAPABILITY" => Command::Capability,
            "HAVESPACE" => {
                let name = p.text()?;
                p.space()?;
                Command::HaveSpace {
                    name,
                    size: p.number()?,
                }
            }
            "PUTSCRIPT" => {
                let name = p.text()?;
                p.space()?;
                Command::PutScript {
                    name,
                    script: p.string()?,
                }
            }
            "LISTSCRIPTS" => Command::ListScripts,
            "SETACTIVE" => Command::SetActive(p.text()?),
            "GETSCRIPT" => Command::GetScript(p.text()?),
            "DELETESCRIPT" => Command::DeleteScript(p.text()?),
            "RENAMESCRIPT" => {
                let old = p.text()?;
                p.space()?;
                Command::RenameScript {
                    old,
                    new: p.string_text()?,
                }
            }
            "CHECKSCRIPT" => {
                p.space()?;
                Command::CheckScript(p.string()?)
            }
            "NOOP" => Command::Noop(p.optional(Parser::text)?),
            "UNAUTHENTICATE" => Command::Unauthenticate,
            _ => return Err(ParseError::Unknown(name)),
        };
        p.end()?;
        Ok(command)
    }
}

/// A client's SASL response (RFC 5804 §2.1): one string, quoted or a
/// literal, then CRLF.
pub fn parse_string_line(input: &[u8]) -> Result<String, ParseError> {
    let mut p = Parser { input, pos: 0 };
    let text = p.string_text()?;
    p.end()?;
    Ok(text)
}

/// Why a command could not be read.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ParseError {
    #[error("unknown command {0:?}")]
    Unknown(String),
    #[error("{0}")]
    Syntax(&'static str),
}

struct Parser<'a> {
    input: &'a [u8],
    pos: usize,
}

/// A string's fault in ManageSieve's words.
fn syntax(e: StringError) -> ParseError {
    ParseError::Syntax(match e {
        StringError::Unterminated => "unterminated quoted string",
        StringError::LineEnd | StringError::Nul => {
            "a quoted string may not hold CR, LF or NUL; use a literal"
        }
        StringError::BadEscape => "in a quoted string only \\\" and \\\\ are escapes",
        StringError::TooLong => "quoted string longer than 1024 bytes; use a literal",
        StringError::NoSize | StringError::SizeTooLarge => "bad literal size",
        StringError::NoClose => "bad literal: expected {N+}",
        StringError::NoLineEnd => "a literal's size must end the line",
        StringError::Short => "literal shorter than announced",
    })
}

impl Parser<'_> {
    fn peek(&self) -> Option<u8> {
        self.input.get(self.pos).copied()
    }

    /// The command name: letters only.
    fn atom(&mut self) -> Result<String, ParseError> {
        let start = self.pos;
        while self.peek().is_some_and(|b| b.is_ascii_alphabetic()) {
            self.pos += 1;
        }
        if self.pos == start {
            return Err(ParseError::Syntax("expected a command name"));
        }
        Ok(String::from_utf8_lossy(&self.input[start..self.pos]).into_owned())
    }

    fn space(&mut self) -> Result<(), ParseError> {
        if self.peek() != Some(b' ') {
            return Err(ParseError::Syntax("expected a space between arguments"));
        }
        self.pos += 1;
        Ok(())
    }

    /// A space and a string that must be UTF-8 (a name, a mechanism).
    fn text(&mut self) -> Result<String, ParseError> {
        self.space()?;
        self.string_text()
    }

    fn string_text(&mut self) -> Result<String, ParseError> {
        String::from_utf8(self.string()?).map_err(|_| ParseError::Syntax("a name must be UTF-8"))
    }

    /// `SP x`, when the line goes on.
    fn optional<T>(
        &mut self,
        item: impl FnOnce(&mut Self) -> Result<T, ParseError>,
    ) -> Result<Option<T>, ParseError> {
        if self.peek() == Some(b' ') {
            item(self).map(Some)
        } else {
            Ok(None)
        }
    }

    /// A quoted string or a literal.
    fn string(&mut self) -> Result<Vec<u8>, ParseError> {
        match self.peek() {
            Some(b'"') => self.quoted(),
            Some(b'{') => self.literal(),
            _ => Err(ParseError::Syntax("expected a string (quoted or {N+})")),
        }
    }

    fn quoted(&mut self) -> Result<Vec<u8>, ParseError> {
        strings::quoted(self.input, &mut self.pos, QUOTED_MAX).map_err(syntax)
    }

    /// `{N+}` CRLF and N bytes (`{N}` read the same way).
    fn literal(&mut self) -> Result<Vec<u8>, ParseError> {
        strings::literal(self.input, &mut self.pos).map_err(syntax)
    }

    /// HAVESPACE's size: a 32-bit number (RFC 5804 §4).
    fn number(&mut self) -> Result<u64, ParseError> {
        let start = self.pos;
        while self.peek().is_some_and(|b| b.is_ascii_digit()) {
            self.pos += 1;
        }
        std::str::from_utf8(&self.input[start..self.pos])
            .ok()
            .and_then(|d| d.parse::<u64>().ok())
            .filter(|&n| n <= u64::from(u32::MAX))
            .ok_or(ParseError::Syntax("expected a number below 4294967296"))
    }

    fn end(&mut self) -> Result<(), ParseError> {
        match &self.input[self.pos..] {
            b"\r\n" | b"\n" => Ok(()),
            _ => Err(ParseError::Syntax(
                "unexpected text after the arguments (or a missing CRLF)",
            )),
        }
    }
}

/// A string as the server sends it: quoted when it can be, else a literal
/// `{N}` CRLF (RFC 5804 `literal-s2c`).
pub fn string(text: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(text.len() + 8);
    if quotable(text) {
        response::quoted(&mut out, text);
    } else {
        response::literal(&mut out, text);
    }
    out
}

/// A string as a literal whatever it holds (a script: GETSCRIPT).
pub fn literal(text: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(text.len() + 16);
    response::literal(&mut out, text);
    out
}

/// Whether a string may be sent quoted (RFC 5804 §4: no CR, LF or NUL,
/// and short).
fn quotable(text: &[u8]) -> bool {
    text.len() <= QUOTED_MAX && !text.iter().any(|&b| matches!(b, b'\r' | b'\n' | 0))
}

/// How a command ended (RFC 5804 §1.3).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Status {
    Ok,
    No,
    Bye,
}

/// A response line: `OK`, `NO` or `BYE`, a response code in parentheses
/// (`QUOTA/MAXSIZE`, `NONEXISTENT`, …) and a human-readable string.
pub fn response(status: Status, code: Option<&str>, text: &str) -> Vec<u8> {
    let mut out = match status {
        Status::Ok => b"OK".to_vec(),
        Status::No => b"NO".to_vec(),
        Status::Bye => b"BYE".to_vec(),
    };
    if let Some(code) = code {
        out.extend_from_slice(format!(" ({code})").as_bytes());
    }
    if !text.is_empty() {
        out.push(b' ');
        out.extend_from_slice(&string(text.as_bytes()));
    }
    out.extend_from_slice(b"\r\n");
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn parse(text: &str) -> Result<Command, ParseError> {
        Command::parse(text.as_bytes())
    }

    #[test]
    fn the_rfc_examples() {
        assert_eq!(
            parse("Authenticate \"PLAIN\" \"QJIrweAPyo6Q1T9xu\"\r\n").unwrap(),
            Command::Authenticate {
                mechanism: "PLAIN".into(),
                initial: Some("QJIrweAPyo6Q1T9xu".into())
            }
        );
        assert_eq!(
            parse("AUTHENTICATE \"plain\"\r\n").unwrap(),
            Command::Authenticate {
                mechanism: "PLAIN".into(),
                initial: None
            }
        );
        assert_eq!(
            parse("Putscript \"foo\" {31+}\r\n#comment\r\nInvalidSieveCommand\r\n\r\n").unwrap(),
            Command::PutScript {
                name: "foo".into(),
                script: b"#comment\r\nInvalidSieveCommand\r\n".to_vec()
            }
        );
        assert_eq!(
            parse("HAVESPACE \"myscript\" 999999\r\n").unwrap(),
            Command::HaveSpace {
                name: "myscript".into(),
                size: 999_999
            }
        );
        assert_eq!(
            parse("Setactive \"\"\r\n").unwrap(),
            Command::SetActive(String::new())
        );
        assert_eq!(
            parse("RENAMESCRIPT \"a\" {3+}\r\nb c\r\n").unwrap(),
            Command::RenameScript {
                old: "a".into(),
                new: "b c".into()
            }
        );
        assert_eq!(
            parse("NOOP \"STARTTLS-SYNC-42\"\r\n").unwrap(),
            Command::Noop(Some("STARTTLS-SYNC-42".into()))
        );
        assert_eq!(parse("logout\n").unwrap(), Command::Logout);
        assert_eq!(
            parse("CHECKSCRIPT {4}\r\nkeep\r\n").unwrap(),
            Command::CheckScript(b"keep".to_vec()),
            "{{N}} is read as {{N+}}"
        );
        assert_eq!(
            parse("GETSCRIPT \"say \\\"hi\\\" \\\\o/\"\r\n").unwrap(),
            Command::GetScript("say \"hi\" \\o/".into())
        );
    }

    #[test]
    fn malformed_commands() {
        for bad in [
            "",
            "\r\n",
            "FROB\r\n",
            "LOGOUT now\r\n",
            "GETSCRIPT\r\n",
            "GETSCRIPT foo\r\n",
            "GETSCRIPT \"foo\"",
            "GETSCRIPT  \"foo\"\r\n",
            "GETSCRIPT \"fo\\o\"\r\n",
            "GETSCRIPT \"unterminated\r\n",
            "PUTSCRIPT \"a\" {10+}\r\nshort\r\n",
            "PUTSCRIPT \"a\" {99999999999+}\r\n",
            "PUTSCRIPT \"a\" {x}\r\n",
            "HAVESPACE \"a\" 4294967296\r\n",
            "HAVESPACE \"a\" -1\r\n",
        ] {
            assert!(Command::parse(bad.as_bytes()).is_err(), "{bad:?}");
        }
        assert!(Command::parse(b"GETSCRIPT {2+}\r\n\xff\xfe\r\n").is_err());
        assert_eq!(parse("FROB\r\n"), Err(ParseError::Unknown("FROB".into())));
        let long = format!("GETSCRIPT \"{}\"\r\n", "x".repeat(QUOTED_MAX + 1));
        assert!(parse(&long).is_err());
    }

    #[test]
    fn sasl_responses() {
        assert_eq!(parse_string_line(b"\"AGEAYg==\"\r\n").unwrap(), "AGEAYg==");
        assert_eq!(
            parse_string_line(b"{8+}\r\nAGEAYg==\r\n").unwrap(),
            "AGEAYg=="
        );
        assert_eq!(parse_string_line(b"\"*\"\r\n").unwrap(), "*");
        assert!(parse_string_line(b"AGEAYg==\r\n").is_err());
    }

    #[test]
    fn responses() {
        assert_eq!(response(Status::Ok, None, ""), b"OK\r\n");
        assert_eq!(
            response(Status::No, Some("NONEXISTENT"), "no script \"x\""),
            b"NO (NONEXISTENT) \"no script \\\"x\\\"\"\r\n"
        );
        assert_eq!(
            response(Status::No, None, "line 1\nline 2"),
            b"NO {13}\r\nline 1\nline 2\r\n"
        );
        assert_eq!(string(b"a\\b"), b"\"a\\\\b\"");
    }

    /// How a client might send a string: quoted if it can be, or a literal
    /// in either form.
    fn encode(text: &[u8], how: u8) -> Vec<u8> {
        let mut out = match how % 3 {
            0 if quotable(text) => return string(text),
            1 => format!("{{{}}}\r\n", text.len()).into_bytes(),
            _ => format!("{{{}+}}\r\n", text.len()).into_bytes(),
        };
        out.extend_from_slice(text);
        out
    }

    proptest! {
        #[test]
        fn parse_never_panics(input in proptest::collection::vec(any::<u8>(), 0..300)) {
            let _ = Command::parse(&input);
        }

        #[test]
        fn prefixes_of_a_command_never_panic(
            name in "[a-zA-Z]{1,14}",
            rest in proptest::collection::vec(any::<u8>(), 0..100),
        ) {
            let mut input = name.into_bytes();
            input.push(b' ');
            input.extend_from_slice(&rest);
            let _ = Command::parse(&input);
        }

        #[test]
        fn strings_round_trip(
            name in "\\PC{0,40}",
            script in proptest::collection::vec(any::<u8>(), 0..2000),
            how in any::<u8>(),
            how2 in any::<u8>(),
        ) {
            let mut input = b"PUTSCRIPT ".to_vec();
            input.extend_from_slice(&encode(name.as_bytes(), how));
            input.push(b' ');
            input.extend_from_slice(&encode(&script, how2));
            input.extend_from_slice(b"\r\n");
            prop_assert_eq!(
                Command::parse(&input).unwrap(),
                Command::PutScript { name: name.clone(), script: script.clone() }
            );
            let mut input = b"renamescript ".to_vec();
            input.extend_from_slice(&encode(name.as_bytes(), how2));
            input.push(b' ');
            input.extend_from_slice(&encode(b"new", how));
            input.extend_from_slice(b"\r\n");
            prop_assert_eq!(
                Command::parse(&input).unwrap(),
                Command::RenameScript { old: name, new: "new".into() }
            );
        }
    }
}
