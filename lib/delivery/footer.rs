//! Text added to the end of a message without breaking MIME: the list
//! footer (`list-expand`) and the disclaimer (`delivery::disclaimer`, IEMS's
//! "auto text insertion").
//!
//! A plain-text message in 7bit or 8bit (and a charset the text fits) gets
//! the plain text appended (after a `-- ` line for a list footer); an HTML
//! one the HTML text, before its `</body>`, when there is one. Anything
//! else (multipart/alternative, a signed or encrypted message, base64 or
//! quoted-printable text) is wrapped, unchanged byte for byte, as the
//! first part of a new `multipart/mixed` whose second part is the text
//! (plain, or plain and HTML as `multipart/alternative`): a signature over
//! the original part still verifies, and no encoding is ever undone.

use crate::proto::message;

/// The text to add.
#[derive(Debug, Clone, Copy)]
pub struct Footer<'a> {
    pub plain: &'a str,
    /// The HTML form, for HTML messages; without it they are wrapped.
    pub html: Option<&'a str>,
    /// A line put before the plain text when it is appended (`-- `, the
    /// signature separator, for list footers).
    pub separator: Option<&'a str>,
}

/// The list post with the list's `footer` added.
pub fn add_footer(post: &[u8], footer: &str) -> Vec<u8> {
    add(
        post,
        &Footer {
            plain: footer,
            html: None,
            separator: Some("-- "),
        },
    )
}

/// True for a signed or encrypted message (S/MIME, OpenPGP/MIME), which a
/// disclaimer leaves alone.
pub fn is_signed(post: &[u8]) -> bool {
    let content_type = field(post, "Content-Type").unwrap_or_default();
    let media = content_type.split(';').next().unwrap_or("").trim();
    matches!(
        media,
        "multipart/signed"
            | "multipart/encrypted"
            | "application/pkcs7-mime"
            | "application/x-pkcs7-mime"
    )
}

/// A header field's value, lower-cased.
fn field(post: &[u8], name: &str) -> Option<String> {
    let headers = &post[..message::header_len(post)];
    message::header_fields(headers)
        .into_iter()
        .find(|(n, _)| n.eq_ignore_ascii_case(name))
        .map(|(_, v)| v.to_ascii_lowercase())
}

/// `text` as CRLF lines without trailing line ends.
fn lines(text: &str) -> Vec<u8> {
    let mut out = message::to_crlf(text.trim_end().as_bytes());
    while out.ends_with(b"\r\n") {
        out.truncate(out.len() - 2);
    }
    out
}

/// The message with `footer` added (see the module note).
pub fn add(post: &[u8], footer: &Footer<'_>) -> Vec<u8> {
    let end = message::header_len(post);
    let (headers, body) = post.split_at(end);
    let content_type = field(post, "Content-Type").unwrap_or_else(|| "text/plain".into());
    let encoding = field(post, "Content-Transfer-Encoding").unwrap_or_else(|| "7bit".into());
    let fits = |text: &str| {
        text.is_ascii()
            || content_type.contains("charset=utf-8")
            || content_type.contains("charset=\"utf-8\"")
    };
    let plain_encoding = matches!(encoding.trim(), "7bit" | "8bit");
    let media = content_type.trim_start();
    if media.starts_with("text/plain") && plain_encoding && fits(footer.plain) {
        let mut out = post.to_vec();
        if !out.ends_with(b"\r\n") {
            out.extend_from_slice(b"\r\n");
        }
        if let Some(separator) = footer.separator {
            out.extend_from_slice(separator.as_bytes());
            out.extend_from_slice(b"\r\n");
        }
        out.extend_from_slice(&lines(footer.plain));
        out.extend_from_slice(b"\r\n");
        return out;
    }
    if let Some(html) = footer.html
        && media.starts_with("text/html")
        && plain_encoding
        && fits(html)
    {
        let html = lines(html);
        let lower = body.to_ascii_lowercase();
        let at = match lower.windows(7).rposition(|w| w == b"</body>") {
            Some(at) => end + at,
            None => post.len(),
        };
        let mut out = post[..at].to_vec();
        if !out.ends_with(b"\r\n") {
            out.extend_from_slice(b"\r\n");
        }
        out.extend_from_slice(&html);
        out.extend_from_slice(b"\r\n");
        out.extend_from_slice(&post[at..]);
        return out;
    }
    wrap(headers, body, footer)
}

