//! NOTIFY (RFC 5465): the mailboxes a session watches, and what it tells
//! the client about them between commands, without being asked.
//!
//! While a NOTIFY SET is in force the session waits on the client's next
//! line and on the watched places at once ([`Session::next_line`]): the
//! selected folder is synced and reported as after a command (EXPUNGE held
//! back for SELECTED-DELAYED), other folders as `* STATUS` when their
//! figures moved, and the user's folder list and subscriptions as
//! `* LIST` (MailboxName, SubscriptionChange). The watches are the
//! process's inotify ones (`store::watch`), so a session costs no file
//! descriptor of its own; other hosts' changes are seen on the same timer
//! as IDLE's, which compares the folder list and the subscriptions file
//! themselves (no directory time is trusted on NFS).
//!
//! Which folders get STATUS is worked out at NOTIFY SET and again each
//! time the folder list changes, so a folder made later under PERSONAL or
//! a SUBTREE is watched from then on. Shared folders count only with the
//! rights `l` and `r` (RFC 5465 §5), checked again before each STATUS is
//! sent; MailboxName and SubscriptionChange are about the user's own
//! folders (the personal namespace).

use std::collections::{BTreeMap, BTreeSet};
use std::future::Future;
use std::path::PathBuf;
use std::pin::Pin;
use std::sync::Arc;
use std::task::Poll;
use std::time::Duration;

use postroom::net::NetError;
use postroom::proto::imap::command::{
    Bound, Event, FetchItem, Filter, NotifySet, SequenceSet, StatusItem,
};
use postroom::store::mailbox::acl::Rights;
use postroom::store::mailbox::shared::SharedFolder;
use postroom::store::mailbox::{Mailbox, MailboxName};
use postroom::store::watch::{FolderWatch, Watcher, other_hosts_poll};

use crate::session::{Done, Session};

/// The events sent; any other asked for gets NO [BADEVENT (these)].
const SUPPORTED: &[&str] = &[
    "MessageNew",
    "MessageExpunge",
    "FlagChange",
    "MailboxName",
    "SubscriptionChange",
];
/// Most folders one NOTIFY SET watches (two inotify watches each; the
/// kernel's default allows 8192 per user, shared by every session).
pub const WATCHED_MAX: usize = 500;
/// Without a selected folder or any watched one, how often to look again.
const RESYNC: Duration = Duration::from_secs(60);
/// A folder directory seen before it is a folder (CREATE makes the
/// directory, then its `cur/`, `new/` and `tmp/`, which the watch on the
/// mailbox's root does not see): looked at again this soon...
const UNFINISHED_RECHECK: Duration = Duration::from_millis(100);
/// ...this many times, then left to the timer (a directory that never
/// becomes a folder must not keep the session polling).
const UNFINISHED_LOOKS: u8 = 20;

/// A session's NOTIFY SET.
pub struct Notify {
    /// As the client gave it: worked out again when the folders change.
    set: NotifySet,
    /// The selected folder's events; `None` for SELECTED NONE or none
    /// given (RFC 5465 §3.1: nothing between commands about it then).
    selected: Option<SelectedEvents>,
    /// The selected folder followed (its path), and the watch on it
    /// (none without inotify: then the timer).
    selected_watch: Option<(PathBuf, Option<FolderWatch>)>,
    /// That watch fired since the selected folder was last synced.
    selected_dirty: bool,
    others: Vec<Watched>,
    /// MailboxName and SubscriptionChange, when asked for.
    names: Option<Names>,
    /// How often to look again on its own (other hosts' changes).
    poll: Duration,
}

