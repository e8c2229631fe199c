//! One pass over the queue: every message that is due (or that the
//! selection names) is locked, its local recipients are delivered, its
//! remote recipients are handed to the [`Dispatcher`] grouped by
//! destination, each outcome is logged as it comes in, and then the
//! message is finished: reports owed are queued, and a message with
//! nothing left to do is removed.
//!
//! The lock is the message's `flock` (`postroom-queue(5)`), so any number
//! of runners, here or on other hosts sharing the tree, can pass over the
//! queue at once: a message one of them holds is skipped by the others. At
//! most `send.active_messages` are held at a time.

use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::Context;
use postroom::config::Config;
use postroom::delivery::deliver::{self, Outcome};
use postroom::delivery::dsn::{self, Kind};
use postroom::directory::aliases::Directory;
use postroom::proto::address::{Address, EnvelopeText, ReversePath};
use postroom::store::pace::{self, Booking};
use postroom::store::queue::{
    LockedMessage, LogEntry, Queue, QueueError, QueueId, RcptState, Route,
};
use postroom::store::{fsutil, queue};
use tokio::sync::{Semaphore, oneshot};

use crate::remote::{Delivery, Destination, Dispatcher, Job};

/// Which messages a pass works, and whether backoff is respected.
#[derive(Debug, Clone)]
pub enum Selection {
    /// Recipients whose next try has come (`--once`, `--watch`).
    Due,
    /// Every pending recipient now (`--flush`).
    All,
    /// These messages now (`--message`).
    Messages(Vec<QueueId>),
    /// Remote recipients in this domain now (`--domain`, for ETRN).
    Domain(String),
}

impl Selection {
    fn forced(&self) -> bool {
        !matches!(self, Selection::Due)
    }
}

/// What a pass did, for the log line at its end.
#[derive(Debug, Default)]
pub struct Tally {
    pub messages: AtomicUsize,
    pub delivered: AtomicUsize,
    pub deferred: AtomicUsize,
    pub failed: AtomicUsize,
    pub reports: AtomicUsize,
    /// The earliest next try of what is left (0: none).
    pub next_due: AtomicU64,
}

impl Tally {
    fn count(&self, outcomes: &[(usize, Outcome)]) {
        for (_, outcome) in outcomes {
            let counter = match outcome {
                Outcome::Delivered(_) => &self.delivered,
                Outcome::Deferred(_) => &self.deferred,
                Outcome::Failed(_) => &self.failed,
            };
            counter.fetch_add(1, Ordering::Relaxed);
        }
    }

    fn due_at(&self, at: u64) {
        let _ = self
            .next_due
            .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |now| {
                (now == 0 || at < now).then_some(at)
            });
    }
}

/// The state one pass shares between its message tasks.
pub struct Runner {
    pub config: Arc<Config>,
    pub queue: Queue,
    directory: Arc<Directory>,
    dispatcher: Arc<Dispatcher>,
    /// Set by SIGTERM: take no new message, finish the ones in hand.
    pub stopping: Arc<AtomicBool>,
    pub tally: Tally,
}

impl Runner {
    pub fn new(
        config: Arc<Config>,
        dispatcher: Arc<Dispatcher>,
        stopping: Arc<AtomicBool>,
    ) -> anyhow::Result<Arc<Runner>> {
        let directory = Directory::load(&config).context("reading users, aliases and domains")?;
        Ok(Arc::new(Runner {
            queue: Queue::from_config(&config),
            directory: Arc::new(directory),
            config,
            dispatcher,
            stopping,
            tally: Tally::default(),
        }))
    }

