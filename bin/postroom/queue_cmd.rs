//! `postroom queue`: list, show, hold, release, retry, delete.
//!
//! Readers take no lock (the envelope is immutable, log lines are whole);
//! commands that change a message wait briefly for the runner that may hold
//! it, then append to its log or remove it, exactly as a runner would.

use std::io::Write;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::Context;
use clap::{Args, Subcommand};
use postroom::store::queue::{LogEntry, Queue, QueueId, QueuedMessage, RcptState, Route};
use serde_json::json;

/// How long an admin command waits for a runner to let go of a message.
const PATIENCE: Duration = Duration::from_secs(30);

#[derive(Subcommand)]
pub enum QueueCommand {
    /// One line per queued message (or a JSON array).
    List {
        #[arg(long)]
        json: bool,
    },
    /// Envelope, per-recipient state and headers of one message.
    Show {
        id: String,
        #[arg(long)]
        json: bool,
    },
    /// Keep messages from being delivered until released.
    Hold(Ids),
    /// Let held messages be delivered again.
    Release(Ids),
    /// Try messages again now, ignoring backoff.
    Retry(Ids),
    /// Remove messages from the queue without delivering or bouncing them.
    Delete(Ids),
}

#[derive(Args)]
pub struct Ids {
    /// Queue ids (see `postroom queue list`).
    #[arg(required_unless_present = "all")]
    ids: Vec<String>,
    /// Every message in the queue.
    #[arg(long, conflicts_with = "ids")]
    all: bool,
}

pub fn run(config: Option<PathBuf>, command: QueueCommand) -> anyhow::Result<ExitCode> {
    let config = crate::load_config(config)?;
    let queue = Queue::from_config(&config);
    let mut out = std::io::stdout().lock();
    match command {
        QueueCommand::List { json } => list(&queue, json, &mut out)?,
        QueueCommand::Show { id, json } => {
            let message = queue.read(&QueueId::parse(&id)?)?;
            if json {
                writeln!(
                    out,
                    "{}",
                    serde_json::to_string_pretty(&describe(&message, true))?
                )?;
            } else {
                show(&message, &mut out)?;
            }
        }
        QueueCommand::Hold(ids) => {
            change(&queue, ids, "held", |m| m.record(&[LogEntry::Hold], true))?
        }
        QueueCommand::Release(ids) => change(&queue, ids, "released", |m| {
            m.record(&[LogEntry::Release], true)
        })?,
        QueueCommand::Retry(ids) => change(&queue, ids, "scheduled for retry", |m| {
            m.record(&[LogEntry::RetryNow], true)
        })?,
        QueueCommand::Delete(ids) => {
            let ids = resolve(&queue, ids)?;
            for id in ids {
                queue.lock_waiting(&id, PATIENCE)?.remove(true)?;
                writeln!(out, "{id}: deleted")?;
            }
        }
    }
    Ok(ExitCode::SUCCESS)
}

fn resolve(queue: &Queue, ids: Ids) -> anyhow::Result<Vec<QueueId>> {
    if ids.all {
        return Ok(queue.list()?);
    }
    ids.ids.iter().map(|s| Ok(QueueId::parse(s)?)).collect()
}

fn change(
    queue: &Queue,
    ids: Ids,
    done: &str,
    apply: impl Fn(
        &mut postroom::store::queue::LockedMessage,
    ) -> Result<(), postroom::store::queue::QueueError>,
) -> anyhow::Result<()> {
    for id in resolve(queue, ids)? {
        let mut locked = queue.lock_waiting(&id, PATIENCE)?;
        apply(&mut locked).with_context(|| format!("message {id}"))?;
        // A hint file wakes a watching runner for released or retried mail.
        let _ = std::fs::File::create(queue.root().join("todo").join(id.as_str()));
        postroom::say!("{id}: {done}");
    }
    Ok(())
}

fn list(queue: &Queue, json: bool, out: &mut impl Write) -> anyhow::Result<()> {
    let ids = queue.list()?;
    if json {
        // Streamed element by element: a queue of 100,000 messages must not
        // be built as one value in memory.
        write!(out, "[")?;
        let mut first = true;
        for id in ids {
            let Ok(message) = queue.read(&id) else {
                continue;
            };
            write!(
                out,
                "{}{}",
                if first { "\n" } else { ",\n" },
                describe(&message, false)
            )?;
            first = false;
        }
        writeln!(out, "\n]")?;
        return Ok(());
    }
    let mut count = 0;
    for id in ids {
        // A message finished between readdir and read is simply gone.
        let message = match queue.read(&id) {
            Ok(m) => m,
            Err(postroom::store::queue::QueueError::NotFound(_)) => continue,
            Err(e) => {
                writeln!(out, "{id}  unreadable: {e}")?;
                continue;
            }
        };
        let pending = message.pending().count();
        let total = message.envelope.recipients.len();
        let state = if message.state.held {
            "held"
        } else {
            state_word(&message)
        };
        writeln!(
            out,
            "{id}  {date}  {size:>9}  {state:<8}  <{sender}>  {pending}/{total} pending  priority {priority}",
            date = postroom::proto::message::rfc5322_date(message.envelope.arrived),
            priority = message.envelope.priority.name(),
            size = message.body_size,
            sender = message.envelope.sender,
        )?;
        for (_, r) in message.pending() {
            writeln!(out, "    {}", r.address)?;
        }
        if let Some(problem) = problem(&message) {
            writeln!(out, "    problem: {problem}")?;
        }
        count += 1;
    }
    writeln!(out, "{count} message(s) in the queue")?;
    Ok(())
}