/// The user's folders and subscriptions as last told the client, for
/// MailboxName and SubscriptionChange (RFC 5465 §5.4, §5.5).
struct Names {
    /// The filters of the groups asking for MailboxName...
    mailbox_name: Vec<Filter>,
    /// ...and for SubscriptionChange.
    subscription: Vec<Filter>,
    mailbox: Mailbox,
    /// The watch on the mailbox's root (its `.Name` directories and
    /// subscriptions file).
    watch: Option<FolderWatch>,
    dirty: bool,
    /// Each folder's directory inode, which a RENAME keeps.
    folders: BTreeMap<MailboxName, u64>,
    subscribed: BTreeSet<MailboxName>,
    /// A folder directory is being made: how many quick looks are left
    /// ([`UNFINISHED_LOOKS`]; 0 once they ran out, until it is done).
    unfinished: Option<u8>,
}

struct SelectedEvents {
    /// SELECTED-DELAYED: EXPUNGE only at a command that may send it.
    delayed: bool,
    /// MessageNew's FETCH items, sent after EXISTS for each new message.
    fetch: Vec<FetchItem>,
}

/// A folder other than the selected one, watched for STATUS.
struct Watched {
    name: MailboxName,
    path: PathBuf,
    /// The process's shared state of the folder, kept while watched: an
    /// unchanged folder is not read again for its STATUS.
    _shared: Arc<SharedFolder>,
    items: Vec<StatusItem>,
    /// The STATUS last sent (or known at NOTIFY SET): one that reads the
    /// same is not sent again.
    last: Option<String>,
    watch: Option<FolderWatch>,
    /// Its watch fired since the last look.
    dirty: bool,
}

impl Notify {
    /// Waits until a watched folder changes; marks which.
    async fn changed(&mut self) {
        let ready: Vec<usize> = {
            type Waiting<'a> = Pin<Box<dyn Future<Output = ()> + Send + 'a>>;
            let mut waiting: Vec<(usize, Waiting<'_>)> = Vec::new();
            if let Some((_, Some(w))) = self.selected_watch.as_mut() {
                waiting.push((SELECTED, Box::pin(w.changed())));
            }
            if let Some(w) = self.names.as_mut().and_then(|n| n.watch.as_mut()) {
                waiting.push((NAMES, Box::pin(w.changed())));
            }
            for (i, other) in self.others.iter_mut().enumerate() {
                if let Some(w) = other.watch.as_mut() {
                    waiting.push((i, Box::pin(w.changed())));
                }
            }
            if waiting.is_empty() {
                return std::future::pending().await;
            }
            // Every one is polled each time, so that all the changes of
            // one wakeup are taken together.
            std::future::poll_fn(|cx| {
                let ready: Vec<usize> = waiting
                    .iter_mut()
                    .filter_map(|(i, f)| f.as_mut().poll(cx).is_ready().then_some(*i))
                    .collect();
                if ready.is_empty() {
                    Poll::Pending
                } else {
                    Poll::Ready(ready)
                }
            })
            .await
        };
        for i in ready {
            match i {
                SELECTED => self.selected_dirty = true,
                NAMES => {
                    if let Some(names) = self.names.as_mut() {
                        names.dirty = true;
                    }
                }
                i => {
                    if let Some(other) = self.others.get_mut(i) {
                        other.dirty = true;
                    }
                }
            }
        }
    }

    /// The selected folder is about to be synced (after a command): what
    /// its watch saw so far is in that sync.
    pub fn selected_seen(&mut self) {
        if let Some((_, Some(w))) = self.selected_watch.as_mut() {
            w.mark_seen();
        }
        self.selected_dirty = false;
    }
}

/// [`Notify::changed`]'s marks for the selected folder's watch and the
/// folder list's, beside the other folders' indices.
const SELECTED: usize = usize::MAX;
const NAMES: usize = usize::MAX - 1;

impl Names {
    fn new(set: &NotifySet, mailbox: Mailbox, watcher: Option<&Watcher>) -> Option<Names> {
        let asking = |event: Event| -> Vec<Filter> {
            set.groups
                .iter()
                .filter(|g| g.events.contains(&event))
                .map(|g| g.filter.clone())
                .collect()
        };
        let (mailbox_name, subscription) = (
            asking(Event::MailboxName),
            asking(Event::SubscriptionChange),
        );
        if mailbox_name.is_empty() && subscription.is_empty() {
            return None;
        }
        let mut names = Names {
            mailbox_name,
            subscription,
            watch: watcher.and_then(|w| w.watch_tree(mailbox.root()).ok()),
            mailbox,
            dirty: false,
            folders: BTreeMap::new(),
            subscribed: BTreeSet::new(),
            unfinished: None,
        };
        // What the client is told changes against.
        let (folders, subscribed, _) = names.look();
        (names.folders, names.subscribed) = (folders, subscribed);
        Some(names)
    }

