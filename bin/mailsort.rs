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
//! Exit codes (sysexits): 0 delivered, 67 unknown user, 75 temporary
//! (a full mailbox, a write that failed), 77 refused by a `reject`.

use std::io::Read;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::Context;
use clap::Parser;
use postroom::address::{Address, ReversePath};
use postroom::aliases::Directory;
use postroom::config::Config;
use postroom::maildir::{Delivered, Maildir, MaildirError, Message, MessageFile, Sub};
use postroom::queue::{Envelope, Queue};
use postroom::sieve::{Action, Input, Script};
use postroom::{message, users, vacation};

const EX_NOUSER: u8 = 67;
const EX_TEMPFAIL: u8 = 75;
const EX_NOPERM: u8 = 77;
/// Redirects a message may have been through before we stop forwarding it.
const MAX_REDIRECTS: usize = 5;
const REDIRECT_HEADER: &str = "X-Postroom-Redirected-By";

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
    postroom::log::init("mailsort", "warn");
    let args = Args::parse();
    match run(args) {
        Ok(code) => ExitCode::from(code),
        Err(e) => {
            eprintln!("mailsort: {e:#}");
            ExitCode::from(EX_TEMPFAIL)
        }
    }
}

fn run(args: Args) -> anyhow::Result<u8> {
    if let Some(path) = &args.check {
        let text =
            std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
        return Ok(match Script::compile(&text) {
            Ok(_) => {
                println!("{}: ok", path.display());
                0
            }
            Err(e) => {
                println!("{}:{}:{}: {}", path.display(), e.line, e.column, e.message);
                1
            }
        });
    }
    let mut raw = Vec::new();
    std::io::stdin()
        .take(256 << 20)
        .read_to_end(&mut raw)
        .context("reading the message")?;
    if let Some(path) = &args.test {
        let text =
            std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
        let script = match Script::compile(&text) {
            Ok(script) => script,
            Err(e) => {
                println!("{}:{}:{}: {}", path.display(), e.line, e.column, e.message);
                return Ok(1);
            }
        };
        let sender = message::envelope_sender(args.sender.as_deref(), &raw).to_string();
        let to = args.envelope_to.clone().unwrap_or_default();
        let actions = script.run(&Input {
            message: &raw,
            envelope_from: &sender,
            envelope_to: &to,
            delimiter: '+',
            mailbox_exists: &|_| true,
        })?;
        for action in actions {
            println!("{}", describe(&action));
        }
        return Ok(0);
    }
    let Some(user) = &args.user else {
        anyhow::bail!("give --user ADDRESS (deliver), --check SCRIPT or --test SCRIPT");
    };
    let config = Config::load(&Config::locate(args.config.as_deref()))?;
    postroom::privileges::drop_privileges(&config)?;
    let directory = Directory::load(&config)?;
    let Some(user) = Address::parse(user)
        .ok()
        .and_then(|a| directory.user(&a).cloned())
    else {
        println!("550 5.1.1 {user}: no such user here");
        return Ok(EX_NOUSER);
    };
    let address = Address::parse(&user.address)?;
    let sender = message::envelope_sender(args.sender.as_deref(), &raw);
    let inbox = Maildir::new(users::maildir_of(&config, &user));
    let quota = user
        .quota
        .or(Some(config.delivery.default_quota))
        .filter(|&q| q > 0);
    let actions = decide(&config, &inbox, &address, &sender, &raw);
    carry_out(
        &config, &directory, &inbox, quota, &address, &sender, &raw, actions,
    )
}

