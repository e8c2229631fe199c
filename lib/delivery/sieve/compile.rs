//! From the syntax tree to typed rules: every command and test is checked
//! for its name, its tagged and positional arguments and the extension it
//! needs, so that running a compiled script cannot meet a malformed rule.

use regex::{Regex, RegexBuilder};

use super::SieveError;
use super::parse::{self, Arg, Command, Test as RawTest};

/// The extensions `require` accepts.
pub const EXTENSIONS: &[&str] = &[
    "fileinto",
    "copy",
    "reject",
    "ereject",
    "envelope",
    "imap4flags",
    "subaddress",
    "relational",
    "comparator-i;ascii-numeric",
    "regex",
    "vacation",
    "vacation-seconds",
    "mailbox",
    "body",
    "encoded-character",
    "extlists",
    "variables",
    "date",
    "index",
];

/// The largest compiled regular expression.
const REGEX_SIZE: usize = 1 << 20;

/// A compiled script.
#[derive(Debug, Clone)]
pub struct Script {
    pub(super) rules: Vec<Rule>,
    /// `require "variables"`: strings are expanded when the rule runs.
    pub(super) variables: bool,
}

#[derive(Debug, Clone)]
pub(super) enum Rule {
    If {
        branches: Vec<(Test, Vec<Rule>)>,
        otherwise: Option<Vec<Rule>>,
    },
    Stop,
    Keep {
        flags: Option<Vec<String>>,
    },
    Discard,
    Redirect {
        address: String,
        copy: bool,
    },
    FileInto {
        mailbox: String,
        copy: bool,
        create: bool,
        flags: Option<Vec<String>>,
    },
    /// reject and ereject: delivery happens after the SMTP dialogue, so
    /// both become a refusal the caller reports (RFC 5429 §2.1).
    Reject {
        reason: String,
    },
    Flags {
        op: FlagOp,
        flags: Vec<String>,
    },
    Vacation {
        seconds: u64,
        subject: Option<String>,
        from: Option<String>,
        addresses: Vec<String>,
        handle: Option<String>,
        reason: String,
    },
    /// RFC 5229 `set`.
    Set {
        name: String,
        value: String,
        modifiers: Vec<String>,
    },
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum FlagOp {
    Set,
    Add,
    Remove,
}

#[derive(Debug, Clone)]
pub(super) enum Test {
    True,
    False,
    Not(Box<Test>),
    AllOf(Vec<Test>),
    AnyOf(Vec<Test>),
    Exists(Vec<String>),
    Size {
        over: bool,
        limit: u64,
    },
    Header {
        names: Vec<String>,
        index: Option<(usize, bool)>,
        matcher: Matcher,
    },
    Address {
        part: Part,
        names: Vec<String>,
        index: Option<(usize, bool)>,
        matcher: Matcher,
    },
    Envelope {
        part: Part,
        names: Vec<String>,
        matcher: Matcher,
    },
    Body {
        transform: BodyTransform,
        matcher: Matcher,
    },
    HasFlag {
        matcher: Matcher,
    },
    MailboxExists(Vec<String>),
    ValidExtList(Vec<String>),
    /// RFC 5229 `string`: the sources, expanded, against the keys.
    String {
        sources: Vec<String>,
        matcher: Matcher,
    },
    /// RFC 5260 `date` (a header) and `currentdate` (`header` None).
    Date {
        header: Option<String>,
        /// Minutes east of UTC to show the date in; None: as written.
        zone: Option<i32>,
        part: String,
        index: Option<(usize, bool)>,
        matcher: Matcher,
    },
}

/// RFC 5260 §4.1 date parts.
const DATE_PARTS: &[&str] = &[
    "year", "month", "date", "julian", "hour", "minute", "second", "time", "iso8601", "std11",
    "zone", "weekday",
];

#[derive(Debug, Clone)]
pub(super) enum BodyTransform {
    Raw,
    Text,
    Content(Vec<String>),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Part {
    All,
    Local,
    Domain,
    User,
    Detail,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Comparator {
    Octet,
    AsciiCasemap,
    AsciiNumeric,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Relation {
    Gt,
    Ge,
    Lt,
    Le,
    Eq,
    Ne,
}

#[derive(Debug, Clone)]
pub(super) enum MatchKind {
    Is,
    Contains,
    Matches,
    Regex(Vec<Regex>),
    Value(Relation),
    Count(Relation),
    /// RFC 6134: the value is on one of the named lists.
    List,
}

#[derive(Debug, Clone)]
pub(super) struct Matcher {
    pub comparator: Comparator,
    pub kind: MatchKind,
    pub keys: Vec<String>,
}

impl Script {
    /// Parses and checks a script file's bytes: what any reader of a
    /// script on disk calls (see [`parse::script_text`] for bytes that
    /// are not UTF-8).
    pub fn compile_bytes(bytes: &[u8]) -> Result<Script, SieveError> {
        Script::compile(&parse::script_text(bytes)?)
    }

    /// Parses and checks a script.
    pub fn compile(text: &str) -> Result<Script, SieveError> {
        let mut commands = parse::parse(text)?;
        let encoded = commands.iter().any(|c| {
            c.name == "require"
                && c.args.iter().any(|a| {
                    matches!(a, Arg::Strings(s) if s.iter().any(|e| e.eq_ignore_ascii_case("encoded-character")))
                })
        });
        if encoded {
            decode_commands(&mut commands);
        }
        let mut compiler = Compiler {
            required: Vec::new(),
            requires_allowed: true,
        };
        let rules = compiler.block(&commands)?;
        let variables = compiler.required.iter().any(|r| r == "variables");
        Ok(Script { rules, variables })
    }
}

struct Compiler {
    required: Vec<String>,
    requires_allowed: bool,
}

fn error_at(line: usize, column: usize, message: impl Into<String>) -> SieveError {
    SieveError {
        line,
        column,
        message: message.into(),
    }
}

/// Arguments of one command or test, taken as they are recognized.
struct Args<'a> {
    args: Vec<Option<&'a Arg>>,
    line: usize,
    column: usize,
    name: &'a str,
}

impl<'a> Args<'a> {
    fn new(name: &'a str, args: &'a [Arg], line: usize, column: usize) -> Args<'a> {
        Args {
            args: args.iter().map(Some).collect(),
            line,
            column,
            name,
        }
    }

    fn error(&self, message: impl Into<String>) -> SieveError {
        error_at(self.line, self.column, message)
    }

    /// Takes `:tag` if present.
    fn flag(&mut self, tag: &str) -> bool {
        for slot in &mut self.args {
            if let Some(Arg::Tag(t)) = slot
                && t == tag
            {
                *slot = None;
                return true;
            }
        }
        false
    }

    /// Takes `:tag VALUE` if present.
    fn tagged(&mut self, tag: &str) -> Result<Option<&'a Arg>, SieveError> {
        let Some(i) = self
            .args
            .iter()
            .position(|a| matches!(a, Some(Arg::Tag(t)) if t == tag))
        else {
            return Ok(None);
        };
        self.args[i] = None;
        match self.args.get_mut(i + 1).and_then(Option::take) {
            Some(value) => Ok(Some(value)),
            None => Err(self.error(format!("{}: :{tag} needs a value", self.name))),
        }
    }

