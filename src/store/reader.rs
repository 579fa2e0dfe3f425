//! Reading a dataset back: the vectors in bulk (to build the index), and a few rows by position (for search).

use std::collections::BTreeMap;
use std::fs::File;
use std::path::{Path, PathBuf};

use arrow::array::{Array, AsArray, RecordBatch};
use arrow::datatypes::{DataType, Float32Type, UInt32Type, UInt64Type};
use parquet::arrow::ProjectionMask;
use parquet::arrow::arrow_reader::{
    ArrowReaderMetadata, ArrowReaderOptions, ParquetRecordBatchReaderBuilder, RowSelection,
};
use parquet::file::metadata::PageIndexPolicy;

use std::sync::Arc;

use super::docs::{DocRecord, read_docs};
use super::failed::{FailedChunk, read_failed};
use super::schema;
use super::{Manifest, StoreError};
use crate::chunk::Chunk;

/// An open dataset (its manifest, read and checked).
#[derive(Debug, Clone)]
pub struct Dataset {
    pub dir: PathBuf,
    pub manifest: Manifest,
}

/// The footers (and page indexes) of a dataset's data files, parsed once: a server fetching the hits of query after
/// query would otherwise parse them again for every one. Keyed by path (files are never rewritten in place).
#[derive(Debug, Default)]
pub struct Footers(std::sync::Mutex<std::collections::HashMap<PathBuf, ArrowReaderMetadata>>);

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
    /// The page the chunk starts on, for a PDF document.
    pub page: Option<u32>,
}

impl Dataset {
    pub fn open(dir: &Path) -> Result<Self, StoreError> {
        Ok(Self { dir: dir.to_path_buf(), manifest: Manifest::load(dir)? })
    }

    /// Vector size; an error for a dataset without rows.
    pub fn dimensions(&self) -> Result<usize, StoreError> {
        self.manifest
            .dimensions
            .filter(|_| self.manifest.rows > 0)
            .ok_or_else(|| StoreError::Empty { path: self.dir.clone() })
    }

