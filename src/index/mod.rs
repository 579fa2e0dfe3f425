//! Stage 6: the HNSW index over a dataset's vectors ([`hnsw`]) and the keyword index beside it ([`keyword`]).
//!
//! The index lives in `<dataset>/index/`: one graph file plus `index.json`, which records the parameters, the
//! dataset files it was built from and checksums of the graph file. Each graph node knows its dataset row, so a
//! hit maps straight to its Parquet row.

mod distance;
pub mod hnsw;
pub mod keyword;

use std::fs::File;
use std::io::Read;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

pub use distance::normalize;
pub use hnsw::{Builder, Graph, Shape, dot};

use crate::error::Chain;
use crate::store::{DataFile, Dataset, Manifest, StoreError, write_json_atomic};

pub const INDEX_DIR: &str = "index";
const INDEX_FILE: &str = "index.json";
const BASENAME: &str = "graph";
const DISTANCE: &str = "unit-dot";
/// The graph file format: 0 was hnsw_rs's pair of dumps, 1 is [`hnsw::Graph`]'s file.
const GRAPH_FORMAT: u32 = 1;

/// Indexes up to this many points are searched exhaustively (see [`SearchIndex::search`]); at 10k points the
/// exact scan measured as fast as the graph (BENCHMARKS.md).
pub const EXACT_SEARCH_MAX_POINTS: usize = 10_000;

pub const DEFAULT_M: usize = 16;
pub const DEFAULT_EF_CONSTRUCTION: usize = 200;
/// Recall@10 ≈ 0.99 on clustered data (see BENCHMARKS.md).
pub const DEFAULT_EF_SEARCH: usize = 64;

/// Graph-building parameters.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct IndexParams {
    /// Links per node and layer (layer 0 keeps 2·M).
    pub m: usize,
    pub ef_construction: usize,
}

impl Default for IndexParams {
    fn default() -> Self {
        Self { m: DEFAULT_M, ef_construction: DEFAULT_EF_CONSTRUCTION }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum IndexError {
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error("invalid index parameter")]
    Params(#[from] IndexParamError),
    #[error("{path}: no index; run `tars-index index {dataset}` first", dataset = dataset.display())]
    Missing { path: PathBuf, dataset: PathBuf },
    #[error("{path}: index files are damaged ({message}); run `tars-index index {dataset}` again", dataset = dataset.display())]
    Damaged { path: PathBuf, dataset: PathBuf, message: String },
    #[error("{0}")]
    Search(String),
    #[error("{path}: the index was built by an earlier tars-index; run `tars-index index {dataset}` to rebuild it", dataset = dataset.display())]
    Outdated { path: PathBuf, dataset: PathBuf },
    #[error("query has {got} dimensions, the index {want}")]
    QueryDimensions { got: usize, want: usize },
}

/// Which index parameter is out of range, and why.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum IndexParamError {
    #[error("M must be between 2 and 128 (got {0})")]
    M(usize),
    #[error("ef_construction must be between M ({m}) and 4096 (got {got})")]
    EfConstruction { got: usize, m: usize },
}

impl IndexParams {
    pub fn validate(&self) -> Result<(), IndexParamError> {
        // Larger than 128 is never useful, and the graph file stores link counts per level in 32 bits anyway.
        if !(2..=128).contains(&self.m) {
            return Err(IndexParamError::M(self.m));
        }
        if self.ef_construction < self.m || self.ef_construction > 4096 {
            return Err(IndexParamError::EfConstruction { got: self.ef_construction, m: self.m });
        }
        Ok(())
    }
}

/// `index.json`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct IndexMeta {
    pub params: IndexParams,
    pub distance: String,
    pub dimensions: usize,
    pub points: u64,
    pub basename: String,
    /// See [`GRAPH_FORMAT`].
    #[serde(default)]
    pub format: u32,
    /// The dataset version the index matches: any other lineage or generation means the index is stale.
    #[serde(default)]
    pub lineage: String,
    #[serde(default)]
    pub generation: u64,
    /// Rows with smaller ids are in the graph (unless dead); an update inserts the rows from here on.
    #[serde(default)]
    pub covered_rows: u64,
    /// Row ids below `covered_rows` that are not live, as sorted `[start, end)` ranges: filtered out of results.
    #[serde(default)]
    pub dead_ranges: Vec<[u64; 2]>,
    /// Points in the graph that are dead (rebuild when too many of them).
    #[serde(default)]
    pub dead_points: u64,
    pub dataset_files: Vec<DataFile>,
    pub files: Vec<IndexFile>,
    /// How the last update went: `built` from scratch or `extended` with new rows.
    #[serde(default)]
    pub mode: String,
    /// Points inserted by the last update.
    #[serde(default)]
    pub inserted: u64,
    pub build_secs: f64,
    /// The keyword index's state after the same update (absent in indexes written before it existed).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub keyword: Option<keyword::KeywordMeta>,
}

