//! DKIM signing of mail that leaves for another host (RFC 6376; Ed25519,
//! RFC 8463), with the `mail-auth` crate (Stalwart's, Apache-2.0 OR MIT).
//!
//! A message is signed once, as it enters the queue ([`sign_staged`], called
//! by `deliver` for every writer: `smtp-recv`, `mail-inject`, and
//! [`submit`](super::submit) for list posts, vacation replies, reports and
//! Sieve redirects). The queue file is immutable afterwards and `smtp-send`
//! sends it as it is, so the signature covers exactly the bytes that leave.
//! The one change `smtp-send` would make, folding a line too long for SMTP
//! (`proto::smtp::DataEncoder`), is made here first, before signing.
//! A signing failure is an error of the enqueue: the writer answers 4xx or
//! exits 75; mail is never sent unsigned for want of its key.
//!
//! What is signed: mail with at least one remote recipient, written by us
//! (an authenticated client, a client in `smtp.relay_networks`, a local
//! injector, or postroom itself; never mail a stranger handed us), whose
//! From domain has a key; failing that, whose envelope sender's domain has
//! one (a list post from an outside author, a redirect with an SRS sender:
//! our signature vouches for the relaying host). Every `[[dkim]]` key of the
//! domain signs, so RSA and Ed25519 keys side by side give two signatures,
//! for verifiers that know only one of them. Canonicalisation is
//! relaxed/relaxed (survives the re-folding of headers and trailing-space
//! changes relays make); From, To, Subject and Date are over-signed (listed
//! once more than they occur), so no one can add a second one after us.
//! Mail we pass on (a Sieve redirect, a list post) is then ARC-sealed over
//! the signed message (`delivery::arc`), in the same rewrite of the file.

use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use base64::Engine;
use mail_auth::common::crypto::{Algorithm, Ed25519Key, RsaKey, Sha256, SigningKey};
use mail_auth::common::headers::{HeaderWriter, Writable};
use mail_auth::dkim::{Canonicalization, DkimSigner};
use rsa::pkcs8::{DecodePrivateKey, EncodePrivateKey, EncodePublicKey};
use rustls_pki_types::PrivateKeyDer;
use rustls_pki_types::pem::PemObject;

use crate::config::{Config, DkimAlgorithm, DkimKey};
use crate::proto::address::ReversePath;
use crate::proto::message;
use crate::proto::smtp::{self, Network};
use crate::store::queue::{self, Envelope, QueueError, Route, Staged};

/// Why a message could not be signed, or a key made or read.
#[derive(Debug, thiserror::Error)]
pub enum DkimError {
    #[error(
        "DKIM key {path}: {error} (check the file and its mode, or make a new key with `postroom dkim keygen`)"
    )]
    Key { path: PathBuf, error: String },
    #[error("DKIM signing for {domain} failed: {error}")]
    Sign { domain: String, error: String },
    #[error("DKIM key generation failed: {0}")]
    Generate(String),
    #[error(transparent)]
    Queue(#[from] QueueError),
}

/// Header fields signed when the message has them.
const SIGNED: [&str; 17] = [
    "From",
    "Sender",
    "Reply-To",
    "To",
    "Cc",
    "Subject",
    "Date",
    "Message-ID",
    "In-Reply-To",
    "References",
    "MIME-Version",
    "Content-Type",
    "Content-Transfer-Encoding",
    "List-Id",
    "List-Post",
    "List-Unsubscribe",
    "List-Unsubscribe-Post",
];

/// Fields signed once more than they occur (over-signing), so one added
/// after us breaks the signature.
const OVER_SIGNED: [&str; 4] = ["From", "To", "Subject", "Date"];

