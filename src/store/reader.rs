//! Reading a dataset back: the vectors in bulk (to build the index), and a few rows by position (for search).

use std::collections::BTreeMap;
use std::fs::File;
use std::path::{Path, PathBuf};

use arrow::array::{Array, AsArray, RecordBatch};
use arrow::datatypes::{DataType, Float32Type, UInt32Type, UInt64Type};
use parquet::arrow::ProjectionMask;
use parquet::arrow::arrow_reader::{ParquetRecordBatchReaderBuilder, RowSelection};

use super::schema;
use super::{Manifest, StoreError};

/// An open dataset (its manifest, read and checked).
#[derive(Debug, Clone)]
pub struct Dataset {
    pub dir: PathBuf,
    pub manifest: Manifest,
}

/// A chunk's row without its vector.
#[derive(Debug, Clone, PartialEq)]
pub struct StoredChunk {
    /// Position of the row in the dataset (files in manifest order).
    pub ordinal: u64,
    pub id: String,
    pub doc: String,
    pub chunk_index: u32,
    pub start: u64,
    pub end: u64,
    pub tokens: u32,
    pub text: String,
}

impl Dataset {
    pub fn open(dir: &Path) -> Result<Self, StoreError> {
        Ok(Self { dir: dir.to_path_buf(), manifest: Manifest::load(dir)? })
    }

    /// Vector size; an error for a dataset without rows.
    pub fn dimensions(&self) -> Result<usize, StoreError> {
        self.manifest.dimensions.filter(|_| self.manifest.rows > 0).ok_or_else(|| StoreError::Corrupt {
            path: self.dir.clone(),
            message: "the dataset holds no embedded chunks".to_owned(),
        })
    }

    /// Calls `f(first_ordinal, vectors, rows)` for every record batch of vectors, in dataset order, reading only the
    /// embedding column.
    pub fn for_each_vector_batch<E: From<StoreError>>(
        &self,
        mut f: impl FnMut(u64, &[f32], usize) -> Result<(), E>,
    ) -> Result<(), E> {
        let dims = self.dimensions()?;
        let mut ordinal = 0u64;
        for entry in &self.manifest.files {
            let path = self.dir.join(&entry.path);
            let builder = self.open_file(&path, entry.rows)?;
            let root = column_index(&builder, &path, schema::EMBEDDING)?;
            let mask = ProjectionMask::roots(builder.parquet_schema(), [root]);
            let reader =
                builder.with_projection(mask).with_batch_size(4096).build().map_err(StoreError::parquet(&path))?;
            for batch in reader {
                let batch = batch.map_err(StoreError::arrow(&path))?;
                let list = batch
                    .column(0)
                    .as_fixed_size_list_opt()
                    .ok_or_else(|| corrupt(&path, "embedding is not a fixed-size list"))?;
                if list.value_length() as usize != dims {
                    return Err(corrupt(
                        &path,
                        &format!("embedding has {} dimensions, manifest says {dims}", list.value_length()),
                    )
                    .into());
                }
                let values = list
                    .values()
                    .as_primitive_opt::<Float32Type>()
                    .ok_or_else(|| corrupt(&path, "embedding values are not float32"))?;
                let start = list.offset() * dims;
                let flat = &values.values()[start..start + list.len() * dims];
                f(ordinal, flat, list.len())?;
                ordinal += list.len() as u64;
            }
        }
        Ok(())
    }

