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
    // Torn within the header, and foreign bytes: refused, and the
    // uidlist (with its tampered UIDNEXT) answers.
    for bad in [good[..100].to_vec(), b"not an index".to_vec()] {
        std::fs::write(&index, &bad).unwrap();
        let out = session(&tree, "b SELECT INBOX\r\nc FETCH 1:* (UID)\r\n");
        assert!(out.contains("* 2 EXISTS"), "{out}");
        assert!(out.contains("* 2 FETCH (UID 2)"), "{out}");
        assert_eq!(code(&out, "UIDNEXT"), "7", "the full sync answered");
    }
    // Torn after the header, or a flipped byte in a record: SELECT
    // answers from the whole header (the folder is as it says), the
    // first command finds the damage, reads the folder instead and
    // removes the index.
    let flipped = {
        let mut b = good.clone();
        let last = b.len() - 1;
        b[last] ^= 1;
        b
    };
    for bad in [good[..good.len() - 3].to_vec(), flipped] {
        std::fs::write(&index, &bad).unwrap();
        let out = session(&tree, "b SELECT INBOX\r\nc FETCH 1:* (UID)\r\n");
        assert!(out.contains("* 2 EXISTS"), "{out}");
        assert_eq!(code(&out, "UIDNEXT"), "3", "the header answered");
        assert!(
            out.contains("* 1 FETCH (UID 1)\r\n* 2 FETCH (UID 2)\r\nc OK"),
            "{out}"
        );
        assert!(!index.exists(), "removed");
    }
}

/// Python's imaplib on new imap-serve processes (`IMAP4_stream`, as
/// inetd starts one per connection), with `MAILDIR`, `IMAP` and `CONFIG`.
fn imaplib(tree: &Tree, script: &str) -> String {
    let out = std::process::Command::new("python3")
        .arg("-c")
        .arg(format!(
            r#"
import imaplib, os
def process():
    M = imaplib.IMAP4_stream(f"REMOTE_ADDR=127.0.0.1 {{os.environ['IMAP']}} --config {{os.environ['CONFIG']}}")
    M.login("bob@example.test", "secret")
    return M
def ok(r, what=""):
    assert r[0] == "OK", (what, r)
    return r[1]
{script}"#
        ))
        .env("IMAP", crate::util::bin("imap-serve"))
        .env("CONFIG", &tree.config)
        .output()
        .expect("python3 runs");
    let said = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(out.status.success(), "python failed:\n{said}");
    said
}

