//! An admin's first day (issue 16): the defaults, the sendmail names, the
//! admin commands and the demo, each as a new admin meets them.

use std::collections::HashMap;
use std::os::unix::fs::PermissionsExt;
use std::process::{Command, Output, Stdio};
use std::time::Duration;

use crate::dns::DnsServer;
use crate::util::{Log, Server, Tree, bin, maildir_texts, run_with, stderr, stdout, wait_until};

fn mode(path: &std::path::Path) -> u32 {
    std::fs::metadata(path).unwrap().permissions().mode() & 0o7777
}

fn ok(what: &str, out: &Output) {
    assert!(
        out.status.success(),
        "{what}: {:?}\n{}{}",
        out.status,
        stdout(out),
        stderr(out)
    );
}

#[test]
fn bounces_of_injected_mail_reach_the_postmaster_with_the_default_config() {
    // The README's tour: init, a user, the postmaster alias, mail out that
    // bounces. The bounce goes to root@mail.example.test (mail-inject's
    // default sender), which used to be a remote address: it failed, and
    // the failed report was dropped.
    let tree = Tree::new();
    tree.add_user("ann@example.test");
    let check = tree.postroom(&["check"]);
    ok("check", &check);
    assert!(
        stdout(&check).contains("warning: the postmaster address postmaster@mail.example.test"),
        "{}",
        stdout(&check)
    );
    ok(
        "alias add",
        &tree.postroom(&["alias", "add", "postmaster@example.test", "ann"]),
    );
    let check = tree.postroom(&["check"]);
    assert!(!stdout(&check).contains("warning"), "{}", stdout(&check));

    let dns = DnsServer::start(HashMap::new());
    let mut config = std::fs::read_to_string(&tree.config).unwrap();
    config.push_str(&format!(
        "\n[dns]\nnameservers = [\"{}\"]\ntimeout = \"2s\"\n",
        dns.addr
    ));
    std::fs::write(&tree.config, config).unwrap();

    for system in ["root", "postmaster", "MAILER-DAEMON"] {
        let verify = tree.inject(&["-bv", &format!("{system}@mail.example.test")], b"");
        ok("-bv", &verify);
        assert!(
            stdout(&verify).contains("deliverable: mailbox ann@example.test"),
            "{}",
            stdout(&verify)
        );
    }
    let mut inject = tree.inject_command(&["friend@nowhere.test"]);
    inject.env("LOGNAME", "root");
    let out = run_with(inject, b"Subject: out\n\nx\n");
    ok("mail-inject", &out);
    let send = Command::new(bin("smtp-send"))
        .arg("--config")
        .arg(&tree.config)
        .arg("--once")
        .env("POSTROOM_LOG", "info")
        .output()
        .unwrap();
    ok("smtp-send", &send);
    assert!(!stderr(&send).contains("dropped"), "{}", stderr(&send));
    // One summary line per recipient and attempt, as log summarisers read.
    let summary = stderr(&send);
    let line = summary
        .lines()
        .find(|l| l.contains("to=friend@nowhere.test"))
        .unwrap_or_else(|| panic!("{summary}"));
    for field in [
        "delivery",
        "queue_id=",
        "from=root@mail.example.test",
        "size=",
        "relay=nowhere.test",
        "delay=",
        "status=bounced",
    ] {
        assert!(line.contains(field), "{field}: {line}");
    }
    let reports = maildir_texts(&tree.maildir("ann"));
    assert_eq!(reports.len(), 1, "the bounce reached ann");
    assert!(reports[0].contains("friend@nowhere.test"), "{}", reports[0]);
    assert!(
        reports[0].contains("Delivered-To: ann@example.test"),
        "{}",
        reports[0]
    );
    let list = tree.postroom(&["queue", "list"]);
    assert!(stdout(&list).contains("0 message(s)"), "{}", stdout(&list));
}

#[test]
fn secret_files_are_private_and_edits_keep_the_admins_modes() {
    let tree = Tree::new();
    let users = tree.root().join("users");
    assert_eq!(mode(&users), 0o640, "users file from init");
    assert_eq!(mode(&tree.root().join("tls/key.pem")), 0o640);
    tree.add_user("ann@example.test");
    assert_eq!(mode(&users), 0o640, "user add keeps it");
    assert_eq!(mode(&tree.maildir("ann")), 0o700, "maildirs are private");
    std::fs::set_permissions(&users, std::fs::Permissions::from_mode(0o600)).unwrap();
    ok(
        "passwd",
        &tree.postroom(&[
            "user",
            "passwd",
            "ann@example.test",
            "--password",
            "{PLAIN}x",
        ]),
    );
    assert_eq!(mode(&users), 0o600, "an edit keeps the admin's chmod");
    std::fs::set_permissions(&users, std::fs::Permissions::from_mode(0o644)).unwrap();
    let check = tree.postroom(&["check"]);
    assert!(
        stdout(&check).contains("users is readable by everyone (mode 0644)"),
        "{}",
        stdout(&check)
    );
}

