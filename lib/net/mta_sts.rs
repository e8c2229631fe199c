//! Finding a recipient domain's MTA-STS policy (RFC 8461 §3, §5.1): the
//! `_mta-sts` TXT record says which policy is current, the policy itself
//! comes over HTTPS from `mta-sts.DOMAIN`, and the tree keeps what was
//! fetched in `state/mta-sts/DOMAIN` until its `max_age` runs out, so
//! every runner on every host sharing the tree uses one copy and fetches
//! only when the domain announces a new id.
//!
//! The fetch is a plain HTTP/1.1 GET over rustls with the `verified`
//! client config (system roots plus `send.ca_file`), the host name
//! checked, no redirects followed (§3.3), and limits on size and time. A
//! full HTTP client crate would bring a second TLS stack and its own DNS
//! resolution; the policy must be fetched from the addresses our resolver
//! gives, so this small client reuses both.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use hickory_resolver::TokioResolver;
use mail_auth::common::parse::TxtRecordParser;
use mail_auth::mta_sts::MtaSts;
use rustls_pki_types::ServerName;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::net::dns;
use crate::proto::mta_sts::{POLICY_SIZE_LIMIT, Policy, parse_policy};
use crate::store::fsutil;

/// The whole fetch (connect, handshake, request, response) must end in
/// this time; a slow policy server must not hold up a queue run.
pub const FETCH_TIMEOUT: Duration = Duration::from_secs(20);
/// The most read of the response head.
const HEAD_LIMIT: usize = 8 * 1024;

/// A policy the tree knows: what was fetched, when, under which id.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KnownPolicy {
    /// The `id=` of the TXT record it was fetched under.
    pub id: String,
    /// When it was fetched (seconds since the epoch).
    pub fetched: u64,
    pub policy: Policy,
}

impl KnownPolicy {
    /// Still usable at `now` (RFC 8461 §5.1: until max_age runs out).
    pub fn is_fresh(&self, now: u64) -> bool {
        now < self.fetched.saturating_add(self.policy.max_age)
    }

    /// The cache file: two header lines, a blank line, the policy.
    fn to_file(&self) -> String {
        format!(
            "id: {}\r\nfetched: {}\r\n\r\n{}",
            self.id, self.fetched, self.policy
        )
    }

    /// Reads a cache file; `None` when it is torn or not one.
    fn from_file(text: &str) -> Option<KnownPolicy> {
        let (head, body) = text.split_once("\r\n\r\n")?;
        let mut id = None;
        let mut fetched = None;
        for line in head.split("\r\n") {
            match line.split_once(": ")? {
                ("id", v) => id = Some(v.to_string()),
                ("fetched", v) => fetched = v.parse().ok(),
                _ => {}
            }
        }
        Some(KnownPolicy {
            id: id?,
            fetched: fetched?,
            policy: parse_policy(body.as_bytes()).ok()?,
        })
    }
}

/// Why no fresh policy could be had, as the result types of RFC 8460
/// §4.3.2 name them for the TLS reports.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum FetchFailure {
    /// No connection, no answer, a status other than 200 (`sts-policy-fetch-error`).
    Fetch(String),
    /// A body that is not a valid policy (`sts-policy-invalid`).
    Invalid(String),
    /// The HTTPS server's certificate did not verify (`sts-webpki-invalid`).
    WebPki(String),
}

impl FetchFailure {
    pub fn result_type(&self) -> &'static str {
        match self {
            FetchFailure::Fetch(_) => "sts-policy-fetch-error",
            FetchFailure::Invalid(_) => "sts-policy-invalid",
            FetchFailure::WebPki(_) => "sts-webpki-invalid",
        }
    }

    pub fn detail(&self) -> &str {
        match self {
            FetchFailure::Fetch(t) | FetchFailure::Invalid(t) | FetchFailure::WebPki(t) => t,
        }
    }
}

