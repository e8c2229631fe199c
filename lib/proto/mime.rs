//! A message's MIME structure, for ENVELOPE, BODYSTRUCTURE, `BODY[...]`
//! sections and `BINARY[...]` (RFC 3501 §6.4.5, §7.4.2; RFC 3516; RFC 2045,
//! 2046, 2231), and its header fields decoded (RFC 2047) for SEARCH, SORT
//! and THREAD.
//!
//! Works on the message as IMAP sends it (its wire form, `proto::message`),
//! by offsets, so a section is a slice of the same bytes RFC822.SIZE
//! counts. The parser is lenient (real mail is sloppy) and bounded: nesting
//! deeper than [`MAX_DEPTH`] and parts past [`MAX_PARTS`] are taken as
//! opaque leaves, parameters past [`MAX_PARAMS`] are dropped, and
//! everything is one pass over the bytes, so hostile messages cost linear
//! time.

use crate::proto::imap::command::{Section, SectionText};
use crate::proto::imap::response::{nstring, quoted_or_literal};

pub const MAX_DEPTH: usize = 20;
pub const MAX_PARTS: usize = 2000;
pub const MAX_PARAMS: usize = 64;

/// One entity: a message, or a body part.
#[derive(Debug, Default)]
pub struct Part {
    /// Where its header starts, where its body starts (after the empty
    /// line), and where it ends.
    pub start: usize,
    pub body: usize,
    pub end: usize,
    pub ctype: String,
    pub subtype: String,
    pub params: Vec<(String, String)>,
    pub id: Option<String>,
    pub description: Option<String>,
    pub encoding: Option<String>,
    pub md5: Option<String>,
    pub disposition: Option<(String, Vec<(String, String)>)>,
    pub language: Option<String>,
    pub location: Option<String>,
    pub children: Vec<Part>,
    /// For message/rfc822: the message inside.
    pub message: Option<Box<Part>>,
}

/// Header fields of an entity as (name, raw value unfolded) pairs.
pub fn fields(header: &[u8]) -> Vec<(&[u8], String)> {
    let mut out: Vec<(&[u8], String)> = Vec::new();
    for line in header.split(|&b| b == b'\n') {
        let line = line.strip_suffix(b"\r").unwrap_or(line);
        if line.is_empty() {
            break;
        }
        if line[0] == b' ' || line[0] == b'\t' {
            if let Some((_, value)) = out.last_mut() {
                value.push_str(&String::from_utf8_lossy(line));
            }
            continue;
        }
        if let Some(colon) = line.iter().position(|&b| b == b':') {
            let name = trim_bytes(&line[..colon]);
            out.push((
                name,
                String::from_utf8_lossy(&line[colon + 1..]).into_owned(),
            ));
        }
    }
    for (_, v) in &mut out {
        *v = v.trim().to_string();
    }
    out
}

fn trim_bytes(b: &[u8]) -> &[u8] {
    let start = b
        .iter()
        .position(|c| !c.is_ascii_whitespace())
        .unwrap_or(b.len());
    let end = b
        .iter()
        .rposition(|c| !c.is_ascii_whitespace())
        .map_or(start, |e| e + 1);
    &b[start..end]
}

/// The first field named `name` (case-insensitive).
pub fn field<'a>(fields: &'a [(&[u8], String)], name: &str) -> Option<&'a str> {
    fields
        .iter()
        .find(|(n, _)| n.eq_ignore_ascii_case(name.as_bytes()))
        .map(|(_, v)| v.as_str())
}

/// Where the body of an entity starting at `start` begins: after the first
/// empty line, or at `end` if there is none.
fn body_start(msg: &[u8], start: usize, end: usize) -> usize {
    let bytes = &msg[start..end];
    if bytes.starts_with(b"\r\n") {
        return start + 2;
    }
    if bytes.starts_with(b"\n") {
        return start + 1;
    }
    let mut i = 0;
    while let Some(off) = bytes[i..].iter().position(|&b| b == b'\n') {
        let lf = i + off;
        let next = &bytes[lf + 1..];
        if next.starts_with(b"\r\n") {
            return start + lf + 3;
        }
        if next.starts_with(b"\n") {
            return start + lf + 2;
        }
        i = lf + 1;
    }
    end
}

/// Parses the message `msg` (CRLF text).
pub fn parse(msg: &[u8]) -> Part {
    let mut parts = 0;
    entity(msg, 0, msg.len(), 0, false, &mut parts)
}

/// Parses only the header of a message (enough for ENVELOPE).
pub fn header_of(msg: &[u8]) -> &[u8] {
    &msg[..body_start(msg, 0, msg.len())]
}

