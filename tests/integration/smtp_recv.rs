//! smtp-recv end to end: real clients (Python's smtplib, swaks) and raw
//! sockets against the real binary, standalone and in inetd mode.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use crate::util::{
    Server, Tree, bin, configure, connect_loopback, maildir_files, maildir_texts, stderr, stdout,
};

/// Runs a Python script with PORT set; returns (success, stdout+stderr).
/// The start of a Python script in which ann logs in over STARTTLS
/// (submission); the caller adds what `s` sends.
pub(crate) const ANN_LOGS_IN: &str = r#"
import os, smtplib, ssl
s = smtplib.SMTP("127.0.0.1", int(os.environ["PORT"]), timeout=10)
ctx = ssl.create_default_context(); ctx.check_hostname = False; ctx.verify_mode = ssl.CERT_NONE
s.starttls(context=ctx)
s.login("ann@example.test", "secret")
"#;

pub(crate) fn python(script: &str, port: u16) -> (bool, String) {
    let out = Command::new("python3")
        .arg("-c")
        .arg(script)
        .env("PORT", port.to_string())
        .output()
        .expect("python3 runs");
    (
        out.status.success(),
        format!("{}{}", stdout(&out), stderr(&out)),
    )
}

/// A raw SMTP conversation: sends `input` in one write, reads until the
/// server closes or `wait` passes.
fn raw(port: u16, input: &[u8], wait: Duration) -> String {
    let mut stream = TcpStream::connect(("127.0.0.1", port)).unwrap();
    stream.set_read_timeout(Some(wait)).unwrap();
    let mut reader = BufReader::new(stream.try_clone().unwrap());
    let mut greeting = String::new();
    reader.read_line(&mut greeting).unwrap();
    stream.write_all(input).unwrap();
    let mut out = greeting;
    let _ = reader.read_to_string(&mut out);
    out
}

fn tree_with_users() -> Tree {
    let tree = Tree::new();
    tree.add_user("ann@example.test");
    tree.add_user("bob@example.test");
    tree
}

#[test]
fn smtplib_plain_starttls_auth_and_relay() {
    let tree = tree_with_users();
    let server = Server::start(&tree, "smtp-recv", &[]);
    let script = r#"
import os, smtplib, ssl
port = int(os.environ["PORT"])
s = smtplib.SMTP("127.0.0.1", port, timeout=10)
code, caps = s.ehlo("client.test")
assert code == 250 and b"PIPELINING" in caps and b"STARTTLS" in caps, caps
s.sendmail("sender@remote.test", ["ann@example.test"], b"Subject: one\r\n\r\nfirst\r\n")
try:
    s.sendmail("sender@remote.test", ["x@elsewhere.test"], b"Subject: relay\r\n\r\nno\r\n")
    raise SystemExit("relay was accepted without auth")
except smtplib.SMTPRecipientsRefused as e:
    assert e.recipients["x@elsewhere.test"][0] == 554, e.recipients
ctx = ssl.create_default_context(); ctx.check_hostname = False; ctx.verify_mode = ssl.CERT_NONE
s.starttls(context=ctx)
code, caps = s.ehlo("client.test")
assert b"STARTTLS" not in caps and b"AUTH PLAIN LOGIN" in caps, caps
try:
    s.login("ann@example.test", "wrong")
    raise SystemExit("bad password accepted")
except smtplib.SMTPAuthenticationError as e:
    assert e.smtp_code == 535
s.login("ann@example.test", "secret")
s.sendmail("ann@example.test", ["bob@example.test", "friend@elsewhere.test"], b"Subject: two\r\n\r\nsecond\r\n")
s.quit()
print("ok")
"#;
    let (ok, said) = python(script, server.port);
    assert!(ok, "{said}");
    assert_eq!(maildir_files(&tree.maildir("ann")).len(), 1);
    let bob = maildir_files(&tree.maildir("bob"));
    assert_eq!(bob.len(), 1);
    let text = std::fs::read_to_string(&bob[0]).unwrap();
    assert!(text.contains("with ESMTPSA (TLS"), "{text}");
    // The remote copy waits in the queue for smtp-send, bob's is done.
    let queue = tree.queue();
    let ids = queue.list().unwrap();
    assert_eq!(ids.len(), 1);
    let message = queue.read(&ids[0]).unwrap();
    assert_eq!(message.pending().count(), 1);
    assert_eq!(
        message.envelope.auth.as_ref().map(|a| a.as_str()),
        Some("ann@example.test")
    );
}

#[test]
fn swaks_in_inetd_mode_with_pipelining() {
    let tree = tree_with_users();
    if Command::new("swaks").arg("--version").output().is_err() {
        panic!("swaks is not installed (.ci/run installs it)");
    }
    let pipe = format!(
        "{} --config {}",
        bin("smtp-recv").display(),
        tree.config.display()
    );
    let out = Command::new("swaks")
        .args([
            "--pipe",
            &pipe,
            "--to",
            "ann@example.test",
            "--from",
            "s@remote.test",
        ])
        .args([
            "--pipeline",
            "--header",
            "Subject: via swaks",
            "--body",
            "hello from swaks",
        ])
        .output()
        .unwrap();
    assert!(out.status.success(), "{}{}", stdout(&out), stderr(&out));
    let files = maildir_files(&tree.maildir("ann"));
    assert_eq!(files.len(), 1);
    assert!(
        std::fs::read_to_string(&files[0])
            .unwrap()
            .contains("hello from swaks")
    );
}

#[test]
fn smuggling_sequences_never_end_data() {
    let tree = tree_with_users();
    let server = Server::start(&tree, "smtp-recv", &[]);
    for smuggle in ["\n.\n", "\r.\n", "\n.\r\n", "\r.\r"] {
        let input = format!(
            "EHLO c\r\nMAIL FROM:<a@remote.test>\r\nRCPT TO:<ann@example.test>\r\nDATA\r\n\
             Subject: outer\r\n\r\nbody{smuggle}MAIL FROM:<evil@remote.test>\r\nRCPT TO:<bob@example.test>\r\n\
             DATA\r\nSubject: smuggled\r\n\r\nx\r\n.\r\nQUIT\r\n"
        );
        let said = raw(server.port, input.as_bytes(), Duration::from_secs(5));
        assert!(said.contains("554 5.6.0"), "{smuggle:?}: {said}");
        assert!(said.contains("221 2.0.0"), "{smuggle:?}: {said}");
    }
    assert!(
        maildir_files(&tree.maildir("bob")).is_empty(),
        "nothing smuggled through"
    );
    assert!(
        maildir_files(&tree.maildir("ann")).is_empty(),
        "messages with bare line ends are refused"
    );
    // Bare LF in a command is refused too, and counts as an error.
    let said = raw(server.port, b"EHLO c\nQUIT\r\n", Duration::from_secs(5));
    assert!(said.contains("500 5.5.2"), "{said}");
}

#[test]
fn plaintext_pipelined_after_starttls_is_discarded() {
    let tree = tree_with_users();
    let server = Server::start(&tree, "smtp-recv", &[]);
    let script = r#"
import os, socket, ssl
port = int(os.environ["PORT"])
s = socket.create_connection(("127.0.0.1", port), timeout=10)
f = s.makefile("rb")
f.readline()
s.sendall(b"EHLO c\r\n")
while not f.readline().startswith(b"250 "): pass
s.sendall(b"STARTTLS\r\nMAIL FROM:<injected@remote.test>\r\n")
assert f.readline().startswith(b"220"), "no 220 to STARTTLS"
ctx = ssl.create_default_context(); ctx.check_hostname = False; ctx.verify_mode = ssl.CERT_NONE
t = ctx.wrap_socket(s, server_hostname="localhost")
tf = t.makefile("rb")
t.sendall(b"NOOP\r\n")
line = tf.readline()
assert line.startswith(b"250 2.0.0"), line   # the NOOP's reply, not the injected MAIL's
t.sendall(b"MAIL FROM:<a@remote.test>\r\n")
line = tf.readline()
assert line.startswith(b"503"), line        # EHLO is needed again after TLS
print("ok")
"#;
    let (ok, said) = python(script, server.port);
    assert!(ok, "{said}");
}

#[test]
fn open_relay_tricks_are_all_refused() {
    let tree = tree_with_users();
    let server = Server::start(&tree, "smtp-recv", &[]);
    let tricks = [
        "<@example.test:victim@elsewhere.test>",
        "<@example.test,@other.test:victim@elsewhere.test>",
        "<victim%elsewhere.test@example.test>",
        "<\"victim@elsewhere.test\"@example.test>",
        "<elsewhere.test!victim@example.test>",
        "<victim@[192.0.2.1]>",
        "<victim@elsewhere.test.>",
        "<victim@elsewhere.test>",
    ];
    for trick in tricks {
        let input = format!("EHLO c\r\nMAIL FROM:<a@remote.test>\r\nRCPT TO:{trick}\r\nQUIT\r\n");
        let said = raw(server.port, input.as_bytes(), Duration::from_secs(5));
        let rcpt_reply = said.lines().rev().nth(1).unwrap_or("");
        assert!(
            rcpt_reply.starts_with("550")
                || rcpt_reply.starts_with("554")
                || rcpt_reply.starts_with("501"),
            "{trick} was not refused: {said}"
        );
    }
    assert!(tree.queue().list().unwrap().is_empty());

    // A domain this system is backup MX for is relayed for anyone.
    let text = std::fs::read_to_string(&tree.config).unwrap();
    std::fs::write(
        &tree.config,
        format!("{text}\n[smtp]\nrelay_domains = [\"backup.test\"]\n"),
    )
    .unwrap();
    let said = inetd_session(
        &tree,
        "192.0.2.1",
        "EHLO c\r\nMAIL FROM:<a@remote.test>\r\nRCPT TO:<x@backup.test>\r\nRCPT TO:<x@sub.backup.test>\r\nQUIT\r\n",
    );
    assert!(
        said.contains("250 2.1.5") && said.contains("554 5.7.1 <x@sub.backup.test>"),
        "{said}"
    );
}

