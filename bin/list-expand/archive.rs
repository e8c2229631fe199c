//! The static HTML archive (`list-expand archive LIST --html DIR`): an
//! index by date, an index by thread, and a page per post, written from
//! the list's archive maildir, for any web server to serve.
//!
//! Safe by construction: every text from a message is HTML-escaped, HTML
//! mail is shown as its text rendering (never as HTML), attachments are
//! listed by name, type and size but not written out, no page has a
//! script, and a Content-Security-Policy forbids loading anything at all.
//! Headers are shown RFC 2047-decoded (and file names RFC 2231-decoded),
//! as mail-parser returns them. A post's page name comes from a hash of
//! its maildir name, so links stay the same when the archive grows.

use std::collections::HashMap;
use std::fmt::Write as _;
use std::path::{Path, PathBuf};

use anyhow::Context;
use mail_parser::{MessageParser, MimeHeaders};
use postroom::delivery::lists::List;
use postroom::proto::html::escape;
use postroom::store::fsutil;
use sha2::{Digest, Sha256};

/// One post, as the pages show it.
struct Post {
    page: String,
    subject: String,
    from: String,
    date: i64,
    date_text: String,
    message_id: Option<String>,
    parent_ids: Vec<String>,
    body: String,
    attachments: Vec<(String, String, usize)>,
}

const HEAD: &str = "<!DOCTYPE html>\n<html><head><meta charset=\"utf-8\">\n\
<meta http-equiv=\"Content-Security-Policy\" content=\"default-src 'none'; style-src 'unsafe-inline'\">\n\
<meta name=\"referrer\" content=\"no-referrer\">\n\
<style>body{font-family:sans-serif;max-width:60em;margin:auto;padding:1em}\
pre{white-space:pre-wrap}td{padding:0 .5em}</style>\n";

/// Writes the archive pages into `out`; returns how many posts.
pub fn write_html(list: &List, out: &Path) -> anyhow::Result<usize> {
    std::fs::create_dir_all(out).with_context(|| format!("creating {}", out.display()))?;
    let mut posts = read_posts(&list.archive_dir())?;
    posts.sort_by(|a, b| b.date.cmp(&a.date).then(a.page.cmp(&b.page)));
    let title = escape(&list.address.to_string());

    let mut index = format!(
        "{HEAD}<title>{title} archive</title></head><body>\n<h1>{title}</h1>\n\
         <p>{} posts, newest first. <a href=\"threads.html\">By thread</a></p>\n<table>\n",
        posts.len()
    );
    for post in &posts {
        let _ = writeln!(
            index,
            "<tr><td>{}</td><td><a href=\"{}\">{}</a></td><td>{}</td></tr>",
            escape(&post.date_text),
            post.page,
            escape(&post.subject),
            escape(&post.from)
        );
    }
    index.push_str("</table>\n</body></html>\n");
    write(out, "index.html", &index)?;

    let mut threads = format!(
        "{HEAD}<title>{title} archive by thread</title></head><body>\n<h1>{title}</h1>\n\
         <p><a href=\"index.html\">By date</a></p>\n"
    );
    threads.push_str(&thread_list(&posts));
    threads.push_str("</body></html>\n");
    write(out, "threads.html", &threads)?;

    for post in &posts {
        let mut page = format!(
            "{HEAD}<title>{}</title></head><body>\n<p><a href=\"index.html\">{title}</a></p>\n\
             <h1>{}</h1>\n<table>\n<tr><td>From</td><td>{}</td></tr>\n\
             <tr><td>Date</td><td>{}</td></tr>\n</table>\n<pre>{}</pre>\n",
            escape(&post.subject),
            escape(&post.subject),
            escape(&post.from),
            escape(&post.date_text),
            escape(&post.body)
        );
        if !post.attachments.is_empty() {
            page.push_str("<h2>Attachments</h2>\n<ul>\n");
            for (name, kind, size) in &post.attachments {
                let _ = writeln!(
                    page,
                    "<li>{} ({}, {} bytes; not kept in the archive)</li>",
                    escape(name),
                    escape(kind),
                    size
                );
            }
            page.push_str("</ul>\n");
        }
        page.push_str("</body></html>\n");
        write(out, &post.page, &page)?;
    }
    Ok(posts.len())
}

fn read_posts(archive: &Path) -> anyhow::Result<Vec<Post>> {
    let mut posts = Vec::new();
    for sub in ["new", "cur"] {
        let dir = archive.join(sub);
        let Ok(entries) = std::fs::read_dir(&dir) else {
            continue;
        };
        for entry in entries.flatten() {
            let path: PathBuf = entry.path();
            let raw =
                std::fs::read(&path).with_context(|| format!("reading {}", path.display()))?;
            let name = entry.file_name().to_string_lossy().into_owned();
            let base = name.split(':').next().unwrap_or(&name).to_string();
            posts.push(post_of(&base, &raw));
        }
    }
    Ok(posts)
}