    /// The folders and subscriptions now, and whether a folder directory
    /// is still being made. A look that fails finds what was known (told
    /// as no change; the next look tries again).
    fn look(&self) -> (BTreeMap<MailboxName, u64>, BTreeSet<MailboxName>, bool) {
        let (folders, unfinished) = match self.mailbox.scan() {
            Ok(scanned) => {
                let unfinished = scanned.iter().any(|f| !f.complete);
                let folders = scanned
                    .into_iter()
                    .filter(|f| f.complete)
                    .map(|f| (f.name, f.inode))
                    .collect();
                (folders, unfinished)
            }
            Err(e) => {
                tracing::warn!("folders of {}: {e}", self.mailbox.root().display());
                (self.folders.clone(), false)
            }
        };
        let subscribed = match self.mailbox.subscriptions() {
            Ok(s) => s.into_iter().collect(),
            Err(e) => {
                tracing::warn!("subscriptions of {}: {e}", self.mailbox.root().display());
                self.subscribed.clone()
            }
        };
        (folders, subscribed, unfinished)
    }
}

/// Whether a group's filter takes in `name`, one of the user's own
/// folders; `subscribed`: the subscriptions before and after the change.
fn takes_in(
    session: &Session,
    filter: &Filter,
    name: &MailboxName,
    subscribed: &[&BTreeSet<MailboxName>],
) -> bool {
    let named = |wires: &[String]| -> Vec<MailboxName> {
        wires.iter().filter_map(|w| session.name(w).ok()).collect()
    };
    match filter {
        Filter::Personal => true,
        Filter::Inboxes => name.is_inbox(),
        Filter::Subscribed => subscribed.iter().any(|s| s.contains(name)),
        Filter::Mailboxes(wires) => named(wires).contains(name),
        Filter::Subtree(wires) => named(wires).iter().any(|root| name.is_within(root)),
        Filter::Selected | Filter::SelectedDelayed => false,
    }
}

impl Session {
    /// NOTIFY NONE, or NOTIFY SET: checks the events, works out the
    /// folders, sends their STATUS for `SET STATUS`.
    pub async fn notify(&mut self, set: Option<NotifySet>) -> Result<Done, NetError> {
        let Some(set) = set else {
            self.notify = None;
            return Ok(Done::Ok("NOTIFY completed, no events".into()));
        };
        let events = set.groups.iter().flat_map(|g| &g.events);
        if let Some(unsupported) = events.map(Event::name).find(|e| !SUPPORTED.contains(e)) {
            // Nothing changes: the NOTIFY in force stays (RFC 5465 §3.1).
            return Ok(Done::No(format!(
                "[BADEVENT ({})] {unsupported} is not supported",
                SUPPORTED.join(" ")
            )));
        }
        let selected = set
            .groups
            .iter()
            .find(|g| g.filter.is_selected() && !g.events.is_empty())
            .map(|g| SelectedEvents {
                delayed: g.filter == Filter::SelectedDelayed,
                fetch: g
                    .events
                    .iter()
                    .find_map(|e| match e {
                        Event::MessageNew(items) => Some(items.clone()),
                        _ => None,
                    })
                    .unwrap_or_default(),
            });
        let others = match self.watched_folders(&set) {
            Ok(o) => o,
            Err(done) => return Ok(done),
        };
        let mailbox = match self.mailbox() {
            Ok(m) => m,
            Err(done) => return Ok(done),
        };
        let names = Names::new(&set, mailbox.clone(), self.shared.watcher());
        let poll = others
            .first()
            .map(|o| o.path.as_path())
            .or(self.selected.as_ref().map(|s| s.folder.path()))
            .or(names.as_ref().map(|_| mailbox.root()))
            .map_or(RESYNC, other_hosts_poll);
        let mut notify = Notify {
            set,
            selected,
            selected_watch: None,
            selected_dirty: false,
            others,
            names,
            poll,
        };
        // What the client has now: a STATUS to send for SET STATUS, and
        // the figures later changes are told against.
        let selected_path = self
            .selected
            .as_ref()
            .map(|s| s.folder.path().to_path_buf());
        let mut out = Vec::new();
        for other in &mut notify.others {
            other.last = self.watched_status(other);
            if notify.set.status
                && selected_path.as_ref() != Some(&other.path)
                && let Some(line) = &other.last
            {
                out.extend_from_slice(line.as_bytes());
            }
        }
        self.notify = Some(notify);
        self.out(&out).await?;
        Ok(Done::Ok("NOTIFY completed".into()))
    }

