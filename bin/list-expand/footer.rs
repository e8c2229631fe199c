//! The list footer ("auto text insertion"), added without breaking MIME.
//!
//! A plain-text post in 7bit or 8bit (and a charset the footer fits) gets
//! the footer appended after a `-- ` line. Anything else (HTML,
//! multipart/alternative, a signed or encrypted post, base64 or
//! quoted-printable text) is wrapped, unchanged byte for byte, as the
//! first part of a new `multipart/mixed` whose second part is the footer:
//! a signature over the original part still verifies, and no encoding is
//! ever undone.

use postroom::proto::message;

/// The post with `footer` added.
pub fn add_footer(post: &[u8], footer: &str) -> Vec<u8> {
    let end = message::header_len(post);
    let (headers, body) = post.split_at(end);
    let fields = message::header_fields(headers);
    let field = |name: &str| {
        fields
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.to_ascii_lowercase())
    };
    let content_type = field("Content-Type").unwrap_or_else(|| "text/plain".into());
    let encoding = field("Content-Transfer-Encoding").unwrap_or_else(|| "7bit".into());
    let charset_fits = footer.is_ascii()
        || content_type.contains("charset=utf-8")
        || content_type.contains("charset=\"utf-8\"");
    let appendable = content_type.trim_start().starts_with("text/plain")
        && matches!(encoding.trim(), "7bit" | "8bit")
        && charset_fits;
    let mut footer = message::to_crlf(footer.trim_end().as_bytes());
    while footer.ends_with(b"\r\n") {
        footer.truncate(footer.len() - 2);
    }
    if appendable {
        let mut out = post.to_vec();
        if !out.ends_with(b"\r\n") {
            out.extend_from_slice(b"\r\n");
        }
        out.extend_from_slice(b"-- \r\n");
        out.extend_from_slice(&footer);
        out.extend_from_slice(b"\r\n");
        return out;
    }
    wrap(headers, body, &footer)
}

/// `multipart/mixed` of the original body (with its own Content-* fields)
/// and the footer.
fn wrap(headers: &[u8], body: &[u8], footer: &[u8]) -> Vec<u8> {
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
    let boundary = format!(
        "postroom-footer-{}",
        postroom::store::fsutil::unique_suffix()
    )
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
    out.extend_from_slice(
        format!(
            "--{boundary}\r\nContent-Type: text/plain; charset=utf-8\r\n\
             Content-Transfer-Encoding: 8bit\r\nContent-Disposition: inline\r\n\r\n"
        )
        .as_bytes(),
    );
    out.extend_from_slice(footer);
    out.extend_from_slice(format!("\r\n--{boundary}--\r\n").as_bytes());
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
}
