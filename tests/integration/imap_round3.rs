//! imap-serve, round 3: each exchange an outside review found wrong,
//! replayed with Python's imaplib or a raw socket.

use crate::imap_round2::{RAW, replay};

/// A folder deleted or renamed by another session while selected: the
/// next command that looks at it ends the session with a BYE (as
/// Dovecot's), rather than NO "try again later" for ever.
#[test]
fn a_selected_folder_deleted_or_renamed_elsewhere_ends_the_session() {
    replay(
        &[],
        r#"
for how in ["delete", "rename"]:
    A = login(); B = login()
    ok(A.create("Gone")); ok(A.append("Gone", None, None, b"Subject: x\r\n\r\nx\r\n"))
    ok(A.select("Gone"))
    if how == "delete":
        ok(B.delete("Gone"))
    else:
        ok(B.rename("Gone", "Elsewhere"))
    try:
        r = A.noop()
        raise SystemExit(f"NOOP after {how}: {r} {A.untagged_responses}")
    except imaplib.IMAP4.abort as e:
        bye = b" ".join(A.untagged_responses.get("BYE", [])).decode() + str(e)
        assert "deleted" in bye, (how, bye)
    ok(B.delete("Elsewhere")) if how == "rename" else None
print("bye ok")
"#,
    );
}

/// SEARCH HEADER compares the field's text as it stands (angle brackets
/// and all); BODY finds text in an attached message/rfc822 part and in a
/// message that is one.
#[test]
fn search_header_keeps_angle_brackets_and_body_looks_into_attached_messages() {
    replay(
        &[],
        r#"
M = login()
ok(M.append("INBOX", None, None,
    b"Subject: ids\r\nMessage-ID: <abc@def.test>\r\nIn-Reply-To: <x@y.test>\r\n\r\nplain\r\n"))
ok(M.append("INBOX", None, None,
    b"Subject: fwd\r\nMIME-Version: 1.0\r\nContent-Type: multipart/mixed; boundary=b\r\n\r\n"
    b"--b\r\nContent-Type: text/plain\r\n\r\nsee attached\r\n"
    b"--b\r\nContent-Type: message/rfc822\r\n\r\nSubject: inner\r\n\r\nzebrabody\r\n--b--\r\n"))
ok(M.append("INBOX", None, None,
    b"Subject: wrapped\r\nMIME-Version: 1.0\r\nContent-Type: message/rfc822\r\n\r\n"
    b"Subject: inner2\r\n\r\nokapibody\r\n"))
ok(M.select("INBOX"))
assert ok(M.search(None, "HEADER", "Message-ID", '"<abc@def.test>"')) == [b"1"]
assert ok(M.search(None, "HEADER", "Message-ID", "abc@def.test")) == [b"1"]
assert ok(M.search(None, "HEADER", "In-Reply-To", '"<x@y.test>"')) == [b"1"]
assert ok(M.search(None, "BODY", "zebrabody")) == [b"2"]
assert ok(M.search(None, "TEXT", "zebrabody")) == [b"2"]
assert ok(M.search(None, "BODY", "okapibody")) == [b"3"]
print("search ok")
"#,
    );
}

/// ENVELOPE: an address without a domain has an empty host, not NIL (the
/// start of a group); a quoted local part keeps its space.
#[test]
fn envelope_addresses_without_domain_or_with_a_quoted_space() {
    replay(
        &[],
        r#"
M = login()
ok(M.append("INBOX", None, None,
    b'From: user\r\nTo: "quoted local"@x.test\r\nSubject: env\r\n\r\nbody\r\n'))
ok(M.select("INBOX"))
r = ok(M.fetch("1", "(ENVELOPE)"))[0]
assert b'((NIL NIL "user" ""))' in r, r
assert b'((NIL NIL "quoted local" "x.test"))' in r, r
print("envelope ok")
"#,
    );
}

