//! Two hosts, one tree, on a real shared filesystem (postroom-tree(5),
//! SEVERAL HOSTS). `contrib/multihost/run` makes a GlusterFS volume, mounts
//! it twice through the FUSE client and runs these tests with
//! `POSTROOM_MULTIHOST_MOUNTS=A:B` (and `POSTROOM_MULTIHOST_VOLUME`, which
//! the crash test mounts a third time for the host it kills). Each "host"
//! is its programs run through its own mount in a UTS namespace of its own
//! (`unshare --uts`), so host names differ as they do on real hosts.
//!
//! They need root, FUSE and a volume, so `cargo nextest run` skips them
//! (ignored); CI runs them through the script.

use std::collections::{BTreeMap, BTreeSet};
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

use crate::sink::{Behaviour, Sink};
use crate::util::{Server, bin, run_with, stderr, stdout, wait_until};

/// The two mounts of one volume.
fn mounts() -> (PathBuf, PathBuf) {
    let value = std::env::var("POSTROOM_MULTIHOST_MOUNTS")
        .expect("POSTROOM_MULTIHOST_MOUNTS=A:B (contrib/multihost/run sets it)");
    let (a, b) = value.split_once(':').expect("two mounts, A:B");
    (PathBuf::from(a), PathBuf::from(b))
}

/// One tree made through mount A, seen by each host through its own mount.
struct SharedTree {
    /// The tree's folder, relative to each mount.
    name: String,
    a: PathBuf,
    b: PathBuf,
}

impl SharedTree {
    fn new(extra_config: &str) -> SharedTree {
        let (a, b) = mounts();
        assert!(
            postroom::store::fsutil::is_shared_filesystem(&a),
            "{} is not a network or FUSE filesystem",
            a.display()
        );
        let name = format!("tree-{:016x}", rand::random::<u64>());
        let tree = SharedTree { name, a, b };
        let out = Command::new(bin("postroom"))
            .arg("init")
            .arg(tree.root("a"))
            .args(["--domain", "example.test"])
            .output()
            .unwrap();
        assert!(out.status.success(), "init: {}", stderr(&out));
        let mut config = std::fs::read_to_string(tree.config("a")).unwrap();
        config.push_str(extra_config);
        std::fs::write(tree.config("a"), config).unwrap();
        // Host B sees what host A wrote, through its own mount.
        wait_until("the tree through mount B", Duration::from_secs(10), || {
            tree.config("b").exists().then_some(())
        });
        let out = tree.postroom(
            "b",
            &[
                "user",
                "add",
                "ann@example.test",
                "--password",
                "{PLAIN}secret",
            ],
        );
        assert!(out.status.success(), "user add: {}", stderr(&out));
        tree
    }

    fn mount(&self, host: &str) -> &Path {
        if host == "a" { &self.a } else { &self.b }
    }

    fn root(&self, host: &str) -> PathBuf {
        self.mount(host).join(&self.name)
    }

    fn config(&self, host: &str) -> PathBuf {
        self.root(host).join("postroom.toml")
    }

    fn inbox(&self) -> PathBuf {
        self.root("a").join("mail/example.test/ann")
    }

    /// `program --config C ARGS` as host `host` would run it.
    fn command(&self, host: &str, program: &str, args: &[&str]) -> Command {
        let mut command = as_host(&format!("host-{host}"), &bin(program));
        command.arg("--config").arg(self.config(host)).args(args);
        command
    }

    fn postroom(&self, host: &str, args: &[&str]) -> Output {
        self.command(host, "postroom", args).output().unwrap()
    }

    fn inject(&self, host: &str, args: &[&str], message: &str) -> Output {
        run_with(self.command(host, "mail-inject", args), message.as_bytes())
    }

    /// A standalone server of host `host` on a port the kernel picks.
    fn server(&self, host: &str, program: &str) -> Server {
        Server::start_with(&format!("{program} on host-{host}"), 1, |_| {
            self.command(host, program, &["--listen", "127.0.0.1:0"])
        })
    }

