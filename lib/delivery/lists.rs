//! Mailing lists in the tree: `lists/LIST@DOMAIN/` holds a list's settings
//! (`config`, TOML), its members (`members`, one address a line with
//! options), posters and moderators (`posters`, `moderators`), held posts
//! (`held/`) and the archive (`archive/`, a maildir). See
//! `postroom-lists(5)`.
//!
//! Member files are plain text so an admin can read and fix them, edited
//! under a lock with an atomic replace (`fsutil::edit_locked`); adding
//! 100,000 members is one read, one set insertion each, one write.

use std::collections::HashSet;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use base64::Engine;
use hmac::{Hmac, Mac};
use sha2::Sha256;

use crate::config::Config;
use crate::delivery::submit::{self, Recipients, Submission, SubmitError, Unresolvable};
use crate::directory::aliases::Directory;
use crate::proto::address::{Address, ReversePath};
use crate::store::fsutil::{self, FileError};

/// The first path segment of a one-click unsubscribe URL
/// (`unsubscribe_url/unsubscribe/LIST/MEMBER/TOKEN`, see `list-web(8)`).
pub const ONE_CLICK: &str = "unsubscribe";

/// Characters a member address keeps as they are in a URL path segment
/// (RFC 3986 unreserved, and `@` and `+`, which a path may carry as they
/// are); the rest are percent-encoded.
const SEGMENT: &percent_encoding::AsciiSet = &percent_encoding::NON_ALPHANUMERIC
    .remove(b'-')
    .remove(b'.')
    .remove(b'_')
    .remove(b'~')
    .remove(b'@')
    .remove(b'+');

#[derive(Debug, thiserror::Error)]
pub enum ListError {
    #[error("no list {0} (see `list-expand --config C show`, or create it)")]
    NoSuchList(String),
    #[error("the list {0} exists already")]
    Exists(String),
    #[error("{}: {message}", path.display())]
    Config { path: PathBuf, message: String },
    #[error(transparent)]
    File(#[from] FileError),
    /// A reply or confirmation request that could not be queued.
    #[error("queueing the list's reply: {0}")]
    Submit(#[from] SubmitError),
    /// The address to answer does not resolve, for good (no such user in
    /// a local domain, an alias loop): nothing can ever be sent to it, so
    /// a request from it is dropped rather than tried again.
    #[error("{address} cannot receive mail: {reason}")]
    Undeliverable { address: String, reason: String },
    #[error("composing the list's reply: {0}")]
    Compose(std::io::Error),
    #[error("{}: {error}", path.display())]
    Io {
        path: PathBuf,
        #[source]
        error: std::io::Error,
    },
}

/// Who may post.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Policy {
    /// Anyone.
    Open,
    /// Members, posters and owners.
    Members,
    /// Every post waits for a moderator (moderators and owners post freely).
    Moderated,
    /// Only posters and owners (a newsletter).
    Announce,
}

/// What happens to a post from someone the policy does not let in.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Outsiders {
    /// Held for a moderator.
    Hold,
    /// Refused with a message to the sender.
    Reject,
}

/// Where replies go.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ReplyTo {
    /// Leave the header as the sender wrote it.
    Sender,
    /// Reply-To: the list.
    List,
}

/// A list's `config` file.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ListConfig {
    /// One line about the list, for List-Id and help replies.
    #[serde(default)]
    pub description: String,
    pub owners: Vec<String>,
    #[serde(default = "default_policy")]
    pub policy: Policy,
    #[serde(default = "default_outsiders")]
    pub outsiders: Outsiders,
    /// Put in front of every subject, e.g. `[team]`.
    #[serde(default)]
    pub subject_tag: Option<String>,
    #[serde(default = "default_reply_to")]
    pub reply_to: ReplyTo,
    /// Keep every accepted post in `archive/`.
    #[serde(default = "yes")]
    pub archive: bool,
    /// Anyone on the list may ask for the member list by mail.
    #[serde(default)]
    pub members_visible: bool,
    /// How long a subscribe or unsubscribe confirmation stays good, in
    /// seconds.
    #[serde(default = "three_days")]
    pub confirm_seconds: u64,
    /// Text added at the end of every post (MIME-correctly: see
    /// `list-expand(1)`).
    #[serde(default)]
    pub footer: Option<String>,
    /// The HTTPS URL where `list-web` answers: with it, each member's
    /// copy carries their one-click URL under it
    /// ([`List::one_click_url`]) and List-Unsubscribe-Post (RFC 8058).
    #[serde(default)]
    pub unsubscribe_url: Option<String>,
    /// Bounces after which a member is set to `nomail`.
    #[serde(default = "five")]
    pub bounce_limit: u32,
}

fn five() -> u32 {
    5
}

fn three_days() -> u64 {
    3 * 86400
}

fn default_policy() -> Policy {
    Policy::Members
}
fn default_outsiders() -> Outsiders {
    Outsiders::Hold
}
fn default_reply_to() -> ReplyTo {
    ReplyTo::Sender
}
fn yes() -> bool {
    true
}

/// One member and their options.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Member {
    /// Lower case.
    pub address: String,
    /// Gets digests instead of each post.
    pub digest: bool,
    /// Gets nothing (on holiday, say) but may still post.
    pub nomail: bool,
}

