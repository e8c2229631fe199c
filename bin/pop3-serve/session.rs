//! One POP3 session: the command table of RFC 1939 with CAPA (RFC 2449),
//! STLS (RFC 2595) and AUTH PLAIN (RFC 5034).
//!
//! States, as RFC 1939 names them: AUTHORIZATION until USER/PASS or AUTH
//! succeeds, then TRANSACTION over the snapshot taken at login
//! (`store::mailbox::maildrop`), then UPDATE at QUIT, which removes what
//! DELE marked. A session that ends any other way (the client hangs up,
//! goes idle, runs past `limits.session_timeout`) removes nothing.
//!
//! Policy: the access file's IP rules at connect; passwords only where
//! `auth.plaintext` allows them (TLS or loopback by default); failed logins wait
//! before the answer (`authlimit`, counted per address and account across
//! processes) and the third in a session ends it; `limits.errors` unknown,
//! malformed, over-long or out-of-state commands end it too.
//!
//! Replies are buffered and sent when the client has nothing more in
//! flight (RFC 2449 PIPELINING).

use std::io::Read;
use std::sync::Arc;

use postroom::config::login::Service;
use postroom::directory::authlimit::{AuthLimit, CheckError};
use postroom::directory::users;
use postroom::net::{Connection, NetError};
use postroom::proto::pop3::{self, Command, MessageNumber, ParseError, Password, Transmit};
use postroom::store::mailbox::maildrop::Maildrop;

/// Failed logins before the session is dropped.
const AUTH_FAILURES_MAX: u32 = 3;
/// Bytes of a message file read at a time by RETR and TOP.
const READ_CHUNK: usize = 64 * 1024;

/// What every session of this process shares.
pub use postroom::net::server::LoginShared as Shared;

enum State {
    /// Before login; USER's name waits here for PASS.
    Authorization { user: Option<String> },
    /// Logged in, over the snapshot taken at login.
    Transaction { login: String, maildrop: Maildrop },
}

/// Whether the session goes on after a command.
enum Next {
    Continue,
    Quit,
}

struct Session {
    shared: Arc<Shared>,
    conn: Connection,
    state: State,
    errors: usize,
    auth_failures: u32,
    retrieved: usize,
}

pub async fn run(shared: Arc<Shared>, conn: Connection) {
    let mut session = Session {
        shared,
        conn,
        state: State::Authorization { user: None },
        errors: 0,
        auth_failures: 0,
        retrieved: 0,
    };
    if !session.shared.files.admits(session.conn.peer()) {
        tracing::info!("denied by the access file");
        session.conn.write(b"-ERR [SYS/PERM] access denied\r\n");
        let _ = session.conn.flush().await;
        return;
    }
    let greeting = format!("+OK {}\r\n", session.shared.config.pop3.greeting);
    session.conn.write(greeting.as_bytes());
    if let Err(e) = session.serve().await {
        tracing::info!("session ended: {e}");
    }
    if let State::Transaction { login, .. } = &session.state {
        tracing::info!(user = %login, retrieved = session.retrieved, "ended without QUIT: nothing deleted");
    }
}

impl Session {
    fn ok(&mut self, text: &str) {
        self.conn.write(format!("+OK {text}\r\n").as_bytes());
    }

    /// A refusal that is not the client's fault (a message gone, a login
    /// that failed): does not count toward `limits.errors`.
    fn err(&mut self, text: &str) {
        self.conn.write(format!("-ERR {text}\r\n").as_bytes());
    }

    /// A refusal for a command that should not have been sent.
    fn error(&mut self, text: &str) {
        self.errors += 1;
        self.err(text);
    }

