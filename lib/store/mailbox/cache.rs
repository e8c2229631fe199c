//! `postroom-cache`: what IMAP computed about each message of a folder
//! (ENVELOPE, BODY, BODYSTRUCTURE, sizes, dates, decoded header fields), so
//! the next sync of a big folder reads one file instead of every message.
//!
//! It is only a cache (`postroom-mailbox(5)`): any record may be missing,
//! the file may be deleted at any time, and a record that does not check
//! out is ignored. Nothing in it is ever the only copy of anything.
//!
//! ```text
//! postroom-cache 3 V<uidvalidity>\n
//! record*      record = len:u32le crc32(payload):u32le payload
//! ```
//!
//! Records are appended, never changed: a later record for the same UID
//! replaces an earlier one (it knows more, e.g. a BODYSTRUCTURE). Writers
//! append under an exclusive `flock` on the file; a writer that finds a torn
//! record at the end (a writer killed mid-write) cuts it off first, so a
//! torn record is only ever the last one. Readers take no lock: they read
//! up to the first record that is short or fails its CRC, and look again
//! next time. When most records are dead (superseded, or their messages
//! expunged), a writer rewrites the file into a temporary one and renames
//! it into place; readers notice the new inode and start over.
//!
//! A session keeps only an index (UID → offset), a few bytes per message,
//! and reads each record with `pread` when it needs it.

use std::collections::HashMap;
use std::fs::{self, File};
use std::io::{self, Write};
use std::os::unix::fs::{FileExt, MetadataExt};
use std::path::{Path, PathBuf};

/// The file's name in each folder.
pub const FILE: &str = "postroom-cache";
// 2: ENVELOPEs with the Sender/Reply-To fallback and source routes; 3:
// Message-ID, In-Reply-To and References as they stand, angle brackets
// and all. A file of an older version reads as another UIDVALIDITY's, and
// is replaced.
const MAGIC: &str = "postroom-cache 3 V";
/// Largest record accepted; anything larger is corruption.
const RECORD_MAX: u32 = 16 << 20;
/// How much of the file a scan reads at a time.
const SCAN_CHUNK: u64 = 1 << 20;
/// Rewrite when the file is at least this big and mostly dead records.
const COMPACT_MIN: u64 = 1 << 20;

/// What is cached about one message.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Record {
    pub uid: u32,
    /// The maildir base name: a record is used only for the same message.
    pub base: String,
    /// Size with CRLF line ends (RFC822.SIZE).
    pub size: u64,
    /// INTERNALDATE, seconds since the epoch.
    pub internal_date: i64,
    /// The Date header in seconds since the epoch (UTC), if it parses.
    pub sent_date: Option<i64>,
    /// The ENVELOPE response, as sent.
    pub envelope: Vec<u8>,
    /// BODY and BODYSTRUCTURE as sent, once the whole message was read.
    pub body: Option<Vec<u8>>,
    pub bodystructure: Option<Vec<u8>>,
    /// (upper-case name, decoded value) of the fields SEARCH, SORT and
    /// THREAD ask for most ([`SEARCH_FIELDS`]).
    pub headers: Vec<(String, String)>,
}

/// The header fields a record keeps, decoded.
pub const SEARCH_FIELDS: [&str; 10] = [
    "SUBJECT",
    "FROM",
    "TO",
    "CC",
    "BCC",
    "DATE",
    "MESSAGE-ID",
    "IN-REPLY-TO",
    "REFERENCES",
    "SENDER",
];

