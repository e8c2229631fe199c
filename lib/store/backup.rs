//! `postroom backup` and `restore`: the tree's config, users, aliases,
//! domains, access rules, keys, lists, Sieve scripts, state and (with
//! `mail`) every mailbox and the queue, as one zstd-compressed tar file.
//!
//! Servers may run meanwhile. What they change is read under the lock they
//! change it under: each mailbox folder under its uidlist lock (so its
//! list, keywords and message names agree; a message renamed for a flag
//! change is found again by its base name), each queued message and its
//! log under the message's lock. Files the tree replaces by rename (users,
//! aliases, lists) are whole whenever they are read. Caches and lock files
//! are left out: they are rebuilt.
//!
//! Entries are named by what they are, not where they were (`users`,
//! `mail/DOMAIN/USER/...`, `dkim/DOMAIN/SELECTOR.pem`, `config/postroom.toml`),
//! so a restore puts each where the config being restored into says:
//! the tree may move, or keep its config in /etc and its data elsewhere.

use std::collections::BTreeSet;
use std::ffi::OsStr;
use std::fs::{self, File, OpenOptions};
use std::io::{self, BufWriter, Read, Write};
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Component, Path, PathBuf};
use std::time::Duration;

use crate::config::Config;
use crate::store::fsutil;
use crate::store::mailbox::uidlist::UidLock;
use crate::store::maildir::sieve;
use crate::store::queue::{Queue, QueueError};

/// Where the config goes in the archive; it comes first, so a restore
/// can read it before placing anything else.
pub const CONFIG_ENTRY: &str = "config/postroom.toml";

#[derive(Debug, thiserror::Error)]
pub enum BackupError {
    #[error("{path}: {error}")]
    Io { path: PathBuf, error: io::Error },
    #[error(transparent)]
    Queue(#[from] QueueError),
    #[error("{0}")]
    Archive(String),
}

fn io_err(path: &Path) -> impl FnOnce(io::Error) -> BackupError + '_ {
    move |error| BackupError::Io {
        path: path.to_path_buf(),
        error,
    }
}

/// What a backup holds.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct BackupReport {
    pub files: usize,
    pub bytes: u64,
    /// Queued messages read without their lock (a runner held it for
    /// longer than the wait); safe, as the message file never changes
    /// and log lines are appended whole.
    pub unlocked: usize,
}

/// Skipped everywhere: locks (a restored one would look held) and caches
/// the programs rebuild.
fn skipped(name: &str) -> bool {
    name.ends_with(".lock")
        || name == "postroom-cache"
        || name == crate::store::mailbox::index::FILE
        || name == "postroom-pop3-sizes"
        || name.starts_with(".postroom-restore-")
}

struct Writer {
    tar: tar::Builder<zstd::Encoder<'static, BufWriter<File>>>,
    report: BackupReport,
    /// The archive itself, never put in itself.
    exclude: PathBuf,
}

impl Writer {
    /// Adds the file at `path` as `name`; false if it is gone.
    fn file(&mut self, path: &Path, name: &Path) -> Result<bool, BackupError> {
        if path == self.exclude {
            return Ok(true);
        }
        let mut file = match File::open(path) {
            Ok(file) => file,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(false),
            Err(e) => return Err(io_err(path)(e)),
        };
        let meta = file.metadata().map_err(io_err(path))?;
        if !meta.is_file() {
            return Ok(true);
        }
        // Read first, so the header gives the size actually read.
        let mut data = Vec::with_capacity(meta.len() as usize);
        file.read_to_end(&mut data).map_err(io_err(path))?;
        let mut header = tar::Header::new_gnu();
        header.set_metadata(&meta);
        header.set_size(data.len() as u64);
        self.tar
            .append_data(&mut header, name, data.as_slice())
            .map_err(io_err(path))?;
        self.report.files += 1;
        self.report.bytes += data.len() as u64;
        Ok(true)
    }

