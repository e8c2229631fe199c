//! The IMAP codec (RFC 9051, RFC 3501 and the extensions imap-serve(8)
//! lists): the command parser and the response encoders. No I/O.

pub mod command;
pub mod response;
pub mod url;