    fn tagged_strings(&mut self, tag: &str) -> Result<Option<Vec<String>>, SieveError> {
        match self.tagged(tag)? {
            None => Ok(None),
            Some(Arg::Strings(s)) => Ok(Some(s.clone())),
            Some(_) => Err(self.error(format!("{}: :{tag} takes a string", self.name))),
        }
    }

    fn tagged_string(&mut self, tag: &str) -> Result<Option<String>, SieveError> {
        match self.tagged_strings(tag)? {
            None => Ok(None),
            Some(mut s) if s.len() == 1 => Ok(s.pop()),
            Some(_) => Err(self.error(format!("{}: :{tag} takes one string", self.name))),
        }
    }

    fn tagged_number(&mut self, tag: &str) -> Result<Option<u64>, SieveError> {
        match self.tagged(tag)? {
            None => Ok(None),
            Some(Arg::Number(n)) => Ok(Some(*n)),
            Some(_) => Err(self.error(format!("{}: :{tag} takes a number", self.name))),
        }
    }

    /// The positional arguments left, after every known tag was taken.
    fn rest(self) -> Result<Vec<&'a Arg>, SieveError> {
        let mut out = Vec::new();
        for arg in self.args.into_iter().flatten() {
            if let Arg::Tag(t) = arg {
                return Err(error_at(
                    self.line,
                    self.column,
                    format!("{}: unknown tag :{t}", self.name),
                ));
            }
            out.push(arg);
        }
        Ok(out)
    }
}

fn strings(
    arg: Option<&&Arg>,
    what: &str,
    line: usize,
    column: usize,
) -> Result<Vec<String>, SieveError> {
    match arg {
        Some(Arg::Strings(s)) => Ok(s.clone()),
        _ => Err(error_at(
            line,
            column,
            format!("{what} must be a string or string list"),
        )),
    }
}

