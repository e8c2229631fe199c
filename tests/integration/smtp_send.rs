//! smtp-send against SMTP servers and a DNS server started on loopback:
//! MX order and fallback, 4xx/5xx, dropped connections, TLS policies,
//! bounces and warnings, local delivery, watching, smarthost AUTH, and
//! SIGKILL in mid-transaction.
//!
//! Every mail exchanger of a test listens on its own loopback address
//! (127.0.0.2, 127.0.0.3, …) with one port the config names in
//! `send.port`, so MX records can point at them as on the Internet.

use std::collections::HashMap;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::os::fd::{AsRawFd, OwnedFd};
use std::process::{Command, Output};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use crate::dns::{DnsServer, Record};
use crate::sink::{Behaviour, Sink};
use crate::util::{Tree, bin, maildir_files, stderr, stdout, wait_until};

/// A tree whose runner asks the test DNS server and connects to its
/// exchangers' one port.
pub(crate) struct World {
    pub(crate) tree: Tree,
    pub(crate) dns: DnsServer,
    /// The exchangers' sockets not yet made sinks (see [`reserve`]).
    reserved: Mutex<HashMap<IpAddr, OwnedFd>>,
}

impl World {
    pub(crate) fn new(records: Vec<(&str, Record)>, extra: &str) -> World {
        let tree = Tree::new();
        tree.add_user("ann@example.test");
        tree.add_user("postmaster@example.test");
        World::with_tree(tree, records, extra)
    }

    /// A world around a tree the caller has prepared (keys made, users
    /// added), for records that depend on it.
    pub(crate) fn with_tree(tree: Tree, records: Vec<(&str, Record)>, extra: &str) -> World {
        let mut table: HashMap<String, Vec<Record>> = HashMap::new();
        for (name, record) in records {
            table.entry(name.to_string()).or_default().push(record);
        }
        let dns = DnsServer::start(table);
        let (port, reserved) = reserve();
        let mut config = std::fs::read_to_string(&tree.config).unwrap();
        config.push_str(&format!(
            "\n[dns]\nnameservers = [\"{}\"]\ntimeout = \"2s\"\n\n\
             [send]\nport = {port}\nconnect_timeout = \"2s\"\ncommand_timeout = \"5s\"\n\
             data_timeout = \"5s\"\n{extra}\n",
            dns.addr
        ));
        std::fs::write(&tree.config, config).unwrap();
        World {
            tree,
            dns,
            reserved: Mutex::new(reserved),
        }
    }

    /// far.test, whose one MX is mx.far.test at 127.0.0.2.
    fn far(extra: &str) -> World {
        World::new(
            vec![("far.test", mx(10, "mx.far.test")), ("mx.far.test", a(2))],
            extra,
        )
    }

    /// A sink on 127.0.0.N at the world's port.
    pub(crate) fn sink(&self, n: u8, behaviour: Behaviour) -> Sink {
        self.sink_at(ip(n), behaviour)
            .expect("one sink per exchanger")
    }

    /// A sink on `addr` at the world's port, from the socket reserved for
    /// it; `None` if there is none (no IPv6 loopback here).
    fn sink_at(&self, addr: IpAddr, behaviour: Behaviour) -> Option<Sink> {
        let socket = self.reserved.lock().unwrap().remove(&addr)?;
        let backlog = nix::sys::socket::Backlog::new(64).unwrap();
        nix::sys::socket::listen(&socket, backlog).unwrap();
        Some(Sink::on(socket.into(), behaviour).expect("sink"))
    }

    pub(crate) fn send(&self, args: &[&str]) -> Output {
        Command::new(bin("smtp-send"))
            .arg("--config")
            .arg(&self.tree.config)
            .args(args)
            .output()
            .expect("run smtp-send")
    }

    /// Queues a message from ann to `rcpts` (remote ones stay queued).
    pub(crate) fn queue_mail(&self, rcpts: &[&str], body: &str) {
        let mut args = vec!["-f", "ann@example.test"];
        args.extend_from_slice(rcpts);
        let message = format!(
            "From: ann@example.test\nTo: {}\nSubject: test\n\n{body}",
            rcpts.join(", ")
        );
        let out = self.tree.inject(&args, message.as_bytes());
        assert!(out.status.success(), "inject: {}", stderr(&out));
    }

    pub(crate) fn queue_ids(&self) -> Vec<String> {
        let out = self.tree.postroom(&["queue", "list", "--json"]);
        let list: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap_or_default();
        list.as_array()
            .map(|a| {
                a.iter()
                    .filter_map(|m| m["id"].as_str().map(str::to_string))
                    .collect()
            })
            .unwrap_or_default()
    }

    pub(crate) fn show(&self, id: &str) -> String {
        stdout(&self.tree.postroom(&["queue", "show", id]))
    }

    /// Ann's messages (the reports she got).
    fn ann_mail(&self) -> Vec<String> {
        maildir_files(&self.tree.maildir("ann"))
            .iter()
            .map(|p| std::fs::read_to_string(p).unwrap())
            .collect()
    }
}

fn ip(n: u8) -> IpAddr {
    IpAddr::V4(Ipv4Addr::new(127, 0, 0, n))
}