/// A confirmation request made by [`List::confirmation`], not sent yet.
#[derive(Debug, Clone)]
pub struct Confirmation {
    /// Its name in `pending/`.
    pub token: String,
    pub subject: String,
    pub text: String,
}

/// What [`List::take_bounce`] made of a bounce.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Bounce {
    /// The address names no member: ignored.
    NoMember,
    /// The member gets no mail already: ignored.
    MailOff(Address),
    /// Counted: the member's bounces so far.
    Counted(Address, u32),
    /// The member reached `bounce_limit` with this many and is set to
    /// `nomail` now (the owners are to be told).
    Stopped(Address, u32),
}

/// How many confirmation requests from the web form may wait at once
/// within the resend window before the form sends no more
/// ([`List::asked_recently`]).
pub const MAX_FRESH_REQUESTS: usize = 100;

/// An open list.
#[derive(Debug, Clone)]
pub struct List {
    pub address: Address,
    pub dir: PathBuf,
    pub config: ListConfig,
    /// The one-click secret once read: a post with one-click URLs makes
    /// a token for every member, from many threads.
    secret: std::sync::OnceLock<Vec<u8>>,
}

/// A confirmation waiting in the list's `pending/`, one file a token:
/// `ACTION ADDRESS SECONDS`, the address as its lookup key and the time
/// it was asked for. Written and read here only.
struct Pending<'a> {
    action: &'a str,
    address: &'a str,
    at: u64,
}

impl<'a> Pending<'a> {
    /// `None` for a file that is not one; a time that does not read is
    /// the epoch, so such a request is long expired.
    fn parse(text: &'a str) -> Option<Pending<'a>> {
        let mut words = text.split_whitespace();
        let (action, address, at) = (words.next()?, words.next()?, words.next()?);
        Some(Pending {
            action,
            address,
            at: at.parse().unwrap_or(0),
        })
    }

    fn render(&self) -> String {
        format!("{} {} {}\n", self.action, self.address, self.at)
    }
}

impl List {
    /// Where a list lives.
    pub fn dir_for(config: &Config, address: &Address) -> PathBuf {
        config.lists_dir().join(address.lookup_key())
    }

    pub fn create(config: &Config, address: &Address, owner: &Address) -> Result<List, ListError> {
        let dir = List::dir_for(config, address);
        if dir.join("config").exists() {
            return Err(ListError::Exists(address.to_string()));
        }
        for sub in [
            "",
            "held",
            "pending",
            "archive/new",
            "archive/cur",
            "archive/tmp",
        ] {
            std::fs::create_dir_all(dir.join(sub)).map_err(|error| ListError::Io {
                path: dir.join(sub),
                error,
            })?;
        }
        let list_config = ListConfig {
            description: String::new(),
            owners: vec![owner.to_string()],
            policy: default_policy(),
            outsiders: default_outsiders(),
            subject_tag: None,
            reply_to: default_reply_to(),
            archive: true,
            members_visible: false,
            confirm_seconds: three_days(),
            bounce_limit: five(),
            unsubscribe_url: None,
            footer: None,
        };
        let text = toml::to_string(&list_config).map_err(|e| ListError::Config {
            path: dir.join("config"),
            message: e.to_string(),
        })?;
        fsutil::write_atomic(&dir.join("config"), text.as_bytes()).map_err(|error| {
            ListError::Io {
                path: dir.join("config"),
                error,
            }
        })?;
        for file in ["members", "posters", "moderators"] {
            fsutil::write_atomic(&dir.join(file), b"").map_err(|error| ListError::Io {
                path: dir.join(file),
                error,
            })?;
        }
        List::open(config, address)
    }

    pub fn open(config: &Config, address: &Address) -> Result<List, ListError> {
        let dir = List::dir_for(config, address);
        let path = dir.join("config");
        let text = match std::fs::read_to_string(&path) {
            Ok(text) => text,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                return Err(ListError::NoSuchList(address.to_string()));
            }
            Err(error) => return Err(ListError::Io { path, error }),
        };
        let list_config: ListConfig = toml::from_str(&text).map_err(|e| ListError::Config {
            path: path.clone(),
            message: e.to_string().trim().to_string(),
        })?;
        if let Some(url) = &list_config.unsubscribe_url
            && (!url.starts_with("https://") || url.contains(['<', '>', ',', ' ', '\r', '\n']))
        {
            return Err(ListError::Config {
                path,
                message: format!("unsubscribe_url: {url:?} must be an https:// URL (RFC 8058)"),
            });
        }
        // Lists are named in lower case everywhere (files, headers).
        let address = Address::parse(&address.lookup_key()).unwrap_or_else(|_| address.clone());
        Ok(List {
            address,
            dir,
            config: list_config,
            secret: std::sync::OnceLock::new(),
        })
    }

    /// Every list in the tree, by address.
    pub fn all(config: &Config) -> Result<Vec<Address>, ListError> {
        let dir = config.lists_dir();
        let entries = match std::fs::read_dir(&dir) {
            Ok(entries) => entries,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
            Err(error) => return Err(ListError::Io { path: dir, error }),
        };
        let mut lists: Vec<Address> = entries
            .flatten()
            .filter(|e| e.path().join("config").exists())
            .filter_map(|e| Address::parse(&e.file_name().to_string_lossy()).ok())
            .collect();
        lists.sort_by_key(|a| a.lookup_key());
        Ok(lists)
    }

