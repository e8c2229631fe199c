//! `postroom demo`: a working mail system on loopback, from a fresh checkout.
//!
//! It creates (or reuses) a sandbox tree with the domain `example.test` and
//! the user `demo@example.test` (a fresh password each run), puts a
//! welcome message in the demo INBOX through the real queue, then starts
//! every server binary built beside this one in standalone mode on loopback
//! ports. Once every one of them answers it prints one summary: the
//! password, the certificate's fingerprint, one ready command per protocol.
//! The servers log to `demo.log` in the sandbox (`--verbose`: to the
//! terminal), so the summary is not buried; Ctrl-C stops them all. A port
//! that is taken stops the demo before anything starts.

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
    /// Show the servers' log lines here instead of in demo.log.
    #[arg(long)]
    verbose: bool,
}

/// How long the servers may take to answer on their ports.
const START_LIMIT: std::time::Duration = std::time::Duration::from_secs(30);

/// A server binary, the arguments it runs with, and what to tell the user.
struct Server {
    binary: &'static str,
    args: Vec<String>,
    about: String,
    /// Its loopback ports, each with the protocol it serves.
    ports: Vec<(u16, &'static str)>,
}

pub fn run(args: DemoArgs) -> anyhow::Result<ExitCode> {
    let root = args
        .root
        .unwrap_or_else(|| std::env::temp_dir().join("postroom-demo"));
    let config_path = root.join("postroom.toml");
    let reused = config_path.exists();
    if !reused {
        crate::admin::create_tree(&root, DOMAIN, Some("mail.example.test"), None)?;
    }
    let config = Config::load(&config_path)?;
    let bin_dir = std::env::current_exe()?
        .parent()
        .map(Path::to_path_buf)
        .unwrap_or_default();
    let mut available = Vec::new();
    let mut missing = Vec::new();
    for server in servers(&config_path, args.port_offset)? {
        let path = bin_dir.join(server.binary);
        if path.is_file() {
            available.push((path, server));
        } else {
            missing.push(server.binary);
        }
    }
    let start = !args.setup_only && !available.is_empty();
    if start {
        // Before anything changes: a second demo on the same ports would
        // otherwise run on with servers that died at once.
        for (_, server) in &available {
            for &(port, what) in &server.ports {
                port_is_free(port, what, args.port_offset)?;
            }
        }
    }

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

    let log_file = root.join("demo.log");
    let children = if start {
        let stop = Stop::catch()?;
        Some((stop, start_servers(&available, &log_file, args.verbose)?))
    } else {
        None
    };

    postroom::say!(
        "postroom demo in {} ({})",
        root.display(),
        if reused {
            "reused the tree that was there; delete the folder for a fresh one"
        } else {
            "a fresh tree"
        }
    );
    postroom::say!("  user:      {USER}");
    postroom::say!("  password:  {secret}");
    postroom::say!(
        "  mailbox:   {}",
        config.mail_dir().join(DOMAIN).join("demo").display()
    );
    let cert = config.tls_cert();
    postroom::say!(
        "  TLS:       self-signed certificate {} (clients will warn; SHA-256 {})",
        cert.display(),
        fingerprint(&cert).unwrap_or_else(|e| format!("unreadable: {e}"))
    );
    for (_, server) in &available {
        postroom::say!("  {}", server.about);
    }
    for binary in &missing {
        postroom::say!("  ({binary} is not built yet: cargo build --release)");
    }
    let port = |p: u16| p + args.port_offset;
    postroom::say!("try:");
    postroom::say!(
        "  swaks --server 127.0.0.1:{} --tls --auth-user {USER} --auth-password '{secret}' \\\n        --from {USER} --to {USER}",
        port(2587)
    );
    postroom::say!(
        "  curl -k 'imaps://127.0.0.1:{}/INBOX;UID=1' --user '{USER}:{secret}'",
        port(2993)
    );
    postroom::say!(
        "  curl -k pop3s://127.0.0.1:{}/1 --user '{USER}:{secret}'",
        port(2995)
    );
    postroom::say!(
        "  echo 'Subject: hi' | {} --config {} {USER}",
        bin_dir.join("mail-inject").display(),
        config_path.display()
    );
    postroom::say!(
        "  {} --config {} queue list",
        bin_dir.join("postroom").display(),
        config_path.display()
    );
    let Some((stop, children)) = children else {
        return Ok(ExitCode::SUCCESS);
    };
    if !args.verbose {
        postroom::say!("logs: {} (--verbose shows them here)", log_file.display());
    }
    postroom::say!("running; press Ctrl-C to stop");
    wait_and_stop(stop, children)
}

/// Refuses a port something else holds, naming it and the way out.
fn port_is_free(port: u16, what: &str, offset: u16) -> anyhow::Result<()> {
    match std::net::TcpListener::bind(("127.0.0.1", port)) {
        Ok(_) => Ok(()),
        Err(e) => anyhow::bail!(
            "port 127.0.0.1:{port} ({what}) is already in use ({e}): another demo or server \
             holds it; stop it, or move every demo port with --port-offset {}",
            offset.saturating_add(100)
        ),
    }
}

/// SHA-256 of the certificate (the first in the file), as clients show it.
fn fingerprint(cert: &Path) -> anyhow::Result<String> {
    use rustls_pki_types::CertificateDer;
    use rustls_pki_types::pem::PemObject;
    use sha2::Digest;
    let der = CertificateDer::pem_file_iter(cert)?
        .next()
        .context("no certificate in the file")??;
    Ok(sha2::Sha256::digest(der.as_ref())
        .iter()
        .map(|b| format!("{b:02X}"))
        .collect::<Vec<_>>()
        .join(":"))
}

fn servers(config: &Path, offset: u16) -> anyhow::Result<Vec<Server>> {
    let port = |p: u16| -> anyhow::Result<u16> {
        p.checked_add(offset)
            .with_context(|| format!("--port-offset {offset} takes port {p} past 65535"))
    };
    let addr = |p: u16| format!("127.0.0.1:{p}");
    let config = config.display().to_string();
    let with = |extra: &[&str]| {
        let mut args = vec!["--config".to_string(), config.clone()];
        args.extend(extra.iter().map(|s| s.to_string()));
        args
    };
    let (smtp, submission, smtps) = (port(2525)?, port(2587)?, port(2465)?);
    let (pop3, pop3s, imap, imaps) = (port(2110)?, port(2995)?, port(2143)?, port(2993)?);
    Ok(vec![
        Server {
            binary: "smtp-recv",
            args: with(&["--listen", &addr(smtp)]),
            about: format!(
                "SMTP:      {}  (MX: mail from anyone to {DOMAIN})",
                addr(smtp)
            ),
            ports: vec![(smtp, "SMTP")],
        },
        Server {
            binary: "smtp-recv",
            args: with(&[
                "--submission",
                "--listen",
                &addr(submission),
                "--listen-tls",
                &addr(smtps),
            ]),
            about: format!(
                "submission:{} STARTTLS, {} TLS  (login {USER})",
                addr(submission),
                addr(smtps)
            ),
            ports: vec![(submission, "submission"), (smtps, "SMTPS")],
        },
        Server {
            binary: "smtp-send",
            args: with(&["--watch"]),
            about: "queue:     smtp-send --watch delivers queued mail".to_string(),
            ports: Vec::new(),
        },
        Server {
            binary: "pop3-serve",
            args: with(&["--listen", &addr(pop3), "--listen-tls", &addr(pop3s)]),
            about: format!("POP3:      {}, POP3S {}", addr(pop3), addr(pop3s)),
            ports: vec![(pop3, "POP3"), (pop3s, "POP3S")],
        },
        Server {
            binary: "imap-serve",
            args: with(&["--listen", &addr(imap), "--listen-tls", &addr(imaps)]),
            about: format!("IMAP:      {}, IMAPS {}", addr(imap), addr(imaps)),
            ports: vec![(imap, "IMAP"), (imaps, "IMAPS")],
        },
    ])
}

/// Starts the servers, their logs to `log_file` (or this terminal), and
/// returns once every port answers; a server that ends first stops the
/// demo with its reason.
fn start_servers(
    servers: &[(PathBuf, Server)],
    log_file: &Path,
    verbose: bool,
) -> anyhow::Result<Vec<std::process::Child>> {
    use std::process::{Command, Stdio};
    let mut children = Vec::new();
    let result = (|| {
        for (path, server) in servers {
            let stderr = if verbose {
                Stdio::inherit()
            } else {
                let file = std::fs::OpenOptions::new()
                    .create(true)
                    .append(true)
                    .open(log_file)
                    .with_context(|| format!("opening {}", log_file.display()))?;
                Stdio::from(file)
            };
            let child = Command::new(path)
                .args(&server.args)
                .stdin(Stdio::null())
                .stdout(Stdio::null())
                .stderr(stderr)
                .spawn()
                .with_context(|| format!("starting {}", path.display()))?;
            children.push(child);
        }
        let deadline = std::time::Instant::now() + START_LIMIT;
        let ports: Vec<(u16, &str)> = servers
            .iter()
            .flat_map(|(_, s)| s.ports.iter().copied())
            .collect();
        for (port, what) in ports {
            loop {
                if std::net::TcpStream::connect(("127.0.0.1", port)).is_ok() {
                    break;
                }
                for (child, (path, _)) in children.iter_mut().zip(servers) {
                    if let Some(status) = child.try_wait()? {
                        anyhow::bail!(
                            "{} stopped at start ({status}); its reason is in {}",
                            path.display(),
                            if verbose {
                                "the lines above"
                            } else {
                                "demo.log"
                            }
                        );
                    }
                }
                if std::time::Instant::now() > deadline {
                    anyhow::bail!("{what} on port {port} did not answer in {START_LIMIT:?}");
                }
                // On purpose: a short poll while the servers bind.
                std::thread::sleep(std::time::Duration::from_millis(50));
            }
        }
        Ok(())
    })();
    match result {
        Ok(()) => Ok(children),
        Err(e) => {
            stop_all(&mut children);
            Err(e)
        }
    }
}

fn stop_all(children: &mut [std::process::Child]) {
    for child in children.iter_mut() {
        let _ = child.kill();
        let _ = child.wait();
    }
}

/// Ctrl-C and SIGTERM, caught from before the first server starts: one
/// that comes while the demo still waits for its servers (a script that
/// stops it as soon as a port answers) stops it cleanly too, rather than
/// killing it with the servers left running.
struct Stop {
    runtime: tokio::runtime::Runtime,
    interrupt: tokio::signal::unix::Signal,
    terminate: tokio::signal::unix::Signal,
}

impl Stop {
    fn catch() -> anyhow::Result<Stop> {
        use tokio::signal::unix::{SignalKind, signal};
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()?;
        let (interrupt, terminate) = {
            let _inside = runtime.enter();
            (
                signal(SignalKind::interrupt())?,
                signal(SignalKind::terminate())?,
            )
        };
        Ok(Stop {
            runtime,
            interrupt,
            terminate,
        })
    }
}

/// Waits for Ctrl-C (or SIGTERM), then stops the servers.
fn wait_and_stop(
    mut stop: Stop,
    mut children: Vec<std::process::Child>,
) -> anyhow::Result<ExitCode> {
    let Stop {
        runtime,
        interrupt,
        terminate,
    } = &mut stop;
    runtime.block_on(async {
        tokio::select! {
            _ = interrupt.recv() => {}
            _ = terminate.recv() => {}
        }
    });
    stop_all(&mut children);
    postroom::say!("stopped");
    Ok(ExitCode::SUCCESS)
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
