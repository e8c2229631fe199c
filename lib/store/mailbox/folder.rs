//! One folder's messages as every session sees them: the sync that gives
//! new mail its UIDs, and the few writes a mail client makes (flags by
//! rename, expunge by unlink, append, copy, move).
//!
//! The sync is Dovecot's (its maildir-sync.c): stat nothing, read the list without a
//! lock, readdir `new/` and `cur/`; if `new/` holds mail or `cur/` a name the
//! list lacks, take the list's lock, read everything again, move `new/` to
//! `cur/`, give the newcomers the next UIDs in name order (names begin with
//! the delivery time), and replace the list. The lock is needed because a
//! readdir can miss a file another process renames during the scan; a name
//! the list has but the scan missed is looked for once more before it is
//! taken for expunged.
//!
//! Every message operation works relative to the folder's `cur/` and `new/`
//! as opened without following symlinks (`maildir::NoFollowDir`): a folder
//! whose directory, `cur/`, `new/` or `tmp/` is a symlink does not exist,
//! and a message file that is a symlink is not a message (it gets no UID
//! and is never opened).

use std::collections::{HashMap, HashSet};
use std::fs;
use std::io;
use std::path::{Path, PathBuf};
use std::time::SystemTime;

use super::MailboxError;
use super::flags::{Flags, Keywords};
use super::uidlist::{self, UidList, UidLock};
use crate::store::maildir::{NoFollowDir, split_name, stated_wire_size};
use rustix::fs::OFlags;

/// One message as a session knows it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Entry {
    pub uid: u32,
    /// The maildir base name (the file name up to `:2,`).
    pub base: Box<str>,
    /// The info letters after `:2,`.
    pub info: Box<str>,
}

impl Entry {
    pub fn flags(&self) -> Flags {
        Flags::from_info(&self.info)
    }

    pub fn file_name(&self) -> String {
        format!("{}:2,{}", self.base, self.info)
    }

    /// The size with CRLF line ends (`,W=` in the name), if the name says
    /// (`maildir::stated_wire_size`).
    pub fn wire_size(&self) -> Option<u64> {
        stated_wire_size(&self.base)
    }
}

/// A flag change of this many messages or more reads `cur/` once rather
/// than look for each file by its name.
const LIST_CUR_FROM: usize = 16;

/// A list this long (about 10,000 messages) is read on a thread of its
/// own while `cur/` is read.
const PARALLEL_SYNC_BYTES: u64 = 640 * 1024;

/// In each folder: the first UID no IMAP session has taken \Recent for.
pub const RECENT_FILE: &str = "postroom-recent";

/// One message for [`Folder::append`].
#[derive(Debug, Clone, Copy)]
pub struct Appending<'a> {
    /// LF or CRLF text (stored with LF), or with `as_given` the bytes to
    /// keep exactly (`maildir::Message::as_given`).
    pub message: &'a [u8],
    pub as_given: bool,
    pub flags: Flags,
    pub internal_date: Option<SystemTime>,
}

/// A folder's state after a sync.
#[derive(Debug, Clone, Default)]
pub struct State {
    pub validity: u32,
    pub next_uid: u32,
    /// UIDs from here on are \Recent and not yet claimed by a session.
    pub first_recent: u32,
    /// Ascending UIDs.
    pub entries: Vec<Entry>,
    pub keywords: Keywords,
}

/// Modification times that change whenever the folder does: a session
/// whose stamp is unchanged has nothing to sync ([`Stamp::unchanged_since`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Stamp {
    times: [Option<SystemTime>; 4],
    /// The inode numbers beside the times: a folder restored or copied
    /// into place may carry the very same times on other files.
    inodes: [u64; 4],
    /// A time was as recent as [`STAMP_DIRTY`] when the stamp was taken:
    /// the kernel's file times tick coarsely (a jiffy, or a second on some
    /// filesystems), so a change made just after may leave them as they
    /// are. Such a stamp proves nothing (Dovecot's "dirty" maildir rule).
    dirty: bool,
    /// Taken on a shared filesystem, where this host's view of the times
    /// may lag another host's change (FUSE and NFS attribute caches): such
    /// a stamp proves nothing either, so every look syncs (postroom-tree(5),
    /// SEVERAL HOSTS).
    shared: bool,
}

/// How old a file time must be for a stamp to trust it.
const STAMP_DIRTY: std::time::Duration = std::time::Duration::from_secs(1);

impl Stamp {
    /// Nothing changed between `older` and this stamp. A default (never
    /// taken) stamp matches nothing.
    pub fn unchanged_since(&self, older: &Stamp) -> bool {
        older.trustworthy() && self.times == older.times && self.inodes == older.inodes
    }

    /// Whether this stamp can prove a later one unchanged: taken on a
    /// local filesystem, with every time older than [`STAMP_DIRTY`].
    pub fn trustworthy(&self) -> bool {
        !self.dirty && !self.shared && self.times.iter().any(Option::is_some)
    }

