//! ARC sealing of mail we pass on (RFC 8617): Sieve redirects and list
//! posts get one ARC set (ARC-Authentication-Results, ARC-Message-Signature,
//! ARC-Seal) as they enter the queue, made with mail-auth's `ArcSealer`
//! right after DKIM signing (`dkim::sign_staged`), so the set covers the
//! message exactly as `smtp-send` sends it, our DKIM-Signature included.
//! A receiver that trusts us can then see what the message's
//! authentication was when it reached us, before a footer or a subject tag
//! broke the author's DKIM signature.
//!
//! The key: RSA only. RFC 8617 §4.1.3 and §5.1 give each hop one set, one
//! algorithm for all of it, and define rsa-sha256 for it (Ed25519 for ARC
//! is a draft; dkimpy's `arc_sign` makes rsa-sha256 only, and the large
//! receivers verify no other). So a domain's first `rsa2048` key seals
//! (`arc = false` on the key says not to); a domain with only an Ed25519
//! key passes mail on unsealed.
//!
//! The chain validation status (`cv=`) is not worked out here: by now a
//! footer may have broken the previous hop's message signature. It is the
//! `arc=` result `smtp-recv` recorded on arrival, in our own
//! Authentication-Results header ([`result_entry`]): the topmost one whose
//! authserv-id is our host name and that stands above our topmost
//! Received line, where no sender can put one. The same header's payload
//! becomes the ARC-Authentication-Results. Mail with no chain gets `i=1
//! cv=none`; mail with a chain we did not validate (from `mail-inject`,
//! or from `smtp-recv` with `smtp.arc` off) is passed on unsealed, since
//! we cannot say `pass` or `fail` of it. Following RFC 8617 §5.1, a chain
//! whose last seal says `cv=fail` is not sealed again, nor one with 50 sets
//! already (§4.2.1), nor a message we sealed at this hop already (a
//! sealed list post redirected by a member's Sieve rules).

use mail_auth::arc::{ArcSealer, Set};
use mail_auth::common::headers::{Header, HeaderWriter};
use mail_auth::dkim::Canonicalization;
use mail_auth::{ArcOutput, AuthenticatedMessage, AuthenticationResults, DkimResult};

use crate::config::Config;
use crate::delivery::dkim::{self, DkimError, Loaded};
use crate::proto::address::ReversePath;
use crate::proto::message;

/// RFC 8617 §4.2.1: instances run from 1 to 50.
const MAX_SETS: u32 = 50;

/// The `arc=` entry (with its leading `;`) for an Authentication-Results
/// header, from mail-auth's verdict: RFC 8617 knows `pass`, `fail` and
/// `none`, so every way a chain can be wrong (mail-auth's `neutral` for a
/// changed body, `permerror` for a broken record) is `fail`; only a DNS
/// failure stays `temperror` (nobody could tell now).
pub fn result_entry(result: &DkimResult, remote_ip: std::net::IpAddr) -> String {
    let result = match result {
        DkimResult::Neutral(e) | DkimResult::PermError(e) => DkimResult::Fail(e.clone()),
        other => other.clone(),
    };
    AuthenticationResults::new("")
        .with_arc_result(&ArcOutput::default().with_result(result), remote_ip)
        .to_string()
}

/// The ARC set (whole CRLF lines, to go on top) for `message`, which is
/// passed on by us with the DKIM signatures already on it; empty when it
/// is not to be sealed (see the module note).
pub fn seal(config: &Config, sender: &ReversePath, message: &[u8]) -> Result<String, DkimError> {
    match dkim::signer(config, message, sender) {
        Some(signer) => seal_by(config, &signer, message),
        None => Ok(String::new()),
    }
}

