//! Small operations on message text that several programs share: line-end
//! rules, finding and reading header fields, dates.
//!
//! Every line-end rule of the tree is here, one function (or one streaming
//! encoder) each:
//!
//! - The queue holds bodies with CRLF line ends (the wire form of SMTP).
//!   Local injectors hand us LF, CRLF or a mix; [`to_crlf`] makes one form
//!   of it, and treats a bare CR as a line end too, so no bare CR ever
//!   reaches the queue (a bare CR or LF is what the 2023 SMTP smuggling
//!   attacks ride on).
//! - Maildirs hold LF. Delivery (`store::maildir`) writes CRLF as LF and
//!   keeps a bare CR as content, chunk by chunk with [`CrlfToLf`];
//!   [`crlf_to_lf`] is the same rule whole, for programs that read mail
//!   the Unix way (a pipe alias, Sieve's `pipe`).
//! - What POP3 and IMAP send of a stored message, and what the `,W=` of a
//!   maildir name counts, is its wire form: [`wire_form`] for a message in
//!   memory, [`WireForm`] chunk by chunk (POP3 RETR streams it, delivery
//!   counts it without writing it). Its rule: every LF not already preceded
//!   by CR becomes CRLF, a CR LF stays as it is, and a last line without a
//!   line end gets CRLF (a message is lines, RFC 5322 §2.1). So a CR that
//!   delivery kept before an LF reads as that line's end, exactly as `,W=`
//!   counted it, and one message has one size in IMAP's RFC822.SIZE, in its
//!   `BODY[]` literal, in POP3's LIST and in the octets of RETR.

/// Where `byte` first is in `haystack`. The search for line ends in this
/// module and in delivery. Not memchr's top-level functions: they detect
/// AVX2 on first use, with `cpuid`, which traps on a virtual machine
/// (contrib/install/build-static), and in a process that delivers one
/// message that cost more than the wider search saved (0.1 ms and 6 page
/// faults per mail-inject delivery). SSE2 is part of x86-64 itself, so
/// its searcher needs no detection; elsewhere the portable one tests a
/// word at a time.
pub fn find_byte(byte: u8, haystack: &[u8]) -> Option<usize> {
    #[cfg(target_arch = "x86_64")]
    if let Some(search) = memchr::arch::x86_64::sse2::memchr::One::new(byte) {
        return search.find(haystack);
    }
    memchr::arch::all::memchr::One::new(byte).find(haystack)
}

/// Where `a` or `b` first is in `haystack` (see [`find_byte`]).
fn find_either(a: u8, b: u8, haystack: &[u8]) -> Option<usize> {
    #[cfg(target_arch = "x86_64")]
    if let Some(search) = memchr::arch::x86_64::sse2::memchr::Two::new(a, b) {
        return search.find(haystack);
    }
    memchr::arch::all::memchr::Two::new(a, b).find(haystack)
}

/// Canonical CRLF line ends: CRLF stays, a bare LF or a bare CR becomes CRLF.
/// A missing final line end is added.
pub fn to_crlf(data: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(data.len() + data.len() / 32 + 2);
    // Whole runs between line ends are copied at once: the search tests
    // 16 bytes at a time (see `find_byte`), where a byte loop cost about a
    // dozen instructions a byte (this runs on every message a local
    // program injects).
    let mut rest = data;
    while let Some(at) = find_either(b'\r', b'\n', rest) {
        out.extend_from_slice(&rest[..at]);
        out.extend_from_slice(b"\r\n");
        let crlf = rest[at] == b'\r' && rest.get(at + 1) == Some(&b'\n');
        rest = &rest[at + 1 + usize::from(crlf)..];
    }
    out.extend_from_slice(rest);
    if !out.is_empty() && !out.ends_with(b"\r\n") {
        out.extend_from_slice(b"\r\n");
    }
    out
}

/// CRLF → LF, for programs that read mail the Unix way (a pipe alias,
/// Sieve's `pipe`). A bare CR stays: it was refused or canonicalized on
/// the way in, and this is no place to guess.
pub fn crlf_to_lf(data: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(data.len());
    let mut lf = CrlfToLf::default();
    lf.feed(data, &mut out);
    lf.finish(&mut out);
    out
}

/// [`crlf_to_lf`] as a stream, for delivery's copy: chunks of any size
/// give the same bytes, a CR that ends one chunk waiting for the next.
#[derive(Debug, Default)]
pub struct CrlfToLf {
    pending_cr: bool,
}

