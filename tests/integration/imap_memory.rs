//! imap-serve's memory between commands (issue 15): a standalone server
//! runs with glibc's malloc thresholds fixed, so what a big command
//! freed goes back to the system (`net::server::settle_allocator`).

use std::io::{BufRead, Write};
use std::process::Command;

use postroom::net::server::MALLOC_TUNABLES;

use crate::imap_serve::tree_with_user;
use crate::util::{self, Server, bin};

/// Whether a process's environment, as the kernel holds it, has
/// `GLIBC_TUNABLES` set to `value` (None: not set at all). glibc parses
/// the variable in place at start-up, leaving a NUL for each `:`.
fn has_tunables(pid: u32, value: Option<&str>) -> bool {
    let environ = std::fs::read(format!("/proc/{pid}/environ")).expect("read environ");
    let Some(value) = value else {
        return !environ
            .split(|&b| b == 0)
            .any(|v| v.starts_with(b"GLIBC_TUNABLES="));
    };
    let wanted = |v: &str| {
        let mut entry = b"\0GLIBC_TUNABLES=".to_vec();
        entry.extend_from_slice(v.as_bytes());
        entry.push(0);
        environ.windows(entry.len()).any(|w| w == entry)
    };
    wanted(value) || wanted(&value.replace(':', "\0"))
}

/// imap-serve listening on loopback, with `tunables` (None: unset).
fn listening(tree: &util::Tree, tunables: Option<&str>) -> Server {
    Server::start_with("imap-serve", 1, |_| {
        let mut command = Command::new(bin("imap-serve"));
        command
            .arg("--config")
            .arg(&tree.config)
            .args(["--listen", "127.0.0.1:0"]);
        match tunables {
            Some(t) => command.env("GLIBC_TUNABLES", t),
            None => command.env_remove("GLIBC_TUNABLES"),
        };
        command
    })
}

fn greets(server: &Server) {
    let (mut reader, mut stream) = util::connect_loopback(server.port);
    let mut line = String::new();
    reader.read_line(&mut line).expect("greeting");
    assert!(line.starts_with("* OK"), "{line}");
    stream.write_all(b"a LOGOUT\r\n").expect("logout");
}

#[test]
fn a_listening_server_runs_with_fixed_malloc_thresholds() {
    let tree = tree_with_user();
    // The same process (the PID the test started), restarted with them.
    let server = listening(&tree, None);
    assert!(has_tunables(server.child.id(), Some(MALLOC_TUNABLES)));
    greets(&server);
    // The administrator's own settings are kept as they are.
    let server = listening(&tree, Some("glibc.malloc.arena_max=2"));
    assert!(has_tunables(
        server.child.id(),
        Some("glibc.malloc.arena_max=2")
    ));
    assert!(!has_tunables(server.child.id(), Some(MALLOC_TUNABLES)));
    greets(&server);
}

#[test]
fn an_inetd_session_is_not_restarted() {
    let tree = tree_with_user();
    let mut child = Command::new(bin("imap-serve"))
        .arg("--config")
        .arg(&tree.config)
        .env("REMOTE_ADDR", "127.0.0.1")
        .env_remove("GLIBC_TUNABLES")
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::null())
        .spawn()
        .expect("start imap-serve");
    let mut out = std::io::BufReader::new(child.stdout.take().expect("stdout"));
    let mut line = String::new();
    out.read_line(&mut line).expect("greeting");
    assert!(line.starts_with("* OK"), "{line}");
    assert!(has_tunables(child.id(), None));
    drop(child.stdin.take());
    let _ = child.wait();
}
