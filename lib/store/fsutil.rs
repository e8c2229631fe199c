//! The durable-write primitives every part of the tree uses.
//!
//! The rule (postroom-tree(5), "Delivery into a maildir"): a file is fsynced before it appears under its
//! final name, and the directory is fsynced after every rename, link or unlink
//! that commits state, because fsync of a file does not make its directory
//! entry durable. Locks are `flock` on files inside the tree (never PID files,
//! never state in memory), so a crashed process's lock is freed by the kernel
//! and several hosts sharing the tree over NFSv4 see the same locks.

use std::fs::{File, OpenOptions};
use std::io::{self, Write};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{SystemTime, UNIX_EPOCH};

use fs2::FileExt;

/// What can go wrong with a plain text file of the tree (users, aliases,
/// domains): its syntax, an edit that is refused, or the file itself.
#[derive(Debug, thiserror::Error)]
pub enum FileError {
    /// A line that does not parse, named as `FILE:LINE`.
    #[error("{file}:{line}: {message}")]
    Syntax {
        file: PathBuf,
        line: usize,
        message: String,
    },
    /// An edit that would break the file (a duplicate, a missing entry).
    #[error("{0}")]
    Refused(String),
    #[error("{file}: {error}")]
    Io { file: PathBuf, error: io::Error },
    /// A file that must not be missing or empty is (the users file: see
    /// `users`).
    #[error("{file}: {message}")]
    Unavailable { file: PathBuf, message: String },
}

impl From<io::Error> for FileError {
    fn from(error: io::Error) -> Self {
        FileError::Io {
            file: PathBuf::new(),
            error,
        }
    }
}

impl FileError {
    /// A syntax error at `line` of `file`.
    pub fn syntax(file: &Path, line: usize, message: impl Into<String>) -> FileError {
        FileError::Syntax {
            file: file.to_path_buf(),
            line,
            message: message.into(),
        }
    }

    /// Reads a tree file; a missing file reads as empty, since a fresh tree
    /// may have no users, aliases or domains yet.
    pub fn read(path: &Path) -> Result<String, FileError> {
        match read_to_string_fresh(path) {
            Ok(text) => Ok(text),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(String::new()),
            Err(error) => Err(FileError::Io {
                file: path.to_path_buf(),
                error,
            }),
        }
    }
}

/// Makes the directory entries of `dir` durable.
pub fn fsync_dir(dir: &Path) -> io::Result<()> {
    File::open(dir)?.sync_all()
}

/// Makes `path` a symbolic link to `target` in one step: the link is made
/// under a hidden unique name beside it and renamed over `path`, so a
/// reader finds the old link (or file) or the new one, never none. The
/// folder is not fsynced: the caller does, once for all its changes.
pub fn symlink_atomic(target: &Path, path: &Path) -> io::Result<()> {
    let name = path.file_name().and_then(|n| n.to_str()).unwrap_or("link");
    let tmp = parent_of(path).join(format!(".{name}.{}.tmp", unique_suffix()));
    let made = std::os::unix::fs::symlink(target, &tmp).and_then(|()| std::fs::rename(&tmp, path));
    if made.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    made
}

/// The folder a path lives in (`.` for a bare name).
pub fn parent_of(path: &Path) -> &Path {
    match path.parent() {
        Some(p) if !p.as_os_str().is_empty() => p,
        _ => Path::new("."),
    }
}

/// The mode of a new secret file (password hashes, private keys, the SRS
/// secret): the owner writes, the tree's group reads (so a server running
/// as another user of that group can), everyone else nothing.
pub const SECRET_MODE: u32 = 0o640;

/// Makes sure nothing this process creates is writable by group or
/// others, whatever umask it was started with (a `umask 000` shell, a
/// service manager's default): a world-writable aliases file or queue
/// folder would let any local user run commands as the tree's owner. A
/// stricter umask is kept. Postfix and qmail do the same at start. Every
/// program calls it first thing.
pub fn tighten_umask() {
    use nix::sys::stat::{Mode, umask};
    let group_and_others_write = Mode::S_IWGRP | Mode::S_IWOTH;
    let old = umask(group_and_others_write);
    umask(old | group_and_others_write);
}

