//! One client connection: line reading with limits, buffered replies,
//! literals and BDAT chunks, STARTTLS that discards what came before.

use std::io;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::time::timeout;
use tokio_rustls::TlsAcceptor;

use super::tls::ServerTls;
use super::{KEEP_OUTPUT_CAPACITY, NetError, OUTPUT_HIGH_WATER, READ_BUFFER, from_io};
use crate::config::Plaintext;

/// Anything a connection can run over: TCP, TLS over TCP, stdin/stdout.
pub(super) trait Transport: AsyncRead + AsyncWrite + Unpin + Send {}
impl<T: AsyncRead + AsyncWrite + Unpin + Send> Transport for T {}

/// How long [`Connection::linger_close`] waits for the client to stop
/// sending, and how much of what it sends meanwhile it reads and drops.
pub const LINGER: Duration = Duration::from_secs(2);
pub const LINGER_BYTES: usize = 4 << 20;

/// One client connection: line reading with limits, buffered replies,
/// STARTTLS. Every read and write waits at most the idle timeout.
pub struct Connection {
    pub(super) id: String,
    pub(super) peer: Option<SocketAddr>,
    local: Option<SocketAddr>,
    pub(super) listener: Arc<str>,
    /// None only after a failed TLS handshake, which leaves nothing usable.
    io: Option<Box<dyn Transport>>,
    /// Protocol and cipher once TLS is on.
    tls: Option<String>,
    idle: Duration,
    /// Received bytes not yet consumed are `buf[start..end]`.
    buf: Box<[u8]>,
    start: usize,
    end: usize,
    /// The line being assembled, kept here rather than in `read_line`'s
    /// future so that a `read_line` dropped by `select!` loses nothing.
    pub(super) line: Vec<u8>,
    /// Inside an over-long line, throwing bytes away up to its LF.
    discarding: bool,
    /// The last byte read was a CR: after an over-long line, whether it
    /// ended with CRLF (SMTP DATA needs to know, postroom-tree(5), LIMITS AND SECURITY).
    after_cr: bool,
    /// The first bytes of the last over-long line, so a protocol can tell
    /// what it was (an over-long `BDAT` line must end an SMTP session).
    long_line_start: [u8; 8],
    /// An over-long line ends the session ([`Connection::end_long_lines_early`]).
    long_line_ends_session: bool,
    pub(super) out: Vec<u8>,
    /// Send what is queued before a read that has to wait for the client
    /// ([`Connection::flush_before_reading`]).
    flush_before_read: bool,
}

impl std::fmt::Debug for Connection {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Connection")
            .field("id", &self.id)
            .field("peer", &self.peer)
            .field("listener", &self.listener)
            .field("tls", &self.tls)
            .finish_non_exhaustive()
    }
}

impl Connection {
    /// A connection over any stream: for tests of protocol code (e.g. over
    /// `tokio::io::duplex`) and programs that make their own streams.
    /// Servers get theirs from [`serve`].
    pub fn new<S>(
        stream: S,
        peer: Option<SocketAddr>,
        listener: &str,
        idle_timeout: Duration,
    ) -> Connection
    where
        S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
    {
        Connection::with_parts(Box::new(stream), peer, None, listener.into(), idle_timeout)
    }

    pub(super) fn with_parts(
        io: Box<dyn Transport>,
        peer: Option<SocketAddr>,
        local: Option<SocketAddr>,
        listener: Arc<str>,
        idle: Duration,
    ) -> Connection {
        Connection {
            // Not rand::random: see fsutil::random_u32 (a server under
            // inetd is a short-lived process too).
            id: format!("{:08x}", crate::store::fsutil::random_u32()),
            peer,
            local,
            listener,
            io: Some(io),
            tls: None,
            idle,
            buf: vec![0; READ_BUFFER].into_boxed_slice(),
            start: 0,
            end: 0,
            line: Vec::new(),
            discarding: false,
            after_cr: false,
            long_line_start: [0; 8],
            long_line_ends_session: false,
            out: Vec::new(),
            flush_before_read: false,
        }
    }

