//! The accept loop: a session per connection under the limits (in all,
//! per address, idle, session time, TLS handshake), each in its own
//! `conn=… peer=…` span, and a graceful stop on SIGTERM.

use std::collections::HashMap;
use std::future::Future;
use std::io;
use std::net::{IpAddr, SocketAddr};
use std::os::fd::{AsFd, OwnedFd};
use std::os::unix::fs::FileTypeExt;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::sync::mpsc;
use tokio::time::timeout;
use tokio_rustls::TlsAcceptor;
use tracing::Instrument;

use super::{Connection, Launch, NetError, SHUTDOWN_GRACE};
use crate::config::Limits;

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
pub(super) async fn serve_until<F, Fut>(
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
pub(super) fn peer_from_env(get: impl Fn(&str) -> Option<String>) -> Option<SocketAddr> {
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
