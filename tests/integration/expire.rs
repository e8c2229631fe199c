//! `postroom expire` (issue 19, item 4): messages older than their
//! folder's age go, through the mailbox code IMAP uses, so an open IMAP
//! session sees the EXPUNGEs and the quota gets the bytes back; per-user
//! ages override the general ones; `--dry-run` lists and removes nothing.

use std::io::{BufRead, BufReader, Write};
use std::net::TcpStream;
use std::os::unix::fs::MetadataExt;
use std::path::Path;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use crate::util::{Server, Tree, stderr, stdout, wait_until};

/// The age both folders are given: long enough for the test to put fresh
/// messages beside old ones and run the command before they age too.
const AGE_SECS: u64 = 4;

struct Imap {
    stream: TcpStream,
    reader: BufReader<TcpStream>,
    tag: u32,
}

impl Imap {
    fn login(port: u16, user: &str) -> Imap {
        let stream = TcpStream::connect(("127.0.0.1", port)).unwrap();
        stream
            .set_read_timeout(Some(Duration::from_secs(60)))
            .unwrap();
        let mut imap = Imap {
            reader: BufReader::new(stream.try_clone().unwrap()),
            stream,
            tag: 0,
        };
        imap.line();
        let said = imap.command(&format!("LOGIN {user} secret"));
        assert!(said.contains(" OK "), "{said}");
        imap
    }

    fn line(&mut self) -> String {
        let mut line = String::new();
        self.reader.read_line(&mut line).unwrap();
        assert!(!line.is_empty(), "the server hung up");
        line
    }

    /// Sends a command, returns everything up to its tagged answer.
    fn command(&mut self, text: &str) -> String {
        self.tag += 1;
        let tag = format!("a{}", self.tag);
        self.stream
            .write_all(format!("{tag} {text}\r\n").as_bytes())
            .unwrap();
        self.until(&tag)
    }

    fn until(&mut self, tag: &str) -> String {
        let mut said = String::new();
        loop {
            let line = self.line();
            said.push_str(&line);
            if line.starts_with(&format!("{tag} ")) {
                return said;
            }
        }
    }

    fn append(&mut self, folder: &str, subject: &str) {
        let message = format!("From: x@example.test\r\nSubject: {subject}\r\n\r\nbody\r\n");
        self.tag += 1;
        let tag = format!("a{}", self.tag);
        self.stream
            .write_all(format!("{tag} APPEND {folder} {{{}}}\r\n", message.len()).as_bytes())
            .unwrap();
        assert!(self.line().starts_with('+'));
        self.stream
            .write_all(format!("{message}\r\n").as_bytes())
            .unwrap();
        let said = self.until(&tag);
        assert!(said.contains(&format!("{tag} OK")), "{said}");
    }
}

/// Files in a folder's cur/.
fn files(folder: &Path) -> Vec<std::path::PathBuf> {
    let mut files: Vec<_> = std::fs::read_dir(folder.join("cur"))
        .map(|d| d.flatten().map(|e| e.path()).collect())
        .unwrap_or_default();
    files.sort();
    files
}

fn postroom(tree: &Tree, args: &[&str]) -> String {
    let out = tree.postroom(args);
    assert!(out.status.success(), "{}\n{}", stdout(&out), stderr(&out));
    stdout(&out)
}