    /// The times and inodes, as the folder index keeps them (`index.rs`):
    /// per file, inode, seconds and nanoseconds since the epoch
    /// (nanoseconds `u32::MAX`: the file is missing).
    pub(super) fn to_bytes(self) -> [u8; STAMP_BYTES] {
        let mut out = [0u8; STAMP_BYTES];
        for (i, chunk) in out.chunks_exact_mut(20).enumerate() {
            let (secs, nanos) =
                match self.times[i].and_then(|t| t.duration_since(SystemTime::UNIX_EPOCH).ok()) {
                    Some(d) => (d.as_secs(), d.subsec_nanos()),
                    None => (0, u32::MAX),
                };
            chunk[..8].copy_from_slice(&self.inodes[i].to_le_bytes());
            chunk[8..16].copy_from_slice(&secs.to_le_bytes());
            chunk[16..].copy_from_slice(&nanos.to_le_bytes());
        }
        out
    }

    /// The stamp [`Stamp::to_bytes`] wrote, as a trustworthy one (only a
    /// trustworthy stamp is ever written); `None` for bytes it never
    /// writes.
    pub(super) fn from_bytes(bytes: &[u8; STAMP_BYTES]) -> Option<Stamp> {
        let mut stamp = Stamp::default();
        for (i, chunk) in bytes.chunks_exact(20).enumerate() {
            let (inode, rest) = chunk.split_at(8);
            let (secs, nanos) = rest.split_at(8);
            stamp.inodes[i] = u64::from_le_bytes(inode.try_into().ok()?);
            let secs = u64::from_le_bytes(secs.try_into().ok()?);
            let nanos = u32::from_le_bytes(nanos.try_into().ok()?);
            stamp.times[i] = match nanos {
                u32::MAX if secs == 0 => None,
                0..1_000_000_000 => Some(
                    SystemTime::UNIX_EPOCH.checked_add(std::time::Duration::new(secs, nanos))?,
                ),
                _ => return None,
            };
        }
        Some(stamp)
    }
}

/// The size of a [`Stamp`] in the folder index.
pub(super) const STAMP_BYTES: usize = 80;

/// A folder on disk (INBOX or a `.Name` folder).
#[derive(Debug, Clone)]
pub struct Folder {
    dir: PathBuf,
    /// Where `maildirsize` lives (the INBOX root).
    inbox: PathBuf,
    is_trash: bool,
    /// The same folder for delivery (maildir.rs's one durable write).
    maildir: crate::store::maildir::Maildir,
}

/// The folder's `cur/` and `new/` (which a foreign maildir may lack), as
/// opened once for one operation.
struct Subdirs {
    cur: NoFollowDir,
    new: Option<NoFollowDir>,
}

impl Subdirs {
    /// The names in `new/` (none when there is no `new/`).
    fn new_names(&self) -> io::Result<Vec<String>> {
        self.new.as_ref().map_or(Ok(Vec::new()), NoFollowDir::names)
    }
}

/// base → info of every message in `cur/`.
///
/// Each name's own allocation becomes its base, cut short in place: a
/// copy would leave the name's allocation freed between the infos a
/// folder's state keeps, and 100,000 such holes are memory the allocator
/// cannot give back after the first SELECT of a big folder.
fn read_cur(cur: &NoFollowDir) -> io::Result<HashMap<Box<str>, Box<str>>> {
    let names = cur.names()?;
    let mut map = HashMap::with_capacity(names.len());
    for mut name in names {
        let Some((base, info)) = split_name(&name) else {
            continue;
        };
        let (base_len, info): (usize, Box<str>) = (base.len(), info.into());
        name.truncate(base_len);
        map.insert(name.into_boxed_str(), info);
    }
    Ok(map)
}

impl Folder {
    pub(crate) fn new(
        dir: PathBuf,
        inbox: PathBuf,
        is_trash: bool,
        maildir: crate::store::maildir::Maildir,
    ) -> Folder {
        Folder {
            dir,
            inbox,
            is_trash,
            maildir,
        }
    }

    pub fn path(&self) -> &Path {
        &self.dir
    }

    /// The message file of an entry.
    pub fn path_of(&self, entry: &Entry) -> PathBuf {
        self.dir.join("cur").join(entry.file_name())
    }

    /// Whether the folder is there: its directory with `cur/` in it,
    /// neither of them a symlink, nor `new/` or `tmp/` (which may be
    /// missing until the first delivery makes them).
    pub fn exists(&self) -> bool {
        // (Both name one directory, unless the name was one maildir.rs
        // refuses, which MailboxName never lets through.)
        if self.maildir.path() != self.dir {
            return false;
        }
        let Ok(dir) = self.maildir.open_dir() else {
            return false;
        };
        dir.dir("cur").is_ok() && !dir.is_link("new") && !dir.is_link("tmp")
    }

