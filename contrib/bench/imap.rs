//! `postroom-bench imap`: imap-serve on a large folder, on loopback.
//!
//! Fills one INBOX with `--messages` messages of `--size` bytes on average
//! (written straight into `cur/` as a delivery would leave them, without
//! fsync: the figure is the server's, not the disk's), then times over one
//! connection: the first SELECT (which gives every message its UID), a
//! warm SELECT, `UID FETCH 1:* (FLAGS)`, `FETCH 1:* (ENVELOPE)` cold and
//! warm, SEARCH on a header, SORT and THREAD, a new session's SELECT of
//! the folder as it was left, the same SELECT in a new process as inetd
//! starts one per connection (median of 5) and that process's first
//! command (`FETCH 1 (FLAGS)`), and the server's RSS after
//! all that (and its peak, and after each step), and STORE +FLAGS /
//! -FLAGS.SILENT over the whole folder. Then the time from spawn to
//! greeting in inetd mode, the
//! multi-client figure (10 and 50 clients on 10 shared mailboxes, each
//! running `--rounds` of login, select, fetch, store, append, store,
//! expunge, logout: operations a second, the server's CPU per operation,
//! APPEND's median time, and every NO or BAD reply counted), and the
//! memory of one standalone process holding `--idle` sessions in IDLE,
//! each logged in with an INBOX of `--idle-messages` messages selected:
//! RSS, and the private memory (`/proc/PID/smaps_rollup`) per session.
//! Each figure with an issue's goal prints it beside.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use crate::server::{Server, inetd_greeting, ms};

use crate::bench_tree;

/// How big the folders and how many the sessions.
pub struct Sizes {
    /// Messages in the big folder.
    pub messages: usize,
    /// Their mean size.
    pub size: usize,
    /// Sessions in IDLE for the memory figure.
    pub idle: usize,
    /// Messages in the folder they have selected.
    pub idle_messages: usize,
}

