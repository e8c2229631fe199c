//! Old messages of a folder, for `postroom expire` (`[expire]` in
//! `postroom.toml(5)`). They are removed with [`Folder::expunge`], the
//! same call as IMAP's EXPUNGE: the uidlist loses them, so open IMAP
//! sessions report EXPUNGE (or VANISHED) at their next sync, and the
//! quota's `maildirsize` is given back their bytes.
//!
//! A message's age counts from when it came into the folder: its file's
//! change time (ctime), which delivery, a move or copy into the folder
//! sets, as Dovecot's expire plugin counts from the save date. Its
//! internal date (the modification time, kept from the original on a
//! move) would have a message deleted long ago vanish from Trash the
//! night after it was thrown away. A flag change renames the file and so
//! renews the age too: a message someone still works on stays.

use std::os::unix::fs::MetadataExt;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use super::{Entry, Folder, MailboxError};

/// A message old enough to go.
#[derive(Debug, Clone)]
pub struct Old {
    pub entry: Entry,
    /// Since it came into the folder.
    pub age: Duration,
    /// Its size on disk, from the name (`,S=`), if the name says.
    pub size: Option<u64>,
}

/// The messages of `folder` that came into it more than `older_than`
/// before `now`. A message gone meanwhile is left out.
pub fn old_messages(
    folder: &Folder,
    older_than: Duration,
    now: SystemTime,
) -> Result<Vec<Old>, MailboxError> {
    let state = folder.sync()?;
    let now = now.duration_since(UNIX_EPOCH).unwrap_or_default();
    let mut old = Vec::new();
    for entry in state.entries {
        let Ok(meta) = folder.open_message(&entry).and_then(|f| f.metadata()) else {
            continue;
        };
        let came = Duration::new(
            u64::try_from(meta.ctime()).unwrap_or(0),
            u32::try_from(meta.ctime_nsec()).unwrap_or(0),
        );
        let age = now.saturating_sub(came);
        if age > older_than {
            let size = crate::store::maildir::size_from_name(&entry.base);
            old.push(Old { entry, age, size });
        }
    }
    Ok(old)
}

/// Removes them as IMAP EXPUNGE does; returns the UIDs removed here.
pub fn remove(folder: &Folder, old: &[Old]) -> Result<Vec<u32>, MailboxError> {
    let entries: Vec<Entry> = old.iter().map(|o| o.entry.clone()).collect();
    folder.expunge(&entries)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::mailbox::{Appending, Flags, Mailbox, MailboxName};

    #[test]
    fn old_messages_are_found_by_when_they_came_and_removed() {
        let dir = tempfile::tempdir().unwrap();
        let mailbox = Mailbox::new(dir.path().join("ann"));
        mailbox.ensure_defaults().unwrap();
        let trash = mailbox.folder(&MailboxName::new("Trash").unwrap());
        let body = b"Subject: old\r\n\r\nx\r\n";
        trash
            .append(
                &[Appending {
                    message: body,
                    as_given: false,
                    flags: Flags::default(),
                    // An internal date long ago: it does not make the
                    // message old here.
                    internal_date: Some(UNIX_EPOCH + Duration::from_secs(86400)),
                }],
                None,
            )
            .unwrap();
        let now = SystemTime::now();
        assert!(
            old_messages(&trash, Duration::from_secs(3600), now)
                .unwrap()
                .is_empty()
        );
        let later = now + Duration::from_secs(7200);
        let old = old_messages(&trash, Duration::from_secs(3600), later).unwrap();
        assert_eq!(old.len(), 1);
        assert!(old[0].age >= Duration::from_secs(7200));
        assert_eq!(remove(&trash, &old).unwrap(), vec![old[0].entry.uid]);
        assert!(trash.sync().unwrap().entries.is_empty());
    }
}
