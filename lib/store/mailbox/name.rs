//! Mailbox names: what a client may call a folder, and where it lives.
//!
//! A name is Unicode text with `.` as the hierarchy delimiter (Maildir++
//! keeps every folder as `.Name` beside INBOX, so `Lists.rust` is the folder
//! `.Lists.rust`). On disk the name is written in modified UTF-7 (RFC 3501
//! §5.1.3), as Dovecot and Courier do, so a maildir moves between them and
//! us unchanged. On the wire it is modified UTF-7 for IMAP4rev1 clients and
//! UTF-8 once a client has enabled IMAP4rev2 or UTF8=ACCEPT.
//!
//! Security: [`MailboxName::new`] is the one gate every name passes. The disk
//! form it yields is printable ASCII without `/`, with no empty hierarchy
//! level, so `..`, absolute paths and control characters can never reach a
//! path (see the `names_cannot_escape` test).

use std::fmt;

/// The hierarchy delimiter, as LIST reports it.
pub const DELIMITER: char = '.';

/// Longest name accepted, in bytes of its disk form (a file name is 255).
const MAX_DISK_LEN: usize = 200;

/// Why a name was refused; the text is fit for a `NO` reply.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum NameError {
    #[error("mailbox name is empty")]
    Empty,
    #[error("mailbox name is too long (at most {MAX_DISK_LEN} bytes on disk)")]
    TooLong,
    #[error("mailbox name has an empty level (leading, trailing or doubled '.')")]
    EmptyLevel,
    #[error("mailbox name may not contain '/', '\\\\', '~' at the start, or control characters")]
    BadCharacter,
    #[error("mailbox name is not valid modified UTF-7")]
    BadUtf7,
}

/// A valid mailbox name; `INBOX` (any case) is normalized to `INBOX`.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct MailboxName(String);

impl MailboxName {
    /// Checks a name given in Unicode.
    pub fn new(name: &str) -> Result<MailboxName, NameError> {
        if name.is_empty() {
            return Err(NameError::Empty);
        }
        if name.eq_ignore_ascii_case("INBOX") {
            return Ok(MailboxName("INBOX".into()));
        }
        if name
            .chars()
            .any(|c| c.is_control() || c == '/' || c == '\\')
            || name.starts_with('~')
        {
            return Err(NameError::BadCharacter);
        }
        if name.split(DELIMITER).any(str::is_empty) {
            return Err(NameError::EmptyLevel);
        }
        // `INBOX.x` keeps its case-insensitive INBOX prefix as INBOX.
        let name = match name.get(..6) {
            Some(prefix) if prefix.eq_ignore_ascii_case("INBOX.") => {
                format!("INBOX.{}", &name[6..])
            }
            _ => name.to_string(),
        };
        if encode_utf7(&name).len() > MAX_DISK_LEN {
            return Err(NameError::TooLong);
        }
        Ok(MailboxName(name))
    }

    /// Decodes a name as a client sent it: modified UTF-7, or UTF-8 when the
    /// client has enabled UTF-8 (a name that is valid modified UTF-7 is still
    /// read as such, as RFC 9051 §5.1 allows).
    pub fn from_wire(wire: &str, utf8: bool) -> Result<MailboxName, NameError> {
        match decode_utf7(wire) {
            Some(name) => MailboxName::new(&name),
            None if utf8 => MailboxName::new(wire),
            None => Err(NameError::BadUtf7),
        }
    }

    /// The folder as it appears on disk: the name in modified UTF-7.
    pub fn from_disk(disk: &str) -> Result<MailboxName, NameError> {
        MailboxName::new(&decode_utf7(disk).ok_or(NameError::BadUtf7)?)
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }

    pub fn is_inbox(&self) -> bool {
        self.0 == "INBOX"
    }

    /// The Maildir++ folder name (without the leading dot): modified UTF-7.
    pub fn disk_name(&self) -> String {
        encode_utf7(&self.0)
    }

