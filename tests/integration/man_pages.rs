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

/// Long flags (`--name`) in the help output of a program and every one of
/// its subcommands, found by walking the "Commands:" lists of the help.
fn flags(program: &str, args: &[&str]) -> BTreeSet<String> {
    let out = Command::new(bin(program))
        .args(args)
        .arg("--help")
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout).to_string();
    let mut found: BTreeSet<String> = long_flags(&text)
        .into_iter()
        .filter(|w| w != "--help" && w != "--version")
        .collect();
    for sub in subcommands(&text) {
        let mut deeper = args.to_vec();
        deeper.push(&sub);
        found.extend(flags(program, &deeper));
    }
    found
}

/// The subcommands a clap help text lists under "Commands:".
fn subcommands(help: &str) -> Vec<String> {
    help.lines()
        .skip_while(|l| l.trim() != "Commands:")
        .skip(1)
        .take_while(|l| l.starts_with("  "))
        // A description that wraps goes on deeper indented; names do not.
        .filter(|l| !l.starts_with("   "))
        .filter_map(|l| l.split_whitespace().next())
        .filter(|name| *name != "help")
        .map(str::to_string)
        .collect()
}

/// Whole `--flag` words in a text (a help output or a page).
fn long_flags(text: &str) -> BTreeSet<String> {
    let text = text
        .replace("\\fB", " ")
        .replace("\\fI", " ")
        .replace("\\fR", " ");
    text.split(|c: char| !(c.is_ascii_alphanumeric() || c == '-'))
        .filter(|w| w.starts_with("--") && w.len() > 2 && w.as_bytes()[2].is_ascii_alphabetic())
        .map(|w| w.trim_end_matches('-').to_string())
        .collect()
}

/// The options a page defines: the flags on the tag line of each `.TP`.
fn defined_flags(page: &str) -> BTreeSet<String> {
    let lines: Vec<&str> = page.lines().collect();
    lines
        .windows(2)
        .filter(|pair| pair[0].trim() == ".TP")
        .flat_map(|pair| long_flags(pair[1]))
        .collect()
}

/// Both directions: every flag the program accepts is in its page (as a
/// whole word, so `--message` does not count for `--message-id`), and every
/// option the page defines is one the program accepts.
fn matches_page(program: &str, page: &str) {
    let accepted = flags(program, &[]);
    assert!(!accepted.is_empty(), "{program} --help lists no flags");
    let text = man(page);
    let written = long_flags(&text);
    let missing: Vec<_> = accepted.difference(&written).collect();
    assert!(
        missing.is_empty(),
        "{program} accepts {missing:?}, not in man/{page}"
    );
    let defined = defined_flags(&text);
    let unknown: Vec<_> = defined
        .difference(&accepted)
        .filter(|f| *f != "--help" && *f != "--version")
        .collect();
    assert!(
        unknown.is_empty(),
        "man/{page} defines {unknown:?}, {program} has no such flag"
    );
}

#[test]
fn every_flag_of_every_program_is_in_its_man_page_and_back() {
    for (program, page) in [
        ("postroom", "postroom.8"),
        ("smtp-recv", "smtp-recv.8"),
        ("smtp-send", "smtp-send.8"),
        ("pop3-serve", "pop3-serve.8"),
        ("imap-serve", "imap-serve.8"),
        ("vacation", "vacation.1"),
        ("mailsort", "mailsort.1"),
        ("list-expand", "list-expand.1"),
        ("list-web", "list-web.8"),
    ] {
        matches_page(program, page);
    }
}

#[test]
fn every_subcommand_of_list_expand_is_in_its_man_page() {
    let text = man("list-expand.1");
    let out = Command::new(bin("list-expand"))
        .arg("--help")
        .output()
        .unwrap();
    for sub in subcommands(&String::from_utf8_lossy(&out.stdout)) {
        assert!(text.contains(&sub), "{sub} is not in man/list-expand.1");
    }
}

#[test]
fn every_flag_of_mail_inject_is_in_its_man_page_and_back() {
    let page = man("mail-inject.8");
    let out = Command::new(bin("mail-inject"))
        .arg("--help")
        .output()
        .unwrap();
    let usage = String::from_utf8_lossy(&out.stdout);
    let words: BTreeSet<&str> = usage
        .split(|c: char| c.is_whitespace() || c == '[' || c == ']' || c == '|')
        .filter(|w| w.starts_with('-') && w.len() > 1)
        .collect();
    assert!(words.len() > 8, "usage lists the flags: {usage}");
    let written: BTreeSet<String> = page
        .replace("\\fB", " ")
        .replace("\\fI", " ")
        .replace("\\fR", " ")
        .split(|c: char| !(c.is_ascii_alphanumeric() || c == '-'))
        .map(str::to_string)
        .collect();
    for flag in &words {
        assert!(
            written.contains(*flag),
            "{flag} is not in man/mail-inject.8"
        );
    }
    // The page's option tags name flags the usage knows (sendmail's
    // accepted-and-ignored ones are listed in the usage too).
    let lines: Vec<&str> = page.lines().collect();
    for pair in lines.windows(2).filter(|p| p[0].trim() == ".TP") {
        let tag = pair[1]
            .replace("\\fB", " ")
            .replace("\\fR", " ")
            .replace("\\fI", " ");
        if let Some(flag) = tag
            .split(|c: char| c.is_whitespace() || c == '"' || c == ',')
            .find(|w| w.starts_with('-') && w.len() > 1)
        {
            assert!(
                words.contains(flag) || flag == "--help" || flag == "-h",
                "man/mail-inject.8 defines {flag}, mail-inject's usage has no such flag"
            );
        }
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
