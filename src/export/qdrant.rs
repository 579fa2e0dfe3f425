//! Export to Qdrant over its REST API (plain reqwest and JSON: the official client would bring tonic, prost and a
//! second reqwest for what is a handful of endpoints).
//!
//! The name users query is an alias. It points at a physical collection `<name>-<generation>-<tag>`, which has a
//! companion `<physical>__tars_docs` holding one point per document (its digests, see [`super::digest`]) and one
//! record point (the exported lineage, version and layout).
//! - A full export creates a new physical collection with HNSW deferred (`m: 0`, as Qdrant's bulk-upload guide
//!   advises), upserts every point in batches, turns HNSW on, writes the companion, switches the alias in one
//!   request, and deletes the old pair.
//! - An incremental one, in the alias's collection, deletes the points of changed and gone documents (by a filter on
//!   `doc`), upserts the changed and new documents' points, sets the payload of documents whose metadata alone
//!   changed, then rewrites their digests, and the record last. Qdrant has no transactions; every step is
//!   idempotent and the digests are written after the points, so an export that dies half-way is finished by the
//!   next one.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures::{StreamExt, TryStreamExt};
use serde_json::{Map, Value, json};

use super::{DocDigest, ExportError, ExportKind, FullReason, Report, Row, Source};
use crate::query::json::document;
use crate::store::DocRecord;

/// Names in a scroll or delete request at a time.
const PAGE: usize = 256;
/// Attempts of a request that failed for a reason that may pass (connection, 429, 5xx).
const ATTEMPTS: u32 = 4;

/// Where and how to export.
#[derive(Debug, Clone)]
pub struct QdrantTarget {
    /// The REST endpoint, e.g. `http://localhost:6333`.
    pub url: String,
    /// Sent as `api-key`; never shown.
    pub api_key: Option<String>,
    /// The alias users query.
    pub collection: String,
    pub full: bool,
    /// Points per upsert request, and requests in flight.
    pub batch: usize,
    pub parallel: usize,
    /// The HNSW index's `m` and `ef_construct`.
    pub hnsw: (u32, u32),
}

/// Checks a collection name: what Qdrant accepts in a URL path without escaping, and room for our suffixes.
pub fn check_name(name: &str) -> Result<(), ExportError> {
    let ok = !name.is_empty()
        && name.len() <= 100
        && name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-')
        && !name.starts_with('-');
    if ok {
        Ok(())
    } else {
        Err(ExportError::Refused(format!(
            "--collection {name:?} is not a collection name: letters, digits, _ and - (not first), at most 100"
        )))
    }
}

/// A collection name made from a dataset's name (its last path segment).
pub fn name_from_dataset(dataset: &str) -> String {
    let last = dataset.trim_end_matches('/').rsplit('/').next().unwrap_or_default();
    let name: String =
        last.chars().map(|c| if c.is_ascii_alphanumeric() || c == '-' { c } else { '_' }).take(100).collect();
    if name.is_empty() || name.starts_with('-') { format!("c{name}") } else { name }
}

struct Api {
    http: reqwest::Client,
    base: String,
    key: Option<String>,
}

