//! Mailbox state that POP3 and IMAP share (postroom-mailbox(5)), as files any process
//! can read and write: nothing lives in a server's memory that another
//! process needs.
//!
//! A user's mailbox is a Maildir++ tree: INBOX at the root, each folder a
//! `.Name` directory beside it (`postroom-mailbox(5)`). Per folder:
//!
//! | file               | holds                               | written by                          |
//! |--------------------|-------------------------------------|-------------------------------------|
//! | `new/`, `cur/`     | messages; flags in `:2,` info       | delivery (link), clients (rename)   |
//! | `dovecot-uidlist`  | UIDVALIDITY, next UID, uid → name   | the syncer, under `.lock` + rename  |
//! | `dovecot-keywords` | keyword letters `a`–`z` → names     | under the uidlist lock + rename     |
//!
//! and at the root, `subscriptions` (one modified-UTF-7 name per line) and
//! `maildirsize` (quota, maildir.rs). Modules: [`name`] (what a folder may
//! be called, modified UTF-7), [`uidlist`], [`flags`], [`folder`] (sync and
//! message operations), [`maildrop`] (POP3's snapshot of INBOX, with
//! `postroom-pop3-sizes` at the root: sizes of messages whose names carry
//! no `,W=`); IMAP IDLE waits on `crate::store::watch`.
//!
//! Beside them, two files of postroom's own, so that the two above stay
//! Dovecot's format: `postroom-modseq` ([`modseq`], CONDSTORE and QRESYNC)
//! and `postroom-cache` ([`cache`], what IMAP computed about each message);
//! and `postroom-recent` (`folder::RECENT_FILE`, which UIDs some IMAP
//! session has taken \Recent for), and `postroom-index` ([`index`], the
//! entries as the last settled sync found them, for a new process). In
//! memory, [`shared`] keeps one copy per process of what the sessions of
//! a folder know of it. A shared folder has Dovecot's `dovecot-acl`
//! ([`acl`], IMAP ACL), and each reader their own \Seen of it in their
//! tree (`postroom-shared-seen/`).

pub mod acl;
pub mod cache;
pub mod expire;
pub mod flags;
pub mod folder;
pub mod index;
pub mod maildrop;
pub mod modseq;
pub mod name;
pub mod shared;
pub mod uidlist;

use std::fs;
use std::io;
use std::path::{Path, PathBuf};

pub use flags::{Flags, Keywords};
pub use folder::{Admission, Appending, Entry, Folder, Stamp, State};
pub use name::{MailboxName, NameError};

/// Opens an append-only side file (`postroom-cache`, `postroom-modseq`)
/// for appending, under an exclusive `flock` that goes with the file;
/// `None` if a compaction replaced the file while we waited for the lock
/// (the caller then lets its next look see the new one).
pub(crate) fn open_locked_for_append(path: &Path) -> io::Result<Option<fs::File>> {
    use fs2::FileExt;
    use std::os::unix::fs::{MetadataExt, OpenOptionsExt};
    // Not through a symlink: one planted here would have us append to (or
    // create) a file anywhere the mail user may write.
    let file = fs::OpenOptions::new()
        .read(true)
        .append(true)
        .create(true)
        .custom_flags(crate::store::maildir::nofollow_flag())
        .open(path)?;
    file.lock_exclusive()?;
    if fs::metadata(path)?.ino() != file.metadata()?.ino() {
        return Ok(None);
    }
    Ok(Some(file))
}

/// Folders every user gets at first login, with their RFC 6154 use.
pub const SPECIAL_FOLDERS: [(&str, &str); 5] = [
    ("Sent", "\\Sent"),
    ("Drafts", "\\Drafts"),
    ("Trash", "\\Trash"),
    ("Junk", "\\Junk"),
    ("Archive", "\\Archive"),
];