    /// Works every selected message once. Reports queued on the way (and
    /// mail queued meanwhile) get further rounds, a few at most.
    pub async fn pass(self: &Arc<Self>, selection: &Selection) -> anyhow::Result<()> {
        let mut ids = match selection {
            Selection::Messages(ids) => ids.clone(),
            _ => {
                // Hints first: one written while we scan survives to wake
                // the next pass.
                for id in self.queue.todo()? {
                    self.queue.clear_todo(&id);
                }
                self.queue.list()?
            }
        };
        for round in 0..3 {
            self.work(ids, selection).await;
            if matches!(selection, Selection::Messages(_) | Selection::Domain(_))
                || self.stopping.load(Ordering::Relaxed)
            {
                break;
            }
            ids = self.queue.todo()?;
            if ids.is_empty() {
                break;
            }
            for id in &ids {
                self.queue.clear_todo(id);
            }
            tracing::debug!(round, count = ids.len(), "another round for new mail");
        }
        Ok(())
    }

    /// Works just these messages (the hints `--watch` woke up for).
    pub async fn pass_over(self: &Arc<Self>, ids: Vec<QueueId>, selection: &Selection) {
        for id in &ids {
            self.queue.clear_todo(id);
        }
        self.work(ids, selection).await;
    }

    async fn work(self: &Arc<Self>, ids: Vec<QueueId>, selection: &Selection) {
        // Mail a user submitted first, list and bulk mail last (one read
        // of each envelope; a pass over one message needs none).
        let ids = if ids.len() > 1 {
            let (queue, unsorted) = (self.queue.clone(), ids.clone());
            tokio::task::spawn_blocking(move || queue.by_priority(unsorted))
                .await
                .unwrap_or(ids)
        } else {
            ids
        };
        let active = Arc::new(Semaphore::new(self.config.send.active_messages));
        let mut tasks = tokio::task::JoinSet::new();
        for id in ids {
            if self.stopping.load(Ordering::Relaxed) {
                break;
            }
            // Never closed, so this only waits.
            let Ok(permit) = active.clone().acquire_owned().await else {
                break;
            };
            let runner = self.clone();
            let selection = selection.clone();
            tasks.spawn(async move {
                if let Err(e) = runner.message(&id, &selection).await {
                    tracing::error!(queue_id = %id, "{e:#}");
                }
                drop(permit);
            });
            // Reap finished tasks as we go, so the set stays small.
            while tasks.try_join_next().is_some() {}
        }
        while tasks.join_next().await.is_some() {}
    }

    /// Everything one pass does to one message.
    async fn message(self: &Arc<Self>, id: &QueueId, selection: &Selection) -> anyhow::Result<()> {
        let queue = self.queue.clone();
        let lock_id = id.clone();
        let Some(mut locked) = blocking(move || queue.lock(&lock_id)).await? else {
            // Another runner has it, or it is gone.
            return Ok(());
        };
        let message = &locked.message;
        if message.state.held {
            return Ok(());
        }
        let now = fsutil::now_secs();
        let forced = selection.forced();
        let due = |i: usize| match &message.state.recipients[i] {
            RcptState::Pending { next_try, .. } => forced || *next_try <= now,
            _ => false,
        };
        let domain_wanted = |address: &Address| match selection {
            Selection::Domain(d) => address.domain().eq_ignore_ascii_case(d),
            _ => true,
        };
        let local_due = !matches!(selection, Selection::Domain(_))
            && message
                .pending()
                .any(|(i, r)| r.route != Route::Remote && due(i));
        let mut remote: BTreeMap<String, (Destination, Vec<(usize, queue::Recipient)>)> =
            BTreeMap::new();
        for (i, rcpt) in message.pending() {
            if rcpt.route == Route::Remote && due(i) && domain_wanted(&rcpt.address) {
                let domain = rcpt.address.domain();
                let destination = Destination::for_domain(&self.config, domain);
                // A paced domain's recipients travel apart from others
                // sharing its destination (a smarthost), so each of its
                // transactions books one slot of its own pace.
                let key = match self.config.send.rate_for(domain) {
                    Some(_) => format!("{} {}", destination.key, domain.to_ascii_lowercase()),
                    None => destination.key.clone(),
                };
                remote
                    .entry(key)
                    .or_insert_with(|| (destination, Vec::new()))
                    .1
                    .push((i, rcpt.clone()));
            }
        }
        let reports_owed = self.reports_owed(&locked);
        if !local_due && remote.is_empty() && !reports_owed {
            if locked.message.is_finished() {
                // Nothing pending and nothing owed, yet still here: a
                // runner died between logging the last outcome and removing
                // the message. Left alone it would stay for ever, since no
                // recipient will ever fall due again.
                tracing::warn!(queue_id = %id, "nothing left to do; finishing it");
                self.tally.messages.fetch_add(1, Ordering::Relaxed);
                let runner = self.clone();
                return blocking(move || runner.finish(locked, false)).await;
            }
            if let Some(at) = locked.message.next_due() {
                self.tally.due_at(at);
            }
            return Ok(());
        }
        if let Err(torn) = locked.message.intact() {
            // Never send, deliver or quote part of a message as if it were
            // all of it: hold it for the administrator (the error says
            // what to do).
            tracing::error!(queue_id = %id, "{torn}");
            let reason = EnvelopeText::sanitize(
                &format!(
                    "torn queue file: the body has {} bytes, {} were written at commit",
                    locked.message.body_size,
                    locked.message.body_length()
                ),
                queue::MAX_FIELD,
            );
            return blocking(move || locked.record(&[LogEntry::HoldBecause(reason)], true)).await;
        }
        self.tally.messages.fetch_add(1, Ordering::Relaxed);

        if local_due {
            let (config, directory) = (self.config.clone(), self.directory.clone());
            let (back, outcomes) = blocking(move || {
                let outcomes = deliver::deliver_local(&config, &directory, &mut locked, forced);
                Ok::<_, QueueError>((locked, outcomes))
            })
            .await?;
            locked = back;
            self.tally.count(&outcomes?);
        }

        let mut paced_out = false;
        if !remote.is_empty() {
            (locked, paced_out) = self.remote(locked, remote).await?;
        }

        let runner = self.clone();
        blocking(move || runner.finish(locked, paced_out)).await
    }