    fn dir(&mut self, path: &Path, name: &Path) -> Result<(), BackupError> {
        let meta = fs::metadata(path).map_err(io_err(path))?;
        let mut header = tar::Header::new_gnu();
        header.set_metadata(&meta);
        header.set_entry_type(tar::EntryType::Directory);
        header.set_size(0);
        self.tar
            .append_data(&mut header, name, io::empty())
            .map_err(io_err(path))
    }

    /// `sieve/active.sieve` as the link it is ([`is_script_link`]); any
    /// other link is left out: restoring it could point into another
    /// user's files.
    fn link(&mut self, path: &Path, name: &Path) -> Result<(), BackupError> {
        let target = match fs::read_link(path) {
            Ok(target) => target,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(()),
            Err(e) => return Err(io_err(path)(e)),
        };
        if !is_script_link(path, &target) {
            tracing::warn!(
                "{}: a link to {} is not backed up (only sieve/active.sieve links to a script beside them are)",
                path.display(),
                target.display()
            );
            return Ok(());
        }
        let meta = fs::symlink_metadata(path).map_err(io_err(path))?;
        let mut header = tar::Header::new_gnu();
        header.set_metadata(&meta);
        header.set_entry_type(tar::EntryType::Symlink);
        header.set_size(0);
        self.tar
            .append_link(&mut header, name, &target)
            .map_err(io_err(path))?;
        self.report.files += 1;
        Ok(())
    }

    /// A folder and everything under it (missing: nothing).
    fn tree(&mut self, path: &Path, name: &Path) -> Result<(), BackupError> {
        let entries = match fs::read_dir(path) {
            Ok(entries) => entries,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(()),
            Err(e) => return Err(io_err(path)(e)),
        };
        self.dir(path, name)?;
        let mut children: Vec<_> = entries.filter_map(|e| e.ok()).collect();
        children.sort_by_key(|e| e.file_name());
        for child in children {
            let file_name = child.file_name();
            let text = file_name.to_string_lossy();
            if skipped(&text) {
                continue;
            }
            let kind = child.file_type().map_err(io_err(&child.path()))?;
            if kind.is_dir() {
                self.tree(&child.path(), &name.join(&file_name))?;
            } else if kind.is_file() {
                self.file(&child.path(), &name.join(&file_name))?;
            } else if kind.is_symlink() {
                self.link(&child.path(), &name.join(&file_name))?;
            }
        }
        Ok(())
    }

    /// One Maildir++ folder under its uidlist lock, then its subfolders
    /// (each under its own) and anything else beside them (`sieve/`).
    fn maildir(&mut self, path: &Path, name: &Path) -> Result<(), BackupError> {
        let mut children: Vec<_> = fs::read_dir(path)
            .map_err(io_err(path))?
            .filter_map(|e| e.ok())
            .collect();
        children.sort_by_key(|e| e.file_name());
        {
            let _lock = UidLock::acquire(path).map_err(io_err(path))?;
            self.dir(path, name)?;
            for child in &children {
                let file_name = child.file_name();
                if skipped(&file_name.to_string_lossy()) {
                    continue;
                }
                if child.file_type().is_ok_and(|t| t.is_file()) {
                    self.file(&child.path(), &name.join(&file_name))?;
                }
            }
            for sub in ["new", "cur"] {
                self.messages(&path.join(sub), &name.join(sub), &path.join("cur"))?;
            }
            if path.join("tmp").is_dir() {
                self.dir(&path.join("tmp"), &name.join("tmp"))?;
            }
        }
        for child in children {
            let file_name = child.file_name();
            if ["new", "cur", "tmp"].iter().any(|s| file_name == *s)
                || !child.file_type().is_ok_and(|t| t.is_dir())
            {
                continue;
            }
            let (child_path, child_name) = (child.path(), name.join(&file_name));
            if child_path.join("cur").is_dir() {
                self.maildir(&child_path, &child_name)?;
            } else {
                self.tree(&child_path, &child_name)?;
            }
        }
        Ok(())
    }

