//! Waking a process when part of the tree changes, by inotify rather than
//! polling: IMAP IDLE on a folder's `new/` and `cur/`, NOTIFY on a
//! mailbox's list of folders and subscriptions, `smtp-send --watch` on the
//! queue's `todo/`.
//!
//! One inotify instance per process, shared by every waiter in it: the
//! kernel allows few instances per user (128 by default) but many watches,
//! so 10,000 IDLE sessions cost one file descriptor. Waiters on the same
//! place share its watches. A place is a path and what is watched there
//! ([`Kind`]): in Maildir++ the INBOX is the mailbox's root, so the INBOX's
//! messages and the root's folder list are two places at one path; and
//! two places may share a directory, whose inotify watch then serves
//! both. Each watched place has a counter that goes up on every change
//! (a delivery, a flag rename, an expunge, a queue hint); a waiter
//! remembers the value it has seen and waits for a larger one, so no
//! wakeup is lost between a look and the wait.
//!
//! inotify does not see changes made on other hosts of a shared filesystem
//! (postroom-tree(5), SEVERAL HOSTS): every waiter also looks again on a
//! timer, [`other_hosts_poll`]: a minute as a safety net on a local disk,
//! a few seconds where the tree is on a network or FUSE filesystem and so
//! other hosts may be writing to it.

use std::collections::HashMap;
use std::ffi::OsStr;
use std::io;
use std::os::fd::{AsFd, AsRawFd, RawFd};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::Duration;

use nix::sys::inotify::{AddWatchFlags, InitFlags, Inotify, InotifyEvent, WatchDescriptor};
use tokio::io::unix::AsyncFd;
use tokio::sync::watch;

use crate::store::mailbox::SUBSCRIPTIONS;

/// How long a waiter waits before it looks again on its own, for changes
/// inotify cannot see: those of other hosts sharing the tree.
pub fn other_hosts_poll(path: &Path) -> Duration {
    if crate::store::fsutil::is_shared_filesystem(path) {
        SHARED_POLL
    } else {
        LOCAL_POLL
    }
}

/// On a local disk only another host's change would be missed, and a local
/// disk has none: the timer is a safety net.
const LOCAL_POLL: Duration = Duration::from_secs(60);
/// On NFS, CephFS, GlusterFS and the like, another host's delivery reaches
/// an IDLE client or a waiting queue runner within this.
const SHARED_POLL: Duration = Duration::from_secs(3);

/// The process's inotify instance and the places it watches.
#[derive(Clone)]
pub struct Watcher {
    shared: Arc<Shared>,
}

struct Shared {
    inotify: AsyncFd<InotifyFd>,
    folders: Mutex<Folders>,
}

/// What is watched at a path.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
enum Kind {
    /// A maildir folder's messages: its `new/` and `cur/`.
    Folder,
    /// Files arriving in one directory.
    Arrivals,
    /// A mailbox's folders (its `.Name` directories) and subscriptions.
    Tree,
}

type Key = (PathBuf, Kind);

#[derive(Default)]
struct Folders {
    by_key: HashMap<Key, Watched>,
    /// The places each inotify watch serves (the kernel gives one watch
    /// per directory, whoever asks).
    by_wd: HashMap<WatchDescriptor, Vec<Key>>,
}

struct Watched {
    wds: Vec<WatchDescriptor>,
    changes: watch::Sender<u64>,
    users: usize,
}

/// A directory's entries made, removed or renamed (a delivery, a flag
/// rename, an expunge; a folder made, deleted or renamed).
const ENTRIES_CHANGED: AddWatchFlags = AddWatchFlags::IN_CREATE
    .union(AddWatchFlags::IN_DELETE)
    .union(AddWatchFlags::IN_MOVED_FROM)
    .union(AddWatchFlags::IN_MOVED_TO)
    .union(AddWatchFlags::IN_ONLYDIR);

/// `IN_MASK_ADD` (inotify(7)), which nix does not name: a second place on a
/// directory adds its events to the watch instead of replacing the first
/// place's.
const IN_MASK_ADD: AddWatchFlags = AddWatchFlags::from_bits_retain(0x2000_0000);

