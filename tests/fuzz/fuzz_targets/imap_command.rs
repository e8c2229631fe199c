//! A stream of IMAP commands as imap-serve frames them: a line, and while
//! it ends in a literal announcement `{N}`, that many bytes and the next
//! line. Each framed command goes to the parser. What parses must survive
//! the server's own writers: a sequence set written back reads the same,
//! a mailbox name or login written as an astring reads the same, and a
//! mailbox name decodes to a name that encodes back to itself.
#![no_main]

use libfuzzer_sys::fuzz_target;
use postroom::proto::imap::command::{self, Body, Command, literal_at_end};
use postroom::proto::imap::response::astring;
use postroom::store::mailbox::name::{MailboxName, decode_utf7, encode_utf7};

/// The commands in `input`, framed as the session does (a literal larger
/// than what is left takes the rest).
fn frame(mut input: &[u8]) -> Vec<&[u8]> {
    let mut commands = Vec::new();
    while !input.is_empty() {
        let mut end = 0;
        loop {
            let line_end = input[end..]
                .iter()
                .position(|&b| b == b'\n')
                .map_or(input.len(), |i| end + i + 1);
            end = line_end;
            match literal_at_end(&input[..end]) {
                Some((size, _)) => end = end.saturating_add(size).min(input.len()),
                None => break,
            }
            if end == input.len() {
                break;
            }
        }
        commands.push(&input[..end]);
        input = &input[end..];
    }
    commands
}

fn reparses(line: &[u8], expected: &Body) {
    match command::parse(line) {
        Ok(Command { body, .. }) => {
            assert_eq!(&body, expected, "{:?}", String::from_utf8_lossy(line))
        }
        Err(e) => panic!(
            "{:?} does not parse again: {e:?}",
            String::from_utf8_lossy(line)
        ),
    }
}

fn with_strings(verb: &str, strings: &[&str]) -> Vec<u8> {
    let mut line = format!("t {verb}").into_bytes();
    for s in strings {
        line.push(b' ');
        astring(&mut line, s);
    }
    line.extend_from_slice(b"\r\n");
    line
}

fn mailbox_name(wire: &str) {
    for utf8 in [false, true] {
        if let Ok(name) = MailboxName::from_wire(wire, utf8) {
            let again =
                MailboxName::from_wire(&name.wire(utf8), utf8).map(|n| n.as_str().to_string());
            assert_eq!(again.as_deref(), Ok(name.as_str()));
        }
    }
    if let Some(text) = decode_utf7(wire) {
        assert_eq!(
            decode_utf7(&encode_utf7(&text)).as_deref(),
            Some(text.as_str())
        );
    }
}

fuzz_target!(|input: &[u8]| {
    for framed in frame(input) {
        let Ok(command) = command::parse(framed) else {
            continue;
        };
        let _ = command.body.allows_expunge();
        match &command.body {
            Body::Login { user, password } => {
                reparses(&with_strings("LOGIN", &[user, password]), &command.body)
            }
            // CREATE-SPECIAL-USE's (USE (...)) is not written back here.
            Body::Create(mailbox, uses) if uses.is_empty() => {
                mailbox_name(mailbox);
                reparses(&with_strings("CREATE", &[mailbox]), &command.body)
            }
            Body::Create(mailbox, _) => mailbox_name(mailbox),
            Body::Delete(mailbox) => reparses(&with_strings("DELETE", &[mailbox]), &command.body),
            Body::Rename(from, to) => {
                mailbox_name(from);
                mailbox_name(to);
                reparses(&with_strings("RENAME", &[from, to]), &command.body)
            }
            Body::Subscribe(mailbox) => {
                reparses(&with_strings("SUBSCRIBE", &[mailbox]), &command.body)
            }
            Body::Select { mailbox, .. } => mailbox_name(mailbox),
            Body::Fetch { set, .. } | Body::Store { set, .. } | Body::Copy { set, .. } => {
                for (lo, hi) in set.ranges(1000) {
                    assert!(lo <= hi);
                }
                let line = format!("t UID COPY {set} x\r\n");
                match command::parse(line.as_bytes()).map(|c| c.body) {
                    Ok(Body::Copy { set: again, .. }) => assert_eq!(&again, set, "{line:?}"),
                    other => panic!("{line:?}: {other:?}"),
                }
            }
            _ => {}
        }
    }
});
