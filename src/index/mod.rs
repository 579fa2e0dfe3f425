//! Stage 6: the HNSW index over a dataset's vectors (hnsw_rs).
//!
//! The index lives in `<dataset>/index/`: hnsw_rs's graph and data dumps plus `index.json`, which records the
//! parameters, the dataset files it was built from and checksums of the dumps. hnsw_rs exits the process on some
//! corrupt inputs instead of returning an error, so every file is checked against `index.json` before it is handed
//! to hnsw_rs. Graph ids are row ordinals of the dataset, so a hit maps straight to its Parquet row.

mod distance;

use std::fs::File;
use std::io::Read;
use std::path::{Path, PathBuf};

use hnsw_rs::api::AnnT;
use hnsw_rs::hnswio::HnswIo;
use hnsw_rs::prelude::Hnsw;
use serde::{Deserialize, Serialize};

pub use distance::{DistUnitDot, dot, normalize};

use crate::store::{DataFile, Dataset, StoreError, write_json_atomic};

pub const INDEX_DIR: &str = "index";
const INDEX_FILE: &str = "index.json";
const BASENAME: &str = "hnsw";
const DISTANCE: &str = "unit-dot";
/// hnsw_rs clamps layers at 16.
const MAX_LAYERS: usize = 16;
/// Vectors handed to one `parallel_insert_slice` call (hnsw_rs suggests about 1000 per thread).
const INSERT_BATCH: usize = 4096;

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
    #[error("invalid index parameter: {0}")]
    Params(String),
    #[error("{path}: no index; run `tars-index index {dataset}` first", dataset = dataset.display())]
    Missing { path: PathBuf, dataset: PathBuf },
    #[error("{path}: the index was built from a different version of the dataset; run `tars-index index {dataset}` again", dataset = dataset.display())]
    Stale { path: PathBuf, dataset: PathBuf },
    #[error("{path}: index files are damaged ({message}); run `tars-index index {dataset}` again", dataset = dataset.display())]
    Damaged { path: PathBuf, dataset: PathBuf, message: String },
    #[error("hnsw_rs: {0}")]
    Hnsw(String),
    #[error("query has {got} dimensions, the index {want}")]
    QueryDimensions { got: usize, want: usize },
}

