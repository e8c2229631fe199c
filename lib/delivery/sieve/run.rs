//! Running a compiled script on one message: tests against the parsed
//! message and envelope, and the actions that result, with the implicit
//! keep of RFC 5228 §2.10.2.
//!
//! A step budget and a time budget bound every run; when one runs out the
//! run stops with an error and the caller keeps the message in INBOX.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use mail_parser::{HeaderValue, Message, MessageParser, MimeHeaders, PartType};

use super::SieveError;
use super::compile::{
    BodyTransform, Comparator, FlagOp, MatchKind, Matcher, Part, Relation, Rule, Script, Test,
};

/// Tests and commands one run may evaluate.
const MAX_STEPS: u64 = 100_000;
/// Comparisons one run may make (string lists times values).
const MAX_COMPARISONS: u64 = 2_000_000;
/// How long one run may take.
const MAX_TIME: Duration = Duration::from_secs(2);

/// What a script decided.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Action {
    /// Into INBOX, with these IMAP flags.
    Keep {
        flags: Vec<String>,
    },
    FileInto {
        mailbox: String,
        create: bool,
        flags: Vec<String>,
    },
    Redirect {
        address: String,
    },
    /// Refuse the message with this reason (reject and ereject).
    Reject {
        reason: String,
    },
    Vacation {
        seconds: u64,
        subject: Option<String>,
        from: Option<String>,
        addresses: Vec<String>,
        handle: Option<String>,
        reason: String,
    },
}

/// The message and envelope a script runs on.
pub struct Input<'a> {
    pub message: &'a [u8],
    pub envelope_from: &'a str,
    pub envelope_to: &'a str,
    /// The recipient delimiter for `:user` / `:detail` (RFC 5233).
    pub delimiter: char,
    /// For `mailboxexists`.
    pub mailbox_exists: &'a dyn Fn(&str) -> bool,
    /// The lines of an external list by name (RFC 6134), `None` if there
    /// is no such list.
    pub list: &'a dyn Fn(&str) -> Option<Vec<String>>,
}

impl Script {
    /// The actions for one message, implicit keep included.
    pub fn run(&self, input: &Input<'_>) -> Result<Vec<Action>, SieveError> {
        let message = MessageParser::default()
            .parse(input.message)
            .unwrap_or_default();
        let mut state = State {
            input,
            message,
            header_text: std::cell::OnceCell::new(),
            actions: Vec::new(),
            cancel_keep: false,
            explicit_keep: false,
            flags: Vec::new(),
            variables: self.variables,
            vars: HashMap::new(),
            captures: Vec::new(),
            steps: 0,
            comparisons: 0,
            started: Instant::now(),
        };
        let _stopped = state.block(&self.rules)?;
        let mut actions = std::mem::take(&mut state.actions);
        if state.explicit_keep || !state.cancel_keep {
            let flags = state.flags.clone();
            if !actions.iter().any(|a| matches!(a, Action::Keep { .. })) {
                actions.push(Action::Keep { flags });
            }
        }
        Ok(actions)
    }
}

struct State<'a> {
    input: &'a Input<'a>,
    message: Message<'a>,
    /// The top-level header fields as unstructured text, parsed at the
    /// first `header`, `exists` or `date` test: RFC 5228 compares a
    /// header's decoded value as it stands, angle brackets and all; only
    /// `address` and `envelope` parse addresses.
    header_text: std::cell::OnceCell<Option<Message<'a>>>,
    actions: Vec<Action>,
    cancel_keep: bool,
    explicit_keep: bool,
    /// The imap4flags internal variable.
    flags: Vec<String>,
    /// `require "variables"`: expand `${…}` in strings.
    variables: bool,
    vars: HashMap<String, String>,
    /// `${0}`…`${9}` from the last successful :matches or :regex.
    captures: Vec<String>,
    steps: u64,
    comparisons: u64,
    started: Instant,
}

/// An error while the script runs (a budget spent, an argument that
/// makes no sense once its variables are filled in): the caller keeps the
/// message and carries out none of the script's actions.
fn runtime_error(message: &str) -> SieveError {
    SieveError {
        line: 0,
        column: 0,
        message: message.into(),
    }
}

/// How deep `body` looks into messages attached to messages.
const MAX_NESTED_MESSAGES: usize = 8;

/// The message and every message attached within it (message/rfc822
/// parts), outermost first, at most [`MAX_NESTED_MESSAGES`] deep.
fn messages_within<'m, 'x>(message: &'m Message<'x>) -> Vec<&'m Message<'x>> {
    let mut found = vec![message];
    let mut level = vec![message];
    for _ in 0..MAX_NESTED_MESSAGES {
        let next: Vec<&Message<'_>> = level
            .iter()
            .flat_map(|m| m.parts.iter())
            .filter_map(|part| match &part.body {
                PartType::Message(inner) => Some(inner),
                _ => None,
            })
            .collect();
        if next.is_empty() {
            break;
        }
        found.extend(next.iter().copied());
        level = next;
    }
    found
}

/// A multipart's prologue (before its first boundary) and epilogue (after
/// its closing one), each without the boundary lines, when not blank.
fn prologue_and_epilogue(
    message: &Message<'_>,
    part: &mail_parser::MessagePart<'_>,
    children: &[mail_parser::MessagePartId],
) -> Vec<String> {
    let raw = message.raw_message();
    let (first, last) = match (children.first(), children.last()) {
        (Some(&f), Some(&l)) => (message.parts.get(f as usize), message.parts.get(l as usize)),
        _ => (None, None),
    };
    let (Some(first), Some(last)) = (first, last) else {
        return Vec::new();
    };
    let text = |from: u32, to: u32| {
        let bytes = raw.get(from as usize..to as usize).unwrap_or(&[]);
        let text = String::from_utf8_lossy(bytes);
        let kept: Vec<&str> = text
            .lines()
            .filter(|line| !line.trim_end().starts_with("--"))
            .collect();
        kept.join("\n").trim().to_string()
    };
    [
        text(part.offset_body, first.offset_header),
        text(last.offset_end, part.offset_end),
    ]
    .into_iter()
    .filter(|t| !t.is_empty())
    .collect()
}

/// One budget: `count` may not pass `max`, and every `every`th time the
/// run's clock is read against [`MAX_TIME`].
fn spend(count: u64, max: u64, every: u64, started: Instant, what: &str) -> Result<(), SieveError> {
    if count > max {
        return Err(runtime_error(&format!("the script {what}")));
    }
    if count.is_multiple_of(every) && started.elapsed() > MAX_TIME {
        return Err(runtime_error("the script ran out of time"));
    }
    Ok(())
}

