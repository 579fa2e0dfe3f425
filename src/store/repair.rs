//! Repairing a dataset with a damaged file, without paying for its other vectors again.
//!
//! Every file a version lists is read in full and checked (row count, columns, each text against its hash, vector
//! size). A damaged data file leaves the version: the documents that had rows in it keep their other rows and are
//! marked changed, so the next run reads and chunks them again, reuses the vector of every text it already has (in
//! the other data files or the cache) and embeds only what the damaged file held. A damaged documents table is
//! replaced by an empty one and the data files are kept: the next run finds every document new and reuses every
//! vector by its text. A damaged dead-letter file is dropped, and the documents with missing chunks are marked
//! changed. Damaged files are kept under `damaged/` for inspection.

use std::collections::{BTreeSet, HashMap};
use std::path::Path;

use serde::Serialize;

use super::docs::DocRecord;
use super::failed::FailedChunk;
use super::reader::Dataset;
use super::writer::DatasetWriter;
use super::{Manifest, RunStatus, StoreError};
use crate::error::Chain;

pub const DAMAGED_DIR: &str = "damaged";

/// A file found damaged, and why.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct DamagedFile {
    /// Relative to the dataset directory.
    pub path: String,
    pub error: String,
}

/// What a repair found and did.
#[derive(Debug, Clone, Default, Serialize)]
pub struct Repair {
    /// Files checked in full.
    pub files_checked: usize,
    pub damaged: Vec<DamagedFile>,
    /// Rows dropped with the damaged data files.
    pub rows_dropped: u64,
    /// Documents the next run reads and chunks again (all of them when the documents table was damaged).
    pub documents_to_redo: u64,
    /// The documents table was damaged and replaced by an empty one.
    pub documents_table_replaced: bool,
    /// The version published by the repair; `None` when nothing was damaged.
    pub generation: Option<u64>,
}

/// Checks every file of the current version of `dataset` and, when some are damaged, publishes a version without
/// them. The caller holds the dataset lock.
pub fn repair(dataset: &Dataset) -> Result<Repair, StoreError> {
    let manifest = &dataset.manifest;
    let mut repair = Repair::default();
    let mut damaged_rows: Vec<(u64, u64)> = Vec::new();
    for (i, file) in manifest.files.iter().enumerate() {
        repair.files_checked += 1;
        if let Some(e) = damage(dataset.check_file(i))? {
            damaged_rows.push((file.first_row, file.first_row + file.rows));
            repair.rows_dropped += file.rows;
            repair.damaged.push(DamagedFile { path: file.path.clone(), error: Chain(&e).to_string() });
        }
    }
    let mut docs: HashMap<String, DocRecord> = HashMap::new();
    let docs_damaged = match &manifest.docs_file {
        Some(relative) => {
            repair.files_checked += 1;
            let read = dataset.for_each_doc(|d| {
                docs.insert(d.doc.clone(), d);
            });
            damage(read)?.map(|e| DamagedFile { path: relative.clone(), error: Chain(&e).to_string() })
        }
        None => None,
    };
    let mut failed: Vec<FailedChunk> = Vec::new();
    let failed_damaged = match &manifest.failed_file {
        Some(relative) => {
            repair.files_checked += 1;
            let read = dataset.failed_chunks().map(|entries| failed = entries);
            damage(read)?.map(|e| DamagedFile { path: relative.clone(), error: Chain(&e).to_string() })
        }
        None => None,
    };
    if repair.damaged.is_empty() && docs_damaged.is_none() && failed_damaged.is_none() {
        return Ok(repair);
    }

    let in_damaged = |row: &u64| damaged_rows.iter().any(|(start, end)| (*start..*end).contains(row));
    if let Some(damage) = docs_damaged {
        repair.documents_table_replaced = true;
        repair.damaged.push(damage);
        docs.clear();
        failed.clear();
    }
    let redo_missing = failed_damaged.is_some();
    if let Some(damage) = failed_damaged {
        repair.damaged.push(damage);
        failed.clear();
    }
    for record in docs.values_mut() {
        let lost = record.rows.iter().any(in_damaged);
        if lost || (redo_missing && record.missing > 0) {
            record.rows.retain(|row| !in_damaged(row));
            // A hash no text has: the next run takes the document for changed and chunks it again.
            record.content_hash.clear();
            record.stat_trusted = false;
            record.missing = 0;
            repair.documents_to_redo += 1;
        }
    }
    let kept: BTreeSet<&str> = docs.iter().filter(|(_, d)| d.missing > 0).map(|(name, _)| name.as_str()).collect();
    failed.retain(|entry| kept.contains(entry.doc.as_str()));

    keep_for_inspection(&dataset.dir, &repair.damaged)?;
    let settings = Manifest { generation: 0, ..manifest.clone() };
    let mut writer = DatasetWriter::begin(&dataset.dir, settings, Some(manifest), true)?;
    writer.drop_base_files(|path| repair.damaged.iter().any(|d| d.path == path));
    if repair.documents_table_replaced {
        // No document refers to any row now, but the rows' vectors are what the next run reuses.
        writer.keep_base_files();
    }
    let reason = format!(
        "repaired: {} damaged; the next run reads {} again",
        crate::error::count(repair.damaged.len() as u64, "file"),
        if repair.documents_table_replaced {
            "every document".to_owned()
        } else {
            crate::error::count(repair.documents_to_redo, "document")
        }
    );
    let published = writer.finish(&docs, &failed, RunStatus::Aborted { reason })?;
    repair.generation = Some(published.generation);
    Ok(repair)
}

/// The damage a check found, if any. Other errors (a permission, a passing I/O error) are not damage: the file may
/// be fine, so they stop the repair rather than drop the file.
fn damage(checked: Result<(), StoreError>) -> Result<Option<StoreError>, StoreError> {
    match checked {
        Ok(()) => Ok(None),
        Err(e) if e.is_damage() || e.is_not_found() => Ok(Some(e)),
        Err(e) => Err(e),
    }
}

/// Links (or copies) the damaged files into `damaged/` before the new version removes them.
fn keep_for_inspection(dir: &Path, damaged: &[DamagedFile]) -> Result<(), StoreError> {
    let target_dir = dir.join(DAMAGED_DIR);
    std::fs::create_dir_all(&target_dir).map_err(StoreError::io(&target_dir))?;
    for file in damaged {
        let source = dir.join(&file.path);
        let name = file.path.replace('/', "-");
        let target = target_dir.join(name);
        if target.exists() || !source.exists() {
            continue;
        }
        if std::fs::hard_link(&source, &target).is_err() {
            std::fs::copy(&source, &target).map_err(StoreError::io(&target))?;
        }
    }
    Ok(())
}
