//! Fault isolation: a request that fails because of what it carries (a 400 naming a too-long input or too many
//! tokens, or responses that keep failing the checks) is split in halves until the culprit is alone, so that one
//! bad input costs only itself, not the batch it travelled in.

use crate::batch::Batch;
use crate::chunk::Chunk;
use crate::embed::{EmbedError, Embedder, Embeddings, Transient};
use crate::stats::Stats;

/// Why a chunk was given up on.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ChunkFailure {
    pub error: String,
    /// Requests that carried the chunk, splits included.
    pub attempts: u32,
}

/// What became of one batch.
#[derive(Debug, Default)]
pub struct BatchOutcome {
    /// Parts that were embedded (the whole batch, or the halves that succeeded).
    pub embedded: Vec<(Batch, Embeddings)>,
    /// Chunks that failed for good.
    pub failed: Vec<(Chunk, ChunkFailure)>,
    /// The run must stop; chunks neither embedded nor failed were not tried.
    pub fatal: Option<EmbedError>,
    /// What kept failing, when a part failed because its retries ran out (for the run's circuit breaker).
    pub exhausted: Option<(Transient, String)>,
}

/// Embeds `batch`, splitting it to isolate inputs the server refuses. Halves go one after the other, so a split
/// batch still holds a single slot of the run's concurrency. Splits are counted in `stats` as they happen, so a
/// run stopped meanwhile still reports them.
pub async fn embed_isolating<E: Embedder>(embedder: &E, batch: Batch, stats: &Stats) -> BatchOutcome {
    let mut outcome = BatchOutcome::default();
    // Depth first, left half on top, so parts finish in input order.
    let mut parts: Vec<(Vec<Chunk>, u32)> = vec![(batch.chunks, 0)];
    while let Some((mut chunks, earlier_attempts)) = parts.pop() {
        let texts: Vec<&str> = chunks.iter().map(|c| c.text.as_str()).collect();
        let result = embedder.embed(&texts).await;
        drop(texts);
        match result {
            Ok(embeddings) => {
                let tokens = chunks.iter().map(|c| c.tokens as usize).sum();
                outcome.embedded.push((Batch { chunks, tokens }, embeddings));
            }
            Err(error) if error.is_fatal() => {
                outcome.fatal = Some(error);
                break;
            }
            Err(error) if error.blames_inputs() && chunks.len() > 1 => {
                let attempts = earlier_attempts + error.attempts();
                tracing::debug!(inputs = chunks.len(), "splitting a request the server refused: {error}");
                let right = chunks.split_off(chunks.len() / 2);
                parts.push((right, attempts));
                parts.push((chunks, attempts));
                Stats::add(&stats.batches_split, 1);
            }
            Err(error) => {
                if let EmbedError::Exhausted { cause, .. } = &error {
                    outcome.exhausted = Some((*cause, error.to_string()));
                }
                let failure = ChunkFailure { error: error.to_string(), attempts: earlier_attempts + error.attempts() };
                outcome.failed.extend(chunks.into_iter().map(|c| (c, failure.clone())));
            }
        }
    }
    outcome
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;
    use std::sync::atomic::{AtomicU32, Ordering};

    use super::*;

    /// Refuses any request holding a text that contains "poison"; stops the run on "quota".
    struct Picky {
        requests: AtomicU32,
    }

    impl Embedder for Picky {
        async fn embed(&self, inputs: &[&str]) -> Result<Embeddings, EmbedError> {
            self.requests.fetch_add(1, Ordering::Relaxed);
            if inputs.iter().any(|t| t.contains("quota")) {
                return Err(EmbedError::Quota { status: 429, message: "out of credit".into() });
            }
            if inputs.iter().any(|t| t.contains("poison")) {
                return Err(EmbedError::InputRejected {
                    status: 400,
                    message: "This model's maximum context length is 8192 tokens".into(),
                    request_id: None,
                });
            }
            if inputs.iter().any(|t| t.contains("flaky")) {
                return Err(EmbedError::Exhausted {
                    attempts: 3,
                    last: "HTTP 503".into(),
                    cause: Transient::Status(503),
                });
            }
            let vectors = inputs.iter().map(|t| t.len() as f32).collect();
            Ok(Embeddings { dimensions: 1, vectors, usage_tokens: None })
        }

        fn model(&self) -> &str {
            "picky"
        }
    }

    fn batch(texts: &[&str]) -> Batch {
        let doc: Arc<str> = Arc::from("doc");
        let chunks: Vec<Chunk> = texts
            .iter()
            .enumerate()
            .map(|(i, t)| Chunk {
                id: format!("c{i}"),
                doc: Arc::clone(&doc),
                chunk_index: i as u32,
                start: 0,
                end: 0,
                tokens: 1,
                text: (*t).to_owned(),
                hash: String::new(),
                page: None,
            })
            .collect();
        Batch { tokens: chunks.len(), chunks }
    }

    fn embedded_texts(outcome: &BatchOutcome) -> Vec<String> {
        outcome.embedded.iter().flat_map(|(b, _)| b.chunks.iter().map(|c| c.text.clone())).collect()
    }

    #[tokio::test]
    async fn one_poison_input_costs_only_itself() {
        let picky = Picky { requests: AtomicU32::new(0) };
        let texts = ["a", "b", "c", "poison", "e", "f", "g", "h"];
        let stats = Stats::default();
        let outcome = embed_isolating(&picky, batch(&texts), &stats).await;
        assert!(outcome.fatal.is_none());
        assert_eq!(embedded_texts(&outcome), ["a", "b", "c", "e", "f", "g", "h"]);
        for (b, e) in &outcome.embedded {
            let want: Vec<f32> = b.chunks.iter().map(|c| c.text.len() as f32).collect();
            assert_eq!(e.vectors, want, "vectors stay with their chunks");
        }
        assert_eq!(outcome.failed.len(), 1);
        let (chunk, failure) = &outcome.failed[0];
        assert_eq!(chunk.text, "poison");
        assert!(failure.error.contains("maximum context length"), "{failure:?}");
        // 8 → 4 → 2 → 1: the poison travelled in four requests.
        assert_eq!(failure.attempts, 4);
        assert_eq!(Stats::get(&stats.batches_split), 3);
        assert_eq!(picky.requests.load(Ordering::Relaxed), 7);
    }

    #[tokio::test]
    async fn transient_failures_are_not_split_and_fatal_ones_stop() {
        let picky = Picky { requests: AtomicU32::new(0) };
        let stats = Stats::default();
        let outcome = embed_isolating(&picky, batch(&["a", "flaky", "c"]), &stats).await;
        assert_eq!(outcome.failed.len(), 3, "a batch that kept failing for transient reasons fails whole");
        assert!(outcome.failed.iter().all(|(_, f)| f.attempts == 3));
        assert_eq!((Stats::get(&stats.batches_split), picky.requests.load(Ordering::Relaxed)), (0, 1));
        assert_eq!(outcome.exhausted.map(|(cause, _)| cause), Some(Transient::Status(503)));

        let outcome = embed_isolating(&picky, batch(&["poison", "x", "quota", "y"]), &stats).await;
        assert!(matches!(outcome.fatal, Some(EmbedError::Quota { .. })), "{:?}", outcome.fatal);
        assert!(outcome.embedded.is_empty() && outcome.failed.is_empty(), "nothing is recorded as failed on a stop");
        assert_eq!(picky.requests.load(Ordering::Relaxed), 2, "no split after a fatal error");
    }
}