/// Replaces `path` with `data` atomically and durably: a reader sees the old
/// content or the new, never a mix, and after return the new content survives
/// a crash. The temporary name is unique per host and process so two writers
/// never share one. A file that exists keeps its mode and owner (an admin's
/// chmod or chgrp survives every edit); a new one gets the umask's mode.
pub fn write_atomic(path: &Path, data: &[u8]) -> io::Result<()> {
    replace(path, data, None)
}

/// [`write_atomic`] for a secret: a new file is made [`SECRET_MODE`]
/// whatever the umask; an existing one keeps its mode and owner.
pub fn write_secret(path: &Path, data: &[u8]) -> io::Result<()> {
    replace(path, data, Some(SECRET_MODE))
}

/// [`write_atomic`] giving the result the mode and owner of another file,
/// `model` (a file derived from it: the index of the users file holds the
/// same password hashes and must be no more readable).
pub fn write_atomic_like(path: &Path, data: &[u8], model: &std::fs::Metadata) -> io::Result<()> {
    replace_as(path, data, None, Some(model.clone()))
}

fn replace(path: &Path, data: &[u8], new_mode: Option<u32>) -> io::Result<()> {
    replace_as(path, data, new_mode, std::fs::metadata(path).ok())
}

/// The replace of `path`; `existing` is the file whose mode and owner it
/// keeps (`None`: a new file, made `new_mode` or the umask's mode).
fn replace_as(
    path: &Path,
    data: &[u8],
    new_mode: Option<u32>,
    existing: Option<std::fs::Metadata>,
) -> io::Result<()> {
    use std::os::unix::fs::{MetadataExt, OpenOptionsExt, PermissionsExt};
    let dir = parent_of(path);
    let name = path
        .file_name()
        .ok_or_else(|| io::Error::new(io::ErrorKind::InvalidInput, "path has no file name"))?;
    let tmp = dir.join(format!(
        ".{}.{}.tmp",
        name.to_string_lossy(),
        unique_suffix()
    ));
    let result = (|| {
        // The temporary file is born with no more access than the result
        // will have, so the secret is never readable in between.
        let born = match (&existing, new_mode) {
            (Some(meta), _) => meta.mode() & 0o777 & 0o700,
            (None, Some(mode)) => mode & 0o700,
            (None, None) => 0o666,
        };
        let mut file = OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(born)
            .open(&tmp)?;
        match (&existing, new_mode) {
            (Some(meta), _) => {
                keep_owner(&file, meta);
                file.set_permissions(std::fs::Permissions::from_mode(meta.mode() & 0o7777))?;
            }
            // Set explicitly: the umask must not widen or narrow a secret.
            (None, Some(mode)) => file.set_permissions(std::fs::Permissions::from_mode(mode))?,
            (None, None) => {}
        }
        file.write_all(data)?;
        file.sync_all()?;
        std::fs::rename(&tmp, path)?;
        fsync_dir(dir)
    })();
    if result.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    result
}

/// Gives the replacement the old file's owner and group. Only root may
/// give a file away; anyone else keeps at least the group when they are in
/// it. What cannot be kept is not an error: the edit itself matters more,
/// and `postroom check` reports the modes of secret files.
fn keep_owner(file: &File, old: &std::fs::Metadata) {
    use std::os::unix::fs::{MetadataExt, fchown};
    let Ok(new) = file.metadata() else { return };
    if new.uid() == old.uid() && new.gid() == old.gid() {
        return;
    }
    if fchown(file, Some(old.uid()), Some(old.gid())).is_err() {
        let _ = fchown(file, None, Some(old.gid()));
    }
}

/// An exclusive `flock` held until dropped.
#[derive(Debug)]
pub struct FileLock {
    file: File,
}

