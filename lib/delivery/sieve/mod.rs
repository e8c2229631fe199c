//! Sieve (RFC 5228): delivery-time rules a user writes, run by `mailsort`.
//!
//! The only Rust Sieve crate is AGPL, which would bind every user of
//! postroom, so the language is implemented here: `parse` turns text into
//! a generic tree, `compile` checks it against the commands, tests and
//! extensions supported and builds typed rules, and `run` applies the
//! rules to one message and returns the actions. Running has a step and
//! time budget and a size limit on regular expressions (linear-time
//! engine), so no script can stall delivery (the class of Pigeonhole's
//! CVE-2020-28200). See `postroom-sieve(5)`.

mod compile;
mod parse;
mod run;
pub mod storage;

pub use compile::{EXTENSIONS, Script};
pub use run::{Action, Input};

/// A script that cannot be used, and where: line and column (1-based).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("line {line}, column {column}: {message}")]
pub struct SieveError {
    pub line: usize,
    pub column: usize,
    pub message: String,
}
