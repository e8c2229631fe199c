//! The selected folder as the client sees it: sequence sets, reporting
//! other sessions' changes, and the commands that change messages
//! (STORE, EXPUNGE, COPY/MOVE) or wait for changes (IDLE).

use std::sync::Arc;
use std::time::Duration;

use postroom::net::NetError;
use postroom::proto::imap::command::{Bound, SequenceSet, StoreMode};
use postroom::proto::imap::response::all_flags;
use postroom::store::mailbox::acl::Rights;
use postroom::store::mailbox::shared::Entries;
use postroom::store::mailbox::{Admission, Entry, Flags, Folder, MailboxError, flags};

use crate::message::flags_from_names;
use crate::session::{Done, Selected, Session};

/// IDLE with no folder selected looks again this often; with one, as often
/// as its filesystem asks (`watch::other_hosts_poll`: other hosts' changes
/// on a shared filesystem, postroom-tree(5), SEVERAL HOSTS).
const IDLE_RESYNC: Duration = Duration::from_secs(60);

impl Session {
    /// Positions in the view (0-based, ascending) named by a set of
    /// sequence numbers or UIDs. Never expands a range: each range becomes
    /// an interval of positions, so `1:4294967295` costs what `1:*` does.
    pub fn resolve(&self, set: &SequenceSet, uid: bool) -> Result<Vec<usize>, Done> {
        let Some(sel) = &self.selected else {
            return Err(Done::Bad("select a mailbox first".into()));
        };
        let view = &sel.view;
        let mut intervals: Vec<(usize, usize)> = Vec::new();
        if uid {
            let largest = view.last().map_or(0, |e| e.uid);
            for (lo, hi) in set.ranges(largest) {
                let start = view.partition_point(|e| e.uid < lo);
                let end = view.partition_point(|e| e.uid <= hi);
                if start < end {
                    intervals.push((start, end));
                }
            }
        } else {
            let n = view.len() as u32;
            for (lo, hi) in set.ranges(n) {
                if lo > n || lo == 0 {
                    return Err(Done::Bad(
                        "no such message (sequence number beyond the mailbox)".into(),
                    ));
                }
                intervals.push(((lo - 1) as usize, hi.min(n) as usize));
            }
        }
        intervals.sort_unstable();
        let mut out = Vec::new();
        let mut next = 0;
        for (start, end) in intervals {
            for i in start.max(next)..end {
                out.push(i);
            }
            next = next.max(end);
        }
        Ok(out)
    }
}

impl Selected {
    /// The UIDs in `set` expunged after `since` (QRESYNC's `VANISHED
    /// (EARLIER)`); when expunges that old are forgotten, every UID of the
    /// set below UIDNEXT that is not here (RFC 7162 §3.2.6 allows it),
    /// worked out as the gaps between the UIDs here, never one by one.
    pub fn vanished_since(&self, set: &SequenceSet, since: u64) -> SequenceSet {
        let largest = self.next_uid.saturating_sub(1);
        let ranges: Vec<(u32, u32)> = set.ranges(largest).collect();
        let here = |uid: u32| self.view.binary_search_by_key(&uid, |e| e.uid).is_ok();
        let (gone, exact) = self
            .modseqs()
            .as_ref()
            .map_or((Vec::new(), false), |m| m.expunged_since(since));
        if exact {
            let uids: Vec<u32> = gone
                .into_iter()
                .filter(|&u| !here(u) && ranges.iter().any(|&(lo, hi)| (lo..=hi).contains(&u)))
                .collect();
            return SequenceSet::of_sorted(&uids);
        }
        let mut gaps = Vec::new();
        for (lo, hi) in ranges {
            let hi = hi.min(largest);
            let mut next = lo;
            let start = self.view.partition_point(|e| e.uid < lo);
            for e in self.view[start..].iter().take_while(|e| e.uid <= hi) {
                if e.uid > next {
                    gaps.push((Bound::Num(next), Bound::Num(e.uid - 1)));
                }
                next = e.uid.saturating_add(1);
            }
            if next <= hi {
                gaps.push((Bound::Num(next), Bound::Num(hi)));
            }
        }
        SequenceSet(gaps)
    }
}

