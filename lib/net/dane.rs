//! DANE for SMTP (RFC 7672): when a recipient domain's MX records and an
//! MX host's `_25._tcp` TLSA records are DNSSEC-validated, that host must
//! show a certificate the TLSA records match, and nothing else counts.
//!
//! Who validates: the name servers of `[dns]`, when `dns.dnssec` says they
//! do (a validating resolver on this host, e.g. unbound). Their AD bit is
//! trusted, as Postfix trusts it under `smtp_dns_support_level = dnssec`.
//! Validating here instead would mean carrying the root trust anchor and
//! its rollovers in every program, and a local validating cache is what
//! every DANE deployment runs anyway; the answer's AD bit is read from a
//! question we ask ourselves (hickory-proto), because the resolver's
//! lookup API does not show it.
//!
//! Matching (RFC 7672 §3.1): DANE-EE (3) records match the server's own
//! certificate (selector 0) or its public key (1), exactly or by SHA-256 or
//! SHA-512, with no name or date check; DANE-TA (2) records name a
//! certificate of the chain the server sends, which then serves as the one
//! trust anchor for an ordinary chain and host name check. PKIX-TA and
//! PKIX-EE (0, 1) are unusable for SMTP (§3.1.3) and ignored.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use hickory_proto::op::{Message, MessageType, OpCode, Query, ResponseCode};
use hickory_proto::rr::{Name, RData, RecordType};
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls_pki_types::{CertificateDer, ServerName, UnixTime};
use sha2::{Digest, Sha256, Sha512};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpStream, UdpSocket};

/// One TLSA record (RFC 6698 §2.1).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Tlsa {
    pub usage: u8,
    pub selector: u8,
    pub matching: u8,
    pub data: Vec<u8>,
}

impl Tlsa {
    /// DANE-TA or DANE-EE with a known selector and matching type.
    pub fn is_usable(&self) -> bool {
        matches!(self.usage, 2 | 3) && self.selector <= 1 && self.matching <= 2
    }

    /// `3 1 1 ab12…`, as a zone file and a TLS report write it.
    pub fn to_text(&self) -> String {
        let hex: String = self.data.iter().map(|b| format!("{b:02x}")).collect();
        format!("{} {} {} {hex}", self.usage, self.selector, self.matching)
    }

    /// Whether this record matches a certificate (its selected part,
    /// hashed as the record says).
    fn matches(&self, cert: &CertificateDer<'_>) -> bool {
        let selected: Vec<u8> = match self.selector {
            0 => cert.as_ref().to_vec(),
            1 => match webpki::EndEntityCert::try_from(cert) {
                Ok(parsed) => parsed.subject_public_key_info().as_ref().to_vec(),
                Err(_) => return false,
            },
            _ => return false,
        };
        let digest = match self.matching {
            0 => selected,
            1 => Sha256::digest(&selected).to_vec(),
            2 => Sha512::digest(&selected).to_vec(),
            _ => return false,
        };
        digest == self.data
    }
}

/// What DNS says about a name, and whether it is validated.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Answer<T> {
    /// Validated (AD): these records, possibly none (a validated
    /// NXDOMAIN or empty answer).
    Secure(Vec<T>),
    /// Not validated: DANE does not apply.
    Insecure,
    /// No usable answer (SERVFAIL, timeout): for a host whose TLSA
    /// records should be there, delivery must wait (RFC 7672 §2.2).
    Failed(String),
}

