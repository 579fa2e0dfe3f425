//! Streamed chat completions through TARS (../shared/docs/tars-chat.md): the request rules of each model family, SSE
//! read to the spec, tool calls merged from their deltas, and the end states of a stream told apart, so a cut
//! stream is an error and never a short answer.
//!
//! Retries happen only while nothing has reached the caller's sink: an answer half shown is never sent again
//! (it would be billed twice and shown twice).

use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use eventsource_stream::Eventsource as _;
use futures::StreamExt as _;
use reqwest::header::{ACCEPT, CONTENT_TYPE, HeaderMap};
use reqwest::{Client, StatusCode};
use serde::{Deserialize, Serialize};

use super::limiter::{Limiter, RateLimits};
use super::retry::{Disposition, RetryPolicy, classify, server_hint};
use super::{
    ApiError, Endpoint, EndpointError, advice_for, parse_error, request_id, transport_message, truncate, wire_model,
};

/// How the request must be shaped for a model (tars-chat.md §3.3, §3.4).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Family {
    /// o-series and gpt-5*: `max_completion_tokens`, and no temperature but the default.
    Reasoning,
    /// Claude through TARS's Anthropic translation: `max_tokens` required, temperature within 0..1.
    Claude,
    /// Everything else: OpenAI's classic parameters.
    Standard,
}

impl Family {
    /// Judged by the model id (its last path segment, so `openai/gpt-5-mini` counts).
    pub fn of(model: &str) -> Family {
        let id = super::model_id(model);
        let reasoning =
            ["o1", "o3", "o4"].iter().any(|p| id == *p || id.starts_with(&format!("{p}-"))) || id.starts_with("gpt-5");
        if reasoning {
            Family::Reasoning
        } else if id.contains("claude") {
            Family::Claude
        } else {
            Family::Standard
        }
    }

    /// The output budget when none is given: reasoning models spend hundreds of tokens before the first visible
    /// one (§3.3: 100 tokens gave an empty answer), Claude requires one.
    pub fn default_max_tokens(self) -> u32 {
        match self {
            Family::Reasoning => 4000,
            Family::Claude | Family::Standard => 1024,
        }
    }
}

/// Who speaks a message.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    System,
    User,
    Assistant,
    Tool,
}

/// A message's content: text, or parts (text and images).
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(untagged)]
pub enum Content {
    Text(String),
    Parts(Vec<Part>),
}

#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum Part {
    Text { text: String },
    ImageUrl { image_url: ImageUrl },
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct ImageUrl {
    /// A `data:` URL (always inlined: Claude on Vertex takes base64 only, §3.4).
    pub url: String,
    pub detail: &'static str,
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Message {
    pub role: Role,
    /// `null` on an assistant turn that only calls tools.
    pub content: Option<Content>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub tool_calls: Vec<ToolCall>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub tool_call_id: Option<String>,
}

impl Message {
    pub fn system(text: impl Into<String>) -> Self {
        Self::text(Role::System, text)
    }

    pub fn user(text: impl Into<String>) -> Self {
        Self::text(Role::User, text)
    }

    fn text(role: Role, text: impl Into<String>) -> Self {
        Self { role, content: Some(Content::Text(text.into())), tool_calls: Vec::new(), tool_call_id: None }
    }

    /// The assistant's turn as it came back, to send with the tool results: its text (`null` when empty) and its
    /// calls, ids and arguments verbatim, except arguments that are not a JSON object, sent as `{}` (Envoy parses
    /// them into an object for Claude and fails the whole request otherwise, §3.4; the tool result says what was
    /// wrong).
    pub fn assistant(completion: &Completion) -> Self {
        let tool_calls = completion
            .tool_calls
            .iter()
            .map(|call| match call.parse_arguments() {
                Ok(serde_json::Value::Object(_)) => call.clone(),
                _ => ToolCall { arguments: "{}".to_owned(), ..call.clone() },
            })
            .collect();
        Self {
            role: Role::Assistant,
            content: (!completion.text.is_empty()).then(|| Content::Text(completion.text.clone())),
            tool_calls,
            tool_call_id: None,
        }
    }

    /// The answer to one tool call.
    pub fn tool(call_id: &str, text: impl Into<String>) -> Self {
        Self {
            role: Role::Tool,
            content: Some(Content::Text(text.into())),
            tool_calls: Vec::new(),
            tool_call_id: Some(call_id.to_owned()),
        }
    }

    /// The text of the message, its parts' texts joined (images left out).
    pub fn text_content(&self) -> String {
        match &self.content {
            None => String::new(),
            Some(Content::Text(t)) => t.clone(),
            Some(Content::Parts(parts)) => parts
                .iter()
                .filter_map(|p| match p {
                    Part::Text { text } => Some(text.as_str()),
                    Part::ImageUrl { .. } => None,
                })
                .collect::<Vec<_>>()
                .join("\n"),
        }
    }
}

/// A tool the model may call.
#[derive(Debug, Clone, PartialEq)]
pub struct Tool {
    pub name: String,
    pub description: String,
    /// JSON Schema of the arguments.
    pub parameters: serde_json::Value,
}

impl Serialize for Tool {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serde_json::json!({
            "type": "function",
            "function": { "name": self.name, "description": self.description, "parameters": self.parameters },
        })
        .serialize(serializer)
    }
}

/// A complete tool call, merged from its stream deltas.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ToolCall {
    /// As the model sent it (`call_…`, `toolu_…`, a UUID), or `call_<n>` when it sent none.
    pub id: String,
    pub name: String,
    /// The JSON text as received; `{}` when empty (Envoy re-parses it as an object for Claude, §3.4).
    pub arguments: String,
}

impl ToolCall {
    /// The arguments as JSON, or why they are not.
    pub fn parse_arguments(&self) -> Result<serde_json::Value, String> {
        serde_json::from_str(&self.arguments).map_err(|e| format!("invalid JSON arguments ({e}): {}", self.arguments))
    }
}

