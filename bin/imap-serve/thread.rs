//! SORT and THREAD (RFC 5256, with RFC 5957's DISPLAYFROM and DISPLAYTO).
//!
//! Both start from the messages a search matches and read what they need
//! (subject, dates, addresses, Message-ID, References) from the folder
//! cache, so a second SORT of a big folder reads no message at all.
//!
//! THREAD=REFERENCES follows RFC 5256 §3 (Zawinski's algorithm). The loop
//! checks are what could make it quadratic (a References chain 100,000
//! long would walk the tree at every link), so the trees carry a
//! union-find: a link (step 1B) only ever hangs a root under another tree,
//! and "would this make a loop" is one look-up of the parent's root. The
//! one operation union-find cannot undo, moving a message to the parent
//! its own References name (step 1C), is repaired by a walk of the moved
//! subtree, paid from a budget proportional to the headers read; a
//! mailbox built to spend it gets first-parent-wins until it is refilled,
//! never quadratic time. Everything that walks the trees (pruning,
//! sorting, printing) uses an explicit stack, so depth costs no stack.
//!
//! Strings compare under i;ascii-casemap, the collation RFC 5256 §3
//! prescribes when I18NLEVEL (RFC 5255) is not offered.

use std::cmp::Ordering;
use std::collections::HashMap;
use std::fmt::Write as _;

use postroom::net::NetError;
use postroom::proto::imap::command::{SearchKey, SortKey};
use postroom::proto::imap::response::{esearch, number_list};
use postroom::store::mailbox::cache::Record;

use crate::session::{Done, Selected, Session};

/// What SORT and THREAD know of one matched message.
struct Item {
    seq: u32,
    uid: u32,
    record: Record,
}

impl Item {
    /// RFC 5256 §2.2: the Date header in UTC, else the internal date.
    fn sent(&self) -> i64 {
        self.record.sent_date.unwrap_or(self.record.internal_date)
    }

    fn subject(&self) -> &str {
        self.record.header("SUBJECT").next().unwrap_or("")
    }

    /// (display name, mailbox, address) of the first address of a field.
    fn first_address(&self, field: &str) -> (String, String, String) {
        let value = self.record.header(field).next().unwrap_or("");
        first_address(value)
    }
}

/// The first address of a decoded address field (`Name <local@host>, …`,
/// a group as `group: …`, `mime::decoded_headers`): (display name,
/// mailbox, address), ASCII-lower-cased. A group stands first as its
/// name in all three, as the group's start does in an ENVELOPE (RFC 9051
/// §7.5.2) and as Dovecot sorts it.
fn first_address(value: &str) -> (String, String, String) {
    if let Some(group) = group_name(value) {
        let group = group.to_ascii_lowercase();
        return (group.clone(), group.clone(), group);
    }
    let (name, addr) = match (value.find('<'), value.find('>')) {
        (Some(open), Some(close)) if open < close => {
            (value[..open].trim(), value[open + 1..close].trim())
        }
        _ => ("", value.split(',').next().unwrap_or("").trim()),
    };
    let name = name.trim_matches('"').trim();
    let mailbox = addr.split('@').next().unwrap_or("");
    (
        name.to_ascii_lowercase(),
        mailbox.to_ascii_lowercase(),
        addr.to_ascii_lowercase(),
    )
}

/// The group's name when a decoded address field starts with a group:
/// a colon outside quotes before any `<`, `,` or `@`.
fn group_name(value: &str) -> Option<&str> {
    let mut quoted = false;
    for (i, c) in value.char_indices() {
        match c {
            '"' => quoted = !quoted,
            ':' if !quoted => return Some(value[..i].trim().trim_matches('"').trim()),
            '<' | ',' | '@' if !quoted => return None,
            _ => {}
        }
    }
    None
}

/// RFC 5256 §2.1: the subject without "Re:", "Fwd:", "[list]" and
/// "(fwd)" dressing, ASCII-lower-cased for i;ascii-casemap; and whether
/// any such dressing said it is a reply or a forward (what step 5 of
/// REFERENCES asks).
pub fn base_subject(subject: &str) -> (String, bool) {
    // (1) RFC 2047 words were decoded with the header; tabs and runs of
    // blanks (continuations are already unfolded) become one space.
    let mut s = subject
        .split([' ', '\t', '\r', '\n'])
        .filter(|w| !w.is_empty())
        .collect::<Vec<_>>()
        .join(" ");
    let mut reply = false;
    loop {
        let before = s.len();
        // (2) trailers: "(fwd)" and blanks.
        loop {
            let trimmed = s.trim_end_matches(' ').len();
            if trimmed < s.len() {
                s.truncate(trimmed);
            } else if s
                .get(s.len().saturating_sub(5)..)
                .is_some_and(|t| t.eq_ignore_ascii_case("(fwd)"))
            {
                s.truncate(s.len() - 5);
                reply = true;
            } else {
                break;
            }
        }
        // (3) leaders: blobs before "re:"/"fw:"/"fwd:", and blanks; (4) a
        // lone leading blob when something follows it.
        loop {
            if let Some(rest) = strip_leader(&s) {
                s = rest;
                reply = true;
            } else if let Some(rest) = strip_blob(&s).filter(|r| !r.is_empty()) {
                s = rest.to_string();
            } else {
                break;
            }
        }
        // (6) "[fwd: … ]".
        if s.len() >= 6
            && s.get(..5).is_some_and(|t| t.eq_ignore_ascii_case("[fwd:"))
            && s.ends_with(']')
        {
            s = s[5..s.len() - 1].trim_matches(' ').to_string();
            reply = true;
        }
        if s.len() == before {
            break;
        }
    }
    (s.to_ascii_lowercase(), reply)
}

/// `[blob]` and the blanks after it at the start of `s`, removed.
fn strip_blob(s: &str) -> Option<&str> {
    let rest = s.strip_prefix('[')?;
    let close = rest.find(['[', ']'])?;
    if rest.as_bytes()[close] != b']' {
        return None;
    }
    Some(rest[close + 1..].trim_start_matches(' '))
}

