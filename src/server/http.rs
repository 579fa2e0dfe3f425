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
use serde_json::{Value, json};

use super::api::{self, ApiError, AskRequest, SearchRequest};
use super::{Server, metrics};

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
        .route("/v1/ask", post(ask))
        .route("/v1/datasets", get(datasets))
        .route("/v1/datasets/{name}", get(dataset))
        .route("/v1/datasets/{name}/documents/{*doc}", get(document))
        .nest_service("/mcp", super::mcp::streamable_http(Arc::clone(&server)))
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

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let mut response = (self.status, axum::Json(self.body())).into_response();
        if self.status == StatusCode::UNAUTHORIZED {
            response.headers_mut().insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
        }
        response
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
    let mut response = response;
    // The time spent here, for clients and load generators to tell the server's share from the network's.
    if let Ok(value) = HeaderValue::from_str(&format!("app;dur={:.3}", took.as_secs_f64() * 1e3)) {
        response.headers_mut().insert("server-timing", value);
    }
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

async fn search(
    State(server): State<Arc<Server>>,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Result<axum::Json<Value>, ApiError> {
    let request: SearchRequest = json_body(&server, &headers, body)?;
    api::search(&server, request).await.map(axum::Json)
}

/// `POST /v1/ask`: a request that cannot be answered gets a JSON error as any other; one that can, a stream of
/// server-sent events: `sources` (`{"first", "sources": [...]}`, as they are found), `text` (`{"text"}`, the answer
/// as it arrives), then `answer` (the whole answer, as `ask --json` prints it) or `error` (`{"error": {...}}`).
/// A client that hangs up stops the answer being generated (and paid for).
async fn ask(State(server): State<Arc<Server>>, headers: HeaderMap, body: Result<Bytes, BytesRejection>) -> Response {
    use axum::response::sse::{Event, KeepAlive, Sse};
    let prepared = match json_body::<AskRequest>(&server, &headers, body) {
        Ok(request) => api::prepare_ask(&server, request).await,
        Err(e) => Err(e),
    };
    let ask = match prepared {
        Ok(ask) => ask,
        Err(e) => return e.into_response(),
    };
    let (events, received) = tokio::sync::mpsc::unbounded_channel::<Event>();
    let task = tokio::spawn(async move {
        let send = |name: &str, data: Value| {
            let _ = events.send(Event::default().event(name).data(data.to_string()));
        };
        let mut sink = |event: crate::query::ask::AskEvent<'_>| match event {
            crate::query::ask::AskEvent::Sources { first, hits } => {
                let sources: Vec<Value> =
                    hits.iter().enumerate().map(|(i, hit)| crate::query::json::source(first + i, hit, false)).collect();
                send("sources", json!({ "first": first, "sources": sources }));
            }
            crate::query::ask::AskEvent::Text(text) => send("text", json!({ "text": text })),
        };
        match ask.run(&mut sink).await {
            Ok(asked) => send("answer", ask.json(&asked)),
            Err(e) => send("error", ApiError::from(e).body()),
        }
    });
    // The task lives as long as the response's body: dropped with it when the client goes.
    let stream = futures::stream::unfold((received, AbortOnDrop(task)), |(mut received, task)| async move {
        received.recv().await.map(|event| (Ok::<_, std::convert::Infallible>(event), (received, task)))
    });
    Sse::new(stream).keep_alive(KeepAlive::default()).into_response()
}

/// Aborts a task when dropped.
struct AbortOnDrop(tokio::task::JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

async fn datasets(State(server): State<Arc<Server>>) -> Result<axum::Json<Value>, ApiError> {
    api::datasets(&server).await.map(axum::Json)
}

async fn dataset(State(server): State<Arc<Server>>, Path(name): Path<String>) -> Result<axum::Json<Value>, ApiError> {
    api::dataset(&server, Some(&name)).await.map(axum::Json)
}

async fn document(
    State(server): State<Arc<Server>>,
    Path((name, doc)): Path<(String, String)>,
) -> Result<axum::Json<Value>, ApiError> {
    api::document(&server, Some(&name), &doc).await.map(axum::Json)
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
