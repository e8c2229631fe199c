//! `postroom.toml`: the one file that names every path and every limit.
//!
//! Every relative path is relative to the folder that holds the config file,
//! so a whole system (config, users, mail, queue) can live in one directory
//! for tests and the demo. Unknown keys are errors: a typo in a limit must
//! not silently leave the default in force. The format is documented in
//! `postroom.toml(5)`; keep the two in step.

use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Deserialize;

pub mod expire;
pub mod login;
pub mod quota;

/// Where the config is looked for when neither `--config` nor
/// `POSTROOM_CONFIG` names one.
pub const DEFAULT_CONFIG: &str = "/etc/postroom/postroom.toml";

/// A config that could not be used: the file, and what is wrong in it.
#[derive(Debug, thiserror::Error)]
#[error("{file}: {message}")]
pub struct ConfigError {
    pub file: PathBuf,
    pub message: String,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    /// The name this system gives itself in greetings, Received headers and
    /// unique file names.
    pub hostname: String,
    /// The system user that owns the tree: programs started as root become
    /// this user before touching it (default: the owner of the config's
    /// folder).
    #[serde(default)]
    pub run_as: Option<String>,
    #[serde(default)]
    pub paths: Paths,
    #[serde(default)]
    pub tls: Tls,
    #[serde(default)]
    pub limits: Limits,
    #[serde(default)]
    pub auth: Auth,
    #[serde(default)]
    pub delivery: Delivery,
    #[serde(default)]
    pub queue: QueuePolicy,
    #[serde(default)]
    pub smtp: Smtp,
    #[serde(default)]
    pub pop3: Pop3,
    #[serde(default)]
    pub dns: Dns,
    #[serde(default)]
    pub send: Send,
    #[serde(default)]
    pub sieve: Sieve,
    #[serde(default)]
    pub imap: Imap,
    /// DKIM signing keys (`[[dkim]]` tables, one per domain and selector),
    /// as `postroom dkim keygen` appends them.
    #[serde(default)]
    pub dkim: Vec<DkimKey>,
    /// Copies of accepted mail, per domain (`[archive."DOMAIN"]`, `"*"`
    /// for all mail): see `delivery::archive`.
    #[serde(default)]
    pub archive: std::collections::BTreeMap<String, ArchiveRule>,
    /// Text added to outgoing mail, per sender domain
    /// (`[disclaimer."DOMAIN"]`): see `delivery::disclaimer`.
    #[serde(default)]
    pub disclaimer: std::collections::BTreeMap<String, DisclaimerRule>,
    /// Mail to every user: the `everyone` alias and who may use it.
    #[serde(default)]
    pub mailall: Mailall,
    /// Login hooks (`[login]`, config/login.rs).
    #[serde(default)]
    pub login: login::Login,
    /// Quota notices and full mailboxes (`[quota]`, config/quota.rs).
    #[serde(default)]
    pub quota: quota::Quota,
    /// Folder ages for `postroom expire` (`[expire]`, config/expire.rs).
    #[serde(default)]
    pub expire: expire::Expire,
    /// The folder holding the config file; every relative path hangs off it.
    #[serde(skip)]
    pub dir: PathBuf,
    /// The config file itself, for messages.
    #[serde(skip)]
    pub file: PathBuf,
}

/// The tree (postroom-tree(5)). Each path may be absolute or relative to the config.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Paths {
    /// Dovecot-compatible passwd-file of virtual users.
    pub users: PathBuf,
    /// /etc/aliases-style file.
    pub aliases: PathBuf,
    /// The local domains, one per line.
    pub domains: PathBuf,
    /// IP allow/deny rules and the kill file of senders.
    pub access: PathBuf,
    /// Root of the mailboxes: `mail/DOMAIN/USER/`.
    pub mail: PathBuf,
    /// The mail queue (`postroom-queue(5)`).
    pub queue: PathBuf,
    /// Mailing lists.
    pub lists: PathBuf,
    /// Vacation records, rate counters.
    pub state: PathBuf,
}

impl Default for Paths {
    fn default() -> Self {
        Paths {
            users: "users".into(),
            aliases: "aliases".into(),
            domains: "domains".into(),
            access: "access".into(),
            mail: "mail".into(),
            queue: "queue".into(),
            lists: "lists".into(),
            state: "state".into(),
        }
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Tls {
    /// PEM certificate chain.
    pub cert: PathBuf,
    /// PEM private key.
    pub key: PathBuf,
}

impl Default for Tls {
    fn default() -> Self {
        Tls {
            cert: "tls/cert.pem".into(),
            key: "tls/key.pem".into(),
        }
    }
}

/// Every limit is finite (postroom-tree(5), LIMITS AND SECURITY).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Limits {
    /// Longest command line a server reads, in bytes, CRLF included.
    pub line_length: usize,
    /// Largest message accepted, in bytes.
    #[serde(deserialize_with = "size")]
    pub message_size: u64,
    /// Most recipients in one message.
    pub recipients: usize,
    /// Seconds a client may stay silent.
    #[serde(deserialize_with = "duration")]
    pub idle_timeout: Duration,
    /// Longest a whole session may last.
    #[serde(deserialize_with = "duration")]
    pub session_timeout: Duration,
    /// Most simultaneous connections a standalone server accepts.
    pub connections: usize,
    /// Most simultaneous connections from one IP address.
    pub connections_per_ip: usize,
    /// Unknown or failed commands before a server hangs up.
    pub errors: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            line_length: 4096,
            message_size: 35 * 1024 * 1024,
            recipients: 1000,
            idle_timeout: Duration::from_secs(300),
            session_timeout: Duration::from_secs(3600),
            connections: 20_000,
            connections_per_ip: 50,
            errors: 20,
        }
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Auth {
    /// Where a password may cross without TLS (see [`Plaintext`]); `None`
    /// when not set, so that it can be told from `allow_plaintext`.
    pub plaintext: Option<Plaintext>,
    /// The older spelling of `plaintext = "always"`, still read.
    pub allow_plaintext: bool,
    /// Scheme `postroom passwd` and `user add` hash new passwords with.
    pub default_scheme: String,
    /// Networks (CIDR) whose failed logins slow down no one by address,
    /// e.g. a webmail host: only the account-wide back-off applies.
    pub trusted_networks: Vec<String>,
}

impl Default for Auth {
    fn default() -> Self {
        Auth {
            plaintext: None,
            allow_plaintext: false,
            default_scheme: "ARGON2ID".into(),
            trusted_networks: Vec::new(),
        }
    }
}

impl Auth {
    /// The rule in force: `plaintext`, else `always` if `allow_plaintext`,
    /// else the Dovecot-like `loopback`.
    pub fn plaintext_rule(&self) -> Plaintext {
        match (self.plaintext, self.allow_plaintext) {
            (Some(rule), _) => rule,
            (None, true) => Plaintext::Always,
            (None, false) => Plaintext::Loopback,
        }
    }
}

/// `auth.plaintext`: which clients may send a password without TLS.
/// Under TLS a password may always be sent.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Plaintext {
    /// Only under TLS.
    Never,
    /// Under TLS, or from a loopback address: a TCP peer on 127.0.0.0/8 or
    /// ::1, or a pipe whose launcher says so in `REMOTE_ADDR` or
    /// `TCPREMOTEIP`. A pipe with no peer address at all does not count:
    /// it may be anything, a local proxy included.
    Loopback,
    /// From anyone (passwords may cross the network in clear).
    Always,
}