    /// Hands the remote recipients to the dispatcher and logs each job's
    /// outcomes as they arrive (durably: a logged delivery is never
    /// repeated). True with the message when some were left for a later
    /// slot of a paced destination.
    async fn remote(
        &self,
        locked: LockedMessage,
        remote: BTreeMap<String, (Destination, Vec<(usize, queue::Recipient)>)>,
    ) -> anyhow::Result<(LockedMessage, bool)> {
        let mut paced_out = false;
        let snapshot = Arc::new(locked.message.clone());
        let locked = Arc::new(Mutex::new(locked));
        let mut waiting = tokio::task::JoinSet::new();
        // With VERP every recipient has its own return path, so its own
        // transaction.
        let per_transaction = if snapshot.envelope.verp {
            1
        } else {
            self.config.send.recipients_per_transaction
        };
        let delimiter = self.config.delivery.recipient_delimiter.unwrap_or('+');
        for (_, (destination, rcpts)) in remote {
            let pace = rcpts.first().and_then(|(_, r)| {
                let domain = r.address.domain();
                let rate = self.config.send.rate_for(domain)?;
                Some((pace::path(&self.config, domain), rate.interval()))
            });
            for chunk in rcpts.chunks(per_transaction) {
                let wait = match &pace {
                    None => Duration::ZERO,
                    Some((file, interval)) => match self.book(file, *interval).await {
                        Some(wait) => wait,
                        // No slot soon: the rest stay pending, untouched,
                        // for a later pass.
                        None => {
                            paced_out = true;
                            break;
                        }
                    },
                };
                let (done, outcome) = oneshot::channel();
                let job = Job {
                    sender: snapshot.envelope.sender_for(&chunk[0].1.address, delimiter),
                    message: snapshot.clone(),
                    rcpts: chunk.to_vec(),
                    done,
                };
                let relay = destination.key.clone();
                let (dispatcher, destination) = (self.dispatcher.clone(), destination.clone());
                waiting.spawn(async move {
                    // The slot booked for this transaction.
                    if !wait.is_zero() {
                        tokio::time::sleep(wait).await;
                    }
                    dispatcher.submit(destination, job);
                    (relay, outcome.await)
                });
            }
        }
        while let Some(result) = waiting.join_next().await {
            // A dropped sender means the worker died: those recipients are
            // simply tried again next time.
            let Ok((relay, Ok(Delivery { outcomes, relayed }))) = result else {
                continue;
            };
            self.tally.count(&outcomes);
            let (config, locked) = (self.config.clone(), locked.clone());
            let directory = self.directory.clone();
            blocking(move || {
                let mut locked = locked.lock().unwrap_or_else(|e| e.into_inner());
                let now = fsutil::now_secs();
                let arrived = locked.message.envelope.arrived;
                let outcomes: Vec<(usize, Outcome)> = outcomes
                    .into_iter()
                    .map(|(i, o)| (i, deliver::expire(o, arrived, now, &config)))
                    .collect();
                for (i, outcome) in &outcomes {
                    deliver::log_outcome(&locked.message, *i, &relay, outcome);
                }
                // Handed to a server without DSN: "relayed" reports are ours.
                if relayed {
                    dsn::report_successes(&config, &directory, &locked.message, &outcomes, true);
                }
                let entries = deliver::log_entries(&config, &locked.message, &outcomes);
                // When these deliveries finish the message, it is removed
                // (durably) right after, and the log with it: its fsync
                // would buy nothing a kill could take away, so it is left
                // to the removal's.
                let durable = !finishes(&locked.message, &outcomes);
                locked.record(&entries, durable)
            })
            .await?;
        }
        let locked = Arc::try_unwrap(locked)
            .map(|m| m.into_inner().unwrap_or_else(|e| e.into_inner()))
            .map_err(|_| anyhow::anyhow!("a delivery task still holds the message"))?;
        Ok((locked, paced_out))
    }