fn entity(
    msg: &[u8],
    start: usize,
    end: usize,
    depth: usize,
    in_digest: bool,
    count: &mut usize,
) -> Part {
    *count += 1;
    let body = body_start(msg, start, end);
    let fields = fields(&msg[start..body]);
    let mut part = Part {
        start,
        body,
        end,
        ..Part::default()
    };
    let (ctype, subtype, params) = match field(&fields, "Content-Type").and_then(content_type) {
        Some(ct) => ct,
        None if in_digest => ("message".into(), "rfc822".into(), Vec::new()),
        None => (
            "text".into(),
            "plain".into(),
            vec![("charset".into(), "us-ascii".into())],
        ),
    };
    part.ctype = ctype;
    part.subtype = subtype;
    part.params = params;
    part.id = field(&fields, "Content-ID").map(str::to_string);
    part.description = field(&fields, "Content-Description").map(str::to_string);
    part.encoding = field(&fields, "Content-Transfer-Encoding").map(|e| e.to_string());
    part.md5 = field(&fields, "Content-MD5").map(str::to_string);
    part.language = field(&fields, "Content-Language").map(str::to_string);
    part.location = field(&fields, "Content-Location").map(str::to_string);
    part.disposition = field(&fields, "Content-Disposition").map(|d| {
        let (kind, rest) = d.split_once(';').unwrap_or((d, ""));
        (kind.trim().to_ascii_lowercase(), parameters(rest))
    });
    let deep_enough = depth >= MAX_DEPTH || *count >= MAX_PARTS;
    if part.ctype == "multipart" && !deep_enough {
        let boundary = part
            .params
            .iter()
            .find(|(k, _)| k == "boundary")
            .map(|(_, v)| v.clone());
        if let Some(boundary) = boundary.filter(|b| !b.is_empty()) {
            let digest = part.subtype == "digest";
            for (s, e) in split_multipart(msg, body, end, boundary.as_bytes()) {
                if *count >= MAX_PARTS {
                    break;
                }
                part.children
                    .push(entity(msg, s, e, depth + 1, digest, count));
            }
        }
    } else if part.ctype == "message" && part.subtype == "rfc822" && !deep_enough {
        let encoded = part.encoding.as_deref().is_some_and(|e| {
            e.eq_ignore_ascii_case("base64") || e.eq_ignore_ascii_case("quoted-printable")
        });
        if !encoded {
            part.message = Some(Box::new(entity(msg, body, end, depth + 1, false, count)));
        }
    }
    part
}

/// The (start, end) of each body part between `--boundary` lines.
fn split_multipart(msg: &[u8], body: usize, end: usize, boundary: &[u8]) -> Vec<(usize, usize)> {
    let mut parts = Vec::new();
    let mut current: Option<usize> = None;
    let mut line_start = body;
    while line_start < end {
        let line_end = msg[line_start..end]
            .iter()
            .position(|&b| b == b'\n')
            .map_or(end, |p| line_start + p + 1);
        let line = &msg[line_start..line_end];
        if line.len() >= 2 + boundary.len()
            && line.starts_with(b"--")
            && line[2..].starts_with(boundary)
        {
            let rest = &line[2 + boundary.len()..];
            let close = rest.starts_with(b"--");
            let tail = if close { &rest[2..] } else { rest };
            if tail.iter().all(|b| b.is_ascii_whitespace()) {
                if let Some(s) = current.take() {
                    // The CRLF before a delimiter belongs to the delimiter.
                    let mut e = line_start;
                    if e > s && msg[e - 1] == b'\n' {
                        e -= 1;
                        if e > s && msg[e - 1] == b'\r' {
                            e -= 1;
                        }
                    }
                    parts.push((s, e.max(s)));
                }
                if close {
                    return parts;
                }
                current = Some(line_end);
            }
        }
        line_start = line_end;
    }
    if let Some(s) = current {
        parts.push((s, end));
    }
    parts
}

/// Parameters of a header field, (name, value) in order.
type Params = Vec<(String, String)>;

/// `type/subtype; params` → lower-case type and subtype, parameters.
fn content_type(value: &str) -> Option<(String, String, Params)> {
    let (kind, rest) = value.split_once(';').unwrap_or((value, ""));
    let (t, s) = kind.split_once('/')?;
    let (t, s) = (t.trim().to_ascii_lowercase(), s.trim().to_ascii_lowercase());
    if t.is_empty() || s.is_empty() {
        return None;
    }
    Some((t, s, parameters(rest)))
}