impl Plaintext {
    /// Whether a client at `peer` (`None`: a pipe that names no peer) may
    /// send a password in clear under this rule.
    pub fn allows(self, peer: Option<IpAddr>) -> bool {
        match self {
            Plaintext::Never => false,
            Plaintext::Loopback => peer.is_some_and(|ip| ip.to_canonical().is_loopback()),
            Plaintext::Always => true,
        }
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Delivery {
    /// RFC 5233 subaddress delimiter: `user+tag@domain` reaches `user`.
    pub recipient_delimiter: Option<char>,
    /// How deep aliases may nest before expansion fails.
    pub alias_depth: usize,
    /// Quota for users that set none, in bytes (0: no quota).
    #[serde(deserialize_with = "size")]
    pub default_quota: u64,
}

impl Default for Delivery {
    fn default() -> Self {
        Delivery {
            recipient_delimiter: Some('+'),
            alias_depth: 10,
            default_quota: 0,
        }
    }
}

/// What `smtp-recv` adds to the limits.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Smtp {
    /// Text after the host name in the 220 greeting.
    pub greeting: String,
    /// Networks (CIDR) whose clients may relay without authenticating.
    /// Empty by default: no open relay, not even by accident.
    pub relay_networks: Vec<String>,
    /// Domains mail is relayed to for anyone: the sites this system is a
    /// backup MX or gateway for. Listed, never a pattern.
    pub relay_domains: Vec<String>,
    /// Messages one session may send before it must reconnect.
    pub messages_per_session: usize,
    /// An authenticated session, on any port, may send only as the user's
    /// own addresses (aliases, +tag and case variants included): the
    /// submission rule. `false` lets every user send as anyone.
    pub auth_sender_check: bool,
    /// Logins the sender rule does not bind (a web mail or list host that
    /// sends for others), when `auth_sender_check` is on.
    pub auth_sender_exempt: Vec<String>,
    /// DNS blocklist zones asked about each client at connect
    /// (`zen.spamhaus.org`); a listed client gets 554.
    pub dnsbl: Vec<String>,
    /// Check SPF (RFC 7208) for MAIL FROM, DKIM (RFC 6376) and DMARC
    /// (RFC 7489) for each message, and record the results in an
    /// Authentication-Results header (RFC 8601). They never refuse mail by
    /// themselves: filters (mailsort, hooks) decide on the header.
    pub spf: bool,
    pub dkim: bool,
    pub dmarc: bool,
    /// Validate the ARC chain (RFC 8617) of each message and record
    /// `arc=` in the same header: the chain validation status our own ARC
    /// seal carries when the message is passed on (`delivery::arc`).
    pub arc: bool,
    /// External commands that may accept or refuse each stage.
    pub hooks: Hooks,
}

/// What `pop3-serve` adds to the limits.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Pop3 {
    /// Text after `+OK` in the greeting.
    pub greeting: String,
}

impl Default for Pop3 {
    fn default() -> Self {
        Pop3 {
            greeting: "POP3 postroom ready".into(),
        }
    }
}

/// What `imap-serve` adds to the limits.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Imap {
    /// Longest command line, in bytes (literals not counted): IMAP clients
    /// send long UID sets, so more than `limits.line_length`.
    pub line_length: usize,
    /// Seconds a client may stay silent, IDLE included: RFC 9051 §5.4 asks
    /// for at least 30 minutes (`limits.idle_timeout` is for SMTP).
    #[serde(deserialize_with = "duration")]
    pub idle_timeout: Duration,
}

impl Default for Imap {
    fn default() -> Self {
        Imap {
            line_length: 64 * 1024,
            idle_timeout: Duration::from_secs(30 * 60),
        }
    }
}

/// Where DNS questions go.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Dns {
    /// Name servers as `IP:PORT`; empty means the system's (resolv.conf).
    pub nameservers: Vec<std::net::SocketAddr>,
    /// How long one question may take.
    #[serde(deserialize_with = "duration")]
    pub timeout: Duration,
    /// The name servers validate DNSSEC (a local unbound or similar):
    /// their AD bit is trusted, which turns on DANE in smtp-send
    /// (Postfix's `smtp_dns_support_level = dnssec`).
    pub dnssec: bool,
}

impl Default for Dns {
    fn default() -> Self {
        Dns {
            nameservers: Vec::new(),
            timeout: Duration::from_secs(5),
            dnssec: false,
        }
    }
}

