//! list-expand: mailing lists (see `list-expand(1)`).
//!
//! From the shell it creates lists and edits who is on them; from the
//! aliases file (`team@example.org: "|list-expand post team@example.org"`)
//! it takes one post on stdin, decides by the list's policy whether it
//! goes out, is held for a moderator or is refused, and sends an accepted
//! post to every member as one queued message (one body, one recipient
//! line per member), or with one-click unsubscribe URLs as one message a
//! member, with the RFC 2369, RFC 2919 and RFC 8058 headers added.
//!
//! Exit codes for `post` follow the delivery contract (`postroom-queue(5)`):
//! 0 accepted, held or dropped as a loop; 77 refused (the text printed
//! becomes the bounce's reason); 75 a passing problem, tried again.

#![forbid(unsafe_code)]

use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::Context;
use clap::{Parser, Subcommand};
use postroom::config::Config;
use postroom::delivery::lists::{Bounce, List, Policy, read_address_lines};
use postroom::proto::address::Address;
use postroom::proto::message;

use post::{HELD_SENDER, distribute, held_ids, post, take_held};

mod archive;
mod digest;
mod post;
mod requests;

pub const EX_NOPERM: u8 = 77;
const EX_TEMPFAIL: u8 = 75;

#[derive(Parser)]
#[command(name = "list-expand", version, about = "Mailing lists")]
struct Cli {
    /// The config file (default /etc/postroom/postroom.toml).
    #[arg(long, env = "POSTROOM_CONFIG", value_name = "FILE", global = true)]
    config: Option<PathBuf>,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Make a list.
    Create {
        list: String,
        /// The owner (more can be listed in the list's config file).
        #[arg(long, value_name = "ADDRESS")]
        owner: String,
        /// open, members, moderated or announce.
        #[arg(long, value_name = "POLICY", default_value = "members")]
        policy: String,
    },
    /// Remove a list, its members and its archive.
    Delete { list: String },
    /// Every list with its member count, or one list's settings.
    Show { list: Option<String> },
    /// Print the members, one address a line.
    Members { list: String },
    /// Add the addresses in FILE (one a line; - for stdin).
    Add {
        list: String,
        file: PathBuf,
        /// Add to the posters (announce lists) instead of the members.
        #[arg(long)]
        posters: bool,
        /// Add to the moderators instead of the members.
        #[arg(long)]
        moderators: bool,
    },
    /// Remove the addresses in FILE (one a line; - for stdin).
    Remove {
        list: String,
        file: PathBuf,
        /// Remove from the posters instead of the members.
        #[arg(long)]
        posters: bool,
        /// Remove from the moderators instead of the members.
        #[arg(long)]
        moderators: bool,
    },
    /// Take one post on stdin (the aliases file runs this).
    Post {
        list: String,
        /// The envelope sender (default $SENDER, else Return-Path).
        #[arg(long, value_name = "ADDRESS")]
        sender: Option<String>,
    },
    /// Answer one message to LIST-request on stdin (the aliases file runs
    /// this): subscribe, unsubscribe, confirm, help, members, set.
    Request {
        list: String,
        /// The envelope sender (default $SENDER, else Return-Path).
        #[arg(long, value_name = "ADDRESS")]
        sender: Option<String>,
    },
    /// Count a bounce to LIST-bounces+MEMBER (the aliases file runs this);
    /// at `bounce_limit` the member is set to nomail and the owners told.
    Bounce {
        list: String,
        /// The bounce address (default $RECIPIENT).
        #[arg(long, value_name = "ADDRESS")]
        recipient: Option<String>,
    },
    /// Write the static HTML archive (by date, by thread, a page a post).
    Archive {
        list: String,
        /// The folder to write the pages into.
        #[arg(long, value_name = "DIR")]
        html: PathBuf,
    },
    /// Send the posts since the last digest to the digest members (cron).
    Digest { list: String },
    /// The posts held for a moderator.
    Held { list: String },
    /// Send a held post to the list.
    Approve { list: String, id: String },
    /// Drop a held post.
    Reject { list: String, id: String },
}

fn main() -> ExitCode {
    postroom::store::fsutil::tighten_umask();
    postroom::net::log::init("list-expand", "warn");
    let cli = Cli::parse();
    match run(cli) {
        Ok(code) => ExitCode::from(code),
        // `| head` closing the pipe is not a failure.
        Err(e) if postroom::cli::reader_left(e.as_ref()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("list-expand: {e:#}");
            ExitCode::from(EX_TEMPFAIL)
        }
    }
}

