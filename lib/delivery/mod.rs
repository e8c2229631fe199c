//! What happens to a message after it is accepted: delivery into maildirs
//! and pipes, Sieve rules (the language in [`sieve`], delivery by it in
//! [`filter`]), vacation replies, mailing lists, and [`submit`]: the one
//! way mail postroom writes or passes on itself enters the queue.

pub mod arc;
pub mod archive;
pub mod bsmtp;
pub mod deliver;
pub mod disclaimer;
pub mod dkim;
pub mod dsn;
pub mod envelope_smtp;
pub mod filter;
pub mod footer;
pub mod lists;
pub mod mailall;
pub mod quota;
pub mod reply;
pub mod sieve;
pub mod submit;
pub mod vacation;
