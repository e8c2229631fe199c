//! ARC (RFC 8617) end to end: a message DKIM-signed by its author's
//! domain arrives through smtp-recv, which validates its (empty) ARC chain
//! and records the result; Ann's Sieve rules redirect it and a list posts
//! it with a footer; smtp-send takes both to a loopback sink. Each copy
//! carries our ARC set, which mail-auth's `verify_arc` (through the test
//! DNS server) and Python dkimpy's `arc_verify` accept. A second trip
//! through smtp-recv and a redirect seals it again (i=2, cv=pass); a copy
//! changed on the way is sealed cv=fail and fails both verifiers.

use std::collections::HashMap;

use crate::dkim::{run_dkimpy, tree_with_keys, verifier};
use crate::dns::Record;
use crate::list_expand::open_team_with_footer;
use crate::sink::{Received, Sink};
use crate::smtp_recv::python;
use crate::smtp_send::{World, a, mx, ok};
use crate::util::{Server, bin, stderr, wait_until};

/// dkimpy's `arc_verify`: exits 0 for cv=pass.
const DKIMPY_ARC: &str = r#"
cv, results, reason = dkim.arc_verify(message, dnsfunc=dnsfunc)
print(cv, reason)
sys.exit(0 if cv == dkim.CV_Pass else 1)
"#;

/// dkimpy's verdict on the chain: (cv=pass, what it printed).
fn dkimpy_arc(records: &HashMap<String, String>, message: &[u8]) -> (bool, String) {
    run_dkimpy(DKIMPY_ARC, records, message)
}

/// mail-auth's verdict on the chain, asking the test DNS server, and each
/// seal's instance and cv.
fn mail_auth_arc(config: &postroom::config::Config, message: &[u8]) -> (String, Vec<String>) {
    let (authenticator, runtime) = verifier(config);
    let parsed = mail_auth::AuthenticatedMessage::parse(message).unwrap();
    let output = runtime.block_on(authenticator.verify_arc(mail_auth::Parameters::new(&parsed)));
    let seals = output
        .sets()
        .iter()
        .map(|s| format!("i={} cv={:?}", s.seal.header.i, s.seal.header.cv))
        .collect();
    (format!("{:?}", output.result()), seals)
}

/// Sends `message` from a stranger through smtp-recv to `rcpts`.
fn arrive(server: &Server, dir: &std::path::Path, rcpts: &[&str], message: &[u8]) {
    let file = dir.join("message.eml");
    std::fs::write(&file, message).unwrap();
    let script = format!(
        r#"
import os, smtplib
s = smtplib.SMTP("127.0.0.1", int(os.environ["PORT"]), timeout=30)
s.sendmail("carol@origin.test", {rcpts:?}, open({file:?}, "rb").read())
s.quit()
"#,
        file = file.display().to_string()
    );
    let (passed, said) = python(&script, server.port);
    assert!(passed, "smtplib: {said}");
}

/// The one copy the sink got for `rcpt`, after a queue run.
fn sent_to(w: &World, sink: &Sink, rcpt: &str) -> Received {
    let sent = w.send(&["--once"]);
    ok(&sent);
    let mut got: Vec<Received> = sink
        .messages()
        .into_iter()
        .filter(|m| m.rcpts.iter().any(|r| r == rcpt))
        .collect();
    assert_eq!(got.len(), 1, "for {rcpt}: {}", stderr(&sent));
    got.remove(0)
}

fn sieve(w: &World, user: &str, script: &str) {
    let dir = w.tree.maildir(user).join("sieve");
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(dir.join("active.sieve"), script).unwrap();
}

