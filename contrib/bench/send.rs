//! `postroom-bench send`: smtp-send emptying a queue into a loopback sink.
//!
//! 10,000 queued messages of 4 KiB to 100 destination domains (one
//! recipient each), then the same number of recipients as messages of
//! 1,000 recipients each (10 per domain). Every domain's MX points at one
//! SMTP sink on 127.0.0.2 that accepts everything; the DNS server is the
//! tests' loopback one. Printed: messages and recipients per second for
//! one `smtp-send --once` pass, and the runner's peak RSS.
//!
//! The one-recipient run is made three times in the same run: unsigned,
//! DKIM-signed with an Ed25519 key and with an RSA-2048 key. Signing is
//! done as mail enters the queue (`deliver::queue_staged`, the way every
//! writer goes), so each line also gives the queueing rate and the rate of
//! the two together (messages over queueing plus sending time), which is
//! where the cost of signing shows.

use std::collections::HashMap;
use std::net::{Ipv4Addr, SocketAddr};
use std::path::Path;
use std::process::Command;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Instant;

use anyhow::Context;
use postroom::config::{Config, DkimAlgorithm};
use postroom::delivery::{deliver, dkim};
use postroom::proto::address::{Address, ReversePath};
use postroom::store::queue::{Envelope, Queue, Recipient, Route};
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};

#[path = "../../tests/integration/dns.rs"]
#[allow(dead_code)]
mod dns;

use crate::MESSAGE_SIZE;

const DOMAINS: usize = 100;

pub fn run(base: &Path, messages: usize) -> anyhow::Result<()> {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    let accepted = Arc::new(AtomicUsize::new(0));
    // Port 0: the kernel picks one free on 127.0.0.2 as the sink binds it.
    let listener = runtime.block_on(tokio::net::TcpListener::bind(SocketAddr::new(
        Ipv4Addr::new(127, 0, 0, 2).into(),
        0,
    )))?;
    let sink_port = listener.local_addr()?.port();
    runtime.spawn(sink(listener, accepted.clone()));

    let mut records: HashMap<String, Vec<dns::Record>> = HashMap::new();
    for d in 0..DOMAINS {
        records.insert(
            format!("d{d}.test"),
            vec![dns::Record::Mx(10, format!("mx.d{d}.test"))],
        );
        records.insert(
            format!("mx.d{d}.test"),
            vec![dns::Record::A(Ipv4Addr::new(127, 0, 0, 2))],
        );
    }
    let dns = dns::DnsServer::start(records);

    println!(
        "postroom-bench send: {messages} messages of {MESSAGE_SIZE} bytes to {DOMAINS} domains, sink on 127.0.0.2:{sink_port}"
    );
    let runs = [
        (1usize, None),
        (1, Some(DkimAlgorithm::Ed25519)),
        (1, Some(DkimAlgorithm::Rsa2048)),
        (1000, None),
    ];
    for (per_message, signing) in runs {
        let label = signing.map_or("unsigned", DkimAlgorithm::name);
        let dir = base.join(format!("send{per_message}-{label}"));
        let config = crate::bench_tree(&dir)?;
        let text = std::fs::read_to_string(&config)?
            + &format!(
                "\n[dns]\nnameservers = [\"{}\"]\n\n[send]\nport = {sink_port}\nipv6 = false\n",
                dns.addr
            );
        std::fs::write(&config, text)?;
        if let Some(algorithm) = signing {
            let loaded = Config::load(&config)?;
            let key = dkim::write_key(&loaded, "bench.test", label, algorithm)?;
            let entry = format!(
                "\n[[dkim]]\ndomain = \"bench.test\"\nselector = \"{label}\"\nalgorithm = \"{label}\"\nkey = \"{}\"\n",
                key.key.display()
            );
            std::fs::write(&config, std::fs::read_to_string(&config)? + &entry)?;
        }
        let count = if per_message == 1 {
            messages
        } else {
            (messages / per_message).max(1)
        };
        let loaded = Config::load(&config)?;
        let sign_micros = match signing {
            Some(_) => sign_only(&loaded)?,
            None => 0.0,
        };
        let queued = Instant::now();
        fill_queue(&loaded, count, per_message)?;
        let queue_seconds = queued.elapsed().as_secs_f64();
        let before = accepted.load(Ordering::Relaxed);
        let send = std::env::current_exe()?.with_file_name("smtp-send");
        let started = Instant::now();
        let status = Command::new(&send)
            .arg("--config")
            .arg(&config)
            .arg("--once")
            .env("POSTROOM_LOG", "warn")
            .status()
            .with_context(|| format!("running {}", send.display()))?;
        let seconds = started.elapsed().as_secs_f64();
        anyhow::ensure!(status.success(), "smtp-send failed");
        let left = Queue::new(dir.join("queue")).list()?.len();
        anyhow::ensure!(left == 0, "{left} messages left in the queue");
        let transactions = accepted.load(Ordering::Relaxed) - before;
        println!(
            "{count:>6} messages x {per_message:>4} recipients, {label:>8}: send {:>7.0} msg/s, {:>8.0} recipients/s, {transactions} transactions, {seconds:.2} s, peak RSS {:.1} MB; queue {:>7.0} msg/s; queue+send {:>7.0} msg/s",
            count as f64 / seconds,
            (count * per_message) as f64 / seconds,
            peak_child_rss_kib() as f64 / 1024.0,
            count as f64 / queue_seconds,
            count as f64 / (queue_seconds + seconds),
        );
        if signing.is_some() {
            println!(
                "{:>27}  signing alone: {sign_micros:.0} µs a message ({:.0} msg/s on one core)",
                "",
                1e6 / sign_micros
            );
        }
    }
    drop(dns);
    Ok(())
}

