//! imap-serve's NOTIFY (RFC 5465): changes reach a session between its
//! commands, without it sending any, through a raw socket whose reads are
//! bounded by a timeout.

use crate::imap_serve::python;
use crate::util::{Server, Tree};

/// Python: `session()` is a raw connection logged in as bob; `upto(f,
/// tag)` reads to the line tagged `tag`; `wait(f, pattern)` reads lines,
/// none of them tagged, until one matches (a read that takes longer than
/// the socket's timeout fails the test instead of hanging it).
const RAW: &str = r#"
def upto(f, tag):
    out = []
    while True:
        line = f.readline()
        assert line, out
        out.append(line)
        if line.startswith(tag + b" "):
            return out
def session(user=b"bob"):
    s = socket.create_connection(("127.0.0.1", PORT))
    s.settimeout(20)
    f = s.makefile("rb")
    f.readline()
    s.sendall(b"a LOGIN " + user + b"@example.test secret\r\n")
    assert upto(f, b"a")[-1].startswith(b"a OK")
    return s, f
def command(s, f, tag, text):
    s.sendall(tag + b" " + text + b"\r\n")
    out = upto(f, tag)
    return out
def with_work():
    """Session B with a folder Work made, and a raw session."""
    B = login()
    ok(B.create("Work"))
    return (B,) + session()
def wait(f, pattern):
    seen = []
    while True:
        line = f.readline()
        assert line, seen
        assert line.startswith(b"* "), (line, seen)
        seen.append(line)
        if re.search(pattern, line):
            return seen
"#;

/// Bob's mailbox with `subjects`, imap-serve on it, and `script` run with
/// the helpers above.
fn replay(subjects: &[&str], script: &str) -> String {
    crate::imap_round2::replay(subjects, &format!("{RAW}\n{script}"))
}

/// Issue 15 item 11: with NOTIFY SET, a delivery, another session's flag
/// change and expunge in the selected mailbox, and an APPEND to another
/// folder each reach session A as untagged responses while A sends
/// nothing; the new message comes with the FETCH items MessageNew asked.
#[test]
fn notify_pushes_selected_changes_and_other_folders_status() {
    replay(
        &["first"],
        r#"
B, s, f = with_work()
caps = b"".join(command(s, f, b"c", b"CAPABILITY"))
assert b" NOTIFY" in caps, caps
assert command(s, f, b"d", b"SELECT INBOX")[-1].startswith(b"d OK")
r = command(s, f, b"e", b"NOTIFY SET (SELECTED (MessageNew (UID FLAGS) MessageExpunge FlagChange)) "
                        b"(PERSONAL (MessageNew MessageExpunge))")
assert r[-1].startswith(b"e OK"), r
# A delivery to the selected INBOX: EXISTS, then FETCH (UID FLAGS).
deliver("pushed")
seen = wait(f, rb"^\* 2 EXISTS")
seen = wait(f, rb"^\* 2 FETCH \(")
assert re.search(rb"UID 2\b", seen[-1]) and b"FLAGS (" in seen[-1], seen
# Another session's flag change.
ok(B.select("INBOX"))
ok(B.store("1", "+FLAGS", "(\\Flagged)"))
seen = wait(f, rb"^\* 1 FETCH \(.*\\Flagged")
assert b"UID 1" in seen[-1], seen
# Another session's expunge.
ok(B.store("2", "+FLAGS.SILENT", "(\\Deleted)"))
ok(B.expunge())
wait(f, rb"^\* 2 EXPUNGE")
# An APPEND to another folder of PERSONAL: its STATUS.
ok(B.append("Work", None, None, b"Subject: work\r\n\r\nx\r\n"))
seen = wait(f, rb"^\* STATUS Work \(")
assert re.match(rb"\* STATUS Work \(MESSAGES 1 UIDNEXT 2 UIDVALIDITY \d+\)\r\n$", seen[-1]), seen
# The view is what those said: one message, UID 1.
r = command(s, f, b"g", b"UID FETCH 1:* (FLAGS)")
fetched = [l for l in r if l.startswith(b"* ") and b"FETCH" in l]
assert r[-1].startswith(b"g OK") and len(fetched) == 1, r
assert re.match(rb"\* 1 FETCH \(UID 1 FLAGS \(\\Flagged( \\Recent)?\)\)", fetched[0]), r
print("notify ok")
"#,
    );
}

