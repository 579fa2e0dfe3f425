//! The durable embedding cache (`cache/`): every embedding response is saved here, as its own small Parquet file
//! made visible by an atomic rename, before its rows go to the data files. The data files of a run only become
//! visible when the run publishes its manifest, so without the cache a run killed half-way (SIGKILL, power loss,
//! OOM) would lose everything it paid for. The next run reads the cache and re-sends nothing it holds.
//!
//! Segments record the vector space they belong to (model and requested dimensions); segments of another space are
//! never used. The cache is emptied after a run that completes, since then every vector it held is in the data.

use std::collections::HashMap;
use std::fs::File;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use arrow::array::{AsArray, FixedSizeListArray, Float32Array, RecordBatch, StringArray};
use arrow::datatypes::{DataType, Field, Float32Type, Schema};
use parquet::arrow::ArrowWriter;
use parquet::arrow::arrow_reader::{ParquetRecordBatchReaderBuilder, RowSelection};
use parquet::file::metadata::KeyValue;
use parquet::file::properties::WriterProperties;

use super::StoreError;
use super::manifest::sync_dir;
use super::schema::embedding_type;

pub const CACHE_DIR: &str = "cache";
const META_SPACE: &str = "tars_index.vector_space";

/// Where a cached vector is: segment number (position in [`EmbeddingCache::segments`]) and row.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct CacheLoc {
    pub segment: u32,
    pub row: u32,
}

pub struct EmbeddingCache {
    dir: PathBuf,
    space: String,
    /// Segments found when the cache was opened (new ones are written, never read back, by this run).
    segments: Vec<PathBuf>,
    /// Names this run's segments apart from any earlier run's (a pid alone repeats after a reboot).
    run_id: u128,
    written: u64,
}

impl EmbeddingCache {
    /// Opens `<dataset>/cache` for vectors of `space`, deleting temp files a killed run left behind.
    pub fn open(dataset: &Path, space: &str) -> Result<Self, StoreError> {
        Self::open_with(dataset, space, false)
    }

    /// Opens the cache for lookups only (`--dry-run`): creates and deletes nothing.
    pub fn open_read_only(dataset: &Path, space: &str) -> Result<Self, StoreError> {
        Self::open_with(dataset, space, true)
    }