    /// Calls `f(first_row_id, vectors, rows)` for every record batch of vectors of the files from `from_file` on,
    /// in row-id order, reading only the embedding column. Dead rows are included.
    pub fn for_each_vector_batch<E: From<StoreError>>(
        &self,
        from_file: usize,
        mut f: impl FnMut(u64, &[f32], usize) -> Result<(), E>,
    ) -> Result<(), E> {
        let dims = self.dimensions()?;
        for entry in self.manifest.files.iter().skip(from_file) {
            let mut ordinal = entry.first_row;
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

    /// Which file holds row `row_id`, and where in it.
    fn locate(&self, row_id: u64) -> Result<(usize, u64), StoreError> {
        let files = &self.manifest.files;
        let at = files.partition_point(|f| f.first_row + f.rows <= row_id);
        match files.get(at) {
            Some(f) if f.first_row <= row_id => Ok((at, row_id - f.first_row)),
            _ => Err(corrupt(&self.dir, &format!("no data file holds row {row_id}"))),
        }
    }

    /// Rows wanted, grouped by file: file index → sorted, distinct local rows.
    fn group(&self, row_ids: &[u64]) -> Result<BTreeMap<usize, Vec<u64>>, StoreError> {
        let mut wanted: BTreeMap<usize, Vec<u64>> = BTreeMap::new();
        for &row_id in row_ids {
            let (file, local) = self.locate(row_id)?;
            wanted.entry(file).or_default().push(local);
        }
        for rows in wanted.values_mut() {
            rows.sort_unstable();
            rows.dedup();
        }
        Ok(wanted)
    }

    /// Calls `f(row_id, hash)` for every row (dead ones included), reading only the hash column.
    pub fn for_each_hash(&self, mut f: impl FnMut(u64, &str)) -> Result<(), StoreError> {
        for entry in &self.manifest.files {
            let path = self.dir.join(&entry.path);
            let builder = self.open_file(&path, entry.rows)?;
            let root = column_index(&builder, &path, schema::HASH)?;
            let mask = ProjectionMask::roots(builder.parquet_schema(), [root]);
            let reader =
                builder.with_projection(mask).with_batch_size(8192).build().map_err(StoreError::parquet(&path))?;
            let mut row_id = entry.first_row;
            for batch in reader {
                let batch = batch.map_err(StoreError::arrow(&path))?;
                let hashes =
                    batch.column(0).as_string_opt::<i32>().ok_or_else(|| corrupt(&path, "hash is not a string"))?;
                for hash in hashes.iter() {
                    f(row_id, hash.unwrap_or_default());
                    row_id += 1;
                }
            }
        }
        Ok(())
    }

    /// Calls `f(row_id, doc, text)` for every row of the files from `from_file` on (dead ones included), reading only
    /// those two columns (the keyword index).
    pub fn for_each_text(&self, from_file: usize, mut f: impl FnMut(u64, &str, &str)) -> Result<(), StoreError> {
        for entry in self.manifest.files.iter().skip(from_file) {
            let path = self.dir.join(&entry.path);
            let builder = self.open_file(&path, entry.rows)?;
            let roots = [column_index(&builder, &path, schema::DOC)?, column_index(&builder, &path, schema::TEXT)?];
            let mask = ProjectionMask::roots(builder.parquet_schema(), roots);
            let reader =
                builder.with_projection(mask).with_batch_size(4096).build().map_err(StoreError::parquet(&path))?;
            let mut row_id = entry.first_row;
            for batch in reader {
                let batch = batch.map_err(StoreError::arrow(&path))?;
                let string = |name: &str| {
                    batch
                        .column_by_name(name)
                        .and_then(|c| c.as_string_opt::<i32>())
                        .ok_or_else(|| corrupt(&path, &format!("column {name:?} is not a string")))
                };
                let (docs, texts) = (string(schema::DOC)?, string(schema::TEXT)?);
                for (doc, text) in docs.iter().zip(texts.iter()) {
                    f(row_id, doc.unwrap_or_default(), text.unwrap_or_default());
                    row_id += 1;
                }
            }
        }
        Ok(())
    }

    /// Calls `f(row_id, chunk_index, page)` for every row (dead ones included), reading only those two columns (a
    /// filter on a chunk's own columns). Files written before pages were kept give no page.
    pub fn for_each_position(&self, mut f: impl FnMut(u64, u32, Option<u32>)) -> Result<(), StoreError> {
        for entry in &self.manifest.files {
            let path = self.dir.join(&entry.path);
            let builder = self.open_file(&path, entry.rows)?;
            let index_root = column_index(&builder, &path, schema::CHUNK_INDEX)?;
            let page_root = builder.schema().index_of(schema::PAGE).ok();
            let roots: Vec<usize> = [Some(index_root), page_root].into_iter().flatten().collect();
            let mask = ProjectionMask::roots(builder.parquet_schema(), roots);
            let reader =
                builder.with_projection(mask).with_batch_size(8192).build().map_err(StoreError::parquet(&path))?;
            let mut row_id = entry.first_row;
            for batch in reader {
                let batch = batch.map_err(StoreError::arrow(&path))?;
                let chunk_index = batch
                    .column_by_name(schema::CHUNK_INDEX)
                    .and_then(|c| c.as_primitive_opt::<UInt32Type>())
                    .ok_or_else(|| corrupt(&path, "column \"chunk_index\" is not uint32"))?;
                let page = match batch.column_by_name(schema::PAGE) {
                    None => None,
                    Some(c) => Some(
                        c.as_primitive_opt::<UInt32Type>()
                            .ok_or_else(|| corrupt(&path, "column \"page\" is not uint32"))?,
                    ),
                };
                for i in 0..batch.num_rows() {
                    f(row_id, chunk_index.value(i), page.and_then(|p| p.is_valid(i).then(|| p.value(i))));
                    row_id += 1;
                }
            }
        }
        Ok(())
    }

    /// The hash and vector of each row in `row_ids`, in ascending row-id order.
    pub fn read_vectors(&self, row_ids: &[u64]) -> Result<Vec<(u64, String, Vec<f32>)>, StoreError> {
        let dims = self.dimensions()?;
        let mut out = Vec::with_capacity(row_ids.len());
        let wanted = |name: &str| name == schema::HASH || name == schema::EMBEDDING;
        self.read_selected(row_ids, wanted, None, |batch, row_ids, path| {
            let (hashes, vectors) = hashes_and_vectors(batch, path, dims)?;
            for (i, row_id) in row_ids.iter().enumerate() {
                out.push((*row_id, hashes.value(i).to_owned(), vectors[i * dims..(i + 1) * dims].to_vec()));
            }
            Ok(())
        })?;
        if out.len() != row_ids.iter().collect::<std::collections::BTreeSet<_>>().len() {
            return Err(corrupt(&self.dir, "some rows asked for were not found"));
        }
        Ok(out)
    }

    /// Reads the rows `row_ids` (file by file, each file's rows in ascending order), projecting the columns `keep`
    /// accepts; calls `f(batch, row ids of its rows, file)` for every record batch. Only the pages that hold the
    /// rows are read.
    fn read_selected(
        &self,
        row_ids: &[u64],
        keep: impl Fn(&str) -> bool,
        footers: Option<&Footers>,
        mut f: impl FnMut(&RecordBatch, &[u64], &Path) -> Result<(), StoreError>,
    ) -> Result<(), StoreError> {
        for (file, rows) in self.group(row_ids)? {
            let entry = &self.manifest.files[file];
            let path = self.dir.join(&entry.path);
            // With the offset index the selection skips whole pages instead of decompressing them.
            let options = ArrowReaderOptions::new().with_page_index_policy(PageIndexPolicy::Optional);
            let builder = match footers {
                None => self.open_file_with(&path, entry.rows, options)?,
                Some(footers) => {
                    let opened = File::open(&path).map_err(StoreError::io(&path))?;
                    let known = footers.0.lock().unwrap_or_else(|p| p.into_inner()).get(&path).cloned();
                    let metadata = match known {
                        Some(metadata) => metadata,
                        None => {
                            let metadata =
                                ArrowReaderMetadata::load(&opened, options).map_err(StoreError::parquet(&path))?;
                            let actual = metadata.metadata().file_metadata().num_rows();
                            if actual != entry.rows as i64 {
                                let message = format!("holds {actual} rows, the manifest says {}", entry.rows);
                                return Err(corrupt(&path, &message));
                            }
                            footers.0.lock().unwrap_or_else(|p| p.into_inner()).insert(path.clone(), metadata.clone());
                            metadata
                        }
                    };
                    ParquetRecordBatchReaderBuilder::new_with_metadata(opened, metadata)
                }
            };
            let roots: Vec<usize> = builder
                .schema()
                .fields()
                .iter()
                .enumerate()
                .filter(|(_, field)| keep(field.name()))
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
            let mut done = 0;
            for batch in reader {
                let batch = batch.map_err(StoreError::arrow(&path))?;
                let ids: Vec<u64> = rows
                    .get(done..done + batch.num_rows())
                    .ok_or_else(|| corrupt(&path, "more rows than selected"))?
                    .iter()
                    .map(|r| entry.first_row + r)
                    .collect();
                done += batch.num_rows();
                f(&batch, &ids, &path)?;
            }
        }
        Ok(())
    }

    /// Calls `f(row_ids, chunks, vectors)` for every record batch of whole rows, in row-id order.
    pub fn for_each_chunk_batch(
        &self,
        f: impl FnMut(&[u64], Vec<Chunk>, &[f32]) -> Result<(), StoreError>,
    ) -> Result<(), StoreError> {
        self.for_each_chunk_batch_of(|_, _| true, f)
    }

    /// [`Dataset::for_each_chunk_batch`] over the data files `wanted` keeps (given their first row id and row
    /// count): the others are not opened.
    pub fn for_each_chunk_batch_of(
        &self,
        wanted: impl Fn(u64, u64) -> bool,
        mut f: impl FnMut(&[u64], Vec<Chunk>, &[f32]) -> Result<(), StoreError>,
    ) -> Result<(), StoreError> {
        let dims = self.dimensions()?;
        for entry in self.manifest.files.iter().filter(|e| wanted(e.first_row, e.rows)) {
            let path = self.dir.join(&entry.path);
            let reader =
                self.open_file(&path, entry.rows)?.with_batch_size(4096).build().map_err(StoreError::parquet(&path))?;
            let mut next = entry.first_row;
            for batch in reader {
                let batch = batch.map_err(StoreError::arrow(&path))?;
                let stored = decode_rows(&batch, &path)?;
                let (hashes, vectors) = hashes_and_vectors(&batch, &path, dims)?;
                let chunks: Vec<Chunk> = stored
                    .into_iter()
                    .enumerate()
                    .map(|(i, s)| Chunk {
                        id: s.id,
                        doc: Arc::from(s.doc.as_str()),
                        chunk_index: s.chunk_index,
                        start: s.start,
                        end: s.end,
                        tokens: s.tokens,
                        text: s.text,
                        hash: hashes.value(i).to_owned(),
                        page: s.page,
                    })
                    .collect();
                let ids: Vec<u64> = (next..next + chunks.len() as u64).collect();
                next += chunks.len() as u64;
                f(&ids, chunks, vectors)?;
            }
        }
        Ok(())
    }

    /// Reads the data file at `index` in full and checks it: its row count and row ids, its columns, every text
    /// against its hash, every vector's size and values (for `repair`).
    pub fn check_file(&self, index: usize) -> Result<(), StoreError> {
        let dims = self.dimensions()?;
        let entry = self.manifest.files.get(index).ok_or_else(|| corrupt(&self.dir, "no such data file"))?;
        let path = self.dir.join(&entry.path);
        let reader =
            self.open_file(&path, entry.rows)?.with_batch_size(4096).build().map_err(StoreError::parquet(&path))?;
        let mut next = entry.first_row;
        for batch in reader {
            let batch = batch.map_err(StoreError::arrow(&path))?;
            let rows = decode_rows(&batch, &path)?;
            let (hashes, vectors) = hashes_and_vectors(&batch, &path, dims)?;
            // Datasets of schema version 1 have no row-id column.
            let ids = batch.column_by_name(schema::ROW_ID).and_then(|c| c.as_primitive_opt::<UInt64Type>());
            for (i, row) in rows.iter().enumerate() {
                let row_id = next + i as u64;
                if ids.is_some_and(|ids| ids.value(i) != row_id) {
                    return Err(corrupt(&path, &format!("row {row_id} carries another row id")));
                }
                if blake3::hash(row.text.as_bytes()).to_hex().as_str() != hashes.value(i) {
                    return Err(corrupt(&path, &format!("the text of row {row_id} does not match its hash")));
                }
                if vectors[i * dims..(i + 1) * dims].iter().any(|x| !x.is_finite()) {
                    return Err(corrupt(&path, &format!("the vector of row {row_id} is not finite")));
                }
            }
            next += rows.len() as u64;
        }
        if next - entry.first_row != entry.rows {
            return Err(corrupt(
                &path,
                &format!("{} rows read, the manifest lists {}", next - entry.first_row, entry.rows),
            ));
        }
        Ok(())
    }

    /// Calls `f` for every live document. A version 1 dataset has no documents table and calls it for none.
    pub fn for_each_doc(&self, f: impl FnMut(DocRecord)) -> Result<(), StoreError> {
        match &self.manifest.docs_file {
            Some(relative) => read_docs(&self.dir, relative, f),
            None => Ok(()),
        }
    }

    /// The dead-letter entries of this version (chunks missing from their documents), in file order.
    pub fn failed_chunks(&self) -> Result<Vec<FailedChunk>, StoreError> {
        let mut entries = Vec::new();
        if let Some(relative) = &self.manifest.failed_file {
            read_failed(&self.dir, relative, |e| entries.push(e))?;
        }
        Ok(entries)
    }

    /// Sorted ids of the live rows; `None` when every row id given out so far is live.
    pub fn live_rows(&self) -> Result<Option<Vec<u64>>, StoreError> {
        if self.manifest.all_rows_live() {
            return Ok(None);
        }
        let mut live = Vec::with_capacity(self.manifest.live_rows as usize);
        self.for_each_doc(|d| live.extend(d.rows))?;
        live.sort_unstable();
        Ok(Some(live))
    }

    /// The rows at `row_ids` (without vectors), in the order asked. Reads only the row groups and pages that hold
    /// them.
    pub fn fetch(&self, ordinals: &[u64]) -> Result<Vec<StoredChunk>, StoreError> {
        self.fetch_with(ordinals, None)
    }

    /// [`Dataset::fetch`], with the files' footers kept in `footers` between calls.
    pub fn fetch_with(&self, ordinals: &[u64], footers: Option<&Footers>) -> Result<Vec<StoredChunk>, StoreError> {
        let mut found = BTreeMap::new();
        self.read_selected(
            ordinals,
            // Only what a hit shows: not the vector, nor the hash and row id (a tenth of the pages to decompress).
            |name| ![schema::EMBEDDING, schema::HASH, schema::ROW_ID].contains(&name),
            footers,
            |batch, row_ids, path| {
                for (chunk, row_id) in decode_rows(batch, path)?.into_iter().zip(row_ids) {
                    found.insert(*row_id, chunk);
                }
                Ok(())
            },
        )?;
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
        self.open_file_with(path, rows, ArrowReaderOptions::new())
    }

    fn open_file_with(
        &self,
        path: &Path,
        rows: u64,
        options: ArrowReaderOptions,
    ) -> Result<ParquetRecordBatchReaderBuilder<File>, StoreError> {
        let file = File::open(path).map_err(StoreError::io(path))?;
        let builder =
            ParquetRecordBatchReaderBuilder::try_new_with_options(file, options).map_err(StoreError::parquet(path))?;
        let actual = builder.metadata().file_metadata().num_rows();
        if actual != rows as i64 {
            return Err(corrupt(path, &format!("holds {actual} rows, the manifest says {rows}")));
        }
        Ok(builder)
    }
}

/// A batch's hash column and its vectors as one flat slice, checked against the dataset's size.
fn hashes_and_vectors<'b>(
    batch: &'b RecordBatch,
    path: &Path,
    dims: usize,
) -> Result<(&'b arrow::array::StringArray, &'b [f32]), StoreError> {
    let hashes = batch
        .column_by_name(schema::HASH)
        .and_then(|c| c.as_string_opt::<i32>())
        .ok_or_else(|| corrupt(path, "hash is not a string"))?;
    let list = batch
        .column_by_name(schema::EMBEDDING)
        .and_then(|c| c.as_fixed_size_list_opt())
        .filter(|l| l.value_length() as usize == dims)
        .ok_or_else(|| corrupt(path, "embedding is not a list of the dataset's size"))?;
    let values = list
        .values()
        .as_primitive_opt::<Float32Type>()
        .ok_or_else(|| corrupt(path, "embedding values are not float32"))?;
    let at = list.offset() * dims;
    Ok((hashes, &values.values()[at..at + list.len() * dims]))
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
    // Files written before pages were kept have no page column.
    let page = match batch.column_by_name(schema::PAGE) {
        None => None,
        Some(c) => Some(
            c.as_primitive_opt::<UInt32Type>()
                .cloned()
                .ok_or_else(|| corrupt(path, "column \"page\" is not uint32"))?,
        ),
    };
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
            page: page.as_ref().and_then(|p| p.is_valid(i).then(|| p.value(i))),
        })
        .collect())
}
