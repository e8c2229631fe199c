//! DKIM signing end to end: keys made with `postroom dkim keygen`, their
//! records served by the loopback DNS server, mail written by every kind
//! of writer (mail-inject, an authenticated smtp-recv client, a list post
//! with a footer from an outside author, a Sieve redirect with an SRS
//! sender) sent by smtp-send to a loopback
//! sink, and every copy the sink got verified by mail-auth (through the
//! DNS server) and by an independent implementation, Python's dkimpy.

use std::collections::HashMap;
use std::io::Write;
use std::process::{Command, Stdio};

use crate::dns::Record;
use crate::list_expand::{list_expand, ok as list_ok, open_team_with_footer};
use crate::smtp_recv::{ANN_LOGS_IN, python};
use crate::smtp_send::{World, a, mx, ok};
use crate::util::{Server, Tree, stderr, stdout};

/// A tree with an Ed25519 and an RSA key for example.test, and the records
/// of both (name → text).
pub(crate) fn tree_with_keys() -> (Tree, HashMap<String, String>) {
    let tree = Tree::new();
    tree.add_user("ann@example.test");
    tree.add_user("postmaster@example.test");
    for (selector, algorithm) in [("ed", "ed25519"), ("rsa", "rsa2048")] {
        let out = tree.postroom(&[
            "dkim",
            "keygen",
            "example.test",
            "--selector",
            selector,
            "--algorithm",
            algorithm,
        ]);
        assert!(out.status.success(), "keygen: {}", stderr(&out));
        assert!(
            stdout(&out).contains(&format!("{selector}._domainkey.example.test. IN TXT")),
            "{}",
            stdout(&out)
        );
    }
    let config = tree.load_config();
    assert_eq!(config.dkim.len(), 2, "keygen adds each key to the config");
    let records = config
        .dkim
        .iter()
        .map(|key| {
            (
                postroom::delivery::dkim::record_name(key),
                postroom::delivery::dkim::record(&config, key).unwrap(),
            )
        })
        .collect();
    (tree, records)
}

/// mail-auth's verifier asking the test DNS server, and a runtime to run
/// it on.
pub(crate) fn verifier(
    config: &postroom::config::Config,
) -> (mail_auth::MessageAuthenticator, tokio::runtime::Runtime) {
    let authenticator = postroom::net::dns::authenticator(config).unwrap();
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    (authenticator, runtime)
}

/// What mail-auth says of each signature, asking the test DNS server.
pub(crate) fn mail_auth_results(config: &postroom::config::Config, message: &[u8]) -> Vec<String> {
    let (authenticator, runtime) = verifier(config);
    let parsed = mail_auth::AuthenticatedMessage::parse(message).unwrap();
    runtime
        .block_on(authenticator.verify_dkim(mail_auth::Parameters::new(&parsed)))
        .iter()
        .map(|o| format!("{:?}", o.result()))
        .collect()
}

/// dkimpy, the message on stdin, and `dnsfunc` answering from the records
/// (a JSON object, the first argument): what every dkimpy check starts with.
const DKIMPY_SETUP: &str = r#"
import json, sys
try:
    import dkim
except ImportError:
    sys.exit("dkimpy is not installed (.ci/run installs it: pip install 'dkimpy[ed25519]')")
records = json.loads(sys.argv[1])
def dnsfunc(name, timeout=5):
    name = name.decode() if isinstance(name, bytes) else name
    return records.get(name.rstrip(".").lower(), "").encode()
message = sys.stdin.buffer.read()
"#;

const DKIMPY: &str = r#"
d = dkim.DKIM(message)
count = sum(1 for line in message.split(b"\r\n\r\n")[0].split(b"\r\n")
            if line.lower().startswith(b"dkim-signature:"))
results = [d.verify(idx=i, dnsfunc=dnsfunc) for i in range(count)]
print(count, results)
sys.exit(0 if count and all(results) else 1)
"#;

/// dkimpy's verdict on every signature: (all passed, what it printed).
fn dkimpy(records: &HashMap<String, String>, message: &[u8]) -> (bool, String) {
    run_dkimpy(DKIMPY, records, message)
}

