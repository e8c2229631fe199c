//! Message flags: the IMAP system flags with their maildir info letters,
//! and a folder's keyword names (Dovecot's `dovecot-keywords` text).
//!
//! A message's flags are the letters after `:2,` in its file name, sorted
//! (`:2,FRS`): `D` \Draft, `F` \Flagged, `P` $Forwarded (passed), `R`
//! \Answered, `S` \Seen, `T` \Deleted (trashed). Lower-case letters are
//! keywords: `a` is the keyword on line `0` of the folder's keywords file,
//! `b` line `1`, and so on to `z` (`<index> <name>` per line). So a folder
//! has at most 26 keywords, and a rename of the file is the only write a
//! flag change needs. The store's mailbox module reads and writes that
//! file; this module only encodes.

/// Letters `a`–`z`.
pub const MAX_KEYWORDS: usize = 26;

/// The system flags, as bits.
pub const DRAFT: u8 = 1;
pub const FLAGGED: u8 = 2;
pub const FORWARDED: u8 = 4;
pub const ANSWERED: u8 = 8;
pub const SEEN: u8 = 16;
pub const DELETED: u8 = 32;

/// (bit, maildir letter, IMAP name), in the letters' sort order.
pub const SYSTEM: [(u8, char, &str); 6] = [
    (DRAFT, 'D', "\\Draft"),
    (FLAGGED, 'F', "\\Flagged"),
    (FORWARDED, 'P', "$Forwarded"),
    (ANSWERED, 'R', "\\Answered"),
    (SEEN, 'S', "\\Seen"),
    (DELETED, 'T', "\\Deleted"),
];

/// One message's flags.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash)]
pub struct Flags {
    pub system: u8,
    /// Bit i: keyword letter `a` + i.
    pub keywords: u32,
}

impl Flags {
    /// From the info part of a file name (what follows `:2,`); unknown
    /// letters are ignored here and kept by [`Flags::apply_to_info`].
    pub fn from_info(info: &str) -> Flags {
        let mut flags = Flags::default();
        for c in info.chars() {
            if let Some((bit, _, _)) = SYSTEM.iter().find(|(_, l, _)| *l == c) {
                flags.system |= bit;
            } else if c.is_ascii_lowercase() {
                flags.keywords |= 1 << (c as u8 - b'a');
            }
        }
        flags
    }

    /// The info letters for these flags, sorted, keeping letters of
    /// `old_info` that postroom does not know (another program's).
    pub fn apply_to_info(&self, old_info: &str) -> String {
        let mut letters: Vec<char> = old_info
            .chars()
            .filter(|c| !c.is_ascii_lowercase() && !SYSTEM.iter().any(|(_, l, _)| l == c))
            .collect();
        for (bit, letter, _) in SYSTEM {
            if self.system & bit != 0 {
                letters.push(letter);
            }
        }
        for i in 0..MAX_KEYWORDS {
            if self.keywords & (1 << i) != 0 {
                letters.push((b'a' + i as u8) as char);
            }
        }
        letters.sort_unstable();
        letters.dedup();
        letters.into_iter().collect()
    }

    pub fn has(&self, bit: u8) -> bool {
        self.system & bit != 0
    }
}

/// The keyword names of a folder, by letter index.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Keywords {
    pub names: Vec<String>,
}

impl Keywords {
    /// Reads the keywords file's text; lines that are not `<index> <name>`
    /// with a valid index and keyword are skipped (another program's).
    pub fn parse(text: &str) -> Keywords {
        let mut names: Vec<String> = Vec::new();
        for line in text.lines() {
            let Some((index, name)) = line.split_once(' ') else {
                continue;
            };
            let Ok(index) = index.parse::<usize>() else {
                continue;
            };
            if index >= MAX_KEYWORDS || !is_keyword(name) {
                continue;
            }
            if names.len() <= index {
                names.resize(index + 1, String::new());
            }
            names[index] = name.to_string();
        }
        Keywords { names }
    }

    /// The keywords file's text.
    pub fn to_text(&self) -> String {
        let mut text = String::new();
        for (i, name) in self.names.iter().enumerate() {
            if !name.is_empty() {
                text.push_str(&format!("{i} {name}\n"));
            }
        }
        text
    }

    /// The letter index of a keyword (names compare case-insensitively).
    pub fn index(&self, name: &str) -> Option<usize> {
        self.names
            .iter()
            .position(|n| !n.is_empty() && n.eq_ignore_ascii_case(name))
    }

    /// The names set in a keyword bit mask.
    pub fn names_of(&self, bits: u32) -> impl Iterator<Item = &str> {
        self.names
            .iter()
            .enumerate()
            .filter(move |(i, n)| bits & (1 << i) != 0 && !n.is_empty())
            .map(|(_, n)| n.as_str())
    }

    pub fn is_full(&self) -> bool {
        self.names.iter().filter(|n| !n.is_empty()).count() >= MAX_KEYWORDS
    }

    /// Adds a keyword if new; `None` when all 26 letters are taken.
    pub fn add(&mut self, name: &str) -> Option<usize> {
        if let Some(i) = self.index(name) {
            return Some(i);
        }
        let free = self.names.iter().position(String::is_empty);
        match free {
            Some(i) => {
                self.names[i] = name.to_string();
                Some(i)
            }
            None if self.names.len() < MAX_KEYWORDS => {
                self.names.push(name.to_string());
                Some(self.names.len() - 1)
            }
            None => None,
        }
    }
}

/// An IMAP flag-keyword: an atom without `\` (RFC 3501 `flag-keyword`).
pub fn is_keyword(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 100
        && name
            .bytes()
            .all(|b| b > 0x20 && b < 0x7f && !b"(){%*\"\\]".contains(&b))
}

/// The name of a system flag bit, or the bit of a system flag name.
pub fn system_bit(name: &str) -> Option<u8> {
    SYSTEM
        .iter()
        .find(|(_, _, n)| n.eq_ignore_ascii_case(name))
        .map(|(bit, _, _)| *bit)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn info_letters_round_trip_sorted_and_keep_unknown() {
        let f = Flags::from_info("STa");
        assert!(f.has(SEEN) && f.has(DELETED));
        assert_eq!(f.keywords, 1);
        let mut g = f;
        g.system |= ANSWERED | DRAFT;
        g.system &= !DELETED;
        g.keywords |= 4;
        assert_eq!(g.apply_to_info("STaX"), "DRSXac");
        assert_eq!(Flags::default().apply_to_info(""), "");
    }

    #[test]
    fn keywords_text_in_dovecot_format() {
        let mut k = Keywords::parse("");
        assert_eq!(k.add("$Junk"), Some(0));
        assert_eq!(k.add("work"), Some(1));
        assert_eq!(k.add("WORK"), Some(1));
        assert_eq!(k.to_text(), "0 $Junk\n1 work\n");
        let k = Keywords::parse(&k.to_text());
        assert_eq!(k.names_of(3).collect::<Vec<_>>(), vec!["$Junk", "work"]);
        let odd = Keywords::parse("x y\n27 far\n1 ok\n0 bad name\n");
        assert_eq!(odd.names, vec!["".to_string(), "ok".to_string()]);
        let mut full = Keywords::default();
        for i in 0..26 {
            assert_eq!(full.add(&format!("k{i}")), Some(i));
        }
        assert_eq!(full.add("one-more"), None);
        assert!(!is_keyword("a b") && !is_keyword("\\Seen") && is_keyword("$Label1"));
    }
}
