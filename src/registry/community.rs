//! Communities: which part of the prefix tree serves which location.
//!
//! The file format is re6st's. One community per line: a binary sub-prefix
//! of the node space (`0`s and `1`s, relative to the network prefix), then
//! one or more locations separated by white space:
//!
//! - `*`: the default community, for nodes whose location matches no other
//!   (exactly one line must carry it);
//! - a two-letter country code (`FR`, `de`);
//! - `@` and a two-letter continent code (`@EU`, `@na`).
//!
//! `#` starts a comment; blank lines are ignored. Sub-prefixes may not
//! overlap, and a location may appear only once. Space covered by no
//! community is never allocated.
//!
//! ```text
//! # default: half of the space
//! 0    *
//! 10   FR BE @AF
//! 110  @NA
//! ```

use super::allocator::Block;

/// Maximum size of a community file we accept.
pub const MAX_FILE_LEN: usize = 1 << 20;

/// A location a community serves.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub enum Location {
    /// `*`: the default community.
    Any,
    /// A country code, upper case (`FR`).
    Country(String),
    /// A continent code, upper case, without the `@` (`EU`).
    Continent(String),
}

impl Location {
    /// Parses `*`, `CC` or `@CC` (case-insensitive, stored upper case).
    pub fn parse(s: &str) -> Option<Self> {
        let alpha2 = |c: &str| {
            (c.len() == 2 && c.bytes().all(|b| b.is_ascii_alphabetic()))
                .then(|| c.to_ascii_uppercase())
        };
        match s {
            "*" => Some(Self::Any),
            _ => match s.strip_prefix('@') {
                Some(c) => alpha2(c).map(Self::Continent),
                None => alpha2(s).map(Self::Country),
            },
        }
    }
}

/// One community: a root of the prefix tree and the locations it serves.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Community {
    /// The sub-prefix (a root of the allocation tree).
    pub prefix: Block,
    /// Locations served.
    pub locations: Vec<Location>,
}

/// A parsed, checked community file.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Communities {
    list: Vec<Community>,
    default: usize,
}

/// What is wrong with a community file (with the 1-based line number).
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum CommunityError {
    /// The sub-prefix is not made of `0` and `1`.
    #[error("line {0}: prefix must be made of 0 and 1")]
    BadPrefix(usize),
    /// The sub-prefix is longer than the node space.
    #[error("line {0}: prefix longer than the {1} node bits")]
    TooLong(usize, u8),
    /// A prefix without any location.
    #[error("line {0}: no location after the prefix")]
    NoLocation(usize),
    /// A location is neither `*`, a country code nor `@` and a continent.
    #[error("line {0}: bad location {1:?} (expected *, a country code or @continent)")]
    BadLocation(usize, String),
    /// Two communities overlap.
    #[error("line {0}: prefix overlaps the community on line {1}")]
    Overlap(usize, usize),
    /// A location is listed twice.
    #[error("line {0}: location {1:?} already used")]
    DuplicateLocation(usize, String),
    /// No line carries `*`.
    #[error("no default community (a line with *)")]
    NoDefault,
    /// The file is too large.
    #[error("file too large")]
    TooLarge,
}

impl Communities {
    /// Parses a community file for a node space of `max_len` bits.
    pub fn parse(text: &str, max_len: u8) -> Result<Self, CommunityError> {
        if text.len() > MAX_FILE_LEN {
            return Err(CommunityError::TooLarge);
        }
        let mut list: Vec<(usize, Community)> = Vec::new();
        let mut seen: Vec<(Location, usize)> = Vec::new();
        for (i, line) in text.lines().enumerate() {
            let n = i + 1;
            let line = line.split('#').next().unwrap_or("");
            let mut words = line.split_whitespace();
            let Some(bits) = words.next() else { continue };
            if bits.len() > usize::from(max_len) {
                return Err(CommunityError::TooLong(n, max_len));
            }
            let prefix = Block::from_bits(bits).ok_or(CommunityError::BadPrefix(n))?;
            let mut locations = Vec::new();
            for w in words {
                let loc =
                    Location::parse(w).ok_or_else(|| CommunityError::BadLocation(n, w.into()))?;
                if seen.iter().any(|(l, _)| *l == loc) {
                    return Err(CommunityError::DuplicateLocation(n, w.into()));
                }
                seen.push((loc.clone(), n));
                locations.push(loc);
            }
            if locations.is_empty() {
                return Err(CommunityError::NoLocation(n));
            }
            if let Some((m, _)) = list
                .iter()
                .find(|(_, c)| c.prefix.contains(&prefix) || prefix.contains(&c.prefix))
            {
                return Err(CommunityError::Overlap(n, *m));
            }
            list.push((n, Community { prefix, locations }));
        }
        let list: Vec<Community> = list.into_iter().map(|(_, c)| c).collect();
        let default = list
            .iter()
            .position(|c| c.locations.contains(&Location::Any))
            .ok_or(CommunityError::NoDefault)?;
        Ok(Self { list, default })
    }

