//! smtp-send and MTA-STS (RFC 8461) with TLS reporting records (RFC 8460):
//! a loopback DNS server publishes `_mta-sts` records, a loopback HTTPS
//! server (certificate from a test CA) serves the policies, and loopback
//! SMTP sinks play the MX hosts.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use crate::dns::Record;
use crate::sink::Behaviour;
use crate::smtp_send::{World, a, ca_and_server_configs, mx, ok};
use crate::util::Tree;
use mail_parser::MimeHeaders;

/// An HTTPS server on 127.0.1.1 answering every request with the policy
/// it holds (or whatever body a test puts there); counts requests.
struct PolicyServer {
    addr: SocketAddr,
    body: Arc<Mutex<Vec<u8>>>,
    requests: Arc<AtomicUsize>,
    stop: Arc<AtomicBool>,
}

impl PolicyServer {
    fn start(tls: Arc<rustls::ServerConfig>, body: &str) -> PolicyServer {
        let listener = TcpListener::bind("127.0.1.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        let body = Arc::new(Mutex::new(body.as_bytes().to_vec()));
        let requests = Arc::new(AtomicUsize::new(0));
        let stop = Arc::new(AtomicBool::new(false));
        let (served, counted, stopped) = (body.clone(), requests.clone(), stop.clone());
        std::thread::spawn(move || {
            for stream in listener.incoming() {
                if stopped.load(Ordering::Relaxed) {
                    break;
                }
                let Ok(stream) = stream else { continue };
                let Ok(conn) = rustls::ServerConnection::new(tls.clone()) else {
                    continue;
                };
                let mut tls = rustls::StreamOwned::new(conn, stream);
                let mut head = Vec::new();
                let mut byte = [0u8; 1];
                while !head.ends_with(b"\r\n\r\n") {
                    match tls.read(&mut byte) {
                        Ok(1) => head.push(byte[0]),
                        _ => break,
                    }
                }
                if !head.starts_with(b"GET /.well-known/mta-sts.txt HTTP/1.1\r\n") {
                    continue;
                }
                counted.fetch_add(1, Ordering::SeqCst);
                let body = served.lock().unwrap().clone();
                let reply = format!(
                    "HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
                    body.len()
                );
                let _ = tls.write_all(reply.as_bytes());
                let _ = tls.write_all(&body);
                tls.conn.send_close_notify();
                let _ = tls.flush();
            }
        });
        PolicyServer {
            addr,
            body,
            requests,
            stop,
        }
    }

    fn serve(&self, body: &str) {
        *self.body.lock().unwrap() = body.as_bytes().to_vec();
    }

    fn requests(&self) -> usize {
        self.requests.load(Ordering::SeqCst)
    }
}

impl Drop for PolicyServer {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        // Wakes the accept loop so it sees the flag.
        let _ = std::net::TcpStream::connect(self.addr);
    }
}

fn policy(mode: &str, mx: &str, max_age: u64) -> String {
    format!("version: STSv1\r\nmode: {mode}\r\nmx: {mx}\r\nmax_age: {max_age}\r\n")
}

/// far.test with one MX, mx.far.test (127.0.0.2), and an MTA-STS record
/// with id `one`; the policy server holds `body`. Returns the world, the
/// policy server and a server config for mx.far.test from the same CA.
fn sts_world(body: &str) -> (World, PolicyServer, Arc<rustls::ServerConfig>) {
    sts_world_with(body, true)
}

/// [`sts_world`], with a policy server whose certificate the sender
/// trusts or not.
fn sts_world_with(
    body: &str,
    trusted_policy_server: bool,
) -> (World, PolicyServer, Arc<rustls::ServerConfig>) {
    let (ca_pem, mut configs) = ca_and_server_configs(&["mta-sts.far.test", "mx.far.test"]);
    let mx_tls = configs.remove(1);
    let policy_tls = if trusted_policy_server {
        configs.remove(0)
    } else {
        ca_and_server_configs(&["mta-sts.far.test"]).1.remove(0)
    };
    let server = PolicyServer::start(policy_tls, body);
    let tree = Tree::new();
    tree.add_user("ann@example.test");
    tree.add_user("postmaster@example.test");
    let ca = tree.dir.path().join("ca.pem");
    std::fs::write(&ca, ca_pem).unwrap();
    let world = World::with_tree(
        tree,
        vec![
            ("far.test", mx(10, "mx.far.test")),
            ("mx.far.test", a(2)),
            ("_mta-sts.far.test", Record::Txt("v=STSv1; id=one;".into())),
            ("mta-sts.far.test", Record::A("127.0.1.1".parse().unwrap())),
        ],
        &format!(
            "ca_file = \"{}\"\nmta_sts_port = {}\n",
            ca.display(),
            server.addr.port()
        ),
    );
    (world, server, mx_tls)
}

