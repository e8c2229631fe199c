//! Maildir++ delivery: the one durable write into a mailbox (postroom-tree(5), "Delivery into a maildir").
//!
//! States of a delivered message, as files:
//!
//! | state        | file                         | committed by                     |
//! |--------------|------------------------------|----------------------------------|
//! | being written| `tmp/BASE`                   | nothing: debris after a crash    |
//! | delivered    | `new/BASE,S=n,W=m`           | `link(tmp, new)` + fsync of new/ |
//! | seen by MUA  | `cur/BASE,S=n,W=m:2,FLAGS`   | the reader's rename              |
//!
//! The file is fsynced before the link, and `new/` after it, so a reader never
//! sees half a message and a 250 never covers a message only in the page
//! cache. Deliveries take no lock: unique names make them safe.
//!
//! Why not the `maildir` crate's `store_new`: it renames without fsyncing the
//! directory, and it always picks a random name, while queue deliveries need a
//! name derived from the queue id and recipient so that a repeat after a crash
//! finds the first copy (`link` fails with EEXIST) instead of delivering twice.
//! Nor its `create_dirs`: it follows symlinks.
//!
//! Names carry `,S=` (size on disk, LF line ends) and `,W=` (size with CRLF,
//! what POP3 and IMAP report), as Courier and Dovecot write them, so readers
//! never open a file to learn its size.
//!
//! POP3 (`mailbox::maildrop`) reads through [`Maildir::messages`],
//! [`Maildir::locate`], [`Maildir::add_flags`] and [`Maildir::remove`];
//! IMAP (`mailbox::folder`) through its uidlist, by the same name rules
//! ([`split_name`], [`NoFollowDir`]). None takes a lock: a
//! message is known by its base name (the part before `:`), which no rename
//! changes, so one moved to cur/ or re-flagged by another client meanwhile
//! is found again, and one removed meanwhile is simply gone (postroom-mailbox(5)).
//!
//! Quota is Maildir++ `maildirsize` (courier-libs README.maildirquota): a
//! limits line, then appended `bytes count` lines; approximate by design, no
//! lock; recalculated from the names when it grows past 5120 bytes.
//!
//! No symlink inside a mailbox is followed (`postroom-mailbox(5)`): the
//! mailbox root is the admin's to place and is opened by its path, but a
//! folder, its `cur/`, `new/` and `tmp/`, and every message are opened with
//! `O_NOFOLLOW` relative to the descriptor of the directory above them
//! ([`NoFollowDir`]), and directory listings leave symlinks out. So
//! `ln -s ../user2 user1/.Evil` or `new -> /elsewhere` can neither show
//! another mailbox nor make a delivery write outside this one, and a
//! folder swapped for a symlink half-way cannot redirect a process that
//! already opened it.

use std::fs::{self, File, OpenOptions};
use std::io::{self, BufRead, BufReader, Read, Write};
use std::os::fd::OwnedFd;
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
use std::path::{Path, PathBuf};

use rustix::fs::{AtFlags, FileType, Mode, OFlags};
use rustix::io::Errno;

use crate::proto::message::{HeaderEnd, WireForm};
use crate::store::fsutil;

/// `maildirsize` is rebuilt from scratch past this size (Maildir++ rule).
const MAILDIRSIZE_REBUILD_BYTES: u64 = 5120;

#[derive(Debug, thiserror::Error)]
pub enum MaildirError {
    /// The folder name could escape the mailbox or is not a valid name.
    #[error("invalid folder name {0:?}")]
    BadFolder(String),
    /// Delivering would exceed the user's quota (a temporary failure: the
    /// user may delete mail).
    #[error("mailbox is over quota ({used} of {limit} bytes used)")]
    OverQuota { used: u64, limit: u64 },
    /// A folder or one of its directories is a symlink, which postroom
    /// does not follow (a temporary failure: the admin must look).
    #[error(transparent)]
    Symlink(SymlinkRefused),
    #[error("{path}: {error}")]
    Io { path: PathBuf, error: io::Error },
}

impl MaildirError {
    fn io(path: &Path) -> impl FnOnce(io::Error) -> MaildirError + '_ {
        move |error| match symlink_refused(&error) {
            Some(refused) => MaildirError::Symlink(refused.clone()),
            None => MaildirError::Io {
                path: path.to_path_buf(),
                error,
            },
        }
    }
}

/// What happened to one delivery.
#[derive(Debug, PartialEq, Eq)]
pub enum Delivered {
    /// Written now, under this name in `new/`.
    New(PathBuf),
    /// A copy with the same derived name was already there: a repeat after a
    /// crash, so nothing was written twice.
    AlreadyThere,
}

/// A Maildir++ mailbox: INBOX at the root, folders as `.Name` beside it.
#[derive(Debug, Clone)]
pub struct Maildir {
    root: PathBuf,
    /// The INBOX root, where `maildirsize` lives even for subfolders.
    inbox: PathBuf,
}

/// One message to deliver.
pub struct Message<'a> {
    /// Header lines written before the message (`Return-Path`,
    /// `Delivered-To`), LF-terminated.
    pub prepend: &'a [u8],
    /// The message itself, with CRLF or LF line ends; written with LF.
    pub body: &'a mut dyn Read,
    /// A base name derived from the queue id and recipient, for idempotent
    /// queue deliveries; `None` picks a fresh unique name.
    pub base_name: Option<String>,
    /// Search new/ and cur/ for an earlier copy under `base_name`: set on a
    /// retry after an interrupted attempt, when a mail client may have moved
    /// the first copy to cur/. (Otherwise an exact repeat is caught by
    /// `link` alone, at no cost.)
    pub search_cur: bool,
    /// Store the bytes exactly as given, line ends and all (IMAP APPEND
    /// of a `~{n}` literal8, RFC 3516): the name's `,W=` then equals its
    /// `,S=`, which says the file is its own wire form ([`is_wire_form`]).
    pub as_given: bool,
    /// Quota in bytes for this mailbox, if any.
    pub quota: Option<u64>,
    /// Add the empty line after the header if the message lacks it (mail
    /// delivered from the queue); an IMAP APPEND stores what it was given.
    pub end_header: bool,
}

/// A message written and fsynced in `tmp/`, waiting to be linked into
/// `cur/` ([`Maildir::stage_for_cur`]).
#[derive(Debug)]
pub struct StagedForCur {
    /// Its name in `tmp/`.
    tmp: String,
    /// Its name in `cur/`, with sizes and flags.
    name: String,
    /// Its size on disk.
    pub size: u64,
}

impl StagedForCur {
    /// Its name without the flags, as the folder's UID list keeps it.
    pub fn base(&self) -> &str {
        base_of(&self.name)
    }
}

impl Maildir {
    /// The INBOX of the mailbox rooted at `root`.
    pub fn new(root: impl Into<PathBuf>) -> Maildir {
        let root = root.into();
        Maildir {
            inbox: root.clone(),
            root,
        }
    }

    pub fn path(&self) -> &Path {
        &self.root
    }

    /// A folder of this mailbox by its Maildir++ name (`Sent`, `Lists.rust`);
    /// `INBOX` is the root. Names that could leave the mailbox (`..`, `/`,
    /// a leading dot, control characters) are refused.
    pub fn folder(&self, name: &str) -> Result<Maildir, MaildirError> {
        if name.eq_ignore_ascii_case("INBOX") {
            return Ok(Maildir::new(self.inbox.clone()));
        }
        let bad = name.is_empty()
            || name.len() > 255
            || name.starts_with('.')
            || name.ends_with('.')
            || name.contains("..")
            || name.contains('/')
            || name.chars().any(char::is_control);
        if bad {
            return Err(MaildirError::BadFolder(name.to_string()));
        }
        Ok(Maildir {
            root: self.inbox.join(format!(".{name}")),
            inbox: self.inbox.clone(),
        })
    }

    /// This folder's directory (the root for INBOX), opened without
    /// following a symlink below the root.
    pub fn open_dir(&self) -> io::Result<NoFollowDir> {
        let root = NoFollowDir::root(&self.inbox)?;
        match self.folder_entry() {
            None => Ok(root),
            Some(entry) => root.dir(entry),
        }
    }

    /// This folder's `new/` or `cur/`, opened without following a symlink.
    pub fn sub_dir(&self, sub: Sub) -> io::Result<NoFollowDir> {
        self.open_dir()?.dir(sub.dir())
    }

