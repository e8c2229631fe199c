//! IMAP commands: the parser from a framed command (a line with its literals
//! already read, see `session::read_command`) to a [`Command`].
//!
//! Written after the ABNF of RFC 9051 §9 (which contains RFC 3501's); each
//! rule's name is in the method that parses it. The parser works on bytes,
//! never panics on any input (the proptest below), and bounds recursion
//! (parenthesized SEARCH keys, `NOT`, `OR`) at [`MAX_DEPTH`] and the number
//! of search keys at [`MAX_KEYS`], so hostile nesting costs nothing.
//!
//! Why not the `imap-codec` crate (MIT/Apache, well kept): its stable
//! release (1.0) has no SORT, THREAD, ESEARCH, SEARCHRES or MULTIAPPEND
//! syntax, and the release that adds them is an alpha whose types still
//! change. The framing that matters most for safety (a literal's size is
//! judged before a byte of it is read) has to live in the session anyway.
//! What is left is one recursive-descent parser over one ABNF, proptested
//! here; swapping it for `imap-codec` 2.0 once that is stable touches this
//! file only.

use std::fmt;
use std::time::SystemTime;

use crate::proto::strings::{self, StringError};

/// Deepest nesting of search keys (parentheses, NOT, OR).
pub const MAX_DEPTH: usize = 64;
/// Most search keys in one command.
pub const MAX_KEYS: usize = 10_000;

/// A syntax error; the text goes into the `BAD` reply.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Bad(pub String);

type R<T> = Result<T, Bad>;

fn bad<T>(what: impl Into<String>) -> R<T> {
    Err(Bad(what.into()))
}

/// One end of a range in a sequence set: a number or `*`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Bound {
    Num(u32),
    Star,
    /// `$`: the last saved search result (RFC 5182), which the session
    /// replaces with numbers before the command runs.
    Saved,
}

/// `sequence-set`: ranges, each in either order (`4:2` is `2:4`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SequenceSet(pub Vec<(Bound, Bound)>);

impl SequenceSet {
    /// The ranges as inclusive numbers, `*` being `largest`.
    pub fn ranges(&self, largest: u32) -> impl Iterator<Item = (u32, u32)> + '_ {
        self.0.iter().filter_map(move |&(a, b)| {
            let v = |x| match x {
                Bound::Num(n) => Some(n),
                Bound::Star => Some(largest),
                Bound::Saved => None,
            };
            let (a, b) = (v(a)?, v(b)?);
            Some((a.min(b), a.max(b)))
        })
    }

    /// Whether it names nothing (only a set made here can: the grammar
    /// needs one number at least).
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// Whether this is `$`.
    pub fn is_saved(&self) -> bool {
        self.0.first().is_some_and(|(a, _)| *a == Bound::Saved)
    }

    /// The set of exactly these ascending numbers, as runs.
    pub fn of_sorted(numbers: &[u32]) -> SequenceSet {
        let mut ranges: Vec<(Bound, Bound)> = Vec::new();
        for &n in numbers {
            match ranges.last_mut() {
                Some((_, Bound::Num(end))) if end.checked_add(1) == Some(n) => *end = n,
                _ => ranges.push((Bound::Num(n), Bound::Num(n))),
            }
        }
        SequenceSet(ranges)
    }
}

/// The set written back as `sequence-set` reads it: `1:3,7,9:*`, `$`;
/// a range of one number as that number. With [`SequenceSet::of_sorted`]
/// this is every set a response names (ESEARCH `ALL`, `VANISHED`,
/// APPENDUID/COPYUID, MODIFIED).
impl fmt::Display for SequenceSet {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, (a, b)) in self.0.iter().enumerate() {
            if i > 0 {
                f.write_str(",")?;
            }
            write!(f, "{a}")?;
            if a != b {
                write!(f, ":{b}")?;
            }
        }
        Ok(())
    }
}

impl fmt::Display for Bound {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Bound::Num(n) => write!(f, "{n}"),
            Bound::Star => f.write_str("*"),
            Bound::Saved => f.write_str("$"),
        }
    }
}

/// `section-msgtext` / `section-text` after an optional part number.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SectionText {
    /// The whole part (or message).
    Full,
    Header,
    HeaderFields {
        not: bool,
        fields: Vec<String>,
    },
    Text,
    Mime,
}

/// `section`: part numbers, then what of that part.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Section {
    pub part: Vec<u32>,
    pub text: SectionText,
}

/// One `fetch-att`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum FetchItem {
    Envelope,
    Flags,
    InternalDate,
    Rfc822Size,
    Rfc822,
    Rfc822Header,
    Rfc822Text,
    /// `BODY` without a section: BODYSTRUCTURE without extension data.
    Body,
    BodyStructure,
    Uid,
    /// The message's mod-sequence (CONDSTORE, RFC 7162).
    ModSeq,
    /// `BINARY[part]` / `BINARY.PEEK[part]` (RFC 3516, IMAP4rev2): the
    /// part with its transfer encoding undone.
    Binary {
        part: Vec<u32>,
        peek: bool,
        partial: Option<(u32, u32)>,
    },
    /// `BINARY.SIZE[part]`: the size of that.
    BinarySize(Vec<u32>),
    /// `BODY[...]` / `BODY.PEEK[...]` with an optional `<origin.count>`.
    Section {
        section: Section,
        peek: bool,
        partial: Option<(u32, u32)>,
    },
}

/// STORE's operation.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StoreMode {
    Replace,
    Add,
    Remove,
}

/// `status-att`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StatusItem {
    Messages,
    Recent,
    UidNext,
    UidValidity,
    Unseen,
    Deleted,
    Size,
    HighestModSeq,
}

/// A SEARCH key (RFC 3501 §6.4.4, RFC 9051 §6.4.4).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SearchKey {
    All,
    /// A system flag bit (see `crate::proto::flags`), set or not.
    Flag(u8, bool),
    Keyword(String, bool),
    New,
    Old,
    Recent,
    Header(String, String),
    Body(String),
    Text(String),
    Before(Date),
    On(Date),
    Since(Date),
    SentBefore(Date),
    SentOn(Date),
    SentSince(Date),
    Larger(u64),
    Smaller(u64),
    Uid(SequenceSet),
    Seq(SequenceSet),
    /// `MODSEQ n`: mod-sequence at least n (RFC 7162 §3.1.5).
    ModSeq(u64),
    Not(Box<SearchKey>),
    Or(Box<SearchKey>, Box<SearchKey>),
    And(Vec<SearchKey>),
}

/// A SORT criterion (`sort-key`); the bool beside it says REVERSE.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SortKey {
    Arrival,
    Cc,
    Date,
    From,
    Size,
    Subject,
    To,
    DisplayFrom,
    DisplayTo,
}

/// A calendar date (`date` in the ABNF), as days since 1970-01-01.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub struct Date(pub i64);

/// `LIST` selection and return options (RFC 5258, 5819, 6154).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ListOptions {
    pub subscribed: bool,
    pub special_use_only: bool,
    pub recursive_match: bool,
    pub return_subscribed: bool,
    pub return_children: bool,
    pub return_special_use: bool,
    /// `RETURN (MYRIGHTS)` (RFC 8440).
    pub return_myrights: bool,
    pub status: Vec<StatusItem>,
}

/// One message of an APPEND.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Appended {
    pub flags: Vec<String>,
    pub date: Option<SystemTime>,
    pub message: Vec<u8>,
    /// Sent as a `~{n}` literal8 (RFC 3516): binary content, to be kept
    /// byte for byte.
    pub binary: bool,
    /// CATENATE (RFC 4469): the parts the message is made of, in order
    /// (`message` is then empty); empty for a plain message.
    pub catenate: Vec<CatPart>,
}

/// One part of a CATENATE.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CatPart {
    /// `TEXT literal`; `true` for a literal8 (binary, kept as given).
    Text(Vec<u8>, bool),
    /// `URL url`: a message or part of one (`url::parse`).
    Url(String),
}

/// QRESYNC's SELECT parameter: what the client knew when it left.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Qresync {
    pub validity: u32,
    pub modseq: u64,
    /// The UIDs the client knows (default: all below UIDNEXT).
    pub known_uids: Option<SequenceSet>,
}

/// `NOTIFY SET` (RFC 5465 §3.1): the event groups, in order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NotifySet {
    /// `SET STATUS`: the STATUS of each watched mailbox at once.
    pub status: bool,
    pub groups: Vec<EventGroup>,
}

/// `event-group`: which mailboxes, and the events wanted from them
/// (empty for `NONE`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EventGroup {
    pub filter: Filter,
    pub events: Vec<Event>,
}

/// `filter-mailboxes`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Filter {
    Selected,
    /// Expunges held back until a command that may report them.
    SelectedDelayed,
    Inboxes,
    Personal,
    Subscribed,
    /// These mailboxes and all below them.
    Subtree(Vec<String>),
    /// Exactly these mailboxes (no wildcards, RFC 5465 §6.6).
    Mailboxes(Vec<String>),
}

impl Filter {
    pub fn is_selected(&self) -> bool {
        matches!(self, Filter::Selected | Filter::SelectedDelayed)
    }
}

/// `event`: the ones RFC 5465 names, and any other (`event-ext`), which
/// the server refuses with BADEVENT rather than as a syntax error.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Event {
    /// With the FETCH items to send for each new message (SELECTED only).
    MessageNew(Vec<FetchItem>),
    MessageExpunge,
    FlagChange,
    AnnotationChange,
    MailboxName,
    SubscriptionChange,
    MailboxMetadataChange,
    ServerMetadataChange,
    Other(String),
}

impl Event {
    /// `message-event`: the only kind a SELECTED filter may ask for.
    pub fn is_message_event(&self) -> bool {
        matches!(
            self,
            Event::MessageNew(_)
                | Event::MessageExpunge
                | Event::FlagChange
                | Event::AnnotationChange
        )
    }

    pub fn name(&self) -> &str {
        match self {
            Event::MessageNew(_) => "MessageNew",
            Event::MessageExpunge => "MessageExpunge",
            Event::FlagChange => "FlagChange",
            Event::AnnotationChange => "AnnotationChange",
            Event::MailboxName => "MailboxName",
            Event::SubscriptionChange => "SubscriptionChange",
            Event::MailboxMetadataChange => "MailboxMetadataChange",
            Event::ServerMetadataChange => "ServerMetadataChange",
            Event::Other(name) => name,
        }
    }
}

/// Most event groups in one NOTIFY, and mailboxes named in one filter.
pub const NOTIFY_GROUPS_MAX: usize = 64;
pub const NOTIFY_NAMES_MAX: usize = 1000;