impl Record {
    /// The decoded values of a field (several when it repeats).
    pub fn header<'a>(&'a self, name: &'a str) -> impl Iterator<Item = &'a str> + 'a {
        self.headers
            .iter()
            .filter(move |(n, _)| n == name)
            .map(|(_, v)| v.as_str())
    }

    /// The record's bytes in the file (a frame's payload).
    pub fn encode(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(
            64 + self.base.len()
                + self.envelope.len()
                + self.bodystructure.as_ref().map_or(0, |b| 2 * b.len()),
        );
        out.extend_from_slice(&self.uid.to_le_bytes());
        out.extend_from_slice(&self.size.to_le_bytes());
        out.extend_from_slice(&self.internal_date.to_le_bytes());
        out.extend_from_slice(&self.sent_date.unwrap_or(i64::MIN).to_le_bytes());
        put(&mut out, Some(self.base.as_bytes()));
        put(&mut out, Some(&self.envelope));
        put(&mut out, self.body.as_deref());
        put(&mut out, self.bodystructure.as_deref());
        out.extend_from_slice(&(self.headers.len() as u32).to_le_bytes());
        for (name, value) in &self.headers {
            put(&mut out, Some(name.as_bytes()));
            put(&mut out, Some(value.as_bytes()));
        }
        out
    }

    /// A record from a frame's payload; `None` when it is cut short or
    /// not UTF-8 where text belongs (bytes after the record are ignored).
    pub fn decode(mut p: &[u8]) -> Option<Record> {
        let uid = u32::from_le_bytes(take(&mut p, 4)?.try_into().ok()?);
        let size = u64::from_le_bytes(take(&mut p, 8)?.try_into().ok()?);
        let internal_date = i64::from_le_bytes(take(&mut p, 8)?.try_into().ok()?);
        let sent = i64::from_le_bytes(take(&mut p, 8)?.try_into().ok()?);
        let base = String::from_utf8(get(&mut p)??.to_vec()).ok()?;
        let envelope = get(&mut p)??.to_vec();
        let body = get(&mut p)?.map(<[u8]>::to_vec);
        let bodystructure = get(&mut p)?.map(<[u8]>::to_vec);
        let count = u32::from_le_bytes(take(&mut p, 4)?.try_into().ok()?);
        let mut headers = Vec::with_capacity((count as usize).min(64));
        for _ in 0..count {
            let name = String::from_utf8(get(&mut p)??.to_vec()).ok()?;
            let value = String::from_utf8(get(&mut p)??.to_vec()).ok()?;
            headers.push((name, value));
        }
        Some(Record {
            uid,
            base,
            size,
            internal_date,
            sent_date: (sent != i64::MIN).then_some(sent),
            envelope,
            body,
            bodystructure,
            headers,
        })
    }
}

/// A length-prefixed field; `u32::MAX` stands for "absent".
fn put(out: &mut Vec<u8>, field: Option<&[u8]>) {
    match field {
        Some(bytes) => {
            out.extend_from_slice(&(bytes.len() as u32).to_le_bytes());
            out.extend_from_slice(bytes);
        }
        None => out.extend_from_slice(&u32::MAX.to_le_bytes()),
    }
}

fn take<'a>(p: &mut &'a [u8], n: usize) -> Option<&'a [u8]> {
    if p.len() < n {
        return None;
    }
    let (head, rest) = p.split_at(n);
    *p = rest;
    Some(head)
}

/// `Some(None)` for an absent field, `None` for a truncated one.
fn get<'a>(p: &mut &'a [u8]) -> Option<Option<&'a [u8]>> {
    let len = u32::from_le_bytes(take(p, 4)?.try_into().ok()?);
    if len == u32::MAX {
        return Some(None);
    }
    take(p, len as usize).map(Some)
}

