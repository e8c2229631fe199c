//! POP3 pieces that do no I/O: the command parser and the encoder that
//! turns a stored message into a RETR or TOP response.
//!
//! `pop3-serve` reads lines and writes bytes; everything it decides about
//! what a line means, and what octets a message becomes on the wire, is
//! here, so it is tested without a socket (and fuzzed: nothing a client
//! sends makes the parser panic).
//!
//! Grammar (RFC 1939 §3, RFC 2449 §3): a case-insensitive keyword of three
//! or four characters, then arguments separated by a space, the line ended
//! by CRLF. The parser is lenient where real clients are sloppy (a bare LF
//! ends a line too, runs of spaces separate arguments) and strict where it
//! matters: a message number is `1*DIGIT` and nothing else, and PASS keeps
//! its whole argument, spaces included (RFC 1939 §7 allows that).
//!
//! On the wire (RFC 1939 §3): every line ends with CRLF, a line starting
//! with "." gets another "." in front, and "." CRLF ends the response. The
//! lines are the message's wire form (`proto::message`, what IMAP sends
//! and `,W=` counts): a stored line ending in LF gets a CR before the LF;
//! one already ending in CRLF is sent as it is; a last line without any
//! line end gets CRLF. The
//! octet count [`Transmit::octets`] is the message as the client keeps it
//! after undoing the dot-stuffing: what LIST and STAT must report
//! (RFC 1939 §5, "exact size").

use std::fmt;

use crate::proto::message::WireForm;

/// The longest argument RFC 1939 §3 allows. Longer USER names are refused
/// here; PASS and AUTH responses may be longer (RFC 5034 §4).
pub const ARGUMENT_MAX: usize = 40;

/// A message number as the client gave it: 1 or more, as in RFC 1939 §5.
/// Numbers that cannot name a message (0, signs, non-digits, more than nine
/// digits) are refused by the parser, so a session only checks the upper
/// bound.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MessageNumber(u32);

impl MessageNumber {
    /// The 0-based index into the session's list.
    pub fn index(self) -> usize {
        self.0 as usize - 1
    }
    pub fn get(self) -> u32 {
        self.0
    }
}

impl fmt::Display for MessageNumber {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.fmt(f)
    }
}

/// A password, never printed.
#[derive(Clone, PartialEq, Eq)]
pub struct Password(pub String);

impl fmt::Debug for Password {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Password(<redacted>)")
    }
}

/// One POP3 command (RFC 1939, RFC 2449 CAPA, RFC 2595 STLS, RFC 5034 AUTH).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Command {
    Capa,
    Stls,
    /// `USER name`
    User(String),
    /// `PASS string`: everything after the first space.
    Pass(Password),
    /// `AUTH [mechanism [initial-response]]`; no mechanism asks for the
    /// list of mechanisms (an old, widespread client habit).
    Auth {
        mechanism: Option<String>,
        initial: Option<String>,
    },
    /// `APOP name digest`: recognised so that it gets a clear refusal
    /// rather than "unknown command".
    Apop,
    Stat,
    List(Option<MessageNumber>),
    Retr(MessageNumber),
    Dele(MessageNumber),
    Noop,
    Rset,
    Quit,
    /// `TOP msg n`: headers, the blank line, and `n` body lines. A huge `n`
    /// means the whole body.
    Top(MessageNumber, u64),
    Uidl(Option<MessageNumber>),
}

/// Why a line is not a command, with the reply text to send after `-ERR `.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ParseError {
    /// An empty line.
    Empty,
    /// A keyword this server does not know.
    Unknown,
    /// A known keyword with missing, extra or malformed arguments; the
    /// text shows the right form.
    Syntax(&'static str),
    /// A message number that can name no message (0, negative, not a
    /// number, absurdly large).
    NoSuchMessage,
}

impl fmt::Display for ParseError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ParseError::Empty => f.write_str("empty command"),
            ParseError::Unknown => f.write_str("unknown command"),
            ParseError::Syntax(usage) => write!(f, "syntax: {usage}"),
            ParseError::NoSuchMessage => f.write_str("no such message"),
        }
    }
}