/// A parsed command.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Command {
    pub tag: String,
    pub body: Body,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Body {
    Capability,
    Noop,
    Logout,
    StartTls,
    Authenticate {
        mechanism: String,
        initial: Option<String>,
    },
    Login {
        user: String,
        password: String,
    },
    Enable(Vec<String>),
    Id,
    Namespace,
    Select {
        mailbox: String,
        read_only: bool,
        /// `(CONDSTORE)` given.
        condstore: bool,
        /// `(QRESYNC (...))` given (RFC 7162 §3.2.5).
        qresync: Option<Qresync>,
    },
    /// CREATE, with the special uses asked for (RFC 6154 §3).
    Create(String, Vec<String>),
    Delete(String),
    Rename(String, String),
    Subscribe(String),
    Unsubscribe(String),
    List {
        reference: String,
        patterns: Vec<String>,
        options: ListOptions,
        lsub: bool,
    },
    Status {
        mailbox: String,
        items: Vec<StatusItem>,
    },
    /// APPEND of one message or, with MULTIAPPEND (RFC 3502), several.
    Append {
        mailbox: String,
        messages: Vec<Appended>,
    },
    Check,
    Close,
    Unselect,
    /// CANCELUPDATE (RFC 5267 §4.3.5): the tags of the searches whose
    /// updates stop.
    CancelUpdate(Vec<String>),
    Expunge(Option<SequenceSet>),
    Search {
        uid: bool,
        key: SearchKey,
        /// `RETURN (...)` options (ESEARCH, RFC 4731); `None` for plain.
        ret: Option<Vec<String>>,
    },
    Fetch {
        uid: bool,
        set: SequenceSet,
        items: Vec<FetchItem>,
        /// `(CHANGEDSINCE n)`: only messages changed after n.
        changed_since: Option<u64>,
        /// `VANISHED` with CHANGEDSINCE in UID FETCH (QRESYNC).
        vanished: bool,
    },
    Store {
        uid: bool,
        set: SequenceSet,
        mode: StoreMode,
        silent: bool,
        flags: Vec<String>,
        /// `(UNCHANGEDSINCE n)`: only messages not changed after n.
        unchanged_since: Option<u64>,
    },
    Copy {
        uid: bool,
        set: SequenceSet,
        mailbox: String,
        remove: bool,
    },
    /// SORT (RFC 5256, with RFC 5957's DISPLAYFROM and DISPLAYTO).
    Sort {
        uid: bool,
        criteria: Vec<(bool, SortKey)>,
        key: SearchKey,
        /// `RETURN (...)` options (ESORT, RFC 5267); `None` for plain.
        ret: Option<Vec<String>>,
    },
    /// THREAD (RFC 5256).
    Thread {
        uid: bool,
        references: bool,
        key: SearchKey,
    },
    /// A well-formed command the server declines (a tagged NO with this
    /// text), such as SORT with a charset it does not know.
    Refused(String),
    Idle,
    /// NOTIFY (RFC 5465): `None` for `NOTIFY NONE`.
    Notify(Option<NotifySet>),
    GetQuota(String),
    GetQuotaRoot(String),
    SetQuota,
    /// ACL commands (RFC 4314): the mailbox, then the identifier and the
    /// rights as sent (`+`/`-` prefix kept for the handler to read).
    Acl(AclCommand),
}

/// An ACL command (RFC 4314 §3).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AclCommand {
    SetAcl {
        mailbox: String,
        identifier: String,
        rights: String,
    },
    DeleteAcl {
        mailbox: String,
        identifier: String,
    },
    GetAcl(String),
    ListRights {
        mailbox: String,
        identifier: String,
    },
    MyRights(String),
}

impl Body {
    /// Whether EXPUNGE responses may be sent while this command runs
    /// (RFC 3501 §7.4.1: not during FETCH, STORE, SEARCH by number).
    pub fn allows_expunge(&self) -> bool {
        !matches!(
            self,
            Body::Fetch { uid: false, .. }
                | Body::Store { uid: false, .. }
                | Body::Search { uid: false, .. }
                | Body::Sort { uid: false, .. }
                | Body::Thread { uid: false, .. }
        )
    }
}

/// The range of a `PARTIAL lo:hi` return option (RFC 9394): 1-based
/// positions in the result, both of one sign (negative counts from the
/// end), in either order; `None` if there is none or it is malformed.
pub fn partial_range(opts: &str) -> Option<(i64, i64)> {
    let range = opts.strip_prefix("PARTIAL ")?;
    let (a, b) = range.split_once(':')?;
    let (a, b): (i64, i64) = (a.parse().ok()?, b.parse().ok()?);
    let same_sign = (a > 0 && b > 0) || (a < 0 && b < 0);
    let bound = i64::from(u32::MAX);
    (same_sign && a.abs() <= bound && b.abs() <= bound).then_some((a.min(b), a.max(b)))
}

/// A section spec as FETCH takes it between brackets (`HEADER`, `1.2`,
/// `1.MIME`, `HEADER.FIELDS (SUBJECT)`), as an IMAP URL's `SECTION=`
/// gives it; `None` if it is not one.
pub fn parse_section(spec: &str) -> Option<Section> {
    let input = format!("[{spec}]");
    let mut p = Parser {
        input: input.as_bytes(),
        pos: 0,
        keys: 0,
    };
    let section = p.section().ok()?;
    (p.pos == input.len()).then_some(section)
}

/// Parses one framed command (ending in CRLF or LF).
pub fn parse(input: &[u8]) -> Result<Command, (Option<String>, Bad)> {
    let mut p = Parser {
        input,
        pos: 0,
        keys: 0,
    };
    let tag = p.tag().map_err(|e| (None, e))?;
    let body = (|| {
        p.sp()?;
        let body = p.command_body()?;
        p.crlf()?;
        Ok(body)
    })()
    .map_err(|e| (Some(tag.clone()), e))?;
    Ok(Command { tag, body })
}

/// `{N}` or `{N+}` at the end of a line: the literal's size and whether
/// the client waits for a continuation. The session frames a command with
/// it: a line, then that many bytes, then the next line.
pub fn literal_at_end(line: &[u8]) -> Option<(usize, bool)> {
    let line = line.strip_suffix(b"\n")?;
    let line = line.strip_suffix(b"\r").unwrap_or(line);
    let line = line.strip_suffix(b"}")?;
    let (line, sync) = match line.strip_suffix(b"+") {
        Some(l) => (l, false),
        None => (line, true),
    };
    let open = line.iter().rposition(|&b| b == b'{')?;
    let digits = &line[open + 1..];
    if digits.is_empty() || !digits.iter().all(u8::is_ascii_digit) {
        return None;
    }
    // A size too large to count is still a literal's, refused as too
    // large: read as no literal, its bytes would be read as commands.
    let n: u64 = std::str::from_utf8(digits)
        .ok()
        .and_then(|d| d.parse().ok())
        .unwrap_or(u64::MAX);
    Some((usize::try_from(n).unwrap_or(usize::MAX), sync))
}

struct Parser<'a> {
    input: &'a [u8],
    pos: usize,
    keys: usize,
}

/// A string's fault in IMAP's words.
fn string_error(e: StringError) -> &'static str {
    match e {
        StringError::Unterminated | StringError::LineEnd | StringError::TooLong => {
            "unterminated quoted string"
        }
        StringError::Nul => "NUL in a quoted string",
        StringError::BadEscape => "bad escape in quoted string",
        StringError::NoSize => "expected a number",
        StringError::SizeTooLarge => "number too large",
        StringError::NoClose => "expected '}'",
        StringError::NoLineEnd => "expected '\\n'",
        StringError::Short => "literal shorter than announced",
    }
}

fn is_atom_char(b: u8) -> bool {
    b > 0x20 && b < 0x7f && !b"(){ %*\"\\]".contains(&b)
}

impl<'a> Parser<'a> {
    fn peek(&self) -> Option<u8> {
        self.input.get(self.pos).copied()
    }

    fn eat(&mut self, b: u8) -> bool {
        if self.peek() == Some(b) {
            self.pos += 1;
            true
        } else {
            false
        }
    }

    fn expect(&mut self, b: u8) -> R<()> {
        if self.eat(b) {
            Ok(())
        } else {
            bad(format!("expected '{}'", b as char))
        }
    }

    fn sp(&mut self) -> R<()> {
        self.expect(b' ')
    }

    fn crlf(&mut self) -> R<()> {
        self.eat(b'\r');
        if self.eat(b'\n') && self.pos == self.input.len() {
            Ok(())
        } else {
            bad("unexpected text at the end of the command")
        }
    }

    /// `tag = 1*<any ASTRING-CHAR except "+">`
    fn tag(&mut self) -> R<String> {
        let start = self.pos;
        while let Some(b) = self.peek() {
            if (is_atom_char(b) || b == b']') && b != b'+' {
                self.pos += 1;
            } else {
                break;
            }
        }
        if start == self.pos {
            return bad("missing tag");
        }
        Ok(String::from_utf8_lossy(&self.input[start..self.pos]).into_owned())
    }

    /// `atom = 1*ATOM-CHAR`, upper-cased for comparison by callers.
    fn atom(&mut self) -> R<String> {
        let start = self.pos;
        while self.peek().is_some_and(is_atom_char) {
            self.pos += 1;
        }
        if start == self.pos {
            return bad("expected an atom");
        }
        Ok(String::from_utf8_lossy(&self.input[start..self.pos]).into_owned())
    }

    /// A keyword such as a command or fetch item name: atom characters
    /// plus `.` (already atom chars), upper-cased.
    fn word(&mut self) -> R<String> {
        Ok(self.atom()?.to_ascii_uppercase())
    }

    /// `quoted = DQUOTE *QUOTED-CHAR DQUOTE`
    fn quoted(&mut self) -> R<Vec<u8>> {
        if self.peek() != Some(b'"') {
            return bad("expected '\"'");
        }
        strings::quoted(self.input, &mut self.pos, usize::MAX).or_else(|e| bad(string_error(e)))
    }

    /// `literal = "{" number64 ["+"] "}" CRLF *CHAR8` (the bytes are
    /// already in the input, read by the framing).
    fn literal(&mut self) -> R<Vec<u8>> {
        if self.peek() != Some(b'{') {
            return bad("expected '{'");
        }
        strings::literal(self.input, &mut self.pos).or_else(|e| bad(string_error(e)))
    }

    /// `string = quoted / literal`
    fn string(&mut self) -> R<Vec<u8>> {
        match self.peek() {
            Some(b'"') => self.quoted(),
            Some(b'{') => self.literal(),
            Some(b'~') => {
                // literal8 (RFC 3516), for APPEND of binary content.
                self.pos += 1;
                self.literal()
            }
            _ => bad("expected a string"),
        }
    }

    /// `astring = 1*ASTRING-CHAR / string`
    fn astring(&mut self) -> R<String> {
        let bytes = self.astring_bytes()?;
        String::from_utf8(bytes).or_else(|_| bad("string is not UTF-8"))
    }

    fn astring_bytes(&mut self) -> R<Vec<u8>> {
        match self.peek() {
            Some(b'"') | Some(b'{') => {
                let bytes = self.string()?;
                // A literal is CHAR8 (%x01-FF): a name, login or search
                // string never holds a NUL (the server could not write it
                // back: its literals send NUL as 0x80).
                if bytes.contains(&0) {
                    return bad("NUL in a string");
                }
                Ok(bytes)
            }
            _ => {
                let start = self.pos;
                // 8-bit bytes are not ATOM-CHARs, but clients (Python's
                // imaplib) send UTF-8 search strings bare: take them.
                while self
                    .peek()
                    .is_some_and(|b| is_atom_char(b) || b == b']' || b >= 0x80)
                {
                    self.pos += 1;
                }
                if start == self.pos {
                    return bad("expected a string or atom");
                }
                Ok(self.input[start..self.pos].to_vec())
            }
        }
    }

