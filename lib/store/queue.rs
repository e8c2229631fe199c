//! The mail queue (postroom-queue(5); the format is `postroom-queue(5)`).
//!
//! States of a message, as files under `queue/`:
//!
//! | state     | files                  | committed by                                   |
//! |-----------|------------------------|------------------------------------------------|
//! | incoming  | `tmp/ID`               | nothing: debris after a crash, removed later   |
//! | queued    | `mess/ID` (+ `todo/ID`) | fsync file, `rename(tmp/ID, mess/ID)`, fsync `mess/` |
//! | worked on | `mess/ID` flocked      | the runner's `flock`, freed by the kernel on death |
//! | progress  | `log/ID` lines appended| one `write(2)` per line set, fsynced when it matters |
//! | finished  | neither                | unlink `mess/ID`, `log/ID`                     |
//!
//! `mess/ID` is immutable once committed: the envelope (one `KEY value` per
//! line, values validated so they hold no CR, LF or NUL), a blank line, then
//! the body with CRLF line ends exactly as it will be sent. One body serves
//! every recipient. The envelope records the body's length (`length`,
//! filled in when the last body byte is written, before the fsync that
//! commits), so a file cut short afterwards — a bad disk, a restore, a
//! careless `truncate` — is told from a whole one: such a *torn* message is
//! never sent, delivered or quoted in a bounce; the runner holds it and
//! `postroom check` reports it. Files written before the field existed have
//! none and are read as before.
//!
//! What changes afterwards — a recipient delivered, deferred or failed, the
//! message held — is appended to `log/ID`; the pending set is
//! the envelope's recipients minus those the log closes, so it only shrinks
//! and a crash yields at worst a repeat, never a loss. A repeat of a local
//! delivery is harmless too: maildir names derive from the queue id and the
//! recipient index (see `maildir`), and a `try` line left without an outcome
//! tells the next runner to look for an earlier copy. A message whose log
//! closes every recipient (and owes no report) is finished; if its runner
//! died before the unlink, the next pass of any runner removes it.
//!
//! Enqueue costs one fsync of the file and one of `mess/`: the same price as
//! the bare maildir write, which is what lets the queue keep up with the disk.

use std::fmt;
use std::fs::{self, File, OpenOptions};
use std::io::{self, BufRead, BufReader, Read, Seek, SeekFrom, Write};
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use crate::config::{Config, QueuePolicy};
use crate::proto::address::{Address, AddressError, EnvelopeText, ReversePath};
use crate::store::fsutil::{self, FileLock};

/// First line of every queue file; bump the number when the format changes.
const MAGIC: &str = "postroom-queue 1";
/// Longest envelope text field we write (a reply line, an ENVID, a HELO).
pub const MAX_FIELD: usize = 1000;
/// A tmp/ file older than this is debris of a crashed writer.
pub const STALE_TMP: Duration = Duration::from_secs(24 * 3600);
/// Digits of the `length` line: written as zeros when the envelope is, then
/// overwritten in place once the body is complete, so the envelope never
/// moves and a spilled body need not be copied.
const LENGTH_DIGITS: usize = 20;

#[derive(Debug, thiserror::Error)]
pub enum QueueError {
    #[error("{path}: {error}")]
    Io { path: PathBuf, error: io::Error },
    #[error("{path}: line {line}: {message}")]
    Corrupt {
        path: PathBuf,
        line: usize,
        message: String,
    },
    #[error("no message {0} in the queue (see `postroom queue list`)")]
    NotFound(QueueId),
    #[error("{0:?} is not a queue id (ids are 16 to 32 hex digits)")]
    BadId(String),
    #[error("message {0} is being delivered right now; try again in a moment")]
    Busy(QueueId),
    #[error("invalid envelope: {0}")]
    Envelope(#[from] AddressError),
    /// The body is not as long as the envelope says it was at commit.
    #[error(
        "{path}: torn queue file: the body has {found} bytes but {recorded} were written at \
         commit, so it is held and never sent; restore the file from a backup and run \
         `postroom queue release {id}`, or remove it with `postroom queue delete {id}` \
         (the sender is not told)"
    )]
    Torn {
        id: QueueId,
        path: PathBuf,
        recorded: u64,
        found: u64,
    },
}

fn io_err(path: &Path) -> impl FnOnce(io::Error) -> QueueError + '_ {
    move |error| QueueError::Io {
        path: path.to_path_buf(),
        error,
    }
}

/// A queue id: lower-case hex, microseconds since the epoch then 32 random
/// bits, so ids sort by arrival and never collide between hosts.
#[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct QueueId(String);

impl QueueId {
    fn generate() -> QueueId {
        let micros = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_micros() as u64)
            .unwrap_or(0);
        QueueId(format!("{micros:014x}{:08x}", fsutil::random_u32()))
    }

    /// Validates an id typed by an admin: only hex digits, so it can never
    /// name a path outside the queue.
    pub fn parse(text: &str) -> Result<QueueId, QueueError> {
        let ok = (16..=32).contains(&text.len()) && text.bytes().all(|b| b.is_ascii_hexdigit());
        if ok {
            Ok(QueueId(text.to_ascii_lowercase()))
        } else {
            Err(QueueError::BadId(text.to_string()))
        }
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for QueueId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl fmt::Debug for QueueId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// Where a recipient's copy goes; decided when the message is queued (after
/// alias expansion), so the runner needs no lookups.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Route {
    /// A mailbox on this system.
    Local,
    /// Another system, by SMTP.
    Remote,
    /// A command from the aliases file, run with the message on stdin.
    Pipe(EnvelopeText),
}

/// One recipient of a queued message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Recipient {
    pub route: Route,
    /// The mailbox (local), the address (remote), or the alias that named
    /// the command (pipe).
    pub address: Address,
    /// RFC 3461 ORCPT as given, `addr-type;xtext`.
    pub orcpt: Option<EnvelopeText>,
    /// RFC 3461 NOTIFY as given (`NEVER`, or a list of SUCCESS, FAILURE, DELAY).
    pub notify: Option<EnvelopeText>,
}

impl Recipient {
    pub fn new(route: Route, address: Address) -> Recipient {
        Recipient {
            route,
            address,
            orcpt: None,
            notify: None,
        }
    }
}

/// Everything about a message except its body.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Envelope {
    pub sender: ReversePath,
    pub recipients: Vec<Recipient>,
    /// Seconds since the epoch when it was queued.
    pub arrived: u64,
    pub helo: Option<EnvelopeText>,
    pub client: Option<EnvelopeText>,
    pub auth: Option<EnvelopeText>,
    /// `local`, `ESMTP`, `ESMTPSA`, … as in the Received header.
    pub protocol: Option<EnvelopeText>,
    /// RFC 3461 ENVID.
    pub envid: Option<EnvelopeText>,
    /// RFC 3461 RET (`FULL` or `HDRS`).
    pub ret: Option<EnvelopeText>,
    /// RFC 6152 / 3030 BODY (`7BIT`, `8BITMIME`, `BINARYMIME`).
    pub body_type: Option<EnvelopeText>,
    /// RFC 6531: the message needs SMTPUTF8.
    pub smtputf8: bool,
    /// VERP: each recipient gets its own return path, the sender with the
    /// recipient folded into its detail (`list-bounces+bob=far.test@…`),
    /// so a bounce names the address that failed (mailing lists).
    pub verp: bool,
    /// Which mail runners send first (`priority` line; none is normal).
    pub priority: Priority,
}

/// The order runners send mail in (IEMS queue priority): what a person
/// is waiting for before what nobody is, and mail to many (list posts,
/// digests) last. Within a priority, oldest first.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
pub enum Priority {
    /// List and bulk mail.
    Low,
    /// Mail passed on from other systems, reports, replies.
    #[default]
    Normal,
    /// Mail a user submitted: `smtp-recv` after AUTH or from a relay
    /// network, `mail-inject`.
    High,
}

impl Priority {
    pub fn name(self) -> &'static str {
        match self {
            Priority::Low => "low",
            Priority::Normal => "normal",
            Priority::High => "high",
        }
    }

    pub fn parse(text: &str) -> Option<Priority> {
        match text {
            "low" => Some(Priority::Low),
            "normal" => Some(Priority::Normal),
            "high" => Some(Priority::High),
            _ => None,
        }
    }
}

impl Envelope {
    pub fn new(sender: ReversePath, recipients: Vec<Recipient>) -> Envelope {
        Envelope {
            sender,
            recipients,
            arrived: fsutil::now_secs(),
            helo: None,
            client: None,
            auth: None,
            protocol: None,
            envid: None,
            ret: None,
            body_type: None,
            smtputf8: false,
            verp: false,
            priority: Priority::Normal,
        }
    }

