//! Where a user's Sieve scripts live (`postroom-sieve(5)`, FILES): each
//! script is `MAILDIR/sieve/NAME.sieve`, and `MAILDIR/sieve/active.sieve`
//! is the one `mailsort` runs: a symbolic link to `NAME.sieve`, or a plain
//! file written by hand (shown to ManageSieve clients as the script
//! `active`).
//!
//! `sieve-serve` changes the folder only through this module. Every change
//! holds `sieve/.lock` (an `flock`, so sessions on several hosts sharing
//! the tree take turns) and is durable when it returns: scripts are
//! written by `fsutil::write_atomic`, the link is made under a temporary
//! name and renamed over `active.sieve`, and the folder is fsynced after
//! every rename, link and unlink. A delivery reading `active.sieve` at any
//! moment sees the old script or the new one, never a missing or partial
//! file.

use std::io;
use std::path::{Path, PathBuf};

use crate::store::fsutil::{self, FileLock};

pub use crate::store::maildir::sieve::{ACTIVE, FOLDER, SUFFIX};
/// The name a hand-written `active.sieve` is listed under; reserved, since
/// `active.sieve` is the link.
pub const ACTIVE_NAME: &str = "active";
/// The lock every change holds.
const LOCK: &str = ".lock";
/// A script name's longest form, in bytes (Pigeonhole allows 256
/// characters; file names allow 255 bytes, less the suffix).
pub const NAME_MAX: usize = 200;

/// The script `mailsort` runs for the user of `maildir`, if any.
pub fn active_path(maildir: &Path) -> PathBuf {
    maildir.join(FOLDER).join(ACTIVE)
}

/// What a user may store (`[sieve] max_scripts`, `max_script_size`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// Most scripts; 0: no limit.
    pub max_scripts: usize,
    /// Largest script, in bytes.
    pub max_size: u64,
}

impl Limits {
    pub fn from_config(config: &crate::config::Config) -> Limits {
        Limits {
            max_scripts: config.sieve.max_scripts,
            max_size: config.sieve.max_script_size,
        }
    }
}

/// Why a change was refused or failed. The first ones are the user's to
/// fix and map to ManageSieve's response codes.
#[derive(Debug, thiserror::Error)]
pub enum StorageError {
    #[error("there is no script {0:?}")]
    NonExistent(String),
    #[error("there is already a script {0:?}; delete or rename it first")]
    AlreadyExists(String),
    #[error("{0:?} is the active script; activate another (or none) first")]
    Active(String),
    #[error("at most {0} scripts; delete one first")]
    TooMany(usize),
    #[error("a script may be at most {0} bytes")]
    TooBig(u64),
    #[error("bad script name: {0}")]
    BadName(&'static str),
    #[error("the scripts folder: {0}")]
    Io(#[from] io::Error),
}

/// Checks a script name (RFC 5804 §1.6: no control characters; here also
/// what makes it a safe file name).
pub fn check_name(name: &str) -> Result<(), StorageError> {
    if name.is_empty() {
        return Err(StorageError::BadName("empty"));
    }
    if name.len() > NAME_MAX {
        return Err(StorageError::BadName("longer than 200 bytes"));
    }
    if name
        .chars()
        .any(|c| c.is_control() || c == '\u{2028}' || c == '\u{2029}')
    {
        return Err(StorageError::BadName("control characters are not allowed"));
    }
    if name.contains('/') {
        return Err(StorageError::BadName("\"/\" is not allowed"));
    }
    if name.starts_with('.') {
        return Err(StorageError::BadName("may not begin with \".\""));
    }
    Ok(())
}

/// A new script's name: as [`check_name`], and not the reserved `active`.
fn check_new_name(name: &str) -> Result<(), StorageError> {
    check_name(name)?;
    if name == ACTIVE_NAME {
        return Err(StorageError::BadName(
            "\"active\" is reserved (sieve/active.sieve says which script runs)",
        ));
    }
    Ok(())
}

/// What `active.sieve` is now.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Active {
    None,
    /// A link to `NAME.sieve` in the folder.
    Link(String),
    /// A plain file: the script `active`.
    File,
    /// A link elsewhere, set up by hand: runs, but names no script here.
    Foreign,
}

/// One user's scripts.
#[derive(Debug, Clone)]
pub struct Scripts {
    dir: PathBuf,
}

impl Scripts {
    /// The scripts of the user whose maildir is `maildir`.
    pub fn of(maildir: &Path) -> Scripts {
        Scripts {
            dir: maildir.join(FOLDER),
        }
    }

    fn file(&self, name: &str) -> PathBuf {
        self.dir.join(format!("{name}{SUFFIX}"))
    }

