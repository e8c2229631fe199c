//! Commands on folders as a whole: SELECT/EXAMINE, CREATE, DELETE, RENAME,
//! SUBSCRIBE, LIST/LSUB (RFC 5258 LIST-EXTENDED, RFC 5819 LIST-STATUS,
//! RFC 6154 SPECIAL-USE), STATUS, APPEND (UIDPLUS), GETQUOTA(ROOT).

use std::collections::BTreeSet;

use postroom::net::NetError;
use postroom::proto::imap::command::{
    Appended, Bound, ListOptions, Qresync, SequenceSet, StatusItem,
};
use postroom::proto::imap::response::{all_flags, astring};
use postroom::store::mailbox::acl::{self as folder_acl, Rights};
use postroom::store::mailbox::shared::{Selection, Synced};
use postroom::store::mailbox::{Appending, MailboxName, flags};

use crate::acl::overlay;
use crate::message::flags_from_names;
use crate::session::{Done, Selected, Session};

macro_rules! mailbox_or_bad {
    ($session:expr) => {
        match $session.mailbox() {
            Ok(m) => m,
            Err(done) => return Ok(done),
        }
    };
}

impl Session {
    /// Mailbox names in UTF-8, not modified UTF-7: IMAP4rev2 (RFC 9051
    /// §5.1) or UTF8=ACCEPT (RFC 6855 §3) enabled.
    fn utf8_names(&self) -> bool {
        self.rev2 || self.utf8
    }

    /// A client's mailbox name, checked.
    pub fn name(&self, wire: &str) -> Result<MailboxName, Done> {
        MailboxName::from_wire(wire, self.utf8_names())
            .map_err(|e| Done::No(format!("[CANNOT] {e}")))
    }

    pub fn wire_name(&self, name: &MailboxName) -> Vec<u8> {
        let mut out = Vec::new();
        astring(&mut out, &name.wire(self.utf8_names()));
        out
    }

