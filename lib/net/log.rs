//! Diagnostics for every postroom program: one event per line, on stderr,
//! or records in the journal.
//!
//! Stderr and never stdout, always: in inetd mode (postroom-tree(5), PROCESSES) stdout *is* the
//! client's socket, so a log line there would be sent to the client as if it
//! were a protocol reply. Under inetd or tcpserver stderr goes to whatever
//! the launcher set up (often multilog).
//!
//! The filter comes from `POSTROOM_LOG` in `tracing_subscriber::EnvFilter`
//! syntax (`debug`, `info,postroom::net=debug`, …) and defaults to `info`.
//! The format from `POSTROOM_LOG_FORMAT`: `text` (each line starts with the
//! program name, as syslog-style tools expect, and carries the span fields
//! of the connection it belongs to, `conn=… peer=…`, see `crate::net`),
//! `json` (one object per line, `program` first), or `journald` (the
//! journal's native protocol, every field its own journal field, so
//! `journalctl QUEUE_ID=…` finds a message). Under systemd (`JOURNAL_STREAM`
//! set) the default is `journald`, else `text`.
//!
//! With the default filter and the text format, the subscriber is built
//! only when the first event or span at its level comes (`Deferred`): a
//! program started once per message that has nothing to say pays nothing.
//!
//! Messages from the `log` crate (rustls) come through too, with one
//! change: rustls warns `Illegal SNI extension: ignoring IP address` each
//! time a client sends an IP address as SNI, which common clients do on
//! every connection. That is the client's habit, not the admin's problem,
//! so it is logged at debug.

use std::fmt;
use std::io::IsTerminal;

use std::sync::OnceLock;

use tracing::level_filters::LevelFilter;
use tracing::subscriber::Interest;
use tracing::{Dispatch, Event, Metadata, Subscriber, span};
use tracing_subscriber::EnvFilter;
use tracing_subscriber::fmt::FmtContext;
use tracing_subscriber::fmt::format::{FormatEvent, FormatFields, Writer};
use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::registry::LookupSpan;

/// The environment variable holding the log filter.
pub const FILTER_ENV: &str = "POSTROOM_LOG";

/// The environment variable choosing the format.
pub const FORMAT_ENV: &str = "POSTROOM_LOG_FORMAT";

/// How log events are written.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Format {
    Text,
    Json,
    Journald,
}

impl Format {
    /// `POSTROOM_LOG_FORMAT` as given, else journald under systemd, else
    /// text; an unknown name is returned as the error, to be reported.
    pub fn from_env(format: Option<&str>, journal_stream: bool) -> (Format, Option<String>) {
        let default = if journal_stream {
            Format::Journald
        } else {
            Format::Text
        };
        match format.map(str::trim) {
            None | Some("") => (default, None),
            Some(name) if name.eq_ignore_ascii_case("text") => (Format::Text, None),
            Some(name) if name.eq_ignore_ascii_case("json") => (Format::Json, None),
            Some(name) if name.eq_ignore_ascii_case("journald") => (Format::Journald, None),
            Some(other) => (
                default,
                Some(format!(
                    "{FORMAT_ENV}={other:?} ignored: use text, json or journald"
                )),
            ),
        }
    }
}

