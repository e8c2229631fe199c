//! Waking sessions when a folder changes, by inotify rather than polling.
//!
//! One inotify instance per process, shared by every session in it: the
//! kernel allows few instances per user (128 by default) but many watches,
//! so 10,000 IDLE sessions cost one file descriptor. Sessions watching the
//! same folder share its watches. Each folder has a counter that goes up on
//! every change to its `new/` or `cur/` (a delivery, a flag rename, an
//! expunge); a session remembers the value it has seen and waits for a
//! larger one, so no wakeup is lost between a sync and the wait.
//!
//! inotify does not see changes made on other hosts of a shared filesystem
//! (postroom-tree(5), SEVERAL HOSTS): IDLE also re-syncs on a timer as a safety net.

use std::collections::HashMap;
use std::io;
use std::os::fd::{AsFd, AsRawFd, RawFd};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};

use nix::sys::inotify::{AddWatchFlags, InitFlags, Inotify, WatchDescriptor};
use tokio::io::unix::AsyncFd;
use tokio::sync::watch;

/// The process's inotify instance and the folders it watches.
#[derive(Clone)]
pub struct Watcher {
    shared: Arc<Shared>,
}

struct Shared {
    inotify: AsyncFd<InotifyFd>,
    folders: Mutex<Folders>,
}

#[derive(Default)]
struct Folders {
    by_path: HashMap<PathBuf, Watched>,
    by_wd: HashMap<WatchDescriptor, PathBuf>,
}

struct Watched {
    wds: Vec<WatchDescriptor>,
    changes: watch::Sender<u64>,
    users: usize,
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

    /// Watches the folder at `dir` until the returned guard is dropped.
    pub fn watch(&self, dir: &Path) -> io::Result<FolderWatch> {
        let mut folders = self.shared.folders();
        if let Some(watched) = folders.by_path.get_mut(dir) {
            watched.users += 1;
            let changes = watched.changes.subscribe();
            return Ok(FolderWatch {
                watcher: self.clone(),
                dir: dir.to_path_buf(),
                changes,
            });
        }
        let mask = AddWatchFlags::IN_CREATE
            | AddWatchFlags::IN_DELETE
            | AddWatchFlags::IN_MOVED_FROM
            | AddWatchFlags::IN_MOVED_TO
            | AddWatchFlags::IN_ONLYDIR;
        let mut wds = Vec::new();
        for sub in ["new", "cur"] {
            match self
                .shared
                .inotify
                .get_ref()
                .0
                .add_watch(&dir.join(sub), mask)
            {
                Ok(wd) => wds.push(wd),
                Err(e) => {
                    for wd in wds {
                        let _ = self.shared.inotify.get_ref().0.rm_watch(wd);
                    }
                    return Err(e.into());
                }
            }
        }
        let (changes, receiver) = watch::channel(0);
        for wd in &wds {
            folders.by_wd.insert(*wd, dir.to_path_buf());
        }
        folders.by_path.insert(
            dir.to_path_buf(),
            Watched {
                wds,
                changes,
                users: 1,
            },
        );
        Ok(FolderWatch {
            watcher: self.clone(),
            dir: dir.to_path_buf(),
            changes: receiver,
        })
    }

    /// How many folders are watched now (for tests).
    pub fn watched(&self) -> usize {
        self.shared.folders().by_path.len()
    }
}

impl Shared {
    fn folders(&self) -> MutexGuard<'_, Folders> {
        // Each update of the maps is complete before anything can panic.
        self.folders.lock().unwrap_or_else(PoisonError::into_inner)
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
                tracing::error!("inotify: {e}; IDLE falls back to its timer");
                return;
            }
        };
        let events = match ready.try_io(|fd| fd.get_ref().0.read_events().map_err(io::Error::from))
        {
            Ok(Ok(events)) => events,
            Ok(Err(e)) => {
                tracing::error!("inotify read: {e}; IDLE falls back to its timer");
                return;
            }
            Err(_would_block) => continue,
        };
        let mut folders = strong.folders();
        for event in events {
            if let Some(dir) = folders.by_wd.get(&event.wd)
                && let Some(watched) = folders.by_path.get(dir)
            {
                watched.changes.send_modify(|n| *n += 1);
            }
            // The directory is gone (folder deleted): the kernel may give
            // the descriptor to a new watch, so forget this one.
            if event.mask.contains(AddWatchFlags::IN_IGNORED) {
                folders.by_wd.remove(&event.wd);
            }
        }
    }
}

/// A session's interest in one folder.
pub struct FolderWatch {
    watcher: Watcher,
    dir: PathBuf,
    changes: watch::Receiver<u64>,
}

impl FolderWatch {
    /// Waits for a change after the last one this watch saw.
    pub async fn changed(&mut self) {
        if self.changes.changed().await.is_err() {
            std::future::pending::<()>().await;
        }
    }

    /// Forgets changes so far (call before a sync, so a change during it
    /// wakes the next wait).
    pub fn mark_seen(&mut self) {
        self.changes.mark_unchanged();
    }
}

impl Drop for FolderWatch {
    fn drop(&mut self) {
        let mut folders = self.watcher.shared.folders();
        let Some(watched) = folders.by_path.get_mut(&self.dir) else {
            return;
        };
        watched.users -= 1;
        if watched.users == 0
            && let Some(watched) = folders.by_path.remove(&self.dir)
        {
            for wd in watched.wds {
                folders.by_wd.remove(&wd);
                let _ = self.watcher.shared.inotify.get_ref().0.rm_watch(wd);
            }
        }
    }
}
