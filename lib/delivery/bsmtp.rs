//! Batch SMTP (RFC 2442, `application/batch-SMTP`): queued mail for one
//! domain written as the SMTP commands a session would have carried, and
//! such a stream replayed into the queue. This is how a site with an
//! intermittent link moves mail over any transport (a file, UUCP, a USB
//! stick, `ssh`).
//!
//! Export holds the lock of every message it writes (as a runner does), and
//! logs the recipients delivered only after the whole batch, `QUIT`
//! included, is written and fsynced: a crash before that leaves them
//! pending, so the worst case is a batch sent twice, never mail lost.
//!
//! Import reads the whole batch first, spooled to an unlinked file under
//! `queue/tmp` (memory stays bounded whatever its size), and checks every
//! command, body and recipient before it queues anything: a batch cut
//! short (no `QUIT`), or malformed anywhere, is refused as a whole. The
//! second pass queues each message with its original envelope (sender,
//! recipients, ENVID, RET, BODY, SMTPUTF8, NOTIFY, ORCPT) and its body
//! byte for byte.

use std::fs::{File, OpenOptions};
use std::io::{self, BufRead, BufReader, BufWriter, Read, Seek, SeekFrom, Write};
use std::os::unix::fs::OpenOptionsExt;

use crate::config::Config;
use crate::delivery::deliver::{self, Early, EnqueueError};
use crate::delivery::envelope_smtp::{self, MailParams, Offered};
use crate::directory::aliases::{Directory, ResolveError};
use crate::proto::address::{Address, EnvelopeText, ReversePath};
use crate::proto::smtp::{DataLine, DataReader, has_nul, is_clean_command, path_command};
use crate::store::fsutil;
use crate::store::queue::{LockedMessage, LogEntry, Queue, QueueError, Recipient, Route};

/// Messages in one exported batch: each holds its lock (an open file)
/// until the batch is fsynced. More are left for the next export.
pub const BATCH_MESSAGES: usize = 200;

/// The longest command line taken (RFC 5321 §4.5.3.1.4 says 512; room
/// for long DSN parameters).
const COMMAND_MAX: usize = 4096;
/// The longest body line kept, as `smtp-recv` allows.
const BODY_LINE_MAX: usize = 64 * 1024;

#[derive(Debug, thiserror::Error)]
pub enum BsmtpError {
    /// The batch is not a whole, well-formed BSMTP stream.
    #[error(
        "line {line}: {message}; the batch is refused whole and nothing was queued \
         (ask the sender for the batch again)"
    )]
    Malformed { line: usize, message: String },
    /// A recipient cannot be taken here.
    #[error(
        "line {line}: <{address}>: {error}; the batch is refused whole and nothing was queued \
         (fix the users or aliases, or remove the recipient from the batch, and import again)"
    )]
    Recipient {
        line: usize,
        address: Address,
        error: ResolveError,
    },
    #[error("{what}: {error}")]
    Io { what: String, error: io::Error },
    #[error(transparent)]
    Queue(#[from] QueueError),
    /// A failure after some messages were queued (the checks passed, the
    /// queue could not be written).
    #[error(
        "{queued} of the batch's messages were queued before: {error}; \
         remove those first {queued} transactions from the batch before importing it again"
    )]
    Partial {
        queued: usize,
        error: Box<BsmtpError>,
    },
    #[error(transparent)]
    Enqueue(#[from] EnqueueError),
}

impl BsmtpError {
    /// True when the same batch may import later (a missing users file,
    /// a full disk); false when the batch itself is wrong.
    pub fn is_temporary(&self) -> bool {
        match self {
            BsmtpError::Malformed { .. } => false,
            BsmtpError::Recipient { error, .. } => error.is_temporary(),
            BsmtpError::Partial { error, .. } => error.is_temporary(),
            BsmtpError::Io { .. } | BsmtpError::Queue(_) | BsmtpError::Enqueue(_) => true,
        }
    }
}

fn io_error(what: impl Into<String>) -> impl FnOnce(io::Error) -> BsmtpError {
    let what = what.into();
    move |error| BsmtpError::Io { what, error }
}

/// What an export wrote.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Exported {
    pub messages: usize,
    pub recipients: usize,
    /// Messages for the domain left for the next batch (over
    /// [`BATCH_MESSAGES`]) or held by a runner right now.
    pub left: usize,
}

