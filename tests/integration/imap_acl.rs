//! Shared and public folders (issue 20 item 2): IMAP ACL (RFC 4314),
//! NAMESPACE (RFC 2342), LIST-MYRIGHTS (RFC 8440), with two users talking
//! to the real imap-serve through Python's imaplib, and curl reading a
//! shared folder.

use std::process::Command;

use crate::imap_serve::python;
use crate::util::{Server, Tree, stderr, stdout};

/// ann and bob of example.test, and imap-serve on their tree.
fn two_users_served() -> (Tree, Server) {
    let tree = Tree::new();
    tree.add_user("ann@example.test");
    tree.add_user("bob@example.test");
    let server = Server::start(&tree, "imap-serve", &[]);
    (tree, server)
}

/// Python helpers on top of `imap_serve`'s prelude.
const HELPERS: &str = r#"
imaplib.Commands.setdefault("LISTRIGHTS", ("AUTH", "SELECTED"))
def login_as(user):
    M = imaplib.IMAP4("127.0.0.1", PORT)
    M.login(user + "@example.test", "secret")
    return M
def no(r, code):
    assert r[0] == "NO" and code in r[1][0].decode(), r
def untagged(M, name):
    return [x.decode() if isinstance(x, bytes) else x for x in M.untagged_responses.pop(name, [])]
def names(M, *args):
    return [l.decode() for l in ok(M.list(*args)) if l]
MSG = b"From: ann@example.test\r\nSubject: plan %d\r\n\r\nThe plan, part %d.\r\n"
"#;

fn run(tree: &Tree, server: &Server, script: &str) -> String {
    python(&format!("{HELPERS}\n{script}"), server, tree)
}