/// Whether `text` is one RFC 5322 mailbox (`a@b.example` or
/// `Name <a@b.example>`), as a vacation `:from` must be.
pub(super) fn is_one_mailbox(text: &str) -> bool {
    let addresses = crate::proto::mime::parse_addresses(text);
    match addresses.as_slice() {
        [one] => match (&one.mailbox, &one.host) {
            (Some(local), Some(host)) => {
                crate::proto::address::Address::parse(&format!("{local}@{host}")).is_ok()
            }
            _ => false,
        },
        _ => false,
    }
}

fn one_string(
    arg: Option<&&Arg>,
    what: &str,
    line: usize,
    column: usize,
) -> Result<String, SieveError> {
    let mut s = strings(arg, what, line, column)?;
    if s.len() != 1 {
        return Err(error_at(line, column, format!("{what} must be one string")));
    }
    Ok(s.remove(0))
}

impl Compiler {
    fn need(&self, extension: &str, line: usize, column: usize) -> Result<(), SieveError> {
        if self.required.iter().any(|r| r == extension) {
            Ok(())
        } else {
            Err(error_at(
                line,
                column,
                format!("this needs require \"{extension}\""),
            ))
        }
    }

    fn block(&mut self, commands: &[Command]) -> Result<Vec<Rule>, SieveError> {
        let mut rules = Vec::new();
        let mut i = 0;
        while i < commands.len() {
            let c = &commands[i];
            if c.name != "require" {
                self.requires_allowed = false;
            }
            match c.name.as_str() {
                "require" => {
                    if !self.requires_allowed {
                        return Err(error_at(
                            c.line,
                            c.column,
                            "require must come before any other command",
                        ));
                    }
                    let args = Args::new("require", &c.args, c.line, c.column).rest()?;
                    for extension in strings(args.first(), "require's argument", c.line, c.column)?
                    {
                        let lower = extension.to_ascii_lowercase();
                        let known = EXTENSIONS.contains(&lower.as_str())
                            || lower == "comparator-i;octet"
                            || lower == "comparator-i;ascii-casemap";
                        if !known {
                            return Err(error_at(
                                c.line,
                                c.column,
                                format!(
                                    "extension \"{extension}\" is not supported (supported: {})",
                                    EXTENSIONS.join(", ")
                                ),
                            ));
                        }
                        self.required.push(lower);
                    }
                    no_block(c)?;
                }
                "if" => {
                    let mut branches = vec![(self.condition(c)?, self.body(c)?)];
                    let mut otherwise = None;
                    while let Some(next) = commands.get(i + 1) {
                        match next.name.as_str() {
                            "elsif" => {
                                branches.push((self.condition(next)?, self.body(next)?));
                                i += 1;
                            }
                            "else" => {
                                if !next.args.is_empty() || !next.tests.is_empty() {
                                    return Err(error_at(
                                        next.line,
                                        next.column,
                                        "else takes no test",
                                    ));
                                }
                                otherwise = Some(self.body(next)?);
                                i += 1;
                                break;
                            }
                            _ => break,
                        }
                    }
                    rules.push(Rule::If {
                        branches,
                        otherwise,
                    });
                }
                "elsif" | "else" => {
                    return Err(error_at(
                        c.line,
                        c.column,
                        format!("{} without an if before it", c.name),
                    ));
                }
                _ => rules.push(self.action(c)?),
            }
            i += 1;
        }
        Ok(rules)
    }

    fn condition(&mut self, c: &Command) -> Result<Test, SieveError> {
        if !c.args.is_empty() || c.tests.len() != 1 {
            return Err(error_at(
                c.line,
                c.column,
                format!("{} needs exactly one test", c.name),
            ));
        }
        self.test(&c.tests[0])
    }

    fn body(&mut self, c: &Command) -> Result<Vec<Rule>, SieveError> {
        match &c.block {
            Some(block) => self.block(block),
            None => Err(error_at(
                c.line,
                c.column,
                format!("{} needs a block {{ … }}", c.name),
            )),
        }
    }

