//! End-to-end tests: the real binaries on temporary trees (one test index,
//! as ripgrep does, so the binaries are built once).

mod arc;
mod archive;
mod auth;
mod backup;
mod bsmtp;
mod dane;
mod directory_index;
mod disclaimer;
mod dkim;
mod dns;
mod expire;
mod first_day;
mod foundation;
mod imap_acl;
mod imap_index;
mod imap_memory;
mod imap_notify;
mod imap_round2;
mod imap_round3;
mod imap_serve;
mod layout;
#[cfg(feature = "legacy-tls")]
mod legacy_tls;
mod list_expand;
mod list_web;
mod login_hooks;
mod mailall;
mod mailsort;
mod man_pages;
mod mta_sts;
mod multihost;
mod pop3_serve;
mod queue_priority;
mod quota;
mod sieve_serve;
mod sink;
mod smtp_recv;
mod smtp_send;
mod users_file;
mod util;
mod vacation;
