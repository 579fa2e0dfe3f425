//! A mock Qdrant REST server on 127.0.0.1 (no Qdrant server can be installed here): collections, aliases, points,
//! filters on `doc`, scroll, count and an exact cosine query. Every request body is parsed into types that mirror
//! Qdrant's OpenAPI schemas (`CreateCollection`, `PointsList`, `PointsSelector`, `SetPayload`, `ScrollRequest`,
//! `ChangeAliasesOperation`, ...) with unknown fields refused, so a body Qdrant would reject fails the test.

// The handlers' error is the HTTP answer itself, returned with `?`: its size does not matter in a mock.
#![allow(clippy::result_large_err)]

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex};

use axum::Router;
use axum::extract::{Path, RawQuery, State};
use axum::http::{HeaderMap, Method, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::any;
use serde::Deserialize;
use serde_json::{Map, Value, json};

#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Deserialize)]
#[serde(untagged)]
pub enum PointId {
    Num(u64),
    Uuid(String),
}

impl PointId {
    fn json(&self) -> Value {
        match self {
            PointId::Num(n) => json!(n),
            PointId::Uuid(s) => json!(s),
        }
    }
}

// Fields the mock does not act on are here so that their schema's other members parse.
#[allow(dead_code)]
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct HnswConfigDiff {
    m: Option<u64>,
    ef_construct: Option<u64>,
    full_scan_threshold: Option<u64>,
    max_indexing_threads: Option<u64>,
    on_disk: Option<bool>,
    payload_m: Option<u64>,
}

#[derive(Debug, Deserialize)]
enum Distance {
    Cosine,
    Euclid,
    Dot,
    Manhattan,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct VectorParams {
    size: usize,
    distance: Distance,
    hnsw_config: Option<HnswConfigDiff>,
    on_disk: Option<bool>,
}

// Fields the mock does not act on are here so that their schema's other members parse.
#[allow(dead_code)]
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct CreateCollection {
    vectors: VectorParams,
    hnsw_config: Option<HnswConfigDiff>,
    shard_number: Option<u32>,
    replication_factor: Option<u32>,
    on_disk_payload: Option<bool>,
    optimizers_config: Option<Value>,
    wal_config: Option<Value>,
    quantization_config: Option<Value>,
}

// Fields the mock does not act on are here so that their schema's other members parse.
#[allow(dead_code)]
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct UpdateCollection {
    hnsw_config: Option<HnswConfigDiff>,
    optimizers_config: Option<Value>,
    params: Option<Value>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct CreateFieldIndex {
    field_name: String,
    field_schema: Option<Value>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct PointStruct {
    id: PointId,
    vector: Vec<f32>,
    payload: Option<Map<String, Value>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct PointsList {
    points: Vec<PointStruct>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct Match {
    value: Option<Value>,
    any: Option<Vec<Value>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct FieldCondition {
    key: String,
    r#match: Match,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct Filter {
    must: Option<Vec<FieldCondition>>,
}

impl Filter {
    fn matches(&self, payload: &Map<String, Value>) -> bool {
        self.must.iter().flatten().all(|c| {
            let v = payload.get(&c.key).unwrap_or(&Value::Null);
            c.r#match.value.as_ref().is_none_or(|want| want == v)
                && c.r#match.any.as_ref().is_none_or(|any| any.contains(v))
        })
    }
}

#[derive(Debug, Deserialize)]
#[serde(untagged)]
enum PointsSelector {
    Ids { points: Vec<PointId> },
    Filter { filter: Filter },
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct SetPayload {
    payload: Map<String, Value>,
    points: Option<Vec<PointId>>,
    filter: Option<Filter>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
enum UpdateOperation {
    #[serde(rename = "set_payload")]
    SetPayload(SetPayload),
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct UpdateOperations {
    operations: Vec<UpdateOperation>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct ScrollRequest {
    offset: Option<PointId>,
    limit: Option<usize>,
    filter: Option<Filter>,
    with_payload: Option<bool>,
    with_vector: Option<bool>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct PointRequest {
    ids: Vec<PointId>,
    with_payload: Option<bool>,
    with_vector: Option<bool>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct CountRequest {
    filter: Option<Filter>,
    exact: Option<bool>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct QueryRequest {
    query: Vec<f32>,
    limit: Option<usize>,
    with_payload: Option<bool>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct CreateAlias {
    collection_name: String,
    alias_name: String,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct DeleteAlias {
    alias_name: String,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
enum AliasOperation {
    #[serde(rename = "create_alias")]
    Create(CreateAlias),
    #[serde(rename = "delete_alias")]
    Delete(DeleteAlias),
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct ChangeAliasesOperation {
    actions: Vec<AliasOperation>,
}

#[derive(Debug, Default)]
pub struct Collection {
    pub dims: usize,
    pub hnsw_m: Option<u64>,
    pub indexed: Vec<String>,
    pub points: BTreeMap<PointId, (Vec<f32>, Map<String, Value>)>,
}

#[derive(Debug, Default)]
pub struct QdrantState {
    pub collections: HashMap<String, Collection>,
    pub aliases: HashMap<String, String>,
    /// Requests seen: (method, path without the query).
    pub requests: Vec<(String, String)>,
    /// Upserts answered with 503 before the next one succeeds.
    pub fail_upserts: usize,
    /// The api-key every request must carry, if set.
    pub key: Option<String>,
}

pub struct MockQdrant {
    pub url: String,
    pub state: Arc<Mutex<QdrantState>>,
}

impl MockQdrant {
    pub fn start() -> Self {
        let state = Arc::new(Mutex::new(QdrantState::default()));
        let app = Router::new().route("/{*path}", any(handle)).with_state(Arc::clone(&state));
        let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
        listener.set_nonblocking(true).expect("nonblocking");
        let url = format!("http://{}", listener.local_addr().expect("addr"));
        std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().expect("runtime");
            rt.block_on(async move {
                let listener = tokio::net::TcpListener::from_std(listener).expect("listener");
                axum::serve(listener, app).await.expect("serve");
            });
        });
        Self { url, state }
    }

    pub fn lock(&self) -> std::sync::MutexGuard<'_, QdrantState> {
        self.state.lock().expect("state")
    }
}

type Shared = Arc<Mutex<QdrantState>>;

fn ok(result: Value) -> Response {
    (StatusCode::OK, axum::Json(json!({ "result": result, "status": "ok", "time": 0.001 }))).into_response()
}

fn error(status: StatusCode, message: impl std::fmt::Display) -> Response {
    (status, axum::Json(json!({ "status": { "error": message.to_string() }, "time": 0.0 }))).into_response()
}

fn parse<T: serde::de::DeserializeOwned>(body: &[u8]) -> Result<T, Response> {
    serde_json::from_slice(body).map_err(|e| {
        // A body Qdrant's schema would refuse: loud in the test's output, and a 422 as Qdrant answers.
        eprintln!("mock qdrant: refused body {}: {e}", String::from_utf8_lossy(body));
        error(StatusCode::UNPROCESSABLE_ENTITY, format!("Format error in JSON body: {e}"))
    })
}

async fn handle(
    State(state): State<Shared>,
    method: Method,
    Path(path): Path<String>,
    RawQuery(_query): RawQuery,
    headers: HeaderMap,
    body: axum::body::Bytes,
) -> Response {
    let mut s = state.lock().expect("state");
    s.requests.push((method.to_string(), format!("/{path}")));
    if let Some(key) = &s.key
        && headers.get("api-key").and_then(|v| v.to_str().ok()) != Some(key.as_str())
    {
        return error(StatusCode::UNAUTHORIZED, "Invalid api-key");
    }
    match route(&mut s, &method, &path, &body) {
        Ok(r) | Err(r) => r,
    }
}

fn route(s: &mut QdrantState, method: &Method, path: &str, body: &[u8]) -> Result<Response, Response> {
    let parts: Vec<&str> = path.split('/').collect();
    let resolve = |s: &QdrantState, name: &str| s.aliases.get(name).cloned().unwrap_or_else(|| name.to_owned());
    let missing = |name: &str| error(StatusCode::NOT_FOUND, format!("Collection `{name}` doesn't exist!"));
    Ok(match (method.as_str(), parts.as_slice()) {
        ("GET", ["aliases"]) => {
            let aliases: Vec<Value> =
                s.aliases.iter().map(|(a, c)| json!({ "alias_name": a, "collection_name": c })).collect();
            ok(json!({ "aliases": aliases }))
        }
        ("GET", ["collections"]) => {
            let names: Vec<Value> = s.collections.keys().map(|n| json!({ "name": n })).collect();
            ok(json!({ "collections": names }))
        }
        ("POST", ["collections", "aliases"]) => {
            let change: ChangeAliasesOperation = parse(body)?;
            for action in change.actions {
                match action {
                    AliasOperation::Create(c) => {
                        if !s.collections.contains_key(&c.collection_name) {
                            return Err(missing(&c.collection_name));
                        }
                        s.aliases.insert(c.alias_name, c.collection_name);
                    }
                    AliasOperation::Delete(d) => {
                        s.aliases.remove(&d.alias_name);
                    }
                }
            }
            ok(json!(true))
        }
        ("PUT", ["collections", name]) => {
            let create: CreateCollection = parse(body)?;
            if s.collections.contains_key(*name) {
                return Err(error(StatusCode::BAD_REQUEST, format!("Collection `{name}` already exists!")));
            }
            let _ = (create.vectors.distance, create.vectors.hnsw_config, create.vectors.on_disk);
            let m = create.hnsw_config.and_then(|h| h.m);
            s.collections
                .insert((*name).to_owned(), Collection { dims: create.vectors.size, hnsw_m: m, ..Default::default() });
            ok(json!(true))
        }
        ("PATCH", ["collections", name]) => {
            let update: UpdateCollection = parse(body)?;
            let name = resolve(s, name);
            let c = s.collections.get_mut(&name).ok_or_else(|| missing(&name))?;
            if let Some(m) = update.hnsw_config.and_then(|h| h.m) {
                c.hnsw_m = Some(m);
            }
            ok(json!(true))
        }
        ("DELETE", ["collections", name]) => {
            let existed = s.collections.remove(*name).is_some();
            s.aliases.retain(|_, c| c != name);
            ok(json!(existed))
        }
        ("GET", ["collections", name]) => {
            let name = resolve(s, name);
            let c = s.collections.get(&name).ok_or_else(|| missing(&name))?;
            ok(json!({ "status": "green", "points_count": c.points.len() }))
        }
        ("PUT", ["collections", name, "index"]) => {
            let index: CreateFieldIndex = parse(body)?;
            let _ = index.field_schema;
            let name = resolve(s, name);
            let c = s.collections.get_mut(&name).ok_or_else(|| missing(&name))?;
            c.indexed.push(index.field_name);
            ok(json!({ "operation_id": 0, "status": "completed" }))
        }
        ("PUT", ["collections", name, "points"]) => {
            let list: PointsList = parse(body)?;
            if s.fail_upserts > 0 {
                s.fail_upserts -= 1;
                return Err(error(StatusCode::SERVICE_UNAVAILABLE, "overloaded"));
            }
            let name = resolve(s, name);
            let c = s.collections.get_mut(&name).ok_or_else(|| missing(&name))?;
            for p in list.points {
                if p.vector.len() != c.dims {
                    return Err(error(
                        StatusCode::BAD_REQUEST,
                        format!(
                            "Wrong input: Vector dimension error: expected dim: {}, got {}",
                            c.dims,
                            p.vector.len()
                        ),
                    ));
                }
                c.points.insert(p.id, (p.vector, p.payload.unwrap_or_default()));
            }
            ok(json!({ "operation_id": 1, "status": "completed" }))
        }
        ("POST", ["collections", name, "points", "delete"]) => {
            let selector: PointsSelector = parse(body)?;
            let name = resolve(s, name);
            let c = s.collections.get_mut(&name).ok_or_else(|| missing(&name))?;
            match selector {
                PointsSelector::Ids { points } => points.iter().for_each(|id| {
                    c.points.remove(id);
                }),
                PointsSelector::Filter { filter } => c.points.retain(|_, (_, payload)| !filter.matches(payload)),
            }
            ok(json!({ "operation_id": 2, "status": "completed" }))
        }
        ("POST", ["collections", name, "points", "batch"]) => {
            let ops: UpdateOperations = parse(body)?;
            let name = resolve(s, name);
            let c = s.collections.get_mut(&name).ok_or_else(|| missing(&name))?;
            for UpdateOperation::SetPayload(set) in ops.operations {
                for (id, (_, payload)) in c.points.iter_mut() {
                    let chosen = set.points.as_ref().is_some_and(|ids| ids.contains(id))
                        || set.filter.as_ref().is_some_and(|f| f.matches(payload));
                    if chosen {
                        payload.extend(set.payload.clone());
                    }
                }
            }
            ok(json!([{ "operation_id": 3, "status": "completed" }]))
        }
        ("POST", ["collections", name, "points", "count"]) => {
            let count: CountRequest = parse(body)?;
            let _ = count.exact;
            let name = resolve(s, name);
            let c = s.collections.get(&name).ok_or_else(|| missing(&name))?;
            let n = c.points.values().filter(|(_, p)| count.filter.as_ref().is_none_or(|f| f.matches(p))).count();
            ok(json!({ "count": n }))
        }
        ("POST", ["collections", name, "points", "scroll"]) => {
            let scroll: ScrollRequest = parse(body)?;
            let _ = scroll.with_vector;
            let name = resolve(s, name);
            let c = s.collections.get(&name).ok_or_else(|| missing(&name))?;
            let limit = scroll.limit.unwrap_or(10);
            let mut found: Vec<Value> = Vec::new();
            let mut next = Value::Null;
            let from = scroll.offset.clone();
            for (id, (_, payload)) in c.points.iter().filter(|(id, _)| from.as_ref().is_none_or(|f| *id >= f)) {
                if scroll.filter.as_ref().is_some_and(|f| !f.matches(payload)) {
                    continue;
                }
                if found.len() == limit {
                    next = id.json();
                    break;
                }
                let payload =
                    if scroll.with_payload == Some(true) { Value::Object(payload.clone()) } else { Value::Null };
                found.push(json!({ "id": id.json(), "payload": payload }));
            }
            ok(json!({ "points": found, "next_page_offset": next }))
        }
        ("POST", ["collections", name, "points"]) => {
            let request: PointRequest = parse(body)?;
            let _ = request.with_vector;
            let name = resolve(s, name);
            let c = s.collections.get(&name).ok_or_else(|| missing(&name))?;
            let found: Vec<Value> = request
                .ids
                .iter()
                .filter_map(|id| c.points.get(id).map(|(_, p)| (id, p)))
                .map(|(id, p)| {
                    let payload =
                        if request.with_payload == Some(true) { Value::Object(p.clone()) } else { Value::Null };
                    json!({ "id": id.json(), "payload": payload })
                })
                .collect();
            ok(json!(found))
        }
        ("POST", ["collections", name, "points", "query"]) => {
            let query: QueryRequest = parse(body)?;
            let name = resolve(s, name);
            let c = s.collections.get(&name).ok_or_else(|| missing(&name))?;
            let norm = |v: &[f32]| v.iter().map(|x| x * x).sum::<f32>().sqrt().max(f32::MIN_POSITIVE);
            let q = &query.query;
            let mut scored: Vec<(f32, &PointId, &Map<String, Value>)> = c
                .points
                .iter()
                .map(|(id, (v, p))| (v.iter().zip(q).map(|(a, b)| a * b).sum::<f32>() / (norm(v) * norm(q)), id, p))
                .collect();
            scored.sort_by(|a, b| b.0.total_cmp(&a.0));
            let points: Vec<Value> = scored
                .into_iter()
                .take(query.limit.unwrap_or(10))
                .map(|(score, id, p)| {
                    let payload = if query.with_payload == Some(true) { Value::Object(p.clone()) } else { Value::Null };
                    json!({ "id": id.json(), "version": 0, "score": score, "payload": payload })
                })
                .collect();
            ok(json!({ "points": points }))
        }
        _ => error(StatusCode::NOT_FOUND, format!("no route {method} /{path}")),
    })
}
