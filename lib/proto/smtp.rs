//! SMTP pieces that do no I/O: replies, the DATA reader, networks, and the
//! encoder `smtp-send` writes message bodies through.
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
//!
//! NUL (RFC 5321 §4.1.1.4 forbids it in text, and a next hop that strips
//! NULs could read `\r\n\x00.\r\n` as the end of DATA) is refused the
//! same way: a command with a NUL gets a 500, a message a 554 5.6.0.
//! Nothing is encoded or stripped: a message is stored as it was sent, or
//! not at all.

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

/// True when a line holds a NUL byte, which SMTP text never does.
pub fn has_nul(line: &[u8]) -> bool {
    line.contains(&0)
}

/// A BDAT command (RFC 3030 §2):
///
/// ```text
/// bdat-cmd   ::= "BDAT" SP chunk-size [ SP end-marker ] CR LF
/// chunk-size ::= 1*DIGIT
/// end-marker ::= "LAST"
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Bdat {
    pub size: u64,
    pub last: bool,
}

/// Why a BDAT command cannot be used. Either way the chunk's length is
/// unknown or not to be read, so its bytes can no longer be told from
/// commands: the session must end.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BdatError {
    /// Not `BDAT chunk-size [LAST]`: a sign, letters, a missing size,
    /// a stray word, a bare CR or LF, a NUL.
    Syntax,
    /// A chunk larger than the whole message may be.
    TooBig,
}

impl BdatError {
    /// The last reply of the session (Postfix answers a malformed BDAT
    /// with 521 and hangs up too).
    pub fn reply(self, max_size: u64) -> Reply {
        match self {
            BdatError::Syntax => Reply::new(
                521,
                "5.5.4",
                "syntax: BDAT chunk-size [LAST]; the chunk cannot be told from commands, closing",
            ),
            BdatError::TooBig => Reply::new(
                552,
                "5.3.4",
                format!(
                    "BDAT chunk larger than the message size limit of {max_size} bytes, closing"
                ),
            ),
        }
    }
}

/// Parses a BDAT command line, raw as read (CRLF included). `None` when
/// the line is some other command. The size is read here rather than by
/// `smtp-proto`, whose parser saturates past 20 digits and then starts
/// over, so that `BDAT 100000000000000000000000000005` meant 5. Spaces
/// between the words are taken one or many; anything else is refused.
pub fn parse_bdat(line: &[u8], max_size: u64) -> Option<Result<Bdat, BdatError>> {
    let verb_end = line
        .iter()
        .position(|b| b.is_ascii_whitespace())
        .unwrap_or(line.len());
    if !line[..verb_end].eq_ignore_ascii_case(b"BDAT") {
        return None;
    }
    Some(bdat_arguments(line, verb_end, max_size))
}

fn bdat_arguments(line: &[u8], verb_end: usize, max_size: u64) -> Result<Bdat, BdatError> {
    if !is_clean_command(line) || has_nul(line) {
        return Err(BdatError::Syntax);
    }
    let arguments = &line[verb_end..line.len() - 2];
    if !arguments.is_empty() && arguments[0] != b' ' {
        return Err(BdatError::Syntax);
    }
    let mut words = arguments.split(|&b| b == b' ').filter(|w| !w.is_empty());
    let (Some(size), last) = (words.next(), words.next()) else {
        return Err(BdatError::Syntax);
    };
    let last = match last {
        None => false,
        Some(word) if word.eq_ignore_ascii_case(b"LAST") => true,
        Some(_) => return Err(BdatError::Syntax),
    };
    if words.next().is_some() || !size.iter().all(u8::is_ascii_digit) {
        return Err(BdatError::Syntax);
    }
    // Digits only, so the one way to fail is overflow: too big as well.
    let size = size
        .iter()
        .try_fold(0u64, |n, &d| {
            n.checked_mul(10)?.checked_add(u64::from(d - b'0'))
        })
        .filter(|&n| n <= max_size)
        .ok_or(BdatError::TooBig)?;
    Ok(Bdat { size, last })
}

