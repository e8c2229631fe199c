//! The bounce address list-expand reads (VERP, `LIST-bounces+local=domain@…`)
//! and the list files it keeps (member rosters). A member folded into a
//! return path by the queue comes back out of it as the same member; any
//! other address names no member or a valid one.
#![no_main]

use std::path::Path;

use libfuzzer_sys::fuzz_target;
use postroom::delivery::lists::{member_of_verp, read_address_lines};
use postroom::proto::address::{Address, ReversePath};
use postroom::store::queue::{Envelope, Recipient, Route};

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let _ = read_address_lines(text, Path::new("fuzz"));
    let mut lines = text.lines();
    let (Some(list), Some(other)) = (lines.next(), lines.next()) else {
        return;
    };
    let Ok(list) = Address::parse(list) else {
        return;
    };
    let delimiter = lines.next().and_then(|l| l.chars().next()).unwrap_or('+');
    // Any address a bounce may come to.
    if let Ok(bounce) = Address::parse(other) {
        if let Some(member) = member_of_verp(&list, &bounce, delimiter) {
            assert!(Address::parse(&member.to_string()).is_ok());
        }
        // The round trip through the queue's VERP.
        let Ok(bounces) =
            Address::parse(&format!("{}-bounces@{}", list.local_part(), list.domain()))
        else {
            return;
        };
        let mut envelope = Envelope::new(
            ReversePath::Address(bounces),
            vec![Recipient::new(Route::Remote, bounce.clone())],
        );
        envelope.verp = true;
        if let ReversePath::Address(path) = envelope.sender_for(&bounce, delimiter)
            && path.local_part() != format!("{}-bounces", list.local_part())
        {
            let member = member_of_verp(&list, &path, delimiter);
            assert_eq!(
                member.map(|m| m.lookup_key()),
                Some(bounce.lookup_key()),
                "{path} for {bounce}"
            );
        }
    }
});
