//! imap-serve end to end: Python's imaplib and raw sockets against the real
//! binary, standalone and in inetd mode, with mail delivered by the real
//! mail-inject meanwhile.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::process::Command;
use std::time::{Duration, Instant};

use crate::util::{Server, Tree, bin, spawn_inetd, stderr, stdout};

pub(crate) fn tree_with_user() -> Tree {
    let tree = Tree::new();
    tree.add_user("bob@example.test");
    tree
}

/// Bob's tree with `limits.message_size` set to `limit`.
pub(crate) fn tree_with_message_size(limit: &str) -> Tree {
    let tree = tree_with_user();
    let text = std::fs::read_to_string(&tree.config).unwrap();
    std::fs::write(
        &tree.config,
        text.replace("message_size = \"35M\"", &format!("message_size = {limit}")),
    )
    .unwrap();
    tree
}

/// Delivers a message to bob through mail-inject.
pub(crate) fn deliver(tree: &Tree, subject: &str) {
    let msg = format!(
        "From: Alice <alice@remote.test>\nTo: bob@example.test\nSubject: {subject}\n\nHello {subject}\n"
    );
    let out = tree.inject(&["bob@example.test"], msg.as_bytes());
    assert!(out.status.success(), "{}", stderr(&out));
}

/// Runs a Python script with PORT, TLS_PORT, INJECT and CONFIG set.
pub(crate) fn python(script: &str, server: &Server, tree: &Tree) -> String {
    let out = Command::new("python3")
        .arg("-c")
        .arg(format!("{PRELUDE}\n{script}"))
        .env("PORT", server.port.to_string())
        .env("TLS_PORT", server.tls_port.to_string())
        .env("INJECT", bin("mail-inject"))
        .env("POP3", bin("pop3-serve"))
        .env("IMAP", bin("imap-serve"))
        .env("CONFIG", &tree.config)
        .env("MAILDIR", tree.maildir("bob"))
        .output()
        .expect("python3 runs");
    let said = format!("{}{}", stdout(&out), stderr(&out));
    assert!(out.status.success(), "python failed:\n{said}");
    said
}

const PRELUDE: &str = r#"
import imaplib, os, socket, ssl, subprocess, time, re
PORT = int(os.environ["PORT"]); TLS_PORT = int(os.environ["TLS_PORT"])
def login():
    M = imaplib.IMAP4("127.0.0.1", PORT)
    M.login("bob@example.test", "secret")
    return M
def ok(r, what=""):
    assert r[0] == "OK", (what, r)
    return r[1]
def deliver(subject, body="hello"):
    msg = f"From: Alice <alice@remote.test>\nTo: bob@example.test\nSubject: {subject}\n\n{body}\n"
    subprocess.run([os.environ["INJECT"], "--config", os.environ["CONFIG"], "bob@example.test"],
                   input=msg.encode(), check=True)
"#;

#[test]
fn imaplib_covers_the_commands() {
    let tree = tree_with_user();
    deliver(&tree, "=?utf-8?q?Gr=C3=BC=C3=9Fe?= from Alice");
    deliver(&tree, "second");
    let server = Server::start(&tree, "imap-serve", &[]);
    let said = python(
        r#"
M = imaplib.IMAP4("127.0.0.1", PORT)
assert "AUTH=PLAIN" in M.capabilities and "STARTTLS" in M.capabilities, M.capabilities
try:
    M.login("bob@example.test", "wrong"); raise SystemExit("bad password accepted")
except imaplib.IMAP4.error as e:
    assert "AUTHENTICATIONFAILED" in str(e), e
ok(M.login("bob@example.test", "secret"))
assert "UIDPLUS" in ok(M.capability())[0].decode()
names = [l.decode() for l in ok(M.list())]
for special, folder in [("\\Sent", "Sent"), ("\\Drafts", "Drafts"), ("\\Trash", "Trash"), ("\\Junk", "Junk"), ("\\Archive", "Archive")]:
    assert any(special in l and l.endswith(folder) for l in names), (special, names)
assert any(l.endswith("INBOX") for l in names), names
assert ok(M.select("INBOX")) == [b"2"]
assert M.untagged_responses.get("UIDVALIDITY"), M.untagged_responses
env = ok(M.fetch("1:*", "(UID FLAGS RFC822.SIZE ENVELOPE)"))
# The first session to see a message owns its \Recent (RFC 3501 §2.3.2).
assert b'(UID 1 FLAGS (\\Recent) RFC822.SIZE ' in env[0], env
assert b'(("Alice" NIL "alice" "remote.test"))' in env[0], env
assert b'"=?utf-8?q?Gr=C3=BC=C3=9Fe?= from Alice"' in env[0], env
# SEARCH decodes RFC 2047 and takes UTF-8.
assert ok(M.search("UTF-8", b"SUBJECT", "grüße".encode())) == [b"1"]
assert ok(M.uid("SEARCH", "FROM", "alice", "NOT", "SUBJECT", "second")) == [b"1"]
assert ok(M.search(None, "OR", "SUBJECT", "second", "LARGER", "100000")) == [b"2"]
assert ok(M.search(None, "SINCE", "1-Jan-2000", "UNSEEN")) == [b"1 2"]
# BODY.PEEK leaves \Seen alone; BODY[] sets it.
ok(M.fetch("1", "(BODY.PEEK[TEXT])"))
assert ok(M.fetch("1", "(FLAGS)"))[0] == b"1 (FLAGS (\\Recent))"
r = ok(M.fetch("1", "(BODY[HEADER.FIELDS (SUBJECT)] BODY[TEXT]<0.3>)"))
assert r[0][1] == b"Subject: =?utf-8?q?Gr=C3=BC=C3=9Fe?= from Alice\r\n\r\n", r
assert r[1][1] == b"Hel", r
assert b"\\Seen" in r[2], r
# STORE with a keyword, then another session sees it.
r = ok(M.store("2", "+FLAGS", "(\\Flagged $Label1)"))
assert r == [b"2 (FLAGS (\\Flagged $Label1 \\Recent))"], r
assert ok(M.store("2", "-FLAGS.SILENT", "(\\Flagged)")) == [None]
# APPEND with APPENDUID, COPY with COPYUID, MOVE with EXPUNGE.
r = M.append("Drafts", "(\\Draft)", None, b"Subject: draft\r\n\r\nwip\r\n")
assert r[0] == "OK" and b"[APPENDUID " in r[1][0] and r[1][0].split()[2] == b"1]", r
r = M.copy("1:2", "Archive")
assert r[0] == "OK" and re.search(rb"\[COPYUID \d+ 1:2 1:2\]|\[COPYUID \d+ 1,2 1,2\]", r[1][0]), r
typ, data = M.uid("MOVE", "1", "Trash")
assert typ == "OK", data
assert M.untagged_responses.pop("EXPUNGE") == [b"1"], M.untagged_responses
assert ok(M.status("Trash", "(MESSAGES UIDNEXT UNSEEN)"))[0] == b'Trash (MESSAGES 1 UIDNEXT 2 UNSEEN 0)'
assert ok(M.status("Archive", "(MESSAGES)"))[0] == b'Archive (MESSAGES 2)'
# EXPUNGE of \Deleted, UID EXPUNGE of a subset.
ok(M.store("1", "+FLAGS", "\\Deleted"))
assert ok(M.expunge()) == [b"1"]
assert ok(M.select("Archive")) == [b"2"]
ok(M.store("1:2", "+FLAGS.SILENT", "\\Deleted"))
ok(M.uid("EXPUNGE", "2"))
assert ok(M.search(None, "ALL")) == [b"1"]
ok(M.unselect())
# Folders: create (modified UTF-7), rename with children, delete, subscribe.
ok(M.create("Entw&APw-rfe"))
ok(M.create("Entw&APw-rfe.2026"))
ok(M.rename("Entw&APw-rfe", "Old"))
names = [l.decode() for l in ok(M.list('""', "Old*"))]
assert names == ['(\\HasChildren) "." Old', '(\\HasNoChildren) "." Old.2026'], names
ok(M.subscribe("Old"))
assert any(l.endswith("Old") for l in [x.decode() for x in ok(M.lsub())])
ok(M.delete("Old.2026"))
assert M.delete("INBOX")[0] == "NO"
for bad in ["../escape", "a/b", "/etc", "x..y", ".hidden", "~root"]:
    assert M.create(bad)[0] == "NO", bad
assert M.select("NoSuchFolder")[0] == "NO"
assert M.append("NoSuchFolder", None, None, b"x\r\n")[0] == "NO"
# LIST-STATUS and SPECIAL-USE selection.
typ, data = M._simple_command("LIST", "(SPECIAL-USE)", '""', "*", "RETURN", "(STATUS (MESSAGES))")
assert typ == "OK"
lists = [l.decode() for l in M.untagged_responses.pop("LIST")]
assert len(lists) == 5 and not any("INBOX" in l for l in lists), lists
statuses = [s.decode() for s in M.untagged_responses.pop("STATUS")]
assert 'Drafts (MESSAGES 1)' in statuses, statuses
ok(M.namespace())
imaplib.Commands["ID"] = ("NONAUTH", "AUTH", "SELECTED")
typ, data = M._simple_command("ID", "NIL")
assert typ == "OK" and M.untagged_responses.pop("ID") == [b'("name" "postroom")']
typ, data = M.getquotaroot("INBOX")
assert typ == "OK" and data[0] == [b"INBOX"], data
ok(M.noop())
print("LOGOUT", M.logout()[0])
"#,
        &server,
        &tree,
    );
    assert!(said.contains("LOGOUT BYE"), "{said}");
}

