//! DATA framing both ways. The raw bytes as a client's DATA (split into
//! lines as smtp-recv reads them) must never panic the reader; and the
//! bytes as a message must come back unchanged through each writer of
//! dot-stuffed text (smtp-send's DataEncoder, pop3-serve's Transmit) and
//! smtp-recv's DataReader: one end of data, at the end, and the same bytes.
#![no_main]

use libfuzzer_sys::fuzz_target;
use postroom::proto::message::{to_crlf, wire_form};
use postroom::proto::pop3::Transmit;
use postroom::proto::smtp::{DataEncoder, DataLine, DataProblem, DataReader};

/// What smtp-recv keeps of `wire`, and whether "." CRLF ended it exactly at
/// the end.
fn receive(wire: &[u8]) -> (Vec<u8>, bool, Option<DataProblem>) {
    let mut reader = DataReader::new(u64::MAX);
    let mut body = Vec::new();
    let mut lines = wire.split_inclusive(|&b| b == b'\n');
    let mut ended_at_end = false;
    while let Some(line) = lines.next() {
        match reader.line(line) {
            DataLine::Body(bytes) => body.extend_from_slice(bytes),
            DataLine::End => {
                ended_at_end = lines.next().is_none();
                break;
            }
        }
    }
    (body, ended_at_end, reader.problem())
}

fuzz_target!(|data: &[u8]| {
    // As a client's DATA, whatever it holds.
    let (_, _, _) = receive(data);
    let mut limited = DataReader::new(64);
    for line in data.split_inclusive(|&b| b == b'\n') {
        if limited.line(line) == DataLine::End {
            break;
        }
    }
    let _ = limited.keeping();

    // As a message smtp-send relays.
    let mut encoder = DataEncoder::new();
    let mut wire = Vec::new();
    // In two pieces, as a stream gives it.
    let half = data.len() / 2;
    encoder.push(&data[..half], &mut wire);
    encoder.push(&data[half..], &mut wire);
    encoder.finish(&mut wire);
    let (body, ended, problem) = receive(&wire);
    assert!(
        ended,
        "the encoder's end of data is not where the reader ends"
    );
    if data.contains(&0) {
        assert_eq!(problem, Some(DataProblem::Nul));
    } else {
        assert_eq!(problem, None);
    }
    let canonical = to_crlf(data);
    // Lines within the limit arrive unchanged (longer ones are folded).
    if canonical.split(|&b| b == b'\n').all(|l| l.len() < 900) {
        assert_eq!(body, canonical);
    }
    assert!(wire.split(|&b| b == b'\n').all(|l| l.len() <= 1000));

    // As a stored message pop3-serve sends with RETR.
    let mut transmit = Transmit::whole();
    let mut sent = Vec::new();
    transmit.feed(&data[..half], &mut sent);
    transmit.feed(&data[half..], &mut sent);
    transmit.finish(&mut sent);
    let (body, ended, _) = receive(&sent);
    assert!(ended, "RETR's end of data is not where the reader ends");
    let stored = wire_form(data);
    assert_eq!(
        transmit.octets(),
        stored.len() as u64,
        "RETR octets differ from LIST's size"
    );
    assert_eq!(body, stored);
});
