//! Delivery by Sieve rules (`postroom-sieve(5)`), shared by `mailsort`
//! and the queue runner's local delivery: the administrator's `before`
//! scripts, the user's `sieve/active.sieve`, the `after` scripts, their
//! actions carried out together. A script that cannot be used is skipped
//! and the message kept in INBOX: mail is never lost to a broken rule.

use std::collections::HashSet;
use std::path::PathBuf;
use std::time::Duration;

use crate::config::Config;
use crate::delivery::sieve::{Action, Input, Script, storage};
use crate::delivery::submit::{Recipients, Submission, SubmitError, Unresolvable, submit};
use crate::delivery::vacation::{self, VacationError};
use crate::directory::aliases::Directory;
use crate::proto::address::{Address, AddressError, ReversePath};
use crate::proto::message;
use crate::store::mailbox::MailboxName;
use crate::store::maildir::{Delivered, Maildir, MaildirError, Message, MessageFile, Sub};

/// Redirects a message may have been through before it is kept instead.
const MAX_REDIRECTS: usize = 5;
const REDIRECT_HEADER: &str = "X-Postroom-Redirected-By";

/// What became of a message.
#[derive(Debug)]
pub enum Sorted {
    Delivered,
    /// A rule refused it; the reason for the bounce.
    Refused(String),
}