/// The whole, intact frames at the start of `tail` (the file after its
/// header or after what was read before) as (uid, offset of the payload in
/// `tail`, its length), and how many bytes they take: a frame cut short, too
/// long or failing its CRC ends the scan (a torn append).
pub fn frames(tail: &[u8]) -> (Vec<(u32, usize, u32)>, usize) {
    let mut found = Vec::new();
    let mut at = 0usize;
    while tail.len() - at >= 8 {
        let len = u32::from_le_bytes([tail[at], tail[at + 1], tail[at + 2], tail[at + 3]]);
        let crc = u32::from_le_bytes([tail[at + 4], tail[at + 5], tail[at + 6], tail[at + 7]]);
        if len > RECORD_MAX || tail.len() - at - 8 < len as usize {
            break;
        }
        let payload = &tail[at + 8..at + 8 + len as usize];
        if crc32fast::hash(payload) != crc || payload.len() < 4 {
            break;
        }
        let uid = u32::from_le_bytes([payload[0], payload[1], payload[2], payload[3]]);
        found.push((uid, at + 8, len));
        at += 8 + len as usize;
    }
    (found, at)
}

/// A record framed as in the file: length, CRC-32, payload.
pub fn frame(record: &Record) -> Vec<u8> {
    let payload = record.encode();
    let mut out = Vec::with_capacity(payload.len() + 8);
    out.extend_from_slice(&(payload.len() as u32).to_le_bytes());
    out.extend_from_slice(&crc32fast::hash(&payload).to_le_bytes());
    out.extend_from_slice(&payload);
    out
}

/// One session's handle on a folder's cache.
#[derive(Debug)]
pub struct Cache {
    path: PathBuf,
    validity: u32,
    file: Option<File>,
    inode: u64,
    /// Where the last good record read ends.
    read_to: u64,
    /// UID → (offset of the payload, its length).
    index: HashMap<u32, (u64, u32)>,
    /// Records in the file (live or superseded), for the compaction rule.
    records: usize,
    pending: Vec<Record>,
}

impl Cache {
    /// The cache of the folder at `dir` for this UIDVALIDITY; nothing is
    /// read until it is used.
    pub fn new(dir: &Path, validity: u32) -> Cache {
        Cache {
            path: dir.join(FILE),
            validity,
            file: None,
            inode: 0,
            read_to: 0,
            index: HashMap::new(),
            records: 0,
            pending: Vec::new(),
        }
    }

    fn header(&self) -> String {
        format!("{MAGIC}{}\n", self.validity)
    }

    fn reset(&mut self) {
        self.file = None;
        self.inode = 0;
        self.read_to = 0;
        self.index.clear();
        self.records = 0;
    }

    /// Reads what other sessions appended since the last look. Call once
    /// per command, before the lookups.
    pub fn refresh(&mut self) {
        if let Err(e) = self.try_refresh() {
            tracing::debug!("{}: {e}; carrying on without it", self.path.display());
            self.reset();
        }
    }

    fn try_refresh(&mut self) -> io::Result<()> {
        let file = match crate::store::maildir::open_nofollow(&self.path) {
            Ok(f) => f,
            Err(e) if e.kind() == io::ErrorKind::NotFound => {
                self.reset();
                return Ok(());
            }
            Err(e) => return Err(e),
        };
        let meta = file.metadata()?;
        let mut head = vec![0; self.header().len()];
        if file.read_exact_at(&mut head, 0).is_err() || head != self.header().as_bytes() {
            // Another UIDVALIDITY's, or not ours: as good as none.
            self.reset();
            return Ok(());
        }
        // The index holds for the same file, grown or not; a replaced
        // (compacted) or truncated one is read again from the start.
        if meta.ino() != self.inode || meta.len() < self.read_to || self.read_to == 0 {
            self.reset();
            self.inode = meta.ino();
            self.read_to = head.len() as u64;
        }
        self.file = Some(file);
        self.scan()?;
        Ok(())
    }

    /// Closes the file, keeping the index for the next
    /// [`Cache::refresh`]: an idle session holds no descriptor for it.
    pub fn release(&mut self) {
        self.file = None;
    }