/// NOTIFY SET STATUS tells each watched folder's STATUS before the OK;
/// NOTIFY NONE stops the pushes; an unsupported event is NO [BADEVENT]
/// with the events that are, a malformed set BAD; IDLE under NOTIFY sends
/// what NOTIFY asked for (here another folder's STATUS).
#[test]
fn notify_status_none_badevent_and_idle() {
    replay(
        &["first"],
        r#"
B, s, f = with_work()
r = command(s, f, b"b", b"NOTIFY SET (PERSONAL (MessageNew MessageExpunge AnnotationChange))")
assert r[-1].startswith(b"b NO [BADEVENT (MessageNew MessageExpunge FlagChange MailboxName SubscriptionChange)]"), r
r = command(s, f, b"c", b"NOTIFY SET (SELECTED (MessageNew))")
assert r[-1].startswith(b"c BAD"), r
r = command(s, f, b"d", b"NOTIFY SET STATUS (MAILBOXES (Work INBOX) (MessageNew MessageExpunge FlagChange))")
assert r[-1].startswith(b"d OK"), r
status = sorted(l for l in r if l.startswith(b"* STATUS"))
assert len(status) == 2, r
assert re.match(rb"\* STATUS INBOX \(MESSAGES 1 UIDNEXT 2 UIDVALIDITY \d+ UNSEEN 1\)", status[0]), status
assert re.match(rb"\* STATUS Work \(MESSAGES 0 UIDNEXT 1 UIDVALIDITY \d+ UNSEEN 0\)", status[1]), status
# IDLE: the STATUS of Work when B appends to it, then DONE.
s.sendall(b"e IDLE\r\n")
assert f.readline().startswith(b"+ "), "no continuation"
ok(B.append("Work", None, None, b"Subject: work\r\n\r\nx\r\n"))
seen = wait(f, rb"^\* STATUS Work \(MESSAGES 1 UIDNEXT 2 ")
s.sendall(b"DONE\r\n")
assert upto(f, b"e")[-1].startswith(b"e OK"), "IDLE did not end"
# A watcher in another session shows when a change has been seen; with
# NOTIFY NONE, A hears nothing of it, even at its next command.
W, wf = session()
assert command(W, wf, b"w", b"NOTIFY SET (MAILBOXES Work (MessageNew MessageExpunge))")[-1].startswith(b"w OK")
r = command(s, f, b"g", b"NOTIFY NONE")
assert r[-1].startswith(b"g OK"), r
ok(B.append("Work", None, None, b"Subject: work\r\n\r\nx\r\n"))
wait(wf, rb"^\* STATUS Work \(MESSAGES 2 ")
r = command(s, f, b"h", b"NOOP")
assert r == [b"h OK completed\r\n"], r
print("notify status ok")
"#,
    );
}

/// SELECTED-DELAYED: new messages are told at once, an expunge only at a
/// command that may report it.
#[test]
fn selected_delayed_holds_expunges_until_a_command() {
    replay(
        &["one", "two"],
        r#"
B = login()
s, f = session()
assert command(s, f, b"b", b"SELECT INBOX")[-1].startswith(b"b OK")
r = command(s, f, b"c", b"NOTIFY SET (SELECTED-DELAYED (MessageNew MessageExpunge))")
assert r[-1].startswith(b"c OK"), r
ok(B.select("INBOX"))
ok(B.store("1", "+FLAGS.SILENT", "(\\Deleted)"))
ok(B.expunge())
deliver("three")
# The arrival is told; message 1 keeps its number meanwhile.
seen = wait(f, rb"^\* 3 EXISTS")
assert not any(b"EXPUNGE" in l for l in seen), seen
r = command(s, f, b"d", b"NOOP")
assert b"* 1 EXPUNGE\r\n" in r, r
print("delayed ok")
"#,
    );
}