/// Per-stage SMTP hooks: a command run with `/bin/sh -c` at each stage
/// (see `smtp-recv(8)`): exit 0 accepts, 75 defers, anything else refuses;
/// the first line of output is the reply text.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Hooks {
    pub connect: Option<String>,
    pub helo: Option<String>,
    pub mail: Option<String>,
    pub rcpt: Option<String>,
    /// Gets the message on stdin; may print header lines to add.
    pub data: Option<String>,
    /// A hook that runs longer is killed and the stage deferred.
    #[serde(deserialize_with = "duration")]
    pub timeout: Duration,
}

impl Default for Hooks {
    fn default() -> Self {
        Hooks {
            connect: None,
            helo: None,
            mail: None,
            rcpt: None,
            data: None,
            timeout: Duration::from_secs(30),
        }
    }
}

impl Default for Smtp {
    fn default() -> Self {
        Smtp {
            greeting: "ESMTP postroom".into(),
            relay_networks: Vec::new(),
            relay_domains: Vec::new(),
            messages_per_session: 100,
            auth_sender_check: true,
            auth_sender_exempt: Vec::new(),
            dnsbl: Vec::new(),
            spf: false,
            dkim: false,
            dmarc: false,
            arc: false,
            hooks: Hooks::default(),
        }
    }
}

/// How long mail may wait, and how often it is tried.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct QueuePolicy {
    /// After this, undelivered recipients bounce.
    #[serde(deserialize_with = "duration")]
    pub lifetime: Duration,
    /// After this, the sender gets one delay warning.
    #[serde(deserialize_with = "duration")]
    pub warn_after: Duration,
    /// Shortest wait before a retry.
    #[serde(deserialize_with = "duration")]
    pub min_backoff: Duration,
    /// Longest wait between retries.
    #[serde(deserialize_with = "duration")]
    pub max_backoff: Duration,
    /// Bounces that cannot be delivered go here, once.
    pub postmaster: Option<String>,
}

impl Default for QueuePolicy {
    fn default() -> Self {
        QueuePolicy {
            lifetime: Duration::from_secs(5 * 86400),
            warn_after: Duration::from_secs(4 * 3600),
            min_backoff: Duration::from_secs(300),
            max_backoff: Duration::from_secs(4 * 3600),
            postmaster: None,
        }
    }
}

/// The largest Sieve script the compiler takes (`postroom-sieve(5)`,
/// Limits), and so the most `sieve.max_script_size` may be. Here rather
/// than in the compiler because the config, a lower layer, checks it.
pub const SIEVE_SCRIPT_MAX: usize = 1 << 20;

/// Administrator Sieve scripts `mailsort` runs around each user's own,
/// and what `sieve-serve` lets a user store.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Sieve {
    /// Run before the user's script (in order); their actions add up.
    pub before: Vec<PathBuf>,
    /// Run after the user's script.
    pub after: Vec<PathBuf>,
    /// A file holding the secret for SRS; with it, mail a rule redirects
    /// goes out with an SRS envelope sender (`postroom-sieve(5)`).
    pub srs_secret_file: Option<PathBuf>,
    /// The domain of SRS addresses (default: `hostname`; it must be one of
    /// the local domains so bounces come back).
    pub srs_domain: Option<String>,
    /// Scripts a user may keep through `sieve-serve` (0: no limit).
    pub max_scripts: usize,
    /// Largest script `sieve-serve` stores, in bytes: at most the
    /// compiler's own limit (1 MiB), which is also the default.
    #[serde(deserialize_with = "size")]
    pub max_script_size: u64,
}

impl Default for Sieve {
    fn default() -> Self {
        Sieve {
            before: Vec::new(),
            after: Vec::new(),
            srs_secret_file: None,
            srs_domain: None,
            // Pigeonhole has no default limit; a user with a hundred
            // scripts is a script generator, not a person.
            max_scripts: 100,
            max_script_size: SIEVE_SCRIPT_MAX as u64,
        }
    }
}

impl Config {
    /// The SRS secret, if SRS is on and the file can be read.
    pub fn srs_secret(&self) -> Option<Vec<u8>> {
        let file = self.sieve.srs_secret_file.as_ref()?;
        let text = std::fs::read(self.path(file)).ok()?;
        let secret: Vec<u8> = text.trim_ascii().to_vec();
        (!secret.is_empty()).then_some(secret)
    }

    pub fn srs_domain(&self) -> &str {
        self.sieve.srs_domain.as_deref().unwrap_or(&self.hostname)
    }
}

/// How `smtp-send` talks to other systems.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Send {
    /// The name given in EHLO (default: `hostname`).
    pub helo_name: Option<String>,
    /// The TCP port of mail exchangers: 25 on the Internet; tests and
    /// private networks change it.
    pub port: u16,
    /// Connections open at once, to all destinations together.
    pub concurrency: usize,
    /// Connections open at once to one destination.
    pub destination_concurrency: usize,
    /// Recipients in one transaction (RFC 5321 §4.5.3.1.8: servers take at
    /// least 100).
    pub recipients_per_transaction: usize,
    /// Transactions over one connection before it is closed.
    pub messages_per_connection: usize,
    /// Messages worked on at once; each holds an open file and its lock.
    pub active_messages: usize,
    /// How long connecting to one address may take.
    #[serde(deserialize_with = "duration")]
    pub connect_timeout: Duration,
    /// How long to wait for a reply to a command (RFC 5321 §4.5.3.2: 5 min).
    #[serde(deserialize_with = "duration")]
    pub command_timeout: Duration,
    /// How long to wait for the reply after the final dot (10 min).
    #[serde(deserialize_with = "duration")]
    pub data_timeout: Duration,
    /// TLS to other systems when no per-domain policy says otherwise.
    pub tls: TlsPolicy,
    /// Per-domain TLS policy: `"bank.example" = "verify"`.
    pub tls_policy: std::collections::BTreeMap<String, TlsPolicy>,
    /// Certificates (PEM) trusted for `verify` besides the system's.
    pub ca_file: Option<PathBuf>,
    /// Routes that replace the MX lookup: a domain, or `"*"` for all mail
    /// (a smarthost), to `"host"`, `"host:port"` (MX lookup of host) or
    /// `"[host]:port"` (that host itself).
    pub transports: std::collections::BTreeMap<String, String>,
    /// SMTP AUTH for relay hosts: host to a file holding `user:password`.
    pub credentials: std::collections::BTreeMap<String, PathBuf>,
    /// Also try IPv6 addresses of mail exchangers.
    pub ipv6: bool,
    /// Follow the MTA-STS policies (RFC 8461) that recipient domains
    /// publish; a domain in `tls_policy` keeps the policy given there.
    pub mta_sts: bool,
    /// The HTTPS port policies are fetched from: 443 as RFC 8461 says;
    /// only tests and local proxies change it.
    pub mta_sts_port: u16,
    /// Per recipient domain: `[send.domains."example.com"]`.
    pub domains: std::collections::BTreeMap<String, SendDomain>,
}

