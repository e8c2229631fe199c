//! The users file: Dovecot's passwd-file format, so an admin can move users
//! between Dovecot and postroom with their passwords.
//!
//! ```text
//! user@domain:{SCHEME}hash:uid:gid:gecos:home:shell:extra
//! ```
//!
//! Only the first two fields are required. `home` is the user's maildir
//! (default `mail/DOMAIN/USER` under the tree). `extra` holds space-separated
//! `key=value` fields; postroom reads the quota from Dovecot's
//! `userdb_quota_rule=*:storage=SIZE` (a bare number is kilobytes, as in
//! Dovecot; `100M`, `2G` also work). The user name becomes a folder name, so
//! a local part with `/`, a leading `.` or a control character is refused.
//!
//! A users file that is missing, or lists no users without saying so on
//! purpose ([`NO_USERS_MARK`]), is taken for an accident — a failed restore,
//! a config management run that wrote an empty file, `> users` — and not for
//! "nobody lives here": the [`Users`] it yields is *unavailable*, and every
//! place that would say "no such user" says "try again later" instead
//! (4.3.0, exit 75), and logins fail temporarily. Long-running servers
//! [`reload`](Users::reload), which refuses such a file, so they keep the
//! last good copy. `postroom init` and `postroom user del` (when it removes
//! the last user) write the mark; `postroom user add` removes it.

use std::collections::{HashMap, HashSet};
use std::path::{Path, PathBuf};

use crate::config::{Config, parse_size};
use crate::directory::index::{Kind, Table};
use crate::directory::password::{self, PasswordError};
use crate::proto::address::{Address, is_domain_name};
use crate::store::fsutil::{self, FileError};

/// The comment that says a users file without users is meant to be so;
/// without it, such a file is an accident (see the module doc).
pub const NO_USERS_MARK: &str = "# postroom: no users";

/// Why a users file gives no users when it should give some.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Unavailable {
    /// The file does not exist.
    Missing,
    /// The file lists no users and has no [`NO_USERS_MARK`] line.
    Empty,
}

impl std::fmt::Display for Unavailable {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Unavailable::Missing => f.write_str("the users file is missing"),
            Unavailable::Empty => f.write_str("the users file lists no users"),
        }
    }
}

/// Why a login could not be checked (as opposed to a wrong password).
#[derive(Debug, thiserror::Error)]
pub enum LoginError {
    #[error(transparent)]
    Password(#[from] PasswordError),
    /// No users file to check against; the login may work later.
    #[error("{0}: no login can be checked until it is restored")]
    Unavailable(Unavailable),
}

/// One user of the system.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct User {
    /// `user@domain` in lower case: the lookup key.
    pub address: String,
    /// `{SCHEME}hash`.
    pub password: String,
    pub uid: Option<u32>,
    pub gid: Option<u32>,
    /// The maildir, if not the default.
    pub home: Option<PathBuf>,
    /// Quota in bytes.
    pub quota: Option<u64>,
    pub extra: String,
}

impl User {
    pub fn local_part(&self) -> &str {
        self.address
            .rsplit_once('@')
            .map(|(l, _)| l)
            .unwrap_or(&self.address)
    }
    pub fn domain(&self) -> &str {
        self.address.rsplit_once('@').map(|(_, d)| d).unwrap_or("")
    }
}

/// A user for [`add_users`].
#[derive(Debug, Clone)]
pub struct NewUser {
    pub address: Address,
    pub password_hash: String,
    pub quota: Option<u64>,
}

/// Every user, by lower-case address: the users file's index (see
/// `index`), or its text when the index cannot be used. A lookup parses
/// the one line it finds.
#[derive(Debug, Default)]
pub struct Users {
    table: Table,
    /// Which of [`DUMMY_HASHES`] an unknown user's password is checked
    /// against.
    dummy: usize,
    /// Set when the file is missing or emptied by accident: no lookup may
    /// then conclude that a user does not exist.
    unavailable: Option<Unavailable>,
}