/// The handle of a vacation without `:handle`: a digest of what the
/// reply says, so changing the text answers everyone afresh (as
/// Pigeonhole does).
fn default_handle(subject: Option<&str>, from: Option<&str>, reason: &str) -> String {
    use sha2::{Digest, Sha256};
    let mut digest = Sha256::new();
    for part in [subject.unwrap_or(""), from.unwrap_or(""), reason] {
        digest.update(part.len().to_le_bytes());
        digest.update(part.as_bytes());
    }
    let sum = digest.finalize();
    let hex: String = sum[..8].iter().map(|b| format!("{b:02x}")).collect();
    format!("text-{hex}")
}

/// The longest a variable may grow (RFC 5229 §3 lets us truncate).
const MAX_VARIABLE: usize = 64 << 10;

impl State<'_> {
    /// `${name}` and `${N}` replaced (RFC 5229 §3); an unknown name is
    /// empty, anything not a variable reference stays as written.
    fn expand(&self, text: &str) -> String {
        if !self.variables || !text.contains("${") {
            return text.to_string();
        }
        let mut out = super::compile::substitute(text, |inside| {
            let name = inside.to_ascii_lowercase();
            let is_name = !name.is_empty()
                && name
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '.');
            if !is_name {
                None
            } else if name.chars().all(|c| c.is_ascii_digit()) {
                let n: usize = name.parse().unwrap_or(usize::MAX);
                Some(self.captures.get(n).cloned().unwrap_or_default())
            } else {
                Some(self.vars.get(&name).cloned().unwrap_or_default())
            }
        });
        out.truncate(floor_char_boundary(&out, MAX_VARIABLE));
        out
    }

    fn step(&mut self) -> Result<(), SieveError> {
        self.steps += 1;
        spend(
            self.steps,
            MAX_STEPS,
            256,
            self.started,
            "took too many steps",
        )
    }

    /// Counts one comparison. A single test over a long key list against
    /// long values can take seconds on its own, so the time budget is
    /// checked here as well as between steps.
    fn compared(&mut self) -> Result<(), SieveError> {
        self.comparisons += 1;
        spend(
            self.comparisons,
            MAX_COMPARISONS,
            64,
            self.started,
            "made too many comparisons",
        )
    }

    /// Runs rules; `true` when `stop` ended the script.
    fn block(&mut self, rules: &[Rule]) -> Result<bool, SieveError> {
        for rule in rules {
            self.step()?;
            match rule {
                Rule::If {
                    branches,
                    otherwise,
                } => {
                    let mut taken = None;
                    for (test, body) in branches {
                        if self.test(test)? {
                            taken = Some(body);
                            break;
                        }
                    }
                    let body = taken.or(otherwise.as_ref());
                    if let Some(body) = body
                        && self.block(body)?
                    {
                        return Ok(true);
                    }
                }
                Rule::Stop => return Ok(true),
                Rule::Keep { flags } => {
                    let flags = flags.clone().unwrap_or_else(|| self.flags.clone());
                    self.explicit_keep = true;
                    self.actions.retain(|a| !matches!(a, Action::Keep { .. }));
                    self.actions.push(Action::Keep { flags });
                }
                Rule::Discard => self.cancel_keep = true,
                Rule::Redirect { address, copy } => {
                    if !*copy {
                        self.cancel_keep = true;
                    }
                    let address = self.expand(address);
                    if crate::proto::address::Address::parse(&address).is_err() {
                        // A runtime error, as Pigeonhole has it: the
                        // message is kept, the script's other actions void.
                        return Err(runtime_error(&format!(
                            "redirect: {address:?} is not a mail address"
                        )));
                    }
                    let action = Action::Redirect { address };
                    if !self.actions.contains(&action) {
                        self.actions.push(action);
                    }
                }
                Rule::FileInto {
                    mailbox,
                    copy,
                    create,
                    flags,
                } => {
                    if !*copy {
                        self.cancel_keep = true;
                    }
                    let flags = flags.clone().unwrap_or_else(|| self.flags.clone());
                    let mailbox = &self.expand(mailbox);
                    let same = |a: &Action| matches!(a, Action::FileInto { mailbox: m, .. } if m == mailbox);
                    if !self.actions.iter().any(same) {
                        self.actions.push(Action::FileInto {
                            mailbox: mailbox.clone(),
                            create: *create,
                            flags,
                        });
                    }
                }
                Rule::Reject { reason } => {
                    self.cancel_keep = true;
                    let reason = self.expand(reason);
                    self.actions.push(Action::Reject { reason });
                }
                Rule::Flags { op, flags } => {
                    let flags: Vec<String> = flags
                        .iter()
                        .flat_map(|f| {
                            self.expand(f)
                                .split_whitespace()
                                .map(str::to_string)
                                .collect::<Vec<_>>()
                        })
                        .collect();
                    let flags = &flags;
                    match op {
                        FlagOp::Set => self.flags = Vec::new(),
                        FlagOp::Add | FlagOp::Remove => {}
                    }
                    for flag in flags {
                        let present = self.flags.iter().position(|f| f.eq_ignore_ascii_case(flag));
                        match (op, present) {
                            (FlagOp::Remove, Some(i)) => {
                                self.flags.remove(i);
                            }
                            (FlagOp::Set | FlagOp::Add, None) => self.flags.push(flag.clone()),
                            _ => {}
                        }
                    }
                }
                Rule::Vacation {
                    seconds,
                    subject,
                    from,
                    addresses,
                    handle,
                    reason,
                } => {
                    // RFC 5230 §4.7: a second vacation fails the script.
                    if self
                        .actions
                        .iter()
                        .any(|a| matches!(a, Action::Vacation { .. }))
                    {
                        return Err(runtime_error("the script ran vacation twice"));
                    }
                    let subject = subject.as_deref().map(|s| self.expand(s));
                    // RFC 5230 §4.3: a :from that is not an address once its
                    // variables are filled in is ignored.
                    let from = from
                        .as_deref()
                        .map(|s| self.expand(s))
                        .filter(|f| super::compile::is_one_mailbox(f));
                    let reason = self.expand(reason);
                    // RFC 5230 §4.2: without :handle, replies with other
                    // text are counted apart, so the handle is made from it.
                    let handle = match handle {
                        Some(h) => self.expand(h),
                        None => default_handle(subject.as_deref(), from.as_deref(), &reason),
                    };
                    let action = Action::Vacation {
                        seconds: *seconds,
                        subject,
                        from,
                        addresses: addresses.iter().map(|a| self.expand(a)).collect(),
                        handle: Some(handle),
                        reason,
                    };
                    self.actions.push(action);
                }
                Rule::Set {
                    name,
                    value,
                    modifiers,
                } => {
                    let mut value = self.expand(value);
                    for m in modifiers {
                        value = modify(&value, m);
                    }
                    self.vars.insert(name.clone(), value);
                }
            }
        }
        Ok(false)
    }

    fn test(&mut self, test: &Test) -> Result<bool, SieveError> {
        self.step()?;
        Ok(match test {
            Test::True => true,
            Test::False => false,
            Test::Not(t) => !self.test(t)?,
            Test::AllOf(tests) => {
                for t in tests {
                    if !self.test(t)? {
                        return Ok(false);
                    }
                }
                true
            }
            Test::AnyOf(tests) => {
                for t in tests {
                    if self.test(t)? {
                        return Ok(true);
                    }
                }
                false
            }
            Test::Exists(names) => names.iter().all(|n| !self.header_values(n).is_empty()),
            Test::Size { over, limit } => {
                let size = self.input.message.len() as u64;
                if *over { size > *limit } else { size < *limit }
            }
            Test::Header {
                names,
                index,
                matcher,
            } => {
                let values: Vec<String> = names
                    .iter()
                    .flat_map(|n| pick(self.header_values(n), *index))
                    .collect();
                self.matches(matcher, &values)?
            }
            Test::Address {
                part,
                names,
                index,
                matcher,
            } => {
                let values: Vec<String> = names
                    .iter()
                    .flat_map(|n| pick(self.address_fields(n), *index))
                    .flatten()
                    .filter_map(|a| address_part(&a, *part, self.input.delimiter))
                    .collect();
                self.matches(matcher, &values)?
            }
            Test::Envelope {
                part,
                names,
                matcher,
            } => {
                let values: Vec<String> = names
                    .iter()
                    .map(|n| {
                        if n == "from" {
                            self.input.envelope_from.to_string()
                        } else {
                            self.input.envelope_to.to_string()
                        }
                    })
                    .filter_map(|a| address_part(&a, *part, self.input.delimiter))
                    .collect();
                self.matches(matcher, &values)?
            }
            Test::Body { transform, matcher } => {
                let values = self.body_values(transform);
                self.matches(matcher, &values)?
            }
            Test::HasFlag { matcher } => {
                let flags = self.flags.clone();
                self.matches(matcher, &flags)?
            }
            Test::MailboxExists(names) => names.iter().all(|n| (self.input.mailbox_exists)(n)),
            Test::ValidExtList(names) => names.iter().all(|n| (self.input.list)(n).is_some()),
            Test::Date {
                header,
                zone,
                part,
                index,
                matcher,
            } => {
                let dates: Vec<(i64, i32)> = match header {
                    None => vec![(
                        std::time::SystemTime::now()
                            .duration_since(std::time::UNIX_EPOCH)
                            .map(|d| d.as_secs() as i64)
                            .unwrap_or(0),
                        0,
                    )],
                    Some(name) => {
                        let values = pick(self.header_dates(name), *index);
                        values
                            .into_iter()
                            .flatten()
                            .map(|d| {
                                let offset = (d.tz_hour as i32 * 60 + d.tz_minute as i32)
                                    * if d.tz_before_gmt { -1 } else { 1 };
                                (d.to_timestamp(), offset)
                            })
                            .collect()
                    }
                };
                let values: Vec<String> = dates
                    .into_iter()
                    .map(|(ts, original)| date_part(ts, zone.unwrap_or(original), part))
                    .collect();
                self.matches(matcher, &values)?
            }
            Test::String { sources, matcher } => {
                let values: Vec<String> = sources.iter().map(|s| self.expand(s)).collect();
                // RFC 5229 §5: an empty string counts as no value for :count.
                let values: Vec<String> = match matcher.kind {
                    MatchKind::Count(_) => values.into_iter().filter(|v| !v.is_empty()).collect(),
                    _ => values,
                };
                self.matches(matcher, &values)?
            }
        })
    }

    /// Every value of a header field, RFC 2047-decoded and unfolded, with
    /// the white space at its ends removed.
    fn header_values(&self, name: &str) -> Vec<String> {
        let parsed = self.header_text.get_or_init(|| {
            // A parser with any explicit entry applies its default to every
            // other field, known names included; alone, it would parse
            // From, Message-ID and List-Id as addresses and ids.
            MessageParser::new()
                .header_text(mail_parser::HeaderName::Subject)
                .default_header_text()
                .parse_headers(self.input.message)
        });
        let Some(parsed) = parsed else {
            return Vec::new();
        };
        parsed
            .headers()
            .iter()
            .filter(|h| h.name().eq_ignore_ascii_case(name))
            .map(|h| match h.value() {
                HeaderValue::Text(t) => t.trim().to_string(),
                HeaderValue::TextList(list) => list.join(", "),
                _ => String::new(),
            })
            .collect()
    }

    /// The date of each occurrence of a header field (RFC 5260): a date
    /// header's value, or for a trace field such as Received the date after
    /// its last `;`. `None` where there is no date to read.
    fn header_dates(&self, name: &str) -> Vec<Option<mail_parser::DateTime>> {
        self.message
            .headers()
            .iter()
            .filter(|h| h.name().eq_ignore_ascii_case(name))
            .map(|h| match h.value() {
                HeaderValue::DateTime(d) => Some(*d),
                HeaderValue::Received(r) => r.date(),
                _ => None,
            })
            .collect()
    }

    /// The addresses of each occurrence of a header field, read from its
    /// text by the RFC 5322 parser ENVELOPE uses: mail-parser's makes
    /// `"john.doe"@q.test` into `@q.test`, and keeps an obsolete route
    /// (`<@route:user@host>`) in the address.
    fn address_fields(&self, name: &str) -> Vec<Vec<String>> {
        self.message
            .headers()
            .iter()
            .filter(|h| h.name().eq_ignore_ascii_case(name))
            .map(|h| {
                let (start, end) = (h.offset_start() as usize, h.offset_end() as usize);
                let text =
                    String::from_utf8_lossy(self.input.message.get(start..end).unwrap_or(&[]));
                crate::proto::mime::parse_addresses(&text)
                    .into_iter()
                    .filter(|a| !a.is_group_start())
                    .filter_map(|a| {
                        let local = crate::proto::address::quote_local_part(&a.mailbox?);
                        Some(match a.host.as_deref() {
                            Some(host) if !host.is_empty() => format!("{local}@{host}"),
                            _ => local,
                        })
                    })
                    .collect::<Vec<_>>()
            })
            .collect()
    }

    fn body_values(&self, transform: &BodyTransform) -> Vec<String> {
        match transform {
            BodyTransform::Raw => {
                let start = self.message.root_part().raw_body_offset() as usize;
                vec![
                    String::from_utf8_lossy(self.input.message.get(start..).unwrap_or(&[]))
                        .into_owned(),
                ]
            }
            // RFC 5173 §5.2: the text of attached messages is searched too.
            BodyTransform::Text => messages_within(&self.message)
                .into_iter()
                .flat_map(|m| (0..m.text_body.len()).filter_map(move |i| m.body_text(i)))
                .map(|t| t.into_owned())
                .collect(),
            BodyTransform::Content(types) => {
                let wanted = |t: &str, s: &str| {
                    types.iter().any(|want| {
                        let want = want.to_ascii_lowercase();
                        want.is_empty() || want == t || want == format!("{t}/{s}")
                    })
                };
                let mut values = Vec::new();
                for message in messages_within(&self.message) {
                    for part in &message.parts {
                        let (t, s) = part
                            .content_type()
                            .map(|c| {
                                (
                                    c.ctype().to_ascii_lowercase(),
                                    c.subtype().unwrap_or("").to_ascii_lowercase(),
                                )
                            })
                            .unwrap_or(("text".into(), "plain".into()));
                        if !wanted(&t, &s) {
                            continue;
                        }
                        if let PartType::Multipart(children) = &part.body {
                            // RFC 5173 §5.2: a multipart's own text is its
                            // prologue and epilogue.
                            values.extend(prologue_and_epilogue(message, part, children));
                        } else if let Some(text) = part.text_contents() {
                            values.push(text.to_string());
                        }
                    }
                }
                values
            }
        }
    }

    fn matches(&mut self, matcher: &Matcher, values: &[String]) -> Result<bool, SieveError> {
        if let MatchKind::List = matcher.kind {
            // Each key names a list; a line with * or ? is a pattern.
            for key in &matcher.keys {
                let Some(lines) = (self.input.list)(key) else {
                    continue;
                };
                for value in values {
                    let value = value.to_ascii_lowercase();
                    for line in &lines {
                        self.compared()?;
                        let line = line.trim().to_ascii_lowercase();
                        let hit = if line.contains(['*', '?']) {
                            wildcard(&line, &value)
                        } else {
                            line == value
                        };
                        if hit {
                            return Ok(true);
                        }
                    }
                }
            }
            return Ok(false);
        }
        if let MatchKind::Count(relation) = matcher.kind {
            let count = values.len() as u64;
            return Ok(matcher.keys.iter().any(|k| {
                k.trim()
                    .parse::<u64>()
                    .is_ok_and(|n| relate(count.cmp(&n), relation))
            }));
        }
        let keys: Vec<String> = matcher.keys.iter().map(|k| self.expand(k)).collect();
        for value in values {
            for (i, key) in keys.iter().enumerate() {
                self.compared()?;
                if compare(matcher, i, key, value) {
                    if self.variables {
                        self.capture(matcher, i, key, value);
                    }
                    return Ok(true);
                }
            }
        }
        Ok(false)
    }
}

