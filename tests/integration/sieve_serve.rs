//! sieve-serve end to end: the real client `sieve-connect` uploads, lists
//! and activates a script and the next delivery follows it; Python's
//! `managesieve` module drives the other commands; raw sockets check the
//! refusals (a script that does not compile, the limits, passwords before
//! TLS, oversized input before login) and the inetd mode.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::path::Path;
use std::process::Command;
use std::time::Duration;

use crate::util::{
    Server, Tree, configure, connect_loopback, maildir_files, spawn_inetd, stderr, stdout,
    wait_until,
};

const ANN_PLAIN: &str = "AGFubkBleGFtcGxlLnRlc3QAc2VjcmV0"; // \0ann@example.test\0secret

const RULES: &str = "require \"fileinto\";\r\nif header :contains \"subject\" \"report\" {\r\n  fileinto \"Reports\";\r\n}\r\n";

fn tree_with_ann() -> Tree {
    let tree = Tree::new();
    tree.add_user("ann@example.test");
    tree
}

/// Runs sieve-connect against the server with ann's password on fd 3,
/// accepting the test certificate; (success, output).
fn sieve_connect(tree: &Tree, server: &Server, args: &[&str]) -> (bool, String) {
    let password = tree.dir.path().join("password");
    std::fs::write(&password, "secret\n").unwrap();
    let out = Command::new("sh")
        .arg("-c")
        .arg("exec sieve-connect \"$@\" --passwordfd 3 3<\"$PASSWORD_FILE\"")
        .arg("sieve-connect")
        .args([
            "--server",
            "127.0.0.1",
            "--port",
            &server.port.to_string(),
            "--user",
            "ann@example.test",
            "--notlsverify",
        ])
        .args(args)
        .env("PASSWORD_FILE", &password)
        .current_dir(tree.dir.path())
        .stdin(std::process::Stdio::null())
        .output()
        .expect("sieve-connect runs (apt install sieve-connect)");
    (
        out.status.success(),
        format!("{}{}", stdout(&out), stderr(&out)),
    )
}

/// A raw ManageSieve client.
struct Client {
    reader: BufReader<TcpStream>,
    writer: TcpStream,
}

impl Client {
    fn connect(port: u16) -> Client {
        let (reader, writer) = connect_loopback(port);
        let mut client = Client { reader, writer };
        let greeting = client.response();
        assert!(
            greeting.ends_with("OK \"postroom ManageSieve ready\"\r\n"),
            "{greeting}"
        );
        client
    }

    /// Everything up to and including the OK, NO or BYE line (literals
    /// read whole).
    fn response(&mut self) -> String {
        let mut text = String::new();
        loop {
            let mut line = String::new();
            if self.reader.read_line(&mut line).unwrap() == 0 {
                return text;
            }
            text.push_str(&line);
            if let Some(size) = line
                .trim_end()
                .strip_suffix('}')
                .and_then(|l| l.rsplit_once('{'))
                .and_then(|(_, n)| n.parse::<usize>().ok())
            {
                let mut literal = vec![0; size];
                self.reader.read_exact(&mut literal).unwrap();
                text.push_str(&String::from_utf8_lossy(&literal));
                continue;
            }
            if ["OK", "NO", "BYE"]
                .iter()
                .any(|s| line.starts_with(s) && line[s.len()..].starts_with([' ', '\r']))
            {
                return text;
            }
        }
    }

    fn send(&mut self, bytes: &[u8]) {
        self.writer.write_all(bytes).unwrap();
    }

    fn command(&mut self, line: &str) -> String {
        self.send(format!("{line}\r\n").as_bytes());
        self.response()
    }

    fn login(&mut self) {
        let reply = self.command(&format!("AUTHENTICATE \"PLAIN\" \"{ANN_PLAIN}\""));
        assert_eq!(reply, "OK \"logged in\"\r\n");
    }

    fn put(&mut self, name: &str, script: &str) -> String {
        self.send(format!("PUTSCRIPT \"{name}\" {{{}+}}\r\n{script}\r\n", script.len()).as_bytes());
        self.response()
    }