    /// Books a slot of a paced destination (`store::pace`): the wait before
    /// it, or `None` when none is free soon (the pass then wakes again
    /// when one is). A pace file that cannot be used holds the mail back
    /// a minute rather than send it unpaced.
    async fn book(&self, file: &std::path::Path, interval: Duration) -> Option<Duration> {
        let path = file.to_path_buf();
        let booked = blocking(move || pace::book(&path, interval)).await;
        let retry_at = match booked {
            Ok(Booking::After(wait)) => return Some(wait),
            Ok(Booking::Full(at)) => at,
            Err(e) => {
                tracing::error!(file = %file.display(), "pacing: {e:#}; trying again in a minute");
                fsutil::now_secs() + 60
            }
        };
        self.tally.due_at(retry_at);
        None
    }

    /// True when a failure report or a delay warning is owed now.
    fn reports_owed(&self, locked: &LockedMessage) -> bool {
        let message = &locked.message;
        let unreported = message
            .state
            .recipients
            .iter()
            .any(|r| matches!(r, RcptState::Failed { bounced: false, .. }));
        unreported || self.warning_owed(locked)
    }

    fn warning_owed(&self, locked: &LockedMessage) -> bool {
        let message = &locked.message;
        !message.state.warned
            && !message.envelope.sender.is_null()
            && fsutil::now_secs().saturating_sub(message.envelope.arrived)
                >= self.config.queue.warn_after.as_secs()
            && message.pending().next().is_some()
    }

