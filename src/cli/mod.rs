//! The command line: parses arguments into validated settings, runs a command, prints results. The only module
//! that writes to stdout.
//!
//! Exit codes: 0 success; 1 a run that finished or stopped with failures (retries exhausted, quota, I/O);
//! 2 failure to start: usage or configuration errors (bad flags, pipeline files or inputs, missing or rejected key,
//! unknown model, rejected parameters); 75 another run holds the dataset; 130 interrupted.

mod args;
mod ask;
mod eval;
mod export;
mod job;
mod progress;
mod report;
mod search;
mod serve;
mod target;

use std::io::Write;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

pub use args::{
    AskArgs, Cli, Command, CommitArgs, EmbedArgs, EvalArgs, ExportCommand, IndexArgs, JobFlags, McpArgs, ModelsArgs,
    PgvectorArgs, QdrantArgs, RepairArgs, RequestFlags, RetryFailedArgs, RunArgs, RunsCommand, RunsStatusArgs,
    SearchArgs, ServeArgs, ServedFlags, VacuumArgs, ValidateArgs,
};
pub use job::JobSpec;
pub use progress::LogWriter;

use std::path::Path;

use crate::config::{Pipeline, Setting, normal_path};
use crate::embed::{
    BuildError, DEFAULT_API_BASE, EmbedError, EmbedderSpec, ModelEmbedder, ModelShape, OpenAiEmbedder, RequestSettings,
    api_config,
};
use crate::error::count;
use crate::index::{self, IndexParams};
use crate::pipeline::{EmbedJob, RunOutcome, run_embed};
use crate::stats::Stats;
use crate::store::{Dataset, DatasetLock, RunStatus, StoreError};
use report::RunReport;
use target::Target;

/// Exit codes (documented in README.md).
pub mod exit {
    pub const SUCCESS: u8 = 0;
    pub const FAILURES: u8 = 1;
    pub const USAGE: u8 = 2;
    /// Another run holds the dataset's lock (EX_TEMPFAIL: try again later).
    pub const LOCKED: u8 = 75;
    pub const INTERRUPTED: u8 = 130;
}

/// An error with the exit code it maps to, and what to do about it when that is known.
#[derive(Debug)]
pub struct Failure {
    pub code: u8,
    pub error: anyhow::Error,
    /// Printed on a line of its own after the error.
    pub advice: Option<String>,
}

impl Failure {
    fn usage(error: impl Into<anyhow::Error>) -> Self {
        Self { code: exit::USAGE, error: error.into(), advice: None }
    }

    fn run(error: impl Into<anyhow::Error>) -> Self {
        Self { code: exit::FAILURES, error: error.into(), advice: None }
    }

    /// API errors: a rejected request or configuration is the user's to fix (2); quota and exhausted retries are
    /// run failures (1).
    fn api(error: EmbedError) -> Self {
        let code = match error {
            EmbedError::Rejected { .. } | EmbedError::Misconfigured { .. } => exit::USAGE,
            _ => exit::FAILURES,
        };
        let advice = error.advice().map(str::to_owned);
        Self { code, error: anyhow::Error::new(error), advice }
    }
}

/// Runs a parsed command line; returns the process exit code.
pub async fn run(cli: Cli) -> Result<u8, Failure> {
    let mut cli = cli;
    // Paths are shown and recorded normalised (`pipelines/../x` is `x`).
    match &mut cli.command {
        Command::RetryFailed(RetryFailedArgs { dataset, .. })
        | Command::Repair(RepairArgs { dataset, .. })
        | Command::Index(IndexArgs { dataset, .. })
        | Command::Search(SearchArgs { dataset, .. })
        | Command::Ask(AskArgs { dataset, .. })
        | Command::Eval(EvalArgs { dataset, .. })
        | Command::Export(ExportCommand::Pgvector(PgvectorArgs { dataset, .. }))
        | Command::Export(ExportCommand::Qdrant(QdrantArgs { dataset, .. })) => *dataset = normal_path(dataset),
        _ => {}
    }
    match cli.command {
        Command::Embed(args) => {
            let spec = JobSpec::from_flags(args.inputs, args.out, args.job);
            execute(spec, None, cli.quiet, None, "embed").await
        }
        Command::Run(args) => {
            let pipeline = Pipeline::load(&args.pipeline).map_err(Failure::usage)?;
            let spec = JobSpec::from_pipeline(&pipeline, args.out, args.m, args.ef_construction, args.job);
            execute(spec, None, cli.quiet, Some(args.rebuild_index), "run").await
        }
        Command::RetryFailed(args) => {
            let target = Target::for_write(&args.dataset, false).await.map_err(Failure::usage)?;
            let dataset = Dataset::open(&target.dir).map_err(Failure::usage)?;
            let spec = JobSpec::for_retry(args.dataset, &dataset.manifest, args.requests);
            execute(spec, Some(target), cli.quiet, None, "retry-failed").await
        }
        Command::Validate(args) => validate(args).await,
        Command::Index(args) => build_index(args).await,
        Command::Repair(args) => repair(args).await,
        Command::Search(args) => search::search(args).await,
        Command::Ask(args) => ask::ask(args).await,
        Command::Eval(args) => eval::eval(args).await,
        Command::Serve(args) => serve::serve(args).await,
        Command::Mcp(args) => serve::mcp(args).await,
        Command::Models(args) => models(args).await,
        Command::Commit(args) => commit(args).await,
        Command::Runs(RunsCommand::Status(args)) => runs_status(args).await,
        Command::Vacuum(args) => vacuum(args).await,
        Command::Export(ExportCommand::Pgvector(args)) => export::pgvector(args).await,
        Command::Export(ExportCommand::Qdrant(args)) => export::qdrant(args).await,
    }
}

