//! `postroom-bench auth`: failed logins against each server, and what they
//! cost the server in memory and threads.
//!
//! For imap-serve, pop3-serve and smtp-recv in submission mode, one
//! standalone process each on loopback: `--clients` connections (200 by
//! default) log in at once as unknown users, so every one of them runs the
//! Argon2 dummy hash, then `--clients` more log in one after another on a
//! fresh process. Each client comes from its own loopback address
//! (127.0.0.2 and up), as a botnet would, so the per-address limits and
//! back-off stay out of the figure. Prints, from `/proc/PID/status`: the
//! resident set before, at its peak (`VmHWM`) and `--settle` seconds after
//! the last answer, and the most threads seen (sampled every 10 ms).
//!
//! The tree has no users with an Argon2 hash, so the dummy hash is the
//! ARGON2ID one (m=19456 KiB, t=2, p=1, the parameters of `postroom user
//! add`, see `users.rs`).

use std::io::{BufRead, BufReader, Write};
use std::net::{Ipv4Addr, TcpStream};
use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Barrier};
use std::time::{Duration, Instant};

use anyhow::Context;
use base64::Engine;

use crate::bench_tree;
use crate::server::Server;
use crate::smtp::raise_fd_limit;

/// A server under test and how its clients fail to log in.
#[derive(Clone, Copy)]
enum Protocol {
    Imap,
    Pop3,
    Submission,
}

impl Protocol {
    fn binary(self) -> &'static str {
        match self {
            Protocol::Imap => "imap-serve",
            Protocol::Pop3 => "pop3-serve",
            Protocol::Submission => "smtp-recv",
        }
    }

    fn flags(self) -> &'static [&'static str] {
        match self {
            Protocol::Submission => &["--submission"],
            _ => &[],
        }
    }

    fn label(self) -> &'static str {
        match self {
            Protocol::Imap => "imap-serve",
            Protocol::Pop3 => "pop3-serve",
            Protocol::Submission => "smtp-recv --submission",
        }
    }
}

pub fn run(base: &Path, clients: usize, settle: u64) -> anyhow::Result<()> {
    raise_fd_limit(2 * clients)?;
    let settle = Duration::from_secs(settle);
    println!(
        "postroom-bench auth: {clients} failed logins (unknown users, Argon2 dummy hash) per server, at once and one after another; settled = {} s after the last answer",
        settle.as_secs()
    );
    for protocol in [Protocol::Imap, Protocol::Pop3, Protocol::Submission] {
        let dir = base.join(protocol.binary());
        let config = make_tree(&dir)?;
        let binary = std::env::current_exe()?.with_file_name(protocol.binary());
        for concurrent in [true, false] {
            let figures = burst(&binary, &config, protocol, clients, concurrent, settle)?;
            println!(
                "{:<22} {clients} {}: {:.1} s; RSS idle {:.1} MB, peak {:.1} MB, settled {:.1} MB; threads idle {}, at most {}, settled {}",
                protocol.label(),
                if concurrent {
                    "at once      "
                } else {
                    "one at a time"
                },
                figures.elapsed.as_secs_f64(),
                mb(figures.idle.rss),
                mb(figures.peak_rss),
                mb(figures.settled.rss),
                figures.idle.threads,
                figures.max_threads,
                figures.settled.threads,
            );
        }
    }
    Ok(())
}

/// What one run measured.
struct Figures {
    elapsed: Duration,
    idle: Status,
    peak_rss: u64,
    max_threads: u64,
    settled: Status,
}

/// A sample of `/proc/PID/status`: VmRSS and VmHWM in KiB, and Threads.
#[derive(Clone, Copy, Default)]
struct Status {
    rss: u64,
    hwm: u64,
    threads: u64,
}

fn status(pid: u32) -> anyhow::Result<Status> {
    let text = std::fs::read_to_string(format!("/proc/{pid}/status"))?;
    let field = |name: &str| -> anyhow::Result<u64> {
        text.lines()
            .find_map(|l| l.strip_prefix(name))
            .and_then(|v| v.split_whitespace().next())
            .and_then(|v| v.parse().ok())
            .with_context(|| format!("no {name} in /proc/{pid}/status"))
    };
    Ok(Status {
        rss: field("VmRSS:")?,
        hwm: field("VmHWM:")?,
        threads: field("Threads:")?,
    })
}