/// A folder of links to mail-inject under the names Debian gives it.
fn sendmail_links() -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    for name in ["sendmail", "mailq", "newaliases"] {
        std::os::unix::fs::symlink(bin("mail-inject"), dir.path().join(name)).unwrap();
    }
    dir
}

fn linked(links: &tempfile::TempDir, name: &str, tree: &Tree, args: &[&str]) -> Command {
    let mut command = Command::new(links.path().join(name));
    command.env("POSTROOM_CONFIG", &tree.config).args(args);
    command
}

#[test]
fn mailq_newaliases_and_sendmail_modes_work_through_links() {
    let tree = Tree::new();
    tree.add_user("ann@example.test");
    let links = sendmail_links();

    let index = tree.root().join("aliases.index");
    let _ = std::fs::remove_file(&index);
    let out = linked(&links, "newaliases", &tree, &[]).output().unwrap();
    ok("newaliases", &out);
    assert!(stdout(&out).contains("valid"), "{}", stdout(&out));
    // Reading the file brought its index up to date (mail-inject(8), -bi).
    assert!(index.exists());

    let out = run_with(
        linked(
            &links,
            "sendmail",
            &tree,
            &["-f", "ann@example.test", "far@remote.test"],
        ),
        b"Subject: out\n\nx\n",
    );
    ok("sendmail", &out);
    let out = linked(&links, "mailq", &tree, &[]).output().unwrap();
    ok("mailq", &out);
    assert!(stdout(&out).contains("far@remote.test"), "{}", stdout(&out));
    assert!(stdout(&out).contains("1 message(s)"), "{}", stdout(&out));
    let bp = linked(&links, "sendmail", &tree, &["-bp"])
        .output()
        .unwrap();
    assert_eq!(stdout(&bp), stdout(&out), "-bp is mailq");

    // -bs: SMTP on stdin/stdout for a local user, who may send anywhere
    // (as with mail-inject itself), but only on a pipe.
    let out = run_with(
        linked(&links, "sendmail", &tree, &["-bs"]),
        b"EHLO me\r\nMAIL FROM:<ann@example.test>\r\nRCPT TO:<other@remote.test>\r\n\
          RCPT TO:<ann@example.test>\r\nDATA\r\nSubject: bs\r\n\r\nhi\r\n.\r\nQUIT\r\n",
    );
    ok("sendmail -bs", &out);
    let said = stdout(&out);
    assert!(said.starts_with("220 "), "{said}");
    assert!(!said.contains("\n5"), "{said}");
    assert!(said.contains("250 2.0.0 ok, queued as"), "{said}");
    assert!(
        maildir_texts(&tree.maildir("ann"))
            .iter()
            .any(|m| m.contains("Subject: bs"))
    );
    let socket = std::os::unix::net::UnixStream::pair().unwrap().0;
    let out = Command::new(bin("smtp-recv"))
        .arg("--config")
        .arg(&tree.config)
        .arg("--local")
        .stdin(Stdio::from(std::os::fd::OwnedFd::from(socket)))
        .output()
        .unwrap();
    assert!(!out.status.success(), "--local refuses a socket");
    assert!(stderr(&out).contains("never a network"), "{}", stderr(&out));

    // -bv says where each address goes.
    let out = linked(
        &links,
        "sendmail",
        &tree,
        &["-bv", "ann@example.test", "ghost@example.test"],
    )
    .output()
    .unwrap();
    assert_eq!(out.status.code(), Some(67), "{}", stderr(&out));
    assert!(stdout(&out).contains("ann@example.test: deliverable: mailbox ann@example.test"));
    assert!(stdout(&out).contains("ghost@example.test: undeliverable"));

    std::fs::write(tree.root().join("aliases"), "fine: ann\nbroken\n").unwrap();
    let out = linked(&links, "newaliases", &tree, &[]).output().unwrap();
    assert_eq!(out.status.code(), Some(78), "{}", stdout(&out));
    assert!(stderr(&out).contains("aliases:2:"), "{}", stderr(&out));
}