/// Signs `staged` if it should be (see the module note) and returns the
/// message to commit: the same one, or one with the signatures on top
/// (and long lines folded as `smtp-send` would), under the same queue id.
/// Mail `passed_on` (a Sieve redirect, a list post) is also ARC-sealed
/// ([`arc::seal`](super::arc::seal)) over the signed message; signatures
/// and seal are written in one copy.
pub fn sign_staged(config: &Config, staged: Staged, passed_on: bool) -> Result<Staged, DkimError> {
    let envelope = &staged.message.envelope;
    if config.dkim.is_empty()
        || !envelope.recipients.iter().any(|r| r.route == Route::Remote)
        || !written_by_us(config, envelope)
    {
        return Ok(staged);
    }
    let message = queue::read_body(&staged.message)?;
    let folded = smtp::as_sent(&message);
    let message = folded.as_deref().unwrap_or(&message);
    // Worked out once for the signatures and the seal: the seal signs the
    // same fields (and the signatures), for the same domain.
    let Some(signer) = signer(config, message, &envelope.sender) else {
        return Ok(staged);
    };
    let signatures = signatures_by(config, &signer, message)?;
    let seal = if passed_on {
        let mut signed = Vec::with_capacity(signatures.len() + message.len());
        signed.extend_from_slice(signatures.as_bytes());
        signed.extend_from_slice(message);
        super::arc::seal_by(config, &signer, &signed)?
    } else {
        String::new()
    };
    if signatures.is_empty() && seal.is_empty() {
        return Ok(staged);
    }
    let replaced = staged.replace(|out| {
        out.write_all(seal.as_bytes())?;
        out.write_all(signatures.as_bytes())?;
        out.write_all(message)
    })?;
    Ok(replaced)
}

/// The DKIM-Signature fields (whole CRLF lines) for a message from
/// `sender`, one per key of its signing domain; empty when no key is ours.
pub fn signatures(
    config: &Config,
    sender: &ReversePath,
    message: &[u8],
) -> Result<String, DkimError> {
    match signer(config, message, sender) {
        Some(signer) => signatures_by(config, &signer, message),
        None => Ok(String::new()),
    }
}

/// Who signs a message and what: the configured domain whose keys sign
/// (and seal) it, and the `h=` template of the fields they cover.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct Signer {
    pub domain: String,
    pub names: Vec<String>,
}

/// The [`Signer`] of `message` from `sender`, the one place DKIM signing
/// and ARC sealing learn it; `None` when no key of ours is for it.
pub(super) fn signer(config: &Config, message: &[u8], sender: &ReversePath) -> Option<Signer> {
    let head = &message[..message::header_len(message)];
    Some(Signer {
        domain: signing_domain(config, head, sender)?,
        names: signed_names(head),
    })
}

/// [`signatures`] with the signer worked out.
fn signatures_by(config: &Config, signer: &Signer, message: &[u8]) -> Result<String, DkimError> {
    let Signer { domain, names } = signer;
    let mut out = String::new();
    for key in config.dkim.iter().filter(|k| k.domain == *domain) {
        let signature = match load(config, key)? {
            Loaded::Ed25519(k) => sign_with(k, key, names, message),
            Loaded::Rsa(k) => sign_with(k, key, names, message),
        }
        .map_err(|error| DkimError::Sign {
            domain: domain.clone(),
            error,
        })?;
        out.push_str(&signature);
    }
    Ok(out)
}

fn sign_with<K: SigningKey>(
    k: K,
    key: &DkimKey,
    names: &[String],
    message: &[u8],
) -> Result<String, String> {
    let signature = DkimSigner::from_key(k)
        .domain(key.domain.clone())
        .selector(key.selector.clone())
        .headers(names.iter().map(String::as_str))
        .header_canonicalization(Canonicalization::Relaxed)
        .body_canonicalization(Canonicalization::Relaxed)
        .sign(message)
        .map_err(|e| e.to_string())?;
    let mut header = signature.to_header();
    if !header.ends_with("\r\n") {
        header.push_str("\r\n");
    }
    Ok(header)
}

/// The `h=` template: the signed fields the message has, then the
/// over-signed ones again (mail-auth lists a name it finds no further
/// instance of as an empty one, which is what over-signing is).
fn signed_names(head: &[u8]) -> Vec<String> {
    let fields = message::header_fields(head);
    let mut names: Vec<String> = SIGNED
        .iter()
        .filter(|name| fields.iter().any(|(n, _)| n.eq_ignore_ascii_case(name)))
        .map(|name| name.to_string())
        .collect();
    names.extend(OVER_SIGNED.iter().map(|name| name.to_string()));
    names
}

