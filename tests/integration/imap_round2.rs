//! imap-serve, round 2 (issue 15): each exchange a conformance or stress
//! run failed on, replayed with Python's imaplib or a raw socket.

use crate::imap_serve::{ONE_WIRE_FORM, deliver, python, tree_with_message_size, tree_with_user};
use crate::util::Server;

/// Python for a raw-socket exchange: `s` is a connection logged in as
/// bob, and `upto(tag)` reads everything up to the line tagged `tag`
/// (literals whole, whatever they hold).
pub(crate) const RAW: &str = r#"
s = socket.create_connection(("127.0.0.1", PORT))
f = s.makefile("rb")
def upto(tag):
    out = b""
    while True:
        line = f.readline()
        assert line, out
        out += line
        m = re.search(rb"[~]?\{(\d+)\}\r\n$", line)
        if m:
            out += f.read(int(m.group(1)))
        if line.startswith(tag + b" "):
            return out
f.readline()
s.sendall(b"a LOGIN bob@example.test secret\r\n"); assert b"a OK" in upto(b"a")
"#;

/// Bob's mailbox with a message for each of `subjects`, imap-serve on it,
/// and `script` run against it with the Python prelude of `imap_serve`.
pub(crate) fn replay(subjects: &[&str], script: &str) -> String {
    let tree = tree_with_user();
    for subject in subjects {
        deliver(&tree, subject);
    }
    let server = Server::start(&tree, "imap-serve", &[]);
    python(script, &server, &tree)
}

/// Item 1: an EXPUNGE held back during a FETCH by sequence number is sent
/// at the next command that allows it, and FETCH/STORE of the ghost
/// succeed meanwhile instead of failing with EXPUNGEISSUED.
#[test]
fn held_back_expunges_are_sent_at_the_next_command_that_allows_them() {
    replay(
        &["one", "two", "three"],
        r#"
A = login(); B = login()
assert ok(A.select("INBOX")) == [b"3"]
assert ok(B.select("INBOX")) == [b"3"]
ok(A.store("1", "+FLAGS.SILENT", "\\Deleted"))
assert ok(A.expunge()) == [b"1"]
# A FETCH by sequence number must not report the expunge...
B.untagged_responses.clear()
r = ok(B.fetch("1:*", "(UID)"))
assert "EXPUNGE" not in B.untagged_responses, B.untagged_responses
assert len(r) == 3, r
# ...and touching the ghost is no failure.
r = B.fetch("1", "(BODY.PEEK[])")
assert r[0] == "OK", r
r = B.store("1", "+FLAGS", "(\\Seen)")
assert r[0] == "OK", r
assert "EXPUNGE" not in B.untagged_responses, B.untagged_responses
# The folder has not moved since; NOOP still delivers what was held back.
ok(B.noop())
assert B.untagged_responses.pop("EXPUNGE") == [b"1"], B.untagged_responses
assert ok(B.fetch("1:*", "(UID)")) == [b"1 (UID 2)", b"2 (UID 3)"]
# The same through CHECK, and through a UID command.
for cmd in ["CHECK", "UID"]:
    ok(A.store("1", "+FLAGS.SILENT", "\\Deleted")); ok(A.expunge())
    B.untagged_responses.clear()
    ok(B.fetch("1", "(FLAGS)"))
    assert "EXPUNGE" not in B.untagged_responses
    if cmd == "CHECK":
        ok(B.check())
    else:
        ok(B.uid("FETCH", "1:*", "(FLAGS)"))
    assert B.untagged_responses.pop("EXPUNGE") == [b"1"], (cmd, B.untagged_responses)
print("held-back ok")
"#,
    );
}

/// Round 2, item 1 (COPY/MOVE): as in Dovecot, a COPY or MOVE naming a
/// message another session expunged copies nothing and answers NO
/// [EXPUNGEISSUED], whether all or some of the set are gone; the
/// destination is left as it was; after NOOP the rest copies with OK.
#[test]
fn copy_and_move_of_messages_expunged_elsewhere_are_all_or_none() {
    replay(
        &["one", "two", "three"],
        r#"
A = login(); B = login()
ok(A.select("INBOX")); ok(B.select("INBOX"))
def trash():
    return int(re.search(r"MESSAGES (\d+)", ok(A.status("Trash", "(MESSAGES)"))[0].decode()).group(1))
def uids(M):
    return [int(re.search(rb"UID (\d+)", x).group(1)) for x in ok(M.uid("FETCH", "1:*", "(UID)"))]
for cmd in ["COPY", "MOVE"]:
    for gone in [2, 1]:
        # B sees the last two messages; A expunges `gone` of them.
        ok(B.noop())
        last = uids(B)[-2:]
        ok(A.uid("STORE", ",".join(map(str, last[:gone])), "+FLAGS.SILENT", "\\Deleted"))
        ok(A.uid("EXPUNGE", ",".join(map(str, last[:gone]))))
        n = len(uids(A)) + gone
        typ, data = B._simple_command(cmd, "%d:%d" % (n - 1, n), "Trash")
        assert typ == "NO" and b"[EXPUNGEISSUED]" in data[0], (cmd, gone, typ, data)
        assert trash() == 0, (cmd, gone)
        # What was not expunged stayed where it was.
        assert uids(A)[-1] == last[-1] or gone == 2, (cmd, uids(A), last)
        ok(A.append("INBOX", None, None, b"Subject: more\r\n\r\nx\r\n"))
        ok(A.append("INBOX", None, None, b"Subject: more\r\n\r\nx\r\n"))
# A UID MOVE of a ghost fails the same way and reports the EXPUNGE at once.
ok(B.noop())
ghost = uids(B)[-1]
ok(A.uid("STORE", str(ghost), "+FLAGS.SILENT", "\\Deleted")); ok(A.uid("EXPUNGE", str(ghost)))
B.untagged_responses.clear()
typ, data = B.uid("MOVE", str(ghost), "Trash")
assert typ == "NO" and b"[EXPUNGEISSUED]" in data[0], (typ, data)
assert B.untagged_responses.pop("EXPUNGE") == [str(len(uids(A)) + 1).encode()], B.untagged_responses
# Once told, the client copies the rest.
typ, data = B.copy("1", "Trash")
assert typ == "OK" and b"[COPYUID " in data[0], (typ, data)
assert trash() == 1
"#,
    );
}

