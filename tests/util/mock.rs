//! An OpenAI-compatible embeddings server on 127.0.0.1 for the tests: real HTTP, deterministic vectors, request
//! checks, counters, and scripted faults.

use std::collections::VecDeque;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::Router;
use axum::body::{Body, Bytes};
use axum::extract::State;
use axum::http::{HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use base64::Engine as _;
use serde_json::{Value, json};

pub const KEY: &str = "sk-test-4f9c2d7e1b8a6053";
pub const DEFAULT_DIMS: usize = 64;

/// A deterministic "embedding": words hashed into buckets with a sign, L2-normalised. Texts that share words
/// score high, so semantic-search tests have a real answer.
pub fn mock_embedding(text: &str, dims: usize) -> Vec<f32> {
    let mut v = vec![0f32; dims];
    for word in text.split(|c: char| !c.is_alphanumeric()).filter(|w| !w.is_empty()) {
        let h = blake3::hash(word.to_lowercase().as_bytes());
        let b = h.as_bytes();
        let bucket = u64::from_le_bytes(b[..8].try_into().expect("8 bytes")) as usize % dims;
        v[bucket] += if b[8] & 1 == 0 { 1.0 } else { -1.0 };
    }
    // Texts without words still get a vector: a fixed one from the raw bytes.
    if v.iter().all(|x| *x == 0.0) {
        let h = blake3::hash(text.as_bytes());
        v[h.as_bytes()[0] as usize % dims] = 1.0;
    }
    let norm = v.iter().map(|x| x * x).sum::<f32>().sqrt();
    v.iter_mut().for_each(|x| *x /= norm);
    v
}

/// A scripted response for the next request.
#[derive(Debug, Clone)]
pub enum Fault {
    /// 429 rate limit, with `retry-after-ms` when given.
    RateLimited { retry_after_ms: Option<u64> },
    /// 429 with a "Please try again in …" message and no header.
    RateLimitedMessage,
    /// 429 insufficient_quota.
    Quota,
    /// A JSON error with this status.
    Status(u16),
    /// 503 with a text/plain body (as Envoy sends).
    PlainText503,
    /// 200 with a body that is not JSON.
    Malformed,
    /// 200 with one embedding too few.
    WrongCount,
    /// 200 with a NaN in the first vector (base64 only).
    NaN,
    /// Wait this long before answering normally (to trip client timeouts).
    Hang(Duration),
    /// 200 whose body breaks off mid-stream: the connection drops under the client.
    Reset,
    /// 200 with the first vector one value short.
    ShortVector,
    /// 200 with index 0 twice and index 1 missing.
    DuplicateIndex,
    /// 401, as after a key is revoked mid-run.
    Unauthorized,
    /// Answer normally (to place faults later in a script).
    Ok,
    /// This status with this JSON body, as some gateway sends it (a retry hint of 5 ms included).
    Body(u16, &'static str),
}

/// What the mock does with every request holding an input that contains a marker, whatever the script says.
#[derive(Debug, Clone)]
pub enum Poison {
    /// 400 context-length error for the whole request, as OpenAI sends for an input over the limit.
    TooLong(String),
    /// The marked inputs' vectors hold a NaN.
    NaN(String),
}

#[derive(Debug, Default)]
pub struct Observed {
    /// Per request: (inputs, cl100k tokens) of requests that passed the checks.
    pub batches: Vec<(usize, usize)>,
    /// Every input text of those requests, in arrival order.
    pub texts: Vec<String>,
    pub models: Vec<String>,
    pub encodings: Vec<String>,
    pub dimensions: Vec<Option<u64>>,
    /// Problems the mock found in requests (the tests assert this stays empty).
    pub violations: Vec<String>,
}

#[derive(Default)]
pub struct MockState {
    pub requests: AtomicUsize,
    /// Requests answered with vectors.
    pub answered: AtomicUsize,
    pub in_flight: AtomicUsize,
    pub peak_in_flight: AtomicUsize,
    pub delay: Mutex<Duration>,
    pub faults: Mutex<VecDeque<Fault>>,
    /// Applied to every request once the script is empty.
    pub always: Mutex<Option<Fault>>,
    pub poison: Mutex<Option<Poison>>,
    /// A tokens-per-minute limit enforced over a sliding 60 s window, as a provider does.
    pub tpm: Mutex<Option<TpmWindow>>,
    /// 429s sent because of `tpm`.
    pub tpm_refused: AtomicUsize,
    /// Answer with the default size whatever `dimensions` asks, as servers and gateways that drop it do.
    pub ignore_dimensions: std::sync::atomic::AtomicBool,
    pub observed: Mutex<Observed>,
}

/// Tokens accepted in the last minute, or (quantised) a bucket of two seconds of the limit refilled continuously,
/// as OpenAI documents its limits being enforced over shorter periods than a minute.
#[derive(Debug)]
pub struct TpmWindow {
    pub limit: u64,
    /// Whether responses carry x-ratelimit-*-tokens headers.
    pub headers: bool,
    accepted: VecDeque<(std::time::Instant, u64)>,
    used: u64,
    /// The quantised bucket: tokens available and when last refilled.
    bucket: Option<(f64, std::time::Instant)>,
}

impl TpmWindow {
    const WINDOW: Duration = Duration::from_secs(60);

    fn expire(&mut self, now: std::time::Instant) {
        while let Some(&(at, tokens)) = self.accepted.front() {
            if now.duration_since(at) < Self::WINDOW {
                break;
            }
            self.accepted.pop_front();
            self.used -= tokens;
        }
    }

    /// Seconds of the limit the quantised bucket holds.
    const BUCKET_SECS: f64 = 2.0;

    fn per_sec(&self) -> f64 {
        self.limit as f64 / 60.0
    }

    /// Accepts `tokens` if the window has room; else the wait until it would.
    fn take(&mut self, tokens: u64) -> Result<(), Duration> {
        let now = std::time::Instant::now();
        if let Some((available, updated)) = self.bucket {
            let capacity = self.per_sec() * Self::BUCKET_SECS;
            let available = (available + now.duration_since(updated).as_secs_f64() * self.per_sec()).min(capacity);
            let wanted = tokens as f64;
            if available >= wanted {
                self.bucket = Some((available - wanted, now));
                self.used = (capacity - available + wanted) as u64;
                return Ok(());
            }
            self.bucket = Some((available, now));
            self.used = (capacity - available) as u64;
            return Err(Duration::from_secs_f64((wanted - available) / self.per_sec()));
        }
        self.expire(now);
        if self.used + tokens <= self.limit {
            self.accepted.push_back((now, tokens));
            self.used += tokens;
            return Ok(());
        }
        let mut freed = self.limit.saturating_sub(self.used);
        for &(at, t) in &self.accepted {
            freed += t;
            if freed >= tokens {
                return Err((at + Self::WINDOW).saturating_duration_since(now));
            }
        }
        Err(Self::WINDOW)
    }

    /// `x-ratelimit-*-tokens` headers as OpenAI sends them (reset as a Go duration).
    fn rate_headers(&mut self) -> Vec<(&'static str, String)> {
        if let Some((available, _)) = self.bucket {
            let capacity = self.per_sec() * Self::BUCKET_SECS;
            let reset = Duration::from_secs_f64((capacity - available).max(0.0) / self.per_sec());
            return vec![
                ("x-ratelimit-limit-tokens", self.limit.to_string()),
                ("x-ratelimit-remaining-tokens", (available as u64).to_string()),
                ("x-ratelimit-reset-tokens", format!("{}ms", reset.as_millis())),
            ];
        }
        self.expire(std::time::Instant::now());
        let reset = self.accepted.front().map_or(Duration::ZERO, |(at, _)| {
            (*at + Self::WINDOW).saturating_duration_since(std::time::Instant::now())
        });
        vec![
            ("x-ratelimit-limit-tokens", self.limit.to_string()),
            ("x-ratelimit-remaining-tokens", self.limit.saturating_sub(self.used).to_string()),
            ("x-ratelimit-reset-tokens", format!("{}ms", reset.as_millis())),
        ]
    }
}

pub struct MockServer {
    pub addr: SocketAddr,
    pub state: Arc<MockState>,
    /// The chat endpoint's script and what it saw.
    pub chat: Arc<super::chat::ChatState>,
    _runtime: tokio::runtime::Runtime,
}

impl MockServer {
    pub fn start() -> Self {
        let runtime =
            tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().expect("mock runtime");
        let state = Arc::new(MockState::default());
        let chat = Arc::new(super::chat::ChatState::default());
        let chat_state = Arc::clone(&chat);
        let app = Router::new()
            .route("/v1/embeddings", post(embeddings))
            .route("/v1/models", get(models))
            .with_state(Arc::clone(&state))
            .route(
                "/v1/chat/completions",
                post(move |headers: HeaderMap, body: Bytes| {
                    super::chat::completions(Arc::clone(&chat_state), headers, body)
                }),
            );
        let listener = runtime.block_on(tokio::net::TcpListener::bind("127.0.0.1:0")).expect("bind 127.0.0.1");
        let addr = listener.local_addr().expect("local addr");
        runtime.spawn(async move {
            let _ = axum::serve(listener, app).await;
        });
        Self { addr, state, chat, _runtime: runtime }
    }

    pub fn base(&self) -> String {
        format!("http://{}/v1", self.addr)
    }

    pub fn script(&self, faults: impl IntoIterator<Item = Fault>) {
        self.state.faults.lock().expect("lock").extend(faults);
    }

    pub fn set_delay(&self, delay: Duration) {
        *self.state.delay.lock().expect("lock") = delay;
    }

    /// Enforces `limit` tokens per minute from now on, with or without rate-limit headers.
    #[allow(dead_code)] // benches/throughput.rs
    pub fn set_tpm(&self, limit: u64, headers: bool) {
        *self.state.tpm.lock().expect("lock") =
            Some(TpmWindow { limit, headers, accepted: VecDeque::new(), used: 0, bucket: None });
    }

    /// Enforces `limit` tokens per minute as a bucket of two seconds of it, refilled continuously: a burst of more
    /// than two seconds' worth is refused even when the minute has room.
    #[allow(dead_code)] // benches/throughput.rs
    pub fn set_tpm_quantised(&self, limit: u64, headers: bool) {
        let full = limit as f64 / 60.0 * TpmWindow::BUCKET_SECS;
        let bucket = Some((full, std::time::Instant::now()));
        *self.state.tpm.lock().expect("lock") =
            Some(TpmWindow { limit, headers, accepted: VecDeque::new(), used: 0, bucket });
    }

    #[allow(dead_code)] // benches/throughput.rs
    pub fn tpm_refused(&self) -> usize {
        self.state.tpm_refused.load(Ordering::SeqCst)
    }

    pub fn set_poison(&self, poison: Option<Poison>) {
        *self.state.poison.lock().expect("lock") = poison;
    }

    pub fn set_always(&self, fault: Option<Fault>) {
        *self.state.always.lock().expect("lock") = fault;
    }

    pub fn requests(&self) -> usize {
        self.state.requests.load(Ordering::SeqCst)
    }

    pub fn answered(&self) -> usize {
        self.state.answered.load(Ordering::SeqCst)
    }

    /// Input texts received so far.
    pub fn texts(&self) -> Vec<String> {
        self.observed().texts.clone()
    }

    pub fn peak_in_flight(&self) -> usize {
        self.state.peak_in_flight.load(Ordering::SeqCst)
    }

    pub fn observed(&self) -> std::sync::MutexGuard<'_, Observed> {
        self.state.observed.lock().expect("lock")
    }
}

fn error(status: StatusCode, message: &str, kind: &str, code: Option<&str>) -> Response {
    (status, axum::Json(json!({"error": {"message": message, "type": kind, "param": null, "code": code}})))
        .into_response()
}

struct InFlight<'a>(&'a MockState);