    pub async fn select(
        &mut self,
        wire: &str,
        read_only: bool,
        qresync: Option<&Qresync>,
    ) -> Result<Done, NetError> {
        if self.selected.take().is_some() && (self.rev2 || self.qresync) {
            self.out(b"* OK [CLOSED] previous mailbox closed\r\n")
                .await?;
        }
        let name = match self.name(wire) {
            Ok(n) => n,
            Err(done) => return Ok(done),
        };
        let target = match self.target_of(&name) {
            Ok(t) => t,
            Err(done) => return Ok(done),
        };
        if let Err(done) = target.need(Rights::LOOKUP.with(Rights::READ)) {
            return Ok(done);
        }
        // Nothing to change without s, w, t or e: read-only, as RFC 4314
        // §4 allows.
        let read_only = read_only
            || !target.rights.any(
                Rights::SEEN
                    .with(Rights::WRITE)
                    .with(Rights::DELETE_MESSAGES)
                    .with(Rights::EXPUNGE),
            );
        let folder = target.folder();
        // The state other sessions of this process share: an unchanged
        // folder is not read again, however big.
        let shared = self.shared.folders.open(folder.clone());
        let (mut state, indexed) = match shared.select() {
            Ok(Selection::Synced(s)) => (s, None),
            Ok(Selection::Indexed(indexed)) => {
                let h = indexed.header();
                let state = Synced {
                    validity: h.validity,
                    next_uid: h.next_uid,
                    first_recent: folder.first_recent(),
                    entries: Default::default(),
                    keywords: indexed.keywords().clone(),
                };
                (state, Some(indexed))
            }
            Err(e) => return Ok(e.into()),
        };
        let seen = self.seen_for(&target, state.validity);
        let private = seen.as_ref().map(|s| s.uids());
        // From the index's header alone (reading a 100,000-message
        // folder's records was nearly all of a 15 ms SELECT), unless the
        // answer needs the messages: a \Seen of the user's own, \Recent
        // to count (IMAP4rev1, messages no session has seen), QRESYNC, or
        // a mod-sequence log that moved since the index was written.
        let (unread, indexed_highest) = match indexed {
            Some(indexed) => match shared.unread_highest_modseq(&indexed) {
                Some(highest)
                    if private.is_none()
                        && qresync.is_none()
                        && (self.rev2 || state.first_recent >= state.next_uid) =>
                {
                    (Some(indexed), Some(highest))
                }
                _ => {
                    state.entries = match shared.entries(&indexed) {
                        Ok(e) => e,
                        Err(e) => return Ok(e.into()),
                    };
                    (None, None)
                }
            },
            None => (None, None),
        };
        let mut out = Vec::with_capacity(512);
        let flags_line = all_flags(&state.keywords);
        out.extend_from_slice(format!("* FLAGS {flags_line}\r\n").as_bytes());
        let permanent = if read_only {
            "()".to_string()
        } else {
            crate::acl::permanent_flags(&state.keywords, target.rights)
        };
        out.extend_from_slice(format!("* OK [PERMANENTFLAGS {permanent}] flags\r\n").as_bytes());
        let exists = unread
            .as_ref()
            .map_or(state.entries.len(), |i| i.header().count as usize);
        out.extend_from_slice(format!("* {exists} EXISTS\r\n").as_bytes());
        if self.rev2 {
            // RFC 9051 §6.3.2: the name as the server has it (its case,
            // its encoding), which the client uses from then on.
            out.extend_from_slice(b"* LIST () \".\" ");
            out.extend_from_slice(&self.wire_name(&name));
            out.extend_from_slice(b"\r\n");
        }
        let mut recent = Vec::new();
        crate::view::take_recent(
            &folder,
            read_only,
            state.first_recent,
            state.next_uid,
            &mut recent,
        );
        if !self.rev2 {
            // From the index: nothing at or past the first \Recent UID,
            // which is past every message (checked above).
            let n = state
                .entries
                .iter()
                .filter(|e| recent.iter().any(|&(a, b)| (a..b).contains(&e.uid)))
                .count();
            out.extend_from_slice(format!("* {n} RECENT\r\n").as_bytes());
            let first_unseen = match &unread {
                Some(indexed) => indexed.header().first_unseen.map(|i| i as usize),
                None => state
                    .entries
                    .iter()
                    .position(|e| !overlay(e.flags(), e.uid, private).has(flags::SEEN)),
            };
            if let Some(first) = first_unseen {
                out.extend_from_slice(
                    format!("* OK [UNSEEN {}] first unseen\r\n", first + 1).as_bytes(),
                );
            }
        }
        out.extend_from_slice(
            format!("* OK [UIDVALIDITY {}] UIDs valid\r\n", state.validity).as_bytes(),
        );
        out.extend_from_slice(
            format!("* OK [UIDNEXT {}] predicted next UID\r\n", state.next_uid).as_bytes(),
        );
        let validity = state.validity;
        let mut sel = Selected {
            name,
            cache: postroom::store::mailbox::cache::Cache::new(folder.path(), validity),
            folder,
            shared,
            read_only,
            rights: target.rights,
            seen,
            synced: std::sync::Arc::downgrade(&state.entries),
            view: state.entries,
            unread,
            keywords: state.keywords,
            validity,
            next_uid: state.next_uid,
            force: false,
            held_back: false,
            recent,
            report_recent: !self.rev2,
            contexts: Vec::new(),
            contexts_of: None,
        };
        // RFC 7162 §3.1.2.1: every SELECT of a folder with persistent
        // mod-sequences reports the highest. A folder the index gave,
        // unchanged since, has nothing new for the log: the index knows.
        let highest = match indexed_highest.or_else(|| sel.shared.indexed_highest_modseq(&sel.view))
        {
            Some(highest) if qresync.is_none() => highest,
            _ => {
                sel.update_modseqs();
                sel.highest_modseq()
            }
        };
        out.extend_from_slice(format!("* OK [HIGHESTMODSEQ {highest}] highest\r\n").as_bytes());
        if let Some(q) = qresync.filter(|q| q.validity == validity) {
            resync(&mut out, &sel, q);
        }
        self.out(&out).await?;
        self.selected = Some(sel);
        let mode = if read_only { "READ-ONLY" } else { "READ-WRITE" };
        Ok(Done::Ok(format!(
            "[{mode}] {} completed",
            if read_only { "EXAMINE" } else { "SELECT" }
        )))
    }