/// `multipart/mixed` of the original body (with its own Content-* fields)
/// and the footer.
fn wrap(headers: &[u8], body: &[u8], footer: &Footer<'_>) -> Vec<u8> {
    let mut outer = Vec::with_capacity(headers.len());
    let mut inner = Vec::new();
    for field in raw_fields(headers) {
        let lower = field.to_ascii_lowercase();
        if lower.starts_with(b"content-") {
            inner.extend_from_slice(field);
        } else if !lower.starts_with(b"mime-version:") {
            outer.extend_from_slice(field);
        }
    }
    if inner.is_empty() {
        inner.extend_from_slice(b"Content-Type: text/plain\r\n");
    }
    let boundary = format!("postroom-footer-{}", crate::store::fsutil::unique_suffix())
        .replace(|c: char| !c.is_ascii_alphanumeric() && c != '-', "-");
    let mut out = outer;
    out.extend_from_slice(
        format!(
            "MIME-Version: 1.0\r\nContent-Type: multipart/mixed; boundary=\"{boundary}\"\r\n\r\n"
        )
        .as_bytes(),
    );
    out.extend_from_slice(format!("--{boundary}\r\n").as_bytes());
    out.extend_from_slice(&inner);
    out.extend_from_slice(b"\r\n");
    out.extend_from_slice(body);
    if !body.ends_with(b"\r\n") {
        out.extend_from_slice(b"\r\n");
    }
    out.extend_from_slice(format!("--{boundary}\r\n").as_bytes());
    let text_part = |media: &str, text: &str| {
        let mut part = format!(
            "Content-Type: text/{media}; charset=utf-8\r\n\
             Content-Transfer-Encoding: 8bit\r\nContent-Disposition: inline\r\n\r\n"
        )
        .into_bytes();
        part.extend_from_slice(&lines(text));
        part.extend_from_slice(b"\r\n");
        part
    };
    match footer.html {
        None => out.extend_from_slice(&text_part("plain", footer.plain)),
        Some(html) => {
            let inner = format!("{boundary}-alt");
            out.extend_from_slice(
                format!(
                    "Content-Type: multipart/alternative; boundary=\"{inner}\"\r\n\r\n--{inner}\r\n"
                )
                .as_bytes(),
            );
            out.extend_from_slice(&text_part("plain", footer.plain));
            out.extend_from_slice(format!("--{inner}\r\n").as_bytes());
            out.extend_from_slice(&text_part("html", html));
            out.extend_from_slice(format!("--{inner}--\r\n").as_bytes());
        }
    }
    out.extend_from_slice(format!("--{boundary}--\r\n").as_bytes());
    out
}

/// Header fields as written, each with its continuation lines and CRLF;
/// the blank line that ends the header is left out.
fn raw_fields(headers: &[u8]) -> Vec<&[u8]> {
    let mut fields: Vec<&[u8]> = Vec::new();
    let mut start = None;
    let mut at = 0;
    for line in headers.split_inclusive(|&b| b == b'\n') {
        let continuation = line.starts_with(b" ") || line.starts_with(b"\t");
        let blank = line == b"\r\n" || line == b"\n";
        if !continuation {
            if let Some(s) = start.take() {
                fields.push(&headers[s..at]);
            }
            if !blank {
                start = Some(at);
            }
        }
        at += line.len();
    }
    if let Some(s) = start {
        fields.push(&headers[s..at]);
    }
    fields
}

#[cfg(test)]
mod tests {
    use super::*;
    use mail_parser::MimeHeaders;

