//! `postroom tlsrpt send`: the SMTP TLS reports (RFC 8460) of every day
//! smtp-send has finished writing down, one per recipient domain that asks
//! for them in its `_smtp._tls` TXT record, gzipped JSON in a
//! `multipart/report` mail (built by mail-auth), queued like any mail we
//! make (and so DKIM-signed). Meant for a daily timer
//! (contrib/systemd/postroom-tlsrpt.timer, contrib/cron/postroom).

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context;
use clap::Subcommand;
use mail_auth::common::parse::TxtRecordParser;
use mail_auth::mta_sts::{ReportUri, TlsRpt};
use postroom::config::Config;
use postroom::delivery::dsn;
use postroom::delivery::submit::{self, Recipients, Submission, SubmitError, Unresolvable};
use postroom::directory::aliases::Directory;
use postroom::net::tlsrpt;
use postroom::proto::address::{Address, ReversePath};
use postroom::store::fsutil::{self, FileLock};

#[derive(Subcommand)]
pub enum TlsrptCommand {
    /// Send the reports of every finished day (UTC) and remove what was
    /// reported.
    Send {
        /// Print what would be sent to whom; send and remove nothing.
        #[arg(long)]
        dry_run: bool,
    },
}

pub fn run(config: Option<PathBuf>, command: TlsrptCommand) -> anyhow::Result<ExitCode> {
    let config = crate::load_config(config)?;
    match command {
        TlsrptCommand::Send { dry_run } => send(&config, dry_run),
    }
}

fn send(config: &Config, dry_run: bool) -> anyhow::Result<ExitCode> {
    let root = tlsrpt::record_dir(&config.state_dir());
    if !root.is_dir() {
        return Ok(ExitCode::SUCCESS);
    }
    // Two hosts sharing the tree must not both report a day.
    let _lock = FileLock::exclusive(&root.join(".send.lock"))
        .with_context(|| format!("locking {}", root.display()))?;
    let today = tlsrpt::day_of(fsutil::now_secs());
    let mut days: Vec<(String, PathBuf)> = std::fs::read_dir(&root)
        .with_context(|| format!("reading {}", root.display()))?
        .flatten()
        .filter_map(|e| Some((e.file_name().into_string().ok()?, e.path())))
        // Only finished days: today's record is still being written.
        .filter(|(day, path)| is_day(day) && *day < today && path.is_dir())
        .collect();
    days.sort();
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("starting the DNS client")?;
    let resolver = postroom::net::dns::resolver(config)?;
    let directory = Directory::load(config)?;
    let from = dsn::postmaster(config)
        .context("queue.postmaster is not a mail address: set it in the config")?;
    let mut failed = false;
    for (day, folder) in days {
        for entry in std::fs::read_dir(&folder)?.flatten() {
            let Ok(domain) = entry.file_name().into_string() else {
                continue;
            };
            let lines = tlsrpt::read_record(&entry.path())?;
            let record = runtime
                .block_on(postroom::net::dns::txt_records(
                    &resolver,
                    &format!("_smtp._tls.{domain}."),
                ))
                .with_context(|| format!("looking up _smtp._tls.{domain}; run again later"))?;
            let rua = report_addresses(&record);
            if rua.is_empty() {
                println!("{day} {domain}: no _smtp._tls mailto: address; nothing to send");
            } else if dry_run {
                println!(
                    "{day} {domain}: {} sessions, would go to {}",
                    lines.len(),
                    join(&rua)
                );
                continue;
            } else if let Err(e) =
                queue_report(config, &directory, &from, &day, &domain, &lines, &rua)
            {
                eprintln!("postroom: {day} {domain}: {e:#}; kept for the next run");
                failed = true;
                continue;
            } else {
                println!("{day} {domain}: report queued for {}", join(&rua));
            }
            if !dry_run {
                std::fs::remove_file(entry.path())
                    .with_context(|| format!("removing {}", entry.path().display()))?;
            }
        }
        if !dry_run {
            // Empty now, unless a late line came; then the next run sends it.
            let _ = std::fs::remove_dir(&folder);
        }
    }
    Ok(if failed {
        ExitCode::FAILURE
    } else {
        ExitCode::SUCCESS
    })
}

fn is_day(name: &str) -> bool {
    name.len() == 10
        && name.bytes().enumerate().all(|(i, b)| {
            if i == 4 || i == 7 {
                b == b'-'
            } else {
                b.is_ascii_digit()
            }
        })
}

/// The `mailto:` addresses of a domain's TLSRPT record (RFC 8460 §3).
/// `https:` reporting is not done: it is logged and left out.
fn report_addresses(records: &[String]) -> Vec<Address> {
    let mut addresses = Vec::new();
    for record in records.iter().filter(|r| r.starts_with("v=TLSRPTv1")) {
        let Ok(parsed) = TlsRpt::parse(record.as_bytes()) else {
            continue;
        };
        for uri in parsed.rua {
            match uri {
                ReportUri::Mail(address) => {
                    if let Ok(address) = Address::parse(&address) {
                        addresses.push(address);
                    }
                }
                ReportUri::Http(url) => {
                    tracing::info!(%url, "TLS reports over HTTPS are not sent; only mailto:")
                }
            }
        }
    }
    addresses
}

fn join(addresses: &[Address]) -> String {
    addresses
        .iter()
        .map(ToString::to_string)
        .collect::<Vec<_>>()
        .join(", ")
}

fn queue_report(
    config: &Config,
    directory: &Directory,
    from: &Address,
    day: &str,
    domain: &str,
    lines: &[tlsrpt::SessionLine],
    rua: &[Address],
) -> anyhow::Result<()> {
    let report = tlsrpt::build_report(domain, day, lines, &config.hostname, &from.to_string());
    let to: Vec<String> = rua.iter().map(ToString::to_string).collect();
    let from_text = from.to_string();
    let message = report
        .to_rfc5322(
            domain,
            &config.hostname,
            from_text.as_str(),
            to.iter().map(String::as_str),
        )
        .context("building the report")?;
    // The null sender: a report that cannot be delivered must not bounce
    // back and start a loop (RFC 8460 §5.3 leaves it to the sender).
    let submission = Submission::new(
        ReversePath::Null,
        Recipients::Addresses(rua, Unresolvable::Skip),
    );
    match submit::submit(config, directory, submission, message.as_bytes()) {
        Ok(_) | Err(SubmitError::NoRecipients) => Ok(()),
        Err(e) => Err(e.into()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_day_folders_are_days() {
        assert!(is_day("2026-12-01"));
        assert!(!is_day(".send.lock") && !is_day("2026-12-1") && !is_day("2026/12/01"));
    }

    #[test]
    fn report_addresses_are_the_mailto_ones() {
        let records = [
            "v=spf1 -all".to_string(),
            "v=TLSRPTv1; rua=mailto:tls@far.test,https://report.far.test/tls".to_string(),
        ];
        let got = report_addresses(&records);
        assert_eq!(got.len(), 1);
        assert_eq!(got[0].to_string(), "tls@far.test");
    }
}