/// Installs the process-wide logger.
///
/// `default_level` applies when `POSTROOM_LOG` is unset: servers say
/// `info` (a line per session and message); command-line tools say `warn`,
/// because sendmail callers such as cron mail any output to the user.
///
/// Safe to call more than once: only the first call installs anything, so a
/// library function or a test may call it without knowing whether `main` did.
/// Colours only when stderr is a terminal, so files and the journal get
/// plain text. Text under systemd leaves out the timestamp, because the
/// journal records its own.
pub fn init(program: &str, default_level: &str) {
    // `None` is the default filter, `default_level` alone: built only where
    // it is needed, and `Deferred` applies it without building it at all.
    let (set, bad_filter) = match EnvFilter::try_from_env(FILTER_ENV) {
        Ok(filter) => (Some(filter), None),
        Err(e) => {
            // Unset is the normal case; a value that does not parse is a
            // mistake worth reporting once logging works.
            let bad = std::env::var(FILTER_ENV).ok().map(|value| {
                format!("{FILTER_ENV}={value:?} ignored ({e}); using {default_level:?}")
            });
            (None, bad)
        }
    };
    let filter = |set: Option<EnvFilter>| set.unwrap_or_else(|| EnvFilter::new(default_level));
    let journal_stream = std::env::var_os("JOURNAL_STREAM").is_some();
    let (format, bad_format) =
        Format::from_env(std::env::var(FORMAT_ENV).ok().as_deref(), journal_stream);
    let mut notes: Vec<String> = bad_filter.into_iter().chain(bad_format).collect();
    let installed = match format {
        Format::Journald => match tracing_journald::layer() {
            Ok(layer) => {
                let layer = layer
                    .with_syslog_identifier(program.to_string())
                    .with_field_prefix(None);
                install(tracing_subscriber::registry().with(filter(set)).with(layer))
            }
            Err(e) => {
                notes.push(format!(
                    "the journal cannot be reached ({e}); logging text to stderr"
                ));
                install(text_subscriber(program, filter(set), journal_stream))
            }
        },
        Format::Json => {
            let ansi_free = tracing_subscriber::fmt::layer()
                .with_writer(std::io::stderr)
                .with_ansi(false)
                .event_format(Prefixed {
                    program: program.to_string(),
                    inner: tracing_subscriber::fmt::format()
                        .json()
                        .with_target(false)
                        .flatten_event(true)
                        .with_current_span(false)
                        .with_span_list(true),
                    json: true,
                })
                .fmt_fields(tracing_subscriber::fmt::format::JsonFields::new());
            install(
                tracing_subscriber::registry()
                    .with(filter(set))
                    .with(ansi_free),
            )
        }
        Format::Text => match (set, default_level.parse::<LevelFilter>()) {
            (None, Ok(level)) => {
                let program = program.to_string();
                install(Deferred::new(level, move || {
                    text_subscriber(&program, EnvFilter::new(level.to_string()), journal_stream)
                }))
            }
            (set, _) => install(text_subscriber(program, filter(set), journal_stream)),
        },
    };
    if installed {
        for note in notes {
            tracing::warn!("{note}");
        }
    }
}

fn text_subscriber(program: &str, filter: EnvFilter, journal_stream: bool) -> Dispatch {
    let ansi = std::io::stderr().is_terminal();
    let layer = tracing_subscriber::fmt::layer()
        .with_writer(std::io::stderr)
        .with_ansi(ansi)
        .with_target(false);
    if journal_stream {
        let prefixed = Prefixed {
            program: program.to_string(),
            inner: format::default_format().without_time().with_ansi(ansi),
            json: false,
        };
        Dispatch::new(
            tracing_subscriber::registry()
                .with(filter)
                .with(layer.without_time().event_format(prefixed)),
        )
    } else {
        let prefixed = Prefixed {
            program: program.to_string(),
            inner: format::default_format().with_ansi(ansi),
            json: false,
        };
        Dispatch::new(
            tracing_subscriber::registry()
                .with(filter)
                .with(layer.event_format(prefixed)),
        )
    }
}

/// The text subscriber of a program whose filter is one level (the
/// default, `POSTROOM_LOG` unset). Events and spans below the level are
/// refused at their callsite; the real subscriber is built by the first
/// one that passes. Building it allocates the registry's span slab (33 k
/// instructions and 8 page faults per start), so a per-message program
/// logging at `warn` that has nothing to say never pays for it.
struct Deferred {
    level: LevelFilter,
    build: Box<dyn Fn() -> Dispatch + Send + Sync>,
    inner: OnceLock<Dispatch>,
}

impl Deferred {
    fn new(level: LevelFilter, build: impl Fn() -> Dispatch + Send + Sync + 'static) -> Self {
        Deferred {
            level,
            build: Box::new(build),
            inner: OnceLock::new(),
        }
    }

    fn inner(&self) -> &Dispatch {
        self.inner.get_or_init(|| (self.build)())
    }
}

impl Subscriber for Deferred {
    fn register_callsite(&self, metadata: &'static Metadata<'static>) -> Interest {
        if self.level >= *metadata.level() {
            // Asked again at each use, through `enabled`.
            Interest::sometimes()
        } else {
            Interest::never()
        }
    }

    fn max_level_hint(&self) -> Option<LevelFilter> {
        Some(self.level)
    }

    fn enabled(&self, metadata: &Metadata<'_>) -> bool {
        self.level >= *metadata.level() && self.inner().enabled(metadata)
    }

    fn new_span(&self, span: &span::Attributes<'_>) -> span::Id {
        self.inner().new_span(span)
    }

    fn record(&self, span: &span::Id, values: &span::Record<'_>) {
        self.inner().record(span, values)
    }

    fn record_follows_from(&self, span: &span::Id, follows: &span::Id) {
        self.inner().record_follows_from(span, follows)
    }

    fn event(&self, event: &Event<'_>) {
        self.inner().event(event)
    }

    fn enter(&self, span: &span::Id) {
        self.inner().enter(span)
    }

    fn exit(&self, span: &span::Id) {
        self.inner().exit(span)
    }

    fn clone_span(&self, id: &span::Id) -> span::Id {
        self.inner().clone_span(id)
    }

