//! `postroom-bench multihost --mounts A:B`: the cost of a shared tree.
//!
//! SMTP accept → fsynced maildir delivery (4 KiB messages to a local user,
//! 8 sessions), on one tree made on a shared filesystem mounted twice
//! (`contrib/multihost/run bench` makes a GlusterFS volume and runs this):
//! with both "hosts" taking the load (an smtp-recv each, through its own
//! mount, in a UTS namespace of its own), with one host taking it all,
//! and, for the cost of the shared filesystem itself, on a local tree in
//! `--dir`.

use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::Context;

use crate::server::Server;
use crate::smtp::{load, make_tree};

const SESSIONS: usize = 8;

pub fn run(base: &Path, mounts: &str, messages: usize) -> anyhow::Result<()> {
    let (a, b) = mounts
        .split_once(':')
        .context("--mounts A:B, two mounts of one shared filesystem")?;
    let (a, b) = (PathBuf::from(a), PathBuf::from(b));
    let recv = std::env::current_exe()?.with_file_name("smtp-recv");
    let name = format!("postroom-bench-multihost-{}", std::process::id());
    println!(
        "postroom-bench multihost: {messages} messages of {} bytes over {SESSIONS} sessions, SMTP accept to fsynced maildir",
        crate::MESSAGE_SIZE
    );

    let config_a = make_tree(&a.join(&name))?;
    let config_b = b.join(&name).join("postroom.toml");
    let host_a = Server::start_command(&recv, as_host("host-a", &recv, &config_a))?;
    let host_b = Server::start_command(&recv, as_host("host-b", &recv, &config_b))?;
    let (both, both_p99) = load(&[host_a.port, host_b.port], messages, SESSIONS)?;
    let (one, one_p99) = load(&[host_a.port], messages, SESSIONS)?;
    drop((host_a, host_b));
    let _ = std::fs::remove_dir_all(a.join(&name));

    let config_local = make_tree(&base.join("local"))?;
    let local_server = Server::start(&recv, &config_local)?;
    let (local, local_p99) = load(&[local_server.port], messages, SESSIONS)?;
    drop(local_server);

    let ms = |d: std::time::Duration| d.as_secs_f64() * 1000.0;
    println!(
        "two hosts, one shared tree: {both:>6.0} msg/s (p99 dot-to-250 {:.1} ms)",
        ms(both_p99)
    );
    println!(
        "one host, same shared tree: {one:>6.0} msg/s (p99 {:.1} ms); two hosts give {:.2}x",
        ms(one_p99),
        both / one
    );
    println!(
        "one host, local tree in {}: {local:>6.0} msg/s (p99 {:.1} ms); the shared filesystem costs {:.0}% of it",
        base.display(),
        ms(local_p99),
        100.0 * (1.0 - one / local)
    );
    Ok(())
}

/// `binary --config CONFIG` in a UTS namespace of its own named `host`.
fn as_host(host: &str, binary: &Path, config: &Path) -> Command {
    let mut command = Command::new("unshare");
    command
        .args([
            "--uts",
            "--",
            "sh",
            "-c",
            "hostname \"$0\" && exec \"$@\"",
            host,
        ])
        .arg(binary)
        .arg("--config")
        .arg(config);
    command
}
