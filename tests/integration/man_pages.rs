//! The man pages are the contract: every flag a program accepts must be in
//! its page, and every page must carry the sections a reader looks for.
//! (clap_mangen could generate the OPTIONS part, but not the EXIT STATUS
//! contract and file formats that make a page worth reading, so the pages
//! are written by hand and this test keeps them honest.)

use std::collections::BTreeSet;
use std::path::Path;
use std::process::Command;

use crate::util::bin;

fn man(name: &str) -> String {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("man").join(name);
    std::fs::read_to_string(&path)
        .unwrap_or_else(|e| panic!("{}: {e}", path.display()))
        // roff escapes the hyphen: \- and \fB--x\fR both read as --x here.
        .replace("\\-", "-")
}

/// Long flags (`--name`) in a program's help output.
fn flags(program: &str, args: &[&str]) -> BTreeSet<String> {
    let out = Command::new(bin(program))
        .args(args)
        .arg("--help")
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    text.split(|c: char| {
        c.is_whitespace() || c == '[' || c == ']' || c == ',' || c == '|' || c == '='
    })
    .filter(|w| w.starts_with("--") && w.len() > 2)
    .map(|w| {
        w.trim_end_matches(|c: char| !c.is_ascii_alphanumeric())
            .to_string()
    })
    .filter(|w| w != "--help" && w != "--version")
    .collect()
}

#[test]
fn every_flag_of_postroom_is_in_its_man_page() {
    let page = man("postroom.8");
    let mut missing = Vec::new();
    for sub in [
        vec![],
        vec!["init"],
        vec!["user", "add"],
        vec!["user", "passwd"],
        vec!["passwd"],
        vec!["check"],
        vec!["queue", "list"],
        vec!["queue", "show"],
        vec!["queue", "hold"],
        vec!["queue", "delete"],
        vec!["demo"],
    ] {
        for flag in flags("postroom", &sub) {
            if !page.contains(&flag) {
                missing.push(format!("postroom {} {flag}", sub.join(" ")));
            }
        }
    }
    assert!(missing.is_empty(), "not in man/postroom.8: {missing:?}");
}

#[test]
fn every_flag_of_smtp_recv_is_in_its_man_page() {
    let page = man("smtp-recv.8");
    let found = flags("smtp-recv", &[]);
    assert!(found.len() >= 5, "{found:?}");
    for flag in found {
        assert!(page.contains(&flag), "{flag} is not in man/smtp-recv.8");
    }
}

#[test]
fn every_flag_of_smtp_send_pop3_serve_and_vacation_is_in_its_man_page() {
    for (program, page, at_least) in [
        ("smtp-send", "smtp-send.8", 6),
        ("pop3-serve", "pop3-serve.8", 4),
        ("vacation", "vacation.1", 8),
        ("mailsort", "mailsort.1", 6),
    ] {
        let text = man(page);
        let found = flags(program, &[]);
        assert!(found.len() >= at_least, "{found:?}");
        for flag in found {
            assert!(text.contains(&flag), "{flag} is not in man/{page}");
        }
    }
}

#[test]
fn every_flag_of_list_expand_is_in_its_man_page() {
    let text = man("list-expand.1");
    for sub in [
        "create", "add", "remove", "post", "show", "request", "bounce", "archive", "digest",
    ] {
        for flag in flags("list-expand", &[sub]) {
            assert!(
                text.contains(&flag),
                "list-expand {sub} {flag} is not in man/list-expand.1"
            );
        }
        assert!(text.contains(sub), "{sub} is not in man/list-expand.1");
    }
}

#[test]
fn every_flag_of_mail_inject_is_in_its_man_page() {
    let page = man("mail-inject.8");
    let out = Command::new(bin("mail-inject"))
        .arg("--help")
        .output()
        .unwrap();
    let usage = String::from_utf8_lossy(&out.stdout);
    let words: Vec<&str> = usage
        .split(|c: char| c.is_whitespace() || c == '[' || c == ']' || c == '|')
        .filter(|w| w.starts_with('-') && w.len() > 1)
        .collect();
    assert!(words.len() > 8, "usage lists the flags: {usage}");
    for flag in words {
        assert!(page.contains(flag), "{flag} is not in man/mail-inject.8");
    }
}

#[test]
fn every_page_has_its_sections() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("man");
    let mut pages = 0;
    for entry in std::fs::read_dir(&dir).unwrap() {
        let name = entry.unwrap().file_name().to_string_lossy().to_string();
        let text = man(&name);
        for section in ["NAME", "DESCRIPTION", "SEE ALSO"] {
            assert!(
                text.contains(&format!(".SH {section}")),
                "{name} has no {section}"
            );
        }
        if name.ends_with(".8") || name.ends_with(".1") {
            assert!(
                text.contains(".SH EXIT STATUS"),
                "{name} has no EXIT STATUS"
            );
            assert!(text.contains(".SH SYNOPSIS"), "{name} has no SYNOPSIS");
        } else {
            assert!(text.contains(".SH FILES"), "{name} has no FILES");
        }
        pages += 1;
    }
    // Every program in bin/ has a page.
    for program in std::fs::read_dir(Path::new(env!("CARGO_MANIFEST_DIR")).join("bin")).unwrap() {
        let name = program
            .unwrap()
            .file_name()
            .to_string_lossy()
            .trim_end_matches(".rs")
            .to_string();
        assert!(
            dir.join(format!("{name}.8")).exists() || dir.join(format!("{name}.1")).exists(),
            "bin/{name} has no man page"
        );
    }
    assert!(pages >= 7);
}

#[test]
fn every_flag_of_imap_serve_is_in_its_man_page() {
    let page = man("imap-serve.8");
    let found = flags("imap-serve", &[]);
    assert!(found.len() >= 4, "{found:?}");
    for flag in found {
        assert!(page.contains(&flag), "{flag} is not in man/imap-serve.8");
    }
}
