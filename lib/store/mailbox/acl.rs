//! Access control lists of folders (IMAP ACL, RFC 4314), kept as Dovecot
//! keeps them so an administrator can move a tree between the two.
//!
//! Per folder, beside `dovecot-uidlist`: [`ACL_FILE`], one `identifier
//! rights` line per grant (`postroom-mailbox(5)`):
//!
//! ```text
//! owner lrswipkxtea
//! user=bob@example.test lrs
//! -user=eve@example.test w
//! authenticated lr
//! anyone l
//! group=staff lr
//! ```
//!
//! A `-` before the identifier takes rights away (RFC 4314 §2: negative
//! rights win over positive ones). `group=` lines are kept and rendered
//! but never match: postroom has no groups yet.
//!
//! Beside the folder files, two of postroom's own:
//! - a per-grantee index under the state directory ([`GranteeIndex`]), so
//!   LIST of the shared namespace reads what was shared with the user
//!   instead of every user's tree (Dovecot's `dovecot-acl-list` turned
//!   round: by grantee, not by owner);
//! - per-user \Seen of a folder someone else owns ([`PrivateSeen`]), in the
//!   reader's own tree, so the owner's and each reader's \Seen differ
//!   while every other flag is shared (Dovecot's default).
//!
//! Parsing and rendering are I/O-free ([`Acl::parse`], [`Acl::render`]);
//! the readers and writers below them take the folder's uidlist lock.

use std::fmt;
use std::io;
use std::path::{Path, PathBuf};

use super::MailboxError;
use super::uidlist::UidLock;

/// The ACL of a folder, in the folder's directory.
pub const ACL_FILE: &str = "dovecot-acl";

/// In a reader's tree: their \Seen of folders others own.
pub const PRIVATE_SEEN_DIR: &str = "postroom-shared-seen";

/// A set of rights (RFC 4314 §2.1), one bit per letter of [`LETTERS`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Hash)]
pub struct Rights(u16);

/// The rights in the order responses give them.
pub const LETTERS: &str = "lrswipkxtea";

/// Why an ACL text or a rights string was refused; fit for a `BAD`/`NO`
/// reply or a log line naming the file.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AclError {
    #[error("unknown right {0:?} (rights are letters of \"lrswipkxtea\", or the obsolete c and d)")]
    UnknownRight(char),
    #[error("line {line}: {message}")]
    Line { line: usize, message: String },
    #[error("bad identifier {0:?} (a user's address, owner, authenticated, anyone or $group)")]
    BadIdentifier(String),
}

impl Rights {
    pub const NONE: Rights = Rights(0);
    pub const LOOKUP: Rights = Rights(1 << 0);
    pub const READ: Rights = Rights(1 << 1);
    pub const SEEN: Rights = Rights(1 << 2);
    pub const WRITE: Rights = Rights(1 << 3);
    pub const INSERT: Rights = Rights(1 << 4);
    pub const POST: Rights = Rights(1 << 5);
    pub const CREATE: Rights = Rights(1 << 6);
    pub const DELETE_MAILBOX: Rights = Rights(1 << 7);
    pub const DELETE_MESSAGES: Rights = Rights(1 << 8);
    pub const EXPUNGE: Rights = Rights(1 << 9);
    pub const ADMIN: Rights = Rights(1 << 10);
    pub const ALL: Rights = Rights((1 << 11) - 1);

    /// The right of one letter. The obsolete rights of RFC 2086 map as
    /// RFC 4314 §2.1.1 says for a server announcing `RIGHTS=texk`: `c`
    /// (create) is `k` and `x`, `d` (delete) is `x`, `t` and `e`.
    pub fn of_letter(c: char) -> Option<Rights> {
        Some(match c {
            'c' => Rights::CREATE.with(Rights::DELETE_MAILBOX),
            'd' => Rights::DELETE_MAILBOX
                .with(Rights::DELETE_MESSAGES)
                .with(Rights::EXPUNGE),
            c => Rights(1 << LETTERS.find(c)?),
        })
    }