/// In the index's `meta`: the users file lists no users and has no
/// [`NO_USERS_MARK`] (the low byte is the dummy hash's number).
const META_EMPTY: u64 = 1 << 8;

/// Hashes to verify against when the user does not exist, so the time a
/// failed login takes does not tell whether the name is real: one per
/// scheme, with the parameters `postroom passwd` uses, and the one of the
/// scheme most users have is taken (see [`Users::parse`]).
const DUMMY_HASHES: [(&str, &str); 3] = [
    (
        "{ARGON2ID}",
        "{ARGON2ID}$argon2id$v=19$m=19456,t=2,p=1$lOEw4rxZrCW2d5VkpAaD2g$ajEKeK2QaEDitlOxW96rEXCrcfmCuuR9uXij99Ns2p8",
    ),
    (
        "{SHA512-CRYPT}",
        "{SHA512-CRYPT}$6$saltsalt$TVLlQcbpFVof5W3Yz4DTP6gRstiNuHwwTt6GLc1E5n0U0aDehy0S5knV8wiOQSpT0Y77vwPZN.Pq.H91p5hVO1",
    ),
    (
        "{BLF-CRYPT}",
        "{BLF-CRYPT}$2y$12$UaQX.7xxZ77DnPhJPPftj.iOEESNZ0GuVkV0BqCYLpV/DU8r8wKvm",
    ),
];

impl Users {
    /// Reads the users file. A missing file, or one without users or
    /// [`NO_USERS_MARK`], gives an [`unavailable`](Users::unavailable) set
    /// of users (logged), so that mail waits instead of bouncing.
    ///
    /// The file is read through its index (`users.index`), rebuilt here
    /// when the text changed; a server gets the same answers either way.
    pub fn load(path: &Path) -> Result<Users, FileError> {
        let users = match Table::load(path, Kind::Users, entries_of)? {
            Some((table, meta)) => Users::from_table(table, meta),
            None => Users {
                unavailable: Some(Unavailable::Missing),
                ..Users::default()
            },
        };
        if let Some(why) = users.unavailable {
            tracing::error!(
                "{}: {why}; mail for local users waits (4.3.0) and logins fail until it is \
                 restored (if there are really no users, write the line `{NO_USERS_MARK}` in it)",
                path.display()
            );
        }
        Ok(users)
    }

    /// [`load`](Users::load) for a server that already has users in hand:
    /// a file that is missing or emptied by accident is an error, so the
    /// caller keeps its last good copy (and logs why).
    pub fn reload(path: &Path) -> Result<Users, FileError> {
        let users = Users::load(path)?;
        match users.unavailable {
            Some(why) => Err(FileError::Unavailable {
                file: path.to_path_buf(),
                message: format!(
                    "{why} (without the line `{NO_USERS_MARK}`, an empty users file is taken \
                     for an accident)"
                ),
            }),
            None => Ok(users),
        }
    }

    /// The users of `text`, every line checked; errors name `path`.
    pub fn parse(text: &str, path: &Path) -> Result<Users, FileError> {
        let (entries, meta) = entries_of(text, path)?;
        Ok(Users::from_table(Table::Memory(entries), meta))
    }

    fn from_table(table: Table, meta: u64) -> Users {
        Users {
            table,
            dummy: ((meta & 0xff) as usize).min(DUMMY_HASHES.len() - 1),
            unavailable: (meta & META_EMPTY != 0).then_some(Unavailable::Empty),
        }
    }

    /// Why there are no users when there should be some: lookups must then
    /// answer "try again later", never "no such user".
    pub fn unavailable(&self) -> Option<Unavailable> {
        self.unavailable
    }

    /// The user with this address (any case). A users file that cannot
    /// be read now (its index damaged and the text gone) is logged and
    /// answers none.
    pub fn get(&self, address: &str) -> Option<User> {
        let key = address.to_lowercase();
        match self.table.get(&key, Kind::Users) {
            Ok(line) => parse_line(&line?).ok().flatten(),
            Err(e) => {
                tracing::error!("{e}");
                None
            }
        }
    }