impl CrlfToLf {
    /// Decodes a chunk into `out`. Runs between CRs are copied whole (see
    /// `to_crlf`).
    pub fn feed(&mut self, chunk: &[u8], out: &mut Vec<u8>) {
        let mut rest = chunk;
        if rest.is_empty() {
            return;
        }
        if std::mem::take(&mut self.pending_cr) && rest[0] != b'\n' {
            out.push(b'\r');
        }
        while let Some(at) = find_byte(b'\r', rest) {
            out.extend_from_slice(&rest[..at]);
            match rest.get(at + 1) {
                None => self.pending_cr = true,
                Some(&b'\n') => {}
                Some(_) => out.push(b'\r'),
            }
            rest = &rest[at + 1..];
        }
        out.extend_from_slice(rest);
    }

    /// Ends the stream: a CR that ended the last chunk is content.
    pub fn finish(&mut self, out: &mut Vec<u8>) {
        if std::mem::take(&mut self.pending_cr) {
            out.push(b'\r');
        }
    }
}

/// The wire form of a stored message, which IMAP sends and `,W=` counts
/// (the rule is in the module note): LF → CRLF, CRLF kept, a missing last
/// line end added.
pub fn wire_form(file: &[u8]) -> Vec<u8> {
    let lines = memchr::arch::all::memchr::One::new(b'\n').count(file);
    let mut out = Vec::with_capacity(file.len() + lines + 2);
    let mut wire = WireForm::new();
    wire.encode(file, &mut out);
    wire.finish(&mut out);
    out
}

/// The wire form as a stream: feed a stored message in chunks of any size
/// to encode it ([`WireForm::encode`], or line by line with
/// [`WireForm::encode_line`] for a protocol that frames lines, as POP3
/// dot-stuffs them) or only to count it ([`WireForm::count`]). Chunked or
/// not, the bytes and the count are those of [`wire_form`].
#[derive(Debug, Clone)]
pub struct WireForm {
    /// The last byte fed; LF before any, so an empty message is complete.
    last: u8,
    /// Bytes of the current line so far, before its LF.
    line: u64,
    /// Octets of wire form so far.
    octets: u64,
}

/// A line [`WireForm::encode_line`] ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LineEnd {
    /// Nothing before its line end (LF or CR LF): the empty line that ends
    /// a header.
    pub empty: bool,
}

impl Default for WireForm {
    fn default() -> Self {
        WireForm {
            last: b'\n',
            line: 0,
            octets: 0,
        }
    }
}

impl WireForm {
    pub fn new() -> WireForm {
        WireForm::default()
    }

    /// Octets of wire form so far.
    pub fn octets(&self) -> u64 {
        self.octets
    }

    /// The octets once [`WireForm::finish`]ed: the size of the message on
    /// the wire, known before it is sent.
    pub fn octets_when_finished(&self) -> u64 {
        self.octets + if self.at_line_start() { 0 } else { 2 }
    }

    /// Nothing fed yet, or the last byte fed ended a line.
    pub fn at_line_start(&self) -> bool {
        self.last == b'\n'
    }

    /// Encodes the start of `input` into `out`, up to and including its
    /// first LF (all of it when it has none), and moves `input` past what
    /// it took; says so when that ended a line.
    pub fn encode_line(&mut self, input: &mut &[u8], out: &mut Vec<u8>) -> Option<LineEnd> {
        let (content, end) = self.take_line(input);
        out.extend_from_slice(content);
        let (ending, line) = end?;
        out.extend_from_slice(ending);
        Some(line)
    }

    /// Encodes a whole chunk into `out`.
    pub fn encode(&mut self, mut chunk: &[u8], out: &mut Vec<u8>) {
        while !chunk.is_empty() {
            self.encode_line(&mut chunk, out);
        }
    }

    /// Counts a chunk's wire octets without writing them.
    pub fn count(&mut self, mut chunk: &[u8]) {
        while !chunk.is_empty() {
            self.take_line(&mut chunk);
        }
    }

    /// Ends the message: CRLF after a last line that has no line end.
    pub fn finish(&mut self, out: &mut Vec<u8>) {
        if !self.at_line_start() {
            out.extend_from_slice(b"\r\n");
            self.octets += 2;
            self.last = b'\n';
            self.line = 0;
        }
    }

