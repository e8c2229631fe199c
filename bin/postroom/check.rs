//! `postroom check`: every problem in the tree, listed at once.
//!
//! It reads everything the servers read (config, users, aliases, domains,
//! the access rules,
//! the TLS key pair, the queue, the maildirs) and reports each problem with
//! its file and line; it exits 1 if there is any. Debris of crashed writers
//! (queue tmp files whose writer is gone, maildir tmp files older than 36
//! hours) is not a problem: it was never acknowledged and nothing reads it.
//! It is reported, and `--fix` removes it.

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::{Duration, SystemTime};

use clap::Args;
use postroom::config::Config;
use postroom::directory::aliases::{self, Directory};
use postroom::proto::address::Address;
use postroom::store::queue::Queue;

/// The Maildir spec's age for tmp/ files that no delivery still writes.
const MAILDIR_TMP_STALE: Duration = Duration::from_secs(36 * 3600);

#[derive(Args)]
pub struct CheckArgs {
    /// Remove the debris of crashed writers.
    #[arg(long)]
    fix: bool,
}

#[derive(Default)]
struct Report {
    problems: Vec<String>,
    /// Risks that do not stop mail today: said, but the exit stays 0.
    warnings: Vec<String>,
    notices: Vec<String>,
}

pub fn run(config: Option<PathBuf>, args: CheckArgs) -> anyhow::Result<ExitCode> {
    let path = Config::locate(config.as_deref());
    let config = match Config::load(&path) {
        Ok(c) => c,
        Err(e) => {
            postroom::say!("problem: {e}");
            return Ok(ExitCode::FAILURE);
        }
    };
    let mut report = Report::default();
    check_files(&config, &mut report);
    check_postmaster(&config, &mut report);
    check_secrets(&config, &mut report);
    check_writable(&config, &mut report);
    check_access(&config, &mut report);
    check_tls(&config, &mut report);
    check_queue(&config, args.fix, &mut report);
    check_mail(&config, args.fix, &mut report);
    let (notices, problems) = crate::dkim::check_records(&config);
    report.notices.extend(notices);
    report.problems.extend(problems);

    for notice in &report.notices {
        postroom::say!("notice: {notice}");
    }
    for warning in &report.warnings {
        postroom::say!("warning: {warning}");
    }
    for problem in &report.problems {
        postroom::say!("problem: {problem}");
    }
    if report.problems.is_empty() {
        postroom::say!("ok: {} is healthy", config.file.display());
        Ok(ExitCode::SUCCESS)
    } else {
        postroom::say!("{} problem(s) found", report.problems.len());
        Ok(ExitCode::FAILURE)
    }
}

/// Users, domains, aliases, and whether every alias resolves.
fn check_files(config: &Config, report: &mut Report) {
    let domains = match postroom::directory::domains::Domains::load(&config.domains_file()) {
        Ok(d) => Some(d),
        Err(e) => {
            report.problems.push(e.to_string());
            None
        }
    };
    match postroom::directory::users::Users::load(&config.users_file()) {
        Ok(users) if users.unavailable().is_some() => {
            let why = users
                .unavailable()
                .map(|w| w.to_string())
                .unwrap_or_default();
            report.problems.push(format!(
                "{}: {why}: mail for local users waits (451 4.3.0, exit 75) and every login \
                 fails until it is restored; if there are really no users, write the line \
                 `{}` in it",
                config.users_file().display(),
                postroom::directory::users::NO_USERS_MARK
            ));
        }
        // The whole text, every line checked, not the index.
        Ok(users) => match (users.list(&config.users_file()), &domains) {
            (Err(e), _) => report.problems.push(e.to_string()),
            (Ok(list), Some(domains)) => {
                for user in list {
                    let domain = user.address.rsplit('@').next().unwrap_or("");
                    if !domains.contains(domain) {
                        report.problems.push(format!(
                            "{}: user {} is in {domain}, which is not a local domain",
                            config.users_file().display(),
                            user.address
                        ));
                    }
                }
            }
            (Ok(_), None) => {}
        },
        Err(e) => report.problems.push(e.to_string()),
    }
    let directory = match Directory::load(config) {
        Ok(d) => d,
        Err(e) => {
            report.problems.push(e.to_string());
            return;
        }
    };
    let list = match aliases::numbered_aliases(&config.aliases_file()) {
        Ok(list) => list,
        Err(e) => {
            report.problems.push(e.to_string());
            return;
        }
    };
    let local_domains: Vec<String> = domains
        .map(|d| d.iter().map(str::to_string).collect())
        .unwrap_or_default();
    for (line, key, _) in list {
        // A bare local part applies in every domain; a catch-all is tried
        // with a name no one has.
        let addresses: Vec<String> = if let Some(domain) = key.strip_prefix('@') {
            vec![format!("postroom-check-nobody@{domain}")]
        } else if key.contains('@') {
            vec![key.clone()]
        } else {
            local_domains.iter().map(|d| format!("{key}@{d}")).collect()
        };
        for text in addresses {
            let Ok(address) = Address::parse(&text) else {
                report.problems.push(format!(
                    "{}:{line}: alias {key:?} is not an address",
                    config.aliases_file().display()
                ));
                continue;
            };
            // Said once above, not for every alias that names a user.
            if let Err(e) = directory.resolve(&address)
                && !matches!(e, aliases::ResolveError::UsersUnavailable(_))
            {
                report.problems.push(format!(
                    "{}:{line}: alias {key}: {e}",
                    config.aliases_file().display()
                ));
            }
        }
    }
}