/// What `smtp-send` does differently for one recipient domain.
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct SendDomain {
    /// At most this many transactions to the domain, across every runner
    /// sharing the tree (`"60/min"`): see `store::pace`.
    #[serde(deserialize_with = "rate")]
    pub rate: Option<Rate>,
}

/// `N/s`, `N/min`, `N/h` or `N/d`: `count` per `per`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Rate {
    pub count: u32,
    pub per: Duration,
}

impl Rate {
    pub fn parse(text: &str) -> Result<Rate, String> {
        let bad = || format!("{text:?} is not a rate like 60/min, 10/s, 500/h or 2000/d");
        let (count, unit) = text.trim().split_once('/').ok_or_else(bad)?;
        let count: u32 = count.trim().parse().map_err(|_| bad())?;
        let per = match unit.trim() {
            "s" | "sec" | "second" => 1,
            "m" | "min" | "minute" => 60,
            "h" | "hour" => 3600,
            "d" | "day" => 86400,
            _ => return Err(bad()),
        };
        if count == 0 {
            return Err(format!("{text:?}: the count must be greater than 0"));
        }
        Ok(Rate {
            count,
            per: Duration::from_secs(per),
        })
    }

    /// The time between two transactions.
    pub fn interval(self) -> Duration {
        self.per / self.count
    }
}

fn rate<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Option<Rate>, D::Error> {
    let text = String::deserialize(d)?;
    Rate::parse(&text)
        .map(Some)
        .map_err(serde::de::Error::custom)
}

impl Default for Send {
    fn default() -> Self {
        Send {
            helo_name: None,
            port: 25,
            concurrency: 100,
            destination_concurrency: 10,
            recipients_per_transaction: 100,
            messages_per_connection: 100,
            active_messages: 1000,
            connect_timeout: Duration::from_secs(30),
            command_timeout: Duration::from_secs(300),
            data_timeout: Duration::from_secs(600),
            tls: TlsPolicy::Opportunistic,
            tls_policy: Default::default(),
            ca_file: None,
            transports: Default::default(),
            credentials: Default::default(),
            ipv6: true,
            mta_sts: true,
            mta_sts_port: 443,
            domains: Default::default(),
        }
    }
}

/// TLS towards another system (RFC 7435 terms).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum TlsPolicy {
    /// Never STARTTLS.
    None,
    /// STARTTLS when offered, any certificate; plaintext when not offered.
    Opportunistic,
    /// STARTTLS required, any certificate (Postfix's `encrypt`).
    Encrypt,
    /// STARTTLS required and the certificate must match the host name.
    Verify,
}

/// One DKIM signing key: mail from `domain` leaving for another host is
/// signed with it (RFC 6376, RFC 8463); see `postroom(8)`, `dkim keygen`.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DkimKey {
    /// The signing domain (`d=`), matched against the From domain.
    pub domain: String,
    /// The selector (`s=`): the key's record is `SELECTOR._domainkey.DOMAIN`.
    pub selector: String,
    pub algorithm: DkimAlgorithm,
    /// The private key, PKCS#8 PEM.
    pub key: PathBuf,
    /// Whether the key also seals ARC sets (RFC 8617) on mail passed on
    /// (Sieve redirects, list posts). Unset: an `rsa2048` key does and an
    /// `ed25519` key does not, since ARC is defined for rsa-sha256 only
    /// (`delivery::arc`); `true` on an Ed25519 key is refused.
    #[serde(default)]
    pub arc: Option<bool>,
}

impl DkimKey {
    /// True if this key seals ARC sets.
    pub fn seals_arc(&self) -> bool {
        self.arc.unwrap_or(self.algorithm == DkimAlgorithm::Rsa2048)
    }
}

/// A DKIM signing algorithm.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum DkimAlgorithm {
    /// ed25519-sha256 (RFC 8463): small keys, fast signatures.
    Ed25519,
    /// rsa-sha256 with a 2048-bit key: what every verifier understands.
    Rsa2048,
}

impl DkimAlgorithm {
    /// The name in the config and on the command line.
    pub fn name(self) -> &'static str {
        match self {
            DkimAlgorithm::Ed25519 => "ed25519",
            DkimAlgorithm::Rsa2048 => "rsa2048",
        }
    }
}

/// One `[archive."DOMAIN"]` table: which mail of the domain is copied,
/// and where the copy goes (an address, a maildir, or both).
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ArchiveRule {
    /// `inbound`, `outbound` or `both` (the default).
    #[serde(default)]
    pub mail: ArchiveMail,
    /// An address the copy is delivered to like any recipient's.
    pub address: Option<String>,
    /// A maildir the copy is written into before the message is accepted.
    pub maildir: Option<PathBuf>,
}

/// Which mail an [`ArchiveRule`] copies.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ArchiveMail {
    /// Mail to the domain's addresses.
    Inbound,
    /// Mail from the domain's addresses to other systems.
    Outbound,
    #[default]
    Both,
}

