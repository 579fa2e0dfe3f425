//! Wiring of the `embed` run: source → chunker → batcher → embedder → writer.
//!
//! ```text
//!  [blocking] source ──docs(32)──▶ [blocking] chunk + batch ──batches(2c)──▶ [async] embed, c in flight
//!                                                                                   │ results(4)
//!                                                                                   ▼
//!                                                                        [blocking] Parquet writer
//! ```
//!
//! Every arrow is a bounded channel (capacities in brackets, c = concurrency), so a fast stage waits for a slow one
//! and memory stays flat however large the corpus. CPU work runs on blocking threads, never on the async workers.
//! When the run must stop (a fatal API error, a signal), the embed loop drops its stream: in-flight requests are
//! abandoned, upstream threads see their channel close and return, and the writer closes what it has.

use std::future::Future;
use std::sync::Arc;
use std::time::Instant;

use futures::StreamExt;
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;

use crate::batch::{Batch, BatchLimits, Batcher};
use crate::chunk::{ChunkSettings, Chunker, TokenChunker, TokenCounter};
use crate::embed::{EmbedError, Embedder, Embeddings};
use crate::source::{FileSource, Source, SourceItem, SourceOptions};
use crate::stats::{Stats, Summary};
use crate::store::{ChunkingInfo, DatasetWriter, Manifest, RunStatus, StoreError};

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
    pub overwrite: bool,
    /// `--dimensions`, recorded so queries ask for the same size.
    pub requested_dimensions: Option<u32>,
}