    /// The one place the rule is applied: takes the content before the
    /// first LF of `input` (all of it when it has none) and, if there was
    /// an LF, gives the bytes that end the line on the wire: CRLF, or a
    /// lone LF when the line's last byte, sent as content, was a CR.
    fn take_line<'a>(
        &mut self,
        input: &mut &'a [u8],
    ) -> (&'a [u8], Option<(&'static [u8], LineEnd)>) {
        let whole: &'a [u8] = input;
        let lf = find_byte(b'\n', whole);
        let content = &whole[..lf.unwrap_or(whole.len())];
        *input = &whole[lf.map_or(whole.len(), |lf| lf + 1)..];
        if let Some(&last) = content.last() {
            self.last = last;
        }
        self.octets += content.len() as u64;
        self.line += content.len() as u64;
        if lf.is_none() {
            return (content, None);
        }
        let after_cr = self.last == b'\r';
        let line = LineEnd {
            empty: self.line == 0 || (self.line == 1 && after_cr),
        };
        let ending: &'static [u8] = if after_cr { b"\n" } else { b"\r\n" };
        self.octets += ending.len() as u64;
        self.last = b'\n';
        self.line = 0;
        (content, Some((ending, line)))
    }
}

/// The length of the header block including its terminating empty line, in
/// a CRLF message; the whole message when it has no body.
pub fn header_len(message: &[u8]) -> usize {
    if message.starts_with(b"\r\n") {
        return 2;
    }
    // The empty line's LF, found LF by LF (see `find_byte`).
    let mut from = 0;
    while let Some(at) = find_byte(b'\n', &message[from..]) {
        let lf = from + at;
        if lf >= 3 && &message[lf - 3..=lf] == b"\r\n\r\n" {
            return lf + 1;
        }
        from = lf + 1;
    }
    message.len()
}

/// The header fields of a CRLF header block as (name, unfolded value) pairs.
pub fn header_fields(headers: &[u8]) -> Vec<(String, String)> {
    let text = String::from_utf8_lossy(headers);
    let mut fields: Vec<(String, String)> = Vec::new();
    for line in text.split("\r\n") {
        if line.is_empty() {
            break;
        }
        if line.starts_with([' ', '\t']) {
            if let Some((_, value)) = fields.last_mut() {
                value.push(' ');
                value.push_str(line.trim());
            }
            continue;
        }
        if let Some((name, value)) = line.split_once(':') {
            fields.push((name.trim().to_string(), value.trim().to_string()));
        }
    }
    fields
}

/// True if the header block has a field of this name (case-insensitive).
pub fn has_header(headers: &[u8], name: &str) -> bool {
    header_fields(headers)
        .iter()
        .any(|(n, _)| n.eq_ignore_ascii_case(name))
}

/// The `Date:` and `Message-ID:` a submitted message must have and
/// `headers` lacks (RFC 6409 §8.2, §8.3 let the submission agent add
/// them), as whole header lines: `id` is the queue id, unique per host.
pub fn missing_origin_fields(headers: &[u8], id: &str, hostname: &str, now: u64) -> Vec<String> {
    let mut added = Vec::new();
    if !has_header(headers, "Date") {
        added.push(format!("Date: {}", rfc5322_date(now)));
    }
    if !has_header(headers, "Message-ID") {
        added.push(format!("Message-ID: <{id}@{hostname}>"));
    }
    added
}

/// `head`, a CRLF header block as [`header_len`] cuts it, with `fields`
/// (whole lines without their CRLF) after the fields already there: where
/// Postfix's cleanup adds the From, Date and Message-ID a message lacks.
/// The trace fields stay on top, as RFC 5321 §4.4 wants the Received line
/// "at the beginning of the message content". A block cut short of its
/// empty line (read up to a limit) gets them before its last field, which
/// may be incomplete, so no field is ever split.
pub fn append_fields(head: &[u8], fields: &[String]) -> Vec<u8> {
    let at = if head == b"\r\n" {
        0
    } else if head.ends_with(b"\r\n\r\n") {
        head.len() - 2
    } else {
        let (mut last_field, mut pos) = (0, 0);
        for line in head.split_inclusive(|&b| b == b'\n') {
            if !line.starts_with(b" ") && !line.starts_with(b"\t") {
                last_field = pos;
            }
            pos += line.len();
        }
        last_field
    };
    let mut out =
        Vec::with_capacity(head.len() + fields.iter().map(|f| f.len() + 2).sum::<usize>());
    out.extend_from_slice(&head[..at]);
    for field in fields {
        out.extend_from_slice(field.as_bytes());
        out.extend_from_slice(b"\r\n");
    }
    out.extend_from_slice(&head[at..]);
    out
}

