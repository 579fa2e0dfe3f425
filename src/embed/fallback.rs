//! A second endpoint for the same model, used while the first keeps failing.
//!
//! A dataset and its index compare vectors of one model only, so the fallback must produce vectors in the same space:
//! the same model and size through another OpenAI-compatible endpoint. [`check_fallback`] refuses anything else
//! before the run starts, and [`FallbackEmbedder`] refuses a fallback response whose size differs from the
//! primary's.

use std::sync::Arc;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU32, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use super::{EmbedError, Embedder, Embeddings, LOCAL_PREFIX};
use crate::stats::Stats;

/// Primary requests given up on in a row before new requests go straight to the fallback.
pub const SWITCH_AFTER: u32 = 3;
/// How long requests go straight to the fallback before the primary is tried again.
pub const PRIMARY_RETRY_AFTER: Duration = Duration::from_secs(60);

#[derive(Debug, Clone, thiserror::Error, PartialEq, Eq)]
pub enum FallbackError {
    #[error(
        "local models have no endpoint to fall back from or to: a local model and an endpoint's model give vectors \
         in different spaces"
    )]
    Local,
    #[error(
        "{fallback:?} gives vectors in a different space from {primary:?}; a dataset and its index compare vectors of \
         one model only, so the fallback must be the same model through another endpoint (--fallback-base)"
    )]
    DifferentModel { primary: String, fallback: String },
    #[error("the fallback is the primary endpoint itself; give another base URL with --fallback-base")]
    SameEndpoint,
    #[error("{0:?} is not an http(s) URL")]
    BadBase(String),
}

/// The fallback's base URL and model name, when they give vectors in the primary's space: the model named the
/// same once any provider prefix (`tars/`, `openai/`) is dropped, at another base URL.
pub fn check_fallback(
    primary_model: &str,
    primary_base: &str,
    fallback_model: Option<&str>,
    fallback_base: Option<&str>,
) -> Result<(String, String), FallbackError> {
    let model = fallback_model.unwrap_or(primary_model);
    if primary_model.starts_with(LOCAL_PREFIX) || model.starts_with(LOCAL_PREFIX) {
        return Err(FallbackError::Local);
    }
    let bare = |m: &str| m.rsplit('/').next().unwrap_or(m).to_ascii_lowercase();
    if bare(model) != bare(primary_model) {
        return Err(FallbackError::DifferentModel { primary: primary_model.to_owned(), fallback: model.to_owned() });
    }
    let normalise = |b: &str| b.trim().trim_end_matches('/').to_owned();
    let base = fallback_base.map_or_else(|| normalise(primary_base), normalise);
    if !(base.starts_with("http://") || base.starts_with("https://")) {
        return Err(FallbackError::BadBase(base));
    }
    if base == normalise(primary_base) {
        return Err(FallbackError::SameEndpoint);
    }
    Ok((base, model.to_owned()))
}

/// Sends each request to the primary; a request the primary gave up on (retries exhausted) goes to the fallback.
/// After [`SWITCH_AFTER`] such requests in a row, new requests go straight to the fallback for
/// [`PRIMARY_RETRY_AFTER`], then the primary is tried again. Errors that are not about the endpoint's health (the
/// inputs refused, quota, a rejected key) are returned as they are.
pub struct FallbackEmbedder<P, F> {
    primary: P,
    fallback: F,
    failures_in_a_row: AtomicU32,
    fallback_until: Mutex<Option<Instant>>,
    /// Vector size of the primary's responses, which the fallback's must match.
    dimensions: AtomicUsize,
    stats: Arc<Stats>,
}

impl<P: Embedder, F: Embedder> FallbackEmbedder<P, F> {
    pub fn new(primary: P, fallback: F, stats: Arc<Stats>) -> Self {
        Self {
            primary,
            fallback,
            failures_in_a_row: AtomicU32::new(0),
            fallback_until: Mutex::new(None),
            dimensions: AtomicUsize::new(0),
            stats,
        }
    }

    fn primary_resting(&self) -> bool {
        let until = self.fallback_until.lock().map(|u| *u).unwrap_or(None);
        until.is_some_and(|t| Instant::now() < t)
    }

    fn record_size(&self, embeddings: &Embeddings) -> Result<(), EmbedError> {
        match self.dimensions.compare_exchange(0, embeddings.dimensions, Ordering::Relaxed, Ordering::Relaxed) {
            Ok(_) => Ok(()),
            Err(known) if known == embeddings.dimensions => Ok(()),
            Err(known) => Err(EmbedError::Misconfigured {
                message: format!(
                    "the fallback endpoint returned {}-dimension vectors, the primary {known}: it does not serve the \
                     same model",
                    embeddings.dimensions
                ),
                advice: "point --fallback-base at an endpoint that serves the same model".to_owned(),
            }),
        }
    }
}

