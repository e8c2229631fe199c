//! Shared and public folders: IMAP ACL (RFC 4314), NAMESPACE (RFC 2342)
//! and LIST-MYRIGHTS (RFC 8440).
//!
//! Three namespaces, all with `.` as delimiter: the user's own folders
//! (prefix ""), other users' folders shared with them (`Shared.`), and the
//! domain's public folders (`public.`). A shared folder is named
//! `Shared.OWNER.FOLDER`, OWNER being the owner's local part: sharing is
//! between users of one domain (the owner's INBOX is `Shared.OWNER.INBOX`).
//! Public folders are the Maildir++ folders of `mail/DOMAIN/@public/`.
//!
//! Every name a client gives goes through [`Session::target`]: it becomes
//! a folder in one tree (the user's, the owner's, or the public one) and
//! the rights the user has there. A folder of another tree is reached only
//! with the `l` right at least (without it, it does not exist), and each
//! command asks for what RFC 4314 §4 says it needs (`NO [NOPERM]`). The
//! owner has every right on their own folders whatever the ACL says.
//!
//! \Seen is the reader's own in folders of other trees
//! (`acl::PrivateSeen`); every other flag is the folder's. The view keeps
//! the entries as on disk: [`Selected::flags_of`] lays the reader's
//! \Seen over them wherever a flag is read.

use postroom::net::NetError;
use postroom::proto::imap::command::AclCommand;
use postroom::proto::imap::response::astring;
use postroom::store::mailbox::acl::{
    self, Acl, Change, GranteeIndex, Identifier, LETTERS, PrivateSeen, Rights,
};
use postroom::store::mailbox::{
    Entry, Flags, Folder, Keywords, Mailbox, MailboxError, MailboxName, flags,
};

use crate::session::{Done, Selected, Session};

/// The first level of shared folders' names.
pub const SHARED: &str = "Shared";
/// The first level of public folders' names.
pub const PUBLIC: &str = "public";
/// The domain's public tree, under `mail/DOMAIN/` (no local part has an `@`).
pub const PUBLIC_DIR: &str = "@public";

/// Which tree a folder is in.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Space {
    Personal,
    /// Another user's, by address.
    Shared {
        owner: String,
    },
    Public,
}

/// A folder a client named, as found: its tree, its name there, and the
/// user's rights on it.
#[derive(Debug, Clone)]
pub struct Target {
    pub mailbox: Mailbox,
    pub name: MailboxName,
    pub space: Space,
    pub rights: Rights,
    /// The tree's quota (the owner's, or the public folders'), for APPEND
    /// and COPY.
    pub quota: Option<u64>,
}

impl Target {
    pub fn folder(&self) -> Folder {
        self.mailbox.folder(&self.name)
    }

    pub fn is_personal(&self) -> bool {
        self.space == Space::Personal
    }

    /// `Ok` when the user has every right of `needed`. A folder the user
    /// may not even look up does not exist for them (RFC 4314 §4: no
    /// answer may tell them it is there).
    pub fn need(&self, needed: Rights) -> Result<(), Done> {
        if self.rights.has(needed) {
            Ok(())
        } else if !self.rights.has(Rights::LOOKUP) {
            Err(Done::No("[NONEXISTENT] no such mailbox".into()))
        } else {
            Err(Done::No(format!(
                "[NOPERM] you lack the right(s) {} on this mailbox; ask its owner",
                needed.without(self.rights)
            )))
        }
    }

    /// The key the owner goes by in indexes and private \Seen files:
    /// an address, or `@DOMAIN` for the public tree. `me` is the user's
    /// address, the owner of a personal folder.
    fn owner_key(&self, me: &str, domain: &str) -> String {
        match &self.space {
            Space::Personal => me.to_string(),
            Space::Shared { owner } => owner.clone(),
            Space::Public => format!("@{domain}"),
        }
    }
}

/// The rights a STORE or APPEND of these flags needs (RFC 4314 §4): `s`
/// for \Seen, `t` for \Deleted, `w` for the rest.
pub fn rights_for_flags(names: &[String]) -> Rights {
    names.iter().fold(Rights::NONE, |acc, name| {
        acc.with(match flags::system_bit(name) {
            Some(flags::SEEN) => Rights::SEEN,
            Some(flags::DELETED) => Rights::DELETE_MESSAGES,
            _ if name.eq_ignore_ascii_case("\\Recent") => Rights::NONE,
            _ => Rights::WRITE,
        })
    })
}