    /// Removes the list and everything in it.
    pub fn delete(self) -> Result<(), ListError> {
        std::fs::remove_dir_all(&self.dir).map_err(|error| ListError::Io {
            path: self.dir.clone(),
            error,
        })
    }

    pub fn members(&self) -> Result<Vec<Member>, ListError> {
        Ok(parse_members(&FileError::read(&self.dir.join("members"))?))
    }

    /// Addresses in `posters` or `moderators`.
    pub fn roster(&self, file: &str) -> Result<HashSet<String>, ListError> {
        Ok(parse_members(&FileError::read(&self.dir.join(file))?)
            .into_iter()
            .map(|m| m.address)
            .collect())
    }

    /// True when `address` is one of the owners.
    pub fn is_owner(&self, address: &Address) -> bool {
        self.config
            .owners
            .iter()
            .any(|o| o.eq_ignore_ascii_case(&address.lookup_key()))
    }

    /// Adds addresses to a member file (`members`, `posters`,
    /// `moderators`); those already there are left as they are. Returns how
    /// many were new.
    pub fn add(&self, file: &str, addresses: &[Address]) -> Result<usize, ListError> {
        let mut added = 0;
        fsutil::edit_locked(&self.dir.join(file), |text| -> Result<String, FileError> {
            let mut present: HashSet<String> = parse_members(&text)
                .into_iter()
                .map(|m| m.address)
                .collect();
            let mut out = text;
            if !out.is_empty() && !out.ends_with('\n') {
                out.push('\n');
            }
            for address in addresses {
                let key = address.lookup_key();
                if present.insert(key.clone()) {
                    out.push_str(&key);
                    out.push('\n');
                    added += 1;
                }
            }
            Ok(out)
        })?;
        Ok(added)
    }

    /// Removes addresses from a member file; returns how many were there.
    pub fn remove(&self, file: &str, addresses: &[Address]) -> Result<usize, ListError> {
        let gone: HashSet<String> = addresses.iter().map(Address::lookup_key).collect();
        let mut removed = 0;
        fsutil::edit_locked(&self.dir.join(file), |text| -> Result<String, FileError> {
            let mut out = String::with_capacity(text.len());
            for line in text.lines() {
                let address = line.split_whitespace().next().unwrap_or("").to_lowercase();
                if gone.contains(&address) {
                    removed += 1;
                } else {
                    out.push_str(line);
                    out.push('\n');
                }
            }
            Ok(out)
        })?;
        Ok(removed)
    }

    /// Sets a member's options; `None` leaves one as it is. False when the
    /// address is no member. A member whose mail is turned back on starts
    /// with no bounces counted (as Mailman and mlmmj do), so the bounces
    /// that stopped it cannot stop it again at the next one.
    pub fn set_options(
        &self,
        address: &Address,
        digest: Option<bool>,
        nomail: Option<bool>,
    ) -> Result<bool, ListError> {
        let key = address.lookup_key();
        let mut found = false;
        let mut re_enabled = false;
        fsutil::edit_locked(
            &self.dir.join("members"),
            |text| -> Result<String, FileError> {
                let mut out = String::with_capacity(text.len() + 16);
                for member in parse_members(&text) {
                    let mut m = member;
                    if m.address == key {
                        found = true;
                        re_enabled = m.nomail && nomail == Some(false);
                        m.digest = digest.unwrap_or(m.digest);
                        m.nomail = nomail.unwrap_or(m.nomail);
                    }
                    out.push_str(&m.address);
                    if m.digest {
                        out.push_str(" digest");
                    }
                    if m.nomail {
                        out.push_str(" nomail");
                    }
                    out.push('\n');
                }
                Ok(out)
            },
        )?;
        if re_enabled {
            self.forget_bounces(address)?;
        }
        Ok(found)
    }

    /// True when a confirmation of `action` for `address` was asked for
    /// less than `seconds` ago and is still waiting (a file in `pending/`).
    /// `list-web` sends no second one then, so its form cannot be used to
    /// flood someone's mailbox with confirmation requests. Also true when
    /// [`MAX_FRESH_REQUESTS`] requests of any address are that fresh: the
    /// spellings of one mailbox (quoted, a trailing dot...) are many, and
    /// the list's `pending/` must not grow with what strangers post.
    pub fn asked_recently(
        &self,
        action: &str,
        address: &Address,
        seconds: u64,
    ) -> Result<bool, ListError> {
        let dir = self.dir.join("pending");
        let entries = match std::fs::read_dir(&dir) {
            Ok(entries) => entries,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(false),
            Err(error) => return Err(ListError::Io { path: dir, error }),
        };
        let key = address.lookup_key();
        let now = fsutil::now_secs();
        let mut fresh = 0;
        for entry in entries.flatten() {
            let Ok(text) = std::fs::read_to_string(entry.path()) else {
                continue; // taken meanwhile
            };
            if let Some(pending) = Pending::parse(&text)
                && now.saturating_sub(pending.at) < seconds
            {
                fresh += 1;
                if (pending.action == action && pending.address == key)
                    || fresh >= MAX_FRESH_REQUESTS
                {
                    return Ok(true);
                }
            }
        }
        Ok(false)
    }