    /// `mailbox = "INBOX" / astring`
    fn mailbox(&mut self) -> R<String> {
        self.astring()
    }

    /// `list-mailbox = 1*list-char / string`
    fn list_mailbox(&mut self) -> R<String> {
        match self.peek() {
            Some(b'"') | Some(b'{') => self.astring(),
            _ => {
                let start = self.pos;
                while self
                    .peek()
                    .is_some_and(|b| is_atom_char(b) || b"%*]".contains(&b))
                {
                    self.pos += 1;
                }
                if start == self.pos {
                    return bad("expected a mailbox pattern");
                }
                Ok(String::from_utf8_lossy(&self.input[start..self.pos]).into_owned())
            }
        }
    }

    /// `number = 1*DIGIT` (up to 2^63: `number64`)
    fn number(&mut self) -> R<u64> {
        let start = self.pos;
        let mut n: u64 = 0;
        while let Some(b @ b'0'..=b'9') = self.peek() {
            n = n
                .checked_mul(10)
                .and_then(|n| n.checked_add(u64::from(b - b'0')))
                .ok_or_else(|| Bad("number too large".into()))?;
            self.pos += 1;
        }
        if start == self.pos {
            return bad("expected a number");
        }
        Ok(n)
    }

    /// `nz-number`, 32 bits.
    fn nz_number(&mut self) -> R<u32> {
        match u32::try_from(self.number()?) {
            Ok(0) | Err(_) => bad("expected a number from 1 to 4294967295"),
            Ok(n) => Ok(n),
        }
    }

    /// `sequence-set = (seq-number / seq-range) ["," sequence-set]`
    fn sequence_set(&mut self) -> R<SequenceSet> {
        // RFC 5182: `$` stands alone, never inside a list.
        if self.eat(b'$') {
            return Ok(SequenceSet(vec![(Bound::Saved, Bound::Saved)]));
        }
        let mut ranges = Vec::new();
        loop {
            let a = self.seq_number()?;
            let b = if self.eat(b':') {
                self.seq_number()?
            } else {
                a
            };
            ranges.push((a, b));
            if ranges.len() > 100_000 {
                return bad("sequence set too long");
            }
            if !self.eat(b',') {
                return Ok(SequenceSet(ranges));
            }
        }
    }

    fn seq_number(&mut self) -> R<Bound> {
        if self.eat(b'*') {
            Ok(Bound::Star)
        } else {
            Ok(Bound::Num(self.nz_number()?))
        }
    }

    fn looks_like_sequence_set(&self) -> bool {
        matches!(self.peek(), Some(b'0'..=b'9' | b'*' | b'$'))
    }

    fn command_body(&mut self) -> R<Body> {
        let name = self.word()?;
        let body = match name.as_str() {
            "CAPABILITY" => Body::Capability,
            "NOOP" => Body::Noop,
            "LOGOUT" => Body::Logout,
            "STARTTLS" => Body::StartTls,
            "CHECK" => Body::Check,
            "CLOSE" => Body::Close,
            "UNSELECT" => Body::Unselect,
            "IDLE" => Body::Idle,
            "NAMESPACE" => Body::Namespace,
            "EXPUNGE" => Body::Expunge(None),
            "CANCELUPDATE" => Body::CancelUpdate(
                self.one_or_more(Self::astring, "CANCELUPDATE needs the tag of a search")?,
            ),
            "AUTHENTICATE" => {
                self.sp()?;
                let mechanism = self.word()?;
                let initial = if self.eat(b' ') {
                    // SASL-IR: base64 or "=" for an empty response.
                    let start = self.pos;
                    while self
                        .peek()
                        .is_some_and(|b| b.is_ascii_alphanumeric() || b"+/=".contains(&b))
                    {
                        self.pos += 1;
                    }
                    Some(String::from_utf8_lossy(&self.input[start..self.pos]).into_owned())
                } else {
                    None
                };
                Body::Authenticate { mechanism, initial }
            }
            "LOGIN" => {
                self.sp()?;
                let user = self.astring()?;
                self.sp()?;
                let password = self.astring()?;
                Body::Login { user, password }
            }
            "ENABLE" => Body::Enable(self.one_or_more(Self::word, "ENABLE needs a capability")?),
            "ID" => {
                self.sp()?;
                // The client's fields are only logged; read and drop them.
                if self.eat(b'(') {
                    while !self.eat(b')') {
                        self.eat(b' ');
                        self.nstring()?;
                    }
                } else {
                    self.nil()?;
                }
                Body::Id
            }
            "SELECT" | "EXAMINE" => {
                self.sp()?;
                let mailbox = self.mailbox()?;
                let (mut condstore, mut qresync) = (false, None);
                if self.eat(b' ') {
                    self.expect(b'(')?;
                    while !self.eat(b')') {
                        self.eat(b' ');
                        match self.word()?.as_str() {
                            "CONDSTORE" => condstore = true,
                            "QRESYNC" => {
                                self.sp()?;
                                qresync = Some(self.qresync_params()?);
                            }
                            other => return bad(format!("unknown SELECT parameter {other}")),
                        }
                    }
                }
                Body::Select {
                    mailbox,
                    read_only: name == "EXAMINE",
                    condstore,
                    qresync,
                }
            }
            "SETACL" | "DELETEACL" | "GETACL" | "LISTRIGHTS" | "MYRIGHTS" => {
                self.sp()?;
                let mailbox = self.mailbox()?;
                let mut next = || -> R<String> {
                    self.sp()?;
                    self.astring()
                };
                Body::Acl(match name.as_str() {
                    "SETACL" => AclCommand::SetAcl {
                        mailbox,
                        identifier: next()?,
                        rights: next()?,
                    },
                    "DELETEACL" => AclCommand::DeleteAcl {
                        mailbox,
                        identifier: next()?,
                    },
                    "LISTRIGHTS" => AclCommand::ListRights {
                        mailbox,
                        identifier: next()?,
                    },
                    "GETACL" => AclCommand::GetAcl(mailbox),
                    _ => AclCommand::MyRights(mailbox),
                })
            }
            "CREATE" | "DELETE" | "SUBSCRIBE" | "UNSUBSCRIBE" | "GETQUOTAROOT" => {
                self.sp()?;
                let mailbox = self.mailbox()?;
                let mut uses = Vec::new();
                if name == "CREATE" && self.eat(b' ') {
                    // `create-param = "USE" SP "(" [use-attr *(SP use-attr)] ")"`
                    // (CREATE-SPECIAL-USE, RFC 6154 §3), in a parameter list.
                    self.expect(b'(')?;
                    while !self.eat(b')') {
                        self.eat(b' ');
                        if self.word()? != "USE" {
                            return bad("the one CREATE parameter is USE (RFC 6154)");
                        }
                        self.sp()?;
                        uses.extend(self.flag_list()?);
                    }
                }
                match name.as_str() {
                    "CREATE" => Body::Create(mailbox, uses),
                    "DELETE" => Body::Delete(mailbox),
                    "SUBSCRIBE" => Body::Subscribe(mailbox),
                    "UNSUBSCRIBE" => Body::Unsubscribe(mailbox),
                    _ => Body::GetQuotaRoot(mailbox),
                }
            }
            "GETQUOTA" => {
                self.sp()?;
                Body::GetQuota(self.astring()?)
            }
            "SETQUOTA" => {
                // Quota comes from the users file: skip the arguments (they
                // may hold literals) and refuse.
                let terminator = if self.input.ends_with(b"\r\n") { 2 } else { 1 };
                self.pos = self.input.len().saturating_sub(terminator).max(self.pos);
                Body::SetQuota
            }
            "RENAME" => {
                self.sp()?;
                let from = self.mailbox()?;
                self.sp()?;
                let to = self.mailbox()?;
                Body::Rename(from, to)
            }
            "LIST" | "LSUB" => self.list(name == "LSUB")?,
            "NOTIFY" => self.notify()?,
            "STATUS" => {
                self.sp()?;
                let mailbox = self.mailbox()?;
                self.sp()?;
                let items = self.status_items()?;
                Body::Status { mailbox, items }
            }
            "APPEND" => self.append()?,
            "SEARCH" => self.search(false)?,
            "SORT" => self.sort(false)?,
            "THREAD" => self.thread(false)?,
            "FETCH" => self.fetch(false)?,
            "STORE" => self.store(false)?,
            "COPY" | "MOVE" => self.copy(false, name == "MOVE")?,
            "UID" => {
                self.sp()?;
                let sub = self.word()?;
                match sub.as_str() {
                    "SEARCH" => self.search(true)?,
                    "SORT" => self.sort(true)?,
                    "THREAD" => self.thread(true)?,
                    "FETCH" => self.fetch(true)?,
                    "STORE" => self.store(true)?,
                    "COPY" => self.copy(true, false)?,
                    "MOVE" => self.copy(true, true)?,
                    "EXPUNGE" => {
                        self.sp()?;
                        Body::Expunge(Some(self.sequence_set()?))
                    }
                    _ => return bad(format!("unknown UID command {sub}")),
                }
            }
            _ => return bad(format!("unknown command {name}")),
        };
        Ok(body)
    }

    /// `1*(SP item)`; `missing` is the complaint when there is none.
    fn one_or_more<T>(&mut self, item: fn(&mut Self) -> R<T>, missing: &str) -> R<Vec<T>> {
        let mut out = Vec::new();
        while self.eat(b' ') {
            out.push(item(self)?);
        }
        if out.is_empty() {
            return bad(missing);
        }
        Ok(out)
    }

    fn nil(&mut self) -> R<()> {
        if self.word()? == "NIL" {
            Ok(())
        } else {
            bad("expected NIL")
        }
    }

    fn nstring(&mut self) -> R<Option<Vec<u8>>> {
        match self.peek() {
            Some(b'"') | Some(b'{') => self.string().map(Some),
            _ => self.nil().map(|()| None),
        }
    }

