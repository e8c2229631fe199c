//! Tests of the folder state: UIDs, flags, expunge, copy, names.

use super::*;
use std::time::Duration;

/// Moves the times of a folder's stamp back, as if it had been still for
/// a while (a stamp proves nothing while a time is under a second old).
pub(super) fn settle(root: &std::path::Path) {
    let old = std::time::SystemTime::now() - std::time::Duration::from_secs(5);
    for sub in ["new", "cur", "dovecot-uidlist", "dovecot-keywords"] {
        if let Ok(f) = std::fs::File::open(root.join(sub)) {
            f.set_modified(old).unwrap();
        }
    }
}

fn deliver(root: &Path, text: &str) {
    let md = crate::store::maildir::Maildir::new(root);
    let mut body = text.as_bytes();
    md.deliver(crate::store::maildir::Message {
        prepend: b"",
        body: &mut body,
        base_name: None,
        search_cur: false,
        end_header: false,
        as_given: false,
        quota: None,
    })
    .unwrap();
}

fn inbox(mb: &Mailbox) -> Folder {
    mb.folder(&MailboxName::new("INBOX").unwrap())
}

/// A fresh mailbox with `n` messages delivered: (its directory, kept
/// until the test ends; the mailbox; its INBOX).
fn inbox_with(n: usize) -> (tempfile::TempDir, Mailbox, Folder) {
    let dir = tempfile::tempdir().unwrap();
    let mb = Mailbox::new(dir.path().join("u"));
    mb.ensure_defaults().unwrap();
    let f = inbox(&mb);
    for i in 0..n {
        deliver(mb.root(), &format!("Subject: {i}\n\nbody\n"));
    }
    (dir, mb, f)
}

#[test]
fn sync_gives_ascending_uids_never_reused() {
    let (_dir, mb, f) = inbox_with(3);
    let s = f.sync().unwrap();
    assert_eq!(
        s.entries.iter().map(|e| e.uid).collect::<Vec<_>>(),
        [1, 2, 3]
    );
    assert!(
        fs::read_dir(mb.root().join("new"))
            .unwrap()
            .next()
            .is_none()
    );
    let validity = s.validity;

    // Expunge the last; the next delivery gets 4, not 3.
    assert_eq!(f.expunge(&s.entries[2..]).unwrap(), vec![3]);
    deliver(mb.root(), "Subject: 4\n\nx\n");
    let s = f.sync().unwrap();
    assert_eq!(
        s.entries.iter().map(|e| e.uid).collect::<Vec<_>>(),
        [1, 2, 4]
    );
    assert_eq!(s.validity, validity);

    // A file removed behind our back (POP3 DELE) leaves the list on the
    // next write, and its UID stays used.
    fs::remove_file(f.path_of(&s.entries[0])).unwrap();
    deliver(mb.root(), "Subject: 5\n\nx\n");
    let s = f.sync().unwrap();
    assert_eq!(
        s.entries.iter().map(|e| e.uid).collect::<Vec<_>>(),
        [2, 4, 5]
    );
    let text = fs::read_to_string(mb.root().join(uidlist::FILE)).unwrap();
    assert!(
        text.starts_with(&format!("3 V{validity} N6\n2 :")),
        "{text}"
    );
}