    /// The messages of `new/` or `cur/`. A message renamed since the
    /// folder was read (a flag changed; a move from new/) is found again
    /// in `cur/` by its base name; one expunged meanwhile is gone.
    fn messages(&mut self, dir: &Path, name: &Path, cur: &Path) -> Result<(), BackupError> {
        let Ok(entries) = fs::read_dir(dir) else {
            return Ok(());
        };
        self.dir(dir, name)?;
        let mut files: Vec<_> = entries.filter_map(|e| e.ok()).collect();
        files.sort_by_key(|e| e.file_name());
        for entry in files {
            let file_name = entry.file_name();
            if self.file(&entry.path(), &name.join(&file_name))? {
                continue;
            }
            let text = file_name.to_string_lossy();
            let base = text.split(':').next().unwrap_or(&text).to_string();
            let cur_name = name.with_file_name("cur");
            let moved = fs::read_dir(cur)
                .into_iter()
                .flatten()
                .filter_map(|e| e.ok())
                .find(|e| e.file_name().to_string_lossy().split(':').next() == Some(&base));
            if let Some(moved) = moved {
                self.file(&moved.path(), &cur_name.join(moved.file_name()))?;
            }
        }
        Ok(())
    }
}

/// How long a backup waits for a runner to let go of a queued message.
const QUEUE_PATIENCE: Duration = Duration::from_secs(30);

/// Writes the backup of the tree `config` describes to `out` (with
/// `mail`, mailboxes and the queue too), then fsyncs it. `out_path` is
/// the archive's own path, left out if it lies in the tree.
pub fn backup(
    config: &Config,
    out: File,
    out_path: &Path,
    mail: bool,
) -> Result<BackupReport, BackupError> {
    let sync = out.try_clone().map_err(io_err(out_path))?;
    let encoder = zstd::Encoder::new(BufWriter::with_capacity(256 * 1024, out), 3)
        .map_err(io_err(out_path))?;
    let mut w = Writer {
        tar: tar::Builder::new(encoder),
        report: BackupReport::default(),
        exclude: out_path.to_path_buf(),
    };
    w.tar.mode(tar::HeaderMode::Complete);
    w.file(&config.file, Path::new(CONFIG_ENTRY))?;
    for (path, name) in [
        (config.users_file(), "users"),
        (config.aliases_file(), "aliases"),
        (config.domains_file(), "domains"),
        (config.access_file(), "access"),
        (config.tls_cert(), "tls/cert.pem"),
        (config.tls_key(), "tls/key.pem"),
    ] {
        w.file(&path, Path::new(name))?;
    }
    for (path, name) in keyed_files(config) {
        w.file(&path, &name)?;
    }
    w.tree(&config.lists_dir(), Path::new("lists"))?;
    w.tree(&config.state_dir(), Path::new("state"))?;

    // The folders themselves, so a restored tree has them even empty.
    let queue = Queue::from_config(config);
    let mail_dir = config.mail_dir();
    for (path, name) in [
        (mail_dir.clone(), PathBuf::from("mail")),
        (queue.root().to_path_buf(), PathBuf::from("queue")),
    ]
    .into_iter()
    .chain(
        ["tmp", "mess", "log", "todo"]
            .map(|sub| (queue.root().join(sub), Path::new("queue").join(sub))),
    ) {
        if path.is_dir() {
            w.dir(&path, &name)?;
        }
    }
    for (domain, user) in mailboxes(&mail_dir)? {
        let path = mail_dir.join(&domain).join(&user);
        let name = Path::new("mail").join(&domain).join(&user);
        if mail && path.join("cur").is_dir() {
            w.maildir(&path, &name)?;
        } else {
            // Without mail, what the user wrote: Sieve rules, away message.
            w.tree(&path.join(sieve::FOLDER), &name.join(sieve::FOLDER))?;
            w.file(&path.join("vacation.msg"), &name.join("vacation.msg"))?;
        }
    }
    if mail {
        for id in queue.list()? {
            let locked = match queue.lock_waiting(&id, QUEUE_PATIENCE) {
                Ok(locked) => Some(locked),
                Err(QueueError::NotFound(_)) => continue,
                Err(QueueError::Busy(_)) => {
                    w.report.unlocked += 1;
                    None
                }
                Err(e) => return Err(e.into()),
            };
            // The log first: a message restored without it would look
            // undelivered and go out again.
            let root = queue.root();
            for sub in ["log", "mess"] {
                let name = Path::new("queue").join(sub).join(id.as_str());
                w.file(&root.join(sub).join(id.as_str()), &name)?;
            }
            drop(locked);
        }
    }

    let report = w.report.clone();
    let encoder = w.tar.into_inner().map_err(io_err(out_path))?;
    let mut buffered = encoder.finish().map_err(io_err(out_path))?;
    buffered.flush().map_err(io_err(out_path))?;
    sync.sync_all().map_err(io_err(out_path))?;
    Ok(report)
}