impl FileLock {
    /// Waits for an exclusive lock on `path`, creating the file if needed.
    pub fn exclusive(path: &Path) -> io::Result<FileLock> {
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .open(path)?;
        file.lock_exclusive()?;
        Ok(FileLock { file })
    }

    /// Waits for an exclusive lock on an already open file (one appended
    /// to by several processes, where the lock guards the write itself).
    pub fn exclusive_on(file: File) -> io::Result<FileLock> {
        file.lock_exclusive()?;
        Ok(FileLock { file })
    }

    /// Takes an exclusive lock on an already open file without waiting;
    /// `None` when someone else holds it.
    pub fn try_on(file: File) -> io::Result<Option<FileLock>> {
        match file.try_lock_exclusive() {
            Ok(()) => Ok(Some(FileLock { file })),
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => Ok(None),
            Err(e) if e.raw_os_error() == fs2::lock_contended_error().raw_os_error() => Ok(None),
            Err(e) => Err(e),
        }
    }

    /// The locked file.
    pub fn file(&self) -> &File {
        &self.file
    }
}

/// The lock file that guards edits of `path`: `path.lock` beside it. A
/// separate file, because the edited file is replaced by rename and a lock on
/// the old inode would not exclude a writer that opened the new one.
pub fn lock_path(path: &Path) -> PathBuf {
    let mut name = path.as_os_str().to_os_string();
    name.push(".lock");
    PathBuf::from(name)
}

/// Edits a plain text file (users, aliases, domains) under its lock: reads
/// it (empty if missing), applies `change`, writes the result atomically.
/// Hand edits stay possible because the file stays plain text; concurrent
/// `postroom` commands serialize on the lock.
pub fn edit_locked<E>(
    path: &Path,
    change: impl FnOnce(String) -> Result<String, E>,
) -> Result<(), E>
where
    E: From<io::Error>,
{
    edit(path, change, None)
}

/// [`edit_locked`] for a secret file (the users file): created
/// [`SECRET_MODE`] when missing.
pub fn edit_secret_locked<E>(
    path: &Path,
    change: impl FnOnce(String) -> Result<String, E>,
) -> Result<(), E>
where
    E: From<io::Error>,
{
    edit(path, change, Some(SECRET_MODE))
}

fn edit<E>(
    path: &Path,
    change: impl FnOnce(String) -> Result<String, E>,
    new_mode: Option<u32>,
) -> Result<(), E>
where
    E: From<io::Error>,
{
    let _lock = FileLock::exclusive(&lock_path(path))?;
    let old = match std::fs::read_to_string(path) {
        Ok(text) => text,
        Err(e) if e.kind() == io::ErrorKind::NotFound => String::new(),
        Err(e) => return Err(e.into()),
    };
    let new = change(old)?;
    replace(path, new.as_bytes(), new_mode)?;
    Ok(())
}

/// The secret kept in `path` (hex text), made on first use: 32 random
/// bytes written [`SECRET_MODE`] under the file's lock, so two processes
/// (or two hosts sharing the tree) that both find it missing agree on one.
/// Per-list unsubscribe keys are kept this way (`postroom-lists(5)`); an
/// admin may also write the file by hand, and any non-empty content is the
/// secret as it stands.
pub fn secret_or_create(path: &Path) -> io::Result<Vec<u8>> {
    let trimmed = |text: &[u8]| text.trim_ascii().to_vec();
    match read_fresh(path) {
        Ok(text) if !text.trim_ascii().is_empty() => return Ok(trimmed(&text)),
        Ok(_) => {}
        Err(e) if e.kind() == io::ErrorKind::NotFound => {}
        Err(e) => return Err(e),
    }
    let mut secret = Vec::new();
    edit_secret_locked(path, |text| -> io::Result<String> {
        if !text.trim().is_empty() {
            // Someone else made it while this process waited for the lock.
            secret = trimmed(text.as_bytes());
            return Ok(text);
        }
        let bytes: [u8; 32] = rand::random();
        let made: String = bytes.iter().map(|b| format!("{b:02x}")).collect();
        secret = made.clone().into_bytes();
        Ok(made + "\n")
    })?;
    Ok(secret)
}

