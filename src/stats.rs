//! Run counters shared by every stage.
//!
//! Stages never print: they bump these counters, and the CLI reads them for the progress line and the final
//! summary. Relaxed atomics are enough because every figure is an independent monotonic count.

use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use serde::Serialize;

/// Live counters of one run.
#[derive(Debug, Default)]
pub struct Stats {
    pub documents: AtomicU64,
    pub docs_new: AtomicU64,
    pub docs_changed: AtomicU64,
    pub docs_unchanged: AtomicU64,
    /// Documents whose text is unchanged but whose metadata changed: updated without re-embedding.
    pub docs_metadata_updated: AtomicU64,
    pub docs_deleted: AtomicU64,
    pub docs_duplicate: AtomicU64,
    /// Documents whose missing chunks (from the dead-letter file) were sent again.
    pub docs_retried: AtomicU64,
    pub documents_lossy_utf8: AtomicU64,
    /// Entries not read (binary, too large, links to directories, broken links, special files).
    pub files_skipped: AtomicU64,
    pub records_skipped: AtomicU64,
    /// Metadata values stored as null: of the wrong type, or missing from their record.
    pub metadata_nulls: AtomicU64,
    /// Files and directories that could not be read.
    pub read_errors: AtomicU64,
    /// Documents that kept their previous version because their file could not be read.
    pub docs_unreadable: AtomicU64,
    /// Entries left out by `--include`/`--exclude`.
    pub entries_excluded: AtomicU64,
    /// Hidden entries inside directory inputs (a hidden directory counts once).
    pub entries_hidden: AtomicU64,
    /// Images not read because no caption model was set (what was read from them before is kept).
    pub images_skipped: AtomicU64,
    /// Images described by the caption model in this run, and those whose caption came from the caption cache.
    pub images_captioned: AtomicU64,
    pub captions_cached: AtomicU64,
    /// Images that could not be captioned (listed in `named.caption_failures`), and the documents that kept their
    /// previous caption because of it.
    pub captions_failed: AtomicU64,
    pub docs_caption_kept: AtomicU64,
    /// Tokens the caption model reported (prompt, images included, and completion).
    pub caption_prompt_tokens: AtomicU64,
    pub caption_completion_tokens: AtomicU64,
    /// In a dry run: images without a cached caption, and the prompt tokens their images would cost.
    pub images_to_caption: AtomicU64,
    pub caption_tokens_estimated: AtomicU64,
    /// The entries behind `files_skipped` and `read_errors`, by path.
    pub named: Mutex<NamedEntries>,
    pub chunks: AtomicU64,
    pub chunks_embedded: AtomicU64,
    /// Chunks written with a vector embedded before (by an earlier version or an interrupted run).
    pub chunks_reused: AtomicU64,
    /// Rows of deleted or changed documents that left the dataset.
    pub chunks_removed: AtomicU64,
    pub tokens_embedded: AtomicU64,
    pub usage_tokens: AtomicU64,
    pub chunks_failed: AtomicU64,
    pub requests: AtomicU64,
    /// Requests split in two to isolate an input the server refused.
    pub batches_split: AtomicU64,
    /// Requests sent to the fallback endpoint.
    pub fallback_requests: AtomicU64,
    pub requests_in_flight: AtomicU64,
    pub retries: AtomicU64,
    /// 429 rate-limit responses (not quota).
    pub rate_limited: AtomicU64,
    pub rows_written: AtomicU64,
    /// Set once the source is exhausted, so the progress line can show an ETA.
    pub source_done: std::sync::atomic::AtomicBool,
    /// Bytes of input read so far (or passed over as unchanged).
    pub input_bytes_read: std::sync::Arc<AtomicU64>,
    /// Of those, the bytes whose documents the planner has taken: the progress bar's position.
    pub input_bytes_planned: AtomicU64,
    /// What the pre-scan found so far (files and bytes to read), and whether it is done: the bar's total.
    pub input_files_total: AtomicU64,
    pub input_bytes_total: AtomicU64,
    pub prescan_done: std::sync::atomic::AtomicBool,
}

/// Entries named in the report: the first [`NAMED_ENTRIES`] of each kind (the counters have them all).
pub const NAMED_ENTRIES: usize = 1000;

/// An entry of the input and what happened to it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Entry {
    pub path: String,
    pub reason: String,
}

#[derive(Debug, Clone, Default, Serialize)]
pub struct NamedEntries {
    pub not_read: Vec<Entry>,
    pub read_errors: Vec<Entry>,
    /// Records skipped (`path:line` or `path row N`).
    pub records_skipped: Vec<Entry>,
    /// Metadata values stored as null, by record.
    pub metadata_nulls: Vec<Entry>,
    /// Images the caption model did not describe, and why.
    pub caption_failures: Vec<Entry>,
}

impl Stats {
    /// Records an entry that was not read.
    pub fn not_read(&self, path: String, reason: String) {
        Self::add(&self.files_skipped, 1);
        self.name(|n| &mut n.not_read, path, reason);
    }

    /// Records a file or directory that could not be read.
    pub fn read_error(&self, path: String, reason: String) {
        Self::add(&self.read_errors, 1);
        self.name(|n| &mut n.read_errors, path, reason);
    }

    /// Records a record that was skipped.
    pub fn record_skipped(&self, origin: String, reason: String) {
        Self::add(&self.records_skipped, 1);
        self.name(|n| &mut n.records_skipped, origin, reason);
    }

    /// Records an image that could not be captioned.
    pub fn caption_failed(&self, path: String, reason: String) {
        Self::add(&self.captions_failed, 1);
        self.name(|n| &mut n.caption_failures, path, reason);
    }