    /// Queues the reports owed, then removes the message if nothing is
    /// left. A report is queued before it is logged as sent: a crash in
    /// between sends it twice, never not at all.
    /// `paced_out`: recipients were left for a paced destination's next
    /// slot, whose time the tally already has; their past due time must
    /// not wake the next pass at once.
    fn finish(&self, mut locked: LockedMessage, paced_out: bool) -> anyhow::Result<()> {
        let failed: Vec<usize> = locked
            .message
            .state
            .recipients
            .iter()
            .enumerate()
            .filter(|(_, r)| matches!(r, RcptState::Failed { bounced: false, .. }))
            .map(|(i, _)| i)
            .collect();
        if !failed.is_empty() {
            let message = &locked.message;
            match &message.envelope.sender {
                ReversePath::Address(sender) => {
                    let wanted: Vec<usize> = failed
                        .iter()
                        .copied()
                        .filter(|&i| dsn::wanted(&message.envelope.recipients[i], Kind::Failure))
                        .collect();
                    if !wanted.is_empty() {
                        let report = dsn::report(&self.config, message, Kind::Failure, &wanted)?;
                        self.send_report(sender, &report)?;
                    }
                }
                ReversePath::Null => {
                    // A report that failed: the postmaster hears of it,
                    // once, unless it was the postmaster's own mail.
                    let postmaster = dsn::postmaster(&self.config);
                    let for_postmaster = failed.iter().all(|&i| {
                        postmaster.as_ref().is_some_and(|p| {
                            p.lookup_key() == message.envelope.recipients[i].address.lookup_key()
                        })
                    });
                    if let Some(postmaster) = postmaster.filter(|_| !for_postmaster) {
                        let report = dsn::report(&self.config, message, Kind::Failure, &failed)?;
                        self.send_report(&postmaster, &report)?;
                    } else {
                        tracing::warn!(queue_id = %message.id, "undeliverable report dropped");
                    }
                }
            }
            let entries: Vec<LogEntry> = failed.iter().map(|&i| LogEntry::Bounced(i)).collect();
            locked.record(&entries, true)?;
        }
        if self.warning_owed(&locked) {
            let message = &locked.message;
            let waiting: Vec<usize> = message
                .pending()
                .filter(|(_, r)| dsn::wanted(r, Kind::Delay))
                .map(|(i, _)| i)
                .collect();
            if let (false, ReversePath::Address(sender)) =
                (waiting.is_empty(), &message.envelope.sender)
            {
                let report = dsn::report(&self.config, message, Kind::Delay, &waiting)?;
                self.send_report(sender, &report)?;
            }
            locked.record(&[LogEntry::Warned], true)?;
        }
        if locked.message.is_finished() {
            locked.remove(true)?;
        } else if let Some(at) = locked.message.next_due().filter(|_| !paced_out) {
            self.tally.due_at(at);
        }
        Ok(())
    }

    /// Queues a report ([`dsn::queue_report`]) and counts it.
    fn send_report(&self, to: &Address, report: &[u8]) -> anyhow::Result<QueueId> {
        let id = dsn::queue_report(&self.config, &self.directory, to, report)?;
        self.tally.reports.fetch_add(1, Ordering::Relaxed);
        Ok(id)
    }
}

/// True when `outcomes` deliver every recipient still pending and nothing
/// else is owed.
fn finishes(message: &queue::QueuedMessage, outcomes: &[(usize, Outcome)]) -> bool {
    let delivered: Vec<usize> = outcomes
        .iter()
        .filter(|(_, o)| matches!(o, Outcome::Delivered(_)))
        .map(|(i, _)| *i)
        .collect();
    delivered.len() == outcomes.len()
        && message.pending().all(|(i, _)| delivered.contains(&i))
        && message
            .state
            .recipients
            .iter()
            .all(|r| !matches!(r, RcptState::Failed { bounced: false, .. }))
}

/// Runs file work off the async threads.
async fn blocking<T, E>(work: impl FnOnce() -> Result<T, E> + Send + 'static) -> anyhow::Result<T>
where
    T: Send + 'static,
    E: Into<anyhow::Error> + Send + 'static,
{
    tokio::task::spawn_blocking(work).await?.map_err(Into::into)
}

/// `send.credentials`: host to `user:password`, read once at start.
pub fn load_credentials(config: &Config) -> anyhow::Result<HashMap<String, (String, String)>> {
    let mut out = HashMap::new();
    for (host, file) in &config.send.credentials {
        let path = config.path(file);
        let text = std::fs::read_to_string(&path).with_context(|| {
            format!(
                "send.credentials.{host}: cannot read {} (it should hold user:password)",
                path.display()
            )
        })?;
        let line = text.lines().next().unwrap_or("").trim_end();
        let (user, password) = line.split_once(':').with_context(|| {
            format!(
                "send.credentials.{host}: {} should hold user:password on its first line",
                path.display()
            )
        })?;
        out.insert(
            host.to_ascii_lowercase(),
            (user.to_string(), password.to_string()),
        );
    }
    Ok(out)
}
