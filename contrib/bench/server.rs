//! A server under test: started on a loopback port it picks itself and
//! killed when done, and its inetd-mode start-up time. Shared by the smtp,
//! pop3 and imap benchmarks.

use std::io::{BufRead, BufReader, Write};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::Context;

/// A standalone server on `127.0.0.1:port`, killed on drop.
pub struct Server {
    pub child: Child,
    pub port: u16,
}

impl Server {
    /// Starts `binary` with `--listen 127.0.0.1:0`: the kernel picks a free
    /// port as the server binds it, and the server's `listening on ADDR`
    /// log line says which (no port is chosen here and let go for someone
    /// else to take first).
    pub fn start(binary: &Path, config: &Path) -> anyhow::Result<Server> {
        Server::start_with(binary, config, &[])
    }

    /// [`Server::start`] with `extra` flags (`--submission`).
    pub fn start_with(binary: &Path, config: &Path, extra: &[&str]) -> anyhow::Result<Server> {
        let mut command = Command::new(binary);
        command.arg("--config").arg(config).args(extra);
        Server::start_command(binary, command)
    }

    /// Starts `command` (which runs `binary` with its config and flags) as
    /// [`Server::start`] does; for a server run through a wrapper.
    pub fn start_command(binary: &Path, mut command: Command) -> anyhow::Result<Server> {
        let name = binary.file_name().unwrap_or_default().to_string_lossy();
        let mut child = command
            .args(["--listen", "127.0.0.1:0"])
            // Warnings, and the line that says where it listens.
            .env("POSTROOM_LOG", "warn,postroom::net=info")
            .stderr(Stdio::piped())
            .spawn()
            .with_context(|| format!("starting {name}"))?;
        let mut log = BufReader::new(child.stderr.take().context("stderr")?);
        let mut line = String::new();
        let port = loop {
            line.clear();
            anyhow::ensure!(
                log.read_line(&mut line)? > 0,
                "{name} ended before it listened"
            );
            if let Some((_, rest)) = line.split_once("listening on ") {
                let addr: std::net::SocketAddr = rest
                    .split_whitespace()
                    .next()
                    .unwrap_or_default()
                    .parse()
                    .with_context(|| format!("{name} said {line:?}"))?;
                break addr.port();
            }
            eprint!("{line}");
        };
        // Its later warnings go where ours go.
        std::thread::spawn(move || {
            for line in log.lines().map_while(Result::ok) {
                eprintln!("{line}");
            }
        });
        Ok(Server { child, port })
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Spawn-to-greeting over pipes, as inetd runs a server, `runs` times:
/// (median, p99). `greeting` is how the first line starts; `quit` ends the
/// session politely.
pub fn inetd_greeting(
    binary: &Path,
    config: &Path,
    greeting: &str,
    quit: &[u8],
    runs: usize,
) -> anyhow::Result<(Duration, Duration)> {
    let mut times = Vec::with_capacity(runs);
    for _ in 0..runs {
        let mut command = Command::new(binary);
        command
            .arg("--config")
            .arg(config)
            .env("REMOTE_ADDR", "192.0.2.1");
        let (time, line) = first_line(command, quit)?;
        anyhow::ensure!(line.starts_with(greeting), "no greeting: {line}");
        times.push(time);
    }
    times.sort();
    Ok((times[runs / 2], times[(runs * 99 / 100).min(runs - 1)]))
}

/// Spawns `command` over pipes, as inetd does, and times it to its first
/// line of output (or to the end of its output, for a program that writes
/// none); then sends `quit` and waits for it. Gives the time and the line.
pub fn first_line(mut command: Command, quit: &[u8]) -> anyhow::Result<(Duration, String)> {
    let start = Instant::now();
    let mut child = command
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()?;
    let mut line = String::new();
    BufReader::new(child.stdout.take().context("stdout")?).read_line(&mut line)?;
    let time = start.elapsed();
    if let Some(mut stdin) = child.stdin.take() {
        let _ = stdin.write_all(quit);
    }
    let _ = child.wait();
    Ok((time, line))
}

/// Milliseconds, for printing.
pub fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}
