//! `manifest.json`: what a dataset holds and how it was made.

use std::fs::File;
use std::io::Write;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use super::StoreError;

pub const MANIFEST_FILE: &str = "manifest.json";
pub const SCHEMA_VERSION: u32 = 1;
const FORMAT: &str = "tars-index-dataset";

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Manifest {
    pub format: String,
    pub schema_version: u32,
    pub tool_version: String,
    /// The model as the user named it (`tars/text-embedding-3-small`).
    pub model: String,
    /// Vector size; `None` only for a dataset that holds no rows.
    pub dimensions: Option<usize>,
    /// Whether `--dimensions` was sent (so queries send it too).
    pub requested_dimensions: Option<u32>,
    /// Always `cosine`: vectors are compared after L2 normalisation.
    pub metric: String,
    pub chunking: ChunkingInfo,
    pub files: Vec<DataFile>,
    pub rows: u64,
    pub status: RunStatus,
    pub created_unix: u64,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ChunkingInfo {
    pub tokenizer: String,
    pub max_tokens: usize,
    pub overlap: usize,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DataFile {
    /// Relative to the dataset directory, `/`-separated.
    pub path: String,
    pub rows: u64,
}

/// Whether the run that wrote the dataset embedded everything it read.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum RunStatus {
    Complete,
    /// Finished, but some chunks failed and are missing.
    Partial {
        failed_chunks: u64,
    },
    /// Stopped early; holds what was embedded before the stop.
    Aborted {
        reason: String,
    },
}

impl Manifest {
    pub fn new(model: String, requested_dimensions: Option<u32>, chunking: ChunkingInfo) -> Self {
        Self {
            format: FORMAT.to_owned(),
            schema_version: SCHEMA_VERSION,
            tool_version: env!("CARGO_PKG_VERSION").to_owned(),
            model,
            dimensions: None,
            requested_dimensions,
            metric: "cosine".to_owned(),
            chunking,
            files: Vec::new(),
            rows: 0,
            status: RunStatus::Complete,
            created_unix: std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map(|d| d.as_secs())
                .unwrap_or(0),
        }
    }

    pub fn load(dir: &Path) -> Result<Self, StoreError> {
        let path = dir.join(MANIFEST_FILE);
        let bytes = match std::fs::read(&path) {
            Ok(bytes) => bytes,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                return Err(StoreError::NotADataset { path: dir.to_path_buf() });
            }
            Err(e) => return Err(StoreError::Io { path, source: e }),
        };
        let manifest: Manifest = serde_json::from_slice(&bytes)
            .map_err(|e| StoreError::Manifest { path: path.clone(), message: e.to_string() })?;
        if manifest.format != FORMAT {
            return Err(StoreError::Manifest {
                path,
                message: format!("format is {:?}, expected {FORMAT:?}", manifest.format),
            });
        }
        if manifest.schema_version > SCHEMA_VERSION {
            return Err(StoreError::Manifest {
                path,
                message: format!(
                    "schema version {} is newer than this tool's {SCHEMA_VERSION}; upgrade tars-index",
                    manifest.schema_version
                ),
            });
        }
        let listed: u64 = manifest.files.iter().map(|f| f.rows).sum();
        if listed != manifest.rows {
            return Err(StoreError::Manifest {
                path,
                message: format!("files hold {listed} rows but rows is {}", manifest.rows),
            });
        }
        Ok(manifest)
    }

    pub fn save(&self, dir: &Path) -> Result<(), StoreError> {
        write_json_atomic(&dir.join(MANIFEST_FILE), self)
    }
}

/// Writes JSON so that readers see the old file or the new one, never a torn one: temp file, fsync, rename, fsync
/// of the directory.
pub fn write_json_atomic<T: Serialize>(path: &Path, value: &T) -> Result<(), StoreError> {
    let bytes = serde_json::to_vec_pretty(value)
        .map_err(|e| StoreError::Manifest { path: path.to_path_buf(), message: e.to_string() })?;
    let tmp = tmp_path(path);
    let mut file = File::create(&tmp).map_err(StoreError::io(&tmp))?;
    file.write_all(&bytes).map_err(StoreError::io(&tmp))?;
    file.sync_all().map_err(StoreError::io(&tmp))?;
    drop(file);
    std::fs::rename(&tmp, path).map_err(StoreError::io(path))?;
    sync_dir(path.parent().unwrap_or(Path::new(".")));
    Ok(())
}

fn tmp_path(path: &Path) -> PathBuf {
    let mut name = path.file_name().map(|n| n.to_os_string()).unwrap_or_default();
    name.push(format!(".tmp-{}", std::process::id()));
    path.with_file_name(name)
}

/// Makes a rename durable. Best effort: not every filesystem lets a directory be opened for sync.
pub(crate) fn sync_dir(dir: &Path) {
    if let Ok(d) = File::open(dir) {
        let _ = d.sync_all();
    }
}