    /// For a protocol that hangs up on an over-long line (IMAP and
    /// ManageSieve, whose line may announce a literal): [`NetError::LineTooLong`]
    /// comes as soon as `max` bytes have come without an LF, rather than
    /// once the rest of the line has been read, which a client can put off
    /// for ever (Dovecot disconnects at the limit too).
    pub fn end_long_lines_early(&mut self) {
        self.long_line_ends_session = true;
    }

    /// From now on, replies queued by [`Connection::write`] are sent
    /// before any read that has to go to the client for more bytes (as
    /// Postfix's streams do): a pipelining client that waits for them
    /// before it sends the rest (a BDAT chunk, the end of a line) is
    /// never left waiting while the server waits for it. Reads the
    /// buffer already holds still send nothing, so a pipelined batch
    /// still gets its replies in one write.
    pub fn flush_before_reading(&mut self) {
        self.flush_before_read = true;
    }

    /// Short random id (8 hex digits) naming this session in logs and in
    /// Received headers.
    pub fn id(&self) -> &str {
        &self.id
    }

    /// The client's address, when known (always, except on pipes without
    /// `REMOTE_ADDR`/`TCPREMOTEIP`).
    pub fn peer(&self) -> Option<SocketAddr> {
        self.peer
    }

    /// The address the client connected to, when known.
    pub fn local(&self) -> Option<SocketAddr> {
        self.local
    }

    /// Which socket the client came in on: the `LISTEN_FDNAMES` name
    /// (`smtp`, `submission`, …), the `--listen` address, or `inetd`.
    /// Protocols use it to tell submission from relay.
    pub fn listener_name(&self) -> &str {
        &self.listener
    }

    pub fn is_tls(&self) -> bool {
        self.tls.is_some()
    }

    /// Protocol and cipher suite, e.g. `TLSv1.3 with cipher
    /// TLS13_AES_256_GCM_SHA384`, for Received headers and logs.
    pub fn tls_info(&self) -> Option<String> {
        self.tls.clone()
    }

    /// Whether a password may cross this connection: under TLS always,
    /// otherwise as `rule` (`auth.plaintext`) says for this peer. A pipe
    /// without `REMOTE_ADDR`/`TCPREMOTEIP` has no peer and is loopback to
    /// no rule: behind a local proxy anything could be on its other end.
    pub fn may_send_password(&self, rule: Plaintext) -> bool {
        self.tls.is_some() || rule.allows(self.peer.map(|p| p.ip()))
    }

    /// [`Connection::may_send_password`] under the default rule
    /// (`loopback`).
    pub fn is_secure(&self) -> bool {
        self.may_send_password(Plaintext::Loopback)
    }