/// Rebuild rather than extend once this share of the graph's points is dead.
const MAX_DEAD_SHARE: f64 = 0.25;

impl IndexMeta {
    fn is_dead(&self, row: u64) -> bool {
        let at = self.dead_ranges.partition_point(|r| r[1] <= row);
        self.dead_ranges.get(at).is_some_and(|r| r[0] <= row)
    }
}

/// The complement of `live` (sorted) within `0..end`, as ranges.
fn dead_ranges(live: Option<&[u64]>, end: u64) -> Vec<[u64; 2]> {
    let Some(live) = live else { return Vec::new() };
    let mut ranges = Vec::new();
    let mut next = 0u64;
    for &row in live.iter().take_while(|&&r| r < end) {
        if row > next {
            ranges.push([next, row]);
        }
        next = row + 1;
    }
    if next < end {
        ranges.push([next, end]);
    }
    ranges
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct IndexFile {
    pub name: String,
    pub bytes: u64,
    /// Of the whole file: checked by `index --verify`.
    pub blake3: String,
    /// Of its size and first and last [`SAMPLE_BYTES`]: checked on every load, which then reads 128 KiB of the
    /// file instead of all of it (absent in indexes written before it was kept: those get the full check).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sample_blake3: Option<String>,
}

/// Bytes at each end of an index file that the load-time check hashes. Truncation, a torn or missing tail and a
/// file of another build all show there; `index --verify` reads everything.
pub const SAMPLE_BYTES: u64 = 64 * 1024;

/// How much of the index files to check before they are opened.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Check {
    /// Size and the head-and-tail digest.
    Quick,
    /// Every byte.
    Full,
}

/// A graph builder for `capacity` points of `dims` dimensions.
pub fn new_builder(params: IndexParams, dims: usize, capacity: usize) -> Result<Builder, IndexError> {
    params.validate()?;
    Ok(Builder::new(Shape { dims, m: params.m, ef_construction: params.ef_construction }, capacity))
}

/// Rows handed to one parallel [`Builder::link`].
const LINK_BATCH: usize = 4096;