    /// Indexes records from `read_to` up to the first incomplete one;
    /// returns whether the scan reached the end of the file cleanly.
    fn scan(&mut self) -> io::Result<bool> {
        let Some(file) = &self.file else {
            return Ok(true);
        };
        let end = file.metadata()?.len();
        if end <= self.read_to {
            return Ok(end == self.read_to);
        }
        // A slice at a time: a big folder's cache is tens of megabytes,
        // and holding it all at once only to index it would leave the
        // process that much bigger.
        let mut want = SCAN_CHUNK;
        let mut tail = Vec::new();
        while self.read_to < end {
            let n = (end - self.read_to).min(want) as usize;
            tail.resize(n, 0);
            file.read_exact_at(&mut tail, self.read_to)?;
            let (frames, at) = frames(&tail);
            for (uid, offset, len) in frames {
                self.index.insert(uid, (self.read_to + offset as u64, len));
                self.records += 1;
            }
            self.read_to += at as u64;
            if at > 0 {
                want = SCAN_CHUNK;
                continue;
            }
            // Nothing whole in the slice: a record longer than the slice
            // (read again, whole), or the torn or bad end of the file.
            let len = tail
                .get(..4)
                .and_then(|b| b.try_into().ok())
                .map(u32::from_le_bytes);
            match len {
                Some(len) if len <= RECORD_MAX && u64::from(len) + 8 > n as u64 => {
                    want = u64::from(len) + 8;
                }
                _ => break,
            }
            if self.read_to + want > end {
                break;
            }
        }
        Ok(self.read_to == end)
    }

    /// The record of `uid`, if cached for the message named `base`.
    pub fn get(&self, uid: u32, base: &str) -> Option<Record> {
        let &(offset, len) = self.index.get(&uid)?;
        let file = self.file.as_ref()?;
        let mut payload = vec![0; len as usize];
        file.read_exact_at(&mut payload, offset).ok()?;
        let record = Record::decode(&payload)?;
        (record.uid == uid && record.base == base).then_some(record)
    }

    /// Whether a record for `uid` is known (it may still turn out to be
    /// another message's, which [`Cache::get`] checks).
    pub fn has(&self, uid: u32) -> bool {
        self.index.contains_key(&uid)
    }

    /// Queues a record for the next [`Cache::flush`].
    pub fn put(&mut self, record: Record) {
        self.pending.push(record);
    }

    /// Appends the queued records, compacting the file when most of it is
    /// dead (`live` says which UIDs the folder still has). Failing to write
    /// a cache is never an error for the client: it is logged and dropped.
    pub fn flush(&mut self, live: &dyn Fn(u32) -> bool) {
        if self.pending.is_empty() {
            return;
        }
        let pending = std::mem::take(&mut self.pending);
        if let Err(e) = self.append(&pending, live) {
            tracing::warn!("{}: {e}; not cached", self.path.display());
            self.reset();
        }
    }

    fn append(&mut self, records: &[Record], live: &dyn Fn(u32) -> bool) -> io::Result<()> {
        let Some(file) = super::open_locked_for_append(&self.path)? else {
            return Ok(());
        };
        let mut head = vec![0; self.header().len()];
        let fresh = file.metadata()?.len() == 0
            || file.read_exact_at(&mut head, 0).is_err()
            || head != self.header().as_bytes();
        if fresh {
            file.set_len(0)?;
            (&file).write_all(self.header().as_bytes())?;
            self.reset();
        }
        if self.inode != file.metadata()?.ino() || self.read_to == 0 {
            self.reset();
            self.inode = file.metadata()?.ino();
            self.read_to = self.header().len() as u64;
        }
        if self.file.is_none() {
            // A file of its own, not a dup of `file`: a dup would share
            // the open file description, and with it the flock.
            self.file = Some(crate::store::maildir::open_nofollow(&self.path)?);
        }
        if !self.scan()? {
            // A torn record from a writer that died: cut it off, under the
            // lock, so it never sits between good ones.
            file.set_len(self.read_to)?;
        }
        let mut out = Vec::new();
        let mut offsets = Vec::with_capacity(records.len());
        for record in records {
            let framed = frame(record);
            offsets.push((
                record.uid,
                self.read_to + out.len() as u64 + 8,
                (framed.len() - 8) as u32,
            ));
            out.extend_from_slice(&framed);
        }
        (&file).write_all(&out)?;
        for (uid, offset, len) in offsets {
            self.index.insert(uid, (offset, len));
        }
        self.records += records.len();
        self.read_to += out.len() as u64;
        let alive = self.index.keys().filter(|&&uid| live(uid)).count();
        if self.read_to >= COMPACT_MIN && alive * 2 < self.records {
            self.compact(live)?;
        }
        file.unlock()?;
        Ok(())
    }