/// The exchangers' addresses, 127.0.0.2 to .9 and `::1` where there is
/// one, bound to one port from the start but not listening: a connection
/// to one is refused, as to a host where nothing runs, until
/// [`World::sink`] makes it listen. The port is the one the kernel gives
/// .2; if another address has it taken, all are let go and the kernel
/// asked again. Held from the start, no port can be taken by someone
/// else between its choice and the sink.
fn reserve() -> (u16, HashMap<IpAddr, OwnedFd>) {
    use nix::errno::Errno;
    use nix::sys::socket::{AddressFamily, SockFlag, SockType, SockaddrIn, SockaddrIn6};
    let bound = |addr: SocketAddr| -> nix::Result<OwnedFd> {
        let family = match addr {
            SocketAddr::V4(_) => AddressFamily::Inet,
            SocketAddr::V6(_) => AddressFamily::Inet6,
        };
        let socket =
            nix::sys::socket::socket(family, SockType::Stream, SockFlag::SOCK_CLOEXEC, None)?;
        match addr {
            SocketAddr::V4(a) => nix::sys::socket::bind(socket.as_raw_fd(), &SockaddrIn::from(a))?,
            SocketAddr::V6(a) => nix::sys::socket::bind(socket.as_raw_fd(), &SockaddrIn6::from(a))?,
        }
        Ok(socket)
    };
    'again: for _ in 0..20 {
        let first = bound(SocketAddr::new(ip(2), 0)).unwrap();
        let port = nix::sys::socket::getsockname::<SockaddrIn>(first.as_raw_fd())
            .unwrap()
            .port();
        let mut held = HashMap::from([(ip(2), first)]);
        for n in 3..10 {
            match bound(SocketAddr::new(ip(n), port)) {
                Ok(socket) => held.insert(ip(n), socket),
                Err(_) => continue 'again,
            };
        }
        match bound(SocketAddr::new(Ipv6Addr::LOCALHOST.into(), port)) {
            Ok(socket) => {
                held.insert(Ipv6Addr::LOCALHOST.into(), socket);
            }
            Err(Errno::EADDRINUSE) => continue 'again,
            // No IPv6 loopback here.
            Err(_) => {}
        }
        return (port, held);
    }
    panic!("no port free on every loopback test address");
}

pub(crate) fn ok(out: &Output) {
    assert!(
        out.status.success(),
        "smtp-send failed: {}\n{}",
        stderr(out),
        stdout(out)
    );
}

pub(crate) fn mx(pref: u16, host: &str) -> Record {
    Record::Mx(pref, host.to_string())
}

pub(crate) fn a(n: u8) -> Record {
    Record::A(Ipv4Addr::new(127, 0, 0, n))
}

#[test]
fn one_transaction_per_destination_dot_stuffed_and_removed_when_done() {
    let w = World::new(
        vec![
            ("far.test", mx(10, "mx.far.test")),
            ("mx.far.test", a(2)),
            ("other.test", mx(10, "mx.other.test")),
            ("mx.other.test", a(3)),
        ],
        "",
    );
    let far = w.sink(2, Behaviour::default());
    let other = w.sink(3, Behaviour::default());
    let long_line = "y".repeat(2500);
    let body = format!(".leading dot\n..two\nplain\n{long_line}\n");
    w.queue_mail(&["bob@far.test", "cat@far.test", "dan@other.test"], &body);
    assert_eq!(w.queue_ids().len(), 1);
    ok(&w.send(&["--once"]));

    let got = far.messages();
    assert_eq!(got.len(), 1, "one transaction for both far.test recipients");
    assert_eq!(got[0].rcpts, ["bob@far.test", "cat@far.test"]);
    assert!(
        got[0].mail_from.starts_with("<ann@example.test>"),
        "{}",
        got[0].mail_from
    );
    let text = String::from_utf8(got[0].data.clone()).unwrap();
    assert!(
        text.contains("\r\n.leading dot\r\n..two\r\nplain\r\n"),
        "{text}"
    );
    // The 2500-octet line arrives whole, broken into wire lines.
    let joined = text.replace("\r\n", "");
    assert!(joined.contains(&long_line));
    // DSN parameters go to a server that offers DSN.
    assert!(
        got[0].commands[1].contains("ORCPT=rfc822;bob@far.test"),
        "{:?}",
        got[0].commands
    );
    assert_eq!(other.messages()[0].rcpts, ["dan@other.test"]);
    assert!(w.queue_ids().is_empty(), "delivered mail leaves the queue");
}

#[test]
fn one_connection_carries_several_messages_to_a_destination() {
    let w = World::far("destination_concurrency = 1\nmessages_per_connection = 2\n");
    let sink = w.sink(2, Behaviour::default());
    for n in 0..5 {
        w.queue_mail(&["bob@far.test"], &format!("number {n}\n"));
    }
    ok(&w.send(&["--once"]));
    assert_eq!(sink.messages().len(), 5);
    assert_eq!(
        *sink.connections.lock().unwrap(),
        3,
        "two messages per connection, one connection at a time"
    );
}

#[test]
fn verp_gives_each_recipient_its_own_return_path() {
    use postroom::proto::address::{Address, ReversePath};
    use postroom::store::queue::{Envelope, Recipient, Route};
    let w = World::far("");
    let sink = w.sink(2, Behaviour::default());
    let mut envelope = Envelope::new(
        ReversePath::parse("team-bounces@example.test").unwrap(),
        ["bob@far.test", "cat@far.test"]
            .iter()
            .map(|a| Recipient::new(Route::Remote, Address::parse(a).unwrap()))
            .collect(),
    );
    envelope.verp = true;
    w.tree
        .queue()
        .enqueue(&envelope, b"Subject: list\r\n\r\npost\r\n")
        .unwrap();
    ok(&w.send(&["--once"]));
    let mut froms: Vec<String> = sink
        .messages()
        .iter()
        .map(|m| m.mail_from.clone())
        .collect();
    froms.sort();
    assert_eq!(
        froms,
        [
            "<team-bounces+bob=far.test@example.test>",
            "<team-bounces+cat=far.test@example.test>"
        ]
    );
}

#[test]
fn mx_preference_and_fallback_past_dead_and_busy_hosts() {
    let w = World::new(
        vec![
            ("far.test", mx(10, "dead.far.test")),
            ("far.test", mx(20, "busy.far.test")),
            ("far.test", mx(30, "good.far.test")),
            ("dead.far.test", a(4)),
            ("busy.far.test", a(5)),
            ("good.far.test", a(6)),
        ],
        "",
    );
    // Nothing listens on .4; .5 greets with 421.
    let busy = w.sink(
        5,
        Behaviour {
            greeting: "421 4.3.2 busy".into(),
            ..Behaviour::default()
        },
    );
    let good = w.sink(6, Behaviour::default());
    w.queue_mail(&["bob@far.test"], "hello\n");
    ok(&w.send(&["--once"]));
    assert_eq!(good.messages().len(), 1);
    assert_eq!(
        *busy.connections.lock().unwrap(),
        1,
        "the busy host was tried first"
    );
    assert!(w.queue_ids().is_empty());
}

