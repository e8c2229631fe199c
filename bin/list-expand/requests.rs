//! Requests by mail to `LIST-request@DOMAIN`: subscribe, unsubscribe (both
//! confirmed by replying with a token that expires), confirm, help,
//! members, set digest|nomail on|off, and for owners and moderators
//! approve/reject of held posts and add/remove of members.
//!
//! Commands are read from the subject and then from the body's lines, up
//! to the first line that is no command (a signature, a quoted reply), at
//! most ten. The reply goes to the From address (the envelope sender if
//! From has none), queued with the null sender and `Auto-Submitted`, so
//! two robots cannot answer each other for ever; a request that is itself
//! automatic is not answered at all.

use mail_parser::MessageParser;
use postroom::config::Config;
use postroom::delivery::lists::{List, ListError};
use postroom::proto::address::{Address, ReversePath};

use crate::post::{distribute, take_held};

/// The most commands one message may carry.
const MAX_COMMANDS: usize = 10;

/// Handles one message to the request address. 0 unless the reply cannot
/// be queued now (`Err`, exit 75): a request that cannot be done gets a
/// reply saying why, never a bounce, and one from an address that can
/// never be answered (an unknown user of a local domain) is dropped with
/// a log line before anything in it is done, as a post leaves out such a
/// member; trying it again would change nothing.
pub fn request(
    config: &Config,
    list: &List,
    sender: &ReversePath,
    raw: &[u8],
) -> anyhow::Result<u8> {
    let Some(parsed) = MessageParser::default().parse(raw) else {
        return Ok(0);
    };
    let automatic = parsed
        .header_raw("Auto-Submitted")
        .is_some_and(|v| !v.trim().eq_ignore_ascii_case("no"));
    let ReversePath::Address(envelope) = sender else {
        return Ok(0);
    };
    if automatic {
        eprintln!(
            "list-expand: {}: automatic request from {envelope} ignored",
            list.address
        );
        return Ok(0);
    }
    let from = parsed
        .from()
        .and_then(|f| f.first())
        .and_then(|a| a.address())
        .and_then(|a| Address::parse(a).ok())
        .unwrap_or_else(|| envelope.clone());
    match list.check_reply_address(config, &from) {
        Ok(()) => {}
        Err(e @ ListError::Undeliverable { .. }) => {
            eprintln!(
                "list-expand: {}: request from {envelope} dropped: {e}",
                list.address
            );
            return Ok(0);
        }
        Err(e) => return Err(e.into()),
    }

    let mut lines: Vec<String> = Vec::new();
    if let Some(subject) = parsed.subject() {
        lines.push(subject.to_string());
    }
    if let Some(body) = parsed.body_text(0) {
        lines.extend(
            body.lines()
                .map(|l| l.trim().to_string())
                .filter(|l| !l.is_empty()),
        );
    }
    let mut replies = Vec::new();
    // A confirmation request's subject carries its token, so a plain
    // reply confirms.
    let mut subject = format!("Re: your request to {}", list.request_address());
    // The confirmations asked for: taken back if the reply carrying them
    // is not queued, so `pending/` holds only tokens that were sent.
    let mut tokens = Vec::new();
    for line in lines.iter().take(MAX_COMMANDS + 1) {
        match command(config, list, &from, line, &mut subject, &mut tokens)? {
            Some(reply) => replies.push(format!("> {line}\r\n{reply}\r\n")),
            None if replies.is_empty() && line == &lines[0] => continue,
            None => break,
        }
        if replies.len() == MAX_COMMANDS {
            break;
        }
    }
    if replies.is_empty() {
        replies.push(help(list));
    }
    if let Err(e) = list.reply(config, &from, &subject, &replies.join("\r\n")) {
        for token in &tokens {
            list.cancel_token(token)?;
        }
        if let ListError::Undeliverable { .. } = e {
            eprintln!("list-expand: {}: no reply sent: {e}", list.address);
            return Ok(0);
        }
        return Err(e.into());
    }
    Ok(0)
}