/// The \Recent messages a session shows, brought up to date with the
/// folder's `R` (`uidlist`): a read-write session takes those no session
/// has taken yet, as Dovecot does (the first to see a message owns its
/// \Recent, RFC 3501 §2.3.2); EXAMINE shows those not taken, taking none.
pub fn take_recent(
    folder: &Folder,
    read_only: bool,
    first_recent: u32,
    next_uid: u32,
    recent: &mut Vec<(u32, u32)>,
) {
    if read_only {
        *recent = vec![(first_recent, u32::MAX)];
        return;
    }
    if first_recent >= next_uid {
        return;
    }
    match folder.claim_recent(next_uid) {
        Ok(Some((first, next))) => match recent.last_mut() {
            Some(last) if last.1 == first => last.1 = next,
            _ => recent.push((first, next)),
        },
        Ok(None) => {}
        // No \Recent this time; the messages stay for the next session.
        Err(e) => tracing::warn!("\\Recent in {}: {e}", folder.path().display()),
    }
}

impl Session {
    /// Syncs the selected folder and reports changes made elsewhere.
    /// `expunge_ok`: whether EXPUNGE may be sent now (RFC 3501 §7.4.1);
    /// when not, vanished messages stay in the view until a later sync.
    /// Under NOTIFY, the new messages come with MessageNew's FETCH items.
    pub async fn report(&mut self, expunge_ok: bool) -> Result<(), NetError> {
        if let Some(notify) = self.notify.as_mut() {
            notify.selected_seen();
        }
        let Some(before) = self.selected.as_ref().map(|s| s.next_uid) else {
            return Ok(());
        };
        self.sync_view(expunge_ok).await?;
        self.announce_new(before).await
    }

