//! Prefix allocation as a binary tree of free blocks.
//!
//! The node part of the address space (the bits after the network prefix) is
//! a binary tree: a block `value/len` covers every prefix whose first `len`
//! bits are `value`. The allocator keeps the set of *free* blocks. To hand out
//! a prefix of length `n` it picks the longest free block that fits (its
//! length is at most `n`: the smallest block, so big blocks stay whole),
//! splits it down to `n` bits by always keeping the `0` half and leaving each
//! `1` half free, and returns the block it reached. Releasing a prefix puts it
//! back and merges it with its buddy (the block differing only in the last
//! bit) as long as the buddy is free too.
//!
//! Communities restrict where a prefix may come from: each community is a
//! *root* of the tree, blocks never merge above a root, and an allocation for
//! a community only takes blocks under its root. Without communities there is
//! one root, the whole space.
//!
//! This module is pure data: no I/O, no clock. The store persists the free
//! set and replays these operations inside its transactions.

use std::collections::BTreeSet;
use std::fmt;

/// A block of the prefix tree: the `len` leading node bits equal `value`
/// (right-aligned, like the certificate CN `"<value>/<len>"`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Block {
    /// Prefix length in bits (0 is the whole node space).
    pub len: u8,
    /// The prefix bits as an integer, `< 2^len`.
    pub value: u128,
}

impl Block {
    /// The whole node space.
    pub const ROOT: Self = Self { len: 0, value: 0 };

    /// A block, or `None` when `value` has more than `len` bits or `len > 128`.
    pub fn new(value: u128, len: u8) -> Option<Self> {
        if len > 128 || (len < 128 && value >> len != 0) {
            return None;
        }
        Some(Self { len, value })
    }

    /// Parses a string of `0` and `1` (possibly empty) into a block.
    pub fn from_bits(bits: &str) -> Option<Self> {
        if bits.len() > 128 {
            return None;
        }
        let mut value = 0u128;
        for c in bits.bytes() {
            value = (value << 1)
                | match c {
                    b'0' => 0,
                    b'1' => 1,
                    _ => return None,
                };
        }
        Some(Self {
            len: bits.len() as u8,
            value,
        })
    }

    /// Parses the certificate CN form `"<value>/<len>"`.
    pub fn parse_cn(s: &str) -> Option<Self> {
        let (v, l) = s.split_once('/')?;
        if v.is_empty() || l.is_empty() || !(v.bytes().chain(l.bytes()).all(|c| c.is_ascii_digit()))
        {
            return None;
        }
        Self::new(v.parse().ok()?, l.parse().ok()?)
    }

    /// The block's bits as a string of `0` and `1`.
    pub fn bits(&self) -> String {
        (0..self.len)
            .rev()
            .map(|i| if (self.value >> i) & 1 == 1 { '1' } else { '0' })
            .collect()
    }

    /// Whether `other` lies inside this block (or equals it).
    pub fn contains(&self, other: &Self) -> bool {
        other.len >= self.len && shr(other.value, other.len - self.len) == self.value
    }

    /// The block with the last bit flipped, or `None` for the root.
    pub fn buddy(&self) -> Option<Self> {
        (self.len > 0).then_some(Self {
            len: self.len,
            value: self.value ^ 1,
        })
    }

    /// The enclosing block one bit shorter, or `None` for the root.
    pub fn parent(&self) -> Option<Self> {
        (self.len > 0).then(|| Self {
            len: self.len - 1,
            value: self.value >> 1,
        })
    }

    fn child(&self, bit: u128) -> Self {
        Self {
            len: self.len + 1,
            value: (self.value << 1) | bit,
        }
    }
}

impl fmt::Display for Block {
    /// `"<value>/<len>"`, the certificate CN form.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.value, self.len)
    }
}

fn shr(v: u128, n: u8) -> u128 {
    if n >= 128 {
        0
    } else {
        v >> n
    }
}

/// Why an allocation failed.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
pub enum AllocError {
    /// No free block under the community root is large enough.
    #[error("prefix space exhausted")]
    Exhausted,
    /// The requested length is shorter than the community root or longer
    /// than the node space.
    #[error("prefix length {0} does not fit in the network")]
    BadLength(u8),
}

/// The free blocks of the prefix tree, and the roots they may not merge above.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Allocator {
    max_len: u8,
    roots: Vec<Block>,
    free: BTreeSet<Block>,
}

impl Allocator {
    /// A fresh tree for a node space of `max_len` bits (128 minus the
    /// network prefix length): every root is free. `roots` must not overlap
    /// (the community parser guarantees it); an empty list means the whole
    /// space.
    pub fn new(max_len: u8, roots: &[Block]) -> Self {
        let roots = norm_roots(roots);
        let free = roots.iter().copied().collect();
        Self {
            max_len,
            roots,
            free,
        }
    }

