//! `postroom-index`: a folder's entries as a full sync last found them,
//! so that a process that has never seen the folder (imap-serve under
//! inetd: one process per connection) need not read `cur/` and the
//! uidlist again when nothing moved since (Dovecot's `dovecot.index`).
//!
//! Nothing in it is the truth: the uidlist and the directories are. It is
//! trusted only when the folder's [`Stamp`] now (times and inodes of
//! `new/`, `cur/`, `dovecot-uidlist`, `dovecot-keywords`) is the one it
//! was written under, and it is only written under a stamp that proves
//! something (every time older than a second, on a local filesystem:
//! [`Stamp::trustworthy`]). On a shared filesystem it is neither written
//! nor read, as no stamp is trusted there. A missing, torn, foreign or
//! corrupt file (checksummed) only costs the full sync it would have
//! saved. It is rewritten, without fsync, after a full sync that found
//! the folder settled and the index out of date: not on every change.
//!
//! ```text
//! offset size  field (little-endian)
//!      0    8  magic "prindex2" (version 2: "prindex1" files are ignored)
//!      8    4  CRC-32 of bytes 16 to 136 (the rest of the header)
//!     12    4  CRC-32 of the records, from offset 136 to the end
//!     16    4  UIDVALIDITY
//!     20    4  UIDNEXT
//!     24    4  number of records
//!     28    4  position of the first message without \Seen (u32::MAX: none)
//!     32    8  HIGHESTMODSEQ of postroom-modseq when it agreed with the records
//!     40    8  that file's inode then
//!     48    8  and its length (u64::MAX: no such file)
//!     56   80  the stamp: per file inode (8), seconds (8), nanoseconds (4)
//!    136       records: UID (4), name length (2), info length (2), the
//!              base name, the info letters; UIDs ascending
//! ```
//!
//! The header has a checksum of its own so that SELECT can answer from
//! it alone ([`open`]): the records, most of the file, are read and
//! checked only when a command needs them ([`Unread::records`]).

use std::fs;
use std::io::{self, Write};
use std::os::unix::fs::{FileExt, MetadataExt, OpenOptionsExt};
use std::path::Path;

use super::folder::{Entry, STAMP_BYTES, Stamp};

/// The file's name in each folder.
pub const FILE: &str = "postroom-index";
const MAGIC: &[u8; 8] = b"prindex2";
/// The header's size; its checksummed part starts at 16.
const HEADER: usize = 56 + STAMP_BYTES;

/// Where the mod-sequence log stood when the index was written: it
/// agreed with the records then, so while it is the same file at the
/// same length, SELECT may give HIGHESTMODSEQ without reading it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ModSeqMark {
    pub highest: u64,
    pub inode: u64,
    /// `u64::MAX`: the log was not known to agree (none is trusted).
    pub len: u64,
}

/// What an index holds besides its records.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Header {
    pub stamp: Stamp,
    pub validity: u32,
    pub next_uid: u32,
    pub count: u32,
    /// Position (0-based) of the first message without \Seen.
    pub first_unseen: Option<u32>,
    pub modseq: ModSeqMark,
}

fn u32_at(b: &[u8], at: usize) -> Option<u32> {
    Some(u32::from_le_bytes(b.get(at..at + 4)?.try_into().ok()?))
}

fn u64_at(b: &[u8], at: usize) -> Option<u64> {
    Some(u64::from_le_bytes(b.get(at..at + 8)?.try_into().ok()?))
}

fn u16_at(b: &[u8], at: usize) -> Option<usize> {
    Some(u16::from_le_bytes(b.get(at..at + 2)?.try_into().ok()?).into())
}

/// A name part an index may hand out: what a readdir could have given
/// (no `/`, no NUL) and a base that [`Entry::file_name`] splits back.
/// Byte by byte (these bytes never occur inside a UTF-8 sequence): a
/// check by `char` was a third of a 100,000-message load.
fn sane(base: &str, info: &str) -> bool {
    let base = base.as_bytes();
    !base.is_empty()
        && base.first() != Some(&b'.')
        && !base.iter().any(|&b| matches!(b, b'/' | b'\0' | b':'))
        && !info.bytes().any(|b| matches!(b, b'/' | b'\0'))
}

