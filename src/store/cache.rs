//! The durable embedding cache (`cache/`): every embedding response is saved here, appended to the run's log and
//! fsynced, before its rows go to the data files. The data files of a run only become
//! visible when the run publishes its manifest, so without the cache a run killed half-way (SIGKILL, power loss,
//! OOM) would lose everything it paid for. The next run reads the cache and re-sends nothing it holds.
//!
//! Segments record the vector space they belong to (model and requested dimensions); segments of another space are
//! never used. The cache is emptied after a run that completes, since then every vector it held is in the data.

use std::collections::HashMap;
use std::fs::{File, OpenOptions};
use std::io::{BufReader, ErrorKind, Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use super::StoreError;
use super::manifest::sync_dir;

pub const CACHE_DIR: &str = "cache";
/// Opens every log file; the vector space follows it.
const MAGIC: &[u8; 16] = b"tars-index-cch1\n";
const LOG_EXTENSION: &str = "log";
/// Bytes before each record's payload: its length (u32 LE) and the first 8 bytes of its blake3.
const RECORD_HEADER: usize = 12;

/// Where a cached vector is: segment number (position in [`EmbeddingCache::segments`]) and row within it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct CacheLoc {
    pub segment: u32,
    pub row: u32,
}

/// One response in a segment: its first row, where its payload starts, and its size.
#[derive(Debug, Clone, Copy)]
struct Record {
    first_row: u32,
    rows: u32,
    offset: u64,
    len: u32,
}

/// The cache: one append-only log per run. Each response is one record (length, checksum, hashes, vectors),
/// appended and fsynced before its rows go anywhere else; a record torn by a crash fails its checksum and ends the
/// readable part of its log. Appending to one file costs one `fdatasync` per response, where a file per response
/// cost a create, a rename and two syncs.
pub struct EmbeddingCache {
    dir: PathBuf,
    space: String,
    /// Logs found when the cache was opened (this run appends to its own, never read back by it).
    segments: Vec<PathBuf>,
    /// Record positions by segment, filled by [`EmbeddingCache::scan`] or on first read.
    index: Mutex<HashMap<u32, Arc<[Record]>>>,
    /// Names this run's log apart from any earlier run's (a pid alone repeats after a reboot).
    run_id: u128,
    log: Option<File>,
    /// Set for a dataset on object storage, which cannot append: logs are closed once they hold
    /// [`ROLL_BYTES`] or are [`ROLL_SECS`] old and their names (`cache/<file>`) sent here to be uploaded, so a lost
    /// machine loses at most that much; and `clear` is left to whoever commits the version.
    uploads: Option<SegmentSink>,
    /// This run's logs so far, and the size and age of the open one.
    log_seq: u32,
    log_bytes: u64,
    log_started: Option<std::time::Instant>,
}

