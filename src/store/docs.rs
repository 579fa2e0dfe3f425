//! The documents table (`docs/docs-<generation>.parquet`): one row per live document, with what an incremental run
//! needs to tell whether it changed (its source file's size and mtime, its content hash) and the row ids of its
//! chunks. Rows of the data files that no document lists are dead: they belong to deleted or older versions of
//! documents, and are skipped by search and dropped by compaction.

use std::collections::HashMap;
use std::fs::File;
use std::path::Path;
use std::sync::Arc;

use arrow::array::{
    Array, ArrayRef, AsArray, BooleanArray, Int64Array, ListArray, RecordBatch, StringArray, UInt32Array, UInt64Array,
};
use arrow::buffer::OffsetBuffer;
use arrow::datatypes::{DataType, Field, Int64Type, Schema, SchemaRef, UInt32Type, UInt64Type};
use parquet::arrow::ArrowWriter;
use parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder;
use parquet::basic::{Compression, ZstdLevel};
use parquet::file::properties::WriterProperties;

use super::StoreError;
use super::manifest::sync_dir;

pub const DOCS_DIR: &str = "docs";

/// One live document.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DocRecord {
    /// The document's name in the dataset (path relative to its input root, or the JSONL id).
    pub doc: String,
    /// The file it was read from, as the run saw it.
    pub file: String,
    /// Size and mtime of that file when it was read.
    pub size: u64,
    pub mtime_ns: i64,
    /// Whether size + mtime may be trusted to detect a change next time. False when the file was modified so close
    /// to the read that a later change could keep the same mtime (coarse timestamps): then the file is re-read.
    pub stat_trusted: bool,
    /// blake3 of the document's text, hex.
    pub content_hash: String,
    /// Row ids of its chunks, in chunk order, without the missing ones.
    pub rows: Vec<u64>,
    /// Chunks that failed for good and are listed in the dead-letter file; the document has
    /// `rows.len() + missing` chunks.
    pub missing: u32,
}

fn schema() -> SchemaRef {
    Arc::new(Schema::new(vec![
        Field::new("doc", DataType::Utf8, false),
        Field::new("file", DataType::Utf8, false),
        Field::new("size", DataType::UInt64, false),
        Field::new("mtime_ns", DataType::Int64, false),
        Field::new("stat_trusted", DataType::Boolean, false),
        Field::new("content_hash", DataType::Utf8, false),
        Field::new("rows", DataType::List(Arc::new(Field::new("item", DataType::UInt64, false))), false),
        Field::new("missing", DataType::UInt32, false),
    ]))
}

const WRITE_BATCH: usize = 8192;

/// Writes `docs` (sorted by name, so the file is reproducible) to `dir/relative`, atomically.
pub fn write_docs(dir: &Path, relative: &str, docs: &HashMap<String, DocRecord>) -> Result<(), StoreError> {
    let path = dir.join(relative);
    if let Some(parent) = path.parent() {
        std::fs::create_dir_all(parent).map_err(StoreError::io(parent))?;
    }
    let tmp = path.with_extension("parquet.tmp");
    let file = File::create(&tmp).map_err(StoreError::io(&tmp))?;
    let props = WriterProperties::builder()
        .set_compression(Compression::ZSTD(ZstdLevel::try_new(3).unwrap_or_default()))
        .build();
    let mut writer = ArrowWriter::try_new(file, schema(), Some(props)).map_err(StoreError::parquet(&tmp))?;
    let mut names: Vec<&String> = docs.keys().collect();
    names.sort_unstable();
    for part in names.chunks(WRITE_BATCH) {
        let records: Vec<&DocRecord> = part.iter().filter_map(|n| docs.get(*n)).collect();
        let batch = docs_batch(&records).map_err(StoreError::arrow(&tmp))?;
        writer.write(&batch).map_err(StoreError::parquet(&tmp))?;
    }
    let file = writer.into_inner().map_err(StoreError::parquet(&tmp))?;
    file.sync_all().map_err(StoreError::io(&tmp))?;
    drop(file);
    std::fs::rename(&tmp, &path).map_err(StoreError::io(&path))?;
    sync_dir(path.parent().unwrap_or(dir));
    Ok(())
}