impl Serialize for ToolCall {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serde_json::json!({
            "id": self.id,
            "type": "function",
            "function": { "name": self.name, "arguments": self.arguments },
        })
        .serialize(serializer)
    }
}

/// What the model may do with the tools.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ToolChoice {
    Auto,
    /// Answer now: no more calls.
    None,
}

/// One chat request.
#[derive(Debug, Clone)]
pub struct ChatRequest {
    pub messages: Vec<Message>,
    pub tools: Vec<Tool>,
    pub tool_choice: ToolChoice,
    /// The output budget; the family's default when `None`.
    pub max_tokens: Option<u32>,
    /// `None`: the model's default. Refused up front where the family cannot take it.
    pub temperature: Option<f32>,
}

impl ChatRequest {
    pub fn new(messages: Vec<Message>) -> Self {
        Self { messages, tools: Vec::new(), tool_choice: ToolChoice::Auto, max_tokens: None, temperature: None }
    }
}

/// Token counts as the server reported them; any of them may be missing (`usage: {}` happens, §5.2).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Usage {
    #[serde(default)]
    pub prompt_tokens: Option<u64>,
    #[serde(default)]
    pub completion_tokens: Option<u64>,
    #[serde(default)]
    pub total_tokens: Option<u64>,
}

/// A finished completion.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Completion {
    /// The visible text (a refusal's text included), as the sink received it.
    pub text: String,
    pub tool_calls: Vec<ToolCall>,
    /// `stop`, `length`, `tool_calls`, `content_filter`, or whatever the backend sent.
    pub finish_reason: Option<String>,
    /// The last usage any chunk carried.
    pub usage: Option<Usage>,
    /// The model the server says answered (logged, never compared with the request: gateways rewrite it).
    pub model: Option<String>,
    /// Whether the model refused (a `refusal` delta).
    pub refused: bool,
}

/// Why a completion failed.
#[derive(Debug, thiserror::Error)]
pub enum ChatError {
    #[error("{}", describe(*status, message, request_id.as_deref()))]
    Rejected { status: u16, message: String, request_id: Option<String>, advice: Option<String> },
    #[error("the API reports exhausted quota or credit (HTTP {status}): {message}")]
    Quota { status: u16, message: String },
    #[error("gave up after {attempts} attempts: {last}")]
    Exhausted { attempts: u32, last: String },
    /// What the request asks for is not possible with this model; nothing was sent.
    #[error("{0}")]
    Invalid(String),
    /// The stream carried an error frame.
    #[error("the answer stream reported an error{}: {message}", code.as_ref().map(|c| format!(" ({c})")).unwrap_or_default())]
    StreamError { message: String, code: Option<String> },
    /// The stream ended without saying the answer was complete.
    #[error("the answer stream ended before the answer was complete (no finish_reason): the answer is cut short")]
    Truncated,
    /// The connection failed in the middle of the stream.
    #[error("the answer stream was interrupted: {0}")]
    Interrupted(String),
    #[error("no data for {0} s in the answer stream: the answer is cut short")]
    Stalled(u64),
    /// The output budget ran out before any visible text (reasoning models spend it thinking).
    #[error("the model used all {0} output tokens before writing an answer; raise --max-tokens")]
    Budget(u32),
    #[error("could not build the HTTP client: {0}")]
    Client(#[from] EndpointError),
}

impl ChatError {
    pub fn advice(&self) -> Option<&str> {
        match self {
            ChatError::Rejected { advice, .. } => advice.as_deref(),
            ChatError::Quota { .. } => {
                Some("add credit or raise the spending limit of the account behind TARS_API_KEY, then run again")
            }
            ChatError::Truncated
            | ChatError::Interrupted(_)
            | ChatError::Stalled(_)
            | ChatError::StreamError { .. } => Some("what was printed is not the whole answer; ask again"),
            _ => None,
        }
    }

    /// Whether the fault is in what was asked (a usage error), not in the service.
    pub fn is_usage(&self) -> bool {
        matches!(self, ChatError::Invalid(_))
    }
}

fn describe(status: u16, message: &str, request_id: Option<&str>) -> String {
    match request_id {
        Some(id) => format!("the chat API rejected the request (HTTP {status}, request id {id}): {message}"),
        None => format!("the chat API rejected the request (HTTP {status}): {message}"),
    }
}

/// Where and how to reach a chat model.
#[derive(Debug, Clone)]
pub struct ChatConfig {
    pub endpoint: Endpoint,
    /// As the user names it (`tars/gpt-4o-mini`).
    pub model: String,
    pub connect_timeout: Duration,
    /// Longest wait for the next bytes of a stream (the headers included).
    pub idle_timeout: Duration,
    pub retry: RetryPolicy,
    /// `--rpm` / `--tpm` where known, and the most answers streaming at once (a server's asks share one client).
    pub limits: RateLimits,
    pub max_concurrency: usize,
}

impl ChatConfig {
    pub fn new(endpoint: Endpoint, model: &str) -> Self {
        Self {
            endpoint,
            model: model.to_owned(),
            connect_timeout: Duration::from_secs(10),
            idle_timeout: Duration::from_secs(60),
            retry: RetryPolicy::interactive(),
            limits: RateLimits::default(),
            max_concurrency: 8,
        }
    }
}

/// A chat model behind TARS.
pub struct ChatClient {
    config: ChatConfig,
    client: Client,
    family: Family,
    /// Learned from a 400 naming the parameter (§3.3): the model wants `max_completion_tokens`, or takes no
    /// temperature, whatever its name suggests.
    completion_tokens: AtomicBool,
    no_temperature: AtomicBool,
    /// Paces requests as the embeddings client does: limits learned from headers, 429s pausing everyone.
    limiter: Limiter,
}

/// One attempt's failure, before the retry decision.
struct Failed {
    error: ChatError,
    /// Worth another attempt (only ever set while nothing was shown), with the server's hint.
    retry: Option<Option<Duration>>,
}

impl Failed {
    fn fatal(error: ChatError) -> Self {
        Self { error, retry: None }
    }

