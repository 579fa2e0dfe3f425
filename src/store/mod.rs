//! Stage 5: the dataset on disk.
//!
//! A dataset is a directory:
//!
//! ```text
//! <dataset>/
//!   manifest.json          model, dimensions, metric, chunking, schema version, the list of data files
//!   data/part-<generation>-<run>-<n>.parquet  one row per chunk (schema in [`schema`]), zstd
//!   index/                 the HNSW index (see crate::index)
//! ```
//!
//! Files are written under a temporary name and renamed when closed; the manifest is replaced atomically (write,
//! fsync, rename) and lists only closed files, so readers never see a half-written file.

mod cache;
mod captions;
mod compact;
mod docs;
mod failed;
mod lock;
mod manifest;
mod reader;
mod remote;
mod repair;
pub mod schema;
mod shard;
mod vacuum;
mod writer;

use std::path::PathBuf;

pub use cache::{CACHE_DIR, CacheLoc, EmbeddingCache, SegmentSink, clear_cache};
pub use captions::{CAPTIONS_DIR, CaptionCache, CaptionLine};
pub use compact::{COMPACT_DEAD_SHARE, compact, needs_compaction};
pub use docs::{DOCS_DIR, DocRecord};
pub use failed::{FAILED_DIR, FailedChunk};
pub use lock::{DatasetLock, LOCK_FILE, LockHolder};
pub use manifest::{
    ChunkingInfo, DataFile, MANIFEST_FILE, Manifest, RunStatus, SCHEMA_VERSION, unix_now, write_json_atomic,
};
pub use reader::{Dataset, Footers, StoredChunk};
pub use remote::{Location, Remote, VERSIONS_DIR, url_scheme};
pub use repair::{DAMAGED_DIR, DamagedFile, Repair, repair};
pub use shard::{
    Attempt, Done, Finished, Plan, ROW_STRIDE, RUNS_DIR, RunState, Shard, ShardState, check_run_id, prepare_work,
    shard_of,
};
pub use vacuum::{Vacuumed, parse_age};
pub use writer::{DATA_DIR, DatasetWriter};

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("{path}", path = path.display())]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{path}", path = path.display())]
    Parquet {
        path: PathBuf,
        #[source]
        source: parquet::errors::ParquetError,
    },
    #[error("{path}", path = path.display())]
    Arrow {
        path: PathBuf,
        #[source]
        source: arrow::error::ArrowError,
    },
    #[error("{path}: invalid manifest: {message}")]
    Manifest { path: PathBuf, message: String },
    #[error("{path} is being written by another run ({holder}); wait for it to finish or pass --wait-lock SECS", holder = holder.as_ref().map_or_else(|| "holder unknown".to_owned(), ToString::to_string))]
    Locked { path: PathBuf, holder: Option<LockHolder> },
    #[error("{path} is not a tars-index dataset (no {MANIFEST_FILE})")]
    NotADataset { path: PathBuf },
    #[error("{path} is a file, not a dataset directory")]
    NotADirectory { path: PathBuf },
    #[error("{path}: {message}")]
    Corrupt { path: PathBuf, message: String },
    #[error("{path}: the dataset holds no embedded chunks")]
    Empty { path: PathBuf },
    #[error("{url}: {message}")]
    Remote {
        url: String,
        message: String,
        #[source]
        source: Option<object_store::Error>,
    },
    /// A shard whose settings differ from its run's: permanent, a retry cannot help.
    #[error("{url}: {message}")]
    RunSettings { url: String, message: String },
    #[error(
        "{url}: another run published version {generation} first; nothing of this run is lost (its embeddings are cached there): run it again to build on that version"
    )]
    Conflict { url: String, generation: u64 },
}

impl StoreError {
    /// A file of the dataset that cannot be read as what it should be (`tars-index repair` drops it).
    pub fn is_damage(&self) -> bool {
        matches!(self, StoreError::Parquet { .. } | StoreError::Arrow { .. } | StoreError::Corrupt { .. })
    }

