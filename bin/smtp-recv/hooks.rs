//! Per-stage hooks: the classic servers' "run a program at HELO, MAIL,
//! RCPT, DATA" (and here at connect too), for DNS blocklists, clamdscan,
//! spamc and site policy.
//!
//! Contract (`smtp-recv(8)`): `/bin/sh -c COMMAND` with the session in the
//! environment (`STAGE`, `REMOTE_IP`, `HELO`, `SENDER`, `RECIPIENT`,
//! `AUTH_USER`, `TLS`); the data hook gets the message on stdin. Exit 0
//! accepts, 75 defers (4xx), anything else refuses (5xx); the first output
//! line that is not a header is the reply text. On accept, the data hook's
//! lines of the form `Name: value` are headers to add. A hook that outlives
//! `smtp.hooks.timeout` is killed and the stage deferred.

use std::time::Duration;

use postroom::program::{Ended, Program};
use postroom::proto::smtp::Reply;

/// What a hook said.
#[derive(Debug)]
pub enum Verdict {
    Accept { headers: Vec<String> },
    Refuse(Reply),
}

/// Most output read from a hook.
const OUTPUT_MAX: usize = 16 * 1024;

/// Runs a hook (on the blocking pool: the runner waits on threads) and
/// reads its verdict.
pub async fn run(
    command: &str,
    env: &[(&str, String)],
    stdin: Option<Box<dyn std::io::Read + Send>>,
    timeout: Duration,
) -> Verdict {
    let program = Program {
        command: command.to_string(),
        env: env
            .iter()
            .map(|(k, v)| (k.to_string(), v.clone()))
            .collect(),
        input: stdin,
        keep_stderr: false,
        output_max: OUTPUT_MAX,
        timeout,
    };
    let ran = tokio::task::spawn_blocking(move || program.run()).await;
    match ran {
        Ok(Ok(ran)) => match ran.ended {
            Ended::Exited(code) => interpret(Some(code), &String::from_utf8_lossy(&ran.output)),
            Ended::Killed => interpret(None, ""),
            Ended::TimedOut => {
                tracing::warn!(command, "hook timed out");
                Verdict::Refuse(Reply::new(
                    451,
                    "4.3.0",
                    "local policy check timed out, try later",
                ))
            }
        },
        Ok(Err(e)) => {
            tracing::error!(command, "cannot run hook: {e}");
            Verdict::Refuse(Reply::new(
                451,
                "4.3.0",
                "local policy check unavailable, try later",
            ))
        }
        Err(e) => {
            tracing::error!(command, "hook failed: {e}");
            Verdict::Refuse(Reply::new(
                451,
                "4.3.0",
                "local policy check failed, try later",
            ))
        }
    }
}

/// Maps an exit code and output to a verdict.
fn interpret(code: Option<i32>, output: &str) -> Verdict {
    let (headers, text): (Vec<&str>, Vec<&str>) = output
        .lines()
        .map(str::trim_end)
        .filter(|l| !l.is_empty())
        .partition(|l| is_header_line(l));
    let said = |default: &str| {
        text.first()
            .map(|t| t.to_string())
            .unwrap_or_else(|| default.to_string())
    };
    match code {
        Some(0) => Verdict::Accept {
            headers: headers.iter().map(|h| h.to_string()).collect(),
        },
        Some(75) => Verdict::Refuse(Reply::new(451, "4.7.1", said("try again later"))),
        Some(_) => Verdict::Refuse(Reply::new(550, "5.7.1", said("refused by local policy"))),
        None => Verdict::Refuse(Reply::new(
            451,
            "4.3.0",
            "local policy check was killed, try later",
        )),
    }
}

/// `Name: value` with an RFC 5322 field name (printable ASCII, no colon).
fn is_header_line(line: &str) -> bool {
    match line.split_once(':') {
        Some((name, value)) => {
            !name.is_empty()
                && name.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-')
                && value.starts_with(' ')
                && !line.chars().any(char::is_control)
        }
        None => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exit_codes_and_output() {
        match interpret(Some(0), "X-Spam-Score: 1.2\nX-Virus: clean\n") {
            Verdict::Accept { headers } => {
                assert_eq!(headers, ["X-Spam-Score: 1.2", "X-Virus: clean"])
            }
            other => panic!("{other:?}"),
        }
        match interpret(Some(1), "listed in bl.example\n") {
            Verdict::Refuse(r) => assert_eq!(r.to_string(), "550 5.7.1 listed in bl.example"),
            other => panic!("{other:?}"),
        }
        match interpret(Some(75), "") {
            Verdict::Refuse(r) => assert_eq!(r.code, 451),
            other => panic!("{other:?}"),
        }
        assert!(
            is_header_line("X-A: b")
                && !is_header_line("not a header")
                && !is_header_line("Bad Name: x")
        );
    }
}