    /// `list = "LIST" [SP list-select-opts] SP mailbox SP mbox-or-pat
    /// [SP list-return-opts]`
    fn list(&mut self, lsub: bool) -> R<Body> {
        let mut options = ListOptions::default();
        self.sp()?;
        if !lsub && self.eat(b'(') {
            while !self.eat(b')') {
                self.eat(b' ');
                match self.word()?.as_str() {
                    "SUBSCRIBED" => options.subscribed = true,
                    "SPECIAL-USE" => options.special_use_only = true,
                    "RECURSIVEMATCH" => options.recursive_match = true,
                    "REMOTE" => {}
                    other => return bad(format!("unknown LIST selection option {other}")),
                }
            }
            self.sp()?;
            if options.recursive_match && !options.subscribed {
                return bad("RECURSIVEMATCH needs another selection option");
            }
        }
        let reference = self.mailbox()?;
        self.sp()?;
        let mut patterns = Vec::new();
        if self.eat(b'(') {
            while !self.eat(b')') {
                self.eat(b' ');
                patterns.push(self.list_mailbox()?);
                if patterns.len() > 100 {
                    return bad("too many patterns");
                }
            }
        } else {
            patterns.push(self.list_mailbox()?);
        }
        if !lsub && self.eat(b' ') {
            if self.word()? != "RETURN" {
                return bad("expected RETURN");
            }
            self.sp()?;
            self.expect(b'(')?;
            while !self.eat(b')') {
                self.eat(b' ');
                match self.word()?.as_str() {
                    "SUBSCRIBED" => options.return_subscribed = true,
                    "CHILDREN" => options.return_children = true,
                    "SPECIAL-USE" => options.return_special_use = true,
                    "MYRIGHTS" => options.return_myrights = true,
                    "STATUS" => {
                        self.sp()?;
                        options.status = self.status_items()?;
                    }
                    other => return bad(format!("unknown LIST return option {other}")),
                }
            }
        }
        Ok(Body::List {
            reference,
            patterns,
            options,
            lsub,
        })
    }

    /// `notify = "NOTIFY" SP (notify-set / notify-none)`, with the rules
    /// of RFC 5465 §5 and §6.1 that make a well-formed set a BAD one.
    fn notify(&mut self) -> R<Body> {
        self.sp()?;
        match self.word()?.as_str() {
            "NONE" => return Ok(Body::Notify(None)),
            "SET" => {}
            other => return bad(format!("NOTIFY SET or NOTIFY NONE, not {other}")),
        }
        self.sp()?;
        let mut status = false;
        if self.peek() != Some(b'(') {
            if self.word()? != "STATUS" {
                return bad("expected STATUS or an event group after NOTIFY SET");
            }
            status = true;
            self.sp()?;
        }
        let mut groups = Vec::new();
        loop {
            groups.push(self.event_group()?);
            if groups.len() > NOTIFY_GROUPS_MAX {
                return bad(format!("more than {NOTIFY_GROUPS_MAX} event groups"));
            }
            if !self.eat(b' ') {
                break;
            }
        }
        if groups.iter().filter(|g| g.filter.is_selected()).count() > 1 {
            return bad("only one of SELECTED and SELECTED-DELAYED, once (RFC 5465 §6.1)");
        }
        for group in &groups {
            let has = |f: fn(&Event) -> bool| group.events.iter().any(f);
            let new = has(|e| matches!(e, Event::MessageNew(_)));
            let expunge = has(|e| matches!(e, Event::MessageExpunge));
            if new != expunge {
                return bad("MessageNew and MessageExpunge go together (RFC 5465 §5)");
            }
            if has(|e| matches!(e, Event::FlagChange | Event::AnnotationChange)) && !new {
                return bad("FlagChange needs MessageNew and MessageExpunge too (RFC 5465 §5)");
            }
            if group.filter.is_selected() {
                if !group.events.iter().all(Event::is_message_event) {
                    return bad("SELECTED takes message events only (RFC 5465 §6.1)");
                }
            } else if has(|e| matches!(e, Event::MessageNew(items) if !items.is_empty())) {
                return bad("MessageNew takes FETCH items with SELECTED only");
            }
        }
        Ok(Body::Notify(Some(NotifySet { status, groups })))
    }

    /// `event-group = "(" filter-mailboxes SP events ")"`
    fn event_group(&mut self) -> R<EventGroup> {
        self.expect(b'(')?;
        let filter = match self.word()?.as_str() {
            "SELECTED" => Filter::Selected,
            "SELECTED-DELAYED" => Filter::SelectedDelayed,
            "INBOXES" => Filter::Inboxes,
            "PERSONAL" => Filter::Personal,
            "SUBSCRIBED" => Filter::Subscribed,
            name @ ("SUBTREE" | "MAILBOXES") => {
                self.sp()?;
                // `one-or-more-mailbox = mailbox / many-mailboxes`
                let names = if self.eat(b'(') {
                    self.rest_of_list(Self::mailbox, NOTIFY_NAMES_MAX, "mailboxes")?
                } else {
                    vec![self.mailbox()?]
                };
                if name == "SUBTREE" {
                    Filter::Subtree(names)
                } else {
                    Filter::Mailboxes(names)
                }
            }
            other => return bad(format!("unknown NOTIFY mailbox filter {other}")),
        };
        self.sp()?;
        let events = if self.eat(b'(') {
            self.rest_of_list(Self::event, 20, "events in one group")?
        } else if self.word()? == "NONE" {
            Vec::new()
        } else {
            return bad("expected a list of events or NONE");
        };
        self.expect(b')')?;
        Ok(EventGroup { filter, events })
    }

    /// `item *(SP item) ")"`, the "(" already read: at most `max` items.
    fn rest_of_list<T>(
        &mut self,
        item: fn(&mut Self) -> R<T>,
        max: usize,
        what: &str,
    ) -> R<Vec<T>> {
        let mut out = Vec::new();
        loop {
            out.push(item(self)?);
            if out.len() > max {
                return bad(format!("more than {max} {what}"));
            }
            if self.eat(b')') {
                return Ok(out);
            }
            self.sp()?;
        }
    }

    /// `event = mailbox-event / message-event / event-ext`
    fn event(&mut self) -> R<Event> {
        let name = self.atom()?;
        Ok(match name.to_ascii_uppercase().as_str() {
            "MESSAGENEW" => {
                let mut items = Vec::new();
                if self.input[self.pos..].starts_with(b" (") {
                    self.pos += 2;
                    items = self.rest_of_list(Self::fetch_att, 50, "FETCH items")?;
                }
                Event::MessageNew(items)
            }
            "MESSAGEEXPUNGE" => Event::MessageExpunge,
            "FLAGCHANGE" => Event::FlagChange,
            "ANNOTATIONCHANGE" => Event::AnnotationChange,
            "MAILBOXNAME" => Event::MailboxName,
            "SUBSCRIPTIONCHANGE" => Event::SubscriptionChange,
            "MAILBOXMETADATACHANGE" => Event::MailboxMetadataChange,
            "SERVERMETADATACHANGE" => Event::ServerMetadataChange,
            _ => Event::Other(name),
        })
    }

    fn status_items(&mut self) -> R<Vec<StatusItem>> {
        self.expect(b'(')?;
        let mut items = Vec::new();
        while !self.eat(b')') {
            self.eat(b' ');
            items.push(match self.word()?.as_str() {
                "MESSAGES" => StatusItem::Messages,
                "RECENT" => StatusItem::Recent,
                "UIDNEXT" => StatusItem::UidNext,
                "UIDVALIDITY" => StatusItem::UidValidity,
                "UNSEEN" => StatusItem::Unseen,
                "DELETED" => StatusItem::Deleted,
                "SIZE" => StatusItem::Size,
                "HIGHESTMODSEQ" => StatusItem::HighestModSeq,
                other => return bad(format!("unknown STATUS item {other}")),
            });
            if items.len() > 20 {
                return bad("too many STATUS items");
            }
        }
        Ok(items)
    }

    fn flag_list(&mut self) -> R<Vec<String>> {
        let mut flags = Vec::new();
        let paren = self.eat(b'(');
        loop {
            if paren && self.eat(b')') {
                break;
            }
            if paren && !flags.is_empty() {
                self.sp()?;
            }
            flags.push(self.flag()?);
            if flags.len() > 100 {
                return bad("too many flags");
            }
            if !paren && !self.eat(b' ') {
                break;
            }
        }
        Ok(flags)
    }

    /// `flag = "\Answered" / ... / flag-keyword / flag-extension`
    fn flag(&mut self) -> R<String> {
        let backslash = self.eat(b'\\');
        let atom = self.atom()?;
        Ok(if backslash { format!("\\{atom}") } else { atom })
    }

    /// `append = "APPEND" SP mailbox [SP flag-list] [SP date-time] SP literal`
    fn append(&mut self) -> R<Body> {
        self.sp()?;
        let mailbox = self.mailbox()?;
        let mut messages = Vec::new();
        // `append-message *(SP append-message)` (MULTIAPPEND, RFC 3502).
        while self.eat(b' ') {
            let mut flags = Vec::new();
            if self.peek() == Some(b'(') {
                flags = self.flag_list()?;
                self.sp()?;
            }
            let mut date = None;
            if self.peek() == Some(b'"') {
                let text = self.quoted()?;
                date = Some(parse_date_time(&String::from_utf8_lossy(&text))?);
                self.sp()?;
            }
            // `utf8-literal = "UTF8" SP "(" literal8 ")"` (RFC 6855 §4):
            // a message with UTF-8 headers, kept as given; or `CATENATE
            // SP "(" cat-part *(SP cat-part) ")"` (RFC 4469).
            let mut utf8 = false;
            if self.peek().is_some_and(|b| b.is_ascii_alphabetic()) {
                match self.word()?.as_str() {
                    "UTF8" => {
                        utf8 = true;
                        self.sp()?;
                        self.expect(b'(')?;
                    }
                    "CATENATE" => {
                        messages.push(Appended {
                            flags,
                            date,
                            message: Vec::new(),
                            binary: false,
                            catenate: self.cat_parts()?,
                        });
                        continue;
                    }
                    _ => return bad("expected a message literal, UTF8 (literal8) or CATENATE"),
                }
            }
            let binary = self.peek() == Some(b'~');
            let message = self.string()?;
            if utf8 {
                self.expect(b')')?;
            }
            messages.push(Appended {
                flags,
                date,
                message,
                binary,
                catenate: Vec::new(),
            });
        }
        if messages.is_empty() {
            return bad("APPEND needs a message");
        }
        Ok(Body::Append { mailbox, messages })
    }

    /// `SP "(" cat-part *(SP cat-part) ")"`, `cat-part = "TEXT" SP
    /// literal / "URL" SP astring` (RFC 4469 §5; TEXT may be a literal8).
    fn cat_parts(&mut self) -> R<Vec<CatPart>> {
        self.sp()?;
        self.expect(b'(')?;
        let mut parts = Vec::new();
        while !self.eat(b')') {
            if !parts.is_empty() {
                self.sp()?;
            }
            match self.word()?.as_str() {
                "TEXT" => {
                    self.sp()?;
                    let binary = self.peek() == Some(b'~');
                    if !matches!(self.peek(), Some(b'{' | b'~')) {
                        return bad("CATENATE TEXT takes a literal");
                    }
                    parts.push(CatPart::Text(self.string()?, binary));
                }
                "URL" => {
                    self.sp()?;
                    parts.push(CatPart::Url(self.astring()?));
                }
                other => return bad(format!("unknown CATENATE part {other} (TEXT or URL)")),
            }
            if parts.len() > 1000 {
                return bad("too many CATENATE parts");
            }
        }
        if parts.is_empty() {
            return bad("CATENATE needs a part");
        }
        Ok(parts)
    }