#[test]
fn redirects_and_list_posts_leave_sealed_and_each_hop_adds_a_set() {
    let (tree, mut records) = tree_with_keys();
    tree.add_user("bea@example.test");
    // The author's domain signs with a key of its own.
    let mut origin = tree.load_config();
    let key = postroom::delivery::dkim::write_key(
        &origin,
        "origin.test",
        "o",
        postroom::config::DkimAlgorithm::Ed25519,
    )
    .unwrap();
    records.insert(
        postroom::delivery::dkim::record_name(&key),
        postroom::delivery::dkim::record(&origin, &key).unwrap(),
    );
    origin.dkim = vec![key];
    let post = "From: Carol <carol@origin.test>\r\nTo: ann@example.test, team@example.test\r\n\
                Subject: for the team\r\nDate: Wed, 2 Dec 2026 10:00:00 +0000\r\n\
                Message-ID: <arc-1@origin.test>\r\n\r\nLet us meet.\r\n";
    let carol = postroom::proto::address::ReversePath::parse("carol@origin.test").unwrap();
    let signed =
        postroom::delivery::dkim::signatures(&origin, &carol, post.as_bytes()).unwrap() + post;

    let mut dns = vec![("far.test", mx(10, "mx.far.test")), ("mx.far.test", a(2))];
    for (name, text) in &records {
        dns.push((name.as_str(), Record::Txt(text.clone())));
    }
    std::fs::write(tree.root().join("srs-secret"), "a secret of ours\n").unwrap();
    let w = World::with_tree(
        tree,
        dns,
        "\n[smtp]\ndkim = true\narc = true\n\n\
         [sieve]\nsrs_secret_file = \"srs-secret\"\nsrs_domain = \"example.test\"\n",
    );
    let sink = w.sink(2, Default::default());
    let pipe = |program: &str, args: &str| {
        format!(
            "\"|{} --config {} {args}\"",
            bin(program).display(),
            w.tree.config.display()
        )
    };
    std::fs::write(
        w.tree.root().join("aliases"),
        format!(
            "ann@example.test: {}\nbea@example.test: {}\nteam@example.test: {}\n",
            pipe("mailsort", "--user ann@example.test"),
            pipe("mailsort", "--user bea@example.test"),
            pipe("list-expand", "post team@example.test"),
        ),
    )
    .unwrap();
    sieve(&w, "ann", "redirect \"fred@far.test\";\n");
    sieve(&w, "bea", "redirect \"gus@far.test\";\n");
    open_team_with_footer(&w.tree, b"dora@far.test\n");

    let server = Server::start(&w.tree, "smtp-recv", &[]);
    let scratch = w.tree.dir.path().to_path_buf();
    arrive(
        &server,
        &scratch,
        &["ann@example.test", "team@example.test"],
        signed.as_bytes(),
    );
    let config = w.tree.load_config();
    let redirected = sent_to(&w, &sink, "fred@far.test");
    let posted = sent_to(&w, &sink, "dora@far.test");
    for copy in [&redirected, &posted] {
        let text = String::from_utf8_lossy(&copy.data);
        assert!(
            text.starts_with("ARC-Seal: i=1; a=rsa-sha256; s=rsa; d=example.test; cv=none;"),
            "{:?}:\n{text}",
            copy.rcpts
        );
        assert_eq!(
            text.matches("ARC-Seal:").count(),
            1,
            "one set a hop:\n{text}"
        );
        // Our results on arrival, the author's signature good then.
        assert!(
            text.contains("ARC-Authentication-Results: i=1;\r\n\tmail.example.test;\r\n\tarc=none smtp.remote-ip=127.0.0.1;\r\n\t"),
            "the ARC verdict first, where the sealer reads it: {text}"
        );
        assert!(text.contains("dkim=pass header.d=origin.test"), "{text}");
        assert_eq!(
            mail_auth_arc(&config, &copy.data),
            ("Pass".into(), vec!["i=1 cv=None".into()]),
            "{text}"
        );
        let (passed, said) = dkimpy_arc(&records, &copy.data);
        assert!(passed, "dkimpy: {said}\n{text}");
    }
    assert!(String::from_utf8_lossy(&posted.data).contains("To leave: mail team-request"));

    // The next hop: the redirected copy comes back in, smtp-recv finds the
    // chain good, Bea's rules redirect it: a second set, cv=pass.
    arrive(&server, &scratch, &["bea@example.test"], &redirected.data);
    let again = sent_to(&w, &sink, "gus@far.test");
    let text = String::from_utf8_lossy(&again.data);
    assert!(
        text.starts_with("ARC-Seal: i=2; a=rsa-sha256; s=rsa; d=example.test; cv=pass;"),
        "{text}"
    );
    assert!(text.contains("arc=pass smtp.remote-ip=127.0.0.1"), "{text}");
    assert_eq!(
        mail_auth_arc(&config, &again.data),
        (
            "Pass".into(),
            vec!["i=1 cv=None".into(), "i=2 cv=Pass".into()]
        ),
        "{text}"
    );
    let (passed, said) = dkimpy_arc(&records, &again.data);
    assert!(passed, "dkimpy: {said}\n{text}");

    // The list's copy changed on the way: smtp-recv records arc=fail,
    // the redirect seals cv=fail, and neither verifier passes it.
    let mut changed = posted.data.clone();
    let at = changed.len() - 6;
    changed[at] ^= 1;
    assert_ne!(mail_auth_arc(&config, &changed).0, "Pass", "not vacuous");
    assert!(!dkimpy_arc(&records, &changed).0, "not vacuous");
    let before = sink.messages().len();
    arrive(&server, &scratch, &["bea@example.test"], &changed);
    ok(&w.send(&["--once"]));
    let failed = wait_until(
        "the changed copy sent",
        std::time::Duration::from_secs(10),
        || sink.messages().into_iter().nth(before),
    );
    let text = String::from_utf8_lossy(&failed.data);
    assert!(text.contains("arc=fail"), "{text}");
    assert!(
        text.starts_with("ARC-Seal: i=2; a=rsa-sha256; s=rsa; d=example.test; cv=fail;"),
        "{text}"
    );
    assert!(
        mail_auth_arc(&config, &failed.data).0.starts_with("Fail"),
        "{text}"
    );
    assert!(!dkimpy_arc(&records, &failed.data).0, "{text}");
}
