//! What every server (smtp-recv, pop3-serve, imap-serve, sieve-serve) does before its
//! first session and after its last, so each `main` only says what is its
//! own: its protocol's session, its limits, its "too busy" reply.
//!
//! The order is the security stance of `postroom-tree(5)`, LIMITS AND
//! SECURITY: the config is read, the sockets are taken (low ports need
//! root), root is left behind, and only then is anything of the tree (the
//! TLS key, users, mailboxes) opened.

use std::convert::Infallible;
use std::fmt::Display;
use std::future::Future;
use std::io;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;

use crate::config::{Config, ConfigError, Limits};
use crate::directory::reloading::LoginFiles;
use crate::net::privileges::{self, PrivilegeError};
use crate::net::tls::ServerTls;
use crate::net::{Connection, Launch, NetError};
use crate::store::fsutil::FileError;

/// The flags every server takes, flattened into its own `clap` arguments.
#[derive(Debug, clap::Args)]
pub struct ServerFlags {
    /// The config file (default /etc/postroom/postroom.toml).
    #[arg(long, env = "POSTROOM_CONFIG", value_name = "FILE")]
    pub config: Option<PathBuf>,
    /// Listen on this address (repeatable); without it, serve one
    /// connection on stdin/stdout or the sockets systemd passes.
    #[arg(long, value_name = "ADDR")]
    pub listen: Vec<SocketAddr>,
    /// Listen with implicit TLS (RFC 8314: SMTPS 465, IMAPS 993, POP3S 995).
    #[arg(long, value_name = "ADDR")]
    pub listen_tls: Vec<SocketAddr>,
    /// In inetd mode, start TLS at once (implicit TLS under inetd).
    #[arg(long)]
    pub inetd_tls: bool,
}

/// glibc's malloc settings for a server that runs for days
/// (`GLIBC_TUNABLES`): fixed thresholds instead of the adaptive ones.
///
/// glibc raises its mmap threshold to the size of any large block freed
/// (up to 32 MiB) and keeps free memory at the top of each heap up to
/// twice that: after one big command (the first SELECT of a 100,000-message
/// folder, a THREAD of it) a standalone imap-serve kept 50-90 MB it no
/// longer used, more the more of its threads had served such commands.
/// With the thresholds fixed at glibc's defaults (128 KiB), large blocks
/// are always mapped on their own and free heap tops always returned:
/// 31 MB above the idle process after the big-folder steps of
/// `postroom-bench imap`, at no measurable cost in time.
pub const MALLOC_TUNABLES: &str =
    "glibc.malloc.trim_threshold=131072:glibc.malloc.mmap_threshold=131072";

/// Starts the program again with [`MALLOC_TUNABLES`] when it will listen
/// (standalone or systemd's `LISTEN_FDS`: one process for every session)
/// and `GLIBC_TUNABLES` is not set: glibc reads them only when a process
/// starts, and `mallopt` is out of reach of code without `unsafe`. The
/// same process (its PID, which `LISTEN_PID` names, and its descriptors)
/// runs the same binary with the same arguments. inetd's one-connection
/// process is left alone: it ends with its session, and its start-up
/// time counts. A `GLIBC_TUNABLES` already set (the administrator's, or
/// ours after the restart) is kept as it is. Call it first thing, before
/// any thread or socket; if the restart fails, the server runs as it is.
pub fn settle_allocator(flags: &ServerFlags) {
    let listening = !flags.listen.is_empty()
        || !flags.listen_tls.is_empty()
        || std::env::var_os("LISTEN_FDS").is_some();
    if !cfg!(all(target_os = "linux", target_env = "gnu"))
        || !listening
        || std::env::var_os("GLIBC_TUNABLES").is_some()
    {
        return;
    }
    use std::os::unix::process::CommandExt;
    let exe = match std::env::current_exe() {
        Ok(exe) => exe,
        Err(e) => {
            tracing::info!("running with glibc's adaptive malloc: cannot find own binary: {e}");
            return;
        }
    };
    let mut args = std::env::args_os();
    let mut command = std::process::Command::new(exe);
    if let Some(name) = args.next() {
        command.arg0(name);
    }
    let e = command
        .args(args)
        .env("GLIBC_TUNABLES", MALLOC_TUNABLES)
        .exec();
    tracing::info!("running with glibc's adaptive malloc: cannot restart with GLIBC_TUNABLES: {e}");
}

