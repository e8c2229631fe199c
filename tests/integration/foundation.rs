//! The foundation's promises, tested on real binaries and real trees:
//! nothing lost under SIGKILL, no lost or duplicate names under concurrent
//! writers, aliases end to end, hostile envelope data refused, the admin
//! commands at scale.

use std::collections::HashMap;
use std::fs;
use std::io::Write;
use std::process::Command;
use std::time::{Duration, Instant};

use postroom::proto::address::{Address, ReversePath};
use postroom::store::maildir::{Delivered, Maildir, Message};
use postroom::store::queue::{Envelope, Recipient, Route};

use crate::util::{Tree, bin, maildir_files, stderr, stdout};

fn message(marker: &str) -> Vec<u8> {
    // The trailer proves a file is whole: a half-written copy lacks it.
    format!(
        "Subject: {marker}\n\nbody of {marker}\n{}\nEND-{marker}\n",
        "x".repeat(4000)
    )
    .into_bytes()
}

/// Counts each marker's whole copies in the maildir and the queue, and
/// fails on any half copy.
fn census(tree: &Tree, user: &str) -> HashMap<String, usize> {
    let mut seen: HashMap<String, usize> = HashMap::new();
    let mut count = |text: &str, origin: &std::path::Path| {
        let marker = text
            .lines()
            .find_map(|l| l.strip_prefix("Subject: "))
            .unwrap_or_else(|| panic!("no subject in {}", origin.display()))
            .trim()
            .to_string();
        assert!(
            text.contains(&format!("END-{marker}")),
            "half a message visible in {}",
            origin.display()
        );
        *seen.entry(marker).or_default() += 1;
    };
    for file in maildir_files(&tree.maildir(user)) {
        count(&fs::read_to_string(&file).unwrap(), &file);
    }
    let queue = tree.queue();
    for id in queue.list().unwrap() {
        let m = queue.read(&id).expect("every committed queue file parses");
        let body = postroom::store::queue::read_body(&m).unwrap();
        count(&String::from_utf8_lossy(&body), m.path());
    }
    seen
}

#[test]
fn sigkill_of_mail_inject_loses_no_acknowledged_message_and_shows_no_half_one() {
    let tree = Tree::new();
    tree.add_user("crash@example.test");
    // Kill moments are drawn from twice the time an undisturbed injection
    // takes here, so the test lands kills in every phase on a slow or a
    // busy machine alike.
    let timing = Instant::now();
    for i in 0..3 {
        assert!(
            tree.inject(
                &["-odq", "crash@example.test"],
                &message(&format!("warm{i}"))
            )
            .status
            .success()
        );
    }
    let window = (timing.elapsed().as_micros() as u64 / 3 * 2).max(1000);
    let mut acknowledged: Vec<String> = (0..3).map(|i| format!("warm{i}")).collect();
    let mut killed = 0;
    let deadline = Instant::now() + Duration::from_secs(60);
    for i in 0..150 {
        if Instant::now() > deadline {
            break;
        }
        let marker = format!("m{i}");
        // Every third run queues only, so kills land in the queue phase and
        // in the delivery phase alike.
        let args: &[&str] = if i % 3 == 0 {
            &["-odq", "crash@example.test"]
        } else {
            &["crash@example.test"]
        };
        let mut child = tree.inject_command(args).spawn().unwrap();
        let mut stdin = child.stdin.take().unwrap();
        let _ = stdin.write_all(&message(&marker));
        drop(stdin);
        // On purpose: the kill lands at a random moment of the injection.
        std::thread::sleep(Duration::from_micros(rand::random::<u64>() % window));
        let _ = child.kill();
        let status = child.wait().unwrap();
        if status.success() {
            acknowledged.push(marker);
        } else {
            killed += 1;
        }
    }
    eprintln!("{killed} injectors killed, {} finished", acknowledged.len());
    assert!(
        killed > 10,
        "the test must actually kill writers (killed {killed})"
    );
    assert!(
        acknowledged.len() > 10,
        "and let some finish (finished {})",
        acknowledged.len()
    );

    let seen = census(&tree, "crash");
    for marker in &acknowledged {
        assert_eq!(
            seen.get(marker),
            Some(&1),
            "acknowledged {marker} must be there exactly once"
        );
    }

    // The tree is healthy; debris of killed writers is reported, then cleaned.
    let check = tree.postroom(&["check", "--fix"]);
    assert!(
        check.status.success(),
        "check: {}{}",
        stdout(&check),
        stderr(&check)
    );
    assert_eq!(
        fs::read_dir(tree.root().join("queue/tmp")).unwrap().count(),
        0
    );

    // A runner finishing what the killed injectors left must not duplicate
    // anything that was already delivered before the kill.
    let config = tree.load_config();
    let directory = postroom::directory::aliases::Directory::load(&config).unwrap();
    let queue = tree.queue();
    for id in queue.list().unwrap() {
        let mut locked = queue.lock(&id).unwrap().expect("no one else holds it");
        postroom::delivery::deliver::deliver_local(&config, &directory, &mut locked, true).unwrap();
        assert!(locked.message.is_finished());
        locked.remove(true).unwrap();
    }
    for (marker, copies) in census(&tree, "crash") {
        assert_eq!(copies, 1, "{marker} delivered {copies} times");
    }
}

