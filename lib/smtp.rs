//! SMTP server pieces that do no I/O: replies, the DATA reader, networks.
//!
//! Commands are parsed by the `smtp-proto` crate (Stalwart's RFC 5321
//! parser, Apache-2.0 OR MIT); this module holds what `smtp-recv` adds
//! around it, each piece testable without a socket.
//!
//! Line ends (RFC 5321 §2.3.8, and the 2023 "SMTP smuggling" class): only
//! CRLF ends a line and only CRLF "." CRLF ends DATA. A bare LF or a bare CR
//! anywhere, in a command or in DATA, is refused the same way: the command
//! gets a 500, the message gets a 554 once its real end arrives. So `\n.\n`,
//! `\r.\n`, `\n.\r\n` and `\r.\r` never end a message here, and nothing that
//! another server might read as two messages is ever accepted as one.

use std::fmt;
use std::net::IpAddr;

/// One SMTP reply: a code, an RFC 3463 enhanced status code, and text.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Reply {
    pub code: u16,
    /// `x.y.z`, empty for replies that carry none (220, 221 greeting lines).
    pub status: &'static str,
    pub lines: Vec<String>,
}

impl Reply {
    pub fn new(code: u16, status: &'static str, text: impl Into<String>) -> Reply {
        Reply {
            code,
            status,
            lines: vec![text.into()],
        }
    }

    pub fn multi(code: u16, lines: Vec<String>) -> Reply {
        Reply {
            code,
            status: "",
            lines,
        }
    }

    pub fn is_positive(&self) -> bool {
        self.code < 400
    }

    /// The reply on the wire: `code-` continuation lines, `code ` last;
    /// control characters in the text become `?` so a reply is always one
    /// well-formed line per entry.
    pub fn to_bytes(&self) -> Vec<u8> {
        let mut out = Vec::new();
        let last = self.lines.len().saturating_sub(1);
        for (i, line) in self.lines.iter().enumerate() {
            let sep = if i == last { ' ' } else { '-' };
            let clean: String = line
                .chars()
                .map(|c| if c.is_control() { '?' } else { c })
                .collect();
            let text = if self.status.is_empty() {
                clean
            } else {
                format!("{} {clean}", self.status)
            };
            out.extend_from_slice(format!("{}{sep}{text}\r\n", self.code).as_bytes());
        }
        if self.lines.is_empty() {
            out.extend_from_slice(format!("{} {}\r\n", self.code, self.status).as_bytes());
        }
        out
    }
}

impl fmt::Display for Reply {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(String::from_utf8_lossy(&self.to_bytes()).trim_end())
    }
}

/// True when a command line ends with CRLF and holds no other CR or LF.
pub fn is_clean_command(line: &[u8]) -> bool {
    line.ends_with(b"\r\n")
        && !line[..line.len() - 2]
            .iter()
            .any(|&b| b == b'\r' || b == b'\n')
}

/// What one DATA line came to.
#[derive(Debug, PartialEq, Eq)]
pub enum DataLine<'a> {
    /// Body bytes to keep (dot-unstuffed, CRLF included).
    Body(&'a [u8]),
    /// The terminating `.` CRLF.
    End,
}

/// Reads DATA line by line: dot-unstuffing, the one true terminator, and a
/// record of anything that makes the message unacceptable (bare CR or LF,
/// a line too long, the size limit), so the caller keeps reading to the
/// real end and then refuses the whole message.
#[derive(Debug)]
pub struct DataReader {
    max_size: u64,
    size: u64,
    bare_line_end: bool,
    too_big: bool,
    line_too_long: bool,
    /// The previous line ended with CRLF: only then can "." CRLF end DATA
    /// (`LF "." CRLF` is one of the smuggling sequences).
    after_crlf: bool,
}

/// Why a received message is refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DataProblem {
    BareLineEnd,
    TooBig,
    LineTooLong,
}

