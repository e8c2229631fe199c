//! A folder's keywords file (`dovecot-keywords`, Dovecot's name and
//! format), read and written beside its uidlist. The flags themselves, and
//! the file's text, are encoded in [`crate::proto::flags`].

use std::io;
use std::path::Path;

pub use crate::proto::flags::*;

/// The keywords file's name in each folder.
pub const KEYWORDS_FILE: &str = "dovecot-keywords";

/// Reads a folder's keywords; a missing file is no keywords.
pub fn read_keywords(dir: &Path) -> io::Result<Keywords> {
    let Some(bytes) = crate::store::maildir::read_side_file(&dir.join(KEYWORDS_FILE))? else {
        return Ok(Keywords::default());
    };
    Ok(Keywords::parse(&String::from_utf8_lossy(&bytes)))
}

/// Writes the file (call with the folder's uidlist lock held, so two
/// writers do not give one letter two meanings).
pub fn write_keywords(dir: &Path, keywords: &Keywords) -> io::Result<()> {
    crate::store::fsutil::write_atomic(&dir.join(KEYWORDS_FILE), keywords.to_text().as_bytes())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keywords_file_round_trips_and_missing_is_empty() {
        let dir = tempfile::tempdir().unwrap();
        let mut k = read_keywords(dir.path()).unwrap();
        assert_eq!(k, Keywords::default());
        k.add("$Junk");
        k.add("work");
        write_keywords(dir.path(), &k).unwrap();
        assert_eq!(
            std::fs::read_to_string(dir.path().join(KEYWORDS_FILE)).unwrap(),
            "0 $Junk\n1 work\n"
        );
        assert_eq!(read_keywords(dir.path()).unwrap(), k);
    }
}
