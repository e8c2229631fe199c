//! TLS for every postroom server: loading the certificate, and making a
//! self-signed one for a fresh install; and the client side `smtp-send`
//! uses towards other systems.
//!
//! rustls with the ring provider, TLS 1.2 and 1.3 only (rustls's safe
//! defaults). The same acceptor serves STARTTLS and implicit TLS (465, 993,
//! 995); `crate::net` does the handshakes. Errors name the file and say how
//! to fix it, because the person reading them is an admin at a prompt.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::path::{Path, PathBuf};
use std::sync::{Arc, OnceLock};

use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};
use tokio_rustls::TlsAcceptor;

use crate::config::Config;
use crate::store::fsutil;

/// Why TLS could not be set up.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    /// The certificate file is missing, unreadable or holds no certificate.
    #[error(
        "{}: cannot load TLS certificate: {message} (run `postroom init` or point tls.cert at a PEM certificate chain)",
        file.display()
    )]
    Cert { file: PathBuf, message: String },
    /// The key file is missing, unreadable or holds no private key.
    #[error(
        "{}: cannot load TLS private key: {message} (run `postroom init` or point tls.key at a PEM private key: PKCS#8, PKCS#1 or SEC1)",
        file.display()
    )]
    Key { file: PathBuf, message: String },
    /// rustls refused the pair, most often because the key does not belong
    /// to the certificate.
    #[error(
        "{} / {}: {message} (check that tls.key is the key of tls.cert)",
        cert.display(),
        key.display()
    )]
    Mismatch {
        cert: PathBuf,
        key: PathBuf,
        message: String,
    },
    /// Making a self-signed certificate failed.
    #[error("cannot generate a self-signed certificate for {hostname:?}: {message}")]
    Generate { hostname: String, message: String },
    /// Writing a generated certificate or key failed.
    #[error("{}: cannot write: {error} (check the folder exists and is writable)", file.display())]
    Write {
        file: PathBuf,
        #[source]
        error: std::io::Error,
    },
}

/// The two ways `smtp-send` starts TLS (`config::TlsPolicy`).
#[derive(Clone)]
pub struct ClientTls {
    /// Any certificate: opportunistic TLS and `encrypt` (RFC 7435: an
    /// unchecked certificate still beats plaintext, and refusing it would
    /// only push the mail to plaintext).
    pub any_certificate: Arc<rustls::ClientConfig>,
    /// The certificate must chain to a trusted root and name the host.
    pub verified: Arc<rustls::ClientConfig>,
}

/// The rustls error inside the I/O error a TLS connector or acceptor
/// returns, if that is what it was (tokio-rustls wraps it).
pub fn rustls_error(error: &std::io::Error) -> Option<&rustls::Error> {
    error.get_ref()?.downcast_ref::<rustls::Error>()
}

/// Client configs with the system's trusted roots plus `send.ca_file`.
pub fn client_configs(config: &Config) -> Result<ClientTls, TlsError> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut roots = rustls::RootCertStore::empty();
    // A system without a certificate store still gets opportunistic TLS;
    // only `verify` destinations will fail, each saying why.
    let native = rustls_native_certs::load_native_certs();
    for cert in native.certs {
        let _ = roots.add(cert);
    }
    if let Some(file) = &config.send.ca_file {
        let file = config.path(file);
        let certs = CertificateDer::pem_file_iter(&file)
            .and_then(|certs| certs.collect::<Result<Vec<_>, _>>())
            .map_err(|e| TlsError::Cert {
                file: file.clone(),
                message: e.to_string(),
            })?;
        for cert in certs {
            roots.add(cert).map_err(|e| TlsError::Cert {
                file: file.clone(),
                message: e.to_string(),
            })?;
        }
    }
    let builder = || {
        rustls::ClientConfig::builder_with_provider(provider.clone())
            .with_safe_default_protocol_versions()
            .map_err(|e| TlsError::Generate {
                hostname: config.hostname.clone(),
                message: e.to_string(),
            })
    };
    let verified = builder()?
        .with_root_certificates(roots)
        .with_no_client_auth();
    let any_certificate = builder()?
        .dangerous()
        .with_custom_certificate_verifier(Arc::new(AnyCertificate(provider.clone())))
        .with_no_client_auth();
    Ok(ClientTls {
        any_certificate: Arc::new(any_certificate),
        verified: Arc::new(verified),
    })
}