/// The body every message has: 4 KiB of 66-octet lines.
fn bench_body() -> Vec<u8> {
    let mut body = b"From: bench@bench.test\r\nSubject: bench\r\n\r\n".to_vec();
    while body.len() < MESSAGE_SIZE {
        body.extend_from_slice(
            b"0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef\r\n",
        );
    }
    body
}

/// Microseconds to sign one message, in process (key read included, as
/// at each enqueue): the CPU cost the fsync-bound queue rate hides.
fn sign_only(config: &Config) -> anyhow::Result<f64> {
    let body = bench_body();
    let sender = ReversePath::Address(Address::parse("bench@bench.test")?);
    const ROUNDS: u32 = 500;
    let started = Instant::now();
    for _ in 0..ROUNDS {
        let signatures = dkim::signatures(config, &sender, &body)?;
        anyhow::ensure!(!signatures.is_empty(), "nothing signed");
    }
    Ok(started.elapsed().as_secs_f64() * 1e6 / f64::from(ROUNDS))
}

/// Queues `count` messages through the library's way into the queue,
/// signing them when the config has a key (the send figure is the
/// runner's, not the injector's).
fn fill_queue(config: &Config, count: usize, per_message: usize) -> anyhow::Result<()> {
    let queue = Queue::from_config(config);
    queue.create()?;
    let body = bench_body();
    let sender = ReversePath::Address(Address::parse("bench@bench.test")?);
    for n in 0..count {
        let recipients = (0..per_message)
            .map(|r| {
                let domain = (n + r) % DOMAINS;
                Address::parse(&format!("u{r}.{n}@d{domain}.test"))
                    .map(|a| Recipient::new(Route::Remote, a))
            })
            .collect::<Result<Vec<_>, _>>()?;
        let staged = queue.stage(&Envelope::new(sender.clone(), recipients), &body)?;
        deliver::queue_staged(config, staged)?;
    }
    // The hints would only make the pass look at messages twice.
    for id in queue.todo()? {
        queue.clear_todo(&id);
    }
    Ok(())
}

/// The largest RSS any waited-for child had (Linux reports KiB).
fn peak_child_rss_kib() -> i64 {
    nix::sys::resource::getrusage(nix::sys::resource::UsageWho::RUSAGE_CHILDREN)
        .map(|u| u.max_rss())
        .unwrap_or(0)
}

/// An SMTP server that takes everything, with PIPELINING, and counts the
/// messages it acknowledged.
async fn sink(listener: tokio::net::TcpListener, accepted: Arc<AtomicUsize>) {
    while let Ok((stream, _)) = listener.accept().await {
        let accepted = accepted.clone();
        tokio::spawn(async move {
            let _ = session(stream, &accepted).await;
        });
    }
}

async fn session(stream: tokio::net::TcpStream, accepted: &AtomicUsize) -> std::io::Result<()> {
    let (read, mut write) = stream.into_split();
    let mut reader = BufReader::new(read);
    write.write_all(b"220 sink ESMTP\r\n").await?;
    let mut line = Vec::new();
    let mut out = Vec::new();
    loop {
        line.clear();
        if reader.read_until(b'\n', &mut line).await? == 0 {
            return Ok(());
        }
        let upper = line.to_ascii_uppercase();
        if upper.starts_with(b"EHLO") {
            out.extend_from_slice(b"250-sink\r\n250-PIPELINING\r\n250 8BITMIME\r\n");
        } else if upper.starts_with(b"DATA") {
            write.write_all(&out).await?;
            out.clear();
            write.write_all(b"354 go\r\n").await?;
            loop {
                line.clear();
                if reader.read_until(b'\n', &mut line).await? == 0 {
                    return Ok(());
                }
                if line == b".\r\n" {
                    break;
                }
            }
            accepted.fetch_add(1, Ordering::Relaxed);
            out.extend_from_slice(b"250 ok\r\n");
        } else if upper.starts_with(b"QUIT") {
            out.extend_from_slice(b"221 bye\r\n");
            write.write_all(&out).await?;
            return Ok(());
        } else {
            out.extend_from_slice(b"250 ok\r\n");
        }
        // Answer when the client has nothing more queued (pipelining).
        if reader.buffer().is_empty() {
            write.write_all(&out).await?;
            out.clear();
        }
    }
}
