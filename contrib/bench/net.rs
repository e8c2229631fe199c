//! `postroom-bench net`: the memory of one idle connection in
//! `postroom::net` alone, without a protocol on top.
//!
//! `net::serve` runs in this process with a handler that greets and then
//! waits in `read_line`, as every postroom session does between commands;
//! `sessions` clients connect and read the greeting. The figure is the
//! growth of this process's resident set per session, the clients' ends
//! included, so it overestimates the server's share; `smtp`, `pop3` and
//! `imap` measure the real servers from outside. The module doc of
//! `postroom::net` says why the figure is small (one 4 KiB read buffer,
//! output buffers released after large flushes).

use std::net::SocketAddr;

use anyhow::Context;
use postroom::config::Limits;
use postroom::net::{self, Connection, Launch};
use tokio::io::AsyncReadExt;
use tokio::net::TcpStream;

use crate::smtp::{raise_fd_limit, rss_kib};

/// Clients that connect before the baseline is taken, so the allocator and
/// the runtime have grown to their working size.
const WARM_UP: usize = 10;

pub fn run(sessions: usize) -> anyhow::Result<()> {
    anyhow::ensure!(sessions > WARM_UP, "--sessions must be over {WARM_UP}");
    // Both ends of every session are in this process.
    raise_fd_limit(2 * sessions)?;
    let addr: SocketAddr = "127.0.0.1:0".parse()?;
    let launch = Launch::from_args(&[addr], &[])?;
    let bound = *launch.local_addrs().first().context("no listener")?;
    let limits = Limits {
        connections: sessions + 1,
        connections_per_ip: sessions + 1,
        ..Limits::default()
    };
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    runtime.block_on(async move {
        tokio::spawn(async move { net::serve(launch, &limits, None, b"", idle).await });
        let mut clients = Vec::with_capacity(sessions);
        let mut before = 0;
        for n in 0..sessions {
            if n == WARM_UP {
                before = rss_kib(std::process::id())?;
            }
            let mut client = TcpStream::connect(bound).await?;
            greeting(&mut client).await?;
            clients.push(client);
        }
        let after = rss_kib(std::process::id())?;
        let per = after.saturating_sub(before) as f64 * 1024.0 / (sessions - WARM_UP) as f64;
        println!(
            "postroom-bench net: {sessions} idle sessions: RSS {before} KiB -> {after} KiB, {per:.0} bytes per session (both ends), {:.0} MB for 10,000",
            per * 10_000.0 / 1e6
        );
        println!(
            "size_of::<Connection>() = {} bytes",
            std::mem::size_of::<Connection>()
        );
        Ok(())
    })
}

/// The session every connection gets: a greeting, then waiting for lines
/// (answered by echoing them) until the client leaves.
async fn idle(mut conn: Connection) {
    conn.write(b"hello\r\n");
    if conn.flush().await.is_err() {
        return;
    }
    while let Ok(line) = conn.read_line(512).await {
        conn.write(&line);
        if conn.flush().await.is_err() {
            return;
        }
    }
}

/// Reads the greeting line: the session is then set up and waiting.
async fn greeting(client: &mut TcpStream) -> anyhow::Result<()> {
    let mut byte = [0u8; 1];
    loop {
        anyhow::ensure!(
            client.read(&mut byte).await? == 1,
            "closed before the greeting"
        );
        if byte[0] == b'\n' {
            return Ok(());
        }
    }
}