impl Drop for InFlight<'_> {
    fn drop(&mut self) {
        self.0.in_flight.fetch_sub(1, Ordering::SeqCst);
    }
}

async fn models(State(state): State<Arc<MockState>>, headers: HeaderMap) -> Response {
    if !authorized(&headers) {
        return error(
            StatusCode::UNAUTHORIZED,
            "Incorrect API key provided",
            "invalid_request_error",
            Some("invalid_api_key"),
        );
    }
    let _ = state;
    axum::Json(json!({"object": "list", "data": [
        {"id": "text-embedding-3-small", "object": "model", "created": 1705953180, "owned_by": "system"},
        {"id": "text-embedding-3-large", "object": "model", "created": 1705953180, "owned_by": "system", "input_price": "0.00000013"},
        {"id": "gpt-4o-mini", "object": "model", "created": 1705953180, "owned_by": "system"},
    ]}))
    .into_response()
}

fn authorized(headers: &HeaderMap) -> bool {
    headers.get("authorization").and_then(|v| v.to_str().ok()) == Some(&format!("Bearer {KEY}"))
}

async fn embeddings(State(state): State<Arc<MockState>>, headers: HeaderMap, body: Bytes) -> Response {
    let arrival = tokio::time::Instant::now();
    state.requests.fetch_add(1, Ordering::SeqCst);
    let now = state.in_flight.fetch_add(1, Ordering::SeqCst) + 1;
    state.peak_in_flight.fetch_max(now, Ordering::SeqCst);
    let _guard = InFlight(&state);

    if !authorized(&headers) {
        return error(
            StatusCode::UNAUTHORIZED,
            "Incorrect API key provided",
            "invalid_request_error",
            Some("invalid_api_key"),
        );
    }
    let request: Value = match serde_json::from_slice(&body) {
        Ok(v) => v,
        Err(_) => return error(StatusCode::BAD_REQUEST, "invalid JSON body", "invalid_request_error", None),
    };
    let model = request["model"].as_str().unwrap_or_default().to_owned();
    let encoding = request["encoding_format"].as_str().unwrap_or("float").to_owned();
    let dims_asked = request["dimensions"].as_u64();
    let inputs: Vec<String> = match request["input"].as_array() {
        Some(items) if items.iter().all(Value::is_string) => {
            items.iter().filter_map(|v| v.as_str().map(str::to_owned)).collect()
        }
        _ => return error(StatusCode::BAD_REQUEST, "'$.input' is invalid", "invalid_request_error", None),
    };
    let tokens: Vec<usize> =
        inputs.iter().map(|t| tiktoken_rs::cl100k_base_singleton().encode_ordinary(t).len()).collect();
    {
        let mut observed = state.observed.lock().expect("lock");
        if model.starts_with("tars/") {
            observed.violations.push(format!("model sent with its tars/ prefix: {model}"));
        }
        if inputs.is_empty() || inputs.len() > 2048 {
            observed.violations.push(format!("{} inputs", inputs.len()));
        }
        if inputs.iter().any(|t| t.is_empty()) {
            observed.violations.push("an empty input".to_owned());
        }
        if tokens.iter().any(|t| *t > 8191) || tokens.iter().sum::<usize>() > 300_000 {
            observed.violations.push("token limits exceeded".to_owned());
        }
        if headers.get("content-type").and_then(|v| v.to_str().ok()) != Some("application/json") {
            observed.violations.push("content-type is not application/json".to_owned());
        }
        observed.batches.push((inputs.len(), tokens.iter().sum()));
        observed.texts.extend(inputs.iter().cloned());
        observed.models.push(model.clone());
        observed.encodings.push(encoding.clone());
        observed.dimensions.push(dims_asked);
    }
    if model == "no-such-model" {
        return error(
            StatusCode::NOT_FOUND,
            "The model `no-such-model` does not exist or you do not have access to it.",
            "invalid_request_error",
            Some("model_not_found"),
        );
    }

    let poison = state.poison.lock().expect("lock").clone();
    if let Some(Poison::TooLong(marker)) = &poison
        && inputs.iter().any(|t| t.contains(marker.as_str()))
    {
        return error(
            StatusCode::BAD_REQUEST,
            "This model's maximum context length is 8192 tokens, however you requested 8610 tokens (8610 in your prompt; 0 for the completion). Please reduce your prompt; or completion length.",
            "invalid_request_error",
            None,
        );
    }
    let mut rate_headers = Vec::new();
    if let Some(window) = state.tpm.lock().expect("lock").as_mut() {
        let requested: u64 = tokens.iter().map(|t| *t as u64).sum();
        let verdict = window.take(requested);
        if window.headers {
            rate_headers = window.rate_headers();
        }
        if let Err(wait) = verdict {
            state.tpm_refused.fetch_add(1, Ordering::SeqCst);
            let message = format!(
                "Rate limit reached for text-embedding-3-small on tokens per min (TPM): Limit {}, Used {}, Requested {requested}. Please try again in {}ms.",
                window.limit,
                window.used,
                wait.as_millis()
            );
            let mut response = error(StatusCode::TOO_MANY_REQUESTS, &message, "tokens", Some("rate_limit_exceeded"));
            for (name, value) in rate_headers {
                response.headers_mut().insert(name, HeaderValue::from_str(&value).expect("header value"));
            }
            return response;
        }
    }
    let fault = state.faults.lock().expect("lock").pop_front().or_else(|| state.always.lock().expect("lock").clone());
    // The response leaves `delay` after the request arrived, its own work included, as from a server with that
    // latency.
    let deadline = arrival + *state.delay.lock().expect("lock");
    let dims = match dims_asked {
        Some(d) if !state.ignore_dimensions.load(Ordering::SeqCst) => d as usize,
        _ => DEFAULT_DIMS,
    };
    let mut vectors: Vec<Vec<f32>> = inputs.iter().map(|t| mock_embedding(t, dims)).collect();
    if let Some(Poison::NaN(marker)) = &poison {
        for (text, vector) in inputs.iter().zip(&mut vectors) {
            if text.contains(marker.as_str()) {
                vector[0] = f32::NAN;
            }
        }
    }
    let mut duplicate_index = false;
    match fault {
        None | Some(Fault::Ok) => {}
        Some(Fault::Reset) => {
            let parts: Vec<Result<Bytes, std::io::Error>> = vec![
                Ok(Bytes::from_static(b"{\"object\": \"list\", \"data\": [")),
                Err(std::io::Error::new(std::io::ErrorKind::ConnectionReset, "connection reset")),
            ];
            return (
                StatusCode::OK,
                [("content-type", "application/json")],
                Body::from_stream(futures::stream::iter(parts)),
            )
                .into_response();
        }
        Some(Fault::ShortVector) => {
            vectors[0].pop();
        }
        Some(Fault::DuplicateIndex) => duplicate_index = inputs.len() > 1,
        Some(Fault::Unauthorized) => {
            return error(
                StatusCode::UNAUTHORIZED,
                "Incorrect API key provided",
                "invalid_request_error",
                Some("invalid_api_key"),
            );
        }
        Some(Fault::RateLimited { retry_after_ms }) => {
            let mut response = error(
                StatusCode::TOO_MANY_REQUESTS,
                "Rate limit reached for text-embedding-3-small on tokens per min (TPM): Limit 1000000, Used 999000, Requested 7000.",
                "tokens",
                Some("rate_limit_exceeded"),
            );
            if let Some(ms) = retry_after_ms {
                response.headers_mut().insert("retry-after-ms", HeaderValue::from(ms));
            }
            return response;
        }
        Some(Fault::RateLimitedMessage) => {
            return error(
                StatusCode::TOO_MANY_REQUESTS,
                "Rate limit reached for text-embedding-3-small on requests per min (RPM): Limit 3000, Used 3000, Requested 1. Please try again in 20ms. Visit https://platform.openai.com/account/rate-limits to learn more.",
                "requests",
                Some("rate_limit_exceeded"),
            );
        }
        Some(Fault::Quota) => {
            return error(
                StatusCode::TOO_MANY_REQUESTS,
                "You exceeded your current quota, please check your plan and billing details.",
                "insufficient_quota",
                Some("insufficient_quota"),
            );
        }
        Some(Fault::Status(code)) => {
            let status = StatusCode::from_u16(code).expect("status");
            let mut response =
                error(status, "The server had an error while processing your request", "server_error", None);
            response.headers_mut().insert("retry-after-ms", HeaderValue::from(5));
            return response;
        }
        Some(Fault::Body(code, body)) => {
            let status = StatusCode::from_u16(code).expect("status");
            let mut response = (status, [("content-type", "application/json")], body).into_response();
            response.headers_mut().insert("retry-after-ms", HeaderValue::from(5));
            return response;
        }
        Some(Fault::PlainText503) => {
            return (StatusCode::SERVICE_UNAVAILABLE, [("content-type", "text/plain")], "no healthy upstream")
                .into_response();
        }
        Some(Fault::Malformed) => {
            return (StatusCode::OK, [("content-type", "application/json")], "{\"data\": [").into_response();
        }
        Some(Fault::WrongCount) => {
            vectors.pop();
        }
        Some(Fault::NaN) => vectors[0][0] = f32::NAN,
        Some(Fault::Hang(d)) => tokio::time::sleep(d).await,
    }
    let data: Vec<Value> = vectors
        .iter()
        .enumerate()
        .map(|(i, v)| {
            let embedding = if encoding == "base64" {
                let bytes: Vec<u8> = v.iter().flat_map(|x| x.to_le_bytes()).collect();
                json!(base64::engine::general_purpose::STANDARD.encode(bytes))
            } else {
                json!(v)
            };
            let index = if duplicate_index && i == 1 { 0 } else { i };
            json!({"object": "embedding", "index": index, "embedding": embedding})
        })
        .rev() // out of order on purpose: clients must sort by index
        .collect();
    let total: usize = tokens.iter().sum();
    state.answered.fetch_add(1, Ordering::SeqCst);
    let mut response = axum::Json(json!({"object": "list", "data": data, "model": model, "usage": {"prompt_tokens": total, "total_tokens": total}}))
        .into_response();
    for (name, value) in rate_headers {
        response.headers_mut().insert(name, HeaderValue::from_str(&value).expect("header value"));
    }
    // To the microsecond, not to tokio's millisecond tick: the benches measure against this latency.
    let remaining = deadline.saturating_duration_since(tokio::time::Instant::now());
    if !remaining.is_zero() {
        let _ = tokio::task::spawn_blocking(move || std::thread::sleep(remaining)).await;
    }
    response
}