#[test]
fn alias_add_refuses_a_target_that_leads_nowhere_and_check_names_the_line() {
    let tree = Tree::new();
    tree.add_user("ann@example.test");
    let out = tree.postroom(&["alias", "add", "info@example.test", "ghost"]);
    assert!(!out.status.success(), "ghost is nobody");
    assert!(
        stderr(&out).contains("ghost@example.test") && stderr(&out).contains("--force"),
        "{}",
        stderr(&out)
    );
    for fine in [
        vec!["sales@example.test", "ann"],
        vec![
            "team@example.test",
            "sales",
            "far@remote.test",
            "|/bin/true",
        ],
    ] {
        let mut args = vec!["alias", "add"];
        args.extend(fine);
        ok("alias add", &tree.postroom(&args));
    }
    ok(
        "alias add --force",
        &tree.postroom(&["alias", "add", "info@example.test", "ghost", "--force"]),
    );
    let check = tree.postroom(&["check"]);
    assert!(!check.status.success());
    assert!(
        stdout(&check).contains("aliases:4: alias info@example.test: no such user here"),
        "{}",
        stdout(&check)
    );
}

/// `postroom demo` in `root` on ports shifted by `offset`, without
/// `--verbose`, its stdout and stderr kept; stopped (with its servers) when
/// dropped.
fn demo(root: &std::path::Path, offset: u16) -> (Server, Log) {
    use std::os::unix::process::CommandExt;
    let mut child = Command::new(bin("postroom"))
        .arg("demo")
        .arg("--root")
        .arg(root)
        .args(["--port-offset", &offset.to_string()])
        .process_group(0)
        .env("POSTROOM_LOG", "info")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let said = Log::read(child.stdout.take().unwrap());
    let log = Log::capture(&mut child);
    let server = Server {
        child,
        log,
        port: 0,
        tls_port: 0,
        base: offset,
    };
    (server, said)
}

#[test]
fn a_demo_on_taken_ports_stops_and_names_the_port() {
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = taken.local_addr().unwrap().port();
    // The demo's SMTP port (2525 + offset) is the one taken.
    let dir = tempfile::tempdir().unwrap();
    let (mut demo, said) = demo(&dir.path().join("demo"), port - 2525);
    let status = wait_until("the demo to stop", Duration::from_secs(30), || {
        demo.child.try_wait().unwrap()
    });
    assert!(!status.success());
    wait_until("its reason", Duration::from_secs(5), || {
        demo.log.ended().then_some(())
    });
    let reason = demo.log.text();
    assert!(
        reason.contains(&format!("127.0.0.1:{port}")) && reason.contains("--port-offset"),
        "{reason}"
    );
    assert!(
        !said.text().contains("password"),
        "no password for no server"
    );
    drop(taken);
}

#[test]
fn the_running_demo_prints_one_summary_and_logs_to_a_file() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().join("demo");
    for _ in 0..5 {
        let base = 10_000 + rand::random::<u16>() % 19_000;
        let (demo, said) = demo(&root, base);
        let running = wait_until("the demo to start or stop", Duration::from_secs(60), || {
            if said.text().contains("running; press Ctrl-C") {
                Some(true)
            } else if said.ended() {
                Some(false)
            } else {
                None
            }
        });
        if !running {
            let reason = demo.log.text();
            assert!(reason.contains("already in use"), "{reason}");
            continue; // another test holds one of these ports
        }
        let summary = said.text();
        assert!(summary.contains("password:"), "{summary}");
        assert!(
            summary.contains(&format!("logs: {}", root.join("demo.log").display())),
            "{summary}"
        );
        assert!(!summary.contains("listening on"), "{summary}");
        assert!(
            !demo.log.text().contains("listening on"),
            "logs stay off the terminal"
        );
        let log = std::fs::read_to_string(root.join("demo.log")).unwrap();
        assert!(
            log.matches("listening on").count() >= 7,
            "every server was up before the summary: {log}"
        );
        // The servers answer: the SMTP port greets.
        let mut smtp = std::net::TcpStream::connect(("127.0.0.1", 2525 + base)).unwrap();
        let mut greeting = [0u8; 4];
        std::io::Read::read_exact(&mut smtp, &mut greeting).unwrap();
        assert_eq!(&greeting, b"220 ");
        return;
    }
    panic!("every base port tried was taken");
}