/// The special uses a client may give a folder at CREATE (RFC 6154 §2
/// less `\All` and `\Flagged`, which name virtual folders postroom has not).
pub const SPECIAL_USES: [&str; 5] = ["\\Archive", "\\Drafts", "\\Junk", "\\Sent", "\\Trash"];

/// In a folder created with a special use: that use, on one line.
pub const SPECIAL_USE_FILE: &str = "postroom-special-use";

/// The subscriptions file at the mailbox root.
pub const SUBSCRIPTIONS: &str = "subscriptions";

/// What went wrong; the text is fit for a `NO` reply or a log line.
#[derive(Debug, thiserror::Error)]
pub enum MailboxError {
    #[error("{0}")]
    BadName(#[from] NameError),
    #[error("no such mailbox")]
    NoSuchMailbox,
    #[error("mailbox already exists")]
    AlreadyExists,
    #[error("INBOX cannot be deleted")]
    InboxDelete,
    #[error("the message is gone (expunged by another session)")]
    NoSuchMessage,
    #[error(transparent)]
    Maildir(#[from] crate::store::maildir::MaildirError),
    #[error("{}: {error}", path.display())]
    Io { path: PathBuf, error: io::Error },
}

impl MailboxError {
    /// True for quota refusals (IMAP answers `NO [OVERQUOTA]`).
    pub fn is_over_quota(&self) -> bool {
        matches!(
            self,
            MailboxError::Maildir(crate::store::maildir::MaildirError::OverQuota { .. })
        )
    }
}

/// A folder directory as [`Mailbox::scan`] found it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Scanned {
    pub name: MailboxName,
    pub inode: u64,
    pub complete: bool,
}

/// One user's Maildir++ tree.
#[derive(Debug, Clone)]
pub struct Mailbox {
    root: PathBuf,
}

impl Mailbox {
    pub fn new(root: impl Into<PathBuf>) -> Mailbox {
        Mailbox { root: root.into() }
    }

    pub fn root(&self) -> &Path {
        &self.root
    }

    fn io(path: &Path) -> impl FnOnce(io::Error) -> MailboxError + '_ {
        move |error| MailboxError::Io {
            path: path.to_path_buf(),
            error,
        }
    }

    fn dir_of(&self, name: &MailboxName) -> PathBuf {
        if name.is_inbox() {
            self.root.clone()
        } else {
            self.root.join(format!(".{}", name.disk_name()))
        }
    }

    /// A folder by name (it may not exist yet).
    pub fn folder(&self, name: &MailboxName) -> Folder {
        let maildir = crate::store::maildir::Maildir::new(&self.root);
        let maildir = if name.is_inbox() {
            maildir
        } else {
            // disk_name() is printable ASCII without '/' or empty levels,
            // which maildir.rs's own check accepts.
            maildir.folder(&name.disk_name()).unwrap_or(maildir)
        };
        Folder::new(
            self.dir_of(name),
            self.root.clone(),
            name.as_str() == "Trash",
            maildir,
        )
    }

    /// Creates INBOX and the special-use folders if missing (first login).
    /// A special folder that a symlink stands in for is left out (logged):
    /// the user can still log in and reach the rest.
    pub fn ensure_defaults(&self) -> Result<(), MailboxError> {
        crate::store::maildir::Maildir::new(&self.root).create()?;
        let mut subscribe = Vec::new();
        for (name, _) in SPECIAL_FOLDERS {
            let name = MailboxName::new(name)?;
            if !self.folder(&name).exists() {
                match self.create(&name) {
                    Ok(()) => subscribe.push(name),
                    Err(MailboxError::Maildir(crate::store::maildir::MaildirError::Symlink(e))) => {
                        tracing::warn!("{e}; folder {name} left out");
                    }
                    Err(e) => return Err(e),
                }
            }
        }
        if !subscribe.is_empty() {
            self.subscribe(&subscribe, true)?;
        }
        Ok(())
    }

