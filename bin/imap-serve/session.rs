//! One IMAP session: framing commands with their literals, the command
//! table of RFC 9051/3501 and its extensions, and keeping the client's view
//! of the selected folder in step with the disk.
//!
//! Policy: LOGIN and AUTHENTICATE only where `auth.plaintext` allows them
//! (TLS or loopback by default), with the failure back-off of `authlimit`.
//! Literals are refused before a byte of them is read when they pass the
//! limits (`limits.message_size` for APPEND, 64 KiB otherwise); a
//! non-synchronizing literal over the limit ends the session, since its
//! bytes are already on the way and must never be read as commands.
//! Before login a whole command (line, literals and the lines between
//! them) is held to [`PRE_LOGIN_COMMAND_MAX`]: a client that has not
//! logged in never makes the process hold more than that per connection.
//!
//! The view: a session keeps the folder's entries as it last reported them
//! (sequence number = position). After every command, and while IDLE, it
//! syncs the folder and reports what changed: EXPUNGE (not during FETCH,
//! STORE or SEARCH by sequence number, RFC 3501 §7.4.1), EXISTS, and FETCH
//! FLAGS for flags other sessions changed. With NOTIFY (`notify.rs`) it
//! does so between commands too, while it waits for the next one.

use std::sync::{Arc, Weak};

use postroom::config::Config;
use postroom::config::login::Service;
use postroom::directory::authlimit::{AuthLimit, CheckError};
use postroom::directory::reloading::LoginFiles;
use postroom::directory::users::Users;
use postroom::net::tls::ServerTls;
use postroom::net::{Connection, NetError};
use postroom::store::mailbox::acl::Rights;
use postroom::store::mailbox::cache::Cache;
use postroom::store::mailbox::modseq::ModSeqs;
use postroom::store::mailbox::shared::{Entries, Folders, Indexed, SharedFolder};
use postroom::store::mailbox::{
    Entry, Folder, Keywords, Mailbox, MailboxError, MailboxName, flags,
};
use postroom::store::watch::Watcher;

use postroom::proto::imap::command::{
    self, Bad, Body, Command, SearchKey, SequenceSet, literal_at_end,
};
use postroom::proto::imap::response::flag_list;

/// Failed LOGIN/AUTHENTICATE attempts before the session is dropped.
const AUTH_FAILURES_MAX: u32 = 3;
/// Largest literal outside APPEND (a password, a search string).
const SMALL_LITERAL_MAX: usize = 64 * 1024;
/// Before login, the most one command may hold in all: LOGIN with a long
/// name and password, or AUTHENTICATE's response, fits many times over;
/// a message does not (Dovecot's imap-login keeps a bound of this size).
pub const PRE_LOGIN_COMMAND_MAX: usize = 8 * 1024;
/// Most literals in one command.
const LITERALS_MAX: usize = 1000;

/// What every session of this process shares.
pub struct Shared {
    pub config: Config,
    tls: Option<ServerTls>,
    files: LoginFiles,
    /// None when inotify is unavailable: IDLE then re-syncs on its timer.
    watcher: Option<Watcher>,
    /// The selected folders' entries and mod-sequences, one copy each.
    pub folders: Folders,
}

impl Shared {
    /// Call inside the runtime (the watcher registers with it).
    pub fn new(config: Config, tls: Option<ServerTls>) -> anyhow::Result<Shared> {
        let files = LoginFiles::load(&config)?;
        let watcher = match Watcher::new() {
            Ok(w) => Some(w),
            Err(e) => {
                tracing::warn!("inotify unavailable ({e}); IDLE polls every minute");
                None
            }
        };
        Ok(Shared {
            config,
            tls,
            files,
            watcher,
            folders: Folders::default(),
        })
    }

    pub fn watcher(&self) -> Option<&Watcher> {
        self.watcher.as_ref()
    }

    /// The users, reloaded if the file changed; a version that does not
    /// load keeps the last good one in force (logged).
    pub fn users(&self) -> Arc<Users> {
        self.files.users()
    }
}

/// The logged-in user.
pub struct Login {
    /// The user's address, lower case (what ACLs name).
    pub address: String,
    pub mailbox: Mailbox,
    pub quota: Option<u64>,
}