impl State<'_> {
    /// Sets `${0}`… from a successful :matches (each wildcard) or :regex
    /// (each group).
    fn capture(&mut self, matcher: &Matcher, index: usize, key: &str, value: &str) {
        let regex = match &matcher.kind {
            MatchKind::Regex(regexes) => regexes.get(index).cloned(),
            MatchKind::Matches => {
                wildcard_regex(key, matcher.comparator == Comparator::AsciiCasemap)
            }
            _ => return,
        };
        let Some(captures) = regex.as_ref().and_then(|r| r.captures(value)) else {
            return;
        };
        self.captures = captures
            .iter()
            .take(10)
            .map(|c| c.map(|m| m.as_str().to_string()).unwrap_or_default())
            .collect();
    }
}

/// A `:matches` pattern as an anchored regex with a group per wildcard,
/// for the match variables only (the match itself is `wildcard`).
fn wildcard_regex(pattern: &str, fold: bool) -> Option<regex::Regex> {
    let mut re = String::from(if fold { "(?si)^" } else { "(?s)^" });
    let mut chars = pattern.chars();
    while let Some(c) = chars.next() {
        match c {
            '*' => re.push_str("(.*?)"),
            '?' => re.push_str("(.)"),
            '\\' => re.push_str(&regex::escape(&chars.next().unwrap_or('\\').to_string())),
            c => re.push_str(&regex::escape(&c.to_string())),
        }
    }
    re.push('$');
    regex::RegexBuilder::new(&re)
        .size_limit(1 << 20)
        .build()
        .ok()
}

