//! `postroom-modseq`: mod-sequences for CONDSTORE and QRESYNC (RFC 7162),
//! beside `dovecot-uidlist` so that file stays in Dovecot's format.
//!
//! ```text
//! postroom-modseq 1 V<uidvalidity> F<floor>
//! <uid> <modseq> <info>      the message's flags became <info> (":2," letters)
//! <uid> <modseq> -           the message was expunged
//! ```
//!
//! Any process may change a message's flags by renaming its file, and POP3
//! or a user's own tools may delete it, without writing here. So this file
//! is not told about changes: it *finds* them. A session that needs
//! mod-sequences compares the folder as it synced it with the flags the log
//! last recorded, and appends one line per difference, all with one new
//! mod-sequence, under an exclusive `flock` on the file. A change made and
//! undone between two looks is never seen, which is right: nothing changed.
//!
//! A new mod-sequence is the larger of the highest so far plus one and the
//! clock in microseconds. So if the file is lost, the messages found next
//! get values above any a client has seen, and clients resynchronise what
//! they must: losing the file costs bandwidth, never correctness. The same
//! goes for expunges: compaction drops the `-` lines and raises the floor
//! `F`, and a client asking about expunges older than the floor is told of
//! every UID it knew that is gone (RFC 7162 §3.2.5.1 allows more, not less).
//!
//! Lines are appended in one `write` under the lock; a torn last line (a
//! writer killed mid-write) does not parse and is cut off by the next
//! writer. Readers keep their offset and read only what was appended.

use std::collections::HashMap;
use std::fmt::Write as _;
use std::fs::{self, File};
use std::io::{self, Write};
use std::os::unix::fs::{FileExt, MetadataExt};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Weak};

use super::folder::Entry;

/// The file's name in each folder.
pub const FILE: &str = "postroom-modseq";
const MAGIC: &str = "postroom-modseq 1 V";
/// Rewrite when the log is this many lines longer than the folder.
const COMPACT_SLACK: usize = 10_000;

/// One session's view of a folder's mod-sequences.
#[derive(Debug)]
pub struct ModSeqs {
    path: PathBuf,
    validity: u32,
    /// Whether the file's header has been read (no file is kept open:
    /// 10,000 idle sessions must not hold 10,000 descriptors for it).
    opened: bool,
    inode: u64,
    read_to: u64,
    lines: usize,
    /// uid → (mod-sequence, info letters as last recorded).
    current: HashMap<u32, (u64, Box<str>)>,
    /// Expunged UIDs with the mod-sequence of their expunge.
    expunged: Vec<(u32, u64)>,
    highest: u64,
    /// Expunges at or below this were compacted away.
    floor: u64,
    /// The shared entries the log was last found to agree with, and how
    /// far the file had been read then: the same entries and no new line
    /// since need no comparison (SELECT of a big folder, unchanged).
    agreed: Option<(Weak<Vec<Entry>>, u64, u64)>,
}

fn clock_micros() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(1, |d| d.as_micros() as u64)
}

/// The header line at the start of `head`: UIDVALIDITY, floor, and the
/// line's length with its newline (`None` unless it is whole and ours).
fn parse_header(head: &[u8]) -> Option<(u32, u64, usize)> {
    let end = head.iter().position(|&b| b == b'\n')?;
    let line = std::str::from_utf8(&head[..end]).ok()?;
    let rest = line.strip_prefix(MAGIC)?;
    let mut fields = rest.split(' ');
    let validity = fields.next()?.parse().ok()?;
    let floor = fields.next()?.strip_prefix('F')?.parse().ok()?;
    Some((validity, floor, end + 1))
}

impl ModSeqs {
    pub fn new(dir: &Path, validity: u32) -> ModSeqs {
        ModSeqs {
            path: dir.join(FILE),
            validity,
            opened: false,
            inode: 0,
            read_to: 0,
            lines: 0,
            current: HashMap::new(),
            expunged: Vec::new(),
            highest: 0,
            floor: 0,
            agreed: None,
        }
    }

    /// The UIDVALIDITY these mod-sequences belong to.
    pub fn validity(&self) -> u32 {
        self.validity
    }

    fn reset(&mut self) {
        self.opened = false;
        self.inode = 0;
        self.read_to = 0;
        self.lines = 0;
        self.current.clear();
        self.expunged.clear();
        self.highest = 0;
        self.floor = 0;
        self.agreed = None;
    }

