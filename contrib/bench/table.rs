//! `postroom-bench table`: every figure of issue 18's table beside its
//! goal, in one run, on one filesystem. mailsort, mail-inject and
//! smtp-recv are measured as the glibc build beside this program and, when
//! it is there, as their static build (contrib/install/build-static,
//! postroom-install(7)), which is what the .deb and the install script
//! ship. The figures:
//!
//! - mailsort, one process per message, 10 header rules into Maildir++
//!   folders, against procmail with the same 10 recipes, and against this
//!   disk's durable-write floor (the raw tmp → fsync → rename → fsync loop)
//!   plus the start of a process (`/bin/true`);
//! - mail-inject → maildir with 1 and 8 injectors against the raw loop,
//!   and against the ceiling of a process per message built the way
//!   postroom's are: the raw loop with a process spawned before each write
//!   (`/bin/true` for the glibc build, the static build's `mailsort
//!   --version` for it). A smaller program starts faster still: a static C
//!   program that returns at once took 0.03 ms of CPU and 5 page faults,
//!   an empty static Rust one 0.05 ms and 11, `mailsort --version` 0.23 ms
//!   and 53;
//! - smtp-recv under inetd (stdin/stdout), spawn to greeting, against a
//!   bare `/bin/true` spawned the same way, with users and aliases files of
//!   10 lines and of 100,000;
//! - the memory of idle IMAP sessions, as `postroom-bench imap` measures
//!   it (run as a child; its line is repeated here).

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use crate::server::{first_line, inetd_greeting, ms};

/// The rates are measured in this many rounds, each contender in turn
/// with a share of the messages: this disk's speed changed up to fourfold
/// within one run, and measured one after the other, a slow spell fell on
/// one contender only (mailsort at 0.61x procmail in a run whose next gave
/// 1.87x).
const ROUNDS: usize = 10;

/// The 10 header rules, as Sieve and as procmail recipes: (header, text,
/// folder). Every one files into its folder and stops, as a procmail
/// recipe without the `c` flag does.
const RULES: [(&str, &str, &str); 10] = [
    ("List-Id", "rust-users", "rust"),
    ("List-Id", "postgres", "pg"),
    ("X-Spam-Score", "9", "junk"),
    ("From", "bank.example", "bank"),
    ("Subject", "JIRA-", "tickets"),
    ("List-Unsubscribe", "mailto", "news"),
    ("From", "boss@work.example", "boss"),
    ("From", "-bounces", "bounces"),
    ("Subject", "lottery", "lottery"),
    ("X-Mailer", "Pine", "pine"),
];

pub struct Options {
    /// Messages per mailsort/procmail/inject measurement.
    pub messages: usize,
    /// Spawns per greeting median.
    pub runs: usize,
    /// Users and aliases in the big tree of the greeting figure.
    pub big: usize,
    /// Arguments of the IMAP figure (messages per folder, idle sessions);
    /// `None` skips it.
    pub imap: Option<(usize, usize)>,
    /// Where the static build of the per-message programs is.
    pub static_dir: PathBuf,
}

/// Where contrib/install/build-static puts its programs.
pub const STATIC_BUILD: &str = concat!(
    env!("CARGO_MANIFEST_DIR"),
    "/target/static/x86_64-unknown-linux-musl/static"
);

/// The builds of a program to measure: the glibc one beside this program,
/// then the static one if `static_dir` holds it.
pub fn builds(program: &str, static_dir: &Path) -> anyhow::Result<Vec<(&'static str, PathBuf)>> {
    let mut builds = vec![(
        "glibc build",
        std::env::current_exe()?.with_file_name(program),
    )];
    let built = static_dir.join(program);
    if built.is_file() {
        builds.push(("static build", built));
    }
    Ok(builds)
}

pub fn run(base: &Path, options: &Options) -> anyhow::Result<()> {
    println!(
        "postroom-bench table: issue 18's figures, {} messages per rate, in {}",
        options.messages,
        base.display()
    );
    let true_start = spawn_time(Path::new("/bin/true"), options.runs.max(20))?;
    let mailsorts = builds("mailsort", &options.static_dir)?;
    if mailsorts.len() == 1 {
        println!(
            "(no static build in {}: contrib/install/build-static, or give --static-dir)",
            options.static_dir.display()
        );
    }
    mailsort_row(base, options.messages, true_start, &mailsorts)?;
    inject_row(
        base,
        options.messages,
        &builds("mail-inject", &options.static_dir)?,
    )?;
    greeting_row(
        base,
        options.runs,
        options.big,
        &builds("smtp-recv", &options.static_dir)?,
    )?;
    match options.imap {
        Some((messages, idle)) => imap_row(base, messages, idle)?,
        None => println!("private memory per idle IMAP session: skipped (--imap-idle 0)"),
    }
    Ok(())
}