impl ArchiveMail {
    pub fn inbound(self) -> bool {
        matches!(self, ArchiveMail::Inbound | ArchiveMail::Both)
    }
    pub fn outbound(self) -> bool {
        matches!(self, ArchiveMail::Outbound | ArchiveMail::Both)
    }
}

/// One `[disclaimer."DOMAIN"]` table: the text added to mail the domain's
/// users send to other systems.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DisclaimerRule {
    /// Appended to plain-text mail (and the text of a wrapped message).
    pub plain: String,
    /// Put into HTML mail before `</body>`; without it HTML mail is wrapped.
    pub html: Option<String>,
    /// Which writers' mail gets it (default: both).
    #[serde(default = "DisclaimerSource::all")]
    pub sources: Vec<DisclaimerSource>,
}

/// Where a message came from, for `disclaimer.sources`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum DisclaimerSource {
    /// A client that logged in to `smtp-recv`, or one in
    /// `smtp.relay_networks`.
    Submission,
    /// Mail written on this host: `mail-inject` (and vacation replies).
    MailInject,
}

impl DisclaimerSource {
    fn all() -> Vec<DisclaimerSource> {
        vec![DisclaimerSource::Submission, DisclaimerSource::MailInject]
    }
}

/// Where `smtp-send` connects for a destination, from `send.transports`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Transport {
    pub host: String,
    pub port: Option<u16>,
    /// Look up the host's MX records (no brackets) or connect to it as is.
    pub mx: bool,
}

impl Transport {
    /// `host`, `host:port`, `[host]` or `[host]:port`.
    pub fn parse(text: &str) -> Result<Transport, String> {
        let bad = || format!("{text:?} is not host, host:port or [host]:port");
        let (host, port, mx) = if let Some(rest) = text.strip_prefix('[') {
            let (host, after) = rest.split_once(']').ok_or_else(bad)?;
            let port = match after {
                "" => None,
                p => Some(p.strip_prefix(':').ok_or_else(bad)?),
            };
            (host, port, false)
        } else {
            match text.rsplit_once(':') {
                Some((host, port)) => (host, Some(port), true),
                None => (text, None, true),
            }
        };
        let port = port
            .map(|p| p.parse::<u16>().ok().filter(|&p| p > 0).ok_or_else(bad))
            .transpose()?;
        let is_ip = host.parse::<IpAddr>().is_ok();
        if !(is_ip || crate::proto::address::is_domain_name(host)) || (is_ip && mx) {
            return Err(bad());
        }
        Ok(Transport {
            host: host.to_ascii_lowercase(),
            port,
            mx,
        })
    }
}

impl Send {
    /// The transport for a domain: its own entry, else `"*"`, else MX.
    pub fn transport_for(&self, domain: &str) -> Option<Transport> {
        let text = self
            .transports
            .get(domain)
            .or_else(|| self.transports.get("*"))?;
        // Checked when the config was loaded.
        Transport::parse(text).ok()
    }

    /// The pace set for mail to `domain` (`send.domains`), if any.
    pub fn rate_for(&self, domain: &str) -> Option<Rate> {
        self.domains
            .iter()
            .find(|(d, _)| d.eq_ignore_ascii_case(domain))
            .and_then(|(_, d)| d.rate)
    }

    /// The TLS policy for a domain.
    pub fn tls_for(&self, domain: &str) -> TlsPolicy {
        self.tls_policy.get(domain).copied().unwrap_or(self.tls)
    }
}

impl Config {
    /// Finds the config file: the argument, else `POSTROOM_CONFIG`, else the
    /// default path. Binaries pass clap's `--config` (which already reads the
    /// environment) so this is the one place the rule lives.
    pub fn locate(arg: Option<&Path>) -> PathBuf {
        arg.map(Path::to_path_buf)
            .or_else(|| std::env::var_os("POSTROOM_CONFIG").map(PathBuf::from))
            .unwrap_or_else(|| PathBuf::from(DEFAULT_CONFIG))
    }

    /// Reads and validates a config file.
    pub fn load(file: &Path) -> Result<Config, ConfigError> {
        let error = |message: String| ConfigError {
            file: file.to_path_buf(),
            message,
        };
        let text = std::fs::read_to_string(file).map_err(|e| {
            error(format!(
                "cannot read: {e} (create one with `postroom init DIR`, or name it with --config)"
            ))
        })?;
        let mut config = Config::parse(&text).map_err(error)?;
        let file = std::path::absolute(file).unwrap_or_else(|_| file.to_path_buf());
        config.dir = file.parent().map(Path::to_path_buf).unwrap_or_default();
        config.file = file;
        Ok(config)
    }

    /// Parses config text; relative paths stay relative (see [`Config::path`]).
    pub fn parse(text: &str) -> Result<Config, String> {
        let config: Config = toml::from_str(text).map_err(|e| e.to_string().trim().to_string())?;
        config.validate()?;
        Ok(config)
    }