/// Brings the index of `dataset` up to date and saves it in `<dataset>/index`, replacing the earlier one only once
/// the new one is complete. An index of the same lineage is extended with the rows added since (points are never
/// deleted from the graph: rows no longer live are filtered out of results instead); it is rebuilt from the live rows when
/// `rebuild` is set, when the parameters change, or when more than a quarter of its points are dead.
pub fn update(dataset: &Dataset, params: IndexParams, rebuild: bool) -> Result<IndexMeta, IndexError> {
    let started = std::time::Instant::now();
    let dims = dataset.dimensions()?;
    let manifest = &dataset.manifest;
    let live = dataset.live_rows()?;
    let end = manifest.next_row();
    let dead = dead_ranges(live.as_deref(), end);
    let is_live = |row: u64| live.as_ref().is_none_or(|l| l.binary_search(&row).is_ok());
    // Live rows below `row` (every row is live without a documents table).
    let live_below = |row: u64| live.as_ref().map_or(row, |l| l.partition_point(|&r| r < row) as u64);

    // The keyword index first: index.json, written last, then also says what it holds, so a reader that sees the
    // new index.json sees both.
    let keyword = keyword::update(dataset, rebuild)?;
    let existing = if rebuild { None } else { SearchIndex::load(dataset).ok() };
    if let Some(index) = &existing {
        let meta = &index.meta;
        if meta.lineage == manifest.lineage
            && meta.generation == manifest.generation
            && meta.covered_rows == end
            && meta.params == params
        {
            // The graph already matches this version: only a new keyword index is recorded.
            let meta = IndexMeta { keyword: Some(keyword.clone()), ..meta.clone() };
            if keyword.mode != "current" || index.meta.keyword.is_none() {
                write_json_atomic(&dataset.dir.join(INDEX_DIR).join(INDEX_FILE), &meta)?;
            }
            return Ok(IndexMeta { mode: "current".to_owned(), inserted: 0, build_secs: 0.0, ..meta });
        }
    }
    let extend = existing.filter(|index| {
        let meta = &index.meta;
        // Rows never come back to life, so the graph's dead points are its points minus the live rows it covers.
        let dead_points = meta.points.saturating_sub(live_below(meta.covered_rows));
        meta.lineage == manifest.lineage
            && meta.params == params
            && meta.dimensions == dims
            && meta.covered_rows <= end
            && (dead_points as f64) <= MAX_DEAD_SHARE * meta.points.max(1) as f64
    });

    // A new graph file goes next to the current one under a new name; `index.json` is the switch.
    let dir = dataset.dir.join(INDEX_DIR);
    std::fs::create_dir_all(&dir).map_err(StoreError::io(&dir))?;
    let name = format!("{BASENAME}-g{}-{}", manifest.generation, std::process::id());

    // Adds the live rows with ids from `from` on (dead ones never enter a graph), linking them a batch at a time.
    let insert_from = |builder: &mut Builder, from: u64| -> Result<u64, IndexError> {
        let first_file = manifest.files.partition_point(|f| f.first_row + f.rows <= from);
        let before = builder.len();
        dataset.for_each_vector_batch::<IndexError>(first_file, |first, vectors, rows| {
            for (i, vector) in vectors.chunks_exact(dims).take(rows).enumerate() {
                let row = first + i as u64;
                if row >= from && is_live(row) {
                    builder.push(row, vector);
                }
            }
            if builder.len() - builder.linked() >= LINK_BATCH {
                builder.link();
            }
            Ok(())
        })?;
        Ok((builder.len() - before) as u64)
    };

    let (mut builder, mode, from) = match extend {
        Some(index) => {
            let builder = Builder::from_graph(&index.graph).map_err(|e| graph_error(dataset, &index.path, e))?;
            (builder, "extended", index.meta.covered_rows)
        }
        None => (new_builder(params, dims, manifest.live_rows as usize)?, "built", 0),
    };
    let inserted = insert_from(&mut builder, from)?;
    let graph = builder.finish();
    let points = graph.nodes() as u64;
    let basename = format!("{name}.hnsw");
    let path = dir.join(&basename);
    graph.save(&path).map_err(|e| graph_error(dataset, &path, e))?;
    drop(graph);
    let files = vec![describe_file(&dir, &basename)?];
    let dead_points = points.saturating_sub(live_below(end));
    let meta = IndexMeta {
        params,
        distance: DISTANCE.to_owned(),
        dimensions: dims,
        points,
        basename,
        format: GRAPH_FORMAT,
        lineage: manifest.lineage.clone(),
        generation: manifest.generation,
        covered_rows: end,
        dead_ranges: dead,
        dead_points,
        dataset_files: manifest.files.clone(),
        files,
        mode: mode.to_owned(),
        inserted,
        build_secs: started.elapsed().as_secs_f64(),
        keyword: Some(keyword),
    };
    // The switch: readers see the old index.json and its files, or the new ones. A process killed before this
    // line leaves the old index whole; its unreferenced dumps are removed by the next update.
    write_json_atomic(&dir.join(INDEX_FILE), &meta)?;
    let keep: Vec<&str> = meta.files.iter().map(|f| f.name.as_str()).chain([INDEX_FILE]).collect();
    for entry in std::fs::read_dir(&dir).map_err(StoreError::io(&dir))? {
        let entry = entry.map_err(StoreError::io(&dir))?;
        let name = entry.file_name();
        if !keep.iter().any(|k| name == **k) && entry.file_type().is_ok_and(|t| t.is_file()) {
            std::fs::remove_file(entry.path()).map_err(StoreError::io(entry.path()))?;
        }
    }
    Ok(meta)
}

