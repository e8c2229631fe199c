//! `postroom init`, `user`, `alias`, `domain`, `passwd`: the tree's plain
//! files, edited under their locks (see `fsutil::edit_locked`).

use std::io::{BufRead, Read, Write};
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::{Context, bail};
use clap::{Args, Subcommand};
use postroom::config::Config;
use postroom::delivery::quota::human_size;
use postroom::directory::password::{self, Scheme};
use postroom::directory::{aliases, domains, users};
use postroom::proto::address::Address;

#[derive(Args)]
pub struct InitArgs {
    /// The folder to create the tree in.
    pub dir: PathBuf,
    /// The first local domain.
    #[arg(long, default_value = "example.test")]
    pub domain: String,
    /// This system's host name (default: mail.DOMAIN).
    #[arg(long)]
    pub hostname: Option<String>,
}

#[derive(Subcommand)]
pub enum UserCommand {
    /// Add users: one ADDRESS, or many from --file (one `ADDRESS PASSWORD`
    /// or `ADDRESS {SCHEME}hash` per line; `-` reads stdin).
    Add {
        #[arg(required_unless_present = "file")]
        address: Option<String>,
        /// The password (prefer --password-stdin: arguments show in ps).
        #[arg(long, conflicts_with = "password_stdin")]
        password: Option<String>,
        /// Read the password from the first line of stdin.
        #[arg(long)]
        password_stdin: bool,
        /// Quota, e.g. 500M or 2G.
        #[arg(long)]
        quota: Option<String>,
        /// Many users at once.
        #[arg(long, conflicts_with = "address")]
        file: Option<PathBuf>,
    },
    /// Remove a user (their mail stays on disk).
    Del { address: String },
    /// List users, one per line: address, quota, usage (or --json).
    List {
        /// A JSON array of {address, quota, used, messages}.
        #[arg(long)]
        json: bool,
    },
    /// Set a user's quota (500M, 2G; `none` for no quota of their own).
    Quota { address: String, size: String },
    /// Change a user's password.
    Passwd {
        address: String,
        #[arg(long, conflicts_with = "password_stdin")]
        password: Option<String>,
        #[arg(long)]
        password_stdin: bool,
    },
}

#[derive(Subcommand)]
pub enum AliasCommand {
    /// Add an alias: KEY (address, local part or @domain) to TARGETS.
    Add {
        key: String,
        #[arg(required = true)]
        targets: Vec<String>,
        /// Accept targets that lead nowhere yet (a user added later).
        #[arg(long)]
        force: bool,
    },
    /// Remove an alias.
    Del { key: String },
    /// List aliases.
    List,
}

#[derive(Subcommand)]
pub enum DomainCommand {
    /// Add local domains.
    Add {
        #[arg(required = true)]
        domains: Vec<String>,
    },
    /// Remove a local domain (its mail stays on disk).
    Del { domain: String },
    /// List local domains.
    List,
}

#[derive(Args)]
pub struct PasswdArgs {
    /// The password; read from stdin when absent.
    pub password: Option<String>,
    /// ARGON2ID, SHA512-CRYPT or BLF-CRYPT (default: auth.default_scheme).
    #[arg(long)]
    pub scheme: Option<String>,
}

pub fn init(config: Option<PathBuf>, args: InitArgs) -> anyhow::Result<ExitCode> {
    let config_path = create_tree(
        &args.dir,
        &args.domain,
        args.hostname.as_deref(),
        config.as_deref(),
    )?;
    postroom::say!("created {}", config_path.display());
    postroom::say!(
        "next: postroom --config {} user add USER@{} --password-stdin",
        config_path.display(),
        args.domain
    );
    Ok(ExitCode::SUCCESS)
}

