//! Posts: the policy decision, holding for a moderator, and sending an
//! accepted post to the members with the list headers added.

use anyhow::Context;
use postroom::config::Config;
use postroom::delivery::lists::{List, Outsiders, Policy, ReplyTo};
use postroom::delivery::submit::{self, Recipients, Submission, SubmitError, Unresolvable};
use postroom::directory::aliases::Directory;
use postroom::proto::address::{Address, ReversePath};
use postroom::proto::message;
use postroom::store::maildir::{Maildir, Message};
use postroom::store::queue;

use crate::EX_NOPERM;

/// A header the held copy carries so approval knows the envelope sender.
pub const HELD_SENDER: &str = "X-Postroom-Envelope-From";

/// The policy decision for one post.
pub fn post(config: &Config, list: &List, sender: &ReversePath, raw: &[u8]) -> anyhow::Result<u8> {
    let post = message::to_crlf(raw);
    let end = message::header_len(&post);
    let fields = message::header_fields(&post[..end]);
    let has = |name: &str, value: &str| {
        fields
            .iter()
            .any(|(n, v)| n.eq_ignore_ascii_case(name) && v.to_ascii_lowercase().contains(value))
    };
    // Our own post coming back (a member forwarding to the list, or two
    // lists subscribed to each other): drop it, never bounce it.
    if has("List-Id", &format!("<{}>", list.list_id())) || has("X-Loop", &list.address.lookup_key())
    {
        eprintln!(
            "list-expand: {}: a post that went through this list already; dropped",
            list.address
        );
        return Ok(0);
    }
    let ReversePath::Address(from) = sender else {
        eprintln!(
            "list-expand: {}: a post with the null sender (a bounce?); dropped",
            list.address
        );
        return Ok(0);
    };
    let key = from.lookup_key();
    let owner = list.is_owner(from);
    let poster = owner || list.roster("posters")?.contains(&key);
    let moderator = owner || list.roster("moderators")?.contains(&key);
    let member = list.members()?.iter().any(|m| m.address == key);
    let allowed = match list.config.policy {
        Policy::Open => true,
        Policy::Members => member || poster || moderator,
        Policy::Moderated => moderator || poster,
        Policy::Announce => poster,
    };
    let hold = !allowed
        && (list.config.policy == Policy::Moderated || list.config.outsiders == Outsiders::Hold);
    if hold {
        let id = hold_post(config, list, from, &post)?;
        eprintln!(
            "list-expand: {}: post from {from} held as {id}",
            list.address
        );
        return Ok(0);
    }
    if !allowed {
        let who = match list.config.policy {
            Policy::Announce => "the list's posters",
            _ => "members",
        };
        postroom::say!("550 5.7.1 only {who} may post to {}", list.address);
        return Ok(EX_NOPERM);
    }
    distribute(config, list, sender, &post)?;
    Ok(0)
}

/// Sends an accepted post to the members: headers added, archived, and
/// queued as one message for all, or, when the list has an
/// `unsubscribe_url`, one message a member.
///
/// Why a copy a member then: RFC 8058 wants the one-click URL to name its
/// recipient and List-Unsubscribe to be covered by the DKIM signature, and
/// signing happens when a message is queued, so a header that differs per
/// member needs a queued (and signed) copy per member. VERP already sends
/// each member their own SMTP transaction, so what it adds is a queue
/// file, its fsyncs and a signature per member (`list-expand(1)`, COSTS).
pub fn distribute(
    config: &Config,
    list: &List,
    sender: &ReversePath,
    post: &[u8],
) -> anyhow::Result<()> {
    let mut outgoing = list_headers(list, post);
    if let Some(footer) = &list.config.footer {
        outgoing = postroom::delivery::footer::add_footer(&outgoing, footer);
    }
    if let Some(rewritten) = rewrite_from_for_dmarc(config, list, &outgoing) {
        outgoing = rewritten;
    }
    let directory = Directory::load(config)?;
    let mut members = Vec::new();
    for member in list.members()? {
        if member.nomail || member.digest {
            continue;
        }
        match Address::parse(&member.address) {
            Ok(address) => members.push(address),
            Err(_) => tracing::warn!(member = %member.address, "not an address; skipped"),
        }
    }
    // Nothing is archived or sent yet: a member who cannot be looked up
    // now makes the whole post wait (exit 75) rather than go out without
    // members who may well exist (a missing users file, an include file
    // unreadable now). One who does not exist is left out.
    let copies = copies_for(list, &directory, members)
        .map_err(|e| anyhow::anyhow!("member {e}; the post is not sent now"))?;
    if list.config.archive {
        let archived = [unsubscribe_headers(list, None)?.as_bytes(), &outgoing].concat();
        Maildir::new(list.archive_dir())
            .deliver(Message {
                prepend: b"",
                body: &mut &archived[..],
                base_name: None,
                search_cur: false,
                end_header: true,
                as_given: false,
                quota: None,
            })
            .context("archiving the post")?;
    }
    if copies.is_empty() {
        tracing::info!(list = %list.address, %sender, "no member to send to");
        return Ok(());
    }
    // Someone's post passed on: sealed with ARC, so a receiver can trust
    // the authentication it had here, before the footer and tag broke it.
    let count = queue_copies(config, list, &directory, copies, &outgoing, true)?;
    tracing::info!(list = %list.address, %sender, copies = count, "post queued");
    Ok(())
}

