//! Retrieval evaluation: labelled queries (qrels), and recall@k, MRR@10 and nDCG@10 of ranked hits against them.
//!
//! A relevant entry names a document (`guides/intro.md`) or one chunk of it (`guides/intro.md#2`, by chunk
//! index). A query whose entries all name chunks is judged on the hits as they come; otherwise on the hits' documents,
//! each counted once, at its best-ranked chunk (several chunks of one document are one answer). Gains are graded as
//! given (BEIR's qrels scores; 1 for a plain list), nDCG uses them linearly (trec_eval's `ndcg_cut`), recall@k is the
//! share of relevant entries in the top k, MRR@10 the reciprocal rank of the first relevant hit within 10.

use std::collections::{BTreeMap, HashMap};
use std::io::BufRead;
use std::path::Path;

use serde::Serialize;

/// One labelled query.
#[derive(Debug, Clone, PartialEq)]
pub struct Judged {
    pub id: String,
    pub query: String,
    /// Relevant entry → gain (> 0).
    pub relevant: BTreeMap<String, f64>,
    /// Where it was read, for messages.
    pub line: usize,
}

#[derive(Debug, thiserror::Error)]
#[error("{path}:{line}: {message}")]
pub struct EvalError {
    pub path: String,
    pub line: usize,
    pub message: String,
}

fn lines(path: &Path) -> Result<Vec<(usize, String)>, EvalError> {
    let name = path.display().to_string();
    let file =
        std::fs::File::open(path).map_err(|e| EvalError { path: name.clone(), line: 0, message: e.to_string() })?;
    let mut out = Vec::new();
    for (i, line) in std::io::BufReader::new(file).lines().enumerate() {
        let line = line.map_err(|e| EvalError { path: name.clone(), line: i + 1, message: e.to_string() })?;
        if !line.trim().is_empty() {
            out.push((i + 1, line));
        }
    }
    Ok(out)
}

/// A qrels JSONL file: `{"query": ..., "relevant": ["doc" or "doc#chunk", ...] or {"doc": gain, ...}, "id": ...}`.
pub fn read_jsonl(path: &Path) -> Result<Vec<Judged>, EvalError> {
    let name = path.display().to_string();
    let mut judged = Vec::new();
    for (line, text) in lines(path)? {
        let fail = |message: String| EvalError { path: name.clone(), line, message };
        let object: serde_json::Map<String, serde_json::Value> =
            serde_json::from_str(&text).map_err(|e| fail(format!("not a JSON object: {e}")))?;
        let query = object
            .get("query")
            .and_then(|q| q.as_str())
            .filter(|q| !q.trim().is_empty())
            .ok_or_else(|| fail("no \"query\" string".to_owned()))?;
        let relevant = match object.get("relevant") {
            Some(serde_json::Value::Array(items)) => items
                .iter()
                .map(|v| v.as_str().map(|s| (s.to_owned(), 1.0)))
                .collect::<Option<BTreeMap<_, _>>>()
                .ok_or_else(|| fail("\"relevant\" must list strings".to_owned()))?,
            Some(serde_json::Value::Object(gains)) => gains
                .iter()
                .map(|(k, v)| v.as_f64().filter(|g| g.is_finite()).map(|g| (k.clone(), g)))
                .collect::<Option<BTreeMap<_, _>>>()
                .ok_or_else(|| fail("\"relevant\" gains must be numbers".to_owned()))?,
            _ => return Err(fail("no \"relevant\" list".to_owned())),
        };
        let relevant: BTreeMap<String, f64> = relevant.into_iter().filter(|(_, g)| *g > 0.0).collect();
        if relevant.is_empty() {
            return Err(fail("no relevant entry with a gain above 0".to_owned()));
        }
        let id = match object.get("id") {
            Some(serde_json::Value::String(s)) => s.clone(),
            Some(v) if !v.is_null() => v.to_string(),
            _ => line.to_string(),
        };
        judged.push(Judged { id, query: query.to_owned(), relevant, line });
    }
    Ok(judged)
}

