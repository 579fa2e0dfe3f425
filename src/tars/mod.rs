//! The TARS gateway as every request kind sees it: where it is, the key, the HTTP client, error bodies, and when
//! to retry. Embeddings (`embed::OpenAiEmbedder`) and chat ([`chat`]) are built on this, so neither copies the
//! other's handling of keys, redaction or errors (wire contracts: ../shared/docs/tars-api.md, tars-chat.md).

pub mod chat;
pub mod limiter;
pub mod price;
pub mod retry;
pub mod vision;

use std::fmt;
use std::time::Duration;

use reqwest::header::{ACCEPT, AUTHORIZATION, HeaderMap, HeaderValue};
use reqwest::{Client, ClientBuilder, StatusCode};
use serde::Deserialize;

pub const DEFAULT_API_BASE: &str = "https://api.router.tetrate.ai/v1";

/// Error bodies are quoted in messages up to this many bytes.
const MAX_QUOTED_BODY: usize = 2048;

/// The endpoint paths a base URL may already end with (LiteLLM leaves such a base as it is; so do we).
const ENDPOINT_PATHS: &[&str] = &["/embeddings", "/chat/completions"];

/// The model name sent on the wire: one leading `tars/` removed (LiteLLM's naming).
pub fn wire_model(model: &str) -> &str {
    model.strip_prefix("tars/").unwrap_or(model)
}

/// A model's id without its `tars/` prefix or any provider path (`openai/gpt-5-mini` is `gpt-5-mini`), lowercased:
/// what model families, prices and image costs are judged by.
pub fn model_id(model: &str) -> String {
    wire_model(model).rsplit('/').next().unwrap_or_default().to_ascii_lowercase()
}

/// The API key; never printed.
#[derive(Clone)]
struct ApiKey(String);

impl fmt::Debug for ApiKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("ApiKey([redacted])")
    }
}

/// A base URL and the key it takes.
#[derive(Debug, Clone)]
pub struct Endpoint {
    /// Without a trailing slash.
    pub base: String,
    key: ApiKey,
}

#[derive(Debug, thiserror::Error)]
pub enum EndpointError {
    #[error("TARS_API_KEY is not set: export your TARS API key as TARS_API_KEY")]
    MissingKey,
    #[error("TARS_API_KEY contains characters that cannot be sent in an HTTP header (a stray newline?)")]
    InvalidKey,
    #[error("TARS_API_BASE {0:?} is not an http(s) URL")]
    BadBase(String),
    #[error("could not build the HTTP client")]
    Client(#[source] reqwest::Error),
}

impl Endpoint {
    /// Base URL from `TARS_API_BASE` (default [`DEFAULT_API_BASE`]), key from `TARS_API_KEY`.
    pub fn from_env() -> Result<Self, EndpointError> {
        let base = std::env::var("TARS_API_BASE").ok().filter(|b| !b.trim().is_empty());
        let key =
            std::env::var("TARS_API_KEY").ok().filter(|k| !k.trim().is_empty()).ok_or(EndpointError::MissingKey)?;
        Self::new(base.as_deref().unwrap_or(DEFAULT_API_BASE), &key)
    }

    pub fn new(base: &str, key: &str) -> Result<Self, EndpointError> {
        let base = base.trim().trim_end_matches('/').to_owned();
        if !(base.starts_with("http://") || base.starts_with("https://")) {
            return Err(EndpointError::BadBase(base));
        }
        Ok(Self { base, key: ApiKey(key.trim().to_owned()) })
    }

    /// Another base with this key, or with `key` when given.
    pub fn with_base(&self, base: &str, key: Option<&str>) -> Result<Self, EndpointError> {
        Self::new(base, key.unwrap_or(&self.key.0))
    }

    /// The URL of `path` (`/embeddings`, `/models`): a base that already names an endpoint is used as is for that
    /// endpoint, and stands for its API root for the others.
    pub fn url(&self, path: &str) -> String {
        if self.base.ends_with(path) {
            return self.base.clone();
        }
        let root = ENDPOINT_PATHS.iter().find_map(|p| self.base.strip_suffix(p)).unwrap_or(&self.base);
        format!("{root}{path}")
    }

    /// Replaces the key wherever a server echoes it back.
    pub fn redact(&self, text: &str) -> String {
        if self.key.0.len() >= 4 { text.replace(&self.key.0, "[redacted]") } else { text.to_owned() }
    }