/// One fresh server, `clients` failed logins at once or in turn.
fn burst(
    binary: &Path,
    config: &Path,
    protocol: Protocol,
    clients: usize,
    concurrent: bool,
    settle: Duration,
) -> anyhow::Result<Figures> {
    let server = Server::start_with(binary, config, protocol.flags())?;
    let port = server.port;
    let pid = server.child.id();
    // Let start-up finish (config, users, TLS) before the idle figure.
    std::thread::sleep(Duration::from_millis(500));
    let idle = status(pid)?;

    let sampling = Arc::new(AtomicBool::new(true));
    let max_threads = Arc::new(AtomicU64::new(idle.threads));
    let sampler = {
        let (sampling, max_threads) = (sampling.clone(), max_threads.clone());
        std::thread::spawn(move || {
            while sampling.load(Ordering::Relaxed) {
                if let Ok(s) = status(pid) {
                    max_threads.fetch_max(s.threads, Ordering::Relaxed);
                }
                std::thread::sleep(Duration::from_millis(10));
            }
        })
    };

    let start = Instant::now();
    if concurrent {
        let barrier = Arc::new(Barrier::new(clients));
        let handles: Vec<_> = (0..clients)
            .map(|i| {
                let barrier = barrier.clone();
                std::thread::spawn(move || -> anyhow::Result<()> {
                    let stream = connect_from(i, port)?;
                    barrier.wait();
                    fail_login(protocol, stream, i)
                })
            })
            .collect();
        for h in handles {
            h.join().map_err(|_| anyhow::anyhow!("client panicked"))??;
        }
    } else {
        for i in 0..clients {
            fail_login(protocol, connect_from(i, port)?, i)?;
        }
    }
    let elapsed = start.elapsed();
    std::thread::sleep(settle);
    sampling.store(false, Ordering::Relaxed);
    let _ = sampler.join();
    let settled = status(pid)?;
    Ok(Figures {
        elapsed,
        idle,
        peak_rss: settled.hwm,
        max_threads: max_threads.load(Ordering::Relaxed).max(settled.threads),
        settled,
    })
}

/// A connection to 127.0.0.1:`port` from 127.0.0.(2 + i % 250).
fn connect_from(i: usize, port: u16) -> anyhow::Result<TcpStream> {
    use nix::sys::socket::{AddressFamily, SockFlag, SockType, SockaddrIn, bind, connect, socket};
    let octet = 2 + (i % 250) as u8;
    let fd = socket(
        AddressFamily::Inet,
        SockType::Stream,
        SockFlag::SOCK_CLOEXEC,
        None,
    )?;
    bind(
        fd.as_raw_fd(),
        &SockaddrIn::from(std::net::SocketAddrV4::new(
            Ipv4Addr::new(127, 0, 0, octet),
            0,
        )),
    )?;
    connect(fd.as_raw_fd(), &SockaddrIn::new(127, 0, 0, 1, port))?;
    let stream = TcpStream::from(fd);
    stream.set_read_timeout(Some(Duration::from_secs(300)))?;
    Ok(stream)
}

/// Greeting, one login as an unknown user, which must fail, and goodbye.
fn fail_login(protocol: Protocol, mut stream: TcpStream, i: usize) -> anyhow::Result<()> {
    let mut reader = BufReader::new(stream.try_clone()?);
    let mut line = String::new();
    let mut read = |reader: &mut BufReader<TcpStream>| -> anyhow::Result<String> {
        line.clear();
        anyhow::ensure!(reader.read_line(&mut line)? > 0, "connection closed");
        Ok(line.clone())
    };
    let user = format!("nobody{i}@bench.test");
    match protocol {
        Protocol::Imap => {
            read(&mut reader)?;
            stream.write_all(format!("a LOGIN {user} wrong\r\n").as_bytes())?;
            let answer = loop {
                let l = read(&mut reader)?;
                if l.starts_with("a ") {
                    break l;
                }
            };
            anyhow::ensure!(answer.starts_with("a NO"), "IMAP LOGIN: {answer}");
            stream.write_all(b"b LOGOUT\r\n")?;
        }
        Protocol::Pop3 => {
            read(&mut reader)?;
            stream.write_all(format!("USER {user}\r\nPASS wrong\r\n").as_bytes())?;
            let ok = read(&mut reader)?;
            anyhow::ensure!(ok.starts_with("+OK"), "POP3 USER: {ok}");
            let answer = read(&mut reader)?;
            anyhow::ensure!(answer.starts_with("-ERR"), "POP3 PASS: {answer}");
            stream.write_all(b"QUIT\r\n")?;
        }
        Protocol::Submission => {
            read(&mut reader)?;
            stream.write_all(b"EHLO bench.test\r\n")?;
            while !read(&mut reader)?.starts_with("250 ") {}
            let plain = base64::engine::general_purpose::STANDARD
                .encode(format!("\0{user}\0wrong").as_bytes());
            stream.write_all(format!("AUTH PLAIN {plain}\r\n").as_bytes())?;
            let answer = read(&mut reader)?;
            anyhow::ensure!(answer.starts_with("535"), "AUTH: {answer}");
            stream.write_all(b"QUIT\r\n")?;
        }
    }
    Ok(())
}

fn make_tree(dir: &Path) -> anyhow::Result<PathBuf> {
    let config = bench_tree(dir)?;
    crate::lift_connection_caps(&config)?;
    Ok(config)
}

fn mb(kib: u64) -> f64 {
    kib as f64 / 1024.0
}
