//! Small operations on message text that several programs share: line-end
//! canonicalization, finding and reading header fields, dates.
//!
//! The queue holds bodies with CRLF line ends (the wire form); maildirs hold
//! LF. Local injectors hand us LF, CRLF or a mix; [`to_crlf`] makes one form
//! of it, and treats a bare CR as a line end too, so no bare CR ever reaches
//! the queue (a bare CR or LF is what the 2023 SMTP smuggling attacks ride on).

/// Canonical CRLF line ends: CRLF stays, a bare LF or a bare CR becomes CRLF.
/// A missing final line end is added.
pub fn to_crlf(data: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(data.len() + data.len() / 32 + 2);
    let mut i = 0;
    while i < data.len() {
        match data[i] {
            b'\r' => {
                out.extend_from_slice(b"\r\n");
                if data.get(i + 1) == Some(&b'\n') {
                    i += 1;
                }
            }
            b'\n' => out.extend_from_slice(b"\r\n"),
            b => out.push(b),
        }
        i += 1;
    }
    if !out.is_empty() && !out.ends_with(b"\r\n") {
        out.extend_from_slice(b"\r\n");
    }
    out
}

/// CRLF → LF, for programs that read mail the Unix way (a pipe alias,
/// Sieve's `pipe`). A bare CR stays: it was refused or canonicalized on
/// the way in, and this is no place to guess.
pub fn crlf_to_lf(data: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(data.len());
    let mut i = 0;
    while i < data.len() {
        if data[i] == b'\r' && data.get(i + 1) == Some(&b'\n') {
            i += 1;
            continue;
        }
        out.push(data[i]);
        i += 1;
    }
    out
}

/// The length of the header block including its terminating empty line, in
/// a CRLF message; the whole message when it has no body.
pub fn header_len(message: &[u8]) -> usize {
    if message.starts_with(b"\r\n") {
        return 2;
    }
    message
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .map(|p| p + 4)
        .unwrap_or(message.len())
}

/// The header fields of a CRLF header block as (name, unfolded value) pairs.
pub fn header_fields(headers: &[u8]) -> Vec<(String, String)> {
    let text = String::from_utf8_lossy(headers);
    let mut fields: Vec<(String, String)> = Vec::new();
    for line in text.split("\r\n") {
        if line.is_empty() {
            break;
        }
        if line.starts_with([' ', '\t']) {
            if let Some((_, value)) = fields.last_mut() {
                value.push(' ');
                value.push_str(line.trim());
            }
            continue;
        }
        if let Some((name, value)) = line.split_once(':') {
            fields.push((name.trim().to_string(), value.trim().to_string()));
        }
    }
    fields
}

/// True if the header block has a field of this name (case-insensitive).
pub fn has_header(headers: &[u8], name: &str) -> bool {
    header_fields(headers)
        .iter()
        .any(|(n, _)| n.eq_ignore_ascii_case(name))
}

/// Removes every field of this name (with its continuation lines).
pub fn remove_header(headers: &[u8], name: &str) -> Vec<u8> {
    let mut out = Vec::with_capacity(headers.len());
    let mut skipping = false;
    for line in headers.split_inclusive(|&b| b == b'\n') {
        let continuation = line.starts_with(b" ") || line.starts_with(b"\t");
        if !continuation {
            skipping = line.len() > name.len()
                && line[name.len()] == b':'
                && line[..name.len()].eq_ignore_ascii_case(name.as_bytes());
        }
        if !skipping {
            out.extend_from_slice(line);
        }
    }
    out
}

/// An RFC 5322 date for `secs` since the epoch, in UTC.
pub fn rfc5322_date(secs: u64) -> String {
    mail_builder::headers::date::Date::new(secs as i64).to_rfc822()
}

/// The envelope sender of a message handed to a delivery program: the
/// `--sender` flag if given, else `$SENDER` (set by postroom's pipe
/// delivery), else the `Return-Path` field delivery put on top; the null
/// sender when none parses. Line ends may be LF or CRLF.
pub fn envelope_sender(flag: Option<&str>, message: &[u8]) -> crate::proto::address::ReversePath {
    let from_header = || {
        let crlf = to_crlf(&message[..message.len().min(64 << 10)]);
        let end = header_len(&crlf);
        header_fields(&crlf[..end])
            .into_iter()
            .find(|(name, _)| name.eq_ignore_ascii_case("Return-Path"))
            .map(|(_, value)| {
                value
                    .trim()
                    .trim_start_matches('<')
                    .trim_end_matches('>')
                    .to_string()
            })
    };
    let text = flag
        .map(str::to_string)
        .or_else(|| std::env::var("SENDER").ok())
        .or_else(from_header)
        .unwrap_or_default();
    crate::proto::address::ReversePath::parse(&text)
        .unwrap_or(crate::proto::address::ReversePath::Null)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn crlf_to_lf_leaves_bare_cr() {
        assert_eq!(crlf_to_lf(b"a\r\nb\rc\n\r\n"), b"a\nb\rc\n\n");
    }

    #[test]
    fn canonical_line_ends() {
        assert_eq!(to_crlf(b"a\nb\r\nc\rd"), b"a\r\nb\r\nc\r\nd\r\n");
        assert_eq!(to_crlf(b""), b"");
        assert_eq!(to_crlf(b"\n.\n"), b"\r\n.\r\n");
    }

    #[test]
    fn headers_found_and_removed() {
        let m = b"To: a@b,\r\n c@d\r\nBcc: x@y\r\n  z@w\r\nSubject: s\r\n\r\nbody\r\n";
        let h = &m[..header_len(m)];
        assert_eq!(h.len(), m.len() - 6);
        let f = header_fields(h);
        assert_eq!(f[0], ("To".into(), "a@b, c@d".into()));
        assert!(has_header(h, "bcc"));
        assert_eq!(
            remove_header(h, "Bcc"),
            b"To: a@b,\r\n c@d\r\nSubject: s\r\n\r\n"
        );
        assert_eq!(header_len(b"\r\nbody"), 2);
    }

    #[test]
    fn dates_look_like_rfc5322() {
        assert_eq!(rfc5322_date(0), "Thu, 1 Jan 1970 00:00:00 +0000");
    }

    #[test]
    fn envelope_sender_from_a_return_path_with_lf_line_ends() {
        let m = b"Return-Path: <bob@far.test>\nDelivered-To: x@y.test\n\nbody\n";
        assert_eq!(envelope_sender(Some("a@b.test"), m).to_string(), "a@b.test");
        if std::env::var_os("SENDER").is_none() {
            assert_eq!(envelope_sender(None, m).to_string(), "bob@far.test");
            assert!(envelope_sender(None, b"Subject: x\n\n").is_null());
        }
    }
}
