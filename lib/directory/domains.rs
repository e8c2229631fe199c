//! The local domains file: one domain per line, `#` comments.
//!
//! Mail for these domains is delivered here (every local domain is a
//! virtual domain: its users are in the users file as `user@domain`); mail
//! for any other domain is relayed, if the sender may relay at all.

use std::collections::BTreeSet;
use std::path::Path;

use crate::proto::address::is_domain_name;
use crate::store::fsutil::{self, FileError};

/// The set of local domains, in lower case.
#[derive(Debug, Clone, Default)]
pub struct Domains {
    names: BTreeSet<String>,
}

impl Domains {
    /// Reads the file; a missing file means no local domains yet.
    pub fn load(path: &Path) -> Result<Domains, FileError> {
        Domains::parse(&FileError::read(path)?, path)
    }

    pub fn parse(text: &str, path: &Path) -> Result<Domains, FileError> {
        let mut names = BTreeSet::new();
        for (number, line) in text.lines().enumerate() {
            let name = line.split('#').next().unwrap_or("").trim();
            if name.is_empty() {
                continue;
            }
            if !is_domain_name(name) {
                return Err(FileError::Syntax {
                    file: path.to_path_buf(),
                    line: number + 1,
                    message: format!("{name:?} is not a domain name"),
                });
            }
            names.insert(name.to_lowercase());
        }
        Ok(Domains { names })
    }

    /// True if mail for `domain` is delivered here.
    pub fn contains(&self, domain: &str) -> bool {
        if domain.bytes().any(|b| b.is_ascii_uppercase()) {
            self.names.contains(&domain.to_lowercase())
        } else {
            self.names.contains(domain)
        }
    }

    pub fn iter(&self) -> impl Iterator<Item = &str> {
        self.names.iter().map(String::as_str)
    }

    pub fn len(&self) -> usize {
        self.names.len()
    }

    pub fn is_empty(&self) -> bool {
        self.names.is_empty()
    }
}

/// Adds domains in one locked rewrite; refuses invalid or present ones and
/// then writes nothing.
pub fn add_domains(path: &Path, names: &[String]) -> Result<(), FileError> {
    fsutil::edit_locked(path, |mut text| {
        let existing = Domains::parse(&text, path)?;
        let mut seen = BTreeSet::new();
        for name in names {
            let name = name.to_lowercase();
            if !is_domain_name(&name) {
                return Err(FileError::Refused(format!("{name:?} is not a domain name")));
            }
            if existing.contains(&name) || !seen.insert(name.clone()) {
                return Err(FileError::Refused(format!(
                    "{name} is a local domain already"
                )));
            }
        }
        if !text.is_empty() && !text.ends_with('\n') {
            text.push('\n');
        }
        for name in seen {
            text.push_str(&name);
            text.push('\n');
        }
        Ok(text)
    })
}

/// Removes a domain's line; its mail stays on disk.
pub fn remove_domain(path: &Path, name: &str) -> Result<(), FileError> {
    let name = name.to_lowercase();
    fsutil::edit_locked(path, |text| {
        let mut found = false;
        let kept: String = text
            .lines()
            .filter(|line| {
                let this = line.split('#').next().unwrap_or("").trim().to_lowercase() == name;
                found |= this;
                !this
            })
            .map(|line| format!("{line}\n"))
            .collect();
        if !found {
            return Err(FileError::Refused(format!("{name} is not a local domain")));
        }
        Ok(kept)
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parse_add_remove() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("domains");
        std::fs::write(&path, "# mine\nExample.test\n").unwrap();
        add_domains(&path, &["b.test".into(), "c.test".into()]).unwrap();
        let d = Domains::load(&path).unwrap();
        assert!(d.contains("example.test") && d.contains("B.TEST") && d.len() == 3);
        assert!(add_domains(&path, &["b.test".into()]).is_err());
        assert!(add_domains(&path, &["bad domain".into()]).is_err());
        remove_domain(&path, "b.test").unwrap();
        assert!(remove_domain(&path, "b.test").is_err());
        let text = std::fs::read_to_string(&path).unwrap();
        assert_eq!(text, "# mine\nExample.test\nc.test\n");
    }

    #[test]
    fn syntax_errors_name_the_line() {
        let e = Domains::parse("a.test\nnot a domain\n", Path::new("domains")).unwrap_err();
        assert_eq!(
            e.to_string(),
            "domains:2: \"not a domain\" is not a domain name"
        );
    }
}