#[test]
fn used_up_uids_renumber_the_folder_with_a_new_uidvalidity() {
    let dir = tempfile::tempdir().unwrap();
    let mb = Mailbox::new(dir.path().join("u"));
    mb.ensure_defaults().unwrap();
    let f = inbox(&mb);
    deliver(mb.root(), "Subject: 1\n\nx\n");
    deliver(mb.root(), "Subject: 2\n\nx\n");
    let s = f.sync().unwrap();
    let bases: Vec<String> = s.entries.iter().map(|e| e.base.to_string()).collect();
    // The last UIDs of the 32-bit space are taken, and a validity from a
    // clock far ahead.
    let far = u32::MAX - 10;
    fs::write(
        mb.root().join(uidlist::FILE),
        format!(
            "3 V{far} N4294967295\n4294967293 :{}\n4294967294 :{}\n",
            bases[0], bases[1]
        ),
    )
    .unwrap();
    let s = f.sync().unwrap();
    assert_eq!(
        (s.validity, s.next_uid),
        (far, u32::MAX),
        "nothing new: the list stands"
    );
    deliver(mb.root(), "Subject: 3\n\nx\n");
    let s = f
        .sync()
        .expect("a folder out of UIDs is renumbered, not stuck");
    assert!(s.validity > far, "{} > {far}", s.validity);
    assert_eq!(s.next_uid, 4);
    let uids: Vec<u32> = s.entries.iter().map(|e| e.uid).collect();
    assert_eq!(uids, [1, 2, 3]);
    assert_eq!(&*s.entries[0].base, bases[0], "the old order is kept");
    assert_eq!(&*s.entries[1].base, bases[1]);
    // Stable afterwards.
    let again = f.sync().unwrap();
    assert_eq!((again.validity, again.entries), (s.validity, s.entries));

    // A list whose last entry already holds 4294967295 gives nothing twice.
    fs::write(
        mb.root().join(uidlist::FILE),
        format!("3 V7 N5\n4294967295 :{}\n", bases[0]),
    )
    .unwrap();
    deliver(mb.root(), "Subject: 4\n\nx\n");
    let s = f.sync().unwrap();
    let uids: Vec<u32> = s.entries.iter().map(|e| e.uid).collect();
    assert_eq!(uids, [1, 2, 3, 4]);
    assert!(s.validity > 7);
}

#[test]
fn flags_rename_and_concurrent_change_is_followed() {
    let dir = tempfile::tempdir().unwrap();
    let mb = Mailbox::new(dir.path().join("u"));
    mb.ensure_defaults().unwrap();
    let f = inbox(&mb);
    deliver(mb.root(), "Subject: a\n\nx\n");
    let e = f.sync().unwrap().entries.remove(0);
    let mut flags = e.flags();
    flags.system |= flags::SEEN;
    let e2 = f.set_flags(&e, flags).unwrap().unwrap();
    assert_eq!(&*e2.info, "S");
    // Another session flags it meanwhile; our stale view still works.
    fs::rename(
        f.path_of(&e2),
        mb.root().join("cur").join(format!("{}:2,FS", e.base)),
    )
    .unwrap();
    flags.system |= flags::DELETED;
    let e3 = f.set_flags(&e2, flags).unwrap().unwrap();
    assert_eq!(&*e3.info, "ST");
    assert!(f.path_of(&e3).exists());
    let gone = f.expunge(&[e]).unwrap();
    assert_eq!(gone, vec![1]);
    assert!(f.sync().unwrap().entries.is_empty());
}

#[test]
fn a_batched_flag_change_starts_from_the_disk_and_skips_the_expunged() {
    let (_dir, mb, f) = inbox_with(20);
    let entries = f.sync().unwrap().entries;
    // Another session flags one and expunges another after our look.
    let cur = mb.root().join("cur");
    fs::rename(
        f.path_of(&entries[4]),
        cur.join(format!("{}:2,F", entries[4].base)),
    )
    .unwrap();
    f.expunge(&entries[7..8]).unwrap();
    let add_seen = |mut old: Flags| {
        old.system |= flags::SEEN;
        old
    };
    // Many (one readdir) and few (a look each): the same outcome.
    for batch in [&entries[..], &entries[3..6]] {
        let changed = f.change_flags(batch, &add_seen).unwrap();
        for (e, c) in batch.iter().zip(&changed) {
            match c {
                None => assert_eq!(e.uid, 8),
                Some(c) if e.uid == 5 => assert_eq!(&*c.info, "FS"),
                Some(c) => assert_eq!(&*c.info, "S"),
            }
            if let Some(c) = c {
                assert!(f.path_of(c).exists(), "{c:?}");
            }
        }
    }
    assert_eq!(f.sync().unwrap().entries.len(), 19);
}

