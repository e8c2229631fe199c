//! SEARCH (RFC 3501 §6.4.4) and its ESEARCH form (RFC 4731), with SAVE
//! (SEARCHRES, RFC 5182). Which messages a key matches is `matching`'s.

use postroom::net::NetError;
use postroom::proto::imap::command::SearchKey;
use postroom::proto::imap::response::{esearch, number_list};

use crate::matching::{matching, mentions_modseq};
use crate::session::{Done, Session};

impl Session {
    pub async fn search(
        &mut self,
        tag: &str,
        uid: bool,
        key: &SearchKey,
        ret: Option<&[String]>,
    ) -> Result<Done, NetError> {
        let session = self;
        let uses_modseq = mentions_modseq(key);
        session.condstore |= uses_modseq;
        let Some(sel) = session.selected.as_mut() else {
            return Ok(Done::Bad("select a mailbox first".into()));
        };
        let positions = matching(sel, key);
        // RFC 4731 §3.2 with RFC 7162 §3.1.5: the highest mod-sequence of
        // the messages returned; with only MIN and/or MAX, those are the
        // first and/or last match, not all of them.
        let has = |o: &str| ret.is_some_and(|opts| opts.iter().any(|x| x == o));
        let only_ends = (has("MIN") || has("MAX")) && !has("ALL") && !has("COUNT");
        let returned: Vec<usize> = if only_ends {
            let mut ends = Vec::new();
            if has("MIN") {
                ends.extend(positions.first());
            }
            if has("MAX") {
                ends.extend(positions.last());
            }
            ends
        } else {
            positions.clone()
        };
        let highest = returned
            .iter()
            .map(|&i| sel.modseq(sel.view[i].uid))
            .max()
            .unwrap_or(0);
        let found: Vec<u32> = positions
            .iter()
            .map(|&i| if uid { sel.view[i].uid } else { i as u32 + 1 })
            .collect();
        let (ret, update) = crate::context::split_return(ret);
        let refused = if update {
            let uids = positions.iter().map(|&i| sel.view[i].uid).collect();
            crate::context::open(sel, tag, uid, key, None, uids)
        } else {
            String::new()
        };
        let ret = ret.as_deref();
        // IMAP4rev2 answers every SEARCH with ESEARCH (RFC 9051 §7.3.4).
        let rev2_all = Vec::new();
        let ret = ret.or(session.rev2.then_some(&rev2_all[..]));
        if let Some(opts) = ret
            && opts.iter().any(|o| o == "SAVE")
        {
            // RFC 5182 §2.4: with MIN or MAX (and not ALL or COUNT), only
            // those are saved.
            let uids: Vec<u32> = match &session.selected {
                Some(sel) if !uid => found
                    .iter()
                    .map(|&n| sel.view[n as usize - 1].uid)
                    .collect(),
                _ => found.clone(),
            };
            let has = |o: &str| opts.iter().any(|x| x == o);
            session.saved = if (has("MIN") || has("MAX")) && !has("ALL") && !has("COUNT") {
                let mut some = Vec::new();
                if has("MIN") {
                    some.extend(uids.first());
                }
                if has("MAX") {
                    some.extend(uids.last());
                }
                some.dedup();
                some
            } else {
                uids
            };
            if opts.iter().all(|o| o == "SAVE") {
                // SAVE alone answers nothing but OK.
                return Ok(Done::Ok("SEARCH completed, result saved".into()));
            }
        }
        let mut line = match ret {
            None => number_list("SEARCH", &found),
            Some(opts) => esearch(tag, uid, &found, opts),
        };
        // RFC 7162 §3.1.5: a search by MODSEQ tells the highest one it found.
        if uses_modseq && !found.is_empty() {
            if ret.is_some() {
                line.push_str(&format!(" MODSEQ {highest}"));
            } else {
                line.push_str(&format!(" (MODSEQ {highest})"));
            }
        }
        session
            .out(format!("{refused}{line}\r\n").as_bytes())
            .await?;
        Ok(Done::Ok("SEARCH completed".into()))
    }
}