    /// Opens `cur/` and `new/` for one operation.
    fn subdirs(&self) -> Result<Subdirs, MailboxError> {
        let dir = self.maildir.open_dir().map_err(self.io())?;
        let cur = dir.dir("cur").map_err(self.io())?;
        let new = match dir.dir("new") {
            Ok(new) => Some(new),
            Err(e) if e.kind() == io::ErrorKind::NotFound => None,
            Err(e) => return Err(self.io()(e)),
        };
        Ok(Subdirs { cur, new })
    }

    fn cur(&self) -> Result<NoFollowDir, MailboxError> {
        self.maildir
            .open_dir()
            .and_then(|dir| dir.dir("cur"))
            .map_err(self.io())
    }

    /// Opens a message for reading, never through a symlink: a message
    /// file linked to anything is not served.
    pub fn open_message(&self, entry: &Entry) -> io::Result<fs::File> {
        self.maildir
            .open_dir()?
            .dir("cur")?
            .open_file(&entry.file_name())
    }

    /// A message's internal date: its file's modification time.
    pub fn internal_date(&self, entry: &Entry) -> Option<SystemTime> {
        self.open_message(entry)
            .ok()?
            .metadata()
            .ok()?
            .modified()
            .ok()
    }

    pub fn stamp(&self) -> Stamp {
        use std::os::unix::fs::MetadataExt;
        let mut times = [None; 4];
        let mut inodes = [0; 4];
        let paths = [
            self.dir.join("new"),
            self.dir.join("cur"),
            self.dir.join(uidlist::FILE),
            self.dir.join(super::flags::KEYWORDS_FILE),
        ];
        for (i, path) in paths.iter().enumerate() {
            if let Ok(meta) = fs::metadata(path) {
                times[i] = meta.modified().ok();
                inodes[i] = meta.ino();
            }
        }
        let recent = SystemTime::now()
            .checked_sub(STAMP_DIRTY)
            .unwrap_or(SystemTime::UNIX_EPOCH);
        let dirty = times.iter().flatten().any(|&t| t > recent);
        let shared = crate::store::fsutil::is_shared_filesystem(&self.dir);
        Stamp {
            times,
            inodes,
            dirty,
            shared,
        }
    }

