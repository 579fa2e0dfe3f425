//! `tars-index serve` at 100,000 chunks under load from a bounded local load generator (this file: clients on one
//! tokio runtime, each sending its next request when the last is answered): server-side latency (the server's
//! `Server-Timing` header) at p50 and p99 with one client, and requests per second with `CONCURRENCY`, per mode,
//! with and without a filter, with the query vectors cached and embedded per request (mock endpoint; embedded
//! model); and the server's memory against the raw size of its vectors.
//!
//! ```text
//! cargo bench --bench serve                  # 100,000 chunks (the search_cli bench's dataset, built once)
//! SEARCH_N=20000 cargo bench --bench serve
//! ```
//!
//! Server and load generator share this machine's cores, so the rates are a floor for a server on its own cores.

#[path = "../tests/util/chat.rs"]
#[allow(dead_code)]
mod chat;
mod common;
#[path = "../tests/util/mock.rs"]
#[allow(dead_code)]
mod mock;

use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use serde_json::json;

/// Clients for the rate; latency is measured with one, so that it is the time to answer, not time queued.
const CONCURRENCY: usize = 8;
const REQUESTS: usize = 2000;
const ALONE: usize = 300;

fn main() {
    if std::env::args().skip(1).any(|a| !a.starts_with('-') && !"serve".contains(a.as_str())) {
        return;
    }
    let n: usize = std::env::var("SEARCH_N").ok().and_then(|v| v.parse().ok()).unwrap_or(100_000);
    let mock = mock::MockServer::start();
    let base = mock.base();
    let (dataset, local) = common::search_dataset(n, &base, mock::KEY);
    let runtime = tokio::runtime::Builder::new_multi_thread().worker_threads(1).enable_all().build().expect("runtime");
    let client = reqwest::Client::builder().pool_max_idle_per_host(CONCURRENCY).build().expect("client");

    let mut rng = StdRng::seed_from_u64(11);
    let mut query = || {
        let words: Vec<&str> = (0..6).map(|_| common::WORDS[rng.random_range(0..common::WORDS.len())]).collect();
        words.join(" ")
    };
    // 64 queries asked over and over: after the first round their vectors come from the server's cache.
    let repeated: Vec<String> = (0..64).map(|_| query()).collect();
    let fresh: Vec<String> = (0..REQUESTS * 4 + ALONE * 4).map(|_| query()).collect();
    let filter = "doc LIKE 'doc-1%'"; // about 11% of the rows

    println!(
        "\n{n} chunks of 384 dimensions, k = 10; latencies from {ALONE} requests of one client, the rate from \
         {REQUESTS} requests of {CONCURRENCY} clients\n"
    );
    println!(
        "| embedding | mode | filter | server p50 | server p99 | client p50 | requests/s |\n|---|---|---|---|---|---|---|"
    );
    let server = Server::start(&base, &dataset);
    let url = format!("{}/v1/search", server.base);
    warm(&runtime, &client, &url, &repeated);
    for mode in ["vector", "keyword", "hybrid"] {
        for filtered in [false, true] {
            let body = |i: usize| {
                let mut body = json!({ "query": repeated[i % repeated.len()], "mode": mode, "k": 10 });
                if filtered {
                    body["filter"] = filter.into();
                }
                body
            };
            let label = if mode == "keyword" { "none needed" } else { "cached" };
            let alone = load(&runtime, &client, &url, 1, ALONE, &body);
            report(label, mode, filtered, alone, load(&runtime, &client, &url, CONCURRENCY, REQUESTS, &body));
        }
    }
    let mut next = 0;
    for mode in ["vector", "hybrid"] {
        let start = next;
        next += REQUESTS + ALONE;
        let alone = load(&runtime, &client, &url, 1, ALONE, &|i| json!({ "query": fresh[start + i], "mode": mode }));
        let body = |i: usize| json!({ "query": fresh[start + ALONE + i], "mode": mode, "k": 10 });
        report("mock endpoint", mode, false, alone, load(&runtime, &client, &url, CONCURRENCY, REQUESTS, &body));
    }
    let (rss, peak) = server.memory();
    let raw = n as f64 * 384.0 * 4.0 / 1e6;
    drop(server);

    let server = Server::start(&base, &local);
    let url = format!("{}/v1/search", server.base);
    for mode in ["vector", "hybrid"] {
        let start = next;
        next += REQUESTS / 4 + ALONE;
        let alone = load(&runtime, &client, &url, 1, ALONE, &|i| json!({ "query": fresh[start + i], "mode": mode }));
        let body = |i: usize| json!({ "query": fresh[start + ALONE + i], "mode": mode, "k": 10 });
        let many = load(&runtime, &client, &url, CONCURRENCY, REQUESTS / 4, &body);
        report("local/all-minilm-l6-v2", mode, false, alone, many);
    }
    drop(server);
    println!(
        "\nmemory of the server after the mock-endpoint rows: {rss:.0} MB resident, {peak:.0} MB at peak; the raw \
         vectors are {raw:.0} MB ({:.2}× resident)",
        rss / raw
    );
}

/// A `tars-index serve` of one dataset, stopped when dropped.
struct Server {
    child: Child,
    base: String,
}

