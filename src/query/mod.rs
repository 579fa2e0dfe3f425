//! The query side: searches answered from the newest version of a dataset that can be read consistently. It
//! returns data; `cli/` prints it.
//!
//! Readers take no lock. Runs publish new versions, and index updates replace the graph, while searches go on, and
//! each removes the files the version before it needed. So a search that finds a file gone, or an index newer than
//! the manifest it read, starts again on the version that replaced it (at most [`MAX_ATTEMPTS`] times).
//!
//! The index need not match the version being searched. A graph of the same lineage answers for the rows it holds
//! (rows deleted since are filtered out) and the live rows added since are scored exactly; without a usable graph
//! (none built yet, or one from before a compaction or a new model) every live row is scored exactly. So a search
//! never fails just because a run published before the index caught up.

use std::path::Path;

use serde::Serialize;

use crate::index::{Hit, IndexError, SearchIndex, dot, normalize, top_k};
use std::collections::{HashMap, HashSet};

use crate::store::{Dataset, DocRecord, StoreError, StoredChunk};

/// Versions a search tries before giving up on a dataset that keeps changing under it.
pub const MAX_ATTEMPTS: usize = 5;

/// How the rows were found.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Method {
    /// The index matches the version.
    Index,
    /// The index is of an earlier version of the same lineage: its graph for the rows it holds, the live rows added
    /// since (`rows_scanned`) scored exactly.
    IndexAndScan { index_generation: u64, rows_scanned: u64 },
    /// No usable index: every live row scored exactly.
    Scan { reason: ScanReason, rows_scanned: u64 },
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum ScanReason {
    /// No index was built yet.
    NoIndex,
    /// The index is from before the dataset was compacted or embedded again from scratch.
    OtherLineage,
    /// The index is of a newer version than the dataset's manifest (a dataset restored without its index).
    IndexAhead,
}

/// A search's answer.
#[derive(Debug, Clone)]
pub struct Answer {
    /// The version searched.
    pub generation: u64,
    pub method: Method,
    /// Best first.
    pub hits: Vec<SearchHit>,
}

#[derive(Debug, Clone)]
pub struct SearchHit {
    /// Cosine similarity.
    pub score: f32,
    pub chunk: StoredChunk,
    /// The chunk's document as the version searched has it (its metadata; `rows` left empty), when the dataset has
    /// a documents table.
    pub document: Option<DocRecord>,
}

/// What to search for.
#[derive(Debug, Clone, Copy)]
pub struct Query<'a> {
    /// The query's embedding, made with `model` (and `requested_dimensions`): the dataset must still be in that
    /// vector space when it is searched.
    pub vector: &'a [f32],
    pub model: &'a str,
    pub requested_dimensions: Option<u32>,
    /// Hits wanted.
    pub k: usize,
    /// Candidates examined per graph search.
    pub ef: usize,
    /// Look up each hit's document (its metadata) in the documents table.
    pub documents: bool,
}

#[derive(Debug, thiserror::Error)]
pub enum QueryError {
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error(transparent)]
    Index(#[from] IndexError),
    #[error("{path}: the dataset was replaced {MAX_ATTEMPTS} times while searching; run the search again", path = path.display())]
    Unsettled { path: std::path::PathBuf },
    #[error("the query vector has {got} dimensions and the dataset's vectors {want}")]
    Dimensions { got: usize, want: usize },
    #[error("the dataset was embedded again with {now} while the query was embedded with {was}; run the search again")]
    OtherModel { was: String, now: String },
}

/// The `query.k` rows nearest to `query` in the newest version of the dataset in `dir`.
pub fn search(dir: &Path, query: &Query<'_>) -> Result<Answer, QueryError> {
    let mut use_index = true;
    for _ in 0..MAX_ATTEMPTS {
        let before = Stamp::read(dir);
        match attempt(dir, query, use_index) {
            Ok(Some(answer)) => return Ok(answer),
            // An index newer than the manifest read: the manifest has moved on too, unless the index is simply
            // ahead of it (a dataset restored without its index, say): then every row is scored instead.
            Ok(None) => use_index = Stamp::read(dir) != before,
            // A failure while the dataset changed (a file the old version needed removed by the new one): look at
            // the new version. A writer publishes before it removes anything, so the change is visible by now.
            Err(_) if Stamp::read(dir) != before => continue,
            Err(e) => return Err(e),
        }
    }
    Err(QueryError::Unsettled { path: dir.to_path_buf() })
}

/// What the current version and index are, to tell whether they changed during a search.
#[derive(PartialEq, Eq)]
struct Stamp(Option<blake3::Hash>, Option<blake3::Hash>);

