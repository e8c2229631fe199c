//! One copy per process of what sessions of the same folder know about it:
//! its entries as last synced and its mod-sequences.
//!
//! Every IMAP session of a folder used to hold the folder's entries (UIDs,
//! names, flags) and mod-sequences of its own: some 200 bytes a message
//! and session, so 10,000 idle sessions on 10,000-message folders held
//! 20 GB. Here a process keeps one [`SharedFolder`] per folder some session
//! has open ([`Folders::open`]), and a session's view is an `Arc` of the
//! entries it last took from it: while the session's view is the folder
//! as synced (an idle session's always is), it costs one pointer.
//!
//! Nothing here is the truth: the files are (`postroom-mailbox(5)`). The
//! entries are taken again from the disk whenever the folder's [`Stamp`]
//! moved, under the same rules a session's own look followed (a stamp that
//! is dirty or on a shared filesystem proves nothing, and the folder is
//! synced), so other processes and other hosts see no difference.
//!
//! A process's first look at a folder may take the entries from the
//! folder's index ([`super::index`]) instead, when the stamp proves the
//! folder unchanged since it was written; and a full sync that found the
//! folder settled writes that index for the next process. SELECT then
//! answers from the index's header alone ([`SharedFolder::select`]): the
//! records, the bulk of it (decoding 100,000 of them took 10 ms of a
//! 15 ms SELECT), are read at the first command that needs them
//! ([`SharedFolder::entries`]), still as the index had them when SELECT
//! answered, so that what the client was told and the view agree.

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::{Arc, Mutex, MutexGuard, OnceLock, PoisonError, Weak};
use std::time::Instant;

use super::MailboxError;
use super::flags::Keywords;
use super::folder::{Entry, Folder, Stamp};
use super::index::{self, ModSeqMark};
use super::modseq::ModSeqs;

/// A folder's entries as one sync found them, shared by every session
/// whose view they are.
pub type Entries = Arc<Vec<Entry>>;

/// A folder's state as [`SharedFolder::sync`] gives it.
#[derive(Debug, Clone)]
pub struct Synced {
    pub validity: u32,
    pub next_uid: u32,
    /// UIDs from here on are \Recent and not yet claimed by a session
    /// (read at each sync: taking \Recent does not move the stamp).
    pub first_recent: u32,
    /// Ascending UIDs.
    pub entries: Entries,
    pub keywords: Keywords,
}

/// What [`SharedFolder::select`] found.
#[derive(Debug)]
pub enum Selection {
    /// The folder as synced.
    Synced(Synced),
    /// Unchanged since its index was written: its header answers, the
    /// entries are read when first asked for ([`SharedFolder::entries`]).
    Indexed(Arc<Indexed>),
}

/// A folder index whose header matched the folder's stamp, and its
/// entries once read (one copy for the sessions of this process that
/// selected the folder from it).
#[derive(Debug)]
pub struct Indexed {
    unread: index::Unread,
    /// When its stamp was found to match (as [`Last::started`]).
    started: Instant,
    keywords: Keywords,
    /// `None` once read: the records are torn or damaged.
    entries: OnceLock<Option<Entries>>,
}

impl Indexed {
    pub fn header(&self) -> &index::Header {
        &self.unread.header
    }

    pub fn keywords(&self) -> &Keywords {
        &self.keywords
    }

    fn entries(&self) -> Option<Entries> {
        self.entries
            .get_or_init(|| self.unread.records().map(Arc::new))
            .clone()
    }

    /// What the last sync would have found, with these entries.
    fn last(&self, entries: Entries) -> Last {
        let h = &self.unread.header;
        Last {
            stamp: h.stamp,
            started: self.started,
            validity: h.validity,
            next_uid: h.next_uid,
            entries,
            keywords: self.keywords.clone(),
            indexed: (h.modseq.len != u64::MAX).then_some(h.modseq),
        }
    }
}

/// What the last sync found, and the stamp taken just before it.
#[derive(Debug)]
struct Last {
    stamp: Stamp,
    /// When that sync began: a session that asked before then may take
    /// its result, since the disk it read is at least as new as the one
    /// the session asked about.
    started: Instant,
    validity: u32,
    next_uid: u32,
    entries: Entries,
    keywords: Keywords,
    /// Taken from the folder index: where its mod-sequence log stood
    /// when it agreed with these entries.
    indexed: Option<ModSeqMark>,
}

