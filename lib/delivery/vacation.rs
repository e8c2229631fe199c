//! Auto-replies (RFC 3834): the decision whether a message gets one, the
//! record of who was answered, and the reply itself. Used by the `vacation`
//! program and by the Sieve `vacation` action, so both answer by the same
//! rules and share one record per user.
//!
//! A message is answered only when all of these hold (RFC 3834 §2 and the
//! habits of Unix vacation): the envelope sender is not null and not a
//! mail system or list address (MAILER-DAEMON, postmaster, owner-*,
//! *-request, *-owner, *-bounces, noreply); the message has no
//! `Auto-Submitted` other than `no`, no `Precedence: bulk|list|junk`, no
//! `List-*` header; the sender is not the user; one of the user's
//! addresses is in To, Cc, Bcc, Resent-To, Resent-Cc or Resent-Bcc; and this
//! sender was not answered (with the same handle) within the interval.
//!
//! Records live in `state/vacation/USER` (one `TIME SENDER [HANDLE]` line
//! each), read and rewritten under the file's lock, so two deliveries at
//! once cannot both answer. The reply is queued with the null sender, so it
//! can never be answered or bounced back.

use std::path::{Path, PathBuf};
use std::time::Duration;

use mail_parser::{HeaderValue, MessageParser};

use crate::config::Config;
use crate::delivery::submit::{Recipients, Submission, SubmitError, submit};
use crate::directory::aliases::Directory;
use crate::proto::address::{Address, ReversePath};
use crate::proto::message;
use crate::store::fsutil::{self, FileLock};
use crate::store::queue::{QueueId, Recipient, Route};

/// The default interval between two replies to one sender.
pub const DEFAULT_INTERVAL: Duration = Duration::from_secs(7 * 86400);

#[derive(Debug, thiserror::Error)]
pub enum VacationError {
    #[error("{}: {error} (check that the state folder exists and is writable)", path.display())]
    Records {
        path: PathBuf,
        error: std::io::Error,
    },
    #[error("cannot queue the reply: {0}")]
    Queue(#[from] SubmitError),
}

/// What to answer with, and to whom the user answers.
#[derive(Debug, Clone)]
pub struct Settings {
    /// The user's own address and any others (`-a`, Sieve `:addresses`).
    pub addresses: Vec<Address>,
    /// At most one reply per sender in this time (`-r`, `:days`).
    pub interval: Duration,
    /// The reply's Subject; default `Auto: ` and the original's.
    pub subject: Option<String>,
    /// The reply's From; default the user's address.
    pub from: Option<String>,
    /// The reply's text.
    pub body: String,
    /// Replies with different handles are counted apart (Sieve `:handle`).
    pub handle: Option<String>,
}

/// What became of a message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Decision {
    Replied(QueueId),
    /// Not answered, and why (for logs and `--test` output).
    Skipped(String),
}

/// Where a user's records are kept.
pub fn records_path(config: &Config, user: &Address) -> PathBuf {
    config.state_dir().join("vacation").join(user.lookup_key())
}

