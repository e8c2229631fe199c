//! smtp-send: the queue runner (see `smtp-send(8)`).
//!
//! Delivers what the queue holds: local recipients into their maildirs (or
//! pipe aliases), remote ones by SMTP to their domain's mail exchangers or
//! to the transport the config names. Outcomes go to each message's log;
//! 4xx and connection failures are retried with backoff until
//! `queue.lifetime`, then bounced; 5xx bounce at once; the sender hears of
//! long delays once. Reports never go to the null sender.
//!
//! Runs once over what is due (cron, a systemd timer or `.path` unit),
//! or keeps watching the queue. Any number may run at once, on one host or
//! several sharing the tree: each message is worked by one at a time.

#![forbid(unsafe_code)]

mod client;
mod remote;
mod runner;

use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use anyhow::Context;
use clap::Parser;
use postroom::config::Config;
use postroom::net::tls::ClientTls;
use postroom::store::queue::QueueId;
use postroom::store::watch::Watcher;
use tokio::sync::Notify;

use remote::Dispatcher;
use runner::{Runner, Selection};

#[derive(Parser)]
#[command(name = "smtp-send", version, about = "Deliver the mail queue")]
#[command(group = clap::ArgGroup::new("mode").args(["once", "watch", "message", "flush", "domain"]))]
struct Args {
    /// The config file (default /etc/postroom/postroom.toml).
    #[arg(long, env = "POSTROOM_CONFIG", value_name = "FILE")]
    config: Option<PathBuf>,
    /// One pass over what is due, then exit (the default).
    #[arg(long)]
    once: bool,
    /// Keep running: deliver new mail as it is queued (inotify) and
    /// retries as they fall due; exit on SIGTERM or SIGINT.
    #[arg(long)]
    watch: bool,
    /// Deliver this message now, ignoring backoff (repeatable).
    #[arg(long, value_name = "ID")]
    message: Vec<String>,
    /// Deliver everything now, ignoring backoff.
    #[arg(long)]
    flush: bool,
    /// Deliver the mail waiting for this domain now (what ETRN asks for).
    #[arg(long, value_name = "DOMAIN")]
    domain: Option<String>,
}

