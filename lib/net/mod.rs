//! How a server gets its connections, and the [`Connection`] every protocol
//! (SMTP, POP3, IMAP) reads lines from and writes replies to.
//!
//! postroom-tree(5), PROCESSES: a server runs in one of three ways, chosen at start by
//! [`Launch::from_args`]:
//!
//! 1. **inetd** (systemd `Accept=yes`, inetd, tcpserver): one connection on
//!    fd 0/1, one process per connection.
//! 2. **systemd `Accept=no`**: listening sockets in `LISTEN_FDS`, named by
//!    `LISTEN_FDNAMES`; one process serves many connections.
//! 3. **standalone** `--listen ADDR` / `--listen-tls ADDR`: the same code
//!    path as 2, with sockets we bind ourselves.
//!
//! [`serve`] runs a handler per connection under the limits of postroom-tree(5), LIMITS AND SECURITY:
//! connections in total and per IP, idle time per read and write, session
//! time, and a TLS handshake time. Every connection has a short random id
//! and runs in a `tracing` span `conn=<id> peer=<ip:port>`, so every log line
//! a handler writes says which session it belongs to.
//!
//! Memory per idle connection is kept small on purpose (one 4 KiB read
//! buffer, output buffers released after large flushes) so one standalone
//! process can hold 10,000 idle sessions; `postroom-bench net` measures it.
//!
//! Security: [`Connection::start_tls`] discards every byte received before
//! the handshake (CVE-2011-0411, "STARTTLS command injection"), and nothing
//! here panics on what a client sends.

pub mod dns;
pub mod log;
pub mod privileges;
pub mod server;
pub mod tls;

use std::collections::HashMap;
use std::future::Future;
use std::io;
use std::net::{IpAddr, SocketAddr};
use std::os::fd::{AsFd, OwnedFd};
use std::os::unix::fs::FileTypeExt;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::sync::mpsc;
use tokio::time::timeout;
use tokio_rustls::TlsAcceptor;
use tracing::Instrument;

use crate::config::{Limits, Plaintext};

/// Bytes read from the socket at a time, and the only input buffer a
/// connection keeps while idle.
pub const READ_BUFFER: usize = 4096;

/// Pending output above which [`Connection::write_bulk`] sends before
/// buffering more, so a large message costs at most this much memory.
pub const OUTPUT_HIGH_WATER: usize = 1 << 20;

/// How long a stopping server waits for sessions in progress.
pub const SHUTDOWN_GRACE: Duration = Duration::from_secs(10);

/// An output buffer larger than this is freed after a flush instead of kept
/// for the next reply: idle sessions must stay small.
const KEEP_OUTPUT_CAPACITY: usize = 16 * 1024;

/// What went wrong with a connection or a listening socket.
#[derive(Debug, thiserror::Error)]
pub enum NetError {
    /// The client closed the connection (or reset it), possibly in the
    /// middle of a line. Nothing to reply; end the session.
    #[error("connection closed by the client")]
    Closed,
    /// The client sent nothing, or read nothing, for `limits.idle_timeout`.
    /// Reply with a timeout error if the protocol has one, then end.
    #[error("timed out waiting for the client (limits.idle_timeout)")]
    Timeout,
    /// A line was longer than the caller's maximum. The rest of it has been
    /// read and thrown away, so the session can reply with an error and go
    /// on reading the next line.
    #[error("line too long (limits.line_length)")]
    LineTooLong,
    /// A TLS handshake failed, or TLS cannot be started here.
    #[error("TLS: {0}")]
    Tls(String),
    /// Any other I/O error on the connection (or on the writer given to
    /// [`Connection::read_exact_into`]).
    #[error("I/O error: {0}")]
    Io(#[from] io::Error),
    /// A `--listen` address could not be bound.
    #[error("cannot listen on {addr}: {}", bind_hint(error))]
    Bind {
        addr: SocketAddr,
        #[source]
        error: io::Error,
    },
    /// A socket passed in `LISTEN_FDS` is not a listening TCP socket.
    #[error(
        "inherited socket {index} ({name:?}): {error} (the systemd .socket unit must use ListenStream= with a TCP address)"
    )]
    Inherited {
        index: usize,
        name: String,
        #[source]
        error: io::Error,
    },
}

fn bind_hint(error: &io::Error) -> String {
    match error.kind() {
        io::ErrorKind::AddrInUse => {
            "address already in use: another server is listening there (stop it, or choose another --listen address)".into()
        }
        io::ErrorKind::PermissionDenied => {
            "permission denied: ports below 1024 need root or CAP_NET_BIND_SERVICE (or use systemd socket activation)".into()
        }
        io::ErrorKind::AddrNotAvailable => {
            "address not available: no interface on this host has that address".into()
        }
        _ => error.to_string(),
    }
}

/// Errors a peer causes by going away are all the same to a session.
fn from_io(error: io::Error) -> NetError {
    match error.kind() {
        io::ErrorKind::UnexpectedEof
        | io::ErrorKind::ConnectionReset
        | io::ErrorKind::ConnectionAborted
        | io::ErrorKind::BrokenPipe => NetError::Closed,
        _ => NetError::Io(error),
    }
}

/// How this process gets its connections (postroom-tree(5), PROCESSES).
#[derive(Debug)]
pub enum Launch {
    /// Listening sockets: bound from `--listen`/`--listen-tls`, or inherited
    /// from systemd (`Accept=no`).
    Listeners(Vec<Listener>),
    /// One connection on fd 0/1, already accepted by inetd, systemd
    /// (`Accept=yes`) or tcpserver. `tls`: the client starts with a TLS
    /// handshake (ports 465, 993, 995).
    Inetd { tls: bool },
}

