//! The aliases file, and how a recipient becomes mailboxes, remote
//! addresses and commands (`postroom-aliases(5)`).
//!
//! ```text
//! # KEY: TARGET, TARGET, ...       continuation lines start with white space
//! postmaster@example.test: ann, bob@example.test
//! abuse: postmaster                 a bare local part: in every local domain
//! team@example.test: :include:lists/team
//! bot@example.test: "|/usr/bin/handler --flag"
//! joe@example.test: \joe, joe@elsewhere.test   \ = this mailbox, no more aliasing
//! @example.test: catchall           a catch-all for the domain
//! ```
//!
//! [`Directory`] joins the domains, users and aliases files: it is what
//! `smtp-recv` asks at RCPT time and what `mail-inject` asks before queueing.
//! Resolution order for an address in a local domain: the alias for the
//! address, the alias for its bare local part, the same two without a
//! `+detail`, the user (with and without the detail), the domain's
//! catch-all; else the user is unknown. Expansion nests up to
//! `delivery.alias_depth`; reaching an address again on the same path is a
//! loop, unless that address is a real user (sendmail's `joe: joe, other`).

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use crate::config::Config;
use crate::directory::domains::Domains;
use crate::directory::index::{Kind, Table};
use crate::directory::users::{Unavailable, User, Users};
use crate::proto::address::{Address, EnvelopeText};
use crate::proto::xtext;
use crate::store::fsutil::{self, FileError};
use crate::store::queue::{self, Recipient, Route};

/// Longest pipe command accepted.
const MAX_COMMAND: usize = 1000;

/// Why a recipient does not resolve. Permanent unless [`is_temporary`].
///
/// [`is_temporary`]: ResolveError::is_temporary
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ResolveError {
    #[error("no such user here: {0}")]
    UnknownUser(Address),
    #[error("alias loop: {}", .0.join(" -> "))]
    Loop(Vec<String>),
    #[error("aliases nest deeper than delivery.alias_depth: {}", .0.join(" -> "))]
    TooDeep(Vec<String>),
    #[error("cannot read include file {file}: {error}")]
    Include { file: PathBuf, error: String },
    /// The address would be an unknown user, but the users file is missing
    /// or emptied by accident, so nobody can say (see `users`).
    #[error("local users cannot be looked up now ({0}); try again later")]
    UsersUnavailable(Unavailable),
}

impl ResolveError {
    /// True when trying again later may succeed (an include file that
    /// cannot be read now, a users file that is missing); everything else
    /// is the sender's problem.
    pub fn is_temporary(&self) -> bool {
        matches!(
            self,
            ResolveError::Include { .. } | ResolveError::UsersUnavailable(_)
        )
    }
}

/// Where one recipient's copy goes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Target {
    /// A user in the users file (the user's own address).
    Mailbox(Address),
    /// An address in another domain.
    Remote(Address),
    /// A command that reads the message on stdin; `alias` named it.
    Pipe {
        alias: Address,
        command: EnvelopeText,
    },
}

/// One target as written in the file.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Written {
    /// `user@domain` or a bare `user` (same domain as the alias).
    Address(String),
    /// `\user`: that mailbox, no further aliasing.
    Mailbox(String),
    Pipe(EnvelopeText),
    Include(PathBuf),
}

/// The aliases file: its index (see `index`), or its text when the index
/// cannot be used. A lookup parses the one entry it finds.
#[derive(Debug, Clone, Default)]
pub struct Aliases {
    /// Lower-case key (`user@domain`, `user` or `@domain`) to the targets
    /// as written. Shared: a [`Directory`] is cloned per server session.
    table: Arc<Table>,
}

impl Aliases {
    /// Reads the file through its index (`aliases.index`), rebuilt here
    /// when the text changed; a missing file means no aliases.
    pub fn load(path: &Path) -> Result<Aliases, FileError> {
        let table = Table::load(path, Kind::Aliases, entries_of)?;
        Ok(Aliases {
            table: Arc::new(table.map(|(table, _)| table).unwrap_or_default()),
        })
    }

    /// The aliases of `text`, every entry checked; errors name `path`.
    pub fn parse(text: &str, path: &Path) -> Result<Aliases, FileError> {
        let (entries, _) = entries_of(text, path)?;
        Ok(Aliases {
            table: Arc::new(Table::Memory(entries)),
        })
    }

