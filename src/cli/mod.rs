//! The command line: parses arguments into validated settings, runs a command, prints results. The only module
//! that writes to stdout.
//!
//! Exit codes: 0 success; 1 a run that finished or stopped with failures (retries exhausted, quota, I/O);
//! 2 usage or configuration errors (bad flags or inputs, missing or rejected key, unknown model, rejected
//! parameters); 130 interrupted.

mod args;
mod progress;

use std::io::Write;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context as _;

pub use args::{Cli, Command, EmbedArgs, IndexArgs, ModelsArgs, SearchArgs};
pub use progress::LogWriter;

use crate::batch::BatchLimits;
use crate::chunk::{ChunkSettings, MAX_INPUT_TOKENS, TokenCounter, count_tokens};
use crate::embed::{
    ApiConfig, EmbedError, Embedder, LOCAL_PREFIX, LocalEmbedder, LocalModel, OpenAiEmbedder, resolve_local_model,
    wire_model,
};
use crate::index::{self, IndexParams, SearchIndex};
use crate::pipeline::{EmbedJob, run_embed};
use crate::source::SourceOptions;
use crate::stats::{Stats, Summary};
use crate::store::{Dataset, RunStatus};

/// Exit codes (documented in README.md).
pub mod exit {
    pub const SUCCESS: u8 = 0;
    pub const FAILURES: u8 = 1;
    pub const USAGE: u8 = 2;
    pub const INTERRUPTED: u8 = 130;
}

/// An error with the exit code it maps to.
#[derive(Debug)]
pub struct Failure {
    pub code: u8,
    pub error: anyhow::Error,
}

impl Failure {
    fn usage(error: impl Into<anyhow::Error>) -> Self {
        Self { code: exit::USAGE, error: error.into() }
    }

    fn run(error: impl Into<anyhow::Error>) -> Self {
        Self { code: exit::FAILURES, error: error.into() }
    }

    /// API errors: a rejected request or configuration is the user's to fix (2); quota and exhausted retries are
    /// run failures (1).
    fn api(error: EmbedError) -> Self {
        let code = match error {
            EmbedError::Rejected { .. } => exit::USAGE,
            _ => exit::FAILURES,
        };
        let advice = error.advice().map(str::to_owned);
        let error = anyhow::Error::new(error);
        Self {
            code,
            error: match advice {
                Some(a) => error.context(a),
                None => error,
            },
        }
    }
}

/// Runs a parsed command line; returns the process exit code.
pub async fn run(cli: Cli) -> Result<u8, Failure> {
    match cli.command {
        Command::Embed(args) => embed(args, cli.quiet).await,
        Command::Index(args) => build_index(args).await,
        Command::Search(args) => search(args).await,
        Command::Models(args) => models(args).await,
    }
}

fn api_config(model: &str, dimensions: Option<u32>, timeout: Duration, max_retries: u32) -> Result<ApiConfig, Failure> {
    let mut config = ApiConfig::from_env(model, dimensions).map_err(Failure::usage)?;
    config.request_timeout = timeout;
    config.retry.max_retries = max_retries;
    Ok(config)
}

fn check_dimensions(model: &str, dimensions: Option<u32>) -> Result<(), Failure> {
    let Some(d) = dimensions else { return Ok(()) };
    let wire = wire_model(model);
    let max = match wire {
        "text-embedding-3-small" => 1536,
        "text-embedding-3-large" => 3072,
        _ if wire.starts_with("text-embedding-3") => u32::MAX,
        _ => {
            return Err(Failure::usage(anyhow::anyhow!(
                "--dimensions is only supported by text-embedding-3 models, not {model:?}"
            )));
        }
    };
    if d == 0 || d > max {
        return Err(Failure::usage(anyhow::anyhow!("--dimensions must be between 1 and {max} for {model} (got {d})")));
    }
    Ok(())
}

/// The embedder a model name asks for.
enum Provider {
    Api(OpenAiEmbedder),
    Local(LocalEmbedder),
}

/// Loads a `local/…` model (on a blocking thread: it reads ~90 MB of weights).
async fn load_local(name: &str) -> Result<Arc<LocalModel>, Failure> {
    let dir = resolve_local_model(name)
        .ok_or_else(|| Failure::usage(anyhow::anyhow!("{name:?} is not a local model name")))?;
    let model = tokio::task::spawn_blocking(move || LocalModel::load(&dir))
        .await
        .map_err(|e| Failure::run(anyhow::anyhow!("model load thread failed: {e}")))?
        .map_err(Failure::usage)?;
    Ok(Arc::new(model))
}

async fn provider(
    model: &str,
    dimensions: Option<u32>,
    timeout: Duration,
    max_retries: u32,
    stats: &Arc<Stats>,
) -> Result<Provider, Failure> {
    if model.starts_with(LOCAL_PREFIX) {
        if dimensions.is_some() {
            return Err(Failure::usage(anyhow::anyhow!("--dimensions is not supported by local models")));
        }
        let loaded = load_local(model).await?;
        return Ok(Provider::Local(LocalEmbedder::new(model, loaded, Arc::clone(stats))));
    }
    check_dimensions(model, dimensions)?;
    let config = api_config(model, dimensions, timeout, max_retries)?;
    Ok(Provider::Api(OpenAiEmbedder::new(config, Arc::clone(stats)).map_err(Failure::usage)?))
}