#[test]
fn limits_size_stall_and_errors() {
    let tree = tree_with_users();
    let text = std::fs::read_to_string(&tree.config).unwrap();
    std::fs::write(
        &tree.config,
        text.replace("message_size = \"35M\"", "message_size = 2000")
            .replace("idle_timeout = \"5m\"", "idle_timeout = \"2s\"")
            .replace("recipients = 1000", "recipients = 2"),
    )
    .unwrap();
    let server = Server::start(&tree, "smtp-recv", &[]);

    // Declared and actual size over the limit: refused, nothing stored.
    let said = raw(
        server.port,
        b"EHLO c\r\nMAIL FROM:<a@remote.test> SIZE=5000\r\nQUIT\r\n",
        Duration::from_secs(5),
    );
    assert!(said.contains("552 5.3.4"), "{said}");
    let big = format!(
        "EHLO c\r\nMAIL FROM:<a@remote.test>\r\nRCPT TO:<ann@example.test>\r\nDATA\r\n{}\r\n.\r\nQUIT\r\n",
        "x".repeat(900)
            .repeat(3)
            .chars()
            .collect::<Vec<_>>()
            .chunks(900)
            .map(|c| c.iter().collect::<String>())
            .collect::<Vec<_>>()
            .join("\r\n")
    );
    let said = raw(server.port, big.as_bytes(), Duration::from_secs(5));
    assert!(said.contains("552 5.3.4"), "{said}");

    // Too many recipients: a 452 for the third.
    let said = raw(
        server.port,
        b"EHLO c\r\nMAIL FROM:<a@remote.test>\r\nRCPT TO:<ann@example.test>\r\nRCPT TO:<bob@example.test>\r\nRCPT TO:<ann@example.test>\r\nQUIT\r\n",
        Duration::from_secs(5),
    );
    assert!(said.contains("452 4.5.3"), "{said}");

    // A client that stalls mid-DATA is timed out; nothing half received is kept.
    let start = Instant::now();
    let said = raw(
        server.port,
        b"EHLO c\r\nMAIL FROM:<a@remote.test>\r\nRCPT TO:<ann@example.test>\r\nDATA\r\nSubject: half\r\n",
        Duration::from_secs(10),
    );
    assert!(
        start.elapsed() < Duration::from_secs(9),
        "the server closed the stalled session: {said}"
    );
    assert!(maildir_files(&tree.maildir("ann")).is_empty());
    assert!(tree.queue().list().unwrap().is_empty());

    // An overlong command line is refused and the session goes on.
    let long = format!("NOOP {}\r\nNOOP\r\nQUIT\r\n", "x".repeat(10_000));
    let said = raw(server.port, long.as_bytes(), Duration::from_secs(5));
    assert!(
        said.contains("500 5.5.2 line too long") && said.contains("250 2.0.0"),
        "{said}"
    );

    // Error after error: the server hangs up.
    let junk = "BOGUS\r\n".repeat(30);
    let said = raw(server.port, junk.as_bytes(), Duration::from_secs(5));
    assert!(said.contains("421 4.7.0"), "{said}");
}

#[test]
fn submission_requires_auth_and_refuses_spoofed_senders() {
    let tree = tree_with_users();
    std::fs::write(tree.root().join("aliases"), "sales@example.test: ann\n").unwrap();
    let server = Server::start(&tree, "smtp-recv", &["--submission"]);
    let script = r#"
import os, smtplib
port = int(os.environ["PORT"])
s = smtplib.SMTP("127.0.0.1", port, timeout=10)
s.ehlo("c")
code, _ = s.mail("ann@example.test")
assert code == 530, code
s.login("ann@example.test", "secret")     # loopback counts as secure
code, _ = s.mail("bob@example.test")
assert code == 553, code
code, _ = s.mail("sales@example.test")    # an alias of ann's is hers to use
assert code == 250, code
s.rset()
s.sendmail("ann@example.test", ["friend@elsewhere.test"], b"Subject: out\r\n\r\nx\r\n")
s.quit()
print("ok")
"#;
    let (ok, said) = python(script, server.port);
    assert!(ok, "{said}");
    assert_eq!(tree.queue().list().unwrap().len(), 1);
}

#[test]
fn inetd_mode_over_pipes_refuses_auth_without_tls_from_remote_peers() {
    let tree = tree_with_users();
    let said = inetd_session(
        &tree,
        "192.0.2.7",
        "EHLO c\r\nAUTH PLAIN AGFubkBleGFtcGxlLnRlc3QAc2VjcmV0\r\nQUIT\r\n",
    );
    assert!(
        !said.contains("AUTH PLAIN"),
        "AUTH must not be offered in clear: {said}"
    );
    assert!(said.contains("538 5.7.11"), "{said}");
    assert!(said.contains("221 2.0.0"), "{said}");
}

/// Python's smtplib over a socket pair handed to an inetd-mode smtp-recv
/// (a socket with no IP peer, served as inetd's would be, `REMOTE_ADDR`
/// naming a remote client), with `body` run after the greeting; `s` is the
/// client. Returns (success, what Python and smtp-recv said).
fn smtplib_inetd(tree: &Tree, body: &str) -> (bool, String) {
    let script = format!(
        r#"
import os, smtplib, socket, ssl, subprocess
ours, theirs = socket.socketpair()
server = subprocess.Popen([os.environ["RECV"], "--config", os.environ["CONFIG"]],
                          stdin=theirs, stdout=theirs, stderr=subprocess.PIPE,
                          env=dict(os.environ, REMOTE_ADDR="192.0.2.7", POSTROOM_LOG="info"))
theirs.close()
s = smtplib.SMTP()
s.sock = ours
s._host = "localhost"  # the name STARTTLS verifies: the certificate has it
code, _ = s.getreply()
assert code == 220, code
ctx = ssl.create_default_context(cafile=os.environ["CERT"])
{body}
s.close()
server.wait(timeout=10)
print(server.stderr.read().decode())
"#
    );
    let config = tree.load_config();
    let out = Command::new("python3")
        .arg("-c")
        .arg(script)
        .env("RECV", bin("smtp-recv"))
        .env("CONFIG", &tree.config)
        .env("CERT", config.tls_cert())
        .output()
        .expect("python3 runs");
    (
        out.status.success(),
        format!("{}{}", stdout(&out), stderr(&out)),
    )
}

#[test]
fn inetd_mode_loads_the_certificate_at_starttls() {
    let tree = tree_with_users();
    let (ok, said) = smtplib_inetd(
        &tree,
        r#"
code, caps = s.ehlo("client.test")
assert b"STARTTLS" in caps and b"AUTH" not in caps, caps
s.starttls(context=ctx)
code, caps = s.ehlo("client.test")
assert b"AUTH PLAIN" in caps, caps
s.login("ann@example.test", "secret")
s.sendmail("ann@example.test", ["friend@elsewhere.test"], b"Subject: tls\r\n\r\nx\r\n")
s.quit()
"#,
    );
    assert!(ok, "{said}");
    assert_eq!(tree.queue().list().unwrap().len(), 1, "{said}");
}

#[test]
fn inetd_mode_with_a_broken_key_refuses_starttls_and_goes_on_in_clear() {
    let tree = tree_with_users();
    // There, so STARTTLS is offered; not a key, which shows when it loads.
    std::fs::write(tree.load_config().tls_key(), "not a key\n").unwrap();
    let (ok, said) = smtplib_inetd(
        &tree,
        r#"
code, caps = s.ehlo("client.test")
assert b"STARTTLS" in caps, caps
code, text = s.docmd("STARTTLS")
assert code == 454, (code, text)
code, _ = s.ehlo("client.test")
assert code == 250, code
s.sendmail("x@remote.test", ["bob@example.test"], b"Subject: clear\r\n\r\nx\r\n")
s.quit()
"#,
    );
    assert!(ok, "{said}");
    assert!(said.contains("no TLS for this client"), "{said}");
    assert_eq!(maildir_files(&tree.maildir("bob")).len(), 1);

    // A session that never asks for TLS never reads the key.
    let (ok, said) = smtplib_inetd(
        &tree,
        r#"
s.ehlo("client.test")
s.sendmail("x@remote.test", ["bob@example.test"], b"Subject: clear\r\n\r\nx\r\n")
s.quit()
"#,
    );
    assert!(ok, "{said}");
    assert!(
        !said.contains("no TLS") && !said.contains("private key"),
        "{said}"
    );
    assert_eq!(maildir_files(&tree.maildir("bob")).len(), 2);
}

