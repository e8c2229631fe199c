//! postroom-bench: prints the figures the issues ask for, measured here.
//!
//! `postroom-bench foundation` measures, in one run and on one filesystem:
//! - the raw rate of this machine's durable-write loop (write 4 KiB to tmp/,
//!   fsync, rename into new/, fsync new/), with 1 and 8 writers;
//! - `mail-inject` → queue → maildir end to end (4 KiB messages, local
//!   recipient, immediate delivery), with 1 and 8 parallel injectors, each
//!   message a new `mail-inject` process as cron or a CGI would run it;
//! and the ratio of the two. It is a benchmark, not a test: it asserts
//! nothing but that every message arrived.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, ExitCode, Stdio};
use std::time::Instant;

use clap::{Parser, Subcommand};

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
        #[arg(long, default_value_t = 2000)]
        messages: usize,
    },
}

const MESSAGE_SIZE: usize = 4096;

fn main() -> ExitCode {
    let cli = Cli::parse();
    let base = cli
        .dir
        .unwrap_or_else(std::env::temp_dir)
        .join(format!("postroom-bench-{}", std::process::id()));
    let result = match cli.bench {
        Bench::Foundation { messages } => foundation(&base, messages),
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

fn foundation(base: &Path, messages: usize) -> anyhow::Result<()> {
    println!(
        "postroom-bench foundation: {messages} messages of {MESSAGE_SIZE} bytes per run, in {}",
        base.display()
    );
    let mut raw = Vec::new();
    for writers in [1, 8] {
        let rate = raw_rate(&base.join(format!("raw{writers}")), messages, writers)?;
        println!("raw tmp+fsync+rename+fsync loop, {writers} writer(s): {rate:>8.0} msg/s");
        raw.push(rate);
    }
    for (i, injectors) in [1, 8].into_iter().enumerate() {
        let rate = inject_rate(
            &base.join(format!("inject{injectors}")),
            messages,
            injectors,
        )?;
        println!(
            "mail-inject -> queue -> maildir, {injectors} injector(s): {rate:>8.0} msg/s = {:.0}% of raw with {injectors}",
            100.0 * rate / raw[i]
        );
    }
    Ok(())
}

/// The bare durable-write loop: what any mail system on this disk pays.
fn raw_rate(dir: &Path, messages: usize, writers: usize) -> anyhow::Result<f64> {
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

/// mail-inject processes delivering to one local user.
fn inject_rate(dir: &Path, messages: usize, injectors: usize) -> anyhow::Result<f64> {
    let bin = std::env::current_exe()?.with_file_name("postroom");
    let inject = std::env::current_exe()?.with_file_name("mail-inject");
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
                let (inject, config, body) = (&inject, &config, &body);
                scope.spawn(move || -> anyhow::Result<()> {
                    for _ in 0..per {
                        let mut child = Command::new(inject)
                            .arg("--config")
                            .arg(config)
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
    let delivered = std::fs::read_dir(dir.join("mail/bench.test/sink/new"))?.count();
    anyhow::ensure!(
        delivered == per * injectors,
        "only {delivered} of {} delivered",
        per * injectors
    );
    Ok(delivered as f64 / elapsed)
}
