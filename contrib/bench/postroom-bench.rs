//! postroom-bench: prints the figures the issues ask for, measured here.
//!
//! `postroom-bench foundation` measures, in one run and on one filesystem:
//! - the raw rate of this machine's durable-write loop (write 4 KiB to tmp/,
//!   fsync, rename into new/, fsync new/), with 1 and 8 writers;
//! - `mail-inject` → queue → maildir end to end (4 KiB messages, local
//!   recipient, immediate delivery), with 1 and 8 parallel injectors, each
//!   message a new `mail-inject` process as cron or a CGI would run it;
//! - the queued path: `mail-inject -odq` into the queue, then one runner
//!   pass from the queue into the maildir;
//!
//! each with its ratio to the raw rate. `smtp` measures smtp-recv, `send`
//! smtp-send (see their modules). It is a benchmark, not a test: it
//! asserts nothing but that every message arrived.
//!
//! `postroom-bench smtp` and `postroom-bench pop3` measure the servers on
//! loopback; see `smtp.rs` and `pop3.rs`. `postroom-bench auth` measures
//! what a burst of failed logins costs each server (`auth.rs`),
//! `postroom-bench net` the connection layer alone (`net.rs`), and
//! `postroom-bench multihost` one tree shared by two hosts (`multihost.rs`).
//! `postroom-bench table` prints issue 18's table, each figure beside its
//! goal (`table.rs`).

#![forbid(unsafe_code)]

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, ExitCode, Stdio};
use std::time::Instant;

use clap::{Parser, Subcommand};

mod auth;
mod imap;
mod list;
mod multihost;
mod net;
mod pop3;
mod send;
mod server;
mod sieve;
mod smtp;
mod table;

#[derive(Parser)]
#[command(name = "postroom-bench", about = "Measure postroom on this machine")]
struct Cli {
    /// Where to build the scratch trees (default: the temp folder). Put it on
    /// the filesystem the mail will live on: fsync cost is the figure.
    #[arg(long, global = true)]
    dir: Option<PathBuf>,
    #[command(subcommand)]
    bench: Bench,
}