/// Receives the names of closed cache logs (relative to the dataset) for upload.
pub type SegmentSink = tokio::sync::mpsc::UnboundedSender<String>;
const ROLL_BYTES: u64 = 8 << 20;
const ROLL_SECS: u64 = 1;

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
            Err(e) if read_only && e.kind() == ErrorKind::NotFound => None,
            Err(e) => return Err(StoreError::Io { path: dir, source: e }),
        };
        for entry in entries.into_iter().flatten() {
            let path = entry.map_err(StoreError::io(&dir))?.path();
            match path.extension().and_then(|e| e.to_str()) {
                Some(LOG_EXTENSION) => segments.push(path),
                // Segments in the earlier Parquet format: not read, removed with the rest after a complete run.
                Some("parquet") => tracing::debug!("embedding cache: ignoring {} (older format)", path.display()),
                Some("tmp") if !read_only => std::fs::remove_file(&path).map_err(StoreError::io(&path))?,
                _ => {}
            }
        }
        segments.sort();
        let run_id = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_nanos());
        Ok(Self {
            dir,
            space: space.to_owned(),
            segments,
            index: Mutex::new(HashMap::new()),
            run_id,
            log: None,
            uploads: None,
            log_seq: 0,
            log_bytes: 0,
            log_started: None,
        })
    }

    /// Rolls this run's log into immutable segments whose names go to `sink` (see [`EmbeddingCache::uploads`]).
    pub fn with_uploads(mut self, sink: SegmentSink) -> Self {
        self.uploads = Some(sink);
        self
    }

    pub fn segments(&self) -> usize {
        self.segments.len()
    }

    /// Calls `f(hash, location)` for every vector of this space in the cache. A log that cannot be read (a damaged
    /// disk, another version's format) is skipped with a warning, and a torn last record ends its log: the cache
    /// only saves money, it is never needed for correctness.
    pub fn scan(&self, mut f: impl FnMut(&str, CacheLoc)) {
        for (segment, path) in self.segments.iter().enumerate() {
            let segment = segment as u32;
            let mut records = Vec::new();
            let result = read_log(path, &self.space, |record, payload| {
                let (hashes, _, _) = parse_payload(payload).ok_or("malformed record")?;
                for (i, hash) in hashes.into_iter().enumerate() {
                    f(hash, CacheLoc { segment, row: record.first_row + i as u32 });
                }
                records.push(record);
                Ok(())
            });
            if let Err(error) = result {
                tracing::warn!("embedding cache: ignoring the rest of {}: {error}", path.display());
            }
            if let Ok(mut index) = self.index.lock() {
                index.insert(segment, records.into());
            }
        }
    }

    /// The vectors at `rows` of `segment` (sorted, distinct), with their hashes, in that order.
    pub fn read(&self, segment: u32, rows: &[u32]) -> Result<Vec<(String, Vec<f32>)>, StoreError> {
        let path = self.segments.get(segment as usize).ok_or_else(|| StoreError::Corrupt {
            path: self.dir.clone(),
            message: format!("no cache segment {segment}"),
        })?;
        let corrupt = |message: &str| StoreError::Corrupt { path: path.clone(), message: message.to_owned() };
        let records = self.records(segment, path)?;
        let mut file = File::open(path).map_err(StoreError::io(path))?;
        let mut out = Vec::with_capacity(rows.len());
        let mut at = 0;
        while at < rows.len() {
            let i = records.partition_point(|r| r.first_row + r.rows <= rows[at]);
            let record = records.get(i).filter(|r| r.first_row <= rows[at]).ok_or_else(|| corrupt("row not cached"))?;
            let payload = read_record(&mut file, record).map_err(StoreError::io(path))?;
            let (hashes, dims, vectors) = parse_payload(&payload).ok_or_else(|| corrupt("malformed record"))?;
            while let Some(&row) = rows.get(at).filter(|&&r| r < record.first_row + record.rows) {
                let k = (row - record.first_row) as usize;
                out.push((hashes[k].to_owned(), vectors[k * dims..(k + 1) * dims].to_vec()));
                at += 1;
            }
        }
        Ok(out)
    }

    fn records(&self, segment: u32, path: &Path) -> Result<Arc<[Record]>, StoreError> {
        let mut index = self
            .index
            .lock()
            .map_err(|_| StoreError::Corrupt { path: self.dir.clone(), message: "cache index lock poisoned".into() })?;
        if let Some(records) = index.get(&segment) {
            return Ok(Arc::clone(records));
        }
        let mut records = Vec::new();
        read_log(path, &self.space, |record, _| {
            records.push(record);
            Ok(())
        })
        .map_err(|message| StoreError::Corrupt { path: path.to_path_buf(), message })?;
        let records: Arc<[Record]> = records.into();
        index.insert(segment, Arc::clone(&records));
        Ok(records)
    }

    /// Saves one response durably: appended to this run's log and fsynced before returning.
    pub fn append(&mut self, hashes: &[&str], vectors: &[f32], dimensions: usize) -> Result<(), StoreError> {
        if hashes.is_empty() {
            return Ok(());
        }
        let path = self.dir.join(self.log_name());
        let too_long = || StoreError::Corrupt { path: path.clone(), message: "response too large to cache".into() };
        let mut payload = Vec::with_capacity(8 + hashes.len() * 66 + hashes.len() * dimensions * 4);
        payload.extend_from_slice(&u32::try_from(hashes.len()).map_err(|_| too_long())?.to_le_bytes());
        payload.extend_from_slice(&u32::try_from(dimensions).map_err(|_| too_long())?.to_le_bytes());
        for hash in hashes {
            payload.push(u8::try_from(hash.len()).map_err(|_| too_long())?);
            payload.extend_from_slice(hash.as_bytes());
        }
        for value in &vectors[..hashes.len() * dimensions] {
            payload.extend_from_slice(&value.to_le_bytes());
        }
        let mut record = Vec::with_capacity(RECORD_HEADER + payload.len());
        record.extend_from_slice(&u32::try_from(payload.len()).map_err(|_| too_long())?.to_le_bytes());
        record.extend_from_slice(&blake3::hash(&payload).as_bytes()[..8]);
        record.extend_from_slice(&payload);
        let log = match self.log.take() {
            Some(log) => log,
            None => self.create_log(&path)?,
        };
        let log = self.log.insert(log);
        log.write_all(&record).map_err(StoreError::io(&path))?;
        log.sync_data().map_err(StoreError::io(&path))?;
        self.log_bytes += record.len() as u64;
        let started = *self.log_started.get_or_insert_with(std::time::Instant::now);
        if let Some(sink) = &self.uploads
            && (self.log_bytes >= ROLL_BYTES || started.elapsed().as_secs() >= ROLL_SECS)
        {
            self.log = None;
            let _ = sink.send(format!("{CACHE_DIR}/{}", self.log_name()));
            (self.log_seq, self.log_bytes, self.log_started) = (self.log_seq + 1, 0, None);
        }
        Ok(())
    }

    fn log_name(&self) -> String {
        format!("seg-{:x}-{}-{}.{LOG_EXTENSION}", self.run_id, std::process::id(), self.log_seq)
    }

    /// Creates this run's log with its header, durably (the file and its directory entry).
    fn create_log(&self, path: &Path) -> Result<File, StoreError> {
        let mut log = OpenOptions::new().create_new(true).append(true).open(path).map_err(StoreError::io(path))?;
        let mut header = Vec::with_capacity(MAGIC.len() + 4 + self.space.len());
        header.extend_from_slice(MAGIC);
        header.extend_from_slice(&(self.space.len() as u32).to_le_bytes());
        header.extend_from_slice(self.space.as_bytes());
        log.write_all(&header).map_err(StoreError::io(path))?;
        log.sync_all().map_err(StoreError::io(path))?;
        sync_dir(&self.dir);
        Ok(log)
    }

    /// Removes every segment (after a complete run, whose data holds all of them); for a dataset on object storage
    /// that waits until the version is committed ([`clear_cache`]).
    pub fn clear(&self) -> Result<(), StoreError> {
        if self.uploads.is_some() {
            return Ok(());
        }
        clear_cache(self.dir.parent().unwrap_or(Path::new(".")))
    }
}