    /// Rewrites the file with the live records only (called under the lock).
    fn compact(&mut self, live: &dyn Fn(u32) -> bool) -> io::Result<()> {
        let tmp = self
            .path
            .with_file_name(format!("{FILE}.{}", crate::store::fsutil::unique_suffix()));
        let result = (|| {
            let mut out = self.header().into_bytes();
            let mut uids: Vec<u32> = self.index.keys().copied().filter(|&u| live(u)).collect();
            uids.sort_unstable();
            let file = self
                .file
                .as_ref()
                .ok_or_else(|| io::Error::other("closed"))?;
            for uid in uids {
                let (offset, len) = self.index[&uid];
                let mut payload = vec![0; len as usize];
                file.read_exact_at(&mut payload, offset)?;
                out.extend_from_slice(&len.to_le_bytes());
                out.extend_from_slice(&crc32fast::hash(&payload).to_le_bytes());
                out.extend_from_slice(&payload);
            }
            fs::write(&tmp, &out)?;
            fs::rename(&tmp, &self.path)
        })();
        if result.is_err() {
            let _ = fs::remove_file(&tmp);
        }
        // Start over from the new file at the next refresh.
        self.reset();
        result
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::fs::OpenOptions;

    fn record(uid: u32, base: &str) -> Record {
        Record {
            uid,
            base: base.into(),
            size: 1234,
            internal_date: 1_700_000_000,
            sent_date: Some(1_699_999_000),
            envelope: b"(\"date\" \"subj\" NIL NIL NIL NIL NIL NIL NIL NIL)".to_vec(),
            body: None,
            bodystructure: Some(b"(\"text\" \"plain\" NIL NIL NIL \"7bit\" 3 1)".to_vec()),
            headers: vec![("SUBJECT".into(), "Grüße".into())],
        }
    }

    #[test]
    fn records_round_trip_between_sessions_and_later_ones_win() {
        let dir = tempfile::tempdir().unwrap();
        let mut a = Cache::new(dir.path(), 7);
        a.refresh();
        assert_eq!(a.get(1, "m1"), None);
        a.put(record(1, "m1"));
        a.put(record(2, "m2"));
        a.flush(&|_| true);
        assert_eq!(a.get(1, "m1"), Some(record(1, "m1")));
        // The base name guards against a record for another message.
        assert_eq!(a.get(1, "other"), None);

        let mut b = Cache::new(dir.path(), 7);
        b.refresh();
        assert_eq!(b.get(2, "m2"), Some(record(2, "m2")));
        let mut better = record(2, "m2");
        better.body = Some(b"(body)".to_vec());
        b.put(better.clone());
        b.flush(&|_| true);
        a.refresh();
        assert_eq!(a.get(2, "m2"), Some(better));

        // Another UIDVALIDITY's file is ignored, then replaced.
        let mut c = Cache::new(dir.path(), 8);
        c.refresh();
        assert_eq!(c.get(1, "m1"), None);
        c.put(record(1, "m1"));
        c.flush(&|_| true);
        a.refresh();
        assert_eq!(a.get(1, "m1"), None);
    }

    #[test]
    fn a_file_bigger_than_a_scan_slice_is_read_whole_with_records_across_slices() {
        let dir = tempfile::tempdir().unwrap();
        let mut a = Cache::new(dir.path(), 3);
        // Records that straddle slice boundaries, and one bigger than a
        // slice, then a torn one at the end.
        let mut big = record(5000, "big");
        big.envelope = vec![b'x'; SCAN_CHUNK as usize * 2];
        for uid in 1..4000 {
            a.put(record(uid, &format!("m{uid}")));
        }
        a.put(big.clone());
        a.put(record(5001, "after"));
        a.flush(&|_| true);
        let path = dir.path().join(FILE);
        assert!(fs::metadata(&path).unwrap().len() > 2 * SCAN_CHUNK);
        OpenOptions::new()
            .append(true)
            .open(&path)
            .unwrap()
            .write_all(&[200, 0, 0, 0, 1, 2])
            .unwrap();
        let mut b = Cache::new(dir.path(), 3);
        b.refresh();
        assert_eq!(b.get(3999, "m3999"), Some(record(3999, "m3999")));
        assert_eq!(b.get(5000, "big"), Some(big));
        assert_eq!(b.get(5001, "after"), Some(record(5001, "after")));
        assert_eq!(b.index.len(), 4001);
    }

    #[test]
    fn a_torn_record_is_ignored_then_cut_off_by_the_next_writer() {
        let dir = tempfile::tempdir().unwrap();
        let mut a = Cache::new(dir.path(), 1);
        a.put(record(1, "m1"));
        a.flush(&|_| true);
        // A writer killed half-way through its record.
        let framed = frame(&record(2, "m2"));
        let mut f = OpenOptions::new()
            .append(true)
            .open(dir.path().join(FILE))
            .unwrap();
        f.write_all(&framed[..framed.len() / 2]).unwrap();
        let mut b = Cache::new(dir.path(), 1);
        b.refresh();
        assert!(b.get(1, "m1").is_some());
        assert_eq!(b.get(2, "m2"), None);
        b.put(record(3, "m3"));
        b.flush(&|_| true);
        let mut c = Cache::new(dir.path(), 1);
        c.refresh();
        assert!(c.get(1, "m1").is_some() && c.get(3, "m3").is_some());
        // Garbage in the middle of a payload fails its CRC.
        let mut bytes = fs::read(dir.path().join(FILE)).unwrap();
        let last = bytes.len() - 3;
        bytes[last] ^= 0xff;
        fs::write(dir.path().join(FILE), &bytes).unwrap();
        let mut d = Cache::new(dir.path(), 1);
        d.refresh();
        assert!(d.get(1, "m1").is_some());
        assert_eq!(d.get(3, "m3"), None);
    }

    #[test]
    fn mostly_dead_files_are_compacted() {
        let dir = tempfile::tempdir().unwrap();
        let mut a = Cache::new(dir.path(), 1);
        let big = |uid: u32| Record {
            envelope: vec![b'x'; 64 * 1024],
            ..record(uid, &format!("m{uid}"))
        };
        for uid in 1..=20 {
            a.put(big(uid));
        }
        a.flush(&|_| true);
        let before = fs::metadata(dir.path().join(FILE)).unwrap().len();
        // Messages 1..=15 expunged.
        a.put(big(21));
        a.flush(&|uid| uid > 15);
        let after = fs::metadata(dir.path().join(FILE)).unwrap().len();
        assert!(after < before / 2, "{after} vs {before}");
        a.refresh();
        assert!(a.get(1, "m1").is_none());
        assert_eq!(a.get(16, "m16"), Some(big(16)));
        assert_eq!(a.get(21, "m21"), Some(big(21)));
    }

    #[test]
    fn decoding_garbage_never_panics() {
        for len in 0..64 {
            let bytes: Vec<u8> = (0..len).map(|i| (i * 37 % 256) as u8).collect();
            let _ = Record::decode(&bytes);
        }
        let mut full = record(1, "m").encode();
        full.truncate(full.len() - 1);
        assert_eq!(Record::decode(&full), None);
    }
}
