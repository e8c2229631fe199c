//! `postroom bsmtp export` and `import`: queued mail for a domain as a
//! batch SMTP stream (RFC 2442) and back (the work is in
//! `postroom::delivery::bsmtp`).

use std::fs::{File, OpenOptions};
use std::os::fd::AsFd;
use std::os::unix::fs::OpenOptionsExt;
use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::{Context, bail};
use clap::Subcommand;
use postroom::delivery::bsmtp;
use postroom::directory::aliases::Directory;
use postroom::store::fsutil;

#[derive(Subcommand)]
pub enum BsmtpCommand {
    /// Write the mail queued for DOMAIN as one BSMTP batch and, once it is
    /// fsynced, log it delivered.
    Export {
        /// The destination domain whose queued mail is written.
        #[arg(long, value_name = "DOMAIN")]
        domain: String,
        /// Write to FILE (created; never overwritten) instead of standard
        /// output, which must then be a regular file.
        #[arg(long, value_name = "FILE")]
        to: Option<PathBuf>,
        /// Write the batch but log nothing: the mail stays queued (to look,
        /// or to send through a pipe whose far end cannot confirm).
        #[arg(long)]
        keep: bool,
    },
    /// Queue the messages of a BSMTP batch read on standard input, with
    /// their original envelopes; a malformed or cut batch queues nothing.
    Import,
}

pub fn run(config: Option<PathBuf>, command: BsmtpCommand) -> anyhow::Result<ExitCode> {
    let config = crate::load_config(config)?;
    match command {
        BsmtpCommand::Export { domain, to, keep } => {
            let domain = domain.trim_start_matches('@').to_ascii_lowercase();
            if !postroom::proto::address::is_domain_name(&domain) {
                bail!("{domain:?} is not a domain name");
            }
            let (out, name) = match &to {
                Some(path) => (create(path)?, path.display().to_string()),
                None => (stdout_file(keep)?, "standard output".to_string()),
            };
            let exported = bsmtp::export(&config, &domain, &out, !keep)?;
            if let Some(path) = &to {
                let dir = fsutil::parent_of(path);
                fsutil::fsync_dir(dir).with_context(|| format!("{}", dir.display()))?;
            }
            eprintln!(
                "postroom: {} message(s) for {} recipient(s) at {domain} written to {name}{}",
                exported.messages,
                exported.recipients,
                if keep { "; still queued (--keep)" } else { "" }
            );
            if exported.left > 0 {
                eprintln!(
                    "postroom: {} more message(s) for {domain} are queued (over {} a batch, or \
                     being delivered right now): export again",
                    exported.left,
                    bsmtp::BATCH_MESSAGES
                );
            }
            Ok(ExitCode::SUCCESS)
        }
        BsmtpCommand::Import => {
            let directory = Directory::load(&config)?;
            let imported = bsmtp::import(&config, &directory, std::io::stdin().lock())?;
            eprintln!(
                "postroom: {} message(s) for {} recipient(s) queued",
                imported.messages, imported.recipients
            );
            Ok(ExitCode::SUCCESS)
        }
    }
}

/// The batch file, new: an existing one may be a batch not yet sent.
fn create(path: &PathBuf) -> anyhow::Result<File> {
    OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o640)
        .open(path)
        .with_context(|| {
            format!(
                "{}: cannot create the batch (an existing file is never overwritten: send or \
                 remove it first)",
                path.display()
            )
        })
}

/// Standard output as a file we can fsync: only a regular file can be,
/// so anything else (a pipe, a terminal) needs `--to` or `--keep`.
fn stdout_file(keep: bool) -> anyhow::Result<File> {
    let file = File::from(
        std::io::stdout()
            .as_fd()
            .try_clone_to_owned()
            .context("standard output")?,
    );
    let regular = file.metadata().map(|m| m.is_file()).unwrap_or(false);
    if !regular && !keep {
        bail!(
            "standard output is not a regular file, so the batch could not be fsynced before \
             the mail is logged delivered: use --to FILE (or --keep to write it and keep the \
             mail queued)"
        );
    }
    Ok(file)
}