    /// The name to send: UTF-8 text, or modified UTF-7 for IMAP4rev1. In
    /// UTF-8 too, a name that [`MailboxName::from_wire`] would read as
    /// modified UTF-7 of another (`&Jjo-` is not the text `&Jjo-`) goes in
    /// modified UTF-7, so what the client sends back names the same folder.
    pub fn wire(&self, utf8: bool) -> String {
        let reads_back = || decode_utf7(&self.0).is_none_or(|name| name == self.0);
        if utf8 && reads_back() {
            self.0.clone()
        } else {
            encode_utf7(&self.0)
        }
    }

    /// This name is `root` or a folder below it (`a.b` is within `a`,
    /// `ab` is not).
    pub fn is_within(&self, root: &MailboxName) -> bool {
        self.0
            .strip_prefix(root.0.as_str())
            .is_some_and(|rest| rest.is_empty() || rest.starts_with(DELIMITER))
    }

    /// The parent levels of this name: `a.b.c` gives `a`, `a.b`.
    pub fn parents(&self) -> Vec<String> {
        self.0
            .char_indices()
            .filter(|&(_, c)| c == DELIMITER)
            .map(|(i, _)| self.0[..i].to_string())
            .collect()
    }
}

impl fmt::Display for MailboxName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

const B64: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+,";

/// RFC 3501 §5.1.3: printable ASCII stands for itself (`&` as `&-`); other
/// characters as UTF-16 in base64 with `,` for `/`, between `&` and `-`.
pub fn encode_utf7(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let mut pending: Vec<u16> = Vec::new();
    let flush = |pending: &mut Vec<u16>, out: &mut String| {
        if pending.is_empty() {
            return;
        }
        out.push('&');
        let bytes: Vec<u8> = pending.iter().flat_map(|u| u.to_be_bytes()).collect();
        for chunk in bytes.chunks(3) {
            let b = [
                chunk[0],
                chunk.get(1).copied().unwrap_or(0),
                chunk.get(2).copied().unwrap_or(0),
            ];
            let n = (u32::from(b[0]) << 16) | (u32::from(b[1]) << 8) | u32::from(b[2]);
            let chars = chunk.len() + 1;
            for i in 0..chars {
                out.push(B64[((n >> (18 - 6 * i)) & 63) as usize] as char);
            }
        }
        out.push('-');
        pending.clear();
    };
    for c in text.chars() {
        if (' '..='~').contains(&c) {
            flush(&mut pending, &mut out);
            if c == '&' {
                out.push_str("&-");
            } else {
                out.push(c);
            }
        } else {
            let mut units = [0u16; 2];
            pending.extend_from_slice(c.encode_utf16(&mut units));
        }
    }
    flush(&mut pending, &mut out);
    out
}