/// Removes every segment of the cache of the dataset in `dataset`.
pub fn clear_cache(dataset: &Path) -> Result<(), StoreError> {
    let dir = dataset.join(CACHE_DIR);
    let entries = match std::fs::read_dir(&dir) {
        Ok(entries) => entries,
        Err(e) if e.kind() == ErrorKind::NotFound => return Ok(()),
        Err(e) => return Err(StoreError::Io { path: dir, source: e }),
    };
    for entry in entries {
        let path = entry.map_err(StoreError::io(&dir))?.path();
        if path.extension().is_some_and(|e| e == LOG_EXTENSION || e == "parquet" || e == "tmp") {
            std::fs::remove_file(&path).map_err(StoreError::io(&path))?;
        }
    }
    Ok(())
}

/// Reads a log of `space` record by record, checking each; stops quietly at a torn last record. A log of another
/// space holds nothing for this run.
fn read_log(
    path: &Path,
    space: &str,
    mut f: impl FnMut(Record, &[u8]) -> Result<(), &'static str>,
) -> Result<(), String> {
    let file = File::open(path).map_err(|e| e.to_string())?;
    let mut reader = BufReader::with_capacity(1 << 16, file);
    let mut magic = [0u8; 16];
    reader.read_exact(&mut magic).map_err(|_| "no header".to_owned())?;
    if &magic != MAGIC {
        return Err("not a tars-index cache log".into());
    }
    let mut len = [0u8; 4];
    reader.read_exact(&mut len).map_err(|_| "no header".to_owned())?;
    let mut stored_space = vec![0u8; u32::from_le_bytes(len) as usize];
    reader.read_exact(&mut stored_space).map_err(|_| "no header".to_owned())?;
    if stored_space != space.as_bytes() {
        return Ok(());
    }
    let mut offset = (MAGIC.len() + 4 + stored_space.len()) as u64;
    let mut first_row = 0u32;
    let mut payload = Vec::new();
    loop {
        let mut header = [0u8; RECORD_HEADER];
        match reader.read_exact(&mut header) {
            Ok(()) => {}
            Err(e) if e.kind() == ErrorKind::UnexpectedEof => return Ok(()), // the end, or a torn header
            Err(e) => return Err(e.to_string()),
        }
        let len = u32::from_le_bytes([header[0], header[1], header[2], header[3]]);
        payload.resize(len as usize, 0);
        if reader.read_exact(&mut payload).is_err() || blake3::hash(&payload).as_bytes()[..8] != header[4..] {
            tracing::debug!("embedding cache: {} ends with a torn record", path.display());
            return Ok(());
        }
        let rows = payload.get(..4).map_or(0, |b| u32::from_le_bytes([b[0], b[1], b[2], b[3]]));
        let record = Record { first_row, rows, offset: offset + RECORD_HEADER as u64, len };
        f(record, &payload)?;
        first_row += rows;
        offset += (RECORD_HEADER + payload.len()) as u64;
    }
}

