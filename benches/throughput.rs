//! Throughput at the provider's limits, end to end (JSONL source → chunker → batcher → HTTP → Parquet), against the
//! tests' OpenAI-compatible mock server on 127.0.0.1.
//!
//! ```text
//! cargo bench --bench throughput              # fixed 50 ms latency: chunks/s against concurrency × batch / latency
//! cargo bench --bench throughput -- tpm       # a mock enforcing 600k tokens/min over a sliding minute (~6 min)
//! cargo bench --bench throughput -- serve     # the same mock for scripts/bench_clients.py (prints its base URL)
//! cargo bench --bench throughput -- man-pages # real man pages on disk (scripts/man-corpus.sh), -j 8, 16 per
//!                                             # request, 100 ms: chunks/s against the ideal 1,280/s
//! ```
//!
//! Figures in BENCHMARKS.md. Settings via environment: `LATENCY_MS` (50), `SECS` (8 per latency case, 180 per TPM
//! case), `TPM` (600000), `CASES` (TPM cases to run, by number: `4,5`).

#[path = "../tests/util/chat.rs"]
#[allow(dead_code)]
mod chat;
mod common;
#[path = "../tests/util/mock.rs"]
#[allow(dead_code)]
mod mock;

use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use tars_index::batch::BatchLimits;
use tars_index::chunk::{ChunkSettings, TokenCounter, count_tokens};
use tars_index::embed::{ApiConfig, OpenAiEmbedder, RateLimits};
use tars_index::pipeline::{EmbedJob, RunOutcome, run_embed};
use tars_index::source::{RecordMapping, SourceOptions};
use tars_index::stats::Stats;
use tars_index::store::RunStatus;

#[global_allocator]
static ALLOC: mimalloc::MiMalloc = mimalloc::MiMalloc;

const DIMENSIONS: u32 = 1536;

fn env_or<T: std::str::FromStr>(name: &str, default: T) -> T {
    std::env::var(name).ok().and_then(|v| v.parse().ok()).unwrap_or(default)
}

/// `n` one-chunk documents of about `bytes` bytes each, as JSONL; returns the file and its cl100k tokens.
fn corpus(dir: &Path, n: usize, bytes: usize) -> (PathBuf, u64) {
    let path = dir.join(format!("corpus-{n}-{bytes}.jsonl"));
    let mut out = std::io::BufWriter::new(std::fs::File::create(&path).expect("corpus file"));
    let mut tokens = 0;
    for i in 0..n {
        let text = common::prose(bytes, i as u64).replace("\n\n", " ").trim().to_owned();
        tokens += count_tokens(&text) as u64;
        writeln!(out, "{}", serde_json::json!({"id": i.to_string(), "text": text})).expect("write corpus");
    }
    out.flush().expect("flush corpus");
    (path, tokens)
}

/// Embeds the corpus through the whole pipeline into a fresh dataset.
fn embed(base: &str, input: &Path, concurrency: usize, batch: usize, limits: RateLimits) -> (RunOutcome, Duration) {
    embed_with(base, input, concurrency, batch, limits, ChunkSettings::new(512, 0).expect("chunking"))
}

fn embed_with(
    base: &str,
    input: &Path,
    concurrency: usize,
    batch: usize,
    limits: RateLimits,
    chunking: ChunkSettings,
) -> (RunOutcome, Duration) {
    let runtime = tokio::runtime::Builder::new_multi_thread().enable_all().build().expect("runtime");
    let out = tempfile::tempdir().expect("tempdir");
    runtime.block_on(async {
        let stats = Arc::new(Stats::default());
        let mut config =
            ApiConfig::new(base, mock::KEY, "tars/text-embedding-3-small", Some(DIMENSIONS)).expect("api config");
        config.max_concurrency = concurrency;
        config.limits = limits;
        let embedder = Arc::new(OpenAiEmbedder::new(config, Arc::clone(&stats)).expect("client"));
        let job = EmbedJob {
            cache_uploads: None,
            shard: None,
            captioner: None,
            source: SourceOptions {
                inputs: vec![input.to_path_buf()],
                records: RecordMapping::new("text".into(), Some("id".into()), Default::default(), Default::default()),
                ..SourceOptions::default()
            },
            chunking,
            counter: TokenCounter::Cl100k,
            batching: BatchLimits::new(batch, 300_000, 512).expect("batching"),
            concurrency,
            out: out.path().join("ds"),
            fresh: true,
            requested_dimensions: Some(DIMENSIONS),
            dry_run: false,
            max_tokens: None,
            max_failures: None,
            retry_failed: false,
            max_delete: Default::default(),
        };
        let started = Instant::now();
        let outcome = run_embed(job, embedder, stats, std::future::pending()).await.expect("run");
        (outcome, started.elapsed())
    })
}

