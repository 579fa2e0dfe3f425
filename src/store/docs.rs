//! The documents table (`docs/docs-<generation>.parquet`): one row per live document, with what an incremental run
//! needs to tell whether it changed (its source file's size and mtime, its content hash) and the row ids of its
//! chunks. Rows of the data files that no document lists are dead: they belong to deleted or older versions of
//! documents, and are skipped by search and dropped by compaction.
//!
//! It is also where a document's metadata lives, once per document rather than on every chunk: its format, title
//! and modification time, and the metadata fields of its record as typed columns (`--metadata`), one per field, in
//! name order after the built-in ones. A change to metadata alone rewrites only this table (it is rewritten by every
//! publish anyway), never a data file, and a filter on metadata is a lookup here that yields row ids.

use std::collections::{BTreeMap, HashMap};
use std::fs::File;
use std::path::Path;
use std::sync::Arc;

use arrow::array::{
    Array, ArrayRef, AsArray, BooleanArray, Float64Array, Int64Array, ListArray, RecordBatch, StringArray,
    TimestampMicrosecondArray, TimestampNanosecondArray, UInt32Array, UInt64Array,
};
use arrow::buffer::OffsetBuffer;
use arrow::datatypes::{DataType, Field, Int64Type, Schema, SchemaRef, TimeUnit, UInt32Type, UInt64Type};
use parquet::arrow::ArrowWriter;
use parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder;
use parquet::basic::{Compression, ZstdLevel};
use parquet::file::properties::WriterProperties;

use super::StoreError;
use super::manifest::sync_dir;
use crate::source::{FieldType, Fields, Format, Value};

pub const DOCS_DIR: &str = "docs";

/// One live document.
#[derive(Debug, Clone, PartialEq)]
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
    /// The format it was read as (absent in tables written before formats were recorded).
    pub format: Option<Format>,
    /// Its title: Markdown's first heading, HTML's `<title>`, a PDF's document title.
    pub title: Option<String>,
    /// Its record's metadata fields (`--metadata`).
    pub fields: Fields,
}

impl DocRecord {
    /// Whether `other` says the same of the document besides its rows: the metadata a run compares. A null field
    /// and an absent one are the same (the table has a null wherever a record lacks a field).
    pub fn same_metadata(&self, other: &DocRecord) -> bool {
        let set = |r: &DocRecord| -> Vec<(Arc<str>, Value)> {
            r.fields.iter().filter(|(_, v)| **v != Value::Null).map(|(k, v)| (Arc::clone(k), v.clone())).collect()
        };
        self.format == other.format && self.title == other.title && set(self) == set(other)
    }
}

/// The built-in columns, in order; the first seven are the oldest tables' whole schema.
const FORMAT: &str = "format";
const TITLE: &str = "title";
const MODIFIED: &str = "modified";

/// The built-in columns.
fn base_fields() -> Vec<Field> {
    let utc = Some(Arc::from("UTC"));
    vec![
        Field::new("doc", DataType::Utf8, false),
        Field::new("file", DataType::Utf8, false),
        Field::new("size", DataType::UInt64, false),
        Field::new("mtime_ns", DataType::Int64, false),
        Field::new("stat_trusted", DataType::Boolean, false),
        Field::new("content_hash", DataType::Utf8, false),
        Field::new("rows", DataType::List(Arc::new(Field::new("item", DataType::UInt64, false))), false),
        Field::new("missing", DataType::UInt32, false),
        Field::new(FORMAT, DataType::Utf8, true),
        Field::new(TITLE, DataType::Utf8, true),
        Field::new(MODIFIED, DataType::Timestamp(TimeUnit::Nanosecond, utc), true),
    ]
}

