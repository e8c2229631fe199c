//! One SMTP client connection to another system: greeting, EHLO, STARTTLS,
//! AUTH, then any number of mail transactions (RFC 5321, 3207, 2920, 3461).
//!
//! Replies are read whole (every line of a multi-line reply) with a limit
//! on their size and a timeout on each; the EHLO reply is parsed by the
//! `smtp-proto` crate. With PIPELINING, MAIL, every RCPT and DATA go in one
//! write and their replies are read in order; without, one by one. The
//! body goes through [`DataEncoder`], so the other side sees CRLF lines of
//! at most 998 octets, dot-stuffed, whatever the queue file holds; to a
//! server without 8BITMIME, 8-bit content goes in its 7-bit form
//! (`proto::seven_bit`).

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use base64::Engine;
use postroom::delivery::deliver::Outcome;
use postroom::delivery::envelope_smtp::{Offered, mail_command, rcpt_command};
use postroom::net::tlsrpt::TlsFailure;
use postroom::proto::address::ReversePath;
use postroom::proto::seven_bit::{self, NoSevenBitForm};
use postroom::proto::smtp::DataEncoder;
use postroom::store::queue::{Envelope, QueuedMessage, Recipient};
use rustls_pki_types::ServerName;
use tokio::io::{AsyncReadExt, AsyncSeekExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::time::timeout;

/// The longest reply line read, and the most lines in one reply.
const MAX_REPLY_LINE: usize = 4096;
const MAX_REPLY_LINES: usize = 100;
/// How much of the body is read and sent at a time.
const BODY_CHUNK: usize = 64 << 10;

/// What went wrong with a connection as a whole (not one recipient): the
/// text is a reply line for the queue log, naming the host.
#[derive(Debug, Clone)]
pub enum SessionError {
    /// Try again later (or another host now).
    Temporary(String),
    /// TLS is required and the host offers no STARTTLS: deferred, and a
    /// TLS report says `starttls-not-supported`.
    NoStarttls(String),
    /// TLS could not be set up, for the reason the kind says (from the
    /// handshake's own error: what the TLS report records and whether
    /// legacy TLS may be tried); the caller may try the host again without
    /// it where TLS was only wanted.
    TlsFailed(TlsFailure, String),
}

impl SessionError {
    pub fn text(&self) -> &str {
        match self {
            SessionError::Temporary(t)
            | SessionError::NoStarttls(t)
            | SessionError::TlsFailed(_, t) => t,
        }
    }
}

/// How to talk to one host.
pub struct Setup<'a> {
    pub helo: &'a str,
    /// The host name, for TLS verification and log lines.
    pub host: &'a str,
    pub addr: SocketAddr,
    /// `None`: no STARTTLS; else the config to start TLS with.
    pub tls: Option<Arc<rustls::ClientConfig>>,
    /// Refuse to go on without TLS.
    pub tls_required: bool,
    /// Start TLS with OpenSSL (TLS 1.0 and up, any certificate) instead
    /// of rustls: the `legacy-tls` feature's second try at a peer that
    /// speaks no TLS 1.2.
    pub legacy_tls: bool,
    /// AUTH PLAIN with these (user, password).
    pub credentials: Option<(String, String)>,
    pub connect_timeout: Duration,
    pub command_timeout: Duration,
    pub data_timeout: Duration,
}

/// A reply from the other side.
#[derive(Debug, Clone)]
pub struct Reply {
    pub code: u16,
    /// The lines' text, joined by spaces.
    pub text: String,
    raw: Vec<u8>,
}

impl Reply {
    fn class(&self) -> u16 {
        self.code / 100
    }
}

/// What the other side said it can do after EHLO.
#[derive(Debug, Default, Clone)]
struct Extensions {
    pipelining: bool,
    /// 0: no limit given.
    size: u64,
    dsn: bool,
    smtputf8: bool,
    eightbitmime: bool,
    starttls: bool,
    auth_plain: bool,
}