    fn try_close(&self, id: span::Id) -> bool {
        self.inner().try_close(id)
    }

    fn current_span(&self) -> tracing_core::span::Current {
        match self.inner.get() {
            Some(inner) => inner.current_span(),
            None => tracing_core::span::Current::none(),
        }
    }
}

/// Makes `subscriber` the global one and routes the `log` crate's records
/// to it (see [`Demote`]); false if a logger was installed already.
fn install(subscriber: impl Into<Dispatch>) -> bool {
    if tracing::dispatcher::set_global_default(subscriber.into()).is_err() {
        return false;
    }
    if log::set_boxed_logger(Box::new(Demote(tracing_log::LogTracer::new()))).is_ok() {
        log::set_max_level(log::LevelFilter::Trace);
    }
    true
}

/// Passes `log` records on to tracing, with the warnings that clients
/// cause on every connection demoted to debug.
struct Demote(tracing_log::LogTracer);

/// Warnings of dependencies that describe a client's habit, not a fault.
fn is_client_habit(record: &log::Record<'_>) -> bool {
    record.target().starts_with("rustls")
        && record
            .args()
            .as_str()
            .map(str::to_string)
            .unwrap_or_else(|| record.args().to_string())
            .starts_with("Illegal SNI extension: ignoring IP address")
}

impl log::Log for Demote {
    fn enabled(&self, metadata: &log::Metadata<'_>) -> bool {
        // Asked before the message is known: let rustls's warnings through
        // to `log`, which decides with the message in hand.
        metadata.target().starts_with("rustls") || self.0.enabled(metadata)
    }

    fn log(&self, record: &log::Record<'_>) {
        if record.level() <= log::Level::Warn && is_client_habit(record) {
            let demoted = log::Record::builder()
                .level(log::Level::Debug)
                .target(record.target())
                .args(*record.args())
                .module_path(record.module_path())
                .file(record.file())
                .line(record.line())
                .build();
            if self.0.enabled(demoted.metadata()) {
                self.0.log(&demoted);
            }
        } else if self.0.enabled(record.metadata()) {
            self.0.log(record);
        }
    }

    fn flush(&self) {}
}

mod format {
    use tracing_subscriber::fmt::format::{Format, Full};

    /// The stock one-line format without the module path: programs are
    /// small and the message says where it comes from.
    pub fn default_format() -> Format<Full> {
        Format::default().with_target(false)
    }
}

/// Names the program in every event, then the stock format: `program: `
/// in front of a text line, a first `"program"` field in a JSON object.
struct Prefixed<F> {
    program: String,
    inner: F,
    json: bool,
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
        if !self.json {
            write!(writer, "{}: ", self.program)?;
            return self.inner.format_event(ctx, writer, event);
        }
        let mut object = String::new();
        self.inner
            .format_event(ctx, Writer::new(&mut object), event)?;
        let rest = object.strip_prefix('{').unwrap_or(&object);
        let program = serde_json::to_string(&self.program).map_err(|_| fmt::Error)?;
        write!(writer, "{{\"program\":{program},{rest}")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_format_is_chosen_by_name_or_by_systemd() {
        assert_eq!(Format::from_env(None, false).0, Format::Text);
        assert_eq!(Format::from_env(None, true).0, Format::Journald);
        assert_eq!(Format::from_env(Some("JSON"), true).0, Format::Json);
        assert_eq!(Format::from_env(Some("text"), true).0, Format::Text);
        let (format, note) = Format::from_env(Some("xml"), false);
        assert_eq!(format, Format::Text);
        assert!(note.unwrap().contains("text, json or journald"));
    }

    #[test]
    fn the_deferred_subscriber_is_built_by_the_first_event_that_passes() {
        use std::sync::Arc;
        use std::sync::atomic::{AtomicUsize, Ordering};
        let built = Arc::new(AtomicUsize::new(0));
        let counter = built.clone();
        let deferred = Deferred::new(LevelFilter::WARN, move || {
            counter.fetch_add(1, Ordering::SeqCst);
            Dispatch::new(tracing_subscriber::registry())
        });
        tracing::dispatcher::with_default(&Dispatch::new(deferred), || {
            tracing::info!("below the level");
            let span = tracing::info_span!("below the level too");
            let _entered = span.enter();
            assert_eq!(built.load(Ordering::SeqCst), 0);
            tracing::warn!("passes");
            let span = tracing::warn_span!("passes too", n = 1);
            span.record("n", 2);
            let _entered = span.enter();
            tracing::error!("inside the span");
        });
        assert_eq!(built.load(Ordering::SeqCst), 1);
    }

    #[test]
    fn init_twice_is_harmless() {
        init("test", "info");
        init("test-again", "warn");
        tracing::info!("logged after two inits");
    }
}
