//! A small SMTP server on loopback for `smtp-send`'s tests: it accepts or
//! refuses as its [`Behaviour`] says, speaks STARTTLS and AUTH PLAIN when
//! given them, and records every message it answered 250 to. One thread
//! per connection; stops when dropped.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// The reply to RCPT for an address, or None for 250.
pub type RcptRule = Arc<dyn Fn(&str) -> Option<String> + Send + Sync>;

/// How the sink answers.
#[derive(Clone)]
pub struct Behaviour {
    /// The greeting line (e.g. "220 sink" or "421 busy").
    pub greeting: String,
    pub pipelining: bool,
    pub dsn: bool,
    /// Offer 8BITMIME (RFC 6152).
    pub eightbitmime: bool,
    /// SIZE limit to announce (0: none).
    pub size: u64,
    pub rcpt: RcptRule,
    /// The reply after the final dot.
    pub data_reply: String,
    /// Close the connection halfway through the message.
    pub drop_mid_data: bool,
    /// Wait this long before answering the final dot.
    pub delay_final: Duration,
    pub tls: Option<Arc<rustls::ServerConfig>>,
    /// (user, password) for AUTH PLAIN; offered only when set.
    pub auth: Option<(String, String)>,
}

impl Default for Behaviour {
    fn default() -> Self {
        Behaviour {
            greeting: "220 sink.test ESMTP".into(),
            pipelining: true,
            dsn: true,
            eightbitmime: true,
            size: 0,
            rcpt: Arc::new(|_| None),
            data_reply: "250 2.0.0 queued".into(),
            drop_mid_data: false,
            delay_final: Duration::ZERO,
            tls: None,
            auth: None,
        }
    }
}

/// One message the sink accepted.
#[derive(Debug, Clone)]
pub struct Received {
    pub mail_from: String,
    pub rcpts: Vec<String>,
    /// The message as sent, dot-unstuffed, CRLF line ends kept.
    pub data: Vec<u8>,
    pub tls: bool,
    pub user: Option<String>,
    /// The raw lines of the MAIL and RCPT commands.
    pub commands: Vec<String>,
}

pub struct Sink {
    pub received: Arc<Mutex<Vec<Received>>>,
    /// Connections accepted so far.
    pub connections: Arc<Mutex<usize>>,
    stop: Arc<AtomicBool>,
    addr: SocketAddr,
}

impl Sink {
    /// Serves on `listener`, a socket the caller bound and keeps no other
    /// handle to: it closes when the sink is dropped.
    pub fn on(listener: TcpListener, behaviour: Behaviour) -> std::io::Result<Sink> {
        let addr = listener.local_addr()?;
        let received = Arc::new(Mutex::new(Vec::new()));
        let connections = Arc::new(Mutex::new(0));
        let stop = Arc::new(AtomicBool::new(false));
        let (r, c, s) = (received.clone(), connections.clone(), stop.clone());
        std::thread::spawn(move || {
            // Blocks in accept; Drop wakes it with a connection of its own.
            for stream in listener.incoming() {
                if s.load(Ordering::Relaxed) {
                    break;
                }
                let Ok(stream) = stream else { continue };
                *c.lock().unwrap() += 1;
                let (behaviour, r) = (behaviour.clone(), r.clone());
                std::thread::spawn(move || {
                    let _ = serve(stream, &behaviour, &r);
                });
            }
        });
        Ok(Sink {
            received,
            connections,
            stop,
            addr,
        })
    }

    pub fn messages(&self) -> Vec<Received> {
        self.received.lock().unwrap().clone()
    }
}

impl Drop for Sink {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        let _ = TcpStream::connect_timeout(&self.addr, Duration::from_secs(1));
    }
}

trait Io: Read + Write + Send {}
impl<T: Read + Write + Send> Io for T {}

