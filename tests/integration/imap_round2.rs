//! imap-serve, round 2 (issue 15): each exchange a conformance or stress
//! run failed on, replayed with Python's imaplib or a raw socket.

use crate::imap_serve::{deliver, python, tree_with_user};
use crate::util::Server;

/// Item 1: an EXPUNGE held back during a FETCH by sequence number is sent
/// at the next command that allows it, and FETCH/STORE of the ghost
/// succeed meanwhile instead of failing with EXPUNGEISSUED.
#[test]
fn held_back_expunges_are_sent_at_the_next_command_that_allows_them() {
    let tree = tree_with_user();
    for s in ["one", "two", "three"] {
        deliver(&tree, s);
    }
    let server = Server::start(&tree, "imap-serve", &[]);
    python(
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
        &server,
        &tree,
    );
}
