//! Deterministic inputs shared by the benches (no network, no files from outside the repository).

#![allow(dead_code)]

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Instant;

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

/// A small English-like vocabulary (stop words included), for generated prose, records and queries.
pub const WORDS: &[&str] = &[
    "the",
    "of",
    "and",
    "to",
    "in",
    "embedding",
    "vector",
    "index",
    "search",
    "document",
    "model",
    "token",
    "query",
    "cluster",
    "graph",
    "layer",
    "neighbour",
    "distance",
    "parquet",
    "column",
    "batch",
    "request",
    "latency",
    "throughput",
    "memory",
    "system",
    "data",
    "pipeline",
    "language",
    "retrieval",
    "semantic",
    "network",
    "a",
    "is",
    "that",
    "for",
    "with",
    "on",
    "as",
    "are",
    "this",
    "by",
    "be",
    "from",
    "an",
    "which",
    "can",
    "its",
    "où",
    "naïve",
];

/// About `bytes` of English-like prose: sentences of 6–20 words, paragraphs of 2–6 sentences.
pub fn prose(bytes: usize, seed: u64) -> String {
    let mut rng = StdRng::seed_from_u64(seed);
    let mut out = String::with_capacity(bytes + 200);
    while out.len() < bytes {
        for _ in 0..rng.random_range(2..=6) {
            let n = rng.random_range(6..=20);
            for i in 0..n {
                let w = WORDS[rng.random_range(0..WORDS.len())];
                if i == 0 {
                    let mut c = w.chars();
                    if let Some(f) = c.next() {
                        out.extend(f.to_uppercase());
                        out.push_str(c.as_str());
                    }
                } else {
                    out.push(' ');
                    out.push_str(w);
                }
            }
            out.push_str(". ");
        }
        out.push_str("\n\n");
    }
    out
}

/// `n` clustered unit vectors of `dims` dimensions.
pub fn clustered(n: usize, dims: usize, clusters: usize, seed: u64) -> Vec<f32> {
    let mut rng = StdRng::seed_from_u64(seed);
    let centres: Vec<Vec<f32>> =
        (0..clusters).map(|_| (0..dims).map(|_| rng.random_range(-1.0..1.0)).collect()).collect();
    let mut out = Vec::with_capacity(n * dims);
    for i in 0..n {
        let mut v: Vec<f32> = centres[i % clusters].iter().map(|x| x + rng.random_range(-1.0..1.0)).collect();
        tars_index::index::normalize(&mut v);
        out.extend(v);
    }
    out
}

/// The search benches' dataset of `n` chunks of 384 dimensions, made as a user makes one (`tars-index embed` of a
/// JSONL file through the OpenAI-compatible endpoint at `base`, then `tars-index index`), built once and reused;
/// and a copy whose manifest names the embedded model, for the local-model case. Returns both paths.
pub fn search_dataset(n: usize, base: &str, key: &str) -> (PathBuf, PathBuf) {
    let dir = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join(format!("search-cli-{n}"));
    let dataset = dir.join("dataset");
    if !dir.join("ready").exists() {
        build(&dir, &dataset, n, base, key);
    }
    let local = dir.join("dataset-local");
    make_local_copy(&dataset, &local);
    (dataset, local)
}

fn build(dir: &Path, dataset: &Path, n: usize, base: &str, key: &str) {
    let _ = std::fs::remove_dir_all(dir);
    std::fs::create_dir_all(dir).expect("bench dir");
    let input = dir.join("corpus.jsonl");
    let mut out = std::io::BufWriter::new(std::fs::File::create(&input).expect("corpus"));
    let mut rng = StdRng::seed_from_u64(1);
    for i in 0..n {
        let words: Vec<&str> = (0..rng.random_range(12..40)).map(|_| WORDS[rng.random_range(0..WORDS.len())]).collect();
        let line = serde_json::json!({"id": format!("doc-{i}"), "text": format!("{} code-{i:06}.", words.join(" "))});
        writeln!(out, "{line}").expect("write corpus");
    }
    out.flush().expect("flush corpus");
    drop(out);
    eprintln!("embedding {n} records through the mock …");
    let status = Command::new(env!("CARGO_BIN_EXE_tars-index"))
        .env("TARS_API_BASE", base)
        .env("TARS_API_KEY", key)
        .args(["embed", "--dimensions", "384", "--concurrency", "8", "--batch-inputs", "256", "--quiet", "--out"])
        .arg(dataset)
        .arg(&input)
        .status()
        .expect("embed");
    assert!(status.success());
    eprintln!("indexing …");
    let started = Instant::now();
    let status = Command::new(env!("CARGO_BIN_EXE_tars-index")).arg("index").arg(dataset).status().expect("index");
    assert!(status.success());
    eprintln!("index built in {:.1} s", started.elapsed().as_secs_f64());
    std::fs::write(dir.join("ready"), b"").expect("marker");
}

/// The same dataset, its manifest naming the embedded model.
fn make_local_copy(dataset: &Path, local: &Path) {
    let _ = std::fs::remove_dir_all(local);
    copy_dir(dataset, local);
    let path = local.join("manifest.json");
    let mut manifest: serde_json::Value =
        serde_json::from_slice(&std::fs::read(&path).expect("manifest")).expect("manifest json");
    manifest["model"] = "local/all-minilm-l6-v2".into();
    manifest["requested_dimensions"] = serde_json::Value::Null;
    std::fs::write(&path, serde_json::to_vec_pretty(&manifest).expect("json")).expect("write manifest");
}

fn copy_dir(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).expect("mkdir");
    for entry in std::fs::read_dir(from).expect("read dir") {
        let entry = entry.expect("entry");
        let target = to.join(entry.file_name());
        if entry.file_type().expect("type").is_dir() {
            copy_dir(&entry.path(), &target);
        } else {
            std::fs::copy(entry.path(), &target).expect("copy");
        }
    }
}