enum Stream {
    Plain(TcpStream),
    Tls(Box<tokio_rustls::client::TlsStream<TcpStream>>),
    /// TLS 1.0/1.1 through OpenSSL, for a peer rustls cannot talk to.
    #[cfg(feature = "legacy-tls")]
    Legacy(Box<tokio_native_tls::TlsStream<TcpStream>>),
    /// Between handing the plain stream to TLS and getting it back, or
    /// after TLS failed: every use is an error.
    Closed,
}

impl Stream {
    async fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        match self {
            Stream::Plain(s) => s.read(buf).await,
            Stream::Tls(s) => s.read(buf).await,
            #[cfg(feature = "legacy-tls")]
            Stream::Legacy(s) => s.read(buf).await,
            Stream::Closed => Err(std::io::ErrorKind::NotConnected.into()),
        }
    }

    async fn write_all(&mut self, bytes: &[u8]) -> std::io::Result<()> {
        match self {
            Stream::Plain(s) => s.write_all(bytes).await,
            Stream::Tls(s) => {
                s.write_all(bytes).await?;
                s.flush().await
            }
            #[cfg(feature = "legacy-tls")]
            Stream::Legacy(s) => {
                s.write_all(bytes).await?;
                s.flush().await
            }
            Stream::Closed => Err(std::io::ErrorKind::NotConnected.into()),
        }
    }

    async fn shutdown(&mut self) {
        let _ = match self {
            Stream::Plain(s) => s.shutdown().await,
            Stream::Tls(s) => s.shutdown().await,
            #[cfg(feature = "legacy-tls")]
            Stream::Legacy(s) => s.shutdown().await,
            Stream::Closed => Ok(()),
        };
    }
}

/// An open connection, greeted, EHLO done, ready for MAIL.
pub struct Client {
    stream: Stream,
    /// Bytes read and not yet used.
    buf: Vec<u8>,
    host: String,
    addr: SocketAddr,
    extensions: Extensions,
    command_timeout: Duration,
    data_timeout: Duration,
    /// Transactions started on this connection.
    pub transactions: usize,
}

impl Client {
    /// Connects and gets the connection ready for mail.
    pub async fn open(setup: &Setup<'_>) -> Result<Client, SessionError> {
        let where_ = format!("{}[{}]", setup.host, setup.addr.ip());
        let tcp = match timeout(setup.connect_timeout, TcpStream::connect(setup.addr)).await {
            Ok(Ok(tcp)) => tcp,
            Ok(Err(e)) => {
                return Err(SessionError::Temporary(format!(
                    "421 4.4.1 cannot connect to {where_}: {e}"
                )));
            }
            Err(_) => {
                return Err(SessionError::Temporary(format!(
                    "421 4.4.1 connecting to {where_} timed out"
                )));
            }
        };
        let _ = tcp.set_nodelay(true);
        let mut client = Client {
            stream: Stream::Plain(tcp),
            buf: Vec::new(),
            host: setup.host.to_string(),
            addr: setup.addr,
            extensions: Extensions::default(),
            command_timeout: setup.command_timeout,
            data_timeout: setup.data_timeout,
            transactions: 0,
        };
        let greeting = client.read_reply(setup.command_timeout).await?;
        if greeting.class() != 2 {
            client.quit().await;
            return Err(SessionError::Temporary(client.said(&greeting)));
        }
        client.hello(setup.helo).await?;
        if let Some(tls) = &setup.tls {
            if client.extensions.starttls && setup.legacy_tls {
                client.start_legacy_tls(setup.host).await?;
                client.hello(setup.helo).await?;
            } else if client.extensions.starttls {
                client.start_tls(tls.clone(), setup.host).await?;
                client.hello(setup.helo).await?;
            } else if setup.tls_required {
                client.quit().await;
                return Err(SessionError::NoStarttls(format!(
                    "451 4.7.4 {where_} does not offer STARTTLS, and TLS is required for this destination"
                )));
            }
        }
        if let Some((user, password)) = &setup.credentials {
            client.authenticate(user, password).await?;
        }
        Ok(client)
    }

    /// `host[ip]`, for reply lines.
    fn peer(&self) -> String {
        format!("{}[{}]", self.host, self.addr.ip())
    }

