//! Shared test fixtures: a fresh tree per test, and the real binaries.

use std::io::Write;
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
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

/// The path of a binary of this package, built by cargo for the tests.
pub fn bin(name: &str) -> PathBuf {
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

pub fn stderr(out: &Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

pub fn stdout(out: &Output) -> String {
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// A standalone server (`smtp-recv`, `pop3-serve`, `imap-serve`) on two
/// free loopback ports, `port` plain and `tls_port` implicit TLS, started
/// with the tree's config and `extra` flags, and killed on drop.
pub struct Server {
    pub child: Child,
    pub port: u16,
    pub tls_port: u16,
}

impl Server {
    pub fn start(tree: &Tree, binary: &str, extra: &[&str]) -> Server {
        let (port, tls_port) = (free_port(), free_port());
        let child = Command::new(bin(binary))
            .arg("--config")
            .arg(&tree.config)
            .args(["--listen", &format!("127.0.0.1:{port}")])
            .args(["--listen-tls", &format!("127.0.0.1:{tls_port}")])
            .args(extra)
            .stderr(Stdio::null())
            .spawn()
            .unwrap_or_else(|e| panic!("start {binary}: {e}"));
        let deadline = Instant::now() + Duration::from_secs(10);
        while TcpStream::connect(("127.0.0.1", port)).is_err() {
            assert!(
                Instant::now() < deadline,
                "{binary} did not start listening"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
        Server {
            child,
            port,
            tls_port,
        }
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A loopback port free at the moment of asking.
pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}