/// The embedder for `model`, with errors in the size pointing at where it was given.
async fn build_embedder(
    model: &Setting<String>,
    dimensions: Option<&Setting<u32>>,
    requests: RequestSettings,
    dry_run: bool,
    stats: &Arc<Stats>,
) -> Result<ModelEmbedder, Failure> {
    let spec = EmbedderSpec { model: model.value.clone(), dimensions: dimensions.map(|d| d.value), requests, dry_run };
    ModelEmbedder::build(&spec, stats).await.map_err(|e| match (e, dimensions) {
        (BuildError::Dimensions(message), Some(setting)) => Failure::usage(setting.error(message)),
        (e @ BuildError::Thread(_), _) => Failure::run(e),
        (e, _) => Failure::usage(e),
    })
}

/// Adds the fallback endpoint the job names, once it is known to serve the same vector space.
fn with_fallback(spec: &JobSpec, embedder: ModelEmbedder, stats: &Arc<Stats>) -> Result<ModelEmbedder, Failure> {
    match embedder.api_base().map(str::to_owned) {
        Some(primary) => match spec.fallback(&primary).map_err(Failure::usage)? {
            Some((base, model)) => embedder.with_fallback(&base, &model, stats).map_err(Failure::usage),
            None => Ok(embedder),
        },
        None => {
            // Refuses a fallback for a local model; a dry run sends nothing, so only the model is checked.
            spec.fallback(DEFAULT_API_BASE).map_err(Failure::usage)?;
            Ok(embedder)
        }
    }
}

/// Takes the dataset lock on a blocking thread (it may wait).
async fn lock_dataset(dir: &Path, command: &'static str, wait: Duration) -> Result<DatasetLock, Failure> {
    let dir = dir.to_path_buf();
    let lock = tokio::task::spawn_blocking(move || DatasetLock::acquire(&dir, command, wait))
        .await
        .map_err(|e| Failure::run(anyhow::anyhow!("lock thread failed: {e}")))?
        .map_err(|e| match e {
            e @ StoreError::Locked { .. } => Failure { code: exit::LOCKED, error: e.into(), advice: None },
            e => Failure::run(e),
        })?;
    if let Some(holder) = &lock.stale {
        tracing::warn!("took over the lock of a run that ended without releasing it ({holder})");
    }
    Ok(lock)
}

