//! `postroom dkim keygen` and `show`: signing keys under the tree, their
//! `[[dkim]]` entries in the config, and the DNS records to publish
//! (signing itself is `postroom::delivery::dkim`). `postroom check` asks
//! DNS whether the records are there ([`check_records`]).

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::{Context, bail};
use clap::Subcommand;
use postroom::config::{Config, DkimAlgorithm, DkimKey};
use postroom::delivery::dkim;

#[derive(Subcommand)]
pub enum DkimCommand {
    /// Make a signing key for DOMAIN, add it to the config, and print the
    /// DNS record to publish.
    Keygen {
        domain: String,
        /// The selector (default: ALGORITHM-MONYEAR, e.g. ed25519-dec2026).
        #[arg(long)]
        selector: Option<String>,
        /// ed25519 (RFC 8463) or rsa2048; make one of each to sign twice.
        #[arg(long, default_value = "ed25519", value_parser = ["ed25519", "rsa2048"])]
        algorithm: String,
    },
    /// Print the DNS records of DOMAIN's keys again.
    Show { domain: String },
}

pub fn run(config: Option<PathBuf>, command: DkimCommand) -> anyhow::Result<ExitCode> {
    let config = crate::load_config(config)?;
    match command {
        DkimCommand::Keygen {
            domain,
            selector,
            algorithm,
        } => keygen(&config, &domain.to_ascii_lowercase(), selector, &algorithm),
        DkimCommand::Show { domain } => show(&config, &domain.to_ascii_lowercase()),
    }
}

fn keygen(
    config: &Config,
    domain: &str,
    selector: Option<String>,
    algorithm: &str,
) -> anyhow::Result<ExitCode> {
    let algorithm = match algorithm {
        "rsa2048" => DkimAlgorithm::Rsa2048,
        _ => DkimAlgorithm::Ed25519,
    };
    let selector = selector.unwrap_or_else(|| default_selector(algorithm));
    if config
        .dkim
        .iter()
        .any(|k| k.domain == domain && k.selector == selector)
    {
        bail!("{domain} already has a key with selector {selector}: choose another --selector");
    }
    // The entry is checked by the config's own rules before a key is made.
    let probe = DkimKey {
        domain: domain.to_string(),
        selector: selector.clone(),
        algorithm,
        key: PathBuf::new(),
        arc: None,
    };
    let appended = |text: &str, key: &DkimKey| -> anyhow::Result<String> {
        let mut text = text.to_string();
        if !text.is_empty() && !text.ends_with('\n') {
            text.push('\n');
        }
        text.push_str(&entry(key));
        Config::parse(&text).map_err(|e| anyhow::anyhow!("{e}"))?;
        Ok(text)
    };
    let current = std::fs::read_to_string(&config.file)
        .with_context(|| format!("reading {}", config.file.display()))?;
    appended(&current, &probe)?;

    let key = dkim::write_key(config, domain, &selector, algorithm)?;
    postroom::store::fsutil::edit_locked(&config.file, |text| appended(&text, &key))?;
    let record = dkim::record(config, &key)?;
    postroom::say!(
        "wrote {} and added it to {}",
        config.path(&key.key).display(),
        config.file.display()
    );
    postroom::say!("publish this record in the DNS of {domain}, then run `postroom check`:");
    postroom::say!("{}", dkim::zone_line(&key, &record));
    Ok(ExitCode::SUCCESS)
}

/// The `[[dkim]]` table for a key, as appended to the config.
fn entry(key: &DkimKey) -> String {
    format!(
        "\n[[dkim]]\ndomain = \"{}\"\nselector = \"{}\"\nalgorithm = \"{}\"\nkey = \"{}\"\n",
        key.domain,
        key.selector,
        key.algorithm.name(),
        key.key.display()
    )
}

/// ALGORITHM-MONYEAR: a new name each month, so a key rolled over gets a
/// selector of its own and the old record can stay until mail signed
/// with it is delivered.
fn default_selector(algorithm: DkimAlgorithm) -> String {
    let date = postroom::proto::message::rfc5322_date(postroom::store::fsutil::now_secs());
    // "Wed, 2 Dec 2026 11:22:25 +0000"
    let words: Vec<&str> = date.split_whitespace().collect();
    let (month, year) = (words.get(2).unwrap_or(&""), words.get(3).unwrap_or(&""));
    format!("{}-{}{year}", algorithm.name(), month.to_ascii_lowercase())
}

fn show(config: &Config, domain: &str) -> anyhow::Result<ExitCode> {
    let keys: Vec<&DkimKey> = config.dkim.iter().filter(|k| k.domain == domain).collect();
    if keys.is_empty() {
        bail!("{domain} has no DKIM key: make one with `postroom dkim keygen {domain}`");
    }
    for key in keys {
        let record = dkim::record(config, key)?;
        postroom::say!("{}", dkim::zone_line(key, &record));
    }
    Ok(ExitCode::SUCCESS)
}

/// For `postroom check`: every key's record looked up through the
/// configured resolver. Returns (notices, problems).
pub fn check_records(config: &Config) -> (Vec<String>, Vec<String>) {
    let (mut notices, mut problems) = (Vec::new(), Vec::new());
    if config.dkim.is_empty() {
        return (notices, problems);
    }
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(r) => r,
        Err(e) => {
            problems.push(format!("dkim: cannot start the DNS client: {e}"));
            return (notices, problems);
        }
    };
    let resolver = match postroom::net::dns::resolver(config) {
        Ok(r) => r,
        Err(e) => {
            problems.push(format!("dkim: {e}"));
            return (notices, problems);
        }
    };
    for key in &config.dkim {
        let name = dkim::record_name(key);
        let expected = match dkim::record(config, key) {
            Ok(r) => r,
            Err(e) => {
                problems.push(format!("dkim: {e}"));
                continue;
            }
        };
        let publish = || {
            format!(
                "publish it (`postroom dkim show {}` prints it):\n  {}",
                key.domain,
                dkim::zone_line(key, &expected)
            )
        };
        match runtime.block_on(postroom::net::dns::txt_records(
            &resolver,
            &format!("{name}."),
        )) {
            Ok(found) if found.iter().any(|t| dkim::record_matches(t, &expected)) => {
                notices.push(format!(
                    "dkim: {name} publishes the key of {}",
                    key.key.display()
                ));
            }
            Ok(found) if found.is_empty() => problems.push(format!(
                "dkim: {name} has no record, so mail signed with it fails DKIM; {}",
                publish()
            )),
            Ok(_) => problems.push(format!(
                "dkim: {name} publishes another key than {}; {}",
                key.key.display(),
                publish()
            )),
            Err(e) => problems.push(format!(
                "dkim: {e}; the record could not be checked, try again"
            )),
        }
    }
    (notices, problems)
}
