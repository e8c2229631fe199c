//! A queued envelope as SMTP commands and back: the MAIL and RCPT lines
//! `smtp-send` sends and `postroom bsmtp export` writes, and the envelope
//! fields `smtp-recv` and `postroom bsmtp import` take from them. One copy
//! of the rules, so a batch carries exactly what a session would.

use crate::proto::address::{EnvelopeText, ReversePath};
use crate::proto::xtext;
use crate::store::queue::{Envelope, MAX_FIELD, Recipient};

/// The extensions the receiving side offers; a parameter it does not
/// know is left out, as RFC 5321 requires.
#[derive(Debug, Default, Clone, Copy)]
pub struct Offered {
    /// SIZE (RFC 1870): the message's size is declared.
    pub size: bool,
    pub eightbitmime: bool,
    pub smtputf8: bool,
    /// DSN (RFC 3461): RET, ENVID, NOTIFY and ORCPT are passed on.
    pub dsn: bool,
}

impl Offered {
    /// Everything: a batch carries the whole envelope.
    pub fn all() -> Offered {
        Offered {
            size: true,
            eightbitmime: true,
            smtputf8: true,
            dsn: true,
        }
    }
}

/// `MAIL FROM:<sender> [params]` CRLF for `envelope`, with `size` body octets.
pub fn mail_command(envelope: &Envelope, sender: &ReversePath, size: u64, ext: Offered) -> String {
    let mut command = format!("MAIL FROM:<{sender}>");
    if ext.size {
        command.push_str(&format!(" SIZE={size}"));
    }
    if ext.eightbitmime
        && envelope
            .body_type
            .as_ref()
            .is_some_and(|b| b.as_str().eq_ignore_ascii_case("8BITMIME"))
    {
        command.push_str(" BODY=8BITMIME");
    }
    if ext.smtputf8 && envelope.smtputf8 {
        command.push_str(" SMTPUTF8");
    }
    if ext.dsn {
        if let Some(ret) = &envelope.ret {
            command.push_str(&format!(" RET={ret}"));
        }
        if let Some(envid) = &envelope.envid {
            // Stored decoded: on the wire it is xtext (RFC 3461 §4.4), or
            // a `+` or a space in it would change or break the command.
            command.push_str(&format!(" ENVID={}", xtext::encode(envid.as_str())));
        }
    }
    command.push_str("\r\n");
    command
}

/// `RCPT TO:<address> [NOTIFY=…] [ORCPT=…]` CRLF.
pub fn rcpt_command(rcpt: &Recipient, ext: Offered) -> String {
    let mut command = format!("RCPT TO:<{}>", rcpt.address);
    if ext.dsn {
        if let Some(notify) = &rcpt.notify {
            command.push_str(&format!(" NOTIFY={notify}"));
        }
        if let Some(orcpt) = &rcpt.orcpt {
            command.push_str(&format!(" ORCPT={}", orcpt_param(orcpt.as_str())));
        }
    }
    command.push_str("\r\n");
    command
}

/// The ORCPT value on the wire. The queue holds it as RFC 3461 gives it,
/// `rfc822;` and xtext (`directory::aliases::routes_for`); a bare address
/// (what older `smtp-recv` stored) gets that form.
fn orcpt_param(stored: &str) -> String {
    if stored.contains(';') {
        stored.to_string()
    } else {
        format!("rfc822;{}", xtext::encode(stored))
    }
}

/// The envelope fields a MAIL command's parameters give.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct MailParams {
    pub envid: Option<EnvelopeText>,
    pub body_type: Option<EnvelopeText>,
    pub ret: Option<EnvelopeText>,
    pub smtputf8: bool,
}

/// Why MAIL's parameters cannot be taken.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum ParamError {
    #[error("malformed ENVID")]
    Envid,
    #[error("BINARYMIME needs CHUNKING (BDAT), which a DATA transfer cannot carry")]
    BinaryMime,
}

/// The envelope fields of a parsed MAIL command (smtp-proto has already
/// decoded the xtext of ENVID).
pub fn mail_params(from: &smtp_proto::MailFrom<String>) -> Result<MailParams, ParamError> {
    let envid = from
        .env_id
        .as_deref()
        .map(|e| EnvelopeText::new(e, 100).map_err(|_| ParamError::Envid))
        .transpose()?;
    let body_type = if from.flags & smtp_proto::MAIL_BODY_8BITMIME != 0 {
        Some("8BITMIME")
    } else if from.flags & smtp_proto::MAIL_BODY_BINARYMIME != 0 {
        return Err(ParamError::BinaryMime);
    } else if from.flags & smtp_proto::MAIL_BODY_7BIT != 0 {
        Some("7BIT")
    } else {
        None
    };
    let ret = if from.flags & smtp_proto::MAIL_RET_FULL != 0 {
        Some("FULL")
    } else if from.flags & smtp_proto::MAIL_RET_HDRS != 0 {
        Some("HDRS")
    } else {
        None
    };
    let word = |w: &str| EnvelopeText::new(w, 16).ok();
    Ok(MailParams {
        envid,
        body_type: body_type.and_then(word),
        ret: ret.and_then(word),
        smtputf8: from.flags & smtp_proto::MAIL_SMTPUTF8 != 0,
    })
}