    async fn serve(&mut self) -> Result<(), NetError> {
        let max = self.shared.config.limits.line_length;
        loop {
            if !self.conn.has_buffered_input() {
                self.conn.flush().await?;
            }
            let line = match self.conn.read_line(max).await {
                Ok(line) => line,
                Err(NetError::LineTooLong) => {
                    self.error(&format!("line too long (at most {max} octets)"));
                    if self.too_many_errors().await? {
                        return Ok(());
                    }
                    continue;
                }
                Err(NetError::Timeout) => {
                    self.err("idle too long, closing; nothing deleted");
                    return self.conn.flush().await;
                }
                Err(e) => return Err(e),
            };
            // Boxed: a command's state (RETR's buffers, AUTH) lives on the
            // heap only while it runs, so idle sessions stay small.
            let next = Box::pin(self.command(&line)).await?;
            if matches!(next, Next::Quit) || self.too_many_errors().await? {
                return self.conn.flush().await;
            }
        }
    }

    async fn too_many_errors(&mut self) -> Result<bool, NetError> {
        if self.errors < self.shared.config.limits.errors {
            return Ok(false);
        }
        self.err("too many errors, closing");
        self.conn.flush().await?;
        Ok(true)
    }

    async fn command(&mut self, line: &[u8]) -> Result<Next, NetError> {
        let command = match Command::parse(line) {
            Ok(command) => command,
            // A number that names nothing is like one past the end: not
            // a protocol error (RFC 1939 answers both with -ERR).
            Err(ParseError::NoSuchMessage) => {
                self.err("no such message");
                return Ok(Next::Continue);
            }
            Err(e) => {
                self.error(&e.to_string());
                return Ok(Next::Continue);
            }
        };
        let authorized = matches!(self.state, State::Transaction { .. });
        match command {
            Command::Capa => self.capa(),
            Command::Quit => return self.quit().await,
            Command::Stls if !authorized => return self.stls().await.map(|()| Next::Continue),
            Command::User(name) if !authorized => self.user(name),
            Command::Pass(password) if !authorized => return self.pass(password).await,
            Command::Auth { mechanism, initial } if !authorized => {
                return self.auth(mechanism, initial).await;
            }
            Command::Apop if !authorized => self.error(
                "APOP is not supported: passwords are stored hashed; use STLS and USER/PASS or AUTH PLAIN",
            ),
            Command::Noop if authorized => self.ok("nothing happened"),
            Command::Stat
            | Command::List(_)
            | Command::Retr(_)
            | Command::Dele(_)
            | Command::Rset
            | Command::Top(..)
            | Command::Uidl(_)
                if authorized =>
            {
                return self.transaction(command).await;
            }
            other => {
                let state = if authorized {
                    "after login"
                } else {
                    "before login"
                };
                self.error(&format!("{} is not valid {state}", other.name()));
            }
        }
        Ok(Next::Continue)
    }

    /// Passwords may cross this connection: TLS, or what `auth.plaintext`
    /// allows.
    fn may_authenticate(&self) -> bool {
        self.conn
            .may_send_password(self.shared.config.auth.plaintext_rule())
    }

    /// RFC 2449 §5; what is offered depends on the state and on TLS.
    fn capa(&mut self) {
        let mut caps = vec!["TOP", "UIDL", "RESP-CODES", "AUTH-RESP-CODE", "PIPELINING"];
        if let State::Authorization { .. } = self.state {
            if self.conn.may_starttls(self.shared.tls.as_ref()) {
                caps.push("STLS");
            }
            if self.may_authenticate() {
                caps.extend(["USER", "SASL PLAIN"]);
            }
        }
        caps.push("IMPLEMENTATION postroom");
        let mut text = String::from("+OK capability list follows\r\n");
        for cap in caps {
            text.push_str(cap);
            text.push_str("\r\n");
        }
        text.push_str(".\r\n");
        self.conn.write(text.as_bytes());
    }

