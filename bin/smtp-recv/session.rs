//! One SMTP session: the command table of RFC 5321 and its extensions.
//!
//! Replies are buffered and sent before any read that has to wait for the
//! client (RFC 2920 PIPELINING; `Connection::flush_before_reading`): a
//! pipelined batch gets its replies in one write, and a client that waits
//! for them before it sends more is never kept waiting.
//!
//! Policy, in the order a session meets it: the client must say
//! EHLO/HELO; AUTH only where `auth.plaintext` allows it (TLS or loopback
//! by default), and STARTTLS forgets it with everything else; in
//! `--submission` mode MAIL needs AUTH; after AUTH, on any port, the
//! sender must be one of the user's addresses (unless
//! `smtp.auth_sender_check` says otherwise); RCPT for a local domain must
//! resolve to a user, alias or catch-all; RCPT elsewhere needs AUTH or a
//! client in `smtp.relay_networks`. `%`, `!`, quoted local parts and source
//! routes never route anything: an address is local or it is relaying.

use std::sync::Arc;

use base64::Engine;
use postroom::config::Config;
use postroom::config::login::Service;
use postroom::delivery::deliver::{self, Early};
use postroom::delivery::envelope_smtp;
use postroom::delivery::mailall;
use postroom::directory::access::Access;
use postroom::directory::aliases::{Directory, ResolveError, Target};
use postroom::directory::authlimit::{AuthLimit, CheckError};
use postroom::directory::reloading::Reloading;
use postroom::net::tls::ServerTls;
use postroom::net::{Connection, NetError};
use postroom::proto::address::{Address, EnvelopeText, ReversePath};
use postroom::proto::message::HeaderEnd;
use postroom::proto::smtp::{
    BdatError, DataLine, DataProblem, DataReader, Network, PathCommand, Reply, has_nul,
    is_bare_postmaster, is_clean_command, parse_bdat, path_command,
};
use postroom::store::queue::{self, Envelope, Incoming, Queue, Recipient, Staged};
use smtp_proto::Request;

use crate::hooks;

/// Longest DATA line read; RFC 5321 asks for 1000, real mail is sloppier.
const BODY_LINE_MAX: usize = 64 * 1024;
/// Failed AUTH attempts before the session is dropped.
const AUTH_FAILURES_MAX: u32 = 3;

/// What every session of this process shares.
pub struct Shared {
    pub config: Config,
    submission: bool,
    /// A local user on a pipe (`mail-inject -bs`): trusted as mail-inject
    /// trusts them, so they may send anywhere.
    local: bool,
    tls: Option<ServerTls>,
    relay_networks: Vec<Network>,
    directory: Reloading<Directory>,
    access: Reloading<Access>,
    /// Only when `smtp.dnsbl` names zones.
    resolver: Option<hickory_resolver::TokioResolver>,
    /// Only when SPF, DKIM or DMARC checks are on.
    authenticator: Option<mail_auth::MessageAuthenticator>,
}

impl Shared {
    pub fn new(
        config: Config,
        submission: bool,
        local: bool,
        tls: Option<ServerTls>,
    ) -> anyhow::Result<Shared> {
        let relay_networks = config
            .smtp
            .relay_networks
            .iter()
            .map(|n| Network::parse(n).map_err(anyhow::Error::msg))
            .collect::<anyhow::Result<_>>()?;
        let directory = Reloading::directory(&config)?;
        let access = Reloading::access(&config)?;
        let resolver = if config.smtp.dnsbl.is_empty() {
            None
        } else {
            Some(postroom::net::dns::resolver(&config)?)
        };
        let checks = &config.smtp;
        let authenticator = if checks.spf || checks.dkim || checks.dmarc || checks.arc {
            Some(postroom::net::dns::authenticator(&config)?)
        } else {
            None
        };
        Ok(Shared {
            resolver,
            authenticator,
            config,
            submission,
            local,
            tls,
            relay_networks,
            directory,
            access,
        })
    }

    /// The users, aliases and domains, reloaded if one of their files
    /// changed; a version that does not load keeps the last good one in
    /// force (logged), so a typo does not stop mail.
    fn directory(&self) -> Arc<Directory> {
        self.directory.current()
    }

    /// The access rules, reloaded the same way.
    fn access(&self) -> Arc<Access> {
        self.access.current()
    }
}

/// One mail transaction, MAIL to the end of DATA.
struct Transaction {
    sender: ReversePath,
    recipients: Vec<Recipient>,
    /// RCPT commands accepted (one may expand to several recipients).
    accepted: Vec<Address>,
    /// ENVID, BODY, RET and SMTPUTF8 from MAIL.
    params: envelope_smtp::MailParams,
    /// The SPF result for MAIL FROM, when SPF is checked.
    spf: Option<mail_auth::SpfOutput>,
}

struct Session {
    shared: Arc<Shared>,
    conn: Connection,
    helo: Option<String>,
    esmtp: bool,
    /// The authenticated user (their address).
    user: Option<String>,
    tx: Option<Transaction>,
    /// A message arriving in BDAT chunks.
    chunks: Option<Chunks>,
    errors: usize,
    messages: usize,
    auth_failures: u32,
}

/// A message being received by BDAT: the line-end rule across chunk
/// boundaries, the size limit, the first write error.
struct Chunks {
    tx: Transaction,
    incoming: Incoming,
    max_size: u64,
    size: u64,
    previous: u8,
    bare_line_end: bool,
    nul: bool,
    failed: Option<std::io::Error>,
    header_end: HeaderEnd,
}

impl Chunks {
    fn new(tx: Transaction, incoming: Incoming, max_size: u64) -> Chunks {
        Chunks {
            tx,
            incoming,
            max_size,
            size: 0,
            previous: b'\n',
            bare_line_end: false,
            nul: false,
            failed: None,
            header_end: HeaderEnd::crlf(),
        }
    }

    /// The message, or the reply that refuses it.
    fn finish(mut self) -> Result<(Transaction, Incoming, u64), Reply> {
        let mut tail = Vec::new();
        self.header_end.finish(&mut tail);
        if self.failed.is_none() {
            self.failed = std::io::Write::write_all(&mut self.incoming, &tail).err();
        }
        if self.bare_line_end || self.previous == b'\r' {
            return Err(DataProblem::BareLineEnd.reply(self.max_size));
        }
        if self.nul {
            return Err(DataProblem::Nul.reply(self.max_size));
        }
        if self.size > self.max_size {
            return Err(DataProblem::TooBig.reply(self.max_size));
        }
        if let Some(e) = self.failed {
            tracing::error!("writing the message failed: {e}");
            return Err(Reply::new(
                451,
                "4.3.0",
                "local error in processing, try again later",
            ));
        }
        Ok((self.tx, self.incoming, self.size))
    }
}