    /// The targets of the alias `key` (lower case). An aliases file that
    /// cannot be read now (its index damaged and the text gone) is logged
    /// and answers none.
    fn get(&self, key: &str) -> Option<Vec<Written>> {
        let text = match self.table.get(key, Kind::Aliases) {
            Ok(text) => text?,
            Err(e) => {
                tracing::error!("{e}");
                return None;
            }
        };
        // Checked when the text was read; a line that no longer parses
        // can only come from a damaged index, which its checksums catch.
        parse_targets(&text).ok()
    }

    pub fn contains(&self, key: &str) -> bool {
        self.get(&key.to_lowercase()).is_some()
    }

    pub fn len(&self) -> usize {
        self.table.len()
    }

    pub fn is_empty(&self) -> bool {
        self.table.is_empty()
    }
}

/// Checks every entry of an aliases file and gives its entries (lower-case
/// key to targets as written) for [`Table`].
fn entries_of(text: &str, path: &Path) -> Result<(HashMap<String, String>, u64), FileError> {
    let mut entries = HashMap::new();
    for (line, logical) in logical_lines(text) {
        let syntax = |message: String| FileError::Syntax {
            file: path.to_path_buf(),
            line,
            message,
        };
        let (key, _) = parse_entry(&logical).map_err(syntax)?;
        if entries.contains_key(&key) {
            return Err(syntax(format!("{key} is defined twice")));
        }
        let targets = logical
            .split_once(':')
            .map(|(_, targets)| targets.trim().to_string())
            .unwrap_or_default();
        entries.insert(key, targets);
    }
    Ok((entries, 0))
}

/// Joins continuation lines and drops comments; yields (first line number,
/// text).
fn logical_lines(text: &str) -> Vec<(usize, String)> {
    let mut out: Vec<(usize, String)> = Vec::new();
    for (number, raw) in text.lines().enumerate() {
        if raw.trim_start().starts_with('#') || raw.trim().is_empty() {
            continue;
        }
        if raw.starts_with([' ', '\t'])
            && let Some((_, last)) = out.last_mut()
        {
            last.push(' ');
            last.push_str(raw.trim());
            continue;
        }
        out.push((number + 1, raw.trim().to_string()));
    }
    out
}

/// `KEY: TARGET, TARGET`.
fn parse_entry(text: &str) -> Result<(String, Vec<Written>), String> {
    let (key, rest) = text
        .split_once(':')
        .ok_or_else(|| format!("expected `name: target, ...`, found {text:?}"))?;
    let key = parse_key(key.trim())?;
    let targets = parse_targets(rest)?;
    if targets.is_empty() {
        return Err(format!("{key}: no targets"));
    }
    Ok((key, targets))
}

fn parse_key(key: &str) -> Result<String, String> {
    let bad = || format!("{key:?} is not an address, a local part or @domain");
    if key.is_empty() || key.chars().any(|c| c.is_control() || c.is_whitespace()) {
        return Err(bad());
    }
    if let Some(domain) = key.strip_prefix('@') {
        if !crate::proto::address::is_domain_name(domain) {
            return Err(bad());
        }
    } else if key.contains('@') {
        Address::parse(key).map_err(|_| bad())?;
    } else {
        Address::parse(&format!("{key}@x.test")).map_err(|_| bad())?;
    }
    Ok(key.to_lowercase())
}

/// Splits on commas outside double quotes and classifies each target.
fn parse_targets(text: &str) -> Result<Vec<Written>, String> {
    split_targets(text)?
        .into_iter()
        .map(|p| parse_target(&p))
        .collect()
}

/// Splits a target list at the commas outside double quotes (a quoted
/// pipe command may hold commas), trimmed, empty parts dropped.
fn split_targets(text: &str) -> Result<Vec<String>, String> {
    let mut parts = Vec::new();
    let mut current = String::new();
    let mut quoted = false;
    for c in text.chars() {
        match c {
            '"' => {
                quoted = !quoted;
                current.push(c);
            }
            ',' if !quoted => parts.push(std::mem::take(&mut current)),
            _ => current.push(c),
        }
    }
    if quoted {
        return Err("unterminated double quote".into());
    }
    parts.push(current);
    Ok(parts
        .iter()
        .map(|p| p.trim())
        .filter(|p| !p.is_empty())
        .map(str::to_string)
        .collect())
}

