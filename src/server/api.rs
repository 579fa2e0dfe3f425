//! What the HTTP API and MCP both do, once: pick a dataset, check a request against the limits, run it on the query
//! engine within the deadline, and shape the answer as JSON. Errors are [`ApiError`]s: a status, a stable code and
//! a message that says what to fix.

use std::sync::Arc;
use std::time::Instant;

use axum::http::StatusCode;
use serde::Deserialize;
use serde_json::{Value, json};

use super::{Served, Server};
use crate::embed::EmbedError;
use crate::query::ask::{self, AskError, AskSettings, AskSink, Asked};
use crate::query::{Filter, Mode, QueryError, TextQuery, json as hits_json};
use crate::tars::chat::{ChatClient, ChatError};

/// An error answer.
#[derive(Debug)]
pub struct ApiError {
    pub status: StatusCode,
    pub code: &'static str,
    pub message: String,
    /// More fields of the error object (a filter error's column).
    detail: serde_json::Map<String, Value>,
}

impl ApiError {
    pub fn new(status: StatusCode, code: &'static str, message: impl Into<String>) -> Self {
        Self { status, code, message: message.into(), detail: serde_json::Map::new() }
    }

    pub fn bad(code: &'static str, message: impl Into<String>) -> Self {
        Self::new(StatusCode::BAD_REQUEST, code, message)
    }

    pub fn body(&self) -> Value {
        let mut error = self.detail.clone();
        error.insert("code".into(), self.code.into());
        error.insert("message".into(), self.message.clone().into());
        json!({ "error": error })
    }
}

impl From<QueryError> for ApiError {
    fn from(e: QueryError) -> Self {
        let message = e.to_string();
        match e {
            QueryError::Filter(e) => {
                let mut error = Self::bad("bad_filter", format!("filter at column {}: {}", e.column(), e.message));
                error.detail.insert("column".into(), e.column().into());
                error.detail.insert("expression".into(), e.expr.into());
                error
            }
            QueryError::EmptyQuery => Self::bad("empty_query", message),
            QueryError::QueryTooLong(_) => Self::bad("query_too_long", message),
            e if e.is_usage() => Self::bad("bad_request", message),
            QueryError::Embed(
                EmbedError::Exhausted { .. } | EmbedError::Unavailable { .. } | EmbedError::Quota { .. },
            ) => Self::new(StatusCode::SERVICE_UNAVAILABLE, "embedding_unavailable", message),
            QueryError::Embed(_) => Self::new(StatusCode::BAD_GATEWAY, "embedding_failed", message),
            QueryError::Unsettled { .. } => Self::new(StatusCode::SERVICE_UNAVAILABLE, "dataset_changing", message),
            _ => Self::new(StatusCode::INTERNAL_SERVER_ERROR, "internal", message),
        }
    }
}

pub fn loaded(server: &Server) -> Result<&std::collections::BTreeMap<String, Arc<Served>>, ApiError> {
    server.datasets().ok_or_else(|| {
        ApiError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "loading",
            "the datasets are still loading; GET /readyz says when",
        )
    })
}

/// The dataset `name` names, or the only one served when no name is given.
pub fn pick<'a>(server: &'a Server, name: Option<&str>) -> Result<&'a Arc<Served>, ApiError> {
    let datasets = loaded(server)?;
    let known = || server.names.join(", ");
    match name {
        Some(name) => datasets.get(name).ok_or_else(|| {
            ApiError::new(StatusCode::NOT_FOUND, "unknown_dataset", format!("no dataset {name:?}; served: {}", known()))
        }),
        None if datasets.len() == 1 => datasets.values().next().ok_or_else(|| ApiError::bad("no_dataset", "")),
        None => {
            Err(ApiError::bad("no_dataset", format!("\"dataset\" is required: more than one is served ({})", known())))
        }
    }
}

/// Runs blocking engine work off the async workers, within the request deadline.
pub async fn blocking<T: Send + 'static>(
    server: &Server,
    work: impl FnOnce() -> Result<T, QueryError> + Send + 'static,
) -> Result<T, ApiError> {
    let task = tokio::task::spawn_blocking(work);
    match tokio::time::timeout(server.limits.deadline, task).await {
        Ok(Ok(result)) => result.map_err(ApiError::from),
        Ok(Err(e)) => Err(ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, "internal", format!("worker failed: {e}"))),
        Err(_) => Err(deadline(server)),
    }
}

pub fn deadline(server: &Server) -> ApiError {
    ApiError::new(
        StatusCode::GATEWAY_TIMEOUT,
        "deadline",
        format!("no answer within the server's deadline of {} s", server.limits.deadline.as_secs_f64()),
    )
}

