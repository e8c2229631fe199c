//! The domains, users and aliases files (NUL-separated in the input, in that
//! order, then addresses to look up), and alias expansion over them: no
//! panic, and every lookup ends (loops and depth are bounded; libFuzzer's
//! -timeout catches an expansion that grows without bound).
#![no_main]

use std::path::Path;

use libfuzzer_sys::fuzz_target;
use postroom::config::Config;
use postroom::directory::aliases::{Aliases, Directory};
use postroom::directory::domains::Domains;
use postroom::directory::users::Users;
use postroom::proto::address::Address;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let mut parts = text.split('\0');
    let (domains, users, aliases) = (
        parts.next().unwrap_or(""),
        parts.next().unwrap_or(""),
        parts.next().unwrap_or(""),
    );
    let lookups = parts.next().unwrap_or("");
    // `:include:` reads a file the text names: not something to let a
    // fuzzer loose on (/dev/zero); the file's lines go through the same
    // target parser as the aliases file's.
    if aliases.to_ascii_lowercase().contains(":include:") {
        return;
    }
    let first_domain = domains
        .lines()
        .map(str::trim)
        .find(|l| !l.is_empty() && !l.starts_with('#'))
        .unwrap_or("example.test");
    // The keys the aliases file defines, as addresses to look up.
    let keys: Vec<String> = aliases
        .lines()
        .filter_map(|l| l.split_once(':'))
        .map(|(key, _)| key.trim())
        .map(|key| match key.split_once('@') {
            Some(("", domain)) => format!("someone@{domain}"),
            Some(_) => key.to_string(),
            None => format!("{key}@{first_domain}"),
        })
        .take(8)
        .collect();
    let path = Path::new("fuzz");
    let domains = Domains::parse(domains, path);
    let users = Users::parse(users, path);
    let aliases = Aliases::parse(aliases, path);
    let (Ok(domains), Ok(users), Ok(aliases)) = (domains, users, aliases) else {
        return;
    };
    let Ok(mut config) = Config::parse("hostname = \"mx.example.test\"\n") else {
        return;
    };
    config.delivery.recipient_delimiter = Some('+');
    let directory = Directory::from_parts(config, domains, users, aliases);
    let mut addresses: Vec<String> = lookups.lines().take(8).map(str::to_string).collect();
    addresses.extend(keys);
    // Users parsed from text are held in memory: listing reads no file.
    let users = directory.users().list(path).unwrap_or_default();
    addresses.extend(users.into_iter().take(8).map(|u| u.address));
    for text in addresses {
        let Ok(address) = Address::parse(&text) else {
            continue;
        };
        let _ = directory.user(&address);
        if let Ok(routes) = directory.routes_for(&address) {
            assert!(!routes.is_empty(), "{text}: resolved to nothing");
        }
    }
});