    /// A file that is not there (any more): a reader of an older version whose files a newer one replaced.
    pub fn is_not_found(&self) -> bool {
        matches!(self, StoreError::Io { source, .. } if source.kind() == std::io::ErrorKind::NotFound)
    }

    pub(crate) fn io(path: impl Into<PathBuf>) -> impl FnOnce(std::io::Error) -> Self {
        let path = path.into();
        move |source| StoreError::Io { path, source }
    }

    pub(crate) fn parquet(path: impl Into<PathBuf>) -> impl FnOnce(parquet::errors::ParquetError) -> Self {
        let path = path.into();
        move |source| StoreError::Parquet { path, source }
    }

    pub(crate) fn arrow(path: impl Into<PathBuf>) -> impl FnOnce(arrow::error::ArrowError) -> Self {
        let path = path.into();
        move |source| StoreError::Arrow { path, source }
    }
}

#[cfg(test)]
mod tests {
    use std::collections::HashMap;
    use std::sync::Arc;

    use super::*;
    use crate::chunk::Chunk;

    fn chunk(i: u32) -> Chunk {
        Chunk {
            id: format!("id-{i}"),
            doc: Arc::from(format!("doc-{}", i / 3).as_str()),
            chunk_index: i % 3,
            start: u64::from(i) * 10,
            end: u64::from(i) * 10 + 5,
            tokens: i + 1,
            text: format!("text number {i}"),
            hash: format!("h{i}"),
            page: None,
        }
    }

    fn manifest() -> Manifest {
        Manifest::new(
            "tars/m".into(),
            None,
            ChunkingInfo { tokenizer: "cl100k_base".into(), max_tokens: 8, overlap: 0 },
        )
    }

    fn vectors(chunks: &[Chunk]) -> Vec<f32> {
        chunks.iter().flat_map(|c| [c.tokens as f32, 0.5, -1.0]).collect()
    }

    /// Documents mapping each `doc-N` to its rows, as the pipeline would record them.
    fn docs_for(rows: &[(String, u64)]) -> HashMap<String, DocRecord> {
        let mut docs: HashMap<String, DocRecord> = HashMap::new();
        for (doc, row) in rows {
            docs.entry(doc.clone())
                .or_insert_with(|| DocRecord {
                    doc: doc.clone(),
                    file: doc.clone(),
                    size: 1,
                    mtime_ns: 1,
                    stat_trusted: true,
                    content_hash: "h".into(),
                    rows: Vec::new(),
                    missing: 0,
                    format: None,
                    title: None,
                    fields: Default::default(),
                })
                .rows
                .push(*row);
        }
        docs
    }

