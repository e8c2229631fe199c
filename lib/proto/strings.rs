//! The two string forms IMAP (RFC 9051 §4.3) and ManageSieve (RFC 5804
//! §4, which takes them from IMAP) share: a quoted string, `"..."` with
//! `\"` and `\\` the only escapes, and a literal, `{N}` or `{N+}`, CRLF,
//! then N bytes (already in the input: the session framed the command with
//! [`literal_at_end`](crate::proto::imap::command::literal_at_end)). Each
//! protocol's parser words the errors its own way.

/// Why a string could not be read.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StringError {
    /// The input ended inside a quoted string.
    Unterminated,
    /// A CR or LF inside a quoted string.
    LineEnd,
    /// A NUL inside a quoted string.
    Nul,
    /// A backslash before anything but `"` or `\`.
    BadEscape,
    /// A quoted string longer than the caller allows.
    TooLong,
    /// No digits after `{`.
    NoSize,
    /// A size past 64 bits.
    SizeTooLarge,
    /// No `}` after the size (and the optional `+`).
    NoClose,
    /// The size is not followed by the line's end.
    NoLineEnd,
    /// Fewer bytes than the size announced.
    Short,
}

/// The quoted string starting at `*pos` (its opening quote), at most `max`
/// bytes once unescaped; `*pos` moves past its closing quote.
pub fn quoted(input: &[u8], pos: &mut usize, max: usize) -> Result<Vec<u8>, StringError> {
    let mut at = *pos + 1;
    let mut out = Vec::new();
    loop {
        let b = *input.get(at).ok_or(StringError::Unterminated)?;
        at += 1;
        match b {
            b'"' => break,
            b'\\' => match input.get(at) {
                Some(&c @ (b'"' | b'\\')) => {
                    at += 1;
                    out.push(c);
                }
                _ => return Err(StringError::BadEscape),
            },
            b'\r' | b'\n' => return Err(StringError::LineEnd),
            // CHAR is %x01-7F (RFC 3501 §9, UTF-8 in RFC 9051): no NUL.
            0 => return Err(StringError::Nul),
            b => out.push(b),
        }
        if out.len() > max {
            return Err(StringError::TooLong);
        }
    }
    *pos = at;
    Ok(out)
}

/// The literal starting at `*pos` (its `{`): `{N}` or `{N+}`, an optional
/// CR, LF, and the N bytes; `*pos` moves past them.
pub fn literal(input: &[u8], pos: &mut usize) -> Result<Vec<u8>, StringError> {
    let mut at = *pos + 1;
    let digits = input[at.min(input.len())..]
        .iter()
        .take_while(|b| b.is_ascii_digit())
        .count();
    if digits == 0 {
        return Err(StringError::NoSize);
    }
    let mut size: u64 = 0;
    for &b in &input[at..at + digits] {
        size = size
            .checked_mul(10)
            .and_then(|n| n.checked_add(u64::from(b - b'0')))
            .ok_or(StringError::SizeTooLarge)?;
    }
    at += digits;
    if input.get(at) == Some(&b'+') {
        at += 1;
    }
    if input.get(at) != Some(&b'}') {
        return Err(StringError::NoClose);
    }
    at += 1;
    if input.get(at) == Some(&b'\r') {
        at += 1;
    }
    if input.get(at) != Some(&b'\n') {
        return Err(StringError::NoLineEnd);
    }
    at += 1;
    let end = usize::try_from(size)
        .ok()
        .and_then(|size| at.checked_add(size))
        .filter(|&end| end <= input.len())
        .ok_or(StringError::Short)?;
    *pos = end;
    Ok(input[at..end].to_vec())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn q(text: &[u8], max: usize) -> Result<(Vec<u8>, usize), StringError> {
        let mut pos = 0;
        quoted(text, &mut pos, max).map(|s| (s, pos))
    }

    fn l(text: &[u8]) -> Result<(Vec<u8>, usize), StringError> {
        let mut pos = 0;
        literal(text, &mut pos).map(|s| (s, pos))
    }

    #[test]
    fn quoted_strings() {
        assert_eq!(q(br#""a\"b\\c" rest"#, 10), Ok((br#"a"b\c"#.to_vec(), 9)));
        assert_eq!(q(b"\"abc", 10), Err(StringError::Unterminated));
        assert_eq!(q(b"\"a\r\n\"", 10), Err(StringError::LineEnd));
        assert_eq!(q(b"\"a\0\"", 10), Err(StringError::Nul));
        assert_eq!(q(b"\"a\\n\"", 10), Err(StringError::BadEscape));
        assert_eq!(q(b"\"abcd\"", 3), Err(StringError::TooLong));
        assert_eq!(q(b"\"abc\"", 3), Ok((b"abc".to_vec(), 5)));
    }

    #[test]
    fn literals() {
        assert_eq!(l(b"{3}\r\nabcd"), Ok((b"abc".to_vec(), 8)));
        assert_eq!(l(b"{3+}\nabc"), Ok((b"abc".to_vec(), 8)));
        assert_eq!(l(b"{0}\r\n"), Ok((Vec::new(), 5)));
        assert_eq!(l(b"{}\r\n"), Err(StringError::NoSize));
        assert_eq!(l(b"{"), Err(StringError::NoSize));
        assert_eq!(
            l(b"{99999999999999999999}\r\n"),
            Err(StringError::SizeTooLarge)
        );
        assert_eq!(l(b"{3x}\r\nabc"), Err(StringError::NoClose));
        assert_eq!(l(b"{3} abc"), Err(StringError::NoLineEnd));
        assert_eq!(l(b"{4}\r\nabc"), Err(StringError::Short));
        assert_eq!(l(b"{18446744073709551615}\r\nabc"), Err(StringError::Short));
    }
}