    fn action(&mut self, c: &Command) -> Result<Rule, SieveError> {
        no_block(c)?;
        if !c.tests.is_empty() {
            return Err(error_at(
                c.line,
                c.column,
                format!("{} takes no test", c.name),
            ));
        }
        let (line, column) = (c.line, c.column);
        let mut args = Args::new(&c.name, &c.args, line, column);
        let rule = match c.name.as_str() {
            "stop" => Rule::Stop,
            "discard" => Rule::Discard,
            "keep" => {
                let flags = self.flags_tag(&mut args, line, column)?;
                Rule::Keep { flags }
            }
            "redirect" => {
                let copy = self.copy_tag(&mut args, line, column)?;
                let rest = args.rest()?;
                let address = one_string(rest.first(), "redirect's address", line, column)?;
                // With variables, the address is known only when the script
                // runs (RFC 5229 §3), and is checked then.
                let variable =
                    address.contains("${") && self.required.iter().any(|r| r == "variables");
                if !variable && crate::proto::address::Address::parse(&address).is_err() {
                    return Err(error_at(
                        line,
                        column,
                        format!("redirect: {address:?} is not a mail address"),
                    ));
                }
                Rule::Redirect { address, copy }
            }
            "fileinto" => {
                self.need("fileinto", line, column)?;
                let copy = self.copy_tag(&mut args, line, column)?;
                let create = args.flag("create");
                if create {
                    self.need("mailbox", line, column)?;
                }
                let flags = self.flags_tag(&mut args, line, column)?;
                let rest = args.rest()?;
                let mailbox = one_string(rest.first(), "fileinto's mailbox", line, column)?;
                Rule::FileInto {
                    mailbox,
                    copy,
                    create,
                    flags,
                }
            }
            "reject" | "ereject" => {
                self.need(&c.name, line, column)?;
                let rest = args.rest()?;
                Rule::Reject {
                    reason: one_string(rest.first(), "the reason", line, column)?,
                }
            }
            "setflag" | "addflag" | "removeflag" => {
                self.need("imap4flags", line, column)?;
                let rest = args.rest()?;
                // The one-argument form; the variable-name form needs
                // "variables", which is not supported.
                if rest.len() != 1 {
                    return Err(error_at(
                        line,
                        column,
                        format!("{} takes one flag list", c.name),
                    ));
                }
                let flags = split_flags(&strings(rest.first(), "the flags", line, column)?);
                let op = match c.name.as_str() {
                    "setflag" => FlagOp::Set,
                    "addflag" => FlagOp::Add,
                    _ => FlagOp::Remove,
                };
                Rule::Flags { op, flags }
            }
            "vacation" => {
                self.need("vacation", line, column)?;
                let days = args.tagged_number("days")?;
                let seconds = args.tagged_number("seconds")?;
                if seconds.is_some() {
                    self.need("vacation-seconds", line, column)?;
                }
                let subject = args.tagged_string("subject")?;
                let from = args.tagged_string("from")?;
                let addresses = args.tagged_strings("addresses")?.unwrap_or_default();
                let handle = args.tagged_string("handle")?;
                args.flag("mime");
                let rest = args.rest()?;
                let reason = one_string(rest.first(), "the vacation reason", line, column)?;
                // RFC 5230 §4.3: an invalid :from is an error; one made of
                // variables is checked when the script runs.
                if let Some(from) = &from
                    && !from.contains("${")
                    && !is_one_mailbox(from)
                {
                    return Err(error_at(
                        line,
                        column,
                        format!("vacation :from {from:?} is not an address"),
                    ));
                }
                // RFC 5230 §4.1: 1 to a site maximum (a year here), 7 by default.
                let seconds = match (seconds, days) {
                    (Some(s), _) => s.clamp(1, 365 * 86400),
                    (None, Some(d)) => d.clamp(1, 365) * 86400,
                    (None, None) => 7 * 86400,
                };
                Rule::Vacation {
                    seconds,
                    subject,
                    from,
                    addresses,
                    handle,
                    reason,
                }
            }
            "set" => {
                self.need("variables", line, column)?;
                let mut modifiers = Vec::new();
                // RFC 5229 §4.1: applied in order of precedence, whatever
                // order they were written in.
                for m in [
                    "lower",
                    "upper",
                    "lowerfirst",
                    "upperfirst",
                    "quotewildcard",
                    "length",
                ] {
                    if args.flag(m) {
                        modifiers.push(m.to_string());
                    }
                }
                let rest = args.rest()?;
                if rest.len() != 2 {
                    return Err(error_at(line, column, "set takes a name and a value"));
                }
                let name = one_string(rest.first(), "the variable name", line, column)?
                    .to_ascii_lowercase();
                let valid = !name.is_empty()
                    && name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_')
                    && !name.starts_with(|c: char| c.is_ascii_digit());
                if !valid {
                    return Err(error_at(
                        line,
                        column,
                        format!("{name:?} is not a variable name"),
                    ));
                }
                Rule::Set {
                    name,
                    value: one_string(rest.get(1), "the value", line, column)?,
                    modifiers,
                }
            }
            other => return Err(error_at(line, column, format!("unknown command {other:?}"))),
        };
        Ok(rule)
    }