/// `embed`, `run` and `retry-failed`: the incremental embed, then the index update (`run` always builds one; the
/// others update the index the dataset has, so that searches stay fast), and the run report. `index` is `run`'s
/// `--rebuild-index`.
async fn execute(
    spec: JobSpec,
    target: Option<Target>,
    quiet: bool,
    index: Option<bool>,
    command: &'static str,
) -> Result<u8, Failure> {
    let started_unix = crate::store::unix_now();
    spec.check_general().map_err(Failure::usage)?;
    let stats = Arc::new(Stats::default());
    let timeout = Duration::from_secs(spec.timeout.value);
    let requests = RequestSettings {
        timeout,
        max_retries: spec.max_retries.value,
        limits: spec.rate_limits(),
        concurrency: usize::from(spec.concurrency.as_ref().map_or(8, |c| c.value)),
    };
    let embedder = build_embedder(&spec.model, spec.dimensions.as_ref(), requests, spec.dry_run, &stats).await?;
    let embedder = with_fallback(&spec, embedder, &stats)?;
    let ModelShape { max_input_tokens: limit, counter, default_concurrency } = embedder.shape();
    let (chunking, batching) = spec.chunking(limit).map_err(Failure::usage)?;
    let index_params = spec.index_params().map_err(Failure::usage)?;
    let max_tokens = spec.token_budget().map_err(Failure::usage)?;
    let price = spec.price().map_err(Failure::usage)?;
    if !spec.retry_failed {
        // Inputs are checked before the dataset's folder is made: a run that cannot start leaves nothing behind.
        crate::source::FileSource::new(spec.source_options().map_err(Failure::usage)?).map_err(Failure::usage)?;
    }
    let sharding = spec.sharding().map_err(Failure::usage)?;
    if sharding.is_some() && (spec.dry_run || spec.retry_failed || spec.repair) {
        return Err(Failure::usage(anyhow::anyhow!(
            "--shard runs one shard of a run; --dry-run, --repair and retry-failed work on the whole dataset"
        )));
    }
    // A dataset on object storage is worked on in its mirror, which holds the newest version from here on; a
    // shard of a sharded run works in a folder of its own there.
    let (mut target, sharded) = match (target, &sharding) {
        (Some(target), _) => (target, None),
        (None, Some((shard, run))) => {
            let settings = target::ShardSettings {
                run: run.clone(),
                model: crate::embed::Embedder::model(&embedder).to_owned(),
                requested_dimensions: spec.dimensions.as_ref().map(|d| d.value),
                chunking: crate::store::ChunkingInfo {
                    tokenizer: counter.name(),
                    max_tokens: chunking.max_tokens,
                    overlap: chunking.overlap,
                },
                metadata_spec: spec.source_options().map_err(Failure::usage)?.records.metadata.to_strings(),
                fresh: spec.fresh,
            };
            let (target, run) = Target::for_shard(&spec.out, *shard, settings).await.map_err(|e| match e {
                // Exit 2 is the "do not retry" code a Kubernetes podFailurePolicy can act on.
                e @ StoreError::RunSettings { .. } => Failure::usage(e),
                e => Failure::run(e),
            })?;
            if let Some(generation) = run.committed {
                println!(
                    "run {} was committed as version {generation} of {}; nothing to do",
                    run.plan.run, target.name
                );
                return Ok(exit::SUCCESS);
            }
            (target, Some(run))
        }
        (None, None) => (Target::for_write(&spec.out, spec.dry_run).await.map_err(Failure::run)?, None),
    };
    let dir = target.dir.clone();
    let (cache_uploads, uploaded) = match (&target.remote, spec.dry_run) {
        (Some(remote), false) => {
            let (sink, task) = target::spawn_segment_uploads(Arc::clone(remote), dir.clone());
            (Some(sink), Some(task))
        }
        _ => (None, None),
    };
    // A dry run reads the dataset (to count only what would be sent) and writes nothing, so it takes no lock.
    let _lock = if spec.dry_run { None } else { Some(lock_dataset(&dir, command, spec.wait_lock).await?) };
    if spec.repair && !spec.dry_run && dir.join(crate::store::MANIFEST_FILE).exists() {
        let repair = repair_dataset(&dir).await?;
        for line in repair_lines(&repair, &dir) {
            tracing::warn!("--repair: {line}");
        }
    }
    let captioner = match (&spec.caption_model, spec.retry_failed) {
        (Some(model), false) => Some(Arc::new(captioner(model, &target, spec.dry_run, spec.max_retries.value)?)),
        _ => None,
    };
    let mut source = spec.source_options().map_err(Failure::usage)?;
    source.skip_dirs.push(dir.clone());
    let job = EmbedJob {
        source,
        chunking,
        counter,
        batching,
        concurrency: usize::from(spec.concurrency.as_ref().map_or(default_concurrency, |c| c.value)),
        out: dir.clone(),
        fresh: spec.fresh,
        requested_dimensions: spec.dimensions.as_ref().map(|d| d.value),
        dry_run: spec.dry_run,
        max_tokens,
        max_failures: spec.max_failures.as_ref().map(|m| m.value),
        retry_failed: spec.retry_failed,
        max_delete: spec.delete_limit().map_err(Failure::usage)?,
        cache_uploads,
        shard: sharded.as_ref().map(|s| s.shard),
        captioner,
    };

    // The bar's total: a walk of the inputs that reads no file, alongside the run (stopped with it).
    let prescan_stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let progress = progress::wanted(quiet).then(|| {
        let (options, scanned, stop) = (job.source.clone(), Arc::clone(&stats), Arc::clone(&prescan_stop));
        tokio::task::spawn_blocking(move || {
            if !options.inputs.is_empty() {
                let _ = crate::source::FileSource::prescan(options, &stop, |totals| {
                    scanned.input_files_total.store(totals.files, std::sync::atomic::Ordering::Relaxed);
                    scanned.input_bytes_total.store(totals.bytes, std::sync::atomic::Ordering::Relaxed);
                });
            }
            scanned.prescan_done.store(true, std::sync::atomic::Ordering::Relaxed);
        });
        progress::Progress::start(Arc::clone(&stats))
    });
    let shutdown = stop_signal();
    let started = std::time::Instant::now();
    let run_stats = Arc::clone(&stats);
    let captions = job.captioner.is_some() && !spec.dry_run;
    let outcome = run_embed(job, Arc::new(embedder), run_stats, shutdown).await;
    if captions {
        target.push_captions().await;
    }
    drop(progress);
    prescan_stop.store(true, std::sync::atomic::Ordering::Relaxed);
    // The run's cache is closed: its last segment names have been sent.
    let uploaded = match uploaded {
        Some(task) => task.await.unwrap_or_default(),
        None => Vec::new(),
    };
    let outcome = match outcome {
        Ok(outcome) => outcome,
        Err(crate::pipeline::PipelineError::Source(e)) => return Err(Failure::usage(e)),
        Err(e) => {
            // A run that fails after it started still says what it did and why it stopped (best effort: the cause
            // may be a full disk that keeps the report from being saved).
            let advice = match &e {
                crate::pipeline::PipelineError::Store(e) => damage_advice(e, &spec.out),
                _ => None,
            };
            let error = anyhow::Error::new(e);
            let failed = RunOutcome::failed(stats.snapshot(started.elapsed()), format!("{error:#}"));
            let report = RunReport::new(&spec, &failed, None, started_unix, price);
            if !spec.dry_run {
                report.save(&dir);
                if let Err(e) = target.settle_cache(false, uploaded).await {
                    tracing::warn!("could not upload the embedding cache: {}", crate::error::Chain(&e));
                }
            }
            report.print(spec.json);
            let kept = format!("run failed; {}", kept_message(&target, None));
            return Err(Failure { advice, ..Failure::run(error.context(kept)) });
        }
    };

    let mut outcome = outcome;
    // On object storage the version is only published once committed there.
    let mut commit_failure = None;
    if let Some(published) = outcome.published.as_mut().filter(|_| !spec.dry_run && sharded.is_none()) {
        match target.commit(published).await {
            Ok(committed) => *published = committed,
            Err(e) => commit_failure = Some(e),
        }
    }
    let committed = commit_failure.is_none();
    let stopped = outcome.fatal.is_some() || outcome.interrupted || !committed;
    if !spec.dry_run && sharded.is_none() {
        let complete = committed && !stopped && outcome.status == RunStatus::Complete && outcome.published.is_some();
        if let Err(e) = target.settle_cache(complete, uploaded.clone()).await {
            tracing::warn!("could not settle the embedding cache on {}: {}", target.name, crate::error::Chain(&e));
        }
    }
    let index = match index {
        _ if spec.no_index => None,
        Some(rebuild) => Some((index_params, rebuild)),
        None => index::existing_params(&dir).map(|params| (params, false)),
    };
    // A shard's version is one slice: the index is built once the run is committed (below).
    let (index, shard_index) = if sharded.is_some() { (None, index) } else { (index, None) };
    let mut index_failure = None;
    let index_meta = match (&outcome.published, index) {
        (Some(manifest), Some((index_params, rebuild))) if !stopped && manifest.rows > 0 => {
            let dataset = Dataset { dir: dir.clone(), manifest: manifest.clone() };
            match tokio::task::spawn_blocking(move || index::update(&dataset, index_params, rebuild)).await {
                Ok(Ok(meta)) => match target.push_indexes().await {
                    Ok(()) => Some(meta),
                    Err(e) => {
                        index_failure = Some(anyhow::Error::new(e));
                        None
                    }
                },
                Ok(Err(e)) => {
                    index_failure = Some(anyhow::Error::new(e));
                    None
                }
                Err(e) => {
                    index_failure = Some(anyhow::anyhow!("index thread failed: {e}"));
                    None
                }
            }
        }
        _ => None,
    };

    let report = RunReport::new(&spec, &outcome, index_meta.as_ref(), started_unix, price);
    if spec.dry_run {
        report.print_dry_run(spec.json);
        return Ok(exit::SUCCESS);
    }
    report.save(&dir);
    report.print(spec.json);

    if let Some(run) = sharded {
        let shard_stopped = stopped || outcome.budget_reached || outcome.mass_delete.is_some();
        return finish_shard(&target, run, &outcome, shard_stopped, uploaded, shard_index.map(|(p, _)| p)).await;
    }
    if let Some(error) = commit_failure {
        let code = if matches!(error, StoreError::Conflict { .. }) { exit::LOCKED } else { exit::FAILURES };
        return Err(Failure { code, error: error.into(), advice: None });
    }
    let kept = kept_message(&target, outcome.published.as_ref());
    if let Some(refusal) = outcome.mass_delete {
        return Err(Failure::usage(refusal));
    }
    if let Some(error) = outcome.fatal {
        let failure = Failure::api(error);
        return Err(Failure { error: failure.error.context(format!("run stopped; {kept}")), ..failure });
    }
    if outcome.interrupted {
        eprintln!("interrupted; {kept}");
        return Ok(exit::INTERRUPTED);
    }
    if outcome.budget_reached {
        eprintln!(
            "stopped before exceeding the budget of {} tokens; {kept}; the next run continues from there",
            max_tokens.unwrap_or(0)
        );
        return Ok(exit::FAILURES);
    }
    if let Some(error) = index_failure {
        return Err(Failure::run(error.context("the embeddings are saved, but the index update failed")));
    }
    let unreadable = outcome.summary.read_errors;
    if unreadable > 0 {
        eprintln!(
            "error: {unreadable} {} could not be read (listed above); the {} read from them before kept their \
             previous version; {kept}",
            if unreadable == 1 { "file or directory" } else { "files or directories" },
            count(outcome.summary.docs_unreadable, "document"),
        );
        return Ok(exit::FAILURES);
    }
    let uncaptioned = outcome.summary.images.failed;
    if uncaptioned > 0 {
        eprintln!(
            "error: {} could not be captioned (listed above); the run went on without {}; {kept}; the next run tries \
             again",
            count(uncaptioned, "image"),
            if uncaptioned == 1 { "it" } else { "them" }
        );
    }
    Ok(match outcome.status {
        RunStatus::Complete => exit::SUCCESS,
        _ => {
            if outcome.incomplete_docs > 0 {
                eprintln!(
                    "{} kept their previous version (or were left out) because the run did not reach all of their \
                     chunks; re-run to finish them",
                    count(outcome.incomplete_docs as u64, "document")
                );
            }
            exit::FAILURES
        }
    })
}