/// One listening socket and what is spoken on it.
#[derive(Debug)]
pub struct Listener {
    socket: std::net::TcpListener,
    name: Arc<str>,
    tls: bool,
}

impl Listener {
    /// The socket's name: the `LISTEN_FDNAMES` entry, or the address a
    /// `--listen` socket is bound to.
    pub fn name(&self) -> &str {
        &self.name
    }
    /// True when clients start with a TLS handshake.
    pub fn is_tls(&self) -> bool {
        self.tls
    }
    pub fn local_addr(&self) -> io::Result<SocketAddr> {
        self.socket.local_addr()
    }
}

impl Launch {
    /// Chooses how to run: the addresses given on the command line if any
    /// (standalone), else the sockets systemd passed in `LISTEN_FDS`, else
    /// one connection on fd 0/1 (inetd, plain text; a binary started by
    /// inetd on an implicit-TLS port uses [`Launch::inetd`]`(true)`
    /// instead).
    ///
    /// Call it before the tokio runtime starts: taking systemd's sockets
    /// removes `LISTEN_FDS` and `LISTEN_PID` from the environment (so child
    /// processes do not take them too), which is only sound while the
    /// process has one thread.
    pub fn from_args(listen: &[SocketAddr], listen_tls: &[SocketAddr]) -> Result<Launch, NetError> {
        if !listen.is_empty() || !listen_tls.is_empty() {
            let plain = listen.iter().map(|a| (a, false));
            let tls = listen_tls.iter().map(|a| (a, true));
            let listeners = plain
                .chain(tls)
                .map(|(addr, tls)| bind(*addr, tls))
                .collect::<Result<Vec<_>, _>>()?;
            return Ok(Launch::Listeners(listeners));
        }
        if let Some(listeners) = inherited_listeners()? {
            return Ok(Launch::Listeners(listeners));
        }
        Ok(Launch::inetd(false))
    }

    /// One connection on fd 0/1; `tls` when the client starts with a TLS
    /// handshake (inetd on port 465, 993 or 995).
    pub fn inetd(tls: bool) -> Launch {
        Launch::Inetd { tls }
    }

    /// The launch a server's flags ask for (postroom-tree(5), PROCESSES): `--listen` and
    /// `--listen-tls` sockets, else systemd's `LISTEN_FDS`, else one
    /// connection on stdin/stdout (`--inetd-tls`: TLS from the start).
    pub fn from_flags(
        listen: &[SocketAddr],
        listen_tls: &[SocketAddr],
        inetd_tls: bool,
    ) -> Result<Launch, NetError> {
        if listen.is_empty() && listen_tls.is_empty() && std::env::var_os("LISTEN_FDS").is_none() {
            Ok(Launch::inetd(inetd_tls))
        } else {
            Launch::from_args(listen, listen_tls)
        }
    }

    /// A runtime fit for the launch: one thread for one inetd connection
    /// (starting fast matters there), a thread per core otherwise.
    pub fn runtime(&self) -> io::Result<tokio::runtime::Runtime> {
        if matches!(self, Launch::Inetd { .. }) {
            tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
        } else {
            tokio::runtime::Builder::new_multi_thread()
                .enable_all()
                .build()
        }
    }

    /// The addresses the listening sockets are bound to (none in inetd
    /// mode); tests use it to find an ephemeral port.
    pub fn local_addrs(&self) -> Vec<SocketAddr> {
        match self {
            Launch::Listeners(listeners) => listeners
                .iter()
                .filter_map(|l| l.local_addr().ok())
                .collect(),
            Launch::Inetd { .. } => Vec::new(),
        }
    }
}

fn bind(addr: SocketAddr, tls: bool) -> Result<Listener, NetError> {
    let bind_error = |error| NetError::Bind { addr, error };
    let socket = std::net::TcpListener::bind(addr).map_err(bind_error)?;
    socket.set_nonblocking(true).map_err(bind_error)?;
    // The bound address rather than the one asked for: port 0 becomes the
    // port actually used.
    let name = socket.local_addr().unwrap_or(addr).to_string();
    Ok(Listener {
        socket,
        name: name.into(),
        tls,
    })
}

/// The sockets systemd passed (`Accept=no`), or None when there are none.
fn inherited_listeners() -> Result<Option<Vec<Listener>>, NetError> {
    // Read before listenfd consumes the LISTEN_* variables.
    let names = std::env::var("LISTEN_FDNAMES").unwrap_or_default();
    let mut fds = listenfd::ListenFd::from_env();
    if fds.len() == 0 {
        return Ok(None);
    }
    let mut names = names.split(':');
    let mut listeners = Vec::with_capacity(fds.len());
    for index in 0..fds.len() {
        let name = match names.next() {
            Some(n) if !n.is_empty() => n.to_string(),
            _ => format!("fd{}", index + 3),
        };
        let inherited_error = |error| NetError::Inherited {
            index,
            name: name.clone(),
            error,
        };
        let socket = fds
            .take_tcp_listener(index)
            .map_err(inherited_error)?
            .ok_or_else(|| inherited_error(io::Error::other("already taken")))?;
        socket.set_nonblocking(true).map_err(inherited_error)?;
        let tls = is_implicit_tls_name(&name);
        listeners.push(Listener {
            socket,
            name: name.into(),
            tls,
        });
    }
    Ok(Some(listeners))
}

