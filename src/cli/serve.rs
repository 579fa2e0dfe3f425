//! `serve`: checks the datasets and the address, binds, then loads the datasets in the background (`/readyz`
//! answers 503 until they are) and serves until SIGTERM or Ctrl-C. `mcp`: loads them, then serves MCP on stdio
//! until the client hangs up.

use std::collections::HashMap;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use super::target::Target;
use super::{Failure, McpArgs, ServeArgs, ServedFlags, exit, stop_signal};
use crate::config::normal_path;
use crate::embed::{EmbedderSpec, ModelEmbedder, RequestSettings};
use crate::query::{Engine, Searcher};
use crate::server::{self, Limits, Served, Server};
use crate::stats::Stats;
use crate::store::Dataset;
use crate::tars::Endpoint;
use crate::tars::chat::{ChatClient, ChatConfig, ChatError};

pub async fn serve(args: ServeArgs) -> Result<u8, Failure> {
    let (datasets, names) = check(&args.served)?;
    let token = match &args.token_env {
        Some(var) => match std::env::var(var) {
            Ok(token) if !token.trim().is_empty() => Some(token.trim().to_owned()),
            _ => return Err(Failure::usage(anyhow::anyhow!("--token-env {var}: the variable is not set or empty"))),
        },
        None => None,
    };
    let deadline = Duration::from_secs_f64(args.served.request_timeout.max(0.1));
    let limits = Limits { deadline, ..Limits::default() };
    let (cache, poll) = (args.served.cache, poll_interval(&args.served));
    let listener = tokio::net::TcpListener::bind(args.addr)
        .await
        .map_err(|e| Failure::usage(anyhow::anyhow!("cannot listen on {}: {e}", args.addr)))?;
    let addr = listener.local_addr().map_err(Failure::run)?;
    if !addr.ip().is_loopback() && token.is_none() {
        tracing::warn!(
            "listening on {addr}, which other machines can reach, without a token: anyone who can connect can search \
             these datasets (--token-env VAR requires one)"
        );
    }
    {
        let mut stdout = std::io::stdout().lock();
        let _ = writeln!(stdout, "serving {} on http://{addr}", names.join(", "));
        let _ = stdout.flush();
    }

    let server = Server::new(names.clone(), token, limits, !addr.ip().is_loopback(), chat_client(&args.served));
    let (failed_tx, failed_rx) = tokio::sync::oneshot::channel::<Failure>();
    let loading = {
        let server = Arc::clone(&server);
        let requests = query_requests(deadline);
        tokio::spawn(async move {
            match load(&datasets, &names, requests, cache, poll).await {
                Ok(served) => {
                    server.loaded(served);
                    tracing::info!("every dataset is loaded: ready");
                }
                Err(failure) => {
                    server.load_failed();
                    let _ = failed_tx.send(failure);
                }
            }
        })
    };
    let refreshing = tokio::spawn(server::refresh_all(Arc::clone(&server), poll));

    // Stop on a signal, or when loading failed (the server could never become ready): then the failure is the exit.
    let load_failure = Arc::new(std::sync::Mutex::new(None::<Failure>));
    let stop = {
        let load_failure = Arc::clone(&load_failure);
        async move {
            tokio::select! {
                () = stop_signal() => {}
                // Loading succeeded when the sender is dropped unsent: only a signal stops the server then.
                Ok(failure) = failed_rx => {
                    *load_failure.lock().unwrap_or_else(|p| p.into_inner()) = Some(failure);
                }
            }
        }
    };
    let drain = Duration::from_secs_f64(args.shutdown_timeout);
    let served = server::http::run(listener, Arc::clone(&server), stop, drain).await;
    loading.abort();
    refreshing.abort();
    served.map_err(Failure::run)?;
    if let Some(failure) = load_failure.lock().unwrap_or_else(|p| p.into_inner()).take() {
        return Err(failure);
    }
    Ok(exit::SUCCESS)
}

pub async fn mcp(McpArgs { served: args }: McpArgs) -> Result<u8, Failure> {
    let (datasets, names) = check(&args)?;
    let deadline = Duration::from_secs_f64(args.request_timeout.max(0.1));
    let server = Server::new(names.clone(), None, Limits { deadline, ..Limits::default() }, false, chat_client(&args));
    server.loaded(load(&datasets, &names, query_requests(deadline), args.cache, poll_interval(&args)).await?);
    let refreshing = tokio::spawn(server::refresh_all(Arc::clone(&server), poll_interval(&args)));
    // Standard output is the protocol's: everything else goes to the log on stderr.
    let served = server::mcp::serve_stdio(server).await;
    refreshing.abort();
    served.map_err(|e| Failure::run(anyhow::anyhow!("MCP: {e}")))?;
    Ok(exit::SUCCESS)
}

/// The chat model asks are answered with, when the environment has a TARS key.
fn chat_client(flags: &ServedFlags) -> Option<Arc<ChatClient>> {
    let built = Endpoint::from_env()
        .map_err(ChatError::from)
        .and_then(|e| ChatClient::new(ChatConfig::new(e, &flags.chat_model)));
    match built {
        Ok(chat) => Some(Arc::new(chat)),
        Err(e) => {
            tracing::info!("questions are off (POST /v1/ask, the ask tool): {e}");
            None
        }
    }
}