    /// The RFC 6154 attribute of a folder, if it is a special one: one of
    /// the folders every user gets, or one a client created with a USE
    /// (its [`SPECIAL_USE_FILE`]).
    pub fn special_use(&self, name: &MailboxName) -> Option<&'static str> {
        if let Some((_, u)) = SPECIAL_FOLDERS.iter().find(|(n, _)| *n == name.as_str()) {
            return Some(u);
        }
        if name.is_inbox() {
            return None;
        }
        let path = self.dir_of(name).join(SPECIAL_USE_FILE);
        let text = crate::store::maildir::read_side_file(&path).ok()??;
        let text = String::from_utf8_lossy(&text);
        SPECIAL_USES
            .iter()
            .find(|u| u.eq_ignore_ascii_case(text.trim()))
            .copied()
    }

    /// Creates a folder with a special use (CREATE-SPECIAL-USE, RFC 6154
    /// §3): one of [`SPECIAL_USES`], kept in the folder's
    /// [`SPECIAL_USE_FILE`]. `None` in the result: the use is not one.
    pub fn create_special(
        &self,
        name: &MailboxName,
        special: &str,
    ) -> Result<Option<()>, MailboxError> {
        let Some(special) = SPECIAL_USES
            .iter()
            .find(|u| u.eq_ignore_ascii_case(special))
        else {
            return Ok(None);
        };
        self.create(name)?;
        let path = self.dir_of(name).join(SPECIAL_USE_FILE);
        crate::store::fsutil::write_atomic(&path, format!("{special}\n").as_bytes())
            .map_err(Self::io(&path))?;
        Ok(Some(()))
    }

    pub fn create(&self, name: &MailboxName) -> Result<(), MailboxError> {
        let folder = self.folder(name);
        if folder.exists() {
            return Err(MailboxError::AlreadyExists);
        }
        let dir = self.dir_of(name);
        crate::store::maildir::Maildir::new(&self.root)
            .folder(&name.disk_name())?
            .create()?;
        // The list first, so the folder's UIDVALIDITY is fixed from birth.
        let lock = uidlist::UidLock::acquire(&dir).map_err(Self::io(&dir))?;
        lock.commit(&uidlist::UidList::fresh_in(&self.root))
            .map_err(Self::io(&dir))?;
        Ok(())
    }

    /// Deletes a folder and its messages (not its subfolders: they stay,
    /// and the name lives on as their parent in LIST), not its
    /// subscription.
    pub fn delete(&self, name: &MailboxName) -> Result<(), MailboxError> {
        if name.is_inbox() {
            return Err(MailboxError::InboxDelete);
        }
        let dir = self.dir_of(name);
        if !self.folder(name).exists() {
            return Err(MailboxError::NoSuchMailbox);
        }
        // Out of sight in one rename, then removed at leisure: a reader
        // never sees a half-deleted folder.
        let trash = self
            .root
            .join("tmp")
            .join(format!("deleted.{}", crate::store::fsutil::unique_suffix()));
        fs::create_dir_all(self.root.join("tmp")).map_err(Self::io(&dir))?;
        fs::rename(&dir, &trash).map_err(Self::io(&dir))?;
        let _ = fs::remove_dir_all(&trash);
        // The subscription stays (RFC 3501 §6.3.4, RFC 5258 §3: LIST
        // (SUBSCRIBED) shows it as \NonExistent), as in Dovecot.
        Ok(())
    }

    /// Renames a folder and its subfolders. Renaming INBOX moves its
    /// messages into the new folder and leaves INBOX empty (RFC 3501 §6.3.5).
    pub fn rename(&self, from: &MailboxName, to: &MailboxName) -> Result<(), MailboxError> {
        if self.folder(to).exists() {
            return Err(MailboxError::AlreadyExists);
        }
        if from.is_inbox() {
            let inbox = self.folder(from);
            let state = inbox.sync()?;
            self.create(to)?;
            inbox.transfer(&state.entries, &self.folder(to), true, false)?;
            return Ok(());
        }
        if !self.folder(from).exists() {
            return Err(MailboxError::NoSuchMailbox);
        }
        let prefix = format!("{}.", from.as_str());
        let mut moves = vec![(self.dir_of(from), self.dir_of(to))];
        for child in self.list()? {
            if let Some(rest) = child.as_str().strip_prefix(&prefix) {
                let target = MailboxName::new(&format!("{to}.{rest}"))?;
                moves.push((self.dir_of(&child), self.dir_of(&target)));
            }
        }
        for (a, b) in moves {
            fs::rename(&a, &b).map_err(Self::io(&a))?;
        }
        Ok(())
    }

    /// Every folder that exists, INBOX first, then by name. A `.Name`
    /// that is a symlink (or whose `cur/`, `new/` or `tmp/` is one) is not
    /// a folder and is not listed.
    pub fn list(&self) -> Result<Vec<MailboxName>, MailboxError> {
        Ok(self
            .scan()?
            .into_iter()
            .filter(|f| f.complete)
            .map(|f| f.name)
            .collect())
    }

    /// Every `.Name` directory of the mailbox (not a symlink), INBOX first
    /// (its inode 0), then by name, with its inode, which a rename keeps:
    /// what NOTIFY compares to tell a folder renamed from one deleted and
    /// another made. `complete`: a folder [`Mailbox::list`] gives; a
    /// directory being made is not one yet.
    pub fn scan(&self) -> Result<Vec<Scanned>, MailboxError> {
        use std::os::unix::fs::DirEntryExt;
        let mut names = vec![Scanned {
            name: MailboxName::new("INBOX")?,
            inode: 0,
            complete: true,
        }];
        let entries = match fs::read_dir(&self.root) {
            Ok(entries) => entries,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(names),
            Err(e) => return Err(Self::io(&self.root)(e)),
        };
        let mut others = Vec::new();
        for entry in entries.flatten() {
            let file = entry.file_name();
            let Some(disk) = file.to_str().and_then(|f| f.strip_prefix('.')) else {
                continue;
            };
            // file_type() does not follow a symlink.
            if !entry.file_type().is_ok_and(|t| t.is_dir()) {
                continue;
            }
            match MailboxName::from_disk(disk) {
                Ok(name) if !name.is_inbox() => others.push(Scanned {
                    complete: self.folder(&name).exists(),
                    name,
                    inode: entry.ino(),
                }),
                _ => {}
            }
        }
        others.sort_by(|a, b| a.name.cmp(&b.name));
        names.extend(others);
        Ok(names)
    }

    /// The subscribed names (they may not exist).
    pub fn subscriptions(&self) -> Result<Vec<MailboxName>, MailboxError> {
        let path = self.root.join(SUBSCRIPTIONS);
        let text = crate::store::fsutil::FileError::read(&path).map_err(|e| MailboxError::Io {
            path: path.clone(),
            error: io::Error::other(e.to_string()),
        })?;
        Ok(text
            .lines()
            .filter_map(|l| MailboxName::from_disk(l.trim()).ok())
            .collect())
    }

    /// Adds (`on`) or removes names from the subscriptions, under its lock.
    pub fn subscribe(&self, names: &[MailboxName], on: bool) -> Result<(), MailboxError> {
        let path = self.root.join(SUBSCRIPTIONS);
        crate::store::fsutil::edit_locked::<io::Error>(&path, |old| {
            let mut lines: Vec<String> = old
                .lines()
                .map(str::to_string)
                .filter(|l| !l.is_empty())
                .collect();
            for name in names {
                let disk = name.disk_name();
                lines.retain(|l| *l != disk);
                if on {
                    lines.push(disk);
                }
            }
            let mut text = lines.join("\n");
            if !text.is_empty() {
                text.push('\n');
            }
            Ok(text)
        })
        .map_err(Self::io(&path))
    }
}

#[cfg(test)]
mod tests;
