//! Export of a dataset version's live rows to a vector database ([`pgvector`], [`qdrant`]): the part both share.
//!
//! Incremental by document, against what the target says it holds rather than what the dataset remembers: the
//! target keeps one digest per document (of its rows and metadata), written with the rows. A run compares them
//! with the version's documents, deletes the rows of documents that are gone or changed, and writes the rows of
//! the changed and new ones. This needs no earlier version of the dataset (those are removed as versions go by),
//! and a target left half-written by a killed export converges on the next run.
//!
//! Row ids are the targets' keys: stable within a lineage, so a document whose text did not change keeps its rows.
//! A new lineage (compaction, a run from scratch) renumbers every row: then the export is a full one.

pub mod pgvector;
pub mod qdrant;

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;

use serde::Serialize;
use tokio::sync::mpsc;

use crate::chunk::Chunk;
use crate::query::RowSet;
use crate::source::{FieldType, Value};
use crate::store::{Dataset, DocRecord, StoreError};

/// Rows per batch read from the data files and handed to a target.
pub const READ_BATCH: usize = 1024;

/// A digest as a target stores it: 16 bytes of blake3.
pub type Digest = [u8; 16];

/// What a target stores of each document to tell what changed: a digest of its rows (and so of their texts and
/// vectors, which never change under a row id), and one of its metadata.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct DocDigest {
    pub rows: Digest,
    pub meta: Digest,
}

/// One row to export: its chunk and its vector.
#[derive(Debug)]
pub struct Row {
    pub row_id: u64,
    pub chunk: Chunk,
    pub vector: Vec<f32>,
}

/// A dataset version opened for export: its manifest and its live documents.
#[derive(Debug)]
pub struct Source {
    pub dataset: Dataset,
    pub docs: HashMap<String, DocRecord>,
    pub dimensions: usize,
}

/// A column of the exported rows besides the vector, in target order.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Column {
    RowId,
    Id,
    Doc,
    ChunkIndex,
    Start,
    End,
    Tokens,
    Page,
    Text,
    File,
    Size,
    Format,
    Title,
    Modified,
    /// A metadata field, by its position in [`Source::fields`].
    Field(usize),
}

impl Column {
    /// Whether the column is the document's rather than the chunk's: the same on every row of a document, and
    /// updated in place when only a document's metadata changes.
    pub fn is_metadata(self) -> bool {
        matches!(
            self,
            Column::File | Column::Size | Column::Format | Column::Title | Column::Modified | Column::Field(_)
        )
    }
}

impl Source {
    /// Opens the newest version in `dir` and reads its documents table.
    pub fn open(dir: &std::path::Path) -> Result<Self, StoreError> {
        let dataset = Dataset::open(dir)?;
        let dimensions = dataset.dimensions()?;
        let mut docs = HashMap::new();
        dataset.for_each_doc(|d| {
            docs.insert(d.doc.clone(), d);
        })?;
        Ok(Self { dataset, docs, dimensions })
    }

    /// The metadata fields, in column order, with their types.
    pub fn fields(&self) -> Vec<(&str, FieldType)> {
        self.dataset.manifest.metadata.iter().map(|(k, v)| (k.as_str(), *v)).collect()
    }

    /// Every exported column but the vector, with its name, in order.
    pub fn columns(&self) -> Vec<(String, Column)> {
        use Column::*;
        let builtin = [
            ("row_id", RowId),
            ("id", Id),
            ("doc", Doc),
            ("chunk_index", ChunkIndex),
            ("start", Start),
            ("end", End),
            ("tokens", Tokens),
            ("page", Page),
            ("text", Text),
            ("file", File),
            ("size", Size),
            ("format", Format),
            ("title", Title),
            ("modified", Modified),
        ];
        let mut columns: Vec<(String, Column)> = builtin.iter().map(|(n, c)| ((*n).to_owned(), *c)).collect();
        columns.extend(self.fields().iter().enumerate().map(|(i, (name, _))| ((*name).to_owned(), Field(i))));
        columns
    }

    /// What a target's layout depends on: the vector space and the metadata columns. A target written with another
    /// signature is rebuilt rather than updated.
    pub fn signature(&self) -> serde_json::Value {
        let m = &self.dataset.manifest;
        let fields: BTreeMap<&str, &str> = self.fields().into_iter().map(|(n, t)| (n, t.name())).collect();
        serde_json::json!({
            "model": m.model,
            "dimensions": self.dimensions,
            "fields": fields,
        })
    }