#[test]
fn eight_concurrent_writers_into_one_maildir_and_the_queue() {
    let tree = Tree::new();
    tree.add_user("busy@example.test");
    let maildir = Maildir::new(tree.maildir("busy"));
    let threads: Vec<_> = (0..8)
        .map(|t| {
            let maildir = maildir.clone();
            std::thread::spawn(move || {
                for i in 0..50 {
                    let body = message(&format!("t{t}-{i}"));
                    let mut reader = &body[..];
                    let outcome = maildir
                        .deliver(Message {
                            prepend: b"",
                            body: &mut reader,
                            base_name: None,
                            search_cur: false,
                            end_header: false,
                            as_given: false,
                            quota: None,
                        })
                        .unwrap();
                    assert!(matches!(outcome, Delivered::New(_)));
                }
            })
        })
        .collect();
    // Meanwhile eight injector processes write into the queue.
    let injectors: Vec<_> = (0..8)
        .map(|p| {
            let config = tree.config.clone();
            std::thread::spawn(move || {
                for i in 0..15 {
                    let mut child = Command::new(bin("mail-inject"))
                        .args([
                            "--config",
                            config.to_str().unwrap(),
                            "-odq",
                            "busy@example.test",
                        ])
                        .stdin(std::process::Stdio::piped())
                        .spawn()
                        .unwrap();
                    child
                        .stdin
                        .take()
                        .unwrap()
                        .write_all(&message(&format!("p{p}-{i}")))
                        .unwrap();
                    assert!(child.wait().unwrap().success());
                }
            })
        })
        .collect();
    for t in threads.into_iter().chain(injectors) {
        t.join().unwrap();
    }
    let seen = census(&tree, "busy");
    assert_eq!(
        seen.len(),
        8 * 50 + 8 * 15,
        "every message, no name collision"
    );
    assert!(seen.values().all(|&n| n == 1));
    assert_eq!(tree.queue().list().unwrap().len(), 8 * 15);
}

#[test]
fn aliases_lists_includes_pipes_and_catch_all_end_to_end() {
    let tree = Tree::new();
    for user in ["ann", "bob", "cat"] {
        tree.add_user(&format!("{user}@example.test"));
    }
    let root = tree.root();
    let pipe_out = root.join("pipe-output");
    fs::write(root.join("team.list"), "bob@example.test\n# comment\ncat\n").unwrap();
    let aliases = format!(
        "team@example.test: ann, :include:team.list\n\
         bot@example.test: \"|cat > {}\"\n\
         everyone@example.test: team@example.test, bot@example.test,\n  ann@example.test\n",
        pipe_out.display()
    );
    fs::write(root.join("aliases"), aliases).unwrap();

    let out = tree.inject(
        &["-f", "sender@remote.test", "everyone@example.test"],
        b"Subject: all\n\nhello\n",
    );
    assert!(out.status.success(), "{}", stderr(&out));
    for user in ["ann", "bob", "cat"] {
        let files = maildir_files(&tree.maildir(user));
        assert_eq!(
            files.len(),
            1,
            "{user} gets exactly one copy (ann is named twice)"
        );
        let text = fs::read_to_string(&files[0]).unwrap();
        assert!(
            text.starts_with("Return-Path: <sender@remote.test>\nDelivered-To: "),
            "{text}"
        );
    }
    let piped = fs::read_to_string(&pipe_out).unwrap();
    assert!(
        piped.contains("Subject: all\n") && piped.contains("hello\n"),
        "{piped}"
    );
    assert!(
        tree.queue().list().unwrap().is_empty(),
        "all delivered, nothing left"
    );

    // Unknown users are refused at injection, with the reason.
    let out = tree.inject(&["nobody@example.test"], b"Subject: x\n\n");
    assert_eq!(out.status.code(), Some(67), "{}", stderr(&out));
    assert!(
        stderr(&out).contains("nobody@example.test"),
        "{}",
        stderr(&out)
    );

    // A catch-all takes what no user or alias does.
    fs::write(root.join("aliases"), "@example.test: cat\n").unwrap();
    let out = tree.inject(&["whoever@example.test"], b"Subject: caught\n\n");
    assert!(out.status.success(), "{}", stderr(&out));
    assert_eq!(maildir_files(&tree.maildir("cat")).len(), 2);

    // A loop is refused, naming the chain.
    fs::write(
        root.join("aliases"),
        "a@example.test: b@example.test\nb@example.test: a@example.test\n",
    )
    .unwrap();
    let out = tree.inject(&["a@example.test"], b"Subject: loop\n\n");
    assert_eq!(out.status.code(), Some(67));
    assert!(
        stderr(&out).to_lowercase().contains("loop"),
        "{}",
        stderr(&out)
    );
    let check = tree.postroom(&["check"]);
    assert!(!check.status.success());
    assert!(stdout(&check).contains("loop"), "{}", stdout(&check));
}