    fn retry(error: ChatError, hint: Option<Duration>) -> Self {
        Self { error, retry: Some(hint) }
    }
}

impl ChatClient {
    pub fn new(config: ChatConfig) -> Result<Self, ChatError> {
        // No total timeout: a long answer streams for minutes, and the idle timeout catches a dead stream. No gzip:
        // a compressor upstream may hold back small events.
        let client =
            config.endpoint.client(config.connect_timeout)?.no_gzip().build().map_err(EndpointError::Client)?;
        let family = Family::of(&config.model);
        let reasoning = family == Family::Reasoning;
        let limiter = Limiter::new(config.limits, config.max_concurrency);
        Ok(Self {
            config,
            client,
            family,
            completion_tokens: AtomicBool::new(reasoning),
            no_temperature: AtomicBool::new(false),
            limiter,
        })
    }

    pub fn model(&self) -> &str {
        &self.config.model
    }

    pub fn family(&self) -> Family {
        self.family
    }

    /// Refuses what the model family cannot take, before anything is sent.
    pub fn check(&self, request: &ChatRequest) -> Result<(), ChatError> {
        if let Some(t) = request.temperature {
            let model = &self.config.model;
            match self.family {
                Family::Reasoning => {
                    return Err(ChatError::Invalid(format!(
                        "{model} is a reasoning model: it takes only its default temperature; drop --temperature"
                    )));
                }
                Family::Claude if !(0.0..=1.0).contains(&t) => {
                    return Err(ChatError::Invalid(format!(
                        "--temperature {t} is outside 0..1, the range Claude models take"
                    )));
                }
                _ if !(0.0..=2.0).contains(&t) => {
                    return Err(ChatError::Invalid(format!("--temperature {t} is outside 0..2")));
                }
                _ => {}
            }
        }
        if request.messages.is_empty() {
            return Err(ChatError::Invalid("a chat request needs at least one message".to_owned()));
        }
        Ok(())
    }

    /// The request body as it goes on the wire.
    pub fn body(&self, request: &ChatRequest) -> serde_json::Value {
        let max_tokens = request.max_tokens.unwrap_or_else(|| self.family.default_max_tokens());
        let mut body = serde_json::json!({
            "model": wire_model(&self.config.model),
            "messages": request.messages,
            "stream": true,
            "stream_options": { "include_usage": true },
        });
        let token_param =
            if self.completion_tokens.load(Ordering::Relaxed) { "max_completion_tokens" } else { "max_tokens" };
        body[token_param] = max_tokens.into();
        if let Some(t) = request.temperature.filter(|_| !self.no_temperature.load(Ordering::Relaxed)) {
            body["temperature"] = serde_json::json!(t);
        }
        if !request.tools.is_empty() {
            body["tools"] = serde_json::json!(request.tools);
            // Explicit, so Claude's translation honours parallel calls too (§3.2).
            body["tool_choice"] = match request.tool_choice {
                ToolChoice::Auto => "auto",
                ToolChoice::None => "none",
            }
            .into();
            body["parallel_tool_calls"] = true.into();
        }
        body
    }

    /// Streams one completion: each piece of visible text goes to `sink` as it arrives. Retries while nothing has
    /// been shown; once text reached the sink, a failure is returned (the text shown stays shown).
    pub async fn complete(
        &self,
        request: &ChatRequest,
        sink: &mut (dyn FnMut(&str) + Send),
    ) -> Result<Completion, ChatError> {
        self.check(request)?;
        let policy = self.config.retry;
        // Up to two switches: a model may refuse both max_tokens and the temperature.
        let (mut retries, mut rate_limited, mut switches) = (0u32, 0u32, 0);
        loop {
            let mut shown = false;
            let mut guarded = |text: &str| {
                shown = true;
                sink(text);
            };
            // The slot is held while the answer streams.
            let permit = self.limiter.acquire(0).await;
            let result = self.attempt(request, &mut guarded).await;
            drop(permit);
            let failed = match result {
                Ok(completion) => {
                    self.limiter.success();
                    return Ok(completion);
                }
                Err(failed) => failed,
            };
            let attempts = retries + rate_limited + 1;
            if shown {
                return Err(failed.error);
            }
            if let ChatError::Rejected { status: 400, .. } = &failed.error
                && switches < 2
                && self.learn(&failed.error)
            {
                switches += 1;
                continue;
            }
            let Some(hint) = failed.retry else { return Err(failed.error) };
            let is_rate_limit = matches!(&failed.error, ChatError::Rejected { status: 429, .. });
            let step = if is_rate_limit {
                self.limiter.rate_limited(hint);
                rate_limited += 1;
                if rate_limited > policy.max_rate_limit_retries {
                    return Err(ChatError::Exhausted { attempts, last: failed.error.to_string() });
                }
                rate_limited - 1
            } else {
                retries += 1;
                if retries > policy.max_retries {
                    return Err(ChatError::Exhausted { attempts, last: failed.error.to_string() });
                }
                retries - 1
            };
            let delay = policy.delay(step, hint);
            tracing::info!(
                "retrying the chat request in {:.1}s: attempt {attempts} failed: {}",
                delay.as_secs_f64(),
                failed.error
            );
            tokio::time::sleep(delay).await;
        }
    }

