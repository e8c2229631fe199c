//! mail-inject: the sendmail-compatible way into the queue.
//!
//! Reads one message on stdin, queues it for the recipients named on the
//! command line (or in its headers with `-t`), and exits 0 only after the
//! queue commit (`postroom-queue(5)`). Local recipients are then delivered at
//! once unless `-odq` asks for queueing only; remote ones wait for
//! `smtp-send`. Linked or copied as `sendmail`, it serves cron, mail(1) and
//! git send-email. Contract and exit codes: `mail-inject(8)`.
//!
//! Why not clap: sendmail's flags are not POSIX options (`-oi` and `-odq` are
//! single flags, `-fSENDER` glues its value), and programs that call
//! sendmail pass them that way. The parser below takes them as sendmail does
//! and ignores the historic ones that mean nothing here, as Postfix does.

#![forbid(unsafe_code)]

use std::path::PathBuf;
use std::process::ExitCode;

use postroom::config::Config;
use postroom::delivery::deliver;
use postroom::delivery::mailall;
use postroom::directory::aliases::Directory;
use postroom::proto::address::{Address, EnvelopeText, ReversePath};
use postroom::proto::message;
use postroom::store::queue::{Envelope, Queue};

/// dlmalloc in the static build: see [`postroom::cli::PerMessageAllocator`].
#[cfg(target_env = "musl")]
#[global_allocator]
static ALLOCATOR: postroom::cli::PerMessageAllocator = postroom::cli::PerMessageAllocator;

/// sysexits(3), the contract every sendmail caller understands.
const EX_USAGE: u8 = 64;
const EX_DATAERR: u8 = 65;
const EX_NOUSER: u8 = 67;
const EX_TEMPFAIL: u8 = 75;
const EX_NOPERM: u8 = 77;
const EX_CONFIG: u8 = 78;

const USAGE: &str = "usage: mail-inject [--config FILE] [-t] [-i|-oi] [-f SENDER] [-F NAME] [-odq|-odi] [-N DSN] [-R RET] [-V ENVID] [RECIPIENT...] < message\n       mail-inject [--config FILE] -bp | -bi | -bs | -bv ADDRESS...\n       mail-inject [--config FILE] --bsmtp < batch\n       run as mailq it does -bp and as newaliases -bi";

/// What a run does: sendmail's `-b` modes.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
enum Mode {
    /// `-bm`: read a message and send it (the default).
    #[default]
    Send,
    /// `-bp`, or run as `mailq`: list the queue.
    ListQueue,
    /// `-bi`, or run as `newaliases`: check the aliases file (and so bring
    /// its index up to date, as any program reading it would).
    CheckAliases,
    /// `-bs`: SMTP on stdin/stdout for a local user.
    Smtp,
    /// `-bv`: say where each address would go, sending nothing.
    Verify,
    /// `--bsmtp`: stdin is a batch SMTP stream (RFC 2442) to queue.
    Bsmtp,
}

#[derive(Debug, Default)]
struct Options {
    config: Option<PathBuf>,
    /// `-t`: take recipients from To, Cc and Bcc.
    from_headers: bool,
    /// `-i` / `-oi`: a line with a single dot does not end the message.
    ignore_dots: bool,
    sender: Option<String>,
    full_name: Option<String>,
    /// `-odq`: queue only, deliver nothing now.
    queue_only: bool,
    notify: Option<String>,
    ret: Option<String>,
    envid: Option<String>,
    recipients: Vec<String>,
    mode: Mode,
}

/// A failure with its sysexits code and a message that says what to do.
struct Failure(u8, String);

fn main() -> ExitCode {
    postroom::store::fsutil::tighten_umask();
    postroom::net::log::init("mail-inject", "warn");
    let mut argv = std::env::args();
    // Debian links mailq and newaliases to /usr/sbin/sendmail: the name
    // says what is wanted.
    let called = argv
        .next()
        .map(|a| a.rsplit('/').next().unwrap_or_default().to_string())
        .unwrap_or_default();
    let args: Vec<String> = argv.collect();
    let result = parse_args(&args).and_then(|mut options| {
        match called.as_str() {
            "mailq" => options.mode = Mode::ListQueue,
            "newaliases" => options.mode = Mode::CheckAliases,
            _ => {}
        }
        run(options)
    });
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(Failure(code, message)) => {
            eprintln!("mail-inject: {message}");
            ExitCode::from(code)
        }
    }
}

