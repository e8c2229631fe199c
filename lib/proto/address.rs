//! Validated newtypes for everything that travels in an envelope.
//!
//! An [`Address`], a [`ReversePath`] and an [`EnvelopeText`] can only be
//! built by parsing, and parsing refuses CR, LF, NUL and every other control
//! character. The queue and control files are line-oriented, so this is what
//! keeps a hostile HELO name or MAIL FROM from writing a line of its own into
//! them (the Exim "21Nails" class). Nothing in the library writes an envelope
//! field that did not come through one of these types.
//!
//! Addresses follow RFC 5321 §4.1.2 (`Mailbox = Local-part "@" ( Domain /
//! address-literal )`) with the SMTPUTF8 relaxation of RFC 6531 (UTF-8 in the
//! local part and domain). `%`, `!` and source routes have no routing meaning
//! here: `user%remote@local` is simply a local part that contains `%`, which is
//! what keeps the "percent hack" from ever making us an open relay.

use std::fmt;

/// RFC 5321 §4.5.3.1.1: the maximum total length of a local part is 64 octets.
pub const MAX_LOCAL_PART: usize = 64;
/// RFC 5321 §4.5.3.1.2: the maximum total length of a domain name is 255 octets.
pub const MAX_DOMAIN: usize = 255;
/// RFC 5321 §4.5.3.1.3: the maximum total length of a path is 256 octets.
pub const MAX_PATH: usize = 256;

/// Why a string is not an acceptable address; the text is fit for a reply.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AddressError {
    /// Empty where an address is required.
    #[error("empty address")]
    Empty,
    /// A CR, LF, NUL or other control character: never allowed.
    #[error("address contains a control character")]
    ControlCharacter,
    /// No `@`, or nothing on one side of it.
    #[error("address must be local-part@domain")]
    NoDomain,
    /// Longer than RFC 5321 allows.
    #[error("address too long")]
    TooLong,
    /// The local part is neither a dot-string nor a quoted string.
    #[error("invalid local part")]
    BadLocalPart,
    /// The domain is neither a host name nor an address literal.
    #[error("invalid domain")]
    BadDomain,
}

/// True for the bytes no envelope field may ever carry.
pub fn is_forbidden_char(c: char) -> bool {
    c.is_control()
}

/// An RFC 5321 mailbox `local@domain`. The domain is kept in lower case; the
/// local part keeps its case (RFC 5321 §2.4) but lookups fold it.
#[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Address {
    local: String,
    domain: String,
}

impl Address {
    /// Parses `local@domain` (no angle brackets).
    pub fn parse(text: &str) -> Result<Address, AddressError> {
        if text.is_empty() {
            return Err(AddressError::Empty);
        }
        if text.chars().any(is_forbidden_char) {
            return Err(AddressError::ControlCharacter);
        }
        if text.len() > MAX_PATH {
            return Err(AddressError::TooLong);
        }
        let at = text.rfind('@').ok_or(AddressError::NoDomain)?;
        let (local, domain) = (&text[..at], &text[at + 1..]);
        if local.is_empty() || domain.is_empty() {
            return Err(AddressError::NoDomain);
        }
        if local.len() > MAX_LOCAL_PART || domain.len() > MAX_DOMAIN {
            return Err(AddressError::TooLong);
        }
        if !is_local_part(local) {
            return Err(AddressError::BadLocalPart);
        }
        if !is_domain(domain) {
            return Err(AddressError::BadDomain);
        }
        Ok(Address {
            local: local.to_string(),
            domain: domain.to_lowercase(),
        })
    }

    /// The part before the `@`, as written.
    pub fn local_part(&self) -> &str {
        &self.local
    }

    /// The domain, in lower case.
    pub fn domain(&self) -> &str {
        &self.domain
    }

    /// The key used to look the address up in users and aliases: the whole
    /// address in lower case (local parts are case-insensitive in practice,
    /// and every mail server that matters treats them so).
    pub fn lookup_key(&self) -> String {
        format!("{}@{}", self.local.to_lowercase(), self.domain)
    }

    /// The address without a `+detail` (RFC 5233 subaddress) if it has one.
    pub fn without_detail(&self, delimiter: char) -> Option<Address> {
        let (user, _detail) = self.local.split_once(delimiter)?;
        if user.is_empty() {
            return None;
        }
        Some(Address {
            local: user.to_string(),
            domain: self.domain.clone(),
        })
    }