/// The selected folder and the client's view of it.
pub struct Selected {
    pub name: MailboxName,
    pub folder: Folder,
    /// What the sessions of this process know of the folder, one copy.
    pub shared: Arc<SharedFolder>,
    pub read_only: bool,
    /// The user's rights on the folder (all of them on their own).
    pub rights: Rights,
    /// The user's own \Seen, in a folder of another tree (`acl`).
    pub seen: Option<crate::acl::Seen>,
    /// Entries by sequence number - 1, UIDs ascending: the folder's
    /// shared entries as last synced while the view is those (an idle
    /// session's is), a copy of its own once it differs (a command
    /// changed flags, an EXPUNGE is held back); `Arc::make_mut` to change.
    /// Empty while `unread` holds them.
    pub view: Entries,
    /// SELECT answered from the folder index's header: the view is its
    /// records, read at the first command ([`Session::materialize`]).
    pub unread: Option<Arc<Indexed>>,
    pub keywords: Keywords,
    /// The UIDVALIDITY the client was given at SELECT.
    pub validity: u32,
    pub next_uid: u32,
    /// The shared entries the view was last brought up to date with: the
    /// same ones again mean nothing changed on disk since.
    pub synced: Weak<Vec<Entry>>,
    /// This session changed the folder: the next sync reads the disk
    /// whatever the folder's stamp says.
    pub force: bool,
    /// Messages gone from the folder that are still in the view because
    /// the command that saw them go could not report it (RFC 3501
    /// §7.4.1): the next command that may report EXPUNGE must sync even
    /// when the folder's stamp has not moved since.
    pub held_back: bool,
    /// UIDs this session owns \Recent for, as `first..next` ranges
    /// (`view::take_recent`); all from the folder's `R` on for EXAMINE.
    pub recent: Vec<(u32, u32)>,
    /// \Recent is reported (IMAP4rev1; IMAP4rev2 dropped it).
    pub report_recent: bool,
    /// ENVELOPE, BODYSTRUCTURE, sizes and search fields already computed.
    pub cache: Cache,
    /// Searches kept for updates (RFC 5267 contexts).
    pub contexts: Vec<crate::context::Context>,
    /// The view their results were last worked out on (`context::updates`).
    pub contexts_of: Option<Entries>,
}

impl Selected {
    /// Reads the view SELECT left in the folder index, if it did.
    pub fn materialize(&mut self) -> Result<(), postroom::store::mailbox::MailboxError> {
        if let Some(indexed) = self.unread.take() {
            let entries = self.shared.entries(&indexed)?;
            self.synced = Arc::downgrade(&entries);
            self.view = entries;
        }
        Ok(())
    }

    /// Whether this session shows the message as \Recent.
    pub fn is_recent(&self, uid: u32) -> bool {
        self.report_recent && self.recent.iter().any(|&(a, b)| (a..b).contains(&uid))
    }

    /// `* n RECENT`: the messages of the view this session shows \Recent.
    pub fn recent_line(&self) -> String {
        let n = self.view.iter().filter(|e| self.is_recent(e.uid)).count();
        format!("* {n} RECENT\r\n")
    }

    /// A message's FLAGS, with \Recent where this session shows it.
    pub fn flags(&self, e: &Entry) -> String {
        let mut list = flag_list(self.flags_of(e), &self.keywords);
        if self.is_recent(e.uid) {
            list.pop();
            if !list.ends_with('(') {
                list.push(' ');
            }
            list.push_str("\\Recent)");
        }
        list
    }

    /// Writes what a command added to the folder cache, and closes its
    /// file until the next command needs it.
    pub fn done_with_cache(&mut self) {
        let view = &self.view;
        self.cache
            .flush(&|uid| view.binary_search_by_key(&uid, |e| e.uid).is_ok());
        self.cache.release();
    }

    /// Records what changed since the mod-sequences were last brought up
    /// to date; returns the UIDs with a new mod-sequence. A failure is
    /// logged: the values then lag, and the next look catches up.
    pub fn update_modseqs(&mut self) -> Vec<u32> {
        if self.unread.is_some() {
            // Not read yet: an empty view would count as every message
            // expunged. Whoever calls this reads the view first.
            return Vec::new();
        }
        let mut guard = self.shared.modseqs(self.validity);
        let Some(modseqs) = guard.as_mut() else {
            return Vec::new();
        };
        match modseqs.update_shared(&self.view) {
            Ok(changed) => changed,
            Err(e) => {
                tracing::warn!("mod-sequences of {}: {e}", self.name);
                Vec::new()
            }
        }
    }

    /// The folder's mod-sequences as last brought up to date (shared with
    /// the other sessions of the folder); hold it only briefly, never
    /// across an `.await`.
    pub fn modseqs(&self) -> std::sync::MutexGuard<'_, Option<ModSeqs>> {
        self.shared.modseqs(self.validity)
    }

    /// The mod-sequence of a message (0 for one not yet recorded).
    pub fn modseq(&self, uid: u32) -> u64 {
        self.modseqs().as_ref().map_or(0, |m| m.of(uid))
    }

    /// HIGHESTMODSEQ.
    pub fn highest_modseq(&self) -> u64 {
        self.modseqs().as_ref().map_or(1, ModSeqs::highest)
    }
}