fn parse_args(args: &[String]) -> Result<Options, Failure> {
    let usage = |what: String| Failure(EX_USAGE, format!("{what}\n{USAGE}"));
    let mut options = Options {
        config: std::env::var_os("POSTROOM_CONFIG").map(PathBuf::from),
        ..Options::default()
    };
    let mut i = 0;
    // A flag's value is glued (`-fme@x`) or the next argument (`-f me@x`).
    let value = |i: &mut usize, glued: &str, flag: &str| -> Result<String, Failure> {
        if !glued.is_empty() {
            return Ok(glued.to_string());
        }
        *i += 1;
        args.get(*i)
            .cloned()
            .ok_or_else(|| usage(format!("{flag} needs a value")))
    };
    while i < args.len() {
        let arg = args[i].as_str();
        match arg {
            "--" => {
                options.recipients.extend(args[i + 1..].iter().cloned());
                break;
            }
            "--help" | "-h" => {
                {
                    // Help to a closed pipe is nobody's loss: no error.
                    use std::io::Write as _;
                    let _ = writeln!(std::io::stdout(), "{USAGE}\nSee mail-inject(8).");
                }
                std::process::exit(0);
            }
            "--config" | "-C" => options.config = Some(value(&mut i, "", arg)?.into()),
            _ if arg.starts_with("--config=") => options.config = Some(arg[9..].into()),
            "-t" => options.from_headers = true,
            "-i" | "-oi" => options.ignore_dots = true,
            "-odq" => options.queue_only = true,
            // Interactive and background delivery both mean "now" here.
            "-odi" | "-odb" | "-bm" | "-oem" | "-oee" | "-oep" | "-oeq" | "-oew" | "-om" | "-v"
            | "-n" | "-U" | "-G" | "-Am" | "-Ac" => {}
            _ if arg.starts_with("-f") || arg.starts_with("-r") => {
                options.sender = Some(value(&mut i, &arg[2..], &arg[..2])?)
            }
            _ if arg.starts_with("-F") => options.full_name = Some(value(&mut i, &arg[2..], "-F")?),
            // Checked here as smtp-recv checks them (RFC 3461 §4), so a
            // bad value is a usage error, not a 501 at the next hop.
            _ if arg.starts_with("-N") => {
                let notify = value(&mut i, &arg[2..], "-N")?;
                if !postroom::proto::smtp::is_notify(&notify) {
                    return Err(usage(format!(
                        "-N {notify:?}: say never, or any of success,failure,delay"
                    )));
                }
                options.notify = Some(notify.to_ascii_uppercase());
            }
            _ if arg.starts_with("-R") => {
                let ret = value(&mut i, &arg[2..], "-R")?;
                if !["FULL", "HDRS"]
                    .iter()
                    .any(|r| r.eq_ignore_ascii_case(&ret))
                {
                    return Err(usage(format!("-R {ret:?}: say full or hdrs")));
                }
                options.ret = Some(ret.to_ascii_uppercase());
            }
            _ if arg.starts_with("-V") => {
                let envid = value(&mut i, &arg[2..], "-V")?;
                let printable = envid.bytes().all(|b| (b' '..=b'~').contains(&b));
                if envid.is_empty() || envid.len() > 100 || !printable {
                    return Err(usage(format!(
                        "-V {envid:?}: an envelope id is 1 to 100 printable ASCII characters"
                    )));
                }
                options.envid = Some(envid);
            }
            // -oX options and -B bodytype: accepted and ignored, as Postfix does.
            _ if arg.starts_with("-o") => {}
            _ if arg.starts_with("-B") || arg.starts_with("-L") || arg.starts_with("-X") => {
                if arg.len() == 2 {
                    i += 1;
                }
            }
            "-bp" => options.mode = Mode::ListQueue,
            "-bi" => options.mode = Mode::CheckAliases,
            "-bs" => options.mode = Mode::Smtp,
            "-bv" => options.mode = Mode::Verify,
            "--bsmtp" => options.mode = Mode::Bsmtp,
            "-q" | "-bd" => {
                return Err(usage(format!(
                    "{arg} is not supported: smtp-send runs the queue, smtp-recv listens"
                )));
            }
            _ if arg.starts_with('-') && arg.len() > 1 => {
                return Err(usage(format!("unknown option {arg}")));
            }
            _ => options.recipients.push(arg.to_string()),
        }
        i += 1;
    }
    Ok(options)
}