/// Why a server could not start.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error(transparent)]
    Config(#[from] ConfigError),
    #[error(transparent)]
    Net(#[from] NetError),
    #[error(transparent)]
    Privileges(#[from] PrivilegeError),
    #[error("cannot start the runtime: {0}")]
    Runtime(io::Error),
    /// The server's own shared state (users, access rules…) did not load.
    #[error("{0}")]
    Setup(String),
}

/// A server with its sockets, without root, ready to serve.
pub struct Server {
    pub config: Config,
    pub tls: Option<ServerTls>,
    launch: Launch,
}

impl Server {
    /// Reads the config, takes the sockets the flags or the launcher give,
    /// leaves root, then loads the TLS certificate: at once, or, for one
    /// plain-text inetd connection, at its first STARTTLS
    /// ([`ServerTls::deferred`]). Without a usable certificate the server
    /// still runs, without STARTTLS or implicit TLS (and so without
    /// plaintext passwords from remote clients); a warning says why.
    pub fn start(flags: &ServerFlags) -> Result<Server, StartError> {
        let config = Config::load(&Config::locate(flags.config.as_deref()))?;
        let launch = Launch::from_flags(&flags.listen, &flags.listen_tls, flags.inetd_tls)?;
        privileges::drop_privileges(&config)?;
        let tls = if launch.is_plain_inetd() {
            ServerTls::deferred(&config)
        } else {
            ServerTls::load(&config)
        };
        let tls = match tls {
            Ok(tls) => Some(tls),
            Err(e) => {
                tracing::warn!("no TLS, so no STARTTLS and no passwords from remote clients: {e}");
                None
            }
        };
        Ok(Server {
            config,
            tls,
            launch,
        })
    }

    /// Builds the shared state with `shared` (inside the runtime, since it
    /// may register with it) and runs `session` for every connection under
    /// `limits`, until the launch ends: one connection under inetd, the
    /// first SIGTERM or SIGINT otherwise. Then the process exits, because a
    /// read of stdin still waiting in tokio's blocking pool would hold the
    /// runtime open after the session is over.
    pub fn serve<S, E, F, Fut>(
        self,
        limits: Limits,
        busy_reply: &'static [u8],
        shared: impl FnOnce(Config, Option<ServerTls>) -> Result<S, E>,
        session: F,
    ) -> Result<Infallible, StartError>
    where
        S: Send + Sync + 'static,
        E: Display,
        F: Fn(Arc<S>, Connection) -> Fut + Clone + Send + 'static,
        Fut: Future<Output = ()> + Send + 'static,
    {
        let runtime = self.launch.runtime().map_err(StartError::Runtime)?;
        let Server {
            config,
            tls,
            launch,
        } = self;
        // What implicit TLS needs now (a plain-text inetd connection needs
        // none, and asking would load a deferred certificate).
        let at_connect = if launch.is_plain_inetd() {
            None
        } else {
            tls.as_ref().and_then(ServerTls::acceptor)
        };
        runtime.block_on(async move {
            let state =
                Arc::new(shared(config, tls).map_err(|e| StartError::Setup(format!("{e:#}")))?);
            crate::net::serve(launch, &limits, at_connect, busy_reply, move |conn| {
                session(state.clone(), conn)
            })
            .await
            .map_err(StartError::from)
        })?;
        std::process::exit(0);
    }
}

/// What every session of a login server shares (pop3-serve and
/// sieve-serve; imap-serve keeps its folders beside the same): the
/// config, TLS for STARTTLS, and the users and access files, reloaded
/// when they change.
pub struct LoginShared {
    pub config: Config,
    pub tls: Option<ServerTls>,
    pub files: LoginFiles,
}

impl LoginShared {
    pub fn new(config: Config, tls: Option<ServerTls>) -> Result<LoginShared, FileError> {
        let files = LoginFiles::load(&config)?;
        Ok(LoginShared { config, tls, files })
    }
}