    /// The rows at `ordinals` (without vectors), in the order asked. Reads only the row groups and pages that hold
    /// them.
    pub fn fetch(&self, ordinals: &[u64]) -> Result<Vec<StoredChunk>, StoreError> {
        // file index -> local rows wanted
        let mut wanted: BTreeMap<usize, Vec<u64>> = BTreeMap::new();
        let mut first = 0u64;
        let bounds: Vec<(u64, u64)> = self
            .manifest
            .files
            .iter()
            .map(|f| {
                let b = (first, first + f.rows);
                first += f.rows;
                b
            })
            .collect();
        for &ordinal in ordinals {
            let file = bounds.iter().position(|(lo, hi)| (*lo..*hi).contains(&ordinal)).ok_or_else(|| {
                corrupt(&self.dir, &format!("row {ordinal} is beyond the dataset's {} rows", self.manifest.rows))
            })?;
            wanted.entry(file).or_default().push(ordinal - bounds[file].0);
        }
        let mut found = BTreeMap::new();
        for (file, mut rows) in wanted {
            rows.sort_unstable();
            rows.dedup();
            let entry = &self.manifest.files[file];
            let path = self.dir.join(&entry.path);
            let builder = self.open_file(&path, entry.rows)?;
            let roots: Vec<usize> = builder
                .schema()
                .fields()
                .iter()
                .enumerate()
                .filter(|(_, f)| f.name() != schema::EMBEDDING)
                .map(|(i, _)| i)
                .collect();
            let mask = ProjectionMask::roots(builder.parquet_schema(), roots);
            let ranges = rows.iter().map(|&r| r as usize..r as usize + 1);
            let selection = RowSelection::from_consecutive_ranges(ranges, entry.rows as usize);
            let reader = builder
                .with_projection(mask)
                .with_row_selection(selection)
                .build()
                .map_err(StoreError::parquet(&path))?;
            let mut next = rows.iter();
            for batch in reader {
                let batch = batch.map_err(StoreError::arrow(&path))?;
                for chunk in decode_rows(&batch, &path)? {
                    let local = *next.next().ok_or_else(|| corrupt(&path, "more rows than selected"))?;
                    found.insert(bounds[file].0 + local, chunk);
                }
            }
        }
        ordinals
            .iter()
            .map(|o| {
                let mut chunk =
                    found.get(o).cloned().ok_or_else(|| corrupt(&self.dir, &format!("row {o} not found")))?;
                chunk.ordinal = *o;
                Ok(chunk)
            })
            .collect()
    }

    fn open_file(&self, path: &Path, rows: u64) -> Result<ParquetRecordBatchReaderBuilder<File>, StoreError> {
        let file = File::open(path).map_err(StoreError::io(path))?;
        let builder = ParquetRecordBatchReaderBuilder::try_new(file).map_err(StoreError::parquet(path))?;
        let actual = builder.metadata().file_metadata().num_rows();
        if actual != rows as i64 {
            return Err(corrupt(path, &format!("holds {actual} rows, the manifest says {rows}")));
        }
        Ok(builder)
    }
}

fn corrupt(path: &Path, message: &str) -> StoreError {
    StoreError::Corrupt { path: path.to_path_buf(), message: message.to_owned() }
}

fn column_index(builder: &ParquetRecordBatchReaderBuilder<File>, path: &Path, name: &str) -> Result<usize, StoreError> {
    builder.schema().index_of(name).map_err(|_| corrupt(path, &format!("no column {name:?}")))
}

fn decode_rows(batch: &RecordBatch, path: &Path) -> Result<Vec<StoredChunk>, StoreError> {
    let column = |name: &str| batch.column_by_name(name).ok_or_else(|| corrupt(path, &format!("no column {name:?}")));
    let string = |name: &str| {
        let c = column(name)?;
        if c.data_type() != &DataType::Utf8 {
            return Err(corrupt(path, &format!("column {name:?} is not a string")));
        }
        Ok(c.as_string::<i32>().clone())
    };
    let (id, doc, text) = (string(schema::ID)?, string(schema::DOC)?, string(schema::TEXT)?);
    let u32_col = |name: &str| {
        column(name)?
            .as_primitive_opt::<UInt32Type>()
            .cloned()
            .ok_or_else(|| corrupt(path, &format!("column {name:?} is not uint32")))
    };
    let u64_col = |name: &str| {
        column(name)?
            .as_primitive_opt::<UInt64Type>()
            .cloned()
            .ok_or_else(|| corrupt(path, &format!("column {name:?} is not uint64")))
    };
    let (chunk_index, tokens) = (u32_col(schema::CHUNK_INDEX)?, u32_col(schema::TOKENS)?);
    let (start, end) = (u64_col(schema::START)?, u64_col(schema::END)?);
    Ok((0..batch.num_rows())
        .map(|i| StoredChunk {
            ordinal: 0,
            id: id.value(i).to_owned(),
            doc: doc.value(i).to_owned(),
            chunk_index: chunk_index.value(i),
            start: start.value(i),
            end: end.value(i),
            tokens: tokens.value(i),
            text: text.value(i).to_owned(),
        })
        .collect())
}