/// The Arrow type of a metadata column.
fn arrow_type(field_type: FieldType) -> DataType {
    match field_type {
        FieldType::String => DataType::Utf8,
        FieldType::Int64 => DataType::Int64,
        FieldType::Float64 => DataType::Float64,
        FieldType::Bool => DataType::Boolean,
        FieldType::Timestamp => DataType::Timestamp(TimeUnit::Microsecond, Some(Arc::from("UTC"))),
    }
}

fn schema(types: &BTreeMap<String, FieldType>) -> SchemaRef {
    let mut fields = base_fields();
    fields.extend(types.iter().map(|(name, t)| Field::new(name, arrow_type(*t), true)));
    Arc::new(Schema::new(fields))
}

/// The type of each metadata field of `docs`: the run's (`preferred`: declared, or fixed by the first value seen),
/// else its values' (the first non-null one, in name order; a field that is null everywhere is a string).
pub fn field_types(
    docs: &HashMap<String, DocRecord>,
    preferred: &BTreeMap<String, FieldType>,
) -> BTreeMap<String, FieldType> {
    let mut names: Vec<&String> = docs.keys().collect();
    names.sort_unstable();
    // Fields the run knows of have a column even when every value is null.
    let mut types: BTreeMap<String, Option<FieldType>> = preferred.keys().map(|k| (k.clone(), None)).collect();
    for record in names.into_iter().filter_map(|n| docs.get(n)) {
        for (field, value) in &record.fields {
            let t = types.entry(field.to_string()).or_insert(None);
            if t.is_none() {
                *t = value.field_type();
            }
        }
    }
    types
        .into_iter()
        .map(|(name, t)| {
            let t = preferred.get(&name).copied().or(t).unwrap_or(FieldType::String);
            (name, t)
        })
        .collect()
}

const WRITE_BATCH: usize = 8192;

/// Writes `docs` (sorted by name, so the file is reproducible) to `dir/relative`, atomically, with a column for
/// each of `types`.
pub fn write_docs(
    dir: &Path,
    relative: &str,
    docs: &HashMap<String, DocRecord>,
    types: &BTreeMap<String, FieldType>,
) -> Result<(), StoreError> {
    let path = dir.join(relative);
    if let Some(parent) = path.parent() {
        std::fs::create_dir_all(parent).map_err(StoreError::io(parent))?;
    }
    let tmp = path.with_extension("parquet.tmp");
    let file = File::create(&tmp).map_err(StoreError::io(&tmp))?;
    let props = WriterProperties::builder()
        .set_compression(Compression::ZSTD(ZstdLevel::try_new(3).unwrap_or_default()))
        .build();
    let schema = schema(types);
    let mut writer = ArrowWriter::try_new(file, Arc::clone(&schema), Some(props)).map_err(StoreError::parquet(&tmp))?;
    let mut names: Vec<&String> = docs.keys().collect();
    names.sort_unstable();
    for part in names.chunks(WRITE_BATCH) {
        let records: Vec<&DocRecord> = part.iter().filter_map(|n| docs.get(*n)).collect();
        let batch = docs_batch(&schema, &records, types).map_err(StoreError::arrow(&tmp))?;
        writer.write(&batch).map_err(StoreError::parquet(&tmp))?;
    }
    let file = writer.into_inner().map_err(StoreError::parquet(&tmp))?;
    file.sync_all().map_err(StoreError::io(&tmp))?;
    drop(file);
    std::fs::rename(&tmp, &path).map_err(StoreError::io(&path))?;
    sync_dir(path.parent().unwrap_or(dir));
    Ok(())
}

