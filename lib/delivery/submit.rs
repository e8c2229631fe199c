//! Mail postroom writes or passes on itself enters the queue here: Sieve
//! redirects, vacation replies, list posts, digests and notices, list
//! request replies, delivery reports and the demo's welcome. One function
//! resolves the recipients through the directory, rewrites the sender
//! with SRS when someone else's mail is forwarded, and queues the message,
//! so every such message is addressed and queued by the same rules.
//!
//! The commit goes through `deliver::queue_staged`, the one way into the
//! queue, which DKIM-signs what leaves for another host (`delivery::dkim`),
//! and ARC-seals mail passed on (`delivery::arc`),
//! just as it does for mail a user submits (`smtp-recv`, `mail-inject`:
//! those programs stage it themselves, because their Received line names
//! the queue id).
//!
//! What becomes of a recipient that does not resolve is the caller's
//! choice ([`Unresolvable`]): a redirect or a reply to one person fails
//! as a whole (temporarily if the failure is, e.g. a missing users file);
//! a list drops members that do not exist but waits for ones that cannot
//! be looked up now; a notice to a list's owners goes to those it can.

use crate::config::Config;
use crate::delivery::deliver::{self, Early, EnqueueError};
use crate::directory::aliases::{Directory, ResolveError};
use crate::directory::srs;
use crate::proto::address::{Address, EnvelopeText, ReversePath};
use crate::store::queue::{Envelope, Priority, Queue, QueueError, QueueId, Recipient, Staged};

/// Why a message was not queued.
#[derive(Debug, thiserror::Error)]
pub enum SubmitError {
    /// A recipient did not resolve and the caller's [`Unresolvable`] rule
    /// does not let it be left out.
    #[error("{address}: {error}")]
    Unresolvable {
        address: Address,
        error: ResolveError,
    },
    /// Nobody is left to send to (every recipient left out, or none given).
    #[error("no recipient to send to")]
    NoRecipients,
    #[error(transparent)]
    Queue(#[from] QueueError),
    /// Not queued: the queue could not be written, or the message not signed.
    #[error(transparent)]
    Enqueue(#[from] EnqueueError),
}

impl SubmitError {
    /// True when trying again later may succeed: a recipient that cannot
    /// be looked up now, or a queue that cannot be written now.
    pub fn is_temporary(&self) -> bool {
        match self {
            SubmitError::Unresolvable { error, .. } => error.is_temporary(),
            SubmitError::NoRecipients => false,
            SubmitError::Queue(_) | SubmitError::Enqueue(_) => true,
        }
    }
}

/// What to do with an address that does not resolve.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Unresolvable {
    /// Nothing is queued: the submission fails with the first one.
    Refuse,
    /// A permanent failure (no such user, an alias loop) is left out and
    /// logged; a temporary one (a missing users file, an unreadable
    /// include file) fails the submission, so nobody who may well exist
    /// is dropped.
    SkipUnknown,
    /// Left out, whatever the failure, and logged.
    Skip,
}

/// Who gets the message.
#[derive(Debug, Clone)]
pub enum Recipients<'a> {
    /// Addresses resolved through the aliases, users and domains files.
    Addresses(&'a [Address], Unresolvable),
    /// Queue recipients the caller has already resolved (list members
    /// resolved before the post is archived, a report's fallback to the
    /// postmaster, a vacation reply's local-or-remote route).
    Routes(Vec<Recipient>),
}

/// One message to queue.
#[derive(Debug, Clone)]
pub struct Submission<'a> {
    /// The envelope sender (the null sender for replies and reports).
    pub sender: ReversePath,
    pub recipients: Recipients<'a>,
    /// Someone else's mail passed on (a Sieve redirect): with SRS set up
    /// (`sieve.srs_secret_file`), a sender from another domain is
    /// rewritten to an address of ours, so the next system's SPF check
    /// sees our domain and a bounce finds its way back.
    pub forwarding: bool,
    /// Someone else's mail passed on (a Sieve redirect, a list post): it
    /// gets an ARC set (RFC 8617, `delivery::arc`) as it enters the queue.
    pub passed_on: bool,
    /// Each recipient's copy carries its own return path (VERP), so a
    /// bounce says who bounced (list posts).
    pub verp: bool,
    /// The envelope's protocol (`local` for mail made on this host), or
    /// none.
    pub protocol: Option<&'static str>,
    /// The queue priority (list posts and digests: low).
    pub priority: Priority,
}

