//! RFC 8461 MTA-STS policy files: the `key: value` text a domain serves
//! at `https://mta-sts.DOMAIN/.well-known/mta-sts.txt`, and the MX
//! patterns in it.
//!
//! ```text
//! version: STSv1
//! mode: enforce
//! mx: mail.example.com
//! mx: *.example.net
//! max_age: 604800
//! ```
//!
//! The `_mta-sts` and `_smtp._tls` TXT records are parsed by mail-auth
//! (`mail_auth::mta_sts`), which also builds RFC 8460 reports; it has no
//! parser for the policy file itself, so this is it.

use std::fmt;

/// The most a sender reads of a policy file. RFC 8461 §3.3 leaves the
/// number to the sender; 64 KiB is what the large providers document and
/// what Postfix's and Stalwart's resolvers use. A longer body is refused,
/// not truncated: a cut policy could drop an `mx` line.
pub const POLICY_SIZE_LIMIT: usize = 64 * 1024;

/// The longest a policy may be cached (RFC 8461 §3.2: "up to 31557600"
/// seconds, one year). Larger values are clamped to this, as the RFC's
/// errata discussion and the reference implementations do.
pub const MAX_AGE_LIMIT: u64 = 31_557_600;

/// What the policy asks of senders.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    /// Deliver only to a matching MX over TLS with a valid certificate.
    Enforce,
    /// Check as for enforce and report failures, but deliver anyway.
    Testing,
    /// The domain withdrew its policy.
    None,
}

impl Mode {
    pub fn as_str(self) -> &'static str {
        match self {
            Mode::Enforce => "enforce",
            Mode::Testing => "testing",
            Mode::None => "none",
        }
    }
}

/// A parsed policy.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Policy {
    pub mode: Mode,
    /// Seconds the policy may be cached, at most [`MAX_AGE_LIMIT`].
    pub max_age: u64,
    /// MX patterns, lower case, without a trailing dot: `host.example`
    /// or `*.example` (one leftmost label).
    pub mx: Vec<String>,
}

/// Why a policy file was refused. A refused policy counts as a failed
/// fetch (RFC 8461 §3.3): the sender keeps using a cached policy if it
/// has one.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PolicyError {
    #[error("the policy is larger than {POLICY_SIZE_LIMIT} bytes")]
    TooLarge,
    #[error("the policy is not UTF-8 text")]
    NotText,
    #[error("line {0} is not a `key: value` field")]
    BadLine(usize),
    #[error("the policy has no `{0}` field")]
    Missing(&'static str),
    #[error("the `{0}` field appears more than once")]
    Repeated(&'static str),
    #[error("version {0:?} is not STSv1")]
    Version(String),
    #[error("mode {0:?} is not enforce, testing or none")]
    Mode(String),
    #[error("max_age {0:?} is not a number of seconds")]
    MaxAge(String),
    #[error("mx {0:?} is not a host name or *.domain pattern")]
    Mx(String),
}

/// Parses a policy body as fetched (LF or CRLF line ends, RFC 8461
/// erratum 6253). Unknown fields are ignored (§3.2); `version`, `mode`
/// and `max_age` must appear exactly once; `mx` at least once unless the
/// mode is `none`.
pub fn parse_policy(body: &[u8]) -> Result<Policy, PolicyError> {
    if body.len() > POLICY_SIZE_LIMIT {
        return Err(PolicyError::TooLarge);
    }
    let text = std::str::from_utf8(body).map_err(|_| PolicyError::NotText)?;
    let mut version = None;
    let mut mode = None;
    let mut max_age = None;
    let mut mx = Vec::new();
    for (number, line) in text.split('\n').enumerate() {
        let line = line.strip_suffix('\r').unwrap_or(line);
        let line = line.trim_end_matches([' ', '\t']);
        if line.is_empty() {
            continue;
        }
        let (key, value) = line
            .split_once(':')
            .ok_or(PolicyError::BadLine(number + 1))?;
        if !is_field_name(key) {
            return Err(PolicyError::BadLine(number + 1));
        }
        let value = value.trim_start_matches([' ', '\t']);
        match key {
            "version" => set_once(&mut version, "version", value)?,
            "mode" => set_once(&mut mode, "mode", value)?,
            "max_age" => set_once(&mut max_age, "max_age", value)?,
            "mx" => mx.push(parse_mx(value)?),
            _ => {}
        }
    }
    let version = version.ok_or(PolicyError::Missing("version"))?;
    if version != "STSv1" {
        return Err(PolicyError::Version(version.to_string()));
    }
    let mode = match mode.ok_or(PolicyError::Missing("mode"))? {
        "enforce" => Mode::Enforce,
        "testing" => Mode::Testing,
        "none" => Mode::None,
        other => return Err(PolicyError::Mode(other.to_string())),
    };
    let max_age = max_age.ok_or(PolicyError::Missing("max_age"))?;
    // 1*10DIGIT in the ABNF; anything longer cannot be a valid value.
    if max_age.is_empty() || max_age.len() > 10 || !max_age.bytes().all(|b| b.is_ascii_digit()) {
        return Err(PolicyError::MaxAge(max_age.to_string()));
    }
    let max_age = max_age
        .parse::<u64>()
        .map_err(|_| PolicyError::MaxAge(max_age.to_string()))?
        .min(MAX_AGE_LIMIT);
    if mx.is_empty() && mode != Mode::None {
        return Err(PolicyError::Missing("mx"));
    }
    Ok(Policy { mode, max_age, mx })
}

fn set_once<'a>(
    slot: &mut Option<&'a str>,
    name: &'static str,
    value: &'a str,
) -> Result<(), PolicyError> {
    if slot.replace(value).is_some() {
        return Err(PolicyError::Repeated(name));
    }
    Ok(())
}

