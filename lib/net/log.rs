//! Diagnostics for every postroom program: one line per event, on stderr.
//!
//! Stderr and never stdout, always: in inetd mode (postroom-tree(5), PROCESSES) stdout *is* the
//! client's socket, so a log line there would be sent to the client as if it
//! were a protocol reply. Under systemd stderr goes to the journal, under
//! inetd or tcpserver to whatever the launcher set up (often multilog).
//!
//! The filter comes from `POSTROOM_LOG` in `tracing_subscriber::EnvFilter`
//! syntax (`debug`, `info,postroom::net=debug`, …) and defaults to `info`.
//! Each line starts with the program name, as syslog-style tools expect, and
//! carries the span fields of the connection it belongs to (`conn=… peer=…`,
//! see `crate::net`).

use std::fmt;
use std::io::IsTerminal;

use tracing::{Event, Subscriber};
use tracing_subscriber::EnvFilter;
use tracing_subscriber::fmt::FmtContext;
use tracing_subscriber::fmt::format::{FormatEvent, FormatFields, Writer};
use tracing_subscriber::registry::LookupSpan;

/// The environment variable holding the log filter.
pub const FILTER_ENV: &str = "POSTROOM_LOG";

/// Installs the process-wide logger writing to stderr.
///
/// `default_level` applies when `POSTROOM_LOG` is unset: servers say
/// `info` (a line per session and message); command-line tools say `warn`,
/// because sendmail callers such as cron mail any output to the user.
///
/// Safe to call more than once: only the first call installs anything, so a
/// library function or a test may call it without knowing whether `main` did.
/// Colours only when stderr is a terminal, so files and the journal get
/// plain text. Under systemd (`JOURNAL_STREAM` set) the timestamp is left
/// out because the journal records its own.
pub fn init(program: &str, default_level: &str) {
    let (filter, bad_filter) = match EnvFilter::try_from_env(FILTER_ENV) {
        Ok(filter) => (filter, None),
        Err(e) => {
            // Unset is the normal case; a value that does not parse is a
            // mistake worth reporting once logging works.
            let bad = std::env::var(FILTER_ENV).ok().map(|value| {
                format!("{FILTER_ENV}={value:?} ignored ({e}); using {default_level:?}")
            });
            (EnvFilter::new(default_level), bad)
        }
    };
    let ansi = std::io::stderr().is_terminal();
    let builder = tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .with_env_filter(filter)
        .with_ansi(ansi)
        .with_target(false);
    let installed = if std::env::var_os("JOURNAL_STREAM").is_some() {
        let format = builder.without_time();
        let prefixed = Prefixed {
            program: program.to_string(),
            inner: format::default_format().without_time().with_ansi(ansi),
        };
        format.event_format(prefixed).try_init().is_ok()
    } else {
        let prefixed = Prefixed {
            program: program.to_string(),
            inner: format::default_format().with_ansi(ansi),
        };
        builder.event_format(prefixed).try_init().is_ok()
    };
    if installed && let Some(message) = bad_filter {
        tracing::warn!("{message}");
    }
}

mod format {
    use tracing_subscriber::fmt::format::{Format, Full};

    /// The stock one-line format without the module path: programs are
    /// small and the message says where it comes from.
    pub fn default_format() -> Format<Full> {
        Format::default().with_target(false)
    }
}

/// Puts `program: ` in front of every line, then the stock format.
struct Prefixed<F> {
    program: String,
    inner: F,
}

impl<S, N, F> FormatEvent<S, N> for Prefixed<F>
where
    S: Subscriber + for<'a> LookupSpan<'a>,
    N: for<'a> FormatFields<'a> + 'static,
    F: FormatEvent<S, N>,
{
    fn format_event(
        &self,
        ctx: &FmtContext<'_, S, N>,
        mut writer: Writer<'_>,
        event: &Event<'_>,
    ) -> fmt::Result {
        write!(writer, "{}: ", self.program)?;
        self.inner.format_event(ctx, writer, event)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn init_twice_is_harmless() {
        init("test", "info");
        init("test-again", "warn");
        tracing::info!("logged after two inits");
    }
}
