//! A message's 7-bit form, for a server that does not offer 8BITMIME
//! (RFC 6152 §3: the client converts the message to 7-bit MIME or returns
//! it undeliverable; this is the conversion, as Postfix makes it).
//!
//! Each MIME leaf whose body holds 8-bit octets is encoded as
//! quoted-printable (RFC 2045 §6.7) and its Content-Transfer-Encoding field
//! replaced; multiparts and message/rfc822 parts are gone into, never
//! encoded whole (RFC 2046 §5.1.1, §5.2.1 allow them only identity
//! encodings). Everything else is left byte for byte as it was, so a
//! message that needs no conversion is never touched by this module.
//!
//! Some 8-bit octets have no 7-bit form: those in header fields (that is
//! what SMTPUTF8 is for) and those in a part whose own encoding cannot be
//! redone (an unknown one, or a composite part too deep to go into). Such a
//! message is refused ([`NoSevenBitForm`]) and its sender told.
//!
//! The structure comes from [`mime::parse`], whose offsets are all into the
//! one message, parts of a message/rfc822 part included.

use crate::proto::message;
use crate::proto::mime::{self, Part};

/// The longest quoted-printable line, without its CRLF (RFC 2045 §6.7 (5)).
const MAX_QP_LINE: usize = 76;

/// Why a message has no 7-bit form.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum NoSevenBitForm {
    #[error("its header fields hold 8-bit octets, which need SMTPUTF8")]
    EightBitHeader,
    #[error("a {0} part holds 8-bit octets and cannot be re-encoded")]
    Composite(String),
    #[error("a part in the {0:?} transfer encoding holds 8-bit octets")]
    UnknownEncoding(String),
}

/// The 7-bit form of `msg` (a CRLF message), or why there is none. A
/// message that is 7-bit already comes back as it is.
pub fn to_seven_bit(msg: &[u8]) -> Result<Vec<u8>, NoSevenBitForm> {
    if msg.is_ascii() {
        return Ok(msg.to_vec());
    }
    let root = mime::parse(msg);
    let mut edits = Vec::new();
    convert(msg, &root, true, &mut edits)?;
    let mut out = Vec::with_capacity(msg.len() + msg.len() / 4);
    let mut at = 0;
    // Edits come in the order of the parts, so their ranges ascend.
    for (range, bytes) in edits {
        out.extend_from_slice(&msg[at..range.start]);
        out.extend_from_slice(&bytes);
        at = range.end;
    }
    out.extend_from_slice(&msg[at..]);
    Ok(out)
}

/// A range of the message and what replaces it.
type Edit = (std::ops::Range<usize>, Vec<u8>);