    /// [`Session::report`] but for MessageNew's FETCH items.
    async fn sync_view(&mut self, expunge_ok: bool) -> Result<(), NetError> {
        let (condstore, qresync) = (self.condstore, self.qresync);
        if let Some(sel) = self.selected.as_ref()
            && let Some(indexed) = sel.unread.as_ref()
        {
            // Selected from the folder index and not read since (no
            // command ran): nothing to report while the folder's stamp
            // is still the index's, and then no need to read it.
            if sel.folder.stamp().unchanged_since(&indexed.header().stamp) {
                return Ok(());
            }
            self.materialize().await?;
        }
        let Some(sel) = self.selected.as_mut() else {
            return Ok(());
        };
        sel.reload_seen();
        let state = match sel.shared.sync(sel.force) {
            Ok(s) => s,
            Err(MailboxError::NoSuchMailbox) => {
                // Deleted or renamed by another session: nothing this one
                // holds can be acted on, and a NO would be retried for
                // ever. Dovecot ends the session the same way.
                tracing::info!("{} was deleted or renamed while selected", sel.name);
                self.conn
                    .write(b"* BYE Selected mailbox was deleted, have to disconnect.\r\n");
                self.conn.flush().await?;
                return Err(NetError::Closed);
            }
            Err(e) => {
                tracing::warn!("sync of {}: {e}", sel.name);
                return Ok(());
            }
        };
        sel.force = false;
        if std::ptr::eq(sel.synced.as_ptr(), Arc::as_ptr(&state.entries))
            && state.keywords == sel.keywords
            && !(expunge_ok && sel.held_back)
            && (sel.held_back || Arc::ptr_eq(&sel.view, &state.entries))
        {
            // The same entries as last time: nothing moved on disk. (A
            // view this session changed itself is merged all the same,
            // so that it goes back to the shared copy.)
            return Ok(());
        }
        if state.validity != sel.validity {
            // Renumbered under us (its UIDs ran out, or the folder was
            // recreated): no UID the client holds means anything now, and
            // RFC 9051 §2.3.1.1 forbids a change while it is selected.
            tracing::warn!("UIDVALIDITY of {} changed while selected", sel.name);
            self.conn
                .write(b"* BYE the mailbox was renumbered (new UIDVALIDITY), select it again\r\n");
            self.conn.flush().await?;
            return Err(NetError::Closed);
        }
        sel.synced = Arc::downgrade(&state.entries);
        let mut out = Vec::new();
        if state.keywords != sel.keywords {
            sel.keywords = state.keywords.clone();
            out.extend_from_slice(format!("* FLAGS {}\r\n", all_flags(&sel.keywords)).as_bytes());
            if !sel.read_only {
                out.extend_from_slice(
                    format!(
                        "* OK [PERMANENTFLAGS {}] flags\r\n",
                        crate::acl::permanent_flags(&sel.keywords, sel.rights)
                    )
                    .as_bytes(),
                );
            }
        }
        let old_view = sel.view.clone();
        let merged = merge(&sel.view, &state.entries, expunge_ok);
        sel.held_back = merged.held_back;
        let vanished: Vec<u32> = merged.expunged.iter().map(|&i| sel.view[i].uid).collect();
        let grew = merged.grew || !merged.expunged.is_empty();
        sel.view = merged.view;
        sel.next_uid = state.next_uid;
        let recent_before = sel.recent.clone();
        take_recent(
            &sel.folder,
            sel.read_only,
            state.first_recent,
            state.next_uid,
            &mut sel.recent,
        );
        if condstore {
            sel.update_modseqs();
        }
        let (removed_from, added_to) = crate::context::updates(sel, &old_view);
        out.extend_from_slice(&removed_from);
        if qresync {
            // RFC 7162 §3.2.10: UIDs, not sequence numbers, once enabled.
            if !vanished.is_empty() {
                let mut uids = vanished;
                uids.sort_unstable();
                out.extend_from_slice(
                    format!("* VANISHED {}\r\n", SequenceSet::of_sorted(&uids)).as_bytes(),
                );
            }
        } else {
            // From the highest sequence number down, so each number is
            // still right when the client applies it.
            for &i in merged.expunged.iter().rev() {
                out.extend_from_slice(format!("* {} EXPUNGE\r\n", i + 1).as_bytes());
            }
        }
        for &i in &merged.changed {
            let e = &sel.view[i];
            let modseq = if condstore {
                format!(" MODSEQ ({})", sel.modseq(e.uid))
            } else {
                String::new()
            };
            out.extend_from_slice(
                format!(
                    "* {} FETCH (UID {} FLAGS {}{modseq})\r\n",
                    i + 1,
                    e.uid,
                    sel.flags(e)
                )
                .as_bytes(),
            );
        }
        if grew {
            out.extend_from_slice(format!("* {} EXISTS\r\n", sel.view.len()).as_bytes());
        }
        if sel.report_recent && (grew || sel.recent != recent_before) {
            out.extend_from_slice(sel.recent_line().as_bytes());
        }
        out.extend_from_slice(&added_to);
        self.out(&out).await
    }

