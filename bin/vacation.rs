//! vacation: answer mail while the user is away (see `vacation(1)`).
//!
//! The classic Unix interface, as a pipe in the aliases file next to the
//! user's mailbox (`ann: \ann, "|vacation ann@example.org"`): it reads one
//! message on stdin, answers its sender at most once per interval by the
//! rules of RFC 3834 (`postroom::delivery::vacation`), and never fails the delivery
//! it rides on: whatever goes wrong is said on stderr, and only a missing
//! user or a passing problem is an exit code the delivery acts on.

#![forbid(unsafe_code)]

use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Duration;

use anyhow::Context;
use clap::Parser;
use postroom::config::{Config, parse_duration};
use postroom::delivery::vacation::{self, Decision, Settings};
use postroom::directory::aliases::Directory;
use postroom::proto::address::Address;

/// dlmalloc in the static build: see [`postroom::cli::PerMessageAllocator`].
#[cfg(target_env = "musl")]
#[global_allocator]
static ALLOCATOR: postroom::cli::PerMessageAllocator = postroom::cli::PerMessageAllocator;

/// sysexits: unknown user, temporary failure, bad config.
const EX_NOUSER: u8 = 67;
const EX_TEMPFAIL: u8 = 75;
/// The most of a message read (the headers are what matters).
const MAX_READ: u64 = 1 << 20;

#[derive(Parser)]
#[command(
    name = "vacation",
    version,
    about = "Answer mail while away (RFC 3834)"
)]
struct Args {
    /// The config file (default /etc/postroom/postroom.toml).
    #[arg(long, env = "POSTROOM_CONFIG", value_name = "FILE")]
    config: Option<PathBuf>,
    /// Another address of the user's that counts as addressed to them
    /// (repeatable).
    #[arg(short = 'a', long = "alias", value_name = "ADDRESS")]
    aliases: Vec<String>,
    /// Answer one sender at most once in this time: days (7), or a
    /// duration like 12h; "infinite" answers each sender once.
    #[arg(short = 'r', long = "interval", value_name = "INTERVAL")]
    interval: Option<String>,
    /// The records file (default state/vacation/USER in the tree).
    #[arg(short = 'f', long = "db", value_name = "FILE")]
    db: Option<PathBuf>,
    /// The message file (default vacation.msg in the user's maildir):
    /// optional Subject: and From: lines, a blank line, then the text.
    #[arg(short = 'm', long = "message", value_name = "FILE")]
    message: Option<PathBuf>,
    /// The envelope sender (default $SENDER, else the Return-Path header).
    #[arg(long, value_name = "ADDRESS")]
    sender: Option<String>,
    /// List who was answered and when, then exit.
    #[arg(short = 'l', long = "list")]
    list: bool,
    /// Forget who was answered, then exit.
    #[arg(short = 'i', long = "init")]
    init: bool,
    /// The user (their full address).
    user: String,
}

fn main() -> ExitCode {
    postroom::store::fsutil::tighten_umask();
    postroom::net::log::init("vacation", "warn");
    let args = Args::parse();
    match run(args) {
        Ok(code) => ExitCode::from(code),
        // `| head` closing the pipe is not a failure.
        Err(e) if postroom::cli::reader_left(e.as_ref()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("vacation: {e:#}");
            ExitCode::from(EX_TEMPFAIL)
        }
    }
}