impl Submission<'_> {
    /// A submission with no SRS, no VERP and no protocol recorded.
    pub fn new(sender: ReversePath, recipients: Recipients<'_>) -> Submission<'_> {
        Submission {
            sender,
            recipients,
            forwarding: false,
            passed_on: false,
            verp: false,
            protocol: None,
            priority: Priority::Normal,
        }
    }
}

/// Resolves, rewrites and queues `message` (CRLF line ends); returns its
/// queue id. On `Ok` the message is committed to the queue. Nobody to send
/// to (everyone left out, or an alias that expands to nobody) is
/// [`SubmitError::NoRecipients`]; a caller for whom that is no failure
/// matches it.
pub fn submit(
    config: &Config,
    directory: &Directory,
    submission: Submission<'_>,
    message: &[u8],
) -> Result<QueueId, SubmitError> {
    let passed_on = submission.passed_on;
    let staged = stage(config, directory, submission, message)?;
    let queued = if passed_on {
        deliver::queue_passed_on(config, staged)?
    } else {
        deliver::queue_staged(config, staged)?
    };
    match queued {
        Early::Queued(id) => Ok(id),
        Early::Delivered => Err(SubmitError::NoRecipients),
    }
}

/// [`submit`] up to the commit: the message is written but not queued, so
/// a caller can deliver its local recipients at once
/// (`deliver::deliver_staged`, which signs and commits the rest), as
/// `postroom demo` does.
pub fn stage(
    config: &Config,
    directory: &Directory,
    submission: Submission<'_>,
    message: &[u8],
) -> Result<Staged, SubmitError> {
    let recipients = match submission.recipients {
        Recipients::Addresses(addresses, unresolvable) => {
            resolve(directory, addresses, unresolvable)?
        }
        Recipients::Routes(routes) => routes,
    };
    if recipients.is_empty() {
        return Err(SubmitError::NoRecipients);
    }
    let sender = if submission.forwarding {
        srs_sender(config, directory, submission.sender)
    } else {
        submission.sender
    };
    let mut envelope = Envelope::new(sender, recipients);
    envelope.verp = submission.verp;
    envelope.priority = submission.priority;
    envelope.protocol = submission
        .protocol
        .and_then(|p| EnvelopeText::new(p, 16).ok());
    Ok(Queue::from_config(config).stage(&envelope, message)?)
}

/// The queue recipients `addresses` turn into, with those that do not
/// resolve treated as `unresolvable` says.
pub fn resolve(
    directory: &Directory,
    addresses: &[Address],
    unresolvable: Unresolvable,
) -> Result<Vec<Recipient>, SubmitError> {
    let mut recipients = Vec::new();
    for address in addresses {
        match directory.routes_for(address) {
            Ok(routes) => recipients.extend(routes),
            Err(error) => {
                let skip = match unresolvable {
                    Unresolvable::Refuse => false,
                    Unresolvable::SkipUnknown => !error.is_temporary(),
                    Unresolvable::Skip => true,
                };
                if !skip {
                    return Err(SubmitError::Unresolvable {
                        address: address.clone(),
                        error,
                    });
                }
                tracing::warn!(%address, "recipient left out: {error}");
            }
        }
    }
    Ok(recipients)
}