/// The configured domain to sign for: the From domain if we have a key for
/// it, else the envelope sender's.
fn signing_domain(config: &Config, head: &[u8], sender: &ReversePath) -> Option<String> {
    let has_key = |domain: &str| {
        config
            .dkim
            .iter()
            .find(|k| k.domain.eq_ignore_ascii_case(domain))
            .map(|k| k.domain.clone())
    };
    let parsed = mail_parser::MessageParser::default().parse_headers(head);
    let from = parsed
        .as_ref()
        .and_then(|m| m.from())
        .and_then(|a| a.first())
        .and_then(|a| a.address())
        .and_then(|a| a.rsplit_once('@'))
        .map(|(_, domain)| domain.trim_end_matches('.').to_string());
    from.and_then(|d| has_key(&d))
        .or_else(|| sender.address().and_then(|a| has_key(a.domain())))
}

/// Mail we may vouch for: from an authenticated client, a trusted network
/// or this host; not mail a stranger sent to one of our users and an alias
/// forwards.
fn written_by_us(config: &Config, envelope: &Envelope) -> bool {
    envelope.client.is_none() || submitted(config, envelope)
}

/// Mail from a client that logged in, or from one in
/// `smtp.relay_networks` (submission, for `delivery::disclaimer` too).
pub fn submitted(config: &Config, envelope: &Envelope) -> bool {
    if envelope.auth.is_some() {
        return true;
    }
    let Some(client) = &envelope.client else {
        return false;
    };
    let Ok(ip) = client.as_str().parse() else {
        return false;
    };
    config
        .smtp
        .relay_networks
        .iter()
        .filter_map(|n| Network::parse(n).ok())
        .any(|n| n.contains(ip))
}

pub(super) enum Loaded {
    Ed25519(Shared<Ed25519Key>),
    Rsa(Shared<RsaKey<Sha256>>),
}

/// A parsed key shared by every signature made with it in this process.
pub(super) struct Shared<K>(Arc<K>);

impl<K> Clone for Shared<K> {
    fn clone(&self) -> Self {
        Shared(self.0.clone())
    }
}

impl<K: SigningKey> SigningKey for Shared<K> {
    type Hasher = K::Hasher;

    fn sign(&self, input: impl Writable) -> mail_auth::Result<Vec<u8>> {
        self.0.sign(input)
    }

    fn algorithm(&self) -> Algorithm {
        self.0.algorithm()
    }
}

impl Clone for Loaded {
    fn clone(&self) -> Self {
        match self {
            Loaded::Ed25519(k) => Loaded::Ed25519(k.clone()),
            Loaded::Rsa(k) => Loaded::Rsa(k.clone()),
        }
    }
}

/// Keys parsed in this process, each with the file's identity when it was
/// read. Parsing is most of the cost of an Ed25519 signature and a good
/// part of an RSA one (ring checks the key); a `stat` per signature still
/// sees a key replaced on disk at once. Only a cache: nothing another
/// process needs lives here.
static PARSED: Mutex<Vec<(PathBuf, DkimAlgorithm, Stamp, Loaded)>> = Mutex::new(Vec::new());

/// What tells one version of a key file from another.
type Stamp = (u64, u64, i64, i64);

fn stamp(path: &Path) -> std::io::Result<Stamp> {
    use std::os::unix::fs::MetadataExt;
    let m = std::fs::metadata(path)?;
    Ok((
        m.dev(),
        m.ino(),
        m.mtime_nsec() + m.mtime() * 1_000_000_000,
        m.size() as i64,
    ))
}