/// Round 2, item 4: STORE over many messages renames them in one pass,
/// still starting from the flags on disk: a flag another session set
/// after our last look is kept, and a message it expunged is skipped
/// without failing the command.
#[test]
fn a_store_over_many_messages_keeps_flags_set_elsewhere() {
    let subjects: Vec<String> = (0..40).map(|i| format!("m{i}")).collect();
    let subjects: Vec<&str> = subjects.iter().map(String::as_str).collect();
    replay(
        &subjects,
        r#"
A = login(); B = login()
ok(A.select("INBOX")); ok(B.select("INBOX"))
ok(A.store("5", "+FLAGS", "(\\Flagged)"))
ok(A.store("9", "+FLAGS.SILENT", "(\\Deleted)")); ok(A.expunge())
r = ok(B.store("1:40", "+FLAGS", "(\\Seen)"))
assert len(r) == 39, r
assert any(x.startswith(b"5 (FLAGS (") and b"\\Flagged" in x and b"\\Seen" in x for x in r), r
def flags_of(M):
    ok(M.noop()); M.untagged_responses.clear()
    return ok(M.fetch("1:*", "(FLAGS)"))
flags = flags_of(A)
assert len(flags) == 39 and all(b"\\Seen" in x for x in flags), flags
assert b"\\Flagged" in flags[4], flags
r = ok(B.store("1:*", "-FLAGS.SILENT", "(\\Seen)"))
assert all(b"\\Seen" not in x for x in flags_of(A))
"#,
    );
}

/// Round 2, item 5: CONTEXT=SEARCH and CONTEXT=SORT (RFC 5267): a SEARCH
/// or SORT with RETURN (UPDATE) is told how its result changes as
/// messages arrive, change flags or are expunged (by another session
/// here), REMOVEFROM before the EXPUNGE, ADDTO after EXISTS, until
/// CANCELUPDATE.
#[test]
fn search_and_sort_contexts_are_updated_until_cancelled() {
    replay(
        &["c", "a", "b"],
        r#"
B = login(); ok(B.select("INBOX"))
s = socket.create_connection(("127.0.0.1", PORT)); f = s.makefile("rb")
def upto(tag):
    lines = []
    while True:
        line = f.readline().decode()
        assert line, lines
        lines.append(line.rstrip("\r\n"))
        if line.startswith(tag + " "):
            return lines
f.readline()
s.sendall(b"a LOGIN bob@example.test secret\r\n"); caps = upto("a")[-1]
assert "CONTEXT=SEARCH" in caps and "CONTEXT=SORT" in caps, caps
s.sendall(b"b SELECT INBOX\r\n"); upto("b")
s.sendall(b"s1 UID SEARCH RETURN (UPDATE) UNSEEN\r\n")
assert '* ESEARCH (TAG "s1") UID ALL 1:3' in upto("s1")
s.sendall(b"s2 UID SORT RETURN (CONTEXT UPDATE ALL) (SUBJECT) UTF-8 ALL\r\n")
assert '* ESEARCH (TAG "s2") UID ALL 2:3,1' in upto("s2")
s.sendall(b"s3 SEARCH RETURN (UPDATE COUNT) ALL\r\n")
assert '* ESEARCH (TAG "s3") COUNT 3' in upto("s3")
# A new message: in all three, at its place in the sorted one.
deliver("aa")
s.sendall(b"n1 NOOP\r\n"); r = upto("n1")
exists = r.index("* 4 EXISTS")
assert r.index('* ESEARCH (TAG "s1") UID ADDTO (0 4)') > exists, r
assert r.index('* ESEARCH (TAG "s2") UID ADDTO (2 4)') > exists, r
assert r.index('* ESEARCH (TAG "s3") ADDTO (0 4)') > exists, r
# Seen elsewhere: out of the UNSEEN search only.
ok(B.noop()); ok(B.uid("STORE", "2", "+FLAGS", "(\\Seen)"))
s.sendall(b"n2 NOOP\r\n"); r = upto("n2")
assert '* ESEARCH (TAG "s1") UID REMOVEFROM (0 2)' in r, r
assert not any("s2" in l or "s3" in l for l in r), r
# Expunged elsewhere: out of every result, before the EXPUNGE.
ok(B.uid("STORE", "1", "+FLAGS.SILENT", "(\\Deleted)")); ok(B.expunge())
s.sendall(b"n3 NOOP\r\n"); r = upto("n3")
gone = r.index("* 1 EXPUNGE")
assert r.index('* ESEARCH (TAG "s1") UID REMOVEFROM (0 1)') < gone, r
assert r.index('* ESEARCH (TAG "s2") UID REMOVEFROM (0 1)') < gone, r
assert r.index('* ESEARCH (TAG "s3") REMOVEFROM (0 1)') < gone, r
# Cancelled: no more updates for s1 and s3; s2 goes on.
s.sendall(b'c1 CANCELUPDATE "s1" "s3"\r\n'); assert upto("c1")[-1].startswith("c1 OK"), r
s.sendall(b'c2 CANCELUPDATE "s1"\r\n'); assert upto("c2")[-1].startswith("c2 BAD"), r
deliver("ab")
s.sendall(b"n4 NOOP\r\n"); r = upto("n4")
assert '* ESEARCH (TAG "s2") UID ADDTO (3 5)' in r, r
assert not any("s1" in l or "s3" in l for l in r), r
# A new SELECT ends them all.
s.sendall(b"b2 SELECT INBOX\r\n"); upto("b2")
deliver("ac")
s.sendall(b"n5 NOOP\r\n"); r = upto("n5")
assert not any("ESEARCH" in l for l in r), r
"#,
    );
}