/// Asks the `[dns]` name servers, in order, one question with the AD bit
/// set (RFC 6840 §5.7), and returns the answer's records of that type,
/// with how long the answer may be kept: the records' smallest TTL, or for
/// no records the SOA's negative TTL (RFC 2308 §5); zero for a failure or
/// an answer that says nothing of it.
async fn ask(
    servers: &[SocketAddr],
    timeout: Duration,
    name: &str,
    record_type: RecordType,
) -> (Answer<RData>, Duration) {
    let Ok(qname) = Name::from_ascii(name) else {
        return (
            Answer::Failed(format!("{name} is not a domain name")),
            Duration::ZERO,
        );
    };
    let mut message = Message::new();
    message
        .set_id(rand::random::<u16>())
        .set_message_type(MessageType::Query)
        .set_op_code(OpCode::Query)
        .set_recursion_desired(true)
        .set_authentic_data(true)
        .add_query(Query::query(qname, record_type));
    let Ok(query) = message.to_vec() else {
        return (
            Answer::Failed(format!("cannot ask about {name}")),
            Duration::ZERO,
        );
    };
    let mut last = format!("no name server for {name} (set [dns] nameservers)");
    for &server in servers {
        let reply = match tokio::time::timeout(timeout, exchange(server, &query)).await {
            Ok(Ok(reply)) => reply,
            Ok(Err(e)) => {
                last = format!("{name} {record_type}: {server}: {e}");
                continue;
            }
            Err(_) => {
                last = format!("{name} {record_type}: {server} did not answer");
                continue;
            }
        };
        let Ok(reply) = Message::from_vec(&reply) else {
            last = format!("{name} {record_type}: {server} sent a broken answer");
            continue;
        };
        if reply.id() != message.id() || reply.message_type() != MessageType::Response {
            last = format!("{name} {record_type}: {server} answered another question");
            continue;
        }
        let records: Vec<&hickory_proto::rr::Record> = reply
            .answers()
            .iter()
            .filter(|r| r.record_type() == record_type)
            .collect();
        let ttl = records
            .iter()
            .map(|r| r.ttl())
            .min()
            .or_else(|| {
                reply.name_servers().iter().find_map(|r| match r.data() {
                    RData::SOA(soa) => Some(r.ttl().min(soa.minimum())),
                    _ => None,
                })
            })
            .unwrap_or(0);
        let ttl = Duration::from_secs(ttl.into());
        return match reply.response_code() {
            ResponseCode::NoError | ResponseCode::NXDomain if reply.authentic_data() => (
                Answer::Secure(records.into_iter().map(|r| r.data().clone()).collect()),
                ttl,
            ),
            ResponseCode::NoError | ResponseCode::NXDomain => (Answer::Insecure, ttl),
            code => (
                Answer::Failed(format!("{name} {record_type}: {code}")),
                Duration::ZERO,
            ),
        };
    }
    (Answer::Failed(last), Duration::ZERO)
}

/// One question and its answer: UDP, and TCP when the answer did not fit.
async fn exchange(server: SocketAddr, query: &[u8]) -> std::io::Result<Vec<u8>> {
    let local = if server.is_ipv6() {
        SocketAddr::from((std::net::Ipv6Addr::UNSPECIFIED, 0))
    } else {
        SocketAddr::from((std::net::Ipv4Addr::UNSPECIFIED, 0))
    };
    let socket = UdpSocket::bind(local).await?;
    socket.connect(server).await?;
    socket.send(query).await?;
    let mut buf = vec![0u8; 4096];
    let n = socket.recv(&mut buf).await?;
    buf.truncate(n);
    // TC bit: the answer was cut; ask again over TCP (RFC 7766).
    if buf.len() > 2 && buf[2] & 0x02 != 0 {
        let mut tcp = TcpStream::connect(server).await?;
        let length = u16::try_from(query.len()).map_err(std::io::Error::other)?;
        tcp.write_all(&length.to_be_bytes()).await?;
        tcp.write_all(query).await?;
        let mut length = [0u8; 2];
        tcp.read_exact(&mut length).await?;
        buf = vec![0u8; u16::from_be_bytes(length) as usize];
        tcp.read_exact(&mut buf).await?;
    }
    Ok(buf)
}

/// Whether a domain's MX records are validated (RFC 7672 §2.2.1: DANE
/// applies only to MX hosts named by a secure MX RRset).
pub async fn mx_is_secure(servers: &[SocketAddr], timeout: Duration, domain: &str) -> bool {
    let name = format!("{}.", domain.trim_end_matches('.'));
    matches!(
        ask(servers, timeout, &name, RecordType::MX).await.0,
        Answer::Secure(_)
    )
}

/// TLSA answers of one run, by host and port, each kept as long as its
/// TTL says: a runner opens many connections to the same MX hosts, and
/// each would otherwise ask again (as MX answers are kept by the
/// resolver's cache). Connections that want the same answer at once share
/// one question. A failure is not kept: the next connection asks.
#[derive(Default)]
pub struct TlsaCache {
    answers: std::sync::Mutex<Answers>,
}

/// Each (host, port)'s answer, once it is in, with when it expires.
type Answers = std::collections::HashMap<(String, u16), Arc<tokio::sync::OnceCell<Kept>>>;
type Kept = (Instant, Answer<Tlsa>);

