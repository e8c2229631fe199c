//! Shared test fixtures: a fresh tree per test, and the real binaries.

use std::io::{BufRead, BufReader, Write};
use std::net::SocketAddr;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Output, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// A temporary postroom tree made by `postroom init`, removed on drop.
pub struct Tree {
    pub dir: tempfile::TempDir,
    pub config: PathBuf,
}

impl Tree {
    /// `postroom init` with the domain example.test.
    pub fn new() -> Tree {
        let dir = tempfile::tempdir().expect("temp dir");
        let root = dir.path().join("root");
        let out = Command::new(bin("postroom"))
            .args(["init", root.to_str().unwrap(), "--domain", "example.test"])
            .output()
            .expect("run postroom init");
        assert!(
            out.status.success(),
            "init failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        Tree {
            config: root.join("postroom.toml"),
            dir,
        }
    }

    pub fn root(&self) -> PathBuf {
        self.dir.path().join("root")
    }

    /// Runs `postroom --config C ARGS`.
    pub fn postroom(&self, args: &[&str]) -> Output {
        Command::new(bin("postroom"))
            .arg("--config")
            .arg(&self.config)
            .args(args)
            .output()
            .expect("run postroom")
    }

    /// Adds a user with a quick {PLAIN} password (hashing is tested elsewhere).
    pub fn add_user(&self, address: &str) {
        let out = self.postroom(&["user", "add", address, "--password", "{PLAIN}secret"]);
        assert!(
            out.status.success(),
            "user add: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }

    /// Runs `mail-inject --config C ARGS` with `message` on stdin.
    pub fn inject(&self, args: &[&str], message: &[u8]) -> Output {
        let mut child = self.inject_command(args).spawn().expect("run mail-inject");
        // The injector may refuse before reading (bad config): not our error.
        let _ = child.stdin.take().unwrap().write_all(message);
        child.wait_with_output().unwrap()
    }

    pub fn inject_command(&self, args: &[&str]) -> Command {
        let mut cmd = Command::new(bin("mail-inject"));
        cmd.arg("--config")
            .arg(&self.config)
            .args(args)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        cmd
    }

    /// The maildir of a user of example.test.
    pub fn maildir(&self, user: &str) -> PathBuf {
        self.root().join("mail/example.test").join(user)
    }

    pub fn load_config(&self) -> postroom::config::Config {
        postroom::config::Config::load(&self.config).expect("config loads")
    }

    pub fn queue(&self) -> postroom::store::queue::Queue {
        postroom::store::queue::Queue::from_config(&self.load_config())
    }
}

/// A client's connection to a server on loopback: a buffered reader and a
/// writer over one socket, reads waiting at most 20 seconds.
pub fn connect_loopback(port: u16) -> (BufReader<std::net::TcpStream>, std::net::TcpStream) {
    let stream = std::net::TcpStream::connect(("127.0.0.1", port)).unwrap();
    stream
        .set_read_timeout(Some(Duration::from_secs(20)))
        .unwrap();
    (BufReader::new(stream.try_clone().unwrap()), stream)
}

/// Sets keys of one section of the tree's config (replacing any the
/// section already has), e.g. `("limits", &[("idle_timeout", "\"1s\"")])`.
pub fn configure(tree: &Tree, section: &str, keys: &[(&str, &str)]) {
    let text = std::fs::read_to_string(&tree.config).unwrap();
    let header = format!("[{section}]");
    let mut out = String::new();
    let mut inside = false;
    let mut found = false;
    for line in text.lines() {
        if line.starts_with('[') {
            inside = line.trim() == header;
            out.push_str(line);
            out.push('\n');
            if inside {
                found = true;
                for (k, v) in keys {
                    out.push_str(&format!("{k} = {v}\n"));
                }
            }
            continue;
        }
        let key = line.split('=').next().unwrap_or("").trim();
        if inside && keys.iter().any(|(k, _)| *k == key) {
            continue;
        }
        out.push_str(line);
        out.push('\n');
    }
    if !found {
        out.push_str(&format!("\n{header}\n"));
        for (k, v) in keys {
            out.push_str(&format!("{k} = {v}\n"));
        }
    }
    std::fs::write(&tree.config, out).unwrap();
}

/// The path of a binary of this package, built by cargo for the tests.
/// A server as inetd starts it for one connection from loopback: its
/// stdin and stdout piped, stderr dropped. (A pipe names no peer, and
/// without `REMOTE_ADDR` it would not count as loopback for
/// auth.plaintext.)
pub fn spawn_inetd(program: &str, tree: &Tree) -> Child {
    Command::new(bin(program))
        .arg("--config")
        .arg(&tree.config)
        .env("REMOTE_ADDR", "127.0.0.1")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("start the server")
}

/// A program of this build, or of `$POSTROOM_TEST_PROGRAMS` when that
/// folder holds it: CI runs the tests of smtp-recv, mail-inject, mailsort
/// and vacation again against their static build
/// (contrib/install/build-static), which is what the .deb ships.
pub fn bin(name: &str) -> PathBuf {
    if let Some(dir) = std::env::var_os("POSTROOM_TEST_PROGRAMS") {
        let program = Path::new(&dir).join(name);
        if program.exists() {
            return program;
        }
    }
    match name {
        "postroom" => PathBuf::from(env!("CARGO_BIN_EXE_postroom")),
        "mail-inject" => PathBuf::from(env!("CARGO_BIN_EXE_mail-inject")),
        "smtp-recv" => PathBuf::from(env!("CARGO_BIN_EXE_smtp-recv")),
        "smtp-send" => PathBuf::from(env!("CARGO_BIN_EXE_smtp-send")),
        "vacation" => PathBuf::from(env!("CARGO_BIN_EXE_vacation")),
        "list-expand" => PathBuf::from(env!("CARGO_BIN_EXE_list-expand")),
        "mailsort" => PathBuf::from(env!("CARGO_BIN_EXE_mailsort")),
        "pop3-serve" => PathBuf::from(env!("CARGO_BIN_EXE_pop3-serve")),
        "imap-serve" => PathBuf::from(env!("CARGO_BIN_EXE_imap-serve")),
        "sieve-serve" => PathBuf::from(env!("CARGO_BIN_EXE_sieve-serve")),
        other => Path::new(env!("CARGO_BIN_EXE_postroom")).with_file_name(other),
    }
}

/// Every message file in a maildir's new/ and cur/ (and folders' too).
pub fn maildir_files(maildir: &Path) -> Vec<PathBuf> {
    let mut files = Vec::new();
    let mut roots = vec![maildir.to_path_buf()];
    if let Ok(entries) = std::fs::read_dir(maildir) {
        roots.extend(entries.flatten().map(|e| e.path()).filter(|p| {
            p.file_name()
                .is_some_and(|n| n.to_string_lossy().starts_with('.'))
        }));
    }
    for root in roots {
        for sub in ["new", "cur"] {
            if let Ok(entries) = std::fs::read_dir(root.join(sub)) {
                files.extend(entries.flatten().map(|e| e.path()));
            }
        }
    }
    files.sort();
    files
}

/// Runs `command` with `input` on its stdin, its output kept.
pub fn run_with(mut command: Command, input: &[u8]) -> Output {
    let mut child = command
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("start the command");
    // A program may refuse before it reads: not the test's error.
    let _ = child.stdin.take().expect("stdin is piped").write_all(input);
    child.wait_with_output().expect("wait for the command")
}

/// The text of every message in a maildir, in [`maildir_files`] order.
pub fn maildir_texts(maildir: &Path) -> Vec<String> {
    maildir_files(maildir)
        .iter()
        .map(|p| std::fs::read_to_string(p).unwrap())
        .collect()
}

pub fn stderr(out: &Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

pub fn stdout(out: &Output) -> String {
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// A program that listens on loopback (a postroom server, `postroom demo`,
/// `systemd-socket-activate`), started by [`Server::start_with`] and killed
/// on drop, with what it logs.
pub struct Server {
    pub child: Child,
    /// Its stderr, kept for the test to read and wait on.
    pub log: Log,
    /// The first plain and the first implicit-TLS port (0 when none).
    pub port: u16,
    pub tls_port: u16,
    /// The base port it was started with (see [`Server::start_with`]).
    pub base: u16,
}

impl Server {
    /// A standalone server (`smtp-recv`, `pop3-serve`, `imap-serve`) with
    /// the tree's config, a plain and an implicit-TLS listener on ports
    /// the kernel picks, and `extra` flags.
    pub fn start(tree: &Tree, binary: &str, extra: &[&str]) -> Server {
        Server::start_config(&tree.config, binary, extra)
    }

    /// [`Server::start`] with another config file.
    pub fn start_config(config: &Path, binary: &str, extra: &[&str]) -> Server {
        let listeners = 2 + extra
            .iter()
            .filter(|a| ["--listen", "--listen-tls"].contains(a))
            .count();
        Server::start_with(binary, listeners, |_| {
            let mut command = Command::new(bin(binary));
            command
                .arg("--config")
                .arg(config)
                .args(["--listen", "127.0.0.1:0", "--listen-tls", "127.0.0.1:0"])
                .args(extra);
            command
        })
    }

    /// Starts a program that listens, and learns where from its log: the
    /// one way the tests get a port, free of races. Nothing picks a port
    /// and lets it go for someone else to bind later.
    ///
    /// `command(base)` builds the command line. postroom's servers are given
    /// port 0 (`--listen 127.0.0.1:0`) and ignore `base`: the kernel picks a
    /// free port as the server binds it, and the server logs `listening on
    /// ADDR`. A program that cannot bind port 0 (`postroom demo`'s fixed
    /// ports, `systemd-socket-activate`, which logs `Listening on ADDR as
    /// FD.`) is given `base`, a port below the kernel's ephemeral range, so
    /// never one a port-0 bind holds; if something already listens there,
    /// it is started again with another. Either way a test uses a port
    /// only once the program itself has said that it holds it.
    ///
    /// Returns once `count` listening lines are logged.
    pub fn start_with(what: &str, count: usize, mut command: impl FnMut(u16) -> Command) -> Server {
        for _ in 0..10 {
            // Ports up to base + 2995 (the demo's highest) stay below 32768.
            let base = 10_000 + rand::random::<u16>() % 19_000;
            // A process group of its own, so that stopping it stops what
            // it started too (the demo's servers).
            let mut command = command(base);
            // Info unless the test asked for another level.
            if !command.get_envs().any(|(k, _)| k == "POSTROOM_LOG") {
                command.env("POSTROOM_LOG", "info");
            }
            let mut child = command
                .process_group(0)
                .stdin(Stdio::null())
                .stderr(Stdio::piped())
                .spawn()
                .unwrap_or_else(|e| panic!("start {what}: {e}"));
            let log = Log::capture(&mut child);
            let said = poll(START_LIMIT, || {
                let text = log.text();
                let addrs = listening_addrs(&text);
                if addrs.len() >= count {
                    Some(Ok(addrs))
                } else if text.to_ascii_lowercase().contains("already in use") {
                    Some(Err(text))
                } else if log.ended() {
                    panic!("{what} ended before it listened:\n{text}");
                } else {
                    None
                }
            })
            .unwrap_or_else(|| panic!("{what} did not listen in {START_LIMIT:?}:\n{}", log.text()));
            match said {
                Ok(addrs) => {
                    let first = |tls: bool| {
                        addrs
                            .iter()
                            .find(|(_, t)| *t == tls)
                            .map_or(0, |(a, _)| a.port())
                    };
                    return Server {
                        port: first(false),
                        tls_port: first(true),
                        child,
                        log,
                        base,
                    };
                }
                // A port of the base was taken: stop this one, try another.
                Err(_) => stop(&mut child),
            }
        }
        panic!("{what}: every base port tried was taken");
    }
}

impl Server {
    /// SIGTERM, as a service manager stops a server, and its exit status.
    pub fn terminate(&mut self) -> ExitStatus {
        let pid = nix::unistd::Pid::from_raw(self.child.id() as i32);
        let _ = nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGTERM);
        self.child.wait().unwrap()
    }
}

/// `postroom demo` with its sandbox in `root`, once its seven listeners are
/// up: each of its ports (SMTP 2525, POP3 2110, …) plus `base`. Its stdout,
/// where it prints the password, is piped; `--verbose` puts the servers'
/// log lines on its stderr, where they say which ports they hold.
pub fn start_demo(root: &Path) -> Server {
    Server::start_with("postroom demo", 7, |base| {
        let mut demo = Command::new(bin("postroom"));
        demo.arg("demo")
            .arg("--root")
            .arg(root)
            .args(["--port-offset", &base.to_string(), "--verbose"])
            .stdout(Stdio::piped());
        demo
    })
}

impl Drop for Server {
    fn drop(&mut self) {
        stop(&mut self.child);
    }
}

/// Kills a child started by [`Server::start_with`] and its process group.
fn stop(child: &mut Child) {
    let group = nix::unistd::Pid::from_raw(child.id() as i32);
    let _ = nix::sys::signal::killpg(group, nix::sys::signal::Signal::SIGKILL);
    let _ = child.kill();
    let _ = child.wait();
}

/// How long a program may take to start listening (a debug build on a
/// loaded machine).
const START_LIMIT: Duration = Duration::from_secs(20);

/// The addresses of the `listening on ADDR` lines of a log, each with
/// whether the line says implicit TLS.
fn listening_addrs(log: &str) -> Vec<(SocketAddr, bool)> {
    log.lines()
        .filter_map(|line| {
            let at = line.to_ascii_lowercase().find("listening on ")?;
            let word = line[at + "listening on ".len()..]
                .split_whitespace()
                .next()?;
            let addr = word.trim_end_matches(['.', ',']).parse().ok()?;
            Some((addr, line.contains("implicit TLS")))
        })
        .collect()
}

/// A child's stderr, read line by line on a thread and kept, so that a
/// test can wait for what the child logs instead of sleeping.
#[derive(Clone)]
pub struct Log(Arc<Mutex<(String, bool)>>);

impl Log {
    /// Takes `child`'s stderr, which must be `Stdio::piped()`.
    pub fn capture(child: &mut Child) -> Log {
        Log::read(child.stderr.take().expect("stderr is piped"))
    }

    /// Keeps what `from` says, line by line, on a thread (a child's
    /// stdout, when that is where it speaks).
    pub fn read(from: impl std::io::Read + Send + 'static) -> Log {
        let log = Log(Arc::new(Mutex::new((String::new(), false))));
        let kept = log.clone();
        std::thread::spawn(move || {
            let mut reader = BufReader::new(from);
            let mut line = String::new();
            while matches!(reader.read_line(&mut line), Ok(n) if n > 0) {
                kept.0.lock().unwrap().0.push_str(&line);
                line.clear();
            }
            kept.0.lock().unwrap().1 = true;
        });
        log
    }

    /// All it has logged so far.
    pub fn text(&self) -> String {
        self.0.lock().unwrap().0.clone()
    }

    /// Whether the child has closed its stderr (it has ended).
    pub fn ended(&self) -> bool {
        self.0.lock().unwrap().1
    }

    /// Waits for a line that holds every one of `words` and returns it.
    pub fn wait_for(&self, words: &[&str], limit: Duration) -> String {
        poll(limit, || {
            self.text()
                .lines()
                .find(|line| words.iter().all(|w| line.contains(w)))
                .map(str::to_string)
        })
        .unwrap_or_else(|| panic!("no line with {words:?} in {limit:?}:\n{}", self.text()))
    }
}

/// Waits until `check` gives something and returns it, trying every 10 ms
/// for at most `limit`, and fails the test if it never does. The one way
/// the tests wait for a condition: a sleep in a test is the point of the
/// test, never a guess at how long something takes.
pub fn wait_until<T>(what: &str, limit: Duration, check: impl FnMut() -> Option<T>) -> T {
    poll(limit, check).unwrap_or_else(|| panic!("waited {limit:?} for {what} in vain"))
}

/// [`wait_until`] that gives `None` at the limit, for callers that say more.
fn poll<T>(limit: Duration, mut check: impl FnMut() -> Option<T>) -> Option<T> {
    let deadline = Instant::now() + limit;
    loop {
        if let Some(done) = check() {
            return Some(done);
        }
        if Instant::now() >= deadline {
            return None;
        }
        // On purpose: the pause between two looks.
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// The rules above, kept: no test picks a port (from the process id, or by
/// binding one and letting it go), and every sleep in a test says that it
/// is on purpose, in a comment on its line or just above.
#[test]
fn tests_learn_ports_from_listeners_and_sleep_only_on_purpose() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/integration");
    // Spelt in pieces, so this file does not find them in itself.
    let port_pickers = [["free", "_port("].concat(), ["process::", "id()"].concat()];
    let sleep = ["sleep", "("].concat();
    let mut found = Vec::new();
    for entry in std::fs::read_dir(&dir).unwrap() {
        let path = entry.unwrap().path();
        if path.extension().is_none_or(|e| e != "rs") {
            continue;
        }
        let text = std::fs::read_to_string(&path).unwrap();
        let lines: Vec<&str> = text.lines().collect();
        for (i, line) in lines.iter().enumerate() {
            let code = line.trim_start();
            if code.starts_with("//") {
                continue;
            }
            let at = format!("{}:{}: {code}", path.display(), i + 1);
            if port_pickers.iter().any(|p| line.contains(p.as_str())) {
                found.push(format!("{at} (a port picked, not learnt)"));
            }
            let said = lines[i.saturating_sub(6)..=i]
                .iter()
                .any(|l| l.to_ascii_lowercase().contains("on purpose"));
            if line.contains(&sleep) && !said {
                found.push(format!("{at} (wait for the thing: util::wait_until)"));
            }
        }
    }
    assert!(found.is_empty(), "{}", found.join("\n"));
}

/// One pass of the queue runner (`smtp-send --once`), which must succeed.
pub fn run_queue(tree: &Tree) {
    let out = Command::new(bin("smtp-send"))
        .arg("--config")
        .arg(&tree.config)
        .arg("--once")
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", stderr(&out));
}

/// What a reader sees of an HTML page: its DOM as headless Chromium
/// renders it.
pub fn rendered(page: &Path) -> String {
    chromium_dom(&format!("file://{}", page.display()), &[])
}

/// The DOM headless Chromium ends with at `url`, with `extra` flags (e.g.
/// `--virtual-time-budget=MS` to let a page's loads and scripts finish).
pub fn chromium_dom(url: &str, extra: &[&str]) -> String {
    let out = Command::new("chromium")
        .args([
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--no-first-run",
            "--dump-dom",
        ])
        .args(extra)
        .arg(url)
        .output()
        .unwrap_or_else(|e| panic!("chromium is not installed ({e}); .ci/run installs it"));
    assert!(out.status.success(), "{}", stderr(&out));
    stdout(&out)
}
