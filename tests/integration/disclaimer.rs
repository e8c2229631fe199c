//! Disclaimers (`[disclaimer]`, postroom.toml(5)) end to end: mail a user
//! sends out (mail-inject, and a client logged in to smtp-recv) reaches a
//! loopback sink with the text added as list footers are, plain, HTML or
//! wrapped; signed mail, mail that stays here and mail from other domains
//! arrive unchanged; and the DKIM signatures, made after the text went in,
//! verify.

use mail_parser::{MessageParser, PartType};

use crate::dkim::{mail_auth_results, tree_with_keys};
use crate::dns::Record;
use crate::smtp_recv::{ANN_LOGS_IN, python};
use crate::smtp_send::{World, a, mx, ok};
use crate::util::{Server, maildir_files, stderr};

const RULE: &str = "\n[disclaimer.\"example.test\"]\nplain = \"Example Ltd: this mail is confidential.\"\n\
                    html = \"<p class=disclaimer>Example Ltd: this mail is confidential.</p>\"\n";

/// The texts of a message's text parts, trimmed.
fn texts(message: &[u8]) -> Vec<String> {
    let parsed = MessageParser::default().parse(message).unwrap();
    parsed
        .parts
        .iter()
        .filter_map(|p| match &p.body {
            PartType::Text(t) | PartType::Html(t) => Some(t.trim().to_string()),
            _ => None,
        })
        .collect()
}

#[test]
fn outgoing_mail_gets_the_disclaimer_before_it_is_signed() {
    let (tree, records) = tree_with_keys();
    let mut dns = vec![("far.test", mx(10, "mx.far.test")), ("mx.far.test", a(2))];
    for (name, text) in &records {
        dns.push((name.as_str(), Record::Txt(text.clone())));
    }
    let w = World::with_tree(tree, dns, RULE);
    let sink = w.sink(2, Default::default());

    // mail-inject, plain text: appended.
    let out = w.tree.inject(
        &["-f", "ann@example.test", "bob@far.test"],
        b"From: ann@example.test\nTo: bob@far.test\nSubject: plain\n\nhello bob\n",
    );
    assert!(out.status.success(), "inject: {}", stderr(&out));

    // Submission: an HTML message, a multipart/alternative one and a
    // signed one.
    let server = Server::start(&w.tree, "smtp-recv", &[]);
    let script = ANN_LOGS_IN.to_string()
        + r#"
h = "From: ann@example.test\r\nTo: carl@far.test\r\nMIME-Version: 1.0\r\n"
s.sendmail("ann@example.test", ["carl@far.test"], (h + "Subject: html\r\n"
    "Content-Type: text/html; charset=utf-8\r\n\r\n<html><body><p>hi carl</p></body></html>\r\n").encode())
s.sendmail("ann@example.test", ["carl@far.test"], (h + "Subject: alternative\r\n"
    "Content-Type: multipart/alternative; boundary=\"b1\"\r\n\r\n--b1\r\nContent-Type: text/plain\r\n\r\n"
    "hi carl\r\n--b1\r\nContent-Type: text/html\r\n\r\n<p>hi carl</p>\r\n--b1--\r\n").encode())
s.sendmail("ann@example.test", ["carl@far.test"], (h + "Subject: signed\r\n"
    "Content-Type: multipart/signed; protocol=\"application/pgp-signature\"; micalg=pgp-sha256; boundary=\"s1\"\r\n\r\n"
    "--s1\r\nContent-Type: text/plain\r\n\r\nsigned words\r\n--s1\r\n"
    "Content-Type: application/pgp-signature\r\n\r\nSIG\r\n--s1--\r\n").encode())
s.quit()
"#;
    let (passed, said) = python(&script, server.port);
    assert!(passed, "smtplib: {said}");

    // Mail from another domain gets nothing.
    let out = w.tree.inject(
        &["-f", "dave@elsewhere.test", "bob@far.test"],
        b"From: dave@elsewhere.test\nSubject: foreign\n\nhello\n",
    );
    assert!(out.status.success(), "inject: {}", stderr(&out));

    // Mail that stays here gets nothing.
    let out = w.tree.inject(
        &["-f", "ann@example.test", "ann@example.test"],
        b"From: ann@example.test\nSubject: internal\n\nhello me\n",
    );
    assert!(out.status.success(), "inject: {}", stderr(&out));
    let mine = std::fs::read_to_string(&maildir_files(&w.tree.maildir("ann"))[0]).unwrap();
    assert!(!mine.contains("confidential"), "{mine}");

    ok(&w.send(&["--once"]));
    let got = sink.messages();
    assert_eq!(got.len(), 5);
    let config = w.tree.load_config();
    let by_subject = |subject: &str| {
        got.iter()
            .map(|m| m.data.clone())
            .find(|d| String::from_utf8_lossy(d).contains(&format!("Subject: {subject}\r\n")))
            .unwrap_or_else(|| panic!("no message {subject}"))
    };
    let foreign = by_subject("foreign");
    assert!(!String::from_utf8_lossy(&foreign).contains("confidential"));
    for message in got.iter().filter(|m| m.data != foreign) {
        assert_eq!(
            mail_auth_results(&config, &message.data),
            ["Pass", "Pass"],
            "signed after the disclaimer went in:\n{}",
            String::from_utf8_lossy(&message.data)
        );
    }
    let plain = by_subject("plain");
    assert!(
        String::from_utf8_lossy(&plain)
            .ends_with("\r\n\r\nhello bob\r\nExample Ltd: this mail is confidential.\r\n"),
        "{}",
        String::from_utf8_lossy(&plain)
    );
    let html = by_subject("html");
    assert!(
        String::from_utf8_lossy(&html).ends_with(
            "<html><body><p>hi carl</p>\r\n\
             <p class=disclaimer>Example Ltd: this mail is confidential.</p>\r\n</body></html>\r\n"
        ),
        "{}",
        String::from_utf8_lossy(&html)
    );
    assert_eq!(
        texts(&by_subject("alternative")),
        [
            "hi carl",
            "<p>hi carl</p>",
            "Example Ltd: this mail is confidential.",
            "<p class=disclaimer>Example Ltd: this mail is confidential.</p>"
        ]
    );
    let signed = String::from_utf8_lossy(&by_subject("signed")).into_owned();
    assert!(!signed.contains("confidential"), "{signed}");
    assert!(signed.ends_with(
        "\r\n\r\n--s1\r\nContent-Type: text/plain\r\n\r\nsigned words\r\n--s1\r\n\
         Content-Type: application/pgp-signature\r\n\r\nSIG\r\n--s1--\r\n"
    ));
}