/// `*blob ("re" / "fw" / "fwd") *WSP [blob] ":"` at the start of `s`.
fn strip_leader(s: &str) -> Option<String> {
    let mut rest = s.trim_start_matches(' ');
    while let Some(r) = strip_blob(rest) {
        rest = r;
    }
    let lower = rest
        .get(..3)
        .map(str::to_ascii_lowercase)
        .unwrap_or_default();
    let skip = if lower == "fwd" {
        3
    } else if lower.starts_with("re") || lower.starts_with("fw") {
        2
    } else {
        return None;
    };
    let mut after = rest[skip..].trim_start_matches(' ');
    if let Some(r) = strip_blob(after) {
        after = r;
    }
    after
        .strip_prefix(':')
        .map(|r| r.trim_start_matches(' ').to_string())
}

/// `fields`: the decoded header fields the caller reads (the rest of each
/// record is not kept, `message::each_record`).
fn items_of(sel: &mut Selected, key: &SearchKey, fields: &[&str]) -> Vec<Item> {
    let positions = crate::matching::matching(sel, key);
    let mut items = Vec::with_capacity(positions.len());
    crate::message::each_record(sel, &positions, fields, |i, uid, record| {
        items.push(Item {
            seq: i as u32 + 1,
            uid,
            record,
        })
    });
    items
}

/// The messages `key` matches in SORT order: (UID, sequence number).
/// SORT answers with it, and a SORT context (RFC 5267) recomputes it.
pub fn sort_order(
    sel: &mut Selected,
    criteria: &[(bool, SortKey)],
    key: &SearchKey,
) -> Vec<(u32, u32)> {
    let fields: Vec<&str> = criteria
        .iter()
        .filter_map(|(_, k)| match k {
            SortKey::Subject => Some("SUBJECT"),
            SortKey::From | SortKey::DisplayFrom => Some("FROM"),
            SortKey::To | SortKey::DisplayTo => Some("TO"),
            SortKey::Cc => Some("CC"),
            SortKey::Arrival | SortKey::Date | SortKey::Size => None,
        })
        .collect();
    let items = items_of(sel, key, &fields);
    // Every key computed once per message, not once per comparison.
    let keys: Vec<Vec<SortValue>> = items
        .iter()
        .map(|item| criteria.iter().map(|(_, k)| sort_value(item, *k)).collect())
        .collect();
    let mut order: Vec<usize> = (0..items.len()).collect();
    order.sort_by(|&a, &b| {
        for (n, (reverse, _)) in criteria.iter().enumerate() {
            let o = keys[a][n].cmp(&keys[b][n]);
            let o = if *reverse { o.reverse() } else { o };
            if o != Ordering::Equal {
                return o;
            }
        }
        items[a].seq.cmp(&items[b].seq)
    });
    order
        .iter()
        .map(|&i| (items[i].uid, items[i].seq))
        .collect()
}

impl Session {
    pub async fn sort(
        &mut self,
        tag: &str,
        uid: bool,
        criteria: &[(bool, SortKey)],
        key: &SearchKey,
        ret: Option<&[String]>,
    ) -> Result<Done, NetError> {
        let session = self;
        let Some(sel) = session.selected.as_mut() else {
            return Ok(Done::Bad("select a mailbox first".into()));
        };
        let order = sort_order(sel, criteria, key);
        let sorted: Vec<u32> = order
            .iter()
            .map(|&(u, seq)| if uid { u } else { seq })
            .collect();
        let (ret, update) = crate::context::split_return(ret);
        let mut line = String::new();
        if update {
            let uids = order.iter().map(|&(u, _)| u).collect();
            line = crate::context::open(sel, tag, uid, key, Some(criteria), uids);
        }
        // ESORT (RFC 5267): RETURN options answer as ESEARCH, in sort order.
        line.push_str(&match &ret {
            Some(opts) => esearch(tag, uid, &sorted, opts),
            None => number_list("SORT", &sorted),
        });
        line.push_str("\r\n");
        session.out(line.as_bytes()).await?;
        Ok(Done::Ok("SORT completed".into()))
    }
}

#[derive(PartialEq, Eq, PartialOrd, Ord)]
enum SortValue {
    Number(i64),
    Text(String),
}

/// i;ascii-casemap (RFC 4790 §9.2) folds to upper case, so `_`, `[` and
/// the other characters between the two cases sort after the letters.
fn sort_value(item: &Item, key: SortKey) -> SortValue {
    match raw_sort_value(item, key) {
        SortValue::Text(t) => SortValue::Text(t.to_ascii_uppercase()),
        number => number,
    }
}

fn raw_sort_value(item: &Item, key: SortKey) -> SortValue {
    match key {
        SortKey::Arrival => SortValue::Number(item.record.internal_date),
        SortKey::Date => SortValue::Number(item.sent()),
        SortKey::Size => SortValue::Number(item.record.size as i64),
        SortKey::Subject => SortValue::Text(base_subject(item.subject()).0),
        SortKey::From => SortValue::Text(item.first_address("FROM").1),
        SortKey::To => SortValue::Text(item.first_address("TO").1),
        SortKey::Cc => SortValue::Text(item.first_address("CC").1),
        SortKey::DisplayFrom | SortKey::DisplayTo => {
            let field = if key == SortKey::DisplayFrom {
                "FROM"
            } else {
                "TO"
            };
            let (name, _, address) = item.first_address(field);
            SortValue::Text(if name.is_empty() { address } else { name })
        }
    }
}

impl Session {
    pub async fn thread(
        &mut self,
        uid: bool,
        references: bool,
        key: &SearchKey,
    ) -> Result<Done, NetError> {
        let session = self;
        let Some(sel) = session.selected.as_mut() else {
            return Ok(Done::Bad("select a mailbox first".into()));
        };
        let messages = messages_of(sel, key);
        let forest = if references {
            by_references(&messages)
        } else {
            by_subject(&messages)
        };
        let mut line = String::from("* THREAD ");
        forest.print(&messages.list, uid, &mut line);
        // The working data goes before the answer is sent, not after.
        drop(forest);
        drop(messages);
        line.push_str("\r\n");
        session.out(line.as_bytes()).await?;
        Ok(Done::Ok("THREAD completed".into()))
    }
}