    /// Reads one line, terminator included, ending at LF. Bare LF and bare
    /// CR are left as received: the protocol decides (postroom-tree(5), LIMITS AND SECURITY).
    ///
    /// A line longer than `max` bytes gives [`NetError::LineTooLong`] once
    /// the rest of it has been read and dropped (at most `max` bytes are
    /// ever held), so the next call reads the next line; or at once, after
    /// [`Connection::end_long_lines_early`]. EOF, even in
    /// mid-line, gives [`NetError::Closed`]; `limits.idle_timeout` without
    /// a byte gives [`NetError::Timeout`]. Cancel-safe: dropped in a
    /// `select!`, a later call goes on where this one stopped.
    pub async fn read_line(&mut self, max: usize) -> Result<Vec<u8>, NetError> {
        loop {
            let available = &self.buf[self.start..self.end];
            if let Some(lf) = available.iter().position(|&b| b == b'\n') {
                let take = lf + 1;
                let too_long = self.discarding || self.line.len() + take > max;
                self.after_cr = match lf {
                    0 => self.after_cr,
                    _ => available[lf - 1] == b'\r',
                };
                if !too_long {
                    self.line.extend_from_slice(&available[..take]);
                } else if !self.discarding {
                    self.long_line_start = first_bytes(&self.line, available);
                }
                self.start += take;
                self.discarding = false;
                if too_long {
                    self.line = Vec::new();
                    return Err(NetError::LineTooLong);
                }
                return Ok(std::mem::take(&mut self.line));
            }
            // No LF yet: the line is at least one byte longer than this.
            if !self.discarding && self.line.len() + available.len() >= max {
                self.discarding = true;
                self.long_line_start = first_bytes(&self.line, available);
                self.line = Vec::new();
                if self.long_line_ends_session {
                    self.start = self.end;
                    return Err(NetError::LineTooLong);
                }
            }
            if !self.discarding {
                self.line.extend_from_slice(available);
            }
            if let Some(&last) = available.last() {
                self.after_cr = last == b'\r';
            }
            self.start = self.end;
            self.fill().await?;
        }
    }

    /// After [`NetError::LineTooLong`]: whether the discarded line ended
    /// with CRLF rather than a bare LF.
    pub fn long_line_ended_with_crlf(&self) -> bool {
        self.after_cr
    }

    /// After [`NetError::LineTooLong`]: whether the discarded line began
    /// with `word`, compared without regard to ASCII case (at most 8 bytes
    /// are kept).
    pub fn long_line_began_with(&self, word: &[u8]) -> bool {
        word.len() <= self.long_line_start.len()
            && self.long_line_start[..word.len()].eq_ignore_ascii_case(word)
    }

    /// Copies exactly `n` bytes from the client to `out` (a BDAT chunk, an
    /// IMAP literal), a buffer at a time, each read within the idle
    /// timeout. Not cancel-safe: if dropped, the stream position is lost
    /// and the session should end.
    pub async fn read_exact_into(
        &mut self,
        n: usize,
        out: &mut impl io::Write,
    ) -> Result<(), NetError> {
        let mut left = n;
        // Bytes of a line a cancelled read_line had set aside come first.
        if !self.line.is_empty() && !self.discarding {
            let take = left.min(self.line.len());
            out.write_all(&self.line[..take])?;
            self.line.drain(..take);
            left -= take;
        }
        while left > 0 {
            if self.start == self.end {
                self.fill().await?;
            }
            let take = left.min(self.end - self.start);
            out.write_all(&self.buf[self.start..self.start + take])?;
            self.start += take;
            left -= take;
        }
        Ok(())
    }

    /// Reads the rest of a command that announced a literal at the end of
    /// a line (IMAP, ManageSieve): the literal's `size` bytes onto
    /// `command` (read and thrown away when `keep` is false: a literal over
    /// a limit whose bytes are on their way), then the line that goes on
    /// after it onto `command` too. That line may be `line_max` bytes; with
    /// an `allowance` (the bound of a whole command before login) only what
    /// is left of it, and at least the CRLF that ends the command.
    pub async fn read_literal_then_line(
        &mut self,
        command: &mut Vec<u8>,
        size: usize,
        keep: bool,
        line_max: usize,
        allowance: Option<usize>,
    ) -> Result<(), NetError> {
        if keep {
            command.reserve(size);
            self.read_exact_into(size, command).await?;
        } else {
            self.read_exact_into(size, &mut io::sink()).await?;
        }
        let line_max = match allowance {
            Some(all) => all.saturating_sub(command.len()).max(2),
            None => line_max,
        };
        let rest = self.read_line(line_max).await?;
        command.extend_from_slice(&rest);
        Ok(())
    }

    /// True when the client has sent bytes not yet read by the protocol:
    /// a client that pipelines after STARTTLS (or before the greeting) can
    /// be told off.
    pub fn has_buffered_input(&self) -> bool {
        self.start < self.end || !self.line.is_empty()
    }

