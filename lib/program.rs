//! Running an outside program the administrator configured: a `|command`
//! alias or `.forward` pipe, an smtp-recv stage hook. One way for all of
//! them, so every caller gets the same guarantees:
//!
//! - `/bin/sh -c COMMAND`, with the environment the caller names and the
//!   input fed on stdin from a thread, so a program that never reads, or
//!   writes a lot before reading, cannot deadlock us;
//! - at most `output_max` bytes of its output kept (the rest is read and
//!   dropped, so the program never blocks on a full pipe);
//! - the program runs in a process group of its own, and when the time is
//!   up the whole group is killed: a shell that forked a grandchild which
//!   keeps the output pipe open cannot make the caller wait past its
//!   timeout. The same holds after a normal exit: leftovers that still
//!   hold the pipe at the deadline are killed with the group.
//!
//! Nothing here waits by polling: the wait and each pipe have a thread, and
//! the caller waits on a channel with a deadline.

use std::io::{Read, Write};
use std::os::unix::process::{CommandExt, ExitStatusExt};
use std::process::{Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use nix::sys::signal::{Signal, killpg};
use nix::unistd::Pid;

/// What to run and how.
pub struct Program {
    /// A shell command line, run by `/bin/sh -c`.
    pub command: String,
    /// Variables added to the environment.
    pub env: Vec<(String, String)>,
    /// Fed on stdin; `None` gives the program `/dev/null`.
    pub input: Option<Box<dyn Read + Send>>,
    /// Keep stderr in the output after stdout (delivery programs explain
    /// themselves on either; hooks speak on stdout only).
    pub keep_stderr: bool,
    /// Bytes of output kept.
    pub output_max: usize,
    /// When the whole process group is killed.
    pub timeout: Duration,
}

/// How a program ended.
#[derive(Debug, PartialEq, Eq)]
pub enum Ended {
    /// It exited with this code.
    Exited(i32),
    /// A signal killed it (not our timeout).
    Killed,
    /// It ran past the timeout; its process group was killed.
    TimedOut,
}

/// The end and what it said.
#[derive(Debug)]
pub struct Ran {
    pub ended: Ended,
    /// Its stdout (then stderr, if kept), cut at `output_max`.
    pub output: Vec<u8>,
}

impl Ran {
    /// The first non-empty output line, trimmed: the text a delivery
    /// program or hook gives as its reason.
    pub fn first_line(&self) -> Option<String> {
        String::from_utf8_lossy(&self.output)
            .lines()
            .map(str::trim)
            .find(|l| !l.is_empty())
            .map(str::to_string)
    }
}

impl Program {
    /// Runs the program to its end or its timeout. Fails only when it
    /// cannot be started at all.
    pub fn run(self) -> std::io::Result<Ran> {
        let mut child = Command::new("/bin/sh")
            .arg("-c")
            .arg(&self.command)
            .envs(self.env.iter().map(|(k, v)| (k, v)))
            .stdin(if self.input.is_some() {
                Stdio::piped()
            } else {
                Stdio::null()
            })
            .stdout(Stdio::piped())
            .stderr(if self.keep_stderr {
                Stdio::piped()
            } else {
                Stdio::null()
            })
            .process_group(0)
            .spawn()?;
        // The group id is the child's pid (process_group(0)).
        let group = Pid::from_raw(child.id() as i32);
        let deadline = Instant::now() + self.timeout;

        if let (Some(mut source), Some(mut pipe)) = (self.input, child.stdin.take()) {
            std::thread::spawn(move || {
                let mut buf = vec![0u8; 64 * 1024];
                loop {
                    let n = match source.read(&mut buf) {
                        Ok(0) | Err(_) => break,
                        Ok(n) => n,
                    };
                    if pipe.write_all(&buf[..n]).is_err() {
                        break; // the program decided without reading it all
                    }
                }
            });
        }
        let (out_tx, out_rx) = mpsc::channel();
        let mut pipes = 0;
        if let Some(stdout) = child.stdout.take() {
            drain(0, stdout, self.output_max, out_tx.clone());
            pipes += 1;
        }
        if let Some(stderr) = child.stderr.take() {
            drain(1, stderr, self.output_max, out_tx.clone());
            pipes += 1;
        }
        drop(out_tx);
        let (wait_tx, wait_rx) = mpsc::channel();
        std::thread::spawn(move || {
            let _ = wait_tx.send(child.wait());
        });

        let kill_group = || {
            let _ = killpg(group, Signal::SIGKILL);
        };
        let ended = match wait_rx.recv_timeout(deadline.saturating_duration_since(Instant::now())) {
            Ok(Ok(status)) => match (status.code(), status.signal()) {
                (Some(code), _) => Ended::Exited(code),
                _ => Ended::Killed,
            },
            Ok(Err(_)) => Ended::Killed,
            Err(_) => {
                kill_group();
                // Reap it, so no zombie is left; the kill makes this quick.
                let _ = wait_rx.recv_timeout(Duration::from_secs(5));
                Ended::TimedOut
            }
        };
        // Collect the pipes. A grandchild may still hold them open: wait
        // until the deadline, then kill the group so they close.
        let mut outputs: [Vec<u8>; 2] = [Vec::new(), Vec::new()];
        let mut killed = ended == Ended::TimedOut;
        while pipes > 0 {
            let left = deadline.saturating_duration_since(Instant::now());
            match out_rx.recv_timeout(if killed { Duration::from_secs(5) } else { left }) {
                Ok((which, bytes)) => {
                    outputs[which] = bytes;
                    pipes -= 1;
                }
                Err(mpsc::RecvTimeoutError::Timeout) if !killed => {
                    // The program itself ended in time, so its exit stands;
                    // only what it left behind is killed.
                    kill_group();
                    killed = true;
                }
                Err(_) => break,
            }
        }
        let [mut output, stderr] = outputs;
        let room = self.output_max.saturating_sub(output.len());
        output.extend_from_slice(&stderr[..stderr.len().min(room)]);
        Ok(Ran { ended, output })
    }
}

/// Reads a pipe to its end on a thread, keeping at most `max` bytes, and
/// sends what it kept, tagged with `which`.
fn drain(
    which: usize,
    mut pipe: impl Read + Send + 'static,
    max: usize,
    done: mpsc::Sender<(usize, Vec<u8>)>,
) {
    std::thread::spawn(move || {
        let mut kept = Vec::new();
        let mut buf = [0u8; 4096];
        while let Ok(n) = pipe.read(&mut buf) {
            if n == 0 {
                break;
            }
            let room = max.saturating_sub(kept.len());
            kept.extend_from_slice(&buf[..n.min(room)]);
        }
        let _ = done.send((which, kept));
    });
}

#[cfg(test)]
mod tests {
    use super::*;

    fn run(command: &str, input: &[u8], timeout: Duration) -> Ran {
        Program {
            command: command.to_string(),
            env: vec![("GREETING".to_string(), "hello".to_string())],
            input: Some(Box::new(std::io::Cursor::new(input.to_vec()))),
            keep_stderr: true,
            output_max: 64,
            timeout,
        }
        .run()
        .expect("sh runs")
    }

    #[test]
    fn exit_codes_output_and_environment() {
        let t = Duration::from_secs(10);
        let ran = run("cat; echo \"$GREETING\" >&2; exit 3", b"in\n", t);
        assert_eq!(ran.ended, Ended::Exited(3));
        assert_eq!(ran.output, b"in\nhello\n");
        assert_eq!(ran.first_line().as_deref(), Some("in"));
        assert_eq!(run("kill -9 $$", b"", t).ended, Ended::Killed);
    }

    #[test]
    fn output_is_cut_and_a_program_that_never_reads_does_not_block() {
        let big = vec![b'x'; 1 << 20];
        let ran = run(
            "head -c 100000 /dev/zero; exit 0",
            &big,
            Duration::from_secs(10),
        );
        assert_eq!(ran.ended, Ended::Exited(0));
        assert_eq!(ran.output.len(), 64);
    }

    #[test]
    fn a_grandchild_holding_the_pipe_is_killed_at_the_timeout() {
        // The shell exits at once, but the backgrounded sleep keeps stdout
        // open: the old delivery code waited for it for ever.
        let started = Instant::now();
        let ran = run("sleep 30 & exit 0", b"", Duration::from_millis(300));
        assert!(
            started.elapsed() < Duration::from_secs(10),
            "{:?}",
            started.elapsed()
        );
        assert_eq!(ran.ended, Ended::Exited(0), "its own exit code stands");
        let started = Instant::now();
        let ran = run("sleep 30; exit 0", b"", Duration::from_millis(300));
        assert_eq!(ran.ended, Ended::TimedOut);
        assert!(started.elapsed() < Duration::from_secs(10));
    }
}
