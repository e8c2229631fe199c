//! A users file that is missing, or emptied by accident, is a temporary
//! failure everywhere a user is looked up — RCPT, mail-inject, queued local
//! delivery, mailsort, POP3 and IMAP logins — and a `postroom check`
//! problem; servers that run keep the last good copy. Only an empty file
//! that says so (`postroom user del` of the last user, `postroom init`)
//! means "no users".

use std::io::{BufRead, BufReader, Write};
use std::net::TcpStream;
use std::time::Duration;

use crate::util::{Server, Tree, bin, maildir_files, stderr, stdout};

/// A line-by-line conversation on a server's plain port.
struct Line {
    reader: BufReader<TcpStream>,
    stream: TcpStream,
}

impl Line {
    fn connect(port: u16) -> (Line, String) {
        let stream = TcpStream::connect(("127.0.0.1", port)).unwrap();
        stream
            .set_read_timeout(Some(Duration::from_secs(20)))
            .unwrap();
        let mut line = Line {
            reader: BufReader::new(stream.try_clone().unwrap()),
            stream,
        };
        let greeting = line.read();
        (line, greeting)
    }

    fn read(&mut self) -> String {
        let mut text = String::new();
        self.reader.read_line(&mut text).unwrap();
        text.trim_end().to_string()
    }

    /// Sends a command; the reply's last line (SMTP `NNN-` lines are
    /// skipped; for IMAP, untagged lines until the `tag`).
    fn say(&mut self, command: &str, tag: Option<&str>) -> String {
        self.stream
            .write_all(format!("{command}\r\n").as_bytes())
            .unwrap();
        loop {
            let line = self.read();
            let more = match tag {
                Some(tag) => !line.starts_with(tag),
                None => line.len() > 3 && line.as_bytes()[3] == b'-',
            };
            if !more || line.is_empty() {
                return line;
            }
        }
    }
}

fn users_path(tree: &Tree) -> std::path::PathBuf {
    tree.root().join("users")
}

fn tree_with_ann_and_bob() -> Tree {
    let tree = Tree::new();
    tree.add_user("ann@example.test");
    tree.add_user("bob@example.test");
    tree
}

fn smtp_rcpt(port: u16, rcpts: &[&str]) -> Vec<String> {
    let (mut smtp, greeting) = Line::connect(port);
    assert!(greeting.starts_with("220"), "{greeting}");
    assert!(smtp.say("EHLO client.test", None).starts_with("250"));
    assert!(
        smtp.say("MAIL FROM:<x@remote.test>", None)
            .starts_with("250")
    );
    let replies = rcpts
        .iter()
        .map(|r| smtp.say(&format!("RCPT TO:<{r}>"), None))
        .collect();
    smtp.say("QUIT", None);
    replies
}

#[test]
fn a_missing_users_file_defers_rcpt_and_mail_inject_instead_of_refusing() {
    let tree = tree_with_ann_and_bob();
    std::fs::remove_file(users_path(&tree)).unwrap();
    let server = Server::start(&tree, "smtp-recv", &[]);
    assert_eq!(
        smtp_rcpt(server.port, &["ann@example.test", "nobody@example.test"]),
        [
            "451 4.3.0 <ann@example.test>: local users cannot be looked up now (the users file \
             is missing); try again later",
            "451 4.3.0 <nobody@example.test>: local users cannot be looked up now (the users \
             file is missing); try again later",
        ]
    );
    // Remote recipients are not a users question (relay is still refused).
    assert!(smtp_rcpt(server.port, &["far@remote.test"])[0].starts_with("554 5.7.1"));
    // AUTH (PLAIN ann@example.test / secret) fails for now, not for good.
    let (mut smtp, _) = Line::connect(server.port);
    smtp.say("EHLO client.test", None);
    assert_eq!(
        smtp.say("AUTH PLAIN AGFubkBleGFtcGxlLnRlc3QAc2VjcmV0", None),
        "454 4.7.0 temporary authentication failure"
    );
    smtp.say("QUIT", None);

    let out = tree.inject(
        &["-f", "x@example.test", "ann@example.test"],
        b"Subject: x\n\nx\n",
    );
    assert_eq!(out.status.code(), Some(75), "{}", stderr(&out));
    assert!(
        stderr(&out).contains("local users cannot be looked up now (the users file is missing)"),
        "{}",
        stderr(&out)
    );
    assert!(tree.queue().list().unwrap().is_empty());

    // mailsort as a delivery pipe: 75, not 67 (EX_NOUSER).
    let out = std::process::Command::new(bin("mailsort"))
        .arg("--config")
        .arg(&tree.config)
        .args(["--user", "ann@example.test"])
        .stdin(std::process::Stdio::null())
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(75), "{}", stdout(&out));
    assert!(stdout(&out).starts_with("451 4.3.0"), "{}", stdout(&out));

    // A zero-byte file at start is the same accident.
    drop(server);
    std::fs::write(users_path(&tree), "").unwrap();
    let server = Server::start(&tree, "smtp-recv", &[]);
    assert_eq!(
        smtp_rcpt(server.port, &["ann@example.test"]),
        [
            "451 4.3.0 <ann@example.test>: local users cannot be looked up now (the users file \
          lists no users); try again later"
        ]
    );
    let out = tree.inject(
        &["-f", "x@example.test", "bob@example.test"],
        b"Subject: x\n\nx\n",
    );
    assert_eq!(out.status.code(), Some(75), "{}", stderr(&out));
}