/// True when a RCPT line's path is `<Postmaster>` with no domain, which
/// RFC 5321 §4.5.1 says every server must accept. `smtp-proto` hands it
/// over as an empty address, like `<>`; the raw line tells them apart.
pub fn is_bare_postmaster(line: &[u8]) -> bool {
    let Some(open) = line.iter().position(|&b| b == b'<') else {
        return false;
    };
    let path = &line[open + 1..];
    path.iter()
        .position(|&b| b == b'>')
        .is_some_and(|close| path[..close].eq_ignore_ascii_case(b"postmaster"))
}

/// A MAIL or RCPT line as the client wrote it, read beside `smtp-proto`'s
/// parse for what that parse loses or lets through:
///
/// - it strips the quotes and backslashes of a quoted local part
///   (`"john doe"@x` comes out as `john doe@x`, which is no address), so
///   a path with a quote in it is taken from the line instead;
/// - a SIZE past 20 digits saturates and then starts over in its parser
///   (`SIZE=99999999999999999999999` was a small number);
/// - it takes `NOTIFY=NEVER,SUCCESS`, a RET or NOTIFY given twice, and
///   an ENVID or ORCPT that is not xtext (`ENVID=a+2`).
///
/// ```text
/// Mail-parameters = esmtp-param *(SP esmtp-param)       ; RFC 5321 §4.1.2
/// esmtp-param     = esmtp-keyword ["=" esmtp-value]
/// Path            = "<" [ A-d-l ":" ] Mailbox ">"
/// ```
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PathCommand<'a> {
    /// Between the angle brackets, a source route (`@a,@b:`) dropped.
    path: &'a str,
    params: Vec<(&'a str, Option<&'a str>)>,
}

/// Reads a MAIL or RCPT line, raw as read (CRLF included), that
/// `smtp-proto` has parsed; `None` if it cannot be read (not UTF-8, no
/// closing `>`), in which case that parse stands alone.
pub fn path_command(line: &[u8]) -> Option<PathCommand<'_>> {
    let text = std::str::from_utf8(line).ok()?;
    let text = text.strip_suffix("\r\n").unwrap_or(text);
    let rest = &text[text.find('<')? + 1..];
    let (mut in_quote, mut escaped, mut close) = (false, false, None);
    for (i, c) in rest.char_indices() {
        match c {
            _ if escaped => escaped = false,
            '\\' if in_quote => escaped = true,
            '"' => in_quote = !in_quote,
            '>' if !in_quote => {
                close = Some(i);
                break;
            }
            _ => {}
        }
    }
    let close = close?;
    let mut path = &rest[..close];
    if path.starts_with('@') {
        // RFC 5321 §4.1.1.3: a source route is accepted and ignored.
        path = &path[path.find(':')? + 1..];
    }
    let params = rest[close + 1..]
        .split_ascii_whitespace()
        .map(|word| match word.split_once('=') {
            Some((keyword, value)) => (keyword, Some(value)),
            None => (word, None),
        })
        .collect();
    Some(PathCommand { path, params })
}

