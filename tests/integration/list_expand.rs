//! list-expand end to end: lists made and filled from the shell, posts
//! through the aliases file pipe, the policies (members, held for a
//! moderator, announce with refusal), loop dropping, delivery to members
//! by smtp-send, and 100,000 members added in one call.

use std::process::{Command, Output};

use crate::util::{Tree, bin, maildir_files, rendered, run_queue, stderr, stdout};

pub(crate) fn list_expand(tree: &Tree, args: &[&str], input: &[u8]) -> Output {
    let mut command = Command::new(bin("list-expand"));
    command.arg("--config").arg(&tree.config).args(args);
    crate::util::run_with(command, input)
}

/// Creates team@example.test, open to posts from anyone, owned by ann,
/// with the `members` given one a line.
pub(crate) fn open_team(tree: &Tree, members: &[u8]) {
    create_open_team(tree);
    ok(&list_expand(
        tree,
        &["add", "team@example.test", "-"],
        members,
    ));
}

/// Creates team@example.test, open to posts from anyone, owned by ann,
/// with no members.
fn create_open_team(tree: &Tree) {
    ok(&list_expand(
        tree,
        &[
            "create",
            "team@example.test",
            "--owner",
            "ann@example.test",
            "--policy",
            "open",
        ],
        b"",
    ));
}

/// [`open_team`] with a footer, "To leave: mail team-request".
pub(crate) fn open_team_with_footer(tree: &Tree, members: &[u8]) {
    open_team(tree, members);
    let config = tree.root().join("lists/team@example.test/config");
    let text = std::fs::read_to_string(&config).unwrap();
    std::fs::write(&config, text + "footer = \"To leave: mail team-request\"\n").unwrap();
}

pub(crate) fn ok(out: &Output) -> String {
    assert!(out.status.success(), "{}\n{}", stdout(out), stderr(out));
    stdout(out)
}

fn mail_of(tree: &Tree, user: &str) -> Vec<String> {
    crate::util::maildir_texts(&tree.maildir(user))
}