#[test]
fn swaks_starttls_auth_and_implicit_tls() {
    let tree = tree_with_users();
    let server = Server::start(&tree, "smtp-recv", &[]);
    let tls_port = server.tls_port;
    let starttls = Command::new("swaks")
        .args(["--server", &format!("127.0.0.1:{}", server.port), "-tls"])
        .args([
            "--auth",
            "PLAIN",
            "--auth-user",
            "ann@example.test",
            "--auth-password",
            "secret",
        ])
        .args([
            "--to",
            "friend@elsewhere.test",
            "--from",
            "ann@example.test",
        ])
        .output()
        .unwrap();
    assert!(starttls.status.success(), "{}", stdout(&starttls));
    assert!(
        stdout(&starttls).contains("235 2.7.0"),
        "{}",
        stdout(&starttls)
    );
    let implicit = Command::new("swaks")
        .args(["--server", &format!("127.0.0.1:{tls_port}"), "--tlsc"])
        .args(["--to", "bob@example.test", "--from", "x@remote.test"])
        .output()
        .unwrap();
    assert!(implicit.status.success(), "{}", stdout(&implicit));
    assert_eq!(maildir_files(&tree.maildir("bob")).len(), 1);
    assert_eq!(
        tree.queue().list().unwrap().len(),
        1,
        "the relayed copy waits for smtp-send"
    );
}

/// One inetd-mode session over pipes, as if from `ip`.
pub fn inetd_session(tree: &Tree, ip: &str, input: &str) -> String {
    inetd_session_logged(tree, ip, input).0
}

/// One inetd-style session from `ip`; returns (replies, log).
fn inetd_session_logged(tree: &Tree, ip: &str, input: &str) -> (String, String) {
    let mut child = Command::new(bin("smtp-recv"))
        .arg("--config")
        .arg(&tree.config)
        .env("REMOTE_ADDR", ip)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let _ = child.stdin.take().unwrap().write_all(input.as_bytes());
    let out = child.wait_with_output().unwrap();
    (stdout(&out), stderr(&out))
}

#[test]
fn access_rules_and_kill_file() {
    let tree = tree_with_users();
    std::fs::write(
        tree.root().join("access"),
        "allow 192.0.2.7\ndeny 192.0.2.0/24\nreject-sender @junk.test\nreject-sender spammer@remote.test\n",
    )
    .unwrap();
    let said = inetd_session(&tree, "192.0.2.8", "EHLO c\r\nQUIT\r\n");
    assert!(said.starts_with("554 5.7.1"), "{said}");
    assert!(!said.contains("250"), "{said}");
    let said = inetd_session(
        &tree,
        "192.0.2.7",
        "EHLO c\r\nMAIL FROM:<x@junk.test>\r\nMAIL FROM:<Spammer@remote.test>\r\nMAIL FROM:<friend@remote.test>\r\nQUIT\r\n",
    );
    assert_eq!(said.matches("550 5.7.1").count(), 2, "{said}");
    assert!(said.contains("250 2.1.0"), "{said}");
}

#[test]
fn hooks_accept_defer_refuse_and_add_headers() {
    let tree = tree_with_users();
    let mut text = std::fs::read_to_string(&tree.config).unwrap();
    text.push_str(
        r#"
[smtp.hooks]
helo = 'if [ "$HELO" = evil.test ]; then echo "no thanks"; exit 1; fi'
rcpt = 'case "$RECIPIENT" in bob@*) echo "bob is busy"; exit 75;; esac'
data = 'if grep -q EICAR; then echo "infected"; exit 1; fi; echo "X-Scanned: clean by $STAGE hook for $SENDER"'
timeout = "5s"
"#,
    );
    std::fs::write(&tree.config, text).unwrap();
    let said = inetd_session(&tree, "192.0.2.1", "EHLO evil.test\r\nQUIT\r\n");
    assert!(said.contains("550 5.7.1 no thanks"), "{said}");
    let said = inetd_session(
        &tree,
        "192.0.2.1",
        "EHLO good.test\r\nMAIL FROM:<s@remote.test>\r\nRCPT TO:<bob@example.test>\r\nRCPT TO:<ann@example.test>\r\n\
         DATA\r\nSubject: scanned\r\n\r\nhello\r\n.\r\n\
         MAIL FROM:<s@remote.test>\r\nRCPT TO:<ann@example.test>\r\nDATA\r\nSubject: bad\r\n\r\nEICAR\r\n.\r\nQUIT\r\n",
    );
    assert!(said.contains("451 4.7.1 bob is busy"), "{said}");
    assert!(said.contains("550 5.7.1 infected"), "{said}");
    let files = maildir_files(&tree.maildir("ann"));
    assert_eq!(files.len(), 1, "{said}");
    let delivered = std::fs::read_to_string(&files[0]).unwrap();
    assert!(
        delivered.contains("X-Scanned: clean by data hook for s@remote.test\n"),
        "{delivered}"
    );
    assert!(maildir_files(&tree.maildir("bob")).is_empty());
}

/// smtp-recv used to write a message again under a new queue id when it
/// put Authentication-Results or a data hook's headers on top: the
/// Received line, the 250 reply and the log named the old id, the maildir
/// and the queue the new one.
#[test]
fn the_queue_id_stays_the_same_when_headers_are_prepended() {
    let dns = crate::dns::DnsServer::start(std::collections::HashMap::new());
    let tree = tree_with_users();
    // A pipe that asks to try later keeps the message in the queue.
    std::fs::write(
        tree.root().join("aliases"),
        "later@example.test: \"|exit 75\"\n",
    )
    .unwrap();
    let mut text = std::fs::read_to_string(&tree.config).unwrap();
    text.push_str(&format!(
        "\n[smtp]\ndkim = true\n\n[smtp.hooks]\ndata = 'cat >/dev/null; echo \"X-Scanned: yes\"'\n\
         timeout = \"5s\"\n\n[dns]\nnameservers = [\"{}\"]\ntimeout = \"2s\"\n",
        dns.addr
    ));
    std::fs::write(&tree.config, text).unwrap();
    let id_after = |said: &str, words: &str| -> String {
        said.lines()
            .find_map(|l| l.strip_prefix(&format!("250 2.0.0 ok, {words} as ")))
            .unwrap_or_else(|| panic!("no \"{words} as\" in {said}"))
            .trim()
            .to_string()
    };

    let send = |rcpt: &str| {
        inetd_session_logged(
            &tree,
            "192.0.2.1",
            &format!(
                "EHLO c.test\r\nMAIL FROM:<s@remote.test>\r\nRCPT TO:<{rcpt}>\r\n\
                 DATA\r\nSubject: to {rcpt}\r\n\r\nhello\r\n.\r\nQUIT\r\n"
            ),
        )
    };

    let (said, log) = send("ann@example.test");
    let id = id_after(&said, "delivered");
    let files = maildir_files(&tree.maildir("ann"));
    assert_eq!(files.len(), 1, "{said}");
    let name = files[0].file_name().unwrap().to_string_lossy().into_owned();
    assert!(name.contains(&format!(".Q{id}R0.")), "{name} for {id}");
    let delivered = std::fs::read_to_string(&files[0]).unwrap();
    assert!(delivered.starts_with("Return-Path:"), "{delivered}");
    assert!(delivered.contains("\nX-Scanned: yes\n"), "{delivered}");
    assert!(
        delivered.contains("\nAuthentication-Results: "),
        "{delivered}"
    );
    assert!(
        delivered.contains(&format!("\tid {id}\n")),
        "{id}: {delivered}"
    );
    assert!(
        log.lines()
            .any(|l| l.contains("delivered") && l.contains(&format!("queue_id={id}"))),
        "{id}: {log}"
    );

    let (said, log) = send("later@example.test");
    let id = id_after(&said, "queued");
    let queue = tree.queue();
    assert_eq!(
        queue.list().unwrap(),
        [postroom::store::queue::QueueId::parse(&id).unwrap()],
        "{said}"
    );
    let queued = queue.read(&queue.list().unwrap()[0]).unwrap();
    let body = postroom::store::queue::read_body(&queued).unwrap();
    let body = String::from_utf8_lossy(&body);
    assert!(body.starts_with("X-Scanned: yes\r\n"), "{body}");
    assert!(body.contains(&format!("\tid {id}\r\n")), "{id}: {body}");
    assert!(
        log.lines()
            .any(|l| l.contains("queued") && l.contains(&format!("queue_id={id}"))),
        "{id}: {log}"
    );
}