/// `sts-policy-field-name = ALPHA *31(ALPHA / DIGIT / "_" / "-" / ".")`
fn is_field_name(key: &str) -> bool {
    let mut bytes = key.bytes();
    matches!(bytes.next(), Some(b) if b.is_ascii_alphabetic())
        && key.len() <= 32
        && bytes.all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'-' | b'.'))
}

fn parse_mx(value: &str) -> Result<String, PolicyError> {
    let pattern = value.trim_end_matches('.').to_ascii_lowercase();
    let domain = pattern.strip_prefix("*.").unwrap_or(&pattern);
    let valid = crate::proto::address::is_domain_name(domain);
    if !valid {
        return Err(PolicyError::Mx(value.to_string()));
    }
    Ok(pattern)
}

impl Policy {
    /// Whether an MX host name is one the policy allows (RFC 8461 §4.1):
    /// equal ignoring case and a trailing dot, or `*.domain` matching
    /// exactly one more label on the left.
    pub fn allows_mx(&self, host: &str) -> bool {
        self.mx.iter().any(|pattern| pattern_matches(pattern, host))
    }
}

/// One MX pattern against one host name (see [`Policy::allows_mx`]).
pub fn pattern_matches(pattern: &str, host: &str) -> bool {
    let host = host.trim_end_matches('.');
    match pattern.strip_prefix("*.") {
        Some(domain) => host
            .split_once('.')
            .is_some_and(|(label, rest)| !label.is_empty() && rest.eq_ignore_ascii_case(domain)),
        None => host.eq_ignore_ascii_case(pattern),
    }
}

