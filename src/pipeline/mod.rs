//! Wiring of the `embed` run: source → chunker → batcher → embedder → writer.
//!
//! ```text
//!  [blocking] source ──docs(32)──▶ ([async ×4] caption images) ──(32)──▶ [blocking ×w] hash + chunk ──(32)──▶ [blocking] plan + batch
//!                                                                                │ batches(2c)
//!                                                                                ▼
//!                                    [blocking] Parquet writer ◀──results(4)── [async] embed, c in flight
//! ```
//!
//! Images are captioned (with `--caption-model`) four at a time, in input order, before they are chunked like any
//! other document. Chunking runs on w = 2 × cores blocking tasks at once, one document each, and its results are taken in input
//! order, so the dataset does not depend on which task finished first.
//!
//! Every arrow is a bounded channel (capacities in brackets, c = concurrency), so a fast stage waits for a slow one
//! and memory stays flat however large the corpus. CPU work runs on blocking threads, never on the async workers.
//! When the run must stop (a fatal API error, a signal), the embed loop drops its stream: in-flight requests are
//! abandoned, upstream threads see their channel close and return, and the writer closes what it has.

mod assemble;
mod breaker;
mod guard;
mod isolate;
mod previous;

use std::collections::{HashMap, HashSet};
use std::future::Future;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Instant;

use futures::StreamExt;
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;

pub use assemble::WriterMsg;
pub use guard::{DeleteLimit, MassDelete};
pub use isolate::{BatchOutcome, ChunkFailure, embed_isolating};
pub use previous::{Previous, VectorLoc, text_key};

use crate::batch::{Batch, BatchLimits, Batcher};
use crate::caption::{CAPTIONS_IN_FLIGHT, Caption, Captioner};
use crate::chunk::{Chunk, ChunkSettings, Chunker, TokenChunker, TokenCounter};
use crate::embed::{EmbedError, Embedder, Embeddings};
use crate::error::count;
use crate::source::{Document, Excluded, FileSource, Format, Source, SourceItem, SourceOptions, file_key};
use crate::stats::{Stats, Summary};
use crate::store::{ChunkingInfo, DatasetWriter, DocRecord, EmbeddingCache, Manifest, RunStatus, StoreError};

/// Files modified less than this before the run started may be modified again without their mtime changing (on
/// filesystems with coarse timestamps), so their stat is not trusted next time and they are re-read.
const MTIME_GRACE_NS: i64 = 2_000_000_000;

/// Everything an `embed` run needs to know.
#[derive(Debug, Clone)]
pub struct EmbedJob {
    pub source: SourceOptions,
    pub chunking: ChunkSettings,
    /// The embedding model's tokenizer, which sizes the chunks.
    pub counter: TokenCounter,
    pub batching: BatchLimits,
    pub concurrency: usize,
    pub out: std::path::PathBuf,
    /// Reuse nothing from an existing dataset (`--overwrite`).
    pub fresh: bool,
    /// `--dimensions`, recorded so queries ask for the same size.
    pub requested_dimensions: Option<u32>,
    /// Count what would be sent, send nothing, write nothing (`--dry-run`).
    pub dry_run: bool,
    /// Stop before sending a request that would take the run past this many tokens (`--max-tokens`, or
    /// `--max-cost` at the model's price).
    pub max_tokens: Option<u64>,
    /// Stop the run once more than this many chunks have failed (`--max-failures`): it is clearly broken.
    pub max_failures: Option<u64>,
    /// Send only the chunks of the dead-letter file, reading no source (`retry-failed`).
    pub retry_failed: bool,
    /// How many of the dataset's documents the run may delete before it is refused (`--max-delete`).
    pub max_delete: DeleteLimit,
    /// For a dataset on object storage: where the embedding cache sends its closed segments for upload.
    pub cache_uploads: Option<crate::store::SegmentSink>,
    /// In a sharded run: only the documents of this shard, new rows from the shard's own range, no compaction.
    pub shard: Option<crate::store::Shard>,
    /// Writes the text of image documents (`--caption-model`); without one, images are not read.
    pub captioner: Option<Arc<Captioner>>,
}

/// How a run ended.
#[derive(Debug)]
pub struct RunOutcome {
    pub summary: Summary,
    /// The version the run published; `None` when it kept the previous one (a run from scratch that did not finish).
    pub published: Option<Manifest>,
    pub status: RunStatus,
    /// Set when the run stopped early because of the API.
    pub fatal: Option<EmbedError>,
    pub interrupted: bool,
    /// Documents left as they were because some of their chunks were not embedded.
    pub incomplete_docs: usize,
    /// The run stopped before a request that would have passed `max_tokens`.
    pub budget_reached: bool,
    /// The run would have deleted more documents than `max_delete` allows: nothing was published (a dry run only
    /// reports it).
    pub mass_delete: Option<MassDelete>,
}