fn state_word(message: &QueuedMessage) -> &'static str {
    if message.is_torn() {
        return "torn";
    }
    match message.next_due() {
        Some(0) => "active",
        Some(t) if t <= postroom::store::fsutil::now_secs() => "active",
        Some(_) => "deferred",
        None if message.is_finished() => "finished",
        None => "bouncing",
    }
}

/// What is wrong with a message that no runner will fix by itself, or
/// that a runner must finish, with what to do.
pub fn problem(message: &QueuedMessage) -> Option<String> {
    if let Err(torn) = message.intact() {
        return Some(torn.to_string());
    }
    if message.is_finished() {
        return Some(if message.state.held {
            format!(
                "nothing left to deliver, but held: `postroom queue release {id}` lets the \
                 next smtp-send pass remove it, or `postroom queue delete {id}`",
                id = message.id
            )
        } else {
            "nothing left to deliver (a runner stopped before removing it); the next \
             smtp-send pass removes it"
                .to_string()
        });
    }
    message
        .state
        .hold_reason
        .as_ref()
        .map(|reason| format!("held by smtp-send: {reason}"))
}

fn describe(message: &QueuedMessage, with_headers: bool) -> serde_json::Value {
    let env = &message.envelope;
    let recipients: Vec<_> = env
        .recipients
        .iter()
        .zip(&message.state.recipients)
        .map(|(r, s)| {
            let route = match &r.route {
                Route::Local => json!("local"),
                Route::Remote => json!("remote"),
                Route::Pipe(command) => json!({ "pipe": command.as_str() }),
            };
            let state = match s {
                RcptState::Pending { next_try, attempts, last_reply, .. } => json!({
                    "state": if *attempts == 0 { "pending" } else { "deferred" },
                    "next_try": next_try, "attempts": attempts, "last_reply": last_reply,
                }),
                RcptState::Delivered { at, reply } => json!({ "state": "delivered", "at": at, "reply": reply }),
                RcptState::Failed { at, reply, bounced } => {
                    json!({ "state": "failed", "at": at, "reply": reply, "bounced": bounced })
                }
            };
            json!({ "address": r.address.to_string(), "route": route, "orcpt": r.orcpt.as_ref().map(|o| o.as_str()),
                    "notify": r.notify.as_ref().map(|n| n.as_str()), "status": state })
        })
        .collect();
    let mut value = json!({
        "id": message.id.as_str(),
        "arrived": env.arrived,
        "sender": env.sender.to_string(),
        "size": message.body_size,
        "held": message.state.held,
        "hold_reason": message.state.hold_reason,
        "problem": problem(message),
        "warned": message.state.warned,
        "helo": env.helo.as_ref().map(|h| h.as_str()),
        "client": env.client.as_ref().map(|h| h.as_str()),
        "auth": env.auth.as_ref().map(|h| h.as_str()),
        "protocol": env.protocol.as_ref().map(|h| h.as_str()),
        "priority": env.priority.name(),
        "recipients": recipients,
    });
    if with_headers {
        value["headers"] = json!(headers_of(message));
    }
    value
}

fn headers_of(message: &QueuedMessage) -> Vec<(String, String)> {
    use std::io::Read;
    let mut head = Vec::new();
    if let Ok(body) = message.body() {
        let _ = body.take(64 * 1024).read_to_end(&mut head);
    }
    let len = postroom::proto::message::header_len(&head);
    postroom::proto::message::header_fields(&head[..len])
}

fn show(message: &QueuedMessage, out: &mut impl Write) -> anyhow::Result<()> {
    let env = &message.envelope;
    writeln!(out, "id:       {}", message.id)?;
    writeln!(
        out,
        "arrived:  {}",
        postroom::proto::message::rfc5322_date(env.arrived)
    )?;
    writeln!(out, "sender:   <{}>", env.sender)?;
    writeln!(out, "size:     {} bytes", message.body_size)?;
    writeln!(out, "priority: {}", env.priority.name())?;
    if let Some(client) = &env.client {
        writeln!(
            out,
            "client:   {client} (helo {})",
            env.helo.as_ref().map(|h| h.as_str()).unwrap_or("-")
        )?;
    }
    if let Some(auth) = &env.auth {
        writeln!(out, "auth:     {auth}")?;
    }
    if message.state.held {
        writeln!(
            out,
            "state:    held (postroom queue release {})",
            message.id
        )?;
    }
    if let Some(problem) = problem(message) {
        writeln!(out, "problem:  {problem}")?;
    }
    writeln!(out, "recipients:")?;
    for (r, s) in env.recipients.iter().zip(&message.state.recipients) {
        let how = match &r.route {
            Route::Local => "local".to_string(),
            Route::Remote => "remote".to_string(),
            Route::Pipe(command) => format!("pipe |{command}"),
        };
        let state = match s {
            RcptState::Pending { attempts: 0, .. } => "pending".to_string(),
            RcptState::Pending {
                next_try,
                attempts,
                last_reply,
                ..
            } => format!(
                "deferred after {attempts} attempt(s), next {}: {}",
                postroom::proto::message::rfc5322_date(*next_try),
                last_reply.as_deref().unwrap_or("")
            ),
            RcptState::Delivered { reply, .. } => format!("delivered: {reply}"),
            RcptState::Failed { reply, bounced, .. } => {
                format!("failed{}: {reply}", if *bounced { ", bounced" } else { "" })
            }
        };
        writeln!(out, "  <{}> ({how}) {state}", r.address)?;
    }
    if message.is_torn() {
        writeln!(out, "headers:  not shown: the body is torn")?;
        return Ok(());
    }
    writeln!(out, "headers:")?;
    for (name, value) in headers_of(message) {
        writeln!(out, "  {name}: {value}")?;
    }
    Ok(())
}