    /// The return path for one recipient: the sender, or with VERP the
    /// sender's local part + `delimiter` + `local=domain` of the recipient.
    pub fn sender_for(&self, rcpt: &Address, delimiter: char) -> ReversePath {
        match &self.sender {
            ReversePath::Address(sender) if self.verp => {
                let text = format!(
                    "{}{delimiter}{}={}@{}",
                    sender.local_part(),
                    rcpt.local_part(),
                    rcpt.domain(),
                    sender.domain()
                );
                ReversePath::parse(&text).unwrap_or_else(|_| self.sender.clone())
            }
            other => other.clone(),
        }
    }

    /// The envelope as queue-file lines, and where the digits of its
    /// `length` line start (zeros here: [`Incoming::finish`] writes the body's
    /// length over them). Every value is a validated type, so none can hold
    /// a line break.
    pub fn render(&self, id: &QueueId) -> (String, usize) {
        let mut out = format!("{MAGIC}\nid {id}\nlength ");
        let length_at = out.len();
        out.push_str(&format!(
            "{:0LENGTH_DIGITS$}\narrived {}\nsender {}\n",
            0, self.arrived, self.sender
        ));
        let optional = [
            ("helo", &self.helo),
            ("client", &self.client),
            ("auth", &self.auth),
            ("protocol", &self.protocol),
            ("envid", &self.envid),
            ("ret", &self.ret),
            ("body", &self.body_type),
        ];
        for (key, value) in optional {
            if let Some(value) = value {
                out.push_str(&format!("{key} {value}\n"));
            }
        }
        if self.smtputf8 {
            out.push_str("smtputf8\n");
        }
        if self.verp {
            out.push_str("verp\n");
        }
        // Normal mail has no line, so its files read as before.
        if self.priority != Priority::Normal {
            out.push_str(&format!("priority {}\n", self.priority.name()));
        }
        for r in &self.recipients {
            let route = match &r.route {
                Route::Local => "local",
                Route::Remote => "remote",
                Route::Pipe(_) => "pipe",
            };
            out.push_str(&format!("rcpt {route} {}", r.address));
            if let Some(orcpt) = &r.orcpt {
                out.push_str(&format!(" orcpt={orcpt}"));
            }
            if let Some(notify) = &r.notify {
                out.push_str(&format!(" notify={notify}"));
            }
            if let Route::Pipe(command) = &r.route {
                out.push_str(&format!(" |{command}"));
            }
            out.push('\n');
        }
        out.push('\n');
        (out, length_at)
    }

    /// Parses the envelope part of a queue file held in memory (up to and
    /// including its blank line; the body after it is not looked at): the
    /// id line and the envelope. `path` only names the file in errors.
    pub fn parse_bytes(bytes: &[u8], path: &Path) -> Result<(QueueId, Envelope), QueueError> {
        let mut reader = bytes;
        let head = Envelope::parse(&mut reader, path)?;
        Ok((head.id, head.envelope))
    }

    /// Parses the envelope part of a queue file; `path` is for messages.
    fn parse(reader: &mut impl BufRead, path: &Path) -> Result<Head, QueueError> {
        let corrupt = |line: usize, message: String| QueueError::Corrupt {
            path: path.to_path_buf(),
            line,
            message,
        };
        let mut offset = 0u64;
        let mut number = 0;
        let mut id = None;
        let mut recorded_length = None;
        let mut env = Envelope::new(ReversePath::Null, Vec::new());
        let mut line = String::new();
        loop {
            line.clear();
            let n = reader.read_line(&mut line).map_err(io_err(path))?;
            number += 1;
            offset += n as u64;
            if n == 0 || !line.ends_with('\n') {
                return Err(corrupt(
                    number,
                    "envelope ends before the blank line".into(),
                ));
            }
            let text = &line[..line.len() - 1];
            if number == 1 {
                if text != MAGIC {
                    return Err(corrupt(1, format!("not a queue file (expected {MAGIC:?})")));
                }
                continue;
            }
            if text.is_empty() {
                break;
            }
            let (key, value) = text.split_once(' ').unwrap_or((text, ""));
            let field = |v: &str| {
                EnvelopeText::new(v, MAX_FIELD).map_err(|e| corrupt(number, e.to_string()))
            };
            match key {
                "id" => {
                    id = Some(QueueId::parse(value).map_err(|e| corrupt(number, e.to_string()))?)
                }
                "length" => {
                    recorded_length = Some(
                        value
                            .parse()
                            .map_err(|_| corrupt(number, "bad length".into()))?,
                    )
                }
                "arrived" => {
                    env.arrived = value
                        .parse()
                        .map_err(|_| corrupt(number, "bad time".into()))?
                }
                "sender" => {
                    env.sender =
                        ReversePath::parse(value).map_err(|e| corrupt(number, e.to_string()))?
                }
                "helo" => env.helo = Some(field(value)?),
                "client" => env.client = Some(field(value)?),
                "auth" => env.auth = Some(field(value)?),
                "protocol" => env.protocol = Some(field(value)?),
                "envid" => env.envid = Some(field(value)?),
                "ret" => env.ret = Some(field(value)?),
                "body" => env.body_type = Some(field(value)?),
                "smtputf8" => env.smtputf8 = true,
                "verp" => env.verp = true,
                "priority" => {
                    env.priority = Priority::parse(value)
                        .ok_or_else(|| corrupt(number, format!("bad priority {value:?}")))?
                }
                "rcpt" => env
                    .recipients
                    .push(parse_rcpt(value).map_err(|m| corrupt(number, m))?),
                other => return Err(corrupt(number, format!("unknown key {other:?}"))),
            }
        }
        let id = id.ok_or_else(|| corrupt(number, "no id line".into()))?;
        Ok(Head {
            id,
            envelope: env,
            body_offset: offset,
            recorded_length,
        })
    }
}

/// What the envelope part of a queue file says.
struct Head {
    id: QueueId,
    envelope: Envelope,
    /// Where the body starts in the file.
    body_offset: u64,
    /// The body's length written at commit; `None` in files from before
    /// the field existed.
    recorded_length: Option<u64>,
}

/// `ROUTE ADDRESS [orcpt=…] [notify=…] [|COMMAND…]`
fn parse_rcpt(value: &str) -> Result<Recipient, String> {
    let (head, command) = match value.split_once(" |") {
        Some((head, command)) => (head, Some(command)),
        None => (value, None),
    };
    let (route, rest) = head.split_once(' ').unwrap_or((head, ""));
    let (address, rest) = split_address(rest);
    let address = Address::parse(address).map_err(|e| e.to_string())?;
    let words = rest.split(' ').filter(|_| !rest.is_empty());
    let route = match (route, command) {
        ("local", None) => Route::Local,
        ("remote", None) => Route::Remote,
        ("pipe", Some(cmd)) => {
            Route::Pipe(EnvelopeText::new(cmd, MAX_FIELD).map_err(|e| e.to_string())?)
        }
        _ => return Err(format!("bad recipient line {value:?}")),
    };
    let mut rcpt = Recipient::new(route, address);
    for word in words {
        let field = |v: &str| EnvelopeText::new(v, MAX_FIELD).map_err(|e| e.to_string());
        match word.split_once('=') {
            Some(("orcpt", v)) => rcpt.orcpt = Some(field(v)?),
            Some(("notify", v)) => rcpt.notify = Some(field(v)?),
            _ => return Err(format!("unknown recipient parameter {word:?}")),
        }
    }
    Ok(rcpt)
}

/// The address at the start of a recipient line's `rest`, and what
/// follows the space after it: a quoted local part may hold spaces
/// (`"john doe"@example.test`, RFC 5321 §4.1.2), so only a space outside
/// quotes ends it.
fn split_address(text: &str) -> (&str, &str) {
    let (mut in_quote, mut escaped) = (false, false);
    for (i, c) in text.char_indices() {
        match c {
            _ if escaped => escaped = false,
            '\\' if in_quote => escaped = true,
            '"' => in_quote = !in_quote,
            ' ' if !in_quote => return (&text[..i], &text[i + 1..]),
            _ => {}
        }
    }
    (text, "")
}

/// The queue folder and the rules for working it.
#[derive(Debug, Clone)]
pub struct Queue {
    root: PathBuf,
}

impl Queue {
    pub fn new(root: impl Into<PathBuf>) -> Queue {
        Queue { root: root.into() }
    }

    pub fn from_config(config: &Config) -> Queue {
        Queue::new(config.queue_dir())
    }

    pub fn root(&self) -> &Path {
        &self.root
    }

    fn dir(&self, name: &str) -> PathBuf {
        self.root.join(name)
    }