/// Writes every queued message with pending remote recipients in `domain`
/// to `out` as one BSMTP batch, fsyncs it, and then (with `mark`) logs
/// those recipients delivered. Held and torn messages are left alone.
pub fn export(
    config: &Config,
    domain: &str,
    out: &File,
    mark: bool,
) -> Result<Exported, BsmtpError> {
    let queue = Queue::from_config(config);
    let mut report = Exported::default();
    let mut batch: Vec<(LockedMessage, Vec<usize>)> = Vec::new();
    for id in queue.list()? {
        let wanted = |message: &crate::store::queue::QueuedMessage| -> Vec<usize> {
            message
                .pending()
                .filter(|(_, r)| {
                    r.route == Route::Remote && r.address.domain().eq_ignore_ascii_case(domain)
                })
                .map(|(i, _)| i)
                .collect()
        };
        // A cheap unlocked look first: most messages are for elsewhere.
        let Ok(peek) = queue.read(&id) else { continue };
        if peek.state.held || wanted(&peek).is_empty() {
            continue;
        }
        if batch.len() >= BATCH_MESSAGES {
            report.left += 1;
            continue;
        }
        let Some(locked) = queue.lock(&id)? else {
            report.left += 1;
            continue;
        };
        let rcpts = wanted(&locked.message);
        if locked.message.state.held || rcpts.is_empty() {
            continue;
        }
        if let Err(torn) = locked.message.intact() {
            tracing::error!(queue_id = %id, "not exported: {torn}");
            continue;
        }
        batch.push((locked, rcpts));
    }

    let mut writer = BufWriter::with_capacity(64 * 1024, out);
    let written = (|| -> io::Result<()> {
        write!(writer, "EHLO {}\r\n", config.hostname)?;
        let delimiter = config.delivery.recipient_delimiter.unwrap_or('+');
        for (locked, rcpts) in &batch {
            let message = &locked.message;
            let envelope = &message.envelope;
            // With VERP each recipient has a return path of its own, so a
            // transaction of its own, as smtp-send sends it.
            let groups: Vec<Vec<usize>> = if envelope.verp {
                rcpts.iter().map(|&i| vec![i]).collect()
            } else {
                vec![rcpts.clone()]
            };
            for group in groups {
                let sender = envelope.sender_for(&envelope.recipients[group[0]].address, delimiter);
                let size = message.body_length();
                writer.write_all(
                    envelope_smtp::mail_command(envelope, &sender, size, Offered::all()).as_bytes(),
                )?;
                for &i in &group {
                    let rcpt = &envelope.recipients[i];
                    writer
                        .write_all(envelope_smtp::rcpt_command(rcpt, Offered::all()).as_bytes())?;
                }
                writer.write_all(b"DATA\r\n")?;
                let body = message.body().map_err(io::Error::other)?;
                dot_stuff(BufReader::with_capacity(64 * 1024, body), &mut writer)?;
            }
        }
        writer.write_all(b"QUIT\r\n")?;
        writer.flush()?;
        // Only a batch whose mail is logged delivered must be durable
        // (and a pipe, which `--keep` allows, cannot be fsynced).
        if mark { out.sync_all() } else { Ok(()) }
    })();
    written.map_err(io_error("writing the batch"))?;

    for (mut locked, rcpts) in batch {
        report.messages += 1;
        report.recipients += rcpts.len();
        if !mark {
            continue;
        }
        let reply = EnvelopeText::sanitize("250 2.0.0 written to a BSMTP batch", 100);
        let entries: Vec<LogEntry> = rcpts
            .iter()
            .map(|&i| LogEntry::Delivered(i, reply.clone()))
            .collect();
        locked.record(&entries, true)?;
        tracing::info!(queue_id = %locked.message.id, recipients = rcpts.len(), "written to a BSMTP batch");
        if locked.message.is_finished() {
            locked.remove(true)?;
        }
    }
    Ok(report)
}