    /// A tree whose free blocks are already known (loaded from the store).
    pub fn with_free(max_len: u8, roots: &[Block], free: impl IntoIterator<Item = Block>) -> Self {
        Self {
            max_len,
            roots: norm_roots(roots),
            free: free.into_iter().collect(),
        }
    }

    /// Rebuilds the free set from scratch: every maximal block under a root
    /// that overlaps none of the `allocated` prefixes. Used when the
    /// communities change; allocated prefixes outside every root stay
    /// allocated and are simply not returned to the tree.
    pub fn rebuild(max_len: u8, roots: &[Block], allocated: &[Block]) -> Self {
        let roots = norm_roots(roots);
        let mut free = BTreeSet::new();
        for root in &roots {
            fill_free(*root, allocated, max_len, &mut free);
        }
        Self {
            max_len,
            roots,
            free,
        }
    }

    /// The free blocks, in order of (length, value).
    pub fn free_blocks(&self) -> impl Iterator<Item = &Block> + '_ {
        self.free.iter()
    }

    /// Whether `block` is a free block of the tree.
    pub fn is_free(&self, block: &Block) -> bool {
        self.free.contains(block)
    }

    /// Allocates a prefix of `len` bits under `community` (one of the roots,
    /// or [`Block::ROOT`] without communities).
    pub fn allocate(&mut self, len: u8, community: &Block) -> Result<Block, AllocError> {
        if len > self.max_len || len < community.len {
            return Err(AllocError::BadLength(len));
        }
        // Longest free block that fits: largest length <= len; ties go to
        // the lowest value, so allocation is deterministic.
        let best = self
            .free
            .iter()
            .filter(|b| b.len <= len && community.contains(b))
            .max_by(|a, b| a.len.cmp(&b.len).then(b.value.cmp(&a.value)))
            .copied()
            .ok_or(AllocError::Exhausted)?;
        self.free.remove(&best);
        let mut block = best;
        while block.len < len {
            self.free.insert(block.child(1));
            block = block.child(0);
        }
        Ok(block)
    }

    /// Returns an allocated prefix to the tree and merges it with its free
    /// buddies, never above a root. Releasing a prefix outside every root,
    /// or one that is already free or overlaps a free block, does nothing.
    pub fn release(&mut self, block: Block) {
        if !self.roots.iter().any(|r| r.contains(&block))
            || self
                .free
                .iter()
                .any(|f| f.contains(&block) || block.contains(f))
        {
            return;
        }
        let mut block = block;
        while !self.roots.contains(&block) {
            let (Some(buddy), Some(parent)) = (block.buddy(), block.parent()) else {
                break;
            };
            if !self.free.remove(&buddy) {
                break;
            }
            block = parent;
        }
        self.free.insert(block);
    }
}

fn norm_roots(roots: &[Block]) -> Vec<Block> {
    if roots.is_empty() {
        vec![Block::ROOT]
    } else {
        roots.to_vec()
    }
}

