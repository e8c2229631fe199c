//! `postroom mailall` and the `[mailall]` alias: one message to every
//! user (of a domain), and `everyone@DOMAIN` only for the listed senders.

use crate::util::{Tree, bin, maildir_texts, run_with, stderr, stdout};
use std::process::Command;

fn tree() -> Tree {
    let tree = Tree::new();
    let out = tree.postroom(&["domain", "add", "other.test"]);
    assert!(out.status.success(), "{}", stderr(&out));
    for user in ["ann@example.test", "bob@example.test", "cy@other.test"] {
        tree.add_user(user);
    }
    tree
}

fn mailall(tree: &Tree, args: &[&str], message: &[u8]) -> std::process::Output {
    let mut command = Command::new(bin("postroom"));
    command
        .arg("--config")
        .arg(&tree.config)
        .arg("mailall")
        .args(args);
    run_with(command, message)
}

fn inbox(tree: &Tree, address: &str) -> Vec<String> {
    let (local, domain) = address.split_once('@').unwrap();
    maildir_texts(&tree.root().join("mail").join(domain).join(local))
}

#[test]
fn mailall_reaches_every_user_or_one_domain_with_one_queued_message() {
    let tree = tree();
    let out = mailall(
        &tree,
        &["--domain", "example.test"],
        b"Subject: fire drill\n\nat ten\n",
    );
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(stderr(&out).contains("2 user(s)"), "{}", stderr(&out));
    for user in ["ann@example.test", "bob@example.test"] {
        let texts = inbox(&tree, user);
        assert_eq!(texts.len(), 1, "{user}");
        assert!(texts[0].contains("Subject: fire drill\n"), "{}", texts[0]);
        assert!(
            texts[0].contains("To: undisclosed-recipients:;\n"),
            "{}",
            texts[0]
        );
        assert!(
            texts[0].contains(&format!("Delivered-To: {user}\n")),
            "{}",
            texts[0]
        );
        // The fields added come after the message's own, as Postfix adds them.
        let subject = texts[0].find("Subject: fire drill").unwrap();
        for added in ["\nDate: ", "\nMessage-ID: ", "\nTo: "] {
            let at = texts[0].find(added).unwrap_or_else(|| panic!("{added}"));
            assert!(at > subject, "{added} above Subject: {}", texts[0]);
        }
    }
    assert!(inbox(&tree, "cy@other.test").is_empty());

    let out = mailall(
        &tree,
        &["--from", "boss@example.test"],
        b"Subject: all\n\nhi\n",
    );
    assert!(out.status.success(), "{}", stderr(&out));
    for user in ["ann@example.test", "bob@example.test", "cy@other.test"] {
        let texts = inbox(&tree, user);
        assert!(
            texts
                .iter()
                .any(|t| t.contains("Return-Path: <boss@example.test>")),
            "{user}"
        );
    }
    let out = mailall(&tree, &["--domain", "far.test"], b"Subject: x\n\nx\n");
    assert!(!out.status.success());
    assert!(
        stderr(&out).contains("not a local domain"),
        "{}",
        stderr(&out)
    );
}

#[test]
fn the_everyone_alias_is_for_listed_senders_only() {
    let tree = tree();
    let mut config = std::fs::read_to_string(&tree.config).unwrap();
    config.push_str("\n[mailall]\nalias = \"everyone\"\nsenders = [\"Boss@example.test\"]\n");
    std::fs::write(&tree.config, config).unwrap();
    tree.add_user("boss@example.test");

    // mail-inject: a listed sender reaches every user of the domain.
    let out = tree.inject(
        &["-f", "boss@example.test", "everyone@example.test"],
        b"Subject: news\n\nx\n",
    );
    assert!(out.status.success(), "{}", stderr(&out));
    for user in ["ann@example.test", "bob@example.test", "boss@example.test"] {
        assert_eq!(inbox(&tree, user).len(), 1, "{user}");
    }
    assert!(inbox(&tree, "cy@other.test").is_empty());
    let out = tree.inject(
        &["-f", "ann@example.test", "everyone@example.test"],
        b"Subject: no\n\nx\n",
    );
    assert_eq!(out.status.code(), Some(77), "{}", stderr(&out));
    assert!(stderr(&out).contains("5.7.1"), "{}", stderr(&out));
    assert_eq!(inbox(&tree, "bob@example.test").len(), 1);

    // SMTP from outside: an unlisted sender, and a listed one not logged in.
    let session = |from: &str| {
        let mut command = Command::new(bin("smtp-recv"));
        command
            .arg("--config")
            .arg(&tree.config)
            .env("REMOTE_ADDR", "192.0.2.9");
        let input =
            format!("EHLO c\r\nMAIL FROM:<{from}>\r\nRCPT TO:<everyone@example.test>\r\nQUIT\r\n");
        stdout(&run_with(command, input.as_bytes()))
    };
    let said = session("eve@far.test");
    assert!(
        said.contains("550 5.7.1 <everyone@example.test>: only the senders"),
        "{said}"
    );
    let said = session("boss@example.test");
    assert!(
        said.contains("550 5.7.1 <everyone@example.test>: log in"),
        "{said}"
    );
}