    /// Records a metadata value stored as null.
    pub fn metadata_null(&self, origin: String, problem: String) {
        Self::add(&self.metadata_nulls, 1);
        self.name(|n| &mut n.metadata_nulls, origin, problem);
    }

    fn name(&self, list: impl FnOnce(&mut NamedEntries) -> &mut Vec<Entry>, path: String, reason: String) {
        if let Ok(mut named) = self.named.lock() {
            let list = list(&mut named);
            if list.len() < NAMED_ENTRIES {
                list.push(Entry { path, reason });
            }
        }
    }

    pub fn add(counter: &AtomicU64, n: u64) {
        counter.fetch_add(n, Ordering::Relaxed);
    }

    pub fn get(counter: &AtomicU64) -> u64 {
        counter.load(Ordering::Relaxed)
    }

    /// A plain copy of the counters, for the summary.
    pub fn snapshot(&self, elapsed: Duration) -> Summary {
        let g = Self::get;
        Summary {
            documents: g(&self.documents),
            docs_new: g(&self.docs_new),
            docs_changed: g(&self.docs_changed),
            docs_unchanged: g(&self.docs_unchanged),
            docs_metadata_updated: g(&self.docs_metadata_updated),
            docs_deleted: g(&self.docs_deleted),
            docs_duplicate: g(&self.docs_duplicate),
            docs_retried: g(&self.docs_retried),
            documents_lossy_utf8: g(&self.documents_lossy_utf8),
            files_skipped: g(&self.files_skipped),
            records_skipped: g(&self.records_skipped),
            metadata_nulls: g(&self.metadata_nulls),
            read_errors: g(&self.read_errors),
            docs_unreadable: g(&self.docs_unreadable),
            entries_excluded: g(&self.entries_excluded),
            entries_hidden: g(&self.entries_hidden),
            images: Images {
                skipped: g(&self.images_skipped),
                captioned: g(&self.images_captioned),
                cached: g(&self.captions_cached),
                failed: g(&self.captions_failed),
                kept: g(&self.docs_caption_kept),
                prompt_tokens: g(&self.caption_prompt_tokens),
                completion_tokens: g(&self.caption_completion_tokens),
                to_caption: g(&self.images_to_caption),
                estimated_image_tokens: g(&self.caption_tokens_estimated),
            },
            named: self.named.lock().map(|n| n.clone()).unwrap_or_default(),
            chunks: g(&self.chunks),
            chunks_embedded: g(&self.chunks_embedded),
            chunks_reused: g(&self.chunks_reused),
            chunks_removed: g(&self.chunks_removed),
            chunks_failed: g(&self.chunks_failed),
            tokens: g(&self.tokens_embedded),
            usage_tokens: g(&self.usage_tokens),
            requests: g(&self.requests),
            batches_split: g(&self.batches_split),
            fallback_requests: g(&self.fallback_requests),
            retries: g(&self.retries),
            rate_limited: g(&self.rate_limited),
            rows_written: g(&self.rows_written),
            elapsed_secs: elapsed.as_secs_f64(),
        }
    }
}

/// What a finished run reports (printed as text, or as JSON with `--json`).
#[derive(Debug, Clone, Serialize)]
pub struct Summary {
    /// Documents read (unchanged files that were not read count as unchanged, not here).
    pub documents: u64,
    pub docs_new: u64,
    pub docs_changed: u64,
    pub docs_unchanged: u64,
    pub docs_metadata_updated: u64,
    pub docs_deleted: u64,
    /// Documents whose name repeated one read earlier in the run (skipped).
    pub docs_duplicate: u64,
    pub docs_retried: u64,
    pub documents_lossy_utf8: u64,
    pub files_skipped: u64,
    pub records_skipped: u64,
    pub metadata_nulls: u64,
    pub read_errors: u64,
    pub docs_unreadable: u64,
    pub entries_excluded: u64,
    pub entries_hidden: u64,
    pub images: Images,
    pub named: NamedEntries,
    pub chunks: u64,
    pub chunks_embedded: u64,
    pub chunks_reused: u64,
    pub chunks_removed: u64,
    pub chunks_failed: u64,
    /// cl100k tokens of the chunks that were embedded, counted on our side.
    pub tokens: u64,
    /// Tokens the server reported in `usage` (0 when it reports none).
    pub usage_tokens: u64,
    pub requests: u64,
    pub batches_split: u64,
    pub fallback_requests: u64,
    pub retries: u64,
    pub rate_limited: u64,
    pub rows_written: u64,
    pub elapsed_secs: f64,
}

/// What a run did with the images of its input.
#[derive(Debug, Clone, Default, Serialize)]
pub struct Images {
    /// Not read: no caption model was set.
    pub skipped: u64,
    /// Described by the caption model in this run.
    pub captioned: u64,
    /// Their caption came from the caption cache.
    pub cached: u64,
    /// Could not be captioned (listed in `caption_failures`).
    pub failed: u64,
    /// Documents that kept their previous caption because the new one failed.
    pub kept: u64,
    /// Tokens the caption model reported.
    pub prompt_tokens: u64,
    pub completion_tokens: u64,
    /// In a dry run: images that would be sent to the caption model, and the prompt tokens of the images
    /// themselves by the formulas of tars-chat.md §7.3 (the caption prompt's ~60 text tokens each come on top).
    pub to_caption: u64,
    pub estimated_image_tokens: u64,
}

impl Images {
    pub fn any(&self) -> bool {
        self.skipped + self.captioned + self.cached + self.failed + self.to_caption > 0
    }
}
