//! `postroom-bench sieve`: 2,000 messages through a 20-rule Sieve script
//! (header matches, folder moves, a regex, an external list of 202
//! entries, address parts, a body test):
//! messages per second for filtering alone, and with delivery into the
//! folders of a maildir (`postroom::delivery::filter`, what mailsort and local
//! delivery run). Then mailsort as a process per message against procmail
//! and against the disk's durable-write floor plus a process start (see
//! `table.rs`).

use std::path::Path;
use std::time::Instant;

use postroom::delivery::sieve::{Input, Script};
use postroom::proto::address::{Address, ReversePath};

const RULES: &str = r#"require ["fileinto", "regex", "subaddress", "envelope", "body", "imap4flags", "relational", "comparator-i;ascii-numeric", "extlists"];
if header :contains "list-id" "rust-users" { fileinto "Lists/rust"; stop; }
if header :contains "list-id" "postgres" { fileinto "Lists/pg"; stop; }
if header :is "x-spam-flag" "YES" { fileinto "Junk"; stop; }
if header :value "ge" :comparator "i;ascii-numeric" "x-spam-score" "8" { fileinto "Junk"; stop; }
if address :domain :is "from" ["bank.example", "billing.example"] { fileinto "Money"; }
if address :detail :is "to" "shop" { fileinto "Shopping"; stop; }
if header :matches "subject" "*invoice*" { addflag "\\Flagged"; }
if header :regex "subject" "^\\[(JIRA|GH)-[0-9]+\\]" { fileinto "Tickets"; stop; }
if envelope :localpart :is "from" "noreply" { fileinto "Notices"; }
if anyof (header :contains "subject" "newsletter", exists "list-unsubscribe") { fileinto "News"; stop; }
if header :contains "from" "boss@work.example" { addflag "\\Flagged"; keep; }
if size :over 5M { fileinto "Big"; }
if body :text :contains "unsubscribe here" { fileinto "News"; stop; }
if header :contains "subject" ["lottery", "winner", "prize"] { discard; stop; }
if address :all :is "to" "team@work.example" { fileinto "Team"; }
if header :matches "x-mailer" "*Outlook*" { addflag "outlook"; }
if not exists "date" { fileinto "Suspicious"; }
if header :contains "subject" "urgent" { addflag "\\Flagged"; }
if address :localpart :matches "from" "*-bounces*" { fileinto "Bounces"; stop; }
if address :list "from" ":addrbook:vip" { addflag "\\Flagged"; fileinto "VIP"; }
"#;

pub fn run(base: &Path, messages: usize) -> anyhow::Result<()> {
    let started = Instant::now();
    for _ in 0..999 {
        Script::compile(RULES)?;
    }
    let script = Script::compile(RULES)?;
    let compile_us = started.elapsed().as_secs_f64() * 1e6 / 1000.0;
    let samples: Vec<Vec<u8>> = (0..messages).map(sample).collect();
    let started = Instant::now();
    let mut actions = 0;
    for raw in &samples {
        actions += script
            .run(&Input {
                message: raw,
                envelope_from: "someone@far.example",
                envelope_to: "ann+shop@example.test",
                delimiter: '+',
                mailbox_exists: &|_| true,
                list: &|name| (name == ":addrbook:vip").then(vip),
            })?
            .len();
    }
    let filter = started.elapsed().as_secs_f64();

    let dir = base.join("sieve");
    let config_path = crate::bench_tree(&dir)?;
    let config = postroom::config::Config::load(&config_path)?;
    let directory = postroom::directory::aliases::Directory::load(&config)?;
    let inbox = postroom::store::maildir::Maildir::new(dir.join("mail/bench.test/sink"));
    std::fs::create_dir_all(inbox.path().join("sieve"))?;
    std::fs::write(inbox.path().join("sieve/active.sieve"), RULES)?;
    std::fs::create_dir_all(inbox.path().join("sieve/lists"))?;
    std::fs::write(
        inbox.path().join("sieve/lists/addrbook_vip"),
        vip().join("\n"),
    )?;
    let user = Address::parse("sink@bench.test")?;
    let sender = ReversePath::parse("someone@far.example")?;
    let started = Instant::now();
    for raw in &samples {
        postroom::delivery::filter::sort(&config, &directory, &inbox, None, &user, &sender, raw)?;
    }
    let deliver = started.elapsed().as_secs_f64();
    println!(
        "postroom-bench sieve: compiling the 20-rule script {compile_us:.0} µs; {messages} messages through it: filtering alone {:.0} msg/s ({actions} actions); with delivery into the maildir's folders {:.0} msg/s",
        messages as f64 / filter,
        messages as f64 / deliver
    );
    let true_start = crate::table::spawn_time(Path::new("/bin/true"), 50)?;
    let static_dir = Path::new(crate::table::STATIC_BUILD);
    crate::table::mailsort_row(
        base,
        messages,
        true_start,
        &crate::table::builds("mailsort", static_dir)?,
    )
}

/// The external list: 200 addresses and a pattern.
fn vip() -> Vec<String> {
    let mut list: Vec<String> = (0..200).map(|i| format!("vip{i}@far.example")).collect();
    list.push("*@family.example".into());
    list.push("friend@far.example".into());
    list
}

/// A varied message: lists, spam scores, tickets, plain mail.
pub fn sample(n: usize) -> Vec<u8> {
    let (from, extra, subject) = match n % 8 {
        0 => (
            "a@rust-lang.example",
            "List-Id: <rust-users.rust-lang.example>\r\n",
            "Re: borrowck",
        ),
        1 => ("x@spam.example", "X-Spam-Score: 9\r\n", "You are a winner"),
        2 => ("alerts@bank.example", "", "Your invoice for March"),
        3 => ("jira@work.example", "", "[JIRA-1234] Fix the build"),
        4 => (
            "noreply@shop.example",
            "List-Unsubscribe: <mailto:u@shop.example>\r\n",
            "newsletter",
        ),
        5 => (
            "boss@work.example",
            "X-Mailer: Microsoft Outlook 16.0\r\n",
            "urgent: numbers",
        ),
        6 => (
            "list-bounces@lists.example",
            "Precedence: bulk\r\n",
            "bounce",
        ),
        _ => ("friend@far.example", "", "lunch?"),
    };
    let mut text = format!(
        "From: {from}\r\nTo: ann@example.test\r\nDate: Mon, 23 Nov 2026 10:00:00 +0000\r\n{extra}Subject: {subject} {n}\r\n\r\n"
    );
    while text.len() < 4096 {
        text.push_str(
            "Some words of the message body, repeated to make it four kilobytes long.\r\n",
        );
    }
    text.into_bytes()
}