/// Decides whether `message` (from `sender`, to `user`) is answered and, if
/// so, queues the reply and records it. `db` overrides the records file.
pub fn respond(
    config: &Config,
    directory: &Directory,
    user: &Address,
    sender: &ReversePath,
    message: &[u8],
    settings: &Settings,
    db: Option<&Path>,
) -> Result<Decision, VacationError> {
    let ReversePath::Address(sender) = sender else {
        return Ok(Decision::Skipped(
            "the null sender is never answered".into(),
        ));
    };
    if let Some(why) = automatic_sender(sender) {
        return Ok(Decision::Skipped(why));
    }
    if settings
        .addresses
        .iter()
        .chain(std::iter::once(user))
        .any(|a| a.lookup_key() == sender.lookup_key())
    {
        return Ok(Decision::Skipped(
            "the user's own address is never answered".into(),
        ));
    }
    let parsed = MessageParser::default().parse_headers(message);
    let header = |name: &str| -> Option<String> {
        parsed
            .as_ref()?
            .header_raw(name)
            .map(|v| v.trim().to_string())
    };
    if let Some(auto) = header("Auto-Submitted")
        && !auto.eq_ignore_ascii_case("no")
    {
        return Ok(Decision::Skipped(format!("Auto-Submitted: {auto}")));
    }
    if let Some(precedence) = header("Precedence")
        && ["bulk", "list", "junk"]
            .iter()
            .any(|p| precedence.eq_ignore_ascii_case(p))
    {
        return Ok(Decision::Skipped(format!("Precedence: {precedence}")));
    }
    let list_header = parsed.as_ref().and_then(|m| {
        m.headers()
            .iter()
            .find(|h| h.name().to_ascii_lowercase().starts_with("list-"))
            .map(|h| h.name().to_string())
    });
    if let Some(name) = list_header {
        return Ok(Decision::Skipped(format!(
            "{name} says it came from a list"
        )));
    }
    let recipients = parsed
        .as_ref()
        .map(|m| {
            // RFC 5230 §4.5: the user must be a named recipient.
            ["To", "Cc", "Bcc", "Resent-To", "Resent-Cc", "Resent-Bcc"]
                .iter()
                .flat_map(|name| addresses_in(m.header(*name)))
                .collect::<Vec<_>>()
        })
        .unwrap_or_default();
    let mine = settings
        .addresses
        .iter()
        .any(|a| recipients.contains(&a.lookup_key()));
    if !mine {
        return Ok(Decision::Skipped(
            "none of the user's addresses is in To, Cc, Bcc or Resent-*".into(),
        ));
    }

    let user_main = settings.addresses.first().unwrap_or(user);
    let path = db
        .map(Path::to_path_buf)
        .unwrap_or_else(|| records_path(config, user_main));
    let records_error = |error| VacationError::Records {
        path: path.clone(),
        error,
    };
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir).map_err(records_error)?;
    }
    let _lock = FileLock::exclusive(&fsutil::lock_path(&path)).map_err(records_error)?;
    let now = fsutil::now_secs();
    let mut records = read_records(&path).map_err(records_error)?;
    let key = sender.lookup_key();
    let handle = settings.handle.clone().unwrap_or_default();
    let interval = settings.interval.as_secs();
    if let Some(last) = records
        .iter()
        .find(|r| r.sender == key && r.handle == handle)
        && now.saturating_sub(last.at) < interval
    {
        return Ok(Decision::Skipped(format!(
            "{sender} was answered {} ago",
            ago(now.saturating_sub(last.at))
        )));
    }

    let reply = build_reply(config, user_main, sender, parsed.as_ref(), settings, now);
    // Straight to the sender's mailbox or domain, never through aliases:
    // the reply answers the address the mail came from.
    let route = if directory.is_local_domain(sender.domain()) {
        Route::Local
    } else {
        Route::Remote
    };
    let mut submission = Submission::new(
        ReversePath::Null,
        Recipients::Routes(vec![Recipient::new(route, sender.clone())]),
    );
    submission.protocol = Some("local");
    let id = submit(config, directory, submission, &reply)?;

    // Old records no longer stop anything; keep the file small.
    records.retain(|r| {
        !(r.sender == key && r.handle == handle) && now.saturating_sub(r.at) < interval
    });
    records.push(Record {
        at: now,
        sender: key,
        handle,
    });
    write_records(&path, &records).map_err(records_error)?;
    Ok(Decision::Replied(id))
}

/// Who was answered, oldest first: (time, sender, handle).
pub fn answered(path: &Path) -> Result<Vec<(u64, String, String)>, VacationError> {
    let records = read_records(path).map_err(|error| VacationError::Records {
        path: path.to_path_buf(),
        error,
    })?;
    Ok(records
        .into_iter()
        .map(|r| (r.at, r.sender, r.handle))
        .collect())
}