    /// HIGHESTMODSEQ: the largest mod-sequence given in this folder.
    pub fn highest(&self) -> u64 {
        self.highest.max(1)
    }

    /// Where this state was read to in the file: (inode, offset), when
    /// the file was read and ended there on a whole line (the folder
    /// index records it: the log agreed with its entries up to here).
    pub fn mark(&self) -> Option<(u64, u64)> {
        self.opened.then_some((self.inode, self.read_to))
    }

    /// The mod-sequence of a message (0 for one not yet recorded).
    pub fn of(&self, uid: u32) -> u64 {
        self.current.get(&uid).map_or(0, |(m, _)| *m)
    }

    /// UIDs expunged after `since`, and whether the answer is exact (false
    /// when `since` is below the floor: then the caller must treat every
    /// UID it knew and no longer has as expunged).
    pub fn expunged_since(&self, since: u64) -> (Vec<u32>, bool) {
        let mut uids: Vec<u32> = self
            .expunged
            .iter()
            .filter(|(_, m)| *m > since)
            .map(|(u, _)| *u)
            .collect();
        uids.sort_unstable();
        uids.dedup();
        (uids, since >= self.floor)
    }

    /// Records whatever changed in `entries` (the folder as just synced)
    /// since the log last looked, and returns the UIDs that got a new
    /// mod-sequence. Errors leave the in-memory state as it was read.
    pub fn update(&mut self, entries: &[Entry]) -> io::Result<Vec<u32>> {
        self.read()?;
        if self.diff(entries).is_empty() && self.opened {
            return Ok(Vec::new());
        }
        let Some(file) = super::open_locked_for_append(&self.path)? else {
            // Compacted while we waited: the next look sees the new file.
            return Ok(Vec::new());
        };
        self.update_locked(&file, entries)
    }

    /// [`ModSeqs::update`] for entries shared between sessions
    /// (`shared::Entries`): when the log already agreed with these very
    /// entries and nothing was appended since, nothing is compared.
    pub fn update_shared(&mut self, entries: &Arc<Vec<Entry>>) -> io::Result<Vec<u32>> {
        self.read()?;
        if let Some((seen, read_to, inode)) = &self.agreed
            && std::ptr::eq(seen.as_ptr(), Arc::as_ptr(entries))
            && (*read_to, *inode) == (self.read_to, self.inode)
            && self.opened
        {
            return Ok(Vec::new());
        }
        let changed = self.update(entries)?;
        self.agreed = Some((Arc::downgrade(entries), self.read_to, self.inode));
        Ok(changed)
    }

    fn update_locked(&mut self, file: &File, entries: &[Entry]) -> io::Result<Vec<u32>> {
        let header = format!("{MAGIC}{} F0\n", self.validity);
        let mut head = vec![0; MAGIC.len()];
        let len = file.metadata()?.len();
        let ours = len > 0
            && file.read_exact_at(&mut head, 0).is_ok()
            && head == MAGIC.as_bytes()
            && self
                .read_header(file)
                .is_some_and(|(v, _, _)| v == self.validity);
        if !ours {
            file.set_len(0)?;
            (&*file).write_all(header.as_bytes())?;
            self.reset();
        }
        if !self.read()? {
            // A torn last line: cut it off before appending after it.
            file.set_len(self.read_to)?;
        }
        let changed = self.diff(entries);
        if changed.is_empty() {
            return Ok(Vec::new());
        }
        let modseq = (self.highest + 1).max(clock_micros());
        // Written straight into one buffer: a first SELECT of a big
        // folder records every message, and a String per line left as
        // many holes in the heap as the folder has messages.
        let mut out = String::with_capacity(changed.len() * 32);
        let mut uids = Vec::with_capacity(changed.len());
        for &(uid, info) in &changed {
            let _ = writeln!(out, "{uid} {modseq} {}", info.unwrap_or("-"));
            uids.push(uid);
        }
        (&*file).write_all(out.as_bytes())?;
        self.read()?;
        if self.lines > self.current.len() * 2 + COMPACT_SLACK {
            self.compact()?;
        }
        Ok(uids)
    }