/// `; name=value` parameters, RFC 2231 continuations (`name*0*=`, …)
/// joined into one `name*` (extended) or `name` value.
fn parameters(text: &str) -> Vec<(String, String)> {
    // (name, section index, extended, value)
    let mut raw: Vec<(String, u32, bool, String)> = Vec::new();
    let bytes = text.as_bytes();
    let mut i = 0;
    let mut seen = 0;
    while i < bytes.len() {
        // name
        while i < bytes.len() && (bytes[i] == b';' || bytes[i].is_ascii_whitespace()) {
            i += 1;
        }
        let ns = i;
        while i < bytes.len() && bytes[i] != b'=' && bytes[i] != b';' {
            i += 1;
        }
        let name = text[ns..i].trim().to_ascii_lowercase();
        if i >= bytes.len() || bytes[i] != b'=' {
            continue;
        }
        i += 1;
        while i < bytes.len() && bytes[i].is_ascii_whitespace() {
            i += 1;
        }
        let value = if i < bytes.len() && bytes[i] == b'"' {
            i += 1;
            let mut v = Vec::new();
            while i < bytes.len() && bytes[i] != b'"' {
                if bytes[i] == b'\\' && i + 1 < bytes.len() {
                    i += 1;
                }
                v.push(bytes[i]);
                i += 1;
            }
            i += 1;
            String::from_utf8_lossy(&v).into_owned()
        } else {
            let vs = i;
            while i < bytes.len() && bytes[i] != b';' {
                i += 1;
            }
            text[vs..i].trim().to_string()
        };
        seen += 1;
        if name.is_empty() || seen > MAX_PARAMS * 4 {
            continue;
        }
        let (base, extended) = match name.strip_suffix('*') {
            Some(b) => (b.to_string(), true),
            None => (name.clone(), false),
        };
        let (base, index) = match base.rsplit_once('*') {
            Some((b, n)) if n.bytes().all(|c| c.is_ascii_digit()) && !n.is_empty() => {
                (b.to_string(), n.parse::<u32>().unwrap_or(u32::MAX))
            }
            _ => (base, 0),
        };
        if index > 100 {
            continue;
        }
        raw.push((base, index, extended, value));
    }
    let mut out: Vec<(String, String)> = Vec::new();
    let mut done: Vec<&str> = Vec::new();
    for (name, ..) in &raw {
        if done.contains(&name.as_str()) || out.len() >= MAX_PARAMS {
            continue;
        }
        done.push(name);
        let mut sections: Vec<&(String, u32, bool, String)> =
            raw.iter().filter(|(n, ..)| n == name).collect();
        sections.sort_by_key(|(_, idx, ..)| *idx);
        sections.dedup_by_key(|(_, idx, ..)| *idx);
        let extended = sections.first().is_some_and(|s| s.2);
        let value: String = sections.iter().map(|s| s.3.as_str()).collect();
        let key = if extended {
            format!("{name}*")
        } else {
            name.clone()
        };
        out.push((key, value));
    }
    out
}

/// `body-fld-param`: `("name" "value" ...)` or NIL.
fn params_list(out: &mut Vec<u8>, params: &[(String, String)]) {
    if params.is_empty() {
        out.extend_from_slice(b"NIL");
        return;
    }
    out.push(b'(');
    for (i, (k, v)) in params.iter().enumerate() {
        if i > 0 {
            out.push(b' ');
        }
        quoted_or_literal(out, k.as_bytes());
        out.push(b' ');
        quoted_or_literal(out, v.as_bytes());
    }
    out.push(b')');
}

/// Lines of text: line ends, plus a last line without one (a part's
/// final CRLF belongs to the boundary that follows it, RFC 2046 §5.1.1).
fn count_lines(b: &[u8]) -> usize {
    let ends = b.iter().filter(|&&c| c == b'\n').count();
    ends + usize::from(!b.is_empty() && !b.ends_with(b"\n"))
}

/// BODYSTRUCTURE (`extended`) or BODY of a part (RFC 3501 `body`).
pub fn body_structure(out: &mut Vec<u8>, msg: &[u8], part: &Part, extended: bool) {
    out.push(b'(');
    if part.ctype == "multipart" && !part.children.is_empty() {
        for child in &part.children {
            body_structure(out, msg, child, extended);
        }
        out.push(b' ');
        quoted_or_literal(out, part.subtype.as_bytes());
        if extended {
            out.push(b' ');
            params_list(out, &part.params);
            extension(out, part);
        }
        out.push(b')');
        return;
    }
    let (ctype, subtype) = if part.ctype == "multipart" {
        // A multipart without parts (no boundary): report it as text.
        ("text", "plain")
    } else {
        (part.ctype.as_str(), part.subtype.as_str())
    };
    quoted_or_literal(out, ctype.as_bytes());
    out.push(b' ');
    quoted_or_literal(out, subtype.as_bytes());
    out.push(b' ');
    params_list(out, &part.params);
    out.push(b' ');
    nstring(out, part.id.as_deref().map(str::as_bytes));
    out.push(b' ');
    nstring(out, part.description.as_deref().map(str::as_bytes));
    out.push(b' ');
    let encoding = part
        .encoding
        .as_deref()
        .unwrap_or("7bit")
        .to_ascii_lowercase();
    quoted_or_literal(out, encoding.as_bytes());
    let content = &msg[part.body.min(part.end)..part.end];
    out.extend_from_slice(format!(" {}", content.len()).as_bytes());
    if let Some(inner) = &part.message {
        out.push(b' ');
        envelope(out, &msg[inner.start..inner.body]);
        out.push(b' ');
        body_structure(out, msg, inner, extended);
        out.extend_from_slice(format!(" {}", count_lines(content)).as_bytes());
    } else if ctype == "text" {
        out.extend_from_slice(format!(" {}", count_lines(content)).as_bytes());
    }
    if extended {
        out.push(b' ');
        nstring(out, part.md5.as_deref().map(str::as_bytes));
        extension(out, part);
    }
    out.push(b')');
}

