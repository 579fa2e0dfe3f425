//! Stage 4: turning text into vectors.
//!
//! [`Embedder`] is the stage boundary; [`OpenAiEmbedder`] speaks the OpenAI embeddings protocol to TARS (or any
//! compatible endpoint), with the retry policy of [`retry`].

mod bert;
mod build;
mod fallback;
mod local;
mod openai;
pub mod price;

use std::future::Future;

use crate::error::{count, plural};

pub use crate::tars::limiter::{Limiter, RateLimits};
pub use crate::tars::{DEFAULT_API_BASE, wire_model};
pub use build::{BuildError, EmbedderSpec, ModelEmbedder, ModelShape, RequestSettings, api_config, check_dimensions};
pub use fallback::{FallbackEmbedder, FallbackError, check_fallback};
pub use local::{
    DEFAULT_LOCAL_MODEL, LOCAL_PREFIX, LocalEmbedder, LocalModel, LocalModelError, model_cache_dir, resolve_local_model,
};
pub use openai::{ApiConfig, ModelInfo, OpenAiEmbedder};

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
    #[error("gave up after {attempts} invalid {}: {last}", plural(u64::from(*attempts), "response"))]
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
    #[error("gave up after {attempts} {}: {last}", plural(u64::from(*attempts), "attempt"))]
    Exhausted { attempts: u32, last: String, cause: Transient },
    /// A request that could not be made or understood outside the retry loop (`GET /models`).
    #[error("{message}")]
    Request { message: String },
    /// More chunks failed than `--max-failures` allows.
    #[error("{} failed, more than --max-failures {max}; the last error: {last}", count(*failed, "chunk"))]
    TooManyFailures { failed: u64, max: u64, last: String },
    /// Request after request ran out of retries on the same cause: the endpoint is down, and the run stopped taking
    /// new work rather than pay every remaining batch's retries.
    #[error(
        "{requests} requests in a row gave up after all their retries on {cause}; the endpoint looks down, so the run \
         stopped taking new work (the last error: {last})"
    )]
    Unavailable { requests: u32, cause: Transient, last: String },
}

/// What kept failing when a request ran out of retries.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Transient {
    /// No connection, a connection cut, a timeout.
    Transport,
    /// An HTTP status worth retrying (5xx, 408, 409, or one the server said to retry).
    Status(u16),
    /// 429 rate limits, past their own retry budget.
    RateLimited,
}

impl Transient {
    /// Whether this says the endpoint (or what is behind it) is down: a transport failure or a 5xx.
    pub fn is_outage(&self) -> bool {
        matches!(self, Transient::Transport) || matches!(self, Transient::Status(s) if *s >= 500)
    }

    /// Two causes of the same outage: transport failures, or server errors.
    pub fn same_outage(&self, other: &Transient) -> bool {
        self.is_outage()
            && other.is_outage()
            && matches!(self, Transient::Transport) == matches!(other, Transient::Transport)
    }
}

impl std::fmt::Display for Transient {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Transient::Transport => write!(f, "connection errors"),
            Transient::Status(s) if *s >= 500 => write!(f, "server errors (HTTP {s})"),
            Transient::Status(s) => write!(f, "HTTP {s}"),
            Transient::RateLimited => write!(f, "rate limits (HTTP 429)"),
        }
    }
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
            | EmbedError::Request { .. }
            | EmbedError::InputRejected { .. }
            | EmbedError::InvalidResponse { .. } => None,
            EmbedError::TooManyFailures { .. } => {
                Some("the endpoint keeps failing: check its status and the errors above, then run again")
            }
            EmbedError::Unavailable { .. } => Some(
                "what was embedded before the stop is published; check the endpoint (or give --fallback-base), then \
                 run again: the next run sends only the rest",
            ),
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
