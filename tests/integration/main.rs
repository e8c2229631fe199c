//! End-to-end tests: the real binaries on temporary trees (one test index,
//! as ripgrep does, so the binaries are built once).

mod dns;
mod foundation;
mod imap_serve;
mod man_pages;
mod smtp_recv;
mod util;