#[test]
fn hostile_envelope_data_never_reaches_the_queue() {
    let tree = Tree::new();
    tree.add_user("victim@example.test");
    let hostile = [
        vec![
            "-f",
            "evil@x.test\nrcpt local victim@example.test",
            "victim@example.test",
        ],
        vec![
            "-f",
            "evil@x.test\rrcpt pipe x@example.test |sh",
            "victim@example.test",
        ],
        vec!["victim@example.test\nrcpt local root@example.test"],
        vec![
            "-V",
            "envid\nrcpt local victim@example.test",
            "victim@example.test",
        ],
        vec!["-N", "SUCCESS\r\nx", "victim@example.test"],
    ];
    for args in hostile {
        let out = tree.inject(&args, b"Subject: x\n\n");
        assert!(!out.status.success(), "{args:?} must be refused");
        assert!(!stderr(&out).is_empty());
    }
    // -t takes recipients from headers; encoded line breaks in them stay data.
    let out = tree.inject(
        &["-t", "-odq"],
        b"To: =?utf-8?Q?x=0D=0Arcpt_local_root@example.test?= <victim@example.test>\nSubject: t\n\n",
    );
    assert!(out.status.success(), "{}", stderr(&out));
    let queue = tree.queue();
    let ids = queue.list().unwrap();
    assert_eq!(ids.len(), 1);
    let raw = fs::read_to_string(queue.read(&ids[0]).unwrap().path()).unwrap();
    let envelope = raw.split("\n\n").next().unwrap();
    let keys = [
        "postroom-queue",
        "id",
        "length",
        "arrived",
        "sender",
        "protocol",
        "auth",
        "rcpt",
        "smtputf8",
        "priority",
    ];
    for line in envelope.lines() {
        let key = line.split(' ').next().unwrap();
        assert!(keys.contains(&key), "unexpected envelope line {line:?}");
    }
    assert_eq!(envelope.matches("\nrcpt ").count(), 1, "{envelope}");

    // The library refuses the same at the type level.
    assert!(Address::parse("a@b\r\nrcpt local c@d").is_err());
    assert!(ReversePath::parse("a@b\n").is_err());
    let _ = Envelope::new(
        ReversePath::Null,
        vec![Recipient::new(Route::Local, Address::parse("a@b").unwrap())],
    );
}

/// Regression: a malformed recipient exited 67 (EX_NOUSER) where
/// mail-inject(8) promises 64 (EX_USAGE); 67 is for an unknown one.
#[test]
fn mail_inject_exits_64_for_a_malformed_recipient_and_67_for_an_unknown_one() {
    let tree = Tree::new();
    tree.add_user("ann@example.test");
    for bad in [
        "a@@b.test",
        "ann@",
        "@example.test",
        "ann\u{1}@example.test",
    ] {
        for args in [vec![bad], vec!["ann@example.test", bad]] {
            let out = tree.inject(&args, b"Subject: x\n\ny\n");
            assert_eq!(out.status.code(), Some(64), "{args:?}: {}", stderr(&out));
        }
    }
    // A malformed address is named before an unknown one decides the code.
    let out = tree.inject(&["nobody@example.test", "a@@b.test"], b"Subject: x\n\ny\n");
    assert_eq!(out.status.code(), Some(64), "{}", stderr(&out));
    let out = tree.inject(&["nobody@example.test"], b"Subject: x\n\ny\n");
    assert_eq!(out.status.code(), Some(67), "{}", stderr(&out));
    assert!(maildir_files(&tree.maildir("ann")).is_empty());
    assert!(tree.queue().list().unwrap().is_empty());
}