/// Round 2, item 6: CATENATE (RFC 4469): APPEND puts a message together
/// from literals and IMAP URLs (RFC 5092: absolute, `/mailbox...` and
/// `;UID=` relative to the selected mailbox, SECTION and PARTIAL), in a
/// MULTIAPPEND too; a URL naming nothing is `NO [BADURL url]` and a
/// result over limits.message_size `NO [TOOBIG]`, with nothing stored.
#[test]
fn catenate_builds_messages_from_literals_and_urls() {
    let tree = tree_with_message_size("3000");
    deliver(&tree, "source");
    let server = Server::start(&tree, "imap-serve", &[]);
    let said = python(
        r#"
M = login()
caps = ok(M.capability())[0].decode()
assert " CATENATE" in caps, caps
draft = (b"Subject: draft\r\nMIME-Version: 1.0\r\nContent-Type: multipart/mixed; boundary=x\r\n\r\n"
         b"--x\r\nContent-Type: text/plain\r\n\r\nfirst part\r\n--x--\r\n")
ok(M.append("Drafts", None, None, draft))
v = int(re.search(r"UIDVALIDITY (\d+)", ok(M.status("Drafts", "(UIDVALIDITY)"))[0].decode()).group(1))
ok(M.select("INBOX"))
src = ok(M.fetch("1", "(BODY.PEEK[])"))[0][1]
head = src[:src.index(b"\r\n\r\n") + 4]
s = socket.create_connection(("127.0.0.1", PORT)); f = s.makefile("rb"); f.readline()
def cmd(data):
    s.sendall(data)
    while True:
        line = f.readline()
        assert line, data
        if line.startswith(b"+ "):
            continue
        if line.startswith(data.split(b" ")[0] + b" "):
            return line.decode()
cmd(b"a LOGIN bob@example.test secret\r\n"); cmd(b"b SELECT INBOX\r\n")
tail = b"new text\r\n"
r = cmd(b'c APPEND Sent CATENATE (URL "/INBOX/;UID=1/;SECTION=HEADER" TEXT {%d+}\r\n' % len(tail) + tail
        + b' URL "imap://bob%40example.test@localhost/Drafts;UIDVALIDITY=' + str(v).encode() + b'/;UID=1/;SECTION=1" URL ";UID=1/;PARTIAL=0.7")'
        + b' CATENATE (TEXT {4+}\r\nx: y URL "/Drafts/;UID=1/;section=header")\r\n')
assert re.match(r"c OK \[APPENDUID \d+ 1:2\]", r), r
ok(M.select("Sent"))
got = [x[1] for x in ok(M.fetch("1:2", "(BODY.PEEK[])")) if isinstance(x, tuple)]
# (A last line without its line end gets one, as for any message.)
assert got[0] == head + tail + b"first part" + src[:7] + b"\r\n", got[0]
assert got[1] == b"x: y" + draft[:draft.index(b"\r\n\r\n") + 4], got[1]
# A URL that names nothing fails the command: nothing of it is stored.
for url in [b"/INBOX/;UID=99", b"/INBOX;UIDVALIDITY=" + str(v + 1).encode() + b"/;UID=1", b"/Nowhere/;UID=1",
            b"imap://carol%40example.test@localhost/INBOX/;UID=1", b"/INBOX/;UID=1/;SECTION=7", b"/INBOX/;UID=1/;URLAUTH=x"]:
    r = cmd(b'd APPEND Sent CATENATE (TEXT {2+}\r\nx\n) CATENATE (URL "' + url + b'")\r\n')
    assert r.startswith("d NO [BADURL " + url.decode() + "] "), (url, r)
# Over limits.message_size (3000) in all: TOOBIG.
many = b" ".join([b'URL "/INBOX/;UID=1"'] * 20)
r = cmd(b"e APPEND Sent CATENATE (" + many + b")\r\n")
assert r.startswith("e NO [TOOBIG]"), r
assert ok(M.status("Sent", "(MESSAGES)"))[0].decode().endswith("(MESSAGES 2)")
print("catenated")
"#,
        &server,
        &tree,
    );
    assert!(said.contains("catenated"), "{said}");
}

