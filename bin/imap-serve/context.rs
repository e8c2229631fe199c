//! Search and sort contexts (CONTEXT=SEARCH, CONTEXT=SORT, RFC 5267 §4):
//! a `SEARCH` or `SORT` with `RETURN (UPDATE)` is kept while its folder is
//! selected, and each sync that changes the view tells the client how
//! its result changed, as untagged `ESEARCH (TAG "t") [UID] REMOVEFROM
//! (...)` and `ADDTO (...)`, until CANCELUPDATE or the folder is left.
//!
//! Correct rather than clever: the search (or sort) is run again over the
//! view after each change and the two results compared, so new messages,
//! expunges and flag changes (by anyone) are all covered alike. Only after
//! a change: a view the same as the one the results were worked out on
//! (no EXISTS, EXPUNGE or flag change since) cannot change them.

use postroom::proto::imap::command::{SearchKey, SequenceSet, SortKey};
use postroom::proto::imap::response::quoted_or_literal;
use std::sync::Arc;

use postroom::store::mailbox::Entry;

use crate::session::{Done, Selected, Session};

/// Most contexts a session keeps at once; a search past that is answered
/// without updates (`NOUPDATE`), as RFC 5267 §4.3 allows.
const CONTEXTS_MAX: usize = 32;

/// One kept search.
pub struct Context {
    tag: String,
    uid: bool,
    key: SearchKey,
    /// Sort criteria for a SORT context; `None` for SEARCH.
    sort: Option<Vec<(bool, SortKey)>>,
    /// The result as last told the client: UIDs, in sort order for SORT.
    uids: Vec<u32>,
}

/// The RETURN options without UPDATE and CONTEXT (CONTEXT is only a hint,
/// RFC 5267 §4.2), and whether UPDATE was among them. Options that are
/// left empty answer as `ALL` (RFC 4731 §3.1).
pub fn split_return(ret: Option<&[String]>) -> (Option<Vec<String>>, bool) {
    let Some(opts) = ret else {
        return (None, false);
    };
    let update = opts.iter().any(|o| o == "UPDATE");
    let rest = opts
        .iter()
        .filter(|o| *o != "UPDATE" && *o != "CONTEXT")
        .cloned()
        .collect();
    (Some(rest), update)
}

/// Keeps a search for updates; returns the untagged line to send first
/// when the session has too many already (the search is then answered
/// without updates).
pub fn open(
    sel: &mut Selected,
    tag: &str,
    uid: bool,
    key: &SearchKey,
    sort: Option<&[(bool, SortKey)]>,
    uids: Vec<u32>,
) -> String {
    // A tag used again replaces the older context of that tag.
    sel.contexts.retain(|c| c.tag != tag);
    if sel.contexts.len() >= CONTEXTS_MAX {
        return format!(
            "* NO [NOUPDATE {}] {CONTEXTS_MAX} searches are kept for updates already; CANCELUPDATE one\r\n",
            quoted(tag)
        );
    }
    if sel.contexts.is_empty() {
        // Its result is of the view as it is: nothing to run again until
        // that changes. (Beside others, the view theirs were last worked
        // out on stays the mark.)
        sel.contexts_of = Some(sel.view.clone());
    }
    sel.contexts.push(Context {
        tag: tag.to_string(),
        uid,
        key: key.clone(),
        sort: sort.map(<[_]>::to_vec),
        uids,
    });
    String::new()
}

impl Session {
    /// CANCELUPDATE: the searches of these tags are updated no more.
    pub fn cancel_update(&mut self, tags: &[String]) -> Done {
        let Some(sel) = self.selected.as_mut() else {
            return Done::Bad("select a mailbox first".into());
        };
        if let Some(unknown) = tags
            .iter()
            .find(|t| !sel.contexts.iter().any(|c| &c.tag == *t))
        {
            return Done::Bad(format!(
                "no search of tag {unknown} is being updated (RETURN (UPDATE) starts one)"
            ));
        }
        sel.contexts.retain(|c| !tags.contains(&c.tag));
        Done::Ok("CANCELUPDATE completed".into())
    }
}