    /// Keeps `action address` under a new unguessable token for a
    /// confirmation, and returns the token.
    pub fn new_token(&self, action: &str, address: &Address) -> Result<String, ListError> {
        use rand::RngCore;
        let mut bytes = [0u8; 16];
        rand::thread_rng().fill_bytes(&mut bytes);
        let token: String = bytes.iter().map(|b| format!("{b:02x}")).collect();
        let path = self.dir.join("pending").join(&token);
        let text = Pending {
            action,
            address: &address.lookup_key(),
            at: fsutil::now_secs(),
        }
        .render();
        std::fs::create_dir_all(self.dir.join("pending"))
            .and_then(|()| fsutil::write_atomic(&path, text.as_bytes()))
            .map_err(|error| ListError::Io { path, error })?;
        Ok(token)
    }

    /// Takes a confirmation token: `(action, address)` if it exists and has
    /// not expired. A token works once.
    pub fn take_token(&self, token: &str) -> Result<Option<(String, Address)>, ListError> {
        if token.len() != 32 || !token.bytes().all(|b| b.is_ascii_hexdigit()) {
            return Ok(None);
        }
        let path = self.dir.join("pending").join(token.to_ascii_lowercase());
        let text = match std::fs::read_to_string(&path) {
            Ok(text) => text,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(error) => return Err(ListError::Io { path, error }),
        };
        let _ = std::fs::remove_file(&path);
        let Some(pending) = Pending::parse(&text) else {
            return Ok(None);
        };
        if fsutil::now_secs().saturating_sub(pending.at) > self.config.confirm_seconds {
            return Ok(None);
        }
        Ok(Address::parse(pending.address)
            .ok()
            .map(|a| (pending.action.to_string(), a)))
    }

    /// Starts a subscribe or unsubscribe that `who` must confirm (by
    /// mail to the request address, or through `list-web`): keeps
    /// `action address` under a new token and returns it with the subject
    /// and text of the confirmation request. The subject carries the
    /// token, so a plain reply confirms. The caller queues the request
    /// and, if that fails, removes the token ([`List::cancel_token`]), so
    /// `pending/` holds only confirmations that were sent.
    pub fn confirmation(&self, action: &str, who: &Address) -> Result<Confirmation, ListError> {
        let token = self.new_token(action, who)?;
        let text = format!(
            "To {action} {who} {} {}, reply to this message keeping the subject, or send\r\n\
             a message to {} with this line:\r\n\r\n    confirm {token}\r\n\r\n\
             The confirmation is good for {} hours. If you did not ask for this, do nothing.",
            if action == "subscribe" { "to" } else { "from" },
            self.address,
            self.request_address(),
            self.config.confirm_seconds / 3600
        );
        Ok(Confirmation {
            subject: format!("confirm {token}"),
            token,
            text,
        })
    }

    /// [`List::confirmation`] queued to `who` as a reply of its own (the
    /// web form); the token is removed again when it cannot be queued.
    pub fn send_confirmation(
        &self,
        config: &Config,
        action: &str,
        who: &Address,
    ) -> Result<(), ListError> {
        let confirmation = self.confirmation(action, who)?;
        let sent = self.reply(config, who, &confirmation.subject, &confirmation.text);
        if sent.is_err() {
            self.cancel_token(&confirmation.token)?;
        }
        sent
    }

    /// Removes a token whose confirmation request was never sent.
    pub fn cancel_token(&self, token: &str) -> Result<(), ListError> {
        let path = self.dir.join("pending").join(token);
        match std::fs::remove_file(&path) {
            Ok(()) => Ok(()),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
            Err(error) => Err(ListError::Io { path, error }),
        }
    }

    /// Whether `to` can be answered at all: `Err(Undeliverable)` when it
    /// does not resolve for good (an unknown user of a local domain),
    /// `Err(Submit)` when it cannot be looked up now. A request is checked
    /// before anything in it is done, so one that can never be answered
    /// changes nothing.
    pub fn check_reply_address(&self, config: &Config, to: &Address) -> Result<(), ListError> {
        let directory = Directory::load(config)?;
        submit::resolve(&directory, std::slice::from_ref(to), Unresolvable::Refuse)
            .map(drop)
            .map_err(undeliverable_or_submit)
    }

    /// Queues a message from the request address to `to`: the null
    /// sender and `Auto-Submitted: auto-replied`, so two robots cannot
    /// answer each other for ever. An address that expands to nobody gets
    /// nothing, and that is no error; one that does not resolve for good
    /// is [`ListError::Undeliverable`].
    pub fn reply(
        &self,
        config: &Config,
        to: &Address,
        subject: &str,
        text: &str,
    ) -> Result<(), ListError> {
        let message = mail_builder::MessageBuilder::new()
            .from(self.request_address())
            .to(to.to_string())
            .subject(crate::proto::message::header_safe(subject))
            .header(
                "Auto-Submitted",
                mail_builder::headers::raw::Raw::new("auto-replied"),
            )
            .text_body(text)
            .write_to_vec()
            .map_err(ListError::Compose)?;
        let directory = Directory::load(config)?;
        let submission = Submission::new(
            ReversePath::Null,
            Recipients::Addresses(std::slice::from_ref(to), Unresolvable::Refuse),
        );
        match submit::submit(config, &directory, submission, &message) {
            Ok(_) | Err(SubmitError::NoRecipients) => Ok(()),
            Err(e) => Err(undeliverable_or_submit(e)),
        }
    }

