//! The folder index (`postroom-index`, postroom-mailbox(5)): imap-serve in
//! inetd mode, one process per session, answers SELECT of a folder that
//! has not moved from the index alone, and never trusts one that is stale
//! or damaged.

use std::io::{BufRead, BufReader, Read, Write};
use std::path::Path;
use std::time::{Duration, SystemTime};

use crate::imap_serve::{deliver, tree_with_user};
use crate::util::{Tree, spawn_inetd};

/// One session in a new imap-serve process: LOGIN, `commands`, LOGOUT;
/// everything it said.
fn session(tree: &Tree, commands: &str) -> String {
    let mut child = spawn_inetd("imap-serve", tree);
    let mut reader = BufReader::new(child.stdout.take().unwrap());
    let mut greeting = String::new();
    reader.read_line(&mut greeting).unwrap();
    let mut stdin = child.stdin.take().unwrap();
    stdin
        .write_all(format!("a LOGIN bob@example.test secret\r\n{commands}z LOGOUT\r\n").as_bytes())
        .unwrap();
    let mut out = String::new();
    reader.read_to_string(&mut out).unwrap();
    assert!(child.wait().unwrap().success());
    assert!(out.contains("z OK"), "{out}");
    out
}

/// The value of a `* OK [NAME value]` line.
fn code(out: &str, name: &str) -> String {
    let start = out
        .find(&format!("[{name} "))
        .unwrap_or_else(|| panic!("{out}"))
        + name.len()
        + 2;
    out[start..].split(']').next().unwrap().to_string()
}

/// Moves the times the folder's stamp is made of a while back, as if the
/// folder had been still for that long: a stamp only proves something
/// once its times are over a second old.
fn settle(maildir: &Path) {
    let old = SystemTime::now() - Duration::from_secs(30);
    for name in ["new", "cur", "dovecot-uidlist", "dovecot-keywords"] {
        if let Ok(f) = std::fs::File::open(maildir.join(name)) {
            f.set_modified(old).unwrap();
        }
    }
}

/// Changes UIDNEXT in the uidlist behind the stamp's back: the same file
/// (written in place) with its old time. Only a process that trusts the
/// index misses it, which is how the tests tell who answered.
fn tamper_next_uid(maildir: &Path, from: &str, to: &str) {
    let path = maildir.join("dovecot-uidlist");
    let meta = std::fs::metadata(&path).unwrap();
    let text = std::fs::read_to_string(&path).unwrap();
    let changed = text.replacen(from, to, 1);
    assert_ne!(text, changed, "{text}");
    let mut file = std::fs::OpenOptions::new().write(true).open(&path).unwrap();
    file.write_all(changed.as_bytes()).unwrap();
    file.set_modified(meta.modified().unwrap()).unwrap();
}

#[test]
fn select_in_a_new_process_takes_an_unchanged_folder_from_its_index() {
    let tree = tree_with_user();
    for subject in ["one", "two", "three"] {
        deliver(&tree, subject);
    }
    let maildir = tree.maildir("bob");
    let index = maildir.join("postroom-index");
    // The first look gives the messages their UIDs: the folder has just
    // changed, so no index is written under that stamp.
    let first = session(&tree, "b SELECT INBOX\r\n");
    assert!(first.contains("* 3 EXISTS"), "{first}");
    assert!(!index.exists(), "written under a stamp that proves nothing");
    // Still for a while: the next full sync writes the index.
    settle(&maildir);
    let full = session(&tree, "b SELECT INBOX\r\n");
    assert!(index.exists(), "a settled full sync writes the index");
    assert_eq!(code(&full, "UIDNEXT"), "4");
    // A new process now answers from the index (it misses the tampered
    // UIDNEXT, which a read of the uidlist would see), and tells the same
    // HIGHESTMODSEQ without a look at the log.
    tamper_next_uid(&maildir, " N4\n", " N9\n");
    let fast = session(&tree, "b SELECT INBOX\r\nc FETCH 1:* (UID FLAGS)\r\n");
    assert!(fast.contains("* 3 EXISTS"), "{fast}");
    assert_eq!(code(&fast, "UIDNEXT"), "4", "the index answered");
    assert_eq!(code(&fast, "UIDVALIDITY"), code(&full, "UIDVALIDITY"));
    assert_eq!(code(&fast, "HIGHESTMODSEQ"), code(&full, "HIGHESTMODSEQ"));
    assert!(fast.contains("* 3 FETCH (UID 3 FLAGS ())"), "{fast}");
    // Any change moves the stamp: a flag change (a rename in cur/) is
    // seen by the next process, from the disk.
    let stored = session(&tree, "b SELECT INBOX\r\nc STORE 2 +FLAGS (\\Seen)\r\n");
    assert!(stored.contains("c OK"), "{stored}");
    let after = session(&tree, "b SELECT INBOX\r\nc FETCH 2 (FLAGS)\r\n");
    assert!(after.contains("* 2 FETCH (FLAGS (\\Seen))"), "{after}");
    assert_eq!(code(&after, "UIDNEXT"), "9", "read from the uidlist");
    assert!(
        code(&after, "HIGHESTMODSEQ").parse::<u64>().unwrap()
            > code(&fast, "HIGHESTMODSEQ").parse::<u64>().unwrap()
    );
}

#[test]
fn a_damaged_index_costs_only_a_full_sync() {
    let tree = tree_with_user();
    for subject in ["one", "two"] {
        deliver(&tree, subject);
    }
    let maildir = tree.maildir("bob");
    let index = maildir.join("postroom-index");
    session(&tree, "b SELECT INBOX\r\n");
    settle(&maildir);
    session(&tree, "b SELECT INBOX\r\n");
    let good = std::fs::read(&index).unwrap();
    tamper_next_uid(&maildir, " N3\n", " N7\n");
    // Torn, a flipped byte in a record, and foreign bytes: each is
    // refused, and the uidlist (with its tampered UIDNEXT) answers.
    let flipped = {
        let mut b = good.clone();
        let last = b.len() - 1;
        b[last] ^= 1;
        b
    };
    for bad in [
        good[..good.len() / 2].to_vec(),
        flipped,
        b"not an index".to_vec(),
    ] {
        std::fs::write(&index, &bad).unwrap();
        let out = session(&tree, "b SELECT INBOX\r\nc FETCH 1:* (UID)\r\n");
        assert!(out.contains("* 2 EXISTS"), "{out}");
        assert!(out.contains("* 2 FETCH (UID 2)"), "{out}");
        assert_eq!(code(&out, "UIDNEXT"), "7", "the full sync answered");
    }
}