/// Removes every field of this name (with its continuation lines).
pub fn remove_header(headers: &[u8], name: &str) -> Vec<u8> {
    remove_fields(headers, |field| {
        field.len() > name.len()
            && field[name.len()] == b':'
            && field[..name.len()].eq_ignore_ascii_case(name.as_bytes())
    })
}

/// Removes every field for which `drop` is true; `drop` sees the whole
/// field, first line and continuation lines, as it stands.
pub fn remove_fields(headers: &[u8], drop: impl Fn(&[u8]) -> bool) -> Vec<u8> {
    let mut out = Vec::with_capacity(headers.len());
    let (mut start, mut pos) = (0, 0);
    for line in headers.split_inclusive(|&b| b == b'\n') {
        let continuation = line.starts_with(b" ") || line.starts_with(b"\t");
        if !continuation && pos > start {
            let field = &headers[start..pos];
            if !drop(field) {
                out.extend_from_slice(field);
            }
            start = pos;
        }
        pos += line.len();
    }
    let field = &headers[start..pos];
    if !field.is_empty() && !drop(field) {
        out.extend_from_slice(field);
    }
    out
}

/// True for an Authentication-Results field (`name`, unfolded `value`)
/// whose authserv-id is `hostname`: results that claim to be that host's.
pub fn claims_results_of(name: &str, value: &str, hostname: &str) -> bool {
    name.eq_ignore_ascii_case("Authentication-Results")
        && authserv_id(value).eq_ignore_ascii_case(hostname)
}

/// The authserv-id of an Authentication-Results value (RFC 8601 §2.2:
/// `authserv-id [version] ; results`): whose results they claim to be.
pub fn authserv_id(value: &str) -> &str {
    let id = value.split(';').next().unwrap_or_default();
    id.split_whitespace().next().unwrap_or_default()
}

/// `value` made safe as the text of one header field of a new message:
/// control characters (CR and LF above all, which would end the field and
/// start another, or the body) become spaces. For text taken from a
/// message received (an RFC 2047 Subject may decode to any character)
/// before it goes into one this server writes, an auto-reply's above all.
pub fn header_safe(value: &str) -> String {
    value
        .chars()
        .map(|c| if c.is_control() && c != '\t' { ' ' } else { c })
        .collect()
}

/// `name` as the display name of an address in a header field this server
/// writes (`NAME <address>`): a quoted string when it is ASCII, else RFC
/// 2047 encoded words (B, UTF-8), which a message without SMTPUTF8 needs
/// and which must not stand in quotes (RFC 2047 §5), folded between
/// words so none is longer than 75 characters. Control characters become
/// spaces ([`header_safe`]), so the name stays in its field.
pub fn display_name(name: &str) -> String {
    use base64::Engine;
    let name = header_safe(name);
    if name.is_ascii() {
        return format!("\"{}\"", name.replace(['"', '\\'], " "));
    }
    // `=?utf-8?B?` and `?=` leave 63 characters: 45 bytes in base64.
    const MOST: usize = 45;
    let mut words = Vec::new();
    let mut rest = name.as_str();
    while !rest.is_empty() {
        let mut end = rest.len().min(MOST);
        while !rest.is_char_boundary(end) {
            end -= 1;
        }
        let (chunk, tail) = rest.split_at(end);
        words.push(format!(
            "=?utf-8?B?{}?=",
            base64::engine::general_purpose::STANDARD.encode(chunk)
        ));
        rest = tail;
    }
    words.join("\r\n ")
}

/// A message without the mbox `From ` line it may start with (how
/// procmail, fetchmail's `--mda` and mbox tools hand a message to a
/// delivery program): that line is no header field, and left in place it
/// would end the header before the first real one, as Dovecot's LDA and
/// procmail know.
pub fn without_mbox_from_line(raw: &[u8]) -> &[u8] {
    match raw.strip_prefix(b"From ") {
        Some(rest) => find_byte(b'\n', rest).map_or(&[][..], |lf| &rest[lf + 1..]),
        None => raw,
    }
}

/// An RFC 5322 date for `secs` since the epoch, in UTC.
pub fn rfc5322_date(secs: u64) -> String {
    mail_builder::headers::date::Date::new(secs as i64).to_rfc822()
}

/// The envelope sender of a message handed to a delivery program: the
/// `--sender` flag if given, else `$SENDER` (set by postroom's pipe
/// delivery), else the `Return-Path` field delivery put on top; the null
/// sender when none parses. Line ends may be LF or CRLF.
pub fn envelope_sender(flag: Option<&str>, message: &[u8]) -> crate::proto::address::ReversePath {
    let text = flag
        .map(str::to_string)
        .or_else(|| std::env::var("SENDER").ok())
        .or_else(|| return_path(message))
        .unwrap_or_default();
    crate::proto::address::ReversePath::parse(&text)
        .unwrap_or(crate::proto::address::ReversePath::Null)
}

