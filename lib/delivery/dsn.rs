//! Delivery status notifications (RFC 3464): the bounce a sender gets when
//! mail cannot be delivered, the warning while it is still being tried,
//! and the success report a sender asks for with NOTIFY=SUCCESS.
//!
//! A report is a `multipart/report` with three parts: words for people,
//! `message/delivery-status` for programs, and the returned message's
//! header (`text/rfc822-headers`), or the whole message (`message/rfc822`)
//! when the sender asked with `RET=FULL`. Headers only by default: the
//! sender has the message, and a bounce of a large attachment to a full
//! mailbox would fail the same way.
//!
//! Reports go out with the null reverse path, so a report that fails cannot
//! cause another report to its sender (RFC 5321 §6.1); `smtp-send` tells
//! the postmaster instead, once.

use std::io::Read;

use mail_builder::MessageBuilder;
use mail_builder::headers::content_type::ContentType;
use mail_builder::mime::{BodyPart, MimePart};

use crate::config::Config;
use crate::delivery::deliver::Outcome;
use crate::delivery::submit::{Recipients, Submission, SubmitError, submit};
use crate::directory::aliases::Directory;
use crate::proto::address::{Address, ReversePath};
use crate::proto::message;
use crate::store::queue::{QueueError, QueueId, QueuedMessage, RcptState, Recipient};

/// The most of the original message a full report carries.
pub const MAX_RETURNED: u64 = 1 << 20;

/// Which report.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// Recipients failed for good (Action: failed).
    Failure,
    /// Recipients still wait after `queue.warn_after` (Action: delayed).
    Delay,
    /// Recipients were delivered and the sender asked to hear of it
    /// (`NOTIFY=SUCCESS`; Action: delivered, or relayed to a system that
    /// does not speak DSN).
    Success { relayed: bool },
}

/// True when the recipient's NOTIFY (RFC 3461 §4.1) asks for this report.
/// Without NOTIFY, failures and delays are reported, successes are not.
pub fn wanted(recipient: &Recipient, kind: Kind) -> bool {
    let Some(notify) = &recipient.notify else {
        return !matches!(kind, Kind::Success { .. });
    };
    let word = match kind {
        Kind::Failure => "FAILURE",
        Kind::Delay => "DELAY",
        Kind::Success { .. } => "SUCCESS",
    };
    notify
        .as_str()
        .split(',')
        .any(|w| w.trim().eq_ignore_ascii_case(word))
}

/// The report on recipients `rcpts` of `message`, ready to queue (CRLF),
/// each with the last reply its state records.
pub fn report(
    config: &Config,
    message: &QueuedMessage,
    kind: Kind,
    rcpts: &[usize],
) -> Result<Vec<u8>, QueueError> {
    let rows: Vec<(usize, &str)> = rcpts
        .iter()
        .filter_map(|&i| {
            let reply = match message.state.recipients.get(i)? {
                RcptState::Failed { reply, .. } | RcptState::Delivered { reply, .. } => {
                    reply.as_str()
                }
                RcptState::Pending { last_reply, .. } => {
                    last_reply.as_deref().unwrap_or("4.0.0 not yet tried")
                }
            };
            Some((i, reply))
        })
        .collect();
    report_on(config, message, kind, &rows)
}

