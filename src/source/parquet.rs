//! Parquet input: one document per row, read a batch at a time from one row group at a time, and only the columns
//! needed (the text, the id, the metadata), so memory stays flat for a file of any size. Metadata columns keep the
//! file's types: integers as int64, floats and decimals as float64, dates and timestamps as timestamps.

use std::collections::VecDeque;
use std::fs::File;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use arrow::array::{Array, ArrayRef, AsArray, RecordBatch};
use arrow::datatypes::{DataType, TimeUnit};
use parquet::arrow::ProjectionMask;
use parquet::arrow::arrow_reader::{ParquetRecordBatchReader, ParquetRecordBatchReaderBuilder};

use super::meta::{self, FieldProblem, FieldType, RecordMapping, Value};
use super::{DocMeta, Document, FileStat, Format, Origin, SkipReason, SourceItem, TextFormat};

/// Rows per batch: enough to amortise decoding, few enough that a batch of long texts stays small.
const BATCH_ROWS: usize = 1024;

pub(super) struct ParquetReader {
    reader: ParquetRecordBatchReader,
    path: PathBuf,
    name: String,
    mapping: RecordMapping,
    stat: Option<FileStat>,
    /// The columns read, by their position in a batch.
    text: usize,
    id: Option<usize>,
    /// Metadata columns: name, type, position in a batch.
    metadata: Vec<(String, FieldType, usize)>,
    /// The current batch, its columns cast to the types above, and the next row in it.
    batch: Vec<ArrayRef>,
    batch_rows: usize,
    next_row: usize,
    /// Rows of the file before the current batch.
    rows_before: u64,
    pending: VecDeque<SourceItem>,
    done: bool,
    bytes_read: Arc<AtomicU64>,
    /// File size and rows, to count progress in bytes a batch at a time.
    file_bytes: u64,
    file_rows: u64,
}

/// The metadata type of a Parquet column, `None` for one that holds no scalar (lists, structs, maps, binary).
fn field_type(data_type: &DataType) -> Option<FieldType> {
    Some(match data_type {
        DataType::Utf8 | DataType::LargeUtf8 | DataType::Utf8View => FieldType::String,
        DataType::Dictionary(_, value) => return field_type(value).filter(|t| *t == FieldType::String),
        DataType::Int8
        | DataType::Int16
        | DataType::Int32
        | DataType::Int64
        | DataType::UInt8
        | DataType::UInt16
        | DataType::UInt32
        | DataType::UInt64 => FieldType::Int64,
        DataType::Float16
        | DataType::Float32
        | DataType::Float64
        | DataType::Decimal128(..)
        | DataType::Decimal256(..) => FieldType::Float64,
        DataType::Boolean => FieldType::Bool,
        DataType::Timestamp(..) | DataType::Date32 | DataType::Date64 => FieldType::Timestamp,
        _ => return None,
    })
}

/// The Arrow type a column of `field_type` is cast to for reading.
fn read_type(field_type: FieldType) -> DataType {
    match field_type {
        FieldType::String => DataType::Utf8,
        FieldType::Int64 => DataType::Int64,
        FieldType::Float64 => DataType::Float64,
        FieldType::Bool => DataType::Boolean,
        FieldType::Timestamp => DataType::Timestamp(TimeUnit::Microsecond, None),
    }
}