    /// A reply as the queue log keeps it: code, text, who said it
    /// (`delivery::reply`, which reports read it back with).
    fn said(&self, reply: &Reply) -> String {
        postroom::delivery::reply::from_server(reply.code, &reply.text, &self.host, self.addr.ip())
    }

    async fn hello(&mut self, helo: &str) -> Result<(), SessionError> {
        self.send(format!("EHLO {helo}\r\n").as_bytes()).await?;
        let reply = self.read_reply(self.command_timeout).await?;
        if reply.class() == 2 {
            self.extensions = parse_extensions(&reply.raw);
            return Ok(());
        }
        // An old server: HELO, and no extensions.
        self.send(format!("HELO {helo}\r\n").as_bytes()).await?;
        let reply = self.read_reply(self.command_timeout).await?;
        if reply.class() != 2 {
            self.quit().await;
            return Err(SessionError::Temporary(self.said(&reply)));
        }
        self.extensions = Extensions::default();
        Ok(())
    }

    /// The STARTTLS command and its 220, then the plain TCP stream to
    /// start TLS on.
    async fn starttls_command(&mut self) -> Result<TcpStream, SessionError> {
        self.send(b"STARTTLS\r\n").await?;
        let reply = self.read_reply(self.command_timeout).await?;
        if reply.class() != 2 {
            return Err(SessionError::TlsFailed(
                TlsFailure::StarttlsNotSupported,
                self.said(&reply),
            ));
        }
        // Anything the server sent after its 220 arrived in plaintext and
        // must not be read as if it came over TLS (CVE-2011-0411's mirror).
        if !self.buf.is_empty() {
            return Err(SessionError::Temporary(format!(
                "421 4.7.0 {} sent data after its STARTTLS reply",
                self.peer()
            )));
        }
        match std::mem::replace(&mut self.stream, Stream::Closed) {
            Stream::Plain(tcp) => Ok(tcp),
            _ => Err(SessionError::Temporary(
                "421 4.7.0 STARTTLS on a connection that is not plain TCP".into(),
            )),
        }
    }

    async fn start_tls(
        &mut self,
        config: Arc<rustls::ClientConfig>,
        host: &str,
    ) -> Result<(), SessionError> {
        let name = ServerName::try_from(host.to_string()).map_err(|_| {
            SessionError::TlsFailed(
                TlsFailure::Other,
                format!("421 4.7.5 {host}: not a name TLS can check"),
            )
        })?;
        let tcp = self.starttls_command().await?;
        let connector = tokio_rustls::TlsConnector::from(config);
        match timeout(self.command_timeout, connector.connect(name, tcp)).await {
            Ok(Ok(tls)) => {
                self.stream = Stream::Tls(Box::new(tls));
                Ok(())
            }
            Ok(Err(e)) => Err(SessionError::TlsFailed(
                TlsFailure::of_handshake(&e),
                format!("421 4.7.5 TLS with {} failed: {e}", self.peer()),
            )),
            Err(_) => Err(SessionError::TlsFailed(
                TlsFailure::Other,
                format!("421 4.7.5 TLS with {} timed out", self.peer()),
            )),
        }
    }

    /// STARTTLS through OpenSSL for a peer that speaks only TLS 1.0 or
    /// 1.1: any certificate, as opportunistic TLS takes (RFC 7435). The
    /// OpenSSL configuration decides what is still allowed: OpenSSL 3
    /// refuses TLS below 1.2 at its default security level
    /// (smtp-send(8), TLS, says how to lower it for this program).
    #[cfg(feature = "legacy-tls")]
    async fn start_legacy_tls(&mut self, host: &str) -> Result<(), SessionError> {
        let tcp = self.starttls_command().await?;
        let connector = native_tls::TlsConnector::builder()
            .min_protocol_version(Some(native_tls::Protocol::Tlsv10))
            .danger_accept_invalid_certs(true)
            .danger_accept_invalid_hostnames(true)
            .build()
            .map_err(|e| {
                SessionError::TlsFailed(TlsFailure::Other, format!("421 4.7.5 OpenSSL: {e}"))
            })?;
        let connector = tokio_native_tls::TlsConnector::from(connector);
        match timeout(self.command_timeout, connector.connect(host, tcp)).await {
            Ok(Ok(tls)) => {
                self.stream = Stream::Legacy(Box::new(tls));
                Ok(())
            }
            Ok(Err(e)) => Err(SessionError::TlsFailed(
                TlsFailure::Other,
                format!("421 4.7.5 legacy TLS with {} failed: {e}", self.peer()),
            )),
            Err(_) => Err(SessionError::TlsFailed(
                TlsFailure::Other,
                format!("421 4.7.5 legacy TLS with {} timed out", self.peer()),
            )),
        }
    }

