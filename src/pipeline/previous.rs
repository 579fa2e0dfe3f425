//! What the published version of a dataset offers a new run: the documents it holds (to tell unchanged, changed and
//! deleted ones apart) and every vector already paid for, in the data files or in the embedding cache, by text hash.

use std::collections::{BTreeMap, HashMap};
use std::path::Path;

use crate::error::Chain;
use crate::store::{CacheLoc, Dataset, DocRecord, EmbeddingCache, FailedChunk, Manifest, StoreError};

/// Where an already-embedded text's vector can be read.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum VectorLoc {
    /// A row of the published dataset.
    Row(u64),
    /// A row of a cache segment.
    Cache(CacheLoc),
}

/// A text hash, shortened to 128 bits for the lookup table (the full hash is checked when the vector is read).
pub type TextKey = u128;

/// `None` for a string that is not a hex blake3 hash (a damaged row); such rows are simply not reused.
pub fn text_key(hash: &str) -> Option<TextKey> {
    hash.get(..32).and_then(|h| u128::from_str_radix(h, 16).ok())
}

/// The state a run starts from.
#[derive(Default)]
pub struct Previous {
    /// The published version, if any (reused or not, it stays readable until this run publishes).
    pub manifest: Option<Manifest>,
    /// Set when the new version builds on the published one (same vector space, no `--overwrite`).
    pub dataset: Option<Dataset>,
    /// By name, ordered (to find every document below a folder).
    pub docs: BTreeMap<String, DocRecord>,
    /// File key → names of the documents read from it (ordered, to find every file under a directory).
    pub by_file: BTreeMap<String, Vec<String>>,
    pub vectors: HashMap<TextKey, VectorLoc>,
    /// The chunking settings changed: every document is chunked again (vectors of identical texts are reused).
    pub rechunk: bool,
    /// Other metadata fields are asked for than last time: every file is read again for them (nothing is embedded
    /// again for that).
    pub reread: bool,
    /// The dead-letter entries of the published version, by document.
    pub failed: HashMap<String, Vec<FailedChunk>>,
    /// The names of the published version's documents when the new version replaces it (`--overwrite`, a new
    /// model): all of them that the run does not find are deleted, which the mass-deletion guard counts.
    pub replaced: Vec<String>,
}

