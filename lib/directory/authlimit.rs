//! Slowing down password guessing, across processes and hosts, and keeping
//! password checks from eating the machine.
//!
//! Under inetd every connection is its own process, so failures are counted
//! in the tree: `state/auth-failures/KEY`, one small file per key
//! (`COUNT LAST-SECONDS`), updated under its `flock`. A failure counts under
//! three keys, each with its own cap on the wait it causes:
//!
//! - `pair-…`: this account from this address (per /64 for IPv6), the
//!   guesser's own record: up to [`MAX_PAIR_DELAY`];
//! - `ip-…`: this address, whatever the account (a guesser trying one
//!   password on many accounts), shared by everyone behind the same NAT
//!   gateway or webmail host, so only up to [`MAX_ADDRESS_DELAY`];
//! - `user-…`: this account, from anywhere (guessers on many addresses):
//!   up to [`MAX_ACCOUNT_DELAY`].
//!
//! The wait is the longest of the three. Clients in `auth.trusted_networks`
//! are counted and slowed by account only. Failures older than
//! [`FORGET_AFTER`] are forgotten; a success clears the account's and the
//! pair's counts (not the address's: a guesser that gets one right has still
//! guessed a lot).
//!
//! A correct password waits at most [`MAX_CORRECT_WAIT`]: that much of the
//! wait comes before the check, for every attempt alike, and the rest only
//! after a wrong password, before its answer. The price is plain: a guesser
//! that hangs up once `MAX_CORRECT_WAIT` and the check have passed without
//! an answer knows it was wrong. Its failure is counted by then, and its
//! rate stays bounded by that wait per attempt, three failures per session
//! and `limits.connections_per_ip`. Nobody is ever locked out.
//!
//! Password checks are memory-hard on purpose (an Argon2 check takes
//! 19 MiB), so one process runs at most [`concurrent_checks`] of them at a
//! time and the others queue, in arrival order. Without that bound, 200
//! concurrent failed logins took imap-serve to 4.5 GB and 353 threads. The
//! record files are read and written under the same permits, so a burst of
//! logins never starts more blocking threads than that either.
//!
//! Login hooks (`[login]`, [`loginhook`]) run here too, so their failures
//! are counted like any other. They are other processes, holding little of
//! ours, so they take turns under a permit set of their own
//! ([`MAX_CONCURRENT_HOOKS`]): a slow LDAP bridge must not stall the
//! password checks of users the hook does not decide.

use std::fs;
use std::io::{Read, Seek, SeekFrom, Write};
use std::net::IpAddr;
use std::path::PathBuf;
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use tokio::sync::Semaphore;

use crate::config::Config;
use crate::config::login::{Login, Service};
use crate::directory::loginhook::{self, After, Attempt};
use crate::directory::users::{User, Users};
use crate::proto::smtp::Network;
use crate::store::fsutil::{self, FileLock};

/// Failures older than this no longer count.
pub const FORGET_AFTER: Duration = Duration::from_secs(15 * 60);
/// The longest wait caused by failures of one account from one address.
pub const MAX_PAIR_DELAY: Duration = Duration::from_secs(30);
/// The longest wait caused by an account's failures from anywhere.
pub const MAX_ACCOUNT_DELAY: Duration = Duration::from_secs(8);
/// The longest wait caused by an address's failures on any account.
pub const MAX_ADDRESS_DELAY: Duration = Duration::from_secs(8);
/// The longest a correct password waits, whatever failed before it.
pub const MAX_CORRECT_WAIT: Duration = Duration::from_secs(2);
/// The most password checks one process runs at once, however many cores:
/// eight Argon2 checks hold 152 MiB.
pub const MAX_CONCURRENT_CHECKS: usize = 8;
/// The most login hooks one process runs at once.
pub const MAX_CONCURRENT_HOOKS: usize = 16;

/// How many password checks one process runs at once: one per core, at
/// most [`MAX_CONCURRENT_CHECKS`]. More would only take turns on the
/// cores while each holds its memory.
pub fn concurrent_checks() -> usize {
    std::thread::available_parallelism()
        .map_or(1, |n| n.get())
        .clamp(1, MAX_CONCURRENT_CHECKS)
}