    /// Takes a 400 about `max_tokens` or `temperature` as what this model wants (§3.3 rule 4); true when the
    /// request is worth sending again in the other style.
    fn learn(&self, error: &ChatError) -> bool {
        let ChatError::Rejected { message, .. } = error else { return false };
        let said = |p: &str| message.contains(&format!("'{p}'")) || message.contains(&format!("\"{p}\""));
        if said("max_tokens") && !self.completion_tokens.swap(true, Ordering::Relaxed) {
            tracing::info!("{} wants max_completion_tokens; sending that", self.config.model);
            return true;
        }
        if said("max_completion_tokens") && self.completion_tokens.swap(false, Ordering::Relaxed) {
            tracing::info!("{} wants max_tokens; sending that", self.config.model);
            return true;
        }
        if said("temperature") && !self.no_temperature.swap(true, Ordering::Relaxed) {
            tracing::warn!("{} takes only its default temperature; sending none", self.config.model);
            return true;
        }
        false
    }

    async fn attempt(&self, request: &ChatRequest, sink: &mut (dyn FnMut(&str) + Send)) -> Result<Completion, Failed> {
        let endpoint = &self.config.endpoint;
        let body = serde_json::to_vec(&self.body(request))
            .map_err(|e| Failed::fatal(ChatError::Invalid(format!("encoding the request: {e}"))))?;
        let transport =
            |e: reqwest::Error| Failed::retry(ChatError::Interrupted(endpoint.redact(&transport_message(&e))), None);
        let send = self
            .client
            .post(endpoint.url("/chat/completions"))
            .header(CONTENT_TYPE, "application/json")
            .header(ACCEPT, "text/event-stream")
            .body(body)
            .send();
        let idle = self.config.idle_timeout;
        let response = tokio::time::timeout(idle, send)
            .await
            .map_err(|_| Failed::retry(ChatError::Stalled(idle.as_secs()), None))?
            .map_err(transport)?;
        let status = response.status();
        let headers = response.headers().clone();
        self.limiter.learn(&headers);
        if !status.is_success() {
            let body = tokio::time::timeout(idle, response.bytes())
                .await
                .map_err(|_| Failed::retry(ChatError::Stalled(idle.as_secs()), None))?
                .map_err(transport)?;
            return Err(self.refused(status, &headers, &parse_error(&body)));
        }
        let is_json = headers
            .get(CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .is_some_and(|v| v.trim_start().starts_with("application/json"));
        let max_tokens = request.max_tokens.unwrap_or_else(|| self.family.default_max_tokens());
        let completion = if is_json {
            // A server that ignores `stream: true` answers with one completion object.
            let body = tokio::time::timeout(idle, response.bytes())
                .await
                .map_err(|_| Failed::retry(ChatError::Stalled(idle.as_secs()), None))?
                .map_err(transport)?;
            let completion = whole(&body).map_err(|e| Failed::retry(e, None))?;
            if !completion.text.is_empty() {
                sink(&completion.text);
            }
            completion
        } else {
            self.read_stream(response, sink).await?
        };
        if completion.finish_reason.as_deref() == Some("length")
            && completion.text.trim().is_empty()
            && completion.tool_calls.is_empty()
        {
            return Err(Failed::fatal(ChatError::Budget(max_tokens)));
        }
        Ok(completion)
    }

    fn refused(&self, status: StatusCode, headers: &HeaderMap, error: &ApiError) -> Failed {
        let message = self.config.endpoint.redact(&error.message);
        let rejected = || ChatError::Rejected {
            status: status.as_u16(),
            advice: advice_for(status, error, &self.config.model, None),
            message: message.clone(),
            request_id: request_id(headers),
        };
        match classify(status, error.kind.as_deref(), error.code.as_deref(), headers) {
            // 529 is Anthropic's "overloaded", passed through by Envoy and LiteLLM (§8): a 5xx, so retried.
            Disposition::Retry => Failed::retry(rejected(), server_hint(headers, &message)),
            Disposition::Quota => Failed::fatal(ChatError::Quota { status: status.as_u16(), message }),
            Disposition::Reject => Failed::fatal(rejected()),
        }
    }

    async fn read_stream(
        &self,
        response: reqwest::Response,
        sink: &mut (dyn FnMut(&str) + Send),
    ) -> Result<Completion, Failed> {
        let endpoint = &self.config.endpoint;
        let idle = self.config.idle_timeout;
        let mut events = response.bytes_stream().eventsource();
        let mut reader = StreamReader::default();
        loop {
            let event = match tokio::time::timeout(idle, events.next()).await {
                Err(_) => return Err(Failed::retry(ChatError::Stalled(idle.as_secs()), None)),
                Ok(None) => break,
                Ok(Some(Err(e))) => {
                    if reader.finished() {
                        // A reset after finish_reason: the answer is complete (llmock "disconnect", §12.8).
                        tracing::debug!("the stream was cut after its finish_reason: {e}");
                        break;
                    }
                    return Err(Failed::retry(ChatError::Interrupted(endpoint.redact(&e.to_string())), None));
                }
                Ok(Some(Ok(event))) => event,
            };
            match reader.data(&event.data, sink) {
                Ok(Flow::More) => {}
                Ok(Flow::Done) => break,
                Err(error) => {
                    let retry = !matches!(&error, ChatError::StreamError { code: Some(c), .. } if c.starts_with('4') && c != "429");
                    return Err(if retry { Failed::retry(error, None) } else { Failed::fatal(error) });
                }
            }
        }
        reader.finish().map_err(|e| Failed::retry(e, None))
    }
}

impl RetryPolicy {
    /// For a person waiting on an answer: a few quick retries, short waits.
    pub fn interactive() -> Self {
        Self {
            max_retries: 3,
            max_rate_limit_retries: 4,
            initial_delay: Duration::from_millis(500),
            max_delay: Duration::from_secs(8),
            max_hint: Duration::from_secs(30),
        }
    }
}

/// What the reader wants next.
#[derive(Debug, PartialEq, Eq)]
enum Flow {
    More,
    Done,
}

#[derive(Deserialize)]
struct Chunk {
    #[serde(default)]
    choices: Vec<Choice>,
    #[serde(default)]
    usage: Option<Usage>,
    #[serde(default)]
    model: Option<String>,
}

#[derive(Deserialize)]
struct Choice {
    #[serde(default)]
    index: u32,
    #[serde(default)]
    delta: Option<Delta>,
    /// In a non-streamed answer.
    #[serde(default)]
    message: Option<Delta>,
    #[serde(default)]
    finish_reason: Option<String>,
}

#[derive(Deserialize, Default)]
struct Delta {
    #[serde(default)]
    content: Option<String>,
    #[serde(default)]
    refusal: Option<String>,
    #[serde(default)]
    tool_calls: Option<Vec<ToolCallDelta>>,
}

#[derive(Deserialize)]
struct ToolCallDelta {
    #[serde(default)]
    index: Option<u32>,
    #[serde(default)]
    id: Option<String>,
    #[serde(default)]
    function: Option<FunctionDelta>,
}

#[derive(Deserialize, Default)]
struct FunctionDelta {
    #[serde(default)]
    name: Option<String>,
    /// A string on the wire; an object from a few converters, taken as its JSON text.
    #[serde(default)]
    arguments: Option<serde_json::Value>,
}

/// Turns a stream's data payloads into a [`Completion`], deciding at the end whether it was complete (§5.5).
#[derive(Default)]
struct StreamReader {
    completion: Completion,
    calls: ToolCalls,
    done: bool,
    skipped: usize,
}

impl StreamReader {
    fn finished(&self) -> bool {
        self.completion.finish_reason.is_some()
    }