impl Previous {
    /// Reads what `dir` holds for a run with the settings in `settings`. `fresh` (`--overwrite`) reuses nothing and,
    /// unless `read_only` (`--dry-run`), empties the cache. `guarded`: deletions are limited, so the documents a
    /// new version replaces must be counted (an unreadable documents table is then an error).
    pub fn load(
        dir: &Path,
        settings: &Manifest,
        fresh: bool,
        cache: &EmbeddingCache,
        read_only: bool,
        guarded: bool,
    ) -> Result<Self, StoreError> {
        let manifest = match Manifest::load(dir) {
            Ok(m) => Some(m),
            Err(StoreError::NotADataset { .. }) => None,
            Err(e) if fresh => {
                tracing::warn!("ignoring the existing dataset (--overwrite): {}", Chain(&e));
                None
            }
            Err(e) => return Err(e),
        };
        let mut previous = Previous { manifest: manifest.clone(), ..Previous::default() };
        let replaced_names = |manifest: &Manifest| -> Result<Vec<String>, StoreError> {
            let mut names = Vec::new();
            let dataset = Dataset { dir: dir.to_path_buf(), manifest: manifest.clone() };
            match dataset.for_each_doc(|record| names.push(record.doc)) {
                Ok(()) => Ok(names),
                Err(e) if guarded => {
                    tracing::error!(
                        "the documents the new version replaces cannot be counted for --max-delete; pass \
                         --allow-mass-delete to replace the dataset anyway"
                    );
                    Err(e)
                }
                Err(e) => {
                    tracing::warn!("could not count the documents the new version replaces: {}", Chain(&e));
                    Ok(names)
                }
            }
        };
        if fresh {
            previous.replaced = manifest.as_ref().map(replaced_names).transpose()?.unwrap_or_default();
            if cache.segments() > 0 && !read_only {
                cache.clear()?;
            }
            return Ok(previous);
        }
        cache.scan(|hash, loc| {
            if let Some(key) = text_key(hash) {
                previous.vectors.insert(key, VectorLoc::Cache(loc));
            }
        });
        let Some(manifest) = manifest else { return Ok(previous) };
        if !manifest.same_vector_space(settings) {
            tracing::warn!(
                "the dataset was embedded with {} (dimensions {:?}); this run uses {} (dimensions {:?}), so every \
                 chunk is embedded again and the new version replaces the old one when complete",
                manifest.model,
                manifest.requested_dimensions,
                settings.model,
                settings.requested_dimensions
            );
            previous.replaced = replaced_names(&manifest)?;
            return Ok(previous);
        }
        previous.rechunk = manifest.chunking != settings.chunking;
        previous.reread = manifest.metadata_spec != settings.metadata_spec;
        if previous.reread && !previous.rechunk {
            tracing::info!("other metadata fields asked for than last time: every file is read again for them");
        }
        if previous.rechunk {
            tracing::info!(
                "chunking settings changed: every document is chunked again; unchanged texts keep their vectors"
            );
        }
        let dataset = Dataset { dir: dir.to_path_buf(), manifest };
        dataset.for_each_doc(|record| {
            previous.by_file.entry(record.file.clone()).or_default().push(record.doc.clone());
            previous.docs.insert(record.doc.clone(), record);
        })?;
        if dataset.manifest.rows > 0 {
            dataset.for_each_hash(|row, hash| {
                if let Some(key) = text_key(hash) {
                    previous.vectors.insert(key, VectorLoc::Row(row));
                }
            })?;
        }
        for entry in dataset.failed_chunks()? {
            previous.failed.entry(entry.doc.clone()).or_default().push(entry);
        }
        previous.dataset = Some(dataset);
        Ok(previous)
    }

    /// The chunks `record` is missing, from the dead-letter file, when they account for all of them (so the
    /// document can be completed without reading its source again), with their chunk indexes.
    pub fn missing_chunks(&self, record: &DocRecord) -> Option<(&[FailedChunk], Vec<u32>)> {
        let entries = self.failed.get(&record.doc)?;
        let total = record.rows.len() as u64 + u64::from(record.missing);
        let mut indexes: Vec<u32> = entries.iter().map(|e| e.chunk_index).collect();
        indexes.sort_unstable();
        indexes.dedup();
        let consistent = record.missing > 0
            && indexes.len() == entries.len()
            && entries.len() == record.missing as usize
            && indexes.last().is_some_and(|&i| u64::from(i) < total);
        consistent.then_some((entries.as_slice(), indexes))
    }

    /// Whether the new version builds on the published one.
    pub fn appends(&self) -> bool {
        self.dataset.is_some()
    }

    /// Whether a document read now must be chunked: it is new, its text changed, or the chunking did.
    pub fn needs_chunks(&self, doc: &str, content_hash: &str) -> bool {
        self.rechunk || self.docs.get(doc).is_none_or(|old| old.content_hash != content_hash)
    }

    /// Whether a file may be skipped unread: every document read from it last time is unchanged if the file is.
    pub fn file_unchanged(&self, file: &str, size: u64, mtime_ns: i64, format: crate::source::Format) -> bool {
        if self.rechunk || self.reread {
            return false;
        }
        let Some(names) = self.by_file.get(file) else { return false };
        // A document missing chunks is read again, to send them.
        names.iter().all(|name| {
            self.docs.get(name).is_some_and(|d| {
                // Read as another format last time (or before formats were recorded): read it again.
                d.stat_trusted && d.size == size && d.mtime_ns == mtime_ns && d.missing == 0 && d.format == Some(format)
            })
        })
    }
}
