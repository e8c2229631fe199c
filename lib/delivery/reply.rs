//! The reply recorded for a recipient (REPLY in the queue log,
//! `postroom-queue(5)`), and what a delivery report makes of it: its
//! Remote-MTA and Diagnostic-Code fields (RFC 3464 §2.3.5, §2.3.6).
//!
//! Two kinds of text are recorded, and a report must tell them apart:
//!
//! - A reply another server sent: `CODE TEXT (from HOST[IP])`, written by
//!   [`from_server`] only. Its Diagnostic-Code is `smtp; CODE TEXT`, what
//!   the server said, and HOST is its Remote-MTA.
//! - Anything else is this system's own diagnosis (a refused connection, a
//!   DNS or TLS failure, a local mailbox): `CODE STATUS TEXT`, whose codes
//!   say what it amounts to (defer or fail, and the RFC 3463 status) though
//!   no server sent them. Its Diagnostic-Code is `X-Postroom; TEXT`, as
//!   Postfix writes `X-Postfix;`.
//!
//! A deferral that outlives `queue.lifetime` fails with [`gave_up`]'s
//! ` (gave up after N days)` after either kind; a report shows that, and
//! the host, only in its words for people.

use std::net::IpAddr;

use crate::store::queue::MAX_FIELD;

/// Room kept in a recorded reply for [`gave_up`]'s words.
const GAVE_UP_ROOM: usize = 48;

/// The record of a reply `CODE TEXT` that the server `host` at `ip` sent.
/// A long text is cut so that the whole record fits the queue log's field
/// with room for [`gave_up`]: cut by the log instead, it would lose the
/// part that says a server sent it.
pub fn from_server(code: u16, text: &str, host: &str, ip: IpAddr) -> String {
    let from = format!(" (from {host}[{ip}])");
    let room = MAX_FIELD.saturating_sub(from.len() + GAVE_UP_ROOM + 4);
    let mut cut = text.len().min(room);
    while !text.is_char_boundary(cut) {
        cut -= 1;
    }
    format!("{code} {}{from}", &text[..cut])
}

/// A deferral's reply as the failure it becomes after `days` in the queue.
pub fn gave_up(reply: &str, days: u64) -> String {
    format!("{reply} (gave up after {days} days)")
}

/// What a report says of one recorded reply.
#[derive(Debug, PartialEq, Eq)]
pub struct Diagnostic<'a> {
    /// The server that sent the reply (Remote-MTA, type `dns`).
    pub remote_mta: Option<&'a str>,
    /// The Diagnostic-Code's type: `smtp` for a server's reply,
    /// `X-Postroom` for this system's own words.
    pub kind: &'static str,
    /// The Diagnostic-Code's text.
    pub text: &'a str,
}

/// Reads a recorded reply back (either kind, with or without [`gave_up`]'s
/// words).
pub fn diagnostic(recorded: &str) -> Diagnostic<'_> {
    let reply = recorded.trim();
    let reply = without_gave_up(reply).unwrap_or(reply);
    if let Some((said, host)) = server_reply(reply) {
        return Diagnostic {
            remote_mta: Some(host),
            kind: "smtp",
            text: said,
        };
    }
    Diagnostic {
        remote_mta: None,
        kind: "X-Postroom",
        text: without_codes(reply),
    }
}

fn without_gave_up(reply: &str) -> Option<&str> {
    let at = reply.rfind(" (gave up after ")?;
    let days = reply[at..]
        .strip_prefix(" (gave up after ")?
        .strip_suffix(" days)")?;
    days.bytes()
        .all(|b| b.is_ascii_digit())
        .then_some(&reply[..at])
}

/// `(CODE TEXT, HOST)` of a record [`from_server`] wrote.
fn server_reply(reply: &str) -> Option<(&str, &str)> {
    let at = reply.rfind(" (from ")?;
    let (host, ip) = reply[at..]
        .strip_prefix(" (from ")?
        .strip_suffix("])")?
        .split_once('[')?;
    let said = &reply[..at];
    let code = said.get(..3)?;
    let is_code = code.bytes().all(|b| b.is_ascii_digit())
        && (b'2'..=b'5').contains(&code.as_bytes()[0])
        && said[3..].chars().next().is_none_or(|c| c == ' ');
    let is_host = !host.is_empty() && !host.contains(char::is_whitespace);
    (is_code && is_host && ip.parse::<IpAddr>().is_ok()).then_some((said, host))
}

/// A diagnosis without the reply code and status it is recorded with (the
/// report's Status field carries the status).
fn without_codes(reply: &str) -> &str {
    let mut rest = reply;
    if let Some((code, after)) = rest.split_once(' ')
        && code.len() == 3
        && code.bytes().all(|b| b.is_ascii_digit())
    {
        rest = after.trim_start();
    }
    if let Some((status, after)) = rest.split_once(' ')
        && status.split('.').count() == 3
        && status.bytes().all(|b| b.is_ascii_digit() || b == b'.')
    {
        rest = after.trim_start();
    }
    if rest.is_empty() { reply } else { rest }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_servers_reply_is_its_diagnostic_code_and_names_the_remote_mta() {
        let recorded = from_server(
            550,
            "5.1.1 no such user",
            "mx.far.test",
            [192, 0, 2, 1].into(),
        );
        assert_eq!(
            recorded,
            "550 5.1.1 no such user (from mx.far.test[192.0.2.1])"
        );
        let want = Diagnostic {
            remote_mta: Some("mx.far.test"),
            kind: "smtp",
            text: "550 5.1.1 no such user",
        };
        assert_eq!(diagnostic(&recorded), want);
        assert_eq!(diagnostic(&gave_up(&recorded, 5)), want);
        let v6 = from_server(421, "bye", "mx.x.test", "::1".parse().unwrap());
        assert_eq!(diagnostic(&v6).remote_mta, Some("mx.x.test"));
        assert_eq!(diagnostic(&v6).text, "421 bye");
    }

    #[test]
    fn our_own_diagnosis_is_x_postroom_without_its_codes() {
        let refused =
            "421 4.4.1 cannot connect to 127.0.0.1[127.0.0.1]: Connection refused (os error 111)";
        assert_eq!(
            diagnostic(&gave_up(refused, 5)),
            Diagnostic {
                remote_mta: None,
                kind: "X-Postroom",
                text: "cannot connect to 127.0.0.1[127.0.0.1]: Connection refused (os error 111)",
            }
        );
        assert_eq!(
            diagnostic("5.1.10 null MX").text,
            "null MX",
            "a status alone goes too"
        );
        assert_eq!(diagnostic("4.0.0 not yet tried").kind, "X-Postroom");
        // Words that merely mention a host are not a server's reply.
        let auth = "451 4.7.8 authentication with mx.test[192.0.2.1] failed: it answered 535 no";
        assert_eq!(diagnostic(auth).kind, "X-Postroom");
        assert_eq!(diagnostic("550").text, "550");
    }

    #[test]
    fn a_long_reply_keeps_its_origin_within_the_logs_field() {
        let long = "x".repeat(5000);
        let recorded = gave_up(
            &from_server(550, &long, "mx.test", [192, 0, 2, 1].into()),
            5,
        );
        assert!(recorded.len() <= MAX_FIELD);
        assert_eq!(diagnostic(&recorded).remote_mta, Some("mx.test"));
    }
}