/// The address of the `Return-Path` field delivery put on top (LF or
/// CRLF text), without its brackets: empty for the null sender.
pub fn return_path(message: &[u8]) -> Option<String> {
    let crlf = to_crlf(&message[..message.len().min(64 << 10)]);
    let end = header_len(&crlf);
    header_fields(&crlf[..end])
        .into_iter()
        .find(|(name, _)| name.eq_ignore_ascii_case("Return-Path"))
        .map(|(_, value)| {
            value
                .trim()
                .trim_start_matches('<')
                .trim_end_matches('>')
                .to_string()
        })
}

/// Longest field name [`HeaderEnd`] waits for before it takes a line for
/// the body (RFC 5322's line limit).
const MAX_FIELD_NAME: usize = 998;

/// Adds the empty line that ends a message's header section when the
/// sender left it out, streaming: RFC 5322 §2.1 allows an empty body, not a
/// missing separator, and IMAP clients skip a message without one
/// ("incomplete header"). The first line that is neither a header field
/// (`name:`) nor a folded continuation starts the body, and the empty line
/// goes before it, as Postfix's cleanup does; a message that is all header
/// gets it at the end. Everything else passes through unchanged, so a
/// well-formed message costs one scan of its header.
#[derive(Debug, Clone)]
pub struct HeaderEnd {
    eol: &'static [u8],
    state: HeaderState,
    /// The start of the current line, held until it shows what it is.
    line: Vec<u8>,
    /// A field has been seen, so a line starting with white space folds.
    fields: bool,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum HeaderState {
    /// At (or near) the start of a line in the header section.
    LineStart,
    /// Inside a header field's line, up to its LF.
    InField,
    /// Past the header section: everything passes.
    Body,
}

impl HeaderEnd {
    /// For CRLF text (the queue, the SMTP wire).
    pub fn crlf() -> HeaderEnd {
        HeaderEnd::new(b"\r\n")
    }

    /// For LF text (a maildir file).
    pub fn lf() -> HeaderEnd {
        HeaderEnd::new(b"\n")
    }

    fn new(eol: &'static [u8]) -> HeaderEnd {
        HeaderEnd {
            eol,
            state: HeaderState::LineStart,
            line: Vec::new(),
            fields: false,
        }
    }

    /// Passes the next piece of the message to `out`, the empty line
    /// added where it is missing.
    pub fn feed(&mut self, chunk: &[u8], out: &mut Vec<u8>) {
        let header = self.feed_header(chunk, out);
        out.extend_from_slice(&chunk[header..]);
    }

    /// Passes to `out` the part of `chunk` that is still header (with
    /// the empty line added where it is missing) and returns its length:
    /// the rest, body, passes unchanged, so a caller that writes it
    /// straight on saves copying it.
    pub fn feed_header(&mut self, chunk: &[u8], out: &mut Vec<u8>) -> usize {
        for (i, &b) in chunk.iter().enumerate() {
            match self.state {
                HeaderState::Body => return i,
                HeaderState::InField => {
                    out.push(b);
                    if b == b'\n' {
                        self.state = HeaderState::LineStart;
                    }
                }
                HeaderState::LineStart => self.line_start(b, out),
            }
        }
        chunk.len()
    }

    fn line_start(&mut self, b: u8, out: &mut Vec<u8>) {
        match (self.line.as_slice(), b) {
            // The empty line is there: nothing to add.
            ([], b'\n') | ([b'\r'], b'\n') => {
                out.extend_from_slice(&self.line);
                out.push(b);
                self.line.clear();
                self.state = HeaderState::Body;
            }
            ([], b'\r') => self.line.push(b),
            ([], b' ' | b'\t') if self.fields => {
                out.push(b);
                self.state = HeaderState::InField;
            }
            ([_, ..], b':') if self.line[0] != b'\r' => {
                out.extend_from_slice(&self.line);
                out.push(b);
                self.line.clear();
                self.fields = true;
                self.state = HeaderState::InField;
            }
            (line, 33..=126) if line.len() < MAX_FIELD_NAME && line.first() != Some(&b'\r') => {
                self.line.push(b)
            }
            _ => {
                self.start_body(out);
                out.push(b);
            }
        }
    }

