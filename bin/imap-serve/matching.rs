//! Which messages of the selected folder a SEARCH key matches (RFC 3501
//! §6.4.4): SEARCH, SORT and THREAD all start here.
//!
//! Keys on flags, UIDs, sizes and internal dates cost no file read; header
//! keys read the header only, and decode it with mail-parser (RFC 2047
//! encoded words, so `SUBJECT "Grüße"` finds `=?utf-8?q?Gr=C3=BC=C3=9Fe?=`);
//! BODY and TEXT read the whole message and search its decoded text parts.
//! Comparison is case-insensitive substring, as the RFC asks.

use mail_parser::{MessageParser, PartType};
use postroom::proto::imap::command::{Date, SearchKey, days_from_civil};
use postroom::proto::mime;
use postroom::store::mailbox::cache::{Cache, Record, SEARCH_FIELDS};
use postroom::store::mailbox::modseq::ModSeqs;
use postroom::store::mailbox::{Entry, Folder, Keywords, flags};

use crate::message::{self, Need, read_message};
use crate::session::Selected;

/// What of one message has been read so far.
struct Candidate<'a> {
    entry: &'a Entry,
    /// The entry as last found on disk (a flag change elsewhere renames it).
    current: Entry,
    seq: u32,
    folder: &'a Folder,
    cache: &'a mut Cache,
    /// The cache's record, looked up on first use.
    record: Option<Option<Record>>,
    file: Option<Option<Vec<u8>>>,
    headers: Option<Vec<(String, String)>>,
}

impl Candidate<'_> {
    fn file(&mut self) -> Option<&[u8]> {
        if self.file.is_none() {
            let mut read = read_message(self.folder, &self.current, Need::Everything);
            // Renamed by a flag change elsewhere since our last sync?
            if read.is_none()
                && let Ok(Some(now)) = self.folder.refresh(self.entry)
            {
                read = read_message(self.folder, &now, Need::Everything);
                self.current = now;
            }
            self.file = Some(read);
        }
        self.file.as_ref().and_then(|f| f.as_deref())
    }

    fn record(&mut self) -> Option<&Record> {
        if self.record.is_none() {
            let found = self.cache.get(self.entry.uid, &self.entry.base);
            self.record = Some(found);
        }
        self.record.as_ref().and_then(Option::as_ref)
    }

    /// The decoded values of one header field, from the cache when it keeps
    /// that field; a message read for it is summarized into the cache.
    fn header_values(&mut self, name: &str) -> Vec<String> {
        if SEARCH_FIELDS.contains(&name) {
            if let Some(r) = self.record() {
                return r.header(name).map(str::to_string).collect();
            }
            if let Some(m) = self.file().map(<[u8]>::to_vec) {
                let date = message::internal_date(self.folder, &self.current);
                if let Some(r) = message::summarize(self.entry, &m, true, date) {
                    let values = r.header(name).map(str::to_string).collect();
                    self.cache.put(r.clone());
                    self.record = Some(Some(r));
                    return values;
                }
            }
        }
        self.headers()
            .iter()
            .filter(|(n, _)| n == name)
            .map(|(_, v)| v.clone())
            .collect()
    }

    /// (upper-case name, decoded value) of every header field.
    fn headers(&mut self) -> &[(String, String)] {
        if self.headers.is_none() {
            let parsed = self
                .file()
                .map(|m| mime::decoded_headers(mime::header_of(m)));
            self.headers = Some(parsed.unwrap_or_default());
        }
        self.headers.as_deref().unwrap_or(&[])
    }

    fn internal_days(&mut self) -> i64 {
        let secs = match self.record() {
            Some(r) => r.internal_date,
            None => message::internal_date(self.folder, &self.current),
        };
        secs.div_euclid(86_400)
    }

    fn size(&mut self) -> u64 {
        if let Some(s) = self.entry.wire_size() {
            return s;
        }
        if let Some(r) = self.record() {
            return r.size;
        }
        self.file().map_or(0, |f| f.len() as u64)
    }

    /// The day of the Date header as written there (RFC 3501 §6.4.4: time
    /// and zone disregarded).
    fn sent_days(&mut self) -> Option<i64> {
        let date = self.header_values("DATE").into_iter().next()?;
        let d = mail_parser::DateTime::parse_rfc822(&date)?;
        Some(days_from_civil(
            i64::from(d.year),
            u32::from(d.month),
            u32::from(d.day),
        ))
    }
}

fn contains(haystack: &str, needle: &str) -> bool {
    needle.is_empty() || haystack.to_lowercase().contains(&needle.to_lowercase())
}

struct Context<'a> {
    keywords: &'a Keywords,
    /// The session's \Recent ranges (none in IMAP4rev2).
    recent: &'a [(u32, u32)],
    /// Held only when the key asks about mod-sequences.
    modseqs: Option<&'a ModSeqs>,
    /// The reader's own \Seen, in a folder of another tree.
    seen: Option<&'a [u32]>,
    count: u32,
    largest_uid: u32,
}