#[test]
fn expire_removes_old_mail_as_imap_expunge_does() {
    let tree = Tree::new();
    for user in ["ann@example.test", "bob@example.test"] {
        postroom(
            &tree,
            &[
                "user",
                "add",
                user,
                "--password",
                "{PLAIN}secret",
                "--quota",
                "1M",
            ],
        );
    }
    let mut config = std::fs::read_to_string(&tree.config).unwrap();
    config.push_str(&format!(
        "\n[expire]\nTrash = \"{AGE_SECS}s\"\nJunk = \"{AGE_SECS}s\"\n\
         [expire.users.\"bob@example.test\"]\nJunk = \"never\"\n"
    ));
    std::fs::write(&tree.config, config).unwrap();
    let server = Server::start(&tree, "imap-serve", &[]);
    let mut ann = Imap::login(server.port, "ann@example.test");
    let mut bob = Imap::login(server.port, "bob@example.test");
    for n in 1..=2 {
        ann.append("Trash", &format!("old trash {n}"));
        ann.append("Junk", &format!("old junk {n}"));
    }
    bob.append("Junk", "bob keeps his junk");
    let ann_dir = tree.maildir("ann");
    let (trash, junk) = (ann_dir.join(".Trash"), ann_dir.join(".Junk"));
    wait_until("the first messages to age", Duration::from_secs(60), || {
        let now = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap()
            .as_secs();
        files(&trash)
            .iter()
            .chain(&files(&junk))
            .all(|f| now.saturating_sub(f.metadata().unwrap().ctime() as u64) > AGE_SECS)
            .then_some(())
    });
    ann.append("Trash", "fresh trash");
    ann.append("Junk", "fresh junk");
    let mut watcher = Imap::login(server.port, "ann@example.test");
    let selected = watcher.command("SELECT Trash");
    assert!(selected.contains("* 3 EXISTS"), "{selected}");
    let maildir = postroom::store::maildir::Maildir::new(&ann_dir);
    let before = maildir.quota_usage(1 << 20).unwrap();
    assert_eq!(before.1, 3, "Junk counts against the quota, Trash does not");

    let listed = postroom(&tree, &["expire", "--dry-run"]);
    let lines: Vec<&str> = listed.lines().collect();
    assert_eq!(lines.len(), 5, "{listed}");
    assert_eq!(
        lines
            .iter()
            .filter(|l| l.starts_with("ann@example.test Trash uid "))
            .count(),
        2,
        "{listed}"
    );
    assert_eq!(
        lines
            .iter()
            .filter(|l| l.starts_with("ann@example.test Junk uid "))
            .count(),
        2,
        "{listed}"
    );
    assert!(
        lines[4].starts_with("would remove 4 message(s)"),
        "{listed}"
    );
    assert_eq!(
        (files(&trash).len(), files(&junk).len()),
        (3, 3),
        "a dry run removes nothing"
    );
    let noop = watcher.command("NOOP");
    assert!(!noop.contains("EXPUNGE"), "{noop}");

    let done = postroom(&tree, &["expire"]);
    assert!(
        done.contains("ann@example.test Trash: removed 2 message(s)"),
        "{done}"
    );
    assert!(
        done.contains("ann@example.test Junk: removed 2 message(s)"),
        "{done}"
    );
    assert!(done.contains("removed 4 message(s)"), "{done}");
    assert!(!done.contains("bob@"), "bob's Junk never expires: {done}");

    // The open session hears of it as of any other client's EXPUNGE.
    let noop = watcher.command("NOOP");
    assert_eq!(noop.matches(" EXPUNGE\r\n").count(), 2, "{noop}");
    let fetched = watcher.command("FETCH 1:* (BODY.PEEK[HEADER.FIELDS (SUBJECT)])");
    assert!(
        fetched.contains("fresh trash") && !fetched.contains("old trash"),
        "{fetched}"
    );
    assert_eq!((files(&trash).len(), files(&junk).len()), (1, 1));
    let after = maildir.quota_usage(1 << 20).unwrap();
    assert_eq!(after.1, 1, "the quota gave back the expired Junk");
    assert!(after.0 < before.0, "{after:?} {before:?}");
    assert_eq!(files(&tree.maildir("bob").join(".Junk")).len(), 1);

    // Nothing left to expire: a second run finds nothing.
    let again = postroom(&tree, &["expire", "--user", "ann@example.test"]);
    assert_eq!(again.trim(), "removed 0 message(s), 0B in all");
}

#[test]
fn expire_without_ages_does_nothing_and_says_so() {
    let tree = Tree::new();
    let out = postroom(&tree, &["expire"]);
    assert!(out.contains("nothing expires"), "{out}");
    let unknown = tree.postroom(&["expire", "--user", "nobody@example.test"]);
    assert!(unknown.status.success(), "no [expire]: nothing to check");
}