impl<P: Embedder, F: Embedder> Embedder for FallbackEmbedder<P, F> {
    async fn embed(&self, inputs: &[&str]) -> Result<Embeddings, EmbedError> {
        if !self.primary_resting() {
            match self.primary.embed(inputs).await {
                Ok(embeddings) => {
                    self.failures_in_a_row.store(0, Ordering::Relaxed);
                    self.record_size(&embeddings)?;
                    return Ok(embeddings);
                }
                Err(error @ EmbedError::Exhausted { .. }) => {
                    let in_a_row = self.failures_in_a_row.fetch_add(1, Ordering::Relaxed) + 1;
                    tracing::warn!("primary endpoint gave up ({error}); sending the request to the fallback");
                    if in_a_row >= SWITCH_AFTER
                        && let Ok(mut until) = self.fallback_until.lock()
                    {
                        *until = Some(Instant::now() + PRIMARY_RETRY_AFTER);
                        self.failures_in_a_row.store(0, Ordering::Relaxed);
                        tracing::warn!(
                            "the primary endpoint failed {in_a_row} requests in a row: new requests go to the \
                             fallback for {}s",
                            PRIMARY_RETRY_AFTER.as_secs()
                        );
                    }
                }
                Err(error) => return Err(error),
            }
        }
        Stats::add(&self.stats.fallback_requests, 1);
        let embeddings = self.fallback.embed(inputs).await?;
        self.record_size(&embeddings)?;
        Ok(embeddings)
    }

    fn model(&self) -> &str {
        self.primary.model()
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::AtomicBool;

    use super::*;
    use crate::embed::Transient;

    #[test]
    fn only_the_same_model_elsewhere_is_a_fallback() {
        let primary = "https://api.router.tetrate.ai/v1";
        let ok = check_fallback("tars/text-embedding-3-small", primary, None, Some("http://proxy:4000/v1/"));
        assert_eq!(ok, Ok(("http://proxy:4000/v1".to_owned(), "tars/text-embedding-3-small".to_owned())));
        let ok = check_fallback(
            "tars/text-embedding-3-small",
            primary,
            Some("openai/text-embedding-3-small"),
            Some("http://proxy:4000"),
        );
        assert!(ok.is_ok(), "{ok:?}");

        let other = check_fallback("tars/text-embedding-3-small", primary, Some("tars/text-embedding-3-large"), None);
        assert!(matches!(other, Err(FallbackError::DifferentModel { .. })), "{other:?}");
        assert!(other.expect_err("refused").to_string().contains("different space"));
        let local = check_fallback("tars/text-embedding-3-small", primary, Some("local/all-minilm-l6-v2"), None);
        assert_eq!(local, Err(FallbackError::Local));
        let same = check_fallback("tars/text-embedding-3-small", primary, None, Some(&format!("{primary}/")));
        assert_eq!(same, Err(FallbackError::SameEndpoint));
        let no_base = check_fallback("tars/text-embedding-3-small", primary, Some("text-embedding-3-small"), None);
        assert_eq!(no_base, Err(FallbackError::SameEndpoint));
        let bad = check_fallback("tars/text-embedding-3-small", primary, None, Some("proxy:4000"));
        assert!(matches!(bad, Err(FallbackError::BadBase(_))));
    }

    /// Fails with `Exhausted` while `down`, else returns `dims`-size vectors.
    struct Endpoint {
        down: AtomicBool,
        dims: usize,
        calls: AtomicU32,
    }

    impl Endpoint {
        fn new(down: bool, dims: usize) -> Self {
            Self { down: AtomicBool::new(down), dims, calls: AtomicU32::new(0) }
        }
    }

    impl Embedder for Endpoint {
        async fn embed(&self, inputs: &[&str]) -> Result<Embeddings, EmbedError> {
            self.calls.fetch_add(1, Ordering::Relaxed);
            if self.down.load(Ordering::Relaxed) {
                return Err(EmbedError::Exhausted {
                    attempts: 7,
                    last: "HTTP 503".into(),
                    cause: Transient::Status(503),
                });
            }
            Ok(Embeddings { dimensions: self.dims, vectors: vec![0.5; self.dims * inputs.len()], usage_tokens: None })
        }

        fn model(&self) -> &str {
            "m"
        }
    }

    #[tokio::test]
    async fn a_failing_primary_hands_over_then_rests() {
        let stats = Arc::new(Stats::default());
        let both = FallbackEmbedder::new(Endpoint::new(true, 4), Endpoint::new(false, 4), Arc::clone(&stats));
        for _ in 0..10 {
            let e = both.embed(&["a", "b"]).await.expect("the fallback answers");
            assert_eq!(e.len(), 2);
        }
        assert_eq!(both.primary.calls.load(Ordering::Relaxed), SWITCH_AFTER, "the primary rests after 3 in a row");
        assert_eq!(both.fallback.calls.load(Ordering::Relaxed), 10);
        assert_eq!(Stats::get(&stats.fallback_requests), 10);

        // Once its rest is over, the primary gets requests again.
        *both.fallback_until.lock().expect("lock") = Some(Instant::now());
        both.primary.down.store(false, Ordering::Relaxed);
        both.embed(&["c"]).await.expect("primary back");
        assert_eq!(both.primary.calls.load(Ordering::Relaxed), SWITCH_AFTER + 1);
        assert_eq!(both.fallback.calls.load(Ordering::Relaxed), 10);
    }

    #[tokio::test]
    async fn a_fallback_of_another_size_is_refused() {
        let both = FallbackEmbedder::new(Endpoint::new(false, 4), Endpoint::new(false, 8), Arc::new(Stats::default()));
        both.embed(&["a"]).await.expect("primary");
        both.primary.down.store(true, Ordering::Relaxed);
        let err = both.embed(&["b"]).await.expect_err("8 dimensions after 4");
        assert!(err.is_fatal() && err.to_string().contains("8-dimension"), "{err}");
    }
}