    /// Rights as letters (any order, repeats allowed).
    pub fn parse(text: &str) -> Result<Rights, AclError> {
        text.chars().try_fold(Rights::NONE, |acc, c| {
            Rights::of_letter(c)
                .map(|r| acc.with(r))
                .ok_or(AclError::UnknownRight(c))
        })
    }

    pub fn with(self, other: Rights) -> Rights {
        Rights(self.0 | other.0)
    }

    pub fn without(self, other: Rights) -> Rights {
        Rights(self.0 & !other.0)
    }

    /// Every right of `other` is here.
    pub fn has(self, other: Rights) -> bool {
        self.0 & other.0 == other.0
    }

    /// Some right of `other` is here.
    pub fn any(self, other: Rights) -> bool {
        self.0 & other.0 != 0
    }

    pub fn is_empty(self) -> bool {
        self.0 == 0
    }

    /// For MYRIGHTS and GETACL: the letters, and after them the obsolete
    /// `c` and `d` where their members are all here, for clients of RFC
    /// 2086 (RFC 4314 §2.1.1).
    pub fn imap_letters(self) -> String {
        let mut s = self.to_string();
        if self.has(Rights::CREATE.with(Rights::DELETE_MAILBOX)) {
            s.push('c');
        }
        if self.has(
            Rights::DELETE_MAILBOX
                .with(Rights::DELETE_MESSAGES)
                .with(Rights::EXPUNGE),
        ) {
            s.push('d');
        }
        s
    }
}

/// The letters in [`LETTERS`] order (the file's form).
impl fmt::Display for Rights {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, c) in LETTERS.chars().enumerate() {
            if self.0 & (1 << i) != 0 {
                write!(f, "{c}")?;
            }
        }
        Ok(())
    }
}

/// Who a line of an ACL is about.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Identifier {
    /// The folder's owner (never matches in a public folder).
    Owner,
    /// Every logged-in user who may reach the folder.
    Authenticated,
    /// Anyone: with no anonymous login here, the same as `Authenticated`.
    Anyone,
    /// One user, by address (lower case).
    User(String),
    /// Kept and shown, never matched (postroom has no groups).
    Group(String),
}

impl Identifier {
    /// The identifiers that are words alike in the file and in IMAP.
    fn special(text: &str) -> Option<Identifier> {
        Some(match text {
            "owner" => Identifier::Owner,
            "authenticated" => Identifier::Authenticated,
            "anyone" => Identifier::Anyone,
            _ => return None,
        })
    }

    /// The file's form: `owner`, `authenticated`, `anyone`, `user=ADDR`,
    /// `group=NAME`.
    pub fn parse_file(text: &str) -> Result<Identifier, AclError> {
        let bad = || AclError::BadIdentifier(text.to_string());
        if let Some(id) = Identifier::special(text) {
            return Ok(id);
        }
        if let Some(user) = text.strip_prefix("user=") {
            Ok(Identifier::User(
                checked_name(user).ok_or_else(bad)?.to_lowercase(),
            ))
        } else if let Some(group) = text.strip_prefix("group=") {
            Ok(Identifier::Group(
                checked_name(group).ok_or_else(bad)?.to_string(),
            ))
        } else {
            Err(bad())
        }
    }

    /// The IMAP form (as Dovecot reads it): `owner`, `authenticated`,
    /// `anyone`, `$group`, or a user; a user without `@` is in
    /// `domain`.
    pub fn parse_imap(text: &str, domain: &str) -> Result<Identifier, AclError> {
        let bad = || AclError::BadIdentifier(text.to_string());
        if let Some(id) = Identifier::special(&text.to_ascii_lowercase()) {
            return Ok(id);
        }
        if let Some(group) = text.strip_prefix('$') {
            return Ok(Identifier::Group(
                checked_name(group).ok_or_else(bad)?.to_string(),
            ));
        }
        let user = checked_name(text).ok_or_else(bad)?.to_lowercase();
        Ok(Identifier::User(if user.contains('@') {
            user
        } else {
            format!("{user}@{}", domain.to_lowercase())
        }))
    }