    #[allow(clippy::too_many_arguments)]
    pub async fn store(
        &mut self,
        uid: bool,
        set: &SequenceSet,
        mode: StoreMode,
        silent: bool,
        names: &[String],
        unchanged_since: Option<u64>,
    ) -> Result<Done, NetError> {
        let positions = match self.resolve(set, uid) {
            Ok(p) => p,
            Err(done) => return Ok(done),
        };
        let condstore = self.condstore;
        let Some(sel) = self.selected.as_mut() else {
            return Ok(Done::Bad("select a mailbox first".into()));
        };
        if sel.read_only {
            return Ok(Done::No(
                "[READ-ONLY] the mailbox is read-only (EXAMINE)".into(),
            ));
        }
        let needed = crate::acl::rights_for_flags(names);
        if !sel.rights.has(needed) {
            return Ok(Done::No(format!(
                "[NOPERM] you lack the right(s) {} on this mailbox to change these flags",
                needed.without(sel.rights)
            )));
        }
        let (given, keywords) = match flags_from_names(&sel.folder, names) {
            Ok(f) => f,
            Err(done) => return Ok(done),
        };
        let mut out = Vec::new();
        if let Some(keywords) = keywords
            && keywords != sel.keywords
        {
            sel.keywords = keywords;
            out.extend_from_slice(format!("* FLAGS {}\r\n", all_flags(&sel.keywords)).as_bytes());
            out.extend_from_slice(
                format!(
                    "* OK [PERMANENTFLAGS {}] flags\r\n",
                    crate::acl::permanent_flags(&sel.keywords, sel.rights)
                )
                .as_bytes(),
            );
        }
        if unchanged_since.is_some() {
            // Compare against what is on disk now, not at the last sync.
            sel.update_modseqs();
        }
        let mut modified = Vec::new();
        let mut todo = Vec::with_capacity(positions.len());
        for i in positions {
            let uid_of = sel.view[i].uid;
            if let Some(since) = unchanged_since
                && sel.modseq(uid_of) > since
            {
                modified.push(if uid { uid_of } else { i as u32 + 1 });
                continue;
            }
            todo.push(i);
        }
        let rights = sel.rights;
        let change = |old: Flags| {
            let new = match mode {
                StoreMode::Replace => Flags {
                    system: given.system,
                    keywords: given.keywords,
                },
                StoreMode::Add => Flags {
                    system: old.system | given.system,
                    keywords: old.keywords | given.keywords,
                },
                StoreMode::Remove => Flags {
                    system: old.system & !given.system,
                    keywords: old.keywords & !given.keywords,
                },
            };
            crate::acl::limit_change(old, new, rights)
        };
        // One pass over the files, from the flags on disk (another session
        // may have changed them since our last sync); a reader of a shared
        // folder's own \Seen in one rewrite of their file (acl.rs).
        let entries: Vec<Entry> = todo.iter().map(|&i| sel.view[i].clone()).collect();
        let changed = match sel.change_flags(&entries, &change) {
            Ok(c) => c,
            Err(e) => return Ok(e.into()),
        };
        let mut stored = Vec::with_capacity(todo.len());
        if changed.iter().any(Option::is_some) {
            // The view becomes this session's own (copied once) until
            // the sync after the command finds the folder agreeing again.
            let view = Arc::make_mut(&mut sel.view);
            for (i, updated) in todo.into_iter().zip(changed) {
                // Expunged by another session: nothing to store, and no
                // failure either (the EXPUNGE follows when it may).
                if let Some(updated) = updated {
                    view[i] = updated;
                    stored.push(i);
                }
            }
        }
        if condstore {
            sel.update_modseqs();
        }
        for i in stored {
            let e = &sel.view[i];
            let mut items = Vec::new();
            if uid {
                items.push(format!("UID {}", e.uid));
            }
            if !silent {
                items.push(format!("FLAGS {}", sel.flags(e)));
            }
            // With CONDSTORE the client learns each new mod-sequence, even
            // from a .SILENT store (RFC 7162 §3.1.3).
            if condstore {
                items.push(format!("MODSEQ ({})", sel.modseq(e.uid)));
            }
            if !silent || condstore {
                out.extend_from_slice(
                    format!("* {} FETCH ({})\r\n", i + 1, items.join(" ")).as_bytes(),
                );
            }
        }
        self.out(&out).await?;
        // Our own renames are reported already; do not report them again.
        if let Some(sel) = self.selected.as_mut() {
            sel.force = true;
        }
        Ok(if !modified.is_empty() {
            Done::Ok(format!(
                "[MODIFIED {}] conditional STORE failed for these",
                SequenceSet::of_sorted(&modified)
            ))
        } else {
            Done::Ok("STORE completed".into())
        })
    }