impl std::io::Write for Chunks {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        for &b in buf {
            match (self.previous, b) {
                (b'\r', b'\n') => {}
                (b'\r', _) | (_, b'\n') => self.bare_line_end = true,
                _ => {}
            }
            self.previous = b;
        }
        self.nul |= has_nul(buf);
        self.size += buf.len() as u64;
        // A doomed message is read to its end but no longer stored.
        let doomed = self.bare_line_end || self.nul || self.size > self.max_size;
        if !doomed && self.failed.is_none() {
            let mut fixed = Vec::with_capacity(buf.len() + 2);
            self.header_end.feed(buf, &mut fixed);
            self.failed = self.incoming.write_all(&fixed).err();
        }
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

/// Whether the session goes on after a command.
enum Next {
    Continue,
    Quit,
}

pub async fn run(shared: Arc<Shared>, mut conn: Connection) {
    conn.flush_before_reading();
    let greeting = Reply::new(
        220,
        "",
        format!("{} {}", shared.config.hostname, shared.config.smtp.greeting),
    );
    let mut session = Session {
        shared,
        conn,
        helo: None,
        esmtp: false,
        user: None,
        tx: None,
        chunks: None,
        errors: 0,
        messages: 0,
        auth_failures: 0,
    };
    if let Some(refusal) = Box::pin(session.refuse_at_connect()).await {
        session.reply(refusal);
        let _ = session.conn.flush().await;
        return;
    }
    session.reply(greeting);
    if let Err(e) = session.serve().await {
        tracing::info!("session ended: {e}");
    }
}

impl Session {
    /// The access file's IP rules, then the connect hook.
    async fn refuse_at_connect(&mut self) -> Option<Reply> {
        if let Some(ip) = self.conn.peer().map(|p| p.ip())
            && !self.shared.access().allows(ip)
        {
            tracing::info!(%ip, "denied by the access file");
            return Some(Reply::new(554, "5.7.1", "access denied"));
        }
        if let Some(reply) = self.dnsbl().await {
            return Some(reply);
        }
        self.hook("connect", None).await.map(|mut r| {
            // A refusal at connect is a 554 (RFC 5321 §3.1) or a 421.
            r.code = if r.code >= 500 { 554 } else { 421 };
            r
        })
    }

    /// SPF for the transaction's MAIL FROM (or the HELO name for the null
    /// sender), when `smtp.spf` is on.
    async fn check_spf(&mut self) -> Option<mail_auth::SpfOutput> {
        let shared = self.shared.clone();
        let (true, Some(authenticator), Some(ip), Some(tx)) = (
            shared.config.smtp.spf,
            shared.authenticator.as_ref(),
            self.conn.peer().map(|p| p.ip()),
            self.tx.as_ref(),
        ) else {
            return None;
        };
        let helo = self.helo.clone().unwrap_or_default();
        let sender = tx.sender.to_string();
        let params = mail_auth::spf::verify::SpfParameters::verify_mail_from(
            ip,
            &helo,
            &shared.config.hostname,
            &sender,
        );
        Some(authenticator.verify_spf(params).await)
    }

    /// The Authentication-Results header (RFC 8601) for a received message:
    /// SPF from MAIL time, DKIM and DMARC now. `None` when no check is on.
    /// A message over [`DKIM_MAX`] is not DKIM-verified (reading it all
    /// would cost that much memory) rather than judged on a body cut
    /// short: each signature gets `dkim=neutral` with the reason, RFC
    /// 8601 §2.7.1's result for a signature "not otherwise able to be
    /// processed" (mail-auth gives it to one it cannot evaluate, such as
    /// an expired one).
    async fn authentication_results(
        &mut self,
        tx: &Transaction,
        staged: &Staged,
    ) -> Option<String> {
        let shared = self.shared.clone();
        let authenticator = shared.authenticator.as_ref()?;
        let config = &shared.config;
        let ip = self
            .conn
            .peer()
            .map(|p| p.ip())
            .unwrap_or(std::net::IpAddr::from([127, 0, 0, 1]));
        let helo = self.helo.clone().unwrap_or_default();
        let sender = tx.sender.to_string();
        let too_large = staged.message.body_length() > DKIM_MAX;
        let mut raw = Vec::new();
        if let Ok(mut body) = staged.message.body() {
            // Past DKIM_MAX only the header block is read: it tells DMARC
            // the From domain and shows whether the message is signed.
            let limit = if too_large { 1 << 20 } else { DKIM_MAX };
            let _ =
                std::io::Read::read_to_end(&mut std::io::Read::take(&mut body, limit), &mut raw);
        }
        if too_large {
            raw.truncate(postroom::proto::message::header_len(&raw));
        }
        let mut results = mail_auth::AuthenticationResults::new(&config.hostname);
        if let Some(spf) = &tx.spf {
            results = results.with_spf_mailfrom_result(spf, ip, &sender, &helo);
        }
        // Each method is appended in turn, so a skipped one can say why.
        let more = || mail_auth::AuthenticationResults::new("");
        let mut text = results.to_string();
        let mut arc_entry = String::new();
        let message = mail_auth::AuthenticatedMessage::parse(&raw);
        if let Some(message) = &message {
            let unverified = too_large && !message.dkim_headers.is_empty();
            let dkim = if (config.smtp.dkim || config.smtp.dmarc) && !too_large {
                authenticator.verify_dkim(message).await
            } else {
                Vec::new()
            };
            let from = message.from().to_string();
            if config.smtp.dkim {
                if unverified {
                    // One entry a signature, as for verified ones.
                    for header in &message.dkim_headers {
                        text.push_str(&format!(";\r\n\tdkim=neutral reason=\"{TOO_LARGE}\""));
                        if let Ok(signature) = &header.header
                            && [&signature.d, &signature.s].iter().all(|v| is_token(v))
                        {
                            text.push_str(&format!(
                                " header.d={} header.s={}",
                                signature.d, signature.s
                            ));
                        }
                    }
                } else {
                    text.push_str(&more().with_dkim_results(&dkim, &from).to_string());
                }
            }
            if config.smtp.dmarc {
                let spf_for_dmarc = match &tx.spf {
                    Some(spf) => spf.clone(),
                    None => {
                        authenticator
                            .verify_spf(mail_auth::spf::verify::SpfParameters::verify_mail_from(
                                ip,
                                &helo,
                                &config.hostname,
                                &sender,
                            ))
                            .await
                    }
                };
                let mail_from_domain = tx
                    .sender
                    .address()
                    .map(|a| a.domain().to_string())
                    .unwrap_or(helo.clone());
                let dmarc = authenticator
                    .verify_dmarc(mail_auth::dmarc::verify::DmarcParameters::new(
                        message,
                        &dkim,
                        &mail_from_domain,
                        &spf_for_dmarc,
                    ))
                    .await;
                let passed = *dmarc.spf_result() == mail_auth::DmarcResult::Pass
                    || *dmarc.dkim_result() == mail_auth::DmarcResult::Pass;
                if unverified && !passed {
                    // Without the signature checked, a failure says nothing.
                    text.push_str(&format!(
                        ";\r\n\tdmarc=none reason=\"{TOO_LARGE}; DKIM not verified\" header.from={}",
                        dmarc.domain()
                    ));
                } else {
                    text.push_str(&more().with_dmarc_result(&dmarc).to_string());
                }
            }
            if config.smtp.arc {
                let chain = !message.ams_headers.is_empty() || !message.as_headers.is_empty();
                if too_large && chain {
                    // As for DKIM: a chain not checked is no verdict, and
                    // a redirect of it goes on unsealed (`delivery::arc`).
                    arc_entry = format!(";\r\n\tarc=neutral reason=\"{TOO_LARGE}\"");
                } else {
                    let arc = authenticator.verify_arc(message).await;
                    arc_entry = postroom::delivery::arc::result_entry(arc.result(), ip);
                }
            }
        }
        // The ARC verdict comes first, right after our name: the sealer
        // reads only that entry (`delivery::arc`), so text a sender put in
        // a later one (a HELO name or address in SPF's comment, say
        // `x;arc=pass`) cannot pass for it.
        if !arc_entry.is_empty() {
            let at = config.hostname.len().min(text.len());
            text.insert_str(at, &arc_entry);
        }
        if text == config.hostname {
            text.push_str("; none");
        }
        Some(format!("Authentication-Results: {text}"))
    }