    fn start_body(&mut self, out: &mut Vec<u8>) {
        out.extend_from_slice(self.eol);
        out.extend_from_slice(&self.line);
        self.line.clear();
        self.state = HeaderState::Body;
    }

    /// The end of the message: the empty line if the header never ended.
    pub fn finish(&mut self, out: &mut Vec<u8>) {
        match self.state {
            HeaderState::Body => {}
            HeaderState::InField => {
                out.extend_from_slice(self.eol);
                out.extend_from_slice(self.eol);
            }
            HeaderState::LineStart if self.line.is_empty() => out.extend_from_slice(self.eol),
            HeaderState::LineStart => self.start_body(out),
        }
        self.state = HeaderState::Body;
    }
}

/// [`HeaderEnd`] over a whole CRLF message in memory.
pub fn with_header_end(message: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(message.len() + 2);
    let mut guard = HeaderEnd::crlf();
    guard.feed(message, &mut out);
    guard.finish(&mut out);
    out
}

/// Property-test inputs shared by the tests of the codecs.
#[cfg(test)]
pub(crate) mod strategies {
    /// Up to `max` bytes, rich in what message codecs treat specially:
    /// CRs and LFs (the line-end rules), leading dots (dot-stuffing in
    /// SMTP and POP3) and blanks (where SMTP folds).
    pub fn message_bytes(max: usize) -> impl proptest::strategy::Strategy<Value = Vec<u8>> {
        proptest::collection::vec(
            proptest::prop_oneof![
                proptest::strategy::Just(b'\r'),
                proptest::strategy::Just(b'\n'),
                proptest::strategy::Just(b'.'),
                proptest::strategy::Just(b' '),
                proptest::prelude::any::<u8>(),
            ],
            0..max,
        )
    }
}

#[cfg(test)]
mod tests {

    #[test]
    fn display_names_are_quoted_or_encoded_and_stay_in_their_field() {
        assert_eq!(display_name("Ann \"A\" B\\"), "\"Ann  A  B \"");
        assert_eq!(display_name("x\r\nBcc: e@x.test"), "\"x  Bcc: e@x.test\"");
        let encoded = display_name("élève via team");
        assert_eq!(encoded, "=?utf-8?B?w6lsw6h2ZSB2aWEgdGVhbQ==?=");
        let long = "é".repeat(40) + "\r\nBcc: x";
        let encoded = display_name(&long);
        assert!(encoded.is_ascii());
        for word in encoded.split("\r\n ") {
            assert!(word.len() <= 75 && word.starts_with("=?utf-8?B?"), "{word}");
        }
        let field = format!("From: {encoded} <l@x.test>\r\n\r\n");
        let parsed = mail_parser::MessageParser::default()
            .parse_headers(field.as_bytes())
            .unwrap();
        let from = parsed.from().unwrap().first().unwrap();
        assert_eq!(from.name(), Some(&*("é".repeat(40) + "  Bcc: x")));
        assert_eq!(from.address(), Some("l@x.test"));
    }
    use super::*;

    #[test]
    fn appended_fields_go_after_the_others_and_never_split_one() {
        let added = ["Date: now".to_string(), "Message-ID: <1@h>".to_string()];
        let head = b"Received: from x\r\n\tby y; now\r\nSubject: s\r\n\r\n";
        assert_eq!(
            append_fields(head, &added),
            b"Received: from x\r\n\tby y; now\r\nSubject: s\r\nDate: now\r\nMessage-ID: <1@h>\r\n\r\n"
        );
        assert_eq!(
            append_fields(b"\r\n", &added),
            b"Date: now\r\nMessage-ID: <1@h>\r\n\r\n"
        );
        // Cut at a limit inside a folded field: before that field.
        assert_eq!(
            append_fields(b"A: 1\r\nB: 2\r\n\tmore\r\n\tand", &added[..1]),
            b"A: 1\r\nDate: now\r\nB: 2\r\n\tmore\r\n\tand"
        );
    }
    use proptest::prelude::*;

    #[test]
    fn an_mbox_from_line_is_no_header() {
        let m = b"From bob@far.test Fri Dec  4 01:00:00 2026\nSubject: x\n\nbody\n";
        assert_eq!(without_mbox_from_line(m), b"Subject: x\n\nbody\n");
        // Only a first line that is one: a header named From is kept.
        assert_eq!(without_mbox_from_line(b"From: a@b\n\n"), b"From: a@b\n\n");
        assert_eq!(without_mbox_from_line(b"From x"), b"");
    }

