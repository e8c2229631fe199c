//! NOTIFY (RFC 5465): the mailboxes a session watches, and what it tells
//! the client about them between commands, without being asked.
//!
//! While a NOTIFY SET is in force the session waits on the client's next
//! line and on the watched folders at once ([`Session::next_line`]): the
//! selected folder is synced and reported as after a command (EXPUNGE held
//! back for SELECTED-DELAYED), other folders as `* STATUS` when their
//! figures moved. The watches are the process's inotify ones
//! (`store::watch`), so a session costs no file descriptor of its own;
//! other hosts' changes are seen on the same timer as IDLE's.
//!
//! The mailboxes are worked out when NOTIFY SET runs: a folder created
//! later is not watched until the next NOTIFY SET. Shared folders count
//! only with the rights `l` and `r` (RFC 5465 §5), checked again before
//! each STATUS is sent.

use std::collections::BTreeSet;
use std::future::Future;
use std::path::PathBuf;
use std::pin::Pin;
use std::task::Poll;
use std::time::Duration;

use postroom::net::NetError;
use postroom::proto::imap::command::{
    Bound, Event, FetchItem, Filter, NotifySet, SequenceSet, StatusItem,
};
use postroom::store::mailbox::MailboxName;
use postroom::store::mailbox::acl::Rights;
use postroom::store::watch::{FolderWatch, other_hosts_poll};

use crate::session::{Done, Session};

/// The events sent; any other asked for gets NO [BADEVENT (these)].
const SUPPORTED: &[&str] = &["MessageNew", "MessageExpunge", "FlagChange"];
/// Most folders one NOTIFY SET watches (two inotify watches each; the
/// kernel's default allows 8192 per user, shared by every session).
pub const WATCHED_MAX: usize = 500;
/// Without a selected folder or any watched one, how often to look again.
const RESYNC: Duration = Duration::from_secs(60);

/// A session's NOTIFY SET.
pub struct Notify {
    /// The selected folder's events; `None` for SELECTED NONE or none
    /// given (RFC 5465 §3.1: nothing between commands about it then).
    selected: Option<SelectedEvents>,
    /// The watch on the selected folder, and that folder's path.
    selected_watch: Option<(PathBuf, FolderWatch)>,
    others: Vec<Watched>,
    /// How often to look again on its own (other hosts' changes).
    poll: Duration,
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
            if let Some((_, w)) = self.selected_watch.as_mut() {
                waiting.push((usize::MAX, Box::pin(w.changed())));
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
            if let Some(other) = self.others.get_mut(i) {
                other.dirty = true;
            }
        }
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
        let poll = others
            .first()
            .map(|o| o.path.as_path())
            .or(self.selected.as_ref().map(|s| s.folder.path()))
            .map_or(RESYNC, other_hosts_poll);
        let mut notify = Notify {
            selected,
            selected_watch: None,
            others,
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
            if set.status
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
                        .filter(|n| {
                            roots.iter().any(|r| {
                                n.as_str() == r.as_str()
                                    || n.as_str().starts_with(&format!("{}.", r.as_str()))
                            })
                        })
                        .cloned()
                        .collect()
                }
                Filter::Selected | Filter::SelectedDelayed => continue,
            };
            let flags = group.events.contains(&Event::FlagChange);
            for name in names {
                if !seen.insert(name.clone()) || group.events.is_empty() {
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
            self.follow_selected();
            self.notify_changes(all).await?;
            self.conn.flush().await?;
            let Some(notify) = self.notify.as_mut() else {
                continue;
            };
            let now = tokio::time::Instant::now();
            if now >= deadline {
                return Err(NetError::Timeout);
            }
            let poll = notify.poll.min(deadline - now);
            tokio::select! {
                biased;
                line = self.conn.read_line(max) => return line,
                () = notify.changed() => all = false,
                () = tokio::time::sleep(poll) => all = true,
            }
        }
    }

    /// Keeps the watch on the selected folder in step with SELECT.
    fn follow_selected(&mut self) {
        let path = self
            .selected
            .as_ref()
            .map(|s| s.folder.path().to_path_buf());
        let watcher = self.shared.watcher().cloned();
        let Some(notify) = self.notify.as_mut() else {
            return;
        };
        let path = path.filter(|_| notify.selected.is_some());
        if notify.selected_watch.as_ref().map(|(p, _)| p) == path.as_ref() {
            return;
        }
        notify.selected_watch = match (watcher, path) {
            (Some(w), Some(p)) => w.watch(&p).ok().map(|watch| (p, watch)),
            _ => None,
        };
    }

    /// Sends what changed: the selected folder as after a command, and
    /// the STATUS of each other folder whose watch fired (each one with
    /// `all`, on the timer).
    async fn notify_changes(&mut self, all: bool) -> Result<(), NetError> {
        let Some(notify) = self.notify.as_mut() else {
            return Ok(());
        };
        let mut others = std::mem::take(&mut notify.others);
        let selected = notify
            .selected
            .as_ref()
            .map(|s| (s.delayed, s.fetch.clone()));
        let selected_path = self
            .selected
            .as_ref()
            .map(|s| s.folder.path().to_path_buf());
        let mut out = Vec::new();
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
        if let (Some((delayed, fetch)), Some(sel)) = (selected, self.selected.as_ref()) {
            let before = sel.next_uid;
            self.report(!delayed).await?;
            let arrived = self
                .selected
                .as_ref()
                .is_some_and(|s| s.view.last().is_some_and(|e| e.uid >= before));
            if arrived && !fetch.is_empty() {
                // RFC 5465 §5.2: EXISTS, then the FETCH items asked for.
                let set = SequenceSet(vec![(Bound::Num(before.max(1)), Bound::Star)]);
                self.fetch(true, &set, &fetch, None, false).await?;
            }
        }
        self.out(&out).await
    }
}