    fn copy_tag(&self, args: &mut Args, line: usize, column: usize) -> Result<bool, SieveError> {
        let copy = args.flag("copy");
        if copy {
            self.need("copy", line, column)?;
        }
        Ok(copy)
    }

    fn flags_tag(
        &self,
        args: &mut Args,
        line: usize,
        column: usize,
    ) -> Result<Option<Vec<String>>, SieveError> {
        let flags = args.tagged_strings("flags")?;
        if flags.is_some() {
            self.need("imap4flags", line, column)?;
        }
        Ok(flags.map(|f| split_flags(&f)))
    }

    fn test(&mut self, t: &RawTest) -> Result<Test, SieveError> {
        let (line, column) = (t.line, t.column);
        let subtests = |me: &mut Compiler| -> Result<Vec<Test>, SieveError> {
            if !t.args.is_empty() || t.tests.is_empty() {
                return Err(error_at(
                    line,
                    column,
                    format!("{} needs a test list", t.name),
                ));
            }
            t.tests.iter().map(|s| me.test(s)).collect()
        };
        let no_tests = || -> Result<(), SieveError> {
            if t.tests.is_empty() {
                Ok(())
            } else {
                Err(error_at(line, column, format!("{} takes no test", t.name)))
            }
        };
        let test = match t.name.as_str() {
            "true" | "false" => {
                no_tests()?;
                if !t.args.is_empty() {
                    return Err(error_at(
                        line,
                        column,
                        format!("{} takes no argument", t.name),
                    ));
                }
                if t.name == "true" {
                    Test::True
                } else {
                    Test::False
                }
            }
            "not" => {
                let mut tests = subtests(self)?;
                if tests.len() != 1 {
                    return Err(error_at(line, column, "not takes one test"));
                }
                Test::Not(Box::new(tests.remove(0)))
            }
            "allof" => Test::AllOf(subtests(self)?),
            "anyof" => Test::AnyOf(subtests(self)?),
            "exists" => {
                no_tests()?;
                let rest = Args::new("exists", &t.args, line, column).rest()?;
                Test::Exists(strings(rest.first(), "exists' header names", line, column)?)
            }
            "size" => {
                no_tests()?;
                let mut args = Args::new("size", &t.args, line, column);
                let over = args.flag("over");
                let under = args.flag("under");
                if over == under {
                    return Err(error_at(line, column, "size needs :over or :under"));
                }
                let rest = args.rest()?;
                let Some(Arg::Number(limit)) = rest.first() else {
                    return Err(error_at(line, column, "size needs a number"));
                };
                Test::Size {
                    over,
                    limit: *limit,
                }
            }
            "header" | "address" | "envelope" | "hasflag" | "body" | "string" => {
                no_tests()?;
                let mut args = Args::new(&t.name, &t.args, line, column);
                let part = self.address_part(&mut args, &t.name, line, column)?;
                let index = if matches!(t.name.as_str(), "header" | "address") {
                    self.index_tag(&mut args, line, column)?
                } else {
                    None
                };
                let transform = if t.name == "body" {
                    self.need("body", line, column)?;
                    let raw = args.flag("raw");
                    let content = args.tagged_strings("content")?;
                    let text = args.flag("text");
                    match (raw, content, text) {
                        (true, None, false) => BodyTransform::Raw,
                        (false, Some(types), false) => BodyTransform::Content(types),
                        (false, None, _) => BodyTransform::Text,
                        _ => {
                            return Err(error_at(
                                line,
                                column,
                                "body takes one of :raw, :content, :text",
                            ));
                        }
                    }
                } else {
                    BodyTransform::Text
                };
                let (comparator, kind) = self.match_type(&mut args, line, column)?;
                let rest = args.rest()?;
                let (names, keys) = match (t.name.as_str(), rest.len()) {
                    ("hasflag" | "body", 1) => {
                        (Vec::new(), strings(rest.first(), "the keys", line, column)?)
                    }
                    ("header" | "address" | "envelope" | "string", 2) => (
                        strings(rest.first(), "the header names", line, column)?,
                        strings(rest.get(1), "the keys", line, column)?,
                    ),
                    _ => {
                        return Err(error_at(
                            line,
                            column,
                            format!("{}: wrong number of arguments", t.name),
                        ));
                    }
                };
                let kind = compile_regexes(kind, &keys, line, column)?;
                let matcher = Matcher {
                    comparator,
                    kind,
                    keys,
                };
                if t.name == "string" {
                    self.need("variables", line, column)?;
                    return Ok(Test::String {
                        sources: names,
                        matcher,
                    });
                }
                let names: Vec<String> =
                    names.into_iter().map(|n| n.to_ascii_lowercase()).collect();
                match t.name.as_str() {
                    "header" => Test::Header {
                        names,
                        index,
                        matcher,
                    },
                    "address" => Test::Address {
                        part,
                        names,
                        index,
                        matcher,
                    },
                    "envelope" => {
                        self.need("envelope", line, column)?;
                        if let Some(bad) = names.iter().find(|n| *n != "from" && *n != "to") {
                            return Err(error_at(
                                line,
                                column,
                                format!("envelope: {bad:?} is not from or to"),
                            ));
                        }
                        Test::Envelope {
                            part,
                            names,
                            matcher,
                        }
                    }
                    "body" => Test::Body { transform, matcher },
                    _ => {
                        self.need("imap4flags", line, column)?;
                        Test::HasFlag { matcher }
                    }
                }
            }
            "date" | "currentdate" => {
                no_tests()?;
                self.need("date", line, column)?;
                let mut args = Args::new(&t.name, &t.args, line, column);
                let zone = match args.tagged_string("zone")? {
                    Some(z) => Some(parse_zone(&z).ok_or_else(|| {
                        error_at(
                            line,
                            column,
                            format!(":zone {z:?} is not like +0100 or -0530"),
                        )
                    })?),
                    None if t.name == "currentdate" || !args.flag("originalzone") => Some(0),
                    None => None,
                };
                let index = self.index_tag(&mut args, line, column)?;
                let (comparator, kind) = self.match_type(&mut args, line, column)?;
                let rest = args.rest()?;
                let (header, part, keys) = match (t.name.as_str(), rest.len()) {
                    ("date", 3) => (
                        Some(
                            one_string(rest.first(), "the header name", line, column)?
                                .to_ascii_lowercase(),
                        ),
                        one_string(rest.get(1), "the date part", line, column)?,
                        strings(rest.get(2), "the keys", line, column)?,
                    ),
                    ("currentdate", 2) => (
                        None,
                        one_string(rest.first(), "the date part", line, column)?,
                        strings(rest.get(1), "the keys", line, column)?,
                    ),
                    _ => {
                        return Err(error_at(
                            line,
                            column,
                            format!("{}: wrong number of arguments", t.name),
                        ));
                    }
                };
                let part = part.to_ascii_lowercase();
                if !DATE_PARTS.contains(&part.as_str()) {
                    return Err(error_at(
                        line,
                        column,
                        format!("unknown date part {part:?} (use {})", DATE_PARTS.join(", ")),
                    ));
                }
                let kind = compile_regexes(kind, &keys, line, column)?;
                Test::Date {
                    header,
                    zone,
                    part,
                    index,
                    matcher: Matcher {
                        comparator,
                        kind,
                        keys,
                    },
                }
            }
            "valid_ext_list" => {
                no_tests()?;
                self.need("extlists", line, column)?;
                let rest = Args::new("valid_ext_list", &t.args, line, column).rest()?;
                Test::ValidExtList(strings(rest.first(), "the list names", line, column)?)
            }
            "mailboxexists" => {
                no_tests()?;
                self.need("mailbox", line, column)?;
                let rest = Args::new("mailboxexists", &t.args, line, column).rest()?;
                Test::MailboxExists(strings(rest.first(), "the mailbox names", line, column)?)
            }
            other => return Err(error_at(line, column, format!("unknown test {other:?}"))),
        };
        Ok(test)
    }