    #[cfg(not(feature = "legacy-tls"))]
    async fn start_legacy_tls(&mut self, _host: &str) -> Result<(), SessionError> {
        Err(SessionError::TlsFailed(
            TlsFailure::Other,
            "421 4.7.5 this smtp-send was built without the legacy-tls feature".into(),
        ))
    }

    async fn authenticate(&mut self, user: &str, password: &str) -> Result<(), SessionError> {
        let secure = matches!(self.stream, Stream::Tls(_)) || self.addr.ip().is_loopback();
        if !secure {
            return Err(SessionError::Temporary(format!(
                "451 4.7.0 not sending the password for {} without TLS",
                self.peer()
            )));
        }
        if !self.extensions.auth_plain {
            return Err(SessionError::Temporary(format!(
                "451 4.7.0 {} offers no AUTH PLAIN",
                self.peer()
            )));
        }
        let token = base64::engine::general_purpose::STANDARD
            .encode(format!("\0{user}\0{password}").as_bytes());
        self.send(format!("AUTH PLAIN {token}\r\n").as_bytes())
            .await?;
        let reply = self.read_reply(self.command_timeout).await?;
        match reply.class() {
            2 => Ok(()),
            // A rejected password will not get better by trying again, but
            // the admin can fix it before the lifetime runs out. Recorded
            // as our diagnosis: the server's reply was to AUTH, not to a
            // recipient.
            _ => Err(SessionError::Temporary(format!(
                "451 4.7.8 authentication with {} failed: it answered {} {}",
                self.peer(),
                reply.code,
                reply.text
            ))),
        }
    }