#[test]
fn the_demo_summary_explains_itself() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().join("demo");
    let setup = |root: &std::path::Path| {
        let out = Command::new(bin("postroom"))
            .args(["demo", "--setup-only", "--root", root.to_str().unwrap()])
            .output()
            .unwrap();
        ok("demo", &out);
        stdout(&out)
    };
    let first = setup(&root);
    assert!(first.contains("a fresh tree"), "{first}");
    assert!(first.contains("self-signed certificate"), "{first}");
    assert!(
        first.contains(&root.join("tls/cert.pem").display().to_string()),
        "{first}"
    );
    let fingerprint = first
        .split("SHA-256 ")
        .nth(1)
        .and_then(|t| t.split(')').next())
        .expect("a fingerprint");
    assert_eq!(fingerprint.split(':').count(), 32, "{fingerprint}");
    for command in [
        "swaks --server 127.0.0.1:2587 --tls --auth-user",
        "imaps://",
        "pop3s://",
    ] {
        assert!(first.contains(command), "{command}: {first}");
    }
    let again = setup(&root);
    assert!(again.contains("reused the tree"), "{again}");
}

#[test]
fn header_only_messages_are_stored_with_their_empty_line() {
    let tree = Tree::new();
    tree.add_user("ann@example.test");
    ok(
        "inject",
        &tree.inject(&["ann@example.test"], b"Subject: injected\n"),
    );
    let session = |input: &[u8]| {
        let mut command = Command::new(bin("smtp-recv"));
        command
            .arg("--config")
            .arg(&tree.config)
            .env("REMOTE_ADDR", "192.0.2.1");
        let out = run_with(command, input);
        assert!(stdout(&out).contains("250 2.0.0 ok"), "{}", stdout(&out));
    };
    session(b"EHLO c\r\nMAIL FROM:<x@remote.test>\r\nRCPT TO:<ann@example.test>\r\nDATA\r\nSubject: data\r\n.\r\nQUIT\r\n");
    session(b"EHLO c\r\nMAIL FROM:<x@remote.test>\r\nRCPT TO:<ann@example.test>\r\nBDAT 15 LAST\r\nSubject: bdat\r\nQUIT\r\n");
    session(b"EHLO c\r\nMAIL FROM:<x@remote.test>\r\nRCPT TO:<ann@example.test>\r\nDATA\r\nSubject: body\r\nno blank line before this\r\n.\r\nQUIT\r\n");
    let stored = maildir_texts(&tree.maildir("ann"));
    assert_eq!(stored.len(), 4);
    for subject in ["injected", "data", "bdat"] {
        let message = stored
            .iter()
            .find(|m| m.contains(&format!("Subject: {subject}")))
            .unwrap();
        // All header, then its empty line (mail-inject's own fields come
        // after the message's, so the Subject need not be the last).
        assert!(
            message.contains(&format!("\nSubject: {subject}\n"))
                && message.find("\n\n") == Some(message.len() - 2),
            "{message:?}"
        );
    }
    let body = stored.iter().find(|m| m.contains("Subject: body")).unwrap();
    assert!(
        body.contains("Subject: body\n\nno blank line before this\n"),
        "{body:?}"
    );
}

/// An AUTH PLAIN line for the tests' `{PLAIN}secret` users.
fn auth_plain(user: &str) -> String {
    use base64::Engine;
    let token =
        base64::engine::general_purpose::STANDARD.encode(format!("\0{user}\0secret").as_bytes());
    format!("AUTH PLAIN {token}\r\n")
}

#[test]
fn submission_adds_a_missing_date_and_message_id_and_a_relay_does_not() {
    let tree = Tree::new();
    tree.add_user("ann@example.test");
    let server = Server::start(&tree, "smtp-recv", &["--submission"]);
    let script = r#"
import os, smtplib
s = smtplib.SMTP("127.0.0.1", int(os.environ["PORT"]), timeout=10)
s.ehlo("client.test")
s.login("ann@example.test", "secret")
s.sendmail("ann@example.test", ["ann@example.test"], b"Subject: submitted\r\n\r\nhi\r\n")
s.quit()
"#;
    let out = Command::new("python3")
        .args(["-c", script])
        .env("PORT", server.port.to_string())
        .output()
        .unwrap();
    ok("python3", &out);
    let mut relay = Command::new(bin("smtp-recv"));
    relay
        .arg("--config")
        .arg(&tree.config)
        .env("REMOTE_ADDR", "192.0.2.1");
    let out = run_with(
        relay,
        b"EHLO c\r\nMAIL FROM:<x@remote.test>\r\nRCPT TO:<ann@example.test>\r\nDATA\r\nSubject: relayed\r\n\r\nhi\r\n.\r\nQUIT\r\n",
    );
    assert!(stdout(&out).contains("250 2.0.0 ok"), "{}", stdout(&out));
    let stored = maildir_texts(&tree.maildir("ann"));
    let submitted = stored.iter().find(|m| m.contains("submitted")).unwrap();
    assert!(submitted.contains("\nDate: "), "{submitted}");
    assert!(
        submitted.contains("\nMessage-ID: <") && submitted.contains("@mail.example.test>"),
        "{submitted}"
    );
    let relayed = stored.iter().find(|m| m.contains("relayed")).unwrap();
    assert!(
        !relayed.contains("\nDate: ") && !relayed.contains("Message-ID"),
        "{relayed}"
    );
}