/// The reader's \Seen of the selected folder, when it is their own.
#[derive(Debug)]
pub struct Seen {
    file: PrivateSeen,
    /// Ascending.
    uids: Vec<u32>,
}

impl Seen {
    /// The seen UIDs, ascending.
    pub fn uids(&self) -> &[u32] {
        &self.uids
    }

    /// Marks new messages seen (APPEND with \Seen).
    pub fn set(&self, uids: &[u32], on: bool) -> std::io::Result<()> {
        self.file.set(uids, on, &|_| true)
    }
}

impl Selected {
    /// A message's flags as this user sees them: their own \Seen in a
    /// folder of another tree.
    pub fn flags_of(&self, e: &Entry) -> Flags {
        overlay(e.flags(), e.uid, self.seen.as_ref().map(|s| &s.uids[..]))
    }

    /// The reader's \Seen again from their file (another session of theirs
    /// may have changed it).
    pub fn reload_seen(&mut self) {
        if let Some(seen) = self.seen.as_mut() {
            seen.uids = seen.file.load();
        }
    }

    /// Sets a message's flags: on disk, but for a reader's own \Seen,
    /// which goes to their file. `entry` is as on disk; the result too.
    pub fn set_flags(&mut self, entry: &Entry, new: Flags) -> Result<Option<Entry>, MailboxError> {
        if self.seen.is_none() {
            return self.folder.set_flags(entry, new);
        }
        let mut changed = self.change_flags(std::slice::from_ref(entry), &|_| new)?;
        Ok(changed.pop().flatten())
    }

    /// Changes the flags of many messages (STORE): `change` maps a
    /// message's flags as this user sees them to the new ones. One pass
    /// over the files from the flags on disk (another session may have
    /// changed them since our last sync), and for a reader with their own
    /// \Seen one rewrite of their file for the whole command. `None` in
    /// the result for a message expunged meanwhile.
    pub fn change_flags(
        &mut self,
        entries: &[Entry],
        change: &dyn Fn(Flags) -> Flags,
    ) -> Result<Vec<Option<Entry>>, MailboxError> {
        let Some(seen) = self.seen.as_mut() else {
            return self.folder.change_flags(entries, change);
        };
        // The folder's own \Seen stays as it is on disk. Every other flag
        // of the change depends only on that flag's old value, not on
        // \Seen (limit_change and the STORE modes go bit by bit), so the
        // disk's \Seen may stand in for the reader's here.
        let on_disk = |disk: Flags| {
            let mut new = change(disk);
            new.system = (new.system & !flags::SEEN) | (disk.system & flags::SEEN);
            new
        };
        let changed = self.folder.change_flags(entries, &on_disk)?;
        let (mut now_seen, mut now_unseen) = (Vec::new(), Vec::new());
        for e in changed.iter().flatten() {
            let was = seen.uids.binary_search(&e.uid).is_ok();
            let is = change(overlay(e.flags(), e.uid, Some(&seen.uids))).has(flags::SEEN);
            match (was, is) {
                (false, true) => now_seen.push(e.uid),
                (true, false) => now_unseen.push(e.uid),
                _ => {}
            }
        }
        if !now_seen.is_empty() || !now_unseen.is_empty() {
            let view = &self.view;
            seen.uids = seen
                .file
                .change(&now_seen, &now_unseen, &|u| {
                    view.binary_search_by_key(&u, |e| e.uid).is_ok()
                })
                .map_err(|error| MailboxError::Io {
                    path: self.folder.path().to_path_buf(),
                    error,
                })?;
        }
        Ok(changed)
    }
}

