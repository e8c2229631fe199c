//! Login hooks (`[login]` in `postroom.toml(5)`): the classic servers'
//! "alternate authentication" and per-user login rules, for POP3, IMAP and
//! SMTP AUTH alike, run from [`AuthLimit::check_password`] so that the
//! failure back-off covers them too.
//!
//! - `check`: a program with qmail's `checkpassword` interface, which
//!   admins already have for PAM, LDAP and SQL: it reads
//!   `login\0password\0timestamp\0` from fd 3 and exits 0 to accept, 1 to
//!   reject, 111 for a temporary problem (anything else, a kill or the
//!   timeout count as temporary too: a broken hook is not a wrong
//!   password). The password travels only on that pipe: never in the
//!   environment, the command line or the log. The login must still name a
//!   user in the users file, which says where the mail is.
//! - `after`: run once a login succeeded, with `POSTROOM_USER`; exit 0
//!   lets the user in, 111 (or a kill or the timeout) is a temporary
//!   failure, anything else refuses, with the first line of its output as
//!   the reason the client sees ("deny this user at this hour").
//!
//! Both run `/bin/sh -c` through [`crate::program`], with
//! `POSTROOM_SERVICE` (`pop3`, `imap`, `smtp`), `POSTROOM_LOGIN` and
//! `POSTROOM_REMOTE_IP` / `TCPREMOTEIP` (empty for a pipe that names no
//! peer) in the environment.
//!
//! [`AuthLimit::check_password`]: crate::directory::authlimit::AuthLimit::check_password

use std::io::Cursor;
use std::net::IpAddr;
use std::time::Duration;

use crate::config::login::{LoginHooks, Service};
use crate::directory::users::{User, Users};
use crate::program::{Ended, Program};

/// Most output kept from a hook: a reason line is all we read.
const OUTPUT_MAX: usize = 4096;
/// The longest refusal reason passed on to a client.
const REASON_MAX: usize = 200;

/// A hook that could not decide: the login fails temporarily.
#[derive(Debug, thiserror::Error)]
pub enum HookError {
    #[error("login hook {command:?} could not be started: {error} (check the path in [login])")]
    Start {
        command: String,
        error: std::io::Error,
    },
    #[error("login hook {command:?} ran past login.timeout ({timeout:?}) and was killed")]
    TimedOut { command: String, timeout: Duration },
    #[error("login hook {command:?} was killed by a signal")]
    Killed { command: String },
    #[error("login hook {command:?} exited {code}: a temporary failure (1 rejects, 0 accepts)")]
    Temporary { command: String, code: i32 },
    #[error("{0}: no login can be checked until it is restored")]
    Users(crate::directory::users::Unavailable),
}

/// What the `after` hook decided.
#[derive(Debug, PartialEq, Eq)]
pub enum After {
    Allow,
    /// Refused, with the reason for the client.
    Refuse(String),
}

/// Who is logging in, for the hooks' environment.
#[derive(Debug, Clone)]
pub struct Attempt {
    pub service: Service,
    pub ip: Option<IpAddr>,
    pub login: String,
}

impl Attempt {
    fn env(&self) -> Vec<(String, String)> {
        let ip = self.ip.map(|ip| ip.to_canonical().to_string());
        vec![
            ("POSTROOM_SERVICE".into(), self.service.name().into()),
            ("POSTROOM_LOGIN".into(), self.login.clone()),
            ("POSTROOM_REMOTE_IP".into(), ip.clone().unwrap_or_default()),
            ("TCPREMOTEIP".into(), ip.unwrap_or_default()),
        ]
    }
}

/// Runs the `check` hook for `attempt` with `password` on fd 3. `Ok(Some)`
/// when it accepts and the login names a user, `Ok(None)` when it rejects
/// (or accepts a login the users file does not know, logged).
pub fn check(
    hooks: &LoginHooks,
    command: &str,
    users: &Users,
    attempt: &Attempt,
    password: &str,
) -> Result<Option<User>, HookError> {
    // checkpassword's input: login, password and a timestamp (for APOP;
    // unused here), each NUL-terminated.
    let mut input = Vec::with_capacity(attempt.login.len() + password.len() + 3);
    input.extend_from_slice(attempt.login.as_bytes());
    input.push(0);
    input.extend_from_slice(password.as_bytes());
    input.extend_from_slice(b"\0\0");
    // Program feeds stdin; the shell moves it to fd 3, where checkpassword
    // programs read, and gives the program an empty stdin. No unsafe
    // fd juggling in our process (lib/ forbids it).
    let program = Program {
        command: format!("exec 3<&0 0</dev/null\n{command}"),
        env: attempt.env(),
        input: Some(Box::new(Cursor::new(input))),
        keep_stderr: false,
        output_max: OUTPUT_MAX,
        timeout: hooks.timeout,
    };
    let code = exit_code(command, hooks.timeout, program.run())?;
    match code {
        0 => {
            if let Some(why) = users.unavailable() {
                return Err(HookError::Users(why));
            }
            let user = users.get(attempt.login.trim());
            if user.is_none() {
                tracing::warn!(
                    login = ?attempt.login,
                    "the login hook accepted a login the users file does not list; refused (add the user with `postroom user add`)"
                );
            }
            Ok(user)
        }
        1 => Ok(None),
        code => Err(HookError::Temporary {
            command: command.to_string(),
            code,
        }),
    }
}