fn parse_target(text: &str) -> Result<Written, String> {
    if text.chars().any(char::is_control) {
        return Err(format!("{text:?}: control characters are not allowed"));
    }
    let unquoted = match text.strip_prefix('"').and_then(|t| t.strip_suffix('"')) {
        Some(inner) => inner.trim(),
        None => text,
    };
    if let Some(command) = unquoted.strip_prefix('|') {
        let command = command.trim();
        if command.is_empty() {
            return Err("empty command after |".into());
        }
        return EnvelopeText::new(command, MAX_COMMAND)
            .map(Written::Pipe)
            .map_err(|e| format!("{command:?}: {e}"));
    }
    if let Some(file) = unquoted.strip_prefix(":include:") {
        let file = file.trim();
        if file.is_empty() {
            return Err("empty :include: file name".into());
        }
        return Ok(Written::Include(PathBuf::from(file)));
    }
    if unquoted.starts_with('/') {
        return Err(format!(
            "{unquoted}: delivery to a file is not supported; use a maildir user or a |command"
        ));
    }
    let (mailbox, name) = match unquoted.strip_prefix('\\') {
        Some(name) => (true, name),
        None => (false, unquoted),
    };
    let check = if name.contains('@') {
        name.to_string()
    } else {
        format!("{name}@x.test")
    };
    Address::parse(&check).map_err(|e| format!("{name:?}: {e}"))?;
    Ok(if mailbox {
        Written::Mailbox(name.to_string())
    } else {
        Written::Address(name.to_string())
    })
}

/// Domains, users and aliases together: the answer to "who is this?".
#[derive(Debug, Clone)]
pub struct Directory {
    config: Config,
    domains: Domains,
    /// Shared, so a password check on the blocking pool can hold it.
    users: Arc<Users>,
    aliases: Aliases,
}

impl Directory {
    /// Loads the domains, users and aliases files named by the config.
    pub fn load(config: &Config) -> Result<Directory, FileError> {
        Ok(Directory {
            domains: Domains::load(&config.domains_file())?,
            users: Arc::new(Users::load(&config.users_file())?),
            aliases: Aliases::load(&config.aliases_file())?,
            config: config.clone(),
        })
    }

    /// [`load`](Directory::load) for a server that already has a directory
    /// in hand: a users file that is missing or emptied by accident is an
    /// error, so the caller keeps its last good copy.
    pub fn reload(config: &Config) -> Result<Directory, FileError> {
        Ok(Directory {
            domains: Domains::load(&config.domains_file())?,
            users: Arc::new(Users::reload(&config.users_file())?),
            aliases: Aliases::load(&config.aliases_file())?,
            config: config.clone(),
        })
    }

    pub fn from_parts(
        config: Config,
        domains: Domains,
        users: Users,
        aliases: Aliases,
    ) -> Directory {
        Directory {
            config,
            domains,
            users: Arc::new(users),
            aliases,
        }
    }

    /// The domains file's domains and the host name: mail to
    /// `root@HOSTNAME` (mail-inject's default sender) must come back here,
    /// as Postfix treats `$myhostname`.
    pub fn is_local_domain(&self, domain: &str) -> bool {
        self.domains.contains(domain) || domain.eq_ignore_ascii_case(&self.config.hostname)
    }

    /// The domain whose postmaster answers for this host: the host name if
    /// it is in the domains file, else the nearest listed domain above it
    /// (`mail.example.org` → `example.org`), else the first listed one.
    pub fn primary_domain(&self) -> Option<String> {
        let mut name = self.config.hostname.as_str();
        loop {
            if self.domains.contains(name) {
                return Some(name.to_lowercase());
            }
            match name.split_once('.') {
                Some((_, above)) => name = above,
                None => return self.domains.iter().next().map(str::to_string),
            }
        }
    }

    /// The postmaster alias that the host name's system addresses
    /// (`root`, `postmaster`, `MAILER-DAEMON`) lead to when nothing else
    /// claims them: `postmaster@` the [primary domain](Self::primary_domain).
    pub fn postmaster_alias(&self) -> Option<Address> {
        Address::parse(&format!("postmaster@{}", self.primary_domain()?)).ok()
    }

    /// Whether `address` is one of the host name's system addresses.
    fn is_host_system_address(&self, address: &Address) -> bool {
        address.domain().eq_ignore_ascii_case(&self.config.hostname)
            && ["root", "postmaster", "mailer-daemon"]
                .iter()
                .any(|name| address.local_part().eq_ignore_ascii_case(name))
    }

    pub fn users(&self) -> &Users {
        &self.users
    }

    /// Every user, read whole from the users file (the index cannot be
    /// walked): for mail to all users, not for a lookup.
    pub fn all_users(&self) -> Result<Vec<crate::directory::users::User>, FileError> {
        self.users.list(&self.config.users_file())
    }

    /// The users, to hand to work that outlives this borrow (a password
    /// check on the blocking pool).
    pub fn shared_users(&self) -> Arc<Users> {
        Arc::clone(&self.users)
    }

