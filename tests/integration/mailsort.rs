//! mailsort as the user's delivery pipe: Sieve rules file into folders,
//! set flags, discard, refuse, redirect; a broken script keeps mail in
//! INBOX; --check and --test.

use std::process::Command;

use crate::util::{Tree, bin, maildir_files, stderr, stdout};

fn setup(script: &str) -> Tree {
    let tree = Tree::new();
    tree.add_user("ann@example.test");
    tree.add_user("bob@example.test");
    sort_anns_mail(&tree, script);
    tree
}

/// Ann's mail goes through mailsort (a pipe alias) with `script` as her
/// Sieve rules.
pub(crate) fn sort_anns_mail(tree: &Tree, script: &str) {
    std::fs::write(
        tree.root().join("aliases"),
        format!(
            "ann@example.test: \"|{} --config {} --user ann@example.test\"\n",
            bin("mailsort").display(),
            tree.config.display()
        ),
    )
    .unwrap();
    let sieve = tree.maildir("ann").join("sieve");
    std::fs::create_dir_all(&sieve).unwrap();
    std::fs::write(sieve.join("active.sieve"), script).unwrap();
}

fn send(tree: &Tree, from: &str, subject: &str) -> std::process::Output {
    tree.inject(
        &["-f", from, "ann@example.test"],
        format!("From: {from}\nTo: ann@example.test\nSubject: {subject}\n\nbody\n").as_bytes(),
    )
}

const RULES: &str = r#"require ["fileinto", "imap4flags", "reject", "mailbox"];
if header :contains "subject" "[rust]" {
    fileinto :create "Lists/rust";
} elsif address :is "from" "boss@far.test" {
    addflag "\\Flagged";
    keep;
} elsif header :contains "subject" "viagra" {
    discard;
} elsif header :is "subject" "go away" {
    reject "I do not take mail from you.";
} elsif header :is "subject" "forward" {
    redirect "bob@example.test";
}
"#;

#[test]
fn rules_file_flag_discard_refuse_and_redirect() {
    let tree = setup(RULES);
    for (from, subject) in [
        ("list@far.test", "[rust] release"),
        ("boss@far.test", "meeting"),
        ("spam@far.test", "cheap viagra"),
        ("friend@far.test", "hello"),
        ("friend@far.test", "forward"),
    ] {
        let out = send(&tree, from, subject);
        assert!(out.status.success(), "{subject}: {}", stderr(&out));
    }
    let folder = tree.maildir("ann").join(".Lists.rust");
    assert_eq!(maildir_files(&folder).len(), 1, "filed into Lists.rust");
    let inbox: Vec<_> = maildir_files(&tree.maildir("ann"))
        .into_iter()
        .filter(|p| !p.to_string_lossy().contains("/.Lists"))
        .collect();
    assert_eq!(inbox.len(), 2, "boss and hello in INBOX: {inbox:?}");
    assert!(
        inbox.iter().any(|p| p.to_string_lossy().ends_with(":2,F")),
        "the boss's mail is flagged: {inbox:?}"
    );
    // Redirected mail is queued for bob; the runner delivers it.
    let run = Command::new(bin("smtp-send"))
        .arg("--config")
        .arg(&tree.config)
        .arg("--once")
        .output()
        .unwrap();
    assert!(run.status.success(), "{}", stderr(&run));
    let bob = maildir_files(&tree.maildir("bob"));
    assert_eq!(bob.len(), 1);
    let text = std::fs::read_to_string(&bob[0]).unwrap();
    assert!(
        text.contains("Subject: forward")
            && text.contains("X-Postroom-Redirected-By: ann@example.test")
    );

    // A refusal bounces to the sender, with the rule's words.
    let out = send(&tree, "bob@example.test", "go away");
    assert!(out.status.success());
    let run = Command::new(bin("smtp-send"))
        .arg("--config")
        .arg(&tree.config)
        .arg("--once")
        .output()
        .unwrap();
    assert!(run.status.success());
    let bounced = maildir_files(&tree.maildir("bob"))
        .iter()
        .map(|p| std::fs::read_to_string(p).unwrap())
        .any(|m| m.contains("I do not take mail from you."));
    assert!(bounced, "bob got the refusal");
}