/// One command line; `None` when the line is no command.
fn command(
    config: &Config,
    list: &List,
    from: &Address,
    line: &str,
    subject: &mut String,
    tokens: &mut Vec<String>,
) -> anyhow::Result<Option<String>> {
    let lower = line.to_ascii_lowercase();
    // "Re: confirm TOKEN" from a reply's subject works too.
    let lower = lower.trim_start_matches("re:").trim();
    let words: Vec<&str> = lower.split_whitespace().collect();
    let owner_or_moderator =
        list.is_owner(from) || list.roster("moderators")?.contains(&from.lookup_key());
    let reply = match words.as_slice() {
        ["help"] => help(list),
        [action @ ("subscribe" | "join" | "unsubscribe" | "leave")] => {
            let action = match *action {
                "subscribe" | "join" => "subscribe",
                _ => "unsubscribe",
            };
            let confirmation = list.confirmation(action, from)?;
            *subject = confirmation.subject;
            tokens.push(confirmation.token);
            confirmation.text
        }
        ["confirm", token] => match list.take_token(token)? {
            Some((action, who)) if action == "subscribe" => {
                list.add("members", std::slice::from_ref(&who))?;
                format!("{who} is now a member of {}.", list.address)
            }
            Some((action, who)) if action == "unsubscribe" => {
                list.remove("members", std::slice::from_ref(&who))?;
                format!("{who} has left {}.", list.address)
            }
            _ => "That confirmation is unknown or has expired; send the request again.".into(),
        },
        [
            "set",
            option @ ("digest" | "nomail"),
            value @ ("on" | "off"),
        ] => {
            let on = *value == "on";
            let (digest, nomail) = if *option == "digest" {
                (Some(on), None)
            } else {
                (None, Some(on))
            };
            if list.set_options(from, digest, nomail)? {
                format!("{option} is now {value} for {from}.")
            } else {
                format!("{from} is not a member of {}.", list.address)
            }
        }
        ["members"] | ["who"] => {
            if list.config.members_visible || owner_or_moderator {
                let members = list.members()?;
                let mut text = format!("{} members:\r\n", members.len());
                for m in members.iter().take(10_000) {
                    text.push_str(&m.address);
                    text.push_str("\r\n");
                }
                text
            } else {
                "The member list of this list is private.".into()
            }
        }
        [action @ ("approve" | "reject"), id] if owner_or_moderator => match take_held(list, id) {
            Ok((sender, post)) if *action == "approve" => {
                distribute(config, list, &sender, &post)?;
                format!("Post {id} sent to {}.", list.address)
            }
            Ok(_) => format!("Post {id} dropped."),
            Err(e) => format!("{e:#}"),
        },
        [action @ ("add" | "remove"), who] if list.is_owner(from) => match Address::parse(who) {
            Ok(who) if *action == "add" => {
                list.add("members", std::slice::from_ref(&who))?;
                format!("{who} added.")
            }
            Ok(who) => {
                list.remove("members", std::slice::from_ref(&who))?;
                format!("{who} removed.")
            }
            Err(e) => format!("{who}: {e}"),
        },
        ["approve" | "reject" | "add" | "remove", ..] => {
            "Only the list's owners (and moderators, for held posts) may do that.".into()
        }
        _ => return Ok(None),
    };
    Ok(Some(reply))
}

fn help(list: &List) -> String {
    format!(
        "Commands for {list} (in the subject or one a line in the body of a message to {request}):\r\n\r\n\
         subscribe              join the list (you will be asked to confirm)\r\n\
         unsubscribe            leave the list (you will be asked to confirm)\r\n\
         set digest on|off      get digests instead of each post\r\n\
         set nomail on|off      stop and start getting posts\r\n\
         members                the member list, if the list shows it\r\n\
         help                   this text\r\n",
        list = list.address,
        request = list.request_address()
    )
}
