//! SASL PLAIN (RFC 4616), the one mechanism the servers offer (over TLS or
//! loopback only): SMTP AUTH, POP3 AUTH and IMAP AUTHENTICATE all decode
//! the client's response here.

use base64::Engine;

/// Decodes a PLAIN response (base64 of `authzid NUL authcid NUL passwd`)
/// into login and password. An authorization identity other than the login
/// itself is refused: nobody may act as someone else here.
pub fn decode_plain(response: &str) -> Option<(String, String)> {
    let bytes = base64::engine::general_purpose::STANDARD
        .decode(response.trim())
        .ok()?;
    let decoded = String::from_utf8(bytes).ok()?;
    let mut parts = decoded.split('\0');
    let (authz, authc, password) = (parts.next()?, parts.next()?, parts.next()?);
    if parts.next().is_some()
        || authc.is_empty()
        || (!authz.is_empty() && !authz.eq_ignore_ascii_case(authc))
    {
        return None;
    }
    Some((authc.to_string(), password.to_string()))
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
    }
}
