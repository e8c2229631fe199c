//! One ManageSieve session (RFC 5804): the greeting with capabilities,
//! STARTTLS, AUTHENTICATE PLAIN, then the script commands over the user's
//! `sieve/` folder (`delivery::sieve::storage`).
//!
//! Policy, as pop3-serve and imap-serve: the access file's IP rules at
//! connect; passwords only where `auth.plaintext` allows them (TLS or
//! loopback by default); failed logins wait before the answer
//! (`authlimit`, counted per address and account across processes) and the
//! third in a session ends it; `limits.errors` malformed or out-of-state
//! commands end it too.
//!
//! Input is bounded: before login a whole command (its lines and literals)
//! is held to [`PRE_AUTH_COMMAND_MAX`], and a literal past it ends the
//! session, since ManageSieve literals are never waited for and their
//! bytes must not be read as commands. After login a literal may be as
//! large as `sieve.max_script_size`; a larger one is read and thrown away
//! (PUTSCRIPT then gets `NO (QUOTA/MAXSIZE)`), up to [`DISCARD_MAX`].

use std::sync::Arc;

use postroom::config::login::Service;
use postroom::delivery::sieve::storage::{self, Scripts, StorageError};
use postroom::delivery::sieve::{EXTENSIONS, Script};
use postroom::directory::authlimit::{AuthLimit, CheckError};
use postroom::directory::users;
use postroom::net::{Connection, NetError};
use postroom::proto::managesieve::{self, Command, ParseError, Status, literal_at_end};

/// Failed logins before the session is dropped.
const AUTH_FAILURES_MAX: u32 = 3;
/// Before login, the most one command may hold in all: AUTHENTICATE with
/// a long name and password fits many times over.
pub const PRE_AUTH_COMMAND_MAX: usize = 8 * 1024;
/// Literals in one command: PUTSCRIPT and RENAMESCRIPT have two strings.
const LITERALS_MAX: usize = 4;
/// The largest literal read and thrown away rather than ending the
/// session: a client that ignored HAVESPACE gets its NO, one that sends
/// more than this is not a client.
const DISCARD_MAX: usize = 64 << 20;

/// What every session of this process shares.
pub use postroom::net::server::LoginShared as Shared;

/// The logged-in user.
struct User {
    login: String,
    scripts: Scripts,
}

/// Whether the session goes on after a command.
enum Next {
    Continue,
    Quit,
}

/// What reading a command gave.
enum Input {
    Command(Vec<u8>),
    /// A literal over `sieve.max_script_size`, read and dropped; the
    /// command's first word says what to answer.
    TooBig(Vec<u8>),
}

struct Session {
    shared: Arc<Shared>,
    conn: Connection,
    user: Option<User>,
    errors: usize,
    auth_failures: u32,
}

pub async fn run(shared: Arc<Shared>, mut conn: Connection) {
    // The end of a line may announce a literal: a line over the limit
    // ends the session as soon as the limit is passed.
    conn.end_long_lines_early();
    let mut session = Session {
        shared,
        conn,
        user: None,
        errors: 0,
        auth_failures: 0,
    };
    if !session.shared.files.admits(session.conn.peer()) {
        tracing::info!("denied by the access file");
        session.reply(Status::Bye, None, "access denied");
        let _ = session.conn.flush().await;
        return;
    }
    session.capabilities();
    session.reply(Status::Ok, None, "postroom ManageSieve ready");
    if let Err(e) = session.serve().await {
        tracing::info!("session ended: {e}");
    }
}

impl Session {
    fn reply(&mut self, status: Status, code: Option<&str>, text: &str) {
        self.conn.write(&managesieve::response(status, code, text));
    }

    /// A refusal for a command that should not have been sent: counts
    /// toward `limits.errors`.
    fn error(&mut self, text: &str) {
        self.errors += 1;
        self.reply(Status::No, None, text);
    }

    fn may_authenticate(&self) -> bool {
        self.conn
            .may_send_password(self.shared.config.auth.plaintext_rule())
    }

    /// RFC 5804 §1.7: one line per capability, then OK (the caller's).
    fn capabilities(&mut self) {
        let mut lines: Vec<(&str, String)> = vec![("IMPLEMENTATION", "postroom".into())];
        let sasl = if self.user.is_none() && self.may_authenticate() {
            "PLAIN"
        } else {
            ""
        };
        lines.push(("SASL", sasl.into()));
        lines.push(("SIEVE", EXTENSIONS.join(" ")));
        if self.user.is_none() && self.conn.may_starttls(self.shared.tls.as_ref()) {
            lines.push(("STARTTLS", String::new()));
        }
        lines.push(("UNAUTHENTICATE", String::new()));
        lines.push(("VERSION", "1.0".into()));
        let mut text = Vec::new();
        for (name, value) in lines {
            text.extend_from_slice(&managesieve::string(name.as_bytes()));
            if !value.is_empty() || name == "SASL" {
                text.push(b' ');
                text.extend_from_slice(&managesieve::string(value.as_bytes()));
            }
            text.extend_from_slice(b"\r\n");
        }
        self.conn.write(&text);
    }