impl Api {
    /// One request; the `result` of its answer, `None` for a 404. Retried with backoff when the failure may pass
    /// (every request here is idempotent).
    async fn call(
        &self,
        method: reqwest::Method,
        path: &str,
        body: Option<&Value>,
    ) -> Result<Option<Value>, ExportError> {
        let url = format!("{}{path}", self.base);
        let mut attempt = 0;
        loop {
            attempt += 1;
            let mut request = self.http.request(method.clone(), &url);
            if let Some(key) = &self.key {
                request = request.header("api-key", key);
            }
            if let Some(body) = body {
                request = request.json(body);
            }
            let outcome = match request.send().await {
                Ok(response) => {
                    let status = response.status();
                    let text = response.text().await.unwrap_or_default();
                    if status.is_success() {
                        let answer: Value = serde_json::from_str(&text).map_err(|e| {
                            ExportError::Target(format!("{method} {path}: the answer is not JSON ({e})"))
                        })?;
                        return Ok(Some(answer.get("result").cloned().unwrap_or(Value::Null)));
                    }
                    if status == reqwest::StatusCode::NOT_FOUND {
                        return Ok(None);
                    }
                    let reason = serde_json::from_str::<Value>(&text)
                        .ok()
                        .and_then(|v| v["status"]["error"].as_str().map(str::to_owned))
                        .unwrap_or_else(|| text.chars().take(300).collect());
                    let message = format!("{method} {path}: HTTP {status}: {reason}");
                    let passing = status.is_server_error() || status == reqwest::StatusCode::TOO_MANY_REQUESTS;
                    if status == reqwest::StatusCode::UNAUTHORIZED || status == reqwest::StatusCode::FORBIDDEN {
                        return Err(ExportError::Refused(format!(
                            "{message} (is the API key right? it is read from --api-key-env)"
                        )));
                    }
                    if !passing {
                        return Err(ExportError::Target(message));
                    }
                    message
                }
                Err(e) => format!("{method} {path}: {}", without_url(&e)),
            };
            if attempt >= ATTEMPTS {
                return Err(ExportError::Target(format!("{outcome} (after {attempt} attempts)")));
            }
            tokio::time::sleep(Duration::from_millis(250 << attempt)).await;
        }
    }

    async fn get(&self, path: &str) -> Result<Option<Value>, ExportError> {
        self.call(reqwest::Method::GET, path, None).await
    }

    async fn send(&self, method: reqwest::Method, path: &str, body: &Value) -> Result<Value, ExportError> {
        self.call(method.clone(), path, Some(body))
            .await?
            .ok_or_else(|| ExportError::Target(format!("{method} {path}: HTTP 404 (the collection is gone?)")))
    }

    /// Every alias: (alias, collection).
    async fn aliases(&self) -> Result<Vec<(String, String)>, ExportError> {
        let found = self.get("/aliases").await?.unwrap_or(Value::Null);
        Ok(found["aliases"]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(|a| Some((a["alias_name"].as_str()?.to_owned(), a["collection_name"].as_str()?.to_owned())))
            .collect())
    }

    /// The collection an alias points at.
    async fn alias(&self, alias: &str) -> Result<Option<String>, ExportError> {
        Ok(self.aliases().await?.into_iter().find(|(a, _)| a == alias).map(|(_, c)| c))
    }

    async fn collections(&self) -> Result<Vec<String>, ExportError> {
        let found = self.get("/collections").await?.unwrap_or(Value::Null);
        Ok(found["collections"]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(|c| c["name"].as_str().map(str::to_owned))
            .collect())
    }
}

/// A companion's collection, or the collection itself.
fn base_name(collection: &str) -> &str {
    collection.strip_suffix("__tars_docs").unwrap_or(collection)
}

/// A reqwest error with its causes (the URL in it holds nothing secret: the key goes in a header).
fn without_url(e: &reqwest::Error) -> String {
    let mut text = e.to_string();
    let mut source = std::error::Error::source(e);
    while let Some(s) = source {
        text.push_str(&format!(": {s}"));
        source = s.source();
    }
    text
}

/// The record point's id in a companion collection (the documents' ids are UUIDs from their names' blake3).
fn record_id() -> String {
    uuid(b"tars-index export record")
}

fn uuid(bytes: &[u8]) -> String {
    let h = blake3::hash(bytes);
    let hex = h.to_hex();
    let s = &hex.as_str()[..32];
    format!("{}-{}-{}-{}-{}", &s[..8], &s[8..12], &s[12..16], &s[16..20], &s[20..32])
}

fn hex(digest: &[u8]) -> String {
    digest.iter().map(|b| format!("{b:02x}")).collect()
}