impl Server {
    fn start(api: &str, dataset: &Path) -> Self {
        let mut child = Command::new(env!("CARGO_BIN_EXE_tars-index"))
            .env("TARS_API_BASE", api)
            .env("TARS_API_KEY", mock::KEY)
            .env_remove("RUST_LOG")
            .args(["serve", "--addr", "127.0.0.1:0", "--cache", "4096"])
            .arg(dataset)
            .stdout(Stdio::piped())
            .spawn()
            .expect("start serve");
        let mut line = String::new();
        BufReader::new(child.stdout.take().expect("stdout")).read_line(&mut line).expect("address");
        let base = line.trim().rsplit(' ').next().expect("address").to_owned();
        let ready = format!("{base}/readyz");
        let started = Instant::now();
        while !answers_ok(&ready) {
            assert!(started.elapsed() < Duration::from_secs(120), "serve not ready");
            std::thread::sleep(Duration::from_millis(50));
        }
        Self { child, base }
    }

    /// Resident and peak resident memory, in MB.
    fn memory(&self) -> (f64, f64) {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.child.id())).unwrap_or_default();
        let field = |name: &str| {
            status
                .lines()
                .find(|l| l.starts_with(name))
                .and_then(|l| l.split_whitespace().nth(1)?.parse::<f64>().ok())
                .map_or(f64::NAN, |kb| kb / 1e3)
        };
        (field("VmRSS:"), field("VmHWM:"))
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Whether `url` answers 200: a plain HTTP/1.1 GET over a socket, needing no runtime.
fn answers_ok(url: &str) -> bool {
    use std::io::{Read, Write};
    let Some(rest) = url.strip_prefix("http://") else { return false };
    let (host, path) = rest.split_once('/').unwrap_or((rest, ""));
    let Ok(mut stream) = std::net::TcpStream::connect(host) else { return false };
    let request = format!("GET /{path} HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n");
    if stream.write_all(request.as_bytes()).is_err() {
        return false;
    }
    let mut answer = String::new();
    let _ = stream.read_to_string(&mut answer);
    answer.starts_with("HTTP/1.1 200")
}

/// Sends every query once, so the cached rows start with their vectors in the cache.
fn warm(runtime: &tokio::runtime::Runtime, client: &reqwest::Client, url: &str, queries: &[String]) {
    let body = |i: usize| json!({ "query": queries[i], "mode": "vector" });
    load(runtime, client, url, CONCURRENCY, queries.len(), &body);
}

struct Measured {
    server_ms: Vec<f64>,
    client_ms: Vec<f64>,
    seconds: f64,
}

/// `requests` requests from `clients` clients, each waiting for its answer before the next.
fn load(
    runtime: &tokio::runtime::Runtime,
    client: &reqwest::Client,
    url: &str,
    clients: usize,
    requests: usize,
    body: &dyn Fn(usize) -> serde_json::Value,
) -> Measured {
    let bodies: Arc<Vec<Vec<u8>>> = Arc::new((0..requests).map(|i| body(i).to_string().into_bytes()).collect());
    let next = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let started = Instant::now();
    let workers: Vec<_> = (0..clients)
        .map(|_| {
            let (client, url, bodies, next) = (client.clone(), url.to_owned(), Arc::clone(&bodies), Arc::clone(&next));
            runtime.spawn(async move {
                let mut times = Vec::new();
                loop {
                    let i = next.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                    let Some(body) = bodies.get(i) else { break };
                    let sent = Instant::now();
                    let response = client
                        .post(&url)
                        .header("content-type", "application/json")
                        .body(body.clone())
                        .send()
                        .await
                        .expect("send");
                    assert_eq!(response.status(), 200, "{}", response.text().await.unwrap_or_default());
                    let server = response
                        .headers()
                        .get("server-timing")
                        .and_then(|v| v.to_str().ok()?.strip_prefix("app;dur=")?.parse::<f64>().ok())
                        .expect("server-timing");
                    let _ = response.bytes().await.expect("body");
                    times.push((server, sent.elapsed().as_secs_f64() * 1e3));
                }
                times
            })
        })
        .collect();
    let mut measured = Measured { server_ms: Vec::new(), client_ms: Vec::new(), seconds: 0.0 };
    for worker in workers {
        for (server, client) in runtime.block_on(worker).expect("worker") {
            measured.server_ms.push(server);
            measured.client_ms.push(client);
        }
    }
    measured.seconds = started.elapsed().as_secs_f64();
    measured
}

/// A row: latency from the requests made alone, the rate from the others.
fn report(embedding: &str, mode: &str, filtered: bool, mut m: Measured, many: Measured) {
    let pct = |v: &mut Vec<f64>, p: f64| {
        v.sort_by(f64::total_cmp);
        v[((v.len() - 1) as f64 * p).round() as usize]
    };
    let (s50, s99, c50) = (pct(&mut m.server_ms, 0.5), pct(&mut m.server_ms, 0.99), pct(&mut m.client_ms, 0.5));
    println!(
        "| {embedding} | {mode} | {} | {s50:.2} ms | {s99:.2} ms | {c50:.2} ms | {:.0} |",
        if filtered { "11%" } else { "-" },
        many.client_ms.len() as f64 / many.seconds
    );
}