/// What a lookup found: the policy to apply (if any) and, when a newer
/// one was announced but could not be fetched, why.
#[derive(Debug, Default)]
pub struct Lookup {
    pub policy: Option<KnownPolicy>,
    pub failure: Option<FetchFailure>,
}

/// Looks policies up for one queue run.
pub struct Fetcher {
    pub resolver: TokioResolver,
    /// The certificate-checking client config.
    pub tls: Arc<rustls::ClientConfig>,
    /// `state/mta-sts`.
    pub cache_dir: PathBuf,
    pub port: u16,
    pub ipv6: bool,
}

impl Fetcher {
    /// The policy for `domain` (RFC 8461 §5.1): the cached one while the
    /// TXT record names its id (or is missing: a withdrawn record does
    /// not end a cached policy before its max_age, §8.3), else a fresh
    /// fetch; when the fetch fails, the cached one while it is fresh.
    pub async fn lookup(&self, domain: &str) -> Lookup {
        let domain = domain.trim_end_matches('.').to_ascii_lowercase();
        let now = fsutil::now_secs();
        let cache = self.cache_file(&domain);
        let cached = cache
            .as_deref()
            .and_then(|path| fsutil::read_to_string_fresh(path).ok())
            .and_then(|text| KnownPolicy::from_file(&text))
            .filter(|known| known.is_fresh(now));
        // A DNS failure is no news: keep what is known.
        let id = match dns::txt_records(&self.resolver, &format!("_mta-sts.{domain}")).await {
            Ok(records) => current_id(&records),
            Err(e) => {
                tracing::debug!(%domain, error = %e, "no MTA-STS record answer");
                None
            }
        };
        let Some(id) = id else {
            return Lookup {
                policy: cached,
                failure: None,
            };
        };
        if let Some(known) = cached.as_ref().filter(|known| known.id == id) {
            return Lookup {
                policy: Some(known.clone()),
                failure: None,
            };
        }
        match self.fetch(&domain).await {
            Ok(policy) => {
                let known = KnownPolicy {
                    id,
                    fetched: now,
                    policy,
                };
                if let Some(path) = &cache
                    && let Err(e) = self.store(path, &known)
                {
                    tracing::warn!(file = %path.display(), error = %e, "cannot cache the MTA-STS policy; it is fetched again next run");
                }
                Lookup {
                    policy: Some(known),
                    failure: None,
                }
            }
            Err(failure) => {
                tracing::info!(%domain, error = failure.detail(), "MTA-STS policy fetch failed");
                Lookup {
                    policy: cached,
                    failure: Some(failure),
                }
            }
        }
    }

    /// The cache file of a domain; `None` for a name that cannot be a
    /// file name (it would escape the folder).
    fn cache_file(&self, domain: &str) -> Option<PathBuf> {
        is_file_safe_domain(domain).then(|| self.cache_dir.join(domain))
    }

    fn store(&self, path: &Path, known: &KnownPolicy) -> std::io::Result<()> {
        std::fs::create_dir_all(&self.cache_dir)?;
        // Replaced by rename: a reader on another host sees the old policy
        // or the new one, never half of one.
        fsutil::write_atomic(path, known.to_file().as_bytes())
    }

    /// `GET https://mta-sts.DOMAIN/.well-known/mta-sts.txt`.
    async fn fetch(&self, domain: &str) -> Result<Policy, FetchFailure> {
        let host = format!("mta-sts.{domain}");
        match tokio::time::timeout(FETCH_TIMEOUT, self.fetch_from(&host)).await {
            Ok(result) => result,
            Err(_) => Err(FetchFailure::Fetch(format!(
                "https://{host}/ did not answer within {} s",
                FETCH_TIMEOUT.as_secs()
            ))),
        }
    }