#[test]
fn non_ascii_addresses_need_smtputf8_and_the_received_line_says_so() {
    let tree = Tree::new();
    tree.add_user("ann@example.test");
    let session = |input: String| {
        let mut command = Command::new(bin("smtp-recv"));
        command
            .arg("--config")
            .arg(&tree.config)
            .env("REMOTE_ADDR", "127.0.0.1");
        stdout(&run_with(command, input.as_bytes()))
    };
    let said = session("EHLO c\r\nMAIL FROM:<jörg@remote.test>\r\nQUIT\r\n".into());
    assert!(said.contains("553 5.6.7"), "{said}");
    let said = session(
        "EHLO c\r\nMAIL FROM:<x@remote.test>\r\nRCPT TO:<jörg@example.test>\r\nQUIT\r\n".into(),
    );
    assert!(said.contains("553 5.6.7"), "{said}");
    let said = session(
        "EHLO c\r\nMAIL FROM:<jörg@remote.test> SMTPUTF8\r\nRCPT TO:<jörg@example.test>\r\nQUIT\r\n"
            .into(),
    );
    assert!(!said.contains("5.6.7"), "{said}");
    assert!(said.contains("250 2.1.0"), "{said}");
    let said = session(format!(
        "EHLO c\r\n{}MAIL FROM:<ann@example.test> SMTPUTF8\r\nRCPT TO:<ann@example.test>\r\n\
         DATA\r\nSubject: utf8\r\n\r\nhi\r\n.\r\nQUIT\r\n",
        auth_plain("ann@example.test")
    ));
    assert!(said.contains("250 2.0.0 ok"), "{said}");
    let stored = maildir_texts(&tree.maildir("ann"));
    // RFC 6531 §3.7.3: UTF8SMTPA, not ESMTPA (UTF8SMTPSA under TLS).
    assert!(stored[0].contains("with UTF8SMTPA\n"), "{}", stored[0]);
}

#[test]
fn quotas_are_set_and_shown_from_the_shell() {
    let tree = Tree::new();
    tree.add_user("ann@example.test");
    tree.add_user("bob@example.test");
    ok(
        "inject",
        &tree.inject(&["ann@example.test"], b"Subject: one\n\nhello\n"),
    );
    ok(
        "quota",
        &tree.postroom(&["user", "quota", "ann@example.test", "2M"]),
    );
    let users = std::fs::read_to_string(tree.root().join("users")).unwrap();
    assert!(
        users.contains("userdb_quota_rule=*:storage=2097152B"),
        "{users}"
    );
    let list = stdout(&tree.postroom(&["user", "list"]));
    let ann = list.lines().find(|l| l.starts_with("ann@")).unwrap();
    assert!(
        ann.contains("quota 2M") && ann.contains("in 1 message(s)"),
        "{list}"
    );
    let bob = list.lines().find(|l| l.starts_with("bob@")).unwrap();
    assert!(
        bob.contains("quota none") && bob.contains("used 0B"),
        "{list}"
    );
    let json = tree.postroom(&["user", "list", "--json"]);
    let rows: serde_json::Value = serde_json::from_slice(&json.stdout).unwrap();
    assert_eq!(rows[0]["address"], "ann@example.test");
    assert_eq!(rows[0]["quota"], 2 * 1024 * 1024);
    assert_eq!(rows[0]["messages"], 1);
    assert!(rows[0]["used"].as_u64().unwrap() > 0);
    assert!(rows[1]["quota"].is_null());
    ok(
        "quota none",
        &tree.postroom(&["user", "quota", "ann@example.test", "none"]),
    );
    let json = tree.postroom(&["user", "list", "--json"]);
    let rows: serde_json::Value = serde_json::from_slice(&json.stdout).unwrap();
    assert!(rows[0]["quota"].is_null(), "{rows}");
    let out = tree.postroom(&["user", "quota", "ghost@example.test", "1G"]);
    assert!(!out.status.success() && stderr(&out).contains("not a user"));
}