/// `body-fld-dsp SP body-fld-lang SP body-fld-loc`, after a space.
fn extension(out: &mut Vec<u8>, part: &Part) {
    out.push(b' ');
    match &part.disposition {
        Some((kind, params)) => {
            out.push(b'(');
            quoted_or_literal(out, kind.as_bytes());
            out.push(b' ');
            params_list(out, params);
            out.push(b')');
        }
        None => out.extend_from_slice(b"NIL"),
    }
    out.push(b' ');
    match &part.language {
        Some(lang) => {
            let langs: Vec<&str> = lang
                .split(',')
                .map(str::trim)
                .filter(|l| !l.is_empty())
                .collect();
            out.push(b'(');
            for (i, l) in langs.iter().enumerate() {
                if i > 0 {
                    out.push(b' ');
                }
                quoted_or_literal(out, l.as_bytes());
            }
            out.push(b')');
        }
        None => out.extend_from_slice(b"NIL"),
    }
    out.push(b' ');
    nstring(out, part.location.as_deref().map(str::as_bytes));
}

/// ENVELOPE of a message from its header (RFC 3501 §7.4.2).
pub fn envelope(out: &mut Vec<u8>, header: &[u8]) {
    let fields = fields(header);
    let f = |name: &str| field(&fields, name);
    out.push(b'(');
    nstring(out, f("Date").map(str::as_bytes));
    out.push(b' ');
    nstring(out, f("Subject").map(str::as_bytes));
    let from = f("From").map(parse_addresses).unwrap_or_default();
    for name in ["From", "Sender", "Reply-To", "To", "Cc", "Bcc"] {
        out.push(b' ');
        let addrs = f(name).map(parse_addresses).unwrap_or_default();
        // Sender and Reply-To absent or empty are From (RFC 3501 §7.4.2,
        // RFC 9051 §7.5.2).
        let addrs = if addrs.is_empty() && matches!(name, "Sender" | "Reply-To") {
            &from
        } else {
            &addrs
        };
        address_list(out, addrs);
    }
    out.push(b' ');
    nstring(out, f("In-Reply-To").map(str::as_bytes));
    out.push(b' ');
    nstring(out, f("Message-ID").map(str::as_bytes));
    out.push(b')');
}

/// One address of a list, as ENVELOPE gives it (RFC 9051 §7.5.2): a
/// group start has only `mailbox` (the group's name), a group end nothing.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Addr {
    pub name: Option<String>,
    /// The source route (`@a,@b`) of an obsolete route-addr.
    pub adl: Option<String>,
    pub mailbox: Option<String>,
    pub host: Option<String>,
}

impl Addr {
    fn group_start(name: String) -> Addr {
        Addr {
            mailbox: Some(name),
            ..Addr::default()
        }
    }

    pub fn is_group_start(&self) -> bool {
        self.host.is_none() && self.mailbox.is_some()
    }
}

/// A space inside a quoted string of a phrase while an address is read:
/// an addr-spec without angle brackets loses the spaces around its words
/// (`user @ host`), but not those it quotes (`"john doe"@host`).
const QUOTED_SPACE: char = '\u{E000}';

/// Most addresses of one header reported in an ENVELOPE.
const MAX_ADDRESSES: usize = 1000;

fn address_list(out: &mut Vec<u8>, addrs: &[Addr]) {
    if addrs.is_empty() {
        out.extend_from_slice(b"NIL");
        return;
    }
    out.push(b'(');
    for a in addrs {
        out.push(b'(');
        nstring(out, a.name.as_deref().map(str::as_bytes));
        out.push(b' ');
        nstring(out, a.adl.as_deref().map(str::as_bytes));
        out.push(b' ');
        nstring(out, a.mailbox.as_deref().map(str::as_bytes));
        out.push(b' ');
        nstring(out, a.host.as_deref().map(str::as_bytes));
        out.push(b')');
    }
    out.push(b')');
}

