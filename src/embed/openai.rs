//! The OpenAI-compatible embeddings client used for TARS (wire contract: ../shared/docs/tars-api.md).

use std::fmt;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::Duration;

use base64::Engine as _;
use bytes::Bytes;
use reqwest::header::{CONTENT_TYPE, HeaderMap};
use reqwest::{Client, StatusCode};
use serde::{Deserialize, Serialize};

use super::{EmbedError, Embedder, Embeddings, Transient};
use crate::chunk::count_tokens;
use crate::error::count;
use crate::stats::Stats;
use crate::tars::limiter::{Limiter, RateLimits};
use crate::tars::retry::{Disposition, RetryPolicy, classify, server_hint};
use crate::tars::{
    ApiError, Endpoint, EndpointError, advice_for, is_unknown_model, parse_error, request_id, transport_message,
    wire_model,
};

/// Where and how to reach the embeddings API.
#[derive(Debug, Clone)]
pub struct ApiConfig {
    pub endpoint: Endpoint,
    /// The model as the user names it (`tars/text-embedding-3-small`).
    pub model: String,
    pub dimensions: Option<u32>,
    pub connect_timeout: Duration,
    pub request_timeout: Duration,
    pub retry: RetryPolicy,
    /// `--rpm` / `--tpm`, enforced before sending.
    pub limits: RateLimits,
    /// Most requests in flight (`--concurrency`): the ceiling of the adaptive window.
    pub max_concurrency: usize,
}

impl ApiConfig {
    /// Base URL from `TARS_API_BASE` (default [`crate::tars::DEFAULT_API_BASE`]), key from `TARS_API_KEY`.
    pub fn from_env(model: &str, dimensions: Option<u32>) -> Result<Self, EndpointError> {
        Ok(Self::for_endpoint(Endpoint::from_env()?, model, dimensions))
    }

    pub fn new(base: &str, key: &str, model: &str, dimensions: Option<u32>) -> Result<Self, EndpointError> {
        Ok(Self::for_endpoint(Endpoint::new(base, key)?, model, dimensions))
    }

    fn for_endpoint(endpoint: Endpoint, model: &str, dimensions: Option<u32>) -> Self {
        Self {
            endpoint,
            model: model.to_owned(),
            dimensions,
            connect_timeout: Duration::from_secs(10),
            request_timeout: Duration::from_secs(120),
            retry: RetryPolicy::default(),
            limits: RateLimits::default(),
            max_concurrency: 8,
        }
    }

    /// The same settings for a fallback endpoint: its base URL and model name, and its key from
    /// `TARS_FALLBACK_API_KEY` when set, else this one's.
    pub fn for_fallback(&self, base: &str, model: &str) -> Result<Self, EndpointError> {
        let key = std::env::var("TARS_FALLBACK_API_KEY").ok().filter(|k| !k.trim().is_empty());
        Ok(Self { endpoint: self.endpoint.with_base(base, key.as_deref())?, model: model.to_owned(), ..self.clone() })
    }
}

#[derive(Serialize)]
struct EmbeddingRequest<'a> {
    model: &'a str,
    input: &'a [&'a str],
    encoding_format: &'a str,
    #[serde(skip_serializing_if = "Option::is_none")]
    dimensions: Option<u32>,
}

#[derive(Deserialize)]
struct EmbeddingResponse {
    data: Vec<EmbeddingItem>,
    #[serde(default)]
    usage: Option<Usage>,
}

#[derive(Deserialize)]
struct EmbeddingItem {
    index: usize,
    embedding: EmbeddingValue,
}

/// Accept both shapes whatever was asked for: a gateway may ignore `encoding_format`.
enum EmbeddingValue {
    Float(Vec<f32>),
    Base64(String),
}

/// By hand rather than `#[serde(untagged)]`, which buffers every vector and, for a base64 string, first formats it
/// into the error of the failed float attempt.
impl<'de> Deserialize<'de> for EmbeddingValue {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct Visitor;

