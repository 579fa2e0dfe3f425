//! Stage 4: turning text into vectors.
//!
//! [`Embedder`] is the stage boundary; [`OpenAiEmbedder`] speaks the OpenAI embeddings protocol to TARS (or any
//! compatible endpoint), with the retry policy of [`retry`].

mod bert;
mod fallback;
mod limiter;
mod local;
mod openai;
pub mod price;
pub mod retry;

use std::future::Future;

pub use fallback::{FallbackEmbedder, FallbackError, check_fallback};
pub use limiter::{Limiter, RateLimits};
pub use local::{
    DEFAULT_LOCAL_MODEL, LOCAL_PREFIX, LocalEmbedder, LocalModel, LocalModelError, model_cache_dir, resolve_local_model,
};
pub use openai::{ApiConfig, DEFAULT_API_BASE, ModelInfo, OpenAiEmbedder, wire_model};

/// Vectors for one request, in input order, as one flat row-major buffer.
#[derive(Debug, Clone, PartialEq)]
pub struct Embeddings {
    pub dimensions: usize,
    pub vectors: Vec<f32>,
    /// Tokens the server billed, when it said.
    pub usage_tokens: Option<u64>,
}

impl Embeddings {
    pub fn len(&self) -> usize {
        self.vectors.len().checked_div(self.dimensions).unwrap_or(0)
    }

    pub fn is_empty(&self) -> bool {
        self.vectors.is_empty()
    }

    pub fn vector(&self, i: usize) -> &[f32] {
        &self.vectors[i * self.dimensions..(i + 1) * self.dimensions]
    }
}

/// Stage boundary: embeds a list of texts, returning one vector per text in the same order.
///
/// Implementations retry what is worth retrying themselves; an `Err` is final for that request.
pub trait Embedder: Send + Sync + 'static {
    fn embed<'a>(&'a self, inputs: &'a [&'a str]) -> impl Future<Output = Result<Embeddings, EmbedError>> + Send + 'a;

    /// The model name as the user gave it (recorded in the dataset).
    fn model(&self) -> &str;
}

/// Why a request failed for good.
#[derive(Debug, thiserror::Error)]
pub enum EmbedError {
    /// The server refused the request or the configuration; retrying cannot help.
    #[error("{}", describe_status(*status, message, request_id.as_deref()))]
    Rejected { status: u16, message: String, request_id: Option<String>, advice: Option<String> },
    /// The server refused what the request carries (an input too long, too many tokens, an invalid input):
    /// smaller requests may succeed, and a lone input that fails this way has failed for good.
    #[error("{}", describe_status(*status, message, request_id.as_deref()))]
    InputRejected { status: u16, message: String, request_id: Option<String> },
    /// Every response failed the checks (wrong count, duplicate or missing indexes, wrong size, non-finite
    /// values), which can be caused by one of the inputs.
    #[error("gave up after {attempts} invalid responses: {last}")]
    InvalidResponse { attempts: u32, last: String },
    /// The endpoints are set up wrongly for this run (a fallback that answers with vectors of another size).
    #[error("{message}")]
    Misconfigured { message: String, advice: String },
    /// The account is out of quota or credit.
    #[error("the API reports exhausted quota or credit (HTTP {status}): {message}")]
    Quota { status: u16, message: String },
    /// The local model failed.
    #[error("local model: {message}")]
    Model { message: String },
    /// Retries ran out on errors that are usually transient.
    #[error("gave up after {attempts} attempts: {last}")]
    Exhausted { attempts: u32, last: String },
    /// More chunks failed than `--max-failures` allows.
    #[error("{failed} chunks failed, more than --max-failures {max}; the last error: {last}")]
    TooManyFailures { failed: u64, max: u64, last: String },
}

impl EmbedError {
    /// Whether the whole run must stop (as opposed to this batch failing).
    pub fn is_fatal(&self) -> bool {
        !matches!(
            self,
            EmbedError::Exhausted { .. } | EmbedError::InputRejected { .. } | EmbedError::InvalidResponse { .. }
        )
    }

    /// Whether the inputs themselves may be the cause, so that a smaller request may succeed.
    pub fn blames_inputs(&self) -> bool {
        matches!(self, EmbedError::InputRejected { .. } | EmbedError::InvalidResponse { .. })
    }

    /// Requests this error took.
    pub fn attempts(&self) -> u32 {
        match self {
            EmbedError::Exhausted { attempts, .. } | EmbedError::InvalidResponse { attempts, .. } => *attempts,
            _ => 1,
        }
    }

    /// What the user should do about it, when we know.
    pub fn advice(&self) -> Option<&str> {
        match self {
            EmbedError::Rejected { advice, .. } => advice.as_deref(),
            EmbedError::Misconfigured { advice, .. } => Some(advice),
            EmbedError::Quota { .. } => {
                Some("add credit or raise the spending limit of the account behind TARS_API_KEY, then run again")
            }
            EmbedError::Model { .. }
            | EmbedError::Exhausted { .. }
            | EmbedError::InputRejected { .. }
            | EmbedError::InvalidResponse { .. } => None,
            EmbedError::TooManyFailures { .. } => {
                Some("the endpoint keeps failing: check its status and the errors above, then run again")
            }
        }
    }
}

fn describe_status(status: u16, message: &str, request_id: Option<&str>) -> String {
    match request_id {
        Some(id) => format!("the API rejected the request (HTTP {status}, request id {id}): {message}"),
        None => format!("the API rejected the request (HTTP {status}): {message}"),
    }
}

/// The embedder of a `--dry-run` against an endpoint: names the model for the dataset's settings and is never
/// asked for vectors, so a cost estimate needs neither a key nor the network.
pub struct DryRunEmbedder {
    pub model: String,
}

impl Embedder for DryRunEmbedder {
    async fn embed(&self, _inputs: &[&str]) -> Result<Embeddings, EmbedError> {
        Err(EmbedError::Model { message: "a dry run sends nothing".to_owned() })
    }

    fn model(&self) -> &str {
        &self.model
    }
}
