//! The one place that knows which embedder a model name asks for and what that model takes (its input limit,
//! tokenizer, sizes and default concurrency). `embed`, `search` and the server hold a [`ModelEmbedder`] and never
//! match on providers.

use std::sync::Arc;
use std::time::Duration;

use super::{
    ApiConfig, DryRunEmbedder, EmbedError, Embedder, Embeddings, FallbackEmbedder, LOCAL_PREFIX, LocalEmbedder,
    LocalModel, LocalModelError, OpenAiEmbedder, RateLimits, resolve_local_model, wire_model,
};
use crate::chunk::{MAX_INPUT_TOKENS, TokenCounter};
use crate::stats::Stats;

/// How requests to an endpoint are made: timeout, retries, pacing, concurrency.
#[derive(Debug, Clone, Copy)]
pub struct RequestSettings {
    pub timeout: Duration,
    pub max_retries: u32,
    pub limits: RateLimits,
    pub concurrency: usize,
}

impl Default for RequestSettings {
    fn default() -> Self {
        Self { timeout: Duration::from_secs(60), max_retries: 3, limits: RateLimits::default(), concurrency: 1 }
    }
}

/// What to build.
#[derive(Debug, Clone)]
pub struct EmbedderSpec {
    /// As the user names it: `tars/text-embedding-3-small`, `local/all-MiniLM-L6-v2`.
    pub model: String,
    /// `--dimensions`: the size text-embedding-3 models shorten their vectors to.
    pub dimensions: Option<u32>,
    pub requests: RequestSettings,
    /// A dry run with an endpoint's model: no key, no requests (a local model is still loaded, to count tokens).
    pub dry_run: bool,
}

impl EmbedderSpec {
    /// The spec of the model a dataset was embedded with, for embedding queries against it.
    pub fn for_queries(model: &str, dimensions: Option<u32>, requests: RequestSettings) -> Self {
        Self { model: model.to_owned(), dimensions, requests, dry_run: false }
    }
}