    /// Creates `tmp`, `mess`, `log` and `todo` if missing.
    pub fn create(&self) -> Result<(), QueueError> {
        for sub in ["tmp", "mess", "log", "todo"] {
            let path = self.dir(sub);
            fs::create_dir_all(&path).map_err(io_err(&path))?;
        }
        Ok(())
    }

    /// Starts a message. The envelope and body are held in memory up to
    /// [`SPILL_BYTES`], then written on to `tmp/ID`; nothing is queued until
    /// [`Incoming::commit`] (or [`Staged::commit`]).
    pub fn incoming(&self, envelope: &Envelope) -> Result<Incoming, QueueError> {
        Ok(self.incoming_as(envelope, QueueId::generate()))
    }

    /// [`incoming`](Queue::incoming) under an id the writer already holds
    /// (see [`Staged::prepend`]).
    fn incoming_as(&self, envelope: &Envelope, id: QueueId) -> Incoming {
        let (head, length_at) = envelope.render(&id);
        Incoming {
            queue: self.clone(),
            path: self.dir("tmp").join(id.as_str()),
            buffer: head.into_bytes(),
            length_at,
            id,
            spill: None,
            size: 0,
            done: false,
        }
    }

    /// Creates `tmp/ID` for a writer and locks it: the lock lets
    /// `postroom check` tell a live writer from a dead one's debris.
    fn create_tmp(&self, path: &Path) -> Result<File, QueueError> {
        let open = || {
            OpenOptions::new()
                .write(true)
                .create_new(true)
                .mode(0o600)
                .open(path)
        };
        let file = match open() {
            Err(e) if e.kind() == io::ErrorKind::NotFound => {
                self.create()?;
                open()
            }
            other => other,
        }
        .map_err(io_err(path))?;
        fs2::FileExt::try_lock_exclusive(&file).map_err(io_err(path))?;
        Ok(file)
    }

    /// Queues a whole message in one call (body already CRLF-canonical).
    pub fn enqueue(&self, envelope: &Envelope, body: &[u8]) -> Result<QueueId, QueueError> {
        self.stage(envelope, body)?.commit(&[])
    }

    /// Writes a whole message without committing it (see [`Staged`]).
    pub fn stage(&self, envelope: &Envelope, body: &[u8]) -> Result<Staged, QueueError> {
        let mut incoming = self.incoming(envelope)?;
        let path = incoming.path.clone();
        incoming.write_all(body).map_err(io_err(&path))?;
        incoming.finish()
    }

    /// Every queued message id, oldest first.
    pub fn list(&self) -> Result<Vec<QueueId>, QueueError> {
        let mess = self.dir("mess");
        let mut ids: Vec<QueueId> = match fs::read_dir(&mess) {
            Ok(entries) => entries
                .filter_map(|e| e.ok())
                .filter_map(|e| QueueId::parse(&e.file_name().to_string_lossy()).ok())
                .collect(),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Vec::new(),
            Err(e) => return Err(io_err(&mess)(e)),
        };
        ids.sort();
        Ok(ids)
    }

    fn mess_path(&self, id: &QueueId) -> PathBuf {
        self.dir("mess").join(id.as_str())
    }

    fn log_path(&self, id: &QueueId) -> PathBuf {
        self.dir("log").join(id.as_str())
    }

    /// Reads a message's envelope and state, without locking (readers never
    /// wait for a runner: the envelope is immutable and log lines are whole).
    pub fn read(&self, id: &QueueId) -> Result<QueuedMessage, QueueError> {
        let path = self.mess_path(id);
        let file = fsutil::retry_stale(|| File::open(&path)).map_err(|e| match e.kind() {
            io::ErrorKind::NotFound => QueueError::NotFound(id.clone()),
            _ => io_err(&path)(e),
        })?;
        self.read_open(id, file)
    }

    fn read_open(&self, id: &QueueId, file: File) -> Result<QueuedMessage, QueueError> {
        self.read_at(id, file, self.mess_path(id), false)
    }

    /// `staged`: the writer's own uncommitted message, which has no log.
    fn read_at(
        &self,
        id: &QueueId,
        file: File,
        path: PathBuf,
        staged: bool,
    ) -> Result<QueuedMessage, QueueError> {
        let size = file.metadata().map_err(io_err(&path))?.len();
        let mut reader = BufReader::with_capacity(8192, file);
        self.parse_message(id, &mut reader, size, path, BodySource::File, staged)
    }

    /// A staged message that is still in memory.
    fn read_bytes(
        &self,
        id: &QueueId,
        bytes: Arc<Vec<u8>>,
        path: PathBuf,
    ) -> Result<QueuedMessage, QueueError> {
        let size = bytes.len() as u64;
        let mut reader = io::Cursor::new(SharedBytes(bytes.clone(), 0));
        self.parse_message(id, &mut reader, size, path, BodySource::Memory(bytes), true)
    }

    fn parse_message(
        &self,
        id: &QueueId,
        reader: &mut impl BufRead,
        size: u64,
        path: PathBuf,
        source: BodySource,
        staged: bool,
    ) -> Result<QueuedMessage, QueueError> {
        let head = Envelope::parse(reader, &path)?;
        if &head.id != id {
            return Err(QueueError::Corrupt {
                path,
                line: 2,
                message: format!("id line says {}", head.id),
            });
        }
        let count = head.envelope.recipients.len();
        // A staged message's log is written only at its commit: looking
        // for one costs a failed open per message and finds nothing.
        let log = if staged {
            parse_log(b"", count, &path)
        } else {
            read_log(&self.log_path(id), count)?
        };
        Ok(QueuedMessage {
            id: id.clone(),
            envelope: head.envelope,
            body_offset: head.body_offset,
            body_size: size.saturating_sub(head.body_offset),
            recorded_length: head.recorded_length,
            state: log,
            path,
            source,
        })
    }

    /// `ids` in the order runners send them: higher [`Priority`] first,
    /// then oldest first. Reads only each envelope; a message gone or
    /// unreadable meanwhile keeps its place as normal (whoever locks it
    /// finds out).
    pub fn by_priority(&self, mut ids: Vec<QueueId>) -> Vec<QueueId> {
        let priority = |id: &QueueId| -> Priority {
            let path = self.mess_path(id);
            File::open(&path)
                .ok()
                .and_then(|file| {
                    Envelope::parse(&mut BufReader::with_capacity(4096, file), &path).ok()
                })
                .map_or(Priority::Normal, |head| head.envelope.priority)
        };
        let mut keyed: Vec<(std::cmp::Reverse<Priority>, QueueId)> = ids
            .drain(..)
            .map(|id| (std::cmp::Reverse(priority(&id)), id))
            .collect();
        keyed.sort();
        keyed.into_iter().map(|(_, id)| id).collect()
    }

    /// Locks a message for delivery without waiting: `None` when another
    /// runner has it (or it has just been finished by one).
    pub fn lock(&self, id: &QueueId) -> Result<Option<LockedMessage>, QueueError> {
        let path = self.mess_path(id);
        let file = match fsutil::retry_stale(|| File::open(&path)) {
            Ok(file) => file,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(io_err(&path)(e)),
        };
        let Some(lock) = FileLock::try_on(file).map_err(io_err(&path))? else {
            return Ok(None);
        };
        // The runner that held the lock may have finished the message and
        // unlinked it between our open and our lock.
        if !path.exists() {
            return Ok(None);
        }
        let file = lock.file().try_clone().map_err(io_err(&path))?;
        let message = self.read_open(id, file)?;
        Ok(Some(LockedMessage {
            queue: self.clone(),
            message,
            _lock: lock,
        }))
    }