/// RFC 5229 §4.1 modifiers.
fn modify(value: &str, modifier: &str) -> String {
    match modifier {
        "lower" => value.to_lowercase(),
        "upper" => value.to_uppercase(),
        "lowerfirst" => {
            let mut chars = value.chars();
            chars
                .next()
                .map(|c| c.to_lowercase().chain(chars).collect())
                .unwrap_or_default()
        }
        "upperfirst" => {
            let mut chars = value.chars();
            chars
                .next()
                .map(|c| c.to_uppercase().chain(chars).collect())
                .unwrap_or_default()
        }
        "quotewildcard" => value
            .chars()
            .flat_map(|c| {
                if matches!(c, '*' | '?' | '\\') {
                    vec!['\\', c]
                } else {
                    vec![c]
                }
            })
            .collect(),
        "length" => value.chars().count().to_string(),
        _ => value.to_string(),
    }
}

/// The `:index` occurrence of a header (1 is the first, or with `:last`
/// the last), or all of them.
fn pick<T: Clone>(values: Vec<T>, index: Option<(usize, bool)>) -> Vec<T> {
    match index {
        None => values,
        Some((n, last)) => {
            let i = if last {
                values.len().checked_sub(n)
            } else {
                Some(n - 1)
            };
            i.and_then(|i| values.get(i).cloned()).into_iter().collect()
        }
    }
}