fn run(options: Options) -> Result<(), Failure> {
    let config_path = Config::locate(options.config.as_deref());
    let config = postroom::cli::keep_until_exit(
        Config::load(&config_path).map_err(|e| Failure(EX_CONFIG, e.to_string()))?,
    );
    match options.mode {
        Mode::Send => {}
        // The queue list and SMTP are other programs' jobs: hand over.
        Mode::ListQueue => return hand_over("postroom", &config_path, &["queue", "list"]),
        Mode::Smtp => return hand_over("smtp-recv", &config_path, &["--local"]),
        Mode::CheckAliases => return check_aliases(&config),
        Mode::Verify | Mode::Bsmtp => {}
    }
    postroom::net::privileges::drop_privileges(&config)
        .map_err(|e| Failure(EX_CONFIG, e.to_string()))?;
    let directory = postroom::cli::keep_until_exit(
        Directory::load(&config).map_err(|e| Failure(EX_CONFIG, e.to_string()))?,
    );
    if options.mode == Mode::Verify {
        let named: Vec<String> = options
            .recipients
            .iter()
            .flat_map(|arg| addresses_named(arg, &config.hostname))
            .collect();
        return verify(&directory, &named);
    }
    if options.mode == Mode::Bsmtp {
        // The same import as `postroom bsmtp import`: checked whole, then
        // queued with the batch's own envelopes.
        return postroom::delivery::bsmtp::import(&config, &directory, std::io::stdin().lock())
            .map(drop)
            .map_err(|e| {
                let code = if e.is_temporary() {
                    EX_TEMPFAIL
                } else {
                    EX_DATAERR
                };
                Failure(code, e.to_string())
            });
    }

    // A message that is all header gets the empty line that ends it. The
    // text as read is freed at once, here and after the staging below, so
    // that the delivery's buffers reuse its memory rather than touch new
    // pages (each a page fault in a process that lives for one message).
    let body = {
        let raw = read_message(&config, options.ignore_dots)?;
        message::with_header_end(&message::to_crlf(&raw))
    };
    let head_len = message::header_len(&body);
    let (mut headers, rest) = (body[..head_len].to_vec(), &body[head_len..]);

    // Looked up once: without LOGNAME or USER it is a passwd lookup.
    let login = login_name();
    let sender = envelope_sender(&options, &config, &login)?;
    let mut wanted: Vec<String> = options
        .recipients
        .iter()
        .flat_map(|arg| addresses_named(arg, &config.hostname))
        .collect();
    if options.from_headers {
        wanted.extend(header_recipients(&headers, &config.hostname));
        headers = message::remove_header(&headers, "Bcc");
        headers = message::remove_header(&headers, "Resent-Bcc");
    }
    if wanted.is_empty() {
        return Err(Failure(EX_USAGE, format!("no recipients given\n{USAGE}")));
    }
    let recipients = route(&config, &directory, &wanted, &sender, &options)?;

    let mut envelope = Envelope::new(sender.clone(), recipients);
    envelope.protocol = Some(text("local")?);
    // Someone on this host is waiting for it: before list and bulk mail.
    envelope.priority = postroom::store::queue::Priority::High;
    envelope.auth = Some(text(&login)?);
    envelope.envid = options.envid.as_deref().map(text).transpose()?;
    envelope.ret = options.ret.as_deref().map(text).transpose()?;
    // SMTPUTF8 is for UTF-8 in addresses and header fields (RFC 6531); an
    // 8-bit body needs only 8BITMIME (RFC 6152), which nearly every server
    // offers and smtp-send can do without.
    envelope.smtputf8 = !headers.is_ascii()
        || sender.to_string().bytes().any(|b| !b.is_ascii())
        || wanted.iter().any(|r| !r.is_ascii());
    if !rest.is_ascii() {
        envelope.body_type = Some(text("8BITMIME")?);
    }

    let queue = Queue::from_config(&config);
    let mut incoming = queue.incoming(&envelope).map_err(tempfail)?;
    let id = incoming.id().clone();
    let (received, headers) = added_headers(
        &config,
        &headers,
        &sender,
        options.full_name.as_deref(),
        &id.to_string(),
    );
    use std::io::Write;
    incoming
        .write_all(received.as_bytes())
        .and_then(|()| incoming.write_all(&headers))
        .and_then(|()| incoming.write_all(rest))
        .map_err(|e| tempfail(format!("writing the queue file: {e}")))?;
    let staged = incoming.finish().map_err(tempfail)?;
    drop((received, headers, body));
    tracing::info!(
        queue_id = %id,
        from = %sender,
        size = staged.message.body_length(),
        nrcpt = staged.message.envelope.recipients.len(),
        uid = %nix::unistd::getuid(),
        "received"
    );
    // Early delivery: local recipients get the message now, and only what
    // is left enters the queue (postroom-queue(5)); -odq queues it all.
    let outcome = if options.queue_only {
        deliver::queue_staged(&config, staged)
    } else {
        deliver::deliver_staged(&config, &directory, staged)
    };
    match outcome.map_err(tempfail)? {
        deliver::Early::Delivered => tracing::info!(queue_id = %id, sender = %sender, "delivered"),
        deliver::Early::Queued(id) => tracing::info!(queue_id = %id, sender = %sender, "queued"),
    }
    Ok(())
}