        impl<'de> serde::de::Visitor<'de> for Visitor {
            type Value = EmbeddingValue;

            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("an array of floats or a base64 string")
            }

            fn visit_str<E: serde::de::Error>(self, v: &str) -> Result<Self::Value, E> {
                Ok(EmbeddingValue::Base64(v.to_owned()))
            }

            fn visit_string<E: serde::de::Error>(self, v: String) -> Result<Self::Value, E> {
                Ok(EmbeddingValue::Base64(v))
            }

            fn visit_seq<A: serde::de::SeqAccess<'de>>(self, mut seq: A) -> Result<Self::Value, A::Error> {
                let mut values = Vec::with_capacity(seq.size_hint().unwrap_or(1536));
                while let Some(v) = seq.next_element::<f32>()? {
                    values.push(v);
                }
                Ok(EmbeddingValue::Float(values))
            }
        }

        deserializer.deserialize_any(Visitor)
    }
}

#[derive(Deserialize)]
struct Usage {
    #[serde(default)]
    prompt_tokens: Option<u64>,
    #[serde(default)]
    total_tokens: Option<u64>,
}

/// Decodes `encoding_format: base64`: standard base64 of little-endian f32s.
pub(crate) fn decode_base64_f32(text: &str) -> Result<Vec<f32>, String> {
    let bytes =
        base64::engine::general_purpose::STANDARD.decode(text).map_err(|e| format!("invalid base64 embedding: {e}"))?;
    if bytes.len() % 4 != 0 {
        return Err(format!("base64 embedding has {} bytes, not a multiple of 4", bytes.len()));
    }
    Ok(bytes.chunks_exact(4).map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]])).collect())
}

/// Checks a response against its request before anything is written: one vector per input, each index once, one
/// dimension throughout, finite values. Returns the vectors in input order.
fn validate(response: EmbeddingResponse, inputs: usize, expected_dims: Option<usize>) -> Result<Embeddings, String> {
    if response.data.len() != inputs {
        return Err(format!("{} embeddings returned for {inputs} inputs", response.data.len()));
    }
    let mut slots: Vec<Option<Vec<f32>>> = vec![None; inputs];
    for item in response.data {
        let vector = match item.embedding {
            EmbeddingValue::Float(v) => v,
            EmbeddingValue::Base64(s) => decode_base64_f32(&s)?,
        };
        let slot = slots
            .get_mut(item.index)
            .ok_or_else(|| format!("index {} out of range for {inputs} inputs", item.index))?;
        if slot.replace(vector).is_some() {
            return Err(format!("index {} returned twice", item.index));
        }
    }
    let mut dims = expected_dims;
    let mut flat = Vec::new();
    for (i, slot) in slots.into_iter().enumerate() {
        let vector = slot.ok_or_else(|| format!("no embedding for input {i}"))?;
        let want = *dims.get_or_insert(vector.len());
        if vector.is_empty() || vector.len() != want {
            return Err(format!("embedding {i} has {} dimensions, expected {want}", vector.len()));
        }
        if let Some(bad) = vector.iter().position(|x| !x.is_finite()) {
            return Err(format!("embedding {i} has a non-finite value at position {bad}"));
        }
        if flat.is_empty() {
            flat.reserve_exact(want * inputs);
        }
        flat.extend_from_slice(&vector);
    }
    Ok(Embeddings { dimensions: dims.unwrap_or(0), vectors: flat, usage_tokens: None })
}

/// A model listed by `GET /models`.
#[derive(Debug, Clone, Deserialize, Serialize)]
pub struct ModelInfo {
    pub id: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub owned_by: Option<String>,
    #[serde(flatten)]
    pub extra: serde_json::Map<String, serde_json::Value>,
}

#[derive(Deserialize)]
struct ModelList {
    data: Vec<ModelInfo>,
}