/// Item 2: a folder deleted and created again at once gets a UIDVALIDITY
/// it never had, so a client's cached UIDs are not taken for new ones.
#[test]
fn a_recreated_folder_never_reuses_a_uidvalidity() {
    replay(
        &[],
        r#"
M = login()
seen = set()
for round in range(3):
    ok(M.create("Again"))
    ok(M.append("Again", None, None, b"Subject: x\r\n\r\nx\r\n"))
    st = ok(M.status("Again", "(UIDVALIDITY UIDNEXT)"))[0].decode()
    v = int(re.search(r"UIDVALIDITY (\d+)", st).group(1))
    assert "UIDNEXT 2" in st, st
    assert v not in seen, (v, seen)
    seen.add(v)
    ok(M.delete("Again"))
"#,
    );
}

/// Item 3: message files that other MDAs (or a migration) left with CRLF
/// line ends, or a mix, are served with one CR per line end: sizes,
/// sections and BODYSTRUCTURE agree with each other and with POP3.
#[test]
fn crlf_and_mixed_maildir_files_are_served_as_they_are() {
    let tree = tree_with_user();
    let cur = tree.maildir("bob").join("cur");
    std::fs::create_dir_all(&cur).unwrap();
    let crlf = b"Subject: crlf\r\nFrom: a@b.test\r\n\r\nline one\r\nline two\r\n";
    let mixed = b"Subject: mixed\r\nFrom: a@b.test\n\nline one\r\nline two\n";
    let lf = b"Subject: lf\nFrom: a@b.test\n\nline one\nline two\n";
    // As Dovecot names them (W= the size with CRLF), as a bare migration
    // does (no sizes at all), and as delivery does.
    std::fs::write(
        cur.join(format!(
            "1700000001.M1P1.other.test,S={0},W={0}:2,",
            crlf.len()
        )),
        crlf,
    )
    .unwrap();
    std::fs::write(cur.join("1700000002.M1P1.migrated.test:2,"), mixed).unwrap();
    std::fs::write(
        cur.join(format!(
            "1700000003.M1P1.here.test,S={},W={}:2,",
            lf.len(),
            lf.len() + 5
        )),
        lf,
    )
    .unwrap();
    let server = Server::start(&tree, "imap-serve", &[]);
    let said = python(
        &format!(
            r#"{ONE_WIRE_FORM}
wire = b"Subject: %s\r\nFrom: a@b.test\r\n\r\nline one\r\nline two\r\n"
M = login()
ok(M.select("INBOX", readonly=True))
for n, name in [(1, b"crlf"), (2, b"mixed"), (3, b"lf")]:
    expected = wire % name
    header = expected[:expected.index(b"\r\n\r\n") + 4]
    r = ok(M.fetch(str(n), "(RFC822.SIZE BODYSTRUCTURE BODY.PEEK[HEADER] BODY.PEEK[TEXT] BODY.PEEK[])"))
    parts = {{}}
    for item in r:
        if isinstance(item, tuple):
            key = re.search(rb"(BODY\[[A-Z]*\]) \{{\d+\}}$", item[0]).group(1)
            parts[key] = item[1]
    text = b"".join(i[0] if isinstance(i, tuple) else i for i in r).decode()
    assert parts[b"BODY[HEADER]"] == header, (name, parts)
    assert parts[b"BODY[TEXT]"] == b"line one\r\nline two\r\n", (name, parts)
    assert parts[b"BODY[]"] == expected, (name, parts)
    assert "RFC822.SIZE %d " % len(expected) in text, (name, text)
    assert '"7bit" 20 2' in text.lower(), (name, text)
    one_wire_form(n, expected)
print("agreed")
"#
        ),
        &server,
        &tree,
    );
    assert!(said.contains("agreed"), "{said}");
}

/// A header is read a few kilobytes at a time up to its end: headers
/// that end just before, across and just after a read's edge, with LF and
/// CRLF line ends, and one several reads long, each come back whole and
/// alone in BODY[HEADER] and ENVELOPE, from a session that never saw them.
#[test]
fn headers_ending_at_any_point_of_a_read_come_back_whole() {
    let tree = tree_with_user();
    let cur = tree.maildir("bob").join("cur");
    std::fs::create_dir_all(&cur).unwrap();
    let mut n = 0;
    for eol in ["\n", "\r\n"] {
        for header_len in (8186..8198).chain([20_000, 70_000]) {
            n += 1;
            let first = format!("Subject: s{n}{eol}X-Pad: ");
            let pad = header_len - first.len() - 2 * eol.len();
            let header = format!("{first}{}{eol}{eol}", "a".repeat(pad));
            assert_eq!(header.len(), header_len);
            let message = format!("{header}body {n}{eol}").into_bytes();
            let lines = message.iter().filter(|&&b| b == b'\n').count();
            let crs = message.iter().filter(|&&b| b == b'\r').count();
            // The size in CRLF form, as the name states it (Dovecot's W=).
            let wire = message.len() + lines - crs;
            std::fs::write(
                cur.join(format!(
                    "17000{n:05}.M1P1.here.test,S={},W={wire}:2,",
                    message.len()
                )),
                &message,
            )
            .unwrap();
        }
    }
    let server = Server::start(&tree, "imap-serve", &[]);
    let said = python(
        &format!(
            r#"
M = login()
typ, data = M.select("INBOX", readonly=True)
count = int(data[0])
assert count == {n}, data
for i in range(1, count + 1):
    r = ok(M.fetch(str(i), "(ENVELOPE BODY.PEEK[HEADER])"))
    head = r[0][0] + b"".join(x if isinstance(x, bytes) else b"" for x in r[1:])
    header = r[0][1]
    assert header.startswith(b"Subject: s"), (i, header[:40])
    assert header.endswith(b"a\r\n\r\n"), (i, header[-20:])
    assert b"body" not in header, (i, header[-40:])
    subject = header.split(b"\r\n")[0][len(b"Subject: "):]
    assert b'"' + subject + b'"' in head, (i, head[:200])
print("whole")
"#
        ),
        &server,
        &tree,
    );
    assert!(said.contains("whole"), "{said}");
}