/// The captioner of a run with `--caption-model`: its chat client (pacing and retries as patient as the
/// embeddings'), and the dataset's caption cache. A dry run needs no key and sends nothing.
fn captioner(
    model: &Setting<String>,
    target: &Target,
    dry_run: bool,
    max_retries: u32,
) -> Result<crate::caption::Captioner, Failure> {
    let dir = target.captions_dir();
    let open = if dry_run { crate::store::CaptionCache::open_read_only } else { crate::store::CaptionCache::open };
    let cache = open(&dir).map_err(Failure::run)?;
    if dry_run {
        return Ok(crate::caption::Captioner::dry_run(&model.value, cache));
    }
    let endpoint = crate::tars::Endpoint::from_env()
        .map_err(|e| Failure::usage(anyhow::anyhow!("{e} (--caption-model sends the images to TARS)")))?;
    let config = crate::tars::chat::ChatConfig {
        retry: crate::tars::retry::RetryPolicy { max_retries, ..Default::default() },
        max_concurrency: crate::caption::CAPTIONS_IN_FLIGHT,
        ..crate::tars::chat::ChatConfig::new(endpoint, &model.value)
    };
    let chat = crate::tars::chat::ChatClient::new(config).map_err(|e| Failure::usage(model.error(e)))?;
    Ok(crate::caption::Captioner::new(Arc::new(chat), cache))
}

