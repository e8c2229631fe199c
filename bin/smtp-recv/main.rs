//! smtp-recv: the ESMTP receiver (see `smtp-recv(8)`).
//!
//! Accepts mail for the local domains from anyone, and for elsewhere only
//! from authenticated users or `smtp.relay_networks`. Each accepted message
//! is delivered to its local recipients or committed to the queue before
//! the 250 (`postroom-queue(5)`); remote recipients wait for `smtp-send`.
//!
//! Runs under inetd or a systemd socket with Accept=yes (one connection on
//! stdin/stdout), with Accept=no (`LISTEN_FDS`), or standalone with
//! `--listen` / `--listen-tls`. Started as root to bind port 25, it leaves
//! root behind before it serves anyone.

#![forbid(unsafe_code)]

mod hooks;
mod session;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;

use clap::Parser;
use postroom::config::Config;
use postroom::net::{self, Launch};

#[derive(Parser)]
#[command(name = "smtp-recv", version, about = "Receive mail by ESMTP")]
struct Args {
    /// The config file (default /etc/postroom/postroom.toml).
    #[arg(long, env = "POSTROOM_CONFIG", value_name = "FILE")]
    config: Option<PathBuf>,
    /// Listen on this address (repeatable); without it, serve one
    /// connection on stdin/stdout or the sockets systemd passes.
    #[arg(long, value_name = "ADDR")]
    listen: Vec<SocketAddr>,
    /// Listen with implicit TLS (port 465, RFC 8314).
    #[arg(long, value_name = "ADDR")]
    listen_tls: Vec<SocketAddr>,
    /// Message submission (RFC 6409, port 587): authentication required,
    /// and the sender must be one of the user's addresses.
    #[arg(long)]
    submission: bool,
    /// In inetd mode, start TLS at once (for port 465 under inetd).
    #[arg(long)]
    inetd_tls: bool,
}

fn main() -> ExitCode {
    postroom::net::log::init("smtp-recv", "info");
    let args = Args::parse();
    match run(args) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("smtp-recv: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn run(args: Args) -> anyhow::Result<()> {
    let config = Config::load(&Config::locate(args.config.as_deref()))?;
    // Sockets first (port 25 needs root), then root goes, then the tree.
    let launch = Launch::from_flags(&args.listen, &args.listen_tls, args.inetd_tls)?;
    postroom::net::privileges::drop_privileges(&config)?;
    let tls = match postroom::net::tls::acceptor(&config) {
        Ok(acceptor) => Some(acceptor),
        Err(e) => {
            tracing::warn!("no TLS: {e}");
            None
        }
    };
    let shared = Arc::new(session::Shared::new(config, args.submission, tls.clone())?);
    let runtime = launch.runtime()?;
    let limits = shared.config.limits.clone();
    runtime.block_on(net::serve(
        launch,
        &limits,
        tls,
        b"421 4.7.0 too many connections, try again later\r\n",
        move |conn| session::run(shared.clone(), conn),
    ))?;
    // A stdin read still waiting in tokio's blocking pool would hold the
    // runtime open; the session is over, so leave now.
    std::process::exit(0);
}