/// Shared folders count only with the rights `l` and `r` (RFC 5465 §5):
/// bob, watching ann's tree, hears of the folder he may read, not of the
/// one he may only see, and nothing more once his right to read is gone.
#[test]
fn notify_tells_of_shared_folders_only_with_lookup_and_read() {
    let tree = Tree::new();
    tree.add_user("ann@example.test");
    tree.add_user("bob@example.test");
    let server = Server::start(&tree, "imap-serve", &[]);
    python(
        &format!(
            "{RAW}\n{}",
            r#"
A = imaplib.IMAP4("127.0.0.1", PORT); A.login("ann@example.test", "secret")
MSG = b"Subject: plan\r\n\r\nx\r\n"
ok(A.create("Projects")); ok(A.create("Private"))
ok(A.setacl("Projects", "bob@example.test", "lrs"))
ok(A.setacl("Private", "bob@example.test", "l"))
s, f = session()
r = command(s, f, b"b", b"NOTIFY SET STATUS (SUBTREE Shared.ann (MessageNew MessageExpunge))")
assert r[-1].startswith(b"b OK"), r
status = [l for l in r if l.startswith(b"* STATUS")]
assert len(status) == 1 and status[0].startswith(b"* STATUS Shared.ann.Projects (MESSAGES 0 "), r
ok(A.append("Private", None, None, MSG))
ok(A.append("Projects", None, None, MSG))
seen = wait(f, rb"^\* STATUS Shared.ann.Projects \(MESSAGES 1 ")
assert not [l for l in seen if b"Private" in l], seen
# Without r, nothing more: ann's own watch shows when the change is seen.
W, wf = session(b"ann")
assert command(W, wf, b"w", b"NOTIFY SET (MAILBOXES Projects (MessageNew MessageExpunge))")[-1].startswith(b"w OK")
ok(A.setacl("Projects", "bob@example.test", "l"))
ok(A.append("Projects", None, None, MSG))
wait(wf, rb"^\* STATUS Projects \(MESSAGES 2 ")
r = command(s, f, b"c", b"NOOP")
assert r == [b"c OK completed\r\n"], r
print("shared ok")
"#
        ),
        &server,
        &tree,
    );
}

/// Session A (raw `s`, `f`) set up by `setup`, then silent while B
/// APPENDs to `folder` over and over, each APPEND paced by the untagged
/// line it brings A: A must still hear BYE once its 2 s
/// `imap.idle_timeout` is up (each wakeup must not start its time again).
fn silent_session_gets_bye(setup: &str, folder: &str) {
    let tree = crate::imap_serve::tree_with_user();
    let text = std::fs::read_to_string(&tree.config).unwrap();
    std::fs::write(
        &tree.config,
        format!("{text}\n[imap]\nidle_timeout = \"2s\"\n"),
    )
    .unwrap();
    let server = Server::start(&tree, "imap-serve", &[]);
    let script = r#"
start = time.monotonic()
while True:
    assert time.monotonic() - start < 15, "no BYE: the changes kept the session alive"
    ok(B.append(FOLDER, None, None, b"Subject: w\r\n\r\nx\r\n"))
    line = f.readline()
    assert line, "closed without BYE"
    if line.startswith(b"* BYE"):
        break
    assert line.startswith(b"* "), line
assert time.monotonic() - start >= 1.5, time.monotonic() - start
print("timeout ok")
"#;
    python(
        &format!("{RAW}\nFOLDER = {folder:?}\n{setup}\n{script}"),
        &server,
        &tree,
    );
}

/// A NOTIFY session that sends nothing is closed after
/// `imap.idle_timeout`, even while changes keep waking it.
#[test]
fn a_silent_notify_session_times_out_though_changes_keep_coming() {
    silent_session_gets_bye(
        r#"
B, s, f = with_work()
assert command(s, f, b"b", b"NOTIFY SET (MAILBOXES Work (MessageNew MessageExpunge))")[-1].startswith(b"b OK")
"#,
        "Work",
    );
}

/// Plain IDLE too: mail arriving all the time does not keep a client that
/// never says DONE past `imap.idle_timeout`.
#[test]
fn a_silent_idle_session_times_out_though_mail_keeps_coming() {
    silent_session_gets_bye(
        r#"
B, s, f = with_work()
assert command(s, f, b"a", b"SELECT INBOX")[-1].startswith(b"a OK")
s.sendall(b"i IDLE\r\n")
assert f.readline().startswith(b"+ "), "no continuation"
"#,
        "INBOX",
    );
}