    pub fn create(&mut self, wire: &str, uses: &[String]) -> Done {
        // A trailing delimiter only says the name will have children.
        let wire = wire.strip_suffix('.').unwrap_or(wire);
        let name = match self.name(wire) {
            Ok(n) => n,
            Err(done) => return done,
        };
        if name.is_inbox() {
            return Done::No("[ALREADYEXISTS] INBOX always exists".into());
        }
        let target = match self.target_of(&name) {
            Ok(t) => t,
            Err(done) => return done,
        };
        if !target.is_personal() {
            return self.create_in_other_tree(&name, &target);
        }
        let mailbox = target.mailbox;
        let created = match uses {
            [] => mailbox.create(&name).map(Some),
            [special] => mailbox.create_special(&name, special),
            _ => {
                return Done::No("[USEATTR] one special use per mailbox here".into());
            }
        };
        match created {
            Ok(Some(())) => Done::Ok("CREATE completed".into()),
            Ok(None) => Done::No(format!(
                "[USEATTR] {} is not a special use this server gives (one of {})",
                uses.join(" "),
                postroom::store::mailbox::SPECIAL_USES.join(" ")
            )),
            Err(e) => e.into(),
        }
    }

    /// CREATE of a child in a folder of another tree: `k` on the parent
    /// (RFC 4314 §4); the child starts with the parent's ACL, as in
    /// Dovecot, so whoever could see the parent sees it.
    fn create_in_other_tree(&mut self, name: &MailboxName, target: &crate::acl::Target) -> Done {
        let Some(parent) = name.parents().last().and_then(|p| MailboxName::new(p).ok()) else {
            return Done::No("[NOPERM] folders of this namespace are made by their owner".into());
        };
        let parent = match self.target_of(&parent) {
            Ok(p) if p.space == target.space && p.folder().exists() => p,
            Ok(_) => {
                return Done::No(
                    "[NOPERM] folders of this namespace are made by their owner".into(),
                );
            }
            Err(done) => return done,
        };
        if let Err(done) = parent.need(Rights::CREATE) {
            return done;
        }
        if let Err(e) = target.mailbox.create(&target.name) {
            return e.into();
        }
        let inherited = match folder_acl::read(parent.folder().path()) {
            Ok(acl) => acl.unwrap_or_default(),
            Err(e) => return e.into(),
        };
        let ids: Vec<_> = inherited.grants.iter().map(|g| g.id.clone()).collect();
        if !ids.is_empty()
            && let Err(done) = self.change_acl_of(target, &ids, move |acl| *acl = inherited)
        {
            return done;
        }
        Done::Ok("CREATE completed".into())
    }

    pub fn delete(&mut self, wire: &str) -> Done {
        let name = match self.name(wire) {
            Ok(n) => n,
            Err(done) => return done,
        };
        if self.selected.as_ref().is_some_and(|s| s.name == name) {
            return Done::No("[INUSE] close the mailbox before deleting it".into());
        }
        let target = match self.target_of(&name) {
            Ok(t) => t,
            Err(done) => return done,
        };
        if let Err(done) = target.need(Rights::DELETE_MAILBOX) {
            return done;
        }
        match target.mailbox.delete(&target.name) {
            Ok(()) => Done::Ok("DELETE completed".into()),
            Err(e) => e.into(),
        }
    }