impl Command {
    /// Parses one line as read from the client, line end included or not.
    pub fn parse(line: &[u8]) -> Result<Command, ParseError> {
        let line = strip_line_end(line);
        if line.is_empty() {
            return Err(ParseError::Empty);
        }
        let (keyword, rest) = match line.iter().position(|&b| b == b' ') {
            Some(space) => (&line[..space], &line[space + 1..]),
            None => (line, &b""[..]),
        };
        if keyword.len() > 4 {
            return Err(ParseError::Unknown);
        }
        let mut upper = [0u8; 4];
        for (u, k) in upper.iter_mut().zip(keyword) {
            *u = k.to_ascii_uppercase();
        }
        let keyword = &upper[..keyword.len()];
        let args = Args::new(rest);
        let command = match keyword {
            b"CAPA" => args.none(Command::Capa, "CAPA")?,
            b"STLS" => args.none(Command::Stls, "STLS")?,
            b"STAT" => args.none(Command::Stat, "STAT")?,
            b"NOOP" => args.none(Command::Noop, "NOOP")?,
            b"RSET" => args.none(Command::Rset, "RSET")?,
            b"QUIT" => args.none(Command::Quit, "QUIT")?,
            b"USER" => {
                let name = text(rest.trim_ascii()).ok_or(ParseError::Syntax("USER name"))?;
                if name.is_empty() || name.len() > ARGUMENT_MAX * 4 || name.contains(' ') {
                    return Err(ParseError::Syntax("USER name"));
                }
                Command::User(name.to_string())
            }
            // RFC 1939 §7: spaces may be part of the password, so the
            // argument is the rest of the line, as it is.
            b"PASS" => {
                let password = text(rest).ok_or(ParseError::Syntax("PASS password"))?;
                if password.is_empty() {
                    return Err(ParseError::Syntax("PASS password"));
                }
                Command::Pass(Password(password.to_string()))
            }
            b"AUTH" => {
                let mut words = args.words();
                let mechanism = words.next().map(|m| m.to_ascii_uppercase());
                let initial = words.next().map(str::to_string);
                if words.next().is_some() {
                    return Err(ParseError::Syntax("AUTH mechanism [initial-response]"));
                }
                Command::Auth { mechanism, initial }
            }
            b"APOP" => Command::Apop,
            b"LIST" => Command::List(args.optional_number("LIST [msg]")?),
            b"UIDL" => Command::Uidl(args.optional_number("UIDL [msg]")?),
            b"RETR" => Command::Retr(args.one_number("RETR msg")?),
            b"DELE" => Command::Dele(args.one_number("DELE msg")?),
            b"TOP" => {
                let mut words = args.words();
                let (Some(msg), Some(lines), None) = (words.next(), words.next(), words.next())
                else {
                    return Err(ParseError::Syntax("TOP msg n"));
                };
                let msg = message_number(msg)?;
                let lines = line_count(lines).ok_or(ParseError::Syntax("TOP msg n"))?;
                Command::Top(msg, lines)
            }
            _ => return Err(ParseError::Unknown),
        };
        Ok(command)
    }

    /// The keyword, for logs and error messages.
    pub fn name(&self) -> &'static str {
        match self {
            Command::Capa => "CAPA",
            Command::Stls => "STLS",
            Command::User(_) => "USER",
            Command::Pass(_) => "PASS",
            Command::Auth { .. } => "AUTH",
            Command::Apop => "APOP",
            Command::Stat => "STAT",
            Command::List(_) => "LIST",
            Command::Retr(_) => "RETR",
            Command::Dele(_) => "DELE",
            Command::Noop => "NOOP",
            Command::Rset => "RSET",
            Command::Quit => "QUIT",
            Command::Top(..) => "TOP",
            Command::Uidl(_) => "UIDL",
        }
    }
}

/// The line without its CRLF or LF.
pub fn strip_line_end(line: &[u8]) -> &[u8] {
    let line = line.strip_suffix(b"\n").unwrap_or(line);
    line.strip_suffix(b"\r").unwrap_or(line)
}