    #[test]
    fn header_safe_keeps_one_line() {
        assert_eq!(header_safe("a\r\nB: c\td"), "a  B: c\td");
    }

    /// The wire form chunk by chunk, as POP3 RETR makes it.
    fn streamed(file: &[u8], chunk: usize) -> (Vec<u8>, u64) {
        let mut wire = WireForm::new();
        let mut out = Vec::new();
        for piece in file.chunks(chunk.max(1)) {
            let mut piece = piece;
            while !piece.is_empty() {
                wire.encode_line(&mut piece, &mut out);
            }
        }
        wire.finish(&mut out);
        (out, wire.octets())
    }

    #[test]
    fn the_wire_form_keeps_crlf_and_ends_the_last_line() {
        assert_eq!(wire_form(b"a\nb\n\nc"), b"a\r\nb\r\n\r\nc\r\n");
        assert_eq!(wire_form(b"a\r\nb\rc\n"), b"a\r\nb\rc\r\n");
        assert_eq!(wire_form(b"x\r"), b"x\r\r\n");
        assert_eq!(wire_form(b""), b"");
        let mut wire = WireForm::new();
        let mut out = Vec::new();
        let mut input = &b"\r\nA: b\n\nrest"[..];
        assert_eq!(
            wire.encode_line(&mut input, &mut out),
            Some(LineEnd { empty: true })
        );
        assert_eq!(
            wire.encode_line(&mut input, &mut out),
            Some(LineEnd { empty: false })
        );
        assert_eq!(
            wire.encode_line(&mut input, &mut out),
            Some(LineEnd { empty: true })
        );
        assert_eq!(wire.encode_line(&mut input, &mut out), None);
        assert!(input.is_empty() && !wire.at_line_start());
        assert_eq!(wire.octets_when_finished(), wire.octets() + 2);
    }

    #[test]
    fn header_end_is_added_where_missing() {
        let fixed = |m: &[u8]| String::from_utf8(with_header_end(m)).unwrap();
        assert_eq!(fixed(b"Subject: hi\r\n"), "Subject: hi\r\n\r\n");
        assert_eq!(fixed(b"Subject: hi"), "Subject: hi\r\n\r\n");
        assert_eq!(
            fixed(b"Subject: hi\r\n folded\r\nhello there\r\n"),
            "Subject: hi\r\n folded\r\n\r\nhello there\r\n"
        );
        assert_eq!(fixed(b"just text\r\n"), "\r\njust text\r\n");
        assert_eq!(fixed(b""), "\r\n");
        let whole = b"Subject: hi\r\n\r\nbody\r\nNot: a header\r\n";
        assert_eq!(with_header_end(whole), whole.to_vec());
        let mut out = Vec::new();
        let mut lf = HeaderEnd::lf();
        lf.feed(b"A: 1\nB", &mut out);
        lf.feed(b": 2\n", &mut out);
        lf.finish(&mut out);
        assert_eq!(out, b"A: 1\nB: 2\n\n");
    }

    proptest! {
        #[test]
        fn header_end_ignores_chunking_and_always_ends_the_header(
            message in proptest::collection::vec(
                proptest::sample::select(b"ab: \r\n\tX".to_vec()), 0..80),
            cut in 0usize..80,
        ) {
            let whole = with_header_end(&message);
            let cut = cut.min(message.len());
            let mut pieces = Vec::new();
            let mut guard = HeaderEnd::crlf();
            guard.feed(&message[..cut], &mut pieces);
            guard.feed(&message[cut..], &mut pieces);
            guard.finish(&mut pieces);
            prop_assert_eq!(&pieces, &whole);
            // Nothing is lost or reordered: only line ends are added.
            let mut rest = whole.iter();
            for b in &message {
                prop_assert!(rest.any(|x| x == b));
            }
        }

        #[test]
        fn one_wire_form_however_it_is_fed(
            file in proptest::collection::vec(
                prop_oneof![
                    Just(b'\n'),
                    Just(b'\r'),
                    any::<u8>(),
                ],
                0..200,
            ),
            chunk in 1usize..17,
        ) {
            let whole = wire_form(&file);
            let (out, octets) = streamed(&file, chunk);
            prop_assert_eq!(&out, &whole);
            prop_assert_eq!(octets, whole.len() as u64);
            let mut counted = WireForm::new();
            for piece in file.chunks(chunk) {
                counted.count(piece);
            }
            prop_assert_eq!(counted.octets_when_finished(), whole.len() as u64);
            // Every line of it ends with CRLF.
            for line in whole.split_inclusive(|&b| b == b'\n') {
                prop_assert!(line.ends_with(b"\r\n"));
            }
        }
    }