    /// The folders the groups other than SELECTED name, each once (the
    /// first group naming a folder says what is sent about it), with the
    /// rights `l` and `r`; others are ignored, as RFC 5465 §6 asks.
    fn watched_folders(&self, set: &NotifySet) -> Result<Vec<Watched>, Done> {
        let mailbox = self.mailbox()?;
        let personal = mailbox.list().map_err(Done::from)?;
        let mut all: Vec<MailboxName> = personal.clone();
        let mut shared_listed = false;
        let mut seen = BTreeSet::new();
        let mut out = Vec::new();
        let watcher = self.shared.watcher();
        for group in set.groups.iter().filter(|g| !g.filter.is_selected()) {
            let names: Vec<MailboxName> = match &group.filter {
                Filter::Inboxes => personal.iter().filter(|n| n.is_inbox()).cloned().collect(),
                Filter::Personal => personal.clone(),
                Filter::Subscribed => mailbox.subscriptions().map_err(Done::from)?,
                Filter::Mailboxes(wires) => {
                    wires.iter().filter_map(|w| self.name(w).ok()).collect()
                }
                Filter::Subtree(wires) => {
                    if !shared_listed {
                        all.extend(self.other_folders().into_iter().map(|(n, _)| n));
                        shared_listed = true;
                    }
                    let roots: Vec<MailboxName> =
                        wires.iter().filter_map(|w| self.name(w).ok()).collect();
                    all.iter()
                        .filter(|n| roots.iter().any(|r| n.is_within(r)))
                        .cloned()
                        .collect()
                }
                Filter::Selected | Filter::SelectedDelayed => continue,
            };
            let flags = group.events.contains(&Event::FlagChange);
            // MailboxName and SubscriptionChange alone ask for no STATUS.
            let messages = group.events.iter().any(Event::is_message_event);
            for name in names {
                if !seen.insert(name.clone()) || !messages {
                    continue;
                }
                let Ok(target) = self.target_of(&name) else {
                    continue;
                };
                let folder = target.folder();
                if !target.rights.has(Rights::LOOKUP.with(Rights::READ)) || !folder.exists() {
                    continue;
                }
                if out.len() == WATCHED_MAX {
                    return Err(Done::No(format!(
                        "[NOTIFICATIONOVERFLOW] more than {WATCHED_MAX} mailboxes; \
                         name fewer (MAILBOXES or SUBTREE)"
                    )));
                }
                let mut items = vec![
                    StatusItem::Messages,
                    StatusItem::UidNext,
                    StatusItem::UidValidity,
                ];
                if flags {
                    items.push(StatusItem::Unseen);
                }
                // RFC 5465 §5.2, §5.3: with CONDSTORE, HIGHESTMODSEQ too.
                if self.condstore {
                    items.push(StatusItem::HighestModSeq);
                }
                let path = folder.path().to_path_buf();
                out.push(Watched {
                    watch: watcher.and_then(|w| w.watch(&path).ok()),
                    _shared: self.shared.folders.held(folder),
                    name,
                    path,
                    items,
                    last: None,
                    dirty: false,
                });
            }
        }
        Ok(out)
    }