/// The combined decision of the before, user and after scripts; any
/// script that cannot be used is skipped with a warning, and the message
/// is then kept (mail is never lost to a broken rule).
fn decide(
    config: &Config,
    inbox: &Maildir,
    user: &Address,
    sender: &ReversePath,
    raw: &[u8],
) -> Vec<Action> {
    let mut scripts: Vec<PathBuf> = config.sieve.before.iter().map(|p| config.path(p)).collect();
    let own = inbox.path().join("sieve").join("active.sieve");
    if own.exists() {
        scripts.push(own);
    }
    scripts.extend(config.sieve.after.iter().map(|p| config.path(p)));
    let delimiter = config.delivery.recipient_delimiter.unwrap_or('+');
    let sender_text = sender.to_string();
    let to = user.to_string();
    let exists = |name: &str| folder_of(inbox, name).is_ok_and(|f| f.path().join("cur").is_dir());
    let mut actions: Vec<Action> = Vec::new();
    let mut every_script_kept = true;
    for path in &scripts {
        let result = std::fs::read_to_string(path)
            .map_err(|e| e.to_string())
            .and_then(|text| Script::compile(&text).map_err(|e| e.to_string()))
            .and_then(|script| {
                script
                    .run(&Input {
                        message: raw,
                        envelope_from: &sender_text,
                        envelope_to: &to,
                        delimiter,
                        mailbox_exists: &exists,
                    })
                    .map_err(|e| e.to_string())
            });
        match result {
            Ok(mut decided) => {
                let kept = decided.iter().any(|a| matches!(a, Action::Keep { .. }));
                every_script_kept &= kept;
                decided.retain(|a| !matches!(a, Action::Keep { .. }) || kept);
                for action in decided {
                    if !actions.contains(&action) {
                        actions.push(action);
                    }
                }
            }
            Err(e) => {
                eprintln!(
                    "mailsort: {}: {e}; the message is kept in INBOX",
                    path.display()
                );
                if !actions.iter().any(|a| matches!(a, Action::Keep { .. })) {
                    actions.push(Action::Keep { flags: Vec::new() });
                }
            }
        }
    }
    if !every_script_kept {
        // A script that filed, redirected, refused or discarded the message
        // cancelled the implicit keep for all of them.
        let explicit = actions
            .iter()
            .any(|a| matches!(a, Action::Keep { flags } if !flags.is_empty()));
        if !explicit {
            actions.retain(|a| !matches!(a, Action::Keep { .. }));
        }
    }
    if scripts.is_empty() {
        actions.push(Action::Keep { flags: Vec::new() });
    }
    actions
}

#[allow(clippy::too_many_arguments)]
fn carry_out(
    config: &Config,
    directory: &Directory,
    inbox: &Maildir,
    quota: Option<u64>,
    user: &Address,
    sender: &ReversePath,
    raw: &[u8],
    actions: Vec<Action>,
) -> anyhow::Result<u8> {
    if let Some(reason) = actions.iter().find_map(|a| match a {
        Action::Reject { reason } => Some(reason.clone()),
        _ => None,
    }) {
        println!(
            "550 5.7.1 refused by {user}'s rules: {}",
            reason.replace(['\r', '\n'], " ")
        );
        return Ok(EX_NOPERM);
    }
    for action in &actions {
        let result = match action {
            Action::Keep { flags } => store(config, inbox, quota, raw, flags),
            Action::FileInto { mailbox, flags, .. } => match folder_of(inbox, mailbox) {
                Ok(folder) => store(config, &folder, quota, raw, flags),
                Err(e) => {
                    eprintln!("mailsort: fileinto {mailbox:?}: {e}; kept in INBOX instead");
                    store(config, inbox, quota, raw, flags)
                }
            },
            Action::Redirect { address } => redirect(config, directory, user, sender, raw, address),
            Action::Vacation {
                seconds,
                subject,
                from,
                addresses,
                handle,
                reason,
            } => {
                let mut mine = vec![user.clone()];
                mine.extend(addresses.iter().filter_map(|a| Address::parse(a).ok()));
                let settings = vacation::Settings {
                    addresses: mine,
                    interval: Duration::from_secs(*seconds),
                    subject: subject.clone(),
                    from: from.clone(),
                    body: reason.clone(),
                    handle: handle.clone(),
                };
                vacation::respond(config, user, sender, raw, &settings, None)
                    .map(|_| ())
                    .map_err(anyhow::Error::from)
            }
            Action::Reject { .. } => Ok(()),
        };
        if let Err(e) = result {
            return match e.downcast_ref::<MaildirError>() {
                Some(MaildirError::OverQuota { .. }) => {
                    println!("452 4.2.2 {user}: mailbox is full");
                    Ok(EX_TEMPFAIL)
                }
                _ => Err(e),
            };
        }
    }
    Ok(0)
}

