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
pub use writer::{DatasetMeta, DatasetWriter};

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
