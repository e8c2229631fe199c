//! Maildir++ delivery: the one durable write into a mailbox (DESIGN §3).
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
//! The crate is still used where it fits: creating the folder structure.
//!
//! Names carry `,S=` (size on disk, LF line ends) and `,W=` (size with CRLF,
//! what POP3 and IMAP report), as Courier and Dovecot write them, so readers
//! never open a file to learn its size.
//!
//! Quota is Maildir++ `maildirsize` (courier-libs README.maildirquota): a
//! limits line, then appended `bytes count` lines; approximate by design, no
//! lock; recalculated from the names when it grows past 5120 bytes.

use std::fs::{self, File, OpenOptions};
use std::io::{self, BufRead, BufReader, Read, Write};
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};

use crate::fsutil;

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
    #[error("{path}: {error}")]
    Io { path: PathBuf, error: io::Error },
}

impl MaildirError {
    fn io(path: &Path) -> impl FnOnce(io::Error) -> MaildirError + '_ {
        move |error| MaildirError::Io {
            path: path.to_path_buf(),
            error,
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
    /// Quota in bytes for this mailbox, if any.
    pub quota: Option<u64>,
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

    /// Creates `cur`, `new` and `tmp` (and the root) if missing, mode 0700.
    /// A subfolder also gets `maildirfolder`, as Maildir++ asks.
    pub fn create(&self) -> Result<(), MaildirError> {
        if self.root.join("cur").is_dir() && self.root.join("new").is_dir() {
            return Ok(());
        }
        maildir::Maildir::from(self.root.clone())
            .create_dirs()
            .map_err(MaildirError::io(&self.root))?;
        if self.root != self.inbox {
            File::create(self.root.join("maildirfolder")).map_err(MaildirError::io(&self.root))?;
        }
        fsutil::fsync_dir(fsutil::parent_of(&self.root)).map_err(MaildirError::io(&self.root))
    }

    /// Delivers one message: tmp → fsync → link into new/ → fsync new/.
    pub fn deliver(&self, message: Message<'_>, hostname: &str) -> Result<Delivered, MaildirError> {
        self.create()?;
        let base = match &message.base_name {
            Some(base) => base.clone(),
            None => format!(
                "{}.{}.{}",
                fsutil::now_secs(),
                fsutil::unique_suffix(),
                fsutil::host_for_names(hostname)
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

        let tmp = self.root.join("tmp").join(&base);
        let result = self.write_and_link(&tmp, &base, message, used);
        // The tmp name is only a staging name; it goes whatever happened.
        let _ = fs::remove_file(&tmp);
        result
    }

    fn write_and_link(
        &self,
        tmp: &Path,
        base: &str,
        message: Message<'_>,
        used: Option<(u64, (u64, u64))>,
    ) -> Result<Delivered, MaildirError> {
        // A derived name may meet the debris of a crashed attempt in tmp/:
        // truncating it is right, since only the queue-message lock holder
        // delivers that name.
        let file = OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .mode(0o600)
            .open(tmp)
            .map_err(MaildirError::io(tmp))?;
        let mut out = io::BufWriter::with_capacity(64 * 1024, file);
        out.write_all(message.prepend)
            .map_err(MaildirError::io(tmp))?;
        let prepend_lines = message.prepend.iter().filter(|&&b| b == b'\n').count() as u64;
        let (body_size, body_lines) =
            copy_with_lf(message.body, &mut out).map_err(MaildirError::io(tmp))?;
        let file = out.into_inner().map_err(|e| MaildirError::Io {
            path: tmp.to_path_buf(),
            error: e.into_error(),
        })?;
        let size = message.prepend.len() as u64 + body_size;
        let wire_size = size + prepend_lines + body_lines;
        if let Some((limit, (bytes, _))) = used
            && bytes + size > limit
        {
            return Err(MaildirError::OverQuota { used: bytes, limit });
        }
        file.sync_all().map_err(MaildirError::io(tmp))?;
        drop(file);

        let name = format!("{base},S={size},W={wire_size}");
        let new = self.root.join("new").join(&name);
        match fs::hard_link(tmp, &new) {
            Ok(()) => {}
            Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {
                return Ok(Delivered::AlreadyThere);
            }
            Err(e) => return Err(MaildirError::io(&new)(e)),
        }
        fsutil::fsync_dir(&self.root.join("new")).map_err(MaildirError::io(&new))?;
        if used.is_some() {
            self.quota_add(size as i64, 1);
        }
        Ok(Delivered::New(new))
    }

    /// True if a message whose name starts with `base,` is in new/ or cur/.
    fn find_base(&self, base: &str) -> Result<bool, MaildirError> {
        let prefix = format!("{base},");
        let dirs: &[&str] = &["new", "cur"];
        for dir in dirs {
            let path = self.root.join(dir);
            let entries = match fs::read_dir(&path) {
                Ok(entries) => entries,
                Err(e) if e.kind() == io::ErrorKind::NotFound => continue,
                Err(e) => return Err(MaildirError::io(&path)(e)),
            };
            for entry in entries {
                let entry = entry.map_err(MaildirError::io(&path))?;
                if entry.file_name().to_string_lossy().starts_with(&prefix) {
                    return Ok(true);
                }
            }
        }
        Ok(false)
    }

    fn maildirsize_path(&self) -> PathBuf {
        self.inbox.join("maildirsize")
    }

    /// (bytes, messages) in use, from `maildirsize`, rebuilt when missing,
    /// too long, or written for another limit.
    pub fn quota_usage(&self, limit: u64) -> Result<(u64, u64), MaildirError> {
        let path = self.maildirsize_path();
        let limits_line = format!("{limit}S");
        if let Ok(file) = File::open(&path) {
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
        if let Ok(mut file) = OpenOptions::new().append(true).open(&path) {
            let _ = file.write_all(format!("{bytes} {count}\n").as_bytes());
        }
    }

    /// Sums sizes over INBOX and every folder, from the `,S=` in the names
    /// (stat only for names without it).
    fn scan_usage(&self) -> Result<(u64, u64), MaildirError> {
        let mut roots = vec![self.inbox.clone()];
        if let Ok(entries) = fs::read_dir(&self.inbox) {
            for entry in entries.flatten() {
                let name = entry.file_name();
                let name = name.to_string_lossy();
                // Maildir++ does not count Trash against the quota.
                if name.starts_with('.') && name != ".Trash" && entry.path().is_dir() {
                    roots.push(entry.path());
                }
            }
        }
        let (mut bytes, mut count) = (0, 0);
        for root in roots {
            for sub in ["new", "cur"] {
                let Ok(entries) = fs::read_dir(root.join(sub)) else {
                    continue;
                };
                for entry in entries.flatten() {
                    let name = entry.file_name();
                    let size = size_from_name(&name.to_string_lossy())
                        .or_else(|| entry.metadata().ok().map(|m| m.len()));
                    if let Some(size) = size {
                        bytes += size;
                        count += 1;
                    }
                }
            }
        }
        Ok((bytes, count))
    }
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

/// Copies `body` to `out`, turning CRLF into LF (a maildir holds LF-ended
/// lines, as qmail and Dovecot write them). Returns the bytes written and the
/// number of lines (each becomes one extra byte on the wire).
fn copy_with_lf(body: &mut dyn Read, out: &mut dyn Write) -> io::Result<(u64, u64)> {
    let mut buf = vec![0u8; 64 * 1024];
    let mut written = 0u64;
    let mut lines = 0u64;
    let mut pending_cr = false;
    loop {
        let n = match body.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(e),
        };
        let chunk = &buf[..n];
        let mut start = 0;
        if pending_cr {
            // A CR ended the previous chunk: drop it if this one starts with LF.
            if chunk[0] != b'\n' {
                out.write_all(b"\r")?;
                written += 1;
            }
            pending_cr = false;
        }
        let mut i = 0;
        while i < chunk.len() {
            match chunk[i] {
                b'\r' if i + 1 == chunk.len() => {
                    out.write_all(&chunk[start..i])?;
                    written += (i - start) as u64;
                    pending_cr = true;
                    start = chunk.len();
                }
                b'\r' if chunk[i + 1] == b'\n' => {
                    out.write_all(&chunk[start..i])?;
                    written += (i - start) as u64;
                    start = i + 1;
                }
                b'\n' => lines += 1,
                _ => {}
            }
            i += 1;
        }
        out.write_all(&chunk[start..])?;
        written += (chunk.len() - start) as u64;
    }
    if pending_cr {
        out.write_all(b"\r")?;
        written += 1;
    }
    Ok((written, lines))
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
        md.deliver(
            Message {
                prepend: b"Return-Path: <a@b>\n",
                body: &mut body,
                base_name: base.map(str::to_string),
                search_cur: true,
                quota,
            },
            "host.test",
        )
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
        let (n, lines) = copy_with_lf(&mut Dribble(b"a\r\nb\rc\r\n\r"), &mut out).unwrap();
        assert_eq!(out, b"a\nb\rc\n\r");
        assert_eq!((n, lines), (out.len() as u64, 2));
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
}