/// One RFC 5260 §4.1 date part of a time, shown in a zone (minutes east).
fn date_part(timestamp: i64, zone: i32, part: &str) -> String {
    let local = timestamp + zone as i64 * 60;
    let d = mail_parser::DateTime::from_timestamp(local);
    let sign = if zone < 0 { '-' } else { '+' };
    let (zh, zm) = (zone.abs() / 60, zone.abs() % 60);
    match part {
        "year" => format!("{:04}", d.year),
        "month" => format!("{:02}", d.month),
        "date" => format!("{:02}", d.day),
        // Modified Julian Day: days since 1858-11-17.
        "julian" => (local.div_euclid(86400) + 40587).to_string(),
        "hour" => format!("{:02}", d.hour),
        "minute" => format!("{:02}", d.minute),
        "second" => format!("{:02}", d.second),
        "time" => format!("{:02}:{:02}:{:02}", d.hour, d.minute, d.second),
        "iso8601" => format!(
            "{:04}-{:02}-{:02}T{:02}:{:02}:{:02}{sign}{zh:02}:{zm:02}",
            d.year, d.month, d.day, d.hour, d.minute, d.second
        ),
        "std11" => {
            const DAYS: [&str; 7] = ["Sun", "Mon", "Tue", "Wed", "Thu", "Fri", "Sat"];
            const MONTHS: [&str; 12] = [
                "Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec",
            ];
            format!(
                "{}, {} {} {:04} {:02}:{:02}:{:02} {sign}{zh:02}{zm:02}",
                DAYS[(local.div_euclid(86400) + 4).rem_euclid(7) as usize],
                d.day,
                MONTHS[(d.month.clamp(1, 12) - 1) as usize],
                d.year,
                d.hour,
                d.minute,
                d.second
            )
        }
        "zone" => format!("{sign}{zh:02}{zm:02}"),
        "weekday" => (local.div_euclid(86400) + 4).rem_euclid(7).to_string(),
        _ => String::new(),
    }
}

fn floor_char_boundary(text: &str, at: usize) -> usize {
    if at >= text.len() {
        return text.len();
    }
    (0..=at)
        .rev()
        .find(|&i| text.is_char_boundary(i))
        .unwrap_or(0)
}

fn compare(matcher: &Matcher, index: usize, key: &str, value: &str) -> bool {
    let fold = |s: &str| match matcher.comparator {
        Comparator::AsciiCasemap => s.to_ascii_lowercase(),
        _ => s.to_string(),
    };
    match &matcher.kind {
        MatchKind::Is => match matcher.comparator {
            Comparator::AsciiNumeric => numeric(value) == numeric(key),
            _ => fold(value) == fold(key),
        },
        MatchKind::Contains => fold(value).contains(&fold(key)),
        MatchKind::Matches => wildcard(&fold(key), &fold(value)),
        MatchKind::Regex(regexes) => regexes.get(index).is_some_and(|r| r.is_match(value)),
        MatchKind::Value(relation) => {
            let ordering = match matcher.comparator {
                Comparator::AsciiNumeric => match (numeric(value), numeric(key)) {
                    (Some(a), Some(b)) => a.cmp(&b),
                    // RFC 4790: a non-number is greater than any number.
                    (None, Some(_)) => std::cmp::Ordering::Greater,
                    (Some(_), None) => std::cmp::Ordering::Less,
                    (None, None) => std::cmp::Ordering::Equal,
                },
                _ => fold(value).cmp(&fold(key)),
            };
            relate(ordering, *relation)
        }
        MatchKind::Count(_) | MatchKind::List => false,
    }
}

fn relate(ordering: std::cmp::Ordering, relation: Relation) -> bool {
    use std::cmp::Ordering::*;
    match relation {
        Relation::Gt => ordering == Greater,
        Relation::Ge => ordering != Less,
        Relation::Lt => ordering == Less,
        Relation::Le => ordering != Greater,
        Relation::Eq => ordering == Equal,
        Relation::Ne => ordering != Equal,
    }
}

/// i;ascii-numeric: the leading digits, or none.
fn numeric(s: &str) -> Option<u128> {
    let digits: String = s.chars().take_while(char::is_ascii_digit).collect();
    if digits.is_empty() {
        None
    } else {
        Some(digits.parse().unwrap_or(u128::MAX))
    }
}

/// `:matches` with `*`, `?` and `\` escapes (RFC 5228 §2.7.1), by dynamic
/// programming over characters, so no pattern can take exponential time.
fn wildcard(pattern: &str, text: &str) -> bool {
    #[derive(Clone, Copy, PartialEq)]
    enum P {
        Any,
        One,
        Char(char),
    }
    let mut tokens = Vec::new();
    let mut chars = pattern.chars();
    while let Some(c) = chars.next() {
        tokens.push(match c {
            '*' => P::Any,
            '?' => P::One,
            '\\' => P::Char(chars.next().unwrap_or('\\')),
            c => P::Char(c),
        });
    }
    let text: Vec<char> = text.chars().collect();
    // reachable[j]: the pattern so far can match text[..j].
    let mut reachable = vec![false; text.len() + 1];
    reachable[0] = true;
    for token in tokens {
        let mut next = vec![false; text.len() + 1];
        match token {
            P::Any => {
                let mut any = false;
                for j in 0..=text.len() {
                    any |= reachable[j];
                    next[j] = any;
                }
            }
            P::One => {
                next[1..].copy_from_slice(&reachable[..text.len()]);
            }
            P::Char(c) => {
                for j in 0..text.len() {
                    next[j + 1] = reachable[j] && text[j] == c;
                }
            }
        }
        reachable = next;
    }
    reachable[text.len()]
}