    /// The line-end rules byte by byte, as the module note states them:
    /// what the run-copying versions must equal.
    fn to_crlf_bytewise(data: &[u8]) -> Vec<u8> {
        let mut out = Vec::new();
        let mut i = 0;
        while i < data.len() {
            match data[i] {
                b'\r' => {
                    out.extend_from_slice(b"\r\n");
                    if data.get(i + 1) == Some(&b'\n') {
                        i += 1;
                    }
                }
                b'\n' => out.extend_from_slice(b"\r\n"),
                b => out.push(b),
            }
            i += 1;
        }
        if !out.is_empty() && !out.ends_with(b"\r\n") {
            out.extend_from_slice(b"\r\n");
        }
        out
    }

    fn crlf_to_lf_bytewise(data: &[u8]) -> Vec<u8> {
        let mut out = Vec::new();
        for (i, &b) in data.iter().enumerate() {
            if !(b == b'\r' && data.get(i + 1) == Some(&b'\n')) {
                out.push(b);
            }
        }
        out
    }

    proptest! {
        #[test]
        fn line_end_rules_hold_for_any_text(
            data in strategies::message_bytes(300),
        ) {
            prop_assert_eq!(to_crlf(&data), to_crlf_bytewise(&data));
            prop_assert_eq!(crlf_to_lf(&data), crlf_to_lf_bytewise(&data));
            let crlf = to_crlf(&data);
            let header = crlf.windows(4).position(|w| w == b"\r\n\r\n").map(|p| p + 4);
            let expected = if crlf.starts_with(b"\r\n") { Some(2) } else { header };
            prop_assert_eq!(header_len(&crlf), expected.unwrap_or(crlf.len()));
        }
    }

    #[test]
    fn crlf_to_lf_leaves_bare_cr() {
        assert_eq!(crlf_to_lf(b"a\r\nb\rc\n\r\n"), b"a\nb\rc\n\n");
    }

    #[test]
    fn canonical_line_ends() {
        assert_eq!(to_crlf(b"a\nb\r\nc\rd"), b"a\r\nb\r\nc\r\nd\r\n");
        assert_eq!(to_crlf(b""), b"");
        assert_eq!(to_crlf(b"\n.\n"), b"\r\n.\r\n");
    }

    #[test]
    fn headers_found_and_removed() {
        let m = b"To: a@b,\r\n c@d\r\nBcc: x@y\r\n  z@w\r\nSubject: s\r\n\r\nbody\r\n";
        let h = &m[..header_len(m)];
        assert_eq!(h.len(), m.len() - 6);
        let f = header_fields(h);
        assert_eq!(f[0], ("To".into(), "a@b, c@d".into()));
        assert!(has_header(h, "bcc"));
        assert_eq!(
            remove_header(h, "Bcc"),
            b"To: a@b,\r\n c@d\r\nSubject: s\r\n\r\n"
        );
        assert_eq!(header_len(b"\r\nbody"), 2);
    }

    #[test]
    fn fields_removed_whole_by_what_they_say() {
        let h = b"Authentication-Results:\r\n\tmx.test; dkim=pass\r\nX: 1\r\n\
                  Authentication-Results: other.test; spf=pass\r\n\r\n";
        let ours = |field: &[u8]| {
            let (name, value) = header_fields(field).pop().unwrap_or_default();
            claims_results_of(&name, &value, "MX.test")
        };
        assert_eq!(
            remove_fields(h, ours),
            b"X: 1\r\nAuthentication-Results: other.test; spf=pass\r\n\r\n"
        );
        assert_eq!(authserv_id(" mx.test 1 ; none"), "mx.test");
        assert_eq!(remove_fields(b"", |_| true), b"");
    }

    #[test]
    fn dates_look_like_rfc5322() {
        assert_eq!(rfc5322_date(0), "Thu, 1 Jan 1970 00:00:00 +0000");
    }

    #[test]
    fn envelope_sender_from_a_return_path_with_lf_line_ends() {
        let m = b"Return-Path: <bob@far.test>\nDelivered-To: x@y.test\n\nbody\n";
        assert_eq!(envelope_sender(Some("a@b.test"), m).to_string(), "a@b.test");
        if std::env::var_os("SENDER").is_none() {
            assert_eq!(envelope_sender(None, m).to_string(), "bob@far.test");
            assert!(envelope_sender(None, b"Subject: x\n\n").is_null());
        }
    }
}