/// The TARS / OpenAI-compatible embedder: one pooled HTTP client shared by every request in flight.
pub struct OpenAiEmbedder {
    config: ApiConfig,
    client: Client,
    stats: Arc<Stats>,
    /// Vector size, fixed by `--dimensions` or by the first response, then enforced on every later one.
    dimensions: AtomicUsize,
    /// Set when the server refused `encoding_format: base64`; the rest of the run asks for floats.
    use_float: AtomicBool,
    /// Paces every attempt (see [`Limiter`]).
    limiter: Limiter,
}

/// One attempt's failure, before the retry decision.
enum Attempt {
    Retry { reason: String, hint: Option<Duration>, cause: RetryCause },
    Fatal(EmbedError),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum RetryCause {
    /// A 429 that is not about quota.
    RateLimited,
    /// A 200 whose body failed the checks.
    InvalidResponse,
    /// Anything else worth another attempt: 5xx, timeouts, dropped connections.
    Transient(Transient),
}

/// Error codes and message fragments of a 400 that blames the request's inputs (tars-api.md §8: context length,
/// tokens per request, invalid input); such a batch is split, not abandoned.
const INPUT_ERROR_CODES: &[&str] = &["context_length_exceeded", "max_tokens_per_request", "string_above_max_length"];
const INPUT_ERROR_TEXT: &[&str] = &[
    "maximum context length",
    "tokens per request",
    "too many tokens",
    "too long",
    "reduce your prompt",
    "'$.input' is invalid",
];

fn blames_inputs(status: StatusCode, error: &ApiError) -> bool {
    if status == StatusCode::PAYLOAD_TOO_LARGE {
        return true;
    }
    if status != StatusCode::BAD_REQUEST && status != StatusCode::UNPROCESSABLE_ENTITY {
        return false;
    }
    let coded =
        [error.kind.as_deref(), error.code.as_deref()].into_iter().flatten().any(|c| INPUT_ERROR_CODES.contains(&c));
    let message = error.message.to_ascii_lowercase();
    coded || INPUT_ERROR_TEXT.iter().any(|t| message.contains(t))
}

impl OpenAiEmbedder {
    pub fn new(config: ApiConfig, stats: Arc<Stats>) -> Result<Self, EndpointError> {
        let client = config
            .endpoint
            .client(config.connect_timeout)?
            .timeout(config.request_timeout)
            .build()
            .map_err(EndpointError::Client)?;
        let dimensions = AtomicUsize::new(config.dimensions.map_or(0, |d| d as usize));
        let limiter = Limiter::new(config.limits, config.max_concurrency);
        Ok(Self { config, client, stats, dimensions, use_float: AtomicBool::new(false), limiter })
    }

    pub fn config(&self) -> &ApiConfig {
        &self.config
    }

    /// `GET /models`.
    pub async fn list_models(&self) -> Result<Vec<ModelInfo>, EmbedError> {
        let fail = |message: String| EmbedError::Request { message: format!("GET /models: {message}") };
        let response = self
            .client
            .get(self.config.endpoint.url("/models"))
            .timeout(Duration::from_secs(30))
            .send()
            .await
            .map_err(|e| fail(self.config.endpoint.redact(&transport_message(&e))))?;
        let status = response.status();
        let request_id = request_id(response.headers());
        let body = response.bytes().await.map_err(|e| fail(self.config.endpoint.redact(&transport_message(&e))))?;
        if !status.is_success() {
            let error = parse_error(&body);
            return Err(EmbedError::Rejected {
                status: status.as_u16(),
                message: self.config.endpoint.redact(&error.message),
                request_id,
                advice: advice_for(status, &error, &self.config.model, None),
            });
        }
        serde_json::from_slice::<ModelList>(&body)
            .map(|list| list.data)
            .map_err(|e| fail(format!("unexpected body: {e}")))
    }

