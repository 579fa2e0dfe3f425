//! The JSON shape of hits, documents and explanations: one for `search --json`, the HTTP API and MCP.
//!
//! A hit: `rank`, `score` (the mode's: cosine, BM25 or fused), `doc`, `chunk_index`, `start`, `end` (byte offsets
//! in the document's text), `id`, `text`, `page`, `ranks` (`vector`, `keyword`: the hit's 1-based place in each
//! retriever's list, or null), `scores` (`vector`, `keyword`), `exact` (present and true when the chunk holds every
//! identifier of the query), and, when documents were asked for, the document's `file`, `format`, `title`, `size`,
//! `modified` and `metadata`.

use serde_json::{Map, Value, json};

use super::ask::Asked;
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

/// A source of an ask: the hit as [`hit`] shapes it, plus its `number` and whether the answer `cited` it.
pub fn source(number: usize, hit: &SearchHit, cited: bool) -> Value {
    let mut source = self::hit(number, hit);
    if let Some(object) = source.as_object_mut() {
        object.insert("number".into(), number.into());
        object.insert("cited".into(), cited.into());
    }
    source
}

/// An ask's answer: `question`, `model`, `answer`, `answered` (false when nothing matched or the model said the
/// sources do not answer), `finish_reason`, `usage` (summed over the turns), `citations` (`cited`, `unknown`: numbers
/// that name no source), `version`, `mode`, `sources` (each a [`source`]) and `searches`, the searches the model
/// made with `--agent` (`query`, `k`, `filter`, the `sources` numbers it returned, or its `error`).
pub fn asked(question: &str, model: &str, asked: &Asked) -> Value {
    let sources: Vec<Value> = asked
        .sources
        .iter()
        .enumerate()
        .map(|(n, hit)| source(n + 1, hit, asked.citations.cited.contains(&(n + 1))))
        .collect();
    let searches: Vec<Value> = asked
        .searches
        .iter()
        .map(|s| json!({ "query": s.query, "k": s.k, "filter": s.filter, "sources": s.sources, "error": s.error }))
        .collect();
    let completion = asked.completion.as_ref();
    json!({
        "question": question,
        "model": model,
        "answer": completion.map(|c| c.text.as_str()),
        "answered": asked.answered(),
        "finish_reason": completion.and_then(|c| c.finish_reason.as_deref()),
        "usage": asked.usage,
        "citations": { "cited": asked.citations.cited, "unknown": asked.citations.unknown },
        "version": asked.generation,
        "mode": asked.mode,
        "sources": sources,
        "searches": searches,
    })
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