impl RunOutcome {
    /// The outcome of a run that failed with `error` after it started: nothing published.
    pub fn failed(summary: Summary, error: String) -> Self {
        Self {
            summary,
            published: None,
            status: RunStatus::Failed { error },
            fatal: None,
            interrupted: false,
            incomplete_docs: 0,
            budget_reached: false,
            mass_delete: None,
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum PipelineError {
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error(transparent)]
    Source(#[from] crate::source::SourceError),
    #[error("a pipeline thread failed: {0}")]
    Thread(String),
}

/// The vector-space key of the embedding cache: vectors are only reused between runs that agree on it.
fn vector_space(settings: &Manifest) -> String {
    format!("{}|{:?}", settings.model, settings.requested_dimensions)
}

/// Runs the job to the end, or until `shutdown` resolves, and publishes the new version of the dataset. Only
/// documents that are new or changed since the published version are chunked, and only chunks whose text has no
/// vector yet are sent. The caller holds the dataset lock.
pub async fn run_embed<E: Embedder>(
    job: EmbedJob,
    embedder: Arc<E>,
    stats: Arc<Stats>,
    shutdown: impl Future<Output = ()>,
) -> Result<RunOutcome, PipelineError> {
    let started = Instant::now();
    let run_start_ns = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_nanos()).unwrap_or(i64::MAX));
    let chunking = ChunkingInfo {
        tokenizer: job.counter.name(),
        max_tokens: job.chunking.max_tokens,
        overlap: job.chunking.overlap,
    };
    let mut settings = Manifest::new(embedder.model().to_owned(), job.requested_dimensions, chunking);
    settings.metadata_spec = job.source.records.metadata.to_strings();
    let caption_model = job.captioner.as_ref().map(|c| c.model().to_owned());
    settings.caption_model = caption_model.clone();
    // Fail on bad inputs and a damaged dataset before any work.
    let source = if job.retry_failed { None } else { Some(FileSource::new(job.source.clone())?) };
    let load = {
        let (out, settings, fresh, dry_run) = (job.out.clone(), settings.clone(), job.fresh, job.dry_run);
        let guarded = job.max_delete != DeleteLimit::Unlimited;
        let retry_failed = job.retry_failed;
        let uploads = job.cache_uploads.clone();
        let shard = job.shard;
        tokio::task::spawn_blocking(move || -> Result<_, StoreError> {
            let mut settings = settings;
            let space = vector_space(&settings);
            let cache = match (dry_run, uploads) {
                (true, _) => EmbeddingCache::open_read_only(&out, &space)?,
                (false, None) => EmbeddingCache::open(&out, &space)?,
                (false, Some(sink)) => EmbeddingCache::open(&out, &space)?.with_uploads(sink),
            };
            let previous = Previous::load(&out, &settings, fresh, &cache, dry_run, guarded)?;
            if retry_failed && let Some(m) = &previous.manifest {
                // No input is read: the documents keep the metadata they have.
                settings.metadata_spec = m.metadata_spec.clone();
            }
            if settings.caption_model.is_none() && previous.appends() {
                // Images not read keep their captions, and the model that wrote them.
                settings.caption_model = previous.manifest.as_ref().and_then(|m| m.caption_model.clone());
            }
            let writer = if dry_run {
                None
            } else {
                let writer = DatasetWriter::begin(&out, settings, previous.manifest.as_ref(), previous.appends())?;
                Some(match shard {
                    Some(shard) => {
                        let base_next =
                            previous.manifest.as_ref().filter(|_| previous.appends()).map_or(0, Manifest::next_row);
                        writer.starting_at(shard.first_row(base_next))
                    }
                    None => writer,
                })
            };
            Ok((cache, previous, writer))
        })
    };
    let (cache, mut previous, writer) = load.await.map_err(|e| PipelineError::Thread(e.to_string()))??;
    let published_before = previous.manifest.clone();
    let appends = previous.appends();
    // Captions by another model than the published ones: every image is read again, to be captioned anew.
    let recaption = caption_model.is_some()
        && published_before.as_ref().is_some_and(|m| m.caption_model.is_some() && m.caption_model != caption_model);
    let base = previous.dataset.take();
    let base_docs: HashMap<String, DocRecord> =
        if appends { previous.docs.clone().into_iter().collect() } else { Default::default() };
    let base_failed = if appends { previous.failed.clone() } else { Default::default() };
    // Each metadata field keeps the type it has in the dataset, unless this run declares another.
    let source = match (source, &previous.manifest) {
        (Some(_), Some(m)) if appends && !m.metadata.is_empty() => {
            let mut options = job.source.clone();
            options.records = options.records.with_known_types(&m.metadata);
            Some(FileSource::new(options)?)
        }
        (source, _) => source,
    };
    let previous = Arc::new(previous);

    let concurrency = job.concurrency.max(1);
    let stop = Arc::new(AtomicBool::new(false));
    let (doc_tx, doc_rx) = mpsc::channel(32);
    let (prepared_tx, prepared_rx) = mpsc::channel(32);
    let (captioned_tx, captioned_rx) = mpsc::channel::<Input>(32);
    let (batch_tx, batch_rx) = mpsc::channel::<Batch>(concurrency * 2);
    let (writer_tx, writer_rx) = mpsc::channel::<WriterMsg>(64);

    let source_task = tokio::task::spawn_blocking({
        let (stats, stop, previous) = (Arc::clone(&stats), Arc::clone(&stop), Arc::clone(&previous));
        let source = source.map(|s| s.with_progress(Arc::clone(&stats.input_bytes_read)));
        let shard = job.shard;
        move || match source {
            Some(source) if appends => {
                let filter = Arc::clone(&previous);
                let source = source.with_unchanged_filter(Box::new(move |file, stat, format| {
                    !(recaption && format == Format::Image)
                        && filter.file_unchanged(file, stat.size, stat.mtime_ns, format)
                }));
                read_source(source, shard, &doc_tx, &stats, &stop);
            }
            Some(source) => read_source(source, shard, &doc_tx, &stats, &stop),
            None => list_failed(&previous, &doc_tx),
        }
    });
    let chunker = Arc::new(TokenChunker::with_counter(job.chunking, job.counter.clone()));
    let (caption_task, doc_rx) = match job.captioner.clone() {
        Some(captioner) => (tokio::spawn(caption(doc_rx, captioned_tx, captioner, Arc::clone(&stats))), captioned_rx),
        None => (tokio::spawn(async {}), doc_rx),
    };
    let prepare_task = tokio::spawn(prepare(doc_rx, prepared_tx, Arc::clone(&chunker), Arc::clone(&previous)));
    let (guard_tx, mut guard_rx) = tokio::sync::oneshot::channel();
    let plan_task = tokio::task::spawn_blocking({
        let planner = Planner {
            chunker,
            previous: Arc::clone(&previous),
            run_start_ns,
            stats: Arc::clone(&stats),
            stop: Arc::clone(&stop),
            max_delete: job.max_delete,
            guard: Some(guard_tx),
            dry_run: job.dry_run,
        };
        let writer_tx = writer_tx.clone();
        move || planner.run(job.batching, prepared_rx, &batch_tx, &writer_tx)
    });
    let writer_task = tokio::task::spawn_blocking({
        let stats = Arc::clone(&stats);
        let previous_names: Vec<String> = if appends { base_docs.keys().cloned().collect() } else { Vec::new() };
        let spec_changed = previous.reread;
        let assembler = writer.map(|w| {
            assemble::Assembler::new(w, cache, base, base_docs, base_failed, Arc::clone(&stats))
                .with_spec_change(spec_changed)
        });
        move || match assembler {
            Some(assembler) => assembler.run(writer_rx).map(Some),
            None => {
                assemble::count_dry_run(writer_rx, &previous_names, &stats);
                Ok(None)
            }
        }
    });

    // The budget gate: a batch that would take the run past `max_tokens` is not sent, and nothing after it.
    let budget_reached = Arc::new(AtomicBool::new(false));
    let dispatched_tokens = Arc::new(std::sync::atomic::AtomicU64::new(0));
    let gated = ReceiverStream::new(batch_rx).take_while({
        let (reached, dispatched, max_tokens) =
            (Arc::clone(&budget_reached), Arc::clone(&dispatched_tokens), job.max_tokens);
        move |batch: &Batch| {
            let total = dispatched.fetch_add(batch.tokens as u64, Ordering::Relaxed) + batch.tokens as u64;
            let within = max_tokens.is_none_or(|max| total <= max);
            if !within {
                reached.store(true, Ordering::Relaxed);
            }
            futures::future::ready(within)
        }
    });
    let dry_run = job.dry_run;
    let mut results = gated
        .map(|batch| {
            let (embedder, stats) = (Arc::clone(&embedder), Arc::clone(&stats));
            async move {
                if dry_run {
                    // Counted below as if sent: what a real run would spend.
                    let nothing = Embeddings { dimensions: 0, vectors: Vec::new(), usage_tokens: None };
                    return BatchOutcome { embedded: vec![(batch, nothing)], ..BatchOutcome::default() };
                }
                embed_isolating(&*embedder, batch, &stats).await
            }
        })
        .buffer_unordered(concurrency);

    let mut fatal = None;
    let mut interrupted = false;
    let mut mass_delete = None;
    let mut guard_open = !dry_run;
    let mut breaker = breaker::Breaker::default();
    tokio::pin!(shutdown);
    loop {
        let next = tokio::select! {
            next = results.next() => next,
            () = &mut shutdown => {
                interrupted = true;
                break;
            }
            // The planner sends no more batches after a refusal; those under way are paid for, so they finish and
            // go to the cache.
            refusal = &mut guard_rx, if guard_open => {
                mass_delete = refusal.ok();
                guard_open = false;
                continue;
            }
        };
        let Some(outcome) = next else { break };
        let tripped = breaker.observe(&outcome);
        let mut writer_gone = false;
        for (batch, embeddings) in outcome.embedded {
            Stats::add(&stats.chunks_embedded, batch.chunks.len() as u64);
            Stats::add(&stats.tokens_embedded, batch.tokens as u64);
            Stats::add(&stats.usage_tokens, embeddings.usage_tokens.unwrap_or(0));
            if dry_run {
                Stats::add(&stats.requests, 1);
            } else if writer_tx.send(WriterMsg::Embedded(batch, embeddings)).await.is_err() {
                writer_gone = true; // the writer failed; its error is reported below
            }
        }
        if !outcome.failed.is_empty() {
            Stats::add(&stats.chunks_failed, outcome.failed.len() as u64);
            let last = outcome.failed.last().map(|(_, f)| f.error.clone()).unwrap_or_default();
            // One line per request that failed whole, one per chunk isolated by splitting.
            let mut failures = outcome.failed.iter().peekable();
            while let Some((chunk, failure)) = failures.next() {
                let mut more = 0;
                while failures.next_if(|(_, f)| f == failure).is_some() {
                    more += 1;
                }
                let others = if more > 0 { format!(" and {} more", count(more, "chunk")) } else { String::new() };
                tracing::warn!(
                    "{} chunk {}{others}: not embedded after {}: {}",
                    chunk.doc,
                    chunk.chunk_index,
                    count(u64::from(failure.attempts), "attempt"),
                    failure.error
                );
            }
            writer_gone |= writer_tx.send(WriterMsg::Failed(outcome.failed)).await.is_err();
            let failed = Stats::get(&stats.chunks_failed);
            if let Some(max) = job.max_failures.filter(|max| failed > *max) {
                fatal = Some(EmbedError::TooManyFailures { failed, max, last });
                break;
            }
        }
        if let Some(error) = outcome.fatal.or(tripped) {
            fatal = Some(error);
            break;
        }
        if writer_gone {
            break;
        }
    }
    // Closing the stream abandons requests in flight and lets the upstream threads stop.
    stop.store(true, Ordering::Relaxed);
    drop(results);
    drop(writer_tx);

    let mut assembled = writer_task.await.map_err(|e| PipelineError::Thread(e.to_string()))??;
    if let Some(assembled) = &mut assembled {
        assembled.writer.set_field_types(job.source.records.field_types());
        assembled.no_compaction = job.shard.is_some();
    }
    for task in [source_task, caption_task, prepare_task, plan_task] {
        task.await.map_err(|e| PipelineError::Thread(e.to_string()))?;
    }
    // The planner may have refused after the last batch was done (and always reports here in a dry run).
    if mass_delete.is_none() {
        mass_delete = guard_rx.try_recv().ok();
    }

    let failed = Stats::get(&stats.chunks_failed);
    let budget_reached = budget_reached.load(Ordering::Relaxed);
    let incomplete_docs = assembled.as_ref().map_or(0, |a| a.incomplete);
    let source_done = assembled.as_ref().is_none_or(|a| a.source_done);
    let status = match (&fatal, interrupted) {
        _ if mass_delete.is_some() && !dry_run => RunStatus::Aborted { reason: "mass deletion refused".to_owned() },
        (Some(error), _) => RunStatus::Aborted { reason: error.to_string() },
        (None, true) => RunStatus::Aborted { reason: "interrupted".to_owned() },
        (None, false) if budget_reached => RunStatus::Aborted { reason: "token budget reached".to_owned() },
        (None, false)
            if failed > 0 || incomplete_docs > 0 || !source_done || Stats::get(&stats.captions_failed) > 0 =>
        {
            RunStatus::Partial { failed_chunks: failed }
        }
        (None, false) => RunStatus::Complete,
    };
    // A version that replaces the published one (a new model, --overwrite) would lack what could not be read.
    let unread = !appends && published_before.is_some() && Stats::get(&stats.read_errors) > 0;
    if unread && !dry_run {
        tracing::warn!("the new version would lack the documents that could not be read: the previous one is kept");
    }
    let published = match assembled {
        // Refused: the published version stays as it is; what was embedded is in the cache for the next run.
        Some(_) if mass_delete.is_some() || unread => None,
        Some(assembled) => tokio::task::spawn_blocking({
            let status = status.clone();
            move || assemble::publish(assembled, published_before.as_ref(), appends, status)
        })
        .await
        .map_err(|e| PipelineError::Thread(e.to_string()))??,
        None => None,
    };
    Ok(RunOutcome {
        summary: stats.snapshot(started.elapsed()),
        published,
        status,
        fatal,
        interrupted,
        incomplete_docs,
        budget_reached,
        mass_delete,
    })
}

/// What the source thread hands the planner (through [`prepare`]).
enum Input {
    Doc(Box<Prepared>),
    /// A file not read because it is unchanged, and its bytes (for progress).
    Unchanged {
        file: String,
        bytes: u64,
    },
    /// A file or directory (its file key, and its dataset name when it has one) that could not be read: its
    /// documents keep their previous version.
    ReadError {
        key: String,
        name: Option<String>,
    },
    /// An image (its dataset name) that could not be captioned: it keeps its previous caption, if it had one, and
    /// is read again next time.
    CaptionFailed(String),
    /// A document of the dataset whose failed chunks are to be sent again (`retry-failed`).
    Retry(String),
    /// Every input was listed: with `all_documents`, the whole source (so documents not seen were deleted).
    End {
        all_documents: bool,
    },
}

/// Problems of one kind logged one by one, before the rest are left to the report.
const LOGGED_PER_KIND: u64 = 20;

fn read_source(
    source: impl Source,
    shard: Option<crate::store::Shard>,
    docs: &mpsc::Sender<Input>,
    stats: &Stats,
    stop: &AtomicBool,
) {
    // Input bytes read since the last document, carried with it to the planner: progress counts what is planned,
    // not what is read ahead into the channels.
    let mut counted = 0;
    let mut bytes_since = || {
        let read = Stats::get(&stats.input_bytes_read);
        std::mem::replace(&mut counted, read).abs_diff(read)
    };
    for item in source {
        if stop.load(Ordering::Relaxed) {
            return;
        }
        let input = match item {
            // Another shard's document: every shard reads the listing and keeps its own slice.
            SourceItem::Document(doc) if shard.is_some_and(|s| !s.owns(&doc.doc)) => continue,
            SourceItem::Document(doc) => {
                Stats::add(&stats.documents, 1);
                Input::Doc(Box::new(Prepared { doc, content_hash: String::new(), chunks: None, bytes: bytes_since() }))
            }
            SourceItem::Unchanged(file) => Input::Unchanged { file, bytes: bytes_since() },
            // Without a caption model an image is left as it was, as if unchanged.
            SourceItem::ImageNotCaptioned(path) => {
                // Counted in the report: a line per image would drown a corpus of photos.
                tracing::debug!("{}: image not read (no --caption-model)", path.display());
                Stats::add(&stats.images_skipped, 1);
                Input::Unchanged { file: file_key(&path), bytes: bytes_since() }
            }
            SourceItem::LossyUtf8(origin) => {
                Stats::add(&stats.documents_lossy_utf8, 1);
                tracing::warn!("{origin}: invalid UTF-8 replaced with U+FFFD");
                continue;
            }
            SourceItem::NotRead { origin, reason } => {
                tracing::warn!("{origin}: not read: {reason}");
                stats.not_read(origin.to_string(), reason.to_string());
                continue;
            }
            SourceItem::ReadError { path, name, error } => {
                tracing::error!(
                    "{}: could not be read ({error}); what was read from it before is kept",
                    path.display()
                );
                stats.read_error(path.display().to_string(), error.to_string());
                Input::ReadError { key: file_key(&path), name }
            }
            SourceItem::SkippedRecord { origin, reason } => {
                tracing::warn!("{origin}: record skipped: {reason}");
                stats.record_skipped(origin.to_string(), reason.to_string());
                continue;
            }
            SourceItem::FieldProblem { origin, problem } => {
                // A field missing from every row of a large table would otherwise log once per row.
                let logged = Stats::get(&stats.metadata_nulls);
                if logged < LOGGED_PER_KIND {
                    tracing::warn!("{origin}: {problem}");
                } else if logged == LOGGED_PER_KIND {
                    tracing::warn!("more metadata values stored as null: the run report lists them");
                }
                stats.metadata_null(origin.to_string(), problem.to_string());
                continue;
            }
            SourceItem::Excluded(Excluded::Glob) => {
                Stats::add(&stats.entries_excluded, 1);
                continue;
            }
            SourceItem::Excluded(Excluded::Hidden) => {
                Stats::add(&stats.entries_hidden, 1);
                continue;
            }
        };
        if docs.blocking_send(input).is_err() {
            return; // the run is stopping
        }
    }
    let _ = docs.blocking_send(Input::End { all_documents: true });
}

/// A document with its content hash and, when the planner will need them, its chunks.
struct Prepared {
    doc: Document,
    /// blake3 of the text, hex (empty until [`prepare`] has seen the document).
    content_hash: String,
    chunks: Option<Vec<Chunk>>,
    /// Input bytes read for it (and for anything skipped since the previous document), for progress.
    bytes: u64,
}

/// The chunking stage: hashes every document and chunks those whose text is not in the published version, on
/// several blocking tasks at once (chunking is the pipeline's CPU-heavy step, ~1 ms per 10 KB), passing everything
/// on in input order. A document the planner ends up chunking anyway (its missing chunks could not be patched) is
/// chunked there.
async fn prepare(
    inputs: mpsc::Receiver<Input>,
    out: mpsc::Sender<Input>,
    chunker: Arc<TokenChunker>,
    previous: Arc<Previous>,
) {
    let workers = 2 * std::thread::available_parallelism().map_or(1, |n| n.get());
    let prepared = ReceiverStream::new(inputs)
        .map(|input| {
            let (chunker, previous) = (Arc::clone(&chunker), Arc::clone(&previous));
            tokio::task::spawn_blocking(move || match input {
                Input::Doc(mut prepared) => {
                    prepared.content_hash = prepared.doc.content_hash();
                    if previous.needs_chunks(&prepared.doc.doc, &prepared.content_hash) {
                        prepared.chunks = Some(chunker.chunk(&prepared.doc));
                    }
                    Input::Doc(prepared)
                }
                other => other,
            })
        })
        .buffered(workers);
    // A task that panicked (it should not) ends the stage; the planner then sees its input end early, and the run
    // publishes as one that stopped before it read everything.
    let prepared = prepared
        .take_while(|input| {
            if let Err(e) = input {
                tracing::error!("chunking failed: {e}; the run stops here");
            }
            futures::future::ready(input.is_ok())
        })
        .filter_map(|input| futures::future::ready(input.ok()));
    forward(prepared, &out).await;
}

/// Sends what `items` yields to `out`, in order, until either ends. When the next stage stops (the run is
/// stopping), work under way here is dropped at once: a caption request, or a wait on the stage before.
async fn forward(items: impl futures::Stream<Item = Input>, out: &mpsc::Sender<Input>) {
    tokio::pin!(items);
    loop {
        let item = tokio::select! {
            item = items.next() => item,
            () = out.closed() => return,
        };
        let Some(item) = item else { return };
        if out.send(item).await.is_err() {
            return;
        }
    }
}

/// The caption stage: image documents get their text from the [`Captioner`], [`CAPTIONS_IN_FLIGHT`] at a time,
/// and everything goes on in input order. An image that cannot be captioned goes on as [`Input::CaptionFailed`].
async fn caption(
    inputs: mpsc::Receiver<Input>,
    out: mpsc::Sender<Input>,
    captioner: Arc<Captioner>,
    stats: Arc<Stats>,
) {
    let captioned = ReceiverStream::new(inputs)
        .map(|input| {
            let (captioner, stats) = (Arc::clone(&captioner), Arc::clone(&stats));
            async move {
                match input {
                    Input::Doc(prepared) if prepared.doc.meta.source == Some(Format::Image) => {
                        caption_one(prepared, &captioner, &stats).await
                    }
                    other => other,
                }
            }
        })
        .buffered(CAPTIONS_IN_FLIGHT);
    forward(captioned, &out).await;
}

async fn caption_one(mut prepared: Box<Prepared>, captioner: &Captioner, stats: &Stats) -> Input {
    let path = prepared.doc.origin.path.clone();
    let (result, usage) = captioner.caption(&path).await;
    if let Some(usage) = usage {
        Stats::add(&stats.caption_prompt_tokens, usage.prompt_tokens.unwrap_or(0));
        Stats::add(&stats.caption_completion_tokens, usage.completion_tokens.unwrap_or(0));
    }
    match result {
        Ok(Caption::Text { text, cached }) => {
            Stats::add(if cached { &stats.captions_cached } else { &stats.images_captioned }, 1);
            prepared.doc.text = text;
            Input::Doc(prepared)
        }
        Ok(Caption::Estimate { tokens }) => {
            // A dry run: the image is counted as a document, without the text it would get.
            Stats::add(&stats.images_to_caption, 1);
            Stats::add(&stats.caption_tokens_estimated, tokens);
            Input::Doc(prepared)
        }
        Err(error) => {
            let logged = Stats::get(&stats.captions_failed);
            if logged < LOGGED_PER_KIND {
                tracing::warn!("{}: not captioned: {}", path.display(), crate::error::Chain(&error));
            } else if logged == LOGGED_PER_KIND {
                tracing::warn!("more images not captioned: the run report lists them");
            }
            stats.caption_failed(path.display().to_string(), crate::error::Chain(&error).to_string());
            Input::CaptionFailed(prepared.doc.doc)
        }
    }
}

/// The source of `retry-failed`: the documents of the dead-letter file, in name order.
fn list_failed(previous: &Previous, docs: &mpsc::Sender<Input>) {
    let mut names: Vec<&String> = previous.failed.keys().collect();
    names.sort_unstable();
    for name in names {
        if docs.blocking_send(Input::Retry(name.clone())).is_err() {
            return;
        }
    }
    let _ = docs.blocking_send(Input::End { all_documents: false });
}

/// Decides, document by document, what to keep, what to reuse and what to embed, and packs the latter into
/// batches.
struct Planner {
    chunker: Arc<TokenChunker>,
    previous: Arc<Previous>,
    run_start_ns: i64,
    stats: Arc<Stats>,
    stop: Arc<AtomicBool>,
    max_delete: DeleteLimit,
    /// Where a refusal of the deletions goes (taken when used).
    guard: Option<tokio::sync::oneshot::Sender<MassDelete>>,
    dry_run: bool,
}

impl Planner {
    fn run(
        mut self,
        limits: BatchLimits,
        mut inputs: mpsc::Receiver<Input>,
        batches: &mpsc::Sender<Batch>,
        writer: &mpsc::Sender<WriterMsg>,
    ) {
        let mut batcher = Batcher::new(limits);
        let mut seen: HashSet<String> = HashSet::new();
        while let Some(input) = inputs.blocking_recv() {
            if self.stop.load(Ordering::Relaxed) {
                return;
            }
            let sent = match input {
                Input::Unchanged { file, bytes } => {
                    Stats::add(&self.stats.input_bytes_planned, bytes);
                    self.keep_file(&file, &mut seen, writer)
                }
                Input::ReadError { key, name } => self.keep_unreadable(&key, name.as_deref(), &mut seen, writer),
                Input::Doc(doc) => {
                    Stats::add(&self.stats.input_bytes_planned, doc.bytes);
                    self.plan(doc, &mut seen, &mut batcher, batches, writer)
                }
                Input::CaptionFailed(name) => self.keep_for_next_run(name, &mut seen, writer),
                Input::Retry(name) => match self.previous.docs.get(&name) {
                    Some(record) if seen.insert(name.clone()) => {
                        self.patch(record.clone(), &mut batcher, batches, writer).unwrap_or_else(|| {
                            tracing::warn!("{name}: the dead-letter file does not account for its missing chunks");
                            true
                        })
                    }
                    _ => true,
                },
                Input::End { all_documents } => {
                    // Whatever was read after the last document (entries not read, skipped records) is done too.
                    let read = Stats::get(&self.stats.input_bytes_read);
                    self.stats.input_bytes_planned.store(read, Ordering::Relaxed);
                    if all_documents && let Some(refusal) = self.check_deletions(&seen) {
                        if let Some(guard) = self.guard.take() {
                            let _ = guard.send(refusal);
                        }
                        if !self.dry_run {
                            return; // nothing is published: no SourceDone, no last batch
                        }
                    }
                    if let Some(batch) = batcher.finish()
                        && batches.blocking_send(batch).is_err()
                    {
                        return;
                    }
                    self.stats.source_done.store(true, Ordering::Relaxed);
                    let _ = writer.blocking_send(WriterMsg::SourceDone { all_documents });
                    return;
                }
            };
            if !sent {
                return;
            }
        }
    }

