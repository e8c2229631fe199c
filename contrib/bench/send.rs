//! `postroom-bench send`: smtp-send emptying a queue into a loopback sink.
//!
//! 10,000 queued messages of 4 KiB to 100 destination domains (one
//! recipient each), then the same number of recipients as messages of
//! 1,000 recipients each (10 per domain). Every domain's MX points at one
//! SMTP sink on 127.0.0.2 that accepts everything; the DNS server is the
//! tests' loopback one. Printed: messages and recipients per second for
//! one `smtp-send --once` pass, and the runner's peak RSS.

use std::collections::HashMap;
use std::net::{Ipv4Addr, SocketAddr};
use std::path::Path;
use std::process::Command;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Instant;

use anyhow::Context;
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
    for per_message in [1usize, 1000] {
        let dir = base.join(format!("send{per_message}"));
        let config = crate::bench_tree(&dir)?;
        let text = std::fs::read_to_string(&config)?
            + &format!(
                "\n[dns]\nnameservers = [\"{}\"]\n\n[send]\nport = {sink_port}\nipv6 = false\n",
                dns.addr
            );
        std::fs::write(&config, text)?;
        let count = if per_message == 1 {
            messages
        } else {
            (messages / per_message).max(1)
        };
        fill_queue(&dir.join("queue"), count, per_message)?;
        let before = accepted.load(Ordering::Relaxed);
        let send = std::env::current_exe()?.with_file_name("smtp-send");
        let started = Instant::now();
        let status = Command::new(&send)
            .arg("--config")
            .arg(&config)
            .arg("--once")
            .env("RUST_LOG", "warn")
            .status()
            .with_context(|| format!("running {}", send.display()))?;
        let seconds = started.elapsed().as_secs_f64();
        anyhow::ensure!(status.success(), "smtp-send failed");
        let left = Queue::new(dir.join("queue")).list()?.len();
        anyhow::ensure!(left == 0, "{left} messages left in the queue");
        let transactions = accepted.load(Ordering::Relaxed) - before;
        println!(
            "{count:>6} messages x {per_message:>4} recipients: {:>7.0} msg/s, {:>8.0} recipients/s, {transactions} transactions, {seconds:.2} s, peak RSS {:.1} MB",
            count as f64 / seconds,
            (count * per_message) as f64 / seconds,
            peak_child_rss_kib() as f64 / 1024.0
        );
    }
    drop(dns);
    Ok(())
}

/// Queues `count` messages straight through the library (the figure is
/// the runner's, not the injector's).
fn fill_queue(root: &Path, count: usize, per_message: usize) -> anyhow::Result<()> {
    let queue = Queue::new(root);
    queue.create()?;
    let mut body = b"From: bench@bench.test\r\nSubject: bench\r\n\r\n".to_vec();
    while body.len() < MESSAGE_SIZE {
        body.extend_from_slice(
            b"0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef\r\n",
        );
    }
    let sender = ReversePath::Address(Address::parse("bench@bench.test")?);
    for n in 0..count {
        let recipients = (0..per_message)
            .map(|r| {
                let domain = (n + r) % DOMAINS;
                Address::parse(&format!("u{r}.{n}@d{domain}.test"))
                    .map(|a| Recipient::new(Route::Remote, a))
            })
            .collect::<Result<Vec<_>, _>>()?;
        queue.enqueue(&Envelope::new(sender.clone(), recipients), &body)?;
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