/// The mailsort figure (also printed by `postroom-bench sieve`), for each
/// of `builds`.
pub fn mailsort_row(
    base: &Path,
    messages: usize,
    true_start: Duration,
    builds: &[(&str, PathBuf)],
) -> anyhow::Result<()> {
    let samples: Vec<Vec<u8>> = (0..messages).map(crate::sieve::sample).collect();
    let mut script = String::from("require \"fileinto\";\n");
    for (header, text, folder) in RULES {
        script.push_str(&format!(
            "if header :contains \"{header}\" \"{text}\" {{ fileinto \"{folder}\"; stop; }}\n"
        ));
    }
    // Every program's tree is made first; then they take turns (see
    // ROUNDS).
    let mut trees = Vec::new();
    for (n, (label, mailsort)) in builds.iter().enumerate() {
        let dir = base.join(format!("mailsort-{n}"));
        let config = crate::bench_tree(&dir)?;
        let inbox = dir.join("mail/bench.test/sink");
        make_folders(&inbox)?;
        std::fs::create_dir_all(inbox.join("sieve"))?;
        std::fs::write(inbox.join("sieve/active.sieve"), &script)?;
        trees.push((*label, mailsort, config, inbox));
    }
    let procmail = match which("procmail") {
        Some(procmail) => {
            let maildir = base.join("procmail/Maildir");
            std::fs::create_dir_all(&maildir)?;
            make_folders(&maildir)?;
            for sub in ["cur", "new", "tmp"] {
                std::fs::create_dir_all(maildir.join(sub))?;
            }
            let rc = base.join("procmail/procmailrc");
            let mut text = format!("MAILDIR={}\nDEFAULT=$MAILDIR/\n", maildir.display());
            for (header, needle, folder) in RULES {
                text.push_str(&format!(
                    ":0\n* ^{header}:.*{}\n.{folder}/\n",
                    needle.replace('-', "\\-")
                ));
            }
            std::fs::write(&rc, text)?;
            Some((procmail, rc, maildir))
        }
        None => None,
    };

    let mut ours_total = vec![Duration::ZERO; trees.len()];
    let mut theirs_total = Duration::ZERO;
    let mut raw_total = 0.0;
    for (round, chunk) in samples.chunks(messages.div_ceil(ROUNDS)).enumerate() {
        for ((label, mailsort, config, _), total) in trees.iter().zip(&mut ours_total) {
            *total += per_message(chunk, || {
                let mut command = Command::new(mailsort);
                command.arg("--config").arg(config).args([
                    "--user",
                    "sink@bench.test",
                    "--sender",
                    "someone@far.example",
                ]);
                command
            })
            .map_err(|e| e.context(format!("mailsort ({label})")))?
                * chunk.len() as u32;
        }
        if let Some((procmail, rc, _)) = &procmail {
            theirs_total += per_message(chunk, || {
                let mut command = Command::new(procmail);
                command.arg("-m").arg(rc);
                command
            })? * chunk.len() as u32;
        }
        let dir = base.join(format!("raw-mailsort-{round}"));
        raw_total += chunk.len() as f64 / crate::raw_rate(&dir, chunk.len(), 1)?;
    }
    let mut ours = Vec::new();
    for ((label, _, _, inbox), total) in trees.iter().zip(ours_total) {
        let delivered = count_messages(inbox)?;
        anyhow::ensure!(
            delivered == messages,
            "mailsort ({label}) delivered {delivered} of {messages}"
        );
        let filed = delivered - std::fs::read_dir(inbox.join("new"))?.count();
        ours.push((label, total / messages as u32, filed));
    }
    let raw = messages as f64 / raw_total;
    let floor = Duration::from_secs_f64(1.0 / raw) + true_start;
    let procmail = match procmail {
        Some((_, _, maildir)) => {
            let got = count_messages(&maildir)?;
            anyhow::ensure!(got == messages, "procmail delivered {got} of {messages}");
            Some(theirs_total / messages as u32)
        }
        None => None,
    };
    println!("mailsort, one process per message, 10 header rules -> Maildir++ folders:");
    for (label, time, filed) in ours {
        let against_procmail = match procmail {
            Some(theirs) => format!(
                "mailsort/procmail {:.2}x",
                theirs.as_secs_f64() / time.as_secs_f64()
            ),
            None => "procmail not installed (apt-get install procmail)".into(),
        };
        println!(
            "  {label}: {:.0} msg/s ({:.2} ms each; {filed} filed into folders); {against_procmail}   [goal >= 1.5x]; {:+.0}% above the floor   [goal <= +30%]",
            1.0 / time.as_secs_f64(),
            ms(time),
            100.0 * (time.as_secs_f64() / floor.as_secs_f64() - 1.0)
        );
    }
    if let Some(theirs) = procmail {
        println!(
            "  procmail, same rules: {:.0} msg/s ({:.2} ms)",
            1.0 / theirs.as_secs_f64(),
            ms(theirs)
        );
    }
    println!(
        "  floor: durable write {:.2} ms + process start (/bin/true) {:.2} ms = {:.2} ms",
        1000.0 / raw,
        ms(true_start),
        ms(floor)
    );
    Ok(())
}