    async fn stls(&mut self) -> Result<(), NetError> {
        let acceptor = match self.conn.starttls_acceptor(self.shared.tls.as_ref()) {
            Ok(acceptor) => acceptor,
            Err(why) => {
                self.error(why);
                return Ok(());
            }
        };
        self.ok("begin TLS negotiation");
        // start_tls sends the reply, then discards anything the client sent
        // after STLS in the clear (CVE-2011-0411 class).
        self.conn.start_tls(&acceptor).await?;
        // RFC 2595 §4: nothing said before TLS counts after it.
        self.state = State::Authorization { user: None };
        Ok(())
    }

    fn user(&mut self, name: String) {
        if !self.may_authenticate() {
            self.error("[AUTH] passwords only over TLS here: use STLS first");
            return;
        }
        // The same answer for every name: no guessing who has an account.
        self.state = State::Authorization { user: Some(name) };
        self.ok("send PASS");
    }

    async fn pass(&mut self, password: Password) -> Result<Next, NetError> {
        let State::Authorization { user } = &mut self.state else {
            return Ok(Next::Continue);
        };
        let Some(login) = user.take() else {
            self.error("give USER first");
            return Ok(Next::Continue);
        };
        self.login(login, password).await
    }

    /// RFC 5034: PLAIN only, with an initial response or after "+ ".
    async fn auth(
        &mut self,
        mechanism: Option<String>,
        initial: Option<String>,
    ) -> Result<Next, NetError> {
        let Some(mechanism) = mechanism else {
            // The pre-RFC 5034 way to ask for mechanisms.
            let list = if self.may_authenticate() {
                "PLAIN\r\n"
            } else {
                ""
            };
            self.conn
                .write(format!("+OK SASL mechanisms follow\r\n{list}.\r\n").as_bytes());
            return Ok(Next::Continue);
        };
        if mechanism != "PLAIN" {
            self.error("unsupported mechanism: use PLAIN");
            return Ok(Next::Continue);
        }
        if !self.may_authenticate() {
            self.error("[AUTH] passwords only over TLS here: use STLS first");
            return Ok(Next::Continue);
        }
        let response = match initial {
            // RFC 5034 §4: "=" is an empty initial response.
            Some(r) if r == "=" => String::new(),
            Some(r) => r,
            None => {
                self.conn.write(b"+ \r\n");
                self.conn.flush().await?;
                let line = match self
                    .conn
                    .read_line(self.shared.config.limits.line_length)
                    .await
                {
                    Ok(line) => line,
                    Err(NetError::LineTooLong) => {
                        self.error("[AUTH] response too long");
                        return Ok(Next::Continue);
                    }
                    Err(e) => return Err(e),
                };
                let line = String::from_utf8_lossy(pop3::strip_line_end(&line)).into_owned();
                if line == "*" {
                    self.err("authentication cancelled");
                    return Ok(Next::Continue);
                }
                line
            }
        };
        let Some((login, password)) = pop3::decode_plain(&response) else {
            self.error("[AUTH] malformed PLAIN response");
            return Ok(Next::Continue);
        };
        self.login(login, password).await
    }