/// A Sieve mailbox name as a Maildir++ folder: `INBOX` is the root,
/// `INBOX.x` and `INBOX/x` are `x`, and `/` separates levels like `.`.
fn folder_of(inbox: &Maildir, name: &str) -> Result<Maildir, MaildirError> {
    let name = name
        .strip_prefix("INBOX.")
        .or_else(|| name.strip_prefix("INBOX/"))
        .unwrap_or(name)
        .replace('/', ".");
    inbox.folder(&name)
}

/// Delivers into a maildir (created if missing), then sets IMAP flags.
fn store(
    config: &Config,
    maildir: &Maildir,
    quota: Option<u64>,
    raw: &[u8],
    flags: &[String],
) -> anyhow::Result<()> {
    maildir.create()?;
    let delivered = maildir.deliver(
        Message {
            prepend: b"",
            body: &mut &raw[..],
            base_name: None,
            search_cur: false,
            quota,
        },
        &config.hostname,
    )?;
    let letters: String = flags
        .iter()
        .filter_map(|f| match f.to_ascii_lowercase().as_str() {
            "\\seen" => Some('S'),
            "\\answered" => Some('R'),
            "\\flagged" => Some('F'),
            "\\deleted" => Some('T'),
            "\\draft" => Some('D'),
            _ => None,
        })
        .collect();
    if let (Delivered::New(path), false) = (&delivered, letters.is_empty())
        && let Some(name) = path.file_name()
    {
        let file = MessageFile {
            sub: Sub::New,
            name: name.to_string_lossy().into_owned(),
        };
        maildir.add_flags(&file, &letters)?;
    }
    Ok(())
}

/// Re-injects through the queue with the original sender, counting hops
/// so two users redirecting to each other cannot loop for ever.
fn redirect(
    config: &Config,
    directory: &Directory,
    user: &Address,
    sender: &ReversePath,
    raw: &[u8],
    to: &str,
) -> anyhow::Result<()> {
    let crlf = message::to_crlf(raw);
    let end = message::header_len(&crlf);
    let hops = message::header_fields(&crlf[..end])
        .iter()
        .filter(|(n, _)| n.eq_ignore_ascii_case(REDIRECT_HEADER))
        .count();
    if hops >= MAX_REDIRECTS {
        eprintln!("mailsort: redirected {hops} times already; kept instead of redirected to {to}");
        return Ok(());
    }
    // Our own Return-Path and Delivered-To stay: Delivered-To is what stops
    // a loop back to this user.
    let mut out = format!("{REDIRECT_HEADER}: {user}\r\n").into_bytes();
    out.extend_from_slice(&message::remove_header(&crlf[..end], "Return-Path"));
    out.extend_from_slice(&crlf[end..]);
    let target = Address::parse(to)?;
    let recipients = postroom::deliver::routes_for(directory, &target)?;
    Queue::from_config(config).enqueue(&Envelope::new(sender.clone(), recipients), &out)?;
    Ok(())
}

fn describe(action: &Action) -> String {
    match action {
        Action::Keep { flags } if flags.is_empty() => "keep".into(),
        Action::Keep { flags } => format!("keep :flags {}", flags.join(" ")),
        Action::FileInto {
            mailbox,
            flags,
            create,
        } => {
            let mut text = format!("fileinto {mailbox:?}");
            if *create {
                text.push_str(" :create");
            }
            if !flags.is_empty() {
                text.push_str(&format!(" :flags {}", flags.join(" ")));
            }
            text
        }
        Action::Redirect { address } => format!("redirect {address}"),
        Action::Reject { reason } => format!("reject {reason:?}"),
        Action::Vacation {
            seconds,
            subject,
            handle,
            ..
        } => format!(
            "vacation every {seconds} s{}{}",
            subject
                .as_ref()
                .map(|s| format!(", subject {s:?}"))
                .unwrap_or_default(),
            handle
                .as_ref()
                .map(|h| format!(", handle {h:?}"))
                .unwrap_or_default()
        ),
    }
}
