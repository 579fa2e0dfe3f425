//! Streams embedded chunks to Parquet files, rolling to a new file every `rows_per_file` rows.

use std::collections::HashMap;
use std::fs::File;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use arrow::array::{ArrayRef, FixedSizeListArray, Float32Array, RecordBatch, StringArray, UInt32Array, UInt64Array};
use arrow::datatypes::{Field, SchemaRef};
use parquet::arrow::ArrowWriter;
use parquet::basic::{Compression, ZstdLevel};
use parquet::file::metadata::KeyValue;
use parquet::file::properties::{EnabledStatistics, WriterProperties};

use super::manifest::sync_dir;
use super::schema::{self, dataset_schema};
use super::{DataFile, MANIFEST_FILE, Manifest, RunStatus, StoreError};
use crate::chunk::Chunk;
use crate::embed::Embeddings;

const DATA_DIR: &str = "data";
/// Flush a row group once this much is buffered, so memory stays bounded whatever the vector size.
const ROW_GROUP_BYTES: usize = 64 * 1024 * 1024;
pub const DEFAULT_ROWS_PER_FILE: u64 = 250_000;

/// Writes a new dataset. Nothing is visible to readers until [`DatasetWriter::finish`] writes the manifest.
pub struct DatasetWriter {
    dir: PathBuf,
    manifest: Manifest,
    rows_per_file: u64,
    schema: Option<SchemaRef>,
    open: Option<OpenFile>,
}

struct OpenFile {
    writer: ArrowWriter<File>,
    tmp: PathBuf,
    final_path: PathBuf,
    relative: String,
    rows: u64,
}

impl DatasetWriter {
    /// Prepares `dir` for a new dataset. An existing dataset is an error unless `overwrite`, which removes its
    /// data, index and manifest (and nothing else in the directory).
    pub fn create(dir: &Path, manifest: Manifest, overwrite: bool) -> Result<Self, StoreError> {
        let existing = dir.join(MANIFEST_FILE).exists() || dir.join(DATA_DIR).exists();
        if existing && !overwrite {
            return Err(StoreError::Exists { path: dir.to_path_buf() });
        }
        if existing {
            for sub in [DATA_DIR, crate::index::INDEX_DIR] {
                let path = dir.join(sub);
                if path.exists() {
                    std::fs::remove_dir_all(&path).map_err(StoreError::io(&path))?;
                }
            }
            let path = dir.join(MANIFEST_FILE);
            if path.exists() {
                std::fs::remove_file(&path).map_err(StoreError::io(&path))?;
            }
        }
        let data = dir.join(DATA_DIR);
        std::fs::create_dir_all(&data).map_err(StoreError::io(&data))?;
        Ok(Self { dir: dir.to_path_buf(), manifest, rows_per_file: DEFAULT_ROWS_PER_FILE, schema: None, open: None })
    }

    pub fn with_rows_per_file(mut self, rows: u64) -> Self {
        self.rows_per_file = rows.max(1);
        self
    }

    pub fn rows(&self) -> u64 {
        self.manifest.rows + self.open.as_ref().map_or(0, |f| f.rows)
    }

    /// Appends one embedded batch; `embeddings` holds one vector per chunk, in order.
    pub fn write(&mut self, chunks: &[Chunk], embeddings: &Embeddings) -> Result<(), StoreError> {
        if chunks.is_empty() {
            return Ok(());
        }
        let schema = match &self.schema {
            Some(schema) => {
                let dims = self.manifest.dimensions.unwrap_or(0);
                if embeddings.dimensions != dims {
                    return Err(StoreError::Corrupt {
                        path: self.dir.clone(),
                        message: format!("a batch has {} dimensions, the dataset {dims}", embeddings.dimensions),
                    });
                }
                Arc::clone(schema)
            }
            None => {
                self.manifest.dimensions = Some(embeddings.dimensions);
                let schema =
                    Arc::new(dataset_schema(embeddings.dimensions).as_ref().clone().with_metadata(self.metadata()));
                self.schema = Some(Arc::clone(&schema));
                schema
            }
        };
        let batch = record_batch(&schema, chunks, embeddings).map_err(StoreError::arrow(&self.dir))?;
        if self.open.is_none() {
            self.open = Some(self.open_file(&schema)?);
        }
        let file = self.open.as_mut().expect("opened above");
        file.writer.write(&batch).map_err(StoreError::parquet(&file.tmp))?;
        if file.writer.in_progress_size() >= ROW_GROUP_BYTES {
            file.writer.flush().map_err(StoreError::parquet(&file.tmp))?;
        }
        file.rows += chunks.len() as u64;
        if file.rows >= self.rows_per_file {
            self.close_file()?;
        }
        Ok(())
    }