    /// RFC 5260 §6 `:index N [:last]`.
    fn index_tag(
        &self,
        args: &mut Args,
        line: usize,
        column: usize,
    ) -> Result<Option<(usize, bool)>, SieveError> {
        let Some(n) = args.tagged_number("index")? else {
            if args.flag("last") {
                return Err(error_at(line, column, ":last needs :index"));
            }
            return Ok(None);
        };
        self.need("index", line, column)?;
        if n == 0 {
            return Err(error_at(line, column, ":index counts from 1"));
        }
        Ok(Some((n as usize, args.flag("last"))))
    }

    fn address_part(
        &self,
        args: &mut Args,
        name: &str,
        line: usize,
        column: usize,
    ) -> Result<Part, SieveError> {
        let mut part = Part::All;
        let mut count = 0;
        for (tag, p) in [
            ("all", Part::All),
            ("localpart", Part::Local),
            ("domain", Part::Domain),
            ("user", Part::User),
            ("detail", Part::Detail),
        ] {
            if args.flag(tag) {
                if !matches!(name, "address" | "envelope") {
                    return Err(error_at(line, column, format!("{name} takes no :{tag}")));
                }
                if matches!(p, Part::User | Part::Detail) {
                    self.need("subaddress", line, column)?;
                }
                part = p;
                count += 1;
            }
        }
        if count > 1 {
            return Err(error_at(line, column, "only one address part may be given"));
        }
        Ok(part)
    }

