//! The writing end of a run: turns what the planner decided and what the embedder returned into rows of the new
//! version, and keeps the documents table in step.
//!
//! A document enters the new version only once each of its chunks is written or has failed for good; until then the
//! published version of it (if any) stays. So whenever a run stops, the version it publishes holds every document
//! either as it was or as it is now, never half of each. Chunks that failed for good are left out of their
//! document, counted in its `missing`, and listed in the dead-letter file for the next run to send again.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;

use tokio::sync::mpsc;

use super::isolate::ChunkFailure;
use super::previous::VectorLoc;
use crate::batch::Batch;
use crate::chunk::Chunk;
use crate::embed::Embeddings;
use crate::error::count;
use crate::stats::Stats;
use crate::store::{
    Dataset, DatasetWriter, DocRecord, EmbeddingCache, FailedChunk, Manifest, RunStatus, StoreError, compact,
    needs_compaction,
};

/// Reused vectors are read in groups of this many, so scattered rows cost one pass per file, not one per row.
const REUSE_GROUP: usize = 2048;

/// What the other stages send the writer.
#[derive(Debug)]
pub enum WriterMsg {
    /// A document that has not changed: it keeps its rows (its file stat may be new).
    Keep(DocRecord),
    /// A new or changed document about to be written as `chunks` chunks (sent before any of them).
    Plan { record: DocRecord, chunks: usize },
    /// Chunks whose text was embedded before.
    Reuse(Vec<(Chunk, VectorLoc)>),
    /// A successful embedding response.
    Embedded(Batch, Embeddings),
    /// Chunks that failed for good.
    Failed(Vec<(Chunk, ChunkFailure)>),
    /// A document whose missing chunks (`failed_indexes`, from the dead-letter file) are sent again; its other
    /// rows stay as they are.
    Patch { record: DocRecord, failed_indexes: Vec<u32> },
    /// The planner has seen every input. With `all_documents`, documents not seen were deleted.
    SourceDone { all_documents: bool },
}

struct Pending {
    record: DocRecord,
    remaining: usize,
    rows: Vec<(u32, u64)>,
    failed: Vec<FailedChunk>,
}

pub struct Assembler {
    writer: DatasetWriter,
    cache: EmbeddingCache,
    /// The published version, where reused rows are read.
    base: Option<Dataset>,
    docs: HashMap<String, DocRecord>,
    seen: HashSet<String>,
    pending: HashMap<Arc<str>, Pending>,
    reuse: Vec<(Chunk, VectorLoc)>,
    /// Dead-letter entries by document: the published ones, replaced as documents complete.
    failed: HashMap<String, Vec<FailedChunk>>,
    source_done: bool,
    /// Documents not seen by the end were deleted (a run over the whole source, not `retry-failed`).
    deletes: bool,
    /// Whether the documents table differs from the published one.
    changed: bool,
    stats: Arc<Stats>,
}

impl Assembler {
    /// The run asks for other metadata fields than the published version records: publish even if no value
    /// changed, so the manifest records the new fields (else every later run would read everything again).
    pub fn with_spec_change(mut self, changed: bool) -> Self {
        self.changed |= changed;
        self
    }
}

/// How the writer finished.
pub struct Assembled {
    pub writer: DatasetWriter,
    pub cache: EmbeddingCache,
    pub docs: HashMap<String, DocRecord>,
    /// The dead-letter entries of the new version, by document and chunk.
    pub failed: Vec<FailedChunk>,
    pub source_done: bool,
    /// Documents not complete (their chunks failed or the run stopped first).
    pub incomplete: usize,
    /// Whether there is anything to publish: new rows, or a documents table that differs from the published one.
    pub changed: bool,
    /// Leave the files as they are even when many rows are dead: a shard of a sharded run shares the base version's
    /// files with the other shards, and a compaction would renumber rows under them.
    pub no_compaction: bool,
}

impl Assembler {
    pub fn new(
        writer: DatasetWriter,
        cache: EmbeddingCache,
        base: Option<Dataset>,
        docs: HashMap<String, DocRecord>,
        failed: HashMap<String, Vec<FailedChunk>>,
        stats: Arc<Stats>,
    ) -> Self {
        Self {
            writer,
            cache,
            base,
            docs,
            seen: HashSet::new(),
            pending: HashMap::new(),
            reuse: Vec::new(),
            failed,
            source_done: false,
            deletes: false,
            changed: false,
            stats,
        }
    }