/// A stretch of [`Messages::text`].
#[derive(Clone, Copy)]
struct Span {
    start: u32,
    end: u32,
}

/// What THREAD knows of one matched message; its strings are spans of
/// [`Messages::text`].
struct Msg {
    seq: u32,
    uid: u32,
    /// RFC 5256 §2.2: the Date header in UTC, else the internal date.
    sent: i64,
    /// The base subject (§2.1), and whether its dressing said it is a
    /// reply or a forward.
    base: Span,
    reply: bool,
    /// Its own Message-ID.
    id: Option<Span>,
    /// The Message-IDs of its References (else the first of In-Reply-To),
    /// oldest first: `Messages::refs[refs.0..refs.1]`.
    refs: (u32, u32),
}

impl Msg {
    fn number(&self, uid: bool) -> u32 {
        if uid { self.uid } else { self.seq }
    }
}

/// The header fields THREAD reads.
const THREAD_FIELDS: [&str; 4] = ["SUBJECT", "MESSAGE-ID", "REFERENCES", "IN-REPLY-TO"];

/// THREAD's working data in three large buffers: every string (base
/// subjects, Message-IDs) in one arena, spans of it in fixed-size
/// entries. A String per Message-ID and a record per message came to a
/// million small allocations over 100,000 messages, which glibc kept
/// (40 MB of a fragmented heap) after the command had freed them; a few
/// large buffers go back whole.
#[derive(Default)]
struct Messages {
    list: Vec<Msg>,
    text: String,
    refs: Vec<Span>,
}

impl Messages {
    /// `s` appended to the arena; `None` past 4 GB of it (spans are
    /// u32), where the string counts as absent.
    fn intern(&mut self, s: &str) -> Option<Span> {
        let start = u32::try_from(self.text.len()).ok()?;
        let end = u32::try_from(self.text.len() + s.len()).ok()?;
        self.text.push_str(s);
        Some(Span { start, end })
    }

    fn str(&self, span: Span) -> &str {
        self.text
            .get(span.start as usize..span.end as usize)
            .unwrap_or("")
    }

    fn refs_of(&self, msg: &Msg) -> &[Span] {
        self.refs
            .get(msg.refs.0 as usize..msg.refs.1 as usize)
            .unwrap_or(&[])
    }

    /// What threading reads of a message's record (its decoded
    /// [`THREAD_FIELDS`]), kept; the record itself is not.
    fn push(&mut self, seq: u32, uid: u32, record: &Record) {
        let (base, reply) = base_subject(record.header("SUBJECT").next().unwrap_or(""));
        let base = self.intern(&base).unwrap_or(Span { start: 0, end: 0 });
        let id = record
            .header("MESSAGE-ID")
            .next()
            .and_then(|v| ids(v).next())
            .and_then(|id| self.intern(id));
        let first = self.refs.len();
        for id in record.header("REFERENCES").flat_map(ids) {
            if let Some(span) = self.intern(id) {
                self.refs.push(span);
            }
        }
        if self.refs.len() == first
            && let Some(id) = record.header("IN-REPLY-TO").flat_map(ids).next()
            && let Some(span) = self.intern(id)
        {
            self.refs.push(span);
        }
        let refs = (
            u32::try_from(first).unwrap_or(u32::MAX),
            u32::try_from(self.refs.len()).unwrap_or(u32::MAX),
        );
        self.list.push(Msg {
            seq,
            uid,
            sent: record.sent_date.unwrap_or(record.internal_date),
            base,
            reply,
            id,
            refs,
        });
    }
}

/// The messages `key` matches, in sequence order, as THREAD needs them:
/// each record is read, kept in part and dropped before the next.
fn messages_of(sel: &mut Selected, key: &SearchKey) -> Messages {
    let positions = crate::matching::matching(sel, key);
    let mut messages = Messages::default();
    messages.list.reserve_exact(positions.len());
    crate::message::each_record(sel, &positions, &THREAD_FIELDS, |i, uid, record| {
        messages.push(i as u32 + 1, uid, &record)
    });
    messages
}

/// Containers: a message (an index into the messages) or a placeholder.
#[derive(Default)]
struct Forest {
    message: Vec<Option<usize>>,
    parent: Vec<Option<usize>>,
    children: Vec<Vec<usize>>,
    roots: Vec<usize>,
}

impl Forest {
    fn add(&mut self, message: Option<usize>) -> usize {
        self.message.push(message);
        self.parent.push(None);
        self.children.push(Vec::new());
        self.message.len() - 1
    }

    /// The date a container sorts by: its message's, or a placeholder's
    /// first child's (children are sorted before their parents).
    fn date(&self, msgs: &[Msg], n: usize) -> (i64, u32) {
        let mut n = n;
        loop {
            if let Some(m) = self.message[n] {
                return (msgs[m].sent, msgs[m].seq);
            }
            match self.children[n].first() {
                Some(&c) => n = c,
                None => return (i64::MAX, u32::MAX),
            }
        }
    }

    /// Every container below the roots, children before parents.
    fn post_order(&self) -> Vec<usize> {
        let mut out = Vec::with_capacity(self.message.len());
        let mut stack: Vec<(usize, bool)> = self.roots.iter().map(|&r| (r, false)).collect();
        while let Some((n, expanded)) = stack.pop() {
            if expanded {
                out.push(n);
            } else {
                stack.push((n, true));
                stack.extend(self.children[n].iter().map(|&c| (c, false)));
            }
        }
        out
    }