/// The flags a change from `old` to `new` may make with `rights`: the
/// ones the user may not change stay as they were (a `STORE FLAGS`
/// replaces all of them, \Deleted too, which needs `t`).
pub fn limit_change(old: Flags, new: Flags, rights: Rights) -> Flags {
    let mut may = 0u8;
    if rights.has(Rights::SEEN) {
        may |= flags::SEEN;
    }
    if rights.has(Rights::DELETE_MESSAGES) {
        may |= flags::DELETED;
    }
    if rights.has(Rights::WRITE) {
        may |= !(flags::SEEN | flags::DELETED);
    }
    Flags {
        system: (new.system & may) | (old.system & !may),
        keywords: if rights.has(Rights::WRITE) {
            new.keywords
        } else {
            old.keywords
        },
    }
}

/// PERMANENTFLAGS for a user with `rights`: only the flags they may
/// change (RFC 4314 §4): \Seen with `s`, \Deleted with `t`, the others
/// and new keywords (`\*`) with `w`.
pub fn permanent_flags(keywords: &Keywords, rights: Rights) -> String {
    let all = postroom::proto::imap::response::permanent_flags(keywords);
    if rights == Rights::ALL {
        return all;
    }
    let inner = all.trim_start_matches('(').trim_end_matches(')');
    let kept: Vec<&str> = inner
        .split(' ')
        .filter(|f| !f.is_empty() && rights.has(rights_for_flags(&[f.to_string()])))
        .collect();
    format!("({})", kept.join(" "))
}

/// Flags with \Seen taken from `seen` (when given).
pub fn overlay(mut f: Flags, uid: u32, seen: Option<&[u32]>) -> Flags {
    if let Some(seen) = seen {
        if seen.binary_search(&uid).is_ok() {
            f.system |= flags::SEEN;
        } else {
            f.system &= !flags::SEEN;
        }
    }
    f
}

impl Session {
    /// The logged-in user's address (lower case) and domain.
    fn who(&self) -> (String, String) {
        let address = self
            .login
            .as_ref()
            .map(|l| l.address.clone())
            .unwrap_or_default();
        let domain = address
            .rsplit_once('@')
            .map(|(_, d)| d.to_string())
            .unwrap_or_default();
        (address, domain)
    }

    /// The public tree of the user's domain.
    fn public_tree(&self) -> Mailbox {
        let (_, domain) = self.who();
        Mailbox::new(
            self.shared
                .config
                .mail_dir()
                .join(domain.to_lowercase())
                .join(PUBLIC_DIR),
        )
    }

    /// The folder a client's name means, and the user's rights on it.
    pub fn target(&self, wire: &str) -> Result<Target, Done> {
        let name = self.name(wire)?;
        self.target_of(&name)
    }

    /// [`Session::target`] for a name already checked.
    pub fn target_of(&self, name: &MailboxName) -> Result<Target, Done> {
        let own = self.mailbox()?;
        let (me, domain) = self.who();
        let nonexistent = || Done::No("[NONEXISTENT] no such mailbox".into());
        let text = name.as_str();
        let (first, rest) = text.split_once('.').unwrap_or((text, ""));
        if first == SHARED {
            // `Shared.LOCAL.FOLDER`; a local part may hold dots, so the
            // longest one naming a user of the domain wins.
            let splits: Vec<usize> = rest.match_indices('.').map(|(i, _)| i).collect();
            for &i in splits.iter().rev() {
                let (local, folder) = (&rest[..i], &rest[i + 1..]);
                let address = format!("{local}@{domain}").to_lowercase();
                if address == me {
                    continue;
                }
                let Some(user) = self.shared.users().get(&address) else {
                    continue;
                };
                let folder = MailboxName::new(folder).map_err(|_| nonexistent())?;
                let mailbox = Mailbox::new(postroom::directory::users::maildir_of(
                    &self.shared.config,
                    &user,
                ));
                let rights = rights_in(&mailbox.folder(&folder), &me, false)?;
                return Ok(Target {
                    mailbox,
                    name: folder,
                    space: Space::Shared { owner: address },
                    rights,
                    quota: postroom::delivery::quota::limit_of(&self.shared.config, &user),
                });
            }
            return Err(nonexistent());
        }
        if first == PUBLIC {
            let folder = MailboxName::new(rest).map_err(|_| nonexistent())?;
            if folder.is_inbox() {
                return Err(nonexistent());
            }
            let mailbox = self.public_tree();
            let rights = rights_in(&mailbox.folder(&folder), &me, false)?;
            return Ok(Target {
                mailbox,
                name: folder,
                space: Space::Public,
                rights,
                quota: postroom::delivery::quota::public_limit(&self.shared.config),
            });
        }
        Ok(Target {
            mailbox: own,
            name: name.clone(),
            space: Space::Personal,
            rights: Rights::ALL,
            quota: self.login.as_ref().and_then(|l| l.quota),
        })
    }