/// One folder as the sessions of this process share it.
#[derive(Debug)]
pub struct SharedFolder {
    folder: Folder,
    last: Mutex<Option<Last>>,
    modseqs: Mutex<Option<ModSeqs>>,
    /// The stamp the folder index on disk is known to be written under
    /// (read or written by this process): no need to write it again.
    index_stamp: Mutex<Option<Stamp>>,
    /// The index SELECT answered from while no sync has been needed yet
    /// (`last` is `None`): later SELECTs under the same stamp share it.
    indexed: Mutex<Option<Arc<Indexed>>>,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    // A panic while the lock was held leaves at worst an older state,
    // which the next sync replaces: carry on with it.
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

impl SharedFolder {
    pub fn folder(&self) -> &Folder {
        &self.folder
    }

    /// The folder as it is now: what the last sync found when the folder's
    /// stamp has not moved since (one `stat` of `new/`, `cur/` and the
    /// two lists), else a new sync ([`Folder::sync`]). `force`: sync even
    /// then (after this session changed the folder itself). Sessions
    /// that ask while another's sync runs wait for it and take its result
    /// if it began after they asked.
    pub fn sync(&self, force: bool) -> Result<Synced, MailboxError> {
        let asked = Instant::now();
        let stamp = self.folder.stamp();
        let mut last = lock(&self.last);
        if last.is_none() && !force {
            *last = self.load_index(&stamp);
        }
        if last.is_some() {
            // Whoever selected from it holds it; new looks go by `last`.
            lock(&self.indexed).take();
        }
        let fresh = last
            .as_ref()
            .is_some_and(|l| l.started >= asked || (!force && stamp.unchanged_since(&l.stamp)));
        if !fresh {
            // The stamp again: the one above may be from before a wait
            // for another session's sync.
            let stamp = self.folder.stamp();
            let started = Instant::now();
            let state = self.folder.sync()?;
            // Found as it was (a stamp too recent to trust, a poll): the
            // same entries, so sessions see at a glance that nothing moved
            // and the mod-sequences need no comparison.
            let entries = match last.take() {
                Some(l) if l.validity == state.validity && *l.entries == state.entries => l.entries,
                _ => Arc::new(state.entries),
            };
            if stamp.trustworthy() && *lock(&self.index_stamp) != Some(stamp) {
                self.write_index(stamp, state.validity, state.next_uid, &entries);
            }
            *last = Some(Last {
                stamp,
                started,
                validity: state.validity,
                next_uid: state.next_uid,
                entries,
                keywords: state.keywords,
                indexed: None,
            });
            return Ok(Synced {
                validity: state.validity,
                next_uid: state.next_uid,
                first_recent: state.first_recent,
                entries: last.as_ref().map(|l| l.entries.clone()).unwrap_or_default(),
                keywords: last
                    .as_ref()
                    .map(|l| l.keywords.clone())
                    .unwrap_or_default(),
            });
        }
        let Some(l) = last.as_ref() else {
            return Err(MailboxError::NoSuchMailbox);
        };
        Ok(Synced {
            validity: l.validity,
            next_uid: l.next_uid,
            first_recent: self.folder.first_recent(),
            entries: l.entries.clone(),
            keywords: l.keywords.clone(),
        })
    }

    /// The folder as SELECT needs it: while this process has not synced
    /// it yet and its stamp is the one its index was written under, the
    /// index with its entries not read ([`Selection::Indexed`]); else
    /// [`SharedFolder::sync`].
    pub fn select(&self) -> Result<Selection, MailboxError> {
        let started = Instant::now();
        let stamp = self.folder.stamp();
        {
            let last = lock(&self.last);
            let mut pending = lock(&self.indexed);
            if last.is_none() {
                if let Some(indexed) = pending
                    .as_ref()
                    .filter(|i| stamp.unchanged_since(&i.unread.header.stamp))
                {
                    return Ok(Selection::Indexed(indexed.clone()));
                }
                if let Some(indexed) = self.open_index(&stamp, started) {
                    *pending = Some(indexed.clone());
                    return Ok(Selection::Indexed(indexed));
                }
            }
        }
        self.sync(false).map(Selection::Synced)
    }