    fn active(&self) -> io::Result<Active> {
        let path = self.dir.join(ACTIVE);
        let meta = match std::fs::symlink_metadata(&path) {
            Ok(meta) => meta,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(Active::None),
            Err(e) => return Err(e),
        };
        if !meta.file_type().is_symlink() {
            return Ok(Active::File);
        }
        let target = std::fs::read_link(&path)?;
        let name = target
            .to_str()
            .filter(|t| !t.contains('/'))
            .and_then(|t| t.strip_suffix(SUFFIX))
            .filter(|n| check_name(n).is_ok() && *n != ACTIVE_NAME);
        Ok(match name {
            Some(name) => Active::Link(name.to_string()),
            None => Active::Foreign,
        })
    }

    /// The name of the script that runs, if it is one of the user's.
    fn active_name(&self) -> io::Result<Option<String>> {
        Ok(match self.active()? {
            Active::Link(name) => Some(name),
            Active::File => Some(ACTIVE_NAME.to_string()),
            Active::None | Active::Foreign => None,
        })
    }

    /// Every script, sorted by name, and whether it is the active one.
    pub fn list(&self) -> Result<Vec<(String, bool)>, StorageError> {
        let active = self.active_name()?;
        let mut names = self.names()?;
        names.sort();
        Ok(names
            .into_iter()
            .map(|name| {
                let is_active = active.as_deref() == Some(name.as_str());
                (name, is_active)
            })
            .collect())
    }

    /// The names of the scripts, the hand-written `active` included.
    fn names(&self) -> io::Result<Vec<String>> {
        let entries = match std::fs::read_dir(&self.dir) {
            Ok(entries) => entries,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(Vec::new()),
            Err(e) => return Err(e),
        };
        let mut names = Vec::new();
        for entry in entries {
            let entry = entry?;
            let file = entry.file_name();
            let Some(name) = file.to_str().and_then(|f| f.strip_suffix(SUFFIX)) else {
                continue;
            };
            if check_name(name).is_err() {
                continue;
            }
            if name == ACTIVE_NAME && entry.file_type()?.is_symlink() {
                continue;
            }
            names.push(name.to_string());
        }
        Ok(names)
    }

    fn exists(&self, name: &str) -> io::Result<bool> {
        if name == ACTIVE_NAME {
            return Ok(self.active()? == Active::File);
        }
        match std::fs::symlink_metadata(self.file(name)) {
            Ok(meta) => Ok(meta.is_file()),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(false),
            Err(e) => Err(e),
        }
    }

    /// A script's text.
    pub fn get(&self, name: &str) -> Result<Vec<u8>, StorageError> {
        check_name(name)?;
        if !self.exists(name)? {
            return Err(StorageError::NonExistent(name.into()));
        }
        match std::fs::read(self.file(name)) {
            Ok(text) => Ok(text),
            Err(e) if e.kind() == io::ErrorKind::NotFound => {
                Err(StorageError::NonExistent(name.into()))
            }
            Err(e) => Err(e.into()),
        }
    }

    /// Whether a script `name` of `size` bytes could be stored now
    /// (RFC 5804 HAVESPACE).
    pub fn have_space(&self, name: &str, size: u64, limits: Limits) -> Result<(), StorageError> {
        check_new_name(name)?;
        if size > limits.max_size {
            return Err(StorageError::TooBig(limits.max_size));
        }
        if limits.max_scripts > 0 && !self.exists(name)? {
            let count = self.names()?.len();
            if count >= limits.max_scripts {
                return Err(StorageError::TooMany(limits.max_scripts));
            }
        }
        Ok(())
    }

    /// Stores a script (a new one, or a new version). The caller has
    /// checked that it compiles.
    pub fn put(&self, name: &str, script: &[u8], limits: Limits) -> Result<(), StorageError> {
        let _lock = self.lock()?;
        self.have_space(name, script.len() as u64, limits)?;
        fsutil::write_atomic(&self.file(name), script)?;
        Ok(())
    }

    /// Makes `name` the script `mailsort` runs, or none (`None`). A
    /// hand-written `active.sieve` is kept as the script `active-orig`
    /// (or `active-orig-2`, …) rather than lost.
    pub fn set_active(&self, name: Option<&str>) -> Result<(), StorageError> {
        if let Some(name) = name {
            check_name(name)?;
        }
        let _lock = self.lock()?;
        let current = self.active()?;
        match name {
            Some(name) if !self.exists(name)? => Err(StorageError::NonExistent(name.into())),
            Some(ACTIVE_NAME) => Ok(()),
            Some(name) => {
                if current == Active::File {
                    self.keep_hand_written()?;
                }
                self.link_active(name)
            }
            None => {
                match current {
                    Active::None => {}
                    Active::File => self.keep_hand_written()?,
                    Active::Link(_) | Active::Foreign => {
                        std::fs::remove_file(self.dir.join(ACTIVE))?;
                    }
                }
                fsutil::fsync_dir(&self.dir)?;
                Ok(())
            }
        }
    }