    async fn fetch_from(&self, host: &str) -> Result<Policy, FetchFailure> {
        let addrs = dns::host_addresses(&self.resolver, host, self.ipv6)
            .await
            .map_err(|e| FetchFailure::Fetch(e.to_string()))?;
        let mut last = FetchFailure::Fetch(format!("{host} has no address"));
        let mut tcp = None;
        for ip in addrs {
            match TcpStream::connect(SocketAddr::new(ip, self.port)).await {
                Ok(stream) => {
                    tcp = Some(stream);
                    break;
                }
                Err(e) => last = FetchFailure::Fetch(format!("{host} [{ip}]: {e}")),
            }
        }
        let tcp = tcp.ok_or(last)?;
        let name = ServerName::try_from(host.to_string())
            .map_err(|e| FetchFailure::Fetch(format!("{host}: {e}")))?;
        let mut stream = tokio_rustls::TlsConnector::from(self.tls.clone())
            .connect(name, tcp)
            .await
            .map_err(|e| handshake_failure(host, e))?;
        let request = format!(
            "GET /.well-known/mta-sts.txt HTTP/1.1\r\nHost: {host}\r\n\
             User-Agent: postroom smtp-send\r\nAccept: text/plain\r\nConnection: close\r\n\r\n"
        );
        stream
            .write_all(request.as_bytes())
            .await
            .map_err(|e| FetchFailure::Fetch(format!("{host}: {e}")))?;
        let mut response = Vec::new();
        let mut buf = [0u8; 8192];
        loop {
            match read_response(&response) {
                Ok(Some(body)) => return body_to_policy(&body),
                Ok(None) => {}
                Err(failure) => return Err(failure),
            }
            let n = match stream.read(&mut buf).await {
                Ok(n) => n,
                // A server that closes without TLS close_notify ends the
                // body as surely as one that sends it.
                Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof => 0,
                Err(e) => return Err(FetchFailure::Fetch(format!("{host}: {e}"))),
            };
            if n == 0 {
                return match read_response_at_end(&response) {
                    Ok(body) => body_to_policy(&body),
                    Err(failure) => Err(failure),
                };
            }
            response.extend_from_slice(&buf[..n]);
            // Chunk framing can be padded without end; the body cannot.
            if response.len() > HEAD_LIMIT + 2 * POLICY_SIZE_LIMIT {
                return Err(too_large());
            }
        }
    }
}

/// Whether a domain can name a file in a state folder: an ASCII domain
/// name (non-empty labels, letters, digits and hyphens), so it cannot
/// climb out of the folder.
pub fn is_file_safe_domain(domain: &str) -> bool {
    domain.is_ascii() && crate::proto::address::is_domain_name(domain)
}

/// The `id` of the one `v=STSv1` record among a name's TXT records
/// (RFC 8461 §3.1: others are discarded; more than one, or one that does
/// not parse, means no policy).
pub fn current_id(records: &[String]) -> Option<String> {
    let mut sts = records.iter().filter(|r| r.starts_with("v=STSv1"));
    let record = sts.next()?;
    if sts.next().is_some() {
        return None;
    }
    MtaSts::parse(record.as_bytes()).ok().map(|r| r.id)
}

/// A handshake error as a fetch failure: a certificate that does not
/// verify is `sts-webpki-invalid`, anything else a fetch error.
fn handshake_failure(host: &str, error: std::io::Error) -> FetchFailure {
    let text = format!("{host}: {error}");
    match crate::net::tls::rustls_error(&error) {
        Some(rustls::Error::InvalidCertificate(_)) => FetchFailure::WebPki(text),
        _ => FetchFailure::Fetch(text),
    }
}

fn body_to_policy(body: &[u8]) -> Result<Policy, FetchFailure> {
    parse_policy(body).map_err(|e| FetchFailure::Invalid(e.to_string()))
}

/// Where a response read so far stands: `Some(body)` when it is whole
/// (by Content-Length or the last chunk), `None` when more must be read.
fn read_response(data: &[u8]) -> Result<Option<Vec<u8>>, FetchFailure> {
    let Some((head_len, framing)) = parse_head(data)? else {
        return Ok(None);
    };
    let body = &data[head_len..];
    match framing {
        Framing::Length(length) => Ok((body.len() >= length).then(|| body[..length].to_vec())),
        Framing::Chunked => decode_chunked(body),
        Framing::UntilClose => {
            if body.len() > POLICY_SIZE_LIMIT {
                return Err(too_large());
            }
            Ok(None)
        }
    }
}