/// Copies a CRLF body as DATA: a line that starts with "." gets another,
/// a last line without its line end gets one, then "." CRLF. Nothing else
/// changes, so the importer stores the very bytes that were queued.
fn dot_stuff(mut body: impl BufRead, out: &mut impl Write) -> io::Result<()> {
    let mut line = Vec::new();
    loop {
        line.clear();
        if body.read_until(b'\n', &mut line)? == 0 {
            break;
        }
        if line.first() == Some(&b'.') {
            out.write_all(b".")?;
        }
        out.write_all(&line)?;
        if !line.ends_with(b"\n") {
            out.write_all(b"\r\n")?;
        }
    }
    out.write_all(b".\r\n")
}

/// What an import queued.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Imported {
    pub messages: usize,
    pub recipients: usize,
}

/// Replays the BSMTP batch on `input` into the queue: checks it whole
/// first, then queues each transaction with its original envelope.
pub fn import(
    config: &Config,
    directory: &Directory,
    input: impl Read,
) -> Result<Imported, BsmtpError> {
    let queue = Queue::from_config(config);
    let mut spool = spool_file(&queue)?;
    // Pass one: everything is checked, nothing is queued; the bytes read
    // are kept in the spool for pass two.
    {
        let tee = Tee {
            input,
            copy: BufWriter::new(&spool),
        };
        let mut parser = Parser::new(BufReader::with_capacity(64 * 1024, tee), config);
        while let Some(tx) = parser.transaction(&mut io::sink())? {
            routes(directory, &tx)?;
        }
        let mut copy = parser.input.into_inner().copy;
        copy.flush().map_err(io_error("spooling the batch"))?;
    }
    spool
        .seek(SeekFrom::Start(0))
        .map_err(io_error("reading the spooled batch"))?;
    let mut parser = Parser::new(BufReader::with_capacity(64 * 1024, &spool), config);
    let mut report = Imported::default();
    let partial = |queued: usize| {
        move |error: BsmtpError| BsmtpError::Partial {
            queued,
            error: Box::new(error),
        }
    };
    loop {
        let queued = report.messages;
        let staged = (|| -> Result<Option<_>, BsmtpError> {
            let Some(head) = parser.peek_transaction()? else {
                return Ok(None);
            };
            let mut envelope =
                crate::store::queue::Envelope::new(head.sender.clone(), routes(directory, head)?);
            head.params.apply(&mut envelope);
            envelope.protocol = EnvelopeText::new("BSMTP", 16).ok();
            let count = envelope.recipients.len();
            let mut incoming = queue.incoming(&envelope)?;
            parser.transaction(&mut incoming)?;
            Ok(Some((incoming.finish()?, count)))
        })()
        .map_err(partial(queued))?;
        let Some((staged, count)) = staged else { break };
        match deliver::queue_staged(config, staged).map_err(|e| partial(queued)(e.into()))? {
            Early::Queued(id) => tracing::info!(queue_id = %id, "queued from a BSMTP batch"),
            Early::Delivered => {}
        }
        report.messages += 1;
        report.recipients += count;
    }
    Ok(report)
}

/// An unlinked file under `queue/tmp`: gone with the process, whatever
/// happens, so it never becomes debris.
fn spool_file(queue: &Queue) -> Result<File, BsmtpError> {
    queue.create()?;
    let path = queue
        .root()
        .join("tmp")
        .join(format!("bsmtp-{}", fsutil::unique_suffix()));
    let file = OpenOptions::new()
        .read(true)
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(&path)
        .map_err(io_error(path.display().to_string()))?;
    std::fs::remove_file(&path).map_err(io_error(path.display().to_string()))?;
    Ok(file)
}

/// The queue recipients of one transaction, resolved as `smtp-recv`
/// resolves RCPT (aliases expanded, NOTIFY and ORCPT kept).
fn routes(directory: &Directory, tx: &Transaction) -> Result<Vec<Recipient>, BsmtpError> {
    let mut all: Vec<Recipient> = Vec::new();
    for (line, address, to) in &tx.rcpts {
        let mut routes = directory
            .routes_for(address)
            .map_err(|error| BsmtpError::Recipient {
                line: *line,
                address: address.clone(),
                error,
            })?;
        envelope_smtp::apply_rcpt_params(&mut routes, to);
        for route in routes {
            if !all.contains(&route) {
                all.push(route);
            }
        }
    }
    Ok(all)
}

/// Copies what is read from `input` to `copy`.
struct Tee<R, W> {
    input: R,
    copy: W,
}

impl<R: Read, W: Write> Read for Tee<R, W> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.input.read(buf)?;
        self.copy.write_all(&buf[..n])?;
        Ok(n)
    }
}