fn main() -> ExitCode {
    postroom::store::fsutil::tighten_umask();
    postroom::net::log::init("smtp-send", "info");
    let args = Args::parse();
    match run(args) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("smtp-send: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn run(args: Args) -> anyhow::Result<()> {
    let config = Arc::new(Config::load(&Config::locate(args.config.as_deref()))?);
    postroom::net::privileges::drop_privileges(&config)?;
    let selection = if args.flush {
        Selection::All
    } else if let Some(domain) = &args.domain {
        Selection::Domain(domain.to_ascii_lowercase())
    } else if !args.message.is_empty() {
        let ids = args
            .message
            .iter()
            .map(|id| QueueId::parse(id))
            .collect::<Result<Vec<_>, _>>()?;
        Selection::Messages(ids)
    } else {
        Selection::Due
    };
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    runtime.block_on(async {
        let stopping = Arc::new(AtomicBool::new(false));
        let stop = Arc::new(Notify::new());
        watch_signals(stopping.clone(), stop.clone())?;
        if args.watch {
            watch(config, stopping, stop).await
        } else {
            if let Selection::Messages(ids) = &selection {
                let queue = postroom::store::queue::Queue::from_config(&config);
                for id in ids {
                    // Says "no message ID in the queue" for a wrong id.
                    queue.read(id)?;
                }
            }
            let tls = postroom::net::tls::client_configs(&config)?;
            one_pass(&config, &tls, &stopping, &selection, None).await?;
            Ok(())
        }
    })
}

/// A pass with a fresh view of users, aliases, credentials and DNS. `only`: just these
/// messages (hints), not a scan of the whole queue.
async fn one_pass(
    config: &Arc<Config>,
    tls: &ClientTls,
    stopping: &Arc<AtomicBool>,
    selection: &Selection,
    only: Option<Vec<QueueId>>,
) -> anyhow::Result<Arc<Runner>> {
    let dispatcher = Dispatcher::new(
        config.clone(),
        postroom::net::dns::resolver(config)?,
        tls.clone(),
        runner::load_credentials(config)?,
    );
    let runner = Runner::new(config.clone(), dispatcher, stopping.clone())?;
    let started = std::time::Instant::now();
    match only {
        Some(ids) => runner.pass_over(ids, selection).await,
        None => runner.pass(selection).await?,
    }
    let t = &runner.tally;
    let messages = t.messages.load(Ordering::Relaxed);
    if messages > 0 {
        tracing::info!(
            messages,
            delivered = t.delivered.load(Ordering::Relaxed),
            deferred = t.deferred.load(Ordering::Relaxed),
            failed = t.failed.load(Ordering::Relaxed),
            reports = t.reports.load(Ordering::Relaxed),
            seconds = started.elapsed().as_secs_f64(),
            "pass done"
        );
    }
    Ok(runner)
}

/// `--watch`: a full pass, then wait for a hint in `todo/` (new mail: a
/// pass over just those), the next retry falling due, or the poll for other
/// hosts' changes, which inotify does not see (a minute on a local disk,
/// seconds on a shared filesystem).
async fn watch(
    config: Arc<Config>,
    stopping: Arc<AtomicBool>,
    stop: Arc<Notify>,
) -> anyhow::Result<()> {
    let queue = postroom::store::queue::Queue::from_config(&config);
    queue.create()?;
    // Hints arriving in todo/ wake the loop (one inotify for the process,
    // as IMAP IDLE uses); without inotify the minute's timer does.
    let todo = queue.root().join("todo");
    let watcher = Watcher::new().context("inotify")?;
    let mut hints = watcher
        .watch_arrivals(&todo)
        .with_context(|| format!("watching {}", todo.display()))?;
    // Read once: the system's certificate store takes a while to load.
    let tls = postroom::net::tls::client_configs(&config)?;
    // Other hosts' mail reaches todo/ unseen by inotify: look again after
    // this long (a minute on a local disk, seconds on a shared one).
    let poll = postroom::store::watch::other_hosts_poll(&todo);
    let mut full = true;
    while !stopping.load(Ordering::Relaxed) {
        // Hints from here on wake the next wait, even during the pass.
        hints.mark_seen();
        let only = if full { None } else { Some(queue.todo()?) };
        let runner = match one_pass(&config, &tls, &stopping, &Selection::Due, only).await {
            Ok(runner) => Some(runner),
            Err(e) => {
                // A broken config or an unreadable queue may be fixed
                // while we wait; keep the runner alive.
                tracing::error!("pass failed: {e:#}");
                None
            }
        };
        let now = postroom::store::fsutil::now_secs();
        let next_due = runner
            .map(|r| r.tally.next_due.load(Ordering::Relaxed))
            .unwrap_or(0);
        let wait = match next_due {
            0 => poll.as_secs(),
            at => at.saturating_sub(now).clamp(1, poll.as_secs()),
        };
        tokio::select! {
            _ = hints.changed() => full = false,
            _ = tokio::time::sleep(Duration::from_secs(wait)) => full = true,
            _ = stop.notified() => break,
        }
    }
    tracing::info!("stopping");
    Ok(())
}

/// SIGTERM and SIGINT: finish what is in hand, start nothing new.
fn watch_signals(stopping: Arc<AtomicBool>, stop: Arc<Notify>) -> anyhow::Result<()> {
    use tokio::signal::unix::{SignalKind, signal};
    let mut term = signal(SignalKind::terminate()).context("SIGTERM handler")?;
    let mut int = signal(SignalKind::interrupt()).context("SIGINT handler")?;
    tokio::spawn(async move {
        tokio::select! {
            _ = term.recv() => {}
            _ = int.recv() => {}
        }
        stopping.store(true, Ordering::Relaxed);
        stop.notify_one();
    });
    Ok(())
}
