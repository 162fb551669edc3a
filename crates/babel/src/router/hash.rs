//! A fast hasher for the router's tables (the multiply-rotate scheme of
//! rustc's FxHash).
//!
//! Route-table keys are 36-byte prefixes hashed on every update; SipHash
//! dominated the cost of a full dump. The tables are filled from
//! authenticated neighbours (or a trusted link), so flooding resistance is
//! traded for speed, as babeld does with its sorted arrays.

use std::collections::{HashMap, HashSet};
use std::hash::{BuildHasherDefault, Hasher};

/// FxHash state.
#[derive(Debug, Clone, Copy, Default)]
pub(crate) struct FxHasher {
    hash: u64,
}

const K: u64 = 0x517c_c1b7_2722_0a95;

impl FxHasher {
    fn add(&mut self, word: u64) {
        self.hash = (self.hash.rotate_left(5) ^ word).wrapping_mul(K);
    }
}

impl Hasher for FxHasher {
    fn write(&mut self, bytes: &[u8]) {
        let mut chunks = bytes.chunks_exact(8);
        for c in &mut chunks {
            let mut w = [0; 8];
            w.copy_from_slice(c);
            self.add(u64::from_le_bytes(w));
        }
        let rest = chunks.remainder();
        if !rest.is_empty() {
            let mut w = [0; 8];
            w[..rest.len()].copy_from_slice(rest);
            self.add(u64::from_le_bytes(w));
        }
    }

    fn write_u8(&mut self, i: u8) {
        self.add(u64::from(i));
    }

    fn write_u16(&mut self, i: u16) {
        self.add(u64::from(i));
    }

    fn write_u32(&mut self, i: u32) {
        self.add(u64::from(i));
    }

    fn write_u64(&mut self, i: u64) {
        self.add(i);
    }

    fn write_usize(&mut self, i: usize) {
        self.add(i as u64);
    }

    fn finish(&self) -> u64 {
        self.hash
    }
}

/// A `HashMap` with [`FxHasher`].
pub(crate) type FxHashMap<K, V> = HashMap<K, V, BuildHasherDefault<FxHasher>>;
/// A `HashSet` with [`FxHasher`].
pub(crate) type FxHashSet<K> = HashSet<K, BuildHasherDefault<FxHasher>>;

#[cfg(test)]
mod tests {
    use std::hash::{BuildHasher, Hash};

    use super::*;

    #[test]
    fn distinct_keys_hash_differently() {
        let b = BuildHasherDefault::<FxHasher>::default();
        let h = |v: &dyn Fn(&mut FxHasher)| {
            let mut s = b.build_hasher();
            v(&mut s);
            s.finish()
        };
        let a = h(&|s| [1u8; 17].hash(s));
        let c = h(&|s| [2u8; 17].hash(s));
        let mut last = [1u8; 17];
        last[16] = 2;
        let d = h(&|s| last.hash(s));
        assert_ne!(a, c);
        assert_ne!(a, d);
        let mut m: FxHashMap<u32, u32> = FxHashMap::default();
        for i in 0..1000 {
            m.insert(i, i);
        }
        assert!((0..1000).all(|i| m[&i] == i));
    }
}