/// One queued copy of a list message: the member it is for (when each
/// member gets their own, for their one-click URL) and where it goes.
pub type MemberCopy = (Option<Address>, Vec<queue::Recipient>);

/// The copies a message to `members` is queued as: one for all, or, when
/// the list has an `unsubscribe_url`, one a member. A member who does not
/// exist is left out; one who cannot be looked up now is an error, so the
/// caller can wait rather than leave them out.
pub fn copies_for(
    list: &List,
    directory: &Directory,
    members: Vec<Address>,
) -> Result<Vec<MemberCopy>, SubmitError> {
    let mut copies = Vec::new();
    if list.config.unsubscribe_url.is_some() {
        for member in members {
            let routes = submit::resolve(
                directory,
                std::slice::from_ref(&member),
                Unresolvable::SkipUnknown,
            )?;
            if !routes.is_empty() {
                copies.push((Some(member), routes));
            }
        }
    } else {
        let routes = submit::resolve(directory, &members, Unresolvable::SkipUnknown)?;
        if !routes.is_empty() {
            copies.push((None, routes));
        }
    }
    Ok(copies)
}

/// Queues `message` (with the list's fields) as `copies`, each with its
/// List-Unsubscribe fields in front, from the bounce address in its VERP
/// form, at low priority; `passed_on` seals each with ARC. Returns how
/// many were queued.
pub fn queue_copies(
    config: &Config,
    list: &List,
    directory: &Directory,
    copies: Vec<MemberCopy>,
    message: &[u8],
    passed_on: bool,
) -> anyhow::Result<usize> {
    let bounces = list
        .bounce_address()
        .map(ReversePath::Address)
        .unwrap_or(ReversePath::Null);
    let count = copies.len();
    let queue_copy = |(member, routes): MemberCopy| {
        let copy = [
            unsubscribe_headers(list, member.as_ref())?.as_bytes(),
            message,
        ]
        .concat();
        let mut submission = Submission::new(bounces.clone(), Recipients::Routes(routes));
        // Each member's copy gets its own return path, so a bounce says who.
        submission.verp = true;
        submission.passed_on = passed_on;
        // Mail to many waits behind mail a person is waiting for.
        submission.priority = postroom::store::queue::Priority::Low;
        let id = submit::submit(config, directory, submission, &copy)?;
        tracing::debug!(list = %list.address, queue_id = %id, "copy queued");
        anyhow::Ok(())
    };
    if count == 1 {
        copies.into_iter().try_for_each(queue_copy)?;
    } else {
        // A copy costs two fsyncs and almost no CPU: committed from many
        // threads at once, the filesystem's journal takes the fsyncs
        // together instead of one after another (`list-expand(1)`, COSTS).
        use rayon::prelude::*;
        rayon::ThreadPoolBuilder::new()
            .num_threads(COMMIT_THREADS)
            .build()?
            .install(|| copies.into_par_iter().try_for_each(queue_copy))
            // A failure part way through sends the message again when it
            // is retried (exit 75), so some members may get it twice:
            // never none.
            .with_context(|| format!("queueing the {count} copies (some may be queued)"))?;
    }
    Ok(count)
}

/// Threads that commit a post's copies to the queue at once.
const COMMIT_THREADS: usize = 32;

/// List-Unsubscribe (RFC 2369) and, for a member of a list with an
/// `unsubscribe_url`, that member's one-click URL and
/// List-Unsubscribe-Post (RFC 8058), served by `list-web`. The mailto form
/// is always there.
pub fn unsubscribe_headers(list: &List, member: Option<&Address>) -> anyhow::Result<String> {
    let request = list.request_address();
    let url = match member {
        Some(member) => list.one_click_url(member)?,
        None => None,
    };
    Ok(match url {
        Some(url) => format!(
            "List-Unsubscribe: <{url}>,\r\n <mailto:{request}?subject=unsubscribe>\r\n\
             List-Unsubscribe-Post: List-Unsubscribe=One-Click\r\n"
        ),
        None => format!("List-Unsubscribe: <mailto:{request}?subject=unsubscribe>\r\n"),
    })
}