fn fill_free(block: Block, allocated: &[Block], max_len: u8, free: &mut BTreeSet<Block>) {
    let overlapping: Vec<Block> = allocated
        .iter()
        .filter(|a| a.contains(&block) || block.contains(a))
        .copied()
        .collect();
    if overlapping.is_empty() {
        free.insert(block);
    } else if overlapping.iter().all(|a| a.len > block.len) && block.len < max_len {
        fill_free(block.child(0), &overlapping, max_len, free);
        fill_free(block.child(1), &overlapping, max_len, free);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn b(bits: &str) -> Block {
        Block::from_bits(bits).unwrap()
    }

    #[test]
    fn block_bits_round_trip() {
        for bits in ["", "0", "1", "0110", "1111111111111111"] {
            assert_eq!(b(bits).bits(), bits);
        }
        assert_eq!(b("101").to_string(), "5/3");
        assert_eq!(Block::from_bits("012"), None);
        assert_eq!(Block::new(4, 2), None);
        assert_eq!(Block::new(3, 2), Some(b("11")));
        assert!(b("10").contains(&b("101")));
        assert!(!b("10").contains(&b("111")));
        assert_eq!(Block::parse_cn("5/3"), Some(b("101")));
        for bad in ["5/2", "5", "/3", "5/", "+5/3", "5/300", "x/3"] {
            assert_eq!(Block::parse_cn(bad), None, "{bad}");
        }
        assert!(Block::ROOT.contains(&b("1")));
        assert!(!b("101").contains(&b("10")));
    }

    #[test]
    fn first_allocation_is_all_zeros_and_splits() {
        let mut a = Allocator::new(16, &[]);
        assert_eq!(
            a.allocate(16, &Block::ROOT),
            Ok(Block { value: 0, len: 16 })
        );
        // One free buddy per level.
        assert_eq!(a.free_blocks().count(), 16);
        assert!(a.is_free(&b("1")));
        assert!(a.is_free(&b("0000000000000001")));
        assert_eq!(
            a.allocate(16, &Block::ROOT),
            Ok(Block { value: 1, len: 16 })
        );
    }

    #[test]
    fn best_fit_keeps_big_blocks_whole() {
        let mut a = Allocator::new(8, &[]);
        let p8 = a.allocate(8, &Block::ROOT).unwrap();
        let p4 = a.allocate(4, &Block::ROOT).unwrap();
        assert_eq!(p8, b("00000000"));
        assert_eq!(p4, b("0001"));
        // The next /8 comes from the smallest free block, not from "1".
        assert_eq!(a.allocate(8, &Block::ROOT).unwrap(), b("00000001"));
        assert!(a.is_free(&b("1")));
    }

    #[test]
    fn release_merges_back_to_root() {
        let mut a = Allocator::new(8, &[]);
        let x = a.allocate(8, &Block::ROOT).unwrap();
        let y = a.allocate(8, &Block::ROOT).unwrap();
        let z = a.allocate(6, &Block::ROOT).unwrap();
        a.release(y);
        a.release(x);
        assert!(a.is_free(&b("000000")));
        a.release(z);
        assert_eq!(a.free_blocks().copied().collect::<Vec<_>>(), [Block::ROOT]);
        // Double release is harmless.
        a.release(z);
        assert_eq!(a.free_blocks().count(), 1);
    }

    #[test]
    fn exhaustion_and_bad_length() {
        let mut a = Allocator::new(2, &[]);
        for _ in 0..4 {
            a.allocate(2, &Block::ROOT).unwrap();
        }
        assert_eq!(a.allocate(2, &Block::ROOT), Err(AllocError::Exhausted));
        assert_eq!(a.allocate(3, &Block::ROOT), Err(AllocError::BadLength(3)));
        a.release(b("10"));
        assert_eq!(a.allocate(2, &Block::ROOT), Ok(b("10")));
    }

    #[test]
    fn communities_stay_apart() {
        let roots = [b("0"), b("10")];
        let mut a = Allocator::new(4, &roots);
        assert_eq!(a.allocate(4, &b("10")).unwrap(), b("1000"));
        assert_eq!(a.allocate(4, &b("0")).unwrap(), b("0000"));
        assert_eq!(a.allocate(1, &b("10")), Err(AllocError::BadLength(1)));
        for _ in 0..3 {
            a.allocate(4, &b("10")).unwrap();
        }
        assert_eq!(a.allocate(4, &b("10")), Err(AllocError::Exhausted));
        // "11" is outside every community: never handed out.
        for _ in 0..7 {
            assert!(b("0").contains(&a.allocate(4, &b("0")).unwrap()));
        }
        assert_eq!(a.allocate(4, &b("0")), Err(AllocError::Exhausted));
        // Releasing everything merges up to the roots, not above.
        for v in 0..8 {
            a.release(Block { value: v, len: 4 });
        }
        for v in 8..12 {
            a.release(Block { value: v, len: 4 });
        }
        let free: Vec<_> = a.free_blocks().copied().collect();
        assert_eq!(free, [b("0"), b("10")]);
    }

    #[test]
    fn rebuild_matches_incremental() {
        let mut a = Allocator::new(6, &[]);
        let mut got = Vec::new();
        for len in [6, 3, 6, 5, 2, 6] {
            got.push(a.allocate(len, &Block::ROOT).unwrap());
        }
        let r = Allocator::rebuild(6, &[], &got);
        assert_eq!(r, a);
        a.release(got[1]);
        a.release(got[4]);
        let r = Allocator::rebuild(6, &[], &[got[0], got[2], got[3], got[5]]);
        assert_eq!(r, a);
    }

    proptest::proptest! {
        /// Any sequence of allocations and releases keeps the tree sound:
        /// free and allocated blocks are disjoint and cover the space, and
        /// the free set equals the one rebuilt from the allocated prefixes
        /// (so splits and merges never leave fragments behind).
        #[test]
        fn allocate_release_invariants(ops in proptest::collection::vec((0u8..=6, proptest::bool::ANY, 0usize..64), 1..80)) {
            let mut a = Allocator::new(6, &[]);
            let mut allocated: Vec<Block> = Vec::new();
            for (len, release, pick) in ops {
                if release && !allocated.is_empty() {
                    let b = allocated.swap_remove(pick % allocated.len());
                    a.release(b);
                } else if let Ok(b) = a.allocate(len, &Block::ROOT) {
                    proptest::prop_assert_eq!(b.len, len);
                    allocated.push(b);
                }
                let free: Vec<Block> = a.free_blocks().copied().collect();
                let all: Vec<Block> = free.iter().chain(&allocated).copied().collect();
                for (i, x) in all.iter().enumerate() {
                    for y in &all[i + 1..] {
                        proptest::prop_assert!(!x.contains(y) && !y.contains(x), "{} overlaps {}", x, y);
                    }
                }
                let covered: u128 = all.iter().map(|b| 1u128 << (6 - b.len)).sum();
                proptest::prop_assert_eq!(covered, 64);
                proptest::prop_assert_eq!(&Allocator::rebuild(6, &[], &allocated), &a);
            }
        }
    }
}