    /// The folder's STATUS now, if the user may still read it.
    fn watched_status(&self, other: &Watched) -> Option<String> {
        let target = self.target_of(&other.name).ok()?;
        if !target.rights.has(Rights::LOOKUP.with(Rights::READ)) {
            return None;
        }
        self.status_line(&other.name, &target, &other.items)
    }

    /// The LIST lines for what changed in the user's folders and
    /// subscriptions since last told, as far as the groups asking for
    /// MailboxName and SubscriptionChange take the names in; and, when
    /// the folder list changed (so the STATUS watches are worked out
    /// again), the names deleted and made again since the last look.
    fn name_changes(&mut self) -> (Vec<u8>, Option<BTreeSet<MailboxName>>) {
        let Some(mut names) = self.notify.as_mut().and_then(|n| n.names.take()) else {
            return (Vec::new(), None);
        };
        let (folders, subscribed, unfinished) = names.look();
        names.dirty = false;
        names.unfinished = match (unfinished, names.unfinished) {
            (false, _) => None,
            (true, None) => Some(UNFINISHED_LOOKS),
            (true, Some(n)) => Some(n.saturating_sub(1)),
        };
        let mut out = Vec::new();
        let both = [&names.subscribed, &subscribed];
        let wants = |filters: &[Filter], name: &MailboxName| {
            filters.iter().any(|f| takes_in(self, f, name, &both))
        };
        let list =
            |out: &mut Vec<u8>, attrs: &[&str], name: &MailboxName, old: Option<&MailboxName>| {
                out.extend_from_slice(format!("* LIST ({}) \".\" ", attrs.join(" ")).as_bytes());
                out.extend_from_slice(&self.wire_name(name));
                if let Some(old) = old {
                    // RFC 5465 §5.4, RFC 5258 §3.9 (OLDNAME as RFC 9051 has it).
                    out.extend_from_slice(b" (\"OLDNAME\" (");
                    out.extend_from_slice(&self.wire_name(old));
                    out.extend_from_slice(b"))");
                }
                out.extend_from_slice(b"\r\n");
            };
        let folders_changed = folders != names.folders;
        // Folders made again under a name they had (deleted and created
        // between two looks): their old watches went with the old ones.
        let mut remade = BTreeSet::new();
        if folders_changed {
            // What left or came, a name with its directory: a RENAME moves
            // a directory (each child too), which keeps its inode.
            let is_in = |map: &BTreeMap<MailboxName, u64>, (n, i): (&MailboxName, &u64)| {
                map.get(n) == Some(i)
            };
            let gone: Vec<(&MailboxName, u64)> = names
                .folders
                .iter()
                .filter(|f| !is_in(&folders, *f))
                .map(|(n, i)| (n, *i))
                .collect();
            let came: Vec<(&MailboxName, Option<&MailboxName>)> = folders
                .iter()
                .filter(|f| !is_in(&names.folders, *f))
                .map(|(n, i)| (n, gone.iter().find(|(_, g)| g == i).map(|(o, _)| *o)))
                .collect();
            // Deletions first: a name deleted and made again is told in
            // that order.
            for (name, _) in &gone {
                let renamed = came.iter().any(|(_, old)| *old == Some(*name));
                if folders.contains_key(*name) {
                    remade.insert((*name).clone());
                }
                if !renamed && wants(&names.mailbox_name, name) {
                    list(&mut out, &["\\NonExistent"], name, None);
                }
            }
            for (name, old) in came {
                if wants(&names.mailbox_name, name)
                    || old.is_some_and(|o| wants(&names.mailbox_name, o))
                {
                    let attrs: &[&str] = if subscribed.contains(name) {
                        &["\\Subscribed"]
                    } else {
                        &[]
                    };
                    list(&mut out, attrs, name, old);
                }
            }
        }
        if subscribed != names.subscribed {
            for name in subscribed.symmetric_difference(&names.subscribed) {
                if !wants(&names.subscription, name) {
                    continue;
                }
                let mut attrs = Vec::new();
                if subscribed.contains(name) {
                    attrs.push("\\Subscribed");
                }
                if !folders.contains_key(name) {
                    attrs.push("\\NonExistent");
                }
                list(&mut out, &attrs, name, None);
            }
        }
        (names.folders, names.subscribed) = (folders, subscribed);
        if let Some(notify) = self.notify.as_mut() {
            notify.names = Some(names);
        }
        (out, folders_changed.then_some(remade))
    }