/// Issue 15 NOTIFY item 1: MailboxName and SubscriptionChange (RFC 5465
/// §5.4, §5.5). Another session's CREATE, RENAME (with OLDNAME), DELETE
/// (\NonExistent), SUBSCRIBE and UNSUBSCRIBE reach session A as `* LIST`
/// while A sends nothing; so do a folder another process makes in the
/// tree itself and A's own CREATE; a SUBTREE takes in only its names.
#[test]
fn notify_tells_of_folders_made_renamed_deleted_and_subscriptions() {
    replay(
        &["first"],
        r#"
B, s, f = with_work()
assert command(s, f, b"a", b"SELECT INBOX")[-1].startswith(b"a OK")
r = command(s, f, b"b", b"NOTIFY SET (SELECTED (MessageNew MessageExpunge)) "
                        b"(PERSONAL (MailboxName SubscriptionChange))")
assert r[-1].startswith(b"b OK"), r
ok(B.create("Projects"))
wait(f, rb'^\* LIST \(\) "\." "?Projects"?\r\n$')
ok(B.create("Projects.Sub"))
wait(f, rb'^\* LIST \(\) "\." "?Projects\.Sub"?\r\n$')
# A RENAME moves the children along: each is told with its old name.
ok(B.rename("Projects", "Done"))
seen = wait(f, rb'^\* LIST \(\) "\." "?Done"? \("OLDNAME" \("?Projects"?\)\)\r\n$')
if not [l for l in seen if b"Done.Sub" in l]:
    seen += wait(f, rb'Done\.Sub')
assert [l for l in seen if re.match(rb'\* LIST \(\) "\." "?Done\.Sub"? \("OLDNAME" \("?Projects\.Sub"?\)\)\r\n$', l)], seen
assert not [l for l in seen if b"NonExistent" in l], seen
ok(B.subscribe("Done"))
wait(f, rb'^\* LIST \(\\Subscribed\) "\." "?Done"?\r\n$')
ok(B.delete("Done"))
wait(f, rb'^\* LIST \(\\NonExistent\) "\." "?Done"?\r\n$')
ok(B.unsubscribe("Done"))
wait(f, rb'^\* LIST \(\\NonExistent\) "\." "?Done"?\r\n$')
# Another program's folder, made in the tree (directory first, then
# cur/, new/ and tmp/, as a CREATE does): told once it is a folder.
root = os.environ["MAILDIR"]
os.mkdir(os.path.join(root, ".Direct"))
for sub in ("cur", "new", "tmp"):
    os.mkdir(os.path.join(root, ".Direct", sub))
wait(f, rb'^\* LIST \(\) "\." "?Direct"?\r\n$')
# A's own CREATE is told too (the tree changed, whoever changed it).
r = command(s, f, b"c", b"CREATE Mine")
assert r[-1].startswith(b"c OK"), r
wait(f, rb'^\* LIST \(\) "\." "?Mine"?\r\n$')
# Mail still comes as before, and nothing about INBOX's lists is a LIST.
deliver("second")
seen = wait(f, rb"^\* 2 EXISTS")
assert not [l for l in seen if l.startswith(b"* LIST")], seen
# A folder made after NOTIFY SET is watched for STATUS from then on.
r = command(s, f, b"c2", b"NOTIFY SET (PERSONAL (MessageNew MessageExpunge MailboxName))")
assert r[-1].startswith(b"c2 OK"), r
ok(B.create("Later"))
wait(f, rb'^\* LIST \(\) "\." "?Later"?\r\n$')
ok(B.append("Later", None, None, b"Subject: later\r\n\r\nx\r\n"))
wait(f, rb"^\* STATUS Later \(MESSAGES 1 UIDNEXT 2 ")
# SUBTREE Work: Work.Sub is told, Other is not.
r = command(s, f, b"d", b"NOTIFY SET (SUBTREE Work (MailboxName))")
assert r[-1].startswith(b"d OK"), r
ok(B.create("Other"))
ok(B.create("Work.Sub"))
seen = wait(f, rb'^\* LIST \(\) "\." "?Work\.Sub"?\r\n$')
assert not [l for l in seen if b"Other" in l], seen
r = command(s, f, b"e", b"NOOP")
assert r == [b"e OK completed\r\n"], r
print("names ok")
"#,
    );
}

