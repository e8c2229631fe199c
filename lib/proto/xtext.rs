//! RFC 3461 §4 xtext, the encoding of DSN parameters (`ORCPT=rfc822;…`,
//! `ENVID=…`) on the MAIL and RCPT lines: printable ASCII but `+` and `=`
//! as itself, every other byte as `+` and two upper-case hex digits.
//!
//! ```text
//! xtext = *( xchar / hexchar )
//! xchar = any ASCII CHAR between "!" (33) and "~" (126) inclusive,
//!         except for "+" and "=".
//! hexchar = ASCII "+" immediately followed by two upper case
//!           hexadecimal digits
//! ```

/// Encodes text as xtext.
pub fn encode(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for b in text.bytes() {
        if (33..=126).contains(&b) && b != b'+' && b != b'=' {
            out.push(b as char);
        } else {
            out.push_str(&format!("+{b:02X}"));
        }
    }
    out
}

/// Decodes xtext; `None` if a `+` is not followed by two hex digits or the
/// result is not UTF-8. Lower-case hex is accepted (be liberal in what you
/// accept: some clients send it).
pub fn decode(text: &str) -> Option<String> {
    let bytes = text.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'+' {
            let hex = text.get(i + 1..i + 3)?;
            if !hex.bytes().all(|b| b.is_ascii_hexdigit()) {
                return None;
            }
            out.push(u8::from_str_radix(hex, 16).ok()?);
            i += 3;
        } else {
            out.push(bytes[i]);
            i += 1;
        }
    }
    String::from_utf8(out).ok()
}

/// True when `text` is well-formed xtext: `xchar`s and `hexchar`s only,
/// so nothing to decode is lost or guessed (smtp-proto's parser drops a
/// `+` that two hex digits do not follow, and takes `=` and spaces for
/// part of the value). Lower-case hex is taken, as [`decode`] takes it;
/// UTF-8 beyond ASCII too (RFC 6533 §3's utf-8-xtext, which SMTPUTF8
/// clients send).
pub fn is_xtext(text: &str) -> bool {
    let bytes = text.as_bytes();
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'+' => {
                let hex = bytes.get(i + 1..i + 3);
                if !hex.is_some_and(|h| h.iter().all(u8::is_ascii_hexdigit)) {
                    return false;
                }
                i += 3;
            }
            b'=' => return false,
            33..=126 | 128.. => i += 1,
            _ => return false,
        }
    }
    true
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn rfc_examples_and_malformed() {
        assert_eq!(decode("rfc822;a+2Bb@c").as_deref(), Some("rfc822;a+b@c"));
        assert_eq!(encode("rfc822;a+b@c"), "rfc822;a+2Bb@c");
        assert_eq!(encode("a=b c"), "a+3Db+20c");
        assert_eq!(decode("bad+2"), None);
        assert_eq!(decode("a++1"), None, "from_str_radix takes a + sign");
        assert_eq!(decode("+"), None);
    }

    #[test]
    fn xtext_validity() {
        for good in ["a", "rfc822;a+2Bb@c", "x+3d", "j\u{f8}ran", "!~"] {
            assert!(is_xtext(good), "{good:?}");
        }
        for bad in ["a+2", "+", "a+zz", "a=b", "a b", "a\tb", "a\u{7f}"] {
            assert!(!is_xtext(bad), "{bad:?}");
        }
    }

    proptest! {
        #[test]
        fn decode_inverts_encode(text in "\\PC*") {
            let encoded = encode(&text);
            prop_assert!(encoded.bytes().all(|b| (33..=126).contains(&b) && b != b'='));
            prop_assert!(is_xtext(&encoded));
            prop_assert_eq!(decode(&encoded), Some(text));
        }

        #[test]
        fn decode_never_panics(text in "\\PC*") {
            let _ = decode(&text);
        }
    }
}