#[test]
fn bdat_chunks_are_read_whole_and_checked() {
    let tree = tree_with_users();
    let said = inetd_session(
        &tree,
        "192.0.2.1",
        "EHLO c\r\nMAIL FROM:<s@remote.test>\r\nRCPT TO:<ann@example.test>\r\n\
         BDAT 20\r\nSubject: chunked\r\n\r\nBDAT 7 LAST\r\nhello\r\n\
         MAIL FROM:<s@remote.test>\r\nRCPT TO:<ann@example.test>\r\nBDAT 9 LAST\r\nbad\nline\n\
         BDAT 14 LAST\r\nMAIL FROM:<>\r\nQUIT\r\n",
    );
    assert!(said.contains("CHUNKING"), "{said}");
    assert!(said.contains("250 2.0.0 20 octets received"), "{said}");
    assert!(said.contains("250 2.0.0 ok, delivered as"), "{said}");
    assert!(
        said.contains("554 5.6.0"),
        "bare LF in a chunk is refused: {said}"
    );
    // A BDAT without a transaction is refused, and its 14 bytes (which look
    // like a command) are swallowed, never run.
    assert!(said.contains("503 5.5.1 MAIL first\r\n221"), "{said}");
    assert!(!said.contains("unknown command"), "{said}");
    let files = maildir_files(&tree.maildir("ann"));
    assert_eq!(files.len(), 1);
    let text = std::fs::read_to_string(&files[0]).unwrap();
    assert!(text.ends_with("Subject: chunked\n\nhello\n"), "{text}");
}

#[test]
fn auth_does_not_survive_starttls() {
    let tree = tree_with_users();
    let server = Server::start(&tree, "smtp-recv", &[]);
    let script = r#"
import os, smtplib, ssl
port = int(os.environ["PORT"])
s = smtplib.SMTP("127.0.0.1", port, timeout=10)
s.ehlo("c")
s.login("ann@example.test", "secret")     # in the clear: loopback counts as secure
ctx = ssl.create_default_context(); ctx.check_hostname = False; ctx.verify_mode = ssl.CERT_NONE
print("starttls", s.starttls(context=ctx))
code, caps = s.ehlo("c")
assert b"AUTH PLAIN LOGIN" in caps, caps   # offered again: nobody is logged in
print("mail", s.mail("ann@example.test"))
print("rcpt", s.rcpt("friend@elsewhere.test"))
s.rset()
s.login("ann@example.test", "secret")     # a login inside TLS counts
s.sendmail("ann@example.test", ["friend@elsewhere.test"], b"Subject: out\r\n\r\nx\r\n")
s.quit()
print("ok")
"#;
    let (ok, said) = python(script, server.port);
    assert!(ok, "{said}");
    assert!(
        said.contains("starttls (220, b'2.0.0 ready to start TLS')"),
        "{said}"
    );
    assert!(said.contains("mail (250, b'2.1.0 sender ok')"), "{said}");
    assert!(
        said.contains("rcpt (554, b'5.7.1 <friend@elsewhere.test>: relay access denied')"),
        "the login made before STARTTLS must not relay: {said}"
    );
    let ids = tree.queue().list().unwrap();
    assert_eq!(ids.len(), 1, "only the message sent after a new AUTH");
}

#[test]
fn bdat_with_a_bad_or_huge_size_ends_the_session_unread() {
    let tree = tree_with_users();
    let server = Server::start(&tree, "smtp-recv", &[]);
    let start = "EHLO c\r\nMAIL FROM:<s@remote.test>\r\nRCPT TO:<ann@example.test>\r\n";
    let long_bdat = format!("BDAT {}5 LAST\r\n", "0".repeat(5000));
    for (bdat, want) in [
        // A sign: not a size. What follows may be chunk bytes: never run.
        (
            "BDAT -5 LAST\r\n",
            "521 5.5.4 syntax: BDAT chunk-size [LAST]",
        ),
        ("BDAT 5x LAST\r\n", "521 5.5.4 "),
        ("BDAT 5 LAST\n", "521 5.5.4 "),
        ("BDAT 5 FIRST\r\n", "521 5.5.4 "),
        // 30 digits wrapped to 5 in smtp-proto's parser, and over the limit.
        (
            "BDAT 100000000000000000000000000005 LAST\r\n",
            "552 5.3.4 BDAT chunk larger than the message size limit of 36700160 bytes, closing",
        ),
        ("BDAT 36700161\r\n", "552 5.3.4 "),
        // Longer than limits.line_length: the line is dropped unseen, but
        // it was a BDAT, so its chunk must not be read as commands either.
        (long_bdat.as_str(), "521 5.5.4 BDAT line too long"),
    ] {
        let input = format!("{start}{bdat}hello\r\nNOOP\r\nQUIT\r\n");
        let said = raw(server.port, input.as_bytes(), Duration::from_secs(10));
        let last = said.lines().last().unwrap_or_default();
        assert!(last.starts_with(want), "{bdat:?} got {said}");
        assert!(
            !said.contains("221") && !said.contains("2.0.0 ok"),
            "{bdat:?}: the session must end at the BDAT: {said}"
        );
    }
    assert!(maildir_files(&tree.maildir("ann")).is_empty());
    // A good one still works, and so does BDAT 0 LAST after chunks.
    let input = format!("{start}BDAT 11\r\nSubj: x\r\n\r\nbdat 0 last\r\nQUIT\r\n");
    let said = raw(server.port, input.as_bytes(), Duration::from_secs(10));
    assert!(said.contains("250 2.0.0 ok, delivered as"), "{said}");
    assert_eq!(maildir_files(&tree.maildir("ann")).len(), 1);
}

#[test]
fn a_data_line_over_the_limit_still_ends_at_crlf_dot_crlf() {
    let tree = tree_with_users();
    let server = Server::start(&tree, "smtp-recv", &[]);
    let start = "EHLO c\r\nMAIL FROM:<s@remote.test>\r\nRCPT TO:<ann@example.test>\r\nDATA\r\n";
    let long = "x".repeat(70_000);
    // The idle timeout is 5 minutes: an answer within 10 s is the real one.
    let input = format!("{start}Subject: long\r\n\r\n{long}\r\n.\r\nQUIT\r\n");
    let began = Instant::now();
    let said = raw(server.port, input.as_bytes(), Duration::from_secs(10));
    assert!(
        said.contains("354 ")
            && said.contains("552 5.3.4 a line of the message is too long\r\n221 2.0.0"),
        "after {:?}: {said}",
        began.elapsed()
    );
    // Ended by a bare LF, the long line does not let "." CRLF end DATA
    // (the smuggling rule): the next CRLF "." CRLF does, with a 554.
    let input = format!("{start}{long}\n.\r\nMAIL FROM:<x@remote.test>\r\n.\r\nQUIT\r\n");
    let said = raw(server.port, input.as_bytes(), Duration::from_secs(10));
    assert!(said.contains("554 5.6.0"), "{said}");
    assert_eq!(said.matches("2.1.0").count(), 1, "one MAIL ran: {said}");
    assert!(
        said.ends_with("221 2.0.0 mail.example.test closing\r\n"),
        "{said}"
    );
    assert!(maildir_files(&tree.maildir("ann")).is_empty());
}

#[test]
fn auth_on_port_25_may_only_send_as_the_users_addresses() {
    let tree = tree_with_users();
    std::fs::write(tree.root().join("aliases"), "sales@example.test: ann\n").unwrap();
    let server = Server::start(&tree, "smtp-recv", &[]);
    let script = r#"
import os, smtplib
port = int(os.environ["PORT"])
s = smtplib.SMTP("127.0.0.1", port, timeout=10)
s.login("ann@example.test", "secret")     # no --submission: port 25 rules
for sender in ["bob@example.test", "boss@remote.test", "<>"]:
    code, msg = s.mail(sender)
    print("refused", sender, code, msg)
    assert code == 553, (sender, code, msg)
for sender in ["ann@example.test", "Ann+Lists@Example.TEST", "sales@example.test"]:
    code, msg = s.mail(sender)
    assert code == 250, (sender, code, msg)
    s.rset()
s.sendmail("ann+out@example.test", ["friend@elsewhere.test"], b"Subject: out\r\n\r\nx\r\n")
s.quit()
# Without AUTH nothing changes: anyone may send to a local user.
s = smtplib.SMTP("127.0.0.1", port, timeout=10)
s.sendmail("boss@remote.test", ["bob@example.test"], b"Subject: in\r\n\r\nx\r\n")
s.quit()
print("ok")
"#;
    let (ok, said) = python(script, server.port);
    assert!(ok, "{said}");
    assert!(
        said.contains(
            "refused boss@remote.test 553 b'5.7.1 <boss@remote.test> is not one of your addresses'"
        ),
        "{said}"
    );
    assert_eq!(tree.queue().list().unwrap().len(), 1);
    assert_eq!(maildir_files(&tree.maildir("bob")).len(), 1);
    drop(server);

    // Per login, and for everyone.
    let with_smtp = |n: usize, setting: &str| {
        let text = std::fs::read_to_string(&tree.config).unwrap();
        let text = text.replace("[limits]", &format!("[smtp]\n{setting}\n\n[limits]"));
        let path = tree.root().join(format!("exempt{n}.toml"));
        std::fs::write(&path, text).unwrap();
        path
    };
    let script = r#"
import os, smtplib
s = smtplib.SMTP("127.0.0.1", int(os.environ["PORT"]), timeout=10)
s.login(os.environ["LOGIN"], "secret")
print("mail", s.mail("boss@remote.test")[0])
"#;
    for (n, (setting, login, want)) in [
        (
            r#"auth_sender_exempt = ["Ann@example.test"]"#,
            "ann@example.test",
            "mail 250",
        ),
        (
            r#"auth_sender_exempt = ["ann@example.test"]"#,
            "bob@example.test",
            "mail 553",
        ),
        ("auth_sender_check = false", "bob@example.test", "mail 250"),
    ]
    .into_iter()
    .enumerate()
    {
        let config = with_smtp(n, setting);
        let server = Server::start_config(&config, "smtp-recv", &[]);
        let out = Command::new("python3")
            .args(["-c", script])
            .env("PORT", server.port.to_string())
            .env("LOGIN", login)
            .output()
            .unwrap();
        drop(server);
        let said = format!("{}{}", stdout(&out), stderr(&out));
        assert!(said.contains(want), "{setting} as {login}: {said}");
    }
}