/// Item 4: an empty Sender or Reply-To is From in the ENVELOPE, and a
/// source route is kept in the address's adl field.
#[test]
fn envelope_falls_back_to_from_and_keeps_source_routes() {
    replay(
        &[],
        r#"
M = login()
ok(M.append("INBOX", None, None, b"From: Ann <ann@a.test>\r\nSender:\r\nReply-To:  \r\nTo: <@relay.test,@hop.test:bob@b.test>\r\nSubject: s\r\n\r\nx\r\n"))
ok(M.select("INBOX"))
env = ok(M.fetch("1", "(ENVELOPE)"))[0].decode()
ann = '(("Ann" NIL "ann" "a.test"))'
assert env.count(ann) == 3, env
assert '((NIL "@relay.test,@hop.test" "bob" "b.test"))' in env, env
"#,
    );
}

/// Item 5: APPEND of a `~{n}` literal keeps the bytes as given (a binary
/// part's bare LFs are not made CRLF), and `BODY[n]` of a part holding a
/// NUL is sent base64-encoded, never as a literal with a NUL in it.
#[test]
fn binary_append_keeps_bytes_and_body_of_a_nul_part_is_encoded() {
    replay(
        &[],
        &[
            RAW,
            r#"
import base64
part = b"line1\nline2\x00x\n"
msg = (b"Subject: bin\r\nMIME-Version: 1.0\r\nContent-Type: multipart/mixed; boundary=b\r\n\r\n"
       b"--b\r\nContent-Type: application/octet-stream\r\nContent-Transfer-Encoding: binary\r\n\r\n"
       + part + b"\r\n--b--\r\n")
s.sendall(b"b APPEND INBOX ~{%d+}\r\n" % len(msg) + msg + b"\r\n")
r = upto(b"b"); assert b"b OK" in r, r
s.sendall(b"c SELECT INBOX\r\n"); upto(b"c")
s.sendall(b"d FETCH 1 (BINARY.SIZE[1] BINARY.PEEK[1] RFC822.SIZE)\r\n")
r = upto(b"d"); assert b"d OK" in r, r
assert b"BINARY.SIZE[1] %d" % len(part) in r, r
assert b"BINARY[1] ~{%d}\r\n" % len(part) + part in r, r
# BODY[] and RFC822.SIZE are the wire form, as POP3 sends it: a CR
# before each bare LF (round 2, item 3).
wire = re.sub(rb"(?<!\r)\n", b"\r\n", msg)
assert b"RFC822.SIZE %d" % len(wire) in r, r
s.sendall(b"e FETCH 1 (BODY.PEEK[1] BODY.PEEK[])\r\n")
r = upto(b"e"); assert b"e OK" in r, r
body1 = r[r.index(b"BODY[1] {"):]
n = int(re.match(rb"BODY\[1\] \{(\d+)\}\r\n", body1).group(1))
data = body1[body1.index(b"}\r\n") + 3:][:n]
assert b"\x00" not in data, data
assert base64.b64decode(data) == part, data
whole = r[r.index(b"BODY[] "):]
assert b"BODY[] {%d}\r\n" % len(wire) + wire.replace(b"\x00", b"\x80") in whole, whole
"#,
        ]
        .concat(),
    );
}

