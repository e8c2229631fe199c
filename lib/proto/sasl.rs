//! SASL PLAIN (RFC 4616), the one mechanism the servers offer (over TLS or
//! loopback only): SMTP AUTH, POP3 AUTH and IMAP AUTHENTICATE all decode
//! the client's response here.

use base64::Engine;

/// Why a PLAIN response was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PlainRefusal {
    /// Not base64 of `authzid NUL authcid NUL passwd`.
    Malformed,
    /// Well formed, but asks to act as someone other than the login
    /// (IMAP says `NO [AUTHORIZATIONFAILED]`, RFC 5530).
    OtherIdentity,
}

/// Decodes a PLAIN response (base64 of `authzid NUL authcid NUL passwd`)
/// into login and password. An authorization identity other than the login
/// itself is refused: nobody may act as someone else here.
pub fn decode_plain(response: &str) -> Option<(String, String)> {
    decode_plain_or_why(response).ok()
}

/// [`decode_plain`], saying why a response is refused.
pub fn decode_plain_or_why(response: &str) -> Result<(String, String), PlainRefusal> {
    let bytes = base64::engine::general_purpose::STANDARD
        .decode(response.trim())
        .map_err(|_| PlainRefusal::Malformed)?;
    let decoded = String::from_utf8(bytes).map_err(|_| PlainRefusal::Malformed)?;
    let mut parts = decoded.split('\0');
    let (Some(authz), Some(authc), Some(password), None) =
        (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return Err(PlainRefusal::Malformed);
    };
    if authc.is_empty() {
        return Err(PlainRefusal::Malformed);
    }
    if !authz.is_empty() && !authz.eq_ignore_ascii_case(authc) {
        return Err(PlainRefusal::OtherIdentity);
    }
    Ok((authc.to_string(), password.to_string()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn plain_responses() {
        assert_eq!(
            decode_plain("AHVzZXIAcGFzcw=="),
            Some(("user".into(), "pass".into()))
        );
        // authzid equal to the login (any case) is fine; another is not.
        assert!(decode_plain("YW5uQGV4YW1wbGUudGVzdABhbm5AZXhhbXBsZS50ZXN0AHNlY3JldA==").is_some());
        assert!(decode_plain("Ym9iQGV4YW1wbGUudGVzdABhbm5AZXhhbXBsZS50ZXN0AHNlY3JldA==").is_none());
        assert!(decode_plain("not base64!").is_none());
        assert!(decode_plain("AABzZWNyZXQ=").is_none(), "empty login");
        assert_eq!(
            decode_plain_or_why("Ym9iQGV4YW1wbGUudGVzdABhbm5AZXhhbXBsZS50ZXN0AHNlY3JldA=="),
            Err(PlainRefusal::OtherIdentity)
        );
        assert_eq!(
            decode_plain_or_why("not base64!"),
            Err(PlainRefusal::Malformed)
        );
    }
}
