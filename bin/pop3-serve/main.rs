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

use std::process::ExitCode;

use clap::Parser;
use postroom::net::server::{Server, ServerFlags, StartError};

#[derive(Parser)]
#[command(name = "pop3-serve", version, about = "Serve mailboxes by POP3")]
struct Args {
    #[command(flatten)]
    server: ServerFlags,
}

fn main() -> ExitCode {
    postroom::store::fsutil::tighten_umask();
    postroom::net::log::init("pop3-serve", "info");
    let args = Args::parse();
    match run(args) {
        Ok(never) => match never {},
        Err(e) => {
            eprintln!("pop3-serve: {e}");
            ExitCode::FAILURE
        }
    }
}

fn run(args: Args) -> Result<std::convert::Infallible, StartError> {
    let server = Server::start(&args.server)?;
    let limits = server.config.limits.clone();
    server.serve(
        limits,
        b"-ERR [SYS/TEMP] too many connections, try again later\r\n",
        session::Shared::new,
        session::run,
    )
}