#[test]
fn nul_in_a_message_or_command_is_refused_not_stored() {
    let tree = tree_with_users();
    let server = Server::start(&tree, "smtp-recv", &[]);
    let tx = "MAIL FROM:<s@remote.test>\r\nRCPT TO:<ann@example.test>\r\n";
    let input = format!(
        "EHLO c\r\n{tx}DATA\r\nSubject: nul\r\n\r\na\0b\r\n\0.\r\n.\r\n\
         {tx}BDAT 14 LAST\r\nSubject: \0\r\n\r\n\
         NOOP \0\r\n\
         {tx}DATA\r\nSubject: clean\r\n\r\nok\r\n.\r\nQUIT\r\n"
    );
    let said = raw(server.port, input.as_bytes(), Duration::from_secs(10));
    assert_eq!(
        said.matches("554 5.6.0 message contains a NUL byte")
            .count(),
        2,
        "{said}"
    );
    assert!(
        said.contains("500 5.5.2 NUL bytes are refused in commands"),
        "{said}"
    );
    assert!(said.contains("250 2.0.0 ok, delivered as"), "{said}");
    let files = maildir_files(&tree.maildir("ann"));
    assert_eq!(files.len(), 1, "{said}");
    assert!(!std::fs::read(&files[0]).unwrap().contains(&0));
}

#[test]
fn rcpt_to_bare_postmaster_is_accepted_for_the_primary_domain() {
    let tree = tree_with_users();
    std::fs::write(tree.root().join("aliases"), "postmaster: ann\n").unwrap();
    let server = Server::start(&tree, "smtp-recv", &[]);
    // The host name is mail.example.test; its local domain is example.test.
    let said = raw(
        server.port,
        b"EHLO c\r\nMAIL FROM:<s@remote.test>\r\nRCPT TO:<>\r\nRCPT TO:<Postmaster>\r\n\
          DATA\r\nSubject: to the postmaster\r\n\r\nhi\r\n.\r\nQUIT\r\n",
        Duration::from_secs(10),
    );
    assert!(
        said.contains("501 5.1.3"),
        "<> is still no recipient: {said}"
    );
    assert!(said.contains("250 2.1.5 recipient ok"), "{said}");
    assert!(said.contains("250 2.0.0 ok, delivered as"), "{said}");
    let files = maildir_files(&tree.maildir("ann"));
    assert_eq!(files.len(), 1);
    let text = std::fs::read_to_string(&files[0]).unwrap();
    assert!(text.contains("for <postmaster@example.test>"), "{text}");
}

#[test]
fn etrn_needs_relay_rights_and_loops_are_refused() {
    let tree = tree_with_users();
    let said = inetd_session(&tree, "192.0.2.1", "EHLO c\r\nETRN example.org\r\nQUIT\r\n");
    assert!(said.contains("459 4.7.1"), "{said}");
    // Loopback with relay_networks may ask; without a runner installed the
    // answer is an honest 458 (or 250 once smtp-send exists beside us).
    let text = std::fs::read_to_string(&tree.config).unwrap();
    std::fs::write(
        &tree.config,
        format!("{text}\n[smtp]\nrelay_networks = [\"192.0.2.0/24\"]\n"),
    )
    .unwrap();
    let said = inetd_session(
        &tree,
        "192.0.2.1",
        "EHLO c\r\nETRN @example.org\r\nQUIT\r\n",
    );
    assert!(
        said.contains("458 4.3.0") || said.contains("250 2.0.0 queuing for node example.org"),
        "{said}"
    );

    let hops = "Received: from x by y; Mon, 1 Jan 2026 00:00:00 +0000\r\n".repeat(101);
    let said = inetd_session(
        &tree,
        "192.0.2.1",
        &format!(
            "EHLO c\r\nMAIL FROM:<s@remote.test>\r\nRCPT TO:<ann@example.test>\r\nDATA\r\n{hops}Subject: loop\r\n\r\nx\r\n.\r\nQUIT\r\n"
        ),
    );
    assert!(said.contains("554 5.4.6"), "{said}");
    assert!(maildir_files(&tree.maildir("ann")).is_empty());
}

#[test]
fn auth_failures_slow_the_guesser_down_across_processes() {
    let tree = tree_with_users();
    // AUTH PLAIN for ann@example.test with a wrong password ("nope").
    let wrong = "AUTH PLAIN AGFubkBleGFtcGxlLnRlc3QAbm9wZQ==\r\n";
    for _ in 0..3 {
        let said = inetd_session(&tree, "127.0.0.9", &format!("EHLO c\r\n{wrong}QUIT\r\n"));
        assert!(said.contains("535 5.7.8"), "{said}");
    }
    // A fourth process, same address: it waits before answering.
    let start = Instant::now();
    let said = inetd_session(&tree, "127.0.0.9", &format!("EHLO c\r\n{wrong}QUIT\r\n"));
    assert!(said.contains("535 5.7.8"), "{said}");
    assert!(
        start.elapsed() >= Duration::from_millis(900),
        "no backoff: {:?}",
        start.elapsed()
    );
    assert!(
        tree.root()
            .join("state/auth-failures")
            .read_dir()
            .unwrap()
            .count()
            >= 2
    );
}

#[test]
fn demo_serves_smtp_on_loopback() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().join("demo");
    let mut demo = crate::util::start_demo(&root);
    let port = 2525 + demo.base;
    let said = raw(
        port,
        b"EHLO c\r\nMAIL FROM:<x@remote.test>\r\nRCPT TO:<demo@example.test>\r\nDATA\r\nSubject: demo\r\n\r\nhi\r\n.\r\nQUIT\r\n",
        Duration::from_secs(5),
    );
    let status = demo.terminate();
    assert!(said.contains("250 2.0.0 ok, delivered as"), "{said}");
    assert!(status.success(), "demo exit: {status:?}");
    assert_eq!(
        maildir_files(&root.join("mail/example.test/demo")).len(),
        2,
        "welcome + ours"
    );
}

#[test]
fn dns_blocklists_refuse_listed_clients_and_fail_open() {
    use crate::dns::{DnsServer, Record};
    let tree = tree_with_users();
    let mut records = std::collections::HashMap::new();
    records.insert(
        "7.2.0.192.bl.test".to_string(),
        vec![Record::A("127.0.0.2".parse().unwrap())],
    );
    // An answer outside 127/8 is not a listing (RFC 5782 §2.3).
    records.insert(
        "8.2.0.192.bl.test".to_string(),
        vec![Record::A("192.0.2.1".parse().unwrap())],
    );
    records.insert("bl.test".to_string(), vec![Record::Txt("zone apex".into())]);
    let dns = DnsServer::start(records);
    let text = std::fs::read_to_string(&tree.config).unwrap();
    std::fs::write(
        &tree.config,
        format!(
            "{text}\n[smtp]\ndnsbl = [\"bl.test\"]\n\n[dns]\nnameservers = [\"{}\"]\ntimeout = \"300ms\"\n",
            dns.addr
        ),
    )
    .unwrap();
    let said = inetd_session(&tree, "192.0.2.7", "EHLO c\r\nQUIT\r\n");
    assert!(
        said.starts_with("554 5.7.1 192.0.2.7 is listed in bl.test (127.0.0.2)"),
        "{said}"
    );
    for clean in ["192.0.2.8", "192.0.2.9"] {
        let said = inetd_session(&tree, clean, "EHLO c\r\nQUIT\r\n");
        assert!(said.starts_with("220 "), "{clean}: {said}");
    }
    // A dead blocklist lets everyone in.
    drop(dns);
    let said = inetd_session(&tree, "192.0.2.7", "EHLO c\r\nQUIT\r\n");
    assert!(said.starts_with("220 "), "{said}");
}

