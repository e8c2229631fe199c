//! The state files beside a folder, as any session reads them after a crash
//! or from another program: dovecot-uidlist, dovecot-keywords,
//! postroom-modseq, postroom-cache (NUL-separated in the input, in that
//! order), and the flag letters of a file name; and the whole input as a
//! postroom-index (checksum aside). A torn or hostile file
//! never panics or loops; what reads writes back to what reads the same.
#![no_main]

use libfuzzer_sys::fuzz_target;
use postroom::store::mailbox::cache::{Record, frame, frames};
use postroom::store::mailbox::index;
use postroom::store::mailbox::modseq::ModSeqs;
use postroom::store::mailbox::uidlist::UidList;
use postroom::store::mailbox::{Flags, Keywords};

fuzz_target!(|data: &[u8]| {
    let mut parts = data.splitn(4, |&b| b == 0);
    let uidlist = parts.next().unwrap_or(b"");
    let keywords = parts.next().unwrap_or(b"");
    let modseq = parts.next().unwrap_or(b"");
    let cache = parts.next().unwrap_or(b"");

    // Read as the path versions do: lossy UTF-8.
    let text = String::from_utf8_lossy(uidlist);
    if let Some(list) = UidList::parse(&text) {
        assert!(list.entries.windows(2).all(|w| w[0].0 < w[1].0));
        assert!(
            list.entries
                .last()
                .is_none_or(|(uid, _)| list.next_uid > *uid || *uid == u32::MAX)
        );
        let again = UidList::parse(&list.render());
        assert_eq!(again.as_ref(), Some(&list), "{:?}", list.render());
    }

    let text = String::from_utf8_lossy(keywords);
    let kw = Keywords::parse(&text);
    assert_eq!(Keywords::parse(&kw.to_text()), kw);
    for line in text.lines().take(4) {
        let flags = Flags::from_info(line);
        let info = flags.apply_to_info(line);
        assert_eq!(Flags::from_info(&info), flags, "{line:?} -> {info:?}");
        let _: Vec<&str> = kw.names_of(flags.keywords).collect();
    }

    let seqs = ModSeqs::parse(modseq, 7);
    let (expunged, _) = seqs.expunged_since(0);
    assert!(expunged.windows(2).all(|w| w[0] < w[1]));
    for uid in expunged.iter().take(16) {
        assert!(seqs.of(*uid) <= seqs.highest());
    }

    let (found, used) = frames(cache);
    assert!(used <= cache.len());
    for (uid, offset, len) in found {
        let payload = &cache[offset..offset + len as usize];
        if let Some(record) = Record::decode(payload) {
            assert_eq!(record.uid, uid);
            let bytes = record.encode();
            assert_eq!(&payload[..bytes.len()], &bytes[..], "{record:?}");
            assert_eq!(frame(&record)[8..], bytes[..]);
        }
    }
    // The payload decoder alone, without a CRC to get past.
    if let Some(record) = Record::decode(cache) {
        let bytes = record.encode();
        assert_eq!(&cache[..bytes.len()], &bytes[..]);
        assert_eq!(Record::decode(&bytes), Some(record));
    }

    if let Some((header, entries)) = index::decode_unchecked(data) {
        assert_eq!(header.count as usize, entries.len());
        let bytes = index::encode(&header, &entries).expect("what decodes encodes");
        assert_eq!(bytes[16..], data[16..]);
        assert_eq!(index::decode(&bytes), Some((header, entries)));
    }
});
