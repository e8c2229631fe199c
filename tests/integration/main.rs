//! End-to-end tests: the real binaries on temporary trees (one test index,
//! as ripgrep does, so the binaries are built once).

mod auth;
mod directory_index;
mod dkim;
mod dns;
mod first_day;
mod foundation;
mod imap_round2;
mod imap_serve;
mod layout;
mod list_expand;
mod mailsort;
mod man_pages;
mod multihost;
mod pop3_serve;
mod sink;
mod smtp_recv;
mod smtp_send;
mod users_file;
mod util;
mod vacation;