    pub fn rename(&mut self, from: &str, to: &str) -> Done {
        let mailbox = match self.mailbox() {
            Ok(m) => m,
            Err(done) => return done,
        };
        let (from, to) = match (self.name(from), self.name(to)) {
            (Ok(a), Ok(b)) => (a, b),
            (Err(d), _) | (_, Err(d)) => return d,
        };
        if to.is_inbox() {
            return Done::No("[ALREADYEXISTS] INBOX always exists".into());
        }
        let personal = |n: &MailboxName| self.target_of(n).is_ok_and(|t| t.is_personal());
        if !personal(&from) || !personal(&to) {
            return Done::No(
                "[NOPERM] shared and public folders are renamed by their owner (or the admin)"
                    .into(),
            );
        }
        if to.as_str().starts_with(&format!("{from}.")) {
            return Done::No("[CANNOT] a mailbox cannot move into itself".into());
        }
        // The folders that move (the children go along), for the
        // sharing index.
        let mut moved = Vec::new();
        if !from.is_inbox() {
            let prefix = format!("{from}.");
            for name in mailbox.list().unwrap_or_default() {
                let new = if name == from {
                    Some(to.clone())
                } else {
                    name.as_str()
                        .strip_prefix(&prefix)
                        .and_then(|rest| MailboxName::new(&format!("{to}.{rest}")).ok())
                };
                if let Some(new) = new {
                    moved.push((name, new));
                }
            }
        }
        match mailbox.rename(&from, &to) {
            Ok(()) => {
                self.reindex_renamed(&moved);
                Done::Ok("RENAME completed".into())
            }
            Err(e) => e.into(),
        }
    }

    pub fn subscribe(&mut self, wire: &str, on: bool) -> Done {
        let mailbox = match self.mailbox() {
            Ok(m) => m,
            Err(done) => return done,
        };
        let name = match self.name(wire) {
            Ok(n) => n,
            Err(done) => return done,
        };
        if on
            && !self
                .target_of(&name)
                .is_ok_and(|t| t.rights.has(Rights::LOOKUP) && t.folder().exists())
        {
            return Done::No("[NONEXISTENT] no such mailbox".into());
        }
        match mailbox.subscribe(&[name], on) {
            Ok(()) => Done::Ok("completed".into()),
            Err(e) => e.into(),
        }
    }

