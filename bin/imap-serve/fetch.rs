//! FETCH (RFC 3501 §6.4.5, RFC 9051 §6.4.5): flags, dates and sizes from
//! the file name and inode; ENVELOPE from the header alone; BODYSTRUCTURE
//! and `BODY[...]` sections from the message in its wire form (CRLF).
//!
//! Messages are read through `message` in their wire form, what IMAP sends
//! and RFC822.SIZE (`,W=` in the name) counts, so every offset here is an
//! offset in what the client receives.

use std::borrow::Cow;
use std::collections::HashMap;
use std::io::Write as _;

use postroom::net::NetError;
use postroom::proto::imap::command::{FetchItem, SectionText, SequenceSet};
use postroom::proto::imap::response::{
    self, internal_date, literal, literal8, part_number, section_name,
};
use postroom::proto::mime;
use postroom::store::mailbox::cache::Record;
use postroom::store::mailbox::{Entry, flags};

use crate::message::{self, Need, read_message};
use crate::session::{Done, Session};

/// Messages whose headers are read ahead at once.
const READ_AHEAD: usize = 512;

/// Responses are gathered up to this size before they are written.
const FETCH_BATCH: usize = 64 * 1024;

/// What the file must give for `items`, given what the cache record (if
/// any) already has.
fn need_of(items: &[FetchItem], record: Option<&Record>) -> Need {
    let mut need = Need::Nothing;
    for item in items {
        let n = match item {
            FetchItem::Envelope if record.is_some() => Need::Nothing,
            FetchItem::Body if record.is_some_and(|r| r.body.is_some()) => Need::Nothing,
            FetchItem::BodyStructure if record.is_some_and(|r| r.bodystructure.is_some()) => {
                Need::Nothing
            }
            FetchItem::Envelope | FetchItem::Rfc822Header => Need::Header,
            FetchItem::Section { section, .. }
                if section.part.is_empty()
                    && matches!(
                        section.text,
                        SectionText::Header | SectionText::HeaderFields { .. }
                    ) =>
            {
                Need::Header
            }
            FetchItem::Section { .. }
            | FetchItem::Binary { .. }
            | FetchItem::BinarySize(_)
            | FetchItem::Rfc822
            | FetchItem::Rfc822Text
            | FetchItem::Body
            | FetchItem::BodyStructure => Need::Everything,
            _ => Need::Nothing,
        };
        if n > need {
            need = n;
        }
    }
    need
}

/// Whether any item is one the folder cache answers.
fn uses_cache(items: &[FetchItem]) -> bool {
    items.iter().any(|i| {
        matches!(
            i,
            FetchItem::Envelope
                | FetchItem::Body
                | FetchItem::BodyStructure
                | FetchItem::InternalDate
                | FetchItem::Rfc822Size
        )
    })
}

/// CONDSTORE and QRESYNC's FETCH modifiers (RFC 7162 §3.1.4, §3.2.6).
#[derive(Default)]
struct Modifiers {
    pub changed_since: Option<u64>,
    pub vanished: bool,
}