/// The datasets' paths and names, each local dataset checked to open (one on object storage is only named here: it
/// is fetched while the server loads).
fn check(flags: &ServedFlags) -> Result<(Vec<PathBuf>, Vec<String>), Failure> {
    let datasets: Vec<PathBuf> = flags.datasets.iter().map(|d| normal_path(d)).collect();
    let names = names(&datasets, &flags.name)?;
    for dir in &datasets {
        match dir.to_str().and_then(crate::store::url_scheme) {
            Some(_) => drop(crate::store::Location::parse(&dir.to_string_lossy()).map_err(Failure::usage)?),
            None => drop(Dataset::open(dir).map_err(Failure::usage)?),
        }
    }
    Ok((datasets, names))
}

/// Keeps the mirror of a dataset on object storage as new as the store: a new version, or a new index of the one
/// served, is pulled into the mirror, where the server's own refresh finds it.
async fn follow(target: Target, every: Duration) {
    let Some(remote) = target.remote else { return };
    let mut generation = target.base.map(|b| b.generation);
    let mut stamp = remote.index_stamp().await.ok().flatten();
    let mut tick = tokio::time::interval(every.max(Duration::from_secs(1)));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        let pulled = async {
            let latest = remote.latest().await?;
            let now = remote.index_stamp().await?;
            match latest {
                Some(manifest) if Some(manifest.generation) != generation => {
                    remote.pull(&manifest, true).await?;
                    generation = Some(manifest.generation);
                    stamp = now;
                }
                _ if now != stamp => {
                    remote.pull_indexes().await?;
                    stamp = now;
                }
                _ => {}
            }
            Ok::<_, crate::store::StoreError>(())
        };
        if let Err(e) = pulled.await {
            tracing::warn!(dataset = %remote.url, "could not look for a new version: {}", crate::error::Chain(&e));
        }
    }
}

fn poll_interval(flags: &ServedFlags) -> Duration {
    Duration::from_secs_f64(flags.poll_interval.max(0.05))
}

/// How query embeddings are requested: each attempt within the request deadline, and few retries.
fn query_requests(deadline: Duration) -> RequestSettings {
    RequestSettings { timeout: deadline.min(Duration::from_secs(60)), max_retries: 2, ..RequestSettings::default() }
}

/// Each dataset's name: the one given with --name, in order, else its directory's.
fn names(datasets: &[PathBuf], given: &[String]) -> Result<Vec<String>, Failure> {
    if given.len() > datasets.len() {
        return Err(Failure::usage(anyhow::anyhow!("{} --name given for {} datasets", given.len(), datasets.len())));
    }
    let mut names = Vec::with_capacity(datasets.len());
    for (i, dir) in datasets.iter().enumerate() {
        let name = match given.get(i) {
            Some(name) => name.clone(),
            None => directory_name(dir)?,
        };
        if name.is_empty() || name.contains('/') {
            return Err(Failure::usage(anyhow::anyhow!(
                "{name:?} cannot name a dataset: it must be non-empty, without '/'"
            )));
        }
        if names.contains(&name) {
            return Err(Failure::usage(anyhow::anyhow!(
                "two datasets are named {name:?}; give them distinct names with --name"
            )));
        }
        names.push(name);
    }
    Ok(names)
}

fn directory_name(dir: &Path) -> Result<String, Failure> {
    let absolute = std::path::absolute(dir).unwrap_or_else(|_| dir.to_path_buf());
    absolute
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .ok_or_else(|| Failure::usage(anyhow::anyhow!("{}: give this dataset a name with --name", dir.display())))
}

/// Opens every dataset with its model (one embedder per model, shared) and loads its current version.
async fn load(
    datasets: &[PathBuf],
    names: &[String],
    requests: RequestSettings,
    cache: usize,
    poll: Duration,
) -> Result<Vec<Served>, Failure> {
    // One embedder (and its counters) per model and dimensions, shared by the datasets embedded with it.
    type Shared = (Arc<ModelEmbedder>, Arc<Stats>);
    let mut embedders: HashMap<(String, Option<u32>), Shared> = HashMap::new();
    let mut served = Vec::with_capacity(datasets.len());
    for (dataset, name) in datasets.iter().zip(names) {
        let target = Target::for_read(dataset).await.map_err(|e| Failure::usage(anyhow::anyhow!("{name}: {e}")))?;
        let dir = &target.dir.clone();
        if target.is_remote() {
            tokio::spawn(follow(target, poll));
        }
        let manifest = Dataset::open(dir).map_err(Failure::usage)?.manifest;
        let key = (manifest.model.clone(), manifest.requested_dimensions);
        let (embedder, stats) = match embedders.get(&key) {
            Some(found) => found.clone(),
            None => {
                let stats = Arc::new(Stats::default());
                let spec = EmbedderSpec::for_queries(&manifest.model, manifest.requested_dimensions, requests);
                let embedder = Arc::new(ModelEmbedder::build(&spec, &stats).await.map_err(|e| {
                    Failure::usage(anyhow::anyhow!("{name}: the model {} cannot be used: {e}", manifest.model))
                })?);
                embedders.insert(key, (Arc::clone(&embedder), Arc::clone(&stats)));
                (embedder, stats)
            }
        };
        let engine = Arc::new(Engine::new(dir).pinned());
        let loading = Arc::clone(&engine);
        tokio::task::spawn_blocking(move || loading.refresh())
            .await
            .map_err(|e| Failure::run(anyhow::anyhow!("{name}: the loading thread failed: {e}")))?
            .map_err(|e| Failure::run(anyhow::anyhow!("{name}: {e}")))?;
        let searcher =
            Searcher::with_embedder(engine, embedder, manifest.model, manifest.requested_dimensions).with_cache(cache);
        served.push(Served { name: name.clone(), searcher, stats });
    }
    Ok(served)
}