    /// Deletes a script other than the active one.
    pub fn delete(&self, name: &str) -> Result<(), StorageError> {
        check_name(name)?;
        let _lock = self.lock()?;
        if !self.exists(name)? {
            return Err(StorageError::NonExistent(name.into()));
        }
        if self.active_name()?.as_deref() == Some(name) {
            return Err(StorageError::Active(name.into()));
        }
        std::fs::remove_file(self.file(name))?;
        fsutil::fsync_dir(&self.dir)?;
        Ok(())
    }

    /// Renames a script; if it is the active one it stays active, and a
    /// delivery meanwhile finds it under one name or the other.
    pub fn rename(&self, old: &str, new: &str) -> Result<(), StorageError> {
        check_name(old)?;
        check_new_name(new)?;
        let _lock = self.lock()?;
        if !self.exists(old)? {
            return Err(StorageError::NonExistent(old.into()));
        }
        if self.exists(new)? {
            return Err(StorageError::AlreadyExists(new.into()));
        }
        let was_active = self.active_name()?.as_deref() == Some(old);
        // A link, not a rename: the new name exists before the old one
        // goes, and an existing file is never overwritten.
        std::fs::hard_link(self.file(old), self.file(new))?;
        if was_active {
            // For the hand-written `active`, this replaces the file itself
            // with the link: its text now lives under the new name.
            self.link_active(new)?;
        }
        if old != ACTIVE_NAME {
            std::fs::remove_file(self.file(old))?;
        }
        fsutil::fsync_dir(&self.dir)?;
        Ok(())
    }

    /// Points `active.sieve` at `name`, replacing whatever it was in one
    /// rename.
    fn link_active(&self, name: &str) -> Result<(), StorageError> {
        fsutil::symlink_atomic(
            Path::new(&format!("{name}{SUFFIX}")),
            &self.dir.join(ACTIVE),
        )?;
        fsutil::fsync_dir(&self.dir)?;
        Ok(())
    }

    /// Moves a hand-written `active.sieve` to a free `active-orig` name.
    fn keep_hand_written(&self) -> Result<(), StorageError> {
        for n in 1..=100 {
            let name = match n {
                1 => "active-orig".to_string(),
                n => format!("active-orig-{n}"),
            };
            match std::fs::hard_link(self.dir.join(ACTIVE), self.file(&name)) {
                Ok(()) => {
                    std::fs::remove_file(self.dir.join(ACTIVE))?;
                    fsutil::fsync_dir(&self.dir)?;
                    return Ok(());
                }
                Err(e) if e.kind() == io::ErrorKind::AlreadyExists => continue,
                Err(e) => return Err(e.into()),
            }
        }
        Err(StorageError::AlreadyExists("active-orig".into()))
    }

    fn create_folder(&self) -> io::Result<()> {
        if self.dir.is_dir() {
            return Ok(());
        }
        std::fs::create_dir_all(&self.dir)?;
        fsutil::fsync_dir(fsutil::parent_of(&self.dir))
    }