/// Round 2, item 3: a message APPENDed as a `~{n}` literal with bare LFs
/// is stored as given, and IMAP (RFC822.SIZE, BODY[]) and POP3 (LIST,
/// RETR) send it alike: the wire form, a CR before each bare LF, as
/// Dovecot does. BINARY still gives the part as stored.
#[test]
fn a_binary_append_with_bare_lfs_is_one_message_for_imap_and_pop3() {
    let tree = tree_with_user();
    let server = Server::start(&tree, "imap-serve", &[]);
    let said = python(
        &[
            ONE_WIRE_FORM,
            RAW,
            r#"
part = b"one\ntwo\r\nthree\n"
msg = (b"Subject: lf\r\nMIME-Version: 1.0\r\nContent-Type: multipart/mixed; boundary=b\r\n\r\n"
       b"--b\r\nContent-Type: application/octet-stream\r\nContent-Transfer-Encoding: binary\r\n\r\n"
       + part + b"\r\n--b--\r\n")
s.sendall(b"b APPEND INBOX ~{%d+}\r\n" % len(msg) + msg + b"\r\n")
r = upto(b"b"); assert b"b OK" in r, r
s.sendall(b"c SELECT INBOX\r\n"); upto(b"c")
s.sendall(b"d FETCH 1 (BINARY.SIZE[1] BINARY.PEEK[1])\r\n")
r = upto(b"d"); assert b"d OK" in r, r
assert b"BINARY.SIZE[1] %d " % len(part) in r and b"BINARY[1] {%d}\r\n" % len(part) + part in r, r
stored = os.listdir(os.environ["MAILDIR"] + "/cur")
assert len(stored) == 1 and open(os.environ["MAILDIR"] + "/cur/" + stored[0], "rb").read() == msg, stored
one_wire_form(1, re.sub(rb"(?<!\r)\n", b"\r\n", msg))
print("agreed")
"#,
        ]
        .concat(),
        &server,
        &tree,
    );
    assert!(said.contains("agreed"), "{said}");
}