    /// Every user, in no order. Read from the text when the table is an
    /// index, which cannot be walked: for `postroom check` and the admin
    /// commands, not for a lookup.
    pub fn list(&self, path: &Path) -> Result<Vec<User>, FileError> {
        let parsed;
        let entries = match &self.table {
            Table::Memory(entries) => entries,
            Table::Indexed { .. } => {
                parsed = entries_of(&FileError::read(path)?, path)?.0;
                &parsed
            }
        };
        Ok(entries
            .values()
            .filter_map(|line| parse_line(line).ok().flatten())
            .collect())
    }

    pub fn len(&self) -> usize {
        self.table.len()
    }

    pub fn is_empty(&self) -> bool {
        self.table.is_empty()
    }

    /// Checks a login (the full address) and password. `Ok(None)` for an
    /// unknown user or a wrong password alike; an error when there is no
    /// users file to check against (a temporary failure, not a wrong
    /// password).
    pub fn authenticate(&self, login: &str, password: &str) -> Result<Option<User>, LoginError> {
        if let Some(why) = self.unavailable {
            return Err(LoginError::Unavailable(why));
        }
        match self.get(login.trim()) {
            Some(user) => Ok(password::verify(password, &user.password)?.then_some(user)),
            None => {
                let _ = password::verify(password, DUMMY_HASHES[self.dummy].1);
                Ok(None)
            }
        }
    }
}

/// Checks every line of a users file and gives its entries (lower-case
/// address to line) and the index's `meta`: the dummy hash's number, and
/// [`META_EMPTY`].
fn entries_of(text: &str, path: &Path) -> Result<(HashMap<String, String>, u64), FileError> {
    let mut entries = HashMap::new();
    let mut lines_of: HashMap<String, usize> = HashMap::new();
    let mut users = Vec::new();
    for (number, line) in text.lines().enumerate() {
        let Some(user) = parse_line(line).map_err(|message| FileError::Syntax {
            file: path.to_path_buf(),
            line: number + 1,
            message,
        })?
        else {
            continue;
        };
        if let Some(first) = lines_of.insert(user.address.clone(), number + 1) {
            return Err(FileError::Syntax {
                file: path.to_path_buf(),
                line: number + 1,
                message: format!("{} is listed already on line {first}", user.address),
            });
        }
        entries.insert(user.address.clone(), line.to_string());
        users.push(user);
    }
    let meant_empty = text
        .lines()
        .any(|line| line.trim_start().starts_with(NO_USERS_MARK));
    let mut meta = most_used_dummy(users.iter()) as u64;
    if entries.is_empty() && !meant_empty {
        meta |= META_EMPTY;
    }
    Ok((entries, meta))
}

/// The number of the dummy hash in the scheme most users have (ARGON2ID,
/// the default scheme, when there are none or none of ours).
fn most_used_dummy<'a>(users: impl Iterator<Item = &'a User>) -> usize {
    let mut counts = [0usize; DUMMY_HASHES.len()];
    for user in users {
        let upper = user
            .password
            .get(..16)
            .unwrap_or(&user.password)
            .to_ascii_uppercase();
        if let Some(i) = DUMMY_HASHES.iter().position(|(p, _)| upper.starts_with(p)) {
            counts[i] += 1;
        }
    }
    (0..counts.len())
        .rev()
        .max_by_key(|&i| counts[i])
        .unwrap_or(0)
}

