//! The compiled index of a directory file (`users.index` beside `users`,
//! `aliases.index` beside `aliases`): what a program that needs one user or
//! one alias reads instead of parsing the whole text file at every start,
//! the way Postfix reads `aliases.db` and qmail `users/cdb`.
//!
//! The text file stays the source of truth. The index's header holds the
//! text file's inode, size, modification and change times as they were
//! when it was built; an index whose stamp is not the text file's current
//! one is stale and is rebuilt from the text (hand edits are picked up
//! without any command). The change time is in the stamp because nobody
//! can set it: a file copied over the old one with its old size and
//! modification time (`cp -p`) still differs. The device number is not,
//! so that hosts that mount a shared tree under different devices agree.
//!
//! Rebuilding writes a temporary file and renames it over the index, so a
//! reader sees the old index or the new one, never a mix, and several
//! processes on several hosts may rebuild at once: the last rename wins,
//! and if it carries an older stamp the next reader rebuilds again. A
//! process that cannot write the index (a read-only tree, a user's own
//! `mailsort`) works from the text.
//!
//! Nothing in the file is trusted: the header, every block of the hash
//! table and every record carry a CRC-32, every offset is checked against
//! the file's length, and an index that fails any check is ignored (and
//! rebuilt) as if it were stale. A lookup touches the header, one or two
//! table blocks and the record: O(1), whatever the size of the file.
//!
//! Why not a crate: the `cdb` format (the `cdb`/`cdb2` crates, `tinycdb`)
//! has no header for the stamp and no checksums, so a torn or damaged file
//! would answer silently wrong ("no such user" is a bounce); and those
//! readers map the file. This one reads with positioned reads (`pread`)
//! instead of `mmap`: a mapped file that another host replaces on NFS
//! turns the next page fault into SIGBUS in a long-running server, and
//! `lib/` forbids the `unsafe` a mapping needs. Three or four `pread`s per
//! lookup cost microseconds.
//!
//! Layout (little-endian):
//!
//! ```text
//! header   100 bytes  magic "PRINDEX1", kind, stamp, meta, slots, entries,
//!                     file length, CRC-32 of the bytes before it
//! table    slots/64 blocks of 64 slots (hash u64, record offset u64;
//!                     offset 0 = empty) and the block's CRC-32 + 4 bytes pad
//! records  key length u32, value length u32, CRC-32 of lengths, key and
//!                     value; key; value
//! ```
//!
//! Slots are found by linear probing from `hash % slots` (FNV-1a of the
//! key), at most half full.

use std::collections::HashMap;
use std::fs::{File, Metadata};
use std::io::{self, Read};
use std::os::unix::fs::{FileExt, MetadataExt};
use std::path::{Path, PathBuf};
use std::sync::Mutex;

use crate::store::fsutil::{self, FileError};

const MAGIC: &[u8; 8] = b"PRINDEX1";

/// The CRC-32 of the format (the IEEE one, as `crc32fast` computes it),
/// from a table built at compile time. Not `crc32fast`: its first use in a
/// process asks the CPU for its features (`std_detect`, a dozen `cpuid`s,
/// each a trap to the hypervisor in a VM) to pick a SIMD routine, which
/// costs a short-lived program (mail-inject, mailsort, a server under
/// inetd) more than every checksum of its few lookups: the blocks and
/// records checked here are at most a kilobyte. One 1 KiB table rather
/// than slice-by-16's 16 KiB: a new process reads it from cold memory.
const CRC32: crc::Crc<u32> = crc::Crc::<u32>::new(&crc::CRC_32_ISO_HDLC);
const HEADER: usize = 100;
const SLOT: usize = 16;
const BLOCK_SLOTS: usize = 64;
/// A block of slots with its CRC-32 and 4 bytes of padding.
const BLOCK: usize = BLOCK_SLOTS * SLOT + 8;
/// A record's key length, value length and CRC-32.
const RECORD_HEAD: usize = 12;

/// Which text file an index was built from, so an index renamed to the
/// wrong name is not read as another kind.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    Users = 1,
    Aliases = 2,
}