/// A tree that checks SPF, DKIM and DMARC (its config text passed through
/// `edit` first), and a name server for remote.test that allows
/// 192.0.2.0/24 by SPF, publishes `key` as DKIM selector `sel` and asks for
/// DMARC p=reject. The name server lives as long as the handle.
fn tree_checking_remote_test(
    key: &mail_auth::common::crypto::Ed25519Key,
    edit: impl FnOnce(String) -> String,
) -> (crate::dns::DnsServer, Tree) {
    use crate::dns::{DnsServer, Record};
    use base64::Engine;
    let public = base64::engine::general_purpose::STANDARD.encode(key.public_key());
    let mut records = std::collections::HashMap::new();
    let txt = |t: &str| vec![Record::Txt(t.to_string())];
    records.insert(
        "remote.test".to_string(),
        txt("v=spf1 ip4:192.0.2.0/24 -all"),
    );
    records.insert(
        "sel._domainkey.remote.test".to_string(),
        txt(&format!("v=DKIM1; k=ed25519; p={public}")),
    );
    records.insert("_dmarc.remote.test".to_string(), txt("v=DMARC1; p=reject"));
    let dns = DnsServer::start(records);
    let tree = tree_with_users();
    let text = edit(std::fs::read_to_string(&tree.config).unwrap());
    std::fs::write(
        &tree.config,
        format!(
            "{text}\n[smtp]\nspf = true\ndkim = true\ndmarc = true\n\n[dns]\nnameservers = [\"{}\"]\ntimeout = \"2s\"\n",
            dns.addr
        ),
    )
    .unwrap();
    (dns, tree)
}

/// Sends `message` from s@remote.test to ann, connecting from `ip`, and
/// checks it is delivered.
fn deliver_from_remote_test(tree: &Tree, ip: &str, message: &str) {
    let said = inetd_session(
        tree,
        ip,
        &format!(
            "EHLO mx.remote.test\r\nMAIL FROM:<s@remote.test>\r\nRCPT TO:<ann@example.test>\r\nDATA\r\n{message}.\r\nQUIT\r\n"
        ),
    );
    assert!(
        said.contains("250 2.0.0 ok, delivered"),
        "SPF records, never refuses: {said}"
    );
}

/// The headers above our Received line in each of ann's messages, the one
/// that passed SPF first.
fn authentication_headers_of_ann(tree: &Tree) -> Vec<String> {
    let mut heads: Vec<String> = maildir_files(&tree.maildir("ann"))
        .iter()
        .map(|f| {
            let mut head = vec![0; 4096];
            let n = std::fs::File::open(f).unwrap().read(&mut head).unwrap();
            let text = String::from_utf8_lossy(&head[..n]).into_owned();
            text.split("\nReceived:").next().unwrap_or("").to_string()
        })
        .collect();
    heads.sort_by_key(|t| t.contains("spf=fail"));
    heads
}

#[test]
fn spf_dkim_and_dmarc_are_recorded_in_authentication_results() {
    use mail_auth::common::crypto::Ed25519Key;
    use mail_auth::common::headers::HeaderWriter;

    let key = Ed25519Key::from_pkcs8_der(&Ed25519Key::generate_pkcs8().unwrap()).unwrap();
    let (_dns, tree) = tree_checking_remote_test(&key, |text| text);
    let message =
        "From: Sender <s@remote.test>\r\nTo: ann@example.test\r\nSubject: signed\r\n\r\nhello\r\n";
    let signature = mail_auth::dkim::DkimSigner::from_key(key)
        .domain("remote.test")
        .selector("sel")
        .headers(["From", "To", "Subject"])
        .sign(message.as_bytes())
        .unwrap();
    let signed = format!("{}{message}", signature.to_header());
    deliver_from_remote_test(&tree, "192.0.2.1", &signed);
    deliver_from_remote_test(&tree, "198.51.100.1", &signed);

    let heads = authentication_headers_of_ann(&tree);
    assert_eq!(heads.len(), 2);
    let good = &heads[0];
    assert!(
        good.contains("Authentication-Results: mail.example.test"),
        "{good}"
    );
    assert!(good.contains("spf=pass"), "{good}");
    assert!(good.contains("dkim=pass"), "{good}");
    assert!(good.contains("dmarc=pass"), "{good}");
    let bad = &heads[1];
    assert!(bad.contains("spf=fail"), "{bad}");
    assert!(
        bad.contains("dkim=pass") && bad.contains("dmarc=pass"),
        "DKIM still aligns: {bad}"
    );
}

/// RFC 8601 §5: results a sender wrote in our name are removed, so only
/// ours claim to be ours; results of other hosts stay, and so does the body.
#[test]
fn forged_results_in_our_name_are_removed() {
    use mail_auth::common::crypto::Ed25519Key;

    let key = Ed25519Key::from_pkcs8_der(&Ed25519Key::generate_pkcs8().unwrap()).unwrap();
    let (_dns, tree) = tree_checking_remote_test(&key, |text| text);
    let message = "Authentication-Results:\r\n MAIL.example.test; dkim=pass; arc=pass\r\n\
                   Authentication-Results: relay.other.test; spf=pass\r\n\
                   From: Sender <s@remote.test>\r\nTo: ann@example.test\r\nSubject: forged\r\n\r\n\
                   the body\r\n";
    deliver_from_remote_test(&tree, "192.0.2.1", message);
    let files = maildir_files(&tree.maildir("ann"));
    assert_eq!(files.len(), 1);
    let text = std::fs::read_to_string(&files[0]).unwrap();
    assert_eq!(
        text.matches("Authentication-Results: mail.example.test;")
            .count(),
        1,
        "one result in our name, ours: {text}"
    );
    assert!(!text.contains("MAIL.example.test"), "{text}");
    assert!(!text.contains("dkim=pass; arc=pass"), "{text}");
    assert!(
        text.contains("Authentication-Results: relay.other.test; spf=pass\n"),
        "{text}"
    );
    assert!(text.ends_with("Subject: forged\n\nthe body\n"), "{text}");
}

/// A DKIM-Signature field (ed25519-sha256, `c=simple/simple`: RFC 6376
/// §3.4.1 and §3.4.3, header fields and body as they are) by `key` for
/// remote.test over `headers` (whole CRLF lines, all signed) and `body`.
/// Made by hand because mail-auth's signer canonicalizes byte by byte,
/// which takes seconds over 50 MiB in a debug build.
fn dkim_simple(key: &mail_auth::common::crypto::Ed25519Key, headers: &str, body: &str) -> String {
    use base64::Engine;
    use mail_auth::common::crypto::SigningKey;
    let base64 = |b: &[u8]| base64::engine::general_purpose::STANDARD.encode(b);
    let names: Vec<&str> = headers
        .split("\r\n")
        .filter_map(|l| l.split_once(':').map(|(name, _)| name))
        .collect();
    let field = format!(
        "DKIM-Signature: v=1; a=ed25519-sha256; c=simple/simple; d=remote.test; s=sel;\r\n\t\
         h={}; bh={}; b=",
        names.join(":"),
        base64(key.hash(body.as_bytes()).as_ref())
    );
    // RFC 6376 §3.7: the signed fields, then this one with b= empty and no
    // CRLF.
    let signed = format!("{headers}{field}");
    let b = base64(&key.sign(signed.as_bytes()).unwrap());
    format!("{field}{b}\r\n")
}

/// DKIM used to be verified on the first 50 MiB of a message when
/// limits.message_size allowed more, so a large, validly signed message was
/// said to have a body that did not match its signature, and DMARC was
/// judged without it. Past the cut it is not verified, and
/// Authentication-Results says so.
#[test]
fn a_signed_message_over_the_dkim_cut_is_not_verified_rather_than_failed() {
    use mail_auth::common::crypto::Ed25519Key;

    let key = Ed25519Key::from_pkcs8_der(&Ed25519Key::generate_pkcs8().unwrap()).unwrap();
    let (_dns, tree) = tree_checking_remote_test(&key, |text| {
        text.replace("message_size = \"35M\"", "message_size = \"60M\"")
    });
    let headers = "From: Sender <s@remote.test>\r\nTo: ann@example.test\r\nSubject: big\r\n";
    let signed = |body: &str| format!("{}{headers}\r\n{body}", dkim_simple(&key, headers, body));
    // Just over 50 MiB, in lines of 1000 octets.
    let line = format!("{}\r\n", "x".repeat(998));
    let big = signed(&line.repeat((50 << 20) / line.len() + 10));
    assert!(big.len() > 50 << 20);
    // The same signer on a small message, to show the signature is good.
    deliver_from_remote_test(&tree, "192.0.2.1", &signed("hello\r\n"));
    // From outside the SPF range, so only DKIM could make DMARC pass.
    deliver_from_remote_test(&tree, "198.51.100.1", &big);

    let heads = authentication_headers_of_ann(&tree);
    assert_eq!(heads.len(), 2);
    let small = &heads[0];
    assert!(small.contains("dkim=pass"), "{small}");
    let big = &heads[1];
    assert!(big.contains("spf=fail"), "{big}");
    assert!(
        big.contains(
            "dkim=neutral reason=\"message too large to verify\" header.d=remote.test header.s=sel"
        ),
        "{big}"
    );
    assert!(
        big.contains("dmarc=none reason=\"message too large to verify; DKIM not verified\""),
        "{big}"
    );
    // Before, the first 50 MiB were checked against the whole body's hash.
    assert!(
        !big.contains("did not verify")
            && !big.contains("dkim=fail")
            && !big.contains("dmarc=fail"),
        "{big}"
    );
}