impl TlsaCache {
    /// The TLSA records of `_PORT._tcp.HOST`, from the cache while their
    /// TTL lasts, else asked of `servers`.
    pub async fn records(
        &self,
        servers: &[SocketAddr],
        timeout: Duration,
        host: &str,
        port: u16,
    ) -> Answer<Tlsa> {
        let key = (host.trim_end_matches('.').to_ascii_lowercase(), port);
        let cell = {
            let mut answers = self.answers.lock().unwrap_or_else(|e| e.into_inner());
            let now = Instant::now();
            // Expired answers go (a question in flight stays), so the map
            // holds only what is current.
            answers.retain(|_, cell| cell.get().is_none_or(|(until, _)| *until > now));
            answers.entry(key.clone()).or_default().clone()
        };
        let (_, answer) = cell
            .get_or_init(|| async {
                let (answer, ttl) = tlsa_records(servers, timeout, &key.0, port).await;
                let keep = match answer {
                    Answer::Failed(_) => Duration::ZERO,
                    _ => ttl,
                };
                (Instant::now() + keep, answer)
            })
            .await;
        answer.clone()
    }
}

/// The TLSA records of `_PORT._tcp.HOST`, and how long they may be kept.
async fn tlsa_records(
    servers: &[SocketAddr],
    timeout: Duration,
    host: &str,
    port: u16,
) -> (Answer<Tlsa>, Duration) {
    let name = format!("_{port}._tcp.{}.", host.trim_end_matches('.'));
    let (answer, ttl) = ask(servers, timeout, &name, RecordType::TLSA).await;
    let answer = match answer {
        Answer::Secure(records) => Answer::Secure(
            records
                .into_iter()
                .filter_map(|data| match data {
                    RData::TLSA(tlsa) => Some(Tlsa {
                        usage: tlsa.cert_usage().into(),
                        selector: tlsa.selector().into(),
                        matching: tlsa.matching().into(),
                        data: tlsa.cert_data().to_vec(),
                    }),
                    _ => None,
                })
                .collect(),
        ),
        Answer::Insecure => Answer::Insecure,
        Answer::Failed(text) => Answer::Failed(text),
    };
    (answer, ttl)
}

/// The certificate error of a DANE peer whose certificate no TLSA record
/// matches: typed, so TLS reports tell it from an ordinary chain failure
/// (`tlsrpt::TlsFailure`).
#[derive(Debug, thiserror::Error)]
#[error("DANE: no TLSA record matches the certificate")]
pub struct TlsaMismatch;

impl From<TlsaMismatch> for rustls::CertificateError {
    fn from(e: TlsaMismatch) -> Self {
        rustls::CertificateError::Other(rustls::OtherError(Arc::new(e)))
    }
}

impl From<TlsaMismatch> for rustls::Error {
    fn from(e: TlsaMismatch) -> Self {
        rustls::Error::InvalidCertificate(e.into())
    }
}

/// A client config that accepts exactly the certificates `records`
/// match (their usable ones; the caller has checked there is one).
pub fn client_config(records: Vec<Tlsa>) -> Result<Arc<rustls::ClientConfig>, rustls::Error> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let verifier = DaneVerifier {
        records: records.into_iter().filter(Tlsa::is_usable).collect(),
        provider: provider.clone(),
    };
    let config = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()?
        .dangerous()
        .with_custom_certificate_verifier(Arc::new(verifier))
        .with_no_client_auth();
    Ok(Arc::new(config))
}

#[derive(Debug)]
struct DaneVerifier {
    records: Vec<Tlsa>,
    provider: Arc<rustls::crypto::CryptoProvider>,
}