    fn queue_len(&self) -> usize {
        let out = self.postroom("a", &["queue", "list", "--json"]);
        let list: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap_or_default();
        list.as_array().map_or(usize::MAX, Vec::len)
    }
}

impl Drop for SharedTree {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(self.root("a"));
    }
}

/// `program` in a UTS namespace of its own whose host name is `host`.
fn as_host(host: &str, program: &Path) -> Command {
    let mut command = Command::new("unshare");
    command
        .args([
            "--uts",
            "--",
            "sh",
            "-c",
            "hostname \"$0\" && exec \"$@\"",
            host,
        ])
        .arg(program);
    command
}

/// Every file in a maildir's new/ and cur/.
fn messages(maildir: &Path) -> Vec<PathBuf> {
    ["new", "cur"]
        .iter()
        .filter_map(|sub| std::fs::read_dir(maildir.join(sub)).ok())
        .flatten()
        .filter_map(|e| e.ok().map(|e| e.path()))
        .collect()
}

fn subject_of(path: &Path) -> String {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    text.lines()
        .find_map(|l| l.strip_prefix("Subject: "))
        .unwrap_or("")
        .trim()
        .to_string()
}

/// Sends `count` messages to ann with Python's smtplib over one session.
fn smtp_load(port: u16, tag: &str, count: usize) -> std::process::Child {
    Command::new("python3")
        .arg("-c")
        .arg(
            r#"
import smtplib, sys
port, tag, n = int(sys.argv[1]), sys.argv[2], int(sys.argv[3])
s = smtplib.SMTP("127.0.0.1", port, timeout=60)
for i in range(n):
    s.sendmail("load@remote.test", ["ann@example.test"],
               f"Subject: {tag}-{i}\r\nMessage-ID: <{tag}-{i}@load.test>\r\n\r\nbody {i}\r\n")
s.quit()
"#,
        )
        .args([&port.to_string(), tag, &count.to_string()])
        .stderr(Stdio::piped())
        .spawn()
        .unwrap()
}

#[test]
#[ignore = "needs a shared filesystem mounted twice: contrib/multihost/run runs it"]
fn multihost_smtp_on_both_hosts_delivers_every_message_exactly_once() {
    let tree = SharedTree::new("");
    let a = tree.server("a", "smtp-recv");
    let b = tree.server("b", "smtp-recv");
    let per = 40;
    let loads: Vec<_> = [
        (a.port, "a1"),
        (a.port, "a2"),
        (b.port, "b1"),
        (b.port, "b2"),
    ]
    .into_iter()
    .map(|(port, tag)| smtp_load(port, tag, per))
    .collect();
    for load in loads {
        let out = load.wait_with_output().unwrap();
        assert!(out.status.success(), "smtplib: {}", stderr(&out));
    }
    // Every 250 was a delivery already fsynced: the files are there now,
    // and through either mount.
    let files = messages(&tree.inbox());
    let subjects: BTreeSet<String> = files.iter().map(|f| subject_of(f)).collect();
    assert_eq!(files.len(), 4 * per, "one file per accepted message");
    assert_eq!(subjects.len(), 4 * per, "each message exactly once");
    let through_b = messages(&tree.root("b").join("mail/example.test/ann"));
    assert_eq!(through_b.len(), 4 * per);
    assert_eq!(tree.queue_len(), 0, "nothing left in the queue");
}

/// A sink on loopback and the config that routes all mail to it.
fn relay(behaviour: Behaviour) -> (Sink, String) {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    let sink = Sink::on(listener, behaviour).unwrap();
    let config = format!(
        "\n[send]\nconnect_timeout = \"2s\"\ncommand_timeout = \"10s\"\ndata_timeout = \"10s\"\n\
         [send.transports]\n\"*\" = \"[127.0.0.1]:{port}\"\n"
    );
    (sink, config)
}

fn queue_remote(tree: &SharedTree, host: &str, i: usize) {
    let message =
        format!("From: ann@example.test\nTo: r{i}@far.test\nSubject: remote-{i}\n\nbody {i}\n");
    let out = tree.inject(
        host,
        &["-odq", "-f", "ann@example.test", &format!("r{i}@far.test")],
        &message,
    );
    assert!(out.status.success(), "inject: {}", stderr(&out));
}