#[test]
fn a_users_file_emptied_while_smtp_recv_runs_keeps_the_last_good_copy() {
    let tree = tree_with_ann_and_bob();
    let good = std::fs::read_to_string(users_path(&tree)).unwrap();
    let server = Server::start(&tree, "smtp-recv", &[]);
    let (mut smtp, _) = Line::connect(server.port);
    smtp.say("EHLO client.test", None);
    smtp.say("MAIL FROM:<x@remote.test>", None);
    let mut rcpt = |to: &str| smtp.say(&format!("RCPT TO:<{to}>"), None);
    assert_eq!(rcpt("ann@example.test"), "250 2.1.5 recipient ok");
    // Replaced by a zero-byte file, then removed: the users last read stay.
    std::fs::write(users_path(&tree), "").unwrap();
    assert_eq!(rcpt("ann@example.test"), "250 2.1.5 recipient ok");
    assert_eq!(rcpt("bob@example.test"), "250 2.1.5 recipient ok");
    assert!(rcpt("nobody@example.test").starts_with("550 5.1.1"));
    std::fs::remove_file(users_path(&tree)).unwrap();
    assert_eq!(rcpt("bob@example.test"), "250 2.1.5 recipient ok");
    // Restored, then every user deleted by the admin: now nobody is here.
    std::fs::write(users_path(&tree), &good).unwrap();
    for user in ["ann@example.test", "bob@example.test"] {
        let out = tree.postroom(&["user", "del", user]);
        assert!(out.status.success(), "{}", stderr(&out));
    }
    let text = std::fs::read_to_string(users_path(&tree)).unwrap();
    assert!(text.contains("# postroom: no users"), "{text}");
    assert_eq!(
        rcpt("ann@example.test"),
        "550 5.1.1 <ann@example.test>: no such user here"
    );
    let (healthy, said) = {
        let out = tree.postroom(&["check"]);
        (out.status.success(), stdout(&out))
    };
    assert!(healthy, "{said}");
}

#[test]
fn pop3_and_imap_logins_fail_temporarily_without_a_users_file() {
    let tree = tree_with_ann_and_bob();
    let pop3 = Server::start(&tree, "pop3-serve", &[]);
    let imap = Server::start(&tree, "imap-serve", &[]);
    let pop3_login = || {
        let (mut pop, greeting) = Line::connect(pop3.port);
        assert!(greeting.starts_with("+OK"), "{greeting}");
        pop.say("USER ann@example.test", None);
        let said = pop.say("PASS secret", None);
        pop.say("QUIT", None);
        said
    };
    let imap_login = |port: u16| {
        let (mut imap, greeting) = Line::connect(port);
        assert!(greeting.starts_with("* OK"), "{greeting}");
        let said = imap.say("a LOGIN ann@example.test secret", Some("a "));
        imap.say("b LOGOUT", Some("b "));
        said
    };
    assert!(pop3_login().starts_with("+OK"));
    assert!(imap_login(imap.port).starts_with("a OK"));
    // Emptied while they run: the last good copy still logs ann in.
    std::fs::write(users_path(&tree), "").unwrap();
    assert!(pop3_login().starts_with("+OK"), "{}", pop3_login());
    assert!(imap_login(imap.port).starts_with("a OK"));
    // Started without one: a temporary failure, not a wrong password.
    std::fs::remove_file(users_path(&tree)).unwrap();
    drop(pop3);
    drop(imap);
    let pop3 = Server::start(&tree, "pop3-serve", &[]);
    let imap = Server::start(&tree, "imap-serve", &[]);
    let (mut pop, _) = Line::connect(pop3.port);
    pop.say("USER ann@example.test", None);
    assert_eq!(
        pop.say("PASS secret", None),
        "-ERR [SYS/TEMP] cannot open the mailbox now, try again later"
    );
    assert_eq!(
        imap_login(imap.port),
        "a NO [UNAVAILABLE] temporary authentication failure"
    );
}