    fn validate(&self) -> Result<(), String> {
        if !crate::proto::address::is_domain_name(&self.hostname) {
            return Err(format!(
                "hostname: {:?} is not a domain name",
                self.hostname
            ));
        }
        let l = &self.limits;
        for (key, value) in [
            ("limits.line_length", l.line_length as u64),
            ("limits.message_size", l.message_size),
            ("limits.recipients", l.recipients as u64),
            ("limits.connections", l.connections as u64),
            ("limits.connections_per_ip", l.connections_per_ip as u64),
            ("limits.errors", l.errors as u64),
            ("delivery.alias_depth", self.delivery.alias_depth as u64),
            ("imap.line_length", self.imap.line_length as u64),
        ] {
            if value == 0 {
                return Err(format!("{key}: must be greater than 0"));
            }
        }
        let script_max = SIEVE_SCRIPT_MAX as u64;
        if self.sieve.max_script_size == 0 || self.sieve.max_script_size > script_max {
            return Err(format!(
                "sieve.max_script_size: must be from 1 to {script_max} bytes (the Sieve compiler's limit)"
            ));
        }
        if l.line_length < 512 {
            return Err("limits.line_length: must be at least 512 (RFC 5321 §4.5.3.1.4)".into());
        }
        if PasswordScheme::parse(&self.auth.default_scheme).is_none() {
            return Err(format!(
                "auth.default_scheme: unknown scheme {:?} (use ARGON2ID, SHA512-CRYPT or BLF-CRYPT)",
                self.auth.default_scheme
            ));
        }
        for (key, text) in [
            ("smtp.greeting", &self.smtp.greeting),
            ("pop3.greeting", &self.pop3.greeting),
        ] {
            if text.chars().any(char::is_control) || text.len() > 200 {
                return Err(format!(
                    "{key}: one line of at most 200 characters, without control characters"
                ));
            }
        }
        if self.auth.allow_plaintext
            && let Some(rule) = self.auth.plaintext
            && rule != Plaintext::Always
        {
            return Err(format!(
                "auth.allow_plaintext = true contradicts auth.plaintext = {:?} (keep only auth.plaintext)",
                format!("{rule:?}").to_lowercase()
            ));
        }
        for network in &self.auth.trusted_networks {
            crate::proto::smtp::Network::parse(network)
                .map_err(|e| format!("auth.trusted_networks: {e}"))?;
        }
        for network in &self.smtp.relay_networks {
            crate::proto::smtp::Network::parse(network)
                .map_err(|e| format!("smtp.relay_networks: {e}"))?;
        }
        for domain in &self.smtp.relay_domains {
            if !crate::proto::address::is_domain_name(domain) {
                return Err(format!(
                    "smtp.relay_domains: {domain:?} is not a domain name"
                ));
            }
        }
        for zone in &self.smtp.dnsbl {
            if !crate::proto::address::is_domain_name(zone) {
                return Err(format!("smtp.dnsbl: {zone:?} is not a DNS zone"));
            }
        }
        for login in &self.smtp.auth_sender_exempt {
            if crate::proto::address::Address::parse(login).is_err() {
                return Err(format!(
                    "smtp.auth_sender_exempt: {login:?} is not a login (user@domain)"
                ));
            }
        }
        if self.smtp.messages_per_session == 0 {
            return Err("smtp.messages_per_session: must be greater than 0".into());
        }
        let send = &self.send;
        for (key, value) in [
            ("send.port", send.port as u64),
            ("send.concurrency", send.concurrency as u64),
            (
                "send.destination_concurrency",
                send.destination_concurrency as u64,
            ),
            (
                "send.recipients_per_transaction",
                send.recipients_per_transaction as u64,
            ),
            (
                "send.messages_per_connection",
                send.messages_per_connection as u64,
            ),
            ("send.active_messages", send.active_messages as u64),
        ] {
            if value == 0 {
                return Err(format!("{key}: must be greater than 0"));
            }
        }
        if let Some(name) = &send.helo_name
            && !crate::proto::address::is_domain_name(name)
        {
            return Err(format!("send.helo_name: {name:?} is not a domain name"));
        }
        for (domain, text) in &send.transports {
            if domain != "*" && !crate::proto::address::is_domain_name(domain) {
                return Err(format!(
                    "send.transports: {domain:?} is not a domain or \"*\""
                ));
            }
            Transport::parse(text).map_err(|e| format!("send.transports.{domain}: {e}"))?;
        }
        for domain in send.domains.keys() {
            if !crate::proto::address::is_domain_name(domain) {
                return Err(format!("send.domains: {domain:?} is not a domain name"));
            }
        }
        if let Some(p) = &self.queue.postmaster
            && crate::proto::address::Address::parse(p).is_err()
        {
            return Err(format!("queue.postmaster: {p:?} is not a mail address"));
        }
        if self.queue.min_backoff > self.queue.max_backoff {
            return Err("queue.min_backoff: must not exceed queue.max_backoff".into());
        }
        for key in &self.dkim {
            if !crate::proto::address::is_domain_name(&key.domain) {
                return Err(format!(
                    "dkim.domain: {:?} is not a domain name",
                    key.domain
                ));
            }
            let label = |l: &str| {
                (1..=63).contains(&l.len())
                    && l.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-')
            };
            if !key.selector.split('.').all(label) {
                return Err(format!(
                    "dkim.selector: {:?} is not a selector (letters, digits, '-', '.')",
                    key.selector
                ));
            }
            if key.arc == Some(true) && key.algorithm != DkimAlgorithm::Rsa2048 {
                return Err(format!(
                    "dkim: the {} key {:?} of {} cannot seal ARC (RFC 8617 knows rsa-sha256 only): remove `arc = true` or make an rsa2048 key",
                    key.algorithm.name(),
                    key.selector,
                    key.domain
                ));
            }
        }
        for (domain, rule) in &self.archive {
            if domain != "*" && !crate::proto::address::is_domain_name(domain) {
                return Err(format!("archive: {domain:?} is not a domain or \"*\""));
            }
            if rule.address.is_none() && rule.maildir.is_none() {
                return Err(format!(
                    "archive.\"{domain}\": give an address or a maildir for the copies"
                ));
            }
            if let Some(a) = &rule.address
                && crate::proto::address::Address::parse(a).is_err()
            {
                return Err(format!(
                    "archive.\"{domain}\".address: {a:?} is not a mail address"
                ));
            }
        }
        for (domain, rule) in &self.disclaimer {
            if domain != "*" && !crate::proto::address::is_domain_name(domain) {
                return Err(format!("disclaimer: {domain:?} is not a domain or \"*\""));
            }
            if rule.plain.trim().is_empty() {
                return Err(format!("disclaimer.\"{domain}\".plain: must not be empty"));
            }
        }
        self.login.validate()?;
        self.quota.validate()?;
        self.expire.validate()?;
        Ok(())
    }

