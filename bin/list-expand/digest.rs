//! Digests (`list-expand digest LIST`, from cron): every post archived
//! since the last digest, sent once to the members who chose `digest`, as
//! a MIME digest (RFC 2046 §5.1.5): a table of contents, then a
//! `multipart/digest` of the posts as `message/rfc822` parts.
//!
//! It carries the fields the list's posts do (List-Id, List-Post,
//! List-Help, List-Subscribe, List-Unsubscribe, Precedence, X-Loop), and
//! with an `unsubscribe_url` is queued as one copy a reader, each with its
//! reader's one-click URL, as posts are.
//!
//! `digest.last` in the list's folder holds the time of the last digest;
//! it moves forward only after the digest is queued, so a crash repeats a
//! digest rather than losing one.

use std::path::PathBuf;
use std::time::UNIX_EPOCH;

use mail_builder::headers::content_type::ContentType;
use mail_builder::mime::{BodyPart, MimePart};
use postroom::config::Config;
use postroom::delivery::lists::List;
use postroom::directory::aliases::Directory;
use postroom::proto::address::Address;
use postroom::proto::{message, mime};
use postroom::store::fsutil;

use crate::post;

/// Sends the digest if there is anything new; returns how many posts it had.
pub fn digest(config: &Config, list: &List) -> anyhow::Result<usize> {
    let state = list.dir.join("digest.last");
    // Nanoseconds, so a post archived in the same second as a digest
    // still falls on one side of it.
    let since: u128 = std::fs::read_to_string(&state)
        .ok()
        .and_then(|t| t.trim().parse().ok())
        .unwrap_or(0);
    let now = std::time::SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_nanos())
        .unwrap_or(0);
    let mut posts: Vec<(u128, PathBuf)> = Vec::new();
    for sub in ["new", "cur"] {
        let Ok(entries) = std::fs::read_dir(list.archive_dir().join(sub)) else {
            continue;
        };
        for entry in entries.flatten() {
            let modified = entry
                .metadata()
                .and_then(|m| m.modified())
                .ok()
                .and_then(|t| t.duration_since(UNIX_EPOCH).ok())
                .map(|d| d.as_nanos())
                .unwrap_or(0);
            if modified >= since && modified < now {
                posts.push((modified, entry.path()));
            }
        }
    }
    posts.sort();
    let directory = Directory::load(config)?;
    let wanted: Vec<Address> = list
        .members()?
        .iter()
        .filter(|m| m.digest && !m.nomail)
        .filter_map(|m| Address::parse(&m.address).ok())
        .collect();
    // No digest rather than one that skips readers who may well exist (a
    // missing users file): the next run sends it.
    let copies = post::copies_for(list, &directory, wanted)
        .map_err(|e| anyhow::anyhow!("digest reader {e}; no digest sent now"))?;
    if posts.is_empty() || copies.is_empty() {
        return Ok(0);
    }

    let mut contents = format!("{} digest: {} posts\r\n\r\n", list.address, posts.len());
    let mut parts = Vec::with_capacity(posts.len());
    for (n, (_, path)) in posts.iter().enumerate() {
        let text = message::to_crlf(&std::fs::read(path)?);
        let end = message::header_len(&text);
        // Shown decoded (RFC 2047), as a reader would see them.
        let fields = mime::decoded_headers(&text[..end]);
        let field = |name: &str| {
            fields
                .iter()
                .find(|(k, _)| k.eq_ignore_ascii_case(name))
                .map(|(_, v)| message::header_safe(v))
                .unwrap_or_default()
        };
        let from = field("From");
        // A From without a name decodes as " <address>".
        let from = from.trim();
        let from = from
            .strip_prefix('<')
            .and_then(|f| f.strip_suffix('>'))
            .unwrap_or(from);
        contents.push_str(&format!("{:>3}. {} ({from})\r\n", n + 1, field("Subject")));
        parts.push(
            MimePart::new(
                ContentType::new("message/rfc822"),
                BodyPart::Binary(text.into()),
            )
            .transfer_encoding("8bit"),
        );
    }
    let body = MimePart::new(
        ContentType::new("multipart/mixed"),
        BodyPart::Multipart(vec![
            MimePart::new(
                ContentType::new("text/plain"),
                BodyPart::Text(contents.into()),
            ),
            MimePart::new(
                ContentType::new("multipart/digest"),
                BodyPart::Multipart(parts),
            ),
        ]),
    );
    let digest = mail_builder::MessageBuilder::new()
        .from(list.address.to_string())
        .to(list.address.to_string())
        .subject(format!(
            "{} digest, {}",
            list.address,
            message::rfc5322_date(fsutil::now_secs())
        ))
        .body(body)
        .write_to_vec()?;
    // The list's fields, as on its posts, and each copy's List-Unsubscribe
    // (its reader's one-click URL when the list has one).
    let digest = [post::list_fields(list).as_bytes(), &digest].concat();
    post::queue_copies(config, list, &directory, copies, &digest, false)?;
    fsutil::write_atomic(&state, format!("{now}\n").as_bytes())?;
    Ok(posts.len())
}