    /// The user an address delivers to directly (with or without +detail).
    pub fn user(&self, address: &Address) -> Option<User> {
        self.users.get(&address.lookup_key()).or_else(|| {
            let delimiter = self.config.delivery.recipient_delimiter?;
            self.users
                .get(&address.without_detail(delimiter)?.lookup_key())
        })
    }

    /// "No such user" — unless the users file is unavailable, when nobody
    /// can tell and the answer is "try again later".
    fn unknown(&self, address: &Address) -> ResolveError {
        match self.users.unavailable() {
            Some(why) => ResolveError::UsersUnavailable(why),
            None => ResolveError::UnknownUser(address.clone()),
        }
    }

    /// Where mail for `rcpt` goes; see the module doc for the order.
    pub fn resolve(&self, rcpt: &Address) -> Result<Vec<Target>, ResolveError> {
        let mut out = Vec::new();
        self.expand(rcpt, &mut Vec::new(), &mut out)?;
        Ok(out)
    }

    /// The queue recipients one RCPT turns into, after alias expansion:
    /// local mailboxes, remote addresses, pipe commands. Each keeps the
    /// address the sender gave as its RFC 3461 ORCPT, so a DSN names what
    /// the sender wrote.
    pub fn routes_for(&self, rcpt: &Address) -> Result<Vec<Recipient>, ResolveError> {
        let orcpt = EnvelopeText::sanitize(
            &format!("rfc822;{}", xtext::encode(&rcpt.to_string())),
            queue::MAX_FIELD,
        );
        let targets = self.resolve(rcpt)?;
        Ok(targets
            .into_iter()
            .map(|target| {
                let mut r = match target {
                    Target::Mailbox(address) => Recipient::new(Route::Local, address),
                    Target::Remote(address) => Recipient::new(Route::Remote, address),
                    Target::Pipe { alias, command } => Recipient::new(Route::Pipe(command), alias),
                };
                r.orcpt = Some(orcpt.clone());
                r
            })
            .collect())
    }

    fn expand(
        &self,
        address: &Address,
        path: &mut Vec<String>,
        out: &mut Vec<Target>,
    ) -> Result<(), ResolveError> {
        if !self.is_local_domain(address.domain()) {
            push(out, Target::Remote(address.clone()));
            return Ok(());
        }
        // An SRS address of ours: a bounce to mail a rule redirected goes
        // back to the original sender (the hash proves we made it).
        if address
            .local_part()
            .get(..5)
            .is_some_and(|p| p.eq_ignore_ascii_case("SRS0="))
            && let Some(secret) = self.config.srs_secret()
        {
            return match crate::directory::srs::reverse(
                address,
                &secret,
                crate::directory::srs::today(),
            ) {
                Some(original) => {
                    push(out, Target::Remote(original));
                    Ok(())
                }
                None => Err(ResolveError::UnknownUser(address.clone())),
            };
        }
        let key = address.lookup_key();
        if path.contains(&key) {
            if let Some(user) = self.user(address) {
                return self.mailbox(&user, out);
            }
            let mut chain = path.clone();
            chain.push(key);
            return Err(ResolveError::Loop(chain));
        }
        if let Some(targets) = self.alias_for(address) {
            return self.expand_targets(address, key, &targets, path, out);
        }
        if let Some(user) = self.user(address) {
            return self.mailbox(&user, out);
        }
        if self.is_host_system_address(address)
            && let Some(postmaster) = self.postmaster_alias()
            && postmaster.lookup_key() != key
        {
            path.push(key);
            let result = self.expand(&postmaster, path, out);
            path.pop();
            return result;
        }
        let catch_all = format!("@{}", address.domain());
        if !path.contains(&catch_all)
            && let Some(targets) = self.aliases.get(&catch_all)
        {
            return self.expand_targets(address, catch_all, &targets, path, out);
        }
        Err(self.unknown(address))
    }

    fn expand_targets(
        &self,
        address: &Address,
        key: String,
        targets: &[Written],
        path: &mut Vec<String>,
        out: &mut Vec<Target>,
    ) -> Result<(), ResolveError> {
        if path.len() >= self.config.delivery.alias_depth {
            let mut chain = path.clone();
            chain.push(key);
            return Err(ResolveError::TooDeep(chain));
        }
        path.push(key);
        for target in targets {
            self.expand_one(address, target, path, out)?;
        }
        path.pop();
        Ok(())
    }