    /// No communities: the whole space is the default.
    pub fn whole() -> Self {
        Self {
            list: vec![Community {
                prefix: Block::ROOT,
                locations: vec![Location::Any],
            }],
            default: 0,
        }
    }

    /// The communities in file order.
    pub fn iter(&self) -> impl Iterator<Item = &Community> + '_ {
        self.list.iter()
    }

    /// The roots of the allocation tree.
    pub fn roots(&self) -> Vec<Block> {
        self.list.iter().map(|c| c.prefix).collect()
    }

    /// The community for a node at `locations` (e.g. `["FR", "@EU"]`, as
    /// `re6st conf --location FR,@EU` sends them): the first country that
    /// matches, else the first continent, else the default.
    pub fn select(&self, locations: &[Location]) -> Block {
        let find = |want: &dyn Fn(&Location) -> bool| {
            locations.iter().filter(|l| want(l)).find_map(|l| {
                self.list
                    .iter()
                    .find(|c| c.locations.contains(l))
                    .map(|c| c.prefix)
            })
        };
        find(&|l| matches!(l, Location::Country(_)))
            .or_else(|| find(&|l| matches!(l, Location::Continent(_))))
            .unwrap_or(self.list[self.default].prefix)
    }

    /// A stable text form, to notice when the file changed between runs.
    pub fn fingerprint(&self) -> String {
        self.list
            .iter()
            .map(|c| format!("{}:{}", c.prefix.bits(), c.prefix.len))
            .collect::<Vec<_>>()
            .join(",")
    }
}

/// Parses a `--location` value: comma-separated `CC` / `@CC` entries.
pub fn parse_locations(s: &str) -> Option<Vec<Location>> {
    s.split(',')
        .map(str::trim)
        .filter(|w| !w.is_empty())
        .map(|w| match Location::parse(w) {
            Some(Location::Any) | None => None,
            some => some,
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn b(bits: &str) -> Block {
        Block::from_bits(bits).unwrap()
    }

    #[test]
    fn parse_and_select() {
        let c = Communities::parse("# comment\n0 *\n\n10 fr BE @af # trailing\n110\t@NA\n", 16)
            .unwrap();
        assert_eq!(c.roots(), [b("0"), b("10"), b("110")]);
        let loc = |s| parse_locations(s).unwrap();
        assert_eq!(c.select(&loc("FR,@EU")), b("10"));
        assert_eq!(c.select(&loc("US,@NA")), b("110"));
        assert_eq!(c.select(&loc("@AF")), b("10"));
        assert_eq!(c.select(&loc("JP,@AS")), b("0"));
        assert_eq!(c.select(&[]), b("0"));
        // A country wins over a continent that comes first.
        assert_eq!(c.select(&loc("@NA,BE")), b("10"));
    }

    #[test]
    fn errors() {
        let cases: &[(&str, CommunityError)] = &[
            ("0 *\n12 FR\n", CommunityError::BadPrefix(2)),
            ("0 *\n1\n", CommunityError::NoLocation(2)),
            ("0 *\n1 FRA\n", CommunityError::BadLocation(2, "FRA".into())),
            ("0 *\n1 @\n", CommunityError::BadLocation(2, "@".into())),
            ("0 *\n01 FR\n", CommunityError::Overlap(2, 1)),
            ("01 FR\n0 *\n", CommunityError::Overlap(2, 1)),
            (
                "0 *\n1 *\n",
                CommunityError::DuplicateLocation(2, "*".into()),
            ),
            (
                "0 FR\n1 fr\n",
                CommunityError::DuplicateLocation(2, "fr".into()),
            ),
            ("0 FR\n1 DE\n", CommunityError::NoDefault),
            ("", CommunityError::NoDefault),
            ("000 *\n", CommunityError::TooLong(1, 2)),
        ];
        for (text, want) in cases {
            let max = if text.starts_with("000") { 2 } else { 16 };
            assert_eq!(
                Communities::parse(text, max).as_ref(),
                Err(want),
                "{text:?}"
            );
        }
        assert_eq!(parse_locations("FR,*"), None);
        assert_eq!(parse_locations("F1"), None);
    }

    #[test]
    fn whole_space_default() {
        let c = Communities::whole();
        assert_eq!(c.roots(), [Block::ROOT]);
        assert_eq!(c.select(&parse_locations("FR").unwrap()), Block::ROOT);
    }
}