fn sink_subjects(sink: &Sink) -> BTreeMap<String, usize> {
    let mut counts = BTreeMap::new();
    for m in sink.messages() {
        let text = String::from_utf8_lossy(&m.data).into_owned();
        let subject = text
            .lines()
            .find_map(|l| l.strip_prefix("Subject: "))
            .unwrap_or("")
            .trim()
            .to_string();
        *counts.entry(subject).or_insert(0) += 1;
    }
    counts
}

#[test]
#[ignore = "needs a shared filesystem mounted twice: contrib/multihost/run runs it"]
fn multihost_queue_runners_on_both_hosts_send_each_message_once() {
    let (sink, config) = relay(Behaviour {
        // Slow enough that the two runners really overlap.
        delay_final: Duration::from_millis(40),
        ..Behaviour::default()
    });
    let tree = SharedTree::new(&config);
    let count = 40;
    for i in 0..count {
        queue_remote(&tree, if i % 2 == 0 { "a" } else { "b" }, i);
    }
    assert_eq!(tree.queue_len(), count);
    let runners: Vec<_> = ["a", "b"]
        .iter()
        .map(|host| {
            tree.command(host, "smtp-send", &["--once"])
                .stdout(Stdio::piped())
                .stderr(Stdio::piped())
                .spawn()
                .unwrap()
        })
        .collect();
    for runner in runners {
        let out = runner.wait_with_output().unwrap();
        assert!(
            out.status.success(),
            "smtp-send: {}{}",
            stdout(&out),
            stderr(&out)
        );
    }
    let counts = sink_subjects(&sink);
    assert_eq!(counts.len(), count, "every message sent: {counts:?}");
    let twice: Vec<_> = counts.iter().filter(|(_, n)| **n > 1).collect();
    assert!(twice.is_empty(), "sent twice: {twice:?}");
    assert_eq!(tree.queue_len(), 0);
}

#[test]
#[ignore = "needs a shared filesystem mounted twice: contrib/multihost/run runs it"]
fn multihost_a_lock_taken_through_one_mount_excludes_the_other() {
    let tree = SharedTree::new("");
    let path_a = tree.root("a").join("state/lock-test");
    let path_b = tree.root("b").join("state/lock-test");
    std::fs::create_dir_all(path_a.parent().unwrap()).unwrap();
    let held = postroom::store::fsutil::FileLock::exclusive(&path_a).unwrap();
    // flock(1) as host B, through the other mount: refused while A holds it.
    let try_b = || {
        as_host("host-b", Path::new("flock"))
            .args(["--nonblock", "--conflict-exit-code", "99"])
            .arg(&path_b)
            .arg("true")
            .status()
            .unwrap()
            .code()
    };
    assert_eq!(try_b(), Some(99), "host B took a lock host A holds");
    drop(held);
    assert_eq!(try_b(), Some(0), "host B cannot take the lock A released");
}

#[test]
#[ignore = "needs a shared filesystem mounted twice: contrib/multihost/run runs it"]
fn multihost_backoff_written_by_one_host_holds_for_the_other() {
    let (sink, config) = relay(Behaviour {
        data_reply: "451 4.3.0 try again later".into(),
        ..Behaviour::default()
    });
    let tree = SharedTree::new(&config);
    queue_remote(&tree, "a", 0);
    let out = tree
        .command("a", "smtp-send", &["--once"])
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", stderr(&out));
    let tried = *sink.connections.lock().unwrap();
    assert!(tried >= 1, "host A tried the message");
    // Host B's pass sees the retry time host A wrote: not due yet.
    let out = tree
        .command("b", "smtp-send", &["--once"])
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", stderr(&out));
    assert_eq!(
        *sink.connections.lock().unwrap(),
        tried,
        "host B retried before the backoff host A recorded"
    );
    assert_eq!(tree.queue_len(), 1, "the message waits in the queue");
}

