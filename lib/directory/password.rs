//! Password hashes as Dovecot writes them: `{SCHEME}hash`.
//!
//! Verification uses the well-kept RustCrypto and bcrypt crates; none of the
//! hashing is ours. Schemes that can be written: ARGON2ID (the default for
//! new passwords), SHA512-CRYPT and BLF-CRYPT. Schemes that can be checked,
//! so users migrate from Dovecot with their passwords: those, plus ARGON2I,
//! SHA256-CRYPT, CRYPT (dispatched on the `$id$` prefix) and PLAIN (compared
//! in constant time; `postroom check` has no objection, but an admin should).

use std::fmt;
use std::sync::Mutex;

use subtle::ConstantTimeEq;

/// A scheme new passwords are hashed with; its names are the values of
/// `auth.default_scheme`, so the config module owns the list.
pub use crate::config::PasswordScheme as Scheme;

#[derive(Debug, thiserror::Error)]
pub enum PasswordError {
    #[error(
        "unknown password scheme {{{0}}} (supported: ARGON2ID, ARGON2I, SHA512-CRYPT, SHA256-CRYPT, BLF-CRYPT, CRYPT, PLAIN)"
    )]
    UnknownScheme(String),
    #[error("malformed {scheme} hash: {reason}")]
    Malformed { scheme: String, reason: String },
    #[error("hashing failed: {0}")]
    Hashing(String),
}

/// A password that never shows up in logs or debug output.
#[derive(Clone)]
pub struct Secret(String);

impl Secret {
    pub fn new(password: impl Into<String>) -> Secret {
        Secret(password.into())
    }
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("<redacted>")
    }
}

impl fmt::Display for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("<redacted>")
    }
}

/// Hashes a password into a `{SCHEME}hash` string for the users file.
pub fn hash(password: &str, scheme: Scheme) -> Result<String, PasswordError> {
    let hashed = match scheme {
        Scheme::Argon2id => {
            use argon2::password_hash::{PasswordHasher, SaltString};
            let salt = SaltString::generate(&mut argon2::password_hash::rand_core::OsRng);
            argon2::Argon2::default()
                .hash_password(password.as_bytes(), &salt)
                .map_err(|e| PasswordError::Hashing(e.to_string()))?
                .to_string()
        }
        Scheme::Sha512Crypt => {
            sha_crypt::sha512_simple(password, &sha_crypt::Sha512Params::default())
                .map_err(|e| PasswordError::Hashing(format!("{e:?}")))?
        }
        Scheme::BlfCrypt => bcrypt::hash_with_result(password, bcrypt::DEFAULT_COST)
            .map_err(|e| PasswordError::Hashing(e.to_string()))?
            .format_for_version(bcrypt::Version::TwoY),
    };
    Ok(format!("{{{}}}{hashed}", scheme.name()))
}

/// Checks a password against a stored `{SCHEME}hash` (a hash without a
/// scheme prefix is taken as CRYPT, as Dovecot does).
pub fn verify(password: &str, stored: &str) -> Result<bool, PasswordError> {
    let (scheme, hashed) = match stored.strip_prefix('{').and_then(|s| s.split_once('}')) {
        Some((scheme, hashed)) => (scheme.to_ascii_uppercase(), hashed),
        None => ("CRYPT".to_string(), stored),
    };
    let malformed = |reason: String| PasswordError::Malformed {
        scheme: scheme.clone(),
        reason,
    };
    match scheme.as_str() {
        "ARGON2ID" | "ARGON2I" => verify_argon2(password, hashed).map_err(malformed),
        "SHA512-CRYPT" => Ok(check_sha512(password, hashed)?),
        "SHA256-CRYPT" => Ok(check_sha256(password, hashed)?),
        "BLF-CRYPT" => verify_bcrypt(password, hashed).map_err(malformed),
        "CRYPT" => match hashed {
            h if h.starts_with("$6$") => check_sha512(password, h),
            h if h.starts_with("$5$") => check_sha256(password, h),
            h if h.starts_with("$2") => verify_bcrypt(password, h).map_err(malformed),
            h if h.starts_with("$argon2") => verify_argon2(password, h).map_err(malformed),
            _ => Err(malformed(
                "only $6$, $5$, $2?$ and $argon2 crypt hashes are supported".into(),
            )),
        },
        "PLAIN" | "CLEAR" | "CLEARTEXT" => Ok(password.as_bytes().ct_eq(hashed.as_bytes()).into()),
        _ => Err(PasswordError::UnknownScheme(scheme)),
    }
}

