//! `dovecot-uidlist`: the IMAP UIDs of one folder, in Dovecot's format.
//!
//! ```text
//! 3 V1700000000 N43
//! 41 :1700000000.M12P34Q0R1.host,S=812,W=830
//! 42 :1700000007.M9P35Q0R2.host,S=99,W=101
//! ```
//!
//! Line 1: version 3, `V` the UIDVALIDITY, `N` the next UID to give; other
//! header fields (Dovecot's `G` GUID) are kept as found. Then one line per
//! message, ascending: the UID, optional extension fields, and after ` :`
//! the maildir base name (the file name without its `:2,` flags).
//!
//! Readers take no lock: the file is only ever replaced by `rename`, so a
//! reader sees an old list or a new one. A writer creates
//! `dovecot-uidlist.lock` with O_EXCL, writes the new list into it and
//! renames it over `dovecot-uidlist`.
//!
//! A writer killed mid-way leaves its lock file behind. Dovecot waits for
//! such a lock to age ([`STALE_AFTER`], two minutes), and every session of
//! the folder waits with it: the "unable to lock" failure of busy servers.
//! Here the writer also holds a `flock` on its lock file, which the kernel
//! drops when the process dies; a lock file nobody holds a `flock` on, and
//! older than [`UNHELD_STALE_AFTER`] (the moment between its creation and
//! its flock), is a dead writer's and is removed at once. The age rule
//! stays for filesystems where flock means nothing across hosts. UIDs only grow and are never given
//! twice: `N` is never lowered, even when the last messages are expunged.

use std::fs::{self, File, OpenOptions};
use std::io::{self, Write};
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};

/// The file's name in each folder.
pub const FILE: &str = "dovecot-uidlist";
/// The writer's lock (and the new list's staging name).
pub const LOCK: &str = "dovecot-uidlist.lock";
/// A lock untouched for this long belongs to a dead writer (Dovecot's rule).
pub const STALE_AFTER: Duration = Duration::from_secs(120);
/// A lock file this old that no process holds a flock on is a dead
/// writer's.
pub const UNHELD_STALE_AFTER: Duration = Duration::from_secs(1);
/// How long a writer waits for another's lock before giving up.
const LOCK_WAIT: Duration = Duration::from_secs(10);

/// The parsed list.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct UidList {
    pub validity: u32,
    pub next_uid: u32,
    /// Header fields other than the version, `V` and `N`, kept verbatim.
    pub other_header: Vec<String>,
    /// (uid, base name), UIDs ascending.
    pub entries: Vec<(u32, String)>,
}

impl UidList {
    /// A new list: UIDVALIDITY from the clock (a folder recreated later gets
    /// a larger one), first UID 1.
    pub fn fresh() -> UidList {
        let now = SystemTime::now()
            .duration_since(SystemTime::UNIX_EPOCH)
            .map(|d| d.as_secs())
            .unwrap_or(1);
        UidList {
            validity: (now as u32).max(1),
            next_uid: 1,
            other_header: Vec::new(),
            entries: Vec::new(),
        }
    }

    /// A new list for a folder of the mailbox at `root`, with a
    /// UIDVALIDITY never given before in that mailbox: see
    /// [`next_validity`]. Should the root's record be unwritable, the
    /// clock's value is used (logged): a folder must still be creatable.
    pub fn fresh_in(root: &Path) -> UidList {
        let mut list = UidList::fresh();
        match next_validity(root) {
            Ok(v) => list.validity = v,
            Err(e) => tracing::warn!("{}: {e}", root.join(VALIDITY_FILE).display()),
        }
        list
    }

    /// Reads the list of the folder at `dir`; `None` when there is none yet.
    /// Lines that do not parse are skipped: their messages get new UIDs,
    /// which is the safe direction.
    pub fn read(dir: &Path) -> io::Result<Option<UidList>> {
        // A symlink in its place is not followed: no list, and the next
        // write replaces the link with a list of this folder's own.
        let Some(text) = crate::store::maildir::read_side_file(&dir.join(FILE))? else {
            return Ok(None);
        };
        Ok(UidList::parse(&String::from_utf8_lossy(&text)))
    }

