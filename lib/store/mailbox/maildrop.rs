//! A POP3 session's view of one maildir: the snapshot taken at login.
//!
//! RFC 1939 numbers messages 1..n for the whole session, so the list is
//! read once, at login, and never re-read: deliveries during the session
//! show up in the next one. No lock is taken (postroom-mailbox(5), and Dovecot's
//! `pop3_lock_session=no`): an IMAP client may move a message to cur/,
//! change its flags or expunge it while we hold its number. We keep each
//! message's last known name and find it again by base name when it has
//! moved; one that is gone answers RETR with -ERR and is skipped at QUIT.
//!
//! Sizes are what RETR sends (`maildir::pop3_size`): the `,W=` of the name
//! when present (every message postroom delivers has one), else computed
//! from the file once and kept in `postroom-pop3-sizes` beside cur/ and
//! new/, a cache that may be deleted at any time. The cache is not renamed
//! into the message names because that would change the base names, and
//! with them the UIDLs.
//!
//! It lives beside IMAP's [`Folder`](super::Folder) because both read the
//! same directories the same way: without a lock, never through a symlink
//! (`maildir::NoFollowDir`), a message known by its base name whatever
//! flags another client renames it to (`maildir::split_name`), its size
//! taken from `,W=`. What differs is what a POP3 session may do: it never
//! moves mail to cur/ at login, gives no UIDs and keeps no uidlist, so a
//! POP3-only mailbox stays a plain maildir. pop3-serve's session drives
//! it; the protocol is `proto::pop3`.
//!
//! Everything here blocks on the filesystem; the session runs it on
//! tokio's blocking pool.

use std::collections::HashMap;
use std::fs::File;
use std::io;
use std::path::{Path, PathBuf};

use crate::proto::pop3::MessageNumber;
use crate::store::maildir::{Maildir, MaildirError, MessageFile, Removed, Sub, pop3_size};

/// The size cache's file name, in the maildir's root.
const SIZE_CACHE: &str = "postroom-pop3-sizes";

/// One message of the snapshot.
#[derive(Debug)]
pub struct Entry {
    /// Its name when last seen.
    pub file: MessageFile,
    /// Octets RETR sends, as LIST and STAT report them.
    pub size: u64,
    /// Marked by DELE; removed at QUIT.
    pub deleted: bool,
}

/// Why a message number names nothing a command can use.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Missing {
    /// Past the end of the list.
    NoSuchMessage,
    /// Marked by DELE in this session (RFC 1939: "may not be referenced").
    Deleted,
}

impl std::fmt::Display for Missing {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Missing::NoSuchMessage => f.write_str("no such message"),
            Missing::Deleted => f.write_str("message is deleted"),
        }
    }
}

/// One session's numbered list of a maildir's messages (RFC 1939
/// "maildrop"), and the maildir it came from.
#[derive(Debug)]
pub struct Maildrop {
    maildir: Maildir,
    messages: Vec<Entry>,
}

impl Maildrop {
    /// Takes the snapshot of the maildir at `path` (a mailbox never
    /// delivered to is empty).
    pub fn open(path: PathBuf) -> Result<Maildrop, MaildirError> {
        let maildir = Maildir::new(path);
        let files = maildir.messages()?;
        let mut cache: Option<SizeCache> = None;
        let mut messages = Vec::with_capacity(files.len());
        for file in files {
            let size = match file.wire_size() {
                Some(size) => size,
                None => {
                    let cache = cache.get_or_insert_with(|| SizeCache::load(maildir.path()));
                    match cache.size(&maildir, &file) {
                        Some(size) => size,
                        // Gone between readdir and open: not in the list.
                        None => continue,
                    }
                }
            };
            messages.push(Entry {
                file,
                size,
                deleted: false,
            });
        }
        if let Some(cache) = cache {
            cache.save(maildir.path(), &messages);
        }
        Ok(Maildrop { maildir, messages })
    }