/// After a shard's pipeline: a shard that finished records itself done (unless another attempt of it did first),
/// and whichever shard finds all N done commits the run and indexes it; a shard that stopped leaves its cache
/// segments for the attempt that replaces it.
async fn finish_shard(
    target: &Target,
    run: target::ShardRun,
    outcome: &RunOutcome,
    stopped: bool,
    uploaded: Vec<String>,
    index: Option<IndexParams>,
) -> Result<u8, Failure> {
    let Some(remote) = &target.remote else { return Err(Failure::run(anyhow::anyhow!("a shard needs a store"))) };
    let name = &target.name;
    let label = format!("shard {} of run {}", run.shard, run.plan.run);
    let published = match (&outcome.published, stopped) {
        (Some(published), false) => published,
        _ => {
            remote.push_cache(&target.dir).await.map_err(Failure::run)?;
            if let Some(error) = &outcome.fatal {
                return Err(Failure::run(anyhow::anyhow!("{label} stopped: {error}; what it embedded is cached")));
            }
            eprintln!("{label} stopped before it finished; what it embedded is cached for the next attempt");
            return Ok(if outcome.interrupted { exit::INTERRUPTED } else { exit::FAILURES });
        }
    };
    let mut segments = target.cached.clone();
    segments.extend(uploaded);
    let attempt =
        crate::store::Attempt { shard: run.shard, id: &run.attempt, work: &target.dir, base_files: &run.base_files };
    let finished = remote.finish_shard(&run.plan, &attempt, published, segments).await.map_err(Failure::run)?;
    if finished == crate::store::Finished::AnotherAttempt {
        eprintln!("{label}: another attempt of this shard finished first; this one's files are removed");
    }
    let state = remote.run_state(&run.plan.run).await.map_err(Failure::run)?;
    if !state.missing.is_empty() {
        eprintln!(
            "{label} done: {} of {} shards done; the last one to finish commits the run (or `tars-index commit {name} --run-id {}`)",
            state.done.len(),
            run.plan.shards,
            run.plan.run
        );
        return Ok(exit::SUCCESS);
    }
    commit_and_index(remote, &run.plan.run, index).await
}