/// Regression: mail-inject put the From, Date and Message-ID it adds
/// between its Received line (first, RFC 5321 §4.4) and the message's own
/// fields; Postfix adds them after the message's fields. And with the
/// null sender it wrote `From: <>`, which RFC 5322 §3.6.2 does not allow:
/// Postfix writes MAILER-DAEMON of the host.
#[test]
fn mail_inject_adds_its_fields_below_received_and_a_null_sender_is_mailer_daemon() {
    let tree = Tree::new();
    tree.add_user("carol@example.test");
    let out = tree.inject(&["-f", "<>", "carol@example.test"], b"Subject: x\n\ny\n");
    assert!(out.status.success(), "{}", stderr(&out));
    let out = tree.inject(
        &["-f", "<>", "-F", "Cron Daemon", "carol@example.test"],
        b"Subject: named\nDate: Thu, 1 Jan 2026 00:00:00 +0000\n\ny\n",
    );
    assert!(out.status.success(), "{}", stderr(&out));
    let mut heads: Vec<String> = maildir_files(&tree.maildir("carol"))
        .iter()
        .map(|f| fs::read_to_string(f).unwrap())
        .map(|text| text.split("\n\n").next().unwrap().to_string())
        .collect();
    heads.sort_by_key(|h| h.contains("named"));
    let names = |head: &str| -> Vec<String> {
        head.lines()
            .filter(|l| !l.starts_with([' ', '\t']))
            .filter_map(|l| l.split(':').next().map(str::to_string))
            .collect()
    };
    assert_eq!(
        names(&heads[0]),
        [
            "Return-Path",
            "Delivered-To",
            "Received",
            "Subject",
            "From",
            "Date",
            "Message-ID"
        ],
        "{}",
        heads[0]
    );
    assert!(
        heads[0].contains("\nFrom: <MAILER-DAEMON@mail.example.test>\n"),
        "{}",
        heads[0]
    );
    assert!(!heads[0].contains("From: <>"), "{}", heads[0]);
    assert_eq!(
        names(&heads[1]),
        [
            "Return-Path",
            "Delivered-To",
            "Received",
            "Subject",
            "Date",
            "From",
            "Message-ID"
        ],
        "{}",
        heads[1]
    );
    assert!(
        heads[1].contains("\nFrom: \"Cron Daemon\" <MAILER-DAEMON@mail.example.test>\n"),
        "{}",
        heads[1]
    );
}

#[test]
fn ten_thousand_users_in_one_call_and_clear_admin_errors() {
    let tree = Tree::new();
    let list: String = (0..10_000)
        .map(|i| format!("user{i}@example.test {{PLAIN}}pw{i}\n"))
        .collect();
    let file = tree.root().join("new-users");
    fs::write(&file, list).unwrap();
    let out = tree.postroom(&["user", "add", "--file", file.to_str().unwrap()]);
    assert!(out.status.success(), "{}", stderr(&out));
    let listed = tree.postroom(&["user", "list"]);
    assert_eq!(stdout(&listed).lines().count(), 10_000);
    // Adding one that exists is refused, naming it, and writes nothing.
    let out = tree.postroom(&["user", "add", "user5@example.test", "--password", "x"]);
    assert!(!out.status.success());
    assert!(
        stderr(&out).contains("user5@example.test"),
        "{}",
        stderr(&out)
    );
    // A user in a domain that is not local is refused with the fix.
    let out = tree.postroom(&["user", "add", "x@elsewhere.test", "--password", "x"]);
    assert!(stderr(&out).contains("domain add"), "{}", stderr(&out));

    let domains: Vec<String> = (0..2000).map(|i| format!("d{i}.test")).collect();
    let mut args = vec!["domain", "add"];
    args.extend(domains.iter().map(String::as_str));
    assert!(tree.postroom(&args).status.success());
    assert_eq!(
        stdout(&tree.postroom(&["domain", "list"])).lines().count(),
        2001
    );
    assert!(tree.postroom(&["check"]).status.success());
}