/// Issue 15 NOTIFY item 2: a message that arrives while a command runs
/// (here an APPEND to another folder, waiting for its literal) is told in
/// that command's EXISTS, and with MessageNew's FETCH items too, before
/// the command's OK; nothing is told twice after.
#[test]
fn message_new_fetch_items_also_for_mail_arriving_during_a_command() {
    replay(
        &["first"],
        r#"
B, s, f = with_work()
assert command(s, f, b"a", b"SELECT INBOX")[-1].startswith(b"a OK")
r = command(s, f, b"b", b"NOTIFY SET (SELECTED (MessageNew (UID FLAGS) MessageExpunge))")
assert r[-1].startswith(b"b OK"), r
msg = b"Subject: work\r\n\r\nx\r\n"
s.sendall(b"c APPEND Work {%d}\r\n" % len(msg))
assert f.readline().startswith(b"+ "), "no continuation"
# The delivery lands while the APPEND waits for its literal.
deliver("during")
s.sendall(msg + b"\r\n")
r = upto(f, b"c")
assert r[-1].startswith(b"c OK"), r
assert b"* 2 EXISTS\r\n" in r, r
fetched = [l for l in r if re.match(rb"\* 2 FETCH \(", l)]
assert len(fetched) == 1 and b"UID 2" in fetched[0] and b"FLAGS (" in fetched[0], r
assert r.index(b"* 2 EXISTS\r\n") < r.index(fetched[0]), r
r = command(s, f, b"d", b"NOOP")
assert r == [b"d OK completed\r\n"], r
print("during ok")
"#,
    );
}

/// Bytes the server process has read so far (`rchar` of /proc/PID/io:
/// files and sockets alike), for the cost tests below.
const READ_SO_FAR: &str = r#"
def read_so_far():
    with open(f"/proc/{PID}/io") as io:
        return int(next(l for l in io if l.startswith("rchar:")).split()[1])
def settle(folder):
    """Times older than a stamp trusts (folder.rs STAMP_DIRTY)."""
    old = time.time() - 30
    for name in ("new", "cur", "dovecot-uidlist", "dovecot-keywords"):
        path = os.path.join(folder, name)
        if os.path.exists(path):
            os.utime(path, (old, old))
"#;

/// imap-serve on bob's mailbox, with `script` run against it; PID names
/// the server process.
fn measured(script: &str) {
    let tree = crate::imap_serve::tree_with_user();
    let server = Server::start(&tree, "imap-serve", &[]);
    let said = python(
        &format!(
            "{RAW}\n{READ_SO_FAR}\nPID = {}\n{script}",
            server.child.id()
        ),
        &server,
        &tree,
    );
    // The figures, for whoever runs it with its output shown.
    println!("{said}");
}

/// Issue 15 NOTIFY item 3: the STATUS of a watched folder that has not
/// changed comes from the process's shared state of it (a few `stat`s),
/// not from reading its lists again: 30 STATUS of a settled 400-message
/// folder read less than one copy of its uidlist.
#[test]
fn status_of_an_unchanged_watched_folder_reads_nothing_again() {
    measured(
        r#"
B, s, f = with_work()
work = os.path.join(os.environ["MAILDIR"], ".Work")
for i in range(400):
    with open(os.path.join(work, "cur", f"1700000000.M{i}P1.test,S=20:2,S"), "w") as m:
        m.write("Subject: x\n\nbody\n")
r = command(s, f, b"b", b"NOTIFY SET STATUS (MAILBOXES Work (MessageNew MessageExpunge))")
assert any(l.startswith(b"* STATUS Work (MESSAGES 400 ") for l in r), r
settle(work)
# The first look after settling takes the stamp it trusts from then on.
assert command(s, f, b"c", b"STATUS Work (MESSAGES UIDNEXT)")[-1].startswith(b"c OK")
uidlist = os.path.getsize(os.path.join(work, "dovecot-uidlist"))
before = read_so_far()
for i in range(30):
    r = command(s, f, b"d%d" % i, b"STATUS Work (MESSAGES UIDNEXT)")
    assert r[0] == b"* STATUS Work (MESSAGES 400 UIDNEXT 401)\r\n" and r[-1].startswith(b"d%d OK" % i), r
read = read_so_far() - before
assert read < uidlist, (read, uidlist)
# A change is still seen at once.
ok(B.append("Work", None, None, b"Subject: work\r\n\r\nx\r\n"))
r = command(s, f, b"e", b"STATUS Work (MESSAGES)")
assert b"* STATUS Work (MESSAGES 401)\r\n" in r, r
print("status cost ok", read, uidlist)
"#,
    );
}