/// Commits a sharded run whose shards are done (idempotent), pulls the version into the mirror and brings the
/// index up to date there and in the store.
async fn commit_and_index(
    remote: &Arc<crate::store::Remote>,
    run: &str,
    index: Option<IndexParams>,
) -> Result<u8, Failure> {
    let manifest = remote.commit_run(run).await.map_err(|e| match e {
        e @ StoreError::Conflict { .. } => Failure { code: exit::LOCKED, error: e.into(), advice: None },
        e => Failure::run(e),
    })?;
    let dir = remote.pull(&manifest, true).await.map_err(Failure::run)?;
    let index = index.or_else(|| index::existing_params(&dir));
    let mut line = format!(
        "run {run} committed: {} version {}, {}",
        remote.url,
        manifest.generation,
        count(manifest.live_rows, "chunk")
    );
    if let Some(params) = index.filter(|_| manifest.rows > 0) {
        let dataset = Dataset { dir: dir.clone(), manifest: manifest.clone() };
        let _lock = lock_dataset(&dir, "commit", Duration::from_secs(600)).await?;
        let meta = tokio::task::spawn_blocking(move || index::update(&dataset, params, false))
            .await
            .map_err(|e| Failure::run(anyhow::anyhow!("index thread failed: {e}")))?
            .map_err(|e| {
                Failure::run(anyhow::Error::new(e).context("the run is committed, but the index update failed"))
            })?;
        remote.push_indexes().await.map_err(Failure::run)?;
        line = format!("{line}; {}", report::index_line(&meta));
    }
    eprintln!("{line}");
    Ok(exit::SUCCESS)
}

/// The store a sharded run's dataset lives in (a local path through `file://`).
fn run_store(dataset: &Path) -> Result<Arc<crate::store::Remote>, Failure> {
    let text = dataset.to_string_lossy();
    let url = match crate::store::url_scheme(&text) {
        Some(_) => text.into_owned(),
        None => format!("file://{}", std::path::absolute(dataset).map_err(Failure::usage)?.display()),
    };
    match crate::store::Location::parse(&url).map_err(Failure::usage)? {
        crate::store::Location::Remote(remote) => Ok(remote),
        crate::store::Location::Local(_) => Err(Failure::usage(anyhow::anyhow!("{url}: not a store"))),
    }
}

async fn commit(args: CommitArgs) -> Result<u8, Failure> {
    crate::store::check_run_id(&args.run_id).map_err(|e| Failure::usage(anyhow::anyhow!("--run-id {e}")))?;
    let remote = run_store(&args.dataset)?;
    remote.probe().await.map_err(Failure::run)?;
    let index = if args.no_index { None } else { Some(IndexParams::default()) };
    commit_and_index(&remote, &args.run_id, index).await
}

async fn vacuum(args: VacuumArgs) -> Result<u8, Failure> {
    let remote = run_store(&args.dataset)?;
    let done = remote.vacuum(args.older_than, args.dry_run).await.map_err(|e| match e {
        e @ StoreError::NotADataset { .. } => Failure::usage(e),
        e => Failure::run(e),
    })?;
    let mut stdout = std::io::stdout().lock();
    if args.json {
        let _ = writeln!(stdout, "{}", serde_json::to_string(&done).unwrap_or_default());
        return Ok(exit::SUCCESS);
    }
    let verb = if done.dry_run { "would remove" } else { "removed" };
    for name in &done.removed {
        let _ = writeln!(stdout, "{verb} {name}");
    }
    let _ = writeln!(
        stdout,
        "{}: {verb} {} ({:.1} MB); kept version {} and {} other version object(s){}",
        remote.url,
        count(done.removed.len() as u64, "object"),
        done.bytes as f64 / 1e6,
        done.generation,
        done.versions_kept.saturating_sub(1),
        match done.too_young {
            0 => String::new(),
            n => format!("; {} unused but younger than --older-than", count(n as u64, "object")),
        }
    );
    Ok(exit::SUCCESS)
}