    #[test]
    fn rows_round_trip_across_files_and_versions() {
        let dir = tempfile::tempdir().expect("tempdir");
        let dims = 3;
        let mut writer =
            DatasetWriter::begin(dir.path(), manifest(), None, false).expect("begin").with_rows_per_file(4);
        let chunks: Vec<Chunk> = (0..10).map(chunk).collect();
        let mut placed = Vec::new();
        for part in chunks.chunks(3) {
            let first = writer.write(part, &vectors(part), dims).expect("write");
            placed.extend(part.iter().enumerate().map(|(i, c)| (c.doc.to_string(), first + i as u64)));
        }
        let v1 = writer.finish(&docs_for(&placed), &[], RunStatus::Complete).expect("finish");
        assert_eq!((v1.rows, v1.live_rows, v1.generation), (10, 10, 1));
        assert_eq!(v1.files.iter().map(|f| (f.first_row, f.rows)).collect::<Vec<_>>(), [(0, 6), (6, 4)]);
        let names: Vec<String> = std::fs::read_dir(dir.path().join(DATA_DIR))
            .expect("ls")
            .map(|e| e.expect("entry").file_name().to_string_lossy().into_owned())
            .collect();
        assert!(names.iter().all(|n| n.starts_with("part-000001-") && n.ends_with(".parquet")), "{names:?}");

        let dataset = Dataset::open(dir.path()).expect("open");
        assert_eq!(dataset.manifest, v1);
        let mut seen = Vec::new();
        dataset
            .for_each_vector_batch::<StoreError>(0, |first, vectors, rows| {
                for r in 0..rows {
                    seen.push((first + r as u64, vectors[r * dims]));
                }
                Ok(())
            })
            .expect("vectors");
        let expected: Vec<(u64, f32)> = (0..10).map(|i| (i, (i + 1) as f32)).collect();
        assert_eq!(seen, expected);
        let fetched = dataset.fetch(&[9, 0, 5, 6]).expect("fetch");
        assert_eq!(fetched.iter().map(|r| r.id.as_str()).collect::<Vec<_>>(), ["id-9", "id-0", "id-5", "id-6"]);
        assert_eq!(fetched[0].text, "text number 9");
        assert_eq!((fetched[0].doc.as_str(), fetched[0].chunk_index, fetched[0].start), ("doc-3", 0, 90));
        assert!(dataset.fetch(&[10]).is_err());
        let read = dataset.read_vectors(&[7, 2]).expect("vectors");
        assert_eq!(
            read.iter().map(|(r, h, v)| (*r, h.as_str(), v[0])).collect::<Vec<_>>(),
            [(2, "h2", 3.0), (7, "h7", 8.0)]
        );

        // Version 2 appends two rows and keeps only doc-3 (row 9) of the old ones: the first file has no live row
        // left and leaves the manifest; row ids carry on from 10.
        let mut writer = DatasetWriter::begin(dir.path(), manifest(), Some(&v1), true).expect("begin");
        let extra: Vec<Chunk> = (20..22).map(chunk).collect();
        let first = writer.write(&extra, &vectors(&extra), dims).expect("write");
        assert_eq!(first, 10);
        let mut live = vec![("doc-3".to_owned(), 9)];
        live.extend(extra.iter().enumerate().map(|(i, c)| (c.doc.to_string(), first + i as u64)));
        let v2 = writer.finish(&docs_for(&live), &[], RunStatus::Complete).expect("finish");
        assert_eq!((v2.generation, v2.lineage.as_str(), v2.live_rows, v2.rows), (2, v1.lineage.as_str(), 3, 6));
        assert_eq!(v2.files.iter().map(|f| (f.first_row, f.rows)).collect::<Vec<_>>(), [(6, 4), (10, 2)]);
        assert!(!dir.path().join(&v1.files[0].path).exists(), "the dropped file is deleted");
        assert!(!dir.path().join(v1.docs_file.as_deref().expect("docs")).exists(), "the old docs table is deleted");
        let dataset = Dataset::open(dir.path()).expect("open");
        assert_eq!(dataset.live_rows().expect("live"), Some(vec![9, 10, 11]));
        assert_eq!(
            dataset.fetch(&[11, 9]).expect("fetch").iter().map(|r| r.id.as_str()).collect::<Vec<_>>(),
            ["id-21", "id-9"]
        );
    }

