//! TLS for every server: rustls with the ring provider, PEM files named in
//! the config, and a self-signed pair for fresh trees so TLS works at once.
//!
//! TLS 1.2 and 1.3 only (rustls offers nothing older); `native-tls` is not
//! used here: peers that speak only TLS 1.0/1.1 are an outbound concern,
//! handled by `smtp-send` behind a cargo feature.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};

use crate::config::Config;
use crate::fsutil;

#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    #[error(
        "{file}: {message} (run `postroom init` for a self-signed pair, or point tls.cert and tls.key at PEM files)"
    )]
    File { file: PathBuf, message: String },
    #[error("TLS setup failed: {0}")]
    Setup(String),
}

fn file_error(file: &Path, message: impl ToString) -> TlsError {
    TlsError::File {
        file: file.to_path_buf(),
        message: message.to_string(),
    }
}

/// A server config from a PEM certificate chain and a PEM private key
/// (PKCS#8, PKCS#1 or SEC1).
pub fn server_config(cert: &Path, key: &Path) -> Result<Arc<rustls::ServerConfig>, TlsError> {
    let chain: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(cert)
        .map_err(|e| file_error(cert, e))?
        .collect::<Result<_, _>>()
        .map_err(|e| file_error(cert, e))?;
    if chain.is_empty() {
        return Err(file_error(cert, "no certificate in the file"));
    }
    let private = PrivateKeyDer::from_pem_file(key).map_err(|e| file_error(key, e))?;
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let config = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| TlsError::Setup(e.to_string()))?
        .with_no_client_auth()
        .with_single_cert(chain, private)
        .map_err(|e| file_error(key, format!("does not fit the certificate: {e}")))?;
    Ok(Arc::new(config))
}

/// The acceptor for the config's certificate and key.
pub fn acceptor(config: &Config) -> Result<tokio_rustls::TlsAcceptor, TlsError> {
    Ok(tokio_rustls::TlsAcceptor::from(server_config(
        &config.tls_cert(),
        &config.tls_key(),
    )?))
}

/// Writes a self-signed certificate for `hostname`, `localhost`, 127.0.0.1
/// and ::1, and its key (mode 0600), creating folders as needed.
pub fn generate_self_signed(hostname: &str, cert: &Path, key: &Path) -> Result<(), TlsError> {
    let names = vec![
        hostname.to_string(),
        "localhost".to_string(),
        "127.0.0.1".to_string(),
        "::1".to_string(),
    ];
    let pair =
        rcgen::generate_simple_self_signed(names).map_err(|e| TlsError::Setup(e.to_string()))?;
    for path in [cert, key] {
        std::fs::create_dir_all(fsutil::parent_of(path)).map_err(|e| file_error(path, e))?;
    }
    // The key is written under a mode that never lets others read it, even
    // for the moment before a chmod.
    write_private(key, pair.key_pair.serialize_pem().as_bytes())?;
    fsutil::write_atomic(cert, pair.cert.pem().as_bytes()).map_err(|e| file_error(cert, e))?;
    Ok(())
}

fn write_private(path: &Path, data: &[u8]) -> Result<(), TlsError> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let tmp = path.with_extension(format!("tmp.{}", fsutil::unique_suffix()));
    let result = (|| -> std::io::Result<()> {
        let mut file = std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(&tmp)?;
        file.write_all(data)?;
        file.sync_all()?;
        std::fs::rename(&tmp, path)?;
        fsutil::fsync_dir(fsutil::parent_of(path))
    })();
    if result.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    result.map_err(|e| file_error(path, e))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    #[test]
    fn self_signed_pair_loads() {
        let dir = tempfile::tempdir().unwrap();
        let (cert, key) = (
            dir.path().join("tls/cert.pem"),
            dir.path().join("tls/key.pem"),
        );
        generate_self_signed("mx.example.test", &cert, &key).unwrap();
        assert_eq!(
            std::fs::metadata(&key).unwrap().permissions().mode() & 0o777,
            0o600
        );
        server_config(&cert, &key).unwrap();
    }

    #[test]
    fn errors_name_the_file() {
        let dir = tempfile::tempdir().unwrap();
        let cert = dir.path().join("cert.pem");
        std::fs::write(&cert, "not pem").unwrap();
        let e = server_config(&cert, &dir.path().join("key.pem"))
            .unwrap_err()
            .to_string();
        assert!(e.contains("cert.pem") && e.contains("postroom init"), "{e}");
    }
}
