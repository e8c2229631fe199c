//! What happens to a message after it is accepted: delivery into maildirs
//! and pipes, Sieve rules (the language in [`sieve`], delivery by it in
//! [`filter`]), vacation replies and mailing lists.

pub mod deliver;
pub mod filter;
pub mod lists;
pub mod sieve;
pub mod vacation;