/// What `POST /v1/search` takes (and MCP's `search` tool, less the batch and tuning fields).
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SearchRequest {
    pub dataset: Option<String>,
    pub query: Option<String>,
    pub queries: Option<Vec<String>>,
    pub k: Option<u64>,
    pub mode: Option<String>,
    pub filter: Option<String>,
    #[serde(default)]
    pub explain: bool,
    pub ef: Option<u64>,
    pub rrf_k: Option<f64>,
    pub candidates: Option<u64>,
}

/// Checks a whole-number field against its range.
fn ranged(name: &str, value: Option<u64>, default: usize, max: usize) -> Result<usize, ApiError> {
    match value {
        None => Ok(default),
        Some(v) if v >= 1 && v <= max as u64 => Ok(v as usize),
        Some(v) => Err(ApiError::bad("out_of_range", format!("\"{name}\" must be from 1 to {max} (got {v})"))),
    }
}

fn parse_mode(mode: Option<&str>) -> Result<Option<Mode>, ApiError> {
    match mode {
        None => Ok(None),
        Some(name) => Mode::parse(name).map(Some).ok_or_else(|| {
            ApiError::bad("bad_mode", format!("\"mode\" must be vector, keyword or hybrid (got {name:?})"))
        }),
    }
}

/// A request's filter, within the size limit and parsed against the dataset's columns.
async fn parse_filter(server: &Server, served: &Arc<Served>, filter: Option<&str>) -> Result<Option<Filter>, ApiError> {
    match filter.filter(|f| !f.trim().is_empty()) {
        Some(f) if f.len() > server.limits.max_filter => Err(ApiError::bad(
            "filter_too_long",
            format!("\"filter\" is {} bytes, more than the limit of {}", f.len(), server.limits.max_filter),
        )),
        Some(f) => {
            let engine = Arc::clone(served.searcher.engine());
            let f = f.to_owned();
            Ok(Some(blocking(server, move || Ok(Filter::parse(&f, &engine.columns()?)?)).await?))
        }
        None => Ok(None),
    }
}

/// Answers a search request: one query, or a batch against one version.
pub async fn search(server: &Server, request: SearchRequest) -> Result<Value, ApiError> {
    let served = Arc::clone(pick(server, request.dataset.as_deref())?);
    let limits = server.limits;
    let (texts, batch) = match (request.query, request.queries) {
        (Some(query), None) => (vec![query], false),
        (None, Some(queries)) if queries.is_empty() => {
            return Err(ApiError::bad("empty_batch", "\"queries\" is empty"));
        }
        (None, Some(queries)) if queries.len() > limits.max_batch => {
            return Err(ApiError::bad(
                "batch_too_large",
                format!("at most {} queries per request (got {})", limits.max_batch, queries.len()),
            ));
        }
        (None, Some(queries)) => (queries, true),
        (Some(_), Some(_)) => return Err(ApiError::bad("bad_request", "give \"query\" or \"queries\", not both")),
        (None, None) => {
            return Err(ApiError::bad("bad_request", "\"query\" (a string) or \"queries\" (strings) is required"));
        }
    };
    if let Some((i, text)) = texts.iter().enumerate().find(|(_, t)| t.len() > limits.max_query) {
        let at = if batch { format!("queries[{i}]") } else { "query".to_owned() };
        return Err(ApiError::bad(
            "query_too_long",
            format!("\"{at}\" is {} bytes, more than the limit of {}", text.len(), limits.max_query),
        ));
    }
    let mode = parse_mode(request.mode.as_deref())?;
    let filter = parse_filter(server, &served, request.filter.as_deref()).await?;
    let rrf_k = match request.rrf_k {
        None => crate::query::DEFAULT_RRF_K,
        Some(k) if k.is_finite() && k > 0.0 => k,
        Some(k) => return Err(ApiError::bad("out_of_range", format!("\"rrf_k\" must be a positive number (got {k})"))),
    };
    let base = TextQuery {
        k: ranged("k", request.k, 10, limits.max_k)?,
        ef: ranged("ef", request.ef, crate::index::DEFAULT_EF_SEARCH, 10_000)?,
        documents: true,
        filter,
        mode,
        rrf_k,
        candidates: ranged("candidates", request.candidates, crate::query::DEFAULT_CANDIDATES, 10_000)?,
        ..TextQuery::new("")
    };
    if base.k * texts.len() > limits.max_hits {
        return Err(ApiError::bad(
            "too_many_hits",
            format!(
                "k × queries is {}, more than the limit of {} hits per request",
                base.k * texts.len(),
                limits.max_hits
            ),
        ));
    }
    let filtered = base.filter.is_some();
    let queries: Vec<TextQuery> = texts.into_iter().map(|text| TextQuery { text, ..base.clone() }).collect();

    let started = Instant::now();
    let answers = match tokio::time::timeout(limits.deadline, served.searcher.search_batch(&queries)).await {
        Ok(answers) => answers.inspect_err(|_| server.metrics.search_error(&served.name))?,
        Err(_) => {
            server.metrics.search_error(&served.name);
            return Err(deadline(server));
        }
    };
    let took = started.elapsed();
    let mut results = Vec::with_capacity(answers.len());
    for answer in answers {
        match answer {
            Ok(answer) => {
                server.metrics.search(&served.name, answer.mode.name(), filtered, took);
                let hits: Vec<Value> =
                    answer.hits.iter().enumerate().map(|(i, hit)| hits_json::hit(i + 1, hit)).collect();
                let mut result = json!({ "version": answer.generation, "mode": answer.mode, "hits": hits });
                if request.explain
                    && let Some(object) = result.as_object_mut()
                {
                    object.insert("explain".into(), hits_json::explain(&answer));
                }
                results.push(Ok(result));
            }
            Err(e) => {
                server.metrics.search_error(&served.name);
                results.push(Err(ApiError::from(e)));
            }
        }
    }
    if !batch {
        let result = results
            .pop()
            .unwrap_or_else(|| Err(ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, "internal", "no answer")))?;
        let mut result = result;
        if let Some(object) = result.as_object_mut() {
            object.insert("dataset".into(), served.name.clone().into());
        }
        return Ok(result);
    }
    let results: Vec<Value> = results.into_iter().map(|r| r.unwrap_or_else(|e| e.body())).collect();
    Ok(json!({ "dataset": served.name, "results": results }))
}