fn graph_error(dataset: &Dataset, path: &Path, error: hnsw::GraphError) -> IndexError {
    match error {
        hnsw::GraphError::Io(e) => StoreError::Io { path: path.to_path_buf(), source: e }.into(),
        hnsw::GraphError::Format(message) => {
            IndexError::Damaged { path: path.to_path_buf(), dataset: dataset.dir.clone(), message }
        }
    }
}

fn describe_file(dir: &Path, name: &str) -> Result<IndexFile, StoreError> {
    let path = dir.join(name);
    let (bytes, hash) = hash_file(&path)?;
    let sample = sample_hash(&path)?;
    Ok(IndexFile { name: name.to_owned(), bytes, blake3: hash, sample_blake3: Some(sample) })
}

/// blake3 of the file's size and its first and last [`SAMPLE_BYTES`] (overlapping for small files).
fn sample_hash(path: &Path) -> Result<String, StoreError> {
    use std::io::{Seek, SeekFrom};
    let mut file = File::open(path).map_err(StoreError::io(path))?;
    let size = file.metadata().map_err(StoreError::io(path))?.len();
    let mut hasher = blake3::Hasher::new();
    hasher.update(&size.to_le_bytes());
    let mut buf = vec![0u8; SAMPLE_BYTES.min(size) as usize];
    file.read_exact(&mut buf).map_err(StoreError::io(path))?;
    hasher.update(&buf);
    file.seek(SeekFrom::Start(size - buf.len() as u64)).map_err(StoreError::io(path))?;
    file.read_exact(&mut buf).map_err(StoreError::io(path))?;
    hasher.update(&buf);
    Ok(hasher.finalize().to_hex().to_string())
}

fn hash_file(path: &Path) -> Result<(u64, String), StoreError> {
    let mut file = File::open(path).map_err(StoreError::io(path))?;
    let mut hasher = blake3::Hasher::new();
    let mut buf = vec![0u8; 1 << 20];
    let mut total = 0u64;
    loop {
        let n = file.read(&mut buf).map_err(StoreError::io(path))?;
        if n == 0 {
            break;
        }
        hasher.update(&buf[..n]);
        total += n as u64;
    }
    Ok((total, hasher.finalize().to_hex().to_string()))
}

/// A saved index, opened for searching.
pub struct SearchIndex {
    graph: Graph,
    /// The graph file, for errors reading its vectors later.
    path: PathBuf,
    pub meta: IndexMeta,
    exact_max_points: usize,
}

/// One search hit.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Hit {
    /// Row ordinal in the dataset.
    pub ordinal: u64,
    /// Cosine similarity.
    pub score: f32,
}

impl SearchIndex {
    /// Loads `<dataset>/index` after the quick check of its files, whatever version of the dataset it was built
    /// from: [`SearchIndex::covers`] says whether it matches one.
    pub fn load(dataset: &Dataset) -> Result<Self, IndexError> {
        let meta = Self::check(dataset, Check::Quick)?;
        let path = dataset.dir.join(INDEX_DIR).join(&meta.basename);
        let graph = Graph::open(&path).map_err(|e| graph_error(dataset, &path, e))?;
        let shape = graph.shape();
        if graph.nodes() as u64 != meta.points
            || shape.dims != meta.dimensions
            || (shape.m, shape.ef_construction) != (meta.params.m, meta.params.ef_construction)
        {
            let message = format!("{} does not match {INDEX_FILE}", meta.basename);
            return Err(IndexError::Damaged { path, dataset: dataset.dir.clone(), message });
        }
        Ok(SearchIndex { graph, path, meta, exact_max_points: EXACT_SEARCH_MAX_POINTS })
    }