    /// RFC 5256 §3 step 6: siblings by sent date, then sequence number.
    fn sort(&mut self, msgs: &[Msg]) {
        for n in self.post_order() {
            let mut kids = std::mem::take(&mut self.children[n]);
            kids.sort_by_key(|&c| self.date(msgs, c));
            self.children[n] = kids;
        }
        let mut roots = std::mem::take(&mut self.roots);
        roots.sort_by_key(|&r| self.date(msgs, r));
        self.roots = roots;
    }

    /// `(3 6 (4 23)(44 7 96))`: a chain of single children in one list,
    /// several children each in parentheses.
    fn print(&self, msgs: &[Msg], uid: bool, out: &mut String) {
        enum Tok {
            Node(usize),
            Open,
            Close,
        }
        let mut stack: Vec<Tok> = Vec::new();
        for &r in self.roots.iter().rev() {
            stack.extend([Tok::Close, Tok::Node(r), Tok::Open]);
        }
        while let Some(tok) = stack.pop() {
            match tok {
                Tok::Open => {
                    if out.ends_with(|c: char| c.is_ascii_digit()) {
                        out.push(' ');
                    }
                    out.push('(');
                }
                Tok::Close => out.push(')'),
                Tok::Node(n) => {
                    if let Some(m) = self.message[n] {
                        if out.ends_with(|c: char| c.is_ascii_digit()) {
                            out.push(' ');
                        }
                        let _ = write!(out, "{}", msgs[m].number(uid));
                    }
                    let kids = &self.children[n];
                    if kids.len() == 1 && self.message[n].is_some() {
                        stack.push(Tok::Node(kids[0]));
                    } else {
                        for &c in kids.iter().rev() {
                            stack.extend([Tok::Close, Tok::Node(c), Tok::Open]);
                        }
                    }
                }
            }
        }
    }
}

/// ORDEREDSUBJECT: one thread per base subject, oldest first; the first
/// message is the parent of all the others.
fn by_subject(messages: &Messages) -> Forest {
    let msgs = &messages.list;
    let mut forest = Forest::default();
    let mut order: Vec<usize> = (0..msgs.len()).collect();
    let base = |m: usize| messages.str(msgs[m].base);
    order.sort_by(|&a, &b| {
        base(a)
            .cmp(base(b))
            .then(msgs[a].sent.cmp(&msgs[b].sent))
            .then(msgs[a].seq.cmp(&msgs[b].seq))
    });
    let mut head: Option<(usize, &str)> = None;
    for m in order {
        let n = forest.add(Some(m));
        match head {
            Some((h, b)) if b == base(m) => {
                forest.parent[n] = Some(h);
                forest.children[h].push(n);
            }
            _ => {
                forest.roots.push(n);
                head = Some((n, base(m)));
            }
        }
    }
    forest.sort(msgs);
    forest
}

/// Message-IDs in a References or In-Reply-To value.
fn ids(value: &str) -> impl Iterator<Item = &str> {
    value
        .split(|c: char| c.is_whitespace() || c == ',')
        .map(|id| id.trim_start_matches('<').trim_end_matches('>'))
        .filter(|id| !id.is_empty())
}

/// What re-parenting (step 1C) may cost per message and per reference,
/// in containers visited: enough for any real mailbox many times over,
/// and what keeps a hostile one linear.
const REPARENT_WORK_PER_LINK: usize = 16;
const REPARENT_WORK_FLOOR: usize = 100_000;

/// Step 1 of RFC 5256 §3: containers by Message-ID and the links between
/// them, with the bookkeeping that keeps each loop check cheap.
struct Linker<'a> {
    forest: Forest,
    /// Keys borrowed from [`Messages::text`]: no String per Message-ID.
    by_id: HashMap<&'a str, usize>,
    /// Union-find over the trees: `top[n]` is n or one of its ancestors,
    /// so following it (with path halving) finds n's root in near-constant
    /// time. A link never invalidates it; a cut is repaired in `reparent`.
    top: Vec<usize>,
    /// Scratch marks for "is this container in that subtree".
    mark: Vec<bool>,
    /// Containers re-parenting may still visit; once spent, a message
    /// keeps the parent it has (see `reparent`).
    budget: usize,
}

impl<'a> Linker<'a> {
    fn new(messages: usize) -> Self {
        Linker {
            forest: Forest::default(),
            by_id: HashMap::with_capacity(messages),
            top: Vec::new(),
            mark: Vec::new(),
            budget: REPARENT_WORK_FLOOR,
        }
    }

    fn add(&mut self, message: Option<usize>) -> usize {
        let n = self.forest.add(message);
        self.top.push(n);
        self.mark.push(false);
        n
    }

    /// The container for a Message-ID, made empty if there is none.
    fn node(&mut self, id: &'a str) -> usize {
        if let Some(&n) = self.by_id.get(id) {
            return n;
        }
        let n = self.add(None);
        self.by_id.insert(id, n);
        n
    }

    fn root(&mut self, mut n: usize) -> usize {
        while self.top[n] != n {
            self.top[n] = self.top[self.top[n]];
            n = self.top[n];
        }
        n
    }

    /// Step 1B: `child` goes under `parent` only if it has no parent yet
    /// and is not `parent`'s ancestor. Having no parent, it is the root of
    /// its tree, so it is an ancestor of `parent` exactly when it is
    /// `parent`'s root: one union-find look-up instead of a tree walk.
    fn link(&mut self, parent: usize, child: usize) {
        if parent != child && self.forest.parent[child].is_none() && self.root(parent) != child {
            self.forest.parent[child] = Some(parent);
            self.forest.children[parent].push(child);
            self.top[child] = self.root(parent);
        }
    }