    fn data(&mut self, data: &str, sink: &mut (dyn FnMut(&str) + Send)) -> Result<Flow, ChatError> {
        let data = data.trim();
        if data.starts_with("[DONE]") {
            self.done = true;
            return Ok(Flow::Done);
        }
        if data.is_empty() {
            return Ok(Flow::More);
        }
        let value: serde_json::Value = match serde_json::from_str(data) {
            Ok(v) => v,
            Err(e) => {
                // One bad frame should not kill an answer (§9); a cut stream is caught at the end.
                self.skipped += 1;
                tracing::debug!("skipped an unreadable stream event ({e}): {}", truncate(data, 200));
                return Ok(Flow::More);
            }
        };
        if value.get("error").is_some_and(|e| !e.is_null()) {
            // An error frame wins, even when [DONE] follows (§5.6).
            let error = parse_error(data.as_bytes());
            return Err(ChatError::StreamError { message: error.message, code: error.code });
        }
        let chunk: Chunk = match serde_json::from_value(value) {
            Ok(c) => c,
            Err(e) => {
                self.skipped += 1;
                tracing::debug!("skipped a stream event of an unexpected shape ({e}): {}", truncate(data, 200));
                return Ok(Flow::More);
            }
        };
        self.chunk(chunk, sink);
        Ok(Flow::More)
    }

    fn chunk(&mut self, chunk: Chunk, sink: &mut (dyn FnMut(&str) + Send)) {
        if let Some(model) = chunk.model.filter(|m| !m.is_empty()) {
            self.completion.model = Some(model);
        }
        if let Some(usage) = chunk.usage {
            self.completion.usage = Some(usage);
        }
        // Choices are processed on every chunk, the usage chunk included (LiteLLM's carries one, §5.3). One
        // answer is asked for, so only choice 0 counts.
        for choice in chunk.choices.into_iter().filter(|c| c.index == 0) {
            if let Some(delta) = choice.delta.or(choice.message) {
                for text in
                    [delta.content, delta.refusal.inspect(|_| self.completion.refused = true)].into_iter().flatten()
                {
                    if !text.is_empty() {
                        sink(&text);
                        self.completion.text.push_str(&text);
                    }
                }
                for (position, call) in delta.tool_calls.unwrap_or_default().into_iter().enumerate() {
                    self.calls.add(call, position);
                }
            }
            if let Some(reason) = choice.finish_reason.filter(|r| !r.is_empty()) {
                self.completion.finish_reason = Some(reason);
            }
        }
    }

    fn finish(mut self) -> Result<Completion, ChatError> {
        if self.skipped > 0 {
            tracing::warn!("{} unreadable stream events were skipped", self.skipped);
        }
        if self.completion.finish_reason.is_none() {
            if !self.done {
                return Err(ChatError::Truncated);
            }
            tracing::warn!("the stream ended with [DONE] but no finish_reason; taking the answer as complete");
        }
        self.completion.tool_calls = self.calls.finish();
        Ok(self.completion)
    }
}

/// Tool calls merged from deltas by index and id, robust to every producer in tars-chat.md §5.4: OpenAI's
/// (id and name once, then argument pieces), Claude's through Envoy (`id: null`, `name: ""` on continuations),
/// Gemini's (complete calls each at index 0 with distinct ids), and calls with no index at all.
#[derive(Default)]
struct ToolCalls {
    slots: Vec<Slot>,
}

struct Slot {
    index: u32,
    id: Option<String>,
    name: String,
    arguments: String,
}

impl ToolCalls {
    fn add(&mut self, delta: ToolCallDelta, position: usize) {
        let index = delta.index.unwrap_or(position as u32);
        let id = delta.id.filter(|id| !id.is_empty());
        let at = self.slots.iter().rposition(|s| s.index == index);
        let at = match at {
            // The same index with another id is a new call (Gemini-style reuse of index 0).
            Some(at) if id.is_some() && self.slots[at].id.is_some() && self.slots[at].id != id => None,
            at => at,
        };
        let slot = match at {
            Some(at) => &mut self.slots[at],
            None => {
                self.slots.push(Slot { index, id: None, name: String::new(), arguments: String::new() });
                self.slots.last_mut().expect("just pushed")
            }
        };
        if id.is_some() {
            slot.id = id;
        }
        let function = delta.function.unwrap_or_default();
        if let Some(name) = function.name.filter(|n| !n.is_empty()) {
            // aichat's rule: a name sent whole again replaces, a piece extends.
            if slot.name.is_empty() || name.starts_with(&slot.name) {
                slot.name = name;
            } else {
                slot.name.push_str(&name);
            }
        }
        match function.arguments {
            Some(serde_json::Value::String(piece)) => slot.arguments.push_str(&piece),
            Some(serde_json::Value::Null) | None => {}
            Some(object) => slot.arguments.push_str(&object.to_string()),
        }
    }