/// A configured key, parsed (see [`PARSED`]).
pub(super) fn load(config: &Config, key: &DkimKey) -> Result<Loaded, DkimError> {
    let path = config.path(&key.key);
    let bad = |error: String| DkimError::Key {
        path: path.clone(),
        error,
    };
    let now = stamp(&path).map_err(|e| bad(e.to_string()))?;
    let mut parsed = PARSED.lock().unwrap_or_else(|e| e.into_inner());
    if let Some((_, _, _, loaded)) = parsed
        .iter()
        .find(|(p, a, s, _)| *p == path && *a == key.algorithm && *s == now)
    {
        return Ok(loaded.clone());
    }
    let loaded = parse(&path, key.algorithm)?;
    parsed.retain(|(p, a, _, _)| !(*p == path && *a == key.algorithm));
    parsed.push((path, key.algorithm, now, loaded.clone()));
    Ok(loaded)
}

/// Reads and parses a key file.
fn parse(path: &Path, algorithm: DkimAlgorithm) -> Result<Loaded, DkimError> {
    let bad = |error: String| DkimError::Key {
        path: path.to_path_buf(),
        error,
    };
    let pem = std::fs::read(path).map_err(|e| bad(e.to_string()))?;
    let der = PrivateKeyDer::from_pem_slice(&pem)
        .map_err(|e| bad(format!("not a PEM private key: {e}")))?;
    match algorithm {
        DkimAlgorithm::Ed25519 => {
            let PrivateKeyDer::Pkcs8(der) = der else {
                return Err(bad("an Ed25519 key must be PKCS#8".into()));
            };
            Ed25519Key::from_pkcs8_maybe_unchecked_der(der.secret_pkcs8_der())
                .map(|k| Loaded::Ed25519(Shared(Arc::new(k))))
                .map_err(|e| bad(e.to_string()))
        }
        DkimAlgorithm::Rsa2048 => RsaKey::<Sha256>::from_key_der(der)
            .map(|k| Loaded::Rsa(Shared(Arc::new(k))))
            .map_err(|e| bad(e.to_string())),
    }
}

/// A new private key, PKCS#8 PEM.
pub fn generate(algorithm: DkimAlgorithm) -> Result<String, DkimError> {
    let der = match algorithm {
        DkimAlgorithm::Ed25519 => {
            Ed25519Key::generate_pkcs8().map_err(|e| DkimError::Generate(e.to_string()))?
        }
        DkimAlgorithm::Rsa2048 => {
            let key = rsa::RsaPrivateKey::new(&mut rand::rngs::OsRng, 2048)
                .map_err(|e| DkimError::Generate(e.to_string()))?;
            key.to_pkcs8_der()
                .map_err(|e| DkimError::Generate(e.to_string()))?
                .as_bytes()
                .to_vec()
        }
    };
    Ok(pem("PRIVATE KEY", &der))
}

fn pem(label: &str, der: &[u8]) -> String {
    let b64 = base64::engine::general_purpose::STANDARD.encode(der);
    let mut out = format!("-----BEGIN {label}-----\n");
    for line in b64.as_bytes().chunks(64) {
        out.push_str(&String::from_utf8_lossy(line));
        out.push('\n');
    }
    out.push_str(&format!("-----END {label}-----\n"));
    out
}

/// The DKIM key record's text (`v=DKIM1; k=…; p=…`) for a configured key,
/// read from its private key file.
pub fn record(config: &Config, key: &DkimKey) -> Result<String, DkimError> {
    let path = config.path(&key.key);
    let bad = |error: String| DkimError::Key {
        path: path.clone(),
        error,
    };
    let (k, public) = match load(config, key)? {
        Loaded::Ed25519(k) => ("ed25519", k.0.public_key()),
        Loaded::Rsa(_) => {
            // ring gives the bare RSAPublicKey; the record carries the
            // SubjectPublicKeyInfo, which is what every verifier parses.
            let pem = std::fs::read_to_string(&path).map_err(|e| bad(e.to_string()))?;
            let private = rsa::RsaPrivateKey::from_pkcs8_pem(&pem)
                .or_else(|_| {
                    use rsa::pkcs1::DecodeRsaPrivateKey;
                    rsa::RsaPrivateKey::from_pkcs1_pem(&pem)
                })
                .map_err(|e| bad(e.to_string()))?;
            let spki = private
                .to_public_key()
                .to_public_key_der()
                .map_err(|e| bad(e.to_string()))?;
            ("rsa", spki.as_bytes().to_vec())
        }
    };
    let p = base64::engine::general_purpose::STANDARD.encode(public);
    Ok(format!("v=DKIM1; k={k}; p={p}"))
}