/// Another session syncing the folder while messages are appended (an
/// IDLE or NOOP in another process) neither numbers them itself, which
/// would list each twice, nor makes APPENDUID name another message.
#[test]
fn append_during_another_sessions_syncs_gives_each_message_one_uid() {
    let (_dir, mb, f) = inbox_with(1);
    let done = std::sync::atomic::AtomicBool::new(false);
    let appended: Vec<(u32, String)> = std::thread::scope(|s| {
        s.spawn(|| {
            let other = inbox(&mb);
            while !done.load(std::sync::atomic::Ordering::Relaxed) {
                other.sync().unwrap();
            }
        });
        let appended = (0..40)
            .map(|i| {
                let text = format!("Subject: appended {i}\r\n\r\nbody\r\n");
                let (_, uids) = f
                    .append(
                        &[super::Appending {
                            message: text.as_bytes(),
                            as_given: false,
                            flags: Flags::default(),
                            internal_date: None,
                        }],
                        None,
                    )
                    .unwrap();
                assert_eq!(uids.len(), 1);
                (uids[0], format!("Subject: appended {i}\n"))
            })
            .collect();
        done.store(true, std::sync::atomic::Ordering::Relaxed);
        appended
    });
    let list = fs::read_to_string(mb.root().join("dovecot-uidlist")).unwrap();
    let mut bases: Vec<&str> = list
        .lines()
        .skip(1)
        .filter_map(|l| l.split(':').nth(1))
        .collect();
    let listed = bases.len();
    bases.sort_unstable();
    bases.dedup();
    assert_eq!(bases.len(), listed, "a message listed twice:\n{list}");
    assert_eq!(listed, 41);
    let state = f.sync().unwrap();
    assert_eq!(state.next_uid, 42);
    for (uid, subject) in appended {
        let entry = state.entries.iter().find(|e| e.uid == uid).unwrap();
        let text = fs::read_to_string(f.path_of(entry)).unwrap();
        assert!(text.starts_with(&subject), "UID {uid} is {text:?}");
    }
}

#[test]
fn append_copy_move_keep_flags_and_give_uids() {
    let dir = tempfile::tempdir().unwrap();
    let mb = Mailbox::new(dir.path().join("u"));
    mb.ensure_defaults().unwrap();
    let f = inbox(&mb);
    let date = std::time::UNIX_EPOCH + Duration::from_secs(1_000_000_000);
    let (kw, _) = f.add_keywords(&["$Junk", "work"]).unwrap();
    let flags = Flags {
        system: flags::SEEN | flags::FLAGGED,
        keywords: 1 << kw.index("work").unwrap(),
    };
    let (validity, uids) = f
        .append(
            &[super::Appending {
                message: b"Subject: hi\r\n\r\nbody\r\n",
                as_given: false,
                flags,
                internal_date: Some(date),
            }],
            None,
        )
        .unwrap();
    assert_eq!(uids, [1]);
    let s = f.sync().unwrap();
    assert_eq!(s.validity, validity);
    let e = &s.entries[0];
    assert_eq!(&*e.info, "FSb");
    assert_eq!(fs::read(f.path_of(e)).unwrap(), b"Subject: hi\n\nbody\n");
    assert_eq!(e.wire_size(), Some(21));
    assert_eq!(
        fs::metadata(f.path_of(e)).unwrap().modified().unwrap(),
        date
    );

    let sent = mb.folder(&MailboxName::new("Sent").unwrap());
    let (dv, pairs) = f.transfer(&s.entries, &sent, false, false).unwrap();
    assert_eq!(pairs, vec![(1, 1)]);
    assert_eq!(sent.sync().unwrap().validity, dv);
    assert_eq!(f.sync().unwrap().entries.len(), 1);
    let (_, pairs) = f.transfer(&s.entries, &sent, true, false).unwrap();
    assert_eq!(pairs, vec![(1, 2)]);
    assert!(f.sync().unwrap().entries.is_empty());
    let s = sent.sync().unwrap();
    assert_eq!(s.entries.len(), 2);
    // "work" is letter b in INBOX but the first keyword (a) in Sent.
    assert!(
        s.entries.iter().all(|e| &*e.info == "FSa"),
        "{:?}",
        s.entries
    );
    assert_eq!(s.keywords.names, vec!["work"]);
}

#[test]
fn an_all_or_none_transfer_with_a_message_gone_changes_neither_folder() {
    let (_dir, mb, f) = inbox_with(3);
    let s = f.sync().unwrap();
    // The last one expunged by another session: the first two were
    // placed before the transfer found it gone, and are taken back.
    f.expunge(&s.entries[2..]).unwrap();
    let sent = mb.folder(&MailboxName::new("Sent").unwrap());
    for remove in [false, true] {
        let (_, pairs) = f.transfer(&s.entries, &sent, remove, true).unwrap();
        assert!(pairs.is_empty());
        assert!(sent.sync().unwrap().entries.is_empty(), "remove {remove}");
        let left = f.sync().unwrap().entries;
        assert_eq!(left.iter().map(|e| e.uid).collect::<Vec<_>>(), [1, 2]);
        assert!(left.iter().all(|e| f.open_message(e).is_ok()));
    }
    // Without all_or_none, the rest goes.
    let (_, pairs) = f.transfer(&s.entries, &sent, true, false).unwrap();
    assert_eq!(pairs, vec![(1, 1), (2, 2)]);
}