    fn match_type(
        &self,
        args: &mut Args,
        line: usize,
        column: usize,
    ) -> Result<(Comparator, MatchKind), SieveError> {
        let comparator = match args.tagged_string("comparator")?.as_deref() {
            None | Some("i;ascii-casemap") => Comparator::AsciiCasemap,
            Some("i;octet") => Comparator::Octet,
            Some("i;ascii-numeric") => {
                self.need("comparator-i;ascii-numeric", line, column)?;
                Comparator::AsciiNumeric
            }
            Some(other) => {
                return Err(error_at(
                    line,
                    column,
                    format!("unknown comparator {other:?}"),
                ));
            }
        };
        let mut kinds = Vec::new();
        for (tag, kind) in [
            ("is", MatchKind::Is),
            ("contains", MatchKind::Contains),
            ("matches", MatchKind::Matches),
        ] {
            if args.flag(tag) {
                kinds.push(kind);
            }
        }
        if args.flag("list") {
            self.need("extlists", line, column)?;
            kinds.push(MatchKind::List);
        }
        if args.flag("regex") {
            self.need("regex", line, column)?;
            kinds.push(MatchKind::Regex(Vec::new()));
        }
        for tag in ["value", "count"] {
            if let Some(relation) = args.tagged_string(tag)? {
                self.need("relational", line, column)?;
                let relation = match relation.to_ascii_lowercase().as_str() {
                    "gt" => Relation::Gt,
                    "ge" => Relation::Ge,
                    "lt" => Relation::Lt,
                    "le" => Relation::Le,
                    "eq" => Relation::Eq,
                    "ne" => Relation::Ne,
                    other => {
                        return Err(error_at(
                            line,
                            column,
                            format!("unknown relation {other:?}"),
                        ));
                    }
                };
                kinds.push(if tag == "value" {
                    MatchKind::Value(relation)
                } else {
                    MatchKind::Count(relation)
                });
            }
        }
        if kinds.len() > 1 {
            return Err(error_at(line, column, "only one match type may be given"));
        }
        Ok((comparator, kinds.pop().unwrap_or(MatchKind::Is)))
    }
}

fn compile_regexes(
    kind: MatchKind,
    keys: &[String],
    line: usize,
    column: usize,
) -> Result<MatchKind, SieveError> {
    let MatchKind::Regex(_) = kind else {
        return Ok(kind);
    };
    let regexes = keys
        .iter()
        .map(|k| {
            RegexBuilder::new(k)
                .size_limit(REGEX_SIZE)
                .dfa_size_limit(REGEX_SIZE)
                .build()
                .map_err(|e| error_at(line, column, format!("regex {k:?}: {e}")))
        })
        .collect::<Result<Vec<_>, _>>()?;
    Ok(MatchKind::Regex(regexes))
}

/// `+0100` → 60 minutes, `-0530` → -330.
fn parse_zone(text: &str) -> Option<i32> {
    let (sign, digits) = match text.as_bytes().first()? {
        b'+' => (1, &text[1..]),
        b'-' => (-1, &text[1..]),
        _ => return None,
    };
    if digits.len() != 4 || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    let hours: i32 = digits[..2].parse().ok()?;
    let minutes: i32 = digits[2..].parse().ok()?;
    (hours < 24 && minutes < 60).then_some(sign * (hours * 60 + minutes))
}

/// RFC 5228 §2.4.2.4: `${hex: 41 42}` and `${unicode: 263A}` in strings.
fn decode_commands(commands: &mut [Command]) {
    for c in commands {
        decode_args(&mut c.args);
        decode_tests(&mut c.tests);
        if let Some(block) = &mut c.block {
            decode_commands(block);
        }
    }
}

fn decode_tests(tests: &mut [RawTest]) {
    for t in tests {
        decode_args(&mut t.args);
        decode_tests(&mut t.tests);
    }
}

fn decode_args(args: &mut [Arg]) {
    for arg in args {
        if let Arg::Strings(list) = arg {
            for s in list {
                *s = decode_encoded_characters(s);
            }
        }
    }
}

