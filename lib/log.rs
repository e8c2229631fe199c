//! Logging for every postroom program: `tracing` to standard error.
//!
//! Never to standard output: in inetd mode stdout is the client's socket, and
//! a log line there would be a protocol reply. The level comes from
//! `POSTROOM_LOG` (default: see [`init`]; any `tracing` filter such as
//! `postroom=debug`). Servers wrap each connection in a span carrying its id
//! and peer, so every line of a session can be found with one grep.

use std::io::IsTerminal;

/// Sets up logging once; a second call is harmless. `default_level` applies
/// when `POSTROOM_LOG` is unset: servers say `info` (a line per session and
/// message), command-line tools say `warn`, because sendmail callers such as
/// cron mail any output they see to the user.
pub fn init(program: &str, default_level: &str) {
    let filter = tracing_subscriber::EnvFilter::try_from_env("POSTROOM_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(default_level));
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::stderr().is_terminal())
        .with_target(false)
        .try_init();
    tracing::trace!(program, "logging started");
}
