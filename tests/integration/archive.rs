//! Archive copies (`[archive]`, postroom.toml(5)): mail a stranger sends
//! in over SMTP and mail a user sends out with mail-inject each leave one
//! copy in the archive mailbox and one in the archive maildir, byte for
//! byte the message the recipients got, while nothing the recipients see
//! (headers, the remote envelope) gives the archive away; a maildir that
//! cannot be written refuses the message rather than let it go unarchived.

use crate::smtp_recv::python;
use crate::smtp_send::{World, a, mx, ok};
use crate::util::{Server, Tree, maildir_files, stderr};

const RULES: &str = "\n[archive.\"example.test\"]\nmail = \"both\"\n\
                     address = \"journal@example.test\"\n\
                     [archive.\"*\"]\nmail = \"both\"\nmaildir = \"archive\"\n";

/// The message files of a maildir, oldest name first.
fn texts(dir: &std::path::Path) -> Vec<String> {
    let mut files = maildir_files(dir);
    files.sort();
    files
        .iter()
        .map(|p| std::fs::read_to_string(p).unwrap())
        .collect()
}

/// A delivered copy without its first `n` lines (the delivery's own
/// Return-Path and Delivered-To or X-Envelope-To lines).
fn after(text: &str, n: usize) -> String {
    text.splitn(n + 1, '\n').nth(n).unwrap_or("").to_string()
}

fn world() -> World {
    let tree = Tree::new();
    tree.add_user("ann@example.test");
    tree.add_user("journal@example.test");
    tree.add_user("postmaster@example.test");
    World::with_tree(
        tree,
        vec![("far.test", mx(10, "mx.far.test")), ("mx.far.test", a(2))],
        RULES,
    )
}

#[test]
fn inbound_and_outbound_mail_is_copied_to_the_archive_unseen() {
    let w = world();
    let sink = w.sink(2, Default::default());

    // Inbound: a stranger's mail to ann over SMTP.
    let server = Server::start(&w.tree, "smtp-recv", &[]);
    let script = r#"
import os, smtplib
s = smtplib.SMTP("127.0.0.1", int(os.environ["PORT"]), timeout=10)
s.sendmail("carol@far.test", ["ann@example.test"],
    b"From: carol@far.test\r\nTo: ann@example.test\r\nSubject: inbound\r\n\r\nhello ann\r\n")
s.quit()
"#;
    let (passed, said) = python(script, server.port);
    assert!(passed, "smtplib: {said}");
    let ann = texts(&w.tree.maildir("ann"));
    let journal = texts(&w.tree.maildir("journal"));
    assert_eq!(ann.len(), 1, "{ann:?}");
    assert_eq!(journal.len(), 1, "the journal got the inbound copy");
    assert!(ann[0].contains("Delivered-To: ann@example.test\n"));
    assert_eq!(after(&journal[0], 2), after(&ann[0], 2), "the same message");
    assert!(
        !ann[0].to_ascii_lowercase().contains("journal") && !ann[0].contains("X-Envelope-To"),
        "nothing in ann's copy names the archive:\n{}",
        ann[0]
    );
    let archive = w.tree.root().join("archive");
    let kept = texts(&archive);
    assert_eq!(kept.len(), 1, "one maildir copy");
    assert!(
        kept[0].starts_with("Return-Path: <carol@far.test>\nX-Envelope-To: ann@example.test\n"),
        "{}",
        kept[0]
    );
    assert_eq!(after(&kept[0], 2), after(&ann[0], 2));

    // Outbound: ann's mail to a remote address, from mail-inject.
    let out = w.tree.inject(
        &["-f", "ann@example.test", "bob@far.test"],
        b"From: ann@example.test\nTo: bob@far.test\nSubject: outbound\n\nhello bob\n",
    );
    assert!(out.status.success(), "inject: {}", stderr(&out));
    ok(&w.send(&["--once"]));
    let got = sink.messages();
    assert_eq!(got.len(), 1);
    assert_eq!(
        got[0].rcpts,
        ["bob@far.test"],
        "the archive is not in the envelope that leaves"
    );
    let sent = String::from_utf8_lossy(&got[0].data).replace("\r\n", "\n");
    assert!(!sent.to_ascii_lowercase().contains("journal"), "{sent}");
    let journal = texts(&w.tree.maildir("journal"));
    assert_eq!(journal.len(), 2, "the journal got the outbound copy");
    let copy = journal
        .iter()
        .find(|t| t.contains("Subject: outbound"))
        .unwrap();
    assert_eq!(after(copy, 2), sent, "the copy is what left");
    let kept = texts(&archive);
    assert_eq!(kept.len(), 2);
    assert!(
        kept.iter()
            .any(|t| t.contains("X-Envelope-To: bob@far.test\n"))
    );
    assert!(
        w.tree.queue().list().unwrap().is_empty(),
        "{:?}",
        w.tree.queue().list()
    );
}

#[test]
fn an_archive_that_cannot_be_written_refuses_the_message() {
    let w = world();
    // A file where the archive maildir should be.
    std::fs::write(w.tree.root().join("archive"), "not a folder\n").unwrap();
    let out = w.tree.inject(
        &["-f", "ann@example.test", "ann@example.test"],
        b"From: ann@example.test\nSubject: x\n\nhi\n",
    );
    assert_eq!(out.status.code(), Some(75), "{}", stderr(&out));
    assert!(stderr(&out).contains("[archive]"), "{}", stderr(&out));
    assert!(
        maildir_files(&w.tree.maildir("ann")).is_empty(),
        "not delivered"
    );
    assert!(w.tree.queue().list().unwrap().is_empty(), "not queued");
}