#[test]
fn append_then_fetch_is_byte_for_byte_with_nested_bodystructure() {
    let tree = tree_with_user();
    let server = Server::start(&tree, "imap-serve", &[]);
    python(
        r#"
M = login()
msg = (b"From: a@b.test\r\nSubject: nested\r\nMIME-Version: 1.0\r\n"
       b"Content-Type: multipart/mixed; boundary=\"outer\"\r\n\r\npreamble\r\n"
       b"--outer\r\nContent-Type: multipart/alternative; boundary=inner\r\n\r\n"
       b"--inner\r\nContent-Type: text/plain; charset=utf-8\r\n\r\nplain \xc3\xa9\r\n"
       b"--inner\r\nContent-Type: text/html\r\n\r\n<p>html</p>\r\n--inner--\r\n"
       b"--outer\r\nContent-Type: message/rfc822\r\n\r\n"
       b"Subject: inside\r\nFrom: \"Inner, Person\" <in@side.test>\r\n\r\ninner body\r\n"
       b"--outer\r\nContent-Type: application/pdf\r\n"
       b"Content-Disposition: attachment;\r\n filename*0*=utf-8''%E2%82%AC%20rates;\r\n filename*1*=%20.pdf\r\n"
       b"Content-Transfer-Encoding: base64\r\n\r\nAAAA\r\n--outer--\r\nepilogue\r\n")
r = M.append("INBOX", "(\\Seen $Important)", '"05-Jul-1994 02:44:25 -0700"', msg)
assert r[0] == "OK", r
ok(M.select("INBOX"))
r = ok(M.fetch("1", "(RFC822.SIZE INTERNALDATE FLAGS BODY.PEEK[])"))
assert r[0][1] == msg, (r[0][1], msg)
head = r[0][0].decode()
assert f"RFC822.SIZE {len(msg)}" in head, head
assert 'INTERNALDATE "05-Jul-1994 09:44:25 +0000"' in head, head
assert "FLAGS (\\Seen $Important \\Recent)" in head, head
bs = ok(M.fetch("1", "(BODYSTRUCTURE)"))[0].decode()
expected = ('(BODYSTRUCTURE ((("text" "plain" ("charset" "utf-8") NIL NIL "7bit" 8 1 NIL NIL NIL NIL)'
    '("text" "html" NIL NIL NIL "7bit" 11 1 NIL NIL NIL NIL) "alternative" ("boundary" "inner") NIL NIL NIL)'
    '("message" "rfc822" NIL NIL NIL "7bit" 67 (NIL "inside" (("Inner, Person" NIL "in" "side.test")) '
    '(("Inner, Person" NIL "in" "side.test")) (("Inner, Person" NIL "in" "side.test")) NIL NIL NIL NIL NIL) '
    '("text" "plain" ("charset" "us-ascii") NIL NIL "7bit" 10 1 NIL NIL NIL NIL) 4 NIL NIL NIL NIL)'
    '("application" "pdf" NIL NIL NIL "base64" 4 NIL ("attachment" ("filename*" "utf-8\'\'%E2%82%AC%20rates%20.pdf")) NIL NIL)'
    ' "mixed" ("boundary" "outer") NIL NIL NIL))')
assert expected in bs, bs
r = ok(M.fetch("1", "(BODY.PEEK[1.1] BODY.PEEK[2.HEADER.FIELDS (SUBJECT)] BODY.PEEK[2.TEXT] BODY.PEEK[3.MIME] BODY.PEEK[1.2]<3.4>)"))
assert r[0][1] == "plain é".encode(), r
assert r[1][1] == b"Subject: inside\r\n\r\n", r
assert r[2][1] == b"inner body", r
assert r[3][1].startswith(b"Content-Type: application/pdf\r\n") and r[3][1].endswith(b"\r\n\r\n"), r
assert r[4][1] == b"html", r
print("ok")
"#,
        &server,
        &tree,
    );
}

#[test]
fn two_sessions_and_a_delivery_loop_stay_consistent() {
    let tree = tree_with_user();
    for i in 0..5 {
        deliver(&tree, &format!("seed {i}"));
    }
    let server = Server::start(&tree, "imap-serve", &[]);
    python(
        r#"
import random, threading
random.seed(7)

class View:
    """One session and the folder as its untagged responses describe it."""
    def __init__(self):
        self.M = login()
        ok(self.M.select("INBOX"))
        self.uids = [int(x) for x in ok(self.M.uid("SEARCH", "ALL"))[0].split()]
        self.M.untagged_responses.clear()
    def apply(self):
        # EXPUNGEs come before EXISTS in this server's reports; imaplib keeps
        # each kind in order.
        r = self.M.untagged_responses
        for seq in r.pop("EXPUNGE", []):
            del self.uids[int(seq) - 1]
        exists = r.pop("EXISTS", [])
        r.clear()
        if exists:
            n = int(exists[-1])
            assert n >= len(self.uids), (n, self.uids)
            if n > len(self.uids):
                data = ok(self.M.fetch(f"{len(self.uids)+1}:{n}", "(UID)"))
                self.apply_fetch(data)
    def apply_fetch(self, data):
        for d in data:
            m = re.match(rb"(\d+) \(UID (\d+)\)", d)
            seq, uid = int(m.group(1)), int(m.group(2))
            if seq == len(self.uids) + 1:
                self.uids.append(uid)
            else:
                assert self.uids[seq - 1] == uid, (seq, uid, self.uids)
    def check(self):
        ok(self.M.noop()); self.apply()
        data = ok(self.M.fetch("1:*", "(UID)")) if self.uids else []
        seen = [int(re.match(rb"\d+ \(UID (\d+)\)", d).group(1)) for d in data if d]
        # A delivery may be announced (EXISTS) before this FETCH's answers,
        # and 1:* then covers it, or after them, and the next apply() takes
        # it: RFC 3501 lets EXISTS come at any time.
        if len(seen) > len(self.uids) and "EXISTS" in self.M.untagged_responses:
            self.uids.extend(seen[len(self.uids):])
        assert seen == self.uids, (seen, self.uids)
        assert self.uids == sorted(self.uids)

a, b = View(), View()
stop = threading.Event()
def delivery_loop():
    for i in range(30):
        if stop.is_set(): break
        deliver(f"loop {i}")
        time.sleep(0.02)  # on purpose: deliveries paced through the rounds
t = threading.Thread(target=delivery_loop); t.start()
for round in range(40):
    actor = a if round % 2 else b
    actor.check()
    if actor.uids:
        victims = random.sample(actor.uids, min(2, len(actor.uids)))
        ok(actor.M.uid("STORE", ",".join(map(str, victims)), "+FLAGS.SILENT", "(\\Deleted)"))
        # What UID STORE reported first (an EXISTS): imaplib keeps EXISTS
        # and EXPUNGE apart, so the EXPUNGE after it must not meet it.
        actor.apply()
        if round % 3 == 0:
            # imaplib's expunge() takes the EXPUNGE responses for itself.
            for seq in ok(actor.M.expunge()):
                if seq:
                    del actor.uids[int(seq) - 1]
            actor.apply()
    (b if actor is a else a).check()
t.join()
for v in (a, b): v.check()
assert a.uids == b.uids, (a.uids, b.uids)
fresh = View()
assert fresh.uids == a.uids, (fresh.uids, a.uids)
print("consistent", len(a.uids))
"#,
        &server,
        &tree,
    );
}

#[test]
fn idle_is_woken_by_a_delivery_without_polling() {
    let tree = tree_with_user();
    let server = Server::start(&tree, "imap-serve", &[]);
    let said = python(
        r#"
s = socket.create_connection(("127.0.0.1", PORT), timeout=10)
f = s.makefile("rb")
f.readline()
s.sendall(b"a LOGIN bob@example.test secret\r\nb SELECT INBOX\r\n")
while not f.readline().startswith(b"b OK"): pass
s.sendall(b"c IDLE\r\n")
assert f.readline().startswith(b"+"), "no continuation"
start = time.time()
deliver("wake up")
line = f.readline()
took = time.time() - start
assert line == b"* 1 EXISTS\r\n", line
assert took < 5, took   # the timer safety net is 60 s: this was inotify
assert f.readline() == b"* 1 RECENT\r\n"
s.sendall(b"DONE\r\n")
assert f.readline().startswith(b"c OK"), "IDLE not ended"
print(f"idle wake {took*1000:.0f} ms (including mail-inject)")
"#,
        &server,
        &tree,
    );
    eprintln!("{said}");
}

#[test]
fn starttls_discards_pipelined_plaintext_and_implicit_tls_works() {
    let tree = tree_with_user();
    let server = Server::start(&tree, "imap-serve", &[]);
    python(
        r#"
ctx = ssl.create_default_context(); ctx.check_hostname = False; ctx.verify_mode = ssl.CERT_NONE
s = socket.create_connection(("127.0.0.1", PORT), timeout=10)
f = s.makefile("rb")
f.readline()
s.sendall(b"a STARTTLS\r\nb LOGIN bob@example.test secret\r\n")
assert f.readline().startswith(b"a OK"), "no OK to STARTTLS"
t = ctx.wrap_socket(s, server_hostname="localhost")
tf = t.makefile("rb")
t.sendall(b"c SELECT INBOX\r\n")
line = tf.readline()
assert line.startswith(b"c BAD"), line   # not logged in: the injected LOGIN was dropped
t.sendall(b"d CAPABILITY\r\n")
caps = tf.readline()
assert b"STARTTLS" not in caps and b"AUTH=PLAIN" in caps, caps
M = imaplib.IMAP4_SSL("127.0.0.1", TLS_PORT, ssl_context=ctx)
ok(M.login("bob@example.test", "secret"))
ok(M.select("INBOX"))
M.logout()
print("ok")
"#,
        &server,
        &tree,
    );
}

