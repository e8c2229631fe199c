//! Quotas the user and the sender hear about (`[quota]`,
//! `postroom.toml(5)`), as Dovecot's `quota_warning` and the IEMS Quota
//! Agent did:
//!
//! - a delivery that takes a mailbox past a level of `quota.warnings`
//!   (80% and 95% by default) puts one notice in the user's INBOX, once
//!   per crossing: the level last warned about is kept in
//!   `state/quota-warnings/USER`, under its lock, so several runners on
//!   several hosts send it once; when the mailbox falls back below a
//!   level (the user deleted mail), the next crossing warns again;
//! - mail to a full mailbox gets 452 4.2.2 (it waits in the queue) or
//!   552 5.2.2 (it goes back to the sender at once), by `quota.full`.
//!
//! The notice goes straight into the INBOX and is not held to the quota:
//! it must arrive even in the mailbox it warns is full.

use std::io::{Read, Seek, SeekFrom, Write};
use std::path::PathBuf;

use mail_builder::MessageBuilder;

use crate::config::Config;
use crate::config::quota::Full;
use crate::delivery::deliver::Outcome;
use crate::directory::users::{User, Users};
use crate::proto::address::Address;
use crate::store::fsutil::{self, FileLock};
use crate::store::maildir::{Maildir, Message};
use crate::store::queue::{Recipient, Route};

/// The queue outcome for mail to `rcpt` whose mailbox is full.
pub fn full(config: &Config, rcpt: &Address) -> Outcome {
    match config.quota.full {
        Full::Defer => Outcome::Deferred(format!(
            "452 4.2.2 <{rcpt}>: mailbox is full, delivery will be retried"
        )),
        Full::Bounce => Outcome::Failed(format!("552 5.2.2 <{rcpt}>: mailbox is full")),
    }
}

/// At RCPT, for a recipient that reaches exactly one local mailbox with a
/// quota: the check that it is not already full, so the sender hears it
/// from us at once rather than from a bounce later. An alias to several
/// mailboxes is taken for the others (a full one defers or bounces at
/// delivery). Finding the mailbox reads nothing from disk.
pub fn rcpt_check(config: &Config, users: &Users, routes: &[Recipient]) -> Option<FullCheck> {
    let [only] = routes else {
        return None;
    };
    if only.route != Route::Local {
        return None;
    }
    let user = users.get(&only.address.lookup_key())?;
    Some(FullCheck {
        limit: limit_of(config, &user)?,
        maildir: Maildir::new(crate::directory::users::maildir_of(config, &user)),
        address: only.address.clone(),
        full: config.quota.full,
    })
}

/// See [`rcpt_check`].
#[derive(Debug)]
pub struct FullCheck {
    maildir: Maildir,
    limit: u64,
    address: Address,
    full: Full,
}

impl FullCheck {
    /// The reply code, enhanced status and text when the mailbox is full
    /// (reads `maildirsize`: blocking).
    pub fn refusal(&self) -> Option<(u16, &'static str, String)> {
        let (used, _) = self.maildir.quota_usage(self.limit).ok()?;
        if used < self.limit {
            return None;
        }
        let (code, status) = match self.full {
            Full::Defer => (452, "4.2.2"),
            Full::Bounce => (552, "5.2.2"),
        };
        Some((code, status, format!("<{}>: mailbox is full", self.address)))
    }
}

/// The user's quota in bytes: their own, else `delivery.default_quota`;
/// `None` for no quota.
pub fn limit_of(config: &Config, user: &User) -> Option<u64> {
    user.quota
        .or(Some(config.delivery.default_quota))
        .filter(|&q| q > 0)
}

/// The quota of a domain's public folders (the tree `mail/DOMAIN/@public`
/// together): `quota.public`, else `delivery.default_quota`; `None` for
/// no quota. A folder anyone may add to must not fill the disk.
pub fn public_limit(config: &Config) -> Option<u64> {
    config
        .quota
        .public
        .or(Some(config.delivery.default_quota))
        .filter(|&q| q > 0)
}

/// Where the level last warned about is kept for `user`.
fn record_path(config: &Config, user: &User) -> PathBuf {
    config
        .state_dir()
        .join("quota-warnings")
        .join(user.address.to_lowercase())
}

/// After a delivery to `user`'s `maildir`: sends the notice for a level
/// just crossed, and notes a fall back below one. Never fails the
/// delivery: a notice that cannot be sent is logged.
pub fn after_delivery(config: &Config, user: &User, maildir: &Maildir) {
    let Some(limit) = limit_of(config, user) else {
        return;
    };
    if config.quota.warnings.is_empty() {
        return;
    }
    let used = match maildir.quota_usage(limit) {
        Ok((bytes, _)) => bytes,
        Err(e) => {
            tracing::warn!(user = %user.address, "cannot read the quota usage for warnings: {e}");
            return;
        }
    };
    let level = config.quota.level(used, limit);
    let path = record_path(config, user);
    // The common case, a mailbox below every level that was never
    // warned, touches no file.
    if level == 0 && !path.exists() {
        return;
    }
    if let Err(e) = update(config, user, maildir, &path, level, used, limit) {
        tracing::warn!(user = %user.address, "cannot send the quota warning: {e}");
    }
}

