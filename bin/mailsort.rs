//! mailsort: deliver one message by the user's Sieve rules (see
//! `mailsort(1)` and `postroom-sieve(5)`).
//!
//! As a pipe in the aliases file (`ann@example.org: "|mailsort --user
//! ann@example.org"`) it reads the message on stdin, runs the global
//! `[sieve] before` scripts, the user's `sieve/active.sieve`, then the
//! `after` scripts, and carries out what they decided: INBOX, folders,
//! flags, redirects through the queue, a refusal, an auto-reply. A script
//! that does not compile or runs out of budget never loses mail: the
//! message goes to INBOX and the reason to stderr.
//!
//! `--check SCRIPT` says what is wrong with a script, by line and column;
//! `--test SCRIPT < MESSAGE` prints the actions and delivers nothing.
//!
//! Exit codes (sysexits): 0 delivered, 67 unknown user, 69 a full
//! mailbox with `quota.full = "bounce"`, 75 temporary (a full mailbox
//! with `quota.full = "defer"`, a write that failed), 77 refused by a
//! `reject`.

#![forbid(unsafe_code)]

use std::io::Read;
use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context;
use clap::Parser;
use postroom::config::Config;
use postroom::delivery::deliver::Outcome;
use postroom::delivery::filter::{self, SortError, Sorted};
use postroom::delivery::quota;
use postroom::delivery::sieve::{Input, Script};
use postroom::directory::aliases::Directory;
use postroom::directory::users;
use postroom::proto::address::Address;
use postroom::proto::message;
use postroom::store::maildir::Maildir;

/// dlmalloc in the static build: see [`postroom::cli::PerMessageAllocator`].
#[cfg(target_env = "musl")]
#[global_allocator]
static ALLOCATOR: postroom::cli::PerMessageAllocator = postroom::cli::PerMessageAllocator;

const EX_NOUSER: u8 = 67;
const EX_UNAVAILABLE: u8 = 69;
const EX_TEMPFAIL: u8 = 75;
const EX_NOPERM: u8 = 77;

#[derive(Parser)]
#[command(name = "mailsort", version, about = "Deliver a message by Sieve rules")]
struct Args {
    /// The config file (default /etc/postroom/postroom.toml).
    #[arg(long, env = "POSTROOM_CONFIG", value_name = "FILE")]
    config: Option<PathBuf>,
    /// Deliver the message on stdin to this user by their rules.
    #[arg(long, value_name = "ADDRESS", conflicts_with_all = ["check", "test"])]
    user: Option<String>,
    /// The envelope sender (default $SENDER, else Return-Path).
    #[arg(long, value_name = "ADDRESS")]
    sender: Option<String>,
    /// Check a script and say what is wrong with it, by line and column.
    #[arg(long, value_name = "SCRIPT", conflicts_with = "test")]
    check: Option<PathBuf>,
    /// Run a script on the message on stdin and print the actions;
    /// nothing is delivered.
    #[arg(long, value_name = "SCRIPT")]
    test: Option<PathBuf>,
    /// The envelope recipient for --test (what `envelope "to"` sees).
    #[arg(long, value_name = "ADDRESS")]
    envelope_to: Option<String>,
}

fn main() -> ExitCode {
    postroom::store::fsutil::tighten_umask();
    postroom::net::log::init("mailsort", "warn");
    let args = Args::parse();
    match run(args) {
        Ok(code) => ExitCode::from(code),
        // `| head` closing the pipe is not a failure.
        Err(e) if postroom::cli::reader_left(e.as_ref()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("mailsort: {e:#}");
            ExitCode::from(EX_TEMPFAIL)
        }
    }
}

fn run(args: Args) -> anyhow::Result<u8> {
    if let Some(path) = &args.check {
        let text = std::fs::read(path).with_context(|| format!("reading {}", path.display()))?;
        return Ok(match Script::compile_bytes(&text) {
            Ok(_) => {
                postroom::say!("{}: ok", path.display());
                0
            }
            Err(e) => {
                postroom::say!("{}:{}:{}: {}", path.display(), e.line, e.column, e.message);
                1
            }
        });
    }
    let mut input = Vec::new();
    std::io::stdin()
        .take(256 << 20)
        .read_to_end(&mut input)
        .context("reading the message")?;
    let raw = message::without_mbox_from_line(&input);
    if let Some(path) = &args.test {
        let text = std::fs::read(path).with_context(|| format!("reading {}", path.display()))?;
        let script = match Script::compile_bytes(&text) {
            Ok(script) => script,
            Err(e) => {
                postroom::say!("{}:{}:{}: {}", path.display(), e.line, e.column, e.message);
                return Ok(1);
            }
        };
        let sender = message::envelope_sender(args.sender.as_deref(), raw).to_string();
        let to = args.envelope_to.clone().unwrap_or_default();
        let actions = script.run(&Input {
            message: raw,
            envelope_from: &sender,
            envelope_to: &to,
            delimiter: '+',
            mailbox_exists: &|_| true,
            // --test reads lists beside the script.
            list: &|name| {
                let dir = path
                    .parent()
                    .unwrap_or(std::path::Path::new("."))
                    .join("lists");
                filter::read_list(&dir, name)
            },
        })?;
        for action in actions {
            postroom::say!("{}", filter::describe(&action));
        }
        return Ok(0);
    }
    let Some(user) = &args.user else {
        anyhow::bail!("give --user ADDRESS (deliver), --check SCRIPT or --test SCRIPT");
    };
    let config =
        postroom::cli::keep_until_exit(Config::load(&Config::locate(args.config.as_deref()))?);
    postroom::net::privileges::drop_privileges(&config)?;
    let directory = postroom::cli::keep_until_exit(Directory::load(&config)?);
    let Some(user) = Address::parse(user).ok().and_then(|a| directory.user(&a)) else {
        // A missing users file says nothing about this user: try later.
        if let Some(why) = directory.users().unavailable() {
            postroom::say!("451 4.3.0 {user}: local users cannot be looked up now ({why})");
            return Ok(EX_TEMPFAIL);
        }
        postroom::say!("550 5.1.1 {user}: no such user here");
        return Ok(EX_NOUSER);
    };
    let address = Address::parse(&user.address)?;
    let sender = message::envelope_sender(args.sender.as_deref(), raw);
    let inbox = Maildir::new(users::maildir_of(&config, &user));
    let quota = quota::limit_of(&config, &user);
    match filter::sort(&config, &directory, &inbox, quota, &address, &sender, raw) {
        Ok(Sorted::Delivered) => Ok(0),
        Ok(Sorted::Refused(reason)) => {
            postroom::say!("{reason}");
            Ok(EX_NOPERM)
        }
        // As every other delivery answers it, by `quota.full`: the queue
        // keeps the mail (75) or the sender gets it back at once (69).
        Err(SortError::OverQuota) => match quota::full(&config, &address) {
            Outcome::Failed(text) => {
                postroom::say!("{text}");
                Ok(EX_UNAVAILABLE)
            }
            Outcome::Deferred(text) | Outcome::Delivered(text) => {
                postroom::say!("{text}");
                Ok(EX_TEMPFAIL)
            }
        },
        Err(e) => Err(e.into()),
    }
}