    /// Step 1C: a message's own last reference is its parent, whatever
    /// earlier References said (none: it is a root), unless that would
    /// make a loop. Cutting `c` from an old parent costs a walk of c's
    /// subtree (to repair `top` there) and of the old parent's children,
    /// paid from `budget`, which each message and reference adds to; a
    /// mailbox built to make those walks long (re-parenting the same deep
    /// subtree again and again) spends it, and while it is spent a
    /// message keeps the parent it was first given, so the whole stays
    /// linear in the size of the headers.
    fn reparent(&mut self, c: usize, p: Option<usize>) {
        let Some(old) = self.forest.parent[c] else {
            if let Some(p) = p {
                self.link(p, c);
            }
            return;
        };
        if p == Some(old) {
            return;
        }
        let siblings = self.forest.children[old].len();
        let Some(subtree) = self.subtree(c, self.budget.saturating_sub(siblings)) else {
            self.budget = 0;
            return;
        };
        self.budget -= subtree.len() + siblings;
        self.forest.children[old].retain(|&k| k != c);
        self.forest.parent[c] = None;
        for &n in &subtree {
            // c is an ancestor of all of them, and now their root.
            self.top[n] = c;
            self.mark[n] = true;
        }
        let looped = p.is_some_and(|p| self.mark[p]);
        for &n in &subtree {
            self.mark[n] = false;
        }
        if let Some(p) = p
            && !looped
        {
            self.forest.parent[c] = Some(p);
            self.forest.children[p].push(c);
            self.top[c] = self.root(p);
        }
    }

    /// `c` and everything below it, or `None` past `limit` containers.
    fn subtree(&self, c: usize, limit: usize) -> Option<Vec<usize>> {
        let mut out = Vec::new();
        let mut stack = vec![c];
        while let Some(n) = stack.pop() {
            if out.len() >= limit {
                return None;
            }
            out.push(n);
            stack.extend_from_slice(&self.forest.children[n]);
        }
        Some(out)
    }
}

/// REFERENCES: RFC 5256 §3, steps 1 to 6.
fn by_references(messages: &Messages) -> Forest {
    let msgs = &messages.list;
    let mut linker = Linker::new(msgs.len());
    for (m, msg) in msgs.iter().enumerate() {
        // 1A: no Message-ID, or one an earlier message has: a unique one,
        // a container no reference can name.
        let c = match msg.id.map(|span| messages.str(span)) {
            Some(id)
                if linker
                    .by_id
                    .get(id)
                    .is_none_or(|&n| linker.forest.message[n].is_none()) =>
            {
                linker.node(id)
            }
            _ => linker.add(None),
        };
        linker.forest.message[c] = Some(m);
        let refs = messages.refs_of(msg);
        linker.budget = linker
            .budget
            .saturating_add(REPARENT_WORK_PER_LINK.saturating_mul(refs.len() + 1));
        // 1B: each reference is the parent of the next.
        let mut previous: Option<usize> = None;
        for &span in refs {
            let n = linker.node(messages.str(span));
            if let Some(p) = previous {
                linker.link(p, n);
            }
            previous = Some(n);
        }
        linker.reparent(c, previous);
    }
    let mut forest = linker.forest;
    // 2: the containers without a parent are the roots.
    forest.roots = (0..forest.message.len())
        .filter(|&n| forest.parent[n].is_none())
        .collect();
    prune(&mut forest);
    // 4: roots by date (an empty one by its first child's), so that 5
    // meets them in that order and takes a placeholder's first child.
    forest.sort(msgs);
    group_by_subject(&mut forest, messages);
    // 6: every set of siblings by date.
    forest.sort(msgs);
    forest
}

/// Step 3: empty containers go; their children move up, except that the
/// children of an empty root stay under it when there are several.
///
/// A container that goes leaves its (already pruned) children in its own
/// list for its parent to take: no list of replacements per container.
fn prune(forest: &mut Forest) {
    let order = forest.post_order();
    let mut kept = vec![false; forest.message.len()];
    for n in order {
        let old = std::mem::take(&mut forest.children[n]);
        let mut kids = Vec::with_capacity(old.len());
        for c in old {
            if kept[c] {
                kids.push(c);
            } else {
                kids.append(&mut forest.children[c]);
            }
        }
        let at_root = forest.parent[n].is_none();
        if forest.message[n].is_some() || (at_root && kids.len() > 1) {
            for &k in &kids {
                forest.parent[k] = Some(n);
            }
            kept[n] = true;
        }
        forest.children[n] = kids;
    }
    let roots = std::mem::take(&mut forest.roots);
    for r in roots {
        if kept[r] {
            forest.roots.push(r);
        } else {
            let kids = std::mem::take(&mut forest.children[r]);
            forest.roots.extend(kids);
        }
    }
    for &r in &forest.roots {
        forest.parent[r] = None;
    }
}

/// A thread's base subject (its message's, or a placeholder's first
/// child's) and whether it is a reply; `None` when it is empty.
fn subject_of<'a>(forest: &Forest, messages: &'a Messages, n: usize) -> Option<(&'a str, bool)> {
    let m =
        forest.message[n].or_else(|| forest.children[n].iter().find_map(|&c| forest.message[c]))?;
    let msg = &messages.list[m];
    let base = messages.str(msg.base);
    (!base.is_empty()).then_some((base, msg.reply && forest.message[n].is_some()))
}

/// Step 5: roots with the same base subject become one thread.
fn group_by_subject(forest: &mut Forest, messages: &Messages) {
    let subject_of = |forest: &Forest, n: usize| subject_of(forest, messages, n);
    let mut table: HashMap<&str, usize> = HashMap::new();
    for &r in &forest.roots {
        let Some((base, reply)) = subject_of(forest, r) else {
            continue;
        };
        match table.get(&base) {
            None => {
                table.insert(base, r);
            }
            Some(&old) => {
                let old_reply = subject_of(forest, old).is_some_and(|(_, rep)| rep);
                let prefer = (forest.message[r].is_none() && forest.message[old].is_some())
                    || (old_reply && !reply && forest.message[r].is_some());
                if prefer {
                    table.insert(base, r);
                }
            }
        }
    }
    let roots = std::mem::take(&mut forest.roots);
    let mut kept = Vec::with_capacity(roots.len());
    for r in roots {
        let Some((base, reply)) = subject_of(forest, r) else {
            kept.push(r);
            continue;
        };
        let Some(&old) = table.get(&base) else {
            kept.push(r);
            continue;
        };
        if old == r {
            kept.push(r);
            continue;
        }
        let adopt = |forest: &mut Forest, parent: usize, child: usize| {
            forest.parent[child] = Some(parent);
            forest.children[parent].push(child);
        };
        match (forest.message[old].is_none(), forest.message[r].is_none()) {
            (true, true) => {
                for c in std::mem::take(&mut forest.children[r]) {
                    adopt(forest, old, c);
                }
            }
            (true, false) => adopt(forest, old, r),
            (false, _) if reply && !subject_of(forest, old).is_some_and(|(_, rep)| rep) => {
                adopt(forest, old, r)
            }
            _ => {
                // Neither is the other's reply: siblings under a new
                // placeholder, which takes the old root's place.
                let p = forest.add(None);
                adopt(forest, p, old);
                adopt(forest, p, r);
                table.insert(base, p);
                if let Some(slot) = kept.iter_mut().find(|k| **k == old) {
                    *slot = p;
                }
            }
        }
    }
    forest.roots = kept;
}

