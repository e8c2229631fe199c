//! Copies of inbound and outbound mail (`[archive."DOMAIN"]` in
//! `postroom.toml(5)`): Postfix's always_bcc and recipient/sender_bcc_maps,
//! IMail's "Copying Inbound and Outbound Mail".
//!
//! Applied once, as a message enters the queue (`deliver::enter_queue`,
//! after disclaimers and DKIM signing, so the copy is the message as it
//! leaves). A rule for a domain matches *inbound* mail when a recipient is
//! in the domain, *outbound* mail when the envelope sender is and a
//! recipient is on another system; the rule `"*"` matches every message
//! with a local recipient (inbound) or a remote one (outbound). Each
//! target gets one copy however many rules name it.
//!
//! Nothing the other recipients see changes: an archive address is added
//! to the envelope only (a blind copy), with `NOTIFY=NEVER`, so a failed
//! copy never bounces to the sender and gives the archive away. A maildir
//! target is written, fsynced, before the message is accepted (a failure
//! refuses the message with a temporary error, so nothing goes unarchived);
//! its copy carries the envelope as `Return-Path` and `X-Envelope-To`
//! lines, since an archive must say who a message went to. If the writer
//! dies between that copy and its commit, the archive holds a message the
//! client will send again: one copy too many, never one too few.

use std::collections::BTreeSet;
use std::path::PathBuf;

use crate::config::{ArchiveRule, Config};
use crate::directory::aliases::{Directory, ResolveError};
use crate::proto::address::{Address, EnvelopeText, ReversePath};
use crate::store::fsutil::{self, FileError};
use crate::store::maildir::{Maildir, MaildirError, Message};
use crate::store::queue::{self, Envelope, QueueError, Recipient, Route, Staged};

/// Why the copies could not be made: the message is not accepted (4xx).
#[derive(Debug, thiserror::Error)]
pub enum ArchiveError {
    #[error(
        "archive copy into {path}: {error} (fix the folder named in [archive], or remove the rule)"
    )]
    Maildir { path: PathBuf, error: MaildirError },
    #[error(
        "archive address {address}: {error} (fix the address in [archive], or the users and aliases files)"
    )]
    Address {
        address: String,
        error: ResolveError,
    },
    #[error("archive: cannot read the directory: {0}")]
    Directory(#[from] FileError),
    #[error(transparent)]
    Queue(#[from] QueueError),
}

/// The archive targets the rules name for a message.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Targets {
    /// Addresses, lower-cased, each once.
    pub addresses: BTreeSet<String>,
    /// Maildirs, as the config names them, each once.
    pub maildirs: BTreeSet<PathBuf>,
}

impl Targets {
    pub fn is_empty(&self) -> bool {
        self.addresses.is_empty() && self.maildirs.is_empty()
    }
}

/// What the `[archive]` rules ask for this envelope.
pub fn targets(config: &Config, envelope: &Envelope) -> Targets {
    let mut out = Targets::default();
    for (domain, rule) in &config.archive {
        if matches(domain, rule, envelope) {
            if let Some(address) = &rule.address {
                out.addresses.insert(address.to_ascii_lowercase());
            }
            if let Some(maildir) = &rule.maildir {
                out.maildirs.insert(maildir.clone());
            }
        }
    }
    out
}

fn matches(domain: &str, rule: &ArchiveRule, envelope: &Envelope) -> bool {
    let any = domain == "*";
    let ours = |address: &Address| any || address.domain().eq_ignore_ascii_case(domain);
    let remote = envelope.recipients.iter().any(|r| r.route == Route::Remote);
    let inbound = envelope.recipients.iter().any(|r| {
        if any {
            r.route != Route::Remote
        } else {
            ours(&r.address)
        }
    });
    let outbound = remote
        && match &envelope.sender {
            ReversePath::Address(sender) => ours(sender),
            ReversePath::Null => any,
        };
    (rule.mail.inbound() && inbound) || (rule.mail.outbound() && outbound)
}

