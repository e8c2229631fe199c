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

/// jemalloc in the static build (contrib/install/build-static): musl's own
/// malloc slows a standalone smtp-recv's threads (Cargo.toml says how).
#[cfg(target_env = "musl")]
#[global_allocator]
static ALLOCATOR: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

#[derive(Parser)]
#[command(name = "smtp-recv", version, about = "Receive mail by ESMTP")]
struct Args {
    #[command(flatten)]
    server: ServerFlags,
    /// Message submission (RFC 6409, port 587): authentication required,
    /// and the sender must be one of the user's addresses.
    #[arg(long)]
    submission: bool,
    /// Serve a local user on stdin/stdout, as `sendmail -bs` does (how
    /// `mail-inject -bs` runs it): the client may send anywhere, as with
    /// mail-inject. Refused on a network socket and with --listen.
    #[arg(long, conflicts_with_all = ["submission", "listen", "listen_tls"])]
    local: bool,
}

fn main() -> ExitCode {
    postroom::store::fsutil::tighten_umask();
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
    if args.local && stdin_is_socket() {
        return Err(StartError::Setup(
            "--local serves a local user on a pipe, never a network connection: \
             drop --local from the inetd or systemd line"
                .into(),
        ));
    }
    let server = Server::start(&args.server)?;
    let limits = server.config.limits.clone();
    let submission = args.submission;
    let local = args.local;
    server.serve(
        limits,
        b"421 4.7.0 too many connections, try again later\r\n",
        move |config, tls| session::Shared::new(config, submission, local, tls),
        session::run,
    )
}

/// Whether fd 0 is a socket (inetd, systemd Accept=yes), as opposed to a
/// pipe or terminal a local user holds.
fn stdin_is_socket() -> bool {
    use std::os::fd::AsFd;
    use std::os::unix::fs::FileTypeExt;
    std::io::stdin()
        .as_fd()
        .try_clone_to_owned()
        .map(std::fs::File::from)
        .and_then(|f| f.metadata())
        .is_ok_and(|m| m.file_type().is_socket())
}