/// Undeliverable reports go to the postmaster: if that address leads
/// nowhere, failed bounces are dropped without anyone hearing of them.
fn check_postmaster(config: &Config, report: &mut Report) {
    let Ok(directory) = Directory::load(config) else {
        return; // said by check_files
    };
    let Some(postmaster) = postroom::delivery::dsn::postmaster(config) else {
        return; // a bad queue.postmaster is a config error, said at load
    };
    match directory.resolve(&postmaster) {
        Ok(_) | Err(aliases::ResolveError::UsersUnavailable(_)) => {}
        Err(e) => {
            let at = directory
                .postmaster_alias()
                .map(|a| a.to_string())
                .unwrap_or_else(|| format!("postmaster@{}", config.hostname));
            report.warnings.push(format!(
                "the postmaster address {postmaster} is not deliverable ({e}): reports that \
                 cannot be delivered are dropped; `postroom alias add {at} USER` fixes it"
            ));
        }
    }
}

/// Secret files readable by every local user: password hashes, keys,
/// the SRS and list unsubscribe secrets.
fn check_secrets(config: &Config, report: &mut Report) {
    use std::os::unix::fs::PermissionsExt;
    // The users index holds the same password hashes as the users file.
    let mut secrets = vec![
        config.users_file(),
        postroom::directory::index::path_for(&config.users_file()),
        config.tls_key(),
    ];
    secrets.extend(config.dkim.iter().map(|key| config.path(&key.key)));
    if let Some(file) = &config.sieve.srs_secret_file {
        secrets.push(config.path(file));
    }
    // Each list's one-click unsubscribe key (postroom-lists(5)).
    for list in postroom::delivery::lists::List::all(config).unwrap_or_default() {
        secrets.push(postroom::delivery::lists::List::dir_for(config, &list).join("secret"));
    }
    for file in secrets {
        let Ok(meta) = std::fs::metadata(&file) else {
            continue; // a missing file is said where it is read
        };
        let mode = meta.permissions().mode() & 0o7777;
        if mode & 0o004 != 0 {
            report.warnings.push(format!(
                "{} is readable by everyone (mode {mode:04o}): chmod o-rwx {}",
                file.display(),
                file.display()
            ));
        }
    }
}

/// Files and folders that say what runs and where mail goes, writable by
/// users other than the tree's owner (a permissive umask when they were
/// made, or a chmod): anyone who can write the aliases file runs commands
/// as its owner, and anyone who can write a queue or mail folder can
/// plant or remove mail. Postfix's `postfix check` warns the same way.
fn check_writable(config: &Config, report: &mut Report) {
    use std::os::unix::fs::PermissionsExt;
    let mut paths = vec![
        config.file.clone(),
        config.dir.clone(),
        config.users_file(),
        config.aliases_file(),
        config.domains_file(),
        config.access_file(),
        config.mail_dir(),
        config.queue_dir(),
        config.lists_dir(),
        config.state_dir(),
    ];
    if let Ok(entries) = std::fs::read_dir(config.queue_dir()) {
        paths.extend(entries.flatten().map(|e| e.path()));
    }
    for path in paths {
        let Ok(meta) = std::fs::symlink_metadata(&path) else {
            continue; // a missing file is said where it is read
        };
        let mode = meta.permissions().mode() & 0o7777;
        // A sticky world-writable folder (/tmp's kind) is not named here:
        // nothing of the tree should be one, but it is no open door.
        if meta.is_dir() && mode & 0o1000 != 0 {
            continue;
        }
        // Group write may be meant (contrib/web: a web server's CGI in the
        // tree's group); world write never is.
        if mode & 0o002 != 0 {
            report.problems.push(format!(
                "{} is writable by everyone (mode {mode:04o}): chmod go-w {}",
                path.display(),
                path.display()
            ));
        } else if mode & 0o020 != 0 {
            report.warnings.push(format!(
                "{} is writable by its group (mode {mode:04o}): every member of the group can                  change what it holds as the tree's owner; if that is not meant, chmod g-w {}",
                path.display(),
                path.display()
            ));
        }
    }
}