/// Makes the copies the rules ask for `staged` and returns the message to
/// commit: the same one, or one with the archive addresses added to its
/// envelope. `directory` resolves the addresses (loaded here if the caller
/// has none and an address is needed).
pub fn copy(
    config: &Config,
    directory: Option<&Directory>,
    staged: Staged,
) -> Result<Staged, ArchiveError> {
    if config.archive.is_empty() {
        return Ok(staged);
    }
    let targets = targets(config, &staged.message.envelope);
    if targets.is_empty() {
        return Ok(staged);
    }
    for (n, maildir) in targets.maildirs.iter().enumerate() {
        to_maildir(config, &staged, &config.path(maildir), n)?;
    }
    if targets.addresses.is_empty() {
        return Ok(staged);
    }
    let loaded;
    let directory = match directory {
        Some(directory) => directory,
        None => {
            loaded = Directory::load(config)?;
            &loaded
        }
    };
    let envelope = &staged.message.envelope;
    let mut extra: Vec<Recipient> = Vec::new();
    for text in &targets.addresses {
        // Checked when the config was loaded.
        let Ok(address) = Address::parse(text) else {
            continue;
        };
        let routes = directory
            .routes_for(&address)
            .map_err(|error| ArchiveError::Address {
                address: text.clone(),
                error,
            })?;
        for mut route in routes {
            let already = envelope
                .recipients
                .iter()
                .chain(&extra)
                .any(|r| r.route == route.route && r.address == route.address);
            if !already {
                route.notify = Some(EnvelopeText::sanitize("NEVER", queue::MAX_FIELD));
                extra.push(route);
            }
        }
    }
    if extra.is_empty() {
        return Ok(staged);
    }
    tracing::info!(
        queue_id = %staged.message.id,
        copies = extra.len(),
        "archive copies added"
    );
    Ok(staged.add_recipients(extra)?)
}

/// Writes the archive copy into `path` under a name that derives from the
/// queue id, so a second attempt for the same message finds the first.
fn to_maildir(
    config: &Config,
    staged: &Staged,
    path: &std::path::Path,
    n: usize,
) -> Result<(), ArchiveError> {
    let message = &staged.message;
    let mut prepend = format!("Return-Path: <{}>\n", message.envelope.sender);
    for r in &message.envelope.recipients {
        prepend.push_str(&format!("X-Envelope-To: {}\n", r.address));
    }
    let fail = |error| ArchiveError::Maildir {
        path: path.to_path_buf(),
        error,
    };
    let mut body = message.body()?;
    Maildir::new(path)
        .deliver(Message {
            prepend: prepend.as_bytes(),
            body: &mut body,
            base_name: Some(format!(
                "{}.Q{}A{n}.{}",
                message.envelope.arrived,
                message.id,
                fsutil::host_for_names(&config.hostname)
            )),
            search_cur: false,
            end_header: true,
            as_given: false,
            quota: None,
        })
        .map_err(fail)?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn envelope(sender: &str, rcpts: &[(Route, &str)]) -> Envelope {
        Envelope::new(
            ReversePath::parse(sender).unwrap(),
            rcpts
                .iter()
                .map(|(route, a)| Recipient::new(route.clone(), Address::parse(a).unwrap()))
                .collect(),
        )
    }

    fn config(rules: &str) -> Config {
        Config::parse(&format!("hostname = \"mx.example.test\"\n{rules}")).unwrap()
    }

    #[test]
    fn inbound_outbound_and_everything() {
        let c = config(
            "[archive.\"example.test\"]\nmail = \"inbound\"\naddress = \"In@example.test\"\n\
             [archive.\"other.test\"]\nmail = \"outbound\"\nmaildir = \"arch/other\"\n\
             [archive.\"*\"]\nmail = \"both\"\naddress = \"all@example.test\"\n",
        );
        let to_us = envelope("x@far.test", &[(Route::Local, "ann@example.test")]);
        let t = targets(&c, &to_us);
        assert_eq!(
            t.addresses.iter().collect::<Vec<_>>(),
            ["all@example.test", "in@example.test"]
        );
        assert!(t.maildirs.is_empty());
        let out = envelope("bob@other.test", &[(Route::Remote, "z@far.test")]);
        let t = targets(&c, &out);
        assert_eq!(t.addresses.iter().collect::<Vec<_>>(), ["all@example.test"]);
        assert_eq!(
            t.maildirs.iter().collect::<Vec<_>>(),
            [&PathBuf::from("arch/other")]
        );
        // Mail from other.test to a local user is not outbound.
        let internal = envelope("bob@other.test", &[(Route::Local, "ann@example.test")]);
        assert!(targets(&c, &internal).maildirs.is_empty());
        let none = config("");
        assert!(targets(&none, &to_us).is_empty());
    }

    #[test]
    fn a_rule_needs_a_target_and_a_real_domain() {
        let e =
            Config::parse("hostname = \"h.test\"\n[archive.\"example.test\"]\nmail = \"both\"\n")
                .unwrap_err();
        assert!(e.contains("address or a maildir"), "{e}");
        let e = Config::parse(
            "hostname = \"h.test\"\n[archive.\"bad domain\"]\naddress = \"a@b.test\"\n",
        )
        .unwrap_err();
        assert!(e.contains("not a domain"), "{e}");
        let e = Config::parse("hostname = \"h.test\"\n[archive.\"*\"]\naddress = \"nobody\"\n")
            .unwrap_err();
        assert!(e.contains("not a mail address"), "{e}");
        let e = Config::parse(
            "hostname = \"h.test\"\n[archive.\"*\"]\nmail = \"sideways\"\naddress = \"a@b.test\"\n",
        )
        .unwrap_err();
        assert!(e.contains("sideways"), "{e}");
    }
}