/// What the contexts' results lost and gained since they were last told,
/// the view having changed from `old` to `sel.view`: the REMOVEFROM lines
/// (sequence numbers of the old view, so they go before any EXPUNGE) and
/// the ADDTO lines (of the new view, after EXISTS).
pub fn updates(sel: &mut Selected, old: &[Entry]) -> (Vec<u8>, Vec<u8>) {
    let (mut removed_lines, mut added_lines) = (Vec::new(), Vec::new());
    if sel.contexts.is_empty() {
        // Not kept for nothing: it may be a whole folder's entries.
        sel.contexts_of = None;
        return (removed_lines, added_lines);
    }
    // The same entries, flags and all, as last time: the same results.
    // (Not in a folder of another tree with the reader's own \Seen, kept
    // beside the view: there the searches always run again.)
    let unchanged = sel.contexts_of.as_ref().is_some_and(|of| {
        Arc::ptr_eq(of, &sel.view) || (of.len() == sel.view.len() && **of == *sel.view)
    });
    if unchanged && sel.seen.is_none() {
        sel.contexts_of = Some(sel.view.clone());
        return (removed_lines, added_lines);
    }
    sel.contexts_of = Some(sel.view.clone());
    let mut contexts = std::mem::take(&mut sel.contexts);
    for c in &mut contexts {
        let now: Vec<u32> = match &c.sort {
            Some(criteria) => crate::thread::sort_order(sel, criteria, &c.key)
                .into_iter()
                .map(|(uid, _)| uid)
                .collect(),
            None => crate::matching::matching(sel, &c.key)
                .into_iter()
                .map(|i| sel.view[i].uid)
                .collect(),
        };
        if now == c.uids {
            continue;
        }
        let mut was = c.uids.clone();
        was.sort_unstable();
        let mut is = now.clone();
        is.sort_unstable();
        let seq_in = |view: &[Entry], uid: u32| {
            view.binary_search_by_key(&uid, |e| e.uid)
                .ok()
                .map(|i| i as u32 + 1)
        };
        let head = |uid: bool| {
            let mut line = format!("* ESEARCH (TAG {})", quoted(&c.tag));
            if uid {
                line.push_str(" UID");
            }
            line
        };
        // Gone from the result: position 0, none being promised.
        let mut gone: Vec<u32> = was
            .iter()
            .filter(|u| is.binary_search(u).is_err())
            .filter_map(|&u| if c.uid { Some(u) } else { seq_in(old, u) })
            .collect();
        gone.sort_unstable();
        if !gone.is_empty() {
            removed_lines.extend_from_slice(
                format!(
                    "{} REMOVEFROM (0 {})\r\n",
                    head(c.uid),
                    SequenceSet::of_sorted(&gone)
                )
                .as_bytes(),
            );
        }
        // New in the result. A SEARCH result has no order (position 0);
        // in a SORT one each goes at its place in the new order, counted
        // from 1 after the removals and the insertions before it.
        let number = |u: u32| if c.uid { Some(u) } else { seq_in(&sel.view, u) };
        let mut pairs = Vec::new();
        match c.sort {
            Some(_) => {
                for (k, &u) in now.iter().enumerate() {
                    if was.binary_search(&u).is_err()
                        && let Some(n) = number(u)
                    {
                        pairs.push(format!("{} {n}", k + 1));
                    }
                }
            }
            None => {
                let mut new: Vec<u32> = is
                    .iter()
                    .filter(|u| was.binary_search(u).is_err())
                    .filter_map(|&u| number(u))
                    .collect();
                new.sort_unstable();
                if !new.is_empty() {
                    pairs.push(format!("0 {}", SequenceSet::of_sorted(&new)));
                }
            }
        }
        if !pairs.is_empty() {
            added_lines.extend_from_slice(
                format!("{} ADDTO ({})\r\n", head(c.uid), pairs.join(" ")).as_bytes(),
            );
        }
        c.uids = now;
    }
    sel.contexts = contexts;
    (removed_lines, added_lines)
}

fn quoted(tag: &str) -> String {
    let mut out = Vec::new();
    quoted_or_literal(&mut out, tag.as_bytes());
    String::from_utf8_lossy(&out).into_owned()
}