    /// One mail transaction for `rcpts` of `message`. Per-recipient
    /// outcomes, or the connection's failure (then nothing is known of
    /// recipients without an outcome: they are retried).
    pub async fn transaction(
        &mut self,
        message: &QueuedMessage,
        sender: &ReversePath,
        rcpts: &[(usize, Recipient)],
    ) -> Result<Vec<(usize, Outcome)>, SessionError> {
        self.transactions += 1;
        let envelope = &message.envelope;
        let everyone = |outcome: Outcome| -> Vec<(usize, Outcome)> {
            rcpts.iter().map(|(i, _)| (*i, outcome.clone())).collect()
        };
        let ext = self.extensions.clone();
        let smtputf8 = needs_smtputf8(envelope, sender, rcpts);
        if smtputf8 && !ext.smtputf8 {
            return Ok(everyone(Outcome::Failed(format!(
                "553 5.6.7 {} does not support SMTPUTF8, which this message needs",
                self.peer()
            ))));
        }
        // 8-bit content goes to a server without 8BITMIME in its 7-bit
        // form (RFC 6152 §3). An SMTPUTF8 message went above to a server
        // that offers SMTPUTF8, which promises 8BITMIME (RFC 6531 §3.1).
        let converted = if ext.eightbitmime || smtputf8 {
            None
        } else {
            match seven_bit_body(message).await {
                Ok(converted) => converted,
                Err(SevenBit::Unreadable(text)) => return Ok(everyone(Outcome::Deferred(text))),
                Err(SevenBit::Impossible(why)) => {
                    return Ok(everyone(Outcome::Failed(format!(
                        "554 5.6.3 {} does not support 8BITMIME, and this message has \
                         no 7-bit form: {why}",
                        self.peer()
                    ))));
                }
            }
        };
        if converted.is_some() {
            tracing::info!(queue_id = %message.id, host = %self.peer(), "converted to 7-bit MIME");
        }
        let size = converted
            .as_ref()
            .map_or(message.body_size, |body| body.len() as u64);
        if ext.size > 0 && size > ext.size {
            return Ok(everyone(Outcome::Failed(format!(
                "552 5.3.4 message of {size} bytes is larger than {} takes ({} bytes)",
                self.peer(),
                ext.size
            ))));
        }

        let mut commands: Vec<Vec<u8>> = Vec::with_capacity(rcpts.len() + 2);
        commands.push(mail_command(envelope, sender, size, offered(&ext)).into_bytes());
        for (_, rcpt) in rcpts {
            commands.push(rcpt_command(rcpt, offered(&ext)).into_bytes());
        }
        commands.push(b"DATA\r\n".to_vec());

        // Replies in order: MAIL, each RCPT, DATA.
        let mut replies: Vec<Reply> = Vec::with_capacity(commands.len());
        if ext.pipelining {
            self.send(&commands.concat()).await?;
            for _ in 0..commands.len() {
                replies.push(self.read_reply(self.command_timeout).await?);
            }
        } else {
            // One at a time, stopping once the outcome is clear.
            replies.push(self.command(&commands[0]).await?);
            if replies[0].class() == 2 {
                for command in &commands[1..=rcpts.len()] {
                    replies.push(self.command(command).await?);
                }
                if replies[1..].iter().any(|r| r.class() == 2) {
                    replies.push(self.command(b"DATA\r\n").await?);
                }
            }
        }

        let mail = &replies[0];
        if mail.class() != 2 {
            let outcome = refusal(self.said(mail), mail);
            self.reset().await?;
            return Ok(everyone(outcome));
        }
        let mut outcomes = Vec::with_capacity(rcpts.len());
        let mut accepted = Vec::new();
        for (n, (i, _)) in rcpts.iter().enumerate() {
            match replies.get(n + 1) {
                Some(reply) if reply.class() == 2 => accepted.push(*i),
                // RFC 5321 §4.5.3.1.10: a 552 to RCPT is RFC 821's "too
                // many recipients" and is taken as the 452 it should be:
                // the recipient waits for a later transaction. Its reply
                // is kept as the server gave it.
                Some(reply) if reply.code == 552 => {
                    outcomes.push((*i, Outcome::Deferred(self.said(reply))));
                }
                Some(reply) => outcomes.push((*i, refusal(self.said(reply), reply))),
                None => outcomes.push((
                    *i,
                    Outcome::Deferred("451 4.3.0 not tried (transaction stopped)".into()),
                )),
            }
        }
        let data = replies.get(rcpts.len() + 1);
        match data {
            Some(reply) if reply.code == 354 => {
                if accepted.is_empty() {
                    // A server that says 354 with no recipient: end the
                    // empty message at once, then start over.
                    self.send(b".\r\n").await?;
                    let _ = self.read_reply(self.command_timeout).await?;
                    self.reset().await?;
                    return Ok(outcomes);
                }
            }
            Some(reply) => {
                if !accepted.is_empty() {
                    let outcome = refusal(self.said(reply), reply);
                    outcomes.extend(accepted.iter().map(|&i| (i, outcome.clone())));
                }
                self.reset().await?;
                return Ok(outcomes);
            }
            None => {
                self.reset().await?;
                return Ok(outcomes);
            }
        }

        match &converted {
            Some(body) => {
                self.send_data(body.as_slice(), body.len() as u64, message)
                    .await?
            }
            None => self.send_body(message).await?,
        }
        let done = self.read_reply(self.data_timeout).await?;
        let outcome = match done.class() {
            2 => Outcome::Delivered(self.said(&done)),
            _ => refusal(self.said(&done), &done),
        };
        outcomes.extend(accepted.iter().map(|&i| (i, outcome.clone())));
        Ok(outcomes)
    }

