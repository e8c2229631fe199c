//! The config file and the small value parsers inside it (sizes, durations,
//! transports, networks). A config that parses answers every question the
//! programs ask of it; a transport written back reads the same.
#![no_main]

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use libfuzzer_sys::fuzz_target;
use postroom::config::{Config, Transport, parse_duration, parse_size};
use postroom::proto::smtp::Network;

fn transport(text: &str) {
    let Ok(t) = Transport::parse(text) else {
        return;
    };
    let host = if t.mx {
        t.host.clone()
    } else {
        format!("[{}]", t.host)
    };
    let again = match t.port {
        Some(port) => format!("{host}:{port}"),
        None => host,
    };
    let back = Transport::parse(&again).map(|b| (b.host, b.port, b.mx));
    assert_eq!(
        back,
        Ok((t.host.clone(), t.port, t.mx)),
        "{text:?} -> {again:?}"
    );
}

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    for line in text.lines().take(16) {
        let _ = parse_duration(line);
        let _ = parse_size(line);
        transport(line);
        if let Ok(network) = Network::parse(line) {
            let _ = network.contains(IpAddr::V4(Ipv4Addr::LOCALHOST));
            let _ = network.contains(IpAddr::V6(Ipv6Addr::LOCALHOST));
            let _ = network.contains(IpAddr::V6(Ipv4Addr::new(10, 1, 2, 3).to_ipv6_mapped()));
        }
    }
    let Ok(config) = Config::parse(text) else {
        return;
    };
    let _ = config.auth.plaintext_rule();
    // Not srs_secret(): it reads the file the config names.
    for domain in ["example.test", "far.test", "*"] {
        let _ = config.send.transport_for(domain);
        let _ = config.send.tls_for(domain);
    }
    for (_, text) in &config.send.transports {
        transport(text);
    }
    let _ = (config.mail_dir(), config.queue_dir(), config.users_file());
});