    /// Consumes messages until every sender is gone.
    pub fn run(mut self, mut inbox: mpsc::Receiver<WriterMsg>) -> Result<Assembled, StoreError> {
        while let Some(msg) = inbox.blocking_recv() {
            self.handle(msg)?;
        }
        self.flush_reuse()?;
        if self.deletes {
            let seen = &self.seen;
            let before = self.docs.len();
            let mut removed_rows = 0;
            self.docs.retain(|name, record| {
                let keep = seen.contains(name);
                if !keep {
                    removed_rows += record.rows.len() as u64;
                }
                keep
            });
            Stats::add(&self.stats.docs_deleted, (before - self.docs.len()) as u64);
            Stats::add(&self.stats.chunks_removed, removed_rows);
            self.changed |= before != self.docs.len();
        }
        self.changed |= self.writer.rows_written() > 0;
        let docs = &self.docs;
        self.failed.retain(|name, _| docs.get(name).is_some_and(|d| d.missing > 0));
        let mut failed: Vec<FailedChunk> = self.failed.into_values().flatten().collect();
        failed.sort_by(|a, b| (&a.doc, a.chunk_index).cmp(&(&b.doc, b.chunk_index)));
        Ok(Assembled {
            writer: self.writer,
            cache: self.cache,
            failed,
            docs: self.docs,
            source_done: self.source_done,
            incomplete: self.pending.len(),
            changed: self.changed,
            no_compaction: false,
        })
    }

    fn handle(&mut self, msg: WriterMsg) -> Result<(), StoreError> {
        match msg {
            WriterMsg::Keep(record) => {
                self.seen.insert(record.doc.clone());
                if let Some(old) = self.docs.insert(record.doc.clone(), record) {
                    // Same content; a new stat (a touched file) is still worth recording.
                    self.changed |= self.docs.get(&old.doc) != Some(&old);
                } else {
                    self.changed = true;
                }
            }
            WriterMsg::Plan { record, chunks } => {
                self.seen.insert(record.doc.clone());
                self.changed = true;
                if chunks == 0 {
                    self.complete(record, Vec::new());
                } else {
                    let name: Arc<str> = Arc::from(record.doc.as_str());
                    let rows = Vec::with_capacity(chunks);
                    self.pending.insert(name, Pending { record, remaining: chunks, rows, failed: Vec::new() });
                }
            }
            WriterMsg::Patch { record, failed_indexes } => {
                self.seen.insert(record.doc.clone());
                self.changed = true;
                // The kept rows are the document's chunks other than the failed ones, in chunk order.
                let total = record.rows.len() + failed_indexes.len();
                let kept = (0..total as u32).filter(|i| failed_indexes.binary_search(i).is_err());
                let rows: Vec<(u32, u64)> = kept.zip(record.rows.iter().copied()).collect();
                let name: Arc<str> = Arc::from(record.doc.as_str());
                let pending = Pending { record, remaining: failed_indexes.len(), rows, failed: Vec::new() };
                self.pending.insert(name, pending);
            }
            WriterMsg::Failed(chunks) => {
                for (chunk, failure) in chunks {
                    let doc = Arc::clone(&chunk.doc);
                    let Some(pending) = self.pending.get_mut(&doc) else { continue };
                    let entry = FailedChunk::new(chunk, &pending.record.file, failure.error, failure.attempts);
                    pending.failed.push(entry);
                    self.chunk_done(&doc);
                }
            }
            WriterMsg::Reuse(items) => {
                self.reuse.extend(items);
                if self.reuse.len() >= REUSE_GROUP {
                    self.flush_reuse()?;
                }
            }
            WriterMsg::Embedded(batch, embeddings) => {
                let hashes: Vec<&str> = batch.chunks.iter().map(|c| c.hash.as_str()).collect();
                // Durable first: once in the cache, a crash before the next publish does not lose it.
                self.cache.append(&hashes, &embeddings.vectors, embeddings.dimensions)?;
                self.write_rows(&batch.chunks, &embeddings.vectors, embeddings.dimensions)?;
            }
            WriterMsg::SourceDone { all_documents } => {
                self.source_done = true;
                self.deletes = all_documents;
            }
        }
        Ok(())
    }