#[test]
fn bad_config_is_named_by_file_and_key() {
    let tree = Tree::new();
    let text = fs::read_to_string(&tree.config).unwrap();
    fs::write(
        &tree.config,
        text.replace("recipients = 1000", "recipents = 1000"),
    )
    .unwrap();
    let out = tree.postroom(&["check"]);
    assert!(!out.status.success());
    let said = stdout(&out);
    assert!(
        said.contains("postroom.toml") && said.contains("recipents"),
        "{said}"
    );
    let out = tree.inject(&["a@example.test"], b"x");
    assert_eq!(out.status.code(), Some(78));
    assert!(stderr(&out).contains("recipents"), "{}", stderr(&out));
}

#[test]
fn queue_inspection_and_control() {
    let tree = Tree::new();
    let out = tree.inject(
        &[
            "-f",
            "me@example.test",
            "you@remote.test",
            "them@remote.test",
        ],
        b"Subject: out\n\nx\n",
    );
    assert!(out.status.success(), "{}", stderr(&out));
    let listed = tree.postroom(&["queue", "list", "--json"]);
    let json: serde_json::Value =
        serde_json::from_slice(&listed.stdout).expect("list --json is JSON");
    let id = json[0]["id"].as_str().unwrap().to_string();
    assert_eq!(json[0]["recipients"].as_array().unwrap().len(), 2);
    assert_eq!(json[0]["recipients"][0]["route"], "remote");

    let shown = tree.postroom(&["queue", "show", &id]);
    assert!(
        stdout(&shown).contains("<you@remote.test> (remote) pending"),
        "{}",
        stdout(&shown)
    );
    assert!(stdout(&shown).contains("Subject: out"));
    assert!(tree.postroom(&["queue", "hold", &id]).status.success());
    let shown: serde_json::Value =
        serde_json::from_slice(&tree.postroom(&["queue", "show", &id, "--json"]).stdout).unwrap();
    assert_eq!(shown["held"], true);
    assert!(tree.postroom(&["queue", "release", &id]).status.success());
    assert!(tree.postroom(&["queue", "retry", "--all"]).status.success());
    let bad = tree.postroom(&["queue", "show", "../../etc/passwd"]);
    assert!(!bad.status.success() && stderr(&bad).contains("not a queue id"));
    assert!(tree.postroom(&["queue", "delete", &id]).status.success());
    assert!(stdout(&tree.postroom(&["queue", "list"])).contains("0 message(s)"));
}

#[test]
fn demo_sets_up_a_working_tree() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().join("demo");
    let out = Command::new(bin("postroom"))
        .args(["demo", "--setup-only", "--root", root.to_str().unwrap()])
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", stderr(&out));
    let said = stdout(&out);
    let password = said
        .lines()
        .find_map(|l| l.trim().strip_prefix("password:"))
        .expect("demo prints the password")
        .trim()
        .to_string();
    let config = postroom::config::Config::load(&root.join("postroom.toml")).unwrap();
    let users = postroom::directory::users::Users::load(&config.users_file()).unwrap();
    assert!(
        users
            .authenticate("demo@example.test", &password)
            .unwrap()
            .is_some()
    );
    let welcome = maildir_files(&root.join("mail/example.test/demo"));
    assert_eq!(welcome.len(), 1, "the welcome message is delivered");
    // Run twice: the tree is reused and the password renewed.
    let again = Command::new(bin("postroom"))
        .args(["demo", "--setup-only", "--root", root.to_str().unwrap()])
        .output()
        .unwrap();
    assert!(again.status.success(), "{}", stderr(&again));
    assert!(postroom::net::tls::server_config(&config.tls_cert(), &config.tls_key()).is_ok());
}