/// ann grants bob `lrs` on Projects: bob finds it under Shared., reads it,
/// keeps his own \Seen, is refused what he has no right to, sees ann's
/// flag changes as they happen; once the grant is gone, so is the folder.
#[test]
fn two_users_share_a_folder_with_rights_enforced() {
    let (tree, server) = two_users_served();
    let said = run(
        &tree,
        &server,
        r#"
A = login_as("ann"); B = login_as("bob")
caps = ok(A.capability())[0].decode()
for cap in ["ACL", "RIGHTS=texk", "NAMESPACE", "LIST-MYRIGHTS"]:
    assert cap in caps.split(), caps
assert ok(B.namespace()) == [b'(("" ".")) (("Shared." ".")) (("public." "."))'], B.namespace()
ok(A.create("Projects")); ok(A.create("Private"))
for i in (1, 2):
    ok(A.append("Projects", None, None, MSG % (i, i)))
ok(A.append("Private", None, None, MSG % (9, 9)))
# Nothing is shared yet.
assert not [n for n in names(B) if "Shared" in n], names(B)
no(B.select("Shared.ann.Projects"), "NONEXISTENT")

ok(A.setacl("Projects", "bob@example.test", "lrs"))
acl = ok(A.getacl("Projects"))[0].decode()
assert acl == "Projects ann@example.test lrswipkxteacd bob@example.test lrs", acl
listed = names(B)
assert '(\\Noselect \\HasChildren) "." Shared' in listed, listed
assert '(\\Noselect \\HasChildren) "." Shared.ann' in listed, listed
assert '(\\HasNoChildren) "." Shared.ann.Projects' in listed, listed
assert not [n for n in listed if "Private" in n], listed
assert ok(B.myrights("Shared.ann.Projects")) == [b"Shared.ann.Projects lrs"], B.myrights("Shared.ann.Projects")
ok(B.subscribe("Shared.ann.Projects"))
assert [l for l in ok(B.lsub()) if b"Shared.ann.Projects" in l] == [b'() "." Shared.ann.Projects'], B.lsub()
no(B.subscribe("Shared.ann.Private"), "NONEXISTENT")
typ, dat = B._simple_command("LISTRIGHTS", "Shared.ann.Projects", "bob@example.test")
assert typ == "NO" and "NOPERM" in dat[0].decode(), (typ, dat)
typ, dat = A._simple_command("LISTRIGHTS", "Projects", "bob@example.test")
assert typ == "OK", dat
assert untagged(A, "LISTRIGHTS") == ['Projects bob@example.test "" l r s w i p k x t e a'], dat
# LIST RETURN (MYRIGHTS): a MYRIGHTS line for each listed folder.
typ, dat = B._simple_command("LIST", '""', "Shared.*", "RETURN", "(MYRIGHTS)")
assert typ == "OK", dat
rights = untagged(B, "MYRIGHTS")
assert rights == ["Shared.ann.Projects lrs"], rights

# bob reads; \Seen is his own, the one flag he may change.
assert ok(B.select("Shared.ann.Projects")) == [b"2"]
assert B.untagged_responses.pop("PERMANENTFLAGS") == [b"(\\Seen)"], B.untagged_responses
body = ok(B.fetch("1", "(BODY[])"))[0][1]
assert b"The plan, part 1." in body, body
assert b"\\Seen" in ok(B.fetch("1", "(FLAGS)"))[0], B.fetch("1", "(FLAGS)")
ok(A.select("Projects"))
assert b"\\Seen" not in ok(A.fetch("1", "(FLAGS)"))[0], A.fetch("1", "(FLAGS)")
ok(A.store("2", "+FLAGS", "(\\Seen)"))
assert b"\\Seen" not in ok(B.fetch("2", "(FLAGS)"))[0], B.fetch("2", "(FLAGS)")
assert ok(B.search(None, "UNSEEN")) == [b"2"], B.search(None, "UNSEEN")
assert ok(A.search(None, "UNSEEN")) == [b"1"], A.search(None, "UNSEEN")
typ, dat = B.getquotaroot("Shared.ann.Projects")
assert typ == "OK" and dat[0] == [b"Shared.ann.Projects"], (typ, dat)
st = ok(B.status("Shared.ann.Projects", "(MESSAGES UNSEEN)"))[0].decode()
assert "MESSAGES 2 UNSEEN 1" in st, st

# Refused without the right: \Deleted needs t, other flags w, APPEND i,
# EXPUNGE e, SETACL a.
no(B.store("1", "+FLAGS", "(\\Deleted)"), "NOPERM")
no(B.store("1", "+FLAGS", "(\\Flagged)"), "NOPERM")
# A replacing STORE changes only what bob may: his \Seen, not ann's \Deleted.
ok(A.store("2", "+FLAGS", "(\\Deleted)"))
ok(B.store("2", "FLAGS", "(\\Seen)"))
f = ok(B.fetch("2", "(FLAGS)"))[0].decode()
assert "\\Seen" in f and "\\Deleted" in f, f
ok(B.store("2", "-FLAGS", "(\\Seen)"))
ok(A.store("2", "-FLAGS", "(\\Deleted)"))
# A STORE on several messages changes bob's \Seen of each (in one
# rewrite of his file), and none of ann's.
ok(B.store("1:2", "-FLAGS", "(\\Seen)"))
assert ok(B.search(None, "UNSEEN")) == [b"1 2"], B.search(None, "UNSEEN")
ok(B.store("1:2", "+FLAGS", "(\\Seen)"))
assert ok(B.search(None, "SEEN")) == [b"1 2"], B.search(None, "SEEN")
assert ok(A.search(None, "SEEN")) == [b"2"], A.search(None, "SEEN")
ok(B.store("2", "-FLAGS", "(\\Seen)"))
no(B.append("Shared.ann.Projects", None, None, MSG % (3, 3)), "NOPERM")
no(B.expunge(), "NOPERM")
no(B.setacl("Shared.ann.Projects", "bob@example.test", "lrswipkxtea"), "NOPERM")
no(B.status("Shared.ann.Private", "(MESSAGES)"), "NONEXISTENT")

# Shared flags reach bob's open session as untagged FETCH.
ok(A.store("1", "+FLAGS", "(\\Flagged)"))
B.untagged_responses.clear()
ok(B.noop())
fetched = untagged(B, "FETCH")
assert any("\\Flagged" in f for f in fetched), fetched

# With t and e, bob may delete; the expunge reaches ann's session.
ok(A.setacl("Projects", "bob@example.test", "+te"))
ok(B.select("Shared.ann.Projects"))
ok(B.store("1", "+FLAGS", "(\\Deleted)"))
assert ok(B.expunge()) == [b"1"]
A.untagged_responses.clear()
ok(A.noop())
assert untagged(A, "EXPUNGE") == ["1"], A.untagged_responses

# ann renames it (and its child): bob finds it under the new name.
ok(B.close())
ok(A.close())
ok(A.create("Projects.Old"))
ok(A.setacl("Projects.Old", "bob", "lr"))
ok(A.rename("Projects", "Plans"))
listed = [n for n in names(B) if "Shared" in n]
assert '(\\HasChildren) "." Shared.ann.Plans' in listed, listed
assert '(\\HasNoChildren) "." Shared.ann.Plans.Old' in listed, listed
assert not [n for n in listed if "Projects" in n], listed
ok(A.rename("Plans", "Projects"))

# DELETEACL: gone from bob's LIST, and SELECT says it does not exist.
ok(A.deleteacl("Projects", "bob@example.test"))
ok(A.deleteacl("Projects.Old", "bob"))
assert not [n for n in names(B) if "Shared" in n], names(B)
no(B.select("Shared.ann.Projects"), "NONEXISTENT")
acl = ok(A.getacl("Projects"))[0].decode()
assert "bob" not in acl, acl
print("shared ok")
"#,
    );
    assert!(said.contains("shared ok"), "{said}");
    // The ACL is Dovecot's file beside the uidlist; the index names it.
    let acl = std::fs::read_to_string(tree.maildir("ann").join(".Projects/dovecot-acl"));
    assert!(acl.is_err(), "an empty ACL leaves no file: {acl:?}");
    let index = tree.root().join("state/shared-folders/bob@example.test");
    assert_eq!(std::fs::read_to_string(index).unwrap_or_default(), "");
}