/// Runs the `after` hook for a user who just logged in.
pub fn after(
    hooks: &LoginHooks,
    command: &str,
    attempt: &Attempt,
    user: &User,
) -> Result<After, HookError> {
    let mut env = attempt.env();
    env.push(("POSTROOM_USER".into(), user.address.clone()));
    let program = Program {
        command: command.to_string(),
        env,
        input: None,
        keep_stderr: false,
        output_max: OUTPUT_MAX,
        timeout: hooks.timeout,
    };
    let ran = program.run();
    let output = match &ran {
        Ok(ran) => ran.first_line(),
        Err(_) => None,
    };
    match exit_code(command, hooks.timeout, ran)? {
        0 => Ok(After::Allow),
        111 => Err(HookError::Temporary {
            command: command.to_string(),
            code: 111,
        }),
        _ => Ok(After::Refuse(reason(output.as_deref()))),
    }
}

fn exit_code(
    command: &str,
    timeout: Duration,
    ran: std::io::Result<crate::program::Ran>,
) -> Result<i32, HookError> {
    let ran = ran.map_err(|error| HookError::Start {
        command: command.to_string(),
        error,
    })?;
    match ran.ended {
        Ended::Exited(code) => Ok(code),
        Ended::Killed => Err(HookError::Killed {
            command: command.to_string(),
        }),
        Ended::TimedOut => Err(HookError::TimedOut {
            command: command.to_string(),
            timeout,
        }),
    }
}

/// The hook's first line, made safe to put in a protocol reply: printable
/// ASCII only, bounded; a generic reason when it said nothing.
fn reason(line: Option<&str>) -> String {
    let cleaned: String = line
        .unwrap_or_default()
        .chars()
        .filter(|c| c.is_ascii_graphic() || *c == ' ')
        .take(REASON_MAX)
        .collect();
    match cleaned.trim() {
        "" => "login refused by site policy".to_string(),
        text => text.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::Path;

    fn users() -> Users {
        Users::parse("ann@example.test:{PLAIN}x\n", Path::new("users")).unwrap()
    }

    fn hooks() -> LoginHooks {
        LoginHooks {
            check: None,
            after: None,
            timeout: Duration::from_secs(10),
        }
    }

    fn attempt(login: &str) -> Attempt {
        Attempt {
            service: Service::Imap,
            ip: Some("192.0.2.7".parse().unwrap()),
            login: login.into(),
        }
    }

    // A checkpassword program in shell: the password is right when it is
    // "sesame", read from fd 3 as checkpassword does.
    const CHECK: &str = "IFS= read -r -d '' login <&3; IFS= read -r -d '' pass <&3; \
        [ \"$pass\" = sesame ] && exit 0; [ \"$pass\" = later ] && exit 111; exit 1";

    #[test]
    fn checkpassword_exit_codes() {
        let command = format!("bash -c {}", shell_quote(CHECK));
        let users = users();
        let h = hooks();
        let ok = check(&h, &command, &users, &attempt("ann@example.test"), "sesame").unwrap();
        assert_eq!(ok.map(|u| u.address).as_deref(), Some("ann@example.test"));
        assert!(
            check(&h, &command, &users, &attempt("ann@example.test"), "wrong")
                .unwrap()
                .is_none()
        );
        // Accepted, but not a user here: no mailbox to open.
        assert!(
            check(&h, &command, &users, &attempt("bob@example.test"), "sesame")
                .unwrap()
                .is_none()
        );
        let later = check(&h, &command, &users, &attempt("ann@example.test"), "later");
        assert!(matches!(later, Err(HookError::Temporary { code: 111, .. })));
    }

    #[test]
    fn the_password_is_not_in_the_environment_and_timeouts_fail_temporarily() {
        let users = users();
        let h = hooks();
        // Exits 0 only if no environment variable holds the password.
        let command = "env | grep -q sesame && exit 1; exit 0";
        let ok = check(&h, command, &users, &attempt("ann@example.test"), "sesame").unwrap();
        assert!(ok.is_some());
        let short = LoginHooks {
            timeout: Duration::from_millis(200),
            ..hooks()
        };
        // On purpose: a hook that hangs, killed at the 200 ms timeout.
        let slow = check(
            &short,
            "sleep 30",
            &users,
            &attempt("ann@example.test"),
            "x",
        );
        assert!(matches!(slow, Err(HookError::TimedOut { .. })), "{slow:?}");
    }

    #[test]
    fn after_hook_refuses_with_its_reason() {
        let h = hooks();
        let user = users().get("ann@example.test").unwrap();
        let a = attempt("ann@example.test");
        assert_eq!(after(&h, "exit 0", &a, &user).unwrap(), After::Allow);
        assert_eq!(
            after(
                &h,
                "[ \"$POSTROOM_USER\" = ann@example.test ] && [ \"$POSTROOM_SERVICE\" = imap ] && echo 'not at night'; exit 1",
                &a,
                &user
            )
            .unwrap(),
            After::Refuse("not at night".into())
        );
        assert_eq!(
            after(&h, "printf '\\033[2J\\r\\n'; exit 2", &a, &user).unwrap(),
            After::Refuse("[2J".into())
        );
        assert!(after(&h, "exit 111", &a, &user).is_err());
    }

    fn shell_quote(s: &str) -> String {
        format!("'{}'", s.replace('\'', "'\\''"))
    }
}
