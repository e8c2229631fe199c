//! A table read from files (the users file; users, aliases and domains;
//! the access rules) that a long-running server reloads when an admin
//! changes one of them.
//!
//! A file's version is its own (device, inode, modification time to the
//! nanosecond, size), compared file by file: a file replaced by rename gets
//! a new inode, and one copied in with an older time (`cp -p`, `rsync -t`)
//! still differs, where "the newest mtime moved" missed it.
//!
//! A new version that does not load (a syntax error, a users file emptied by
//! accident: see `postroom-users(5)`) leaves the last good table in force
//! and is logged once; it is tried again only when a file changes again, so
//! a broken file costs no reparse and no log line per lookup.

use std::os::unix::fs::MetadataExt;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};

use crate::config::Config;
use crate::directory::access::Access;
use crate::directory::aliases::Directory;
use crate::directory::users::Users;
use crate::store::fsutil::FileError;

/// What a file was when last looked at; `None` in [`Reloading`]'s list
/// when it did not exist.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Version {
    dev: u64,
    ino: u64,
    mtime: i64,
    mtime_nsec: i64,
    size: u64,
}

type Loader<T> = Box<dyn Fn() -> Result<T, FileError> + Send + Sync>;

/// A table of type `T`, reloaded from its files when they change.
pub struct Reloading<T> {
    files: Vec<PathBuf>,
    load: Loader<T>,
    state: Mutex<(Arc<T>, Vec<Option<Version>>)>,
}

impl<T> Reloading<T> {
    /// Loads the table now with `first` (an error here is the caller's to
    /// report: a server should not start on a broken file) and remembers
    /// the versions of `files`, the files it reads; later versions are
    /// read with `reload`, which may be stricter (the users file: a load
    /// at start accepts a missing file as "no users known yet", a reload
    /// refuses it and keeps the last good copy).
    pub fn new(
        files: Vec<PathBuf>,
        first: impl FnOnce() -> Result<T, FileError>,
        reload: impl Fn() -> Result<T, FileError> + Send + Sync + 'static,
    ) -> Result<Reloading<T>, FileError> {
        let seen = versions(&files);
        let value = Arc::new(first()?);
        Ok(Reloading {
            files,
            load: Box::new(reload),
            state: Mutex::new((value, seen)),
        })
    }

    /// The table, reloaded first if one of its files changed since the
    /// last look.
    pub fn current(&self) -> Arc<T> {
        let now = versions(&self.files);
        let mut state = self.state.lock().unwrap_or_else(|p| p.into_inner());
        if state.1 != now {
            match (self.load)() {
                Ok(value) => state.0 = Arc::new(value),
                Err(e) => tracing::error!("{e}; the previous version stays in force"),
            }
            state.1 = now;
        }
        state.0.clone()
    }
}

impl Reloading<Users> {
    /// The users file (`postroom-users(5)`): at start a missing file means
    /// "no users known yet"; later, a missing or emptied one keeps the last
    /// good copy.
    pub fn users(config: &Config) -> Result<Reloading<Users>, FileError> {
        let file = config.users_file();
        Reloading::new(vec![file.clone()], || Users::load(&file), {
            let file = file.clone();
            move || Users::reload(&file)
        })
    }
}

impl Reloading<Access> {
    /// The access rules (`postroom-access(5)`).
    pub fn access(config: &Config) -> Result<Reloading<Access>, FileError> {
        let file = config.access_file();
        Reloading::new(vec![file.clone()], || Access::load(&file), {
            let file = file.clone();
            move || Access::load(&file)
        })
    }
}

/// What a login server (pop3-serve, imap-serve, sieve-serve) reads from
/// the tree: the users and the access rules, each reloaded when it changes.
pub struct LoginFiles {
    users: Reloading<Users>,
    access: Reloading<Access>,
}