pub struct Session {
    pub shared: Arc<Shared>,
    pub conn: Connection,
    pub login: Option<Login>,
    pub selected: Option<Selected>,
    /// IMAP4rev2 enabled (RFC 9051): UTF-8 names, ESEARCH replies, no RECENT.
    pub rev2: bool,
    /// UTF8=ACCEPT enabled (RFC 6855): UTF-8 mailbox names and strings.
    pub utf8: bool,
    /// CONDSTORE in use (RFC 7162 §3.1): MODSEQ in every FETCH response.
    pub condstore: bool,
    /// QRESYNC enabled: VANISHED instead of EXPUNGE.
    pub qresync: bool,
    /// UIDs saved by `SEARCH RETURN (SAVE)`, which `$` names (RFC 5182).
    pub saved: Vec<u32>,
    /// NOTIFY SET in force (RFC 5465): what to watch between commands.
    pub notify: Option<crate::notify::Notify>,
    errors: usize,
    auth_failures: u32,
}

/// How a command ended: its tagged status and text.
pub enum Done {
    Ok(String),
    No(String),
    Bad(String),
    /// LOGOUT or a fatal error: the BYE is already written.
    Bye,
    /// The tagged reply is already written (STARTTLS).
    Sent,
}

impl From<MailboxError> for Done {
    fn from(e: MailboxError) -> Done {
        match e {
            MailboxError::NoSuchMailbox => Done::No("[NONEXISTENT] no such mailbox".into()),
            MailboxError::AlreadyExists => {
                Done::No("[ALREADYEXISTS] mailbox already exists".into())
            }
            MailboxError::BadName(e) => Done::No(format!("[CANNOT] {e}")),
            MailboxError::InboxDelete => Done::No("[CANNOT] INBOX cannot be deleted".into()),
            MailboxError::Maildir(postroom::store::maildir::MaildirError::Symlink(e)) => {
                // The admin's to look at; the client learns no path.
                tracing::warn!("{e}");
                Done::No("[CANNOT] a symlink is in the way (none is followed in a mailbox)".into())
            }
            e if e.is_over_quota() => Done::No(format!("[OVERQUOTA] {e}")),
            e => {
                tracing::error!("{e}");
                Done::No("[SERVERUNAVAILABLE] local error, try again later".into())
            }
        }
    }
}

/// What reading a command gave.
enum Input {
    Command(Vec<u8>),
    /// A synchronizing literal over the limit: refused, session goes on.
    Refused(String, String),
}

pub async fn run(shared: Arc<Shared>, mut conn: Connection) {
    // The end of a line may announce a literal: a line over the limit
    // ends the session as soon as the limit is passed.
    conn.end_long_lines_early();
    let mut session = Session {
        shared,
        conn,
        login: None,
        selected: None,
        rev2: false,
        utf8: false,
        condstore: false,
        qresync: false,
        saved: Vec::new(),
        notify: None,
        errors: 0,
        auth_failures: 0,
    };
    if !session.shared.files.admits(session.conn.peer()) {
        tracing::info!("denied by the access file");
        session.conn.write(b"* BYE access denied\r\n");
        let _ = session.conn.flush().await;
        return;
    }
    let greeting = format!(
        "* OK [CAPABILITY {}] {} IMAP ready\r\n",
        session.capabilities(),
        session.shared.config.hostname
    );
    session.conn.write(greeting.as_bytes());
    if let Err(e) = session.serve().await {
        tracing::info!("session ended: {e}");
    }
}

impl Session {
    fn may_authenticate(&self) -> bool {
        self.conn
            .may_send_password(self.shared.config.auth.plaintext_rule())
    }

    pub fn capabilities(&self) -> String {
        let mut caps = vec![
            "IMAP4rev1",
            "IMAP4rev2",
            "LITERAL+",
            "SASL-IR",
            "ID",
            "ENABLE",
            "IDLE",
        ];
        if self.login.is_none() {
            if self.conn.may_starttls(self.shared.tls.as_ref()) {
                caps.push("STARTTLS");
            }
            if self.may_authenticate() {
                caps.push("AUTH=PLAIN");
            } else {
                caps.push("LOGINDISABLED");
            }
        } else {
            caps.extend([
                "NAMESPACE",
                "ACL",
                "RIGHTS=texk",
                "LIST-MYRIGHTS",
                "UNSELECT",
                "UIDPLUS",
                "MOVE",
                "CHILDREN",
                "LIST-EXTENDED",
                "LIST-STATUS",
                "SPECIAL-USE",
                "ESEARCH",
                "QUOTA",
                "QUOTA=RES-STORAGE",
                "STATUS=SIZE",
                "CONDSTORE",
                "QRESYNC",
                "BINARY",
                "SEARCHRES",
                "SORT",
                "SORT=DISPLAY",
                "ESORT",
                "CONTEXT=SEARCH",
                "CONTEXT=SORT",
                "PARTIAL",
                "UTF8=ACCEPT",
                "CREATE-SPECIAL-USE",
                "THREAD=ORDEREDSUBJECT",
                "THREAD=REFERENCES",
                "MULTIAPPEND",
                "CATENATE",
                "NOTIFY",
            ]);
        }
        caps.join(" ")
    }