#[test]
fn temporary_failures_wait_and_permanent_ones_bounce_with_a_report() {
    let w = World::far("");
    let sink = w.sink(
        2,
        Behaviour {
            rcpt: Arc::new(|rcpt: &str| match rcpt {
                "later@far.test" => Some("451 4.2.0 try later".into()),
                "nobody@far.test" => Some("550 5.1.1 no such user".into()),
                _ => None,
            }),
            ..Behaviour::default()
        },
    );
    w.queue_mail(
        &["bob@far.test", "later@far.test", "nobody@far.test"],
        "hello\n",
    );
    ok(&w.send(&["--once"]));
    assert_eq!(sink.messages()[0].rcpts, ["bob@far.test"]);

    // The deferred recipient waits, with its reply on show.
    let ids = w.queue_ids();
    assert_eq!(ids.len(), 1, "the message waits for later@");
    let show = w.show(&ids[0]);
    assert!(show.contains("451 4.2.0 try later"), "{show}");
    assert!(show.contains("550 5.1.1 no such user"), "{show}");

    // Ann got one report, for nobody@ only.
    let reports = w.ann_mail();
    assert_eq!(reports.len(), 1, "{reports:?}");
    let report = &reports[0];
    for want in [
        "Return-Path: <>",
        "multipart/report",
        "Final-Recipient: rfc822; nobody@far.test",
        "Action: failed",
        "Status: 5.1.1",
        "Remote-MTA: dns; mx.far.test",
    ] {
        assert!(report.contains(want), "{want:?} missing:\n{report}");
    }
    assert!(!report.contains("Final-Recipient: rfc822; later@far.test"));

    // A second --once does nothing (backoff); --flush tries again.
    ok(&w.send(&["--once"]));
    assert_eq!(sink.messages().len(), 1);
    ok(&w.send(&["--flush"]));
    assert_eq!(w.queue_ids().len(), 1, "still deferred");
    assert_eq!(w.ann_mail().len(), 1, "no second report");
}

#[test]
fn null_mx_and_missing_domains_bounce_at_once_dns_trouble_waits() {
    let w = World::new(
        vec![
            ("nomail.test", mx(0, "")),
            ("broken.test", Record::ServFail),
        ],
        "",
    );
    w.queue_mail(
        &["x@nomail.test", "y@nowhere.test", "z@broken.test"],
        "hi\n",
    );
    ok(&w.send(&["--once"]));
    let reports = w.ann_mail();
    assert_eq!(reports.len(), 1);
    assert!(reports[0].contains("5.1.10"), "{}", reports[0]);
    assert!(reports[0].contains("y@nowhere.test") && reports[0].contains("5.1.2"));
    assert!(!reports[0].contains("Final-Recipient: rfc822; z@broken.test"));
    let ids = w.queue_ids();
    assert_eq!(ids.len(), 1, "z@broken.test waits");
    assert!(w.show(&ids[0]).contains("4.4.3"), "{}", w.show(&ids[0]));
}

#[test]
fn a_message_over_the_servers_size_fails_without_being_sent() {
    let w = World::far("");
    let sink = w.sink(
        2,
        Behaviour {
            size: 1000,
            ..Behaviour::default()
        },
    );
    w.queue_mail(&["small@far.test"], "short\n");
    ok(&w.send(&["--once"]));
    assert!(
        sink.messages()[0].mail_from.contains("SIZE="),
        "SIZE announced"
    );
    w.queue_mail(&["big@far.test"], &"x".repeat(2000));
    ok(&w.send(&["--once"]));
    assert_eq!(sink.messages().len(), 1, "the big one was not sent");
    let reports = w.ann_mail();
    assert_eq!(reports.len(), 1);
    assert!(reports[0].contains("Status: 5.3.4"), "{}", reports[0]);
}

#[test]
fn eight_bit_content_goes_as_quoted_printable_to_a_server_without_8bitmime() {
    use postroom::proto::address::{Address, ReversePath};
    use postroom::proto::mime::{self, Binary};
    use postroom::store::queue::{Envelope, Recipient, Route};
    let w = World::new(
        vec![
            ("far.test", mx(10, "mx.far.test")),
            ("mx.far.test", a(2)),
            ("new.test", mx(10, "mx.new.test")),
            ("mx.new.test", a(3)),
        ],
        "",
    );
    let old = w.sink(
        2,
        Behaviour {
            eightbitmime: false,
            ..Behaviour::default()
        },
    );
    let new = w.sink(3, Behaviour::default());
    let message = "From: ann@example.test\nTo: bob@far.test\nSubject: x\nMIME-Version: 1.0\n\
                   Content-Type: text/plain; charset=utf-8\nContent-Transfer-Encoding: 8bit\n\n\
                   caf\u{e9} cr\u{e8}me\n";
    // mail-inject declares the 8-bit body BODY=8BITMIME.
    for to in ["bob@far.test", "cat@new.test"] {
        let out = w
            .tree
            .inject(&["-f", "ann@example.test", to], message.as_bytes());
        assert!(out.status.success(), "inject: {}", stderr(&out));
    }
    // 8-bit header fields have no 7-bit form without SMTPUTF8.
    let mut envelope = Envelope::new(
        ReversePath::parse("ann@example.test").unwrap(),
        vec![Recipient::new(
            Route::Remote,
            Address::parse("dan@far.test").unwrap(),
        )],
    );
    envelope.body_type = Some(postroom::proto::address::EnvelopeText::new("8BITMIME", 10).unwrap());
    w.tree
        .queue()
        .enqueue(
            &envelope,
            "From: ann@example.test\r\nSubject: caf\u{e9}\r\n\r\nbody\r\n".as_bytes(),
        )
        .unwrap();
    ok(&w.send(&["--once"]));

    let got = old.messages();
    assert_eq!(got.len(), 1, "only the message with a 7-bit form went");
    assert!(!got[0].mail_from.contains("BODY="), "{}", got[0].mail_from);
    assert!(
        got[0].data.is_ascii(),
        "{}",
        String::from_utf8_lossy(&got[0].data)
    );
    let text = String::from_utf8(got[0].data.clone()).unwrap();
    assert_eq!(
        text.matches("Content-Transfer-Encoding:").count(),
        1,
        "{text}"
    );
    assert!(
        text.contains("Content-Transfer-Encoding: quoted-printable\r\n"),
        "{text}"
    );
    let root = mime::parse(&got[0].data);
    let Binary::Data(body) = mime::binary_data(&got[0].data, Some(&root), &[1]) else {
        panic!("no body in {text}");
    };
    assert_eq!(body, "caf\u{e9} cr\u{e8}me\r\n".as_bytes());

    // A server with 8BITMIME gets the message as it is.
    let got = new.messages();
    assert!(got[0].mail_from.contains("BODY=8BITMIME"));
    assert!(String::from_utf8_lossy(&got[0].data).contains("caf\u{e9} cr\u{e8}me\r\n"));

    let reports = w.ann_mail();
    assert_eq!(reports.len(), 1, "{reports:?}");
    assert!(
        reports[0].contains("Final-Recipient: rfc822; dan@far.test")
            && reports[0].contains("Status: 5.6.3"),
        "{}",
        reports[0]
    );
    assert!(w.queue_ids().is_empty());
}

