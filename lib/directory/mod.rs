//! Who exists and who may log in: the users file, aliases, domains,
//! access rules, password hashes, login backoff and the
//! SRS addresses that stand for forwarded senders.

pub mod access;
pub mod aliases;
pub mod authlimit;
pub mod domains;
pub mod index;
pub mod loginhook;
pub mod password;
pub mod reloading;
pub mod srs;
pub mod users;