    /// Compares the version's documents with those a target holds (`exported`: name → digests).
    pub fn diff(&self, exported: &HashMap<String, DocDigest>) -> Diff {
        let mut diff = Diff::default();
        for (name, record) in &self.docs {
            let now = digest(record);
            match exported.get(name) {
                Some(d) if *d == now => diff.unchanged += 1,
                Some(d) if d.rows == now.rows => diff.updated.push(name.clone()),
                Some(_) => {
                    diff.changed.push(name.clone());
                    diff.rows += record.rows.len() as u64;
                }
                None => {
                    diff.added.push(name.clone());
                    diff.rows += record.rows.len() as u64;
                }
            }
        }
        diff.gone = exported.keys().filter(|name| !self.docs.contains_key(*name)).cloned().collect();
        for list in [&mut diff.changed, &mut diff.added, &mut diff.updated, &mut diff.gone] {
            list.sort_unstable();
        }
        diff
    }

    /// Every live document: what a full export writes.
    pub fn everything(&self) -> Diff {
        let mut added: Vec<String> = self.docs.keys().cloned().collect();
        added.sort_unstable();
        let rows = self.docs.values().map(|d| d.rows.len() as u64).sum();
        Diff { added, rows, ..Diff::default() }
    }

    /// The digests of `names`, for the target to store with their rows.
    pub fn digests<'a>(&'a self, names: &'a [String]) -> impl Iterator<Item = (&'a str, DocDigest)> + 'a {
        names.iter().filter_map(|n| self.docs.get(n).map(|d| (n.as_str(), digest(d))))
    }

    /// Streams the rows of the documents `names`, in row-id order, in batches of up to [`READ_BATCH`], from a
    /// blocking thread through a channel of `depth` batches (the target's pace bounds the memory held).
    pub fn rows(self: &Arc<Self>, names: &[String], depth: usize) -> mpsc::Receiver<Result<Vec<Row>, StoreError>> {
        let mut wanted = RowSet::new(self.dataset.manifest.next_row());
        for record in names.iter().filter_map(|n| self.docs.get(n)) {
            record.rows.iter().for_each(|r| wanted.insert(*r));
        }
        let (tx, rx) = mpsc::channel(depth.max(1));
        let source = Arc::clone(self);
        tokio::task::spawn_blocking(move || {
            let result = source.read(&wanted, &tx);
            if let Err(e) = result
                && !matches!(e, StoreError::Io { ref source, .. } if source.kind() == std::io::ErrorKind::BrokenPipe)
            {
                let _ = tx.blocking_send(Err(e));
            }
        });
        rx
    }

    fn read(&self, wanted: &RowSet, tx: &mpsc::Sender<Result<Vec<Row>, StoreError>>) -> Result<(), StoreError> {
        if wanted.is_empty() {
            return Ok(());
        }
        let dims = self.dimensions;
        let mut batch = Vec::with_capacity(READ_BATCH);
        let closed = || StoreError::Io {
            path: self.dataset.dir.clone(),
            source: std::io::Error::new(std::io::ErrorKind::BrokenPipe, "the export stopped reading"),
        };
        self.dataset.for_each_chunk_batch_of(
            |first, rows| wanted.any_in(first, first + rows),
            |ids, chunks, vectors| {
                for (i, chunk) in chunks.into_iter().enumerate() {
                    if !wanted.contains(ids[i]) {
                        continue;
                    }
                    batch.push(Row { row_id: ids[i], chunk, vector: vectors[i * dims..(i + 1) * dims].to_vec() });
                    if batch.len() == READ_BATCH {
                        let full = std::mem::replace(&mut batch, Vec::with_capacity(READ_BATCH));
                        tx.blocking_send(Ok(full)).map_err(|_| closed())?;
                    }
                }
                Ok(())
            },
        )?;
        if !batch.is_empty() {
            tx.blocking_send(Ok(batch)).map_err(|_| closed())?;
        }
        Ok(())
    }
}

/// What an export writes and deletes, by document.
#[derive(Debug, Default, Clone)]
pub struct Diff {
    /// Documents the target lacks.
    pub added: Vec<String>,
    /// Documents whose rows differ from the target's: their rows are replaced.
    pub changed: Vec<String>,
    /// Documents whose metadata alone differs: their rows' metadata columns are updated in place.
    pub updated: Vec<String>,
    /// Documents the target holds that the version does not.
    pub gone: Vec<String>,
    pub unchanged: usize,
    /// Rows of the added and changed documents: those written.
    pub rows: u64,
}