#[derive(Subcommand)]
enum Bench {
    /// Raw fsync-bound write rate against mail-inject → queue → maildir.
    Foundation {
        /// Messages per measurement.
        #[arg(long, default_value_t = 1000)]
        messages: usize,
        /// Rounds; each figure is the median. Every end-to-end run is paired
        /// with a raw run just before it, because a shared disk's fsync
        /// cost drifts by several times within a minute.
        #[arg(long, default_value_t = 3)]
        rounds: usize,
    },
    /// postroom::net alone: resident memory per idle connection.
    Net {
        /// Idle sessions held open (each with its client in this process).
        #[arg(long, default_value_t = 4000)]
        sessions: usize,
    },
    /// smtp-recv under load: rates, dot-to-250 latency, greeting time, RSS.
    Smtp {
        /// Messages per session count.
        #[arg(long, default_value_t = 2000)]
        messages: usize,
        /// Idle sessions held open for the memory figure.
        #[arg(long, default_value_t = 10_000)]
        idle: usize,
    },
    /// list-expand: one post to a big list committed to the queue.
    List {
        /// Members of the list.
        #[arg(long, default_value_t = 100_000)]
        members: usize,
        /// Give the list an unsubscribe_url, so each member gets a copy
        /// of their own with their one-click URL (list-web(8)).
        #[arg(long)]
        one_click: bool,
    },
    /// Sieve: messages through a 20-rule script, alone and with delivery.
    Sieve {
        #[arg(long, default_value_t = 2000)]
        messages: usize,
    },
    /// smtp-send emptying a queue into a loopback SMTP sink.
    Send {
        /// Messages queued (one recipient each; then as many recipients
        /// in messages of 1,000).
        #[arg(long, default_value_t = 10_000)]
        messages: usize,
    },
    /// pop3-serve: fetch rates, time to the first LIST line, RSS per session.
    Pop3 {
        /// Messages in each of the 8 mailboxes fetched.
        #[arg(long, default_value_t = 1000)]
        messages: usize,
        /// Size of each of those messages, in bytes.
        #[arg(long, default_value_t = 20 * 1024)]
        size: usize,
        /// Messages in the mailbox the time-to-first-LIST figure opens.
        #[arg(long, default_value_t = 10_000)]
        big: usize,
        /// Sessions held open for the memory figure.
        #[arg(long, default_value_t = 1000)]
        sessions: usize,
    },
    /// imap-serve on a large folder: SELECT, FETCH, SEARCH, greeting, RSS.
    Imap {
        /// Messages in the folder.
        #[arg(long, default_value_t = 100_000)]
        messages: usize,
        /// Mean size of those messages in bytes (sizes spread from a
        /// quarter of it to 1.75 times it).
        #[arg(long, default_value_t = 24 * 1024)]
        size: usize,
        /// Sessions held in IDLE for the memory figure.
        #[arg(long, default_value_t = 10_000)]
        idle: usize,
        /// Messages in the folder those sessions have selected.
        #[arg(long, default_value_t = 10_000)]
        idle_messages: usize,
        /// Rounds each client of the multi-client figure runs (login,
        /// select, fetch, store, append, store, expunge, logout).
        #[arg(long, default_value_t = 20)]
        rounds: usize,
    },
    /// SMTP accept → maildir on one tree over a shared filesystem, from two
    /// hosts and from one, against a local tree (contrib/multihost/run).
    Multihost {
        /// Two mounts of one shared filesystem, `A:B`.
        #[arg(long)]
        mounts: String,
        /// Messages per measurement.
        #[arg(long, default_value_t = 2000)]
        messages: usize,
    },
    /// Issue 18's table: mailsort against procmail and the durable-write
    /// floor, mail-inject against the raw loop, smtp-recv's inetd start
    /// against /bin/true, idle IMAP memory; each beside its goal.
    Table {
        /// Messages per rate (mailsort, procmail, mail-inject, raw loop).
        #[arg(long, default_value_t = 500)]
        messages: usize,
        /// Spawns per start-up median.
        #[arg(long, default_value_t = 50)]
        runs: usize,
        /// Users and aliases in the big tree of the start-up figure.
        #[arg(long, default_value_t = 100_000)]
        big: usize,
        /// Messages in the folder of the IMAP memory figure.
        #[arg(long, default_value_t = 10_000)]
        imap_messages: usize,
        /// Sessions in IDLE for the IMAP memory figure (0: skip it).
        #[arg(long, default_value_t = 10_000)]
        imap_idle: usize,
        /// The static build of smtp-recv and the per-message programs
        /// (contrib/install/build-static), measured beside the glibc build
        /// when there.
        #[arg(long, value_name = "DIR", default_value = table::STATIC_BUILD)]
        static_dir: PathBuf,
    },
    /// Failed logins at once and in turn: peak and settled RSS, threads.
    Auth {
        /// Failed logins per server and run.
        #[arg(long, default_value_t = 200)]
        clients: usize,
        /// Seconds after the last answer for the settled figure.
        #[arg(long, default_value_t = 10)]
        settle: u64,
    },
}

pub const MESSAGE_SIZE: usize = 4096;

fn main() -> ExitCode {
    let cli = Cli::parse();
    let base = cli
        .dir
        .unwrap_or_else(std::env::temp_dir)
        .join(format!("postroom-bench-{}", std::process::id()));
    let result = match cli.bench {
        Bench::Foundation { messages, rounds } => foundation(&base, messages, rounds.max(1)),
        Bench::Net { sessions } => net::run(sessions),
        Bench::Smtp { messages, idle } => smtp::run(&base, messages, idle),
        Bench::Send { messages } => send::run(&base, messages),
        Bench::List { members, one_click } => list::run(&base, members, one_click),
        Bench::Sieve { messages } => sieve::run(&base, messages),
        Bench::Pop3 {
            messages,
            size,
            big,
            sessions,
        } => pop3::run(&base, messages, size, big, sessions),
        Bench::Imap {
            messages,
            size,
            idle,
            idle_messages,
            rounds,
        } => imap::run(
            &base,
            imap::Sizes {
                messages,
                size,
                idle,
                idle_messages,
            },
            rounds,
        ),
        Bench::Auth { clients, settle } => auth::run(&base, clients, settle),
        Bench::Table {
            messages,
            runs,
            big,
            imap_messages,
            imap_idle,
            static_dir,
        } => table::run(
            &base,
            &table::Options {
                messages: messages.max(1),
                runs: runs.max(1),
                big,
                imap: (imap_idle > 0).then_some((imap_messages, imap_idle)),
                static_dir,
            },
        ),
        Bench::Multihost { mounts, messages } => multihost::run(&base, &mounts, messages),
    };
    let _ = std::fs::remove_dir_all(&base);
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("postroom-bench: {e:#}");
            ExitCode::FAILURE
        }
    }
}