/// Writes a fresh tree; refuses to overwrite an existing config. The
/// config goes in the tree with paths relative to it, or to `config_at`
/// (`/etc/postroom/postroom.toml`) with absolute paths into the tree.
pub fn create_tree(
    dir: &Path,
    domain: &str,
    hostname: Option<&str>,
    config_at: Option<&Path>,
) -> anyhow::Result<PathBuf> {
    if !postroom::proto::address::is_domain_name(domain) {
        bail!("{domain:?} is not a domain name");
    }
    let hostname = hostname
        .map(str::to_string)
        .unwrap_or_else(|| format!("mail.{domain}"));
    let config_path = config_at
        .map(Path::to_path_buf)
        .unwrap_or_else(|| dir.join("postroom.toml"));
    if config_path.exists() {
        bail!(
            "{} exists already; remove it or choose another folder",
            config_path.display()
        );
    }
    std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    let dir = &std::path::absolute(dir)?;
    // In the tree the paths stay relative, so the tree can move; a config
    // kept elsewhere names them in full.
    let place = |name: &str| -> String {
        let path = if config_at.is_some() {
            dir.join(name).display().to_string()
        } else {
            name.to_string()
        };
        toml::Value::String(path).to_string()
    };
    let config_text = format!(
        "# postroom configuration: see postroom.toml(5).\n\
         # Relative paths are relative to this file's folder.\n\
         hostname = \"{hostname}\"\n\n\
         [paths]\nusers = {users}\naliases = {aliases}\ndomains = {domains}\naccess = {access}\n\
         mail = {mail}\nqueue = {queue}\nlists = {lists}\nstate = {state}\n\n\
         [tls]\ncert = {cert}\nkey = {key}\n\n\
         [limits]\nmessage_size = \"35M\"\nrecipients = 1000\nidle_timeout = \"5m\"\n\n\
         [auth]\n# Where passwords may cross without TLS: never, loopback (the default) or always.\n# plaintext = \"loopback\"\n",
        users = place("users"),
        aliases = place("aliases"),
        domains = place("domains"),
        access = place("access"),
        mail = place("mail"),
        queue = place("queue"),
        lists = place("lists"),
        state = place("state"),
        cert = place("tls/cert.pem"),
        key = place("tls/key.pem"),
    );
    let files = [
        (
            "users",
            format!(
                "# user@domain:{{SCHEME}}hash:uid:gid::home::extra  (postroom-users(5))\n\
                 {} yet (postroom user add removes this line)\n",
                users::NO_USERS_MARK
            ),
        ),
        (
            "aliases",
            "# address: target, target  (postroom-aliases(5))\n".to_string(),
        ),
        (
            "domains",
            format!("# local domains, one per line\n{domain}\n"),
        ),
        (
            "access",
            "# allow/deny rules and the kill file (postroom.toml(5))\n".to_string(),
        ),
    ];
    for (name, text) in files {
        // Password hashes are secret; the rest is for anyone to read.
        if name == "users" {
            postroom::store::fsutil::write_secret(&dir.join(name), text.as_bytes())?;
        } else {
            postroom::store::fsutil::write_atomic(&dir.join(name), text.as_bytes())?;
        }
    }
    for sub in ["mail", "lists", "state"] {
        std::fs::create_dir_all(dir.join(sub))?;
    }
    std::fs::create_dir_all(dir.join("mail").join(domain))?;
    postroom::store::queue::Queue::new(dir.join("queue")).create()?;
    postroom::net::tls::generate_self_signed(
        &hostname,
        &dir.join("tls/cert.pem"),
        &dir.join("tls/key.pem"),
    )?;
    // The config goes last: its presence means the tree is complete.
    std::fs::create_dir_all(postroom::store::fsutil::parent_of(&config_path))?;
    postroom::store::fsutil::write_atomic(&config_path, config_text.as_bytes())?;
    Ok(config_path)
}

fn read_password(given: Option<String>, from_stdin: bool) -> anyhow::Result<String> {
    if let Some(p) = given {
        return Ok(p);
    }
    if !from_stdin {
        bail!("give --password or --password-stdin");
    }
    let mut line = String::new();
    std::io::stdin().lock().read_line(&mut line)?;
    let password = line.trim_end_matches(['\r', '\n']).to_string();
    if password.is_empty() {
        bail!("empty password on stdin");
    }
    Ok(password)
}

fn scheme_of(config: &Config, name: Option<&str>) -> anyhow::Result<Scheme> {
    let name = name.unwrap_or(&config.auth.default_scheme);
    Scheme::parse(name).with_context(|| {
        format!("unknown scheme {name:?}: use ARGON2ID, SHA512-CRYPT or BLF-CRYPT")
    })
}

/// Whether a secret is a hash to store as given (`{SCHEME}…`).
fn is_stored_hash(secret: &str) -> bool {
    secret.starts_with('{') && secret.contains('}')
}

/// A stored hash as given (`{SCHEME}…`), or a fresh hash of a password.
fn hash_or_keep(config: &Config, secret: &str) -> anyhow::Result<String> {
    if is_stored_hash(secret) {
        return Ok(secret.to_string());
    }
    Ok(password::hash(secret, scheme_of(config, None)?)?)
}