fn unhex(text: &str) -> Option<[u8; 16]> {
    let bytes: Option<Vec<u8>> =
        (0..text.len()).step_by(2).map(|i| text.get(i..i + 2).and_then(|b| u8::from_str_radix(b, 16).ok())).collect();
    bytes?.try_into().ok()
}

/// Exports the version `source` holds (named `dataset` in the record) to `target`.
pub async fn export(source: Arc<Source>, dataset: &str, target: &QdrantTarget) -> Result<Report, ExportError> {
    let started = Instant::now();
    check_name(&target.collection)?;
    let base = target.url.trim_end_matches('/').to_owned();
    if !(base.starts_with("http://") || base.starts_with("https://")) {
        return Err(ExportError::Refused(format!("--to {base:?} is not an http:// or https:// URL")));
    }
    let http = reqwest::Client::builder()
        .timeout(Duration::from_secs(300))
        .connect_timeout(Duration::from_secs(30))
        .build()
        .map_err(|e| ExportError::Target(format!("HTTP client: {e}")))?;
    let api = Api { http, base: base.clone(), key: target.api_key.clone() };
    let manifest = &source.dataset.manifest;
    let layout = source.signature();
    let name = &target.collection;

    let current = api.alias(name).await?;
    let record = match &current {
        Some(physical) => api
            .call(
                reqwest::Method::POST,
                &format!("/collections/{physical}__tars_docs/points"),
                Some(&json!({ "ids": [record_id()], "with_payload": true, "with_vector": false })),
            )
            .await?
            .and_then(|found| found.as_array().and_then(|a| a.first().cloned()))
            .map(|point| point["payload"].clone()),
        None if api.collections().await?.iter().any(|c| c == name) => {
            return Err(ExportError::Refused(format!(
                "{base}: {name} is a collection, not an alias a tars-index export made: choose another --collection, \
                 or delete it"
            )));
        }
        None => None,
    };
    let kind = match (&current, &record) {
        (None, _) => ExportKind::Full { reason: FullReason::First },
        (Some(_), _) if target.full => ExportKind::Full { reason: FullReason::Asked },
        (Some(_), None) => ExportKind::Full { reason: FullReason::Missing },
        (Some(_), Some(r)) if r["lineage"] != manifest.lineage.as_str() => {
            ExportKind::Full { reason: FullReason::NewLineage }
        }
        (Some(_), Some(r)) if r["layout"] != layout => ExportKind::Full { reason: FullReason::NewLayout },
        (Some(_), Some(r)) if r["generation"].as_u64() == Some(manifest.generation) => ExportKind::UpToDate,
        (Some(_), Some(_)) => ExportKind::Incremental,
    };
    let rows = record.as_ref().and_then(|r| r["rows"].as_u64()).unwrap_or(0);
    let mut report = Report::new(base.clone(), name.clone(), manifest.generation, kind.clone(), rows);
    let writer = Writer { api: &api, source: &source, target };
    let physical = match kind {
        ExportKind::UpToDate => {
            report.seconds = started.elapsed().as_secs_f64();
            return Ok(report);
        }
        ExportKind::Full { .. } => {
            let physical = format!("{name}-{}-{:08x}", manifest.generation, rand::random::<u32>());
            writer.remove_orphans(name, current.as_deref()).await?;
            writer.create(&physical).await?;
            let diff = source.everything();
            report.rows_written = writer.upsert(&physical, &diff.added).await?;
            report.docs_written = diff.added.len();
            report.rows = report.rows_written;
            writer
                .api
                .send(
                    reqwest::Method::PATCH,
                    &format!("/collections/{physical}"),
                    &json!({ "hnsw_config": { "m": target.hnsw.0, "ef_construct": target.hnsw.1 } }),
                )
                .await?;
            writer.digests(&physical, &diff.recorded(), &[]).await?;
            physical
        }
        ExportKind::Incremental => {
            let physical = current.clone().unwrap_or_default();
            let exported = writer.exported(&physical).await?;
            let diff = source.diff(&exported);
            let dropped = diff.dropped();
            report.rows_deleted = writer.delete(&physical, &dropped).await?;
            report.rows_written = writer.upsert(&physical, &diff.written()).await?;
            writer.set_metadata(&physical, &diff.updated).await?;
            writer.digests(&physical, &diff.recorded(), &diff.gone).await?;
            report.docs_written = diff.added.len() + diff.changed.len();
            report.docs_updated = diff.updated.len();
            report.docs_deleted = diff.gone.len();
            report.rows = (report.rows + report.rows_written).saturating_sub(report.rows_deleted);
            physical
        }
    };
    let record = json!({
        "kind": "export", "dataset": dataset, "lineage": manifest.lineage, "generation": manifest.generation,
        "layout": layout, "rows": report.rows,
    });
    api.send(
        reqwest::Method::PUT,
        &format!("/collections/{physical}__tars_docs/points?wait=true"),
        &json!({ "points": [{ "id": record_id(), "vector": [1.0], "payload": record }] }),
    )
    .await?;
    if current.as_deref() != Some(physical.as_str()) {
        let mut actions = Vec::new();
        if current.is_some() {
            actions.push(json!({ "delete_alias": { "alias_name": name } }));
        }
        actions.push(json!({ "create_alias": { "collection_name": physical, "alias_name": name } }));
        api.send(reqwest::Method::POST, "/collections/aliases", &json!({ "actions": actions })).await?;
        if let Some(old) = &current {
            for collection in [old.clone(), format!("{old}__tars_docs")] {
                api.call(reqwest::Method::DELETE, &format!("/collections/{collection}"), None).await?;
            }
        }
    }
    report.seconds = started.elapsed().as_secs_f64();
    Ok(report)
}

