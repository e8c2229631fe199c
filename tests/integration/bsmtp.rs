//! `postroom bsmtp export` and `import` (and `mail-inject --bsmtp`): mail
//! queued in one tree for a dial-up domain moves to another tree as a
//! batch file, every envelope and body byte intact; a cut batch imports
//! nothing.

use crate::util::{Tree, bin, run_with, stderr};
use postroom::store::queue::{Queue, read_body};
use std::process::Command;

/// What must survive the trip: the SMTP envelope and the body.
#[derive(Debug, PartialEq, Eq)]
struct Carried {
    sender: String,
    recipients: Vec<(String, Option<String>, Option<String>)>,
    envid: Option<String>,
    ret: Option<String>,
    body_type: Option<String>,
    smtputf8: bool,
    body: Vec<u8>,
}

/// Every queued message, oldest first, with only the recipients at `domain`.
fn carried(queue: &Queue, domain: &str) -> Vec<Carried> {
    let text = |t: &Option<postroom::proto::address::EnvelopeText>| {
        t.as_ref().map(|t| t.as_str().to_string())
    };
    queue
        .list()
        .unwrap()
        .iter()
        .map(|id| {
            let m = queue.read(id).unwrap();
            let e = &m.envelope;
            Carried {
                sender: e.sender.to_string(),
                recipients: m
                    .pending()
                    .map(|(_, r)| r)
                    .filter(|r| r.address.domain() == domain)
                    .map(|r| (r.address.to_string(), text(&r.notify), text(&r.orcpt)))
                    .collect(),
                envid: text(&e.envid),
                ret: text(&e.ret),
                body_type: text(&e.body_type),
                smtputf8: e.smtputf8,
                body: read_body(&m).unwrap(),
            }
        })
        .filter(|c| !c.recipients.is_empty())
        .collect()
}

fn import(tree: &Tree, batch: &[u8]) -> std::process::Output {
    let mut command = Command::new(bin("postroom"));
    command
        .arg("--config")
        .arg(&tree.config)
        .args(["bsmtp", "import"]);
    run_with(command, batch)
}

#[test]
fn a_batch_moves_mail_between_trees_byte_for_byte_and_a_torn_one_moves_nothing() {
    let sender_site = Tree::new();
    let inject = |args: &[&str], message: &[u8]| {
        let out = sender_site.inject(args, message);
        assert!(out.status.success(), "inject: {}", stderr(&out));
    };
    inject(
        &[
            "-f",
            "ann@example.test",
            "-N",
            "SUCCESS,DELAY",
            "-R",
            "HDRS",
            "-V",
            "env+id=1",
            "bob@dialup.test",
        ],
        b"Subject: one\n\n.a line with a dot\n..two dots\n.\nend\n",
    );
    inject(
        &[
            "-f",
            "",
            "bob@dialup.test",
            "carol@dialup.test",
            "dan@other.test",
        ],
        "Subject: caf\u{e9}\n\nno final newline".as_bytes(),
    );
    // Over a MiB, so it spills to a file on both sides, with dot lines
    // on every read boundary the export might use.
    let mut big = b"Subject: big\n\n".to_vec();
    for i in 0..40_000 {
        big.extend_from_slice(format!(".{i} the quick brown fox\n").as_bytes());
    }
    inject(&["-f", "ann@example.test", "carol@dialup.test"], &big);
    inject(
        &["-f", "ann@example.test", "eve@other.test"],
        b"Subject: stays\n\nx\n",
    );

    let before = carried(&sender_site.queue(), "dialup.test");
    assert_eq!(before.len(), 3);

    // Standard output that is a pipe cannot be fsynced: refused, nothing marked.
    let piped = sender_site.postroom(&["bsmtp", "export", "--domain", "dialup.test"]);
    assert!(!piped.status.success());
    assert!(stderr(&piped).contains("--to FILE"), "{}", stderr(&piped));
    assert_eq!(carried(&sender_site.queue(), "dialup.test"), before);

    let file = sender_site.dir.path().join("dialup.bsmtp");
    let export = || {
        sender_site.postroom(&[
            "bsmtp",
            "export",
            "--domain",
            "dialup.test",
            "--to",
            file.to_str().unwrap(),
        ])
    };
    let out = export();
    assert!(out.status.success(), "export: {}", stderr(&out));
    assert!(
        stderr(&out).contains("3 message(s) for 4 recipient(s)"),
        "{}",
        stderr(&out)
    );
    let batch = std::fs::read(&file).unwrap();
    assert!(
        batch.starts_with(b"EHLO "),
        "{}",
        String::from_utf8_lossy(&batch)
    );
    assert!(batch.ends_with(b".\r\nQUIT\r\n"));
    // Exported mail is delivered: only other.test's recipients are left.
    assert!(carried(&sender_site.queue(), "dialup.test").is_empty());
    assert_eq!(carried(&sender_site.queue(), "other.test").len(), 2);
    // The batch file is never overwritten.
    let again = export();
    assert!(!again.status.success());
    assert_eq!(std::fs::read(&file).unwrap(), batch);

    let dialup = Tree::new();
    let out = dialup.postroom(&["domain", "add", "dialup.test"]);
    assert!(out.status.success(), "{}", stderr(&out));
    for user in ["bob@dialup.test", "carol@dialup.test"] {
        dialup.add_user(user);
    }

    // A batch cut anywhere (mid-envelope, mid-body, before QUIT) or with a
    // recipient unknown here queues nothing, through either command.
    let text = String::from_utf8_lossy(&batch).into_owned();
    let cuts = [
        text.find("RCPT TO").unwrap() + 3,
        batch.len() / 2,
        batch.len() - b"QUIT\r\n".len(),
        batch.len() - 1,
    ];
    for cut in cuts {
        let out = import(&dialup, &batch[..cut]);
        assert_eq!(out.status.code(), Some(1), "cut at {cut}: {}", stderr(&out));
        assert!(
            stderr(&out).contains("nothing was queued"),
            "{}",
            stderr(&out)
        );
        let out = run_with(dialup.inject_command(&["--bsmtp"]), &batch[..cut]);
        assert_eq!(
            out.status.code(),
            Some(65),
            "cut at {cut}: {}",
            stderr(&out)
        );
    }
    let unknown = text.replacen("carol@dialup.test", "nobody@dialup.test", 1);
    let out = import(&dialup, unknown.as_bytes());
    assert!(!out.status.success());
    assert!(
        stderr(&out).contains("nobody@dialup.test"),
        "{}",
        stderr(&out)
    );
    assert!(dialup.queue().list().unwrap().is_empty());

    let out = run_with(dialup.inject_command(&["--bsmtp"]), &batch);
    assert!(out.status.success(), "import: {}", stderr(&out));
    assert_eq!(carried(&dialup.queue(), "dialup.test"), before);
}