fn run(args: Args) -> anyhow::Result<u8> {
    let config =
        postroom::cli::keep_until_exit(Config::load(&Config::locate(args.config.as_deref()))?);
    postroom::net::privileges::drop_privileges(&config)?;
    let directory = postroom::cli::keep_until_exit(Directory::load(&config)?);
    let Some(user) = Address::parse(&args.user)
        .ok()
        .and_then(|a| directory.user(&a))
    else {
        // A missing users file says nothing about this user: try later.
        if let Some(why) = directory.users().unavailable() {
            eprintln!(
                "vacation: {}: local users cannot be looked up now ({why})",
                args.user
            );
            return Ok(EX_TEMPFAIL);
        }
        eprintln!(
            "vacation: {} is no user here (see `postroom user list`)",
            args.user
        );
        return Ok(EX_NOUSER);
    };
    let address = Address::parse(&user.address)?;
    let db = args
        .db
        .clone()
        .unwrap_or_else(|| vacation::records_path(&config, &address));
    if args.list {
        for (at, sender, handle) in vacation::answered(&db)? {
            let handle = if handle.is_empty() {
                String::new()
            } else {
                format!(" ({handle})")
            };
            postroom::say!(
                "{}  {sender}{handle}",
                postroom::proto::message::rfc5322_date(at)
            );
        }
        return Ok(0);
    }
    if args.init {
        vacation::clear(&db)?;
        return Ok(0);
    }

    let mut input = Vec::new();
    std::io::stdin()
        .take(MAX_READ)
        .read_to_end(&mut input)
        .context("reading the message")?;
    let message = postroom::proto::message::without_mbox_from_line(&input);
    let sender = postroom::proto::message::envelope_sender(args.sender.as_deref(), message);
    let message_file = args.message.clone().unwrap_or_else(|| {
        postroom::directory::users::maildir_of(&config, &user).join("vacation.msg")
    });
    let Some(settings) = settings(&args, &address, &message_file)? else {
        // Nothing to say is not the sender's problem: the mail was
        // delivered beside this pipe; only the admin needs to know.
        eprintln!(
            "vacation: {} does not exist; nothing sent (write the away message there, or give -m)",
            message_file.display()
        );
        return Ok(0);
    };
    match vacation::respond(
        &config,
        &directory,
        &address,
        &sender,
        message,
        &settings,
        Some(db.as_path()),
    )? {
        Decision::Replied(id) => tracing::info!(%sender, queue_id = %id, "answered"),
        Decision::Skipped(why) => tracing::info!(%sender, "not answered: {why}"),
    }
    Ok(0)
}

/// The reply settings; `None` when there is no message file.
fn settings(args: &Args, user: &Address, file: &Path) -> anyhow::Result<Option<Settings>> {
    let text = match std::fs::read_to_string(file) {
        Ok(text) => text,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(e).with_context(|| format!("reading {}", file.display())),
    };
    let (subject, from, body) = split_message_file(&text);
    let mut addresses = vec![user.clone()];
    for alias in &args.aliases {
        addresses.push(
            Address::parse(alias).with_context(|| format!("-a {alias}: not a mail address"))?,
        );
    }
    let interval = match args.interval.as_deref() {
        None => vacation::DEFAULT_INTERVAL,
        Some("infinite") => Duration::from_secs(u64::MAX / 4),
        Some(days) if days.bytes().all(|b| b.is_ascii_digit()) => {
            Duration::from_secs(days.parse::<u64>()?.saturating_mul(86400))
        }
        Some(text) => parse_duration(text).map_err(|e| anyhow::anyhow!("-r: {e}"))?,
    };
    Ok(Some(Settings {
        addresses,
        interval,
        subject,
        from,
        body,
        handle: None,
    }))
}

/// A message file: `Subject:` and `From:` lines up to a blank line are the
/// reply's, the rest its text; a file that starts with anything else is
/// all text.
fn split_message_file(text: &str) -> (Option<String>, Option<String>, String) {
    let mut subject = None;
    let mut from = None;
    let mut lines = text.lines().peekable();
    let has_headers = lines.peek().is_some_and(|l| {
        let lower = l.to_ascii_lowercase();
        lower.starts_with("subject:") || lower.starts_with("from:")
    });
    if has_headers {
        for line in lines.by_ref() {
            if line.trim().is_empty() {
                break;
            }
            if let Some((name, value)) = line.split_once(':') {
                match name.trim().to_ascii_lowercase().as_str() {
                    "subject" => subject = Some(value.trim().to_string()),
                    "from" => from = Some(value.trim().to_string()),
                    _ => {}
                }
            }
        }
    }
    let body: Vec<&str> = lines.collect();
    (subject, from, body.join("\n") + "\n")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn message_files_with_and_without_headers() {
        let (s, f, b) =
            split_message_file("Subject: Away\nFrom: Ann <ann@x.test>\n\nBack monday.\n");
        assert_eq!(s.as_deref(), Some("Away"));
        assert_eq!(f.as_deref(), Some("Ann <ann@x.test>"));
        assert_eq!(b, "Back monday.\n");
        let (s, _, b) = split_message_file("Just text.\nMore.\n");
        assert_eq!(s, None);
        assert_eq!(b, "Just text.\nMore.\n");
    }
}