/// The JSON objects a program logged on stderr.
fn json_lines(text: &str) -> Vec<serde_json::Value> {
    text.lines()
        .map(|line| serde_json::from_str(line).unwrap_or_else(|e| panic!("{e}: not JSON: {line}")))
        .collect()
}

#[test]
fn json_logs_carry_one_summary_per_message_for_log_summarisers() {
    let tree = Tree::new();
    tree.add_user("ann@example.test");
    let mut inject = tree.inject_command(&["-f", "bob@remote.test", "ann@example.test"]);
    inject
        .env("POSTROOM_LOG", "info")
        .env("POSTROOM_LOG_FORMAT", "json");
    let out = run_with(inject, b"Subject: logged\n\nhi\n");
    ok("mail-inject", &out);
    let events = json_lines(&stderr(&out));
    assert!(
        events.iter().all(|e| e["program"] == "mail-inject"),
        "{events:?}"
    );
    let received = events
        .iter()
        .find(|e| e["message"] == "received")
        .expect("a received event");
    assert_eq!(received["from"], "bob@remote.test");
    assert_eq!(received["nrcpt"], 1);
    assert!(received["size"].as_u64().unwrap() > 0);
    let id = received["queue_id"].as_str().unwrap();
    let delivery = events
        .iter()
        .find(|e| e["message"] == "delivery")
        .expect("a delivery event");
    assert_eq!(delivery["queue_id"], id);
    assert_eq!(delivery["from"], "bob@remote.test");
    assert_eq!(delivery["to"], "ann@example.test");
    assert_eq!(delivery["relay"], "local");
    assert_eq!(delivery["status"], "sent");
    assert!(
        delivery["delay"].is_u64() && delivery["size"].is_u64(),
        "{delivery}"
    );
}

#[test]
fn journald_logs_go_to_the_journal_socket_with_searchable_fields() {
    let socket_path = std::path::Path::new("/run/systemd/journal/socket");
    if socket_path.exists() {
        // A real journal: the fields land there; reading it back needs
        // journalctl and its permissions, so only the exit is checked.
        let tree = Tree::new();
        tree.add_user("ann@example.test");
        let mut inject = tree.inject_command(&["ann@example.test"]);
        inject.env("POSTROOM_LOG_FORMAT", "journald");
        ok("mail-inject", &run_with(inject, b"Subject: j\n\nhi\n"));
        return;
    }
    // No journal here: stand in for it on its socket, as root can.
    if std::fs::create_dir_all(socket_path.parent().unwrap()).is_err() {
        eprintln!("cannot create /run/systemd/journal (not root): nothing to check");
        return;
    }
    let journal = std::os::unix::net::UnixDatagram::bind(socket_path).unwrap();
    struct Remove<'a>(&'a std::path::Path);
    impl Drop for Remove<'_> {
        fn drop(&mut self) {
            let _ = std::fs::remove_file(self.0);
        }
    }
    let _remove = Remove(socket_path);
    journal
        .set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    let tree = Tree::new();
    tree.add_user("ann@example.test");
    let mut inject = tree.inject_command(&["-f", "bob@remote.test", "ann@example.test"]);
    inject
        .env("POSTROOM_LOG", "info")
        .env("POSTROOM_LOG_FORMAT", "journald");
    let out = run_with(inject, b"Subject: journal\n\nhi\n");
    ok("mail-inject", &out);
    assert!(!stderr(&out).contains("received"), "{}", stderr(&out));
    let mut records = Vec::new();
    let mut buf = vec![0u8; 65536];
    journal.set_nonblocking(true).unwrap();
    while let Ok(n) = journal.recv(&mut buf) {
        records.push(journal_fields(&buf[..n]));
    }
    let delivery = records
        .iter()
        .find(|r| r.get("MESSAGE").map(String::as_str) == Some("delivery"))
        .unwrap_or_else(|| panic!("no delivery record in {records:?}"));
    for (field, value) in [
        ("SYSLOG_IDENTIFIER", "mail-inject"),
        ("TO", "ann@example.test"),
        ("FROM", "bob@remote.test"),
        ("STATUS", "sent"),
        ("RELAY", "local"),
    ] {
        assert_eq!(
            delivery.get(field).map(String::as_str),
            Some(value),
            "{delivery:?}"
        );
    }
    assert!(delivery.contains_key("QUEUE_ID"), "{delivery:?}");
}