/// Round 2, item 2: `BODY[]` of a message holding NUL bytes is a plain
/// literal without NUL (RFC 9051 §4.3); as Dovecot does, each NUL is sent
/// as 0x80, so the length is RFC822.SIZE and partial fetches line up.
/// BINARY[] still gives the bytes as they are, in a literal8.
#[test]
fn body_of_a_message_with_nul_is_a_literal_without_nul() {
    replay(
        &[],
        &[RAW, r#"
msg = b"Subject: nul\x00here\r\n\r\nbody \x00 one\r\n\x00\r\n"
sent = msg.replace(b"\x00", b"\x80")
s.sendall(b"b APPEND INBOX ~{%d+}\r\n" % len(msg) + msg + b"\r\n")
r = upto(b"b"); assert b"b OK" in r, r
s.sendall(b"c SELECT INBOX\r\n"); upto(b"c")
s.sendall(b"d FETCH 1 (RFC822.SIZE BODY.PEEK[] BODY.PEEK[HEADER] BODY.PEEK[TEXT] BODY.PEEK[]<20.5> RFC822)\r\n")
r = upto(b"d"); assert b"d OK" in r, r
assert b"\x00" not in r, r
assert b"RFC822.SIZE %d " % len(msg) in r, r
assert b"BODY[] {%d}\r\n" % len(msg) + sent in r, r
head = sent[:sent.index(b"\r\n\r\n") + 4]
assert b"BODY[HEADER] {%d}\r\n" % len(head) + head in r, r
assert b"BODY[TEXT] {%d}\r\n" % (len(sent) - len(head)) + sent[len(head):] in r, r
assert b"BODY[]<20> {5}\r\n" + sent[20:25] in r, r
assert b"RFC822 {%d}\r\n" % len(msg) + sent in r, r
s.sendall(b"e FETCH 1 (BINARY.PEEK[])\r\n")
r = upto(b"e"); assert b"e OK" in r, r
assert b"BINARY[] ~{%d}\r\n" % len(msg) + msg in r, r
"#]
        .concat(),
    );
}

/// Item 6: the first FETCH MODSEQ of a session announces HIGHESTMODSEQ,
/// and SEARCH RETURN (MIN) / (MAX) give the mod-sequence of the message
/// they return, not the highest of all matches.
#[test]
fn condstore_announces_highestmodseq_and_min_max_carry_their_own_modseq() {
    replay(
        &["one", "two", "three"],
        r#"
M = login()
ok(M.select("INBOX"))
M.untagged_responses.clear()
r = ok(M.fetch("1:3", "(MODSEQ)"))
assert M.untagged_responses.get("HIGHESTMODSEQ"), M.untagged_responses
ok(M.store("3", "+FLAGS", "(\\Flagged)"))
r = ok(M.fetch("1:3", "(MODSEQ)"))
mods = [int(re.search(rb"MODSEQ \((\d+)\)", x).group(1)) for x in r]
assert mods[2] > mods[0], mods
typ, data = M._simple_command("SEARCH", "RETURN", "(MIN)", "MODSEQ", "1")
es = M.untagged_responses.pop("ESEARCH")[0].decode()
assert es.endswith("MIN 1 MODSEQ %d" % mods[0]), (es, mods)
typ, data = M._simple_command("SEARCH", "RETURN", "(MAX)", "MODSEQ", "1")
es = M.untagged_responses.pop("ESEARCH")[0].decode()
assert es.endswith("MAX 3 MODSEQ %d" % mods[2]), (es, mods)
typ, data = M._simple_command("SEARCH", "RETURN", "(MIN COUNT)", "MODSEQ", "1")
es = M.untagged_responses.pop("ESEARCH")[0].decode()
assert es.endswith("MODSEQ %d" % max(mods)), (es, mods)
"#,
    );
}

/// Item 7: DELETE keeps the subscription, which LIST (SUBSCRIBED) shows
/// as \NonExistent; CHILDINFO goes with every name returned that has a
/// subscribed descendant (RFC 5258 §3.5), and only with RECURSIVEMATCH.
#[test]
fn list_extended_keeps_subscriptions_of_deleted_folders_and_childinfo() {
    replay(
        &[],
        r#"
M = login()
for n in ["Gone", "P", "P.kid", "Q", "Q.kid"]:
    ok(M.create(n))
for n in ["Gone", "P.kid", "Q", "Q.kid"]:
    ok(M.subscribe(n))
ok(M.delete("Gone"))
def lst(*args):
    typ, data = M._simple_command("LIST", *args)
    assert typ == "OK", (typ, data)
    return sorted(l.decode() for l in M.untagged_responses.pop("LIST", []))
r = lst("(SUBSCRIBED)", '""', "Gone")
assert len(r) == 1 and set(r[0].split(")")[0][1:].split()) == {"\\Subscribed", "\\NonExistent"}, r
# Plain LIST does not show the deleted name.
assert lst('""', "Gone") == [], lst('""', "Gone")
r = lst("(SUBSCRIBED RECURSIVEMATCH)", '""', "%")
p = [l for l in r if l.split('"."')[1].strip().startswith("P")]
q = [l for l in r if l.split('"."')[1].strip().startswith("Q")]
assert len(p) == 1 and "\\Subscribed" not in p[0] and p[0].endswith('P ("CHILDINFO" ("SUBSCRIBED"))'), r
assert len(q) == 1 and "\\Subscribed" in q[0] and q[0].endswith('Q ("CHILDINFO" ("SUBSCRIBED"))'), r
r = lst("(SUBSCRIBED)", '""', "%")
assert not any("CHILDINFO" in l for l in r), r
assert not any(l.endswith(" P") for l in r), r
"#,
    );
}

/// Item 8: MOVE into the selected mailbox succeeds (RFC 6851 does not
/// forbid it): the messages get new UIDs, told in COPYUID, and the old
/// ones are expunged.
#[test]
fn move_into_the_selected_mailbox_gives_new_uids() {
    replay(
        &["one", "two"],
        r#"
M = login()
ok(M.select("INBOX"))
typ, data = M.uid("MOVE", "1", "INBOX")
assert typ == "OK", (typ, data)
copyuid = [x for x in M.untagged_responses.pop("OK", []) if b"COPYUID" in x]
assert copyuid and re.search(rb"\[COPYUID \d+ 1 3\]", copyuid[0]), copyuid
assert M.untagged_responses.pop("EXPUNGE") == [b"1"], M.untagged_responses
r = ok(M.uid("FETCH", "1:*", "(UID)"))
assert r == [b"1 (UID 2)", b"2 (UID 3)"], r
"#,
    );
}

/// Item 9: SORT under i;ascii-casemap folds to upper case (so `_` sorts
/// after the letters, RFC 4790 §9.2), and a group sorts by its name.
#[test]
fn sort_folds_to_upper_case_and_sorts_groups_by_name() {
    replay(
        &[],
        r#"
M = login()
for subject, sender in [("_under", "zz@x.test"), ("beta", "undisclosed: a@b.test;"), ("Alpha", "mm@x.test")]:
    ok(M.append("INBOX", None, None, f"From: {sender}\r\nSubject: {subject}\r\n\r\nx\r\n".encode()))
ok(M.select("INBOX"))
typ, data = M._simple_command("SORT", "(SUBJECT)", "UTF-8", "ALL")
assert M.untagged_responses.pop("SORT") == [b"3 2 1"], "subject"
typ, data = M._simple_command("SORT", "(FROM)", "UTF-8", "ALL")
# mm, undisclosed, zz.
assert M.untagged_responses.pop("SORT") == [b"3 2 1"], "from"
typ, data = M._simple_command("SORT", "(DISPLAYFROM)", "UTF-8", "ALL")
assert M.untagged_responses.pop("SORT") == [b"3 2 1"], "displayfrom"
"#,
    );
}

/// Item 10: \Recent in IMAP4rev1 sessions as Dovecot has it: the first
/// session to see a message owns its \Recent; others see it as not
/// recent; IMAP4rev2 sessions report none.
#[test]
fn recent_belongs_to_the_first_session_that_sees_a_message() {
    replay(
        &["one", "two"],
        r#"
A = login(); B = login()
ok(A.select("INBOX"))
assert A.untagged_responses.pop("RECENT") == [b"2"], A.untagged_responses
assert ok(A.search(None, "NEW")) == [b"1 2"]
r = ok(A.fetch("1", "(FLAGS)"))
assert b"\\Recent" in r[0], r
ok(B.select("INBOX"))
assert B.untagged_responses.pop("RECENT") == [b"0"], B.untagged_responses
assert ok(B.search(None, "RECENT")) == [b""]
assert ok(B.search(None, "OLD")) == [b"1 2"]
deliver("three")
# STATUS takes no \Recent (a session with nothing selected asks).
D = login()
assert ok(D.status("INBOX", "(RECENT)"))[0] == b"INBOX (RECENT 1)"
A.untagged_responses.clear(); B.untagged_responses.clear()
ok(A.noop())
assert A.untagged_responses.pop("EXISTS") == [b"3"], A.untagged_responses
assert A.untagged_responses.pop("RECENT") == [b"3"], A.untagged_responses
ok(B.noop())
assert B.untagged_responses.pop("EXISTS") == [b"3"], B.untagged_responses
assert B.untagged_responses.pop("RECENT", [b"0"]) == [b"0"], B.untagged_responses
# Read-only, and IMAP4rev2: no \Recent taken, none reported.
C = login()
ok(C._simple_command("ENABLE", "IMAP4rev2"))
ok(C.select("INBOX"))
assert "RECENT" not in C.untagged_responses, C.untagged_responses
assert b"\\Recent" not in ok(C.fetch("1:*", "(FLAGS)"))[0]
"#,
    );
}

/// Item 11: LOGIN's tagged OK carries the post-login capabilities, and
/// the extensions offered work: ESORT and PARTIAL (RETURN options of SORT
/// and SEARCH), UTF8=ACCEPT (UTF-8 names, APPEND UTF8), CREATE-SPECIAL-USE.
#[test]
fn login_capabilities_and_the_extensions_they_offer() {
    replay(
        &["c", "a", "d", "b"],
        r#"
M = imaplib.IMAP4("127.0.0.1", PORT)
typ, data = M.login("bob@example.test", "secret")
caps = data[0].decode()
assert caps.startswith("[CAPABILITY IMAP4rev1"), caps
for c in ["ESORT", "PARTIAL", "UTF8=ACCEPT", "CREATE-SPECIAL-USE", "UIDPLUS", "MOVE"]:
    assert " " + c + " " in caps or caps.split("]")[0].endswith(" " + c), (c, caps)
assert ok(M._simple_command("ENABLE", "UTF8=ACCEPT")) and M.untagged_responses.pop("ENABLED") == [b"UTF8=ACCEPT"]
M._mode_utf8()
ok(M.select("INBOX"))
def esearch(*args):
    ok(M._simple_command(*args))
    return M.untagged_responses.pop("ESEARCH")[0].decode()
# Subjects c a d b: sorted a b c d are messages 2 4 1 3.
e = esearch("SORT", "RETURN", "(MIN MAX COUNT ALL)", "(SUBJECT)", "UTF-8", "ALL")
assert e.endswith("MIN 2 MAX 3 COUNT 4 ALL 2,4,1,3"), e
e = esearch("SORT", "RETURN", "(PARTIAL 2:3)", "(SUBJECT)", "UTF-8", "ALL")
assert e.endswith("PARTIAL (2:3 4,1)"), e
e = esearch("UID", "SEARCH", "RETURN", "(PARTIAL -1:-2)", "ALL")
assert e.endswith("UID PARTIAL (-2:-1 3:4)"), e
e = esearch("SEARCH", "RETURN", "(PARTIAL 5:9)", "ALL")
assert e.endswith("PARTIAL (5:9 NIL)"), e
# UTF8=ACCEPT: names in UTF-8, and APPEND UTF8 (literal8).
ok(M.create('"Entwürfe"'))
r = ok(M.list('""', "Entw*"))
# As a quoted string or a literal: either way, UTF-8 bytes.
name = r[0][1] if isinstance(r[0], tuple) else r[0].split(b'"." ')[1].strip(b'"')
assert name.decode("utf-8") == "Entwürfe", r
msg = "Subject: Grüße\r\n\r\nx\r\n".encode()
s = socket.create_connection(("127.0.0.1", PORT)); f = s.makefile("rb"); f.readline()
s.sendall(b"a LOGIN bob@example.test secret\r\nb ENABLE UTF8=ACCEPT\r\n")
while not f.readline().startswith(b"b OK"): pass
s.sendall(b"c APPEND INBOX UTF8 (~{%d+}\r\n" % len(msg) + msg + b")\r\n")
line = f.readline()
while not line.startswith(b"c "): line = f.readline()
assert line.startswith(b"c OK [APPENDUID"), line
# CREATE-SPECIAL-USE.
typ, data = M._simple_command("CREATE", "Outbox", "(USE (\\Sent))")
assert typ == "OK", (typ, data)
typ, data = M._simple_command("CREATE", "Virtual", "(USE (\\All))")
assert typ == "NO" and b"[USEATTR]" in data[0], (typ, data)
lines = [l.decode() for l in ok(M.list('""', "Outbox"))]
assert lines == ['(\\HasNoChildren \\Sent) "." Outbox'], lines
"#,
    );
}

/// A first FETCH ENVELOPE of a folder nothing was cached for reads the
/// headers ahead on every core: each message still gets its own
/// envelope, in order, and a second look answers the same from the cache.
#[test]
fn a_cold_envelope_fetch_read_ahead_answers_every_message() {
    replay(
        &[],
        r#"
# Written as a delivery leaves them (sizes in the names), as a migration
# might: nothing read or cached yet.
cur = os.environ["MAILDIR"] + "/cur"
os.makedirs(cur, exist_ok=True)
for i in range(700):
    text = b"Subject: m%d\nFrom: a%d@x.test\n\nbody\n" % (i, i)
    with open(cur + "/%d.M%dP1.test,S=%d,W=%d:2," % (1700000000 + i, i, len(text), len(text) + 4), "wb") as f:
        f.write(text)
M = login()
ok(M.select("INBOX"))
first = ok(M.fetch("1:*", "(UID ENVELOPE)"))
assert len(first) == 700, len(first)
for i, line in enumerate(first):
    assert line.startswith(b"%d (UID %d ENVELOPE (" % (i + 1, i + 1)), line
    assert b'"m%d"' % i in line and b'"a%d" "x.test"' % i in line, line
assert ok(M.fetch("1:*", "(UID ENVELOPE)")) == first
"#,
    );
}
