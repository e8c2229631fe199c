//! Local delivery of queued mail: into mailboxes, and to pipe aliases.
//!
//! The caller holds the message's queue lock. Each local recipient is tried
//! once per call; the outcome goes to the queue log. Mailbox deliveries are
//! idempotent (the maildir name derives from the queue id and recipient
//! index), so their outcomes are logged without fsync: if the log line is
//! lost, the retry finds the copy already there. A pipe is not idempotent, so
//! its outcome is logged durably.
//!
//! Exit codes of pipe commands (see `postroom-queue(5)`): sysexits, and the
//! qmail codes where they do not clash: 0 and 99 delivered; 75 (EX_TEMPFAIL)
//! and 111 deferred; 67 (EX_NOUSER), 77 (EX_NOPERM), 100 and everything else
//! failed. A command killed by a signal or out of time is deferred.

use std::io::Read;
use std::time::Duration;

use crate::config::Config;
use crate::delivery::dkim::{self, DkimError};
use crate::delivery::dsn;
use crate::directory::aliases::{Directory, ResolveError};
use crate::directory::users;
use crate::program::{Ended, Program};
use crate::proto::address::{Address, EnvelopeText, ReversePath};
use crate::proto::message;
use crate::store::fsutil;
use crate::store::maildir::{Delivered, Maildir, MaildirError, Message};
use crate::store::queue::{
    self, LockedMessage, LogEntry, QueueError, QueueId, QueuedMessage, RcptState, Route, Staged,
};

/// How long a pipe command may run.
pub const PIPE_TIMEOUT: Duration = Duration::from_secs(600);
/// How much of a command's output is kept for the failure reason.
const PIPE_OUTPUT_KEPT: usize = 4096;

/// What one attempt for one recipient came to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    Delivered(String),
    Deferred(String),
    Failed(String),
}

/// Delivers every local and pipe recipient of the locked message that is
/// due (`force`: due or not) and records the outcomes. The queue runner's
/// path: a `try` line goes first, so if this process dies mid-delivery the
/// next runner knows to look for a copy already made. Returns the outcomes
/// by recipient index.
pub fn deliver_local(
    config: &Config,
    directory: &Directory,
    locked: &mut LockedMessage,
    force: bool,
) -> Result<Vec<(usize, Outcome)>, QueueError> {
    if locked.message.state.held {
        return Ok(Vec::new());
    }
    let due = due_local(&locked.message, force);
    if due.is_empty() {
        return Ok(Vec::new());
    }
    let tries: Vec<LogEntry> = due.iter().map(|&i| LogEntry::Try(i)).collect();
    locked.record(&tries, false)?;
    let outcomes = attempt(config, directory, &locked.message, &due)?;
    dsn::report_successes(config, directory, &locked.message, &outcomes, false);
    // A pipe is not idempotent, so its outcome must not be lost.
    let durable = due
        .iter()
        .any(|&i| matches!(locked.message.envelope.recipients[i].route, Route::Pipe(_)));
    locked.record(&log_entries(config, &locked.message, &outcomes), durable)?;
    Ok(outcomes)
}

/// What became of a freshly written message after [`deliver_staged`].
#[derive(Debug, PartialEq, Eq)]
pub enum Early {
    /// Every recipient was delivered; the message never entered the queue.
    Delivered,
    /// The message is queued for the rest (remote recipients, deferrals,
    /// bounces), with what was done recorded.
    Queued(QueueId),
}