/// One transaction's envelope as the batch gives it.
#[derive(Debug)]
struct Transaction {
    sender: ReversePath,
    params: MailParams,
    /// Line number, address and the parsed RCPT of each recipient.
    rcpts: Vec<(usize, Address, smtp_proto::RcptTo<String>)>,
}

/// One raw line, read no further than a limit.
enum Line {
    End,
    Whole,
    /// Longer than the limit; the rest was skipped. Whether it ended in CRLF.
    TooLong(bool),
}

/// Reads the batch: commands, and each DATA into the caller's sink.
struct Parser<R> {
    input: R,
    line: Vec<u8>,
    number: usize,
    max_size: u64,
    max_rcpts: usize,
    /// EHLO/HELO is only allowed before the first transaction.
    started: bool,
    /// The envelope read ahead by `peek_transaction`, its DATA line next.
    pending: Option<Transaction>,
    quit: bool,
}

impl<R: BufRead> Parser<R> {
    fn new(input: R, config: &Config) -> Parser<R> {
        Parser {
            input,
            line: Vec::new(),
            number: 0,
            max_size: config.limits.message_size,
            max_rcpts: config.limits.recipients,
            started: false,
            pending: None,
            quit: false,
        }
    }

    fn malformed(&self, message: impl Into<String>) -> BsmtpError {
        BsmtpError::Malformed {
            line: self.number,
            message: message.into(),
        }
    }

    fn read_line(&mut self, max: usize) -> Result<Line, BsmtpError> {
        self.line.clear();
        self.number += 1;
        let read = (&mut self.input)
            .take(max as u64 + 1)
            .read_until(b'\n', &mut self.line)
            .map_err(io_error("reading the batch"))?;
        if read == 0 {
            return Ok(Line::End);
        }
        if self.line.len() <= max || self.line.ends_with(b"\n") {
            return Ok(Line::Whole);
        }
        // Skip to the end of the overlong line, minding how it ends.
        let mut last = self.line.last().copied();
        loop {
            let buf = self
                .input
                .fill_buf()
                .map_err(io_error("reading the batch"))?;
            if buf.is_empty() {
                return Ok(Line::TooLong(false));
            }
            if let Some(at) = buf.iter().position(|&b| b == b'\n') {
                let crlf = match at {
                    0 => last == Some(b'\r'),
                    _ => buf[at - 1] == b'\r',
                };
                self.input.consume(at + 1);
                return Ok(Line::TooLong(crlf));
            }
            last = buf.last().copied();
            let n = buf.len();
            self.input.consume(n);
        }
    }

    /// The next transaction's envelope, read up to its DATA line; `None`
    /// after QUIT.
    fn peek_transaction(&mut self) -> Result<Option<&Transaction>, BsmtpError> {
        if self.pending.is_none() {
            self.pending = self.envelope()?;
        }
        Ok(self.pending.as_ref())
    }

    /// The next transaction, its body written to `body`; `None` after QUIT.
    fn transaction(&mut self, body: &mut dyn Write) -> Result<Option<Transaction>, BsmtpError> {
        let tx = match self.pending.take() {
            Some(tx) => tx,
            None => match self.envelope()? {
                Some(tx) => tx,
                None => return Ok(None),
            },
        };
        self.data(body)?;
        Ok(Some(tx))
    }