fn verify_argon2(password: &str, hashed: &str) -> Result<bool, String> {
    use argon2::password_hash::PasswordHash;
    use argon2::{Algorithm, Argon2, Params, Version};
    let parsed = PasswordHash::new(hashed).map_err(|e| e.to_string())?;
    let (Some(salt), Some(expected)) = (parsed.salt, parsed.hash) else {
        // The crate would call this a wrong password.
        return Err("the hash has no salt or no digest".into());
    };
    // What the crate's `verify_password` does, but with the work memory
    // given (see `work_memory`). Anything but a mismatch (parameters out of
    // range, say) is a hash the admin must fix, not a failed login.
    let algorithm = Algorithm::try_from(parsed.algorithm).map_err(|e| e.to_string())?;
    let version = match parsed.version {
        Some(v) => Version::try_from(v).map_err(|e| e.to_string())?,
        None => Version::default(),
    };
    let params = Params::try_from(&parsed).map_err(|e| e.to_string())?;
    let mut salt_bytes = [0u8; 64];
    let salt = salt
        .decode_b64(&mut salt_bytes)
        .map_err(|e| e.to_string())?;
    let mut digest = vec![0u8; expected.len()];
    let argon2 = Argon2::new(algorithm, version, params.clone());
    with_work_memory(params.block_count(), |memory| {
        argon2.hash_password_into_with_memory(password.as_bytes(), salt, &mut digest, memory)
    })
    .map_err(|e| e.to_string())?;
    Ok(digest.ct_eq(expected.as_bytes()).into())
}

/// Argon2's work areas not in use, kept only while some check is running.
struct WorkAreas {
    /// Checks running now.
    running: usize,
    spare: Vec<Vec<argon2::Block>>,
}

static WORK_AREAS: Mutex<WorkAreas> = Mutex::new(WorkAreas {
    running: 0,
    spare: Vec::new(),
});

/// Runs `hash` over an Argon2 work area of `blocks` KiB blocks (19 MiB
/// for the default parameters), so that a burst of checks reuses a few
/// work areas and the memory goes back to the system when the burst ends.
///
/// Measured with `postroom-bench auth` (200 failed logins at once, two
/// checks at a time): the crate's own allocation left imap-serve at 676 MB
/// for good, since glibc's malloc keeps freed blocks in the arena of the
/// thread that freed them. A fresh work area for every check, mapped and
/// unmapped (see [`work_area`]), leaves it at 10 MB, but faulting 19 MiB
/// in costs more than the hash itself (85 ms against 35 ms here). Keeping
/// one work area per permit for good costs 19 MiB per core (49 MB
/// settled). So: a check takes a spare work area if there is one, gives it
/// back when done, and the last check to finish frees them all.
fn with_work_memory<R>(blocks: usize, hash: impl FnOnce(&mut [argon2::Block]) -> R) -> R {
    let areas = || {
        WORK_AREAS
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    };
    let spare = {
        let mut areas = areas();
        areas.running += 1;
        areas.spare.pop()
    };
    let mut memory = match spare {
        Some(memory) if memory.len() >= blocks => memory,
        _ => work_area(blocks),
    };
    let result = hash(&mut memory[..blocks]);
    // Freed (unmapped) outside the lock.
    let _freed = {
        let mut areas = areas();
        areas.running -= 1;
        if areas.running == 0 {
            std::mem::take(&mut areas.spare)
        } else {
            areas.spare.push(memory);
            Vec::new()
        }
    };
    result
}