/// Names with `..`, `/` or a user of another domain reach nothing, and
/// nothing is written outside the trees.
#[test]
fn names_cannot_escape_a_tree() {
    let (tree, server) = two_users_served();
    run(
        &tree,
        &server,
        r#"
A = login_as("ann"); B = login_as("bob")
ok(A.create("Projects"))
ok(A.setacl("Projects", "bob", "lr"))
assert "Shared.ann.Projects" in " ".join(names(B))
for name in ["Shared.ann..Projects", '"Shared.ann/../ann/.Projects"', '"Shared/ann/Projects"',
             "Shared.ann.Projects.", "Shared..ann.Projects", "Shared.bob.INBOX", "Shared.ann",
             "Shared", "Shared.carol.INBOX", "public", '"public.../x"', "public.INBOX",
             '"Shared.ann.~x"']:
    r = B.select(name)
    assert r[0] == "NO", (name, r)
    if name not in ("Shared", "public"):
        r = B.create(name + "x" if not name.startswith('"') else name)
        assert r[0] == "NO", (name, r)
# Identifiers that are no user of the domain, or no name at all.
def status(f, *args):
    try:
        return f(*args)[0]
    except imaplib.IMAP4.error:  # imaplib raises on BAD
        return "BAD"
for who in ['"../x"', "carol@other.test", '"a b"', "nobody@example.test"]:
    assert status(A.setacl, "Projects", who, "lr") in ("NO", "BAD"), who
assert status(A.setacl, "Projects", "bob", "lrz") == "BAD"

# bob without k may not create inside ann's folder; with k he may, and
# the child starts with the parent's rights.
no(B.create("Shared.ann.Projects.Sub"), "NOPERM")
ok(A.setacl("Projects", "bob", "+k"))
ok(B.create("Shared.ann.Projects.Sub"))
assert "Shared.ann.Projects.Sub" in " ".join(names(B)), names(B)
rights = lambda n: ok(A.getacl(n))[0].decode().split(" ", 1)[1]
assert rights("Projects.Sub") == rights("Projects"), (rights("Projects.Sub"), rights("Projects"))
no(B.rename("Shared.ann.Projects.Sub", "Mine"), "NOPERM")
print("escape ok")
"#,
    );
    assert!(tree.maildir("ann").join(".Projects.Sub/cur").is_dir());
    let stray: Vec<_> = walk(&tree.root())
        .into_iter()
        .filter(|p| {
            let s = p.to_string_lossy();
            s.contains("/x/") || s.ends_with("/x") || s.contains("carol")
        })
        .collect();
    assert!(stray.is_empty(), "{stray:?}");
}