    async fn attempt(&self, inputs: &[&str]) -> Result<Embeddings, Attempt> {
        let use_float = self.use_float.load(Ordering::Relaxed);
        let request = EmbeddingRequest {
            model: wire_model(&self.config.model),
            input: inputs,
            encoding_format: if use_float { "float" } else { "base64" },
            dimensions: self.config.dimensions,
        };
        let body = Bytes::from(
            serde_json::to_vec(&request)
                .map_err(|e| Attempt::Fatal(EmbedError::Request { message: format!("encoding the request: {e}") }))?,
        );
        Stats::add(&self.stats.requests, 1);
        self.stats.requests_in_flight.fetch_add(1, Ordering::Relaxed);
        let result = self.send(body).await;
        self.stats.requests_in_flight.fetch_sub(1, Ordering::Relaxed);
        let (status, headers, body) = result?;
        self.limiter.learn(&headers);
        if status.is_success() {
            return self.decode(&body, inputs.len());
        }
        let error = parse_error(&body);
        let message = self.config.endpoint.redact(&error.message);
        if status == StatusCode::BAD_REQUEST && !use_float && message.contains("encoding_format") {
            // The server does not do base64: ask for floats from now on.
            self.use_float.store(true, Ordering::Relaxed);
            return Err(Attempt::Retry {
                reason: format!("HTTP 400: {message}"),
                hint: Some(Duration::ZERO),
                cause: RetryCause::Transient(Transient::Status(400)),
            });
        }
        if blames_inputs(status, &error) {
            return Err(Attempt::Fatal(EmbedError::InputRejected {
                status: status.as_u16(),
                message,
                request_id: request_id(&headers),
            }));
        }
        match classify(status, error.kind.as_deref(), error.code.as_deref(), &headers) {
            Disposition::Retry => Err(Attempt::Retry {
                hint: server_hint(&headers, &message),
                reason: format!("HTTP {}: {message}", status.as_u16()),
                cause: if status == StatusCode::TOO_MANY_REQUESTS {
                    RetryCause::RateLimited
                } else {
                    RetryCause::Transient(Transient::Status(status.as_u16()))
                },
            }),
            Disposition::Quota => Err(Attempt::Fatal(EmbedError::Quota { status: status.as_u16(), message })),
            Disposition::Reject => {
                let suggestions = if is_unknown_model(status, &error) { self.close_models().await } else { None };
                Err(Attempt::Fatal(EmbedError::Rejected {
                    status: status.as_u16(),
                    advice: advice_for(status, &error, &self.config.model, suggestions),
                    message,
                    request_id: request_id(&headers),
                }))
            }
        }
    }

    async fn send(&self, body: Bytes) -> Result<(StatusCode, HeaderMap, Bytes), Attempt> {
        let transient = |e: reqwest::Error| Attempt::Retry {
            reason: self.config.endpoint.redact(&transport_message(&e)),
            hint: None,
            cause: RetryCause::Transient(Transient::Transport),
        };
        let response = self
            .client
            .post(self.config.endpoint.url("/embeddings"))
            .header(CONTENT_TYPE, "application/json")
            .body(body)
            .send()
            .await
            .map_err(transient)?;
        let status = response.status();
        let headers = response.headers().clone();
        let body = response.bytes().await.map_err(transient)?;
        Ok((status, headers, body))
    }

    fn decode(&self, body: &[u8], inputs: usize) -> Result<Embeddings, Attempt> {
        // A malformed body is most often a proxy's truncated or substituted response: worth another attempt.
        let malformed = |reason: String| Attempt::Retry {
            reason: format!("invalid response: {reason}"),
            hint: None,
            cause: RetryCause::InvalidResponse,
        };
        let response: EmbeddingResponse = serde_json::from_slice(body).map_err(|e| malformed(e.to_string()))?;
        let usage = response.usage.as_ref().and_then(|u| u.prompt_tokens.or(u.total_tokens));
        if let Some(requested) = self.config.dimensions {
            let mut embeddings = validate(response, inputs, None).map_err(malformed)?;
            if embeddings.dimensions != requested as usize {
                // Gateways that drop parameters they do not know (LiteLLM's `drop_params`) and servers that ignore
                // them answer 200 with the model's own size. Every retry and split would get the same answer.
                return Err(Attempt::Fatal(ignored_dimensions(requested, embeddings.dimensions)));
            }
            embeddings.usage_tokens = usage;
            return Ok(embeddings);
        }
        let expected = match self.dimensions.load(Ordering::Relaxed) {
            0 => None,
            d => Some(d),
        };
        let mut embeddings = validate(response, inputs, expected).map_err(malformed)?;
        if expected.is_none() {
            // First response fixes the size; a concurrent first response of another size loses the race and is
            // rejected as malformed.
            if let Err(set) =
                self.dimensions.compare_exchange(0, embeddings.dimensions, Ordering::Relaxed, Ordering::Relaxed)
                && set != embeddings.dimensions
            {
                return Err(malformed(format!(
                    "{} dimensions, but earlier responses had {set}",
                    embeddings.dimensions
                )));
            }
        }
        embeddings.usage_tokens = usage;
        Ok(embeddings)
    }