    /// Checks a password (after the wait earlier failures earned), then
    /// takes the mailbox snapshot.
    async fn login(&mut self, login: String, password: Password) -> Result<Next, NetError> {
        let ip = self.conn.peer().map(|p| p.ip());
        let tried = login.clone();
        let checked = match AuthLimit::from_config(&self.shared.config)
            .check_password(
                Service::Pop3,
                ip,
                self.shared.files.users(),
                login,
                password.0,
            )
            .await
        {
            Err(CheckError::Refused(why)) => {
                tracing::info!(login = ?tried, %why, "login refused by the after-login hook");
                self.err(&format!("[AUTH] {why}"));
                return Ok(Next::Continue);
            }
            other => other.map_err(|e| format!("password check failed: {e}")),
        };
        // The snapshot is taken after the check, outside the permits that
        // bound password checks: a big mailbox must not hold one.
        let opened = match checked {
            Ok(Some(user)) => {
                let maildir = users::maildir_of(&self.shared.config, &user);
                tokio::task::spawn_blocking(move || {
                    Maildrop::open(maildir)
                        .map(|drop| Some((user.address, drop)))
                        .map_err(|e| format!("cannot read the mailbox: {e}"))
                })
                .await
                .unwrap_or_else(|e| Err(format!("cannot read the mailbox: {e}")))
            }
            Ok(None) => Ok(None),
            Err(e) => Err(e),
        };
        match opened {
            Ok(Some((login, maildrop))) => {
                let (count, octets) = maildrop.stat();
                tracing::info!(user = %login, messages = count, octets, "logged in");
                self.ok(&format!("{login} has {count} messages ({octets} octets)"));
                self.state = State::Transaction { login, maildrop };
            }
            Ok(None) => {
                self.auth_failures += 1;
                tracing::info!(login = ?tried, failures = self.auth_failures, "authentication failed");
                self.err("[AUTH] authentication failed");
                if self.auth_failures >= AUTH_FAILURES_MAX {
                    self.err("too many failed logins, closing");
                    return Ok(Next::Quit);
                }
            }
            Err(e) => {
                tracing::error!("{e}");
                self.err("[SYS/TEMP] cannot open the mailbox now, try again later");
            }
        }
        Ok(Next::Continue)
    }

    /// The TRANSACTION commands (RFC 1939 §5, TOP and UIDL from §7).
    async fn transaction(&mut self, command: Command) -> Result<Next, NetError> {
        let State::Transaction { maildrop, .. } = &mut self.state else {
            return Ok(Next::Continue);
        };
        match command {
            Command::Stat => {
                let (count, octets) = maildrop.stat();
                self.ok(&format!("{count} {octets}"));
            }
            Command::List(Some(n)) => match maildrop.get(n) {
                Ok(entry) => {
                    let size = entry.size;
                    self.ok(&format!("{n} {size}"));
                }
                Err(missing) => self.err(&missing.to_string()),
            },
            Command::Uidl(Some(n)) => match maildrop.get(n) {
                Ok(entry) => {
                    let text = format!("{n} {}", pop3::uidl(entry.file.base()));
                    self.ok(&text);
                }
                Err(missing) => self.err(&missing.to_string()),
            },
            Command::List(None) | Command::Uidl(None) => {
                let uidl = matches!(command, Command::Uidl(_));
                let (count, octets) = maildrop.stat();
                let mut text = format!("+OK {count} messages ({octets} octets)\r\n");
                for (n, entry) in maildrop.listed() {
                    if uidl {
                        text.push_str(&format!("{n} {}\r\n", pop3::uidl(entry.file.base())));
                    } else {
                        text.push_str(&format!("{n} {}\r\n", entry.size));
                    }
                    // A 100,000-message list goes out in pieces.
                    if text.len() >= READ_CHUNK {
                        self.conn.write_bulk(text.as_bytes()).await?;
                        text.clear();
                    }
                }
                text.push_str(".\r\n");
                self.conn.write_bulk(text.as_bytes()).await?;
            }
            Command::Retr(n) => self.send(n, None).await?,
            Command::Top(n, lines) => self.send(n, Some(lines)).await?,
            Command::Dele(n) => match maildrop.delete(n) {
                Ok(()) => self.ok(&format!("message {n} deleted")),
                Err(missing) => self.err(&missing.to_string()),
            },
            Command::Rset => {
                maildrop.undelete_all();
                let (count, octets) = maildrop.stat();
                self.ok(&format!("maildrop has {count} messages ({octets} octets)"));
            }
            _ => {}
        }
        Ok(Next::Continue)
    }