    fn expand_one(
        &self,
        alias: &Address,
        target: &Written,
        path: &mut Vec<String>,
        out: &mut Vec<Target>,
    ) -> Result<(), ResolveError> {
        let qualify = |name: &str| -> Result<Address, ResolveError> {
            let text = if name.contains('@') {
                name.to_string()
            } else {
                format!("{name}@{}", alias.domain())
            };
            Address::parse(&text).map_err(|_| ResolveError::UnknownUser(alias.clone()))
        };
        match target {
            Written::Address(name) => self.expand(&qualify(name)?, path, out),
            Written::Mailbox(name) => {
                let address = qualify(name)?;
                match self.user(&address) {
                    Some(user) => self.mailbox(&user, out),
                    None if !self.is_local_domain(address.domain()) => {
                        push(out, Target::Remote(address));
                        Ok(())
                    }
                    None => Err(self.unknown(&address)),
                }
            }
            Written::Pipe(command) => {
                push(
                    out,
                    Target::Pipe {
                        alias: alias.clone(),
                        command: command.clone(),
                    },
                );
                Ok(())
            }
            Written::Include(file) => {
                let file = self.config.path(file);
                // An include is one step on the path like an alias, so a
                // file that includes itself (directly or through another)
                // is a loop and deep nesting hits alias_depth, instead of
                // recursing until the stack runs out.
                let key = format!(":include:{}", file.display());
                if path.contains(&key) {
                    let mut chain = path.clone();
                    chain.push(key);
                    return Err(ResolveError::Loop(chain));
                }
                if path.len() >= self.config.delivery.alias_depth {
                    let mut chain = path.clone();
                    chain.push(key);
                    return Err(ResolveError::TooDeep(chain));
                }
                let text = std::fs::read_to_string(&file).map_err(|e| ResolveError::Include {
                    file: file.clone(),
                    error: e.to_string(),
                })?;
                path.push(key);
                for (line, logical) in logical_lines(&text) {
                    let targets = parse_targets(&logical).map_err(|e| ResolveError::Include {
                        file: file.clone(),
                        error: format!("line {line}: {e}"),
                    })?;
                    for t in &targets {
                        self.expand_one(alias, t, path, out)?;
                    }
                }
                path.pop();
                Ok(())
            }
        }
    }

    fn mailbox(&self, user: &User, out: &mut Vec<Target>) -> Result<(), ResolveError> {
        let address = Address::parse(&user.address)
            .map_err(|_| ResolveError::Loop(vec![user.address.clone()]))?;
        push(out, Target::Mailbox(address));
        Ok(())
    }

    /// The alias entry for an address: exact, bare local part, then both
    /// again without the +detail.
    fn alias_for(&self, address: &Address) -> Option<Vec<Written>> {
        let lookup = |a: &Address| {
            let key = a.lookup_key();
            let local = key
                .rsplit_once('@')
                .map(|(l, _)| l.to_string())
                .unwrap_or_default();
            self.aliases.get(&key).or_else(|| self.aliases.get(&local))
        };
        lookup(address).or_else(|| {
            let delimiter = self.config.delivery.recipient_delimiter?;
            lookup(&address.without_detail(delimiter)?)
        })
    }
}

fn push(out: &mut Vec<Target>, target: Target) {
    if !out.contains(&target) {
        out.push(target);
    }
}

/// Adds `key: targets` to the aliases file under its lock; refuses a key
/// that exists or targets that do not parse, writing nothing.
pub fn add_alias(path: &Path, key: &str, targets: &[String]) -> Result<(), FileError> {
    let line = format!("{key}: {}", targets.join(", "));
    let (key, _) = parse_entry(&line).map_err(FileError::Refused)?;
    let edited = fsutil::edit_locked(path, |mut text| {
        let existing = Aliases::parse(&text, path)?;
        if existing.contains(&key) {
            return Err(FileError::Refused(format!(
                "{key} exists already; `postroom alias del {key}` first"
            )));
        }
        if !text.is_empty() && !text.ends_with('\n') {
            text.push('\n');
        }
        text.push_str(&line);
        text.push('\n');
        Ok(text)
    });
    if edited.is_ok() {
        Table::refresh(path, Kind::Aliases, entries_of);
    }
    edited
}