#[test]
fn posts_by_policy_through_the_aliases_pipe() {
    let tree = Tree::new();
    for user in ["ann", "bob", "cat", "dan"] {
        tree.add_user(&format!("{user}@example.test"));
    }
    ok(&list_expand(
        &tree,
        &["create", "team@example.test", "--owner", "ann@example.test"],
        b"",
    ));
    let added = ok(&list_expand(
        &tree,
        &["add", "team@example.test", "-"],
        b"bob@example.test\ncat@example.test\nBOB@example.test\n",
    ));
    assert!(added.contains("2 added, 1 already there"), "{added}");
    assert_eq!(
        ok(&list_expand(&tree, &["members", "team@example.test"], b"")),
        "bob@example.test\ncat@example.test\n"
    );
    let config = tree.root().join("lists/team@example.test/config");
    let text = std::fs::read_to_string(&config).unwrap();
    std::fs::write(
        &config,
        text + "subject_tag = \"[team]\"\nfooter = \"To leave: mail team-request\"\n",
    )
    .unwrap();
    std::fs::write(
        tree.root().join("aliases"),
        format!(
            "team@example.test: \"|{} --config {} post team@example.test\"\n",
            bin("list-expand").display(),
            tree.config.display()
        ),
    )
    .unwrap();

    // A member posts: every member gets it, tagged, with the list headers.
    let out = tree.inject(
        &["-f", "bob@example.test", "team@example.test"],
        b"From: bob@example.test\nTo: team@example.test\nSubject: lunch\n\nat noon\n",
    );
    assert!(out.status.success(), "{}", stderr(&out));
    run_queue(&tree);
    for user in ["bob", "cat"] {
        let mail = mail_of(&tree, user);
        assert_eq!(mail.len(), 1, "{user}");
        for want in [
            "Subject: [team] lunch",
            "List-Id: \"\" <team.example.test>",
            "List-Post: <mailto:team@example.test>",
            "List-Unsubscribe: <mailto:team-request@example.test?subject=unsubscribe>",
            "Return-Path: <team-bounces+",
            "at noon\n-- \nTo leave: mail team-request\n",
        ] {
            assert!(mail[0].contains(want), "{want:?} missing:\n{}", mail[0]);
        }
    }
    assert!(mail_of(&tree, "dan").is_empty(), "not a member");
    assert_eq!(
        maildir_files(&tree.root().join("lists/team@example.test/archive")).len(),
        1,
        "archived"
    );

    // A non-member's post is held; the owner is told; approve sends it.
    let out = tree.inject(
        &["-f", "dan@example.test", "team@example.test"],
        b"Subject: may I?\n\nhello\n",
    );
    assert!(out.status.success(), "{}", stderr(&out));
    let held = ok(&list_expand(&tree, &["held", "team@example.test"], b""));
    let id = held.split('\t').next().unwrap().to_string();
    assert!(
        held.contains("dan@example.test") && held.contains("may I?"),
        "{held}"
    );
    run_queue(&tree);
    let notice = mail_of(&tree, "ann");
    assert!(
        notice
            .iter()
            .any(|m| m.contains(&format!("Subject: approve {id}"))),
        "{notice:?}"
    );
    assert_eq!(mail_of(&tree, "cat").len(), 1, "held, not sent");
    ok(&list_expand(
        &tree,
        &["approve", "team@example.test", &id],
        b"",
    ));
    run_queue(&tree);
    assert_eq!(mail_of(&tree, "cat").len(), 2, "approved");
    assert!(
        !list_expand(&tree, &["approve", "team@example.test", &id], b"")
            .status
            .success()
    );

    // Moderation by mail: the owner replies to the notice. Someone else
    // with the id but not owner or moderator cannot.
    let out = tree.inject(
        &["-f", "dan@example.test", "team@example.test"],
        b"Subject: again?\n\nhello again\n",
    );
    assert!(out.status.success(), "{}", stderr(&out));
    let held = ok(&list_expand(&tree, &["held", "team@example.test"], b""));
    let id = held.split('\t').next().unwrap().to_string();
    let reply = |from: &str| {
        ok(&list_expand(
            &tree,
            &["request", "team@example.test", "--sender", from],
            format!("From: {from}\nSubject: Re: approve {id}\n\n> quoted notice\n").as_bytes(),
        ));
    };
    reply("dan@example.test");
    run_queue(&tree);
    assert_eq!(
        mail_of(&tree, "cat").len(),
        2,
        "dan cannot approve his own post"
    );
    reply("ann@example.test");
    run_queue(&tree);
    assert_eq!(
        mail_of(&tree, "cat").len(),
        3,
        "approved by the owner's reply"
    );
    // The owner adds and removes members by mail.
    ok(&list_expand(
        &tree,
        &[
            "request",
            "team@example.test",
            "--sender",
            "ann@example.test",
        ],
        b"From: ann@example.test\n\nadd dan@example.test\nremove cat@example.test\n",
    ));
    assert_eq!(
        ok(&list_expand(&tree, &["members", "team@example.test"], b"")),
        "bob@example.test\ndan@example.test\n"
    );

    // A post that went through the list already is dropped, not bounced.
    let out = tree.inject(
        &["-f", "bob@example.test", "team@example.test"],
        b"List-Id: <team.example.test>\nSubject: echo\n\nloop\n",
    );
    assert!(out.status.success());
    run_queue(&tree);
    assert_eq!(mail_of(&tree, "cat").len(), 3, "loop dropped");
    assert_eq!(mail_of(&tree, "bob").len(), 3, "and no bounce to bob");

    // An announce list refuses outsiders: the sender gets a bounce.
    ok(&list_expand(
        &tree,
        &[
            "create",
            "news@example.test",
            "--owner",
            "ann@example.test",
            "--policy",
            "announce",
        ],
        b"",
    ));
    let config = tree.root().join("lists/news@example.test/config");
    let text = std::fs::read_to_string(&config)
        .unwrap()
        .replace("outsiders = \"hold\"", "outsiders = \"reject\"");
    std::fs::write(&config, text).unwrap();
    let post = list_expand(
        &tree,
        &["post", "news@example.test", "--sender", "bob@example.test"],
        b"Subject: spam\n\nbuy\n",
    );
    assert_eq!(post.status.code(), Some(77));
    assert!(
        stdout(&post).contains("only the list's posters"),
        "{}",
        stdout(&post)
    );
    let show = ok(&list_expand(&tree, &["show"], b""));
    assert!(show.contains("team@example.test\t2 members"), "{show}");
}