/// The part of an address a test looks at.
fn address_part(address: &str, part: Part, delimiter: char) -> Option<String> {
    let (local, domain) = address.rsplit_once('@').unwrap_or((address, ""));
    Some(match part {
        Part::All => address.to_string(),
        Part::Local => local.to_string(),
        Part::Domain => domain.to_string(),
        Part::User => local.split(delimiter).next().unwrap_or(local).to_string(),
        // No detail at all: the test does not match (RFC 5233 §4).
        Part::Detail => local.split_once(delimiter)?.1.to_string(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    const MESSAGE: &[u8] = b"From: Wile E. Coyote <coyote@desert.example.org>\r\n\
To: \"Road Runner\" <roadrunner+birds@acme.example.com>\r\n\
Cc: boss@acme.example.com\r\n\
Subject: =?utf-8?q?Ich_m=C3=B6chte_ein_Angebot?=\r\n\
X-Spam-Score: 12\r\n\
Sender: owner-ietf-mtgs@ietf.org\r\n\
\r\n\
I would like to make money fast.\r\n";

    fn run(script: &str) -> Vec<Action> {
        let compiled = Script::compile(script).unwrap_or_else(|e| panic!("{script}: {e}"));
        compiled
            .run(&Input {
                message: MESSAGE,
                envelope_from: "coyote@desert.example.org",
                envelope_to: "roadrunner+birds@acme.example.com",
                delimiter: '+',
                mailbox_exists: &|name| name == "Existing",
                list: &|name| {
                    (name == ":addrbook:friends")
                        .then(|| vec!["friend@far.test".into(), "*@desert.example.org".into()])
                },
            })
            .unwrap()
    }

    /// Whether `if TEST { fileinto "hit"; }` files `message`, with the
    /// extensions `require` names.
    fn files(require: &str, test: &str, message: &[u8]) -> bool {
        let script = format!("require [{require}];\nif {test} {{ fileinto \"hit\"; }}");
        Script::compile(&script)
            .unwrap_or_else(|e| panic!("{test}: {e}"))
            .run(&bare(message))
            .unwrap()
            == [into("hit")]
    }

    /// The input of a run on `message` alone: no envelope, no folders,
    /// no external lists.
    fn bare(message: &[u8]) -> Input<'_> {
        fn no_folder(_: &str) -> bool {
            false
        }
        fn no_list(_: &str) -> Option<Vec<String>> {
            None
        }
        Input {
            message,
            envelope_from: "",
            envelope_to: "",
            delimiter: '+',
            mailbox_exists: &no_folder,
            list: &no_list,
        }
    }

    fn keep() -> Action {
        Action::Keep { flags: Vec::new() }
    }

    fn into(mailbox: &str) -> Action {
        Action::FileInto {
            mailbox: mailbox.into(),
            create: false,
            flags: Vec::new(),
        }
    }

    #[test]
    fn implicit_keep_and_cancelling_it() {
        assert_eq!(run(""), [keep()]);
        assert_eq!(run("discard;"), Vec::<Action>::new());
        assert_eq!(run("require \"fileinto\"; fileinto \"a\";"), [into("a")]);
        assert_eq!(
            run("require [\"fileinto\",\"copy\"]; fileinto :copy \"a\";"),
            [into("a"), keep()]
        );
        assert_eq!(run("discard; keep;"), [keep()]);
        assert_eq!(run("stop; discard;"), [keep()]);
        assert_eq!(
            run("redirect \"x@y.test\"; redirect \"x@y.test\";"),
            [Action::Redirect {
                address: "x@y.test".into()
            }]
        );
    }

    #[test]
    fn address_tests_read_quoted_local_parts_and_obsolete_routes() {
        let message = b"From: \"john.doe\"@q.test\r\nReply-To: <@route.test:routed@r.test>\r\n\
Cc: \"john doe\"@x.test, Group: a@g.test;, user\r\n\r\nbody\r\n";
        let hit = |test: &str| files("\"fileinto\"", test, message);
        assert!(hit(r#"address :all :is "from" "john.doe@q.test""#));
        assert!(hit(r#"address :localpart :is "from" "john.doe""#));
        assert!(hit(r#"address :all :is "reply-to" "routed@r.test""#));
        assert!(hit(r#"address :all :is "cc" "\"john doe\"@x.test""#));
        assert!(hit(r#"address :all :is "cc" "a@g.test""#));
        assert!(hit(r#"address :all :is "cc" "user""#));
        assert!(
            !hit(r#"address :all :is "cc" "Group""#),
            "a group's name is no address"
        );
    }

    #[test]
    fn a_redirect_address_from_variables_is_checked_when_the_script_runs() {
        let script = |value: &str| {
            Script::compile(&format!(
                "require \"variables\";\nset \"a\" \"{value}\";\nredirect \"${{a}}\";\n"
            ))
            .unwrap()
        };
        let input = Input {
            message: b"Subject: x\r\n\r\nbody\r\n",
            envelope_from: "",
            envelope_to: "",
            delimiter: '+',
            mailbox_exists: &|_| true,
            list: &|_| None,
        };
        assert_eq!(
            script("x@other.test").run(&input).unwrap(),
            [Action::Redirect {
                address: "x@other.test".into()
            }]
        );
        assert!(script("not an address").run(&input).is_err());
        assert!(
            Script::compile("redirect \"${a}\";").is_err(),
            "no variables required"
        );
    }

    #[test]
    fn the_rfc_5228_example_files_meetings() {
        let script = r#"
require ["fileinto"];
if header :is "Sender" "owner-ietf-mtgs@ietf.org" {
    fileinto "INBOX.meetings";
} elsif address :domain :is ["From", "To"] "example.com" {
    keep;
} else {
    fileinto "personal";
}"#;
        assert_eq!(run(script), [into("INBOX.meetings")]);
    }

    #[test]
    fn match_types_comparators_and_address_parts() {
        let yes = |test: &str| {
            let script = format!(
                "require [\"fileinto\", \"envelope\", \"subaddress\", \"relational\", \"comparator-i;ascii-numeric\", \"regex\"];\nif {test} {{ fileinto \"hit\"; }}"
            );
            run(&script) == [into("hit")]
        };
        assert!(
            yes(r#"header :contains "subject" "möchte""#),
            "2047 decoded"
        );
        assert!(yes(r#"header :matches "subject" "Ich*Angebot""#));
        assert!(yes(
            r#"header :matches "from" "*coyote@desert.example.?rg*""#
        ));
        assert!(!yes(
            r#"header :is :comparator "i;octet" "subject" "ich möchte ein angebot""#
        ));
        assert!(
            !yes(r#"header :is "subject" "ICH MÖCHTE EIN ANGEBOT""#),
            "casemap is ASCII only"
        );
        assert!(yes(r#"address :localpart :is "from" "COYOTE""#));
        assert!(yes(r#"address :domain :is "to" "acme.example.com""#));
        assert!(yes(r#"address :user :is "to" "roadrunner""#));
        assert!(yes(r#"address :detail :is "to" "birds""#));
        assert!(
            !yes(r#"address :detail :matches "cc" "*""#),
            "no detail, no match"
        );
        assert!(yes(
            r#"envelope :all :is "from" "coyote@desert.example.org""#
        ));
        assert!(yes(r#"envelope :detail :is "to" "birds""#));
        assert!(yes(
            r#"header :value "gt" :comparator "i;ascii-numeric" "x-spam-score" "9""#
        ));
        assert!(!yes(
            r#"header :value "gt" :comparator "i;ascii-numeric" "x-spam-score" "20""#
        ));
        assert!(yes(
            r#"address :count "eq" :comparator "i;ascii-numeric" ["to", "cc"] "2""#
        ));
        assert!(yes(r#"header :regex "subject" "^Ich m.chte""#));
        assert!(yes(r#"exists ["from", "x-spam-score"]"#));
        assert!(!yes(r#"exists ["from", "x-missing"]"#));
        assert!(yes("size :over 100"));
        assert!(!yes("size :under 100"));
        assert!(yes(r#"allof (true, not false, anyof (false, true))"#));
    }

    #[test]
    fn body_flags_reject_vacation_and_mailboxes() {
        let out = run(r#"require ["body", "imap4flags", "fileinto", "mailbox"];
               if body :text :contains "money fast" { addflag "\\Flagged junk"; fileinto :create "Junk"; }
               if hasflag :is "junk" { removeflag "junk"; }
               if mailboxexists "Existing" { keep :flags "\\Seen"; }"#);
        assert_eq!(
            out,
            [
                Action::FileInto {
                    mailbox: "Junk".into(),
                    create: true,
                    flags: vec!["\\Flagged".into(), "junk".into()]
                },
                Action::Keep {
                    flags: vec!["\\Seen".into()]
                }
            ]
        );
        assert_eq!(
            run(r#"require "reject"; reject "no thanks";"#),
            [Action::Reject {
                reason: "no thanks".into()
            }]
        );
        let vacation = run(
            r#"require ["vacation", "vacation-seconds"]; vacation :seconds 60 :subject "Away" :handle "h" "back soon";"#,
        );
        assert!(
            matches!(&vacation[0], Action::Vacation { seconds: 60, subject: Some(s), .. } if s == "Away")
        );
        assert_eq!(vacation[1], keep(), "vacation keeps the message");
    }

    #[test]
    fn body_searches_attached_messages_and_multipart_prologues() {
        let message = b"From: a@far.test\r\n\
Content-Type: multipart/mixed; boundary=\"outer\"\r\n\
\r\n\
This prologue says marmalade.\r\n\
--outer\r\n\
Content-Type: text/plain\r\n\
\r\n\
The cover note.\r\n\
--outer\r\n\
Content-Type: message/rfc822\r\n\
\r\n\
From: b@far.test\r\n\
Subject: forwarded\r\n\
Content-Type: text/plain\r\n\
\r\n\
The forwarded text mentions a needle.\r\n\
--outer--\r\n\
An epilogue with quince.\r\n";
        let hit = |test: &str| files(r#""fileinto", "body""#, test, message);
        assert!(hit(r#"body :text :contains "cover note""#));
        assert!(hit(r#"body :text :contains "needle""#));
        assert!(hit(r#"body :content "text" :contains "needle""#));
        assert!(hit(r#"body :content "multipart" :contains "marmalade""#));
        assert!(hit(r#"body :content "multipart" :contains "quince""#));
        // The prologue is not text of any text part, nor the boundary a value.
        assert!(!hit(r#"body :content "text" :contains "marmalade""#));
        assert!(!hit(r#"body :content "multipart" :contains "--outer""#));
    }

    #[test]
    fn vacation_follows_rfc_5230_on_handles_from_and_repeats() {
        let handle = |script: &str| match &run(script)[0] {
            Action::Vacation { handle, .. } => handle.clone().unwrap(),
            other => panic!("{other:?}"),
        };
        // §4.2: without :handle, other text is another handle; same text the same.
        let a = handle(r#"require "vacation"; vacation "away";"#);
        let b = handle(r#"require "vacation"; vacation "back on Monday";"#);
        let c = handle(r#"require "vacation"; vacation :subject "Out" "away";"#);
        assert_ne!(a, b);
        assert_ne!(a, c);
        assert_eq!(a, handle(r#"require "vacation"; vacation "away";"#));
        assert_eq!(
            handle(r#"require "vacation"; vacation :handle "h" "away";"#),
            "h"
        );
        // §4.3: a :from that is not an address is an error; with variables,
        // dropped at run time.
        for bad in ["not an address", "a@b.test, c@d.test", ""] {
            let script = format!(r#"require "vacation"; vacation :from "{bad}" "away";"#);
            let error = Script::compile(&script).unwrap_err();
            assert!(error.message.contains(":from"), "{bad}: {error}");
        }
        let from = |script: &str| match &run(script)[0] {
            Action::Vacation { from, .. } => from.clone(),
            other => panic!("{other:?}"),
        };
        assert_eq!(
            from(r#"require "vacation"; vacation :from "Ann <ann@acme.test>" "away";"#).as_deref(),
            Some("Ann <ann@acme.test>")
        );
        assert_eq!(
            from(
                r#"require ["vacation", "variables"]; set "f" "nobody";
                   vacation :from "${f}" "away";"#
            ),
            None
        );
        // §4.7: a second vacation fails the run, so the message is kept by
        // the caller and nothing else is done.
        let twice = Script::compile(
            r#"require ["vacation", "fileinto"]; fileinto "x"; vacation "a"; vacation "b";"#,
        )
        .unwrap();
        let error = twice.run(&bare(MESSAGE)).unwrap_err();
        assert!(error.message.contains("twice"), "{error}");
    }

    #[test]
    fn external_lists_and_encoded_characters() {
        let yes = |test: &str| {
            let script = format!(
                "require [\"fileinto\", \"extlists\", \"encoded-character\"];\nif {test} {{ fileinto \"hit\"; }}"
            );
            run(&script) == [into("hit")]
        };
        assert!(
            yes(r#"address :list "from" ":addrbook:friends""#),
            "pattern line"
        );
        assert!(!yes(r#"address :list "to" ":addrbook:friends""#));
        assert!(!yes(r#"address :list "from" ":addrbook:missing""#));
        assert!(yes(r#"valid_ext_list ":addrbook:friends""#));
        assert!(!yes(r#"valid_ext_list ":addrbook:missing""#));
        assert!(yes(r#"header :contains "subject" "m${unicode:F6}chte""#));
        assert!(yes(r#"header :contains "subject" "${hex: 49 63 68}""#));
        assert_eq!(
            super::super::compile::decode_encoded_characters("${hex:zz} ${unicode:41"),
            "${hex:zz} ${unicode:41"
        );
        // Without the require, ${…} is literal text.
        assert_eq!(
            run(
                r#"require "fileinto"; if header :contains "subject" "${hex:49}" { fileinto "hit"; }"#
            ),
            [keep()]
        );
    }

    #[test]
    fn variables_set_expand_and_capture() {
        let script = r#"require ["variables", "fileinto", "reject"];
            set :lower :upperfirst "who" "ROAD";
            set :length "n" "abcd";
            if header :matches "to" "*<*+*@*>" {
                fileinto "lists/${3}/${who}${n}";
            }
            if string :is "${unknown}" "" { set "empty" "yes"; }
            if string :is "${empty}" "yes" { reject "got ${2}"; }
        "#;
        let actions = run(script);
        assert!(actions.contains(&into("lists/birds/Road4")), "{actions:?}");
        assert!(
            actions.contains(&Action::Reject {
                reason: "got roadrunner".into()
            }),
            "{actions:?}"
        );
        // Without require "variables", ${…} is literal.
        assert_eq!(
            run(r#"require "fileinto"; fileinto "${x}";"#),
            [into("${x}")]
        );
        assert_eq!(modify("a*b", "quotewildcard"), "a\\*b");
        assert!(Script::compile(r#"require "variables"; set "1x" "v";"#).is_err());
    }

    #[test]
    fn dates_and_indexes() {
        let message = b"Received: from b by c; Tue, 24 Nov 2026 09:00:00 +0000\r\n\
Received: from a by b; Mon, 23 Nov 2026 23:30:00 -0500\r\n\
Date: Mon, 23 Nov 2026 23:30:00 -0500\r\nSubject: x\r\n\r\nbody\r\n";
        let run_on = |test: &str| {
            files(
                r#""fileinto", "date", "index", "relational", "comparator-i;ascii-numeric""#,
                test,
                message,
            )
        };
        // Shown in UTC by default: 04:30 on the 24th, a Tuesday.
        assert!(run_on(r#"date :is "date" "date" "24""#));
        assert!(run_on(r#"date :is "date" "weekday" "2""#));
        assert!(run_on(r#"date :originalzone :is "date" "hour" "23""#));
        assert!(run_on(r#"date :zone "+0100" :is "date" "time" "05:30:00""#));
        assert!(run_on(
            r#"date :is "date" "iso8601" "2026-11-24T04:30:00+00:00""#
        ));
        assert!(run_on(r#"date :originalzone :is "date" "zone" "-0500""#));
        assert!(run_on(r#"date :is "date" "julian" "61368""#));
        assert!(run_on(
            r#"date :is "date" "std11" "Tue, 24 Nov 2026 04:30:00 +0000""#
        ));
        assert!(run_on(
            r#"currentdate :value "ge" :comparator "i;ascii-numeric" "year" "2026""#
        ));
        assert!(run_on(r#"header :index 2 :contains "received" "from a""#));
        assert!(!run_on(r#"header :index 1 :contains "received" "from a""#));
        assert!(run_on(
            r#"header :index 1 :last :contains "received" "from a""#
        ));
        assert!(run_on(
            r#"date :index 1 :last :originalzone :is "received" "hour" "23""#
        ));
        assert!(
            Script::compile(r#"require "date"; if date :is "date" "century" "21" { keep; }"#)
                .is_err()
        );
    }

    #[test]
    fn hostile_messages_are_handled_and_bounded() {
        let script = Script::compile(
            r#"require ["fileinto", "body", "regex"];
               if header :regex "subject" "(a|b)*c" { fileinto "x"; }
               if body :text :contains "needle" { fileinto "y"; }
               if header :matches "x-big" "*z*z*z*z*z*" { fileinto "z"; }"#,
        )
        .unwrap();
        let mut big = b"X-Big: ".to_vec();
        big.extend(std::iter::repeat_n(b'a', 1 << 20));
        big.extend_from_slice(b"\r\nSubject: \xff\xfe broken \xc3\r\nContent-Type: multipart/mixed; boundary=\"never\"\r\n\r\n--nev\r\nneedle\r\n");
        let started = Instant::now();
        let actions = script.run(&bare(&big)).unwrap();
        assert!(
            started.elapsed() < Duration::from_secs(5),
            "{:?}",
            started.elapsed()
        );
        assert!(
            !actions.contains(&into("x")) && !actions.contains(&into("z")),
            "{actions:?}"
        );
    }

    #[test]
    fn wildcards_are_linear_and_exact() {
        assert!(wildcard("a*b?c", "axxxbyc"));
        assert!(!wildcard("a*b?c", "axxxbc"));
        assert!(wildcard("\\*x", "*x"));
        assert!(!wildcard("\\*x", "ax"));
        let long = "a".repeat(5000);
        let started = Instant::now();
        assert!(!wildcard(&"*a".repeat(200), &(long + "b")));
        assert!(started.elapsed() < Duration::from_secs(2));
    }

    #[test]
    fn header_tests_compare_the_value_as_it_stands_angle_brackets_and_all() {
        let message = b"List-Id: <dev.lists.example.org>\r\n\
Message-ID: <abc@example.org>\r\n\
In-Reply-To: <parent@example.org>\r\n\
References: <one@example.org>\r\n <parent@example.org>\r\n\
From: \"Ann\" <ann@example.org>\r\n\
Subject: =?utf-8?q?caf=C3=A9?=\r\n\r\nbody\r\n";
        let hit = |test: &str| files(r#""fileinto""#, test, message);
        assert!(hit(
            r#"header :contains "List-Id" "<dev.lists.example.org>""#
        ));
        assert!(hit(r#"header :is "List-Id" "<dev.lists.example.org>""#));
        assert!(hit(r#"header :is "Message-ID" "<abc@example.org>""#));
        assert!(hit(
            r#"header :contains "In-Reply-To" "<parent@example.org>""#
        ));
        // Unfolded: the folding line break becomes nothing, its blank stays.
        assert!(hit(
            r#"header :is "References" "<one@example.org> <parent@example.org>""#
        ));
        assert!(hit(r#"header :is "From" "\"Ann\" <ann@example.org>""#));
        assert!(hit(r#"header :is "Subject" "café""#));
        // `address` still parses addresses.
        assert!(hit(r#"address :is "From" "ann@example.org""#));
    }

    #[test]
    fn a_huge_list_of_keys_stays_bounded() {
        let keys: Vec<String> = (0..3000).map(|i| format!("\"k{i}*z\"")).collect();
        let list = format!("[{}]", keys.join(","));
        let mut script = String::new();
        for _ in 0..30 {
            script.push_str(&format!(
                "if header :contains [\"from\",\"to\",\"subject\"] {list} {{ keep; }}\n"
            ));
        }
        let compiled = Script::compile(&script).unwrap();
        let started = Instant::now();
        let _result = compiled.run(&bare(MESSAGE));
        // Ended by the comparison budget or done: either way, soon.
        assert!(started.elapsed() < Duration::from_secs(5));
    }

    #[test]
    fn one_test_over_long_values_stops_at_the_time_budget() {
        // Few comparisons, each over a megabyte: the comparison count
        // alone would let this run for a minute.
        let keys: Vec<String> = (0..60_000).map(|i| format!("\"k{i}\"")).collect();
        let script = format!(
            "if header :contains \"x-big\" [{}] {{ discard; }}",
            keys.join(",")
        );
        let compiled = Script::compile(&script).unwrap();
        let mut big = b"X-Big: ".to_vec();
        big.extend(std::iter::repeat_n(b'a', 1 << 20));
        big.extend_from_slice(b"\r\n\r\nbody\r\n");
        let started = Instant::now();
        let result = compiled.run(&bare(&big));
        let took = started.elapsed();
        assert!(took < MAX_TIME + Duration::from_secs(1), "{took:?}");
        let error = result.unwrap_err();
        assert!(error.message.contains("out of time"), "{error:?}");
    }
}