#[test]
fn imap_starttls_after_login_is_refused() {
    let tree = tree_with_user();
    let server = Server::start(&tree, "imap-serve", &[]);
    let said = python(
        r#"
s = socket.create_connection(("127.0.0.1", PORT), timeout=10)
f = s.makefile("rb")
f.readline()
s.sendall(b"a CAPABILITY\r\n")
caps = f.readline(); f.readline()
assert b"STARTTLS" in caps, caps        # TLS is on offer before login
s.sendall(b"b LOGIN bob@example.test secret\r\n")   # loopback counts as secure
line = f.readline()
while line.startswith(b"*"): line = f.readline()
assert line.startswith(b"b OK"), line
s.sendall(b"c STARTTLS\r\n")
print("starttls", f.readline())
s.sendall(b"d NOOP\r\n")                # still the same plaintext session
print("noop", f.readline())
"#,
        &server,
        &tree,
    );
    assert!(
        said.contains("starttls b'c BAD STARTTLS only before login\\r\\n'"),
        "{said}"
    );
    assert!(said.contains("noop b'd OK"), "{said}");
}

/// Sends `input` in one write on a fresh connection (after the greeting)
/// and reads until the server closes or `wait` passes.
fn raw(port: u16, input: &[u8], wait: Duration) -> String {
    let mut stream = TcpStream::connect(("127.0.0.1", port)).unwrap();
    stream.set_read_timeout(Some(wait)).unwrap();
    let mut reader = BufReader::new(stream.try_clone().unwrap());
    let mut greeting = String::new();
    reader.read_line(&mut greeting).unwrap();
    assert!(greeting.starts_with("* OK"), "{greeting}");
    stream.write_all(input).unwrap();
    let mut out = Vec::new();
    let _ = reader.read_to_end(&mut out);
    String::from_utf8_lossy(&out).into_owned()
}

#[test]
fn hostile_input_is_refused_and_bounded() {
    let tree = tree_with_user();
    deliver(&tree, "one");
    let server = Server::start(&tree, "imap-serve", &[]);
    let wait = Duration::from_secs(3);
    let login = "a LOGIN bob@example.test secret\r\n";

    // A synchronizing literal over the limit is refused before it is read;
    // the session goes on.
    let out = raw(
        server.port,
        format!("{login}b APPEND INBOX {{999999999999}}\r\nc LOGOUT\r\n").as_bytes(),
        wait,
    );
    assert!(out.contains("b NO [TOOBIG]"), "{out}");
    assert!(
        !out.lines().any(|l| l.starts_with("+ ")),
        "no continuation for a refused literal: {out}"
    );
    assert!(out.contains("c OK LOGOUT"), "{out}");
    let out = raw(
        server.port,
        format!("{login}b SEARCH TEXT {{100000}}\r\nc LOGOUT\r\n").as_bytes(),
        wait,
    );
    assert!(out.contains("b BAD literal larger"), "{out}");

    // A non-synchronizing one: its bytes are on the way, so the session
    // ends rather than read them as commands.
    let out = raw(
        server.port,
        format!("{login}b APPEND INBOX {{50000000+}}\r\nc LOGOUT\r\n").as_bytes(),
        wait,
    );
    assert!(out.contains("* BYE [TOOBIG]"), "{out}");
    assert!(
        !out.contains("c OK"),
        "literal bytes were read as a command: {out}"
    );

    // Overlong line: BYE. Deep nesting, huge OR trees: BAD, fast.
    let long = format!("{login}b NOOP {}\r\n", "x".repeat(100_000));
    assert!(raw(server.port, long.as_bytes(), wait).contains("* BYE command line too long"));
    let start = Instant::now();
    let deep = format!(
        "{login}b SELECT INBOX\r\nc SEARCH {}ALL{}\r\nd SEARCH {}ALL\r\ne UID FETCH 1:4294967295 (FLAGS)\r\nf FETCH 1:* FLAGS\r\ng LOGOUT\r\n",
        "(".repeat(5000),
        ")".repeat(5000),
        "OR ALL ".repeat(5000)
    );
    let out = raw(server.port, deep.as_bytes(), wait);
    assert!(out.contains("c BAD search keys nested too deeply"), "{out}");
    assert!(out.contains("d BAD"), "{out}");
    assert!(
        out.contains("* 1 FETCH (UID 1 FLAGS (\\Recent))") && out.contains("e OK"),
        "{out}"
    );
    assert!(out.contains("g OK LOGOUT"), "{out}");
    assert!(
        start.elapsed() < Duration::from_secs(3),
        "{:?}",
        start.elapsed()
    );

    // Thousands of pipelined commands, all answered in order.
    let mut many = String::from(login);
    for i in 0..5000 {
        many.push_str(&format!("n{i} NOOP\r\n"));
    }
    many.push_str("z LOGOUT\r\n");
    let out = raw(server.port, many.as_bytes(), Duration::from_secs(10));
    assert_eq!(
        out.matches(" OK completed").count(),
        5000,
        "{}",
        &out[..200.min(out.len())]
    );
    assert!(out.contains("n4999 OK") && out.contains("z OK LOGOUT"));

    // Names that would leave the maildir, in every spelling.
    let mut names = String::from(login);
    for (i, bad) in [
        "\"../x\"",
        "\"a/b\"",
        "\"/etc\"",
        "\"..\"",
        "\".x\"",
        "\"a\\\\b\"",
        "\"a..b\"",
        "{3+}\r\na\x01b",
        "\"~u\"",
        "&Ly4u-",
    ]
    .iter()
    .enumerate()
    {
        names.push_str(&format!("c{i} CREATE {bad}\r\n"));
    }
    names.push_str("z LOGOUT\r\n");
    let out = raw(server.port, names.as_bytes(), wait);
    assert_eq!(out.matches(" NO ").count(), 10, "{out}");
    let root = tree.maildir("bob");
    let entries: Vec<String> = std::fs::read_dir(root.parent().unwrap())
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    assert_eq!(
        entries,
        vec!["bob"],
        "nothing was created beside the maildir"
    );
}

#[test]
fn unterminated_literals_and_unread_output_time_out() {
    let tree = tree_with_user();
    let text = std::fs::read_to_string(&tree.config).unwrap();
    std::fs::write(
        &tree.config,
        format!("{text}\n[imap]\nidle_timeout = \"2s\"\n"),
    )
    .unwrap();
    let big = format!("Subject: big\n\n{}\n", "x".repeat(200_000));
    assert!(
        tree.inject(&["bob@example.test"], big.as_bytes())
            .status
            .success()
    );
    let server = Server::start(&tree, "imap-serve", &[]);

    // A literal announced and never finished: cut off after the timeout.
    let start = Instant::now();
    let out = raw(server.port, b"a LOGIN {10}\r\nabc", Duration::from_secs(10));
    assert!(out.starts_with("+ "), "{out}");
    assert!(
        start.elapsed() < Duration::from_secs(6),
        "{:?}",
        start.elapsed()
    );

    // A client that asks for a lot and never reads: the server's pending
    // output is bounded and it hangs up after the timeout.
    let mut stream = TcpStream::connect(("127.0.0.1", server.port)).unwrap();
    let mut cmds = String::from("a LOGIN bob@example.test secret\r\nb SELECT INBOX\r\n");
    for i in 0..500 {
        cmds.push_str(&format!("f{i} FETCH 1 BODY.PEEK[]\r\n"));
    }
    stream.write_all(cmds.as_bytes()).unwrap();
    let start = Instant::now();
    // Not a byte read until the server gives the session up (its idle
    // timeout, 2 s, runs out while its output waits for us).
    let peer = format!("peer={}", stream.local_addr().unwrap());
    server
        .log
        .wait_for(&[&peer, "session ended"], Duration::from_secs(30));
    // Now read: the server must have closed, having sent far less than
    // the 100 MB asked for.
    stream
        .set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    let mut got = 0usize;
    let mut buf = vec![0; 1 << 16];
    loop {
        match stream.read(&mut buf) {
            Ok(0) | Err(_) => break,
            Ok(n) => got += n,
        }
        assert!(start.elapsed() < Duration::from_secs(30), "never closed");
    }
    assert!(got < 20_000_000, "read {got} bytes");
}

#[test]
fn inetd_mode_over_pipes() {
    let tree = tree_with_user();
    deliver(&tree, "piped");
    let start = Instant::now();
    let mut child = spawn_inetd("imap-serve", &tree);
    let mut reader = BufReader::new(child.stdout.take().unwrap());
    let mut greeting = String::new();
    reader.read_line(&mut greeting).unwrap();
    let to_greeting = start.elapsed();
    assert!(
        greeting.starts_with("* OK [CAPABILITY IMAP4rev1"),
        "{greeting}"
    );
    let mut stdin = child.stdin.take().unwrap();
    stdin
        .write_all(b"a LOGIN bob@example.test secret\r\nb EXAMINE INBOX\r\nc FETCH 1 (BODY[HEADER.FIELDS (SUBJECT)])\r\nd LOGOUT\r\n")
        .unwrap();
    let mut rest = String::new();
    reader.read_to_string(&mut rest).unwrap();
    assert!(rest.contains("b OK [READ-ONLY]"), "{rest}");
    assert!(rest.contains("Subject: piped"), "{rest}");
    assert!(rest.contains("d OK LOGOUT"), "{rest}");
    assert!(child.wait().unwrap().success());
    eprintln!("inetd connect-to-greeting: {to_greeting:?} (debug build, process start included)");
}