#[test]
fn a_552_to_rcpt_waits_like_a_452() {
    // warn_after 0: the first deferral brings a delay report.
    let w = World::far("\n[queue]\nwarn_after = 0\n");
    let sink = w.sink(
        2,
        Behaviour {
            rcpt: Arc::new(|rcpt: &str| {
                (rcpt == "r2@far.test").then(|| "552 5.5.3 too many recipients".to_string())
            }),
            ..Behaviour::default()
        },
    );
    w.queue_mail(&["r1@far.test", "r2@far.test"], "hello\n");
    ok(&w.send(&["--once"]));
    assert_eq!(sink.messages()[0].rcpts, ["r1@far.test"]);
    let ids = w.queue_ids();
    assert_eq!(ids.len(), 1, "r2 waits for a later transaction");
    let show = w.show(&ids[0]);
    assert!(show.contains("552 5.5.3 too many recipients"), "{show}");
    let reports = w.ann_mail();
    assert_eq!(reports.len(), 1, "{reports:?}");
    assert!(
        reports[0].contains("Action: delayed") && !reports[0].contains("Action: failed"),
        "{}",
        reports[0]
    );
    assert!(reports[0].contains("Status: 4.5.3"), "{}", reports[0]);
}

/// The report's lines that start with `field`.
fn report_fields<'a>(report: &'a str, field: &str) -> Vec<&'a str> {
    report
        .lines()
        .map(|l| l.trim_end_matches('\r'))
        .filter(|l| l.starts_with(field))
        .collect()
}

#[test]
fn diagnostic_code_is_the_servers_reply_or_says_it_is_ours() {
    // lifetime 0: a deferral fails at once, as one at the end of the
    // lifetime does.
    let w = World::new(
        vec![
            ("far.test", mx(10, "mx.far.test")),
            ("mx.far.test", a(2)),
            ("dead.test", mx(10, "mx.dead.test")),
            ("mx.dead.test", a(3)),
        ],
        "\n[queue]\nlifetime = 0\n",
    );
    // Nothing listens on .3: the connection is refused.
    let _sink = w.sink(
        2,
        Behaviour {
            rcpt: Arc::new(|rcpt: &str| {
                (rcpt == "bob@far.test").then(|| "550 5.1.1 no such user".to_string())
            }),
            ..Behaviour::default()
        },
    );
    w.queue_mail(&["bob@far.test"], "hello\n");
    w.queue_mail(&["zed@dead.test"], "hello\n");
    ok(&w.send(&["--once"]));
    let reports = w.ann_mail();
    assert_eq!(reports.len(), 2, "{reports:?}");
    let report = |rcpt: &str| {
        reports
            .iter()
            .find(|r| r.contains(&format!("Final-Recipient: rfc822; {rcpt}")))
            .unwrap_or_else(|| panic!("no report on {rcpt}: {reports:?}"))
            .as_str()
    };

    let refused = report("bob@far.test");
    assert_eq!(
        report_fields(refused, "Diagnostic-Code:"),
        ["Diagnostic-Code: smtp; 550 5.1.1 no such user"]
    );
    assert_eq!(
        report_fields(refused, "Remote-MTA:"),
        ["Remote-MTA: dns; mx.far.test"]
    );

    let unreached = report("zed@dead.test");
    let code = report_fields(unreached, "Diagnostic-Code:");
    assert_eq!(code.len(), 1, "{unreached}");
    assert!(
        code[0]
            .starts_with("Diagnostic-Code: X-Postroom; cannot connect to mx.dead.test[127.0.0.3]"),
        "{unreached}"
    );
    assert!(!code[0].contains("gave up"), "{unreached}");
    assert!(
        report_fields(unreached, "Remote-MTA:").is_empty(),
        "{unreached}"
    );
    assert_eq!(report_fields(unreached, "Status:"), ["Status: 4.4.1"]);
    // The words for people keep the context.
    assert!(unreached.contains("gave up after 0 days"), "{unreached}");
}

#[test]
fn a_connection_dropped_mid_data_defers_without_a_bounce() {
    let w = World::far("");
    let _sink = w.sink(
        2,
        Behaviour {
            drop_mid_data: true,
            ..Behaviour::default()
        },
    );
    w.queue_mail(&["bob@far.test"], &"long enough body line\n".repeat(10));
    ok(&w.send(&["--once"]));
    let ids = w.queue_ids();
    assert_eq!(ids.len(), 1);
    assert!(w.show(&ids[0]).contains("4.4.2"), "{}", w.show(&ids[0]));
    assert!(w.ann_mail().is_empty(), "no report for a deferral");
}