fn post_of(base: &str, raw: &[u8]) -> Post {
    let hash = Sha256::digest(base.as_bytes());
    let page: String = hash[..8]
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect::<String>()
        + ".html";
    let Some(message) = MessageParser::default().parse(raw) else {
        return Post {
            page,
            subject: "(unreadable message)".into(),
            from: String::new(),
            date: 0,
            date_text: String::new(),
            message_id: None,
            parent_ids: Vec::new(),
            body: String::from_utf8_lossy(raw).into_owned(),
            attachments: Vec::new(),
        };
    };
    let from = message
        .from()
        .and_then(|f| f.first())
        .map(|a| match (a.name(), a.address()) {
            (Some(name), Some(address)) => format!("{name} <{address}>"),
            (None, Some(address)) => address.to_string(),
            (Some(name), None) => name.to_string(),
            (None, None) => String::new(),
        })
        .unwrap_or_default();
    let date = message.date().map(|d| d.to_timestamp()).unwrap_or(0);
    let date_text = message.date().map(|d| d.to_rfc822()).unwrap_or_default();
    let mut parent_ids: Vec<String> = message
        .references()
        .as_text_list()
        .map(|l| l.iter().map(|s| s.to_string()).collect())
        .unwrap_or_default();
    if let Some(parent) = message.in_reply_to().as_text() {
        parent_ids.push(parent.to_string());
    }
    let body = (0..message.text_body.len())
        .filter_map(|i| message.body_text(i))
        .collect::<Vec<_>>()
        .join("\n\n");
    let attachments = message
        .attachments()
        .map(|part| {
            let name = part.attachment_name().unwrap_or("(no name)").to_string();
            let kind = part
                .content_type()
                .map(|c| match c.subtype() {
                    Some(sub) => format!("{}/{}", c.ctype(), sub),
                    None => c.ctype().to_string(),
                })
                .unwrap_or_else(|| "application/octet-stream".into());
            (name, kind, part.contents().len())
        })
        .collect();
    Post {
        page,
        subject: message.subject().unwrap_or("(no subject)").to_string(),
        from,
        date,
        date_text,
        message_id: message.message_id().map(str::to_string),
        parent_ids,
        body,
        attachments,
    }
}

/// Threads as nested lists: a post hangs under the nearest earlier post
/// it refers to; others start a thread. Oldest thread first.
fn thread_list(posts: &[Post]) -> String {
    let by_id: HashMap<&str, usize> = posts
        .iter()
        .enumerate()
        .filter_map(|(i, p)| p.message_id.as_deref().map(|id| (id, i)))
        .collect();
    let mut children: Vec<Vec<usize>> = vec![Vec::new(); posts.len()];
    let mut roots = Vec::new();
    for (i, post) in posts.iter().enumerate() {
        let parent = post
            .parent_ids
            .iter()
            .rev()
            .filter_map(|id| by_id.get(id.as_str()).copied())
            .find(|&p| p != i);
        match parent {
            Some(p) => children[p].push(i),
            None => roots.push(i),
        }
    }
    let by_date = |a: &usize, b: &usize| posts[*a].date.cmp(&posts[*b].date);
    roots.sort_by(by_date);
    for list in &mut children {
        list.sort_by(by_date);
    }
    let mut html = String::from("<ul>\n");
    // Iterative, with a depth cap: a hostile References chain cannot make
    // the writer recurse or the page nest without end.
    let mut stack: Vec<(usize, usize)> = roots.iter().rev().map(|&r| (r, 0)).collect();
    let mut seen = vec![false; posts.len()];
    let mut depth_open = 0usize;
    while let Some((i, depth)) = stack.pop() {
        if std::mem::replace(&mut seen[i], true) {
            continue;
        }
        let depth = depth.min(20);
        while depth_open < depth {
            html.push_str("<ul>\n");
            depth_open += 1;
        }
        while depth_open > depth {
            html.push_str("</ul>\n");
            depth_open -= 1;
        }
        let post = &posts[i];
        let _ = writeln!(
            html,
            "<li><a href=\"{}\">{}</a> {} {}</li>",
            post.page,
            escape(&post.subject),
            escape(&post.from),
            escape(&post.date_text)
        );
        for &child in children[i].iter().rev() {
            stack.push((child, depth + 1));
        }
    }
    while depth_open > 0 {
        html.push_str("</ul>\n");
        depth_open -= 1;
    }
    html.push_str("</ul>\n");
    html
}

fn write(dir: &Path, name: &str, text: &str) -> anyhow::Result<()> {
    let path = dir.join(name);
    fsutil::write_atomic(&path, text.as_bytes())
        .with_context(|| format!("writing {}", path.display()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn headers_are_decoded_and_attachments_listed() {
        let post = post_of(
            "1.a.host",
            b"From: =?utf-8?q?J=C3=BCrgen?= <j@x.test>\r\nSubject: =?utf-8?b?R3LDvMOfZQ==?=\r\n\
              Message-ID: <m1@x.test>\r\nMIME-Version: 1.0\r\n\
              Content-Type: multipart/mixed; boundary=b\r\n\r\n--b\r\nContent-Type: text/plain\r\n\r\nhello\r\n\
              --b\r\nContent-Type: application/pdf\r\nContent-Disposition: attachment; filename*=utf-8''Bericht%20%C3%BC.pdf\r\n\
              Content-Transfer-Encoding: base64\r\n\r\nAAAA\r\n--b--\r\n",
        );
        assert_eq!(post.subject, "Grüße");
        assert_eq!(post.from, "Jürgen <j@x.test>");
        assert_eq!(post.attachments[0].0, "Bericht ü.pdf");
        assert!(post.body.contains("hello"));
    }
}