#[test]
fn sessions_selected_from_the_index_stay_exact_when_another_process_changes_the_folder() {
    let tree = tree_with_user();
    for subject in ["one", "two", "three", "four", "five", "six"] {
        deliver(&tree, subject);
    }
    let maildir = tree.maildir("bob");
    session(&tree, "b SELECT INBOX\r\n");
    settle(&maildir);
    session(&tree, "b SELECT INBOX\r\n");
    assert!(maildir.join("postroom-index").exists());
    // UIDNEXT raised behind the stamp's back: a SELECT that says 7 came
    // from the index; the first full sync after it reads 20.
    tamper_next_uid(&maildir, " N7\n", " N20\n");
    imaplib(
        &tree,
        r#"
# A, D and E: new processes, SELECT from the index, no command since
# but E's NOOP (nothing moved: nothing to say).
A, D, E = process(), process(), process()
for M in (A, D, E):
    assert ok(M.select("INBOX")) == [b"6"]
    assert M.untagged_responses["UIDNEXT"] == [b"7"], M.untagged_responses
    assert M.untagged_responses["UNSEEN"] == [b"1"], M.untagged_responses
ok(E.noop())
assert E.untagged_responses["EXISTS"] == [b"6"] and "EXPUNGE" not in E.untagged_responses, E.untagged_responses
# B, a third process, changes the folder: expunges UID 2, flags UID 3,
# appends one (UID 20).
B = process()
ok(B.select("INBOX"))
ok(B.store("2", "+FLAGS", "(\\Deleted)"))
assert ok(B.expunge()) == [b"2"]
ok(B.store("2", "+FLAGS", "(\\Flagged)"))
r = ok(B.append("INBOX", None, None, b"Subject: seven\r\n\r\nseven\r\n"))
assert b"[APPENDUID " in r[0] and r[0].split()[2] == b"20]", r
B.logout()

# E's NOOP now: the view SELECT described, then every change since.
ok(E.noop())
assert E.untagged_responses.pop("EXPUNGE") == [b"2"], E.untagged_responses
assert E.untagged_responses["EXISTS"][-1] == b"6", E.untagged_responses
E.untagged_responses.clear()
r = ok(E.uid("FETCH", "1:*", "(FLAGS)"))
assert r[:5] == [b"1 (UID 1 FLAGS ())", b"2 (UID 3 FLAGS (\\Flagged))", b"3 (UID 4 FLAGS ())",
                 b"4 (UID 5 FLAGS ())", b"5 (UID 6 FLAGS ())"], r
assert r[5].startswith(b"6 (UID 20 FLAGS ("), r
E.logout()

# A's first command fetches by sequence number: the view is the one
# SELECT described (UID 2 still there, its EXPUNGE held back, RFC 3501
# §7.4.1), then the flag change and the new message are reported.
r = ok(A.fetch("1:6", "(UID)"))
assert b"1 (UID 1)" in r and b"2 (UID 2)" in r and b"6 (UID 6)" in r, r
assert A.untagged_responses["EXISTS"][-1] == b"7", A.untagged_responses
assert "EXPUNGE" not in A.untagged_responses, A.untagged_responses
ok(A.noop())
assert A.untagged_responses.pop("EXPUNGE") == [b"2"], A.untagged_responses
assert ok(A.search(None, "FLAGGED")) == [b"2"]
assert ok(A.uid("SEARCH", "ALL")) == [b"1 3 4 5 6 20"]
assert ok(A.search(None, "SUBJECT", "seven")) == [b"6"]
r = ok(A.store("1", "+FLAGS", "(\\Seen)"))
assert r == [b"1 (FLAGS (\\Seen))"], r
r = ok(A.fetch("1:*", "(UID FLAGS)"))
assert r[:5] == [b"1 (UID 1 FLAGS (\\Seen))", b"2 (UID 3 FLAGS (\\Flagged))", b"3 (UID 4 FLAGS ())",
                 b"4 (UID 5 FLAGS ())", b"5 (UID 6 FLAGS ())"], r
assert r[5].startswith(b"6 (UID 20 FLAGS ("), r
ok(A.store("6", "+FLAGS.SILENT", "(\\Deleted)"))
r = ok(A.expunge())
assert r == [b"6"], (r, A.untagged_responses)

# D's first command is a STORE by sequence number, after all that: 2 is
# UID 2 in its view (expunged: nothing to store, no failure), 3 is UID 3.
r = D.store("2:3", "+FLAGS", "(\\Answered)")
assert r[0] == "OK", r
assert b"3 (FLAGS (\\Flagged \\Answered))" in r[1], r
ok(D.noop())
D.untagged_responses.clear()
assert ok(D.uid("FETCH", "1:*", "(FLAGS)")) == [b"1 (UID 1 FLAGS (\\Seen))",
    b"2 (UID 3 FLAGS (\\Flagged \\Answered))", b"3 (UID 4 FLAGS ())", b"4 (UID 5 FLAGS ())",
    b"5 (UID 6 FLAGS ())"], D.untagged_responses
for M in (A, D):
    M.logout()
C = process()
assert ok(C.select("INBOX")) == [b"5"]
assert C.untagged_responses["UIDNEXT"] == [b"21"], C.untagged_responses
print("done")
"#,
    );
}
