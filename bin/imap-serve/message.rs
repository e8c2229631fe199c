//! Message access, shared by the commands that look into messages (FETCH,
//! SEARCH, SORT, THREAD, STORE, APPEND): reading a message file in its
//! wire form, the folder-cache record of a message, its INTERNALDATE, and
//! the flags a client names.
//!
//! The wire form (`postroom::proto::message`) is what the client receives
//! and what RFC822.SIZE (`,W=` in the name) counts, so every offset into a
//! message read here is an offset in what is sent.
//!
//! What the folder cache (`postroom::store::mailbox::cache`) keeps about a
//! message is computed from its text: the ENVELOPE, BODY and BODYSTRUCTURE
//! responses as sent, the size, the dates and the decoded header fields
//! SEARCH, SORT and THREAD ask for. FETCH and SEARCH both fill it, so the
//! second look at a big folder reads one file instead of every message.

use std::io::Read;

use postroom::proto::message::{WireForm, wire_form};
use postroom::proto::mime;
use postroom::store::mailbox::cache::{Record, SEARCH_FIELDS};
use postroom::store::mailbox::{Entry, Flags, Folder, Keywords, flags};

use crate::session::{Done, Selected};

/// How much of a file is read at a time when only its header is needed:
/// most headers end within the first read, and a 24 KB message is then
/// neither read nor turned into its wire form whole.
const HEADER_READ: usize = 8 * 1024;

/// What of a message a command needs.
#[derive(PartialEq, PartialOrd, Clone, Copy)]
pub enum Need {
    Nothing,
    Header,
    Everything,
}

/// Reads a message file in its wire form: the header only (if it fits in
/// the first read) or all of it; `None` if it is gone, or is a symlink
/// (never followed, so never served). Only a read of the whole file gets
/// the line end a last line may lack: a header read may stop mid-line.
pub fn read_message(folder: &Folder, entry: &Entry, need: Need) -> Option<Vec<u8>> {
    let mut file = folder.open_message(entry).ok()?;
    let mut raw = Vec::new();
    let mut whole = true;
    if need == Need::Header {
        // Read a chunk at a time until the empty line that ends the header
        // (LF or CRLF line ends: a file another MDA or a migration wrote)
        // or the end of the file; only then is it all of the file.
        let mut filled = 0;
        loop {
            if raw.len() - filled < HEADER_READ / 2 {
                raw.resize(raw.len() + HEADER_READ, 0);
            }
            match file.read(&mut raw[filled..]) {
                Ok(0) => break,
                Ok(n) => {
                    // The end may straddle two reads: look back 2 bytes.
                    let from = filled.saturating_sub(2);
                    filled += n;
                    if header_ends(&raw[..filled], from) {
                        whole = false;
                        break;
                    }
                }
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
                Err(_) => return None,
            }
        }
        raw.truncate(filled);
    } else {
        file.read_to_end(&mut raw).ok()?;
    }
    // A file stored as the client gave it (APPEND of a `~{n}` literal) is
    // sent in the same wire form as any other, bare LFs and all made CRLF,
    // as Dovecot and POP3 send it; only BINARY reads it as stored
    // (`read_as_stored`).
    if whole {
        return Some(wire_form(&raw));
    }
    let mut out = Vec::with_capacity(raw.len() + raw.len() / 16);
    WireForm::new().encode(&raw, &mut out);
    Some(out)
}

/// Whether `bytes` hold the end of a header (a line break followed by an
/// empty line, or an empty first line), looking from `from` on. The rule
/// is `mime::body_start`'s; this form looks only at what a read added, so
/// a long header is scanned once, not again at every read.
fn header_ends(bytes: &[u8], from: usize) -> bool {
    bytes.starts_with(b"\n")
        || bytes.starts_with(b"\r\n")
        || bytes[from..].windows(2).any(|w| w == b"\n\n")
        || bytes[from..].windows(3).any(|w| w == b"\n\r\n")
}

/// The bytes of a message file as stored, for BINARY of a file stored as
/// the client gave it (`maildir::is_wire_form`), whose binary parts keep
/// their bare LFs; `None` for any other file (its wire form is what
/// BINARY decodes) or one that is gone.
pub fn read_as_stored(folder: &Folder, entry: &Entry) -> Option<Vec<u8>> {
    if !postroom::store::maildir::is_wire_form(&entry.base) {
        return None;
    }
    let mut raw = Vec::new();
    folder
        .open_message(entry)
        .ok()?
        .read_to_end(&mut raw)
        .ok()?;
    Some(raw)
}