    /// The `.Name` entry of a subfolder in the INBOX root; `None` for INBOX.
    fn folder_entry(&self) -> Option<&str> {
        if self.root == self.inbox {
            return None;
        }
        // folder() made root as inbox/.Name, so this is that one entry.
        self.root.file_name().and_then(|n| n.to_str())
    }

    /// Creates `cur`, `new` and `tmp` (and the root) if missing, mode 0700.
    /// A subfolder also gets `maildirfolder`, as Maildir++ asks. Nothing
    /// below the root is created or entered through a symlink: one in the
    /// way gives [`MaildirError::Symlink`].
    pub fn create(&self) -> Result<(), MaildirError> {
        let err = MaildirError::io(&self.root);
        if let Ok(dir) = self.open_dir()
            && dir.dir("cur").is_ok()
            && dir.dir("new").is_ok()
            && dir.dir("tmp").is_ok()
        {
            return Ok(());
        }
        let result = (|| {
            // The directories above the mailbox are the admin's layout
            // (mail/DOMAIN/), made with the usual mode; the mailbox 0700.
            let parent = fsutil::parent_of(&self.inbox);
            fs::create_dir_all(parent)?;
            match fs::DirBuilder::new().mode(0o700).create(&self.inbox) {
                Ok(()) => fsutil::fsync_dir(parent)?,
                Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {}
                Err(e) => return Err(e),
            }
            let root = NoFollowDir::root(&self.inbox)?;
            let folder = match self.folder_entry() {
                None => root,
                Some(entry) => {
                    if root.make_dir(entry)? {
                        root.sync()?;
                    }
                    root.dir(entry)?
                }
            };
            let mut made = false;
            for sub in ["cur", "new", "tmp"] {
                made |= folder.make_dir(sub)?;
                folder.dir(sub)?;
            }
            if self.folder_entry().is_some() {
                folder.open_with("maildirfolder", OFlags::WRONLY | OFlags::CREATE, 0o600)?;
            }
            if made {
                folder.sync()?;
            }
            Ok(())
        })();
        result.map_err(err)
    }

    /// Delivers one message: tmp → fsync → link into new/ → fsync new/.
    /// The tmp file is created and linked relative to this folder's
    /// `tmp/` and `new/` as opened once, without following symlinks.
    pub fn deliver(&self, message: Message<'_>) -> Result<Delivered, MaildirError> {
        // The mailbox almost always exists: open it once, and only when
        // that fails make what is missing (and say why, a symlink in the
        // way included) and open it again. `cur` is opened too, so a
        // mailbox without one is still completed, as before.
        let open = || {
            self.open_dir()
                .and_then(|dir| Ok((dir.dir("tmp")?, dir.dir("new")?, dir.dir("cur")?)))
        };
        let (tmp_dir, new_dir, _) = match open() {
            Ok(dirs) => dirs,
            Err(_) => {
                self.create()?;
                open().map_err(MaildirError::io(&self.root))?
            }
        };
        let base = match &message.base_name {
            Some(base) => base.clone(),
            None => format!(
                "{}.{}.{}",
                fsutil::now_secs(),
                fsutil::unique_suffix(),
                fsutil::this_host()
            ),
        };
        // The exact name is caught by link()'s EEXIST below, for free. Only
        // after an interrupted attempt is it worth a readdir, to find a copy
        // a mail client has since moved to cur/ (and renamed with flags).
        if message.base_name.is_some() && message.search_cur && self.find_base(&base)? {
            return Ok(Delivered::AlreadyThere);
        }
        let used = match message.quota {
            Some(limit) if limit > 0 => Some((limit, self.quota_usage(limit)?)),
            _ => None,
        };

        let result = self.write_and_link(&tmp_dir, &new_dir, &base, message, used);
        // The tmp name is only a staging name; it goes whatever happened.
        let _ = tmp_dir.unlink(&base);
        let (new, size) = match result? {
            Some(linked) => linked,
            None => return Ok(Delivered::AlreadyThere),
        };
        new_dir.sync().map_err(MaildirError::io(&new))?;
        if used.is_some() {
            self.quota_add(size as i64, 1);
        }
        Ok(Delivered::New(new))
    }

    /// Writes a message into `tmp/` and fsyncs it, ready to be linked
    /// straight into `cur/` with its flags (`info`) and modification time,
    /// as IMAP APPEND does, by [`Maildir::link_into_cur`]. Two steps so
    /// that the caller can link under its folder's UID lock: a message
    /// that appears in `cur/` before then would be numbered by another
    /// session's sync, and then again by the append. `used` is the
    /// quota's (limit, bytes in use), which a batch carries from one
    /// message to the next.
    pub fn stage_for_cur(
        &self,
        message: Message<'_>,
        info: &str,
        mtime: Option<std::time::SystemTime>,
        used: Option<(u64, u64)>,
    ) -> Result<StagedForCur, MaildirError> {
        self.create()?;
        let tmp_dir = self
            .open_dir()
            .and_then(|dir| dir.dir("tmp"))
            .map_err(MaildirError::io(&self.root))?;
        let base = format!(
            "{}.{}.{}",
            fsutil::now_secs(),
            fsutil::unique_suffix(),
            fsutil::this_host()
        );
        let used = used.map(|(limit, bytes)| (limit, (bytes, 0)));
        match self.write_tmp(&tmp_dir, Some(info), mtime, &base, message, used) {
            Ok((name, size)) => Ok(StagedForCur {
                tmp: base,
                name,
                size,
            }),
            Err(e) => {
                let _ = tmp_dir.unlink(&base);
                Err(e)
            }
        }
    }

    /// Links messages [`Maildir::stage_for_cur`] wrote into `cur/`, all or
    /// none, and syncs `cur/` once for them; their `tmp/` names go either
    /// way.
    pub fn link_into_cur(&self, staged: &[StagedForCur]) -> Result<(), MaildirError> {
        let (tmp_dir, cur_dir) = self
            .open_dir()
            .and_then(|dir| Ok((dir.dir("tmp")?, dir.dir("cur")?)))
            .map_err(MaildirError::io(&self.root))?;
        let mut result = Ok(());
        let mut linked = 0;
        for one in staged {
            match tmp_dir.link(&one.tmp, &cur_dir, &one.name) {
                Ok(()) => linked += 1,
                Err(e) => {
                    // A fresh unique name already there is not possible
                    // short of a clock gone back and a reused pid.
                    result = Err(MaildirError::io(&cur_dir.join(&one.name))(e));
                    break;
                }
            }
        }
        if result.is_ok() {
            result = cur_dir.sync().map_err(MaildirError::io(&self.root));
        }
        if result.is_err() {
            for one in &staged[..linked] {
                let _ = cur_dir.unlink(&one.name);
            }
        }
        self.discard_staged(staged);
        result
    }

    /// Removes what [`Maildir::stage_for_cur`] wrote, for a batch given up.
    pub fn discard_staged(&self, staged: &[StagedForCur]) {
        if let Ok(tmp_dir) = self.open_dir().and_then(|dir| dir.dir("tmp")) {
            for one in staged {
                let _ = tmp_dir.unlink(&one.tmp);
            }
        }
    }

    /// Writes `tmp/base`, fsyncs it and links it into `new_dir`; the
    /// linked path and the size on disk, or `None` when the name was
    /// there already (an idempotent redelivery).
    fn write_and_link(
        &self,
        tmp_dir: &NoFollowDir,
        new_dir: &NoFollowDir,
        base: &str,
        message: Message<'_>,
        used: Option<(u64, (u64, u64))>,
    ) -> Result<Option<(PathBuf, u64)>, MaildirError> {
        let (name, size) = self.write_tmp(tmp_dir, None, None, base, message, used)?;
        let linked = new_dir.join(&name);
        match tmp_dir.link(base, new_dir, &name) {
            Ok(()) => Ok(Some((linked, size))),
            Err(e) if e.kind() == io::ErrorKind::AlreadyExists => Ok(None),
            Err(e) => Err(MaildirError::io(&linked)(e)),
        }
    }