    /// Queues bytes to send; nothing is sent until [`Connection::flush`].
    /// For replies and other small output: bulk data (a message body) goes
    /// through [`Connection::write_bulk`] so memory stays bounded.
    pub fn write(&mut self, bytes: &[u8]) {
        self.out.extend_from_slice(bytes);
    }

    /// Queues bytes like [`Connection::write`], but first sends what is
    /// pending when it would pass [`OUTPUT_HIGH_WATER`] (1 MiB), so sending
    /// a 50 MB message holds about 1 MiB at a time.
    pub async fn write_bulk(&mut self, bytes: &[u8]) -> Result<(), NetError> {
        for chunk in bytes.chunks(OUTPUT_HIGH_WATER) {
            if self.out.len() + chunk.len() > OUTPUT_HIGH_WATER {
                self.flush().await?;
            }
            self.out.extend_from_slice(chunk);
        }
        Ok(())
    }

    /// Sends everything queued. A client that reads nothing for the idle
    /// timeout gets [`NetError::Timeout`]: it cannot make us hold its
    /// replies forever.
    pub async fn flush(&mut self) -> Result<(), NetError> {
        let idle = self.idle;
        let io = self.io.as_mut().ok_or(NetError::Closed)?;
        while !self.out.is_empty() {
            let n = match timeout(idle, io.write(&self.out)).await {
                Err(_) => return Err(NetError::Timeout),
                Ok(Err(e)) => return Err(from_io(e)),
                Ok(Ok(0)) => return Err(NetError::Closed),
                Ok(Ok(n)) => n,
            };
            // Drained as sent, so a flush cut short never repeats bytes.
            self.out.drain(..n);
        }
        match timeout(idle, io.flush()).await {
            Err(_) => return Err(NetError::Timeout),
            Ok(Err(e)) => return Err(from_io(e)),
            Ok(Ok(())) => {}
        }
        if self.out.capacity() > KEEP_OUTPUT_CAPACITY {
            self.out = Vec::new();
        }
        Ok(())
    }

    /// Flushes, then closes the sending side (with a TLS close_notify when
    /// under TLS): for QUIT/LOGOUT. Reads may still see what the client
    /// sends.
    pub async fn shutdown(&mut self) -> Result<(), NetError> {
        self.flush().await?;
        let idle = self.idle;
        let io = self.io.as_mut().ok_or(NetError::Closed)?;
        match timeout(idle, io.shutdown()).await {
            Err(_) => Err(NetError::Timeout),
            Ok(Err(e)) => Err(from_io(e)),
            Ok(Ok(())) => Ok(()),
        }
    }

    /// Ends a session the server gives up on while the client may still be
    /// sending (a line over the limit): sends the last reply, closes the
    /// sending side, then reads and drops what comes for at most
    /// [`LINGER`] or [`LINGER_BYTES`]. Closing a socket with input unread
    /// sends a reset, and a client's TCP that gets one drops what it has
    /// received but not yet read: the BYE that says why would be lost.
    pub async fn linger_close(&mut self) {
        if self.shutdown().await.is_err() {
            return;
        }
        let Some(io) = self.io.as_mut() else {
            return;
        };
        let deadline = tokio::time::Instant::now() + LINGER;
        let mut dropped = 0;
        while dropped < LINGER_BYTES {
            match tokio::time::timeout_at(deadline, io.read(&mut self.buf)).await {
                Ok(Ok(n)) if n > 0 => dropped += n,
                _ => break,
            }
        }
        self.start = 0;
        self.end = 0;
    }

    /// Whether STARTTLS may be offered now: a certificate is configured
    /// and TLS is not on yet.
    pub fn may_starttls(&self, tls: Option<&ServerTls>) -> bool {
        tls.is_some() && !self.is_tls()
    }