/// The DNS name of a key's record.
pub fn record_name(key: &DkimKey) -> String {
    format!("{}._domainkey.{}", key.selector, key.domain)
}

/// The record as a zone file line: TXT strings hold at most 255 octets, so
/// a long key is split into several, which DNS joins again.
pub fn zone_line(key: &DkimKey, record: &str) -> String {
    let strings: Vec<String> = record
        .as_bytes()
        .chunks(255)
        .map(|c| format!("\"{}\"", String::from_utf8_lossy(c)))
        .collect();
    format!("{}. IN TXT ( {} )", record_name(key), strings.join("\n\t"))
}

/// Whether a published record (TXT strings joined) carries `expected`'s
/// key: same key type and same `p=`, whatever the spacing and other tags.
pub fn record_matches(published: &str, expected: &str) -> bool {
    let tags = |text: &str| -> Vec<(String, String)> {
        text.split(';')
            .filter_map(|t| t.split_once('='))
            .map(|(k, v)| {
                let v: String = v.chars().filter(|c| !c.is_whitespace()).collect();
                (k.trim().to_ascii_lowercase(), v)
            })
            .collect()
    };
    let get = |tags: &[(String, String)], name: &str, default: &str| {
        tags.iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.clone())
            .unwrap_or_else(|| default.to_string())
    };
    let (published, expected) = (tags(published), tags(expected));
    let p = get(&published, "p", "");
    !p.is_empty()
        && p == get(&expected, "p", "")
        && get(&published, "k", "rsa").eq_ignore_ascii_case(&get(&expected, "k", "rsa"))
}

