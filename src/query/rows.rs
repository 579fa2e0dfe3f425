//! A set of row ids: what a filter lets through.

/// Row ids below a bound, as a bitmap (1 bit per row id given out: 125 KB per million rows).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RowSet {
    words: Vec<u64>,
    end: u64,
    len: u64,
}

impl RowSet {
    /// An empty set for row ids below `end`.
    pub fn new(end: u64) -> Self {
        Self { words: vec![0; end.div_ceil(64) as usize], end, len: 0 }
    }

    /// Adds `row`; ids at or past the bound are ignored (no row holds them).
    pub fn insert(&mut self, row: u64) {
        if row >= self.end {
            return;
        }
        let Some(word) = self.words.get_mut((row / 64) as usize) else { return };
        let bit = 1u64 << (row % 64);
        if *word & bit == 0 {
            *word |= bit;
            self.len += 1;
        }
    }

    pub fn contains(&self, row: u64) -> bool {
        self.words.get((row / 64) as usize).is_some_and(|w| w & (1u64 << (row % 64)) != 0)
    }

    pub fn len(&self) -> u64 {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }
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
}