    /// Parses list text; `None` when the header is not version 3.
    pub fn parse(text: &str) -> Option<UidList> {
        let mut lines = text.lines();
        let mut header = lines.next()?.split_ascii_whitespace();
        if header.next()? != "3" {
            return None;
        }
        let mut list = UidList::default();
        for field in header {
            if let Some(v) = field.strip_prefix('V') {
                list.validity = v.parse().ok()?;
            } else if let Some(n) = field.strip_prefix('N') {
                list.next_uid = n.parse().ok()?;
            } else {
                list.other_header.push(field.to_string());
            }
        }
        if list.validity == 0 {
            return None;
        }
        let mut last = 0;
        for line in lines {
            let Some((head, base)) = line.split_once(" :") else {
                continue;
            };
            let Some(Ok(uid)) = head.split(' ').next().map(str::parse::<u32>) else {
                continue;
            };
            // Out of order or duplicate UIDs would break every session's
            // view; such a line is dropped and its message renumbered. So
            // is a name with a control character: a torn last line ending
            // in the CR of its CRLF would otherwise keep the CR, and the
            // list would read differently once written back (a name with
            // a line break cannot be written as one line at all).
            if uid <= last
                || base.is_empty()
                || base.contains('/')
                || base.contains(char::is_control)
            {
                continue;
            }
            last = uid;
            list.entries.push((uid, base.to_string()));
        }
        list.next_uid = list.next_uid.max(last.saturating_add(1)).max(1);
        Some(list)
    }

    /// The file's text.
    pub fn render(&self) -> String {
        let mut out = String::with_capacity(32 + self.entries.len() * 64);
        out.push_str(&format!("3 V{} N{}", self.validity, self.next_uid));
        for field in &self.other_header {
            out.push(' ');
            out.push_str(field);
        }
        out.push('\n');
        // A name the list cannot hold (see `parse`) is left out rather than
        // written as a line that reads as another message's.
        for (uid, base) in self
            .entries
            .iter()
            .filter(|(_, b)| !b.contains(char::is_control))
        {
            out.push_str(&uid.to_string());
            out.push_str(" :");
            out.push_str(base);
            out.push('\n');
        }
        out
    }
}

/// At a mailbox's root: the last UIDVALIDITY given to any of its folders,
/// in hex, as Dovecot keeps it.
pub const VALIDITY_FILE: &str = "dovecot-uidvalidity";

/// The next UIDVALIDITY for a folder of the mailbox at `root`:
/// max(now, last + 1), recorded before it is returned. The clock alone
/// gives a folder deleted and created again within one second the value
/// it had, and a client's cache of its UIDs would silently name other
/// messages (RFC 9051 §2.3.1.1).
pub fn next_validity(root: &Path) -> io::Result<u32> {
    let mut given = 0;
    crate::store::fsutil::edit_locked::<io::Error>(&root.join(VALIDITY_FILE), |old| {
        let last = u32::from_str_radix(old.trim(), 16).unwrap_or(0);
        given = UidList::fresh().validity.max(last.saturating_add(1));
        Ok(format!("{given:08x}\n"))
    })?;
    Ok(given)
}

/// The writer's lock on one folder's list; dropping it without
/// [`UidLock::commit`] removes it and changes nothing.
#[derive(Debug)]
pub struct UidLock {
    dir: PathBuf,
    file: Option<File>,
}

impl UidLock {
    /// Takes the lock of the folder at `dir`, waiting up to 10 s for
    /// another writer (whose critical section is a readdir and a write).
    pub fn acquire(dir: &Path) -> io::Result<UidLock> {
        let path = dir.join(LOCK);
        let deadline = std::time::Instant::now() + LOCK_WAIT;
        let mut pause = Duration::from_millis(2);
        loop {
            match OpenOptions::new().write(true).create_new(true).open(&path) {
                Ok(file) => {
                    // Held for as long as this process lives (see above).
                    let _ = fs2::FileExt::try_lock_exclusive(&file);
                    return Ok(UidLock {
                        dir: dir.to_path_buf(),
                        file: Some(file),
                    });
                }
                Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {}
                Err(e) => return Err(e),
            }
            let age = fs::metadata(&path)
                .and_then(|m| m.modified())
                .ok()
                .and_then(|t| t.elapsed().ok());
            let unheld = age.is_some_and(|age| age > UNHELD_STALE_AFTER) && nobody_holds(&path);
            let stale = unheld || age.is_some_and(|age| age > STALE_AFTER);
            if stale {
                tracing::warn!("removing stale lock {}", path.display());
                let _ = fs::remove_file(&path);
                continue;
            }
            if std::time::Instant::now() >= deadline {
                return Err(io::Error::new(
                    io::ErrorKind::WouldBlock,
                    format!(
                        "{} is held by another process; try again (it is removed after {}s if its writer died)",
                        path.display(),
                        STALE_AFTER.as_secs()
                    ),
                ));
            }
            std::thread::sleep(pause);
            pause = (pause * 2).min(Duration::from_millis(50));
        }
    }