/// The text file's identity when the index was built (see the module doc
/// for what is in it and why).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Stamp {
    ino: u64,
    size: u64,
    mtime: i64,
    mtime_nsec: i64,
    ctime: i64,
    ctime_nsec: i64,
}

impl Stamp {
    pub fn of(meta: &Metadata) -> Stamp {
        Stamp {
            ino: meta.ino(),
            size: meta.size(),
            mtime: meta.mtime(),
            mtime_nsec: meta.mtime_nsec(),
            ctime: meta.ctime(),
            ctime_nsec: meta.ctime_nsec(),
        }
    }
}

/// Why an index was not used.
#[derive(Debug, thiserror::Error)]
pub enum IndexError {
    #[error("{file}: {error}")]
    Io { file: PathBuf, error: io::Error },
    /// A check failed: the file is torn, damaged or not an index.
    #[error("{file}: {what}; it is ignored and rebuilt from the text file")]
    Damaged { file: PathBuf, what: &'static str },
}

/// The index file of a directory text file: `users` → `users.index`.
pub fn path_for(text: &Path) -> PathBuf {
    let mut name = text.file_name().unwrap_or_default().to_os_string();
    name.push(".index");
    text.with_file_name(name)
}

/// An open index, read with positioned reads.
#[derive(Debug)]
pub struct Index {
    file: File,
    path: PathBuf,
    slots: u64,
    entries: u64,
    len: u64,
    meta: u64,
    /// The last table block read and found whole, by number: a program
    /// looks the same key up more than once (mail-inject routes a
    /// recipient, then delivers to it), and a small table is one block,
    /// whose read and checksum (a kilobyte, bytewise) are most of a
    /// lookup. The file never changes under an open index (it is replaced
    /// by rename), so a block once checked stays true.
    last_block: Mutex<Option<(u64, Box<[u8]>)>>,
}

impl Index {
    /// Opens the index at `path` if it was built as `kind` from the text
    /// file whose stamp is `stamp`: `Ok(None)` when there is none or it is
    /// stale, an error when it is unreadable or fails a check.
    pub fn open(path: &Path, kind: Kind, stamp: &Stamp) -> Result<Option<Index>, IndexError> {
        let file = match fsutil::retry_stale(|| File::open(path)) {
            Ok(file) => file,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
            Err(error) => {
                return Err(IndexError::Io {
                    file: path.to_path_buf(),
                    error,
                });
            }
        };
        let damaged = |what| IndexError::Damaged {
            file: path.to_path_buf(),
            what,
        };
        let mut header = [0u8; HEADER];
        match file.read_exact_at(&mut header, 0) {
            Ok(()) => {}
            Err(e) if e.kind() == io::ErrorKind::UnexpectedEof => {
                return Err(damaged("shorter than its header"));
            }
            Err(error) => {
                return Err(IndexError::Io {
                    file: path.to_path_buf(),
                    error,
                });
            }
        }
        if &header[..8] != MAGIC {
            return Err(damaged("not a postroom index"));
        }
        if u32_at(&header, HEADER - 4) != CRC32.checksum(&header[..HEADER - 4]) {
            return Err(damaged("its header does not match its checksum"));
        }
        if u32_at(&header, 8) != kind as u32 {
            return Err(damaged("an index of another file"));
        }
        let built_from = Stamp {
            ino: u64_at(&header, 16),
            size: u64_at(&header, 24),
            mtime: u64_at(&header, 32) as i64,
            mtime_nsec: u64_at(&header, 40) as i64,
            ctime: u64_at(&header, 48) as i64,
            ctime_nsec: u64_at(&header, 56) as i64,
        };
        if built_from != *stamp {
            return Ok(None);
        }
        let index = Index {
            meta: u64_at(&header, 64),
            slots: u64_at(&header, 72),
            entries: u64_at(&header, 80),
            len: u64_at(&header, 88),
            path: path.to_path_buf(),
            file,
            last_block: Mutex::new(None),
        };
        let actual = index.file.metadata().map_err(|error| IndexError::Io {
            file: path.to_path_buf(),
            error,
        })?;
        if actual.len() != index.len {
            return Err(damaged("torn: its length is not the one its header gives"));
        }
        let table_end = (index.slots / BLOCK_SLOTS as u64)
            .checked_mul(BLOCK as u64)
            .and_then(|t| t.checked_add(HEADER as u64));
        if !index.slots.is_power_of_two()
            || index.slots < BLOCK_SLOTS as u64
            || index.entries > index.slots / 2
            || table_end.is_none_or(|end| end > index.len)
        {
            return Err(damaged("its table does not fit its header"));
        }
        Ok(Some(index))
    }