/// Parses one line; `Ok(None)` for blank lines and comments.
fn parse_line(line: &str) -> Result<Option<User>, String> {
    let trimmed = line.trim();
    if trimmed.is_empty() || trimmed.starts_with('#') {
        return Ok(None);
    }
    let fields: Vec<&str> = line.splitn(8, ':').collect();
    if fields.len() < 2 {
        return Err("expected user@domain:{SCHEME}hash[:uid:gid:gecos:home:shell:extra]".into());
    }
    let address = check_user_name(fields[0])?;
    let number = |i: usize, what: &str| -> Result<Option<u32>, String> {
        match fields.get(i).map(|f| f.trim()) {
            None | Some("") => Ok(None),
            Some(v) => v
                .parse()
                .map(Some)
                .map_err(|_| format!("{what} {v:?} is not a number")),
        }
    };
    let home = fields
        .get(5)
        .map(|h| h.trim())
        .filter(|h| !h.is_empty())
        .map(PathBuf::from);
    let extra = fields
        .get(7)
        .map(|e| e.trim().to_string())
        .unwrap_or_default();
    let quota = quota_from_extra(&extra)?;
    Ok(Some(User {
        address,
        password: fields[1].to_string(),
        uid: number(2, "uid")?,
        gid: number(3, "gid")?,
        home,
        quota,
        extra,
    }))
}

/// Validates a user name and returns its lookup key. The local part becomes
/// a folder name under mail/DOMAIN/, so anything that could step out of it
/// is refused here, once, for every program.
fn check_user_name(name: &str) -> Result<String, String> {
    let address = Address::parse(name.trim()).map_err(|e| format!("user {name:?}: {e}"))?;
    let local = address.local_part();
    if local.contains('/')
        || local.starts_with('.')
        || local.starts_with('"')
        || local.contains('\\')
    {
        return Err(format!(
            "user {name:?}: a user name may not contain / or \\, or start with . or a quote"
        ));
    }
    if !is_domain_name(address.domain()) {
        return Err(format!(
            "user {name:?}: {} is not a domain name",
            address.domain()
        ));
    }
    Ok(address.lookup_key())
}

/// `userdb_quota_rule=*:storage=SIZE` (or `quota_rule=`), Dovecot's syntax.
fn quota_from_extra(extra: &str) -> Result<Option<u64>, String> {
    for field in extra.split_whitespace() {
        let Some(rule) = field
            .strip_prefix("userdb_quota_rule=")
            .or_else(|| field.strip_prefix("quota_rule="))
        else {
            continue;
        };
        let Some(size) = rule.strip_prefix("*:storage=") else {
            return Err(format!(
                "quota rule {rule:?}: only *:storage=SIZE is supported"
            ));
        };
        // Dovecot reads a bare number as kilobytes.
        let bytes = if size.bytes().all(|b| b.is_ascii_digit()) {
            size.parse::<u64>()
                .ok()
                .and_then(|k| k.checked_mul(1024))
                .ok_or_else(|| format!("quota {size} KiB is too large"))?
        } else {
            parse_size(size)?
        };
        return Ok(Some(bytes));
    }
    Ok(None)
}

/// The maildir of a user: their home, or `mail/DOMAIN/USER` in the tree.
pub fn maildir_of(config: &Config, user: &User) -> PathBuf {
    match &user.home {
        Some(home) => config.path(home),
        None => config
            .mail_dir()
            .join(user.domain())
            .join(user.local_part()),
    }
}

fn render(user: &NewUser) -> String {
    let extra = match user.quota {
        Some(q) => format!("userdb_quota_rule=*:storage={}B", q),
        None => String::new(),
    };
    let line = format!(
        "{}:{}::::::{extra}",
        user.address.lookup_key(),
        user.password_hash
    );
    line.trim_end_matches(':').to_string() + "\n"
}