    async fn serve(&mut self) -> Result<(), NetError> {
        loop {
            if !self.conn.has_buffered_input() {
                self.conn.flush().await?;
            }
            let input = match self.read_command().await {
                Ok(input) => input,
                Err(NetError::LineTooLong) => {
                    // Its end may have announced a literal whose bytes
                    // would be read as commands: stop here.
                    let max = self.shared.config.limits.line_length;
                    self.reply(
                        Status::Bye,
                        None,
                        &format!("line too long (at most {max} octets)"),
                    );
                    self.conn.linger_close().await;
                    return Ok(());
                }
                Err(NetError::Timeout) => {
                    self.reply(Status::Bye, None, "idle too long, closing");
                    return self.conn.flush().await;
                }
                Err(e) => return Err(e),
            };
            let next = match input {
                Input::Command(bytes) => match Command::parse(&bytes) {
                    Ok(command) => Box::pin(self.command(command)).await?,
                    Err(e @ ParseError::Unknown(_)) => {
                        self.error(&e.to_string());
                        Next::Continue
                    }
                    Err(ParseError::Syntax(why)) => {
                        self.error(&format!("syntax error: {why}"));
                        Next::Continue
                    }
                },
                Input::TooBig(start) => {
                    self.too_big(&start);
                    Next::Continue
                }
            };
            if matches!(next, Next::Quit) {
                return self.conn.flush().await;
            }
            if self.errors >= self.shared.config.limits.errors {
                self.reply(Status::Bye, None, "too many errors, closing");
                return self.conn.flush().await;
            }
        }
    }

    /// The NO for a command whose literal was over the limit.
    fn too_big(&mut self, start: &[u8]) {
        let word = start.split(|&b| b == b' ').next().unwrap_or_default();
        let max = self.shared.config.sieve.max_script_size;
        if word.eq_ignore_ascii_case(b"PUTSCRIPT") || word.eq_ignore_ascii_case(b"CHECKSCRIPT") {
            self.reply(
                Status::No,
                Some("QUOTA/MAXSIZE"),
                &format!("a script may be at most {max} bytes"),
            );
        } else {
            self.error(&format!("a string may be at most {max} bytes"));
        }
    }

    /// Reads one command: a line, and for each literal it ends with, the
    /// literal's bytes and the next line.
    async fn read_command(&mut self) -> Result<Input, NetError> {
        let pre_auth = self.user.is_none();
        let line_max = self.shared.config.limits.line_length;
        let line_max = if pre_auth {
            line_max.min(PRE_AUTH_COMMAND_MAX)
        } else {
            line_max
        };
        let literal_max = self.shared.config.sieve.max_script_size as usize;
        let mut buf = self.conn.read_line(line_max).await?;
        let mut literals = 0;
        let mut too_big = false;
        loop {
            let Some((size, _sync)) = literal_at_end(&buf) else {
                return Ok(if too_big {
                    Input::TooBig(buf)
                } else {
                    Input::Command(buf)
                });
            };
            literals += 1;
            if pre_auth && buf.len().saturating_add(size) > PRE_AUTH_COMMAND_MAX {
                tracing::info!("literal of {size} bytes before login; disconnecting");
                self.reply(
                    Status::Bye,
                    None,
                    &format!("at most {PRE_AUTH_COMMAND_MAX} bytes a command before login"),
                );
                self.conn.flush().await?;
                return Err(NetError::Closed);
            }
            if literals > LITERALS_MAX || size > DISCARD_MAX {
                tracing::info!("{literals} literals, the last of {size} bytes; disconnecting");
                self.reply(Status::Bye, None, "command too large");
                self.conn.flush().await?;
                return Err(NetError::Closed);
            }
            too_big |= size > literal_max;
            let allowance = pre_auth.then_some(PRE_AUTH_COMMAND_MAX);
            self.conn
                .read_literal_then_line(&mut buf, size, !too_big, line_max, allowance)
                .await?;
        }
    }