/// A work area of `blocks` blocks, in memory that goes back to the system
/// as soon as it is dropped.
///
/// glibc's malloc serves a block above its mmap threshold with `mmap` and
/// unmaps it when freed, but then raises the threshold to that block's
/// size (up to 32 MiB on 64-bit systems), so from the second check on the
/// 19 MiB came from the heap of whichever malloc arena the thread used, and
/// stayed there: 200 failed logins in a row left imap-serve at 350 MB.
/// Asking for more than 32 MiB keeps every work area above any threshold
/// glibc sets by itself; the pages past what Argon2 uses are never
/// touched, so they cost address space, not memory.
fn work_area(blocks: usize) -> Vec<argon2::Block> {
    const ALWAYS_MAPPED: usize = (32 << 20) / std::mem::size_of::<argon2::Block>() + 1;
    let mut memory = Vec::with_capacity(blocks.max(ALWAYS_MAPPED));
    memory.resize(blocks, argon2::Block::default());
    memory
}

fn verify_bcrypt(password: &str, hashed: &str) -> Result<bool, String> {
    bcrypt::verify(password, hashed).map_err(|e| e.to_string())
}

fn check_sha512(password: &str, hashed: &str) -> Result<bool, PasswordError> {
    sha_crypt_result(sha_crypt::sha512_check(password, hashed), "SHA512-CRYPT")
}

fn check_sha256(password: &str, hashed: &str) -> Result<bool, PasswordError> {
    sha_crypt_result(sha_crypt::sha256_check(password, hashed), "SHA256-CRYPT")
}

