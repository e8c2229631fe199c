//! How a server gets its connections, and the [`Connection`] every protocol
//! (SMTP, POP3, IMAP) reads lines from and writes replies to. The parts:
//! `launch` (where sockets come from), `serve` (the accept loop and its
//! limits), `connection` (one client), [`server`] (a server's start-up),
//! [`tls`], [`dns`], [`mta_sts`] and [`dane`] (recipient domains' TLS policies),
//! [`tlsrpt`] (what TLS reports are made of), [`privileges`], [`log`].
//!
//! postroom-tree(5), PROCESSES: a server runs in one of three ways, chosen at start by
//! [`Launch::from_args`]:
//!
//! 1. **inetd** (systemd `Accept=yes`, inetd, tcpserver): one connection on
//!    fd 0/1, one process per connection.
//! 2. **systemd `Accept=no`**: listening sockets in `LISTEN_FDS`, named by
//!    `LISTEN_FDNAMES`; one process serves many connections.
//! 3. **standalone** `--listen ADDR` / `--listen-tls ADDR`: the same code
//!    path as 2, with sockets we bind ourselves.
//!
//! [`serve`] runs a handler per connection under the limits of postroom-tree(5), LIMITS AND SECURITY:
//! connections in total and per IP, idle time per read and write, session
//! time, and a TLS handshake time. Every connection has a short random id
//! and runs in a `tracing` span `conn=<id> peer=<ip:port>`, so every log line
//! a handler writes says which session it belongs to.
//!
//! Memory per idle connection is kept small on purpose (one 4 KiB read
//! buffer, output buffers released after large flushes) so one standalone
//! process can hold 10,000 idle sessions; `postroom-bench net` measures it.
//!
//! Security: [`Connection::start_tls`] discards every byte received before
//! the handshake (CVE-2011-0411, "STARTTLS command injection"), and nothing
//! here panics on what a client sends.

mod connection;
pub mod dane;
pub mod dns;
mod launch;
pub mod log;
pub mod mta_sts;
pub mod privileges;
mod serve;
pub mod server;
pub mod tls;
pub mod tlsrpt;

use std::io;
use std::net::SocketAddr;
use std::time::Duration;

/// Bytes read from the socket at a time, and the only input buffer a
/// connection keeps while idle.
pub const READ_BUFFER: usize = 4096;

/// Pending output above which [`Connection::write_bulk`] sends before
/// buffering more, so a large message costs at most this much memory.
pub const OUTPUT_HIGH_WATER: usize = 1 << 20;

/// How long a stopping server waits for sessions in progress.
pub const SHUTDOWN_GRACE: Duration = Duration::from_secs(10);

/// An output buffer larger than this is freed after a flush instead of kept
/// for the next reply: idle sessions must stay small.
const KEEP_OUTPUT_CAPACITY: usize = 16 * 1024;

/// What went wrong with a connection or a listening socket.
#[derive(Debug, thiserror::Error)]
pub enum NetError {
    /// The client closed the connection (or reset it), possibly in the
    /// middle of a line. Nothing to reply; end the session.
    #[error("connection closed by the client")]
    Closed,
    /// The client sent nothing, or read nothing, for `limits.idle_timeout`.
    /// Reply with a timeout error if the protocol has one, then end.
    #[error("timed out waiting for the client (limits.idle_timeout)")]
    Timeout,
    /// A line was longer than the caller's maximum. The rest of it has been
    /// read and thrown away, so the session can reply with an error and go
    /// on reading the next line.
    #[error("line too long (limits.line_length)")]
    LineTooLong,
    /// A TLS handshake failed, or TLS cannot be started here.
    #[error("TLS: {0}")]
    Tls(String),
    /// Any other I/O error on the connection (or on the writer given to
    /// [`Connection::read_exact_into`]).
    #[error("I/O error: {0}")]
    Io(#[from] io::Error),
    /// A `--listen` address could not be bound.
    #[error("cannot listen on {addr}: {}", bind_hint(error))]
    Bind {
        addr: SocketAddr,
        #[source]
        error: io::Error,
    },
    /// A socket passed in `LISTEN_FDS` is not a listening TCP socket.
    #[error(
        "inherited socket {index} ({name:?}): {error} (the systemd .socket unit must use ListenStream= with a TCP address)"
    )]
    Inherited {
        index: usize,
        name: String,
        #[source]
        error: io::Error,
    },
}