#[test]
#[ignore = "needs a shared filesystem mounted twice: contrib/multihost/run runs it"]
fn multihost_imap_and_pop3_on_both_hosts_agree_while_mail_arrives() {
    let tree = SharedTree::new("");
    let imap_a = tree.server("a", "imap-serve");
    let imap_b = tree.server("b", "imap-serve");
    let pop3_b = tree.server("b", "pop3-serve");
    let inject = |host: &str| {
        format!(
            "unshare --uts -- sh -c 'hostname \"$0\" && exec \"$@\"' host-{host} {} --config {} ann@example.test",
            bin("mail-inject").display(),
            tree.config(host).display()
        )
    };
    let out = Command::new("python3")
        .arg("-c")
        .arg(
            r#"
import imaplib, poplib, os, re, subprocess, threading, time
A_PORT, B_PORT, POP_B = (int(os.environ[k]) for k in ("IMAP_A", "IMAP_B", "POP3_B"))
def inject(host, subject):
    msg = f"Subject: {subject}\nMessage-ID: <{subject}@load.test>\n\nhi\n"
    subprocess.run(os.environ["INJECT_" + host], shell=True, input=msg.encode(), check=True)
def login(port):
    M = imaplib.IMAP4("127.0.0.1", port)
    M.login("ann@example.test", "secret")
    assert M.select("INBOX")[0] == "OK"
    return M
A, B = login(A_PORT), login(B_PORT)
def deliveries(host, n):
    for i in range(n):
        inject(host, f"{host}-{i}")
threads = [threading.Thread(target=deliveries, args=(h, 25)) for h in ("A", "B")]
for t in threads: t.start()
# Both sessions keep working while the mail arrives.
while any(t.is_alive() for t in threads):
    for M in (A, B):
        assert M.noop()[0] == "OK"
        assert M.uid("SEARCH", "ALL")[0] == "OK"
for t in threads: t.join()
def view(M):
    assert M.noop()[0] == "OK"
    typ, data = M.uid("FETCH", "1:*", "(UID BODY.PEEK[HEADER.FIELDS (SUBJECT)])")
    assert typ == "OK", data
    seen = {}
    for item in data:
        if not isinstance(item, tuple):
            continue
        uid = int(re.search(rb"UID (\d+)", item[0]).group(1))
        subject = item[1].decode().split(":", 1)[1].strip()
        assert uid not in seen, ("UID twice", uid)
        seen[uid] = subject
    return seen
va, vb = view(A), view(B)
assert len(va) == 50, len(va)
assert len(set(va.values())) == 50, "a message under two UIDs"
assert va == vb, "the hosts' sessions disagree"
# A flag set on host A is seen on host B at its next NOOP.
first = min(va)
assert A.uid("STORE", str(first), "+FLAGS", "(\\Flagged)")[0] == "OK"
assert B.noop()[0] == "OK"
typ, data = B.uid("FETCH", str(first), "(FLAGS)")
assert b"\\Flagged" in b" ".join(d if isinstance(d, bytes) else d[0] for d in data), data
# POP3 on host B: every message, each with its own UIDL.
P = poplib.POP3("127.0.0.1", POP_B)
P.user("ann@example.test"); P.pass_("secret")
uidls = [line.split()[1] for line in P.uidl()[1]]
assert len(uidls) == 50 and len(set(uidls)) == 50, uidls
P.quit()
# IDLE on host B wakes for a delivery made on host A, which inotify on B
# cannot see: within the shared-filesystem poll.
B.send(b"i1 IDLE\r\n")
assert B.readline().startswith(b"+"), "no IDLE continuation"
started = time.monotonic()
inject("A", "late")
B.sock.settimeout(30)
while True:
    line = B.readline()
    assert line, "connection closed in IDLE"
    if b"EXISTS" in line:
        break
waited = time.monotonic() - started
B.send(b"DONE\r\n")
while not B.readline().startswith(b"i1 OK"):
    pass
print(f"idle woke after {waited:.1f} s")
# A message appended on each host is named after the host that wrote it.
for M, tag in ((A, "a"), (B, "b")):
    assert M.append("INBOX", None, None, f"Subject: appended-{tag}\r\n\r\nx\r\n".encode())[0] == "OK"
names = os.listdir(os.path.join(os.environ["MAILDIR"], "cur"))
for host in ("host-a", "host-b"):
    assert any(host in n for n in names), (host, names)
A.logout(); B.logout()
"#,
        )
        .env("IMAP_A", imap_a.port.to_string())
        .env("IMAP_B", imap_b.port.to_string())
        .env("POP3_B", pop3_b.port.to_string())
        .env("MAILDIR", tree.inbox())
        .env("INJECT_A", inject("a"))
        .env("INJECT_B", inject("b"))
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "python:\n{}{}",
        stdout(&out),
        stderr(&out)
    );
}