/// The edits that make `part` 7-bit. `is_message`: the part is a whole
/// message (the top, or the one a message/rfc822 part holds), whose header
/// needs MIME-Version if it is to carry a Content-Transfer-Encoding.
fn convert(
    msg: &[u8],
    part: &Part,
    is_message: bool,
    edits: &mut Vec<Edit>,
) -> Result<(), NoSevenBitForm> {
    let header = &msg[part.start..part.body];
    if !header.is_ascii() {
        return Err(NoSevenBitForm::EightBitHeader);
    }
    let body = &msg[part.body.min(part.end)..part.end];
    if body.is_ascii() {
        return Ok(());
    }
    let gone_into =
        (part.ctype == "multipart" && !part.children.is_empty()) || part.message.is_some();
    if gone_into {
        // Its content is about to be 7-bit: an 8bit or binary label would
        // no longer be true, and a 7-bit server should not see it.
        let labelled_8bit = part
            .encoding
            .as_deref()
            .is_some_and(|e| e.eq_ignore_ascii_case("8bit") || e.eq_ignore_ascii_case("binary"));
        if labelled_8bit {
            let without = message::remove_header(header, "Content-Transfer-Encoding");
            let field = ["Content-Transfer-Encoding: 7bit".to_string()];
            edits.push((
                part.start..part.body,
                message::append_fields(&without, &field),
            ));
        }
    }
    if part.ctype == "multipart" && !part.children.is_empty() {
        let mut at = part.body;
        for child in &part.children {
            edits.extend(ignored_text(msg, at..child.start));
            convert(msg, child, false, edits)?;
            at = child.end;
        }
        edits.extend(ignored_text(msg, at..part.end));
        return Ok(());
    }
    if let Some(inner) = &part.message {
        return convert(msg, inner, true, edits);
    }
    // A leaf, or a composite part the parser did not go into (too deep,
    // no boundary): only a leaf can take an encoding.
    let composite = part.ctype == "multipart"
        || (part.ctype == "message"
            && matches!(
                part.subtype.as_str(),
                "rfc822" | "partial" | "external-body"
            ));
    let encoding = part
        .encoding
        .as_deref()
        .unwrap_or("7bit")
        .to_ascii_lowercase();
    match encoding.as_str() {
        "7bit" | "8bit" | "binary" if !composite => {
            let mut fields = vec!["Content-Transfer-Encoding: quoted-printable".to_string()];
            if is_message && !message::has_header(header, "MIME-Version") {
                fields.push("MIME-Version: 1.0".into());
            }
            let without = message::remove_header(header, "Content-Transfer-Encoding");
            edits.push((
                part.start..part.body,
                message::append_fields(&without, &fields),
            ));
            let mut encoded = Vec::with_capacity(body.len() + body.len() / 2);
            quoted_printable(body, &mut encoded);
            edits.push((part.body..part.end, encoded));
            Ok(())
        }
        // Already encoded, yet with raw 8-bit octets (a sloppy writer's):
        // readers take a raw octet in quoted-printable as itself, so its
        // =XX means the same; and they skip anything outside the base64
        // alphabet (RFC 2045 §6.8), so it can go.
        "quoted-printable" => {
            let mut escaped = Vec::with_capacity(body.len() + body.len() / 2);
            for &b in body {
                if b.is_ascii() {
                    escaped.push(b);
                } else {
                    push_hex(b, &mut escaped);
                }
            }
            edits.push((part.body..part.end, escaped));
            Ok(())
        }
        "base64" => {
            let kept = body.iter().copied().filter(u8::is_ascii).collect();
            edits.push((part.body..part.end, kept));
            Ok(())
        }
        _ if composite => Err(NoSevenBitForm::Composite(format!(
            "{}/{}",
            part.ctype, part.subtype
        ))),
        other => Err(NoSevenBitForm::UnknownEncoding(other.to_string())),
    }
}

/// A multipart's preamble and epilogue (and the delimiter lines between
/// its parts): text no reader shows (RFC 2046 §5.1.1), so its 8-bit
/// octets become `?`.
fn ignored_text(msg: &[u8], range: std::ops::Range<usize>) -> Option<Edit> {
    let text = msg.get(range.clone())?;
    if text.is_ascii() {
        return None;
    }
    let cleaned = text
        .iter()
        .map(|&b| if b.is_ascii() { b } else { b'?' })
        .collect();
    Some((range, cleaned))
}

/// `data` as quoted-printable (RFC 2045 §6.7), appended to `out`: a CRLF is
/// a hard line break and stays one; every other octet outside printable
/// ASCII, `=`, and a space or tab that would end a line are `=XX`; lines
/// are at most 76 characters, broken by soft line breaks (`=` CRLF).
/// Decoding gives back `data` exactly, bare CR and LF included.
pub fn quoted_printable(data: &[u8], out: &mut Vec<u8>) {
    let mut column = 0;
    let mut i = 0;
    while i < data.len() {
        let b = data[i];
        if data[i..].starts_with(b"\r\n") {
            out.extend_from_slice(b"\r\n");
            column = 0;
            i += 2;
            continue;
        }
        let ends_line = match data.get(i + 1..) {
            Some([]) | None => true,
            Some(rest) => rest.starts_with(b"\r\n"),
        };
        let literal = match b {
            b' ' | b'\t' => !ends_line,
            b'=' => false,
            33..=126 => true,
            _ => false,
        };
        let width = if literal { 1 } else { 3 };
        // A character with more on its line after it must leave room for
        // the `=` of a soft break.
        let room = if ends_line {
            MAX_QP_LINE
        } else {
            MAX_QP_LINE - 1
        };
        if column + width > room {
            out.extend_from_slice(b"=\r\n");
            column = 0;
        }
        if literal {
            out.push(b);
        } else {
            push_hex(b, out);
        }
        column += width;
        i += 1;
    }
}