#[cfg(test)]
mod tests {
    use super::*;

    fn item(seq: u32, subject: &str, id: &str, refs: &str, sent: i64) -> Item {
        let mut headers = vec![("SUBJECT".to_string(), subject.to_string())];
        if !id.is_empty() {
            headers.push(("MESSAGE-ID".into(), id.into()));
        }
        if !refs.is_empty() {
            headers.push(("REFERENCES".into(), refs.into()));
        }
        Item {
            seq,
            uid: seq + 100,
            record: Record {
                uid: seq + 100,
                sent_date: Some(sent),
                headers,
                ..Record::default()
            },
        }
    }

    /// An item whose header fields come from a raw header, through the
    /// same decoding a real message gets.
    fn raw_item(seq: u32, header: &str) -> Item {
        // A wire size stated in the name (W= unlike S=), so the header
        // alone makes a record.
        let entry = postroom::store::mailbox::Entry {
            uid: seq + 100,
            base: format!("{seq}.M1P1.h,S=1,W=2").into(),
            info: "".into(),
        };
        let wire = format!("{header}\r\n\r\nbody\r\n");
        let record = crate::message::summarize(&entry, wire.as_bytes(), false, 7);
        Item {
            seq,
            uid: seq + 100,
            record: record.unwrap_or_default(),
        }
    }

    fn printed(forest: &Forest, items: &[Item]) -> String {
        let mut out = String::new();
        forest.print(&messages(items).list, false, &mut out);
        out
    }

    /// What THREAD keeps of the items, in their order.
    fn messages(items: &[Item]) -> Messages {
        let mut messages = Messages::default();
        for item in items {
            messages.push(item.seq, item.uid, &item.record);
        }
        messages
    }

    fn by_references(items: &[Item]) -> Forest {
        super::by_references(&messages(items))
    }

    fn by_subject(items: &[Item]) -> Forest {
        super::by_subject(&messages(items))
    }

    #[test]
    fn base_subjects_lose_their_dressing() {
        for (subject, base, reply) in [
            ("Re: [list] Fwd: subj (fwd)", "subj", true),
            ("  RE:  re: Hello \t  World ", "hello world", true),
            ("[blob] only", "only", false),
            // A blob that is all there is stays: the base is never
            // emptied by step 4.
            ("[blob]", "[blob]", false),
            ("[blob]  ", "[blob]", false),
            ("[a][b] x", "x", false),
            ("[fwd: inner thing]", "inner thing", true),
            ("[Fwd: Re: [list] inner (fwd)]", "inner", true),
            ("Re[2]: counted", "counted", true),
            (
                "Fwd [x]: blob before the colon",
                "blob before the colon",
                true,
            ),
            ("Re: [list] Re: [list]", "[list]", true),
            ("Re:", "", true),
            // i;ascii-casemap: only ASCII letters fold.
            ("Grüße ÄB", "grüße Äb", false),
            ("Ⱥ (fwd)", "Ⱥ", true),
            ("", "", false),
            ("Fw:Fwd: re:x", "x", true),
            ("Rethinking: not a reply", "rethinking: not a reply", false),
            (
                "Fwd stays without a colon",
                "fwd stays without a colon",
                false,
            ),
            // Only SP and HTAB are blanks; a no-break space is text.
            ("Re:\u{a0}x", "\u{a0}x", true),
        ] {
            assert_eq!(
                base_subject(subject),
                (base.to_string(), reply),
                "{subject}"
            );
        }
    }

    #[test]
    fn encoded_words_are_decoded_before_the_dressing_goes() {
        let it = raw_item(
            1,
            "Subject: =?utf-8?q?Re=3A_=5Blist=5D?= =?utf-8?b?R3LDvMOfZQ==?=\r\n (fwd)",
        );
        assert_eq!(base_subject(it.subject()), ("grüße".to_string(), true));
        let it = raw_item(2, "Subject: =?iso-8859-1?q?Fwd=3A_J=F6rg?=");
        assert_eq!(base_subject(it.subject()), ("jörg".to_string(), true));
    }