/// The process's [`concurrent_checks`] permits for password checks.
fn check_permits() -> &'static Semaphore {
    static PERMITS: OnceLock<Semaphore> = OnceLock::new();
    PERMITS.get_or_init(|| Semaphore::new(concurrent_checks()))
}

/// The process's permits for login hooks.
fn hook_permits() -> &'static Semaphore {
    static PERMITS: OnceLock<Semaphore> = OnceLock::new();
    PERMITS.get_or_init(|| Semaphore::new(MAX_CONCURRENT_HOOKS))
}

/// Runs `work` on the blocking pool once one of `permits` is free; waiters
/// are served in order. `None` if `work` panicked.
async fn with_permit<R: Send + 'static>(
    permits: &'static Semaphore,
    work: impl FnOnce() -> R + Send + 'static,
) -> Option<R> {
    // The semaphore is never closed, so acquiring cannot fail.
    let _permit = permits.acquire().await.ok()?;
    tokio::task::spawn_blocking(work).await.ok()
}

/// Why [`AuthLimit::check_password`] gives no answer either way.
#[derive(Debug, thiserror::Error)]
pub enum CheckError {
    /// The check could not be made (no users file, a hook that failed or
    /// timed out): the client should try again later. The text is for the
    /// log.
    #[error("{0}")]
    Temporary(String),
    /// The password was right but the `after` login hook refused the
    /// login; the text is its reason, for the client.
    #[error("refused by the after-login hook: {0}")]
    Refused(String),
}

/// The failure records of one tree.
#[derive(Debug, Clone)]
pub struct AuthLimit {
    dir: PathBuf,
    /// Addresses whose failures slow down no one by address.
    trusted: Vec<Network>,
    /// The login hooks of every service.
    login: Login,
}

impl AuthLimit {
    /// Records live in `STATE/auth-failures/`; no trusted networks.
    pub fn new(state_dir: PathBuf) -> AuthLimit {
        AuthLimit {
            dir: state_dir.join("auth-failures"),
            trusted: Vec::new(),
            login: Login::default(),
        }
    }

    /// The records of the config's tree, with `auth.trusted_networks`
    /// (checked when the config was loaded).
    pub fn from_config(config: &Config) -> AuthLimit {
        AuthLimit {
            trusted: config
                .auth
                .trusted_networks
                .iter()
                .filter_map(|n| Network::parse(n).ok())
                .collect(),
            login: config.login.clone(),
            ..AuthLimit::new(config.state_dir())
        }
    }

    /// The address failures are counted under, unless it is trusted.
    fn counted(&self, ip: Option<IpAddr>) -> Option<IpAddr> {
        ip.filter(|ip| !self.trusted.iter().any(|n| n.contains(*ip)))
    }

    /// How long a wrong password from `ip` for `login` waits before its
    /// answer; a correct one waits at most [`MAX_CORRECT_WAIT`] of it.
    pub fn delay(&self, ip: Option<IpAddr>, login: &str) -> Duration {
        let by_account = backoff(self.count(&account_key(login)), MAX_ACCOUNT_DELAY);
        let Some(ip) = self.counted(ip) else {
            return by_account;
        };
        let by_address = backoff(self.count(&address_key(ip)), MAX_ADDRESS_DELAY);
        let by_pair = backoff(self.count(&pair_key(ip, login)), MAX_PAIR_DELAY);
        by_account.max(by_address).max(by_pair)
    }