/// A record from the message's wire form (CRLF). `whole` says the text is
/// the whole message (so BODY and BODYSTRUCTURE can be computed), not just
/// its header. `None` when the size is unknown from a header alone.
pub fn summarize(entry: &Entry, wire: &[u8], whole: bool, internal_date: i64) -> Option<Record> {
    let size = match entry.wire_size() {
        Some(size) => size,
        None if whole => wire.len() as u64,
        None => return None,
    };
    let header = mime::header_of(wire);
    let mut envelope = Vec::with_capacity(256);
    mime::envelope(&mut envelope, header);
    let headers: Vec<(String, String)> = mime::decoded_headers(header)
        .into_iter()
        .filter(|(name, _)| SEARCH_FIELDS.contains(&name.as_str()))
        .collect();
    let sent_date = headers
        .iter()
        .find(|(name, _)| name == "DATE")
        .and_then(|(_, value)| mail_parser::DateTime::parse_rfc822(value))
        .map(|d| d.to_timestamp());
    let (body, bodystructure) = if whole {
        let root = mime::parse(wire);
        let mut body = Vec::new();
        mime::body_structure(&mut body, wire, &root, false);
        let mut extended = Vec::new();
        mime::body_structure(&mut extended, wire, &root, true);
        (Some(body), Some(extended))
    } else {
        (None, None)
    };
    Some(Record {
        uid: entry.uid,
        base: entry.base.to_string(),
        size,
        internal_date,
        sent_date,
        envelope,
        body,
        bodystructure,
        headers,
    })
}

/// The cache records of the messages at `positions` of the selected
/// folder's view, handed to `each` one at a time with the message's
/// position and UID; a message without one is read now, and its record cached. A
/// message that is gone is left out.
///
/// This is the one place SORT and THREAD get header fields from. A
/// message whose name gives its size is read up to its header only (a
/// SORT of a folder of big attachments reads kilobytes, not gigabytes);
/// only one without a size in its name is read whole, to count it.
///
/// Each record keeps only its numbers and the decoded `fields` the caller
/// reads (the cache gets it whole): a SORT or THREAD over 100,000
/// messages held every ENVELOPE and decoded field at once, 76 MB that the
/// process kept after the command. One at a time, a caller that keeps
/// only what it needs (THREAD) never holds 100,000 records at all.
pub fn each_record(
    sel: &mut Selected,
    positions: &[usize],
    fields: &[&str],
    mut each: impl FnMut(usize, u32, Record),
) {
    let slim = |mut r: Record| {
        r.base = String::new();
        r.envelope = Vec::new();
        r.body = None;
        r.bodystructure = None;
        r.headers
            .retain(|(name, _)| fields.contains(&name.as_str()));
        r.headers.shrink_to_fit();
        r
    };
    sel.cache.refresh();
    for &i in positions {
        let entry = &sel.view[i];
        if let Some(record) = sel.cache.get(entry.uid, &entry.base) {
            each(i, entry.uid, slim(record));
            continue;
        }
        let uid = entry.uid;
        // The file may have been renamed by a flag change elsewhere.
        let entry = match sel.folder.refresh(entry) {
            Ok(Some(now)) => now,
            _ => continue,
        };
        let whole = entry.wire_size().is_none();
        let need = if whole {
            Need::Everything
        } else {
            Need::Header
        };
        let record = read_message(&sel.folder, &entry, need)
            .and_then(|wire| summarize(&entry, &wire, whole, internal_date(&sel.folder, &entry)));
        if let Some(r) = record {
            sel.cache.put(r.clone());
            each(i, uid, slim(r));
        }
    }
    sel.done_with_cache();
}

/// Cache records of messages whose names give their sizes, made from
/// their headers alone on every core at once: a first FETCH ENVELOPE of a
/// big folder (one migrated, or never opened) waits on reading a file per
/// message, and the reads overlap. A message that cannot be read now
/// (renamed or expunged meanwhile) is left out, for the caller's own look.
pub fn summarize_headers(folder: &Folder, entries: &[Entry]) -> Vec<Record> {
    let one = |entry: &Entry| {
        read_message(folder, entry, Need::Header)
            .and_then(|wire| summarize(entry, &wire, false, internal_date(folder, entry)))
    };
    let threads = std::thread::available_parallelism().map_or(1, |n| n.get());
    if threads < 2 || entries.len() < 2 * PARALLEL_MIN {
        return entries.iter().filter_map(one).collect();
    }
    let share = entries.len().div_ceil(threads);
    std::thread::scope(|s| {
        let mut parts = entries.chunks(share);
        let mine = parts.next().unwrap_or_default();
        let others: Vec<_> = parts
            .map(|part| s.spawn(move || part.iter().filter_map(one).collect::<Vec<_>>()))
            .collect();
        let mut out: Vec<Record> = mine.iter().filter_map(one).collect();
        for handle in others {
            // A reader that panicked leaves its messages to the caller.
            out.extend(handle.join().unwrap_or_default());
        }
        out
    })
}

