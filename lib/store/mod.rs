//! The tree's durable state (`postroom-tree(5)`): messages in maildirs, the
//! mailbox view POP3 and IMAP share, the queue, and the file rules (locks,
//! atomic replace, fsync) that let many processes and hosts use them at once.

pub mod backup;
pub mod fsutil;
pub mod mailbox;
pub mod maildir;
pub mod pace;
pub mod queue;
pub mod watch;
