//! `postroom-bench pop3`: pop3-serve on loopback.
//!
//! Prints: the rate at which one client fetches a whole mailbox (LIST, then
//! RETR of every message; 1,000 messages of 20 KiB by default) in MB/s of
//! message octets, and the total for 8 clients on 8 mailboxes at once; the
//! time from connect to the first line of the LIST reply on a 10,000-message
//! mailbox (greeting, USER, PASS with its snapshot, LIST), for a warm
//! standalone server and for a process per connection as inetd runs it;
//! and the resident memory a standalone server spends per session, idle
//! before login and logged in.
//!
//! The mailboxes are written directly (names with `,S=` and `,W=`, as
//! delivery writes them, but not fsynced): this measures reading, not the
//! disk's fsync rate.

use std::io::{BufRead, BufReader, Write};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::Context;

use crate::server::{Server, ms};

use crate::bench_tree;
use crate::smtp::{raise_fd_limit, rss_kib};

/// Mailboxes the parallel figure reads, one client each.
const PARALLEL: usize = 8;

pub fn run(
    base: &Path,
    messages: usize,
    size: usize,
    big: usize,
    sessions: usize,
) -> anyhow::Result<()> {
    // Each held session costs the client two descriptors (socket, reader).
    raise_fd_limit(2 * sessions)?;
    let dir = base.join("pop3");
    let config = make_tree(&dir)?;
    let serve = std::env::current_exe()?.with_file_name("pop3-serve");
    println!(
        "postroom-bench pop3: {messages} messages of {size} bytes per mailbox, {big} in the big one, in {}",
        dir.display()
    );
    let mut octets_per_box = 0;
    for b in 0..PARALLEL {
        octets_per_box = fill(&mailbox(&dir, &format!("box{b}")), messages, size)?;
    }
    fill(&mailbox(&dir, "big"), big, 2048)?;

    let server = Server::start(&serve, &config)?;
    let port = server.port;
    // Round 1 also moves every message to cur/ with the Seen flag; the
    // best of three is the steady state.
    let mut one = Vec::new();
    for _ in 0..3 {
        let start = Instant::now();
        let got = fetch_all(port, "box0")?;
        anyhow::ensure!(
            got == octets_per_box,
            "fetched {got}, expected {octets_per_box}"
        );
        one.push(got as f64 / start.elapsed().as_secs_f64() / 1e6);
    }
    println!(
        "1 client, LIST + RETR of {messages} x {size} B: {:.0} MB/s (rounds: {})",
        best(&one),
        rounds(&one)
    );
    let mut parallel = Vec::new();
    for _ in 0..3 {
        let start = Instant::now();
        let total = std::thread::scope(|scope| -> anyhow::Result<u64> {
            let clients: Vec<_> = (0..PARALLEL)
                .map(|b| scope.spawn(move || fetch_all(port, &format!("box{b}"))))
                .collect();
            let mut total = 0;
            for c in clients {
                total += c.join().map_err(|_| anyhow::anyhow!("client panicked"))??;
            }
            Ok(total)
        })?;
        anyhow::ensure!(total == octets_per_box * PARALLEL as u64, "short fetch");
        parallel.push(total as f64 / start.elapsed().as_secs_f64() / 1e6);
    }
    println!(
        "{PARALLEL} clients on {PARALLEL} mailboxes at once: {:.0} MB/s in all (rounds: {})",
        best(&parallel),
        rounds(&parallel)
    );

    let mut times = Vec::new();
    for _ in 0..30 {
        let start = Instant::now();
        let stream = TcpStream::connect(("127.0.0.1", port))?;
        first_list(stream.try_clone()?, stream, "big", big)?;
        times.push(start.elapsed());
    }
    let (median, p95) = spread(times);
    println!(
        "connect to first LIST line, {big} messages, standalone: median {:.1} ms, p95 {:.1} ms",
        ms(median),
        ms(p95)
    );
    let mut times = Vec::new();
    for _ in 0..20 {
        let start = Instant::now();
        let mut child = Command::new(&serve)
            .arg("--config")
            .arg(&config)
            .env("REMOTE_ADDR", "127.0.0.1")
            .env("POSTROOM_LOG", "warn")
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()?;
        let stdin = child.stdin.take().context("stdin")?;
        let stdout = child.stdout.take().context("stdout")?;
        first_list(stdout, stdin, "big", big)?;
        times.push(start.elapsed());
        let _ = child.kill();
        let _ = child.wait();
    }
    let (median, p95) = spread(times);
    println!(
        "spawn to first LIST line, {big} messages, inetd (a process per connection): median {:.1} ms, p95 {:.1} ms",
        ms(median),
        ms(p95)
    );
    drop(server);

    // Memory: a fresh server for each figure, since freed session memory
    // stays in the process and would hide the next figure's cost.
    let before_login = rss_per_session(&serve, &config, sessions, None)?;
    let logged_in = rss_per_session(&serve, &config, sessions, Some("box"))?;
    let big_sessions = (sessions / 10).max(1);
    let on_big = rss_per_session(&serve, &config, big_sessions, Some("big"))?;
    println!(
        "RSS per session: {:.1} KB before login, {:.1} KB logged in on {messages} messages, {:.1} KB logged in on {big} messages ({sessions}, {sessions} and {big_sessions} sessions held; idle server {:.1} MB)",
        before_login.0,
        logged_in.0,
        on_big.0,
        before_login.1 as f64 / 1024.0
    );
    Ok(())
}