/// The MX sink at 127.0.0.2, offering STARTTLS with `tls`.
fn tls_sink(w: &World, tls: Arc<rustls::ServerConfig>) -> crate::sink::Sink {
    w.sink(
        2,
        Behaviour {
            tls: Some(tls),
            ..Behaviour::default()
        },
    )
}

/// The tree's `state/` folder.
fn state(world: &World) -> std::path::PathBuf {
    world.tree.config.parent().unwrap().join("state")
}

/// The TLS report lines written for far.test so far.
fn report_lines(world: &World) -> Vec<serde_json::Value> {
    let dir = state(world).join("tlsrpt");
    let mut lines = Vec::new();
    for day in std::fs::read_dir(&dir).into_iter().flatten().flatten() {
        if let Ok(text) = std::fs::read_to_string(day.path().join("far.test")) {
            lines.extend(text.lines().map(|l| serde_json::from_str(l).unwrap()));
        }
    }
    lines
}

fn results(world: &World) -> Vec<String> {
    report_lines(world)
        .iter()
        .map(|l| l["result"].as_str().unwrap_or("").to_string())
        .collect()
}

#[test]
fn enforce_delivers_over_verified_tls_to_a_listed_mx_and_records_success() {
    let (w, server, mx_tls) = sts_world(&policy("enforce", "*.far.test", 86400));
    let sink = tls_sink(&w, mx_tls);
    w.queue_mail(&["bob@far.test"], "hi\n");
    ok(&w.send(&["--once"]));
    let got = sink.messages();
    assert_eq!(got.len(), 1);
    assert!(got[0].tls, "delivered over TLS");
    assert_eq!(server.requests(), 1);
    let cache = std::fs::read_to_string(state(&w).join("mta-sts/far.test")).unwrap();
    assert!(
        cache.contains("id: one") && cache.contains("mode: enforce"),
        "{cache}"
    );
    let lines = report_lines(&w);
    assert_eq!(lines.len(), 1, "{lines:?}");
    assert_eq!(lines[0]["policy_type"], "sts");
    assert_eq!(lines[0]["result"], "success");
    assert_eq!(lines[0]["mx_host"], "mx.far.test");

    // A second run uses the cached policy: the id did not change.
    w.queue_mail(&["carol@far.test"], "again\n");
    ok(&w.send(&["--once"]));
    assert_eq!(sink.messages().len(), 2);
    assert_eq!(server.requests(), 1, "the cached policy was used");
}

#[test]
fn enforce_defers_when_no_mx_matches_the_policy() {
    let (w, server, mx_tls) = sts_world(&policy("enforce", "mx.elsewhere.test", 86400));
    let sink = tls_sink(&w, mx_tls);
    w.queue_mail(&["bob@far.test"], "hi\n");
    ok(&w.send(&["--once"]));
    assert!(sink.messages().is_empty(), "nothing went to an unlisted MX");
    assert_eq!(server.requests(), 1);
    let ids = w.queue_ids();
    assert_eq!(ids.len(), 1, "deferred, not bounced");
    let show = w.show(&ids[0]);
    assert!(show.contains("4.7.5") && show.contains("MTA-STS"), "{show}");
    assert_eq!(results(&w), ["validation-failure"]);
}