    pub async fn list(
        &mut self,
        reference: &str,
        patterns: &[String],
        options: &ListOptions,
        lsub: bool,
    ) -> Result<Done, NetError> {
        let mailbox = mailbox_or_bad!(self);
        let what = if lsub { "LSUB" } else { "LIST" };
        if patterns.len() == 1 && patterns[0].is_empty() {
            self.out(format!("* {what} (\\Noselect) \".\" \"\"\r\n").as_bytes())
                .await?;
            return Ok(Done::Ok(format!("{what} completed")));
        }
        let mut existing = match mailbox.list() {
            Ok(l) => l,
            Err(e) => return Ok(e.into()),
        };
        // Folders of other trees the user may see, under their namespaces.
        let others: std::collections::BTreeMap<MailboxName, Rights> =
            self.other_folders().into_iter().collect();
        existing.extend(others.keys().cloned());
        existing.sort();
        let subscribed: BTreeSet<MailboxName> = match mailbox.subscriptions() {
            Ok(s) => s.into_iter().collect(),
            Err(e) => return Ok(e.into()),
        };
        let exists: BTreeSet<&MailboxName> = existing.iter().collect();
        // Every name that exists, is subscribed, or is a parent of one.
        let mut names: BTreeSet<MailboxName> = existing.iter().cloned().collect();
        for name in existing.iter().chain(subscribed.iter()) {
            names.insert(name.clone());
            for parent in name.parents() {
                if let Ok(p) = MailboxName::new(&parent) {
                    names.insert(p);
                }
            }
        }
        let only_subscribed = lsub || options.subscribed;
        let patterns: Vec<Vec<char>> = patterns
            .iter()
            .map(|p| {
                let full = format!("{reference}{p}");
                let decoded = MailboxName::from_wire(&full, self.utf8_names())
                    .map(|n| n.to_string())
                    .unwrap_or(full);
                decoded.chars().collect()
            })
            .collect();
        let mut out = Vec::new();
        for name in &names {
            let chars: Vec<char> = name.as_str().chars().collect();
            if !patterns.iter().any(|p| wildcard(p, &chars)) {
                continue;
            }
            let is_subscribed = subscribed.contains(name);
            let prefix = format!("{name}.");
            // Children that exist (RFC 5258 §4: a subscription to a name
            // that does not exist makes no child).
            let has_children = existing.iter().any(|n| n.as_str().starts_with(&prefix));
            let subscribed_child = subscribed.iter().any(|n| n.as_str().starts_with(&prefix));
            let special = mailbox.special_use(name);
            if options.special_use_only && special.is_none() {
                continue;
            }
            let present = exists.contains(name);
            if only_subscribed && !is_subscribed {
                // RECURSIVEMATCH lists a parent for its subscribed
                // descendants; LSUB shows it as \Noselect.
                if !(subscribed_child && (options.recursive_match || lsub)) {
                    continue;
                }
            } else if !only_subscribed && !present && !has_children {
                // Only subscribed: not a mailbox, nor a parent of one.
                continue;
            }
            // RFC 5258 §3.5: with RECURSIVEMATCH, every name returned that
            // has a descendant matching the selection says so.
            let child_info = options.recursive_match && subscribed_child;
            let mut attrs: Vec<&str> = Vec::new();
            if lsub {
                if !present || !is_subscribed {
                    attrs.push("\\Noselect");
                }
            } else {
                if is_subscribed && (options.subscribed || options.return_subscribed) {
                    attrs.push("\\Subscribed");
                }
                if !present {
                    attrs.push(if options.subscribed || options.recursive_match {
                        "\\NonExistent"
                    } else {
                        "\\Noselect"
                    });
                }
                if has_children {
                    attrs.push("\\HasChildren");
                } else if present {
                    attrs.push("\\HasNoChildren");
                }
                if let Some(special) = special {
                    attrs.push(special);
                }
            }
            out.extend_from_slice(format!("* {what} ({}) \".\" ", attrs.join(" ")).as_bytes());
            out.extend_from_slice(&self.wire_name(name));
            if child_info {
                out.extend_from_slice(b" (\"CHILDINFO\" (\"SUBSCRIBED\"))");
            }
            out.extend_from_slice(b"\r\n");
            if options.return_myrights && present && !lsub {
                let rights = others.get(name).copied().unwrap_or(Rights::ALL);
                out.extend_from_slice(&self.myrights_line(name, rights));
            }
            // RFC 5819 §2: each STATUS right after its LIST.
            if present
                && !lsub
                && !options.status.is_empty()
                && let Ok(target) = self.target_of(name)
                && target.rights.has(Rights::READ)
                && let Some(line) = self.status_line(name, &target, &options.status)
            {
                out.extend_from_slice(line.as_bytes());
            }
            if out.len() > 64 * 1024 {
                self.out(&out).await?;
                out.clear();
            }
        }
        self.out(&out).await?;
        Ok(Done::Ok(format!("{what} completed")))
    }