    fn fetch(&mut self, uid: bool) -> R<Body> {
        self.sp()?;
        let set = self.sequence_set()?;
        self.sp()?;
        let mut items = Vec::new();
        if self.eat(b'(') {
            while !self.eat(b')') {
                if !items.is_empty() {
                    self.sp()?;
                }
                items.push(self.fetch_att()?);
                if items.len() > 100 {
                    return bad("too many FETCH items");
                }
            }
        } else {
            let save = self.pos;
            match self.word()?.as_str() {
                "ALL" => items.extend([
                    FetchItem::Flags,
                    FetchItem::InternalDate,
                    FetchItem::Rfc822Size,
                    FetchItem::Envelope,
                ]),
                "FAST" => items.extend([
                    FetchItem::Flags,
                    FetchItem::InternalDate,
                    FetchItem::Rfc822Size,
                ]),
                "FULL" => items.extend([
                    FetchItem::Flags,
                    FetchItem::InternalDate,
                    FetchItem::Rfc822Size,
                    FetchItem::Envelope,
                    FetchItem::Body,
                ]),
                _ => {
                    self.pos = save;
                    items.push(self.fetch_att()?);
                }
            }
        }
        let (mut changed_since, mut vanished) = (None, false);
        if self.eat(b' ') {
            self.expect(b'(')?;
            while !self.eat(b')') {
                self.eat(b' ');
                match self.word()?.as_str() {
                    "CHANGEDSINCE" => {
                        self.sp()?;
                        changed_since = Some(self.number()?);
                    }
                    "VANISHED" if uid => vanished = true,
                    other => return bad(format!("unknown FETCH modifier {other}")),
                }
            }
            if vanished && changed_since.is_none() {
                return bad("VANISHED needs CHANGEDSINCE");
            }
        }
        if items.is_empty() {
            return bad("FETCH needs at least one item");
        }
        if uid && !items.contains(&FetchItem::Uid) {
            items.insert(0, FetchItem::Uid);
        }
        // CHANGEDSINCE implies MODSEQ (RFC 7162 §3.1.4.1).
        if changed_since.is_some() && !items.contains(&FetchItem::ModSeq) {
            items.push(FetchItem::ModSeq);
        }
        Ok(Body::Fetch {
            uid,
            set,
            items,
            changed_since,
            vanished,
        })
    }

    fn fetch_att(&mut self) -> R<FetchItem> {
        let start = self.pos;
        while self.peek().is_some_and(|b| is_atom_char(b) && b != b'[') {
            self.pos += 1;
        }
        let name = String::from_utf8_lossy(&self.input[start..self.pos]).to_ascii_uppercase();
        Ok(match name.as_str() {
            "ENVELOPE" => FetchItem::Envelope,
            "FLAGS" => FetchItem::Flags,
            "INTERNALDATE" => FetchItem::InternalDate,
            "RFC822.SIZE" => FetchItem::Rfc822Size,
            "RFC822" => FetchItem::Rfc822,
            "RFC822.HEADER" => FetchItem::Rfc822Header,
            "RFC822.TEXT" => FetchItem::Rfc822Text,
            "BODYSTRUCTURE" => FetchItem::BodyStructure,
            "UID" => FetchItem::Uid,
            "MODSEQ" => FetchItem::ModSeq,
            "BINARY" | "BINARY.PEEK" | "BINARY.SIZE" => {
                self.expect(b'[')?;
                let mut part = Vec::new();
                while !self.eat(b']') {
                    if !part.is_empty() {
                        self.expect(b'.')?;
                    }
                    part.push(self.nz_number()?);
                    if part.len() > 100 {
                        return bad("part number too deep");
                    }
                }
                if name == "BINARY.SIZE" {
                    FetchItem::BinarySize(part)
                } else {
                    FetchItem::Binary {
                        part,
                        peek: name == "BINARY.PEEK",
                        partial: self.partial()?,
                    }
                }
            }
            "BODY" if self.peek() != Some(b'[') => FetchItem::Body,
            "BODY" | "BODY.PEEK" => {
                let section = self.section()?;
                let partial = self.partial()?;
                FetchItem::Section {
                    section,
                    peek: name == "BODY.PEEK",
                    partial,
                }
            }
            "" => return bad("expected a FETCH item"),
            other => return bad(format!("unknown FETCH item {other}")),
        })
    }

    /// `partial = "<" number "." nz-number ">"`, if there.
    fn partial(&mut self) -> R<Option<(u32, u32)>> {
        if !self.eat(b'<') {
            return Ok(None);
        }
        let origin = u32::try_from(self.number()?).or_else(|_| bad("partial too large"))?;
        self.expect(b'.')?;
        let count = self.nz_number()?;
        self.expect(b'>')?;
        Ok(Some((origin, count)))
    }

    /// `section = "[" [section-spec] "]"`
    fn section(&mut self) -> R<Section> {
        self.expect(b'[')?;
        let mut part = Vec::new();
        while self.peek().is_some_and(|b| b.is_ascii_digit()) {
            part.push(self.nz_number()?);
            if part.len() > 100 {
                return bad("section part too deep");
            }
            if !self.eat(b'.') {
                break;
            }
        }
        let text = if self.eat(b']') {
            if !part.is_empty() && self.input.get(self.pos - 2) == Some(&b'.') {
                return bad("section ends with '.'");
            }
            return Ok(Section {
                part,
                text: SectionText::Full,
            });
        } else {
            let name = self.word()?;
            match name.as_str() {
                "HEADER" => SectionText::Header,
                "TEXT" => SectionText::Text,
                "MIME" if !part.is_empty() => SectionText::Mime,
                "HEADER.FIELDS" | "HEADER.FIELDS.NOT" => {
                    self.sp()?;
                    self.expect(b'(')?;
                    let mut fields = Vec::new();
                    while !self.eat(b')') {
                        if !fields.is_empty() {
                            self.sp()?;
                        }
                        fields.push(self.astring()?);
                        if fields.len() > 1000 {
                            return bad("too many header fields");
                        }
                    }
                    if fields.is_empty() {
                        return bad("HEADER.FIELDS needs at least one field");
                    }
                    SectionText::HeaderFields {
                        not: name.ends_with(".NOT"),
                        fields,
                    }
                }
                other => return bad(format!("unknown section {other}")),
            }
        };
        self.expect(b']')?;
        Ok(Section { part, text })
    }

    fn store(&mut self, uid: bool) -> R<Body> {
        self.sp()?;
        let set = self.sequence_set()?;
        self.sp()?;
        let mut unchanged_since = None;
        if self.eat(b'(') {
            if self.word()? != "UNCHANGEDSINCE" {
                return bad("the STORE modifier is UNCHANGEDSINCE");
            }
            self.sp()?;
            unchanged_since = Some(self.number()?);
            self.expect(b')')?;
            self.sp()?;
        }
        let op = self.word()?;
        let (mode, rest) = match op.as_bytes().first() {
            Some(b'+') => (StoreMode::Add, &op[1..]),
            Some(b'-') => (StoreMode::Remove, &op[1..]),
            _ => (StoreMode::Replace, op.as_str()),
        };
        let silent = match rest {
            "FLAGS" => false,
            "FLAGS.SILENT" => true,
            _ => return bad("expected FLAGS or FLAGS.SILENT"),
        };
        self.sp()?;
        let flags = if self.peek() == Some(b'(') && self.input.get(self.pos + 1) == Some(&b')') {
            self.pos += 2;
            Vec::new()
        } else {
            self.flag_list()?
        };
        Ok(Body::Store {
            uid,
            set,
            mode,
            silent,
            flags,
            unchanged_since,
        })
    }

    /// `"(" uidvalidity SP mod-sequence-value [SP known-uids]
    /// [SP seq-match-data] ")"`; the sequence match data is read and
    /// dropped (it only saves the server work it does not need).
    fn qresync_params(&mut self) -> R<Qresync> {
        self.expect(b'(')?;
        let validity = self.nz_number()?;
        self.sp()?;
        let modseq = self.number()?;
        let mut known_uids = None;
        if self.eat(b' ') {
            if self.peek() == Some(b'(') {
                self.skip_seq_match()?;
            } else {
                known_uids = Some(self.sequence_set()?);
                if self.eat(b' ') {
                    self.skip_seq_match()?;
                }
            }
        }
        self.expect(b')')?;
        Ok(Qresync {
            validity,
            modseq,
            known_uids,
        })
    }

    fn skip_seq_match(&mut self) -> R<()> {
        self.expect(b'(')?;
        self.sequence_set()?;
        self.sp()?;
        self.sequence_set()?;
        self.expect(b')')
    }

    fn copy(&mut self, uid: bool, remove: bool) -> R<Body> {
        self.sp()?;
        let set = self.sequence_set()?;
        self.sp()?;
        let mailbox = self.mailbox()?;
        Ok(Body::Copy {
            uid,
            set,
            mailbox,
            remove,
        })
    }

    /// `sort = ["UID" SP] "SORT" SP sort-criteria SP search-charset
    /// 1*(SP search-key)`
    fn sort(&mut self, uid: bool) -> R<Body> {
        self.sp()?;
        let ret = self.return_clause(false)?;
        self.expect(b'(')?;
        let mut criteria = Vec::new();
        while !self.eat(b')') {
            self.eat(b' ');
            let mut word = self.word()?;
            let reverse = word == "REVERSE";
            if reverse {
                self.sp()?;
                word = self.word()?;
            }
            let key = match word.as_str() {
                "ARRIVAL" => SortKey::Arrival,
                "CC" => SortKey::Cc,
                "DATE" => SortKey::Date,
                "FROM" => SortKey::From,
                "SIZE" => SortKey::Size,
                "SUBJECT" => SortKey::Subject,
                "TO" => SortKey::To,
                "DISPLAYFROM" => SortKey::DisplayFrom,
                "DISPLAYTO" => SortKey::DisplayTo,
                other => return bad(format!("unknown SORT criterion {other}")),
            };
            criteria.push((reverse, key));
            if criteria.len() > 20 {
                return bad("too many SORT criteria");
            }
        }
        if criteria.is_empty() {
            return bad("SORT needs a criterion");
        }
        self.sp()?;
        let (charset, key) = self.charset_and_keys()?;
        if let Some(refused) = charset {
            return Ok(refused);
        }
        Ok(Body::Sort {
            uid,
            criteria,
            key,
            ret,
        })
    }

    /// `thread = ["UID" SP] "THREAD" SP thread-alg SP search-charset
    /// 1*(SP search-key)`
    fn thread(&mut self, uid: bool) -> R<Body> {
        self.sp()?;
        let references = match self.word()?.as_str() {
            "REFERENCES" => true,
            "ORDEREDSUBJECT" => false,
            other => return bad(format!("unknown THREAD algorithm {other}")),
        };
        self.sp()?;
        let (charset, key) = self.charset_and_keys()?;
        if let Some(refused) = charset {
            return Ok(refused);
        }
        Ok(Body::Thread {
            uid,
            references,
            key,
        })
    }