/// Whether a systemd socket name (`FileDescriptorName=`, seen in
/// `LISTEN_FDNAMES`) means implicit TLS.
///
/// The rule: after lower-casing and dropping a `.socket` suffix, the name,
/// or its last `-`-separated part, is one of the implicit-TLS service names
/// `smtps`, `submissions`, `imaps`, `pop3s`; or the name contains `tls`.
/// So `smtps`, `postroom-imaps.socket` and `submission-tls` are TLS, while
/// `smtp`, `submission`, `imap` and `pop3` are plain text (STARTTLS is the
/// protocol's business).
pub fn is_implicit_tls_name(name: &str) -> bool {
    const IMPLICIT: [&str; 4] = ["smtps", "submissions", "imaps", "pop3s"];
    let name = name.to_ascii_lowercase();
    let name = name.strip_suffix(".socket").unwrap_or(&name);
    let last = name.rsplit('-').next().unwrap_or(name);
    IMPLICIT.contains(&name) || IMPLICIT.contains(&last) || name.contains("tls")
}

/// Runs `handler` for every connection `launch` provides, until SIGTERM or
/// SIGINT (listeners) or until the one connection ends (inetd).
///
/// With listeners: accepts on every socket; a client over
/// `limits.connections` in total or `limits.connections_per_ip` from its IP
/// gets `busy_reply` (e.g. `b"421 4.7.0 too many connections\r\n"`) and is
/// closed without a handler (on implicit-TLS sockets it is just closed: a
/// TLS client cannot read plain text). Implicit-TLS connections finish
/// their handshake within `limits.idle_timeout` before the handler runs.
/// Each handler is cut off after `limits.session_timeout`. On SIGTERM or
/// SIGINT the listeners close, and `serve` returns when the sessions in
/// progress end or after [`SHUTDOWN_GRACE`].
///
/// Inetd: makes the one connection (TLS handshake first if asked), runs the
/// handler and returns. Output the handler has not flushed is lost. In the
/// pipe case (not a socket on fd 0) a read from stdin may still be in
/// progress when `serve` returns, and tokio cannot cancel it: end the
/// process with `std::process::exit` rather than waiting for the runtime.
///
/// Errors are only for setup: an implicit-TLS launch without an acceptor,
/// or fd 0 unusable. What happens to one connection is logged in its span.
pub async fn serve<F, Fut>(
    launch: Launch,
    limits: &Limits,
    tls: Option<TlsAcceptor>,
    busy_reply: &'static [u8],
    handler: F,
) -> Result<(), NetError>
where
    F: Fn(Connection) -> Fut + Clone + Send + 'static,
    Fut: Future<Output = ()> + Send + 'static,
{
    serve_until(launch, limits, tls, busy_reply, handler, shutdown_signal()).await
}

/// Resolves on the first SIGTERM or SIGINT. Only polled in listener mode,
/// so an inetd process keeps the default action (die) for both.
async fn shutdown_signal() {
    use tokio::signal::unix::{SignalKind, signal};
    match (
        signal(SignalKind::terminate()),
        signal(SignalKind::interrupt()),
    ) {
        (Ok(mut term), Ok(mut int)) => {
            tokio::select! {
                _ = term.recv() => tracing::info!("SIGTERM: stopping"),
                _ = int.recv() => tracing::info!("SIGINT: stopping"),
            }
        }
        (Err(e), _) | (_, Err(e)) => {
            tracing::warn!("cannot catch SIGTERM/SIGINT ({e}); stop with SIGKILL");
            std::future::pending::<()>().await;
        }
    }
}

/// [`serve`] with the stop condition given, for tests.
async fn serve_until<F, Fut>(
    launch: Launch,
    limits: &Limits,
    tls: Option<TlsAcceptor>,
    busy_reply: &'static [u8],
    handler: F,
    shutdown: impl Future<Output = ()>,
) -> Result<(), NetError>
where
    F: Fn(Connection) -> Fut + Clone + Send + 'static,
    Fut: Future<Output = ()> + Send + 'static,
{
    let timing = Timing {
        idle: limits.idle_timeout,
        session: limits.session_timeout,
    };
    let listeners = match launch {
        Launch::Inetd { tls: implicit } => {
            let acceptor = match (implicit, tls) {
                (true, None) => return Err(no_certificate("inetd")),
                (true, Some(acceptor)) => Some(acceptor),
                (false, _) => None,
            };
            let conn = inetd_connection(timing.idle)?;
            let span = conn_span(&conn);
            run_session(conn, acceptor, timing, handler)
                .instrument(span)
                .await;
            return Ok(());
        }
        Launch::Listeners(listeners) => listeners,
    };
    if let Some(l) = listeners.iter().find(|l| l.tls)
        && tls.is_none()
    {
        return Err(no_certificate(&l.name));
    }

    let limiter = Arc::new(Limiter {
        counts: Mutex::new(Counts::default()),
        max_total: limits.connections,
        max_per_ip: limits.connections_per_ip,
    });
    // Every session holds a sender; when the last is dropped, recv() says
    // all sessions have ended.
    let (alive, mut all_done) = mpsc::channel::<()>(1);
    let mut accept_tasks = Vec::with_capacity(listeners.len());
    for listener in listeners {
        let socket = tokio::net::TcpListener::from_std(listener.socket)?;
        tracing::info!(
            "listening on {} ({}{})",
            socket
                .local_addr()
                .map_or_else(|_| "?".into(), |a| a.to_string()),
            listener.name,
            if listener.tls { ", implicit TLS" } else { "" }
        );
        let accept = AcceptLoop {
            socket,
            name: listener.name,
            acceptor: if listener.tls { tls.clone() } else { None },
            limiter: limiter.clone(),
            alive: alive.clone(),
            busy_reply,
            timing,
        };
        accept_tasks.push(tokio::spawn(accept.run(handler.clone())));
    }
    drop(alive);

    shutdown.await;
    for task in &accept_tasks {
        task.abort();
    }
    for task in accept_tasks {
        // Aborted on purpose: the error says so and needs no report.
        let _ = task.await;
    }
    let in_flight = limiter.total();
    if in_flight > 0 {
        tracing::info!("waiting up to {SHUTDOWN_GRACE:?} for {in_flight} sessions");
        if timeout(SHUTDOWN_GRACE, all_done.recv()).await.is_err() {
            tracing::warn!(
                "{} sessions still open after {SHUTDOWN_GRACE:?}; leaving them",
                limiter.total()
            );
        }
    }
    Ok(())
}