/// The Maildir++ folders of [`RULES`], made beforehand for both programs.
fn make_folders(maildir: &Path) -> anyhow::Result<()> {
    for (_, _, folder) in RULES {
        let folder = maildir.join(format!(".{folder}"));
        for sub in ["cur", "new", "tmp"] {
            std::fs::create_dir_all(folder.join(sub))?;
        }
        std::fs::write(folder.join("maildirfolder"), "")?;
    }
    Ok(())
}

/// Messages in `new/` of a maildir and of its folders.
fn count_messages(maildir: &Path) -> anyhow::Result<usize> {
    let mut count = std::fs::read_dir(maildir.join("new"))?.count();
    for entry in std::fs::read_dir(maildir)? {
        let path = entry?.path();
        if path
            .file_name()
            .is_some_and(|n| n.as_encoded_bytes().starts_with(b"."))
        {
            count += std::fs::read_dir(path.join("new"))?.count();
        }
    }
    Ok(count)
}

/// One process per message, in turn: the mean time per message.
fn per_message(samples: &[Vec<u8>], command: impl Fn() -> Command) -> anyhow::Result<Duration> {
    let start = Instant::now();
    for raw in samples {
        let mut child = command()
            .stdin(Stdio::piped())
            .stdout(Stdio::null())
            .spawn()?;
        if let Some(mut stdin) = child.stdin.take() {
            stdin.write_all(raw)?;
        }
        let status = child.wait()?;
        anyhow::ensure!(
            status.success(),
            "{:?} failed: {status}",
            command().get_program()
        );
    }
    Ok(start.elapsed() / samples.len() as u32)
}

/// mail-inject against the raw loop, and against the ceiling of a process
/// per message: the raw loop with a process spawned before each write,
/// `/bin/true` for a glibc program and, with a static build, that build's
/// `mailsort --version` (a static start of the same size that does
/// nothing).
fn inject_row(base: &Path, messages: usize, builds: &[(&str, PathBuf)]) -> anyhow::Result<()> {
    for injectors in [1, 8] {
        // Each round, a share of the messages through the raw loop, then
        // each build's ceiling and mail-inject (see ROUNDS); each figure
        // is its messages over the time its rounds took.
        let per_round = (messages / ROUNDS / injectors).max(1) * injectors;
        let mut raw_time = 0.0;
        let mut ceiling_time = vec![0.0; builds.len()];
        let mut inject_time = vec![0.0; builds.len()];
        for round in 0..ROUNDS {
            let dir = |what: &str| base.join(format!("{what}{injectors}-round{round}"));
            raw_time +=
                per_round as f64 / crate::raw_rate(&dir("raw-inject"), per_round, injectors)?;
            for (n, (_, inject)) in builds.iter().enumerate() {
                let (program, args, _) = ceiling_program(n, inject);
                ceiling_time[n] += per_round as f64
                    / crate::raw_rate_after_spawning(
                        &dir(&format!("ceiling-inject-{n}-")),
                        per_round,
                        injectors,
                        &program,
                        args,
                    )?;
                inject_time[n] += per_round as f64
                    / crate::inject_rate(
                        inject,
                        &dir(&format!("inject-{n}-")),
                        per_round,
                        injectors,
                        false,
                    )?;
            }
        }
        let total = (per_round * ROUNDS) as f64;
        let raw = total / raw_time;
        println!(
            "mail-inject -> maildir, {injectors} injector(s); raw loop with {injectors} writer(s): {raw:.0} msg/s"
        );
        for (n, (label, inject)) in builds.iter().enumerate() {
            let (ceiling, rate) = (total / ceiling_time[n], total / inject_time[n]);
            let (_, _, spawned) = ceiling_program(n, inject);
            println!(
                "  {label}: {rate:.0} msg/s; {:.0}% of raw   [goal >= 50% with 8]; ceiling ({spawned} then the raw write) {ceiling:.0} msg/s, {:.0}% of raw; mail-inject {:.0}% of it",
                100.0 * rate / raw,
                100.0 * ceiling / raw,
                100.0 * rate / ceiling
            );
        }
    }
    Ok(())
}