    /// The charset SORT and THREAD require (and SEARCH may name), then the
    /// search keys. An
    /// unknown charset is no syntax error: RFC 5256 §3 wants a tagged NO
    /// with BADCHARSET, so it comes back as a [`Body::Refused`]. Its keys
    /// may hold bytes of that charset, so they are skipped, not parsed.
    fn charset_and_keys(&mut self) -> R<(Option<Body>, SearchKey)> {
        let charset = self.astring_bytes()?;
        self.sp()?;
        if !charset.eq_ignore_ascii_case(b"UTF-8") && !charset.eq_ignore_ascii_case(b"US-ASCII") {
            let end = self.input.strip_suffix(b"\n").unwrap_or(self.input);
            self.pos = end.strip_suffix(b"\r").unwrap_or(end).len();
            // The client's charset name is not echoed: a literal may
            // hold a CRLF.
            let text = "[BADCHARSET (UTF-8 US-ASCII)] only UTF-8 and US-ASCII are supported";
            return Ok((Some(Body::Refused(text.into())), SearchKey::All));
        }
        Ok((None, self.search_keys()?))
    }

    /// `search-key *(SP search-key)`, as one key.
    fn search_keys(&mut self) -> R<SearchKey> {
        let mut keys = vec![self.search_key(0)?];
        while self.eat(b' ') {
            keys.push(self.search_key(0)?);
        }
        Ok(if keys.len() == 1 {
            keys.remove(0)
        } else {
            SearchKey::And(keys)
        })
    }

    /// `search = "SEARCH" [search-return-opts] [SP "CHARSET" SP charset]
    /// 1*(SP search-key)`
    fn search(&mut self, uid: bool) -> R<Body> {
        self.sp()?;
        let ret = self.return_clause(true)?;
        let save = self.pos;
        if self.peek().is_some_and(|b| b.is_ascii_alphabetic()) && self.word()? == "CHARSET" {
            self.sp()?;
            let (refused, key) = self.charset_and_keys()?;
            return Ok(refused.unwrap_or(Body::Search { uid, key, ret }));
        } else {
            self.pos = save;
        }
        let key = self.search_keys()?;
        Ok(Body::Search { uid, key, ret })
    }

    /// `"RETURN" SP "(" ... ")" SP` if it comes next (else nothing is
    /// taken): the options of [`Parser::return_options`].
    fn return_clause(&mut self, search: bool) -> R<Option<Vec<String>>> {
        let save = self.pos;
        if self.peek().is_some_and(|b| b.is_ascii_alphabetic()) && self.word()? == "RETURN" {
            let opts = self.return_options(search)?;
            self.sp()?;
            return Ok(Some(opts));
        }
        self.pos = save;
        Ok(None)
    }

    /// `SP "(" [return-opt *(SP return-opt)] ")"` after RETURN, for SEARCH
    /// (ESEARCH, RFC 4731; SAVE, RFC 5182) and SORT (ESORT, RFC 5267):
    /// MIN, MAX, ALL, COUNT, SAVE (SEARCH only), UPDATE and CONTEXT (RFC
    /// 5267 §4) and `PARTIAL range` (RFC 9394), which is kept as the one
    /// option `PARTIAL lo:hi`.
    fn return_options(&mut self, search: bool) -> R<Vec<String>> {
        self.sp()?;
        self.expect(b'(')?;
        let mut opts = Vec::new();
        while !self.eat(b')') {
            self.eat(b' ');
            let opt = self.word()?;
            match opt.as_str() {
                "MIN" | "MAX" | "ALL" | "COUNT" | "UPDATE" | "CONTEXT" => opts.push(opt),
                "SAVE" if search => opts.push(opt),
                "PARTIAL" => {
                    self.sp()?;
                    let range = self.atom()?;
                    if partial_range(&format!("PARTIAL {range}")).is_none() {
                        return bad(format!("bad PARTIAL range {range}"));
                    }
                    opts.push(format!("PARTIAL {range}"));
                }
                _ => return bad(format!("unknown RETURN option {opt}")),
            }
            if opts.len() > 8 {
                return bad("too many RETURN options");
            }
        }
        Ok(opts)
    }

    fn search_key(&mut self, depth: usize) -> R<SearchKey> {
        if depth > MAX_DEPTH {
            return bad("search keys nested too deeply");
        }
        self.keys += 1;
        if self.keys > MAX_KEYS {
            return bad("too many search keys");
        }
        if self.eat(b'(') {
            let mut keys = vec![self.search_key(depth + 1)?];
            while !self.eat(b')') {
                self.sp()?;
                keys.push(self.search_key(depth + 1)?);
            }
            return Ok(SearchKey::And(keys));
        }
        if self.looks_like_sequence_set() {
            return Ok(SearchKey::Seq(self.sequence_set()?));
        }
        use crate::proto::flags;
        let key = self.word()?;
        let text = |p: &mut Self| -> R<String> {
            p.sp()?;
            Ok(String::from_utf8_lossy(&p.astring_bytes()?).into_owned())
        };
        let date = |p: &mut Self| -> R<Date> {
            p.sp()?;
            let s = p.astring()?;
            parse_date(&s)
        };
        Ok(match key.as_str() {
            "ALL" => SearchKey::All,
            "ANSWERED" => SearchKey::Flag(flags::ANSWERED, true),
            "UNANSWERED" => SearchKey::Flag(flags::ANSWERED, false),
            "DELETED" => SearchKey::Flag(flags::DELETED, true),
            "UNDELETED" => SearchKey::Flag(flags::DELETED, false),
            "DRAFT" => SearchKey::Flag(flags::DRAFT, true),
            "UNDRAFT" => SearchKey::Flag(flags::DRAFT, false),
            "FLAGGED" => SearchKey::Flag(flags::FLAGGED, true),
            "UNFLAGGED" => SearchKey::Flag(flags::FLAGGED, false),
            "SEEN" => SearchKey::Flag(flags::SEEN, true),
            "UNSEEN" => SearchKey::Flag(flags::SEEN, false),
            "NEW" => SearchKey::New,
            "OLD" => SearchKey::Old,
            "RECENT" => SearchKey::Recent,
            "KEYWORD" | "UNKEYWORD" => {
                self.sp()?;
                SearchKey::Keyword(self.atom()?, key == "KEYWORD")
            }
            "BCC" | "CC" | "FROM" | "SUBJECT" | "TO" => {
                let name = key.clone();
                SearchKey::Header(name, text(self)?)
            }
            "HEADER" => {
                let name = text(self)?;
                SearchKey::Header(name.to_ascii_uppercase(), text(self)?)
            }
            "BODY" => SearchKey::Body(text(self)?),
            "TEXT" => SearchKey::Text(text(self)?),
            "BEFORE" => SearchKey::Before(date(self)?),
            "ON" => SearchKey::On(date(self)?),
            "SINCE" => SearchKey::Since(date(self)?),
            "SENTBEFORE" => SearchKey::SentBefore(date(self)?),
            "SENTON" => SearchKey::SentOn(date(self)?),
            "SENTSINCE" => SearchKey::SentSince(date(self)?),
            "LARGER" => {
                self.sp()?;
                SearchKey::Larger(self.number()?)
            }
            "SMALLER" => {
                self.sp()?;
                SearchKey::Smaller(self.number()?)
            }
            "UID" => {
                self.sp()?;
                SearchKey::Uid(self.sequence_set()?)
            }
            "MODSEQ" => {
                self.sp()?;
                // `[entry-name SP entry-type-req SP]`: per-flag modseqs
                // are not kept, so the entry is read and ignored.
                if self.peek() == Some(b'"') {
                    self.astring()?;
                    self.sp()?;
                    self.word()?;
                    self.sp()?;
                }
                SearchKey::ModSeq(self.number()?)
            }
            "NOT" => {
                self.sp()?;
                SearchKey::Not(Box::new(self.search_key(depth + 1)?))
            }
            "OR" => {
                self.sp()?;
                let a = self.search_key(depth + 1)?;
                self.sp()?;
                let b = self.search_key(depth + 1)?;
                SearchKey::Or(Box::new(a), Box::new(b))
            }
            other => return bad(format!("unknown search key {other}")),
        })
    }
}

const MONTHS: [&str; 12] = [
    "JAN", "FEB", "MAR", "APR", "MAY", "JUN", "JUL", "AUG", "SEP", "OCT", "NOV", "DEC",
];