/// RFC 5322 `address-list`, leniently: quoted phrases, comments, angle
/// addresses, groups.
pub fn parse_addresses(value: &str) -> Vec<Addr> {
    let mut out = Vec::new();
    let mut phrase = String::new();
    let mut addr = String::new();
    let mut comment_name = String::new();
    let mut in_angle = false;
    let mut in_group = false;
    let mut chars = value.chars().peekable();
    let finish =
        |phrase: &mut String, addr: &mut String, comment: &mut String, out: &mut Vec<Addr>| {
            let (phrase_t, addr_t) = (phrase.trim().to_string(), addr.trim().to_string());
            let (spec, name) = if addr_t.is_empty() {
                // No angle brackets: the phrase is the address itself, the
                // white space around its words dropped, what was quoted kept.
                (phrase_t.replace(' ', "").replace(QUOTED_SPACE, " "), None)
            } else {
                let name = phrase_t.replace(QUOTED_SPACE, " ");
                (addr_t, (!name.is_empty()).then_some(name))
            };
            let name = name.or_else(|| {
                let c = comment.trim();
                (!c.is_empty()).then(|| c.to_string())
            });
            if !spec.is_empty() {
                // A source route (`@a,@b:user@host`) goes in the adl.
                let (adl, spec) = match spec.rsplit_once(':') {
                    Some((route, rest)) if route.starts_with('@') => {
                        (Some(route.to_string()), rest.to_string())
                    }
                    Some((_, rest)) => (None, rest.to_string()),
                    None => (None, spec),
                };
                // No domain (`From: user`): an empty host, not NIL, which
                // would read as the start of a group (RFC 9051 §7.5.2).
                let (mailbox, host) = match spec.rsplit_once('@') {
                    Some((m, h)) => (m.to_string(), h.to_string()),
                    None => (spec.clone(), String::new()),
                };
                if out.len() < MAX_ADDRESSES {
                    out.push(Addr {
                        name,
                        adl,
                        mailbox: Some(mailbox),
                        host: Some(host),
                    });
                }
            }
            phrase.clear();
            addr.clear();
            comment.clear();
        };
    while let Some(c) = chars.next() {
        match c {
            '"' => {
                let (target, space) = if in_angle {
                    (&mut addr, ' ')
                } else {
                    (&mut phrase, QUOTED_SPACE)
                };
                while let Some(q) = chars.next() {
                    match q {
                        '"' => break,
                        '\\' => {
                            if let Some(e) = chars.next() {
                                target.push(if e == ' ' { space } else { e });
                            }
                        }
                        ' ' => target.push(space),
                        _ => target.push(q),
                    }
                }
            }
            '(' => {
                let mut depth = 1;
                let mut text = String::new();
                for q in chars.by_ref() {
                    match q {
                        '(' => depth += 1,
                        ')' => {
                            depth -= 1;
                            if depth == 0 {
                                break;
                            }
                        }
                        _ => {}
                    }
                    text.push(q);
                }
                comment_name = text;
            }
            '<' => in_angle = true,
            '>' => in_angle = false,
            ':' if !in_angle && !in_group => {
                in_group = true;
                let group = phrase.trim().replace(QUOTED_SPACE, " ");
                phrase.clear();
                if out.len() < MAX_ADDRESSES {
                    out.push(Addr::group_start(group));
                }
            }
            ';' if !in_angle && in_group => {
                finish(&mut phrase, &mut addr, &mut comment_name, &mut out);
                in_group = false;
                out.push(Addr::default());
            }
            ',' if !in_angle => finish(&mut phrase, &mut addr, &mut comment_name, &mut out),
            _ if in_angle => addr.push(c),
            _ => phrase.push(c),
        }
        if out.len() >= MAX_ADDRESSES {
            break;
        }
    }
    finish(&mut phrase, &mut addr, &mut comment_name, &mut out);
    if in_group {
        out.push(Addr::default());
    }
    out
}

/// Fields mail-parser reads as message ids, without their angle brackets:
/// IMAP's SEARCH HEADER compares the text as it stands (RFC 9051 §6.4.4,
/// `HEADER Message-ID "<id@host>"`), as Dovecot does.
const ID_FIELDS: [&str; 6] = [
    "MESSAGE-ID",
    "IN-REPLY-TO",
    "REFERENCES",
    "RESENT-MESSAGE-ID",
    "CONTENT-ID",
    "LIST-ID",
];

/// Header fields as (upper-case name, value) with RFC 2047 words decoded
/// and addresses written out as `Name <addr>`; other structured fields
/// (Date, Message-ID, List-Id) as they stand, unfolded.
pub fn decoded_headers(header: &[u8]) -> Vec<(String, String)> {
    let Some(message) = mail_parser::MessageParser::new().parse_headers(header) else {
        return Vec::new();
    };
    message
        .headers()
        .iter()
        .map(|h| {
            let name = h.name().to_ascii_uppercase();
            let value = match h.value() {
                _ if ID_FIELDS.contains(&name.as_str()) => raw_value(header, h),
                mail_parser::HeaderValue::Text(t) => t.to_string(),
                mail_parser::HeaderValue::TextList(l) => l.join(" "),
                mail_parser::HeaderValue::Address(a) => address_text(a),
                _ => raw_value(header, h),
            };
            (name, value)
        })
        .collect()
}

/// A field's value as it stands in `header`, unfolded, without the white
/// space at its ends.
fn raw_value(header: &[u8], h: &mail_parser::Header<'_>) -> String {
    let (s, e) = (h.offset_start() as usize, h.offset_end() as usize);
    let text = String::from_utf8_lossy(header.get(s..e).unwrap_or_default());
    text.replace("\r\n", "")
        .replace('\n', "")
        .trim()
        .to_string()
}