/// sha-crypt reports a wrong password and a malformed hash as variants of
/// one error type it does not export; only `HashMismatch` is a plain "no".
fn sha_crypt_result<E: std::fmt::Debug>(
    result: Result<(), E>,
    scheme: &str,
) -> Result<bool, PasswordError> {
    match result {
        Ok(()) => Ok(true),
        Err(e) if format!("{e:?}") == "HashMismatch" => Ok(false),
        Err(e) => Err(PasswordError::Malformed {
            scheme: scheme.to_string(),
            reason: format!("{e:?}"),
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trips_every_writable_scheme() {
        for scheme in [Scheme::Argon2id, Scheme::Sha512Crypt, Scheme::BlfCrypt] {
            let stored = hash("correct horse", scheme).unwrap();
            assert!(
                stored.starts_with(&format!("{{{}}}", scheme.name())),
                "{stored}"
            );
            assert!(verify("correct horse", &stored).unwrap(), "{stored}");
            assert!(!verify("wrong horse", &stored).unwrap(), "{stored}");
        }
    }

    #[test]
    fn known_vectors_from_glibc_crypt() {
        // python3 -c "import crypt; print(crypt.crypt('secret', '$6$saltsalt$'))"
        let sha512 = "$6$saltsalt$TVLlQcbpFVof5W3Yz4DTP6gRstiNuHwwTt6GLc1E5n0U0aDehy0S5knV8wiOQSpT0Y77vwPZN.Pq.H91p5hVO1";
        let sha256 = "$5$saltsalt$0IyaXrmV7.sGNS6tirgqHLqX/G.FBvgkYA.lpPdS5sA";
        assert!(verify("secret", &format!("{{SHA512-CRYPT}}{sha512}")).unwrap());
        assert!(verify("secret", &format!("{{SHA256-CRYPT}}{sha256}")).unwrap());
        assert!(verify("secret", &format!("{{CRYPT}}{sha512}")).unwrap());
        assert!(verify("secret", sha256).unwrap());
        assert!(!verify("Secret", &format!("{{SHA512-CRYPT}}{sha512}")).unwrap());
        // The bcrypt crate's own test vector (OpenBSD's "U*U").
        let bcrypt = "$2a$05$CCCCCCCCCCCCCCCCCCCCC.E5YPO9kmyuRGyh0XouQYb4YMJKvyOeW";
        assert!(verify("U*U", &format!("{{BLF-CRYPT}}{bcrypt}")).unwrap());
    }

    /// Checks at once share work areas, and none is kept once they are
    /// done: Argon2's 19 MiB each must not stay after a burst of logins.
    #[test]
    fn argon2_checks_at_once_agree_and_keep_no_memory() {
        let stored = hash("correct horse", Scheme::Argon2id).unwrap();
        let stored = &stored;
        std::thread::scope(|scope| {
            let checks: Vec<_> = (0..6)
                .map(|i| {
                    scope.spawn(move || {
                        let password = if i % 2 == 0 { "correct horse" } else { "wrong" };
                        (i % 2 == 0, verify(password, stored).unwrap())
                    })
                })
                .collect();
            for check in checks {
                let (expected, got) = check.join().unwrap();
                assert_eq!(expected, got);
            }
        });
        // Other tests of this process may be checking passwords too: the
        // rule is that nothing is spare once no check runs.
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
        loop {
            let areas = WORK_AREAS.lock().unwrap();
            if areas.running == 0 {
                assert_eq!(areas.spare.len(), 0);
                break;
            }
            drop(areas);
            assert!(std::time::Instant::now() < deadline, "checks never ended");
            std::thread::sleep(std::time::Duration::from_millis(10));
        }
    }

    /// Our Argon2 check gives the crate's answer for every variant,
    /// version and parameter set.
    #[test]
    fn argon2_check_agrees_with_the_crate() {
        use argon2::password_hash::{PasswordHasher, PasswordVerifier, SaltString};
        use argon2::{Algorithm, Argon2, Params, Version};
        let salt = SaltString::encode_b64(b"postroom-salt").unwrap();
        for (algorithm, version, m, t, p) in [
            (Algorithm::Argon2id, Version::V0x13, 64, 3, 1),
            (Algorithm::Argon2id, Version::V0x13, 256, 1, 4),
            (Algorithm::Argon2i, Version::V0x13, 128, 2, 2),
            (Algorithm::Argon2i, Version::V0x10, 64, 2, 1),
        ] {
            let argon2 = Argon2::new(algorithm, version, Params::new(m, t, p, Some(24)).unwrap());
            let phc = argon2.hash_password(b"secret", &salt).unwrap().to_string();
            let parsed = argon2::PasswordHash::new(&phc).unwrap();
            for password in ["secret", "Secret", ""] {
                let theirs = Argon2::default()
                    .verify_password(password.as_bytes(), &parsed)
                    .is_ok();
                let ours = verify(password, &format!("{{ARGON2ID}}{phc}")).unwrap();
                assert_eq!(ours, theirs, "{phc} {password:?}");
                assert_eq!(ours, password == "secret");
            }
        }
    }

    #[test]
    fn plain_and_errors() {
        assert!(verify("pw", "{PLAIN}pw").unwrap());
        assert!(!verify("pw", "{PLAIN}pW").unwrap());
        let e = verify("pw", "{MD5-CRYPT}$1$x$y").unwrap_err().to_string();
        assert!(e.contains("MD5-CRYPT") && e.contains("supported"), "{e}");
        assert!(verify("pw", "{SHA512-CRYPT}garbage").is_err());
        assert!(verify("pw", "{ARGON2ID}$argon2id$nonsense").is_err());
        // Well-formed but with a memory cost argon2 refuses: an error for
        // the admin, not a wrong password.
        assert!(
            verify(
                "pw",
                "{ARGON2ID}$argon2id$v=19$m=1,t=2,p=1$lOEw4rxZrCW2d5VkpAaD2g$ajEKeK2QaEDitlOxW96rEXCrcfmCuuR9uXij99Ns2p8"
            )
            .is_err()
        );
        assert!(verify("pw", "{BLF-CRYPT}$2y$xx").is_err());
        assert!(
            verify(
                "pw",
                "{ARGON2ID}$argon2id$v=19$m=19456,t=2,p=1$lOEw4rxZrCW2d5VkpAaD2g"
            )
            .is_err()
        );
        assert_eq!(format!("{:?}", Secret::new("hunter2")), "<redacted>");
    }
}