/// Why a finished message did not enter the queue.
#[derive(Debug, thiserror::Error)]
pub enum EnqueueError {
    #[error(transparent)]
    Queue(#[from] QueueError),
    /// A message that must be signed could not be: nothing is queued, and
    /// the writer answers 4xx (or exits 75) rather than send it unsigned.
    #[error(transparent)]
    Dkim(#[from] DkimError),
    /// An archive copy (`[archive]`) could not be made: nothing is queued,
    /// so no message goes unarchived.
    #[error(transparent)]
    Archive(#[from] crate::delivery::archive::ArchiveError),
}

/// Early delivery for a writer that has just finished a message (see
/// [`Staged`]): local and pipe recipients are delivered from the staged
/// file; only if anything is left does the message get committed to the
/// queue. Either way, on `Ok` the message is durable where it belongs.
pub fn deliver_staged(
    config: &Config,
    directory: &Directory,
    staged: Staged,
) -> Result<Early, EnqueueError> {
    enter_queue(config, Some(directory), staged, false)
}

/// Commits a finished message to the queue as it is, local recipients and
/// all (`mail-inject -odq`, and [`submit`](super::submit)): always
/// [`Early::Queued`].
pub fn queue_staged(config: &Config, staged: Staged) -> Result<Early, EnqueueError> {
    enter_queue(config, None, staged, false)
}

/// [`queue_staged`] for someone else's mail we pass on (a Sieve redirect,
/// a list post, through [`submit`](super::submit)): also ARC-sealed
/// (`delivery::arc`) when it leaves for another host.
pub fn queue_passed_on(config: &Config, staged: Staged) -> Result<Early, EnqueueError> {
    enter_queue(config, None, staged, true)
}

/// The one way a finished message enters the queue: the disclaimer
/// ([`disclaimer::add`](crate::delivery::disclaimer::add)), then DKIM
/// signing
/// ([`dkim::sign_staged`]: before any local copy is made, so a signing
/// failure refuses the whole message and a retry delivers nothing twice;
/// with the ARC seal of mail `passed_on`),
/// then the archive copies of the message as signed
/// ([`archive::copy`](crate::delivery::archive::copy)), then early
/// delivery with a `directory`, then the commit of what is left.
fn enter_queue(
    config: &Config,
    directory: Option<&Directory>,
    staged: Staged,
    passed_on: bool,
) -> Result<Early, EnqueueError> {
    let staged = crate::delivery::disclaimer::add(config, staged)?;
    let staged = dkim::sign_staged(config, staged, passed_on)?;
    let staged = crate::delivery::archive::copy(config, directory, staged)?;
    let Some(directory) = directory else {
        return Ok(Early::Queued(staged.commit(&[])?));
    };
    let due = due_local(&staged.message, true);
    let outcomes = attempt(config, directory, &staged.message, &due)?;
    dsn::report_successes(config, directory, &staged.message, &outcomes, false);
    let remote = staged
        .message
        .envelope
        .recipients
        .iter()
        .any(|r| r.route == Route::Remote);
    let all_delivered = outcomes
        .iter()
        .all(|(_, o)| matches!(o, Outcome::Delivered(_)));
    if !remote && all_delivered && outcomes.len() == staged.message.envelope.recipients.len() {
        staged.discard()?;
        return Ok(Early::Delivered);
    }
    let entries = log_entries(config, &staged.message, &outcomes);
    Ok(staged.commit(&entries).map(Early::Queued)?)
}

/// Local and pipe recipients still pending and due now (or at all, with
/// `force`).
fn due_local(message: &QueuedMessage, force: bool) -> Vec<usize> {
    let now = fsutil::now_secs();
    message
        .pending()
        .filter(|(_, r)| !matches!(r.route, Route::Remote))
        .filter(|(i, _)| match &message.state.recipients[*i] {
            RcptState::Pending { next_try, .. } => force || *next_try <= now,
            _ => false,
        })
        .map(|(i, _)| i)
        .collect()
}

/// One attempt for each of `due`; nothing is recorded here.
fn attempt(
    config: &Config,
    directory: &Directory,
    message: &QueuedMessage,
    due: &[usize],
) -> Result<Vec<(usize, Outcome)>, QueueError> {
    let now = fsutil::now_secs();
    let headers = message.header_block(256 * 1024)?;
    let mut outcomes = Vec::new();
    for &i in due {
        let rcpt = &message.envelope.recipients[i];
        let outcome = if has_delivered_to(&headers, &rcpt.address) {
            Outcome::Failed(format!(
                "554 5.4.6 mail forwarding loop for {} (Delivered-To already present)",
                rcpt.address
            ))
        } else {
            match &rcpt.route {
                Route::Local => {
                    let interrupted = matches!(
                        message.state.recipients[i],
                        RcptState::Pending {
                            interrupted: true,
                            ..
                        }
                    );
                    to_mailbox(config, directory, message, i, interrupted)
                }
                Route::Pipe(command) => to_pipe(config, message, i, command),
                Route::Remote => continue,
            }
        };
        let outcome = expire(outcome, message.envelope.arrived, now, config);
        let relay = if matches!(rcpt.route, Route::Pipe(_)) {
            "pipe"
        } else {
            "local"
        };
        log_outcome(message, i, relay, &outcome);
        outcomes.push((i, outcome));
    }
    Ok(outcomes)
}

/// One log event per recipient and attempt, with the fields that log
/// summarisers (pflogsumm and its kind) count: queue id, sender,
/// recipient, size, relay, delay in seconds since arrival, status (`sent`,
/// `deferred`, `bounced`) and the reply. The one place that says it, for
/// local, pipe and remote deliveries alike.
pub fn log_outcome(message: &QueuedMessage, i: usize, relay: &str, outcome: &Outcome) {
    let Some(rcpt) = message.envelope.recipients.get(i) else {
        return;
    };
    let (status, reply) = match outcome {
        Outcome::Delivered(reply) => ("sent", reply),
        Outcome::Deferred(reply) => ("deferred", reply),
        Outcome::Failed(reply) => ("bounced", reply),
    };
    tracing::info!(
        queue_id = %message.id,
        from = %message.envelope.sender,
        to = %rcpt.address,
        size = message.body_length(),
        relay = %relay,
        delay = crate::store::fsutil::now_secs().saturating_sub(message.envelope.arrived),
        status = %status,
        reply = %reply,
        "delivery"
    );
}

/// The log lines that record `outcomes` (a deferral carries its next try).
pub fn log_entries(
    config: &Config,
    message: &QueuedMessage,
    outcomes: &[(usize, Outcome)],
) -> Vec<LogEntry> {
    let now = fsutil::now_secs();
    let reply = |text: &str| EnvelopeText::sanitize(text, queue::MAX_FIELD);
    outcomes
        .iter()
        .map(|(i, outcome)| match outcome {
            Outcome::Delivered(text) => LogEntry::Delivered(*i, reply(text)),
            Outcome::Failed(text) => LogEntry::Failed(*i, reply(text)),
            Outcome::Deferred(text) => LogEntry::Deferred {
                rcpt: *i,
                next_try: queue::next_retry(message.envelope.arrived, now, &config.queue),
                reply: reply(text),
            },
        })
        .collect()
}

/// A deferral past the queue lifetime becomes a failure.
pub fn expire(outcome: Outcome, arrived: u64, now: u64, config: &Config) -> Outcome {
    match outcome {
        Outcome::Deferred(text)
            if now.saturating_sub(arrived) >= config.queue.lifetime.as_secs() =>
        {
            Outcome::Failed(crate::delivery::reply::gave_up(
                &text,
                config.queue.lifetime.as_secs() / 86400,
            ))
        }
        other => other,
    }
}

fn to_mailbox(
    config: &Config,
    directory: &Directory,
    message: &QueuedMessage,
    index: usize,
    interrupted: bool,
) -> Outcome {
    let rcpt = &message.envelope.recipients[index].address;
    let Some(user) = directory.user(rcpt) else {
        // With the users file missing, nobody can say the user is gone:
        // wait for it to come back rather than bounce.
        if let Some(why) = directory.users().unavailable() {
            let e = ResolveError::UsersUnavailable(why);
            return Outcome::Deferred(format!("451 4.3.0 <{rcpt}>: {e}"));
        }
        return Outcome::Failed(format!("550 5.1.1 <{rcpt}>: no such user here"));
    };
    let maildir = Maildir::new(users::maildir_of(config, &user));
    if crate::delivery::filter::has_rules(config, &maildir) {
        return by_rules(config, directory, message, index, &maildir, &user);
    }
    let mut body = match message.body() {
        Ok(body) => body,
        Err(e) => return Outcome::Deferred(format!("451 4.3.0 cannot read queue file: {e}")),
    };
    let prepend = format!(
        "Return-Path: <{}>\nDelivered-To: {}\n",
        return_path(config, message, rcpt),
        rcpt
    );
    let quota = crate::delivery::quota::limit_of(config, &user);
    let delivery = Message {
        prepend: prepend.as_bytes(),
        body: &mut body,
        base_name: Some(format!(
            "{}.Q{}R{}.{}",
            message.envelope.arrived,
            message.id,
            index,
            fsutil::host_for_names(&config.hostname)
        )),
        search_cur: interrupted,
        end_header: true,
        as_given: false,
        quota,
    };
    match maildir.deliver(delivery) {
        Ok(Delivered::New(_)) => {
            crate::delivery::quota::after_delivery(config, &user, &maildir);
            Outcome::Delivered("250 2.0.0 delivered to maildir".into())
        }
        Ok(Delivered::AlreadyThere) => Outcome::Delivered("250 2.0.0 already in maildir".into()),
        Err(MaildirError::OverQuota { .. }) => crate::delivery::quota::full(config, rcpt),
        Err(e) => Outcome::Deferred(format!("451 4.3.0 <{rcpt}>: {e}")),
    }
}

/// Local delivery through the user's (and the admin's) Sieve rules. Not
/// idempotent like a plain delivery: a runner killed mid-way may file a
/// copy twice on the retry (never none).
fn by_rules(
    config: &Config,
    directory: &Directory,
    message: &QueuedMessage,
    index: usize,
    maildir: &Maildir,
    user: &crate::directory::users::User,
) -> Outcome {
    let rcpt = &message.envelope.recipients[index].address;
    let sender = return_path(config, message, rcpt);
    let mut raw = format!("Return-Path: <{sender}>\r\nDelivered-To: {rcpt}\r\n").into_bytes();
    match message.body().and_then(|mut f| {
        f.read_to_end(&mut raw).map_err(|e| QueueError::Io {
            path: message.path().to_path_buf(),
            error: e,
        })
    }) {
        Ok(_) => {}
        Err(e) => return Outcome::Deferred(format!("451 4.3.0 cannot read queue file: {e}")),
    }
    let Ok(address) = Address::parse(&user.address) else {
        return Outcome::Failed(format!("550 5.1.1 <{rcpt}>: bad user address"));
    };
    let quota = crate::delivery::quota::limit_of(config, user);
    match crate::delivery::filter::sort(config, directory, maildir, quota, &address, &sender, &raw)
    {
        Ok(crate::delivery::filter::Sorted::Delivered) => {
            crate::delivery::quota::after_delivery(config, user, maildir);
            Outcome::Delivered("250 2.0.0 delivered by Sieve rules".into())
        }
        Ok(crate::delivery::filter::Sorted::Refused(reason)) => Outcome::Failed(reason),
        Err(crate::delivery::filter::SortError::OverQuota) => {
            crate::delivery::quota::full(config, rcpt)
        }
        Err(e) => Outcome::Deferred(format!("451 4.3.0 <{rcpt}>: {e}")),
    }
}

fn to_pipe(
    config: &Config,
    message: &QueuedMessage,
    index: usize,
    command: &EnvelopeText,
) -> Outcome {
    let rcpt = &message.envelope.recipients[index].address;
    let sender = return_path(config, message, rcpt);
    let mut body = Vec::with_capacity(message.body_size as usize + 256);
    body.extend_from_slice(format!("Return-Path: <{sender}>\nDelivered-To: {rcpt}\n").as_bytes());
    match message.body().and_then(|mut f| {
        let mut raw = Vec::new();
        f.read_to_end(&mut raw).map_err(|e| QueueError::Io {
            path: message.path().to_path_buf(),
            error: e,
        })?;
        Ok(raw)
    }) {
        Ok(raw) => body.extend(message::crlf_to_lf(&raw)),
        Err(e) => return Outcome::Deferred(format!("451 4.3.0 cannot read queue file: {e}")),
    }
    run_pipe(
        command.as_str(),
        &body,
        &sender.to_string(),
        rcpt,
        PIPE_TIMEOUT,
    )
}

/// The return path one recipient's copy carries (VERP-aware).
fn return_path(config: &Config, message: &QueuedMessage, rcpt: &Address) -> ReversePath {
    let delimiter = config.delivery.recipient_delimiter.unwrap_or('+');
    message.envelope.sender_for(rcpt, delimiter)
}

/// Runs `sh -c COMMAND` with the message on stdin and maps its exit code
/// (sysexits and qmail's: 0 and 99 delivered, 75 and 111 later, 67 no
/// such user, anything else a failure).
pub fn run_pipe(
    command: &str,
    input: &[u8],
    sender: &str,
    rcpt: &Address,
    timeout: Duration,
) -> Outcome {
    let ran = Program {
        command: command.to_string(),
        env: vec![
            ("SENDER".into(), sender.to_string()),
            ("RECIPIENT".into(), rcpt.to_string()),
            ("LOCAL".into(), rcpt.local_part().to_string()),
            ("DOMAIN".into(), rcpt.domain().to_string()),
        ],
        input: Some(Box::new(std::io::Cursor::new(input.to_vec()))),
        keep_stderr: true,
        output_max: PIPE_OUTPUT_KEPT,
        timeout,
    }
    .run();
    let ran = match ran {
        Ok(ran) => ran,
        Err(e) => return Outcome::Deferred(format!("451 4.3.0 cannot run {command:?}: {e}")),
    };
    let said = |default: &str| ran.first_line().unwrap_or_else(|| default.to_string());
    match ran.ended {
        Ended::TimedOut => Outcome::Deferred(format!("451 4.3.0 {command:?} timed out")),
        Ended::Killed => Outcome::Deferred(format!("451 4.3.0 {command:?} was killed by a signal")),
        Ended::Exited(0 | 99) => Outcome::Delivered("250 2.0.0 delivered to command".into()),
        Ended::Exited(75 | 111) => {
            Outcome::Deferred(format!("451 4.3.0 {}", said("command asked to try later")))
        }
        Ended::Exited(67) => Outcome::Failed(format!("550 5.1.1 {}", said("no such user"))),
        Ended::Exited(code) => Outcome::Failed(format!(
            "554 5.3.0 {} (exit {code})",
            said("command failed")
        )),
    }
}

/// True if a `Delivered-To:` header names `rcpt`: this message has been
/// here before, so delivering again would loop.
fn has_delivered_to(headers: &[u8], rcpt: &Address) -> bool {
    let wanted = rcpt.to_string().to_ascii_lowercase();
    String::from_utf8_lossy(headers).split("\r\n").any(|line| {
        line.len() > 13
            && line.is_char_boundary(13)
            && line[..13].eq_ignore_ascii_case("delivered-to:")
            && line[13..].trim().to_ascii_lowercase() == wanted
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rcpt() -> Address {
        Address::parse("list@example.test").unwrap()
    }

    #[test]
    fn pipe_exit_codes_map_to_outcomes() {
        let t = Duration::from_secs(10);
        assert!(matches!(
            run_pipe("cat >/dev/null", b"x\n", "", &rcpt(), t),
            Outcome::Delivered(_)
        ));
        assert!(matches!(
            run_pipe("exit 99", b"", "", &rcpt(), t),
            Outcome::Delivered(_)
        ));
        assert!(matches!(
            run_pipe("exit 75", b"", "", &rcpt(), t),
            Outcome::Deferred(_)
        ));
        assert!(matches!(
            run_pipe("exit 111", b"", "", &rcpt(), t),
            Outcome::Deferred(_)
        ));
        match run_pipe("echo 'no such list'; exit 67", b"", "", &rcpt(), t) {
            Outcome::Failed(text) => assert!(text.contains("no such list"), "{text}"),
            other => panic!("{other:?}"),
        }
        assert!(matches!(
            run_pipe("exit 1", b"", "", &rcpt(), t),
            Outcome::Failed(_)
        ));
        assert!(matches!(
            run_pipe("sleep 5", b"", "", &rcpt(), Duration::from_millis(100)),
            Outcome::Deferred(_)
        ));
    }

    #[test]
    fn pipe_sees_envelope_in_environment_and_big_input() {
        let big = vec![b'x'; 1 << 20];
        let out = run_pipe(
            "test \"$RECIPIENT\" = list@example.test && test \"$SENDER\" = s@x && wc -c >/dev/null",
            &big,
            "s@x",
            &rcpt(),
            Duration::from_secs(10),
        );
        assert!(matches!(out, Outcome::Delivered(_)), "{out:?}");
    }

    #[test]
    fn delivered_to_loop_detection() {
        let h = b"Received: x\r\nDelivered-To: List@Example.test\r\nSubject: y\r\n\r\n";
        assert!(has_delivered_to(h, &rcpt()));
        assert!(!has_delivered_to(b"Subject: y\r\n\r\n", &rcpt()));
    }

    #[test]
    fn crlf_conversion() {}
}