async fn embed(args: EmbedArgs, quiet: bool) -> Result<u8, Failure> {
    let stats = Arc::new(Stats::default());
    let timeout = Duration::from_secs(args.timeout.max(1));
    let provider = provider(&args.model, args.dimensions, timeout, args.max_retries, &stats).await?;
    let (limit, counter, default_concurrency) = match &provider {
        Provider::Api(_) => (MAX_INPUT_TOKENS, TokenCounter::Cl100k, 8),
        Provider::Local(embedder) => (
            embedder.local_model().max_input_tokens(),
            TokenCounter::HuggingFace {
                name: format!("{}-tokenizer", args.model),
                tokenizer: embedder.local_model().counter(),
            },
            1,
        ),
    };
    let chunk_tokens = args.chunk_tokens.unwrap_or(512.min(limit));
    let overlap = args.chunk_overlap.unwrap_or(chunk_tokens / 8);
    let chunking = ChunkSettings::with_limit(chunk_tokens, overlap, limit).map_err(Failure::usage)?;
    let batching = BatchLimits::new(args.batch_inputs, args.batch_tokens, chunk_tokens).map_err(Failure::usage)?;
    let job = EmbedJob {
        source: SourceOptions {
            inputs: args.inputs,
            include: args.include,
            exclude: args.exclude,
            text_field: args.text_field,
            id_field: args.id_field,
            ..SourceOptions::default()
        },
        chunking,
        counter,
        batching,
        concurrency: usize::from(args.concurrency.unwrap_or(default_concurrency)),
        out: args.out.clone(),
        overwrite: args.overwrite,
        requested_dimensions: args.dimensions,
    };

    let progress = progress::wanted(quiet).then(|| progress::Progress::start(Arc::clone(&stats)));
    let shutdown = stop_signal();
    let outcome = match provider {
        Provider::Api(embedder) => run_embed(job, Arc::new(embedder), stats, shutdown).await,
        Provider::Local(embedder) => run_embed(job, Arc::new(embedder), stats, shutdown).await,
    };
    drop(progress);
    let outcome = outcome.map_err(|e| match e {
        crate::pipeline::PipelineError::Source(e) => Failure::usage(e),
        crate::pipeline::PipelineError::Store(e @ crate::store::StoreError::Exists { .. }) => Failure::usage(e),
        e => Failure::run(e),
    })?;

    print_summary(&outcome.summary, &outcome.manifest.status, &args.out, args.json);
    if let Some(error) = outcome.fatal {
        let rows = outcome.manifest.rows;
        let failure = Failure::api(error);
        return Err(Failure {
            code: failure.code,
            error: failure.error.context(format!(
                "run stopped; the {rows} chunks embedded before the stop are saved in {}",
                args.out.display()
            )),
        });
    }
    if outcome.interrupted {
        eprintln!(
            "interrupted; the {} chunks embedded so far are saved in {}",
            outcome.manifest.rows,
            args.out.display()
        );
        return Ok(exit::INTERRUPTED);
    }
    Ok(match outcome.manifest.status {
        RunStatus::Complete => exit::SUCCESS,
        _ => exit::FAILURES,
    })
}

/// Resolves on Ctrl-C, or on SIGTERM (what schedulers such as systemd and Kubernetes send) on Unix.
async fn stop_signal() {
    let ctrl_c = async {
        if tokio::signal::ctrl_c().await.is_err() {
            std::future::pending::<()>().await;
        }
    };
    #[cfg(unix)]
    {
        use tokio::signal::unix::{SignalKind, signal};
        match signal(SignalKind::terminate()) {
            Ok(mut term) => {
                tokio::select! {
                    () = ctrl_c => {}
                    _ = term.recv() => {}
                }
            }
            Err(_) => ctrl_c.await,
        }
    }
    #[cfg(not(unix))]
    ctrl_c.await;
}

fn print_summary(summary: &Summary, status: &RunStatus, out: &std::path::Path, json: bool) {
    let mut stdout = std::io::stdout().lock();
    if json {
        let value = serde_json::json!({ "dataset": out, "status": status, "summary": summary });
        let _ = writeln!(stdout, "{value}");
        return;
    }
    let s = summary;
    let _ = writeln!(
        stdout,
        "{} documents ({} files skipped, {} records skipped, {} with invalid UTF-8 replaced)\n\
         {} chunks: {} embedded, {} failed; {} tokens ({} billed)\n\
         {} requests, {} retries; {} rows in {} ({:.1}s)",
        s.documents,
        s.files_skipped,
        s.records_skipped,
        s.documents_lossy_utf8,
        s.chunks,
        s.chunks_embedded,
        s.chunks_failed,
        s.tokens,
        s.usage_tokens,
        s.requests,
        s.retries,
        s.rows_written,
        out.display(),
        s.elapsed_secs,
    );
}

