//! A set of row ids: what a filter lets through.

use std::collections::HashMap;

/// Row ids below a bound, as a bitmap in blocks of 2^16 ids, allocated only where a row is (1 bit per row id given
/// out in a block: 125 KB per million rows). Blocks, not one flat bitmap: a sharded run leaves wide gaps between its
/// shards' ids (`store::ROW_STRIDE`), which a flat bitmap would have to span.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RowSet {
    blocks: HashMap<u64, Box<[u64; BLOCK_WORDS]>>,
    end: u64,
    len: u64,
}

const BLOCK_BITS: u32 = 16;
const BLOCK_WORDS: usize = (1 << BLOCK_BITS) / 64;

impl RowSet {
    /// An empty set for row ids below `end`.
    pub fn new(end: u64) -> Self {
        Self { blocks: HashMap::new(), end, len: 0 }
    }

    /// Adds `row`; ids at or past the bound are ignored (no row holds them).
    pub fn insert(&mut self, row: u64) {
        if row >= self.end {
            return;
        }
        let block = self.blocks.entry(row >> BLOCK_BITS).or_insert_with(|| Box::new([0; BLOCK_WORDS]));
        let (word, bit) = word_and_bit(row);
        if block[word] & bit == 0 {
            block[word] |= bit;
            self.len += 1;
        }
    }

    pub fn contains(&self, row: u64) -> bool {
        let (word, bit) = word_and_bit(row);
        self.blocks.get(&(row >> BLOCK_BITS)).is_some_and(|block| block[word] & bit != 0)
    }

    /// Whether any row id in `start..end` is in the set.
    pub fn any_in(&self, start: u64, end: u64) -> bool {
        let end = end.min(self.end);
        if start >= end {
            return false;
        }
        let size = 1u64 << BLOCK_BITS;
        (start >> BLOCK_BITS..=(end - 1) >> BLOCK_BITS).any(|b| {
            let Some(block) = self.blocks.get(&b) else { return false };
            // The part of the range inside this block, as bit positions.
            let lo = start.max(b * size) - b * size;
            let hi = end.min((b + 1) * size) - b * size;
            (lo / 64..hi.div_ceil(64)).any(|w| {
                let from = lo.max(w * 64) - w * 64;
                let to = hi.min((w + 1) * 64) - w * 64;
                let mask = if to - from == 64 { u64::MAX } else { ((1u64 << (to - from)) - 1) << from };
                block[w as usize] & mask != 0
            })
        })
    }

    pub fn len(&self) -> u64 {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }
}

fn word_and_bit(row: u64) -> (usize, u64) {
    let within = (row & ((1 << BLOCK_BITS) - 1)) as usize;
    (within / 64, 1u64 << (within % 64))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn inserts_count_once_and_out_of_range_ids_are_ignored() {
        let mut set = RowSet::new(130);
        for row in [0, 63, 64, 129, 129, 130, 10_000] {
            set.insert(row);
        }
        assert_eq!(set.len(), 4);
        assert!(set.contains(0) && set.contains(63) && set.contains(64) && set.contains(129));
        assert!(!set.contains(1) && !set.contains(130) && !set.contains(u64::MAX));
        assert!(RowSet::new(0).is_empty());
    }

    #[test]
    fn ids_far_apart_cost_only_their_blocks() {
        // Two shards' rows of a sharded run: 2^36 apart.
        let (a, b) = (5u64, (1u64 << 36) + 7);
        let mut set = RowSet::new(1 << 40);
        set.insert(a);
        set.insert(b);
        assert_eq!((set.len(), set.blocks.len()), (2, 2));
        assert!(set.contains(a) && set.contains(b) && !set.contains(b - 1) && !set.contains(a + (1 << 16)));
    }

    #[test]
    fn any_in_agrees_with_a_row_by_row_check() {
        let end = 3 * (1 << 16) + 100;
        let mut set = RowSet::new(end);
        for row in [0, 1, 63, 64, 65_535, 65_536, 131_071, 2 * (1 << 16) + 5, end - 1] {
            set.insert(row);
        }
        let naive = |a: u64, b: u64| (a..b.min(end)).any(|r| set.contains(r));
        let edges =
            [0, 1, 2, 62, 63, 64, 65, 127, 128, 65_535, 65_536, 65_537, 131_071, 131_072, 131_078, end - 1, end];
        for &a in &edges {
            for &b in &edges {
                assert_eq!(set.any_in(a, b), naive(a, b), "{a}..{b}");
            }
        }
        assert!(!set.any_in(end, u64::MAX) && set.any_in(end - 1, u64::MAX));
    }
}
