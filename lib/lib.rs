//! postroom: the tree contract shared by every postroom command.
//!
//! The binaries in `bin/` are thin: they parse arguments, speak a protocol or
//! a command line, and call into this library for everything that touches
//! the tree (DESIGN §2): the config, the users, aliases and domains files,
//! maildirs, and the queue. Processes coordinate only through that tree,
//! guarded by file locks; nothing here keeps state in memory that another
//! process would need.

#![forbid(unsafe_code)]

pub mod access;
pub mod address;
pub mod aliases;
pub mod authlimit;
pub mod config;
pub mod deliver;
pub mod dns;
pub mod domains;
pub mod dsn;
pub mod fsutil;
pub mod lists;
pub mod log;
pub mod mailbox;
pub mod maildir;
pub mod message;
pub mod net;
pub mod password;
pub mod pop3;
pub mod privileges;
pub mod queue;
pub mod sasl;
pub mod sieve;
pub mod smtp;
pub mod sort;
pub mod srs;
pub mod tls;
pub mod users;
pub mod vacation;
