//! `postroom-bench smtp`: smtp-recv under load, on loopback.
//!
//! Prints accepted-and-committed messages per second over 1, 8 and 32
//! sessions (4 KiB messages to a local user, so each 250 covers an fsynced
//! maildir delivery) beside the raw durable-write rate measured just
//! before, the p99 time from the final dot to the 250, the time from
//! connect to greeting in inetd mode, and the resident memory of one
//! standalone process holding many idle sessions.

use std::io::{BufRead, BufReader, Write};
use std::net::TcpStream;
use std::path::Path;
use std::time::{Duration, Instant};

use anyhow::Context;

use crate::server::{Server, inetd_greeting};

use crate::{MESSAGE_SIZE, bench_tree, raw_rate};

pub fn run(base: &Path, messages: usize, idle: usize) -> anyhow::Result<()> {
    raise_fd_limit(idle)?;
    let dir = base.join("smtp");
    let config = make_tree(&dir)?;
    let recv = std::env::current_exe()?.with_file_name("smtp-recv");
    println!(
        "postroom-bench smtp: {messages} messages of {MESSAGE_SIZE} bytes per run, in {}",
        dir.display()
    );

    let server = Server::start(&recv, &config)?;
    let port = server.port;
    for sessions in [1usize, 8, 32] {
        let raw = raw_rate(
            &base.join(format!("raw{sessions}")),
            messages.min(1000),
            sessions.min(8),
        )?;
        let (rate, p99) = load(&[port], messages, sessions)?;
        println!(
            "{sessions:>2} session(s): {rate:>6.0} msg/s accepted and committed; raw loop ({} writers) {raw:>6.0} msg/s; ratio {:>3.0}%; p99 dot-to-250 {:.1} ms",
            sessions.min(8),
            100.0 * rate / raw,
            p99.as_secs_f64() * 1000.0
        );
    }
    drop(server);

    let greeting = inetd_greeting(&recv, &config, "220", b"QUIT\r\n", 50)?;
    println!(
        "inetd connect-to-greeting: median {:.2} ms, p99 {:.2} ms (process start included)",
        greeting.0.as_secs_f64() * 1000.0,
        greeting.1.as_secs_f64() * 1000.0
    );

    let server = Server::start(&recv, &config)?;
    let port = server.port;
    let before = rss_kib(server.child.id())?;
    let mut held = Vec::with_capacity(idle);
    for _ in 0..idle {
        let stream = TcpStream::connect(("127.0.0.1", port))?;
        held.push(stream);
    }
    // Read every greeting: each session is then really set up and waiting.
    for stream in &mut held {
        let mut line = String::new();
        BufReader::new(&*stream).read_line(&mut line)?;
        anyhow::ensure!(line.starts_with("220"), "no greeting: {line}");
    }
    let after = rss_kib(server.child.id())?;
    println!(
        "{idle} idle sessions in one standalone process: RSS {:.1} MB (idle process {:.1} MB, {:.1} KB per session)",
        after as f64 / 1024.0,
        before as f64 / 1024.0,
        (after.saturating_sub(before)) as f64 / idle as f64
    );
    Ok(())
}

pub fn make_tree(dir: &Path) -> anyhow::Result<std::path::PathBuf> {
    let config = bench_tree(dir)?;
    crate::lift_connection_caps(&config)?;
    let text = std::fs::read_to_string(&config)? + "\n[smtp]\nmessages_per_session = 1000000\n";
    std::fs::write(&config, text)?;
    Ok(config)
}

/// `messages` sent over `sessions` connections, spread over `ports` in
/// turn; (rate, p99 dot-to-250).
pub fn load(ports: &[u16], messages: usize, sessions: usize) -> anyhow::Result<(f64, Duration)> {
    let per = messages / sessions;
    let mut body = b"Subject: bench\r\n\r\n".to_vec();
    while body.len() < MESSAGE_SIZE {
        body.extend_from_slice(
            b"0123456789abcdef0123456789abcdef0123456789abcdef0123456789abc\r\n",
        );
    }
    body.truncate(MESSAGE_SIZE - 2);
    body.extend_from_slice(b"\r\n.\r\n");
    let start = Instant::now();
    let latencies = std::thread::scope(|scope| -> anyhow::Result<Vec<Duration>> {
        let handles: Vec<_> = (0..sessions)
            .map(|session| {
                let body = &body;
                let port = ports[session % ports.len()];
                scope.spawn(move || -> anyhow::Result<Vec<Duration>> {
                    let mut stream = TcpStream::connect(("127.0.0.1", port))?;
                    stream.set_nodelay(true)?;
                    let mut reader = BufReader::new(stream.try_clone()?);
                    expect(&mut reader, "220")?;
                    stream.write_all(b"EHLO bench.test\r\n")?;
                    expect(&mut reader, "250 ")?;
                    let mut latencies = Vec::with_capacity(per);
                    for _ in 0..per {
                        // PIPELINING: envelope and DATA in one write.
                        stream.write_all(b"MAIL FROM:<load@remote.test>\r\nRCPT TO:<sink@bench.test>\r\nDATA\r\n")?;
                        expect(&mut reader, "250")?;
                        expect(&mut reader, "250")?;
                        expect(&mut reader, "354")?;
                        stream.write_all(body)?;
                        let dot = Instant::now();
                        expect(&mut reader, "250")?;
                        latencies.push(dot.elapsed());
                    }
                    stream.write_all(b"QUIT\r\n")?;
                    Ok(latencies)
                })
            })
            .collect();
        let mut all = Vec::new();
        for h in handles {
            all.extend(h.join().map_err(|_| anyhow::anyhow!("client panicked"))??);
        }
        Ok(all)
    })?;
    let elapsed = start.elapsed().as_secs_f64();
    let mut sorted = latencies;
    sorted.sort();
    let p99 = sorted
        .get(sorted.len() * 99 / 100)
        .copied()
        .unwrap_or_default();
    Ok((sorted.len() as f64 / elapsed, p99))
}

/// Reads one reply (all its lines) and checks its code.
fn expect(reader: &mut impl BufRead, code: &str) -> anyhow::Result<()> {
    loop {
        let mut line = String::new();
        anyhow::ensure!(reader.read_line(&mut line)? > 0, "connection closed");
        anyhow::ensure!(
            line.starts_with(&code[..3]),
            "expected {code}, got {line:?}"
        );
        if line.as_bytes().get(3) != Some(&b'-') {
            return Ok(());
        }
    }
}

pub fn rss_kib(pid: u32) -> anyhow::Result<u64> {
    status_kib(pid, "VmRSS:")
}

/// A `/proc/PID/status` figure in KiB (`VmRSS:`, `VmHWM:` the peak).
pub fn status_kib(pid: u32, field: &str) -> anyhow::Result<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))?;
    status
        .lines()
        .find_map(|l| l.strip_prefix(field))
        .and_then(|v| v.split_whitespace().next())
        .and_then(|v| v.parse().ok())
        .with_context(|| format!("no {field} in /proc/{pid}/status"))
}

/// Room for `idle` client sockets here and as many in the server, which
/// inherits the limit.
pub fn raise_fd_limit(idle: usize) -> anyhow::Result<()> {
    use nix::sys::resource::{Resource, getrlimit, setrlimit};
    let (_, hard) = getrlimit(Resource::RLIMIT_NOFILE)?;
    let want = (idle as u64 + 1000).min(hard);
    setrlimit(Resource::RLIMIT_NOFILE, want, hard)?;
    anyhow::ensure!(
        want >= idle as u64 + 100,
        "the hard limit on open files ({hard}) is too low for {idle} sessions"
    );
    Ok(())
}