fn check_access(config: &Config, report: &mut Report) {
    if let Err(e) = postroom::directory::access::Access::load(&config.access_file()) {
        report.problems.push(e.to_string());
    }
}

fn check_tls(config: &Config, report: &mut Report) {
    if let Err(e) = postroom::net::tls::server_config(&config.tls_cert(), &config.tls_key()) {
        report.problems.push(format!("tls: {e}"));
    }
}

fn check_queue(config: &Config, fix: bool, report: &mut Report) {
    let queue = Queue::from_config(config);
    for sub in ["tmp", "mess", "log", "todo"] {
        let dir = queue.root().join(sub);
        if !dir.is_dir() {
            report.problems.push(format!(
                "{}: missing (postroom init creates it)",
                dir.display()
            ));
        }
    }
    match queue.debris(fix) {
        Ok(found) if !found.is_empty() => report.notices.push(format!(
            "{} unfinished queue file(s) left by crashed writers in {}{}",
            found.len(),
            queue.root().join("tmp").display(),
            if fix {
                ", removed"
            } else {
                " (never acknowledged; --fix removes them)"
            }
        )),
        Ok(_) => {}
        Err(e) => report.problems.push(e.to_string()),
    }
    match queue.list() {
        Ok(ids) => {
            for id in &ids {
                match queue.read(id) {
                    Ok(message) => {
                        // A message with nothing left to do is normal for
                        // the instant before its runner removes it; it is a
                        // problem only when no runner holds it.
                        let worth_reporting = !message.is_finished()
                            || message.is_torn()
                            || matches!(queue.lock(id), Ok(Some(_)));
                        if worth_reporting
                            && let Some(problem) = crate::queue_cmd::problem(&message)
                        {
                            report
                                .problems
                                .push(format!("queue message {id}: {problem}"));
                        }
                    }
                    Err(postroom::store::queue::QueueError::NotFound(_)) => {}
                    Err(e) => report.problems.push(e.to_string()),
                }
            }
            report
                .notices
                .push(format!("{} message(s) in the queue", ids.len()));
        }
        Err(e) => report.problems.push(e.to_string()),
    }
}

/// Maildir tmp/ files older than 36 hours, in every mailbox of every domain.
fn check_mail(config: &Config, fix: bool, report: &mut Report) {
    let mail = config.mail_dir();
    if !mail.is_dir() {
        report.problems.push(format!(
            "{}: missing (postroom init creates it)",
            mail.display()
        ));
        return;
    }
    let now = SystemTime::now();
    let mut stale = 0;
    let dirs = |p: &std::path::Path| -> Vec<PathBuf> {
        std::fs::read_dir(p)
            .map(|it| {
                it.flatten()
                    .map(|e| e.path())
                    .filter(|p| p.is_dir())
                    .collect()
            })
            .unwrap_or_default()
    };
    for domain in dirs(&mail) {
        for mailbox in dirs(&domain) {
            let mut folders = vec![mailbox.clone()];
            folders.extend(dirs(&mailbox).into_iter().filter(|p| {
                p.file_name()
                    .is_some_and(|n| n.to_string_lossy().starts_with('.'))
            }));
            for folder in folders {
                let Ok(entries) = std::fs::read_dir(folder.join("tmp")) else {
                    continue;
                };
                for entry in entries.flatten() {
                    let old = entry
                        .metadata()
                        .and_then(|m| m.modified())
                        .map(|t| now.duration_since(t).unwrap_or_default() > MAILDIR_TMP_STALE)
                        .unwrap_or(false);
                    if old {
                        stale += 1;
                        if fix {
                            let _ = std::fs::remove_file(entry.path());
                        }
                    }
                }
            }
        }
    }
    if stale > 0 {
        report.notices.push(format!(
            "{stale} maildir tmp file(s) older than 36 hours{}",
            if fix {
                ", removed"
            } else {
                " (--fix removes them)"
            }
        ));
    }
}