/// Renders an index; `None` when an entry cannot be recorded (a name
/// longer than 65,535 bytes: then there is no index, and no harm).
pub fn encode(header: &Header, entries: &[Entry]) -> Option<Vec<u8>> {
    let names: usize = entries.iter().map(|e| e.base.len() + e.info.len()).sum();
    let mut out = Vec::with_capacity(HEADER + entries.len() * 8 + names);
    out.extend_from_slice(MAGIC);
    out.extend_from_slice(&[0; 8]);
    out.extend_from_slice(&header.validity.to_le_bytes());
    out.extend_from_slice(&header.next_uid.to_le_bytes());
    out.extend_from_slice(&u32::try_from(entries.len()).ok()?.to_le_bytes());
    out.extend_from_slice(&header.first_unseen.unwrap_or(u32::MAX).to_le_bytes());
    out.extend_from_slice(&header.modseq.highest.to_le_bytes());
    out.extend_from_slice(&header.modseq.inode.to_le_bytes());
    out.extend_from_slice(&header.modseq.len.to_le_bytes());
    out.extend_from_slice(&header.stamp.to_bytes());
    for e in entries {
        out.extend_from_slice(&e.uid.to_le_bytes());
        out.extend_from_slice(&u16::try_from(e.base.len()).ok()?.to_le_bytes());
        out.extend_from_slice(&u16::try_from(e.info.len()).ok()?.to_le_bytes());
        out.extend_from_slice(e.base.as_bytes());
        out.extend_from_slice(e.info.as_bytes());
    }
    let records = crc32fast::hash(&out[HEADER..]);
    out[12..16].copy_from_slice(&records.to_le_bytes());
    let head = crc32fast::hash(&out[16..HEADER]);
    out[8..12].copy_from_slice(&head.to_le_bytes());
    Some(out)
}

/// The header at the start of `bytes`, if it is whole and its checksum
/// holds (the records' is [`decode`]'s to check).
pub fn decode_header(bytes: &[u8]) -> Option<Header> {
    if bytes.get(..8)? != MAGIC || u32_at(bytes, 8)? != crc32fast::hash(bytes.get(16..HEADER)?) {
        return None;
    }
    header_fields(bytes)
}

/// The header's fields, unchecked.
fn header_fields(bytes: &[u8]) -> Option<Header> {
    if bytes.get(..8)? != MAGIC {
        return None;
    }
    let stamp: &[u8; STAMP_BYTES] = bytes.get(56..HEADER)?.try_into().ok()?;
    let first_unseen = u32_at(bytes, 28)?;
    let header = Header {
        stamp: Stamp::from_bytes(stamp)?,
        validity: u32_at(bytes, 16)?,
        next_uid: u32_at(bytes, 20)?,
        count: u32_at(bytes, 24)?,
        first_unseen: (first_unseen != u32::MAX).then_some(first_unseen),
        modseq: ModSeqMark {
            highest: u64_at(bytes, 32)?,
            inode: u64_at(bytes, 40)?,
            len: u64_at(bytes, 48)?,
        },
    };
    // What the records must agree with, checkable without them.
    let sane = header.validity != 0
        && header.count < header.next_uid
        && header.first_unseen.is_none_or(|i| i < header.count);
    sane.then_some(header)
}

/// A whole index: `None` unless the checksum holds and every record is
/// whole and sane, with UIDs ascending below UIDNEXT.
pub fn decode(bytes: &[u8]) -> Option<(Header, Vec<Entry>)> {
    decode_header(bytes)?;
    if u32_at(bytes, 12)? != crc32fast::hash(bytes.get(HEADER..)?) {
        return None;
    }
    decode_unchecked(bytes)
}

