//! `POST /v1/chat/completions` of the mock server: replays scripted SSE transcripts (the shapes of
//! ../shared/docs/tars-chat.md §12: OpenAI, LiteLLM, Envoy's Claude and Gemini translations, error frames, cut
//! streams) and checks every request against the contract's rules for its model family, answering a broken request
//! the way the real backend does (a 400 with OpenAI's own message).

use std::collections::VecDeque;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::body::{Body, Bytes};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use base64::Engine as _;
use serde_json::{Value, json};

/// One piece of a streamed response body.
#[derive(Debug, Clone)]
pub enum Frame {
    /// `data: <payload>\n\n`.
    Data(String),
    /// Bytes as they are: comments, CRLF framing, an event split across writes.
    Raw(String),
}

/// How a stream ends after its frames.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum End {
    /// The body ends cleanly.
    Clean,
    /// The connection is cut mid-body (a transport error on the client).
    Reset,
}

/// A scripted answer to one chat request.
#[derive(Debug, Clone)]
pub enum Reply {
    Stream { frames: Vec<Frame>, gap: Duration, end: End },
    Status { status: u16, body: String, retry_after: Option<u32> },
}

fn chunk(delta: Value, finish: Option<&str>) -> Frame {
    Frame::Data(
        json!({"id":"chatcmpl-mock","object":"chat.completion.chunk","created":1755137933,"model":"mock-model",
               "choices":[{"index":0,"delta":delta,"finish_reason":finish}],"usage":null})
        .to_string(),
    )
}

fn usage_chunk(prompt: u64, completion: u64) -> Frame {
    Frame::Data(
        json!({"id":"chatcmpl-mock","object":"chat.completion.chunk","created":1755137933,"model":"mock-model","choices":[],
               "usage":{"prompt_tokens":prompt,"completion_tokens":completion,"total_tokens":prompt+completion}})
        .to_string(),
    )
}

impl Reply {
    /// OpenAI's shape: a role chunk, one chunk per piece, a stop chunk, the usage chunk, `[DONE]`.
    pub fn text(pieces: &[&str]) -> Self {
        let mut frames = vec![chunk(json!({"role":"assistant","content":"","refusal":null}), None)];
        frames.extend(pieces.iter().map(|p| chunk(json!({"content": p}), None)));
        frames.push(chunk(json!({}), Some("stop")));
        frames.push(usage_chunk(120, pieces.len() as u64));
        frames.push(Frame::Data("[DONE]".to_owned()));
        Reply::Stream { frames, gap: Duration::ZERO, end: End::Clean }
    }

    /// Tool calls, each `(id, name, arguments)`, streamed OpenAI-style: id and name first, then the arguments in
    /// pieces of `split` bytes, calls one after another at rising indexes.
    pub fn tool_calls(calls: &[(&str, &str, &str)], split: usize) -> Self {
        let mut frames = vec![chunk(json!({"role":"assistant","content":null}), None)];
        for (index, (id, name, arguments)) in calls.iter().enumerate() {
            frames.push(chunk(
                json!({"tool_calls":[{"index":index,"id":id,"type":"function","function":{"name":name,"arguments":""}}]}),
                None,
            ));
            let bytes = arguments.as_bytes();
            for piece in bytes.chunks(split.max(1)) {
                let piece = String::from_utf8(piece.to_vec()).expect("ASCII arguments");
                frames.push(chunk(json!({"tool_calls":[{"index":index,"function":{"arguments":piece}}]}), None));
            }
        }
        frames.push(chunk(json!({}), Some("tool_calls")));
        frames.push(usage_chunk(200, 20));
        frames.push(Frame::Data("[DONE]".to_owned()));
        Reply::Stream { frames, gap: Duration::ZERO, end: End::Clean }
    }

    /// The same frames `gap` apart.
    pub fn slowly(self, gap: Duration) -> Self {
        match self {
            Reply::Stream { frames, end, .. } => Reply::Stream { frames, gap, end },
            other => other,
        }
    }

    /// The first `n` frames, then the end given.
    pub fn cut(self, n: usize, end: End) -> Self {
        match self {
            Reply::Stream { mut frames, gap, .. } => {
                frames.truncate(n);
                Reply::Stream { frames, gap, end }
            }
            other => other,
        }
    }