#[test]
fn condstore_and_qresync_resynchronise_a_client_after_changes_by_anyone() {
    let tree = tree_with_user();
    for subject in ["one", "two", "three"] {
        deliver(&tree, subject);
    }
    let server = Server::start(&tree, "imap-serve", &[]);
    let said = python(
        r#"
def code(M, name):
    return M.untagged_responses.pop(name, [None])[-1]
M = login()
caps = ok(M.capability())[0].decode().split()
assert "CONDSTORE" in caps and "QRESYNC" in caps, caps
typ, data = M._simple_command("ENABLE", "QRESYNC")
assert typ == "OK" and M.untagged_responses.pop("ENABLED") == [b"QRESYNC"]
ok(M.select("INBOX"))
h1 = int(code(M, "HIGHESTMODSEQ"))
validity = int(code(M, "UIDVALIDITY"))
r = ok(M.fetch("1:*", "(MODSEQ)"))
assert all(re.fullmatch(rb"\d \(MODSEQ \(\d+\)\)", l) for l in r), r
assert max(int(re.search(rb"MODSEQ \((\d+)", l).group(1)) for l in r) == h1, (r, h1)

# Another session flags 2 and expunges 3; a fourth message arrives.
N = login()
ok(N.select("INBOX"))
ok(N.store("2", "+FLAGS", "(\\Flagged)"))
ok(N.store("3", "+FLAGS", "(\\Deleted)"))
ok(N.expunge())
deliver("four")
assert int(ok(N.status("INBOX", "(HIGHESTMODSEQ)"))[0].split()[-1].rstrip(b")")) > h1

# M, QRESYNC enabled, hears VANISHED (not EXPUNGE) and FLAGS with MODSEQ.
ok(M.noop())
assert M.untagged_responses.pop("VANISHED") == [b"3"], M.untagged_responses
assert "EXPUNGE" not in M.untagged_responses
fetches = M.untagged_responses.pop("FETCH")
assert any(re.fullmatch(rb"2 \(UID 2 FLAGS \(\\Flagged( \\Recent)?\) MODSEQ \(\d+\)\)", f) for f in fetches), fetches
# (imaplib keeps SELECT's EXISTS too: the last one is the news.)
assert M.untagged_responses.pop("EXISTS")[-1] == b"3", M.untagged_responses

# Conditional STORE: 1 is unchanged since h1, 2 is not.
typ, data = M._simple_command("UID", "STORE", "1", "(UNCHANGEDSINCE %d)" % h1, "+FLAGS", "(\\Seen)")
assert typ == "OK" and b"MODIFIED" not in data[0], data
typ, data = M._simple_command("UID", "STORE", "2", "(UNCHANGEDSINCE %d)" % h1, "+FLAGS", "(\\Answered)")
assert typ == "OK" and data[0].startswith(b"[MODIFIED 2]"), data
assert b"\\Answered" not in ok(M.uid("FETCH", "2", "(FLAGS)"))[0]

# A flag changed behind IMAP's back (a rename in cur/, as POP3 or a local
# reader does) gets a new mod-sequence too.
h2 = int(ok(M.status("INBOX", "(HIGHESTMODSEQ)"))[0].split()[-1].rstrip(b")"))
cur = os.path.join(os.environ["MAILDIR"], "cur")
name = sorted(f for f in os.listdir(cur) if not f.endswith("S"))[0]
os.rename(os.path.join(cur, name), os.path.join(cur, name[:name.index(":2,") + 3] + "D"))
ok(M.noop())
fetches = M.untagged_responses.pop("FETCH")
assert any(b"\\Draft" in f and int(re.search(rb"MODSEQ \((\d+)", f).group(1)) > h2 for f in fetches), fetches

# SEARCH MODSEQ and UID FETCH CHANGEDSINCE with VANISHED.
r = ok(M.search(None, "MODSEQ", str(h1 + 1)))[0]
assert re.fullmatch(rb"[\d ]+ \(MODSEQ \d+\)", r) and b"1" in r.split()[:3], r
typ, data = M._simple_command("UID", "FETCH", "1:*", "(FLAGS)", "(CHANGEDSINCE %d VANISHED)" % h1)
assert typ == "OK"
assert M.untagged_responses.pop("VANISHED") == [b"(EARLIER) 3"], M.untagged_responses
changed = M.untagged_responses.pop("FETCH")
assert len(changed) == 3 and all(b"MODSEQ" in f for f in changed), changed

# A new session picks up where the first left off, in one SELECT.
R = login()
R._simple_command("ENABLE", "QRESYNC")
typ, data = R._simple_command("SELECT", "INBOX", "(QRESYNC (%d %d 1:3))" % (validity, h1))
assert typ == "OK", data
assert R.untagged_responses.pop("VANISHED") == [b"(EARLIER) 3"], R.untagged_responses
fetches = R.untagged_responses.pop("FETCH")
assert len(fetches) == 3 and all(b"MODSEQ" in f for f in fetches), fetches
# A stale UIDVALIDITY gets no resync data, only the plain SELECT.
typ, data = R._simple_command("SELECT", "INBOX", "(QRESYNC (1 %d))" % h1)
assert typ == "OK" and "VANISHED" not in R.untagged_responses
# Without ENABLE QRESYNC the parameter is refused.
try:
    N._simple_command("SELECT", "INBOX", "(QRESYNC (%d %d))" % (validity, h1))
    raise SystemExit("QRESYNC without ENABLE accepted")
except imaplib.IMAP4.error as e:
    assert "ENABLE QRESYNC" in str(e), e
print("done")
"#,
        &server,
        &tree,
    );
    assert!(said.contains("done"), "{said}");
}

#[test]
fn the_folder_cache_is_only_a_cache() {
    let tree = tree_with_user();
    let nested = "From: Ann <ann@remote.test>\nTo: bob@example.test\nSubject: nested\nMIME-Version: 1.0\nContent-Type: multipart/mixed; boundary=\"b1\"\n\n--b1\nContent-Type: text/plain\n\nhi\n--b1\nContent-Type: message/rfc822\n\nSubject: inner\nFrom: x@y.test\n\ninner body\n--b1--\n";
    let out = tree.inject(&["bob@example.test"], nested.as_bytes());
    assert!(out.status.success(), "{}", stderr(&out));
    deliver(&tree, "plain");
    let server = Server::start(&tree, "imap-serve", &[]);
    let said = python(
        r#"
cache = os.path.join(os.environ["MAILDIR"], "postroom-cache")
ITEMS = "(UID RFC822.SIZE INTERNALDATE ENVELOPE BODY BODYSTRUCTURE)"
def look():
    M = login()
    ok(M.select("INBOX"))
    r = ok(M.fetch("1:*", ITEMS))
    s = ok(M.search(None, "SUBJECT", "nested"))
    M.logout()
    return r, s
first = look()
assert os.path.getsize(cache) > 100, "FETCH filled the cache"
assert look() == first, "answers from the cache are the same"
os.remove(cache)
assert look() == first, "deleted: recomputed"
with open(cache, "r+b") as f:
    f.seek(40); f.write(b"\xff" * 64)
assert look() == first, "corrupted: ignored"
size = os.path.getsize(cache)
with open(cache, "r+b") as f:
    f.truncate(size - 7)
assert look() == first, "torn: ignored"
with open(cache, "wb") as f:
    f.write(b"garbage")
assert look() == first, "not ours: replaced"
assert b"BODYSTRUCTURE ((" in first[0][0], first
print("done")
"#,
        &server,
        &tree,
    );
    assert!(said.contains("done"), "{said}");
}

#[test]
fn imap4rev2_binary_and_saved_search_results() {
    let tree = tree_with_user();
    let encoded = "From: Ann <ann@remote.test>\nTo: bob@example.test\nSubject: binary\nMIME-Version: 1.0\nContent-Type: multipart/mixed; boundary=b\n\n--b\nContent-Type: text/plain; charset=utf-8\nContent-Transfer-Encoding: quoted-printable\n\ncaf=C3=A9\n--b\nContent-Type: application/octet-stream\nContent-Transfer-Encoding: base64\n\nAAECAw==\n--b--\n";
    let out = tree.inject(&["bob@example.test"], encoded.as_bytes());
    assert!(out.status.success(), "{}", stderr(&out));
    for subject in ["two", "three", "four"] {
        deliver(&tree, subject);
    }
    let server = Server::start(&tree, "imap-serve", &[]);
    let said = python(
        r#"
M = login()
caps = ok(M.capability())[0].decode().split()
for cap in ["IMAP4rev2", "BINARY", "SEARCHRES", "ESEARCH"]:
    assert cap in caps, (cap, caps)
typ, data = M._simple_command("ENABLE", "IMAP4rev2")
assert typ == "OK" and M.untagged_responses.pop("ENABLED") == [b"IMAP4rev2"]
ok(M.select("INBOX"))
assert "RECENT" not in M.untagged_responses, "no RECENT in IMAP4rev2"
# BINARY undoes the transfer encoding; a NUL-bearing part comes as literal8.
r = ok(M.fetch("1", "(BINARY.PEEK[1] BINARY.SIZE[1] BINARY.SIZE[2])"))
assert r[0][1] == "café".encode(), r
assert b"BINARY.SIZE[1] 5" in r[1] and b"BINARY.SIZE[2] 4" in r[1], r
M.send(b"b1 FETCH 1 (BINARY.PEEK[2])\r\n")
raw = b""
while b"b1 OK" not in raw:
    raw += M.sock.recv(4096)
assert b"BINARY[2] ~{4}\r\n\x00\x01\x02\x03)" in raw, raw
assert b"\\Seen" not in ok(M.fetch("1", "(FLAGS)"))[0], "PEEK leaves \\Seen alone"
# SEARCH answers with ESEARCH; SAVE keeps the result for $.
typ, data = M._simple_command("SEARCH", "SUBJECT", "t")
assert typ == "OK" and M.untagged_responses.pop("ESEARCH")[0].endswith(b"ALL 2:3"), M.untagged_responses
typ, data = M._simple_command("UID", "SEARCH", "RETURN", "(SAVE)", "OR", "SUBJECT", "two", "SUBJECT", "four")
assert typ == "OK" and "ESEARCH" not in M.untagged_responses
r = ok(M.fetch("$", "(UID)"))
assert r == [b"2 (UID 2)", b"4 (UID 4)"], r
ok(M.uid("STORE", "$", "+FLAGS.SILENT", "(\\Flagged)"))
typ, data = M._simple_command("SEARCH", "RETURN", "(COUNT)", "FLAGGED", "$")
assert M.untagged_responses.pop("ESEARCH")[0].endswith(b"COUNT 2"), data
# The saved result is the folder's: gone after another SELECT.
ok(M.select("INBOX"))
assert ok(M.fetch("$", "(UID)")) == [None]
print("done")
"#,
        &server,
        &tree,
    );
    assert!(said.contains("done"), "{said}");
}