/// The report on recipients of `message` given with the reply each got:
/// for outcomes not yet recorded in its state (a success reported as it
/// happens).
fn report_on(
    config: &Config,
    message: &QueuedMessage,
    kind: Kind,
    rows: &[(usize, &str)],
) -> Result<Vec<u8>, QueueError> {
    let envelope = &message.envelope;
    let reporting = &config.hostname;
    let now = crate::store::fsutil::now_secs();

    let mut human = String::new();
    let mut machine = format!(
        "Reporting-MTA: dns; {reporting}\r\nX-Postroom-Queue-ID: {}\r\nArrival-Date: {}\r\n",
        message.id,
        message::rfc5322_date(envelope.arrived)
    );
    if let Some(envid) = &envelope.envid {
        machine.insert_str(0, &format!("Original-Envelope-Id: {envid}\r\n"));
    }
    human.push_str(&match kind {
        Kind::Failure => format!(
            "This is the mail system at {reporting}.\r\n\r\n\
             Your message could not be delivered to the recipients below.\r\n\
             It has not been delivered to them and will not be tried again.\r\n\r\n"
        ),
        Kind::Delay => format!(
            "This is the mail system at {reporting}.\r\n\r\n\
             Your message has not been delivered yet to the recipients below.\r\n\
             It is still being tried; you need not send it again. It will be\r\n\
             returned if it cannot be delivered within {} days of its arrival.\r\n\r\n",
            config.queue.lifetime.as_secs().div_ceil(86400)
        ),
        Kind::Success { .. } => format!(
            "This is the mail system at {reporting}.\r\n\r\n\
             Your message was delivered to the recipients below, as you asked\r\n\
             to be told.\r\n\r\n"
        ),
    });
    for &(i, reply) in rows {
        let Some(rcpt) = envelope.recipients.get(i) else {
            continue;
        };
        let action = match kind {
            Kind::Failure => "failed",
            Kind::Delay => "delayed",
            Kind::Success { relayed: true } => "relayed",
            Kind::Success { relayed: false } => "delivered",
        };
        let reply = reply.trim();
        human.push_str(&format!("<{}>: {reply}\r\n", rcpt.address));
        machine.push_str("\r\n");
        if let Some(orcpt) = &rcpt.orcpt {
            machine.push_str(&format!("Original-Recipient: {orcpt}\r\n"));
        }
        machine.push_str(&format!(
            "Final-Recipient: rfc822; {}\r\nAction: {action}\r\nStatus: {}\r\n",
            rcpt.address,
            status_of(reply, action)
        ));
        // What the server said, or what we did (the host and the days
        // given up after are in the words above).
        let diagnostic = crate::delivery::reply::diagnostic(reply);
        if let Some(mta) = diagnostic.remote_mta {
            machine.push_str(&format!("Remote-MTA: dns; {mta}\r\n"));
        }
        machine.push_str(&format!(
            "Diagnostic-Code: {}; {}\r\n",
            diagnostic.kind, diagnostic.text
        ));
        machine.push_str(&format!(
            "Last-Attempt-Date: {}\r\n",
            message::rfc5322_date(now)
        ));
    }

    let full = envelope
        .ret
        .as_ref()
        .is_some_and(|r| r.as_str().eq_ignore_ascii_case("FULL"));
    let original = returned_part(message, full)?;
    let subject = match kind {
        Kind::Failure => "Undelivered Mail Returned to Sender",
        Kind::Delay => "Delayed Mail (still being retried)",
        Kind::Success { .. } => "Successful Mail Delivery Report",
    };
    let to = match &envelope.sender {
        ReversePath::Address(a) => a.to_string(),
        ReversePath::Null => postmaster(config)
            .map(|a| a.to_string())
            .unwrap_or_else(|| format!("postmaster@{reporting}")),
    };
    let from = format!("MAILER-DAEMON@{reporting}");
    let parts = vec![
        MimePart::new(ContentType::new("text/plain"), BodyPart::Text(human.into()))
            .transfer_encoding("7bit"),
        MimePart::new(
            ContentType::new("message/delivery-status"),
            BodyPart::Text(machine.into()),
        )
        .transfer_encoding("7bit"),
        original,
    ];
    let report = MimePart::new(
        ContentType::new("multipart/report").attribute("report-type", "delivery-status"),
        BodyPart::Multipart(parts),
    );
    let built = MessageBuilder::new()
        .from(("Mail Delivery System", from.as_str()))
        .to(to.as_str())
        .subject(subject)
        .date(now as i64)
        .message_id(format!(
            "{}.{}.{now}@{reporting}",
            kind_tag(kind),
            message.id
        ))
        .header(
            "Auto-Submitted",
            mail_builder::headers::raw::Raw::new("auto-replied"),
        )
        .body(report)
        .write_to_vec()
        .map_err(|e| QueueError::Io {
            path: message.path().to_path_buf(),
            error: e,
        })?;
    Ok(built)
}

fn kind_tag(kind: Kind) -> &'static str {
    match kind {
        Kind::Failure => "bounce",
        Kind::Delay => "delay",
        Kind::Success { .. } => "success",
    }
}

/// Queues a report (null sender) to `to`, routed like any mail; if the
/// address no longer resolves, the postmaster gets it instead.
pub fn queue_report(
    config: &Config,
    directory: &Directory,
    to: &Address,
    report: &[u8],
) -> Result<QueueId, SubmitError> {
    let routes = directory.routes_for(to).or_else(|e| {
        tracing::warn!(%to, "report cannot be routed ({e}); sending it to the postmaster");
        postmaster(config)
            .filter(|p| p != to)
            .map(|p| directory.routes_for(&p))
            .unwrap_or(Err(e))
    });
    let recipients = match routes {
        Ok(routes) if !routes.is_empty() => routes,
        Ok(_) => return Err(SubmitError::NoRecipients),
        Err(error) => {
            return Err(SubmitError::Unresolvable {
                address: to.clone(),
                error,
            });
        }
    };
    let submission = Submission::new(ReversePath::Null, Recipients::Routes(recipients));
    let id = submit(config, directory, submission, report)?;
    tracing::info!(report_id = %id, %to, "report queued");
    Ok(id)
}