    fn open_with(dataset: &Path, space: &str, read_only: bool) -> Result<Self, StoreError> {
        let dir = dataset.join(CACHE_DIR);
        let mut segments = Vec::new();
        if !read_only {
            std::fs::create_dir_all(&dir).map_err(StoreError::io(&dir))?;
        }
        let entries = match std::fs::read_dir(&dir) {
            Ok(entries) => Some(entries),
            Err(e) if read_only && e.kind() == std::io::ErrorKind::NotFound => None,
            Err(e) => return Err(StoreError::Io { path: dir, source: e }),
        };
        for entry in entries.into_iter().flatten() {
            let path = entry.map_err(StoreError::io(&dir))?.path();
            match path.extension().and_then(|e| e.to_str()) {
                Some("parquet") => segments.push(path),
                Some("tmp") if !read_only => std::fs::remove_file(&path).map_err(StoreError::io(&path))?,
                _ => {}
            }
        }
        segments.sort();
        let run_id = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_nanos());
        Ok(Self { dir, space: space.to_owned(), segments, run_id, written: 0 })
    }

    pub fn segments(&self) -> usize {
        self.segments.len()
    }

    /// Calls `f(hash, location)` for every vector of this space in the cache. A segment that cannot be read (a
    /// damaged disk, another version's format) is skipped with a warning: the cache only saves money, it is never
    /// needed for correctness.
    pub fn scan(&self, mut f: impl FnMut(&str, CacheLoc)) {
        for (segment, path) in self.segments.iter().enumerate() {
            let result = (|| -> Result<(), StoreError> {
                let file = File::open(path).map_err(StoreError::io(path))?;
                let builder = ParquetRecordBatchReaderBuilder::try_new(file).map_err(StoreError::parquet(path))?;
                let space = builder.schema().metadata().get(META_SPACE).cloned();
                if space.as_deref() != Some(self.space.as_str()) {
                    return Ok(());
                }
                let mask = parquet::arrow::ProjectionMask::roots(builder.parquet_schema(), [0]);
                let mut row = 0u32;
                for batch in builder.with_projection(mask).build().map_err(StoreError::parquet(path))? {
                    let batch = batch.map_err(StoreError::arrow(path))?;
                    let hashes = batch.column(0).as_string_opt::<i32>().ok_or_else(|| StoreError::Corrupt {
                        path: path.clone(),
                        message: "hash column is not a string".into(),
                    })?;
                    for hash in hashes.iter().flatten() {
                        f(hash, CacheLoc { segment: segment as u32, row });
                        row += 1;
                    }
                }
                Ok(())
            })();
            if let Err(error) = result {
                tracing::warn!("embedding cache: ignoring {}: {error}", path.display());
            }
        }
    }

    /// The vectors at `rows` of `segment` (sorted, distinct), with their hashes, in that order.
    pub fn read(&self, segment: u32, rows: &[u32]) -> Result<Vec<(String, Vec<f32>)>, StoreError> {
        let path = self.segments.get(segment as usize).ok_or_else(|| StoreError::Corrupt {
            path: self.dir.clone(),
            message: format!("no cache segment {segment}"),
        })?;
        let file = File::open(path).map_err(StoreError::io(path))?;
        let builder = ParquetRecordBatchReaderBuilder::try_new(file).map_err(StoreError::parquet(path))?;
        let total = builder.metadata().file_metadata().num_rows() as usize;
        let selection = RowSelection::from_consecutive_ranges(rows.iter().map(|&r| r as usize..r as usize + 1), total);
        let reader = builder.with_row_selection(selection).build().map_err(StoreError::parquet(path))?;
        let mut out = Vec::with_capacity(rows.len());
        for batch in reader {
            let batch = batch.map_err(StoreError::arrow(path))?;
            let corrupt = |m: &str| StoreError::Corrupt { path: path.clone(), message: m.to_owned() };
            let hashes = batch.column(0).as_string_opt::<i32>().ok_or_else(|| corrupt("hash is not a string"))?;
            let list = batch.column(1).as_fixed_size_list_opt().ok_or_else(|| corrupt("embedding is not a list"))?;
            for i in 0..batch.num_rows() {
                let values = list.value(i);
                let values = values.as_primitive_opt::<Float32Type>().ok_or_else(|| corrupt("not float32"))?;
                out.push((hashes.value(i).to_owned(), values.values().to_vec()));
            }
        }
        if out.len() != rows.len() {
            return Err(StoreError::Corrupt {
                path: path.clone(),
                message: "rows missing from a cache segment".into(),
            });
        }
        Ok(out)
    }

    /// Saves one response durably: temp file, fsync, rename, fsync of the directory.
    pub fn append(&mut self, hashes: &[&str], vectors: &[f32], dimensions: usize) -> Result<(), StoreError> {
        if hashes.is_empty() {
            return Ok(());
        }
        let name = format!("seg-{:x}-{}-{:08}.parquet", self.run_id, std::process::id(), self.written);
        self.written += 1;
        let path = self.dir.join(name);
        let tmp = path.with_extension("parquet.tmp");
        let metadata = HashMap::from([(META_SPACE.to_owned(), self.space.clone())]);
        let schema = Arc::new(
            Schema::new(vec![
                Field::new("hash", DataType::Utf8, false),
                Field::new("embedding", embedding_type(dimensions), false),
            ])
            .with_metadata(metadata),
        );
        let item = Arc::new(Field::new("item", DataType::Float32, false));
        let values = Float32Array::from(vectors[..hashes.len() * dimensions].to_vec());
        let list = FixedSizeListArray::try_new(item, dimensions as i32, Arc::new(values), None)
            .map_err(StoreError::arrow(&tmp))?;
        let batch = RecordBatch::try_new(
            Arc::clone(&schema),
            vec![Arc::new(StringArray::from_iter_values(hashes.iter().copied())), Arc::new(list)],
        )
        .map_err(StoreError::arrow(&tmp))?;
        let props = WriterProperties::builder()
            .set_key_value_metadata(Some(vec![KeyValue::new(META_SPACE.to_owned(), self.space.clone())]))
            .build();
        let file = File::create(&tmp).map_err(StoreError::io(&tmp))?;
        let mut writer = ArrowWriter::try_new(file, schema, Some(props)).map_err(StoreError::parquet(&tmp))?;
        writer.write(&batch).map_err(StoreError::parquet(&tmp))?;
        let file = writer.into_inner().map_err(StoreError::parquet(&tmp))?;
        file.sync_data().map_err(StoreError::io(&tmp))?;
        drop(file);
        std::fs::rename(&tmp, &path).map_err(StoreError::io(&path))?;
        sync_dir(&self.dir);
        Ok(())
    }

    /// Removes every segment (after a complete run, whose data holds all of them).
    pub fn clear(&self) -> Result<(), StoreError> {
        for entry in std::fs::read_dir(&self.dir).map_err(StoreError::io(&self.dir))? {
            let path = entry.map_err(StoreError::io(&self.dir))?.path();
            if path.extension().is_some_and(|e| e == "parquet" || e == "tmp") {
                std::fs::remove_file(&path).map_err(StoreError::io(&path))?;
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn segments_survive_reopen_and_other_spaces_are_ignored() {
        let dir = tempfile::tempdir().expect("tempdir");
        let mut cache = EmbeddingCache::open(dir.path(), "m|none").expect("open");
        cache.append(&["a", "b"], &[1.0, 2.0, 3.0, 4.0], 2).expect("append");
        cache.append(&["c"], &[5.0, 6.0], 2).expect("append");
        let mut other = EmbeddingCache::open(dir.path(), "other|none").expect("open");
        other.append(&["z"], &[9.0, 9.0], 2).expect("append");
        std::fs::write(dir.path().join("cache/seg-1-x.parquet.tmp"), b"torn").expect("write");

        let cache = EmbeddingCache::open(dir.path(), "m|none").expect("reopen");
        assert!(!dir.path().join("cache/seg-1-x.parquet.tmp").exists());
        let mut found = HashMap::new();
        cache.scan(|hash, loc| {
            found.insert(hash.to_owned(), loc);
        });
        assert_eq!(found.len(), 3, "{found:?}");
        let b = found["b"];
        let c = found["c"];
        assert_eq!(cache.read(b.segment, &[b.row]).expect("read"), [("b".to_owned(), vec![3.0, 4.0])]);
        assert_eq!(cache.read(c.segment, &[c.row]).expect("read"), [("c".to_owned(), vec![5.0, 6.0])]);
        cache.clear().expect("clear");
        assert_eq!(EmbeddingCache::open(dir.path(), "m|none").expect("open").segments(), 0);
    }
}