impl ParquetReader {
    /// Opens the file and checks its schema. A file without a usable text or id column is one item saying so.
    pub(super) fn open(
        path: &Path,
        name: &str,
        mapping: &RecordMapping,
        bytes_read: Arc<AtomicU64>,
    ) -> std::io::Result<Box<dyn Iterator<Item = SourceItem> + Send>> {
        let file = File::open(path)?;
        let stat = file.metadata().ok().map(|m| FileStat::of(&m));
        let not_read = |message: String| super::table_not_read(path, message);
        let builder = match ParquetRecordBatchReaderBuilder::try_new(file) {
            Ok(builder) => builder,
            Err(parquet::errors::ParquetError::External(e)) => {
                return Err(std::io::Error::other(e.to_string()));
            }
            Err(e) => return Ok(not_read(format!("not a readable Parquet file: {e}"))),
        };
        let schema = builder.schema().clone();
        let file_rows = u64::try_from(builder.metadata().file_metadata().num_rows()).unwrap_or(0);
        let fields = schema.fields();
        let columns = || fields.iter().map(|f| format!("{:?}", f.name())).collect::<Vec<_>>().join(", ");
        let position = |name: &str| fields.iter().position(|f| f.name() == name);

        let mut problems = Vec::new();
        let mut wanted: Vec<usize> = Vec::new();
        let Some(text) = position(&mapping.text_field) else {
            let message =
                format!("no column {:?} for the text (columns: {}); see --text-field", mapping.text_field, columns());
            return Ok(not_read(message));
        };
        if field_type(fields[text].data_type()) != Some(FieldType::String) {
            let message = format!(
                "column {:?} is {}, not a string: it cannot be the text",
                mapping.text_field,
                fields[text].data_type()
            );
            return Ok(not_read(message));
        }
        wanted.push(text);
        let id = match &mapping.id_field {
            None => None,
            Some(field) => {
                let Some(id) = position(field) else {
                    return Ok(not_read(format!(
                        "no column {field:?} for the id (columns: {}); see --id-field",
                        columns()
                    )));
                };
                if !matches!(field_type(fields[id].data_type()), Some(FieldType::String | FieldType::Int64)) {
                    let message = format!(
                        "column {field:?} is {}, not a string or integer: it cannot be the id",
                        fields[id].data_type()
                    );
                    return Ok(not_read(message));
                }
                wanted.push(id);
                Some(id)
            }
        };
        let mut metadata = Vec::new();
        for (i, field) in fields.iter().enumerate() {
            let name = field.name();
            if !mapping.carries(name) {
                continue;
            }
            match field_type(field.data_type()) {
                Some(t) => {
                    metadata.push((name.clone(), t, i));
                    wanted.push(i);
                }
                // '*' carries scalars only; a column asked for by name that is not one is refused, once per file.
                None if mapping.metadata.declared(name).is_some() => problems.push(FieldProblem {
                    field: name.clone(),
                    problem: format!(
                        "is a column of {}: only scalar columns (strings, numbers, booleans, timestamps) can be \
                         metadata; stored as null",
                        field.data_type()
                    ),
                }),
                None => {}
            }
        }
        wanted.sort_unstable();
        wanted.dedup();
        let at = |column: usize| wanted.iter().position(|&w| w == column).unwrap_or(0);
        let (text, id) = (at(text), id.map(at));
        let metadata = metadata.into_iter().map(|(n, t, c)| (n, t, at(c))).collect();
        let mask = ProjectionMask::roots(builder.parquet_schema(), wanted.iter().copied());
        let reader = match builder.with_projection(mask).with_batch_size(BATCH_ROWS).build() {
            Ok(reader) => reader,
            Err(e) => return Ok(not_read(format!("not a readable Parquet file: {e}"))),
        };
        let origin = Origin::file(path);
        let pending = problems.into_iter().map(|problem| SourceItem::FieldProblem { origin: origin.clone(), problem });
        Ok(Box::new(Self {
            reader,
            path: path.to_path_buf(),
            name: name.to_owned(),
            mapping: mapping.clone(),
            stat,
            text,
            id,
            metadata,
            batch: Vec::new(),
            batch_rows: 0,
            next_row: 0,
            rows_before: 0,
            pending: pending.collect(),
            done: false,
            bytes_read,
            file_bytes: stat.map_or(0, |s| s.size),
            file_rows,
        }))
    }

