//! The query side: searches answered from the newest version of a dataset that can be read consistently. It
//! returns data; `cli/` prints it.
//!
//! [`Engine`] holds a dataset open (its manifest, index, documents and the last filter's rows) between searches and
//! opens it again only when a run or an index update has published since, so a batch of queries or a server pays
//! for opening once. [`Searcher`] adds the dataset's model, to search with text.
//!
//! Readers take no lock. Runs publish new versions, and index updates replace the graph, while searches go on, and
//! each removes the files the version before it needed. So a search that finds a file gone, or an index newer than
//! the manifest it read, starts again on the version that replaced it (at most [`MAX_ATTEMPTS`] times).
//!
//! The index need not match the version being searched. A graph of the same lineage answers for the rows it holds
//! (rows deleted since are filtered out) and the live rows added since are scored exactly; without a usable graph
//! (none built yet, or one from before a compaction or a new model) every live row is scored exactly. So a search
//! never fails just because a run published before the index caught up.
//!
//! A filter becomes the set of rows it matches, evaluated on the documents table (and on the chunks' own columns
//! when it names them). When it matches few rows, those rows are scored exactly; otherwise the graph is searched
//! with the filter applied inside it, and scored exactly after all if the graph found fewer than `k`. Either way,
//! when at least `k` rows match, `k` are returned.

pub mod ask;
pub mod eval;
pub mod filter;
pub mod json;
mod rows;

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering as AtomicOrdering};
use std::sync::{Arc, Mutex};

use rayon::prelude::*;
use serde::Serialize;

pub use filter::{Columns, Filter, FilterError};
pub use rows::RowSet;

use crate::embed::{BuildError, EmbedError, Embedder, EmbedderSpec, ModelEmbedder, RequestSettings};
use crate::index::keyword::{KeywordHit, KeywordIndex, RowFilter};
use crate::index::{EXACT_SEARCH_MAX_POINTS, Hit, IndexError, SearchIndex, dot, normalize, top_k};
use crate::stats::Stats;
use crate::store::{Dataset, DocRecord, StoreError, StoredChunk};

/// Versions a search tries before giving up on a dataset that keeps changing under it.
pub const MAX_ATTEMPTS: usize = 5;

/// A filter matching at most this many rows is answered by scoring them all...
pub const EXACT_FILTER_ROWS: u64 = 20_000;
/// ...as is one matching at most this share of the live rows (the graph search visits ever more rows that the
/// filter then drops as it gets more selective).
pub const EXACT_FILTER_SHARE: f64 = 0.05;

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

/// Which retrievers answer a query.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Mode {
    /// Nearest neighbours of the query's embedding.
    Vector,
    /// BM25 over the chunks' texts, titles and identifiers.
    Keyword,
    /// Both, fused by reciprocal rank ([`fuse`]).
    Hybrid,
}

impl Mode {
    pub fn parse(name: &str) -> Option<Mode> {
        match name.trim().to_ascii_lowercase().as_str() {
            "vector" => Some(Mode::Vector),
            "keyword" | "bm25" => Some(Mode::Keyword),
            "hybrid" => Some(Mode::Hybrid),
            _ => None,
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            Mode::Vector => "vector",
            Mode::Keyword => "keyword",
            Mode::Hybrid => "hybrid",
        }
    }

    pub fn needs_vector(self) -> bool {
        self != Mode::Keyword
    }
}

/// RRF's k: a rank-1 hit adds 1/61.
pub const DEFAULT_RRF_K: f64 = 60.0;
/// Hits each retriever contributes to hybrid fusion (at least k).
pub const DEFAULT_CANDIDATES: usize = 50;

/// Where a hit stood in each retriever's list (1-based), and its score there.
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize)]
pub struct Ranks {
    pub vector: Option<u32>,
    pub keyword: Option<u32>,
    /// Cosine similarity.
    pub vector_score: Option<f32>,
    /// BM25.
    pub keyword_score: Option<f32>,
    /// The chunk holds every identifier of the query (ranked first in hybrid mode).
    pub exact: bool,
}

/// How a filtered search went.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct FilterPlan {
    /// Live rows the filter matched, of `live_rows`.
    pub matched: u64,
    pub live_rows: u64,
    pub strategy: FilterStrategy,
    /// Rows whose vectors were scored exactly (all the matched ones for `exact`).
    pub rows_scored: u64,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum FilterStrategy {
    /// The matched rows scored exactly: few matched.
    Exact,
    /// The graph searched with the filter applied inside it.
    Graph,
    /// The graph found fewer than `k` matching rows, so the matched rows were scored exactly.
    GraphThenExact,
    /// Keyword mode: the filter applied inside the keyword search.
    Keyword,
}

/// A search's answer.
#[derive(Debug, Clone)]
pub struct Answer {
    /// The version searched.
    pub generation: u64,
    pub mode: Mode,
    /// How the vector retriever found its rows (not in keyword mode).
    pub method: Option<Method>,
    /// The version the keyword index matches, when it answered (it may lag behind `generation`).
    pub keyword_generation: Option<u64>,
    /// Present when the search was filtered.
    pub filter: Option<FilterPlan>,
    /// Best first.
    pub hits: Vec<SearchHit>,
}

#[derive(Debug, Clone)]
pub struct SearchHit {
    /// The mode's score: cosine similarity, BM25, or the fused score.
    pub score: f32,
    pub ranks: Ranks,
    pub chunk: StoredChunk,
    /// The chunk's document as the version searched has it (its metadata; `rows` left empty), when asked for and
    /// the dataset has a documents table.
    pub document: Option<DocRecord>,
}

/// What to search for.
#[derive(Debug, Clone, Copy)]
pub struct Query<'a> {
    /// The query's embedding, made with `model` (and `requested_dimensions`): the dataset must still be in that
    /// vector space when it is searched. Needed by the vector and hybrid modes.
    pub vector: Option<&'a [f32]>,
    /// The query's text, for the keyword and hybrid modes.
    pub text: &'a str,
    /// `None`: hybrid when the dataset has a keyword index of its lineage, vector otherwise (datasets built before
    /// keyword indexes existed, or one searched while a rebuild is catching up).
    pub mode: Option<Mode>,
    /// Hybrid: RRF's k, and the hits each retriever contributes.
    pub rrf_k: f64,
    pub candidates: usize,
    pub model: &'a str,
    pub requested_dimensions: Option<u32>,
    /// Hits wanted.
    pub k: usize,
    /// Candidates examined per graph search.
    pub ef: usize,
    /// Look up each hit's document (its metadata) in the documents table.
    pub documents: bool,
    /// Only rows this matches (parsed against the dataset's [`Columns`]).
    pub filter: Option<&'a Filter>,
}

