//! smtp-send and DANE (RFC 7672) with `dns.dnssec = true`: the loopback
//! DNS server plays a validating resolver (the AD bit on names marked
//! secure), SMTP sinks play the MX hosts with self-signed certificates
//! that only their TLSA records vouch for.

use std::sync::Arc;

use sha2::{Digest, Sha256};

use crate::dns::Record;
use crate::sink::Behaviour;
use crate::sink::Sink;
use crate::smtp_send::{World, a, mx, ok, server_config};

/// A self-signed certificate for `name` as a server config, and the
/// SHA-256 of its public key (a `3 1 1` record's data).
fn self_signed(name: &str) -> (Arc<rustls::ServerConfig>, Vec<u8>) {
    let key = rcgen::KeyPair::generate().unwrap();
    let cert = rcgen::CertificateParams::new(vec![name.to_string()])
        .unwrap()
        .self_signed(&key)
        .unwrap();
    (
        server_config(&cert, &key),
        Sha256::digest(key.public_key_der()).to_vec(),
    )
}

/// far.test, one MX (mx.far.test, 127.0.0.2), its MX records validated;
/// `tlsa` published at `_PORT._tcp.mx.far.test`, validated or not.
fn dane_world(tlsa: Vec<u8>, tlsa_secure: bool) -> World {
    let w = World::new(
        vec![
            ("far.test", mx(10, "mx.far.test")),
            ("far.test", Record::Secure),
            ("mx.far.test", a(2)),
        ],
        "",
    );
    let config = std::fs::read_to_string(&w.tree.config).unwrap();
    std::fs::write(
        &w.tree.config,
        config.replace("[dns]\n", "[dns]\ndnssec = true\n"),
    )
    .unwrap();
    let mut records = vec![Record::Tlsa(3, 1, 1, tlsa)];
    if tlsa_secure {
        records.push(Record::Secure);
    }
    w.dns.set(&tlsa_name(&w), records);
    w
}

/// Where mx.far.test's TLSA records are: `_PORT._tcp.mx.far.test`, the
/// port the world's exchangers listen on.
fn tlsa_name(w: &World) -> String {
    let config = std::fs::read_to_string(&w.tree.config).unwrap();
    let port = config
        .lines()
        .find_map(|l| l.strip_prefix("port = "))
        .unwrap();
    format!("_{port}._tcp.mx.far.test")
}

/// The MX sink at 127.0.0.2, offering STARTTLS with `tls`.
fn tls_sink(w: &World, tls: Arc<rustls::ServerConfig>) -> Sink {
    w.sink(
        2,
        Behaviour {
            tls: Some(tls),
            ..Behaviour::default()
        },
    )
}

fn report_results(w: &World) -> Vec<(String, String)> {
    let dir = w.tree.config.parent().unwrap().join("state/tlsrpt");
    let mut got = Vec::new();
    for day in std::fs::read_dir(dir).into_iter().flatten().flatten() {
        if let Ok(text) = std::fs::read_to_string(day.path().join("far.test")) {
            for line in text.lines() {
                let v: serde_json::Value = serde_json::from_str(line).unwrap();
                got.push((
                    v["policy_type"].as_str().unwrap().to_string(),
                    v["result"].as_str().unwrap().to_string(),
                ));
            }
        }
    }
    got
}

#[test]
fn a_matching_dane_ee_record_vouches_for_a_self_signed_certificate() {
    let (tls, spki_hash) = self_signed("mx.far.test");
    let w = dane_world(spki_hash, true);
    let sink = tls_sink(&w, tls);
    w.queue_mail(&["bob@far.test"], "hi\n");
    ok(&w.send(&["--once"]));
    let got = sink.messages();
    assert_eq!(got.len(), 1);
    assert!(got[0].tls);
    assert_eq!(
        report_results(&w),
        [("tlsa".to_string(), "success".to_string())]
    );
}