async fn runs_status(args: RunsStatusArgs) -> Result<u8, Failure> {
    let remote = run_store(&args.dataset)?;
    let state = remote.run_state(&args.run_id).await.map_err(Failure::usage)?;
    let mut stdout = std::io::stdout().lock();
    if args.json {
        let _ = writeln!(stdout, "{}", serde_json::to_string(&state).unwrap_or_default());
        return Ok(exit::SUCCESS);
    }
    let plan = &state.plan;
    let committed = state.committed.map_or_else(|| "not committed".to_owned(), |g| format!("committed as version {g}"));
    let _ = writeln!(
        stdout,
        "run {} of {}: {} of {} shards done, {committed}",
        plan.run,
        remote.url,
        state.done.len(),
        plan.shards
    );
    for shard in &state.done {
        let _ = writeln!(
            stdout,
            "  shard {:>4}: done ({} new rows, {} live; attempt {})",
            shard.shard, shard.new_rows, shard.live_rows, shard.attempt
        );
    }
    if !state.missing.is_empty() {
        let missing: Vec<String> = state.missing.iter().map(ToString::to_string).collect();
        let _ = writeln!(stdout, "  not done: {}", missing.join(", "));
    }
    Ok(exit::SUCCESS)
}

/// What a run that stopped leaves in its dataset: the version it published, or the one before.
fn kept_message(target: &Target, published: Option<&crate::store::Manifest>) -> String {
    let name = &target.name;
    match published {
        Some(m) => format!("the dataset in {name} holds {}", count(m.live_rows, "chunk")),
        None if target.base.is_some() || target.dir.join(crate::store::MANIFEST_FILE).exists() => format!(
            "the previous version of {name} is kept; the chunks embedded so far are cached there and will not be sent again"
        ),
        None => format!(
            "nothing was published in {name}; the chunks embedded so far are cached there and will not be sent again"
        ),
    }
}

async fn validate(args: ValidateArgs) -> Result<u8, Failure> {
    let mut failed = 0;
    for path in &args.pipelines {
        match validate_one(path).await {
            Ok(summary) => println!("{}: ok ({summary})", path.display()),
            Err(e) => {
                failed += 1;
                eprintln!("error: {e:#}");
            }
        }
    }
    Ok(if failed == 0 { exit::SUCCESS } else { exit::USAGE })
}

/// Everything `run` checks before its first request, without a key and without writing anything.
async fn validate_one(path: &Path) -> anyhow::Result<String> {
    let pipeline = Pipeline::load(path)?;
    let spec = JobSpec::from_pipeline(&pipeline, None, None, None, args::JobFlags::default());
    spec.check_general()?;
    crate::source::FileSource::new(spec.source_options()?)?;
    // A dry run's embedder: an endpoint's model needs no key; a local one is loaded (its limit is its own).
    let embedder = build_embedder(
        &spec.model,
        spec.dimensions.as_ref(),
        RequestSettings::default(),
        true,
        &Arc::new(Stats::default()),
    )
    .await
    .map_err(|f| f.error)?;
    let limit = embedder.shape().max_input_tokens;
    spec.chunking(limit)?;
    Ok(format!("{} input path(s) → {} with {}", spec.source.inputs.len(), spec.out.display(), spec.model.value))
}