/// (label, raw writers, runs); each run is (rate, raw rate just before).
type Figure = (&'static str, usize, Vec<(f64, f64)>);

fn foundation(base: &Path, messages: usize, rounds: usize) -> anyhow::Result<()> {
    println!(
        "postroom-bench foundation: {messages} messages of {MESSAGE_SIZE} bytes per run, {rounds} round(s), in {}",
        base.display()
    );
    let mut figures: Vec<Figure> = vec![
        (
            "mail-inject -> queue -> maildir, 1 injector ",
            1,
            Vec::new(),
        ),
        (
            "mail-inject -> queue -> maildir, 8 injectors",
            8,
            Vec::new(),
        ),
        (
            "mail-inject -odq -> queue,       8 injectors",
            8,
            Vec::new(),
        ),
        (
            "queue -> maildir, one runner pass           ",
            1,
            Vec::new(),
        ),
    ];
    let inject = std::env::current_exe()?.with_file_name("mail-inject");
    for round in 0..rounds {
        let dir = |name: &str| base.join(format!("{name}-{round}"));
        for (i, figure) in figures.iter_mut().enumerate() {
            let raw = raw_rate(&dir(&format!("raw{i}")), messages, figure.1)?;
            let rate = match i {
                0 => inject_rate(&inject, &dir("inject1"), messages, 1, false)?,
                1 => inject_rate(&inject, &dir("inject8"), messages, 8, false)?,
                2 => inject_rate(&inject, &dir("queued"), messages, 8, true)?,
                _ => runner_rate(&dir("queued"))?,
            };
            figure.2.push((rate, raw));
        }
        let _ = std::fs::remove_dir_all(base);
    }
    let median = |mut v: Vec<f64>| {
        v.sort_by(|a, b| a.total_cmp(b));
        v[v.len() / 2]
    };
    for (label, writers, runs) in figures {
        let rate = median(runs.iter().map(|r| r.0).collect());
        let raw = median(runs.iter().map(|r| r.1).collect());
        let ratio = median(runs.iter().map(|r| r.0 / r.1).collect());
        println!(
            "{label}: {rate:>6.0} msg/s; raw loop with {writers} writer(s) just before: {raw:>6.0} msg/s; ratio {:>3.0}%",
            100.0 * ratio
        );
    }
    Ok(())
}

/// The bare durable-write loop: what any mail system on this disk pays.
pub fn raw_rate(dir: &Path, messages: usize, writers: usize) -> anyhow::Result<f64> {
    durable_loop(dir, messages, writers, None)
}

/// The durable-write loop with `program` and `args` (e.g. `/bin/true`)
/// spawned and waited for before each write: the ceiling of any injector
/// that is one process per message on this machine, since it pays at
/// least a process start and the write.
pub fn raw_rate_after_spawning(
    dir: &Path,
    messages: usize,
    writers: usize,
    program: &Path,
    args: &[&str],
) -> anyhow::Result<f64> {
    durable_loop(dir, messages, writers, Some((program, args)))
}

fn durable_loop(
    dir: &Path,
    messages: usize,
    writers: usize,
    spawn_first: Option<(&Path, &[&str])>,
) -> anyhow::Result<f64> {
    std::fs::create_dir_all(dir.join("tmp"))?;
    std::fs::create_dir_all(dir.join("new"))?;
    let data = vec![b'x'; MESSAGE_SIZE];
    let start = Instant::now();
    std::thread::scope(|scope| -> anyhow::Result<()> {
        let handles: Vec<_> = (0..writers)
            .map(|w| {
                let data = &data;
                scope.spawn(move || -> anyhow::Result<()> {
                    for i in 0..messages / writers {
                        if let Some((program, args)) = spawn_first {
                            let status = Command::new(program)
                                .args(args)
                                .stdin(Stdio::null())
                                .stdout(Stdio::null())
                                .status()?;
                            anyhow::ensure!(status.success(), "{program:?} failed: {status}");
                        }
                        let tmp = dir.join("tmp").join(format!("{w}.{i}"));
                        let mut f = std::fs::File::create(&tmp)?;
                        f.write_all(data)?;
                        f.sync_all()?;
                        std::fs::rename(&tmp, dir.join("new").join(format!("{w}.{i}")))?;
                        std::fs::File::open(dir.join("new"))?.sync_all()?;
                    }
                    Ok(())
                })
            })
            .collect();
        for h in handles {
            h.join().map_err(|_| anyhow::anyhow!("writer panicked"))??;
        }
        Ok(())
    })?;
    Ok((messages / writers * writers) as f64 / start.elapsed().as_secs_f64())
}

/// A fresh tree in `dir` with the local user sink@bench.test; returns the
/// config path.
pub fn bench_tree(dir: &Path) -> anyhow::Result<PathBuf> {
    let bin = std::env::current_exe()?.with_file_name("postroom");
    let status = Command::new(&bin)
        .args([
            "init",
            dir.to_str().unwrap_or_default(),
            "--domain",
            "bench.test",
        ])
        .stdout(Stdio::null())
        .status()?;
    anyhow::ensure!(status.success(), "postroom init failed");
    let config = dir.join("postroom.toml");
    let status = Command::new(&bin)
        .arg("--config")
        .arg(&config)
        .args(["user", "add", "sink@bench.test", "--password", "{PLAIN}x"])
        .stdout(Stdio::null())
        .status()?;
    anyhow::ensure!(status.success(), "postroom user add failed");
    Ok(config)
}

/// Lifts the connection caps of the tree's config: a benchmark's clients
/// all come from loopback, so the per-address cap must not bite.
pub fn lift_connection_caps(config: &Path) -> anyhow::Result<()> {
    let text = std::fs::read_to_string(config)?.replace(
        "[limits]\n",
        "[limits]\nconnections_per_ip = 20000\nconnections = 20000\n",
    );
    std::fs::write(config, text)?;
    Ok(())
}

/// mail-inject processes delivering to one local user.
fn inject_rate(
    inject: &Path,
    dir: &Path,
    messages: usize,
    injectors: usize,
    queue_only: bool,
) -> anyhow::Result<f64> {
    let config = bench_tree(dir)?;
    let mut body = b"Subject: bench\n\n".to_vec();
    while body.len() < MESSAGE_SIZE {
        body.extend_from_slice(
            b"0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcde\n",
        );
    }
    body.truncate(MESSAGE_SIZE);

    let per = messages / injectors;
    let start = Instant::now();
    std::thread::scope(|scope| -> anyhow::Result<()> {
        let handles: Vec<_> = (0..injectors)
            .map(|_| {
                let (config, body) = (&config, &body);
                scope.spawn(move || -> anyhow::Result<()> {
                    for _ in 0..per {
                        let mut child = Command::new(inject)
                            .arg("--config")
                            .arg(config)
                            .args(if queue_only { &["-odq"][..] } else { &[] })
                            .arg("sink@bench.test")
                            .stdin(Stdio::piped())
                            .spawn()?;
                        if let Some(mut stdin) = child.stdin.take() {
                            stdin.write_all(body)?;
                        }
                        anyhow::ensure!(child.wait()?.success(), "mail-inject failed");
                    }
                    Ok(())
                })
            })
            .collect();
        for h in handles {
            h.join()
                .map_err(|_| anyhow::anyhow!("injector panicked"))??;
        }
        Ok(())
    })?;
    let elapsed = start.elapsed().as_secs_f64();
    let done = if queue_only {
        std::fs::read_dir(dir.join("queue/mess"))?.count()
    } else {
        std::fs::read_dir(dir.join("mail/bench.test/sink/new"))?.count()
    };
    anyhow::ensure!(
        done == per * injectors,
        "only {done} of {} arrived",
        per * injectors
    );
    Ok(done as f64 / elapsed)
}

/// One pass over the queue delivering every message, in this process.
fn runner_rate(dir: &Path) -> anyhow::Result<f64> {
    let config = postroom::config::Config::load(&dir.join("postroom.toml"))?;
    let directory = postroom::directory::aliases::Directory::load(&config)?;
    let queue = postroom::store::queue::Queue::from_config(&config);
    let start = Instant::now();
    let ids = queue.list()?;
    for id in &ids {
        if let Some(mut locked) = queue.lock(id)? {
            postroom::delivery::deliver::deliver_local(&config, &directory, &mut locked, true)?;
            anyhow::ensure!(locked.message.is_finished(), "{id} not delivered");
            locked.remove(false)?;
        }
    }
    let elapsed = start.elapsed().as_secs_f64();
    let delivered = std::fs::read_dir(dir.join("mail/bench.test/sink/new"))?.count();
    anyhow::ensure!(
        delivered == ids.len(),
        "only {delivered} of {} delivered",
        ids.len()
    );
    Ok(delivered as f64 / elapsed)
}