    /// The key of this list's one-click unsubscribe tokens: `secret` in
    /// the list's folder, made on first use (`fsutil::secret_or_create`).
    fn unsubscribe_secret(&self) -> Result<&[u8], ListError> {
        if let Some(secret) = self.secret.get() {
            return Ok(secret);
        }
        let path = self.dir.join("secret");
        let read =
            fsutil::secret_or_create(&path).map_err(|error| ListError::Io { path, error })?;
        // Two threads may read it at once: both read the same file.
        Ok(self.secret.get_or_init(|| read))
    }

    /// The token that lets `member` leave with one click (RFC 8058): the
    /// first 128 bits of an HMAC-SHA256 over the list and the member under
    /// the list's secret, base64url. It names one member of one list, so
    /// it can remove nobody else; it needs no state, so it stays good
    /// until the secret is changed (which voids every link sent).
    pub fn unsubscribe_token(&self, member: &Address) -> Result<String, ListError> {
        let secret = self.unsubscribe_secret()?;
        // HMAC takes keys of any length, so this cannot fail.
        let Ok(mut mac) = Hmac::<Sha256>::new_from_slice(secret) else {
            return Ok(String::new());
        };
        mac.update(b"list-unsubscribe\0");
        mac.update(self.address.lookup_key().as_bytes());
        mac.update(b"\0");
        mac.update(member.lookup_key().as_bytes());
        let digest = mac.finalize().into_bytes();
        Ok(base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(&digest[..16]))
    }

    /// True when `token` is `member`'s one-click token (compared in
    /// constant time, so timing tells a forger nothing).
    pub fn unsubscribe_token_matches(
        &self,
        member: &Address,
        token: &str,
    ) -> Result<bool, ListError> {
        use subtle::ConstantTimeEq;
        let expected = self.unsubscribe_token(member)?;
        Ok(!expected.is_empty() && bool::from(expected.as_bytes().ct_eq(token.as_bytes())))
    }

    /// `member`'s one-click unsubscribe URL,
    /// `unsubscribe_url/unsubscribe/LIST/MEMBER/TOKEN`; `None` when the
    /// list has no `unsubscribe_url`.
    pub fn one_click_url(&self, member: &Address) -> Result<Option<String>, ListError> {
        let Some(base) = &self.config.unsubscribe_url else {
            return Ok(None);
        };
        let member_key = member.lookup_key();
        Ok(Some(format!(
            "{}/{ONE_CLICK}/{}/{}/{}",
            base.trim_end_matches('/'),
            percent_encoding::utf8_percent_encode(&self.address.lookup_key(), SEGMENT),
            percent_encoding::utf8_percent_encode(&member_key, SEGMENT),
            self.unsubscribe_token(member)?
        )))
    }

    /// Takes a bounce sent to `bounce` (`LIST-bounces+local=domain@…`):
    /// counts it against the member it names (the `bounces` file) and,
    /// when the count reaches `bounce_limit`, sets the member to `nomail`
    /// and forgets their count, so turning their mail back on, by mail or
    /// by editing the members file, starts them afresh. A bounce that names
    /// no member, or one whose mail is off already (late bounces of what
    /// was sent before), changes nothing.
    pub fn take_bounce(&self, bounce: &Address, delimiter: char) -> Result<Bounce, ListError> {
        let Some(named) = member_of_verp(&self.address, bounce, delimiter) else {
            return Ok(Bounce::NoMember);
        };
        let key = named.lookup_key();
        let Some(member) = self.members()?.into_iter().find(|m| m.address == key) else {
            return Ok(Bounce::NoMember);
        };
        if member.nomail {
            return Ok(Bounce::MailOff(named));
        }
        let count = self.count_bounce(&named)?;
        if count < self.config.bounce_limit {
            return Ok(Bounce::Counted(named, count));
        }
        self.set_options(&named, None, Some(true))?;
        self.forget_bounces(&named)?;
        Ok(Bounce::Stopped(named, count))
    }

    /// Counts a bounce for a member (the `bounces` file: `address count`
    /// lines, under its lock) and returns the new count.
    fn count_bounce(&self, member: &Address) -> Result<u32, ListError> {
        let mut count = 0;
        self.edit_bounce_count(member, |n| {
            count = n + 1;
            Some(count)
        })?;
        Ok(count)
    }

    /// Drops a member's line from the `bounces` file.
    fn forget_bounces(&self, member: &Address) -> Result<(), ListError> {
        self.edit_bounce_count(member, |_| None)
    }