/// Runs a sibling program (installed beside this one) in this process's
/// place, with the same config.
fn hand_over(program: &str, config: &std::path::Path, args: &[&str]) -> Result<(), Failure> {
    use std::os::unix::process::CommandExt;
    let path = std::env::current_exe()
        .ok()
        .and_then(|exe| exe.parent().map(|dir| dir.join(program)))
        .unwrap_or_else(|| PathBuf::from(program));
    let error = std::process::Command::new(&path)
        .arg("--config")
        .arg(config)
        .args(args)
        .exec();
    Err(Failure(
        EX_CONFIG,
        format!(
            "cannot run {}: {error}; install it beside mail-inject",
            path.display()
        ),
    ))
}

/// `newaliases`: checks the aliases file. Reading it brings its index
/// (`aliases.index`) up to date, as the first program to read it after an
/// edit would anyway, so there is nothing else to run; say so, as package
/// scripts expect.
fn check_aliases(config: &Config) -> Result<(), Failure> {
    let file = config.aliases_file();
    let aliases = postroom::directory::aliases::Aliases::load(&file)
        .map_err(|e| Failure(EX_CONFIG, format!("{e}; fix it, then run newaliases again")))?;
    println!(
        "{}: {} aliases, valid (its index is rebuilt from it whenever it changes: nothing else to run)",
        file.display(),
        aliases.len()
    );
    Ok(())
}

/// `-bv`: where each address would go, one line each; exit EX_NOUSER if
/// any goes nowhere.
fn verify(directory: &Directory, addresses: &[String]) -> Result<(), Failure> {
    use postroom::directory::aliases::Target;
    if addresses.is_empty() {
        return Err(Failure(EX_USAGE, format!("-bv needs addresses\n{USAGE}")));
    }
    let mut undeliverable = 0;
    for text in addresses {
        let text = text.trim().trim_start_matches('<').trim_end_matches('>');
        let verdict = match Address::parse(text) {
            Err(e) => Err(e.to_string()),
            Ok(address) => directory.resolve(&address).map_err(|e| e.to_string()),
        };
        match verdict {
            Ok(targets) => {
                let places: Vec<String> = targets
                    .iter()
                    .map(|t| match t {
                        Target::Mailbox(a) => format!("mailbox {a}"),
                        Target::Remote(a) => format!("remote {a}"),
                        Target::Pipe { command, .. } => format!("command |{command}"),
                    })
                    .collect();
                println!("{text}: deliverable: {}", places.join(", "));
            }
            Err(e) => {
                undeliverable += 1;
                println!("{text}: undeliverable: {e}");
            }
        }
    }
    if undeliverable > 0 {
        return Err(Failure(
            EX_NOUSER,
            format!("{undeliverable} address(es) undeliverable"),
        ));
    }
    Ok(())
}