#[derive(Debug, thiserror::Error)]
pub enum QueryError {
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error(transparent)]
    Index(#[from] IndexError),
    #[error("{path}: the dataset was replaced {MAX_ATTEMPTS} times while searching; run the search again", path = path.display())]
    Unsettled { path: PathBuf },
    #[error("the query vector has {got} dimensions and the dataset's vectors {want}")]
    Dimensions { got: usize, want: usize },
    #[error("the dataset was embedded again with {now} while the query was embedded with {was}; run the search again")]
    OtherModel { was: String, now: String },
    #[error(
        "{path}: the dataset has no documents table (it was written by an older version), so it cannot be filtered; \
         run `tars-index embed` on it once to add one", path = path.display()
    )]
    NoDocuments { path: PathBuf },
    #[error(transparent)]
    Filter(#[from] FilterError),
    #[error(
        "{path}: the dataset has no keyword index yet, so it can only be searched with --mode vector; \
         `tars-index index {path}` builds one", path = path.display()
    )]
    NoKeywordIndex { path: PathBuf },
    #[error(
        "{path}: the keyword index is from before the dataset was rebuilt; `tars-index index {path}` brings it up to \
         date", path = path.display()
    )]
    StaleKeywordIndex { path: PathBuf },
    #[error("{0} mode needs the query's embedding")]
    NoVector(&'static str),
    #[error("the query is empty")]
    EmptyQuery,
    #[error("the query is too long for the model: {0}")]
    QueryTooLong(String),
    #[error("embedding the query failed: {0}")]
    Embed(#[source] EmbedError),
    #[error(transparent)]
    Model(#[from] BuildError),
    #[error("search thread failed: {0}")]
    Thread(String),
}

impl QueryError {
    /// Whether the caller asked for something wrong (as opposed to the dataset or the endpoint failing).
    pub fn is_usage(&self) -> bool {
        matches!(
            self,
            QueryError::Index(_)
                | QueryError::Dimensions { .. }
                | QueryError::OtherModel { .. }
                | QueryError::NoDocuments { .. }
                | QueryError::NoKeywordIndex { .. }
                | QueryError::StaleKeywordIndex { .. }
                | QueryError::Filter(_)
                | QueryError::EmptyQuery
                | QueryError::QueryTooLong(_)
                | QueryError::Model(_)
        )
    }
}

/// The `query.k` rows nearest to `query` in the newest version of the dataset in `dir` (opening it for this one
/// search; hold an [`Engine`] to search it again).
pub fn search(dir: &Path, query: &Query<'_>) -> Result<Answer, QueryError> {
    Engine::new(dir).search(query)
}

/// A server shares one engine and one searcher between its request handlers.
const _: () = {
    const fn shared<T: Send + Sync>() {}
    shared::<Engine>();
    shared::<Searcher>();
};

/// A dataset held open for searching.
pub struct Engine {
    dir: PathBuf,
    snapshot: Mutex<Option<Arc<Snapshot>>>,
    exact_max_points: usize,
    exact_filter_rows: u64,
    /// Searches use the open version until [`Engine::refresh`] replaces it, instead of checking for a new one each
    /// time (a server: it refreshes in the background, so no query waits for a version to load).
    pinned: bool,
    /// Held while a refresh loads a version, so two never load the same one.
    refreshing: Mutex<()>,
}

/// A summary of the open version, for listings.
#[derive(Debug, Clone, Serialize)]
pub struct Summary {
    pub generation: u64,
    pub model: String,
    pub dimensions: Option<usize>,
    /// Live chunks.
    pub rows: u64,
    /// `None` for datasets written before documents were recorded.
    pub documents: Option<u64>,
    pub updated_unix: u64,
    pub metadata: std::collections::BTreeMap<String, crate::source::FieldType>,
    pub keyword_index: bool,
    pub vector_index: bool,
}

/// One document of the open version and its chunks, in order.
#[derive(Debug, Clone)]
pub struct Document {
    pub record: DocRecord,
    pub chunks: Vec<StoredChunk>,
}

impl Engine {
    pub fn new(dir: &Path) -> Self {
        Self {
            dir: dir.to_path_buf(),
            snapshot: Mutex::new(None),
            exact_max_points: EXACT_SEARCH_MAX_POINTS,
            exact_filter_rows: EXACT_FILTER_ROWS,
            pinned: false,
            refreshing: Mutex::new(()),
        }
    }

    /// Searches the open version until [`Engine::refresh`] finds a newer one (they still move on by themselves
    /// when the open version fails them because its files are gone).
    pub fn pinned(mut self) -> Self {
        self.pinned = true;
        self
    }

    /// Opens the newest version if it is not the open one, loads everything a search of it may need (graph, keyword
    /// index, documents), and only then makes it the one searches use: searches in flight finish on the version
    /// they started on, which is dropped after them. Returns the new version's generation, `None` when the open one
    /// is still the newest.
    pub fn refresh(&self) -> Result<Option<u64>, QueryError> {
        let _one = self.refreshing.lock().unwrap_or_else(|p| p.into_inner());
        let stamp = Stamp::read(&self.dir);
        if self.held().is_some_and(|s| s.stamp == stamp && s.use_index) {
            return Ok(None);
        }
        let snapshot = Arc::new(Snapshot::open(self, stamp, true)?);
        snapshot.warm()?;
        let generation = snapshot.dataset.manifest.generation;
        *self.snapshot.lock().unwrap_or_else(|p| p.into_inner()) = Some(snapshot);
        Ok(Some(generation))
    }

    fn held(&self) -> Option<Arc<Snapshot>> {
        self.snapshot.lock().unwrap_or_else(|p| p.into_inner()).clone()
    }

    /// The version to answer from now: the open one when pinned, else the newest.
    fn now(&self) -> Result<Arc<Snapshot>, QueryError> {
        match self.held().filter(|_| self.pinned) {
            Some(snapshot) => Ok(snapshot),
            None => self.current(&Stamp::read(&self.dir), true),
        }
    }

    /// What the version searches would see now holds.
    pub fn summary(&self) -> Result<Summary, QueryError> {
        let snapshot = self.now()?;
        let manifest = &snapshot.dataset.manifest;
        let documents = match manifest.docs_file {
            Some(_) => Some(snapshot.docs()?.records.len() as u64),
            None => None,
        };
        let keyword_index = snapshot
            .keyword()
            .ok()
            .is_some_and(|k| Option::as_ref(&k).is_some_and(|k| k.meta.lineage == manifest.lineage));
        let vector_index = snapshot.index().ok().is_some_and(|i| Option::as_ref(&i).is_some());
        Ok(Summary {
            generation: manifest.generation,
            model: manifest.model.clone(),
            dimensions: manifest.dimensions,
            rows: manifest.live_rows,
            documents,
            updated_unix: manifest.updated_unix,
            metadata: manifest.metadata.clone(),
            keyword_index,
            vector_index,
        })
    }

    /// The document named `name` and its chunks in order; `None` when the version has no such document.
    pub fn document(&self, name: &str) -> Result<Option<Document>, QueryError> {
        let snapshot = self.now()?;
        if snapshot.dataset.manifest.docs_file.is_none() {
            return Err(QueryError::NoDocuments { path: self.dir.clone() });
        }
        let docs = snapshot.docs()?;
        let Some(record) = docs.by_name.get(name).map(|&i| &docs.records[i]) else {
            return Ok(None);
        };
        let mut rows = record.rows.clone();
        rows.sort_unstable();
        let mut chunks = snapshot.dataset.fetch_with(&rows, Some(&snapshot.footers))?;
        chunks.sort_by_key(|c| c.chunk_index);
        Ok(Some(Document { record: record.clone(), chunks }))
    }

    /// Live chunks `filter` matches (all live chunks without one).
    pub fn count(&self, filter: Option<&Filter>) -> Result<u64, QueryError> {
        let snapshot = self.now()?;
        match filter {
            Some(filter) => Ok(snapshot.select(filter)?.len()),
            None => Ok(snapshot.dataset.manifest.live_rows),
        }
    }

    /// Searches indexes of up to `points` points exhaustively (instead of [`EXACT_SEARCH_MAX_POINTS`]), and filters
    /// matching up to `rows` rows (instead of [`EXACT_FILTER_ROWS`]) by scoring them: for tests of the graph paths.
    pub fn with_thresholds(mut self, points: usize, rows: u64) -> Self {
        self.exact_max_points = points;
        self.exact_filter_rows = rows;
        self
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// The version searches would see now.
    pub fn dataset(&self) -> Result<Dataset, QueryError> {
        Ok(self.now()?.dataset.clone())
    }

    /// The columns filters can name, for the version searches would see now.
    pub fn columns(&self) -> Result<Columns, QueryError> {
        Ok(Columns::new(&self.dataset()?.manifest.metadata))
    }

    pub fn search(&self, query: &Query<'_>) -> Result<Answer, QueryError> {
        let mut answers = self.search_many(std::slice::from_ref(query))?;
        answers.pop().unwrap_or_else(|| Err(QueryError::Thread("no answer".to_owned())))
    }

    /// Answers every query against the same version, in order: ranked in parallel, their hits read together. A
    /// query that is wrong fails alone; the dataset failing fails them all.
    pub fn search_many(&self, queries: &[Query<'_>]) -> Result<Vec<Result<Answer, QueryError>>, QueryError> {
        if let Some(snapshot) = self.held().filter(|_| self.pinned)
            && let Ok(Some(answers)) = snapshot.search_many(queries)
            && answers.iter().all(Result::is_ok)
        {
            return Ok(answers);
        }
        // Anything amiss with the open version: look at the newest, as an engine that is not pinned does.
        let mut use_index = true;
        for _ in 0..MAX_ATTEMPTS {
            let before = Stamp::read(&self.dir);
            match self.current(&before, use_index).and_then(|snapshot| snapshot.search_many(queries)) {
                // A query that failed while the dataset changed may have failed because of it: all go again.
                Ok(Some(answers)) if answers.iter().any(Result::is_err) && Stamp::read(&self.dir) != before => {
                    continue;
                }
                Ok(Some(answers)) => return Ok(answers),
                // An index newer than the manifest read: the manifest has moved on too, unless the index is simply
                // ahead of it (a dataset restored without its index, say): then every row is scored instead.
                Ok(None) => use_index = Stamp::read(&self.dir) != before,
                // A failure while the dataset changed (a file the old version needed removed by the new one): look
                // at the new version. A writer publishes before it removes anything, so the change is visible by now.
                Err(_) if Stamp::read(&self.dir) != before => continue,
                Err(e) => return Err(e),
            }
        }
        Err(QueryError::Unsettled { path: self.dir.clone() })
    }

    /// The open version if it is still the one `stamp` describes, else the version on disk now.
    fn current(&self, stamp: &Stamp, use_index: bool) -> Result<Arc<Snapshot>, QueryError> {
        let mut held = self.snapshot.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(snapshot) = held.as_ref().filter(|s| s.stamp == *stamp && s.use_index == use_index) {
            return Ok(Arc::clone(snapshot));
        }
        *held = None;
        let snapshot = Arc::new(Snapshot::open(self, stamp.clone(), use_index)?);
        *held = Some(Arc::clone(&snapshot));
        Ok(snapshot)
    }
}

/// What the current version and indexes are, to tell whether they changed.
#[derive(Clone, PartialEq, Eq)]
struct Stamp(Option<blake3::Hash>, Option<blake3::Hash>, Option<blake3::Hash>, blake3::Hash);

impl Stamp {
    fn read(dir: &Path) -> Self {
        let hash = |path: &Path| std::fs::read(path).ok().map(|b| blake3::hash(&b));
        // `_latest.json` too: a dataset in object storage's layout on disk (`file://`, a sharded run's) is published
        // there.
        Stamp(
            hash(&dir.join(crate::store::MANIFEST_FILE)),
            hash(&crate::index::meta_path(dir)),
            hash(&dir.join("_latest.json")),
            // An index update extends the keyword index in place and then deletes the segment files it merged: a
            // search that fails on one must see that something changed and look again.
            blake3::hash(&crate::index::keyword::commit_stamp(dir)),
        )
    }
}

/// One version of a dataset, open: what every search of it needs, and what some need, loaded when first asked
/// (the graph for the vector and hybrid modes, the keyword index for keyword and hybrid, the documents for filters
/// and metadata).
struct Snapshot {
    stamp: Stamp,
    use_index: bool,
    dataset: Dataset,
    exact_max_points: usize,
    exact_filter_rows: u64,
    index: Lazy<Option<SearchIndex>>,
    keyword: Lazy<Option<KeywordIndex>>,
    docs: Mutex<Option<Arc<Docs>>>,
    /// The last filter's rows (a batch of queries or a server's clients often repeat one).
    last_filter: Mutex<Option<(Filter, Arc<RowSet>)>>,
    /// The data files' footers, parsed by the first fetch of hits.
    footers: crate::store::Footers,
}

/// A value loaded on first use; a failed load is tried again next time.
struct Lazy<T>(Mutex<Option<Arc<T>>>);

impl<T> Lazy<T> {
    fn new() -> Self {
        Self(Mutex::new(None))
    }

    fn get(&self, load: impl FnOnce() -> Result<T, QueryError>) -> Result<Arc<T>, QueryError> {
        let mut held = self.0.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(value) = held.as_ref() {
            return Ok(Arc::clone(value));
        }
        let value = Arc::new(load()?);
        *held = Some(Arc::clone(&value));
        Ok(value)
    }
}

/// The documents table, in memory.
struct Docs {
    records: Vec<DocRecord>,
    by_name: HashMap<String, usize>,
    /// Sorted live row ids; `None` when every row id given out is live.
    live: Option<Vec<u64>>,
}

/// A search ranked but its hits not yet read: the answer without hits, and the rows to fill them from.
struct Ranked {
    answer: Answer,
    rows: Vec<(u64, f32, Ranks)>,
    documents: bool,
}

/// What the vector retriever found.
struct VectorHits {
    hits: Vec<Hit>,
    method: Method,
    plan: Option<FilterPlan>,
}

impl Snapshot {
    fn open(engine: &Engine, stamp: Stamp, use_index: bool) -> Result<Self, QueryError> {
        Ok(Self {
            stamp,
            use_index,
            dataset: Dataset::open(&engine.dir)?,
            exact_max_points: engine.exact_max_points,
            exact_filter_rows: engine.exact_filter_rows,
            index: Lazy::new(),
            keyword: Lazy::new(),
            docs: Mutex::new(None),
            last_filter: Mutex::new(None),
            footers: crate::store::Footers::default(),
        })
    }

    /// Loads what searches of this version may need, so the first of them does not wait for it.
    fn warm(&self) -> Result<(), QueryError> {
        self.index()?;
        // A damaged keyword index is reported by the searches that need it; vector searches go on without it.
        if let Err(e) = self.keyword() {
            tracing::warn!("{}: the keyword index cannot be used: {e}", self.dataset.dir.display());
        }
        if self.dataset.manifest.docs_file.is_some() {
            self.docs()?;
        }
        Ok(())
    }

    fn index(&self) -> Result<Arc<Option<SearchIndex>>, QueryError> {
        self.index.get(|| {
            if !self.use_index || self.dataset.manifest.rows == 0 {
                return Ok(None);
            }
            match SearchIndex::load(&self.dataset) {
                Ok(index) => Ok(Some(index.with_exact_max_points(self.exact_max_points))),
                Err(IndexError::Missing { .. }) => Ok(None),
                Err(e) => Err(e.into()),
            }
        })
    }

    fn keyword(&self) -> Result<Arc<Option<KeywordIndex>>, QueryError> {
        self.keyword.get(|| match KeywordIndex::open(&self.dataset) {
            Ok(index) => Ok(Some(index)),
            Err(IndexError::Missing { .. }) => Ok(None),
            Err(e) => Err(e.into()),
        })
    }

    /// The `n` best rows for `text` by BM25: from the saved index, and from the rows added since it was updated.
    fn keyword_hits(
        &self,
        index: &KeywordIndex,
        text: &str,
        n: usize,
        selected: Option<&Arc<RowSet>>,
    ) -> Result<Vec<KeywordHit>, QueryError> {
        let allowed = self.keyword_allowed(index, selected)?;
        let mut hits = index.search(text, n, allowed.as_ref())?;
        let manifest = &self.dataset.manifest;
        if index.meta.covered_rows < manifest.next_row() {
            let docs = if manifest.docs_file.is_some() { Some(self.docs()?) } else { None };
            let title = |doc: &str| {
                let docs = docs.as_ref()?;
                docs.records.get(*docs.by_name.get(doc)?)?.title.clone()
            };
            let allow_all = |_: u64| true;
            let allowed_since: &dyn Fn(u64) -> bool = allowed.as_deref().unwrap_or(&allow_all);
            let since = KeywordIndex::of_rows_since(&self.dataset, index.meta.covered_rows, &title, allowed_since)?;
            // It holds allowed rows only.
            hits.extend(since.search(text, n, None)?);
            hits.sort_by(|a, b| b.exact.cmp(&a.exact).then(b.score.total_cmp(&a.score)).then(a.row.cmp(&b.row)));
            hits.truncate(n);
        }
        Ok(hits)
    }

    /// Rows the keyword index may answer with: the filter's, or the live ones (the index may lag behind the
    /// version and still hold rows deleted since, or be ahead of an older version). `None` when that is every row
    /// the index holds, which spares a check per matching document.
    fn keyword_allowed(
        &self,
        index: &KeywordIndex,
        selected: Option<&Arc<RowSet>>,
    ) -> Result<Option<RowFilter>, QueryError> {
        if let Some(rows) = selected {
            let rows = Arc::clone(rows);
            return Ok(Some(Arc::new(move |row| rows.contains(row))));
        }
        let manifest = &self.dataset.manifest;
        if manifest.all_rows_live() {
            let end = manifest.next_row();
            if index.meta.covered_rows <= end {
                return Ok(None);
            }
            return Ok(Some(Arc::new(move |row| row < end)));
        }
        let docs = self.docs()?;
        Ok(Some(Arc::new(move |row| docs.live.as_ref().is_none_or(|l| l.binary_search(&row).is_ok()))))
    }

    fn docs(&self) -> Result<Arc<Docs>, QueryError> {
        let mut held = self.docs.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(docs) = held.as_ref() {
            return Ok(Arc::clone(docs));
        }
        let manifest = &self.dataset.manifest;
        let mut records = Vec::new();
        if manifest.docs_file.is_some() {
            self.dataset.for_each_doc(|record| records.push(record))?;
        }
        let by_name = records.iter().enumerate().map(|(i, r)| (r.doc.clone(), i)).collect();
        let live = if manifest.all_rows_live() {
            None
        } else {
            let mut live: Vec<u64> = records.iter().flat_map(|r| r.rows.iter().copied()).collect();
            live.sort_unstable();
            Some(live)
        };
        let docs = Arc::new(Docs { records, by_name, live });
        *held = Some(Arc::clone(&docs));
        Ok(docs)
    }

    /// The live rows `filter` matches.
    fn select(&self, filter: &Filter) -> Result<Arc<RowSet>, QueryError> {
        if let Some((held, rows)) = self.last_filter.lock().unwrap_or_else(|p| p.into_inner()).as_ref()
            && held == filter
        {
            return Ok(Arc::clone(rows));
        }
        if self.dataset.manifest.docs_file.is_none() && self.dataset.manifest.rows > 0 {
            return Err(QueryError::NoDocuments { path: self.dataset.dir.clone() });
        }
        let docs = self.docs()?;
        let end = self.dataset.manifest.next_row();
        let mut rows = RowSet::new(end);
        if filter.per_chunk() {
            let mut positions: Vec<(u32, Option<u32>)> = vec![(0, None); end as usize];
            self.dataset.for_each_position(|row, chunk_index, page| {
                if let Some(slot) = positions.get_mut(row as usize) {
                    *slot = (chunk_index, page);
                }
            })?;
            for doc in &docs.records {
                for &row in &doc.rows {
                    let (chunk_index, page) = positions.get(row as usize).copied().unwrap_or_default();
                    if filter.matches(&filter::Row { doc, page, chunk_index: Some(chunk_index) }) {
                        rows.insert(row);
                    }
                }
            }
        } else {
            for doc in &docs.records {
                if filter.matches(&filter::Row { doc, page: None, chunk_index: None }) {
                    doc.rows.iter().for_each(|&row| rows.insert(row));
                }
            }
        }
        let rows = Arc::new(rows);
        *self.last_filter.lock().unwrap_or_else(|p| p.into_inner()) = Some((filter.clone(), Arc::clone(&rows)));
        Ok(rows)
    }

    /// The ranked rows of one search of this version; `None` when its index is newer than its manifest.
    fn rank(&self, query: &Query<'_>) -> Result<Option<Ranked>, QueryError> {
        let manifest = &self.dataset.manifest;
        let selected = query.filter.map(|f| self.select(f)).transpose()?;
        let keyword_index = match query.mode {
            Some(Mode::Vector) => Arc::new(None),
            // The default mode answers from the vectors alone rather than fail on a damaged keyword index.
            None => self.keyword().unwrap_or_else(|e| {
                tracing::warn!("the keyword index cannot be used, so this search is vector-only: {e}");
                Arc::new(None)
            }),
            Some(_) => self.keyword()?,
        };
        let usable = Option::as_ref(&keyword_index).filter(|i| i.meta.lineage == manifest.lineage);
        let mode = query.mode.unwrap_or(if usable.is_some() { Mode::Hybrid } else { Mode::Vector });
        let depth = if mode == Mode::Hybrid { query.candidates.max(query.k) } else { query.k };
        let vector = match mode.needs_vector() {
            true => {
                let vector = query.vector.ok_or(QueryError::NoVector(mode.name()))?;
                if manifest.model != query.model || manifest.requested_dimensions != query.requested_dimensions {
                    return Err(QueryError::OtherModel { was: query.model.to_owned(), now: manifest.model.clone() });
                }
                match self.vector_hits(vector, depth, query.ef, selected.as_deref())? {
                    Some(found) => Some(found),
                    None => return Ok(None),
                }
            }
            false => None,
        };
        let (keyword, keyword_generation) = match (mode, usable) {
            (Mode::Vector, _) => (None, None),
            (_, Some(index)) => {
                (Some(self.keyword_hits(index, query.text, depth, selected.as_ref())?), Some(index.meta.generation))
            }
            (_, None) if keyword_index.is_some() => {
                return Err(QueryError::StaleKeywordIndex { path: self.dataset.dir.clone() });
            }
            (_, None) => return Err(QueryError::NoKeywordIndex { path: self.dataset.dir.clone() }),
        };

        let (method, mut plan) = match &vector {
            Some(found) => (Some(found.method.clone()), found.plan.clone()),
            None => (None, None),
        };
        let ranked: Vec<(u64, f32, Ranks)> = match (vector, keyword) {
            (Some(found), None) => found
                .hits
                .iter()
                .enumerate()
                .map(|(i, h)| {
                    let ranks = Ranks { vector: Some(i as u32 + 1), vector_score: Some(h.score), ..Ranks::default() };
                    (h.ordinal, h.score, ranks)
                })
                .collect(),
            (None, Some(found)) => found
                .iter()
                .enumerate()
                .map(|(i, h)| {
                    let ranks = Ranks {
                        keyword: Some(i as u32 + 1),
                        keyword_score: Some(h.score),
                        exact: h.exact,
                        ..Ranks::default()
                    };
                    (h.row, h.score, ranks)
                })
                .collect(),
            (Some(vector), Some(keyword)) => fuse(&vector.hits, &keyword, query.rrf_k),
            (None, None) => Vec::new(),
        };
        if mode == Mode::Keyword
            && let Some(rows) = &selected
        {
            let live_rows = manifest.live_rows;
            plan =
                Some(FilterPlan { matched: rows.len(), live_rows, strategy: FilterStrategy::Keyword, rows_scored: 0 });
        }
        let rows = ranked.into_iter().take(query.k).collect();
        let answer =
            Answer { generation: manifest.generation, mode, method, keyword_generation, filter: plan, hits: vec![] };
        Ok(Some(Ranked { answer, rows, documents: query.documents }))
    }

    /// Searches for every query, ranking them in parallel, then reads the hits of all of them in one pass over the
    /// data files (a batch's hits share pages, each decompressed once instead of once per query); `None` when the
    /// index is newer than the manifest. A query that fails fails alone.
    fn search_many(&self, queries: &[Query<'_>]) -> Result<Option<Vec<Result<Answer, QueryError>>>, QueryError> {
        let ranked: Vec<Result<Option<Ranked>, QueryError>> = if queries.len() == 1 {
            vec![self.rank(&queries[0])]
        } else {
            queries.par_iter().map(|query| self.rank(query)).collect()
        };
        let Some(ranked) = ranked.into_iter().map(Result::transpose).collect::<Option<Vec<_>>>() else {
            // One query found the index ahead of the manifest: so would the others.
            return Ok(None);
        };
        let mut rows: Vec<u64> = ranked.iter().flatten().flat_map(|r| r.rows.iter().map(|(row, ..)| *row)).collect();
        rows.sort_unstable();
        rows.dedup();
        let chunks: HashMap<u64, StoredChunk> =
            self.dataset.fetch_with(&rows, Some(&self.footers))?.into_iter().map(|c| (c.ordinal, c)).collect();
        let wants_documents = ranked.iter().flatten().any(|r| r.documents && !r.rows.is_empty());
        let docs = if wants_documents && self.dataset.manifest.docs_file.is_some() {
            match self.docs() {
                Ok(docs) => Some(docs),
                // The hits stand without their documents' metadata: say so, rather than fail the search.
                Err(e) => {
                    tracing::warn!("the documents' metadata could not be read: {e}");
                    None
                }
            }
        } else {
            None
        };
        let document = |doc: &str| {
            let docs = docs.as_ref()?;
            let record = &docs.records[*docs.by_name.get(doc)?];
            Some(DocRecord { rows: Vec::new(), ..record.clone() })
        };
        let answers = ranked
            .into_iter()
            .map(|ranked| {
                let Ranked { mut answer, rows, documents } = ranked?;
                answer.hits = rows
                    .into_iter()
                    .map(|(row, score, ranks)| {
                        let chunk = chunks.get(&row).cloned().ok_or_else(|| StoreError::Corrupt {
                            path: self.dataset.dir.clone(),
                            message: format!("row {row} not found"),
                        })?;
                        let document = if documents { document(&chunk.doc) } else { None };
                        Ok(SearchHit { score, ranks, document, chunk })
                    })
                    .collect::<Result<_, QueryError>>()?;
                Ok(answer)
            })
            .collect();
        Ok(Some(answers))
    }

    /// The `k` rows nearest to `vector` that `selected` (or, without it, liveness) lets through; `None` when the
    /// index is newer than the manifest.
    fn vector_hits(
        &self,
        vector: &[f32],
        k: usize,
        ef: usize,
        selected: Option<&RowSet>,
    ) -> Result<Option<VectorHits>, QueryError> {
        let dataset = &self.dataset;
        let manifest = &dataset.manifest;
        let dims = dataset.dimensions()?;
        if vector.len() != dims {
            return Err(QueryError::Dimensions { got: vector.len(), want: dims });
        }
        let index = self.index()?;
        let index = Option::as_ref(&index);
        let same_lineage = index.filter(|i| i.meta.lineage == manifest.lineage && i.meta.dimensions == dims);
        if same_lineage.is_some_and(|i| i.meta.generation > manifest.generation) {
            return Ok(None);
        }
        let covering = same_lineage.filter(|i| i.covers(manifest));
        let end = manifest.next_row();
        // The graph answers for rows below `from`; the rows from there on are read from the data files and scored.
        let from = same_lineage.map_or(0, |i| i.meta.covered_rows);

        let method = match (same_lineage, covering) {
            (_, Some(_)) => Method::Index,
            (Some(index), None) => Method::IndexAndScan { index_generation: index.meta.generation, rows_scanned: 0 },
            (None, _) => Method::Scan {
                reason: match index {
                    _ if !self.use_index => ScanReason::IndexAhead,
                    None => ScanReason::NoIndex,
                    Some(_) => ScanReason::OtherLineage,
                },
                rows_scanned: 0,
            },
        };
        let (hits, scanned, plan) = match (selected, covering) {
            // The common case: no filter, an index of this very version (it knows its own dead rows).
            (None, Some(index)) => (index.search(vector, k, ef)?, 0, None),
            (None, _) => {
                // Every row id given out is live unless rows were deleted: then the documents table says which.
                let docs = if manifest.all_rows_live() { None } else { Some(self.docs()?) };
                let live = docs.as_ref().and_then(|d| d.live.as_ref());
                let is_live = |row: u64| row < end && live.is_none_or(|l| l.binary_search(&row).is_ok());
                let mut hits = match same_lineage {
                    Some(index) => index.search_where(vector, k, ef, &|row| row < from && is_live(row))?,
                    None => Vec::new(),
                };
                let (found, scanned) = scan(dataset, vector, k, from, &is_live)?;
                hits.extend(found);
                (top_k(hits, k), scanned, None)
            }
            (Some(rows), _) => {
                let matched = rows.len();
                let live_rows = manifest.live_rows;
                let allowed = |row: u64| rows.contains(row);
                let in_graph = |row: u64| row < from && rows.contains(row);
                let exact = matched <= self.exact_filter_rows
                    || (matched as f64) <= EXACT_FILTER_SHARE * live_rows as f64
                    || same_lineage.is_none();
                let (found, scanned) =
                    if from < end { scan(dataset, vector, k, from, &allowed)? } else { (Vec::new(), 0) };
                let wanted = (k as u64).min(matched) as usize;
                let (graph_hits, strategy) = match same_lineage {
                    Some(index) if exact => (index.exact_where(vector, k, &in_graph)?, FilterStrategy::Exact),
                    Some(index) => {
                        // The filter drops rows inside the search: look further the fewer match.
                        let share = (matched as f64 / live_rows.max(1) as f64).clamp(0.01, 1.0);
                        let widened = ((ef.max(k) as f64) / share).min(4.0 * ef.max(k) as f64) as usize;
                        let hits = index.search_where(vector, k, widened, &in_graph)?;
                        if hits.len() + found.len() < wanted {
                            (index.exact_where(vector, k, &in_graph)?, FilterStrategy::GraphThenExact)
                        } else {
                            (hits, FilterStrategy::Graph)
                        }
                    }
                    None => (Vec::new(), FilterStrategy::Exact),
                };
                let rows_scored = match strategy {
                    FilterStrategy::Graph | FilterStrategy::Keyword => scanned,
                    FilterStrategy::Exact | FilterStrategy::GraphThenExact => matched,
                };
                let mut hits = graph_hits;
                hits.extend(found);
                let plan = FilterPlan { matched, live_rows, strategy, rows_scored };
                (top_k(hits, k), scanned, Some(plan))
            }
        };
        let method = match method {
            Method::Index => Method::Index,
            Method::IndexAndScan { index_generation, .. } => {
                Method::IndexAndScan { index_generation, rows_scanned: scanned }
            }
            Method::Scan { reason, .. } => Method::Scan { reason, rows_scanned: scanned },
        };
        Ok(Some(VectorHits { hits, method, plan }))
    }
}

/// Reciprocal rank fusion of the two lists (each best first): every row scores `Σ 1 / (rrf_k + rank)` over the
/// lists it is in, ranks counted from 1 (the RRF paper's convention: a rank-1 hit adds 1/61 at k = 60). Rows that
/// hold every identifier of the query come first; ties go to the better vector rank, then the lower row id.
pub fn fuse(vector: &[Hit], keyword: &[KeywordHit], rrf_k: f64) -> Vec<(u64, f32, Ranks)> {
    let mut by_row: HashMap<u64, (f64, Ranks)> = HashMap::new();
    for (i, hit) in vector.iter().enumerate() {
        let entry = by_row.entry(hit.ordinal).or_default();
        entry.0 += 1.0 / (rrf_k + i as f64 + 1.0);
        entry.1.vector = Some(i as u32 + 1);
        entry.1.vector_score = Some(hit.score);
    }
    for (i, hit) in keyword.iter().enumerate() {
        let entry = by_row.entry(hit.row).or_default();
        entry.0 += 1.0 / (rrf_k + i as f64 + 1.0);
        entry.1.keyword = Some(i as u32 + 1);
        entry.1.keyword_score = Some(hit.score);
        entry.1.exact = hit.exact;
    }
    let mut fused: Vec<(u64, f64, Ranks)> =
        by_row.into_iter().map(|(row, (score, ranks))| (row, score, ranks)).collect();
    fused.sort_by(|a, b| {
        b.2.exact
            .cmp(&a.2.exact)
            .then(b.1.total_cmp(&a.1))
            .then(a.2.vector.unwrap_or(u32::MAX).cmp(&b.2.vector.unwrap_or(u32::MAX)))
            .then(a.0.cmp(&b.0))
    });
    fused.into_iter().map(|(row, score, ranks)| (row, score as f32, ranks)).collect()
}

/// The `k` best rows `allowed` accepts with ids from `from` on, scored exactly; and how many rows were scored.
fn scan(
    dataset: &Dataset,
    query: &[f32],
    k: usize,
    from: u64,
    allowed: &dyn Fn(u64) -> bool,
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
            if row < from || !allowed(row) {
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

/// A text search: what to find, and how.
#[derive(Debug, Clone)]
pub struct TextQuery {
    pub text: String,
    pub k: usize,
    pub ef: usize,
    pub documents: bool,
    pub filter: Option<Filter>,
    /// `None`: hybrid when the dataset has a keyword index, else vector ([`Query::mode`]).
    pub mode: Option<Mode>,
    pub rrf_k: f64,
    pub candidates: usize,
}

impl TextQuery {
    /// `text` with the defaults: k = 10, ef = 64, the dataset's default mode, RRF k = 60 over 50 candidates.
    pub fn new(text: &str) -> Self {
        Self {
            text: text.to_owned(),
            k: 10,
            ef: crate::index::DEFAULT_EF_SEARCH,
            documents: false,
            filter: None,
            mode: None,
            rrf_k: DEFAULT_RRF_K,
            candidates: DEFAULT_CANDIDATES,
        }
    }
}

/// A query with its vector made (`None` when its mode needs none), or the reason it could not be.
pub type Embedded = (TextQuery, Result<Option<Vec<f32>>, QueryError>);

/// An [`Engine`] with the dataset's model: searches with text.
pub struct Searcher {
    engine: Arc<Engine>,
    embedder: Arc<ModelEmbedder>,
    model: String,
    requested_dimensions: Option<u32>,
    /// Query vectors by text, when kept ([`Searcher::with_cache`]): clients repeat queries.
    cache: Option<Mutex<lru::LruCache<String, Arc<[f32]>>>>,
    cache_hits: AtomicU64,
    cache_misses: AtomicU64,
}

/// How a [`Searcher`]'s cache of query vectors has done.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct CacheStats {
    pub hits: u64,
    pub misses: u64,
}

impl Searcher {
    /// Opens the dataset in `dir` and the model it was embedded with.
    pub async fn open(dir: &Path, requests: RequestSettings, stats: &Arc<Stats>) -> Result<Self, QueryError> {
        let engine = Arc::new(Engine::new(dir));
        let manifest = Dataset::open(dir)?.manifest;
        let spec = EmbedderSpec::for_queries(&manifest.model, manifest.requested_dimensions, requests);
        let embedder = Arc::new(ModelEmbedder::build(&spec, stats).await?);
        Ok(Self::with_embedder(engine, embedder, manifest.model, manifest.requested_dimensions))
    }

    pub fn with_embedder(
        engine: Arc<Engine>,
        embedder: Arc<ModelEmbedder>,
        model: String,
        requested_dimensions: Option<u32>,
    ) -> Self {
        Self {
            engine,
            embedder,
            model,
            requested_dimensions,
            cache: None,
            cache_hits: AtomicU64::new(0),
            cache_misses: AtomicU64::new(0),
        }
    }

    /// Keeps the vectors of the last `capacity` distinct query texts, so a repeated query is not embedded again.
    pub fn with_cache(mut self, capacity: usize) -> Self {
        self.cache = std::num::NonZeroUsize::new(capacity).map(|c| Mutex::new(lru::LruCache::new(c)));
        self
    }

    pub fn cache_stats(&self) -> CacheStats {
        CacheStats {
            hits: self.cache_hits.load(AtomicOrdering::Relaxed),
            misses: self.cache_misses.load(AtomicOrdering::Relaxed),
        }
    }

    /// The model queries are embedded with, as the dataset names it.
    pub fn model(&self) -> &str {
        &self.model
    }

    pub fn engine(&self) -> &Arc<Engine> {
        &self.engine
    }

    /// Checks a query's text before anything is sent: not empty, and within the model's input when it is embedded.
    pub fn check(&self, text: &str, embedded: bool) -> Result<(), QueryError> {
        if text.trim().is_empty() {
            return Err(QueryError::EmptyQuery);
        }
        if embedded {
            self.embedder.check_input(text).map_err(QueryError::QueryTooLong)?;
        }
        Ok(())
    }

    /// Embeds the query (unless in keyword mode) and searches, the search itself on a blocking thread.
    pub async fn search(&self, query: &TextQuery) -> Result<Answer, QueryError> {
        let mut answers = self.search_batch(std::slice::from_ref(query)).await?;
        answers.pop().unwrap_or_else(|| Err(QueryError::Thread("no answer".to_owned())))
    }

    /// Answers `queries` in order: the texts that need embedding go in one request, and the searches run on one
    /// blocking thread against the same open version. A query that is wrong (empty, too long, a filter the dataset
    /// cannot take) fails alone; an embedding request that fails fails the batch.
    pub async fn search_batch(&self, queries: &[TextQuery]) -> Result<Vec<Result<Answer, QueryError>>, QueryError> {
        let mut checked: Vec<Result<bool, QueryError>> = Vec::with_capacity(queries.len());
        for query in queries {
            let needs_vector = query.mode.is_none_or(Mode::needs_vector);
            checked.push(self.check(&query.text, needs_vector).map(|()| needs_vector));
        }
        let texts: Vec<&str> =
            queries.iter().zip(&checked).filter(|(_, c)| matches!(c, Ok(true))).map(|(q, _)| q.text.as_str()).collect();
        let mut embedded = self.embed(&texts).await?.into_iter();
        let inputs: Vec<Embedded> = queries
            .iter()
            .zip(checked)
            .map(|(query, checked)| {
                let vector = checked.map(|needed| if needed { embedded.next() } else { None });
                (query.clone(), vector)
            })
            .collect();
        self.search_embedded(inputs).await
    }

    /// The query vectors of `texts` (checked against the model's input limit), embedded `QUERY_BATCH` per request,
    /// up to `IN_FLIGHT` requests at a time (the embedder paces them as it does `embed`'s).
    pub async fn embed(&self, texts: &[&str]) -> Result<Vec<Vec<f32>>, QueryError> {
        let Some(cache) = &self.cache else {
            return self.embed_uncached(texts).await;
        };
        let mut found: Vec<Option<Vec<f32>>> = {
            let mut cache = cache.lock().unwrap_or_else(|p| p.into_inner());
            texts.iter().map(|t| cache.get(*t).map(|v| v.to_vec())).collect()
        };
        let mut missing: Vec<&str> = texts.iter().zip(&found).filter(|(_, v)| v.is_none()).map(|(t, _)| *t).collect();
        let hits = (texts.len() - missing.len()) as u64;
        self.cache_hits.fetch_add(hits, AtomicOrdering::Relaxed);
        self.cache_misses.fetch_add(missing.len() as u64, AtomicOrdering::Relaxed);
        missing.sort_unstable();
        missing.dedup();
        if missing.is_empty() {
            return Ok(found.into_iter().flatten().collect());
        }
        let embedded = self.embed_uncached(&missing).await?;
        let mut cache = cache.lock().unwrap_or_else(|p| p.into_inner());
        for (text, vector) in missing.iter().zip(&embedded) {
            cache.put((*text).to_owned(), Arc::from(vector.as_slice()));
        }
        for (text, slot) in texts.iter().zip(found.iter_mut()) {
            if slot.is_none()
                && let Ok(i) = missing.binary_search(text)
            {
                *slot = Some(embedded[i].clone());
            }
        }
        Ok(found.into_iter().flatten().collect())
    }

    async fn embed_uncached(&self, texts: &[&str]) -> Result<Vec<Vec<f32>>, QueryError> {
        use futures::{StreamExt, TryStreamExt};
        const QUERY_BATCH: usize = 64;
        const IN_FLIGHT: usize = 4;
        // The futures made first, by a method: a closure here would borrow with a lifetime the server's handlers,
        // which must be `Send` for any, cannot name.
        let requests: Vec<_> = texts.chunks(QUERY_BATCH).map(|batch| self.embed_batch(batch)).collect();
        let batches: Vec<Vec<Vec<f32>>> = futures::stream::iter(requests).buffered(IN_FLIGHT).try_collect().await?;
        Ok(batches.into_iter().flatten().collect())
    }

    async fn embed_batch(&self, batch: &[&str]) -> Result<Vec<Vec<f32>>, QueryError> {
        let embedding = self.embedder.embed(batch).await.map_err(QueryError::Embed)?;
        if embedding.len() != batch.len() {
            return Err(QueryError::Embed(EmbedError::InvalidResponse {
                attempts: 1,
                last: format!("{} vectors for {} queries", embedding.len(), batch.len()),
            }));
        }
        Ok((0..batch.len()).map(|i| embedding.vector(i).to_vec()).collect())
    }

    /// Answers queries whose vectors are already made (`None` for the keyword mode), in order, on one blocking
    /// thread; an `Err` input is passed through as that query's answer.
    pub async fn search_embedded(&self, queries: Vec<Embedded>) -> Result<Vec<Result<Answer, QueryError>>, QueryError> {
        let engine = Arc::clone(&self.engine);
        let (model, requested_dimensions) = (self.model.clone(), self.requested_dimensions);
        tokio::task::spawn_blocking(move || {
            let mut answers: Vec<Option<Result<Answer, QueryError>>> = Vec::with_capacity(queries.len());
            let mut asked: Vec<(usize, TextQuery, Option<Vec<f32>>)> = Vec::new();
            for (i, (query, vector)) in queries.into_iter().enumerate() {
                match vector {
                    Ok(vector) => {
                        answers.push(None);
                        asked.push((i, query, vector));
                    }
                    Err(e) => answers.push(Some(Err(e))),
                }
            }
            let searches: Vec<Query<'_>> = asked
                .iter()
                .map(|(_, query, vector)| Query {
                    vector: vector.as_deref(),
                    text: &query.text,
                    mode: query.mode,
                    rrf_k: query.rrf_k,
                    candidates: query.candidates,
                    model: &model,
                    requested_dimensions,
                    k: query.k,
                    ef: query.ef,
                    documents: query.documents,
                    filter: query.filter.as_ref(),
                })
                .collect();
            for ((i, ..), answer) in asked.iter().zip(engine.search_many(&searches)?) {
                answers[*i] = Some(answer);
            }
            Ok(answers.into_iter().flatten().collect())
        })
        .await
        .map_err(|e| QueryError::Thread(e.to_string()))?
    }
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
        Query {
            vector: Some(vector),
            text: "",
            mode: Some(Mode::Vector),
            rrf_k: DEFAULT_RRF_K,
            candidates: DEFAULT_CANDIDATES,
            model: "m",
            requested_dimensions: None,
            k,
            ef: 64,
            documents: true,
            filter: None,
        }
    }

    fn docs_of(answer: &Answer) -> Vec<String> {
        answer.hits.iter().map(|h| h.chunk.doc.clone()).collect()
    }

    #[test]
    fn a_version_newer_than_its_index_is_searched_in_full() {
        let dir = tempfile::tempdir().expect("tempdir");
        let v1 = publish(dir.path(), None, &[], &[0, 1, 2, 3]);
        let found = search(dir.path(), &query(&axis(1), 1)).expect("search");
        assert_eq!(found.method, Some(Method::Scan { reason: ScanReason::NoIndex, rows_scanned: 4 }));
        assert_eq!(docs_of(&found), ["doc-1"]);

        update(&Dataset::open(dir.path()).expect("open"), IndexParams::default(), false).expect("index");
        assert_eq!(search(dir.path(), &query(&axis(1), 1)).expect("search").method, Some(Method::Index));

        // Version 2 (the index still at 1): doc-1 deleted, doc-9 (axis 1) added.
        let v2 = publish(dir.path(), Some(&v1), &[0, 2, 3], &[9]);
        let found = search(dir.path(), &query(&axis(1), 2)).expect("search");
        assert_eq!(found.method, Some(Method::IndexAndScan { index_generation: 1, rows_scanned: 1 }));
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
        assert_eq!((after.method.clone(), docs_of(&after)), (Some(Method::Index), before));
    }

    #[test]
    fn a_pinned_engine_answers_from_its_version_until_a_refresh_loads_the_next() {
        let dir = tempfile::tempdir().expect("tempdir");
        let v1 = publish(dir.path(), None, &[], &[0, 1, 2]);
        let engine = Engine::new(dir.path()).pinned();
        assert_eq!(engine.refresh().expect("refresh"), Some(1));
        assert_eq!(engine.refresh().expect("refresh"), None, "nothing new");
        assert_eq!(engine.count(None).expect("count"), 3);

        // Version 2 deletes doc-1 and adds doc-9 (axis 1): searches stay on version 1 until the refresh.
        publish(dir.path(), Some(&v1), &[0, 2], &[9]);
        let found = engine.search(&query(&axis(1), 1)).expect("search");
        assert_eq!((found.generation, docs_of(&found)), (1, vec!["doc-1".to_owned()]));
        assert!(engine.document("doc-9").expect("document").is_none());
        assert_eq!(engine.refresh().expect("refresh"), Some(2));
        let found = engine.search(&query(&axis(1), 1)).expect("search");
        assert_eq!((found.generation, docs_of(&found)), (2, vec!["doc-9".to_owned()]));
        let doc = engine.document("doc-9").expect("document").expect("doc-9");
        assert_eq!(doc.chunks.iter().map(|c| c.text.as_str()).collect::<Vec<_>>(), ["text 9"]);
        let summary = engine.summary().expect("summary");
        assert_eq!((summary.generation, summary.rows, summary.documents), (2, 3, Some(3)));

        // An engine that is not pinned sees a new version at once.
        let unpinned = Engine::new(dir.path());
        assert_eq!(unpinned.search(&query(&axis(1), 1)).expect("search").generation, 2);
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
        assert_eq!(found.method, Some(Method::Scan { reason: ScanReason::OtherLineage, rows_scanned: 1 }));
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
        assert_eq!(found.method, Some(Method::Scan { reason: ScanReason::IndexAhead, rows_scanned: 2 }));
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

    /// One chunk per document, each with a `bucket` field that scatters the rows over 0..1000 independently of
    /// their cluster, so `bucket < b` matches b/1000 of the rows.
    fn bucketed(dir: &Path, n: u32, dims: usize) -> Vec<f32> {
        use crate::source::{FieldType, Value};
        let data = crate::index::testing::clustered(n as usize, dims, 50, 5);
        let mut writer = DatasetWriter::begin(dir, settings(), None, false).expect("begin");
        writer.set_field_types(std::collections::BTreeMap::from([("bucket".to_owned(), FieldType::Int64)]));
        let chunks: Vec<Chunk> = (0..n).map(chunk).collect();
        let first = writer.write(&chunks, &data, dims).expect("write");
        let docs: HashMap<String, DocRecord> = (0..n)
            .map(|i| {
                let mut r = record(i, first + u64::from(i));
                let bucket = (u64::from(i) * 7919) % 1000;
                r.fields.insert(Arc::from("bucket"), Value::Int64(bucket as i64));
                (r.doc.clone(), r)
            })
            .collect();
        let manifest = writer.finish(&docs, &[], RunStatus::Complete).expect("finish");
        update(&Dataset { dir: dir.to_path_buf(), manifest }, IndexParams { m: 16, ef_construction: 100 }, false)
            .expect("index");
        data
    }

    #[test]
    fn filtered_searches_return_k_with_high_recall_whatever_the_selectivity() {
        let (n, dims, k) = (10_000u32, 32, 10);
        let dir = tempfile::tempdir().expect("tempdir");
        let data = bucketed(dir.path(), n, dims);
        // Graph searches for the whole index, and exact scans only below 500 matched rows (so 10% and 50% go
        // through the graph here, as they would at 400,000 rows with the default thresholds).
        let engine = Engine::new(dir.path()).with_thresholds(0, 500);
        let columns = engine.columns().expect("columns");
        let queries = crate::index::testing::clustered_from(50, dims, 50, 5, 77);
        for (bucket, strategy) in [
            (1, FilterStrategy::Exact),
            (10, FilterStrategy::Exact),
            (100, FilterStrategy::Graph),
            (500, FilterStrategy::Graph),
        ] {
            let filter = Filter::parse(&format!("bucket < {bucket}"), &columns).expect("filter");
            let matching: Vec<usize> = (0..n as usize).filter(|i| (*i as u64 * 7919) % 1000 < bucket).collect();
            let mut found = 0;
            for q in queries.chunks_exact(dims) {
                let query = Query { filter: Some(&filter), ..query(q, k) };
                let answer = engine.search(&query).expect("search");
                let plan = answer.filter.clone().expect("plan");
                assert_eq!((plan.matched, plan.live_rows), (matching.len() as u64, u64::from(n)));
                assert_eq!(plan.strategy, strategy, "bucket < {bucket}");
                assert_eq!(answer.hits.len(), k, "bucket < {bucket}: k hits when at least k match");
                let mut truth: Vec<(f32, usize)> =
                    matching.iter().map(|&i| (dot(q, &data[i * dims..(i + 1) * dims]), i)).collect();
                truth.sort_by(|a, b| b.0.total_cmp(&a.0));
                let truth: Vec<String> = truth.iter().take(k).map(|(_, i)| format!("doc-{i}")).collect();
                found += answer.hits.iter().filter(|h| truth.contains(&h.chunk.doc)).count();
            }
            let recall = found as f64 / (queries.len() / dims * k) as f64;
            eprintln!("bucket < {bucket}: recall@10 {recall:.3}");
            assert!(recall >= 0.95, "bucket < {bucket}: recall@10 {recall:.3} against an exact filtered scan");
        }
        // Fewer matches than k: all of them.
        let filter = Filter::parse("bucket = 3 AND doc IN ('doc-0', 'doc-1', 'doc-2')", &columns).expect("filter");
        let matching = (0..3).filter(|i| (i * 7919) % 1000 == 3).count();
        let answer = engine.search(&Query { filter: Some(&filter), ..query(&queries[..dims], k) }).expect("search");
        assert_eq!(answer.hits.len(), matching);
    }

    #[test]
    fn a_filter_never_returns_deleted_documents_and_can_name_chunk_columns() {
        let dir = tempfile::tempdir().expect("tempdir");
        let v1 = publish(dir.path(), None, &[], &[0, 1, 2, 3]);
        update(&Dataset::open(dir.path()).expect("open"), IndexParams::default(), false).expect("index");
        // doc-1 deleted; doc-9 added since the index (axis 1 as well).
        publish(dir.path(), Some(&v1), &[0, 2, 3], &[9]);
        let engine = Engine::new(dir.path());
        let columns = engine.columns().expect("columns");
        let filter = Filter::parse("doc LIKE 'doc-%'", &columns).expect("filter");
        let answer = engine.search(&Query { filter: Some(&filter), ..query(&axis(1), 10) }).expect("search");
        let docs = docs_of(&answer);
        assert_eq!(docs.len(), 4, "{docs:?}");
        assert!(!docs.contains(&"doc-1".to_owned()) && docs[0] == "doc-9", "{docs:?}");
        assert!(matches!(answer.method, Some(Method::IndexAndScan { .. })), "{:?}", answer.method);
        let only_first_chunks = Filter::parse("chunk_index = 0 AND page IS NULL", &columns).expect("filter");
        let answer = engine.search(&Query { filter: Some(&only_first_chunks), ..query(&axis(1), 10) }).expect("s");
        assert_eq!(answer.hits.len(), 4);
        let none = Filter::parse("chunk_index > 0", &columns).expect("filter");
        let answer = engine.search(&Query { filter: Some(&none), ..query(&axis(1), 10) }).expect("search");
        assert!(answer.hits.is_empty());
        assert_eq!(answer.filter.expect("plan").matched, 0);
    }

    #[test]
    fn fusion_sums_reciprocal_ranks_and_puts_exact_identifier_matches_first() {
        let v = |rows: &[u64]| -> Vec<Hit> { rows.iter().map(|&r| Hit { ordinal: r, score: 0.5 }).collect() };
        let kw = |rows: &[(u64, bool)]| -> Vec<KeywordHit> {
            rows.iter().map(|&(row, exact)| KeywordHit { row, score: 3.0, exact }).collect()
        };
        // Row 2: vector 2 + keyword 1 = 1/62 + 1/61; row 1: vector 1 only = 1/61; row 3: keyword 2 = 1/62;
        // row 4: vector 3 + keyword 3 = 2/63.
        let fused = fuse(&v(&[1, 2, 4]), &kw(&[(2, false), (3, false), (4, false)]), 60.0);
        let order: Vec<u64> = fused.iter().map(|(row, ..)| *row).collect();
        assert_eq!(order, [2, 4, 1, 3]);
        let expect = 1.0 / 62.0 + 1.0 / 61.0;
        assert!((f64::from(fused[0].1) - expect).abs() < 1e-6, "{fused:?}");
        assert_eq!(
            fused[0].2,
            Ranks {
                vector: Some(2),
                keyword: Some(1),
                vector_score: Some(0.5),
                keyword_score: Some(3.0),
                exact: false
            }
        );
        // Equal fused scores: the better vector rank first. Rows 5 and 6: vector 1 / keyword 1 alone.
        let tie = fuse(&v(&[5]), &kw(&[(6, false)]), 60.0);
        assert_eq!(tie.iter().map(|(r, ..)| *r).collect::<Vec<_>>(), [5, 6]);
        // A chunk holding every identifier of the query goes first, whatever its fused score.
        let exact = fuse(&v(&[1, 2, 3]), &kw(&[(1, false), (9, true)]), 60.0);
        assert_eq!(exact[0].0, 9);
        // rrf_k sets how much agreement counts: at 60, rows in both lists (7, 8) beat the lists' rank-1 rows alone;
        // at 0, a rank 1 alone (1/1) beats ranks 2 and 3 together (1/2 + 1/3).
        let (vector, keyword) = (v(&[1, 8, 7]), kw(&[(2, false), (7, false), (8, false)]));
        let top2 = |k: f64| fuse(&vector, &keyword, k).iter().map(|(r, ..)| *r).take(2).collect::<Vec<_>>();
        assert_eq!(top2(60.0), [8, 7]);
        assert_eq!(top2(0.0), [1, 2]);
    }
}
