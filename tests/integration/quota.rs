//! Quotas the admin and the user can see (issue 19, item 3): the notices
//! a user gets as deliveries fill the mailbox, the answer a sender gets
//! once it is full, and `postroom quota report` as text, JSON and a page
//! read in a real browser.

use std::process::Command;

use crate::list_expand::ok;
use crate::util::{Server, Tree, maildir_texts, rendered, run_queue, stderr, stdout};

/// What smtp-recv answers to RCPT TO:<rcpt> from bob.
fn rcpt_reply(tree: &Tree, rcpt: &str) -> String {
    let server = Server::start(tree, "smtp-recv", &[]);
    let out = Command::new("python3")
        .arg("-c")
        .arg(
            r#"
import os, smtplib
s = smtplib.SMTP("127.0.0.1", int(os.environ["PORT"]), timeout=30)
s.ehlo("client.test")
s.mail("bob@example.test")
code, text = s.rcpt(os.environ["RCPT"])
print(code, text.decode())
s.quit()
"#,
        )
        .env("PORT", server.port.to_string())
        .env("RCPT", rcpt)
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", stderr(&out));
    stdout(&out).trim().to_string()
}

fn add_user(tree: &Tree, address: &str, quota: Option<&str>) {
    let mut args = vec!["user", "add", address, "--password", "{PLAIN}secret"];
    if let Some(q) = quota {
        args.extend(["--quota", q]);
    }
    ok(&tree.postroom(&args));
}

fn append_config(tree: &Tree, text: &str) {
    let mut config = std::fs::read_to_string(&tree.config).unwrap();
    config.push_str(text);
    std::fs::write(&tree.config, config).unwrap();
}

/// Bob sends ann a message of about `size` bytes, and the queue runs.
fn send(tree: &Tree, n: usize, size: usize) {
    let message = format!(
        "From: bob@example.test\nSubject: message {n}\n\n{}\n",
        "x".repeat(size)
    );
    ok(&tree.inject(
        &["-f", "bob@example.test", "ann@example.test"],
        message.as_bytes(),
    ));
    run_queue(tree);
}

fn notices(tree: &Tree) -> Vec<String> {
    let mut subjects: Vec<String> = maildir_texts(&tree.maildir("ann"))
        .iter()
        .filter_map(|t| {
            t.lines()
                .find_map(|l| l.strip_prefix("Subject: Your mailbox is "))
                .map(str::to_string)
        })
        .collect();
    subjects.sort();
    subjects
}

#[test]
fn a_filling_mailbox_warns_once_per_level_and_a_full_one_bounces() {
    let tree = Tree::new();
    add_user(&tree, "ann@example.test", Some("10K"));
    add_user(&tree, "bob@example.test", None);
    append_config(&tree, "\n[quota]\nwarnings = [50, 90]\nfull = \"bounce\"\n");
    // About 2.9K a message with its headers, of 10K.
    send(&tree, 1, 2500);
    assert_eq!(notices(&tree), Vec::<String>::new(), "29%: no notice");
    send(&tree, 2, 2500);
    assert_eq!(notices(&tree), ["50% full"], "58%: past the first level");
    send(&tree, 3, 500);
    assert_eq!(
        notices(&tree),
        ["50% full"],
        "66%: the same level, no second notice"
    );
    send(&tree, 4, 2500);
    assert_eq!(
        notices(&tree),
        ["50% full", "90% full"],
        "94%: past the second"
    );
    let notice = maildir_texts(&tree.maildir("ann"))
        .into_iter()
        .find(|t| t.contains("Subject: Your mailbox is 90% full"))
        .unwrap();
    assert!(
        notice.contains("Auto-Submitted: auto-generated"),
        "{notice}"
    );
    assert!(
        notice.contains("delete mail you no longer need"),
        "{notice}"
    );

    // Full: with quota.full = "bounce" bob hears at once, with 5.2.2.
    send(&tree, 5, 2500);
    let ann = maildir_texts(&tree.maildir("ann"));
    assert!(!ann.iter().any(|t| t.contains("Subject: message 5")));
    let bounces: Vec<String> = maildir_texts(&tree.maildir("bob"))
        .into_iter()
        .filter(|t| t.contains("Undelivered Mail Returned to Sender"))
        .collect();
    assert_eq!(bounces.len(), 1, "{bounces:?}");
    assert!(bounces[0].contains("Status: 5.2.2"), "{}", bounces[0]);
    assert!(bounces[0].contains("mailbox is full"), "{}", bounces[0]);
    assert!(
        tree.queue().list().unwrap().is_empty(),
        "nothing left queued"
    );

    // Once the mailbox is at its quota, the sender hears it at RCPT.
    assert!(rcpt_reply(&tree, "ann@example.test").starts_with("250 "));
    ok(&tree.postroom(&["user", "quota", "ann@example.test", "5K"]));
    assert_eq!(
        rcpt_reply(&tree, "ann@example.test"),
        "552 5.2.2 <ann@example.test>: mailbox is full"
    );
    assert!(rcpt_reply(&tree, "bob@example.test").starts_with("250 "));
}