fn bind_hint(error: &io::Error) -> String {
    match error.kind() {
        io::ErrorKind::AddrInUse => {
            "address already in use: another server is listening there (stop it, or choose another --listen address)".into()
        }
        io::ErrorKind::PermissionDenied => {
            "permission denied: ports below 1024 need root or CAP_NET_BIND_SERVICE (or use systemd socket activation)".into()
        }
        io::ErrorKind::AddrNotAvailable => {
            "address not available: no interface on this host has that address".into()
        }
        _ => error.to_string(),
    }
}

/// Errors a peer causes by going away are all the same to a session.
fn from_io(error: io::Error) -> NetError {
    match error.kind() {
        io::ErrorKind::UnexpectedEof
        | io::ErrorKind::ConnectionReset
        | io::ErrorKind::ConnectionAborted
        | io::ErrorKind::BrokenPipe => NetError::Closed,
        _ => NetError::Io(error),
    }
}

pub use connection::Connection;
pub use launch::{Launch, Listener, is_implicit_tls_name};
pub use serve::serve;

#[cfg(test)]
mod tests {
    use super::serve::{peer_from_env, serve_until};
    use super::*;
    use crate::config::{Limits, Plaintext};
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio::net::{TcpListener, TcpStream};
    use tokio::time::timeout;
    use tokio_rustls::TlsAcceptor;

    const IDLE: Duration = Duration::from_secs(5);

    /// A server-side Connection and the client's end, over loopback TCP.
    async fn pair(idle: Duration) -> (Connection, TcpStream) {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let client = TcpStream::connect(listener.local_addr().unwrap())
            .await
            .unwrap();
        let (server, peer) = listener.accept().await.unwrap();
        let local = server.local_addr().ok();
        let conn = Connection::with_parts(Box::new(server), Some(peer), local, "test".into(), idle);
        (conn, client)
    }

    fn tls_fixture() -> (tempfile::TempDir, TlsAcceptor, tokio_rustls::TlsConnector) {
        let (dir, cert, key) = crate::net::tls::tests::generated_pair();
        let acceptor = TlsAcceptor::from(crate::net::tls::server_config(&cert, &key).unwrap());
        let connector =
            tokio_rustls::TlsConnector::from(crate::net::tls::tests::client_trusting(&cert));
        (dir, acceptor, connector)
    }

    #[tokio::test]
    async fn lines_end_at_lf_and_keep_their_bytes() {
        let (mut conn, mut client) = pair(IDLE).await;
        client
            .write_all(b"EHLO a\r\nNOOP\nbare\rcr\r\nlast")
            .await
            .unwrap();
        client.shutdown().await.unwrap();
        assert_eq!(conn.read_line(512).await.unwrap(), b"EHLO a\r\n");
        assert_eq!(conn.read_line(512).await.unwrap(), b"NOOP\n");
        assert_eq!(conn.read_line(512).await.unwrap(), b"bare\rcr\r\n");
        // A partial line at EOF is not a line.
        assert!(matches!(conn.read_line(512).await, Err(NetError::Closed)));
        assert!(conn.is_secure(), "loopback peer");
        assert_eq!(conn.listener_name(), "test");
        assert_eq!(conn.id().len(), 8);
    }