    /// The first `n` frames, then LiteLLM's error frame (and its `[DONE]`).
    pub fn error_after(self, n: usize) -> Self {
        match self.cut(n, End::Clean) {
            Reply::Stream { mut frames, gap, end } => {
                frames.push(Frame::Data(
                    r#"{"error": {"message": "litellm.APIConnectionError: APIConnectionError: OpenAIException - Connection error.", "type": null, "param": null, "code": "500"}}"#.to_owned(),
                ));
                frames.push(Frame::Data("[DONE]".to_owned()));
                Reply::Stream { frames, gap, end }
            }
            other => other,
        }
    }

    pub fn status(status: u16, body: Value) -> Self {
        Reply::Status { status, body: body.to_string(), retry_after: None }
    }

    /// A refusal, as OpenAI streams one: `refusal` deltas instead of content.
    pub fn refusal(text: &str) -> Self {
        let frames = vec![
            chunk(json!({"role":"assistant","content":null,"refusal":""}), None),
            chunk(json!({"refusal": text}), None),
            chunk(json!({}), Some("stop")),
            usage_chunk(300, 9),
            Frame::Data("[DONE]".to_owned()),
        ];
        Reply::Stream { frames, gap: Duration::ZERO, end: End::Clean }
    }
}

/// What the chat endpoint saw and will answer.
#[derive(Default)]
pub struct ChatState {
    pub replies: Mutex<VecDeque<Reply>>,
    /// Every request body, in arrival order.
    pub requests: Mutex<Vec<Value>>,
    /// Streams whose last frame has been written.
    pub finished: AtomicUsize,
    /// Broken rules of the contract found in requests (the tests assert this stays empty unless they mean it).
    pub violations: Mutex<Vec<String>>,
    /// Replies to requests carrying an image of a given size (as decoded here), whatever order they come in:
    /// captions are asked for several at a time.
    pub by_image: Mutex<std::collections::HashMap<(u32, u32), VecDeque<Reply>>>,
    /// The size of every image received, decoded from its data URL.
    pub images: Mutex<Vec<(u32, u32)>>,
}

impl ChatState {
    pub fn script(&self, replies: impl IntoIterator<Item = Reply>) {
        self.replies.lock().expect("lock").extend(replies);
    }

    /// Answers the next request with an image of `size` with `reply`.
    pub fn for_image(&self, size: (u32, u32), reply: Reply) {
        self.by_image.lock().expect("lock").entry(size).or_default().push_back(reply);
    }

    pub fn images(&self) -> Vec<(u32, u32)> {
        self.images.lock().expect("lock").clone()
    }

    pub fn requests(&self) -> Vec<Value> {
        self.requests.lock().expect("lock").clone()
    }

    pub fn violations(&self) -> Vec<String> {
        self.violations.lock().expect("lock").clone()
    }
}

fn openai_error(status: StatusCode, code: &str, message: &str, param: Option<&str>) -> Response {
    let body = json!({"error":{"message":message,"type":"invalid_request_error","param":param,"code":code}});
    (status, [("content-type", "application/json")], body.to_string()).into_response()
}

fn is_reasoning(model: &str) -> bool {
    ["o1", "o3", "o4"].iter().any(|p| model == *p || model.starts_with(&format!("{p}-"))) || model.starts_with("gpt-5")
}