    proptest::proptest! {
        #[test]
        fn base_subject_never_panics(subject in "\\PC{0,40}", tail in "(fwd)|\\[fwd:|Re:|ü|\\]|") {
            // Never panics on a char boundary, and only ever shortens.
            let whole = format!("{subject}{tail}");
            let (base, _) = base_subject(&whole);
            proptest::prop_assert!(base.len() <= whole.len());
        }

        /// Random headers from a small pool of IDs (so that loops,
        /// duplicates and missing parents are common): threading never
        /// panics, and every message is printed exactly once in a
        /// well-formed answer.
        #[test]
        fn threading_random_headers_never_panics(
            messages in proptest::collection::vec(
                ("(Re: |Fwd: |\\[l\\] |)(a|b|)( \\(fwd\\))?",
                 proptest::option::of(0u8..8),
                 proptest::collection::vec(0u8..8, 0..5),
                 proptest::option::of(0u8..8),
                 0i64..5),
                0..24)
        ) {
            let items: Vec<Item> = messages
                .iter()
                .enumerate()
                .map(|(i, (subject, id, refs, reply_to, sent))| {
                    let mut it = item(i as u32 + 1, subject, "", "", *sent);
                    let h = &mut it.record.headers;
                    if let Some(id) = id {
                        h.push(("MESSAGE-ID".into(), format!("<{id}@x>")));
                    }
                    if !refs.is_empty() {
                        let refs: Vec<String> = refs.iter().map(|r| format!("<{r}@x>")).collect();
                        h.push(("REFERENCES".into(), refs.join(" ")));
                    }
                    if let Some(r) = reply_to {
                        h.push(("IN-REPLY-TO".into(), format!("<{r}@x>")));
                    }
                    it
                })
                .collect();
            for forest in [by_references(&items), by_subject(&items)] {
                let out = printed(&forest, &items);
                let mut depth = 0i64;
                for c in out.chars() {
                    match c {
                        '(' => depth += 1,
                        ')' => depth -= 1,
                        _ => {}
                    }
                    proptest::prop_assert!(depth >= 0, "{}", out);
                }
                proptest::prop_assert_eq!(depth, 0);
                proptest::prop_assert!(!out.contains("()") && !out.contains("  "), "{}", out);
                let mut seen: Vec<u32> = out
                    .split(|c: char| !c.is_ascii_digit())
                    .filter(|n| !n.is_empty())
                    .filter_map(|n| n.parse().ok())
                    .collect();
                seen.sort_unstable();
                let all: Vec<u32> = (1..=items.len() as u32).collect();
                proptest::prop_assert_eq!(seen, all, "{}", out);
            }
        }
    }

    #[test]
    fn references_threads_with_missing_parents_and_loops() {
        let items = vec![
            item(1, "a", "<1@x>", "", 10),
            item(2, "Re: a", "<2@x>", "<1@x>", 20),
            // Its parent <lost@x> never arrived; the grandparent did.
            item(3, "Re: a", "<3@x>", "<1@x> <lost@x>", 30),
            item(4, "b", "<4@x>", "", 15),
            // A loop in References must not hang or lose messages.
            item(5, "c", "<5@x>", "<6@x> <5@x> <6@x>", 40),
            item(6, "Re: c", "<6@x>", "<5@x>", 50),
            // No Message-ID, and a duplicate of 4's.
            item(7, "d", "", "", 60),
            item(8, "e", "<4@x>", "", 70),
        ];
        let forest = by_references(&items);
        // 5 names 6 its parent, then 6 names 5: that would be a loop, so
        // 6 stays where it is, a root above 5.
        assert_eq!(printed(&forest, &items), "(1 (2)(3))(4)(6 5)(7)(8)");
        let forest = by_subject(&items);
        assert_eq!(printed(&forest, &items), "(1 (2)(3))(4)(5 6)(7)(8)");
    }

    #[test]
    fn in_reply_to_serves_when_there_are_no_references() {
        let mut items = vec![
            item(1, "q", "<1@x>", "", 10),
            item(2, "Re: q", "<2@x>", "", 20),
            item(3, "Re: q", "<3@x>", "<2@x>", 30),
        ];
        items[1]
            .record
            .headers
            .push(("IN-REPLY-TO".into(), "<1@x> <zz@x>".into()));
        // References win over In-Reply-To: only 3's is ignored.
        items[2]
            .record
            .headers
            .push(("IN-REPLY-TO".into(), "<1@x>".into()));
        assert_eq!(printed(&by_references(&items), &items), "(1 2 3)");
    }

    #[test]
    fn a_message_moves_to_the_parent_its_own_references_name() {
        // 2 says 3 is a child of 1; 3 itself names no parent, so (RFC
        // 5256 step 1C) it is a root after all, 2 still below it.
        let items = vec![
            item(1, "alpha", "<a@x>", "", 10),
            item(2, "Re: beta", "<x@x>", "<a@x> <b@x>", 20),
            item(3, "beta", "<b@x>", "", 30),
        ];
        assert_eq!(printed(&by_references(&items), &items), "(1)(3 2)");
        // And one that names another parent than an earlier message did.
        let items = vec![
            item(1, "alpha", "<a@x>", "", 10),
            item(2, "gamma", "<c@x>", "", 15),
            item(3, "Re: beta", "<x@x>", "<a@x> <b@x>", 20),
            item(4, "Re: beta", "<b@x>", "<c@x>", 30),
        ];
        assert_eq!(printed(&by_references(&items), &items), "(1)(2 4 3)");
    }

    #[test]
    fn subjects_are_gathered_after_the_roots_are_sorted() {
        // The placeholder <lost@x> has children 1 and 2; sorted, 2 (the
        // older) is its first child, so its thread subject is "other",
        // not "topic", and 3 stays a thread of its own.
        let items = vec![
            item(1, "Re: topic", "<1@x>", "<lost@x>", 50),
            item(2, "other", "<2@x>", "<lost@x>", 40),
            item(3, "topic", "<3@x>", "", 60),
        ];
        assert_eq!(printed(&by_references(&items), &items), "((2)(1))(3)");
        // Same subject, no references: a reply goes under the original;
        // two originals become siblings under a placeholder.
        let items = vec![
            item(1, "Re: lunch", "<1@x>", "", 20),
            item(2, "lunch", "<2@x>", "", 10),
            item(3, "lunch", "<3@x>", "", 30),
            item(4, "[x] supper", "<4@x>", "", 5),
            item(5, "Fwd: supper", "<5@x>", "", 6),
        ];
        assert_eq!(printed(&by_references(&items), &items), "(4 5)((2 1)(3))");
    }