/// The fields of one journal native-protocol datagram: `KEY=value\n`, or
/// `KEY\n`, a 64-bit little-endian length, the value and `\n`.
fn journal_fields(mut data: &[u8]) -> HashMap<String, String> {
    let mut fields = HashMap::new();
    while let Some(end) = data.iter().position(|&b| b == b'\n' || b == b'=') {
        let key = String::from_utf8_lossy(&data[..end]).into_owned();
        let value;
        if data[end] == b'=' {
            let rest = &data[end + 1..];
            let stop = rest.iter().position(|&b| b == b'\n').unwrap_or(rest.len());
            value = &rest[..stop];
            data = rest.get(stop + 1..).unwrap_or_default();
        } else {
            let len = u64::from_le_bytes(data[end + 1..end + 9].try_into().unwrap()) as usize;
            value = &data[end + 9..end + 9 + len];
            data = data.get(end + 10 + len..).unwrap_or_default();
        }
        fields.insert(key, String::from_utf8_lossy(value).into_owned());
    }
    fields
}

#[test]
fn an_ip_address_as_sni_is_not_a_warning() {
    // Common clients send the server's IP address as SNI on every
    // connection; rustls warns about it each time.
    let tree = Tree::new();
    for (level, shown) in [("info", false), ("debug", true)] {
        let mut server = Server::start_with("smtp-recv", 2, |_| {
            let mut c = Command::new(bin("smtp-recv"));
            c.arg("--config")
                .arg(&tree.config)
                .args(["--listen", "127.0.0.1:0", "--listen-tls", "127.0.0.1:0"])
                .env("POSTROOM_LOG", level);
            c
        });
        let out = sni_client(server.tls_port);
        assert!(stdout(&out).contains("220 "), "{}", stderr(&out));
        let _ = server.terminate();
        wait_until("the log to end", Duration::from_secs(10), || {
            server.log.ended().then_some(())
        });
        let log = server.log.text();
        let line = log.lines().find(|l| l.contains("Illegal SNI"));
        match (shown, line) {
            (false, None) => {}
            (true, Some(line)) => assert!(line.contains("DEBUG"), "{line}"),
            _ => panic!("at {level}: {log}"),
        }
    }
}

/// `openssl s_client` with the IP address as SNI: one SMTPS session.
fn sni_client(port: u16) -> Output {
    let mut c = Command::new("openssl");
    c.args([
        "s_client",
        "-connect",
        &format!("127.0.0.1:{port}"),
        "-servername",
        "127.0.0.1",
        "-quiet",
    ]);
    run_with(c, b"QUIT\r\n")
}

#[test]
fn bulk_user_add_hashes_on_every_core_and_shows_progress_on_a_terminal() {
    let tree = Tree::new();
    let list: String = (0..8)
        .map(|i| format!("user{i}@example.test password-{i}\n"))
        .collect();
    let file = tree.root().join("new-users");
    std::fs::write(&file, list).unwrap();
    // `script` gives the command a terminal, as an admin's shell would.
    let command = format!(
        "{} --config {} user add --file {}",
        bin("postroom").display(),
        tree.config.display(),
        file.display()
    );
    let out = Command::new("script")
        .args(["-qec", &command, "/dev/null"])
        .output()
        .unwrap();
    ok("user add --file under script", &out);
    let screen = stdout(&out);
    assert!(screen.contains("hashing passwords"), "{screen:?}");
    assert!(screen.contains("added 8 user(s)"), "{screen:?}");
    let users = postroom::directory::users::Users::load(&tree.root().join("users")).unwrap();
    assert_eq!(users.len(), 8);
    for i in [0, 7] {
        let address = format!("user{i}@example.test");
        assert!(
            users
                .get(&address)
                .unwrap()
                .password
                .starts_with("{ARGON2ID}"),
            "hashed with the default scheme"
        );
        assert!(
            users
                .authenticate(&address, &format!("password-{i}"))
                .unwrap()
                .is_some()
        );
    }
    // Without a terminal, no bar: stdout stays one line.
    let again: String = (8..10)
        .map(|i| format!("user{i}@example.test password-{i}\n"))
        .collect();
    std::fs::write(&file, again).unwrap();
    let out = tree.postroom(&["user", "add", "--file", file.to_str().unwrap()]);
    ok("user add --file", &out);
    assert_eq!(stdout(&out), "added 2 user(s)\n");
    assert!(!stderr(&out).contains("hashing"), "{}", stderr(&out));
}

