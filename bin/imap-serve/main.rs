//! imap-serve: the IMAP server (RFC 9051 and RFC 3501; see `imap-serve(8)`).
//!
//! Serves each user's Maildir++ tree through the folder state in
//! `postroom::store::mailbox` (`postroom-mailbox(5)`), which other processes
//! (deliveries, POP3, other IMAP sessions) share through the files alone.
//!
//! Runs under inetd or a systemd socket with Accept=yes (one connection on
//! stdin/stdout, `--inetd-tls` for port 993), with Accept=no (`LISTEN_FDS`;
//! a socket named `imaps` speaks implicit TLS), or standalone with
//! `--listen` / `--listen-tls`. Started as root to bind port 143, it leaves
//! root behind before it serves anyone.

#![forbid(unsafe_code)]

// The session, the view of the selected folder, and what the command
// handlers share (message access, search-key matching)...
mod matching;
mod message;
mod session;
mod view;
// ...and the handlers, which point at those and never at each other.
mod fetch;
mod folders;
mod search;
mod thread;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;

use clap::Parser;
use postroom::config::Config;
use postroom::net::{self, Launch};

#[derive(Parser)]
#[command(name = "imap-serve", version, about = "Serve mailboxes by IMAP")]
struct Args {
    /// The config file (default /etc/postroom/postroom.toml).
    #[arg(long, env = "POSTROOM_CONFIG", value_name = "FILE")]
    config: Option<PathBuf>,
    /// Listen on this address (repeatable); without it, serve one
    /// connection on stdin/stdout or the sockets systemd passes.
    #[arg(long, value_name = "ADDR")]
    listen: Vec<SocketAddr>,
    /// Listen with implicit TLS (port 993, RFC 8314).
    #[arg(long, value_name = "ADDR")]
    listen_tls: Vec<SocketAddr>,
    /// In inetd mode, start TLS at once (for port 993 under inetd).
    #[arg(long)]
    inetd_tls: bool,
}

fn main() -> ExitCode {
    postroom::net::log::init("imap-serve", "info");
    let args = Args::parse();
    match run(args) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("imap-serve: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn run(args: Args) -> anyhow::Result<()> {
    let config = Config::load(&Config::locate(args.config.as_deref()))?;
    // Sockets first (port 143 needs root), then root goes, then the tree.
    let launch = Launch::from_flags(&args.listen, &args.listen_tls, args.inetd_tls)?;
    postroom::net::privileges::drop_privileges(&config)?;
    let tls = match postroom::net::tls::acceptor(&config) {
        Ok(acceptor) => Some(acceptor),
        Err(e) => {
            tracing::warn!("no TLS: {e}");
            None
        }
    };
    let runtime = launch.runtime()?;
    // IMAP clients idle for up to 29 minutes between commands (RFC 9051
    // §5.4), so imap.idle_timeout replaces the SMTP-sized default.
    let mut limits = config.limits.clone();
    limits.idle_timeout = config.imap.idle_timeout;
    runtime.block_on(async move {
        let shared = Arc::new(session::Shared::new(config, tls.clone())?);
        net::serve(
            launch,
            &limits,
            tls,
            b"* BYE too many connections, try again later\r\n",
            move |conn| session::run(shared.clone(), conn),
        )
        .await?;
        anyhow::Ok(())
    })?;
    // A stdin read still waiting in tokio's blocking pool would hold the
    // runtime open; the session is over, so leave now.
    std::process::exit(0);
}
