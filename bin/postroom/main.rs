//! postroom: the administrator's command (see `postroom(8)`).
//!
//! Creates a tree, edits the users, aliases and domains files (plain text,
//! edited under a lock and replaced atomically, so hand edits stay possible),
//! hashes passwords, makes DKIM keys, checks the whole tree, inspects and steers the queue,
//! and runs a demo system on loopback. Each subcommand is one small function
//! in a file of its own.

#![forbid(unsafe_code)]

mod admin;
mod backup;
mod bsmtp;
mod check;
mod demo;
mod dkim;
mod expire;
mod export;
mod mailall;
mod queue_cmd;
mod quota;
mod tlsrpt;

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(
    name = "postroom",
    version,
    about = "Administer a postroom mail system"
)]
struct Cli {
    /// The config file (default /etc/postroom/postroom.toml).
    #[arg(long, global = true, env = "POSTROOM_CONFIG", value_name = "FILE")]
    config: Option<PathBuf>,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Create a fresh tree: config, users, aliases, domains, folders, a
    /// self-signed certificate.
    Init(admin::InitArgs),
    /// Add, remove, list users, or change a password.
    #[command(subcommand)]
    User(admin::UserCommand),
    /// Add, remove or list aliases.
    #[command(subcommand)]
    Alias(admin::AliasCommand),
    /// Add, remove or list local domains.
    #[command(subcommand)]
    Domain(admin::DomainCommand),
    /// Hash a password for the users file (read from stdin if not given).
    Passwd(admin::PasswdArgs),
    /// Check config, users, aliases, domains, the queue and the mail tree;
    /// list every problem and exit non-zero if there is one.
    Check(check::CheckArgs),
    /// Inspect and steer the mail queue.
    #[command(subcommand)]
    Queue(queue_cmd::QueueCommand),
    /// Run a demo system on loopback ports in a sandbox tree.
    Demo(demo::DemoArgs),
    /// Make DKIM signing keys and print the DNS records to publish.
    #[command(subcommand)]
    Dkim(dkim::DkimCommand),
    /// Send the SMTP TLS reports (RFC 8460) smtp-send wrote down.
    #[command(subcommand)]
    Tlsrpt(tlsrpt::TlsrptCommand),
    /// Move queued mail as batch SMTP (RFC 2442): export a domain's mail
    /// to a file, import a batch into the queue.
    #[command(subcommand)]
    Bsmtp(bsmtp::BsmtpCommand),
    /// Export a user's mail as mbox files or a Maildir++ copy.
    Export(export::ExportArgs),
    /// Back up config, users, aliases, lists, scripts and (--mail) mail
    /// and queue to one .tar.zst, while the servers run.
    Backup(backup::BackupArgs),
    /// Put a backup back in place.
    Restore(backup::RestoreArgs),
    /// Send the message on standard input to every user (of --domain).
    Mailall(mailall::MailallArgs),
    /// Mailbox usage against the quotas.
    #[command(subcommand)]
    Quota(quota::QuotaCommand),
    /// Remove messages older than their folder's age in [expire].
    Expire(expire::ExpireArgs),
}

fn main() -> ExitCode {
    postroom::store::fsutil::tighten_umask();
    postroom::net::log::init("postroom", "warn");
    let cli = Cli::parse();
    let config = cli.config;
    let result = match cli.command {
        Command::Init(args) => admin::init(config, args),
        Command::User(cmd) => admin::user(config, cmd),
        Command::Alias(cmd) => admin::alias(config, cmd),
        Command::Domain(cmd) => admin::domain(config, cmd),
        Command::Passwd(args) => admin::passwd(config, args),
        Command::Check(args) => check::run(config, args),
        Command::Queue(cmd) => queue_cmd::run(config, cmd),
        Command::Demo(args) => demo::run(args),
        Command::Dkim(cmd) => dkim::run(config, cmd),
        Command::Tlsrpt(cmd) => tlsrpt::run(config, cmd),
        Command::Bsmtp(cmd) => bsmtp::run(config, cmd),
        Command::Export(args) => export::run(config, args),
        Command::Backup(args) => backup::backup(config, args),
        Command::Restore(args) => backup::restore(config, args),
        Command::Mailall(args) => mailall::run(config, args),
        Command::Quota(cmd) => quota::run(config, cmd),
        Command::Expire(args) => expire::run(config, args),
    };
    match result {
        Ok(code) => code,
        // A closed pipe (`postroom queue list | head`) is not an error.
        Err(e) if postroom::cli::reader_left(e.as_ref()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("postroom: {e:#}");
            ExitCode::FAILURE
        }
    }
}

/// Loads the config named by `--config`, `POSTROOM_CONFIG` or the default,
/// and leaves root behind (see `privileges`).
pub fn load_config(config: Option<PathBuf>) -> anyhow::Result<postroom::config::Config> {
    let path = postroom::config::Config::locate(config.as_deref());
    let config = postroom::config::Config::load(&path)?;
    // Files this command writes must belong to the tree's owner, not root.
    postroom::net::privileges::drop_privileges(&config)?;
    Ok(config)
}