/// The post as members get it: the Return-Path delivery added, the held
/// marker and another list's List-* headers removed; List-Id (RFC 2919),
/// List-Post, List-Help, List-Subscribe (RFC 2369),
/// Precedence and X-Loop added; the subject tag in front; Reply-To as
/// configured.
fn list_headers(list: &List, post: &[u8]) -> Vec<u8> {
    let end = message::header_len(post);
    let mut headers = post[..end].to_vec();
    for name in [
        "Return-Path",
        HELD_SENDER,
        "List-Id",
        "List-Post",
        "List-Help",
        "List-Subscribe",
        "List-Unsubscribe",
        "List-Unsubscribe-Post",
        "List-Owner",
        "List-Archive",
        "Precedence",
        "X-Loop",
    ] {
        headers = message::remove_header(&headers, name);
    }
    if list.config.reply_to == ReplyTo::List {
        headers = message::remove_header(&headers, "Reply-To");
    }
    if let Some(tag) = &list.config.subject_tag {
        headers = tag_subject(&headers, tag);
    }
    let mut added = list_fields(list);
    if list.config.reply_to == ReplyTo::List {
        added.push_str(&format!("Reply-To: <{}>\r\n", list.address));
    }
    let mut out = Vec::with_capacity(post.len() + added.len());
    out.extend_from_slice(added.as_bytes());
    out.extend_from_slice(&headers);
    out.extend_from_slice(&post[end..]);
    out
}

/// The fields every message to the members carries (posts and digests):
/// List-Id (RFC 2919), List-Post, List-Help, List-Subscribe (RFC 2369),
/// Precedence and X-Loop. List-Unsubscribe is added per copy: see
/// [`unsubscribe_headers`].
pub fn list_fields(list: &List) -> String {
    let address = &list.address;
    let request = list.request_address();
    let description = list.config.description.replace(['\r', '\n', '"'], " ");
    format!(
        "List-Id: \"{description}\" <{}>\r\nList-Post: <mailto:{address}>\r\n\
         List-Help: <mailto:{request}?subject=help>\r\n\
         List-Subscribe: <mailto:{request}?subject=subscribe>\r\n\
         Precedence: list\r\nX-Loop: {address}\r\n",
        list.list_id()
    )
}

/// When the author's domain publishes DMARC `p=reject` or `p=quarantine`,
/// members' servers would refuse or junk the post: its From domain no
/// longer matches a signature or SPF once the list has changed and resent
/// it. So, as Mailman does, From becomes the list (`"Ann via team"
/// <team@…>`) and, unless the list sets Reply-To, Reply-To keeps the
/// author. `None`: leave the post as it is (no DMARC, `p=none`, or DNS
/// trouble, which is logged).
fn rewrite_from_for_dmarc(config: &Config, list: &List, post: &[u8]) -> Option<Vec<u8>> {
    let parsed = mail_parser::MessageParser::default().parse_headers(post)?;
    let author = parsed.from()?.first()?;
    let address = author.address()?.to_string();
    if address
        .chars()
        .any(|c| c.is_control() || c == '<' || c == '>')
    {
        return None;
    }
    let domain = address.rsplit_once('@')?.1.to_ascii_lowercase();
    if domain == list.address.domain() {
        return None;
    }
    let policy = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .ok()?
        .block_on(async {
            let resolver = postroom::net::dns::resolver(config).ok()?;
            match postroom::net::dns::dmarc_policy(&resolver, &domain).await {
                Ok(policy) => policy,
                Err(e) => {
                    tracing::warn!("{e}; From left as it is");
                    None
                }
            }
        })?;
    if policy != "reject" && policy != "quarantine" {
        return None;
    }
    // The name comes decoded (RFC 2047): written back encoded when it is
    // not ASCII, since the post may go out without SMTPUTF8.
    let name = author.name().unwrap_or(&address);
    let name = message::display_name(&format!("{name} via {}", list.address.local_part()));
    let end = message::header_len(post);
    let mut headers = message::remove_header(&post[..end], "From");
    let mut added = format!("From: {name} <{}>\r\n", list.address);
    if list.config.reply_to == ReplyTo::Sender && !message::has_header(&headers, "Reply-To") {
        added.push_str(&format!("Reply-To: <{address}>\r\n"));
    }
    let mut out = added.into_bytes();
    out.append(&mut headers);
    out.extend_from_slice(&post[end..]);
    Some(out)
}