    /// Streams the body from the queue file through the encoder: exactly
    /// the length the envelope recorded. A file that ends sooner was cut
    /// short: the error drops the connection before the final dot, so the
    /// other side discards what it got (RFC 5321 §4.1.1.4).
    async fn send_body(&mut self, message: &QueuedMessage) -> Result<(), SessionError> {
        let mut file = tokio::fs::File::open(message.path())
            .await
            .map_err(unreadable)?;
        file.seek(std::io::SeekFrom::Start(message.body_offset))
            .await
            .map_err(unreadable)?;
        self.send_data(file, message.body_length(), message).await
    }

    /// `length` bytes of `body` through the encoder (CRLF lines of at most
    /// 998 octets, dot-stuffed) and the final dot: the queue file's body,
    /// or its 7-bit form made in memory.
    async fn send_data(
        &mut self,
        mut body: impl tokio::io::AsyncRead + Unpin,
        length: u64,
        message: &QueuedMessage,
    ) -> Result<(), SessionError> {
        let mut encoder = DataEncoder::new();
        let mut chunk = vec![0u8; BODY_CHUNK];
        let mut wire = Vec::with_capacity(BODY_CHUNK + BODY_CHUNK / 8);
        let mut left = length;
        while left > 0 {
            let want = chunk.len().min(usize::try_from(left).unwrap_or(usize::MAX));
            let n = body.read(&mut chunk[..want]).await.map_err(unreadable)?;
            if n == 0 {
                return Err(SessionError::Temporary(format!(
                    "451 4.3.0 queue file {} ends {left} bytes before its body does; \
                     not sent (see postroom check)",
                    message.id
                )));
            }
            left -= n as u64;
            wire.clear();
            encoder.push(&chunk[..n], &mut wire);
            self.send(&wire).await?;
        }
        wire.clear();
        encoder.finish(&mut wire);
        self.send(&wire).await
    }

    /// Sends one command and reads its reply.
    async fn command(&mut self, command: &[u8]) -> Result<Reply, SessionError> {
        self.send(command).await?;
        self.read_reply(self.command_timeout).await
    }

    /// RSET, so the connection can carry the next transaction.
    async fn reset(&mut self) -> Result<(), SessionError> {
        self.send(b"RSET\r\n").await?;
        let reply = self.read_reply(self.command_timeout).await?;
        if reply.class() != 2 {
            return Err(SessionError::Temporary(self.said(&reply)));
        }
        Ok(())
    }

    /// Says goodbye; errors do not matter any more.
    pub async fn quit(&mut self) {
        if self.send(b"QUIT\r\n").await.is_ok() {
            let _ = self.read_reply(Duration::from_secs(5)).await;
        }
        self.stream.shutdown().await;
    }

    async fn send(&mut self, bytes: &[u8]) -> Result<(), SessionError> {
        match timeout(self.command_timeout, self.stream.write_all(bytes)).await {
            Ok(Ok(())) => Ok(()),
            Ok(Err(e)) => Err(SessionError::Temporary(format!(
                "421 4.4.2 connection to {} lost: {e}",
                self.peer()
            ))),
            Err(_) => Err(SessionError::Temporary(format!(
                "421 4.4.2 {} stopped reading",
                self.peer()
            ))),
        }
    }

    /// Reads one whole reply (all its lines).
    async fn read_reply(&mut self, limit: Duration) -> Result<Reply, SessionError> {
        match timeout(limit, self.read_reply_lines()).await {
            Ok(result) => result,
            Err(_) => Err(SessionError::Temporary(format!(
                "421 4.4.2 {} did not answer within {}s",
                self.peer(),
                limit.as_secs()
            ))),
        }
    }

    async fn read_reply_lines(&mut self) -> Result<Reply, SessionError> {
        let mut raw = Vec::new();
        let mut texts = Vec::new();
        let mut code = 0;
        for _ in 0..MAX_REPLY_LINES {
            let line = self.read_line().await?;
            raw.extend_from_slice(&line);
            raw.extend_from_slice(b"\r\n");
            let parsed = parse_reply_line(&line).ok_or_else(|| {
                SessionError::Temporary(format!(
                    "421 4.5.0 {} sent a line that is no SMTP reply: {:?}",
                    self.peer(),
                    String::from_utf8_lossy(&line[..line.len().min(100)])
                ))
            })?;
            if code != 0 && parsed.0 != code {
                return Err(SessionError::Temporary(format!(
                    "421 4.5.0 {} changed reply codes within a reply",
                    self.peer()
                )));
            }
            code = parsed.0;
            texts.push(parsed.2);
            if parsed.1 {
                return Ok(Reply {
                    code,
                    text: texts.join(" "),
                    raw,
                });
            }
        }
        Err(SessionError::Temporary(format!(
            "421 4.5.0 {} sent a reply of more than {MAX_REPLY_LINES} lines",
            self.peer()
        )))
    }