    /// The acceptor STARTTLS would use now (loading a deferred
    /// certificate), or why it cannot start (for the protocol's refusal):
    /// no usable certificate, or TLS already on.
    pub fn starttls_acceptor(&self, tls: Option<&ServerTls>) -> Result<TlsAcceptor, &'static str> {
        if self.is_tls() {
            return Err("TLS is already active");
        }
        tls.and_then(ServerTls::acceptor)
            .ok_or("TLS is not available here")
    }

    /// Starts TLS on this connection (STARTTLS, or implicit TLS at
    /// connect). Pending output (the "go ahead" reply) is sent first.
    ///
    /// Every byte received before the handshake is discarded, and logged
    /// at warn: a client or a man in the middle may have sent commands
    /// right after STARTTLS, which must not run as if they came over TLS
    /// (postroom-tree(5), LIMITS AND SECURITY, CVE-2011-0411). The handshake must finish within the
    /// idle timeout. After a failed handshake the connection is unusable
    /// (every call returns [`NetError::Closed`]); end the session.
    pub async fn start_tls(&mut self, acceptor: &TlsAcceptor) -> Result<(), NetError> {
        if self.tls.is_some() {
            return Err(NetError::Tls("TLS is already active".into()));
        }
        let discarded = (self.end - self.start) + self.line.len();
        if discarded > 0 {
            tracing::warn!(
                "discarding {discarded} bytes sent before the TLS handshake (command injection attempt or broken client)"
            );
        }
        self.start = 0;
        self.end = 0;
        self.line = Vec::new();
        self.discarding = false;
        self.flush().await?;
        let io = self.io.take().ok_or(NetError::Closed)?;
        let stream = match timeout(self.idle, acceptor.accept(io)).await {
            Err(_) => return Err(NetError::Timeout),
            Ok(Err(e)) => return Err(NetError::Tls(e.to_string())),
            Ok(Ok(stream)) => stream,
        };
        let info = describe_tls(stream.get_ref().1);
        tracing::debug!("TLS started: {info}");
        self.tls = Some(info);
        self.io = Some(Box::new(stream));
        Ok(())
    }

    /// Reads more from the client into the (empty) buffer.
    async fn fill(&mut self) -> Result<(), NetError> {
        if self.flush_before_read && !self.out.is_empty() {
            self.flush().await?;
        }
        let io = self.io.as_mut().ok_or(NetError::Closed)?;
        let n = match timeout(self.idle, io.read(&mut self.buf)).await {
            Err(_) => return Err(NetError::Timeout),
            Ok(Err(e)) => return Err(from_io(e)),
            Ok(Ok(0)) => return Err(NetError::Closed),
            Ok(Ok(n)) => n,
        };
        self.start = 0;
        self.end = n;
        Ok(())
    }
}

/// The first 8 bytes of a line held in two pieces (zeros after its end).
fn first_bytes(held: &[u8], rest: &[u8]) -> [u8; 8] {
    let mut start = [0u8; 8];
    for (slot, b) in start.iter_mut().zip(held.iter().chain(rest)) {
        *slot = *b;
    }
    start
}

/// `TLSv1.3 with cipher TLS13_AES_128_GCM_SHA256`, as Postfix and others
/// write it in Received headers.
fn describe_tls(conn: &rustls::ServerConnection) -> String {
    let version = match conn.protocol_version() {
        Some(rustls::ProtocolVersion::TLSv1_3) => "TLSv1.3".to_string(),
        Some(rustls::ProtocolVersion::TLSv1_2) => "TLSv1.2".to_string(),
        Some(other) => format!("{other:?}"),
        None => "TLS".to_string(),
    };
    match conn.negotiated_cipher_suite() {
        Some(suite) => {
            let suite = suite.suite();
            match suite.as_str() {
                Some(name) => format!("{version} with cipher {name}"),
                None => format!("{version} with cipher {suite:?}"),
            }
        }
        None => version,
    }
}