    /// The IMAP form: as in the file but for users and groups.
    pub fn imap(&self) -> String {
        match self {
            Identifier::User(u) => u.clone(),
            Identifier::Group(g) => format!("${g}"),
            special => special.to_string(),
        }
    }

    /// Whether this names `user` (lower-case address), who is the owner
    /// or not.
    pub fn matches(&self, user: &str, is_owner: bool) -> bool {
        match self {
            Identifier::Owner => is_owner,
            Identifier::Authenticated | Identifier::Anyone => true,
            Identifier::User(u) => u == user,
            Identifier::Group(_) => false,
        }
    }
}

/// A user or group name fit for a line of the file and for a file name
/// of the grantee index: no white space, control characters or `/`, not
/// empty, not starting with `.` or `-`.
fn checked_name(name: &str) -> Option<&str> {
    let ok = !name.is_empty()
        && name.len() <= 255
        && !name.starts_with(['.', '-'])
        && !name
            .chars()
            .any(|c| c.is_whitespace() || c.is_control() || c == '/' || c == '\\');
    ok.then_some(name)
}

impl fmt::Display for Identifier {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Identifier::Owner => f.write_str("owner"),
            Identifier::Authenticated => f.write_str("authenticated"),
            Identifier::Anyone => f.write_str("anyone"),
            Identifier::User(u) => write!(f, "user={u}"),
            Identifier::Group(g) => write!(f, "group={g}"),
        }
    }
}

/// One line of an ACL.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Grant {
    /// Rights taken away rather than given.
    pub negative: bool,
    pub id: Identifier,
    pub rights: Rights,
}

/// How SETACL changes a grant (RFC 4314 §3.1: `+` adds, `-` removes,
/// neither replaces).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Change {
    Replace,
    Add,
    Remove,
}

/// A folder's access control list: the grants in file order.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Acl {
    pub grants: Vec<Grant>,
}

impl Acl {
    /// Reads the file's text. Blank lines and `#` comments are skipped;
    /// Dovecot's long right names (`:read`) are not understood and refuse
    /// the line, so a file is never read as granting less than it says
    /// without a word in the log.
    pub fn parse(text: &str) -> Result<Acl, AclError> {
        let mut grants: Vec<Grant> = Vec::new();
        for (n, line) in text.lines().enumerate() {
            let line = line.trim();
            if line.is_empty() || line.starts_with('#') {
                continue;
            }
            let err = |message: String| AclError::Line {
                line: n + 1,
                message,
            };
            let mut words = line.split_whitespace();
            let (Some(who), rights, None) = (words.next(), words.next(), words.next()) else {
                return Err(err("expected \"identifier rights\"".into()));
            };
            let (negative, who) = match who.strip_prefix('-') {
                Some(rest) => (true, rest),
                None => (false, who),
            };
            let id = Identifier::parse_file(who).map_err(|e| err(e.to_string()))?;
            let rights = Rights::parse(rights.unwrap_or("")).map_err(|e| err(e.to_string()))?;
            // A repeated identifier adds to the first (Dovecot merges too).
            match grants
                .iter_mut()
                .find(|g| g.negative == negative && g.id == id)
            {
                Some(g) => g.rights = g.rights.with(rights),
                None => grants.push(Grant {
                    negative,
                    id,
                    rights,
                }),
            }
        }
        Ok(Acl { grants })
    }

    /// The file's text: what [`Acl::parse`] reads back the same.
    pub fn render(&self) -> String {
        let mut out = String::new();
        for g in &self.grants {
            if g.negative {
                out.push('-');
            }
            out.push_str(&format!("{} {}\n", g.id, g.rights));
        }
        out
    }

    /// The rights `user` (lower-case address) has: every positive grant
    /// that names them, less every negative one.
    pub fn rights_of(&self, user: &str, is_owner: bool) -> Rights {
        let (mut plus, mut minus) = (Rights::NONE, Rights::NONE);
        for g in self.grants.iter().filter(|g| g.id.matches(user, is_owner)) {
            if g.negative {
                minus = minus.with(g.rights);
            } else {
                plus = plus.with(g.rights);
            }
        }
        plus.without(minus)
    }