#[test]
fn init_puts_the_config_where_the_install_layout_wants_it() {
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("etc/postroom/postroom.toml");
    let tree = dir.path().join("var/lib/postroom");
    let run = |args: &[&str]| {
        Command::new(bin("postroom"))
            .arg("--config")
            .arg(&config)
            .args(args)
            .output()
            .unwrap()
    };
    ok(
        "init",
        &run(&["init", tree.to_str().unwrap(), "--domain", "example.org"]),
    );
    let text = std::fs::read_to_string(&config).unwrap();
    assert!(
        text.contains(&format!("users = \"{}/users\"", tree.display())),
        "{text}"
    );
    ok(
        "user add",
        &run(&["user", "add", "ann@example.org", "--password", "{PLAIN}x"]),
    );
    assert!(tree.join("mail/example.org/ann/new").is_dir());
    assert_eq!(mode(&tree.join("users")), 0o640);
    ok("check", &run(&["check"]));
}

/// An outside review: under `umask 000` init made the tree, the queue and
/// the aliases file writable by everyone (any local user could add a
/// `"|command"` alias run as the tree's owner), and `postroom check`
/// called it healthy; nor did check name a world-readable DKIM key or
/// users index (the password hashes). Every program now keeps group and
/// others from writing what it creates, and check names both.
#[test]
fn a_permissive_umask_makes_nothing_writable_and_check_names_open_files() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().join("root");
    let out = Command::new("sh")
        .arg("-c")
        .arg(format!(
            "umask 000 && exec {} init {} --domain example.test",
            bin("postroom").display(),
            root.display()
        ))
        .output()
        .unwrap();
    ok("init", &out);
    let config = root.join("postroom.toml");
    // check looks up the DKIM record: on a loopback port nobody answers.
    let mut text = std::fs::read_to_string(&config).unwrap();
    text.push_str("\n[dns]\nnameservers = [\"127.0.0.1:9\"]\ntimeout = \"1s\"\n");
    std::fs::write(&config, text).unwrap();
    let postroom = |args: &[&str]| {
        Command::new("sh")
            .arg("-c")
            .arg("umask 000 && exec \"$@\"")
            .arg("sh")
            .arg(bin("postroom"))
            .arg("--config")
            .arg(&config)
            .args(args)
            .output()
            .unwrap()
    };
    ok(
        "user add",
        &postroom(&["user", "add", "ann@example.test", "--password", "{PLAIN}x"]),
    );
    ok(
        "alias add",
        &postroom(&["alias", "add", "root@example.test", "ann"]),
    );
    ok("keygen", &postroom(&["dkim", "keygen", "example.test"]));
    let mut open = Vec::new();
    let mut walk = vec![root.clone()];
    while let Some(path) = walk.pop() {
        let meta = std::fs::symlink_metadata(&path).unwrap();
        if meta.permissions().mode() & 0o022 != 0 {
            open.push(format!("{} {:o}", path.display(), mode(&path)));
        }
        if meta.is_dir() {
            walk.extend(std::fs::read_dir(&path).unwrap().map(|e| e.unwrap().path()));
        }
    }
    assert!(open.is_empty(), "writable by others: {open:#?}");
    let said = stdout(&postroom(&["check"]));
    assert!(
        !said.contains("by everyone") && !said.contains("by its group"),
        "{said}"
    );

    let loaded = postroom::config::Config::load(&config).unwrap();
    let key = loaded.path(&loaded.dkim[0].key);
    std::fs::set_permissions(&key, std::fs::Permissions::from_mode(0o644)).unwrap();
    let index = root.join("users.index");
    std::fs::set_permissions(&index, std::fs::Permissions::from_mode(0o644)).unwrap();
    let aliases = root.join("aliases");
    std::fs::set_permissions(&aliases, std::fs::Permissions::from_mode(0o666)).unwrap();
    let out = postroom(&["check"]);
    assert!(!out.status.success(), "{}", stdout(&out));
    let said = stdout(&out);
    for named in [&key, &index] {
        assert!(
            said.contains(&format!(
                "warning: {} is readable by everyone",
                named.display()
            )),
            "{said}"
        );
    }
    assert!(
        said.contains(&format!(
            "problem: {} is writable by everyone",
            aliases.display()
        )),
        "{said}"
    );
}