/// This machine's name as unique file names carry it (Maildir's rule:
/// the host that wrote the file, not the name the config gives the mail
/// system, which every host sharing the tree has in common), read once.
pub fn this_host() -> &'static str {
    static HOST: std::sync::OnceLock<String> = std::sync::OnceLock::new();
    HOST.get_or_init(|| {
        let name = nix::unistd::gethostname()
            .ok()
            .and_then(|n| n.into_string().ok())
            .filter(|n| !n.is_empty())
            .unwrap_or_else(|| "localhost".into());
        host_for_names(&name)
    })
}

/// This host's name as it may appear in a unique file name: Maildir's rule
/// replaces `/` with `\057` and `:` with `\072` so a name never has a path
/// separator or the info separator in it.
pub fn host_for_names(hostname: &str) -> String {
    hostname.replace('/', "\\057").replace(':', "\\072")
}

/// True when `path` is on a filesystem other hosts may share: a network
/// filesystem (NFS, CephFS, SMB, AFS, 9P, Lustre), a cluster filesystem
/// (GFS2, OCFS2) or FUSE (GlusterFS, MooseFS, ceph-fuse). There inotify
/// sees only this host's changes. Unknown when statfs fails: not shared.
pub fn is_shared_filesystem(path: &Path) -> bool {
    const SHARED: [u64; 11] = [
        0x6969,      // NFS
        0x6573_5546, // FUSE
        0x00c3_6400, // CephFS
        0xfe53_4d42, // SMB2
        0xff53_4d42, // CIFS
        0x517b,      // SMB
        0x5346_414f, // AFS
        0x0102_1997, // 9P
        0x0bd0_0bd0, // Lustre
        0x0116_1970, // GFS2
        0x7461_636f, // OCFS2
    ];
    match rustix::fs::statfs(path) {
        Ok(fs) => SHARED.contains(&(fs.f_type as u64)),
        Err(_) => false,
    }
}

/// Runs `open` (an open, or an open and a read) again when it fails with
/// ESTALE. On NFS and FUSE a name whose file another host replaced (every
/// atomic write is such a replace) may still point at the old file in this
/// host's caches; the kernel drops the stale entry on the failure, so a
/// second look finds the new file. A few tries, then the error stands.
pub fn retry_stale<T>(mut open: impl FnMut() -> io::Result<T>) -> io::Result<T> {
    let mut tries = 0;
    loop {
        match open() {
            Err(e)
                if e.raw_os_error() == Some(rustix::io::Errno::STALE.raw_os_error())
                    && tries < 4 =>
            {
                tries += 1
            }
            result => return result,
        }
    }
}

/// Reads a whole file, looking again on ESTALE ([`retry_stale`]).
pub fn read_fresh(path: &Path) -> io::Result<Vec<u8>> {
    retry_stale(|| std::fs::read(path))
}

/// [`read_fresh`] as text.
pub fn read_to_string_fresh(path: &Path) -> io::Result<String> {
    retry_stale(|| std::fs::read_to_string(path))
}

/// Seconds since the Unix epoch.
pub fn now_secs() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

/// A suffix unique among all processes on all hosts sharing the tree:
/// time in microseconds, process id, a per-process counter and random bits.
/// (The qmail/Courier recipe, with randomness standing in for the inode
/// number that NFS makes unreliable.)
pub fn unique_suffix() -> String {
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or_default();
    format!(
        "M{}P{}Q{}R{:08x}",
        now.subsec_micros(),
        std::process::id(),
        COUNTER.fetch_add(1, Ordering::Relaxed),
        random_u32()
    )
}