    /// Locks a message for an admin command, waiting up to `patience` for a
    /// runner to let go.
    pub fn lock_waiting(
        &self,
        id: &QueueId,
        patience: Duration,
    ) -> Result<LockedMessage, QueueError> {
        let deadline = std::time::Instant::now() + patience;
        loop {
            if let Some(locked) = self.lock(id)? {
                return Ok(locked);
            }
            if !self.mess_path(id).exists() {
                return Err(QueueError::NotFound(id.clone()));
            }
            if std::time::Instant::now() >= deadline {
                return Err(QueueError::Busy(id.clone()));
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// Hint files in `todo/`: messages queued or changed since a runner last
    /// looked. A `.path` unit or `smtp-send --watch` waits on this folder.
    pub fn todo(&self) -> Result<Vec<QueueId>, QueueError> {
        let todo = self.dir("todo");
        let entries = match fs::read_dir(&todo) {
            Ok(entries) => entries,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(Vec::new()),
            Err(e) => return Err(io_err(&todo)(e)),
        };
        let mut ids: Vec<QueueId> = entries
            .filter_map(|e| e.ok())
            .filter_map(|e| QueueId::parse(&e.file_name().to_string_lossy()).ok())
            .collect();
        ids.sort();
        Ok(ids)
    }

    /// Removes a todo hint once a runner has taken the message in hand.
    pub fn clear_todo(&self, id: &QueueId) {
        let _ = fs::remove_file(self.dir("todo").join(id.as_str()));
    }

    /// Files in `tmp/` whose writer is gone: it died before its commit (the
    /// file is not locked), or it is older than [`STALE_TMP`]. They were
    /// never acknowledged, so removing them loses nothing. With `remove`,
    /// each is deleted while we hold its lock.
    pub fn debris(&self, remove: bool) -> Result<Vec<PathBuf>, QueueError> {
        let tmp = self.dir("tmp");
        let entries = match fs::read_dir(&tmp) {
            Ok(entries) => entries,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(Vec::new()),
            Err(e) => return Err(io_err(&tmp)(e)),
        };
        let now = SystemTime::now();
        let mut found = Vec::new();
        for entry in entries.filter_map(|e| e.ok()) {
            let path = entry.path();
            let old = entry
                .metadata()
                .and_then(|m| m.modified())
                .map(|t| now.duration_since(t).unwrap_or_default() > STALE_TMP)
                .unwrap_or(false);
            let Ok(file) = File::open(&path) else {
                continue;
            };
            let lock = FileLock::try_on(file).map_err(io_err(&path))?;
            if lock.is_some() || old {
                if remove {
                    fs::remove_file(&path).map_err(io_err(&path))?;
                }
                found.push(path);
            }
        }
        // A log whose message is gone: its writer died between writing the
        // log and committing the message (an hour covers any live writer).
        let log = self.dir("log");
        for entry in fs::read_dir(&log)
            .into_iter()
            .flatten()
            .filter_map(|e| e.ok())
        {
            let name = entry.file_name();
            let orphan = !self.dir("mess").join(&name).exists();
            let old = entry
                .metadata()
                .and_then(|m| m.modified())
                .map(|t| now.duration_since(t).unwrap_or_default() > Duration::from_secs(3600))
                .unwrap_or(false);
            if orphan && old {
                if remove {
                    let _ = fs::remove_file(entry.path());
                }
                found.push(entry.path());
            }
        }
        Ok(found)
    }
}

/// Messages up to this size are staged in memory; larger ones go to
/// `tmp/` as they arrive, so memory stays bounded whatever the size limit.
pub const SPILL_BYTES: usize = 1 << 20;

/// A message being written. Dropping it without `commit` removes it.
pub struct Incoming {
    queue: Queue,
    id: QueueId,
    path: PathBuf,
    /// Envelope and body so far, until they outgrow [`SPILL_BYTES`].
    buffer: Vec<u8>,
    /// Where the digits of the envelope's `length` line are.
    length_at: usize,
    /// `tmp/ID`, once the message has spilled to disk.
    spill: Option<io::BufWriter<File>>,
    size: u64,
    /// Finished (or failed): the drop leaves the file alone.
    done: bool,
}

impl Incoming {
    pub fn id(&self) -> &QueueId {
        &self.id
    }

    /// Body bytes written so far.
    pub fn body_size(&self) -> u64 {
        self.size
    }

    /// The commit point: fsync the file, rename it into `mess/`, fsync
    /// `mess/`. Only after this may a server answer 250 for mail that is
    /// not delivered yet. Then a `todo/` hint (not fsynced: a runner's
    /// periodic pass finds the message anyway).
    pub fn commit(self) -> Result<QueueId, QueueError> {
        self.finish()?.commit(&[])
    }

    /// Finishes writing without committing: the message can be read and
    /// delivered at once while runners cannot see it. See [`Staged`].
    pub fn finish(mut self) -> Result<Staged, QueueError> {
        self.done = true;
        // The body is complete: its length goes over the zeros of the
        // envelope's `length` line, before the commit's fsync.
        let digits = format!("{:0LENGTH_DIGITS$}", self.size);
        let (file, message) = match self.spill.take() {
            None => {
                let at = self.length_at..self.length_at + LENGTH_DIGITS;
                if let Some(zeros) = self.buffer.get_mut(at) {
                    zeros.copy_from_slice(digits.as_bytes());
                }
                let bytes = Arc::new(std::mem::take(&mut self.buffer));
                let message = self.queue.read_bytes(&self.id, bytes, self.path.clone())?;
                (None, message)
            }
            Some(out) => {
                let result: Result<_, QueueError> = (|| {
                    let file = out
                        .into_inner()
                        .map_err(|e| io_err(&self.path)(e.into_error()))?;
                    std::os::unix::fs::FileExt::write_all_at(
                        &file,
                        digits.as_bytes(),
                        self.length_at as u64,
                    )
                    .map_err(io_err(&self.path))?;
                    let reader = File::open(&self.path).map_err(io_err(&self.path))?;
                    let message = self
                        .queue
                        .read_at(&self.id, reader, self.path.clone(), true)?;
                    Ok((Some(file), message))
                })();
                if result.is_err() {
                    let _ = fs::remove_file(&self.path);
                }
                result?
            }
        };
        Ok(Staged {
            queue: self.queue.clone(),
            file,
            message,
        })
    }
}

/// A message written in full and still held by its writer, not yet
/// committed. Early delivery (`postroom-queue(5)`): the writer delivers its
/// local recipients straight from here; if every one of them is delivered
/// and nothing else is left, the message is [`discard`](Staged::discard)ed
/// and never enters the queue — the fsynced maildir link was its commit
/// point, at half the fsyncs and none of the queue's file churn. Anything
/// left (remote recipients, deferrals, failures that need a bounce) is
/// [`commit`](Staged::commit)ted with the outcomes so far. A writer that dies
/// here never acknowledged the message; a spilled file is debris.
pub struct Staged {
    queue: Queue,
    /// The spilled `tmp/ID`, locked until committed or dropped; `None`
    /// while the message is in memory.
    file: Option<File>,
    pub message: QueuedMessage,
}

impl Staged {
    /// Nothing is left to do: forgets the message.
    pub fn discard(self) -> Result<(), QueueError> {
        if self.file.is_some() {
            fs::remove_file(&self.message.path).map_err(io_err(&self.message.path))?;
        }
        Ok(())
    }

    /// The same message with `headers` (whole CRLF lines) on top, under
    /// the same queue id: the Received line already written, the reply
    /// and the log all name this id, and maildir names derive from it.
    /// Costs a copy of the body, so only for headers known at the end
    /// (Authentication-Results, a filter's verdict). The old copy is gone
    /// whatever happens; on error nothing of the message is left.
    pub fn prepend(self, headers: &[u8]) -> Result<Staged, QueueError> {
        // Opened before the old copy is removed: a spilled body is read
        // through this descriptor after its name is free for the new one.
        let body = self.message.body();
        self.replace(|out| {
            out.write_all(headers)?;
            io::copy(&mut body.map_err(io::Error::other)?, out).map(drop)
        })
    }

    /// The message rewritten by `write` under the same queue id and
    /// envelope (see [`prepend`](Staged::prepend)); DKIM signing writes its
    /// signatures and the body as it will be sent. The old copy is gone
    /// whatever happens; on error nothing of the message is left.
    pub fn replace(
        self,
        write: impl FnOnce(&mut Incoming) -> io::Result<()>,
    ) -> Result<Staged, QueueError> {
        let id = self.message.id.clone();
        let envelope = self.message.envelope.clone();
        let queue = self.queue.clone();
        self.discard()?;
        let mut incoming = queue.incoming_as(&envelope, id);
        let path = incoming.path.clone();
        write(&mut incoming).map_err(io_err(&path))?;
        incoming.finish()
    }

    /// The same message and id with `extra` recipients after the others
    /// (so earlier indices keep their meaning): an archive copy
    /// (`delivery::archive`). Costs a copy of the body, like
    /// [`prepend`](Staged::prepend).
    pub fn add_recipients(self, extra: Vec<Recipient>) -> Result<Staged, QueueError> {
        let id = self.message.id.clone();
        let mut envelope = self.message.envelope.clone();
        envelope.recipients.extend(extra);
        let queue = self.queue.clone();
        // Opened before the old copy is removed (see `prepend`).
        let mut body = self.message.body()?;
        self.discard()?;
        let mut incoming = queue.incoming_as(&envelope, id);
        let path = incoming.path.clone();
        io::copy(&mut body, &mut incoming).map_err(io_err(&path))?;
        incoming.finish()
    }

    /// Commits the message to `mess/`, with the log of what was already
    /// done written (and fsynced) first, so no runner repeats it.
    pub fn commit(self, outcomes: &[LogEntry]) -> Result<QueueId, QueueError> {
        let id = self.message.id.clone();
        let tmp = self.message.path.clone();
        let fail = |e: QueueError| {
            let _ = fs::remove_file(&tmp);
            let _ = fs::remove_file(self.queue.log_path(&id));
            e
        };
        let file = match self.file {
            Some(file) => file,
            None => {
                let mut file = self.queue.create_tmp(&tmp)?;
                let bytes = match &self.message.source {
                    BodySource::Memory(bytes) => bytes.clone(),
                    BodySource::File => Arc::new(Vec::new()),
                };
                file.write_all(&bytes).map_err(|e| fail(io_err(&tmp)(e)))?;
                file
            }
        };
        if !outcomes.is_empty() {
            append_log(&self.queue.log_path(&id), outcomes, true).map_err(fail)?;
        }
        file.sync_all().map_err(|e| fail(io_err(&tmp)(e)))?;
        let mess_dir = self.queue.dir("mess");
        let target = mess_dir.join(id.as_str());
        // Renamed while still locked: the tmp file is never unlocked and
        // still there, which `postroom check --fix` would take for debris.
        fs::rename(&tmp, &target).map_err(|e| fail(io_err(&target)(e)))?;
        drop(file);
        fsutil::fsync_dir(&mess_dir).map_err(io_err(&mess_dir))?;
        let _ = File::create(self.queue.dir("todo").join(id.as_str()));
        Ok(id)
    }
}

impl Write for Incoming {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        if self.done {
            return Err(io::Error::other("message already finished"));
        }
        if self.spill.is_none() && self.buffer.len() + buf.len() > SPILL_BYTES {
            let file = self
                .queue
                .create_tmp(&self.path)
                .map_err(io::Error::other)?;
            let mut out = io::BufWriter::with_capacity(64 * 1024, file);
            out.write_all(&self.buffer)?;
            self.buffer = Vec::new();
            self.spill = Some(out);
        }
        match self.spill.as_mut() {
            Some(out) => out.write_all(buf)?,
            None => self.buffer.extend_from_slice(buf),
        }
        self.size += buf.len() as u64;
        Ok(buf.len())
    }
    fn flush(&mut self) -> io::Result<()> {
        match self.spill.as_mut() {
            Some(out) => out.flush(),
            None => Ok(()),
        }
    }
}

impl Drop for Incoming {
    fn drop(&mut self) {
        if !self.done && self.spill.take().is_some() {
            let _ = fs::remove_file(&self.path);
        }
    }
}

/// Where one recipient stands.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RcptState {
    /// Still to deliver; `next_try` 0 means now.
    Pending {
        next_try: u64,
        attempts: u32,
        last_reply: Option<String>,
        /// An attempt started and recorded no outcome: the runner died.
        interrupted: bool,
    },
    /// Delivered (the reply that said so).
    Delivered { at: u64, reply: String },
    /// Failed for good; a bounce is owed unless `bounced`.
    Failed {
        at: u64,
        reply: String,
        bounced: bool,
    },
}

impl RcptState {
    pub fn is_pending(&self) -> bool {
        matches!(self, RcptState::Pending { .. })
    }
}

/// The state of a message, from its log.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MessageState {
    pub recipients: Vec<RcptState>,
    pub held: bool,
    /// Why a runner held the message (an administrator's hold gives none).
    pub hold_reason: Option<String>,
    /// A delay warning was sent.
    pub warned: bool,
}