fn read_record(file: &mut File, record: &Record) -> std::io::Result<Vec<u8>> {
    file.seek(SeekFrom::Start(record.offset))?;
    let mut payload = vec![0u8; record.len as usize];
    file.read_exact(&mut payload)?;
    Ok(payload)
}

/// A record's hashes, vector size and vectors; `None` when it does not add up.
fn parse_payload(payload: &[u8]) -> Option<(Vec<&str>, usize, Vec<f32>)> {
    let u32_at = |at: usize| payload.get(at..at + 4).map(|b| u32::from_le_bytes([b[0], b[1], b[2], b[3]]));
    let (rows, dims) = (u32_at(0)? as usize, u32_at(4)? as usize);
    let mut at = 8;
    let mut hashes = Vec::with_capacity(rows);
    for _ in 0..rows {
        let len = *payload.get(at)? as usize;
        hashes.push(std::str::from_utf8(payload.get(at + 1..at + 1 + len)?).ok()?);
        at += 1 + len;
    }
    let floats = payload.get(at..)?;
    if floats.len() != rows.checked_mul(dims)?.checked_mul(4)? {
        return None;
    }
    let vectors = floats.chunks_exact(4).map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]])).collect();
    Some((hashes, dims, vectors))
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
        // A crash in the middle of an append leaves a torn record at the end of the log: it ends the readable part.
        drop((cache, other));
        for entry in std::fs::read_dir(dir.path().join("cache")).expect("cache dir") {
            let path = entry.expect("entry").path();
            if path.extension().is_some_and(|e| e == "log") {
                let mut log = std::fs::OpenOptions::new().append(true).open(&path).expect("open log");
                log.write_all(&[200, 0, 0, 0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 9, 9]).expect("append torn record");
            }
        }

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
        // Rows of two records in one read.
        let a = found["a"];
        assert_eq!(
            cache.read(a.segment, &[a.row, b.row, c.row]).expect("read"),
            [("a".to_owned(), vec![1.0, 2.0]), ("b".to_owned(), vec![3.0, 4.0]), ("c".to_owned(), vec![5.0, 6.0])]
        );
        cache.clear().expect("clear");
        assert_eq!(EmbeddingCache::open(dir.path(), "m|none").expect("open").segments(), 0);
    }
}
