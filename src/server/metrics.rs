//! `/metrics`: request counts and latencies kept as requests are answered, and each dataset's state read when
//! scraped (its loaded version and rows, its query-embedding requests and cache hits), in the OpenMetrics text format
//! that Prometheus scrapes.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;

use super::Served;

pub const CONTENT_TYPE: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct RequestLabels {
    endpoint: String,
    status: u16,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct EndpointLabels {
    endpoint: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct SearchLabels {
    dataset: String,
    mode: String,
    filtered: bool,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct DatasetLabels {
    dataset: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ModelLabels {
    model: String,
}

type Histograms<L> = Family<L, Histogram, fn() -> Histogram>;

fn latency_histogram() -> Histogram {
    // 0.25 ms to about 8 s.
    Histogram::new(exponential_buckets(0.000_25, 2.0, 16))
}

pub struct Metrics {
    requests: Family<RequestLabels, Counter>,
    latency: Histograms<EndpointLabels>,
    searches: Histograms<SearchLabels>,
    search_errors: Family<DatasetLabels, Counter>,
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

impl Metrics {
    pub fn new() -> Self {
        Self {
            requests: Family::default(),
            latency: Family::new_with_constructor(latency_histogram),
            searches: Family::new_with_constructor(latency_histogram),
            search_errors: Family::default(),
        }
    }

    /// One answered request: its route (the pattern, not the path, so the label set stays small), status and time.
    pub fn request(&self, endpoint: &str, status: u16, took: Duration) {
        let endpoint = endpoint.to_owned();
        self.requests.get_or_create(&RequestLabels { endpoint: endpoint.clone(), status }).inc();
        self.latency.get_or_create(&EndpointLabels { endpoint }).observe(took.as_secs_f64());
    }

    /// One query answered, in the mode it was answered in.
    pub fn search(&self, dataset: &str, mode: &str, filtered: bool, took: Duration) {
        let labels = SearchLabels { dataset: dataset.to_owned(), mode: mode.to_owned(), filtered };
        self.searches.get_or_create(&labels).observe(took.as_secs_f64());
    }

    /// One query that failed.
    pub fn search_error(&self, dataset: &str) {
        self.search_errors.get_or_create(&DatasetLabels { dataset: dataset.to_owned() }).inc();
    }

    /// Everything, with each dataset's state as it is now.
    pub fn encode(&self, datasets: Option<&BTreeMap<String, Arc<Served>>>) -> Result<String, std::fmt::Error> {
        use prometheus_client::metrics::gauge::Gauge;
        let mut registry = Registry::with_prefix("tars_index");
        registry.register("http_requests", "HTTP requests answered, by route and status", self.requests.clone());
        registry.register(
            "http_request_duration_seconds",
            "Time to answer HTTP requests, by route",
            self.latency.clone(),
        );
        registry.register(
            "search_duration_seconds",
            "Time to answer one query (embedding included), by dataset, mode and whether it was filtered",
            self.searches.clone(),
        );
        registry.register("search_errors", "Queries that failed, by dataset", self.search_errors.clone());
        // Read at scrape time from the engines and searchers, which count for themselves.
        let version = Family::<DatasetLabels, Gauge>::default();
        let rows = Family::<DatasetLabels, Gauge>::default();
        // Datasets of one model share its embedder and counters.
        let embeds = Family::<ModelLabels, Counter>::default();
        let mut models = std::collections::BTreeSet::new();
        let hits = Family::<DatasetLabels, Counter>::default();
        let misses = Family::<DatasetLabels, Counter>::default();
        for served in datasets.into_iter().flat_map(|d| d.values()) {
            let labels = DatasetLabels { dataset: served.name.clone() };
            if let Ok(dataset) = served.searcher.engine().dataset() {
                version.get_or_create(&labels).set(dataset.manifest.generation as i64);
                rows.get_or_create(&labels).set(dataset.manifest.live_rows as i64);
            }
            if models.insert(served.searcher.model().to_owned()) {
                let model = ModelLabels { model: served.searcher.model().to_owned() };
                embeds.get_or_create(&model).inc_by(served.stats.requests.load(Ordering::Relaxed));
            }
            let cache = served.searcher.cache_stats();
            hits.get_or_create(&labels).inc_by(cache.hits);
            misses.get_or_create(&labels).inc_by(cache.misses);
        }
        registry.register("dataset_version", "The version (generation) of each dataset being served", version);
        registry.register("dataset_rows", "Live chunks in the version being served", rows);
        registry.register("query_embedding_requests", "Requests made to embed queries, by model", embeds);
        registry.register("query_cache_hits", "Queries whose vector came from the cache", hits);
        registry.register("query_cache_misses", "Queries that had to be embedded", misses);
        let mut out = String::new();
        prometheus_client::encoding::text::encode(&mut out, &registry)?;
        Ok(out)
    }
}
