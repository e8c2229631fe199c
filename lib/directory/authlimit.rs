//! Slowing down password guessing, across processes and hosts.
//!
//! Under inetd every connection is its own process, so failures are counted
//! in the tree: `state/auth-failures/ip-KEY` and `user-KEY`, one small file
//! each (`COUNT LAST-SECONDS`), updated under its `flock`. Before checking a
//! password the server waits according to the failures recorded for the
//! client's address and for the account, whichever is longer; the wait comes
//! before the answer, so a guesser cannot learn the answer early and hang
//! up. Failures older than [`FORGET_AFTER`] are forgotten, and a success
//! clears the account's count.
//!
//! Nobody is ever locked out: a stranger hammering a real user's account
//! slows that account's logins down to at most [`MAX_ACCOUNT_DELAY`] per
//! attempt, never refuses them. Only the guesser's own address waits longer.

use std::fs;
use std::io::{Read, Seek, SeekFrom, Write};
use std::net::IpAddr;
use std::path::PathBuf;
use std::time::Duration;

use crate::store::fsutil::{self, FileLock};

/// Failures older than this no longer count.
pub const FORGET_AFTER: Duration = Duration::from_secs(15 * 60);
/// The longest wait caused by an account's failures.
pub const MAX_ACCOUNT_DELAY: Duration = Duration::from_secs(8);
/// The longest wait caused by an address's failures.
pub const MAX_ADDRESS_DELAY: Duration = Duration::from_secs(30);

/// The failure records of one tree.
#[derive(Debug, Clone)]
pub struct AuthLimit {
    dir: PathBuf,
}

impl AuthLimit {
    /// Records live in `STATE/auth-failures/`.
    pub fn new(state_dir: PathBuf) -> AuthLimit {
        AuthLimit {
            dir: state_dir.join("auth-failures"),
        }
    }

    /// How long to wait before checking a password from `ip` for `login`.
    pub fn delay(&self, ip: Option<IpAddr>, login: &str) -> Duration {
        let by_address = ip
            .map(|ip| backoff(self.count(&address_key(ip)), MAX_ADDRESS_DELAY))
            .unwrap_or_default();
        let by_account = backoff(self.count(&account_key(login)), MAX_ACCOUNT_DELAY);
        by_address.max(by_account)
    }

    /// The whole of a server's login check: waits out the delay earlier
    /// failures earned (before answering, so a guesser learns nothing by
    /// hanging up), runs `check` on the blocking pool, and records its
    /// outcome. `check` gives `Ok(Some(_))` for a good password, `Ok(None)`
    /// for a wrong one, and `Err` when it could not tell (nothing is
    /// recorded then); the error comes back as text for the log.
    pub async fn check<T, E>(
        &self,
        ip: Option<IpAddr>,
        login: &str,
        check: impl FnOnce() -> Result<Option<T>, E> + Send + 'static,
    ) -> Result<Option<T>, String>
    where
        T: Send + 'static,
        E: std::fmt::Display + Send + 'static,
    {
        let wait = {
            let (limit, login) = (self.clone(), login.to_string());
            tokio::task::spawn_blocking(move || limit.delay(ip, &login))
                .await
                .unwrap_or_default()
        };
        tokio::time::sleep(wait).await;
        let (limit, login) = (self.clone(), login.to_string());
        tokio::task::spawn_blocking(move || {
            let result = check();
            match &result {
                Ok(Some(_)) => limit.succeeded(&login),
                Ok(None) => limit.failed(ip, &login),
                Err(_) => {}
            }
            result.map_err(|e| e.to_string())
        })
        .await
        .unwrap_or_else(|e| Err(format!("the password check failed: {e}")))
    }

    /// Counts a failed login.
    pub fn failed(&self, ip: Option<IpAddr>, login: &str) {
        if let Some(ip) = ip {
            self.update(&address_key(ip), |n| n + 1);
        }
        self.update(&account_key(login), |n| n + 1);
    }

    /// A successful login clears the account's count (not the address's:
    /// a guesser that gets one right has still guessed a lot).
    pub fn succeeded(&self, login: &str) {
        let _ = fs::remove_file(self.dir.join(account_key(login)));
    }

    fn count(&self, key: &str) -> u32 {
        let Ok(text) = fs::read_to_string(self.dir.join(key)) else {
            return 0;
        };
        parse(&text).unwrap_or(0)
    }

