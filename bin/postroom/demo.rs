//! `postroom demo`: a working mail system on loopback, from a fresh checkout.
//!
//! It creates (or reuses) a sandbox tree with the domain `example.test` and
//! the user `demo@example.test` (a fresh password each run, printed), puts a
//! welcome message in the demo INBOX through the real queue, then starts
//! every server binary built beside this one in standalone mode on loopback
//! ports and waits for Ctrl-C. Servers that are not built yet are listed as
//! such; nothing else is assumed.

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::Context;
use clap::Args;
use postroom::config::Config;
use postroom::delivery::deliver;
use postroom::delivery::submit::{self, Recipients, Submission, Unresolvable};
use postroom::directory::{aliases, password, users};
use postroom::proto::address::{Address, ReversePath};

const DOMAIN: &str = "example.test";
const USER: &str = "demo@example.test";

#[derive(Args)]
pub struct DemoArgs {
    /// The sandbox folder (default: postroom-demo in the temp folder).
    #[arg(long)]
    root: Option<PathBuf>,
    /// Added to every demo port (SMTP 2525, submission 2587, SMTPS 2465,
    /// POP3 2110, POP3S 2995, IMAP 2143, IMAPS 2993).
    #[arg(long, default_value_t = 0)]
    port_offset: u16,
    /// Set up the tree and print how to use it, but start no server.
    #[arg(long)]
    setup_only: bool,
}

/// A server binary, the arguments it runs with, and what to tell the user.
struct Server {
    binary: &'static str,
    args: Vec<String>,
    about: String,
}

pub fn run(args: DemoArgs) -> anyhow::Result<ExitCode> {
    let root = args
        .root
        .unwrap_or_else(|| std::env::temp_dir().join("postroom-demo"));
    let config_path = root.join("postroom.toml");
    if !config_path.exists() {
        crate::admin::create_tree(&root, DOMAIN, Some("mail.example.test"))?;
    }
    let config = Config::load(&config_path)?;
    let secret = fresh_password();
    // SHA512-CRYPT keeps demo logins quick; production trees use the
    // config's default scheme.
    let hash = password::hash(&secret, password::Scheme::Sha512Crypt)?;
    let address = Address::parse(USER)?;
    let existing = users::Users::load(&config.users_file())?;
    if existing.get(USER).is_some() {
        users::set_password(&config.users_file(), USER, &hash)?;
    } else {
        users::add_users(
            &config.users_file(),
            &[users::NewUser {
                address: address.clone(),
                password_hash: hash,
                quota: None,
            }],
        )?;
        aliases::add_alias(
            &config.aliases_file(),
            &format!("postmaster@{DOMAIN}"),
            &[USER.to_string()],
        )?;
        welcome(&config, &address).context("delivering the welcome message")?;
    }

    let bin_dir = std::env::current_exe()?
        .parent()
        .map(Path::to_path_buf)
        .unwrap_or_default();
    let servers = servers(&config_path, args.port_offset);
    postroom::say!("postroom demo in {}", root.display());
    postroom::say!("  user:      {USER}");
    postroom::say!("  password:  {secret}");
    postroom::say!(
        "  mailbox:   {}",
        config.mail_dir().join(DOMAIN).join("demo").display()
    );
    postroom::say!(
        "  inject:    echo 'Subject: hi' | {} --config {} {USER}",
        bin_dir.join("mail-inject").display(),
        config_path.display()
    );
    postroom::say!(
        "  queue:     {} --config {} queue list",
        bin_dir.join("postroom").display(),
        config_path.display()
    );
    let mut available = Vec::new();
    for server in servers {
        let path = bin_dir.join(server.binary);
        if path.is_file() {
            postroom::say!("  {}", server.about);
            available.push((path, server));
        } else {
            postroom::say!("  ({} is not built yet)", server.binary);
        }
    }
    if args.setup_only || available.is_empty() {
        return Ok(ExitCode::SUCCESS);
    }
    run_servers(available)
}

