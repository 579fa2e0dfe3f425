//! `manifest.json`: what a dataset holds and how it was made.

use std::fs::File;
use std::io::Write;
use std::path::{Path, PathBuf};

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use super::StoreError;
use crate::source::FieldType;

pub const MANIFEST_FILE: &str = "manifest.json";
/// 2 added generations, row ids (`DataFile::first_row`), the documents table and the lineage; 3 the documents
/// table's built-in and metadata columns and the data files' `page` (both read as absent in older datasets).
pub const SCHEMA_VERSION: u32 = 3;
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
    /// Bumped by every run that publishes a new version; names that version's files.
    #[serde(default)]
    pub generation: u64,
    /// Identifies a sequence of versions whose row ids carry over (a run from scratch starts a new one), so an
    /// index knows whether it can be extended.
    #[serde(default)]
    pub lineage: String,
    /// Immutable data files, in row-id order. Rows no live document refers to are dead (see `docs_file`).
    pub files: Vec<DataFile>,
    /// Physical rows in `files`, dead ones included.
    pub rows: u64,
    /// Rows that belong to a live document.
    #[serde(default)]
    pub live_rows: u64,
    /// The next row id to hand out. Kept here, not derived from the files, so that ids are never reused even when
    /// the newest file is dropped.
    #[serde(default)]
    pub next_row_id: u64,
    /// The documents table (`docs/docs-<generation>.parquet`): each document's source, content hash and rows.
    #[serde(default)]
    pub docs_file: Option<String>,
    /// The dead-letter file (`failed/failed-<generation>.jsonl`): chunks that failed for good, missing from their
    /// documents until a later run embeds them.
    #[serde(default)]
    pub failed_file: Option<String>,
    /// Chunks listed in `failed_file`.
    #[serde(default)]
    pub failed_chunks: u64,
    pub status: RunStatus,
    pub created_unix: u64,
    #[serde(default)]
    pub updated_unix: u64,
    /// The documents table's metadata columns (`--metadata`) and their types.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub metadata: BTreeMap<String, FieldType>,
    /// `--metadata` as the run that wrote this version gave it: a run asking for other fields reads every file
    /// again (to rewrite the metadata, not to embed).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub metadata_spec: Vec<String>,
    /// The model that wrote the image documents' captions (`--caption-model`): a run with another one reads the
    /// images again, to caption them anew.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub caption_model: Option<String>,
    /// The sharded run that published this version (`tars-index commit`), if one did.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub run_id: Option<String>,
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
    /// Row id of the file's first row; its rows are `first_row..first_row + rows`.
    #[serde(default)]
    pub first_row: u64,
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
    /// Failed after it started (a full disk, a damaged file): it published nothing. Only in run reports.
    Failed {
        error: String,
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
            generation: 0,
            lineage: String::new(),
            files: Vec::new(),
            rows: 0,
            live_rows: 0,
            next_row_id: 0,
            docs_file: None,
            failed_file: None,
            failed_chunks: 0,
            status: RunStatus::Complete,
            created_unix: unix_now(),
            updated_unix: unix_now(),
            metadata: BTreeMap::new(),
            metadata_spec: Vec::new(),
            caption_model: None,
            run_id: None,
        }
    }

    /// The row id the next appended row gets.
    pub fn next_row(&self) -> u64 {
        self.files.last().map_or(0, |f| f.first_row + f.rows).max(self.next_row_id)
    }

    /// Whether every row id given out so far is live, so no documents table need be read to tell. (Rows of a file
    /// dropped for holding no live row are not stored, so `live_rows == rows` alone does not make every id live.)
    pub fn all_rows_live(&self) -> bool {
        self.docs_file.is_none() || (self.live_rows == self.rows && self.rows == self.next_row())
    }

    /// Whether two manifests' vectors live in the same space (same model, same requested size).
    pub fn same_vector_space(&self, other: &Manifest) -> bool {
        self.model == other.model && self.requested_dimensions == other.requested_dimensions
    }

    pub fn load(dir: &Path) -> Result<Self, StoreError> {
        if dir.exists() && !dir.is_dir() {
            return Err(StoreError::NotADirectory { path: dir.to_path_buf() });
        }
        let mut path = dir.join(MANIFEST_FILE);
        let bytes = match std::fs::read(&path) {
            // A dataset that also has object storage's layout (a sharded run commits there only): the newer of the
            // two.
            Ok(bytes) if dir.join(super::VERSIONS_DIR).is_dir() => {
                let local = Self::from_bytes(&bytes, &path)?;
                match newest_version(dir) {
                    Some((generation, version)) if generation > local.generation => {
                        let bytes = std::fs::read(&version).map_err(StoreError::io(&version))?;
                        return Self::from_bytes(&bytes, &version);
                    }
                    _ => return Ok(local),
                }
            }
            Ok(bytes) => bytes,
            // A dataset written through object storage's layout (`file://`): its newest version object.
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => match newest_version(dir) {
                Some((_, version)) => {
                    path = version;
                    std::fs::read(&path).map_err(StoreError::io(&path))?
                }
                None => return Err(StoreError::NotADataset { path: dir.to_path_buf() }),
            },
            Err(e) => return Err(StoreError::Io { path, source: e }),
        };
        Self::from_bytes(&bytes, &path)
    }

    /// Parses and checks a manifest read from `path` (a file, or an object named like one).
    pub fn from_bytes(bytes: &[u8], path: &Path) -> Result<Self, StoreError> {
        let path = path.to_path_buf();
        let mut manifest: Manifest = serde_json::from_slice(bytes)
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
        if manifest.schema_version < 2 {
            // Version 1 had neither row ids nor a documents table: rows were numbered in file order, all live.
            let mut first = 0;
            for file in &mut manifest.files {
                file.first_row = first;
                first += file.rows;
            }
            manifest.live_rows = manifest.rows;
        }
        let listed: u64 = manifest.files.iter().map(|f| f.rows).sum();
        if listed != manifest.rows {
            return Err(StoreError::Manifest {
                path,
                message: format!("files hold {listed} rows but rows is {}", manifest.rows),
            });
        }
        if manifest.files.windows(2).any(|w| w[0].first_row + w[0].rows > w[1].first_row) {
            return Err(StoreError::Manifest {
                path,
                message: "data files' row ids overlap or are out of order".into(),
            });
        }
        Ok(manifest)
    }

    /// Publishes this version in `dir`. A dataset that also has object storage's layout (made through `file://`)
    /// gets its version object too, so that both ways of naming it see the same newest version.
    pub fn save(&self, dir: &Path) -> Result<(), StoreError> {
        let versions = dir.join(super::VERSIONS_DIR);
        if versions.is_dir() {
            let path = versions.join(format!("{:020}.json", self.generation));
            if !path.exists() {
                write_json_atomic(&path, self)?;
            }
            write_json_atomic(&dir.join("_latest.json"), &serde_json::json!({ "generation": self.generation }))?;
        }
        write_json_atomic(&dir.join(MANIFEST_FILE), self)
    }
}