    /// Queues output, sending first when over the high-water mark, so a
    /// client that does not read costs a bounded buffer (then a timeout).
    pub async fn out(&mut self, bytes: &[u8]) -> Result<(), NetError> {
        self.conn.write_bulk(bytes).await
    }

    async fn serve(&mut self) -> Result<(), NetError> {
        loop {
            if !self.conn.has_buffered_input() {
                self.conn.flush().await?;
            }
            let input = match self.read_command().await {
                Ok(input) => input,
                Err(NetError::Timeout) => {
                    self.conn.write(b"* BYE idle too long, closing\r\n");
                    return self.conn.flush().await;
                }
                Err(NetError::LineTooLong) => {
                    // The rest of the line (and any literal it announced)
                    // was not seen: the only safe move is to hang up.
                    if self.login.is_none() {
                        let bye = format!("{}\r\n", pre_login_refusal("* BYE"));
                        self.conn.write(bye.as_bytes());
                    } else {
                        self.conn
                            .write(b"* BYE command line too long (imap.line_length)\r\n");
                    }
                    self.conn.linger_close().await;
                    return Ok(());
                }
                Err(e) => return Err(e),
            };
            let line = match input {
                Input::Command(line) => line,
                Input::Refused(tag, text) => {
                    self.conn.write(format!("{tag} {text}\r\n").as_bytes());
                    self.errors += 1;
                    if self.too_many_errors().await? {
                        return Ok(());
                    }
                    continue;
                }
            };
            let command = match command::parse(&line) {
                Ok(c) => c,
                Err((tag, Bad(text))) => {
                    let tag = tag.unwrap_or_else(|| "*".into());
                    self.conn.write(format!("{tag} BAD {text}\r\n").as_bytes());
                    self.errors += 1;
                    if self.too_many_errors().await? {
                        return Ok(());
                    }
                    continue;
                }
            };
            drop(line);
            let tag = command.tag.clone();
            // Boxed: a command's state lives on the heap only while it
            // runs, so an idle session's task stays small.
            let done = Box::pin(self.command(command)).await?;
            let (status, text) = match done {
                Done::Ok(t) => ("OK", t),
                Done::No(t) => ("NO", t),
                Done::Bad(t) => {
                    self.errors += 1;
                    ("BAD", t)
                }
                Done::Bye => return self.conn.flush().await,
                Done::Sent => continue,
            };
            self.out(format!("{tag} {status} {text}\r\n").as_bytes())
                .await?;
            if self.auth_failures >= AUTH_FAILURES_MAX {
                self.conn
                    .write(b"* BYE too many authentication failures\r\n");
                return self.conn.flush().await;
            }
            if self.too_many_errors().await? {
                return Ok(());
            }
        }
    }

    async fn too_many_errors(&mut self) -> Result<bool, NetError> {
        if self.errors < self.shared.config.limits.errors {
            return Ok(false);
        }
        self.conn.write(b"* BYE too many errors, closing\r\n");
        self.conn.flush().await?;
        Ok(true)
    }