    /// A pooled client that sends the key (marked sensitive, so it is never logged) with every request; finish it
    /// with the request kind's own timeouts.
    pub fn client(&self, connect_timeout: Duration) -> Result<ClientBuilder, EndpointError> {
        let mut headers = HeaderMap::new();
        let mut auth =
            HeaderValue::from_str(&format!("Bearer {}", self.key.0)).map_err(|_| EndpointError::InvalidKey)?;
        auth.set_sensitive(true);
        headers.insert(AUTHORIZATION, auth);
        headers.insert(ACCEPT, HeaderValue::from_static("application/json"));
        Ok(Client::builder()
            .default_headers(headers)
            .user_agent(concat!("tars-index/", env!("CARGO_PKG_VERSION")))
            .connect_timeout(connect_timeout)
            .pool_idle_timeout(Duration::from_secs(60)))
    }
}

#[derive(Deserialize)]
struct ErrorEnvelope {
    error: ErrorField,
}

/// `{"error": {...}}` or, from some gateways, `{"error": "text"}`.
#[derive(Deserialize)]
#[serde(untagged)]
enum ErrorField {
    Object(ErrorBody),
    Text(String),
}

#[derive(Deserialize)]
struct ErrorBody {
    #[serde(default)]
    message: Option<String>,
    #[serde(default, rename = "type")]
    kind: Option<serde_json::Value>,
    /// A string in OpenAI's bodies, a number in some gateways'.
    #[serde(default)]
    code: Option<serde_json::Value>,
    #[serde(default)]
    param: Option<serde_json::Value>,
}

/// The parts of an error response (or of an error frame in a stream) that decide what happens next.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ApiError {
    pub message: String,
    pub kind: Option<String>,
    pub code: Option<String>,
    /// The request field it is about (`max_tokens`, `temperature`), when the server says.
    pub param: Option<String>,
}

/// A string or number field of an error body; `null` and LiteLLM's string `"None"` are absent.
fn error_field(value: Option<serde_json::Value>) -> Option<String> {
    match value? {
        serde_json::Value::String(s) if s != "None" && !s.is_empty() => Some(s),
        serde_json::Value::Number(n) => Some(n.to_string()),
        _ => None,
    }
}

/// Decodes `{"error":{...}}`, Envoy's `{"type":"error","error":{...}}`, `{"error":"text"}`, or quotes the raw body
/// (Envoy's 422 can be invalid JSON; a proxy's 502 is HTML).
pub fn parse_error(body: &[u8]) -> ApiError {
    let quoted = || {
        let text = String::from_utf8_lossy(body);
        let text = text.trim();
        if text.is_empty() { "(empty body)".to_owned() } else { truncate(text, MAX_QUOTED_BODY) }
    };
    match serde_json::from_slice::<ErrorEnvelope>(body) {
        Ok(ErrorEnvelope { error: ErrorField::Object(e) }) => ApiError {
            message: e.message.map(|m| truncate(&m, MAX_QUOTED_BODY)).unwrap_or_else(quoted),
            kind: error_field(e.kind),
            code: error_field(e.code),
            param: error_field(e.param),
        },
        Ok(ErrorEnvelope { error: ErrorField::Text(t) }) => {
            ApiError { message: truncate(&t, MAX_QUOTED_BODY), kind: None, code: None, param: None }
        }
        Err(_) => ApiError { message: quoted(), kind: None, code: None, param: None },
    }
}

pub(crate) fn truncate(text: &str, max: usize) -> String {
    if text.len() <= max {
        return text.to_owned();
    }
    let mut end = max;
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    format!("{}…", &text[..end])
}

pub fn request_id(headers: &HeaderMap) -> Option<String> {
    headers.get("x-request-id").and_then(|v| v.to_str().ok()).map(str::to_owned)
}

/// Error codes and message fragments that say the model is unknown, whatever the status: OpenAI answers 404
/// `model_not_found`, LiteLLM 400 "Invalid model name passed in model=…", others "model … does not exist".
pub fn is_unknown_model(status: StatusCode, error: &ApiError) -> bool {
    let coded = [error.kind.as_deref(), error.code.as_deref()].into_iter().flatten().any(|c| c == "model_not_found");
    let message = error.message.to_ascii_lowercase();
    let said = message.contains("invalid model")
        || (message.contains("model") && (message.contains("does not exist") || message.contains("not found")));
    status == StatusCode::NOT_FOUND || coded || (status.is_client_error() && said)
}

/// Error types that say the key was not accepted, under whatever status a gateway sends them (LiteLLM answers a
/// missing key with 401 `auth_error`, a wrong one, without its database, with 400 `no_db_connection`).
const AUTH_ERROR_CODES: &[&str] =
    &["auth_error", "authentication_error", "invalid_api_key", "invalid_authentication", "no_db_connection"];

pub fn is_auth_error(status: StatusCode, error: &ApiError) -> bool {
    status == StatusCode::UNAUTHORIZED
        || [error.kind.as_deref(), error.code.as_deref()].into_iter().flatten().any(|c| AUTH_ERROR_CODES.contains(&c))
}