/// Issue 15 NOTIFY item 3: a search kept for updates (CONTEXT=SEARCH) is
/// not run again after a command that left the view as it was (a STORE
/// that changes no flag): 20 of them read less more with the search kept
/// than without it than one run of the search (a BODY search reads every
/// message); a real change still updates it.
#[test]
fn kept_searches_run_again_only_when_the_view_changed() {
    measured(
        r#"
B, s, f = with_work()
body = "needle " + "x" * 4000
for i in range(40):
    deliver(f"m{i}", body)
r = command(s, f, b"a", b"SELECT INBOX")
assert r[-1].startswith(b"a OK"), r
def twenty_stores():
    """What 20 STOREs that change nothing make the server read."""
    before = read_so_far()
    for i in range(20):
        r = command(s, f, b"c%d" % i, b"STORE 1 -FLAGS.SILENT (\\Deleted)")
        assert r == [b"c%d OK STORE completed\r\n" % i], r
    return read_so_far() - before
alone = twenty_stores()
r = command(s, f, b"b", b"SEARCH RETURN (UPDATE COUNT) BODY needle")
assert b'* ESEARCH (TAG "b") COUNT 40\r\n' in r, r
one_run = 40 * len(body)
read = twenty_stores() - alone
assert read < one_run, (read, alone, one_run)
# Another session's expunge changes the view: the update comes.
ok(B.select("INBOX"))
ok(B.store("1", "+FLAGS.SILENT", "(\\Deleted)"))
ok(B.expunge())
r = command(s, f, b"d", b"NOOP")
assert b'* ESEARCH (TAG "b") REMOVEFROM (0 1)\r\n' in r, r
print("context cost ok", read, alone, one_run)
"#,
    );
}

/// Issue 15 NOTIFY item 3: with NOTIFY SET on the selected folder, the
/// session does not look at the folder again right after a command has
/// reported it (nor for the command's own change, which its report
/// already covered): 20 STOREs that each change a flag make the server
/// read less more than without NOTIFY than three copies of the uidlist.
#[test]
fn notify_does_not_report_again_right_after_a_command() {
    measured(
        r#"
B, s, f = with_work()
inbox = os.environ["MAILDIR"]
for i in range(300):
    with open(os.path.join(inbox, "cur", f"1700000000.M{i}P1.test,S=20:2,S"), "w") as m:
        m.write("Subject: x\n\nbody\n")
r = command(s, f, b"a", b"SELECT INBOX")
assert r[-1].startswith(b"a OK") and b"* 300 EXISTS\r\n" in r, r
uidlist = os.path.getsize(os.path.join(inbox, "dovecot-uidlist"))
def twenty_stores(tag):
    """What 20 STOREs that each change a flag make the server read."""
    before = read_so_far()
    for i in range(20):
        sign = b"+-"[i % 2:i % 2 + 1]
        r = command(s, f, b"%s%d" % (tag, i), b"STORE 1 %sFLAGS.SILENT (\\Flagged)" % sign)
        assert r[-1].startswith(b"%s%d OK" % (tag, i)), r
    return read_so_far() - before
alone = twenty_stores(b"c")
r = command(s, f, b"d", b"NOTIFY SET (SELECTED (MessageNew MessageExpunge FlagChange))")
assert r[-1].startswith(b"d OK"), r
notified = twenty_stores(b"e")
assert notified - alone < 3 * uidlist, (notified, alone, uidlist)
# Another session's change still comes between commands.
ok(B.select("INBOX"))
ok(B.store("2", "+FLAGS", "(\\Flagged)"))
wait(f, rb"^\* 2 FETCH \(.*\\Flagged")
print("report cost ok", notified, alone, uidlist)
"#,
    );
}
