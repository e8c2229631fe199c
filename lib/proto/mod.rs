//! Codecs and protocol state machines that do no I/O, so they are tested
//! without sockets: SMTP, POP3 and IMAP commands, MIME structure, message
//! line endings, addresses and delivery status notifications.

pub mod address;
pub mod flags;
pub mod html;
pub mod imap;
pub mod message;
pub mod mime;
pub mod pop3;
pub mod sasl;
pub mod smtp;
pub mod xtext;