    /// The refusal, when deleting the documents not seen would pass the limit.
    fn check_deletions(&self, seen: &HashSet<String>) -> Option<MassDelete> {
        // One of the two is empty: the documents the new version builds on, or those it replaces.
        let names = self.previous.docs.keys().chain(&self.previous.replaced);
        let (mut documents, mut deleted) = (0u64, 0u64);
        for name in names {
            documents += 1;
            deleted += u64::from(!seen.contains(name));
        }
        (!self.max_delete.allows(deleted, documents)).then_some(MassDelete {
            deleted,
            documents,
            found: seen.len() as u64,
            limit: self.max_delete,
        })
    }

    /// The documents read from a file or directory that could not be read this time keep their previous version:
    /// those read from it (by file key), and those named as its entries are (so that a dataset whose files were
    /// recorded under other keys, by an earlier version or from another mount point, loses nothing either).
    /// Returns false when the run is stopping.
    fn keep_unreadable(
        &self,
        key: &str,
        name: Option<&str>,
        seen: &mut HashSet<String>,
        writer: &mpsc::Sender<WriterMsg>,
    ) -> bool {
        let below = format!("{}/", key.trim_end_matches('/'));
        let exact = self.previous.by_file.get(key).into_iter();
        let under = self.previous.by_file.range(below.clone()..).take_while(|(file, _)| file.starts_with(&below));
        let by_file = exact.chain(under.map(|(_, names)| names)).flatten();
        let docs = &self.previous.docs;
        // The entry itself, what is below it (`dir/…`), and the records of a JSONL file named by line (`file:…`).
        let by_name: Vec<&String> = match name {
            None => Vec::new(),
            Some("") => docs.keys().collect(),
            Some(name) => {
                let below = |sep: char| {
                    let prefix = format!("{name}{sep}");
                    docs.range(prefix.clone()..).map(|(doc, _)| doc).take_while(move |doc| doc.starts_with(&prefix))
                };
                docs.get_key_value(name).map(|(doc, _)| doc).into_iter().chain(below('/')).chain(below(':')).collect()
            }
        };
        self.keep(by_file.chain(by_name), &self.stats.docs_unreadable, seen, writer)
    }