struct Writer<'a> {
    api: &'a Api,
    source: &'a Arc<Source>,
    target: &'a QdrantTarget,
}

impl Writer<'_> {
    /// A new collection and its companion, HNSW deferred until the load is done, `doc` indexed for the filters the
    /// incremental exports delete by.
    async fn create(&self, physical: &str) -> Result<(), ExportError> {
        let put = reqwest::Method::PUT;
        let vectors = json!({ "size": self.source.dimensions, "distance": "Cosine" });
        self.api
            .send(
                put.clone(),
                &format!("/collections/{physical}"),
                &json!({ "vectors": vectors, "hnsw_config": { "m": 0 } }),
            )
            .await?;
        self.api
            .send(
                put.clone(),
                &format!("/collections/{physical}/index?wait=true"),
                &json!({ "field_name": "doc", "field_schema": "keyword" }),
            )
            .await?;
        self.api
            .send(
                put,
                &format!("/collections/{physical}__tars_docs"),
                &json!({ "vectors": { "size": 1, "distance": "Dot" } }),
            )
            .await?;
        Ok(())
    }

    /// Collections of earlier full exports of `name` that died before their alias switch.
    async fn remove_orphans(&self, name: &str, current: Option<&str>) -> Result<(), ExportError> {
        let prefix = format!("{name}-");
        let aliased: Vec<String> = self.api.aliases().await?.into_iter().map(|(_, c)| c).collect();
        for collection in self.api.collections().await? {
            let Some(rest) = collection.strip_prefix(&prefix) else { continue };
            let base = base_name(rest);
            let ours = base.split_once('-').is_some_and(|(g, tag)| {
                g.chars().all(|c| c.is_ascii_digit()) && tag.len() == 8 && tag.chars().all(|c| c.is_ascii_hexdigit())
            });
            // Whatever an alias points at is in use (ours, or another export's whose name starts like ours).
            let live = current.is_some_and(|c| collection == c || collection == format!("{c}__tars_docs"))
                || aliased.iter().any(|c| *c == base_name(&collection));
            if ours && !live {
                self.api.call(reqwest::Method::DELETE, &format!("/collections/{collection}"), None).await?;
            }
        }
        Ok(())
    }

    /// The digests in `physical`'s companion.
    async fn exported(&self, physical: &str) -> Result<HashMap<String, DocDigest>, ExportError> {
        let mut found = HashMap::new();
        let mut offset = Value::Null;
        loop {
            let mut body = json!({ "limit": 1000, "with_payload": true, "with_vector": false });
            if !offset.is_null() {
                body["offset"] = offset.clone();
            }
            let page = self
                .api
                .send(reqwest::Method::POST, &format!("/collections/{physical}__tars_docs/points/scroll"), &body)
                .await?;
            for point in page["points"].as_array().into_iter().flatten() {
                let payload = &point["payload"];
                let Some(doc) = payload["doc"].as_str() else { continue };
                let digest = |k: &str| payload[k].as_str().and_then(unhex).unwrap_or_default();
                found.insert(doc.to_owned(), DocDigest { rows: digest("rows"), meta: digest("meta") });
            }
            offset = page["next_page_offset"].clone();
            if offset.is_null() {
                return Ok(found);
            }
        }
    }

    /// Deletes the points of the documents `names`; returns how many there were.
    async fn delete(&self, physical: &str, names: &[String]) -> Result<u64, ExportError> {
        let mut deleted = 0;
        for page in names.chunks(PAGE) {
            let filter = json!({ "must": [{ "key": "doc", "match": { "any": page } }] });
            let counted = self
                .api
                .send(
                    reqwest::Method::POST,
                    &format!("/collections/{physical}/points/count"),
                    &json!({ "filter": filter, "exact": true }),
                )
                .await?;
            deleted += counted["count"].as_u64().unwrap_or(0);
            self.api
                .send(
                    reqwest::Method::POST,
                    &format!("/collections/{physical}/points/delete?wait=true"),
                    &json!({ "filter": filter }),
                )
                .await?;
        }
        Ok(deleted)
    }

    /// Upserts the points of the documents `names`, `parallel` requests of `batch` points at a time.
    async fn upsert(&self, physical: &str, names: &[String]) -> Result<u64, ExportError> {
        let fields: Vec<String> = self.source.fields().into_iter().map(|(n, _)| n.to_owned()).collect();
        let path = format!("/collections/{physical}/points?wait=true");
        let batch = self.target.batch.max(1);
        let source = self.source;
        let written = std::sync::atomic::AtomicU64::new(0);
        let requests = tokio_stream::wrappers::ReceiverStream::new(source.rows(names, 4))
            .map(|rows| rows.map_err(ExportError::from))
            .map_ok(|rows: Vec<Row>| {
                let points: Vec<Value> = rows
                    .into_iter()
                    .map(|row| {
                        let payload = payload(&row, source.docs.get(&*row.chunk.doc), &fields);
                        json!({ "id": row.row_id, "vector": row.vector, "payload": payload })
                    })
                    .collect();
                let bodies: Vec<Result<Value, ExportError>> =
                    points.chunks(batch).map(|c| Ok(json!({ "points": c }))).collect();
                futures::stream::iter(bodies)
            })
            .try_flatten();
        requests
            .try_for_each_concurrent(self.target.parallel.max(1), |body| {
                let path = &path;
                let written = &written;
                async move {
                    let n = body["points"].as_array().map_or(0, Vec::len) as u64;
                    self.api.send(reqwest::Method::PUT, path, &body).await?;
                    written.fetch_add(n, std::sync::atomic::Ordering::Relaxed);
                    Ok(())
                }
            })
            .await?;
        Ok(written.into_inner())
    }

    /// Sets the document-level payload of every point of the documents `names` (their metadata alone changed).
    async fn set_metadata(&self, physical: &str, names: &[String]) -> Result<(), ExportError> {
        let fields: Vec<String> = self.source.fields().into_iter().map(|(n, _)| n.to_owned()).collect();
        for page in names.chunks(PAGE) {
            let operations: Vec<Value> = page
                .iter()
                .filter_map(|n| self.source.docs.get(n))
                .map(|doc| {
                    json!({ "set_payload": {
                        "payload": doc_payload(doc, &fields),
                        "filter": { "must": [{ "key": "doc", "match": { "value": doc.doc } }] },
                    } })
                })
                .collect();
            self.api
                .send(
                    reqwest::Method::POST,
                    &format!("/collections/{physical}/points/batch?wait=true"),
                    &json!({ "operations": operations }),
                )
                .await?;
        }
        Ok(())
    }

    /// Writes the digests of `names` to the companion and removes those of `gone`.
    async fn digests(&self, physical: &str, names: &[String], gone: &[String]) -> Result<(), ExportError> {
        let path = format!("/collections/{physical}__tars_docs/points?wait=true");
        let all: Vec<(&str, DocDigest)> = self.source.digests(names).collect();
        for page in all.chunks(PAGE) {
            let points: Vec<Value> = page
                .iter()
                .map(|(doc, d)| {
                    json!({ "id": uuid(doc.as_bytes()), "vector": [1.0],
                            "payload": { "doc": doc, "rows": hex(&d.rows), "meta": hex(&d.meta) } })
                })
                .collect();
            self.api.send(reqwest::Method::PUT, &path, &json!({ "points": points })).await?;
        }
        for page in gone.chunks(PAGE) {
            let ids: Vec<String> = page.iter().map(|d| uuid(d.as_bytes())).collect();
            self.api
                .send(
                    reqwest::Method::POST,
                    &format!("/collections/{physical}__tars_docs/points/delete?wait=true"),
                    &json!({ "points": ids }),
                )
                .await?;
        }
        Ok(())
    }
}