/// The contract's request rules; a broken one is answered as the backend answers it.
fn check(request: &Value, violations: &mut Vec<String>) -> Option<Response> {
    let model = request["model"].as_str().unwrap_or_default();
    if model.starts_with("tars/") {
        violations.push(format!("model sent with its tars/ prefix: {model}"));
    }
    let Some(messages) = request["messages"].as_array().filter(|m| !m.is_empty()) else {
        return Some(openai_error(
            StatusCode::BAD_REQUEST,
            "empty_array",
            "Invalid 'messages': empty array. Expected an array with minimum length 1, but got an empty array instead.",
            Some("messages"),
        ));
    };
    if request["stream"] == json!(true) && request["stream_options"]["include_usage"] != json!(true) {
        violations.push("a stream without stream_options.include_usage".to_owned());
    }
    if is_reasoning(model) {
        if request.get("max_tokens").is_some() {
            return Some(openai_error(
                StatusCode::BAD_REQUEST,
                "unsupported_parameter",
                "Unsupported parameter: 'max_tokens' is not supported with this model. Use 'max_completion_tokens' instead.",
                Some("max_tokens"),
            ));
        }
        if let Some(t) = request.get("temperature").and_then(Value::as_f64).filter(|t| *t != 1.0) {
            return Some(openai_error(
                StatusCode::BAD_REQUEST,
                "unsupported_value",
                &format!(
                    "Unsupported value: 'temperature' does not support {t} with this model. Only the default (1) value is supported."
                ),
                Some("temperature"),
            ));
        }
    }
    if model.contains("claude") {
        if request.get("max_tokens").is_none() && request.get("max_completion_tokens").is_none() {
            violations.push("a Claude request without max_tokens (Anthropic rejects it)".to_owned());
        }
        if let Some(t) = request.get("temperature").and_then(Value::as_f64).filter(|t| !(0.0..=1.0).contains(t)) {
            violations.push(format!("temperature {t} is not supported by Anthropic (must be between 0.0 and 1.0)"));
        }
    }
    // Tool turns: every assistant call answered by consecutive tool messages right after it, ids verbatim, and
    // arguments a JSON object (Envoy parses them for Claude).
    let mut pending: Vec<String> = Vec::new();
    for (i, message) in messages.iter().enumerate() {
        let role = message["role"].as_str().unwrap_or_default();
        if !["system", "developer", "user", "assistant", "tool"].contains(&role) {
            violations.push(format!("message {i} has role {role:?}"));
        }
        if role == "tool" {
            let id = message["tool_call_id"].as_str().unwrap_or_default().to_owned();
            match pending.iter().position(|p| *p == id) {
                Some(at) => {
                    pending.remove(at);
                }
                None => violations
                    .push(format!("message {i}: a tool result for {id:?}, which the turn before did not call")),
            }
            continue;
        }
        if !pending.is_empty() {
            violations.push(format!("message {i}: tool calls {pending:?} were not all answered before it"));
            pending.clear();
        }
        if let Some(calls) = message["tool_calls"].as_array() {
            if message["content"].is_string() && message["content"] == json!("") {
                violations.push(format!("message {i}: an assistant tool turn with empty-string content"));
            }
            for call in calls {
                let id = call["id"].as_str().unwrap_or_default();
                if id.is_empty() {
                    violations.push(format!("message {i}: a tool call without an id"));
                }
                let arguments = call["function"]["arguments"].as_str().unwrap_or_default();
                if !serde_json::from_str::<Value>(arguments).is_ok_and(|v| v.is_object()) {
                    violations.push(format!("message {i}: tool call arguments {arguments:?} are not a JSON object"));
                }
                pending.push(id.to_owned());
            }
        }
        if let Some(parts) = message["content"].as_array() {
            for part in parts {
                if part["type"] == json!("image_url") {
                    check_image(part, i, violations);
                }
            }
        }
    }
    if !pending.is_empty() {
        violations.push(format!("the request ends with tool calls {pending:?} unanswered"));
    }
    None
}

fn check_image(part: &Value, i: usize, violations: &mut Vec<String>) {
    let url = part["image_url"]["url"].as_str().unwrap_or_default();
    let Some((head, data)) = url.strip_prefix("data:").and_then(|u| u.split_once(',')) else {
        violations.push(format!("message {i}: an image that is not a data: URL"));
        return;
    };
    let Some(media) = head.strip_suffix(";base64") else {
        violations.push(format!("message {i}: an image data URL without ;base64"));
        return;
    };
    if !["image/png", "image/jpeg", "image/gif", "image/webp"].contains(&media) {
        violations.push(format!("message {i}: invalid media_type for image: {media}"));
    }
    if base64::engine::general_purpose::STANDARD.decode(data).is_err() {
        violations.push(format!("message {i}: image data is not standard padded base64"));
    }
}