/// The class of Dovecot's CVE-2024-23184 and CVE-2026-27859: headers built
/// to make ENVELOPE or BODYSTRUCTURE cost quadratic time or unbounded
/// memory. Both stay fast, and their answers bounded.
#[test]
fn hostile_headers_keep_envelope_and_bodystructure_bounded() {
    let tree = tree_with_user();
    let mut msg = String::from("From: a@remote.test\nSubject: many\nTo: ");
    for i in 0..100_000 {
        msg.push_str(&format!("u{i}@x.test, "));
    }
    msg.push_str("last@x.test\n");
    for i in 0..2_000 {
        msg.push_str(&format!("Cc: c{i}@y.test\n"));
    }
    msg.push_str("MIME-Version: 1.0\nContent-Type: multipart/mixed; boundary=b");
    for i in 0..5_000 {
        msg.push_str(&format!(";\n p{i}*0*=utf-8''%E2%82%AC; p{i}*1=x"));
    }
    msg.push_str("\n\n--b\nContent-Type: text/plain\n\nhi\n--b--\n");
    let new = tree.maildir("bob").join("new");
    std::fs::create_dir_all(&new).unwrap();
    std::fs::write(new.join("1700000000.M1P1.test"), &msg).unwrap();
    let server = Server::start(&tree, "imap-serve", &[]);
    let start = Instant::now();
    let out = raw(
        server.port,
        b"a LOGIN bob@example.test secret\r\nb SELECT INBOX\r\nc FETCH 1 (ENVELOPE BODYSTRUCTURE)\r\nd SEARCH TO u99999\r\ne LOGOUT\r\n",
        Duration::from_secs(10),
    );
    let took = start.elapsed();
    assert!(
        out.contains("c OK") && out.contains("e OK LOGOUT"),
        "{}",
        &out[..out.len().min(500)]
    );
    assert!(took < Duration::from_secs(5), "took {took:?}");
    assert!(out.len() < 400_000, "answer of {} bytes", out.len());
    assert!(
        out.contains("* SEARCH 1"),
        "the search still sees the whole header"
    );
}

/// POP3 and IMAP share one mailbox through files alone: what a POP3
/// session deletes or reads, an open IMAP session hears about.
#[test]
fn pop3_deletes_and_reads_reach_an_open_imap_session() {
    let tree = tree_with_user();
    for subject in ["one", "two", "three"] {
        deliver(&tree, subject);
    }
    let server = Server::start(&tree, "imap-serve", &[]);
    let said = python(
        r#"
M = login()
ok(M.select("INBOX"))
assert ok(M.uid("SEARCH", "ALL")) == [b"1 2 3"]
M.untagged_responses.clear()
pop = subprocess.run([os.environ["POP3"], "--config", os.environ["CONFIG"]],
    input=b"USER bob@example.test\r\nPASS secret\r\nRETR 1\r\nDELE 2\r\nQUIT\r\n",
    env=dict(os.environ, REMOTE_ADDR="127.0.0.1"), capture_output=True, timeout=20)
assert pop.stdout.count(b"+OK") == 6, pop.stdout
ok(M.noop())
assert M.untagged_responses.pop("EXPUNGE") == [b"2"], M.untagged_responses
fetches = M.untagged_responses.pop("FETCH")
assert fetches == [b"1 (UID 1 FLAGS (\\Seen \\Recent))"], fetches
assert ok(M.uid("SEARCH", "ALL")) == [b"1 3"]
print("done")
"#,
        &server,
        &tree,
    );
    assert!(said.contains("done"), "{said}");
}

#[test]
fn sort_thread_and_multiappend() {
    let tree = tree_with_user();
    let server = Server::start(&tree, "imap-serve", &[]);
    let said = python(
        r#"
M = login()
caps = ok(M.capability())[0].decode().split()
for cap in ["SORT", "SORT=DISPLAY", "THREAD=REFERENCES", "THREAD=ORDEREDSUBJECT", "MULTIAPPEND"]:
    assert cap in caps, (cap, caps)
def msg(subject, frm, date, mid, refs="", body="x"):
    head = f"From: {frm}\r\nTo: bob@example.test\r\nSubject: {subject}\r\nDate: {date}\r\nMessage-ID: <{mid}>\r\n"
    if refs:
        head += f"References: {refs}\r\n"
    return (head + "\r\n" + body + "\r\n").encode()
msgs = [
    msg("Lunch", "Zoe <zoe@x.test>", "Mon, 2 Nov 2026 10:00:00 +0000", "1@x"),
    msg("Re: Lunch", "Adam <adam@x.test>", "Mon, 2 Nov 2026 11:00:00 +0000", "2@x", "<1@x>", "longer body " * 50),
    msg("[team] Budget", "Mia <mia@x.test>", "Sun, 1 Nov 2026 09:00:00 +0000", "3@x"),
    msg("Re: Re: Lunch", "Bea <bea@x.test>", "Mon, 2 Nov 2026 10:30:00 +0000", "4@x", "<1@x> <2@x>"),
    msg("Fwd: Budget (fwd)", "Cal <cal@x.test>", "Tue, 3 Nov 2026 08:00:00 -0500", "5@x"),
]
# MULTIAPPEND, raw (imaplib sends one message per APPEND).
cmd = b"m1 APPEND INBOX"
for i, m in enumerate(msgs):
    cmd += b" (\\Seen) {%d+}\r\n" % len(m) + m
M.send(cmd + b"\r\n")
reply = b""
while b"m1 " not in reply:
    reply += M.sock.recv(4096)
assert re.search(rb"m1 OK \[APPENDUID \d+ 1:5\]", reply), reply
ok(M.select("INBOX"))
assert ok(M.sort("(SUBJECT)", "UTF-8", "ALL")) == [b"3 5 1 2 4"]
assert ok(M.sort("(DATE)", "UTF-8", "ALL")) == [b"3 1 4 2 5"]
assert ok(M.sort("(REVERSE SIZE SUBJECT)", "UTF-8", "ALL"))[0].split()[0] == b"2"
assert ok(M.sort("(FROM)", "UTF-8", "ALL")) == [b"2 4 5 3 1"]
assert ok(M.sort("(DISPLAYFROM)", "UTF-8", "SUBJECT", "lunch")) == [b"2 4 1"]
assert ok(M.uid("SORT", "(ARRIVAL)", "UTF-8", "SUBJECT", "budget")) == [b"3 5"]
# 4 names 2 as its parent; ORDEREDSUBJECT knows only subjects and dates.
assert ok(M.thread("REFERENCES", "UTF-8", "ALL")) == [b"(3 5)(1 2 4)"]
assert ok(M.thread("ORDEREDSUBJECT", "UTF-8", "ALL")) == [b"(3 5)(1 (4)(2))"]
# A tagged NO, not BAD (RFC 5256 §3); imaplib returns NO, raises on BAD.
typ, data = M.sort("(SUBJECT)", "KOI8-R", "ALL")
assert typ == "NO" and data[0].startswith(b"[BADCHARSET (UTF-8 US-ASCII)]"), (typ, data)
# All or nothing: the second message has a flag that cannot be stored.
before = ok(M.status("INBOX", "(MESSAGES UIDNEXT)"))[0]
good = msg("fine", "a@x.test", "Mon, 2 Nov 2026 10:00:00 +0000", "6@x")
M.send(b"m2 APPEND INBOX {%d+}\r\n" % len(good) + good + b" {0+}\r\n\r\n")
reply = b""
while b"m2 " not in reply:
    reply += M.sock.recv(4096)
assert b"m2 NO" in reply, reply
after = ok(M.status("INBOX", "(MESSAGES)"))[0]
assert b"MESSAGES 5" in after, (before, after)
print("done")
"#,
        &server,
        &tree,
    );
    assert!(said.contains("done"), "{said}");
}