    /// The whole of a server's login check: waits out the part of the delay
    /// earlier failures earned that every attempt waits (at most
    /// [`MAX_CORRECT_WAIT`]), runs `check` on the blocking pool under one
    /// of the process's permits, records its outcome, and after a wrong
    /// password waits out the rest before returning. `check` gives
    /// `Ok(Some(_))` for a good password, `Ok(None)` for a wrong one, and
    /// `Err` when it could not tell (nothing is recorded then); the error
    /// comes back as text for the log.
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
        self.check_under(check_permits(), ip, login, check).await
    }

    /// [`AuthLimit::check`], with `check` run under `permits`.
    async fn check_under<T, E>(
        &self,
        permits: &'static Semaphore,
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
            with_permit(check_permits(), move || limit.delay(ip, &login))
                .await
                .unwrap_or_default()
        };
        let before = wait.min(MAX_CORRECT_WAIT);
        tokio::time::sleep(before).await;
        let (limit, login) = (self.clone(), login.to_string());
        let result = with_permit(permits, move || {
            let result = check();
            match &result {
                Ok(Some(_)) => limit.succeeded(ip, &login),
                Ok(None) => limit.failed(ip, &login),
                Err(_) => {}
            }
            result.map_err(|e| e.to_string())
        })
        .await
        .unwrap_or_else(|| Err("the password check failed".into()));
        if let Ok(None) = result {
            tokio::time::sleep(wait.saturating_sub(before)).await;
        }
        result
    }

    /// A password check for `service` against the users file, or the
    /// service's `check` login hook, under [`AuthLimit::check`], then its
    /// `after` hook: the one way the servers decide a login, so a rule that
    /// changes how logins are decided is written here once.
    pub async fn check_password(
        &self,
        service: Service,
        ip: Option<IpAddr>,
        users: Arc<Users>,
        login: String,
        password: String,
    ) -> Result<Option<User>, CheckError> {
        let hooks = self.login.for_service(service);
        let attempt = Attempt {
            service,
            ip,
            login: login.clone(),
        };
        let checked = match hooks.check.clone() {
            None => {
                self.check(ip, &attempt.login, move || {
                    users.authenticate(&login, &password)
                })
                .await
            }
            Some(command) => {
                let (hooks, attempt) = (hooks.clone(), attempt.clone());
                self.check_under(hook_permits(), ip, &attempt.login.clone(), move || {
                    loginhook::check(&hooks, &command, &users, &attempt, &password)
                })
                .await
            }
        };
        let Some(user) = checked.map_err(CheckError::Temporary)? else {
            return Ok(None);
        };
        let Some(command) = hooks.after.clone() else {
            return Ok(Some(user));
        };
        let decided = with_permit(hook_permits(), move || {
            loginhook::after(&hooks, &command, &attempt, &user).map(|after| (after, user))
        })
        .await;
        match decided {
            Some(Ok((After::Allow, user))) => Ok(Some(user)),
            Some(Ok((After::Refuse(why), _))) => Err(CheckError::Refused(why)),
            Some(Err(e)) => Err(CheckError::Temporary(e.to_string())),
            None => Err(CheckError::Temporary(
                "the after-login hook could not be run".into(),
            )),
        }
    }

    /// Counts a failed login.
    pub fn failed(&self, ip: Option<IpAddr>, login: &str) {
        if let Some(ip) = self.counted(ip) {
            self.update(&address_key(ip), |n| n + 1);
            self.update(&pair_key(ip, login), |n| n + 1);
        }
        self.update(&account_key(login), |n| n + 1);
    }

    /// A successful login clears the account's count and the pair's (not
    /// the address's: a guesser that gets one right has still guessed a
    /// lot).
    pub fn succeeded(&self, ip: Option<IpAddr>, login: &str) {
        let _ = fs::remove_file(self.dir.join(account_key(login)));
        if let Some(ip) = self.counted(ip) {
            let _ = fs::remove_file(self.dir.join(pair_key(ip, login)));
        }
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
    format!("ip-{:016x}", hash(&address_text(ip)))
}

fn account_key(login: &str) -> String {
    format!("user-{:016x}", hash(&account_text(login)))
}

fn pair_key(ip: IpAddr, login: &str) -> String {
    let text = format!("{} {}", address_text(ip), account_text(login));
    format!("pair-{:016x}", hash(&text))
}

/// IPv6 clients count per /64, since one host holds a whole /64.
fn address_text(ip: IpAddr) -> String {
    match ip.to_canonical() {
        IpAddr::V6(v6) => {
            let s = v6.segments();
            format!("{:x}:{:x}:{:x}:{:x}::/64", s[0], s[1], s[2], s[3])
        }
        v4 => v4.to_string(),
    }
}