    fn parse(message: &[u8]) -> mail_parser::Message<'_> {
        mail_parser::MessageParser::default()
            .parse(message)
            .unwrap()
    }

    #[test]
    fn plain_text_gets_the_footer_appended() {
        let out = add_footer(
            b"Subject: x\r\n\r\nhello\r\n",
            "Unsubscribe: mail team-request",
        );
        assert_eq!(
            out,
            b"Subject: x\r\n\r\nhello\r\n-- \r\nUnsubscribe: mail team-request\r\n"
        );
    }

    #[test]
    fn html_alternative_and_signed_posts_are_wrapped_unchanged() {
        let signed_part = "Content-Type: text/plain\r\n\r\nsigned words\r\n";
        let posts = [
            "Subject: h\r\nMIME-Version: 1.0\r\nContent-Type: text/html; charset=utf-8\r\n\r\n<p>hi</p>\r\n".to_string(),
            "Subject: a\r\nMIME-Version: 1.0\r\nContent-Type: multipart/alternative; boundary=\"b1\"\r\n\r\n--b1\r\nContent-Type: text/plain\r\n\r\nhi\r\n--b1\r\nContent-Type: text/html\r\n\r\n<p>hi</p>\r\n--b1--\r\n".to_string(),
            format!("Subject: s\r\nMIME-Version: 1.0\r\nContent-Type: multipart/signed; protocol=\"application/pgp-signature\"; micalg=pgp-sha256; boundary=\"s1\"\r\n\r\n--s1\r\n{signed_part}\r\n--s1\r\nContent-Type: application/pgp-signature\r\n\r\nSIG\r\n--s1--\r\n"),
            "Subject: q\r\nContent-Type: text/plain; charset=iso-8859-1\r\nContent-Transfer-Encoding: quoted-printable\r\n\r\nGr=FC=DFe\r\n".to_string(),
        ];
        for post in &posts {
            let out = add_footer(post.as_bytes(), "Über diese Liste");
            let text = String::from_utf8_lossy(&out).into_owned();
            let end = message::header_len(post.as_bytes());
            let original_body = &post[end..];
            assert!(text.contains(original_body), "body changed:\n{text}");
            let parsed = parse(&out);
            assert!(
                parsed
                    .root_part()
                    .content_type()
                    .is_some_and(|c| c.subtype() == Some("mixed")),
                "{text}"
            );
            assert!(text.contains("Über diese Liste"));
        }
        // The signed part is still byte for byte what was signed.
        let out = add_footer(posts[2].as_bytes(), "f");
        assert!(String::from_utf8_lossy(&out).contains(&format!("--s1\r\n{signed_part}\r\n--s1")));
    }

    #[test]
    fn a_non_ascii_footer_does_not_go_into_a_latin1_body() {
        let post = b"Content-Type: text/plain; charset=iso-8859-1\r\n\r\nhi\r\n";
        let out = add_footer(post, "f\u{fc}r alle");
        assert!(String::from_utf8_lossy(&out).contains("multipart/mixed"));
        let out = add_footer(post, "for all");
        assert!(!String::from_utf8_lossy(&out).contains("multipart/mixed"));
    }

    const DISCLAIMER: Footer<'static> = Footer {
        plain: "Confidential.",
        html: Some("<p>Confidential.</p>"),
        separator: None,
    };

    #[test]
    fn html_gets_the_html_text_before_its_body_ends() {
        let post = b"Content-Type: text/html; charset=utf-8\r\n\r\n<html><body><p>hi</p></BODY></html>\r\n";
        let out = String::from_utf8(add(post, &DISCLAIMER)).unwrap();
        assert_eq!(
            out,
            "Content-Type: text/html; charset=utf-8\r\n\r\n<html><body><p>hi</p>\r\n<p>Confidential.</p>\r\n</BODY></html>\r\n"
        );
        let out = add(b"Subject: x\r\n\r\nhi\r\n", &DISCLAIMER);
        assert_eq!(out, b"Subject: x\r\n\r\nhi\r\nConfidential.\r\n");
    }

    #[test]
    fn a_wrapped_message_gets_both_forms_as_alternatives() {
        let post = "Subject: a\r\nMIME-Version: 1.0\r\nContent-Type: multipart/alternative; boundary=\"b1\"\r\n\r\n--b1\r\nContent-Type: text/plain\r\n\r\nhi\r\n--b1\r\nContent-Type: text/html\r\n\r\n<p>hi</p>\r\n--b1--\r\n";
        let out = add(post.as_bytes(), &DISCLAIMER);
        let parsed = parse(&out);
        let texts: Vec<String> = parsed
            .parts
            .iter()
            .filter_map(|p| match &p.body {
                mail_parser::PartType::Text(t) | mail_parser::PartType::Html(t) => {
                    Some(t.trim().to_string())
                }
                _ => None,
            })
            .collect();
        assert_eq!(
            texts,
            ["hi", "<p>hi</p>", "Confidential.", "<p>Confidential.</p>"],
            "{}",
            String::from_utf8_lossy(&out)
        );
    }

    #[test]
    fn signed_and_encrypted_mail_is_told_apart() {
        for media in [
            "multipart/signed; protocol=\"application/pgp-signature\"",
            "multipart/encrypted; protocol=\"application/pgp-encrypted\"",
            "application/pkcs7-mime; smime-type=enveloped-data",
            "Application/X-PKCS7-MIME",
        ] {
            let post = format!("Content-Type: {media}\r\n\r\nx\r\n");
            assert!(is_signed(post.as_bytes()), "{media}");
        }
        assert!(!is_signed(b"Content-Type: text/plain\r\n\r\nx\r\n"));
        assert!(!is_signed(b"Subject: x\r\n\r\nx\r\n"));
    }
}
