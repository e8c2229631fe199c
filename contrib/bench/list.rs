//! `postroom-bench list`: one post to a list of 100,000 members committed
//! to the queue by `list-expand post`: wall time and peak RSS (the issue's
//! goal: under 2 s and 100 MB). With `--one-click` the list has an
//! `unsubscribe_url`, so the post is queued as one copy a member, each
//! with its own one-click URL: the cost of RFC 8058 per-member headers.

use std::io::Write;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::Instant;

pub fn run(base: &Path, members: usize, one_click: bool) -> anyhow::Result<()> {
    let dir = base.join("list");
    let config = crate::bench_tree(&dir)?;
    let list_expand = std::env::current_exe()?.with_file_name("list-expand");
    let run = |args: &[&str], input: &[u8]| -> anyhow::Result<()> {
        let mut child = Command::new(&list_expand)
            .arg("--config")
            .arg(&config)
            .args(args)
            .stdin(Stdio::piped())
            .stdout(Stdio::null())
            .spawn()?;
        if let Some(mut stdin) = child.stdin.take() {
            stdin.write_all(input)?;
        }
        anyhow::ensure!(child.wait()?.success(), "list-expand {args:?} failed");
        Ok(())
    };
    run(
        &[
            "create",
            "big@bench.test",
            "--owner",
            "sink@bench.test",
            "--policy",
            "open",
        ],
        b"",
    )?;
    if one_click {
        let file = dir.join("lists/big@bench.test/config");
        let text = std::fs::read_to_string(&file)?;
        std::fs::write(
            &file,
            text + "unsubscribe_url = \"https://lists.bench.test/list-web\"\n",
        )?;
    }
    let addresses: String = (0..members)
        .map(|i| format!("member{i}@d{}.example\n", i % 100))
        .collect();
    let started = Instant::now();
    run(&["add", "big@bench.test", "-"], addresses.as_bytes())?;
    let add = started.elapsed();
    let mut post = b"From: sink@bench.test\nTo: big@bench.test\nSubject: news\n\n".to_vec();
    while post.len() < crate::MESSAGE_SIZE {
        post.extend_from_slice(b"the body of the post, 64 bytes a line, until it is 4 KiB ....\n");
    }
    let started = Instant::now();
    run(
        &["post", "big@bench.test", "--sender", "sink@bench.test"],
        &post,
    )?;
    let posted = started.elapsed();
    let rss = nix::sys::resource::getrusage(nix::sys::resource::UsageWho::RUSAGE_CHILDREN)
        .map(|u| u.max_rss())
        .unwrap_or(0);
    let queue = postroom::store::queue::Queue::new(dir.join("queue"));
    let queued = queue.list()?;
    let expected = if one_click { members } else { 1 };
    anyhow::ensure!(
        queued.len() == expected,
        "expected {expected} queued messages, found {}",
        queued.len()
    );
    let mut recipients = 0;
    for id in &queued {
        recipients += queue.read(id)?.envelope.recipients.len();
    }
    let copies = if one_click {
        format!("{} copies (one a member, --one-click)", queued.len())
    } else {
        "one copy".to_string()
    };
    println!(
        "postroom-bench list: {members} members added in {:.2} s; a 4 KiB post queued as {copies} for {recipients} recipients in {:.2} s; peak RSS of list-expand {:.1} MB",
        add.as_secs_f64(),
        posted.as_secs_f64(),
        rss as f64 / 1024.0
    );
    Ok(())
}