    /// `* STATUS name (...)`, or None if the folder cannot be read.
    pub fn status_line(
        &self,
        name: &MailboxName,
        target: &crate::acl::Target,
        items: &[StatusItem],
    ) -> Option<String> {
        // The process's shared state of the folder (held by a session
        // that has it selected or a NOTIFY that watches it): an unchanged
        // folder is not read again.
        let shared = self.shared.folders.held(target.folder());
        let state = shared.sync(false).ok()?;
        // The reader's own \Seen in a folder of another tree.
        let seen = self.seen_for(target, state.validity);
        let private = seen.as_ref().map(|s| s.uids());
        let mut parts = Vec::new();
        for item in items {
            parts.push(match item {
                StatusItem::Messages => format!("MESSAGES {}", state.entries.len()),
                // Not yet taken by any session (none here: STATUS takes
                // none, RFC 3501 §6.3.10).
                StatusItem::Recent => format!(
                    "RECENT {}",
                    state
                        .entries
                        .iter()
                        .filter(|e| e.uid >= state.first_recent)
                        .count()
                ),
                StatusItem::UidNext => format!("UIDNEXT {}", state.next_uid),
                StatusItem::UidValidity => format!("UIDVALIDITY {}", state.validity),
                StatusItem::Unseen => format!(
                    "UNSEEN {}",
                    state
                        .entries
                        .iter()
                        .filter(|e| !overlay(e.flags(), e.uid, private).has(flags::SEEN))
                        .count()
                ),
                StatusItem::Deleted => format!(
                    "DELETED {}",
                    state
                        .entries
                        .iter()
                        .filter(|e| e.flags().has(flags::DELETED))
                        .count()
                ),
                StatusItem::HighestModSeq => format!(
                    "HIGHESTMODSEQ {}",
                    shared.highest_modseq(state.validity, &state.entries)
                ),
                StatusItem::Size => format!(
                    "SIZE {}",
                    folder_size(&target.folder(), state.validity, &state.entries)
                ),
            });
        }
        Some(format!(
            "* STATUS {} ({})\r\n",
            String::from_utf8_lossy(&self.wire_name(name)),
            parts.join(" ")
        ))
    }

    pub async fn status(&mut self, wire: &str, items: &[StatusItem]) -> Result<Done, NetError> {
        let name = match self.name(wire) {
            Ok(n) => n,
            Err(done) => return Ok(done),
        };
        let target = match self.target_of(&name) {
            Ok(t) => t,
            Err(done) => return Ok(done),
        };
        if let Err(done) = target.need(Rights::LOOKUP.with(Rights::READ)) {
            return Ok(done);
        }
        if !target.folder().exists() {
            return Ok(Done::No("[NONEXISTENT] no such mailbox".into()));
        }
        match self.status_line(&name, &target, items) {
            Some(line) => {
                self.out(line.as_bytes()).await?;
                Ok(Done::Ok("STATUS completed".into()))
            }
            None => Ok(Done::No(
                "[SERVERUNAVAILABLE] cannot read the mailbox".into(),
            )),
        }
    }

    /// APPEND, and MULTIAPPEND (RFC 3502): all the messages or none.
    pub fn append(&mut self, wire: &str, messages: &[Appended]) -> Done {
        let target = match self.target(wire) {
            Ok(t) => t,
            Err(done) => return done,
        };
        if let Err(done) = target.need(Rights::INSERT) {
            return done;
        }
        let folder = target.folder();
        if !folder.exists() {
            return Done::No("[TRYCREATE] no such mailbox".into());
        }
        // CATENATE's messages are put together first: a bad URL fails the
        // whole command before anything is stored.
        let mut made = Vec::with_capacity(messages.len());
        let mut synced = crate::catenate::Synced::new();
        for m in messages {
            made.push(if m.catenate.is_empty() {
                None
            } else {
                match self.catenate(&m.catenate, &mut synced) {
                    Ok(one) => Some(one),
                    Err(done) => return done,
                }
            });
        }
        let bodies: Vec<(&[u8], bool)> = messages
            .iter()
            .zip(&made)
            .map(|(m, made)| match made {
                Some((text, binary)) => (&text[..], *binary),
                None => (&m.message[..], m.binary),
            })
            .collect();
        if bodies.iter().any(|(text, _)| text.is_empty()) {
            return Done::No("empty message".into());
        }
        let mut flags = Vec::with_capacity(messages.len());
        let mut seen = Vec::with_capacity(messages.len());
        for m in messages {
            // Flags the user may not set are left off (RFC 4314 §4).
            let names: Vec<String> = m
                .flags
                .iter()
                .filter(|n| {
                    target
                        .rights
                        .has(crate::acl::rights_for_flags(&[(*n).clone()]))
                })
                .cloned()
                .collect();
            match flags_from_names(&folder, &names) {
                Ok((mut f, _)) => {
                    seen.push(f.has(flags::SEEN));
                    if !target.is_personal() {
                        // The reader's own \Seen goes to their file below.
                        f.system &= !flags::SEEN;
                    }
                    flags.push(f)
                }
                Err(done) => return done,
            }
        }
        let quota = target.quota;
        let batch: Vec<Appending<'_>> = messages
            .iter()
            .zip(bodies)
            .zip(flags)
            .map(|((m, (message, as_given)), flags)| Appending {
                message,
                as_given,
                flags,
                internal_date: m.date,
            })
            .collect();
        // All or none (Folder::append takes back what it stored).
        match folder.append(&batch, quota) {
            Ok((validity, uids)) => {
                let seen_uids: Vec<u32> = uids
                    .iter()
                    .zip(&seen)
                    .filter(|(_, s)| **s)
                    .map(|(u, _)| *u)
                    .collect();
                if !seen_uids.is_empty()
                    && let Some(private) = self.seen_for(&target, validity)
                    && let Err(e) = private.set(&seen_uids, true)
                {
                    tracing::warn!("private \\Seen of {wire}: {e}");
                }
                Done::Ok(format!(
                    "[APPENDUID {validity} {}] APPEND completed",
                    SequenceSet::of_sorted(&uids)
                ))
            }
            Err(e) => e.into(),
        }
    }