    /// Read-modify-write under the record's lock. Failures here only cost
    /// protection, never a login, so they are logged and ignored.
    fn update(&self, key: &str, change: impl FnOnce(u32) -> u32) {
        let result = (|| -> std::io::Result<()> {
            fs::create_dir_all(&self.dir)?;
            let lock = FileLock::exclusive(&self.dir.join(key))?;
            let mut file = lock.file();
            let mut text = String::new();
            file.read_to_string(&mut text)?;
            let count = change(parse(&text).unwrap_or(0));
            file.set_len(0)?;
            file.seek(SeekFrom::Start(0))?;
            file.write_all(format!("{count} {}\n", fsutil::now_secs()).as_bytes())
        })();
        if let Err(e) = result {
            tracing::warn!("cannot record an authentication failure: {e}");
        }
    }
}

/// `COUNT LAST` → the count, if the last failure is recent enough.
fn parse(text: &str) -> Option<u32> {
    let mut words = text.split_whitespace();
    let count: u32 = words.next()?.parse().ok()?;
    let last: u64 = words.next()?.parse().ok()?;
    (fsutil::now_secs().saturating_sub(last) < FORGET_AFTER.as_secs()).then_some(count)
}

/// No wait for the first two failures, then doubling from one second.
fn backoff(failures: u32, max: Duration) -> Duration {
    if failures < 3 {
        return Duration::ZERO;
    }
    Duration::from_secs(1u64 << (failures - 3).min(10)).min(max)
}

/// File names that reveal nothing of the address or login and can never
/// be a path trick: a hex hash.
fn address_key(ip: IpAddr) -> String {
    // IPv6 clients count per /64, since one host holds a whole /64.
    let text = match ip {
        IpAddr::V6(v6) => {
            let s = v6.segments();
            format!("{:x}:{:x}:{:x}:{:x}::/64", s[0], s[1], s[2], s[3])
        }
        v4 => v4.to_string(),
    };
    format!("ip-{:016x}", hash(&text))
}

fn account_key(login: &str) -> String {
    format!("user-{:016x}", hash(&login.trim().to_lowercase()))
}

/// FNV-1a: stable across processes and hosts (unlike std's hasher).
fn hash(text: &str) -> u64 {
    text.bytes().fold(0xcbf29ce484222325, |h, b| {
        (h ^ u64::from(b)).wrapping_mul(0x100000001b3)
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_grows_then_caps_and_success_clears_the_account() {
        let dir = tempfile::tempdir().unwrap();
        let limit = AuthLimit::new(dir.path().to_path_buf());
        let ip: IpAddr = "192.0.2.1".parse().unwrap();
        let other: IpAddr = "198.51.100.1".parse().unwrap();
        assert_eq!(limit.delay(Some(ip), "ann@example.test"), Duration::ZERO);
        for _ in 0..3 {
            limit.failed(Some(ip), "ann@example.test");
        }
        assert_eq!(
            limit.delay(Some(ip), "bob@example.test"),
            Duration::from_secs(1)
        );
        for _ in 0..20 {
            limit.failed(Some(ip), "ann@example.test");
        }
        assert_eq!(limit.delay(Some(ip), "x"), MAX_ADDRESS_DELAY);
        // The real user, elsewhere, is slowed by the account's count but
        // never past its cap, and never refused.
        assert_eq!(
            limit.delay(Some(other), "ANN@example.test"),
            MAX_ACCOUNT_DELAY
        );
        limit.succeeded("ann@example.test");
        assert_eq!(limit.delay(Some(other), "ann@example.test"), Duration::ZERO);
        assert_eq!(limit.delay(Some(ip), "ann@example.test"), MAX_ADDRESS_DELAY);
    }

    #[test]
    fn old_failures_are_forgotten() {
        let old = fsutil::now_secs() - FORGET_AFTER.as_secs() - 1;
        assert_eq!(parse(&format!("9 {old}")), None);
        assert_eq!(parse(&format!("9 {}", fsutil::now_secs())), Some(9));
        assert_eq!(parse("garbage"), None);
    }

    #[test]
    fn ipv6_counts_per_64() {
        let a = address_key("2001:db8:1:2::1".parse().unwrap());
        let b = address_key("2001:db8:1:2:ffff::9".parse().unwrap());
        assert_eq!(a, b);
        assert_ne!(a, address_key("2001:db8:1:3::1".parse().unwrap()));
    }
}