    /// A path from the config, made absolute against the config's folder.
    pub fn path(&self, p: &Path) -> PathBuf {
        if p.is_absolute() {
            p.to_path_buf()
        } else {
            self.dir.join(p)
        }
    }

    pub fn users_file(&self) -> PathBuf {
        self.path(&self.paths.users)
    }
    pub fn aliases_file(&self) -> PathBuf {
        self.path(&self.paths.aliases)
    }
    pub fn domains_file(&self) -> PathBuf {
        self.path(&self.paths.domains)
    }
    pub fn access_file(&self) -> PathBuf {
        self.path(&self.paths.access)
    }
    pub fn mail_dir(&self) -> PathBuf {
        self.path(&self.paths.mail)
    }
    pub fn queue_dir(&self) -> PathBuf {
        self.path(&self.paths.queue)
    }
    pub fn lists_dir(&self) -> PathBuf {
        self.path(&self.paths.lists)
    }
    pub fn state_dir(&self) -> PathBuf {
        self.path(&self.paths.state)
    }
    pub fn tls_cert(&self) -> PathBuf {
        self.path(&self.tls.cert)
    }
    pub fn tls_key(&self) -> PathBuf {
        self.path(&self.tls.key)
    }
}

/// True when a password may be sent in clear (without TLS) by this peer
/// (`None`: a pipe that names no peer), under `auth.plaintext`.
pub fn plaintext_allowed(config: &Config, peer: Option<IpAddr>) -> bool {
    config.auth.plaintext_rule().allows(peer)
}

/// Parses `30`, `30s`, `5m`, `4h`, `5d`, `1w` or `250ms` into a duration
/// (bare numbers are seconds).
pub fn parse_duration(text: &str) -> Result<Duration, String> {
    let text = text.trim();
    let split = text
        .find(|c: char| !c.is_ascii_digit())
        .unwrap_or(text.len());
    let (number, unit) = text.split_at(split);
    let number: u64 = number
        .parse()
        .map_err(|_| format!("{text:?} is not a duration like 30s, 5m, 4h or 5d"))?;
    let scale = match unit.trim() {
        "ms" => return Ok(Duration::from_millis(number)),
        "" | "s" => 1,
        "m" => 60,
        "h" => 3600,
        "d" => 86400,
        "w" => 7 * 86400,
        _ => {
            return Err(format!(
                "{text:?}: unknown unit {unit:?} (use ms, s, m, h, d or w)"
            ));
        }
    };
    Ok(Duration::from_secs(number.saturating_mul(scale)))
}

/// Parses `1000`, `64K`, `35M`, `2G` into bytes (powers of 1024).
pub fn parse_size(text: &str) -> Result<u64, String> {
    let text = text.trim();
    let split = text
        .find(|c: char| !c.is_ascii_digit())
        .unwrap_or(text.len());
    let (number, unit) = text.split_at(split);
    let number: u64 = number
        .parse()
        .map_err(|_| format!("{text:?} is not a size like 1000, 64K, 35M or 2G"))?;
    let scale: u64 = match unit.trim().to_ascii_uppercase().as_str() {
        "" | "B" => 1,
        "K" | "KB" => 1 << 10,
        "M" | "MB" => 1 << 20,
        "G" | "GB" => 1 << 30,
        "T" | "TB" => 1 << 40,
        _ => {
            return Err(format!(
                "{text:?}: unknown unit {unit:?} (use K, M, G or T)"
            ));
        }
    };
    Ok(number.saturating_mul(scale))
}

/// A number or a string: TOML lets either stand for a size or a duration.
/// Read by one visitor rather than `#[serde(untagged)]`, which tries the
/// number first and builds (and formats) an error for every text value at
/// every start of every program, and which answers anything else with
/// "did not match any variant" instead of saying what was expected.
enum NumberOrText {
    Number(u64),
    Text(String),
}

impl NumberOrText {
    /// Reads either; `example` completes "a whole number of …" in the
    /// message for anything else (`bytes or a text such as "35M"`).
    fn read<'de, D: serde::Deserializer<'de>>(
        d: D,
        example: &'static str,
    ) -> Result<Self, D::Error> {
        struct Visitor(&'static str);
        impl serde::de::Visitor<'_> for Visitor {
            type Value = NumberOrText;
            fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
                write!(f, "a whole number of {}", self.0)
            }
            fn visit_u64<E: serde::de::Error>(self, n: u64) -> Result<NumberOrText, E> {
                Ok(NumberOrText::Number(n))
            }
            fn visit_i64<E: serde::de::Error>(self, n: i64) -> Result<NumberOrText, E> {
                u64::try_from(n).map(NumberOrText::Number).map_err(|_| {
                    E::invalid_value(serde::de::Unexpected::Signed(n), &"zero or more")
                })
            }
            fn visit_str<E: serde::de::Error>(self, text: &str) -> Result<NumberOrText, E> {
                Ok(NumberOrText::Text(text.to_string()))
            }
        }
        d.deserialize_any(Visitor(example))
    }
}

fn duration<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Duration, D::Error> {
    match NumberOrText::read(d, "seconds or a text such as \"5m\"")? {
        NumberOrText::Number(n) => Ok(Duration::from_secs(n)),
        NumberOrText::Text(t) => parse_duration(&t).map_err(serde::de::Error::custom),
    }
}

fn size<'de, D: serde::Deserializer<'de>>(d: D) -> Result<u64, D::Error> {
    match NumberOrText::read(d, "bytes or a text such as \"35M\"")? {
        NumberOrText::Number(n) => Ok(n),
        NumberOrText::Text(t) => parse_size(&t).map_err(serde::de::Error::custom),
    }
}

/// A password scheme postroom can hash new passwords with (the values of
/// `auth.default_scheme`; the directory's password module hashes).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PasswordScheme {
    Argon2id,
    Sha512Crypt,
    BlfCrypt,
}