fn matches(key: &SearchKey, c: &mut Candidate<'_>, ctx: &Context<'_>) -> bool {
    let f = crate::acl::overlay(c.entry.flags(), c.entry.uid, ctx.seen);
    match key {
        SearchKey::All => true,
        SearchKey::Flag(bit, set) => f.has(*bit) == *set,
        SearchKey::Keyword(name, set) => {
            let has = ctx
                .keywords
                .index(name)
                .is_some_and(|i| f.keywords & (1 << i) != 0);
            has == *set
        }
        SearchKey::Recent => is_recent(ctx, c.entry.uid),
        SearchKey::New => is_recent(ctx, c.entry.uid) && !f.has(flags::SEEN),
        SearchKey::Old => !is_recent(ctx, c.entry.uid),
        SearchKey::Header(name, text) => c.header_values(name).iter().any(|v| contains(v, text)),
        SearchKey::Body(text) => body_contains(c, text),
        SearchKey::Text(text) => {
            c.headers()
                .iter()
                .any(|(n, v)| contains(n, text) || contains(v, text))
                || body_contains(c, text)
        }
        SearchKey::Before(Date(d)) => c.internal_days() < *d,
        SearchKey::On(Date(d)) => c.internal_days() == *d,
        SearchKey::Since(Date(d)) => c.internal_days() >= *d,
        SearchKey::SentBefore(Date(d)) => c.sent_days().is_some_and(|s| s < *d),
        SearchKey::SentOn(Date(d)) => c.sent_days().is_some_and(|s| s == *d),
        SearchKey::SentSince(Date(d)) => c.sent_days().is_some_and(|s| s >= *d),
        SearchKey::Larger(n) => c.size() > *n,
        SearchKey::Smaller(n) => c.size() < *n,
        SearchKey::Uid(set) => set
            .ranges(ctx.largest_uid)
            .any(|(lo, hi)| (lo..=hi).contains(&c.entry.uid)),
        SearchKey::ModSeq(n) => ctx.modseqs.map_or(0, |m| m.of(c.entry.uid)) >= *n,
        SearchKey::Seq(set) => set
            .ranges(ctx.count)
            .any(|(lo, hi)| (lo..=hi).contains(&c.seq)),
        SearchKey::Not(k) => !matches(k, c, ctx),
        SearchKey::Or(a, b) => matches(a, c, ctx) || matches(b, c, ctx),
        SearchKey::And(keys) => keys.iter().all(|k| matches(k, c, ctx)),
    }
}

fn is_recent(ctx: &Context<'_>, uid: u32) -> bool {
    ctx.recent.iter().any(|&(a, b)| (a..b).contains(&uid))
}

fn body_contains(c: &mut Candidate<'_>, text: &str) -> bool {
    let Some(m) = c.file() else {
        return false;
    };
    let Some(parsed) = MessageParser::new().parse(m) else {
        return false;
    };
    any_text_contains(&parsed, text, 0)
}

/// How deep messages attached to messages are searched: deeper ones are
/// no real mail, and the bound keeps a hostile one cheap.
const NESTED_MESSAGES_SEARCHED: usize = 8;

/// Whether a text part of `message`, or of a message attached to it
/// (message/rfc822: a forwarded mail, or the whole message wrapping one),
/// holds `text`, as RFC 9051 §6.4.4's BODY and Dovecot's search have it.
fn any_text_contains(message: &mail_parser::Message<'_>, text: &str, depth: usize) -> bool {
    message.parts.iter().any(|p| match &p.body {
        PartType::Text(t) | PartType::Html(t) => contains(t, text),
        PartType::Message(inner) if depth < NESTED_MESSAGES_SEARCHED => {
            any_text_contains(inner, text, depth + 1)
        }
        _ => false,
    })
}

/// Positions in the view (0-based) of the messages `key` matches; what
/// it reads of them goes into the folder cache. SEARCH, SORT and THREAD
/// all start here.
pub fn matching(sel: &mut Selected, key: &SearchKey) -> Vec<usize> {
    let modseq = mentions_modseq(key);
    if modseq {
        sel.update_modseqs();
    }
    let modseqs = if modseq {
        Some(sel.shared.modseqs(sel.validity))
    } else {
        None
    };
    let ctx = Context {
        keywords: &sel.keywords,
        recent: if sel.report_recent { &sel.recent } else { &[] },
        modseqs: modseqs.as_ref().and_then(|g| g.as_ref()),
        seen: sel.seen.as_ref().map(|s| s.uids()),
        count: sel.view.len() as u32,
        largest_uid: sel.view.last().map_or(0, |e| e.uid),
    };
    sel.cache.refresh();
    let mut found = Vec::new();
    for (i, entry) in sel.view.iter().enumerate() {
        let mut c = Candidate {
            entry,
            seq: i as u32 + 1,
            current: entry.clone(),
            folder: &sel.folder,
            cache: &mut sel.cache,
            record: None,
            file: None,
            headers: None,
        };
        if matches(key, &mut c, &ctx) {
            found.push(i);
        }
    }
    drop(modseqs);
    sel.done_with_cache();
    found
}

/// Whether the key asks about mod-sequences (RFC 7162 §3.1.5).
pub fn mentions_modseq(key: &SearchKey) -> bool {
    match key {
        SearchKey::ModSeq(_) => true,
        SearchKey::Not(k) => mentions_modseq(k),
        SearchKey::Or(a, b) => mentions_modseq(a) || mentions_modseq(b),
        SearchKey::And(keys) => keys.iter().any(mentions_modseq),
        _ => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn headers_decode() {
        let h = mime::decoded_headers(b"Subject: =?utf-8?q?Gr=C3=BC=C3=9Fe?=\r\nFrom: =?iso-8859-1?q?J=F6rg?= <j@x.test>\r\n\r\n");
        assert!(
            h.iter()
                .any(|(n, v)| n == "SUBJECT" && contains(v, "grüße"))
        );
        assert!(
            h.iter()
                .any(|(n, v)| n == "FROM" && contains(v, "Jörg") && contains(v, "j@x.test"))
        );
    }
}
