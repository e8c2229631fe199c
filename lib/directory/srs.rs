//! The Sender Rewriting Scheme for mail a Sieve `redirect` sends on: the
//! envelope sender becomes an address of ours that names the original,
//! so the next system's SPF check sees our domain, and a bounce to it
//! comes back here and is passed on to the original sender. It lives with
//! the directory because both halves are "who is this address": delivery
//! makes SRS addresses (`delivery::submit`), the aliases resolve them back.
//!
//! `SRS0=HASH=TT=domain=local@our-domain`: TT is the day (base 32, mod
//! 1024), HASH the first 4 base64 characters of an HMAC-SHA256 over
//! TT, domain and local part, so nobody can forge one to make us relay.
//! A reverse address older than 21 days is refused (the day wraps every
//! 1024). The layout is the usual SRS0 one; the hash is postroom's.

use base64::Engine;
use hmac::{Hmac, Mac};
use sha2::Sha256;

use crate::proto::address::Address;

const BASE32: &[u8; 32] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZ234567";
/// How long a rewritten address stays good for bounces.
pub const MAX_AGE_DAYS: u64 = 21;

fn hash(secret: &[u8], stamp: &str, domain: &str, local: &str) -> String {
    // HMAC takes keys of any length, so this cannot fail.
    let Ok(mut mac) = Hmac::<Sha256>::new_from_slice(secret) else {
        return String::new();
    };
    mac.update(stamp.to_ascii_lowercase().as_bytes());
    mac.update(domain.to_ascii_lowercase().as_bytes());
    mac.update(local.as_bytes());
    let digest = mac.finalize().into_bytes();
    base64::engine::general_purpose::STANDARD_NO_PAD.encode(digest)[..4]
        .replace('/', "_")
        .replace('+', "-")
}

fn stamp(day: u64) -> String {
    let t = day % 1024;
    [
        BASE32[(t >> 5) as usize] as char,
        BASE32[(t & 31) as usize] as char,
    ]
    .iter()
    .collect()
}

fn stamp_day(stamp: &str) -> Option<u64> {
    let value = |c: u8| BASE32.iter().position(|&b| b == c.to_ascii_uppercase());
    let bytes = stamp.as_bytes();
    if bytes.len() != 2 {
        return None;
    }
    Some((value(bytes[0])? as u64) << 5 | value(bytes[1])? as u64)
}

/// The SRS address that stands for `sender` at `domain`, on `day` (days
/// since the epoch).
pub fn forward(sender: &Address, secret: &[u8], domain: &str, day: u64) -> Option<Address> {
    let t = stamp(day);
    let h = hash(secret, &t, sender.domain(), sender.local_part());
    Address::parse(&format!(
        "SRS0={h}={t}={}={}@{domain}",
        sender.domain(),
        sender.local_part()
    ))
    .ok()
}

/// The original sender an SRS address stands for, if its hash is ours
/// and it is not too old.
pub fn reverse(address: &Address, secret: &[u8], day: u64) -> Option<Address> {
    let local = address.local_part();
    let rest = local.get(..5).filter(|p| p.eq_ignore_ascii_case("SRS0="))?;
    let fields: Vec<&str> = local[rest.len()..].splitn(4, '=').collect();
    let [h, t, domain, original] = fields.as_slice() else {
        return None;
    };
    if hash(secret, t, domain, original) != *h {
        return None;
    }
    let then = stamp_day(t)?;
    let age = (day % 1024 + 1024 - then) % 1024;
    if age > MAX_AGE_DAYS {
        return None;
    }
    Address::parse(&format!("{original}@{domain}")).ok()
}

/// Days since the epoch, now.
pub fn today() -> u64 {
    crate::store::fsutil::now_secs() / 86400
}

#[cfg(test)]
mod tests {
    use super::*;

    fn a(s: &str) -> Address {
        Address::parse(s).unwrap()
    }

    #[test]
    fn round_trips_and_refuses_forgeries_and_old_ones() {
        let secret = b"a long secret";
        let srs = forward(&a("Bob.Smith@far.test"), secret, "example.test", 20000).unwrap();
        assert!(srs.to_string().starts_with("SRS0="), "{srs}");
        assert!(
            srs.to_string()
                .ends_with("=far.test=Bob.Smith@example.test"),
            "{srs}"
        );
        assert_eq!(
            reverse(&srs, secret, 20001).unwrap().to_string(),
            "Bob.Smith@far.test"
        );
        assert!(reverse(&srs, b"another secret", 20001).is_none(), "forged");
        assert!(
            reverse(&srs, secret, 20000 + MAX_AGE_DAYS + 1).is_none(),
            "too old"
        );
        let tampered = Address::parse(&srs.to_string().replace("far.test", "evil.test")).unwrap();
        assert!(reverse(&tampered, secret, 20000).is_none());
        assert!(reverse(&a("plain@example.test"), secret, 20000).is_none());
        // The day counter wraps at 1024 without breaking the age check.
        let srs = forward(&a("x@far.test"), secret, "example.test", 2047).unwrap();
        assert!(reverse(&srs, secret, 2048).is_some());
    }
}
