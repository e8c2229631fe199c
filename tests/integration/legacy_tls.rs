//! smtp-send built with `legacy-tls` and a peer that speaks only TLS 1.0:
//! rustls cannot agree a version with it, so the opportunistic policy
//! tries OpenSSL (native-tls) before plaintext. OpenSSL 3 allows TLS 1.0
//! only below its default security level, so the test gives smtp-send an
//! OpenSSL configuration that lowers it, as smtp-send(8) tells
//! administrators to.

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};

use crate::smtp_send::World;
use crate::util::{bin, stderr};

const SERVER: &str = include_str!("legacy_tls/tls1_smtp_server.py");

const OPENSSL_CONF: &str = "openssl_conf = openssl_init
[openssl_init]
ssl_conf = ssl_sect
[ssl_sect]
system_default = system_default_sect
[system_default_sect]
MinProtocol = TLSv1
CipherString = DEFAULT@SECLEVEL=0
";

struct Killed(std::process::Child);

impl Drop for Killed {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

#[test]
fn a_tls_1_0_only_peer_gets_legacy_tls_not_plaintext() {
    let w = World::new(vec![], "");
    let dir = w.tree.dir.path();
    let script = dir.join("tls1_smtp_server.py");
    std::fs::write(&script, SERVER).unwrap();
    let (cert, key) = (dir.join("tls1-cert.pem"), dir.join("tls1-key.pem"));
    postroom::net::tls::generate_self_signed("legacy.test", &cert, &key).unwrap();
    let out = dir.join("received");
    let mut server = Command::new("python3")
        .arg(&script)
        .args([&cert, &key, &out])
        .stdout(Stdio::piped())
        .spawn()
        .expect("python3");
    let mut port = String::new();
    BufReader::new(server.stdout.take().unwrap())
        .read_line(&mut port)
        .unwrap();
    let _server = Killed(server);
    let mut config = std::fs::read_to_string(&w.tree.config).unwrap();
    config.push_str(&format!(
        "\n[send.transports]\n\"legacy.test\" = \"[127.0.1.3]:{}\"\n",
        port.trim()
    ));
    std::fs::write(&w.tree.config, config).unwrap();
    let openssl_conf = dir.join("openssl.cnf");
    std::fs::write(&openssl_conf, OPENSSL_CONF).unwrap();
    w.queue_mail(&["old@legacy.test"], "over TLS 1.0\n");
    let run = Command::new(bin("smtp-send"))
        .arg("--config")
        .arg(&w.tree.config)
        .arg("--once")
        .env("OPENSSL_CONF", &openssl_conf)
        .output()
        .unwrap();
    assert!(run.status.success(), "{}", stderr(&run));
    let received = std::fs::read_to_string(&out).unwrap_or_default();
    assert!(
        received.starts_with("version: TLSv1\n"),
        "{received:?}\n{}",
        stderr(&run)
    );
    assert!(received.contains("over TLS 1.0"));
    assert!(w.queue_ids().is_empty());
}