/// The policy as a policy file (CRLF line ends, as RFC 8461's examples),
/// which [`parse_policy`] reads back to the same value: this is how a
/// fetched policy is kept in the tree's cache.
impl fmt::Display for Policy {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "version: STSv1\r\nmode: {}\r\n", self.mode.as_str())?;
        for mx in &self.mx {
            write!(f, "mx: {mx}\r\n")?;
        }
        write!(f, "max_age: {}\r\n", self.max_age)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn the_rfc_example_parses() {
        let body = b"version: STSv1\r\nmode: enforce\r\nmx: mail.example.com\r\nmx: *.example.net\r\nmx: backupmx.example.com\r\nmax_age: 604800\r\n";
        let policy = parse_policy(body).unwrap();
        assert_eq!(policy.mode, Mode::Enforce);
        assert_eq!(policy.max_age, 604_800);
        assert_eq!(
            policy.mx,
            ["mail.example.com", "*.example.net", "backupmx.example.com"]
        );
    }

    #[test]
    fn bare_lf_trailing_space_unknown_fields_and_any_order_are_accepted() {
        let body = b"mx: MX.Example.COM.  \nmax_age: 86400\nversion: STSv1\nextension_1: x\nmode: testing\n";
        let policy = parse_policy(body).unwrap();
        assert_eq!(policy.mode, Mode::Testing);
        assert_eq!(policy.mx, ["mx.example.com"]);
    }

    #[test]
    fn mode_none_needs_no_mx() {
        let policy = parse_policy(b"version: STSv1\nmode: none\nmax_age: 0\n").unwrap();
        assert_eq!(policy.mode, Mode::None);
        assert!(policy.mx.is_empty());
    }

    #[test]
    fn broken_policies_are_refused_with_the_reason() {
        let cases: [(&[u8], PolicyError); 9] = [
            (
                b"mode: enforce\nmx: a.test\nmax_age: 1\n",
                PolicyError::Missing("version"),
            ),
            (
                b"version: STSv2\nmode: enforce\nmx: a.test\nmax_age: 1\n",
                PolicyError::Version("STSv2".into()),
            ),
            (
                b"version: STSv1\nmode: strict\nmx: a.test\nmax_age: 1\n",
                PolicyError::Mode("strict".into()),
            ),
            (
                b"version: STSv1\nmode: enforce\nmax_age: 1\n",
                PolicyError::Missing("mx"),
            ),
            (
                b"version: STSv1\nmode: enforce\nmx: a.test\nmax_age: -1\n",
                PolicyError::MaxAge("-1".into()),
            ),
            (
                b"version: STSv1\nmode: enforce\nmx: a.test\nmax_age: 12345678901\n",
                PolicyError::MaxAge("12345678901".into()),
            ),
            (
                b"version: STSv1\nmode: enforce\nmode: none\nmx: a.test\nmax_age: 1\n",
                PolicyError::Repeated("mode"),
            ),
            (
                b"version: STSv1\nmode: enforce\nmx: a..test\nmax_age: 1\n",
                PolicyError::Mx("a..test".into()),
            ),
            (b"<html>not found</html>\n", PolicyError::BadLine(1)),
        ];
        for (body, error) in cases {
            assert_eq!(
                parse_policy(body),
                Err(error),
                "{}",
                String::from_utf8_lossy(body)
            );
        }
        let huge = format!("version: STSv1\n{}", "x: y\n".repeat(POLICY_SIZE_LIMIT));
        assert_eq!(parse_policy(huge.as_bytes()), Err(PolicyError::TooLarge));
        assert_eq!(
            parse_policy(b"version: STSv1\xff\n"),
            Err(PolicyError::NotText)
        );
    }

    #[test]
    fn max_age_is_clamped_to_a_year() {
        let policy =
            parse_policy(b"version: STSv1\nmode: enforce\nmx: a.test\nmax_age: 9999999999\n")
                .unwrap();
        assert_eq!(policy.max_age, MAX_AGE_LIMIT);
    }

    #[test]
    fn wildcards_match_exactly_one_label() {
        assert!(pattern_matches("*.example.net", "mx1.example.net"));
        assert!(pattern_matches("*.example.net", "MX1.Example.NET."));
        assert!(!pattern_matches("*.example.net", "example.net"));
        assert!(!pattern_matches("*.example.net", "a.b.example.net"));
        assert!(!pattern_matches("*.example.net", ".example.net"));
        assert!(!pattern_matches(
            "*.example.net",
            "mx1.example.net.evil.test"
        ));
        assert!(pattern_matches("mail.example.com", "mail.example.com."));
        assert!(!pattern_matches("mail.example.com", "xmail.example.com"));
    }

    fn label() -> impl Strategy<Value = String> {
        "[a-z0-9]([a-z0-9-]{0,8}[a-z0-9])?"
    }

    fn pattern() -> impl Strategy<Value = String> {
        (any::<bool>(), proptest::collection::vec(label(), 1..4)).prop_map(|(wild, labels)| {
            let domain = labels.join(".");
            if wild { format!("*.{domain}") } else { domain }
        })
    }

    proptest! {
        #[test]
        fn any_input_is_parsed_or_refused_without_panicking(body in proptest::collection::vec(any::<u8>(), 0..512)) {
            let _ = parse_policy(&body);
        }

        #[test]
        fn a_written_policy_reads_back_the_same(
            mode in prop_oneof![Just(Mode::Enforce), Just(Mode::Testing), Just(Mode::None)],
            max_age in 0..=MAX_AGE_LIMIT,
            mx in proptest::collection::vec(pattern(), 1..5),
        ) {
            let policy = Policy { mode, max_age, mx };
            prop_assert_eq!(parse_policy(policy.to_string().as_bytes()), Ok(policy));
        }

        #[test]
        fn a_wildcard_matches_every_single_label_host_under_it(domain in pattern(), host_label in label()) {
            let domain = domain.trim_start_matches("*.").to_string();
            let wildcard = format!("*.{domain}");
            let host = format!("{host_label}.{domain}");
            prop_assert!(pattern_matches(&wildcard, &host));
            prop_assert!(!pattern_matches(&wildcard, &domain));
            let deeper = format!("x.{host}");
            prop_assert!(!pattern_matches(&wildcard, &deeper));
        }
    }
}