impl Session {
    pub async fn fetch(
        &mut self,
        uid: bool,
        set: &SequenceSet,
        items: &[FetchItem],
        changed_since: Option<u64>,
        vanished: bool,
    ) -> Result<Done, NetError> {
        let session = self;
        let modifiers = Modifiers {
            changed_since,
            vanished,
        };
        let mut positions = match session.resolve(set, uid) {
            Ok(p) => p,
            Err(done) => return Ok(done),
        };
        // Asking for MODSEQ turns CONDSTORE on for the session (§3.1).
        session.condstore |= items.contains(&FetchItem::ModSeq);
        let condstore = session.condstore;
        if condstore && let Some(sel) = session.selected.as_mut() {
            sel.update_modseqs();
            if let Some(since) = modifiers.changed_since {
                positions.retain(|&i| sel.modseq(sel.view[i].uid) > since);
                if modifiers.vanished {
                    let vanished = sel.vanished_since(set, since);
                    if !vanished.is_empty() {
                        let line = format!("* VANISHED (EARLIER) {vanished}\r\n");
                        session.out(line.as_bytes()).await?;
                    }
                }
            }
        }
        let cached = uses_cache(items);
        if cached && let Some(sel) = session.selected.as_mut() {
            sel.cache.refresh();
        }
        let sets_seen = items.iter().any(|i| {
            matches!(
                i,
                FetchItem::Rfc822
                    | FetchItem::Rfc822Text
                    | FetchItem::Section { peek: false, .. }
                    | FetchItem::Binary { peek: false, .. }
            )
        });
        let mut unknown_cte = false;
        let wants_flags = items.contains(&FetchItem::Flags);
        // Small responses (FLAGS, UID) go out in batches: one write per
        // message costs more than the message's own work.
        let mut batch: Vec<u8> = Vec::new();
        // Headers the cache lacks are read ahead, a slice of the set at a
        // time, on every core (`message::summarize_headers`).
        let read_ahead = cached && need_of(items, None) <= Need::Header;
        let mut ahead: HashMap<u32, Record> = HashMap::new();
        // The view as the command began: entries are borrowed from it, not
        // copied, and a flag change below goes to the session's own view.
        let view = match session.selected.as_ref() {
            Some(sel) => sel.view.clone(),
            None => return Ok(Done::Bad("select a mailbox first".into())),
        };
        for (n, &i) in positions.iter().enumerate() {
            let Some(sel) = session.selected.as_mut() else {
                break;
            };
            if read_ahead && n % READ_AHEAD == 0 {
                // The records the last slice made are written now, so a
                // big folder's are never all held at once.
                let view = &sel.view;
                sel.cache
                    .flush(&|uid| view.binary_search_by_key(&uid, |e| e.uid).is_ok());
                let todo: Vec<Entry> = positions[n..]
                    .iter()
                    .take(READ_AHEAD)
                    .map(|&j| &sel.view[j])
                    .filter(|e| e.wire_size().is_some() && !sel.cache.has(e.uid))
                    .cloned()
                    .collect();
                ahead.clear();
                for r in message::summarize_headers(&sel.folder, &todo) {
                    sel.cache.put(r.clone());
                    ahead.insert(r.uid, r);
                }
            }
            let mut entry = Cow::Borrowed(&view[i]);
            let mut record = if cached {
                ahead
                    .remove(&entry.uid)
                    .or_else(|| sel.cache.get(entry.uid, &entry.base))
            } else {
                None
            };
            let mut need = need_of(items, record.as_ref());
            // A record made from a header alone needs the size from the name.
            if need == Need::Header && record.is_none() && entry.wire_size().is_none() {
                need = Need::Everything;
            }
            let needs_file = need != Need::Nothing
                || (record.is_none()
                    && (items.contains(&FetchItem::InternalDate) || entry.wire_size().is_none()));
            if needs_file {
                // The file may have been renamed by a flag change elsewhere.
                match sel.folder.refresh(&entry) {
                    Ok(Some(e)) => {
                        entry = Cow::Owned(Entry {
                            uid: entry.uid,
                            ..e
                        })
                    }
                    // Expunged by another session, its EXPUNGE not yet
                    // sent: nothing more is known of it. The command goes
                    // on with the rest and succeeds, as Dovecot's does.
                    _ => continue,
                }
            }
            let mut message = None;
            if need != Need::Nothing {
                match read_message(&sel.folder, &entry, need) {
                    Some(m) => message = Some(m),
                    None => continue,
                }
            }
            // Whatever was read that the cache lacked goes into it.
            if let Some(m) = &message
                && cached
                && record.as_ref().is_none_or(|r| {
                    need == Need::Everything && (r.body.is_none() || r.bodystructure.is_none())
                })
                && let Some(fresh) = message::summarize(
                    &entry,
                    m,
                    need == Need::Everything,
                    message::internal_date(&sel.folder, &entry),
                )
            {
                sel.cache.put(fresh.clone());
                record = Some(fresh);
            }
            let mut flags_changed = false;
            // Without `s` a read leaves \Seen alone (RFC 4314 §4).
            if sets_seen
                && !sel.read_only
                && sel.rights.has(postroom::store::mailbox::acl::Rights::SEEN)
                && !sel.flags_of(&entry).has(flags::SEEN)
            {
                let mut f = sel.flags_of(&entry);
                f.system |= flags::SEEN;
                if let Ok(Some(updated)) = sel.set_flags(&entry, f) {
                    std::sync::Arc::make_mut(&mut sel.view)[i] = updated.clone();
                    entry = Cow::Owned(updated);
                    sel.force = true;
                    flags_changed = true;
                }
            }
            let mut out = std::mem::take(&mut batch);
            // Straight into the batch: a FETCH of 100,000 messages' FLAGS
            // is mostly this formatting.
            let _ = write!(out, "* {} FETCH (", i + 1);
            let mut first = true;
            let mut sep = |out: &mut Vec<u8>| {
                if !first {
                    out.push(b' ');
                }
                first = false;
            };
            let structure = match (&message, need) {
                (Some(m), Need::Everything) => Some(mime::parse(m)),
                _ => None,
            };
            // BINARY, and a part holding a NUL, of a message stored as
            // given read the stored bytes: read when first asked for, and
            // once for the message however many items ask.
            // (A OnceLock only because the session's future must be Send.)
            let stored = std::sync::OnceLock::new();
            let as_stored = || {
                stored
                    .get_or_init(|| {
                        message::read_as_stored(&sel.folder, &entry).map(|raw| {
                            let root = mime::parse(&raw);
                            (raw, root)
                        })
                    })
                    .as_ref()
                    .map(|(raw, root)| (&raw[..], Some(root)))
            };
            let binary_source =
                || as_stored().unwrap_or((message.as_deref().unwrap_or(b""), structure.as_ref()));
            for item in items {
                sep(&mut out);
                match item {
                    FetchItem::Uid => {
                        let _ = write!(out, "UID {}", entry.uid);
                    }
                    FetchItem::Binary { part, partial, .. } => {
                        out.extend_from_slice(format!("BINARY[{}]", part_number(part)).as_bytes());
                        let (binary_of, binary_structure) = binary_source();
                        match mime::binary_data(binary_of, binary_structure, part) {
                            mime::Binary::Data(data) => {
                                let data = match partial {
                                    Some((origin, count)) => {
                                        out.extend_from_slice(format!("<{origin}>").as_bytes());
                                        response::partial(&data, *origin, Some(*count))
                                    }
                                    None => &data[..],
                                };
                                out.push(b' ');
                                literal8(&mut out, data);
                            }
                            mime::Binary::NoSuchPart => out.extend_from_slice(b" NIL"),
                            mime::Binary::UnknownEncoding => {
                                unknown_cte = true;
                                out.extend_from_slice(b" NIL");
                            }
                        }
                    }
                    FetchItem::BinarySize(part) => {
                        out.extend_from_slice(
                            format!("BINARY.SIZE[{}] ", part_number(part)).as_bytes(),
                        );
                        let (binary_of, binary_structure) = binary_source();
                        match mime::binary_data(binary_of, binary_structure, part) {
                            mime::Binary::Data(data) => {
                                out.extend_from_slice(data.len().to_string().as_bytes())
                            }
                            mime::Binary::NoSuchPart => out.extend_from_slice(b"NIL"),
                            mime::Binary::UnknownEncoding => {
                                unknown_cte = true;
                                out.extend_from_slice(b"NIL");
                            }
                        }
                    }
                    FetchItem::ModSeq => out.extend_from_slice(
                        format!("MODSEQ ({})", sel.modseq(entry.uid)).as_bytes(),
                    ),
                    FetchItem::Flags => {
                        let _ = write!(out, "FLAGS {}", sel.flags(&entry));
                    }
                    FetchItem::InternalDate => {
                        let secs = match &record {
                            Some(r) => r.internal_date,
                            None => message::internal_date(&sel.folder, &entry),
                        };
                        out.extend_from_slice(
                            format!("INTERNALDATE {}", internal_date(secs)).as_bytes(),
                        );
                    }
                    FetchItem::Rfc822Size => {
                        let size = match (entry.wire_size(), &record, &message) {
                            (Some(s), _, _) => s,
                            (None, Some(r), _) => r.size,
                            (None, None, Some(m)) if need == Need::Everything => m.len() as u64,
                            _ => read_message(&sel.folder, &entry, Need::Everything)
                                .map_or(0, |m| m.len() as u64),
                        };
                        out.extend_from_slice(format!("RFC822.SIZE {size}").as_bytes());
                    }
                    FetchItem::Envelope => {
                        out.extend_from_slice(b"ENVELOPE ");
                        match (&record, &message) {
                            (Some(r), _) => out.extend_from_slice(&r.envelope),
                            (None, m) => mime::envelope(
                                &mut out,
                                mime::header_of(m.as_deref().unwrap_or(b"")),
                            ),
                        }
                    }
                    FetchItem::Body | FetchItem::BodyStructure => {
                        let extended = *item == FetchItem::BodyStructure;
                        out.extend_from_slice(if extended {
                            b"BODYSTRUCTURE "
                        } else {
                            b"BODY "
                        });
                        let from_cache = record.as_ref().and_then(|r| {
                            if extended {
                                r.bodystructure.as_deref()
                            } else {
                                r.body.as_deref()
                            }
                        });
                        match (from_cache, &message, &structure) {
                            (Some(text), _, _) => out.extend_from_slice(text),
                            (None, Some(m), Some(root)) => {
                                mime::body_structure(&mut out, m, root, extended)
                            }
                            _ => out.extend_from_slice(b"NIL"),
                        }
                    }
                    FetchItem::Rfc822 => {
                        out.extend_from_slice(b"RFC822 ");
                        literal(&mut out, message.as_deref().unwrap_or(b""));
                    }
                    FetchItem::Rfc822Header => {
                        out.extend_from_slice(b"RFC822.HEADER ");
                        literal(&mut out, mime::header_of(message.as_deref().unwrap_or(b"")));
                    }
                    FetchItem::Rfc822Text => {
                        out.extend_from_slice(b"RFC822.TEXT ");
                        let m = message.as_deref().unwrap_or(b"");
                        literal(&mut out, &m[mime::header_of(m).len()..]);
                    }
                    FetchItem::Section {
                        section, partial, ..
                    } => {
                        out.extend_from_slice(b"BODY[");
                        section_name(&mut out, section);
                        out.push(b']');
                        let m = message.as_deref().unwrap_or(b"");
                        let data = mime::section_data(m, structure.as_ref(), section);
                        // A part holding a NUL goes content-transfer-encoded:
                        // its bytes as stored, when it was stored as given.
                        let data = match (data, section.part.is_empty(), &section.text) {
                            (Some(d), false, SectionText::Full) if d.contains(&0) => {
                                let d = match as_stored() {
                                    Some((raw, root)) => {
                                        mime::section_data(raw, root, section).unwrap_or(d)
                                    }
                                    None => d,
                                };
                                Some(mime::without_nul(d))
                            }
                            (d, _, _) => d,
                        };
                        match (data, partial) {
                            (None, _) => out.extend_from_slice(b" NIL"),
                            (Some(data), None) => {
                                out.push(b' ');
                                literal(&mut out, &data);
                            }
                            (Some(data), Some((origin, count))) => {
                                out.extend_from_slice(format!("<{origin}> ").as_bytes());
                                literal(&mut out, response::partial(&data, *origin, Some(*count)));
                            }
                        }
                    }
                }
            }
            if flags_changed && !wants_flags {
                sep(&mut out);
                out.extend_from_slice(format!("FLAGS {}", sel.flags(&entry)).as_bytes());
            }
            if flags_changed && condstore {
                // The implicit \Seen gave the message a new mod-sequence.
                let new = sel.update_modseqs();
                if new.contains(&entry.uid) && !items.contains(&FetchItem::ModSeq) {
                    sep(&mut out);
                    out.extend_from_slice(format!("MODSEQ ({})", sel.modseq(entry.uid)).as_bytes());
                }
            }
            out.extend_from_slice(b")\r\n");
            if out.len() >= FETCH_BATCH {
                session.out(&out).await?;
                out.clear();
            }
            batch = out;
        }
        session.out(&batch).await?;
        if let Some(sel) = session.selected.as_mut() {
            sel.done_with_cache();
        }
        Ok(if unknown_cte {
            Done::No("[UNKNOWN-CTE] a part has a transfer encoding this server cannot undo".into())
        } else {
            Done::Ok("FETCH completed".into())
        })
    }
}