impl DataProblem {
    pub fn reply(self, max_size: u64) -> Reply {
        match self {
            DataProblem::BareLineEnd => Reply::new(
                554,
                "5.6.0",
                "message contains a bare CR or LF; lines must end with CRLF (RFC 5321 2.3.8)",
            ),
            DataProblem::TooBig => Reply::new(
                552,
                "5.3.4",
                format!("message exceeds the size limit of {max_size} bytes"),
            ),
            DataProblem::LineTooLong => {
                Reply::new(552, "5.3.4", "a line of the message is too long")
            }
        }
    }
}

impl DataReader {
    pub fn new(max_size: u64) -> DataReader {
        DataReader {
            max_size,
            size: 0,
            bare_line_end: false,
            too_big: false,
            line_too_long: false,
            after_crlf: true,
        }
    }

    /// Takes one raw line as read (ending in LF, or not at all if cut).
    pub fn line<'a>(&mut self, line: &'a [u8]) -> DataLine<'a> {
        if line == b".\r\n" && self.after_crlf {
            return DataLine::End;
        }
        self.after_crlf = is_clean_command(line);
        if !self.after_crlf {
            self.bare_line_end = true;
        }
        let body = line.strip_prefix(b".").unwrap_or(line);
        self.size += body.len() as u64;
        if self.size > self.max_size {
            self.too_big = true;
        }
        DataLine::Body(body)
    }

    /// Records a line that was longer than the reader's limit. How it ended
    /// is unknown (the rest was discarded unseen), so a "." line after it
    /// does not end DATA: safe over friendly, since the message is refused
    /// anyway and ending early would run the rest of it as commands.
    pub fn line_too_long(&mut self) {
        self.line_too_long = true;
        self.after_crlf = false;
    }

    /// Whether bytes should still be kept (false once the message is
    /// doomed: no point storing what will be refused).
    pub fn keeping(&self) -> bool {
        self.problem().is_none()
    }

    pub fn problem(&self) -> Option<DataProblem> {
        if self.bare_line_end {
            Some(DataProblem::BareLineEnd)
        } else if self.too_big {
            Some(DataProblem::TooBig)
        } else if self.line_too_long {
            Some(DataProblem::LineTooLong)
        } else {
            None
        }
    }

    pub fn size(&self) -> u64 {
        self.size
    }
}

/// An IP network in CIDR notation (`192.0.2.0/24`, `2001:db8::/32`, or a
/// bare address).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Network {
    addr: IpAddr,
    prefix: u8,
}

impl Network {
    pub fn parse(text: &str) -> Result<Network, String> {
        let (addr, prefix) = match text.split_once('/') {
            Some((a, p)) => (a, Some(p)),
            None => (text, None),
        };
        let addr: IpAddr = addr
            .trim()
            .parse()
            .map_err(|_| format!("{text:?} is not an IP network"))?;
        let max = if addr.is_ipv4() { 32 } else { 128 };
        let prefix = match prefix {
            Some(p) => p.trim().parse::<u8>().ok().filter(|&p| p <= max),
            None => Some(max),
        }
        .ok_or_else(|| format!("{text:?}: the prefix length must be 0 to {max}"))?;
        Ok(Network { addr, prefix })
    }

    pub fn contains(&self, ip: IpAddr) -> bool {
        let ip = match ip {
            IpAddr::V6(v6) => v6.to_ipv4_mapped().map(IpAddr::V4).unwrap_or(ip),
            v4 => v4,
        };
        match (self.addr, ip) {
            (IpAddr::V4(net), IpAddr::V4(ip)) => {
                let mask = u32::MAX.checked_shl(32 - self.prefix as u32).unwrap_or(0);
                u32::from(net) & mask == u32::from(ip) & mask
            }
            (IpAddr::V6(net), IpAddr::V6(ip)) => {
                let mask = u128::MAX.checked_shl(128 - self.prefix as u32).unwrap_or(0);
                u128::from(net) & mask == u128::from(ip) & mask
            }
            _ => false,
        }
    }
}