    /// Writes `tmp/base` and fsyncs it, with `mtime` if given; the name it
    /// gets where it is linked (sizes, and `info`, the flags, for `cur/`)
    /// and its size on disk.
    fn write_tmp(
        &self,
        tmp_dir: &NoFollowDir,
        info: Option<&str>,
        mtime: Option<std::time::SystemTime>,
        base: &str,
        message: Message<'_>,
        used: Option<(u64, (u64, u64))>,
    ) -> Result<(String, u64), MaildirError> {
        let tmp = &tmp_dir.join(base);
        // A derived name may meet the debris of a crashed attempt in tmp/:
        // truncating it is right, since only the queue-message lock holder
        // delivers that name. (A symlink planted there is refused.)
        let file = tmp_dir
            .open_with(base, OFlags::WRONLY | OFlags::CREATE | OFlags::TRUNC, 0o600)
            .map_err(MaildirError::io(tmp))?;
        let mut out = io::BufWriter::with_capacity(WRITE_BUFFER, file);
        out.write_all(message.prepend)
            .map_err(MaildirError::io(tmp))?;
        let mut prepended = WireForm::new();
        prepended.count(message.prepend);
        let (body_size, body_wire) = if message.as_given {
            io::copy(message.body, &mut out).map(|n| (n, n))
        } else {
            copy_with_lf(
                message.body,
                &mut out,
                message.end_header.then(HeaderEnd::lf),
            )
        }
        .map_err(MaildirError::io(tmp))?;
        let file = out.into_inner().map_err(|e| MaildirError::Io {
            path: tmp.to_path_buf(),
            error: e.into_error(),
        })?;
        let size = message.prepend.len() as u64 + body_size;
        let wire_size = prepended.octets() + body_wire;
        if let Some((limit, (bytes, _))) = used
            && bytes + size > limit
        {
            return Err(MaildirError::OverQuota { used: bytes, limit });
        }
        if let Some(mtime) = mtime {
            // The INTERNALDATE APPEND gave; the link into cur/ shares the inode.
            let _ = file.set_modified(mtime);
        }
        file.sync_all().map_err(MaildirError::io(tmp))?;
        drop(file);

        let mut name = format!("{base},S={size},W={wire_size}");
        if let Some(info) = info {
            name.push_str(":2,");
            name.push_str(info);
        }
        Ok((name, size))
    }

    /// True if a message whose name starts with `base,` is in new/ or cur/.
    fn find_base(&self, base: &str) -> Result<bool, MaildirError> {
        let prefix = format!("{base},");
        let mut found = false;
        for sub in [Sub::New, Sub::Cur] {
            self.read_sub(sub, |name| found |= name.starts_with(&prefix))?;
        }
        Ok(found)
    }

    fn maildirsize_path(&self) -> PathBuf {
        self.inbox.join("maildirsize")
    }

    /// (bytes, messages) in use, from `maildirsize`, rebuilt when missing,
    /// too long, or written for another limit.
    pub fn quota_usage(&self, limit: u64) -> Result<(u64, u64), MaildirError> {
        let path = self.maildirsize_path();
        let limits_line = format!("{limit}S");
        if let Ok(file) = open_nofollow(&path) {
            let long = file
                .metadata()
                .map(|m| m.len() > MAILDIRSIZE_REBUILD_BYTES)
                .unwrap_or(true);
            let mut lines = BufReader::new(file).lines();
            let first = lines.next().and_then(Result::ok);
            if !long && first.as_deref() == Some(limits_line.as_str()) {
                let (mut bytes, mut count) = (0i64, 0i64);
                for line in lines.map_while(Result::ok) {
                    let mut fields = line.split_whitespace().map(|f| f.parse::<i64>());
                    if let (Some(Ok(b)), Some(Ok(c))) = (fields.next(), fields.next()) {
                        bytes += b;
                        count += c;
                    }
                }
                return Ok((bytes.max(0) as u64, count.max(0) as u64));
            }
        }
        let (bytes, count) = self.scan_usage()?;
        let text = format!("{limits_line}\n{bytes:>12} {count:>12}\n");
        fsutil::write_atomic(&path, text.as_bytes()).map_err(MaildirError::io(&path))?;
        Ok((bytes, count))
    }

    /// Appends one change to `maildirsize` (one write, O_APPEND, no lock:
    /// the format is designed for concurrent appenders).
    pub fn quota_add(&self, bytes: i64, count: i64) {
        let path = self.maildirsize_path();
        if let Ok(mut file) = OpenOptions::new()
            .append(true)
            .custom_flags(nofollow_flag())
            .open(&path)
        {
            let _ = file.write_all(format!("{bytes} {count}\n").as_bytes());
        }
    }

    /// Bytes and messages stored, counted as the quota counts them, without
    /// writing anything (for reports: `postroom user list`).
    pub fn usage(&self) -> Result<(u64, u64), MaildirError> {
        self.scan_usage()
    }

    /// Sums sizes over INBOX and every folder, from the `,S=` in the names
    /// (stat only for names without it).
    fn scan_usage(&self) -> Result<(u64, u64), MaildirError> {
        let Ok(inbox) = NoFollowDir::root(&self.inbox) else {
            return Ok((0, 0));
        };
        let mut folders = Vec::new();
        for name in inbox.names().unwrap_or_default() {
            // Maildir++ does not count Trash against the quota. Symlinks
            // are not in names(): another mailbox is not counted here.
            if name.starts_with('.')
                && name != ".Trash"
                && let Ok(folder) = inbox.dir(&name)
            {
                folders.push(folder);
            }
        }
        folders.push(inbox);
        let (mut bytes, mut count) = (0, 0);
        for folder in folders {
            for sub in ["new", "cur"] {
                let Ok(dir) = folder.dir(sub) else {
                    continue;
                };
                for name in dir.names().unwrap_or_default() {
                    if let Some(size) = size_from_name(&name).or_else(|| dir.size_of(&name)) {
                        bytes += size;
                        count += 1;
                    }
                }
            }
        }
        Ok((bytes, count))
    }
}

/// Where a message file is: `new/` (not yet seen by any mail client) or
/// `cur/`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Sub {
    New,
    Cur,
}

impl Sub {
    pub fn dir(self) -> &'static str {
        match self {
            Sub::New => "new",
            Sub::Cur => "cur",
        }
    }
}

/// One message of a folder, by the name it had when last seen. Another
/// process may rename it at any time (new/ to cur/, flag changes): the
/// base name stays, so [`Maildir::locate`] finds it again.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MessageFile {
    pub sub: Sub,
    pub name: String,
}

impl MessageFile {
    /// The base name: everything before the `:` of the info part. Stable
    /// for the life of the message, unique in the folder (qmail-pop3d's
    /// UIDL, Dovecot's uidlist key).
    pub fn base(&self) -> &str {
        base_of(&self.name)
    }

    /// The flag letters after `:2,` (empty when there are none).
    pub fn flags(&self) -> &str {
        split_name(&self.name).map_or("", |(_, info)| info)
    }

    pub fn has_flag(&self, flag: char) -> bool {
        self.flags().contains(flag)
    }

    /// Size on disk from the name's `,S=`.
    pub fn size(&self) -> Option<u64> {
        size_from_name(&self.name)
    }

    /// Size on the wire (what POP3 RETR sends) from the name, when it
    /// states one ([`stated_wire_size`]).
    pub fn wire_size(&self) -> Option<u64> {
        stated_wire_size(&self.name)
    }
}

fn base_of(name: &str) -> &str {
    name.split_once(':').map_or(name, |(base, _)| base)
}

/// Splits a message file name into its base name and its flag letters
/// (the info after `:2,`), as POP3 and IMAP both read them; `None` for
/// names that are not messages (dot files) or carry an info version other
/// than 2.
pub fn split_name(name: &str) -> Option<(&str, &str)> {
    if name.starts_with('.') || name.is_empty() {
        return None;
    }
    match name.split_once(':') {
        None => Some((name, "")),
        Some((base, info)) => info.strip_prefix("2,").map(|info| (base, info)),
    }
}

/// Merges flag letters into a name's flags: each once, in ASCII order, as
/// the maildir spec asks (`FRS`, then Dovecot keyword letters `a`-`z`).
pub fn merge_flags(flags: &str, add: &str) -> String {
    let mut all: Vec<char> = flags.chars().chain(add.chars()).collect();
    all.sort_unstable();
    all.dedup();
    all.into_iter().collect()
}

/// What [`Maildir::remove`] did.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Removed {
    /// Unlinked by this call.
    pub removed: usize,
    /// Already gone: removed by another session (POP3 or IMAP) meanwhile.
    pub gone: usize,
    /// Could not be removed (permissions, I/O, or renamed by someone else
    /// every time we looked); each one is logged.
    pub failed: usize,
}