#[test]
fn queued_local_mail_waits_for_a_missing_users_file_instead_of_bouncing() {
    let tree = tree_with_ann_and_bob();
    let good = std::fs::read_to_string(users_path(&tree)).unwrap();
    let out = tree.inject(
        &["-odq", "-f", "bob@example.test", "ann@example.test"],
        b"Subject: wait for me\n\nbody\n",
    );
    assert!(out.status.success(), "{}", stderr(&out));
    std::fs::remove_file(users_path(&tree)).unwrap();
    let check = tree.postroom(&["check"]);
    assert!(!check.status.success());
    assert!(
        stdout(&check).contains(&format!(
            "problem: {}: the users file is missing: mail for local users waits",
            users_path(&tree).display()
        )),
        "{}",
        stdout(&check)
    );
    let send = |args: &[&str]| {
        let out = std::process::Command::new(bin("smtp-send"))
            .arg("--config")
            .arg(&tree.config)
            .args(args)
            .output()
            .unwrap();
        assert!(out.status.success(), "{}", stderr(&out));
    };
    send(&["--once"]);
    let ids = tree.queue().list().unwrap();
    assert_eq!(ids.len(), 1, "the message left the queue");
    let show = stdout(&tree.postroom(&["queue", "show", ids[0].as_str()]));
    assert!(
        show.contains("deferred after 1 attempt(s)")
            && show.contains("451 4.3.0 <ann@example.test>: local users cannot be looked up now"),
        "{show}"
    );
    assert!(
        maildir_files(&tree.maildir("bob")).is_empty(),
        "bob got a bounce"
    );
    std::fs::write(users_path(&tree), &good).unwrap();
    send(&["--flush"]);
    assert!(tree.queue().list().unwrap().is_empty());
    assert_eq!(maildir_files(&tree.maildir("ann")).len(), 1);
    assert!(maildir_files(&tree.maildir("bob")).is_empty());
}

#[test]
fn a_list_post_waits_for_a_missing_users_file_instead_of_skipping_members() {
    let tree = tree_with_ann_and_bob();
    let list_expand = |args: &[&str], input: &[u8]| {
        let mut child = std::process::Command::new(bin("list-expand"))
            .arg("--config")
            .arg(&tree.config)
            .args(args)
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .unwrap();
        let _ = child.stdin.take().unwrap().write_all(input);
        child.wait_with_output().unwrap()
    };
    let out = list_expand(
        &["create", "team@example.test", "--owner", "ann@example.test"],
        b"",
    );
    assert!(out.status.success(), "{}", stderr(&out));
    let out = list_expand(
        &["add", "team@example.test", "-"],
        b"bob@example.test\nfar@remote.test\n",
    );
    assert!(out.status.success(), "{}", stderr(&out));
    std::fs::remove_file(users_path(&tree)).unwrap();
    let post = b"From: far@remote.test\nSubject: hello\n\nhi all\n";
    let out = list_expand(
        &["post", "team@example.test", "--sender", "far@remote.test"],
        post,
    );
    assert_eq!(out.status.code(), Some(75), "{}", stderr(&out));
    assert!(
        stderr(&out).contains("member bob@example.test: local users cannot be looked up now"),
        "{}",
        stderr(&out)
    );
    assert!(tree.queue().list().unwrap().is_empty(), "sent without bob");
    let archive = tree.root().join("lists/team@example.test/archive");
    assert!(
        maildir_files(&archive).is_empty(),
        "archived before it was sent"
    );
}

#[test]
fn an_access_file_copied_in_with_an_older_time_is_read_by_every_server() {
    // imap-serve reloaded only when the newest of the users and access
    // mtimes moved, and smtp-recv never looked at the access file's: a rule
    // put in place with `cp -p` or `rsync -t` was never read.
    let tree = tree_with_ann_and_bob();
    let servers = [
        (Server::start(&tree, "smtp-recv", &[]), "220 "),
        (Server::start(&tree, "pop3-serve", &[]), "+OK"),
        (Server::start(&tree, "imap-serve", &[]), "* OK"),
    ];
    for (server, welcome) in &servers {
        let (_, greeting) = Line::connect(server.port);
        assert!(greeting.starts_with(welcome), "{greeting}");
    }
    let staged = tree.root().join("access.new");
    std::fs::write(&staged, "deny 127.0.0.0/8\ndeny ::1\n").unwrap();
    let past = std::time::SystemTime::UNIX_EPOCH + Duration::from_secs(1_000_000_000);
    std::fs::File::options()
        .write(true)
        .open(&staged)
        .unwrap()
        .set_modified(past)
        .unwrap();
    std::fs::rename(&staged, tree.root().join("access")).unwrap();
    for (server, welcome) in &servers {
        let (_, greeting) = Line::connect(server.port);
        assert!(
            !greeting.starts_with(welcome),
            "port {}: still welcomed after the deny rule: {greeting}",
            server.port
        );
    }
}
