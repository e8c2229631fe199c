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
// handlers share (message access, search-key matching, which folder a
// name means and the rights on it)...
mod acl;
mod matching;
mod message;
mod session;
mod view;
// ...and the handlers, which point at those and never at each other,
// but for the search and sort contexts (RFC 5267), which the sync after
// any command runs SEARCH and SORT again for, and NOTIFY (RFC 5465),
// which between commands sends what the sync, FETCH and STATUS would.
mod catenate;
mod context;
mod fetch;
mod folders;
mod notify;
mod search;
mod thread;

use std::process::ExitCode;

use clap::Parser;
use postroom::net::server::{Server, ServerFlags, StartError};

#[derive(Parser)]
#[command(name = "imap-serve", version, about = "Serve mailboxes by IMAP")]
struct Args {
    #[command(flatten)]
    server: ServerFlags,
}

fn main() -> ExitCode {
    postroom::store::fsutil::tighten_umask();
    postroom::net::log::init("imap-serve", "info");
    let args = Args::parse();
    // A standalone server returns the memory a big command used.
    postroom::net::server::settle_allocator(&args.server);
    match run(args) {
        Ok(never) => match never {},
        Err(e) => {
            eprintln!("imap-serve: {e}");
            ExitCode::FAILURE
        }
    }
}

fn run(args: Args) -> Result<std::convert::Infallible, StartError> {
    let server = Server::start(&args.server)?;
    // IMAP clients idle for up to 29 minutes between commands (RFC 9051
    // §5.4), so imap.idle_timeout replaces the SMTP-sized default.
    let mut limits = server.config.limits.clone();
    limits.idle_timeout = server.config.imap.idle_timeout;
    server.serve(
        limits,
        b"* BYE too many connections, try again later\r\n",
        session::Shared::new,
        session::run,
    )
}