    fn io(&self) -> impl FnOnce(io::Error) -> MailboxError + '_ {
        move |error| match crate::store::maildir::symlink_refused(&error) {
            Some(refused) => MailboxError::Maildir(crate::store::maildir::MaildirError::Symlink(
                refused.clone(),
            )),
            None => MailboxError::Io {
                path: self.dir.clone(),
                error,
            },
        }
    }

    /// Syncs the folder (see the module doc) and returns its state.
    pub fn sync(&self) -> Result<State, MailboxError> {
        if !self.exists() {
            return Err(MailboxError::NoSuchMailbox);
        }
        let scan = || {
            self.subdirs().and_then(|dirs| {
                let new = dirs.new_names().map_err(self.io())?;
                let cur = read_cur(&dirs.cur).map_err(self.io())?;
                Ok((dirs, new, cur))
            })
        };
        // On a big folder the list and the directory are read at once,
        // each being tens of milliseconds of its own; a small one's are
        // read in turn, for less than starting a thread costs.
        let big = fs::symlink_metadata(self.dir.join(uidlist::FILE))
            .is_ok_and(|m| m.len() > PARALLEL_SYNC_BYTES);
        let (list, scan) = if big {
            std::thread::scope(|s| {
                let list = s.spawn(|| UidList::read(&self.dir));
                let scan = scan();
                let list = list
                    .join()
                    .unwrap_or_else(|_| Err(io::Error::other("uidlist reader panicked")));
                (list, scan)
            })
        } else {
            (UidList::read(&self.dir), scan())
        };
        // In a block of its own: what was read goes before the locked sync
        // reads it all again, rather than being held twice.
        {
            let list = list.map_err(self.io())?;
            let (dirs, new, cur) = scan?;
            if let Some(list) = list
                && !new.iter().any(|n| split_name(n).is_some())
                && cur.len() <= list.entries.len()
            {
                let (state, unknown) = self.present(&dirs.cur, list, cur)?;
                if unknown == 0 {
                    return Ok(state);
                }
            }
        }
        // New mail, or names the list lacks: give them UIDs.
        self.sync_locked()
    }

    /// The entries of `list` whose files are in `cur` (looking once more for
    /// any that seem gone), and how many files in `cur` the list lacks.
    fn present(
        &self,
        cur_dir: &NoFollowDir,
        list: UidList,
        mut cur: HashMap<Box<str>, Box<str>>,
    ) -> Result<(State, usize), MailboxError> {
        if list
            .entries
            .iter()
            .any(|(_, base)| !cur.contains_key(base.as_str()))
        {
            // A rename (a flag change) during the readdir can hide a file.
            for (base, info) in read_cur(cur_dir).map_err(self.io())? {
                cur.entry(base).or_insert(info);
            }
        }
        let entries = list
            .entries
            .into_iter()
            .filter_map(|(uid, base)| {
                cur.remove(base.as_str()).map(|info| Entry {
                    uid,
                    base: base.into(),
                    info,
                })
            })
            .collect();
        let state = State {
            validity: list.validity,
            next_uid: list.next_uid,
            first_recent: self.first_recent(),
            entries,
            keywords: super::flags::read_keywords(&self.dir).map_err(self.io())?,
        };
        Ok((state, cur.len()))
    }

    /// The writer's half of the sync, under the list's lock.
    fn sync_locked(&self) -> Result<State, MailboxError> {
        let lock = UidLock::acquire(&self.dir).map_err(self.io())?;
        let mut list = UidList::read(&self.dir)
            .map_err(self.io())?
            .unwrap_or_else(|| UidList::fresh_in(&self.inbox));
        let dirs = self.subdirs()?;
        if let Some(new) = &dirs.new {
            for name in new.names().map_err(self.io())? {
                let Some((base, info)) = split_name(&name) else {
                    continue;
                };
                match new.rename(&name, &dirs.cur, &format!("{base}:2,{info}")) {
                    Ok(()) => {}
                    // Another process moved it first.
                    Err(e) if e.kind() == io::ErrorKind::NotFound => {}
                    Err(e) => return Err(self.io()(e)),
                }
            }
        }
        let mut cur = read_cur(&dirs.cur).map_err(self.io())?;
        if list
            .entries
            .iter()
            .any(|(_, b)| !cur.contains_key(b.as_str()))
        {
            for (base, info) in read_cur(&dirs.cur).map_err(self.io())? {
                cur.entry(base).or_insert(info);
            }
        }
        let known: HashSet<&str> = list.entries.iter().map(|(_, b)| b.as_str()).collect();
        let mut newcomers: Vec<&str> = cur
            .keys()
            .map(|b| &**b)
            .filter(|b| !known.contains(b))
            .collect();
        newcomers.sort_unstable();
        let newcomers: Vec<String> = newcomers.into_iter().map(str::to_string).collect();
        drop(known);
        // Entries whose files are gone (expunged by POP3 or by hand) leave
        // the list; their UIDs are never given again since N only grows.
        list.entries.retain(|(_, b)| cur.contains_key(b.as_str()));
        if u64::from(list.next_uid) + newcomers.len() as u64 > u64::from(u32::MAX) {
            self.renumber(&mut list);
        }
        for base in newcomers {
            list.entries.push((list.next_uid, base));
            // Cannot overflow: checked above, after any renumbering.
            list.next_uid = list.next_uid.saturating_add(1);
        }
        lock.commit(&list).map_err(self.io())?;
        Ok(self.present(&dirs.cur, list, cur)?.0)
    }

    /// The folder's UIDs are used up (RFC 9051 §2.3.1.1 allows no UID past
    /// 2^32-1, and a UID is never given twice): start again as Dovecot does,
    /// with a new UIDVALIDITY, the messages renumbered from 1 in their old
    /// order, and a line in the log. Clients see the new UIDVALIDITY and
    /// resynchronise; a session with the folder selected is told to leave.
    /// Runs under the list's lock; mod-sequences and the cache are keyed
    /// by UIDVALIDITY, so they start again by themselves.
    fn renumber(&self, list: &mut UidList) {
        let old_validity = list.validity;
        let old_next = list.next_uid;
        let fresh = UidList::fresh_in(&self.inbox);
        // Larger than the old one, as RFC 9051 §2.3.1.1 requires, even
        // when the old one came from a clock running ahead.
        list.validity = fresh.validity.max(old_validity.saturating_add(1)).max(1);
        for (uid, (old, _)) in (1u32..).zip(list.entries.iter_mut()) {
            *old = uid;
        }
        list.next_uid = list.entries.len() as u32 + 1;
        // The old UIDs' \Recent mark means nothing for the new ones.
        let _ = fs::remove_file(self.dir.join(RECENT_FILE));
        tracing::warn!(
            folder = %self.dir.display(),
            "UIDs used up (next UID {old_next}): new UIDVALIDITY {} (was {old_validity}), {} messages renumbered",
            list.validity,
            list.entries.len()
        );
    }

    /// The first UID no IMAP session has taken \Recent for (the folder's
    /// [`RECENT_FILE`]; 1 when there is none: nothing taken yet).
    pub fn first_recent(&self) -> u32 {
        crate::store::maildir::read_side_file(&self.dir.join(RECENT_FILE))
            .ok()
            .flatten()
            .and_then(|text| String::from_utf8_lossy(&text).trim().parse().ok())
            .unwrap_or(1)
    }

    /// Takes the \Recent flag of every message below `next_uid` no session
    /// has taken it for yet (RFC 3501 §2.3.2: one session owns it), moving
    /// [`RECENT_FILE`] past them; returns the UIDs taken, `first..next`.
    ///
    /// The file is rewritten in place under its own `flock`, without
    /// fsync: a value lost in a crash only shows some messages \Recent
    /// once more, and a write of ten digits is never seen half done.
    pub fn claim_recent(&self, next_uid: u32) -> Result<Option<(u32, u32)>, MailboxError> {
        use std::os::unix::fs::{FileExt, OpenOptionsExt};
        let path = self.dir.join(RECENT_FILE);
        let file = fs::OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .custom_flags(crate::store::maildir::nofollow_flag())
            .open(&path)
            .map_err(self.io())?;
        fs2::FileExt::lock_exclusive(&file).map_err(self.io())?;
        let mut text = [0u8; 16];
        let n = file.read_at(&mut text, 0).map_err(self.io())?;
        let first = std::str::from_utf8(&text[..n])
            .ok()
            .and_then(|t| t.trim().parse::<u32>().ok())
            .unwrap_or(1);
        if first >= next_uid {
            return Ok(None);
        }
        file.write_all_at(format!("{next_uid:010}\n").as_bytes(), 0)
            .map_err(self.io())?;
        Ok(Some((first, next_uid)))
    }

    /// Sets an entry's flags by renaming its file; returns the entry as it
    /// now is, or `None` if the message has been expunged meanwhile.
    pub fn set_flags(&self, entry: &Entry, flags: Flags) -> Result<Option<Entry>, MailboxError> {
        let cur = self.cur()?;
        self.change_one(&cur, entry, Some(entry.info.clone()), false, &|_| flags)
    }

    /// Changes the flags of many messages in one pass (IMAP STORE):
    /// `change` maps a message's flags as they are on disk now (another
    /// session may have changed them since the caller looked) to the new
    /// ones. One open of `cur/`; for more than a few messages one readdir
    /// instead of a stat each; a rename only where the flags change.
    /// `None` for a message expunged meanwhile.
    pub fn change_flags(
        &self,
        entries: &[Entry],
        change: &dyn Fn(Flags) -> Flags,
    ) -> Result<Vec<Option<Entry>>, MailboxError> {
        let cur = self.cur()?;
        let mut listing = if entries.len() >= LIST_CUR_FROM {
            Some(read_cur(&cur).map_err(self.io())?)
        } else {
            None
        };
        let mut out = Vec::with_capacity(entries.len());
        for entry in entries {
            let changed = match listing.as_mut() {
                Some(names) => match names.remove(&*entry.base) {
                    Some(info) => self.change_one(&cur, entry, Some(info), true, change)?,
                    None => None,
                },
                None => self.change_one(&cur, entry, None, true, change)?,
            };
            out.push(changed);
        }
        Ok(out)
    }

    /// Renames one message for `change`, starting from `current`, its
    /// info as last seen (`verified`: seen on disk just now), or, if
    /// `None`, its info as the disk has it. A rename that finds the file
    /// gone (another session renamed it) looks again and retries: twice
    /// at most, then the message counts as expunged.
    fn change_one(
        &self,
        cur: &NoFollowDir,
        entry: &Entry,
        mut current: Option<Box<str>>,
        mut verified: bool,
        change: &dyn Fn(Flags) -> Flags,
    ) -> Result<Option<Entry>, MailboxError> {
        let look_up = || -> Result<Option<Box<str>>, MailboxError> {
            Ok(read_cur(cur).map_err(self.io())?.remove(&*entry.base))
        };
        for _ in 0..3 {
            let now = match current.take() {
                Some(info) => info,
                None if cur.has(&entry.file_name()) => {
                    verified = true;
                    entry.info.clone()
                }
                None => match look_up()? {
                    Some(info) => {
                        verified = true;
                        info
                    }
                    None => return Ok(None),
                },
            };
            let info = change(Flags::from_info(&now)).apply_to_info(&now);
            let from = format!("{}:2,{now}", entry.base);
            let done = if info == *now {
                verified || cur.has(&from)
            } else {
                let to = format!("{}:2,{info}", entry.base);
                match cur.rename(&from, cur, &to) {
                    Ok(()) => true,
                    Err(e) if e.kind() == io::ErrorKind::NotFound => false,
                    Err(e) => return Err(self.io()(e)),
                }
            };
            if done {
                return Ok(Some(Entry {
                    info: info.into(),
                    ..entry.clone()
                }));
            }
            match look_up()? {
                Some(info) => {
                    current = Some(info);
                    verified = true;
                }
                None => return Ok(None),
            }
        }
        Ok(None)
    }

    /// Current info of one entry, from the disk (for a flag change that
    /// must start from what other sessions did).
    pub fn refresh(&self, entry: &Entry) -> Result<Option<Entry>, MailboxError> {
        let cur = self.cur()?;
        if cur.has(&entry.file_name()) {
            return Ok(Some(entry.clone()));
        }
        Ok(read_cur(&cur)
            .map_err(self.io())?
            .remove(&*entry.base)
            .map(|info| Entry {
                info,
                ..entry.clone()
            }))
    }

    /// Adds keywords to the folder's file (under the list's lock) and
    /// returns all of them; `None` in the result for a keyword that did not
    /// fit (26 letters).
    pub fn add_keywords(&self, names: &[&str]) -> Result<(Keywords, bool), MailboxError> {
        let lock = UidLock::acquire(&self.dir).map_err(self.io())?;
        let mut keywords = super::flags::read_keywords(&self.dir).map_err(self.io())?;
        let before = keywords.clone();
        let mut all_fit = true;
        for name in names {
            all_fit &= keywords.add(name).is_some();
        }
        if keywords != before {
            super::flags::write_keywords(&self.dir, &keywords).map_err(self.io())?;
        }
        drop(lock);
        Ok((keywords, all_fit))
    }

    /// Removes messages: unlinks their files, then drops them from the
    /// list. Returns the UIDs actually removed here.
    pub fn expunge(&self, entries: &[Entry]) -> Result<Vec<u32>, MailboxError> {
        let mut gone = Vec::new();
        let mut bytes = 0i64;
        let cur = self.cur()?;
        for entry in entries {
            let removed = match cur.unlink(&entry.file_name()) {
                Ok(()) => true,
                Err(e) if e.kind() == io::ErrorKind::NotFound => {
                    // Renamed by a flag change meanwhile: find it.
                    match self.refresh(entry)? {
                        Some(now) => cur.unlink(&now.file_name()).is_ok(),
                        None => false,
                    }
                }
                Err(e) => return Err(self.io()(e)),
            };
            if removed {
                bytes += crate::store::maildir::size_from_name(&entry.base).unwrap_or(0) as i64;
                gone.push(entry.uid);
            }
        }
        self.forget(entries)?;
        if !gone.is_empty() && !self.is_trash {
            crate::store::maildir::Maildir::new(&self.inbox)
                .quota_add(-bytes, -(gone.len() as i64));
        }
        Ok(gone)
    }

    /// Drops entries from the list (their files are gone or moved away).
    fn forget(&self, entries: &[Entry]) -> Result<(), MailboxError> {
        let lock = UidLock::acquire(&self.dir).map_err(self.io())?;
        let Some(mut list) = UidList::read(&self.dir).map_err(self.io())? else {
            return Ok(());
        };
        let dropped: HashSet<&str> = entries.iter().map(|e| &*e.base).collect();
        list.entries.retain(|(_, b)| !dropped.contains(b.as_str()));
        lock.commit(&list).map_err(self.io())
    }

    /// Stores new messages (IMAP APPEND, and MULTIAPPEND's several) with
    /// their flags and internal dates, all or none; returns the folder's
    /// UIDVALIDITY and their UIDs. The user's quota, if any, holds for
    /// them together.
    ///
    /// Durable in three steps however many there are: each file is
    /// fsynced as it is written into `tmp/`; then, under the list's lock,
    /// they are linked straight into `cur/` with their flags and `cur/` is
    /// synced once; then one write of the list gives them the next UIDs,
    /// without the readdir of a full sync (other newcomers get theirs at
    /// the next sync).
    pub fn append(
        &self,
        messages: &[Appending<'_>],
        quota: Option<u64>,
    ) -> Result<(u32, Vec<u32>), MailboxError> {
        let mut used = match quota {
            Some(limit) if limit > 0 && !self.is_trash => {
                Some((limit, self.maildir.quota_usage(limit)?.0))
            }
            _ => None,
        };
        let mut staged = Vec::with_capacity(messages.len());
        let mut bytes = 0u64;
        for m in messages {
            let info = m.flags.apply_to_info("");
            let mut body = m.message;
            let written = self.maildir.stage_for_cur(
                crate::store::maildir::Message {
                    prepend: b"",
                    body: &mut body,
                    base_name: None,
                    search_cur: false,
                    end_header: false,
                    as_given: m.as_given,
                    quota: None,
                },
                &info,
                m.internal_date,
                used,
            );
            match written {
                Ok(one) => {
                    bytes += one.size;
                    if let Some((_, in_use)) = used.as_mut() {
                        *in_use += one.size;
                    }
                    staged.push(one);
                }
                Err(e) => {
                    // All or none: nothing is in cur/ yet.
                    self.maildir.discard_staged(&staged);
                    return Err(e.into());
                }
            }
        }
        // Linked into cur/ only under the list's lock, and numbered before
        // it is released: a sync by another session (another process or
        // host) in between would give them UIDs of its own, and these
        // would be listed twice, with an APPENDUID naming no message.
        let lock = match UidLock::acquire(&self.dir) {
            Ok(lock) => lock,
            Err(e) => {
                self.maildir.discard_staged(&staged);
                return Err(self.io()(e));
            }
        };
        self.maildir.link_into_cur(&staged)?;
        if used.is_some() {
            crate::store::maildir::Maildir::new(&self.inbox)
                .quota_add(bytes as i64, staged.len() as i64);
        }
        let placed: Vec<String> = staged.iter().map(|one| one.base().to_string()).collect();
        let mut list = UidList::read(&self.dir)
            .map_err(self.io())?
            .unwrap_or_else(|| UidList::fresh_in(&self.inbox));
        if u64::from(list.next_uid) + placed.len() as u64 > u64::from(u32::MAX) {
            // The UIDs run out: the full sync renumbers the folder.
            drop(lock);
            let state = self.sync()?;
            let uids = placed
                .iter()
                .filter_map(|base| {
                    state
                        .entries
                        .iter()
                        .rev()
                        .find(|e| *e.base == **base)
                        .map(|e| e.uid)
                })
                .collect();
            return Ok((state.validity, uids));
        }
        let mut uids = Vec::with_capacity(placed.len());
        for base in placed {
            uids.push(list.next_uid);
            list.entries.push((list.next_uid, base));
            list.next_uid += 1;
        }
        lock.commit(&list).map_err(self.io())?;
        Ok((list.validity, uids))
    }

    /// Copies (hard links, or copies where links fail) or moves entries of
    /// this folder into `dest`. Returns (destination UIDVALIDITY, pairs of
    /// source and destination UIDs) for COPYUID.
    ///
    /// A message expunged meanwhile is skipped; with `all_or_none` (IMAP
    /// COPY and MOVE, which RFC 9051 §6.4.7 makes atomic, as Dovecot has
    /// them) it instead undoes what was placed and returns no pairs, so
    /// that no pairs for some entries means "some were gone, none moved".
    pub fn transfer(
        &self,
        entries: &[Entry],
        dest: &Folder,
        remove: bool,
        all_or_none: bool,
    ) -> Result<(u32, Vec<(u32, u32)>), MailboxError> {
        self.transfer_under(entries, dest, remove, all_or_none, &Admission::default())
    }

    /// [`transfer`](Folder::transfer) into a folder whose owner may not be
    /// the user (a shared or public folder): `admission` holds the
    /// destination tree's quota, which refuses the whole set when it would
    /// go over, and the flags the user may set there (RFC 4314 §4: `s`,
    /// `t` and `w` rule \Seen, \Deleted and the rest, for a copy as for
    /// a STORE). Each tree's usage follows the messages.
    pub fn transfer_under(
        &self,
        entries: &[Entry],
        dest: &Folder,
        remove: bool,
        all_or_none: bool,
        admission: &Admission<'_>,
    ) -> Result<(u32, Vec<(u32, u32)>), MailboxError> {
        let same_tree = self.inbox == dest.inbox;
        // A move inside one tree changes no usage; trash counts for none.
        let adds_usage = !dest.is_trash && (!same_tree || !remove || self.is_trash);
        if let Some(limit) = admission.quota.filter(|&l| l > 0)
            && adds_usage
        {
            let adding: u64 = entries
                .iter()
                .map(|e| crate::store::maildir::size_from_name(&e.base).unwrap_or(0))
                .sum();
            let md = crate::store::maildir::Maildir::new(&dest.inbox);
            let (used, _) = md.quota_usage(limit)?;
            if used.saturating_add(adding) > limit {
                // As a delivery's refusal says it: the usage so far.
                return Err(MailboxError::Maildir(
                    crate::store::maildir::MaildirError::OverQuota { used, limit },
                ));
            }
        }
        let host = crate::store::fsutil::this_host();
        // Keyword letters are per folder: map each source letter to the
        // destination's letter for the same name.
        let ours = super::flags::read_keywords(&self.dir).map_err(self.io())?;
        let used = entries.iter().fold(0u32, |acc, e| acc | e.flags().keywords);
        let names: Vec<&str> = ours.names_of(used).collect();
        let mut letters = [None::<usize>; super::flags::MAX_KEYWORDS];
        if !names.is_empty() {
            let (theirs, _) = dest.add_keywords(&names)?;
            for (i, name) in ours.names.iter().enumerate() {
                if !name.is_empty() && used & (1 << i) != 0 {
                    letters[i] = theirs.index(name);
                }
            }
        }
        let mut placed: Vec<(u32, String)> = Vec::new();
        // For an undo: (name in the source, name in the destination).
        let mut names: Vec<(String, String)> = Vec::new();
        let mut bytes = 0i64;
        let from_cur = self.cur()?;
        let dest_dir = dest.maildir.open_dir().map_err(dest.io())?;
        let dest_cur = dest_dir.dir("cur").map_err(dest.io())?;
        let undo = |names: &[(String, String)]| {
            // The placed files have no UID in `dest` yet: taking them
            // away (or back, for a move) leaves both folders as they were.
            for (from, to) in names.iter().rev() {
                let _ = if remove {
                    dest_cur.rename(to, &from_cur, from)
                } else {
                    dest_cur.unlink(to)
                };
            }
        };
        for entry in entries {
            let Some(entry) = self.refresh(entry)? else {
                if all_or_none {
                    undo(&names);
                    return Ok((0, Vec::new()));
                }
                continue;
            };
            // A fresh base name in the destination, keeping the size fields.
            let sizes = entry.base.find(',').map(|i| &entry.base[i..]).unwrap_or("");
            let base = format!(
                "{}.{}.{host}{sizes}",
                crate::store::fsutil::now_secs(),
                crate::store::fsutil::unique_suffix()
            );
            let from = entry.file_name();
            let mut flags = admission.flags.map_or(entry.flags(), |f| f(entry.flags()));
            let mut mapped = 0u32;
            for (i, letter) in letters.iter().enumerate() {
                if flags.keywords & (1 << i) != 0
                    && let Some(j) = letter
                {
                    mapped |= 1 << j;
                }
            }
            flags.keywords = mapped;
            let info = flags.apply_to_info(&entry.info);
            let to = format!("{base}:2,{info}");
            let result = if remove {
                from_cur.rename(&from, &dest_cur, &to)
            } else {
                from_cur
                    .link(&from, &dest_cur, &to)
                    .or_else(|_| copy_file(&from_cur, &from, &dest_dir, &dest_cur, &to))
            };
            match result {
                Ok(()) => {}
                Err(e) if e.kind() == io::ErrorKind::NotFound && all_or_none => {
                    undo(&names);
                    return Ok((0, Vec::new()));
                }
                Err(e) if e.kind() == io::ErrorKind::NotFound => continue,
                Err(e) => {
                    if all_or_none {
                        undo(&names);
                    }
                    return Err(self.io()(e));
                }
            }
            bytes += crate::store::maildir::size_from_name(&entry.base).unwrap_or(0) as i64;
            names.push((from, to));
            placed.push((entry.uid, base));
        }
        if remove {
            self.forget(entries)?;
        }
        let md = crate::store::maildir::Maildir::new(&self.inbox);
        let n = placed.len() as i64;
        if same_tree {
            match (self.is_trash, dest.is_trash, remove) {
                (_, false, false) | (true, false, true) => md.quota_add(bytes, n),
                (false, true, true) => md.quota_add(-bytes, -n),
                _ => {}
            }
        } else {
            // Between two owners' trees: each one's usage follows.
            if remove && !self.is_trash {
                md.quota_add(-bytes, -n);
            }
            if !dest.is_trash {
                crate::store::maildir::Maildir::new(&dest.inbox).quota_add(bytes, n);
            }
        }
        let state = dest.sync()?;
        let uids: HashMap<&str, u32> = state.entries.iter().map(|e| (&*e.base, e.uid)).collect();
        let pairs = placed
            .iter()
            .filter_map(|(src, base)| uids.get(base.as_str()).map(|d| (*src, *d)))
            .collect();
        Ok((state.validity, pairs))
    }
}