pub fn run(base: &Path, sizes: Sizes, rounds: usize) -> anyhow::Result<()> {
    let Sizes {
        messages,
        size,
        idle,
        idle_messages,
    } = sizes;
    crate::smtp::raise_fd_limit(idle)?;
    let dir = base.join("imap");
    let config = make_tree(&dir, idle_messages)?;
    let serve = std::env::current_exe()?.with_file_name("imap-serve");
    let inbox = dir.join("mail/bench.test/sink");
    let start = Instant::now();
    fill(&inbox, messages, size)?;
    println!(
        "postroom-bench imap: {messages} messages written in {:.1} s, in {}",
        start.elapsed().as_secs_f64(),
        dir.display()
    );

    let server = Server::start(&serve, &config)?;
    let port = server.port;
    let idle_rss = crate::smtp::rss_kib(server.child.id())?;
    let mut client = Client::connect(port)?;
    client.run("LOGIN sink@bench.test x")?;
    let (first, _) = client.run("SELECT INBOX")?;
    // The server's RSS after each step: where the memory stays.
    let mut steps = vec![("SELECT", crate::smtp::rss_kib(server.child.id())?)];
    let mut selects = Vec::new();
    for _ in 0..3 {
        client.run("UNSELECT")?;
        selects.push(client.run("SELECT INBOX")?.0);
    }
    selects.sort();
    println!(
        "SELECT of {messages}: first {:.0} ms (gives every message its UID), warm {:.0} ms",
        ms(first),
        ms(selects[1])
    );
    let (flags, out) = client.run("UID FETCH 1:* (FLAGS)")?;
    steps.push(("FLAGS", crate::smtp::rss_kib(server.child.id())?));
    anyhow::ensure!(
        out.matches(" FETCH (").count() == messages,
        "FETCH FLAGS returned {} lines",
        out.matches(" FETCH (").count()
    );
    println!(
        "UID FETCH 1:* (FLAGS): {:.0} ms (goal <= 85 ms, Dovecot's)",
        ms(flags)
    );
    let (cold, _) = client.run("FETCH 1:* (ENVELOPE)")?;
    steps.push(("ENVELOPE cold", crate::smtp::rss_kib(server.child.id())?));
    let (warm, out) = client.run("FETCH 1:* (ENVELOPE)")?;
    steps.push(("ENVELOPE warm", crate::smtp::rss_kib(server.child.id())?));
    println!(
        "FETCH 1:* (ENVELOPE): first {:.0} ms, again {:.0} ms ({:.1} MB sent)",
        ms(cold),
        ms(warm),
        out.len() as f64 / 1e6
    );
    let needle = messages * 7 / 10;
    let (search, out) = client.run(&format!("SEARCH HEADER Subject \"needle {needle}\""))?;
    anyhow::ensure!(
        out.contains(&format!("* SEARCH {}", needle + 1)),
        "SEARCH found the wrong message: {}",
        out.lines().next().unwrap_or_default()
    );
    let (search_from, _) = client.run("SEARCH FROM \"nobody-matches\"")?;
    steps.push(("SEARCH", crate::smtp::rss_kib(server.child.id())?));
    println!(
        "SEARCH HEADER Subject: {:.0} ms; SEARCH FROM (no match): {:.0} ms",
        ms(search),
        ms(search_from)
    );
    let (sort, _) = client.run("SORT (DATE) UTF-8 ALL")?;
    steps.push(("SORT", crate::smtp::rss_kib(server.child.id())?));
    let (thread, _) = client.run("THREAD REFERENCES UTF-8 ALL")?;
    steps.push(("THREAD", crate::smtp::rss_kib(server.child.id())?));
    println!(
        "SORT (DATE) of {messages}: {:.0} ms; THREAD REFERENCES: {:.0} ms",
        ms(sort),
        ms(thread)
    );
    // A new session's SELECT of the folder as the last one left it.
    let mut again = Client::connect(port)?;
    again.run("LOGIN sink@bench.test x")?;
    let (fresh, _) = again.run("SELECT INBOX")?;
    again.run("LOGOUT")?;
    println!(
        "SELECT in a new session, folder unchanged: {:.1} ms (goal < 5 ms)",
        ms(fresh)
    );
    // The same in a new process, as inetd runs one per connection: no
    // state in memory, only what the folder's files (its index) say.
    // Then its first command, which is where the folder's messages are
    // read when SELECT answered from the index's header alone.
    let (mut spawned, mut then) = (Vec::new(), Vec::new());
    for _ in 0..5 {
        let (mut inetd, mut child) = Client::spawn(&serve, &config)?;
        inetd.run("LOGIN sink@bench.test x")?;
        let (took, out) = inetd.run("SELECT INBOX")?;
        anyhow::ensure!(
            out.contains(&format!("* {messages} EXISTS")),
            "SELECT in a new process: {}",
            out.lines().next().unwrap_or_default()
        );
        spawned.push(took);
        then.push(inetd.run("FETCH 1 (FLAGS)")?.0);
        inetd.run("LOGOUT")?;
        child.wait()?;
    }
    spawned.sort();
    then.sort();
    println!(
        "SELECT in a new process (inetd), folder unchanged: median {:.1} ms, range {:.1}-{:.1} ms of {} (goal < 5 ms); its first command, FETCH 1 (FLAGS): median {:.1} ms, range {:.1}-{:.1} ms",
        ms(spawned[spawned.len() / 2]),
        ms(spawned[0]),
        ms(spawned[spawned.len() - 1]),
        spawned.len(),
        ms(then[then.len() / 2]),
        ms(then[0]),
        ms(then[then.len() - 1]),
    );
    let rss = crate::smtp::rss_kib(server.child.id())?;
    let peak = crate::smtp::status_kib(server.child.id(), "VmHWM:")?;
    let steps: Vec<String> = steps
        .iter()
        .map(|(step, kib)| format!("{step} {:.1}", *kib as f64 / 1024.0))
        .collect();
    println!("RSS after each step, MB: {}", steps.join(", "));
    println!(
        "RSS with one session after these: {:.1} MB, {:.1} MB above the idle process's {:.1} MB (goal < 50 MB above); peak {:.1} MB",
        rss as f64 / 1024.0,
        rss.saturating_sub(idle_rss) as f64 / 1024.0,
        idle_rss as f64 / 1024.0,
        peak as f64 / 1024.0
    );
    // A flag change over the whole folder (a third is \Seen already):
    // the renames of one command, and the sync after them.
    let (seen, _) = client.run("STORE 1:* +FLAGS (\\Seen)")?;
    let (unseen, _) = client.run("STORE 1:* -FLAGS.SILENT (\\Seen)")?;
    println!(
        "STORE 1:* +FLAGS (\\Seen) of {messages}: {:.0} ms; STORE 1:* -FLAGS.SILENT (\\Seen): {:.0} ms",
        ms(seen),
        ms(unseen)
    );
    client.run("LOGOUT")?;
    drop(server);

    let greeting = inetd_greeting(&serve, &config, "* OK", b"a LOGOUT\r\n", 50)?;
    println!(
        "inetd connect-to-greeting: median {:.2} ms, p99 {:.2} ms (process start included)",
        ms(greeting.0),
        ms(greeting.1)
    );

    let server = Server::start(&serve, &config)?;
    for clients in [10, 50] {
        mixed(&server, clients, rounds)?;
    }
    drop(server);

    let server = Server::start(&serve, &config)?;
    let port = server.port;
    // One session first, so the figure is what each further one adds.
    let mut first = Client::connect(port)?;
    first.run("LOGIN idle@bench.test x")?;
    first.run("SELECT INBOX")?;
    let before = crate::smtp::rss_kib(server.child.id())?;
    let private_before = private_kib(server.child.id())?;
    let mut held: Vec<TcpStream> = Vec::with_capacity(idle);
    let start = Instant::now();
    // In batches, each read up to its "+ idling" before the next connects:
    // 10,000 connects at once would overflow the listen backlog.
    while held.len() < idle {
        let batch = (idle - held.len()).min(250);
        let first = held.len();
        for _ in 0..batch {
            let mut stream = TcpStream::connect(("127.0.0.1", port))?;
            stream.write_all(b"a LOGIN idle@bench.test x\r\nb SELECT INBOX\r\nc IDLE\r\n")?;
            held.push(stream);
        }
        for stream in &mut held[first..] {
            let mut reader = BufReader::new(&*stream);
            let mut line = String::new();
            loop {
                line.clear();
                anyhow::ensure!(reader.read_line(&mut line)? > 0, "session closed");
                if line.starts_with("+ ") {
                    break;
                }
            }
        }
    }
    let after = crate::smtp::rss_kib(server.child.id())?;
    let private_after = private_kib(server.child.id())?;
    let per = |a: u64, b: u64| a.saturating_sub(b) as f64 / idle.max(1) as f64;
    println!(
        "{idle} sessions in IDLE on {idle_messages}-message INBOXes, one standalone process: RSS {:.1} MB (with one session {:.1} MB), {:.1} KB RSS and {:.1} KB private per session (goal < 50 KB; < 500 MB for 10,000); set up in {:.1} s",
        after as f64 / 1024.0,
        before as f64 / 1024.0,
        per(after, before),
        per(private_after, private_before),
        start.elapsed().as_secs_f64()
    );
    drop(first);
    Ok(())
}

