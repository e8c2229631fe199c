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

use std::process::ExitCode;

use clap::Parser;
use postroom::net::server::{Server, ServerFlags, StartError};

#[derive(Parser)]
#[command(name = "smtp-recv", version, about = "Receive mail by ESMTP")]
struct Args {
    #[command(flatten)]
    server: ServerFlags,
    /// Message submission (RFC 6409, port 587): authentication required,
    /// and the sender must be one of the user's addresses.
    #[arg(long)]
    submission: bool,
}

fn main() -> ExitCode {
    postroom::net::log::init("smtp-recv", "info");
    let args = Args::parse();
    match run(args) {
        Ok(never) => match never {},
        Err(e) => {
            eprintln!("smtp-recv: {e}");
            ExitCode::FAILURE
        }
    }
}

fn run(args: Args) -> Result<std::convert::Infallible, StartError> {
    let server = Server::start(&args.server)?;
    let limits = server.config.limits.clone();
    let submission = args.submission;
    server.serve(
        limits,
        b"421 4.7.0 too many connections, try again later\r\n",
        move |config, tls| session::Shared::new(config, submission, tls),
        session::run,
    )
}
