//! `postroom expire`: removes messages older than their folder's age
//! (`[expire]`), for a daily timer (contrib/systemd/postroom-expire.timer,
//! contrib/cron/postroom). Through the mailbox code IMAP uses, so open
//! sessions see the EXPUNGEs and quotas give the bytes back
//! (`store::mailbox::expire`).

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::{Duration, SystemTime};

use clap::Args;
use postroom::config::Config;
use postroom::delivery::quota::human_size;
use postroom::directory::users::{self, User, Users};
use postroom::store::mailbox::{Mailbox, MailboxName, expire};

#[derive(Args)]
pub struct ExpireArgs {
    /// List what would be removed, and remove nothing.
    #[arg(long)]
    dry_run: bool,
    /// Only this user's mailbox.
    #[arg(long, value_name = "ADDRESS")]
    user: Option<String>,
}

pub fn run(config: Option<PathBuf>, args: ExpireArgs) -> anyhow::Result<ExitCode> {
    let config = crate::load_config(config)?;
    if config.expire.is_empty() {
        postroom::say!("nothing expires: the config has no [expire] ages (postroom.toml(5))");
        return Ok(ExitCode::SUCCESS);
    }
    let users = Users::load(&config.users_file())?;
    if let Some(why) = users.unavailable() {
        anyhow::bail!("{why}: restore it before expiring mail");
    }
    let mut chosen: Vec<User> = match &args.user {
        Some(address) => vec![
            users
                .get(address)
                .ok_or_else(|| anyhow::anyhow!("no user {address} (see `postroom user list`)"))?,
        ],
        None => users.list(&config.users_file())?,
    };
    chosen.sort_by(|a, b| a.address.cmp(&b.address));
    let now = SystemTime::now();
    let (mut messages, mut bytes, mut failed) = (0usize, 0u64, false);
    for user in &chosen {
        for (name, older_than) in config.expire.for_user(&user.address) {
            match folder(&config, user, &name, older_than, now, args.dry_run) {
                Ok((n, b)) => {
                    messages += n;
                    bytes += b;
                }
                Err(e) => {
                    // One broken mailbox must not keep the others full.
                    eprintln!("postroom: {} {name}: {e}", user.address);
                    failed = true;
                }
            }
        }
    }
    let verb = if args.dry_run {
        "would remove"
    } else {
        "removed"
    };
    postroom::say!("{verb} {messages} message(s), {} in all", human_size(bytes));
    Ok(if failed {
        ExitCode::FAILURE
    } else {
        ExitCode::SUCCESS
    })
}

/// Expires one folder of one user; (messages, bytes) removed (or that
/// would be, on a dry run).
fn folder(
    config: &Config,
    user: &User,
    name: &str,
    older_than: Duration,
    now: SystemTime,
    dry_run: bool,
) -> anyhow::Result<(usize, u64)> {
    let name = MailboxName::new(name)
        .map_err(|e| anyhow::anyhow!("not a folder name in [expire]: {e}"))?;
    let folder = Mailbox::new(users::maildir_of(config, user)).folder(&name);
    if !folder.exists() {
        return Ok((0, 0));
    }
    let old = expire::old_messages(&folder, older_than, now)?;
    if old.is_empty() {
        return Ok((0, 0));
    }
    let bytes: u64 = old.iter().filter_map(|o| o.size).sum();
    if dry_run {
        for o in &old {
            postroom::say!(
                "{} {} uid {}: in the folder {} day(s), {}",
                user.address,
                name.as_str(),
                o.entry.uid,
                o.age.as_secs() / 86400,
                o.size.map_or_else(|| "size unknown".into(), human_size)
            );
        }
        return Ok((old.len(), bytes));
    }
    let removed = expire::remove(&folder, &old)?;
    postroom::say!(
        "{} {}: removed {} message(s), {}",
        user.address,
        name.as_str(),
        removed.len(),
        human_size(bytes)
    );
    tracing::info!(user = %user.address, folder = %name.as_str(), messages = removed.len(), "expired");
    Ok((removed.len(), bytes))
}