fn no_certificate(name: &str) -> NetError {
    NetError::Tls(format!(
        "{name} is an implicit-TLS socket but no certificate is loaded (set tls.cert and tls.key, or run `postroom init`)"
    ))
}

#[derive(Clone, Copy)]
struct Timing {
    idle: Duration,
    session: Duration,
}

/// One listening socket's accept loop.
struct AcceptLoop {
    socket: tokio::net::TcpListener,
    name: Arc<str>,
    acceptor: Option<TlsAcceptor>,
    limiter: Arc<Limiter>,
    alive: mpsc::Sender<()>,
    busy_reply: &'static [u8],
    timing: Timing,
}

impl AcceptLoop {
    async fn run<F, Fut>(self, handler: F)
    where
        F: Fn(Connection) -> Fut + Clone + Send + 'static,
        Fut: Future<Output = ()> + Send + 'static,
    {
        loop {
            let (stream, peer) = match self.socket.accept().await {
                Ok(accepted) => accepted,
                Err(e) => {
                    // Out of file descriptors, mostly: retrying at once
                    // would spin, so breathe and let sessions end.
                    tracing::warn!("accept on {}: {e}", self.name);
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                }
            };
            let peer = canonical(peer);
            let slot = match self.limiter.acquire(peer.ip(), self.alive.clone()) {
                Ok(slot) => slot,
                Err(limit) => {
                    tracing::info!(%peer, listener = %self.name, "refused: {limit}");
                    if self.acceptor.is_none() {
                        // Never wait on a client here: one that does not
                        // read would stall every accept. A full socket
                        // buffer just loses the courtesy reply.
                        let _ = stream.try_write(self.busy_reply);
                    }
                    continue;
                }
            };
            let local = stream.local_addr().ok();
            let conn = Connection::with_parts(
                Box::new(stream),
                Some(peer),
                local,
                self.name.clone(),
                self.timing.idle,
            );
            let span = conn_span(&conn);
            let session = run_session(conn, self.acceptor.clone(), self.timing, handler.clone());
            tokio::spawn(
                async move {
                    session.await;
                    drop(slot);
                }
                .instrument(span),
            );
        }
    }
}

fn conn_span(conn: &Connection) -> tracing::Span {
    match conn.peer {
        Some(peer) => tracing::info_span!("conn", conn = %conn.id, %peer),
        None => tracing::info_span!("conn", conn = %conn.id, peer = "local"),
    }
}

/// One session: the implicit-TLS handshake if any, then the handler under
/// the session time limit. Runs inside the connection's span.
async fn run_session<F, Fut>(
    mut conn: Connection,
    acceptor: Option<TlsAcceptor>,
    timing: Timing,
    handler: F,
) where
    F: Fn(Connection) -> Fut,
    Fut: Future<Output = ()>,
{
    tracing::debug!("connected on {}", conn.listener);
    if let Some(acceptor) = acceptor
        && let Err(e) = conn.start_tls(&acceptor).await
    {
        tracing::info!("TLS handshake failed: {e}");
        return;
    }
    if timeout(timing.session, handler(conn)).await.is_err() {
        tracing::info!(
            "session time limit ({:?}) reached; disconnected",
            timing.session
        );
    }
    tracing::debug!("session ended");
}

/// IPv4 clients of a dual-stack socket appear as `::ffff:a.b.c.d`; count
/// and log them as the IPv4 addresses they are.
fn canonical(addr: SocketAddr) -> SocketAddr {
    SocketAddr::new(addr.ip().to_canonical(), addr.port())
}

/// The connection on fd 0/1 in inetd mode.
fn inetd_connection(idle: Duration) -> Result<Connection, NetError> {
    let name: Arc<str> = "inetd".into();
    // A duplicate, so that closing it never closes fd 0 under code that
    // still expects it.
    let fd: OwnedFd = io::stdin().as_fd().try_clone_to_owned()?;
    let file = std::fs::File::from(fd);
    if file.metadata()?.file_type().is_socket() {
        let socket = std::net::TcpStream::from(OwnedFd::from(file));
        // A Unix-domain socket (socat, a test harness) has no IP peer and
        // is served like a pipe below.
        if let Ok(peer) = socket.peer_addr() {
            socket.set_nonblocking(true)?;
            let local = socket.local_addr().ok();
            let stream = tokio::net::TcpStream::from_std(socket)?;
            return Ok(Connection::with_parts(
                Box::new(stream),
                Some(canonical(peer)),
                local,
                name,
                idle,
            ));
        }
    }
    let stdio = tokio::io::join(tokio::io::stdin(), tokio::io::stdout());
    let peer = peer_from_env(|key| std::env::var(key).ok());
    Ok(Connection::with_parts(
        Box::new(stdio),
        peer,
        None,
        name,
        idle,
    ))
}