    /// The name a client sees for a folder of a tree.
    fn visible(&self, space: &Space, name: &MailboxName) -> Option<MailboxName> {
        match space {
            Space::Personal => Some(name.clone()),
            Space::Shared { owner } => {
                let local = owner.rsplit_once('@')?.0;
                MailboxName::new(&format!("{SHARED}.{local}.{name}")).ok()
            }
            Space::Public => MailboxName::new(&format!("{PUBLIC}.{name}")).ok(),
        }
    }

    /// The folders of other trees the user may look up, by the names they
    /// see, with their rights: from the grantee index (theirs and their
    /// domain's), never by walking other users' trees, and the public
    /// tree's folders.
    pub fn other_folders(&self) -> Vec<(MailboxName, Rights)> {
        let (me, domain) = self.who();
        let index = GranteeIndex::new(&self.shared.config.state_dir());
        let mut out = Vec::new();
        let mut entries = index.entries(&me);
        entries.extend(index.entries(&format!("@{domain}")));
        entries.sort();
        entries.dedup();
        for (owner, disk) in entries {
            let (Some((local, owner_domain)), Ok(folder)) =
                (owner.rsplit_once('@'), MailboxName::from_disk(&disk))
            else {
                continue;
            };
            if owner == me || owner_domain != domain {
                continue;
            }
            let Ok(seen) = MailboxName::new(&format!("{SHARED}.{local}.{folder}")) else {
                continue;
            };
            // Resolved again as a client's name would be: the index is
            // only a hint, the ACL decides.
            if let Ok(t) = self.target_of(&seen)
                && t.rights.has(Rights::LOOKUP)
                && t.folder().exists()
            {
                out.push((seen, t.rights));
            }
        }
        let public = self.public_tree();
        for name in public.list().unwrap_or_default() {
            if name.is_inbox() {
                continue;
            }
            if let Ok(rights) = rights_in(&public.folder(&name), &me, false)
                && rights.has(Rights::LOOKUP)
                && let Some(seen) = self.visible(&Space::Public, &name)
            {
                out.push((seen, rights));
            }
        }
        out
    }

    /// The reader's own \Seen of a folder of another tree.
    pub fn seen_for(&self, target: &Target, validity: u32) -> Option<Seen> {
        if target.is_personal() {
            return None;
        }
        let (me, domain) = self.who();
        let root = self.mailbox().ok()?;
        let file = PrivateSeen::new(
            root.root(),
            &target.owner_key(&me, &domain),
            &target.name.disk_name(),
            validity,
        )?;
        let uids = file.load();
        Some(Seen { file, uids })
    }

    /// NAMESPACE (RFC 2342): personal, other users', shared.
    pub async fn namespace(&mut self) -> Result<Done, NetError> {
        let line = format!(
            "* NAMESPACE ((\"\" \".\")) ((\"{SHARED}.\" \".\")) ((\"{PUBLIC}.\" \".\"))\r\n"
        );
        self.out(line.as_bytes()).await?;
        Ok(Done::Ok("NAMESPACE completed".into()))
    }

    /// `* MYRIGHTS name rights` (RFC 4314 §3.8, RFC 8440 §3).
    pub fn myrights_line(&self, name: &MailboxName, rights: Rights) -> Vec<u8> {
        let mut out = b"* MYRIGHTS ".to_vec();
        astring(&mut out, &name.wire(self.rev2 || self.utf8));
        out.extend_from_slice(format!(" {}\r\n", rights.imap_letters()).as_bytes());
        out
    }

