//! Streams embedded chunks to Parquet files, rolling to a new file every `rows_per_file` rows.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::fs::File;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use arrow::array::{ArrayRef, FixedSizeListArray, Float32Array, RecordBatch, StringArray, UInt32Array, UInt64Array};
use arrow::datatypes::{Field, SchemaRef};
use parquet::arrow::ArrowWriter;
use parquet::basic::{Compression, ZstdLevel};
use parquet::file::metadata::KeyValue;
use parquet::file::properties::{EnabledStatistics, WriterProperties};

use super::docs::{DOCS_DIR, DocRecord, field_types, write_docs};
use super::failed::{FAILED_DIR, FailedChunk, write_failed};
use super::manifest::{sync_dir, unix_now};
use super::schema::{self, dataset_schema};
use super::{DataFile, Manifest, RunStatus, StoreError};
use crate::chunk::Chunk;
use crate::source::FieldType;

pub const DATA_DIR: &str = "data";
/// Flush a row group once this much is buffered, so memory stays bounded whatever the vector size.
const ROW_GROUP_BYTES: usize = 64 * 1024 * 1024;
pub const DEFAULT_ROWS_PER_FILE: u64 = 250_000;

/// Writes the next version of a dataset. Nothing is visible to readers until [`DatasetWriter::finish`] publishes
/// the manifest; until then the previous version stays whole.
pub struct DatasetWriter {
    dir: PathBuf,
    manifest: Manifest,
    /// Files of the previous version, which stay (minus those left with no live rows).
    base_files: Vec<DataFile>,
    new_files: Vec<DataFile>,
    rows_per_file: u64,
    schema: Option<SchemaRef>,
    open: Option<OpenFile>,
    next_row: u64,
    /// Keep the base version's files even when no live row is left in them (see [`DatasetWriter::keep_base_files`]).
    keep_base: bool,
    /// The type each metadata field has in this run (declared, known, or first seen), over what the values say.
    field_types: BTreeMap<String, FieldType>,
    /// In every file name this run writes: two writers of one generation (racing on object storage, where only
    /// one can commit) never write the same name.
    tag: String,
}

struct OpenFile {
    writer: ArrowWriter<File>,
    tmp: PathBuf,
    final_path: PathBuf,
    relative: String,
    first_row: u64,
    rows: u64,
}

impl DatasetWriter {
    /// Starts a new version of the dataset in `dir` with the settings in `manifest`. `current` is the published
    /// version, if any: with `append` the new version builds on it (its files stay, its row ids carry on; the caller
    /// has checked it is in the same vector space), otherwise it starts from scratch and `current` stays readable
    /// until `finish` replaces it. Files a killed run left behind are removed first; the caller holds the lock.
    pub fn begin(
        dir: &Path,
        mut manifest: Manifest,
        current: Option<&Manifest>,
        append: bool,
    ) -> Result<Self, StoreError> {
        for sub in [DATA_DIR, DOCS_DIR] {
            let path = dir.join(sub);
            std::fs::create_dir_all(&path).map_err(StoreError::io(&path))?;
        }
        remove_unreferenced(dir, current)?;
        let (base_files, next_row) = match current.filter(|_| append) {
            Some(base) => {
                manifest.generation = base.generation + 1;
                manifest.lineage = base.lineage.clone();
                manifest.created_unix = base.created_unix;
                manifest.dimensions = base.dimensions;
                (base.files.clone(), base.next_row())
            }
            None => {
                manifest.generation = current.map_or(0, |m| m.generation) + 1;
                manifest.lineage = new_lineage();
                (Vec::new(), 0)
            }
        };
        Ok(Self {
            dir: dir.to_path_buf(),
            manifest,
            base_files,
            new_files: Vec::new(),
            rows_per_file: DEFAULT_ROWS_PER_FILE,
            schema: None,
            open: None,
            next_row,
            keep_base: false,
            field_types: BTreeMap::new(),
            tag: new_lineage()[..8].to_owned(),
        })
    }

    /// Gives new rows ids from `first` on (a shard of a sharded run writes in a range of its own).
    pub fn starting_at(mut self, first: u64) -> Self {
        self.next_row = self.next_row.max(first);
        self
    }