/// How often a message that moves while we open, rename or remove it is
/// looked for again (Dovecot's `maildir_file_do` retries as often). Each
/// round follows one more rename by another process.
const FOLLOW_ROUNDS: usize = 10;

/// A message counts as gone only when this many scans in a row miss it:
/// readdir can miss a file that another process renames during the scan
/// (the reason Dovecot's uidlist sync takes a lock), so one miss proves
/// nothing.
const GONE_AFTER_MISSES: usize = 2;

/// Reading and changing messages already delivered, for POP3's maildrop
/// and Sieve's flags at delivery. Nothing here takes a lock (postroom-mailbox(5)): renames and unlinks are
/// atomic, and a message moved by someone else is found again by its base
/// name.
impl Maildir {
    /// The path of a message file of this folder.
    pub fn file_path(&self, file: &MessageFile) -> PathBuf {
        self.root.join(file.sub.dir()).join(&file.name)
    }

    /// Every message in new/ and cur/, one per base name, in delivery order
    /// (the seconds that start a maildir name, then the name). A folder not
    /// yet created is empty.
    ///
    /// new/ is read before cur/: messages only move from new/ to cur/, so
    /// one moved during the scan is seen at least once (twice is folded
    /// into one, keeping the cur/ name). A message renamed inside cur/
    /// during the scan may be missed by readdir; it is there next time.
    pub fn messages(&self) -> Result<Vec<MessageFile>, MaildirError> {
        // Each name with its sort key, computed once: recomputing it in
        // every comparison was most of the cost of a 10,000-message scan.
        let mut keyed: Vec<(u64, usize, MessageFile)> = Vec::new();
        for sub in [Sub::New, Sub::Cur] {
            self.read_sub(sub, |name| {
                let base = base_of(name);
                keyed.push((
                    delivery_secs(base),
                    base.len(),
                    MessageFile {
                        sub,
                        name: name.to_string(),
                    },
                ));
            })?;
        }
        keyed.sort_unstable_by(|(a_secs, a_len, a), (b_secs, b_len, b)| {
            a_secs
                .cmp(b_secs)
                .then_with(|| a.name[..*a_len].cmp(&b.name[..*b_len]))
                // cur/ after new/, so dedup_by keeps the cur/ name.
                .then_with(|| (a.sub == Sub::Cur).cmp(&(b.sub == Sub::Cur)))
        });
        let mut files: Vec<MessageFile> = keyed.into_iter().map(|(_, _, f)| f).collect();
        files.dedup_by(|later, earlier| {
            if later.base() == earlier.base() {
                std::mem::swap(later, earlier);
                true
            } else {
                false
            }
        });
        Ok(files)
    }

    /// Calls `each` with every message name in `sub` (no dot files, no
    /// symlinks: a message linked to any file is not a message).
    fn read_sub(&self, sub: Sub, mut each: impl FnMut(&str)) -> Result<(), MaildirError> {
        let path = self.root.join(sub.dir());
        let names = match self.sub_dir(sub).and_then(|dir| dir.names()) {
            Ok(names) => names,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(()),
            Err(e) => return Err(MaildirError::io(&path)(e)),
        };
        // A name that is not UTF-8 was not written by a maildir program;
        // names() left it alone rather than guess at it.
        for name in names.iter().filter(|n| !n.starts_with('.')) {
            each(name);
        }
        Ok(())
    }

    /// Opens a message for reading, never through a symlink (the message
    /// file's or a directory's): a file linked to anything is not served.
    pub fn open_message(&self, file: &MessageFile) -> io::Result<File> {
        self.sub_dir(file.sub)?.open_file(&file.name)
    }

    /// The current names of the messages with these base names, in one
    /// pass over new/ and cur/. Missing ones are gone (expunged).
    pub fn locate(&self, bases: &[&str]) -> Result<Vec<Option<MessageFile>>, MaildirError> {
        let wanted: std::collections::HashMap<&str, usize> =
            bases.iter().enumerate().map(|(i, b)| (*b, i)).collect();
        let mut found = vec![None; bases.len()];
        for sub in [Sub::New, Sub::Cur] {
            self.read_sub(sub, |name| {
                if let Some(&i) = wanted.get(base_of(name)) {
                    found[i] = Some(MessageFile {
                        sub,
                        name: name.to_string(),
                    });
                }
            })?;
        }
        Ok(found)
    }

    /// Runs `op` on a message's current path, following it through renames
    /// by other processes (new/ to cur/, flag changes): when `op` fails
    /// with NotFound the message is looked up by base name and `op` tried
    /// again on its new name. Returns what `op` returned and the name it
    /// worked on, or None when the message is gone.
    pub fn follow<T>(
        &self,
        file: &MessageFile,
        mut op: impl FnMut(&MessageFile) -> io::Result<T>,
    ) -> Result<Option<(T, MessageFile)>, MaildirError> {
        let mut current = file.clone();
        let mut misses = 0;
        for _ in 0..FOLLOW_ROUNDS {
            match op(&current) {
                Ok(value) => return Ok(Some((value, current))),
                Err(e) if e.kind() == io::ErrorKind::NotFound => {}
                // Swapped for a symlink since it was listed: no longer a
                // message (postroom-mailbox(5)), so gone, like one expunged.
                Err(e) if symlink_refused(&e).is_some() => {
                    tracing::warn!("{e}");
                    return Ok(None);
                }
                Err(e) => return Err(MaildirError::io(&self.file_path(&current))(e)),
            }
            match self.locate(&[current.base()])?.pop().flatten() {
                Some(moved) => {
                    misses = 0;
                    current = moved;
                }
                None => {
                    misses += 1;
                    if misses >= GONE_AFTER_MISSES {
                        return Ok(None);
                    }
                }
            }
        }
        Err(MaildirError::Io {
            path: self.file_path(&current),
            error: io::Error::other("renamed by another process every time we looked"),
        })
    }

    /// Adds flags to a message: renames it into cur/ with its flags merged
    /// (`:2,` + the old letters and the new, sorted), keeping the flags
    /// another client set. If someone else renamed it first, it is found
    /// by base name and the rename tried again on its current name.
    /// Returns the new name, or None if the message is gone.
    ///
    /// Not fsynced: losing a flag change in a crash loses no mail, and
    /// Dovecot and Courier make the same trade.
    pub fn add_flags(
        &self,
        file: &MessageFile,
        flags: &str,
    ) -> Result<Option<MessageFile>, MaildirError> {
        let folder = self.open_dir().map_err(MaildirError::io(&self.root))?;
        let cur = folder.dir("cur").map_err(MaildirError::io(&self.root))?;
        let new = folder.dir("new").ok();
        let renamed = self.follow(file, |current| {
            let merged = merge_flags(current.flags(), flags);
            if current.sub == Sub::Cur && merged == current.flags() {
                return Ok(current.clone());
            }
            let target = MessageFile {
                sub: Sub::Cur,
                name: format!("{}:2,{merged}", current.base()),
            };
            let from = match current.sub {
                Sub::Cur => &cur,
                Sub::New => new.as_ref().ok_or(io::ErrorKind::NotFound)?,
            };
            from.rename(&current.name, &cur, &target.name)?;
            Ok(target)
        })?;
        Ok(renamed.map(|(target, _)| target))
    }

