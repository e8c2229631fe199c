//! `postroom export`, `backup` and `restore`: a user's mail out as mbox
//! and maildir with its flags; a tree backed up, wiped and restored with
//! every message, flag, keyword, UID and queued message back.

use crate::util::{Tree, stderr};
use postroom::store::mailbox::{Flags, Mailbox, MailboxName};
use std::collections::BTreeMap;
use std::path::Path;

/// Every folder's messages as (uid, flags info, text), with the folder's
/// UIDVALIDITY and keyword names.
type Snapshot = BTreeMap<String, (u32, Vec<String>, Vec<(u32, String, Vec<u8>)>)>;

fn snapshot(root: &Path) -> Snapshot {
    let mailbox = Mailbox::new(root);
    let mut all = Snapshot::new();
    for name in mailbox.list().unwrap() {
        let folder = mailbox.folder(&name);
        let state = folder.sync().unwrap();
        let mut messages = Vec::new();
        for entry in &state.entries {
            let mut text = Vec::new();
            std::io::Read::read_to_end(&mut folder.open_message(entry).unwrap(), &mut text)
                .unwrap();
            messages.push((entry.uid, entry.info.to_string(), text));
        }
        let keywords = state
            .keywords
            .names_of(u32::MAX)
            .map(str::to_string)
            .collect();
        all.insert(
            name.as_str().to_string(),
            (state.validity, keywords, messages),
        );
    }
    all
}

/// ann's mailbox: three messages in INBOX, one in Work, with flags and
/// a keyword set through the mailbox code IMAP uses.
fn fill(tree: &Tree) {
    tree.add_user("ann@example.test");
    for (i, body) in ["first\nFrom the start\n", "second\n", "third\n"]
        .iter()
        .enumerate()
    {
        let out = tree.inject(
            &["-f", "bob@example.test", "ann@example.test"],
            format!("Subject: m{i}\n\n{body}").as_bytes(),
        );
        assert!(out.status.success(), "{}", stderr(&out));
    }
    let mailbox = Mailbox::new(tree.maildir("ann"));
    let inbox = mailbox.folder(&MailboxName::new("INBOX").unwrap());
    let state = inbox.sync().unwrap();
    assert_eq!(state.entries.len(), 3);
    let (bits, _) = inbox.add_keywords(&["$Important"]).unwrap();
    let important = bits.index("$Important").unwrap();
    let mut seen_flagged = Flags::from_info("FS");
    seen_flagged.keywords = 1 << important;
    inbox.set_flags(&state.entries[0], seen_flagged).unwrap();
    inbox
        .set_flags(&state.entries[1], Flags::from_info("RS"))
        .unwrap();
    let work = MailboxName::new("Work").unwrap();
    mailbox.create(&work).unwrap();
    let folder = mailbox.folder(&work);
    let filed = postroom::store::mailbox::Appending {
        message: b"Subject: filed\n\nkept\n",
        as_given: false,
        flags: Flags::from_info("DS"),
        internal_date: None,
    };
    folder.append(&[filed], None).unwrap();
}

#[test]
fn export_writes_mbox_with_status_fields_and_a_maildir_copy_with_flags() {
    let tree = Tree::new();
    fill(&tree);
    let out_dir = tree.dir.path().join("out");
    let mbox_dir = out_dir.join("mbox");
    let out = tree.postroom(&[
        "export",
        "ann@example.test",
        "--mbox",
        mbox_dir.to_str().unwrap(),
    ]);
    assert!(out.status.success(), "{}", stderr(&out));
    let inbox = std::fs::read_to_string(mbox_dir.join("INBOX.mbox")).unwrap();
    assert_eq!(
        inbox.matches("\nFrom bob@example.test ").count() + 1,
        3,
        "{inbox}"
    );
    assert!(inbox.starts_with("From bob@example.test "), "{inbox}");
    assert!(inbox.contains("\n>From the start\n"), "{inbox}");
    assert!(
        inbox.contains("Status: RO\nX-Status: F\nX-Keywords: $Important\n"),
        "{inbox}"
    );
    assert!(inbox.contains("Status: RO\nX-Status: A\n"), "{inbox}");
    assert_eq!(inbox.matches("Status: O\n").count(), 1, "{inbox}");
    let work = std::fs::read_to_string(mbox_dir.join("Work.mbox")).unwrap();
    assert!(work.contains("Status: RO\nX-Status: T\n"), "{work}");

    let maildir = out_dir.join("maildir");
    let out = tree.postroom(&[
        "export",
        "ann@example.test",
        "--maildir",
        maildir.to_str().unwrap(),
    ]);
    assert!(out.status.success(), "{}", stderr(&out));
    assert_eq!(snapshot(&maildir), snapshot(&tree.maildir("ann")));
    // An export never overwrites.
    let again = tree.postroom(&[
        "export",
        "ann@example.test",
        "--mbox",
        mbox_dir.to_str().unwrap(),
    ]);
    assert!(!again.status.success());
}