impl Stamp {
    fn read(dir: &Path) -> Self {
        let hash = |path: &Path| std::fs::read(path).ok().map(|b| blake3::hash(&b));
        Stamp(hash(&dir.join(crate::store::MANIFEST_FILE)), hash(&crate::index::meta_path(dir)))
    }
}

/// One search of one version; `None` when the index read is newer than the manifest read.
fn attempt(dir: &Path, query: &Query<'_>, use_index: bool) -> Result<Option<Answer>, QueryError> {
    let (k, ef) = (query.k, query.ef);
    let dataset = Dataset::open(dir)?;
    let manifest = &dataset.manifest;
    if manifest.model != query.model || manifest.requested_dimensions != query.requested_dimensions {
        return Err(QueryError::OtherModel { was: query.model.to_owned(), now: manifest.model.clone() });
    }
    let dims = dataset.dimensions()?;
    let (query, with_documents) = (query.vector, query.documents);
    if query.len() != dims {
        return Err(QueryError::Dimensions { got: query.len(), want: dims });
    }
    let index = match SearchIndex::load(&dataset) {
        Ok(index) => Some(index),
        Err(IndexError::Missing { .. }) => None,
        Err(e) => return Err(e.into()),
    };
    let same_lineage =
        index.as_ref().filter(|i| use_index && i.meta.lineage == manifest.lineage && i.meta.dimensions == dims);
    if same_lineage.is_some_and(|i| i.meta.generation > manifest.generation) {
        return Ok(None);
    }
    let (hits, method) = match (index.as_ref(), same_lineage) {
        (Some(index), _) if use_index && index.covers(manifest) => (index.search(query, k, ef)?, Method::Index),
        (_, Some(index)) => {
            let live = dataset.live_rows()?;
            let end = manifest.next_row();
            let is_live = |row: u64| row < end && live.as_ref().is_none_or(|l| l.binary_search(&row).is_ok());
            let mut hits = index.search_where(query, k, ef, &is_live)?;
            let (scanned, rows) = scan(&dataset, query, k, index.meta.covered_rows, &is_live)?;
            hits.extend(scanned);
            let method = Method::IndexAndScan { index_generation: index.meta.generation, rows_scanned: rows };
            (top_k(hits, k), method)
        }
        (index, None) => {
            let live = dataset.live_rows()?;
            let is_live = |row: u64| live.as_ref().is_none_or(|l| l.binary_search(&row).is_ok());
            let (hits, rows) = scan(&dataset, query, k, 0, &is_live)?;
            let reason = match index {
                None => ScanReason::NoIndex,
                Some(_) if !use_index => ScanReason::IndexAhead,
                Some(_) => ScanReason::OtherLineage,
            };
            (hits, Method::Scan { reason, rows_scanned: rows })
        }
    };
    let rows: Vec<u64> = hits.iter().map(|h| h.ordinal).collect();
    let chunks = dataset.fetch(&rows)?;
    let mut documents: HashMap<String, DocRecord> = HashMap::new();
    if with_documents && manifest.docs_file.is_some() && !chunks.is_empty() {
        let wanted: HashSet<&str> = chunks.iter().map(|c| c.doc.as_str()).collect();
        let read = dataset.for_each_doc(|mut record| {
            if wanted.contains(record.doc.as_str()) {
                record.rows = Vec::new();
                documents.insert(record.doc.clone(), record);
            }
        });
        // The hits stand without their documents' metadata: say so, rather than fail the search.
        if let Err(e) = read {
            tracing::warn!("the documents' metadata could not be read: {e}");
            documents.clear();
        }
    }
    let hits = hits
        .into_iter()
        .zip(chunks)
        .map(|(hit, chunk)| SearchHit { score: hit.score, document: documents.get(&chunk.doc).cloned(), chunk })
        .collect();
    Ok(Some(Answer { generation: manifest.generation, method, hits }))
}

/// The `k` best live rows with ids from `from` on, scored exactly; and how many rows were scored.
fn scan(
    dataset: &Dataset,
    query: &[f32],
    k: usize,
    from: u64,
    is_live: &dyn Fn(u64) -> bool,
) -> Result<(Vec<Hit>, u64), StoreError> {
    let dims = query.len();
    let mut q = query.to_vec();
    normalize(&mut q);
    let first_file = dataset.manifest.files.partition_point(|f| f.first_row + f.rows <= from);
    let mut best: Vec<Hit> = Vec::new();
    let mut scored = 0u64;
    let mut v = vec![0f32; dims];
    dataset.for_each_vector_batch::<StoreError>(first_file, |first, vectors, rows| {
        for (i, vector) in vectors.chunks_exact(dims).take(rows).enumerate() {
            let row = first + i as u64;
            if row < from || !is_live(row) {
                continue;
            }
            v.copy_from_slice(vector);
            normalize(&mut v);
            best.push(Hit { ordinal: row, score: dot(&q, &v).clamp(-1.0, 1.0) });
            scored += 1;
        }
        // Keep memory to a few times k whatever the number of rows.
        if best.len() > 4 * k.max(256) {
            best = top_k(std::mem::take(&mut best), k);
        }
        Ok(())
    })?;
    Ok((top_k(best, k), scored))
}