/// Forgets everyone who was answered.
pub fn clear(path: &Path) -> Result<(), VacationError> {
    let error = |error| VacationError::Records {
        path: path.to_path_buf(),
        error,
    };
    let _lock = FileLock::exclusive(&fsutil::lock_path(path)).map_err(error)?;
    match std::fs::remove_file(path) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(error(e)),
    }
}

/// Why a sender is a program, not a person, or `None`.
fn automatic_sender(sender: &Address) -> Option<String> {
    let local = sender.local_part().to_ascii_lowercase();
    let program = [
        "mailer-daemon",
        "postmaster",
        "listserv",
        "majordomo",
        "noreply",
        "no-reply",
        "do-not-reply",
    ]
    .contains(&local.as_str())
        || local.starts_with("owner-")
        || ["-request", "-owner", "-bounces", "-admin"]
            .iter()
            .any(|s| local.ends_with(s))
        || local.contains("-bounces+");
    program.then(|| format!("{sender} is a mail system or list address"))
}

/// Lower-case addresses in an address header.
fn addresses_in(value: Option<&HeaderValue<'_>>) -> Vec<String> {
    let Some(HeaderValue::Address(address)) = value else {
        return Vec::new();
    };
    address
        .iter()
        .filter_map(|a| a.address())
        .map(|a| a.to_ascii_lowercase())
        .collect()
}

/// The reply (CRLF), RFC 3834 §3.
fn build_reply(
    config: &Config,
    user: &Address,
    sender: &Address,
    original: Option<&mail_parser::Message<'_>>,
    settings: &Settings,
    now: u64,
) -> Vec<u8> {
    let original_subject = original.and_then(|m| m.subject()).unwrap_or("");
    // Whatever came from the sender's message (its decoded Subject, also
    // through a script's variables, its ids) is made one line: anyone
    // may write to a user who is away, and must not write the reply's
    // headers or body (mail-builder writes ASCII text as it is given).
    let subject = settings.subject.clone().unwrap_or_else(|| {
        if original_subject.is_empty() {
            "Auto: (no subject)".to_string()
        } else {
            format!("Auto: {original_subject}")
        }
    });
    let message_id = original
        .and_then(|m| m.message_id())
        .map(message::header_safe);
    let mut references: Vec<String> = original
        .and_then(|m| m.references().as_text_list())
        .map(|l| l.iter().map(|s| message::header_safe(s)).collect())
        .unwrap_or_default();
    let from = settings.from.clone().unwrap_or_else(|| user.to_string());
    let mut builder = mail_builder::MessageBuilder::new()
        .from(message::header_safe(&from))
        .to(sender.to_string())
        .subject(message::header_safe(&subject))
        .date(now as i64)
        .message_id(format!(
            "vacation.{}@{}",
            fsutil::unique_suffix(),
            config.hostname
        ))
        .header(
            "Auto-Submitted",
            mail_builder::headers::raw::Raw::new("auto-replied"),
        )
        .text_body(
            settings
                .body
                .replace('\n', "\r\n")
                .replace("\r\r\n", "\r\n"),
        );
    if let Some(id) = message_id {
        references.push(id.clone());
        builder = builder.in_reply_to(id).references(references);
    }
    builder.write_to_vec().unwrap_or_default()
}

struct Record {
    at: u64,
    sender: String,
    handle: String,
}

fn read_records(path: &Path) -> std::io::Result<Vec<Record>> {
    let text = match std::fs::read_to_string(path) {
        Ok(text) => text,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(e),
    };
    Ok(text
        .lines()
        .filter_map(|line| {
            let mut words = line.splitn(3, ' ');
            let at = words.next()?.parse().ok()?;
            let sender = words.next()?.to_string();
            let handle = words.next().unwrap_or("").to_string();
            Some(Record { at, sender, handle })
        })
        .collect())
}