fn push_hex(b: u8, out: &mut Vec<u8>) {
    const HEX: &[u8; 16] = b"0123456789ABCDEF";
    out.extend_from_slice(&[b'=', HEX[usize::from(b >> 4)], HEX[usize::from(b & 15)]]);
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::proto::mime::{Binary, binary_data, resolve};
    use proptest::prelude::*;

    fn crlf(s: &str) -> Vec<u8> {
        message::to_crlf(s.as_bytes())
    }

    /// The decoded body of the part `path` names (BINARY, RFC 3516).
    fn decoded(msg: &[u8], path: &[u32]) -> Vec<u8> {
        let root = mime::parse(msg);
        match binary_data(msg, Some(&root), path) {
            Binary::Data(d) => d,
            _ => panic!("no part {path:?}"),
        }
    }

    fn qp(data: &[u8]) -> Vec<u8> {
        let mut out = Vec::new();
        quoted_printable(data, &mut out);
        out
    }

    #[test]
    fn quoted_printable_escapes_breaks_and_keeps_hard_line_ends() {
        assert_eq!(qp("café\r\n".as_bytes()), b"caf=C3=A9\r\n");
        assert_eq!(qp(b"a=b \r\nend\t"), b"a=3Db=20\r\nend=09");
        assert_eq!(qp(b"x\ry\nz"), b"x=0Dy=0Az");
        let long = qp(&[b'a'; 200]);
        let lines: Vec<&[u8]> = long.split(|&b| b == b'\n').collect();
        assert_eq!(lines.len(), 3);
        assert_eq!(lines[0], [&[b'a'; 75][..], b"=\r"].concat());
        assert_eq!(lines[2], [b'a'; 50]);
        // A triplet is never split by a soft break.
        let octets = qp(&[0xe9; 30]);
        assert!(
            octets
                .split(|&b| b == b'\n')
                .all(|l| l.len() <= MAX_QP_LINE + 1)
        );
        assert_eq!(
            mail_parser::decoders::quoted_printable::quoted_printable_decode(&octets).unwrap(),
            vec![0xe9; 30]
        );
    }

    #[test]
    fn a_seven_bit_message_is_left_alone() {
        let m = crlf("Subject: x\n\nplain\n");
        assert_eq!(to_seven_bit(&m).unwrap(), m);
    }

    #[test]
    fn a_single_part_gets_quoted_printable_and_one_encoding_field() {
        let m = crlf(
            "Subject: x\nMIME-Version: 1.0\nContent-Type: text/plain; charset=utf-8\nContent-Transfer-Encoding: 8bit\n\ncafé\n",
        );
        let out = to_seven_bit(&m).unwrap();
        assert!(out.is_ascii());
        let text = String::from_utf8(out.clone()).unwrap();
        assert_eq!(
            text,
            "Subject: x\r\nMIME-Version: 1.0\r\nContent-Type: text/plain; charset=utf-8\r\n\
             Content-Transfer-Encoding: quoted-printable\r\n\r\ncaf=C3=A9\r\n"
        );
        assert_eq!(decoded(&out, &[1]), "café\r\n".as_bytes());
    }

    #[test]
    fn a_message_without_mime_version_gets_one() {
        let out = to_seven_bit(&crlf("Subject: x\n\nna\u{ef}ve\n")).unwrap();
        let text = String::from_utf8(out).unwrap();
        assert!(text.contains("MIME-Version: 1.0\r\n"), "{text}");
        assert!(text.ends_with("\r\n\r\nna=C3=AFve\r\n"), "{text}");
    }

    #[test]
    fn nested_parts_are_converted_where_they_are() {
        let m = crlf(concat!(
            "Subject: x\nMIME-Version: 1.0\nContent-Type: multipart/mixed; boundary=\"o\"\n\n",
            "pr\u{e9}amble\n",
            "--o\nContent-Type: text/plain; charset=utf-8\nContent-Transfer-Encoding: 8bit\n\n\u{e9}t\u{e9}\n",
            "--o\nContent-Type: text/plain\n\nascii only\n",
            "--o\nContent-Type: message/rfc822\nContent-Transfer-Encoding: 8bit\n\n",
            "Subject: inner\nContent-Type: multipart/alternative; boundary=i\n\n",
            "--i\nContent-Type: text/plain; charset=utf-8\n\n\u{fc}ber\n",
            "--i\nContent-Type: text/html; charset=utf-8\nContent-Transfer-Encoding: quoted-printable\n\n<p>=C3=BCber \u{fc}</p>\n",
            "--i--\n",
            "--o\nContent-Type: application/octet-stream\nContent-Transfer-Encoding: base64\n\nAAEC\u{e9}AwQ=\n",
            "--o--\n",
        ));
        let out = to_seven_bit(&m).unwrap();
        assert!(out.is_ascii(), "{}", String::from_utf8_lossy(&out));
        assert_eq!(decoded(&out, &[1]), "été".as_bytes());
        assert_eq!(decoded(&out, &[2]), b"ascii only");
        // The message/rfc822 part keeps an identity encoding, now 7bit;
        // the part inside it is what is encoded.
        let root = mime::parse(&out);
        let rfc822 = resolve(&root, &[3]).unwrap();
        assert_eq!(rfc822.encoding.as_deref(), Some("7bit"));
        let inner_plain = resolve(&root, &[3, 1]).unwrap();
        assert_eq!(inner_plain.encoding.as_deref(), Some("quoted-printable"));
        assert_eq!(decoded(&out, &[3, 1]), "über".as_bytes());
        assert_eq!(decoded(&out, &[3, 2]), "<p>über ü</p>".as_bytes());
        assert_eq!(decoded(&out, &[4]), [0, 1, 2, 3, 4]);
        let text = String::from_utf8(out).unwrap();
        assert!(text.contains("\r\npr??amble\r\n"), "{text}");
        assert_eq!(text.matches("Content-Transfer-Encoding").count(), 5);
        assert!(!text.contains("8bit"), "{text}");
    }

    #[test]
    fn offsets_of_a_message_inside_a_part_are_into_the_whole_message() {
        let m = crlf(
            "Content-Type: multipart/mixed; boundary=b\n\n--b\nContent-Type: message/rfc822\n\nSubject: in\n\ninner body\n--b--\n",
        );
        let root = mime::parse(&m);
        let inner = root.children[0].message.as_deref().unwrap();
        assert_eq!(&m[inner.start..inner.body], b"Subject: in\r\n\r\n");
        assert_eq!(&m[inner.body..inner.end], b"inner body");
    }

    #[test]
    fn eight_bit_header_fields_and_unknown_encodings_have_no_seven_bit_form() {
        assert_eq!(
            to_seven_bit(&crlf("Subject: caf\u{e9}\n\nbody\n")),
            Err(NoSevenBitForm::EightBitHeader)
        );
        let part_header = crlf(
            "Content-Type: multipart/mixed; boundary=b\n\n--b\nContent-Disposition: attachment; filename=\"\u{e9}.txt\"\n\nx\n--b--\n",
        );
        assert_eq!(
            to_seven_bit(&part_header),
            Err(NoSevenBitForm::EightBitHeader)
        );
        let uu = crlf("Content-Transfer-Encoding: x-uuencode\n\n\u{e9}\n");
        assert_eq!(
            to_seven_bit(&uu),
            Err(NoSevenBitForm::UnknownEncoding("x-uuencode".into()))
        );
        let no_boundary = crlf("Content-Type: multipart/mixed\n\n\u{e9}\n");
        assert_eq!(
            to_seven_bit(&no_boundary),
            Err(NoSevenBitForm::Composite("multipart/mixed".into()))
        );
    }

    proptest! {
        #[test]
        fn quoted_printable_is_seven_bit_short_lined_and_decodes_back(
            data in proptest::collection::vec(any::<u8>(), 0..600)
        ) {
            let encoded = qp(&data);
            prop_assert!(encoded.is_ascii());
            for line in encoded.split(|&b| b == b'\n') {
                let line = line.strip_suffix(b"\r").unwrap_or(line);
                prop_assert!(line.len() <= MAX_QP_LINE);
                prop_assert!(!line.contains(&b'\r'));
                prop_assert!(!line.ends_with(b" ") && !line.ends_with(b"\t"));
            }
            let back = mail_parser::decoders::quoted_printable::quoted_printable_decode(&encoded);
            prop_assert_eq!(back, Some(data));
        }

        #[test]
        fn a_converted_message_is_seven_bit_and_its_body_decodes_to_the_original(
            body in proptest::collection::vec(any::<u8>(), 0..600)
        ) {
            let mut msg = b"Subject: p\r\nContent-Type: text/plain; charset=utf-8\r\nContent-Transfer-Encoding: 8bit\r\n\r\n".to_vec();
            msg.extend_from_slice(&body);
            let out = to_seven_bit(&msg).unwrap();
            prop_assert!(out.is_ascii());
            prop_assert_eq!(decoded(&out, &[1]), body);
        }
    }
}