impl Diff {
    pub fn is_empty(&self) -> bool {
        self.added.is_empty() && self.changed.is_empty() && self.updated.is_empty() && self.gone.is_empty()
    }

    /// The documents whose rows the target must drop first: the changed and the gone.
    pub fn dropped(&self) -> Vec<String> {
        let mut names = self.changed.clone();
        names.extend(self.gone.iter().cloned());
        names
    }

    /// The documents whose rows are written: the added and the changed.
    pub fn written(&self) -> Vec<String> {
        let mut names = self.added.clone();
        names.extend(self.changed.iter().cloned());
        names
    }

    /// The documents whose digests the target rewrites: the written and the updated.
    pub fn recorded(&self) -> Vec<String> {
        let mut names = self.written();
        names.extend(self.updated.iter().cloned());
        names
    }
}

/// A document's digests: of what its rows are (their ids, so their texts and vectors), and of the metadata every
/// row carries (file, size, mtime, format, title, metadata fields).
pub fn digest(record: &DocRecord) -> DocDigest {
    let mut rows = blake3::Hasher::new();
    hash_text(&mut rows, &record.doc);
    hash_text(&mut rows, &record.content_hash);
    rows.update(&(record.rows.len() as u64).to_le_bytes());
    for row in &record.rows {
        rows.update(&row.to_le_bytes());
    }
    let mut meta = blake3::Hasher::new();
    hash_text(&mut meta, &record.file);
    hash_text(&mut meta, record.format.map_or("", |f| f.name()));
    hash_text(&mut meta, record.title.as_deref().unwrap_or("\u{0}"));
    meta.update(&record.size.to_le_bytes());
    meta.update(&record.mtime_ns.to_le_bytes());
    for (name, value) in record.fields.iter().filter(|(_, v)| **v != Value::Null) {
        hash_text(&mut meta, name);
        match value {
            Value::Null => {}
            Value::String(s) => {
                meta.update(b"s");
                hash_text(&mut meta, s);
            }
            Value::Int64(v) => {
                meta.update(b"i");
                meta.update(&v.to_le_bytes());
            }
            Value::Float64(v) => {
                meta.update(b"f");
                meta.update(&v.to_bits().to_le_bytes());
            }
            Value::Bool(v) => {
                meta.update(if *v { b"t" } else { b"b" });
            }
            Value::Timestamp(v) => {
                meta.update(b"d");
                meta.update(&v.to_le_bytes());
            }
        }
    }
    DocDigest { rows: truncated(&rows), meta: truncated(&meta) }
}

/// A length-prefixed string, so that ("ab", "c") and ("a", "bc") differ.
fn hash_text(h: &mut blake3::Hasher, text: &str) {
    h.update(&(text.len() as u64).to_le_bytes());
    h.update(text.as_bytes());
}

fn truncated(h: &blake3::Hasher) -> Digest {
    let mut out = [0; 16];
    out.copy_from_slice(&h.finalize().as_bytes()[..16]);
    out
}

/// How an export went.
#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum ExportKind {
    /// The target already holds this version.
    UpToDate,
    /// The changed documents were written, the gone ones deleted.
    Incremental,
    /// Everything was written into a new table or collection, which then replaced the old one.
    Full { reason: FullReason },
}

#[derive(Debug, Clone, Copy, Serialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum FullReason {
    /// Nothing was exported to this target before.
    First,
    /// `--full`.
    Asked,
    /// The dataset was compacted or embedded from scratch since: its row ids changed.
    NewLineage,
    /// The model, vector size or metadata columns changed.
    NewLayout,
    /// The target lost the table or collection it had recorded.
    Missing,
}

impl FullReason {
    pub fn describe(self) -> &'static str {
        match self {
            FullReason::First => "first export to this target",
            FullReason::Asked => "--full",
            FullReason::NewLineage => "the dataset's row ids changed (compacted or embedded from scratch)",
            FullReason::NewLayout => "the model, vector size or metadata columns changed",
            FullReason::Missing => "the target's table or collection is missing",
        }
    }
}

/// What an export did, for `cli/` to print.
#[derive(Debug, Clone, Serialize)]
pub struct Report {
    /// The target, without credentials.
    pub target: String,
    /// The table or collection written.
    pub name: String,
    pub generation: u64,
    pub kind: ExportKind,
    pub rows_written: u64,
    pub rows_deleted: u64,
    pub docs_written: usize,
    /// Documents whose metadata alone changed: their rows updated in place.
    pub docs_updated: usize,
    pub docs_deleted: usize,
    /// Live rows the target holds afterwards.
    pub rows: u64,
    pub seconds: f64,
    /// Something the user should know (an index that could not be built, ...).
    pub notes: Vec<String>,
}