impl MailParams {
    /// Writes these fields into a queue envelope.
    pub fn apply(&self, envelope: &mut Envelope) {
        envelope.envid = self.envid.clone();
        envelope.body_type = self.body_type.clone();
        envelope.ret = self.ret.clone();
        envelope.smtputf8 = self.smtputf8;
    }
}

/// The NOTIFY parameter of a parsed RCPT as the queue records it.
pub fn notify_text(flags: u64) -> Option<EnvelopeText> {
    if flags & smtp_proto::RCPT_NOTIFY_NEVER != 0 {
        return EnvelopeText::new("NEVER", 10).ok();
    }
    let words: Vec<&str> = [
        (smtp_proto::RCPT_NOTIFY_SUCCESS, "SUCCESS"),
        (smtp_proto::RCPT_NOTIFY_FAILURE, "FAILURE"),
        (smtp_proto::RCPT_NOTIFY_DELAY, "DELAY"),
    ]
    .iter()
    .filter(|(bit, _)| flags & bit != 0)
    .map(|(_, word)| *word)
    .collect();
    (!words.is_empty())
        .then(|| EnvelopeText::new(&words.join(","), 40).ok())
        .flatten()
}

/// Gives each route a RCPT command resolved to its NOTIFY and ORCPT.
pub fn apply_rcpt_params(routes: &mut [Recipient], to: &smtp_proto::RcptTo<String>) {
    let notify = notify_text(to.flags);
    // smtp-proto hands over the address decoded; the queue keeps the
    // RFC 3461 form, as `routes_for` writes it.
    let orcpt = to
        .orcpt
        .as_deref()
        .and_then(|o| EnvelopeText::new(&format!("rfc822;{}", xtext::encode(o)), MAX_FIELD).ok());
    for route in routes {
        route.notify = notify.clone();
        if orcpt.is_some() {
            route.orcpt = orcpt.clone();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::proto::address::Address;
    use crate::store::queue::Route;

    fn parse_mail(line: &str) -> smtp_proto::MailFrom<String> {
        match smtp_proto::Request::parse(&mut line.as_bytes().iter()) {
            Ok(smtp_proto::Request::Mail { from }) => from.into_owned(),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn mail_parameters_survive_the_round_trip() {
        let mut envelope =
            Envelope::new(ReversePath::parse("ann@example.test").unwrap(), Vec::new());
        envelope.envid = Some(EnvelopeText::new("id+with=odd chars", 100).unwrap());
        envelope.ret = Some(EnvelopeText::new("HDRS", 10).unwrap());
        envelope.body_type = Some(EnvelopeText::new("8BITMIME", 10).unwrap());
        envelope.smtputf8 = true;
        let line = mail_command(&envelope, &envelope.sender, 42, Offered::all());
        let params = mail_params(&parse_mail(&line)).unwrap();
        let mut back = Envelope::new(envelope.sender.clone(), Vec::new());
        params.apply(&mut back);
        back.arrived = envelope.arrived;
        assert_eq!(back, envelope, "{line}");
    }

    #[test]
    fn rcpt_parameters_survive_the_round_trip() {
        let mut rcpt = Recipient::new(Route::Remote, Address::parse("bob@far.test").unwrap());
        rcpt.notify = Some(EnvelopeText::new("SUCCESS,DELAY", 40).unwrap());
        rcpt.orcpt = Some(EnvelopeText::new("rfc822;Bob+2BSmith@Far.test", 100).unwrap());
        let line = rcpt_command(&rcpt, Offered::all());
        let to = match smtp_proto::Request::parse(&mut line.as_bytes().iter()) {
            Ok(smtp_proto::Request::Rcpt { to }) => to.into_owned(),
            other => panic!("{other:?}"),
        };
        let mut back = vec![Recipient::new(Route::Remote, rcpt.address.clone())];
        apply_rcpt_params(&mut back, &to);
        assert_eq!(back[0], rcpt, "{line}");
    }
}