    /// SETACL, DELETEACL, GETACL, LISTRIGHTS, MYRIGHTS (RFC 4314 §3).
    pub async fn acl_command(&mut self, command: AclCommand) -> Result<Done, NetError> {
        let wire = match &command {
            AclCommand::SetAcl { mailbox, .. }
            | AclCommand::DeleteAcl { mailbox, .. }
            | AclCommand::ListRights { mailbox, .. }
            | AclCommand::GetAcl(mailbox)
            | AclCommand::MyRights(mailbox) => mailbox.clone(),
        };
        let target = match self.target(&wire) {
            Ok(t) => t,
            Err(done) => return Ok(done),
        };
        let folder = target.folder();
        // MYRIGHTS needs any right (RFC 4314 §4); the others administer
        // the folder.
        let allowed = match command {
            AclCommand::MyRights(_) => target.rights.any(
                Rights::LOOKUP
                    .with(Rights::READ)
                    .with(Rights::INSERT)
                    .with(Rights::CREATE)
                    .with(Rights::DELETE_MAILBOX)
                    .with(Rights::ADMIN),
            ),
            _ => target.rights.has(Rights::ADMIN),
        };
        if !allowed {
            return Ok(target
                .need(Rights::ADMIN)
                .err()
                .unwrap_or_else(|| Done::No("[NOPERM] no rights here".into())));
        }
        if !folder.exists() {
            return Ok(Done::No("[NONEXISTENT] no such mailbox".into()));
        }
        let (_, domain) = self.who();
        let owner = match &target.space {
            Space::Personal => Some(self.who().0),
            Space::Shared { owner } => Some(owner.clone()),
            Space::Public => None,
        };
        let mut name_out = Vec::new();
        astring(&mut name_out, &wire);
        let name_out = String::from_utf8_lossy(&name_out).into_owned();
        let identifier = |text: &str| -> Result<(bool, Identifier), Done> {
            let (negative, text) = match text.strip_prefix('-') {
                Some(rest) => (true, rest),
                None => (false, text),
            };
            let owner_domain = owner
                .as_deref()
                .and_then(|o| o.rsplit_once('@'))
                .map_or(domain.as_str(), |(_, d)| d);
            Identifier::parse_imap(text, owner_domain)
                .map(|id| (negative, id))
                .map_err(|e| Done::Bad(e.to_string()))
        };
        match command {
            AclCommand::MyRights(_) => {
                let name = match self.name(&wire) {
                    Ok(n) => n,
                    Err(done) => return Ok(done),
                };
                let line = self.myrights_line(&name, target.rights);
                self.out(&line).await?;
                Ok(Done::Ok("MYRIGHTS completed".into()))
            }
            AclCommand::GetAcl(_) => {
                let acl = match acl::read(folder.path()) {
                    Ok(a) => a.unwrap_or_default(),
                    Err(e) => return Ok(e.into()),
                };
                let mut line = format!("* ACL {name_out}");
                if let Some(owner) = &owner {
                    // The owner's rights are implicit: all of them.
                    line.push_str(&format!(" {owner} {}", Rights::ALL.imap_letters()));
                }
                for g in &acl.grants {
                    let mut id = String::new();
                    if g.negative {
                        id.push('-');
                    }
                    id.push_str(&g.id.imap());
                    let mut quoted = Vec::new();
                    astring(&mut quoted, &id);
                    line.push_str(&format!(
                        " {} {}",
                        String::from_utf8_lossy(&quoted),
                        g.rights.imap_letters()
                    ));
                }
                line.push_str("\r\n");
                self.out(line.as_bytes()).await?;
                Ok(Done::Ok("GETACL completed".into()))
            }
            AclCommand::ListRights { identifier: id, .. } => {
                let (_, parsed) = match identifier(&id) {
                    Ok(p) => p,
                    Err(done) => return Ok(done),
                };
                let is_owner = parsed == Identifier::Owner
                    || owner
                        .as_ref()
                        .is_some_and(|o| parsed == Identifier::User(o.clone()));
                let mut quoted = Vec::new();
                astring(&mut quoted, &id);
                let mut line = format!(
                    "* LISTRIGHTS {name_out} {}",
                    String::from_utf8_lossy(&quoted)
                );
                if is_owner {
                    line.push_str(&format!(" {}", Rights::ALL));
                } else {
                    // Nothing is required; each right goes alone
                    // (RIGHTS=texk: t, e, k and x too).
                    line.push_str(" \"\"");
                    for c in LETTERS.chars() {
                        line.push(' ');
                        line.push(c);
                    }
                }
                line.push_str("\r\n");
                self.out(line.as_bytes()).await?;
                Ok(Done::Ok("LISTRIGHTS completed".into()))
            }
            AclCommand::SetAcl {
                identifier: id,
                rights,
                ..
            } => {
                let (negative, parsed) = match identifier(&id) {
                    Ok(p) => p,
                    Err(done) => return Ok(done),
                };
                let (change, letters) = match rights.strip_prefix('+') {
                    Some(r) => (Change::Add, r),
                    None => match rights.strip_prefix('-') {
                        Some(r) => (Change::Remove, r),
                        None => (Change::Replace, rights.as_str()),
                    },
                };
                let rights = match Rights::parse(letters) {
                    Ok(r) => r,
                    Err(e) => return Ok(Done::Bad(e.to_string())),
                };
                if let Err(done) = self.check_grantee(&parsed, owner.as_deref(), &domain) {
                    return Ok(done);
                }
                self.change_acl(&target, &parsed, |acl| {
                    acl.set(negative, &parsed, change, rights)
                })
                .map_or_else(Ok, |()| Ok(Done::Ok("SETACL completed".into())))
            }
            AclCommand::DeleteAcl { identifier: id, .. } => {
                let (negative, parsed) = match identifier(&id) {
                    Ok(p) => p,
                    Err(done) => return Ok(done),
                };
                self.change_acl(&target, &parsed, |acl| {
                    acl.delete(negative, &parsed);
                })
                .map_or_else(Ok, |()| Ok(Done::Ok("DELETEACL completed".into())))
            }
        }
    }