#[test]
fn a_mismatching_tlsa_record_defers() {
    let (tls, _) = self_signed("mx.far.test");
    let w = dane_world(vec![0xab; 32], true);
    let sink = tls_sink(&w, tls);
    w.queue_mail(&["bob@far.test"], "hi\n");
    ok(&w.send(&["--once"]));
    assert!(
        sink.messages().is_empty(),
        "nothing to a host DANE does not vouch for"
    );
    let ids = w.queue_ids();
    assert_eq!(ids.len(), 1);
    assert!(w.show(&ids[0]).contains("4.7.5"), "{}", w.show(&ids[0]));
    assert_eq!(
        report_results(&w),
        [("tlsa".to_string(), "validation-failure".to_string())]
    );
}

#[test]
fn a_dane_host_without_starttls_is_not_sent_plaintext() {
    let (_, spki_hash) = self_signed("mx.far.test");
    let w = dane_world(spki_hash, true);
    let sink = w.sink(2, Behaviour::default());
    w.queue_mail(&["bob@far.test"], "hi\n");
    ok(&w.send(&["--once"]));
    assert!(sink.messages().is_empty());
    assert_eq!(w.queue_ids().len(), 1);
}

#[test]
fn tlsa_records_without_dnssec_are_ignored() {
    let (tls, _) = self_signed("mx.far.test");
    // A mismatching record, but not validated: as if there were none.
    let w = dane_world(vec![0xab; 32], false);
    let sink = tls_sink(&w, tls);
    w.queue_mail(&["bob@far.test"], "hi\n");
    ok(&w.send(&["--once"]));
    assert_eq!(
        sink.messages().len(),
        1,
        "opportunistic TLS, as without DANE"
    );
    assert_eq!(
        report_results(&w),
        [("no-policy-found".to_string(), "success".to_string())]
    );
}

#[test]
fn no_tlsa_record_falls_back_to_the_domains_policy() {
    let (tls, _) = self_signed("mx.far.test");
    let w = dane_world(vec![], true);
    // Remove the record: the name is unknown (NXDOMAIN, not validated).
    w.dns.set(&tlsa_name(&w), vec![]);
    let sink = tls_sink(&w, tls);
    w.queue_mail(&["bob@far.test"], "hi\n");
    ok(&w.send(&["--once"]));
    assert_eq!(sink.messages().len(), 1);
}

#[test]
fn tlsa_records_are_asked_once_a_run_while_their_ttl_lasts() {
    let (tls, spki_hash) = self_signed("mx.far.test");
    let w = dane_world(spki_hash.clone(), true);
    // One message a connection, one connection at a time: each message
    // its own connection to mx.far.test, one after the other.
    let config = std::fs::read_to_string(&w.tree.config).unwrap();
    std::fs::write(
        &w.tree.config,
        config.replace(
            "[send]\n",
            "[send]\ndestination_concurrency = 1\nmessages_per_connection = 1\n",
        ),
    )
    .unwrap();
    let tlsa = tlsa_name(&w);
    let sink = tls_sink(&w, tls);
    w.queue_mail(&["bob@far.test"], "one\n");
    w.queue_mail(&["bob@far.test"], "two\n");
    ok(&w.send(&["--once"]));
    assert_eq!(sink.messages().len(), 2);
    assert_eq!(
        w.dns.asked(&tlsa),
        1,
        "the second connection used the answer"
    );
    // A TTL of 0 may not be kept: each connection asks.
    w.dns.set(
        &tlsa,
        vec![
            Record::Tlsa(3, 1, 1, spki_hash),
            Record::Secure,
            Record::Ttl(0),
        ],
    );
    w.queue_mail(&["bob@far.test"], "three\n");
    w.queue_mail(&["bob@far.test"], "four\n");
    ok(&w.send(&["--once"]));
    assert_eq!(sink.messages().len(), 4);
    assert_eq!(w.dns.asked(&tlsa), 3);
}