    /// SETACL: changes (or adds) the grant of `id`; a grant left with no
    /// rights is removed.
    pub fn set(&mut self, negative: bool, id: &Identifier, change: Change, rights: Rights) {
        let i = match self
            .grants
            .iter()
            .position(|g| g.negative == negative && g.id == *id)
        {
            Some(i) => i,
            None => {
                self.grants.push(Grant {
                    negative,
                    id: id.clone(),
                    rights: Rights::NONE,
                });
                self.grants.len() - 1
            }
        };
        let g = &mut self.grants[i];
        g.rights = match change {
            Change::Replace => rights,
            Change::Add => g.rights.with(rights),
            Change::Remove => g.rights.without(rights),
        };
        if g.rights.is_empty() {
            self.grants.remove(i);
        }
    }

    /// DELETEACL: removes the grant of `id`; whether there was one.
    pub fn delete(&mut self, negative: bool, id: &Identifier) -> bool {
        let before = self.grants.len();
        self.grants
            .retain(|g| !(g.negative == negative && g.id == *id));
        self.grants.len() != before
    }
}

fn io_err(path: &Path) -> impl FnOnce(io::Error) -> MailboxError + '_ {
    move |error| MailboxError::Io {
        path: path.to_path_buf(),
        error,
    }
}

/// The ACL of the folder at `dir`; `None` when it has no [`ACL_FILE`].
/// A file that does not parse is logged and read as granting nothing,
/// so a typo shuts a folder rather than opening it.
pub fn read(dir: &Path) -> Result<Option<Acl>, MailboxError> {
    let path = dir.join(ACL_FILE);
    let Some(bytes) = crate::store::maildir::read_side_file(&path).map_err(io_err(&path))? else {
        return Ok(None);
    };
    match Acl::parse(&String::from_utf8_lossy(&bytes)) {
        Ok(acl) => Ok(Some(acl)),
        Err(e) => {
            tracing::warn!(
                "{}: {e}; no rights granted until it is fixed",
                path.display()
            );
            Ok(Some(Acl::default()))
        }
    }
}

/// Changes the ACL of the folder at `dir` under the folder's lock (the
/// uidlist's), and writes it back atomically; returns the new ACL. An
/// empty ACL removes the file.
pub fn update(dir: &Path, change: impl FnOnce(&mut Acl)) -> Result<Acl, MailboxError> {
    let lock = UidLock::acquire(dir).map_err(io_err(dir))?;
    let mut acl = read(dir)?.unwrap_or_default();
    change(&mut acl);
    let path = dir.join(ACL_FILE);
    if acl.grants.is_empty() {
        match std::fs::remove_file(&path) {
            Ok(()) => {}
            Err(e) if e.kind() == io::ErrorKind::NotFound => {}
            Err(e) => return Err(io_err(&path)(e)),
        }
    } else {
        crate::store::fsutil::write_atomic(&path, acl.render().as_bytes())
            .map_err(io_err(&path))?;
    }
    drop(lock);
    Ok(acl)
}

/// The folders shared with each user, by grantee: one file per grantee
/// under `state/shared-folders/`, named by the grantee's address (or
/// `@DOMAIN` for grants to `anyone` and `authenticated`), one `OWNER
/// FOLDER` line (the folder's disk name) per folder. Only a hint: LIST
/// checks each folder's ACL, so a stale line shows nothing.
#[derive(Debug, Clone)]
pub struct GranteeIndex {
    dir: PathBuf,
}

impl GranteeIndex {
    pub fn new(state_dir: &Path) -> GranteeIndex {
        GranteeIndex {
            dir: state_dir.join("shared-folders"),
        }
    }

    /// The file of a grantee (`user@domain`, or `@domain` for everyone
    /// there); `None` for a key no file may be named after.
    fn file(&self, key: &str) -> Option<PathBuf> {
        let name = key.strip_prefix('@').unwrap_or(key);
        checked_name(name)?;
        // Each file has its lock file beside it (`NAME.lock`): no grantee
        // may be named after one.
        if name.to_ascii_lowercase().ends_with(".lock") {
            return None;
        }
        Some(self.dir.join(key.to_lowercase()))
    }