    /// Leaves the base version's files for which `drop` holds out of the new version (`repair`: damaged files).
    pub fn drop_base_files(&mut self, drop: impl Fn(&str) -> bool) {
        self.base_files.retain(|f| !drop(&f.path));
    }

    /// Keeps every file of the base version, live rows or not: a repair that replaces a damaged documents table
    /// keeps the rows for their vectors, which the next run reuses.
    pub fn keep_base_files(&mut self) {
        self.keep_base = true;
    }

    /// The types the run gave its metadata fields: they decide a column's type where its values cannot (all null).
    pub fn set_field_types(&mut self, types: BTreeMap<String, FieldType>) {
        self.field_types = types;
    }

    /// A run that stopped before it read every input publishes what it did under the settings the rest of the
    /// dataset was made with (chunking, metadata fields), so that the next run still sees what is left to redo.
    pub fn keep_settings_of(&mut self, published: &Manifest) {
        self.manifest.chunking = published.chunking.clone();
        self.manifest.metadata_spec = published.metadata_spec.clone();
    }

    pub fn with_rows_per_file(mut self, rows: u64) -> Self {
        self.rows_per_file = rows.max(1);
        self
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Rows written by this run so far.
    pub fn rows_written(&self) -> u64 {
        self.new_files.iter().map(|f| f.rows).sum::<u64>() + self.open.as_ref().map_or(0, |f| f.rows)
    }

    /// Appends chunks with their vectors (`dimensions` floats each, in order); returns the first row id given.
    pub fn write(&mut self, chunks: &[Chunk], vectors: &[f32], dimensions: usize) -> Result<u64, StoreError> {
        let first_row = self.next_row;
        if chunks.is_empty() {
            return Ok(first_row);
        }
        if vectors.len() < chunks.len() * dimensions {
            return Err(StoreError::Corrupt {
                path: self.dir.clone(),
                message: format!(
                    "{} chunks but only {} floats of {dimensions}-dimension vectors",
                    chunks.len(),
                    vectors.len()
                ),
            });
        }
        let schema = match &self.schema {
            Some(schema) => Arc::clone(schema),
            None => {
                if let Some(dims) = self.manifest.dimensions.filter(|&d| d != dimensions) {
                    return Err(StoreError::Corrupt {
                        path: self.dir.clone(),
                        message: format!("vectors have {dimensions} dimensions, the dataset {dims}"),
                    });
                }
                self.manifest.dimensions = Some(dimensions);
                let schema = Arc::new(dataset_schema(dimensions).as_ref().clone().with_metadata(self.metadata()));
                self.schema = Some(Arc::clone(&schema));
                schema
            }
        };
        if self.manifest.dimensions != Some(dimensions) {
            return Err(StoreError::Corrupt {
                path: self.dir.clone(),
                message: format!("a batch has {dimensions} dimensions, the dataset {:?}", self.manifest.dimensions),
            });
        }
        let batch =
            record_batch(&schema, first_row, chunks, vectors, dimensions).map_err(StoreError::arrow(&self.dir))?;
        let file = match self.open.take() {
            Some(file) => file,
            None => self.open_file(&schema)?,
        };
        let file = self.open.insert(file);
        file.writer.write(&batch).map_err(StoreError::parquet(&file.tmp))?;
        if file.writer.in_progress_size() >= ROW_GROUP_BYTES {
            file.writer.flush().map_err(StoreError::parquet(&file.tmp))?;
        }
        file.rows += chunks.len() as u64;
        self.next_row += chunks.len() as u64;
        if file.rows >= self.rows_per_file {
            self.close_file()?;
        }
        Ok(first_row)
    }

    /// Publishes the new version: closes the last file, writes the documents table and the dead-letter file
    /// (`failed`, the chunks the documents' `missing` counts stand for) and then the manifest (the atomic switch),
    /// and removes the files the new version no longer uses.
    pub fn finish(
        mut self,
        docs: &HashMap<String, DocRecord>,
        failed: &[FailedChunk],
        status: RunStatus,
    ) -> Result<Manifest, StoreError> {
        self.close_file()?;
        let mut live: Vec<u64> = docs.values().flat_map(|d| d.rows.iter().copied()).collect();
        live.sort_unstable();
        let has_live = |f: &DataFile| holds_live_row(f, &live);
        let keep_base = self.keep_base;
        let mut files: Vec<DataFile> = self.base_files.drain(..).filter(|f| keep_base || has_live(f)).collect();
        files.append(&mut self.new_files);
        let m = &mut self.manifest;
        let docs_file = format!("{DOCS_DIR}/docs-{:06}-{}.parquet", m.generation, self.tag);
        m.metadata = field_types(docs, &self.field_types);
        write_docs(&self.dir, &docs_file, docs, &m.metadata)?;
        m.failed_file = None;
        if !failed.is_empty() {
            let failed_file = format!("{FAILED_DIR}/failed-{:06}-{}.jsonl", m.generation, self.tag);
            write_failed(&self.dir, &failed_file, failed)?;
            m.failed_file = Some(failed_file);
        }
        m.failed_chunks = failed.len() as u64;
        m.rows = files.iter().map(|f| f.rows).sum();
        m.files = files;
        m.live_rows = live.len() as u64;
        m.next_row_id = self.next_row;
        m.docs_file = Some(docs_file);
        m.status = status;
        m.updated_unix = unix_now();
        m.save(&self.dir)?;
        remove_unreferenced(&self.dir, Some(&self.manifest))?;
        Ok(self.manifest)
    }

    fn open_file(&self, schema: &SchemaRef) -> Result<OpenFile, StoreError> {
        let relative =
            format!("{DATA_DIR}/part-{:06}-{}-{:05}.parquet", self.manifest.generation, self.tag, self.new_files.len());
        let final_path = self.dir.join(&relative);
        let tmp = final_path.with_extension("parquet.tmp");
        let file = File::create(&tmp).map_err(StoreError::io(&tmp))?;
        let writer = ArrowWriter::try_new(file, Arc::clone(schema), Some(self.properties()))
            .map_err(StoreError::parquet(&tmp))?;
        Ok(OpenFile { writer, tmp, final_path, relative, first_row: self.next_row, rows: 0 })
    }

    fn close_file(&mut self) -> Result<(), StoreError> {
        let Some(file) = self.open.take() else { return Ok(()) };
        let inner = file.writer.into_inner().map_err(StoreError::parquet(&file.tmp))?;
        inner.sync_all().map_err(StoreError::io(&file.tmp))?;
        drop(inner);
        std::fs::rename(&file.tmp, &file.final_path).map_err(StoreError::io(&file.final_path))?;
        sync_dir(&self.dir.join(DATA_DIR));
        self.new_files.push(DataFile { path: file.relative, rows: file.rows, first_row: file.first_row });
        Ok(())
    }

    /// The facts a lone Parquet file should carry, both as file key-value metadata and in the Arrow schema.
    fn metadata(&self) -> HashMap<String, String> {
        let m = &self.manifest;
        let mut meta = HashMap::from([
            (schema::META_MODEL.to_owned(), m.model.clone()),
            (schema::META_METRIC.to_owned(), m.metric.clone()),
            (schema::META_SCHEMA_VERSION.to_owned(), m.schema_version.to_string()),
        ]);
        if let Some(d) = m.dimensions {
            meta.insert(schema::META_DIMENSIONS.to_owned(), d.to_string());
        }
        meta
    }

    fn properties(&self) -> WriterProperties {
        // 16 KiB: a server fetching ten scattered hits decompresses ten pages per column for every query; at 64 KiB
        // that was most of a vector search's time (p50 8.5 → 3.5 ms at 100k chunks, BENCHMARKS.md), for 8% more
        // compressed text.
        const PAGE_BYTES: usize = 16 * 1024;
        let mut kv: Vec<KeyValue> = self.metadata().into_iter().map(|(k, v)| KeyValue::new(k, v)).collect();
        kv.sort_by(|a, b| a.key.cmp(&b.key));
        WriterProperties::builder()
            .set_compression(Compression::ZSTD(ZstdLevel::try_new(3).unwrap_or_default()))
            // Text and vectors are nearly unique, so dictionaries only cost; document names repeat, so keep it there.
            .set_dictionary_enabled(false)
            .set_column_dictionary_enabled(schema::DOC.into(), true)
            .set_statistics_enabled(EnabledStatistics::Chunk)
            // Small pages (checked every 32 values), found through the offset index: a search reading its ten hits
            // decompresses ten small pages per column, not the megabyte pages around them (measured: 42% of a
            // batch query's time in zstd with the default 1 MiB pages).
            .set_data_page_size_limit(PAGE_BYTES)
            .set_write_batch_size(32)
            .set_key_value_metadata(Some(kv))
            .build()
    }
}

/// Deletes what is in `data/`, `docs/` and `failed/` but not in `manifest` (all of it for `None`): temp files and files of
/// runs that were killed or superseded. Only ever called by the lock holder.
fn remove_unreferenced(dir: &Path, manifest: Option<&Manifest>) -> Result<(), StoreError> {
    let mut keep: HashSet<String> = HashSet::new();
    if let Some(m) = manifest {
        keep.extend(m.files.iter().map(|f| f.path.clone()));
        keep.extend(m.docs_file.clone());
        keep.extend(m.failed_file.clone());
    }
    for sub in [DATA_DIR, DOCS_DIR, FAILED_DIR] {
        let path = dir.join(sub);
        let entries = match std::fs::read_dir(&path) {
            Ok(entries) => entries,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => continue,
            Err(e) => return Err(StoreError::Io { path, source: e }),
        };
        for entry in entries {
            let entry = entry.map_err(StoreError::io(&path))?;
            let relative = format!("{sub}/{}", entry.file_name().to_string_lossy());
            if !keep.contains(&relative) && entry.file_type().is_ok_and(|t| t.is_file()) {
                std::fs::remove_file(entry.path()).map_err(StoreError::io(entry.path()))?;
            }
        }
    }
    Ok(())
}

/// Whether `file` holds one of the `live` row ids (sorted).
pub(super) fn holds_live_row(file: &DataFile, live: &[u64]) -> bool {
    let at = live.partition_point(|&r| r < file.first_row);
    live.get(at).is_some_and(|&r| r < file.first_row + file.rows)
}

fn new_lineage() -> String {
    let mut h = blake3::Hasher::new();
    h.update(&unix_now().to_le_bytes());
    h.update(&std::process::id().to_le_bytes());
    let nanos = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_nanos());
    h.update(&nanos.to_le_bytes());
    h.finalize().to_hex()[..16].to_owned()
}