    /// RETR or TOP: streams the file a chunk at a time through the
    /// encoder, so a message of any size costs ~1 MiB of buffers. The
    /// file reads block (page-cache reads are short, and a thread hop per
    /// 64 KiB would cost more than it saves).
    async fn send(&mut self, n: MessageNumber, top: Option<u64>) -> Result<(), NetError> {
        let State::Transaction { maildrop, login } = &mut self.state else {
            return Ok(());
        };
        let login = login.clone();
        let opened = match maildrop.get(n) {
            Err(missing) => Err(missing.to_string()),
            Ok(entry) => {
                let size = entry.size;
                match maildrop.open_message(n) {
                    Ok(Some(file)) => Ok((size, file)),
                    Ok(None) => Err(format!("message {n} was removed by another client")),
                    Err(e) => {
                        tracing::error!(user = %login, "cannot open message {n}: {e}");
                        Err("[SYS/TEMP] cannot read the message now, try again later".into())
                    }
                }
            }
        };
        let (size, mut file) = match opened {
            Ok(opened) => opened,
            Err(text) => {
                self.err(&text);
                return Ok(());
            }
        };
        let mut transmit = match top {
            None => Transmit::whole(),
            Some(lines) => Transmit::top(lines),
        };
        let status = match top {
            None => format!("+OK {size} octets\r\n"),
            Some(_) => "+OK top of message follows\r\n".to_string(),
        };
        self.conn.write(status.as_bytes());
        let mut buf = vec![0u8; READ_CHUNK];
        let mut out = Vec::with_capacity(READ_CHUNK + READ_CHUNK / 2);
        while !transmit.is_done() {
            let read = match file.read(&mut buf) {
                Ok(0) => break,
                Ok(read) => read,
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
                Err(e) => {
                    // The +OK is out: all that is left is to hang up, so
                    // the client does not take a truncated message as whole.
                    tracing::error!(user = %login, "reading message {n}: {e}; disconnecting");
                    return Err(NetError::Io(e));
                }
            };
            transmit.feed(&buf[..read], &mut out);
            self.conn.write_bulk(&out).await?;
            out.clear();
        }
        transmit.finish(&mut out);
        self.conn.write_bulk(&out).await?;
        if top.is_some() {
            return Ok(());
        }
        if transmit.octets() != size {
            // LIST promised another size: a wrong ,W= in the name or a
            // stale size cache. Clients that check will complain.
            tracing::error!(
                user = %login,
                "message {n}: listed as {size} octets but {} sent; check its ,W= or delete postroom-pop3-sizes",
                transmit.octets()
            );
        }
        self.retrieved += 1;
        if let State::Transaction { maildrop, .. } = &mut self.state {
            maildrop.mark_seen(n);
        }
        Ok(())
    }

    async fn quit(&mut self) -> Result<Next, NetError> {
        let State::Transaction { login, maildrop } = &self.state else {
            self.ok("bye");
            return Ok(Next::Quit);
        };
        let login = login.clone();
        let marked = maildrop.deleted_count();
        // The UPDATE state runs to its end on the blocking pool even if
        // the session is cut off meanwhile: a QUIT is never half done.
        let State::Transaction { maildrop, .. } =
            std::mem::replace(&mut self.state, State::Authorization { user: None })
        else {
            return Ok(Next::Quit);
        };
        let removed = tokio::task::spawn_blocking(move || maildrop.update()).await;
        match removed {
            Ok(removed) if removed.failed == 0 => {
                tracing::info!(
                    user = %login,
                    retrieved = self.retrieved,
                    deleted = removed.removed,
                    already_gone = removed.gone,
                    "quit"
                );
                self.ok(&format!("bye ({marked} messages deleted)"));
            }
            Ok(removed) => {
                tracing::error!(user = %login, failed = removed.failed, "some deleted messages were not removed");
                self.err("[SYS/TEMP] some deleted messages were not removed");
            }
            Err(e) => {
                tracing::error!(user = %login, "update failed: {e}");
                self.err("[SYS/TEMP] some deleted messages were not removed");
            }
        }
        Ok(Next::Quit)
    }
}