/// BEIR's layout: a qrels TSV (`query-id`, `corpus-id`, `score`, with a header line) and a queries JSONL
/// (`{"_id", "text"}`). Queries without a relevant entry are left out, as BEIR's evaluation does.
pub fn read_beir(qrels: &Path, queries: &Path) -> Result<Vec<Judged>, EvalError> {
    let qname = qrels.display().to_string();
    let mut gains: HashMap<String, BTreeMap<String, f64>> = HashMap::new();
    for (line, text) in lines(qrels)? {
        let fields: Vec<&str> = text.split('\t').map(str::trim).collect();
        if line == 1 && fields.first().is_some_and(|f| f.eq_ignore_ascii_case("query-id")) {
            continue;
        }
        let fail = |message: &str| EvalError { path: qname.clone(), line, message: message.to_owned() };
        let [query, doc, score] = fields[..] else {
            return Err(fail("expected query-id, corpus-id and score separated by tabs"));
        };
        let score: f64 = score.parse().map_err(|_| fail("the score is not a number"))?;
        if score > 0.0 {
            gains.entry(query.to_owned()).or_default().insert(doc.to_owned(), score);
        }
    }
    let name = queries.display().to_string();
    let mut judged = Vec::new();
    for (line, text) in lines(queries)? {
        let fail = |message: String| EvalError { path: name.clone(), line, message };
        let object: serde_json::Map<String, serde_json::Value> =
            serde_json::from_str(&text).map_err(|e| fail(format!("not a JSON object: {e}")))?;
        let id = match object.get("_id").or_else(|| object.get("id")) {
            Some(serde_json::Value::String(s)) => s.clone(),
            Some(v) => v.to_string(),
            None => return Err(fail("no \"_id\"".to_owned())),
        };
        let query = object.get("text").or_else(|| object.get("query")).and_then(|q| q.as_str());
        let query = query.ok_or_else(|| fail("no \"text\" string".to_owned()))?;
        if let Some(relevant) = gains.remove(&id) {
            judged.push(Judged { id, query: query.to_owned(), relevant, line });
        }
    }
    Ok(judged)
}

/// One query's scores.
#[derive(Debug, Clone, Copy, PartialEq, Default, Serialize)]
pub struct Scores {
    pub recall: f64,
    pub mrr: f64,
    pub ndcg: f64,
}

/// The mean scores of a mode over its queries.
#[derive(Debug, Clone, Copy, PartialEq, Default, Serialize)]
pub struct Summary {
    pub queries: usize,
    #[serde(rename = "recall@k")]
    pub recall: f64,
    #[serde(rename = "mrr@10")]
    pub mrr: f64,
    #[serde(rename = "ndcg@10")]
    pub ndcg: f64,
}

impl Summary {
    pub fn of(scores: &[Scores]) -> Self {
        let n = scores.len().max(1) as f64;
        Summary {
            queries: scores.len(),
            recall: scores.iter().map(|s| s.recall).sum::<f64>() / n,
            mrr: scores.iter().map(|s| s.mrr).sum::<f64>() / n,
            ndcg: scores.iter().map(|s| s.ndcg).sum::<f64>() / n,
        }
    }
}

/// Whether every entry names a chunk (`doc#<chunk index>`).
fn chunk_level(judged: &Judged) -> bool {
    judged.relevant.keys().all(|e| e.rsplit_once('#').is_some_and(|(_, n)| n.parse::<u32>().is_ok()))
}

