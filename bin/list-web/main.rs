//! list-web: the web side of mailing lists (see `list-web(8)`).
//!
//! Two pages, for every list in the tree:
//!
//! - `/unsubscribe/LIST/MEMBER/TOKEN`, the URL list-expand writes into
//!   each member's List-Unsubscribe: a POST carrying
//!   `List-Unsubscribe=One-Click` removes that member at once, no login and
//!   no confirmation (RFC 8058); a GET only shows a button that sends that
//!   POST, because mail scanners fetch links unasked. The token is the
//!   member's HMAC under the list's secret, so a forged one does nothing.
//! - `/LIST`, a form to subscribe or unsubscribe, which sends the same
//!   confirmation request a message to LIST-request gets.
//!
//! It runs as a CGI program under any web server, or with `--http` as a
//! tiny HTTP/1.1 responder for one connection on stdin and stdout
//! (systemd socket activation with `Accept=yes`, inetd). Either way it
//! answers one request and exits.

#![forbid(unsafe_code)]

use std::io::Write;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::Context;
use clap::Parser;
use postroom::config::Config;
use postroom::proto::http::Response;

mod pages;
mod read;

/// The most bytes a form body may have: a one-click POST is 26 bytes, the
/// subscription form not much more.
const MAX_BODY: usize = 64 * 1024;

#[derive(Parser)]
#[command(
    name = "list-web",
    version,
    about = "One-click unsubscribe and a subscription form for the lists (CGI or HTTP on stdin)"
)]
struct Cli {
    /// The config file (default /etc/postroom/postroom.toml).
    #[arg(long, env = "POSTROOM_CONFIG", value_name = "FILE")]
    config: Option<PathBuf>,
    /// Speak HTTP/1.1 on stdin and stdout for one request (systemd socket
    /// activation with Accept=yes, inetd), instead of CGI.
    #[arg(long)]
    http: bool,
    /// With --http: how long the whole request may take to arrive.
    #[arg(long, value_name = "SECONDS", default_value_t = 30)]
    timeout: u64,
}

/// One request, as CGI describes it or as read from the connection.
pub struct Request {
    pub method: String,
    /// Percent-decoded (CGI's PATH_INFO is), `/` at least.
    pub path: String,
    pub content_type: Option<String>,
    pub body: Vec<u8>,
}

fn main() -> ExitCode {
    postroom::store::fsutil::tighten_umask();
    postroom::net::log::init("list-web", "info");
    let cli = Cli::parse();
    let cgi = !cli.http;
    if cgi && std::env::var_os("GATEWAY_INTERFACE").is_none() {
        eprintln!(
            "list-web: no CGI request here (GATEWAY_INTERFACE is unset): run it from a web \
             server's CGI, or with --http on a connection (list-web(8))"
        );
        return ExitCode::from(64);
    }
    let (response, head_only) = match answer(&cli) {
        Ok(Some(answered)) => answered,
        // The client went away before its request was whole: nobody to
        // answer.
        Ok(None) => return ExitCode::SUCCESS,
        Err(e) => {
            tracing::error!("{e:#}");
            (pages::trouble(), false)
        }
    };
    let bytes = if cgi {
        response.to_cgi(head_only)
    } else {
        response.to_http(head_only)
    };
    let mut out = std::io::stdout().lock();
    match out.write_all(&bytes).and_then(|()| out.flush()) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            tracing::warn!("writing the response: {e}");
            ExitCode::from(74)
        }
    }
}

/// Reads the request and answers it; true with HEAD (no body sent).
/// `None` when the client left before its request was whole.
fn answer(cli: &Cli) -> anyhow::Result<Option<(Response, bool)>> {
    let request = if cli.http {
        read::http(
            std::io::stdin(),
            &mut std::io::stdout(),
            Duration::from_secs(cli.timeout.max(1)),
            MAX_BODY,
        )
    } else {
        read::cgi(std::io::stdin(), MAX_BODY)
    };
    let request = match request {
        Ok(request) => request,
        Err(read::Failure::Http(e)) => return Ok(Some((pages::refusal(&e), false))),
        Err(read::Failure::TimedOut) => {
            tracing::info!("request timed out");
            let page = pages::message(408, "Too slow", "The request did not arrive in time.");
            return Ok(Some((page, false)));
        }
        Err(read::Failure::Closed) => return Ok(None),
        Err(read::Failure::Io(e)) => return Err(e).context("reading the request"),
    };
    let config = Config::load(&Config::locate(cli.config.as_deref()))?;
    postroom::net::privileges::drop_privileges(&config)?;
    let head_only = request.method == "HEAD";
    Ok(Some((pages::handle(&config, &request)?, head_only)))
}