#[cfg(test)]
mod tests {
    use std::collections::HashMap;
    use std::sync::Arc;

    use super::*;
    use crate::chunk::Chunk;
    use crate::index::{IndexParams, update};
    use crate::store::{ChunkingInfo, DatasetWriter, DocRecord, Manifest, RunStatus};

    const DIMS: usize = 8;

    /// Row `i` points along axis `i % DIMS`, scaled so it is the unique best match for `axis(i)` among its peers.
    fn vector(i: u32) -> Vec<f32> {
        let mut v = vec![0.01f32; DIMS];
        v[i as usize % DIMS] = 1.0 + i as f32 / 100.0;
        v
    }

    fn axis(i: usize) -> Vec<f32> {
        let mut v = vec![0f32; DIMS];
        v[i] = 1.0;
        v
    }

    fn chunk(i: u32) -> Chunk {
        let text = format!("text {i}");
        Chunk {
            id: format!("id-{i}"),
            doc: Arc::from(format!("doc-{i}").as_str()),
            chunk_index: 0,
            start: 0,
            end: text.len() as u64,
            tokens: 2,
            hash: blake3::hash(text.as_bytes()).to_hex().to_string(),
            page: None,
            text,
        }
    }

    fn settings() -> Manifest {
        Manifest::new("m".into(), None, ChunkingInfo { tokenizer: "t".into(), max_tokens: 8, overlap: 0 })
    }

    fn record(i: u32, row: u64) -> DocRecord {
        DocRecord {
            doc: format!("doc-{i}"),
            file: String::new(),
            size: 0,
            mtime_ns: 0,
            stat_trusted: false,
            content_hash: String::new(),
            rows: vec![row],
            missing: 0,
            format: None,
            title: None,
            fields: Default::default(),
        }
    }

    /// Publishes a version holding the documents `keep` of the previous one (by number) and the new ones `add`.
    fn publish(dir: &Path, base: Option<&Manifest>, keep: &[u32], add: &[u32]) -> Manifest {
        let mut docs: HashMap<String, DocRecord> = HashMap::new();
        if let Some(base) = base {
            let dataset = Dataset { dir: dir.to_path_buf(), manifest: base.clone() };
            dataset
                .for_each_doc(|d| {
                    let n: u32 = d.doc.trim_start_matches("doc-").parse().expect("number");
                    if keep.contains(&n) {
                        docs.insert(d.doc.clone(), d);
                    }
                })
                .expect("docs");
        }
        let mut writer = DatasetWriter::begin(dir, settings(), base, base.is_some()).expect("begin");
        for &i in add {
            let first = writer.write(&[chunk(i)], &vector(i), DIMS).expect("write");
            docs.insert(format!("doc-{i}"), record(i, first));
        }
        writer.finish(&docs, &[], RunStatus::Complete).expect("finish")
    }

