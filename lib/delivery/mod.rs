//! What happens to a message after it is accepted: delivery into maildirs
//! and pipes, Sieve rules (the language in [`sieve`], delivery by it in
//! [`filter`]), vacation replies, mailing lists, and [`submit`]: the one
//! way mail postroom writes or passes on itself enters the queue.

pub mod deliver;
pub mod dkim;
pub mod dsn;
pub mod filter;
pub mod lists;
pub mod quota;
pub mod sieve;
pub mod submit;
pub mod vacation;