    pub async fn expunge(&mut self, uids: Option<&SequenceSet>) -> Result<Done, NetError> {
        let only = match uids {
            Some(set) => match self.resolve(set, true) {
                Ok(p) => Some(p),
                Err(done) => return Ok(done),
            },
            None => None,
        };
        let Some(sel) = self.selected.as_mut() else {
            return Ok(Done::Bad("select a mailbox first".into()));
        };
        if sel.read_only {
            return Ok(Done::No(
                "[READ-ONLY] the mailbox is read-only (EXAMINE)".into(),
            ));
        }
        if !sel.rights.has(Rights::EXPUNGE) {
            return Ok(Done::No(
                "[NOPERM] you lack the right e (expunge) on this mailbox".into(),
            ));
        }
        let candidates: Vec<&Entry> = match only {
            Some(positions) => positions.into_iter().map(|i| &sel.view[i]).collect(),
            None => sel.view.iter().collect(),
        };
        // \Deleted as it is on disk now (another session may have set it).
        let mut doomed = Vec::new();
        for entry in candidates {
            if let Ok(Some(e)) = sel.folder.refresh(entry)
                && e.flags().has(flags::DELETED)
            {
                doomed.push(e);
            }
        }
        if let Err(e) = sel.folder.expunge(&doomed) {
            return Ok(e.into());
        }
        // The EXPUNGE responses come from the sync after the command.
        sel.force = true;
        Ok(Done::Ok("EXPUNGE completed".into()))
    }

    pub async fn copy(
        &mut self,
        uid: bool,
        set: &SequenceSet,
        wire: &str,
        remove: bool,
    ) -> Result<Done, NetError> {
        let positions = match self.resolve(set, uid) {
            Ok(p) => p,
            Err(done) => return Ok(done),
        };
        let target = match self.target(wire) {
            Ok(t) => t,
            Err(done) => return Ok(done),
        };
        if let Err(done) = target.need(Rights::INSERT) {
            return Ok(done);
        }
        let Some(sel) = self.selected.as_mut() else {
            return Ok(Done::Bad("select a mailbox first".into()));
        };
        if remove && sel.read_only {
            return Ok(Done::No(
                "[READ-ONLY] the mailbox is read-only (EXAMINE)".into(),
            ));
        }
        // MOVE takes the messages away: t and e on the source (RFC 6851 §3.3).
        if remove
            && !sel
                .rights
                .has(Rights::DELETE_MESSAGES.with(Rights::EXPUNGE))
        {
            return Ok(Done::No(
                "[NOPERM] MOVE needs the rights t and e on this mailbox; COPY instead".into(),
            ));
        }
        let dest = target.folder();
        if !dest.exists() {
            return Ok(Done::No("[TRYCREATE] no such mailbox".into()));
        }
        let what = if remove { "MOVE" } else { "COPY" };
        if positions.is_empty() {
            return Ok(Done::Ok(format!("{what} completed (nothing to do)")));
        }
        let entries: Vec<Entry> = positions.iter().map(|&i| sel.view[i].clone()).collect();
        // All or none, as Dovecot does: a message of the set another
        // session expunged fails the command and nothing is copied or
        // moved (RFC 9051 §6.4.7 keeps a failed COPY from changing the
        // destination). The EXPUNGE follows at the first command that
        // may send it (at once after a UID COPY/MOVE).
        // Into another owner's tree (a shared or public folder): their
        // quota, and only the flags the user's rights there allow.
        // In another owner's tree the user's \Seen is their own (kept in
        // their file, as APPEND does), never the owner's.
        let private = !target.is_personal();
        let seen_here: std::collections::HashSet<u32> =
            if private && target.rights.has(Rights::SEEN) {
                entries
                    .iter()
                    .filter(|e| sel.flags_of(e).has(flags::SEEN))
                    .map(|e| e.uid)
                    .collect()
            } else {
                Default::default()
            };
        let transferred = {
            let rights = target.rights;
            let allowed = move |f: Flags| {
                let mut f = crate::acl::limit_change(Flags::default(), f, rights);
                if private {
                    f.system &= !flags::SEEN;
                }
                f
            };
            let admission = Admission {
                quota: target.quota,
                flags: (rights != Rights::ALL || private)
                    .then_some(&allowed as &dyn Fn(Flags) -> Flags),
            };
            sel.folder
                .transfer_under(&entries, &dest, remove, true, &admission)
        };
        let (validity, pairs) = match transferred {
            Ok(r) => r,
            Err(e) => return Ok(e.into()),
        };
        sel.force = true;
        if pairs.is_empty() {
            return Ok(Done::No(format!(
                "[EXPUNGEISSUED] some of the messages were expunged meanwhile, \
                 nothing was {}; NOOP reports them, then {what} the rest",
                if remove { "moved" } else { "copied" }
            )));
        }
        let seen_there: Vec<u32> = pairs
            .iter()
            .filter(|(s, _)| seen_here.contains(s))
            .map(|(_, d)| *d)
            .collect();
        if !seen_there.is_empty()
            && let Some(own) = self.seen_for(&target, validity)
            && let Err(e) = own.set(&seen_there, true)
        {
            tracing::warn!("private \\Seen of {wire}: {e}");
        }
        let src: Vec<String> = pairs.iter().map(|(s, _)| s.to_string()).collect();
        let dst: Vec<String> = pairs.iter().map(|(_, d)| d.to_string()).collect();
        let code = format!("COPYUID {validity} {} {}", src.join(","), dst.join(","));
        if remove {
            // RFC 6851: COPYUID untagged, then the EXPUNGEs, then OK.
            self.out(format!("* OK [{code}] moved\r\n").as_bytes())
                .await?;
            return Ok(Done::Ok(format!("{what} completed")));
        }
        Ok(Done::Ok(format!("[{code}] {what} completed")))
    }

