//! Writing IMAP data: strings (quoted, literal, RFC 3516 literal8), flag
//! lists (FLAGS, PERMANENTFLAGS), dates, the names FETCH gives sections, and
//! ESEARCH answers. Sequence sets write themselves (`command::SequenceSet`).

use crate::proto::flags::{Flags, Keywords, SYSTEM};
use crate::proto::imap::command::{Section, SectionText, partial_range};

/// A `string`: quoted when it is printable ASCII, else a literal.
pub fn quoted_or_literal(out: &mut Vec<u8>, s: &[u8]) {
    if s.iter().all(|&b| (0x20..0x7f).contains(&b)) && s.len() < 4096 {
        quoted(out, s);
    } else {
        literal(out, s);
    }
}

/// `s` in double quotes, `"` and `\` escaped (IMAP and ManageSieve quote
/// alike); the caller has checked that `s` may be quoted.
pub fn quoted(out: &mut Vec<u8>, s: &[u8]) {
    out.push(b'"');
    for &b in s {
        if b == b'"' || b == b'\\' {
            out.push(b'\\');
        }
        out.push(b);
    }
    out.push(b'"');
}

/// The bytes a partial fetch gives, `<origin.count>` (RFC 9051 §6.4.5) or
/// a URL's `;PARTIAL=origin.length` (RFC 5092, `count` `None` for "to the
/// end"): what lies past the end is simply not there, never an error.
pub fn partial(data: &[u8], origin: u32, count: Option<u32>) -> &[u8] {
    let start = (origin as usize).min(data.len());
    let end = count.map_or(data.len(), |c| {
        start.saturating_add(c as usize).min(data.len())
    });
    &data[start..end]
}

/// A literal. A literal may not hold a NUL (RFC 9051 §4.3; only BINARY's
/// literal8 may), so each NUL is sent as 0x80, as Dovecot does: the length
/// stays, so RFC822.SIZE and partial offsets still hold, and a message
/// stored with a NUL (a broken sender's) is still served, never refused.
pub fn literal(out: &mut Vec<u8>, s: &[u8]) {
    out.extend_from_slice(format!("{{{}}}\r\n", s.len()).as_bytes());
    let start = out.len();
    out.extend_from_slice(s);
    if s.contains(&0) {
        for b in &mut out[start..] {
            if *b == 0 {
                *b = 0x80;
            }
        }
    }
}