    /// The entries of a folder selected from its index, as the index
    /// had them (the folder may have changed since: the next sync tells).
    /// A file torn or damaged past its header is removed, and the folder
    /// is read instead: that is what SELECT described if the stamp has
    /// not moved since, else the session must select the folder again.
    pub fn entries(&self, indexed: &Arc<Indexed>) -> Result<Entries, MailboxError> {
        if let Some(entries) = indexed.entries() {
            let mut last = lock(&self.last);
            if last.is_none() {
                *last = Some(indexed.last(entries.clone()));
            }
            let mut pending = lock(&self.indexed);
            if pending.as_ref().is_some_and(|p| Arc::ptr_eq(p, indexed)) {
                *pending = None;
            }
            return Ok(entries);
        }
        let path = self.folder.path().join(index::FILE);
        tracing::warn!(
            "{}: damaged past its header, removed; reading the folder",
            path.display()
        );
        let _ = std::fs::remove_file(&path);
        lock(&self.indexed).take();
        let header = indexed.header();
        let unchanged = self.folder.stamp().unchanged_since(&header.stamp);
        let state = self.sync(true)?;
        if unchanged
            && state.validity == header.validity
            && state.entries.len() == header.count as usize
            && state.entries.last().is_none_or(|e| e.uid < header.next_uid)
        {
            return Ok(state.entries);
        }
        Err(MailboxError::Io {
            path,
            error: std::io::Error::new(
                std::io::ErrorKind::InvalidData,
                "the folder index was damaged and the folder changed since SELECT: select it again",
            ),
        })
    }

    /// The folder's index with its header read, if written under
    /// `stamp`, and the folder's keywords.
    fn open_index(&self, stamp: &Stamp, started: Instant) -> Option<Arc<Indexed>> {
        let unread = index::open(self.folder.path(), stamp)?;
        let keywords = super::flags::read_keywords(self.folder.path()).ok()?;
        *lock(&self.index_stamp) = Some(unread.header.stamp);
        Some(Arc::new(Indexed {
            unread,
            started,
            keywords,
            entries: OnceLock::new(),
        }))
    }

    /// The first look of this process: the folder's index, if written
    /// under the stamp the folder has now; the one a SELECT left
    /// unread, if that is still the one.
    fn load_index(&self, stamp: &Stamp) -> Option<Last> {
        let pending = lock(&self.indexed).clone();
        let indexed = match pending.filter(|i| stamp.unchanged_since(&i.unread.header.stamp)) {
            Some(indexed) => indexed,
            None => self.open_index(stamp, Instant::now())?,
        };
        Some(indexed.last(indexed.entries()?))
    }

    /// Writes the folder index for entries a full sync found under a
    /// settled `stamp`, with the mod-sequence log brought to agree with
    /// them first (as SELECT would), so that the next process's SELECT
    /// need not read the log either. A failure costs only the index.
    fn write_index(&self, stamp: Stamp, validity: u32, next_uid: u32, entries: &Entries) {
        let modseq = {
            let mut guard = self.modseqs(validity);
            guard.as_mut().and_then(|m| {
                m.update_shared(entries).ok()?;
                let (inode, len) = m.mark()?;
                Some(ModSeqMark {
                    highest: m.highest(),
                    inode,
                    len,
                })
            })
        };
        let header = index::Header {
            stamp,
            validity,
            next_uid,
            count: entries.len() as u32,
            first_unseen: entries
                .iter()
                .position(|e| !e.flags().has(super::flags::SEEN))
                .map(|i| i as u32),
            modseq: modseq.unwrap_or(ModSeqMark {
                highest: 0,
                inode: 0,
                len: u64::MAX,
            }),
        };
        match index::store(self.folder.path(), &header, entries) {
            Ok(()) => *lock(&self.index_stamp) = Some(stamp),
            Err(e) => tracing::warn!("index of {}: {e}", self.folder.path().display()),
        }
    }

