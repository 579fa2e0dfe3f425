//! The JSON shape of hits, documents and explanations: one for `search --json`, the HTTP API and MCP.
//!
//! A hit: `rank`, `score` (the mode's: cosine, BM25 or fused), `doc`, `chunk_index`, `start`, `end` (byte offsets
//! in the document's text), `id`, `text`, `page`, `ranks` (`vector`, `keyword`: the hit's 1-based place in each
//! retriever's list, or null), `scores` (`vector`, `keyword`), `exact` (present and true when the chunk holds every
//! identifier of the query), and, when documents were asked for, the document's `file`, `format`, `title`, `size`,
//! `modified` and `metadata`.

use serde_json::{Map, Value, json};

use super::{Answer, SearchHit};
use crate::store::{DocRecord, StoredChunk};

pub fn hit(rank: usize, hit: &SearchHit) -> Value {
    let mut line = chunk(&hit.chunk);
    if let Some(object) = line.as_object_mut() {
        object.insert("rank".into(), rank.into());
        object.insert("score".into(), finite(hit.score));
        object.insert("ranks".into(), json!({ "vector": hit.ranks.vector, "keyword": hit.ranks.keyword }));
        let scores =
            json!({ "vector": hit.ranks.vector_score.map(finite), "keyword": hit.ranks.keyword_score.map(finite) });
        object.insert("scores".into(), scores);
        if hit.ranks.exact {
            object.insert("exact".into(), true.into());
        }
        if let Some(record) = &hit.document {
            object.extend(document(record));
        }
    }
    line
}

/// A chunk's own fields.
pub fn chunk(row: &StoredChunk) -> Value {
    json!({
        "doc": row.doc, "chunk_index": row.chunk_index, "start": row.start, "end": row.end, "id": row.id,
        "text": row.text, "page": row.page,
    })
}

/// A document's fields: where it came from, its title and its metadata.
pub fn document(record: &DocRecord) -> Map<String, Value> {
    use crate::source::{Value as Field, meta::format_timestamp};
    let value = |v: &Field| match v {
        Field::Null => Value::Null,
        Field::String(s) => s.clone().into(),
        Field::Int64(n) => (*n).into(),
        Field::Float64(x) => finite(*x),
        Field::Bool(b) => (*b).into(),
        Field::Timestamp(t) => format_timestamp(*t).into(),
    };
    let metadata: Map<String, Value> = record.fields.iter().map(|(k, v)| (k.to_string(), value(v))).collect();
    let modified = (record.mtime_ns != 0).then(|| format_timestamp(record.mtime_ns.div_euclid(1000)));
    let mut out = Map::new();
    out.insert("file".into(), record.file.clone().into());
    out.insert("format".into(), record.format.map(|f| f.name()).into());
    out.insert("title".into(), record.title.clone().into());
    out.insert("size".into(), record.size.into());
    out.insert("modified".into(), modified.into());
    out.insert("metadata".into(), metadata.into());
    out
}

/// How an answer was found: the version, the mode, the vector method, the keyword index's version, the filter plan.
pub fn explain(answer: &Answer) -> Value {
    json!({
        "generation": answer.generation, "mode": answer.mode, "method": answer.method,
        "keyword_generation": answer.keyword_generation, "filter": answer.filter,
    })
}

/// JSON has no NaN or infinity: null instead of failing the whole answer.
fn finite(x: impl Into<f64>) -> Value {
    serde_json::Number::from_f64(x.into()).map_or(Value::Null, Value::Number)
}