    /// What the builder stored beside the entries (see [`build`]).
    pub fn meta(&self) -> u64 {
        self.meta
    }

    /// How many keys the index holds.
    pub fn len(&self) -> usize {
        self.entries as usize
    }

    pub fn is_empty(&self) -> bool {
        self.entries == 0
    }

    /// The value stored under `key`.
    pub fn get(&self, key: &[u8]) -> Result<Option<Vec<u8>>, IndexError> {
        let hash = fnv1a(key);
        let mask = self.slots - 1;
        let mut slot = hash & mask;
        // A poisoned lock only means another thread panicked mid-lookup:
        // the cached block is either whole or absent, never half written.
        let mut cached = self.last_block.lock().unwrap_or_else(|e| e.into_inner());
        // At most half the slots are used, so an empty one comes; the
        // bound only guards against a table a check missed.
        for _ in 0..self.slots {
            let wanted = slot / BLOCK_SLOTS as u64;
            let block = match &mut *cached {
                Some((number, block)) if *number == wanted => block,
                _ => {
                    let mut block = cached
                        .take()
                        .map_or_else(|| vec![0u8; BLOCK].into_boxed_slice(), |(_, block)| block);
                    self.read(&mut block, HEADER as u64 + wanted * BLOCK as u64)?;
                    if u32_at(&block, BLOCK - 8) != CRC32.checksum(&block[..BLOCK - 8]) {
                        return Err(
                            self.damaged("a block of its table does not match its checksum")
                        );
                    }
                    &mut cached.insert((wanted, block)).1
                }
            };
            let at = (slot % BLOCK_SLOTS as u64) as usize * SLOT;
            let (slot_hash, offset) = (u64_at(block, at), u64_at(block, at + 8));
            if offset == 0 {
                return Ok(None);
            }
            if slot_hash == hash
                && let Some(value) = self.record(offset, key)?
            {
                return Ok(Some(value));
            }
            slot = (slot + 1) & mask;
        }
        Err(self.damaged("its table has no empty slot"))
    }

    /// The value of the record at `offset` if its key is `key`.
    fn record(&self, offset: u64, key: &[u8]) -> Result<Option<Vec<u8>>, IndexError> {
        let mut head = [0u8; RECORD_HEAD];
        if offset
            .checked_add(RECORD_HEAD as u64)
            .is_none_or(|end| end > self.len)
        {
            return Err(self.damaged("a record lies outside the file"));
        }
        self.read(&mut head, offset)?;
        let (key_len, value_len) = (u32_at(&head, 0) as u64, u32_at(&head, 4) as u64);
        let body = offset + RECORD_HEAD as u64;
        if body + key_len + value_len > self.len {
            return Err(self.damaged("a record lies outside the file"));
        }
        let mut data = vec![0u8; (key_len + value_len) as usize];
        self.read(&mut data, body)?;
        let mut crc = CRC32.digest();
        crc.update(&head[..8]);
        crc.update(&data);
        if crc.finalize() != u32_at(&head, 8) {
            return Err(self.damaged("a record does not match its checksum"));
        }
        if &data[..key_len as usize] != key {
            return Ok(None);
        }
        data.drain(..key_len as usize);
        Ok(Some(data))
    }

    fn read(&self, buf: &mut [u8], offset: u64) -> Result<(), IndexError> {
        self.file
            .read_exact_at(buf, offset)
            .map_err(|error| IndexError::Io {
                file: self.path.clone(),
                error,
            })
    }

