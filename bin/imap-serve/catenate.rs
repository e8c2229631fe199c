//! CATENATE (RFC 4469): an APPEND whose message is put together from
//! literals and IMAP URLs (RFC 5092) to messages, or parts of them, in
//! the user's own mailboxes. A URL that names nothing this user can read
//! answers `NO [BADURL url]`; a result over `limits.message_size`
//! answers `NO [TOOBIG]`. What a URL gives is what `BODY.PEEK[section]`
//! would: the wire form, CRLF line ends.

use postroom::proto::imap::command::{CatPart, parse_section};
use postroom::proto::imap::response;
use postroom::proto::imap::url::{self, MessageUrl};
use postroom::proto::mime;
use std::collections::HashMap;
use std::collections::hash_map;

use postroom::store::mailbox::{Entry, Folder, MailboxName, State};

use crate::message::{Need, read_message};
use crate::session::{Done, Session};

/// The folders other than the selected one an APPEND's URLs named, each
/// synced once for the command however many URLs name it.
pub type Synced = HashMap<MailboxName, (Folder, State)>;

impl Session {
    /// The message `parts` make, and whether it is to be kept as given (a
    /// TEXT part was a literal8, RFC 3516). `synced` holds the folders
    /// the command's URLs named so far.
    pub fn catenate(
        &self,
        parts: &[CatPart],
        synced: &mut Synced,
    ) -> Result<(Vec<u8>, bool), Done> {
        let limit = self.shared.config.limits.message_size as usize;
        let mut message = Vec::new();
        let mut binary = false;
        for part in parts {
            match part {
                CatPart::Text(text, as_given) => {
                    binary |= *as_given;
                    message.extend_from_slice(text);
                }
                CatPart::Url(text) => {
                    let data = self.fetch_url(text, synced)?;
                    message.extend_from_slice(&data);
                }
            }
            if message.len() > limit {
                return Err(Done::No(format!(
                    "[TOOBIG] the message CATENATE makes is larger than {limit} bytes"
                )));
            }
        }
        Ok((message, binary))
    }

    /// What a URL names, as `BODY.PEEK[section]<partial>` gives it.
    fn fetch_url(&self, text: &str, synced: &mut Synced) -> Result<Vec<u8>, Done> {
        // `"BADURL" SP url-resp-text` (RFC 4469 §6): the URL as sent, not
        // quoted, as Dovecot has it; what the code's text may not hold
        // (`]`, controls, non-ASCII) goes percent-encoded.
        let bad = |why: &str| {
            let mut url = String::with_capacity(text.len());
            for b in text.bytes() {
                if b == b']' || !(0x20..0x7f).contains(&b) {
                    url.push_str(&format!("%{b:02X}"));
                } else {
                    url.push(b as char);
                }
            }
            Done::No(format!("[BADURL {url}] {why}"))
        };
        let Some(u) = url::parse(text) else {
            return Err(bad(
                "not an IMAP URL to one message (imap://host/mailbox;UIDVALIDITY=n/;UID=n, or from /mailbox on)",
            ));
        };
        let MessageUrl {
            user,
            mailbox: name,
            validity,
            uid,
            section,
            partial,
        } = u;
        let login = self.login.as_ref().ok_or_else(|| bad("log in first"))?;
        if user.is_some_and(|u| !login.address.eq_ignore_ascii_case(&u)) {
            return Err(bad("the URL names another user's mailbox"));
        }
        let name = match &name {
            Some(n) => Some(MailboxName::from_wire(n, true).map_err(|_| bad("no such mailbox"))?),
            None => None,
        };
        let find = |entries: &[Entry]| {
            entries
                .binary_search_by_key(&uid, |e| e.uid)
                .ok()
                .map(|i| entries[i].clone())
        };
        // The selected folder's view, else the folder as it is on disk.
        let selected = self
            .selected
            .as_ref()
            .filter(|sel| name.as_ref().is_none_or(|n| *n == sel.name));
        let (folder, entry, folder_validity) = match (selected, name) {
            (Some(sel), _) => (sel.folder.clone(), find(&sel.view), sel.validity),
            (None, None) => return Err(bad("a relative URL needs a selected mailbox")),
            (None, Some(n)) => {
                let (folder, state) = match synced.entry(n) {
                    hash_map::Entry::Occupied(o) => o.into_mut(),
                    hash_map::Entry::Vacant(v) => {
                        let folder = login.mailbox.folder(v.key());
                        if !folder.exists() {
                            return Err(bad("no such mailbox"));
                        }
                        let state = folder
                            .sync()
                            .map_err(|_| bad("the mailbox cannot be read now"))?;
                        v.insert((folder, state))
                    }
                };
                (folder.clone(), find(&state.entries), state.validity)
            }
        };
        if validity.is_some_and(|v| v != folder_validity) {
            return Err(bad(
                "UIDVALIDITY differs: the URL is for an older mailbox of that name",
            ));
        }
        let entry = entry.ok_or_else(|| bad("no message of that UID"))?;
        let entry = folder
            .refresh(&entry)
            .ok()
            .flatten()
            .ok_or_else(|| bad("the message was expunged"))?;
        let wire = read_message(&folder, &entry, Need::Everything)
            .ok_or_else(|| bad("the message was expunged"))?;
        let mut data = match section {
            None => wire,
            Some(spec) => {
                let section = parse_section(&spec.to_ascii_uppercase())
                    .ok_or_else(|| bad("not a section (HEADER, TEXT, 1.2, 1.MIME...)"))?;
                let root = mime::parse(&wire);
                mime::section_data(&wire, Some(&root), &section)
                    .ok_or_else(|| bad("the message has no such section"))?
            }
        };
        if let Some((origin, length)) = partial {
            data = response::partial(&data, origin, length).to_vec();
        }
        Ok(data)
    }
}
