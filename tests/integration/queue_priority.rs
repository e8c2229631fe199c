//! Queue priority and per-destination pacing (postroom-queue(5)
//! `priority`, `[send.domains]` in postroom.toml(5)): a user's mail leaves
//! before a list post queued earlier, `postroom queue list` says which is
//! which, and two runners sharing the tree keep one destination's pace
//! together, leaving what does not fit in soon pending and untouched.

use std::time::{Duration, Instant};

use crate::list_expand::{list_expand, ok as list_ok, open_team};
use crate::smtp_send::{World, a, mx, ok};
use crate::util::{Tree, stderr, stdout};

fn world(extra: &str) -> World {
    let tree = Tree::new();
    tree.add_user("ann@example.test");
    tree.add_user("postmaster@example.test");
    World::with_tree(
        tree,
        vec![("far.test", mx(10, "mx.far.test")), ("mx.far.test", a(2))],
        extra,
    )
}

fn inject(w: &World, subject: &str) {
    let message = format!("From: ann@example.test\nTo: bob@far.test\nSubject: {subject}\n\nhi\n");
    let out = w.tree.inject(
        &["-f", "ann@example.test", "bob@far.test"],
        message.as_bytes(),
    );
    assert!(out.status.success(), "inject: {}", stderr(&out));
}

#[test]
fn a_users_mail_leaves_before_a_list_post_queued_earlier() {
    // One message at a time, so the order of the pass is the order sent.
    let w = world("active_messages = 1\n");
    let sink = w.sink(2, Default::default());
    open_team(&w.tree, b"dora@far.test\n");
    list_ok(&list_expand(
        &w.tree,
        &["post", "team@example.test", "--sender", "eve@far.test"],
        b"From: eve@far.test\nTo: team@example.test\nSubject: the list post\n\nhello\n",
    ));
    inject(&w, "the user's mail");

    let listed = stdout(&w.tree.postroom(&["queue", "list"]));
    assert!(listed.contains("priority low"), "{listed}");
    assert!(listed.contains("priority high"), "{listed}");
    let json: serde_json::Value =
        serde_json::from_slice(&w.tree.postroom(&["queue", "list", "--json"]).stdout).unwrap();
    let priorities: Vec<&str> = json
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m["priority"].as_str().unwrap())
        .collect();
    assert_eq!(priorities, ["low", "high"], "listed oldest first");

    ok(&w.send(&["--once"]));
    let subjects: Vec<String> = sink
        .messages()
        .iter()
        .map(|m| {
            let text = String::from_utf8_lossy(&m.data).into_owned();
            text.lines()
                .find_map(|l| l.strip_prefix("Subject: ").map(str::to_string))
                .unwrap_or_default()
        })
        .collect();
    assert_eq!(subjects, ["the user's mail", "the list post"]);
}

#[test]
fn two_runners_keep_one_pace_for_a_destination() {
    let w = world("[send.domains.\"far.test\"]\nrate = \"4/s\"\n");
    let sink = w.sink(2, Default::default());
    for n in 0..8 {
        inject(&w, &format!("paced {n}"));
    }
    let started = Instant::now();
    // Each runner gets half the messages, so both send at once.
    let ids: Vec<String> = w
        .tree
        .queue()
        .list()
        .unwrap()
        .iter()
        .map(|id| id.to_string())
        .collect();
    let runners: Vec<_> = ids
        .chunks(4)
        .map(|half| {
            let mut command = std::process::Command::new(crate::util::bin("smtp-send"));
            command.arg("--config").arg(&w.tree.config);
            for id in half {
                command.args(["--message", id]);
            }
            command
                .stderr(std::process::Stdio::piped())
                .spawn()
                .unwrap()
        })
        .collect();
    for runner in runners {
        let out = runner.wait_with_output().unwrap();
        assert!(out.status.success(), "{}", stderr(&out));
    }
    let took = started.elapsed();
    assert_eq!(sink.messages().len(), 8);
    assert!(w.tree.queue().list().unwrap().is_empty());
    // Eight slots a quarter second apart: the last starts 1.75 s after
    // the first, whichever runner has it.
    assert!(took >= Duration::from_millis(1750), "took {took:?}");
    let pace = w.tree.root().join("state/pace/far.test");
    assert!(pace.exists(), "the pace lives in the tree");
}

#[test]
fn what_does_not_fit_in_soon_stays_pending_without_a_deferral() {
    let w = world("[send.domains.\"far.test\"]\nrate = \"1/h\"\n");
    let sink = w.sink(2, Default::default());
    for n in 0..3 {
        inject(&w, &format!("hourly {n}"));
    }
    let started = Instant::now();
    ok(&w.send(&["--once"]));
    assert!(
        started.elapsed() < Duration::from_secs(30),
        "the runner does not wait an hour"
    );
    assert_eq!(sink.messages().len(), 1, "one slot in the hour");
    let json: serde_json::Value =
        serde_json::from_slice(&w.tree.postroom(&["queue", "list", "--json"]).stdout).unwrap();
    let left = json.as_array().unwrap();
    assert_eq!(left.len(), 2);
    for message in left {
        let status = &message["recipients"][0]["status"];
        assert_eq!(status["state"], "pending", "{message}");
        assert_eq!(status["attempts"], 0, "no deferral counted: {message}");
    }
    let e = postroom::config::Config::parse(
        "hostname = \"h.test\"\n[send.domains.\"far.test\"]\nrate = \"5 per minute\"\n",
    )
    .unwrap_err();
    assert!(e.contains("60/min"), "{e}");
}