    /// What differs between `entries` and the log: (uid, Some(info)) for a
    /// new or changed message, (uid, None) for an expunged one.
    fn diff<'a>(&self, entries: &'a [Entry]) -> Vec<(u32, Option<&'a str>)> {
        let mut out = Vec::new();
        for e in entries {
            match self.current.get(&e.uid) {
                Some((_, info)) if **info == *e.info => {}
                _ => out.push((e.uid, Some(&*e.info))),
            }
        }
        if self.current.len() + out.len() > entries.len() {
            let present: std::collections::HashSet<u32> = entries.iter().map(|e| e.uid).collect();
            let mut gone: Vec<u32> = self
                .current
                .keys()
                .copied()
                .filter(|u| !present.contains(u))
                .collect();
            gone.sort_unstable();
            out.extend(gone.into_iter().map(|u| (u, None)));
        }
        out
    }

    fn read_header(&self, file: &File) -> Option<(u32, u64, usize)> {
        let mut head = vec![0; 64];
        let n = file.read_at(&mut head, 0).ok()?;
        parse_header(&head[..n])
    }

    /// The state a whole file's bytes describe, for a folder of this
    /// UIDVALIDITY: what [`ModSeqs::update`] reads, without the file (the
    /// fuzzer's way in).
    pub fn parse(bytes: &[u8], validity: u32) -> ModSeqs {
        let mut seqs = ModSeqs::new(Path::new(""), validity);
        if let Some((v, floor, header_len)) = parse_header(bytes)
            && v == validity
        {
            seqs.start(floor, header_len, 0);
            seqs.apply(&bytes[header_len..]);
        }
        seqs
    }

    fn start(&mut self, floor: u64, header_len: usize, inode: u64) {
        self.read_to = header_len as u64;
        self.floor = floor;
        self.highest = floor;
        self.inode = inode;
        self.opened = true;
    }

    /// Reads what was appended since the last look; true when the file
    /// ended on a whole line.
    fn read(&mut self) -> io::Result<bool> {
        let file = match crate::store::maildir::open_nofollow(&self.path) {
            Ok(f) => f,
            Err(e) if e.kind() == io::ErrorKind::NotFound => {
                self.reset();
                return Ok(true);
            }
            Err(e) => return Err(e),
        };
        let meta = file.metadata()?;
        if self.opened && (meta.ino() != self.inode || meta.len() < self.read_to) {
            self.reset();
        }
        if !self.opened {
            let Some((validity, floor, header_len)) = self.read_header(&file) else {
                return Ok(true);
            };
            if validity != self.validity {
                return Ok(true);
            }
            self.start(floor, header_len, meta.ino());
        }
        let len = meta.len();
        if len <= self.read_to {
            return Ok(true);
        }
        let mut tail = vec![0; (len - self.read_to) as usize];
        file.read_exact_at(&mut tail, self.read_to)?;
        let used = self.apply(&tail);
        self.read_to += used as u64;
        Ok(self.read_to == len)
    }

    /// Applies the whole lines of `tail` (a torn last one is left); returns
    /// how many bytes they took.
    fn apply(&mut self, tail: &[u8]) -> usize {
        let mut used = 0;
        for line in tail.split_inclusive(|&b| b == b'\n') {
            let Some(text) = line.strip_suffix(b"\n") else {
                break;
            };
            used += line.len();
            self.lines += 1;
            let Ok(text) = std::str::from_utf8(text) else {
                continue;
            };
            let mut fields = text.splitn(3, ' ');
            let (Some(uid), Some(modseq), Some(info)) = (
                fields.next().and_then(|u| u.parse::<u32>().ok()),
                fields.next().and_then(|m| m.parse::<u64>().ok()),
                fields.next(),
            ) else {
                continue;
            };
            self.highest = self.highest.max(modseq);
            if info == "-" {
                self.current.remove(&uid);
                self.expunged.push((uid, modseq));
            } else {
                self.current.insert(uid, (modseq, info.into()));
            }
        }
        used
    }

    /// Rewrites the log with the live messages only (under the lock); the
    /// expunge lines go and the floor rises to the highest mod-sequence.
    fn compact(&mut self) -> io::Result<()> {
        let mut uids: Vec<(&u32, &(u64, Box<str>))> = self.current.iter().collect();
        uids.sort_unstable_by_key(|(u, _)| **u);
        let mut out = format!("{MAGIC}{} F{}\n", self.validity, self.highest);
        for (uid, (modseq, info)) in uids {
            out.push_str(&format!("{uid} {modseq} {info}\n"));
        }
        let tmp = self
            .path
            .with_file_name(format!("{FILE}.{}", crate::store::fsutil::unique_suffix()));
        let result = fs::write(&tmp, out).and_then(|()| fs::rename(&tmp, &self.path));
        if result.is_err() {
            let _ = fs::remove_file(&tmp);
        }
        self.reset();
        self.read()?;
        result
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::fs::OpenOptions;

    fn entry(uid: u32, info: &str) -> Entry {
        Entry {
            uid,
            base: format!("m{uid}").into(),
            info: info.into(),
        }
    }

    #[test]
    fn changes_found_by_any_session_get_rising_mod_sequences() {
        let dir = tempfile::tempdir().unwrap();
        let mut a = ModSeqs::new(dir.path(), 5);
        let mut view = vec![entry(1, ""), entry(2, "S"), entry(3, "")];
        assert_eq!(a.update(&view).unwrap(), vec![1, 2, 3]);
        let first = a.highest();
        assert!(first > 1);
        assert_eq!(a.of(2), first);
        assert!(a.update(&view).unwrap().is_empty(), "nothing changed");

        // Someone else flags 3 and expunges 1; session b finds it.
        view = vec![entry(2, "S"), entry(3, "F")];
        let mut b = ModSeqs::new(dir.path(), 5);
        assert_eq!(b.update(&view).unwrap(), vec![3, 1]);
        let second = b.highest();
        assert!(second > first);
        assert_eq!(b.of(3), second);
        assert_eq!(b.of(2), first);
        // a reads what b wrote without recording anything twice.
        assert!(a.update(&view).unwrap().is_empty());
        assert_eq!(a.highest(), second);
        assert_eq!(a.expunged_since(first), (vec![1], true));
        assert_eq!(a.expunged_since(second), (vec![], true));
    }

    #[test]
    fn the_bytes_read_as_the_file_is() {
        let dir = tempfile::tempdir().unwrap();
        let mut a = ModSeqs::new(dir.path(), 5);
        a.update(&[entry(1, "S"), entry(2, "")]).unwrap();
        a.update(&[entry(1, "ST")]).unwrap();
        let bytes = fs::read(dir.path().join(FILE)).unwrap();
        let b = ModSeqs::parse(&bytes, 5);
        assert_eq!((b.highest(), b.of(1), b.of(2)), (a.highest(), a.of(1), 0));
        assert_eq!(b.expunged_since(0).0, vec![2]);
        // Another UIDVALIDITY's, or a header cut short, is no log at all.
        assert_eq!(ModSeqs::parse(&bytes, 6).of(1), 0);
        let header_end = bytes.iter().position(|&b| b == b'\n').unwrap();
        assert_eq!(ModSeqs::parse(&bytes[..header_end], 5).highest(), 1);
    }

    #[test]
    fn a_lost_or_foreign_log_only_ever_raises_mod_sequences() {
        let dir = tempfile::tempdir().unwrap();
        let mut a = ModSeqs::new(dir.path(), 5);
        let view = vec![entry(1, "")];
        a.update(&view).unwrap();
        let before = a.highest();
        fs::remove_file(dir.path().join(FILE)).unwrap();
        let mut b = ModSeqs::new(dir.path(), 5);
        b.update(&view).unwrap();
        assert!(b.highest() > before);
        // Another UIDVALIDITY's log is replaced, not trusted.
        let mut c = ModSeqs::new(dir.path(), 6);
        assert_eq!(c.update(&view).unwrap(), vec![1]);
    }

    #[test]
    fn torn_lines_are_cut_and_long_logs_compacted() {
        let dir = tempfile::tempdir().unwrap();
        let mut a = ModSeqs::new(dir.path(), 5);
        a.update(&[entry(1, "")]).unwrap();
        OpenOptions::new()
            .append(true)
            .open(dir.path().join(FILE))
            .unwrap()
            .write_all(b"1 99999999999999")
            .unwrap();
        let mut b = ModSeqs::new(dir.path(), 5);
        assert_eq!(b.update(&[entry(1, "S")]).unwrap(), vec![1]);
        let text = fs::read_to_string(dir.path().join(FILE)).unwrap();
        assert!(!text.contains("99999999999999"), "{text}");

        // Flip one flag many times: the log is rewritten, the floor rises.
        for i in 0..(COMPACT_SLACK + 10) {
            let info = if i % 2 == 0 { "" } else { "S" };
            b.update(&[entry(1, info)]).unwrap();
        }
        assert!(b.lines < COMPACT_SLACK);
        let (_, exact) = b.expunged_since(1);
        assert!(!exact, "expunges before the floor are not known exactly");
    }
}