#[test]
fn lifetime_ends_in_a_bounce_and_a_delay_warning_comes_once() {
    // warn_after 0: the first deferral warns; lifetime 1s: a deferral
    // after that is final.
    let w = World::far("\n[queue]\nwarn_after = 0\nlifetime = \"2s\"\nmin_backoff = 0\n");
    let _sink = w.sink(
        2,
        Behaviour {
            rcpt: Arc::new(|_| Some("450 4.2.1 mailbox busy".into())),
            ..Behaviour::default()
        },
    );
    w.queue_mail(&["bob@far.test"], "hi\n");
    ok(&w.send(&["--once"]));
    let mail = w.ann_mail();
    assert_eq!(mail.len(), 1, "one warning");
    assert!(mail[0].contains("Action: delayed") && mail[0].contains("4.2.1"));
    ok(&w.send(&["--flush"]));
    assert_eq!(w.ann_mail().len(), 1, "still one warning");
    // On purpose: the message must outlive its lifetime (2 s).
    std::thread::sleep(Duration::from_millis(2100));
    ok(&w.send(&["--flush"]));
    let mail = w.ann_mail();
    assert_eq!(mail.len(), 2);
    assert!(
        mail.iter()
            .any(|m| m.contains("Action: failed") && m.contains("gave up")),
        "{mail:?}"
    );
    assert!(w.queue_ids().is_empty());
}

#[test]
fn failed_reports_go_to_the_postmaster_once_and_never_loop() {
    let w = World::far("\n[queue]\npostmaster = \"postmaster@example.test\"\n");
    let _sink = w.sink(
        2,
        Behaviour {
            rcpt: Arc::new(|_| Some("550 5.1.1 gone".into())),
            ..Behaviour::default()
        },
    );
    // A report (null sender) to a remote address that fails.
    let out = w
        .tree
        .inject(&["-f", "", "gone@far.test"], b"Subject: a report\n\nbody\n");
    assert!(out.status.success(), "{}", stderr(&out));
    ok(&w.send(&["--once"]));
    let pm = maildir_files(&w.tree.maildir("postmaster"));
    assert_eq!(pm.len(), 1, "the postmaster heard of it");
    let text = std::fs::read_to_string(&pm[0]).unwrap();
    assert!(text.contains("gone@far.test") && text.contains("Return-Path: <>"));
    ok(&w.send(&["--flush"]));
    assert_eq!(maildir_files(&w.tree.maildir("postmaster")).len(), 1);
    assert!(w.queue_ids().is_empty());
}

#[test]
fn tls_opportunistic_verified_and_required() {
    let dir = tempfile::tempdir().unwrap();
    let (ca_pem, server) = ca_and_server_config("mx.far.test");
    let ca = dir.path().join("ca.pem");
    std::fs::write(&ca, ca_pem).unwrap();
    let w = World::new(
        vec![
            ("far.test", mx(10, "mx.far.test")),
            ("mx.far.test", a(2)),
            ("plain.test", mx(10, "mx.plain.test")),
            ("mx.plain.test", a(3)),
            ("wrongname.test", mx(10, "mx.wrongname.test")),
            ("mx.wrongname.test", a(2)),
        ],
        &format!(
            "ca_file = \"{}\"\n[send.tls_policy]\n\"far.test\" = \"verify\"\n\
             \"plain.test\" = \"encrypt\"\n\"wrongname.test\" = \"verify\"\n",
            ca.display()
        ),
    );
    let tls = w.sink(
        2,
        Behaviour {
            tls: Some(server),
            ..Behaviour::default()
        },
    );
    let plain = w.sink(3, Behaviour::default());
    w.queue_mail(&["bob@far.test"], "secret\n");
    w.queue_mail(&["carl@plain.test"], "secret\n");
    w.queue_mail(&["dave@wrongname.test"], "secret\n");
    ok(&w.send(&["--once"]));
    let got = tls.messages();
    assert_eq!(got.len(), 1, "only the verified name was delivered");
    assert!(got[0].tls && got[0].rcpts == ["bob@far.test"]);
    assert!(
        plain.messages().is_empty(),
        "encrypt refuses a host without STARTTLS"
    );
    let ids = w.queue_ids();
    assert_eq!(ids.len(), 2);
    let shows: String = ids.iter().map(|id| w.show(id)).collect();
    assert!(shows.contains("4.7.4"), "{shows}");
    assert!(shows.contains("4.7.5"), "{shows}");
}

#[test]
fn ipv6_exchangers_and_implicit_mx() {
    let w = World::new(
        vec![
            ("six.test", mx(10, "mx.six.test")),
            ("mx.six.test", Record::Aaaa(std::net::Ipv6Addr::LOCALHOST)),
            // No MX: the domain's own address (RFC 5321 §5.1).
            ("bare.test", a(3)),
        ],
        "",
    );
    let Some(six) = w.sink_at(Ipv6Addr::LOCALHOST.into(), Behaviour::default()) else {
        eprintln!("no IPv6 loopback here; only the implicit MX is tested");
        return;
    };
    let bare = w.sink(3, Behaviour::default());
    w.queue_mail(&["v6@six.test", "b@bare.test"], "hi\n");
    ok(&w.send(&["--once"]));
    assert_eq!(six.messages()[0].rcpts, ["v6@six.test"]);
    assert_eq!(bare.messages()[0].rcpts, ["b@bare.test"]);
}

#[test]
fn opportunistic_tls_is_used_when_offered() {
    let (_ca, server) = ca_and_server_config("mx.far.test");
    let w = World::far("");
    let sink = w.sink(
        2,
        Behaviour {
            tls: Some(server),
            ..Behaviour::default()
        },
    );
    w.queue_mail(&["bob@far.test"], "hi\n");
    ok(&w.send(&["--once"]));
    assert!(sink.messages()[0].tls);
}

/// A CA (PEM) and a server config whose certificate it signed for `name`.
fn ca_and_server_config(name: &str) -> (String, Arc<rustls::ServerConfig>) {
    let (ca, mut configs) = ca_and_server_configs(&[name]);
    (ca, configs.remove(0))
}