/// Adds users in one locked rewrite (10,000 in one call is one write). Any
/// invalid or existing user refuses the whole call, naming them.
pub fn add_users(path: &Path, users: &[NewUser]) -> Result<(), FileError> {
    let edited = fsutil::edit_secret_locked(path, |mut text| {
        let existing = Users::parse(&text, path)?;
        let mut seen = HashSet::new();
        let mut refused = Vec::new();
        for user in users {
            let key = check_user_name(&user.address.to_string()).map_err(FileError::Refused)?;
            if user.password_hash.contains([':', '\n', '\r']) {
                return Err(FileError::Refused(format!(
                    "{key}: the password hash may not contain ':' or a line break"
                )));
            }
            if existing.get(&key).is_some() || !seen.insert(key.clone()) {
                refused.push(key);
            }
        }
        if !refused.is_empty() {
            refused.truncate(20);
            return Err(FileError::Refused(format!(
                "already users, nothing added: {}",
                refused.join(", ")
            )));
        }
        // With users in it, the file is no longer empty on purpose: should
        // it lose them by accident later, that must not look deliberate.
        if text.contains(NO_USERS_MARK) {
            text = text
                .lines()
                .filter(|line| !line.trim_start().starts_with(NO_USERS_MARK))
                .map(|line| format!("{line}\n"))
                .collect();
        }
        if !text.is_empty() && !text.ends_with('\n') {
            text.push('\n');
        }
        text.reserve(users.len() * 120);
        for user in users {
            text.push_str(&render(user));
        }
        Ok(text)
    });
    if edited.is_ok() {
        Table::refresh(path, Kind::Users, entries_of);
    }
    edited
}

/// Rewrites the lines of the users file that name `address`.
fn edit_user(
    path: &Path,
    address: &str,
    change: impl Fn(&str) -> Option<String>,
) -> Result<(), FileError> {
    let key = address.trim().to_lowercase();
    let edited = fsutil::edit_secret_locked(path, |text| {
        let mut found = false;
        let mut out = String::with_capacity(text.len());
        for line in text.lines() {
            let name = line.split(':').next().unwrap_or("").trim().to_lowercase();
            if !line.trim_start().starts_with('#') && name == key {
                found = true;
                if let Some(new) = change(line) {
                    out.push_str(&new);
                    out.push('\n');
                }
            } else {
                out.push_str(line);
                out.push('\n');
            }
        }
        if !found {
            return Err(FileError::Refused(format!(
                "{key} is not a user (see `postroom user list`)"
            )));
        }
        // The last user removed through us: the empty file is meant, and
        // says so, unlike one emptied by accident.
        let any_user = out
            .lines()
            .any(|line| matches!(parse_line(line), Ok(Some(_))));
        if !any_user && !out.contains(NO_USERS_MARK) {
            out.push_str(NO_USERS_MARK);
            out.push_str(" (`postroom user del` removed the last one)\n");
        }
        Ok(out)
    });
    if edited.is_ok() {
        Table::refresh(path, Kind::Users, entries_of);
    }
    edited
}

/// Sets a user's quota in bytes (`None`: no quota of their own, so
/// `delivery.default_quota` applies), keeping the rest of the line: the
/// `userdb_quota_rule` in the extra fields is replaced, other fields stay.
pub fn set_quota(path: &Path, address: &str, quota: Option<u64>) -> Result<(), FileError> {
    edit_user(path, address, |line| {
        let mut fields: Vec<String> = line.splitn(8, ':').map(str::to_string).collect();
        fields.resize(fields.len().max(8), String::new());
        let mut extra: Vec<String> = fields[7]
            .split_whitespace()
            .filter(|f| !f.starts_with("userdb_quota_rule=") && !f.starts_with("quota_rule="))
            .map(str::to_string)
            .collect();
        if let Some(bytes) = quota {
            extra.push(format!("userdb_quota_rule=*:storage={bytes}B"));
        }
        fields[7] = extra.join(" ");
        Some(fields.join(":").trim_end_matches(':').to_string())
    })
}

/// Removes a user's line; their mail stays on disk.
pub fn remove_user(path: &Path, address: &str) -> Result<(), FileError> {
    edit_user(path, address, |_| None)
}

