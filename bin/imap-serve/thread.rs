//! SORT and THREAD (RFC 5256, with RFC 5957's DISPLAYFROM and DISPLAYTO).
//!
//! Both start from the messages a search matches and read what they need
//! (subject, dates, addresses, Message-ID, References) from the folder
//! cache, so a second SORT of a big folder reads no message at all.
//!
//! THREAD=REFERENCES follows RFC 5256 §3 (Zawinski's algorithm) with one
//! change that keeps it linear: a message's container keeps the first
//! parent it is given and is never re-parented, so each link is one
//! union-find step, and a hostile References chain 100,000 long costs what
//! 100,000 messages do, never a walk per link. Everything that walks the
//! trees (pruning, sorting, printing) uses an explicit stack.

use std::cmp::Ordering;
use std::collections::HashMap;

use postroom::mailbox::cache::Record;
use postroom::net::NetError;

use crate::command::{SearchKey, SortKey};
use crate::session::{Done, Session};

/// What SORT and THREAD know of one matched message.
struct Item {
    seq: u32,
    uid: u32,
    record: Record,
}

impl Item {
    fn number(&self, uid: bool) -> u32 {
        if uid { self.uid } else { self.seq }
    }

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

/// The first address of a decoded address field (`Name <local@host>, …`).
fn first_address(value: &str) -> (String, String, String) {
    let (name, addr) = match (value.find('<'), value.find('>')) {
        (Some(open), Some(close)) if open < close => {
            (value[..open].trim(), value[open + 1..close].trim())
        }
        _ => ("", value.split(',').next().unwrap_or("").trim()),
    };
    let name = name.trim_matches('"').trim();
    // A group's name comes first ("team: Ann <a@x>"): it is no person's.
    let name = name.rsplit(':').next().unwrap_or(name).trim();
    let mailbox = addr.split('@').next().unwrap_or("");
    (
        name.to_lowercase(),
        mailbox.to_lowercase(),
        addr.to_lowercase(),
    )
}

/// RFC 5256 §2.1: the subject without "Re:", "Fwd:", "[list]" and
/// "(fwd)" dressing, lower-cased; and whether any such dressing said it is
/// a reply or a forward.
pub fn base_subject(subject: &str) -> (String, bool) {
    let mut s = subject.split_whitespace().collect::<Vec<_>>().join(" ");
    let mut reply = false;
    loop {
        let before = s.len();
        // (2) trailers: "(fwd)" and blanks.
        loop {
            let trimmed = s.trim_end().len();
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
            s = s[5..s.len() - 1].trim().to_string();
            reply = true;
        }
        if s.len() == before {
            break;
        }
    }
    (s.to_lowercase(), reply)
}

/// `[blob]` and the blanks after it at the start of `s`, removed.
fn strip_blob(s: &str) -> Option<&str> {
    let rest = s.strip_prefix('[')?;
    let close = rest.find(['[', ']'])?;
    if rest.as_bytes()[close] != b']' {
        return None;
    }
    Some(rest[close + 1..].trim_start())
}

/// `*blob ("re" / "fw" / "fwd") *WSP [blob] ":"` at the start of `s`.
fn strip_leader(s: &str) -> Option<String> {
    let mut rest = s.trim_start();
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
    let mut after = rest[skip..].trim_start();
    if let Some(r) = strip_blob(after) {
        after = r;
    }
    after.strip_prefix(':').map(|r| r.trim_start().to_string())
}

/// The matched messages with their cache records (read and cached now for
/// those that have none), in sequence order.
fn items(session: &mut Session, key: &SearchKey) -> Result<Vec<Item>, Done> {
    let Some(sel) = session.selected.as_mut() else {
        return Err(Done::Bad("select a mailbox first".into()));
    };
    let positions = crate::search::matching(sel, key);
    let records = crate::summary::records(sel, &positions);
    Ok(positions
        .iter()
        .zip(records)
        .filter_map(|(&i, record)| {
            Some(Item {
                seq: i as u32 + 1,
                uid: sel.view[i].uid,
                record: record?,
            })
        })
        .collect())
}

pub async fn sort(
    session: &mut Session,
    uid: bool,
    criteria: &[(bool, SortKey)],
    key: &SearchKey,
) -> Result<Done, NetError> {
    let items = match items(session, key) {
        Ok(items) => items,
        Err(done) => return Ok(done),
    };
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
    let mut line = String::from("* SORT");
    for i in order {
        line.push(' ');
        line.push_str(&items[i].number(uid).to_string());
    }
    line.push_str("\r\n");
    session.out(line.as_bytes()).await?;
    Ok(Done::Ok("SORT completed".into()))
}

#[derive(PartialEq, Eq, PartialOrd, Ord)]
enum SortValue {
    Number(i64),
    Text(String),
}

fn sort_value(item: &Item, key: SortKey) -> SortValue {
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

pub async fn thread(
    session: &mut Session,
    uid: bool,
    references: bool,
    key: &SearchKey,
) -> Result<Done, NetError> {
    let items = match items(session, key) {
        Ok(items) => items,
        Err(done) => return Ok(done),
    };
    let forest = if references {
        by_references(&items)
    } else {
        by_subject(&items)
    };
    let mut line = String::from("* THREAD ");
    forest.print(&items, uid, &mut line);
    line.push_str("\r\n");
    session.out(line.as_bytes()).await?;
    Ok(Done::Ok("THREAD completed".into()))
}

/// Containers: a message (an index into the items) or a placeholder.
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
    fn date(&self, items: &[Item], n: usize) -> (i64, u32) {
        let mut n = n;
        loop {
            if let Some(m) = self.message[n] {
                return (items[m].sent(), items[m].seq);
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
    fn sort(&mut self, items: &[Item]) {
        for n in self.post_order() {
            let mut kids = std::mem::take(&mut self.children[n]);
            kids.sort_by_key(|&c| self.date(items, c));
            self.children[n] = kids;
        }
        let mut roots = std::mem::take(&mut self.roots);
        roots.sort_by_key(|&r| self.date(items, r));
        self.roots = roots;
    }

    /// `(3 6 (4 23)(44 7 96))`: a chain of single children in one list,
    /// several children each in parentheses.
    fn print(&self, items: &[Item], uid: bool, out: &mut String) {
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
                        out.push_str(&items[m].number(uid).to_string());
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
fn by_subject(items: &[Item]) -> Forest {
    let mut forest = Forest::default();
    let mut order: Vec<usize> = (0..items.len()).collect();
    let bases: Vec<String> = items.iter().map(|i| base_subject(i.subject()).0).collect();
    order.sort_by(|&a, &b| {
        bases[a]
            .cmp(&bases[b])
            .then(items[a].sent().cmp(&items[b].sent()))
            .then(items[a].seq.cmp(&items[b].seq))
    });
    let mut head: Option<(usize, &str)> = None;
    for m in order {
        let n = forest.add(Some(m));
        match head {
            Some((h, base)) if base == bases[m] => {
                forest.parent[n] = Some(h);
                forest.children[h].push(n);
            }
            _ => {
                forest.roots.push(n);
                head = Some((n, &bases[m]));
            }
        }
    }
    forest.sort(items);
    forest
}

/// Message-IDs in a References or In-Reply-To value.
fn ids(value: &str) -> Vec<String> {
    value
        .split(|c: char| c.is_whitespace() || c == ',')
        .map(|id| id.trim_start_matches('<').trim_end_matches('>'))
        .filter(|id| !id.is_empty())
        .map(str::to_string)
        .collect()
}

/// REFERENCES: RFC 5256 §3 (see the module doc for the one change).
fn by_references(items: &[Item]) -> Forest {
    let mut forest = Forest::default();
    let mut by_id: HashMap<String, usize> = HashMap::new();
    // Union-find over trees: `top[n]` leads to the root of n's tree.
    let mut top: Vec<usize> = Vec::new();
    fn root(top: &mut [usize], mut n: usize) -> usize {
        while top[n] != n {
            top[n] = top[top[n]];
            n = top[n];
        }
        n
    }
    fn node(
        forest: &mut Forest,
        top: &mut Vec<usize>,
        by_id: &mut HashMap<String, usize>,
        id: &str,
    ) -> usize {
        if let Some(&n) = by_id.get(id) {
            return n;
        }
        let n = forest.add(None);
        top.push(n);
        by_id.insert(id.to_string(), n);
        n
    }
    let link = |forest: &mut Forest, top: &mut Vec<usize>, parent: usize, child: usize| {
        // Only a root is given a parent, and never one inside its own tree.
        if parent != child && forest.parent[child].is_none() && root(top, parent) != child {
            forest.parent[child] = Some(parent);
            forest.children[parent].push(child);
            top[child] = root(top, parent);
        }
    };
    for (m, item) in items.iter().enumerate() {
        let own = item
            .record
            .header("MESSAGE-ID")
            .next()
            .map(ids)
            .and_then(|v| v.into_iter().next());
        // No Message-ID, or one seen on another message: a unique one.
        let own = match own {
            Some(id) if by_id.get(&id).is_none_or(|&n| forest.message[n].is_none()) => id,
            _ => format!("\0{m}"),
        };
        let c = node(&mut forest, &mut top, &mut by_id, &own);
        forest.message[c] = Some(m);
        let mut refs = item
            .record
            .header("REFERENCES")
            .flat_map(ids)
            .collect::<Vec<_>>();
        if refs.is_empty() {
            refs = item
                .record
                .header("IN-REPLY-TO")
                .flat_map(ids)
                .take(1)
                .collect();
        }
        let mut previous: Option<usize> = None;
        for id in &refs {
            let n = node(&mut forest, &mut top, &mut by_id, id);
            if let Some(p) = previous {
                link(&mut forest, &mut top, p, n);
            }
            previous = Some(n);
        }
        if let Some(p) = previous {
            link(&mut forest, &mut top, p, c);
        }
    }
    forest.roots = (0..forest.message.len())
        .filter(|&n| forest.parent[n].is_none())
        .collect();
    prune(&mut forest);
    group_by_subject(&mut forest, items);
    forest.sort(items);
    forest
}

/// Step 4: empty containers go; their children move up, except that the
/// children of an empty root stay under it when there are several.
fn prune(forest: &mut Forest) {
    let order = forest.post_order();
    let mut replacement: Vec<Vec<usize>> = vec![Vec::new(); forest.message.len()];
    for n in order {
        let kids: Vec<usize> = std::mem::take(&mut forest.children[n])
            .into_iter()
            .flat_map(|c| std::mem::take(&mut replacement[c]))
            .collect();
        let at_root = forest.parent[n].is_none();
        replacement[n] = if forest.message[n].is_some() || (at_root && kids.len() > 1) {
            for &k in &kids {
                forest.parent[k] = Some(n);
            }
            forest.children[n] = kids;
            vec![n]
        } else {
            kids
        };
    }
    let roots = std::mem::take(&mut forest.roots);
    forest.roots = roots
        .into_iter()
        .flat_map(|r| std::mem::take(&mut replacement[r]))
        .collect();
    for &r in &forest.roots {
        forest.parent[r] = None;
    }
}

/// Step 5: roots with the same base subject become one thread.
fn group_by_subject(forest: &mut Forest, items: &[Item]) {
    let subject_of = |forest: &Forest, n: usize| -> Option<(String, bool)> {
        let m = forest.message[n]
            .or_else(|| forest.children[n].iter().find_map(|&c| forest.message[c]))?;
        let (base, reply) = base_subject(items[m].subject());
        (!base.is_empty()).then_some((base, reply && forest.message[n].is_some()))
    };
    let mut table: HashMap<String, usize> = HashMap::new();
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

    fn printed(forest: &Forest, items: &[Item]) -> String {
        let mut out = String::new();
        forest.print(items, false, &mut out);
        out
    }

    #[test]
    fn base_subjects_lose_their_dressing() {
        for (subject, base, reply) in [
            ("Re: [list] Fwd: subj (fwd)", "subj", true),
            ("  RE:  re: Hello   World ", "hello world", true),
            ("[blob] only", "only", false),
            ("[blob]", "[blob]", false),
            ("[fwd: inner thing]", "inner thing", true),
            ("Re[2]: counted", "counted", true),
            ("Grüße", "grüße", false),
            // Lower-casing may lengthen: Ⱥ is two bytes, ⱥ three.
            ("Ⱥ (fwd)", "ⱥ", true),
            ("", "", false),
            ("Fw:Fwd: re:x", "x", true),
            ("Rethinking: not a reply", "rethinking: not a reply", false),
        ] {
            assert_eq!(
                base_subject(subject),
                (base.to_string(), reply),
                "{subject}"
            );
        }
    }

    proptest::proptest! {
        #[test]
        fn base_subject_never_panics(subject in "\\PC{0,40}", tail in "(fwd)|\\[fwd:|Re:|ü|\\]|") {
            // Never panics on a char boundary; only ever shortens (up to
            // what lower-casing adds: Ⱥ is two bytes, ⱥ three).
            let whole = format!("{subject}{tail}");
            let (base, _) = base_subject(&whole);
            proptest::prop_assert!(base.chars().count() <= 2 * whole.chars().count());
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
        // 5 says 6 is its parent and 6 says 5 is: the first word stands.
        assert_eq!(printed(&forest, &items), "(1 (2)(3))(4)(6 5)(7)(8)");
        let forest = by_subject(&items);
        assert_eq!(printed(&forest, &items), "(1 (2)(3))(4)(5 6)(7)(8)");
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
}