/// A tagged OK to APPEND means the message is on disk with its UID: kill -9
/// the server at random moments while a client appends, and every message
/// it acknowledged is there afterwards, under the UID APPENDUID gave, byte
/// for byte; no half message is ever visible in cur/ or new/.
#[test]
fn kill_9_during_appends_loses_no_acknowledged_message() {
    let tree = tree_with_user();
    let mut acked: Vec<(u32, Vec<u8>)> = Vec::new();
    let mut sent = 0u32;
    let mut seed = 0x2545_f491_4f6c_dd1du64;
    let mut random = move |n: u64| {
        seed ^= seed << 13;
        seed ^= seed >> 7;
        seed ^= seed << 17;
        seed % n
    };
    for _round in 0..8 {
        let server = Server::start(&tree, "imap-serve", &[]);
        let pid = nix::unistd::Pid::from_raw(server.child.id() as i32);
        let delay = Duration::from_millis(30 + random(200));
        // The clock starts at the round's first acknowledged APPEND, so a
        // loaded machine (slow start, slow login) still gets appends in
        // before the kill, and the kill still lands at a random moment.
        let (first_ack, started) = std::sync::mpsc::channel::<()>();
        let killer = std::thread::spawn(move || {
            let _ = started.recv_timeout(Duration::from_secs(30));
            // On purpose: the random moment of the kill.
            std::thread::sleep(delay);
            let _ = nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGKILL);
        });
        let stream = TcpStream::connect(("127.0.0.1", server.port)).unwrap();
        stream
            .set_read_timeout(Some(Duration::from_secs(5)))
            .unwrap();
        let mut writer = stream.try_clone().unwrap();
        let mut reader = BufReader::new(stream);
        let mut line = String::new();
        let _ = reader.read_line(&mut line);
        let _ = writer.write_all(b"l LOGIN bob@example.test secret\r\n");
        let _ = reader.read_line(&mut line);
        loop {
            sent += 1;
            let body = format!(
                "Subject: crash {sent}\r\n\r\n{}\r\nEND {sent}\r\n",
                "x".repeat(100 + random(30_000) as usize)
            );
            let command = format!("a{sent} APPEND INBOX {{{}+}}\r\n{body}\r\n", body.len());
            if writer.write_all(command.as_bytes()).is_err() {
                break;
            }
            line.clear();
            match reader.read_line(&mut line) {
                Ok(n) if n > 0 => {}
                _ => break,
            }
            let Some(uid) = line
                .strip_prefix(&format!("a{sent} OK [APPENDUID "))
                .and_then(|rest| rest.split([' ', ']']).nth(1))
                .and_then(|uid| uid.parse::<u32>().ok())
            else {
                break;
            };
            acked.push((uid, body.into_bytes()));
            let _ = first_ack.send(());
        }
        drop(first_ack);
        killer.join().unwrap();
        drop(server);
        // Nothing half-written is visible: every message file is whole.
        for sub in ["cur", "new"] {
            for entry in std::fs::read_dir(tree.maildir("bob").join(sub)).unwrap() {
                let text = std::fs::read_to_string(entry.unwrap().path()).unwrap();
                let n = text
                    .lines()
                    .next()
                    .and_then(|l| l.strip_prefix("Subject: crash "))
                    .unwrap_or("?");
                assert!(text.ends_with(&format!("END {n}\n")), "a torn message: {n}");
            }
        }
    }
    assert!(
        acked.len() > 20,
        "only {} appends acknowledged",
        acked.len()
    );
    let server = Server::start(&tree, "imap-serve", &[]);
    let mut stream = TcpStream::connect(("127.0.0.1", server.port)).unwrap();
    stream
        .set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    let mut reader = BufReader::new(stream.try_clone().unwrap());
    let mut line = String::new();
    reader.read_line(&mut line).unwrap();
    stream
        .write_all(b"l LOGIN bob@example.test secret\r\ns SELECT INBOX\r\n")
        .unwrap();
    loop {
        line.clear();
        reader.read_line(&mut line).unwrap();
        if line.starts_with("s OK") {
            break;
        }
    }
    for (uid, body) in &acked {
        stream
            .write_all(format!("f UID FETCH {uid} (BODY.PEEK[])\r\n").as_bytes())
            .unwrap();
        line.clear();
        reader.read_line(&mut line).unwrap();
        let size: usize = line
            .rsplit('{')
            .next()
            .and_then(|s| s.trim_end().strip_suffix('}'))
            .and_then(|s| s.parse().ok())
            .unwrap_or_else(|| panic!("UID {uid} is gone: {line}"));
        let mut got = vec![0; size];
        reader.read_exact(&mut got).unwrap();
        assert!(got == *body, "UID {uid} holds another message");
        loop {
            line.clear();
            reader.read_line(&mut line).unwrap();
            if line.starts_with("f OK") {
                break;
            }
        }
    }
}

/// SORT, THREAD and MULTIAPPEND answered exactly: imaplib's sort, thread
/// and uid('SORT'/'THREAD') on RFC 2047 subjects and a thread whose parent
/// never arrived; a refused charset; and MULTIAPPEND sent raw (imaplib has
/// none), whose second message fails for being too big, for a bad flag and
/// for going over quota, each time leaving nothing stored, the quota given
/// back included.
#[test]
fn sort_thread_multiappend_exact_answers_and_all_or_nothing() {
    let tree = tree_with_message_size("3000");
    let out = tree.postroom(&[
        "user",
        "add",
        "carol@example.test",
        "--password",
        "{PLAIN}secret",
        "--quota",
        "4K",
    ]);
    assert!(out.status.success(), "{}", stderr(&out));
    let server = Server::start(&tree, "imap-serve", &[]);
    let said = python(
        r#"
def send(M, data, tag):
    """Sends raw bytes, answering nothing; returns what came back up to
    and including the tagged line."""
    M.send(data)
    reply = b""
    while not re.search(rb"(^|\r\n)" + tag + rb" [^\r\n]*\r\n", reply):
        chunk = M.sock.recv(65536)
        assert chunk, reply
        reply += chunk
    return reply
def eq(got, want):
    assert got == want, (got, want)
def expect_continuation(M):
    line = M.readline()
    assert line.startswith(b"+ "), line
def msg(subject, date, mid, refs="", size=0):
    head = f"From: Ann <ann@x.test>\r\nSubject: {subject}\r\nDate: {date}\r\nMessage-ID: <{mid}>\r\n"
    if refs:
        head += f"References: {refs}\r\n"
    m = (head + "\r\n").encode()
    return m + b"x" * max(0, size - len(m) - 2) + b"\r\n"

M = login()
v = ok(M.select("INBOX"))
validity = ok(M.status("INBOX", "(UIDVALIDITY)"))[0].split()[-1].rstrip(b")")
msgs = [
    msg("=?utf-8?q?Re=3A_Gr=C3=BC=C3=9Fe?=", "Mon, 2 Nov 2026 12:00:00 +0000", "2@x", "<lost@x> <1@x>"),
    msg("=?utf-8?b?R3LDvMOfZQ==?= (fwd)", "Mon, 2 Nov 2026 11:00:00 +0000", "3@x", "<lost@x>"),
    msg("[list] apples", "Mon, 2 Nov 2026 13:00:00 +0200", "4@x"),
]
cmd = b"m1 APPEND INBOX"
for m, hour in zip(msgs, [9, 10, 8]):
    cmd += b" (\\Flagged) \"02-Nov-2026 %02d:00:00 +0000\" {%d+}\r\n" % (hour, len(m)) + m
reply = send(M, cmd + b"\r\n", b"m1")
assert reply.endswith(b"m1 OK [APPENDUID " + validity + b" 1:3] APPEND completed\r\n"), reply
ok(M.noop())

# 3's date is 11:00 UTC, 1's 12:00, 2's (13:00 +0200) 11:00 UTC too: 2 < 3 by number.
eq(ok(M.sort("(DATE)", "UTF-8", "ALL")), [b"2 3 1"])
# Ties (2 and 3) stay in sequence order under REVERSE too.
eq(ok(M.sort("(REVERSE DATE)", "UTF-8", "ALL")), [b"1 2 3"])
# Base subjects: "grüße" (1, 2) and "apples" (3); ties by number.
eq(ok(M.sort("(SUBJECT)", "US-ASCII", "ALL")), [b"3 1 2"])
eq(ok(M.sort("(SUBJECT REVERSE ARRIVAL)", "UTF-8", "ALL")), [b"3 2 1"])
eq(ok(M.sort("(ARRIVAL)", "UTF-8", "ALL")), [b"3 1 2"])
eq(ok(M.uid("SORT", "(REVERSE SUBJECT)", "UTF-8", "FLAGGED")), [b"1 2 3"])
eq(ok(M.sort("(SIZE)", "UTF-8", "SUBJECT", "\"nothing matches\"")), [b""])
# The parent <lost@x> never arrived: 2 and 1 are its children, 2 the
# older; that thread sorts by 2, before 3 (same time, higher number).
eq(ok(M.thread("REFERENCES", "UTF-8", "ALL")), [b"((2)(1))(3)"])
eq(ok(M.uid("THREAD", "ORDEREDSUBJECT", "UTF-8", "ALL")), [b"(2 1)(3)"])
reply = send(M, b"t1 THREAD REFERENCES KOI8-R ALL\r\n", b"t1")
eq(reply, b"t1 NO [BADCHARSET (UTF-8 US-ASCII)] only UTF-8 and US-ASCII are supported\r\n")
reply = send(M, b"t2 SORT (BOGUS) UTF-8 ALL\r\n", b"t2")
eq(reply, b"t2 BAD unknown SORT criterion BOGUS\r\n")
reply = send(M, b"t3 UID SORT (DISPLAYFROM) UTF-8 1:*\r\n", b"t3")
eq(reply, b"* SORT 1 2 3\r\nt3 OK SORT completed\r\n")

# A second message over limits.message_size (3000): refused before a byte
# of it is sent, and the first, already read, is not stored.
small, big = msg("a", "Mon, 2 Nov 2026 10:00:00 +0000", "5@x"), b"y" * 3001
M.send(b"m2 APPEND INBOX {%d}\r\n" % len(small))
expect_continuation(M)
reply = send(M, small + b" {%d}\r\n" % len(big), b"m2")
eq(reply, b"m2 NO [TOOBIG] message larger than 3000 bytes\r\n")
# Each message fits, but not all five: at most 4 x 3000 bytes in all.
part = msg("b", "Mon, 2 Nov 2026 10:00:00 +0000", "8@x", size=2900)
M.send(b"m4 APPEND INBOX {%d}\r\n" % len(part))
for _ in range(4):
    expect_continuation(M)
    M.send(part + b" {%d}\r\n" % len(part))
reply = send(M, b"", b"m4")
eq(reply, b"m4 NO [TOOBIG] messages larger than 12000 bytes in all\r\n")
# A bad flag on the second message: nothing stored either.
reply = send(M, b"m3 APPEND INBOX {%d+}\r\n" % len(small) + small + b" (\\Bogus) {%d+}\r\n" % len(small) + small + b"\r\n", b"m3")
eq(reply, b"m3 BAD unknown system flag \\Bogus\r\n")
eq(ok(M.status("INBOX", "(MESSAGES UIDNEXT)")), [b'INBOX (MESSAGES 3 UIDNEXT 4)'])

# carol's quota is 4K: two messages of 2500 bytes do not fit together,
# each fits alone. The first is stored, the second refused, the first
# taken back, and the quota it used given back.
C = imaplib.IMAP4("127.0.0.1", PORT)
ok(C.login("carol@example.test", "secret"))
one, two = msg("one", "Mon, 2 Nov 2026 10:00:00 +0000", "6@x", size=2500), msg("two", "Mon, 2 Nov 2026 10:00:00 +0000", "7@x", size=2500)
reply = send(C, b"q1 APPEND INBOX {%d+}\r\n" % len(one) + one + b" {%d+}\r\n" % len(two) + two + b"\r\n", b"q1")
# 2494: the first message as stored (LF line ends), there when the second
# was refused.
eq(reply, b"q1 NO [OVERQUOTA] mailbox is over quota (2494 of 4096 bytes used)\r\n")
# The first was taken back before it had a UID: none was used up.
eq(ok(C.status("INBOX", "(MESSAGES UIDNEXT)")), [b'INBOX (MESSAGES 0 UIDNEXT 1)'])
carol_validity = ok(C.status("INBOX", "(UIDVALIDITY)"))[0].split()[-1].rstrip(b")")
reply = send(C, b"q2 APPEND INBOX {%d+}\r\n" % len(two) + two + b"\r\n", b"q2")
eq(reply, b"q2 OK [APPENDUID " + carol_validity + b" 1] APPEND completed\r\n")
print("done")
"#,
        &server,
        &tree,
    );
    assert!(said.contains("done"), "{said}");
}

