//! Writing IMAP data: strings (quoted or literal), flags, dates.

use crate::store::mailbox::flags::SYSTEM;
use crate::store::mailbox::{Flags, Keywords};

/// A `string`: quoted when it is printable ASCII, else a literal.
pub fn quoted_or_literal(out: &mut Vec<u8>, s: &[u8]) {
    if s.iter().all(|&b| (0x20..0x7f).contains(&b)) && s.len() < 4096 {
        out.push(b'"');
        for &b in s {
            if b == b'"' || b == b'\\' {
                out.push(b'\\');
            }
            out.push(b);
        }
        out.push(b'"');
    } else {
        literal(out, s);
    }
}

pub fn literal(out: &mut Vec<u8>, s: &[u8]) {
    out.extend_from_slice(format!("{{{}}}\r\n", s.len()).as_bytes());
    out.extend_from_slice(s);
}

/// `nstring`: NIL or a string.
pub fn nstring(out: &mut Vec<u8>, s: Option<&[u8]>) {
    match s {
        Some(s) => quoted_or_literal(out, s),
        None => out.extend_from_slice(b"NIL"),
    }
}

/// `astring` for a mailbox name: an atom when it can be, else a string.
pub fn astring(out: &mut Vec<u8>, s: &str) {
    let atom = !s.is_empty()
        && s.bytes()
            .all(|b| b > 0x20 && b < 0x7f && !b"(){ %*\"\\]".contains(&b));
    if atom {
        out.extend_from_slice(s.as_bytes());
    } else {
        quoted_or_literal(out, s.as_bytes());
    }
}

/// `(\Seen $Junk ...)`
pub fn flag_list(flags: Flags, keywords: &Keywords) -> String {
    let mut names: Vec<&str> = SYSTEM
        .iter()
        .filter(|(bit, _, _)| flags.has(*bit))
        .map(|(_, _, name)| *name)
        .collect();
    names.extend(keywords.names_of(flags.keywords));
    format!("({})", names.join(" "))
}

/// `* FLAGS` of a folder: the system flags and its keywords.
pub fn all_flags(keywords: &Keywords) -> String {
    let all = Flags {
        system: 0xff,
        keywords: u32::MAX,
    };
    flag_list(all, keywords)
}

/// PERMANENTFLAGS: all flags, and `\*` while keyword letters are free.
pub fn permanent_flags(keywords: &Keywords) -> String {
    let mut list = all_flags(keywords);
    if !keywords.is_full() {
        list.pop();
        if !list.ends_with('(') {
            list.push(' ');
        }
        list.push_str("\\*)");
    }
    list
}

const MONTHS: [&str; 12] = [
    "Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec",
];

/// Civil date of days since the epoch (Howard Hinnant's algorithm).
pub fn civil_from_days(z: i64) -> (i64, u32, u32) {
    let z = z + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let y = yoe + era * 400;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let m = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    (if m <= 2 { y + 1 } else { y }, m, d)
}

/// `date-time` in UTC: `"17-Jul-1996 02:44:25 +0000"`.
pub fn internal_date(secs: i64) -> String {
    let (y, m, d) = civil_from_days(secs.div_euclid(86_400));
    let t = secs.rem_euclid(86_400);
    format!(
        "\"{d:02}-{}-{y:04} {:02}:{:02}:{:02} +0000\"",
        MONTHS[(m - 1) as usize],
        t / 3600,
        t / 60 % 60,
        t % 60
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn strings_and_dates() {
        let mut out = Vec::new();
        quoted_or_literal(&mut out, b"a \"b\" \\");
        out.push(b' ');
        quoted_or_literal(&mut out, "é\r\n".as_bytes());
        out.push(b' ');
        astring(&mut out, "Sent");
        out.push(b' ');
        astring(&mut out, "My Folder");
        assert_eq!(
            out,
            b"\"a \\\"b\\\" \\\\\" {4}\r\n\xc3\xa9\r\n Sent \"My Folder\""
        );
        assert_eq!(internal_date(773_401_465), "\"05-Jul-1994 09:44:25 +0000\"");
        assert_eq!(
            crate::proto::imap::command::days_from_civil(2024, 2, 29),
            civil_days(2024, 2, 29)
        );
    }

    fn civil_days(y: i64, m: u32, d: u32) -> i64 {
        (0..30_000)
            .find(|&z| civil_from_days(z) == (y, m, d))
            .unwrap()
    }
}