/// Arguments as UTF-8 text without control characters, or None.
fn text(bytes: &[u8]) -> Option<&str> {
    let text = std::str::from_utf8(bytes).ok()?;
    (!text.chars().any(char::is_control)).then_some(text)
}

/// The arguments after the keyword.
struct Args<'a> {
    rest: Option<&'a str>,
}

impl<'a> Args<'a> {
    fn new(rest: &'a [u8]) -> Args<'a> {
        Args { rest: text(rest) }
    }

    /// Space-separated words; a line that is not clean text has one word
    /// that no rule accepts, so it is refused as a syntax error.
    fn words(&self) -> impl Iterator<Item = &'a str> + use<'a> {
        let rest = self.rest.unwrap_or("\u{fffd}");
        rest.split(' ').filter(|w| !w.is_empty())
    }

    fn none(&self, command: Command, usage: &'static str) -> Result<Command, ParseError> {
        match self.words().next() {
            None => Ok(command),
            Some(_) => Err(ParseError::Syntax(usage)),
        }
    }

    fn optional_number(&self, usage: &'static str) -> Result<Option<MessageNumber>, ParseError> {
        let mut words = self.words();
        match (words.next(), words.next()) {
            (None, _) => Ok(None),
            (Some(n), None) => message_number(n).map(Some),
            _ => Err(ParseError::Syntax(usage)),
        }
    }

    fn one_number(&self, usage: &'static str) -> Result<MessageNumber, ParseError> {
        self.optional_number(usage)?
            .ok_or(ParseError::Syntax(usage))
    }
}

/// `msg = 1*DIGIT` naming a message (RFC 1939 §5: "message-number"); at
/// most nine digits, since no mailbox holds a billion messages.
fn message_number(word: &str) -> Result<MessageNumber, ParseError> {
    if word.is_empty() || word.len() > 9 || !word.bytes().all(|b| b.is_ascii_digit()) {
        return Err(ParseError::NoSuchMessage);
    }
    match word.parse::<u32>() {
        Ok(n) if n > 0 => Ok(MessageNumber(n)),
        _ => Err(ParseError::NoSuchMessage),
    }
}

/// TOP's `n` (RFC 1939 §7: "a non-negative number"): any run of digits; one
/// too large for a u64 means "all of it" anyway.
fn line_count(word: &str) -> Option<u64> {
    if word.is_empty() || !word.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    Some(word.parse::<u64>().unwrap_or(u64::MAX))
}

/// The longest unique-id RFC 1939 §7 allows.
pub const UIDL_MAX: usize = 70;

/// The UIDL of a message with this maildir base name: the base name itself,
/// as qmail-pop3d gives it, when RFC 1939 §7 allows it (1 to 70 characters
/// in 0x21-0x7E); otherwise 40 hex digits of its SHA-256. Either way it
/// depends on the base name alone, which neither a move from new/ to cur/
/// nor a flag change touches, so it is the same in every session.
pub fn uidl(base: &str) -> std::borrow::Cow<'_, str> {
    let fits = !base.is_empty()
        && base.len() <= UIDL_MAX
        && base.bytes().all(|b| (0x21..=0x7e).contains(&b));
    if fits {
        return std::borrow::Cow::Borrowed(base);
    }
    use sha2::Digest;
    let digest = sha2::Sha256::digest(base.as_bytes());
    let hex: String = digest[..20].iter().map(|b| format!("{b:02x}")).collect();
    std::borrow::Cow::Owned(hex)
}

/// Decodes an RFC 4616 PLAIN response (base64 of `authzid NUL authcid NUL
/// passwd`) into login and password. An authorization identity other than
/// the login itself is refused: nobody may act as someone else here.
pub fn decode_plain(response: &str) -> Option<(String, Password)> {
    crate::proto::sasl::decode_plain(response).map(|(login, password)| (login, Password(password)))
}

/// Turns the bytes of a stored message into a RETR or TOP response body:
/// the message's wire form (`proto::message`, the one line-end rule IMAP
/// and `,W=` follow too), dot-stuffing, TOP's line limit, and the
/// terminating "." CRLF. Feed it the file in chunks of any size.
#[derive(Debug, Clone)]
pub struct Transmit {
    wire: WireForm,
    in_headers: bool,
    /// TOP: body lines still to send; None for RETR.
    body_lines_left: Option<u64>,
    done: bool,
}