/// The peak resident memory of a process (`VmHWM`), in KiB.
fn peak_rss_kib(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .expect("VmHWM in /proc/PID/status")
}

/// Reads one CRLF line within `wait`; what came if the wait ran out.
fn line_within(reader: &mut BufReader<TcpStream>, wait: Duration) -> String {
    reader.get_ref().set_read_timeout(Some(wait)).unwrap();
    let mut line = String::new();
    let _ = reader.read_line(&mut line);
    line
}

#[test]
fn append_literal_before_login_is_refused_unread() {
    let tree = tree_with_user();
    let server = Server::start(&tree, "imap-serve", &[]);
    let wait = Duration::from_secs(5);
    let connect = || {
        let stream = TcpStream::connect(("127.0.0.1", server.port)).unwrap();
        let mut reader = BufReader::new(stream.try_clone().unwrap());
        assert!(line_within(&mut reader, wait).starts_with("* OK"));
        (stream, reader)
    };

    // A synchronizing literal the size of a message: a tagged refusal, no
    // continuation, and the session goes on.
    let (mut stream, mut reader) = connect();
    stream
        .write_all(b"a APPEND INBOX {36700160}\r\nb NOOP\r\n")
        .unwrap();
    assert_eq!(
        line_within(&mut reader, wait),
        "a BAD [TOOBIG] before login a command is limited to 8192 bytes\r\n"
    );
    assert_eq!(line_within(&mut reader, wait), "b OK completed\r\n");

    // Non-synchronizing: answered at once, before a byte of the literal
    // is sent, and the connection is closed.
    let (mut stream, mut reader) = connect();
    stream.write_all(b"a APPEND INBOX {36700160+}\r\n").unwrap();
    assert_eq!(
        line_within(&mut reader, wait),
        "* BYE [TOOBIG] before login a command is limited to 8192 bytes\r\n"
    );
    assert_eq!(line_within(&mut reader, wait), "", "closed after the BYE");

    // The bound is on the whole command: many small literals add up.
    let (mut stream, mut reader) = connect();
    let mut many = String::from("a LOGIN");
    for _ in 0..3 {
        many.push_str(" {4000+}\r\n");
        many.push_str(&"x".repeat(4000));
    }
    many.push_str("\r\n");
    let _ = stream.write_all(many.as_bytes());
    assert_eq!(
        line_within(&mut reader, wait),
        "* BYE [TOOBIG] before login a command is limited to 8192 bytes\r\n"
    );

    // A long line before login is cut off at the same bound.
    let (mut stream, mut reader) = connect();
    let _ = stream.write_all(format!("a LOGIN {} x\r\n", "u".repeat(10_000)).as_bytes());
    assert_eq!(
        line_within(&mut reader, wait),
        "* BYE [TOOBIG] before login a command is limited to 8192 bytes\r\n"
    );

    // A line that never ends gets the BYE as soon as it passes the bound,
    // not when (if ever) its end comes: before login, and after it at
    // imap.line_length.
    let (mut stream, mut reader) = connect();
    let _ = stream.write_all(format!("a LOGIN {}", "u".repeat(10_000)).as_bytes());
    assert_eq!(
        line_within(&mut reader, wait),
        "* BYE [TOOBIG] before login a command is limited to 8192 bytes\r\n"
    );
    let (mut stream, mut reader) = connect();
    stream
        .write_all(b"a LOGIN bob@example.test secret\r\n")
        .unwrap();
    assert!(line_within(&mut reader, wait).starts_with("a OK"));
    let endless = vec![b'x'; 256 * 1024];
    let _ = stream.write_all(b"b SEARCH SUBJECT ");
    for _ in 0..8 {
        if stream.write_all(&endless).is_err() {
            break;
        }
    }
    assert_eq!(
        line_within(&mut reader, wait),
        "* BYE command line too long (imap.line_length)\r\n"
    );

    // LOGIN by literals still works, and after it APPEND takes messages.
    let (mut stream, mut reader) = connect();
    stream.write_all(b"a LOGIN {16}\r\n").unwrap();
    assert!(line_within(&mut reader, wait).starts_with("+ "));
    stream
        .write_all(b"bob@example.test {6+}\r\nsecret\r\n")
        .unwrap();
    assert!(line_within(&mut reader, wait).starts_with("a OK"));
    let message = format!("Subject: big\r\n\r\n{}\r\n", "y".repeat(20_000));
    stream
        .write_all(format!("b APPEND INBOX {{{}+}}\r\n{message}\r\n", message.len()).as_bytes())
        .unwrap();
    assert!(
        line_within(&mut reader, wait).starts_with("b OK [APPENDUID "),
        "a logged-in APPEND of 20 kB is taken"
    );

    // Three connections that never log in, each pushing a 35 MiB literal
    // as fast as it can: the server reads none of it, so its memory stays
    // where it was (it used to grow by every byte sent).
    let senders: Vec<_> = (0..3)
        .map(|_| {
            let port = server.port;
            std::thread::spawn(move || {
                let mut stream = TcpStream::connect(("127.0.0.1", port)).unwrap();
                let _ = stream.write_all(b"a APPEND INBOX {36700160+}\r\n");
                let chunk = vec![b'z'; 64 * 1024];
                for _ in 0..(36_700_160 / chunk.len()) {
                    if stream.write_all(&chunk).is_err() {
                        break;
                    }
                }
            })
        })
        .collect();
    for sender in senders {
        sender.join().unwrap();
    }
    let peak = peak_rss_kib(server.child.id());
    assert!(peak < 64 * 1024, "peak RSS {peak} KiB");
}

#[test]
fn folder_whose_uids_ran_out_is_renumbered_not_stuck() {
    let tree = tree_with_user();
    deliver(&tree, "one");
    deliver(&tree, "two");
    let server = Server::start(&tree, "imap-serve", &[]);
    python(
        r#"
M = login(); ok(M.select("INBOX")); M.logout()
"#,
        &server,
        &tree,
    );
    // The folder has given out the last UIDs there are.
    let list = tree.maildir("bob").join("dovecot-uidlist");
    let text = std::fs::read_to_string(&list).unwrap();
    let bases: Vec<&str> = text
        .lines()
        .skip(1)
        .filter_map(|l| l.split_once(" :"))
        .map(|(_, b)| b)
        .collect();
    assert_eq!(bases.len(), 2, "{text}");
    std::fs::write(
        &list,
        format!(
            "3 V1234 N4294967295\n4294967293 :{}\n4294967294 :{}\n",
            bases[0], bases[1]
        ),
    )
    .unwrap();
    let said = python(
        r#"
A = login()
ok(A.select("INBOX"))
assert A.untagged_responses["UIDVALIDITY"] == [b"1234"], A.untagged_responses
r = ok(A.uid("FETCH", "1:*", "(UID)"))
assert r == [b"1 (UID 4294967293)", b"2 (UID 4294967294)"], r
deliver("three")
# A new session: SELECT works (it used to answer NO ... try again later),
# with a new UIDVALIDITY and the messages numbered from 1 in their order.
p = subprocess.run([os.environ["IMAP"], "--config", os.environ["CONFIG"]],
    input=b"a LOGIN bob@example.test secret\r\nb SELECT INBOX\r\n"
          b"c UID FETCH 1:* (UID BODY.PEEK[HEADER.FIELDS (SUBJECT)])\r\nd LOGOUT\r\n",
    env=dict(os.environ, REMOTE_ADDR="127.0.0.1"),  # a bare pipe is no loopback for passwords
    capture_output=True, timeout=30)
out = p.stdout.decode()
assert "b OK [READ-WRITE]" in out, out
validity = int(re.search(r"\[UIDVALIDITY (\d+)\]", out).group(1))
assert validity > 1234, out
assert "[UIDNEXT 4]" in out, out
subjects = re.findall(r"UID (\d+) BODY\[HEADER.FIELDS \(SUBJECT\)\] \{\d+\}\r\nSubject: (\w+)", out)
assert subjects == [("1", "one"), ("2", "two"), ("3", "three")], (subjects, out)
log = p.stderr.decode()
assert "UIDs used up (next UID 4294967295): new UIDVALIDITY" in log and "(was 1234), 2 messages renumbered" in log, log
# The session that had it selected holds UIDs that mean nothing now: it
# is told so and let go.
try:
    A.noop(); raise SystemExit("stale session not told")
except imaplib.IMAP4.abort as e:
    assert "renumbered" in str(e), e
B = login()
assert ok(B.select("INBOX")) == [b"3"]
assert B.untagged_responses["UIDVALIDITY"] == [str(validity).encode()]
print("ok")
"#,
        &server,
        &tree,
    );
    assert!(said.contains("ok"), "{said}");
}