    /// True when the address needs SMTPUTF8 to be sent (RFC 6531).
    pub fn is_utf8(&self) -> bool {
        !self.local.is_ascii() || !self.domain.is_ascii()
    }
}

impl fmt::Display for Address {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}@{}", self.local, self.domain)
    }
}

impl fmt::Debug for Address {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "<{self}>")
    }
}

impl std::str::FromStr for Address {
    type Err = AddressError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Address::parse(s)
    }
}

/// The envelope sender: an address, or the null reverse-path `<>` used by
/// bounces and auto-replies (RFC 5321 §4.5.5).
#[derive(Clone, PartialEq, Eq, Hash)]
pub enum ReversePath {
    Null,
    Address(Address),
}

impl ReversePath {
    /// Parses the text between the angle brackets; empty means null.
    pub fn parse(text: &str) -> Result<ReversePath, AddressError> {
        if text.is_empty() {
            Ok(ReversePath::Null)
        } else {
            Address::parse(text).map(ReversePath::Address)
        }
    }

    pub fn address(&self) -> Option<&Address> {
        match self {
            ReversePath::Null => None,
            ReversePath::Address(a) => Some(a),
        }
    }

    pub fn is_null(&self) -> bool {
        matches!(self, ReversePath::Null)
    }
}

impl fmt::Display for ReversePath {
    /// The bare form: empty for the null path.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ReversePath::Null => Ok(()),
            ReversePath::Address(a) => a.fmt(f),
        }
    }
}

impl fmt::Debug for ReversePath {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "<{self}>")
    }
}

/// Free text that may go into an envelope or control-file field: a HELO name,
/// a client address, an ENVID, an authenticated user name, a command line of
/// a pipe alias. It has no control characters, so it can never end a line.
#[derive(Clone, PartialEq, Eq, Hash, Default)]
pub struct EnvelopeText(String);

impl EnvelopeText {
    /// Accepts text with no control characters, at most `max` bytes.
    pub fn new(text: &str, max: usize) -> Result<EnvelopeText, AddressError> {
        if text.chars().any(is_forbidden_char) {
            return Err(AddressError::ControlCharacter);
        }
        if text.len() > max {
            return Err(AddressError::TooLong);
        }
        Ok(EnvelopeText(text.to_string()))
    }

    /// Makes any text safe by replacing control characters with `?`; used for
    /// text that comes from a remote server (replies recorded in the queue).
    pub fn sanitize(text: &str, max: usize) -> EnvelopeText {
        let mut clean: String = text
            .chars()
            .map(|c| if is_forbidden_char(c) { '?' } else { c })
            .collect();
        if clean.len() > max {
            let mut cut = max;
            while !clean.is_char_boundary(cut) {
                cut -= 1;
            }
            clean.truncate(cut);
        }
        EnvelopeText(clean)
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for EnvelopeText {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl fmt::Debug for EnvelopeText {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:?}", self.0)
    }
}

/// RFC 5321 `Local-part = Dot-string / Quoted-string`, with RFC 6531's UTF-8.
fn is_local_part(local: &str) -> bool {
    if let Some(inner) = local.strip_prefix('"').and_then(|s| s.strip_suffix('"')) {
        // Quoted-string: qtextSMTP or quoted-pairSMTP; no bare quote inside.
        let mut escaped = false;
        for c in inner.chars() {
            match (escaped, c) {
                (true, _) => escaped = false,
                (false, '\\') => escaped = true,
                (false, '"') => return false,
                _ => {}
            }
        }
        return !escaped;
    }
    is_dot_string(local)
}

/// RFC 5321 `Dot-string = Atom *("." Atom)`: a local part that needs no
/// quotes (UTF-8 allowed, RFC 6531).
pub fn is_dot_string(local: &str) -> bool {
    local
        .split('.')
        .all(|atom| !atom.is_empty() && atom.chars().all(is_atext))
}

/// A local part as an address writes it: as it is when it is a
/// dot-string, else quoted with its `\` and `"` escaped (RFC 5321
/// `Quoted-string`), so `john doe` becomes `"john doe"`.
pub fn quote_local_part(local: &str) -> String {
    if is_dot_string(local) {
        local.to_string()
    } else {
        format!("\"{}\"", local.replace('\\', "\\\\").replace('"', "\\\""))
    }
}

/// RFC 5322 `atext`, widened by RFC 6531 to any non-ASCII character.
fn is_atext(c: char) -> bool {
    c.is_ascii_alphanumeric() || "!#$%&'*+-/=?^_`{|}~".contains(c) || !c.is_ascii()
}

/// RFC 5321 `Domain = sub-domain *("." sub-domain)` or an address literal
/// `[1.2.3.4]` / `[IPv6:…]`.
fn is_domain(domain: &str) -> bool {
    if let Some(literal) = domain.strip_prefix('[').and_then(|s| s.strip_suffix(']')) {
        return match literal
            .strip_prefix("IPv6:")
            .or(literal.strip_prefix("ipv6:"))
        {
            Some(v6) => v6.parse::<std::net::Ipv6Addr>().is_ok(),
            None => literal.parse::<std::net::Ipv4Addr>().is_ok(),
        };
    }
    let domain = domain.strip_suffix('.').unwrap_or(domain);
    !domain.is_empty()
        && domain.split('.').all(|label| {
            !label.is_empty()
                && label.len() <= 63
                && !label.starts_with('-')
                && !label.ends_with('-')
                && label
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || c == '-' || !c.is_ascii())
        })
}