fn record_batch(
    schema: &SchemaRef,
    first_row: u64,
    chunks: &[Chunk],
    vectors: &[f32],
    dims: usize,
) -> Result<RecordBatch, arrow::error::ArrowError> {
    let strings = |f: fn(&Chunk) -> &str| Arc::new(StringArray::from_iter_values(chunks.iter().map(f))) as ArrayRef;
    let values = Float32Array::from(vectors[..chunks.len() * dims].to_vec());
    let item = Arc::new(Field::new("item", arrow::datatypes::DataType::Float32, false));
    let embedding = FixedSizeListArray::try_new(item, dims as i32, Arc::new(values), None)?;
    RecordBatch::try_new(
        Arc::clone(schema),
        vec![
            Arc::new(UInt64Array::from_iter_values(first_row..first_row + chunks.len() as u64)),
            strings(|c| &c.id),
            strings(|c| &c.doc),
            Arc::new(UInt32Array::from_iter_values(chunks.iter().map(|c| c.chunk_index))),
            Arc::new(UInt64Array::from_iter_values(chunks.iter().map(|c| c.start))),
            Arc::new(UInt64Array::from_iter_values(chunks.iter().map(|c| c.end))),
            Arc::new(UInt32Array::from_iter_values(chunks.iter().map(|c| c.tokens))),
            strings(|c| &c.text),
            strings(|c| &c.hash),
            Arc::new(embedding),
            Arc::new(UInt32Array::from_iter(chunks.iter().map(|c| c.page))),
        ],
    )
}