    /// IDLE (RFC 2177): report changes as they happen until DONE.
    pub async fn idle(&mut self) -> Result<Done, NetError> {
        self.conn.write(b"+ idling\r\n");
        if self.notify.is_some() {
            // RFC 5465 §4: IDLE then sends what NOTIFY asked for, no more.
            let line = self.next_line(self.shared.config.imap.line_length).await?;
            return Ok(idle_done(&line));
        }
        let mut watch = match (self.shared.watcher(), &self.selected) {
            (Some(w), Some(sel)) => w.watch(sel.folder.path()).ok(),
            _ => None,
        };
        let max = self.shared.config.imap.line_length;
        let poll = match self.selected.as_ref() {
            Some(sel) => postroom::store::watch::other_hosts_poll(sel.folder.path()),
            None => IDLE_RESYNC,
        };
        // The client has `imap.idle_timeout` to say DONE, counted from the
        // start (RFC 9051 §6.3.13: clients IDLE again within 29 minutes):
        // each wakeup starts a new read, whose own timeout would begin
        // again and keep a silent client forever.
        let deadline = tokio::time::Instant::now() + self.shared.config.imap.idle_timeout;
        loop {
            if let Some(w) = watch.as_mut() {
                w.mark_seen();
            }
            self.report(true).await?;
            self.conn.flush().await?;
            let now = tokio::time::Instant::now();
            if now >= deadline {
                self.conn.write(b"* BYE idle too long, closing\r\n");
                self.conn.flush().await?;
                return Err(NetError::Timeout);
            }
            let line = tokio::select! {
                line = self.conn.read_line(max) => line?,
                _ = async {
                    match watch.as_mut() {
                        Some(w) => w.changed().await,
                        None => std::future::pending().await,
                    }
                } => continue,
                _ = tokio::time::sleep(poll.min(deadline - now)) => continue,
            };
            return Ok(idle_done(&line));
        }
    }
}

/// How IDLE ends: the client's DONE, or anything else.
fn idle_done(line: &[u8]) -> Done {
    if String::from_utf8_lossy(line)
        .trim()
        .eq_ignore_ascii_case("DONE")
    {
        Done::Ok("IDLE terminated".into())
    } else {
        Done::Bad("expected DONE".into())
    }
}

/// A view brought up to date with a sync ([`merge`]).
struct Merged {
    view: Entries,
    /// Positions in the old view of the messages gone (ascending).
    expunged: Vec<usize>,
    /// Positions in the new view of messages whose flags changed.
    changed: Vec<usize>,
    /// Messages are gone that could not be reported now (kept in view).
    held_back: bool,
    /// Messages were added at the end.
    grew: bool,
}