/// `Subject: [tag] …`, unless the tag is there already (a reply). It is
/// looked for in the decoded subject, in any case: a reply's
/// `Re: [team] héllo` is one RFC 2047 encoded word, and people write
/// `[TEAM]` too. A subject with encoded words is written anew after the
/// tag, encoded when it is not ASCII; any other keeps its text as it is.
fn tag_subject(headers: &[u8], tag: &str) -> Vec<u8> {
    let decoded = mail_parser::MessageParser::default()
        .parse_headers(headers)
        .and_then(|m| m.subject().map(str::to_string))
        .unwrap_or_default();
    if decoded
        .to_ascii_lowercase()
        .contains(&tag.to_ascii_lowercase())
    {
        return headers.to_vec();
    }
    let lines: Vec<&[u8]> = headers.split_inclusive(|&b| b == b'\n').collect();
    let is_subject = |line: &[u8]| line.len() >= 8 && line[..8].eq_ignore_ascii_case(b"subject:");
    let Some(start) = lines.iter().position(|l| is_subject(l)) else {
        let end = headers.len().saturating_sub(2);
        return [
            &headers[..end],
            format!("Subject: {tag}\r\n").as_bytes(),
            &headers[end..],
        ]
        .concat();
    };
    // The field with its continuation lines.
    let end = start
        + 1
        + lines[start + 1..]
            .iter()
            .take_while(|l| l.first().is_some_and(|b| *b == b' ' || *b == b'\t'))
            .count();
    let value = lines[start..end].concat();
    let value = &value[8..];
    let field = if value.windows(2).any(|w| w == b"=?") {
        let text = message::header_safe(&format!("{tag} {decoded}"));
        if text.is_ascii() {
            format!("Subject: {text}\r\n").into_bytes()
        } else {
            use mail_builder::headers::Header;
            let mut field = b"Subject: ".to_vec();
            // Writing to a Vec cannot fail.
            let _ = mail_builder::headers::text::Text::new(text).write_header(&mut field, 9);
            field
        }
    } else {
        let text = value.trim_ascii_start();
        [format!("Subject: {tag} ").as_bytes(), text].concat()
    };
    [&lines[..start].concat(), &field[..], &lines[end..].concat()].concat()
}

/// Keeps a post in `held/` under an unguessable id and tells the owners.
fn hold_post(config: &Config, list: &List, from: &Address, post: &[u8]) -> anyhow::Result<String> {
    use rand::RngCore;
    let mut bytes = [0u8; 16];
    rand::thread_rng().fill_bytes(&mut bytes);
    let id: String = bytes.iter().map(|b| format!("{b:02x}")).collect();
    let mut held = format!("{HELD_SENDER}: {from}\r\n").into_bytes();
    held.extend_from_slice(post);
    postroom::store::fsutil::write_atomic(&list.held_dir().join(&id), &held)
        .context("keeping the held post")?;
    let end = message::header_len(post);
    let subject = message::header_fields(&post[..end])
        .into_iter()
        .find(|(n, _)| n.eq_ignore_ascii_case("Subject"))
        .map(|(_, v)| v)
        .unwrap_or_default();
    // The subject is the command: a plain reply ("Re: approve ID") sends
    // the post; the id is unguessable, so knowing it is the proof.
    tell_owners(
        config,
        list,
        &format!("approve {id}"),
        &format!(
            "A post to {} from {from} waits for approval.\r\n\r\nSubject: {subject}\r\n\r\n\
             To send it, reply to this message (to {}) keeping the subject.\r\n\
             To drop it, reply with the subject: reject {id}\r\n\r\n\
             From the shell:\r\n  list-expand approve {} {id}\r\n  list-expand reject {} {id}\r\n",
            list.address,
            list.request_address(),
            list.address,
            list.address
        ),
    )?;
    Ok(id)
}

/// Queues a notice from the request address to the owners.
pub fn tell_owners(config: &Config, list: &List, subject: &str, text: &str) -> anyhow::Result<()> {
    let notice = mail_builder::MessageBuilder::new()
        .from(list.request_address())
        .to(list
            .config
            .owners
            .iter()
            .map(|o| o.as_str())
            .collect::<Vec<_>>())
        .subject(message::header_safe(subject))
        .header(
            "Auto-Submitted",
            mail_builder::headers::raw::Raw::new("auto-generated"),
        )
        .text_body(text)
        .write_to_vec()?;
    let directory = Directory::load(config)?;
    let owners: Vec<Address> = list
        .config
        .owners
        .iter()
        .filter_map(|o| Address::parse(o).ok())
        .collect();
    // The notice goes to the owners it can reach: failing here would undo
    // nothing (the post is held, the bounce counted already).
    let submission = Submission::new(
        ReversePath::Null,
        Recipients::Addresses(&owners, Unresolvable::Skip),
    );
    match submit::submit(config, &directory, submission, &notice) {
        Ok(_) | Err(SubmitError::NoRecipients) => Ok(()),
        Err(e) => Err(e.into()),
    }
}