    /// Commands up to and including DATA.
    fn envelope(&mut self) -> Result<Option<Transaction>, BsmtpError> {
        if self.quit {
            return Ok(None);
        }
        let mut tx: Option<Transaction> = None;
        loop {
            match self.read_line(COMMAND_MAX)? {
                Line::End => {
                    return Err(
                        self.malformed("the batch ends without QUIT: it was cut short in transit")
                    );
                }
                Line::TooLong(_) => return Err(self.malformed("command line too long")),
                Line::Whole => {}
            }
            if !is_clean_command(&self.line) || has_nul(&self.line) {
                return Err(self
                    .malformed("a command line must end in CRLF and hold no bare CR, LF or NUL"));
            }
            let request = smtp_proto::Request::parse(&mut self.line.iter())
                .map(|r| r.into_owned())
                .map_err(|e| self.malformed(format!("not an SMTP command ({e})")))?;
            use smtp_proto::Request;
            // smtp-proto strips a quoted local part's quotes: the path is
            // read from the line, as smtp-recv does (`PathCommand`).
            let quoted = match &request {
                Request::Mail { .. } | Request::Rcpt { .. } => {
                    path_command(&self.line).and_then(|p| p.quoted_mailbox())
                }
                _ => None,
            };
            match request {
                Request::Ehlo { .. } | Request::Helo { .. } if !self.started => {
                    self.started = true;
                }
                Request::Noop { .. } => {}
                Request::Rset => tx = None,
                Request::Mail { mut from } => {
                    from.address = quoted.unwrap_or(from.address);
                    self.started = true;
                    if tx.is_some() {
                        return Err(self.malformed("MAIL inside a transaction"));
                    }
                    if from.flags & smtp_proto::MAIL_SMTPUTF8 == 0 && !from.address.is_ascii() {
                        return Err(self.malformed("non-ASCII sender without SMTPUTF8"));
                    }
                    let sender = ReversePath::parse(&from.address)
                        .map_err(|e| self.malformed(format!("bad sender: {e}")))?;
                    let params = envelope_smtp::mail_params(&from)
                        .map_err(|e| self.malformed(e.to_string()))?;
                    tx = Some(Transaction {
                        sender,
                        params,
                        rcpts: Vec::new(),
                    });
                }
                Request::Rcpt { mut to } => {
                    to.address = quoted.unwrap_or(to.address);
                    let number = self.number;
                    let max_rcpts = self.max_rcpts;
                    let Some(current) = tx.as_mut() else {
                        return Err(self.malformed("RCPT before MAIL"));
                    };
                    if current.rcpts.len() >= max_rcpts {
                        return Err(self.malformed(format!(
                            "more than {max_rcpts} recipients (limits.recipients)"
                        )));
                    }
                    let address = match Address::parse(&to.address) {
                        Ok(address) => address,
                        Err(e) => return Err(self.malformed(format!("bad recipient: {e}"))),
                    };
                    let utf8_ok = tx.as_ref().is_some_and(|t| t.params.smtputf8);
                    if !utf8_ok && !to.address.is_ascii() {
                        return Err(self.malformed("non-ASCII recipient without SMTPUTF8"));
                    }
                    if let Some(current) = tx.as_mut() {
                        current.rcpts.push((number, address, to));
                    }
                }
                Request::Data => {
                    return match tx {
                        Some(tx) if !tx.rcpts.is_empty() => Ok(Some(tx)),
                        Some(_) => Err(self.malformed("DATA without a recipient")),
                        None => Err(self.malformed("DATA before MAIL")),
                    };
                }
                Request::Quit => {
                    if tx.is_some() {
                        return Err(self.malformed("QUIT inside a transaction"));
                    }
                    self.quit = true;
                    return self.after_quit().map(|()| None);
                }
                _ => {
                    return Err(self.malformed(
                        "a batch holds only EHLO, MAIL, RCPT, DATA, RSET, NOOP and QUIT",
                    ));
                }
            }
        }
    }

    /// Nothing but empty lines may follow QUIT.
    fn after_quit(&mut self) -> Result<(), BsmtpError> {
        loop {
            match self.read_line(COMMAND_MAX)? {
                Line::End => return Ok(()),
                Line::Whole if self.line.iter().all(|b| b.is_ascii_whitespace()) => {}
                _ => return Err(self.malformed("text after QUIT")),
            }
        }
    }