    /// Reads `index.json` and checks the files it lists, without loading them.
    pub fn check(dataset: &Dataset, check: Check) -> Result<IndexMeta, IndexError> {
        let dir = dataset.dir.join(INDEX_DIR);
        let meta_path = dir.join(INDEX_FILE);
        let bytes = match std::fs::read(&meta_path) {
            Ok(bytes) => bytes,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                return Err(IndexError::Missing { path: dir, dataset: dataset.dir.clone() });
            }
            Err(e) => return Err(StoreError::Io { path: meta_path, source: e }.into()),
        };
        let damaged =
            |message: String| IndexError::Damaged { path: dir.clone(), dataset: dataset.dir.clone(), message };
        let meta: IndexMeta = serde_json::from_slice(&bytes).map_err(|e| damaged(format!("{INDEX_FILE}: {e}")))?;
        if meta.format != GRAPH_FORMAT {
            return Err(IndexError::Outdated { path: dir, dataset: dataset.dir.clone() });
        }
        if meta.distance != DISTANCE {
            return Err(damaged(format!("distance {:?} is not {DISTANCE:?}", meta.distance)));
        }
        for file in &meta.files {
            let path = dir.join(&file.name);
            let found = match (check, &file.sample_blake3) {
                (Check::Quick, Some(sample)) => std::fs::metadata(&path)
                    .map_err(StoreError::io(&path))
                    .and_then(|m| Ok(m.len() == file.bytes && sample_hash(&path)? == *sample)),
                _ => hash_file(&path).map(|(bytes, hash)| bytes == file.bytes && hash == file.blake3),
            };
            match found {
                Ok(true) => {}
                Ok(false) => return Err(damaged(format!("{} does not match its checksum", file.name))),
                // Replaced by a newer index since index.json was read: not damage (the caller may look again).
                Err(e) if e.is_not_found() => return Err(e.into()),
                Err(e) => return Err(damaged(Chain(&e).to_string())),
            }
        }
        Ok(meta)
    }

    /// Whether the graph holds exactly the rows of `manifest` (so its own dead-row list is the whole filter).
    pub fn covers(&self, manifest: &Manifest) -> bool {
        let meta = &self.meta;
        meta.lineage == manifest.lineage
            && meta.generation == manifest.generation
            && meta.covered_rows == manifest.next_row()
    }

    /// The `k` nearest live rows to `query` (normalised here), best first, for the version the index was built
    /// from: exhaustively up to [`EXACT_SEARCH_MAX_POINTS`] points, through the graph above that.
    pub fn search(&self, query: &[f32], k: usize, ef: usize) -> Result<Vec<Hit>, IndexError> {
        if self.meta.dead_points == 0 {
            self.search_inner(query, k, ef, None)
        } else {
            self.search_inner(query, k, ef, Some(&|row| !self.meta.is_dead(row)))
        }
    }

    /// As [`SearchIndex::search`], for the rows `alive` accepts.
    pub fn search_where(
        &self,
        query: &[f32],
        k: usize,
        ef: usize,
        alive: &dyn Fn(u64) -> bool,
    ) -> Result<Vec<Hit>, IndexError> {
        self.search_inner(query, k, ef, Some(alive))
    }

    fn search_inner(
        &self,
        query: &[f32],
        k: usize,
        ef: usize,
        alive: Option<&dyn Fn(u64) -> bool>,
    ) -> Result<Vec<Hit>, IndexError> {
        if query.len() != self.meta.dimensions {
            return Err(IndexError::QueryDimensions { got: query.len(), want: self.meta.dimensions });
        }
        let mut q = query.to_vec();
        normalize(&mut q);
        if self.meta.points <= self.exact_max_points as u64 {
            return self.exact_search(&q, k, alive.unwrap_or(&|_| true));
        }
        let rows = self.graph.rows();
        let found = match alive {
            None => self.graph.search(&q, k, ef.max(k), None),
            Some(alive) => {
                let alive = |node: u32| alive(rows[node as usize]);
                self.graph.search(&q, k, ef.max(k), Some(&alive))
            }
        };
        let found = found.map_err(|e| self.read_error(e))?;
        Ok(found.into_iter().map(|n| Hit { ordinal: rows[n.node as usize], score: 1.0 - n.distance }).collect())
    }

    fn read_error(&self, error: std::io::Error) -> IndexError {
        IndexError::Store(StoreError::Io { path: self.path.clone(), source: error })
    }
}

impl SearchIndex {
    /// Searches indexes up to `points` points exhaustively instead of [`EXACT_SEARCH_MAX_POINTS`].
    pub fn with_exact_max_points(mut self, points: usize) -> Self {
        self.exact_max_points = points;
        self
    }