pub fn user(config: Option<PathBuf>, command: UserCommand) -> anyhow::Result<ExitCode> {
    let config = crate::load_config(config)?;
    let file = config.users_file();
    match command {
        UserCommand::Add {
            address,
            password,
            password_stdin,
            quota,
            file: list,
        } => {
            let quota = quota
                .map(|q| postroom::config::parse_size(&q))
                .transpose()
                .map_err(anyhow::Error::msg)?;
            let domains = domains::Domains::load(&config.domains_file())?;
            let mut entries = Vec::new();
            if let Some(list) = list {
                let text = if list == Path::new("-") {
                    let mut t = String::new();
                    std::io::stdin().read_to_string(&mut t)?;
                    t
                } else {
                    std::fs::read_to_string(&list)
                        .with_context(|| format!("reading {}", list.display()))?
                };
                let mut lines = Vec::new();
                for (n, line) in text.lines().enumerate() {
                    let line = line.trim();
                    if line.is_empty() || line.starts_with('#') {
                        continue;
                    }
                    let (addr, secret) = line
                        .split_once(char::is_whitespace)
                        .with_context(|| format!("line {}: expected ADDRESS PASSWORD", n + 1))?;
                    lines.push((n + 1, addr, secret.trim()));
                }
                entries = new_users(&config, &domains, &lines, quota)?;
            } else {
                let address = address.unwrap_or_default();
                let secret = read_password(password, password_stdin)?;
                entries.push(new_user(&config, &domains, &address, &secret, quota)?);
            }
            users::add_users(&file, &entries)?;
            // One user gets a maildir now, so the admin sees it; bulk adds
            // leave that to the first delivery or login, which create it.
            for entry in entries.iter().filter(|_| entries.len() == 1) {
                let maildir = postroom::store::maildir::Maildir::new(
                    config
                        .mail_dir()
                        .join(entry.address.domain())
                        .join(entry.address.local_part().to_lowercase()),
                );
                maildir.create()?;
            }
            postroom::say!("added {} user(s)", entries.len());
        }
        UserCommand::Del { address } => {
            users::remove_user(&file, &address)?;
            postroom::say!(
                "removed {address}; the mail under {} stays",
                config.mail_dir().display()
            );
        }
        UserCommand::List { json } => list_users(&config, json)?,
        UserCommand::Quota { address, size } => {
            let quota = match size.as_str() {
                "none" | "0" => None,
                _ => Some(postroom::config::parse_size(&size).map_err(anyhow::Error::msg)?),
            };
            users::set_quota(&file, &address, quota)?;
            match quota {
                Some(bytes) => postroom::say!("{address}: quota {}", human_size(bytes)),
                None => postroom::say!(
                    "{address}: no quota of their own (delivery.default_quota applies)"
                ),
            }
        }
        UserCommand::Passwd {
            address,
            password,
            password_stdin,
        } => {
            let secret = read_password(password, password_stdin)?;
            users::set_password(&file, &address, &hash_or_keep(&config, &secret)?)?;
            postroom::say!("password changed for {address}");
        }
    }
    Ok(ExitCode::SUCCESS)
}

/// `user list`: one line per user, sorted, with the quota in force (the
/// user's, else `delivery.default_quota`) and what the mailbox holds.
fn list_users(config: &Config, json: bool) -> anyhow::Result<()> {
    let users = users::Users::load(&config.users_file())?;
    let mut sorted = users.list(&config.users_file())?;
    sorted.sort_unstable_by(|a, b| a.address.cmp(&b.address));
    let mut out = std::io::stdout().lock();
    let mut rows = Vec::new();
    for user in &sorted {
        let quota = postroom::delivery::quota::limit_of(config, user);
        let maildir = postroom::store::maildir::Maildir::new(users::maildir_of(config, user));
        // A mailbox not made yet holds nothing; an unreadable one says so.
        let usage = maildir.usage().ok();
        if json {
            rows.push(serde_json::json!({
                "address": user.address,
                "quota": quota,
                "used": usage.map(|u| u.0),
                "messages": usage.map(|u| u.1),
            }));
            continue;
        }
        let used = match usage {
            Some((bytes, messages)) => format!("{} in {messages} message(s)", human_size(bytes)),
            None => "unreadable".to_string(),
        };
        let share = match (quota, usage) {
            (Some(q), Some((bytes, _))) => format!(" ({}%)", bytes.saturating_mul(100) / q),
            _ => String::new(),
        };
        writeln!(
            out,
            "{}  quota {}  used {used}{share}",
            user.address,
            quota.map_or_else(|| "none".to_string(), human_size)
        )?;
    }
    if json {
        writeln!(out, "{}", serde_json::to_string_pretty(&rows)?)?;
    }
    Ok(())
}

