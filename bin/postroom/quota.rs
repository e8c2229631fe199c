//! `postroom quota report`: every user's mailbox against the quota, by
//! domain, fullest first, with each domain's totals (the IEMS Quota
//! Agent's report): as text, JSON, or one HTML page for a browser.
//!
//! Usage is counted as the quota counts it (Trash excluded), from the
//! message names, without writing anything: a report never changes a
//! mailbox, and runs while the servers do.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context;
use clap::{Args, Subcommand};
use postroom::config::Config;
use postroom::delivery::quota::{human_size, limit_of};
use postroom::directory::users::{self, Users};
use postroom::proto::html::escape;
use postroom::store::fsutil;
use postroom::store::maildir::Maildir;
use serde::Serialize;

#[derive(Subcommand)]
pub enum QuotaCommand {
    /// Every user's usage against the quota, with totals per domain.
    Report(ReportArgs),
}

#[derive(Args)]
pub struct ReportArgs {
    /// Only the users of this domain.
    #[arg(long, value_name = "DOMAIN")]
    domain: Option<String>,
    /// Also write the report as one HTML page to FILE.
    #[arg(long, value_name = "FILE")]
    html: Option<PathBuf>,
    /// Print JSON instead of text.
    #[arg(long)]
    json: bool,
}

/// One user's line.
#[derive(Serialize)]
struct Row {
    address: String,
    /// Bytes in use; `None` when the mailbox cannot be read.
    used: Option<u64>,
    messages: Option<u64>,
    /// The quota in force, if any.
    quota: Option<u64>,
    /// Whole percent of the quota in use.
    percent: Option<u64>,
}

/// One domain's users and totals.
#[derive(Serialize)]
struct Domain {
    domain: String,
    users: Vec<Row>,
    used: u64,
    messages: u64,
    /// The sum of its users' quotas (users without one add nothing).
    quota: u64,
}

pub fn run(config: Option<PathBuf>, command: QuotaCommand) -> anyhow::Result<ExitCode> {
    let config = crate::load_config(config)?;
    match command {
        QuotaCommand::Report(args) => report(&config, args),
    }
}

fn report(config: &Config, args: ReportArgs) -> anyhow::Result<ExitCode> {
    let users = Users::load(&config.users_file())?;
    if let Some(why) = users.unavailable() {
        anyhow::bail!("{why}: restore it before asking for a report");
    }
    let wanted = args.domain.as_deref().map(str::to_ascii_lowercase);
    let mut domains: BTreeMap<String, Vec<Row>> = BTreeMap::new();
    for user in &users.list(&config.users_file())? {
        if wanted.as_deref().is_some_and(|d| d != user.domain()) {
            continue;
        }
        let quota = limit_of(config, user);
        let usage = Maildir::new(users::maildir_of(config, user)).usage().ok();
        domains
            .entry(user.domain().to_string())
            .or_default()
            .push(Row {
                address: user.address.clone(),
                used: usage.map(|u| u.0),
                messages: usage.map(|u| u.1),
                quota,
                percent: usage
                    .zip(quota)
                    .map(|((used, _), q)| (u128::from(used) * 100 / u128::from(q)) as u64),
            });
    }
    if let Some(domain) = &wanted
        && domains.is_empty()
    {
        anyhow::bail!("no users in {domain} (see `postroom user list`)");
    }
    let domains: Vec<Domain> = domains
        .into_iter()
        .map(|(domain, mut users)| {
            // Fullest first: by share of the quota, then (for users without
            // one) by bytes; the address breaks ties.
            users.sort_by(|a, b| {
                b.percent
                    .cmp(&a.percent)
                    .then(b.used.cmp(&a.used))
                    .then(a.address.cmp(&b.address))
            });
            Domain {
                used: users.iter().filter_map(|u| u.used).sum(),
                messages: users.iter().filter_map(|u| u.messages).sum(),
                quota: users.iter().filter_map(|u| u.quota).sum(),
                domain,
                users,
            }
        })
        .collect();
    if let Some(file) = &args.html {
        let page = html(config, &domains);
        fsutil::write_atomic(file, page.as_bytes())
            .with_context(|| format!("writing {}", file.display()))?;
    }
    if args.json {
        postroom::say!("{}", serde_json::to_string_pretty(&domains)?);
    } else {
        postroom::say!("{}", text(&domains).trim_end());
    }
    Ok(ExitCode::SUCCESS)
}