fn write_records(path: &Path, records: &[Record]) -> std::io::Result<()> {
    let text: String = records
        .iter()
        .map(|r| {
            format!(
                "{} {} {}\n",
                r.at,
                r.sender,
                r.handle.replace(['\n', '\r'], " ")
            )
        })
        .collect();
    fsutil::write_atomic(path, text.as_bytes())
}

fn ago(seconds: u64) -> String {
    match seconds {
        s if s < 120 => format!("{s} s"),
        s if s < 7200 => format!("{} min", s / 60),
        s if s < 172_800 => format!("{} h", s / 3600),
        s => format!("{} days", s / 86400),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::queue::Queue;

    fn setup() -> (tempfile::TempDir, Config) {
        let dir = tempfile::tempdir().unwrap();
        let mut config = Config::parse("hostname = \"mx.example.test\"\n").unwrap();
        config.dir = dir.path().to_path_buf();
        std::fs::write(dir.path().join("domains"), "example.test\n").unwrap();
        Queue::from_config(&config).create().unwrap();
        (dir, config)
    }

    fn directory(config: &Config) -> Directory {
        Directory::load(config).unwrap()
    }

    fn settings() -> Settings {
        Settings {
            addresses: vec![Address::parse("ann@example.test").unwrap()],
            interval: DEFAULT_INTERVAL,
            subject: None,
            from: None,
            body: "I am away.\n".into(),
            handle: None,
        }
    }

    fn from(a: &str) -> ReversePath {
        ReversePath::Address(Address::parse(a).unwrap())
    }

    const MESSAGE: &[u8] =
        b"From: bob@far.test\r\nTo: Ann <ANN@example.test>\r\nSubject: lunch?\r\nMessage-ID: <m1@far.test>\r\n\r\nhi\r\n";

    /// A Subject that decodes to line ends (RFC 2047 allows any byte)
    /// writes no header or body of the reply: anyone may send to a user
    /// who is away, with any envelope sender.
    #[test]
    fn a_subject_with_line_ends_stays_one_header_field() {
        let (_d, config) = setup();
        let ann = Address::parse("ann@example.test").unwrap();
        let message = b"From: bob@far.test\r\nTo: ann@example.test\r\n\
Subject: =?UTF-8?Q?hi=0D=0AContent-Type:_text/html=0D=0A=0D=0A<a_href=3Dx>login</a>?=\r\n\r\nhi\r\n";
        let Decision::Replied(id) = respond(
            &config,
            &directory(&config),
            &ann,
            &from("victim@other.test"),
            message,
            &settings(),
            None,
        )
        .unwrap() else {
            panic!("no reply")
        };
        let queued = Queue::from_config(&config).read(&id).unwrap();
        let body = String::from_utf8(crate::store::queue::read_body(&queued).unwrap()).unwrap();
        let header = &body[..body.find("\r\n\r\n").unwrap()];
        let subject = header.lines().find(|l| l.starts_with("Subject:")).unwrap();
        assert!(subject.contains("login</a>"), "{body}");
        assert!(
            !header
                .lines()
                .any(|l| l.starts_with("Content-Type: text/html")),
            "{body}"
        );
        assert!(header.contains("Auto-Submitted: auto-replied"), "{body}");
        assert!(!body.contains("\r\n<a href"), "{body}");
    }

    #[test]
    fn answers_once_per_interval_with_rfc3834_headers() {
        let (_d, config) = setup();
        let ann = Address::parse("ann@example.test").unwrap();
        let first = respond(
            &config,
            &directory(&config),
            &ann,
            &from("bob@far.test"),
            MESSAGE,
            &settings(),
            None,
        )
        .unwrap();
        let Decision::Replied(id) = first else {
            panic!("{first:?}")
        };
        let queue = Queue::from_config(&config);
        let queued = queue.read(&id).unwrap();
        assert!(queued.envelope.sender.is_null());
        assert_eq!(queued.envelope.recipients[0].route, Route::Remote);
        let body = String::from_utf8(crate::store::queue::read_body(&queued).unwrap()).unwrap();
        for want in [
            "Auto-Submitted: auto-replied",
            "Subject: Auto: lunch?",
            "In-Reply-To: <m1@far.test>",
            "References: <m1@far.test>",
            "To: <bob@far.test>",
            "I am away.",
        ] {
            assert!(body.contains(want), "{want:?} missing:\n{body}");
        }
        let again = respond(
            &config,
            &directory(&config),
            &ann,
            &from("BOB@far.test"),
            MESSAGE,
            &settings(),
            None,
        )
        .unwrap();
        assert!(matches!(again, Decision::Skipped(ref why) if why.contains("answered")));
        // Another handle is another conversation.
        let mut other = settings();
        other.handle = Some("h2".into());
        assert!(matches!(
            respond(
                &config,
                &directory(&config),
                &ann,
                &from("bob@far.test"),
                MESSAGE,
                &other,
                None
            )
            .unwrap(),
            Decision::Replied(_)
        ));
        let listed = answered(&records_path(&config, &ann)).unwrap();
        assert_eq!(listed.len(), 2);
        clear(&records_path(&config, &ann)).unwrap();
        assert!(answered(&records_path(&config, &ann)).unwrap().is_empty());
    }

    #[test]
    fn never_answers_programs_lists_or_mail_not_to_the_user() {
        let (_d, config) = setup();
        let ann = Address::parse("ann@example.test").unwrap();
        let skip = |sender: ReversePath, message: &[u8]| {
            let d = respond(
                &config,
                &directory(&config),
                &ann,
                &sender,
                message,
                &settings(),
                None,
            )
            .unwrap();
            assert!(matches!(d, Decision::Skipped(_)), "{d:?}");
        };
        skip(ReversePath::Null, MESSAGE);
        for sender in [
            "MAILER-DAEMON@far.test",
            "owner-list@far.test",
            "list-request@far.test",
            "x-bounces+ann=example.test@far.test",
        ] {
            skip(from(sender), MESSAGE);
        }
        for extra in [
            "Auto-Submitted: auto-generated\r\n",
            "Precedence: bulk\r\n",
            "Precedence: LIST\r\n",
            "List-Id: <l.far.test>\r\n",
            "List-Unsubscribe: <mailto:x@far.test>\r\n",
        ] {
            let mut m = extra.as_bytes().to_vec();
            m.extend_from_slice(MESSAGE);
            skip(from("bob@far.test"), &m);
        }
        skip(
            from("bob@far.test"),
            b"From: bob@far.test\r\nTo: someone@else.test\r\nCc: a@else.test\r\n\r\nhi\r\n",
        );
        // The user writing to themselves.
        skip(from("Ann@Example.test"), MESSAGE);
        let answers = |sender: &str, m: &[u8]| {
            matches!(
                respond(
                    &config,
                    &directory(&config),
                    &ann,
                    &from(sender),
                    m,
                    &settings(),
                    None
                )
                .unwrap(),
                Decision::Replied(_)
            )
        };
        // Auto-Submitted: no is a person.
        let mut m = b"Auto-Submitted: no\r\n".to_vec();
        m.extend_from_slice(MESSAGE);
        assert!(answers("bob@far.test", &m));
        // RFC 5230 §4.5: Bcc and the Resent- fields name the user too.
        for field in ["Bcc", "Resent-To", "Resent-Cc", "Resent-Bcc"] {
            let m = format!(
                "From: x@far.test\r\nTo: someone@else.test\r\n{field}: Ann <ann@example.test>\r\n\r\nhi\r\n"
            );
            let sender = format!("{}@far.test", field.to_ascii_lowercase());
            assert!(answers(&sender, m.as_bytes()), "{field}");
        }
    }
}