    /// The DNS blocklists of `smtp.dnsbl`, in order. A zone that does not
    /// answer lets the client in (logged): a dead blocklist must not stop mail.
    async fn dnsbl(&mut self) -> Option<Reply> {
        let (Some(resolver), Some(ip)) = (&self.shared.resolver, self.conn.peer().map(|p| p.ip()))
        else {
            return None;
        };
        for zone in &self.shared.config.smtp.dnsbl {
            match postroom::net::dns::dnsbl_listed(resolver, ip, zone).await {
                Ok(Some(code)) => {
                    tracing::info!(%ip, zone, %code, "listed in a DNS blocklist");
                    return Some(Reply::new(
                        554,
                        "5.7.1",
                        format!("{ip} is listed in {zone} ({code})"),
                    ));
                }
                Ok(None) => {}
                Err(e) => tracing::warn!("{e}; letting the client in"),
            }
        }
        None
    }

    /// Runs the hook for `stage`, if one is configured; `Some(reply)` if it
    /// refused. Accepted data-hook headers are returned through `headers`.
    async fn hook(&mut self, stage: &str, rcpt: Option<&str>) -> Option<Reply> {
        match self.run_hook(stage, rcpt, None).await {
            hooks::Verdict::Accept { .. } => None,
            hooks::Verdict::Refuse(reply) => Some(reply),
        }
    }

    async fn run_hook(
        &mut self,
        stage: &str,
        rcpt: Option<&str>,
        stdin: Option<Box<dyn std::io::Read + Send>>,
    ) -> hooks::Verdict {
        let hooks = &self.shared.config.smtp.hooks;
        let command = match stage {
            "connect" => &hooks.connect,
            "helo" => &hooks.helo,
            "mail" => &hooks.mail,
            "rcpt" => &hooks.rcpt,
            _ => &hooks.data,
        };
        let Some(command) = command.clone() else {
            return hooks::Verdict::Accept {
                headers: Vec::new(),
            };
        };
        let env = [
            ("STAGE", stage.to_string()),
            (
                "REMOTE_IP",
                self.conn
                    .peer()
                    .map(|p| p.ip().to_string())
                    .unwrap_or_default(),
            ),
            ("HELO", self.helo.clone().unwrap_or_default()),
            (
                "SENDER",
                self.tx
                    .as_ref()
                    .map(|t| t.sender.to_string())
                    .unwrap_or_default(),
            ),
            ("RECIPIENT", rcpt.unwrap_or_default().to_string()),
            ("AUTH_USER", self.user.clone().unwrap_or_default()),
            (
                "TLS",
                if self.conn.is_tls() { "yes" } else { "no" }.to_string(),
            ),
        ];
        let timeout = hooks.timeout;
        let verdict = hooks::run(&command, &env, stdin, timeout).await;
        if let hooks::Verdict::Refuse(reply) = &verdict {
            tracing::info!(stage, %reply, "hook refused");
        }
        verdict
    }

    /// Logs a local failure and tells the client to try again later: the
    /// message was not accepted, so nothing is lost.
    fn local_error(&mut self, what: std::fmt::Arguments<'_>) {
        tracing::error!("{what}");
        self.reply(Reply::new(
            451,
            "4.3.0",
            "local error in processing, try again later",
        ));
    }

    fn reply(&mut self, reply: Reply) {
        if !reply.is_positive() {
            tracing::debug!(%reply, "refused");
        }
        self.conn.write(&reply.to_bytes());
    }

    async fn serve(&mut self) -> Result<(), NetError> {
        let max = self.shared.config.limits.line_length;
        loop {
            let line = match self.conn.read_line(max).await {
                Ok(line) => line,
                Err(NetError::LineTooLong) if self.conn.long_line_began_with(b"BDAT ") => {
                    // Its chunk follows at once and can no longer be told
                    // from commands: the session cannot go on (as Postfix).
                    self.reply(Reply::new(
                        521,
                        "5.5.4",
                        "BDAT line too long; the chunk cannot be told from commands, closing",
                    ));
                    return self.conn.flush().await;
                }
                Err(NetError::LineTooLong) => {
                    self.error(Reply::new(500, "5.5.2", "line too long"));
                    if self.too_many_errors().await? {
                        return Ok(());
                    }
                    continue;
                }
                Err(NetError::Timeout) => return self.timed_out().await,
                Err(e) => return Err(e),
            };
            // Boxed: a command's state (DATA, AUTH, DNS checks, hooks) lives
            // on the heap only while it runs, so an idle session's task stays
            // small (10,000 idle sessions must fit in well under 200 MB).
            let next = match Box::pin(self.command(&line)).await {
                Ok(next) => next,
                // Silence inside DATA, a BDAT chunk or an AUTH exchange.
                Err(NetError::Timeout) => return self.timed_out().await,
                Err(e) => return Err(e),
            };
            if matches!(next, Next::Quit) || self.too_many_errors().await? {
                return self.conn.flush().await;
            }
        }
    }

    /// `limits.idle_timeout` without a byte from the client, between
    /// commands or inside one: a message half received is dropped (its
    /// queue file goes with it), the 421 goes out after any replies still
    /// queued, and the session ends.
    async fn timed_out(&mut self) -> Result<(), NetError> {
        self.tx = None;
        self.chunks = None;
        let host = self.shared.config.hostname.clone();
        self.reply(Reply::new(
            421,
            "4.4.2",
            format!("{host} timeout: idle too long, closing"),
        ));
        self.conn.flush().await
    }

    fn error(&mut self, reply: Reply) {
        self.errors += 1;
        self.reply(reply);
    }

    async fn too_many_errors(&mut self) -> Result<bool, NetError> {
        if self.errors < self.shared.config.limits.errors {
            return Ok(false);
        }
        self.reply(Reply::new(421, "4.7.0", "too many errors, closing"));
        self.conn.flush().await?;
        Ok(true)
    }