/// Runs a dkimpy `check` (after [`DKIMPY_SETUP`]) on `message`: (it
/// exited 0, what it printed).
pub(crate) fn run_dkimpy(
    check: &str,
    records: &HashMap<String, String>,
    message: &[u8],
) -> (bool, String) {
    let script = format!("{DKIMPY_SETUP}{check}");
    let mut child = Command::new("python3")
        .args(["-c", &script, &serde_json::to_string(records).unwrap()])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("python3");
    child.stdin.take().unwrap().write_all(message).unwrap();
    let out = child.wait_with_output().unwrap();
    (
        out.status.success(),
        format!("{}{}", stdout(&out), stderr(&out)),
    )
}

#[test]
fn every_writers_mail_leaves_signed_twice_and_verifies_with_mail_auth_and_dkimpy() {
    let (tree, records) = tree_with_keys();
    let mut dns = vec![("far.test", mx(10, "mx.far.test")), ("mx.far.test", a(2))];
    for (name, text) in &records {
        dns.push((name.as_str(), Record::Txt(text.clone())));
    }
    // Ann's Sieve rules redirect what a stranger sends her, with SRS.
    std::fs::write(tree.root().join("srs-secret"), "a secret of ours\n").unwrap();
    crate::mailsort::sort_anns_mail(&tree, "redirect \"fred@far.test\";\n");
    let w = World::with_tree(
        tree,
        dns,
        "\n[sieve]\nsrs_secret_file = \"srs-secret\"\nsrs_domain = \"example.test\"\n",
    );
    let sink = w.sink(2, Default::default());

    // mail-inject: a header and a body line too long for SMTP, which
    // smtp-send would fold: they are folded before signing. (ASCII: 8-bit
    // mail from mail-inject asks for SMTPUTF8, which the sink lacks; the
    // other two carry 8-bit bodies.)
    let long_subject = vec!["word"; 300].join(" ");
    let long_line = "z".repeat(2500);
    let message = format!(
        "From: Ann <ann@example.test>\nTo: bob@far.test\nSubject: {long_subject}\n\
         X-Unbroken: {long_line}\n\ncafe creme\n{long_line}\n.leading dot\n"
    );
    let out = w.tree.inject(
        &["-f", "ann@example.test", "bob@far.test"],
        message.as_bytes(),
    );
    assert!(out.status.success(), "inject: {}", stderr(&out));

    // smtp-recv: a user logged in (submission).
    let server = Server::start(&w.tree, "smtp-recv", &[]);
    let script = ANN_LOGS_IN.to_string()
        + r#"
s.sendmail("ann@example.test", ["carl@far.test"],
    "From: ann@example.test\r\nTo: carl@far.test\r\nSubject: submitted\r\nDate: Wed, 2 Dec 2026 10:00:00 +0000\r\n\r\nvia submission \u00e9\r\n".encode())
s.quit()
"#;
    let (passed, said) = python(&script, server.port);
    assert!(passed, "smtplib: {said}");

    // A list post from an outside author, with a footer: signed for the
    // list's domain (the envelope sender's), the footer inside the body
    // hash.
    open_team_with_footer(&w.tree, b"dora@far.test\n");
    list_ok(&list_expand(
        &w.tree,
        &["post", "team@example.test", "--sender", "eve@far.test"],
        "From: eve@far.test\nTo: team@example.test\nSubject: hello list\n\nna\u{ef}ve\n".as_bytes(),
    ));

    // A redirect: signed for the SRS sender's domain, ours.
    let out = w.tree.inject(
        &["-f", "dave@far.test", "ann@example.test"],
        b"From: dave@far.test\nTo: ann@example.test\nSubject: pass it on\n\nplease\n",
    );
    assert!(out.status.success(), "inject: {}", stderr(&out));

    let sent = w.send(&["--once"]);
    ok(&sent);
    let got = sink.messages();
    assert_eq!(
        got.len(),
        4,
        "{:?}\n{}{}",
        got.iter().map(|m| &m.rcpts).collect::<Vec<_>>(),
        stderr(&sent),
        stdout(&w.tree.postroom(&["queue", "list"]))
    );
    let config = w.tree.load_config();
    for message in &got {
        let data = &message.data;
        let text = String::from_utf8_lossy(data);
        assert!(
            text.split("\r\n").all(|line| line.len() <= 998),
            "smtp-send sent a line over 998 octets"
        );
        assert_eq!(
            text.matches("DKIM-Signature: v=1; a=").count(),
            2,
            "signed with both keys:\n{text}"
        );
        assert_eq!(
            mail_auth_results(&config, data),
            ["Pass", "Pass"],
            "mail-auth, {:?}:\n{text}",
            message.rcpts
        );
        let (passed, said) = dkimpy(&records, data);
        assert!(passed, "dkimpy, {:?}: {said}\n{text}", message.rcpts);
    }
    let bodies: Vec<String> = got
        .iter()
        .map(|m| String::from_utf8_lossy(&m.data).into_owned())
        .collect();
    assert!(
        bodies
            .iter()
            .any(|b| b.contains("To leave: mail team-request"))
    );
    assert!(bodies.iter().any(|b| b.contains("via submission")));
    assert!(bodies.iter().any(|b| b.contains("pass it on")));
    assert!(bodies.iter().any(|b| b.contains(&long_line[..900])));

    // A tampered copy fails both: the checks above are not vacuous.
    let mut tampered = got[1].data.clone();
    let at = tampered.len() - 4;
    tampered[at] ^= 1;
    assert!(!mail_auth_results(&config, &tampered).contains(&"Pass".to_string()));
    assert!(!dkimpy(&records, &tampered).0);
}