#[test]
fn only_the_sources_and_domains_a_rule_names_get_it() {
    let w = World::with_tree(
        {
            let tree = crate::util::Tree::new();
            tree.add_user("ann@example.test");
            tree
        },
        vec![],
        &format!("{RULE}sources = [\"submission\"]\n"),
    );
    let queued_body = |args: &[&str], message: &[u8]| {
        let out = w.tree.inject(args, message);
        assert!(out.status.success(), "inject: {}", stderr(&out));
        let queue = w.tree.queue();
        let ids = queue.list().unwrap();
        let message = queue.read(ids.last().unwrap()).unwrap();
        String::from_utf8(postroom::store::queue::read_body(&message).unwrap()).unwrap()
    };
    // mail-inject is not a source the rule names.
    let body = queued_body(
        &["-f", "ann@example.test", "bob@far.test"],
        b"From: ann@example.test\nSubject: x\n\nhi\n",
    );
    assert!(!body.contains("confidential"), "{body}");
    // Through smtp-recv, logged in: it is.
    let server = Server::start(&w.tree, "smtp-recv", &[]);
    let script = ANN_LOGS_IN.to_string()
        + r#"
s.sendmail("ann@example.test", ["bob@far.test"], b"From: ann@example.test\r\nSubject: y\r\n\r\nhi\r\n")
s.quit()
"#;
    let (passed, said) = python(&script, server.port);
    assert!(passed, "smtplib: {said}");
    let queue = w.tree.queue();
    let ids = queue.list().unwrap();
    assert_eq!(ids.len(), 2);
    let submitted = queue.read(&ids[1]).unwrap();
    let body = String::from_utf8(postroom::store::queue::read_body(&submitted).unwrap()).unwrap();
    assert!(
        body.ends_with("\r\nhi\r\nExample Ltd: this mail is confidential.\r\n"),
        "{body}"
    );
}