    /// The `k` best of the points `alive` accepts, every one of them scored exactly (`query` normalised here).
    pub fn exact_where(&self, query: &[f32], k: usize, alive: &dyn Fn(u64) -> bool) -> Result<Vec<Hit>, IndexError> {
        if query.len() != self.meta.dimensions {
            return Err(IndexError::QueryDimensions { got: query.len(), want: self.meta.dimensions });
        }
        let mut q = query.to_vec();
        normalize(&mut q);
        self.exact_search(&q, k, alive)
    }

    /// Scores every live point: exact, and at this size as fast as walking the graph. It also cannot miss an
    /// outlier that the graph links to nothing (HNSW's blind spot, most visible in small graphs).
    fn exact_search(&self, query: &[f32], k: usize, alive: &dyn Fn(u64) -> bool) -> Result<Vec<Hit>, IndexError> {
        let rows = self.graph.rows();
        let mut scored = Vec::new();
        self.graph
            .scan(&|node| alive(rows[node as usize]), &mut |node, v| {
                scored.push(Hit { ordinal: rows[node as usize], score: dot(query, v).clamp(-1.0, 1.0) })
            })
            .map_err(|e| self.read_error(e))?;
        Ok(top_k(scored, k))
    }
}

/// The `k` best of `scored`, best first (ties by row id).
pub fn top_k(mut scored: Vec<Hit>, k: usize) -> Vec<Hit> {
    let k = k.min(scored.len());
    if k == 0 {
        return Vec::new();
    }
    scored.select_nth_unstable_by(k - 1, |a, b| b.score.total_cmp(&a.score).then(a.ordinal.cmp(&b.ordinal)));
    scored.truncate(k);
    scored.sort_by(|a, b| b.score.total_cmp(&a.score).then(a.ordinal.cmp(&b.ordinal)));
    scored
}

/// `index.json` of the dataset in `dir`: where the current index is described.
pub fn meta_path(dir: &Path) -> PathBuf {
    dir.join(INDEX_DIR).join(INDEX_FILE)
}

/// The parameters of the index in `dir`, if it has one (so that an update extends it rather than rebuilding it).
pub fn existing_params(dir: &Path) -> Option<IndexParams> {
    let bytes = std::fs::read(meta_path(dir)).ok()?;
    serde_json::from_slice::<IndexMeta>(&bytes).ok().map(|m| m.params)
}

/// Vectors for tests of the index and the query engine.
#[cfg(test)]
pub(crate) mod testing {
    use super::normalize;
    use rand::rngs::StdRng;
    use rand::{Rng, SeedableRng};

    /// Clustered unit vectors: `clusters` centres (fixed by `seed`), points scattered widely around them so the
    /// clusters overlap (drawn from `seed + 1`, or from another seed for held-out queries).
    pub fn clustered(n: usize, dims: usize, clusters: usize, seed: u64) -> Vec<f32> {
        clustered_from(n, dims, clusters, seed, seed + 1)
    }