fn used_text(row: &Row) -> String {
    match (row.used, row.messages) {
        (Some(used), Some(messages)) => format!("{} in {messages} message(s)", human_size(used)),
        _ => "unreadable".into(),
    }
}

fn quota_text(quota: Option<u64>) -> String {
    quota.map_or_else(|| "no quota".into(), human_size)
}

fn percent_text(percent: Option<u64>) -> String {
    percent.map_or_else(|| "-".into(), |p| format!("{p}%"))
}

fn text(domains: &[Domain]) -> String {
    let mut out = String::new();
    for d in domains {
        let _ = writeln!(
            out,
            "{}: {} user(s), {} in {} message(s), quotas {}",
            d.domain,
            d.users.len(),
            human_size(d.used),
            d.messages,
            human_size(d.quota)
        );
        let width = d.users.iter().map(|u| u.address.len()).max().unwrap_or(0);
        for u in &d.users {
            let _ = writeln!(
                out,
                "  {:<width$}  {:>5}  of {:<8}  {}",
                u.address,
                percent_text(u.percent),
                quota_text(u.quota),
                used_text(u)
            );
        }
    }
    out
}

/// A single page, no script, no outside resource: readable from a file,
/// a mail attachment or a web server alike.
fn html(config: &Config, domains: &[Domain]) -> String {
    let warn = config.quota.warnings.iter().copied().min().unwrap_or(100);
    let title = format!("Mailbox quotas on {}", config.hostname);
    let mut page = format!(
        "<!DOCTYPE html>\n<html lang=\"en\">\n<head>\n<meta charset=\"utf-8\">\n\
         <meta name=\"viewport\" content=\"width=device-width, initial-scale=1\">\n\
         <title>{title}</title>\n<style>\n\
         body {{ font-family: system-ui, sans-serif; margin: 2em auto; max-width: 60em; padding: 0 1em; color: #222; }}\n\
         table {{ border-collapse: collapse; width: 100%; margin-bottom: 2em; }}\n\
         th, td {{ text-align: left; padding: .3em .6em; border-bottom: 1px solid #ddd; }}\n\
         td.n, th.n {{ text-align: right; font-variant-numeric: tabular-nums; }}\n\
         .bar {{ background: #eee; width: 10em; height: .8em; border-radius: .4em; overflow: hidden; }}\n\
         .bar span {{ display: block; height: 100%; background: #4a8; }}\n\
         tr.warn .bar span {{ background: #d90; }} tr.full .bar span {{ background: #c33; }}\n\
         tr.full td {{ font-weight: bold; }}\n\
         tfoot td {{ font-weight: bold; border-top: 2px solid #999; }}\n\
         </style>\n</head>\n<body>\n<h1>{title}</h1>\n<p>Generated {}. Trash does not count against a quota.</p>\n",
        postroom::proto::message::rfc5322_date(fsutil::now_secs()),
        title = escape(&title),
    );
    for d in domains {
        let _ = write!(
            page,
            "<h2>{}</h2>\n<table>\n<thead><tr><th>User</th><th class=\"n\">Used</th>\
             <th class=\"n\">Messages</th><th class=\"n\">Quota</th><th class=\"n\">Share</th><th></th></tr></thead>\n<tbody>\n",
            escape(&d.domain)
        );
        for u in &d.users {
            let class = match u.percent {
                Some(p) if p >= 100 => "full",
                Some(p) if p >= u64::from(warn) => "warn",
                _ => "ok",
            };
            let _ = writeln!(
                page,
                "<tr class=\"{class}\"><td>{}</td><td class=\"n\">{}</td><td class=\"n\">{}</td>\
                 <td class=\"n\">{}</td><td class=\"n\">{}</td>\
                 <td><div class=\"bar\"><span style=\"width: {}%\"></span></div></td></tr>",
                escape(&u.address),
                u.used.map_or_else(|| "unreadable".into(), human_size),
                u.messages.map_or_else(String::new, |m| m.to_string()),
                escape(&quota_text(u.quota)),
                percent_text(u.percent),
                u.percent.unwrap_or(0).min(100),
            );
        }
        let _ = write!(
            page,
            "</tbody>\n<tfoot><tr><td>{} user(s)</td><td class=\"n\">{}</td><td class=\"n\">{}</td>\
             <td class=\"n\">{}</td><td></td><td></td></tr></tfoot>\n</table>\n",
            d.users.len(),
            human_size(d.used),
            d.messages,
            human_size(d.quota)
        );
    }
    page.push_str("</body>\n</html>\n");
    page
}
