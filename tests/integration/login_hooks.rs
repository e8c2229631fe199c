//! Login hooks (issue 19, item 2): a checkpassword program decides the
//! password for POP3, IMAP and SMTP AUTH, per service, and an `after`
//! hook may refuse a user who got it right; the password never reaches
//! the environment or the log, and a hook that hangs fails the login
//! temporarily.

use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::process::Command;

use crate::util::{Server, Tree, stdout};

/// A checkpassword program in shell: reads `login\0password\0` from fd 3
/// as qmail's interface says; accepts "directory-pw" for anyone, hangs on
/// "hang", and records the service and its environment.
const CHECK: &str = r#"#!/bin/bash
IFS= read -r -d '' login <&3
IFS= read -r -d '' password <&3
echo "$POSTROOM_SERVICE $login" >> "$(dirname "$0")/calls"
env >> "$(dirname "$0")/env"
# On purpose: a hung hook, which login.timeout must kill.
[ "$password" = hang ] && exec sleep 60
[ "$password" = directory-pw ] && exit 0
exit 1
"#;

/// Refuses bob, whatever his password: "not this user at this hour".
const AFTER: &str = r#"#!/bin/sh
echo "after $POSTROOM_SERVICE $POSTROOM_USER $POSTROOM_REMOTE_IP" >> "$(dirname "$0")/calls"
if [ "$POSTROOM_USER" = bob@example.test ]; then
    echo "bob may not log in at this hour"
    exit 1
fi
exit 0
"#;

fn script(path: &Path, text: &str) {
    std::fs::write(path, text).unwrap();
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o755)).unwrap();
}

/// Tries every login in `LOGINS` (service login password) and prints one
/// line per attempt: OK, or the server's answer.
const CLIENT: &str = r#"
import imaplib, os, poplib, smtplib, sys
pop, imap, smtp = (int(os.environ[k]) for k in ("POP3", "IMAP", "SMTP"))
for line in sys.stdin.read().splitlines():
    service, login, password = line.split()
    try:
        if service == "pop3":
            p = poplib.POP3("127.0.0.1", pop, timeout=30)
            p.user(login)
            p.pass_(password)
            p.quit()
        elif service == "imap":
            m = imaplib.IMAP4("127.0.0.1", imap, timeout=30)
            m.login(login, password)
            m.logout()
        else:
            s = smtplib.SMTP("127.0.0.1", smtp, timeout=30)
            s.ehlo("client.test")
            s.login(login, password)
            s.quit()
        print(service, login, "OK")
    except Exception as e:
        said = " ".join(a.decode() if isinstance(a, bytes) else str(a) for a in e.args)
        print(service, login, said.replace("\n", " "))
"#;

fn try_logins(ports: (u16, u16, u16), logins: &str) -> Vec<String> {
    let mut command = Command::new("python3");
    command
        .arg("-c")
        .arg(CLIENT)
        .env("POP3", ports.0.to_string())
        .env("IMAP", ports.1.to_string())
        .env("SMTP", ports.2.to_string());
    let out = crate::util::run_with(command, logins.as_bytes());
    assert!(out.status.success(), "{out:?}");
    stdout(&out).lines().map(str::to_string).collect()
}

#[test]
fn login_hooks_decide_pop3_imap_and_smtp_logins() {
    let tree = Tree::new();
    tree.add_user("ann@example.test");
    tree.add_user("bob@example.test");
    let root = tree.root();
    script(&root.join("check.sh"), CHECK);
    script(&root.join("after.sh"), AFTER);
    let mut config = std::fs::read_to_string(&tree.config).unwrap();
    config.push_str(&format!(
        "\n[login]\ncheck = \"{}\"\nafter = \"{}\"\ntimeout = \"2s\"\n\n\
         # SMTP AUTH keeps the users file's passwords; the after hook still runs.\n\
         [login.smtp]\ncheck = \"\"\n",
        root.join("check.sh").display(),
        root.join("after.sh").display()
    ));
    std::fs::write(&tree.config, config).unwrap();
    let pop3 = Server::start(&tree, "pop3-serve", &[]);
    let imap = Server::start(&tree, "imap-serve", &[]);
    let smtp = Server::start(&tree, "smtp-recv", &["--submission"]);
    let ports = (pop3.port, imap.port, smtp.port);

    let said = try_logins(
        ports,
        "pop3 ann@example.test directory-pw\n\
         pop3 ann@example.test secret\n\
         imap ann@example.test directory-pw\n\
         imap ann@example.test secret\n\
         imap carol@example.test directory-pw\n\
         imap bob@example.test directory-pw\n\
         pop3 bob@example.test directory-pw\n\
         smtp ann@example.test secret\n\
         smtp ann@example.test directory-pw\n\
         smtp bob@example.test secret\n\
         pop3 ann@example.test hang\n",
    );
    let expect = [
        // The hook's password is the one that counts, not the users file's.
        "pop3 ann@example.test OK",
        "pop3 ann@example.test -ERR [AUTH] authentication failed",
        "imap ann@example.test OK",
        "imap ann@example.test [AUTHENTICATIONFAILED] authentication failed",
        // The hook accepts carol, but there is no mailbox for her.
        "imap carol@example.test [AUTHENTICATIONFAILED] authentication failed",
        // Bob's password is right; the after hook refuses him, with its reason.
        "imap bob@example.test [CONTACTADMIN] bob may not log in at this hour",
        "pop3 bob@example.test -ERR [AUTH] bob may not log in at this hour",
        // SMTP has its check hook turned off: the users file decides.
        "smtp ann@example.test OK",
        "smtp ann@example.test 535 5.7.8 authentication failed",
        "smtp bob@example.test 535 5.7.1 bob may not log in at this hour",
        // A hook that hangs is killed at login.timeout: try again later.
        "pop3 ann@example.test -ERR [SYS/TEMP] cannot open the mailbox now, try again later",
    ];
    for (i, want) in expect.iter().enumerate() {
        assert!(
            said.get(i).is_some_and(|got| got.contains(want)),
            "attempt {i}: want {want:?}, got {:?}\nall: {said:#?}",
            said.get(i)
        );
    }

    let calls = std::fs::read_to_string(root.join("calls")).unwrap();
    for line in [
        "pop3 ann@example.test",
        "imap ann@example.test",
        "after imap ann@example.test 127.0.0.1",
        "after smtp bob@example.test 127.0.0.1",
    ] {
        assert!(calls.lines().any(|l| l == line), "{line:?} not in {calls}");
    }
    assert!(
        !calls.lines().any(|l| l.starts_with("smtp ")),
        "the SMTP check hook is off: {calls}"
    );
    // The password is on fd 3 only: not in the hooks' environment, nor in
    // any server's log.
    let env = std::fs::read_to_string(root.join("env")).unwrap();
    assert!(env.contains("POSTROOM_LOGIN=ann@example.test"), "{env}");
    for log in [&pop3.log, &imap.log, &smtp.log] {
        assert!(!log.text().contains("directory-pw"), "{}", log.text());
    }
    assert!(!env.contains("directory-pw") && !env.contains("secret"));
    assert!(pop3.log.text().contains("ran past login.timeout"));
}
