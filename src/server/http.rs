//! The HTTP API (documented in README.md and `/openapi.json`), the search page, and graceful shutdown.
//!
//! Every error is JSON, `{"error": {"code": ..., "message": ...}}`, with a 4xx status when the client can fix it:
//! bodies, content types and fields are checked here, so no request reaches the engine unbounded.

use std::future::Future;
use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::Router;
use axum::body::Bytes;
use axum::extract::rejection::BytesRejection;
use axum::extract::{DefaultBodyLimit, MatchedPath, Path, Request, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use serde::Deserialize;
use serde_json::{Value, json};

use super::{Served, Server, metrics};
use crate::embed::EmbedError;
use crate::query::{Filter, Mode, QueryError, TextQuery, json as hits_json};

const PAGE: &str = include_str!("page.html");
const OPENAPI: &str = include_str!("openapi.json");

/// The routes, with authentication, metrics and body limits around them.
pub fn router(server: Arc<Server>) -> Router {
    Router::new()
        .route("/", get(page))
        .route("/openapi.json", get(openapi))
        .route("/healthz", get(healthz))
        .route("/readyz", get(readyz))
        .route("/metrics", get(metrics_text))
        .route("/v1/search", post(search))
        .route("/v1/datasets", get(datasets))
        .route("/v1/datasets/{name}", get(dataset))
        .route("/v1/datasets/{name}/documents/{*doc}", get(document))
        .fallback(not_found)
        .method_not_allowed_fallback(method_not_allowed)
        .layer(middleware::from_fn_with_state(Arc::clone(&server), guard))
        // The handlers check the size themselves (to answer in JSON); this keeps the body from being read past it.
        .layer(DefaultBodyLimit::max(server.limits.max_body))
        .with_state(server)
}

/// Serves until `shutdown` resolves, then stops accepting and lets the requests in flight finish, for at most
/// `drain`.
pub async fn run(
    listener: tokio::net::TcpListener,
    server: Arc<Server>,
    shutdown: impl Future<Output = ()> + Send + 'static,
    drain: Duration,
) -> std::io::Result<()> {
    let (stopping, mut stopped) = tokio::sync::watch::channel(false);
    let signal = async move {
        shutdown.await;
        tracing::info!("shutting down: no new connections; finishing the requests in flight");
        let _ = stopping.send(true);
    };
    let serving = axum::serve(listener, router(server)).with_graceful_shutdown(signal);
    let deadline = async move {
        let _ = stopped.wait_for(|s| *s).await;
        tokio::time::sleep(drain).await;
    };
    tokio::select! {
        result = serving.into_future() => result,
        () = deadline => {
            tracing::warn!("requests were still in flight {} s after the shutdown began; stopping anyway", drain.as_secs());
            Ok(())
        }
    }
}

/// An error answer.
#[derive(Debug)]
pub struct ApiError {
    status: StatusCode,
    code: &'static str,
    message: String,
    /// More fields of the error object (a filter error's column).
    detail: serde_json::Map<String, Value>,
}

impl ApiError {
    fn new(status: StatusCode, code: &'static str, message: impl Into<String>) -> Self {
        Self { status, code, message: message.into(), detail: serde_json::Map::new() }
    }

    fn bad(code: &'static str, message: impl Into<String>) -> Self {
        Self::new(StatusCode::BAD_REQUEST, code, message)
    }

    fn body(&self) -> Value {
        let mut error = self.detail.clone();
        error.insert("code".into(), self.code.into());
        error.insert("message".into(), self.message.clone().into());
        json!({ "error": error })
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let mut response = (self.status, axum::Json(self.body())).into_response();
        if self.status == StatusCode::UNAUTHORIZED {
            response.headers_mut().insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
        }
        response
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

/// Authentication, then the request's metrics and log line.
async fn guard(State(server): State<Arc<Server>>, request: Request, next: Next) -> Response {
    let started = Instant::now();
    let endpoint = request.extensions().get::<MatchedPath>().map_or("unmatched", |p| p.as_str()).to_owned();
    let method = request.method().clone();
    let open = matches!(endpoint.as_str(), "/" | "/healthz" | "/readyz" | "/openapi.json");
    let declared = request.headers().get(header::CONTENT_LENGTH).and_then(|v| v.to_str().ok()?.parse::<u64>().ok());
    let response = match &server.token {
        Some(token) if !open && !authorized(request.headers(), token) => ApiError::new(
            StatusCode::UNAUTHORIZED,
            "unauthorized",
            "this server needs `Authorization: Bearer <token>` with the token it was started with",
        )
        .into_response(),
        // Refused before it is read, rather than after a megabyte of it.
        _ if declared.is_some_and(|n| n > server.limits.max_body as u64) => too_large(&server).into_response(),
        _ => next.run(request).await,
    };
    let took = started.elapsed();
    let status = response.status().as_u16();
    server.metrics.request(&endpoint, status, took);
    tracing::info!(%method, endpoint, status, ms = took.as_secs_f64() * 1e3, "request");
    response
}

/// Whether the request carries the bearer token (compared in time independent of where they differ).
fn authorized(headers: &HeaderMap, token: &str) -> bool {
    let Some(given) = headers.get(header::AUTHORIZATION).and_then(|v| v.to_str().ok()) else {
        return false;
    };
    let Some(given) = given.strip_prefix("Bearer ").or_else(|| given.strip_prefix("bearer ")) else {
        return false;
    };
    let (a, b) = (given.trim().as_bytes(), token.as_bytes());
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

async fn page() -> Response {
    ([(header::CONTENT_TYPE, "text/html; charset=utf-8")], PAGE).into_response()
}

async fn openapi() -> Response {
    ([(header::CONTENT_TYPE, "application/json")], OPENAPI).into_response()
}

async fn healthz() -> axum::Json<Value> {
    axum::Json(json!({ "status": "ok" }))
}

async fn readyz(State(server): State<Arc<Server>>) -> Response {
    if server.is_ready() {
        return axum::Json(json!({ "status": "ready", "datasets": server.names })).into_response();
    }
    let status = if server.has_failed() { "failed" } else { "loading" };
    (StatusCode::SERVICE_UNAVAILABLE, axum::Json(json!({ "status": status, "datasets": server.names }))).into_response()
}

async fn metrics_text(State(server): State<Arc<Server>>) -> Result<Response, ApiError> {
    let text = server
        .metrics
        .encode(server.datasets())
        .map_err(|e| ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, "internal", e.to_string()))?;
    Ok(([(header::CONTENT_TYPE, metrics::CONTENT_TYPE)], text).into_response())
}

async fn not_found() -> ApiError {
    ApiError::new(StatusCode::NOT_FOUND, "not_found", "no such endpoint; GET /openapi.json lists them")
}

async fn method_not_allowed() -> ApiError {
    ApiError::new(StatusCode::METHOD_NOT_ALLOWED, "method_not_allowed", "this endpoint does not take that method")
}

fn loaded(server: &Server) -> Result<&std::collections::BTreeMap<String, Arc<Served>>, ApiError> {
    server.datasets().ok_or_else(|| {
        ApiError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "loading",
            "the datasets are still loading; GET /readyz says when",
        )
    })
}

/// The dataset `name` names, or the only one served when no name is given.
fn pick<'a>(server: &'a Server, name: Option<&str>) -> Result<&'a Arc<Served>, ApiError> {
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
async fn blocking<T: Send + 'static>(
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

fn deadline(server: &Server) -> ApiError {
    ApiError::new(
        StatusCode::GATEWAY_TIMEOUT,
        "deadline",
        format!("no answer within the server's deadline of {} s", server.limits.deadline.as_secs_f64()),
    )
}

fn too_large(server: &Server) -> ApiError {
    ApiError::new(
        StatusCode::PAYLOAD_TOO_LARGE,
        "body_too_large",
        format!("the body is larger than the server's limit of {} bytes", server.limits.max_body),
    )
}

/// A JSON body: the right content type, within the size limit, parsed with errors that say where.
fn json_body<T: serde::de::DeserializeOwned>(
    server: &Server,
    headers: &HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Result<T, ApiError> {
    let content_type = headers.get(header::CONTENT_TYPE).and_then(|v| v.to_str().ok()).unwrap_or("");
    let essence = content_type.split(';').next().unwrap_or("").trim();
    if !essence.eq_ignore_ascii_case("application/json") {
        return Err(ApiError::new(
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            "content_type",
            format!("send the body as `Content-Type: application/json` (got {content_type:?})"),
        ));
    }
    let body = body.map_err(|e| match e.status() {
        StatusCode::PAYLOAD_TOO_LARGE => too_large(server),
        status => ApiError::new(status, "bad_body", e.body_text()),
    })?;
    serde_json::from_slice(&body)
        .map_err(|e| ApiError::bad("bad_json", format!("the body is not a valid request: {e}")))
}

/// `POST /v1/search`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct SearchRequest {
    dataset: Option<String>,
    query: Option<String>,
    queries: Option<Vec<String>>,
    k: Option<u64>,
    mode: Option<String>,
    filter: Option<String>,
    #[serde(default)]
    explain: bool,
    ef: Option<u64>,
    rrf_k: Option<f64>,
    candidates: Option<u64>,
}

/// Checks a whole-number field against its range.
fn ranged(name: &str, value: Option<u64>, default: usize, max: usize) -> Result<usize, ApiError> {
    match value {
        None => Ok(default),
        Some(v) if v >= 1 && v <= max as u64 => Ok(v as usize),
        Some(v) => Err(ApiError::bad("out_of_range", format!("\"{name}\" must be from 1 to {max} (got {v})"))),
    }
}

async fn search(
    State(server): State<Arc<Server>>,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Result<axum::Json<Value>, ApiError> {
    let request: SearchRequest = json_body(&server, &headers, body)?;
    let served = Arc::clone(pick(&server, request.dataset.as_deref())?);
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
    let mode = match request.mode.as_deref() {
        None => None,
        Some(name) => Some(Mode::parse(name).ok_or_else(|| {
            ApiError::bad("bad_mode", format!("\"mode\" must be vector, keyword or hybrid (got {name:?})"))
        })?),
    };
    let filter = match request.filter.as_deref().filter(|f| !f.trim().is_empty()) {
        Some(f) if f.len() > limits.max_filter => {
            return Err(ApiError::bad(
                "filter_too_long",
                format!("\"filter\" is {} bytes, more than the limit of {}", f.len(), limits.max_filter),
            ));
        }
        Some(f) => {
            let engine = Arc::clone(served.searcher.engine());
            let f = f.to_owned();
            Some(blocking(&server, move || Ok(Filter::parse(&f, &engine.columns()?)?)).await?)
        }
        None => None,
    };
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
    let filtered = base.filter.is_some();
    let queries: Vec<TextQuery> = texts.into_iter().map(|text| TextQuery { text, ..base.clone() }).collect();

    let started = Instant::now();
    let answers = match tokio::time::timeout(limits.deadline, served.searcher.search_batch(&queries)).await {
        Ok(answers) => answers.inspect_err(|_| server.metrics.search_error(&served.name))?,
        Err(_) => {
            server.metrics.search_error(&served.name);
            return Err(deadline(&server));
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
        return Ok(axum::Json(result));
    }
    let results: Vec<Value> = results.into_iter().map(|r| r.unwrap_or_else(|e| e.body())).collect();
    Ok(axum::Json(json!({ "dataset": served.name, "results": results })))
}

async fn datasets(State(server): State<Arc<Server>>) -> Result<axum::Json<Value>, ApiError> {
    let mut listed = Vec::new();
    for served in loaded(&server)?.values() {
        listed.push(describe(&server, served).await?);
    }
    Ok(axum::Json(json!({ "datasets": listed })))
}

async fn dataset(State(server): State<Arc<Server>>, Path(name): Path<String>) -> Result<axum::Json<Value>, ApiError> {
    let served = pick(&server, Some(&name))?;
    Ok(axum::Json(describe(&server, served).await?))
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

async fn document(
    State(server): State<Arc<Server>>,
    Path((name, doc)): Path<(String, String)>,
) -> Result<axum::Json<Value>, ApiError> {
    let served = pick(&server, Some(&name))?;
    let engine = Arc::clone(served.searcher.engine());
    let wanted = doc.clone();
    let found = blocking(&server, move || engine.document(&wanted)).await?;
    let Some(document) = found else {
        return Err(ApiError::new(
            StatusCode::NOT_FOUND,
            "unknown_document",
            format!("dataset {name:?} has no document {doc:?}"),
        ));
    };
    let mut out = hits_json::document(&document.record);
    out.insert("doc".into(), document.record.doc.clone().into());
    out.insert("chunks".into(), document.chunks.iter().map(hits_json::chunk).collect::<Vec<_>>().into());
    Ok(axum::Json(Value::Object(out)))
}