    #[tokio::test]
    async fn long_line_is_discarded_and_the_next_one_read() {
        let (mut conn, mut client) = pair(IDLE).await;
        let long = vec![b'x'; 3 * READ_BUFFER + 17];
        let writer = tokio::spawn(async move {
            client.write_all(&long).await.unwrap();
            client.write_all(b"\r\nQUIT\r\n").await.unwrap();
            client
        });
        assert!(matches!(
            conn.read_line(1000).await,
            Err(NetError::LineTooLong)
        ));
        assert!(conn.line.capacity() <= 1000, "held at most max bytes");
        assert_eq!(conn.read_line(1000).await.unwrap(), b"QUIT\r\n");
        drop(writer.await.unwrap());

        // Exactly max bytes, LF included, is allowed; one more is not.
        let (mut conn, mut client) = pair(IDLE).await;
        client.write_all(b"abc\r\nabcd\r\nok\n").await.unwrap();
        assert_eq!(conn.read_line(5).await.unwrap(), b"abc\r\n");
        assert!(matches!(
            conn.read_line(5).await,
            Err(NetError::LineTooLong)
        ));
        assert_eq!(conn.read_line(5).await.unwrap(), b"ok\n");
    }

    #[tokio::test]
    async fn a_long_line_tells_whether_it_ended_with_crlf() {
        let (mut conn, mut client) = pair(IDLE).await;
        let writer = tokio::spawn(async move {
            // The CR of the first line ends one read, its LF starts the next.
            client.write_all(&vec![b'x'; 2000]).await.unwrap();
            client.write_all(b"\r").await.unwrap();
            tokio::time::sleep(Duration::from_millis(50)).await;
            client.write_all(b"\n").await.unwrap();
            client.write_all(&vec![b'y'; 2000]).await.unwrap();
            client.write_all(b"\n.\r\n").await.unwrap();
            client
        });
        assert!(matches!(
            conn.read_line(1000).await,
            Err(NetError::LineTooLong)
        ));
        assert!(conn.long_line_ended_with_crlf());
        assert!(matches!(
            conn.read_line(1000).await,
            Err(NetError::LineTooLong)
        ));
        assert!(!conn.long_line_ended_with_crlf(), "a bare LF");
        assert_eq!(conn.read_line(1000).await.unwrap(), b".\r\n");
        drop(writer.await.unwrap());
    }

    #[tokio::test]
    async fn replies_go_out_before_a_read_that_waits_for_the_client() {
        let (mut conn, mut client) = pair(IDLE).await;
        conn.flush_before_reading();
        // The first two commands are in hand: their replies wait.
        client
            .write_all(b"NOOP\r\nNOOP\r\nBDAT 5\r\nab")
            .await
            .unwrap();
        let mut chunk = Vec::new();
        for _ in 0..2 {
            assert_eq!(conn.read_line(512).await.unwrap(), b"NOOP\r\n");
            conn.write(b"250 ok\r\n");
        }
        assert_eq!(conn.read_line(512).await.unwrap(), b"BDAT 5\r\n");
        let client = tokio::spawn(async move {
            // The client sends the rest of the chunk only once it has the
            // replies: the server must send them before it waits.
            let mut replies = [0u8; 16];
            client.read_exact(&mut replies).await.unwrap();
            assert_eq!(&replies, b"250 ok\r\n250 ok\r\n");
            client.write_all(b"cde").await.unwrap();
            client
        });
        timeout(Duration::from_secs(5), conn.read_exact_into(5, &mut chunk))
            .await
            .expect("the replies were sent before the read waited")
            .unwrap();
        assert_eq!(chunk, b"abcde");
        drop(client.await.unwrap());
    }

    #[tokio::test]
    async fn silent_client_times_out() {
        let (mut conn, _client) = pair(Duration::from_millis(100)).await;
        let started = std::time::Instant::now();
        assert!(matches!(conn.read_line(512).await, Err(NetError::Timeout)));
        assert!(started.elapsed() >= Duration::from_millis(100));
    }