/// Files the config names one by one: DKIM keys, global Sieve scripts,
/// the SRS secret, with their archive names.
fn keyed_files(config: &Config) -> Vec<(PathBuf, PathBuf)> {
    let mut files = Vec::new();
    for key in &config.dkim {
        files.push((
            config.path(&key.key),
            Path::new("dkim")
                .join(&key.domain)
                .join(format!("{}.pem", key.selector)),
        ));
    }
    for (when, scripts) in [
        ("before", &config.sieve.before),
        ("after", &config.sieve.after),
    ] {
        for (i, script) in scripts.iter().enumerate() {
            files.push((
                config.path(script),
                Path::new("sieve").join(when).join(i.to_string()),
            ));
        }
    }
    if let Some(secret) = &config.sieve.srs_secret_file {
        files.push((config.path(secret), PathBuf::from("srs-secret")));
    }
    files
}

/// Every `DOMAIN/USER` folder under the mail folder.
fn mailboxes(mail_dir: &Path) -> Result<Vec<(String, String)>, BackupError> {
    let mut found = Vec::new();
    let domains = match fs::read_dir(mail_dir) {
        Ok(entries) => entries,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(found),
        Err(e) => return Err(io_err(mail_dir)(e)),
    };
    for domain in domains.filter_map(|e| e.ok()) {
        if !domain.file_type().is_ok_and(|t| t.is_dir()) {
            continue;
        }
        let Ok(users) = fs::read_dir(domain.path()) else {
            continue;
        };
        for user in users.filter_map(|e| e.ok()) {
            if user.file_type().is_ok_and(|t| t.is_dir()) {
                found.push((
                    domain.file_name().to_string_lossy().into_owned(),
                    user.file_name().to_string_lossy().into_owned(),
                ));
            }
        }
    }
    found.sort();
    Ok(found)
}

/// What a restore did.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct RestoreReport {
    pub files: usize,
    /// Files left as they were because they exist (without `overwrite`).
    pub kept: usize,
}

/// Where an archive entry goes under `config`, or `None` for a name this
/// config has no place for (a DKIM key or script it no longer names).
fn place(config: &Config, name: &Path) -> Option<PathBuf> {
    let parts: Vec<&str> = name
        .components()
        .map(|c| match c {
            Component::Normal(part) => part.to_str(),
            _ => None,
        })
        .collect::<Option<_>>()?;
    let rest = |n: usize| parts[n..].iter().collect::<PathBuf>();
    let under = |dir: PathBuf, n: usize| Some(dir.join(rest(n)));
    match parts.as_slice() {
        ["config", "postroom.toml"] => Some(config.file.clone()),
        ["users"] => Some(config.users_file()),
        ["aliases"] => Some(config.aliases_file()),
        ["domains"] => Some(config.domains_file()),
        ["access"] => Some(config.access_file()),
        ["tls", "cert.pem"] => Some(config.tls_cert()),
        ["tls", "key.pem"] => Some(config.tls_key()),
        ["lists", ..] => under(config.lists_dir(), 1),
        ["state", ..] => under(config.state_dir(), 1),
        ["mail", ..] => under(config.mail_dir(), 1),
        ["queue", ..] => under(config.queue_dir(), 1),
        _ => keyed_files(config)
            .into_iter()
            .find(|(_, entry)| entry == name)
            .map(|(path, _)| path),
    }
}