    pub async fn quota(&mut self, mailbox_name: Option<&str>) -> Result<Done, NetError> {
        let mailbox = mailbox_or_bad!(self);
        let quota = self.login.as_ref().and_then(|l| l.quota);
        let mut out = Vec::new();
        if let Some(wire) = mailbox_name {
            let name = match self.name(wire) {
                Ok(n) => n,
                Err(done) => return Ok(done),
            };
            let target = match self.target_of(&name) {
                Ok(t) => t,
                Err(done) => return Ok(done),
            };
            if let Err(done) = target.need(Rights::LOOKUP) {
                return Ok(done);
            }
            if !target.folder().exists() {
                return Ok(Done::No("[NONEXISTENT] no such mailbox".into()));
            }
            out.extend_from_slice(b"* QUOTAROOT ");
            out.extend_from_slice(&self.wire_name(&name));
            if !target.is_personal() {
                // The owner's quota is theirs to know: no root here.
                out.extend_from_slice(b"\r\n");
                self.out(&out).await?;
                return Ok(Done::Ok("completed".into()));
            }
            if quota.is_some() {
                out.extend_from_slice(b" \"\"");
            }
            out.extend_from_slice(b"\r\n");
        } else if quota.is_none() {
            return Ok(Done::No("[NONEXISTENT] no quota for this user".into()));
        }
        if let Some(limit) = quota {
            let used =
                match postroom::store::maildir::Maildir::new(mailbox.root()).quota_usage(limit) {
                    Ok((bytes, _)) => bytes,
                    Err(e) => return Ok(postroom::store::mailbox::MailboxError::from(e).into()),
                };
            // RFC 9208 counts STORAGE in units of 1024 octets.
            out.extend_from_slice(
                format!(
                    "* QUOTA \"\" (STORAGE {} {})\r\n",
                    used.div_ceil(1024),
                    limit / 1024
                )
                .as_bytes(),
            );
        }
        self.out(&out).await?;
        Ok(Done::Ok("completed".into()))
    }
}