/// [`decode`] but for the checksums (the fuzzer's way past them).
pub fn decode_unchecked(bytes: &[u8]) -> Option<(Header, Vec<Entry>)> {
    let header = header_fields(bytes)?;
    // Each record takes at least 9 bytes: a count beyond what the file
    // can hold is a lie, and must not size an allocation.
    let count = header.count as usize;
    if count > (bytes.len() - HEADER) / 9 {
        return None;
    }
    let mut entries = Vec::with_capacity(count);
    let mut at = HEADER;
    let mut last = 0;
    for _ in 0..count {
        let uid = u32_at(bytes, at)?;
        let (base_len, info_len) = (u16_at(bytes, at + 4)?, u16_at(bytes, at + 6)?);
        at += 8;
        let base = std::str::from_utf8(bytes.get(at..at + base_len)?).ok()?;
        at += base_len;
        let info = std::str::from_utf8(bytes.get(at..at + info_len)?).ok()?;
        at += info_len;
        if uid <= last || uid >= header.next_uid || !sane(base, info) {
            return None;
        }
        last = uid;
        entries.push(Entry {
            uid,
            base: base.into(),
            info: info.into(),
        });
    }
    // The first unseen as the header says: SELECT gives it from there.
    let unseen = entries
        .iter()
        .position(|e| !e.flags().has(super::flags::SEEN));
    (at == bytes.len() && unseen.map(|i| i as u32) == header.first_unseen)
        .then_some((header, entries))
}

/// A folder index whose header was read and matched the folder's stamp,
/// its records not read yet. The file stays open: the index is only
/// ever replaced by a rename, never changed in place, so what is read
/// later through it is the file whose header matched.
#[derive(Debug)]
pub struct Unread {
    file: fs::File,
    pub header: Header,
}

impl Unread {
    /// The records, read and checked in full (`None`: the file is torn
    /// or damaged past its header, and only a full sync can tell).
    pub fn records(&self) -> Option<Vec<Entry>> {
        let len = usize::try_from(self.file.metadata().ok()?.len()).ok()?;
        let mut bytes = vec![0u8; len];
        self.file.read_exact_at(&mut bytes, 0).ok()?;
        let (header, entries) = decode(&bytes)?;
        (header == self.header).then_some(entries)
    }
}

/// The folder's index, if it was written under the stamp `now` (taken
/// before this call) and its header is whole: one small read.
pub fn open(dir: &Path, now: &Stamp) -> Option<Unread> {
    let file = crate::store::maildir::open_nofollow(&dir.join(FILE)).ok()?;
    let mut head = [0u8; HEADER];
    file.read_exact_at(&mut head, 0).ok()?;
    let header = decode_header(&head)?;
    now.unchanged_since(&header.stamp)
        .then_some(Unread { file, header })
}

/// The folder's index in full, if it was written under the stamp `now`
/// and is whole.
pub fn load(dir: &Path, now: &Stamp) -> Option<(Header, Vec<Entry>)> {
    let unread = open(dir, now)?;
    let entries = unread.records()?;
    Some((unread.header, entries))
}

/// Replaces the folder's index: a new file, then a rename over the old,
/// so a reader sees one or the other whole. No fsync: a file lost or
/// torn in a crash fails its checksum, and the next full sync writes it
/// again.
pub fn store(dir: &Path, header: &Header, entries: &[Entry]) -> io::Result<()> {
    let Some(bytes) = encode(header, entries) else {
        return Ok(());
    };
    let tmp = dir.join(format!(
        "{FILE}.{}.tmp",
        crate::store::fsutil::unique_suffix()
    ));
    let result = (|| {
        // Not through a symlink, and no more readable than the uidlist.
        let mut file = fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .custom_flags(crate::store::maildir::nofollow_flag())
            .open(&tmp)?;
        file.write_all(&bytes)?;
        fs::rename(&tmp, dir.join(FILE))
    })();
    if result.is_err() {
        let _ = fs::remove_file(&tmp);
    }
    result
}