fn docs_batch(records: &[&DocRecord]) -> Result<RecordBatch, arrow::error::ArrowError> {
    let strings = |f: fn(&DocRecord) -> &str| Arc::new(StringArray::from_iter_values(records.iter().map(|r| f(r))));
    let rows: Vec<u64> = records.iter().flat_map(|r| r.rows.iter().copied()).collect();
    let offsets = OffsetBuffer::from_lengths(records.iter().map(|r| r.rows.len()));
    let item = Arc::new(Field::new("item", DataType::UInt64, false));
    let list = ListArray::try_new(item, offsets, Arc::new(UInt64Array::from(rows)), None)?;
    let columns: Vec<ArrayRef> = vec![
        strings(|r| &r.doc),
        strings(|r| &r.file),
        Arc::new(UInt64Array::from_iter_values(records.iter().map(|r| r.size))),
        Arc::new(Int64Array::from_iter_values(records.iter().map(|r| r.mtime_ns))),
        Arc::new(BooleanArray::from(records.iter().map(|r| r.stat_trusted).collect::<Vec<_>>())),
        strings(|r| &r.content_hash),
        Arc::new(list),
        Arc::new(UInt32Array::from_iter_values(records.iter().map(|r| r.missing))),
    ];
    RecordBatch::try_new(schema(), columns)
}

/// Reads a documents table, calling `f` for every record.
pub fn read_docs(dir: &Path, relative: &str, mut f: impl FnMut(DocRecord)) -> Result<(), StoreError> {
    let path = dir.join(relative);
    let corrupt = |message: String| StoreError::Corrupt { path: path.clone(), message };
    let file = File::open(&path).map_err(StoreError::io(&path))?;
    let reader = ParquetRecordBatchReaderBuilder::try_new(file)
        .map_err(StoreError::parquet(&path))?
        .with_batch_size(WRITE_BATCH)
        .build()
        .map_err(StoreError::parquet(&path))?;
    for batch in reader {
        let batch = batch.map_err(StoreError::arrow(&path))?;
        // Tables written before `missing` existed have the first seven columns only.
        let expected = schema();
        let fields = batch.schema().fields().clone();
        if fields.len() < 7 || fields.len() > expected.fields().len() || fields[..] != expected.fields()[..fields.len()]
        {
            return Err(corrupt(format!("unexpected columns: {fields:?}")));
        }
        let missing = batch.columns().get(7).map(|c| c.as_primitive::<UInt32Type>());
        let doc = batch.column(0).as_string::<i32>();
        let file = batch.column(1).as_string::<i32>();
        let size = batch.column(2).as_primitive::<UInt64Type>();
        let mtime = batch.column(3).as_primitive::<Int64Type>();
        let trusted = batch.column(4).as_boolean();
        let hash = batch.column(5).as_string::<i32>();
        let rows = batch.column(6).as_list::<i32>();
        for i in 0..batch.num_rows() {
            let ids = rows.value(i);
            let ids = ids.as_primitive_opt::<UInt64Type>().ok_or_else(|| corrupt("rows are not uint64".into()))?;
            f(DocRecord {
                doc: doc.value(i).to_owned(),
                file: file.value(i).to_owned(),
                size: size.value(i),
                mtime_ns: mtime.value(i),
                stat_trusted: trusted.value(i),
                content_hash: hash.value(i).to_owned(),
                rows: ids.values().to_vec(),
                missing: missing.map_or(0, |m| m.value(i)),
            });
        }
        debug_assert!(rows.null_count() == 0);
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn documents_round_trip() {
        let dir = tempfile::tempdir().expect("tempdir");
        let mut docs = HashMap::new();
        for i in 0..20_000u64 {
            let rows = (0..i % 4).map(|r| i * 10 + r).collect();
            let record = DocRecord {
                doc: format!("doc-{i:05}"),
                file: format!("file-{}", i / 100),
                size: i,
                mtime_ns: -(i as i64),
                stat_trusted: i % 3 == 0,
                content_hash: format!("{i:064x}"),
                rows,
                missing: (i % 5) as u32,
            };
            docs.insert(record.doc.clone(), record);
        }
        write_docs(dir.path(), "docs/docs-000001.parquet", &docs).expect("write");
        let mut back = HashMap::new();
        read_docs(dir.path(), "docs/docs-000001.parquet", |r| {
            back.insert(r.doc.clone(), r);
        })
        .expect("read");
        assert_eq!(back, docs);
    }
}