    /// True once the server has closed the connection.
    fn closed(&mut self) -> bool {
        let mut rest = Vec::new();
        self.reader.read_to_end(&mut rest).is_ok()
    }
}

fn files_in(folder: &Path) -> usize {
    maildir_files(folder)
        .iter()
        .filter(|f| f.parent().and_then(|p| p.parent()) == Some(folder))
        .count()
}

#[test]
fn sieve_connect_uploads_lists_activates_and_the_next_delivery_follows() {
    let tree = tree_with_ann();
    let server = Server::start(&tree, "sieve-serve", &[]);
    std::fs::write(tree.dir.path().join("rules.sieve"), RULES).unwrap();

    let (ok, out) = sieve_connect(
        &tree,
        &server,
        &[
            "--localsieve",
            "rules.sieve",
            "--remotesieve",
            "rules",
            "--upload",
        ],
    );
    assert!(ok, "{out}");
    let (ok, out) = sieve_connect(&tree, &server, &["--list"]);
    assert!(ok, "{out}");
    assert!(out.contains("rules") && !out.contains("ACTIVE"), "{out}");
    let (ok, out) = sieve_connect(&tree, &server, &["--remotesieve", "rules", "--activate"]);
    assert!(ok, "{out}");
    let (ok, out) = sieve_connect(&tree, &server, &["--list"]);
    assert!(ok && out.contains("\"rules\" ACTIVE"), "{out}");
    let (ok, out) = sieve_connect(
        &tree,
        &server,
        &[
            "--remotesieve",
            "rules",
            "--localsieve",
            "back.sieve",
            "--download",
        ],
    );
    assert!(ok, "{out}");
    assert_eq!(
        std::fs::read_to_string(tree.dir.path().join("back.sieve")).unwrap(),
        RULES
    );
    // Where mailsort looks: active.sieve, a link to the uploaded script.
    let maildir = tree.maildir("ann");
    let active = maildir.join("sieve/active.sieve");
    assert_eq!(
        std::fs::read_link(&active).unwrap(),
        Path::new("rules.sieve")
    );

    for subject in ["Weekly report", "Lunch"] {
        let message = format!(
            "From: bob@example.test\r\nTo: ann@example.test\r\nSubject: {subject}\r\n\r\nhello\r\n"
        );
        let out = tree.inject(&["ann@example.test"], message.as_bytes());
        assert!(out.status.success(), "{}", stderr(&out));
    }
    let reports = maildir.join(".Reports");
    wait_until("both messages delivered", Duration::from_secs(20), || {
        (files_in(&reports) == 1 && files_in(&maildir) == 1).then_some(())
    });
    let filed = std::fs::read_to_string(&maildir_files(&reports)[0]).unwrap();
    assert!(filed.contains("Subject: Weekly report"), "{filed}");

    // A script that does not compile: line and column, nothing stored.
    std::fs::write(
        tree.dir.path().join("bad.sieve"),
        "require \"fileinto\";\nif true {\n  frobnicate;\n}\n",
    )
    .unwrap();
    let (ok, out) = sieve_connect(
        &tree,
        &server,
        &[
            "--localsieve",
            "bad.sieve",
            "--remotesieve",
            "bad",
            "--upload",
        ],
    );
    assert!(!ok, "{out}");
    assert!(out.contains("line 3, column 3"), "{out}");
    assert!(!maildir.join("sieve/bad.sieve").exists());
}