impl ServerCertVerifier for DaneVerifier {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        server_name: &ServerName<'_>,
        ocsp_response: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        // DANE-EE: the server's own certificate or key, nothing else
        // checked (RFC 7672 §3.1.1: no name, no dates).
        if self
            .records
            .iter()
            .any(|r| r.usage == 3 && r.matches(end_entity))
        {
            return Ok(ServerCertVerified::assertion());
        }
        // DANE-TA: a certificate the server sent is the trust anchor of
        // an ordinary chain check, host name included (§3.2).
        for anchor in intermediates.iter().chain(std::iter::once(end_entity)) {
            if !self
                .records
                .iter()
                .any(|r| r.usage == 2 && r.matches(anchor))
            {
                continue;
            }
            let mut roots = rustls::RootCertStore::empty();
            if roots.add(anchor.clone().into_owned()).is_err() {
                continue;
            }
            let verifier = rustls::client::WebPkiServerVerifier::builder_with_provider(
                Arc::new(roots),
                self.provider.clone(),
            )
            .build()
            .map_err(|e| rustls::Error::General(e.to_string()))?;
            return verifier.verify_server_cert(
                end_entity,
                intermediates,
                server_name,
                ocsp_response,
                now,
            );
        }
        Err(TlsaMismatch.into())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &rustls::DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(
            message,
            cert,
            dss,
            &self.provider.signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &rustls::DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(
            message,
            cert,
            dss,
            &self.provider.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<rustls::SignatureScheme> {
        self.provider
            .signature_verification_algorithms
            .supported_schemes()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sha256(data: &[u8]) -> Vec<u8> {
        Sha256::digest(data).to_vec()
    }

    /// A CA and a leaf for `name` it signed (DER).
    fn chain(name: &str) -> (CertificateDer<'static>, CertificateDer<'static>, Vec<u8>) {
        let ca_key = rcgen::KeyPair::generate().unwrap();
        let mut ca_params = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
        ca_params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
        let ca = ca_params.self_signed(&ca_key).unwrap();
        let key = rcgen::KeyPair::generate().unwrap();
        let leaf = rcgen::CertificateParams::new(vec![name.to_string()])
            .unwrap()
            .signed_by(&key, &ca, &ca_key)
            .unwrap();
        let spki = key.public_key_der();
        (ca.der().clone(), leaf.der().clone(), spki)
    }

    fn verify(
        records: Vec<Tlsa>,
        leaf: &CertificateDer<'_>,
        chain: &[CertificateDer<'_>],
        name: &str,
    ) -> bool {
        let verifier = DaneVerifier {
            records,
            provider: Arc::new(rustls::crypto::ring::default_provider()),
        };
        verifier
            .verify_server_cert(
                leaf,
                chain,
                &ServerName::try_from(name.to_string()).unwrap(),
                &[],
                UnixTime::now(),
            )
            .is_ok()
    }

    #[test]
    fn dane_ee_matches_the_key_or_the_certificate_whatever_the_name() {
        let (_ca, leaf, spki) = chain("mx.far.test");
        let by_key = Tlsa {
            usage: 3,
            selector: 1,
            matching: 1,
            data: sha256(&spki),
        };
        let by_cert = Tlsa {
            usage: 3,
            selector: 0,
            matching: 1,
            data: sha256(leaf.as_ref()),
        };
        let raw_key = Tlsa {
            usage: 3,
            selector: 1,
            matching: 0,
            data: spki.clone(),
        };
        for record in [by_key.clone(), by_cert, raw_key] {
            assert!(
                verify(vec![record.clone()], &leaf, &[], "other.name.test"),
                "{}",
                record.to_text()
            );
        }
        let wrong = Tlsa {
            usage: 3,
            selector: 1,
            matching: 1,
            data: vec![0; 32],
        };
        assert!(!verify(vec![wrong], &leaf, &[], "mx.far.test"));
        assert!(by_key.to_text().starts_with("3 1 1 "));
    }

    #[test]
    fn dane_ta_anchors_a_chain_that_must_name_the_host() {
        let (ca, leaf, _) = chain("mx.far.test");
        let ta = Tlsa {
            usage: 2,
            selector: 0,
            matching: 1,
            data: sha256(ca.as_ref()),
        };
        assert!(verify(
            vec![ta.clone()],
            &leaf,
            std::slice::from_ref(&ca),
            "mx.far.test"
        ));
        assert!(
            !verify(
                vec![ta.clone()],
                &leaf,
                std::slice::from_ref(&ca),
                "mx.other.test"
            ),
            "name checked"
        );
        assert!(
            !verify(vec![ta], &leaf, &[], "mx.far.test"),
            "the anchor must be sent"
        );
    }

    #[test]
    fn pkix_usages_are_not_usable_for_smtp() {
        let (_ca, leaf, spki) = chain("mx.far.test");
        let pkix = Tlsa {
            usage: 1,
            selector: 1,
            matching: 1,
            data: sha256(&spki),
        };
        assert!(!pkix.is_usable());
        assert!(!verify(vec![pkix], &leaf, &[], "mx.far.test"));
    }
}