    /// Closes the last file and publishes the manifest.
    pub fn finish(mut self, status: RunStatus) -> Result<Manifest, StoreError> {
        self.close_file()?;
        self.manifest.status = status;
        self.manifest.save(&self.dir)?;
        Ok(self.manifest)
    }

    fn open_file(&self, schema: &SchemaRef) -> Result<OpenFile, StoreError> {
        let relative = format!("{DATA_DIR}/part-{:05}.parquet", self.manifest.files.len());
        let final_path = self.dir.join(&relative);
        let tmp = final_path.with_extension("parquet.tmp");
        let file = File::create(&tmp).map_err(StoreError::io(&tmp))?;
        let writer = ArrowWriter::try_new(file, Arc::clone(schema), Some(self.properties()))
            .map_err(StoreError::parquet(&tmp))?;
        Ok(OpenFile { writer, tmp, final_path, relative, rows: 0 })
    }

    fn close_file(&mut self) -> Result<(), StoreError> {
        let Some(file) = self.open.take() else { return Ok(()) };
        let inner = file.writer.into_inner().map_err(StoreError::parquet(&file.tmp))?;
        inner.sync_all().map_err(StoreError::io(&file.tmp))?;
        drop(inner);
        std::fs::rename(&file.tmp, &file.final_path).map_err(StoreError::io(&file.final_path))?;
        sync_dir(&self.dir.join(DATA_DIR));
        self.manifest.files.push(DataFile { path: file.relative, rows: file.rows });
        self.manifest.rows += file.rows;
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
        let mut kv: Vec<KeyValue> = self.metadata().into_iter().map(|(k, v)| KeyValue::new(k, v)).collect();
        kv.sort_by(|a, b| a.key.cmp(&b.key));
        WriterProperties::builder()
            .set_compression(Compression::ZSTD(ZstdLevel::try_new(3).unwrap_or_default()))
            // Text and vectors are nearly unique, so dictionaries only cost; document names repeat, so keep it there.
            .set_dictionary_enabled(false)
            .set_column_dictionary_enabled(schema::DOC.into(), true)
            .set_statistics_enabled(EnabledStatistics::Chunk)
            .set_key_value_metadata(Some(kv))
            .build()
    }
}

fn record_batch(
    schema: &SchemaRef,
    chunks: &[Chunk],
    embeddings: &Embeddings,
) -> Result<RecordBatch, arrow::error::ArrowError> {
    let dims = embeddings.dimensions;
    let strings = |f: fn(&Chunk) -> &str| Arc::new(StringArray::from_iter_values(chunks.iter().map(f))) as ArrayRef;
    let values = Float32Array::from(embeddings.vectors[..chunks.len() * dims].to_vec());
    let item = Arc::new(Field::new("item", arrow::datatypes::DataType::Float32, false));
    let embedding = FixedSizeListArray::try_new(item, dims as i32, Arc::new(values), None)?;
    RecordBatch::try_new(
        Arc::clone(schema),
        vec![
            strings(|c| &c.id),
            strings(|c| &c.doc),
            Arc::new(UInt32Array::from_iter_values(chunks.iter().map(|c| c.chunk_index))),
            Arc::new(UInt64Array::from_iter_values(chunks.iter().map(|c| c.start))),
            Arc::new(UInt64Array::from_iter_values(chunks.iter().map(|c| c.end))),
            Arc::new(UInt32Array::from_iter_values(chunks.iter().map(|c| c.tokens))),
            strings(|c| &c.text),
            strings(|c| &c.hash),
            Arc::new(embedding),
        ],
    )
}
