//! `serve`: datasets held open in memory behind an HTTP API and a search page, all answered by the query engine.
//!
//! Each dataset is a pinned [`Engine`](crate::query::Engine) inside a [`Searcher`]: searches use the version it holds,
//! and a background task ([`refresh_all`]) loads each newly published version beside the old one, switching only once
//! it is fully loaded; searches in flight finish on the version they started on. So a run that publishes while the
//! server is under load fails no request, and its documents are found within a poll interval and a load.

pub mod api;
pub mod http;
pub mod mcp;
mod metrics;

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::Duration;

pub use metrics::Metrics;

use crate::query::Searcher;
use crate::stats::Stats;
use crate::tars::chat::ChatClient;

/// What one request may ask for: bounds that keep any client from making the server work or allocate without end.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    /// Request bodies, in bytes.
    pub max_body: usize,
    /// Hits per query.
    pub max_k: usize,
    /// Queries per request.
    pub max_batch: usize,
    /// A query's text, in bytes.
    pub max_query: usize,
    /// A filter expression, in bytes.
    pub max_filter: usize,
    /// Hits in one answer (k × queries), which bounds the answer's size.
    pub max_hits: usize,
    /// A request's whole answer, embedding included; past it the client gets a 504.
    pub deadline: Duration,
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            max_body: 1 << 20,
            max_k: 1000,
            max_batch: 256,
            max_query: 16 << 10,
            max_filter: 4 << 10,
            max_hits: 10_000,
            deadline: Duration::from_secs(30),
        }
    }
}

/// One dataset being served.
pub struct Served {
    pub name: String,
    pub searcher: Searcher,
    /// The query embedder's counters (requests made).
    pub stats: Arc<Stats>,
}

/// What every request handler shares.
pub struct Server {
    /// The names given on the command line, in order: known before the datasets are loaded.
    pub names: Vec<String>,
    datasets: OnceLock<BTreeMap<String, Arc<Served>>>,
    failed: AtomicBool,
    /// Clients must send `Authorization: Bearer <token>` when set.
    pub token: Option<String>,
    pub limits: Limits,
    pub metrics: Metrics,
    /// Bound where other machines can connect (not loopback).
    pub exposed: bool,
    /// The chat model `POST /v1/ask` and the `ask` tool answer with; `None` when the server has no TARS key.
    pub chat: Option<Arc<ChatClient>>,
}

impl Server {
    pub fn new(
        names: Vec<String>,
        token: Option<String>,
        limits: Limits,
        exposed: bool,
        chat: Option<Arc<ChatClient>>,
    ) -> Arc<Self> {
        Arc::new(Self {
            names,
            datasets: OnceLock::new(),
            failed: AtomicBool::new(false),
            token,
            limits,
            metrics: Metrics::new(),
            exposed,
            chat,
        })
    }

    /// Makes the loaded datasets searchable: the server is ready from now on.
    pub fn loaded(&self, datasets: Vec<Served>) {
        let map = datasets.into_iter().map(|d| (d.name.clone(), Arc::new(d))).collect();
        let _ = self.datasets.set(map);
    }

    /// Marks loading as failed (`readyz` says so until the process exits).
    pub fn load_failed(&self) {
        self.failed.store(true, Ordering::Relaxed);
    }

    /// The loaded datasets; `None` while they are still loading.
    pub fn datasets(&self) -> Option<&BTreeMap<String, Arc<Served>>> {
        self.datasets.get()
    }

    pub fn is_ready(&self) -> bool {
        self.datasets.get().is_some()
    }

    pub fn has_failed(&self) -> bool {
        self.failed.load(Ordering::Relaxed)
    }
}

/// Loads the newest version of every dataset that has published one since it was last loaded, forever, every
/// `every`. A version that fails to load is logged and tried again next time; the old one keeps serving.
pub async fn refresh_all(server: Arc<Server>, every: Duration) {
    let mut tick = tokio::time::interval(every);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        let Some(datasets) = server.datasets() else { continue };
        for served in datasets.values() {
            let served = Arc::clone(served);
            let name = served.name.clone();
            match tokio::task::spawn_blocking(move || served.searcher.engine().refresh()).await {
                Ok(Ok(Some(generation))) => tracing::info!(dataset = %name, generation, "loaded a new version"),
                Ok(Ok(None)) => {}
                Ok(Err(e)) => {
                    tracing::warn!(dataset = %name, "the new version could not be loaded, still serving the old one: {e}")
                }
                Err(e) => tracing::warn!(dataset = %name, "the refresh thread failed: {e}"),
            }
        }
    }
}