/// The client's address as a launcher that gives us pipes reports it:
/// `REMOTE_ADDR` (an address, or an IP with `REMOTE_PORT`), or tcpserver's
/// and sslserver's `TCPREMOTEIP` and `TCPREMOTEPORT`. Port 0 when unknown.
fn peer_from_env(get: impl Fn(&str) -> Option<String>) -> Option<SocketAddr> {
    let port = |key: &str| get(key).and_then(|p| p.trim().parse::<u16>().ok());
    if let Some(addr) = get("REMOTE_ADDR") {
        let addr = addr.trim();
        if let Ok(sa) = addr.parse::<SocketAddr>() {
            return Some(canonical(sa));
        }
        if let Ok(ip) = addr.parse::<IpAddr>() {
            return Some(canonical(SocketAddr::new(
                ip,
                port("REMOTE_PORT").unwrap_or(0),
            )));
        }
    }
    let ip = get("TCPREMOTEIP")?.trim().parse::<IpAddr>().ok()?;
    Some(canonical(SocketAddr::new(
        ip,
        port("TCPREMOTEPORT").unwrap_or(0),
    )))
}

/// Connections open now, in total and per IP.
struct Limiter {
    counts: Mutex<Counts>,
    max_total: usize,
    max_per_ip: usize,
}

#[derive(Default)]
struct Counts {
    total: usize,
    per_ip: HashMap<IpAddr, usize>,
}

/// Which limit refused a connection, for the log.
#[derive(Debug, thiserror::Error)]
enum Refused {
    #[error("limits.connections reached ({0} open)")]
    Total(usize),
    #[error("limits.connections_per_ip reached ({0} open from this address)")]
    PerIp(usize),
}

impl Limiter {
    fn counts(&self) -> std::sync::MutexGuard<'_, Counts> {
        // A panic while holding this lock cannot leave the counts
        // half-updated (each update is one statement), so go on.
        self.counts
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    fn acquire(self: &Arc<Self>, ip: IpAddr, alive: mpsc::Sender<()>) -> Result<Slot, Refused> {
        let mut counts = self.counts();
        if counts.total >= self.max_total {
            return Err(Refused::Total(counts.total));
        }
        let from_ip = counts.per_ip.entry(ip).or_insert(0);
        if *from_ip >= self.max_per_ip {
            return Err(Refused::PerIp(*from_ip));
        }
        *from_ip += 1;
        counts.total += 1;
        Ok(Slot {
            limiter: self.clone(),
            ip,
            _alive: alive,
        })
    }

    fn total(&self) -> usize {
        self.counts().total
    }
}

/// One counted connection; dropping it frees its place.
struct Slot {
    limiter: Arc<Limiter>,
    ip: IpAddr,
    _alive: mpsc::Sender<()>,
}

impl Drop for Slot {
    fn drop(&mut self) {
        let mut counts = self.limiter.counts();
        counts.total = counts.total.saturating_sub(1);
        if let Some(n) = counts.per_ip.get_mut(&self.ip) {
            *n = n.saturating_sub(1);
            if *n == 0 {
                counts.per_ip.remove(&self.ip);
            }
        }
    }
}

/// Anything a connection can run over: TCP, TLS over TCP, stdin/stdout.
trait Transport: AsyncRead + AsyncWrite + Unpin + Send {}
impl<T: AsyncRead + AsyncWrite + Unpin + Send> Transport for T {}

/// One client connection: line reading with limits, buffered replies,
/// STARTTLS. Every read and write waits at most the idle timeout.
pub struct Connection {
    id: String,
    peer: Option<SocketAddr>,
    local: Option<SocketAddr>,
    listener: Arc<str>,
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
    line: Vec<u8>,
    /// Inside an over-long line, throwing bytes away up to its LF.
    discarding: bool,
    /// The last byte read was a CR: after an over-long line, whether it
    /// ended with CRLF (SMTP DATA needs to know, postroom-tree(5), LIMITS AND SECURITY).
    after_cr: bool,
    /// The first bytes of the last over-long line, so a protocol can tell
    /// what it was (an over-long `BDAT` line must end an SMTP session).
    long_line_start: [u8; 8],
    out: Vec<u8>,
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

