//! Per-destination pacing (`[send.domains."DOMAIN"] rate`; IMail's delay
//! between deliveries to one host): the slots of a destination are booked
//! in one small file under `state/pace/`, so every runner on every host
//! sharing the tree keeps to one pace together.
//!
//! The file holds the next free slot, in milliseconds since the epoch.
//! Booking takes its `flock`, reads it, and moves it on by one interval
//! from that slot or from now, whichever is later (a GCRA without burst:
//! transactions are spaced evenly). A runner books a slot only if it comes
//! within [`AHEAD`], then waits for it; a later one is left for the next
//! pass, so no message is held locked for long. The file is not fsynced: a
//! crash that loses the last bookings lets a few transactions through
//! early, which costs nothing a rate limit exists for.

use std::fs::OpenOptions;
use std::io::{self, Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use crate::config::Config;
use crate::store::fsutil::FileLock;

/// How far ahead a runner books slots.
pub const AHEAD: Duration = Duration::from_secs(60);

/// What booking found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Booking {
    /// A slot is ours: start the transaction after this wait.
    After(Duration),
    /// Nothing free within [`AHEAD`]: the next slot is free at this time
    /// (seconds since the epoch).
    Full(u64),
}

/// The pace file of `domain` in the tree.
pub fn path(config: &Config, domain: &str) -> PathBuf {
    config
        .state_dir()
        .join("pace")
        .join(domain.to_ascii_lowercase())
}

fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

/// Books the next slot of the pace file at `file`, `interval` apart.
pub fn book(file: &Path, interval: Duration) -> io::Result<Booking> {
    book_at(file, interval, now_ms())
}

fn book_at(file: &Path, interval: Duration, now: u64) -> io::Result<Booking> {
    if let Some(dir) = file.parent() {
        std::fs::create_dir_all(dir)?;
    }
    // Locked in place and rewritten in place, never replaced, so the lock
    // is on the one inode every runner opens.
    let lock = FileLock::exclusive(file)?;
    let mut f = lock.file();
    let mut text = String::new();
    f.read_to_string(&mut text)?;
    // An empty or damaged file is a pace with nothing booked.
    let next: u64 = text.trim().parse().unwrap_or(0);
    let slot = next.max(now);
    let wait = slot - now;
    if wait > AHEAD.as_millis() as u64 {
        return Ok(Booking::Full(slot.div_ceil(1000)));
    }
    let then = slot + interval.as_millis() as u64;
    f.seek(SeekFrom::Start(0))?;
    f.set_len(0)?;
    f.write_all(format!("{then}\n").as_bytes())?;
    Ok(Booking::After(Duration::from_millis(wait)))
}

/// The next free slot (milliseconds since the epoch) without booking it.
pub fn next_free(file: &Path) -> io::Result<Option<u64>> {
    match OpenOptions::new().read(true).open(file) {
        Ok(mut f) => {
            let mut text = String::new();
            f.read_to_string(&mut text)?;
            Ok(text.trim().parse().ok())
        }
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(e),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn slots_are_spaced_and_booked_no_further_than_ahead() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("pace/far.test");
        let second = Duration::from_secs(1);
        let now = 1_000_000;
        assert_eq!(
            book_at(&file, second, now).unwrap(),
            Booking::After(Duration::ZERO)
        );
        assert_eq!(
            book_at(&file, second, now).unwrap(),
            Booking::After(Duration::from_secs(1))
        );
        assert_eq!(
            book_at(&file, second, now + 500).unwrap(),
            Booking::After(Duration::from_millis(1500))
        );
        // Sixty-one slots a second apart: the last is past the minute.
        for _ in 3..=60 {
            assert!(matches!(
                book_at(&file, second, now).unwrap(),
                Booking::After(_)
            ));
        }
        assert_eq!(book_at(&file, second, now).unwrap(), Booking::Full(1061));
        assert_eq!(next_free(&file).unwrap(), Some(now + 61_000));
        // An idle pace starts from now again.
        assert_eq!(
            book_at(&file, second, now + 100_000).unwrap(),
            Booking::After(Duration::ZERO)
        );
        std::fs::write(&file, "garbage").unwrap();
        assert_eq!(
            book_at(&file, second, now).unwrap(),
            Booking::After(Duration::ZERO)
        );
    }

    #[test]
    fn rates_in_every_unit_and_their_intervals() {
        use crate::config::Rate;
        let interval = |t: &str| Rate::parse(t).map(Rate::interval);
        assert_eq!(interval("60/min"), Ok(Duration::from_secs(1)));
        assert_eq!(interval(" 4 / s "), Ok(Duration::from_millis(250)));
        assert_eq!(interval("2/hour"), Ok(Duration::from_secs(1800)));
        assert_eq!(interval("86400/d"), Ok(Duration::from_secs(1)));
        for bad in ["0/min", "60", "60/fortnight", "x/s", "-1/s", ""] {
            assert!(Rate::parse(bad).is_err(), "{bad:?}");
        }
    }
}