    /// Reads the next batch, casting each column to the type it is read as. `false` at the end of the file, or
    /// when it cannot be read further (then an item says why).
    fn next_batch(&mut self) -> bool {
        self.rows_before += self.batch_rows as u64;
        self.batch.clear();
        (self.batch_rows, self.next_row) = (0, 0);
        let batch: RecordBatch = match self.reader.next() {
            None => return false,
            Some(Ok(batch)) => batch,
            Some(Err(e)) => {
                // A damaged row group: what was read is kept, the rest of the file keeps its previous version.
                self.done = true;
                let error = std::io::Error::new(std::io::ErrorKind::InvalidData, e.to_string());
                self.pending.push_back(SourceItem::ReadError { path: self.path.clone(), name: None, error });
                return false;
            }
        };
        let mut types = vec![None; batch.num_columns()];
        types[self.text] = Some(FieldType::String);
        if let Some(id) = self.id {
            let t = field_type(batch.column(id).data_type());
            types[id] = if t == Some(FieldType::Int64) { t } else { Some(FieldType::String) };
        }
        for (_, t, c) in &self.metadata {
            types[*c] = Some(*t);
        }
        for (column, t) in batch.columns().iter().zip(types) {
            let target = t.map_or_else(|| column.data_type().clone(), read_type);
            match arrow::compute::cast(column, &target) {
                Ok(cast) => self.batch.push(cast),
                Err(e) => {
                    self.done = true;
                    let error = std::io::Error::new(std::io::ErrorKind::InvalidData, e.to_string());
                    self.pending.push_back(SourceItem::ReadError { path: self.path.clone(), name: None, error });
                    return false;
                }
            }
        }
        self.batch_rows = batch.num_rows();
        if let Some(bytes) = (self.file_bytes * self.batch_rows as u64).checked_div(self.file_rows) {
            self.bytes_read.fetch_add(bytes, Ordering::Relaxed);
        }
        true
    }

    fn row(&mut self, i: usize) -> Vec<SourceItem> {
        let number = self.rows_before + i as u64 + 1;
        let origin = Origin::row(self.path.clone(), number);
        let text = self.batch[self.text].as_string::<i32>();
        if text.is_null(i) {
            let reason = SkipReason::MissingField(format!("field {:?} is null", self.mapping.text_field));
            return vec![SourceItem::SkippedRecord { origin, reason }];
        }
        let body = text.value(i).to_owned();
        let doc = match self.id {
            None => format!("{}:{number}", self.name),
            Some(c) => match Value::from_arrow(&self.batch[c], i).unwrap_or(Value::Null) {
                Value::String(s) if !s.trim().is_empty() => s,
                Value::Int64(n) => n.to_string(),
                _ => {
                    let field = self.mapping.id_field.clone().unwrap_or_default();
                    let reason = SkipReason::MissingField(format!("the id field {field:?} is null or empty"));
                    return vec![SourceItem::SkippedRecord { origin, reason }];
                }
            },
        };
        let values: Vec<(String, Value)> = self
            .metadata
            .iter()
            .map(|(name, _, c)| (name.clone(), Value::from_arrow(&self.batch[*c], i).unwrap_or(Value::Null)))
            .collect();
        let (fields, problems) = self.mapping.collect(values.iter().map(|(n, v)| (n.as_str(), v.clone())));
        let document = Document {
            doc,
            text: body,
            format: TextFormat::Plain,
            origin,
            stat: self.stat,
            meta: DocMeta { source: Some(Format::Parquet), fields, ..DocMeta::default() },
        };
        meta::record_items(document, problems).collect()
    }
}

impl Iterator for ParquetReader {
    type Item = SourceItem;

    fn next(&mut self) -> Option<SourceItem> {
        loop {
            if let Some(item) = self.pending.pop_front() {
                return Some(item);
            }
            if self.done {
                return None;
            }
            if self.next_row >= self.batch_rows && !self.next_batch() {
                self.done = true;
                continue;
            }
            let i = self.next_row;
            self.next_row += 1;
            let items = self.row(i);
            self.pending.extend(items);
        }
    }
}