    /// Replaces a member's count in the `bounces` file (0 when it has no
    /// line) with what `change` makes of it: a line for `Some`, none for
    /// `None`.
    fn edit_bounce_count(
        &self,
        member: &Address,
        change: impl FnOnce(u32) -> Option<u32>,
    ) -> Result<(), ListError> {
        let key = member.lookup_key();
        fsutil::edit_locked(
            &self.dir.join("bounces"),
            |text| -> Result<String, FileError> {
                let mut out = String::with_capacity(text.len() + 32);
                let mut count = 0;
                for line in text.lines() {
                    let mut words = line.split_whitespace();
                    let (Some(address), Some(n)) = (words.next(), words.next()) else {
                        continue;
                    };
                    if address == key {
                        count = n.parse::<u32>().unwrap_or(0);
                    } else {
                        out.push_str(line);
                        out.push('\n');
                    }
                }
                if let Some(count) = change(count) {
                    out.push_str(&format!("{key} {count}\n"));
                }
                Ok(out)
            },
        )?;
        Ok(())
    }

    /// The RFC 2919 list identifier: the address with `@` made a dot.
    pub fn list_id(&self) -> String {
        self.address.lookup_key().replace('@', ".")
    }

    /// `LIST-bounces@DOMAIN`: where members' servers send bounces.
    pub fn bounce_address(&self) -> Option<Address> {
        Address::parse(&format!(
            "{}-bounces@{}",
            self.address.local_part(),
            self.address.domain()
        ))
        .ok()
    }

    /// `LIST-request@DOMAIN`.
    pub fn request_address(&self) -> String {
        format!(
            "{}-request@{}",
            self.address.local_part(),
            self.address.domain()
        )
    }

    pub fn held_dir(&self) -> PathBuf {
        self.dir.join("held")
    }

    pub fn archive_dir(&self) -> PathBuf {
        self.dir.join("archive")
    }
}

/// A submission's failure as a list sees it: a recipient that does not
/// resolve for good is [`ListError::Undeliverable`], the rest (the queue,
/// a users file missing now) [`ListError::Submit`].
fn undeliverable_or_submit(e: SubmitError) -> ListError {
    match e {
        SubmitError::Unresolvable { address, error } if !error.is_temporary() => {
            ListError::Undeliverable {
                address: address.to_string(),
                reason: error.to_string(),
            }
        }
        e => ListError::Submit(e),
    }
}

/// The list, member and token a one-click path names
/// (`/unsubscribe/LIST/MEMBER/TOKEN`, already percent-decoded, as CGI's
/// PATH_INFO is); `None` for any other path. The member is everything
/// between the list and the token, so an address with a `/` in it
/// (decoded from `%2F`) still comes out whole.
pub fn parse_one_click_path(path: &str) -> Option<(Address, Address, String)> {
    let rest = path
        .strip_prefix('/')?
        .strip_prefix(ONE_CLICK)?
        .strip_prefix('/')?;
    let (list, rest) = rest.split_once('/')?;
    let (member, token) = rest.rsplit_once('/')?;
    if token.is_empty() || member.is_empty() {
        return None;
    }
    Some((
        Address::parse(list).ok()?,
        Address::parse(member).ok()?,
        token.to_string(),
    ))
}

/// The member a VERP bounce address names for the list at `list`
/// (`LIST-bounces+local=domain@…`, the inverse of
/// [`crate::store::queue::Envelope::sender_for`]); `None` for any other
/// address. The address is what a stranger's bounce says.
pub fn member_of_verp(list: &Address, bounce: &Address, delimiter: char) -> Option<Address> {
    let prefix = format!("{}-bounces{delimiter}", list.local_part());
    let detail = bounce
        .local_part()
        .to_ascii_lowercase()
        .strip_prefix(&prefix.to_ascii_lowercase())?
        .to_string();
    let (local, domain) = detail.rsplit_once('=')?;
    Address::parse(&format!("{local}@{domain}")).ok()
}

/// Member lines: `address [digest] [nomail]`; `#` comments and blank
/// lines are skipped, and so is anything that is not an address.
fn parse_members(text: &str) -> Vec<Member> {
    text.lines()
        .filter_map(|line| {
            let line = line.split('#').next().unwrap_or("").trim();
            let mut words = line.split_whitespace();
            let address = words.next()?.to_lowercase();
            let mut member = Member {
                address,
                digest: false,
                nomail: false,
            };
            for option in words {
                match option {
                    "digest" => member.digest = true,
                    "nomail" => member.nomail = true,
                    _ => {}
                }
            }
            Some(member)
        })
        .collect()
}