/// The process's private memory in KiB: pages no other process shares
/// (`Private_Clean` + `Private_Dirty` of `/proc/PID/smaps_rollup`).
fn private_kib(pid: u32) -> anyhow::Result<u64> {
    let rollup = std::fs::read_to_string(format!("/proc/{pid}/smaps_rollup"))?;
    let field = |name: &str| -> u64 {
        rollup
            .lines()
            .find_map(|l| l.strip_prefix(name))
            .and_then(|v| v.split_whitespace().next())
            .and_then(|v| v.parse().ok())
            .unwrap_or(0)
    };
    Ok(field("Private_Clean:") + field("Private_Dirty:"))
}

/// Mailboxes the multi-client figure's clients share.
const MIXED_USERS: usize = 10;

fn make_tree(dir: &Path, idle_messages: usize) -> anyhow::Result<PathBuf> {
    let config = bench_tree(dir)?;
    let bin = std::env::current_exe()?.with_file_name("postroom");
    let users =
        std::iter::once("idle".to_string()).chain((0..MIXED_USERS).map(|i| format!("mix{i}")));
    for user in users {
        let status = Command::new(&bin)
            .arg("--config")
            .arg(&config)
            .args([
                "user",
                "add",
                &format!("{user}@bench.test"),
                "--password",
                "{PLAIN}x",
            ])
            .stdout(Stdio::null())
            .status()?;
        anyhow::ensure!(status.success(), "postroom user add failed");
        let n = if user == "idle" { idle_messages } else { 10 };
        fill(&dir.join(format!("mail/bench.test/{user}")), n, 2048)?;
    }
    crate::lift_connection_caps(&config)?;
    Ok(config)
}

/// What the clients of the multi-client figure counted.
#[derive(Default)]
struct Tally {
    ops: usize,
    no: usize,
    bad: usize,
    /// The first few NO/BAD replies, to print.
    examples: Vec<String>,
    appends: Vec<Duration>,
}