    fn damaged(&self, what: &'static str) -> IndexError {
        IndexError::Damaged {
            file: self.path.clone(),
            what,
        }
    }
}

/// Writes the index of `entries` (keys unique) at `path` for the text file
/// described by `text` (its stamp; the index gets its mode and owner, since
/// the users index holds the same password hashes), through a temporary
/// file renamed into place. `meta` is kept for [`Index::meta`].
pub fn build<'a>(
    path: &Path,
    kind: Kind,
    text: &Metadata,
    meta: u64,
    entries: impl ExactSizeIterator<Item = (&'a [u8], &'a [u8])>,
) -> io::Result<()> {
    let count = entries.len() as u64;
    let slots = (count * 2).next_power_of_two().max(BLOCK_SLOTS as u64);
    let blocks = (slots / BLOCK_SLOTS as u64) as usize;
    let table_end = HEADER + blocks * BLOCK;
    let mut table = vec![0u8; blocks * BLOCK];
    let mut records = Vec::new();
    for (key, value) in entries {
        let too_long = || io::Error::new(io::ErrorKind::InvalidInput, "an entry over 4 GiB");
        let key_len = u32::try_from(key.len()).map_err(|_| too_long())?;
        let value_len = u32::try_from(value.len()).map_err(|_| too_long())?;
        let offset = (table_end + records.len()) as u64;
        let start = records.len();
        records.extend_from_slice(&key_len.to_le_bytes());
        records.extend_from_slice(&value_len.to_le_bytes());
        let mut crc = CRC32.digest();
        crc.update(&records[start..]);
        crc.update(key);
        crc.update(value);
        records.extend_from_slice(&crc.finalize().to_le_bytes());
        records.extend_from_slice(key);
        records.extend_from_slice(value);
        let hash = fnv1a(key);
        let mut slot = (hash & (slots - 1)) as usize;
        loop {
            let at = (slot / BLOCK_SLOTS) * BLOCK + (slot % BLOCK_SLOTS) * SLOT;
            if u64_at(&table, at + 8) == 0 {
                table[at..at + 8].copy_from_slice(&hash.to_le_bytes());
                table[at + 8..at + 16].copy_from_slice(&offset.to_le_bytes());
                break;
            }
            slot = (slot + 1) & (slots as usize - 1);
        }
    }
    for block in table.chunks_exact_mut(BLOCK) {
        let crc = CRC32.checksum(&block[..BLOCK - 8]);
        block[BLOCK - 8..BLOCK - 4].copy_from_slice(&crc.to_le_bytes());
    }
    let stamp = Stamp::of(text);
    let mut out = Vec::with_capacity(table_end + records.len());
    out.extend_from_slice(MAGIC);
    out.extend_from_slice(&(kind as u32).to_le_bytes());
    out.extend_from_slice(&0u32.to_le_bytes());
    for field in [
        stamp.ino,
        stamp.size,
        stamp.mtime as u64,
        stamp.mtime_nsec as u64,
        stamp.ctime as u64,
        stamp.ctime_nsec as u64,
        meta,
        slots,
        count,
        (table_end + records.len()) as u64,
    ] {
        out.extend_from_slice(&field.to_le_bytes());
    }
    let crc = CRC32.checksum(&out);
    out.extend_from_slice(&crc.to_le_bytes());
    out.extend_from_slice(&table);
    out.extend_from_slice(&records);
    fsutil::write_atomic_like(path, &out, text)
}

/// FNV-1a, 64 bits: fixed forever, since it is in the file. Keys come from
/// the admin's file, so nobody can choose them to collide.
fn fnv1a(key: &[u8]) -> u64 {
    key.iter().fold(0xcbf2_9ce4_8422_2325, |hash, &byte| {
        (hash ^ byte as u64).wrapping_mul(0x0000_0100_0000_01b3)
    })
}

fn u32_at(bytes: &[u8], at: usize) -> u32 {
    let mut word = [0u8; 4];
    word.copy_from_slice(&bytes[at..at + 4]);
    u32::from_le_bytes(word)
}

fn u64_at(bytes: &[u8], at: usize) -> u64 {
    let mut word = [0u8; 8];
    word.copy_from_slice(&bytes[at..at + 8]);
    u64::from_le_bytes(word)
}