    /// The folders watched for STATUS worked out again (the folder list
    /// changed): those still watched keep what was last told of them and
    /// their watch, but for those `remade` (whose directories, and so
    /// watches, are new); a new one is told from now on.
    fn rewatch(&mut self, remade: &BTreeSet<MailboxName>) {
        let Some(set) = self.notify.as_ref().map(|n| n.set.clone()) else {
            return;
        };
        let Ok(mut fresh) = self.watched_folders(&set) else {
            return;
        };
        let Some(notify) = self.notify.as_mut() else {
            return;
        };
        let mut old: BTreeMap<PathBuf, Watched> = std::mem::take(&mut notify.others)
            .into_iter()
            .map(|w| (w.path.clone(), w))
            .collect();
        let mut new_ones = Vec::new();
        for (i, w) in fresh.iter_mut().enumerate() {
            match old.remove(&w.path) {
                Some(kept) if !remade.contains(&kept.name) => *w = kept,
                _ => new_ones.push(i),
            }
        }
        for i in new_ones {
            if let Some(w) = fresh.get(i) {
                let last = self.watched_status(w);
                if let Some(w) = fresh.get_mut(i) {
                    w.last = last;
                }
            }
        }
        if let Some(notify) = self.notify.as_mut() {
            notify.others = fresh;
        }
    }

    /// The client's next line; while NOTIFY is set, what changed in the
    /// watched folders is sent while waiting for it.
    ///
    /// The client has `imap.idle_timeout` to send it, counted from the
    /// start: each wakeup starts a new read, whose own timeout would
    /// otherwise begin again and keep a silent client forever.
    pub async fn next_line(&mut self, max: usize) -> Result<Vec<u8>, NetError> {
        let deadline = tokio::time::Instant::now() + self.shared.config.imap.idle_timeout;
        let mut all = false;
        loop {
            // A client that has already sent more is busy: its commands
            // first (the changes go with their replies or the next wait).
            if self.notify.is_none() || self.conn.has_buffered_input() {
                return self.conn.read_line(max).await;
            }
            let new_watch = self.follow_selected();
            self.notify_changes(all, new_watch).await?;
            self.conn.flush().await?;
            let Some(notify) = self.notify.as_mut() else {
                continue;
            };
            let now = tokio::time::Instant::now();
            if now >= deadline {
                return Err(NetError::Timeout);
            }
            let unfinished = notify
                .names
                .as_ref()
                .is_some_and(|n| n.unfinished.is_some_and(|left| left > 0));
            let mut poll = notify.poll.min(deadline - now);
            if unfinished {
                poll = poll.min(UNFINISHED_RECHECK);
            }
            tokio::select! {
                biased;
                line = self.conn.read_line(max) => return line,
                () = notify.changed() => all = false,
                () = tokio::time::sleep(poll) => {
                    // A folder being made is looked at again on its own;
                    // the rest waits for its timer.
                    all = !unfinished;
                    if let Some(names) = notify.names.as_mut() {
                        names.dirty = true;
                    }
                }
            }
        }
    }