/// Success reports (RFC 3461 §4.1 NOTIFY=SUCCESS) for the deliveries
/// among `outcomes`: queued to the sender for the recipients that asked,
/// before the deliveries are recorded (a crash between sends one twice,
/// never not at all). `relayed`: handed to a system that does not speak
/// DSN, so this is the last report (§5.2.3). One that cannot be queued is
/// logged: the mail itself is delivered, and refusing or retrying it now
/// would deliver it twice.
pub fn report_successes(
    config: &Config,
    directory: &Directory,
    message: &QueuedMessage,
    outcomes: &[(usize, Outcome)],
    relayed: bool,
) {
    let ReversePath::Address(sender) = &message.envelope.sender else {
        return;
    };
    let kind = Kind::Success { relayed };
    let wanted: Vec<(usize, &str)> = outcomes
        .iter()
        .filter_map(|(i, outcome)| match outcome {
            Outcome::Delivered(reply) => Some((*i, reply.as_str())),
            _ => None,
        })
        .filter(|&(i, _)| {
            message
                .envelope
                .recipients
                .get(i)
                .is_some_and(|r| wanted(r, kind))
        })
        .collect();
    if wanted.is_empty() {
        return;
    }
    let queued = report_on(config, message, kind, &wanted)
        .map_err(SubmitError::from)
        .and_then(|report| queue_report(config, directory, sender, &report));
    if let Err(e) = queued {
        tracing::error!(queue_id = %message.id, "success report not queued: {e}");
    }
}

/// Who hears of reports that cannot be delivered: `queue.postmaster`, else
/// postmaster at the host name (a domain name, checked at config load, so
/// `None` only for a `queue.postmaster` that is no address).
pub fn postmaster(config: &Config) -> Option<Address> {
    match config.queue.postmaster.as_deref() {
        Some(p) => Address::parse(p).ok(),
        None => Address::parse(&format!("postmaster@{}", config.hostname)).ok(),
    }
}

/// The RFC 3463 status for a reply: its enhanced code if it has one, else
/// the class of its basic code.
fn status_of(reply: &str, action: &str) -> String {
    let mut words = reply.split_whitespace();
    let basic = words.next().unwrap_or("");
    let enhanced = words.next().unwrap_or("");
    let is_status = |s: &str| {
        let parts: Vec<&str> = s.split('.').collect();
        parts.len() == 3
            && matches!(parts[0], "2" | "4" | "5")
            && parts
                .iter()
                .all(|p| !p.is_empty() && p.len() <= 3 && p.bytes().all(|b| b.is_ascii_digit()))
    };
    // A delay is of class 4 whatever the reply's class (RFC 3464 §2.3.4).
    let class = |status: &str| match action {
        "delayed" => format!("4{}", &status[1..]),
        _ => status.to_string(),
    };
    if is_status(enhanced) {
        return class(enhanced);
    }
    if is_status(basic) {
        return class(basic);
    }
    match (basic.as_bytes().first(), action) {
        (_, "delivered" | "relayed") => "2.0.0".into(),
        (_, "delayed") => "4.0.0".into(),
        (Some(b'4'), _) => "4.0.0".into(),
        _ => "5.0.0".into(),
    }
}

