//! vacation as a pipe beside the user's mailbox, end to end: the first
//! message from a sender is answered (queued with the null sender), the
//! second is not, a list's message is not, and -l / -i show and clear the
//! record.

use crate::util::{Tree, bin, maildir_files, stderr, stdout};

#[test]
fn answers_once_through_an_alias_pipe_and_lists_who_was_answered() {
    let tree = Tree::new();
    tree.add_user("ann@example.test");
    let vacation = bin("vacation");
    let config = tree.config.display().to_string();
    std::fs::write(
        tree.root().join("aliases"),
        format!(
            "ann@example.test: \\ann, \"|{} --config {config} ann@example.test\"\n",
            vacation.display()
        ),
    )
    .unwrap();
    std::fs::write(
        tree.maildir("ann").join("vacation.msg"),
        "Subject: Away until Monday\n\nI read mail on Monday.\n",
    )
    .unwrap();
    let message = |extra: &str| {
        format!("From: bob@far.test\nTo: ann@example.test\nSubject: hi\n{extra}\nhello\n")
    };
    let queued = |tree: &Tree| {
        let out = tree.postroom(&["queue", "list", "--json"]);
        serde_json::from_slice::<serde_json::Value>(&out.stdout)
            .unwrap()
            .as_array()
            .unwrap()
            .len()
    };
    for _ in 0..2 {
        let out = tree.inject(
            &["-f", "bob@far.test", "ann@example.test"],
            message("").as_bytes(),
        );
        assert!(out.status.success(), "{}", stderr(&out));
    }
    let out = tree.inject(
        &["-f", "news@far.test", "ann@example.test"],
        message("List-Id: <news.far.test>").as_bytes(),
    );
    assert!(out.status.success(), "{}", stderr(&out));
    assert_eq!(
        maildir_files(&tree.maildir("ann")).len(),
        3,
        "every message delivered"
    );
    assert_eq!(queued(&tree), 1, "one reply, to bob, waiting for smtp-send");
    let ids = tree.postroom(&["queue", "list", "--json"]);
    let list: serde_json::Value = serde_json::from_slice(&ids.stdout).unwrap();
    let id = list[0]["id"].as_str().unwrap();
    let show = stdout(&tree.postroom(&["queue", "show", id]));
    assert!(show.contains("bob@far.test"), "{show}");

    let run = |args: &[&str]| {
        std::process::Command::new(&vacation)
            .arg("--config")
            .arg(&tree.config)
            .args(args)
            .output()
            .unwrap()
    };
    let listed = run(&["-l", "ann@example.test"]);
    assert!(
        stdout(&listed).contains("bob@far.test"),
        "{}",
        stdout(&listed)
    );
    assert!(!stdout(&listed).contains("news@far.test"));
    assert!(run(&["-i", "ann@example.test"]).status.success());
    assert!(!stdout(&run(&["-l", "ann@example.test"])).contains("bob@far.test"));
    let nobody = run(&["-l", "nobody@example.test"]);
    assert_eq!(nobody.status.code(), Some(67), "{}", stderr(&nobody));
}
