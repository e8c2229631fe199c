//! Any message as imap-serve reads it: the MIME tree, BODYSTRUCTURE, BODY,
//! ENVELOPE, the decoded header fields, and every part's sections. Each
//! part lies inside its parent (so the sizes BODYSTRUCTURE gives add up to
//! no more than the message), children follow each other in order, and the
//! writers' output has balanced parentheses outside strings.
#![no_main]

use libfuzzer_sys::fuzz_target;
use postroom::proto::imap::command::{Section, SectionText};
use postroom::proto::message::wire_form;
use postroom::proto::mime::{self, Part};

/// Checks the part's bounds against its container's, and visits children.
fn check(part: &Part, start: usize, end: usize) {
    assert!(start <= part.start && part.start <= part.body, "{part:?}");
    assert!(
        part.body <= part.end && part.end <= end,
        "{part:?} outside {start}..{end}"
    );
    let mut at = part.body;
    for child in &part.children {
        assert!(child.start >= at, "children overlap: {child:?}");
        check(child, part.body, part.end);
        at = child.end;
    }
    if let Some(inner) = &part.message {
        check(inner, part.body, part.end);
    }
}

/// The bytes outside quoted strings and literals have balanced parentheses.
fn balanced(out: &[u8]) {
    let mut depth = 0i64;
    let mut i = 0;
    while i < out.len() {
        match out[i] {
            b'"' => {
                i += 1;
                while i < out.len() && out[i] != b'"' {
                    i += if out[i] == b'\\' { 2 } else { 1 };
                }
            }
            b'{' => {
                let close = out[i..].iter().position(|&b| b == b'}').map(|c| i + c);
                let Some(close) = close else {
                    panic!(
                        "unclosed literal size in {:?}",
                        String::from_utf8_lossy(out)
                    );
                };
                let n: usize = std::str::from_utf8(&out[i + 1..close])
                    .ok()
                    .and_then(|d| d.parse().ok())
                    .unwrap_or_else(|| panic!("bad literal in {:?}", String::from_utf8_lossy(out)));
                // "}" CRLF, then the n bytes.
                i = close + 3 + n;
                continue;
            }
            b'(' => depth += 1,
            b')' => {
                depth -= 1;
                assert!(depth >= 0, "{:?}", String::from_utf8_lossy(out));
            }
            _ => {}
        }
        i += 1;
    }
    assert_eq!(depth, 0, "{:?}", String::from_utf8_lossy(out));
}

fuzz_target!(|data: &[u8]| {
    // IMAP serves the wire form; the parser is also fed the raw bytes.
    for msg in [wire_form(data), data.to_vec()] {
        let root = mime::parse(&msg);
        check(&root, 0, msg.len());
        // The part numbers a client may name, breadth first, as far as
        // they resolve.
        let mut paths: Vec<Vec<u32>> = Vec::new();
        let mut next = 0;
        let mut todo = vec![Vec::new()];
        while let Some(path) = todo.pop() {
            for n in 1..=8u32 {
                let mut child = path.clone();
                child.push(n);
                let Some(part) = mime::resolve(&root, &child) else {
                    break;
                };
                assert!(part.end <= msg.len());
                if paths.len() < 64 && child.len() < 8 {
                    paths.push(child.clone());
                    todo.push(child);
                }
            }
            next += 1;
            if next > 64 {
                break;
            }
        }
        for extended in [false, true] {
            let mut out = Vec::new();
            mime::body_structure(&mut out, &msg, &root, extended);
            balanced(&out);
        }
        let header = mime::header_of(&msg);
        let mut out = Vec::new();
        mime::envelope(&mut out, header);
        balanced(&out);
        let _ = mime::decoded_headers(header);
        for path in &paths {
            let _ = mime::binary_data(&msg, Some(&root), path);
            for text in [
                SectionText::Full,
                SectionText::Header,
                SectionText::Text,
                SectionText::Mime,
            ] {
                let section = Section {
                    part: path.clone(),
                    text,
                };
                let _ = mime::section_data(&msg, Some(&root), &section);
            }
        }
        let _ = mime::header_fields(header, &["SUBJECT".to_string(), "FROM".to_string()], false);
    }
});