/// Why rules could not be carried out; each a temporary failure, so the
/// message is tried again and never lost.
#[derive(Debug, thiserror::Error)]
pub enum SortError {
    #[error("mailbox is full")]
    OverQuota,
    #[error("storing the message: {0}")]
    Store(MaildirError),
    #[error("redirect to a bad address: {0}")]
    RedirectAddress(#[from] AddressError),
    #[error("redirect: {0}")]
    Redirect(#[from] SubmitError),
    #[error("vacation reply: {0}")]
    Vacation(#[from] VacationError),
}

impl From<MaildirError> for SortError {
    fn from(e: MaildirError) -> SortError {
        match e {
            MaildirError::OverQuota { .. } => SortError::OverQuota,
            e => SortError::Store(e),
        }
    }
}

/// True when this user's mail goes through Sieve rules at all.
pub fn has_rules(config: &Config, inbox: &Maildir) -> bool {
    !config.sieve.before.is_empty()
        || !config.sieve.after.is_empty()
        || storage::active_path(inbox.path()).exists()
}

/// Runs the rules on `raw` and carries out what they decided.
pub fn sort(
    config: &Config,
    directory: &Directory,
    inbox: &Maildir,
    quota: Option<u64>,
    user: &Address,
    sender: &ReversePath,
    raw: &[u8],
) -> Result<Sorted, SortError> {
    let actions = decide(config, inbox, user, sender, raw);
    carry_out(config, directory, inbox, quota, user, sender, raw, actions)
}

/// The combined decision of the before, user and after scripts; any
/// script that cannot be used is skipped with a warning, and the message
/// is then kept (mail is never lost to a broken rule).
pub fn decide(
    config: &Config,
    inbox: &Maildir,
    user: &Address,
    sender: &ReversePath,
    raw: &[u8],
) -> Vec<Action> {
    let mut scripts: Vec<PathBuf> = config.sieve.before.iter().map(|p| config.path(p)).collect();
    let own = storage::active_path(inbox.path());
    if own.exists() {
        scripts.push(own);
    }
    scripts.extend(config.sieve.after.iter().map(|p| config.path(p)));
    let delimiter = config.delivery.recipient_delimiter.unwrap_or('+');
    let sender_text = sender.to_string();
    let to = user.to_string();
    let exists = |name: &str| folder_of(inbox, name).is_ok_and(|f| f.path().join("cur").is_dir());
    let lists_dir = inbox.path().join(storage::FOLDER).join("lists");
    let list = |name: &str| read_list(&lists_dir, name);
    let mut actions: Vec<Action> = Vec::new();
    let mut every_script_kept = true;
    for path in &scripts {
        let result = compiled(path).and_then(|script| {
            script
                .run(&Input {
                    message: raw,
                    envelope_from: &sender_text,
                    envelope_to: &to,
                    delimiter,
                    mailbox_exists: &exists,
                    list: &list,
                })
                .map_err(|e| e.to_string())
        });
        match result {
            Ok(mut decided) => {
                let kept = decided.iter().any(|a| matches!(a, Action::Keep { .. }));
                every_script_kept &= kept;
                decided.retain(|a| !matches!(a, Action::Keep { .. }) || kept);
                for action in decided {
                    if !actions.contains(&action) {
                        actions.push(action);
                    }
                }
            }
            Err(e) => {
                tracing::warn!("{}: {e}; the message is kept in INBOX", path.display());
                if !actions.iter().any(|a| matches!(a, Action::Keep { .. })) {
                    actions.push(Action::Keep { flags: Vec::new() });
                }
            }
        }
    }
    if !every_script_kept {
        // A script that filed, redirected, refused or discarded the message
        // cancelled the implicit keep for all of them.
        let explicit = actions
            .iter()
            .any(|a| matches!(a, Action::Keep { flags } if !flags.is_empty()));
        if !explicit {
            actions.retain(|a| !matches!(a, Action::Keep { .. }));
        }
    }
    if scripts.is_empty() {
        actions.push(Action::Keep { flags: Vec::new() });
    }
    actions
}

#[allow(clippy::too_many_arguments)]
fn carry_out(
    config: &Config,
    directory: &Directory,
    inbox: &Maildir,
    quota: Option<u64>,
    user: &Address,
    sender: &ReversePath,
    raw: &[u8],
    actions: Vec<Action>,
) -> Result<Sorted, SortError> {
    if let Some(reason) = actions.iter().find_map(|a| match a {
        Action::Reject { reason } => Some(reason.clone()),
        _ => None,
    }) {
        return Ok(Sorted::Refused(format!(
            "550 5.7.1 refused by {user}'s rules: {}",
            reason.replace(['\r', '\n'], " ")
        )));
    }
    // One copy per folder, however many actions name it (`keep` and
    // `fileinto "INBOX"`, `INBOX.A` and `A`): RFC 5228 §2.10.3.
    let mut filed: HashSet<PathBuf> = HashSet::new();
    let mut file_once = |folder: &Maildir, flags: &[String]| {
        if filed.insert(folder.path().to_path_buf()) {
            store(folder, quota, raw, flags)
        } else {
            Ok(())
        }
    };
    for action in &actions {
        let result = match action {
            Action::Keep { flags } => file_once(inbox, flags).map_err(SortError::from),
            Action::FileInto { mailbox, flags, .. } => match folder_of(inbox, mailbox) {
                Ok(folder) => file_once(&folder, flags),
                Err(e) => {
                    tracing::warn!("fileinto {mailbox:?}: {e}; kept in INBOX instead");
                    file_once(inbox, flags)
                }
            }
            .map_err(SortError::from),
            Action::Redirect { address } => redirect(config, directory, user, sender, raw, address),
            Action::Vacation {
                seconds,
                subject,
                from,
                addresses,
                handle,
                reason,
            } => {
                let mut mine = vec![user.clone()];
                mine.extend(addresses.iter().filter_map(|a| Address::parse(a).ok()));
                let settings = vacation::Settings {
                    addresses: mine,
                    interval: Duration::from_secs(*seconds),
                    subject: subject.clone(),
                    from: from.clone(),
                    body: reason.clone(),
                    handle: handle.clone(),
                };
                vacation::respond(config, directory, user, sender, raw, &settings, None)
                    .map(|_| ())
                    .map_err(SortError::from)
            }
            Action::Reject { .. } => Ok(()),
        };
        result?;
    }
    Ok(Sorted::Delivered)
}

/// A script compiled once per process and version of its file: a runner
/// delivering many messages to one user compiles their rules once. The
/// key is the path with the file's modification time and size, so an
/// edited script is compiled afresh; the inode too, since `active.sieve`
/// is a link `sieve-serve` may point at another script of the same size
/// and time. (Not on disk: compiling a 20-rule
/// script takes about 150 µs against about 2 ms for the delivery, and a
/// stored form would still have to rebuild its regular expressions.)
fn compiled(path: &std::path::Path) -> Result<std::sync::Arc<Script>, String> {
    use std::collections::HashMap;
    use std::os::unix::fs::MetadataExt;
    use std::sync::{Arc, Mutex, OnceLock};
    type Key = (PathBuf, std::time::SystemTime, u64, u64);
    static CACHE: OnceLock<Mutex<HashMap<Key, Arc<Script>>>> = OnceLock::new();
    let meta = std::fs::metadata(path).map_err(|e| e.to_string())?;
    let key: Key = (
        path.to_path_buf(),
        meta.modified().map_err(|e| e.to_string())?,
        meta.len(),
        meta.ino(),
    );
    let cache = CACHE.get_or_init(|| Mutex::new(HashMap::new()));
    if let Some(script) = cache.lock().unwrap_or_else(|e| e.into_inner()).get(&key) {
        return Ok(script.clone());
    }
    let text = std::fs::read(path).map_err(|e| e.to_string())?;
    let script = Arc::new(Script::compile_bytes(&text).map_err(|e| e.to_string())?);
    let mut cache = cache.lock().unwrap_or_else(|e| e.into_inner());
    // Old versions of a script are dropped with their path's entry.
    cache.retain(|k, _| k.0 != key.0);
    cache.insert(key, script.clone());
    Ok(script)
}

/// An external list (RFC 6134) from the user's `sieve/lists/` folder: the
/// name with its URL punctuation made safe (`:addrbook:friends` is the
/// file `addrbook_friends`), one entry a line, `#` comments.
pub fn read_list(dir: &std::path::Path, name: &str) -> Option<Vec<String>> {
    let file: String = name
        .trim_start_matches(':')
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '-' || c == '.' {
                c
            } else {
                '_'
            }
        })
        .collect();
    if file.is_empty() || file.starts_with('.') {
        return None;
    }
    let text = std::fs::read_to_string(dir.join(file)).ok()?;
    Some(
        text.lines()
            .map(|l| l.split('#').next().unwrap_or("").trim().to_string())
            .filter(|l| !l.is_empty())
            .collect(),
    )
}

/// A Sieve mailbox name as a Maildir++ folder: `INBOX` is the root,
/// `INBOX.x` and `INBOX/x` are `x`, and `/` separates levels like `.`.
fn folder_of(inbox: &Maildir, name: &str) -> Result<Maildir, MaildirError> {
    let name = name
        .strip_prefix("INBOX.")
        .or_else(|| name.strip_prefix("INBOX/"))
        .unwrap_or(name)
        .replace('/', ".");
    // A Sieve mailbox name is UTF-8 (RFC 5228 §2.7.2); on disk a folder's
    // name is modified UTF-7, as IMAP names it (postroom-mailbox(5)):
    // written raw, `Entwürfe` (or `R&D`) would be a folder IMAP never lists.
    let folder = MailboxName::new(&name).map_err(|_| MaildirError::BadFolder(name.clone()))?;
    inbox.folder(&folder.disk_name())
}

/// Delivers into a maildir (created if missing, by `deliver`), then sets
/// IMAP flags.
fn store(
    maildir: &Maildir,
    quota: Option<u64>,
    raw: &[u8],
    flags: &[String],
) -> Result<(), MaildirError> {
    let delivered = maildir.deliver(Message {
        prepend: b"",
        body: &mut &raw[..],
        base_name: None,
        search_cur: false,
        end_header: true,
        as_given: false,
        quota,
    })?;
    let letters: String = flags
        .iter()
        .filter_map(|f| match f.to_ascii_lowercase().as_str() {
            "\\seen" => Some('S'),
            "\\answered" => Some('R'),
            "\\flagged" => Some('F'),
            "\\deleted" => Some('T'),
            "\\draft" => Some('D'),
            _ => None,
        })
        .collect();
    if let (Delivered::New(path), false) = (&delivered, letters.is_empty())
        && let Some(name) = path.file_name()
    {
        let file = MessageFile {
            sub: Sub::New,
            name: name.to_string_lossy().into_owned(),
        };
        maildir.add_flags(&file, &letters)?;
    }
    Ok(())
}

/// Re-injects through the queue with the original sender, counting hops
/// so two users redirecting to each other cannot loop for ever.
fn redirect(
    config: &Config,
    directory: &Directory,
    user: &Address,
    sender: &ReversePath,
    raw: &[u8],
    to: &str,
) -> Result<(), SortError> {
    let crlf = message::to_crlf(raw);
    let end = message::header_len(&crlf);
    let hops = message::header_fields(&crlf[..end])
        .iter()
        .filter(|(n, _)| n.eq_ignore_ascii_case(REDIRECT_HEADER))
        .count();
    if hops >= MAX_REDIRECTS {
        tracing::warn!("redirected {hops} times already; kept instead of redirected to {to}");
        return Ok(());
    }
    // Our own Return-Path and Delivered-To stay: Delivered-To is what stops
    // a loop back to this user.
    let mut out = format!("{REDIRECT_HEADER}: {user}\r\n").into_bytes();
    out.extend_from_slice(&message::remove_header(&crlf[..end], "Return-Path"));
    out.extend_from_slice(&crlf[end..]);
    let target = [Address::parse(to)?];
    let mut submission = Submission::new(
        sender.clone(),
        Recipients::Addresses(&target, Unresolvable::Refuse),
    );
    submission.forwarding = true;
    submission.passed_on = true;
    match submit(config, directory, submission, &out) {
        // An alias that expands to nobody (an empty include file) takes the
        // copy, as it would from anyone else.
        Ok(_) | Err(SubmitError::NoRecipients) => Ok(()),
        Err(e) => Err(e.into()),
    }
}

/// One action as `mailsort --test` prints it.
pub fn describe(action: &Action) -> String {
    match action {
        Action::Keep { flags } if flags.is_empty() => "keep".into(),
        Action::Keep { flags } => format!("keep :flags {}", flags.join(" ")),
        Action::FileInto {
            mailbox,
            flags,
            create,
        } => {
            let mut text = format!("fileinto {mailbox:?}");
            if *create {
                text.push_str(" :create");
            }
            if !flags.is_empty() {
                text.push_str(&format!(" :flags {}", flags.join(" ")));
            }
            text
        }
        Action::Redirect { address } => format!("redirect {address}"),
        Action::Reject { reason } => format!("reject {reason:?}"),
        Action::Vacation {
            seconds,
            subject,
            handle,
            ..
        } => format!(
            "vacation every {seconds} s{}{}",
            subject
                .as_ref()
                .map(|s| format!(", subject {s:?}"))
                .unwrap_or_default(),
            handle
                .as_ref()
                .map(|h| format!(", handle {h:?}"))
                .unwrap_or_default()
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::Path;

    #[test]
    fn sieve_mailbox_names_become_the_folders_imap_lists() {
        let inbox = Maildir::new("/m");
        let path = |name: &str| folder_of(&inbox, name).unwrap().path().to_path_buf();
        assert_eq!(path("Entwürfe"), Path::new("/m/.Entw&APw-rfe"));
        assert_eq!(path("R&D"), Path::new("/m/.R&-D"));
        assert_eq!(path("INBOX/Lists/rust"), Path::new("/m/.Lists.rust"));
        assert_eq!(path("INBOX.Sent"), Path::new("/m/.Sent"));
        assert_eq!(path("inbox"), Path::new("/m"));
        assert!(folder_of(&inbox, "a..b").is_err());
    }
}