#[test]
fn commands_exit_quietly_when_the_reader_of_their_output_has_gone() {
    // `postroom check | head -1` and `list-expand members L | head` used to
    // panic in println! with "failed printing to stdout: Broken pipe".
    let tree = Tree::new();
    tree.add_user("ann@example.test");
    let closed_stdout = || {
        let (reader, writer) = std::io::pipe().expect("pipe");
        drop(reader);
        writer
    };
    let config = tree.config.to_str().unwrap();
    let runs: [(&str, Vec<&str>); 6] = [
        ("postroom", vec!["--config", config, "check"]),
        ("postroom", vec!["--config", config, "user", "list"]),
        ("postroom", vec!["--config", config, "queue", "list"]),
        (
            "list-expand",
            vec![
                "--config",
                config,
                "create",
                "team@example.test",
                "--owner",
                "ann@example.test",
            ],
        ),
        ("list-expand", vec!["--config", config, "show"]),
        (
            "list-expand",
            vec!["--config", config, "members", "team@example.test"],
        ),
    ];
    for (program, args) in runs {
        let out = Command::new(bin(program))
            .args(&args)
            .stdout(closed_stdout())
            .output()
            .expect("run");
        let err = stderr(&out);
        assert!(!err.contains("panicked"), "{program} {args:?}: {err}");
        assert!(
            out.status.success(),
            "{program} {args:?}: {:?} {err}",
            out.status
        );
    }
}

/// Regression: a message piped to mail-inject from an mbox tool starts
/// with a `From ` line; kept, it ended the header before the first real
/// field, so Subject and the rest became body. Postfix's sendmail drops it.
#[test]
fn mail_inject_drops_a_leading_mbox_from_line() {
    let tree = Tree::new();
    tree.add_user("carol@example.test");
    let out = tree.inject(
        &["carol@example.test"],
        b"From bob@far.test Thu Jan  1 00:00:00 2026\nFrom: bob@far.test\nSubject: kept as a header\n\nFrom here on, body.\n",
    );
    assert!(out.status.success(), "{}", stderr(&out));
    let files = maildir_files(&tree.maildir("carol"));
    let text = fs::read_to_string(&files[0]).unwrap();
    let (head, body) = text.split_once("\n\n").unwrap();
    assert!(head.contains("\nSubject: kept as a header\n"), "{text}");
    assert!(!head.contains("From bob@far.test Thu"), "{text}");
    assert_eq!(body, "From here on, body.\n", "{text}");
}

/// Regression (an outside review): mail-inject refused what sendmail
/// takes: a bare user name (`mail-inject root`, cron's MAILTO), an RFC 822
/// address as an argument (`Ann <ann@x>`, `a@x, b@y`); with -t it read
/// only the last of repeated To/Cc/Bcc fields and ignored Resent-*, so
/// Resent-Bcc reached every recipient. Postfix's sendmail reads all.
#[test]
fn mail_inject_reads_recipients_as_sendmail_does() {
    let tree = Tree::new();
    for user in ["ann", "bob", "cy", "dee", "eve", "fay"] {
        tree.add_user(&format!("{user}@example.test"));
    }
    // A bare name is a user of this host: root goes where root@HOSTNAME goes.
    let host = tree.load_config().hostname;
    let out = tree.inject(&["-bv", "root"], b"");
    assert!(
        String::from_utf8_lossy(&out.stdout).contains(&format!("root@{host}:")),
        "{}",
        String::from_utf8_lossy(&out.stdout)
    );
    let out = tree.inject(
        &[
            "Ann <ann@example.test>",
            "bob@example.test, \"Cy\" <cy@example.test>",
        ],
        b"Subject: args\n\nx\n",
    );
    assert!(out.status.success(), "{}", stderr(&out));
    for user in ["ann", "bob", "cy"] {
        assert_eq!(maildir_files(&tree.maildir(user)).len(), 1, "{user}");
    }
    let out = tree.inject(
        &["-t"],
        b"To: ann@example.test\nTo: bob@example.test\nCc: cy@example.test\nCc: Dee <dee@example.test>\nBcc: eve@example.test\nBcc: fay@example.test\nSubject: repeated\n\nx\n",
    );
    assert!(out.status.success(), "{}", stderr(&out));
    for user in ["ann", "bob", "cy", "dee", "eve", "fay"] {
        let texts: Vec<String> = maildir_files(&tree.maildir(user))
            .iter()
            .map(|f| fs::read_to_string(f).unwrap())
            .filter(|t| t.contains("Subject: repeated"))
            .collect();
        assert_eq!(texts.len(), 1, "{user}");
        assert!(!texts[0].contains("Bcc:"), "{}", texts[0]);
    }
    // Resent-* fields name the recipients of a resent message; Resent-Bcc
    // is hidden like Bcc.
    let out = tree.inject(
        &["-t"],
        b"To: ann@example.test\nResent-To: bob@example.test\nResent-Bcc: cy@example.test\nSubject: resent\n\nx\n",
    );
    assert!(out.status.success(), "{}", stderr(&out));
    let resent = |user: &str| -> Vec<String> {
        maildir_files(&tree.maildir(user))
            .iter()
            .map(|f| fs::read_to_string(f).unwrap())
            .filter(|t| t.contains("Subject: resent"))
            .collect()
    };
    assert!(resent("ann").is_empty());
    assert_eq!(resent("bob").len(), 1);
    assert_eq!(resent("cy").len(), 1);
    assert!(
        !resent("bob")[0].contains("Resent-Bcc"),
        "{}",
        resent("bob")[0]
    );
}