/// Removes an alias with its continuation lines.
pub fn remove_alias(path: &Path, key: &str) -> Result<(), FileError> {
    let key = key.trim().to_lowercase();
    let edited = fsutil::edit_locked(path, |text| {
        let mut out = String::with_capacity(text.len());
        let mut found = false;
        let mut skipping = false;
        // Comments and blank lines do not end an entry (a continuation line
        // after them still belongs to it), so while an entry is being
        // dropped they wait here: dropped with a later continuation, kept
        // when the next entry starts.
        let mut held = String::new();
        for line in text.lines() {
            let aside = line.trim().is_empty() || line.trim_start().starts_with('#');
            let continuation = line.starts_with([' ', '\t']) && !aside;
            if aside {
                if skipping {
                    held.push_str(line);
                    held.push('\n');
                } else {
                    out.push_str(line);
                    out.push('\n');
                }
                continue;
            }
            if continuation {
                held.clear();
            } else {
                out.push_str(&std::mem::take(&mut held));
                skipping = line
                    .split(':')
                    .next()
                    .is_some_and(|k| k.trim().to_lowercase() == key);
                found |= skipping;
            }
            if !skipping {
                out.push_str(line);
                out.push('\n');
            }
        }
        out.push_str(&held);
        if !found {
            return Err(FileError::Refused(format!(
                "{key} is not an alias (see `postroom alias list`)"
            )));
        }
        Ok(out)
    });
    if edited.is_ok() {
        Table::refresh(path, Kind::Aliases, entries_of);
    }
    edited
}

/// Every alias as (key, targets as written), in file order.
pub fn list_aliases(path: &Path) -> Result<Vec<(String, Vec<String>)>, FileError> {
    Ok(numbered_aliases(path)?
        .into_iter()
        .map(|(_, key, targets)| (key, targets))
        .collect())
}

/// [`list_aliases`] with the line each entry starts on, for messages that
/// point the admin at it.
pub fn numbered_aliases(path: &Path) -> Result<Vec<(usize, String, Vec<String>)>, FileError> {
    let text = FileError::read(path)?;
    Aliases::parse(&text, path)?;
    Ok(logical_lines(&text)
        .into_iter()
        .filter_map(|(line, l)| {
            let (key, rest) = l.split_once(':')?;
            Some((
                line,
                key.trim().to_string(),
                // The file parsed above, so the quotes balance.
                split_targets(rest).unwrap_or_default(),
            ))
        })
        .collect())
}