    /// One line without its line end.
    async fn read_line(&mut self) -> Result<Vec<u8>, SessionError> {
        loop {
            if let Some(end) = self.buf.iter().position(|&b| b == b'\n') {
                let mut line: Vec<u8> = self.buf.drain(..=end).collect();
                line.pop();
                if line.last() == Some(&b'\r') {
                    line.pop();
                }
                return Ok(line);
            }
            if self.buf.len() > MAX_REPLY_LINE {
                return Err(SessionError::Temporary(format!(
                    "421 4.5.0 {} sent a reply line over {MAX_REPLY_LINE} bytes",
                    self.peer()
                )));
            }
            let mut chunk = [0u8; 4096];
            let n = self.stream.read(&mut chunk).await.map_err(|e| {
                SessionError::Temporary(format!(
                    "421 4.4.2 connection to {} lost: {e}",
                    self.peer()
                ))
            })?;
            if n == 0 {
                return Err(SessionError::Temporary(format!(
                    "421 4.4.2 {} closed the connection",
                    self.peer()
                )));
            }
            self.buf.extend_from_slice(&chunk[..n]);
        }
    }

    /// Whether the server said DSN (RFC 3461) in its EHLO reply, so the
    /// NOTIFY of what it accepts is its to honour.
    pub fn speaks_dsn(&self) -> bool {
        self.extensions.dsn
    }

    pub fn is_tls(&self) -> bool {
        match self.stream {
            Stream::Tls(_) => true,
            #[cfg(feature = "legacy-tls")]
            Stream::Legacy(_) => true,
            _ => false,
        }
    }
}

/// `(code, last line, text)` of one reply line: `250-text` or `250 text`.
fn parse_reply_line(line: &[u8]) -> Option<(u16, bool, String)> {
    let digits = line.get(..3)?;
    if !digits.iter().all(u8::is_ascii_digit) || !(b'2'..=b'5').contains(&digits[0]) {
        return None;
    }
    let code = digits
        .iter()
        .fold(0u16, |n, d| n * 10 + u16::from(d - b'0'));
    let last = match line.get(3) {
        None | Some(b' ') => true,
        Some(b'-') => false,
        _ => return None,
    };
    let text = String::from_utf8_lossy(line.get(4..).unwrap_or(&[]));
    // Control characters from the other side never reach our log lines.
    let text: String = text
        .chars()
        .map(|c| if c.is_control() { ' ' } else { c })
        .collect();
    Some((code, last, text.trim().to_string()))
}

/// The extensions an EHLO reply offers (parsed by `smtp-proto`).
fn parse_extensions(raw: &[u8]) -> Extensions {
    use smtp_proto::*;
    let Ok(ehlo) = EhloResponse::<String>::parse(&mut raw.iter()) else {
        return Extensions::default();
    };
    let has = |flag: u32| ehlo.capabilities & flag != 0;
    Extensions {
        pipelining: has(EXT_PIPELINING),
        size: ehlo.size as u64,
        dsn: has(EXT_DSN),
        smtputf8: has(EXT_SMTP_UTF8),
        eightbitmime: has(EXT_8BIT_MIME),
        starttls: has(EXT_START_TLS),
        auth_plain: has(EXT_AUTH) && ehlo.auth_mechanisms & AUTH_PLAIN != 0,
    }
}

/// 4xx defers, 5xx fails.
fn refusal(line: String, reply: &Reply) -> Outcome {
    if reply.class() == 4 {
        Outcome::Deferred(line)
    } else {
        Outcome::Failed(line)
    }
}