    /// Reads the vectors of the queued reused chunks and writes their rows.
    fn flush_reuse(&mut self) -> Result<(), StoreError> {
        if self.reuse.is_empty() {
            return Ok(());
        }
        let items = std::mem::take(&mut self.reuse);
        let mut by_row: HashMap<u64, Vec<f32>> = HashMap::new();
        let mut by_cache: HashMap<(u32, u32), Vec<f32>> = HashMap::new();
        let mut hashes: HashMap<VectorLoc, String> = HashMap::new();
        let rows: Vec<u64> = items
            .iter()
            .filter_map(|(_, loc)| match loc {
                VectorLoc::Row(r) => Some(*r),
                VectorLoc::Cache(_) => None,
            })
            .collect();
        if !rows.is_empty() {
            let base = self.base.as_ref().ok_or_else(|| StoreError::Corrupt {
                path: self.cache_dir(),
                message: "a reused row without a published dataset".into(),
            })?;
            for (row, hash, vector) in base.read_vectors(&rows)? {
                hashes.insert(VectorLoc::Row(row), hash);
                by_row.insert(row, vector);
            }
        }
        let mut segments: HashMap<u32, Vec<u32>> = HashMap::new();
        for (_, loc) in &items {
            if let VectorLoc::Cache(c) = loc {
                segments.entry(c.segment).or_default().push(c.row);
            }
        }
        for (segment, mut rows) in segments {
            rows.sort_unstable();
            rows.dedup();
            for (row, (hash, vector)) in rows.iter().zip(self.cache.read(segment, &rows)?) {
                hashes.insert(VectorLoc::Cache(crate::store::CacheLoc { segment, row: *row }), hash);
                by_cache.insert((segment, *row), vector);
            }
        }
        let dims = self.writer_dimensions(&by_row, &by_cache);
        let mut chunks = Vec::with_capacity(items.len());
        let mut vectors = Vec::with_capacity(items.len() * dims);
        for (chunk, loc) in items {
            let vector = match loc {
                VectorLoc::Row(r) => by_row.get(&r),
                VectorLoc::Cache(c) => by_cache.get(&(c.segment, c.row)),
            };
            // The lookup key is a prefix of the hash: check the whole of it before trusting the vector.
            match (vector, hashes.get(&loc)) {
                (Some(v), Some(h)) if *h == chunk.hash && v.len() == dims => {
                    vectors.extend_from_slice(v);
                    chunks.push(chunk);
                }
                _ => {
                    return Err(StoreError::Corrupt {
                        path: self.cache_dir(),
                        message: format!(
                            "the stored vector for chunk {} of {} does not match its text",
                            chunk.chunk_index, chunk.doc
                        ),
                    });
                }
            }
        }
        Stats::add(&self.stats.chunks_reused, chunks.len() as u64);
        self.write_rows(&chunks, &vectors, dims)
    }

    fn writer_dimensions(&self, by_row: &HashMap<u64, Vec<f32>>, by_cache: &HashMap<(u32, u32), Vec<f32>>) -> usize {
        by_row.values().chain(by_cache.values()).next().map_or(0, Vec::len)
    }

    fn cache_dir(&self) -> std::path::PathBuf {
        self.base.as_ref().map(|d| d.dir.clone()).unwrap_or_default()
    }

    fn write_rows(&mut self, chunks: &[Chunk], vectors: &[f32], dims: usize) -> Result<(), StoreError> {
        if chunks.is_empty() {
            return Ok(());
        }
        let first = self.writer.write(chunks, vectors, dims)?;
        Stats::add(&self.stats.rows_written, chunks.len() as u64);
        for (i, chunk) in chunks.iter().enumerate() {
            let Some(pending) = self.pending.get_mut(&chunk.doc) else {
                continue; // not planned: cannot happen, the planner plans every document before its chunks
            };
            pending.rows.push((chunk.chunk_index, first + i as u64));
            self.chunk_done(&chunk.doc);
        }
        Ok(())
    }