/// What the ceiling spawns before each raw write: `/bin/true` for the
/// glibc build (which comes first, see `builds`), the static build's
/// `mailsort --version` for it; and how the table names it.
fn ceiling_program(n: usize, inject: &Path) -> (PathBuf, &'static [&'static str], &'static str) {
    match n {
        0 => ("/bin/true".into(), &[], "/bin/true"),
        _ => (
            inject.with_file_name("mailsort"),
            &["--version"],
            "mailsort --version",
        ),
    }
}

/// The smtp-recv start figure, for each of `builds`, with both directory
/// sizes.
fn greeting_row(
    base: &Path,
    runs: usize,
    big: usize,
    builds: &[(&str, PathBuf)],
) -> anyhow::Result<()> {
    let bare = spawn_time(Path::new("/bin/true"), runs)?;
    println!(
        "smtp-recv under inetd, connect -> greeting (/bin/true spawned the same way: {:.2} ms):",
        ms(bare)
    );
    // Named small and big, not by size: `--big 10` must not reuse a tree.
    for (tree, lines) in [("small", 10), ("big", big)] {
        let size = format!("{lines}-line");
        let dir = base.join(format!("greeting-{tree}"));
        let config = crate::bench_tree(&dir)?;
        write_directory(&dir, lines)?;
        for (label, recv) in builds {
            // The first start after the files changed builds their indexes.
            inetd_greeting(recv, &config, "220", b"QUIT\r\n", 1)?;
            let (median, _) = inetd_greeting(recv, &config, "220", b"QUIT\r\n", runs)?;
            println!(
                "  {label}, {size} users and aliases: median {:.2} ms; above /bin/true {:.2} ms   [goal < 2 ms]",
                ms(median),
                ms(median.saturating_sub(bare))
            );
        }
    }
    Ok(())
}

/// Users file and aliases file of `lines` entries each (the bench user
/// kept).
fn write_directory(dir: &Path, lines: usize) -> anyhow::Result<()> {
    let mut users = String::from("sink@bench.test:{PLAIN}x\n");
    let mut aliases = String::new();
    for i in 0..lines.saturating_sub(1) {
        users.push_str(&format!("user{i}@bench.test:{{PLAIN}}x\n"));
    }
    for i in 0..lines {
        aliases.push_str(&format!("alias{i}@bench.test: user{i}\n"));
    }
    std::fs::write(dir.join("users"), users)?;
    std::fs::write(dir.join("aliases"), aliases)?;
    Ok(())
}

/// Spawn of `binary` with pipes, as [`inetd_greeting`] spawns a server, to
/// its end: the median of `runs`.
pub fn spawn_time(binary: &Path, runs: usize) -> anyhow::Result<Duration> {
    let mut times = Vec::with_capacity(runs);
    for _ in 0..runs {
        times.push(first_line(Command::new(binary), b"")?.0);
    }
    times.sort();
    Ok(times[runs / 2])
}

fn imap_row(base: &Path, messages: usize, idle: usize) -> anyhow::Result<()> {
    let out = Command::new(std::env::current_exe()?)
        .arg("--dir")
        .arg(base.join("imap-run"))
        .args([
            "imap",
            "--messages",
            &messages.to_string(),
            "--idle",
            &idle.to_string(),
            "--rounds",
            "1",
        ])
        .stderr(Stdio::inherit())
        .output()?;
    let text = String::from_utf8_lossy(&out.stdout);
    match text.lines().find(|l| l.contains("sessions in IDLE")) {
        Some(line) => println!(
            "private memory per idle IMAP session (postroom-bench imap --messages {messages} --idle {idle}): {line}   [goal < 50 KB per session, 10,000 in < 500 MB]"
        ),
        None => println!(
            "private memory per idle IMAP session: postroom-bench imap gave no figure ({})",
            out.status
        ),
    }
    Ok(())
}

fn which(name: &str) -> Option<PathBuf> {
    std::env::var_os("PATH").and_then(|paths| {
        std::env::split_paths(&paths)
            .map(|dir| dir.join(name))
            .find(|path| path.is_file())
    })
}