fn account_text(login: &str) -> String {
    login.trim().to_lowercase()
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

    use std::sync::Arc;
    use std::sync::atomic::{AtomicUsize, Ordering};

    const ANN: &str = "ann@example.test";

    #[test]
    fn the_guesser_waits_longest_and_its_neighbours_least() {
        let dir = tempfile::tempdir().unwrap();
        let limit = AuthLimit::new(dir.path().to_path_buf());
        let ip: IpAddr = "192.0.2.1".parse().unwrap();
        let other: IpAddr = "198.51.100.1".parse().unwrap();
        assert_eq!(limit.delay(Some(ip), ANN), Duration::ZERO);
        for _ in 0..3 {
            limit.failed(Some(ip), ANN);
        }
        assert_eq!(limit.delay(Some(ip), ANN), Duration::from_secs(1));
        for _ in 0..20 {
            limit.failed(Some(ip), ANN);
        }
        // The guesser's own pair waits longest.
        assert_eq!(limit.delay(Some(ip), ANN), MAX_PAIR_DELAY);
        // Someone else behind the same address, on another account, waits
        // only by address.
        assert_eq!(limit.delay(Some(ip), "bob@example.test"), MAX_ADDRESS_DELAY);
        // The real user, elsewhere, is slowed by the account's count but
        // never past its cap, and never refused.
        assert_eq!(
            limit.delay(Some(other), "ANN@example.test"),
            MAX_ACCOUNT_DELAY
        );
        limit.succeeded(Some(other), ANN);
        assert_eq!(limit.delay(Some(other), ANN), Duration::ZERO);
        // The guesser's pair is not cleared by someone else's success.
        assert_eq!(limit.delay(Some(ip), ANN), MAX_PAIR_DELAY);
        limit.succeeded(Some(ip), ANN);
        assert_eq!(limit.delay(Some(ip), ANN), MAX_ADDRESS_DELAY);
    }

    #[test]
    fn trusted_networks_are_slowed_by_account_only() {
        let dir = tempfile::tempdir().unwrap();
        let mut limit = AuthLimit::new(dir.path().to_path_buf());
        limit.trusted = vec![Network::parse("192.0.2.0/24").unwrap()];
        let webmail: IpAddr = "192.0.2.80".parse().unwrap();
        for i in 0..30 {
            limit.failed(Some(webmail), &format!("user{i}@example.test"));
        }
        assert_eq!(limit.delay(Some(webmail), ANN), Duration::ZERO);
        for _ in 0..30 {
            limit.failed(Some(webmail), ANN);
        }
        assert_eq!(limit.delay(Some(webmail), ANN), MAX_ACCOUNT_DELAY);
        assert_eq!(
            limit.delay(Some(webmail), "bob@example.test"),
            Duration::ZERO
        );
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
        let mapped = address_key("::ffff:192.0.2.1".parse().unwrap());
        assert_eq!(mapped, address_key("192.0.2.1".parse().unwrap()));
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn checks_run_at_most_concurrent_checks_at_once() {
        let dir = tempfile::tempdir().unwrap();
        let limit = AuthLimit::new(dir.path().to_path_buf());
        let running = Arc::new(AtomicUsize::new(0));
        let most = Arc::new(AtomicUsize::new(0));
        let tasks: Vec<_> = (0..4 * concurrent_checks() + 4)
            .map(|i| {
                let (limit, running, most) = (limit.clone(), running.clone(), most.clone());
                tokio::spawn(async move {
                    let login = format!("user{i}@example.test");
                    limit
                        .check(None, &login, move || {
                            let now = running.fetch_add(1, Ordering::SeqCst) + 1;
                            most.fetch_max(now, Ordering::SeqCst);
                            std::thread::sleep(Duration::from_millis(20));
                            running.fetch_sub(1, Ordering::SeqCst);
                            Ok::<Option<()>, String>(None)
                        })
                        .await
                })
            })
            .collect();
        for task in tasks {
            assert_eq!(task.await.unwrap(), Ok(None));
        }
        let most = most.load(Ordering::SeqCst);
        assert!(most >= 1 && most <= concurrent_checks(), "{most}");
    }
}