/// The other commands, through Python's managesieve module (PyPI).
#[test]
fn python_managesieve_drives_the_other_commands() {
    let tree = tree_with_ann();
    let server = Server::start(&tree, "sieve-serve", &[]);
    let script = r#"
import managesieve, os, sys
# The module knows only the RFC 5804 commands of its day.
for name in (b"RENAMESCRIPT", b"CHECKSCRIPT", b"NOOP"):
    managesieve.commands[name] = ("AUTH",)
m = managesieve.MANAGESIEVE("127.0.0.1", int(os.environ["PORT"]))
assert m.supports_tls, m.capabilities
typ, data = m.starttls(verify=False)
assert typ == "OK", (typ, data)
assert m.login("", "ann@example.test", "secret") == "OK"
assert m.havespace("one", 100) == "OK"
assert m.putscript("one", 'require "fileinto";\nfileinto "A";\n') == "OK"
assert m.putscript("two", "keep;\n") == "OK"
assert m.putscript("broken", "if {\n") == "NO"
typ, scripts = m.listscripts()
assert typ == "OK" and sorted(scripts) == [("one", False), ("two", False)], scripts
assert m.setactive("one") == "OK"
typ, scripts = m.listscripts()
assert sorted(scripts) == [("one", True), ("two", False)], scripts
typ, text = m.getscript("one")
assert typ == "OK" and text == 'require "fileinto";\nfileinto "A";\n', repr(text)
assert m.deletescript("one") == "NO", "the active script"
assert m.getscript("nothing")[0] == "NO"
assert m._simple_command(b"RENAMESCRIPT", b'"one"', b'"uno"') == "OK"
assert m._simple_command(b"RENAMESCRIPT", b'"two"', b'"uno"') == "NO"
typ, scripts = m.listscripts()
assert sorted(scripts) == [("two", False), ("uno", True)], scripts
assert m._simple_command(b"CHECKSCRIPT", managesieve.sieve_string("keep;")) == "OK"
assert m._simple_command(b"CHECKSCRIPT", managesieve.sieve_string("kep;")) == "NO"
assert m._simple_command(b"NOOP") == "OK"
assert m.setactive("") == "OK"
assert m.deletescript("uno") == "OK"
typ, scripts = m.listscripts()
assert scripts == [("two", False)], scripts
assert m.unauthenticate() == "OK"
assert m.logout() == "OK"
print("all good")
"#;
    let out = Command::new("python3")
        .arg("-c")
        .arg(script)
        .env("PORT", server.port.to_string())
        .output()
        .expect("python3 runs");
    let text = format!("{}{}", stdout(&out), stderr(&out));
    assert!(out.status.success() && text.contains("all good"), "{text}");
    let sieve = tree.maildir("ann").join("sieve");
    assert!(!sieve.join("active.sieve").exists());
    assert_eq!(
        std::fs::read_to_string(sieve.join("two.sieve")).unwrap(),
        "keep;\n"
    );
}

#[test]
fn errors_name_the_line_and_column_and_the_response_codes() {
    let tree = tree_with_ann();
    let server = Server::start(&tree, "sieve-serve", &[]);
    let mut c = Client::connect(server.port);
    assert!(
        c.command("LISTSCRIPTS")
            .starts_with("NO \"LISTSCRIPTS is not valid before login\"")
    );
    c.login();
    let reply = c.put("bad", "require \"fileinto\";\r\nkeep;\r\n  fileinto;\r\n");
    assert!(reply.starts_with("NO \"line 3, column 3:"), "{reply}");
    let reply = c.put("x", "require \"enotify\";\r\n");
    assert!(
        reply.starts_with("NO \"line 1, column 1: extension \\\"enotify\\\" is not supported"),
        "{reply}"
    );
    assert_eq!(c.put("x", "keep;"), "OK\r\n");
    assert_eq!(
        c.command("GETSCRIPT \"none\""),
        "NO (NONEXISTENT) \"there is no script \\\"none\\\"\"\r\n"
    );
    assert_eq!(c.command("GETSCRIPT \"x\""), "{5}\r\nkeep;\r\nOK\r\n");
    assert!(c.command("SETACTIVE \"x\"").starts_with("OK"));
    assert!(c.command("DELETESCRIPT \"x\"").starts_with("NO (ACTIVE)"));
    assert!(c.put("y", "stop;").starts_with("OK"));
    assert!(
        c.command("RENAMESCRIPT \"y\" \"x\"")
            .starts_with("NO (ALREADYEXISTS)")
    );
    assert!(
        c.command("PUTSCRIPT \"a/b\" \"keep;\"")
            .starts_with("NO \"bad script name")
    );
    assert_eq!(
        c.command("NOOP \"sync-1\""),
        "OK (TAG \"sync-1\") \"done\"\r\n"
    );
    assert!(c.command("FROBNICATE").starts_with("NO \"unknown command"));
    assert_eq!(c.command("UNAUTHENTICATE"), "OK\r\n");
    assert!(
        c.command("LISTSCRIPTS")
            .starts_with("NO \"LISTSCRIPTS is not valid before login\"")
    );
    assert!(c.command("LOGOUT").starts_with("OK"));
    assert!(c.closed());
}