#[test]
#[ignore = "needs a shared filesystem mounted twice: contrib/multihost/run runs it"]
fn multihost_a_killed_host_leaves_its_queue_to_the_other() {
    let volume = std::env::var("POSTROOM_MULTIHOST_VOLUME")
        .expect("POSTROOM_MULTIHOST_VOLUME=HOST:/VOLUME (contrib/multihost/run sets it)");
    let (sink, config) = relay(Behaviour {
        // Each message takes a while, so the dying host is mid-queue.
        delay_final: Duration::from_millis(300),
        ..Behaviour::default()
    });
    let tree = SharedTree::new(&config);
    // The host to kill gets a mount of its own, so its death (the FUSE
    // client gone with the processes) is a whole host's.
    let mount = tempfile::tempdir().unwrap();
    let status = Command::new("mount")
        .args(["-t", "glusterfs", &volume])
        .arg(mount.path())
        .status()
        .unwrap();
    assert!(status.success(), "mount {volume}");
    let doomed_config = mount.path().join(&tree.name).join("postroom.toml");
    let count = 12;
    for i in 0..count {
        queue_remote(&tree, "b", i);
    }
    let mut doomed = as_host("host-doomed", &bin("smtp-send"));
    let mut doomed = doomed
        .arg("--config")
        .arg(&doomed_config)
        .arg("--once")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    wait_until("the doomed host at work", Duration::from_secs(30), || {
        (sink.messages().len() >= 2).then_some(())
    });
    // The host dies: its filesystem client first, as in a power cut, then
    // its programs, then the mount is gone.
    let client = Command::new("pgrep")
        .arg("-f")
        .arg(format!("glusterfs.*{}", mount.path().display()))
        .output()
        .unwrap();
    for pid in String::from_utf8_lossy(&client.stdout).split_whitespace() {
        let _ = Command::new("kill").args(["-9", pid]).status();
    }
    let _ = doomed.kill();
    let _ = doomed.wait();
    let _ = Command::new("umount").arg("-l").arg(mount.path()).status();
    // Each connection the dead host had open may have been waiting for
    // the reply to its final dot (RFC 5321 §6.1's window), and may also
    // have just had the 250 for the message before it: the connection's
    // worker takes its next message while the message's own task logs
    // that delivery, and the log write may not have reached the shared
    // filesystem. Those two per connection, and only those, may be sent
    // again.
    let open_connections = *sink.connections.lock().unwrap();
    // Host B finishes the queue once the dead client's locks are dropped.
    let deadline = Instant::now() + Duration::from_secs(120);
    while tree.queue_len() > 0 {
        assert!(
            Instant::now() < deadline,
            "host B could not finish the queue"
        );
        let out = tree
            .command("b", "smtp-send", &["--once"])
            .output()
            .unwrap();
        assert!(out.status.success(), "{}", stderr(&out));
    }
    let counts = sink_subjects(&sink);
    assert_eq!(
        counts.len(),
        count,
        "every queued message delivered: {counts:?}"
    );
    let twice = counts.values().filter(|n| **n > 1).count();
    assert!(
        twice <= 2 * open_connections,
        "{twice} sent twice, more than two for each of the dead host's {open_connections} connections: {counts:?}"
    );
}
