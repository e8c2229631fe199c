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

use mail_auth::report::tlsrpt::{
    DateRange, FailureDetails, Policy, PolicyDetails, PolicyType, ResultType, Summary, TlsReport,
};
use serde::{Deserialize, Serialize};

use crate::net::dane::Tlsa;
use crate::net::mta_sts::KnownPolicy;
use crate::store::fsutil::{self, FileLock};

/// RFC 8460 §4.3.2 result types this sender produces, plus "success".
pub const SUCCESS: &str = "success";
pub const STARTTLS_NOT_SUPPORTED: &str = "starttls-not-supported";
pub const CERTIFICATE_HOST_MISMATCH: &str = "certificate-host-mismatch";
pub const CERTIFICATE_EXPIRED: &str = "certificate-expired";
pub const CERTIFICATE_NOT_TRUSTED: &str = "certificate-not-trusted";
pub const VALIDATION_FAILURE: &str = "validation-failure";
pub const DNSSEC_INVALID: &str = "dnssec-invalid";

/// The policy a session was held under.
#[derive(Debug, Clone, Copy)]
pub enum Applied<'a> {
    None,
    Sts(&'a KnownPolicy),
    Tlsa(&'a [Tlsa]),
}

/// One line of the record.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SessionLine {
    /// Seconds since the epoch.
    pub time: u64,
    /// "tlsa", "sts" or "no-policy-found" (RFC 8460 §4.3.1.1).
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
    /// A session under `policy` to `mx_host`.
    pub fn new(
        policy: Applied<'_>,
        mx_host: &str,
        receiving_ip: Option<IpAddr>,
        result: &str,
        detail: &str,
    ) -> SessionLine {
        SessionLine {
            time: fsutil::now_secs(),
            policy_type: match policy {
                Applied::None => "no-policy-found",
                Applied::Sts(_) => "sts",
                Applied::Tlsa(_) => "tlsa",
            }
            .into(),
            policy_string: match policy {
                Applied::None => Vec::new(),
                Applied::Sts(known) => known
                    .policy
                    .to_string()
                    .lines()
                    .map(str::to_string)
                    .collect(),
                Applied::Tlsa(records) => records.iter().map(Tlsa::to_text).collect(),
            },
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
    if !crate::net::mta_sts::is_file_safe_domain(&domain) {
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

/// Reads a domain's record of one day; lines that do not parse (a line
/// torn by a crash mid-write) are left out.
pub fn read_record(file: &Path) -> std::io::Result<Vec<SessionLine>> {
    let text = fsutil::read_to_string_fresh(file)?;
    Ok(text
        .lines()
        .filter_map(|line| serde_json::from_str(line).ok())
        .collect())
}

/// The RFC 8460 report of one domain's day (`YYYY-MM-DD`, UTC): one
/// policy entry per policy seen (a changed policy is a new entry), with
/// its session counts and the failures grouped by result, MX host and
/// address.
pub fn build_report(
    domain: &str,
    day: &str,
    lines: &[SessionLine],
    organization: &str,
    contact: &str,
) -> TlsReport {
    let start = mail_parser::DateTime::parse_rfc3339(&format!("{day}T00:00:00Z"))
        .unwrap_or_else(|| mail_parser::DateTime::from_timestamp(0));
    let end = mail_parser::DateTime::from_timestamp(start.to_timestamp() + 86_400);
    let mut policies: Vec<Policy> = Vec::new();
    for line in lines {
        let policy_type = match line.policy_type.as_str() {
            "sts" => PolicyType::Sts,
            "tlsa" => PolicyType::Tlsa,
            _ => PolicyType::NoPolicyFound,
        };
        let index = match policies.iter().position(|p| {
            p.policy.policy_type == policy_type && p.policy.policy_string == line.policy_string
        }) {
            Some(index) => index,
            None => {
                policies.push(Policy {
                    policy: PolicyDetails {
                        policy_type,
                        policy_string: line.policy_string.clone(),
                        policy_domain: domain.to_string(),
                        mx_host: line
                            .policy_string
                            .iter()
                            .filter_map(|l| l.strip_prefix("mx: "))
                            .map(str::to_string)
                            .collect(),
                    },
                    summary: Summary {
                        total_success: 0,
                        total_failure: 0,
                    },
                    failure_details: Vec::new(),
                });
                policies.len() - 1
            }
        };
        let policy = &mut policies[index];
        if line.result == SUCCESS {
            policy.summary.total_success += 1;
            continue;
        }
        policy.summary.total_failure += 1;
        let result_type: ResultType =
            serde_json::from_value(serde_json::Value::String(line.result.clone()))
                .unwrap_or(ResultType::Other);
        let mx = (!line.mx_host.is_empty()).then(|| line.mx_host.clone());
        match policy.failure_details.iter_mut().find(|f| {
            f.result_type == result_type
                && f.receiving_mx_hostname == mx
                && f.receiving_ip == line.receiving_ip
        }) {
            Some(failure) => failure.failed_session_count += 1,
            None => policy.failure_details.push(FailureDetails {
                result_type,
                receiving_mx_hostname: mx,
                receiving_ip: line.receiving_ip,
                failed_session_count: 1,
                additional_information: (!line.detail.is_empty()).then(|| line.detail.clone()),
                ..FailureDetails::default()
            }),
        }
    }
    TlsReport {
        organization_name: Some(organization.to_string()),
        date_range: DateRange {
            start_datetime: start,
            end_datetime: end,
        },
        contact_info: Some(contact.to_string()),
        report_id: format!("{day}.{domain}@{organization}"),
        policies,
    }
}

/// Why TLS with a mail exchanger could not be set up, told apart as the
/// TLS reports (RFC 8460 §4.3.2) and smtp-send's second tries need it:
/// from rustls's own error ([`TlsFailure::of_rustls`]), never from text.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TlsFailure {
    /// The host refused STARTTLS (a reply other than 220).
    StarttlsNotSupported,
    /// The certificate names other hosts.
    CertificateHostMismatch,
    /// The certificate has expired.
    CertificateExpired,
    /// Any other certificate the chain check refused (an unknown issuer,
    /// a bad signature, not valid yet).
    CertificateNotTrusted,
    /// No TLSA record of the host matches its certificate (DANE).
    TlsaMismatch,
    /// No TLS version in common: a peer that speaks only TLS 1.0 or 1.1,
    /// which the `legacy-tls` feature may try with OpenSSL.
    ProtocolVersion,
    /// Anything else: a handshake error, a timeout, a name TLS cannot
    /// check, OpenSSL's failures.
    Other,
}

impl TlsFailure {
    /// The kind of a rustls handshake error.
    pub fn of_rustls(error: &rustls::Error) -> TlsFailure {
        use rustls::{AlertDescription, CertificateError, InvalidMessage, PeerIncompatible};
        match error {
            rustls::Error::InvalidCertificate(e) => match e {
                CertificateError::NotValidForName
                | CertificateError::NotValidForNameContext { .. } => {
                    TlsFailure::CertificateHostMismatch
                }
                CertificateError::Expired | CertificateError::ExpiredContext { .. } => {
                    TlsFailure::CertificateExpired
                }
                CertificateError::Other(other)
                    if other
                        .0
                        .downcast_ref::<crate::net::dane::TlsaMismatch>()
                        .is_some() =>
                {
                    TlsFailure::TlsaMismatch
                }
                _ => TlsFailure::CertificateNotTrusted,
            },
            rustls::Error::AlertReceived(AlertDescription::ProtocolVersion)
            | rustls::Error::InvalidMessage(InvalidMessage::UnknownProtocolVersion)
            | rustls::Error::PeerIncompatible(
                PeerIncompatible::ServerDoesNotSupportTls12Or13
                | PeerIncompatible::SupportedVersionsExtensionRequired,
            ) => TlsFailure::ProtocolVersion,
            _ => TlsFailure::Other,
        }
    }

    /// The kind of the I/O error a TLS connector returns (tokio-rustls
    /// wraps rustls's error in it).
    pub fn of_handshake(error: &std::io::Error) -> TlsFailure {
        crate::net::tls::rustls_error(error)
            .map(TlsFailure::of_rustls)
            .unwrap_or(TlsFailure::Other)
    }

    /// The RFC 8460 result type a report gives it.
    pub fn result_type(self) -> &'static str {
        match self {
            TlsFailure::StarttlsNotSupported => STARTTLS_NOT_SUPPORTED,
            TlsFailure::CertificateHostMismatch => CERTIFICATE_HOST_MISMATCH,
            TlsFailure::CertificateExpired => CERTIFICATE_EXPIRED,
            TlsFailure::CertificateNotTrusted => CERTIFICATE_NOT_TRUSTED,
            TlsFailure::TlsaMismatch | TlsFailure::ProtocolVersion | TlsFailure::Other => {
                VALIDATION_FAILURE
            }
        }
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
        let line = SessionLine::new(Applied::None, "mx.far.test", None, SUCCESS, "");
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
    fn a_report_counts_sessions_per_policy_and_groups_failures() {
        let known = KnownPolicy {
            id: "one".into(),
            fetched: 0,
            policy: crate::proto::mta_sts::Policy {
                mode: crate::proto::mta_sts::Mode::Enforce,
                max_age: 86400,
                mx: vec!["*.far.test".into()],
            },
        };
        let ip = Some("192.0.2.1".parse().unwrap());
        let lines = [
            SessionLine::new(Applied::Sts(&known), "mx1.far.test", ip, SUCCESS, ""),
            SessionLine::new(Applied::Sts(&known), "mx1.far.test", ip, SUCCESS, ""),
            SessionLine::new(
                Applied::Sts(&known),
                "mx2.far.test",
                ip,
                CERTIFICATE_EXPIRED,
                "expired",
            ),
            SessionLine::new(
                Applied::Sts(&known),
                "mx2.far.test",
                ip,
                CERTIFICATE_EXPIRED,
                "expired",
            ),
            SessionLine::new(
                Applied::None,
                "mx1.far.test",
                ip,
                STARTTLS_NOT_SUPPORTED,
                "",
            ),
        ];
        let report = build_report(
            "far.test",
            "2026-12-01",
            &lines,
            "mail.example.test",
            "postmaster@example.test",
        );
        let json: serde_json::Value = serde_json::from_str(&report.to_json()).unwrap();
        assert_eq!(json["date-range"]["start-datetime"], "2026-12-01T00:00:00Z");
        assert_eq!(json["date-range"]["end-datetime"], "2026-12-02T00:00:00Z");
        let sts = &json["policies"][0];
        assert_eq!(sts["policy"]["policy-type"], "sts");
        assert_eq!(sts["policy"]["mx-host"][0], "*.far.test");
        assert_eq!(sts["summary"]["total-successful-session-count"], 2);
        assert_eq!(sts["summary"]["total-failure-session-count"], 2);
        assert_eq!(
            sts["failure-details"][0]["result-type"],
            "certificate-expired"
        );
        assert_eq!(sts["failure-details"][0]["failed-session-count"], 2);
        let none = &json["policies"][1];
        assert_eq!(none["policy"]["policy-type"], "no-policy-found");
        assert_eq!(
            none["failure-details"][0]["result-type"],
            "starttls-not-supported"
        );
    }

    #[test]
    fn tls_errors_are_classified_by_kind() {
        use rustls::{AlertDescription, CertificateError, PeerIncompatible};
        let cert = |e| TlsFailure::of_rustls(&rustls::Error::InvalidCertificate(e));
        assert_eq!(
            cert(CertificateError::NotValidForName),
            TlsFailure::CertificateHostMismatch
        );
        assert_eq!(
            cert(CertificateError::Expired),
            TlsFailure::CertificateExpired
        );
        assert_eq!(
            cert(CertificateError::UnknownIssuer),
            TlsFailure::CertificateNotTrusted
        );
        assert_eq!(
            cert(crate::net::dane::TlsaMismatch.into()),
            TlsFailure::TlsaMismatch
        );
        assert_eq!(
            TlsFailure::of_rustls(&rustls::Error::AlertReceived(
                AlertDescription::ProtocolVersion
            )),
            TlsFailure::ProtocolVersion
        );
        assert_eq!(
            TlsFailure::of_rustls(&rustls::Error::PeerIncompatible(
                PeerIncompatible::ServerDoesNotSupportTls12Or13
            )),
            TlsFailure::ProtocolVersion
        );
        assert_eq!(
            TlsFailure::of_rustls(&rustls::Error::General("ProtocolVersion".into())),
            TlsFailure::Other,
            "the text says nothing"
        );
        // Through the I/O error tokio-rustls hands back.
        let io = std::io::Error::new(
            std::io::ErrorKind::InvalidData,
            rustls::Error::InvalidCertificate(CertificateError::Expired),
        );
        assert_eq!(
            TlsFailure::of_handshake(&io),
            TlsFailure::CertificateExpired
        );
        assert_eq!(
            TlsFailure::of_handshake(&std::io::Error::other("reset")),
            TlsFailure::Other
        );
        assert_eq!(
            TlsFailure::CertificateHostMismatch.result_type(),
            CERTIFICATE_HOST_MISMATCH
        );
        assert_eq!(TlsFailure::TlsaMismatch.result_type(), VALIDATION_FAILURE);
        assert_eq!(
            TlsFailure::StarttlsNotSupported.result_type(),
            STARTTLS_NOT_SUPPORTED
        );
    }
}