    /// The `(owner, folder disk name)` pairs shared with `key`.
    pub fn entries(&self, key: &str) -> Vec<(String, String)> {
        let Some(path) = self.file(key) else {
            return Vec::new();
        };
        let text = match std::fs::read_to_string(&path) {
            Ok(t) => t,
            Err(e) => {
                if e.kind() != io::ErrorKind::NotFound {
                    tracing::warn!("{}: {e}", path.display());
                }
                return Vec::new();
            }
        };
        text.lines()
            .filter_map(|l| l.split_once(' '))
            .map(|(o, f)| (o.to_string(), f.to_string()))
            .collect()
    }

    /// Records (`on`) or forgets that `owner`'s folder is shared with `key`.
    pub fn set(&self, key: &str, owner: &str, folder: &str, on: bool) -> io::Result<()> {
        let Some(path) = self.file(key) else {
            return Ok(());
        };
        // Forgetting for a grantee with no file changes nothing: DELETEACL
        // of any name must not make files (it takes no user check, so a
        // deleted user's grants can still go).
        if !on && !path.exists() {
            return Ok(());
        }
        std::fs::create_dir_all(&self.dir)?;
        let line = format!("{} {folder}", owner.to_lowercase());
        crate::store::fsutil::edit_locked::<io::Error>(&path, |old| {
            let mut lines: Vec<&str> = old.lines().filter(|l| *l != line).collect();
            if on {
                lines.push(&line);
            }
            let mut text = lines.join("\n");
            if !text.is_empty() {
                text.push('\n');
            }
            Ok(text)
        })
    }
}

/// One reader's \Seen of a folder another user owns (or a public one):
/// the file `postroom-shared-seen/OWNER/FOLDER` in the reader's tree,
/// holding the folder's UIDVALIDITY and the seen UIDs as a sequence set
/// (`1234 1:40,42`). Another UIDVALIDITY means none is seen.
#[derive(Debug, Clone)]
pub struct PrivateSeen {
    path: PathBuf,
    validity: u32,
}

impl PrivateSeen {
    /// `owner` is the owner's address (or `@DOMAIN` for a public folder),
    /// `folder` the folder's disk name; both reach a path only after the
    /// same check as a grantee's name.
    pub fn new(
        reader_root: &Path,
        owner: &str,
        folder: &str,
        validity: u32,
    ) -> Option<PrivateSeen> {
        checked_name(owner.strip_prefix('@').unwrap_or(owner))?;
        checked_name(folder)?;
        Some(PrivateSeen {
            path: reader_root
                .join(PRIVATE_SEEN_DIR)
                .join(owner.to_lowercase())
                .join(folder),
            validity,
        })
    }

    /// The seen UIDs, ascending.
    pub fn load(&self) -> Vec<u32> {
        match std::fs::read_to_string(&self.path) {
            Ok(text) => parse_seen(&text, self.validity),
            Err(e) => {
                if e.kind() != io::ErrorKind::NotFound {
                    tracing::warn!("{}: {e}", self.path.display());
                }
                Vec::new()
            }
        }
    }

    /// Marks `uids` seen (`on`) or not, under the file's lock; `keep`
    /// says which UIDs still exist (the rest are dropped on the way).
    pub fn set(&self, uids: &[u32], on: bool, keep: &dyn Fn(u32) -> bool) -> io::Result<()> {
        let (seen, unseen) = if on { (uids, &[][..]) } else { (&[][..], uids) };
        self.change(seen, unseen, keep).map(drop)
    }