/// (KB per session, idle server KiB) with `count` sessions held open on a
/// fresh server: greeted only, or logged in to `box0..box7` round robin
/// (`Some("box")`) or to `big`.
fn rss_per_session(
    serve: &Path,
    config: &Path,
    count: usize,
    user: Option<&str>,
) -> anyhow::Result<(f64, u64)> {
    let server = Server::start(serve, config)?;
    let port = server.port;
    let pid = server.child.id();
    let before = rss_kib(pid)?;
    let mut held = Vec::with_capacity(count);
    for i in 0..count {
        let mut stream = TcpStream::connect(("127.0.0.1", port))?;
        let mut reader = BufReader::new(stream.try_clone()?);
        expect_ok(&mut reader)?;
        match user {
            None => {}
            Some("box") => login(&mut stream, &mut reader, &format!("box{}", i % PARALLEL))?,
            Some(user) => login(&mut stream, &mut reader, user)?,
        }
        held.push((stream, reader));
    }
    let after = rss_kib(pid)?;
    Ok((after.saturating_sub(before) as f64 / count as f64, before))
}

fn make_tree(dir: &Path) -> anyhow::Result<PathBuf> {
    let config = bench_tree(dir)?;
    crate::lift_connection_caps(&config)?;
    let mut users = Vec::new();
    for name in (0..PARALLEL)
        .map(|b| format!("box{b}"))
        .chain(["big".to_string()])
    {
        users.push(postroom::directory::users::NewUser {
            address: postroom::proto::address::Address::parse(&format!("{name}@bench.test"))?,
            password_hash: "{PLAIN}x".into(),
            quota: None,
        });
    }
    postroom::directory::users::add_users(&dir.join("users"), &users)?;
    Ok(config)
}

fn mailbox(dir: &Path, user: &str) -> PathBuf {
    dir.join("mail/bench.test").join(user)
}

/// Writes `count` messages of about `size` bytes; returns their total
/// size on the wire.
fn fill(root: &Path, count: usize, size: usize) -> anyhow::Result<u64> {
    postroom::store::maildir::Maildir::new(root).create()?;
    let mut text = b"From: bench@bench.test\nSubject: bench\n\n".to_vec();
    let mut line = 0;
    while text.len() < size {
        // A dot line now and then, so dot-stuffing is on the path.
        if line % 50 == 0 {
            text.extend_from_slice(b".\n");
        }
        text.extend_from_slice(
            format!("{line:>6} The quick brown fox jumps over the lazy dog, again and again.\n")
                .as_bytes(),
        );
        line += 1;
    }
    let wire = postroom::store::maildir::pop3_size(&mut &text[..])?;
    let now = postroom::store::fsutil::now_secs();
    for i in 0..count {
        let name = format!(
            "{}.M{i}P{}.bench,S={},W={wire}",
            now - count as u64 + i as u64,
            std::process::id(),
            text.len()
        );
        std::fs::write(root.join("new").join(name), &text)?;
    }
    Ok(wire * count as u64)
}

