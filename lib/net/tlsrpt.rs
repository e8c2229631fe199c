//! SMTP TLS reporting (RFC 8460): smtp-send writes down how each session
//! with a recipient domain's servers went, and `postroom tlsrpt send`
//! turns a finished day of it into the reports the domain asks for.
//!
//! The record is the tree file `state/tlsrpt/YYYY-MM-DD/DOMAIN` (UTC
//! day), one JSON object per line, appended under the file's `flock` so
//! runners on several hosts can share it. A line costs one open and one
//! write per connection (not per message: a connection carries up to
//! `send.messages_per_connection`).

use std::io::Write;
use std::net::IpAddr;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::net::mta_sts::KnownPolicy;
use crate::store::fsutil::{self, FileLock};

/// RFC 8460 §4.3.2 result types this sender produces, plus "success".
pub const SUCCESS: &str = "success";
pub const STARTTLS_NOT_SUPPORTED: &str = "starttls-not-supported";
pub const CERTIFICATE_HOST_MISMATCH: &str = "certificate-host-mismatch";
pub const CERTIFICATE_EXPIRED: &str = "certificate-expired";
pub const CERTIFICATE_NOT_TRUSTED: &str = "certificate-not-trusted";
pub const VALIDATION_FAILURE: &str = "validation-failure";

/// One line of the record.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SessionLine {
    /// Seconds since the epoch.
    pub time: u64,
    /// "sts" or "no-policy-found" (RFC 8460 §4.3.1.1).
    pub policy_type: String,
    /// The policy as the domain serves it, one string per line (§4.4).
    #[serde(default)]
    pub policy_string: Vec<String>,
    pub mx_host: String,
    pub receiving_ip: Option<IpAddr>,
    /// [`SUCCESS`] or a failure result type.
    pub result: String,
    /// What went wrong, for `additional-information`.
    #[serde(default)]
    pub detail: String,
}

impl SessionLine {
    /// A session under `policy` (or none) to `mx_host`.
    pub fn new(
        policy: Option<&KnownPolicy>,
        mx_host: &str,
        receiving_ip: Option<IpAddr>,
        result: &str,
        detail: &str,
    ) -> SessionLine {
        SessionLine {
            time: fsutil::now_secs(),
            policy_type: if policy.is_some() {
                "sts"
            } else {
                "no-policy-found"
            }
            .into(),
            policy_string: policy
                .map(|known| {
                    known
                        .policy
                        .to_string()
                        .lines()
                        .map(str::to_string)
                        .collect()
                })
                .unwrap_or_default(),
            mx_host: mx_host.to_string(),
            receiving_ip,
            result: result.to_string(),
            detail: detail.to_string(),
        }
    }
}

/// The UTC day of a time, `YYYY-MM-DD`: the record's folder name.
pub fn day_of(time: u64) -> String {
    let stamp = mail_parser::DateTime::from_timestamp(time as i64).to_rfc3339();
    stamp.get(..10).unwrap_or("1970-01-01").to_string()
}

/// `state/tlsrpt`.
pub fn record_dir(state_dir: &Path) -> PathBuf {
    state_dir.join("tlsrpt")
}

/// Appends a session's line to the domain's record for today. A failure
/// to write is logged by the caller and costs only the report.
pub fn record(state_dir: &Path, domain: &str, line: &SessionLine) -> std::io::Result<()> {
    let domain = domain.trim_end_matches('.').to_ascii_lowercase();
    let safe = !domain.is_empty()
        && !domain.starts_with('.')
        && domain
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'.');
    if !safe {
        return Ok(());
    }
    let dir = record_dir(state_dir).join(day_of(line.time));
    std::fs::create_dir_all(&dir)?;
    let mut text = serde_json::to_string(line).map_err(std::io::Error::other)?;
    text.push('\n');
    let file = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(dir.join(&domain))?;
    // O_APPEND alone is not atomic between NFS clients; the lock is.
    let lock = FileLock::exclusive_on(file)?;
    let mut file = lock.file();
    file.write_all(text.as_bytes())
}

/// The failure result type of a TLS error text from the SMTP client
/// (rustls names the certificate problem in its message).
pub fn result_of_tls_error(text: &str) -> &'static str {
    if text.contains("STARTTLS") && text.contains("4.7.4") {
        STARTTLS_NOT_SUPPORTED
    } else if text.contains("NotValidForName") {
        CERTIFICATE_HOST_MISMATCH
    } else if text.contains("Expired") {
        CERTIFICATE_EXPIRED
    } else if text.contains("UnknownIssuer") || text.contains("certificate") {
        CERTIFICATE_NOT_TRUSTED
    } else {
        VALIDATION_FAILURE
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn days_are_utc_dates() {
        assert_eq!(day_of(0), "1970-01-01");
        assert_eq!(day_of(1_700_000_000), "2023-11-14");
    }

    #[test]
    fn lines_are_appended_and_read_back() {
        let dir = tempfile::tempdir().unwrap();
        let line = SessionLine::new(None, "mx.far.test", None, SUCCESS, "");
        record(dir.path(), "Far.Test.", &line).unwrap();
        record(dir.path(), "far.test", &line).unwrap();
        record(dir.path(), "../escape", &line).unwrap();
        let file = record_dir(dir.path())
            .join(day_of(line.time))
            .join("far.test");
        let text = std::fs::read_to_string(file).unwrap();
        let lines: Vec<SessionLine> = text
            .lines()
            .map(|l| serde_json::from_str(l).unwrap())
            .collect();
        assert_eq!(lines, [line.clone(), line]);
        assert!(!dir.path().join("escape").exists());
    }

    #[test]
    fn tls_errors_are_classified() {
        assert_eq!(
            result_of_tls_error(
                "421 4.7.5 TLS with mx[1.2.3.4] failed: invalid peer certificate: NotValidForName"
            ),
            CERTIFICATE_HOST_MISMATCH
        );
        assert_eq!(
            result_of_tls_error("failed: invalid peer certificate: UnknownIssuer"),
            CERTIFICATE_NOT_TRUSTED
        );
        assert_eq!(
            result_of_tls_error("invalid peer certificate: Expired"),
            CERTIFICATE_EXPIRED
        );
        assert_eq!(
            result_of_tls_error("451 4.7.4 mx does not offer STARTTLS, and TLS is required"),
            STARTTLS_NOT_SUPPORTED
        );
        assert_eq!(
            result_of_tls_error("421 4.7.5 TLS with mx timed out"),
            VALIDATION_FAILURE
        );
    }
}