#[test]
fn per_user_limits_answer_with_quota_codes() {
    let tree = tree_with_ann();
    configure(
        &tree,
        "sieve",
        &[("max_scripts", "2"), ("max_script_size", "100")],
    );
    let server = Server::start(&tree, "sieve-serve", &[]);
    let mut c = Client::connect(server.port);
    c.login();
    assert!(c.put("a", "keep;").starts_with("OK"));
    assert!(c.put("b", "keep;").starts_with("OK"));
    assert!(c.put("c", "keep;").starts_with("NO (QUOTA/MAXSCRIPTS)"));
    assert!(
        c.command("HAVESPACE \"c\" 10")
            .starts_with("NO (QUOTA/MAXSCRIPTS)")
    );
    // A new version of a script that exists fits.
    assert!(c.put("a", "stop;").starts_with("OK"));
    assert!(
        c.command("HAVESPACE \"a\" 101")
            .starts_with("NO (QUOTA/MAXSIZE)")
    );
    assert!(c.command("HAVESPACE \"a\" 100").starts_with("OK"));
    // Over the limit: read and dropped, and the session goes on.
    let big = format!("#{}\r\nkeep;\r\n", "x".repeat(5000));
    assert!(c.put("a", &big).starts_with("NO (QUOTA/MAXSIZE)"));
    assert!(c.command("NOOP").starts_with("OK"));
    assert_eq!(
        std::fs::read_to_string(tree.maildir("ann").join("sieve/a.sieve")).unwrap(),
        "stop;"
    );
}

#[test]
fn no_passwords_before_tls_and_bounded_input_before_login() {
    let tree = tree_with_ann();
    configure(&tree, "auth", &[("plaintext", "\"never\"")]);
    let server = Server::start(&tree, "sieve-serve", &[]);
    let mut c = Client::connect(server.port);
    let caps = c.command("CAPABILITY");
    assert!(caps.contains("\"SASL\" \"\"\r\n"), "{caps}");
    assert!(caps.contains("\"STARTTLS\"\r\n"), "{caps}");
    let reply = c.command(&format!("AUTHENTICATE \"PLAIN\" \"{ANN_PLAIN}\""));
    assert!(reply.starts_with("NO (ENCRYPT-NEEDED)"), "{reply}");
    assert!(
        !server.log.text().contains("authentication failed"),
        "the password was never checked"
    );

    // A literal larger than a login needs, before login: the session
    // ends without reading it.
    c.send(b"PUTSCRIPT \"x\" {100000+}\r\n");
    let reply = c.response();
    assert!(reply.starts_with("BYE \"at most 8192 bytes"), "{reply}");
    assert!(c.closed());

    // A literal too large to count is no smaller: its bytes (here a
    // command) are never read as commands.
    let mut c = Client::connect(server.port);
    c.send(b"CHECKSCRIPT {18446744073709551615+}\r\nNOOP \"smuggled\"\r\n");
    let reply = c.response();
    assert!(reply.starts_with("BYE \"at most 8192 bytes"), "{reply}");
    assert!(c.closed());

    // An over-long line before login ends it too, and one with no end at
    // once.
    let mut c = Client::connect(server.port);
    c.send(format!("NOOP \"{}\"\r\n", "x".repeat(10_000)).as_bytes());
    assert!(c.response().starts_with("BYE \"line too long"));
    assert!(c.closed());
    let mut c = Client::connect(server.port);
    c.send(format!("NOOP \"{}", "x".repeat(100_000)).as_bytes());
    assert!(c.response().starts_with("BYE \"line too long"));
    assert!(c.closed());
}