#[test]
fn starttls_after_login_is_refused_and_the_session_stays_as_it_was() {
    let tree = tree_with_user();
    let server = Server::start(&tree, "imap-serve", &[]);
    // RFC 9051 §6.2.1: STARTTLS only in the not-authenticated state. A TLS
    // session that began logged in would carry the plaintext login over.
    python(
        r#"
s = socket.create_connection(("127.0.0.1", PORT), timeout=10)
f = s.makefile("rb")
assert b"STARTTLS" in f.readline()
s.sendall(b"a LOGIN bob@example.test secret\r\n")
line = f.readline()
assert line.startswith(b"a OK") and b"STARTTLS" not in line, line
s.sendall(b"b STARTTLS\r\n")
assert f.readline() == b"b BAD STARTTLS only before login\r\n"
# Still plaintext, still logged in: a TLS ClientHello now would be junk.
s.sendall(b"c SELECT INBOX\r\n")
lines = []
while not lines or not lines[-1].startswith(b"c "):
    lines.append(f.readline())
assert lines[-1].startswith(b"c OK [READ-WRITE]"), lines
s.sendall(b"d LOGOUT\r\n")
print("ok")
"#,
        &server,
        &tree,
    );
}

#[test]
fn symlinked_folders_and_message_files_inside_a_maildir_are_not_followed() {
    let tree = tree_with_user();
    tree.add_user("carol@example.test");
    let secret = b"From: carol@example.test\nSubject: carol's secret\n\nthe combination is 1234\n";
    assert!(
        tree.inject(&["carol@example.test"], secret)
            .status
            .success()
    );
    deliver(&tree, "mine");
    let (bob, carol) = (tree.maildir("bob"), tree.maildir("carol"));
    let carols = crate::util::maildir_files(&carol);
    assert_eq!(carols.len(), 1);
    let link = |target: &std::path::Path, at: std::path::PathBuf| {
        std::os::unix::fs::symlink(target, at).unwrap()
    };
    // ln -s ../carol bob/.Evil; a folder whose cur/ is carol's; a message
    // file linked to carol's message, in new/ and in cur/.
    link(std::path::Path::new("../carol"), bob.join(".Evil"));
    for sub in ["new", "tmp"] {
        std::fs::create_dir_all(bob.join(".Half").join(sub)).unwrap();
    }
    link(
        std::path::Path::new("../../carol/cur"),
        bob.join(".Half/cur"),
    );
    link(&carols[0], bob.join("new/1700000000.evil.host"));
    link(&carols[0], bob.join("cur/1700000001.evil.host:2,S"));
    let server = Server::start(&tree, "imap-serve", &[]);
    python(
        r#"
M = login()
names = b" ".join(ok(M.list()))
assert b"Evil" not in names and b"Half" not in names, names
for folder in ["Evil", "Half"]:
    typ, data = M.select(folder)
    assert typ == "NO" and b"[NONEXISTENT]" in data[0], (folder, typ, data)
    typ, data = M.status(folder, "(MESSAGES)")
    assert typ == "NO" and b"[NONEXISTENT]" in data[0], (folder, typ, data)
    typ, data = M.append(folder, None, None, b"Subject: planted\r\n\r\nx\r\n")
    assert typ == "NO" and b"[TRYCREATE]" in data[0], (folder, typ, data)
typ, data = M.create("Evil")
assert typ == "NO" and data[0] == b"[CANNOT] a symlink is in the way (none is followed in a mailbox)", data
typ, data = M.delete("Evil")
assert typ == "NO" and b"[NONEXISTENT]" in data[0], data
# INBOX holds bob's own message only: the linked files get no UID.
assert ok(M.select("INBOX")) == [b"1"]
body = ok(M.fetch("1:*", "(BODY.PEEK[])"))
assert b"mine" in body[0][1] and b"combination" not in repr(body).encode(), body
typ, data = M.copy("1", "Evil")
assert typ == "NO" and b"[TRYCREATE]" in data[0], data
# A message swapped for a symlink after it got its UID is not served.
import glob
mine = glob.glob(os.environ["MAILDIR"] + "/cur/*mine*") or [p for p in glob.glob(os.environ["MAILDIR"] + "/cur/*") if "evil" not in p]
assert len(mine) == 1, mine
carols = [p for p in glob.glob(os.environ["MAILDIR"] + "/../carol/cur/*") + glob.glob(os.environ["MAILDIR"] + "/../carol/new/*")]
os.symlink(os.path.realpath(carols[0]), mine[0] + ".tmp")
os.rename(mine[0] + ".tmp", mine[0])
typ, data = M.fetch("1", "(BODY[])")
assert b"combination" not in repr(data).encode(), data
# Not served, and no failure either: it reads as expunged elsewhere.
assert typ == "OK" and data == [None], (typ, data)
M.logout()
print("ok")
"#,
        &server,
        &tree,
    );
    // Carol's mailbox is as it was: nothing appended, copied or moved.
    assert_eq!(crate::util::maildir_files(&carol), carols);
    assert!(!carol.join("maildirfolder").exists());
}

/// Python for the two tests below: `sizes(n)` is message n's
/// (RFC822.SIZE, BODY[]) from IMAP and (LIST size, RETR octets with the
/// dot-stuffing undone) from POP3, the real pop3-serve run inetd-style.
pub(crate) const ONE_WIRE_FORM: &str = r#"
def sizes(n):
    M = login()
    ok(M.select("INBOX", readonly=True))
    r = ok(M.fetch(str(n), "(RFC822.SIZE BODY.PEEK[])"))
    M.logout()
    imap = (int(re.search(r"RFC822\.SIZE (\d+)", r[0][0].decode()).group(1)), r[0][1])
    pop = subprocess.run([os.environ["POP3"], "--config", os.environ["CONFIG"]],
        input=f"USER bob@example.test\r\nPASS secret\r\nLIST {n}\r\nRETR {n}\r\nQUIT\r\n".encode(),
        env=dict(os.environ, REMOTE_ADDR="127.0.0.1"), capture_output=True, timeout=20).stdout
    m = re.search(rb"\+OK %d (\d+)\r\n\+OK[^\r\n]*\r\n" % n, pop)
    assert m, pop
    sent = pop[m.end():]
    sent = sent[:sent.index(b"\r\n.\r\n") + 2]
    lines = [line + b"\n" for line in sent.split(b"\n")[:-1]]
    kept = b"".join(line[1:] if line.startswith(b".") else line for line in lines)
    return imap, (int(m.group(1)), kept)
def one_wire_form(n, expected):
    (size, body), (listed, retr) = sizes(n)
    assert body == expected, ("IMAP BODY[]", body, expected)
    assert size == len(body), ("RFC822.SIZE", size, len(body))
    assert retr == body, ("POP3 RETR", retr, body)
    assert listed == size, ("POP3 LIST", listed, size)
"#;

/// A message appended with a CR before a CRLF is stored with that CR
/// before its LF (delivery writes CRLF as LF and keeps a bare CR), and
/// `,W=` counts that pair as the line end. IMAP used to send it as CR CR LF,
/// one octet more than the RFC822.SIZE it announced and than POP3 sends.
#[test]
fn imap_body_matches_rfc822_size_and_pop3_when_a_cr_preceded_a_crlf() {
    let tree = tree_with_user();
    let server = Server::start(&tree, "imap-serve", &[]);
    let said = python(
        &format!(
            r#"{ONE_WIRE_FORM}
M = login()
# imaplib's append() turns a bare CR into CRLF: send the literal as it is.
M.literal = b"Subject: cr\r\n\r\nbare\r\r\nend\r\n"
ok(M._simple_command("APPEND", "INBOX"))
M.logout()
one_wire_form(1, b"Subject: cr\r\n\r\nbare\r\nend\r\n")
print("agreed")
"#
        ),
        &server,
        &tree,
    );
    assert!(said.contains("agreed"), "{said}");
}

/// A message file put in the maildir by something other than delivery
/// (a migration, a restore), with a CRLF inside, no line end after its last
/// line and no `,W=` in its name. POP3 sent the CRLF as it is and ended the
/// last line; IMAP sent CR CR LF and no last line end, so the two servers
/// gave the one message two sizes and two texts.
#[test]
fn imap_and_pop3_send_one_text_of_a_file_without_a_last_line_end() {
    let tree = tree_with_user();
    let new = tree.maildir("bob").join("new");
    std::fs::create_dir_all(&new).unwrap();
    std::fs::write(
        new.join("1700000000.M1P1.restored.test"),
        b"Subject: restored\n\nline\r\nno end",
    )
    .unwrap();
    let server = Server::start(&tree, "imap-serve", &[]);
    let said = python(
        &format!(
            r#"{ONE_WIRE_FORM}
one_wire_form(1, b"Subject: restored\r\n\r\nline\r\nno end\r\n")
print("agreed")
"#
        ),
        &server,
        &tree,
    );
    assert!(said.contains("agreed"), "{said}");
}
