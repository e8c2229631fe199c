//! One POP3 command line as pop3-serve reads it. A parsed command, written
//! out again as a client would send it, parses to the same command; AUTH
//! PLAIN's initial response goes through the SASL decoder.
#![no_main]

use libfuzzer_sys::fuzz_target;
use postroom::proto::pop3::{Command, decode_plain};

/// The command as a client sends it.
fn render(command: &Command) -> String {
    match command {
        Command::User(name) => format!("USER {name}\r\n"),
        Command::Pass(password) => format!("PASS {}\r\n", password.0),
        Command::Auth { mechanism, initial } => {
            let mut line = String::from("AUTH");
            for word in [mechanism, initial].into_iter().flatten() {
                line.push(' ');
                line.push_str(word);
            }
            line + "\r\n"
        }
        Command::List(Some(n)) => format!("LIST {n}\r\n"),
        Command::Uidl(Some(n)) => format!("UIDL {n}\r\n"),
        Command::Retr(n) => format!("RETR {n}\r\n"),
        Command::Dele(n) => format!("DELE {n}\r\n"),
        Command::Top(n, lines) => format!("TOP {n} {lines}\r\n"),
        other => format!("{}\r\n", other.name()),
    }
}

fuzz_target!(|line: &[u8]| {
    let Ok(command) = Command::parse(line) else {
        return;
    };
    if let Command::Auth {
        initial: Some(initial),
        ..
    } = &command
    {
        let _ = decode_plain(initial);
    }
    // APOP's arguments are not kept: it is only ever refused.
    if command == Command::Apop {
        return;
    }
    let again = render(&command);
    assert_eq!(
        Command::parse(again.as_bytes()).as_ref(),
        Ok(&command),
        "{again:?}"
    );
});