/// Checks that every chunk made it: no chunk lost, none failed.
fn assert_complete(outcome: &RunOutcome, chunks: usize) {
    assert_eq!(outcome.status, RunStatus::Complete, "{:?}", outcome.status);
    let live = outcome.published.as_ref().map_or(0, |m| m.live_rows);
    assert_eq!(live, chunks as u64, "chunks lost");
}

fn latency() {
    let latency_ms: u64 = env_or("LATENCY_MS", 50);
    let secs: f64 = env_or("SECS", 8.0);
    let batch = 16;
    let dir = tempfile::tempdir().expect("tempdir");
    println!(
        "fixed latency {latency_ms} ms, {batch} inputs per request, {DIMENSIONS}-dimension base64 vectors, ~{secs} s per case"
    );
    println!(
        "{:>11} {:>8} {:>8} {:>10} {:>10} {:>9}",
        "concurrency", "chunks", "secs", "chunks/s", "ideal/s", "of ideal"
    );
    for concurrency in [1usize, 4, 16, 32] {
        let ideal = (concurrency * batch) as f64 / (latency_ms as f64 / 1000.0);
        let n = (ideal * secs) as usize;
        let (input, _) = corpus(dir.path(), n, 120);
        let mock = mock::MockServer::start();
        mock.set_delay(Duration::from_millis(latency_ms));
        let (outcome, elapsed) = embed(&mock.base(), &input, concurrency, batch, RateLimits::default());
        assert_complete(&outcome, n);
        let rate = n as f64 / elapsed.as_secs_f64();
        println!(
            "{concurrency:>11} {n:>8} {:>8.2} {rate:>10.0} {ideal:>10.0} {:>8.1}%",
            elapsed.as_secs_f64(),
            100.0 * rate / ideal
        );
    }
}

fn tpm() {
    let limit: u64 = env_or("TPM", 600_000);
    let secs: f64 = env_or("SECS", 180.0);
    let (concurrency, batch) = (16, 64);
    let dir = tempfile::tempdir().expect("tempdir");
    // ~100-token documents, enough for `secs` at the limit.
    let per_doc = count_tokens(&common::prose(480, 0)) as f64;
    let n = (limit as f64 * secs / 60.0 / per_doc) as usize;
    let (input, tokens) = corpus(dir.path(), n, 480);
    println!(
        "TPM limit {limit} over a sliding minute, or per second (a bucket of 2 s of the limit); {n} chunks, {tokens} \
         tokens; -j {concurrency}, {batch} inputs per request"
    );
    println!("{:<34} {:>8} {:>12} {:>9} {:>6} {:>5}", "client", "secs", "tokens/min", "of limit", "429s", "lost");
    let set = RateLimits { requests_per_minute: None, tokens_per_minute: Some(limit) };
    let cases = [
        ("--tpm set to the limit", set, true, false),
        ("limit learned from headers", RateLimits::default(), true, false),
        ("no --tpm, no headers (429s only)", RateLimits::default(), false, false),
        ("per second: --tpm set to the limit", set, true, true),
        ("per second: learned from headers", RateLimits::default(), true, true),
    ];
    let only = std::env::var("CASES").ok();
    for (i, (name, limits, headers, quantised)) in cases.into_iter().enumerate() {
        if only.as_ref().is_some_and(|o| !o.split(',').any(|c| c == (i + 1).to_string())) {
            continue;
        }
        let mock = mock::MockServer::start();
        if quantised {
            mock.set_tpm_quantised(limit, headers);
        } else {
            mock.set_tpm(limit, headers);
        }
        let (outcome, elapsed) = embed(&mock.base(), &input, concurrency, batch, limits);
        let live = outcome.published.as_ref().map_or(0, |m| m.live_rows);
        let per_minute = tokens as f64 / elapsed.as_secs_f64() * 60.0;
        println!(
            "{name:<34} {:>8.1} {per_minute:>12.0} {:>8.1}% {:>6} {:>5}",
            elapsed.as_secs_f64(),
            100.0 * per_minute / limit as f64,
            mock.tpm_refused(),
            n as u64 - live
        );
        assert_complete(&outcome, n);
    }
}

