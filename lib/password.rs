//! Password schemes of the Dovecot passwd-file: `{SCHEME}hash`.

/// A password scheme postroom can verify and hash with.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Scheme {
    Argon2id,
    Sha512Crypt,
    BlfCrypt,
}

impl Scheme {
    /// Parses a scheme name as Dovecot spells it (case-insensitive).
    pub fn parse(name: &str) -> Option<Scheme> {
        match name.to_ascii_uppercase().as_str() {
            "ARGON2ID" => Some(Scheme::Argon2id),
            "SHA512-CRYPT" => Some(Scheme::Sha512Crypt),
            "BLF-CRYPT" => Some(Scheme::BlfCrypt),
            _ => None,
        }
    }
}