    #[test]
    fn ordered_subject_has_no_grandchildren() {
        let items = vec![
            item(1, "b", "", "", 30),
            item(2, "Re: a", "", "", 20),
            item(3, "a", "", "", 10),
            item(4, "re: B", "", "", 40),
            item(5, "A (fwd)", "", "", 50),
            item(6, "c", "", "", 25),
            // Ties in date fall back to the sequence number.
            item(7, "Re: a", "", "", 20),
        ];
        assert_eq!(
            printed(&by_subject(&items), &items),
            "(3 (2)(7)(5))(6)(1 4)"
        );
        let mut out = String::new();
        by_subject(&items).print(&messages(&items).list, true, &mut out);
        assert_eq!(out, "(103 (102)(107)(105))(106)(101 104)");
    }

    #[test]
    fn a_hostile_references_chain_is_linear() {
        let refs: String = (0..100_000).map(|i| format!("<r{i}@x> ")).collect();
        let mut items = vec![item(1, "root", "<r0@x>", "", 1)];
        items.push(item(2, "Re: root", "<last@x>", &refs, 2));
        let start = std::time::Instant::now();
        let forest = by_references(&items);
        assert_eq!(printed(&forest, &items), "(1 2)");
        assert!(start.elapsed() < std::time::Duration::from_secs(2));
        // 100,000 messages in one chain print without recursion.
        let chain: Vec<Item> = (1..=100_000u32)
            .map(|i| {
                let refs = if i > 1 {
                    format!("<m{}@x>", i - 1)
                } else {
                    String::new()
                };
                item(i, "chain", &format!("<m{i}@x>"), &refs, i64::from(i))
            })
            .collect();
        let forest = by_references(&chain);
        let out = printed(&forest, &chain);
        assert!(out.starts_with("(1 2 3 ") && out.ends_with(" 100000)"));
    }

    #[test]
    fn hostile_re_parenting_stays_linear() {
        // Message 1 hangs m2…mK in one chain above itself; then each of
        // them arrives naming no parent, and every step 1C cut would walk
        // the whole rest of the chain: K²/2 visits without the budget.
        const K: u32 = 30_000;
        let refs: String = (2..=K).map(|i| format!("<m{i}@x> ")).collect();
        let mut items = vec![item(1, "s1", "<m1@x>", &refs, 1)];
        items.extend((2..=K).map(|i| item(i, &format!("s{i}"), &format!("<m{i}@x>"), "", 2)));
        let start = std::time::Instant::now();
        let forest = by_references(&items);
        let out = printed(&forest, &items);
        assert!(
            start.elapsed() < std::time::Duration::from_secs(5),
            "{:?}",
            start.elapsed()
        );
        let count = out
            .split(|c: char| !c.is_ascii_digit())
            .filter(|n| !n.is_empty())
            .count();
        assert_eq!(count, K as usize);
        // The budget moved the first ones as the RFC says.
        assert!(out.starts_with("(2)(3)"), "{}", &out[..40]);
    }

    #[test]
    fn an_unknown_charset_is_refused_not_a_syntax_error() {
        use postroom::proto::imap::command::{Body, parse};
        for line in [
            &b"a SORT (DATE) KOI8-R SUBJECT {3}\r\n\xe0\xe1\xe2\r\n"[..],
            b"a UID THREAD REFERENCES iso-8859-1 ALL\r\n",
        ] {
            let cmd = parse(line).map_err(|(_, e)| e.0);
            assert!(
                matches!(&cmd, Ok(c) if matches!(&c.body, Body::Refused(t) if t.starts_with("[BADCHARSET (UTF-8 US-ASCII)] "))),
                "{cmd:?}"
            );
        }
        assert!(matches!(
            parse(b"a SORT (DATE) utf-8 ALL\r\n").map(|c| c.body),
            Ok(Body::Sort { .. })
        ));
        // Still a syntax error: no search key at all.
        assert!(parse(b"a SORT (DATE) KOI8-R\r\n").is_err());
    }

    #[test]
    fn addresses_for_sorting() {
        assert_eq!(
            first_address("Ann Smith <Ann@X.test>, Bob <b@y.test>"),
            ("ann smith".into(), "ann".into(), "ann@x.test".into())
        );
        assert_eq!(
            first_address(" <c@z.test>"),
            ("".into(), "c".into(), "c@z.test".into())
        );
        assert_eq!(first_address(""), ("".into(), "".into(), "".into()));
    }

    #[test]
    fn sort_keys_come_from_the_decoded_header() {
        let it = raw_item(
            1,
            "From: =?utf-8?q?Z=C3=BCrich?= <Zed@X.test>, a@b.test\r\nTo: plain@y.test\r\nDate: Mon, 2 Nov 2026 10:00:00 +0200",
        );
        assert!(matches!(sort_value(&it, SortKey::From), SortValue::Text(t) if t == "ZED"));
        assert!(
            matches!(sort_value(&it, SortKey::DisplayFrom), SortValue::Text(t) if t == "ZüRICH")
        );
        assert!(
            matches!(sort_value(&it, SortKey::DisplayTo), SortValue::Text(t) if t == "PLAIN@Y.TEST")
        );
        let group = raw_item(
            3,
            "From: undisclosed: a@b.test;\r\nTo: \"Re: x\" <r@x.test>",
        );
        assert!(
            matches!(sort_value(&group, SortKey::From), SortValue::Text(t) if t == "UNDISCLOSED")
        );
        assert!(
            matches!(sort_value(&group, SortKey::DisplayFrom), SortValue::Text(t) if t == "UNDISCLOSED")
        );
        assert!(matches!(sort_value(&group, SortKey::To), SortValue::Text(t) if t == "R"));
        assert!(matches!(sort_value(&it, SortKey::Cc), SortValue::Text(t) if t.is_empty()));
        // 10:00 at +0200 is 08:00 UTC.
        assert!(matches!(
            sort_value(&it, SortKey::Date),
            SortValue::Number(1_793_606_400)
        ));
        // No Date (or one that does not parse): the internal date.
        let it = raw_item(2, "Date: yesterday-ish");
        assert!(matches!(
            sort_value(&it, SortKey::Date),
            SortValue::Number(7)
        ));
    }
}