    async fn command(&mut self, line: &[u8]) -> Result<Next, NetError> {
        // BDAT first, and by our own parser: a chunk whose size cannot be
        // trusted cannot be skipped, so a bad BDAT line (bare LF included)
        // ends the session rather than run the chunk as commands.
        let max_size = self.shared.config.limits.message_size;
        if let Some(bdat) = parse_bdat(line, max_size) {
            return match bdat.and_then(|b| {
                usize::try_from(b.size)
                    .map(|size| (size, b.last))
                    .map_err(|_| BdatError::TooBig)
            }) {
                Ok((size, last)) => self.bdat(size, last).await.map(|()| Next::Continue),
                Err(e) => Ok(self.malformed_bdat(e)),
            };
        }
        if !is_clean_command(line) {
            self.error(Reply::new(
                500,
                "5.5.2",
                "commands must end with CRLF; bare CR or LF refused",
            ));
            return Ok(Next::Continue);
        }
        if has_nul(line) {
            self.error(Reply::new(
                500,
                "5.5.2",
                "NUL bytes are refused in commands",
            ));
            return Ok(Next::Continue);
        }
        let request = match Request::parse(&mut line.iter()) {
            Ok(r) => r.into_owned(),
            Err(e) => {
                self.error(syntax_reply(&e));
                return Ok(Next::Continue);
            }
        };
        // MAIL and RCPT read again as written, for what smtp-proto's parse
        // loses (quoted local parts, a SIZE past 20 digits) or lets
        // through (DSN parameters): see `PathCommand`.
        let written = match &request {
            Request::Mail { .. } | Request::Rcpt { .. } => path_command(line),
            _ => None,
        };
        if let Some(Err(refusal)) = written.as_ref().map(PathCommand::check_params) {
            self.error(refusal);
            return Ok(Next::Continue);
        }
        match request {
            Request::Ehlo { host } => self.hello(host, true).await,
            Request::Helo { host } => self.hello(host, false).await,
            Request::StartTls => return self.starttls().await.map(|()| Next::Continue),
            Request::Auth {
                mechanism,
                initial_response,
            } => {
                return self.auth(mechanism, initial_response).await;
            }
            Request::Mail { from } => self.mail(from, written).await,
            Request::Rcpt { to } => self.rcpt(to, written, is_bare_postmaster(line)).await,
            Request::Data => return self.data().await.map(|()| Next::Continue),
            Request::Etrn { name } => self.etrn(name),
            // Taken by parse_bdat above; never run on smtp-proto's size.
            Request::Bdat { .. } => return Ok(self.malformed_bdat(BdatError::Syntax)),
            Request::Rset => {
                self.tx = None;
                self.chunks = None;
                self.reply(Reply::new(250, "2.0.0", "reset"));
            }
            Request::Noop { .. } => self.reply(Reply::new(250, "2.0.0", "ok")),
            Request::Vrfy { .. } => self.reply(Reply::new(
                252,
                "2.1.5",
                "cannot verify, but send some mail and it will be tried",
            )),
            Request::Help { .. } => {
                self.reply(Reply::new(214, "2.0.0", "see RFC 5321; smtp-recv(8)"))
            }
            Request::Quit => {
                self.reply(Reply::new(
                    221,
                    "2.0.0",
                    format!("{} closing", self.shared.config.hostname),
                ));
                return Ok(Next::Quit);
            }
            other => self.error(Reply::new(
                502,
                "5.5.1",
                format!("{} is not implemented here", other.name()),
            )),
        }
        Ok(Next::Continue)
    }

    /// A BDAT that cannot be used: the last reply, then the session ends
    /// (whatever the client sends next may be chunk bytes).
    fn malformed_bdat(&mut self, error: BdatError) -> Next {
        tracing::info!(?error, "malformed BDAT, closing");
        self.chunks = None;
        self.tx = None;
        self.reply(error.reply(self.shared.config.limits.message_size));
        Next::Quit
    }

    async fn hello(&mut self, host: String, esmtp: bool) {
        if host.chars().any(char::is_control) || host.len() > 255 {
            self.error(Reply::new(501, "5.5.4", "invalid host name"));
            return;
        }
        self.helo = Some(host);
        self.chunks = None;
        if let Some(refusal) = self.hook("helo", None).await {
            self.helo = None;
            return self.error(refusal);
        }
        self.esmtp = esmtp;
        self.tx = None;
        let config = &self.shared.config;
        if !esmtp {
            self.reply(Reply::new(250, "", config.hostname.clone()));
            return;
        }
        let mut caps = vec![
            config.hostname.clone(),
            "PIPELINING".into(),
            format!("SIZE {}", config.limits.message_size),
            "8BITMIME".into(),
            "SMTPUTF8".into(),
            "ENHANCEDSTATUSCODES".into(),
            "DSN".into(),
            "CHUNKING".into(),
        ];
        if self.conn.may_starttls(self.shared.tls.as_ref()) {
            caps.push("STARTTLS".into());
        }
        if self.may_authenticate() && self.user.is_none() {
            caps.push("AUTH PLAIN LOGIN".into());
        }
        caps.push("HELP".into());
        self.reply(Reply::multi(250, caps));
    }

    /// Submission rules apply with `--submission`, or on a systemd socket
    /// named `submission` or `submissions`, so one process can serve 25,
    /// 587 and 465 with the right rules on each.
    fn submission(&self) -> bool {
        self.shared.submission || matches!(self.conn.listener_name(), "submission" | "submissions")
    }

    fn may_authenticate(&self) -> bool {
        self.conn
            .may_send_password(self.shared.config.auth.plaintext_rule())
    }

    async fn starttls(&mut self) -> Result<(), NetError> {
        if self.conn.is_tls() {
            self.error(Reply::new(503, "5.5.1", "TLS already active"));
            return Ok(());
        }
        let Some(acceptor) = self.shared.tls.as_ref().and_then(ServerTls::acceptor) else {
            self.error(Reply::new(454, "4.7.0", "TLS not available"));
            return Ok(());
        };
        self.reply(Reply::new(220, "2.0.0", "ready to start TLS"));
        // start_tls sends the reply, then discards anything the client sent
        // after STARTTLS in the clear (CVE-2011-0411 class).
        self.conn.start_tls(&acceptor).await?;
        // RFC 3207 §4.2: forget everything learned before TLS, the
        // authenticated identity included (as Postfix does): a login made
        // in the clear must not carry over into the protected session.
        self.helo = None;
        self.esmtp = false;
        self.user = None;
        self.tx = None;
        self.chunks = None;
        Ok(())
    }

    async fn auth(&mut self, mechanism: u64, initial: String) -> Result<Next, NetError> {
        if !self.esmtp {
            self.error(Reply::new(503, "5.5.1", "say EHLO first"));
            return Ok(Next::Continue);
        }
        if self.user.is_some() || self.tx.is_some() {
            self.error(Reply::new(
                503,
                "5.5.1",
                "already authenticated, or inside a transaction",
            ));
            return Ok(Next::Continue);
        }
        if !self.may_authenticate() {
            self.error(Reply::new(
                538,
                "5.7.11",
                "encryption required: use STARTTLS first",
            ));
            return Ok(Next::Continue);
        }
        let credentials = match mechanism {
            smtp_proto::AUTH_PLAIN => {
                let response = if initial.is_empty() {
                    self.challenge("").await?
                } else {
                    Some(initial)
                };
                response.and_then(|r| postroom::proto::sasl::decode_plain(&r))
            }
            smtp_proto::AUTH_LOGIN => {
                let user = if initial.is_empty() {
                    self.challenge("VXNlcm5hbWU6").await?
                } else {
                    Some(initial)
                };
                let user = user.and_then(|u| decode_base64(&u));
                match user {
                    Some(user) => self
                        .challenge("UGFzc3dvcmQ6")
                        .await?
                        .and_then(|p| decode_base64(&p))
                        .map(|p| (user, p)),
                    None => None,
                }
            }
            _ => {
                self.error(Reply::new(
                    504,
                    "5.5.4",
                    "mechanism not supported; use PLAIN or LOGIN",
                ));
                return Ok(Next::Continue);
            }
        };
        let Some((login, password)) = credentials else {
            self.error(Reply::new(
                501,
                "5.5.2",
                "cancelled or malformed authentication",
            ));
            return Ok(Next::Continue);
        };
        let ip = self.conn.peer().map(|p| p.ip());
        let tried = login.clone();
        let checked = AuthLimit::from_config(&self.shared.config)
            .check_password(
                Service::Smtp,
                ip,
                self.shared.directory().shared_users(),
                login,
                password,
            )
            .await
            .map(|user| user.map(|u| u.address));
        match checked {
            Ok(Some(user)) => {
                tracing::info!(%user, "authenticated");
                self.user = Some(user);
                self.reply(Reply::new(235, "2.7.0", "authenticated"));
            }
            Err(CheckError::Refused(why)) => {
                tracing::info!(login = ?tried, %why, "login refused by the after-login hook");
                self.error(Reply::new(535, "5.7.1", why));
            }
            Err(e) => {
                tracing::error!("password check failed: {e}");
                self.reply(Reply::new(454, "4.7.0", "temporary authentication failure"));
            }
            Ok(None) => {
                self.auth_failures += 1;
                tracing::info!(login = ?tried, failures = self.auth_failures, "authentication failed");
                self.error(Reply::new(535, "5.7.8", "authentication failed"));
                if self.auth_failures >= AUTH_FAILURES_MAX {
                    self.reply(Reply::new(421, "4.7.0", "too many authentication failures"));
                    return Ok(Next::Quit);
                }
            }
        }
        Ok(Next::Continue)
    }