fn walk(dir: &std::path::Path) -> Vec<std::path::PathBuf> {
    let mut out = Vec::new();
    for e in std::fs::read_dir(dir).into_iter().flatten().flatten() {
        let p = e.path();
        if e.file_type().is_ok_and(|t| t.is_dir()) {
            out.extend(walk(&p));
        }
        out.push(p);
    }
    out
}

/// The domain's public folders: rights from a `dovecot-acl` the admin
/// writes by hand, picked up at the next command.
#[test]
fn public_folder_rights_come_from_the_admin_edited_acl_file() {
    let (tree, server) = two_users_served();
    let public = tree.root().join("mail/example.test/@public");
    let mailbox = postroom::store::mailbox::Mailbox::new(&public);
    let news = postroom::store::mailbox::MailboxName::new("News").unwrap();
    mailbox.create(&news).expect("public folder");
    let acl = public.join(".News/dovecot-acl");
    std::fs::write(
        &acl,
        "authenticated lr\nuser=bob@example.test lrswite\n# ann may only look\n-user=ann@example.test r\n",
    )
    .unwrap();
    run(
        &tree,
        &server,
        &format!(
            r#"
A = login_as("ann"); B = login_as("bob")
assert '(\\HasNoChildren) "." public.News' in names(B), names(B)
assert ok(B.myrights("public.News")) == [b"public.News lrswite"]
ok(B.append("public.News", None, None, MSG % (1, 1)))
ok(B.select("public.News"))
ok(B.store("1", "+FLAGS", "(\\Flagged \\Seen)"))
# ann: listed, not readable.
assert '(\\HasNoChildren) "." public.News' in names(A), names(A)
no(A.select("public.News"), "NOPERM")
# The admin edits the file: ann may read, without \Seen of bob's.
open({acl:?}, "w").write("authenticated lr\nuser=bob@example.test lrswite\n")
# Read but nothing to change (no s, w, t or e): SELECT gives read-only.
try:
    A.select("public.News"); raise SystemExit("public.News selected read-write")
except imaplib.IMAP4.readonly:
    pass
ok(A.select("public.News", readonly=True))
f = ok(A.fetch("1", "(FLAGS)"))[0].decode()
assert "\\Flagged" in f and "\\Seen" not in f, f
no(A.store("1", "+FLAGS", "(\\Seen)"), "READ-ONLY")
# ...and then nobody but bob.
open({acl:?}, "w").write("user=bob@example.test lr\n")
assert not [n for n in names(A) if "public" in n], names(A)
print("public ok")
"#
        ),
    );
}

/// The domain's public folders have a quota of their own, `quota.public`:
/// an APPEND or COPY past it is refused with NO [OVERQUOTA] and stores
/// nothing.
#[test]
fn public_folders_keep_to_their_quota() {
    let tree = Tree::new();
    tree.add_user("bob@example.test");
    crate::util::configure(&tree, "quota", &[("public", "\"4K\"")]);
    let server = Server::start(&tree, "imap-serve", &[]);
    let public = tree.root().join("mail/example.test/@public");
    let mailbox = postroom::store::mailbox::Mailbox::new(&public);
    let news = postroom::store::mailbox::MailboxName::new("News").unwrap();
    mailbox.create(&news).expect("public folder");
    std::fs::write(public.join(".News/dovecot-acl"), "authenticated lrswite\n").unwrap();
    run(
        &tree,
        &server,
        r#"
B = login_as("bob")
big = MSG % (1, 1) + b"x" * 3000 + b"\r\n"
ok(B.append("public.News", None, None, big))
typ, dat = B.append("public.News", None, None, big)
assert typ == "NO" and "[OVERQUOTA]" in dat[0].decode(), (typ, dat)
ok(B.append("INBOX", None, None, big))
ok(B.select("INBOX"))
typ, dat = B.copy("1", "public.News")
assert typ == "NO" and "[OVERQUOTA]" in dat[0].decode(), (typ, dat)
st = ok(B.status("public.News", "(MESSAGES)"))[0].decode()
assert "MESSAGES 1" in st, st
print("public quota ok")
"#,
    );
}