    /// Counts one chunk of `doc` as settled (written or failed); the last one completes the document.
    fn chunk_done(&mut self, doc: &Arc<str>) {
        let Some(pending) = self.pending.get_mut(doc) else { return };
        pending.remaining = pending.remaining.saturating_sub(1);
        if pending.remaining == 0
            && let Some(mut done) = self.pending.remove(doc)
        {
            done.rows.sort_unstable();
            done.record.rows = done.rows.into_iter().map(|(_, row)| row).collect();
            self.complete(done.record, done.failed);
        }
    }

    fn complete(&mut self, mut record: DocRecord, mut failed: Vec<FailedChunk>) {
        record.missing = failed.len() as u32;
        if let Some(old) = self.docs.get(&record.doc) {
            // Rows a patched document keeps are not removed.
            let kept: HashSet<u64> = record.rows.iter().copied().collect();
            let removed = old.rows.iter().filter(|r| !kept.contains(r)).count();
            Stats::add(&self.stats.chunks_removed, removed as u64);
        }
        if failed.is_empty() {
            self.failed.remove(&record.doc);
        } else {
            failed.sort_by_key(|f| f.chunk_index);
            self.failed.insert(record.doc.clone(), failed);
        }
        self.docs.insert(record.doc.clone(), record);
    }
}

/// The writer's stand-in for `--dry-run`: counts what a run would reuse and delete, writes nothing.
pub fn count_dry_run(mut inbox: mpsc::Receiver<WriterMsg>, previous: &[String], stats: &Stats) {
    let mut seen: HashSet<String> = HashSet::new();
    let mut source_done = false;
    while let Some(msg) = inbox.blocking_recv() {
        match msg {
            WriterMsg::Keep(record) | WriterMsg::Plan { record, .. } | WriterMsg::Patch { record, .. } => {
                seen.insert(record.doc);
            }
            WriterMsg::Reuse(items) => Stats::add(&stats.chunks_reused, items.len() as u64),
            WriterMsg::Embedded(..) | WriterMsg::Failed(_) => {}
            WriterMsg::SourceDone { all_documents } => source_done = all_documents,
        }
    }
    if source_done {
        Stats::add(&stats.docs_deleted, previous.iter().filter(|d| !seen.contains(*d)).count() as u64);
    }
}

/// Publishes what was assembled, or keeps the published version when a new one would be worse than it.
pub fn publish(
    assembled: Assembled,
    previous: Option<&Manifest>,
    appends: bool,
    status: RunStatus,
) -> Result<Option<Manifest>, StoreError> {
    // A run from scratch (new model, --overwrite) that did not finish would replace a whole dataset with part of
    // one: keep the old version; the cache keeps what this run paid for.
    if previous.is_some() && !appends && status != RunStatus::Complete {
        return Ok(None);
    }
    let complete = status == RunStatus::Complete;
    // A new dataset whose run stopped before it wrote anything (a rejected key, a misconfigured endpoint): an empty
    // first version would say nothing and record settings that were never used.
    if previous.is_none() && !complete && assembled.writer.rows_written() == 0 {
        return Ok(None);
    }
    // Nothing changed: the published version stays as it is (a no-op run writes nothing but its report).
    if let Some(current) =
        previous.filter(|p| appends && !assembled.changed && complete && p.status == RunStatus::Complete)
    {
        assembled.cache.clear()?;
        return Ok(Some(current.clone()));
    }
    let dir = assembled.writer.dir().to_path_buf();
    let no_compaction = assembled.no_compaction;
    let mut writer = assembled.writer;
    if let Some(published) = previous.filter(|_| appends && !assembled.source_done) {
        writer.keep_settings_of(published);
    }
    let mut manifest = writer.finish(&assembled.docs, &assembled.failed, status)?;
    if complete {
        assembled.cache.clear()?;
        if needs_compaction(&manifest) && !no_compaction {
            let dead = manifest.rows - manifest.live_rows;
            manifest = compact(&Dataset { dir, manifest })?;
            tracing::info!("compacted the dataset: {} of deleted or older documents dropped", count(dead, "row"));
        }
    }
    Ok(Some(manifest))
}
