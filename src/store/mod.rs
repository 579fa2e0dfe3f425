//! Stage 5: the dataset on disk.
//!
//! A dataset is a directory:
//!
//! ```text
//! <dataset>/
//!   manifest.json          model, dimensions, metric, chunking, schema version, the list of data files
//!   data/part-00000.parquet one row per chunk (schema in [`schema`]), zstd
//!   index/                 the HNSW index (see crate::index)
//! ```
//!
//! Files are written under a temporary name and renamed when closed; the manifest is replaced atomically (write,
//! fsync, rename) and lists only closed files, so readers never see a half-written file.

mod manifest;
mod reader;
pub mod schema;
mod writer;

use std::path::PathBuf;

pub use manifest::{ChunkingInfo, DataFile, MANIFEST_FILE, Manifest, RunStatus, SCHEMA_VERSION, write_json_atomic};
pub use reader::{Dataset, StoredChunk};
pub use writer::DatasetWriter;

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{path}: {source}")]
    Parquet {
        path: PathBuf,
        #[source]
        source: parquet::errors::ParquetError,
    },
    #[error("{path}: {source}")]
    Arrow {
        path: PathBuf,
        #[source]
        source: arrow::error::ArrowError,
    },
    #[error("{path}: invalid manifest: {message}")]
    Manifest { path: PathBuf, message: String },
    #[error("{path} already holds a dataset; pass --overwrite to replace it")]
    Exists { path: PathBuf },
    #[error("{path} is not a tars-index dataset (no {MANIFEST_FILE})")]
    NotADataset { path: PathBuf },
    #[error("{path}: {message}")]
    Corrupt { path: PathBuf, message: String },
}

impl StoreError {
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
    use std::sync::Arc;

    use super::*;
    use crate::chunk::Chunk;
    use crate::embed::Embeddings;

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
        }
    }

    fn manifest() -> Manifest {
        Manifest::new(
            "tars/m".into(),
            None,
            ChunkingInfo { tokenizer: "cl100k_base".into(), max_tokens: 8, overlap: 0 },
        )
    }

    #[test]
    fn rows_round_trip_across_several_files() {
        let dir = tempfile::tempdir().expect("tempdir");
        let dims = 3;
        let mut writer = DatasetWriter::create(dir.path(), manifest(), false).expect("create").with_rows_per_file(4);
        let chunks: Vec<Chunk> = (0..10).map(chunk).collect();
        for part in chunks.chunks(3) {
            let vectors = part.iter().flat_map(|c| [c.tokens as f32, 0.5, -1.0]).collect();
            writer.write(part, &Embeddings { dimensions: dims, vectors, usage_tokens: None }).expect("write");
        }
        let written = writer.finish(RunStatus::Complete).expect("finish");
        assert_eq!(written.rows, 10);
        assert_eq!(written.files.iter().map(|f| f.rows).collect::<Vec<_>>(), [6, 4]);
        assert!(!dir.path().join("data/part-00000.parquet.tmp").exists());

        let dataset = Dataset::open(dir.path()).expect("open");
        assert_eq!(dataset.manifest, written);
        let mut seen = Vec::new();
        dataset
            .for_each_vector_batch::<StoreError>(|first, vectors, rows| {
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
        assert_eq!(fetched.iter().map(|r| r.ordinal).collect::<Vec<_>>(), [9, 0, 5, 6]);
        assert_eq!(fetched[0].text, "text number 9");
        assert_eq!((fetched[0].doc.as_str(), fetched[0].chunk_index, fetched[0].start), ("doc-3", 0, 90));
        assert!(dataset.fetch(&[10]).is_err());
    }

    #[test]
    fn existing_dataset_needs_overwrite_and_bad_manifests_are_named() {
        let dir = tempfile::tempdir().expect("tempdir");
        DatasetWriter::create(dir.path(), manifest(), false)
            .expect("create")
            .finish(RunStatus::Complete)
            .expect("finish");
        assert!(matches!(DatasetWriter::create(dir.path(), manifest(), false), Err(StoreError::Exists { .. })));
        assert!(DatasetWriter::create(dir.path(), manifest(), true).is_ok());

        std::fs::write(dir.path().join(MANIFEST_FILE), "{ not json").expect("write");
        let err = Dataset::open(dir.path()).expect_err("bad manifest");
        assert!(err.to_string().contains("manifest.json"), "{err}");
        let empty = tempfile::tempdir().expect("tempdir");
        assert!(matches!(Dataset::open(empty.path()), Err(StoreError::NotADataset { .. })));
    }
}