/// How a directory file's text becomes its entries (checking every line)
/// and the index's `meta`; errors name the file given.
pub type Parse = fn(&str, &Path) -> Result<(HashMap<String, String>, u64), FileError>;

/// A directory file as a program looks keys up in it: through its index,
/// or, when the index cannot be used or written, from the parsed text held
/// in memory. The values are the entries as the text gives them (a users
/// line, an alias's targets); the caller parses the one it looks up.
#[derive(Debug)]
pub enum Table {
    Indexed {
        index: Index,
        /// The text file and its parser, for when the index fails a
        /// check after it was opened.
        text: PathBuf,
        parse: Parse,
    },
    Memory(HashMap<String, String>),
}

impl Default for Table {
    fn default() -> Table {
        Table::Memory(HashMap::new())
    }
}

impl Table {
    /// The text file `text` as a table: its index if that is current (one
    /// open and a few reads, whatever the file's size); else the text is
    /// read and parsed with `parse`, and the index is rebuilt for the next
    /// program. Also gives the index's `meta`. `Ok(None)` when the text
    /// file does not exist.
    pub fn load(text: &Path, kind: Kind, parse: Parse) -> Result<Option<(Table, u64)>, FileError> {
        Table::open(text, kind, parse, true)
    }

    /// After an edit of the text, builds its index now, so the first
    /// program to look a key up does not pay for reading the whole file.
    /// Best effort: the next program rebuilds it otherwise.
    pub fn refresh(text: &Path, kind: Kind, parse: Parse) {
        let _ = Table::open(text, kind, parse, false);
    }

    fn open(
        text: &Path,
        kind: Kind,
        parse: Parse,
        use_index: bool,
    ) -> Result<Option<(Table, u64)>, FileError> {
        let io = |error| FileError::Io {
            file: text.to_path_buf(),
            error,
        };
        let opened = fsutil::retry_stale(|| {
            let file = File::open(text)?;
            let meta = file.metadata()?;
            Ok((file, meta))
        });
        let (mut file, meta) = match opened {
            Ok(opened) => opened,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(io(e)),
        };
        let index_path = path_for(text);
        if use_index {
            match Index::open(&index_path, kind, &Stamp::of(&meta)) {
                Ok(Some(index)) => {
                    let value = index.meta();
                    let text = text.to_path_buf();
                    return Ok(Some((Table::Indexed { index, text, parse }, value)));
                }
                Ok(None) => {}
                Err(e) => tracing::warn!("{e}"),
            }
        }
        let mut content = String::with_capacity(meta.len() as usize);
        file.read_to_string(&mut content).map_err(io)?;
        let (entries, value) = parse(&content, text)?;
        let pairs = entries.iter().map(|(k, v)| (k.as_bytes(), v.as_bytes()));
        if let Err(e) = build(&index_path, kind, &meta, value, pairs) {
            // Read-only trees and programs run as a mail user are normal:
            // they work from the text, as before the index existed.
            tracing::debug!(
                "{}: not written ({e}); {} is read in full at each start",
                index_path.display(),
                text.display()
            );
        }
        Ok(Some((Table::Memory(entries), value)))
    }

    /// The entry under `key`. An index that fails a check now (damaged
    /// since it was opened) is not trusted: the text is read in full for
    /// this answer, and the index rebuilt.
    pub fn get(&self, key: &str, kind: Kind) -> Result<Option<String>, FileError> {
        match self {
            Table::Memory(entries) => Ok(entries.get(key).cloned()),
            Table::Indexed { index, text, parse } => match index.get(key.as_bytes()) {
                Ok(value) => Ok(value.map(|v| String::from_utf8_lossy(&v).into_owned())),
                Err(e) => {
                    tracing::warn!("{e}");
                    match Table::open(text, kind, *parse, false)? {
                        Some((table, _)) => table.get(key, kind),
                        None => Ok(None),
                    }
                }
            },
        }
    }