/// `clients` clients at once, `rounds` rounds each, client i on mailbox
/// i mod [`MIXED_USERS`]: several clients share each mailbox, as mail
/// clients on a phone and a desktop do.
fn mixed(server: &Server, clients: usize, rounds: usize) -> anyhow::Result<()> {
    let port = server.port;
    let cpu_before = cpu_ticks(server.child.id())?;
    let start = Instant::now();
    let workers: Vec<_> = (0..clients)
        .map(|i| std::thread::spawn(move || mixed_client(port, i % MIXED_USERS, rounds)))
        .collect();
    let mut all = Tally::default();
    for w in workers {
        let t = w
            .join()
            .map_err(|_| anyhow::anyhow!("a client thread panicked"))??;
        all.ops += t.ops;
        all.no += t.no;
        all.bad += t.bad;
        all.appends.extend(t.appends);
        for e in t.examples {
            if all.examples.len() < 5 {
                all.examples.push(e);
            }
        }
    }
    let took = start.elapsed();
    let cpu = cpu_ticks(server.child.id())?.saturating_sub(cpu_before);
    all.appends.sort();
    let median = all
        .appends
        .get(all.appends.len() / 2)
        .copied()
        .unwrap_or_default();
    println!(
        "{clients} clients x {rounds} rounds (login select fetch store append store expunge logout): {:.0} ops/s, server CPU {:.2} ms/op, APPEND median {:.1} ms, NO {} BAD {}",
        all.ops as f64 / took.as_secs_f64(),
        cpu as f64 * 10.0 / all.ops.max(1) as f64,
        ms(median),
        all.no,
        all.bad
    );
    for e in &all.examples {
        println!("  unexpected: {}", e.trim_end());
    }
    Ok(())
}

fn mixed_client(port: u16, user: usize, rounds: usize) -> anyhow::Result<Tally> {
    let mut t = Tally::default();
    let message = format!(
        "From: bench <b@bench.test>\r\nSubject: mixed {user}\r\n\r\n{}",
        "Lorem ipsum dolor sit amet, consectetur adipiscing elit.\r\n".repeat(30)
    );
    for _ in 0..rounds {
        let mut client = Client::connect(port)?;
        let step = |client: &mut Client, command: &str, t: &mut Tally| -> anyhow::Result<String> {
            let (took, status, out) = client.status_of(command)?;
            t.ops += 1;
            match status.as_str() {
                "OK" => {}
                "NO" => t.no += 1,
                _ => t.bad += 1,
            }
            if status != "OK" && t.examples.len() < 5 {
                t.examples
                    .push(format!("{command}: {}", out.lines().last().unwrap_or("")));
            }
            if command.starts_with("APPEND") {
                t.appends.push(took);
            }
            Ok(out)
        };
        step(
            &mut client,
            &format!("LOGIN mix{user}@bench.test x"),
            &mut t,
        )?;
        step(&mut client, "SELECT INBOX", &mut t)?;
        // ENVELOPE reads the file of a message not cached yet: one another
        // client expunged since this one's last sync must not fail it.
        step(&mut client, "FETCH 1:* (UID FLAGS ENVELOPE)", &mut t)?;
        step(&mut client, "STORE 1 +FLAGS (\\Seen)", &mut t)?;
        let out = step(
            &mut client,
            &format!("APPEND INBOX {{{}+}}\r\n{message}", message.len()),
            &mut t,
        )?;
        let uid = out
            .split("[APPENDUID ")
            .nth(1)
            .and_then(|r| r.split([' ', ']']).nth(1))
            .unwrap_or("0")
            .to_string();
        step(
            &mut client,
            &format!("UID STORE {uid} +FLAGS (\\Deleted)"),
            &mut t,
        )?;
        step(&mut client, &format!("UID EXPUNGE {uid}"), &mut t)?;
        step(&mut client, "LOGOUT", &mut t)?;
    }
    Ok(t)
}

/// The process's user and system CPU time so far, in clock ticks (1/100 s).
fn cpu_ticks(pid: u32) -> anyhow::Result<u64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat"))?;
    // After the command name in parentheses: state is field 3, utime 14.
    let rest = stat.rsplit_once(") ").map(|(_, r)| r).unwrap_or("");
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let tick = |i: usize| {
        fields
            .get(i)
            .and_then(|f| f.parse::<u64>().ok())
            .unwrap_or(0)
    };
    Ok(tick(11) + tick(12))
}