fn address_text(a: &mail_parser::Address<'_>) -> String {
    let one = |addr: &mail_parser::Addr<'_>| {
        let name = addr.name.as_deref().unwrap_or("");
        let address = addr.address.as_deref().unwrap_or("");
        // A name with a colon is quoted, so it never reads as a group's.
        if name.contains([':', ',', '<']) {
            format!("\"{}\" <{address}>", name.replace('"', ""))
        } else {
            format!("{name} <{address}>")
        }
    };
    match a {
        mail_parser::Address::List(list) => list.iter().map(one).collect::<Vec<_>>().join(", "),
        mail_parser::Address::Group(groups) => groups
            .iter()
            .map(|g| {
                format!(
                    "{}: {}",
                    g.name.as_deref().unwrap_or(""),
                    g.addresses.iter().map(one).collect::<Vec<_>>().join(", ")
                )
            })
            .collect::<Vec<_>>()
            .join("; "),
    }
}

/// The part a section's part numbers name (RFC 3501 §6.4.5), or None.
pub fn resolve<'a>(root: &'a Part, path: &[u32]) -> Option<&'a Part> {
    let mut cur = root;
    let mut context: Vec<&Part> = message_children(root);
    for &n in path {
        cur = *context.get(n as usize - 1)?;
        context = if cur.ctype == "multipart" && !cur.children.is_empty() {
            cur.children.iter().collect()
        } else if let Some(inner) = &cur.message {
            message_children(inner)
        } else {
            Vec::new()
        };
    }
    Some(cur)
}

/// The bytes of a `BODY[section]` (RFC 3501 §6.4.5) of the message `m`
/// whose structure is `root`; `None` for a part that does not exist.
pub fn section_data(m: &[u8], root: Option<&Part>, section: &Section) -> Option<Vec<u8>> {
    if section.part.is_empty() {
        let header = header_of(m);
        return Some(match &section.text {
            SectionText::Full => m.to_vec(),
            SectionText::Header => header.to_vec(),
            SectionText::Text => m[header.len()..].to_vec(),
            SectionText::HeaderFields { not, fields } => header_fields(header, fields, *not),
            SectionText::Mime => return None,
        });
    }
    let part = resolve(root?, &section.part)?;
    Some(match &section.text {
        SectionText::Full => m[part.body.min(part.end)..part.end].to_vec(),
        SectionText::Mime => m[part.start..part.body].to_vec(),
        text => {
            // HEADER and TEXT of a part are those of the message it holds.
            let inner = part.message.as_deref()?;
            let header = &m[inner.start..inner.body];
            match text {
                SectionText::Header => header.to_vec(),
                SectionText::Text => m[inner.body..inner.end].to_vec(),
                SectionText::HeaderFields { not, fields } => header_fields(header, fields, *not),
                _ => return None,
            }
        }
    })
}

/// A part's body fit for `BODY[part]` when it holds a NUL, which no
/// IMAP literal may carry (RFC 3516 §4.2, RFC 9051 §4.3): base64 in lines
/// of 76 characters, as a content-transfer-encoding would give it.
/// Anything else is sent as it is.
pub fn without_nul(data: Vec<u8>) -> Vec<u8> {
    use base64::Engine;
    if !data.contains(&0) {
        return data;
    }
    let encoded = base64::engine::general_purpose::STANDARD.encode(&data);
    let mut out = Vec::with_capacity(encoded.len() + encoded.len() / 38 + 2);
    for line in encoded.as_bytes().chunks(76) {
        out.extend_from_slice(line);
        out.extend_from_slice(b"\r\n");
    }
    out
}

/// What `BINARY[part]` gives.
pub enum Binary {
    Data(Vec<u8>),
    NoSuchPart,
    UnknownEncoding,
}

/// `BINARY[part]` (RFC 3516): a part's body with its
/// Content-Transfer-Encoding undone;
/// the empty part number is the whole message, as it is.
pub fn binary_data(m: &[u8], root: Option<&Part>, part: &[u32]) -> Binary {
    if part.is_empty() {
        return Binary::Data(m.to_vec());
    }
    let Some(p) = root.and_then(|root| resolve(root, part)) else {
        return Binary::NoSuchPart;
    };
    let body = &m[p.body.min(p.end)..p.end];
    let encoding = p.encoding.as_deref().unwrap_or("7bit").to_ascii_lowercase();
    match encoding.as_str() {
        "7bit" | "8bit" | "binary" => Binary::Data(body.to_vec()),
        // Broken encodings decode as far as they go: the client asked for
        // the bytes, and a lenient decoder gives the most of them.
        "base64" => Binary::Data(base64_lenient(body)),
        "quoted-printable" => Binary::Data(
            mail_parser::decoders::quoted_printable::quoted_printable_decode(body)
                .unwrap_or_else(|| body.to_vec()),
        ),
        _ => Binary::UnknownEncoding,
    }
}