    async fn command(&mut self, command: Command) -> Result<Next, NetError> {
        let authenticated = self.user.is_some();
        match command {
            Command::Capability => {
                self.capabilities();
                self.reply(Status::Ok, None, "");
            }
            Command::Logout => {
                self.reply(Status::Ok, None, "bye");
                let _ = self.conn.shutdown().await;
                return Ok(Next::Quit);
            }
            Command::Noop(tag) => match tag {
                Some(tag) => {
                    let code = format!(
                        "TAG {}",
                        String::from_utf8_lossy(&managesieve::string(tag.as_bytes()))
                    );
                    self.reply(Status::Ok, Some(&code), "done");
                }
                None => self.reply(Status::Ok, None, "done"),
            },
            Command::StartTls if !authenticated => self.starttls().await?,
            Command::Authenticate { mechanism, initial } if !authenticated => {
                return self.authenticate(&mechanism, initial).await;
            }
            Command::Unauthenticate if authenticated => {
                if let Some(user) = self.user.take() {
                    tracing::info!(user = %user.login, "unauthenticated");
                }
                self.reply(Status::Ok, None, "");
            }
            Command::StartTls | Command::Authenticate { .. } => {
                self.error("already logged in");
            }
            other if !authenticated => {
                self.error(&format!("{} is not valid before login", other.name()));
            }
            other => self.scripts(other).await,
        }
        Ok(Next::Continue)
    }

    async fn starttls(&mut self) -> Result<(), NetError> {
        let acceptor = match self.conn.starttls_acceptor(self.shared.tls.as_ref()) {
            Ok(acceptor) => acceptor,
            Err(why) => {
                self.error(why);
                return Ok(());
            }
        };
        self.reply(Status::Ok, None, "begin TLS negotiation now");
        // start_tls sends the reply, then discards anything the client
        // sent after STARTTLS in the clear (CVE-2011-0411 class).
        self.conn.start_tls(&acceptor).await?;
        // RFC 5804 §2.2: the capabilities again, as TLS changed them.
        self.capabilities();
        self.reply(Status::Ok, None, "TLS active");
        Ok(())
    }

    /// RFC 5804 §2.1: PLAIN, with an initial response or after an empty
    /// challenge.
    async fn authenticate(
        &mut self,
        mechanism: &str,
        initial: Option<String>,
    ) -> Result<Next, NetError> {
        if mechanism != "PLAIN" {
            self.error("unsupported mechanism: use PLAIN");
            return Ok(Next::Continue);
        }
        if !self.may_authenticate() {
            self.error_code(
                "ENCRYPT-NEEDED",
                "passwords only over TLS here: use STARTTLS first",
            );
            return Ok(Next::Continue);
        }
        let response = match initial {
            Some(r) => r,
            None => {
                self.conn.write(b"\"\"\r\n");
                self.conn.flush().await?;
                // Not logged in yet: held to the pre-login bound.
                let bytes = match self.read_command().await? {
                    Input::Command(bytes) => bytes,
                    Input::TooBig(_) => Vec::new(),
                };
                match managesieve::parse_string_line(&bytes) {
                    Ok(r) => r,
                    Err(_) => {
                        self.error("malformed SASL response: send a string");
                        return Ok(Next::Continue);
                    }
                }
            }
        };
        if response == "*" {
            self.reply(Status::No, None, "authentication cancelled");
            return Ok(Next::Continue);
        }
        let Some((login, password)) = postroom::proto::sasl::decode_plain(&response) else {
            self.error("malformed PLAIN response");
            return Ok(Next::Continue);
        };
        self.login(login, password).await
    }

    fn error_code(&mut self, code: &str, text: &str) {
        self.errors += 1;
        self.reply(Status::No, Some(code), text);
    }

    /// Checks a password (after the wait earlier failures earned).
    async fn login(&mut self, login: String, password: String) -> Result<Next, NetError> {
        let ip = self.conn.peer().map(|p| p.ip());
        let tried = login.clone();
        let checked = AuthLimit::from_config(&self.shared.config)
            .check_password(
                Service::Sieve,
                ip,
                self.shared.files.users(),
                login,
                password,
            )
            .await;
        match checked {
            Ok(Some(user)) => {
                let maildir = users::maildir_of(&self.shared.config, &user);
                let login = user.address.to_string();
                tracing::info!(user = %login, "logged in");
                self.user = Some(User {
                    login,
                    scripts: Scripts::of(&maildir),
                });
                self.reply(Status::Ok, None, "logged in");
            }
            Ok(None) => {
                self.auth_failures += 1;
                tracing::info!(login = ?tried, failures = self.auth_failures, "authentication failed");
                if self.auth_failures >= AUTH_FAILURES_MAX {
                    self.reply(Status::Bye, None, "too many failed logins, closing");
                    return Ok(Next::Quit);
                }
                self.reply(Status::No, None, "authentication failed");
            }
            Err(CheckError::Refused(why)) => {
                tracing::info!(login = ?tried, %why, "login refused by the after-login hook");
                self.reply(Status::No, None, &why);
            }
            Err(e) => {
                tracing::error!("password check failed: {e}");
                self.reply(
                    Status::No,
                    Some("TRYLATER"),
                    "cannot check the password now, try again later",
                );
            }
        }
        Ok(Next::Continue)
    }