/// Writes `n` messages of `size` bytes on average (from a quarter of it
/// to 1.75 times it) into `maildir/cur`, named and sized as maildir.rs
/// names them, a third of them \Seen.
fn fill(maildir: &Path, n: usize, size: usize) -> anyhow::Result<()> {
    for sub in ["cur", "new", "tmp"] {
        std::fs::create_dir_all(maildir.join(sub))?;
    }
    let now = postroom::store::fsutil::now_secs();
    let line = "Lorem ipsum dolor sit amet, consectetur adipiscing elit, sed do eiusmod tempor.\n";
    let lines = |i: usize| {
        // Spread evenly (a fixed stride through 0..1000), mean `size`.
        let spread = (i * 7919) % 1000;
        (size / 4 + size * 3 * spread / 2000) / line.len()
    };
    let longest = line.repeat(lines(0).max((size * 7 / 4) / line.len() + 1));
    for i in 0..n {
        let body = &longest[..lines(i) * line.len()];
        let text = format!(
            "Return-Path: <sender{i}@remote.test>\nDelivered-To: sink@bench.test\nDate: Mon, 23 Nov 2026 04:00:00 +0000\nFrom: \"Sender {i}\" <sender{i}@remote.test>\nTo: sink@bench.test\nSubject: needle {i}\nMessage-ID: <{i}@remote.test>\nMIME-Version: 1.0\nContent-Type: text/plain; charset=us-ascii\n\n{body}"
        );
        let lines = text.matches('\n').count();
        let seen = if i % 3 == 0 { "S" } else { "" };
        let name = format!(
            "{}.M{i}P1.bench,S={},W={}:2,{seen}",
            now - (n - i) as u64,
            text.len(),
            text.len() + lines
        );
        std::fs::write(maildir.join("cur").join(name), text)?;
    }
    Ok(())
}

/// One IMAP connection that runs a command and reads to its tagged reply:
/// over TCP to a standalone server, or over the pipes of a process
/// started as inetd starts one.
struct Client {
    stream: Box<dyn Write>,
    reader: BufReader<Box<dyn Read>>,
    tag: u32,
}

impl Client {
    fn connect(port: u16) -> anyhow::Result<Client> {
        let stream = TcpStream::connect(("127.0.0.1", port))?;
        stream.set_nodelay(true)?;
        let reader = Box::new(stream.try_clone()?);
        Client::greeted(Box::new(stream), reader)
    }

    /// imap-serve in inetd mode: a new process for this one session.
    fn spawn(serve: &Path, config: &Path) -> anyhow::Result<(Client, std::process::Child)> {
        let mut child = Command::new(serve)
            .arg("--config")
            .arg(config)
            // From loopback, where LOGIN is allowed without TLS.
            .env("REMOTE_ADDR", "127.0.0.1")
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()?;
        let (Some(stdin), Some(stdout)) = (child.stdin.take(), child.stdout.take()) else {
            anyhow::bail!("imap-serve has no pipes");
        };
        Ok((Client::greeted(Box::new(stdin), Box::new(stdout))?, child))
    }

    fn greeted(stream: Box<dyn Write>, reader: Box<dyn Read>) -> anyhow::Result<Client> {
        let mut reader = BufReader::with_capacity(1 << 20, reader);
        let mut greeting = String::new();
        reader.read_line(&mut greeting)?;
        anyhow::ensure!(greeting.starts_with("* OK"), "greeting: {greeting}");
        Ok(Client {
            stream,
            reader,
            tag: 0,
        })
    }

    /// (time to the tagged OK, everything received).
    fn run(&mut self, command: &str) -> anyhow::Result<(Duration, String)> {
        let (took, status, out) = self.status_of(command)?;
        anyhow::ensure!(
            status == "OK",
            "{command}: {}",
            out.lines().last().unwrap_or("")
        );
        Ok((took, out))
    }

    /// (time to the tagged reply, its status word, everything received).
    fn status_of(&mut self, command: &str) -> anyhow::Result<(Duration, String, String)> {
        self.tag += 1;
        let tag = format!("t{}", self.tag);
        let start = Instant::now();
        self.stream
            .write_all(format!("{tag} {command}\r\n").as_bytes())?;
        self.stream.flush()?;
        let mut out = Vec::new();
        let mut line = Vec::new();
        loop {
            line.clear();
            anyhow::ensure!(
                self.reader.read_until(b'\n', &mut line)? > 0,
                "connection closed during {command}"
            );
            // A literal's bytes follow its announcing line.
            if let Some(n) = literal_size(&line) {
                out.extend_from_slice(&line);
                let mut literal = vec![0; n];
                self.reader.read_exact(&mut literal)?;
                out.extend_from_slice(&literal);
                continue;
            }
            out.extend_from_slice(&line);
            if line.starts_with(format!("{tag} ").as_bytes()) {
                let text = String::from_utf8_lossy(&line).into_owned();
                let status = text.split(' ').nth(1).unwrap_or("").to_string();
                return Ok((
                    start.elapsed(),
                    status,
                    String::from_utf8_lossy(&out).into_owned(),
                ));
            }
        }
    }
}

fn literal_size(line: &[u8]) -> Option<usize> {
    let line = line.strip_suffix(b"\r\n")?.strip_suffix(b"}")?;
    let open = line.iter().rposition(|&b| b == b'{')?;
    std::str::from_utf8(&line[open + 1..]).ok()?.parse().ok()
}