/// Base64 as RFC 2045 §6.8 has it read: characters outside the alphabet
/// (line ends, and junk a broken sender left) are ignored, and the data
/// ends at the first `=`. A strict decoder gives nothing at all for one
/// stray byte.
fn base64_lenient(body: &[u8]) -> Vec<u8> {
    use base64::Engine;
    use base64::engine::{DecodePaddingMode, GeneralPurpose, GeneralPurposeConfig};
    const LENIENT: GeneralPurpose = GeneralPurpose::new(
        &base64::alphabet::STANDARD,
        GeneralPurposeConfig::new()
            .with_decode_allow_trailing_bits(true)
            .with_decode_padding_mode(DecodePaddingMode::RequireNone),
    );
    let mut clean: Vec<u8> = body
        .iter()
        .copied()
        .take_while(|&b| b != b'=')
        .filter(|b| b.is_ascii_alphanumeric() || *b == b'+' || *b == b'/')
        .collect();
    if clean.len() % 4 == 1 {
        // A lone last character carries no whole byte.
        clean.pop();
    }
    LENIENT.decode(&clean).unwrap_or_default()
}

/// The numbered parts of a message: its parts if multipart, else its body
/// as part 1.
fn message_children(message: &Part) -> Vec<&Part> {
    if message.ctype == "multipart" && !message.children.is_empty() {
        message.children.iter().collect()
    } else {
        vec![message]
    }
}