    /// Sends `334 challenge`, reads the answer; `None` if cancelled (`*`).
    async fn challenge(&mut self, text: &str) -> Result<Option<String>, NetError> {
        self.conn.write(format!("334 {text}\r\n").as_bytes());
        self.conn.flush().await?;
        let line = self
            .conn
            .read_line(self.shared.config.limits.line_length)
            .await?;
        let answer = String::from_utf8_lossy(&line).trim_end().to_string();
        Ok((answer != "*").then_some(answer))
    }

    /// MAIL; `written` is the line as the client wrote it, when it reads.
    async fn mail(
        &mut self,
        mut from: smtp_proto::MailFrom<String>,
        written: Option<PathCommand<'_>>,
    ) {
        let config = &self.shared.config;
        if self.helo.is_none() {
            return self.error(Reply::new(503, "5.5.1", "say EHLO or HELO first"));
        }
        if self.tx.is_some() || self.chunks.is_some() {
            return self.error(Reply::new(503, "5.5.1", "nested MAIL command"));
        }
        if self.submission() && self.user.is_none() {
            return self.error(Reply::new(530, "5.7.0", "authentication required"));
        }
        if self.messages >= config.smtp.messages_per_session {
            return self.error(Reply::new(
                451,
                "4.7.0",
                "too many messages in one session, reconnect",
            ));
        }
        // smtp-proto's SIZE wraps past 20 digits; the line's does not.
        let size = written
            .as_ref()
            .and_then(PathCommand::declared_size)
            .unwrap_or(from.size as u64);
        if size > config.limits.message_size {
            return self.error(Reply::new(
                552,
                "5.3.4",
                format!("message too big (limit {})", config.limits.message_size),
            ));
        }
        if let Some(mailbox) = written.as_ref().and_then(PathCommand::quoted_mailbox) {
            from.address = mailbox;
        }
        let smtputf8 = from.flags & smtp_proto::MAIL_SMTPUTF8 != 0;
        if !smtputf8 && !from.address.is_ascii() {
            // RFC 6531 §3.4: an internationalized address needs the
            // SMTPUTF8 parameter, so that the client knows it sent one.
            return self.error(Reply::new(
                553,
                "5.6.7",
                "non-ASCII sender address without SMTPUTF8: add the SMTPUTF8 parameter to MAIL",
            ));
        }
        let sender = match ReversePath::parse(&from.address) {
            Ok(s) => s,
            Err(e) => {
                return self.error(Reply::new(501, "5.1.7", format!("bad sender address: {e}")));
            }
        };
        if self.sender_rule_applies() && !self.sender_is_users(&sender) {
            return self.error(Reply::new(
                553,
                "5.7.1",
                format!("<{sender}> is not one of your addresses"),
            ));
        }
        let params = match envelope_smtp::mail_params(&from) {
            Ok(params) => params,
            Err(e @ envelope_smtp::ParamError::Envid) => {
                return self.error(Reply::new(501, "5.5.4", e.to_string()));
            }
            Err(e @ envelope_smtp::ParamError::BinaryMime) => {
                return self.error(Reply::new(504, "5.5.4", e.to_string()));
            }
        };
        if let Some(address) = sender.address()
            && self.shared.access().rejects_sender(address)
        {
            tracing::info!(sender = %address, "sender in the kill file");
            return self.error(Reply::new(
                550,
                "5.7.1",
                format!("<{address}>: sender refused"),
            ));
        }
        tracing::info!(sender = %sender, "MAIL");
        self.tx = Some(Transaction {
            sender,
            recipients: Vec::new(),
            accepted: Vec::new(),
            params,
            spf: None,
        });
        let spf = self.check_spf().await;
        if let Some(tx) = self.tx.as_mut() {
            tx.spf = spf;
        }
        if let Some(refusal) = self.hook("mail", None).await {
            self.tx = None;
            return self.error(refusal);
        }
        self.reply(Reply::new(250, "2.1.0", "sender ok"));
    }

    /// Whether the sender must be the user's own: after AUTH on any port
    /// (on port 25 too, or a stolen password would send as anyone), unless
    /// `smtp.auth_sender_check` is off or exempts this login.
    fn sender_rule_applies(&self) -> bool {
        let Some(user) = &self.user else {
            return false;
        };
        let smtp = &self.shared.config.smtp;
        smtp.auth_sender_check
            && !smtp
                .auth_sender_exempt
                .iter()
                .any(|login| login.eq_ignore_ascii_case(user))
    }

    /// The sender must be the user, or an address whose aliases reach the
    /// user's mailbox (no sender spoofing); `+tag` and case variants
    /// resolve to the user too. The null sender is refused: people do not
    /// send bounces.
    fn sender_is_users(&self, sender: &ReversePath) -> bool {
        let (Some(user), Some(address)) = (&self.user, sender.address()) else {
            return false;
        };
        if address.lookup_key() == *user {
            return true;
        }
        let directory = self.shared.directory();
        directory.is_local_domain(address.domain())
            && directory
                .resolve(address)
                .map(|targets| {
                    targets
                        .iter()
                        .any(|t| matches!(t, Target::Mailbox(m) if m.lookup_key() == *user))
                })
                .unwrap_or(false)
    }