/// What a destination folder admits in [`Folder::transfer_under`].
#[derive(Default)]
pub struct Admission<'a> {
    /// The destination tree's quota in bytes (`None` or 0: no limit).
    pub quota: Option<u64>,
    /// The flags a message may keep there, from the flags it has.
    pub flags: Option<&'a dyn Fn(super::Flags) -> super::Flags>,
}

/// Copies a message through the destination's tmp/ (for filesystems
/// without hard links between the two folders), never through a symlink.
fn copy_file(
    from_cur: &NoFollowDir,
    from: &str,
    dest_dir: &NoFollowDir,
    dest_cur: &NoFollowDir,
    to: &str,
) -> io::Result<()> {
    let tmp_dir = dest_dir.dir("tmp")?;
    let tmp = format!("copy.{}", crate::store::fsutil::unique_suffix());
    let result = (|| {
        let mut source = from_cur.open_file(from)?;
        let mut copy =
            tmp_dir.open_with(&tmp, OFlags::WRONLY | OFlags::CREATE | OFlags::EXCL, 0o600)?;
        io::copy(&mut source, &mut copy)?;
        copy.sync_all()?;
        if let Ok(modified) = source.metadata().and_then(|m| m.modified()) {
            let _ = copy.set_modified(modified);
        }
        tmp_dir.rename(&tmp, dest_cur, to)
    })();
    if result.is_err() {
        let _ = tmp_dir.unlink(&tmp);
    }
    result
}