/// One line of `log/ID`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum LogEntry {
    /// A delivery attempt for recipient N starts.
    Try(usize),
    Delivered(usize, EnvelopeText),
    Deferred {
        rcpt: usize,
        next_try: u64,
        reply: EnvelopeText,
    },
    Failed(usize, EnvelopeText),
    /// The bounce for a failed recipient has been queued.
    Bounced(usize),
    Warned,
    Hold,
    /// Held by a runner, for the reason given (a torn queue file).
    HoldBecause(EnvelopeText),
    Release,
    /// Retry every pending recipient now, ignoring backoff.
    RetryNow,
}

impl LogEntry {
    fn render(&self, now: u64) -> String {
        match self {
            LogEntry::Try(i) => format!("{now} try {i}\n"),
            LogEntry::Delivered(i, reply) => format!("{now} delivered {i} {reply}\n"),
            LogEntry::Deferred {
                rcpt,
                next_try,
                reply,
            } => {
                format!("{now} deferred {rcpt} {next_try} {reply}\n")
            }
            LogEntry::Failed(i, reply) => format!("{now} failed {i} {reply}\n"),
            LogEntry::Bounced(i) => format!("{now} bounced {i}\n"),
            LogEntry::Warned => format!("{now} warned\n"),
            LogEntry::Hold => format!("{now} hold\n"),
            LogEntry::HoldBecause(reason) => format!("{now} hold {reason}\n"),
            LogEntry::Release => format!("{now} release\n"),
            LogEntry::RetryNow => format!("{now} retry\n"),
        }
    }
}

/// Replays `log/ID` over `count` recipients (a missing log: all pending).
fn read_log(path: &Path, count: usize) -> Result<MessageState, QueueError> {
    let text = match fsutil::read_fresh(path) {
        Ok(bytes) => bytes,
        Err(e) if e.kind() == io::ErrorKind::NotFound => Vec::new(),
        Err(e) => return Err(io_err(path)(e)),
    };
    Ok(parse_log(&text, count, path))
}

/// The state a log's bytes describe for `count` recipients. A last line
/// without its newline is a write cut short by a crash and is ignored;
/// `path` only names the file in warnings.
pub fn parse_log(text: &[u8], count: usize, path: &Path) -> MessageState {
    let mut state = MessageState {
        recipients: vec![
            RcptState::Pending {
                next_try: 0,
                attempts: 0,
                last_reply: None,
                interrupted: false,
            };
            count
        ],
        held: false,
        hold_reason: None,
        warned: false,
    };
    let text = String::from_utf8_lossy(text);
    let complete = match text.rfind('\n') {
        Some(end) => &text[..end],
        None => "",
    };
    // A line that does not parse can only be a write cut short by a crash
    // (or a damaged disk): it is skipped with a warning rather than making
    // the whole message unworkable.
    for (number, line) in complete.lines().enumerate() {
        if let Err(e) = apply_log_line(&mut state, path, number, line) {
            tracing::warn!("{e}; line skipped");
        }
    }
    state
}

/// Applies one log line to the state.
fn apply_log_line(
    state: &mut MessageState,
    path: &Path,
    number: usize,
    line: &str,
) -> Result<(), QueueError> {
    {
        let corrupt = |message: &str| QueueError::Corrupt {
            path: path.to_path_buf(),
            line: number + 1,
            message: message.to_string(),
        };
        let mut words = line.splitn(3, ' ');
        let at: u64 = words
            .next()
            .and_then(|w| w.parse().ok())
            .ok_or_else(|| corrupt("bad time"))?;
        let op = words.next().unwrap_or("");
        let rest = words.next().unwrap_or("");
        let (index, tail) = rest.split_once(' ').unwrap_or((rest, ""));
        let rcpt = |state: &MessageState| -> Result<usize, QueueError> {
            index
                .parse::<usize>()
                .ok()
                .filter(|&i| i < state.recipients.len())
                .ok_or_else(|| corrupt("bad recipient number"))
        };
        match op {
            "try" => {
                let i = rcpt(state)?;
                if let RcptState::Pending { interrupted, .. } = &mut state.recipients[i] {
                    *interrupted = true;
                }
            }
            "delivered" => {
                let i = rcpt(state)?;
                state.recipients[i] = RcptState::Delivered {
                    at,
                    reply: tail.to_string(),
                };
            }
            "deferred" => {
                let i = rcpt(state)?;
                let (next, reply) = tail.split_once(' ').unwrap_or((tail, ""));
                let next: u64 = next.parse().map_err(|_| corrupt("bad retry time"))?;
                if let RcptState::Pending {
                    next_try,
                    attempts,
                    last_reply,
                    interrupted,
                } = &mut state.recipients[i]
                {
                    *next_try = next;
                    *attempts += 1;
                    *last_reply = Some(reply.to_string());
                    *interrupted = false;
                }
            }
            "failed" => {
                let i = rcpt(state)?;
                state.recipients[i] = RcptState::Failed {
                    at,
                    reply: tail.to_string(),
                    bounced: false,
                };
            }
            "bounced" => {
                let i = rcpt(state)?;
                if let RcptState::Failed { bounced, .. } = &mut state.recipients[i] {
                    *bounced = true;
                }
            }
            "warned" => state.warned = true,
            "hold" => {
                state.held = true;
                state.hold_reason = Some(rest).filter(|r| !r.is_empty()).map(str::to_string);
            }
            "release" => {
                state.held = false;
                state.hold_reason = None;
            }
            "retry" => {
                for r in &mut state.recipients {
                    if let RcptState::Pending { next_try, .. } = r {
                        *next_try = 0;
                    }
                }
            }
            _ => return Err(corrupt("unknown operation")),
        }
    }
    Ok(())
}