#[test]
fn enforce_defers_when_the_mx_certificate_does_not_verify() {
    let (w, _server, _mx_tls) = sts_world(&policy("enforce", "mx.far.test", 86400));
    // A certificate from a CA nobody trusts.
    let (_other_ca, mut untrusted) = ca_and_server_configs(&["mx.far.test"]);
    let sink = tls_sink(&w, untrusted.remove(0));
    w.queue_mail(&["bob@far.test"], "hi\n");
    ok(&w.send(&["--once"]));
    assert!(sink.messages().is_empty());
    let ids = w.queue_ids();
    assert_eq!(ids.len(), 1);
    assert!(w.show(&ids[0]).contains("4.7.5"), "{}", w.show(&ids[0]));
    assert_eq!(results(&w), ["certificate-not-trusted"]);
}

#[test]
fn enforce_defers_when_the_mx_offers_no_starttls() {
    let (w, _server, _mx_tls) = sts_world(&policy("enforce", "mx.far.test", 86400));
    let sink = w.sink(2, Behaviour::default());
    w.queue_mail(&["bob@far.test"], "hi\n");
    ok(&w.send(&["--once"]));
    assert!(sink.messages().is_empty(), "no plaintext under enforce");
    assert_eq!(w.queue_ids().len(), 1);
    assert_eq!(results(&w), ["starttls-not-supported"]);
}

#[test]
fn testing_mode_delivers_anyway_and_records_the_failure() {
    let (w, _server, _mx_tls) = sts_world(&policy("testing", "mx.far.test", 86400));
    let (_other_ca, mut untrusted) = ca_and_server_configs(&["mx.far.test"]);
    let sink = tls_sink(&w, untrusted.remove(0));
    w.queue_mail(&["bob@far.test"], "hi\n");
    ok(&w.send(&["--once"]));
    let got = sink.messages();
    assert_eq!(got.len(), 1, "testing mode delivers");
    assert!(got[0].tls, "with opportunistic TLS after the failed check");
    assert!(w.queue_ids().is_empty());
    let got = results(&w);
    assert!(
        got.contains(&"certificate-not-trusted".to_string()),
        "{got:?}"
    );
}

#[test]
fn a_new_policy_id_or_an_expired_policy_is_fetched_again() {
    let (w, server, mx_tls) = sts_world(&policy("enforce", "mx.far.test", 86400));
    let sink = tls_sink(&w, mx_tls);
    w.queue_mail(&["a@far.test"], "1\n");
    ok(&w.send(&["--once"]));
    assert_eq!((server.requests(), sink.messages().len()), (1, 1));

    // The domain moves its mail elsewhere and announces a new id.
    server.serve(&policy("enforce", "mx.elsewhere.test", 86400));
    w.dns.set(
        "_mta-sts.far.test",
        vec![Record::Txt("v=STSv1; id=two;".into())],
    );
    w.queue_mail(&["b@far.test"], "2\n");
    ok(&w.send(&["--once"]));
    assert_eq!(server.requests(), 2, "fetched again for the new id");
    assert_eq!(
        sink.messages().len(),
        1,
        "the new policy no longer lists mx.far.test"
    );
    let cache_file = state(&w).join("mta-sts/far.test");
    let cache = std::fs::read_to_string(&cache_file).unwrap();
    assert!(cache.contains("id: two") && cache.contains("mx.elsewhere.test"));

    // Back to mx.far.test, same id: the cache is used until max_age runs
    // out; a policy fetched long ago has, so it is fetched again.
    server.serve(&policy("enforce", "mx.far.test", 86400));
    ok(&w.send(&["--flush"]));
    assert_eq!(server.requests(), 2, "same id, fresh cache: no fetch");
    let aged = cache.replace(
        &cache
            .lines()
            .find(|l| l.starts_with("fetched: "))
            .unwrap()
            .to_string(),
        "fetched: 1000",
    );
    std::fs::write(&cache_file, aged).unwrap();
    ok(&w.send(&["--flush"]));
    assert_eq!(server.requests(), 3, "expired: fetched again");
    assert_eq!(sink.messages().len(), 2, "and the deferred message went");
    assert!(w.queue_ids().is_empty());
}