    #[tokio::test]
    async fn client_that_never_reads_is_cut_off() {
        let (mut conn, _client) = pair(Duration::from_millis(200)).await;
        // Far more than the socket buffers on both sides can hold.
        let block = vec![b'y'; 256 * 1024];
        let mut result = Ok(());
        for _ in 0..400 {
            result = conn.write_bulk(&block).await;
            if result.is_err() {
                break;
            }
        }
        assert!(matches!(result, Err(NetError::Timeout)), "{result:?}");
        assert!(conn.out.len() <= OUTPUT_HIGH_WATER);
    }

    #[tokio::test]
    async fn read_exact_streams_a_chunk() {
        let (mut conn, mut client) = pair(IDLE).await;
        let body: Vec<u8> = (0..20_000u32).map(|i| (i % 251) as u8).collect();
        let mut sent = b"BDAT 20000 LAST\r\n".to_vec();
        sent.extend_from_slice(&body);
        sent.extend_from_slice(b"QUIT\r\n");
        let writer = tokio::spawn(async move {
            client.write_all(&sent).await.unwrap();
            client
        });
        assert_eq!(conn.read_line(512).await.unwrap(), b"BDAT 20000 LAST\r\n");
        let mut got = Vec::new();
        conn.read_exact_into(20_000, &mut got).await.unwrap();
        assert_eq!(got, body);
        assert_eq!(conn.read_line(512).await.unwrap(), b"QUIT\r\n");
        assert!(!conn.has_buffered_input());
        let client = writer.await.unwrap();
        drop(client);
        let mut more = Vec::new();
        assert!(matches!(
            conn.read_exact_into(1, &mut more).await,
            Err(NetError::Closed)
        ));
    }

    #[tokio::test]
    async fn replies_are_buffered_until_flush() {
        let (mut conn, mut client) = pair(IDLE).await;
        conn.write(b"250-first\r\n");
        conn.write(b"250 second\r\n");
        conn.flush().await.unwrap();
        conn.shutdown().await.unwrap();
        let mut got = Vec::new();
        client.read_to_end(&mut got).await.unwrap();
        assert_eq!(got, b"250-first\r\n250 second\r\n");
    }

    /// CVE-2011-0411: plaintext sent after STARTTLS in the same packet must
    /// never be read as if it had come over TLS.
    #[tokio::test]
    async fn starttls_discards_injected_plaintext() {
        let (_dir, acceptor, connector) = tls_fixture();
        let (mut conn, mut client) = pair(IDLE).await;
        let client_side = tokio::spawn(async move {
            client
                .write_all(b"STARTTLS\r\nMAIL FROM:<evil@x>\r\n")
                .await
                .unwrap();
            let mut reply = [0u8; 21];
            client.read_exact(&mut reply).await.unwrap();
            assert_eq!(&reply, b"220 2.0.0 Ready now\r\n");
            let name = rustls_pki_types::ServerName::try_from("localhost").unwrap();
            let mut tls = connector.connect(name, client).await.unwrap();
            tls.write_all(b"EHLO client.test\r\n").await.unwrap();
            tls.flush().await.unwrap();
            let mut line = Vec::new();
            tls.read_to_end(&mut line).await.unwrap();
            line
        });
        assert_eq!(conn.read_line(512).await.unwrap(), b"STARTTLS\r\n");
        // Both commands came in one segment: the injected one is buffered.
        // (On loopback one write arrives in one read; if it ever did not,
        // the injected bytes would break the handshake instead.)
        assert!(conn.has_buffered_input());
        conn.write(b"220 2.0.0 Ready now\r\n");
        conn.start_tls(&acceptor).await.unwrap();
        assert!(!conn.has_buffered_input());
        assert!(conn.is_tls());
        let info = conn.tls_info().unwrap();
        assert!(info.starts_with("TLSv1.3 with cipher TLS13_"), "{info}");
        assert_eq!(conn.read_line(512).await.unwrap(), b"EHLO client.test\r\n");
        assert!(matches!(
            conn.start_tls(&acceptor).await,
            Err(NetError::Tls(_))
        ));
        conn.write(b"250 ok\r\n");
        conn.shutdown().await.unwrap();
        assert_eq!(client_side.await.unwrap(), b"250 ok\r\n");
    }