fn docs_batch(
    schema: &SchemaRef,
    records: &[&DocRecord],
    types: &BTreeMap<String, FieldType>,
) -> Result<RecordBatch, arrow::error::ArrowError> {
    let strings = |f: fn(&DocRecord) -> &str| Arc::new(StringArray::from_iter_values(records.iter().map(|r| f(r))));
    let rows: Vec<u64> = records.iter().flat_map(|r| r.rows.iter().copied()).collect();
    let offsets = OffsetBuffer::from_lengths(records.iter().map(|r| r.rows.len()));
    let item = Arc::new(Field::new("item", DataType::UInt64, false));
    let list = ListArray::try_new(item, offsets, Arc::new(UInt64Array::from(rows)), None)?;
    let mut columns: Vec<ArrayRef> = vec![
        strings(|r| &r.doc),
        strings(|r| &r.file),
        Arc::new(UInt64Array::from_iter_values(records.iter().map(|r| r.size))),
        Arc::new(Int64Array::from_iter_values(records.iter().map(|r| r.mtime_ns))),
        Arc::new(BooleanArray::from(records.iter().map(|r| r.stat_trusted).collect::<Vec<_>>())),
        strings(|r| &r.content_hash),
        Arc::new(list),
        Arc::new(UInt32Array::from_iter_values(records.iter().map(|r| r.missing))),
        Arc::new(StringArray::from_iter(records.iter().map(|r| r.format.map(|f| f.name())))),
        Arc::new(StringArray::from_iter(records.iter().map(|r| r.title.as_deref()))),
        Arc::new(
            TimestampNanosecondArray::from_iter(records.iter().map(|r| (r.mtime_ns != 0).then_some(r.mtime_ns)))
                .with_timezone("UTC"),
        ),
    ];
    for (name, t) in types {
        // A value is stored as its column's type, converted if a run left one of another (null if it cannot be).
        let value = |r: &&DocRecord| r.fields.get(name.as_str()).cloned().and_then(|v| v.convert(*t));
        let column: ArrayRef = match t {
            FieldType::String => Arc::new(StringArray::from_iter(records.iter().map(|r| match value(r) {
                Some(Value::String(s)) => Some(s),
                _ => None,
            }))),
            FieldType::Int64 => Arc::new(Int64Array::from_iter(records.iter().map(|r| match value(r) {
                Some(Value::Int64(n)) => Some(n),
                _ => None,
            }))),
            FieldType::Float64 => Arc::new(Float64Array::from_iter(records.iter().map(|r| match value(r) {
                Some(Value::Float64(x)) => Some(x),
                _ => None,
            }))),
            FieldType::Bool => Arc::new(BooleanArray::from_iter(records.iter().map(|r| match value(r) {
                Some(Value::Bool(b)) => Some(b),
                _ => None,
            }))),
            FieldType::Timestamp => Arc::new(
                TimestampMicrosecondArray::from_iter(records.iter().map(|r| match value(r) {
                    Some(Value::Timestamp(t)) => Some(t),
                    _ => None,
                }))
                .with_timezone("UTC"),
            ),
        };
        columns.push(column);
    }
    RecordBatch::try_new(Arc::clone(schema), columns)
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
        // Tables written before `missing` existed have the first seven columns only, those before metadata the
        // first eight; the built-in columns are checked, the metadata ones read by name and type.
        let expected = base_fields();
        let batch_schema = batch.schema();
        let fields = batch_schema.fields();
        let base = fields.len().min(expected.len());
        if base < 7 || fields.iter().take(base).zip(&expected).any(|(f, e)| f.as_ref() != e) {
            return Err(corrupt(format!("unexpected columns: {fields:?}")));
        }
        let missing = batch.columns().get(7).map(|c| c.as_primitive::<UInt32Type>());
        let format = batch.column_by_name(FORMAT).filter(|_| base > 8).map(|c| c.as_string::<i32>());
        let title = batch.column_by_name(TITLE).filter(|_| base > 9).map(|c| c.as_string::<i32>());
        let metadata: Vec<(Arc<str>, &ArrayRef)> = fields
            .iter()
            .zip(batch.columns())
            .skip(expected.len())
            .map(|(f, c)| (Arc::from(f.name().as_str()), c))
            .collect();
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
                format: format.filter(|f| f.is_valid(i)).and_then(|f| Format::parse(f.value(i))),
                title: title.filter(|t| t.is_valid(i)).map(|t| t.value(i).to_owned()),
                fields: metadata
                    .iter()
                    .filter_map(|(name, column)| match Value::from_arrow(column, i) {
                        None => Some(Err(corrupt(format!("column {name:?} is {}", column.data_type())))),
                        Some(Value::Null) => None,
                        Some(value) => Some(Ok((Arc::clone(name), value))),
                    })
                    .collect::<Result<Fields, StoreError>>()?,
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
    fn documents_round_trip_with_typed_metadata() {
        let dir = tempfile::tempdir().expect("tempdir");
        let mut docs = HashMap::new();
        for i in 0..20_000u64 {
            let rows = (0..i % 4).map(|r| i * 10 + r).collect();
            let mut fields = Fields::new();
            // A record without a field has none (null in the table, absent when read back).
            if i % 7 != 0 {
                fields.insert(Arc::from("year"), Value::Int64(2000 + i as i64 % 25));
            }
            fields.insert(Arc::from("lang"), Value::String(["en", "fr", "de"][i as usize % 3].into()));
            fields.insert(Arc::from("score_x"), Value::Float64(i as f64 / 8.0));
            fields.insert(Arc::from("draft"), Value::Bool(i % 2 == 0));
            fields.insert(Arc::from("published"), Value::Timestamp(1_700_000_000_000_000 + i as i64));
            let record = DocRecord {
                doc: format!("doc-{i:05}"),
                file: format!("file-{}", i / 100),
                size: i,
                mtime_ns: -(i as i64),
                stat_trusted: i % 3 == 0,
                content_hash: format!("{i:064x}"),
                rows,
                missing: (i % 5) as u32,
                format: [Some(Format::Csv), None, Some(Format::Pdf)][i as usize % 3],
                title: (i % 2 == 1).then(|| format!("Title {i}")),
                fields,
            };
            docs.insert(record.doc.clone(), record);
        }
        let types = field_types(&docs, &BTreeMap::new());
        assert_eq!(
            types.iter().map(|(n, t)| format!("{n}:{t}")).collect::<Vec<_>>(),
            ["draft:bool", "lang:string", "published:timestamp", "score_x:float64", "year:int64"]
        );
        write_docs(dir.path(), "docs/docs-000001.parquet", &docs, &types).expect("write");
        let mut back = HashMap::new();
        read_docs(dir.path(), "docs/docs-000001.parquet", |r| {
            back.insert(r.doc.clone(), r);
        })
        .expect("read");
        assert_eq!(back, docs);
    }

    #[test]
    fn tables_of_older_versions_read_without_metadata() {
        // The schema-2 table: the first eight columns only.
        let dir = tempfile::tempdir().expect("tempdir");
        let old = Arc::new(Schema::new(base_fields()[..8].to_vec()));
        let record = DocRecord {
            doc: "a.txt".into(),
            file: "/in/a.txt".into(),
            size: 3,
            mtime_ns: 5,
            stat_trusted: true,
            content_hash: "h".into(),
            rows: vec![1, 2],
            missing: 0,
            format: None,
            title: None,
            fields: Fields::new(),
        };
        let full = docs_batch(&schema(&BTreeMap::new()), &[&record], &BTreeMap::new()).expect("batch");
        let batch = RecordBatch::try_new(Arc::clone(&old), full.columns()[..8].to_vec()).expect("old batch");
        std::fs::create_dir_all(dir.path().join("docs")).expect("mkdir");
        let file = File::create(dir.path().join("docs/old.parquet")).expect("create");
        let mut writer = ArrowWriter::try_new(file, old, None).expect("writer");
        writer.write(&batch).expect("write");
        writer.close().expect("close");
        let mut back = Vec::new();
        read_docs(dir.path(), "docs/old.parquet", |r| back.push(r)).expect("read");
        assert_eq!(back, [record]);
    }
}