/// Logs in to `user`, lists, fetches everything; returns octets received
/// (dot-stuffing undone, as a client stores them).
fn fetch_all(port: u16, user: &str) -> anyhow::Result<u64> {
    let mut stream = TcpStream::connect(("127.0.0.1", port))?;
    stream.set_nodelay(true)?;
    let mut reader = BufReader::with_capacity(64 * 1024, stream.try_clone()?);
    expect_ok(&mut reader)?;
    login(&mut stream, &mut reader, user)?;
    stream.write_all(b"LIST\r\n")?;
    expect_ok(&mut reader)?;
    let mut count = 0;
    read_body(&mut reader, |_| count += 1)?;
    let mut octets = 0u64;
    for n in 1..=count {
        stream.write_all(format!("RETR {n}\r\n").as_bytes())?;
        expect_ok(&mut reader)?;
        read_body(&mut reader, |line| {
            octets += line.len() as u64 - u64::from(line.starts_with(b"."))
        })?;
    }
    stream.write_all(b"QUIT\r\n")?;
    expect_ok(&mut reader)?;
    Ok(octets)
}

/// Greeting, USER, PASS and LIST up to the first line of its reply.
fn first_list(
    input: impl std::io::Read,
    mut output: impl Write,
    user: &str,
    expect: usize,
) -> anyhow::Result<()> {
    let mut reader = BufReader::new(input);
    expect_ok(&mut reader)?;
    // Pipelined, as a client that knows CAPA PIPELINING would.
    output.write_all(format!("USER {user}@bench.test\r\nPASS x\r\nLIST\r\n").as_bytes())?;
    expect_ok(&mut reader)?;
    expect_ok(&mut reader)?;
    let line = expect_ok(&mut reader)?;
    anyhow::ensure!(
        line.starts_with(&format!("+OK {expect} messages")),
        "unexpected LIST reply {line:?}"
    );
    Ok(())
}

fn login(stream: &mut TcpStream, reader: &mut impl BufRead, user: &str) -> anyhow::Result<()> {
    stream.write_all(format!("USER {user}@bench.test\r\nPASS x\r\n").as_bytes())?;
    expect_ok(reader)?;
    expect_ok(reader)?;
    Ok(())
}

fn expect_ok(reader: &mut impl BufRead) -> anyhow::Result<String> {
    let mut line = String::new();
    anyhow::ensure!(reader.read_line(&mut line)? > 0, "connection closed");
    anyhow::ensure!(line.starts_with("+OK"), "expected +OK, got {line:?}");
    Ok(line)
}

/// Reads a multi-line body up to its "." line.
fn read_body(reader: &mut impl BufRead, mut each: impl FnMut(&[u8])) -> anyhow::Result<()> {
    let mut line = Vec::with_capacity(256);
    loop {
        line.clear();
        anyhow::ensure!(
            reader.read_until(b'\n', &mut line)? > 0,
            "connection closed"
        );
        if line == b".\r\n" {
            return Ok(());
        }
        each(&line);
    }
}

fn best(rates: &[f64]) -> f64 {
    rates.iter().copied().fold(0.0, f64::max)
}

fn rounds(rates: &[f64]) -> String {
    rates
        .iter()
        .map(|r| format!("{r:.0}"))
        .collect::<Vec<_>>()
        .join(", ")
}

fn spread(mut times: Vec<Duration>) -> (Duration, Duration) {
    times.sort();
    let p95 = (times.len() * 95 / 100).min(times.len() - 1);
    (times[times.len() / 2], times[p95])
}