/// RFC 3501 §6.3.8 wildcards: `*` matches anything, `%` anything but the
/// delimiter. INBOX matches case-insensitively.
pub fn wildcard(pattern: &[char], name: &[char]) -> bool {
    let upper = |c: &char| c.to_ascii_uppercase();
    let name_is_inbox_prefixed = name.len() >= 5 && name[..5].iter().map(upper).eq("INBOX".chars());
    let pattern: Vec<char> = if name_is_inbox_prefixed
        && pattern.len() >= 5
        && pattern[..5].iter().map(upper).eq("INBOX".chars())
    {
        "INBOX"
            .chars()
            .chain(pattern[5..].iter().copied())
            .collect()
    } else {
        pattern.to_vec()
    };
    // Dynamic programming over (pattern position, name position).
    let n = name.len();
    let mut row = vec![false; n + 1];
    row[0] = true;
    for &pc in &pattern {
        let mut next = vec![false; n + 1];
        match pc {
            '*' => {
                let mut any = false;
                for j in 0..=n {
                    any |= row[j];
                    next[j] = any;
                }
            }
            '%' => {
                for j in 0..=n {
                    if row[j] {
                        next[j] = true;
                        let mut k = j;
                        while k < n && name[k] != '.' {
                            k += 1;
                            next[k] = true;
                        }
                    }
                }
            }
            c => {
                for j in 0..n {
                    next[j + 1] = row[j] && name[j] == c;
                }
            }
        }
        row = next;
        if !row.iter().any(|&b| b) {
            return false;
        }
    }
    row[n]
}

/// What a QRESYNC client missed since it left (RFC 7162 §3.2.5.1): the
/// UIDs it knew that are gone, as `VANISHED (EARLIER)`, then FLAGS and
/// MODSEQ of every message changed after its mod-sequence.
fn resync(out: &mut Vec<u8>, sel: &Selected, q: &Qresync) {
    let all = SequenceSet(vec![(Bound::Num(1), Bound::Star)]);
    let known = q.known_uids.as_ref().unwrap_or(&all);
    let vanished = sel.vanished_since(known, q.modseq);
    if !vanished.is_empty() {
        out.extend_from_slice(format!("* VANISHED (EARLIER) {vanished}\r\n").as_bytes());
    }
    for (i, e) in sel.view.iter().enumerate() {
        let modseq = sel.modseq(e.uid);
        if modseq > q.modseq {
            out.extend_from_slice(
                format!(
                    "* {} FETCH (UID {} FLAGS {} MODSEQ ({modseq}))\r\n",
                    i + 1,
                    e.uid,
                    sel.flags(e)
                )
                .as_bytes(),
            );
        }
    }
}

/// The sum of the messages' RFC822.SIZEs, which RFC 8438 §3 makes STATUS
/// SIZE's floor: each name's `,W=`; for a file from elsewhere without
/// one (or stored as given), the size FETCH cached for it, else its bytes
/// counted as FETCH would send them.
fn folder_size(
    folder: &postroom::store::mailbox::folder::Folder,
    validity: u32,
    entries: &[postroom::store::mailbox::folder::Entry],
) -> u64 {
    let mut total = 0;
    let mut cache = None;
    for entry in entries {
        if let Some(size) = entry.wire_size() {
            total += size;
            continue;
        }
        let cache = cache.get_or_insert_with(|| {
            let mut cache = postroom::store::mailbox::cache::Cache::new(folder.path(), validity);
            cache.refresh();
            cache
        });
        let size = cache
            .get(entry.uid, &entry.base)
            .map(|r| r.size)
            .or_else(|| {
                let mut file = folder.open_message(entry).ok()?;
                postroom::store::maildir::pop3_size(&mut file).ok()
            });
        total += size.unwrap_or(0);
    }
    total
}

#[cfg(test)]
mod tests {
    use super::*;

    fn m(p: &str, n: &str) -> bool {
        wildcard(
            &p.chars().collect::<Vec<_>>(),
            &n.chars().collect::<Vec<_>>(),
        )
    }

    #[test]
    fn list_wildcards() {
        assert!(m("*", "a.b.c"));
        assert!(m("%", "Sent"));
        assert!(!m("%", "a.b"));
        assert!(m("a.%", "a.b"));
        assert!(!m("a.%", "a.b.c"));
        assert!(m("a*c", "a.b.c"));
        assert!(m("inbox", "INBOX"));
        assert!(!m("Sent", "sent"));
        assert!(m("%.%", "a.b"));
        let long: String = "%*".repeat(500);
        assert!(m(&long, "x"));
    }
}