impl IndexParams {
    pub fn validate(&self) -> Result<(), IndexError> {
        // hnsw_rs calls process::exit for M > 256; larger than 128 is never useful anyway.
        if !(2..=128).contains(&self.m) {
            return Err(IndexError::Params(format!("M must be between 2 and 128 (got {})", self.m)));
        }
        if self.ef_construction < self.m || self.ef_construction > 4096 {
            return Err(IndexError::Params(format!(
                "ef_construction must be between M ({}) and 4096 (got {})",
                self.m, self.ef_construction
            )));
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
    /// The dataset files the index was built from; a different list means the index is stale.
    pub dataset_files: Vec<DataFile>,
    pub files: Vec<IndexFile>,
    pub build_secs: f64,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct IndexFile {
    pub name: String,
    pub bytes: u64,
    pub blake3: String,
}

/// An in-memory graph over unit vectors.
pub type Graph = Hnsw<'static, f32, DistUnitDot>;

/// A graph ready for `capacity` points.
pub fn new_graph(params: IndexParams, capacity: usize) -> Result<Graph, IndexError> {
    params.validate()?;
    Ok(Hnsw::new(params.m, capacity.max(1), MAX_LAYERS, params.ef_construction, DistUnitDot))
}

/// Inserts rows `first_id..` from a flat buffer of `dims`-sized vectors, normalising them first.
pub fn insert_vectors(graph: &Graph, first_id: usize, vectors: &[f32], dims: usize) {
    let mut owned = vectors.to_vec();
    owned.chunks_exact_mut(dims).for_each(normalize);
    for (batch_no, batch) in owned.chunks(INSERT_BATCH * dims).enumerate() {
        let base = first_id + batch_no * INSERT_BATCH;
        let items: Vec<(&[f32], usize)> = batch.chunks_exact(dims).enumerate().map(|(i, v)| (v, base + i)).collect();
        graph.parallel_insert_slice(&items);
    }
}

/// Builds the index of `dataset` and saves it in `<dataset>/index`, replacing any earlier one only once the new
/// one is complete.
pub fn build(dataset: &Dataset, params: IndexParams) -> Result<IndexMeta, IndexError> {
    let started = std::time::Instant::now();
    let dims = dataset.dimensions()?;
    let graph = new_graph(params, dataset.manifest.rows as usize)?;
    dataset.for_each_vector_batch::<IndexError>(|first, vectors, _rows| {
        insert_vectors(&graph, first as usize, vectors, dims);
        Ok(())
    })?;
    let mut graph = graph;
    graph.set_searching_mode(true);

    let tmp = dataset.dir.join(format!("{INDEX_DIR}.tmp-{}", std::process::id()));
    if tmp.exists() {
        std::fs::remove_dir_all(&tmp).map_err(StoreError::io(&tmp))?;
    }
    std::fs::create_dir_all(&tmp).map_err(StoreError::io(&tmp))?;
    let basename = graph.file_dump(&tmp, BASENAME).map_err(|e| IndexError::Hnsw(format!("{e:#}")))?;
    let files = [".hnsw.graph", ".hnsw.data"]
        .iter()
        .map(|suffix| describe_file(&tmp, &format!("{basename}{suffix}")))
        .collect::<Result<Vec<_>, _>>()?;
    let meta = IndexMeta {
        params,
        distance: DISTANCE.to_owned(),
        dimensions: dims,
        points: graph.get_nb_point() as u64,
        basename,
        dataset_files: dataset.manifest.files.clone(),
        files,
        build_secs: started.elapsed().as_secs_f64(),
    };
    write_json_atomic(&tmp.join(INDEX_FILE), &meta)?;
    drop(graph);

    // Swap directories: the old index stays readable until the new one is in place.
    let live = dataset.dir.join(INDEX_DIR);
    let old = dataset.dir.join(format!("{INDEX_DIR}.old-{}", std::process::id()));
    if live.exists() {
        std::fs::rename(&live, &old).map_err(StoreError::io(&live))?;
    }
    std::fs::rename(&tmp, &live).map_err(StoreError::io(&live))?;
    if old.exists() {
        std::fs::remove_dir_all(&old).map_err(StoreError::io(&old))?;
    }
    Ok(meta)
}

fn describe_file(dir: &Path, name: &str) -> Result<IndexFile, StoreError> {
    let path = dir.join(name);
    let (bytes, hash) = hash_file(&path)?;
    Ok(IndexFile { name: name.to_owned(), bytes, blake3: hash })
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

type LoadedHnsw<'a> = Hnsw<'a, f32, DistUnitDot>;

self_cell::self_cell!(
    /// hnsw_rs's reloaded graph borrows its loader; this keeps both in one value.
    struct LoadedGraph {
        owner: HnswIo,
        #[not_covariant]
        dependent: LoadedHnsw,
    }
);

/// A saved index, loaded for searching.
pub struct SearchIndex {
    graph: LoadedGraph,
    pub meta: IndexMeta,
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
    /// Loads `<dataset>/index`, after checking it matches the dataset and its files are intact.
    pub fn open(dataset: &Dataset) -> Result<Self, IndexError> {
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
        if meta.dataset_files != dataset.manifest.files {
            return Err(IndexError::Stale { path: dir, dataset: dataset.dir.clone() });
        }
        if meta.distance != DISTANCE {
            return Err(damaged(format!("distance {:?} is not {DISTANCE:?}", meta.distance)));
        }
        for file in &meta.files {
            let (bytes, hash) = hash_file(&dir.join(&file.name)).map_err(|e| damaged(e.to_string()))?;
            if bytes != file.bytes || hash != file.blake3 {
                return Err(damaged(format!("{} does not match its checksum", file.name)));
            }
        }
        let io = HnswIo::new(&dir, &meta.basename);
        let graph = LoadedGraph::try_new(io, |io| io.load_hnsw_with_dist::<f32, DistUnitDot>(DistUnitDot))
            .map_err(|e| IndexError::Hnsw(format!("{e:#}")))?;
        Ok(Self { graph, meta })
    }

    /// The `k` nearest rows to `query` (normalised here), best first.
    pub fn search(&self, query: &[f32], k: usize, ef: usize) -> Result<Vec<Hit>, IndexError> {
        if query.len() != self.meta.dimensions {
            return Err(IndexError::QueryDimensions { got: query.len(), want: self.meta.dimensions });
        }
        let mut q = query.to_vec();
        normalize(&mut q);
        let found = self.graph.with_dependent(|_, hnsw| hnsw.search(&q, k, ef.max(k)));
        Ok(found.into_iter().map(|n| Hit { ordinal: n.d_id as u64, score: 1.0 - n.distance }).collect())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::rngs::StdRng;
    use rand::{Rng, SeedableRng};

    /// Clustered unit vectors: `clusters` centres (fixed by `seed`), points scattered widely around them so the
    /// clusters overlap (drawn from `seed + 1`, or from another seed for held-out queries).
    fn clustered(n: usize, dims: usize, clusters: usize, seed: u64) -> Vec<f32> {
        clustered_from(n, dims, clusters, seed, seed + 1)
    }

    fn clustered_from(n: usize, dims: usize, clusters: usize, centre_seed: u64, point_seed: u64) -> Vec<f32> {
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

    fn exact_top_k(data: &[f32], dims: usize, q: &[f32], k: usize) -> Vec<usize> {
        let mut scored: Vec<(f32, usize)> = data.chunks_exact(dims).enumerate().map(|(i, v)| (dot(q, v), i)).collect();
        scored.sort_by(|a, b| b.0.total_cmp(&a.0));
        scored.into_iter().take(k).map(|(_, i)| i).collect()
    }

    #[test]
    fn recall_at_10_against_exact_search() {
        let (n, dims) = (4000, 64);
        let data = clustered(n, dims, 40, 7);
        let graph = new_graph(IndexParams::default(), n).expect("graph");
        insert_vectors(&graph, 0, &data, dims);
        let queries = clustered_from(200, dims, 40, 7, 99);
        let mut hits = 0;
        for q in queries.chunks_exact(dims) {
            let truth = exact_top_k(&data, dims, q, 10);
            let found: Vec<usize> = graph.search(q, 10, DEFAULT_EF_SEARCH).into_iter().map(|n| n.d_id).collect();
            hits += truth.iter().filter(|t| found.contains(t)).count();
        }
        let recall = hits as f64 / (200.0 * 10.0);
        assert!(recall >= 0.95, "recall@10 = {recall:.3} at ef = {DEFAULT_EF_SEARCH}");
    }

    #[test]
    fn every_point_finds_itself_even_with_duplicates() {
        let dims = 32;
        let mut data = clustered(1500, dims, 15, 3);
        // Exact duplicates: the dot of a unit vector with itself can round past 1, which panics hnsw_rs's DistDot.
        let dup = data[..dims].to_vec();
        data.extend_from_slice(&dup);
        let graph = new_graph(IndexParams::default(), 1501).expect("graph");
        insert_vectors(&graph, 0, &data, dims);
        for (i, v) in data.chunks_exact(dims).enumerate() {
            let found = graph.search(v, 3, DEFAULT_EF_SEARCH);
            assert!(found.iter().any(|n| n.d_id == i || (i == 1500 && n.d_id == 0)), "point {i} not found: {found:?}");
            assert!(found[0].distance >= 0.0);
        }
    }

    #[test]
    fn parameters_are_checked_before_hnsw_rs_sees_them() {
        assert!(new_graph(IndexParams { m: 300, ef_construction: 400 }, 10).is_err());
        assert!(new_graph(IndexParams { m: 16, ef_construction: 8 }, 10).is_err());
        assert!(new_graph(IndexParams { m: 1, ef_construction: 8 }, 10).is_err());
    }
}