    /// HIGHESTMODSEQ without reading the mod-sequence log, when `entries`
    /// came from the folder index and the log is where it stood when it
    /// agreed with them (so SELECT has nothing to record in it); `None`:
    /// bring the log up to date and ask it.
    pub fn indexed_highest_modseq(&self, entries: &Entries) -> Option<u64> {
        let mark = {
            let last = lock(&self.last);
            let last = last.as_ref()?;
            if !Arc::ptr_eq(&last.entries, entries) {
                return None;
            }
            last.indexed?
        };
        self.highest_at(mark)
    }

    /// [`SharedFolder::indexed_highest_modseq`] for a folder selected
    /// from its index, its entries not read.
    pub fn unread_highest_modseq(&self, indexed: &Indexed) -> Option<u64> {
        let mark = indexed.header().modseq;
        (mark.len != u64::MAX).then_some(())?;
        self.highest_at(mark)
    }

    /// HIGHESTMODSEQ as `mark` has it, while the log is where it stood.
    fn highest_at(&self, mark: ModSeqMark) -> Option<u64> {
        // Once read, the log itself answers as cheaply.
        if lock(&self.modseqs).is_some() {
            return None;
        }
        let here = index::log_position(&self.folder.path().join(super::modseq::FILE))?;
        (here == (mark.inode, mark.len)).then_some(mark.highest)
    }

    /// HIGHESTMODSEQ of the folder as just synced (`entries`): from the
    /// folder index when it answers ([`SharedFolder::indexed_highest_modseq`]),
    /// else from the log brought up to date (a failure is logged; the value
    /// then lags, and the next look catches up).
    pub fn highest_modseq(&self, validity: u32, entries: &Entries) -> u64 {
        if let Some(highest) = self.indexed_highest_modseq(entries) {
            return highest;
        }
        let mut guard = self.modseqs(validity);
        let Some(modseqs) = guard.as_mut() else {
            return 1;
        };
        if let Err(e) = modseqs.update_shared(entries) {
            tracing::warn!("mod-sequences of {}: {e}", self.folder.path().display());
        }
        modseqs.highest()
    }

    /// The folder's mod-sequences for this UIDVALIDITY, one copy for the
    /// sessions of this process (each brings it up to date before use,
    /// [`ModSeqs::update`]). Do not hold it across an `.await`.
    pub fn modseqs(&self, validity: u32) -> MutexGuard<'_, Option<ModSeqs>> {
        let mut guard = lock(&self.modseqs);
        if guard.as_ref().is_none_or(|m| m.validity() != validity) {
            *guard = Some(ModSeqs::new(self.folder.path(), validity));
        }
        guard
    }
}

/// The folders the sessions of one process have open, and the few last
/// opened ([`KEEP_RECENT`]): a client that selects another folder and
/// comes back, or logs out and in again, finds its folder known (and if
/// it has not moved, not read again); any other folder no session holds
/// is dropped with its last holder.
#[derive(Debug, Default)]
pub struct Folders {
    open: Mutex<HashMap<PathBuf, Weak<SharedFolder>>>,
    recent: Mutex<std::collections::VecDeque<Arc<SharedFolder>>>,
}

/// How many folders [`Folders`] keeps after their last session let go.
pub const KEEP_RECENT: usize = 8;

impl Folders {
    /// The shared state of `folder`, made on first use.
    pub fn open(&self, folder: Folder) -> Arc<SharedFolder> {
        let shared = self.held(folder);
        let mut recent = lock(&self.recent);
        recent.retain(|f| !Arc::ptr_eq(f, &shared));
        recent.push_front(shared.clone());
        recent.truncate(KEEP_RECENT);
        shared
    }