/// The inverse of [`encode_utf7`]; `None` for anything not in the canonical
/// form (so each name has one spelling on disk).
pub fn decode_utf7(text: &str) -> Option<String> {
    let mut out = String::with_capacity(text.len());
    let mut rest = text.as_bytes();
    while let Some((&b, tail)) = rest.split_first() {
        rest = tail;
        if b != b'&' {
            if !(0x20..0x7f).contains(&b) {
                return None;
            }
            out.push(b as char);
            continue;
        }
        let end = rest.iter().position(|&c| c == b'-')?;
        let (encoded, tail) = rest.split_at(end);
        rest = &tail[1..];
        if encoded.is_empty() {
            out.push('&');
            continue;
        }
        let mut bits = 0u32;
        let mut nbits = 0;
        let mut units = Vec::new();
        for &c in encoded {
            let v = B64.iter().position(|&x| x == c)? as u32;
            bits = (bits << 6) | v;
            nbits += 6;
            if nbits >= 16 {
                nbits -= 16;
                units.push((bits >> nbits) as u16);
                bits &= (1 << nbits) - 1;
            }
        }
        if bits != 0 || nbits >= 6 {
            return None;
        }
        let decoded = String::from_utf16(&units).ok()?;
        // Printable ASCII must not hide in base64: one spelling per name.
        if decoded.chars().any(|c| (' '..='~').contains(&c)) {
            return None;
        }
        out.push_str(&decoded);
    }
    Some(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_name_is_within_itself_and_its_parents_only() {
        let name = |s: &str| MailboxName::new(s).unwrap();
        assert!(name("Work").is_within(&name("Work")));
        assert!(name("Work.Sub.Deep").is_within(&name("Work")));
        assert!(name("Work.Sub").is_within(&name("Work.Sub")));
        assert!(!name("Workshop").is_within(&name("Work")));
        assert!(!name("Work").is_within(&name("Work.Sub")));
    }

    #[test]
    fn utf7_round_trips_rfc_examples() {
        assert_eq!(
            encode_utf7("~peter/mail/台北/日本語"),
            "~peter/mail/&U,BTFw-/&ZeVnLIqe-"
        );
        assert_eq!(encode_utf7("Entwürfe"), "Entw&APw-rfe");
        assert_eq!(encode_utf7("a&b"), "a&-b");
        for s in ["Entwürfe", "a&b", "日本語", "😀 x", "&", ""] {
            assert_eq!(decode_utf7(&encode_utf7(s)).as_deref(), Some(s), "{s}");
        }
        assert_eq!(decode_utf7("&U,BTFw-"), Some("台北".into()));
        for bad in ["&", "&U,BTF-", "&AGE-", "x\u{1}", "&&-"] {
            assert_eq!(decode_utf7(bad), None, "{bad:?}");
        }
    }

    #[test]
    fn a_name_sent_in_utf8_reads_back_as_itself() {
        // Found by the imap_command fuzz target: the folder "&Jjo-" (made
        // from the wire "&-Jjo-") was sent as is to a UTF8=ACCEPT client,
        // whose next SELECT of it decoded to the folder "☺".
        let name = MailboxName::from_wire("&-Jjo-", true).unwrap();
        assert_eq!(name.as_str(), "&Jjo-");
        assert_eq!(name.wire(true), "&-Jjo-");
        let back = MailboxName::from_wire(&name.wire(true), true).unwrap();
        assert_eq!(back, name);
        // A name that reads back as itself is sent as UTF-8.
        assert_eq!(
            MailboxName::new("Entwürfe & Co").unwrap().wire(true),
            "Entwürfe & Co"
        );
    }

    #[test]
    fn names_cannot_escape() {
        for bad in [
            "", "..", "../x", "a/b", "/etc", ".hidden", "a..b", "x.", "x\n", "a\\b", "~root",
            "x\u{7f}",
        ] {
            assert!(MailboxName::new(bad).is_err(), "{bad:?}");
        }
        let long = "x".repeat(300);
        assert_eq!(MailboxName::new(&long), Err(NameError::TooLong));
        // Whatever the name, the disk form is printable ASCII with no '/'.
        let n = MailboxName::new("Lists.日本").unwrap();
        assert!(
            n.disk_name()
                .bytes()
                .all(|b| (0x20..0x7f).contains(&b) && b != b'/')
        );
        assert_eq!(MailboxName::new("inbox").unwrap().as_str(), "INBOX");
        assert_eq!(MailboxName::new("Inbox.x").unwrap().as_str(), "INBOX.x");
        assert_eq!(
            MailboxName::from_wire("Entw&APw-rfe", false)
                .unwrap()
                .as_str(),
            "Entwürfe"
        );
        assert_eq!(
            MailboxName::from_wire("Entwürfe", true).unwrap().as_str(),
            "Entwürfe"
        );
        assert!(MailboxName::from_wire("&Jjo-&Jjo-x/..", false).is_err());
        assert_eq!(
            MailboxName::new("a.b.c").unwrap().parents(),
            vec!["a", "a.b"]
        );
    }
}