/// Where the log at `path` stands: (inode, length); `None` when there
/// is none (or it cannot be looked at).
pub fn log_position(path: &Path) -> Option<(u64, u64)> {
    fs::symlink_metadata(path).ok().map(|m| (m.ino(), m.len()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn entries(n: u32) -> Vec<Entry> {
        (1..=n)
            .map(|uid| Entry {
                uid,
                base: format!("{uid}.M{uid}P1.host,S=100,W=102").into(),
                info: if uid % 2 == 0 { "S" } else { "" }.into(),
            })
            .collect()
    }

    fn header(count: u32) -> Header {
        Header {
            stamp: Stamp::default(),
            validity: 7,
            next_uid: count + 1,
            count,
            first_unseen: (count > 0).then_some(0),
            modseq: ModSeqMark {
                highest: 42,
                inode: 3,
                len: 100,
            },
        }
    }

    #[test]
    fn what_is_written_reads_back() {
        let e = entries(50);
        let bytes = encode(&header(50), &e).unwrap();
        let (h, back) = decode(&bytes).unwrap();
        assert_eq!(h, header(50));
        assert_eq!(back, e);
    }

    #[test]
    fn a_torn_or_altered_index_is_refused() {
        let bytes = encode(&header(20), &entries(20)).unwrap();
        for cut in [0, 8, 60, HEADER, bytes.len() - 1] {
            assert!(decode(&bytes[..cut]).is_none(), "cut at {cut}");
        }
        for at in [0, 9, 13, 70, HEADER + 3, bytes.len() - 1] {
            let mut bad = bytes.clone();
            bad[at] ^= 0x20;
            assert!(decode(&bad).is_none(), "byte {at} flipped");
        }
        // A checksum that holds over records that would escape cur/.
        let mut evil = entries(1);
        evil[0].base = "../../x".into();
        assert!(decode(&encode(&header(1), &evil).unwrap()).is_none());
    }

    #[test]
    fn an_index_is_trusted_only_under_its_own_settled_stamp() {
        let dir = tempfile::tempdir().unwrap();
        let mailbox = crate::store::mailbox::Mailbox::new(dir.path());
        mailbox.ensure_defaults().unwrap();
        let folder = mailbox.folder(&crate::store::mailbox::MailboxName::new("INBOX").unwrap());
        let settle = || crate::store::mailbox::tests::settle(dir.path());
        settle();
        let stamp = folder.stamp();
        assert!(stamp.trustworthy());
        let h = Header { stamp, ..header(3) };
        store(dir.path(), &h, &entries(3)).unwrap();
        assert_eq!(load(dir.path(), &folder.stamp()).unwrap().1, entries(3));
        // Any change to cur/ moves the stamp: the index is not used.
        fs::write(dir.path().join("cur/1.x.host:2,"), "x\n").unwrap();
        assert!(load(dir.path(), &folder.stamp()).is_none());
        settle();
        assert!(
            load(dir.path(), &folder.stamp()).is_none(),
            "settled again, but not the stamp it was written under"
        );
    }

    proptest! {
        #[test]
        fn any_bytes_decode_without_panic(bytes in proptest::collection::vec(any::<u8>(), 0..600)) {
            let _ = decode(&bytes);
        }

        #[test]
        fn any_damage_to_a_real_index_is_caught_or_harmless(
            n in 0u32..40,
            at in any::<prop::sample::Index>(),
            value in any::<u8>(),
            cut in any::<prop::sample::Index>(),
        ) {
            let e = entries(n);
            let mut bytes = encode(&header(n), &e).unwrap();
            let i = at.index(bytes.len());
            bytes[i] = value;
            let keep = cut.index(bytes.len() + 1);
            bytes.truncate(keep.max(i + 1));
            if let Some((_, back)) = decode(&bytes) {
                // Only an edit that changed nothing can pass the checksum.
                prop_assert_eq!(back, e);
            }
        }
    }
}