/// Reads addresses one a line (for bulk adds), naming the first bad line.
pub fn read_address_lines(text: &str, source: &Path) -> Result<Vec<Address>, ListError> {
    let mut out = Vec::new();
    for (number, line) in text.lines().enumerate() {
        let line = line.split('#').next().unwrap_or("").trim();
        if line.is_empty() {
            continue;
        }
        let address = Address::parse(line).map_err(|e| ListError::Config {
            path: source.to_path_buf(),
            message: format!("line {}: {line:?}: {e}", number + 1),
        })?;
        out.push(address);
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_pending_request_reads_back_as_written() {
        let text = Pending {
            action: "subscribe",
            address: "ann@example.test",
            at: 1_700_000_000,
        }
        .render();
        let back = Pending::parse(&text).unwrap();
        assert_eq!(
            (back.action, back.address, back.at),
            ("subscribe", "ann@example.test", 1_700_000_000)
        );
        assert!(Pending::parse("subscribe ann@example.test").is_none());
        assert_eq!(Pending::parse("subscribe a@b.test soon").unwrap().at, 0);
    }

    fn setup() -> (tempfile::TempDir, Config) {
        let dir = tempfile::tempdir().unwrap();
        let mut config = Config::parse("hostname = \"mx.example.test\"\n").unwrap();
        config.dir = dir.path().to_path_buf();
        (dir, config)
    }

    fn a(s: &str) -> Address {
        Address::parse(s).unwrap()
    }

    #[test]
    fn create_add_remove_and_options() {
        let (_d, config) = setup();
        let list = List::create(&config, &a("Team@example.test"), &a("ann@example.test")).unwrap();
        assert!(matches!(
            List::create(&config, &a("team@example.test"), &a("ann@example.test")),
            Err(ListError::Exists(_))
        ));
        assert_eq!(list.list_id(), "team.example.test");
        assert_eq!(
            list.bounce_address().unwrap().to_string(),
            "team-bounces@example.test"
        );
        assert_eq!(
            list.add("members", &[a("B@x.test"), a("c@x.test"), a("b@x.test")])
                .unwrap(),
            2
        );
        std::fs::write(
            list.dir.join("members"),
            "b@x.test digest\n# a comment\nc@x.test nomail\n",
        )
        .unwrap();
        assert_eq!(list.add("members", &[a("d@x.test")]).unwrap(), 1);
        let members = list.members().unwrap();
        assert_eq!(members.len(), 3);
        assert!(members[0].digest && members[1].nomail);
        assert_eq!(list.remove("members", &[a("C@x.test")]).unwrap(), 1);
        assert_eq!(list.members().unwrap().len(), 2);
        assert!(list.is_owner(&a("ANN@example.test")));
        assert_eq!(List::all(&config).unwrap(), [a("team@example.test")]);
    }

    #[test]
    fn options_and_tokens() {
        let (_d, config) = setup();
        let mut list = List::create(&config, &a("l@example.test"), &a("o@example.test")).unwrap();
        list.add("members", &[a("m@x.test")]).unwrap();
        assert!(list.set_options(&a("M@x.test"), Some(true), None).unwrap());
        assert!(!list.set_options(&a("n@x.test"), Some(true), None).unwrap());
        assert!(list.members().unwrap()[0].digest);
        let token = list.new_token("subscribe", &a("new@x.test")).unwrap();
        assert!(
            list.asked_recently("subscribe", &a("NEW@x.test"), 60)
                .unwrap()
        );
        assert!(
            !list
                .asked_recently("unsubscribe", &a("new@x.test"), 60)
                .unwrap()
        );
        assert!(
            !list
                .asked_recently("subscribe", &a("m@x.test"), 60)
                .unwrap()
        );
        let (action, who) = list.take_token(&token).unwrap().unwrap();
        assert!(
            !list
                .asked_recently("subscribe", &a("new@x.test"), 60)
                .unwrap()
        );
        assert_eq!(
            (action.as_str(), who.to_string().as_str()),
            ("subscribe", "new@x.test")
        );
        assert!(
            list.take_token(&token).unwrap().is_none(),
            "a token works once"
        );
        list.config.confirm_seconds = 0;
        let token = list.new_token("unsubscribe", &a("m@x.test")).unwrap();
        std::thread::sleep(std::time::Duration::from_millis(1100));
        assert!(list.take_token(&token).unwrap().is_none(), "expired");
        assert!(list.take_token("../../etc/passwd").unwrap().is_none());
    }

    #[test]
    fn bounces_count_members_only_and_stop_them_again_after_mail_is_back_on() {
        let (_d, config) = setup();
        let mut list = List::create(&config, &a("l@example.test"), &a("o@example.test")).unwrap();
        list.config.bounce_limit = 2;
        list.add("members", &[a("m@x.test")]).unwrap();
        let bounce = |who: &str| {
            list.take_bounce(&a(&format!("l-bounces+{who}@example.test")), '+')
                .unwrap()
        };
        let bounces = || std::fs::read_to_string(list.dir.join("bounces")).unwrap_or_default();
        assert_eq!(bounce("nobody=x.test"), Bounce::NoMember);
        assert_eq!(
            list.take_bounce(&a("l-bounces@example.test"), '+').unwrap(),
            Bounce::NoMember
        );
        assert_eq!(bounces(), "", "a bounce naming no member counts nothing");
        for _ in 0..2 {
            assert_eq!(bounce("m=x.test"), Bounce::Counted(a("m@x.test"), 1));
            assert_eq!(bounce("M=x.test"), Bounce::Stopped(a("m@x.test"), 2));
            assert!(list.members().unwrap()[0].nomail);
            assert_eq!(bounce("m=x.test"), Bounce::MailOff(a("m@x.test")));
            // Back on ("set nomail off"): counted from nothing again.
            assert!(list.set_options(&a("m@x.test"), None, Some(false)).unwrap());
        }
        // A count left at the limit (as older versions left it) stops the
        // member at their next bounce, not never.
        std::fs::write(list.dir.join("bounces"), "m@x.test 7\n").unwrap();
        assert_eq!(bounce("m=x.test"), Bounce::Stopped(a("m@x.test"), 8));
        std::fs::write(list.dir.join("bounces"), "m@x.test 1\n").unwrap();
        assert!(list.set_options(&a("m@x.test"), None, Some(false)).unwrap());
        assert_eq!(bounces(), "", "turning mail on forgets the bounces");
    }

    #[test]
    fn a_confirmation_that_cannot_be_sent_leaves_no_token() {
        let (_d, config) = setup();
        let list = List::create(&config, &a("l@example.test"), &a("o@example.test")).unwrap();
        // The host name's users cannot be looked up: there is no users file.
        let e = list
            .send_confirmation(&config, "subscribe", &a("who@mx.example.test"))
            .unwrap_err();
        assert!(matches!(e, ListError::Submit(_)), "{e}");
        assert_eq!(
            std::fs::read_dir(list.dir.join("pending")).unwrap().count(),
            0
        );
        assert!(matches!(
            list.check_reply_address(&config, &a("who@mx.example.test")),
            Err(ListError::Submit(_))
        ));
    }

    #[test]
    fn one_click_tokens_name_one_member_of_one_list() {
        let (_d, config) = setup();
        let mut list = List::create(&config, &a("l@example.test"), &a("o@example.test")).unwrap();
        let other = List::create(&config, &a("m@example.test"), &a("o@example.test")).unwrap();
        assert_eq!(list.one_click_url(&a("b@x.test")).unwrap(), None);
        list.config.unsubscribe_url = Some("https://w.test/cgi-bin/list-web/".into());
        let token = list.unsubscribe_token(&a("B@x.test")).unwrap();
        assert_eq!(token.len(), 22);
        assert!(
            list.unsubscribe_token_matches(&a("b@x.test"), &token)
                .unwrap()
        );
        assert!(
            !list
                .unsubscribe_token_matches(&a("c@x.test"), &token)
                .unwrap()
        );
        assert!(
            !other
                .unsubscribe_token_matches(&a("b@x.test"), &token)
                .unwrap()
        );
        assert!(!list.unsubscribe_token_matches(&a("b@x.test"), "").unwrap());
        let url = list.one_click_url(&a("odd/one+x@x.test")).unwrap().unwrap();
        let path = url.strip_prefix("https://w.test/cgi-bin/list-web").unwrap();
        assert!(
            path.starts_with("/unsubscribe/l@example.test/odd%2Fone+x@x.test/"),
            "{url}"
        );
        let decoded = percent_encoding::percent_decode_str(path)
            .decode_utf8()
            .unwrap();
        let (l, m, t) = parse_one_click_path(&decoded).unwrap();
        assert_eq!(
            (l, m.to_string()),
            (a("l@example.test"), "odd/one+x@x.test".into())
        );
        assert!(list.unsubscribe_token_matches(&m, &t).unwrap());
        assert!(parse_one_click_path("/unsubscribe/l@example.test/").is_none());
        assert!(parse_one_click_path("/l@example.test").is_none());
        // The key was made once, private, and is kept.
        let again = List::open(&config, &a("l@example.test")).unwrap();
        assert_eq!(again.unsubscribe_token(&a("b@x.test")).unwrap(), token);
    }

    proptest::proptest! {
        // Each case makes a list and its secret on disk (fsyncs).
        #![proptest_config(proptest::prelude::ProptestConfig::with_cases(48))]
        #[test]
        fn one_click_urls_name_their_member_back(
            local in "[a-zA-Z0-9.!#$%&'*+/=?^_`{|}~-]{1,20}",
            domain in "[a-z0-9]{1,10}\\.test",
        ) {
            let Ok(member) = Address::parse(&format!("{local}@{domain}")) else {
                return Ok(());
            };
            let (_d, config) = setup();
            let mut list = List::create(&config, &a("l@example.test"), &a("o@example.test")).unwrap();
            list.config.unsubscribe_url = Some("https://w.test/lw".into());
            let url = list.one_click_url(&member).unwrap().unwrap();
            let path = url.strip_prefix("https://w.test/lw").unwrap();
            // What CGI hands list-web (decoded) and what it reads from it.
            let decoded = percent_encoding::percent_decode_str(path).decode_utf8().unwrap();
            let (l, m, t) = parse_one_click_path(&decoded).unwrap();
            proptest::prop_assert_eq!(l, list.address.clone());
            proptest::prop_assert_eq!(m.lookup_key(), member.lookup_key());
            proptest::prop_assert!(list.unsubscribe_token_matches(&m, &t).unwrap());
        }
    }

    #[test]
    fn bad_lines_and_bad_config_are_named() {
        let (_d, config) = setup();
        let e = read_address_lines("ok@x.test\nnot an address\n", Path::new("in")).unwrap_err();
        assert!(e.to_string().contains("line 2"), "{e}");
        let list = List::create(&config, &a("l@example.test"), &a("o@example.test")).unwrap();
        std::fs::write(
            list.dir.join("config"),
            "owners = []\npolicy = \"sometimes\"\n",
        )
        .unwrap();
        let e = List::open(&config, &a("l@example.test")).unwrap_err();
        assert!(e.to_string().contains("config"), "{e}");
    }
}