/// A queued message as read from the tree.
#[derive(Debug, Clone)]
pub struct QueuedMessage {
    pub id: QueueId,
    pub envelope: Envelope,
    pub state: MessageState,
    /// Where the body starts in the file.
    pub body_offset: u64,
    /// The body's size as found in the file.
    pub body_size: u64,
    /// The body's length as written at commit (`None`: a file from before
    /// the envelope recorded it).
    pub recorded_length: Option<u64>,
    path: PathBuf,
    source: BodySource,
}

/// Where a message's bytes are: its queue file, or memory while staged.
#[derive(Debug, Clone)]
enum BodySource {
    File,
    Memory(Arc<Vec<u8>>),
}

/// A shared byte buffer read from an offset, for staged bodies.
struct SharedBytes(Arc<Vec<u8>>, usize);

impl AsRef<[u8]> for SharedBytes {
    fn as_ref(&self) -> &[u8] {
        self.0.get(self.1..).unwrap_or(&[])
    }
}

impl QueuedMessage {
    /// The body (CRLF line ends), from its first byte. A torn file (see
    /// [`QueuedMessage::intact`]) is refused, and a file cut short while it
    /// is read makes the read fail rather than end early: whoever reads the
    /// body (delivery, a bounce quoting it, `queue show`) never gets part
    /// of a message as if it were all of it.
    pub fn body(&self) -> Result<Box<dyn Read + Send>, QueueError> {
        let length = self.body_length();
        match &self.source {
            BodySource::Memory(bytes) => {
                let body = io::Cursor::new(SharedBytes(bytes.clone(), self.body_offset as usize));
                self.check_size(bytes.len() as u64)?;
                Ok(Box::new(WholeBody::new(body, length)))
            }
            BodySource::File => {
                let mut file = File::open(&self.path).map_err(io_err(&self.path))?;
                // The size now, not when the envelope was read: the check
                // holds for the very file descriptor the bytes come from.
                let size = file.metadata().map_err(io_err(&self.path))?.len();
                self.check_size(size)?;
                file.seek(SeekFrom::Start(self.body_offset))
                    .map_err(io_err(&self.path))?;
                Ok(Box::new(WholeBody::new(file, length)))
            }
        }
    }

    /// The header block of the body, its empty line included, read no
    /// further than `limit` bytes: enough to count hops or find loop
    /// markers without reading a large message.
    pub fn header_block(&self, limit: u64) -> Result<Vec<u8>, QueueError> {
        let mut head = Vec::new();
        self.body()?
            .take(limit)
            .read_to_end(&mut head)
            .map_err(io_err(&self.path))?;
        head.truncate(crate::proto::message::header_len(&head));
        Ok(head)
    }

    /// The body's length: as written at commit, or for a file from before
    /// the envelope recorded it, as found.
    pub fn body_length(&self) -> u64 {
        self.recorded_length.unwrap_or(self.body_size)
    }

    /// `Err(Torn)` when the body is not the length written at commit: the
    /// file was cut short (or grew) after it was committed, and must not be
    /// sent.
    pub fn intact(&self) -> Result<(), QueueError> {
        self.check_size(self.body_offset + self.body_size)
    }

    /// True when [`intact`](QueuedMessage::intact) would refuse the message.
    pub fn is_torn(&self) -> bool {
        self.intact().is_err()
    }

    fn check_size(&self, file_size: u64) -> Result<(), QueueError> {
        let found = file_size.saturating_sub(self.body_offset);
        match self.recorded_length {
            Some(recorded) if recorded != found => Err(QueueError::Torn {
                id: self.id.clone(),
                path: self.path.clone(),
                recorded,
                found,
            }),
            _ => Ok(()),
        }
    }

    /// Recipients still to deliver, with their index.
    pub fn pending(&self) -> impl Iterator<Item = (usize, &Recipient)> {
        self.envelope
            .recipients
            .iter()
            .enumerate()
            .filter(|(i, _)| self.state.recipients[*i].is_pending())
    }

    /// The earliest time any pending recipient is due (None: nothing pending).
    pub fn next_due(&self) -> Option<u64> {
        self.state
            .recipients
            .iter()
            .filter_map(|r| match r {
                RcptState::Pending { next_try, .. } => Some(*next_try),
                _ => None,
            })
            .min()
    }

    /// True when nothing remains to do: no recipient pending, no bounce owed.
    pub fn is_finished(&self) -> bool {
        self.state.recipients.iter().all(|r| match r {
            RcptState::Pending { .. } => false,
            RcptState::Delivered { .. } => true,
            RcptState::Failed { bounced, .. } => *bounced || self.envelope.sender.is_null(),
        })
    }

    /// The file the message lives in (for admin output).
    pub fn path(&self) -> &Path {
        &self.path
    }
}

/// A message this process holds the lock on. Only the holder appends
/// outcomes or removes the message.
pub struct LockedMessage {
    queue: Queue,
    pub message: QueuedMessage,
    _lock: FileLock,
}

impl LockedMessage {
    /// Appends log lines in one write and applies them to `self.message`.
    /// `durable` fsyncs the log: wanted for outcomes that must not repeat
    /// (remote deliveries); a lost `try` or a lost local outcome only costs
    /// an idempotent retry.
    pub fn record(&mut self, entries: &[LogEntry], durable: bool) -> Result<(), QueueError> {
        if entries.is_empty() {
            return Ok(());
        }
        let path = self.queue.log_path(&self.message.id);
        let text = append_log(&path, entries, durable)?;
        // Only the holder of the lock appends, so the state in memory plus
        // these lines is what a fresh read would give, without re-reading
        // a log that may be 100,000 lines long.
        for (number, line) in text.lines().enumerate() {
            if !line.is_empty() {
                apply_log_line(&mut self.message.state, &path, number, line)?;
            }
        }
        Ok(())
    }

    /// Removes the message from the queue (finished, or deleted by an
    /// admin). `durable` fsyncs `mess/` so the removal survives power loss.
    pub fn remove(self, durable: bool) -> Result<(), QueueError> {
        let mess = self.queue.mess_path(&self.message.id);
        fs::remove_file(&mess).map_err(io_err(&mess))?;
        if durable {
            let dir = self.queue.dir("mess");
            fsutil::fsync_dir(&dir).map_err(io_err(&dir))?;
        }
        // The log goes only after the message is surely gone: a message
        // that came back after a crash without its log would look
        // undelivered and go out again.
        let _ = fs::remove_file(self.queue.log_path(&self.message.id));
        self.queue.clear_todo(&self.message.id);
        Ok(())
    }
}

/// A body reader that gives exactly `left` bytes or an error: a file that
/// ends sooner was cut short while it was read.
struct WholeBody<R> {
    inner: io::Take<R>,
    left: u64,
}

impl<R: Read> WholeBody<R> {
    fn new(inner: R, length: u64) -> WholeBody<R> {
        WholeBody {
            inner: inner.take(length),
            left: length,
        }
    }
}

impl<R: Read> Read for WholeBody<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.inner.read(buf)?;
        if n == 0 && self.left > 0 && !buf.is_empty() {
            return Err(io::Error::new(
                io::ErrorKind::UnexpectedEof,
                format!(
                    "the queue file ends {} bytes before its body does",
                    self.left
                ),
            ));
        }
        self.left -= n as u64;
        Ok(n)
    }
}

/// Appends log lines in one `write(2)`, so a reader sees whole lines only.
fn append_log(path: &Path, entries: &[LogEntry], durable: bool) -> Result<String, QueueError> {
    let now = fsutil::now_secs();
    let mut text: String = entries.iter().map(|e| e.render(now)).collect();
    let mut file = OpenOptions::new()
        .create(true)
        .append(true)
        .read(true)
        .mode(0o600)
        .open(path)
        .map_err(io_err(path))?;
    // A line cut short by a crash (no newline) is ignored by `read_log`
    // while it is last; a newline first keeps it from swallowing ours.
    if ends_mid_line(&file).map_err(io_err(path))? {
        text.insert(0, '\n');
    }
    file.write_all(text.as_bytes()).map_err(io_err(path))?;
    if durable {
        file.sync_data().map_err(io_err(path))?;
    }
    Ok(text)
}

/// True when the file's last byte is not a newline.
fn ends_mid_line(file: &File) -> io::Result<bool> {
    use std::os::unix::fs::FileExt;
    let len = file.metadata()?.len();
    if len == 0 {
        return Ok(false);
    }
    let mut last = [0u8; 1];
    file.read_exact_at(&mut last, len - 1)?;
    Ok(last[0] != b'\n')
}