#[test]
fn backup_wipe_restore_brings_back_every_message_flag_and_queued_mail() {
    let tree = Tree::new();
    fill(&tree);
    let sieve = tree.maildir("ann").join("sieve");
    std::fs::create_dir_all(&sieve).unwrap();
    std::fs::write(sieve.join("active.sieve"), "keep;\n").unwrap();
    // bob's rules as sieve-serve keeps them: the active one is a link.
    let bob_sieve = tree.maildir("bob").join("sieve");
    std::fs::create_dir_all(&bob_sieve).unwrap();
    std::fs::write(bob_sieve.join("rules.sieve"), "discard;\n").unwrap();
    std::os::unix::fs::symlink("rules.sieve", bob_sieve.join("active.sieve")).unwrap();
    let out = tree.postroom(&["alias", "add", "info@example.test", "ann"]);
    assert!(out.status.success(), "{}", stderr(&out));
    // A message for elsewhere waits in the queue.
    let out = tree.inject(
        &["-f", "ann@example.test", "far@remote.test"],
        b"Subject: q\n\nq\n",
    );
    assert!(out.status.success(), "{}", stderr(&out));
    let queued = tree.queue().list().unwrap();
    assert_eq!(queued.len(), 1);
    let queue_file =
        std::fs::read(tree.root().join("queue/mess").join(queued[0].as_str())).unwrap();

    let before = snapshot(&tree.maildir("ann"));
    let files = |names: &[&str]| -> Vec<Vec<u8>> {
        names
            .iter()
            .map(|n| std::fs::read(tree.root().join(n)).unwrap())
            .collect()
    };
    let config_files = [
        "postroom.toml",
        "users",
        "aliases",
        "domains",
        "tls/key.pem",
    ];
    let before_files = files(&config_files);

    let archive = tree.dir.path().join("tree.tar.zst");
    let out = tree.postroom(&["backup", "--to", archive.to_str().unwrap(), "--mail"]);
    assert!(out.status.success(), "{}", stderr(&out));

    std::fs::remove_dir_all(tree.root()).unwrap();
    let out = tree.postroom(&["restore", "--from", archive.to_str().unwrap()]);
    assert!(out.status.success(), "{}", stderr(&out));

    assert_eq!(files(&config_files), before_files);
    assert_eq!(snapshot(&tree.maildir("ann")), before);
    assert_eq!(
        std::fs::read_to_string(sieve.join("active.sieve")).unwrap(),
        "keep;\n"
    );
    assert_eq!(tree.queue().list().unwrap(), queued);
    assert_eq!(
        std::fs::read(tree.root().join("queue/mess").join(queued[0].as_str())).unwrap(),
        queue_file
    );
    // The tree works: the restored one checks clean.
    let check = tree.postroom(&["check"]);
    assert!(
        check.status.success(),
        "{}{}",
        crate::util::stdout(&check),
        stderr(&check)
    );

    // A second restore keeps what is there and says so.
    let out = tree.postroom(&["restore", "--from", archive.to_str().unwrap()]);
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(
        stderr(&out).contains("0 file(s) restored"),
        "{}",
        stderr(&out)
    );

    // Without --mail: the config and scripts, no messages.
    let light = tree.dir.path().join("light.tar.zst");
    let out = tree.postroom(&["backup", "--to", light.to_str().unwrap()]);
    assert!(out.status.success(), "{}", stderr(&out));
    std::fs::remove_dir_all(tree.root()).unwrap();
    let out = tree.postroom(&["restore", "--from", light.to_str().unwrap()]);
    assert!(out.status.success(), "{}", stderr(&out));
    assert_eq!(files(&config_files), before_files);
    assert!(sieve.join("active.sieve").exists());
    assert_eq!(
        std::fs::read_link(bob_sieve.join("active.sieve")).unwrap(),
        Path::new("rules.sieve")
    );
    assert_eq!(
        std::fs::read_to_string(bob_sieve.join("active.sieve")).unwrap(),
        "discard;\n"
    );
    assert!(crate::util::maildir_files(&tree.maildir("ann")).is_empty());
}