/// [`seal`] with the signer worked out (by the DKIM signing of the same
/// message, [`dkim::sign_staged`]).
pub(super) fn seal_by(
    config: &Config,
    signer: &dkim::Signer,
    message: &[u8],
) -> Result<String, DkimError> {
    let head = &message[..message::header_len(message)];
    let domain = &signer.domain;
    let Some(key) = config
        .dkim
        .iter()
        .find(|k| k.domain == *domain && k.seals_arc())
    else {
        tracing::debug!(%domain, "no RSA key to seal ARC with; passed on unsealed");
        return Ok(String::new());
    };
    // Sealed here already: known from the head, before the whole
    // message is parsed.
    let ours = match this_hop(&config.hostname, head) {
        Hop::Sealed => return Ok(String::new()),
        Hop::Verified(payload) => Some(payload),
        Hop::Unverified => None,
    };
    let Some(parsed) = AuthenticatedMessage::parse(message) else {
        return Ok(String::new());
    };
    let chain = !(parsed.as_headers.is_empty()
        && parsed.ams_headers.is_empty()
        && parsed.aar_headers.is_empty());
    let output = if chain {
        let verdict = ours.as_deref().and_then(recorded_result);
        match chain_so_far(&parsed, verdict) {
            Ok(output) => output,
            Err(why) => {
                tracing::info!(%domain, "ARC chain not sealed: {why}");
                return Ok(String::new());
            }
        }
    } else {
        ArcOutput::default()
    };
    // mail-auth writes the authserv-id it is given, then its own results;
    // ours are a header's whole payload, given as the authserv-id. Its
    // whitespace is made single spaces, as relaxed canonicalisation sees
    // it, because the seal signs the payload as written here.
    let payload = ours.unwrap_or_else(|| format!("{}; none", config.hostname));
    let payload = payload.split_whitespace().collect::<Vec<_>>().join(" ");
    let results = AuthenticationResults::new(&payload);
    let mut names = signer.names.clone();
    names.push("DKIM-Signature".into());
    let sign = |k| -> Result<String, String> {
        let set = ArcSealer::from_key(k)
            .domain(key.domain.clone())
            .selector(key.selector.clone())
            .headers(names.iter().map(String::as_str))
            .header_canonicalization(Canonicalization::Relaxed)
            .body_canonicalization(Canonicalization::Relaxed)
            .seal(&parsed, &results, &output)
            .map_err(|e| e.to_string())?;
        Ok(set.to_header())
    };
    let set = match dkim::load(config, key)? {
        Loaded::Rsa(k) => sign(k),
        // `seals_arc` is false for these, and the config refuses `arc = true`.
        Loaded::Ed25519(_) => return Ok(String::new()),
    }
    .map_err(|error| DkimError::Sign {
        domain: domain.clone(),
        error: format!("ARC seal: {error}"),
    })?;
    Ok(fold_results(&set))
}

/// Where this hop stands, read from the top of the header block down to
/// our topmost Received line (`smtp-recv` and `mail-inject` write one; what
/// lies below it came from the sender).
#[derive(Debug, PartialEq, Eq)]
enum Hop {
    /// An ARC-Seal above our own Authentication-Results: we sealed the
    /// message at this hop already.
    Sealed,
    /// Our Authentication-Results payload (authserv-id first).
    Verified(String),
    /// No result of ours: the message was not checked on the way in.
    Unverified,
}

fn this_hop(hostname: &str, head: &[u8]) -> Hop {
    for (name, value) in message::header_fields(head) {
        if name.eq_ignore_ascii_case("Received") {
            break;
        }
        if name.eq_ignore_ascii_case("ARC-Seal") {
            return Hop::Sealed;
        }
        if message::claims_results_of(&name, &value, hostname) {
            return Hop::Verified(value);
        }
    }
    Hop::Unverified
}

/// The `arc=` result in an Authentication-Results payload, if it has one.
/// Only the first entry after the authserv-id is read: `smtp-recv` writes
/// its ARC verdict there, and later entries hold text a sender chose (SPF's
/// comment names the HELO and the MAIL FROM address, which may hold `;`),
/// so `x;arc=pass` in them must never count.
fn recorded_result(payload: &str) -> Option<&str> {
    let entry = payload.split(';').nth(1)?;
    let (method, result) = entry.trim().split_once('=')?;
    method.trim().eq_ignore_ascii_case("arc").then(|| {
        result
            .trim_start()
            .split(|c: char| c.is_whitespace() || c == '(')
            .next()
            .unwrap_or_default()
    })
}