/// When to try again: wait as long as the message has already waited,
/// clamped between the policy's minimum and maximum (Postfix's rule: cheap
/// for mail that was nearly delivered, patient with destinations long down).
pub fn next_retry(arrived: u64, now: u64, policy: &QueuePolicy) -> u64 {
    let age = now.saturating_sub(arrived);
    let wait = age.clamp(policy.min_backoff.as_secs(), policy.max_backoff.as_secs());
    now + wait
}

/// Reads a whole body into memory (for small messages and tests).
pub fn read_body(message: &QueuedMessage) -> Result<Vec<u8>, QueueError> {
    let mut body = Vec::with_capacity(message.body_size as usize);
    message
        .body()?
        .read_to_end(&mut body)
        .map_err(io_err(&message.path))?;
    Ok(body)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn addr(s: &str) -> Address {
        Address::parse(s).unwrap()
    }

    fn sample() -> Envelope {
        let mut env = Envelope::new(
            ReversePath::parse("from@example.test").unwrap(),
            vec![
                Recipient::new(Route::Local, addr("a@example.test")),
                Recipient {
                    route: Route::Remote,
                    address: addr("b@remote.test"),
                    orcpt: Some(EnvelopeText::new("rfc822;b@remote.test", 100).unwrap()),
                    notify: Some(EnvelopeText::new("SUCCESS,FAILURE", 100).unwrap()),
                },
                Recipient::new(
                    Route::Pipe(EnvelopeText::new("list-expand post x | y", 100).unwrap()),
                    addr("list@example.test"),
                ),
            ],
        );
        env.helo = Some(EnvelopeText::new("client.test", 100).unwrap());
        env.smtputf8 = true;
        env.verp = true;
        env
    }

    #[test]
    fn verp_folds_the_recipient_into_the_return_path() {
        let mut env = Envelope::new(
            ReversePath::parse("team-bounces@lists.test").unwrap(),
            Vec::new(),
        );
        let rcpt = addr("Bob@far.test");
        assert_eq!(
            env.sender_for(&rcpt, '+').to_string(),
            "team-bounces@lists.test"
        );
        env.verp = true;
        assert_eq!(
            env.sender_for(&rcpt, '+').to_string(),
            "team-bounces+Bob=far.test@lists.test"
        );
        env.sender = ReversePath::Null;
        assert!(env.sender_for(&rcpt, '+').is_null());
    }

    #[test]
    fn runners_take_high_priority_mail_first_then_the_oldest() {
        let dir = tempfile::tempdir().unwrap();
        let queue = Queue::new(dir.path());
        let mut ids = Vec::new();
        for priority in [
            Priority::Low,
            Priority::Normal,
            Priority::High,
            Priority::Low,
        ] {
            let mut env = sample();
            env.priority = priority;
            ids.push(queue.enqueue(&env, b"Subject: hi\r\n\r\nbody\r\n").unwrap());
        }
        let text = fs::read_to_string(dir.path().join("mess").join(ids[2].as_str())).unwrap();
        assert!(text.contains("\npriority high\n"), "{text}");
        let normal = fs::read_to_string(dir.path().join("mess").join(ids[1].as_str())).unwrap();
        assert!(!normal.contains("priority"), "normal mail reads as before");
        let ordered = queue.by_priority(queue.list().unwrap());
        assert_eq!(
            ordered,
            [
                ids[2].clone(),
                ids[1].clone(),
                ids[0].clone(),
                ids[3].clone()
            ]
        );
    }

    #[test]
    fn enqueue_then_read_round_trips() {
        let dir = tempfile::tempdir().unwrap();
        let queue = Queue::new(dir.path());
        let id = queue
            .enqueue(&sample(), b"Subject: hi\r\n\r\nbody\r\n")
            .unwrap();
        assert_eq!(queue.list().unwrap(), vec![id.clone()]);
        assert_eq!(queue.todo().unwrap(), vec![id.clone()]);
        let msg = queue.read(&id).unwrap();
        assert_eq!(msg.envelope, sample_with_time(msg.envelope.arrived));
        assert_eq!(read_body(&msg).unwrap(), b"Subject: hi\r\n\r\nbody\r\n");
        assert_eq!(msg.pending().count(), 3);
        assert_eq!(fs::read_dir(dir.path().join("tmp")).unwrap().count(), 0);
    }

    #[test]
    fn the_body_length_is_recorded_at_commit_in_memory_and_spilled() {
        let dir = tempfile::tempdir().unwrap();
        let queue = Queue::new(dir.path());
        let small = b"Subject: hi\r\n\r\nbody\r\n".to_vec();
        let large = vec![b'x'; SPILL_BYTES + 1234];
        for body in [small, large] {
            let id = queue.enqueue(&sample(), &body).unwrap();
            let text = fs::read(dir.path().join("mess").join(id.as_str())).unwrap();
            let line = format!("\nlength {:020}\n", body.len());
            assert!(
                text.windows(line.len()).any(|w| w == line.as_bytes()),
                "no {line:?} in the envelope"
            );
            let msg = queue.read(&id).unwrap();
            assert_eq!(msg.recorded_length, Some(body.len() as u64));
            msg.intact().unwrap();
            assert_eq!(read_body(&msg).unwrap(), body);
        }
    }

    #[test]
    fn prepended_headers_keep_the_queue_id_in_memory_and_spilled() {
        let dir = tempfile::tempdir().unwrap();
        let queue = Queue::new(dir.path());
        let small = b"Subject: hi\r\n\r\nbody\r\n".to_vec();
        let large = vec![b'x'; SPILL_BYTES + 1234];
        for body in [small, large] {
            let staged = queue.stage(&sample(), &body).unwrap();
            let id = staged.message.id.clone();
            let staged = staged.prepend(b"X-Added: yes\r\n").unwrap();
            assert_eq!(staged.message.id, id);
            assert_eq!(staged.commit(&[]).unwrap(), id);
            let mut want = b"X-Added: yes\r\n".to_vec();
            want.extend_from_slice(&body);
            let msg = queue.read(&id).unwrap();
            msg.intact().unwrap();
            assert_eq!(read_body(&msg).unwrap(), want);
            assert_eq!(fs::read_dir(dir.path().join("tmp")).unwrap().count(), 0);
        }
    }

    #[test]
    fn a_torn_queue_file_is_refused_not_read_short() {
        let dir = tempfile::tempdir().unwrap();
        let queue = Queue::new(dir.path());
        let body: Vec<u8> = (0..200)
            .flat_map(|i| format!("line {i} of the body\r\n").into_bytes())
            .collect();
        let id = queue.enqueue(&sample(), &body).unwrap();
        let path = dir.path().join("mess").join(id.as_str());
        let msg = queue.read(&id).unwrap();
        // Cut short after the envelope was read: the reader fails rather
        // than ending early.
        let mut reader = msg.body().unwrap();
        let mut first = vec![0u8; 100];
        reader.read_exact(&mut first).unwrap();
        OpenOptions::new()
            .write(true)
            .open(&path)
            .unwrap()
            .set_len(2000)
            .unwrap();
        let mut rest = Vec::new();
        let e = reader.read_to_end(&mut rest).unwrap_err();
        assert_eq!(e.kind(), io::ErrorKind::UnexpectedEof, "{e}");
        // Read afresh: torn, and the body is refused outright.
        let msg = queue.read(&id).unwrap();
        assert!(msg.is_torn());
        let e = msg.body().err().unwrap().to_string();
        assert!(e.contains("torn queue file"), "{e}");
        assert!(e.contains(&format!("postroom queue release {id}")), "{e}");
        assert!(read_body(&msg).is_err());
        // A file that grew is as wrong as one cut short.
        fs::write(
            &path,
            [&fs::read(&path).unwrap()[..], &vec![b'y'; 99_999]].concat(),
        )
        .unwrap();
        assert!(queue.read(&id).unwrap().is_torn());
    }

    #[test]
    fn an_envelope_without_length_is_read_as_before() {
        let dir = tempfile::tempdir().unwrap();
        let queue = Queue::new(dir.path());
        queue.create().unwrap();
        let id = QueueId::parse("0123456789abcdef01").unwrap();
        fs::write(
            dir.path().join("mess").join(id.as_str()),
            "postroom-queue 1\nid 0123456789abcdef01\narrived 5\nsender a@example.test\n\
             rcpt remote b@remote.test\n\nSubject: old\r\n\r\nbody\r\n",
        )
        .unwrap();
        let msg = queue.read(&id).unwrap();
        assert_eq!(msg.recorded_length, None);
        msg.intact().unwrap();
        assert_eq!(read_body(&msg).unwrap(), b"Subject: old\r\n\r\nbody\r\n");
    }

    #[test]
    fn a_runner_hold_keeps_its_reason_until_released() {
        let dir = tempfile::tempdir().unwrap();
        let queue = Queue::new(dir.path());
        let id = queue.enqueue(&sample(), b"x\r\n").unwrap();
        let mut locked = queue.lock(&id).unwrap().unwrap();
        let reason = EnvelopeText::new("torn queue file", 100).unwrap();
        locked
            .record(&[LogEntry::HoldBecause(reason)], true)
            .unwrap();
        drop(locked);
        let msg = queue.read(&id).unwrap();
        assert!(msg.state.held);
        assert_eq!(msg.state.hold_reason.as_deref(), Some("torn queue file"));
        let mut locked = queue.lock(&id).unwrap().unwrap();
        locked.record(&[LogEntry::Release], true).unwrap();
        assert!(!locked.message.state.held);
        assert_eq!(locked.message.state.hold_reason, None);
    }

    fn sample_with_time(t: u64) -> Envelope {
        let mut e = sample();
        e.arrived = t;
        e
    }

    #[test]
    fn dropped_incoming_leaves_nothing() {
        let dir = tempfile::tempdir().unwrap();
        let queue = Queue::new(dir.path());
        let mut incoming = queue.incoming(&sample()).unwrap();
        incoming.write_all(&vec![b'x'; SPILL_BYTES + 10]).unwrap();
        assert_eq!(
            fs::read_dir(dir.path().join("tmp")).unwrap().count(),
            1,
            "spilled to tmp/"
        );
        drop(incoming);
        assert!(queue.list().unwrap().is_empty());
        assert_eq!(fs::read_dir(dir.path().join("tmp")).unwrap().count(), 0);
    }

    #[test]
    fn debris_is_told_from_live_writers() {
        let dir = tempfile::tempdir().unwrap();
        let queue = Queue::new(dir.path());
        let mut live = queue.incoming(&sample()).unwrap();
        live.write_all(&vec![b'x'; SPILL_BYTES + 1]).unwrap();
        fs::write(
            dir.path().join("tmp").join("0123456789abcdef01"),
            "dead writer",
        )
        .unwrap();
        let found = queue.debris(true).unwrap();
        assert_eq!(found.len(), 1, "{found:?}");
        assert!(found[0].ends_with("0123456789abcdef01"));
        live.commit().unwrap();
        assert_eq!(queue.list().unwrap().len(), 1);
    }

    #[test]
    fn a_torn_log_line_does_not_swallow_the_next_outcome() {
        let dir = tempfile::tempdir().unwrap();
        let queue = Queue::new(dir.path());
        let id = queue.enqueue(&sample(), b"x\r\n").unwrap();
        // A crash cut this line short.
        std::fs::write(queue.log_path(&id), "1 delivered 0 250 ok\n2 deliv").unwrap();
        let mut locked = queue.lock(&id).unwrap().unwrap();
        assert!(matches!(
            locked.message.state.recipients[0],
            RcptState::Delivered { .. }
        ));
        let reply = EnvelopeText::new("250 ok", 100).unwrap();
        locked
            .record(&[LogEntry::Delivered(1, reply)], false)
            .unwrap();
        assert!(matches!(
            locked.message.state.recipients[1],
            RcptState::Delivered { .. }
        ));
    }

    #[test]
    fn log_drives_recipient_state() {
        let dir = tempfile::tempdir().unwrap();
        let queue = Queue::new(dir.path());
        let id = queue.enqueue(&sample(), b"x\r\n").unwrap();
        let mut locked = queue.lock(&id).unwrap().unwrap();
        assert!(
            queue.lock(&id).unwrap().is_none(),
            "second runner must not get the lock"
        );
        let reply = |s: &str| EnvelopeText::new(s, 100).unwrap();
        locked
            .record(
                &[
                    LogEntry::Try(0),
                    LogEntry::Delivered(0, reply("250 ok")),
                    LogEntry::Deferred {
                        rcpt: 1,
                        next_try: 99,
                        reply: reply("451 later"),
                    },
                    LogEntry::Try(2),
                ],
                true,
            )
            .unwrap();
        let state = &locked.message.state;
        assert!(matches!(state.recipients[0], RcptState::Delivered { .. }));
        assert!(matches!(
            state.recipients[1],
            RcptState::Pending {
                next_try: 99,
                attempts: 1,
                ..
            }
        ));
        assert!(matches!(
            state.recipients[2],
            RcptState::Pending {
                interrupted: true,
                ..
            }
        ));
        assert_eq!(locked.message.next_due(), Some(0));
        locked
            .record(
                &[LogEntry::Failed(2, reply("550 no")), LogEntry::RetryNow],
                false,
            )
            .unwrap();
        assert_eq!(locked.message.next_due(), Some(0));
        assert!(!locked.message.is_finished());
        drop(locked);
        // A torn last line (crash mid-write) is ignored.
        let log = dir.path().join("log").join(id.as_str());
        let mut f = OpenOptions::new().append(true).open(&log).unwrap();
        f.write_all(b"123 delivered 1 250").unwrap();
        let msg = queue.read(&id).unwrap();
        assert!(msg.state.recipients[1].is_pending());
        queue.lock(&id).unwrap().unwrap().remove(true).unwrap();
        assert!(queue.list().unwrap().is_empty());
        assert!(matches!(queue.read(&id), Err(QueueError::NotFound(_))));
    }

    #[test]
    fn ids_cannot_name_paths() {
        for bad in ["../../etc/passwd", "", "0123456789abcdeg", "abc"] {
            assert!(QueueId::parse(bad).is_err(), "{bad}");
        }
        assert!(QueueId::parse("0123456789abcdef01").is_ok());
    }

    #[test]
    fn backoff_grows_with_age_within_bounds() {
        let policy = QueuePolicy::default();
        assert_eq!(next_retry(1000, 1010, &policy), 1010 + 300);
        assert_eq!(next_retry(0, 3600, &policy), 3600 + 3600);
        assert_eq!(next_retry(0, 100_000, &policy), 100_000 + 4 * 3600);
    }

    #[test]
    fn corrupt_files_are_named_not_panicked_on() {
        let dir = tempfile::tempdir().unwrap();
        let queue = Queue::new(dir.path());
        queue.create().unwrap();
        let id = QueueId::parse("0123456789abcdef01").unwrap();
        for text in [
            "",
            "garbage\n",
            "postroom-queue 1\nid 0123456789abcdef01\nrcpt local nope\n\n",
        ] {
            fs::write(dir.path().join("mess").join(id.as_str()), text).unwrap();
            let err = queue.read(&id).unwrap_err().to_string();
            assert!(err.contains("mess/0123456789abcdef01"), "{err}");
        }
    }

    proptest::proptest! {
        #[test]
        fn envelope_parser_never_panics(text in "\\PC{0,400}") {
            let mut reader = io::Cursor::new(format!("{MAGIC}\nid 0123456789abcdef01\n{text}\n\n"));
            let _ = Envelope::parse(&mut reader, Path::new("mess/x"));
        }

        #[test]
        fn log_replay_never_panics(text in "[0-9a-z \n]{0,400}") {
            let dir = tempfile::tempdir().unwrap();
            let path = dir.path().join("log");
            fs::write(&path, text).unwrap();
            let _ = read_log(&path, 3);
        }

        #[test]
        fn envelope_round_trips(local in "[a-z0-9.+_-]{1,20}", helo in "[ -~]{0,40}", notify in "[A-Z,]{0,20}", priority in 0..3usize) {
            let address = Address::parse(&format!("{local}@example.test"));
            proptest::prop_assume!(address.is_ok());
            let mut env = sample();
            env.priority = [Priority::Low, Priority::Normal, Priority::High][priority];
            env.helo = Some(EnvelopeText::new(&helo, 100).unwrap());
            env.recipients[0].address = address.unwrap();
            // A quoted local part may hold spaces and escaped quotes.
            env.recipients[1].address = addr(&format!("\"{local} x\\\"y\"@remote.test"));
            env.recipients[1].notify = Some(EnvelopeText::new(&notify, 100).unwrap()).filter(|n| !n.as_str().is_empty() && !n.as_str().contains(' '));
            let id = QueueId::generate();
            let (text, _) = env.render(&id);
            let head = Envelope::parse(&mut io::Cursor::new(text), Path::new("x")).unwrap();
            proptest::prop_assert_eq!(head.id, id);
            proptest::prop_assert_eq!(head.envelope, env);
            proptest::prop_assert_eq!(head.recorded_length, Some(0));
        }
    }
}