/// The body once the server has closed the connection.
fn read_response_at_end(data: &[u8]) -> Result<Vec<u8>, FetchFailure> {
    match parse_head(data)? {
        Some((head_len, Framing::UntilClose)) => Ok(data[head_len..].to_vec()),
        Some(_) => Err(FetchFailure::Fetch(
            "the connection closed before the whole policy came".into(),
        )),
        None => Err(FetchFailure::Fetch(
            "the connection closed before a whole HTTP response head came".into(),
        )),
    }
}

enum Framing {
    Length(usize),
    Chunked,
    UntilClose,
}

/// The response head: its length and how the body ends. Any status but
/// 200 is a failure, redirects included (RFC 8461 §3.3: not followed).
fn parse_head(data: &[u8]) -> Result<Option<(usize, Framing)>, FetchFailure> {
    let mut headers = [httparse::EMPTY_HEADER; 64];
    let mut response = httparse::Response::new(&mut headers);
    let head_len = match response.parse(data) {
        Ok(httparse::Status::Complete(n)) => n,
        Ok(httparse::Status::Partial) if data.len() > HEAD_LIMIT => {
            return Err(FetchFailure::Fetch(format!(
                "the HTTP response head is longer than {HEAD_LIMIT} bytes"
            )));
        }
        Ok(httparse::Status::Partial) => return Ok(None),
        Err(e) => return Err(FetchFailure::Fetch(format!("not an HTTP response: {e}"))),
    };
    match response.code {
        Some(200) => {}
        Some(code) => {
            return Err(FetchFailure::Fetch(format!(
                "HTTP status {code} {}",
                response.reason.unwrap_or("")
            )));
        }
        None => return Err(FetchFailure::Fetch("no HTTP status".into())),
    }
    let header = |name: &str| {
        response
            .headers
            .iter()
            .find(|h| h.name.eq_ignore_ascii_case(name))
            .map(|h| String::from_utf8_lossy(h.value).trim().to_ascii_lowercase())
    };
    if header("transfer-encoding").is_some_and(|v| v.ends_with("chunked")) {
        return Ok(Some((head_len, Framing::Chunked)));
    }
    match header("content-length") {
        Some(value) => {
            let length: usize = value
                .parse()
                .map_err(|_| FetchFailure::Fetch(format!("bad Content-Length {value:?}")))?;
            if length > POLICY_SIZE_LIMIT {
                return Err(too_large());
            }
            Ok(Some((head_len, Framing::Length(length))))
        }
        None => Ok(Some((head_len, Framing::UntilClose))),
    }
}

/// A chunked body (RFC 9112 §7.1) once its last chunk has come.
fn decode_chunked(mut data: &[u8]) -> Result<Option<Vec<u8>>, FetchFailure> {
    let mut body = Vec::new();
    loop {
        let (start, size) = match httparse::parse_chunk_size(data) {
            Ok(httparse::Status::Complete(found)) => found,
            Ok(httparse::Status::Partial) => return Ok(None),
            Err(_) => return Err(FetchFailure::Fetch("a bad chunk size line".into())),
        };
        let size = usize::try_from(size).map_err(|_| too_large())?;
        if body.len().saturating_add(size) > POLICY_SIZE_LIMIT {
            return Err(too_large());
        }
        if size == 0 {
            // Trailers are not wanted; the body is whole.
            return Ok(Some(body));
        }
        let rest = &data[start..];
        if rest.len() < size + 2 {
            return Ok(None);
        }
        body.extend_from_slice(&rest[..size]);
        data = &rest[size + 2..];
    }
}