    /// Removes messages (POP3 DELE at QUIT, IMAP EXPUNGE), following any
    /// that were renamed meanwhile; those already gone are counted, not an
    /// error. The directories are fsynced afterwards, so a removal
    /// reported is durable, and `maildirsize` gets one line with the bytes
    /// and count freed.
    pub fn remove(&self, files: &[MessageFile]) -> Removed {
        let mut result = Removed::default();
        let mut freed: u64 = 0;
        let (new, cur) = (self.sub_dir(Sub::New), self.sub_dir(Sub::Cur));
        // Each pending message with the number of scans in a row that
        // missed it; one readdir per round serves them all.
        let mut pending: Vec<(MessageFile, usize)> = files.iter().map(|f| (f.clone(), 0)).collect();
        for _ in 0..FOLLOW_ROUNDS {
            let mut moved = Vec::new();
            for (file, misses) in pending.drain(..) {
                let path = self.file_path(&file);
                let dir = match (file.sub, &new, &cur) {
                    (Sub::New, Ok(dir), _) | (Sub::Cur, _, Ok(dir)) => dir,
                    (_, Err(e), _) | (_, _, Err(e)) => {
                        tracing::error!("cannot remove {}: {e}", path.display());
                        result.failed += 1;
                        continue;
                    }
                };
                let size = file.size().or_else(|| dir.size_of(&file.name));
                match dir.unlink(&file.name) {
                    Ok(()) => {
                        result.removed += 1;
                        freed += size.unwrap_or(0);
                    }
                    Err(e) if e.kind() == io::ErrorKind::NotFound => moved.push((file, misses)),
                    Err(e) => {
                        tracing::error!("cannot remove {}: {e}", path.display());
                        result.failed += 1;
                    }
                }
            }
            if moved.is_empty() {
                break;
            }
            let bases: Vec<&str> = moved.iter().map(|(f, _)| f.base()).collect();
            let found = match self.locate(&bases) {
                Ok(found) => found,
                Err(e) => {
                    tracing::error!("{e}");
                    result.failed += moved.len();
                    break;
                }
            };
            for ((file, misses), now) in moved.into_iter().zip(found) {
                match now {
                    Some(now) => pending.push((now, 0)),
                    None if misses + 1 >= GONE_AFTER_MISSES => result.gone += 1,
                    None => pending.push((file, misses + 1)),
                }
            }
        }
        for (file, _) in &pending {
            tracing::error!(
                "cannot remove {}: renamed by another process every time we looked",
                file.base()
            );
        }
        result.failed += pending.len();
        if result.removed > 0 {
            for dir in [&new, &cur].into_iter().flatten() {
                if let Err(e) = dir.sync() {
                    tracing::error!("fsync {}: {e}", dir.path().display());
                }
            }
            self.quota_add(-(freed as i64), -(result.removed as i64));
        }
        result
    }
}

/// The delivery time that starts a maildir name, in seconds; names that
/// do not start with one sort last.
fn delivery_secs(base: &str) -> u64 {
    let digits = base.bytes().take_while(u8::is_ascii_digit).count();
    base[..digits].parse().unwrap_or(u64::MAX)
}

/// The `,S=` size in a maildir name, if present.
pub fn size_from_name(name: &str) -> Option<u64> {
    name_field(name, "S=")
}

/// The `,W=` (CRLF) size in a maildir name, if present.
pub fn wire_size_from_name(name: &str) -> Option<u64> {
    name_field(name, "W=")
}

fn name_field(name: &str, key: &str) -> Option<u64> {
    let base = name.split(':').next().unwrap_or(name);
    base.split(',')
        .skip(1)
        .find_map(|field| field.strip_prefix(key))
        .and_then(|v| v.parse().ok())
}

/// The first read [`copy_with_lf`] makes.
const COPY_FIRST_READ: usize = 8 * 1024;
/// The largest read [`copy_with_lf`] makes.
const COPY_CHUNK: usize = 64 * 1024;
/// The write buffer of a delivery: a typical message (a few KB) with its
/// prepended lines goes out in one write, and the larger chunks of a big
/// one pass straight through. A 64 KB buffer did no better and, in a
/// process that delivers one message, took the allocator a second `mmap`.
const WRITE_BUFFER: usize = 16 * 1024;

/// Copies `body` to `out`, turning CRLF into LF (a maildir holds LF-ended
/// lines, as qmail and Dovecot write them), and ending a last line that has
/// no line end with LF: a message is lines (RFC 5322 §2.1), and POP3 and
/// IMAP must send it as lines whose sizes they can state before sending.
/// Returns the bytes written and the size of their wire form
/// (`proto::message::WireForm`, what POP3 and IMAP send).
fn copy_with_lf(
    body: &mut dyn Read,
    out: &mut dyn Write,
    mut header_end: Option<HeaderEnd>,
) -> io::Result<(u64, u64)> {
    // The read buffer starts small and doubles while reads fill it: most
    // messages are a few KB, and a zeroed 64 KB buffer costs 16 page
    // faults in a process that delivers one message and exits.
    let mut buf = vec![0u8; COPY_FIRST_READ];
    let mut converted = Vec::new();
    let mut ended = Vec::new();
    let mut size = 0;
    let mut wire = WireForm::new();
    let mut lf = crate::proto::message::CrlfToLf::default();
    // Every piece written is counted in both sizes.
    let mut emit = |piece: &[u8], wire: &mut WireForm| -> io::Result<()> {
        wire.count(piece);
        size += piece.len() as u64;
        out.write_all(piece)
    };
    loop {
        let n = match body.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(e),
        };
        if n == buf.len() && buf.len() < COPY_CHUNK {
            buf.resize((buf.len() * 2).min(COPY_CHUNK), 0);
        }
        converted.clear();
        // A CR not followed by LF is content; CRLF becomes LF.
        lf.feed(&buf[..n], &mut converted);
        let mut text = &converted[..];
        // The guard rewrites only the header: the body goes out as it is.
        if let Some(guard) = header_end.as_mut() {
            ended.clear();
            text = &text[guard.feed_header(text, &mut ended)..];
            emit(&ended, &mut wire)?;
        }
        emit(text, &mut wire)?;
    }
    converted.clear();
    lf.finish(&mut converted);
    if let Some(guard) = header_end.as_mut() {
        ended.clear();
        guard.feed(&converted, &mut ended);
        guard.finish(&mut ended);
        std::mem::swap(&mut converted, &mut ended);
    }
    emit(&converted, &mut wire)?;
    if !wire.at_line_start() {
        emit(b"\n", &mut wire)?;
    }
    Ok((size, wire.octets()))
}

/// The wire size (what POP3 RETR and IMAP BODY[] send) a name states:
/// its `,W=`, except in the name of a file stored as given
/// ([`is_wire_form`]), whose bare LFs, if any, are sent as CRLF like any
/// other file's: its size is then counted from its bytes ([`pop3_size`]).
pub fn stated_wire_size(name: &str) -> Option<u64> {
    if is_wire_form(name) {
        return None;
    }
    wire_size_from_name(name)
}

/// Whether a base name says its file is its own wire form: `,W=` equal
/// to `,S=`. Every file delivery writes with LF has a `,W=` larger than
/// its `,S=` (each LF counts two), and for a file with CRLF line ends the
/// two forms are the same bytes anyway; so only a file stored as given
/// (`Message::as_given`) is read differently: BINARY decodes its parts as
/// they are, bare LFs and all.
pub fn is_wire_form(base: &str) -> bool {
    match (size_from_name(base), wire_size_from_name(base)) {
        (Some(s), Some(w)) => s == w,
        _ => false,
    }
}