/// Replaces each `${…}` in `text` with what `resolve` makes of its inside;
/// `None` leaves it as written. Shared by encoded characters (at compile
/// time) and variables (at run time).
pub(super) fn substitute(text: &str, resolve: impl Fn(&str) -> Option<String>) -> String {
    let mut out = String::with_capacity(text.len());
    let mut rest = text;
    while let Some(start) = rest.find("${") {
        out.push_str(&rest[..start]);
        let after = &rest[start + 2..];
        let Some(end) = after.find('}') else {
            out.push_str(&rest[start..]);
            return out;
        };
        match resolve(&after[..end]) {
            Some(value) => out.push_str(&value),
            None => out.push_str(&rest[start..start + 3 + end]),
        }
        rest = &after[end + 1..];
    }
    out.push_str(rest);
    out
}

/// Decodes the encoded characters in one string; a malformed one is left
/// as it is, as the RFC asks.
pub(super) fn decode_encoded_characters(text: &str) -> String {
    substitute(text, |inner| {
        let (kind, body) = inner.split_once(':')?;
        let items = body.split_whitespace();
        match kind.trim().to_ascii_lowercase().as_str() {
            "hex" => {
                let bytes: Option<Vec<u8>> =
                    items.map(|h| u8::from_str_radix(h, 16).ok()).collect();
                String::from_utf8(bytes?).ok()
            }
            "unicode" => items
                .map(|h| u32::from_str_radix(h, 16).ok().and_then(char::from_u32))
                .collect::<Option<String>>(),
            _ => None,
        }
    })
}

fn no_block(c: &Command) -> Result<(), SieveError> {
    if c.block.is_some() {
        return Err(error_at(
            c.line,
            c.column,
            format!("{} takes no block", c.name),
        ));
    }
    Ok(())
}

/// Flag lists may hold several flags in one string, space-separated.
fn split_flags(list: &[String]) -> Vec<String> {
    list.iter()
        .flat_map(|s| s.split_whitespace().map(str::to_string).collect::<Vec<_>>())
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn requires_and_shapes_are_checked() {
        for (script, want) in [
            ("fileinto \"x\";", "require \"fileinto\""),
            ("require \"nope\";", "not supported"),
            ("keep; require \"fileinto\";", "before any other"),
            ("if true { keep; } elsif { keep; }", "exactly one test"),
            ("else { keep; }", "without an if"),
            (
                "if header :is :contains \"a\" \"b\" { keep; }",
                "one match type",
            ),
            ("if size 5 { keep; }", ":over or :under"),
            ("redirect \"not an address\";", "not a mail address"),
            (
                "require \"regex\"; if header :regex \"s\" \"(\" { keep; }",
                "regex",
            ),
            ("if header :bogus \"a\" \"b\" { keep; }", "unknown tag"),
            ("frobnicate;", "unknown command"),
            (
                "if envelope :is \"from\" \"a\" { keep; }",
                "require \"envelope\"",
            ),
        ] {
            let e = Script::compile(script).unwrap_err();
            assert!(e.message.contains(want), "{script}: {e}");
        }
    }

    /// What sieve-serve and `mailsort --check` show a user: where the
    /// command or test the compiler refused begins.
    #[test]
    fn compile_errors_name_the_line_and_column() {
        for (script, at) in [
            ("keep;\n  frobnicate;\n", (2, 3)),
            ("require \"fileinto\";\nif true {\n\tfileinto;\n}\n", (3, 2)),
            (
                "if true {\n  keep;\n} elsif header :bogus \"a\" \"b\" { stop; }\n",
                (3, 9),
            ),
            ("require \"enotify\";", (1, 1)),
        ] {
            let e = Script::compile(script).unwrap_err();
            assert_eq!((e.line, e.column), at, "{script:?}: {e}");
        }
    }

    #[test]
    fn the_rfc_5228_example_compiles() {
        let script = r#"
require ["fileinto"];
if header :is "Sender" "owner-ietf-mtgs@ietf.org" {
    fileinto "INBOX.meetings";
} elsif address :domain :is ["From", "To"] "example.com" {
    keep;
} elsif anyof (not address :all :contains ["To", "Cc", "Bcc"] "me@example.com",
               header :matches "subject" ["*make*money*fast*", "*university*dipl*mas*"]) {
    fileinto "spam";
} else {
    fileinto "personal";
}
"#;
        let compiled = Script::compile(script).unwrap();
        assert_eq!(compiled.rules.len(), 1);
    }
}