/// Serves the mock for other clients until stdin closes; writes the corpus they should send first.
fn serve() {
    let latency_ms: u64 = env_or("LATENCY_MS", 50);
    let n: usize = env_or("CHUNKS", 20_000);
    let dir = PathBuf::from(env_or("CORPUS_DIR", "target/bench-clients".to_owned()));
    std::fs::create_dir_all(&dir).expect("corpus dir");
    let (input, _) = corpus(&dir, n, 120);
    let mock = mock::MockServer::start();
    mock.set_delay(Duration::from_millis(latency_ms));
    println!("{} {} {}", mock.base(), mock::KEY, input.display());
    let _ = std::io::stdout().flush();
    let mut sink = String::new();
    while std::io::stdin().read_line(&mut sink).is_ok_and(|n| n > 0) {
        sink.clear();
    }
}

/// Sequential requests straight to the client, without the pipeline: the round trip's own cost.
fn round_trip() {
    let latency_ms: u64 = env_or("LATENCY_MS", 0);
    let mock = mock::MockServer::start();
    mock.set_delay(Duration::from_millis(latency_ms));
    let runtime = tokio::runtime::Builder::new_multi_thread().enable_all().build().expect("runtime");
    let texts: Vec<String> = (0..16).map(|i| common::prose(120, i)).collect();
    let refs: Vec<&str> = texts.iter().map(String::as_str).collect();
    runtime.block_on(async {
        use tars_index::embed::Embedder;
        let config = ApiConfig::new(&mock.base(), mock::KEY, "tars/text-embedding-3-small", Some(DIMENSIONS))
            .expect("api config");
        let embedder = OpenAiEmbedder::new(config, Arc::new(Stats::default())).expect("client");
        let started = Instant::now();
        for _ in 0..200 {
            embedder.embed(&refs).await.expect("embed");
        }
        println!("round trip, {latency_ms} ms latency: {:.2} ms per request", started.elapsed().as_secs_f64() * 5.0);
    });
}

/// The latency-bound run on a real corpus: chunking must keep `concurrency` requests of `batch` inputs in flight.
/// `COPIES` copies of the man-page corpus (each page's first line names its copy, so every document is new).
fn man_pages() {
    let latency_ms: u64 = env_or("LATENCY_MS", 100);
    let copies: usize = env_or("COPIES", 4);
    let (concurrency, batch) = (8usize, 16usize);
    let source = std::env::var("MAN_CORPUS").unwrap_or_else(|_| "target/bench-corpus/man-1000".to_owned());
    let mut pages: Vec<PathBuf> = std::fs::read_dir(&source)
        .unwrap_or_else(|e| panic!("{source}: {e} (run scripts/man-corpus.sh, or set MAN_CORPUS)"))
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|x| x == "txt"))
        .collect();
    pages.sort();
    let dir = tempfile::tempdir().expect("tempdir");
    let mut bytes = 0;
    for copy in 0..copies {
        let sub = dir.path().join(format!("copy-{copy}"));
        std::fs::create_dir_all(&sub).expect("mkdir");
        for page in &pages {
            let text = std::fs::read_to_string(page).expect("page");
            let text = format!("copy {copy}\n{text}");
            bytes += text.len();
            std::fs::write(sub.join(page.file_name().expect("name")), text).expect("write");
        }
    }
    let ideal = (concurrency * batch) as f64 / (latency_ms as f64 / 1000.0);
    let mock = mock::MockServer::start();
    mock.set_delay(Duration::from_millis(latency_ms));
    let chunking = ChunkSettings::new(512, 64).expect("chunking");
    let (outcome, elapsed) = embed_with(&mock.base(), dir.path(), concurrency, batch, RateLimits::default(), chunking);
    assert_eq!(outcome.status, RunStatus::Complete, "{:?}", outcome.status);
    let chunks = outcome.published.as_ref().map_or(0, |m| m.live_rows);
    let rate = chunks as f64 / elapsed.as_secs_f64();
    println!(
        "{} man pages ({copies} copies of {source}, {:.1} MB), 512-token chunks with 64 overlap, -j {concurrency}, \
         {batch} per request, {latency_ms} ms",
        pages.len() * copies,
        bytes as f64 / 1e6
    );
    println!(
        "{chunks} chunks in {:.2} s: {rate:.0} chunks/s, ideal {ideal:.0}/s: {:.1}% of ideal ({:.2} MB/s of text)",
        elapsed.as_secs_f64(),
        100.0 * rate / ideal,
        bytes as f64 / 1e6 / elapsed.as_secs_f64()
    );
}

fn main() {
    // `cargo bench` passes --bench; the first other argument names the scenario.
    let scenario = std::env::args().skip(1).find(|a| !a.starts_with("--"));
    match scenario.as_deref() {
        Some("round-trip") => round_trip(),
        Some("tpm") => tpm(),
        Some("serve") => serve(),
        Some("man-pages") => man_pages(),
        _ => latency(),
    }
}