    fn test_limits(per_ip: usize) -> Limits {
        Limits {
            connections_per_ip: per_ip,
            idle_timeout: IDLE,
            ..Limits::default()
        }
    }

    /// A handler that greets, then echoes lines until QUIT or EOF.
    async fn echo(mut conn: Connection) {
        conn.write(b"hello ");
        conn.write(conn.listener_name().as_bytes().to_vec().as_slice());
        conn.write(b"\r\n");
        if conn.flush().await.is_err() {
            return;
        }
        while let Ok(line) = conn.read_line(512).await {
            if line == b"QUIT\r\n" {
                break;
            }
            conn.write(&line);
            if conn.flush().await.is_err() {
                return;
            }
        }
    }

    async fn read_reply(stream: &mut TcpStream) -> Vec<u8> {
        let mut got = Vec::new();
        let mut byte = [0u8; 1];
        while !got.ends_with(b"\n") {
            if stream.read(&mut byte).await.unwrap() == 0 {
                break;
            }
            got.push(byte[0]);
        }
        got
    }

    #[tokio::test]
    async fn serve_refuses_over_the_per_ip_limit() {
        let addr: SocketAddr = "127.0.0.1:0".parse().unwrap();
        let launch = Launch::from_args(&[addr], &[]).unwrap();
        let bound = launch.local_addrs()[0];
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let server = tokio::spawn(async move {
            serve_until(
                launch,
                &test_limits(1),
                None,
                b"421 4.7.0 too many connections\r\n",
                echo,
                async {
                    let _ = stopped.await;
                },
            )
            .await
        });

        let mut first = TcpStream::connect(bound).await.unwrap();
        let greeting = read_reply(&mut first).await;
        assert_eq!(greeting, format!("hello {bound}\r\n").as_bytes());

        let mut second = TcpStream::connect(bound).await.unwrap();
        let mut refused = Vec::new();
        second.read_to_end(&mut refused).await.unwrap();
        assert_eq!(refused, b"421 4.7.0 too many connections\r\n");

        // The first session is unaffected, and once it ends its place is free.
        first.write_all(b"ping\r\n").await.unwrap();
        assert_eq!(read_reply(&mut first).await, b"ping\r\n");
        first.write_all(b"QUIT\r\n").await.unwrap();
        let mut rest = Vec::new();
        first.read_to_end(&mut rest).await.unwrap();
        let mut third = TcpStream::connect(bound).await.unwrap();
        assert_eq!(read_reply(&mut third).await, greeting);

        // Stopping waits for the open session, which ends when its client does.
        stop.send(()).unwrap();
        tokio::time::sleep(Duration::from_millis(50)).await;
        assert!(!server.is_finished(), "waits for the session in progress");
        drop(third);
        let result = timeout(Duration::from_secs(5), server).await.unwrap();
        result.unwrap().unwrap();
        assert!(TcpStream::connect(bound).await.is_err(), "listener closed");
    }