/// The chain as mail-auth's sealer takes it: the sets in order, and the
/// validation result `smtp-recv` recorded. `Err` says why the message is
/// not to be sealed.
fn chain_so_far<'x>(
    parsed: &'x AuthenticatedMessage<'x>,
    verdict: Option<&str>,
) -> Result<ArcOutput<'x>, String> {
    let result = match verdict.map(str::to_ascii_lowercase).as_deref() {
        Some("pass") => DkimResult::Pass,
        Some("fail") => DkimResult::Fail(mail_auth::Error::FailedVerification),
        Some(other) => return Err(format!("validated with the result {other:?} only")),
        None => {
            return Err("not validated on the way in (smtp.arc off, or not from smtp-recv)".into());
        }
    };
    let count = parsed.as_headers.len();
    if parsed.has_arc_errors
        || parsed.ams_headers.len() != count
        || parsed.aar_headers.len() != count
    {
        return Err("a set is malformed or incomplete".into());
    }
    let mut output = ArcOutput::default().with_result(result);
    for ((seal, signature), results) in parsed
        .as_headers
        .iter()
        .zip(&parsed.ams_headers)
        .zip(&parsed.aar_headers)
    {
        let (Ok(s), Ok(m), Ok(r)) = (&seal.header, &signature.header, &results.header) else {
            return Err("a set is malformed".into());
        };
        output = output.with_set(Set {
            signature: Header::new(signature.name, signature.value, m),
            seal: Header::new(seal.name, seal.value, s),
            results: Header::new(results.name, results.value, r),
        });
    }
    let last = output.sets().last().map(|s| s.seal.header.i).unwrap_or(0);
    if !output.can_be_sealed() {
        return Err("the last seal says cv=fail".into());
    }
    if last >= MAX_SETS {
        return Err(format!("{last} sets already (RFC 8617 allows {MAX_SETS})"));
    }
    Ok(output)
}

