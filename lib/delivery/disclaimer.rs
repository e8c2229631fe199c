//! Disclaimers (`[disclaimer."DOMAIN"]` in `postroom.toml(5)`; IEMS's "auto
//! text insertion"): a plain and an HTML text added to the mail a domain's
//! users send to other systems.
//!
//! Added once, as the message enters the queue (`deliver::enter_queue`),
//! before DKIM signing, so the signature covers the text, and before the
//! archive copy, which is the message as sent. What gets it: mail with a
//! recipient on another system, whose envelope sender is in the domain (or
//! any domain, for `"*"`), from a source the rule names: `submission` (a
//! client that logged in, or one in `smtp.relay_networks`) or
//! `mail-inject` (mail written on this host). One body serves every
//! recipient, so local recipients of the same message see it too. The text
//! goes in as list footers do (`delivery::footer`); signed or encrypted
//! mail, and mail that already carries a DKIM signature, is left alone:
//! the text would break the signature.

use std::io::Write as _;

use crate::config::{Config, DisclaimerRule, DisclaimerSource};
use crate::delivery::dkim;
use crate::delivery::footer::{self, Footer};
use crate::proto::message;
use crate::store::queue::{self, Envelope, QueueError, Route, Staged};

/// Which writer a message came from, if it is one a rule can name.
pub fn source(config: &Config, envelope: &Envelope) -> Option<DisclaimerSource> {
    // Checked first: mail-inject records the local login as `auth`.
    let local = envelope.client.is_none()
        && envelope
            .protocol
            .as_ref()
            .is_some_and(|p| p.as_str() == "local");
    if local {
        return Some(DisclaimerSource::MailInject);
    }
    dkim::submitted(config, envelope).then_some(DisclaimerSource::Submission)
}

/// The rule for mail from `domain`: its own, else `"*"`.
fn rule_for<'a>(config: &'a Config, domain: &str) -> Option<&'a DisclaimerRule> {
    config
        .disclaimer
        .iter()
        .find(|(d, _)| d.eq_ignore_ascii_case(domain))
        .or_else(|| config.disclaimer.iter().find(|(d, _)| d.as_str() == "*"))
        .map(|(_, rule)| rule)
}

/// Adds the disclaimer to `staged` if a rule asks for it, and returns the
/// message to commit (the same one, or the rewritten one under the same
/// queue id).
pub fn add(config: &Config, staged: Staged) -> Result<Staged, QueueError> {
    if config.disclaimer.is_empty() {
        return Ok(staged);
    }
    let envelope = &staged.message.envelope;
    if !envelope.recipients.iter().any(|r| r.route == Route::Remote) {
        return Ok(staged);
    }
    let Some(sender) = envelope.sender.address() else {
        return Ok(staged);
    };
    let Some(rule) = rule_for(config, sender.domain()) else {
        return Ok(staged);
    };
    let Some(source) = source(config, envelope).filter(|s| rule.sources.contains(s)) else {
        return Ok(staged);
    };
    let body = queue::read_body(&staged.message)?;
    let head = &body[..message::header_len(&body)];
    let signed = message::header_fields(head)
        .iter()
        .any(|(name, _)| name.eq_ignore_ascii_case("DKIM-Signature"));
    if signed || footer::is_signed(&body) {
        tracing::info!(queue_id = %staged.message.id, "signed mail: no disclaimer added");
        return Ok(staged);
    }
    let out = footer::add(
        &body,
        &Footer {
            plain: &rule.plain,
            html: rule.html.as_deref(),
            separator: None,
        },
    );
    tracing::debug!(queue_id = %staged.message.id, ?source, "disclaimer added");
    staged.replace(|w| w.write_all(&out))
}