/// The original message, or its header, as the report's third part.
fn returned_part(message: &QueuedMessage, full: bool) -> Result<MimePart<'static>, QueueError> {
    let io = |e| QueueError::Io {
        path: message.path().to_path_buf(),
        error: e,
    };
    let mut bytes = Vec::new();
    let limit = if full { MAX_RETURNED } else { 64 << 10 };
    message
        .body()?
        .take(limit)
        .read_to_end(&mut bytes)
        .map_err(io)?;
    let header_end = message::header_len(&bytes);
    if full && (message.body_size <= MAX_RETURNED) {
        return Ok(MimePart::new(
            ContentType::new("message/rfc822"),
            BodyPart::Binary(bytes.into()),
        )
        .transfer_encoding("8bit"));
    }
    bytes.truncate(header_end);
    Ok(MimePart::new(
        ContentType::new("text/rfc822-headers"),
        BodyPart::Binary(bytes.into()),
    )
    .transfer_encoding("8bit"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::proto::address::EnvelopeText;
    use crate::store::queue::{Envelope, Queue, Route};

    fn queued(notify: Option<&str>, ret: Option<&str>) -> (tempfile::TempDir, QueuedMessage) {
        let dir = tempfile::tempdir().unwrap();
        let queue = Queue::new(dir.path().join("queue"));
        queue.create().unwrap();
        let mut rcpt = Recipient::new(Route::Remote, Address::parse("bob@far.test").unwrap());
        rcpt.notify = notify.map(|n| EnvelopeText::new(n, 100).unwrap());
        rcpt.orcpt = Some(EnvelopeText::new("rfc822;Bob@far.test", 100).unwrap());
        let mut envelope = Envelope::new(
            ReversePath::Address(Address::parse("ann@example.test").unwrap()),
            vec![rcpt],
        );
        envelope.ret = ret.map(|r| EnvelopeText::new(r, 10).unwrap());
        envelope.envid = Some(EnvelopeText::new("env-1", 10).unwrap());
        let id = queue
            .enqueue(
                &envelope,
                b"Subject: hello\r\nFrom: ann@example.test\r\n\r\nsecret body\r\n",
            )
            .unwrap();
        let mut locked = queue.lock(&id).unwrap().unwrap();
        locked
            .record(
                &[crate::store::queue::LogEntry::Failed(
                    0,
                    EnvelopeText::new("550 5.1.1 no such user (from mx1.far.test[192.0.2.1])", 200)
                        .unwrap(),
                )],
                false,
            )
            .unwrap();
        let message = locked.message.clone();
        (dir, message)
    }

    fn config() -> Config {
        Config::parse("hostname = \"mx.example.test\"\n").unwrap()
    }

    #[test]
    fn failure_report_has_the_three_parts_and_the_fields() {
        let (_d, message) = queued(None, None);
        let text =
            String::from_utf8(report(&config(), &message, Kind::Failure, &[0]).unwrap()).unwrap();
        for want in [
            "To: <ann@example.test>",
            "Auto-Submitted: auto-replied",
            "multipart/report",
            "report-type=\"delivery-status\"",
            "Reporting-MTA: dns; mx.example.test",
            "Original-Envelope-Id: env-1",
            "Original-Recipient: rfc822;Bob@far.test",
            "Final-Recipient: rfc822; bob@far.test",
            "Action: failed",
            "Status: 5.1.1",
            "Remote-MTA: dns; mx1.far.test",
            "Diagnostic-Code: smtp; 550 5.1.1 no such user",
            "text/rfc822-headers",
            "Subject: hello",
        ] {
            assert!(text.contains(want), "{want:?} missing in\n{text}");
        }
        assert!(!text.contains("secret body"), "headers only by default");
        assert!(!text.contains("\n\n") || text.contains("\r\n"), "CRLF");
        let parsed = mail_parser::MessageParser::default()
            .parse(text.as_bytes())
            .unwrap();
        assert_eq!(parsed.parts.len(), 4, "the report and its three parts");
    }

    #[test]
    fn ret_full_returns_the_body() {
        let (_d, message) = queued(None, Some("FULL"));
        let text =
            String::from_utf8(report(&config(), &message, Kind::Failure, &[0]).unwrap()).unwrap();
        assert!(text.contains("message/rfc822") && text.contains("secret body"));
    }

    #[test]
    fn notify_decides_which_reports_are_wanted() {
        let r = |n: Option<&str>| {
            let mut r = Recipient::new(Route::Remote, Address::parse("b@x.test").unwrap());
            r.notify = n.map(|n| EnvelopeText::new(n, 100).unwrap());
            r
        };
        assert!(wanted(&r(None), Kind::Failure) && wanted(&r(None), Kind::Delay));
        assert!(!wanted(&r(None), Kind::Success { relayed: false }));
        assert!(!wanted(&r(Some("NEVER")), Kind::Failure));
        assert!(wanted(&r(Some("SUCCESS,FAILURE")), Kind::Failure));
        assert!(!wanted(&r(Some("FAILURE")), Kind::Delay));
    }

    #[test]
    fn status_comes_from_the_reply() {
        assert_eq!(status_of("550 5.7.1 go away", "failed"), "5.7.1");
        assert_eq!(status_of("452 too many", "delayed"), "4.0.0");
        assert_eq!(status_of("554 nope", "failed"), "5.0.0");
        assert_eq!(status_of("5.1.10 null MX", "failed"), "5.1.10");
        // A reply of class 5 that only deferred (a 552 to RCPT, a greeting).
        assert_eq!(status_of("552 5.5.3 too many", "delayed"), "4.5.3");
    }
}