/// The size of a stored message as POP3 and IMAP send it (RETR, FETCH
/// BODY[], and the size LIST, STAT and RFC822.SIZE report): its wire form
/// (`proto::message`). Dot-stuffing is not counted (RFC 1939 §5). For
/// every file `deliver` writes this equals the `,W=` of its name; it is
/// for files from elsewhere whose names carry no `,W=`. `pop3::Transmit`
/// sends exactly this many octets.
pub fn pop3_size(reader: &mut dyn Read) -> io::Result<u64> {
    let mut buf = vec![0u8; 64 * 1024];
    let mut wire = WireForm::new();
    loop {
        match reader.read(&mut buf) {
            Ok(0) => return Ok(wire.octets_when_finished()),
            Ok(n) => wire.count(&buf[..n]),
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
}

/// A symlink met inside a mailbox, where postroom follows none
/// (`postroom-mailbox(5)`). It travels inside an [`io::Error`], so every
/// caller's error path stays as it was; [`symlink_refused`] finds it.
#[derive(Debug, Clone, thiserror::Error)]
#[error("{}: a symlink inside a mailbox, not followed (postroom-mailbox(5))", path.display())]
pub struct SymlinkRefused {
    pub path: PathBuf,
}

/// The [`SymlinkRefused`] an error carries, if it is one.
pub fn symlink_refused(error: &io::Error) -> Option<&SymlinkRefused> {
    error
        .get_ref()
        .and_then(|e| e.downcast_ref::<SymlinkRefused>())
}

/// `O_NOFOLLOW`, for `OpenOptionsExt::custom_flags`.
pub fn nofollow_flag() -> i32 {
    OFlags::NOFOLLOW.bits() as i32
}

/// Opens a file of the mailbox root (`maildirsize`, a folder's side files)
/// for reading, refusing it if the file itself is a symlink.
pub fn open_nofollow(path: &Path) -> io::Result<File> {
    OpenOptions::new()
        .read(true)
        .custom_flags(nofollow_flag())
        .open(path)
}

/// Reads a side file of a folder (`dovecot-uidlist`, `dovecot-keywords`)
/// that is replaced by rename, never written in place: a missing file, or
/// a symlink (not followed), reads as `None`, and the next write puts a
/// real file in its place.
pub fn read_side_file(path: &Path) -> io::Result<Option<Vec<u8>>> {
    let read = || {
        let mut bytes = Vec::new();
        open_nofollow(path)?.read_to_end(&mut bytes)?;
        Ok(bytes)
    };
    match fsutil::retry_stale(read) {
        Ok(bytes) => Ok(Some(bytes)),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
        Err(e) if e.raw_os_error() == Some(Errno::LOOP.raw_os_error()) => {
            tracing::warn!("{}: a symlink, not followed", path.display());
            Ok(None)
        }
        Err(e) => Err(e),
    }
}

const DIR_FLAGS: OFlags = OFlags::RDONLY
    .union(OFlags::DIRECTORY)
    .union(OFlags::CLOEXEC);

/// A directory inside a mailbox, opened so that no symlink below the
/// mailbox root is ever followed: the root by its path (where the admin put
/// it, a symlink included), every directory below it with `O_NOFOLLOW`
/// relative to its parent's descriptor, and every file relative to its own
/// directory's. Nothing is looked up by path again, so a folder replaced by
/// a symlink while a process works in it cannot send that process
/// elsewhere. The path is kept for messages only.
#[derive(Debug)]
pub struct NoFollowDir {
    fd: OwnedFd,
    path: PathBuf,
}

impl NoFollowDir {
    /// Opens a mailbox root (or any directory the admin names) by path.
    pub fn root(path: &Path) -> io::Result<NoFollowDir> {
        let fd = rustix::fs::openat(rustix::fs::CWD, path, DIR_FLAGS, Mode::empty())?;
        Ok(NoFollowDir {
            fd,
            path: path.to_path_buf(),
        })
    }

    /// Where this directory was (for messages).
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The path of an entry (for messages).
    pub fn join(&self, name: &str) -> PathBuf {
        self.path.join(name)
    }

    /// The directory `name` in this one; a symlink there is refused with
    /// [`SymlinkRefused`].
    pub fn dir(&self, name: &str) -> io::Result<NoFollowDir> {
        match rustix::fs::openat(&self.fd, name, DIR_FLAGS | OFlags::NOFOLLOW, Mode::empty()) {
            Ok(fd) => Ok(NoFollowDir {
                fd,
                path: self.join(name),
            }),
            Err(e) => Err(self.refusal(name, e)),
        }
    }

    /// Makes the directory `name` (mode 0700) unless something is there
    /// already; true when it made it.
    pub fn make_dir(&self, name: &str) -> io::Result<bool> {
        match rustix::fs::mkdirat(&self.fd, name, Mode::RWXU) {
            Ok(()) => Ok(true),
            Err(Errno::EXIST) => Ok(false),
            Err(e) => Err(e.into()),
        }
    }

    /// Opens the file `name` for reading; a symlink is refused.
    pub fn open_file(&self, name: &str) -> io::Result<File> {
        self.open_with(name, OFlags::RDONLY, 0)
    }

    /// Opens the file `name` with `flags` (plus `O_NOFOLLOW` and
    /// `O_CLOEXEC`), creating it with `mode` if `flags` say so.
    pub fn open_with(&self, name: &str, flags: OFlags, mode: u32) -> io::Result<File> {
        let flags = flags | OFlags::NOFOLLOW | OFlags::CLOEXEC;
        match rustix::fs::openat(&self.fd, name, flags, Mode::from_bits_truncate(mode)) {
            Ok(fd) => Ok(File::from(fd)),
            Err(e) => Err(self.refusal(name, e)),
        }
    }

    /// An open that failed on a symlink gives ELOOP (a file) or ENOTDIR
    /// (a directory): say what it was.
    fn refusal(&self, name: &str, errno: Errno) -> io::Error {
        if (errno == Errno::LOOP || errno == Errno::NOTDIR) && self.is_link(name) {
            return io::Error::other(SymlinkRefused {
                path: self.join(name),
            });
        }
        errno.into()
    }

    /// Whether `name` here is a symlink.
    pub fn is_link(&self, name: &str) -> bool {
        self.file_type(name) == Some(FileType::Symlink)
    }

    /// Whether `name` is here and is not a symlink.
    pub fn has(&self, name: &str) -> bool {
        self.file_type(name).is_some_and(|t| t != FileType::Symlink)
    }

    fn file_type(&self, name: &str) -> Option<FileType> {
        rustix::fs::statat(&self.fd, name, AtFlags::SYMLINK_NOFOLLOW)
            .ok()
            .map(|st| FileType::from_raw_mode(st.st_mode as _))
    }

    /// The size of `name` (not of what a symlink points to).
    pub fn size_of(&self, name: &str) -> Option<u64> {
        rustix::fs::statat(&self.fd, name, AtFlags::SYMLINK_NOFOLLOW)
            .ok()
            .and_then(|st| u64::try_from(st.st_size).ok())
    }

    /// The entries' names, less `.` and `..`, symlinks, and names that are
    /// not UTF-8 (no maildir program writes those).
    pub fn names(&self) -> io::Result<Vec<String>> {
        let mut names = Vec::new();
        for entry in rustix::fs::Dir::read_from(&self.fd)? {
            let entry = entry?;
            let Ok(name) = entry.file_name().to_str() else {
                continue;
            };
            if name == "." || name == ".." {
                continue;
            }
            let link = match entry.file_type() {
                FileType::Symlink => true,
                // Filesystems without d_type: ask.
                FileType::Unknown => self.is_link(name),
                _ => false,
            };
            if !link {
                names.push(name.to_string());
            }
        }
        Ok(names)
    }

    /// Renames `from` here to `to` in `dir` (the entry itself: a symlink
    /// would be moved, never followed).
    pub fn rename(&self, from: &str, dir: &NoFollowDir, to: &str) -> io::Result<()> {
        Ok(rustix::fs::renameat(&self.fd, from, &dir.fd, to)?)
    }

    /// Hard-links `from` here as `to` in `dir` (a symlink is linked as
    /// itself, never followed).
    pub fn link(&self, from: &str, dir: &NoFollowDir, to: &str) -> io::Result<()> {
        Ok(rustix::fs::linkat(
            &self.fd,
            from,
            &dir.fd,
            to,
            AtFlags::empty(),
        )?)
    }

    pub fn unlink(&self, name: &str) -> io::Result<()> {
        Ok(rustix::fs::unlinkat(&self.fd, name, AtFlags::empty())?)
    }

    /// Makes the directory's entries durable (Dovecot's maildir-sync.c).
    pub fn sync(&self) -> io::Result<()> {
        Ok(rustix::fs::fsync(&self.fd)?)
    }
}

/// The names of a user's Sieve scripts in their maildir
/// (`postroom-sieve(5)`): here, in the store's layer, so that backup
/// knows them too; the rules for changing the scripts are
/// `delivery::sieve::storage`'s, which takes the names from here.
pub mod sieve {
    /// The folder of a user's scripts, in their maildir.
    pub const FOLDER: &str = "sieve";
    /// The file `mailsort` runs: a link to the active script, or a script.
    pub const ACTIVE: &str = "active.sieve";
    /// What a script's file name ends with.
    pub const SUFFIX: &str = ".sieve";
}

#[cfg(test)]
mod tests {
    use super::*;

    fn deliver(
        md: &Maildir,
        body: &[u8],
        base: Option<&str>,
        quota: Option<u64>,
    ) -> Result<Delivered, MaildirError> {
        let mut body = body;
        md.deliver(Message {
            prepend: b"Return-Path: <a@b>\n",
            body: &mut body,
            base_name: base.map(str::to_string),
            search_cur: true,
            end_header: false,
            as_given: false,
            quota,
        })
    }

    #[test]
    fn delivers_with_lf_and_sizes_in_name() {
        let dir = tempfile::tempdir().unwrap();
        let md = Maildir::new(dir.path().join("u"));
        let Delivered::New(path) = deliver(&md, b"Subject: x\r\n\r\nhi\r\n", None, None).unwrap()
        else {
            panic!("not delivered")
        };
        let text = fs::read(&path).unwrap();
        assert_eq!(text, b"Return-Path: <a@b>\nSubject: x\n\nhi\n");
        let name = path.file_name().unwrap().to_string_lossy().to_string();
        assert_eq!(size_from_name(&name), Some(text.len() as u64));
        assert_eq!(wire_size_from_name(&name), Some(text.len() as u64 + 4));
        assert_eq!(fs::read_dir(md.path().join("tmp")).unwrap().count(), 0);
    }

    #[test]
    fn derived_name_delivers_once_even_after_move_to_cur() {
        let dir = tempfile::tempdir().unwrap();
        let md = Maildir::new(dir.path().join("u"));
        let Delivered::New(path) = deliver(&md, b"x\r\n", Some("100.Qabc-0.h"), None).unwrap()
        else {
            panic!()
        };
        assert_eq!(
            deliver(&md, b"x\r\n", Some("100.Qabc-0.h"), None).unwrap(),
            Delivered::AlreadyThere
        );
        let cur = md.path().join("cur").join(format!(
            "{}:2,S",
            path.file_name().unwrap().to_string_lossy()
        ));
        fs::rename(&path, cur).unwrap();
        assert_eq!(
            deliver(&md, b"x\r\n", Some("100.Qabc-0.h"), None).unwrap(),
            Delivered::AlreadyThere
        );
    }

    #[test]
    fn crlf_split_across_reads_is_joined() {
        struct Dribble<'a>(&'a [u8]);
        impl Read for Dribble<'_> {
            fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
                if self.0.is_empty() {
                    return Ok(0);
                }
                buf[0] = self.0[0];
                self.0 = &self.0[1..];
                Ok(1)
            }
        }
        let mut out = Vec::new();
        let (n, wire) = copy_with_lf(&mut Dribble(b"a\r\nb\rc\r\n\r"), &mut out, None).unwrap();
        // The trailing bare CR is content; the missing line end is added.
        assert_eq!(out, b"a\nb\rc\n\r\n");
        assert_eq!((n, wire), (out.len() as u64, 10));
        assert_eq!(pop3_size(&mut &out[..]).unwrap(), wire);
    }

    proptest::proptest! {
        /// Whatever the reads return, the copy is the message with each
        /// CRLF made LF, every other CR kept, and a last line end added.
        #[test]
        fn the_copy_ignores_how_reads_cut_the_message(
            body in crate::proto::message::strategies::message_bytes(300),
            cuts in proptest::collection::vec(1usize..9, 1..40),
        ) {
            /// Returns reads of the sizes in `.1`, in turn.
            struct Cut<'a>(&'a [u8], Vec<usize>, usize);
            impl Read for Cut<'_> {
                fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
                    let want = self.1[self.2 % self.1.len()].min(buf.len());
                    self.2 += 1;
                    let n = want.min(self.0.len());
                    buf[..n].copy_from_slice(&self.0[..n]);
                    self.0 = &self.0[n..];
                    Ok(n)
                }
            }
            let mut expected = crate::proto::message::crlf_to_lf(&body);
            if !expected.is_empty() && !expected.ends_with(b"\n") {
                expected.push(b'\n');
            }
            let mut out = Vec::new();
            let (n, wire) =
                copy_with_lf(&mut Cut(&body, cuts.clone(), 0), &mut out, None).unwrap();
            proptest::prop_assert_eq!(&out, &expected);
            proptest::prop_assert_eq!(n, out.len() as u64);
            proptest::prop_assert_eq!(wire, crate::proto::message::wire_form(&out).len() as u64);

            // With the header's end guarded, the header as the guard
            // writes it from the whole text, the body after it unchanged.
            let mut expected = Vec::new();
            let mut guard = HeaderEnd::lf();
            guard.feed(&crate::proto::message::crlf_to_lf(&body), &mut expected);
            guard.finish(&mut expected);
            if !expected.is_empty() && !expected.ends_with(b"\n") {
                expected.push(b'\n');
            }
            let mut out = Vec::new();
            let guard = Some(HeaderEnd::lf());
            let (n, wire) = copy_with_lf(&mut Cut(&body, cuts, 0), &mut out, guard).unwrap();
            proptest::prop_assert_eq!(&out, &expected);
            proptest::prop_assert_eq!(n, out.len() as u64);
            proptest::prop_assert_eq!(wire, crate::proto::message::wire_form(&out).len() as u64);
        }
    }

    #[test]
    fn a_body_larger_than_the_growing_buffer_is_copied_whole() {
        /// A slice reader that records the size of each read it is asked for.
        struct Sizes<'a>(&'a [u8], Vec<usize>);
        impl Read for Sizes<'_> {
            fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
                self.1.push(buf.len());
                self.0.read(buf)
            }
        }
        // 30,000 lines of 7 and 8 bytes: CRLFs fall across some of the
        // read ends, and the copy must join them whatever the read size.
        let mut body = Vec::new();
        let mut expected = Vec::new();
        for i in 0..30_000u32 {
            let line = if i % 2 == 0 { "abcde" } else { "abcdef" };
            body.extend_from_slice(format!("{line}\r\n").as_bytes());
            expected.extend_from_slice(format!("{line}\n").as_bytes());
        }
        let mut reader = Sizes(&body, Vec::new());
        let mut out = Vec::new();
        let (n, wire) = copy_with_lf(&mut reader, &mut out, None).unwrap();
        assert_eq!(out, expected);
        assert_eq!((n, wire), (expected.len() as u64, body.len() as u64));
        // The buffer doubles while reads fill it, up to COPY_CHUNK.
        let k = 1024;
        assert_eq!(
            reader.1[..6],
            [8 * k, 16 * k, 32 * k, 64 * k, 64 * k, 64 * k]
        );
    }

    #[test]
    fn quota_refuses_and_counts() {
        let dir = tempfile::tempdir().unwrap();
        let md = Maildir::new(dir.path().join("u"));
        deliver(&md, &[b'x'; 100], None, Some(250)).unwrap();
        match deliver(&md, &[b'x'; 200], None, Some(250)) {
            Err(MaildirError::OverQuota { used, limit: 250 }) => assert!(used >= 100),
            other => panic!("{other:?}"),
        }
        let (bytes, count) = md.quota_usage(250).unwrap();
        assert_eq!(count, 1);
        assert!(bytes > 100);
        // A changed limit rebuilds the file from the names.
        assert_eq!(md.quota_usage(999).unwrap(), (bytes, 1));
    }

    #[test]
    fn folder_names_cannot_escape() {
        let md = Maildir::new("/m/u");
        for bad in ["", "..", "../x", "a/b", ".hidden", "a..b", "x\n", "x."] {
            assert!(md.folder(bad).is_err(), "{bad:?}");
        }
        assert_eq!(md.folder("Sent").unwrap().path(), Path::new("/m/u/.Sent"));
        assert_eq!(md.folder("inbox").unwrap().path(), Path::new("/m/u"));
        assert_eq!(
            md.folder("Lists.rust").unwrap().path(),
            Path::new("/m/u/.Lists.rust")
        );
    }

    fn put(md: &Maildir, sub: &str, name: &str, body: &[u8]) {
        fs::create_dir_all(md.path().join(sub)).unwrap();
        fs::write(md.path().join(sub).join(name), body).unwrap();
    }

    #[test]
    fn split_name_reads_base_and_flags_as_pop3_and_imap_both_do() {
        for (name, want) in [
            ("1.a.h,S=2,W=3", Some(("1.a.h,S=2,W=3", ""))),
            ("1.a.h:2,", Some(("1.a.h", ""))),
            ("1.a.h,S=2:2,FRS", Some(("1.a.h,S=2", "FRS"))),
            ("1.a.h:2,Sab", Some(("1.a.h", "Sab"))),
            // Another info version, a dot file, nothing: not messages.
            ("1.a.h:1,x", None),
            (".uidlist.lock", None),
            ("", None),
        ] {
            assert_eq!(split_name(name), want, "{name:?}");
        }
        let file = MessageFile {
            sub: Sub::Cur,
            name: "1.a.h:1,x".into(),
        };
        assert_eq!((file.base(), file.flags()), ("1.a.h", ""));
    }

    #[test]
    fn messages_in_delivery_order_once_each() {
        let dir = tempfile::tempdir().unwrap();
        let md = Maildir::new(dir.path().join("u"));
        assert_eq!(md.messages().unwrap(), vec![], "no folder yet: empty");
        md.create().unwrap();
        put(&md, "cur", "200.b.h,S=1:2,S", b"x");
        put(&md, "new", "100.a.h,S=1", b"x");
        put(&md, "new", "1000.c.h", b"x");
        put(&md, "new", ".hidden", b"x");
        // The same message in both (caught mid-move): counted once, cur/ wins.
        put(&md, "new", "300.d.h", b"x");
        put(&md, "cur", "300.d.h:2,F", b"x");
        let names: Vec<String> = md.messages().unwrap().into_iter().map(|f| f.name).collect();
        assert_eq!(
            names,
            ["100.a.h,S=1", "200.b.h,S=1:2,S", "300.d.h:2,F", "1000.c.h"]
        );
    }

    #[test]
    fn flags_merge_sorted_and_follow_a_moved_message() {
        assert_eq!(merge_flags("SF", "R"), "FRS");
        assert_eq!(merge_flags("FRS", "S"), "FRS");
        let dir = tempfile::tempdir().unwrap();
        let md = Maildir::new(dir.path().join("u"));
        md.create().unwrap();
        put(&md, "new", "1.a.h,S=1,W=2", b"x\n");
        let seen_as = MessageFile {
            sub: Sub::New,
            name: "1.a.h,S=1,W=2".into(),
        };
        // Another client moves it and flags it before we get to it.
        fs::rename(
            md.path().join("new/1.a.h,S=1,W=2"),
            md.path().join("cur/1.a.h,S=1,W=2:2,Fa"),
        )
        .unwrap();
        let now = md.add_flags(&seen_as, "S").unwrap().unwrap();
        assert_eq!(now.name, "1.a.h,S=1,W=2:2,FSa");
        assert_eq!(now.base(), seen_as.base());
        assert!(md.file_path(&now).exists());
        fs::remove_file(md.file_path(&now)).unwrap();
        assert_eq!(md.add_flags(&seen_as, "S").unwrap(), None);
    }

    #[test]
    fn remove_follows_renames_counts_the_gone_and_updates_quota() {
        let dir = tempfile::tempdir().unwrap();
        let md = Maildir::new(dir.path().join("u"));
        for body in [b"aaaa\n", b"bbbb\n", b"cccc\n"] {
            deliver(&md, body, None, Some(10_000)).unwrap();
        }
        let (bytes, count) = md.quota_usage(10_000).unwrap();
        assert_eq!(count, 3);
        let files = md.messages().unwrap();
        // One moved to cur/ by an IMAP client, one removed by another session.
        let moved = md.add_flags(&files[0], "S").unwrap().unwrap();
        assert_eq!(moved.sub, Sub::Cur);
        fs::remove_file(md.file_path(&files[1])).unwrap();
        let result = md.remove(&files);
        assert_eq!(
            result,
            Removed {
                removed: 2,
                gone: 1,
                failed: 0
            }
        );
        assert_eq!(md.messages().unwrap(), vec![]);
        let one = files[0].size().unwrap();
        assert_eq!(md.quota_usage(10_000).unwrap(), (bytes - 2 * one, 1));
    }

    #[test]
    fn delivered_messages_end_with_a_line_end_and_w_is_exact() {
        let dir = tempfile::tempdir().unwrap();
        let md = Maildir::new(dir.path().join("u"));
        for body in [
            &b"no line end"[..],
            b"cr before crlf\r\r\n",
            b"",
            b"a\r\n.\r\n",
        ] {
            let Delivered::New(path) = deliver(&md, body, None, None).unwrap() else {
                panic!()
            };
            let stored = fs::read(&path).unwrap();
            assert!(stored.ends_with(b"\n"));
            let name = path.file_name().unwrap().to_string_lossy().to_string();
            assert_eq!(
                wire_size_from_name(&name),
                Some(pop3_size(&mut &stored[..]).unwrap()),
                "{name}"
            );
        }
    }
    #[test]
    fn delivery_never_writes_through_a_symlink() {
        let dir = tempfile::tempdir().unwrap();
        let outside = dir.path().join("outside");
        fs::create_dir(&outside).unwrap();
        let empty = |p: &Path| fs::read_dir(p).unwrap().count() == 0;
        for sub in ["new", "tmp", "cur"] {
            let md = Maildir::new(dir.path().join(format!("u-{sub}")));
            md.create().unwrap();
            fs::remove_dir(md.path().join(sub)).unwrap();
            std::os::unix::fs::symlink(&outside, md.path().join(sub)).unwrap();
            match deliver(&md, b"x\n", None, None) {
                Err(MaildirError::Symlink(e)) => assert!(e.path.ends_with(sub), "{e}"),
                other => panic!("{sub}: {other:?}"),
            }
            assert!(empty(&outside), "{sub}: wrote outside the mailbox");
        }

        // A folder that is a symlink to another maildir.
        let other = Maildir::new(dir.path().join("other"));
        other.create().unwrap();
        let md = Maildir::new(dir.path().join("u"));
        md.create().unwrap();
        std::os::unix::fs::symlink("../other", md.path().join(".Evil")).unwrap();
        let evil = md.folder("Evil").unwrap();
        assert!(matches!(
            deliver(&evil, b"x\n", None, None),
            Err(MaildirError::Symlink(_))
        ));
        assert!(matches!(evil.create(), Err(MaildirError::Symlink(_))));
        assert!(other.messages().unwrap().is_empty());
        assert!(!other.path().join("maildirfolder").exists());

        // A symlink planted in tmp/ under the name a queue delivery uses.
        let target = dir.path().join("victim");
        fs::write(&target, b"keep\n").unwrap();
        std::os::unix::fs::symlink(&target, md.path().join("tmp/100.Qx-0.h")).unwrap();
        assert!(deliver(&md, b"x\n", Some("100.Qx-0.h"), None).is_err());
        assert_eq!(fs::read(&target).unwrap(), b"keep\n");
        assert!(md.messages().unwrap().is_empty());
    }

    #[test]
    fn readers_leave_out_and_refuse_symlinked_messages() {
        let dir = tempfile::tempdir().unwrap();
        let secret = dir.path().join("secret");
        fs::write(&secret, b"Subject: not yours\n\n").unwrap();
        let md = Maildir::new(dir.path().join("u"));
        md.create().unwrap();
        put(&md, "new", "100.a.h", b"x\n");
        std::os::unix::fs::symlink(&secret, md.path().join("new/200.b.h")).unwrap();
        std::os::unix::fs::symlink(&secret, md.path().join("cur/300.c.h:2,S")).unwrap();
        let names: Vec<String> = md.messages().unwrap().into_iter().map(|f| f.name).collect();
        assert_eq!(names, ["100.a.h"]);
        let link = MessageFile {
            sub: Sub::New,
            name: "200.b.h".into(),
        };
        let err = md.open_message(&link).unwrap_err();
        assert!(symlink_refused(&err).is_some(), "{err}");
        // Removing it removes the link, never what it points to.
        assert_eq!(md.remove(&[link]).removed, 1);
        assert!(secret.exists());
    }

    proptest::proptest! {
        /// The three readers of a delivered message agree on its size: the
        /// `,W=` delivery puts in the name, the octets IMAP sends (its wire
        /// form) and what POP3 RETR sends, dot-stuffing undone.
        #[test]
        fn w_size_imap_and_pop3_agree_on_any_message(
            body in crate::proto::message::strategies::message_bytes(300),
        ) {
            let mut file = Vec::new();
            let (size, w) = copy_with_lf(&mut &body[..], &mut file, None).unwrap();
            proptest::prop_assert_eq!(size, file.len() as u64);
            let imap = crate::proto::message::wire_form(&file);
            proptest::prop_assert_eq!(imap.len() as u64, w);
            proptest::prop_assert_eq!(pop3_size(&mut &file[..]).unwrap(), w);
            let mut retr = crate::proto::pop3::Transmit::whole();
            let mut sent = Vec::new();
            retr.feed(&file, &mut sent);
            retr.finish(&mut sent);
            proptest::prop_assert_eq!(retr.octets(), w);
            let kept: Vec<u8> = sent
                .strip_suffix(b".\r\n")
                .unwrap_or_default()
                .split_inclusive(|&b| b == b'\n')
                .flat_map(|line| line.strip_prefix(b".").unwrap_or(line).to_vec())
                .collect();
            proptest::prop_assert_eq!(kept, imap);
        }
    }
}