pub fn held_ids(list: &List) -> anyhow::Result<Vec<String>> {
    let mut ids: Vec<String> = std::fs::read_dir(list.held_dir())
        .with_context(|| format!("reading {}", list.held_dir().display()))?
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|n| is_held_id(n))
        .collect();
    ids.sort();
    Ok(ids)
}

fn is_held_id(id: &str) -> bool {
    id.len() == 32 && id.bytes().all(|b| b.is_ascii_hexdigit())
}

/// Removes a held post and returns its sender and text.
pub fn take_held(list: &List, id: &str) -> anyhow::Result<(ReversePath, Vec<u8>)> {
    anyhow::ensure!(
        is_held_id(id),
        "{id:?} is not a held post's id (see `list-expand held LIST`)"
    );
    let path = list.held_dir().join(id);
    let held = std::fs::read(&path).with_context(|| {
        format!(
            "no held post {id} in {} (see `list-expand held`)",
            list.address
        )
    })?;
    let end = message::header_len(&held);
    let sender = message::header_fields(&held[..end])
        .into_iter()
        .find(|(n, _)| n.eq_ignore_ascii_case(HELD_SENDER))
        .and_then(|(_, v)| ReversePath::parse(&v).ok())
        .unwrap_or(ReversePath::Null);
    std::fs::remove_file(&path).with_context(|| format!("removing {}", path.display()))?;
    Ok((sender, held))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn subject_tags_are_added_once() {
        assert_eq!(
            tag_subject(b"From: a\r\nSubject: hi\r\n\r\n", "[t]"),
            b"From: a\r\nSubject: [t] hi\r\n\r\n"
        );
        assert_eq!(
            tag_subject(b"Subject: Re: [t] hi\r\n\r\n", "[t]"),
            b"Subject: Re: [t] hi\r\n\r\n"
        );
        assert_eq!(
            tag_subject(b"From: a\r\n\r\n", "[t]"),
            b"From: a\r\nSubject: [t]\r\n\r\n"
        );
        assert_eq!(
            tag_subject(b"Subject: [TEAM] caps\r\n\r\n", "[team]"),
            b"Subject: [TEAM] caps\r\n\r\n"
        );
        // Folded, and 8-bit: kept as it is after the tag.
        assert_eq!(
            tag_subject(
                "Subject: long\r\n  line é\r\nTo: b\r\n\r\n".as_bytes(),
                "[t]"
            ),
            "Subject: [t] long\r\n  line é\r\nTo: b\r\n\r\n".as_bytes()
        );
    }

    #[test]
    fn subject_tags_are_found_in_encoded_words_and_written_encoded() {
        let reply = b"Subject: =?UTF-8?Q?Re=3a_=5bteam=5d_h=c3=a9llo?=\r\n\r\n";
        assert_eq!(tag_subject(reply, "[team]"), reply);
        let subject = |headers: &[u8]| {
            let tagged = tag_subject(headers, "[team]");
            let parsed = mail_parser::MessageParser::default()
                .parse_headers(&tagged)
                .unwrap();
            assert!(tagged.is_ascii(), "{}", String::from_utf8_lossy(&tagged));
            (
                parsed.subject().unwrap().to_string(),
                parsed.header_raw("To").map(str::trim).map(str::to_string),
            )
        };
        assert_eq!(
            subject(
                b"Subject: =?utf-8?q?h=C3=A9llo?=\r\n =?utf-8?q?_w=C3=B6rld?=\r\nTo: b\r\n\r\n"
            ),
            ("[team] héllo wörld".to_string(), Some("b".to_string()))
        );
        assert_eq!(
            subject(b"Subject: =?us-ascii?q?plain?=\r\n\r\n").0,
            "[team] plain"
        );
        // A line end encoded in the subject stays in it.
        let (text, to) = subject(b"Subject: =?utf-8?q?=C3=A9=0D=0ATo:_x?=\r\n\r\n");
        assert_eq!((text.as_str(), to), ("[team] é  To: x", None));
    }
}