    /// After the user renamed their folders (`(old, new)` names): the
    /// sharing index follows each one's ACL, which moved with it. A
    /// failure is logged; the grantees then see the folder again at the
    /// next SETACL on it.
    pub fn reindex_renamed(&self, moved: &[(MailboxName, MailboxName)]) {
        let (me, domain) = self.who();
        let Ok(own) = self.mailbox() else {
            return;
        };
        let index = GranteeIndex::new(&self.shared.config.state_dir());
        for (old, new) in moved {
            let Ok(Some(acl)) = acl::read(own.folder(new).path()) else {
                continue;
            };
            let shared = acl
                .grants
                .iter()
                .filter(|g| !g.negative && g.rights.has(Rights::LOOKUP));
            for key in shared.filter_map(|g| grantee_key(&g.id, &domain)) {
                let moved = index
                    .set(&key, &me, &old.disk_name(), false)
                    .and_then(|()| index.set(&key, &me, &new.disk_name(), true));
                if let Err(e) = moved {
                    tracing::error!("shared-folder index of {key} after RENAME {old} {new}: {e}");
                }
            }
        }
    }

    /// A user named in SETACL must be one of the owner's domain: nobody
    /// else could reach the folder.
    fn check_grantee(
        &self,
        id: &Identifier,
        owner: Option<&str>,
        domain: &str,
    ) -> Result<(), Done> {
        let Identifier::User(user) = id else {
            return Ok(());
        };
        let owner_domain = owner
            .and_then(|o| o.rsplit_once('@'))
            .map_or(domain, |(_, d)| d);
        let same_domain = user
            .rsplit_once('@')
            .is_some_and(|(_, d)| d.eq_ignore_ascii_case(owner_domain));
        if !same_domain || self.shared.users().get(user).is_none() {
            return Err(Done::No(format!(
                "[CANNOT] {user} is not a user of {owner_domain}; folders are shared within a domain"
            )));
        }
        Ok(())
    }

    /// Changes a folder's ACL under its lock, then the grantee index for
    /// the identifier changed; `Err` is the reply for a failure.
    pub fn change_acl(
        &self,
        target: &Target,
        id: &Identifier,
        change: impl FnOnce(&mut Acl),
    ) -> Result<(), Done> {
        self.change_acl_of(target, std::slice::from_ref(id), change)
    }