    /// The message a number names, unless past the end or deleted.
    pub fn get(&self, n: MessageNumber) -> Result<&Entry, Missing> {
        match self.messages.get(n.index()) {
            None => Err(Missing::NoSuchMessage),
            Some(entry) if entry.deleted => Err(Missing::Deleted),
            Some(entry) => Ok(entry),
        }
    }

    /// Every message not deleted, with its number.
    pub fn listed(&self) -> impl Iterator<Item = (usize, &Entry)> {
        self.messages
            .iter()
            .enumerate()
            .filter(|(_, e)| !e.deleted)
            .map(|(i, e)| (i + 1, e))
    }

    /// (messages, octets) not deleted: STAT's answer.
    pub fn stat(&self) -> (usize, u64) {
        self.listed()
            .fold((0, 0), |(n, octets), (_, e)| (n + 1, octets + e.size))
    }

    /// DELE: marks a message for removal at QUIT.
    pub fn delete(&mut self, n: MessageNumber) -> Result<(), Missing> {
        self.get(n)?;
        if let Some(entry) = self.messages.get_mut(n.index()) {
            entry.deleted = true;
        }
        Ok(())
    }

    /// RSET: unmarks every message.
    pub fn undelete_all(&mut self) {
        for entry in &mut self.messages {
            entry.deleted = false;
        }
    }

    pub fn deleted_count(&self) -> usize {
        self.messages.iter().filter(|e| e.deleted).count()
    }

    /// Opens a message for RETR or TOP, following it if another client
    /// moved or re-flagged it; Ok(None) if it has been expunged.
    pub fn open_message(&mut self, n: MessageNumber) -> Result<Option<File>, MaildirError> {
        let Some(entry) = self.messages.get_mut(n.index()) else {
            return Ok(None);
        };
        let maildir = &self.maildir;
        // Never through a symlink: a message file linked to any file is
        // not served (it is not even listed; this catches one made since).
        let opened = maildir.follow(&entry.file, |file| maildir.open_message(file))?;
        Ok(opened.map(|(file, name)| {
            entry.file = name;
            file
        }))
    }

    /// After a complete RETR: the message gets the Seen flag (moved into
    /// cur/ with `S` merged into whatever flags it has now).
    pub fn mark_seen(&mut self, n: MessageNumber) {
        let Some(entry) = self.messages.get_mut(n.index()) else {
            return;
        };
        if entry.file.has_flag('S') && entry.file.sub == Sub::Cur {
            return;
        }
        match self.maildir.add_flags(&entry.file, "S") {
            Ok(Some(file)) => entry.file = file,
            Ok(None) => {}
            // The message was sent; a flag that could not be set is
            // logged, not worth failing the RETR for.
            Err(e) => tracing::warn!("cannot set the Seen flag: {e}"),
        }
    }

    /// The UPDATE state (RFC 1939 §6): removes the deleted messages that
    /// are still there.
    pub fn update(&self) -> Removed {
        let doomed: Vec<MessageFile> = self
            .messages
            .iter()
            .filter(|e| e.deleted)
            .map(|e| e.file.clone())
            .collect();
        if doomed.is_empty() {
            return Removed::default();
        }
        self.maildir.remove(&doomed)
    }
}

/// Sizes of messages whose names carry no `,W=`: lines of `SIZE BASE`.
struct SizeCache {
    sizes: HashMap<String, u64>,
    changed: bool,
}

impl SizeCache {
    fn load(root: &Path) -> SizeCache {
        let text = std::fs::read_to_string(root.join(SIZE_CACHE)).unwrap_or_default();
        let sizes = text
            .lines()
            .filter_map(|line| {
                let (size, base) = line.split_once(' ')?;
                Some((base.to_string(), size.parse().ok()?))
            })
            .collect();
        SizeCache {
            sizes,
            changed: false,
        }
    }

