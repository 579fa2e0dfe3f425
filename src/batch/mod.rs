//! Stage 3: packing chunks into embedding requests.
//!
//! A request may carry at most 2048 inputs and 300,000 tokens in all. The [`Batcher`] fills each request up to
//! both limits (as set by the user, never above the API's) in arrival order, so no chunk waits behind another.

use crate::chunk::Chunk;

/// The API's hard limits.
pub const MAX_BATCH_INPUTS: usize = 2048;
pub const MAX_BATCH_TOKENS: usize = 300_000;

/// Per-request limits, validated against the API's.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BatchLimits {
    pub max_inputs: usize,
    pub max_tokens: usize,
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum BatchLimitsError {
    #[error("must be between 1 and {MAX_BATCH_INPUTS} (got {0})")]
    Inputs(usize),
    #[error("must be between the chunk size {min} and {MAX_BATCH_TOKENS} (got {got})")]
    Tokens { got: usize, min: usize },
}

impl BatchLimits {
    /// `chunk_tokens` is the largest chunk: a request must be able to hold at least one.
    pub fn new(max_inputs: usize, max_tokens: usize, chunk_tokens: usize) -> Result<Self, BatchLimitsError> {
        if max_inputs == 0 || max_inputs > MAX_BATCH_INPUTS {
            return Err(BatchLimitsError::Inputs(max_inputs));
        }
        if max_tokens < chunk_tokens || max_tokens > MAX_BATCH_TOKENS {
            return Err(BatchLimitsError::Tokens { got: max_tokens, min: chunk_tokens });
        }
        Ok(Self { max_inputs, max_tokens })
    }
}

/// Chunks that go out in one request.
#[derive(Debug, Clone)]
pub struct Batch {
    pub chunks: Vec<Chunk>,
    pub tokens: usize,
}

/// Packs chunks greedily, in order.
#[derive(Debug)]
pub struct Batcher {
    limits: BatchLimits,
    current: Vec<Chunk>,
    tokens: usize,
}

impl Batcher {
    pub fn new(limits: BatchLimits) -> Self {
        Self { limits, current: Vec::new(), tokens: 0 }
    }

    /// Adds a chunk; returns the previous batch when this chunk does not fit in it.
    pub fn push(&mut self, chunk: Chunk) -> Option<Batch> {
        let tokens = chunk.tokens as usize;
        let full = !self.current.is_empty()
            && (self.current.len() == self.limits.max_inputs || self.tokens + tokens > self.limits.max_tokens);
        let ready = if full { self.take() } else { None };
        self.tokens += tokens;
        self.current.push(chunk);
        ready
    }

    /// The last, partly filled batch.
    pub fn finish(mut self) -> Option<Batch> {
        self.take()
    }

    fn take(&mut self) -> Option<Batch> {
        if self.current.is_empty() {
            return None;
        }
        let chunks = std::mem::take(&mut self.current);
        let tokens = std::mem::replace(&mut self.tokens, 0);
        Some(Batch { chunks, tokens })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use std::sync::Arc;

    fn chunk(i: usize, tokens: u32) -> Chunk {
        Chunk {
            id: i.to_string(),
            doc: Arc::from("d"),
            chunk_index: i as u32,
            start: 0,
            end: 0,
            tokens,
            text: String::new(),
            hash: String::new(),
            page: None,
        }
    }

    #[test]
    fn limits_are_validated() {
        assert_eq!(BatchLimits::new(0, 1000, 10), Err(BatchLimitsError::Inputs(0)));
        assert_eq!(BatchLimits::new(2049, 1000, 10), Err(BatchLimitsError::Inputs(2049)));
        assert_eq!(BatchLimits::new(10, 300_001, 10), Err(BatchLimitsError::Tokens { got: 300_001, min: 10 }));
        assert_eq!(BatchLimits::new(10, 100, 512), Err(BatchLimitsError::Tokens { got: 100, min: 512 }));
    }

    proptest! {
        #[test]
        fn batches_respect_both_limits_and_keep_order(
            tokens in prop::collection::vec(1u32..=500, 0..600),
            max_inputs in 1usize..40,
            extra in 0usize..3000,
        ) {
            let limits = BatchLimits::new(max_inputs, 500 + extra, 500).expect("valid");
            let mut batcher = Batcher::new(limits);
            let mut batches = Vec::new();
            for (i, t) in tokens.iter().enumerate() {
                batches.extend(batcher.push(chunk(i, *t)));
            }
            batches.extend(batcher.finish());
            let mut seen = 0;
            for (b, batch) in batches.iter().enumerate() {
                prop_assert!(!batch.chunks.is_empty());
                prop_assert!(batch.chunks.len() <= limits.max_inputs);
                prop_assert!(batch.tokens <= limits.max_tokens);
                prop_assert_eq!(batch.tokens, batch.chunks.iter().map(|c| c.tokens as usize).sum::<usize>());
                // Greedy: a batch was closed only because the next chunk would not fit.
                if let Some(next) = batches.get(b + 1) {
                    let first = next.chunks[0].tokens as usize;
                    prop_assert!(batch.chunks.len() == limits.max_inputs || batch.tokens + first > limits.max_tokens);
                }
                for c in &batch.chunks {
                    prop_assert_eq!(c.id.clone(), seen.to_string());
                    seen += 1;
                }
            }
            prop_assert_eq!(seen, tokens.len());
        }
    }
}