    /// Keeps the watch on the selected folder in step with SELECT;
    /// whether it is a new one (the folder to look at once: what changed
    /// before the watch began is in no wakeup).
    fn follow_selected(&mut self) -> bool {
        let path = self
            .selected
            .as_ref()
            .map(|s| s.folder.path().to_path_buf());
        let watcher = self.shared.watcher().cloned();
        let Some(notify) = self.notify.as_mut() else {
            return false;
        };
        let path = path.filter(|_| notify.selected.is_some());
        if notify.selected_watch.as_ref().map(|(p, _)| p) == path.as_ref() {
            return false;
        }
        notify.selected_watch = path.map(|p| {
            let watch = watcher.and_then(|w| w.watch(&p).ok());
            (p, watch)
        });
        true
    }

    /// Sends what changed: the folder list and subscriptions as LIST, the
    /// STATUS of each other folder whose watch fired (each one with `all`,
    /// on the timer), and the selected folder as after a command, when
    /// its watch fired, the watch is new (`look`) or on the timer: right
    /// after a command's own report there is nothing new to say of it.
    async fn notify_changes(&mut self, all: bool, look: bool) -> Result<(), NetError> {
        let Some(notify) = self.notify.as_mut() else {
            return Ok(());
        };
        let names_due = notify
            .names
            .as_ref()
            .is_some_and(|n| all || n.dirty || n.watch.is_none());
        let selected_due = all || look || notify.selected_dirty;
        let mut out = Vec::new();
        if names_due {
            let (lines, remade) = self.name_changes();
            out = lines;
            if let Some(remade) = remade {
                self.rewatch(&remade);
            }
        }
        let Some(notify) = self.notify.as_mut() else {
            return Ok(());
        };
        let mut others = std::mem::take(&mut notify.others);
        let delayed = notify.selected.as_ref().map(|s| s.delayed);
        let selected_path = self
            .selected
            .as_ref()
            .map(|s| s.folder.path().to_path_buf());
        for other in &mut others {
            if !(all || other.dirty || other.watch.is_none()) {
                continue;
            }
            other.dirty = false;
            if selected_path.as_ref() == Some(&other.path) {
                continue;
            }
            let now = self.watched_status(other);
            if now.is_some() && now != other.last {
                if let Some(line) = &now {
                    out.extend_from_slice(line.as_bytes());
                }
                other.last = now;
            }
        }
        if let Some(notify) = self.notify.as_mut() {
            notify.others = others;
        }
        self.out(&out).await?;
        if let Some(delayed) = delayed
            && selected_due
            && self.selected.is_some()
        {
            self.report(!delayed).await?;
        }
        Ok(())
    }

    /// After a report of the selected folder: the FETCH items MessageNew
    /// asked for, for each message that report announced (RFC 5465 §5.2:
    /// EXISTS, then the FETCH), whether it came between commands or while
    /// one ran. `before`: the folder's UIDNEXT as the client knew it.
    pub async fn announce_new(&mut self, before: u32) -> Result<(), NetError> {
        let Some(fetch) = self
            .notify
            .as_ref()
            .and_then(|n| n.selected.as_ref())
            .map(|s| s.fetch.clone())
            .filter(|f| !f.is_empty())
        else {
            return Ok(());
        };
        let arrived = self
            .selected
            .as_ref()
            .is_some_and(|s| s.view.last().is_some_and(|e| e.uid >= before));
        if arrived {
            let set = SequenceSet(vec![(Bound::Num(before.max(1)), Bound::Star)]);
            self.fetch(true, &set, &fetch, None, false).await?;
        }
        Ok(())
    }
}