    pub fn len(&self) -> usize {
        match self {
            Table::Memory(entries) => entries.len(),
            Table::Indexed { index, .. } => index.len(),
        }
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    /// `key value` lines; a line `bad` is a syntax error.
    fn parse(text: &str, path: &Path) -> Result<(HashMap<String, String>, u64), FileError> {
        let mut entries = HashMap::new();
        for (n, line) in text.lines().enumerate() {
            let Some((k, v)) = line.split_once(' ') else {
                return Err(FileError::syntax(path, n + 1, "no space"));
            };
            entries.insert(k.to_string(), v.to_string());
        }
        let count = entries.len() as u64;
        Ok((entries, count))
    }

    fn load(text: &Path) -> Table {
        Table::load(text, Kind::Aliases, parse).unwrap().unwrap().0
    }

    fn indexed(table: &Table) -> bool {
        matches!(table, Table::Indexed { .. })
    }

    #[test]
    fn built_once_then_read_through_the_index() {
        let dir = tempfile::tempdir().unwrap();
        let text = dir.path().join("aliases");
        let lines: String = (0..5000).map(|i| format!("k{i} v{i}\n")).collect();
        std::fs::write(&text, lines).unwrap();
        let first = load(&text);
        assert!(!indexed(&first), "the first load parses");
        assert!(path_for(&text).exists());
        let table = load(&text);
        assert!(indexed(&table), "the second reads the index");
        assert_eq!(table.len(), 5000);
        for i in [0, 1, 777, 4999] {
            assert_eq!(
                table.get(&format!("k{i}"), Kind::Aliases).unwrap(),
                Some(format!("v{i}"))
            );
        }
        assert_eq!(table.get("k5000", Kind::Aliases).unwrap(), None);
        assert_eq!(table.get("", Kind::Aliases).unwrap(), None);
        // The wrong kind is not read as this one.
        let meta = std::fs::metadata(&text).unwrap();
        let e = Index::open(&path_for(&text), Kind::Users, &Stamp::of(&meta)).unwrap_err();
        assert!(e.to_string().contains("another file"), "{e}");
    }

    #[test]
    fn a_hand_edit_is_picked_up_even_with_the_old_size_and_time() {
        let dir = tempfile::tempdir().unwrap();
        let text = dir.path().join("aliases");
        std::fs::write(&text, "a 1\nb 2\n").unwrap();
        load(&text);
        assert!(indexed(&load(&text)));
        let before = std::fs::metadata(&text).unwrap().modified().unwrap();
        // Same size, written in place, modification time put back (what
        // `cp -p` over the file does): only the change time differs.
        std::fs::write(&text, "a 9\nb 2\n").unwrap();
        std::fs::File::options()
            .write(true)
            .open(&text)
            .unwrap()
            .set_modified(before)
            .unwrap();
        let table = load(&text);
        assert!(!indexed(&table), "stale: read from the text");
        assert_eq!(table.get("a", Kind::Aliases).unwrap(), Some("9".into()));
        let table = load(&text);
        assert!(indexed(&table), "and rebuilt");
        assert_eq!(table.get("a", Kind::Aliases).unwrap(), Some("9".into()));
    }

    #[test]
    fn torn_or_garbage_indexes_are_never_trusted() {
        let dir = tempfile::tempdir().unwrap();
        let text = dir.path().join("aliases");
        let lines: String = (0..300).map(|i| format!("k{i} v{i}\n")).collect();
        std::fs::write(&text, lines).unwrap();
        load(&text);
        let index = path_for(&text);
        let good = std::fs::read(&index).unwrap();
        let damaged: Vec<(&str, Vec<u8>)> = vec![
            ("empty", Vec::new()),
            ("torn", good[..good.len() - 7].to_vec()),
            ("torn in the header", good[..50].to_vec()),
            ("garbage", vec![0x5a; good.len()]),
            ("zeros", vec![0; good.len()]),
        ];
        for (what, bytes) in damaged {
            std::fs::write(&index, &bytes).unwrap();
            let table = load(&text);
            assert!(!indexed(&table), "{what}: ignored");
            assert_eq!(table.get("k7", Kind::Aliases).unwrap(), Some("v7".into()));
            assert!(indexed(&load(&text)), "{what}: rebuilt");
        }
        // One flipped byte anywhere: the header fails to open, a block or a
        // record fails at lookup and the answer comes from the text. No
        // answer is ever wrong.
        let spots = (0..HEADER)
            .step_by(9)
            .chain((HEADER..good.len()).step_by(good.len() / 40));
        for at in spots {
            let mut bytes = good.clone();
            bytes[at] ^= 0x10;
            std::fs::write(&index, &bytes).unwrap();
            let table = match Table::load(&text, Kind::Aliases, parse).unwrap().unwrap().0 {
                t @ Table::Indexed { .. } => t,
                _ => continue,
            };
            for i in (0..300).step_by(7) {
                let got = table.get(&format!("k{i}"), Kind::Aliases).unwrap();
                assert_eq!(got, Some(format!("v{i}")), "byte {at} flipped, key k{i}");
            }
            assert_eq!(table.get("absent", Kind::Aliases).unwrap(), None);
        }
    }

    #[test]
    fn a_text_that_does_not_parse_is_an_error_and_writes_no_index() {
        let dir = tempfile::tempdir().unwrap();
        let text = dir.path().join("aliases");
        std::fs::write(&text, "a 1\nbad\n").unwrap();
        let e = Table::load(&text, Kind::Aliases, parse).unwrap_err();
        assert_eq!(e.to_string(), format!("{}:2: no space", text.display()));
        assert!(!path_for(&text).exists());
        assert!(
            Table::load(&dir.path().join("none"), Kind::Aliases, parse)
                .unwrap()
                .is_none()
        );
    }

    #[test]
    fn a_tree_that_cannot_be_written_works_from_the_text() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let etc = dir.path().join("etc");
        std::fs::create_dir(&etc).unwrap();
        let text = etc.join("aliases");
        std::fs::write(&text, "a 1\n").unwrap();
        std::fs::set_permissions(&etc, std::fs::Permissions::from_mode(0o555)).unwrap();
        let writable = std::fs::write(etc.join("probe"), "").is_ok(); // root writes anyway
        let table = load(&text);
        assert_eq!(table.get("a", Kind::Aliases).unwrap(), Some("1".into()));
        assert_eq!(path_for(&text).exists(), writable);
        std::fs::set_permissions(&etc, std::fs::Permissions::from_mode(0o755)).unwrap();
    }