/// Many users at once. Hashing is the slow part (Argon2 takes ~28 ms a
/// password, so thousands take minutes): it runs on every core, with a
/// progress bar when stderr is a terminal.
fn new_users(
    config: &Config,
    domains: &domains::Domains,
    lines: &[(usize, &str, &str)],
    quota: Option<u64>,
) -> anyhow::Result<Vec<users::NewUser>> {
    use rayon::prelude::*;
    let to_hash = lines.iter().filter(|(_, _, s)| !is_stored_hash(s)).count();
    let bar = if to_hash > 1 {
        let bar = indicatif::ProgressBar::new(to_hash as u64);
        if let Ok(style) = indicatif::ProgressStyle::with_template(
            "hashing passwords {wide_bar} {pos}/{len}, {eta} left",
        ) {
            bar.set_style(style);
        }
        bar.tick();
        bar
    } else {
        indicatif::ProgressBar::hidden()
    };
    let entries = lines
        .par_iter()
        .map(|&(n, addr, secret)| {
            let entry =
                new_user(config, domains, addr, secret, quota).with_context(|| format!("line {n}"));
            if !is_stored_hash(secret) {
                bar.inc(1);
            }
            entry
        })
        .collect::<anyhow::Result<Vec<_>>>();
    bar.finish_and_clear();
    entries
}

fn new_user(
    config: &Config,
    domains: &domains::Domains,
    address: &str,
    secret: &str,
    quota: Option<u64>,
) -> anyhow::Result<users::NewUser> {
    let address = Address::parse(address).with_context(|| format!("{address:?}"))?;
    if !domains.contains(address.domain()) {
        bail!(
            "{address}: {} is not a local domain (postroom domain add {})",
            address.domain(),
            address.domain()
        );
    }
    Ok(users::NewUser {
        address,
        password_hash: hash_or_keep(config, secret)?,
        quota,
    })
}

pub fn alias(config: Option<PathBuf>, command: AliasCommand) -> anyhow::Result<ExitCode> {
    let config = crate::load_config(config)?;
    let file = config.aliases_file();
    match command {
        AliasCommand::Add {
            key,
            targets,
            force,
        } => {
            if !force {
                let directory = aliases::Directory::load(&config)?;
                let problems: Vec<String> = targets
                    .iter()
                    .filter_map(|t| directory.check_target(&key, t).err())
                    .collect();
                if !problems.is_empty() {
                    bail!(
                        "not added: {}; add the user first, or give --force for a target \
                         that comes later",
                        problems.join("; ")
                    );
                }
            }
            aliases::add_alias(&file, &key, &targets)?;
            postroom::say!("{key}: {}", targets.join(", "));
        }
        AliasCommand::Del { key } => {
            aliases::remove_alias(&file, &key)?;
            postroom::say!("removed {key}");
        }
        AliasCommand::List => {
            let mut out = std::io::stdout().lock();
            for (key, targets) in aliases::list_aliases(&file)? {
                writeln!(out, "{key}: {}", targets.join(", "))?;
            }
        }
    }
    Ok(ExitCode::SUCCESS)
}

pub fn domain(config: Option<PathBuf>, command: DomainCommand) -> anyhow::Result<ExitCode> {
    let config = crate::load_config(config)?;
    let file = config.domains_file();
    match command {
        DomainCommand::Add { domains: names } => {
            let names: Vec<String> = names.iter().map(|d| d.to_lowercase()).collect();
            domains::add_domains(&file, &names)?;
            for name in &names {
                std::fs::create_dir_all(config.mail_dir().join(name))?;
            }
            postroom::say!("added {} domain(s)", names.len());
        }
        DomainCommand::Del { domain } => {
            domains::remove_domain(&file, &domain)?;
            postroom::say!("removed {domain}; its mail stays on disk");
        }
        DomainCommand::List => {
            let mut out = std::io::stdout().lock();
            for name in domains::Domains::load(&file)?.iter() {
                writeln!(out, "{name}")?;
            }
        }
    }
    Ok(ExitCode::SUCCESS)
}

pub fn passwd(config: Option<PathBuf>, args: PasswdArgs) -> anyhow::Result<ExitCode> {
    // Hashing needs no tree, but honours the config's default scheme if a
    // config is at hand.
    let path = Config::locate(config.as_deref());
    let default = Config::load(&path)
        .map(|c| c.auth.default_scheme)
        .unwrap_or_else(|_| "ARGON2ID".into());
    let name = args.scheme.unwrap_or(default);
    let scheme = Scheme::parse(&name).with_context(|| {
        format!("unknown scheme {name:?}: use ARGON2ID, SHA512-CRYPT or BLF-CRYPT")
    })?;
    let secret = read_password(args.password, true)?;
    postroom::say!("{}", password::hash(&secret, scheme)?);
    Ok(ExitCode::SUCCESS)
}