fn servers(config: &Path, offset: u16) -> Vec<Server> {
    let port = |p: u16| format!("127.0.0.1:{}", p + offset);
    let config = config.display().to_string();
    let with = |extra: &[&str]| {
        let mut args = vec!["--config".to_string(), config.clone()];
        args.extend(extra.iter().map(|s| s.to_string()));
        args
    };
    vec![
        Server {
            binary: "smtp-recv",
            args: with(&["--listen", &port(2525)]),
            about: format!(
                "SMTP:      {}  (swaks --server {} --to {USER})",
                port(2525),
                port(2525)
            ),
        },
        Server {
            binary: "smtp-recv",
            args: with(&[
                "--submission",
                "--listen",
                &port(2587),
                "--listen-tls",
                &port(2465),
            ]),
            about: format!(
                "submission:{} STARTTLS, {} TLS  (login {USER})",
                port(2587),
                port(2465)
            ),
        },
        Server {
            binary: "smtp-send",
            args: with(&["--watch"]),
            about: "queue:     smtp-send --watch delivers queued mail".to_string(),
        },
        Server {
            binary: "pop3-serve",
            args: with(&["--listen", &port(2110), "--listen-tls", &port(2995)]),
            about: format!("POP3:      {}, POP3S {}", port(2110), port(2995)),
        },
        Server {
            binary: "imap-serve",
            args: with(&["--listen", &port(2143), "--listen-tls", &port(2993)]),
            about: format!("IMAP:      {}, IMAPS {}", port(2143), port(2993)),
        },
    ]
}

/// Starts the servers and waits for Ctrl-C (or SIGTERM), then stops them.
fn run_servers(servers: Vec<(PathBuf, Server)>) -> anyhow::Result<ExitCode> {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    runtime.block_on(async move {
        let mut children = Vec::new();
        for (path, server) in servers {
            let child = tokio::process::Command::new(&path)
                .args(&server.args)
                .kill_on_drop(true)
                .spawn()
                .with_context(|| format!("starting {}", path.display()))?;
            children.push(child);
        }
        postroom::say!("running; press Ctrl-C to stop");
        let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
        tokio::select! {
            _ = tokio::signal::ctrl_c() => {}
            _ = term.recv() => {}
        }
        for child in &mut children {
            let _ = child.kill().await;
        }
        postroom::say!("stopped");
        Ok(ExitCode::SUCCESS)
    })
}

/// Queues a welcome message and delivers it, through the same code path as
/// any other local mail.
fn welcome(config: &Config, to: &Address) -> anyhow::Result<()> {
    let directory = aliases::Directory::load(config)?;
    let sender = ReversePath::parse(&format!("postmaster@{DOMAIN}"))?;
    let mut submission = Submission::new(
        sender,
        Recipients::Addresses(std::slice::from_ref(to), Unresolvable::Refuse),
    );
    submission.protocol = Some("local");
    let date = postroom::proto::message::rfc5322_date(postroom::store::fsutil::now_secs());
    let body = format!(
        "From: postroom demo <postmaster@{DOMAIN}>\r\nTo: <{to}>\r\nSubject: Welcome to postroom\r\n\
         Date: {date}\r\nMessage-ID: <welcome.{}@{DOMAIN}>\r\n\r\n\
         This message went through the queue into your maildir.\r\n",
        postroom::store::fsutil::now_secs()
    );
    let staged = submit::stage(config, &directory, submission, body.as_bytes())?;
    deliver::deliver_staged(config, &directory, staged)?;
    Ok(())
}

fn fresh_password() -> String {
    use rand::Rng;
    const ALPHABET: &[u8] = b"abcdefghijkmnpqrstuvwxyzABCDEFGHJKLMNPQRSTUVWXYZ23456789";
    let mut rng = rand::thread_rng();
    (0..16)
        .map(|_| ALPHABET[rng.gen_range(0..ALPHABET.len())] as char)
        .collect()
}