/// The newest `_versions/<generation>.json` of `dir`, and its generation.
fn newest_version(dir: &Path) -> Option<(u64, PathBuf)> {
    std::fs::read_dir(dir.join(super::VERSIONS_DIR))
        .ok()?
        .filter_map(Result::ok)
        .filter_map(|e| {
            let name = e.file_name().into_string().ok()?;
            Some((name.strip_suffix(".json")?.parse::<u64>().ok()?, e.path()))
        })
        .max_by_key(|(generation, _)| *generation)
}

pub fn unix_now() -> u64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_secs()).unwrap_or(0)
}

/// Writes JSON so that readers see the old file or the new one, never a torn one: temp file, fsync, rename, fsync
/// of the directory.
pub fn write_json_atomic<T: Serialize>(path: &Path, value: &T) -> Result<(), StoreError> {
    let bytes = serde_json::to_vec_pretty(value)
        .map_err(|e| StoreError::Manifest { path: path.to_path_buf(), message: e.to_string() })?;
    let tmp = tmp_path(path);
    let written = File::create(&tmp).and_then(|mut file| {
        file.write_all(&bytes)?;
        file.sync_all()
    });
    if let Err(e) = written {
        // A full disk must not also leave a half-written temp file behind.
        let _ = std::fs::remove_file(&tmp);
        return Err(StoreError::Io { path: tmp, source: e });
    }
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