/// 32 random bits for a unique name (a file's, a queue id's), straight
/// from the kernel: one `getrandom(2)`. Not `rand::random`: its first use
/// in a process seeds a ChaCha generator that first asks the CPU which
/// SIMD it has (a dozen `cpuid`s, each a trap to the hypervisor in a VM),
/// which costs a short-lived program like mail-inject more than the
/// syscalls of all the names it will ever make.
pub fn random_u32() -> u32 {
    use rand::RngCore;
    rand::rngs::OsRng.next_u32()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn symlink_atomic_replaces_a_link_or_a_file_and_leaves_no_temporaries() {
        let dir = tempfile::tempdir().unwrap();
        let link = dir.path().join("active.sieve");
        symlink_atomic(Path::new("a.sieve"), &link).unwrap();
        assert_eq!(std::fs::read_link(&link).unwrap(), Path::new("a.sieve"));
        symlink_atomic(Path::new("b.sieve"), &link).unwrap();
        assert_eq!(std::fs::read_link(&link).unwrap(), Path::new("b.sieve"));
        std::fs::remove_file(&link).unwrap();
        std::fs::write(&link, "keep\n").unwrap();
        symlink_atomic(Path::new("c.sieve"), &link).unwrap();
        assert_eq!(std::fs::read_link(&link).unwrap(), Path::new("c.sieve"));
        let names: Vec<_> = std::fs::read_dir(dir.path())
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        assert_eq!(names, ["active.sieve"]);
    }

    #[test]
    fn write_atomic_replaces_and_leaves_no_temporaries() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("users");
        write_atomic(&path, b"one\n").unwrap();
        write_atomic(&path, b"two\n").unwrap();
        assert_eq!(std::fs::read_to_string(&path).unwrap(), "two\n");
        assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 1);
    }

    #[test]
    fn a_secret_is_made_once_private_and_then_kept() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("secret");
        let first = secret_or_create(&path).unwrap();
        assert_eq!(first.len(), 64);
        assert_eq!(secret_or_create(&path).unwrap(), first);
        let mode = std::fs::metadata(&path).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, SECRET_MODE);
        std::fs::write(&path, "by hand\n").unwrap();
        assert_eq!(secret_or_create(&path).unwrap(), b"by hand");
    }

    #[test]
    fn replace_keeps_the_mode_and_secrets_are_born_private() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let mode = |p: &Path| std::fs::metadata(p).unwrap().permissions().mode() & 0o7777;
        let users = dir.path().join("users");
        write_secret(&users, b"a\n").unwrap();
        assert_eq!(mode(&users), 0o640);
        std::fs::set_permissions(&users, std::fs::Permissions::from_mode(0o600)).unwrap();
        edit_locked::<io::Error>(&users, |old| Ok(format!("{old}b\n"))).unwrap();
        assert_eq!(mode(&users), 0o600, "an edit keeps the admin's chmod");
        let aliases = dir.path().join("aliases");
        write_atomic(&aliases, b"x\n").unwrap();
        std::fs::set_permissions(&aliases, std::fs::Permissions::from_mode(0o604)).unwrap();
        write_atomic(&aliases, b"y\n").unwrap();
        assert_eq!(mode(&aliases), 0o604);
    }

    #[test]
    fn edit_locked_serializes_writers() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("domains");
        let threads: Vec<_> = (0..8)
            .map(|i| {
                let path = path.clone();
                std::thread::spawn(move || {
                    for j in 0..20 {
                        edit_locked::<io::Error>(&path, |old| Ok(format!("{old}d{i}-{j}\n")))
                            .unwrap();
                    }
                })
            })
            .collect();
        for t in threads {
            t.join().unwrap();
        }
        assert_eq!(std::fs::read_to_string(&path).unwrap().lines().count(), 160);
    }

    #[test]
    fn unique_suffixes_differ() {
        let a = unique_suffix();
        let b = unique_suffix();
        assert_ne!(a, b);
        assert_eq!(host_for_names("a/b:c"), "a\\057b\\072c");
    }
}
