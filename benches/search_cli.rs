//! `tars-index search` as a user runs it, at 100,000 chunks: the wall time of one process per query (start-up,
//! opening the dataset and its indexes, embedding the query, searching, printing), per mode, and the rate of
//! `search --queries` against it.
//!
//! ```text
//! cargo bench --bench search_cli             # 100,000 chunks (the dataset is built once, then reused)
//! SEARCH_N=20000 cargo bench --bench search_cli
//! ```
//!
//! The dataset is made the way a user makes one: `tars-index embed` of a JSONL file through the tests' mock
//! OpenAI-compatible server on 127.0.0.1 (384 dimensions), then `tars-index index`. The same data files with the
//! manifest naming the embedded model (`local/all-minilm-l6-v2`, also 384 dimensions) give the local-model case:
//! its queries are embedded by the real model, the stored vectors stay the mock's.

#[path = "../tests/util/chat.rs"]
#[allow(dead_code)]
mod chat;
mod common;
#[path = "../tests/util/mock.rs"]
#[allow(dead_code)]
mod mock;

use std::path::Path;
use std::process::Command;
use std::time::Instant;

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

const RUNS: usize = 21;
const BATCH: usize = 1000;

fn main() {
    if std::env::args().skip(1).any(|a| !a.starts_with('-') && !"search_cli".contains(a.as_str())) {
        return;
    }
    let n: usize = std::env::var("SEARCH_N").ok().and_then(|v| v.parse().ok()).unwrap_or(100_000);
    let mock = mock::MockServer::start();
    let base = mock.base();
    let (dataset, local) = common::search_dataset(n, &base, mock::KEY);

    let mut rng = StdRng::seed_from_u64(9);
    let query = |rng: &mut StdRng| {
        let words: Vec<&str> = (0..6).map(|_| common::WORDS[rng.random_range(0..common::WORDS.len())]).collect();
        words.join(" ")
    };
    println!("\n{n} chunks of 384 dimensions; wall time of `tars-index search DATASET QUERY -k 10`, {RUNS} runs\n");
    println!("| embedder | mode | p50 | p90 | min |\n|---|---|---|---|---|");
    let (mut one_shot_p50, mut local_one_shot_p50) = (None, None);
    for (label, ds, modes) in [
        ("mock endpoint", &dataset, &["vector", "keyword", "hybrid"][..]),
        ("local/all-minilm-l6-v2", &local, &["vector", "hybrid"][..]),
    ] {
        for &mode in modes {
            let mut times: Vec<f64> = (0..RUNS)
                .map(|_| {
                    let q = query(&mut rng);
                    let started = Instant::now();
                    let out = search(&base, ds).args([q.as_str(), "-k", "10", "--mode", mode]).output().expect("run");
                    let secs = started.elapsed().as_secs_f64();
                    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
                    assert!(!out.stdout.is_empty());
                    secs
                })
                .collect();
            times.sort_by(f64::total_cmp);
            let (p50, p90) = (times[RUNS / 2], times[RUNS * 9 / 10]);
            match (label, mode) {
                ("mock endpoint", "hybrid") => one_shot_p50 = Some(p50),
                ("local/all-minilm-l6-v2", "hybrid") => local_one_shot_p50 = Some(p50),
                _ => {}
            }
            println!("| {label} | {mode} | {:.0} ms | {:.0} ms | {:.0} ms |", p50 * 1e3, p90 * 1e3, times[0] * 1e3);
        }
    }

    let file = dataset.with_file_name("queries.txt");
    let lines: Vec<String> = (0..BATCH).map(|_| query(&mut rng)).collect();
    std::fs::write(&file, lines.join("\n") + "\n").expect("write queries");
    for (label, ds, one_shot_p50) in
        [("mock endpoint", &dataset, one_shot_p50), ("local/all-minilm-l6-v2", &local, local_one_shot_p50)]
    {
        let mut best = f64::INFINITY;
        for _ in 0..2 {
            let started = Instant::now();
            let out = search(&base, ds).arg("--queries").arg(&file).arg("-k").arg("10").output().expect("run");
            best = best.min(started.elapsed().as_secs_f64());
            assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
            assert_eq!(out.stdout.iter().filter(|&&b| b == b'\n').count(), BATCH * 10);
        }
        let rate = BATCH as f64 / best;
        let one_shot = one_shot_p50.map_or(f64::NAN, |p| 1.0 / p);
        println!(
            "\n`search --queries` with {BATCH} queries (hybrid, {label}): {best:.2} s, {rate:.0} queries/s; \
             one-shot at p50: {one_shot:.1} queries/s; batch = {:.0}× one-shot",
            rate / one_shot
        );
    }
}

fn search(base: &str, dataset: &Path) -> Command {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_tars-index"));
    cmd.env("TARS_API_BASE", base).env("TARS_API_KEY", mock::KEY).env_remove("RUST_LOG").arg("search").arg(dataset);
    cmd
}