    #[tokio::test]
    async fn serve_implicit_tls_listener() {
        let (_dir, acceptor, connector) = tls_fixture();
        let addr: SocketAddr = "127.0.0.1:0".parse().unwrap();
        let launch = Launch::from_args(&[], &[addr]).unwrap();
        let bound = launch.local_addrs()[0];
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let server = tokio::spawn(async move {
            serve_until(
                launch,
                &test_limits(10),
                Some(acceptor),
                b"421 busy\r\n",
                |mut conn: Connection| async move {
                    let info = conn.tls_info().unwrap_or_default();
                    conn.write(format!("* OK {info}\r\n").as_bytes());
                    let _ = conn.shutdown().await;
                },
                async {
                    let _ = stopped.await;
                },
            )
            .await
        });
        let tcp = TcpStream::connect(bound).await.unwrap();
        let name = rustls_pki_types::ServerName::try_from("127.0.0.1").unwrap();
        let mut tls = connector.connect(name, tcp).await.unwrap();
        let mut got = Vec::new();
        tls.read_to_end(&mut got).await.unwrap();
        let got = String::from_utf8(got).unwrap();
        assert!(got.starts_with("* OK TLSv1.3 with cipher"), "{got}");
        stop.send(()).unwrap();
        server.await.unwrap().unwrap();

        // Implicit TLS without a certificate is a setup error.
        let launch = Launch::from_args(&[], &[addr]).unwrap();
        let e = serve_until(launch, &test_limits(1), None, b"", echo, async {})
            .await
            .unwrap_err();
        assert!(e.to_string().contains("postroom init"), "{e}");
    }

    #[test]
    fn bind_error_says_address_in_use() {
        let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = taken.local_addr().unwrap();
        let e = Launch::from_args(&[addr], &[]).unwrap_err().to_string();
        assert!(
            e.contains("already in use") && e.contains(&addr.to_string()),
            "{e}"
        );
    }

    #[test]
    fn implicit_tls_socket_names() {
        for name in [
            "smtps",
            "submissions",
            "imaps",
            "pop3s",
            "postroom-imaps.socket",
            "IMAPS",
            "submission-tls",
        ] {
            assert!(is_implicit_tls_name(name), "{name}");
        }
        for name in [
            "smtp",
            "submission",
            "imap",
            "pop3",
            "postroom-smtp.socket",
            "fd3",
            "s",
        ] {
            assert!(!is_implicit_tls_name(name), "{name}");
        }
    }

    #[test]
    fn peer_from_launcher_environment() {
        let env = |pairs: &'static [(&'static str, &'static str)]| {
            move |key: &str| {
                pairs
                    .iter()
                    .find(|(k, _)| *k == key)
                    .map(|(_, v)| v.to_string())
            }
        };
        assert_eq!(peer_from_env(env(&[])), None);
        assert_eq!(
            peer_from_env(env(&[
                ("TCPREMOTEIP", "192.0.2.7"),
                ("TCPREMOTEPORT", "4711")
            ])),
            Some("192.0.2.7:4711".parse().unwrap())
        );
        assert_eq!(
            peer_from_env(env(&[("REMOTE_ADDR", "2001:db8::1")])),
            Some("[2001:db8::1]:0".parse().unwrap())
        );
        assert_eq!(
            peer_from_env(env(&[
                ("REMOTE_ADDR", "::ffff:192.0.2.9"),
                ("REMOTE_PORT", "25")
            ])),
            Some("192.0.2.9:25".parse().unwrap())
        );
        assert_eq!(peer_from_env(env(&[("TCPREMOTEIP", "garbage")])), None);
    }

    #[test]
    fn plaintext_rule() {
        let (a, _b) = tokio::io::duplex(64);
        let remote = Connection::new(a, Some("192.0.2.1:1000".parse().unwrap()), "x", IDLE);
        assert!(!remote.is_secure());
        let (a, _b) = tokio::io::duplex(64);
        let mapped = Connection::new(a, Some("[::ffff:127.0.0.1]:1".parse().unwrap()), "x", IDLE);
        assert!(mapped.is_secure());
        let (a, _b) = tokio::io::duplex(64);
        let pipe = Connection::new(a, None, "x", IDLE);
        assert!(!pipe.is_secure(), "a pipe that names no peer");
        assert!(pipe.may_send_password(Plaintext::Always));
        assert!(!mapped.may_send_password(Plaintext::Never));
        assert!(!remote.may_send_password(Plaintext::Loopback));
    }
}