    /// Reads one command line and the literals it announces (RFC 9051
    /// §4.3, RFC 7888 LITERAL+).
    async fn read_command(&mut self) -> Result<Input, NetError> {
        // Before login nothing bigger than a LOGIN is held, whatever the
        // command (an APPEND there is refused anyway, but only once read).
        let pre_login = self.login.is_none();
        let max_line = if pre_login {
            PRE_LOGIN_COMMAND_MAX.min(self.shared.config.imap.line_length)
        } else {
            self.shared.config.imap.line_length
        };
        // The first line is awaited together with NOTIFY's changes.
        let mut buf = self.next_line(max_line).await?;
        let is_append = {
            let mut words = buf.split(|&b| b == b' ');
            words.next();
            words
                .next()
                .is_some_and(|w| w.eq_ignore_ascii_case(b"APPEND"))
        };
        let literal_max = if is_append {
            self.shared.config.limits.message_size as usize
        } else {
            SMALL_LITERAL_MAX
        };
        let mut literals = 0;
        // A MULTIAPPEND holds its messages in memory until the last one
        // arrives: four messages' worth at most.
        let mut total = 0usize;
        loop {
            let Some((size, sync)) = literal_at_end(&buf) else {
                return Ok(Input::Command(buf));
            };
            literals += 1;
            total = total.saturating_add(size);
            let tag = String::from_utf8_lossy(buf.split(|&b| b == b' ').next().unwrap_or(b"*"))
                .into_owned();
            if pre_login && buf.len().saturating_add(size) > PRE_LOGIN_COMMAND_MAX {
                if sync {
                    // No continuation: the client sends nothing more of it.
                    return Ok(Input::Refused(tag, pre_login_refusal("BAD")));
                }
                // Its bytes are on the way (LITERAL+, RFC 7888 §4): they
                // must neither be held nor read as commands.
                tracing::info!("non-synchronizing literal of {size} bytes before login");
                self.conn
                    .write(format!("{}\r\n", pre_login_refusal("* BYE")).as_bytes());
                self.conn.linger_close().await;
                return Err(NetError::Closed);
            }
            if size > literal_max
                || literals > LITERALS_MAX
                || total > literal_max.saturating_mul(4)
            {
                if sync {
                    // The client waits for "+" and sends nothing more of
                    // this command.
                    let all = literal_max.saturating_mul(4);
                    let text = if literals > LITERALS_MAX {
                        format!("BAD more than {LITERALS_MAX} literals in one command")
                    } else if size <= literal_max && is_append {
                        // Each message fits; the MULTIAPPEND as a whole does not.
                        format!("NO [TOOBIG] messages larger than {all} bytes in all")
                    } else if size <= literal_max {
                        format!("BAD literals larger than {all} bytes in all")
                    } else if is_append {
                        format!("NO [TOOBIG] message larger than {literal_max} bytes")
                    } else {
                        format!("BAD literal larger than {literal_max} bytes")
                    };
                    return Ok(Input::Refused(tag, text));
                }
                // The reason the client would have had in the tagged reply.
                let all = literal_max.saturating_mul(4);
                let bye = if literals > LITERALS_MAX {
                    format!("* BYE more than {LITERALS_MAX} literals in one command\r\n")
                } else if size <= literal_max {
                    format!("* BYE [TOOBIG] literals larger than {all} bytes in all\r\n")
                } else {
                    format!("* BYE [TOOBIG] literal larger than {literal_max} bytes\r\n")
                };
                self.conn.write(bye.as_bytes());
                self.conn.linger_close().await;
                return Err(NetError::Closed);
            }
            if sync {
                self.conn.write(b"+ go ahead\r\n");
                self.conn.flush().await?;
            }
            let allowance = pre_login.then_some(PRE_LOGIN_COMMAND_MAX);
            self.conn
                .read_literal_then_line(&mut buf, size, true, max_line, allowance)
                .await?;
        }
    }

    /// The selected folder's view, read if SELECT left it in the index:
    /// every command that looks at the view calls this first, so none
    /// sees it empty. NOOP, CHECK and IDLE leave it to [`Session::report`],
    /// which reads it only once the folder moved (a client that selects
    /// and waits in IDLE never needs it before). Failing that, the
    /// client must select again.
    pub async fn materialize(&mut self) -> Result<(), NetError> {
        let Some(sel) = self.selected.as_mut() else {
            return Ok(());
        };
        if let Err(e) = sel.materialize() {
            tracing::warn!("view of {}: {e}", sel.name);
            self.conn
                .write(b"* BYE the mailbox's index was damaged and the mailbox changed since SELECT, select it again\r\n");
            self.conn.flush().await?;
            return Err(NetError::Closed);
        }
        Ok(())
    }