/// Resolves on Ctrl-C, or on SIGTERM (what schedulers such as systemd and Kubernetes send) on Unix.
pub(crate) async fn stop_signal() {
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

/// Checks and repairs the dataset under its lock (on a blocking thread: it reads every file).
async fn repair_dataset(dir: &Path) -> Result<crate::store::Repair, Failure> {
    let dataset = Dataset::open(dir).map_err(Failure::usage)?;
    tokio::task::spawn_blocking(move || crate::store::repair(&dataset))
        .await
        .map_err(|e| Failure::run(anyhow::anyhow!("repair thread failed: {e}")))?
        .map_err(Failure::run)
}

/// What a repair found and did, as lines for people.
fn repair_lines(repair: &crate::store::Repair, dir: &Path) -> Vec<String> {
    let mut lines =
        vec![format!("checked {}: {} damaged", count(repair.files_checked as u64, "file"), repair.damaged.len())];
    lines.extend(repair.damaged.iter().map(|d| format!("  {}: {}", d.path, d.error)));
    if let Some(generation) = repair.generation {
        let redo = if repair.documents_table_replaced {
            "every document is read again by the next run, which reuses the vector of every text it finds".to_owned()
        } else {
            format!(
                "{} the next run reads again, embedding only the chunks the damaged files held",
                count(repair.documents_to_redo, "document")
            )
        };
        lines.push(format!("dropped {}; {redo}", count(repair.rows_dropped, "row")));
        lines.push(format!(
            "version {generation} published; the damaged files are kept in {}",
            dir.join(crate::store::DAMAGED_DIR).display()
        ));
    }
    lines
}

async fn repair(args: RepairArgs) -> Result<u8, Failure> {
    let mut target = Target::for_write(&args.dataset, false).await.map_err(Failure::usage)?;
    let dir = target.dir.clone();
    Dataset::open(&dir).map_err(Failure::usage)?;
    let _lock = lock_dataset(&dir, "repair", Duration::from_secs(args.wait_lock)).await?;
    let repair = repair_dataset(&dir).await?;
    // The index keeps working (rows dropped are filtered out); bring it up to date, rebuilding it if it was damaged.
    let mut index_meta = None;
    if repair.generation.is_some() {
        let mut dataset = Dataset::open(&dir).map_err(Failure::run)?;
        dataset.manifest = target.commit(&dataset.manifest).await.map_err(Failure::run)?;
        if let Some(params) = index::existing_params(&dir)
            && dataset.manifest.rows > 0
        {
            let meta = tokio::task::spawn_blocking(move || index::update(&dataset, params, false))
                .await
                .map_err(|e| Failure::run(anyhow::anyhow!("index thread failed: {e}")))?
                .map_err(Failure::run)?;
            target.push_indexes().await.map_err(Failure::run)?;
            index_meta = Some(meta);
        }
    }
    let mut stdout = std::io::stdout().lock();
    if args.json {
        let value = serde_json::json!({ "repair": repair, "index": index_meta });
        let _ = writeln!(stdout, "{value}");
    } else {
        for line in repair_lines(&repair, &args.dataset) {
            let _ = writeln!(stdout, "{line}");
        }
        if let Some(meta) = &index_meta {
            let _ = writeln!(stdout, "{}", report::index_line(meta));
        }
    }
    Ok(exit::SUCCESS)
}

/// What to do about `error` when it comes from a damaged file of the dataset in `dir`.
pub(crate) fn damage_advice(error: &StoreError, dir: &Path) -> Option<String> {
    error.is_damage().then(|| {
        format!(
            "a file of the dataset is damaged: `tars-index repair {}` drops it and the next run embeds again only \
             what it held (or run again with --repair)",
            dir.display()
        )
    })
}

async fn build_index(args: IndexArgs) -> Result<u8, Failure> {
    let params = IndexParams { m: args.m, ef_construction: args.ef_construction };
    params.validate().map_err(Failure::usage)?;
    let target = Target::for_write(&args.dataset, args.verify).await.map_err(Failure::usage)?;
    let dataset = Dataset::open(&target.dir).map_err(Failure::usage)?;
    if args.verify {
        let meta = tokio::task::spawn_blocking(move || index::SearchIndex::check(&dataset, index::Check::Full))
            .await
            .map_err(|e| Failure::run(anyhow::anyhow!("index check thread failed: {e}")))?
            .map_err(Failure::run)?;
        let bytes: u64 = meta.files.iter().map(|f| f.bytes).sum();
        let mut stdout = std::io::stdout().lock();
        if args.json {
            let value = serde_json::json!({ "verified": true, "files": meta.files.len(), "bytes": bytes,
                "generation": meta.generation, "points": meta.points });
            let _ = writeln!(stdout, "{value}");
        } else {
            let _ = writeln!(
                stdout,
                "index ok: {bytes} bytes in {} file{} match their checksums ({} points, dataset version {})",
                meta.files.len(),
                if meta.files.len() == 1 { "" } else { "s" },
                meta.points,
                meta.generation
            );
        }
        return Ok(exit::SUCCESS);
    }
    let _lock = lock_dataset(&target.dir, "index", Duration::from_secs(args.wait_lock)).await?;
    // Read again under the lock: a run may have published a new version meanwhile.
    let dataset = Dataset::open(&target.dir).map_err(Failure::usage)?;
    let meta = tokio::task::spawn_blocking(move || index::update(&dataset, params, args.rebuild))
        .await
        .map_err(|e| Failure::run(anyhow::anyhow!("index build thread failed: {e}")))?
        .map_err(Failure::run)?;
    target.push_indexes().await.map_err(Failure::run)?;
    let mut stdout = std::io::stdout().lock();
    if args.json {
        let _ = writeln!(stdout, "{}", serde_json::to_string(&meta).unwrap_or_default());
    } else {
        let _ = writeln!(stdout, "{}", report::index_line(&meta));
    }
    Ok(exit::SUCCESS)
}

async fn models(args: ModelsArgs) -> Result<u8, Failure> {
    let config = api_config(
        "",
        None,
        RequestSettings { timeout: Duration::from_secs(30), max_retries: 0, ..Default::default() },
    )
    .map_err(Failure::usage)?;
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

/// Prints a failure with its cause chain (and what to do about it) and returns its exit code.
pub fn report(failure: &Failure) -> ExitCode {
    eprintln!("error: {:#}", failure.error);
    if let Some(advice) = &failure.advice {
        eprintln!("advice: {advice}");
    }
    ExitCode::from(failure.code)
}