    fn finish(self) -> Vec<ToolCall> {
        self.slots
            .into_iter()
            .enumerate()
            .map(|(n, slot)| ToolCall {
                id: slot.id.unwrap_or_else(|| format!("call_{n}")),
                name: slot.name,
                arguments: if slot.arguments.trim().is_empty() { "{}".to_owned() } else { slot.arguments },
            })
            .collect()
    }
}

/// A non-streamed completion body.
fn whole(body: &[u8]) -> Result<Completion, ChatError> {
    let value: serde_json::Value =
        serde_json::from_slice(body).map_err(|e| ChatError::Interrupted(format!("unreadable completion body: {e}")))?;
    if value.get("error").is_some_and(|e| !e.is_null()) {
        let error = parse_error(body);
        return Err(ChatError::StreamError { message: error.message, code: error.code });
    }
    let chunk: Chunk = serde_json::from_value(value)
        .map_err(|e| ChatError::Interrupted(format!("unexpected completion body: {e}")))?;
    let mut reader = StreamReader::default();
    reader.chunk(chunk, &mut |_| {});
    reader.done = true;
    reader.finish()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Feeds SSE data payloads (one per line of `frames`) to a reader, collecting what the sink saw.
    fn read(frames: &[&str]) -> (Result<Completion, ChatError>, Vec<String>) {
        let mut reader = StreamReader::default();
        let mut seen = Vec::new();
        for frame in frames {
            match reader.data(frame, &mut |t| seen.push(t.to_owned())) {
                Ok(Flow::More) => {}
                Ok(Flow::Done) => break,
                Err(e) => return (Err(e), seen),
            }
        }
        (reader.finish(), seen)
    }

    #[test]
    fn families_and_their_request_rules() {
        for (model, family) in [
            ("tars/gpt-5-mini", Family::Reasoning),
            ("tars/o3-mini", Family::Reasoning),
            ("o1", Family::Reasoning),
            ("openai/o4-mini", Family::Reasoning),
            ("tars/claude-sonnet-4-20250514", Family::Claude),
            ("tars/gpt-4o-mini", Family::Standard),
            ("tars/gemini-2.5-pro", Family::Standard),
            ("tars/omni-moderation", Family::Standard),
        ] {
            assert_eq!(Family::of(model), family, "{model}");
        }
        let client = |model: &str| {
            ChatClient::new(ChatConfig::new(Endpoint::new("http://h/v1", "k").expect("endpoint"), model))
                .expect("client")
        };
        let mut request = ChatRequest::new(vec![Message::user("hi")]);
        request.temperature = Some(0.2);
        let body = client("tars/gpt-4o-mini").body(&request);
        assert_eq!(body["model"], "gpt-4o-mini");
        assert_eq!(body["max_tokens"], 1024);
        assert_eq!(body["temperature"], serde_json::json!(0.2f32));
        assert_eq!(body["stream_options"]["include_usage"], true);
        assert!(body.get("tools").is_none());

        let reasoning = client("tars/gpt-5-mini");
        assert!(matches!(reasoning.check(&request), Err(ChatError::Invalid(m)) if m.contains("reasoning model")));
        request.temperature = None;
        let body = reasoning.body(&request);
        assert_eq!(body["max_completion_tokens"], 4000);
        assert!(body.get("max_tokens").is_none() && body.get("temperature").is_none());

        let claude = client("tars/claude-sonnet-4-20250514");
        request.temperature = Some(1.5);
        assert!(matches!(claude.check(&request), Err(ChatError::Invalid(m)) if m.contains("0..1")));
        request.temperature = Some(0.5);
        claude.check(&request).expect("0.5 is fine for Claude");
        let body = claude.body(&request);
        assert_eq!(body["max_tokens"], 1024);
    }

    #[test]
    fn a_400_naming_the_parameter_switches_the_style_once() {
        let client =
            ChatClient::new(ChatConfig::new(Endpoint::new("http://h/v1", "k").expect("endpoint"), "tars/new-model"))
                .expect("client");
        let rejected =
            |m: &str| ChatError::Rejected { status: 400, message: m.to_owned(), request_id: None, advice: None };
        let request = ChatRequest { temperature: Some(0.3), ..ChatRequest::new(vec![Message::user("hi")]) };
        assert!(client.learn(&rejected("Unsupported parameter: 'max_tokens' is not supported with this model.")));
        assert!(!client.learn(&rejected("Unsupported parameter: 'max_tokens' is not supported with this model.")));
        assert!(client.learn(&rejected("Unsupported value: 'temperature' does not support 0.3 with this model.")));
        let body = client.body(&request);
        assert!(body.get("max_tokens").is_none() && body.get("temperature").is_none());
        assert_eq!(body["max_completion_tokens"], 1024);
        assert!(!client.learn(&rejected("Invalid 'messages': empty array.")));
    }

    #[test]
    fn openai_stream_with_usage_chunk() {
        let (completion, seen) = read(&[
            r#"{"id":"c","object":"chat.completion.chunk","created":1,"model":"gpt-5-nano-2025-08-07","choices":[{"index":0,"delta":{"role":"assistant","content":"","refusal":null},"finish_reason":null}],"usage":null,"obfuscation":"nX"}"#,
            r#"{"id":"c","choices":[{"index":0,"delta":{"content":"Hi"},"finish_reason":null}],"usage":null}"#,
            r#"{"id":"c","choices":[{"index":0,"delta":{"content":" there’s"},"finish_reason":null}],"usage":null}"#,
            r#"{"id":"c","choices":[{"index":0,"delta":{},"finish_reason":"stop"}],"usage":null}"#,
            r#"{"id":"c","choices":[],"usage":{"prompt_tokens":12,"completion_tokens":3,"total_tokens":15,"completion_tokens_details":{"reasoning_tokens":0}}}"#,
            "[DONE]",
        ]);
        let completion = completion.expect("complete");
        assert_eq!(seen, ["Hi", " there’s"]);
        assert_eq!(completion.text, "Hi there’s");
        assert_eq!(completion.finish_reason.as_deref(), Some("stop"));
        assert_eq!(completion.usage.and_then(|u| u.prompt_tokens), Some(12));
        assert_eq!(completion.model.as_deref(), Some("gpt-5-nano-2025-08-07"));
    }

    #[test]
    fn litellm_usage_on_a_chunk_with_choices_and_no_finish_reason_key() {
        let (completion, _) = read(&[
            r#"{"choices":[{"index":0,"delta":{"content":"]."}}]}"#,
            r#"{"choices":[{"index":0,"delta":{},"finish_reason":"stop"}]}"#,
            r#"{"choices":[{"index":0,"delta":{}}],"usage":{"completion_tokens":9,"prompt_tokens":8,"total_tokens":17,"cost":0.00011}}"#,
            "[DONE]",
        ]);
        let completion = completion.expect("complete");
        assert_eq!(completion.usage.and_then(|u| u.completion_tokens), Some(9));
        assert_eq!(completion.finish_reason.as_deref(), Some("stop"));
    }

    #[test]
    fn end_states() {
        // Cut without finish_reason or [DONE] (llmock "truncate", Open WebUI behind LiteLLM).
        let (result, seen) = read(&[r#"{"choices":[{"index":0,"delta":{"content":"mock "}}]}"#]);
        assert!(matches!(result, Err(ChatError::Truncated)), "{result:?}");
        assert_eq!(seen, ["mock "]);
        // finish_reason then EOF without [DONE]: complete.
        let (result, _) = read(&[r#"{"choices":[{"index":0,"delta":{},"finish_reason":"stop"}]}"#]);
        assert!(result.is_ok());
        // [DONE] without finish_reason: complete, with a warning.
        let (result, _) = read(&[r#"{"choices":[{"index":0,"delta":{"content":"x"}}]}"#, "[DONE]"]);
        assert_eq!(result.expect("complete").text, "x");
        // An error frame wins, even when [DONE] follows (LiteLLM's spacing).
        let (result, seen) = read(&[
            r#"{"choices":[{"index":0,"delta":{"content":" wor"}}]}"#,
            r#"{"error": {"message": "litellm.APIConnectionError: Connection error.", "type": null, "param": null, "code": "500"}}"#,
            "[DONE]",
        ]);
        match result {
            Err(ChatError::StreamError { message, code }) => {
                assert!(message.contains("Connection error"));
                assert_eq!(code.as_deref(), Some("500"));
            }
            other => panic!("expected a stream error, got {other:?}"),
        }
        assert_eq!(seen, [" wor"]);
        // Unreadable frames and empty deltas (Envoy's Claude pings) are skipped.
        let (result, seen) = read(&[
            r#"{"choices":[{"index":0,"delta":{}}]}"#,
            "{not json",
            r#"{"choices":"odd"}"#,
            r#"{"choices":[{"index":0,"delta":{"content":"ok"},"finish_reason":""}]}"#,
            r#"{"choices":[{"index":0,"delta":{},"finish_reason":"stop"}]}"#,
        ]);
        assert_eq!(result.expect("complete").text, "ok");
        assert_eq!(seen, ["ok"]);
        // A refusal is shown, and said.
        let (result, seen) = read(&[
            r#"{"choices":[{"index":0,"delta":{"refusal":"I can't help with that."},"finish_reason":"stop"}]}"#,
        ]);
        assert!(result.expect("complete").refused);
        assert_eq!(seen, ["I can't help with that."]);
    }

    #[test]
    fn tool_calls_from_litellm_split_deltas_and_parallel_calls() {
        let (completion, seen) = read(&[
            r#"{"choices":[{"index":0,"delta":{"role":"assistant","tool_calls":[{"id":"call_A","function":{"arguments":"","name":"search"},"type":"function","index":0}]}}]}"#,
            r#"{"choices":[{"index":0,"delta":{"tool_calls":[{"function":{"arguments":"{\"que"},"type":"function","index":0}]}}]}"#,
            r#"{"choices":[{"index":0,"delta":{"tool_calls":[{"function":{"arguments":"ry\":\"capi"},"type":"function","index":0}]}}]}"#,
            r#"{"choices":[{"index":0,"delta":{"tool_calls":[{"function":{"arguments":"tal\"}"},"type":"function","index":0}]}}]}"#,
            r#"{"choices":[{"index":0,"delta":{"tool_calls":[{"id":"call_B","function":{"arguments":"","name":"search"},"type":"function","index":1}]}}]}"#,
            r#"{"choices":[{"index":0,"delta":{"tool_calls":[{"function":{"arguments":"{\"query\""},"type":"function","index":1}]}}]}"#,
            r#"{"choices":[{"index":0,"delta":{"tool_calls":[{"function":{"arguments":":\"France\"}"},"type":"function","index":1}]}}]}"#,
            r#"{"choices":[{"index":0,"delta":{},"finish_reason":"tool_calls"}]}"#,
            r#"{"choices":[{"index":0,"delta":{}}],"usage":{"completion_tokens":20,"prompt_tokens":50,"total_tokens":70}}"#,
            "[DONE]",
        ]);
        let completion = completion.expect("complete");
        assert!(seen.is_empty());
        let calls: Vec<(&str, &str, serde_json::Value)> = completion
            .tool_calls
            .iter()
            .map(|c| (c.id.as_str(), c.name.as_str(), c.parse_arguments().expect("json")))
            .collect();
        assert_eq!(
            calls,
            [
                ("call_A", "search", serde_json::json!({"query": "capital"})),
                ("call_B", "search", serde_json::json!({"query": "France"}))
            ]
        );
    }

    #[test]
    fn tool_calls_from_claude_and_gemini_shapes() {
        // Envoy's Claude translation: id null and name "" on continuations; no finish_reason key, then one.
        let (completion, _) = read(&[
            r#"{"id":"msg_123","choices":[{"index":0,"delta":{"role":"assistant","tool_calls":[{"index":0,"id":"toolu_abc123","function":{"arguments":"","name":"get_weather"},"type":"function"}]}}]}"#,
            r#"{"id":"msg_123","choices":[{"index":0,"delta":{"tool_calls":[{"index":0,"id":null,"function":{"arguments":"{\"location\":\"Bosto","name":""}}]}}]}"#,
            r#"{"id":"msg_123","choices":[{"index":0,"delta":{"tool_calls":[{"index":0,"id":null,"function":{"arguments":"n, MA\"}","name":""}}]}}]}"#,
            r#"{"choices":[{"index":0,"delta":{},"finish_reason":"tool_calls"}]}"#,
        ]);
        let calls = completion.expect("complete").tool_calls;
        assert_eq!(calls.len(), 1);
        assert_eq!((calls[0].id.as_str(), calls[0].name.as_str()), ("toolu_abc123", "get_weather"));
        assert_eq!(calls[0].parse_arguments().expect("json"), serde_json::json!({"location": "Boston, MA"}));

        // Gemini: complete calls, each at index 0 with its own id, finish_reason in the same chunk; a call with no
        // arguments and no id.
        let (completion, _) = read(&[
            r#"{"choices":[{"index":0,"delta":{"tool_calls":[{"index":0,"id":"7f0c","type":"function","function":{"name":"search","arguments":"{\"query\":\"a\"}"}}]}}]}"#,
            r#"{"choices":[{"index":0,"delta":{"tool_calls":[{"index":0,"id":"9e1d","type":"function","function":{"name":"search","arguments":"{\"query\":\"b\"}"}}]}}]}"#,
            r#"{"choices":[{"index":0,"delta":{"tool_calls":[{"id":"a2b3","function":{"name":"list"}}]},"finish_reason":"tool_calls"}]}"#,
        ]);
        let calls = completion.expect("complete").tool_calls;
        let got: Vec<(&str, &str, &str)> =
            calls.iter().map(|c| (c.id.as_str(), c.name.as_str(), c.arguments.as_str())).collect();
        assert_eq!(
            got,
            [("7f0c", "search", r#"{"query":"a"}"#), ("9e1d", "search", r#"{"query":"b"}"#), ("a2b3", "list", "{}")]
        );

        // A call sent without an id gets one (Envoy needs an id when it is echoed back).
        let (completion, _) = read(&[
            r#"{"choices":[{"index":0,"delta":{"tool_calls":[{"index":0,"function":{"name":"search","arguments":"{}"}}]},"finish_reason":"tool_calls"}]}"#,
        ]);
        assert_eq!(completion.expect("complete").tool_calls[0].id, "call_0");
    }

    #[test]
    fn invalid_arguments_are_reported_not_fatal() {
        let call = ToolCall { id: "c".into(), name: "search".into(), arguments: "{\"query\": ".into() };
        assert!(call.parse_arguments().expect_err("invalid").starts_with("invalid JSON arguments"));
    }

    #[test]
    fn messages_serialize_to_the_contract() {
        let completion = Completion {
            tool_calls: vec![ToolCall { id: "toolu_1".into(), name: "search".into(), arguments: "{}".into() }],
            ..Completion::default()
        };
        let messages = [Message::assistant(&completion), Message::tool("toolu_1", "[1] text")];
        assert_eq!(
            serde_json::to_value(messages).expect("json"),
            serde_json::json!([
                {"role":"assistant","content":null,"tool_calls":[{"id":"toolu_1","type":"function","function":{"name":"search","arguments":"{}"}}]},
                {"role":"tool","content":"[1] text","tool_call_id":"toolu_1"}
            ])
        );
        let image = Message {
            role: Role::User,
            content: Some(Content::Parts(vec![
                Part::Text { text: "Describe".into() },
                Part::ImageUrl { image_url: ImageUrl { url: "data:image/png;base64,AAAA".into(), detail: "high" } },
            ])),
            tool_calls: Vec::new(),
            tool_call_id: None,
        };
        assert_eq!(
            serde_json::to_value(image).expect("json"),
            serde_json::json!({"role":"user","content":[{"type":"text","text":"Describe"},{"type":"image_url","image_url":{"url":"data:image/png;base64,AAAA","detail":"high"}}]})
        );
    }

    #[test]
    fn a_whole_completion_from_a_server_that_ignores_stream() {
        let completion = whole(br#"{"id":"c","object":"chat.completion","choices":[{"index":0,"finish_reason":"tool_calls","message":{"role":"assistant","content":null,"tool_calls":[{"id":"call_X","type":"function","function":{"name":"search","arguments":"{\"query\":\"q\"}"}}]}}],"usage":{"prompt_tokens":162,"completion_tokens":219,"total_tokens":381}}"#).expect("completion");
        assert_eq!(completion.tool_calls[0].id, "call_X");
        assert_eq!(completion.usage.and_then(|u| u.total_tokens), Some(381));
    }
}