    /// Marks `seen` seen and `unseen` not in one rewrite of the file,
    /// under its lock (a STORE on many messages is one edit, not one
    /// each); `keep` as for [`PrivateSeen::set`]. Returns the seen UIDs
    /// as written, ascending, so the caller need not read them back.
    pub fn change(
        &self,
        seen: &[u32],
        unseen: &[u32],
        keep: &dyn Fn(u32) -> bool,
    ) -> io::Result<Vec<u32>> {
        if let Some(parent) = self.path.parent() {
            std::fs::create_dir_all(parent)?;
        }
        let validity = self.validity;
        let mut written = Vec::new();
        crate::store::fsutil::edit_locked::<io::Error>(&self.path, |old| {
            let mut now = parse_seen(&old, validity);
            now.extend_from_slice(seen);
            now.sort_unstable();
            now.dedup();
            // Both sorted: a binary search each, not a scan per UID.
            let mut gone = unseen.to_vec();
            gone.sort_unstable();
            now.retain(|&u| keep(u) && gone.binary_search(&u).is_err());
            let text = render_seen(validity, &now);
            written = now;
            Ok(text)
        })?;
        Ok(written)
    }
}

/// `VALIDITY SET`: the UIDs, or none for another UIDVALIDITY.
fn parse_seen(text: &str, validity: u32) -> Vec<u32> {
    let mut words = text.split_whitespace();
    if words.next().and_then(|v| v.parse::<u32>().ok()) != Some(validity) {
        return Vec::new();
    }
    let mut out = Vec::new();
    for range in words.next().unwrap_or("").split(',') {
        let (a, b) = range.split_once(':').unwrap_or((range, range));
        if let (Ok(a), Ok(b)) = (a.parse::<u32>(), b.parse::<u32>()) {
            // A hand-made file could name 4 billion UIDs: only ranges a
            // folder can have are taken whole.
            if b >= a && b - a < 10_000_000 {
                out.extend(a..=b);
            }
        }
    }
    out.sort_unstable();
    out.dedup();
    out
}