fn update(
    config: &Config,
    user: &User,
    maildir: &Maildir,
    path: &std::path::Path,
    level: u8,
    used: u64,
    limit: u64,
) -> Result<(), Box<dyn std::error::Error>> {
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir)?;
    }
    let lock = FileLock::exclusive(path)?;
    let mut file = lock.file();
    let mut text = String::new();
    file.read_to_string(&mut text)?;
    let warned: u8 = text.trim().parse().unwrap_or(0);
    if level == warned {
        return Ok(());
    }
    if level > warned {
        // The notice first: a crash before the record is written sends it
        // twice, never not at all.
        let notice = notice(config, user, level, used, limit)?;
        maildir.deliver(Message {
            prepend: b"",
            body: &mut notice.as_slice(),
            base_name: None,
            search_cur: false,
            as_given: false,
            quota: None,
            end_header: true,
        })?;
        tracing::info!(user = %user.address, level, used, limit, "quota warning sent");
    }
    file.set_len(0)?;
    file.seek(SeekFrom::Start(0))?;
    file.write_all(format!("{level}\n").as_bytes())?;
    Ok(())
}

/// The notice for `level` percent.
fn notice(
    config: &Config,
    user: &User,
    level: u8,
    used: u64,
    limit: u64,
) -> std::io::Result<Vec<u8>> {
    let from = crate::delivery::dsn::postmaster(config)
        .map(|a| a.to_string())
        .unwrap_or_else(|| format!("postmaster@{}", config.hostname));
    let now = fsutil::now_secs();
    let percent = u128::from(used) * 100 / u128::from(limit.max(1));
    let full = match config.quota.full {
        Full::Defer => {
            "new mail will wait for you to make room, and be returned to its senders if you do not"
        }
        Full::Bounce => "new mail will be returned to its senders",
    };
    let text = format!(
        "Your mailbox {address} is {percent}% full: {used} of {limit} used.\r\n\r\n\
         Once it is full, {full}.\r\n\r\n\
         To make room, delete mail you no longer need (the Trash folder does\r\n\
         not count against the quota, but empty it too), or ask your mail\r\n\
         administrator for a larger quota.\r\n",
        address = user.address,
        used = human_size(used),
        limit = human_size(limit),
    );
    MessageBuilder::new()
        .from(("Mail System", from.as_str()))
        .to(user.address.as_str())
        .subject(format!("Your mailbox is {level}% full"))
        .date(now as i64)
        .message_id(format!(
            "quota.{level}.{now}.{}@{}",
            fsutil::unique_suffix(),
            config.hostname
        ))
        .header(
            "Auto-Submitted",
            mail_builder::headers::raw::Raw::new("auto-generated"),
        )
        .text_body(text)
        .write_to_vec()
}

/// `1.5M`, `120K`, `900B`: sizes for people (powers of 1024, one decimal
/// under 100).
pub fn human_size(bytes: u64) -> String {
    const UNITS: [(u64, &str); 3] = [(1 << 30, "G"), (1 << 20, "M"), (1 << 10, "K")];
    for (size, unit) in UNITS {
        if bytes >= size {
            let whole = bytes / size;
            let tenth = (bytes % size) * 10 / size;
            return if tenth == 0 || whole >= 100 {
                format!("{whole}{unit}")
            } else {
                format!("{whole}.{tenth}{unit}")
            };
        }
    }
    format!("{bytes}B")
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::directory::users::Users;
    use std::path::Path;

    #[test]
    fn one_notice_per_crossing() {
        let dir = tempfile::tempdir().unwrap();
        let mut config = Config::parse("hostname = \"mx.example.test\"\n").unwrap();
        config.dir = dir.path().to_path_buf();
        let users = Users::parse(
            "ann@example.test:{PLAIN}x::::::userdb_quota_rule=*:storage=1000B\n",
            Path::new("users"),
        )
        .unwrap();
        let ann = &users.get("ann@example.test").unwrap();
        let maildir = Maildir::new(crate::directory::users::maildir_of(&config, ann));
        let put = |size: usize| {
            let body = format!("Subject: x\n\n{}\n", "x".repeat(size));
            maildir
                .deliver(Message {
                    prepend: b"",
                    body: &mut body.as_bytes(),
                    base_name: None,
                    search_cur: false,
                    as_given: false,
                    quota: Some(1000),
                    end_header: true,
                })
                .unwrap();
        };
        let new = crate::directory::users::maildir_of(&config, ann).join("new");
        let notices = || {
            std::fs::read_dir(&new)
                .unwrap()
                .flatten()
                .filter(|f| {
                    std::fs::read_to_string(f.path())
                        .unwrap()
                        .contains("Subject: Your mailbox is")
                })
                .count()
        };
        put(500);
        after_delivery(&config, ann, &maildir);
        assert_eq!(notices(), 0);
        put(350);
        after_delivery(&config, ann, &maildir);
        assert_eq!(notices(), 1, "past 80%");
        after_delivery(&config, ann, &maildir);
        assert_eq!(notices(), 1, "still past 80%: no second notice");
        // Ann makes room: below every level again, quietly.
        for file in std::fs::read_dir(&new).unwrap().flatten() {
            let text = std::fs::read_to_string(file.path()).unwrap();
            if !text.contains("Subject: Your mailbox is") {
                std::fs::remove_file(file.path()).unwrap();
            }
        }
        std::fs::remove_file(maildir.path().join("maildirsize")).unwrap();
        after_delivery(&config, ann, &maildir);
        assert_eq!(notices(), 1);
        let warned = record_path(&config, ann);
        assert_eq!(std::fs::read_to_string(&warned).unwrap(), "0\n");
        // Crossing again warns again.
        put(150);
        after_delivery(&config, ann, &maildir);
        assert_eq!(notices(), 2, "crossed 80% a second time");
    }

    #[test]
    fn sizes_for_people() {
        assert_eq!(human_size(900), "900B");
        assert_eq!(human_size(1536), "1.5K");
        assert_eq!(human_size(200 << 20), "200M");
    }
}
