//! A user's Sieve script: the parser and compiler on any text, and a script
//! that compiles run on a fixed small message, within its step and time
//! budget (libFuzzer's -timeout catches one that is not bounded).
#![no_main]

use libfuzzer_sys::fuzz_target;
use postroom::delivery::sieve::{Action, Input, Script};

const MESSAGE: &[u8] = b"Return-Path: <ann@example.test>\r\n\
From: Ann Example <ann@example.test>\r\n\
To: bob@example.test, \"Carol\" <carol+lists@example.test>\r\n\
Subject: =?UTF-8?Q?caf=C3=A9?= meeting\r\n\
Date: Tue, 1 Dec 2026 10:00:00 +0000\r\n\
Message-ID: <1@example.test>\r\n\
List-Id: <talk.example.test>\r\n\
MIME-Version: 1.0\r\n\
Content-Type: multipart/mixed; boundary=\"b\"\r\n\
\r\n\
--b\r\n\
Content-Type: text/plain; charset=utf-8\r\n\
\r\n\
Hello Bob, the meeting is at ten.\r\n\
--b\r\n\
Content-Type: text/html\r\n\
\r\n\
<p>Hello <b>Bob</b></p>\r\n\
--b--\r\n";

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let Ok(script) = Script::compile(text) else {
        return;
    };
    let exists = |name: &str| name == "INBOX" || name == "Lists";
    let list = |name: &str| (name == "friends").then(|| vec!["ann@example.test".to_string()]);
    let input = Input {
        message: MESSAGE,
        envelope_from: "ann@example.test",
        envelope_to: "bob+work@example.test",
        delimiter: '+',
        mailbox_exists: &exists,
        list: &list,
    };
    if let Ok(actions) = script.run(&input) {
        // At most one implicit or explicit keep.
        let keeps = actions
            .iter()
            .filter(|a| matches!(a, Action::Keep { .. }))
            .count();
        assert!(keeps <= 1, "{actions:?}");
    }
});