#[test]
fn folders_create_list_rename_delete_subscribe() {
    let dir = tempfile::tempdir().unwrap();
    let mb = Mailbox::new(dir.path().join("u"));
    mb.ensure_defaults().unwrap();
    let n = |s: &str| MailboxName::new(s).unwrap();
    let names = |mb: &Mailbox| {
        mb.list()
            .unwrap()
            .iter()
            .map(|n| n.to_string())
            .collect::<Vec<_>>()
    };
    assert_eq!(
        names(&mb),
        ["INBOX", "Archive", "Drafts", "Junk", "Sent", "Trash"]
    );
    mb.create(&n("Entwürfe")).unwrap();
    mb.create(&n("Entwürfe.alt")).unwrap();
    assert!(mb.root().join(".Entw&APw-rfe.alt/cur").is_dir());
    assert!(matches!(
        mb.create(&n("Sent")),
        Err(MailboxError::AlreadyExists)
    ));
    mb.rename(&n("Entwürfe"), &n("Drafts.old")).unwrap();
    assert!(names(&mb).contains(&"Drafts.old.alt".to_string()));
    mb.delete(&n("Drafts.old")).unwrap();
    assert!(!names(&mb).contains(&"Drafts.old".to_string()));
    assert!(matches!(
        mb.delete(&n("INBOX")),
        Err(MailboxError::InboxDelete)
    ));

    deliver(mb.root(), "Subject: x\n\ny\n");
    mb.rename(&n("INBOX"), &n("Old")).unwrap();
    assert!(inbox(&mb).sync().unwrap().entries.is_empty());
    assert_eq!(mb.folder(&n("Old")).sync().unwrap().entries.len(), 1);

    let subs = mb.subscriptions().unwrap();
    assert_eq!(subs.len(), 5);
    mb.subscribe(&[n("Old")], true).unwrap();
    mb.subscribe(&[n("Sent")], false).unwrap();
    let subs = mb.subscriptions().unwrap();
    assert!(subs.contains(&n("Old")) && !subs.contains(&n("Sent")));
}

#[test]
fn keywords_are_added_under_the_lock() {
    let dir = tempfile::tempdir().unwrap();
    let mb = Mailbox::new(dir.path().join("u"));
    mb.ensure_defaults().unwrap();
    let f = inbox(&mb);
    let (k, fit) = f.add_keywords(&["$Junk", "work"]).unwrap();
    assert!(fit);
    assert_eq!(k.index("work"), Some(1));
    assert_eq!(f.sync().unwrap().keywords, k);
}

#[tokio::test]
async fn watcher_wakes_on_delivery() {
    let dir = tempfile::tempdir().unwrap();
    let mb = Mailbox::new(dir.path().join("u"));
    mb.ensure_defaults().unwrap();
    let watcher = crate::store::watch::Watcher::new().unwrap();
    let mut w = watcher.watch(mb.root()).unwrap();
    let w2 = watcher.watch(mb.root()).unwrap();
    assert_eq!(watcher.watched(), 1);
    w.mark_seen();
    deliver(mb.root(), "Subject: x\n\ny\n");
    tokio::time::timeout(Duration::from_secs(5), w.changed())
        .await
        .expect("woken by inotify");
    drop(w2);
    drop(w);
    assert_eq!(watcher.watched(), 0);
}