/// Why an embedder could not be built.
#[derive(Debug, thiserror::Error)]
pub enum BuildError {
    /// The size asked for does not suit the model (the caller names where the size was given).
    #[error("{0}")]
    Dimensions(String),
    #[error("{0:?} is not a local model name")]
    NotLocal(String),
    #[error(transparent)]
    LoadModel(#[from] LocalModelError),
    #[error(transparent)]
    Api(#[from] crate::tars::EndpointError),
    #[error("model load thread failed: {0}")]
    Thread(String),
}

/// The embedder a model name asks for.
pub enum ModelEmbedder {
    Api(Box<OpenAiEmbedder>),
    /// An endpoint's model with a second endpoint for it (`--fallback-base`).
    Fallback(Box<FallbackEmbedder<OpenAiEmbedder, OpenAiEmbedder>>),
    Local(LocalEmbedder),
    /// `--dry-run` with an endpoint's model.
    DryRun(DryRunEmbedder),
}

/// What a model takes, for chunking and batching.
#[derive(Debug, Clone)]
pub struct ModelShape {
    /// Tokens one input may have.
    pub max_input_tokens: usize,
    /// Counts tokens as the model does.
    pub counter: TokenCounter,
    /// Requests in flight unless told otherwise: 8 for an endpoint, 1 for the local model (it uses every core).
    pub default_concurrency: u16,
}

/// Checks `dimensions` against what `model` can shorten its vectors to.
pub fn check_dimensions(model: &str, dimensions: u32) -> Result<(), BuildError> {
    if model.starts_with(LOCAL_PREFIX) {
        return Err(BuildError::Dimensions("not supported by local models".to_owned()));
    }
    let wire = wire_model(model);
    let max = match wire {
        "text-embedding-3-small" => 1536,
        "text-embedding-3-large" => 3072,
        _ if wire.starts_with("text-embedding-3") => u32::MAX,
        _ => return Err(BuildError::Dimensions(format!("only text-embedding-3 models take a size, not {model:?}"))),
    };
    if dimensions == 0 || dimensions > max {
        return Err(BuildError::Dimensions(format!("must be between 1 and {max} for {model} (got {dimensions})")));
    }
    Ok(())
}

/// The API settings of an endpoint's model: base and key from the environment, requests as given.
pub fn api_config(
    model: &str,
    dimensions: Option<u32>,
    requests: RequestSettings,
) -> Result<ApiConfig, crate::tars::EndpointError> {
    let mut config = ApiConfig::from_env(model, dimensions)?;
    config.request_timeout = requests.timeout;
    config.retry.max_retries = requests.max_retries;
    config.limits = requests.limits;
    config.max_concurrency = requests.concurrency;
    Ok(config)
}

impl ModelEmbedder {
    /// Builds the embedder `spec` names; a local model is loaded on a blocking thread (it reads ~90 MB of weights).
    pub async fn build(spec: &EmbedderSpec, stats: &Arc<Stats>) -> Result<Self, BuildError> {
        if let Some(d) = spec.dimensions {
            check_dimensions(&spec.model, d)?;
        }
        if spec.model.starts_with(LOCAL_PREFIX) {
            let dir = resolve_local_model(&spec.model).ok_or_else(|| BuildError::NotLocal(spec.model.clone()))?;
            let model = tokio::task::spawn_blocking(move || LocalModel::load(&dir))
                .await
                .map_err(|e| BuildError::Thread(e.to_string()))??;
            return Ok(Self::Local(LocalEmbedder::new(&spec.model, Arc::new(model), Arc::clone(stats))));
        }
        if spec.dry_run {
            return Ok(Self::DryRun(DryRunEmbedder { model: spec.model.clone() }));
        }
        let config = api_config(&spec.model, spec.dimensions, spec.requests)?;
        Ok(Self::Api(Box::new(OpenAiEmbedder::new(config, Arc::clone(stats))?)))
    }

    /// The endpoint's base URL, for an endpoint's model that sends requests.
    pub fn api_base(&self) -> Option<&str> {
        match self {
            Self::Api(api) => Some(&api.config().endpoint.base),
            Self::Fallback(_) | Self::Local(_) | Self::DryRun(_) => None,
        }
    }

    /// Adds a second endpoint (`base`, where the model is named `model`), tried when the first is down.
    pub fn with_fallback(self, base: &str, model: &str, stats: &Arc<Stats>) -> Result<Self, BuildError> {
        match self {
            Self::Api(primary) => {
                let config = primary.config().for_fallback(base, model)?;
                let fallback = OpenAiEmbedder::new(config, Arc::clone(stats))?;
                Ok(Self::Fallback(Box::new(FallbackEmbedder::new(*primary, fallback, Arc::clone(stats)))))
            }
            other => Ok(other),
        }
    }

    /// What the model takes.
    pub fn shape(&self) -> ModelShape {
        match self {
            Self::Api(_) | Self::Fallback(_) | Self::DryRun(_) => {
                ModelShape { max_input_tokens: MAX_INPUT_TOKENS, counter: TokenCounter::Cl100k, default_concurrency: 8 }
            }
            Self::Local(embedder) => ModelShape {
                max_input_tokens: embedder.local_model().max_input_tokens(),
                counter: TokenCounter::HuggingFace {
                    name: format!("{}-tokenizer", embedder.model()),
                    tokenizer: embedder.local_model().counter(),
                },
                default_concurrency: 1,
            },
        }
    }

    /// Checks that `text` fits in one input of the model (a query, say, which is never split).
    pub fn check_input(&self, text: &str) -> Result<(), String> {
        let shape = self.shape();
        // Every token covers at least one byte, so a text no longer in bytes than the limit is within it: a query
        // is checked without building the tokenizer (for cl100k, 15 ms and 40 MB of a one-shot search).
        if text.len() <= shape.max_input_tokens {
            return Ok(());
        }
        let tokens = shape.counter.count(text);
        if tokens > shape.max_input_tokens {
            return Err(format!("{tokens} tokens; {} takes at most {}", self.model(), shape.max_input_tokens));
        }
        Ok(())
    }
}

impl Embedder for ModelEmbedder {
    async fn embed(&self, inputs: &[&str]) -> Result<Embeddings, EmbedError> {
        match self {
            Self::Api(e) => e.embed(inputs).await,
            Self::Fallback(e) => e.embed(inputs).await,
            Self::Local(e) => e.embed(inputs).await,
            Self::DryRun(e) => e.embed(inputs).await,
        }
    }

    fn model(&self) -> &str {
        match self {
            Self::Api(e) => e.model(),
            Self::Fallback(e) => e.model(),
            Self::Local(e) => e.model(),
            Self::DryRun(e) => e.model(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes_are_checked_per_model() {
        assert!(check_dimensions("tars/text-embedding-3-small", 512).is_ok());
        assert!(check_dimensions("tars/text-embedding-3-small", 1536).is_ok());
        let too_big = check_dimensions("tars/text-embedding-3-small", 1537).expect_err("too big").to_string();
        assert!(too_big.contains("between 1 and 1536"), "{too_big}");
        assert!(check_dimensions("text-embedding-3-large", 3072).is_ok());
        assert!(check_dimensions("text-embedding-3-large", 0).is_err());
        let other = check_dimensions("tars/text-embedding-ada-002", 256).expect_err("no size").to_string();
        assert!(other.contains("only text-embedding-3"), "{other}");
        assert!(check_dimensions("local/all-MiniLM-L6-v2", 128).is_err());
    }

    #[tokio::test]
    async fn a_dry_run_of_an_endpoint_model_needs_no_key_and_counts_cl100k() {
        let spec = EmbedderSpec {
            model: "tars/text-embedding-3-small".into(),
            dimensions: None,
            requests: RequestSettings::default(),
            dry_run: true,
        };
        let embedder = ModelEmbedder::build(&spec, &Arc::new(Stats::default())).await.expect("build");
        assert!(matches!(embedder, ModelEmbedder::DryRun(_)));
        let shape = embedder.shape();
        assert_eq!((shape.max_input_tokens, shape.counter.name()), (MAX_INPUT_TOKENS, "cl100k_base".to_owned()));
        assert!(embedder.check_input("hello world").is_ok());
        let long = "word ".repeat(MAX_INPUT_TOKENS + 10);
        assert!(embedder.check_input(&long).expect_err("too long").contains("takes at most 8191"));
    }
}