/// Reads stdin up to the size limit; without `-i`, a line holding a single
/// dot ends the message, as sendmail has always done.
fn read_message(config: &Config, ignore_dots: bool) -> Result<Vec<u8>, Failure> {
    use postroom::cli::InputError;
    let limit = config.limits.message_size;
    let mut raw = postroom::cli::read_message(std::io::stdin().lock(), limit).map_err(|e| {
        let code = match e {
            InputError::TooBig(_) => EX_DATAERR,
            InputError::Io(_) => EX_TEMPFAIL,
        };
        Failure(code, e.to_string())
    })?;
    // An mbox `From ` line in front is no header field (Postfix's
    // sendmail drops it too); left in, it would end the header.
    let from_line = raw.len() - message::without_mbox_from_line(&raw).len();
    raw.drain(..from_line);
    if !ignore_dots {
        let mut offset = 0;
        for line in raw.split_inclusive(|&b| b == b'\n') {
            if line == b".\n" || line == b".\r\n" || line == b"." {
                raw.truncate(offset);
                break;
            }
            offset += line.len();
        }
    }
    Ok(raw)
}

/// `-f` if given, else the login name at the system's hostname.
fn envelope_sender(
    options: &Options,
    config: &Config,
    login: &str,
) -> Result<ReversePath, Failure> {
    let bad =
        |e: postroom::proto::address::AddressError| Failure(EX_USAGE, format!("bad sender: {e}"));
    match options.sender.as_deref() {
        // A bare name is a user of this host, as for recipients.
        Some(s) => {
            let s = s.trim().trim_start_matches('<').trim_end_matches('>');
            if s.is_empty() || s.contains('@') {
                ReversePath::parse(s).map_err(bad)
            } else {
                ReversePath::parse(&format!("{s}@{}", config.hostname)).map_err(bad)
            }
        }
        None => Address::parse(&format!("{login}@{}", config.hostname))
            .map(ReversePath::Address)
            .map_err(bad),
    }
}

fn login_name() -> String {
    std::env::var("LOGNAME")
        .or_else(|_| std::env::var("USER"))
        .ok()
        .filter(|n| {
            !n.is_empty()
                && n.chars()
                    .all(|c| c.is_ascii_alphanumeric() || "._-".contains(c))
        })
        .or_else(|| {
            nix::unistd::User::from_uid(nix::unistd::getuid())
                .ok()
                .flatten()
                .map(|u| u.name)
        })
        .unwrap_or_else(|| "nobody".to_string())
}

/// Addresses in To, Cc and Bcc, for `-t`.
fn header_recipients(headers: &[u8], hostname: &str) -> Vec<String> {
    let fields = message::header_fields(headers);
    // Resent-* fields mean the message is being resent: they name its
    // recipients now, as sendmail and Postfix read them.
    let resent = fields.iter().any(|(name, _)| {
        ["Resent-To", "Resent-Cc", "Resent-Bcc"]
            .iter()
            .any(|r| r.eq_ignore_ascii_case(name))
    });
    let names: [&str; 3] = if resent {
        ["Resent-To", "Resent-Cc", "Resent-Bcc"]
    } else {
        ["To", "Cc", "Bcc"]
    };
    fields
        .iter()
        .filter(|(name, _)| names.iter().any(|n| n.eq_ignore_ascii_case(name)))
        .flat_map(|(_, value)| addresses_named(value, hostname))
        .collect()
}

/// The addresses one recipient argument or header field names, read as an
/// RFC 5322 address list the way Postfix's sendmail reads its arguments
/// (`Ann <ann@x.test>`, `a@x.test, b@y.test`, a group); a bare name is a
/// user of this host (`root` is root@HOSTNAME, as Postfix appends
/// $myorigin). Anything else is passed on as written, to be refused by
/// the address parser with a usage error.
fn addresses_named(text: &str, hostname: &str) -> Vec<String> {
    let text = text.trim();
    if text.is_empty() {
        return Vec::new();
    }
    if !text.contains(['<', ',', '(', '"', ':', ';', ' ', '\t']) {
        return vec![if text.contains('@') {
            text.to_string()
        } else {
            format!("{text}@{hostname}")
        }];
    }
    // Without a colon there is no group, so a name without a host is a
    // bare user name, not a group's display name.
    let has_groups = text.contains(':');
    let named: Vec<String> = postroom::proto::mime::parse_addresses(text)
        .into_iter()
        .filter(|a| !(has_groups && a.is_group_start()))
        .filter_map(|a| {
            let local = a.mailbox.filter(|m| !m.is_empty())?;
            let local = postroom::proto::address::quote_local_part(&local);
            let host = a.host.filter(|h| !h.is_empty());
            Some(format!("{local}@{}", host.as_deref().unwrap_or(hostname)))
        })
        .collect();
    if named.is_empty() && !text.ends_with(';') {
        vec![text.to_string()]
    } else {
        named
    }
}