/// Merges the old view with the folder's entries (both ascend by UID).
/// When the result is the folder's entries as they are, which is the
/// rule, the view becomes those, shared; only a view that must differ
/// (an EXPUNGE held back) is a copy of the session's own.
fn merge(old: &[Entry], fresh: &Entries, expunge_ok: bool) -> Merged {
    let mut expunged = Vec::new();
    let mut changed = Vec::new();
    let mut held_back = false;
    // The view when it must differ from `fresh`. Until it must, what is
    // kept is exactly `fresh[..j]`, so that is where a copy starts.
    let mut own: Option<Vec<Entry>> = None;
    let mut kept = 0;
    let mut j = 0;
    for (i, entry) in old.iter().enumerate() {
        while fresh.get(j).is_some_and(|f| f.uid < entry.uid) {
            // In the folder, older than this entry, yet not in the view:
            // only possible if the view was built before a rewrite. It
            // cannot be shown without breaking UID order; skip it.
            own.get_or_insert_with(|| fresh[..j].to_vec());
            j += 1;
        }
        match fresh.get(j) {
            Some(f) if f.uid == entry.uid => {
                if f.info != entry.info {
                    changed.push(kept);
                }
                if let Some(own) = own.as_mut() {
                    own.push(f.clone());
                }
                kept += 1;
                j += 1;
            }
            _ if expunge_ok => expunged.push(i),
            // Gone, but not reportable now: keep it as it was, and
            // remember to report it at the first command that may.
            _ => {
                held_back = true;
                own.get_or_insert_with(|| fresh[..j].to_vec())
                    .push(entry.clone());
                kept += 1;
            }
        }
    }
    let grew = j < fresh.len();
    let view = match own {
        Some(mut own) => {
            own.extend_from_slice(&fresh[j..]);
            Arc::new(own)
        }
        None => fresh.clone(),
    };
    Merged {
        view,
        expunged,
        changed,
        held_back,
        grew,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn e(uid: u32, info: &str) -> Entry {
        Entry {
            uid,
            base: format!("m{uid}").into(),
            info: info.into(),
        }
    }

    #[test]
    fn a_view_that_agrees_with_the_folder_is_the_folders_shared_copy() {
        let old = vec![e(1, ""), e(2, ""), e(3, "S")];
        // Unchanged, a flag changed, one expunged, one added: shared.
        let fresh: Entries = Arc::new(vec![e(1, "S"), e(3, "S"), e(4, "")]);
        let m = merge(&old, &fresh, true);
        assert!(Arc::ptr_eq(&m.view, &fresh));
        assert_eq!((m.expunged, m.changed), (vec![1], vec![0]));
        assert!(m.grew && !m.held_back);
        let same = merge(&fresh, &fresh, false);
        assert!(Arc::ptr_eq(&same.view, &fresh) && !same.grew);
        assert!(same.changed.is_empty() && same.expunged.is_empty());
    }

    #[test]
    fn a_held_back_expunge_makes_the_view_a_copy_of_its_own_until_sent() {
        let old = vec![e(1, ""), e(2, ""), e(3, "")];
        let fresh: Entries = Arc::new(vec![e(1, ""), e(3, "F"), e(4, "")]);
        let m = merge(&old, &fresh, false);
        assert!(!Arc::ptr_eq(&m.view, &fresh));
        let uids: Vec<u32> = m.view.iter().map(|x| x.uid).collect();
        assert_eq!(uids, vec![1, 2, 3, 4]);
        assert_eq!(m.changed, vec![2], "position of UID 3 in the new view");
        assert!(m.held_back && m.grew && m.expunged.is_empty());
        // The next command that may report it: shared again.
        let later = merge(&m.view, &fresh, true);
        assert!(Arc::ptr_eq(&later.view, &fresh));
        assert_eq!(later.expunged, vec![1]);
        // An entry the view never showed, older than one it shows, is
        // left out (it cannot be shown in UID order).
        let odd: Entries = Arc::new(vec![e(1, ""), e(2, ""), e(3, "")]);
        let m = merge(&[e(1, ""), e(3, "")], &odd, true);
        let uids: Vec<u32> = m.view.iter().map(|x| x.uid).collect();
        assert_eq!(uids, vec![1, 3]);
    }
}
