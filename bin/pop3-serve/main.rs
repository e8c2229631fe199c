//! pop3-serve: the POP3 server (see `pop3-serve(8)`).
//!
//! Lets a user list, fetch and delete the mail in their INBOX maildir
//! (RFC 1939, with CAPA, STLS, AUTH PLAIN and implicit TLS). A session
//! takes a snapshot of the mailbox at login and holds no lock: deliveries,
//! IMAP clients and other POP3 sessions go on meanwhile, and deletions take
//! effect at QUIT on whatever of them is still there.
//!
//! Runs under inetd or a systemd socket with Accept=yes (one connection on
//! stdin/stdout), with Accept=no (`LISTEN_FDS`), or standalone with
//! `--listen` / `--listen-tls`. Started as root to bind port 110 or 995, it
//! leaves root behind before it serves anyone.

#![forbid(unsafe_code)]

mod session;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;

use clap::Parser;
use postroom::config::Config;
use postroom::net::{self, Launch};

#[derive(Parser)]
#[command(name = "pop3-serve", version, about = "Serve mailboxes by POP3")]
struct Args {
    /// The config file (default /etc/postroom/postroom.toml).
    #[arg(long, env = "POSTROOM_CONFIG", value_name = "FILE")]
    config: Option<PathBuf>,
    /// Listen on this address (repeatable); without it, serve one
    /// connection on stdin/stdout or the sockets systemd passes.
    #[arg(long, value_name = "ADDR")]
    listen: Vec<SocketAddr>,
    /// Listen with implicit TLS (port 995, RFC 8314).
    #[arg(long, value_name = "ADDR")]
    listen_tls: Vec<SocketAddr>,
    /// In inetd mode, start TLS at once (for port 995 under inetd).
    #[arg(long)]
    inetd_tls: bool,
}

fn main() -> ExitCode {
    postroom::net::log::init("pop3-serve", "info");
    let args = Args::parse();
    match run(args) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("pop3-serve: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn run(args: Args) -> anyhow::Result<()> {
    let config = Config::load(&Config::locate(args.config.as_deref()))?;
    // Sockets first (ports 110 and 995 need root), then root goes, then
    // the tree.
    let launch = Launch::from_flags(&args.listen, &args.listen_tls, args.inetd_tls)?;
    postroom::net::privileges::drop_privileges(&config)?;
    let tls = match postroom::net::tls::acceptor(&config) {
        Ok(acceptor) => Some(acceptor),
        Err(e) => {
            tracing::warn!("no TLS, so no STLS and no passwords from remote clients: {e}");
            None
        }
    };
    let shared = Arc::new(session::Shared::new(config, tls.clone())?);
    let runtime = launch.runtime()?;
    let limits = shared.config.limits.clone();
    runtime.block_on(net::serve(
        launch,
        &limits,
        tls,
        b"-ERR [SYS/TEMP] too many connections, try again later\r\n",
        move |conn| session::run(shared.clone(), conn),
    ))?;
    // A stdin read still waiting in tokio's blocking pool would hold the
    // runtime open; the session is over, so leave now.
    std::process::exit(0);
}