    /// The size from the cache, else read from the file (None if gone).
    fn size(&mut self, maildir: &Maildir, file: &MessageFile) -> Option<u64> {
        if let Some(&size) = self.sizes.get(file.base()) {
            return Some(size);
        }
        let path = maildir.file_path(file);
        let size = match maildir
            .open_message(file)
            .and_then(|mut f| pop3_size(&mut f))
        {
            Ok(size) => size,
            Err(e) => {
                if e.kind() != io::ErrorKind::NotFound {
                    tracing::warn!("{}: {e}; leaving it out of the list", path.display());
                }
                return None;
            }
        };
        self.sizes.insert(file.base().to_string(), size);
        self.changed = true;
        Some(size)
    }

    /// Writes the cache back when it learnt something, keeping only the
    /// messages still listed. Two sessions writing at once both write
    /// true sizes (a rename is atomic); losing one only costs a re-read.
    fn save(&self, root: &Path, listed: &[Entry]) {
        if !self.changed {
            return;
        }
        let mut text = String::new();
        for entry in listed {
            let base = entry.file.base();
            if entry.file.wire_size().is_none() && !base.contains('\n') {
                text.push_str(&format!("{} {base}\n", entry.size));
            }
        }
        let path = root.join(SIZE_CACHE);
        if let Err(e) = crate::store::fsutil::write_atomic(&path, text.as_bytes()) {
            tracing::warn!("cannot write the size cache {}: {e}", path.display());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn number(n: u32) -> MessageNumber {
        match crate::proto::pop3::Command::parse(format!("RETR {n}").as_bytes()) {
            Ok(crate::proto::pop3::Command::Retr(n)) => n,
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn sizes_without_w_are_computed_once_and_cached() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path().join("u");
        for sub in ["cur", "new", "tmp"] {
            std::fs::create_dir_all(root.join(sub)).unwrap();
        }
        std::fs::write(root.join("new/1.a.h"), b"A: b\n\nbody\n").unwrap();
        std::fs::write(root.join("cur/2.b.h:2,S"), b"A: b\r\n\r\nno end").unwrap();
        std::fs::write(root.join("new/3.c.h,S=2,W=999"), b"x\n").unwrap();
        let drop = Maildrop::open(root.clone()).unwrap();
        let sizes: Vec<u64> = drop.listed().map(|(_, e)| e.size).collect();
        assert_eq!(sizes, [14, 16, 999], "W= is trusted, the rest computed");
        let cache = std::fs::read_to_string(root.join(SIZE_CACHE)).unwrap();
        assert_eq!(cache, "14 1.a.h\n16 2.b.h\n");
        // A second session reads the cache, not the files.
        std::fs::write(root.join(SIZE_CACHE), "7 1.a.h\n16 2.b.h\n").unwrap();
        let drop = Maildrop::open(root).unwrap();
        assert_eq!(drop.get(number(1)).unwrap().size, 7);
        assert_eq!(drop.stat(), (3, 7 + 16 + 999));
    }

    #[test]
    fn dele_rset_and_update() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path().join("u");
        let md = Maildir::new(&root);
        md.create().unwrap();
        for i in 1..=3 {
            std::fs::write(root.join(format!("new/{i}.x.h,S=2,W=3")), b"x\n").unwrap();
        }
        let mut drop = Maildrop::open(root.clone()).unwrap();
        assert_eq!(drop.get(number(4)).unwrap_err(), Missing::NoSuchMessage);
        drop.delete(number(1)).unwrap();
        assert_eq!(drop.delete(number(1)), Err(Missing::Deleted));
        drop.undelete_all();
        drop.delete(number(2)).unwrap();
        drop.delete(number(3)).unwrap();
        assert_eq!(drop.stat(), (1, 3));
        // Message 3 read and flagged by IMAP meanwhile: still removed.
        std::fs::rename(
            root.join("new/3.x.h,S=2,W=3"),
            root.join("cur/3.x.h,S=2,W=3:2,RS"),
        )
        .unwrap();
        let removed = drop.update();
        assert_eq!((removed.removed, removed.gone, removed.failed), (2, 0, 0));
        let left: Vec<String> = md.messages().unwrap().into_iter().map(|f| f.name).collect();
        assert_eq!(left, ["1.x.h,S=2,W=3"]);
    }
}