/// A queue file that cannot be read now: the recipients wait.
fn unreadable(e: std::io::Error) -> SessionError {
    SessionError::Temporary(format!("451 4.3.0 cannot read the queue file: {e}"))
}

/// Why a body has no 7-bit form to send.
enum SevenBit {
    /// The queue file cannot be read now: try again later.
    Unreadable(String),
    /// Nor will it ever have one.
    Impossible(NoSevenBitForm),
}

/// The 7-bit form of the message's body (`proto::seven_bit`) for a server
/// that does not offer 8BITMIME, or `None` when the body is 7-bit as it
/// is. Read whole: only such servers need it, and few are left.
///
/// A DKIM signature added as the message entered the queue
/// (`delivery::dkim`, at submission: the queue file is immutable after)
/// covers the 8-bit body and no longer verifies once it is converted;
/// Postfix's conversion breaks it the same way. The signature cannot come
/// after: which servers lack 8BITMIME is known only here.
async fn seven_bit_body(message: &QueuedMessage) -> Result<Option<Vec<u8>>, SevenBit> {
    let unreadable =
        |e: String| SevenBit::Unreadable(format!("451 4.3.0 cannot read the queue file: {e}"));
    let file = tokio::fs::read(message.path())
        .await
        .map_err(|e| unreadable(e.to_string()))?;
    let body = usize::try_from(message.body_offset)
        .ok()
        .zip(usize::try_from(message.body_length()).ok())
        .and_then(|(start, len)| file.get(start..start.checked_add(len)?))
        .ok_or_else(|| {
            unreadable(format!(
                "{} is shorter than its body; see postroom check",
                message.id
            ))
        })?;
    if body.is_ascii() {
        return Ok(None);
    }
    seven_bit::to_seven_bit(body)
        .map(Some)
        .map_err(SevenBit::Impossible)
}

fn needs_smtputf8(envelope: &Envelope, sender: &ReversePath, rcpts: &[(usize, Recipient)]) -> bool {
    envelope.smtputf8
        || !sender.to_string().is_ascii()
        || rcpts.iter().any(|(_, r)| !r.address.to_string().is_ascii())
}

/// The lib's command builders, told what this server offers.
fn offered(ext: &Extensions) -> Offered {
    Offered {
        size: ext.size > 0,
        eightbitmime: ext.eightbitmime,
        smtputf8: ext.smtputf8,
        dsn: ext.dsn,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reply_lines() {
        assert_eq!(
            parse_reply_line(b"250-PIPELINING"),
            Some((250, false, "PIPELINING".into()))
        );
        assert_eq!(
            parse_reply_line(b"550 5.1.1 no"),
            Some((550, true, "5.1.1 no".into()))
        );
        assert_eq!(parse_reply_line(b"354"), Some((354, true, String::new())));
        assert_eq!(parse_reply_line(b"hello"), None);
        assert_eq!(parse_reply_line(b"999 x"), None);
        assert_eq!(parse_reply_line(b"250x"), None);
        assert_eq!(
            parse_reply_line(b"451 a\x1bb"),
            Some((451, true, "a b".into()))
        );
    }

    #[test]
    fn extensions_from_an_ehlo_reply() {
        let ext = parse_extensions(
            b"250-mx.test hello\r\n250-PIPELINING\r\n250-SIZE 1000\r\n250-DSN\r\n250-STARTTLS\r\n250-AUTH LOGIN PLAIN\r\n250 SMTPUTF8\r\n",
        );
        assert!(ext.pipelining && ext.dsn && ext.starttls && ext.auth_plain && ext.smtputf8);
        assert_eq!(ext.size, 1000);
        assert!(!ext.eightbitmime);
        let bare = parse_extensions(b"250 mx.test\r\n");
        assert!(!bare.pipelining && bare.size == 0);
    }

    proptest::proptest! {
        #[test]
        fn reply_parsing_never_panics(line in proptest::collection::vec(proptest::prelude::any::<u8>(), 0..200)) {
            let _ = parse_reply_line(&line);
            let _ = parse_extensions(&line);
        }
    }
}