/// Fewer messages than this per thread are read on the caller's alone.
const PARALLEL_MIN: usize = 16;

/// The file's modification time, which is the INTERNALDATE (APPEND sets
/// it; a delivery's is its arrival).
pub fn internal_date(folder: &Folder, entry: &Entry) -> i64 {
    folder
        .internal_date(entry)
        .and_then(|t| t.duration_since(std::time::UNIX_EPOCH).ok())
        .map_or(0, |d| d.as_secs() as i64)
}

/// Flags from names; keywords new to the folder are added to its file.
/// Returns the flags and whether the folder's keywords changed.
pub fn flags_from_names(
    folder: &Folder,
    names: &[String],
) -> Result<(Flags, Option<Keywords>), Done> {
    let mut f = Flags::default();
    let mut keywords = Vec::new();
    for name in names {
        if let Some(bit) = flags::system_bit(name) {
            f.system |= bit;
        } else if name.eq_ignore_ascii_case("\\Recent") {
            // Not settable, silently ignored as RFC 3501 §6.4.6 implies.
        } else if name.starts_with('\\') {
            return Err(Done::Bad(format!("unknown system flag {name}")));
        } else if flags::is_keyword(name) {
            keywords.push(name.as_str());
        } else {
            return Err(Done::Bad(format!("invalid keyword {name}")));
        }
    }
    if keywords.is_empty() {
        return Ok((f, None));
    }
    let (all, fit) = folder.add_keywords(&keywords).map_err(Done::from)?;
    if !fit {
        return Err(Done::No(
            "[LIMIT] this folder has its 26 keywords already".into(),
        ));
    }
    for k in keywords {
        if let Some(i) = all.index(k) {
            f.keywords |= 1 << i;
        }
    }
    Ok((f, Some(all)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_summary_has_what_fetch_and_search_need() {
        let entry = Entry {
            uid: 9,
            base: "1.M1P1.h,S=10,W=99".into(),
            info: "".into(),
        };
        let msg = b"Date: Mon, 23 Nov 2026 04:00:00 +0100\r\nSubject: =?utf-8?q?Gr=C3=BC=C3=9Fe?=\r\nFrom: =?iso-8859-1?q?J=F6rg?= <j@x.test>\r\nX-Other: not kept\r\n\r\nbody\r\n";
        let head = summarize(&entry, msg, false, 5).unwrap();
        assert_eq!(head.size, 99);
        assert_eq!(head.sent_date, Some(1_795_402_800));
        assert_eq!(head.header("SUBJECT").collect::<Vec<_>>(), ["Grüße"]);
        assert_eq!(head.header("FROM").collect::<Vec<_>>(), ["Jörg <j@x.test>"]);
        assert_eq!(head.header("X-OTHER").count(), 0);
        assert!(head.bodystructure.is_none());
        let whole = summarize(&entry, msg, true, 5).unwrap();
        assert!(
            whole
                .bodystructure
                .unwrap()
                .starts_with(b"(\"text\" \"plain\"")
        );
        // No size in the name and only the header read: nothing to cache.
        let unsized_entry = Entry {
            base: "1.M1P1.h".into(),
            ..entry
        };
        assert!(summarize(&unsized_entry, msg, false, 5).is_none());
    }

    #[test]
    fn a_header_end_is_found_across_the_edge_of_two_reads() {
        // A read ended inside the end; `from` is 2 bytes before its edge.
        assert!(header_ends(b"Subject: x\r\n\r\nbody", 13 - 2));
        assert!(header_ends(b"Subject: x\n\nbody", 11 - 2));
        assert!(header_ends(b"\r\nbody", 0));
        assert!(!header_ends(b"Subject: x\r\nFrom: y\r\n", 10));
        // An end wholly before `from` was already looked for.
        assert!(!header_ends(b"Subject: x\n\nbody body", 16));
    }
}
