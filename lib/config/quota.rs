//! `[quota]`: the notices a user gets as the mailbox fills, and what a
//! sender hears once it is full; see `postroom.toml(5)` and
//! `delivery::quota`.

use serde::Deserialize;

/// `[quota]`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Quota {
    /// Percentages of the quota at which a delivery sends the user one
    /// notice (Dovecot's `quota_warning`); empty: none.
    pub warnings: Vec<u8>,
    /// What the sender gets for mail to a full mailbox.
    pub full: Full,
    /// The quota of each domain's public folders (`mail/DOMAIN/@public`,
    /// all of them together), in bytes; `None`: `delivery.default_quota`;
    /// 0: none. See [`crate::delivery::quota::public_limit`].
    #[serde(deserialize_with = "public_size")]
    pub public: Option<u64>,
}

fn public_size<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Option<u64>, D::Error> {
    super::size(d).map(Some)
}

impl Default for Quota {
    fn default() -> Self {
        Quota {
            warnings: vec![80, 95],
            full: Full::Defer,
            public: None,
        }
    }
}

/// `quota.full`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Full {
    /// 452 4.2.2: the mail waits in the queue for the user to make room,
    /// until `queue.lifetime`; the sender hears of the delay.
    Defer,
    /// 552 5.2.2: the sender gets the mail back at once.
    Bounce,
}

impl Quota {
    pub(super) fn validate(&self) -> Result<(), String> {
        if let Some(bad) = self.warnings.iter().find(|&&p| p == 0 || p > 100) {
            return Err(format!(
                "quota.warnings: {bad} is not a percentage from 1 to 100"
            ));
        }
        Ok(())
    }

    /// The highest warning level `used` of `limit` bytes has reached (0:
    /// none).
    pub fn level(&self, used: u64, limit: u64) -> u8 {
        if limit == 0 {
            return 0;
        }
        let percent = (u128::from(used) * 100 / u128::from(limit)).min(255) as u64;
        self.warnings
            .iter()
            .copied()
            .filter(|&w| u64::from(w) <= percent)
            .max()
            .unwrap_or(0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Config;

    #[test]
    fn levels_and_keys() {
        let q = Quota::default();
        assert_eq!(q.level(79, 100), 0);
        assert_eq!(q.level(80, 100), 80);
        assert_eq!(q.level(99, 100), 95);
        assert_eq!(q.level(500, 100), 95);
        assert_eq!(q.level(5, 0), 0);
        let c =
            Config::parse("hostname = \"h.test\"\n[quota]\nwarnings = [90]\nfull = \"bounce\"\n")
                .unwrap();
        assert_eq!(c.quota.full, Full::Bounce);
        assert_eq!(c.quota.level(91, 100), 90);
        let e = Config::parse("hostname = \"h.test\"\n[quota]\nwarnings = [0]\n").unwrap_err();
        assert!(e.contains("quota.warnings"), "{e}");
    }
}
