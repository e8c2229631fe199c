//! One SMTP command line as smtp-recv reads it: BDAT (ours), then every
//! other verb through smtp-proto, then the addresses and parameters we
//! parse out of MAIL and RCPT. A parsed value must survive its own
//! rendering.
#![no_main]

use libfuzzer_sys::fuzz_target;
use postroom::proto::address::{Address, EnvelopeText, ReversePath};
use postroom::proto::{smtp, xtext};
use smtp_proto::Request;

fuzz_target!(|line: &[u8]| {
    let _ = smtp::is_clean_command(line);
    let _ = smtp::is_bare_postmaster(line);
    if let Some(Ok(bdat)) = smtp::parse_bdat(line, u64::MAX / 2) {
        let again = format!(
            "BDAT {}{}\r\n",
            bdat.size,
            if bdat.last { " LAST" } else { "" }
        );
        assert_eq!(
            smtp::parse_bdat(again.as_bytes(), u64::MAX / 2),
            Some(Ok(bdat)),
            "{again:?}"
        );
        // A limit below the size is TooBig, never a different chunk.
        if bdat.size > 0 {
            assert_eq!(
                smtp::parse_bdat(line, bdat.size - 1),
                Some(Err(smtp::BdatError::TooBig))
            );
        }
    }
    // smtp-recv hands smtp-proto only clean lines without NUL.
    if !smtp::is_clean_command(line) || smtp::has_nul(line) {
        return;
    }
    let Ok(request) = Request::parse(&mut line.iter()) else {
        return;
    };
    match request.into_owned() {
        Request::Mail { from } => {
            reverse_path(&from.address);
            parameters(from.env_id.as_deref());
        }
        Request::Rcpt { to } => {
            address(&to.address);
            parameters(to.orcpt.as_deref());
        }
        Request::Vrfy { value } | Request::Expn { value } => address(&value),
        Request::Auth {
            initial_response, ..
        } => {
            if let Some((login, password)) = postroom::proto::sasl::decode_plain(&initial_response)
            {
                assert!(!login.contains('\0') && !password.contains('\0'));
            }
        }
        _ => {}
    }
});

fn reverse_path(text: &str) {
    if let Ok(path) = ReversePath::parse(text) {
        let shown = path.to_string();
        assert_eq!(ReversePath::parse(&shown).as_ref(), Ok(&path), "{shown:?}");
    }
}

fn address(text: &str) {
    if let Ok(address) = Address::parse(text) {
        let shown = address.to_string();
        assert_eq!(Address::parse(&shown).as_ref(), Ok(&address), "{shown:?}");
        assert_eq!(
            Address::parse(&address.lookup_key()).map(|a| a.lookup_key()),
            Ok(address.lookup_key())
        );
    }
}

/// ENVID and ORCPT are xtext (RFC 3461 §4): decoding then encoding gives
/// something that decodes to the same text, and what goes into the queue
/// file is one line.
fn parameters(text: Option<&str>) {
    let Some(text) = text else { return };
    if let Some(decoded) = xtext::decode(text) {
        assert_eq!(
            xtext::decode(&xtext::encode(&decoded)).as_ref(),
            Some(&decoded)
        );
    }
    if let Ok(kept) = EnvelopeText::new(text, 500) {
        assert!(!kept.as_str().contains(['\r', '\n']));
    }
}