fn run(cli: Cli) -> anyhow::Result<u8> {
    let config = Config::load(&Config::locate(cli.config.as_deref()))?;
    postroom::net::privileges::drop_privileges(&config)?;
    let address = |text: &str| {
        Address::parse(text).with_context(|| format!("{text:?} is not a list address"))
    };
    match cli.command {
        Command::Create {
            list,
            owner,
            policy,
        } => {
            let policy: Policy = toml::Value::String(policy.clone())
                .try_into()
                .map_err(|_| {
                    anyhow::anyhow!("--policy {policy}: use open, members, moderated or announce")
                })?;
            let created = List::create(&config, &address(&list)?, &address(&owner)?)?;
            if policy != created.config.policy {
                set_policy(&created, policy)?;
            }
            postroom::say!(
                "created {}; connect it in the aliases file:",
                created.address
            );
            print_aliases(&created, cli.config.as_deref())?;
        }
        Command::Delete { list } => List::open(&config, &address(&list)?)?.delete()?,
        Command::Show { list: None } => {
            for list in List::all(&config)? {
                let opened = List::open(&config, &list)?;
                postroom::say!("{list}\t{} members", opened.members()?.len());
            }
        }
        Command::Show { list: Some(list) } => {
            let list = List::open(&config, &address(&list)?)?;
            let c = &list.config;
            postroom::say!("list:       {}", list.address);
            postroom::say!("list-id:    <{}>", list.list_id());
            postroom::say!("owners:     {}", c.owners.join(", "));
            postroom::say!("policy:     {:?} (outsiders: {:?})", c.policy, c.outsiders);
            postroom::say!("members:    {}", list.members()?.len());
            postroom::say!("posters:    {}", list.roster("posters")?.len());
            postroom::say!("moderators: {}", list.roster("moderators")?.len());
            postroom::say!("held posts: {}", held_ids(&list)?.len());
            postroom::say!("aliases:");
            print_aliases(&list, cli.config.as_deref())?;
        }
        Command::Members { list } => {
            let list = List::open(&config, &address(&list)?)?;
            let mut out = String::new();
            for member in list.members()? {
                out.push_str(&member.address);
                out.push('\n');
            }
            print!("{out}");
        }
        Command::Add {
            list,
            file,
            posters,
            moderators,
        } => {
            let list = List::open(&config, &address(&list)?)?;
            let addresses = read_addresses(&file)?;
            let added = list.add(roster_file(posters, moderators), &addresses)?;
            postroom::say!("{added} added, {} already there", addresses.len() - added);
        }
        Command::Remove {
            list,
            file,
            posters,
            moderators,
        } => {
            let list = List::open(&config, &address(&list)?)?;
            let addresses = read_addresses(&file)?;
            let removed = list.remove(roster_file(posters, moderators), &addresses)?;
            postroom::say!("{removed} removed");
        }
        Command::Post { list, sender } => {
            let list = List::open(&config, &address(&list)?)?;
            let mut raw = Vec::new();
            std::io::stdin()
                .take(config.limits.message_size + 1)
                .read_to_end(&mut raw)
                .context("reading the post")?;
            if raw.len() as u64 > config.limits.message_size {
                postroom::say!("552 5.3.4 the post is larger than this system takes");
                return Ok(EX_NOPERM);
            }
            let sender = message::envelope_sender(sender.as_deref(), &raw);
            return post(&config, &list, &sender, &raw);
        }
        Command::Request { list, sender } => {
            let list = List::open(&config, &address(&list)?)?;
            let mut raw = Vec::new();
            std::io::stdin()
                .take(1 << 20)
                .read_to_end(&mut raw)
                .context("reading the request")?;
            let sender = message::envelope_sender(sender.as_deref(), &raw);
            return requests::request(&config, &list, &sender, &raw);
        }
        Command::Bounce { list, recipient } => {
            let list = List::open(&config, &address(&list)?)?;
            let recipient = recipient
                .or_else(|| std::env::var("RECIPIENT").ok())
                .context("no bounce address: give --recipient or set $RECIPIENT")?;
            let delimiter = config.delivery.recipient_delimiter.unwrap_or('+');
            let bounce = match Address::parse(&recipient) {
                Ok(address) => list.take_bounce(&address, delimiter)?,
                Err(_) => Bounce::NoMember,
            };
            match bounce {
                Bounce::NoMember => {
                    eprintln!("list-expand: {recipient} names no member; bounce ignored");
                }
                Bounce::MailOff(member) => {
                    eprintln!("list-expand: {member} gets no mail already; bounce ignored");
                }
                Bounce::Counted(member, count) => {
                    postroom::say!("{member}: {count} bounces");
                }
                Bounce::Stopped(member, count) => {
                    post::tell_owners(
                        &config,
                        &list,
                        &format!(
                            "{}: {member} set to nomail after {count} bounces",
                            list.address
                        ),
                        &format!(
                            "Mail to {member} from {} bounced {count} times, so it gets no more.\r\n\
                             When the address works again, they can send \"set nomail off\" to {},\r\n\
                             or you can remove \"nomail\" from their line in the list's members file.\r\n",
                            list.address,
                            list.request_address()
                        ),
                    )?;
                    postroom::say!("{member}: {count} bounces; set to nomail");
                }
            }
        }
        Command::Archive { list, html } => {
            let list = List::open(&config, &address(&list)?)?;
            let posts = archive::write_html(&list, &html)?;
            postroom::say!("{posts} posts written to {}", html.display());
        }
        Command::Digest { list } => {
            let list = List::open(&config, &address(&list)?)?;
            let posts = digest::digest(&config, &list)?;
            postroom::say!("{posts} posts in the digest");
        }
        Command::Held { list } => {
            let list = List::open(&config, &address(&list)?)?;
            for id in held_ids(&list)? {
                let text = std::fs::read(list.held_dir().join(&id))?;
                let end = message::header_len(&text);
                let fields = message::header_fields(&text[..end]);
                let field = |name: &str| {
                    fields
                        .iter()
                        .find(|(n, _)| n.eq_ignore_ascii_case(name))
                        .map(|(_, v)| v.clone())
                        .unwrap_or_default()
                };
                postroom::say!("{id}\t{}\t{}", field(HELD_SENDER), field("Subject"));
            }
        }
        Command::Approve { list, id } => {
            let list = List::open(&config, &address(&list)?)?;
            let (sender, post) = take_held(&list, &id)?;
            distribute(&config, &list, &sender, &post)?;
            postroom::say!("sent to {}", list.address);
        }
        Command::Reject { list, id } => {
            let list = List::open(&config, &address(&list)?)?;
            take_held(&list, &id)?;
            postroom::say!("dropped");
        }
    }
    Ok(0)
}