/// Replaces a user's password hash, keeping the rest of the line.
pub fn set_password(path: &Path, address: &str, hash: &str) -> Result<(), FileError> {
    if hash.contains([':', '\n', '\r']) {
        return Err(FileError::Refused(
            "the password hash may not contain ':' or a line break".into(),
        ));
    }
    edit_user(path, address, |line| {
        let mut fields: Vec<&str> = line.splitn(8, ':').collect();
        if fields.len() < 2 {
            fields.push("");
        }
        fields[1] = hash;
        Some(fields.join(":"))
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    const FILE: &str = "# users\n\
        Ann@Example.test:{PLAIN}pw::::::userdb_quota_rule=*:storage=100M\n\
        bob@example.test:{PLAIN}x:1000:1000::/srv/bob::\n";

    #[test]
    fn parses_dovecot_lines() {
        let users = Users::parse(FILE, Path::new("users")).unwrap();
        let ann = users.get("ANN@example.TEST").unwrap();
        assert_eq!(ann.address, "ann@example.test");
        assert_eq!(ann.quota, Some(100 << 20));
        let bob = users.get("bob@example.test").unwrap();
        assert_eq!((bob.uid, bob.gid), (Some(1000), Some(1000)));
        assert_eq!(bob.home.as_deref(), Some(Path::new("/srv/bob")));
        assert_eq!(
            quota_from_extra("userdb_quota_rule=*:storage=10").unwrap(),
            Some(10240)
        );
        // KiB that overflow u64 bytes are an error naming the quota.
        let e = quota_from_extra("quota_rule=*:storage=18446744073709551615").unwrap_err();
        assert!(e.contains("too large"), "{e}");
    }

    #[test]
    fn unknown_users_are_checked_against_the_common_scheme() {
        let sha = "a@example.test:{SHA512-CRYPT}$6$x$y\nb@example.test:{sha512-crypt}$6$x$y\nc@example.test:{PLAIN}p\n";
        let users = Users::parse(sha, Path::new("users")).unwrap();
        assert!(DUMMY_HASHES[users.dummy].1.starts_with("{SHA512-CRYPT}"));
        let users = Users::parse("", Path::new("users")).unwrap();
        assert!(DUMMY_HASHES[users.dummy].1.starts_with("{ARGON2ID}"));
        // Every dummy hash is one verify accepts as well-formed.
        for (_, hash) in DUMMY_HASHES {
            assert!(!password::verify("x", hash).unwrap(), "{hash}");
        }
    }

    #[test]
    fn refuses_path_tricks_and_names_the_line() {
        for bad in [
            "../x@example.test:{PLAIN}p",
            "a/b@example.test:{PLAIN}p",
            ".x@example.test:{PLAIN}p",
            "x@bad..domain:{PLAIN}p",
            "nocolon",
        ] {
            let e = Users::parse(&format!("# c\n{bad}\n"), Path::new("users"))
                .unwrap_err()
                .to_string();
            assert!(e.starts_with("users:2: "), "{e}");
        }
        let e = Users::parse("a@b.test:x\nA@b.test:y\n", Path::new("users"))
            .unwrap_err()
            .to_string();
        assert!(e.contains("line 1"), "{e}");
    }

    #[test]
    fn authenticate_by_any_case() {
        let users = Users::parse(FILE, Path::new("users")).unwrap();
        assert!(
            users
                .authenticate("ann@EXAMPLE.test", "pw")
                .unwrap()
                .is_some()
        );
        assert!(
            users
                .authenticate("ann@example.test", "no")
                .unwrap()
                .is_none()
        );
        assert!(
            users
                .authenticate("nobody@example.test", "pw")
                .unwrap()
                .is_none()
        );
    }

    #[test]
    fn edits_keep_other_lines_and_refuse_duplicates() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("users");
        std::fs::write(&path, FILE).unwrap();
        let new = |a: &str| NewUser {
            address: Address::parse(a).unwrap(),
            password_hash: "{PLAIN}n".into(),
            quota: Some(1 << 20),
        };
        add_users(&path, &[new("cat@example.test")]).unwrap();
        let e = add_users(&path, &[new("dog@example.test"), new("ann@example.test")]).unwrap_err();
        assert!(e.to_string().contains("ann@example.test"), "{e}");
        assert!(
            Users::load(&path)
                .unwrap()
                .get("dog@example.test")
                .is_none()
        );
        set_password(&path, "BOB@example.test", "{PLAIN}new").unwrap();
        remove_user(&path, "ann@example.test").unwrap();
        assert!(remove_user(&path, "ann@example.test").is_err());
        let text = std::fs::read_to_string(&path).unwrap();
        assert!(
            text.starts_with("# users\nbob@example.test:{PLAIN}new:1000:1000::/srv/bob::\n"),
            "{text}"
        );
        let users = Users::load(&path).unwrap();
        assert_eq!(users.get("cat@example.test").unwrap().quota, Some(1 << 20));
    }

    #[test]
    fn missing_or_accidentally_empty_files_are_unavailable_not_userless() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("users");
        assert_eq!(
            Users::load(&path).unwrap().unavailable(),
            Some(Unavailable::Missing)
        );
        for text in ["", "\n\n", "# users\n"] {
            std::fs::write(&path, text).unwrap();
            let users = Users::load(&path).unwrap();
            assert_eq!(users.unavailable(), Some(Unavailable::Empty), "{text:?}");
            let e = users.authenticate("ann@example.test", "pw").unwrap_err();
            assert!(matches!(e, LoginError::Unavailable(_)), "{e}");
            let e = Users::reload(&path).unwrap_err().to_string();
            assert!(
                e.contains("lists no users") && e.contains(NO_USERS_MARK),
                "{e}"
            );
        }
        std::fs::write(&path, format!("# users\n{NO_USERS_MARK} yet\n")).unwrap();
        let users = Users::reload(&path).unwrap();
        assert_eq!(users.unavailable(), None);
        assert!(
            users
                .authenticate("ann@example.test", "pw")
                .unwrap()
                .is_none()
        );
        std::fs::write(&path, FILE).unwrap();
        assert_eq!(Users::reload(&path).unwrap().len(), 2);
    }

    #[test]
    fn user_del_of_the_last_user_marks_the_file_empty_on_purpose() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("users");
        std::fs::write(&path, format!("# users\n{NO_USERS_MARK} yet\n")).unwrap();
        let new = |a: &str| NewUser {
            address: Address::parse(a).unwrap(),
            password_hash: "{PLAIN}n".into(),
            quota: None,
        };
        add_users(&path, &[new("ann@example.test"), new("bob@example.test")]).unwrap();
        let text = std::fs::read_to_string(&path).unwrap();
        assert!(!text.contains(NO_USERS_MARK), "{text}");
        assert!(text.starts_with("# users\nann@example.test:"), "{text}");
        remove_user(&path, "ann@example.test").unwrap();
        assert!(
            !std::fs::read_to_string(&path)
                .unwrap()
                .contains(NO_USERS_MARK)
        );
        remove_user(&path, "bob@example.test").unwrap();
        let users = Users::reload(&path).unwrap();
        assert!(users.is_empty());
        assert_eq!(users.unavailable(), None);
        // The same file cut to nothing is an accident again.
        std::fs::write(&path, "").unwrap();
        assert!(Users::reload(&path).is_err());
    }

    #[test]
    fn ten_thousand_in_one_call() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("users");
        let many: Vec<NewUser> = (0..10_000)
            .map(|i| NewUser {
                address: Address::parse(&format!("u{i}@example.test")).unwrap(),
                password_hash: "{PLAIN}x".into(),
                quota: None,
            })
            .collect();
        add_users(&path, &many).unwrap();
        assert_eq!(Users::load(&path).unwrap().len(), 10_000);
    }

    proptest::proptest! {
        #[test]
        fn parse_never_panics(text in "\\PC{0,200}") {
            let _ = Users::parse(&text, Path::new("users"));
        }
    }
}
