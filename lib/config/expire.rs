//! `[expire]`: how long messages may stay in a folder before
//! `postroom expire` removes them (IMail's immsgexp, Dovecot's expire
//! plugin); see `postroom.toml(5)`.
//!
//! ```toml
//! [expire]
//! Trash = "30d"
//! Junk = "14d"
//! [expire.domains."example.org"]
//! Trash = "7d"
//! [expire.users."ann@example.org"]
//! Junk = "never"
//! ```
//!
//! A user's own entry wins over the domain's, which wins over the general
//! one; `never` keeps a folder that a wider entry would expire.

use std::collections::BTreeMap;
use std::time::Duration;

use serde::Deserialize;

/// How long a message may stay in a folder.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Age {
    Never,
    After(Duration),
}

/// An age's words for "more than 0", given what was written.
fn zero(written: &str) -> String {
    format!("{written}: an age must be more than 0 (write \"never\" to keep mail for ever)")
}

/// An age is a string (`"30d"`, `"12h"`, `"never"`) or a whole number of
/// days (`30`); anything else is refused, saying so.
impl<'de> Deserialize<'de> for Age {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Age, D::Error> {
        struct Visitor;
        impl serde::de::Visitor<'_> for Visitor {
            type Value = Age;

            fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
                f.write_str("an age: a string such as \"30d\", \"2w\", \"12h\" or \"never\", or a number of days such as 30")
            }

            fn visit_str<E: serde::de::Error>(self, text: &str) -> Result<Age, E> {
                if text.trim().eq_ignore_ascii_case("never") {
                    return Ok(Age::Never);
                }
                match super::parse_duration(text).map_err(E::custom)? {
                    d if d.is_zero() => Err(E::custom(zero(&format!("{text:?}")))),
                    d => Ok(Age::After(d)),
                }
            }

            fn visit_u64<E: serde::de::Error>(self, days: u64) -> Result<Age, E> {
                if days == 0 {
                    return Err(E::custom(zero("0")));
                }
                days.checked_mul(86_400)
                    .map(|secs| Age::After(Duration::from_secs(secs)))
                    .ok_or_else(|| {
                        E::custom(format!(
                            "{days} days is longer than any mail is kept; write \"never\""
                        ))
                    })
            }

            fn visit_i64<E: serde::de::Error>(self, days: i64) -> Result<Age, E> {
                match u64::try_from(days) {
                    Ok(days) => self.visit_u64(days),
                    Err(_) => Err(E::custom(format!(
                        "{days}: an age cannot be negative (a number of days such as 30, or \"never\")"
                    ))),
                }
            }
        }
        d.deserialize_any(Visitor)
    }
}

/// Folder name → age.
pub type Ages = BTreeMap<String, Age>;

/// `[expire]`.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(default)]
pub struct Expire {
    /// Per domain (lower case), replacing the general ages folder by folder.
    pub domains: BTreeMap<String, Ages>,
    /// Per user address (lower case), replacing both.
    pub users: BTreeMap<String, Ages>,
    /// The general ages: every other key of `[expire]` is a folder name.
    #[serde(flatten)]
    pub folders: Ages,
}

impl Expire {
    /// Whether any folder expires anywhere.
    pub fn is_empty(&self) -> bool {
        self.folders.is_empty() && self.domains.is_empty() && self.users.is_empty()
    }

    /// The folders that expire for `address` and after how long, by name.
    pub fn for_user(&self, address: &str) -> BTreeMap<String, Duration> {
        let address = address.to_lowercase();
        let domain = address.rsplit_once('@').map_or("", |(_, d)| d);
        let mut ages = self.folders.clone();
        for wider in [self.domains.get(domain), self.users.get(&address)]
            .into_iter()
            .flatten()
        {
            ages.extend(wider.iter().map(|(k, v)| (k.clone(), *v)));
        }
        ages.into_iter()
            .filter_map(|(folder, age)| match age {
                Age::After(d) => Some((folder, d)),
                Age::Never => None,
            })
            .collect()
    }

    pub(super) fn validate(&self) -> Result<(), String> {
        let all = std::iter::once(&self.folders)
            .chain(self.domains.values())
            .chain(self.users.values());
        for ages in all {
            // The full rules of folder names are the mailbox layer's;
            // `postroom expire` names a folder they refuse.
            if let Some(folder) = ages
                .keys()
                .find(|f| f.trim().is_empty() || f.chars().any(char::is_control))
            {
                return Err(format!("expire: {folder:?} is not a folder name"));
            }
        }
        for (key, names) in [("domains", &self.domains), ("users", &self.users)] {
            if let Some(name) = names.keys().find(|n| n.chars().any(|c| c.is_uppercase())) {
                return Err(format!("expire.{key}: write {name:?} in lower case"));
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Config;

    #[test]
    fn ages_are_strings_or_whole_days_and_nothing_else() {
        let parse = |age: &str| {
            Config::parse(&format!("hostname = \"h.test\"\n[expire]\nTrash = {age}\n"))
                .map(|c| c.expire.for_user("ann@example.org").get("Trash").copied())
                .map_err(|e| e.to_string())
        };
        let days = |n: u64| Ok(Some(Duration::from_secs(n * 86_400)));
        assert_eq!(parse("30"), days(30));
        assert_eq!(parse("\"30d\""), days(30));
        assert_eq!(parse("\"never\""), Ok(None));
        for (bad, says) in [
            ("0", "more than 0"),
            ("-3", "cannot be negative"),
            ("1.5", "a number of days such as 30"),
            ("true", "a number of days such as 30"),
            ("[30]", "a number of days such as 30"),
            ("\"soon\"", "soon"),
        ] {
            let said = parse(bad).unwrap_err();
            assert!(said.contains(says), "{bad}: {said}");
        }
    }

    #[test]
    fn users_win_over_domains_over_the_general_ages() {
        let c = Config::parse(
            "hostname = \"h.test\"\n[expire]\nTrash = \"30d\"\nJunk = \"14d\"\n\
             [expire.domains.\"example.org\"]\nTrash = \"7d\"\n\
             [expire.users.\"ann@example.org\"]\nJunk = \"never\"\n\"Lists/Old\" = \"1w\"\n",
        )
        .unwrap();
        let day = Duration::from_secs(86400);
        let ann = c.expire.for_user("Ann@example.org");
        assert_eq!(ann.get("Trash"), Some(&(7 * day)));
        assert_eq!(ann.get("Junk"), None);
        assert_eq!(ann.get("Lists/Old"), Some(&(7 * day)));
        let bob = c.expire.for_user("bob@example.org");
        assert_eq!(bob.get("Junk"), Some(&(14 * day)));
        let elsewhere = c.expire.for_user("eve@example.test");
        assert_eq!(elsewhere.get("Trash"), Some(&(30 * day)));
        assert!(
            Config::parse("hostname = \"h.test\"\n")
                .unwrap()
                .expire
                .is_empty()
        );
        let e = Config::parse("hostname = \"h.test\"\n[expire]\nTrash = \"0\"\n").unwrap_err();
        assert!(e.contains("never"), "{e}");
        let e = Config::parse("hostname = \"h.test\"\n[expire]\nTrash = \"soon\"\n").unwrap_err();
        assert!(e.contains("duration"), "{e}");
    }
}
