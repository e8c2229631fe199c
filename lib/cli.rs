//! What every command-line program (`postroom`, `list-expand`, `mailsort`,
//! `mail-inject`, `vacation`) does the same way with its standard output.
//!
//! Rust ignores SIGPIPE, so `println!` panics when the reader has gone
//! (`postroom check | head -1`). Programs print with [`say!`](crate::say)
//! instead, which returns the write error to the caller, and `main` asks
//! [`reader_left`] whether the error is only that: then the program exits
//! quietly with success, as a C tool killed by SIGPIPE would look to a shell.
//!
//! It also names the allocator of the static per-message programs
//! ([`PerMessageAllocator`]) and keeps what they load for their one
//! message unfreed ([`keep_until_exit`]).

use std::error::Error;
use std::io;

/// The allocator of the static builds (contrib/install/build-static) of
/// the programs started once per message: mail-inject, mailsort and
/// vacation. musl's own malloc gives freed pages back at once, so one
/// mailsort delivery made about 50 `mmap` and `munmap` calls, each with
/// its page faults, a fifth of the process's CPU time (perf). dlmalloc
/// (the allocator Rust's own wasm target uses) takes memory in a few large
/// pieces and keeps what is freed (up to 2 MB) for the process's life,
/// which here is one message: 7 `mmap`/`munmap` calls, and 0.6 ms of CPU
/// per delivery where musl's took 0.7–1.1. smtp-recv, which can run as a
/// threaded daemon, uses jemalloc instead (Cargo.toml).
///
/// dlmalloc installs no fork handler: a `pre_exec` closure in these
/// programs must not allocate (std's spawn does not).
#[cfg(target_env = "musl")]
pub use dlmalloc::GlobalDlmalloc as PerMessageAllocator;

/// `value`, never dropped: the programs started once per message load the
/// config and the directory, deliver, and exit, and freeing those
/// (hundreds of strings and maps) on the way out is work the kernel's exit
/// does anyway, about 5% of mail-inject's instructions. Kept where it is
/// (not leaked into a new heap block, which would touch another page).
pub fn keep_until_exit<T>(value: T) -> std::mem::ManuallyDrop<T> {
    std::mem::ManuallyDrop::new(value)
}

/// `println!` that returns a write error with `?` instead of panicking.
#[macro_export]
macro_rules! say {
    ($($arg:tt)*) => {{
        use ::std::io::Write as _;
        ::std::writeln!(::std::io::stdout().lock(), $($arg)*)?
    }};
}

/// Whether an error, or any error it wraps, is a write to a pipe whose
/// reader has gone.
pub fn reader_left(error: &(dyn Error + 'static)) -> bool {
    let mut next = Some(error);
    while let Some(error) = next {
        if let Some(io) = error.downcast_ref::<io::Error>()
            && io.kind() == io::ErrorKind::BrokenPipe
        {
            return true;
        }
        next = error.source();
    }
    false
}

/// Why a message could not be read from standard input.
#[derive(Debug, thiserror::Error)]
pub enum InputError {
    #[error("reading the message: {0}")]
    Io(#[from] io::Error),
    #[error("the message is larger than limits.message_size ({0} bytes)")]
    TooBig(u64),
}

/// Reads a whole message from `input`, refusing one over `limit` bytes
/// without reading more than one byte past it: memory stays bounded.
pub fn read_message(input: impl io::Read, limit: u64) -> Result<Vec<u8>, InputError> {
    use io::Read as _;
    let mut raw = Vec::new();
    input.take(limit + 1).read_to_end(&mut raw)?;
    if raw.len() as u64 > limit {
        return Err(InputError::TooBig(limit));
    }
    Ok(raw)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug)]
    struct Wrapper(io::Error);
    impl std::fmt::Display for Wrapper {
        fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
            f.write_str("while listing")
        }
    }
    impl Error for Wrapper {
        fn source(&self) -> Option<&(dyn Error + 'static)> {
            Some(&self.0)
        }
    }

    #[test]
    fn a_broken_pipe_is_found_under_wrappers() {
        let pipe = Wrapper(io::Error::from(io::ErrorKind::BrokenPipe));
        assert!(reader_left(&pipe));
        let other = Wrapper(io::Error::from(io::ErrorKind::PermissionDenied));
        assert!(!reader_left(&other));
    }
}
