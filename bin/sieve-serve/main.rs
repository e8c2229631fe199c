//! sieve-serve: the ManageSieve server (RFC 5804; see `sieve-serve(8)`).
//!
//! Lets a user upload, list, activate, fetch, rename and delete their Sieve
//! scripts from a mail client or `sieve-connect`. Scripts are checked by
//! mailsort's own compiler before they are stored, and stored where
//! mailsort reads them (`postroom-sieve(5)`, FILES), so the next delivery
//! follows them.
//!
//! Runs under inetd or a systemd socket with Accept=yes (one connection on
//! stdin/stdout), with Accept=no (`LISTEN_FDS`), or standalone with
//! `--listen`. Started as root to bind port 4190, it leaves root behind
//! before it serves anyone.

#![forbid(unsafe_code)]

mod session;

use std::process::ExitCode;

use clap::Parser;
use postroom::net::server::{Server, ServerFlags, StartError};

#[derive(Parser)]
#[command(
    name = "sieve-serve",
    version,
    about = "Let users manage their Sieve scripts by ManageSieve"
)]
struct Args {
    #[command(flatten)]
    server: ServerFlags,
}

fn main() -> ExitCode {
    postroom::store::fsutil::tighten_umask();
    postroom::net::log::init("sieve-serve", "info");
    let args = Args::parse();
    match run(args) {
        Ok(never) => match never {},
        Err(e) => {
            eprintln!("sieve-serve: {e}");
            ExitCode::FAILURE
        }
    }
}

fn run(args: Args) -> Result<std::convert::Infallible, StartError> {
    let server = Server::start(&args.server)?;
    let limits = server.config.limits.clone();
    server.serve(
        limits,
        b"BYE (TRYLATER) \"too many connections, try again later\"\r\n",
        session::Shared::new,
        session::run,
    )
}