#[test]
fn a_policy_larger_than_the_limit_is_no_policy_and_is_reported() {
    let big = format!(
        "{}{}",
        policy("enforce", "mx.elsewhere.test", 86400),
        "x: y\r\n".repeat(70 * 1024 / 6)
    );
    let (w, server, _mx_tls) = sts_world(&big);
    // No TLS at all at the MX: without a usable policy, opportunistic
    // delivery goes on in plaintext (RFC 8461 §5.1).
    let sink = w.sink(2, Behaviour::default());
    w.queue_mail(&["bob@far.test"], "hi\n");
    ok(&w.send(&["--once"]));
    assert_eq!(server.requests(), 1);
    assert_eq!(sink.messages().len(), 1, "delivered as without a policy");
    assert!(!state(&w).join("mta-sts/far.test").exists());
    let got = results(&w);
    assert!(got.contains(&"sts-policy-invalid".to_string()), "{got:?}");
}

#[test]
fn a_policy_server_with_an_untrusted_certificate_gives_no_policy() {
    // The policy server shows a certificate from another CA.
    let (w, impostor, mx_tls) =
        sts_world_with(&policy("enforce", "mx.elsewhere.test", 86400), false);
    let sink = tls_sink(&w, mx_tls);
    w.queue_mail(&["bob@far.test"], "hi\n");
    ok(&w.send(&["--once"]));
    assert_eq!(sink.messages().len(), 1, "delivered as without a policy");
    assert_eq!(impostor.requests(), 0, "nothing was asked of it");
    let got = results(&w);
    assert!(got.contains(&"sts-webpki-invalid".to_string()), "{got:?}");
}

#[test]
fn tlsrpt_send_mails_a_finished_day_as_gzipped_json_to_the_rua_address() {
    let (w, _server, mx_tls) = sts_world(&policy("enforce", "mx.far.test", 86400));
    let sink = tls_sink(&w, mx_tls);
    w.queue_mail(&["bob@far.test"], "hi\n");
    ok(&w.send(&["--once"]));
    assert_eq!(sink.messages().len(), 1);
    // Today's record is not reported until the day is over: make it
    // yesterday's.
    let records = state(&w).join("tlsrpt");
    let today = std::fs::read_dir(&records)
        .unwrap()
        .flatten()
        .next()
        .unwrap()
        .path();
    let out = w.tree.postroom(&["tlsrpt", "send"]);
    assert!(out.status.success(), "{}", crate::util::stderr(&out));
    assert!(today.exists(), "today's record stays");
    std::fs::rename(&today, records.join("2026-01-01")).unwrap();
    w.dns.set(
        "_smtp._tls.far.test",
        vec![Record::Txt(
            "v=TLSRPTv1; rua=mailto:ann@example.test".into(),
        )],
    );
    let out = w.tree.postroom(&["tlsrpt", "send", "--dry-run"]);
    assert!(crate::util::stdout(&out).contains("would go to ann@example.test"));
    assert!(
        records.join("2026-01-01/far.test").exists(),
        "a dry run removes nothing"
    );
    let out = w.tree.postroom(&["tlsrpt", "send"]);
    assert!(out.status.success(), "{}", crate::util::stderr(&out));
    assert!(
        !records.join("2026-01-01").exists(),
        "the reported day is gone"
    );
    ok(&w.send(&["--once"]));
    let mail = crate::util::maildir_files(&w.tree.maildir("ann"));
    assert_eq!(mail.len(), 1, "one report");
    let raw = std::fs::read(&mail[0]).unwrap();
    let message = mail_parser::MessageParser::default().parse(&raw).unwrap();
    assert_eq!(
        message.header_raw("TLS-Report-Domain").map(str::trim),
        Some("far.test")
    );
    let gz = message
        .attachments()
        .find(|a| {
            a.content_type()
                .is_some_and(|t| t.subtype() == Some("tlsrpt+gzip"))
        })
        .expect("the gzipped report")
        .contents()
        .to_vec();
    let mut json = String::new();
    std::io::Read::read_to_string(&mut flate2::read::GzDecoder::new(&gz[..]), &mut json).unwrap();
    let report: serde_json::Value = serde_json::from_str(&json).unwrap();
    assert_eq!(
        report["date-range"]["start-datetime"],
        "2026-01-01T00:00:00Z"
    );
    let policy = &report["policies"][0];
    assert_eq!(policy["policy"]["policy-type"], "sts");
    assert_eq!(policy["policy"]["policy-domain"], "far.test");
    assert_eq!(policy["summary"]["total-successful-session-count"], 1);
}