/// IMAP4rev2's SELECT includes the folder's LIST line; LIST RETURN
/// (STATUS) puts each STATUS right after its LIST (RFC 5819 §2).
#[test]
fn rev2_select_lists_the_folder_and_list_status_interleaves() {
    replay(
        &["one"],
        &[
            RAW,
            r#"
s.sendall(b"b CREATE Work\r\n"); upto(b"b")
s.sendall(b"c LIST \"\" \"*\" RETURN (STATUS (MESSAGES))\r\n")
lines = [l for l in upto(b"c").split(b"\r\n") if l.startswith(b"* ")]
kinds = [l.split(b" ")[1] for l in lines]
assert kinds == [b"LIST", b"STATUS"] * (len(lines) // 2), lines
for lst, st in zip(lines[::2], lines[1::2]):
    assert lst.rsplit(b" ", 1)[1] == st.split(b" ")[2], (lst, st)
s.sendall(b"d ENABLE IMAP4rev2\r\n"); upto(b"d")
s.sendall(b"e SELECT INBOX\r\n")
r = upto(b"e")
assert b'* LIST () "." INBOX\r\n' in r, r
print("list ok")
"#,
        ]
        .concat(),
    );
}

/// AUTHENTICATE PLAIN asking to act as someone else is NO
/// [AUTHORIZATIONFAILED] (RFC 5530), not BAD; the last login failure
/// allowed gets its tagged NO before the BYE.
#[test]
fn plain_for_another_identity_and_the_last_failed_login() {
    replay(
        &[],
        r#"
import base64
s = socket.create_connection(("127.0.0.1", PORT))
f = s.makefile("rb")
f.readline()
other = base64.b64encode(b"alice@example.test\0bob@example.test\0secret")
s.sendall(b"a AUTHENTICATE PLAIN " + other + b"\r\n")
r = f.readline()
assert r.startswith(b"a NO [AUTHORIZATIONFAILED]"), r
replies = []
for i in range(3):
    s.sendall(b"l%d LOGIN bob@example.test wrong\r\n" % i)
    replies.append(f.readline())
assert all(r.startswith(b"l%d NO [AUTHENTICATIONFAILED]" % i) for i, r in enumerate(replies)), replies
assert f.readline().startswith(b"* BYE"), "the BYE after the last NO"
print("auth ok")
"#,
    );
}

/// RFC 8438 §3: STATUS SIZE is at least the sum of the RFC822.SIZEs. A
/// file from elsewhere without `,W=` in its name (moved in by hand, or by
/// another MDA) counted nothing, or its LF size.
#[test]
fn status_size_counts_files_without_a_wire_size_in_their_name() {
    replay(
        &["delivered"],
        r#"
import pathlib
new = pathlib.Path(os.environ["MAILDIR"]) / "new"
(new / "1700000000.M1P1.elsewhere").write_bytes(b"Subject: moved in\n\nline one\nline two\n")
(new / "1700000001.M2P2.elsewhere,S=30").write_bytes(b"Subject: sized\n\nwith S only\n")
M = login()
st = ok(M.status("INBOX", "(MESSAGES SIZE)"))[0]
ok(M.select("INBOX", readonly=True))
sizes = ok(M.fetch("1:*", "(RFC822.SIZE)"))
total = sum(int(re.search(rb"RFC822.SIZE (\d+)", s).group(1)) for s in sizes)
assert len(sizes) == 3, sizes
m = re.search(rb"SIZE (\d+)", st)
assert int(m.group(1)) >= total, (st, total)
assert int(m.group(1)) == total, (st, total)
# The same, asked for again (the sizes now come from the cache).
st = ok(M.status("INBOX", "(SIZE)"))[0]
assert int(re.search(rb"SIZE (\d+)", st).group(1)) == total, (st, total)
print("size ok")
"#,
    );
}

/// An AUTHENTICATE response longer than a command may be before login
/// closed the connection with no answer; now the BYE of any over-long
/// pre-login command, which the lingering close lets the client read.
/// And a command of many small literals is told what it broke.
#[test]
fn an_over_long_authenticate_response_gets_a_bye() {
    replay(
        &[],
        r#"
s = socket.create_connection(("127.0.0.1", PORT))
f = s.makefile("rb")
f.readline()
s.sendall(b"a AUTHENTICATE PLAIN\r\n")
assert f.readline().startswith(b"+"), "continuation"
s.sendall(b"QUFB" * 2600 + b"\r\n")
rest = f.read()
assert b"* BYE [TOOBIG] before login" in rest, rest
s.close()

s = socket.create_connection(("127.0.0.1", PORT))
f = s.makefile("rb")
f.readline()
s.sendall(b"a LOGIN bob@example.test secret\r\n"); assert b"a OK" in f.readline()
s.sendall(b"b SEARCH TEXT" + b" {1+}\r\nx" * 1001 + b"\r\n")
rest = f.read()
assert b"* BYE more than 1000 literals" in rest, rest[-300:]
print("bye ok")
"#,
    );
}