#[test]
fn without_its_key_mail_is_refused_before_it_is_accepted_never_sent_unsigned() {
    let (tree, _) = tree_with_keys();
    std::fs::remove_file(tree.root().join("dkim/example.test/rsa.pem")).unwrap();
    let out = tree.inject(
        &["-f", "ann@example.test", "bob@far.test"],
        b"From: ann@example.test\nSubject: x\n\nhi\n",
    );
    assert_eq!(out.status.code(), Some(75), "{}", stderr(&out));
    assert!(
        stderr(&out).contains("postroom dkim keygen"),
        "{}",
        stderr(&out)
    );
    assert!(tree.queue().list().unwrap().is_empty(), "nothing queued");
    // smtp-recv: 451 after DATA, never the 250.
    let server = Server::start(&tree, "smtp-recv", &[]);
    let script = ANN_LOGS_IN.to_string()
        + r#"
try:
    s.sendmail("ann@example.test", ["bob@far.test"], b"From: ann@example.test\r\n\r\nhi\r\n")
    raise SystemExit("accepted without its signature")
except smtplib.SMTPDataError as e:
    assert e.smtp_code == 451, e
"#;
    let (passed, said) = python(&script, server.port);
    assert!(passed, "smtplib: {said}");
    assert!(tree.queue().list().unwrap().is_empty(), "nothing queued");
    // Mail that stays here needs no signature.
    let out = tree.inject(
        &["-f", "ann@example.test", "ann@example.test"],
        b"From: ann@example.test\nSubject: x\n\nhi\n",
    );
    assert!(out.status.success(), "{}", stderr(&out));
}

#[test]
fn check_says_which_records_match_their_keys() {
    let (tree, records) = tree_with_keys();
    let ed = records["ed._domainkey.example.test"].clone();
    // The RSA selector publishes the Ed25519 key: a mismatch.
    let w = World::with_tree(
        tree,
        vec![
            ("ed._domainkey.example.test", Record::Txt(ed.clone())),
            ("rsa._domainkey.example.test", Record::Txt(ed)),
        ],
        "",
    );
    let out = w.tree.postroom(&["check"]);
    let said = stdout(&out);
    assert!(!out.status.success(), "{said}");
    assert!(
        said.contains("notice: dkim: ed._domainkey.example.test publishes the key"),
        "{said}"
    );
    assert!(
        said.contains("problem: dkim: rsa._domainkey.example.test publishes another key"),
        "{said}"
    );
    assert!(
        said.contains("rsa._domainkey.example.test. IN TXT ( \"v=DKIM1; k=rsa; p="),
        "{said}"
    );
}