impl PathCommand<'_> {
    /// The mailbox to parse when its local part is quoted, `None` when it
    /// is not (`smtp-proto`'s address is right then). A quoted local part
    /// that needs no quotes is given without them (`"ann"@x` is `ann@x`:
    /// RFC 5322 §3.2.4, the quotes are not part of what it means), so it
    /// finds the same user; any other stays quoted as written, and a
    /// queue, a next hop or a reply gets it in the form it must have.
    pub fn quoted_mailbox(&self) -> Option<String> {
        let path = self.path;
        if !path.starts_with('"') {
            return None;
        }
        let (local, domain) = path.rsplit_once('@')?;
        let inner = local.strip_prefix('"')?.strip_suffix('"')?;
        let mut unquoted = String::with_capacity(inner.len());
        let mut chars = inner.chars();
        while let Some(c) = chars.next() {
            unquoted.push(if c == '\\' { chars.next()? } else { c });
        }
        Some(if crate::proto::address::is_dot_string(&unquoted) {
            format!("{unquoted}@{domain}")
        } else {
            path.to_string()
        })
    }

    /// The SIZE declared, read here (`u64::MAX` when it overflows: larger
    /// than any limit); `None` without a SIZE or with one `smtp-proto`
    /// would not have taken.
    pub fn declared_size(&self) -> Option<u64> {
        let (_, value) = self
            .params
            .iter()
            .find(|(keyword, _)| keyword.eq_ignore_ascii_case("SIZE"))?;
        let digits = value.filter(|v| !v.is_empty() && v.bytes().all(|b| b.is_ascii_digit()))?;
        Some(digits.bytes().fold(0u64, |n, d| {
            n.saturating_mul(10).saturating_add(u64::from(d - b'0'))
        }))
    }

    /// The checks of RFC 3461 §4 that `smtp-proto` leaves out, with the
    /// 501 that refuses the command (RFC 5321 §4.1.1.11): a keyword given
    /// twice; NOTIFY that is not NEVER alone or a list of SUCCESS, FAILURE
    /// and DELAY; an ENVID or ORCPT that is not xtext.
    pub fn check_params(&self) -> Result<(), Reply> {
        use crate::proto::xtext::is_xtext;
        let refuse = |text: String| Err(Reply::new(501, "5.5.4", text));
        for (i, (keyword, value)) in self.params.iter().enumerate() {
            let keyword = keyword.to_ascii_uppercase();
            if self.params[..i]
                .iter()
                .any(|(earlier, _)| earlier.eq_ignore_ascii_case(&keyword))
            {
                return refuse(format!("Duplicate {keyword} parameter"));
            }
            let value = value.unwrap_or_default();
            let well_formed = match keyword.as_str() {
                "NOTIFY" => is_notify(value),
                // RFC 3461 §4.4: ENVID = 1*100 xtext characters.
                "ENVID" => (1..=100).contains(&value.len()) && is_xtext(value),
                // RFC 3461 §4.2: ORCPT = addr-type ";" xtext.
                "ORCPT" => value.split_once(';').is_some_and(|(kind, address)| {
                    !kind.is_empty() && !address.is_empty() && is_xtext(address)
                }),
                _ => true,
            };
            if !well_formed {
                return refuse(format!("Bad {keyword} parameter syntax"));
            }
        }
        Ok(())
    }
}