/// The set with its ARC-Authentication-Results folded after each `;`
/// outside quotes (mail-auth writes it on one line, which can pass 998
/// octets): relaxed canonicalisation, all the seal signs, reads it the same.
fn fold_results(set: &str) -> String {
    let mut out = String::with_capacity(set.len() + 64);
    for line in set.split_inclusive("\r\n") {
        if !line.starts_with("ARC-Authentication-Results:") {
            out.push_str(line);
            continue;
        }
        let mut quoted = false;
        let mut chars = line.chars().peekable();
        while let Some(c) = chars.next() {
            out.push(c);
            match c {
                '"' => quoted = !quoted,
                ';' if !quoted && chars.peek() == Some(&' ') => {
                    chars.next();
                    out.push_str("\r\n\t");
                }
                _ => {}
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::DkimAlgorithm;
    use crate::delivery::dkim::tests::{key_cache, setup};

    const POST: &str = "From: Carol <carol@far.test>\r\nTo: team@example.test\r\nSubject: hello\r\nDate: Wed, 2 Dec 2026 10:00:00 +0000\r\n\r\nA post.\r\n";

    /// The message as `smtp-recv` of mx.example.test would keep it: our
    /// Authentication-Results (with `arc` when given) above our Received.
    fn arrive(message: &[u8], arc: Option<&str>) -> Vec<u8> {
        let mut out = match arc {
            Some(arc) => format!(
                "Authentication-Results: mx.example.test;\r\n\tarc={arc} smtp.remote-ip=192.0.2.1;\r\n\tdkim=none\r\n"
            ),
            None => String::new(),
        };
        out.push_str("Received: from far.test ([192.0.2.1])\r\n\tby mx.example.test (postroom) with ESMTP\r\n\tid x; Wed, 2 Dec 2026 10:00:01 +0000\r\n");
        let mut out = out.into_bytes();
        out.extend_from_slice(message);
        out
    }

    /// What `dkim::sign_staged` commits for mail passed on by the list.
    fn pass_on(config: &Config, message: &[u8]) -> Vec<u8> {
        let sender = ReversePath::parse("team-bounces@example.test").unwrap();
        let mut signed = dkim::signatures(config, &sender, message)
            .unwrap()
            .into_bytes();
        signed.extend_from_slice(message);
        let mut out = seal(config, &sender, &signed).unwrap().into_bytes();
        out.extend_from_slice(&signed);
        out
    }

    /// mail-auth's verdict on the chain, and each seal's `i=` and `cv=`.
    fn verify(config: &Config, message: &[u8]) -> (DkimResult, Vec<String>) {
        let cache = key_cache(config);
        let authenticator =
            mail_auth::MessageAuthenticator::new(Default::default(), Default::default()).unwrap();
        let parsed = AuthenticatedMessage::parse(message).unwrap();
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        let params = mail_auth::Parameters::new(&parsed).with_txt_cache(&cache);
        let output = runtime.block_on(authenticator.verify_arc(params));
        let seals = output
            .sets()
            .iter()
            .map(|s| format!("i={} cv={:?}", s.seal.header.i, s.seal.header.cv))
            .collect();
        (output.result().clone(), seals)
    }

    fn seals(message: &[u8]) -> usize {
        String::from_utf8_lossy(message)
            .matches("\r\nARC-Seal: ")
            .count()
            + usize::from(message.starts_with(b"ARC-Seal: "))
    }

    #[test]
    fn each_hop_adds_one_set_that_verifies_with_our_results_in_it() {
        let (_d, config) = setup(&[DkimAlgorithm::Ed25519, DkimAlgorithm::Rsa2048]);
        let first = pass_on(&config, &arrive(POST.as_bytes(), Some("none")));
        let text = String::from_utf8_lossy(&first);
        assert!(
            text.starts_with("ARC-Seal: i=1; a=rsa-sha256; s=s1; d=example.test; cv=none;"),
            "sealed with the RSA key, the set on top:\n{text}"
        );
        assert!(
            text.contains("ARC-Authentication-Results: i=1;\r\n\tmx.example.test;\r\n\tarc=none smtp.remote-ip=192.0.2.1;\r\n\tdkim=none\r\n"),
            "our results, folded:\n{text}"
        );
        assert!(text.contains("DKIM-Signature: v=1; a=ed25519-sha256"));
        assert_eq!(
            verify(&config, &first),
            (DkimResult::Pass, vec!["i=1 cv=None".into()])
        );

        // Sealed at this hop already (a member's redirect of the sealed
        // post): nothing more.
        assert_eq!(seals(&pass_on(&config, &first)), 1);

        // The next hop, which found the chain good.
        let second = pass_on(&config, &arrive(&first, Some("pass")));
        assert_eq!(
            verify(&config, &second),
            (
                DkimResult::Pass,
                vec!["i=1 cv=None".into(), "i=2 cv=Pass".into()]
            )
        );
        // Our arc=pass lies below our own seal now: sealed here already.
        assert_eq!(seals(&pass_on(&config, &second)), 2);
    }

    #[test]
    fn a_changed_message_is_sealed_fail_once_and_then_left_alone() {
        let (_d, config) = setup(&[DkimAlgorithm::Rsa2048]);
        let first = pass_on(&config, &arrive(POST.as_bytes(), Some("none")));
        let mut changed = first.clone();
        let at = changed.len() - 4;
        changed[at] ^= 1;
        assert_ne!(verify(&config, &changed).0, DkimResult::Pass, "not vacuous");
        let failed = pass_on(&config, &arrive(&changed, Some("fail")));
        let text = String::from_utf8_lossy(&failed);
        assert!(
            text.starts_with("ARC-Seal: i=2; a=rsa-sha256; s=s0; d=example.test; cv=fail;"),
            "{text}"
        );
        assert!(matches!(verify(&config, &failed).0, DkimResult::Fail(_)));
        // RFC 8617 §5.1: a failed chain is not sealed again.
        assert_eq!(seals(&pass_on(&config, &arrive(&failed, Some("fail")))), 2);
        // Nor one we could not judge (a DNS failure on the way in).
        assert_eq!(
            seals(&pass_on(&config, &arrive(&first, Some("temperror")))),
            1
        );
    }

    #[test]
    fn results_not_ours_or_not_made_here_are_not_trusted() {
        let (_d, config) = setup(&[DkimAlgorithm::Rsa2048]);
        let first = pass_on(&config, &arrive(POST.as_bytes(), Some("none")));
        // A chain that came in unchecked (smtp.arc off, or mail-inject).
        assert_eq!(seals(&pass_on(&config, &arrive(&first, None))), 1);
        // A sender's own "Authentication-Results: mx.example.test; arc=pass"
        // lies below our Received line.
        let mut forged = b"Authentication-Results: mx.example.test; arc=pass\r\n".to_vec();
        forged.extend_from_slice(&first);
        assert_eq!(seals(&pass_on(&config, &arrive(&forged, None))), 1);
        // Another host's results above ours do not count either.
        let mut theirs = b"Authentication-Results: mx.far.test; arc=pass\r\n".to_vec();
        theirs.extend_from_slice(&arrive(&first, None));
        assert_eq!(seals(&pass_on(&config, &theirs)), 1);
        // No chain and no results (mail-inject): i=1 cv=none, saying so.
        let local = pass_on(&config, &arrive(POST.as_bytes(), None));
        let text = String::from_utf8_lossy(&local);
        assert!(text.contains("cv=none"), "{text}");
        assert!(
            text.contains("ARC-Authentication-Results: i=1;\r\n\tmx.example.test;\r\n\tnone\r\n"),
            "{text}"
        );
        assert_eq!(verify(&config, &local).0, DkimResult::Pass);
    }

    #[test]
    fn fifty_sets_are_the_most() {
        let (_d, config) = setup(&[DkimAlgorithm::Rsa2048]);
        let mut message = pass_on(&config, &arrive(POST.as_bytes(), Some("none")));
        for _ in 2..=MAX_SETS {
            message = pass_on(&config, &arrive(&message, Some("pass")));
        }
        assert_eq!(seals(&message), 50);
        assert_eq!(verify(&config, &message).0, DkimResult::Pass);
        assert_eq!(
            seals(&pass_on(&config, &arrive(&message, Some("pass")))),
            50
        );
    }

    #[test]
    fn ed25519_keys_do_not_seal_and_cannot_be_told_to() {
        let (_d, config) = setup(&[DkimAlgorithm::Ed25519]);
        let out = pass_on(&config, &arrive(POST.as_bytes(), Some("none")));
        assert_eq!(seals(&out), 0);
        assert!(
            String::from_utf8_lossy(&out).starts_with("DKIM-Signature:"),
            "still signed"
        );
        let key = |algorithm: &str, arc: &str| {
            Config::parse(&format!(
                "hostname = \"mx.example.test\"\n[[dkim]]\ndomain = \"example.test\"\n\
                 selector = \"s\"\nalgorithm = \"{algorithm}\"\nkey = \"k.pem\"\n{arc}"
            ))
        };
        let error = key("ed25519", "arc = true\n").unwrap_err().to_string();
        assert!(error.contains("cannot seal ARC"), "{error}");
        assert!(!key("ed25519", "").unwrap().dkim[0].seals_arc());
        assert!(key("rsa2048", "").unwrap().dkim[0].seals_arc());
        assert!(!key("rsa2048", "arc = false\n").unwrap().dkim[0].seals_arc());
    }

    #[test]
    fn mail_auth_results_become_rfc_8617_results() {
        let ip = std::net::IpAddr::from([192, 0, 2, 1]);
        let e = || mail_auth::Error::FailedBodyHashMatch;
        assert_eq!(
            result_entry(&DkimResult::Pass, ip),
            ";\r\n\tarc=pass smtp.remote-ip=192.0.2.1"
        );
        assert_eq!(
            result_entry(&DkimResult::None, ip),
            ";\r\n\tarc=none smtp.remote-ip=192.0.2.1"
        );
        for r in [
            DkimResult::Neutral(e()),
            DkimResult::PermError(e()),
            DkimResult::Fail(e()),
        ] {
            assert_eq!(
                result_entry(&r, ip),
                ";\r\n\tarc=fail (body hash did not verify) smtp.remote-ip=192.0.2.1"
            );
        }
        assert_eq!(
            recorded_result("mx; arc=fail (x) smtp.remote-ip=1; dkim=pass"),
            Some("fail")
        );
        assert_eq!(recorded_result("mx; arc = pass"), Some("pass"));
        assert_eq!(recorded_result("mx; dkim=pass"), None);
        // A sender's text in a later entry (SPF's comment quotes the HELO
        // name) is never the verdict, whatever it says.
        assert_eq!(
            recorded_result("mx; spf=none (helo x;arc=pass() smtp.helo=x; arc=fail"),
            None
        );
    }
}