impl PasswordScheme {
    /// Parses a scheme name as Dovecot spells it (case-insensitive).
    pub fn parse(name: &str) -> Option<PasswordScheme> {
        match name.to_ascii_uppercase().as_str() {
            "ARGON2ID" => Some(PasswordScheme::Argon2id),
            "SHA512-CRYPT" => Some(PasswordScheme::Sha512Crypt),
            "BLF-CRYPT" => Some(PasswordScheme::BlfCrypt),
            _ => None,
        }
    }

    /// Dovecot's spelling.
    pub fn name(self) -> &'static str {
        match self {
            PasswordScheme::Argon2id => "ARGON2ID",
            PasswordScheme::Sha512Crypt => "SHA512-CRYPT",
            PasswordScheme::BlfCrypt => "BLF-CRYPT",
        }
    }
}

/// `[mailall]`: an address that reaches every user of its domain
/// (`delivery::mailall`), for the senders listed.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Mailall {
    /// The local part of the alias in every local domain (`everyone`
    /// makes `everyone@DOMAIN`); none: no such alias.
    pub alias: Option<String>,
    /// Who may write to it (addresses, any case); everyone else gets 5.7.1.
    pub senders: Vec<String>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn minimal_config_takes_defaults() {
        let c = Config::parse("hostname = \"mx.example.test\"\n").unwrap();
        assert_eq!(c.limits.recipients, 1000);
        assert_eq!(c.paths.queue, PathBuf::from("queue"));
    }

    #[test]
    fn durations_and_sizes_in_either_form() {
        let c = Config::parse(
            "hostname = \"h.test\"\n[limits]\nmessage_size = \"10M\"\nidle_timeout = \"2m\"\n[queue]\nlifetime = 86400\n",
        )
        .unwrap();
        assert_eq!(c.limits.message_size, 10 << 20);
        assert_eq!(c.limits.idle_timeout, Duration::from_secs(120));
        assert_eq!(c.queue.lifetime, Duration::from_secs(86400));
    }

    #[test]
    fn unknown_key_is_named() {
        let e = Config::parse("hostname = \"h.test\"\n[limits]\nrecipents = 5\n").unwrap_err();
        assert!(e.contains("recipents"), "{e}");
        assert!(e.contains("line 3"), "{e}");
    }

    #[test]
    fn bad_values_are_explained() {
        let e = Config::parse("hostname = \"h.test\"\n[limits]\nidle_timeout = \"5 fortnights\"\n")
            .unwrap_err();
        assert!(e.contains("unknown unit"), "{e}");
        // Neither a number nor a text: the message says what would do.
        let e =
            Config::parse("hostname = \"h.test\"\n[limits]\nmessage_size = true\n").unwrap_err();
        assert!(
            e.contains("a whole number of bytes or a text such as"),
            "{e}"
        );
        let e = Config::parse("hostname = \"h.test\"\n[limits]\nidle_timeout = [1]\n").unwrap_err();
        assert!(
            e.contains("a whole number of seconds or a text such as"),
            "{e}"
        );
        let e = Config::parse("hostname = \"h.test\"\n[limits]\nmessage_size = -5\n").unwrap_err();
        assert!(e.contains("`-5`, expected zero or more"), "{e}");
        let e = Config::parse("hostname = \"h.test\"\n[limits]\nrecipients = 0\n").unwrap_err();
        assert!(e.contains("limits.recipients"), "{e}");
        let e = Config::parse("hostname = \"bad host\"\n").unwrap_err();
        assert!(e.contains("hostname"), "{e}");
        let e = Config::parse("").unwrap_err();
        assert!(e.contains("hostname"), "{e}");
        let e = Config::parse("hostname = \"h.test\"\n[pop3]\ngreeting = \"hi\\r\\n-ERR\"\n")
            .unwrap_err();
        assert!(e.contains("pop3.greeting"), "{e}");
        let c = Config::parse("hostname = \"h.test\"\n[pop3]\ngreeting = \"Welcome\"\n").unwrap();
        assert_eq!(c.pop3.greeting, "Welcome");
    }

    #[test]
    fn paths_resolve_against_config_folder() {
        let mut c = Config::parse("hostname = \"h.test\"\n[paths]\nqueue = \"/var/q\"\n").unwrap();
        c.dir = PathBuf::from("/srv/mail");
        assert_eq!(c.queue_dir(), PathBuf::from("/var/q"));
        assert_eq!(c.users_file(), PathBuf::from("/srv/mail/users"));
    }

    #[test]
    fn plaintext_rule_and_its_older_spelling() {
        let rule = |auth: &str| {
            Config::parse(&format!("hostname = \"h.test\"\n[auth]\n{auth}\n"))
                .map(|c| c.auth.plaintext_rule())
        };
        let (lo, remote) = (
            Some("127.0.0.1".parse().unwrap()),
            Some("192.0.2.1".parse().unwrap()),
        );
        assert_eq!(rule(""), Ok(Plaintext::Loopback));
        assert_eq!(rule("allow_plaintext = true"), Ok(Plaintext::Always));
        assert_eq!(rule("plaintext = \"never\""), Ok(Plaintext::Never));
        let e = rule("plaintext = \"never\"\nallow_plaintext = true").unwrap_err();
        assert!(e.contains("contradicts"), "{e}");
        assert!(rule("plaintext = \"sometimes\"").is_err());
        assert!(Plaintext::Loopback.allows(lo));
        assert!(Plaintext::Loopback.allows(Some("::ffff:127.0.0.2".parse().unwrap())));
        assert!(!Plaintext::Loopback.allows(remote));
        // A pipe that names no peer may be a local proxy: not loopback.
        assert!(!Plaintext::Loopback.allows(None));
        assert!(!Plaintext::Never.allows(lo));
        assert!(Plaintext::Always.allows(None) && Plaintext::Always.allows(remote));
        let e =
            Config::parse("hostname = \"h.test\"\n[auth]\ntrusted_networks = [\"10.0.0.0/33\"]\n")
                .unwrap_err();
        assert!(e.contains("auth.trusted_networks"), "{e}");
    }
}