/// Every dataset served, described.
pub async fn datasets(server: &Server) -> Result<Value, ApiError> {
    let mut listed = Vec::new();
    for served in loaded(server)?.values() {
        listed.push(describe(server, served).await?);
    }
    Ok(json!({ "datasets": listed }))
}

/// One dataset, described: its model, size, version, metadata columns and indexes.
pub async fn dataset(server: &Server, name: Option<&str>) -> Result<Value, ApiError> {
    describe(server, pick(server, name)?).await
}

async fn describe(server: &Server, served: &Arc<Served>) -> Result<Value, ApiError> {
    let engine = Arc::clone(served.searcher.engine());
    let summary = blocking(server, move || engine.summary()).await?;
    let updated = crate::source::meta::format_timestamp(summary.updated_unix as i64 * 1_000_000);
    Ok(json!({
        "name": served.name, "model": summary.model, "dimensions": summary.dimensions, "rows": summary.rows,
        "documents": summary.documents, "version": summary.generation, "updated": updated,
        "metadata": summary.metadata, "keyword_index": summary.keyword_index, "vector_index": summary.vector_index,
    }))
}

/// A document's fields and its chunks in order.
pub async fn document(server: &Server, name: Option<&str>, doc: &str) -> Result<Value, ApiError> {
    let served = pick(server, name)?;
    let engine = Arc::clone(served.searcher.engine());
    let wanted = doc.to_owned();
    let found = blocking(server, move || engine.document(&wanted)).await?;
    let Some(document) = found else {
        return Err(ApiError::new(
            StatusCode::NOT_FOUND,
            "unknown_document",
            format!("dataset {:?} has no document {doc:?}", served.name),
        ));
    };
    let mut out = hits_json::document(&document.record);
    out.insert("doc".into(), document.record.doc.clone().into());
    out.insert("chunks".into(), document.chunks.iter().map(hits_json::chunk).collect::<Vec<_>>().into());
    Ok(Value::Object(out))
}

/// Live chunks matching `filter` (all of them without one).
pub async fn count(server: &Server, name: Option<&str>, filter: Option<&str>) -> Result<Value, ApiError> {
    let served = pick(server, name)?;
    let filter = filter.filter(|f| !f.trim().is_empty()).map(str::to_owned);
    if let Some(f) = &filter
        && f.len() > server.limits.max_filter
    {
        return Err(ApiError::bad(
            "filter_too_long",
            format!("the filter is more than {} bytes", server.limits.max_filter),
        ));
    }
    let engine = Arc::clone(served.searcher.engine());
    let count = blocking(server, move || {
        let filter = match filter {
            Some(f) => Some(Filter::parse(&f, &engine.columns()?)?),
            None => None,
        };
        engine.count(filter.as_ref())
    })
    .await?;
    Ok(json!({ "dataset": served.name, "count": count }))
}

