//! `postroom mailall`: one message to every user (IMail's mailall), queued
//! once with a recipient line per user and delivered at once, through the
//! same code as any local mail (the recipients are
//! `postroom::delivery::mailall::all_users`).

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::{Context, bail};
use clap::Args;
use postroom::delivery::deliver::{self, Early};
use postroom::delivery::submit::{self, Recipients, Submission};
use postroom::delivery::{dsn, mailall};
use postroom::directory::aliases::Directory;
use postroom::proto::address::ReversePath;
use postroom::proto::message;
use postroom::store::fsutil;

#[derive(Args)]
pub struct MailallArgs {
    /// Only the users of DOMAIN (default: every user of every domain).
    #[arg(long, value_name = "DOMAIN")]
    domain: Option<String>,
    /// The envelope sender (default: the postmaster, queue.postmaster).
    #[arg(long, value_name = "ADDRESS")]
    from: Option<String>,
}

pub fn run(config: Option<PathBuf>, args: MailallArgs) -> anyhow::Result<ExitCode> {
    let config = crate::load_config(config)?;
    let directory = Directory::load(&config)?;
    let domain = args.domain.map(|d| d.to_ascii_lowercase());
    if let Some(domain) = &domain
        && !directory.is_local_domain(domain)
    {
        bail!("{domain} is not a local domain (see `postroom domain list`)");
    }
    let recipients = mailall::all_users(&directory, domain.as_deref());
    if recipients.is_empty() {
        bail!("no users to send to");
    }
    let sender = match &args.from {
        Some(from) => ReversePath::parse(from).with_context(|| format!("--from {from:?}"))?,
        None => dsn::postmaster(&config)
            .map(ReversePath::Address)
            .unwrap_or(ReversePath::Null),
    };

    let raw = postroom::cli::read_message(std::io::stdin().lock(), config.limits.message_size)?;
    let text = message::with_header_end(&message::to_crlf(&raw));
    let head = message::header_len(&text);
    // What a submission agent adds (RFC 6409 §8), and a To that names
    // nobody: the recipients are many and private.
    let now = fsutil::now_secs();
    let mut added = message::missing_origin_fields(
        &text[..head],
        &format!("mailall.{now}.{}", fsutil::unique_suffix()),
        &config.hostname,
        now,
    );
    if !message::has_header(&text[..head], "To") {
        added.push("To: undisclosed-recipients:;".into());
    }
    // After the message's own fields, where Postfix's cleanup adds them.
    let mut body = message::append_fields(&text[..head], &added);
    body.extend_from_slice(&text[head..]);

    let count = recipients.len();
    let mut submission = Submission::new(sender, Recipients::Routes(recipients));
    submission.protocol = Some("local");
    // Bulk mail: what users send themselves goes first (postroom-queue(5)).
    submission.priority = postroom::store::queue::Priority::Low;
    let staged = submit::stage(&config, &directory, submission, &body)?;
    let id = staged.message.id.clone();
    match deliver::deliver_staged(&config, &directory, staged)? {
        Early::Delivered => eprintln!("postroom: delivered to {count} user(s) (queue id {id})"),
        Early::Queued(id) => eprintln!(
            "postroom: queued as {id} for {count} user(s); what could not be delivered at once \
             waits for smtp-send"
        ),
    }
    Ok(ExitCode::SUCCESS)
}