impl LoginFiles {
    pub fn load(config: &Config) -> Result<LoginFiles, FileError> {
        Ok(LoginFiles {
            users: Reloading::users(config)?,
            access: Reloading::access(config)?,
        })
    }

    /// The users, reloaded if the file changed; a version that does not
    /// load keeps the last good one in force (logged).
    pub fn users(&self) -> Arc<Users> {
        self.users.current()
    }

    /// The access rules, reloaded the same way.
    pub fn access(&self) -> Arc<Access> {
        self.access.current()
    }

    /// Whether the access file lets a client at `peer` connect (a pipe
    /// with no peer address is the launcher's business).
    pub fn admits(&self, peer: Option<std::net::SocketAddr>) -> bool {
        peer.is_none_or(|p| self.access().allows(p.ip()))
    }
}

impl Reloading<Directory> {
    /// Users, aliases and domains together, as delivery looks them up.
    pub fn directory(config: &Config) -> Result<Reloading<Directory>, FileError> {
        let files = vec![
            config.users_file(),
            config.aliases_file(),
            config.domains_file(),
        ];
        let reload = {
            let config = config.clone();
            move || Directory::reload(&config)
        };
        Reloading::new(files, || Directory::load(config), reload)
    }
}

fn versions(files: &[PathBuf]) -> Vec<Option<Version>> {
    files
        .iter()
        .map(|path| {
            std::fs::metadata(path).ok().map(|m| Version {
                dev: m.dev(),
                ino: m.ino(),
                mtime: m.mtime(),
                mtime_nsec: m.mtime_nsec(),
                size: m.size(),
            })
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicUsize, Ordering};

    fn table(dir: &std::path::Path) -> (Reloading<String>, Arc<AtomicUsize>) {
        let loads = Arc::new(AtomicUsize::new(0));
        let counter = loads.clone();
        let path = dir.join("table");
        let first = {
            let path = path.clone();
            move || Ok(std::fs::read_to_string(&path).unwrap_or_default())
        };
        let reloading = Reloading::new(vec![path.clone()], first, move || {
            counter.fetch_add(1, Ordering::SeqCst);
            let text = std::fs::read_to_string(&path).map_err(|error| FileError::Io {
                file: path.clone(),
                error,
            })?;
            if text.contains("broken") {
                return Err(FileError::Syntax {
                    file: path.clone(),
                    line: 1,
                    message: "does not parse".into(),
                });
            }
            Ok(text)
        })
        .unwrap();
        (reloading, loads)
    }

    #[test]
    fn a_file_replaced_with_an_older_time_is_still_read() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("table");
        std::fs::write(&path, "one").unwrap();
        let (table, loads) = table(dir.path());
        assert_eq!(*table.current(), "one");
        assert_eq!(loads.load(Ordering::SeqCst), 0, "no change, no reload");
        // `cp -p` of an older file: a new inode with an older mtime.
        let old = dir.path().join("old");
        std::fs::write(&old, "two").unwrap();
        let past = std::time::SystemTime::UNIX_EPOCH + std::time::Duration::from_secs(1_000_000);
        std::fs::File::options()
            .write(true)
            .open(&old)
            .unwrap()
            .set_modified(past)
            .unwrap();
        std::fs::rename(&old, &path).unwrap();
        assert_eq!(*table.current(), "two");
    }

    #[test]
    fn a_broken_version_keeps_the_last_good_one_and_is_tried_once() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("table");
        std::fs::write(&path, "good").unwrap();
        let (table, loads) = table(dir.path());
        std::fs::write(&path, "broken!").unwrap();
        for _ in 0..5 {
            assert_eq!(*table.current(), "good");
        }
        assert_eq!(
            loads.load(Ordering::SeqCst),
            1,
            "the broken file is read once"
        );
        std::fs::remove_file(&path).unwrap();
        assert_eq!(*table.current(), "good", "a missing file too");
        std::fs::write(&path, "fixed").unwrap();
        assert_eq!(*table.current(), "fixed");
    }
}