fn roster_file(posters: bool, moderators: bool) -> &'static str {
    match (posters, moderators) {
        (true, _) => "posters",
        (_, true) => "moderators",
        _ => "members",
    }
}

fn read_addresses(file: &PathBuf) -> anyhow::Result<Vec<Address>> {
    let mut text = String::new();
    if file.as_os_str() == "-" {
        std::io::stdin().read_to_string(&mut text)?;
    } else {
        text =
            std::fs::read_to_string(file).with_context(|| format!("reading {}", file.display()))?;
    }
    Ok(read_address_lines(&text, file)?)
}

fn set_policy(list: &List, policy: Policy) -> anyhow::Result<()> {
    let mut config = list.config.clone();
    config.policy = policy;
    postroom::store::fsutil::write_atomic(
        &list.dir.join("config"),
        toml::to_string(&config)?.as_bytes(),
    )?;
    Ok(())
}

/// Prints the aliases file lines that connect the list: its address,
/// `-request` and `-bounces` to this program's `post`, `request` and
/// `bounce`, and `-owner` to the owners. A `--config` given (or
/// `$POSTROOM_CONFIG`) goes into the commands, made absolute, since pipe
/// delivery runs them with neither that variable nor this directory.
fn print_aliases(list: &List, config: Option<&Path>) -> std::io::Result<()> {
    let me = std::env::current_exe()
        .map(|p| shell_word(&p.display().to_string()))
        .unwrap_or_else(|_| "list-expand".into());
    let me = match config {
        Some(config) => format!(
            "{me} --config {}",
            shell_word(&std::path::absolute(config)?.display().to_string())
        ),
        None => me,
    };
    let owners = list.config.owners.join(", ");
    for line in alias_lines(list, &me, &owners) {
        postroom::say!("  {line}");
    }
    Ok(())
}

/// The aliases file lines for the list, `me` being the command that runs
/// this program.
fn alias_lines(list: &List, me: &str, owners: &str) -> Vec<String> {
    let a = &list.address;
    let mut lines = vec![
        format!("{a}: \"|{me} post {a}\""),
        format!("{}: \"|{me} request {a}\"", list.request_address()),
        format!("{}-owner@{}: {owners}", a.local_part(), a.domain()),
    ];
    if let Some(bounces) = list.bounce_address() {
        lines.push(format!("{bounces}: \"|{me} bounce {a}\""));
    }
    lines
}

/// `word` as one word for `sh -c` (pipe delivery's shell): as it is when
/// it holds nothing the shell reads, else in single quotes.
fn shell_word(word: &str) -> String {
    let plain = !word.is_empty()
        && word
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"/._+-=:@%,".contains(&b));
    if plain {
        word.to_string()
    } else {
        format!("'{}'", word.replace('\'', "'\\''"))
    }
}
