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