/// How a run ended.
#[derive(Debug)]
pub struct RunOutcome {
    pub summary: Summary,
    pub manifest: Manifest,
    /// Set when the run stopped early because of the API.
    pub fatal: Option<EmbedError>,
    pub interrupted: bool,
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

/// Runs the job to the end, or until `shutdown` resolves. Chunks embedded before a stop are kept.
pub async fn run_embed<E: Embedder>(
    job: EmbedJob,
    embedder: Arc<E>,
    stats: Arc<Stats>,
    shutdown: impl Future<Output = ()>,
) -> Result<RunOutcome, PipelineError> {
    let started = Instant::now();
    // Fail on bad inputs and an existing dataset before any work.
    let source = FileSource::new(job.source.clone())?;
    let chunking = ChunkingInfo {
        tokenizer: job.counter.name(),
        max_tokens: job.chunking.max_tokens,
        overlap: job.chunking.overlap,
    };
    let manifest = Manifest::new(embedder.model().to_owned(), job.requested_dimensions, chunking);
    let writer = DatasetWriter::create(&job.out, manifest, job.overwrite)?;

    let concurrency = job.concurrency.max(1);
    let (doc_tx, doc_rx) = mpsc::channel(32);
    let (batch_tx, batch_rx) = mpsc::channel::<Batch>(concurrency * 2);
    let (result_tx, result_rx) = mpsc::channel::<(Batch, Embeddings)>(4);

    let source_task = tokio::task::spawn_blocking({
        let stats = Arc::clone(&stats);
        move || read_source(source, &doc_tx, &stats)
    });
    let chunk_task = tokio::task::spawn_blocking({
        let stats = Arc::clone(&stats);
        let chunker = TokenChunker::with_counter(job.chunking, job.counter.clone());
        move || chunk_and_batch(&chunker, job.batching, doc_rx, &batch_tx, &stats)
    });
    let writer_task = tokio::task::spawn_blocking({
        let stats = Arc::clone(&stats);
        move || write_results(writer, result_rx, &stats)
    });

    let mut results = ReceiverStream::new(batch_rx)
        .map(|batch| {
            let embedder = Arc::clone(&embedder);
            async move {
                let texts: Vec<&str> = batch.chunks.iter().map(|c| c.text.as_str()).collect();
                let result = embedder.embed(&texts).await;
                drop(texts);
                (batch, result)
            }
        })
        .buffer_unordered(concurrency);

    let mut fatal = None;
    let mut interrupted = false;
    tokio::pin!(shutdown);
    loop {
        let next = tokio::select! {
            next = results.next() => next,
            () = &mut shutdown => {
                interrupted = true;
                break;
            }
        };
        let Some((batch, result)) = next else { break };
        match result {
            Ok(embeddings) => {
                Stats::add(&stats.chunks_embedded, batch.chunks.len() as u64);
                Stats::add(&stats.tokens_embedded, batch.tokens as u64);
                Stats::add(&stats.usage_tokens, embeddings.usage_tokens.unwrap_or(0));
                if result_tx.send((batch, embeddings)).await.is_err() {
                    break; // the writer failed; its error is reported below
                }
            }
            Err(error) if error.is_fatal() => {
                Stats::add(&stats.chunks_failed, batch.chunks.len() as u64);
                fatal = Some(error);
                break;
            }
            Err(error) => {
                Stats::add(&stats.chunks_failed, batch.chunks.len() as u64);
                let first = batch.chunks.first().map(|c| c.doc.to_string()).unwrap_or_default();
                tracing::warn!(chunks = batch.chunks.len(), first_doc = %first, "embedding request failed: {error}");
            }
        }
    }
    // Closing the stream abandons requests in flight and lets the upstream threads stop.
    drop(results);
    drop(result_tx);

    let written = writer_task.await.map_err(|e| PipelineError::Thread(e.to_string()))?;
    let writer = match written {
        Ok(writer) => writer,
        Err(error) => return Err(error.into()),
    };
    for task in [source_task, chunk_task] {
        task.await.map_err(|e| PipelineError::Thread(e.to_string()))?;
    }

    let failed = Stats::get(&stats.chunks_failed);
    let status = match (&fatal, interrupted) {
        (Some(error), _) => RunStatus::Aborted { reason: error.to_string() },
        (None, true) => RunStatus::Aborted { reason: "interrupted".to_owned() },
        (None, false) if failed > 0 => RunStatus::Partial { failed_chunks: failed },
        (None, false) => RunStatus::Complete,
    };
    let manifest = writer.finish(status)?;
    Ok(RunOutcome { summary: stats.snapshot(started.elapsed()), manifest, fatal, interrupted })
}

fn read_source(source: impl Source, docs: &mpsc::Sender<crate::source::Document>, stats: &Stats) {
    for item in source {
        match item {
            SourceItem::Document(doc) => {
                Stats::add(&stats.documents, 1);
                if docs.blocking_send(doc).is_err() {
                    return; // the run is stopping
                }
            }
            SourceItem::LossyUtf8(origin) => {
                Stats::add(&stats.documents_lossy_utf8, 1);
                tracing::warn!("{origin}: invalid UTF-8 replaced with U+FFFD");
            }
            SourceItem::SkippedFile { origin, reason } => {
                Stats::add(&stats.files_skipped, 1);
                tracing::warn!("{origin}: skipped: {reason}");
            }
            SourceItem::SkippedRecord { origin, reason } => {
                Stats::add(&stats.records_skipped, 1);
                tracing::warn!("{origin}: record skipped: {reason}");
            }
        }
    }
}

fn chunk_and_batch(
    chunker: &impl Chunker,
    limits: BatchLimits,
    mut docs: mpsc::Receiver<crate::source::Document>,
    batches: &mpsc::Sender<Batch>,
    stats: &Stats,
) {
    let mut batcher = Batcher::new(limits);
    while let Some(doc) = docs.blocking_recv() {
        for chunk in chunker.chunk(&doc) {
            Stats::add(&stats.chunks, 1);
            if let Some(batch) = batcher.push(chunk)
                && batches.blocking_send(batch).is_err()
            {
                return;
            }
        }
    }
    if let Some(batch) = batcher.finish() {
        let _ = batches.blocking_send(batch);
    }
    stats.source_done.store(true, std::sync::atomic::Ordering::Relaxed);
}

fn write_results(
    mut writer: DatasetWriter,
    mut results: mpsc::Receiver<(Batch, Embeddings)>,
    stats: &Stats,
) -> Result<DatasetWriter, StoreError> {
    while let Some((batch, embeddings)) = results.blocking_recv() {
        writer.write(&batch.chunks, &embeddings)?;
        Stats::add(&stats.rows_written, batch.chunks.len() as u64);
    }
    Ok(writer)
}