/// What to do about a refused request, when we know: the key, the model name, the key's permissions.
pub fn advice_for(status: StatusCode, error: &ApiError, model: &str, suggestions: Option<String>) -> Option<String> {
    if is_auth_error(status, error) {
        return Some("check TARS_API_KEY: the key was not accepted".to_owned());
    }
    if is_unknown_model(status, error) {
        return Some(match suggestions {
            Some(list) => format!(
                "model {model:?} was not found; models offered that look related: {list} (`tars-index models` lists all)"
            ),
            None => {
                format!("model {model:?} was not found; run `tars-index models` to list the models the endpoint offers")
            }
        });
    }
    (status == StatusCode::FORBIDDEN)
        .then(|| "the key is not allowed to use this model or endpoint; check the key's permissions".to_owned())
}

/// A transport error with its cause chain (reqwest's top-level message alone says little).
pub fn transport_message(error: &reqwest::Error) -> String {
    let kind = if error.is_timeout() {
        "timed out"
    } else if error.is_connect() {
        "connection failed"
    } else {
        "request failed"
    };
    let mut message = kind.to_owned();
    let mut source = std::error::Error::source(error);
    while let Some(inner) = source {
        message.push_str(": ");
        message.push_str(&inner.to_string());
        source = inner.source();
    }
    message
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn error_bodies_of_every_known_shape() {
        let e = parse_error(br#"{"error":{"message":"You exceeded your current quota","type":"insufficient_quota","param":null,"code":"insufficient_quota"}}"#);
        assert_eq!(e.kind.as_deref(), Some("insufficient_quota"));
        assert_eq!(e.code.as_deref(), Some("insufficient_quota"));
        assert_eq!(e.param, None);
        let e = parse_error(
            br#"{"type":"error","error":{"type":"OpenAIBackendError","message":"upstream connect error","code":503}}"#,
        );
        assert_eq!((e.message.as_str(), e.code.as_deref()), ("upstream connect error", Some("503")));
        // LiteLLM writes absent fields as the string "None" (tars-chat.md §5.6).
        let e = parse_error(br#"{"error":{"message":"boom","type":"None","param":"None","code":"529"}}"#);
        assert_eq!((e.kind, e.param, e.code.as_deref()), (None, None, Some("529")));
        let e = parse_error(
            br#"{"error":{"code":"unsupported_parameter","message":"Unsupported parameter: 'max_tokens'","param":"max_tokens","type":"invalid_request_error"}}"#,
        );
        assert_eq!(e.param.as_deref(), Some("max_tokens"));
        let e = parse_error(br#"{"error":"plain string"}"#);
        assert_eq!(e.message, "plain string");
        // Envoy's 422 with an unescaped quote in its message is not JSON: quoted as it came.
        let raw = br#"{"type":"error","error":{"type":"UnprocessableEntity","code":"422","message":"bad "x""}}"#;
        assert_eq!(parse_error(raw).message, String::from_utf8_lossy(raw));
        assert_eq!(parse_error(b"no healthy upstream").message, "no healthy upstream");
        assert_eq!(parse_error(b"").message, "(empty body)");
        let long = "x".repeat(10_000);
        assert!(parse_error(long.as_bytes()).message.len() < 2100);
    }

    #[test]
    fn urls_for_every_endpoint() {
        let e = Endpoint::new("http://h/v1/", "k3y-secret").expect("endpoint");
        assert_eq!(e.url("/embeddings"), "http://h/v1/embeddings");
        assert_eq!(e.url("/chat/completions"), "http://h/v1/chat/completions");
        assert_eq!(e.url("/models"), "http://h/v1/models");
        let e = Endpoint::new("http://h/v1/embeddings", "k").expect("endpoint");
        assert_eq!(e.url("/embeddings"), "http://h/v1/embeddings");
        assert_eq!(e.url("/models"), "http://h/v1/models");
        let e = Endpoint::new("http://h/v1/chat/completions", "k").expect("endpoint");
        assert_eq!(e.url("/chat/completions"), "http://h/v1/chat/completions");
        assert_eq!(e.url("/models"), "http://h/v1/models");
        assert_eq!(wire_model("tars/gpt-4o-mini"), "gpt-4o-mini");
        assert_eq!(wire_model("gpt-4o-mini"), "gpt-4o-mini");
        assert_eq!(wire_model("tars/tars/x"), "tars/x");
        assert!(Endpoint::new("ftp://h", "k").is_err());
    }

    #[test]
    fn key_never_shows() {
        let e = Endpoint::new("http://h", "sk-very-secret-key").expect("endpoint");
        assert!(!format!("{e:?}").contains("sk-very-secret-key"));
        assert_eq!(
            e.redact("Incorrect API key provided: sk-very-secret-key."),
            "Incorrect API key provided: [redacted]."
        );
    }
}