    #[test]
    fn the_index_has_the_mode_of_its_text() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let text = dir.path().join("users");
        std::fs::write(&text, "a 1\n").unwrap();
        std::fs::set_permissions(&text, std::fs::Permissions::from_mode(0o640)).unwrap();
        load(&text);
        let mode = std::fs::metadata(path_for(&text))
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o640);
    }

    #[test]
    fn the_checksum_is_the_ieee_crc32() {
        // The standard check value of CRC-32/ISO-HDLC.
        assert_eq!(CRC32.checksum(b"123456789"), 0xcbf4_3926);
    }

    proptest::proptest! {
        /// Indexes written by earlier versions (checksums by `crc32fast`)
        /// stay valid: the same CRC, byte for byte, in one piece or in parts.
        #[test]
        fn checksums_match_those_of_indexes_written_with_crc32fast(
            bytes in proptest::collection::vec(0u8..=255, 0..3000),
            cut in 0usize..3000,
        ) {
            proptest::prop_assert_eq!(CRC32.checksum(&bytes), crc32fast::hash(&bytes));
            let cut = cut.min(bytes.len());
            let mut digest = CRC32.digest();
            digest.update(&bytes[..cut]);
            digest.update(&bytes[cut..]);
            proptest::prop_assert_eq!(digest.finalize(), crc32fast::hash(&bytes));
        }

        #[test]
        fn any_bytes_as_an_index_never_panic(bytes in proptest::collection::vec(0u8..=255, 0..400)) {
            let dir = tempfile::tempdir().unwrap();
            let text = dir.path().join("aliases");
            std::fs::write(&text, "a 1\n").unwrap();
            let stamp = Stamp::of(&std::fs::metadata(&text).unwrap());
            std::fs::write(path_for(&text), &bytes).unwrap();
            if let Ok(Some(index)) = Index::open(&path_for(&text), Kind::Aliases, &stamp) {
                let _ = index.get(b"a");
            }
        }
    }
}