    /// The message after DATA, dot-unstuffed into `body`, up to "." CRLF.
    fn data(&mut self, body: &mut dyn Write) -> Result<(), BsmtpError> {
        let mut reader = DataReader::new(self.max_size);
        loop {
            match self.read_line(BODY_LINE_MAX)? {
                Line::End => {
                    return Err(self.malformed(
                        "the batch ends inside a message: it was cut short in transit",
                    ));
                }
                Line::TooLong(crlf) => reader.line_too_long(crlf),
                Line::Whole => match reader.line(&self.line) {
                    DataLine::End => break,
                    DataLine::Body(bytes) => {
                        if reader.keeping() {
                            body.write_all(bytes)
                                .map_err(io_error("writing the message to the queue"))?;
                        }
                    }
                },
            }
        }
        match reader.problem() {
            Some(problem) => Err(self.malformed(problem.reply(self.max_size).lines.join(" "))),
            None => Ok(()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config() -> Config {
        Config::parse("hostname = \"mx.example.test\"\n").unwrap()
    }

    fn parse_all(batch: &[u8]) -> Result<Vec<(Transaction, Vec<u8>)>, BsmtpError> {
        let config = config();
        let mut parser = Parser::new(batch, &config);
        let mut out = Vec::new();
        loop {
            let mut body = Vec::new();
            match parser.transaction(&mut body)? {
                Some(tx) => out.push((tx, body)),
                None => return Ok(out),
            }
        }
    }

    const BATCH: &[u8] = b"EHLO a.test\r\nMAIL FROM:<a@a.test> ENVID=x+2By\r\nRCPT TO:<b@b.test> NOTIFY=NEVER\r\nDATA\r\nSubject: s\r\n\r\n..dot\r\n.\r\nMAIL FROM:<>\r\nRCPT TO:<c@b.test>\r\nDATA\r\n.\r\nQUIT\r\n";

    #[test]
    fn a_whole_batch_parses_with_bodies_unstuffed() {
        let txs = parse_all(BATCH).unwrap();
        assert_eq!(txs.len(), 2);
        assert_eq!(txs[0].1, b"Subject: s\r\n\r\n.dot\r\n");
        assert_eq!(txs[0].0.params.envid.as_ref().unwrap().as_str(), "x+y");
        assert!(txs[1].0.sender.is_null());
        assert!(txs[1].1.is_empty());
    }

    #[test]
    fn quoted_local_parts_keep_their_quotes() {
        let batch = b"MAIL FROM:<\"john doe\"@a.test>\r\nRCPT TO:<\"x\\\"y\"@b.test>\r\n\
                      DATA\r\n.\r\nQUIT\r\n";
        let txs = parse_all(batch).unwrap();
        assert_eq!(txs[0].0.sender.to_string(), "\"john doe\"@a.test");
        assert_eq!(txs[0].0.rcpts[0].1.to_string(), "\"x\\\"y\"@b.test");
    }

    #[test]
    fn every_cut_of_a_batch_is_refused() {
        for cut in 0..BATCH.len() - 2 {
            let result = parse_all(&BATCH[..cut]);
            assert!(
                matches!(result, Err(BsmtpError::Malformed { .. })),
                "cut at {cut}: {result:?}"
            );
        }
    }

    #[test]
    fn dot_stuffing_round_trips_any_crlf_body() {
        for body in [
            &b""[..],
            b".\r\n",
            b"..\r\n.x\r\n\r\n.\r\n",
            b"a\r\n.\r\nb\r\n",
        ] {
            let mut stream = b"MAIL FROM:<>\r\nRCPT TO:<b@b.test>\r\nDATA\r\n".to_vec();
            dot_stuff(body, &mut stream).unwrap();
            stream.extend_from_slice(b"QUIT\r\n");
            let txs = parse_all(&stream).unwrap();
            assert_eq!(txs[0].1, body, "{:?}", String::from_utf8_lossy(&stream));
        }
    }

    #[test]
    fn commands_out_of_place_are_refused() {
        for bad in [
            &b"RCPT TO:<b@b.test>\r\nQUIT\r\n"[..],
            b"MAIL FROM:<>\r\nDATA\r\n.\r\nQUIT\r\n",
            b"MAIL FROM:<>\r\nMAIL FROM:<>\r\nQUIT\r\n",
            b"VRFY x\r\nQUIT\r\n",
            b"MAIL FROM:<>\nRCPT TO:<b@b.test>\r\nDATA\r\n.\r\nQUIT\r\n",
            b"MAIL FROM:<>\r\nRCPT TO:<b@b.test>\r\nDATA\r\nbare\nlf\r\n.\r\nQUIT\r\n",
            b"QUIT\r\nMAIL FROM:<>\r\n",
        ] {
            let result = parse_all(bad);
            assert!(
                matches!(result, Err(BsmtpError::Malformed { .. })),
                "{:?}: {result:?}",
                String::from_utf8_lossy(bad)
            );
        }
    }

    proptest::proptest! {
        #[test]
        fn the_parser_never_panics(batch in proptest::collection::vec(proptest::prelude::any::<u8>(), 0..400)) {
            let _ = parse_all(&batch);
        }
    }
}