/// Accepts any certificate, but still checks the handshake signatures so
/// the session keys are the peer's (opportunistic TLS).
#[derive(Debug)]
struct AnyCertificate(Arc<rustls::crypto::CryptoProvider>);

impl rustls::client::danger::ServerCertVerifier for AnyCertificate {
    fn verify_server_cert(
        &self,
        _end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &rustls_pki_types::ServerName<'_>,
        _ocsp_response: &[u8],
        _now: rustls_pki_types::UnixTime,
    ) -> Result<rustls::client::danger::ServerCertVerified, rustls::Error> {
        Ok(rustls::client::danger::ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<rustls::SignatureScheme> {
        self.0.signature_verification_algorithms.supported_schemes()
    }
}

/// Loads a PEM certificate chain (leaf first) and a PEM private key into a
/// server config offering TLS 1.2 and 1.3 with the ring provider.
pub fn server_config(cert: &Path, key: &Path) -> Result<Arc<rustls::ServerConfig>, TlsError> {
    let cert_error = |message: String| TlsError::Cert {
        file: cert.to_path_buf(),
        message,
    };
    let chain = CertificateDer::pem_file_iter(cert)
        .map_err(|e| cert_error(e.to_string()))?
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| cert_error(e.to_string()))?;
    if chain.is_empty() {
        return Err(cert_error("no CERTIFICATE section found".into()));
    }
    let private_key = PrivateKeyDer::from_pem_file(key).map_err(|e| TlsError::Key {
        file: key.to_path_buf(),
        message: match e {
            rustls_pki_types::pem::Error::NoItemsFound => "no PRIVATE KEY section found".into(),
            other => other.to_string(),
        },
    })?;
    let mismatch = |e: rustls::Error| TlsError::Mismatch {
        cert: cert.to_path_buf(),
        key: key.to_path_buf(),
        message: e.to_string(),
    };
    let config = rustls::ServerConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .map_err(mismatch)?
    .with_no_client_auth()
    .with_single_cert(chain, private_key)
    .map_err(mismatch)?;
    Ok(Arc::new(config))
}

/// A server's certificate and key, for STARTTLS and implicit TLS: loaded
/// when the server starts ([`ServerTls::load`]), or at the first client
/// that asks ([`ServerTls::deferred`]).
///
/// Loading means parsing the key, and for an ECDSA key deriving its public
/// half: about a sixth of the instructions a plain-text inetd start of
/// smtp-recv runs, for connections most of which never ask for TLS.
#[derive(Clone)]
pub struct ServerTls(Arc<ServerTlsFiles>);

struct ServerTlsFiles {
    cert: PathBuf,
    key: PathBuf,
    /// Set once: the acceptor, or None when the files would not load
    /// (said at warn, once).
    acceptor: OnceLock<Option<TlsAcceptor>>,
}

impl ServerTls {
    /// The config's certificate and key, loaded now.
    pub fn load(config: &Config) -> Result<ServerTls, TlsError> {
        let tls = ServerTls::named(config);
        let _ = tls.0.acceptor.set(Some(tls.read()?));
        Ok(tls)
    }

    /// The config's certificate and key, loaded by the first
    /// [`ServerTls::acceptor`] call: for a process that serves one
    /// plain-text connection. Both files are opened now, so a missing or
    /// unreadable one is reported at start, as [`ServerTls::load`] would;
    /// what is wrong inside them shows at the first STARTTLS, which then
    /// fails as if no certificate were configured.
    pub fn deferred(config: &Config) -> Result<ServerTls, TlsError> {
        let tls = ServerTls::named(config);
        std::fs::File::open(&tls.0.cert).map_err(|e| TlsError::Cert {
            file: tls.0.cert.clone(),
            message: e.to_string(),
        })?;
        std::fs::File::open(&tls.0.key).map_err(|e| TlsError::Key {
            file: tls.0.key.clone(),
            message: e.to_string(),
        })?;
        Ok(tls)
    }

    fn named(config: &Config) -> ServerTls {
        ServerTls(Arc::new(ServerTlsFiles {
            cert: config.tls_cert(),
            key: config.tls_key(),
            acceptor: OnceLock::new(),
        }))
    }