#[test]
fn subscribe_and_unsubscribe_by_mail_with_confirmation() {
    let tree = Tree::new();
    for user in ["ann", "eve"] {
        tree.add_user(&format!("{user}@example.test"));
    }
    ok(&list_expand(
        &tree,
        &["create", "team@example.test", "--owner", "ann@example.test"],
        b"",
    ));
    std::fs::write(
        tree.root().join("aliases"),
        format!(
            "team-request@example.test: \"|{} --config {} request team@example.test\"\n",
            bin("list-expand").display(),
            tree.config.display()
        ),
    )
    .unwrap();
    let send = |from: &str, text: &str| {
        let out = tree.inject(&["-f", from, "team-request@example.test"], text.as_bytes());
        assert!(out.status.success(), "{}", stderr(&out));
        run_queue(&tree);
    };
    let members = || ok(&list_expand(&tree, &["members", "team@example.test"], b""));

    send(
        "eve@example.test",
        "From: eve@example.test\nSubject: subscribe\n\n",
    );
    assert_eq!(members(), "", "not before confirming");
    let reply = mail_of(&tree, "eve").pop().unwrap();
    assert!(reply.contains("Auto-Submitted: auto-replied"), "{reply}");
    let subject = reply
        .lines()
        .find(|l| l.starts_with("Subject: confirm "))
        .unwrap_or_else(|| panic!("{reply}"))
        .to_string();
    // A plain reply (Re: confirm TOKEN) confirms.
    send(
        "eve@example.test",
        &format!(
            "From: eve@example.test\nSubject: Re: {}\n\n> quoted\n",
            &subject[9..]
        ),
    );
    assert_eq!(members(), "eve@example.test\n");
    // The token worked once.
    send(
        "eve@example.test",
        &format!("From: eve@example.test\nSubject: x\n\n{}\n", &subject[9..]),
    );
    assert!(
        mail_of(&tree, "eve")
            .iter()
            .any(|m| m.contains("unknown or has expired"))
    );

    send(
        "eve@example.test",
        "From: eve@example.test\n\nset digest on\nhelp\n-- \nEve\n",
    );
    let last = mail_of(&tree, "eve");
    assert!(
        last.iter().any(|m| m.contains("digest is now on")),
        "{last:?}"
    );
    assert!(last.iter().any(|m| m.contains("set nomail on|off")));
    let text =
        std::fs::read_to_string(tree.root().join("lists/team@example.test/members")).unwrap();
    assert_eq!(text, "eve@example.test digest\n");

    // Members are private; an automatic request gets no answer at all.
    let before = mail_of(&tree, "eve").len();
    send(
        "eve@example.test",
        "From: eve@example.test\nSubject: members\n\n",
    );
    assert!(mail_of(&tree, "eve").iter().any(|m| m.contains("private")));
    send(
        "eve@example.test",
        "From: eve@example.test\nAuto-Submitted: auto-replied\nSubject: help\n\n",
    );
    assert_eq!(mail_of(&tree, "eve").len(), before + 1);

    // Unsubscribe needs its confirmation too.
    send(
        "eve@example.test",
        "From: eve@example.test\nSubject: unsubscribe\n\n",
    );
    let reply = mail_of(&tree, "eve")
        .into_iter()
        .find(|m| m.contains("To unsubscribe"))
        .unwrap();
    let token = reply
        .lines()
        .find_map(|l| l.trim().strip_prefix("confirm "))
        .unwrap()
        .to_string();
    send(
        "eve@example.test",
        &format!("From: eve@example.test\n\nconfirm {token}\n"),
    );
    assert_eq!(members(), "");
}