/// One connection on stdin/stdout, as inetd or systemd's Accept=yes run it.
#[test]
fn inetd_mode_serves_one_connection() {
    let tree = tree_with_ann();
    let mut child = spawn_inetd("sieve-serve", &tree);
    let mut stdin = child.stdin.take().unwrap();
    let script = "keep;\r\n";
    write!(
        stdin,
        "AUTHENTICATE \"PLAIN\" {{{}+}}\r\n{ANN_PLAIN}\r\nPUTSCRIPT \"mine\" {{{}+}}\r\n{script}\r\nSETACTIVE \"mine\"\r\nLISTSCRIPTS\r\nLOGOUT\r\n",
        ANN_PLAIN.len(),
        script.len()
    )
    .unwrap();
    drop(stdin);
    let out = child.wait_with_output().unwrap();
    let text = stdout(&out);
    assert!(out.status.success(), "{text}");
    assert!(
        text.ends_with("OK \"logged in\"\r\nOK\r\nOK\r\n\"mine\" ACTIVE\r\nOK\r\nOK \"bye\"\r\n"),
        "{text}"
    );
    assert_eq!(
        std::fs::read_to_string(tree.maildir("ann").join("sieve/active.sieve")).unwrap(),
        script
    );
}

/// The login back-off and the third failure ending the session are those
/// of the other servers.
#[test]
fn wrong_passwords_end_the_session_on_the_third() {
    let tree = tree_with_ann();
    let server = Server::start(&tree, "sieve-serve", &[]);
    let mut c = Client::connect(server.port);
    // \0ann@example.test\0wrong
    let wrong = "AGFubkBleGFtcGxlLnRlc3QAd3Jvbmc=";
    for _ in 0..2 {
        let reply = c.command(&format!("AUTHENTICATE \"PLAIN\" \"{wrong}\""));
        assert_eq!(reply, "NO \"authentication failed\"\r\n");
    }
    // The third, with the challenge: an empty string, then the response.
    c.send(b"AUTHENTICATE \"PLAIN\"\r\n");
    let mut challenge = String::new();
    c.reader.read_line(&mut challenge).unwrap();
    assert_eq!(challenge, "\"\"\r\n");
    let reply = c.command(&format!("\"{wrong}\""));
    assert!(reply.starts_with("BYE"), "{reply}");
    assert!(c.closed());
}

/// As contrib/systemd/sieve-serve.socket runs it: Accept=yes, the
/// connection on stdin/stdout, the peer from getpeername (loopback, so a
/// password may be sent without TLS).
#[test]
fn systemd_accept_yes_socket() {
    let tree = tree_with_ann();
    // systemd-socket-activate cannot bind port 0: it gets a base port.
    let activator = Server::start_with("systemd-socket-activate --inetd", 1, |base| {
        let mut command = Command::new("systemd-socket-activate");
        command
            .args(["--inetd", "-a", "-l", &format!("127.0.0.1:{base}")])
            .arg(crate::util::bin("sieve-serve"))
            .arg("--config")
            .arg(&tree.config);
        command
    });
    let mut c = Client::connect(activator.base);
    c.login();
    assert_eq!(c.put("via-socket", "keep;"), "OK\r\n");
    assert_eq!(c.command("LISTSCRIPTS"), "\"via-socket\"\r\nOK\r\n");
    assert!(c.command("LOGOUT").starts_with("OK"));
    assert!(c.closed());
}

#[test]
fn an_idle_client_is_told_and_disconnected() {
    let tree = tree_with_ann();
    configure(&tree, "limits", &[("idle_timeout", "\"1s\"")]);
    let server = Server::start(&tree, "sieve-serve", &[]);
    let mut c = Client::connect(server.port);
    c.login();
    // Nothing sent: the server speaks first once the second is up.
    assert_eq!(c.response(), "BYE \"idle too long, closing\"\r\n");
    assert!(c.closed());
}