async fn build_index(args: IndexArgs) -> Result<u8, Failure> {
    let params = IndexParams { m: args.m, ef_construction: args.ef_construction };
    params.validate().map_err(Failure::usage)?;
    let dataset = Dataset::open(&args.dataset).map_err(Failure::usage)?;
    let meta = tokio::task::spawn_blocking(move || index::build(&dataset, params))
        .await
        .map_err(|e| Failure::run(anyhow::anyhow!("index build thread failed: {e}")))?
        .map_err(Failure::run)?;
    let mut stdout = std::io::stdout().lock();
    if args.json {
        let _ = writeln!(stdout, "{}", serde_json::to_string(&meta).unwrap_or_default());
    } else {
        let _ = writeln!(
            stdout,
            "indexed {} vectors of {} dimensions (M={}, ef_construction={}) in {:.2}s",
            meta.points, meta.dimensions, meta.params.m, meta.params.ef_construction, meta.build_secs
        );
    }
    Ok(exit::SUCCESS)
}

async fn search(args: SearchArgs) -> Result<u8, Failure> {
    let dataset = Dataset::open(&args.dataset).map_err(Failure::usage)?;
    if args.query.trim().is_empty() {
        return Err(Failure::usage(anyhow::anyhow!("the query is empty")));
    }
    let index = {
        let dataset = dataset.clone();
        tokio::task::spawn_blocking(move || SearchIndex::open(&dataset))
            .await
            .map_err(|e| Failure::run(anyhow::anyhow!("index load thread failed: {e}")))?
            .map_err(Failure::usage)?
    };
    let model = dataset.manifest.model.clone();
    let stats = Arc::new(Stats::default());
    let query = [args.query.as_str()];
    let embedding =
        match provider(&model, dataset.manifest.requested_dimensions, Duration::from_secs(60), 3, &stats).await? {
            Provider::Api(embedder) => {
                let tokens = count_tokens(&args.query);
                if tokens > MAX_INPUT_TOKENS {
                    return Err(Failure::usage(anyhow::anyhow!(
                        "the query has {tokens} tokens; the limit is {MAX_INPUT_TOKENS}"
                    )));
                }
                embedder.embed(&query).await.map_err(Failure::api)?
            }
            Provider::Local(embedder) => {
                let model = embedder.local_model();
                let tokens =
                    TokenCounter::HuggingFace { name: String::new(), tokenizer: model.counter() }.count(&args.query);
                if tokens > model.max_input_tokens() {
                    return Err(Failure::usage(anyhow::anyhow!(
                        "the query has {tokens} tokens; {} takes at most {}",
                        dataset.manifest.model,
                        model.max_input_tokens()
                    )));
                }
                embedder.embed(&query).await.map_err(Failure::api)?
            }
        };
    let hits = index.search(embedding.vector(0), usize::from(args.k), usize::from(args.ef)).map_err(Failure::run)?;
    let ordinals: Vec<u64> = hits.iter().map(|h| h.ordinal).collect();
    let rows = dataset.fetch(&ordinals).context("reading the matching rows").map_err(Failure::run)?;

    let mut stdout = std::io::stdout().lock();
    for (rank, (hit, row)) in hits.iter().zip(&rows).enumerate() {
        let rank = rank + 1;
        let line = if args.json {
            serde_json::json!({
                "rank": rank, "score": hit.score, "doc": row.doc, "chunk_index": row.chunk_index,
                "start": row.start, "end": row.end, "id": row.id, "text": row.text,
            })
            .to_string()
        } else {
            format!("{rank:>3}. {:.4}  {} #{}  {}", hit.score, row.doc, row.chunk_index, snippet(&row.text, 160))
        };
        if writeln!(stdout, "{line}").is_err() {
            break; // a closed pipe (`| head`) is not an error
        }
    }
    Ok(exit::SUCCESS)
}

/// The first `max` characters of `text` on one line.
fn snippet(text: &str, max: usize) -> String {
    let flat: String = text.split_whitespace().collect::<Vec<_>>().join(" ");
    match flat.char_indices().nth(max) {
        Some((cut, _)) => format!("{}…", &flat[..cut]),
        None => flat,
    }
}

async fn models(args: ModelsArgs) -> Result<u8, Failure> {
    let config = api_config("", None, Duration::from_secs(30), 0)?;
    let client = OpenAiEmbedder::new(config, Arc::new(Stats::default())).map_err(Failure::usage)?;
    let mut models = client.list_models().await.map_err(Failure::api)?;
    models.sort_by(|a, b| a.id.cmp(&b.id));
    let mut stdout = std::io::stdout().lock();
    for model in models {
        let line = if args.json { serde_json::to_string(&model).unwrap_or_default() } else { model.id };
        if writeln!(stdout, "{line}").is_err() {
            break;
        }
    }
    Ok(exit::SUCCESS)
}

/// Prints a failure with its cause chain and returns its exit code.
pub fn report(failure: &Failure) -> ExitCode {
    eprintln!("error: {:#}", failure.error);
    ExitCode::from(failure.code)
}