    pub fn clustered_from(n: usize, dims: usize, clusters: usize, centre_seed: u64, point_seed: u64) -> Vec<f32> {
        let mut rng = StdRng::seed_from_u64(centre_seed);
        let centres: Vec<Vec<f32>> =
            (0..clusters).map(|_| (0..dims).map(|_| rng.random_range(-1.0..1.0)).collect()).collect();
        let mut rng = StdRng::seed_from_u64(point_seed);
        let mut out = Vec::with_capacity(n * dims);
        for i in 0..n {
            let c = &centres[i % clusters];
            let mut v: Vec<f32> = c.iter().map(|x| x + rng.random_range(-1.0..1.0)).collect();
            normalize(&mut v);
            out.extend(v);
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    use crate::index::testing::clustered;

    fn chunks(range: std::ops::Range<u32>) -> Vec<crate::chunk::Chunk> {
        range
            .map(|i| crate::chunk::Chunk {
                id: format!("id-{i}"),
                doc: std::sync::Arc::from(format!("doc-{}", i / 4).as_str()),
                chunk_index: i % 4,
                start: 0,
                end: 1,
                tokens: 1,
                text: format!("t{i}"),
                hash: format!("{:064x}", i),
                page: None,
            })
            .collect()
    }

    fn docs(rows: impl Iterator<Item = (u32, u64)>) -> std::collections::HashMap<String, crate::store::DocRecord> {
        let mut docs: std::collections::HashMap<String, crate::store::DocRecord> = Default::default();
        for (i, row) in rows {
            let name = format!("doc-{}", i / 4);
            docs.entry(name.clone())
                .or_insert_with(|| crate::store::DocRecord {
                    doc: name,
                    file: String::new(),
                    size: 0,
                    mtime_ns: 0,
                    stat_trusted: false,
                    content_hash: String::new(),
                    rows: Vec::new(),
                    missing: 0,
                    format: None,
                    title: None,
                    fields: Default::default(),
                })
                .rows
                .push(row);
        }
        docs
    }

    /// Through the graph (exact search off): an update extends it, and dead rows never come back.
    #[test]
    fn an_extended_graph_finds_new_rows_and_filters_dead_ones() {
        use crate::store::{ChunkingInfo, DatasetWriter, Manifest, RunStatus};
        let dims = 16;
        let n = 3000;
        let dir = tempfile::tempdir().expect("tempdir");
        let settings =
            Manifest::new("m".into(), None, ChunkingInfo { tokenizer: "t".into(), max_tokens: 8, overlap: 0 });
        let data = clustered(n as usize + 500, dims, 50, 11);
        let mut writer = DatasetWriter::begin(dir.path(), settings.clone(), None, false).expect("begin");
        writer.write(&chunks(0..n), &data[..n as usize * dims], dims).expect("write");
        let v1 = writer.finish(&docs((0..n).map(|i| (i, u64::from(i)))), &[], RunStatus::Complete).expect("finish");
        let meta = update(&Dataset { dir: dir.path().into(), manifest: v1.clone() }, IndexParams::default(), false)
            .expect("build");
        assert_eq!((meta.mode.as_str(), meta.points), ("built", u64::from(n)));

        // Version 2: 500 new rows; the first 600 rows' documents are deleted (20%, under the rebuild threshold).
        let mut writer = DatasetWriter::begin(dir.path(), settings, Some(&v1), true).expect("begin");
        writer.write(&chunks(n..n + 500), &data[n as usize * dims..], dims).expect("write");
        let live = (600..n + 500).map(|i| (i, u64::from(i)));
        let v2 = writer.finish(&docs(live), &[], RunStatus::Complete).expect("finish");
        let dataset = Dataset { dir: dir.path().into(), manifest: v2 };
        let meta = update(&dataset, IndexParams::default(), false).expect("extend");
        assert_eq!((meta.mode.as_str(), meta.inserted, meta.dead_points), ("extended", 500, 600), "{meta:?}");

        let index = SearchIndex::load(&dataset).expect("open").with_exact_max_points(0);
        assert!(index.covers(&dataset.manifest));
        let mut found_self = 0;
        for i in (n..n + 500).step_by(5) {
            let hits = index.search(&data[i as usize * dims..(i as usize + 1) * dims], 5, 64).expect("search");
            found_self += usize::from(hits[0].ordinal == u64::from(i));
        }
        assert!(found_self >= 95, "new rows found as their own nearest: {found_self}/100");
        for i in (0..600).step_by(6) {
            let query = &data[i * dims..(i + 1) * dims];
            let hits = index.search(query, 10, 64).expect("search");
            assert_eq!(hits.len(), 10);
            assert!(hits.iter().all(|h| h.ordinal >= 600), "a dead row came back: {hits:?}");
            let exact = SearchIndex::load(&dataset).expect("open").search(query, 10, 64).expect("exact");
            assert!(exact.iter().all(|h| h.ordinal >= 600), "a dead row came back from the exact scan: {exact:?}");
        }
        let rebuilt = update(&dataset, IndexParams::default(), true).expect("rebuild");
        assert_eq!((rebuilt.mode.as_str(), rebuilt.points, rebuilt.dead_points), ("built", u64::from(n) - 100, 0));
    }

    #[test]
    fn parameters_are_checked_before_a_graph_is_built() {
        assert!(new_builder(IndexParams { m: 300, ef_construction: 400 }, 4, 10).is_err());
        assert!(new_builder(IndexParams { m: 16, ef_construction: 8 }, 4, 10).is_err());
        assert!(new_builder(IndexParams { m: 1, ef_construction: 8 }, 4, 10).is_err());
        assert!(new_builder(IndexParams::default(), 4, 10).is_ok());
    }
}