/// RFC 3461 §4.1: `"NEVER" / 1#( "SUCCESS" / "FAILURE" / "DELAY" )`:
/// NEVER stands alone.
pub fn is_notify(value: &str) -> bool {
    value.eq_ignore_ascii_case("NEVER")
        || value.split(',').all(|word| {
            ["SUCCESS", "FAILURE", "DELAY"]
                .iter()
                .any(|w| w.eq_ignore_ascii_case(word))
        })
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
    nul: bool,
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
    Nul,
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
            DataProblem::Nul => Reply::new(
                554,
                "5.6.0",
                "message contains a NUL byte, which SMTP does not carry (RFC 5321 4.1.1.4)",
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
            nul: false,
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
        // A bare CR inside a line that ends in CRLF dooms the message but
        // does not move its end: CRLF "." CRLF is still there, and every
        // other server ends DATA at it too (waiting for another would hang
        // the client until the idle timeout instead of answering 554).
        self.after_crlf = line.ends_with(b"\r\n");
        if !is_clean_command(line) {
            self.bare_line_end = true;
        }
        if has_nul(line) {
            self.nul = true;
        }
        let body = line.strip_prefix(b".").unwrap_or(line);
        self.size += body.len() as u64;
        if self.size > self.max_size {
            self.too_big = true;
        }
        DataLine::Body(body)
    }

    /// Records a line that was longer than the reader's limit, its bytes
    /// discarded unseen but for how it ended. After CRLF a "." line ends
    /// DATA as after any line, so the client gets its 552 at the real end
    /// instead of waiting for the idle timeout; after a bare LF it does
    /// not (and the message has a bare line end as well).
    pub fn line_too_long(&mut self, ended_with_crlf: bool) {
        self.line_too_long = true;
        self.after_crlf = ended_with_crlf;
        if !ended_with_crlf {
            self.bare_line_end = true;
        }
    }

    /// Whether bytes should still be kept (false once the message is
    /// doomed: no point storing what will be refused).
    pub fn keeping(&self) -> bool {
        self.problem().is_none()
    }

    pub fn problem(&self) -> Option<DataProblem> {
        if self.bare_line_end {
            Some(DataProblem::BareLineEnd)
        } else if self.nul {
            Some(DataProblem::Nul)
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

/// The longest line SMTP carries, without its CRLF (RFC 5321 §4.5.3.1.6).
pub const MAX_WIRE_LINE: usize = 998;

/// Turns a message into DATA as another server must see it (RFC 5321
/// §4.5.2 and §4.5.3.1.6): every line ends in CRLF (a bare LF or bare CR
/// becomes CRLF, so nothing we send can be read as a smuggled message end),
/// a line starting with "." gets another, and no line is longer than 998
/// octets. A long header line is folded at its last space or tab before the
/// limit (a fold the reader unfolds again) or, with no blank to fold at,
/// continued on a new line that starts with a space; a long body line is
/// broken into lines of at most 998 octets. Nothing is ever dropped.
#[derive(Debug, Default)]
pub struct DataEncoder {
    line: Vec<u8>,
    pending_cr: bool,
    in_body: bool,
}

impl DataEncoder {
    pub fn new() -> DataEncoder {
        DataEncoder::default()
    }

    /// Encodes the next piece of the message into `out`.
    pub fn push(&mut self, input: &[u8], out: &mut Vec<u8>) {
        for &b in input {
            if self.pending_cr {
                self.pending_cr = false;
                self.end_line(out);
                if b == b'\n' {
                    continue;
                }
            }
            match b {
                b'\r' => self.pending_cr = true,
                b'\n' => self.end_line(out),
                _ => {
                    // A leading dot is doubled on the wire; leave room.
                    let room = MAX_WIRE_LINE - usize::from(self.line.first() == Some(&b'.'));
                    if self.line.len() >= room {
                        self.fold(out);
                    }
                    self.line.push(b);
                }
            }
        }
    }

    /// Ends the message: the last line gets its CRLF, then "." CRLF.
    pub fn finish(&mut self, out: &mut Vec<u8>) {
        if self.pending_cr || !self.line.is_empty() {
            self.pending_cr = false;
            self.end_line(out);
        }
        out.extend_from_slice(b".\r\n");
    }

    fn end_line(&mut self, out: &mut Vec<u8>) {
        if self.line.is_empty() {
            self.in_body = true;
        }
        emit(&self.line, out);
        self.line.clear();
    }

    /// The current line is full: send what fits, keep the rest.
    fn fold(&mut self, out: &mut Vec<u8>) {
        if !self.in_body {
            // Fold before the last blank (not one at the start, which would
            // leave an empty line and end the header).
            if let Some(at) = self.line[1..]
                .iter()
                .rposition(|&c| c == b' ' || c == b'\t')
                .map(|p| p + 1)
            {
                emit(&self.line[..at], out);
                self.line.drain(..at);
                return;
            }
            emit(&self.line, out);
            self.line.clear();
            self.line.push(b' ');
            return;
        }
        emit(&self.line, out);
        self.line.clear();
    }
}

/// The message as the receiver of [`DataEncoder`]'s output stores it (the
/// encoder's lines, dot-stuffing undone, the final dot gone), or `None`
/// when that is `message` itself: a CRLF message whose lines fit. What a
/// DKIM signature is computed over, so that the fold the encoder would make
/// of a long line on the way out is already in the signed bytes.
pub fn as_sent(message: &[u8]) -> Option<Vec<u8>> {
    // A line of MAX_WIRE_LINE octets that starts with a dot is folded too;
    // anything shorter that ends in CRLF goes out as it is.
    let fits = message.split_inclusive(|&b| b == b'\n').all(|line| {
        line.len() < MAX_WIRE_LINE + 2
            && line.ends_with(b"\r\n")
            && !line[..line.len() - 2].contains(&b'\r')
    });
    if fits {
        return None;
    }
    let mut wire = Vec::with_capacity(message.len() + message.len() / 64 + 8);
    let mut encoder = DataEncoder::new();
    encoder.push(message, &mut wire);
    encoder.finish(&mut wire);
    wire.truncate(wire.len().saturating_sub(3));
    let mut out = Vec::with_capacity(wire.len());
    for line in wire.split_inclusive(|&b| b == b'\n') {
        // The encoder doubles every leading dot, so one is always its own.
        out.extend_from_slice(line.strip_prefix(b".").unwrap_or(line));
    }
    (out != message).then_some(out)
}

/// One wire line: dot-stuffed, CRLF added.
fn emit(line: &[u8], out: &mut Vec<u8>) {
    if line.first() == Some(&b'.') {
        out.push(b'.');
    }
    out.extend_from_slice(line);
    out.extend_from_slice(b"\r\n");
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quoted_local_parts_are_read_from_the_line() {
        fn path(line: &str) -> PathCommand<'_> {
            path_command(line.as_bytes()).unwrap()
        }
        let cases = [
            // What smtp-proto strips to `john doe@…` and `x"y@…`.
            (
                "MAIL FROM:<\"john doe\"@client.test>\r\n",
                Some("\"john doe\"@client.test"),
            ),
            (
                "MAIL FROM:<\"x\\\"y\"@client.test>\r\n",
                Some("\"x\\\"y\"@client.test"),
            ),
            (
                "RCPT TO:<\"a>b\"@x.test> NOTIFY=NEVER\r\n",
                Some("\"a>b\"@x.test"),
            ),
            (
                "RCPT TO:<@relay.test,@b.test:\"a b\"@x.test>\r\n",
                Some("\"a b\"@x.test"),
            ),
            // Quotes that change nothing are dropped: the same user.
            (
                "RCPT TO:<\"ann\"@example.test>\r\n",
                Some("ann@example.test"),
            ),
            (
                "RCPT TO:<\"a.\\b\"@example.test>\r\n",
                Some("a.b@example.test"),
            ),
            ("RCPT TO:<ann@example.test>\r\n", None),
            ("MAIL FROM:<>\r\n", None),
        ];
        for (line, want) in cases {
            assert_eq!(path(line).quoted_mailbox().as_deref(), want, "{line:?}");
        }
        let p = path("MAIL FROM:<\"a b\"@x.test>  SIZE=10 BODY=8BITMIME\r\n");
        assert_eq!(p.declared_size(), Some(10));
        assert!(p.check_params().is_ok());
        assert_eq!(path_command(b"MAIL FROM:<\"a>\r\n"), None);
    }

    #[test]
    fn an_overflowing_size_is_larger_than_any_limit() {
        let p = path_command(b"MAIL FROM:<a@b.test> SIZE=99999999999999999999999\r\n").unwrap();
        assert_eq!(p.declared_size(), Some(u64::MAX));
        let p = path_command(b"MAIL FROM:<a@b.test> size=18446744073709551615\r\n").unwrap();
        assert_eq!(p.declared_size(), Some(u64::MAX));
        let p = path_command(b"MAIL FROM:<a@b.test>\r\n").unwrap();
        assert_eq!(p.declared_size(), None);
    }

    #[test]
    fn dsn_parameters_are_checked() {
        let check = |line: &str| {
            path_command(line.as_bytes())
                .unwrap()
                .check_params()
                .map_err(|r| r.to_string())
        };
        for good in [
            "RCPT TO:<b@x.test> NOTIFY=NEVER",
            "RCPT TO:<b@x.test> NOTIFY=success,FAILURE,Delay ORCPT=rfc822;b+2Bc@x.test",
            "MAIL FROM:<a@b.test> RET=HDRS ENVID=QQ314159+2B SIZE=3",
        ] {
            assert_eq!(check(good), Ok(()), "{good}");
        }
        for (bad, want) in [
            (
                "RCPT TO:<b@x.test> NOTIFY=NEVER,SUCCESS",
                "501 5.5.4 Bad NOTIFY parameter syntax",
            ),
            (
                "RCPT TO:<b@x.test> NOTIFY=SUCCESS,NEVER",
                "501 5.5.4 Bad NOTIFY parameter syntax",
            ),
            (
                "RCPT TO:<b@x.test> NOTIFY=",
                "501 5.5.4 Bad NOTIFY parameter syntax",
            ),
            (
                "MAIL FROM:<a@b.test> ENVID=a+2",
                "501 5.5.4 Bad ENVID parameter syntax",
            ),
            (
                "MAIL FROM:<a@b.test> ENVID=a=b",
                "501 5.5.4 Bad ENVID parameter syntax",
            ),
            (
                "RCPT TO:<b@x.test> ORCPT=rfc822;b+zz",
                "501 5.5.4 Bad ORCPT parameter syntax",
            ),
            (
                "MAIL FROM:<a@b.test> RET=FULL ret=HDRS",
                "501 5.5.4 Duplicate RET parameter",
            ),
            (
                "RCPT TO:<b@x.test> NOTIFY=DELAY NOTIFY=FAILURE",
                "501 5.5.4 Duplicate NOTIFY parameter",
            ),
        ] {
            assert_eq!(check(bad), Err(want.to_string()), "{bad}");
        }
    }

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
    fn as_sent_is_what_the_encoder_sends_and_nothing_for_lines_that_fit() {
        assert_eq!(as_sent(b"Subject: x\r\n\r\n.dot\r\nbody\r\n"), None);
        let long = format!("Subject: x\r\n\r\n.{}\r\nend\r\n", "y".repeat(2500));
        let sent = as_sent(long.as_bytes()).unwrap();
        // Sending the stored form changes nothing more, and the receiver
        // stores exactly it.
        assert_eq!(as_sent(&sent), None);
        let mut wire = Vec::new();
        let mut encoder = DataEncoder::new();
        encoder.push(long.as_bytes(), &mut wire);
        encoder.finish(&mut wire);
        let mut again = Vec::new();
        let mut encoder = DataEncoder::new();
        encoder.push(&sent, &mut again);
        encoder.finish(&mut again);
        assert_eq!(wire, again);
        assert!(
            sent.split(|&b| b == b'\n')
                .all(|l| l.len() <= MAX_WIRE_LINE + 1)
        );
        let joined: Vec<u8> = sent
            .iter()
            .copied()
            .filter(|&b| b != b'\r' && b != b'\n')
            .collect();
        assert!(joined.windows(2500).any(|w| w.iter().all(|&b| b == b'y')));
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
    fn a_bare_cr_inside_a_line_is_refused_at_the_real_end() {
        // Found by the smtp_data fuzz target: after a line with a CR inside
        // it, CRLF "." CRLF did not end DATA, so the client waited for a
        // reply that came only with the idle timeout.
        let mut r = DataReader::new(1000);
        let (body, ended) = feed(&mut r, b"Subject: x\r\n\r\na\rb\r\n.\r\nQUIT\r\n");
        assert!(ended);
        assert_eq!(body, b"Subject: x\r\n\r\na\rb\r\n");
        assert_eq!(r.problem(), Some(DataProblem::BareLineEnd));
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
    fn a_long_line_ending_in_crlf_still_lets_the_end_of_data_through() {
        let mut r = DataReader::new(1000);
        r.line_too_long(true);
        assert_eq!(r.line(b".\r\n"), DataLine::End);
        assert_eq!(r.problem(), Some(DataProblem::LineTooLong));
        // After a bare LF, "." CRLF is body, and the message has a bare
        // line end: the smuggling rule holds for long lines too.
        let mut r = DataReader::new(1000);
        r.line_too_long(false);
        assert_eq!(r.line(b".\r\n"), DataLine::Body(b"\r\n"));
        assert_eq!(r.line(b".\r\n"), DataLine::End);
        assert_eq!(r.problem(), Some(DataProblem::BareLineEnd));
    }

    #[test]
    fn nul_in_data_is_a_problem_and_the_end_is_still_found() {
        let mut r = DataReader::new(1000);
        let (_, ended) = feed(&mut r, b"Subject: x\r\n\r\na\x00b\r\n\x00.\r\n.\r\n");
        assert!(ended);
        assert_eq!(r.problem(), Some(DataProblem::Nul));
        assert_eq!(DataProblem::Nul.reply(0).code, 554);
        assert!(has_nul(b"MAIL FROM:<a\x00@b>\r\n"));
        assert!(!has_nul(b"NOOP\r\n"));
    }

    #[test]
    fn bdat_sizes_are_digits_within_the_limit() {
        let ok = |line: &[u8]| parse_bdat(line, 1000);
        assert_eq!(
            ok(b"BDAT 20\r\n"),
            Some(Ok(Bdat {
                size: 20,
                last: false
            }))
        );
        assert_eq!(
            ok(b"bdat 0 last\r\n"),
            Some(Ok(Bdat {
                size: 0,
                last: true
            }))
        );
        assert_eq!(
            ok(b"BDAT  1000  LAST \r\n"),
            Some(Ok(Bdat {
                size: 1000,
                last: true
            }))
        );
        assert_eq!(
            ok(b"BDAT 0007\r\n"),
            Some(Ok(Bdat {
                size: 7,
                last: false
            }))
        );
        for bad in [
            &b"BDAT -5 LAST\r\n"[..],
            b"BDAT +5\r\n",
            b"BDAT\r\n",
            b"BDAT \r\n",
            b"BDAT LAST\r\n",
            b"BDAT 5x\r\n",
            b"BDAT 5 LAST x\r\n",
            b"BDAT 5 FIRST\r\n",
            b"BDAT\t5\r\n",
            b"BDAT 5\n",
            b"BDAT 5\r\r\n",
            b"BDAT 5\x00\r\n",
            b"BDAT 0x10\r\n",
        ] {
            assert_eq!(ok(bad), Some(Err(BdatError::Syntax)), "{bad:?}");
        }
        for big in [
            &b"BDAT 1001\r\n"[..],
            b"BDAT 100000000000000000000000000005 LAST\r\n",
            b"BDAT 18446744073709551616\r\n",
        ] {
            assert_eq!(ok(big), Some(Err(BdatError::TooBig)), "{big:?}");
        }
        assert_eq!(ok(b"DATA\r\n"), None);
        assert_eq!(ok(b"BDATX 5\r\n"), None);
        assert_eq!(BdatError::Syntax.reply(1).code, 521);
    }

    #[test]
    fn bare_postmaster_is_told_from_the_null_path() {
        assert!(is_bare_postmaster(b"RCPT TO:<postmaster>\r\n"));
        assert!(is_bare_postmaster(
            b"rcpt to: <PostMaster> NOTIFY=NEVER\r\n"
        ));
        assert!(!is_bare_postmaster(b"RCPT TO:<>\r\n"));
        assert!(!is_bare_postmaster(
            b"RCPT TO:<postmaster@example.test>\r\n"
        ));
        assert!(!is_bare_postmaster(b"RCPT TO:<postmasterx>\r\n"));
        assert!(!is_bare_postmaster(b"RCPT TO:postmaster\r\n"));
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

    fn encode(input: &[u8], chunk: usize) -> Vec<u8> {
        let mut encoder = DataEncoder::new();
        let mut out = Vec::new();
        for piece in input.chunks(chunk.max(1)) {
            encoder.push(piece, &mut out);
        }
        encoder.finish(&mut out);
        out
    }

    #[test]
    fn encoder_stuffs_dots_and_fixes_line_ends() {
        assert_eq!(
            encode(b"A: b\r\n\r\n.hi\nbare\rcr\r\n..x", 3),
            b"A: b\r\n\r\n..hi\r\nbare\r\ncr\r\n...x\r\n.\r\n"
        );
        assert_eq!(encode(b"", 1), b".\r\n");
        assert_eq!(encode(b"x\r\n", 1), b"x\r\n.\r\n");
    }

    #[test]
    fn encoder_folds_long_header_lines_at_a_blank_and_splits_body_lines() {
        let mut header = b"Subject:".to_vec();
        for _ in 0..300 {
            header.extend_from_slice(b" word");
        }
        let mut input = header.clone();
        input.extend_from_slice(b"\r\n\r\n");
        input.extend(std::iter::repeat_n(b'y', 2500));
        let out = encode(&input, 7);
        let text = String::from_utf8(out).unwrap();
        let lines: Vec<&str> = text.split("\r\n").collect();
        assert!(lines.iter().all(|l| l.len() <= MAX_WIRE_LINE), "{lines:?}");
        // Unfolding the header gives it back exactly.
        let blank = lines.iter().position(|l| l.is_empty()).unwrap();
        assert_eq!(lines[..blank].concat().as_bytes(), &header[..]);
        assert!(lines[1].starts_with(' '));
        // The body is all there, in lines of 998, 998 and 504.
        let body: Vec<&str> = lines[blank + 1..lines.len() - 2].to_vec();
        assert_eq!(
            body.iter().map(|l| l.len()).collect::<Vec<_>>(),
            [998, 998, 504]
        );
    }

    proptest::proptest! {
        // Long inputs, so fewer cases: each runs the encoder four times.
        #![proptest_config(proptest::prelude::ProptestConfig::with_cases(64))]
        /// What DKIM signs is what goes out: sending `as_sent`'s form puts
        /// the same bytes on the wire as sending the original, and it needs
        /// no second pass.
        #[test]
        fn as_sent_sends_the_same_wire_bytes_and_is_final(
            input in crate::proto::message::strategies::message_bytes(3000),
        ) {
            let stored = crate::proto::message::to_crlf(&input);
            let Some(sent) = as_sent(&stored) else {
                proptest::prop_assert!(stored.split(|&b| b == b'\n').all(|l| l.len() <= MAX_WIRE_LINE + 1));
                return Ok(());
            };
            proptest::prop_assert_eq!(encode(&sent, 7), encode(&stored, 100));
            proptest::prop_assert_eq!(as_sent(&sent), None);
        }
    }

    proptest::proptest! {
        #[test]
        fn encoder_output_is_always_clean_smtp(
            input in crate::proto::message::strategies::message_bytes(3000),
            chunk in 1usize..100,
        ) {
            let out = encode(&input, chunk);
            proptest::prop_assert!(out.ends_with(b"\r\n.\r\n") || out == b".\r\n");
            let body = &out[..out.len() - 3];
            // Only CRLF line ends, no line over the limit, and the only
            // "." line is the end.
            for line in body.split(|&b| b == b'\n') {
                if line.is_empty() { continue; }
                proptest::prop_assert!(line.ends_with(b"\r"));
                let line = &line[..line.len() - 1];
                proptest::prop_assert!(!line.contains(&b'\r'));
                proptest::prop_assert!(line.len() <= MAX_WIRE_LINE);
                proptest::prop_assert!(line != b".");
            }
            // Clean input (CRLF lines, none long) comes through unchanged
            // once unstuffed.
            let clean: Vec<u8> = input
                .iter()
                .copied()
                .filter(|&b| b != b'\r' && b != b'\n')
                .collect();
            let mut crlf = clean.clone();
            crlf.extend_from_slice(b"\r\n");
            // (A line that starts with a dot needs one octet of room for
            // the stuffing, so at 998 octets it is folded: not clean.)
            if !clean.is_empty() && clean.len() + usize::from(clean[0] == b'.') <= MAX_WIRE_LINE {
                let out = encode(&crlf, chunk);
                let unstuffed = if clean[0] == b'.' { &out[1..] } else { &out[..] };
                proptest::prop_assert_eq!(&unstuffed[..unstuffed.len() - 3], &crlf[..]);
            }
        }
    }

    proptest::proptest! {
        /// Any MAIL or RCPT line reads without a panic, and a path it
        /// gives back is a piece of the line between its brackets.
        #[test]
        fn any_path_command_reads_without_panic(
            tail in proptest::collection::vec(proptest::prelude::any::<u8>(), 0..200),
        ) {
            let mut line = b"MAIL FROM:<".to_vec();
            line.extend_from_slice(&tail);
            if let Some(p) = path_command(&line) {
                let _ = (p.quoted_mailbox(), p.declared_size(), p.check_params());
                proptest::prop_assert!(std::str::from_utf8(&line).is_ok_and(|l| l.contains(p.path)));
            }
        }
    }
}