/// Sends one message on a fresh connection; true only if the final 250 came.
fn send_one(port: u16, marker: &str) -> bool {
    let Ok(mut stream) = TcpStream::connect(("127.0.0.1", port)) else {
        return false;
    };
    let _ = stream.set_read_timeout(Some(Duration::from_secs(5)));
    let message = format!(
        "EHLO c\r\nMAIL FROM:<s@remote.test>\r\nRCPT TO:<ann@example.test>\r\nDATA\r\n\
         Subject: {marker}\r\n\r\n{}\r\nEND-{marker}\r\n.\r\n",
        "y".repeat(3000)
    );
    if stream.write_all(message.as_bytes()).is_err() {
        return false;
    }
    let mut reader = BufReader::new(stream);
    let mut replies = 0;
    let mut line = String::new();
    while reader.read_line(&mut line).unwrap_or(0) > 0 {
        if line.as_bytes().get(3) == Some(&b' ') {
            replies += 1;
            // greeting, EHLO, MAIL, RCPT, 354, then the verdict on the message
            if replies == 6 {
                return line.starts_with("250 ");
            }
        }
        line.clear();
    }
    false
}

#[test]
fn sigkill_of_smtp_recv_loses_no_acknowledged_message() {
    let tree = tree_with_users();
    let mut acknowledged = Vec::new();
    let mut sent = 0;
    for round in 0..12 {
        let server = Server::start(&tree, "smtp-recv", &[]);
        let port = server.port;
        let pid = server.child.id() as i32;
        let killer = std::thread::spawn(move || {
            // On purpose: the kill lands at a random moment of the load.
            std::thread::sleep(Duration::from_millis(40 + (rand::random::<u64>() % 160)));
            let _ = nix::sys::signal::kill(
                nix::unistd::Pid::from_raw(pid),
                nix::sys::signal::Signal::SIGKILL,
            );
        });
        let start = Instant::now();
        while start.elapsed() < Duration::from_millis(250) {
            let marker = format!("r{round}m{sent}");
            sent += 1;
            if send_one(port, &marker) {
                acknowledged.push(marker);
            }
        }
        killer.join().unwrap();
        drop(server);
    }
    assert!(
        acknowledged.len() > 10,
        "some messages must get through ({})",
        acknowledged.len()
    );
    assert!(
        sent > acknowledged.len(),
        "and the kills must land mid-session"
    );
    let mut seen = std::collections::HashMap::new();
    for file in maildir_files(&tree.maildir("ann")) {
        let text = std::fs::read_to_string(&file).unwrap();
        let marker = text
            .lines()
            .find_map(|l| l.strip_prefix("Subject: "))
            .unwrap()
            .to_string();
        assert!(
            text.contains(&format!("END-{marker}")),
            "half a message visible: {}",
            file.display()
        );
        *seen.entry(marker).or_insert(0) += 1;
    }
    for marker in &acknowledged {
        assert_eq!(
            seen.get(marker),
            Some(&1),
            "acknowledged {marker} must be delivered exactly once"
        );
    }
    let check = tree.postroom(&["check", "--fix"]);
    assert!(check.status.success(), "{}", stdout(&check));
}

#[test]
fn systemd_accept_no_named_sockets_and_accept_yes_inetd() {
    let tree = tree_with_users();
    // Accept=no: one process gets both sockets in LISTEN_FDS; the names
    // say which follows submission rules.
    // (systemd-socket-activate cannot bind port 0: it gets a base port.)
    let activator = Server::start_with("systemd-socket-activate", 2, |base| {
        let mut command = Command::new("systemd-socket-activate");
        command
            .args(["-l", &format!("127.0.0.1:{base}")])
            .args(["-l", &format!("127.0.0.1:{}", base + 1)])
            .args(["--fdname=smtp:submission"])
            .arg(bin("smtp-recv"))
            .arg("--config")
            .arg(&tree.config);
        command
    });
    let (mx, submission) = (activator.base, activator.base + 1);
    let said = raw(
        mx,
        b"EHLO c\r\nMAIL FROM:<a@remote.test>\r\nQUIT\r\n",
        Duration::from_secs(5),
    );
    assert!(said.contains("250 2.1.0"), "port 25 rules: {said}");
    let said = raw(
        submission,
        b"EHLO c\r\nMAIL FROM:<a@remote.test>\r\nQUIT\r\n",
        Duration::from_secs(5),
    );
    assert!(
        said.contains("530 5.7.0"),
        "the socket named submission needs AUTH: {said}"
    );

    // Accept=yes with the connection on stdin/stdout, as StandardInput=socket
    // gives it: the peer comes from getpeername(0).
    let inetd = Server::start_with("systemd-socket-activate --inetd", 1, |base| {
        let mut command = Command::new("systemd-socket-activate");
        command
            .args(["--inetd", "-a", "-l", &format!("127.0.0.1:{base}")])
            .arg(bin("smtp-recv"))
            .arg("--config")
            .arg(&tree.config);
        command
    });
    let said = raw(
        inetd.base,
        b"EHLO c\r\nMAIL FROM:<a@remote.test>\r\nRCPT TO:<ann@example.test>\r\nDATA\r\nSubject: via socket\r\n\r\nhi\r\n.\r\nQUIT\r\n",
        Duration::from_secs(5),
    );
    assert!(said.contains("250 2.0.0 ok, delivered"), "{said}");
    let files = maildir_files(&tree.maildir("ann"));
    let text = std::fs::read_to_string(&files[0]).unwrap();
    assert!(
        text.contains("from c ([127.0.0.1])"),
        "peer from getpeername: {text}"
    );
}

#[test]
fn random_bytes_never_crash_the_session() {
    let tree = tree_with_users();
    for round in 0..40u64 {
        let mut input: Vec<u8> = (0..2000).map(|_| rand::random::<u8>()).collect();
        // Some rounds start like a real session so the junk reaches deeper states.
        if round % 2 == 0 {
            let mut session =
                b"EHLO c\r\nMAIL FROM:<a@remote.test>\r\nRCPT TO:<ann@example.test>\r\n".to_vec();
            if round % 4 == 0 {
                session.extend_from_slice(b"DATA\r\n");
            }
            session.extend(input);
            input = session;
        }
        let mut child = Command::new(bin("smtp-recv"))
            .arg("--config")
            .arg(&tree.config)
            .env("REMOTE_ADDR", "192.0.2.1")
            .env("RUST_BACKTRACE", "0")
            .stdin(Stdio::piped())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let _ = child.stdin.take().unwrap().write_all(&input);
        let out = child.wait_with_output().unwrap();
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(!err.contains("panicked"), "round {round}: {err}");
        assert!(
            out.status.code().is_some(),
            "round {round}: killed by a signal"
        );
    }
}

#[test]
fn a_hanging_hook_defers_and_per_ip_connections_are_capped() {
    let tree = tree_with_users();
    let mut text = std::fs::read_to_string(&tree.config).unwrap();
    text = text.replace("[limits]\n", "[limits]\nconnections_per_ip = 2\n");
    text.push_str("\n[smtp.hooks]\nmail = 'sleep 30'\ntimeout = \"300ms\"\n");
    std::fs::write(&tree.config, text).unwrap();

    let start = Instant::now();
    let said = inetd_session(
        &tree,
        "192.0.2.1",
        "EHLO c\r\nMAIL FROM:<a@remote.test>\r\nQUIT\r\n",
    );
    assert!(said.contains("451 4.3.0"), "{said}");
    assert!(
        start.elapsed() < Duration::from_secs(10),
        "the hook was not cut short"
    );

    // No readiness probe connects first (the server's log says where it
    // listens), so the two held here are the only connections.
    let server = Server::start(&tree, "smtp-recv", &[]);
    let held: Vec<TcpStream> = (0..2)
        .map(|_| TcpStream::connect(("127.0.0.1", server.port)).unwrap())
        .collect();
    for stream in &held {
        let mut line = String::new();
        BufReader::new(stream).read_line(&mut line).unwrap();
        assert!(line.starts_with("220"), "{line}");
    }
    let said = raw(server.port, b"", Duration::from_secs(5));
    assert!(
        said.starts_with("421 4.7.0"),
        "the third connection from one address is refused: {said}"
    );
}