    /// RCPT; `bare_postmaster` when the path was `<Postmaster>` with no
    /// domain, which smtp-proto hands over as an empty address.
    /// `written` is the line as the client wrote it, when it reads.
    async fn rcpt(
        &mut self,
        mut to: smtp_proto::RcptTo<String>,
        written: Option<PathCommand<'_>>,
        bare_postmaster: bool,
    ) {
        if let Some(mailbox) = written.as_ref().and_then(PathCommand::quoted_mailbox) {
            to.address = mailbox;
        }
        let limit = self.shared.config.limits.recipients;
        let relay_ok = self.user.is_some() || self.shared.local || self.client_in_relay_networks();
        let Some(tx) = self.tx.as_ref() else {
            return self.error(Reply::new(503, "5.5.1", "MAIL first"));
        };
        let sender = tx.sender.clone();
        if tx.accepted.len() >= limit {
            return self.reply(Reply::new(
                452,
                "4.5.3",
                format!("too many recipients (limit {limit})"),
            ));
        }
        if !tx.params.smtputf8 && !to.address.is_ascii() {
            return self.error(Reply::new(
                553,
                "5.6.7",
                "non-ASCII recipient address without SMTPUTF8: give SMTPUTF8 on MAIL",
            ));
        }
        if bare_postmaster && to.address.is_empty() {
            // RFC 5321 §4.5.1: "Postmaster" alone must be accepted, and
            // means the postmaster of the primary domain.
            match self.shared.directory().primary_domain() {
                Some(domain) => to.address = format!("postmaster@{domain}"),
                None => {
                    return self.error(Reply::new(
                        550,
                        "5.1.1",
                        "<postmaster>: there is no local domain (postroom domain add)",
                    ));
                }
            }
        }
        let address = match Address::parse(&to.address) {
            Ok(a) => a,
            Err(e) => {
                return self.error(Reply::new(
                    501,
                    "5.1.3",
                    format!("bad recipient address: {e}"),
                ));
            }
        };
        let directory = self.shared.directory();
        let relay_domain = self
            .shared
            .config
            .smtp
            .relay_domains
            .iter()
            .any(|d| d.eq_ignore_ascii_case(address.domain()));
        if !directory.is_local_domain(address.domain()) && !relay_ok && !relay_domain {
            tracing::info!(rcpt = %address, "relay refused");
            return self.error(Reply::new(
                554,
                "5.7.1",
                format!("<{address}>: relay access denied"),
            ));
        }
        let everyone =
            mailall::everyone(&self.shared.config, &directory, &address, &sender, relay_ok);
        let resolved = match everyone {
            mailall::Everyone::Refused(text) => {
                return self.error(Reply::new(550, "5.7.1", text));
            }
            mailall::Everyone::Routes(routes) => Ok(routes),
            mailall::Everyone::NotIt => directory.routes_for(&address),
        };
        let mut routes = match resolved {
            Ok(routes) => routes,
            Err(ResolveError::UnknownUser(_)) => {
                return self.error(Reply::new(
                    550,
                    "5.1.1",
                    format!("<{address}>: no such user here"),
                ));
            }
            Err(e) if e.is_temporary() => {
                return self.reply(Reply::new(451, "4.3.0", format!("<{address}>: {e}")));
            }
            Err(e) => return self.error(Reply::new(550, "5.4.6", format!("<{address}>: {e}"))),
        };
        envelope_smtp::apply_rcpt_params(&mut routes, &to);
        if let Some(refusal) = self.hook("rcpt", Some(&address.to_string())).await {
            return self.error(refusal);
        }
        let check = postroom::delivery::quota::rcpt_check(
            &self.shared.config,
            self.shared.directory().users(),
            &routes,
        );
        let full = match check {
            Some(check) => tokio::task::spawn_blocking(move || check.refusal())
                .await
                .ok()
                .flatten(),
            None => None,
        };
        if let Some((code, status, text)) = full {
            tracing::info!(rcpt = %address, "mailbox full");
            return self.reply(Reply::new(code, status, text));
        }
        let Some(tx) = self.tx.as_mut() else { return };
        for route in routes {
            if !tx.recipients.contains(&route) {
                tx.recipients.push(route);
            }
        }
        tx.accepted.push(address);
        self.reply(Reply::new(250, "2.1.5", "recipient ok"));
    }

    /// RFC 1985 ETRN: start a queue run for one domain (`smtp-send
    /// --domain`), for clients that may relay. The run is started, not
    /// waited for.
    fn etrn(&mut self, name: String) {
        if self.helo.is_none() || self.tx.is_some() {
            return self.error(Reply::new(
                503,
                "5.5.1",
                "ETRN needs EHLO first and no transaction",
            ));
        }
        let domain = name.trim_start_matches('@').to_lowercase();
        if !postroom::proto::address::is_domain_name(&domain) {
            return self.error(Reply::new(501, "5.5.4", "ETRN takes a domain name"));
        }
        if self.user.is_none() && !self.shared.local && !self.client_in_relay_networks() {
            return self.reply(Reply::new(
                459,
                "4.7.1",
                format!("{domain}: not allowed to start queue runs"),
            ));
        }
        let runner = std::env::current_exe().map(|p| p.with_file_name("smtp-send"));
        let started = runner.and_then(|runner| {
            std::process::Command::new(runner)
                .arg("--config")
                .arg(&self.shared.config.file)
                .args(["--domain", &domain])
                .stdin(std::process::Stdio::null())
                .stdout(std::process::Stdio::null())
                .spawn()
        });
        match started {
            Ok(_) => self.reply(Reply::new(
                250,
                "2.0.0",
                format!("queuing for node {domain} started"),
            )),
            Err(e) => {
                tracing::warn!("ETRN: cannot start smtp-send: {e}");
                self.reply(Reply::new(
                    458,
                    "4.3.0",
                    format!("unable to queue messages for node {domain}"),
                ))
            }
        }
    }

    fn client_in_relay_networks(&self) -> bool {
        let Some(ip) = self.conn.peer().map(|p| p.ip()) else {
            return false;
        };
        self.shared.relay_networks.iter().any(|n| n.contains(ip))
    }

    /// The transaction, if DATA or a first BDAT may start now; otherwise
    /// the refusal is sent and `None` returned.
    fn ready_transaction(&mut self) -> Option<Transaction> {
        let Some(tx) = self.tx.take() else {
            self.error(Reply::new(503, "5.5.1", "MAIL first"));
            return None;
        };
        if tx.accepted.is_empty() {
            self.tx = Some(tx);
            self.error(Reply::new(554, "5.5.1", "no valid recipients"));
            return None;
        }
        Some(tx)
    }

    /// A new message for `tx`, with its Received header written.
    fn start_message(&mut self, tx: &Transaction) -> Option<Incoming> {
        let envelope = self.envelope(tx);
        let queue = Queue::from_config(&self.shared.config);
        let started = queue.incoming(&envelope).and_then(|mut incoming| {
            use std::io::Write;
            let received = self.received_header(tx, incoming.id());
            incoming
                .write_all(received.as_bytes())
                .map_err(|error| queue::QueueError::Io {
                    path: queue.root().to_path_buf(),
                    error,
                })?;
            Ok(incoming)
        });
        match started {
            Ok(incoming) => Some(incoming),
            Err(e) => {
                tracing::error!("cannot start a queue file: {e}");
                self.reply(Reply::new(
                    451,
                    "4.3.0",
                    "cannot queue now, try again later",
                ));
                None
            }
        }
    }

    async fn data(&mut self) -> Result<(), NetError> {
        if self.chunks.is_some() {
            self.error(Reply::new(
                503,
                "5.5.1",
                "DATA after BDAT; finish with BDAT LAST",
            ));
            return Ok(());
        }
        let Some(tx) = self.ready_transaction() else {
            return Ok(());
        };
        let Some(mut incoming) = self.start_message(&tx) else {
            return Ok(());
        };
        self.reply(Reply::new(
            354,
            "",
            "send the message, end with <CRLF>.<CRLF>",
        ));
        self.conn.flush().await?;

        let max_size = self.shared.config.limits.message_size;
        let mut reader = DataReader::new(max_size);
        let mut write_failed = None;
        let mut header_end = HeaderEnd::crlf();
        let mut fixed = Vec::new();
        use std::io::Write;
        loop {
            let line = match self.conn.read_line(BODY_LINE_MAX).await {
                Ok(line) => line,
                Err(NetError::LineTooLong) => {
                    reader.line_too_long(self.conn.long_line_ended_with_crlf());
                    continue;
                }
                // A client gone or stalled mid-DATA: nothing was accepted,
                // and dropping `incoming` leaves nothing behind.
                Err(e) => return Err(e),
            };
            match reader.line(&line) {
                DataLine::End => break,
                DataLine::Body(bytes) => {
                    if reader.keeping() && write_failed.is_none() {
                        fixed.clear();
                        header_end.feed(bytes, &mut fixed);
                        write_failed = incoming.write_all(&fixed).err();
                    }
                }
            }
        }
        if write_failed.is_none() {
            fixed.clear();
            header_end.finish(&mut fixed);
            write_failed = incoming.write_all(&fixed).err();
        }
        self.messages += 1;
        if let Some(problem) = reader.problem() {
            self.reply(problem.reply(max_size));
            return Ok(());
        }
        if let Some(e) = write_failed {
            self.local_error(format_args!("writing the message failed: {e}"));
            return Ok(());
        }
        self.accept_message(tx, incoming, reader.size()).await;
        Ok(())
    }