#[test]
fn the_printed_alias_lines_connect_posts_requests_and_bounces() {
    let tree = Tree::new();
    for user in ["ann", "bob", "eve"] {
        tree.add_user(&format!("{user}@example.test"));
    }
    let created = ok(&list_expand(
        &tree,
        &["create", "team@example.test", "--owner", "ann@example.test"],
        b"",
    ));
    let lines: Vec<&str> = created
        .lines()
        .filter(|l| l.starts_with("  "))
        .map(str::trim)
        .collect();
    assert_eq!(lines.len(), 4, "{created}");
    for line in &lines {
        assert!(
            line.contains("-owner@")
                || line.contains(&format!("--config {}", tree.config.display())),
            "a pipe line without the --config given: {line}"
        );
    }
    let show = ok(&list_expand(&tree, &["show", "team@example.test"], b""));
    assert!(
        show.ends_with(&created[created.find('\n').unwrap() + 1..]),
        "{show}"
    );
    std::fs::write(tree.root().join("aliases"), lines.join("\n") + "\n").unwrap();
    ok(&list_expand(
        &tree,
        &["add", "team@example.test", "-"],
        b"bob@example.test\n",
    ));

    // A request reaches `request`: eve gets the confirmation, ann nothing.
    let out = tree.inject(
        &["-f", "eve@example.test", "team-request@example.test"],
        b"From: eve@example.test\nSubject: subscribe\n\n",
    );
    assert!(out.status.success(), "{}", stderr(&out));
    run_queue(&tree);
    let eve = mail_of(&tree, "eve");
    assert!(
        eve.iter().any(|m| m.contains("Subject: confirm ")),
        "{eve:?}"
    );
    // A bounce reaches `bounce`, which counts it against bob.
    let out = tree.inject(
        &["-f", "", "team-bounces+bob=example.test@example.test"],
        b"From: MAILER-DAEMON@far.test\nSubject: failed\n\nbob is gone\n",
    );
    assert!(out.status.success(), "{}", stderr(&out));
    run_queue(&tree);
    let bounces =
        std::fs::read_to_string(tree.root().join("lists/team@example.test/bounces")).unwrap();
    assert_eq!(bounces, "bob@example.test 1\n");
    assert!(mail_of(&tree, "ann").is_empty(), "the owner gets neither");
    // And a post reaches `post`.
    let out = tree.inject(
        &["-f", "bob@example.test", "team@example.test"],
        b"From: bob@example.test\nSubject: hi\n\nhello\n",
    );
    assert!(out.status.success(), "{}", stderr(&out));
    run_queue(&tree);
    assert!(mail_of(&tree, "bob").iter().any(|m| m.contains("List-Id:")));
}

#[test]
fn a_request_from_an_address_that_cannot_receive_mail_is_dropped() {
    let tree = Tree::new();
    tree.add_user("ann@example.test");
    ok(&list_expand(
        &tree,
        &["create", "team@example.test", "--owner", "ann@example.test"],
        b"",
    ));
    let pending = tree.root().join("lists/team@example.test/pending");
    for _ in 0..2 {
        let out = list_expand(
            &tree,
            &[
                "request",
                "team@example.test",
                "--sender",
                "nosuch@example.test",
            ],
            b"From: nosuch@example.test\nSubject: subscribe\n\nhelp\n",
        );
        assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
        assert!(
            stderr(&out).contains("nosuch@example.test cannot receive mail"),
            "{}",
            stderr(&out)
        );
    }
    assert_eq!(std::fs::read_dir(&pending).unwrap().count(), 0);
    assert!(tree.queue().list().unwrap().is_empty(), "nothing queued");
    // One that can be answered still is.
    ok(&list_expand(
        &tree,
        &["request", "team@example.test", "--sender", "x@far.test"],
        b"From: x@far.test\nSubject: subscribe\n\n",
    ));
    assert_eq!(std::fs::read_dir(&pending).unwrap().count(), 1);
}