    /// Model ids that resemble the configured one, for a "model not found" message.
    async fn close_models(&self) -> Option<String> {
        let models = self.list_models().await.ok()?;
        let wanted = wire_model(&self.config.model).to_ascii_lowercase();
        let mut close: Vec<String> = models
            .into_iter()
            .map(|m| m.id)
            .filter(|id| {
                let id = id.to_ascii_lowercase();
                id.contains("embed") || id.contains(&wanted) || wanted.contains(&id)
            })
            .collect();
        close.sort();
        close.truncate(10);
        (!close.is_empty()).then(|| close.join(", "))
    }
}

impl Embedder for OpenAiEmbedder {
    async fn embed(&self, inputs: &[&str]) -> Result<Embeddings, EmbedError> {
        let policy = self.config.retry;
        // cl100k tokens, counted only once a token budget is known (counting costs about as much as sending).
        let mut tokens = None;
        let (mut retry, mut rate_limit_retries) = (0, 0);
        loop {
            if tokens.is_none() && self.limiter.counts_tokens() {
                tokens = Some(inputs.iter().map(|t| count_tokens(t) as u64).sum());
            }
            let permit = self.limiter.acquire(tokens.unwrap_or(0)).await;
            let result = self.attempt(inputs).await;
            drop(permit);
            match result {
                Ok(embeddings) => {
                    self.limiter.success();
                    return Ok(embeddings);
                }
                Err(Attempt::Fatal(error)) => return Err(error),
                Err(Attempt::Retry { reason, hint, cause }) => {
                    let attempts = retry + rate_limit_retries + 1;
                    let step = if cause == RetryCause::RateLimited {
                        Stats::add(&self.stats.rate_limited, 1);
                        // Pauses every request, this one's retry included, and narrows the window.
                        self.limiter.rate_limited(hint);
                        self.limiter.learn_from_message(&reason);
                        if rate_limit_retries >= policy.max_rate_limit_retries {
                            return Err(EmbedError::Exhausted {
                                attempts,
                                last: reason,
                                cause: Transient::RateLimited,
                            });
                        }
                        rate_limit_retries += 1;
                        rate_limit_retries - 1
                    } else {
                        if retry >= policy.max_retries {
                            return Err(match cause {
                                RetryCause::Transient(cause) => EmbedError::Exhausted { attempts, last: reason, cause },
                                _ => EmbedError::InvalidResponse { attempts, last: reason },
                            });
                        }
                        retry += 1;
                        retry - 1
                    };
                    let delay = policy.delay(step, hint);
                    tracing::info!(
                        "retrying a request of {} in {:.1}s: attempt {attempts} failed: {reason}",
                        count(inputs.len() as u64, "input"),
                        delay.as_secs_f64()
                    );
                    Stats::add(&self.stats.retries, 1);
                    tokio::time::sleep(delay).await;
                }
            }
        }
    }