/// The header fields of `header` whose names are (or with `not`, are not)
/// in `names`, followed by the empty line.
pub fn header_fields(header: &[u8], names: &[String], not: bool) -> Vec<u8> {
    let mut out = Vec::new();
    let mut keep = false;
    for line in header.split_inclusive(|&b| b == b'\n') {
        let bare = line.strip_suffix(b"\n").unwrap_or(line);
        let bare = bare.strip_suffix(b"\r").unwrap_or(bare);
        if bare.is_empty() {
            break;
        }
        if bare[0] != b' ' && bare[0] != b'\t' {
            let name = bare
                .split(|&b| b == b':')
                .next()
                .map(trim_bytes)
                .unwrap_or(b"");
            let listed = names
                .iter()
                .any(|n| n.as_bytes().eq_ignore_ascii_case(name));
            keep = listed != not;
        }
        if keep {
            out.extend_from_slice(line);
        }
    }
    out.extend_from_slice(b"\r\n");
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn binary_undoes_transfer_encodings() {
        let m = crate::proto::message::wire_form(b"Content-Type: multipart/mixed; boundary=b\n\n--b\nContent-Transfer-Encoding: base64\n\nAAEC\nAwQ=\n--b\nContent-Transfer-Encoding: quoted-printable\n\ncaf=C3=A9 =\nau lait\n--b\nContent-Transfer-Encoding: x-uuencode\n\nbegin\n--b--\n");
        let root = parse(&m);
        let data = |part: &[u32]| match binary_data(&m, Some(&root), part) {
            Binary::Data(d) => Ok(d),
            Binary::NoSuchPart => Err("no such part"),
            Binary::UnknownEncoding => Err("unknown"),
        };
        assert_eq!(data(&[1]), Ok(vec![0, 1, 2, 3, 4]));
        assert_eq!(data(&[2]), Ok("café au lait".as_bytes().to_vec()));
        assert_eq!(data(&[3]), Err("unknown"));
        assert_eq!(data(&[9]), Err("no such part"));
    }

    fn bs(msg: &str) -> String {
        let msg = crate::proto::message::to_crlf(msg.as_bytes());
        let part = parse(&msg);
        let mut out = Vec::new();
        body_structure(&mut out, &msg, &part, true);
        String::from_utf8(out).unwrap()
    }

    #[test]
    fn simple_text_message() {
        assert_eq!(
            bs("Subject: x\n\nhello\nworld\n"),
            "(\"text\" \"plain\" (\"charset\" \"us-ascii\") NIL NIL \"7bit\" 14 2 NIL NIL NIL NIL)"
        );
    }

    #[test]
    fn nested_multipart_with_message_rfc822_and_rfc2231_filename() {
        let msg = "From: a@b\nContent-Type: multipart/mixed; boundary=\"outer\"\n\npreamble\n--outer\nContent-Type: multipart/alternative; boundary=inner\n\n--inner\nContent-Type: text/plain; charset=utf-8\n\nplain\n--inner\nContent-Type: text/html\n\n<p>html</p>\n--inner--\n--outer\nContent-Type: message/rfc822\n\nSubject: inside\nFrom: \"Inner, Person\" <in@side.test>\n\ninner body\n--outer\nContent-Type: application/pdf\nContent-Disposition: attachment;\n filename*0*=utf-8''%E2%82%AC%20rates;\n filename*1*=%20.pdf\nContent-Transfer-Encoding: base64\n\nAAAA\n--outer--\nepilogue\n";
        let got = bs(msg);
        let expected = concat!(
            "(((\"text\" \"plain\" (\"charset\" \"utf-8\") NIL NIL \"7bit\" 5 1 NIL NIL NIL NIL)",
            "(\"text\" \"html\" NIL NIL NIL \"7bit\" 11 1 NIL NIL NIL NIL) \"alternative\" (\"boundary\" \"inner\") NIL NIL NIL)",
            "(\"message\" \"rfc822\" NIL NIL NIL \"7bit\" 67 ",
            "(NIL \"inside\" ((\"Inner, Person\" NIL \"in\" \"side.test\")) ((\"Inner, Person\" NIL \"in\" \"side.test\")) ((\"Inner, Person\" NIL \"in\" \"side.test\")) NIL NIL NIL NIL NIL) ",
            "(\"text\" \"plain\" (\"charset\" \"us-ascii\") NIL NIL \"7bit\" 10 1 NIL NIL NIL NIL) 4 NIL NIL NIL NIL)",
            "(\"application\" \"pdf\" NIL NIL NIL \"base64\" 4 NIL (\"attachment\" (\"filename*\" \"utf-8''%E2%82%AC%20rates%20.pdf\")) NIL NIL)",
            " \"mixed\" (\"boundary\" \"outer\") NIL NIL NIL)"
        );
        assert_eq!(got, expected);
        let crlf = crate::proto::message::to_crlf(msg.as_bytes());
        let root = parse(&crlf);
        let p = resolve(&root, &[2, 1]).unwrap();
        assert_eq!(&crlf[p.body..p.end], b"inner body");
        let p = resolve(&root, &[1, 2]).unwrap();
        assert_eq!(&crlf[p.body..p.end], b"<p>html</p>");
        assert!(resolve(&root, &[9]).is_none());
    }

    #[test]
    fn addresses_groups_and_comments() {
        let a = parse_addresses(
            "Joe <joe@x.test>, undisclosed-recipients:;, \"A \\\"B\\\"\" <ab@y>, c@z (Cee)",
        );
        let addr = |name: Option<&str>, mailbox: &str, host: &str| Addr {
            name: name.map(str::to_string),
            adl: None,
            mailbox: Some(mailbox.into()),
            host: Some(host.into()),
        };
        assert_eq!(
            a,
            vec![
                addr(Some("Joe"), "joe", "x.test"),
                Addr::group_start("undisclosed-recipients".into()),
                Addr::default(),
                addr(Some("A \"B\""), "ab", "y"),
                addr(Some("Cee"), "c", "z"),
            ]
        );
        let routed = parse_addresses("Old <@relay.test,@b.test:u@h.test>");
        assert_eq!(routed[0].adl.as_deref(), Some("@relay.test,@b.test"));
        assert_eq!(routed[0].mailbox.as_deref(), Some("u"));
        // A quoted local part keeps its spaces; the words of a bare
        // addr-spec lose the white space between them.
        assert_eq!(
            parse_addresses("\"quoted local\"@x.test, \"A B\" <\"c d\"@y>, u @ z"),
            vec![
                addr(None, "quoted local", "x.test"),
                addr(Some("A B"), "c d", "y"),
                addr(None, "u", "z"),
            ]
        );
        // No domain: an empty host, which no client reads as a group.
        let bare = parse_addresses("user");
        assert_eq!(bare, vec![addr(None, "user", "")]);
        assert!(!bare[0].is_group_start());
    }

    #[test]
    fn base64_ignores_what_is_not_base64() {
        assert_eq!(base64_lenient(b"QUJD!!!REVG"), b"ABCDEF");
        assert_eq!(base64_lenient(b"QUJD\r\nREVG\r\n"), b"ABCDEF");
        assert_eq!(base64_lenient(b"QUI=\r\n"), b"AB");
        assert_eq!(base64_lenient(b"QUJDR"), b"ABC");
        assert_eq!(base64_lenient(b""), b"");
    }

    #[test]
    fn id_fields_keep_their_angle_brackets_unfolded() {
        let h = decoded_headers(
            b"Message-ID: <abc@def>\r\nReferences: <one@x>\r\n <two@x>\r\nIn-Reply-To: <two@x>\r\nList-Id: Dev <dev.lists.test>\r\n\r\n",
        );
        let value = |name: &str| h.iter().find(|(n, _)| n == name).map(|(_, v)| v.as_str());
        assert_eq!(value("MESSAGE-ID"), Some("<abc@def>"));
        assert_eq!(value("REFERENCES"), Some("<one@x> <two@x>"));
        assert_eq!(value("IN-REPLY-TO"), Some("<two@x>"));
        assert_eq!(value("LIST-ID"), Some("Dev <dev.lists.test>"));
    }

    #[test]
    fn hostile_messages_stay_bounded() {
        let mut m = String::from("Content-Type: text/plain");
        for i in 0..5000 {
            m.push_str(&format!(";\n p*{i}*=x"));
        }
        m.push_str("\n\nbody\n");
        let start = std::time::Instant::now();
        let s = bs(&m);
        assert!(s.len() < 10_000, "{}", s.len());
        let mut deep = String::new();
        for i in 0..500 {
            deep.push_str(&format!(
                "Content-Type: multipart/mixed; boundary=b{i}\n\n--b{i}\n"
            ));
        }
        deep.push_str("\nx\n");
        let _ = bs(&deep);
        let mut many = String::new();
        for i in 0..100_000 {
            many.push_str(&format!("To: u{i}@x.test\n"));
        }
        many.push_str("\nbody\n");
        let mut out = Vec::new();
        envelope(&mut out, many.as_bytes());
        assert!(out.len() < 1000);
        assert!(start.elapsed() < std::time::Duration::from_secs(5));
    }
}