impl Transmit {
    /// RETR: the whole message.
    pub fn whole() -> Transmit {
        Transmit {
            wire: WireForm::new(),
            in_headers: true,
            body_lines_left: None,
            done: false,
        }
    }

    /// TOP: the header, the blank line after it, then `lines` body lines.
    pub fn top(lines: u64) -> Transmit {
        Transmit {
            body_lines_left: Some(lines),
            ..Transmit::whole()
        }
    }

    /// True once TOP has sent all it should: read no more of the file.
    pub fn is_done(&self) -> bool {
        self.done
    }

    /// Message octets sent so far: CRLF line ends, dot-stuffing not
    /// counted. After [`Transmit::finish`] on a RETR this must equal the
    /// size LIST gave.
    pub fn octets(&self) -> u64 {
        self.wire.octets()
    }

    /// Encodes the next chunk of the file into `out`.
    pub fn feed(&mut self, mut input: &[u8], out: &mut Vec<u8>) {
        while !input.is_empty() && !self.done {
            if self.wire.at_line_start() && input[0] == b'.' {
                out.push(b'.');
            }
            if let Some(line) = self.wire.encode_line(&mut input, out) {
                self.end_line(line.empty);
            }
        }
    }

    fn end_line(&mut self, empty: bool) {
        if self.in_headers {
            if empty {
                self.in_headers = false;
                self.done = self.body_lines_left == Some(0);
            }
        } else if let Some(left) = &mut self.body_lines_left {
            *left = left.saturating_sub(1);
            self.done = *left == 0;
        }
    }