/// A point's payload: the chunk's columns and its document's, flat (metadata fields beside the built-ins, as in the
/// pgvector table; a field never takes a built-in's name).
fn payload(row: &Row, doc: Option<&DocRecord>, fields: &[String]) -> Map<String, Value> {
    let chunk = &row.chunk;
    let mut out = Map::new();
    out.insert("row_id".into(), row.row_id.into());
    out.insert("id".into(), chunk.id.clone().into());
    out.insert("doc".into(), chunk.doc.to_string().into());
    out.insert("chunk_index".into(), chunk.chunk_index.into());
    out.insert("start".into(), chunk.start.into());
    out.insert("end".into(), chunk.end.into());
    out.insert("tokens".into(), chunk.tokens.into());
    out.insert("page".into(), chunk.page.into());
    out.insert("text".into(), chunk.text.clone().into());
    if let Some(doc) = doc {
        out.extend(doc_payload(doc, fields));
    }
    out
}

/// What every point of `doc` carries alike: file, size, format, title, modified, and its metadata fields (null
/// where a record lacks one, so that a field removed from a record is cleared by `set_payload`).
fn doc_payload(doc: &DocRecord, fields: &[String]) -> Map<String, Value> {
    let mut out = document(doc);
    let metadata = match out.remove("metadata") {
        Some(Value::Object(m)) => m,
        _ => Map::new(),
    };
    for field in fields {
        out.insert(field.clone(), metadata.get(field).cloned().unwrap_or(Value::Null));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_uuids_and_digests_round_trip() {
        assert!(check_name("docs_v2-prod").is_ok());
        for bad in ["", "-x", "a/b", "a b", "a?b", &"n".repeat(101)] {
            assert!(check_name(bad).is_err(), "{bad:?}");
        }
        assert_eq!(name_from_dataset("s3://b/team/Man Pages/"), "Man_Pages");
        let id = uuid(b"doc");
        assert_eq!((id.len(), id.matches('-').count()), (36, 4));
        assert_ne!(uuid(b"doc"), uuid(b"doc2"));
        let d = [7u8; 16];
        assert_eq!(unhex(&hex(&d)), Some(d));
        assert_eq!(unhex("zz"), None);
    }
}