    fn query(vector: &[f32], k: usize) -> Query<'_> {
        Query { vector, model: "m", requested_dimensions: None, k, ef: 64, documents: true }
    }

    fn docs_of(answer: &Answer) -> Vec<String> {
        answer.hits.iter().map(|h| h.chunk.doc.clone()).collect()
    }

    #[test]
    fn a_version_newer_than_its_index_is_searched_in_full() {
        let dir = tempfile::tempdir().expect("tempdir");
        let v1 = publish(dir.path(), None, &[], &[0, 1, 2, 3]);
        let found = search(dir.path(), &query(&axis(1), 1)).expect("search");
        assert_eq!(found.method, Method::Scan { reason: ScanReason::NoIndex, rows_scanned: 4 });
        assert_eq!(docs_of(&found), ["doc-1"]);

        update(&Dataset::open(dir.path()).expect("open"), IndexParams::default(), false).expect("index");
        assert_eq!(search(dir.path(), &query(&axis(1), 1)).expect("search").method, Method::Index);

        // Version 2 (the index still at 1): doc-1 deleted, doc-9 (axis 1) added.
        let v2 = publish(dir.path(), Some(&v1), &[0, 2, 3], &[9]);
        let found = search(dir.path(), &query(&axis(1), 2)).expect("search");
        assert_eq!(found.method, Method::IndexAndScan { index_generation: 1, rows_scanned: 1 });
        assert_eq!(found.generation, 2);
        assert_eq!(docs_of(&found)[0], "doc-9", "the row added since the index is found");
        assert!(!docs_of(&found).contains(&"doc-1".to_owned()), "the row deleted since is filtered out");

        // Version 3 drops the first file entirely (all its documents deleted): its rows never come back.
        let v3 = publish(dir.path(), Some(&v2), &[9], &[10, 11]);
        assert_eq!(v3.files.len(), 2, "{v3:?}");
        for probe in 0..DIMS {
            let found = search(dir.path(), &query(&axis(probe), 3)).expect("search");
            assert!(found.hits.iter().all(|h| ["doc-9", "doc-10", "doc-11"].contains(&h.chunk.doc.as_str())));
        }
        // Brought up to date, the index answers alone again, with the same result.
        let before = docs_of(&search(dir.path(), &query(&axis(2), 3)).expect("search"));
        update(&Dataset::open(dir.path()).expect("open"), IndexParams::default(), false).expect("index");
        let after = search(dir.path(), &query(&axis(2), 3)).expect("search");
        assert_eq!((after.method.clone(), docs_of(&after)), (Method::Index, before));
    }

    #[test]
    fn an_index_of_another_lineage_is_not_used() {
        let dir = tempfile::tempdir().expect("tempdir");
        publish(dir.path(), None, &[], &[0, 1]);
        update(&Dataset::open(dir.path()).expect("open"), IndexParams::default(), false).expect("index");
        let current = Dataset::open(dir.path()).expect("open").manifest;
        // From scratch (as --overwrite or a compaction would): new lineage, row ids from 0 again.
        let fresh = {
            let mut writer = DatasetWriter::begin(dir.path(), settings(), Some(&current), false).expect("begin");
            let first = writer.write(&[chunk(5)], &vector(5), DIMS).expect("write");
            let docs = HashMap::from([("doc-5".to_owned(), record(5, first))]);
            writer.finish(&docs, &[], RunStatus::Complete).expect("finish")
        };
        assert_ne!(fresh.lineage, current.lineage);
        let found = search(dir.path(), &query(&axis(1), 2)).expect("search");
        assert_eq!(found.method, Method::Scan { reason: ScanReason::OtherLineage, rows_scanned: 1 });
        assert_eq!(docs_of(&found), ["doc-5"]);
    }

    #[test]
    fn a_file_missing_from_a_settled_version_is_reported_not_retried() {
        let dir = tempfile::tempdir().expect("tempdir");
        let v1 = publish(dir.path(), None, &[], &[0, 1]);
        std::fs::remove_file(dir.path().join(&v1.files[0].path)).expect("rm");
        let err = search(dir.path(), &query(&axis(1), 1)).expect_err("missing file");
        assert!(err.to_string().contains(&v1.files[0].path), "{err}");
    }

    #[test]
    fn an_index_ahead_of_a_settled_manifest_is_set_aside() {
        let dir = tempfile::tempdir().expect("tempdir");
        let v1 = publish(dir.path(), None, &[], &[0, 1]);
        let v1_bytes = std::fs::read(dir.path().join(crate::store::MANIFEST_FILE)).expect("manifest");
        publish(dir.path(), Some(&v1), &[0, 1], &[2]);
        update(&Dataset::open(dir.path()).expect("open"), IndexParams::default(), false).expect("index");
        // Restored from an older backup, without restoring the index.
        std::fs::write(dir.path().join(crate::store::MANIFEST_FILE), v1_bytes).expect("restore");
        let found = search(dir.path(), &query(&axis(1), 2)).expect("search");
        assert_eq!(found.method, Method::Scan { reason: ScanReason::IndexAhead, rows_scanned: 2 });
        assert_eq!(docs_of(&found)[0], "doc-1");
        let probe = axis(1);
        let other = Query { model: "another", ..query(&probe, 2) };
        assert!(matches!(search(dir.path(), &other), Err(QueryError::OtherModel { .. })));
    }

    #[test]
    fn a_query_of_the_wrong_size_is_an_error() {
        let dir = tempfile::tempdir().expect("tempdir");
        publish(dir.path(), None, &[], &[0]);
        let err = search(dir.path(), &query(&[1.0, 0.0], 1)).expect_err("wrong size");
        assert!(matches!(err, QueryError::Dimensions { got: 2, want: DIMS }), "{err}");
    }
}