    fn with_parts(
        io: Box<dyn Transport>,
        peer: Option<SocketAddr>,
        local: Option<SocketAddr>,
        listener: Arc<str>,
        idle: Duration,
    ) -> Connection {
        Connection {
            id: format!("{:08x}", rand::random::<u32>()),
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
            out: Vec::new(),
        }
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
    /// ever held), so the next call reads the next line. EOF, even in
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

/// `TLSv1.3 with cipher TLS13_AES_128_GCM_SHA256`, as Postfix and others
/// write it in Received headers.
/// The first 8 bytes of a line held in two pieces (zeros after its end).
fn first_bytes(held: &[u8], rest: &[u8]) -> [u8; 8] {
    let mut start = [0u8; 8];
    for (slot, b) in start.iter_mut().zip(held.iter().chain(rest)) {
        *slot = *b;
    }
    start
}

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

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::net::{TcpListener, TcpStream};

    const IDLE: Duration = Duration::from_secs(5);

    /// A server-side Connection and the client's end, over loopback TCP.
    async fn pair(idle: Duration) -> (Connection, TcpStream) {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let client = TcpStream::connect(listener.local_addr().unwrap())
            .await
            .unwrap();
        let (server, peer) = listener.accept().await.unwrap();
        let local = server.local_addr().ok();
        let conn = Connection::with_parts(Box::new(server), Some(peer), local, "test".into(), idle);
        (conn, client)
    }

    fn tls_fixture() -> (tempfile::TempDir, TlsAcceptor, tokio_rustls::TlsConnector) {
        let dir = tempfile::tempdir().unwrap();
        let cert = dir.path().join("cert.pem");
        let key = dir.path().join("key.pem");
        crate::net::tls::generate_self_signed("mx.example.test", &cert, &key).unwrap();
        let acceptor = TlsAcceptor::from(crate::net::tls::server_config(&cert, &key).unwrap());
        let connector =
            tokio_rustls::TlsConnector::from(crate::net::tls::tests::client_trusting(&cert));
        (dir, acceptor, connector)
    }

    #[tokio::test]
    async fn lines_end_at_lf_and_keep_their_bytes() {
        let (mut conn, mut client) = pair(IDLE).await;
        client
            .write_all(b"EHLO a\r\nNOOP\nbare\rcr\r\nlast")
            .await
            .unwrap();
        client.shutdown().await.unwrap();
        assert_eq!(conn.read_line(512).await.unwrap(), b"EHLO a\r\n");
        assert_eq!(conn.read_line(512).await.unwrap(), b"NOOP\n");
        assert_eq!(conn.read_line(512).await.unwrap(), b"bare\rcr\r\n");
        // A partial line at EOF is not a line.
        assert!(matches!(conn.read_line(512).await, Err(NetError::Closed)));
        assert!(conn.is_secure(), "loopback peer");
        assert_eq!(conn.listener_name(), "test");
        assert_eq!(conn.id().len(), 8);
    }

    #[tokio::test]
    async fn long_line_is_discarded_and_the_next_one_read() {
        let (mut conn, mut client) = pair(IDLE).await;
        let long = vec![b'x'; 3 * READ_BUFFER + 17];
        let writer = tokio::spawn(async move {
            client.write_all(&long).await.unwrap();
            client.write_all(b"\r\nQUIT\r\n").await.unwrap();
            client
        });
        assert!(matches!(
            conn.read_line(1000).await,
            Err(NetError::LineTooLong)
        ));
        assert!(conn.line.capacity() <= 1000, "held at most max bytes");
        assert_eq!(conn.read_line(1000).await.unwrap(), b"QUIT\r\n");
        drop(writer.await.unwrap());

        // Exactly max bytes, LF included, is allowed; one more is not.
        let (mut conn, mut client) = pair(IDLE).await;
        client.write_all(b"abc\r\nabcd\r\nok\n").await.unwrap();
        assert_eq!(conn.read_line(5).await.unwrap(), b"abc\r\n");
        assert!(matches!(
            conn.read_line(5).await,
            Err(NetError::LineTooLong)
        ));
        assert_eq!(conn.read_line(5).await.unwrap(), b"ok\n");
    }

    #[tokio::test]
    async fn a_long_line_tells_whether_it_ended_with_crlf() {
        let (mut conn, mut client) = pair(IDLE).await;
        let writer = tokio::spawn(async move {
            // The CR of the first line ends one read, its LF starts the next.
            client.write_all(&vec![b'x'; 2000]).await.unwrap();
            client.write_all(b"\r").await.unwrap();
            tokio::time::sleep(Duration::from_millis(50)).await;
            client.write_all(b"\n").await.unwrap();
            client.write_all(&vec![b'y'; 2000]).await.unwrap();
            client.write_all(b"\n.\r\n").await.unwrap();
            client
        });
        assert!(matches!(
            conn.read_line(1000).await,
            Err(NetError::LineTooLong)
        ));
        assert!(conn.long_line_ended_with_crlf());
        assert!(matches!(
            conn.read_line(1000).await,
            Err(NetError::LineTooLong)
        ));
        assert!(!conn.long_line_ended_with_crlf(), "a bare LF");
        assert_eq!(conn.read_line(1000).await.unwrap(), b".\r\n");
        drop(writer.await.unwrap());
    }

    #[tokio::test]
    async fn silent_client_times_out() {
        let (mut conn, _client) = pair(Duration::from_millis(100)).await;
        let started = std::time::Instant::now();
        assert!(matches!(conn.read_line(512).await, Err(NetError::Timeout)));
        assert!(started.elapsed() >= Duration::from_millis(100));
    }

    #[tokio::test]
    async fn client_that_never_reads_is_cut_off() {
        let (mut conn, _client) = pair(Duration::from_millis(200)).await;
        // Far more than the socket buffers on both sides can hold.
        let block = vec![b'y'; 256 * 1024];
        let mut result = Ok(());
        for _ in 0..400 {
            result = conn.write_bulk(&block).await;
            if result.is_err() {
                break;
            }
        }
        assert!(matches!(result, Err(NetError::Timeout)), "{result:?}");
        assert!(conn.out.len() <= OUTPUT_HIGH_WATER);
    }

    #[tokio::test]
    async fn read_exact_streams_a_chunk() {
        let (mut conn, mut client) = pair(IDLE).await;
        let body: Vec<u8> = (0..20_000u32).map(|i| (i % 251) as u8).collect();
        let mut sent = b"BDAT 20000 LAST\r\n".to_vec();
        sent.extend_from_slice(&body);
        sent.extend_from_slice(b"QUIT\r\n");
        let writer = tokio::spawn(async move {
            client.write_all(&sent).await.unwrap();
            client
        });
        assert_eq!(conn.read_line(512).await.unwrap(), b"BDAT 20000 LAST\r\n");
        let mut got = Vec::new();
        conn.read_exact_into(20_000, &mut got).await.unwrap();
        assert_eq!(got, body);
        assert_eq!(conn.read_line(512).await.unwrap(), b"QUIT\r\n");
        assert!(!conn.has_buffered_input());
        let client = writer.await.unwrap();
        drop(client);
        let mut more = Vec::new();
        assert!(matches!(
            conn.read_exact_into(1, &mut more).await,
            Err(NetError::Closed)
        ));
    }

    #[tokio::test]
    async fn replies_are_buffered_until_flush() {
        let (mut conn, mut client) = pair(IDLE).await;
        conn.write(b"250-first\r\n");
        conn.write(b"250 second\r\n");
        conn.flush().await.unwrap();
        conn.shutdown().await.unwrap();
        let mut got = Vec::new();
        client.read_to_end(&mut got).await.unwrap();
        assert_eq!(got, b"250-first\r\n250 second\r\n");
    }

    /// CVE-2011-0411: plaintext sent after STARTTLS in the same packet must
    /// never be read as if it had come over TLS.
    #[tokio::test]
    async fn starttls_discards_injected_plaintext() {
        let (_dir, acceptor, connector) = tls_fixture();
        let (mut conn, mut client) = pair(IDLE).await;
        let client_side = tokio::spawn(async move {
            client
                .write_all(b"STARTTLS\r\nMAIL FROM:<evil@x>\r\n")
                .await
                .unwrap();
            let mut reply = [0u8; 21];
            client.read_exact(&mut reply).await.unwrap();
            assert_eq!(&reply, b"220 2.0.0 Ready now\r\n");
            let name = rustls_pki_types::ServerName::try_from("localhost").unwrap();
            let mut tls = connector.connect(name, client).await.unwrap();
            tls.write_all(b"EHLO client.test\r\n").await.unwrap();
            tls.flush().await.unwrap();
            let mut line = Vec::new();
            tls.read_to_end(&mut line).await.unwrap();
            line
        });
        assert_eq!(conn.read_line(512).await.unwrap(), b"STARTTLS\r\n");
        // Both commands came in one segment: the injected one is buffered.
        // (On loopback one write arrives in one read; if it ever did not,
        // the injected bytes would break the handshake instead.)
        assert!(conn.has_buffered_input());
        conn.write(b"220 2.0.0 Ready now\r\n");
        conn.start_tls(&acceptor).await.unwrap();
        assert!(!conn.has_buffered_input());
        assert!(conn.is_tls());
        let info = conn.tls_info().unwrap();
        assert!(info.starts_with("TLSv1.3 with cipher TLS13_"), "{info}");
        assert_eq!(conn.read_line(512).await.unwrap(), b"EHLO client.test\r\n");
        assert!(matches!(
            conn.start_tls(&acceptor).await,
            Err(NetError::Tls(_))
        ));
        conn.write(b"250 ok\r\n");
        conn.shutdown().await.unwrap();
        assert_eq!(client_side.await.unwrap(), b"250 ok\r\n");
    }

    fn test_limits(per_ip: usize) -> Limits {
        Limits {
            connections_per_ip: per_ip,
            idle_timeout: IDLE,
            ..Limits::default()
        }
    }

    /// A handler that greets, then echoes lines until QUIT or EOF.
    async fn echo(mut conn: Connection) {
        conn.write(b"hello ");
        conn.write(conn.listener_name().as_bytes().to_vec().as_slice());
        conn.write(b"\r\n");
        if conn.flush().await.is_err() {
            return;
        }
        while let Ok(line) = conn.read_line(512).await {
            if line == b"QUIT\r\n" {
                break;
            }
            conn.write(&line);
            if conn.flush().await.is_err() {
                return;
            }
        }
    }

    async fn read_reply(stream: &mut TcpStream) -> Vec<u8> {
        let mut got = Vec::new();
        let mut byte = [0u8; 1];
        while !got.ends_with(b"\n") {
            if stream.read(&mut byte).await.unwrap() == 0 {
                break;
            }
            got.push(byte[0]);
        }
        got
    }

    #[tokio::test]
    async fn serve_refuses_over_the_per_ip_limit() {
        let addr: SocketAddr = "127.0.0.1:0".parse().unwrap();
        let launch = Launch::from_args(&[addr], &[]).unwrap();
        let bound = launch.local_addrs()[0];
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let server = tokio::spawn(async move {
            serve_until(
                launch,
                &test_limits(1),
                None,
                b"421 4.7.0 too many connections\r\n",
                echo,
                async {
                    let _ = stopped.await;
                },
            )
            .await
        });

        let mut first = TcpStream::connect(bound).await.unwrap();
        let greeting = read_reply(&mut first).await;
        assert_eq!(greeting, format!("hello {bound}\r\n").as_bytes());

        let mut second = TcpStream::connect(bound).await.unwrap();
        let mut refused = Vec::new();
        second.read_to_end(&mut refused).await.unwrap();
        assert_eq!(refused, b"421 4.7.0 too many connections\r\n");

        // The first session is unaffected, and once it ends its place is free.
        first.write_all(b"ping\r\n").await.unwrap();
        assert_eq!(read_reply(&mut first).await, b"ping\r\n");
        first.write_all(b"QUIT\r\n").await.unwrap();
        let mut rest = Vec::new();
        first.read_to_end(&mut rest).await.unwrap();
        let mut third = TcpStream::connect(bound).await.unwrap();
        assert_eq!(read_reply(&mut third).await, greeting);

        // Stopping waits for the open session, which ends when its client does.
        stop.send(()).unwrap();
        tokio::time::sleep(Duration::from_millis(50)).await;
        assert!(!server.is_finished(), "waits for the session in progress");
        drop(third);
        let result = timeout(Duration::from_secs(5), server).await.unwrap();
        result.unwrap().unwrap();
        assert!(TcpStream::connect(bound).await.is_err(), "listener closed");
    }

    #[tokio::test]
    async fn serve_implicit_tls_listener() {
        let (_dir, acceptor, connector) = tls_fixture();
        let addr: SocketAddr = "127.0.0.1:0".parse().unwrap();
        let launch = Launch::from_args(&[], &[addr]).unwrap();
        let bound = launch.local_addrs()[0];
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let server = tokio::spawn(async move {
            serve_until(
                launch,
                &test_limits(10),
                Some(acceptor),
                b"421 busy\r\n",
                |mut conn: Connection| async move {
                    let info = conn.tls_info().unwrap_or_default();
                    conn.write(format!("* OK {info}\r\n").as_bytes());
                    let _ = conn.shutdown().await;
                },
                async {
                    let _ = stopped.await;
                },
            )
            .await
        });
        let tcp = TcpStream::connect(bound).await.unwrap();
        let name = rustls_pki_types::ServerName::try_from("127.0.0.1").unwrap();
        let mut tls = connector.connect(name, tcp).await.unwrap();
        let mut got = Vec::new();
        tls.read_to_end(&mut got).await.unwrap();
        let got = String::from_utf8(got).unwrap();
        assert!(got.starts_with("* OK TLSv1.3 with cipher"), "{got}");
        stop.send(()).unwrap();
        server.await.unwrap().unwrap();

        // Implicit TLS without a certificate is a setup error.
        let launch = Launch::from_args(&[], &[addr]).unwrap();
        let e = serve_until(launch, &test_limits(1), None, b"", echo, async {})
            .await
            .unwrap_err();
        assert!(e.to_string().contains("postroom init"), "{e}");
    }

    #[test]
    fn bind_error_says_address_in_use() {
        let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = taken.local_addr().unwrap();
        let e = Launch::from_args(&[addr], &[]).unwrap_err().to_string();
        assert!(
            e.contains("already in use") && e.contains(&addr.to_string()),
            "{e}"
        );
    }

    #[test]
    fn implicit_tls_socket_names() {
        for name in [
            "smtps",
            "submissions",
            "imaps",
            "pop3s",
            "postroom-imaps.socket",
            "IMAPS",
            "submission-tls",
        ] {
            assert!(is_implicit_tls_name(name), "{name}");
        }
        for name in [
            "smtp",
            "submission",
            "imap",
            "pop3",
            "postroom-smtp.socket",
            "fd3",
            "s",
        ] {
            assert!(!is_implicit_tls_name(name), "{name}");
        }
    }

    #[test]
    fn peer_from_launcher_environment() {
        let env = |pairs: &'static [(&'static str, &'static str)]| {
            move |key: &str| {
                pairs
                    .iter()
                    .find(|(k, _)| *k == key)
                    .map(|(_, v)| v.to_string())
            }
        };
        assert_eq!(peer_from_env(env(&[])), None);
        assert_eq!(
            peer_from_env(env(&[
                ("TCPREMOTEIP", "192.0.2.7"),
                ("TCPREMOTEPORT", "4711")
            ])),
            Some("192.0.2.7:4711".parse().unwrap())
        );
        assert_eq!(
            peer_from_env(env(&[("REMOTE_ADDR", "2001:db8::1")])),
            Some("[2001:db8::1]:0".parse().unwrap())
        );
        assert_eq!(
            peer_from_env(env(&[
                ("REMOTE_ADDR", "::ffff:192.0.2.9"),
                ("REMOTE_PORT", "25")
            ])),
            Some("192.0.2.9:25".parse().unwrap())
        );
        assert_eq!(peer_from_env(env(&[("TCPREMOTEIP", "garbage")])), None);
    }

    #[test]
    fn plaintext_rule() {
        let (a, _b) = tokio::io::duplex(64);
        let remote = Connection::new(a, Some("192.0.2.1:1000".parse().unwrap()), "x", IDLE);
        assert!(!remote.is_secure());
        let (a, _b) = tokio::io::duplex(64);
        let mapped = Connection::new(a, Some("[::ffff:127.0.0.1]:1".parse().unwrap()), "x", IDLE);
        assert!(mapped.is_secure());
        let (a, _b) = tokio::io::duplex(64);
        let pipe = Connection::new(a, None, "x", IDLE);
        assert!(!pipe.is_secure(), "a pipe that names no peer");
        assert!(pipe.may_send_password(Plaintext::Always));
        assert!(!mapped.may_send_password(Plaintext::Never));
        assert!(!remote.may_send_password(Plaintext::Loopback));
    }
}