/// A CA (PEM) and, for each name, a server config whose certificate it
/// signed for that name.
pub(crate) fn ca_and_server_configs(names: &[&str]) -> (String, Vec<Arc<rustls::ServerConfig>>) {
    let ca_key = rcgen::KeyPair::generate().unwrap();
    let mut ca_params = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
    ca_params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
    let ca = ca_params.self_signed(&ca_key).unwrap();
    let configs = names
        .iter()
        .map(|name| {
            let key = rcgen::KeyPair::generate().unwrap();
            let cert = rcgen::CertificateParams::new(vec![name.to_string()])
                .unwrap()
                .signed_by(&key, &ca, &ca_key)
                .unwrap();
            server_config(&cert, &key)
        })
        .collect();
    (ca.pem(), configs)
}

/// A rustls server config showing `cert` (its key `key`).
pub(crate) fn server_config(
    cert: &rcgen::Certificate,
    key: &rcgen::KeyPair,
) -> Arc<rustls::ServerConfig> {
    let config = rustls::ServerConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .unwrap()
    .with_no_client_auth()
    .with_single_cert(
        vec![cert.der().clone()],
        rustls_pki_types::PrivateKeyDer::Pkcs8(key.serialize_der().into()),
    )
    .unwrap();
    Arc::new(config)
}

#[test]
fn smarthost_with_auth_carries_everything() {
    let dir = tempfile::tempdir().unwrap();
    let secret = dir.path().join("relay-secret");
    std::fs::write(&secret, "relayuser:relaypass\n").unwrap();
    let w = World::new(
        vec![],
        &format!(
            "[send.transports]\n\"*\" = \"[127.0.0.7]\"\n\
             [send.credentials]\n\"127.0.0.7\" = \"{}\"\n",
            secret.display()
        ),
    );
    let relay = w.sink(
        7,
        Behaviour {
            auth: Some(("relayuser".into(), "relaypass".into())),
            ..Behaviour::default()
        },
    );
    w.queue_mail(&["a@one.test", "b@two.test"], "via the relay\n");
    ok(&w.send(&["--once"]));
    let got = relay.messages();
    assert_eq!(got.len(), 1, "both domains share the relay's transaction");
    assert_eq!(got[0].user.as_deref(), Some("relayuser"));
    assert_eq!(got[0].rcpts.len(), 2);
}

#[test]
fn local_recipients_of_queued_mail_and_bad_arguments() {
    let w = World::new(vec![], "");
    w.tree.add_user("bob@example.test");
    let out = w.tree.inject(
        &["-odq", "-f", "ann@example.test", "bob@example.test"],
        b"Subject: q\n\nqueued\n",
    );
    assert!(out.status.success(), "{}", stderr(&out));
    assert_eq!(w.queue_ids().len(), 1);
    ok(&w.send(&["--once"]));
    assert_eq!(maildir_files(&w.tree.maildir("bob")).len(), 1);
    assert!(w.queue_ids().is_empty());

    let out = w.send(&["--message", "0123456789abcdef0123"]);
    assert!(!out.status.success());
    assert!(stderr(&out).contains("no message"), "{}", stderr(&out));
    let out = w.send(&["--once", "--flush"]);
    assert!(!out.status.success(), "conflicting modes are refused");
}

#[test]
fn watch_delivers_new_mail_and_stops_cleanly_on_sigterm() {
    let w = World::far("");
    let sink = w.sink(2, Behaviour::default());
    let mut runner = Command::new(bin("smtp-send"))
        .arg("--config")
        .arg(&w.tree.config)
        .arg("--watch")
        .spawn()
        .unwrap();
    let delivered = |n: usize| {
        wait_until(&format!("{n} delivered"), Duration::from_secs(10), || {
            (sink.messages().len() >= n).then_some(())
        })
    };
    // The first message is sent by the runner's first pass, which starts
    // only once it watches the queue: so it watches now, and the second,
    // queued with no pass due for a minute, can only go by the watch.
    w.queue_mail(&["bob@far.test"], "before\n");
    delivered(1);
    w.queue_mail(&["bob@far.test"], "watched\n");
    delivered(2);
    assert_eq!(sink.messages().len(), 2, "delivered while watching");
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(runner.id() as i32),
        nix::sys::signal::Signal::SIGTERM,
    )
    .unwrap();
    let status = wait_until(
        "smtp-send to stop on SIGTERM",
        Duration::from_secs(10),
        || runner.try_wait().unwrap(),
    );
    assert!(status.success());
}