/// Expands aliases and validates every recipient; any bad one stops the
/// injection, so nothing is queued half-addressed. A malformed address is
/// a usage error (EX_USAGE, as mail-inject(8) says), before an unknown
/// recipient (EX_NOUSER) or a temporary failure.
fn route(
    config: &Config,
    directory: &Directory,
    wanted: &[String],
    sender: &ReversePath,
    options: &Options,
) -> Result<Vec<postroom::store::queue::Recipient>, Failure> {
    let mut recipients = Vec::new();
    let mut problems = Vec::new();
    let mut temporary = false;
    let mut malformed = false;
    for rcpt in wanted {
        let rcpt = rcpt.trim().trim_start_matches('<').trim_end_matches('>');
        let address = match Address::parse(rcpt) {
            Ok(a) => a,
            Err(e) => {
                malformed = true;
                problems.push(format!("{rcpt:?}: {e}"));
                continue;
            }
        };
        // A local program's sender is its own to give, as with any mail.
        let resolved = match mailall::everyone(config, directory, &address, sender, true) {
            mailall::Everyone::Refused(text) => {
                return Err(Failure(EX_NOPERM, format!("5.7.1 {text}")));
            }
            mailall::Everyone::Routes(routes) => Ok(routes),
            mailall::Everyone::NotIt => directory.routes_for(&address),
        };
        match resolved {
            Ok(mut routes) => {
                for r in &mut routes {
                    r.notify = options.notify.as_deref().map(text).transpose()?;
                }
                for r in routes {
                    if !recipients.contains(&r) {
                        recipients.push(r);
                    }
                }
            }
            Err(e) => {
                temporary |= e.is_temporary();
                problems.push(format!("<{address}>: {e}"));
            }
        }
    }
    if problems.is_empty() {
        Ok(recipients)
    } else {
        let code = match (malformed, temporary) {
            (true, _) => EX_USAGE,
            (false, true) => EX_TEMPFAIL,
            (false, false) => EX_NOUSER,
        };
        Err(Failure(
            code,
            format!("not queued: {}", problems.join("; ")),
        ))
    }
}

/// The Received line to go first (RFC 5321 §4.4: at the beginning of the
/// content), and the header block with the From, Date and Message-ID a
/// submission must have (RFC 6409 §8.1-8.3 lets the submission agent add
/// them) after its own fields, where Postfix adds them
/// (`message::append_fields`, as smtp-recv does for its users).
fn added_headers(
    config: &Config,
    headers: &[u8],
    sender: &ReversePath,
    full_name: Option<&str>,
    id: &str,
) -> (String, Vec<u8>) {
    let now = postroom::store::fsutil::now_secs();
    let date = message::rfc5322_date(now);
    let received = format!(
        "Received: by {host} (postroom mail-inject, from userid {uid})\r\n\tid {id}; {date}\r\n",
        host = config.hostname,
        uid = nix::unistd::getuid(),
    );
    let mut fields = Vec::new();
    if !message::has_header(headers, "From") {
        // RFC 5322 §3.6.2: From needs a mailbox, and `<>` is none. The
        // null sender's mail comes from the mailer itself, as Postfix
        // says: MAILER-DAEMON of this host.
        let from = match sender {
            ReversePath::Address(address) => address.to_string(),
            ReversePath::Null => format!("MAILER-DAEMON@{}", config.hostname),
        };
        fields.push(
            match full_name.filter(|n| !n.chars().any(char::is_control)) {
                Some(name) => format!("From: \"{}\" <{from}>", name.replace('"', "'")),
                None => format!("From: <{from}>"),
            },
        );
    }
    fields.extend(message::missing_origin_fields(
        headers,
        id,
        &config.hostname,
        now,
    ));
    (received, message::append_fields(headers, &fields))
}

fn text(value: &str) -> Result<EnvelopeText, Failure> {
    EnvelopeText::new(value, postroom::store::queue::MAX_FIELD)
        .map_err(|e| Failure(EX_USAGE, format!("{value:?}: {e}")))
}

fn tempfail(e: impl std::fmt::Display) -> Failure {
    Failure(
        EX_TEMPFAIL,
        format!("{e}; the message was not queued, try again"),
    )
}