impl Kind {
    /// Whether an event on one of the place's directories is a change of
    /// the place. The root of a mailbox also holds the INBOX's lists, whose
    /// every rewrite is no change of its folders: a tree place wakes for
    /// directories (folders made, removed or renamed) and the
    /// subscriptions file only.
    fn wakes(self, event: &InotifyEvent) -> bool {
        match self {
            Kind::Folder | Kind::Arrivals => true,
            Kind::Tree => {
                event.mask.contains(AddWatchFlags::IN_ISDIR)
                    || event.name.as_deref() == Some(OsStr::new(SUBSCRIPTIONS))
            }
        }
    }
}

struct InotifyFd(Inotify);

impl AsRawFd for InotifyFd {
    fn as_raw_fd(&self) -> RawFd {
        self.0.as_fd().as_raw_fd()
    }
}

impl Watcher {
    /// Starts the process's watcher; call inside the tokio runtime.
    pub fn new() -> io::Result<Watcher> {
        let inotify = Inotify::init(InitFlags::IN_NONBLOCK | InitFlags::IN_CLOEXEC)?;
        // `AsyncFd::new` is deprecated for types that may close their fd
        // while registered; ours owns it for as long as the AsyncFd lives,
        // and the replacement (`register`) is `unsafe`, which lib/ forbids.
        #[allow(deprecated)]
        let inotify = AsyncFd::new(InotifyFd(inotify))?;
        let shared = Arc::new(Shared {
            inotify,
            folders: Mutex::new(Folders::default()),
        });
        tokio::spawn(read_events(Arc::downgrade(&shared)));
        Ok(Watcher { shared })
    }

    /// Watches the maildir folder at `dir` (its `new/` and `cur/`: a
    /// delivery, a flag rename, an expunge) until the guard is dropped.
    pub fn watch(&self, dir: &Path) -> io::Result<FolderWatch> {
        self.watch_dirs(
            (dir.to_path_buf(), Kind::Folder),
            &[dir.join("new"), dir.join("cur")],
            ENTRIES_CHANGED,
        )
    }

    /// Watches the folder list and subscriptions of the mailbox at `root`
    /// (a folder made, deleted or renamed, a subscription changed) until
    /// the guard is dropped. The INBOX's own watch ([`Watcher::watch`] on
    /// the same root) is another place: neither wakes for the other.
    pub fn watch_tree(&self, root: &Path) -> io::Result<FolderWatch> {
        self.watch_dirs(
            (root.to_path_buf(), Kind::Tree),
            &[root.to_path_buf()],
            ENTRIES_CHANGED,
        )
    }

    /// Watches files arriving in `dir` (created, moved in or touched: the
    /// queue's `todo/` hints) until the guard is dropped.
    pub fn watch_arrivals(&self, dir: &Path) -> io::Result<FolderWatch> {
        let mask = AddWatchFlags::IN_CREATE
            | AddWatchFlags::IN_MOVED_TO
            | AddWatchFlags::IN_ATTRIB
            | AddWatchFlags::IN_ONLYDIR;
        self.watch_dirs(
            (dir.to_path_buf(), Kind::Arrivals),
            &[dir.to_path_buf()],
            mask,
        )
    }

    /// Watches `dirs` as one place, `key`.
    fn watch_dirs(
        &self,
        key: Key,
        dirs: &[PathBuf],
        mask: AddWatchFlags,
    ) -> io::Result<FolderWatch> {
        let mut folders = self.shared.folders();
        if let Some(watched) = folders.by_key.get_mut(&key) {
            watched.users += 1;
            let changes = watched.changes.subscribe();
            return Ok(FolderWatch {
                watcher: self.clone(),
                key,
                changes,
            });
        }
        let mut wds = Vec::new();
        for dir in dirs {
            match self
                .shared
                .inotify
                .get_ref()
                .0
                .add_watch(dir, mask | IN_MASK_ADD)
            {
                Ok(wd) => {
                    folders.by_wd.entry(wd).or_default().push(key.clone());
                    wds.push(wd);
                }
                Err(e) => {
                    folders.forget(&self.shared.inotify, &key, wds);
                    return Err(e.into());
                }
            }
        }
        let (changes, receiver) = watch::channel(0);
        folders.by_key.insert(
            key.clone(),
            Watched {
                wds,
                changes,
                users: 1,
            },
        );
        Ok(FolderWatch {
            watcher: self.clone(),
            key,
            changes: receiver,
        })
    }