/// Writes a new key for `domain` under the tree (`dkim/DOMAIN/SELECTOR.pem`,
/// mode 0640: the tree's owner signs, its group may read, others not) and
/// returns its config entry. Refuses to overwrite an existing file.
pub fn write_key(
    config: &Config,
    domain: &str,
    selector: &str,
    algorithm: DkimAlgorithm,
) -> Result<DkimKey, DkimError> {
    let relative = Path::new("dkim")
        .join(domain)
        .join(format!("{selector}.pem"));
    let path = config.path(&relative);
    let bad = |error: String| DkimError::Key {
        path: path.clone(),
        error,
    };
    let pem = generate(algorithm)?;
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir).map_err(|e| bad(e.to_string()))?;
    }
    use std::os::unix::fs::OpenOptionsExt;
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o640)
        .open(&path)
        .map_err(|e| bad(format!("{e} (choose another --selector)")))?;
    file.write_all(pem.as_bytes())
        .and_then(|()| file.sync_all())
        .map_err(|e| bad(e.to_string()))?;
    Ok(DkimKey {
        domain: domain.to_string(),
        selector: selector.to_string(),
        algorithm,
        key: relative,
        arc: None,
    })
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use crate::proto::address::Address;
    use crate::store::queue::{Queue, Recipient};

    pub(crate) fn setup(algorithms: &[DkimAlgorithm]) -> (tempfile::TempDir, Config) {
        let dir = tempfile::tempdir().unwrap();
        let mut config = Config::parse("hostname = \"mx.example.test\"\n").unwrap();
        config.dir = dir.path().to_path_buf();
        for (n, &algorithm) in algorithms.iter().enumerate() {
            let key = write_key(&config, "example.test", &format!("s{n}"), algorithm).unwrap();
            config.dkim.push(key);
        }
        (dir, config)
    }

    fn remote_envelope(sender: &str) -> Envelope {
        Envelope::new(
            ReversePath::parse(sender).unwrap(),
            vec![Recipient::new(
                Route::Remote,
                Address::parse("bob@far.test").unwrap(),
            )],
        )
    }

    /// The records of every configured key, as a resolver cache, so a
    /// verifier asks no DNS.
    pub(crate) fn key_cache(config: &Config) -> TestTxt {
        use mail_auth::common::parse::TxtRecordParser;
        use mail_auth::common::verify::DomainKey;
        let mut records = std::collections::HashMap::new();
        for k in &config.dkim {
            let text = record(config, k).unwrap();
            let key = std::sync::Arc::new(DomainKey::parse(text.as_bytes()).unwrap());
            for name in [record_name(k), format!("{}.", record_name(k))] {
                records.insert(name, mail_auth::Txt::DomainKey(key.clone()));
            }
        }
        TestTxt(records)
    }

    /// Verifies every signature of `message` with mail-auth, the keys'
    /// records served from a cache, so no DNS is asked.
    pub(crate) fn verify(config: &Config, message: &[u8]) -> Vec<mail_auth::DkimResult> {
        let cache = key_cache(config);
        // Never asked: every record is in the cache.
        let authenticator =
            mail_auth::MessageAuthenticator::new(Default::default(), Default::default()).unwrap();
        let parsed = mail_auth::AuthenticatedMessage::parse(message).unwrap();
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        let params = mail_auth::Parameters::new(&parsed).with_txt_cache(&cache);
        runtime
            .block_on(authenticator.verify_dkim(params))
            .into_iter()
            .map(|o| o.result().clone())
            .collect()
    }

    pub(crate) struct TestTxt(std::collections::HashMap<String, mail_auth::Txt>);

    impl mail_auth::ResolverCache<String, mail_auth::Txt> for TestTxt {
        fn get<Q>(&self, name: &Q) -> Option<mail_auth::Txt>
        where
            String: std::borrow::Borrow<Q>,
            Q: std::hash::Hash + Eq + ?Sized,
        {
            self.0.get(name).cloned()
        }
        fn remove<Q>(&self, _: &Q) -> Option<mail_auth::Txt>
        where
            String: std::borrow::Borrow<Q>,
            Q: std::hash::Hash + Eq + ?Sized,
        {
            None
        }
        fn insert(&self, _: String, _: mail_auth::Txt, _: std::time::Instant) {}
    }

    #[test]
    fn dual_signatures_verify_and_cover_the_fold_smtp_send_makes() {
        let (_d, config) = setup(&[DkimAlgorithm::Ed25519, DkimAlgorithm::Rsa2048]);
        let queue = Queue::from_config(&config);
        let long = "z".repeat(1500);
        let body = format!(
            "From: Ann <ann@example.test>\r\nTo: bob@far.test\r\nSubject: caf\u{e9}\r\n\r\n8-bit caf\u{e9}\r\n{long}\r\n"
        );
        let staged = queue
            .stage(&remote_envelope("ann@example.test"), body.as_bytes())
            .unwrap();
        let id = staged.message.id.clone();
        let signed = sign_staged(&config, staged, false).unwrap();
        assert_eq!(signed.message.id, id, "the queue id stays");
        let bytes = queue::read_body(&signed.message).unwrap();
        let text = String::from_utf8_lossy(&bytes);
        assert!(
            text.starts_with(
                "DKIM-Signature: v=1; a=ed25519-sha256; s=s0; d=example.test; c=relaxed/relaxed;"
            ),
            "{text}"
        );
        assert!(
            text.contains("DKIM-Signature: v=1; a=rsa-sha256; s=s1;"),
            "{text}"
        );
        assert_eq!(smtp::as_sent(&bytes), None, "already as smtp-send sends it");
        let results = verify(&config, &bytes);
        assert_eq!(
            results,
            [mail_auth::DkimResult::Pass, mail_auth::DkimResult::Pass]
        );
        // Each field it has, bottom up, then From, To, Subject and Date
        // once more: a second one added later breaks the signature.
        assert!(
            text.contains("\th=Subject:To:From:From:To:Subject:Date;"),
            "{text}"
        );
        let _ = signed.discard();
    }

    #[test]
    fn only_our_mail_for_another_host_is_signed_and_a_missing_key_refuses() {
        let (d, config) = setup(&[DkimAlgorithm::Ed25519]);
        let queue = Queue::from_config(&config);
        let message = b"From: ann@example.test\r\nTo: bob@far.test\r\n\r\nhi\r\n";
        let signed = |envelope: &Envelope, message: &[u8]| {
            let staged = queue.stage(envelope, message).unwrap();
            let staged = sign_staged(&config, staged, false).unwrap();
            let body = queue::read_body(&staged.message).unwrap();
            staged.discard().unwrap();
            body.starts_with(b"DKIM-Signature:")
        };
        assert!(signed(&remote_envelope("ann@example.test"), message));
        // Someone else's domain in From: signed for the sender's domain
        // (a list post, a redirect), not at all when neither is ours.
        let theirs = b"From: carol@far.test\r\n\r\nhi\r\n";
        assert!(signed(
            &remote_envelope("list-bounces@example.test"),
            theirs
        ));
        assert!(!signed(&remote_envelope("carol@far.test"), theirs));
        // Staying here: nothing to sign.
        let mut local = remote_envelope("ann@example.test");
        local.recipients[0].route = Route::Local;
        assert!(!signed(&local, message));
        // A stranger's message (a client that did not log in, outside the
        // relay networks) is not vouched for, whatever its From says.
        let mut stranger = remote_envelope("ann@example.test");
        stranger.client = Some(crate::proto::address::EnvelopeText::new("192.0.2.7", 100).unwrap());
        assert!(!signed(&stranger, message));
        stranger.auth =
            Some(crate::proto::address::EnvelopeText::new("ann@example.test", 100).unwrap());
        assert!(signed(&stranger, message));

        std::fs::remove_file(d.path().join("dkim/example.test/s0.pem")).unwrap();
        let staged = queue
            .stage(&remote_envelope("ann@example.test"), message)
            .unwrap();
        let error = sign_staged(&config, staged, false).err().unwrap();
        assert!(
            error.to_string().contains("postroom dkim keygen"),
            "{error}"
        );
    }

    #[test]
    fn records_match_on_the_key_whatever_the_spacing() {
        let (_d, config) = setup(&[DkimAlgorithm::Ed25519, DkimAlgorithm::Rsa2048]);
        for key in &config.dkim {
            let text = record(&config, key).unwrap();
            assert!(record_matches(&text, &text));
            assert!(record_matches(
                &text.replace("; ", ";\t").replace("p=", "p = "),
                &text
            ));
            assert!(!record_matches(&text.replace("p=", "p=A"), &text));
            assert!(!record_matches("v=DKIM1; p=", &text));
            let zone = zone_line(key, &text);
            let strings: Vec<&str> = zone.split('"').skip(1).step_by(2).collect();
            assert!(strings.iter().all(|s| s.len() <= 255), "{zone}");
            assert_eq!(strings.concat(), text);
        }
        let ed = record(&config, &config.dkim[0]).unwrap();
        assert!(ed.starts_with("v=DKIM1; k=ed25519; p="), "{ed}");
        let rsa = record(&config, &config.dkim[1]).unwrap();
        // A SubjectPublicKeyInfo of a 2048-bit key: 294 octets, 392 in base64.
        assert_eq!(rsa.split("p=").nth(1).unwrap().len(), 392, "{rsa}");
    }

    #[test]
    fn a_key_replaced_on_disk_is_used_at_once() {
        let (d, config) = setup(&[DkimAlgorithm::Ed25519]);
        let key = &config.dkim[0];
        let before = record(&config, key).unwrap();
        assert_eq!(
            record(&config, key).unwrap(),
            before,
            "parsed once, same key"
        );
        let path = d.path().join("dkim/example.test/s0.pem");
        let fresh = generate(DkimAlgorithm::Ed25519).unwrap();
        crate::store::fsutil::write_atomic(&path, fresh.as_bytes()).unwrap();
        let after = record(&config, key).unwrap();
        assert_ne!(after, before, "the new key, not the one parsed before");
        let message = b"From: ann@example.test\r\n\r\nhi\r\n";
        let sender = ReversePath::parse("ann@example.test").unwrap();
        let signed = format!(
            "{}{}",
            signatures(&config, &sender, message).unwrap(),
            String::from_utf8_lossy(message)
        );
        assert_eq!(
            verify(&config, signed.as_bytes()),
            [mail_auth::DkimResult::Pass]
        );
    }
}