/// SIGKILL the runner again and again while the sink is slow to answer
/// the final dot. Afterwards every recipient has the message at least
/// once, and none whose delivery the runner had logged got it again.
#[test]
fn sigkill_mid_transaction_loses_nothing_and_never_repeats_a_logged_delivery() {
    let w = World::far("recipients_per_transaction = 2\ndestination_concurrency = 2\n");
    let sink = w.sink(
        2,
        Behaviour {
            delay_final: Duration::from_millis(30),
            ..Behaviour::default()
        },
    );
    let rcpts: Vec<String> = (0..6).map(|i| format!("r{i}@far.test")).collect();
    let rcpt_refs: Vec<&str> = rcpts.iter().map(String::as_str).collect();
    for n in 0..8 {
        w.queue_mail(&rcpt_refs, &format!("message {n}\n"));
    }
    let queue = w.tree.queue();
    let count = |received: &[crate::sink::Received], subject: &str, rcpt: &str| {
        received
            .iter()
            .filter(|m| String::from_utf8_lossy(&m.data).contains(subject))
            .filter(|m| m.rcpts.iter().any(|r| r == rcpt))
            .count()
    };
    // (deliveries logged at a kill, messages the sink had by then)
    let mut checkpoints: Vec<(Vec<(String, String)>, usize)> = Vec::new();
    let mut rng_state = 12345u64;
    for _ in 0..12 {
        let mut child = Command::new(bin("smtp-send"))
            .arg("--config")
            .arg(&w.tree.config)
            .arg("--flush")
            .spawn()
            .unwrap();
        rng_state = rng_state.wrapping_mul(6364136223846793005).wrapping_add(1);
        // On purpose: the kill lands at a random moment of the run.
        std::thread::sleep(Duration::from_millis(20 + (rng_state >> 33) % 150));
        let _ = child.kill();
        let _ = child.wait();
        // What the queue logs say was delivered must never arrive again.
        let before = sink.messages();
        let mut logged = Vec::new();
        for id in queue.list().unwrap() {
            let Ok(m) = queue.read(&id) else { continue };
            let body = String::from_utf8(postroom::store::queue::read_body(&m).unwrap()).unwrap();
            let subject = body.lines().last().unwrap_or("").to_string();
            for (i, state) in m.state.recipients.iter().enumerate() {
                if matches!(state, postroom::store::queue::RcptState::Delivered { .. }) {
                    logged.push((
                        subject.clone(),
                        m.envelope.recipients[i].address.to_string(),
                    ));
                }
            }
        }
        for (subject, rcpt) in &logged {
            assert!(
                count(&before, subject, rcpt) >= 1,
                "{subject} {rcpt} logged, not received"
            );
        }
        // Checked against everything that arrives later, at the end.
        checkpoints.push((logged, before.len()));
    }
    let last = w.send(&["--flush"]);
    ok(&last);
    let left: Vec<String> = w.queue_ids().iter().map(|id| w.show(id)).collect();
    assert!(
        left.is_empty(),
        "everything delivered in the end, but:\n{left:#?}\n{}",
        stderr(&last)
    );
    let all = sink.messages();
    for n in 0..8 {
        for rcpt in &rcpts {
            assert!(
                count(&all, &format!("message {n}"), rcpt) >= 1,
                "message {n} to {rcpt} lost"
            );
        }
    }
    for (logged, seen) in &checkpoints {
        for (subject, rcpt) in logged {
            assert_eq!(
                count(&all[*seen..], subject, rcpt),
                0,
                "{subject} to {rcpt} was logged delivered and sent again"
            );
        }
    }
}

/// Appends a log line to a queued message as a runner would have.
fn append_log(w: &World, id: &str, line: &str) {
    use std::io::Write;
    let now = postroom::store::fsutil::now_secs();
    let mut log = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(w.tree.root().join("queue/log").join(id))
        .unwrap();
    writeln!(log, "{now} {line}").unwrap();
}

fn check(w: &World) -> (bool, String) {
    let out = w.tree.postroom(&["check"]);
    (out.status.success(), stdout(&out))
}

#[test]
fn a_finished_message_left_in_the_queue_is_finished_by_the_next_pass() {
    // A runner died after logging the last outcome and before removing
    // the message: nothing is pending, so no recipient ever falls due.
    let w = World::far("");
    let sink = w.sink(2, Behaviour::default());
    for (n, how) in ["--flush", "--message", "--once"].iter().enumerate() {
        let out = w.tree.inject(
            &["-odq", "-f", "ann@example.test", "x@far.test"],
            format!("Subject: {n}\n\nbody\n").as_bytes(),
        );
        assert!(out.status.success(), "{}", stderr(&out));
        let ids = w.queue_ids();
        assert_eq!(ids.len(), 1);
        let id = ids[0].clone();
        append_log(&w, &id, "delivered 0 250 ok");
        let list = stdout(&w.tree.postroom(&["queue", "list"]));
        assert!(
            list.contains("finished") && list.contains("0/1 pending"),
            "{list}"
        );
        assert!(
            list.contains("the next smtp-send pass removes it"),
            "{list}"
        );
        let (healthy, said) = check(&w);
        assert!(!healthy, "check says healthy:\n{said}");
        assert!(
            said.contains(&format!(
                "problem: queue message {id}: nothing left to deliver"
            )),
            "{said}"
        );
        let args: Vec<&str> = match *how {
            "--message" => vec!["--message", &id],
            other => vec![other],
        };
        ok(&w.send(&args));
        assert!(w.queue_ids().is_empty(), "{how} left {id} in the queue");
        assert!(!w.tree.root().join("queue/log").join(&id).exists());
    }
    assert!(sink.messages().is_empty(), "nothing is sent again");
    assert!(check(&w).0, "{}", check(&w).1);
    // A failure whose bounce was owed when the runner died: the report is
    // sent, then the message goes.
    w.queue_mail(&["y@far.test"], "body\n");
    let id = w.queue_ids()[0].clone();
    append_log(&w, &id, "failed 0 550 5.1.1 no such user");
    ok(&w.send(&["--once"]));
    assert!(w.queue_ids().is_empty());
    let reports = w.ann_mail();
    assert_eq!(reports.len(), 1, "{reports:?}");
    assert!(reports[0].contains("y@far.test"), "{}", reports[0]);
}

/// The queue file of the only queued message, and its id.
fn only_queue_file(w: &World) -> (String, std::path::PathBuf) {
    let ids = w.queue_ids();
    assert_eq!(ids.len(), 1, "{ids:?}");
    let path = w.tree.root().join("queue/mess").join(&ids[0]);
    (ids[0].clone(), path)
}

fn two_hundred_lines() -> String {
    (0..200)
        .map(|n| format!("line {n:03} of a message that must arrive whole\n"))
        .collect()
}