#[test]
fn digest_members_get_one_mime_digest_of_the_new_posts() {
    let tree = Tree::new();
    for user in ["ann", "bob", "dig"] {
        tree.add_user(&format!("{user}@example.test"));
    }
    open_team(&tree, b"bob@example.test\ndig@example.test\n");
    std::fs::write(
        tree.root().join("lists/team@example.test/members"),
        "bob@example.test\ndig@example.test digest\n",
    )
    .unwrap();
    let config = tree.root().join("lists/team@example.test/config");
    let text = std::fs::read_to_string(&config).unwrap();
    std::fs::write(
        &config,
        text + "unsubscribe_url = \"https://lists.example.test/lw\"\n",
    )
    .unwrap();
    for subject in ["first", "second", "=?utf-8?q?h=C3=A9llo?="] {
        ok(&list_expand(
            &tree,
            &["post", "team@example.test", "--sender", "ann@example.test"],
            format!("From: ann@example.test\nSubject: {subject}\n\nbody of {subject}\n").as_bytes(),
        ));
    }
    let out = ok(&list_expand(&tree, &["digest", "team@example.test"], b""));
    assert!(out.contains("3 posts"), "{out}");
    run_queue(&tree);
    assert_eq!(mail_of(&tree, "bob").len(), 3, "bob gets each post");
    let digest = mail_of(&tree, "dig");
    assert_eq!(digest.len(), 1, "dig gets one digest only");
    for want in [
        "multipart/digest",
        "message/rfc822",
        "body of first",
        "body of second",
    ] {
        assert!(digest[0].contains(want), "{want:?} missing:\n{}", digest[0]);
    }
    // The table of contents shows subjects decoded (RFC 2047).
    let parsed = mail_parser::MessageParser::default()
        .parse(digest[0].as_bytes())
        .unwrap();
    let contents = parsed.body_text(0).unwrap();
    for want in ["1. first (ann@example.test)", "3. héllo (ann@example.test)"] {
        assert!(contents.contains(want), "{want:?} missing:\n{contents}");
    }
    // The digest's own header carries the fields the posts do (RFC 2369),
    // with dig's one-click URL.
    let head = digest[0][..digest[0].find("\n\n").unwrap()].replace("\n ", " ");
    for want in [
        "List-Id: \"\" <team.example.test>",
        "List-Post: <mailto:team@example.test>",
        "List-Help: <mailto:team-request@example.test?subject=help>",
        "List-Unsubscribe: <https://lists.example.test/lw/unsubscribe/team@example.test/dig@example.test/",
        "<mailto:team-request@example.test?subject=unsubscribe>",
        "List-Unsubscribe-Post: List-Unsubscribe=One-Click",
        "X-Loop: team@example.test",
        "Return-Path: <team-bounces+dig=example.test@example.test>",
    ] {
        assert!(head.contains(want), "{want:?} missing:\n{head}");
    }
    let again = ok(&list_expand(&tree, &["digest", "team@example.test"], b""));
    assert!(again.contains("0 posts"), "{again}");
}

#[test]
fn verp_return_paths_and_bounce_counting() {
    let tree = Tree::new();
    tree.add_user("ann@example.test");
    tree.add_user("cat@example.test");
    open_team(&tree, b"bob@far.test\ncat@example.test\n");
    let config = tree.root().join("lists/team@example.test/config");
    let text = std::fs::read_to_string(&config).unwrap();
    std::fs::write(
        &config,
        text.replace("bounce_limit = 5", "bounce_limit = 2")
            + "unsubscribe_url = \"https://lists.example.test/u/team\"\n",
    )
    .unwrap();
    ok(&list_expand(
        &tree,
        &["post", "team@example.test", "--sender", "ann@example.test"],
        b"Subject: hi\n\nall\n",
    ));
    let queue = tree.queue();
    let id = queue.list().unwrap().pop().unwrap();
    assert!(
        queue.read(&id).unwrap().envelope.verp,
        "list posts use VERP"
    );
    run_queue(&tree);
    let cat = mail_of(&tree, "cat");
    for want in [
        "Return-Path: <team-bounces+cat=example.test@example.test>",
        // One copy a member when the list has an unsubscribe_url: each
        // carries its member's one-click URL (list-web(8)).
        "List-Unsubscribe: <https://lists.example.test/u/team/unsubscribe/team@example.test/cat@example.test/",
        "List-Unsubscribe-Post: List-Unsubscribe=One-Click",
    ] {
        assert!(cat[0].contains(want), "{want:?} missing:\n{}", cat[0]);
    }

    let bounce = |n: &str| {
        let out = ok(&list_expand(
            &tree,
            &[
                "bounce",
                "team@example.test",
                "--recipient",
                "team-bounces+bob=far.test@example.test",
            ],
            b"",
        ));
        assert!(out.contains(&format!("{n} bounces")), "{out}");
    };
    bounce("1");
    bounce("2");
    let members =
        std::fs::read_to_string(tree.root().join("lists/team@example.test/members")).unwrap();
    assert!(members.contains("bob@far.test nomail"), "{members}");
    run_queue(&tree);
    assert!(
        mail_of(&tree, "ann")
            .iter()
            .any(|m| m.contains("set to nomail after 2 bounces"))
    );
    // A bounce address that names nobody is ignored.
    ok(&list_expand(
        &tree,
        &[
            "bounce",
            "team@example.test",
            "--recipient",
            "team-bounces@example.test",
        ],
        b"",
    ));
}