    /// How many places are watched now (for tests).
    pub fn watched(&self) -> usize {
        self.shared.folders().by_key.len()
    }
}

impl Folders {
    /// Takes `key` off the watches `wds`, removing those it was the last
    /// place of.
    fn forget(&mut self, inotify: &AsyncFd<InotifyFd>, key: &Key, wds: Vec<WatchDescriptor>) {
        for wd in wds {
            let Some(keys) = self.by_wd.get_mut(&wd) else {
                continue;
            };
            keys.retain(|k| k != key);
            if keys.is_empty() {
                self.by_wd.remove(&wd);
                let _ = inotify.get_ref().0.rm_watch(wd);
            }
        }
    }
}

impl Shared {
    fn folders(&self) -> MutexGuard<'_, Folders> {
        // Each update of the maps is complete before anything can panic.
        self.folders.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Reads the events queued now, without waiting: the kernel queues an
    /// event within the call that made the change, so after this every
    /// change made so far has been counted.
    fn pump(&self) {
        // Nonblocking: nothing queued is EAGAIN, as is an empty queue the
        // reader task took first.
        if let Ok(events) = self.inotify.get_ref().0.read_events() {
            self.dispatch(events);
        }
    }

    /// Counts each event as a change of the places it concerns.
    fn dispatch(&self, events: Vec<InotifyEvent>) {
        let mut folders = self.folders();
        for event in events {
            if event.mask.contains(AddWatchFlags::IN_Q_OVERFLOW) {
                // Events were lost: every place may have changed.
                tracing::warn!("inotify queue overflowed; every waiter looks again");
                for watched in folders.by_key.values() {
                    watched.changes.send_modify(|n| *n += 1);
                }
                continue;
            }
            let ignored = event.mask.contains(AddWatchFlags::IN_IGNORED);
            for key in folders.by_wd.get(&event.wd).into_iter().flatten() {
                if (ignored || key.1.wakes(&event))
                    && let Some(watched) = folders.by_key.get(key)
                {
                    watched.changes.send_modify(|n| *n += 1);
                }
            }
            // The directory is gone (folder deleted): the kernel may give
            // the descriptor to a new watch, so forget this one.
            if ignored {
                folders.by_wd.remove(&event.wd);
            }
        }
    }
}

async fn read_events(shared: std::sync::Weak<Shared>) {
    loop {
        let Some(strong) = shared.upgrade() else {
            return;
        };
        let mut ready = match strong.inotify.readable().await {
            Ok(ready) => ready,
            Err(e) => {
                tracing::error!("inotify: {e}; waiters fall back to their timers");
                return;
            }
        };
        let events = match ready.try_io(|fd| fd.get_ref().0.read_events().map_err(io::Error::from))
        {
            Ok(Ok(events)) => events,
            Ok(Err(e)) => {
                tracing::error!("inotify read: {e}; waiters fall back to their timers");
                return;
            }
            Err(_would_block) => continue,
        };
        strong.dispatch(events);
    }
}

/// A waiter's interest in one watched place.
pub struct FolderWatch {
    watcher: Watcher,
    key: Key,
    changes: watch::Receiver<u64>,
}

impl FolderWatch {
    /// Waits for a change after the last one this watch saw.
    pub async fn changed(&mut self) {
        if self.changes.changed().await.is_err() {
            std::future::pending::<()>().await;
        }
    }

    /// Whether a change came after the last one this watch saw, without
    /// waiting.
    pub fn has_changed(&self) -> bool {
        self.changes.has_changed().unwrap_or(false)
    }

    /// Forgets changes so far, those still queued in the kernel included
    /// (call before a sync, so that a change made before it, this
    /// process's own too, does not wake the next wait, and a change
    /// during it does).
    pub fn mark_seen(&mut self) {
        self.watcher.shared.pump();
        self.changes.mark_unchanged();
    }
}

impl Drop for FolderWatch {
    fn drop(&mut self) {
        let mut folders = self.watcher.shared.folders();
        let Some(watched) = folders.by_key.get_mut(&self.key) else {
            return;
        };
        watched.users -= 1;
        if watched.users == 0
            && let Some(watched) = folders.by_key.remove(&self.key)
        {
            folders.forget(&self.watcher.shared.inotify, &self.key, watched.wds);
        }
    }
}