/// Folders are named as IMAP names them (a UTF-8 Sieve name becomes
/// modified UTF-7 on disk), each gets one copy however many actions name
/// it, and an mbox `From ` line in front of the message is no header.
#[test]
fn utf8_folders_one_copy_each_and_no_mbox_from_line() {
    let tree = setup(
        "require [\"fileinto\"];\nkeep;\nfileinto \"INBOX\";\nfileinto \"Entwürfe\";\nfileinto \"INBOX.Entwürfe\";\n",
    );
    let out = send(&tree, "friend@far.test", "hello");
    assert!(out.status.success(), "{}", stderr(&out));
    let ann = tree.maildir("ann");
    let in_inbox = || {
        ["new", "cur"]
            .iter()
            .map(|sub| std::fs::read_dir(ann.join(sub)).unwrap().count())
            .sum::<usize>()
    };
    assert_eq!(in_inbox(), 1, "one copy in INBOX");
    assert_eq!(maildir_files(&ann.join(".Entw&APw-rfe")).len(), 1);
    assert!(!ann.join(".Entwürfe").exists());

    let mut sort = Command::new(bin("mailsort"))
        .args([
            "--config",
            &tree.config.to_string_lossy(),
            "--user",
            "ann@example.test",
        ])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    use std::io::Write as _;
    sort.stdin
        .take()
        .unwrap()
        .write_all(b"From friend@far.test Fri Dec  4 01:00:00 2026\nSubject: mbox\n\nbody\n")
        .unwrap();
    assert!(sort.wait().unwrap().success());
    let filed = maildir_files(&ann.join(".Entw&APw-rfe"));
    let texts: Vec<String> = filed
        .iter()
        .map(|f| std::fs::read_to_string(f).unwrap())
        .collect();
    let mbox = texts.iter().find(|t| t.contains("Subject: mbox\n"));
    let header = mbox.map(|t| &t[..t.find("\n\n").unwrap_or(t.len())]);
    assert!(
        header.is_some_and(|h| h.contains("Subject: mbox") && !h.contains("From friend")),
        "{texts:?}"
    );
    assert_eq!(in_inbox(), 2);
}

#[test]
fn a_broken_script_keeps_mail_in_the_inbox() {
    let tree =
        setup("require \"fileinto\";\nif header :contains \"subject\" {\n  fileinto \"x\";\n");
    let out = send(&tree, "friend@far.test", "hello");
    assert!(out.status.success(), "{}", stderr(&out));
    assert_eq!(maildir_files(&tree.maildir("ann")).len(), 1);
}

#[test]
fn check_and_test_say_what_a_script_does() {
    let dir = tempfile::tempdir().unwrap();
    let bad = dir.path().join("bad.sieve");
    std::fs::write(
        &bad,
        "require \"fileinto\";\nif true {\n  fileinto \"x\"\n}\n",
    )
    .unwrap();
    let out = Command::new(bin("mailsort"))
        .arg("--check")
        .arg(&bad)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    assert!(
        stdout(&out).contains("bad.sieve:4:1: ';' or '{' expected after fileinto"),
        "{}",
        stdout(&out)
    );
    let good = dir.path().join("good.sieve");
    std::fs::write(&good, RULES).unwrap();
    let out = Command::new(bin("mailsort"))
        .arg("--check")
        .arg(&good)
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", stdout(&out));

    let mut child = Command::new(bin("mailsort"))
        .arg("--test")
        .arg(&good)
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    use std::io::Write;
    child
        .stdin
        .take()
        .unwrap()
        .write_all(b"From: boss@far.test\nSubject: q3\n\nnumbers\n")
        .unwrap();
    let out = child.wait_with_output().unwrap();
    assert_eq!(stdout(&out), "keep :flags \\Flagged\n");
}

#[test]
fn the_rules_apply_to_every_local_delivery_without_an_alias() {
    let tree = Tree::new();
    tree.add_user("ann@example.test");
    let sieve = tree.maildir("ann").join("sieve");
    std::fs::create_dir_all(&sieve).unwrap();
    std::fs::write(sieve.join("active.sieve"), RULES).unwrap();
    let out = send(&tree, "list@far.test", "[rust] news");
    assert!(out.status.success(), "{}", stderr(&out));
    assert_eq!(
        maildir_files(&tree.maildir("ann").join(".Lists.rust")).len(),
        1
    );
    // Queued mail too (the runner's local delivery).
    let out = tree.inject(
        &["-odq", "-f", "list@far.test", "ann@example.test"],
        b"Subject: [rust] queued\n\nx\n",
    );
    assert!(out.status.success(), "{}", stderr(&out));
    let run = Command::new(bin("smtp-send"))
        .arg("--config")
        .arg(&tree.config)
        .arg("--once")
        .output()
        .unwrap();
    assert!(run.status.success(), "{}", stderr(&run));
    assert_eq!(
        maildir_files(&tree.maildir("ann").join(".Lists.rust")).len(),
        2
    );
}