fn render_seen(validity: u32, seen: &[u32]) -> String {
    format!(
        "{validity} {}\n",
        crate::proto::imap::command::SequenceSet::of_sorted(seen)
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn rights_letters_and_obsolete_ones() {
        let r = Rights::parse("lrs").unwrap();
        assert!(r.has(Rights::LOOKUP.with(Rights::READ).with(Rights::SEEN)));
        assert!(!r.any(Rights::WRITE));
        assert_eq!(Rights::parse("srl").unwrap().to_string(), "lrs");
        assert_eq!(Rights::parse("c").unwrap().to_string(), "kx");
        assert_eq!(Rights::parse("d").unwrap().to_string(), "xte");
        assert_eq!(Rights::ALL.to_string(), LETTERS);
        assert_eq!(Rights::ALL.imap_letters(), "lrswipkxteacd");
        assert_eq!(Rights::parse("lz"), Err(AclError::UnknownRight('z')));
    }

    #[test]
    fn a_dovecot_file_reads_and_writes_back() {
        let text = "owner lrswipkxtea\nuser=Bob@Example.test lrs\n\n# note\n-user=eve@example.test w\nanyone l\ngroup=staff lr\n";
        let acl = Acl::parse(text).unwrap();
        assert_eq!(acl.grants.len(), 5);
        assert_eq!(
            acl.render(),
            "owner lrswipkxtea\nuser=bob@example.test lrs\n-user=eve@example.test w\nanyone l\ngroup=staff lr\n"
        );
        assert_eq!(acl.rights_of("bob@example.test", false).to_string(), "lrs");
        assert_eq!(acl.rights_of("eve@example.test", false).to_string(), "l");
        assert_eq!(acl.rights_of("ann@example.test", true), Rights::ALL);
        assert!(Acl::parse("user=bob r junk\n").is_err());
        assert!(Acl::parse("user=../x r\n").is_err());
        assert!(Acl::parse("bob r\n").is_err());
        assert!(Acl::parse("user=bob :read\n").is_err());
    }

    #[test]
    fn negative_rights_win() {
        let acl = Acl::parse("authenticated lrsw\n-user=eve@d sw\n").unwrap();
        assert_eq!(acl.rights_of("eve@d", false).to_string(), "lr");
        assert_eq!(acl.rights_of("bob@d", false).to_string(), "lrsw");
    }

    #[test]
    fn setacl_changes_and_deleteacl_removes() {
        let mut acl = Acl::default();
        let bob = Identifier::parse_imap("bob", "d").unwrap();
        assert_eq!(bob, Identifier::User("bob@d".into()));
        acl.set(false, &bob, Change::Replace, Rights::parse("lr").unwrap());
        acl.set(false, &bob, Change::Add, Rights::parse("s").unwrap());
        assert_eq!(acl.render(), "user=bob@d lrs\n");
        acl.set(false, &bob, Change::Remove, Rights::parse("lrs").unwrap());
        assert!(acl.grants.is_empty());
        acl.set(true, &bob, Change::Replace, Rights::WRITE);
        assert!(!acl.delete(false, &bob));
        assert!(acl.delete(true, &bob));
        assert!(Identifier::parse_imap("a/b", "d").is_err());
        assert!(Identifier::parse_imap("..", "d").is_err());
        assert_eq!(
            Identifier::parse_imap("$staff", "d").unwrap().imap(),
            "$staff"
        );
    }

    #[test]
    fn seen_file_reads_its_own_validity_only() {
        assert_eq!(parse_seen("7 1:3,9\n", 7), vec![1, 2, 3, 9]);
        assert!(parse_seen("7 1:3\n", 8).is_empty());
        assert!(parse_seen("7 1:4000000000\n", 7).is_empty());
        assert_eq!(render_seen(7, &[1, 2, 3, 9]), "7 1:3,9\n");
    }

    #[test]
    fn grantee_index_and_private_seen_keep_to_their_dirs() {
        let dir = tempfile::tempdir().unwrap();
        let index = GranteeIndex::new(dir.path());
        index.set("bob@d", "ann@d", "Projects", true).unwrap();
        index.set("bob@d", "ann@d", "Other", true).unwrap();
        index.set("bob@d", "ann@d", "Other", false).unwrap();
        assert_eq!(
            index.entries("bob@d"),
            vec![("ann@d".to_string(), "Projects".to_string())]
        );
        // A key no file may be named after is ignored.
        index.set("../x", "ann@d", "P", true).unwrap();
        assert!(index.entries("../x").is_empty());
        assert!(!dir.path().join("x").exists());
        // Forgetting makes no file, and no grantee is named like a lock.
        index.set("carol@d", "ann@d", "P", false).unwrap();
        index.set("bob@d.LOCK", "ann@d", "P", true).unwrap();
        let names: Vec<_> = std::fs::read_dir(dir.path().join("shared-folders"))
            .unwrap()
            .map(|e| e.unwrap().file_name().into_string().unwrap())
            .filter(|n| !n.ends_with(".lock"))
            .collect();
        assert_eq!(names, vec!["bob@d".to_string()]);
        assert!(PrivateSeen::new(dir.path(), "ann@d", "..", 1).is_none());
        let seen = PrivateSeen::new(dir.path(), "ann@d", "Projects", 5).unwrap();
        seen.set(&[3, 1, 2], true, &|_| true).unwrap();
        seen.set(&[2], false, &|u| u != 3).unwrap();
        assert_eq!(seen.load(), vec![1]);
    }

    fn identifier() -> impl Strategy<Value = Identifier> {
        prop_oneof![
            Just(Identifier::Owner),
            Just(Identifier::Authenticated),
            Just(Identifier::Anyone),
            "[a-z0-9]{1,8}@[a-z]{1,5}\\.test".prop_map(Identifier::User),
            "[a-z]{1,8}".prop_map(Identifier::Group),
        ]
    }

    proptest! {
        #[test]
        fn render_then_parse_is_the_same_acl(
            grants in proptest::collection::vec((any::<bool>(), identifier(), 1u16..2048), 0..12)
        ) {
            let mut acl = Acl::default();
            for (negative, id, bits) in grants {
                acl.set(negative, &id, Change::Add, Rights(bits));
            }
            prop_assert_eq!(Acl::parse(&acl.render()).unwrap(), acl);
        }

        #[test]
        fn any_text_parses_or_fails_without_panic(text in "\\PC{0,200}") {
            let _ = Acl::parse(&text);
            let _ = Rights::parse(&text);
            let _ = Identifier::parse_imap(&text, "d");
            let _ = parse_seen(&text, 1);
        }
    }
}