    async fn command(&mut self, cmd: Command) -> Result<Done, NetError> {
        let Command { tag, mut body } = cmd;
        if !matches!(
            body,
            Body::Select { .. }
                | Body::Logout
                | Body::Close
                | Body::Unselect
                | Body::Noop
                | Body::Check
                | Body::Idle
        ) {
            self.materialize().await?;
        }
        if matches!(body, Body::Select { .. } | Body::Close | Body::Unselect) {
            // A saved result belongs to the folder it was made in.
            self.saved.clear();
        }
        self.substitute_saved(&mut body);
        let allows_expunge = body.allows_expunge();
        // Whether this command turns CONDSTORE on in the selected state
        // (not by SELECT, which reports HIGHESTMODSEQ itself).
        let condstore_before = self.condstore || matches!(body, Body::Select { .. });
        let done = match body {
            Body::Capability => {
                let caps = format!("* CAPABILITY {}\r\n", self.capabilities());
                self.out(caps.as_bytes()).await?;
                Done::Ok("CAPABILITY completed".into())
            }
            Body::Noop | Body::Check => Done::Ok("completed".into()),
            Body::Logout => {
                self.conn.write(b"* BYE logging out\r\n");
                self.conn
                    .write(format!("{tag} OK LOGOUT completed\r\n").as_bytes());
                let _ = self.conn.shutdown().await;
                return Ok(Done::Bye);
            }
            Body::Id => {
                self.out(b"* ID (\"name\" \"postroom\")\r\n").await?;
                Done::Ok("ID completed".into())
            }
            Body::StartTls => return self.starttls(&tag).await,
            Body::Login { user, password } => self.login(user, password).await?,
            Body::Authenticate { mechanism, initial } => {
                self.authenticate(&mechanism, initial).await?
            }
            body if self.login.is_none() => {
                let _ = body;
                Done::Bad("log in first (LOGIN or AUTHENTICATE)".into())
            }
            Body::Enable(caps) => {
                // Only what is done for real, as RFC 5161 asks: unknown
                // capabilities are left out of the reply.
                let mut enabled = String::from("* ENABLED");
                for cap in caps {
                    let name = match cap.to_ascii_uppercase().as_str() {
                        "CONDSTORE" => {
                            self.condstore = true;
                            "CONDSTORE"
                        }
                        // QRESYNC implies CONDSTORE (RFC 7162 §3.2.3).
                        "QRESYNC" => {
                            (self.condstore, self.qresync) = (true, true);
                            "QRESYNC"
                        }
                        "UTF8=ACCEPT" => {
                            self.utf8 = true;
                            "UTF8=ACCEPT"
                        }
                        // UTF-8 names, ESEARCH replies, no \Recent (RFC 9051).
                        "IMAP4REV2" => {
                            self.rev2 = true;
                            if let Some(sel) = self.selected.as_mut() {
                                sel.report_recent = false;
                            }
                            "IMAP4rev2"
                        }
                        _ => continue,
                    };
                    enabled.push(' ');
                    enabled.push_str(name);
                }
                if self.condstore
                    && let Some(sel) = self.selected.as_mut()
                {
                    sel.update_modseqs();
                }
                enabled.push_str("\r\n");
                self.out(enabled.as_bytes()).await?;
                Done::Ok("ENABLE completed".into())
            }
            Body::Namespace => self.namespace().await?,
            Body::Acl(command) => self.acl_command(command).await?,
            Body::Select {
                mailbox,
                read_only,
                condstore,
                qresync,
            } => {
                if qresync.is_some() && !self.qresync {
                    Done::Bad("ENABLE QRESYNC before SELECT with QRESYNC".into())
                } else {
                    self.condstore |= condstore;
                    self.select(&mailbox, read_only, qresync.as_ref()).await?
                }
            }
            Body::Create(name, uses) => self.create(&name, &uses),
            Body::Delete(name) => self.delete(&name),
            Body::Rename(from, to) => self.rename(&from, &to),
            Body::Subscribe(name) => self.subscribe(&name, true),
            Body::Unsubscribe(name) => self.subscribe(&name, false),
            Body::List {
                reference,
                patterns,
                options,
                lsub,
            } => self.list(&reference, &patterns, &options, lsub).await?,
            Body::Status { mailbox, items } => self.status(&mailbox, &items).await?,
            Body::Append { mailbox, messages } => self.append(&mailbox, &messages),
            Body::GetQuotaRoot(mailbox) => self.quota(Some(&mailbox)).await?,
            Body::GetQuota(root) => {
                if root.is_empty() {
                    self.quota(None).await?
                } else {
                    Done::No("[NONEXISTENT] no such quota root (the one root is \"\")".into())
                }
            }
            Body::Refused(text) => Done::No(text),
            Body::SetQuota => Done::No("[CANNOT] quotas are set in the users file".into()),
            Body::Idle => self.idle().await?,
            Body::Notify(set) => self.notify(set).await?,
            body if self.selected.is_none() => {
                let _ = body;
                Done::Bad("select a mailbox first".into())
            }
            Body::Close | Body::Unselect => {
                let close = matches!(body, Body::Close);
                if let Some(sel) = self.selected.take()
                    && close
                    && !sel.read_only
                    // Without `e` CLOSE expunges nothing (RFC 4314 §4).
                    && sel.rights.has(Rights::EXPUNGE)
                {
                    let deleted: Vec<Entry> = sel
                        .folder
                        .sync()
                        .map(|s| s.entries)
                        .unwrap_or_default()
                        .into_iter()
                        .filter(|e| e.flags().has(flags::DELETED))
                        .collect();
                    if let Err(e) = sel.folder.expunge(&deleted) {
                        return Ok(e.into());
                    }
                }
                return Ok(Done::Ok("completed, no mailbox selected".into()));
            }
            Body::Expunge(uids) => self.expunge(uids.as_ref()).await?,
            Body::CancelUpdate(tags) => self.cancel_update(&tags),
            Body::Search { uid, key, ret } => self.search(&tag, uid, &key, ret.as_deref()).await?,
            Body::Sort {
                uid,
                criteria,
                key,
                ret,
            } => {
                self.sort(&tag, uid, &criteria, &key, ret.as_deref())
                    .await?
            }
            Body::Thread {
                uid,
                references,
                key,
            } => self.thread(uid, references, &key).await?,
            Body::Fetch {
                uid,
                set,
                items,
                changed_since,
                vanished,
            } => {
                self.fetch(uid, &set, &items, changed_since, vanished)
                    .await?
            }
            Body::Store {
                uid,
                set,
                mode,
                silent,
                flags,
                unchanged_since,
            } => {
                self.condstore |= unchanged_since.is_some();
                self.store(uid, &set, mode, silent, &flags, unchanged_since)
                    .await?
            }
            Body::Copy {
                uid,
                set,
                mailbox,
                remove,
            } => self.copy(uid, &set, &mailbox, remove).await?,
        };
        if !condstore_before
            && self.condstore
            && let Some(sel) = self.selected.as_mut()
        {
            // RFC 7162 §3.1: the first CONDSTORE-enabling command in the
            // selected state (FETCH MODSEQ, SEARCH MODSEQ, STORE
            // UNCHANGEDSINCE, ENABLE) tells the folder's HIGHESTMODSEQ.
            sel.update_modseqs();
            let line = format!("* OK [HIGHESTMODSEQ {}] highest\r\n", sel.highest_modseq());
            self.out(line.as_bytes()).await?;
        }
        if self.selected.is_some() {
            self.report(allows_expunge).await?;
        }
        Ok(done)
    }