#[test]
fn from_is_rewritten_for_authors_whose_domain_has_a_strict_dmarc_policy() {
    use crate::dns::{DnsServer, Record};
    let dns = DnsServer::start(
        [
            (
                "_dmarc.strict.test",
                "v=DMARC1; p=reject; rua=mailto:x@strict.test",
            ),
            ("_dmarc.relaxed.test", "v=DMARC1; p=none"),
        ]
        .into_iter()
        .map(|(name, txt)| (name.to_string(), vec![Record::Txt(txt.to_string())]))
        .collect(),
    );
    let tree = Tree::new();
    tree.add_user("cat@example.test");
    let mut config = std::fs::read_to_string(&tree.config).unwrap();
    config.push_str(&format!(
        "\n[dns]\nnameservers = [\"{}\"]\ntimeout = \"2s\"\n",
        dns.addr
    ));
    std::fs::write(&tree.config, config).unwrap();
    ok(&list_expand(
        &tree,
        &[
            "create",
            "team@example.test",
            "--owner",
            "cat@example.test",
            "--policy",
            "open",
        ],
        b"",
    ));
    ok(&list_expand(
        &tree,
        &["add", "team@example.test", "-"],
        b"cat@example.test\n",
    ));
    for (author, subject) in [
        ("Xena <x@strict.test>", "strict"),
        ("y@relaxed.test", "relaxed"),
        // Decoded, the name is not ASCII, and one has a line end in it.
        ("=?utf-8?b?w6lsw6h2ZQ==?= <e@strict.test>", "eight"),
        (
            "=?utf-8?q?z=0D=0ABcc:_evil@far.test?= <z@strict.test>",
            "split",
        ),
    ] {
        ok(&list_expand(
            &tree,
            &["post", "team@example.test", "--sender", "a@far.test"],
            format!("From: {author}\nSubject: {subject}\n\nbody\n").as_bytes(),
        ));
    }
    run_queue(&tree);
    let mail = mail_of(&tree, "cat");
    let strict = mail.iter().find(|m| m.contains("Subject: strict")).unwrap();
    assert!(
        strict.contains("From: \"Xena via team\" <team@example.test>")
            && strict.contains("Reply-To: <x@strict.test>"),
        "{strict}"
    );
    let relaxed = mail
        .iter()
        .find(|m| m.contains("Subject: relaxed"))
        .unwrap();
    assert!(relaxed.contains("From: y@relaxed.test"), "{relaxed}");
    let eight = mail.iter().find(|m| m.contains("Subject: eight")).unwrap();
    let head = &eight[..eight.find("\n\n").unwrap()];
    assert!(head.is_ascii(), "8-bit header without SMTPUTF8:\n{head}");
    let parsed = mail_parser::MessageParser::default()
        .parse_headers(eight.as_bytes())
        .unwrap();
    let from = parsed.from().unwrap().first().unwrap();
    assert_eq!(
        (from.name(), from.address()),
        (Some("élève via team"), Some("team@example.test"))
    );
    let split = mail.iter().find(|m| m.contains("Subject: split")).unwrap();
    assert!(
        split.contains("From: \"z  Bcc: evil@far.test via team\" <team@example.test>")
            && !split.contains("\nBcc:"),
        "{split}"
    );
}