/// The sizes of the images a request carries, decoded as a provider would; an image that does not decode, or is
/// over the 1568-px long edge every provider takes without scaling, is a violation.
fn image_sizes(request: &Value, violations: &mut Vec<String>) -> Vec<(u32, u32)> {
    let mut sizes = Vec::new();
    for message in request["messages"].as_array().into_iter().flatten() {
        for part in message["content"].as_array().into_iter().flatten() {
            let Some(url) = part["image_url"]["url"].as_str() else { continue };
            let Some((head, data)) = url.split_once(',') else { continue };
            let Ok(bytes) = base64::engine::general_purpose::STANDARD.decode(data) else { continue };
            match image::load_from_memory(&bytes) {
                Ok(image) => {
                    let (w, h) = (image.width(), image.height());
                    if w.max(h) > 1568 {
                        violations.push(format!("an image of {w}×{h}: over the 1568-px long edge"));
                    }
                    let declared = head.trim_start_matches("data:").trim_end_matches(";base64");
                    let actual = image::guess_format(&bytes).map(|f| f.to_mime_type()).unwrap_or_default();
                    if declared != actual {
                        violations.push(format!("an image declared {declared} is {actual}"));
                    }
                    sizes.push((w, h));
                }
                Err(e) => violations.push(format!("an image that does not decode: {e}")),
            }
        }
    }
    sizes
}

pub async fn completions(state: Arc<ChatState>, headers: HeaderMap, body: Bytes) -> Response {
    if headers.get("authorization").and_then(|v| v.to_str().ok()) != Some(&format!("Bearer {}", super::mock::KEY)) {
        return openai_error(StatusCode::UNAUTHORIZED, "invalid_api_key", "Incorrect API key provided", None);
    }
    let request: Value = match serde_json::from_slice(&body) {
        Ok(v) => v,
        Err(_) => return openai_error(StatusCode::BAD_REQUEST, "invalid_json", "invalid JSON body", None),
    };
    state.requests.lock().expect("lock").push(request.clone());
    if let Some(refused) = check(&request, &mut state.violations.lock().expect("lock")) {
        return refused;
    }
    let sizes = image_sizes(&request, &mut state.violations.lock().expect("lock"));
    state.images.lock().expect("lock").extend(&sizes);
    let routed = sizes.first().and_then(|size| state.by_image.lock().expect("lock").get_mut(size)?.pop_front());
    let reply = routed.or_else(|| state.replies.lock().expect("lock").pop_front());
    let Some(reply) = reply else {
        return openai_error(
            StatusCode::INTERNAL_SERVER_ERROR,
            "no_script",
            "the mock has no scripted reply left",
            None,
        );
    };
    match reply {
        Reply::Status { status, body, retry_after } => {
            let mut response =
                (StatusCode::from_u16(status).expect("status"), [("content-type", "application/json")], body)
                    .into_response();
            if let Some(secs) = retry_after {
                response.headers_mut().insert("retry-after", secs.to_string().parse().expect("header"));
            }
            response
        }
        Reply::Stream { frames, gap, end } => {
            let total = frames.len();
            let state = Arc::clone(&state);
            let stream = futures::stream::unfold((frames.into_iter(), 0usize), move |(mut frames, sent)| {
                let state = Arc::clone(&state);
                async move {
                    match frames.next() {
                        Some(frame) => {
                            if sent > 0 && !gap.is_zero() {
                                tokio::time::sleep(gap).await;
                            }
                            if sent + 1 == total {
                                state.finished.fetch_add(1, Ordering::SeqCst);
                            }
                            let bytes = match frame {
                                Frame::Data(data) => format!("data: {data}\n\n"),
                                Frame::Raw(raw) => raw,
                            };
                            Some((Ok::<_, std::io::Error>(Bytes::from(bytes)), (frames, sent + 1)))
                        }
                        None if end == End::Reset => {
                            // Long enough for what was written to be flushed first, as a real cut comes after it.
                            tokio::time::sleep(Duration::from_millis(200)).await;
                            Some((Err(std::io::Error::other("connection reset by the mock")), (frames, sent + 1)))
                        }
                        None => None,
                    }
                }
            });
            // A Reset yields its error once, then the body is dropped with the connection.
            let stream = futures::StreamExt::take_while(stream, {
                let mut failed = false;
                move |item| {
                    let go = !failed;
                    failed |= item.is_err();
                    std::future::ready(go)
                }
            });
            (
                StatusCode::OK,
                [("content-type", "text/event-stream; charset=utf-8"), ("cache-control", "no-cache")],
                Body::from_stream(stream),
            )
                .into_response()
        }
    }
}