    fn model(&self) -> &str {
        &self.config.model
    }
}

fn ignored_dimensions(requested: u32, got: usize) -> EmbedError {
    EmbedError::Misconfigured {
        message: format!(
            "the endpoint ignores `dimensions`: asked for {requested}-dimension vectors, it answered with {got}"
        ),
        advice: "drop --dimensions (model.dimensions) to store the model's own size, or use an endpoint that \
                 supports it (a LiteLLM proxy with drop_params: true drops it silently)"
            .to_owned(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn response(json: &str) -> EmbeddingResponse {
        serde_json::from_str(json).expect("valid response JSON")
    }

    #[test]
    fn base64_vectors_from_the_contract() {
        assert_eq!(decode_base64_f32("AACAPwAAAMAAAAA/"), Ok(vec![1.0, -2.0, 0.5]));
        assert_eq!(decode_base64_f32("AACAPgAAAL4="), Ok(vec![0.25, -0.125]));
        assert_eq!(decode_base64_f32("AAAAAA=="), Ok(vec![0.0]));
        assert_eq!(decode_base64_f32("Vj+QPMFSO70QSfQ8"), Ok(vec![0.017608326, -0.045733217, 0.029819995]));
        assert!(decode_base64_f32("AAA=").is_err());
        assert!(decode_base64_f32("not base64!").is_err());
    }

    #[test]
    fn validation_orders_by_index_and_rejects_bad_responses() {
        let ok = response(
            r#"{"object":"list","model":"m","usage":{"prompt_tokens":3,"total_tokens":3},"data":[
                {"object":"embedding","index":1,"embedding":"AACAPgAAAL4="},
                {"object":"embedding","index":0,"embedding":[1.0,2.0],"truncated":false}]}"#,
        );
        let e = validate(ok, 2, None).expect("valid");
        assert_eq!(e.dimensions, 2);
        assert_eq!(e.vectors, [1.0, 2.0, 0.25, -0.125]);

        let cases = [
            (r#"{"data":[{"index":0,"embedding":[1.0]}]}"#, 2, None, "1 embeddings returned for 2 inputs"),
            (
                r#"{"data":[{"index":0,"embedding":[1.0]},{"index":0,"embedding":[1.0]}]}"#,
                2,
                None,
                "index 0 returned twice",
            ),
            (
                r#"{"data":[{"index":0,"embedding":[1.0]},{"index":5,"embedding":[1.0]}]}"#,
                2,
                None,
                "index 5 out of range",
            ),
            (
                r#"{"data":[{"index":0,"embedding":[1.0]},{"index":1,"embedding":[1.0,2.0]}]}"#,
                2,
                None,
                "embedding 1 has 2 dimensions, expected 1",
            ),
            (r#"{"data":[{"index":0,"embedding":[1.0,2.0]}]}"#, 1, Some(3), "expected 3"),
            (r#"{"data":[{"index":0,"embedding":"AADAfw=="}]}"#, 1, None, "non-finite"),
            (r#"{"data":[{"index":0,"embedding":[1e39]}]}"#, 1, None, "non-finite"),
            (r#"{"data":[{"index":0,"embedding":[]}]}"#, 1, None, "0 dimensions"),
        ];
        for (json, inputs, dims, want) in cases {
            let err = validate(response(json), inputs, dims).expect_err(json);
            assert!(err.contains(want), "{json}: {err:?} does not mention {want:?}");
        }
    }

    #[test]
    fn a_fallback_keeps_the_settings_and_the_key_never_shows() {
        let mut c = ApiConfig::new("http://h", "sk-very-secret-key", "m", Some(256)).expect("config");
        c.max_concurrency = 3;
        assert!(!format!("{c:?}").contains("sk-very-secret-key"));
        let f = c.for_fallback("http://other/v1/", "m2").expect("fallback");
        assert_eq!(
            (f.endpoint.base.as_str(), f.model.as_str(), f.dimensions, f.max_concurrency),
            ("http://other/v1", "m2", Some(256), 3)
        );
        assert_eq!(f.endpoint.redact("key sk-very-secret-key"), "key [redacted]");
        assert!(ApiConfig::new("ftp://h", "k", "m", None).is_err());
    }
}