/// A literal, as `~{n}` (RFC 3516 literal8) when it holds a NUL, which a
/// plain literal may not; the NULs are then sent as they are.
pub fn literal8(out: &mut Vec<u8>, data: &[u8]) {
    if !data.contains(&0) {
        return literal(out, data);
    }
    out.extend_from_slice(format!("~{{{}}}\r\n", data.len()).as_bytes());
    out.extend_from_slice(data);
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

/// A part number as sections write it: `1.2.3`.
pub fn part_number(part: &[u32]) -> String {
    part.iter()
        .map(u32::to_string)
        .collect::<Vec<_>>()
        .join(".")
}

/// The section as the response names it: `1.2.HEADER.FIELDS (A B)`.
pub fn section_name(out: &mut Vec<u8>, section: &Section) {
    let parts = part_number(&section.part);
    out.extend_from_slice(parts.as_bytes());
    let text = match &section.text {
        SectionText::Full => return,
        SectionText::Header => "HEADER",
        SectionText::Text => "TEXT",
        SectionText::Mime => "MIME",
        SectionText::HeaderFields { not, fields } => {
            if !parts.is_empty() {
                out.push(b'.');
            }
            out.extend_from_slice(if *not {
                b"HEADER.FIELDS.NOT ("
            } else {
                b"HEADER.FIELDS ("
            });
            for (i, f) in fields.iter().enumerate() {
                if i > 0 {
                    out.push(b' ');
                }
                astring(out, f);
            }
            out.push(b')');
            return;
        }
    };
    if !parts.is_empty() {
        out.push(b'.');
    }
    out.extend_from_slice(text.as_bytes());
}

/// `* ESEARCH (TAG "t") [UID] MIN a MAX b COUNT n ALL set PARTIAL (r set)`
/// (RFC 4731, RFC 9394) for SEARCH, whose `found` ascends, and for SORT
/// (ESORT, RFC 5267), whose `found` is in sort order: MIN and MAX are
/// then the first and last sorted, and ALL lists them in that order.
pub fn esearch(tag: &str, uid: bool, found: &[u32], opts: &[String]) -> String {
    let partial = opts.iter().find_map(|o| partial_range(o));
    let all = opts.is_empty() || opts.iter().any(|o| o == "ALL");
    let mut line = String::from("* ESEARCH (TAG ");
    let mut quoted = Vec::new();
    quoted_or_literal(&mut quoted, tag.as_bytes());
    line.push_str(&String::from_utf8_lossy(&quoted));
    line.push(')');
    if uid {
        line.push_str(" UID");
    }
    if opts.iter().any(|o| o == "MIN")
        && let Some(min) = found.first()
    {
        line.push_str(&format!(" MIN {min}"));
    }
    if opts.iter().any(|o| o == "MAX")
        && let Some(max) = found.last()
    {
        line.push_str(&format!(" MAX {max}"));
    }
    if opts.iter().any(|o| o == "COUNT") {
        line.push_str(&format!(" COUNT {}", found.len()));
    }
    if all && !found.is_empty() {
        line.push_str(" ALL ");
        line.push_str(&in_order(found));
    }
    if let Some((lo, hi)) = partial {
        // Positions are 1-based; negative ones count from the end.
        let n = found.len() as i64;
        let (start, end) = if lo > 0 {
            (lo - 1, hi.min(n))
        } else {
            ((n + lo).max(0), (n + hi + 1).max(0))
        };
        let some = if start < end && start < n {
            in_order(&found[start as usize..end as usize])
        } else {
            "NIL".to_string()
        };
        line.push_str(&format!(" PARTIAL ({lo}:{hi} {some})"));
    }
    line
}

/// `* SEARCH 1 2 3` or `* SORT 3 1 2`: the untagged `word` and the numbers.
pub fn number_list(word: &str, numbers: &[u32]) -> String {
    let mut line = format!("* {word}");
    for n in numbers {
        line.push(' ');
        line.push_str(&n.to_string());
    }
    line
}

/// A sequence set that keeps the order of `numbers`: runs that ascend by
/// one become `a:b`, and nothing is reordered.
fn in_order(numbers: &[u32]) -> String {
    let mut out = String::new();
    let mut i = 0;
    while i < numbers.len() {
        let mut j = i;
        while j + 1 < numbers.len() && numbers[j + 1] == numbers[j].wrapping_add(1) {
            j += 1;
        }
        if !out.is_empty() {
            out.push(',');
        }
        if j > i {
            out.push_str(&format!("{}:{}", numbers[i], numbers[j]));
        } else {
            out.push_str(&numbers[i].to_string());
        }
        i = j + 1;
    }
    out
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
    #[test]
    fn partial_stops_at_the_end() {
        assert_eq!(partial(b"abcdef", 2, Some(3)), b"cde");
        assert_eq!(partial(b"abcdef", 4, Some(10)), b"ef");
        assert_eq!(partial(b"abcdef", 9, Some(1)), b"");
        assert_eq!(partial(b"abcdef", 1, None), b"bcdef");
        assert_eq!(partial(b"abcdef", 0, Some(u32::MAX)), b"abcdef");
    }

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

    #[test]
    fn fetch_names_sections_and_sends_nul_as_literal8() {
        let mut out = Vec::new();
        literal8(&mut out, &[0, 1]);
        out.push(b' ');
        literal8(&mut out, b"ab");
        assert_eq!(out, b"~{2}\r\n\x00\x01 {2}\r\nab");
        // A plain literal never holds a NUL: 0x80 in its place, as Dovecot.
        out.clear();
        literal(&mut out, b"a\x00b\x00");
        assert_eq!(out, b"{4}\r\na\x80b\x80");
        let name = |part: Vec<u32>, text: SectionText| {
            let mut out = Vec::new();
            section_name(&mut out, &Section { part, text });
            String::from_utf8(out).unwrap()
        };
        assert_eq!(name(vec![], SectionText::Full), "");
        assert_eq!(name(vec![1, 2], SectionText::Full), "1.2");
        assert_eq!(name(vec![], SectionText::Header), "HEADER");
        assert_eq!(name(vec![3], SectionText::Mime), "3.MIME");
        let fields = SectionText::HeaderFields {
            not: true,
            fields: vec!["Subject".into(), "X Y".into()],
        };
        assert_eq!(
            name(vec![2], fields),
            "2.HEADER.FIELDS.NOT (Subject \"X Y\")"
        );
    }

    #[test]
    fn esearch_answers_what_was_asked() {
        let opts = |o: &[&str]| o.iter().map(|s| s.to_string()).collect::<Vec<_>>();
        assert_eq!(
            esearch(
                "A1",
                true,
                &[2, 3, 4, 9],
                &opts(&["MIN", "MAX", "COUNT", "ALL"])
            ),
            "* ESEARCH (TAG \"A1\") UID MIN 2 MAX 9 COUNT 4 ALL 2:4,9"
        );
        assert_eq!(
            esearch("t", false, &[], &opts(&[])),
            "* ESEARCH (TAG \"t\")"
        );
        assert_eq!(
            esearch("t", false, &[5], &opts(&["COUNT"])),
            "* ESEARCH (TAG \"t\") COUNT 1"
        );
    }

    fn civil_days(y: i64, m: u32, d: u32) -> i64 {
        (0..30_000)
            .find(|&z| civil_from_days(z) == (y, m, d))
            .unwrap()
    }
}