/// True when `name` is acceptable as a domain name (used for HELO checks and
/// the domains file).
pub fn is_domain_name(name: &str) -> bool {
    name.len() <= MAX_DOMAIN && !name.starts_with('[') && is_domain(name)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn accepts_ordinary_addresses() {
        for good in [
            "a@b",
            "user@Example.TEST",
            "first.last+tag@example.test",
            "\"quoted local\"@example.test",
            "user%remote@example.test",
            "user@[127.0.0.1]",
            "user@[IPv6:::1]",
            "jøran@bücher.example",
        ] {
            assert!(Address::parse(good).is_ok(), "{good}");
        }
        assert_eq!(
            Address::parse("U@Example.TEST").unwrap().to_string(),
            "U@example.test"
        );
    }

    #[test]
    fn refuses_control_characters_everywhere() {
        for bad in [
            "a\r@b",
            "a@b\n",
            "a@b\rRCPT TO:<x@y>",
            "\"a\nb\"@c",
            "a\0@b",
            "a@b\u{7f}",
            "a@b\u{85}",
        ] {
            assert_eq!(
                Address::parse(bad),
                Err(AddressError::ControlCharacter),
                "{bad:?}"
            );
        }
        assert!(EnvelopeText::new("helo\r\nMAIL FROM:<x@y>", 255).is_err());
        assert_eq!(EnvelopeText::sanitize("a\r\nb", 10).as_str(), "a??b");
    }

    #[test]
    fn refuses_malformed_addresses() {
        for bad in [
            "",
            "nodomain",
            "@b",
            "a@",
            "a..b@c",
            ".a@c",
            "a@b..c",
            "a@-b",
            "a b@c",
            "a@[999.1.1.1]",
            "\"unterminated@c",
        ] {
            assert!(Address::parse(bad).is_err(), "{bad:?}");
        }
        let long_local = format!("{}@b", "a".repeat(65));
        assert_eq!(Address::parse(&long_local), Err(AddressError::TooLong));
    }

    #[test]
    fn subaddress_and_lookup_key() {
        let a = Address::parse("Joe+Lists@Example.test").unwrap();
        assert_eq!(a.lookup_key(), "joe+lists@example.test");
        assert_eq!(
            a.without_detail('+').unwrap().to_string(),
            "Joe@example.test"
        );
        assert!(
            Address::parse("+x@a")
                .unwrap()
                .without_detail('+')
                .is_none()
        );
    }

    #[test]
    fn null_reverse_path() {
        assert!(ReversePath::parse("").unwrap().is_null());
        assert_eq!(ReversePath::parse("a@b").unwrap().to_string(), "a@b");
    }

    proptest::proptest! {
        #[test]
        fn parsed_addresses_never_carry_line_breaks(s in "\\PC*[\r\n\0]?\\PC*") {
            if let Ok(a) = Address::parse(&s) {
                let text = a.to_string();
                proptest::prop_assert!(!text.contains(['\r', '\n', '\0']));
            }
        }
    }
}