impl Report {
    /// A report of nothing done yet, on a target that held `rows`.
    pub fn new(target: String, name: String, generation: u64, kind: ExportKind, rows: u64) -> Self {
        Self {
            target,
            name,
            generation,
            kind,
            rows_written: 0,
            rows_deleted: 0,
            docs_written: 0,
            docs_updated: 0,
            docs_deleted: 0,
            rows,
            seconds: 0.0,
            notes: Vec::new(),
        }
    }
}

/// Why an export failed.
#[derive(Debug, thiserror::Error)]
pub enum ExportError {
    #[error(transparent)]
    Store(#[from] StoreError),
    /// The target or its settings: the user's to fix (exit 2).
    #[error("{0}")]
    Refused(String),
    /// The target failed while the export ran (exit 1): nothing it wrote is visible (Postgres) or the next run
    /// finishes it (Qdrant).
    #[error("{0}")]
    Target(String),
}

impl ExportError {
    pub fn is_usage(&self) -> bool {
        matches!(self, ExportError::Refused(_)) || matches!(self, ExportError::Store(e) if !e.is_damage())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::source::Format;

    fn record(doc: &str, rows: &[u64]) -> DocRecord {
        DocRecord {
            doc: doc.into(),
            file: format!("{doc}.txt"),
            size: 10,
            mtime_ns: 5,
            stat_trusted: true,
            content_hash: "abc".into(),
            rows: rows.to_vec(),
            missing: 0,
            format: Some(Format::Text),
            title: None,
            fields: Default::default(),
        }
    }

    #[test]
    fn the_digests_move_with_rows_and_metadata_apart_and_with_nothing_else() {
        let base = record("a", &[1, 2]);
        let same = digest(&base);
        assert_eq!(digest(&base.clone()), same);
        let mut other = base.clone();
        other.stat_trusted = false;
        other.missing = 1;
        assert_eq!(digest(&other), same, "bookkeeping a target never sees");
        let mut moved = base.clone();
        moved.rows = vec![1, 3];
        assert!(digest(&moved).rows != same.rows && digest(&moved).meta == same.meta);
        let mut titled = base.clone();
        titled.title = Some(String::new());
        assert!(digest(&titled).rows == same.rows && digest(&titled).meta != same.meta, "empty title, no title");
        let mut tagged = base.clone();
        tagged.fields.insert(Arc::from("lang"), Value::String("en".into()));
        assert_ne!(digest(&tagged).meta, same.meta);
        let mut nulled = base.clone();
        nulled.fields.insert(Arc::from("lang"), Value::Null);
        assert_eq!(digest(&nulled), same, "a null field is an absent one");
        let mut typed = tagged.clone();
        typed.fields.insert(Arc::from("lang"), Value::Int64(0));
        assert_ne!(digest(&typed).meta, digest(&tagged).meta);
    }

    #[test]
    fn the_diff_sorts_documents_by_what_the_target_must_do() {
        let docs: HashMap<String, DocRecord> =
            [record("same", &[1]), record("moved", &[2]), record("tagged", &[3]), record("new", &[4])]
                .into_iter()
                .map(|r| (r.doc.clone(), r))
                .collect();
        let mut exported: HashMap<String, DocDigest> = docs.iter().map(|(k, r)| (k.clone(), digest(r))).collect();
        exported.remove("new");
        exported.insert("moved".into(), digest(&record("moved", &[9])));
        let mut tagged = record("tagged", &[3]);
        tagged.title = Some("T".into());
        exported.insert("tagged".into(), digest(&tagged));
        exported.insert("gone".into(), digest(&record("gone", &[5])));
        let dataset = Dataset {
            dir: "x".into(),
            manifest: crate::store::Manifest::new(
                "m".into(),
                None,
                crate::store::ChunkingInfo { tokenizer: "t".into(), max_tokens: 8, overlap: 0 },
            ),
        };
        let source = Source { dataset, docs, dimensions: 4 };
        let diff = source.diff(&exported);
        assert_eq!(
            (diff.added, diff.changed, diff.updated, diff.gone),
            (vec!["new".to_owned()], vec!["moved".to_owned()], vec!["tagged".to_owned()], vec!["gone".to_owned()])
        );
        assert_eq!((diff.unchanged, diff.rows), (1, 2));
    }
}