impl Directory {
    /// Whether a target written for alias `key` leads somewhere today: a
    /// pipe, an include, a remote address, or a local user or alias. A bare
    /// name takes the key's domain (the primary domain for a bare key).
    /// `postroom alias add` refuses the rest unless told it is a forward
    /// reference.
    pub fn check_target(&self, key: &str, target: &str) -> Result<(), String> {
        match parse_target(target)? {
            Written::Pipe(_) | Written::Include(_) => Ok(()),
            Written::Address(name) | Written::Mailbox(name) => {
                let text = if name.contains('@') {
                    name
                } else {
                    let domain = match key.rsplit_once('@') {
                        Some((_, domain)) => Some(domain.to_string()),
                        None => self.primary_domain(),
                    };
                    format!("{name}@{}", domain.unwrap_or_default())
                };
                let address = Address::parse(&text).map_err(|e| format!("{text:?}: {e}"))?;
                match self.resolve(&address) {
                    Ok(_) | Err(ResolveError::UsersUnavailable(_)) => Ok(()),
                    Err(ResolveError::UnknownUser(_)) => Err(format!(
                        "{address} is no user, alias, remote address, |command or :include:"
                    )),
                    Err(e) => Err(format!("{address}: {e}")),
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn directory(aliases: &str) -> (tempfile::TempDir, Directory) {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(
            dir.path().join("team.list"),
            "bob, cat@example.test\n# x\ndan@remote.test\n",
        )
        .unwrap();
        std::fs::write(dir.path().join("nested.list"), ":include:team.list\n").unwrap();
        let mut config = Config::parse("hostname = \"mx.example.test\"\n").unwrap();
        config.dir = dir.path().to_path_buf();
        let users = Users::parse(
            "ann@example.test:{PLAIN}x\nbob@example.test:{PLAIN}x\ncat@example.test:{PLAIN}x\njoe@example.test:{PLAIN}x\n",
            Path::new("users"),
        )
        .unwrap();
        let domains = Domains::parse("example.test\nother.test\n", Path::new("domains")).unwrap();
        let aliases = Aliases::parse(aliases, Path::new("aliases")).unwrap();
        (dir, Directory::from_parts(config, domains, users, aliases))
    }

    fn a(s: &str) -> Address {
        Address::parse(s).unwrap()
    }

    fn names(targets: &[Target]) -> Vec<String> {
        targets
            .iter()
            .map(|t| match t {
                Target::Mailbox(a) => format!("mbox:{a}"),
                Target::Remote(a) => format!("remote:{a}"),
                Target::Pipe { alias, command } => format!("pipe:{alias}:{command}"),
            })
            .collect()
    }

    #[test]
    fn lists_includes_pipes_and_remote() {
        let (_d, dir) = directory(
            "team@example.test: ann, :include:team.list\n\
             deep@example.test: :include:nested.list\n\
             bot@example.test: \"|handler --a, --b\", ann\n\
             all@example.test: team@example.test,\n  bot@example.test, ANN@example.test\n",
        );
        assert_eq!(
            names(&dir.resolve(&a("all@example.test")).unwrap()),
            [
                "mbox:ann@example.test",
                "mbox:bob@example.test",
                "mbox:cat@example.test",
                "remote:dan@remote.test",
                "pipe:bot@example.test:handler --a, --b"
            ]
        );
        assert_eq!(dir.resolve(&a("deep@example.test")).unwrap().len(), 3);
        assert_eq!(
            names(&dir.resolve(&a("x@remote.test")).unwrap()),
            ["remote:x@remote.test"]
        );
    }

    #[test]
    fn bare_keys_subaddress_case_and_catch_all() {
        let (_d, dir) =
            directory("postmaster: ann@example.test\nabuse: ann\n@other.test: bob@example.test\n");
        assert_eq!(
            names(&dir.resolve(&a("PostMaster@Other.test")).unwrap()),
            ["mbox:ann@example.test"]
        );
        // A bare target lives in the domain being resolved: ann@other.test
        // is no user, so the catch-all takes it.
        assert_eq!(
            names(&dir.resolve(&a("abuse@other.test")).unwrap()),
            ["mbox:bob@example.test"]
        );
        assert_eq!(
            names(&dir.resolve(&a("Ann+lists@example.test")).unwrap()),
            ["mbox:ann@example.test"]
        );
        assert_eq!(
            names(&dir.resolve(&a("whoever@other.test")).unwrap()),
            ["mbox:bob@example.test"]
        );
        assert_eq!(
            dir.resolve(&a("nobody@example.test")),
            Err(ResolveError::UnknownUser(a("nobody@example.test")))
        );
    }

    #[test]
    fn an_unavailable_users_file_makes_unknown_users_temporary() {
        let (_d, dir) = directory("fwd@example.test: far@remote.test\nx@example.test: \\nobody\n");
        let config = dir.config.clone();
        let aliases = dir.aliases.clone();
        let domains = Domains::parse("example.test\n", Path::new("domains")).unwrap();
        for (text, temporary) in [
            ("", true),
            ("# just a comment\n", true),
            (
                "# postroom: no users (`postroom user del` removed the last one)\n",
                false,
            ),
        ] {
            let users = Users::parse(text, Path::new("users")).unwrap();
            let dir =
                Directory::from_parts(config.clone(), domains.clone(), users, aliases.clone());
            for rcpt in ["nobody@example.test", "x@example.test"] {
                let e = dir.resolve(&a(rcpt)).unwrap_err();
                assert_eq!(e.is_temporary(), temporary, "{text:?} {rcpt}: {e}");
                if temporary {
                    assert_eq!(
                        e.to_string(),
                        "local users cannot be looked up now (the users file lists no users); \
                         try again later"
                    );
                }
            }
            // Aliases that need no user still resolve.
            assert_eq!(
                names(&dir.resolve(&a("fwd@example.test")).unwrap()),
                ["remote:far@remote.test"]
            );
        }
    }

    #[test]
    fn loops_self_reference_and_depth() {
        let (_d, dir) = directory(
            "a@example.test: b@example.test\nb@example.test: a@example.test\n\
             joe@example.test: joe, \\joe, joe@remote.test\n\
             x@example.test: \\ann\n",
        );
        let e = dir.resolve(&a("a@example.test")).unwrap_err();
        assert_eq!(
            e.to_string(),
            "alias loop: a@example.test -> b@example.test -> a@example.test"
        );
        assert!(!e.is_temporary());
        assert_eq!(
            names(&dir.resolve(&a("joe@example.test")).unwrap()),
            ["mbox:joe@example.test", "remote:joe@remote.test"]
        );
        assert_eq!(
            names(&dir.resolve(&a("x@example.test")).unwrap()),
            ["mbox:ann@example.test"]
        );

        // A chain of exactly alias_depth (10) expansions works; one more fails.
        let chain = |n: usize| -> String {
            (0..n)
                .map(|i| {
                    format!(
                        "c{i}@example.test: {}\n",
                        if i + 1 == n {
                            "ann".to_string()
                        } else {
                            format!("c{}", i + 1)
                        }
                    )
                })
                .collect()
        };
        let (_d, dir) = directory(&chain(10));
        assert!(dir.resolve(&a("c0@example.test")).is_ok());
        let (_d, dir) = directory(&chain(11));
        assert!(matches!(
            dir.resolve(&a("c0@example.test")),
            Err(ResolveError::TooDeep(_))
        ));
    }

    #[test]
    fn missing_include_is_temporary() {
        let (_d, dir) = directory("l@example.test: :include:gone.list\n");
        let e = dir.resolve(&a("l@example.test")).unwrap_err();
        assert!(
            e.is_temporary() && e.to_string().contains("gone.list"),
            "{e}"
        );
    }

    #[test]
    fn syntax_errors_name_file_and_line() {
        for (text, want) in [
            ("ok: ann\nno colon here\n", "aliases:2: expected"),
            ("ok: ann\nempty:\n", "aliases:2: empty: no targets"),
            (
                "f: /var/mail/f\n",
                "aliases:1: /var/mail/f: delivery to a file",
            ),
            ("q: \"|cmd\n", "aliases:1: unterminated"),
            ("a: b\na: c\n", "aliases:2: a is defined twice"),
            ("p: |\n", "aliases:1: empty command"),
            ("bad key: x\n", "aliases:1: \"bad key\""),
        ] {
            let e = Aliases::parse(text, Path::new("aliases"))
                .unwrap_err()
                .to_string();
            assert!(e.starts_with(want), "{text:?}: {e}");
        }
    }

    #[test]
    fn edits_under_lock() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("aliases");
        std::fs::write(&path, "# top\nold: ann,\n  bob\nkeep: cat\n").unwrap();
        add_alias(&path, "new@example.test", &["ann".into(), "|cmd x".into()]).unwrap();
        assert!(add_alias(&path, "keep", &["x".into()]).is_err());
        assert!(add_alias(&path, "bad", &["/file".into()]).is_err());
        remove_alias(&path, "OLD").unwrap();
        assert!(remove_alias(&path, "old").is_err());
        assert_eq!(
            std::fs::read_to_string(&path).unwrap(),
            "# top\nkeep: cat\nnew@example.test: ann, |cmd x\n"
        );
        let listed = list_aliases(&path).unwrap();
        assert_eq!(
            listed[1],
            (
                "new@example.test".to_string(),
                vec!["ann".to_string(), "|cmd x".to_string()]
            )
        );
    }

    #[test]
    fn include_loops_and_nesting_end_in_errors() {
        let (d, dir) = directory(
            "me@example.test: :include:self.list\n\
             ping@example.test: :include:ping.list\n\
             deep@example.test: :include:n0.list\n\
             twice@example.test: :include:n11.list, :include:n11.list\n",
        );
        std::fs::write(d.path().join("self.list"), ":include:self.list\n").unwrap();
        std::fs::write(d.path().join("ping.list"), ":include:pong.list\n").unwrap();
        std::fs::write(d.path().join("pong.list"), "ann, :include:ping.list\n").unwrap();
        for i in 0..12 {
            std::fs::write(
                d.path().join(format!("n{i}.list")),
                format!(":include:n{}.list\n", i + 1),
            )
            .unwrap();
        }
        std::fs::write(d.path().join("n12.list"), "ann\n").unwrap();
        for (rcpt, loop_expected) in [("me", true), ("ping", true), ("deep", false)] {
            match dir.resolve(&a(&format!("{rcpt}@example.test"))) {
                Err(ResolveError::Loop(_)) if loop_expected => {}
                Err(ResolveError::TooDeep(_)) if !loop_expected => {}
                other => panic!("{rcpt}: {other:?}"),
            }
        }
        // The same file twice side by side is no loop.
        assert_eq!(
            names(&dir.resolve(&a("twice@example.test")).unwrap()),
            ["mbox:ann@example.test"]
        );
    }

    #[test]
    fn remove_keeps_comments_and_drops_continuations_after_them() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("aliases");
        std::fs::write(
            &path,
            "old: ann,\n# about bob\n  bob\n\n# next\nkeep: \"|cmd a, b\", cat\n",
        )
        .unwrap();
        remove_alias(&path, "old").unwrap();
        assert_eq!(
            std::fs::read_to_string(&path).unwrap(),
            "\n# next\nkeep: \"|cmd a, b\", cat\n"
        );
        assert_eq!(
            list_aliases(&path).unwrap(),
            [(
                "keep".to_string(),
                vec!["\"|cmd a, b\"".to_string(), "cat".to_string()]
            )]
        );
    }

    proptest::proptest! {
        #[test]
        fn parse_never_panics(text in "\\PC{0,300}") {
            let _ = Aliases::parse(&text, Path::new("aliases"));
        }
    }
}