    fn lock(&self) -> io::Result<FileLock> {
        self.create_folder()?;
        FileLock::exclusive(&self.dir.join(LOCK))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const LIMITS: Limits = Limits {
        max_scripts: 3,
        max_size: 100,
    };

    fn scripts() -> (tempfile::TempDir, Scripts) {
        let dir = tempfile::tempdir().unwrap();
        let scripts = Scripts::of(dir.path());
        (dir, scripts)
    }

    #[test]
    fn put_activate_rename_delete() {
        let (dir, s) = scripts();
        assert_eq!(s.list().unwrap(), vec![]);
        s.put("work", b"keep;", LIMITS).unwrap();
        s.put("home", b"discard;", LIMITS).unwrap();
        assert_eq!(
            s.list().unwrap(),
            vec![("home".into(), false), ("work".into(), false)]
        );
        s.set_active(Some("work")).unwrap();
        let active = active_path(dir.path());
        assert_eq!(std::fs::read(&active).unwrap(), b"keep;");
        assert_eq!(
            std::fs::read_link(&active).unwrap(),
            PathBuf::from("work.sieve")
        );
        assert!(matches!(
            s.delete("work"),
            Err(StorageError::Active(n)) if n == "work"
        ));
        s.rename("work", "office").unwrap();
        assert_eq!(std::fs::read(&active).unwrap(), b"keep;", "still active");
        assert_eq!(
            s.list().unwrap(),
            vec![("home".into(), false), ("office".into(), true)]
        );
        assert!(matches!(
            s.rename("home", "office"),
            Err(StorageError::AlreadyExists(_))
        ));
        assert!(matches!(s.get("work"), Err(StorageError::NonExistent(_))));
        s.set_active(None).unwrap();
        assert!(!active.exists());
        s.delete("office").unwrap();
        assert_eq!(s.list().unwrap(), vec![("home".into(), false)]);
        // Nothing left behind but the lock.
        let mut files: Vec<String> = std::fs::read_dir(dir.path().join(FOLDER))
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        files.sort();
        assert_eq!(files, vec![".lock", "home.sieve"]);
    }

    #[test]
    fn limits_count_new_scripts_only() {
        let (_dir, s) = scripts();
        for name in ["a", "b", "c"] {
            s.put(name, b"keep;", LIMITS).unwrap();
        }
        assert!(matches!(
            s.put("d", b"keep;", LIMITS),
            Err(StorageError::TooMany(3))
        ));
        // A new version of one that exists is no new script.
        s.put("a", b"discard;", LIMITS).unwrap();
        assert!(matches!(
            s.put("a", &[b' '; 101], LIMITS),
            Err(StorageError::TooBig(100))
        ));
        assert!(s.have_space("a", 100, LIMITS).is_ok());
        assert!(matches!(
            s.have_space("d", 1, LIMITS),
            Err(StorageError::TooMany(3))
        ));
        let unlimited = Limits {
            max_scripts: 0,
            ..LIMITS
        };
        s.put("d", b"keep;", unlimited).unwrap();
    }

    #[test]
    fn a_hand_written_active_script_is_listed_and_kept() {
        let (dir, s) = scripts();
        std::fs::create_dir(dir.path().join(FOLDER)).unwrap();
        let active = active_path(dir.path());
        std::fs::write(&active, b"discard;").unwrap();
        assert_eq!(s.list().unwrap(), vec![("active".into(), true)]);
        assert_eq!(s.get("active").unwrap(), b"discard;");
        assert!(matches!(s.delete("active"), Err(StorageError::Active(_))));
        assert!(matches!(
            s.put("active", b"keep;", LIMITS),
            Err(StorageError::BadName(_))
        ));
        s.put("new", b"keep;", LIMITS).unwrap();
        s.set_active(Some("new")).unwrap();
        assert_eq!(
            s.list().unwrap(),
            vec![("active-orig".into(), false), ("new".into(), true)]
        );
        assert_eq!(s.get("active-orig").unwrap(), b"discard;");

        // Renaming a hand-written active script makes it a managed one.
        std::fs::remove_file(&active).unwrap();
        std::fs::write(&active, b"stop;").unwrap();
        s.rename("active", "mine").unwrap();
        assert_eq!(
            std::fs::read_link(&active).unwrap(),
            PathBuf::from("mine.sieve")
        );
        assert_eq!(std::fs::read(&active).unwrap(), b"stop;");
    }

    /// Sessions racing for the last places: the lock lets exactly the
    /// limit through, and every stored script is whole.
    #[test]
    fn concurrent_puts_respect_the_count() {
        let (_dir, s) = scripts();
        let limits = Limits {
            max_scripts: 5,
            max_size: 1000,
        };
        let stored: usize = std::thread::scope(|scope| {
            let handles: Vec<_> = (0..16)
                .map(|i| {
                    let s = s.clone();
                    scope.spawn(move || {
                        let text = format!("# script {i}\n{}keep;\n", "#\n".repeat(i * 20));
                        s.put(&format!("s{i}"), text.as_bytes(), limits).is_ok()
                    })
                })
                .collect();
            handles
                .into_iter()
                .map(|h| usize::from(h.join().unwrap()))
                .sum()
        });
        assert_eq!(stored, 5);
        let list = s.list().unwrap();
        assert_eq!(list.len(), 5);
        for (name, _) in list {
            let i: usize = name[1..].parse().unwrap();
            let text = String::from_utf8(s.get(&name).unwrap()).unwrap();
            assert!(text.starts_with(&format!("# script {i}\n")) && text.ends_with("keep;\n"));
        }
    }

    #[test]
    fn names_that_are_not_safe_file_names_are_refused() {
        for bad in ["", ".hidden", "a/b", "../x", "tab\there", "line\nbreak"] {
            assert!(
                matches!(check_name(bad), Err(StorageError::BadName(_))),
                "{bad:?}"
            );
        }
        assert!(check_name(&"x".repeat(NAME_MAX + 1)).is_err());
        for good in ["work", "Büro", "my rules", "a.b"] {
            check_name(good).unwrap();
        }
    }
}