    /// Writes `list` and renames it into place, releasing the lock.
    pub fn commit(mut self, list: &UidList) -> io::Result<()> {
        let mut file = self
            .file
            .take()
            .ok_or_else(|| io::Error::other("lock already used"))?;
        let lock = self.dir.join(LOCK);
        file.write_all(list.render().as_bytes())?;
        // A list that vanished in a crash would renumber the folder: make
        // it durable before it replaces the old one.
        file.sync_data()?;
        drop(file);
        fs::rename(&lock, self.dir.join(FILE))?;
        Ok(())
    }
}

/// Whether no process holds a flock on the file at `path` (false when in
/// doubt: the file is gone or cannot be opened).
fn nobody_holds(path: &Path) -> bool {
    let Ok(file) = crate::store::fsutil::retry_stale(|| File::open(path)) else {
        return false;
    };
    match fs2::FileExt::try_lock_exclusive(&file) {
        // Ours now; it goes with `file`, and the caller removes the file.
        Ok(()) => true,
        Err(_) => false,
    }
}

impl Drop for UidLock {
    fn drop(&mut self) {
        if self.file.take().is_some() {
            let _ = fs::remove_file(self.dir.join(LOCK));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_dovecot_lists_and_keeps_unknown_header_fields() {
        let text = "3 V1234 N10 G0123abcd\n3 :a,S=1\n5 W99 :b:c\nbad line\n4 :out-of-order\n";
        let list = UidList::parse(text).unwrap();
        assert_eq!(list.validity, 1234);
        assert_eq!(list.next_uid, 10);
        assert_eq!(list.entries, vec![(3, "a,S=1".into()), (5, "b:c".into())]);
        assert_eq!(list.render(), "3 V1234 N10 G0123abcd\n3 :a,S=1\n5 :b:c\n");
        // N below the last UID is corrected upward, never downward.
        assert_eq!(UidList::parse("3 V1 N2\n7 :x\n").unwrap().next_uid, 8);
        assert!(UidList::parse("1 V1 N1\n").is_none());
        assert!(UidList::parse("").is_none());
    }

    #[test]
    fn a_name_with_a_control_character_is_neither_read_nor_written() {
        // Found by the mailbox_state fuzz target: a last line cut between
        // the CR and the LF of its CRLF read as a name ending in CR, which
        // was written back as a line that read as the name without it.
        let list = UidList::parse("3 V1 N5\n1 :a\n2 :b\r").unwrap();
        assert_eq!(list.entries, vec![(1, "a".to_string())]);
        assert_eq!(UidList::parse(&list.render()), Some(list));
        // A name with a line break in it cannot add a line of its own.
        let mut list = UidList::parse("3 V1 N9\n").unwrap();
        list.entries.push((3, "x\n1 :victim".to_string()));
        assert_eq!(list.render(), "3 V1 N9\n");
    }

    #[test]
    fn lock_excludes_and_stale_lock_is_broken() {
        let dir = tempfile::tempdir().unwrap();
        let lock = UidLock::acquire(dir.path()).unwrap();
        assert!(dir.path().join(LOCK).exists());
        drop(lock);
        assert!(!dir.path().join(LOCK).exists());

        // A lock file left by a writer killed a moment ago: nobody holds
        // its flock, so it is taken at once, not after two minutes.
        File::create(dir.path().join(LOCK)).unwrap();
        let file = File::options()
            .write(true)
            .open(dir.path().join(LOCK))
            .unwrap();
        file.set_modified(SystemTime::now() - Duration::from_secs(2))
            .unwrap();
        let start = std::time::Instant::now();
        drop(UidLock::acquire(dir.path()).unwrap());
        assert!(start.elapsed() < Duration::from_secs(1));
        // A live writer's lock is respected while it holds it.
        let held = UidLock::acquire(dir.path()).unwrap();
        assert!(!nobody_holds(&dir.path().join(LOCK)));
        drop(held);

        // A lock file left by a dead writer three minutes ago.
        let path = dir.path().join(LOCK);
        let file = File::create(&path).unwrap();
        file.set_modified(SystemTime::now() - Duration::from_secs(180))
            .unwrap();
        let lock = UidLock::acquire(dir.path()).unwrap();
        let mut list = UidList::fresh();
        list.entries.push((1, "m".into()));
        list.next_uid = 2;
        lock.commit(&list).unwrap();
        assert_eq!(UidList::read(dir.path()).unwrap().unwrap(), list);
        assert!(!path.exists());
    }
}