/// Regression: smtp-proto's parser strips a quoted local part's quotes and
/// backslashes, so `"john doe"@x` came out as `john doe@x` and was refused
/// as no address (501 5.1.7, 501 5.1.3). RFC 5321 §4.1.2 allows a space
/// (qtextSMTP) and a quoted pair; an unknown one is then 550 5.1.1.
#[test]
fn quoted_local_parts_with_a_space_or_a_quoted_pair_are_addresses() {
    let tree = tree_with_users();
    let said = inetd_session(
        &tree,
        "198.51.100.1",
        "EHLO c\r\nMAIL FROM:<\"john doe\"@client.test>\r\nRSET\r\n\
         MAIL FROM:<\"x\\\"y\"@client.test>\r\nRCPT TO:<\"john doe\"@example.test>\r\n\
         RCPT TO:<\"ann\"@example.test>\r\nDATA\r\nSubject: quoted\r\n\r\nhi\r\n.\r\nQUIT\r\n",
    );
    assert!(!said.contains("501"), "{said}");
    assert_eq!(said.matches("250 2.1.0 sender ok").count(), 2, "{said}");
    assert!(
        said.contains("550 5.1.1 <\"john doe\"@example.test>: no such user here"),
        "{said}"
    );
    // Quotes that change nothing find the same user.
    assert!(said.contains("250 2.1.5"), "{said}");
    assert!(said.contains("250 2.0.0 ok, delivered"), "{said}");
    let stored = maildir_texts(&tree.maildir("ann"));
    assert_eq!(stored.len(), 1);
    assert!(
        stored[0].starts_with("Return-Path: <\"x\\\"y\"@client.test>\n"),
        "{}",
        stored[0]
    );

    // Relayed, a quoted recipient with a space goes through the queue
    // (whose recipient lines are words separated by spaces) as it came.
    configure(&tree, "smtp", &[("relay_networks", "[\"192.0.2.0/24\"]")]);
    let said = inetd_session(
        &tree,
        "192.0.2.1",
        "EHLO c\r\nMAIL FROM:<\"john doe\"@client.test>\r\n\
         RCPT TO:<\"jane q. public\"@elsewhere.test> NOTIFY=FAILURE\r\n\
         DATA\r\nSubject: relayed\r\n\r\nhi\r\n.\r\nQUIT\r\n",
    );
    assert!(said.contains("250 2.0.0 ok, queued"), "{said}");
    let queue = tree.queue();
    let ids = queue.list().unwrap();
    assert_eq!(ids.len(), 1);
    let message = queue.read(&ids[0]).unwrap();
    assert_eq!(
        message.envelope.sender.to_string(),
        "\"john doe\"@client.test"
    );
    let rcpt = &message.envelope.recipients[0];
    assert_eq!(
        rcpt.address.to_string(),
        "\"jane q. public\"@elsewhere.test"
    );
    assert_eq!(rcpt.notify.as_ref().map(|n| n.as_str()), Some("FAILURE"));
}

/// Regression: smtp-proto 0.2.5 saturates a SIZE past 20 digits and then
/// starts over, so a SIZE no limit could hold was taken as a small one.
#[test]
fn a_size_too_large_to_count_is_over_every_limit() {
    let tree = tree_with_users();
    let said = inetd_session(
        &tree,
        "198.51.100.1",
        "EHLO c\r\nMAIL FROM:<a@b.test> SIZE=99999999999999999999999\r\n\
         MAIL FROM:<a@b.test> SIZE=100000000000000000000000000005\r\nMAIL FROM:<a@b.test> SIZE=1000\r\nQUIT\r\n",
    );
    assert_eq!(
        said.matches("552 5.3.4 message too big").count(),
        2,
        "{said}"
    );
    assert!(said.contains("250 2.1.0"), "{said}");
}

/// Regression: NOTIFY=NEVER with other words, an ENVID that is not xtext
/// and a parameter given twice were all taken (RFC 3461 §4).
#[test]
fn malformed_or_repeated_dsn_parameters_are_refused() {
    let tree = tree_with_users();
    let said = inetd_session(
        &tree,
        "198.51.100.1",
        "EHLO c\r\nMAIL FROM:<a@b.test> ENVID=a+2\r\nMAIL FROM:<a@b.test> RET=FULL RET=HDRS\r\n\
         MAIL FROM:<a@b.test> RET=HDRS ENVID=id+2B1\r\n\
         RCPT TO:<bob@example.test> NOTIFY=NEVER,SUCCESS\r\n\
         RCPT TO:<bob@example.test> NOTIFY=SUCCESS NOTIFY=DELAY\r\n\
         RCPT TO:<bob@example.test> ORCPT=rfc822;bob+4\r\n\
         RCPT TO:<bob@example.test> NOTIFY=NEVER ORCPT=rfc822;bob+40example.test\r\nQUIT\r\n",
    );
    let replies: Vec<&str> = said
        .lines()
        .filter(|l| l.as_bytes().get(3) == Some(&b' '))
        .collect();
    assert_eq!(
        replies[2..9],
        [
            "501 5.5.4 Bad ENVID parameter syntax",
            "501 5.5.4 Duplicate RET parameter",
            "250 2.1.0 sender ok",
            "501 5.5.4 Bad NOTIFY parameter syntax",
            "501 5.5.4 Duplicate NOTIFY parameter",
            "501 5.5.4 Bad ORCPT parameter syntax",
            "250 2.1.5 recipient ok",
        ],
        "{said}"
    );
}

/// Regression: replies to pipelined commands stayed queued while the
/// server waited for the rest of a BDAT chunk, so a client that waits for
/// them before it sends more (as the RFC 2920 client may) hung until the
/// idle timeout. The idle timeout here is 5 minutes; the replies must
/// come within the 20 s the client waits.
#[test]
fn pipelined_replies_are_sent_before_waiting_for_a_chunk() {
    let tree = tree_with_users();
    let server = Server::start(&tree, "smtp-recv", &[]);
    let (mut reader, mut writer) = connect_loopback(server.port);
    let mut line = String::new();
    reader.read_line(&mut line).unwrap();
    writer
        .write_all(
            b"EHLO c\r\nMAIL FROM:<a@b.test>\r\nRCPT TO:<ann@example.test>\r\nBDAT 100\r\nabc",
        )
        .unwrap();
    let mut said = String::new();
    while !said.ends_with("250 2.1.5 recipient ok\r\n") {
        line.clear();
        assert!(reader.read_line(&mut line).unwrap() > 0, "{said}");
        said.push_str(&line);
    }
    writer
        .write_all(format!("\r\n{}\r\nBDAT 0 LAST\r\nQUIT\r\n", "x".repeat(93)).as_bytes())
        .unwrap();
    let mut rest = String::new();
    reader.read_to_string(&mut rest).unwrap();
    assert!(
        rest.starts_with("250 2.0.0 100 octets received\r\n250 2.0.0 ok, delivered"),
        "{rest}"
    );
    assert_eq!(maildir_files(&tree.maildir("ann")).len(), 1);
}

/// Regression: silence inside DATA or a BDAT chunk closed the connection
/// after limits.idle_timeout with no reply, and the replies to the
/// commands pipelined before a BDAT were never sent at all. smtp-recv(8):
/// 421 and close, also in the middle of DATA; nothing half received kept.
#[test]
fn idle_timeout_inside_data_or_bdat_says_421_after_the_pending_replies() {
    let tree = tree_with_users();
    configure(&tree, "limits", &[("idle_timeout", "\"1s\"")]);
    let server = Server::start(&tree, "smtp-recv", &[]);
    let inputs: [&[u8]; 2] = [
        b"EHLO c\r\nMAIL FROM:<a@b.test>\r\nRCPT TO:<ann@example.test>\r\nDATA\r\nSubject: half\r\n",
        b"EHLO c\r\nMAIL FROM:<a@b.test>\r\nRCPT TO:<ann@example.test>\r\nBDAT 100\r\nabc",
    ];
    for input in inputs {
        let said = raw(server.port, input, Duration::from_secs(15));
        assert!(
            said.contains("250 2.1.0") && said.contains("250 2.1.5"),
            "{said}"
        );
        assert!(
            said.ends_with("421 4.4.2 mail.example.test timeout: idle too long, closing\r\n"),
            "{said}"
        );
    }
    assert!(maildir_files(&tree.maildir("ann")).is_empty());
    assert!(tree.queue().list().unwrap().is_empty());
    let tmp = tree.load_config().queue_dir().join("tmp");
    assert_eq!(
        std::fs::read_dir(&tmp).map(|d| d.count()).unwrap_or(0),
        0,
        "nothing half received is kept"
    );
}

/// Regression: on submission the Date and Message-ID a message lacked
/// were put above the Received line; RFC 5321 §4.4 puts Received at the
/// beginning, and Postfix adds the missing fields after the message's own.
#[test]
fn submission_adds_date_and_message_id_below_received_after_the_message_fields() {
    let tree = tree_with_users();
    let server = Server::start(&tree, "smtp-recv", &["--submission"]);
    let script = r#"
import os, smtplib
s = smtplib.SMTP("127.0.0.1", int(os.environ["PORT"]), timeout=10)
s.ehlo("c")
s.login("ann@example.test", "secret")     # loopback counts as secure
s.sendmail("ann@example.test", ["bob@example.test"],
           b"From: ann@example.test\r\nSubject: order\r\n\r\nbody\r\n")
s.quit()
print("ok")
"#;
    let (ok, said) = python(script, server.port);
    assert!(ok, "{said}");
    let stored = maildir_texts(&tree.maildir("bob"));
    assert_eq!(stored.len(), 1);
    let head = stored[0].split("\n\n").next().unwrap();
    let names: Vec<&str> = head
        .lines()
        .filter(|l| !l.starts_with([' ', '\t']))
        .filter_map(|l| l.split(':').next())
        .collect();
    assert_eq!(
        names,
        [
            "Return-Path",
            "Delivered-To",
            "Received",
            "From",
            "Subject",
            "Date",
            "Message-ID"
        ],
        "{head}"
    );
    assert!(
        stored[0].ends_with("\n\nbody\n"),
        "the body as sent:\n{}",
        stored[0]
    );
}