    /// [`Session::change_acl`] for a change reaching several identifiers
    /// (a new folder taking its parent's ACL): the ACL is written once,
    /// then the grantee index of each.
    pub fn change_acl_of(
        &self,
        target: &Target,
        ids: &[Identifier],
        change: impl FnOnce(&mut Acl),
    ) -> Result<(), Done> {
        let (me, domain) = self.who();
        let domain = domain.as_str();
        let folder = target.folder();
        let acl = acl::update(folder.path(), change).map_err(Done::from)?;
        if target.space == Space::Public {
            // Public folders are found by listing their tree.
            return Ok(());
        }
        let owner = target.owner_key(&me, domain);
        let index = GranteeIndex::new(&self.shared.config.state_dir());
        for id in ids {
            let Some(key) = grantee_key(id, domain) else {
                continue;
            };
            let shared = acl
                .grants
                .iter()
                .any(|g| !g.negative && g.id == *id && g.rights.has(Rights::LOOKUP));
            if let Err(e) = index.set(&key, &owner, &target.name.disk_name(), shared) {
                // The ACL holds; only LIST of the grantee lags. Logged for
                // the admin, the client told to try again.
                tracing::error!("shared-folder index of {key}: {e}");
                return Err(Done::No(
                    "[SERVERUNAVAILABLE] the rights are set but the sharing index was not updated; try again".into(),
                ));
            }
        }
        Ok(())
    }
}

/// The file of the sharing index a grant goes to: the user's, or the
/// domain's for everyone; none for the owner and groups.
fn grantee_key(id: &Identifier, domain: &str) -> Option<String> {
    match id {
        Identifier::User(u) => Some(u.clone()),
        Identifier::Anyone | Identifier::Authenticated => Some(format!("@{domain}")),
        Identifier::Owner | Identifier::Group(_) => None,
    }
}

/// The rights `user` has on a folder of another tree (`is_owner` never,
/// here): what its ACL file gives, none without one.
fn rights_in(folder: &Folder, user: &str, is_owner: bool) -> Result<Rights, Done> {
    match acl::read(folder.path()) {
        Ok(Some(acl)) => Ok(acl.rights_of(user, is_owner)),
        Ok(None) => Ok(Rights::NONE),
        Err(e) => Err(e.into()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn flag_rights() {
        let names = |v: &[&str]| v.iter().map(|s| s.to_string()).collect::<Vec<_>>();
        assert_eq!(rights_for_flags(&names(&["\\Seen"])), Rights::SEEN);
        assert_eq!(
            rights_for_flags(&names(&["\\Deleted"])),
            Rights::DELETE_MESSAGES
        );
        assert_eq!(
            rights_for_flags(&names(&["\\Flagged", "$Label1"])),
            Rights::WRITE
        );
        assert_eq!(rights_for_flags(&names(&[])), Rights::NONE);
    }

    #[test]
    fn permanent_flags_are_those_the_rights_allow() {
        let k = Keywords::default();
        let all = postroom::proto::imap::response::permanent_flags(&k);
        assert_eq!(permanent_flags(&k, Rights::ALL), all);
        assert_eq!(permanent_flags(&k, Rights::parse("lr").unwrap()), "()");
        assert_eq!(
            permanent_flags(&k, Rights::parse("lrs").unwrap()),
            "(\\Seen)"
        );
        let w = permanent_flags(&k, Rights::parse("lrwt").unwrap());
        assert!(
            w.contains("\\Deleted") && w.contains("\\*") && !w.contains("\\Seen"),
            "{w}"
        );
    }

    #[test]
    fn a_replacing_store_keeps_what_the_rights_do_not_reach() {
        let old = Flags::from_info("Ta");
        let new = Flags::from_info("FS");
        let lrsw = Rights::parse("lrsw").unwrap();
        assert_eq!(limit_change(old, new, lrsw), Flags::from_info("FST"));
        let lrs = Rights::parse("lrs").unwrap();
        assert_eq!(limit_change(old, new, lrs), Flags::from_info("STa"));
        assert_eq!(limit_change(old, new, Rights::ALL), new);
    }

    #[test]
    fn overlay_replaces_seen_only() {
        let f = Flags::from_info("FS");
        assert!(!overlay(f, 3, Some(&[1, 2])).has(flags::SEEN));
        assert!(overlay(f, 3, Some(&[])).has(flags::FLAGGED));
        assert!(overlay(Flags::default(), 2, Some(&[1, 2])).has(flags::SEEN));
        assert_eq!(overlay(f, 3, None), f);
    }
}