#[test]
fn a_full_mailbox_defers_by_default() {
    let tree = Tree::new();
    add_user(&tree, "ann@example.test", Some("2K"));
    add_user(&tree, "bob@example.test", None);
    send(&tree, 1, 2500);
    let queued = tree.queue().list().unwrap();
    assert_eq!(queued.len(), 1, "the message waits in the queue");
    let out = ok(&tree.postroom(&["queue", "show", &queued[0].to_string()]));
    assert!(out.contains("452 4.2.2"), "{out}");
    // Ann gets more room; the message goes in; then her quota shrinks
    // below what she holds, and her mailbox is full.
    ok(&tree.postroom(&["user", "quota", "ann@example.test", "1M"]));
    ok(&tree.postroom(&["queue", "retry", "--all"]));
    run_queue(&tree);
    assert!(tree.queue().list().unwrap().is_empty());
    ok(&tree.postroom(&["user", "quota", "ann@example.test", "1K"]));
    assert_eq!(
        rcpt_reply(&tree, "ann@example.test"),
        "452 4.2.2 <ann@example.test>: mailbox is full"
    );
}

#[test]
fn the_quota_report_sorts_users_totals_domains_and_reads_in_a_browser() {
    let tree = Tree::new();
    ok(&tree.postroom(&["domain", "add", "other.test"]));
    add_user(&tree, "ann@example.test", Some("10K"));
    add_user(&tree, "bob@example.test", Some("1M"));
    add_user(&tree, "carol@example.test", None);
    add_user(&tree, "dave@other.test", Some("5M"));
    send(&tree, 1, 8500);

    let text = ok(&tree.postroom(&["quota", "report"]));
    let lines: Vec<&str> = text.lines().collect();
    assert!(
        lines[0].starts_with("example.test: 3 user(s)") && lines[0].contains("quotas 1M"),
        "{text}"
    );
    // Ann, the fullest, comes first; carol, without a quota, last.
    assert!(
        lines[1].contains("ann@example.test") && lines[1].contains("% "),
        "{text}"
    );
    assert!(
        lines[2].contains("bob@example.test") && lines[2].contains("0%"),
        "{text}"
    );
    assert!(
        lines[3].contains("carol@example.test") && lines[3].contains("no quota"),
        "{text}"
    );
    assert!(lines[4].starts_with("other.test: 1 user(s)"), "{text}");

    let json: serde_json::Value =
        serde_json::from_str(&ok(&tree.postroom(&["quota", "report", "--json"]))).unwrap();
    let ann = &json[0]["users"][0];
    assert_eq!(ann["address"], "ann@example.test");
    assert_eq!(ann["quota"], 10240);
    let used = ann["used"].as_u64().unwrap();
    assert!(used > 8500 && used < 10_000, "{used}");
    assert_eq!(ann["percent"], used * 100 / 10240);
    assert_eq!(json[0]["used"], used, "the domain's total");
    assert_eq!(json[0]["quota"], 10240 + (1 << 20));
    assert_eq!(json[1]["domain"], "other.test");

    let only = ok(&tree.postroom(&["quota", "report", "--domain", "other.test"]));
    assert!(
        only.contains("dave@other.test") && !only.contains("ann@"),
        "{only}"
    );
    let none = tree.postroom(&["quota", "report", "--domain", "nowhere.test"]);
    assert!(!none.status.success());
    assert!(
        stderr(&none).contains("no users in nowhere.test"),
        "{}",
        stderr(&none)
    );

    let page = tree.dir.path().join("quota.html");
    ok(&tree.postroom(&["quota", "report", "--html", page.to_str().unwrap()]));
    let dom = rendered(&page);
    assert!(dom.contains("<h1>Mailbox quotas on"), "{dom}");
    for expected in [
        "<h2>example.test</h2>",
        "<h2>other.test</h2>",
        "ann@example.test",
        "carol@example.test",
        "3 user(s)",
    ] {
        assert!(dom.contains(expected), "{expected} not in {dom}");
    }
    assert!(
        dom.contains("<tr class=\"warn\"><td>ann@example.test"),
        "{dom}"
    );
    let raw = std::fs::read_to_string(&page).unwrap();
    assert!(
        !raw.contains("<script") && !raw.contains("http"),
        "self-contained"
    );
}
