//! The dead-letter file (`failed/failed-<generation>.jsonl`): one JSON line per chunk that failed for good, with
//! what it takes to send it again without the source files (its text and place in its document) and why it failed.
//!
//! A document with failed chunks is published with the rest of its chunks and a count of the missing ones (see
//! [`DocRecord::missing`](super::DocRecord)); the next run, or `tars-index retry-failed`, sends the missing ones
//! again. The file is written before the manifest that names it, so it always matches the published version.

use std::fs::File;
use std::io::{BufRead, BufReader, BufWriter, Write};
use std::path::Path;
use std::sync::Arc;

use serde::{Deserialize, Serialize};

use super::StoreError;
use super::manifest::sync_dir;
use crate::chunk::Chunk;

pub const FAILED_DIR: &str = "failed";

/// One chunk that could not be embedded.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct FailedChunk {
    pub chunk_id: String,
    pub doc: String,
    /// The source file of the document, as the run saw it.
    pub file: String,
    pub chunk_index: u32,
    pub start: u64,
    pub end: u64,
    pub tokens: u32,
    /// The last error, as the server (or the response check) put it.
    pub error: String,
    /// Requests that carried this chunk in the run that gave up on it.
    pub attempts: u32,
    pub failed_unix: u64,
    pub hash: String,
    pub text: String,
    /// The page the chunk starts on (PDF); absent in files written before pages were kept.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub page: Option<u32>,
}

impl FailedChunk {
    pub fn new(chunk: Chunk, file: &str, error: String, attempts: u32) -> Self {
        Self {
            chunk_id: chunk.id,
            doc: chunk.doc.to_string(),
            file: file.to_owned(),
            chunk_index: chunk.chunk_index,
            start: chunk.start,
            end: chunk.end,
            tokens: chunk.tokens,
            error,
            attempts,
            failed_unix: super::unix_now(),
            hash: chunk.hash,
            text: chunk.text,
            page: chunk.page,
        }
    }

    /// The chunk, to be sent again.
    pub fn to_chunk(&self, doc: &Arc<str>) -> Chunk {
        Chunk {
            id: self.chunk_id.clone(),
            doc: Arc::clone(doc),
            chunk_index: self.chunk_index,
            start: self.start,
            end: self.end,
            tokens: self.tokens,
            text: self.text.clone(),
            hash: self.hash.clone(),
            page: self.page,
        }
    }
}

/// Writes `entries` to `dir/relative` atomically (temp file, fsync, rename).
pub fn write_failed<'a>(
    dir: &Path,
    relative: &str,
    entries: impl IntoIterator<Item = &'a FailedChunk>,
) -> Result<(), StoreError> {
    let path = dir.join(relative);
    if let Some(parent) = path.parent() {
        std::fs::create_dir_all(parent).map_err(StoreError::io(parent))?;
    }
    let tmp = path.with_extension("jsonl.tmp");
    let file = File::create(&tmp).map_err(StoreError::io(&tmp))?;
    let mut out = BufWriter::new(file);
    for entry in entries {
        serde_json::to_writer(&mut out, entry)
            .map_err(|e| StoreError::Corrupt { path: tmp.clone(), message: e.to_string() })?;
        out.write_all(b"\n").map_err(StoreError::io(&tmp))?;
    }
    let file = out.into_inner().map_err(|e| StoreError::Io { path: tmp.clone(), source: e.into_error() })?;
    file.sync_all().map_err(StoreError::io(&tmp))?;
    drop(file);
    std::fs::rename(&tmp, &path).map_err(StoreError::io(&path))?;
    sync_dir(path.parent().unwrap_or(dir));
    Ok(())
}

/// Reads a dead-letter file, calling `f` for every entry; a damaged line is an error naming its line number.
pub fn read_failed(dir: &Path, relative: &str, mut f: impl FnMut(FailedChunk)) -> Result<(), StoreError> {
    let path = dir.join(relative);
    let file = File::open(&path).map_err(StoreError::io(&path))?;
    for (n, line) in BufReader::new(file).lines().enumerate() {
        let line = line.map_err(StoreError::io(&path))?;
        if line.trim().is_empty() {
            continue;
        }
        let entry = serde_json::from_str(&line)
            .map_err(|e| StoreError::Corrupt { path: path.clone(), message: format!("line {}: {e}", n + 1) })?;
        f(entry);
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn entries_round_trip_and_damage_is_located() {
        let dir = tempfile::tempdir().expect("tempdir");
        let doc: Arc<str> = Arc::from("a/b.txt");
        let chunk = Chunk {
            id: "id".into(),
            doc: Arc::clone(&doc),
            chunk_index: 3,
            start: 10,
            end: 20,
            tokens: 4,
            text: "line one\nline \"two\"".into(),
            hash: "ab".repeat(32),
            page: Some(2),
        };
        let entries = vec![
            FailedChunk::new(chunk.clone(), "in/a/b.txt", "HTTP 400: too long".into(), 5),
            FailedChunk::new(chunk.clone(), "in/a/b.txt", "invalid response".into(), 1),
        ];
        write_failed(dir.path(), "failed/failed-000001.jsonl", &entries).expect("write");
        let mut back = Vec::new();
        read_failed(dir.path(), "failed/failed-000001.jsonl", |e| back.push(e)).expect("read");
        assert_eq!(back, entries);
        assert_eq!(back[0].to_chunk(&doc), chunk);

        let path = dir.path().join("failed/failed-000001.jsonl");
        let mut text = std::fs::read_to_string(&path).expect("read");
        text.push_str("{not json\n");
        std::fs::write(&path, text).expect("write");
        let err = read_failed(dir.path(), "failed/failed-000001.jsonl", |_| {}).expect_err("damaged");
        assert!(err.to_string().contains("line 3"), "{err}");
    }
}
