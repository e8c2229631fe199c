//! postroom: the tree contract shared by every postroom command.
//!
//! The binaries in `bin/` are thin: they parse arguments, speak a protocol or
//! a command line, and call into this library for everything that touches
//! the tree (`postroom-tree(5)`). Processes coordinate only through that
//! tree, guarded by file locks; nothing here keeps state in memory that
//! another process would need.
//!
//! The library is grouped by concern, so a folder name says where a job
//! lives:
//!
//! - [`store`]: the tree's durable state: maildir delivery, the mailbox view
//!   POP3 and IMAP share, the queue, and the locking and atomic-replace
//!   rules they all use.
//! - [`directory`]: who exists and who may log in: users, aliases, domains,
//!   access rules, password hashes, login limits, SRS.
//! - [`proto`]: codecs and state machines that do no I/O: SMTP, POP3, IMAP,
//!   ManageSieve, SASL, MIME structure, message flags, messages and their line endings,
//!   addresses.
//! - [`delivery`]: what happens to a message once accepted: local delivery,
//!   Sieve (and where users keep their scripts), vacation, mailing lists, delivery status notifications, and the
//!   one way into the queue.
//! - [`net`]: how servers get and keep connections: launch modes, limits,
//!   TLS, DNS, privileges, logging.
//! - [`config`]: `postroom.toml`, which names every path of the tree;
//!   [`cli`]: what every command-line program does with its output;
//!   [`program`]: how an outside program (a pipe alias, a hook) is run.
//!
//! The groups form layers, and a module uses only the layers below its own:
//! `proto` (uses nothing of ours), then `config`, then `store`, then
//! `directory`, then `delivery` and `net`. A helper that seems to need a
//! layer above belongs in that layer.

#![forbid(unsafe_code)]

pub mod cli;
pub mod config;
pub mod delivery;
pub mod directory;
pub mod net;
pub mod program;
pub mod proto;
pub mod store;