/// In Maildir++ the INBOX is the mailbox's root: a watch on the INBOX's
/// messages and one on the folder list share a path and are two places
/// all the same; neither wakes for the other's changes, and the root's
/// own files (the INBOX's lists, rewritten at each sync) wake neither.
#[tokio::test]
async fn the_folder_list_and_the_inbox_are_two_places_at_one_path() {
    let dir = tempfile::tempdir().unwrap();
    let mb = Mailbox::new(dir.path().join("u"));
    mb.ensure_defaults().unwrap();
    let watcher = crate::store::watch::Watcher::new().unwrap();
    let mut messages = watcher.watch(mb.root()).unwrap();
    let mut tree = watcher.watch_tree(mb.root()).unwrap();
    assert_eq!(watcher.watched(), 2);
    // A delivery and the sync that rewrites the INBOX's uidlist in the
    // root; a second delivery after it shows every event before it read.
    deliver(mb.root(), "Subject: x\n\ny\n");
    inbox(&mb).sync().unwrap();
    woken(&mut messages).await;
    messages.mark_seen();
    deliver(mb.root(), "Subject: x\n\ny\n");
    woken(&mut messages).await;
    assert!(
        !tree.has_changed(),
        "the INBOX's changes woke the folder list"
    );
    // A folder made, then a subscription: the folder list only.
    messages.mark_seen();
    mb.create(&MailboxName::new("Work").unwrap()).unwrap();
    woken(&mut tree).await;
    tree.mark_seen();
    mb.subscribe(&[MailboxName::new("Work").unwrap()], true)
        .unwrap();
    woken(&mut tree).await;
    assert!(!messages.has_changed(), "the folder list woke the INBOX");
    // Either goes without taking the other's watch along.
    drop(tree);
    assert_eq!(watcher.watched(), 1);
    deliver(mb.root(), "Subject: x\n\ny\n");
    woken(&mut messages).await;
}

async fn woken(w: &mut crate::store::watch::FolderWatch) {
    tokio::time::timeout(Duration::from_secs(5), w.changed())
        .await
        .expect("woken by inotify");
}

#[test]
fn symlinked_folders_and_messages_are_not_followed() {
    let dir = tempfile::tempdir().unwrap();
    let mb = Mailbox::new(dir.path().join("u1"));
    let other = Mailbox::new(dir.path().join("u2"));
    mb.ensure_defaults().unwrap();
    other.ensure_defaults().unwrap();
    deliver(other.root(), "Subject: not yours\n\nsecret\n");
    let theirs = inbox(&other).sync().unwrap().entries;
    let n = |s: &str| MailboxName::new(s).unwrap();

    // A folder that is a symlink to another mailbox, and one whose cur/ is.
    std::os::unix::fs::symlink("../u2", mb.root().join(".Evil")).unwrap();
    for sub in ["new", "tmp"] {
        fs::create_dir_all(mb.root().join(".Half").join(sub)).unwrap();
    }
    std::os::unix::fs::symlink("../../u2/cur", mb.root().join(".Half/cur")).unwrap();
    let listed: Vec<String> = mb.list().unwrap().iter().map(|n| n.to_string()).collect();
    assert!(
        !listed.iter().any(|l| l == "Evil" || l == "Half"),
        "{listed:?}"
    );
    for name in ["Evil", "Half"] {
        let f = mb.folder(&n(name));
        assert!(!f.exists(), "{name}");
        assert!(
            matches!(f.sync(), Err(MailboxError::NoSuchMailbox)),
            "{name}"
        );
        assert!(matches!(
            mb.delete(&n(name)),
            Err(MailboxError::NoSuchMailbox)
        ));
    }
    assert!(matches!(
        mb.create(&n("Evil")),
        Err(MailboxError::Maildir(
            crate::store::maildir::MaildirError::Symlink(_)
        ))
    ));
    // A symlinked special folder does not stop a login.
    fs::remove_dir_all(mb.root().join(".Junk")).unwrap();
    std::os::unix::fs::symlink("../u2", mb.root().join(".Junk")).unwrap();
    mb.ensure_defaults().unwrap();

    // A message file that is a symlink gets no UID.
    let f = inbox(&mb);
    let target = other.root().join("cur").join(theirs[0].file_name());
    std::os::unix::fs::symlink(&target, mb.root().join("cur/100.evil.h:2,")).unwrap();
    std::os::unix::fs::symlink(&target, mb.root().join("new/101.evil.h")).unwrap();
    deliver(mb.root(), "Subject: mine\n\nx\n");
    let s = f.sync().unwrap();
    assert_eq!(s.entries.len(), 1, "{:?}", s.entries);
    // One replaced by a symlink after it got its UID is not opened.
    let mine = &s.entries[0];
    fs::remove_file(f.path_of(mine)).unwrap();
    std::os::unix::fs::symlink(&target, f.path_of(mine)).unwrap();
    let err = f.open_message(mine).unwrap_err();
    assert!(
        crate::store::maildir::symlink_refused(&err).is_some(),
        "{err}"
    );
    assert_eq!(f.internal_date(mine), None);
    // Their mailbox is as it was.
    assert_eq!(inbox(&other).sync().unwrap().entries, theirs);
}
