//! mboxrd (one file per folder), as `postroom export --mbox` writes it:
//! each message after a `From SENDER DATE` line, any body line that reads
//! `From ` after some `>`s quoted with one more `>` (so the quoting can be
//! undone), an empty line after each message, and the flags in the fields
//! mutt, Thunderbird and Dovecot read: `Status:` (R seen, O old),
//! `X-Status:` (A answered, F flagged, T draft, D deleted) and
//! `X-Keywords:`.

use std::io::{self, Write};

use crate::proto::flags::{self, Flags};
use crate::proto::message;

/// The `From ` line that starts a message: the envelope sender (or
/// `MAILER-DAEMON` for the null sender) and the date in asctime form.
pub fn from_line(sender: &str, secs: u64) -> String {
    let sender = if sender.is_empty() {
        "MAILER-DAEMON"
    } else {
        sender
    };
    format!("From {sender} {}\n", asctime(secs))
}

/// `Www Mmm dd hh:mm:ss yyyy` in UTC, from the RFC 5322 date
/// (`Www, dd Mmm yyyy hh:mm:ss +0000`).
fn asctime(secs: u64) -> String {
    let date = message::rfc5322_date(secs);
    let words: Vec<&str> = date.split([' ', ',']).filter(|w| !w.is_empty()).collect();
    match words.as_slice() {
        [weekday, day, month, year, time, ..] => {
            let day = day.trim_start_matches('0');
            format!("{weekday} {month} {day:>2} {time} {year}")
        }
        _ => date,
    }
}

/// Writes one message (LF line ends, as a maildir holds it) with its
/// flags. `keywords` are the names of its keywords.
pub fn write_message(
    out: &mut impl Write,
    text: &[u8],
    sender: &str,
    secs: u64,
    flags: Flags,
    keywords: &[&str],
) -> io::Result<()> {
    let split = header_end(text);
    let (mut head, body) = (text[..split].to_vec(), &text[split..]);
    // The separator line goes back after our fields.
    let had_blank = head.ends_with(b"\n\n");
    if had_blank {
        head.pop();
    }
    for name in ["Status", "X-Status", "X-Keywords", "Content-Length"] {
        head = message::remove_header(&head, name);
    }
    if !head.is_empty() && !head.ends_with(b"\n") {
        head.push(b'\n');
    }
    out.write_all(from_line(sender, secs).as_bytes())?;
    out.write_all(&quote(&head))?;
    let status = if flags.has(flags::SEEN) { "RO" } else { "O" };
    writeln!(out, "Status: {status}")?;
    let x_status: String = [
        (flags::ANSWERED, 'A'),
        (flags::FLAGGED, 'F'),
        (flags::DRAFT, 'T'),
        (flags::DELETED, 'D'),
    ]
    .iter()
    .filter(|(bit, _)| flags.has(*bit))
    .map(|(_, letter)| *letter)
    .collect();
    if !x_status.is_empty() {
        writeln!(out, "X-Status: {x_status}")?;
    }
    if !keywords.is_empty() {
        writeln!(out, "X-Keywords: {}", keywords.join(" "))?;
    }
    out.write_all(b"\n")?;
    out.write_all(&quote(body))?;
    if !body.is_empty() && !body.ends_with(b"\n") {
        out.write_all(b"\n")?;
    }
    out.write_all(b"\n")
}

/// Where the header block ends (after its empty line), in LF text; the
/// whole text when it has no body.
fn header_end(text: &[u8]) -> usize {
    if text.starts_with(b"\n") {
        return 1;
    }
    text.windows(2)
        .position(|w| w == b"\n\n")
        .map(|p| p + 2)
        .unwrap_or(text.len())
}

/// mboxrd quoting: `>*From ` at a line start gets one more `>`.
fn quote(text: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(text.len());
    for line in text.split_inclusive(|&b| b == b'\n') {
        let after = line.iter().position(|&b| b != b'>').unwrap_or(line.len());
        if line[after..].starts_with(b"From ") {
            out.push(b'>');
        }
        out.extend_from_slice(line);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_message_gets_its_from_line_flags_and_quoting() {
        let mut out = Vec::new();
        let flags = Flags::from_info("FRS");
        write_message(
            &mut out,
            b"Status: U\nSubject: hi\n\nFrom here\n>From there\nend",
            "ann@example.test",
            0,
            flags,
            &["$Label1"],
        )
        .unwrap();
        assert_eq!(
            String::from_utf8(out).unwrap(),
            "From ann@example.test Thu Jan  1 00:00:00 1970\nSubject: hi\nStatus: RO\n\
             X-Status: AF\nX-Keywords: $Label1\n\n>From here\n>>From there\nend\n\n"
        );
    }

    #[test]
    fn the_null_sender_is_mailer_daemon() {
        assert!(from_line("", 86400).starts_with("From MAILER-DAEMON Fri Jan  2 "));
    }
}