/// Restores an archive made by [`backup`] into the tree of the config at
/// `config_file`. The config entry comes first: it is placed (if there is
/// no config yet, or with `overwrite`) and then read to place the rest.
/// Existing files are kept unless `overwrite`; each file is written
/// beside its place, fsynced and renamed, so a reader never sees half.
pub fn restore(
    config_file: &Path,
    input: impl Read,
    overwrite: bool,
) -> Result<RestoreReport, BackupError> {
    let decoder = zstd::Decoder::new(input).map_err(io_err(config_file))?;
    let mut archive = tar::Archive::new(decoder);
    let mut report = RestoreReport::default();
    let mut config: Option<Config> = None;
    let mut touched: BTreeSet<PathBuf> = BTreeSet::new();
    let as_root = nix::unistd::geteuid().is_root();
    let bad = |e: io::Error| BackupError::Archive(format!("not a postroom backup: {e}"));
    for entry in archive.entries().map_err(bad)? {
        let mut entry = entry.map_err(bad)?;
        let name = entry.path().map_err(bad)?.into_owned();
        let dest = if name == Path::new(CONFIG_ENTRY) {
            config_file.to_path_buf()
        } else {
            if config.is_none() {
                config = Some(Config::load(config_file).map_err(|e| {
                    BackupError::Archive(format!(
                        "{e}: the backup holds no config and there is none to restore into"
                    ))
                })?);
            }
            match config.as_ref().and_then(|c| place(c, &name)) {
                Some(dest) => dest,
                None => {
                    tracing::warn!(
                        "{}: no place for it in this config; skipped",
                        name.display()
                    );
                    continue;
                }
            }
        };
        let header = entry.header().clone();
        let mode = header.mode().unwrap_or(0o600) & 0o7777;
        let owner = (header.uid().ok(), header.gid().ok());
        match header.entry_type() {
            tar::EntryType::Directory if !dest.is_dir() => {
                fs::create_dir_all(&dest).map_err(io_err(&dest))?;
                fs::set_permissions(&dest, fs::Permissions::from_mode(mode))
                    .map_err(io_err(&dest))?;
                chown(as_root, &dest, owner)?;
                touched.insert(fsutil::parent_of(&dest).to_path_buf());
            }
            tar::EntryType::Regular => {
                if dest.exists() && !overwrite {
                    report.kept += 1;
                } else {
                    let mtime = header.mtime().ok();
                    write_file(&dest, &mut entry, mode, mtime)?;
                    chown(as_root, &dest, owner)?;
                    touched.insert(fsutil::parent_of(&dest).to_path_buf());
                    report.files += 1;
                }
            }
            tar::EntryType::Symlink => {
                let target = entry.link_name().map_err(bad)?.map(|t| t.into_owned());
                match target {
                    Some(target) if is_script_link(&dest, &target) => {
                        if fs::symlink_metadata(&dest).is_ok() && !overwrite {
                            report.kept += 1;
                        } else {
                            let dir = fsutil::parent_of(&dest);
                            fs::create_dir_all(dir).map_err(io_err(dir))?;
                            fsutil::symlink_atomic(&target, &dest).map_err(io_err(&dest))?;
                            touched.insert(fsutil::parent_of(&dest).to_path_buf());
                            report.files += 1;
                        }
                    }
                    _ => tracing::warn!(
                        "{}: a link other than sieve/active.sieve to a script beside it; skipped",
                        name.display()
                    ),
                }
            }
            _ => {}
        }
        if name == Path::new(CONFIG_ENTRY) {
            config = Some(Config::load(config_file).map_err(|e| {
                BackupError::Archive(format!("the restored config does not load: {e}"))
            })?);
        }
    }
    for dir in touched {
        fsutil::fsync_dir(&dir).map_err(io_err(&dir))?;
    }
    Ok(report)
}