    /// A document that could not be made this time keeps its published version, marked to be read again by the
    /// next run whatever its file's stat says. Returns false when the run is stopping.
    fn keep_for_next_run(&self, name: String, seen: &mut HashSet<String>, writer: &mpsc::Sender<WriterMsg>) -> bool {
        let Some(record) = self.previous.docs.get(&name) else {
            seen.insert(name);
            return true;
        };
        if !seen.insert(name) {
            return true;
        }
        Stats::add(&self.stats.docs_caption_kept, 1);
        let record = DocRecord { stat_trusted: false, ..record.clone() };
        writer.blocking_send(WriterMsg::Keep(record)).is_ok()
    }

    /// The documents of an unchanged file keep their rows. Returns false when the run is stopping.
    fn keep_file(&self, file: &str, seen: &mut HashSet<String>, writer: &mpsc::Sender<WriterMsg>) -> bool {
        let names = self.previous.by_file.get(file).into_iter().flatten();
        self.keep(names, &self.stats.docs_unchanged, seen, writer)
    }

    /// Keeps the published version of each named document not seen yet, counting it in `counter`.
    fn keep<'n>(
        &self,
        names: impl Iterator<Item = &'n String>,
        counter: &std::sync::atomic::AtomicU64,
        seen: &mut HashSet<String>,
        writer: &mpsc::Sender<WriterMsg>,
    ) -> bool {
        for name in names {
            if let Some(record) = self.previous.docs.get(name)
                && seen.insert(name.clone())
            {
                Stats::add(counter, 1);
                if writer.blocking_send(WriterMsg::Keep(record.clone())).is_err() {
                    return false;
                }
            }
        }
        true
    }