#[test]
fn a_torn_queue_file_is_held_and_never_sent_delivered_or_bounced() {
    let w = World::far("");
    let sink = w.sink(2, Behaviour::default());
    // Remote: `truncate -s 2000 queue/mess/ID; smtp-send --once`.
    w.queue_mail(&["bob@far.test"], &two_hundred_lines());
    let (id, path) = only_queue_file(&w);
    let whole = std::fs::metadata(&path).unwrap().len();
    assert!(whole > 8000, "{whole}");
    std::fs::OpenOptions::new()
        .write(true)
        .open(&path)
        .unwrap()
        .set_len(2000)
        .unwrap();
    let list = stdout(&w.tree.postroom(&["queue", "list"]));
    assert!(list.contains("torn"), "{list}");
    ok(&w.send(&["--once"]));
    assert!(sink.messages().is_empty(), "a torn body was sent");
    assert_eq!(*sink.connections.lock().unwrap(), 0);
    let list = stdout(&w.tree.postroom(&["queue", "list"]));
    assert!(
        list.contains(&format!("{id}  ")) && list.contains("  held  "),
        "{list}"
    );
    assert!(
        list.contains(&format!("problem: {}: torn queue file", path.display())),
        "{list}"
    );
    assert!(
        list.contains(&format!("postroom queue release {id}"))
            && list.contains(&format!("postroom queue delete {id}")),
        "{list}"
    );
    let show = w.show(&id);
    assert!(
        show.contains("state:    held") && show.contains("torn queue file"),
        "{show}"
    );
    let (healthy, said) = check(&w);
    assert!(!healthy, "{said}");
    assert!(
        said.contains(&format!(
            "problem: queue message {id}: {}: torn queue file",
            path.display()
        )),
        "{said}"
    );
    // Flushing or naming it does not send it either.
    ok(&w.send(&["--flush"]));
    ok(&w.send(&["--message", &id]));
    assert!(sink.messages().is_empty());
    // Released without a repair: held again, still not sent.
    assert!(w.tree.postroom(&["queue", "release", &id]).status.success());
    ok(&w.send(&["--flush"]));
    assert!(sink.messages().is_empty());
    assert!(stdout(&w.tree.postroom(&["queue", "list"])).contains("  held  "));
    assert!(w.tree.postroom(&["queue", "delete", &id]).status.success());

    // Local: queued only (-odq), then cut short.
    let out = w.tree.inject(
        &["-odq", "-f", "ann@example.test", "ann@example.test"],
        format!("Subject: local\n\n{}", two_hundred_lines()).as_bytes(),
    );
    assert!(out.status.success(), "{}", stderr(&out));
    let (id, path) = only_queue_file(&w);
    std::fs::OpenOptions::new()
        .write(true)
        .open(&path)
        .unwrap()
        .set_len(2000)
        .unwrap();
    ok(&w.send(&["--once"]));
    assert!(
        maildir_files(&w.tree.maildir("ann")).is_empty(),
        "a torn body was delivered"
    );
    assert_eq!(w.queue_ids(), [id.as_str()]);

    // A failed recipient whose bounce would quote the torn body: held, no
    // bounce.
    assert!(w.tree.postroom(&["queue", "delete", &id]).status.success());
    w.queue_mail(&["cat@far.test"], &two_hundred_lines());
    let (id, path) = only_queue_file(&w);
    append_log(&w, &id, "failed 0 550 5.1.1 no such user");
    std::fs::OpenOptions::new()
        .write(true)
        .open(&path)
        .unwrap()
        .set_len(2000)
        .unwrap();
    ok(&w.send(&["--once"]));
    assert!(w.ann_mail().is_empty(), "a bounce quoted a torn body");
    assert!(stdout(&w.tree.postroom(&["queue", "list"])).contains("  held  "));
}

#[test]
fn a_queue_file_without_a_recorded_length_is_delivered_as_before() {
    let w = World::far("");
    let sink = w.sink(2, Behaviour::default());
    w.queue_mail(&["bob@far.test"], &two_hundred_lines());
    let (_, path) = only_queue_file(&w);
    // As written before the envelope recorded the length.
    let text = std::fs::read(&path).unwrap();
    let start = text.windows(8).position(|w| w == b"\nlength ").unwrap() + 1;
    let end = start + text[start..].iter().position(|&b| b == b'\n').unwrap() + 1;
    std::fs::write(&path, [&text[..start], &text[end..]].concat()).unwrap();
    assert!(check(&w).0, "{}", check(&w).1);
    ok(&w.send(&["--once"]));
    let got = sink.messages();
    assert_eq!(got.len(), 1);
    let text = String::from_utf8(got[0].data.clone()).unwrap();
    assert!(text.contains("line 199 of a message"), "{text}");
    assert!(w.queue_ids().is_empty());
}

/// RFC 3461 §5.2.3 (an outside review): a recipient with NOTIFY=SUCCESS
/// handed to a server that does not speak DSN gets its sender a
/// "relayed" report, since nobody further on will send one; a server that
/// speaks DSN is passed the NOTIFY and reports itself.
#[test]
fn notify_success_to_a_server_without_dsn_gets_a_relayed_report() {
    let w = World::new(
        vec![
            ("old.test", mx(10, "mx.old.test")),
            ("mx.old.test", a(2)),
            ("new.test", mx(10, "mx.new.test")),
            ("mx.new.test", a(3)),
        ],
        "",
    );
    let old = w.sink(
        2,
        Behaviour {
            dsn: false,
            ..Behaviour::default()
        },
    );
    let new = w.sink(3, Behaviour::default());
    let out = w.tree.inject(
        &[
            "-f",
            "ann@example.test",
            "-N",
            "success,failure",
            "bob@old.test",
            "cat@new.test",
        ],
        b"Subject: tell me\n\nx\n",
    );
    assert!(out.status.success(), "inject: {}", stderr(&out));
    ok(&w.send(&["--once"]));
    assert_eq!(old.messages().len(), 1);
    let to_new = new.messages();
    assert_eq!(to_new.len(), 1);
    assert!(
        to_new[0]
            .commands
            .iter()
            .any(|c| c.contains("NOTIFY=SUCCESS,FAILURE")),
        "{:?}",
        to_new[0].commands
    );
    // The report is queued to ann, delivered by the next pass.
    ok(&w.send(&["--once"]));
    let reports: Vec<String> = maildir_files(&w.tree.maildir("ann"))
        .iter()
        .map(|f| std::fs::read_to_string(f).unwrap())
        .filter(|t| t.contains("delivery-status"))
        .collect();
    assert_eq!(reports.len(), 1, "{reports:#?}");
    assert!(reports[0].contains("Action: relayed"), "{}", reports[0]);
    assert!(
        reports[0].contains("Final-Recipient: rfc822; bob@old.test"),
        "{}",
        reports[0]
    );
    assert!(!reports[0].contains("cat@new.test"), "{}", reports[0]);
}