/// Scores `hits` (documents and chunk indexes, best first) against `judged`, recall at `k`.
pub fn score(judged: &Judged, hits: &[(String, u32)], k: usize) -> Scores {
    let units: Vec<String> = if chunk_level(judged) {
        hits.iter().map(|(doc, chunk)| format!("{doc}#{chunk}")).collect()
    } else {
        let mut seen = std::collections::HashSet::new();
        hits.iter().filter(|(doc, _)| seen.insert(doc.clone())).map(|(doc, _)| doc.clone()).collect()
    };
    let gain = |unit: &str| judged.relevant.get(unit).copied().unwrap_or(0.0);
    let found = units.iter().take(k).filter(|u| gain(u) > 0.0).count();
    let recall = found as f64 / judged.relevant.len() as f64;
    let mrr = units.iter().take(10).position(|u| gain(u) > 0.0).map_or(0.0, |i| 1.0 / (i as f64 + 1.0));
    let dcg: f64 = units.iter().take(10).enumerate().map(|(i, u)| gain(u) / (i as f64 + 2.0).log2()).sum();
    let mut ideal: Vec<f64> = judged.relevant.values().copied().collect();
    ideal.sort_by(|a, b| b.total_cmp(a));
    let idcg: f64 = ideal.iter().take(10).enumerate().map(|(i, g)| g / (i as f64 + 2.0).log2()).sum();
    Scores { recall, mrr, ndcg: if idcg > 0.0 { dcg / idcg } else { 0.0 } }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn judged(relevant: &[(&str, f64)]) -> Judged {
        Judged {
            id: "q".into(),
            query: "q".into(),
            relevant: relevant.iter().map(|(e, g)| ((*e).to_owned(), *g)).collect(),
            line: 1,
        }
    }

    fn hits(list: &[(&str, u32)]) -> Vec<(String, u32)> {
        list.iter().map(|(d, c)| ((*d).to_owned(), *c)).collect()
    }

    #[test]
    fn scores_equal_a_hand_computation() {
        // Relevant: a and c. Ranked documents: b, a (twice: counted once), d, c.
        let q = judged(&[("a", 1.0), ("c", 1.0)]);
        let s = score(&q, &hits(&[("b", 0), ("a", 0), ("a", 1), ("d", 0), ("c", 0)]), 10);
        assert_eq!(s.recall, 1.0);
        assert_eq!(s.mrr, 0.5);
        // DCG = 1/log2(3) + 1/log2(5); IDCG = 1/log2(2) + 1/log2(3).
        let (dcg, idcg) = (1.0 / 3f64.log2() + 1.0 / 5f64.log2(), 1.0 + 1.0 / 3f64.log2());
        assert!((s.ndcg - dcg / idcg).abs() < 1e-12, "{s:?}");
        // Recall at 2 counts only a (the documents b, a).
        assert_eq!(score(&q, &hits(&[("b", 0), ("a", 0), ("c", 0)]), 2).recall, 0.5);
        // Nothing relevant: all zero.
        assert_eq!(score(&q, &hits(&[("x", 0)]), 10), Scores::default());
        // Chunk-level entries are judged on chunks: a#1 is found at rank 2, a#0 is not relevant.
        let q = judged(&[("a#1", 2.0)]);
        let s = score(&q, &hits(&[("a", 0), ("a", 1)]), 10);
        assert_eq!((s.recall, s.mrr), (1.0, 0.5));
        assert!((s.ndcg - (2.0 / 3f64.log2()) / 2.0).abs() < 1e-12);
        // The mean over queries.
        let mean = Summary::of(&[Scores { recall: 1.0, mrr: 0.5, ndcg: 0.25 }, Scores::default()]);
        assert_eq!((mean.queries, mean.recall, mean.mrr, mean.ndcg), (2, 0.5, 0.25, 0.125));
    }

    #[test]
    fn qrels_files_are_read_in_both_layouts_with_errors_naming_the_line() {
        let dir = tempfile::tempdir().expect("tempdir");
        let jsonl = dir.path().join("q.jsonl");
        std::fs::write(
            &jsonl,
            "{\"query\": \"retries\", \"relevant\": [\"embed/retry.rs\"]}\n\n\
             {\"id\": \"x\", \"query\": \"graded\", \"relevant\": {\"a\": 2, \"b\": 0}}\n",
        )
        .expect("write");
        let read = read_jsonl(&jsonl).expect("read");
        assert_eq!(read.len(), 2);
        assert_eq!((read[0].id.as_str(), read[0].line), ("1", 1));
        assert_eq!(read[1].relevant, BTreeMap::from([("a".to_owned(), 2.0)]));
        std::fs::write(&jsonl, "{\"query\": \"ok\", \"relevant\": [\"a\"]}\n{\"query\": \"no list\"}\n").expect("w");
        assert_eq!(
            read_jsonl(&jsonl).expect_err("bad").to_string(),
            format!("{}:2: no \"relevant\" list", jsonl.display())
        );

        let (qrels, queries) = (dir.path().join("test.tsv"), dir.path().join("queries.jsonl"));
        std::fs::write(&qrels, "query-id\tcorpus-id\tscore\n1\tdoc-a\t1\n1\tdoc-b\t2\n2\tdoc-c\t0\n").expect("w");
        std::fs::write(&queries, "{\"_id\": \"1\", \"text\": \"first\"}\n{\"_id\": \"2\", \"text\": \"none\"}\n")
            .expect("w");
        let read = read_beir(&qrels, &queries).expect("beir");
        assert_eq!(read.len(), 1, "a query without a relevant entry is left out");
        assert_eq!(read[0].relevant, BTreeMap::from([("doc-a".to_owned(), 1.0), ("doc-b".to_owned(), 2.0)]));
        std::fs::write(&qrels, "1\tdoc-a\n").expect("w");
        assert!(
            read_beir(&qrels, &queries)
                .expect_err("short")
                .to_string()
                .ends_with("test.tsv:1: expected query-id, corpus-id and score separated by tabs")
        );
    }
}