/// Days since 1970-01-01 of a civil date (Howard Hinnant's algorithm).
pub fn days_from_civil(y: i64, m: u32, d: u32) -> i64 {
    let y = if m <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let m = i64::from(m);
    let doy = (153 * (if m > 2 { m - 3 } else { m + 9 }) + 2) / 5 + i64::from(d) - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

/// `date = date-text / DQUOTE date-text DQUOTE`, `d-Mon-yyyy`.
pub fn parse_date(text: &str) -> R<Date> {
    let mut parts = text.split('-');
    let (Some(d), Some(m), Some(y), None) =
        (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return bad("expected a date like 1-Feb-2024");
    };
    let d: u32 = d.trim().parse().or_else(|_| bad("bad day"))?;
    let m = MONTHS
        .iter()
        .position(|x| x.eq_ignore_ascii_case(m))
        .ok_or_else(|| Bad("bad month".into()))? as u32
        + 1;
    let y: i64 = y.parse().or_else(|_| bad("bad year"))?;
    if !(1..=31).contains(&d) || !(1..=9999).contains(&y) {
        return bad("date out of range");
    }
    Ok(Date(days_from_civil(y, m, d)))
}

/// `date-time = DQUOTE date-day-fixed "-" date-month "-" date-year SP time
/// SP zone DQUOTE` (the quotes already removed).
pub fn parse_date_time(text: &str) -> R<SystemTime> {
    let text = text.trim_start();
    let (date, rest) = text
        .split_once(' ')
        .ok_or_else(|| Bad("bad date-time".into()))?;
    let days = parse_date(date)?.0;
    let (time, zone) = rest
        .split_once(' ')
        .ok_or_else(|| Bad("bad date-time".into()))?;
    let hms: Vec<u32> = time.split(':').map(|x| x.parse().unwrap_or(99)).collect();
    if hms.len() != 3 || hms[0] > 23 || hms[1] > 59 || hms[2] > 60 {
        return bad("bad time in date-time");
    }
    let zone = zone.as_bytes();
    if zone.len() != 5
        || !matches!(zone[0], b'+' | b'-')
        || !zone[1..].iter().all(u8::is_ascii_digit)
    {
        return bad("bad zone in date-time");
    }
    let zh = i64::from(zone[1] - b'0') * 10 + i64::from(zone[2] - b'0');
    let zm = i64::from(zone[3] - b'0') * 10 + i64::from(zone[4] - b'0');
    let offset = (zh * 60 + zm) * 60 * if zone[0] == b'-' { -1 } else { 1 };
    let secs =
        days * 86_400 + i64::from(hms[0]) * 3600 + i64::from(hms[1]) * 60 + i64::from(hms[2])
            - offset;
    if secs < 0 {
        return bad("date-time before 1970");
    }
    Ok(SystemTime::UNIX_EPOCH + std::time::Duration::from_secs(secs as u64))
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    /// Found by the imap_command fuzz target: a NUL in a quoted name was
    /// taken, and the server's own writer could not give it back.
    #[test]
    fn strings_never_hold_nul() {
        assert!(parse(b"a CREATE \"Sent \x00x\"\r\n").is_err());
        assert!(parse(b"a CREATE {3}\r\na\x00b\r\n").is_err());
        assert!(parse(b"a LOGIN u \"p\x00\"\r\n").is_err());
        assert!(parse(b"a CREATE \"Sent\"\r\n").is_ok());
    }

    #[test]
    fn literal_announcements() {
        assert_eq!(literal_at_end(b"a LOGIN {5}\r\n"), Some((5, true)));
        assert_eq!(literal_at_end(b"a APPEND x {100+}\r\n"), Some((100, false)));
        assert_eq!(literal_at_end(b"a LOGIN {}\r\n"), None);
        assert_eq!(literal_at_end(b"a LOGIN {5} x\r\n"), None);
        // Too large to count: a literal all the same, of the largest
        // size, which every limit refuses; never a line whose literal's
        // bytes would then be read as commands.
        assert_eq!(
            literal_at_end(b"a {99999999999999999999}\r\n"),
            Some((usize::MAX, true))
        );
        assert_eq!(
            literal_at_end(b"a CHECKSCRIPT {18446744073709551615+}\r\n"),
            Some((usize::MAX, false))
        );
    }

    fn ok(s: &str) -> Body {
        parse(s.as_bytes())
            .unwrap_or_else(|e| panic!("{s}: {e:?}"))
            .body
    }

    fn refused(s: &str) {
        assert!(parse(s.as_bytes()).is_err(), "{s} parsed");
    }

    #[test]
    fn parses_acl_commands() {
        // RFC 4314 §3 examples.
        assert_eq!(
            ok("A035 SETACL INBOX/Drafts John lrQswicda\r\n"),
            Body::Acl(AclCommand::SetAcl {
                mailbox: "INBOX/Drafts".into(),
                identifier: "John".into(),
                rights: "lrQswicda".into()
            })
        );
        assert_eq!(
            ok("A002 SETACL INBOX.Projects \"bob@d\" -w\r\n"),
            Body::Acl(AclCommand::SetAcl {
                mailbox: "INBOX.Projects".into(),
                identifier: "bob@d".into(),
                rights: "-w".into()
            })
        );
        assert_eq!(
            ok("A003 DELETEACL INBOX Fred\r\n"),
            Body::Acl(AclCommand::DeleteAcl {
                mailbox: "INBOX".into(),
                identifier: "Fred".into()
            })
        );
        assert_eq!(
            ok("A002 GETACL INBOX\r\n"),
            Body::Acl(AclCommand::GetAcl("INBOX".into()))
        );
        assert_eq!(
            ok("a LISTRIGHTS ~/Mail/saved smith\r\n"),
            Body::Acl(AclCommand::ListRights {
                mailbox: "~/Mail/saved".into(),
                identifier: "smith".into()
            })
        );
        assert_eq!(
            ok("A003 MYRIGHTS INBOX\r\n"),
            Body::Acl(AclCommand::MyRights("INBOX".into()))
        );
        assert!(parse(b"a SETACL INBOX bob\r\n").is_err());
        assert!(parse(b"a MYRIGHTS\r\n").is_err());
        match ok("a LIST \"\" * RETURN (MYRIGHTS)\r\n") {
            Body::List { options, .. } => assert!(options.return_myrights),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn parses_rfc_examples() {
        assert_eq!(ok("a1 NOOP\r\n"), Body::Noop);
        assert_eq!(
            ok("a LOGIN {4}\r\nfred \"a\\\"b\"\r\n"),
            Body::Login {
                user: "fred".into(),
                password: "a\"b".into()
            }
        );
        match ok(
            "A654 FETCH 2:4 (FLAGS BODY[HEADER.FIELDS (DATE FROM)] BODY.PEEK[1.2.MIME]<0.100>)\r\n",
        ) {
            Body::Fetch {
                uid: false,
                set,
                items,
                ..
            } => {
                assert_eq!(set.0, vec![(Bound::Num(2), Bound::Num(4))]);
                assert_eq!(items.len(), 3);
                assert_eq!(
                    items[2],
                    FetchItem::Section {
                        section: Section {
                            part: vec![1, 2],
                            text: SectionText::Mime
                        },
                        peek: true,
                        partial: Some((0, 100))
                    }
                );
            }
            other => panic!("{other:?}"),
        }
        // CONDSTORE and QRESYNC (RFC 7162).
        match ok("t UID FETCH 1:* (FLAGS) (CHANGEDSINCE 12345 VANISHED)\r\n") {
            Body::Fetch {
                items,
                changed_since: Some(12345),
                vanished: true,
                ..
            } => assert_eq!(
                items,
                vec![FetchItem::Uid, FetchItem::Flags, FetchItem::ModSeq]
            ),
            other => panic!("{other:?}"),
        }
        assert!(parse(b"t FETCH 1 FLAGS (VANISHED)\r\n").is_err());
        assert!(matches!(
            ok("t STORE 1:3 (UNCHANGEDSINCE 7) +FLAGS.SILENT (\\Seen)\r\n"),
            Body::Store {
                unchanged_since: Some(7),
                silent: true,
                ..
            }
        ));
        match ok("t SELECT INBOX (QRESYNC (67890007 20050715194045000 41,43:211,214:541))\r\n") {
            Body::Select {
                qresync: Some(q), ..
            } => {
                assert_eq!((q.validity, q.modseq), (67890007, 20050715194045000));
                assert!(q.known_uids.is_some());
            }
            other => panic!("{other:?}"),
        }
        assert!(matches!(
            ok("t EXAMINE INBOX (CONDSTORE)\r\n"),
            Body::Select {
                condstore: true,
                read_only: true,
                ..
            }
        ));
        assert!(matches!(
            ok("t SEARCH MODSEQ \"/flags/\\\\draft\" all 620162338\r\n"),
            Body::Search {
                key: SearchKey::ModSeq(620162338),
                ..
            }
        ));
        // An unknown charset is a refusal (NO [BADCHARSET]), not bad syntax.
        assert!(matches!(
            ok("t SEARCH CHARSET KOI8-R SUBJECT x\r\n"),
            Body::Refused(t) if t.starts_with("[BADCHARSET (UTF-8 US-ASCII)]")
        ));
        assert!(matches!(
            ok("t UID SEARCH CHARSET utf-8 SUBJECT x\r\n"),
            Body::Search { uid: true, .. }
        ));
        // CATENATE (RFC 4469 §5's example), also in a MULTIAPPEND.
        match ok(
            "A003 APPEND Drafts (\\Seen \\Draft $MDNSent) CATENATE (URL \"/Drafts;UIDVALIDITY=385759045/;UID=20/;section=HEADER\" TEXT {42}\r\n\r\n--------------030308070208000400050907\r\n URL \"/Drafts;UIDVALIDITY=385759045/;UID=20/;section=1.MIME\") {3}\r\nhi!\r\n",
        ) {
            Body::Append { messages, .. } => {
                assert_eq!(messages.len(), 2);
                assert_eq!(messages[0].flags.len(), 3);
                let parts = &messages[0].catenate;
                assert_eq!(parts.len(), 3);
                assert!(matches!(&parts[1], CatPart::Text(t, false) if t.len() == 42));
                assert!(matches!(&parts[2], CatPart::Url(u) if u.ends_with("1.MIME")));
                assert!(messages[1].catenate.is_empty() && messages[1].message == b"hi!");
            }
            other => panic!("{other:?}"),
        }
        refused("t APPEND x CATENATE ()\r\n");
        refused("t APPEND x CATENATE (TEXT \"quoted\")\r\n");
        refused("t APPEND x CATENATE (BODY {1}\r\nx)\r\n");
        assert_eq!(
            parse_section("HEADER.FIELDS (SUBJECT)").map(|s| s.text),
            Some(SectionText::HeaderFields {
                not: false,
                fields: vec!["SUBJECT".into()]
            })
        );
        assert_eq!(parse_section("1.2").map(|s| s.part), Some(vec![1, 2]));
        assert_eq!(parse_section("1.2] x"), None);
        // RFC 5267 contexts: UPDATE and CONTEXT, and CANCELUPDATE.
        assert!(matches!(
            ok("B01 UID SEARCH RETURN (UPDATE COUNT) DELETED\r\n"),
            Body::Search { ret: Some(ref r), .. } if r == &["UPDATE", "COUNT"]
        ));
        assert!(matches!(
            ok("C01 UID SORT RETURN (CONTEXT UPDATE) (DATE) UTF-8 ALL\r\n"),
            Body::Sort { ret: Some(ref r), .. } if r == &["CONTEXT", "UPDATE"]
        ));
        assert!(matches!(
            ok("D01 CANCELUPDATE \"B01\" \"C01\"\r\n"),
            Body::CancelUpdate(ref tags) if tags == &["B01", "C01"]
        ));
        match ok("t UID FETCH 1:* FLAGS\r\n") {
            Body::Fetch {
                uid: true, items, ..
            } => {
                assert_eq!(items, vec![FetchItem::Uid, FetchItem::Flags])
            }
            other => panic!("{other:?}"),
        }
        assert!(matches!(
            ok("A003 STORE 2:4 +FLAGS.SILENT (\\Deleted $Junk)\r\n"),
            Body::Store { mode: StoreMode::Add, silent: true, ref flags, .. } if flags.len() == 2
        ));
        assert!(matches!(
            ok("a SEARCH CHARSET UTF-8 OR FROM \"smith\" NOT (SEEN 1:5,7) SINCE 1-Feb-1994\r\n"),
            Body::Search { .. }
        ));
        assert!(matches!(
            ok("a LIST (SUBSCRIBED) \"\" (\"*\" %) RETURN (CHILDREN STATUS (MESSAGES UNSEEN))\r\n"),
            Body::List { ref patterns, ref options, .. } if patterns.len() == 2 && options.subscribed && options.status.len() == 2
        ));
        match ok(
            "a APPEND saved-messages (\\Seen) \"05-Jul-1994 02:44:25 -0700\" {5+}\r\nhello\r\n",
        ) {
            Body::Append { mut messages, .. } if messages.len() == 1 => {
                let Appended {
                    message,
                    date,
                    flags,
                    binary,
                    ..
                } = messages.remove(0);
                assert!(!binary);
                assert_eq!(message, b"hello");
                assert_eq!(flags, vec!["\\Seen"]);
                let secs = date
                    .unwrap()
                    .duration_since(SystemTime::UNIX_EPOCH)
                    .unwrap()
                    .as_secs();
                assert_eq!(secs, 773_401_465);
            }
            other => panic!("{other:?}"),
        }
        assert!(matches!(
            ok("a AUTHENTICATE PLAIN AGEAYg==\r\n"),
            Body::Authenticate {
                initial: Some(_),
                ..
            }
        ));
    }

    #[test]
    fn refuses_bad_input_without_panicking() {
        for bad in [
            "",
            "\r\n",
            "a\r\n",
            "a FETCH\r\n",
            "a FETCH 0 FLAGS\r\n",
            "a FETCH 1:4294967296 FLAGS\r\n",
            "a LOGIN {10}\r\nab\r\n",
            "a SELECT \"x\r\n",
            "a FETCH 1 BODY[1.]\r\n",
            "a FETCH 1 (FLAGS\r\n",
            "+ NOOP\r\n",
            "a NOOP extra\r\n",
        ] {
            assert!(parse(bad.as_bytes()).is_err(), "{bad:?}");
        }
        let deep = format!(
            "a SEARCH {}ALL{}\r\n",
            "(".repeat(10_000),
            ")".repeat(10_000)
        );
        assert!(parse(deep.as_bytes()).is_err());
        let ors = format!("a SEARCH {}ALL{}\r\n", "OR ALL ".repeat(50_000), "");
        assert!(parse(ors.as_bytes()).is_err());
        let nots = format!("a SEARCH {}ALL\r\n", "NOT ".repeat(100_000));
        assert!(parse(nots.as_bytes()).is_err());
        assert!(matches!(
            ok("a FETCH 1:4294967295 FLAGS\r\n"),
            Body::Fetch { .. }
        ));
    }

    #[test]
    fn parses_notify() {
        assert_eq!(ok("a NOTIFY NONE\r\n"), Body::Notify(None));
        let set = ok(
            "a NOTIFY SET (SELECTED (MessageNew (UID FLAGS) MessageExpunge FlagChange)) \
             (PERSONAL (MessageNew MessageExpunge))\r\n",
        );
        assert_eq!(
            set,
            Body::Notify(Some(NotifySet {
                status: false,
                groups: vec![
                    EventGroup {
                        filter: Filter::Selected,
                        events: vec![
                            Event::MessageNew(vec![FetchItem::Uid, FetchItem::Flags]),
                            Event::MessageExpunge,
                            Event::FlagChange,
                        ],
                    },
                    EventGroup {
                        filter: Filter::Personal,
                        events: vec![Event::MessageNew(vec![]), Event::MessageExpunge],
                    },
                ],
            }))
        );
        // RFC 5465 §3.1's example, with a literal-free mailbox list.
        let Body::Notify(Some(set)) = ok("a notify set status (selected-delayed none) \
             (subtree (Lists \"Other Users\") (MessageNew messageexpunge MailboxName)) \
             (mailboxes INBOX (MessageNew MessageExpunge)) (inboxes NONE) (subscribed (SubscriptionChange))\r\n")
        else {
            panic!("not a NOTIFY SET");
        };
        assert!(set.status);
        let filters: Vec<&Filter> = set.groups.iter().map(|g| &g.filter).collect();
        assert_eq!(
            filters,
            [
                &Filter::SelectedDelayed,
                &Filter::Subtree(vec!["Lists".into(), "Other Users".into()]),
                &Filter::Mailboxes(vec!["INBOX".into()]),
                &Filter::Inboxes,
                &Filter::Subscribed,
            ]
        );
        assert!(set.groups[0].events.is_empty());
        assert_eq!(set.groups[1].events[2], Event::MailboxName);
        // Events the server does not know parse, to be refused with NO
        // [BADEVENT] by the session, not BAD.
        let Body::Notify(Some(set)) =
            ok("a NOTIFY SET (PERSONAL (MessageNew MessageExpunge AnnotationChange XFoo))\r\n")
        else {
            panic!("not a NOTIFY SET");
        };
        assert_eq!(set.groups[0].events[2], Event::AnnotationChange);
        assert_eq!(set.groups[0].events[3], Event::Other("XFoo".into()));
    }

    #[test]
    fn refuses_malformed_notify() {
        for line in [
            "a NOTIFY\r\n",
            "a NOTIFY SET\r\n",
            "a NOTIFY SOME (SELECTED NONE)\r\n",
            "a NOTIFY SET (SELECTED)\r\n",
            "a NOTIFY SET (BOGUS NONE)\r\n",
            "a NOTIFY SET (SUBTREE NONE)\r\n",
            "a NOTIFY SET (MAILBOXES () (MessageNew MessageExpunge))\r\n",
            "a NOTIFY SET (SELECTED ())\r\n",
            "a NOTIFY SET (SELECTED (MessageNew MessageExpunge)\r\n",
            "a NOTIFY SET (SELECTED (MessageNew MessageExpunge))(PERSONAL NONE)\r\n",
            // RFC 5465 §5: MessageNew and MessageExpunge together; FlagChange
            // with both.
            "a NOTIFY SET (SELECTED (MessageNew))\r\n",
            "a NOTIFY SET (PERSONAL (MessageExpunge))\r\n",
            "a NOTIFY SET (SELECTED (FlagChange))\r\n",
            "a NOTIFY SET (SELECTED (MessageNew FlagChange))\r\n",
            // §6.1: one selected filter, message events only.
            "a NOTIFY SET (SELECTED NONE) (SELECTED-DELAYED NONE)\r\n",
            "a NOTIFY SET (SELECTED (MailboxName))\r\n",
            // FETCH items belong to the selected mailbox.
            "a NOTIFY SET (PERSONAL (MessageNew (UID) MessageExpunge))\r\n",
            "a NOTIFY SET (SELECTED (MessageNew (NOSUCH) MessageExpunge))\r\n",
        ] {
            assert!(parse(line.as_bytes()).is_err(), "{line:?}");
        }
    }

    #[test]
    fn sequence_sets_are_written_as_runs() {
        assert_eq!(
            SequenceSet::of_sorted(&[1, 2, 3, 7, 9, 10]).to_string(),
            "1:3,7,9:10"
        );
        assert_eq!(SequenceSet::of_sorted(&[]).to_string(), "");
        assert_eq!(
            SequenceSet::of_sorted(&[u32::MAX - 1, u32::MAX]).to_string(),
            "4294967294:4294967295"
        );
        assert_eq!(
            SequenceSet(vec![
                (Bound::Num(4), Bound::Num(2)),
                (Bound::Num(5), Bound::Star)
            ])
            .to_string(),
            "4:2,5:*"
        );
        assert_eq!(
            SequenceSet(vec![(Bound::Saved, Bound::Saved)]).to_string(),
            "$"
        );
    }

    fn fetched_set(command: &str) -> SequenceSet {
        match ok(command) {
            Body::Fetch { set, .. } => set,
            other => panic!("{command}: {other:?}"),
        }
    }

    proptest! {
        #[test]
        fn a_written_sequence_set_parses_back_to_itself(
            ranges in proptest::collection::vec(
                (prop_oneof![(1u32..).prop_map(Bound::Num), Just(Bound::Star)],
                 prop_oneof![(1u32..).prop_map(Bound::Num), Just(Bound::Star)]),
                1..20),
        ) {
            let set = SequenceSet(ranges);
            prop_assert_eq!(fetched_set(&format!("t FETCH {set} FLAGS\r\n")), set);
        }

        #[test]
        fn runs_cover_exactly_the_numbers(
            mut numbers in proptest::collection::vec(1u32..60, 0..40),
        ) {
            numbers.sort_unstable();
            numbers.dedup();
            let set = SequenceSet::of_sorted(&numbers);
            let covered: Vec<u32> = set.ranges(0).flat_map(|(lo, hi)| lo..=hi).collect();
            prop_assert_eq!(covered, numbers);
        }

        #[test]
        fn setacl_arguments_come_back_as_sent(
            mailbox in "[A-Za-z0-9.]{1,20}",
            identifier in "-?[a-z0-9$]{1,12}(@[a-z]{1,8}\\.test)?",
            rights in "[+-]?[a-z]{0,12}",
        ) {
            // Quoted, as a client sends any string that is no atom.
            let line = format!("t SETACL {mailbox} \"{identifier}\" \"{rights}\"\r\n");
            prop_assert_eq!(ok(&line), Body::Acl(AclCommand::SetAcl { mailbox, identifier, rights }));
        }

        #[test]
        fn a_notify_set_parses_back_to_its_parts(
            groups in proptest::collection::vec(
                (prop::sample::select(vec!["INBOXES", "PERSONAL", "SUBSCRIBED", "SUBTREE", "MAILBOXES"]),
                 proptest::collection::vec("[A-Za-z0-9]{1,8}", 1..4),
                 0u8..4),
                1..6),
            selected in prop::option::of(any::<bool>()),
            status in any::<bool>(),
        ) {
            let mut line = String::from("t NOTIFY SET");
            if status {
                line.push_str(" STATUS");
            }
            let mut want = Vec::new();
            if let Some(delayed) = selected {
                line.push_str(if delayed { " (SELECTED-DELAYED" } else { " (SELECTED" });
                line.push_str(" (MessageNew (UID FLAGS) MessageExpunge))");
                want.push(EventGroup {
                    filter: if delayed { Filter::SelectedDelayed } else { Filter::Selected },
                    events: vec![Event::MessageNew(vec![FetchItem::Uid, FetchItem::Flags]), Event::MessageExpunge],
                });
            }
            for (filter, names, events) in &groups {
                let (text, filter) = match *filter {
                    "SUBTREE" => (format!("SUBTREE ({})", names.join(" ")), Filter::Subtree(names.clone())),
                    "MAILBOXES" => (format!("MAILBOXES ({})", names.join(" ")), Filter::Mailboxes(names.clone())),
                    "INBOXES" => ("INBOXES".to_string(), Filter::Inboxes),
                    "PERSONAL" => ("PERSONAL".to_string(), Filter::Personal),
                    _ => ("SUBSCRIBED".to_string(), Filter::Subscribed),
                };
                let (text_events, events) = match events {
                    0 => ("NONE", vec![]),
                    1 => ("(MessageNew MessageExpunge)", vec![Event::MessageNew(vec![]), Event::MessageExpunge]),
                    2 => ("(MessageExpunge MessageNew FlagChange)", vec![Event::MessageExpunge, Event::MessageNew(vec![]), Event::FlagChange]),
                    _ => ("(MailboxName SubscriptionChange)", vec![Event::MailboxName, Event::SubscriptionChange]),
                };
                line.push_str(&format!(" ({text} {text_events})"));
                want.push(EventGroup { filter, events });
            }
            line.push_str("\r\n");
            prop_assert_eq!(ok(&line), Body::Notify(Some(NotifySet { status, groups: want })));
        }

        #[test]
        fn random_notify_never_panics(rest in "[ -~]{0,80}") {
            let _ = parse(format!("t NOTIFY SET {rest}\r\n").as_bytes());
            let _ = parse(format!("t NOTIFY SET (SELECTED (MessageNew {rest}\r\n").as_bytes());
        }

        #[test]
        fn random_input_never_panics(bytes in proptest::collection::vec(any::<u8>(), 0..300)) {
            let _ = parse(&bytes);
        }

        #[test]
        fn random_commands_never_panic(
            name in prop::sample::select(vec!["FETCH", "UID FETCH", "SEARCH", "STORE", "LIST", "APPEND", "STATUS", "SELECT", "LOGIN", "COPY", "SETACL", "DELETEACL", "GETACL", "LISTRIGHTS", "MYRIGHTS"]),
            rest in "[ -~]{0,80}",
        ) {
            let _ = parse(format!("t {name} {rest}\r\n").as_bytes());
        }
    }
}
