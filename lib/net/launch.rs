//! How a server gets its sockets: inetd's descriptor 0, systemd's
//! `LISTEN_FDS`, or its own `--listen` (postroom-tree(5), PROCESSES).

use std::io;
use std::net::SocketAddr;
use std::sync::Arc;

use super::NetError;

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
    pub(super) socket: std::net::TcpListener,
    pub(super) name: Arc<str>,
    pub(super) tls: bool,
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

    /// One plain-text connection on fd 0/1: the launch that needs no TLS
    /// until its client asks (STARTTLS), so loads none before.
    pub fn is_plain_inetd(&self) -> bool {
        matches!(self, Launch::Inetd { tls: false })
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