/// The one link a tree holds: `sieve/active.sieve`, naming a script
/// (`NAME.sieve`) in its own folder (`postroom-sieve(5)`). Any other link,
/// in a tree or in an archive, is left alone: restored, a link such as
/// `mail/D/ann -> bob` would write one user's files into another's.
fn is_script_link(link: &Path, target: &Path) -> bool {
    let mut parts = target.components();
    let beside = matches!(
        (parts.next(), parts.next()),
        (Some(std::path::Component::Normal(_)), None)
    );
    beside
        && link.file_name().is_some_and(|n| n == sieve::ACTIVE)
        && link
            .parent()
            .and_then(Path::file_name)
            .is_some_and(|n| n == sieve::FOLDER)
        && target
            .extension()
            .is_some_and(|e| Some(e) == sieve::SUFFIX.strip_prefix('.').map(OsStr::new))
}

/// Writes `data` to `dest` by way of a hidden name beside it.
fn write_file(
    dest: &Path,
    data: &mut impl Read,
    mode: u32,
    mtime: Option<u64>,
) -> Result<(), BackupError> {
    let dir = fsutil::parent_of(dest);
    fs::create_dir_all(dir).map_err(io_err(dir))?;
    let tmp = dir.join(format!(".postroom-restore-{}", fsutil::unique_suffix()));
    let result = (|| -> io::Result<()> {
        let mut file = OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(mode)
            .open(&tmp)?;
        io::copy(data, &mut file)?;
        file.set_permissions(fs::Permissions::from_mode(mode))?;
        // A message's arrival time (IMAP INTERNALDATE) is its file's.
        if let Some(secs) = mtime {
            file.set_modified(std::time::UNIX_EPOCH + Duration::from_secs(secs))?;
        }
        file.sync_all()?;
        fs::rename(&tmp, dest)
    })();
    if result.is_err() {
        let _ = fs::remove_file(&tmp);
    }
    result.map_err(io_err(dest))
}

/// Run as root, files get the owner they had; otherwise the one running.
fn chown(as_root: bool, path: &Path, owner: (Option<u64>, Option<u64>)) -> Result<(), BackupError> {
    if !as_root {
        return Ok(());
    }
    let uid = owner.0.map(|u| nix::unistd::Uid::from_raw(u as u32));
    let gid = owner.1.map(|g| nix::unistd::Gid::from_raw(g as u32));
    nix::unistd::chown(path, uid, gid).map_err(|e| io_err(path)(e.into()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_the_active_script_link_is_kept() {
        let ok = |link: &str, target: &str| is_script_link(Path::new(link), Path::new(target));
        assert!(ok("mail/d/ann/sieve/active.sieve", "rules.sieve"));
        assert!(!ok("mail/d/ann", "bob"));
        assert!(!ok(
            "mail/d/ann/sieve/active.sieve",
            "../../bob/sieve/x.sieve"
        ));
        assert!(!ok("mail/d/ann/sieve/active.sieve", "/etc/passwd"));
        assert!(!ok("mail/d/ann/sieve/active.sieve", "notes.txt"));
        assert!(!ok("mail/d/ann/sieve/other.sieve", "rules.sieve"));
        assert!(!ok("mail/d/ann/cur/active.sieve", "rules.sieve"));
    }
}
