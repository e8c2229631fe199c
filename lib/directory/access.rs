//! The access file: which clients may connect, and the kill file of
//! senders (`postroom-access(5)`).
//!
//! ```text
//! # IP rules: the first that matches decides; no match allows.
//! allow 192.0.2.0/24
//! deny  198.51.100.0/24
//! # Senders refused at MAIL FROM: an address, or @domain for all of it.
//! reject-sender spammer@example.com
//! reject-sender @junk.example
//! ```
//!
//! Every server reads it: smtp-recv, pop3-serve and imap-serve refuse a
//! denied client at connect; smtp-recv refuses a killed sender at MAIL.

use std::net::IpAddr;
use std::path::Path;

use crate::proto::address::{Address, is_domain_name};
use crate::proto::smtp::Network;
use crate::store::fsutil::FileError;

#[derive(Debug, Clone, Default)]
pub struct Access {
    rules: Vec<(bool, Network)>,
    senders: Vec<String>,
    sender_domains: Vec<String>,
}

impl Access {
    /// Reads the access file; a missing file allows everyone.
    pub fn load(path: &Path) -> Result<Access, FileError> {
        Access::parse(&FileError::read(path)?, path)
    }

    pub fn parse(text: &str, path: &Path) -> Result<Access, FileError> {
        let mut access = Access::default();
        for (number, line) in text.lines().enumerate() {
            let line = line.split('#').next().unwrap_or("").trim();
            if line.is_empty() {
                continue;
            }
            let syntax = |message: String| FileError::syntax(path, number + 1, message);
            let (word, value) = line
                .split_once(char::is_whitespace)
                .map(|(w, v)| (w, v.trim()))
                .ok_or_else(|| syntax(format!("{line:?}: expected `allow NETWORK`, `deny NETWORK` or `reject-sender ADDRESS`")))?;
            match word {
                "allow" | "deny" => {
                    let network = Network::parse(value).map_err(syntax)?;
                    access.rules.push((word == "allow", network));
                }
                "reject-sender" => {
                    if let Some(domain) = value.strip_prefix('@') {
                        if !is_domain_name(domain) {
                            return Err(syntax(format!("{value:?} is not @domain")));
                        }
                        access.sender_domains.push(domain.to_lowercase());
                    } else {
                        let address =
                            Address::parse(value).map_err(|e| syntax(format!("{value:?}: {e}")))?;
                        access.senders.push(address.lookup_key());
                    }
                }
                other => {
                    return Err(syntax(format!(
                        "unknown rule {other:?} (allow, deny, reject-sender)"
                    )));
                }
            }
        }
        Ok(access)
    }

    /// Whether a client at `ip` may connect: the first matching rule
    /// decides; no rule matching allows.
    pub fn allows(&self, ip: IpAddr) -> bool {
        self.rules
            .iter()
            .find(|(_, network)| network.contains(ip))
            .map(|(allow, _)| *allow)
            .unwrap_or(true)
    }

    /// Whether mail from this sender is refused (the kill file).
    pub fn rejects_sender(&self, sender: &Address) -> bool {
        self.senders.contains(&sender.lookup_key())
            || self.sender_domains.iter().any(|d| d == sender.domain())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn first_rule_wins_and_default_allows() {
        let a = Access::parse(
            "allow 192.0.2.7\ndeny 192.0.2.0/24 # the rest\n",
            Path::new("access"),
        )
        .unwrap();
        assert!(a.allows("192.0.2.7".parse().unwrap()));
        assert!(!a.allows("192.0.2.8".parse().unwrap()));
        assert!(a.allows("198.51.100.1".parse().unwrap()));
        assert!(a.allows("::1".parse().unwrap()));
    }

    #[test]
    fn kill_file() {
        let a = Access::parse(
            "reject-sender Spammer@Example.com\nreject-sender @junk.example\n",
            Path::new("access"),
        )
        .unwrap();
        assert!(a.rejects_sender(&Address::parse("spammer@example.com").unwrap()));
        assert!(a.rejects_sender(&Address::parse("anyone@JUNK.example").unwrap()));
        assert!(!a.rejects_sender(&Address::parse("friend@example.com").unwrap()));
    }

    #[test]
    fn errors_name_the_line() {
        for (text, want) in [
            ("allow\n", "access:1: "),
            ("x\nbounce 1.2.3.4\n", "access:1: "),
            ("deny 10.0.0.0/99\n", "access:1: "),
            ("# ok\nreject-sender not an address\n", "access:2: "),
        ] {
            let e = Access::parse(text, Path::new("access"))
                .unwrap_err()
                .to_string();
            assert!(e.starts_with(want), "{text:?}: {e}");
        }
    }
}