fn too_large() -> FetchFailure {
    FetchFailure::Invalid(format!(
        "the policy is larger than {POLICY_SIZE_LIMIT} bytes"
    ))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::proto::mta_sts::Mode;

    #[test]
    fn one_sts_record_gives_its_id() {
        let records = [
            "v=spf1 -all".to_string(),
            "v=STSv1; id=20240101T000000;".to_string(),
        ];
        assert_eq!(current_id(&records).as_deref(), Some("20240101T000000"));
        let two = ["v=STSv1; id=a;".to_string(), "v=STSv1; id=b;".to_string()];
        assert_eq!(current_id(&two), None, "two records mean none");
        assert_eq!(current_id(&["v=STSv1;".to_string()]), None, "no id");
        assert_eq!(current_id(&[]), None);
    }

    #[test]
    fn a_cache_file_reads_back_and_expires() {
        let known = KnownPolicy {
            id: "abc".into(),
            fetched: 1000,
            policy: Policy {
                mode: Mode::Enforce,
                max_age: 60,
                mx: vec!["*.far.test".into()],
            },
        };
        assert_eq!(
            KnownPolicy::from_file(&known.to_file()),
            Some(known.clone())
        );
        assert!(known.is_fresh(1059) && !known.is_fresh(1060));
        assert_eq!(
            KnownPolicy::from_file("id: abc\r\nfetched: 10"),
            None,
            "torn"
        );
        assert_eq!(KnownPolicy::from_file(""), None);
    }

    #[test]
    fn responses_are_framed_by_length_chunks_or_close() {
        let policy = "version: STSv1\r\nmode: testing\r\nmx: a.test\r\nmax_age: 5\r\n";
        let by_length = format!(
            "HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nContent-Length: {}\r\n\r\n{policy}",
            policy.len()
        );
        assert_eq!(
            read_response(by_length.as_bytes()).unwrap().as_deref(),
            Some(policy.as_bytes())
        );
        assert_eq!(read_response(&by_length.as_bytes()[..60]).unwrap(), None);
        let chunked = format!(
            "HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n10\r\n{}\r\n{:x}\r\n{}\r\n0\r\n\r\n",
            &policy[..16],
            policy.len() - 16,
            &policy[16..]
        );
        assert_eq!(
            read_response(chunked.as_bytes()).unwrap().as_deref(),
            Some(policy.as_bytes())
        );
        let until_close = format!("HTTP/1.0 200 OK\r\n\r\n{policy}");
        assert_eq!(read_response(until_close.as_bytes()).unwrap(), None);
        assert_eq!(
            read_response_at_end(until_close.as_bytes()).unwrap(),
            policy.as_bytes()
        );
    }

    #[test]
    fn redirects_errors_and_oversized_bodies_fail() {
        let redirect = b"HTTP/1.1 301 Moved\r\nLocation: https://elsewhere.test/\r\n\r\n";
        assert!(
            matches!(read_response(redirect), Err(FetchFailure::Fetch(t)) if t.contains("301"))
        );
        let big = format!(
            "HTTP/1.1 200 OK\r\nContent-Length: {}\r\n\r\n",
            POLICY_SIZE_LIMIT + 1
        );
        assert!(matches!(
            read_response(big.as_bytes()),
            Err(FetchFailure::Invalid(_))
        ));
        let endless = format!(
            "HTTP/1.1 200 OK\r\n\r\n{}",
            "x".repeat(POLICY_SIZE_LIMIT + 1)
        );
        assert!(matches!(
            read_response(endless.as_bytes()),
            Err(FetchFailure::Invalid(_))
        ));
        let big_chunk = format!(
            "HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n{:x}\r\n",
            POLICY_SIZE_LIMIT + 1
        );
        assert!(matches!(
            read_response(big_chunk.as_bytes()),
            Err(FetchFailure::Invalid(_))
        ));
        let long_head = format!("HTTP/1.1 200 OK\r\nX: {}", "y".repeat(HEAD_LIMIT));
        assert!(matches!(
            read_response(long_head.as_bytes()),
            Err(FetchFailure::Fetch(_))
        ));
        assert!(read_response_at_end(b"HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\nabc").is_err());
    }
}