    /// The acceptor, loading the files on the first call of a deferred
    /// one; None when they do not load (the reason logged once, at warn).
    pub fn acceptor(&self) -> Option<TlsAcceptor> {
        self.0
            .acceptor
            .get_or_init(|| match self.read() {
                Ok(acceptor) => Some(acceptor),
                Err(e) => {
                    tracing::warn!("no TLS for this client: {e}");
                    None
                }
            })
            .clone()
    }

    /// Reads and parses the two files.
    fn read(&self) -> Result<TlsAcceptor, TlsError> {
        server_config(&self.0.cert, &self.0.key).map(TlsAcceptor::from)
    }
}

/// Writes a new self-signed certificate for `hostname` (also valid for
/// `localhost`, 127.0.0.1 and ::1, so local clients and tests can verify it)
/// and its private key, creating the folders they go in.
///
/// The key is written with mode 0600 from its first byte: it is created
/// under a temporary name with that mode and renamed into place, so there
/// is no moment when another user could read it. The certificate is valid
/// from January 1st of this year for two years, inside the 825 days some
/// clients (Apple's) accept; run `postroom init` again to renew it.
pub fn generate_self_signed(hostname: &str, cert: &Path, key: &Path) -> Result<(), TlsError> {
    let generate_error = |e: rcgen::Error| TlsError::Generate {
        hostname: hostname.to_string(),
        message: e.to_string(),
    };
    let mut params = rcgen::CertificateParams::new(vec![hostname.to_string(), "localhost".into()])
        .map_err(generate_error)?;
    params.subject_alt_names.extend([
        rcgen::SanType::IpAddress(IpAddr::V4(Ipv4Addr::LOCALHOST)),
        rcgen::SanType::IpAddress(IpAddr::V6(Ipv6Addr::LOCALHOST)),
    ]);
    params
        .distinguished_name
        .push(rcgen::DnType::CommonName, hostname);
    // Two days' margin so a clock just past New Year cannot make the
    // certificate start in the future.
    let year = 1970 + (fsutil::now_secs().saturating_sub(2 * 86400) / 31_556_952) as i32;
    params.not_before = rcgen::date_time_ymd(year, 1, 1);
    params.not_after = rcgen::date_time_ymd(year + 2, 1, 1);
    let key_pair = rcgen::KeyPair::generate().map_err(generate_error)?;
    let certificate = params.self_signed(&key_pair).map_err(generate_error)?;

    let write_error = |file: &Path| {
        let file = file.to_path_buf();
        move |error| TlsError::Write { file, error }
    };
    for file in [cert, key] {
        std::fs::create_dir_all(fsutil::parent_of(file)).map_err(write_error(file))?;
    }
    fsutil::write_secret(key, key_pair.serialize_pem().as_bytes()).map_err(write_error(key))?;
    fsutil::write_atomic(cert, certificate.pem().as_bytes()).map_err(write_error(cert))?;
    Ok(())
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    /// A fresh self-signed certificate for mx.example.test and its key, in
    /// a folder that lives as long as the first value.
    pub(crate) fn generated_pair() -> (tempfile::TempDir, PathBuf, PathBuf) {
        let dir = tempfile::tempdir().unwrap();
        let cert = dir.path().join("cert.pem");
        let key = dir.path().join("key.pem");
        generate_self_signed("mx.example.test", &cert, &key).unwrap();
        (dir, cert, key)
    }

    /// A client config trusting exactly the certificate in `cert`.
    pub(crate) fn client_trusting(cert: &Path) -> Arc<rustls::ClientConfig> {
        let mut roots = rustls::RootCertStore::empty();
        for c in CertificateDer::pem_file_iter(cert).unwrap() {
            roots.add(c.unwrap()).unwrap();
        }
        Arc::new(
            rustls::ClientConfig::builder_with_provider(Arc::new(
                rustls::crypto::ring::default_provider(),
            ))
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_root_certificates(roots)
            .with_no_client_auth(),
        )
    }

    #[test]
    fn generated_key_is_private_and_loads() {
        let dir = tempfile::tempdir().unwrap();
        let cert = dir.path().join("tls/cert.pem");
        let key = dir.path().join("tls/key.pem");
        generate_self_signed("mx.example.test", &cert, &key).unwrap();
        let mode = std::fs::metadata(&key).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o640);
        server_config(&cert, &key).unwrap();
    }

