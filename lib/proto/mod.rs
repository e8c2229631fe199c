//! Codecs and protocol state machines that do no I/O, so they are tested
//! without sockets: SMTP, POP3, IMAP and ManageSieve commands, MIME
//! structure and its 7-bit form, message line endings, addresses, delivery
//! status notifications, MTA-STS policies and the HTTP requests `list-web`
//! answers.
//! `strings` holds the quoted strings and literals IMAP and ManageSieve share.

pub mod address;
pub mod flags;
pub mod html;
pub mod http;
pub mod imap;
pub mod managesieve;
pub mod mbox;
pub mod message;
pub mod mime;
pub mod mta_sts;
pub mod pop3;
pub mod sasl;
pub mod seven_bit;
pub mod smtp;
pub mod strings;
pub mod xtext;