/// A real IMAP client: curl lists bob's folders and fetches a message of
/// the folder ann shared with him.
#[test]
fn curl_reads_a_shared_folder() {
    let (tree, server) = two_users_served();
    run(
        &tree,
        &server,
        r#"
A = login_as("ann")
ok(A.create("Projects"))
ok(A.append("Projects", None, None, MSG % (7, 7)))
ok(A.setacl("Projects", "bob@example.test", "lr"))
"#,
    );
    let url = format!("imap://127.0.0.1:{}/", server.port);
    let curl = |path: &str| {
        let out = Command::new("curl")
            .args(["--silent", "--show-error", "--max-time", "20"])
            .args(["--user", "bob@example.test:secret"])
            .arg(format!("{url}{path}"))
            .output()
            .expect("curl runs");
        assert!(out.status.success(), "curl {path}: {}", stderr(&out));
        stdout(&out)
    };
    let listed = curl("");
    assert!(listed.contains("Shared.ann.Projects"), "{listed}");
    let message = curl("Shared.ann.Projects;UID=1");
    assert!(message.contains("The plan, part 7."), "{message}");
}

/// COPY into another owner's folder (RFC 4314 §4, RFC 9208): the copy keeps
/// only the flags the copier's rights there allow, counts against the
/// owner's quota (not the copier's), and is refused whole past it.
#[test]
fn copies_into_a_shared_folder_keep_to_the_rights_and_the_owners_quota() {
    let (tree, server) = two_users_served();
    let quota = tree.postroom(&["user", "quota", "ann@example.test", "6K"]);
    assert!(quota.status.success(), "{}", stderr(&quota));
    let said = run(
        &tree,
        &server,
        r#"
A = login_as("ann"); B = login_as("bob")
ok(A.create("Inbound"))
ok(A.setacl("Inbound", "bob@example.test", "lri"))
ok(B.append("INBOX", r"(\Seen \Flagged \Deleted)", None, MSG % (1, 1)))
ok(B.select("INBOX"))
typ, dat = B.copy("1", "Shared.ann.Inbound")
assert typ == "OK" and "COPYUID" in dat[0].decode(), dat
ok(A.select("Inbound"))
flags = ok(A.fetch("1", "(FLAGS)"))[0].decode()
assert not [f for f in ("Seen", "Flagged", "Deleted") if f in flags], flags
# With s there, bob's \Seen comes along as his own, never ann's.
ok(A.create("Reading"))
ok(A.setacl("Reading", "bob@example.test", "lrsi"))
ok(B.copy("1", "Shared.ann.Reading"))
ok(A.select("Reading"))
flags = ok(A.fetch("1", "(FLAGS)"))[0].decode()
assert "Seen" not in flags, flags
ok(B.select("Shared.ann.Reading"))
flags = ok(B.fetch("1", "(FLAGS)"))[0].decode()
assert "\\Seen" in flags and "Flagged" not in flags, flags
ok(A.select("Inbound")); ok(B.select("INBOX"))
# A message larger than what is left of ann's 6K: refused whole.
big = b"From: bob@example.test\r\nSubject: big\r\n\r\n" + b"x" * 8000 + b"\r\n"
ok(B.append("INBOX", None, None, big))
B.noop()
typ, dat = B.copy("1:2", "Shared.ann.Inbound")
assert typ == "NO" and "OVERQUOTA" in dat[0].decode(), dat
A.noop()
assert ok(A.select("Inbound")) == [b"1"], "nothing of the refused COPY arrived"
print("copies ok")
"#,
    );
    assert!(said.contains("copies ok"), "{said}");
}