#[test]
fn redirects_use_srs_when_configured_and_bounces_find_their_way_back() {
    let tree =
        setup("if header :is \"subject\" \"forward\" { redirect \"carl@elsewhere.test\"; }\n");
    std::fs::write(
        tree.root().join("srs-secret"),
        "correct horse battery staple\n",
    )
    .unwrap();
    let mut config = std::fs::read_to_string(&tree.config).unwrap();
    config.push_str("\n[sieve]\nsrs_secret_file = \"srs-secret\"\nsrs_domain = \"example.test\"\n");
    std::fs::write(&tree.config, config).unwrap();
    let out = send(&tree, "dave@far.test", "forward");
    assert!(out.status.success(), "{}", stderr(&out));
    let queue = tree.queue();
    let id = queue.list().unwrap().pop().expect("the redirect is queued");
    let queued = queue.read(&id).unwrap();
    let sender = queued.envelope.sender.to_string();
    assert!(
        sender.starts_with("SRS0=") && sender.ends_with("=far.test=dave@example.test"),
        "{sender}"
    );
    // A bounce to the SRS address resolves to the original sender; a
    // forged one to nobody.
    let config = tree.load_config();
    let directory = postroom::directory::aliases::Directory::load(&config).unwrap();
    let srs = postroom::proto::address::Address::parse(&sender).unwrap();
    let targets = directory.resolve(&srs).unwrap();
    assert_eq!(
        targets,
        [postroom::directory::aliases::Target::Remote(
            postroom::proto::address::Address::parse("dave@far.test").unwrap()
        )]
    );
    let forged =
        postroom::proto::address::Address::parse(&sender.replace("dave", "mallory")).unwrap();
    assert!(directory.resolve(&forged).is_err());
}

#[test]
fn delivery_never_writes_through_a_symlinked_folder_or_maildir_directory() {
    let tree = Tree::new();
    tree.add_user("ann@example.test");
    let outside = tree.dir.path().join("outside");
    std::fs::create_dir_all(&outside).unwrap();
    let ann = tree.maildir("ann");
    let queued = |tree: &Tree| {
        let out = tree.postroom(&["queue", "list"]);
        stdout(&out)
    };
    // new -> /elsewhere, then tmp, then cur: each delivery is deferred (451,
    // the admin has to look) and nothing is written outside the mailbox.
    for (i, sub) in ["new", "tmp", "cur"].into_iter().enumerate() {
        std::fs::create_dir_all(&ann).unwrap();
        let _ = std::fs::remove_dir_all(ann.join(sub));
        std::os::unix::fs::symlink(&outside, ann.join(sub)).unwrap();
        let out = tree.inject(&["ann@example.test"], b"Subject: x\n\nbody\n");
        assert!(out.status.success(), "{}", stderr(&out));
        assert_eq!(
            std::fs::read_dir(&outside).unwrap().count(),
            0,
            "{sub}: written outside"
        );
        let list = queued(&tree);
        assert_eq!(list.matches("deferred").count(), i + 1, "{sub}: {list}");
        std::fs::remove_file(ann.join(sub)).unwrap();
    }
    // The folder a Sieve rule files into is a symlink to another maildir.
    std::fs::create_dir_all(ann.join("sieve")).unwrap();
    std::fs::write(
        ann.join("sieve/active.sieve"),
        "require \"fileinto\";\nfileinto \"Evil\";\n",
    )
    .unwrap();
    for sub in ["cur", "new", "tmp"] {
        std::fs::create_dir_all(outside.join(sub)).unwrap();
    }
    std::os::unix::fs::symlink(&outside, ann.join(".Evil")).unwrap();
    let out = tree.inject(&["ann@example.test"], b"Subject: y\n\nbody\n");
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(
        maildir_files(&outside).is_empty(),
        "filed through the symlink"
    );
    assert!(!outside.join("maildirfolder").exists());
    assert!(queued(&tree).contains("4 message(s)"), "{}", queued(&tree));
}

/// A full mailbox answers as `quota.full` says, as smtp-recv and the
/// queue do: 452 4.2.2 and exit 75 (the queue keeps the mail) with "defer",
/// 552 5.2.2 and exit 69 (the sender gets it back) with "bounce".
#[test]
fn a_full_mailbox_follows_quota_full() {
    let tree = setup("keep;\n");
    let out = tree.postroom(&["user", "quota", "ann@example.test", "1K"]);
    assert!(out.status.success(), "{}", stderr(&out));
    let sort = || {
        crate::util::run_with(
            {
                let mut c = Command::new(bin("mailsort"));
                c.args(["--config", &tree.config.display().to_string()])
                    .args(["--user", "ann@example.test", "--sender", "bob@example.test"]);
                c
            },
            format!(
                "From: bob@example.test\nSubject: big\n\n{}\n",
                "x".repeat(2500)
            )
            .as_bytes(),
        )
    };
    for (full, code, reply) in [
        ("\"defer\"", 75, "452 4.2.2 "),
        ("\"bounce\"", 69, "552 5.2.2 "),
    ] {
        crate::util::configure(&tree, "quota", &[("full", full)]);
        let out = sort();
        let said = format!("{}{}", stdout(&out), stderr(&out));
        assert_eq!(out.status.code(), Some(code), "{full}: {said}");
        assert!(stdout(&out).starts_with(reply), "{full}: {said}");
    }
    assert!(maildir_files(&tree.maildir("ann")).is_empty());
}