#[test]
fn a_hundred_thousand_members_in_one_call() {
    let tree = Tree::new();
    ok(&list_expand(
        &tree,
        &["create", "big@example.test", "--owner", "ann@example.test"],
        b"",
    ));
    let members: String = (0..100_000)
        .map(|i| format!("m{i}@far{}.test\n", i % 97))
        .collect();
    let started = std::time::Instant::now();
    let out = ok(&list_expand(
        &tree,
        &["add", "big@example.test", "-"],
        members.as_bytes(),
    ));
    assert!(out.contains("100000 added"), "{out}");
    assert!(
        started.elapsed().as_secs() < 30,
        "took {:?}",
        started.elapsed()
    );
    let listed = ok(&list_expand(&tree, &["members", "big@example.test"], b""));
    assert_eq!(listed.lines().count(), 100_000);
    let bad = list_expand(
        &tree,
        &["add", "big@example.test", "-"],
        b"ok@x.test\nnot an address\n",
    );
    assert!(!bad.status.success());
    assert!(stderr(&bad).contains("line 2"), "{}", stderr(&bad));
}

#[test]
fn the_html_archive_reads_well_in_a_browser_and_runs_nothing() {
    let tree = Tree::new();
    create_open_team(&tree);
    let post = |text: &str| {
        ok(&list_expand(
            &tree,
            &["post", "team@example.test", "--sender", "ann@example.test"],
            text.as_bytes(),
        ));
    };
    post(
        "From: =?utf-8?q?J=C3=BCrgen_M=C3=BCller?= <j@example.test>\n\
         Subject: =?utf-8?q?Gr=C3=BC=C3=9Fe_aus_K=C3=B6ln?=\nMessage-ID: <root@example.test>\n\
         Date: Mon, 23 Nov 2026 10:00:00 +0000\nMIME-Version: 1.0\n\
         Content-Type: multipart/mixed; boundary=b\n\n--b\nContent-Type: text/plain; charset=utf-8\n\n\
         Hallo zusammen\n--b\nContent-Type: application/pdf\n\
         Content-Disposition: attachment; filename*=utf-8''Bericht%20M%C3%A4rz.pdf\n\
         Content-Transfer-Encoding: base64\n\nJVBERi0=\n--b--\n",
    );
    post(
        "From: eve@example.test\nSubject: Re: hello <b>there</b>\nIn-Reply-To: <root@example.test>\n\
         Date: Mon, 23 Nov 2026 11:00:00 +0000\nMIME-Version: 1.0\nContent-Type: text/html\n\n\
         <p>visible words</p><script>document.title='owned'</script><img src=x onerror=alert(1)>\n",
    );
    let html = tree.dir.path().join("web");
    let out = ok(&list_expand(
        &tree,
        &[
            "archive",
            "team@example.test",
            "--html",
            html.to_str().unwrap(),
        ],
        b"",
    ));
    assert!(out.contains("2 posts"), "{out}");
    for file in std::fs::read_dir(&html).unwrap().flatten() {
        let text = std::fs::read_to_string(file.path()).unwrap();
        assert!(
            !text.contains("<script") && !text.contains("<img"),
            "{text}"
        );
    }
    let index = rendered(&html.join("index.html"));
    assert!(index.contains("Grüße aus Köln"), "{index}");
    assert!(index.contains("Jürgen Müller"), "{index}");
    assert!(
        index.contains("Re: hello &lt;b&gt;there&lt;/b&gt;"),
        "{index}"
    );
    let threads = rendered(&html.join("threads.html"));
    let root = threads.find("Grüße aus Köln").unwrap();
    let reply = threads.find("Re: hello").unwrap();
    assert!(
        root < reply && threads[root..reply].contains("<ul>"),
        "the reply nests: {threads}"
    );
    let page = index
        .split("href=\"")
        .nth(1)
        .map(|rest| rest.split('"').next().unwrap().to_string())
        .unwrap();
    let first = rendered(&html.join(&page));
    let shown = if first.contains("visible words") {
        first
    } else {
        let other = index
            .split("href=\"")
            .nth(2)
            .map(|rest| rest.split('"').next().unwrap().to_string())
            .unwrap();
        rendered(&html.join(other))
    };
    // The HTML post shows its words, and its script never ran.
    assert!(shown.contains("visible words"), "{shown}");
    assert!(!shown.contains("<title>owned</title>"), "{shown}");
    assert!(
        !shown.contains("<script") && !shown.contains("<img"),
        "{shown}"
    );
    let all: String = std::fs::read_dir(&html)
        .unwrap()
        .flatten()
        .map(|f| rendered(&f.path()))
        .collect();
    assert!(all.contains("Bericht März.pdf"), "attachment listed");
    assert!(all.contains("Hallo zusammen"));
}