    /// The shared state of `folder` if some session holds it (or it is
    /// among the last opened), else a new one: for a look that should not
    /// push the folders sessions come back to out of [`KEEP_RECENT`] (a
    /// STATUS of every folder in a LIST-STATUS).
    pub fn held(&self, folder: Folder) -> Arc<SharedFolder> {
        let mut open = lock(&self.open);
        if let Some(shared) = open.get(folder.path()).and_then(Weak::upgrade) {
            return shared;
        }
        // Forget folders nobody holds any more, now and then: the map
        // stays the size of what is open.
        if open.len() >= 64 && open.len().is_power_of_two() {
            open.retain(|_, w| w.strong_count() > 0);
        }
        let shared = Arc::new(SharedFolder {
            last: Mutex::new(None),
            modseqs: Mutex::new(None),
            index_stamp: Mutex::new(None),
            indexed: Mutex::new(None),
            folder: folder.clone(),
        });
        open.insert(folder.path().to_path_buf(), Arc::downgrade(&shared));
        shared
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::mailbox::tests::settle;
    use crate::store::mailbox::{Mailbox, MailboxName};
    use std::io::Write;

    fn deliver(root: &std::path::Path, name: &str) {
        std::fs::write(root.join("new").join(name), "Subject: x\n\nbody\n").unwrap();
    }

    /// A new mailbox whose INBOX has two messages just delivered.
    fn two_messages() -> (tempfile::TempDir, Mailbox, MailboxName) {
        let dir = tempfile::tempdir().unwrap();
        let mailbox = Mailbox::new(dir.path());
        mailbox.ensure_defaults().unwrap();
        deliver(dir.path(), "1000.M1P1.host,S=20");
        deliver(dir.path(), "1001.M2P1.host,S=20:2,S");
        let inbox = MailboxName::new("INBOX").unwrap();
        (dir, mailbox, inbox)
    }

    #[test]
    fn a_new_process_takes_a_settled_folder_from_its_index() {
        let (dir, mailbox, inbox) = two_messages();
        let index = dir.path().join(index::FILE);
        let first = Folders::default().open(mailbox.folder(&inbox));
        let synced = first.sync(false).unwrap();
        assert!(!index.exists(), "the folder just changed: no index");
        settle(dir.path());
        // The next look syncs in full (the last stamp proved nothing),
        // under a settled stamp: it writes the index, the log first.
        let again = first.sync(false).unwrap();
        assert_eq!(again.entries, synced.entries);
        assert!(index.exists());
        let highest = first.modseqs(synced.validity).as_ref().unwrap().highest();
        // Another process: the entries and HIGHESTMODSEQ from the index.
        let other = Folders::default().open(mailbox.folder(&inbox));
        let loaded = other.sync(false).unwrap();
        assert_eq!(loaded.entries, synced.entries);
        assert_eq!((loaded.validity, loaded.next_uid), (synced.validity, 3));
        assert!(lock(&other.last).as_ref().unwrap().indexed.is_some());
        assert_eq!(other.indexed_highest_modseq(&loaded.entries), Some(highest));
        // Not for entries other than the index's, nor once the log moved.
        assert_eq!(other.indexed_highest_modseq(&Arc::default()), None);
        std::fs::OpenOptions::new()
            .append(true)
            .open(dir.path().join(super::super::modseq::FILE))
            .unwrap()
            .write_all(b"1 99 S\n")
            .unwrap();
        assert_eq!(other.indexed_highest_modseq(&loaded.entries), None);
        // A delivery moves the stamp: a third process reads the disk.
        deliver(dir.path(), "1002.M3P1.host,S=20");
        let third = Folders::default().open(mailbox.folder(&inbox));
        let grown = third.sync(false).unwrap();
        assert_eq!(grown.entries.len(), 3);
        assert!(lock(&third.last).as_ref().unwrap().indexed.is_none());
    }

    /// A folder with two messages and its index written, settled.
    fn indexed_folder() -> (tempfile::TempDir, Mailbox, MailboxName) {
        let (dir, mailbox, inbox) = two_messages();
        let first = Folders::default().open(mailbox.folder(&inbox));
        first.sync(false).unwrap();
        settle(dir.path());
        first.sync(false).unwrap();
        assert!(dir.path().join(index::FILE).exists());
        (dir, mailbox, inbox)
    }

    #[test]
    fn select_answers_from_the_index_header_and_reads_the_records_later() {
        let (dir, mailbox, inbox) = indexed_folder();
        let other = Folders::default().open(mailbox.folder(&inbox));
        let Ok(Selection::Indexed(indexed)) = other.select() else {
            panic!("not from the index");
        };
        let h = indexed.header();
        assert_eq!((h.count, h.next_uid, h.first_unseen), (2, 3, Some(0)));
        assert!(indexed.entries.get().is_none(), "records not read");
        assert!(other.unread_highest_modseq(&indexed).is_some());
        // A second SELECT in the process shares it.
        let Ok(Selection::Indexed(again)) = other.select() else {
            panic!("not from the index");
        };
        assert!(Arc::ptr_eq(&indexed, &again));
        // The folder changes before the first command: the view is still
        // what SELECT described, and the next sync tells the change.
        deliver(dir.path(), "1002.M3P1.host,S=20");
        let view = other.entries(&indexed).unwrap();
        assert_eq!(view.iter().map(|e| e.uid).collect::<Vec<_>>(), [1, 2]);
        assert!(lock(&other.indexed).is_none(), "no longer pending");
        assert_eq!(other.sync(false).unwrap().entries.len(), 3);
        assert!(matches!(other.select(), Ok(Selection::Synced(_))));
    }

    /// [`indexed_folder`] with the last byte of its last record flipped,
    /// and a new process's SELECT of it (from the whole header).
    fn damaged() -> (tempfile::TempDir, Arc<SharedFolder>, Arc<Indexed>) {
        let (dir, mailbox, inbox) = indexed_folder();
        let path = dir.path().join(index::FILE);
        let mut bytes = std::fs::read(&path).unwrap();
        let last = bytes.len() - 1;
        bytes[last] ^= 1;
        std::fs::write(&path, &bytes).unwrap();
        let other = Folders::default().open(mailbox.folder(&inbox));
        let Ok(Selection::Indexed(indexed)) = other.select() else {
            panic!("the header is whole");
        };
        (dir, other, indexed)
    }

    #[test]
    fn records_damaged_behind_a_good_header_fall_back_to_the_folder() {
        // Unchanged since: the folder read in full is what SELECT said.
        let (dir, other, indexed) = damaged();
        let view = other.entries(&indexed).unwrap();
        assert_eq!(view.iter().map(|e| e.uid).collect::<Vec<_>>(), [1, 2]);
        assert!(!dir.path().join(index::FILE).exists(), "removed");
        // Changed meanwhile: the session must select again.
        let (dir, other, indexed) = damaged();
        deliver(dir.path(), "1002.M3P1.host,S=20");
        assert!(other.entries(&indexed).is_err());
    }

    #[test]
    fn sessions_share_one_copy_until_the_folder_changes() {
        let dir = tempfile::tempdir().unwrap();
        let mailbox = Mailbox::new(dir.path());
        mailbox.ensure_defaults().unwrap();
        deliver(dir.path(), "1000.M1P1.host,S=20");
        let inbox = MailboxName::new("INBOX").unwrap();
        let folders = Folders::default();
        let a = folders.open(mailbox.folder(&inbox));
        let b = folders.open(mailbox.folder(&inbox));
        assert!(Arc::ptr_eq(&a, &b), "one state per folder and process");
        let first = a.sync(false).unwrap();
        assert_eq!(first.entries.len(), 1);
        let again = b.sync(false).unwrap();
        // Just changed: the stamp proves nothing yet, so b synced anew,
        // found the same, and kept the same copy.
        assert!(Arc::ptr_eq(&again.entries, &first.entries));
        // Once the times are old enough, an unchanged folder is not read.
        settle(dir.path());
        let settled = a.sync(false).unwrap();
        let shared = b.sync(false).unwrap();
        assert!(Arc::ptr_eq(&settled.entries, &shared.entries));
        // A delivery moves the stamp: the next look sees it.
        deliver(dir.path(), "1001.M2P1.host,S=20");
        let grown = b.sync(false).unwrap();
        assert_eq!(grown.entries.len(), 2);
        assert_eq!(grown.next_uid, 3);
        // Kept a while after the last session let go (a client that
        // comes back finds it known)...
        drop((a, b));
        let c = folders.open(mailbox.folder(&inbox));
        assert!(lock(&c.last).is_some());
        drop(c);
        // ...but only the last few folders.
        for i in 0..KEEP_RECENT {
            let name = MailboxName::new(&format!("F{i}")).unwrap();
            mailbox.create(&name).unwrap();
            folders.open(mailbox.folder(&name));
        }
        let d = folders.open(mailbox.folder(&inbox));
        assert!(lock(&d.last).is_none(), "dropped with its last holder");
    }
}