    /// Replaces `$` with the saved result: UIDs in UID commands, sequence
    /// numbers (of the saved messages still in the view) otherwise.
    fn substitute_saved(&self, body: &mut Body) {
        let saved = |uid: bool| -> SequenceSet {
            if uid {
                return SequenceSet::of_sorted(&self.saved);
            }
            let view = self.selected.as_ref().map_or(&[][..], |s| &s.view[..]);
            let seqs: Vec<u32> = self
                .saved
                .iter()
                .filter_map(|u| view.binary_search_by_key(u, |e| e.uid).ok())
                .map(|i| i as u32 + 1)
                .collect();
            SequenceSet::of_sorted(&seqs)
        };
        fn in_key(key: &mut SearchKey, saved: &dyn Fn(bool) -> SequenceSet) {
            match key {
                SearchKey::Seq(set) if set.is_saved() => *set = saved(false),
                SearchKey::Uid(set) if set.is_saved() => *set = saved(true),
                SearchKey::Not(k) => in_key(k, saved),
                SearchKey::Or(a, b) => {
                    in_key(a, saved);
                    in_key(b, saved);
                }
                SearchKey::And(keys) => keys.iter_mut().for_each(|k| in_key(k, saved)),
                _ => {}
            }
        }
        match body {
            Body::Fetch { uid, set, .. }
            | Body::Store { uid, set, .. }
            | Body::Copy { uid, set, .. }
                if set.is_saved() =>
            {
                *set = saved(*uid)
            }
            Body::Expunge(Some(set)) if set.is_saved() => *set = saved(true),
            Body::Search { key, .. } | Body::Sort { key, .. } | Body::Thread { key, .. } => {
                in_key(key, &saved)
            }
            _ => {}
        }
    }

    async fn starttls(&mut self, tag: &str) -> Result<Done, NetError> {
        if self.conn.is_tls() {
            return Ok(Done::Bad("TLS is already active".into()));
        }
        let Some(acceptor) = self.shared.tls.as_ref().and_then(ServerTls::acceptor) else {
            return Ok(Done::No("TLS is not available".into()));
        };
        if self.login.is_some() {
            return Ok(Done::Bad("STARTTLS only before login".into()));
        }
        self.conn
            .write(format!("{tag} OK begin TLS now\r\n").as_bytes());
        // start_tls sends the reply, then discards anything the client sent
        // after STARTTLS in the clear (CVE-2011-0411 class).
        self.conn.start_tls(&acceptor).await?;
        // The tagged reply went before the handshake; nothing more now.
        Ok(Done::Sent)
    }
}

/// The refusal of a command too big before login, after `lead` (`BAD` for
/// a tagged reply, `* BYE` when the session ends).
fn pre_login_refusal(lead: &str) -> String {
    format!("{lead} [TOOBIG] before login a command is limited to {PRE_LOGIN_COMMAND_MAX} bytes")
}