    /// RFC 3030 BDAT: the chunk is always read in full, even when refused,
    /// so its bytes are never taken for commands. Line ends are held to the
    /// same rule as DATA across chunk boundaries.
    async fn bdat(&mut self, size: usize, last: bool) -> Result<(), NetError> {
        if self.chunks.is_none() {
            let refusal = match self.ready_transaction() {
                Some(tx) => match self.start_message(&tx) {
                    Some(incoming) => {
                        self.chunks = Some(Chunks::new(
                            tx,
                            incoming,
                            self.shared.config.limits.message_size,
                        ));
                        None
                    }
                    None => Some(()),
                },
                None => Some(()),
            };
            if refusal.is_some() {
                // The refusal is already queued as a reply; swallow the chunk.
                self.conn
                    .read_exact_into(size, &mut std::io::sink())
                    .await?;
                return Ok(());
            }
        }
        let Some(chunks) = self.chunks.as_mut() else {
            return Ok(());
        };
        self.conn.read_exact_into(size, chunks).await?;
        if !last {
            self.reply(Reply::new(250, "2.0.0", format!("{size} octets received")));
            return Ok(());
        }
        let Some(chunks) = self.chunks.take() else {
            return Ok(());
        };
        self.messages += 1;
        match chunks.finish() {
            Err(reply) => self.reply(reply),
            Ok((tx, incoming, size)) => self.accept_message(tx, incoming, size).await,
        }
        Ok(())
    }

    /// The end of a received message: the data hook, then early delivery
    /// or the queue commit, then the 250 (only after the commit point).
    async fn accept_message(&mut self, tx: Transaction, incoming: Incoming, size: u64) {
        let id = incoming.id().clone();
        let staged = match incoming.finish() {
            Ok(staged) => staged,
            Err(e) => {
                self.local_error(format_args!("{id} not accepted: {e}"));
                return;
            }
        };
        // The header block as it arrived, read once for the loop check,
        // the origin fields and results a sender wrote in our name.
        let arrived = staged.message.header_block(1 << 20).unwrap_or_default();
        let fields = postroom::proto::message::header_fields(&arrived);
        if hops(&fields) > MAX_HOPS {
            self.reply(Reply::new(
                554,
                "5.4.6",
                format!("too many hops (over {MAX_HOPS} Received headers): a mail loop"),
            ));
            let _ = staged.discard();
            return;
        }
        let staged = match self.origin_fields(&staged, &arrived) {
            Some(fields) => match add_origin_fields(staged, &arrived, &fields) {
                Ok(staged) => staged,
                Err(e) => {
                    self.local_error(format_args!("adding Date or Message-ID failed: {e}"));
                    return;
                }
            },
            None => staged,
        };
        let staged = match self.authentication_results(&tx, &staged).await {
            Some(header) => {
                match add_results(staged, &header, &self.shared.config.hostname, &fields) {
                    Ok(staged) => staged,
                    Err(e) => {
                        self.local_error(format_args!("adding Authentication-Results failed: {e}"));
                        return;
                    }
                }
            }
            None => staged,
        };
        let (from, protocol) = (tx.sender.to_string(), self.protocol(&tx));
        self.tx = Some(tx);
        let staged = self.data_hook(staged).await;
        self.tx = None;
        let Some(staged) = staged else { return };
        // The arrival, as log summarisers read it (postfix's cleanup and
        // qmgr lines in one): who from, how big, for how many.
        tracing::info!(
            queue_id = %id,
            from = %from,
            size,
            nrcpt = staged.message.envelope.recipients.len(),
            client = %self.conn.peer().map(|p| p.ip().to_string()).unwrap_or_else(|| "local".into()),
            protocol = %protocol,
            "received"
        );
        let config = self.shared.config.clone();
        let directory = self.shared.directory();
        // The 250 waits for the commit point: local delivery done, or the
        // rest committed to the queue (postroom-queue(5)).
        let outcome = tokio::task::spawn_blocking(move || {
            deliver::deliver_staged(&config, &directory, staged)
        })
        .await;
        match outcome {
            Ok(Ok(Early::Delivered)) => {
                tracing::info!(queue_id = %id, size, "delivered");
                self.reply(Reply::new(250, "2.0.0", format!("ok, delivered as {id}")));
            }
            Ok(Ok(Early::Queued(id))) => {
                tracing::info!(queue_id = %id, size, "queued");
                self.reply(Reply::new(250, "2.0.0", format!("ok, queued as {id}")));
            }
            Ok(Err(e)) => {
                self.local_error(format_args!("{id} not accepted: {e}"));
            }
            Err(e) => {
                self.local_error(format_args!("{id}: delivery task failed: {e}"));
            }
        }
    }

    /// The Date and Message-ID a submitted message lacks (RFC 6409 §8.2,
    /// §8.3): only for mail from this site's own users, since a relay must
    /// not change what it passes on. `None` when nothing is missing.
    fn origin_fields(&self, staged: &Staged, head: &[u8]) -> Option<Vec<String>> {
        if !self.submission() && self.user.is_none() {
            return None;
        }
        let fields = postroom::proto::message::missing_origin_fields(
            head,
            &staged.message.id.to_string(),
            &self.shared.config.hostname,
            postroom::store::fsutil::now_secs(),
        );
        (!fields.is_empty()).then_some(fields)
    }

    /// Runs the data hook on a received message: `None` if it refused (the
    /// reply is sent), else the message, rewritten with the hook's headers
    /// on top if it added any.
    async fn data_hook(&mut self, staged: Staged) -> Option<Staged> {
        if self.shared.config.smtp.hooks.data.is_none() {
            return Some(staged);
        }
        let body = match staged.message.body() {
            Ok(body) => body,
            Err(e) => {
                self.local_error(format_args!(
                    "cannot read the message for the data hook: {e}"
                ));
                let _ = staged.discard();
                return None;
            }
        };
        let headers = match self.run_hook("data", None, Some(body)).await {
            hooks::Verdict::Refuse(reply) => {
                self.reply(reply);
                let _ = staged.discard();
                return None;
            }
            hooks::Verdict::Accept { headers } if headers.is_empty() => return Some(staged),
            hooks::Verdict::Accept { headers } => headers,
        };
        match prepend_headers(staged, &headers) {
            Ok(staged) => Some(staged),
            Err(e) => {
                self.local_error(format_args!("adding the data hook's headers failed: {e}"));
                None
            }
        }
    }

    fn envelope(&self, tx: &Transaction) -> Envelope {
        let text = |t: &str| EnvelopeText::sanitize(t, queue::MAX_FIELD);
        let mut envelope = Envelope::new(tx.sender.clone(), tx.recipients.clone());
        envelope.helo = self.helo.as_deref().map(text);
        envelope.client = self.conn.peer().map(|p| text(&p.ip().to_string()));
        envelope.auth = self.user.as_deref().map(text);
        envelope.protocol = Some(text(self.protocol(tx)));
        tx.params.apply(&mut envelope);
        // A user's own mail goes before what other systems pass on.
        if self.user.is_some() || self.shared.local || self.client_in_relay_networks() {
            envelope.priority = queue::Priority::High;
        }
        envelope
    }