    fn plan(
        &self,
        prepared: Box<Prepared>,
        seen: &mut HashSet<String>,
        batcher: &mut Batcher,
        batches: &mpsc::Sender<Batch>,
        writer: &mpsc::Sender<WriterMsg>,
    ) -> bool {
        let Prepared { doc, content_hash, chunks, .. } = *prepared;
        if !seen.insert(doc.doc.clone()) {
            Stats::add(&self.stats.docs_duplicate, 1);
            tracing::warn!("{}: skipped: a document named {:?} was already read in this run", doc.origin, doc.doc);
            return true;
        }
        let stat = doc.stat.unwrap_or(crate::source::FileStat { size: 0, mtime_ns: 0 });
        let mut record = DocRecord {
            doc: doc.doc.clone(),
            file: file_key(&doc.origin.path),
            size: stat.size,
            mtime_ns: stat.mtime_ns,
            stat_trusted: doc.stat.is_some() && stat.mtime_ns < self.run_start_ns - MTIME_GRACE_NS,
            content_hash,
            rows: Vec::new(),
            missing: 0,
            format: doc.meta.source,
            title: doc.meta.title.clone(),
            fields: doc.meta.fields.clone(),
        };
        let old = self.previous.docs.get(&doc.doc);
        if let Some(old) = old
            && !self.previous.rechunk
            && old.content_hash == record.content_hash
        {
            record.rows = old.rows.clone();
            record.missing = old.missing;
            if old.missing == 0 {
                // Same text: the rows stay; new metadata, if any, is written with the documents table.
                let counter = if old.same_metadata(&record) {
                    &self.stats.docs_unchanged
                } else {
                    &self.stats.docs_metadata_updated
                };
                Stats::add(counter, 1);
                return writer.blocking_send(WriterMsg::Keep(record)).is_ok();
            }
            // Same text, chunks missing: send just those, if the dead-letter file has them.
            if let Some(sent) = self.patch(record.clone(), batcher, batches, writer) {
                return sent;
            }
            record.rows.clear();
            record.missing = 0;
        }
        Stats::add(if old.is_some() { &self.stats.docs_changed } else { &self.stats.docs_new }, 1);
        let chunks = chunks.unwrap_or_else(|| self.chunker.chunk(&doc));
        Stats::add(&self.stats.chunks, chunks.len() as u64);
        if writer.blocking_send(WriterMsg::Plan { record, chunks: chunks.len() }).is_err() {
            return false;
        }
        self.send_chunks(chunks, batcher, batches, writer)
    }