/// Decodes RFC 3461 xtext (`+HH` escapes); `None` if malformed.
pub fn xtext_decode(text: &str) -> Option<String> {
    let bytes = text.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'+' {
            let hex = text.get(i + 1..i + 3)?;
            out.push(u8::from_str_radix(hex, 16).ok()?);
            i += 3;
        } else {
            out.push(bytes[i]);
            i += 1;
        }
    }
    String::from_utf8(out).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn replies_render_multiline_and_clean() {
        let r = Reply::multi(
            250,
            vec!["mx.test".into(), "PIPELINING".into(), "SIZE 10".into()],
        );
        assert_eq!(
            r.to_bytes(),
            b"250-mx.test\r\n250-PIPELINING\r\n250 SIZE 10\r\n"
        );
        let r = Reply::new(550, "5.1.1", "no\r\nsuch");
        assert_eq!(r.to_bytes(), b"550 5.1.1 no??such\r\n");
    }

    #[test]
    fn commands_need_crlf() {
        assert!(is_clean_command(b"NOOP\r\n"));
        assert!(!is_clean_command(b"NOOP\n"));
        assert!(!is_clean_command(b"NO\rOP\r\n"));
        assert!(!is_clean_command(b"NOOP"));
    }

    /// Feeds raw bytes split at LF, as the connection's read_line does.
    fn feed(reader: &mut DataReader, data: &[u8]) -> (Vec<u8>, bool) {
        let mut body = Vec::new();
        for line in data.split_inclusive(|&b| b == b'\n') {
            match reader.line(line) {
                DataLine::End => return (body, true),
                DataLine::Body(b) => body.extend_from_slice(b),
            }
        }
        (body, false)
    }

    #[test]
    fn only_crlf_dot_crlf_ends_data() {
        for smuggle in [
            &b"a\r\n\n.\n"[..],
            b"a\r\n\r.\n",
            b"a\r\n\n.\r\n",
            b"a\r\n\r.\r",
            b"a\n.\n",
        ] {
            let mut r = DataReader::new(1000);
            let (_, ended) = feed(&mut r, smuggle);
            assert!(!ended, "{smuggle:?} must not end DATA");
            assert_eq!(r.problem(), Some(DataProblem::BareLineEnd), "{smuggle:?}");
        }
        let mut r = DataReader::new(1000);
        let (body, ended) = feed(&mut r, b"Subject: x\r\n\r\n..dot\r\n.\r\nMAIL FROM:<x>\r\n");
        assert!(ended);
        assert_eq!(body, b"Subject: x\r\n\r\n.dot\r\n");
        assert_eq!(r.problem(), None);
    }

    #[test]
    fn size_limit_is_noticed_but_reading_goes_on() {
        let mut r = DataReader::new(10);
        let (_, ended) = feed(&mut r, b"0123456789\r\nmore\r\n.\r\n");
        assert!(ended);
        assert_eq!(r.problem(), Some(DataProblem::TooBig));
        assert!(!r.keeping());
    }

    #[test]
    fn networks() {
        let n = Network::parse("192.0.2.0/24").unwrap();
        assert!(n.contains("192.0.2.77".parse().unwrap()));
        assert!(!n.contains("192.0.3.1".parse().unwrap()));
        assert!(n.contains("::ffff:192.0.2.1".parse().unwrap()));
        assert!(
            Network::parse("127.0.0.1")
                .unwrap()
                .contains("127.0.0.1".parse().unwrap())
        );
        assert!(
            Network::parse("::1/128")
                .unwrap()
                .contains("::1".parse().unwrap())
        );
        assert!(
            Network::parse("0.0.0.0/0")
                .unwrap()
                .contains("8.8.8.8".parse().unwrap())
        );
        assert!(Network::parse("10.0.0.0/33").is_err());
        assert!(Network::parse("bogus").is_err());
    }

    #[test]
    fn xtext() {
        assert_eq!(
            xtext_decode("rfc822;a+2Bb@c").as_deref(),
            Some("rfc822;a+b@c")
        );
        assert_eq!(xtext_decode("bad+2"), None);
    }

    proptest::proptest! {
        #[test]
        fn data_reader_never_panics_and_never_ends_on_bare_lf(data in proptest::collection::vec(proptest::prelude::any::<u8>(), 0..300)) {
            let mut r = DataReader::new(100);
            for line in data.split_inclusive(|&b| b == b'\n') {
                if r.line(line) == DataLine::End {
                    proptest::prop_assert_eq!(line, b".\r\n");
                    break;
                }
            }
        }
    }
}