    #[test]
    fn a_run_from_scratch_keeps_the_old_version_readable_until_it_publishes() {
        let dir = tempfile::tempdir().expect("tempdir");
        let mut writer = DatasetWriter::begin(dir.path(), manifest(), None, false).expect("begin");
        let chunks: Vec<Chunk> = (0..3).map(chunk).collect();
        writer.write(&chunks, &vectors(&chunks), 3).expect("write");
        let v1 = writer
            .finish(
                &docs_for(&[("doc-0".into(), 0), ("doc-0".into(), 1), ("doc-0".into(), 2)]),
                &[],
                RunStatus::Complete,
            )
            .expect("finish");

        let mut writer = DatasetWriter::begin(dir.path(), manifest(), Some(&v1), false).expect("begin");
        writer.write(&chunks[..1], &vectors(&chunks[..1]), 3).expect("write");
        drop(writer); // killed before publishing
        assert_eq!(Dataset::open(dir.path()).expect("open").manifest, v1);
        assert_eq!(Dataset::open(dir.path()).expect("open").fetch(&[2]).expect("old rows readable").len(), 1);

        let writer = DatasetWriter::begin(dir.path(), manifest(), Some(&v1), false).expect("begin");
        let v2 = writer.finish(&HashMap::new(), &[], RunStatus::Complete).expect("finish");
        assert_ne!(v2.lineage, v1.lineage, "a run from scratch starts a new lineage");
        assert_eq!((v2.rows, v2.generation), (0, 2));
        let left: Vec<_> = std::fs::read_dir(dir.path().join(DATA_DIR)).expect("ls").collect();
        assert!(left.is_empty(), "old and orphaned files are removed: {left:?}");
    }

    #[test]
    fn repair_finds_rows_whose_text_no_longer_matches_and_drops_their_file() {
        let dir = tempfile::tempdir().expect("tempdir");
        let mut writer = DatasetWriter::begin(dir.path(), manifest(), None, false).expect("begin");
        let good: Vec<Chunk> = (0..3)
            .map(|i| Chunk { hash: blake3::hash(chunk(i).text.as_bytes()).to_hex().to_string(), ..chunk(i) })
            .collect();
        writer.write(&good, &vectors(&good), 3).expect("write");
        let v1 = writer
            .finish(
                &docs_for(&[("doc-0".into(), 0), ("doc-0".into(), 1), ("doc-0".into(), 2)]),
                &[],
                RunStatus::Complete,
            )
            .expect("v1");
        let mut writer = DatasetWriter::begin(dir.path(), manifest(), Some(&v1), true).expect("begin");
        let flipped = vec![chunk(3)]; // its hash is "h3", not the text's
        writer.write(&flipped, &vectors(&flipped), 3).expect("write");
        let rows = [("doc-0".into(), 0), ("doc-0".into(), 1), ("doc-0".into(), 2), ("doc-1".into(), 3)];
        writer.finish(&docs_for(&rows), &[], RunStatus::Complete).expect("v2");

        let repaired = repair(&Dataset::open(dir.path()).expect("open")).expect("repair");
        assert_eq!(repaired.damaged.len(), 1, "{repaired:?}");
        assert!(repaired.damaged[0].error.contains("does not match its hash"), "{repaired:?}");
        assert_eq!((repaired.rows_dropped, repaired.documents_to_redo, repaired.generation), (1, 1, Some(3)));
        let dataset = Dataset::open(dir.path()).expect("open");
        assert_eq!(dataset.manifest.files.len(), 1);
        let mut docs = HashMap::new();
        dataset
            .for_each_doc(|d| {
                docs.insert(d.doc.clone(), d);
            })
            .expect("docs");
        assert_eq!(docs["doc-0"].rows, [0, 1, 2], "untouched documents keep their rows");
        assert!(docs["doc-1"].rows.is_empty() && docs["doc-1"].content_hash.is_empty(), "{:?}", docs["doc-1"]);
        assert!(repair(&dataset).expect("again").generation.is_none(), "a sound dataset is left alone");
    }

    #[test]
    fn bad_manifests_are_named() {
        let dir = tempfile::tempdir().expect("tempdir");
        DatasetWriter::begin(dir.path(), manifest(), None, false)
            .expect("begin")
            .finish(&HashMap::new(), &[], RunStatus::Complete)
            .expect("finish");
        std::fs::write(dir.path().join(MANIFEST_FILE), "{ not json").expect("write");
        let err = Dataset::open(dir.path()).expect_err("bad manifest");
        assert!(err.to_string().contains("manifest.json"), "{err}");
        let empty = tempfile::tempdir().expect("tempdir");
        assert!(matches!(Dataset::open(empty.path()), Err(StoreError::NotADataset { .. })));
    }
}