    /// RFC 3848 protocol names for the Received header, with RFC 6531
    /// §3.7.3's `UTF8` prefix for a transaction under SMTPUTF8.
    fn protocol(&self, tx: &Transaction) -> &'static str {
        match (
            self.esmtp,
            tx.params.smtputf8,
            self.conn.is_tls(),
            self.user.is_some(),
        ) {
            (false, _, _, _) => "SMTP",
            (true, false, false, false) => "ESMTP",
            (true, false, true, false) => "ESMTPS",
            (true, false, false, true) => "ESMTPA",
            (true, false, true, true) => "ESMTPSA",
            (true, true, false, false) => "UTF8SMTP",
            (true, true, true, false) => "UTF8SMTPS",
            (true, true, false, true) => "UTF8SMTPA",
            (true, true, true, true) => "UTF8SMTPSA",
        }
    }

    fn received_header(&self, tx: &Transaction, id: &queue::QueueId) -> String {
        let clean = |t: &str| -> String {
            t.chars()
                .filter(|c| !c.is_control() && *c != '(' && *c != ')')
                .collect()
        };
        let helo = clean(self.helo.as_deref().unwrap_or("unknown"));
        let ip = self
            .conn
            .peer()
            .map(|p| p.ip().to_string())
            .unwrap_or_else(|| "local".into());
        let tls = self
            .conn
            .tls_info()
            .map(|t| format!(" ({})", clean(&t)))
            .unwrap_or_default();
        let auth = if self.user.is_some() {
            " (authenticated)"
        } else {
            ""
        };
        let for_rcpt = match tx.accepted.as_slice() {
            [one] => format!("\r\n\tfor <{one}>"),
            _ => String::new(),
        };
        format!(
            "Received: from {helo} ([{ip}]){auth}\r\n\tby {host} (postroom) with {proto}{tls}\r\n\tid {id}{for_rcpt};\r\n\t{date}\r\n",
            host = self.shared.config.hostname,
            proto = self.protocol(tx),
            date = postroom::proto::message::rfc5322_date(postroom::store::fsutil::now_secs()),
        )
    }
}

/// The same message with `headers` on top, under the same queue id (the
/// Received line, the reply and the log name it). Costs a copy, only when
/// headers are added (Authentication-Results, a filter's verdict).
fn prepend_headers(staged: Staged, headers: &[String]) -> Result<Staged, queue::QueueError> {
    let block: String = headers.iter().map(|h| format!("{h}\r\n")).collect();
    staged.prepend(block.as_bytes())
}

/// The Date and Message-ID a user's message lacks, after the fields it
/// has (`message::append_fields`, as Postfix adds them), so our Received
/// line stays the first (RFC 5321 §4.4); `head` is the header block as it
/// arrived. Costs a copy, as prepending them did.
fn add_origin_fields(
    staged: Staged,
    head: &[u8],
    fields: &[String],
) -> Result<Staged, queue::QueueError> {
    let rewritten = postroom::proto::message::append_fields(head, fields);
    rewrite_header_block(staged, &[&rewritten], head.len())
}

/// The message with `new_head` (its pieces in turn) in place of its first
/// `old_len` bytes, the header block as it was; the rest as it was.
fn rewrite_header_block(
    staged: Staged,
    new_head: &[&[u8]],
    old_len: usize,
) -> Result<Staged, queue::QueueError> {
    // Opened before the old copy is removed (see `Staged::prepend`).
    let body = staged.message.body();
    staged.replace(|out| {
        use std::io::{Read, Write};
        for piece in new_head {
            out.write_all(piece)?;
        }
        let mut body = body.map_err(std::io::Error::other)?;
        std::io::copy(&mut (&mut body).take(old_len as u64), &mut std::io::sink())?;
        std::io::copy(&mut body, out).map(drop)
    })
}

/// Our Authentication-Results on top, with any already there that claim to
/// be ours removed: RFC 8601 §5 has a border MTA delete results that claim
/// to come from inside its trust boundary, so a sender cannot forge the
/// "pass" a Sieve rule or the ARC sealer (`delivery::arc`) would read.
/// Costs nothing more when there are none (the header is prepended by the
/// same rewrite either way).
fn add_results(
    staged: Staged,
    header: &str,
    hostname: &str,
    arrived: &[(String, String)],
) -> Result<Staged, queue::QueueError> {
    use postroom::proto::message;
    let claims_ours = |field: &[u8]| {
        message::header_fields(field)
            .pop()
            .is_some_and(|(name, value)| message::claims_results_of(&name, &value, hostname))
    };
    // Most messages carry none, as the fields read at arrival (`arrived`)
    // show; the block is read again only to rewrite it (Date or
    // Message-ID may have been added above it since).
    if !arrived
        .iter()
        .any(|(name, value)| message::claims_results_of(name, value, hostname))
    {
        return prepend_headers(staged, &[header.to_string()]);
    }
    let head = staged.message.header_block(1 << 20)?;
    let kept = message::remove_fields(&head, claims_ours);
    let ours = format!("{header}\r\n");
    rewrite_header_block(staged, &[ours.as_bytes(), &kept], head.len())
}

/// DKIM verification holds the whole message in memory; a larger one is
/// not verified, and its Authentication-Results says so (`smtp-recv(8)`).
const DKIM_MAX: u64 = 50 << 20;
/// The reason Authentication-Results gives for a message over [`DKIM_MAX`].
const TOO_LARGE: &str = "message too large to verify";

/// True for a domain or selector that can stand in a header as it is.
fn is_token(value: &str) -> bool {
    !value.is_empty()
        && value
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"-._".contains(&b))
}

/// RFC 5321 §6.3: a message with more Received headers than this is in a
/// loop (Postfix's default is 50; 100 errs on the side of delivering).
const MAX_HOPS: usize = 100;

/// Received headers in a message's header block (our own included).
fn hops(fields: &[(String, String)]) -> usize {
    fields
        .iter()
        .filter(|(name, _)| name.eq_ignore_ascii_case("received"))
        .count()
}

fn syntax_reply(error: &smtp_proto::Error) -> Reply {
    match error {
        smtp_proto::Error::UnknownCommand => Reply::new(500, "5.5.1", "unknown command"),
        smtp_proto::Error::InvalidSenderAddress => Reply::new(501, "5.1.7", "bad sender address"),
        smtp_proto::Error::InvalidRecipientAddress => {
            Reply::new(501, "5.1.3", "bad recipient address")
        }
        smtp_proto::Error::SyntaxError { syntax } => {
            Reply::new(501, "5.5.4", format!("syntax: {syntax}"))
        }
        smtp_proto::Error::InvalidParameter { param } => {
            Reply::new(501, "5.5.4", format!("invalid parameter {param}"))
        }
        smtp_proto::Error::UnsupportedParameter { param } => {
            Reply::new(555, "5.5.4", format!("unsupported parameter {param}"))
        }
        _ => Reply::new(500, "5.5.2", "syntax error"),
    }
}

fn decode_base64(text: &str) -> Option<String> {
    let bytes = base64::engine::general_purpose::STANDARD
        .decode(text.trim())
        .ok()?;
    String::from_utf8(bytes).ok()
}