    /// Plans sending the missing chunks of `record` again from the dead-letter file; its other rows stay. `None`
    /// when the file does not account for them all. Returns false when the run is stopping.
    fn patch(
        &self,
        record: DocRecord,
        batcher: &mut Batcher,
        batches: &mpsc::Sender<Batch>,
        writer: &mpsc::Sender<WriterMsg>,
    ) -> Option<bool> {
        let (entries, failed_indexes) = self.previous.missing_chunks(&record)?;
        Stats::add(&self.stats.docs_retried, 1);
        Stats::add(&self.stats.chunks, entries.len() as u64);
        let doc: Arc<str> = Arc::from(record.doc.as_str());
        let chunks: Vec<Chunk> = entries.iter().map(|e| e.to_chunk(&doc)).collect();
        if writer.blocking_send(WriterMsg::Patch { record, failed_indexes }).is_err() {
            return Some(false);
        }
        Some(self.send_chunks(chunks, batcher, batches, writer))
    }

    /// Queues chunks whose text has a vector for reuse and batches the others. Returns false when the run is
    /// stopping.
    fn send_chunks(
        &self,
        chunks: Vec<Chunk>,
        batcher: &mut Batcher,
        batches: &mpsc::Sender<Batch>,
        writer: &mpsc::Sender<WriterMsg>,
    ) -> bool {
        let mut reused = Vec::new();
        for chunk in chunks {
            match text_key(&chunk.hash).and_then(|k| self.previous.vectors.get(&k)) {
                Some(loc) => reused.push((chunk, *loc)),
                None => {
                    if let Some(batch) = batcher.push(chunk)
                        && batches.blocking_send(batch).is_err()
                    {
                        return false;
                    }
                }
            }
        }
        reused.is_empty() || writer.blocking_send(WriterMsg::Reuse(reused)).is_ok()
    }
}
