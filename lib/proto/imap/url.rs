//! IMAP URLs (RFC 5092) naming one message or part of one, as CATENATE
//! (RFC 4469) takes them: `imap://user@host/mailbox;UIDVALIDITY=n/;UID=n
//! /;SECTION=x/;PARTIAL=o.l`, the same from the path on (`/mailbox/;UID=n`,
//! which clients send), or from `;UID=` on (the selected mailbox).
//! Parameter names are case-insensitive; the mailbox, user and section
//! are percent-decoded UTF-8. URLAUTH and anything else is refused.

use percent_encoding::percent_decode_str;

/// A parsed message URL.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MessageUrl {
    /// The user of an absolute URL's `user@host`, if it names one.
    pub user: Option<String>,
    /// The mailbox (UTF-8); `None` for a URL relative to the selected one.
    pub mailbox: Option<String>,
    pub validity: Option<u32>,
    pub uid: u32,
    /// `SECTION=` as a FETCH section spec (`HEADER`, `1.2`, `1.MIME`...).
    pub section: Option<String>,
    /// `PARTIAL=offset[.length]`.
    pub partial: Option<(u32, Option<u32>)>,
}

/// Parses a URL naming one message; `None` for anything else (the
/// caller answers `NO [BADURL]`).
pub fn parse(url: &str) -> Option<MessageUrl> {
    let mut user = None;
    let path = if let Some(rest) = strip_prefix_ci(url, "imap://") {
        let (authority, path) = rest.split_at(rest.find('/')?);
        if let Some((info, _host)) = authority.rsplit_once('@') {
            // `user;AUTH=type`: the mechanism says nothing here.
            let name = info.split(';').next().unwrap_or("");
            if !name.is_empty() {
                user = Some(decode(name)?);
            }
        }
        path
    } else {
        url
    };
    let mut segments = path.split('/');
    let mut mailbox = None;
    let mut validity = None;
    if let Some(rest) = path.strip_prefix('/') {
        segments = rest.split('/');
        let first = segments.next()?;
        let mut params = first.split(';');
        let name = decode(params.next()?)?;
        if name.is_empty() {
            return None;
        }
        mailbox = Some(name);
        for param in params {
            validity = Some(number(value_of(param, "UIDVALIDITY")?)?);
        }
    }
    let (mut uid, mut section, mut partial) = (None, None, None);
    for segment in segments {
        // `mailbox;UIDVALIDITY=n/` then `;UID=n` makes an empty segment
        // only for a doubled slash, which no form has.
        let param = segment.strip_prefix(';')?;
        if let Some(v) = value_of(param, "UID") {
            if uid.is_some() {
                return None;
            }
            uid = Some(number(v)?);
        } else if let Some(v) = value_of(param, "SECTION") {
            if uid.is_none() || section.is_some() {
                return None;
            }
            section = Some(decode(v)?).filter(|s| !s.is_empty());
            section.as_ref()?;
        } else if let Some(v) = value_of(param, "PARTIAL") {
            if uid.is_none() || partial.is_some() {
                return None;
            }
            partial = Some(match v.split_once('.') {
                Some((o, l)) => (o.parse().ok()?, Some(number(l)?)),
                None => (v.parse().ok()?, None),
            });
        } else {
            return None;
        }
    }
    Some(MessageUrl {
        user,
        mailbox,
        validity,
        uid: uid?,
        section,
        partial,
    })
}

fn strip_prefix_ci<'a>(s: &'a str, prefix: &str) -> Option<&'a str> {
    let head = s.get(..prefix.len())?;
    head.eq_ignore_ascii_case(prefix)
        .then(|| &s[prefix.len()..])
}

/// The value of `NAME=value` when the name is `name` (any case).
fn value_of<'a>(param: &'a str, name: &str) -> Option<&'a str> {
    let (n, v) = param.split_once('=')?;
    n.eq_ignore_ascii_case(name).then_some(v)
}

/// A non-zero number (`nz-number`).
fn number(s: &str) -> Option<u32> {
    if s.starts_with('0') || !s.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    s.parse().ok()
}

fn decode(s: &str) -> Option<String> {
    percent_decode_str(s)
        .decode_utf8()
        .ok()
        .map(|c| c.into_owned())
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn the_forms_clients_send_parse() {
        let u =
            parse("imap://bob@mail.test/INBOX;UIDVALIDITY=785799047/;UID=113330/;SECTION=1.5.9")
                .unwrap();
        assert_eq!(u.user.as_deref(), Some("bob"));
        assert_eq!(u.mailbox.as_deref(), Some("INBOX"));
        assert_eq!((u.validity, u.uid), (Some(785_799_047), 113_330));
        assert_eq!(u.section.as_deref(), Some("1.5.9"));
        // RFC 4469's example, lower-case parameter names and all.
        let u = parse("/Drafts;UIDVALIDITY=385759045/;UID=20/;section=HEADER").unwrap();
        assert_eq!(u.mailbox.as_deref(), Some("Drafts"));
        assert_eq!(u.section.as_deref(), Some("HEADER"));
        let u = parse("/Sent%20Items/;UID=7/;PARTIAL=10.20").unwrap();
        assert_eq!(u.mailbox.as_deref(), Some("Sent Items"));
        assert_eq!(
            (u.validity, u.uid, u.partial),
            (None, 7, Some((10, Some(20))))
        );
        let u = parse(";UID=3/;SECTION=HEADER.FIELDS%20(SUBJECT)").unwrap();
        assert_eq!(u.mailbox, None);
        assert_eq!(u.section.as_deref(), Some("HEADER.FIELDS (SUBJECT)"));
        let u = parse("imap://bob;AUTH=*@h.test:143/INBOX/;UID=1").unwrap();
        assert_eq!(u.user.as_deref(), Some("bob"));
    }

    #[test]
    fn urls_that_name_no_one_message_are_refused() {
        for bad in [
            "",
            "imap://h.test",
            "imap://h.test/INBOX",
            "/INBOX",
            "/INBOX/;UID=0",
            "/INBOX/;UID=01",
            "/INBOX/;UID=1/;UID=2",
            "/INBOX;UIDVALIDITY=x/;UID=1",
            "/;UID=1",
            "/INBOX/;SECTION=1",
            "/INBOX/;UID=1/;SECTION=",
            "/INBOX/;UID=1/;URLAUTH=anonymous:internal:abc",
            "/INBOX//;UID=1",
            "/IN%ffBOX/;UID=1",
            "http://h.test/INBOX/;UID=1",
        ] {
            assert_eq!(parse(bad), None, "{bad}");
        }
    }

    proptest! {
        #[test]
        fn never_panics(s in "\\PC{0,80}") {
            let _ = parse(&s);
        }

        #[test]
        fn never_panics_on_near_misses(s in "(imap://[a-z@;=*]{0,8}/)?[A-Za-z%0-9]{0,6}(;[A-Za-z]{0,11}=[0-9.]{0,5})?(/;[A-Za-z]{0,8}=[A-Z0-9.%]{0,6}){0,4}") {
            let _ = parse(&s);
        }
    }
}
