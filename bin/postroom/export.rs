//! `postroom export USER`: a user's mail as one mbox file per folder
//! (flags in Status/X-Status, keywords in X-Keywords: `postroom::proto::mbox`)
//! or as a Maildir++ copy with flags, keywords and UIDs (Dovecot reads it as
//! is). Each folder is read through the mailbox code IMAP uses, so what is
//! exported is what a client sees.

use std::fs::{self, File, OpenOptions};
use std::io::{BufWriter, Read, Write};
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::{Context, bail};
use clap::Args;
use postroom::directory::users::{Users, maildir_of};
use postroom::proto::{mbox, message};
use postroom::store::mailbox::{Entry, Folder, Mailbox, MailboxName, flags};

#[derive(Args)]
#[command(group = clap::ArgGroup::new("format").required(true))]
pub struct ExportArgs {
    /// The user whose mail is exported.
    user: String,
    /// Write one mbox file per folder into DIR (INBOX.mbox, Sent.mbox, ...).
    #[arg(long, value_name = "DIR", group = "format")]
    mbox: Option<PathBuf>,
    /// Write a Maildir++ copy into DIR (INBOX at DIR, folders as DIR/.Name).
    #[arg(long, value_name = "DIR", group = "format")]
    maildir: Option<PathBuf>,
}

pub fn run(config: Option<PathBuf>, args: ExportArgs) -> anyhow::Result<ExitCode> {
    let config = crate::load_config(config)?;
    let users = Users::load(&config.users_file())?;
    let Some(user) = users.get(&args.user) else {
        bail!("{}: no such user (see `postroom user list`)", args.user);
    };
    let mailbox = Mailbox::new(maildir_of(&config, &user));
    let (mut folders, mut messages) = (0, 0);
    for name in mailbox.list()? {
        let folder = mailbox.folder(&name);
        let state = folder.sync()?;
        messages += state.entries.len();
        folders += 1;
        if let Some(dir) = &args.mbox {
            to_mbox(&folder, &name, &state, dir)?;
        } else if let Some(dir) = &args.maildir {
            to_maildir(&folder, &name, &state, dir)?;
        }
    }
    if let Some(dir) = &args.maildir {
        let subscriptions = mailbox.root().join("subscriptions");
        if subscriptions.exists() {
            fs::copy(&subscriptions, dir.join("subscriptions"))
                .with_context(|| format!("{}", subscriptions.display()))?;
        }
    }
    let dir = args.mbox.as_ref().or(args.maildir.as_ref());
    eprintln!(
        "postroom: {messages} message(s) in {folders} folder(s) of {} exported to {}",
        args.user,
        dir.map(|d| d.display().to_string()).unwrap_or_default()
    );
    Ok(ExitCode::SUCCESS)
}

/// A message's bytes, found again if a flag change renamed it meanwhile;
/// `None` if it was expunged.
fn read_message(folder: &Folder, entry: &Entry) -> anyhow::Result<Option<(Vec<u8>, Entry)>> {
    let mut entry = entry.clone();
    for _ in 0..3 {
        match folder.open_message(&entry) {
            Ok(mut file) => {
                let mut text = Vec::new();
                file.read_to_end(&mut text)?;
                return Ok(Some((text, entry)));
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => match folder.refresh(&entry)? {
                Some(moved) => entry = moved,
                None => return Ok(None),
            },
            Err(e) => return Err(e.into()),
        }
    }
    Ok(None)
}

/// A file that must not exist yet: an export never overwrites.
fn create(path: &Path) -> anyhow::Result<File> {
    if let Some(parent) = path.parent() {
        fs::create_dir_all(parent).with_context(|| format!("{}", parent.display()))?;
    }
    OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)
        .with_context(|| {
            format!(
                "{}: cannot create it (an export never overwrites: choose an empty DIR)",
                path.display()
            )
        })
}

fn to_mbox(
    folder: &Folder,
    name: &MailboxName,
    state: &postroom::store::mailbox::State,
    dir: &Path,
) -> anyhow::Result<()> {
    // Hierarchy names (Archive/2025) become folders of files.
    let path = dir.join(format!("{}.mbox", name.as_str()));
    let file = create(&path)?;
    let mut out = BufWriter::new(&file);
    for entry in &state.entries {
        let Some((text, entry)) = read_message(folder, entry)? else {
            continue;
        };
        let flags = entry.flags();
        let keywords: Vec<&str> = state.keywords.names_of(flags.keywords).collect();
        let secs = folder
            .internal_date(&entry)
            .and_then(|t| t.duration_since(std::time::UNIX_EPOCH).ok())
            .map(|d| d.as_secs())
            .unwrap_or(0);
        let sender = message::return_path(&text).unwrap_or_default();
        mbox::write_message(&mut out, &text, &sender, secs, flags, &keywords)
            .with_context(|| format!("{}", path.display()))?;
    }
    out.flush()?;
    drop(out);
    file.sync_all()?;
    Ok(())
}

fn to_maildir(
    folder: &Folder,
    name: &MailboxName,
    state: &postroom::store::mailbox::State,
    dir: &Path,
) -> anyhow::Result<()> {
    let target = if name.is_inbox() {
        dir.to_path_buf()
    } else {
        dir.join(format!(".{}", name.disk_name()))
    };
    for sub in ["cur", "new", "tmp"] {
        fs::create_dir_all(target.join(sub))
            .with_context(|| format!("{}", target.join(sub).display()))?;
    }
    if !name.is_inbox() {
        File::create(target.join("maildirfolder"))?;
    }
    for entry in &state.entries {
        let Some((text, entry)) = read_message(folder, entry)? else {
            continue;
        };
        let path = target.join("cur").join(entry.file_name());
        let mut file = create(&path)?;
        file.write_all(&text)?;
        if let Some(date) = folder.internal_date(&entry) {
            file.set_modified(date)?;
        }
        file.sync_all()?;
    }
    // Keyword letters and UIDs as the folder has them: names in cur/ are
    // the same, so the list and the letters hold for the copy.
    flags::write_keywords(&target, &state.keywords)?;
    let uidlist = folder.path().join("dovecot-uidlist");
    if uidlist.exists() {
        fs::copy(&uidlist, target.join("dovecot-uidlist"))
            .with_context(|| format!("{}", uidlist.display()))?;
    }
    Ok(())
}