impl Session {
    async fn login(&mut self, user: String, password: String) -> Result<Done, NetError> {
        if self.login.is_some() {
            return Ok(Done::Bad("already logged in".into()));
        }
        if !self.may_authenticate() {
            return Ok(Done::No(
                "[PRIVACYREQUIRED] use STARTTLS (or port 993) before LOGIN".into(),
            ));
        }
        self.check_password(user, password).await
    }

    /// AUTHENTICATE PLAIN (RFC 4616), with SASL-IR (RFC 4959).
    async fn authenticate(
        &mut self,
        mechanism: &str,
        initial: Option<String>,
    ) -> Result<Done, NetError> {
        if self.login.is_some() {
            return Ok(Done::Bad("already logged in".into()));
        }
        if mechanism != "PLAIN" {
            return Ok(Done::No("unsupported mechanism; use PLAIN".into()));
        }
        if !self.may_authenticate() {
            return Ok(Done::No(
                "[PRIVACYREQUIRED] use STARTTLS (or port 993) before AUTHENTICATE".into(),
            ));
        }
        let response = match initial {
            Some(r) if r == "=" => String::new(),
            Some(r) => r,
            None => {
                self.conn.write(b"+ \r\n");
                self.conn.flush().await?;
                // Not logged in yet: held to the pre-login bound, and
                // refused the way an over-long command is (a BYE that is
                // not lost to a reset), not by a silent hang-up.
                match self.conn.read_line(PRE_LOGIN_COMMAND_MAX).await {
                    Ok(line) => String::from_utf8_lossy(&line).trim_end().to_string(),
                    Err(NetError::LineTooLong) => {
                        let bye = format!("{}\r\n", pre_login_refusal("* BYE"));
                        self.conn.write(bye.as_bytes());
                        self.conn.linger_close().await;
                        return Err(NetError::Closed);
                    }
                    Err(e) => return Err(e),
                }
            }
        };
        if response == "*" {
            return Ok(Done::Bad("authentication cancelled".into()));
        }
        use postroom::proto::sasl::{PlainRefusal, decode_plain_or_why};
        match decode_plain_or_why(&response) {
            Ok((user, password)) => self.check_password(user, password).await,
            Err(PlainRefusal::Malformed) => Ok(Done::Bad("malformed PLAIN response".into())),
            Err(PlainRefusal::OtherIdentity) => Ok(Done::No(
                "[AUTHORIZATIONFAILED] no acting as another user".into(),
            )),
        }
    }

    async fn check_password(&mut self, login: String, password: String) -> Result<Done, NetError> {
        let ip = self.conn.peer().map(|p| p.ip());
        let tried = login.clone();
        let checked = AuthLimit::from_config(&self.shared.config)
            .check_password(Service::Imap, ip, self.shared.users(), login, password)
            .await;
        match checked {
            Ok(Some(user)) => {
                let root = postroom::directory::users::maildir_of(&self.shared.config, &user);
                let mailbox = Mailbox::new(root);
                if let Err(e) = mailbox.ensure_defaults() {
                    tracing::error!(user = %user.address, "cannot prepare the mailbox: {e}");
                    return Ok(Done::No(
                        "[SERVERUNAVAILABLE] mailbox unavailable, try again later".into(),
                    ));
                }
                tracing::info!(user = %user.address, "logged in");
                let default_quota = self.shared.config.delivery.default_quota;
                self.login = Some(Login {
                    address: user.address.to_lowercase(),
                    mailbox,
                    quota: user.quota.or((default_quota > 0).then_some(default_quota)),
                });
                Ok(Done::Ok(format!(
                    "[CAPABILITY {}] logged in",
                    self.capabilities()
                )))
            }
            Err(CheckError::Refused(why)) => {
                tracing::info!(login = ?tried, %why, "login refused by the after-login hook");
                Ok(Done::No(format!("[CONTACTADMIN] {why}")))
            }
            Err(e) => {
                tracing::error!("password check failed: {e}");
                Ok(Done::No(
                    "[UNAVAILABLE] temporary authentication failure".into(),
                ))
            }
            Ok(None) => {
                self.auth_failures += 1;
                tracing::info!(login = ?tried, failures = self.auth_failures, "authentication failed");
                // The last failure allowed is answered like the others;
                // the BYE follows it (serve()), as Dovecot does.
                Ok(Done::No(
                    "[AUTHENTICATIONFAILED] authentication failed".into(),
                ))
            }
        }
    }

    /// The user's mailbox; `Err` (a BAD to return) before login, which
    /// command() already refuses, so it only guards against a slip there.
    pub fn mailbox(&self) -> Result<Mailbox, Done> {
        match &self.login {
            Some(login) => Ok(login.mailbox.clone()),
            None => Err(Done::Bad("log in first".into())),
        }
    }
}