/// Regression (an outside review): mail-inject took `-N bogus`, `-N
/// never,success` and `-R bogus`, and smtp-send sent them on to be
/// refused with 501 at the next hop; and it flagged any 8-bit body as
/// SMTPUTF8, which servers without it refuse, where 8BITMIME is enough.
#[test]
fn mail_inject_checks_dsn_options_and_flags_an_8bit_body_8bitmime() {
    let tree = Tree::new();
    tree.add_user("ann@example.test");
    for args in [
        vec!["-N", "bogus"],
        vec!["-N", "never,success"],
        vec!["-Rbogus"],
        vec!["-V", ""],
    ] {
        let mut args = args.clone();
        args.push("ann@example.test");
        let out = tree.inject(&args, b"Subject: x\n\ny\n");
        assert_eq!(out.status.code(), Some(64), "{args:?}: {}", stderr(&out));
    }
    let out = tree.inject(
        &[
            "-odq",
            "-N",
            "success,failure",
            "-R",
            "hdrs",
            "ann@example.test",
        ],
        "Subject: plain ASCII\n\ncafé\n".as_bytes(),
    );
    assert!(out.status.success(), "{}", stderr(&out));
    let queue = tree.queue();
    let queued = queue.list().unwrap();
    assert_eq!(queued.len(), 1);
    let message = queue.read(&queued[0]).unwrap();
    let envelope = &message.envelope;
    assert!(!envelope.smtputf8, "{envelope:?}");
    assert_eq!(
        envelope.body_type.as_ref().map(|b| b.as_str()),
        Some("8BITMIME")
    );
    assert_eq!(envelope.ret.as_ref().map(|r| r.as_str()), Some("HDRS"));
    assert_eq!(
        envelope.recipients[0].notify.as_ref().map(|n| n.as_str()),
        Some("SUCCESS,FAILURE")
    );
}

/// RFC 3461 §5.2.2 (an outside review): NOTIFY=SUCCESS asked for a
/// "delivered" report, and none was ever made. Now a local delivery
/// queues one to the sender; without SUCCESS, none.
#[test]
fn notify_success_gets_a_delivered_report_for_a_local_delivery() {
    let tree = Tree::new();
    tree.add_user("ann@example.test");
    tree.add_user("bob@example.test");
    let out = tree.inject(
        &["-f", "bob@example.test", "ann@example.test"],
        b"Subject: quiet\n\nx\n",
    );
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(tree.queue().list().unwrap().is_empty(), "no report unasked");
    let out = tree.inject(
        &[
            "-f",
            "bob@example.test",
            "-N",
            "success,failure",
            "-V",
            "envelope-7",
            "ann@example.test",
        ],
        b"Subject: tell me\n\nx\n",
    );
    assert!(out.status.success(), "{}", stderr(&out));
    assert_eq!(maildir_files(&tree.maildir("ann")).len(), 2);
    let queue = tree.queue();
    let ids = queue.list().unwrap();
    assert_eq!(ids.len(), 1, "one report");
    let report = queue.read(&ids[0]).unwrap();
    assert!(report.envelope.sender.is_null());
    assert_eq!(
        report.envelope.recipients[0].address.to_string(),
        "bob@example.test"
    );
    let mut text = String::new();
    std::io::Read::read_to_string(&mut report.body().unwrap(), &mut text).unwrap();
    for want in [
        "report-type=\"delivery-status\"",
        "Action: delivered",
        "Final-Recipient: rfc822; ann@example.test",
        "Status: 2.",
        "Original-Envelope-Id: envelope-7",
        "Subject: tell me",
    ] {
        assert!(text.contains(want), "{want}:\n{text}");
    }
}
