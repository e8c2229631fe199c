//! A queue file's envelope and its delivery log, as the runner reads them
//! from a tree that may hold torn or hostile files (the input is the queue
//! file, then a NUL, then the log). An envelope that reads, written back
//! as the queue writes it, reads the same; the log's state always has one
//! entry per recipient.
#![no_main]

use std::path::Path;

use libfuzzer_sys::fuzz_target;
use postroom::store::queue::{Envelope, parse_log};

fuzz_target!(|data: &[u8]| {
    let (file, log) = match data.iter().position(|&b| b == 0) {
        Some(nul) => (&data[..nul], &data[nul + 1..]),
        None => (data, &b""[..]),
    };
    let path = Path::new("fuzz");
    let count = match Envelope::parse_bytes(file, path) {
        Ok((id, envelope)) => {
            let (text, _) = envelope.render(&id);
            match Envelope::parse_bytes(text.as_bytes(), path) {
                Ok(again) => assert_eq!(again, (id, envelope), "{text:?}"),
                Err(e) => panic!("{text:?} does not read again: {e}"),
            }
            envelope_count(&text)
        }
        Err(_) => 3,
    };
    let state = parse_log(log, count, path);
    assert_eq!(state.recipients.len(), count);
});

fn envelope_count(text: &str) -> usize {
    text.lines().filter(|l| l.starts_with("rcpt ")).count()
}