fn serve(stream: TcpStream, b: &Behaviour, received: &Mutex<Vec<Received>>) -> std::io::Result<()> {
    stream.set_nonblocking(false)?;
    stream.set_read_timeout(Some(Duration::from_secs(30)))?;
    let mut tcp = Some(stream.try_clone()?);
    let mut reader: BufReader<Box<dyn Io>> = BufReader::new(Box::new(stream));
    let mut tls = false;
    let mut user = None;
    reader
        .get_mut()
        .write_all(format!("{}\r\n", b.greeting).as_bytes())?;
    if !b.greeting.starts_with('2') {
        return Ok(());
    }
    let mut mail_from = None;
    let mut rcpts = Vec::new();
    let mut commands = Vec::new();
    loop {
        let mut line = String::new();
        if reader.read_line(&mut line)? == 0 {
            return Ok(());
        }
        let command = line.trim_end().to_string();
        let upper = command.to_ascii_uppercase();
        let reply: String = if upper.starts_with("EHLO") {
            let mut lines = vec!["250-sink.test".to_string()];
            if b.pipelining {
                lines.push("250-PIPELINING".into());
            }
            if b.dsn {
                lines.push("250-DSN".into());
            }
            if b.size > 0 {
                lines.push(format!("250-SIZE {}", b.size));
            }
            if b.tls.is_some() && !tls {
                lines.push("250-STARTTLS".into());
            }
            if b.auth.is_some() {
                lines.push("250-AUTH PLAIN".into());
            }
            if b.eightbitmime {
                lines.push("250-8BITMIME".into());
            }
            lines.push("250 HELP".into());
            lines.join("\r\n")
        } else if upper == "STARTTLS" && b.tls.is_some() && !tls {
            reader.get_mut().write_all(b"220 2.0.0 go ahead\r\n")?;
            reader.get_mut().flush()?;
            let conn = rustls::ServerConnection::new(b.tls.clone().unwrap())
                .map_err(std::io::Error::other)?;
            let Some(tcp) = tcp.take() else { return Ok(()) };
            reader = BufReader::new(Box::new(rustls::StreamOwned::new(conn, tcp)));
            tls = true;
            continue;
        } else if upper.starts_with("AUTH PLAIN ") {
            use base64::Engine;
            let decoded = base64::engine::general_purpose::STANDARD
                .decode(command[11..].trim())
                .unwrap_or_default();
            let parts: Vec<&[u8]> = decoded.split(|&c| c == 0).collect();
            match (&b.auth, parts.as_slice()) {
                (Some((u, p)), [_, gu, gp]) if u.as_bytes() == *gu && p.as_bytes() == *gp => {
                    user = Some(u.clone());
                    "235 2.7.0 ok".into()
                }
                _ => "535 5.7.8 no".into(),
            }
        } else if upper.starts_with("MAIL FROM:") {
            mail_from = Some(command[10..].to_string());
            rcpts.clear();
            commands = vec![command.clone()];
            "250 2.1.0 ok".into()
        } else if upper.starts_with("RCPT TO:") {
            let address = command[8..]
                .split_whitespace()
                .next()
                .unwrap_or("")
                .trim_matches(|c| c == '<' || c == '>')
                .to_string();
            commands.push(command.clone());
            match (b.rcpt)(&address) {
                Some(reply) => reply,
                None => {
                    rcpts.push(address);
                    "250 2.1.5 ok".into()
                }
            }
        } else if upper == "DATA" {
            if rcpts.is_empty() {
                "554 5.5.1 no valid recipients".into()
            } else {
                reader.get_mut().write_all(b"354 go\r\n")?;
                reader.get_mut().flush()?;
                let mut data = Vec::new();
                loop {
                    let mut raw = Vec::new();
                    if reader.read_until(b'\n', &mut raw)? == 0 {
                        return Ok(());
                    }
                    if raw == b".\r\n" {
                        break;
                    }
                    assert!(raw.ends_with(b"\r\n"), "bare LF on the wire: {raw:?}");
                    assert!(raw.len() <= 1000, "a line of {} octets", raw.len());
                    let line = if raw.starts_with(b".") {
                        &raw[1..]
                    } else {
                        &raw[..]
                    };
                    data.extend_from_slice(line);
                    if b.drop_mid_data && data.len() > 20 {
                        return Ok(());
                    }
                }
                // On purpose: a server slow to answer the final dot.
                std::thread::sleep(b.delay_final);
                if b.data_reply.starts_with('2') {
                    received.lock().unwrap().push(Received {
                        mail_from: mail_from.clone().unwrap_or_default(),
                        rcpts: rcpts.clone(),
                        data,
                        tls,
                        user: user.clone(),
                        commands: commands.clone(),
                    });
                }
                b.data_reply.clone()
            }
        } else if upper == "RSET" || upper == "NOOP" {
            rcpts.clear();
            "250 2.0.0 ok".into()
        } else if upper == "QUIT" {
            reader.get_mut().write_all(b"221 2.0.0 bye\r\n")?;
            reader.get_mut().flush()?;
            return Ok(());
        } else {
            "502 5.5.2 what".into()
        };
        reader
            .get_mut()
            .write_all(format!("{reply}\r\n").as_bytes())?;
        reader.get_mut().flush()?;
    }
}
