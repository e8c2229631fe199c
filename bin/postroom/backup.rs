//! `postroom backup` and `restore`: the tree as one `.tar.zst` file, taken
//! while the servers run (the work is in `postroom::store::backup`).

use std::fs::{File, OpenOptions};
use std::os::unix::fs::OpenOptionsExt;
use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context;
use clap::Args;
use postroom::store::{backup, fsutil};

#[derive(Args)]
pub struct BackupArgs {
    /// The archive to write (zstd-compressed tar; never overwritten).
    #[arg(long, value_name = "FILE")]
    to: PathBuf,
    /// Also every mailbox (messages, flags, keywords, UIDs) and the queue.
    #[arg(long)]
    mail: bool,
}

#[derive(Args)]
pub struct RestoreArgs {
    /// The archive `postroom backup` wrote.
    #[arg(long, value_name = "FILE")]
    from: PathBuf,
    /// Replace files that exist (by default they are kept).
    #[arg(long)]
    overwrite: bool,
}

pub fn backup(config: Option<PathBuf>, args: BackupArgs) -> anyhow::Result<ExitCode> {
    let config = crate::load_config(config)?;
    let out = OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(&args.to)
        .with_context(|| {
            format!(
                "{}: cannot create the backup (an existing file is never overwritten)",
                args.to.display()
            )
        })?;
    let report = match backup::backup(&config, out, &args.to, args.mail) {
        Ok(report) => report,
        Err(e) => {
            // Half an archive is no backup.
            let _ = std::fs::remove_file(&args.to);
            return Err(e.into());
        }
    };
    let dir = fsutil::parent_of(&args.to);
    fsutil::fsync_dir(dir).with_context(|| format!("{}", dir.display()))?;
    eprintln!(
        "postroom: {} file(s), {} byte(s) backed up to {}{}",
        report.files,
        report.bytes,
        args.to.display(),
        if args.mail {
            ""
        } else {
            " (without mail: add --mail)"
        }
    );
    if report.unlocked > 0 {
        eprintln!(
            "postroom: {} queued message(s) were read while a runner held them (safe: queue \
             files are immutable and logs append-only)",
            report.unlocked
        );
    }
    Ok(ExitCode::SUCCESS)
}

pub fn restore(config: Option<PathBuf>, args: RestoreArgs) -> anyhow::Result<ExitCode> {
    let path = postroom::config::Config::locate(config.as_deref());
    // With a config in place, become the tree's owner first, as every
    // command does; with none (a wiped tree), the archive brings it.
    if path.exists() {
        crate::load_config(Some(path.clone()))?;
    }
    let input = File::open(&args.from).with_context(|| format!("{}", args.from.display()))?;
    let report = backup::restore(&path, std::io::BufReader::new(input), args.overwrite)?;
    eprintln!(
        "postroom: {} file(s) restored from {}{}",
        report.files,
        args.from.display(),
        if report.kept > 0 {
            format!(
                "; {} file(s) that exist were kept (--overwrite replaces them)",
                report.kept
            )
        } else {
            String::new()
        }
    );
    Ok(ExitCode::SUCCESS)
}