    /// The commands of the authenticated state, run on the blocking pool
    /// (file locks and fsyncs).
    async fn scripts(&mut self, command: Command) {
        let Some(user) = &self.user else {
            return;
        };
        let scripts = user.scripts.clone();
        let login = user.login.clone();
        let limits = storage::Limits::from_config(&self.shared.config);
        let done = tokio::task::spawn_blocking(move || execute(&scripts, limits, command)).await;
        let done = match done {
            Ok(done) => done,
            Err(e) => Done::Failed(StorageError::Io(std::io::Error::other(e.to_string()))),
        };
        match done {
            Done::Ok(text) => {
                self.conn.write(&text);
                self.reply(Status::Ok, None, "");
            }
            Done::Invalid(e) => {
                self.reply(Status::No, None, &e);
            }
            Done::Failed(StorageError::Io(e)) => {
                tracing::error!(user = %login, "sieve scripts: {e}");
                self.reply(
                    Status::No,
                    Some("TRYLATER"),
                    "cannot reach your scripts now, try again later",
                );
            }
            Done::Failed(e) => {
                let code = match e {
                    StorageError::NonExistent(_) => Some("NONEXISTENT"),
                    StorageError::AlreadyExists(_) => Some("ALREADYEXISTS"),
                    StorageError::Active(_) => Some("ACTIVE"),
                    StorageError::TooMany(_) => Some("QUOTA/MAXSCRIPTS"),
                    StorageError::TooBig(_) => Some("QUOTA/MAXSIZE"),
                    StorageError::BadName(_) | StorageError::Io(_) => None,
                };
                self.reply(Status::No, code, &e.to_string());
            }
        }
    }
}

/// How a script command ended.
enum Done {
    /// Succeeded; the bytes go before the OK.
    Ok(Vec<u8>),
    /// The script does not compile: where and why.
    Invalid(String),
    Failed(StorageError),
}

impl From<Result<(), StorageError>> for Done {
    fn from(result: Result<(), StorageError>) -> Done {
        match result {
            Ok(()) => Done::Ok(Vec::new()),
            Err(e) => Done::Failed(e),
        }
    }
}

/// A script as mailsort will compile it; the error names line and column.
fn check(script: &[u8]) -> Result<(), String> {
    Script::compile_bytes(script)
        .map(|_| ())
        .map_err(|e| e.to_string())
}

fn execute(scripts: &Scripts, limits: storage::Limits, command: Command) -> Done {
    match command {
        Command::HaveSpace { name, size } => scripts.have_space(&name, size, limits).into(),
        Command::PutScript { name, script } => {
            // The cheap refusals first: no compiling a script that cannot
            // be stored anyway.
            if let Err(e) = scripts.have_space(&name, script.len() as u64, limits) {
                return Done::Failed(e);
            }
            if let Err(e) = check(&script) {
                return Done::Invalid(e);
            }
            scripts.put(&name, &script, limits).into()
        }
        Command::CheckScript(script) => match check(&script) {
            Ok(()) => Done::Ok(Vec::new()),
            Err(e) => Done::Invalid(e),
        },
        Command::ListScripts => match scripts.list() {
            Ok(list) => {
                let mut out = Vec::new();
                for (name, active) in list {
                    out.extend_from_slice(&managesieve::string(name.as_bytes()));
                    if active {
                        out.extend_from_slice(b" ACTIVE");
                    }
                    out.extend_from_slice(b"\r\n");
                }
                Done::Ok(out)
            }
            Err(e) => Done::Failed(e),
        },
        Command::SetActive(name) => {
            let name = (!name.is_empty()).then_some(name.as_str());
            scripts.set_active(name).into()
        }
        Command::GetScript(name) => match scripts.get(&name) {
            Ok(text) => {
                // Always a literal: a script has line ends.
                let mut out = managesieve::literal(&text);
                out.extend_from_slice(b"\r\n");
                Done::Ok(out)
            }
            Err(e) => Done::Failed(e),
        },
        Command::DeleteScript(name) => scripts.delete(&name).into(),
        Command::RenameScript { old, new } => scripts.rename(&old, &new).into(),
        // The session answers the rest itself.
        Command::Authenticate { .. }
        | Command::StartTls
        | Command::Logout
        | Command::Capability
        | Command::Noop(_)
        | Command::Unauthenticate => Done::Ok(Vec::new()),
    }
}
