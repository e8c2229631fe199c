//! The compiled index of the users and aliases files (`users.index`,
//! `aliases.index`): a program's start-up does not grow with the files, hand
//! edits are picked up, and a damaged index is never trusted.

use std::io::{BufRead, BufReader, Write};
use std::time::{Duration, Instant};

use crate::smtp_recv::inetd_session;
use crate::util::{Tree, spawn_inetd};

/// A tree with `users` users `u0@example.test`... and as many aliases
/// `a0@example.test: u0`...
fn tree_with(users: usize) -> Tree {
    let tree = Tree::new();
    let mut text = String::from("# users\n");
    let mut aliases = String::from("# aliases\n");
    for i in 0..users {
        text.push_str(&format!("u{i}@example.test:{{PLAIN}}secret\n"));
        aliases.push_str(&format!("a{i}@example.test: u{i}\n"));
    }
    std::fs::write(tree.root().join("users"), text).unwrap();
    std::fs::write(tree.root().join("aliases"), aliases).unwrap();
    tree
}

/// smtp-recv as inetd runs it: spawn to the first line of the greeting.
fn greeting_time(tree: &Tree) -> Duration {
    let start = Instant::now();
    let mut child = spawn_inetd("smtp-recv", tree);
    let mut line = String::new();
    BufReader::new(child.stdout.take().unwrap())
        .read_line(&mut line)
        .unwrap();
    let took = start.elapsed();
    assert!(line.starts_with("220"), "{line}");
    let _ = child.stdin.take().unwrap().write_all(b"QUIT\r\n");
    child.wait().unwrap();
    took
}

fn rcpt(tree: &Tree, to: &str) -> String {
    let said = inetd_session(
        tree,
        "127.0.0.1",
        &format!("HELO c\r\nMAIL FROM:<x@remote.test>\r\nRCPT TO:<{to}>\r\nQUIT\r\n"),
    );
    said.lines().nth(3).unwrap_or_default().to_string()
}

fn median(mut times: Vec<Duration>) -> Duration {
    times.sort();
    times[times.len() / 2]
}

#[test]
fn a_hundred_thousand_users_and_aliases_start_as_fast_as_ten() {
    let small = tree_with(10);
    let big = tree_with(100_000);
    // The first start after the files were written builds the indexes.
    for tree in [&small, &big] {
        assert!(rcpt(tree, "u7@example.test").starts_with("250"));
        assert!(tree.root().join("users.index").exists());
        assert!(tree.root().join("aliases.index").exists());
    }
    // Interleaved, so a busy moment of the machine hits both alike.
    let (mut small_times, mut big_times) = (Vec::new(), Vec::new());
    for _ in 0..15 {
        small_times.push(greeting_time(&small));
        big_times.push(greeting_time(&big));
    }
    let (small_time, big_time) = (median(small_times), median(big_times));
    // Parsing 100,000 lines of each file took hundreds of milliseconds in a
    // debug build; through the index the two differ by noise.
    assert!(
        big_time < small_time * 2 + Duration::from_millis(10),
        "10 lines: {small_time:?}, 100,000 lines: {big_time:?}"
    );
    // And the index answers for the last line, an alias, and nobody.
    assert!(rcpt(&big, "u99999@example.test").starts_with("250"));
    assert!(rcpt(&big, "A54321@Example.test").starts_with("250"));
    assert!(rcpt(&big, "u100000@example.test").starts_with("550"));
}

#[test]
fn hand_edits_are_picked_up_and_a_damaged_index_is_rebuilt() {
    let tree = tree_with(3);
    assert!(rcpt(&tree, "bob@example.test").starts_with("550"));
    let index = tree.root().join("users.index");
    let built = std::fs::read(&index).unwrap();
    // An admin appends a line by hand: no command, no restart.
    let mut users = std::fs::OpenOptions::new()
        .append(true)
        .open(tree.root().join("users"))
        .unwrap();
    users.write_all(b"bob@example.test:{PLAIN}pw\n").unwrap();
    drop(users);
    assert!(rcpt(&tree, "bob@example.test").starts_with("250"));
    assert_ne!(std::fs::read(&index).unwrap(), built, "rebuilt");
    // A torn index, then garbage: ignored, the text answers, rebuilt.
    let good = std::fs::read(&index).unwrap();
    for damaged in [good[..good.len() / 2].to_vec(), vec![0x42; good.len()]] {
        std::fs::write(&index, &damaged).unwrap();
        assert!(rcpt(&tree, "bob@example.test").starts_with("250"));
        assert!(rcpt(&tree, "u2@example.test").starts_with("250"));
        assert!(rcpt(&tree, "carol@example.test").starts_with("550"));
        assert!(std::fs::read(&index).unwrap().starts_with(b"PRINDEX1"));
    }
    // An alias added by hand too.
    let mut aliases = std::fs::OpenOptions::new()
        .append(true)
        .open(tree.root().join("aliases"))
        .unwrap();
    aliases.write_all(b"carol@example.test: bob\n").unwrap();
    drop(aliases);
    assert!(rcpt(&tree, "carol@example.test").starts_with("250"));
}
