//! Mail to every user (IMail's mailall): `postroom mailall` queues one
//! message, one body with a recipient line per user, and the optional
//! alias `[mailall] alias` (`everyone@DOMAIN`) does the same for mail sent
//! to it, but only from the senders `[mailall] senders` lists, and only
//! when the sender is who it says (logged in, local, or from a relay
//! network): anyone else gets 5.7.1. The alias is not in the aliases file
//! because it follows the users file as it is now.

use crate::config::Config;
use crate::directory::aliases::Directory;
use crate::proto::address::{Address, EnvelopeText, ReversePath};
use crate::proto::xtext;
use crate::store::queue::{MAX_FIELD, Recipient, Route};

/// Every user, or those of `domain`, as queue recipients, sorted.
pub fn all_users(directory: &Directory, domain: Option<&str>) -> Vec<Recipient> {
    let users = directory.all_users().unwrap_or_else(|e| {
        // Everyone the file can name is nobody now; the caller says so.
        tracing::error!("{e}");
        Vec::new()
    });
    let mut recipients: Vec<Recipient> = users
        .iter()
        .filter(|u| domain.is_none_or(|d| u.domain().eq_ignore_ascii_case(d)))
        .filter_map(|u| Address::parse(&u.address).ok())
        .map(|address| Recipient::new(Route::Local, address))
        .collect();
    recipients.sort_by_key(|r| r.address.to_string());
    recipients
}

/// What the `everyone` alias makes of a recipient.
#[derive(Debug)]
pub enum Everyone {
    /// Not the alias: resolve it as any other address.
    NotIt,
    /// The alias, from someone not allowed to use it: the reply text.
    Refused(String),
    /// The alias: every user of its domain (none is `NotIt`'s 5.1.1).
    Routes(Vec<Recipient>),
}

/// Whether `rcpt` is the `everyone` alias and what it expands to for this
/// `sender`; `trusted` says the sender address is proven (an
/// authenticated session, a local program, a relay network).
pub fn everyone(
    config: &Config,
    directory: &Directory,
    rcpt: &Address,
    sender: &ReversePath,
    trusted: bool,
) -> Everyone {
    let Some(alias) = config.mailall.alias.as_deref() else {
        return Everyone::NotIt;
    };
    if !rcpt.local_part().eq_ignore_ascii_case(alias) || !directory.is_local_domain(rcpt.domain()) {
        return Everyone::NotIt;
    }
    let listed = sender.address().is_some_and(|s| {
        config
            .mailall
            .senders
            .iter()
            .any(|allowed| allowed.eq_ignore_ascii_case(&s.lookup_key()))
    });
    if !listed {
        return Everyone::Refused(format!(
            "<{rcpt}>: only the senders in mailall.senders may write to everyone"
        ));
    }
    if !trusted {
        return Everyone::Refused(format!("<{rcpt}>: log in (SMTP AUTH) to write to everyone"));
    }
    let orcpt = EnvelopeText::sanitize(
        &format!("rfc822;{}", xtext::encode(&rcpt.to_string())),
        MAX_FIELD,
    );
    let mut routes = all_users(directory, Some(rcpt.domain()));
    for route in &mut routes {
        route.orcpt = Some(orcpt.clone());
    }
    if routes.is_empty() {
        return Everyone::NotIt;
    }
    Everyone::Routes(routes)
}