    #[test]
    fn errors_name_the_file_and_the_fix() {
        let dir = tempfile::tempdir().unwrap();
        let cert = dir.path().join("cert.pem");
        let key = dir.path().join("key.pem");
        let e = server_config(&cert, &key).unwrap_err().to_string();
        assert!(e.contains("cert.pem") && e.contains("postroom init"), "{e}");

        std::fs::write(&cert, "not pem\n").unwrap();
        let e = server_config(&cert, &key).unwrap_err().to_string();
        assert!(e.contains("no CERTIFICATE"), "{e}");

        generate_self_signed("a.test", &cert, &key).unwrap();
        let other = dir.path().join("other");
        generate_self_signed("b.test", &other.join("c.pem"), &other.join("k.pem")).unwrap();
        let e = server_config(&cert, &other.join("c.pem"))
            .unwrap_err()
            .to_string();
        assert!(e.contains("no PRIVATE KEY"), "{e}");
        let e = server_config(&cert, &other.join("k.pem"))
            .unwrap_err()
            .to_string();
        assert!(e.contains("tls.key is the key of tls.cert"), "{e}");
    }

    #[tokio::test]
    async fn handshake_over_loopback() {
        let (_dir, cert, key) = generated_pair();
        let acceptor = TlsAcceptor::from(server_config(&cert, &key).unwrap());

        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let server = tokio::spawn(async move {
            let (tcp, _) = listener.accept().await.unwrap();
            let mut tls = acceptor.accept(tcp).await.unwrap();
            let mut hello = [0u8; 5];
            tls.read_exact(&mut hello).await.unwrap();
            tls.write_all(b"world").await.unwrap();
            tls.shutdown().await.unwrap();
            hello
        });

        let connector = tokio_rustls::TlsConnector::from(client_trusting(&cert));
        let tcp = tokio::net::TcpStream::connect(addr).await.unwrap();
        let name = rustls_pki_types::ServerName::try_from("mx.example.test").unwrap();
        let mut tls = connector.connect(name, tcp).await.unwrap();
        tls.write_all(b"hello").await.unwrap();
        let mut reply = Vec::new();
        tls.read_to_end(&mut reply).await.unwrap();
        assert_eq!(reply, b"world");
        assert_eq!(&server.await.unwrap(), b"hello");
    }

    /// A config naming `cert` and `key`.
    fn naming(cert: &Path, key: &Path) -> Config {
        Config::parse(&format!(
            "hostname = \"mx.example.test\"\n[tls]\ncert = {:?}\nkey = {:?}\n",
            cert, key
        ))
        .unwrap()
    }

    #[test]
    fn a_deferred_certificate_loads_at_the_first_ask_and_once() {
        let (dir, cert, key) = generated_pair();

        // Missing files are reported at start, by both.
        let missing = naming(&cert, &dir.path().join("none.pem"));
        assert!(matches!(
            ServerTls::deferred(&missing),
            Err(TlsError::Key { .. })
        ));
        assert!(matches!(
            ServerTls::load(&missing),
            Err(TlsError::Key { .. })
        ));

        // A key that is there but is not one: deferred starts, load does
        // not; the deferred one then has no acceptor to give.
        let junk = dir.path().join("junk.pem");
        std::fs::write(&junk, "not a key\n").unwrap();
        let broken = naming(&cert, &junk);
        assert!(ServerTls::load(&broken).is_err());
        let tls = ServerTls::deferred(&broken).unwrap();
        assert!(tls.acceptor().is_none());

        // A good pair: nothing read until asked, then one acceptor shared.
        let tls = ServerTls::deferred(&naming(&cert, &key)).unwrap();
        assert!(tls.0.acceptor.get().is_none());
        let first = tls.acceptor().unwrap();
        let again = tls.clone().acceptor().unwrap();
        assert!(Arc::ptr_eq(first.config(), again.config()));
        assert!(
            ServerTls::load(&naming(&cert, &key))
                .unwrap()
                .0
                .acceptor
                .get()
                .is_some()
        );
    }
}