/// The sender a forwarded message goes out with: with SRS set up, one from
/// another domain becomes an SRS address of ours; our own stay as they are.
fn srs_sender(config: &Config, directory: &Directory, sender: ReversePath) -> ReversePath {
    match (&sender, config.srs_secret()) {
        (ReversePath::Address(original), Some(secret))
            if !directory.is_local_domain(original.domain()) =>
        {
            srs::forward(original, &secret, config.srs_domain(), srs::today())
                .map(ReversePath::Address)
                .unwrap_or(sender)
        }
        _ => sender,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::queue::Route;

    fn setup() -> (tempfile::TempDir, Config, Directory) {
        let dir = tempfile::tempdir().unwrap();
        let mut config = Config::parse("hostname = \"mx.example.test\"\n").unwrap();
        config.dir = dir.path().to_path_buf();
        std::fs::write(dir.path().join("domains"), "example.test\n").unwrap();
        std::fs::write(dir.path().join("srs-secret"), "a secret of ours\n").unwrap();
        config.sieve.srs_secret_file = Some("srs-secret".into());
        config.sieve.srs_domain = Some("example.test".into());
        // A users file with one user (the hash is never checked here).
        std::fs::write(
            dir.path().join("users"),
            "ann@example.test:{SHA512-CRYPT}$6$x$y::\n",
        )
        .unwrap();
        std::fs::write(
            dir.path().join("aliases"),
            "team@example.test: ann, bob@far.test\n",
        )
        .unwrap();
        let directory = Directory::load(&config).unwrap();
        (dir, config, directory)
    }

    fn a(text: &str) -> Address {
        Address::parse(text).unwrap()
    }

    fn queued(config: &Config, id: &QueueId) -> Envelope {
        Queue::from_config(config).read(id).unwrap().envelope
    }

    #[test]
    fn forwarded_mail_from_elsewhere_gets_an_srs_sender_and_ours_does_not() {
        let (_d, config, directory) = setup();
        let to = [a("team@example.test")];
        let send = |sender: &str, forwarding: bool| {
            let mut submission = Submission::new(
                ReversePath::Address(a(sender)),
                Recipients::Addresses(&to, Unresolvable::Refuse),
            );
            submission.forwarding = forwarding;
            let id = submit(&config, &directory, submission, b"Subject: x\r\n\r\nhi\r\n").unwrap();
            queued(&config, &id)
        };
        let forwarded = send("carol@far.test", true);
        let sender = forwarded.sender.to_string();
        assert!(sender.starts_with("SRS0="), "{sender}");
        assert!(sender.ends_with("@example.test"), "{sender}");
        let routes: Vec<(Route, String)> = forwarded
            .recipients
            .iter()
            .map(|r| (r.route.clone(), r.address.to_string()))
            .collect();
        assert_eq!(
            routes,
            [
                (Route::Local, "ann@example.test".to_string()),
                (Route::Remote, "bob@far.test".to_string())
            ]
        );
        assert_eq!(
            send("ann@example.test", true).sender.to_string(),
            "ann@example.test"
        );
        assert_eq!(
            send("carol@far.test", false).sender.to_string(),
            "carol@far.test"
        );
    }

    #[test]
    fn unresolvable_recipients_are_refused_or_left_out_as_asked() {
        let (_d, config, directory) = setup();
        let to = [a("nobody@example.test"), a("ann@example.test")];
        let submission =
            |rule| Submission::new(ReversePath::Null, Recipients::Addresses(&to, rule));
        let message = b"Subject: x\r\n\r\nhi\r\n";
        let refused = submit(
            &config,
            &directory,
            submission(Unresolvable::Refuse),
            message,
        );
        assert!(
            matches!(&refused, Err(e @ SubmitError::Unresolvable { .. }) if !e.is_temporary()),
            "{refused:?}"
        );
        for rule in [Unresolvable::SkipUnknown, Unresolvable::Skip] {
            let id = submit(&config, &directory, submission(rule), message).unwrap();
            let envelope = queued(&config, &id);
            assert_eq!(envelope.recipients.len(), 1, "{rule:?}");
            assert_eq!(
                envelope.recipients[0].address.to_string(),
                "ann@example.test"
            );
        }
        let nobody = [a("nobody@example.test")];
        let none = Submission::new(
            ReversePath::Null,
            Recipients::Addresses(&nobody, Unresolvable::Skip),
        );
        assert!(matches!(
            submit(&config, &directory, none, message),
            Err(SubmitError::NoRecipients)
        ));
    }

    #[test]
    fn a_missing_users_file_waits_unless_everything_may_be_left_out() {
        let (d, config, _) = setup();
        std::fs::remove_file(d.path().join("users")).unwrap();
        let directory = Directory::load(&config).unwrap();
        let to = [a("ann@example.test"), a("bob@far.test")];
        for rule in [Unresolvable::Refuse, Unresolvable::SkipUnknown] {
            let e = resolve(&directory, &to, rule).unwrap_err();
            assert!(e.is_temporary(), "{rule:?}: {e}");
        }
        let left = resolve(&directory, &to, Unresolvable::Skip).unwrap();
        assert_eq!(left.len(), 1);
        assert_eq!(left[0].address.to_string(), "bob@far.test");
    }
}