    /// Ends the response: a CRLF if the message's last line had no line
    /// end (counted: it is part of the message as the client stores it),
    /// then "." CRLF.
    pub fn finish(&mut self, out: &mut Vec<u8>) {
        self.wire.finish(out);
        out.extend_from_slice(b".\r\n");
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn n(i: u32) -> MessageNumber {
        MessageNumber(i)
    }

    #[test]
    fn commands_of_rfc_1939_and_its_extensions() {
        let table: &[(&[u8], Command)] = &[
            (b"CAPA\r\n", Command::Capa),
            (b"capa\n", Command::Capa),
            (b"StLs\r\n", Command::Stls),
            (
                b"USER ann@example.test\r\n",
                Command::User("ann@example.test".into()),
            ),
            (
                b"PASS  two  spaces \r\n",
                Command::Pass(Password(" two  spaces ".into())),
            ),
            (
                b"AUTH plain AGFubgBzZWNyZXQ=\r\n",
                Command::Auth {
                    mechanism: Some("PLAIN".into()),
                    initial: Some("AGFubgBzZWNyZXQ=".into()),
                },
            ),
            (
                b"AUTH PLAIN\r\n",
                Command::Auth {
                    mechanism: Some("PLAIN".into()),
                    initial: None,
                },
            ),
            (
                b"AUTH\r\n",
                Command::Auth {
                    mechanism: None,
                    initial: None,
                },
            ),
            (
                b"APOP mrose c4c9334bac560ecc979e58001b3e22fb\r\n",
                Command::Apop,
            ),
            (b"STAT\r\n", Command::Stat),
            (b"LIST\r\n", Command::List(None)),
            (b"LIST 2\r\n", Command::List(Some(n(2)))),
            (b"RETR 1\r\n", Command::Retr(n(1))),
            (b"DELE 007\r\n", Command::Dele(n(7))),
            (b"NOOP\r\n", Command::Noop),
            (b"RSET\r\n", Command::Rset),
            (b"QUIT\r\n", Command::Quit),
            (b"TOP 1 0\r\n", Command::Top(n(1), 0)),
            (
                b"TOP 3 99999999999999999999999\r\n",
                Command::Top(n(3), u64::MAX),
            ),
            (b"UIDL\r\n", Command::Uidl(None)),
            (b"UIDL 10\r\n", Command::Uidl(Some(n(10)))),
        ];
        for (line, want) in table {
            assert_eq!(
                Command::parse(line).as_ref(),
                Ok(want),
                "{:?}",
                String::from_utf8_lossy(line)
            );
        }
    }

    #[test]
    fn bad_lines_get_the_right_refusal() {
        use ParseError::*;
        let table: &[(&[u8], ParseError)] = &[
            (b"\r\n", Empty),
            (b"", Empty),
            (b"HELO x\r\n", Unknown),
            (b"RETRIEVE 1\r\n", Unknown),
            (b"\xff\xfe\r\n", Unknown),
            (b"RETR\r\n", Syntax("RETR msg")),
            (b"RETR 1 2\r\n", Syntax("RETR msg")),
            (b"RETR 0\r\n", NoSuchMessage),
            (b"RETR -1\r\n", NoSuchMessage),
            (b"RETR +1\r\n", NoSuchMessage),
            (b"RETR 1x\r\n", NoSuchMessage),
            (b"RETR 4294967296\r\n", NoSuchMessage),
            (b"RETR 99999999999999999999\r\n", NoSuchMessage),
            (b"DELE \xff\r\n", NoSuchMessage),
            (b"LIST a b\r\n", Syntax("LIST [msg]")),
            (b"TOP 1\r\n", Syntax("TOP msg n")),
            (b"TOP 1 -1\r\n", Syntax("TOP msg n")),
            (b"TOP 0 1\r\n", NoSuchMessage),
            (b"STAT now\r\n", Syntax("STAT")),
            (b"USER\r\n", Syntax("USER name")),
            (b"USER a\xffb\r\n", Syntax("USER name")),
            (b"USER a\x01b\r\n", Syntax("USER name")),
            (b"PASS\r\n", Syntax("PASS password")),
            (b"PASS \xc3\r\n", Syntax("PASS password")),
        ];
        for (line, want) in table {
            assert_eq!(
                Command::parse(line).as_ref(),
                Err(want),
                "{:?}",
                String::from_utf8_lossy(line)
            );
        }
    }

    #[test]
    fn passwords_never_print() {
        let command = Command::parse(b"PASS hunter2\r\n").unwrap();
        assert!(!format!("{command:?}").contains("hunter2"));
    }

    #[test]
    fn plain_responses() {
        // "\0ann@example.test\0secret"
        let (login, password) = decode_plain("AGFubkBleGFtcGxlLnRlc3QAc2VjcmV0").unwrap();
        assert_eq!(login, "ann@example.test");
        assert_eq!(password.0, "secret");
        // authzid equal to the login is fine; another one is not.
        assert!(decode_plain("YW5uQGV4YW1wbGUudGVzdABhbm5AZXhhbXBsZS50ZXN0AHNlY3JldA==").is_some());
        assert!(decode_plain("Ym9iQGV4YW1wbGUudGVzdABhbm5AZXhhbXBsZS50ZXN0AHNlY3JldA==").is_none());
        assert!(decode_plain("not base64!").is_none());
        assert!(decode_plain("").is_none());
    }

    #[test]
    fn uidl_is_the_base_name_when_rfc_1939_allows_it() {
        assert_eq!(
            uidl("1732212345.M1P2Q3R4.mx,S=10,W=12"),
            "1732212345.M1P2Q3R4.mx,S=10,W=12"
        );
        for bad in [
            "1732212345.M1P2Q3R4.a-very-long-host-name.example.test,S=123456,W=125000",
            "with space",
            "caf\u{e9}",
            "",
        ] {
            let id = uidl(bad);
            assert_eq!(id.len(), 40, "{bad:?}");
            assert!(id.bytes().all(|b| b.is_ascii_hexdigit()));
            assert_eq!(id, uidl(bad), "stable");
        }
        assert_ne!(uidl("with space"), uidl("with  space"));
    }

    fn retr(message: &[u8], chunk: usize) -> (Vec<u8>, u64) {
        let mut t = Transmit::whole();
        let mut out = Vec::new();
        for piece in message.chunks(chunk.max(1)) {
            t.feed(piece, &mut out);
        }
        t.finish(&mut out);
        (out, t.octets())
    }

    fn top(message: &[u8], lines: u64) -> Vec<u8> {
        let mut t = Transmit::top(lines);
        let mut out = Vec::new();
        t.feed(message, &mut out);
        t.finish(&mut out);
        out
    }

    #[test]
    fn crlf_and_dot_stuffing() {
        let (out, octets) = retr(b"A: b\n\n.\n..x\nend\n", 3);
        assert_eq!(out, b"A: b\r\n\r\n..\r\n...x\r\nend\r\n.\r\n");
        assert_eq!(octets, 21);
        // Stored CRLF stays CRLF; a bare CR is content.
        let (out, octets) = retr(b"a\r\nb\rc\n", 1);
        assert_eq!(out, b"a\r\nb\rc\r\n.\r\n");
        assert_eq!(octets, 8);
        // A last line without a line end gets one, counted.
        let (out, octets) = retr(b"x\n.y", 2);
        assert_eq!(out, b"x\r\n..y\r\n.\r\n");
        assert_eq!(octets, 7);
        let (out, octets) = retr(b"", 1);
        assert_eq!((out.as_slice(), octets), (&b".\r\n"[..], 0));
    }

    #[test]
    fn top_sends_headers_blank_line_and_n_lines() {
        let message = b"A: 1\nB: 2\n\nline1\n.line2\nline3\n";
        assert_eq!(top(message, 0), b"A: 1\r\nB: 2\r\n\r\n.\r\n");
        assert_eq!(
            top(message, 2),
            b"A: 1\r\nB: 2\r\n\r\nline1\r\n..line2\r\n.\r\n"
        );
        assert_eq!(top(message, u64::MAX), retr(message, 7).0);
        // CRLF-stored blank line ends the header too.
        assert_eq!(top(b"A: 1\r\n\r\nbody\r\n", 0), b"A: 1\r\n\r\n.\r\n");
        // No body at all: everything there is.
        assert_eq!(top(b"A: 1\nB: 2", 0), b"A: 1\r\nB: 2\r\n.\r\n");
    }

    /// Undoes what a client undoes: the terminator and the dot-stuffing.
    fn unstuff(wire: &[u8]) -> Vec<u8> {
        let body = wire.strip_suffix(b".\r\n").expect("terminated");
        let mut out = Vec::new();
        for line in body.split_inclusive(|&b| b == b'\n') {
            out.extend_from_slice(line.strip_prefix(b".").unwrap_or(line));
        }
        out
    }

    proptest! {
        #[test]
        fn parser_never_panics(line in proptest::collection::vec(any::<u8>(), 0..300)) {
            let _ = Command::parse(&line);
        }

        #[test]
        fn parser_never_panics_on_commandish_lines(
            keyword in "(?i)(user|pass|auth|list|retr|dele|top|uidl|stat|capa|stls|x)",
            args in "[ 0-9a-zA-Z+/=\\-\u{80}-\u{10ffff}]{0,60}",
        ) {
            let _ = Command::parse(format!("{keyword} {args}\r\n").as_bytes());
        }

        #[test]
        fn octets_match_what_the_client_keeps(
            message in proptest::collection::vec(
                prop_oneof![Just(b'\n'), Just(b'\r'), Just(b'.'), Just(b'a')], 0..200),
            chunk in 1usize..17,
        ) {
            let (out, octets) = retr(&message, chunk);
            let kept = unstuff(&out);
            prop_assert_eq!(kept.len() as u64, octets);
            // Every line the client sees ends with CRLF.
            for line in kept.split_inclusive(|&b| b == b'\n') {
                prop_assert!(line.ends_with(b"\r\n"));
            }
            // Same answer however the file is chunked.
            prop_assert_eq!(retr(&message, 1000).0, out);
            // And the size a reader computes without sending agrees.
            prop_assert_eq!(crate::store::maildir::pop3_size(&mut &message[..]).unwrap(), octets);
            // What the client keeps is the wire form IMAP sends.
            prop_assert_eq!(kept, crate::proto::message::wire_form(&message));
        }
    }
}