/// What `POST /v1/ask` and MCP's `ask` tool take.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AskRequest {
    pub dataset: Option<String>,
    pub question: String,
    pub k: Option<u64>,
    pub mode: Option<String>,
    pub filter: Option<String>,
    #[serde(default)]
    pub agent: bool,
    pub max_steps: Option<u64>,
    pub max_tokens: Option<u64>,
    pub temperature: Option<f32>,
}

/// An ask request, checked and ready to run.
pub struct Ask {
    pub served: Arc<Served>,
    pub chat: Arc<ChatClient>,
    pub question: String,
    query: TextQuery,
    settings: AskSettings,
    /// `--agent`'s step limit, when the model searches itself.
    agent: Option<usize>,
}

impl From<AskError> for ApiError {
    fn from(e: AskError) -> Self {
        match e {
            AskError::Query(e) => e.into(),
            AskError::Chat(e) => {
                let message = e.to_string();
                match e {
                    ChatError::Invalid(_) => Self::bad("bad_request", message),
                    ChatError::Quota { .. } | ChatError::Exhausted { .. } => {
                        Self::new(StatusCode::SERVICE_UNAVAILABLE, "chat_unavailable", message)
                    }
                    ChatError::Rejected { .. } | ChatError::Client(_) => {
                        Self::new(StatusCode::BAD_GATEWAY, "chat_refused", message)
                    }
                    _ => Self::new(StatusCode::BAD_GATEWAY, "chat_failed", message),
                }
            }
        }
    }
}

/// Checks an ask request against the limits, the dataset and the chat model, before anything is sent.
pub async fn prepare_ask(server: &Server, request: AskRequest) -> Result<Ask, ApiError> {
    let Some(chat) = server.chat.clone() else {
        return Err(ApiError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "chat_off",
            "this server answers no questions: it was started without TARS_API_KEY",
        ));
    };
    let served = Arc::clone(pick(server, request.dataset.as_deref())?);
    if request.question.trim().is_empty() {
        return Err(QueryError::EmptyQuery.into());
    }
    if request.question.len() > server.limits.max_query {
        return Err(ApiError::bad(
            "query_too_long",
            format!(
                "\"question\" is {} bytes, more than the limit of {}",
                request.question.len(),
                server.limits.max_query
            ),
        ));
    }
    let query = TextQuery {
        k: ranged("k", request.k, crate::query::ask::DEFAULT_SOURCES, 50)?,
        documents: true,
        filter: parse_filter(server, &served, request.filter.as_deref()).await?,
        mode: parse_mode(request.mode.as_deref())?,
        ..TextQuery::new(&request.question)
    };
    let max_tokens =
        request.max_tokens.map(|t| ranged("max_tokens", Some(t), 0, 100_000).map(|t| t as u32)).transpose()?;
    let settings = AskSettings { max_tokens, temperature: request.temperature };
    settings.check(&chat, &request.question).map_err(AskError::from)?;
    let agent = match request.agent {
        true => Some(ranged("max_steps", request.max_steps, 4, 32)?),
        false => None,
    };
    Ok(Ask { served, chat, question: request.question, query, settings, agent })
}

impl Ask {
    /// Retrieves and streams the answer into `sink`.
    pub async fn run(&self, sink: &mut AskSink<'_>) -> Result<Asked, AskError> {
        let (searcher, chat) = (&self.served.searcher, &*self.chat);
        match self.agent {
            Some(steps) => ask::ask_agent(searcher, chat, &self.query, self.settings, steps, sink).await,
            None => ask::ask(searcher, chat, &self.query, self.settings, sink).await,
        }
    }

    /// The answer's JSON, as `ask --json` prints it, plus the dataset.
    pub fn json(&self, asked: &Asked) -> Value {
        let mut out = hits_json::asked(&self.question, self.chat.model(), asked);
        if let Some(object) = out.as_object_mut() {
            object.insert("dataset".into(), self.served.name.clone().into());
        }
        out
    }
}

/// Answers an ask request whole (for MCP, which has no stream to the user).
pub async fn ask(server: &Server, request: AskRequest) -> Result<Value, ApiError> {
    let ask = prepare_ask(server, request).await?;
    let asked = ask.run(&mut |_| {}).await?;
    Ok(ask.json(&asked))
}
