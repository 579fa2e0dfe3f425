//! The graph against hnswlib, side by side in one run on the same vectors with the same parameters: build time
//! (2 threads) and queries per second on one core at each ef, with recall@10 against exact search.
//!
//! ```text
//! python3 -m venv target/py-ann && target/py-ann/bin/pip install hnswlib numpy
//! cargo bench --bench ann                 # 100,000 clustered vectors of 384 dimensions, 1,000 queries
//! ANN_N=20000 cargo bench --bench ann     # smaller
//! ```
//!
//! `TARS_INDEX_ANN_PYTHON` names another Python with hnswlib; without one the hnswlib columns are left out.

mod common;

use std::path::{Path, PathBuf};
use std::time::Instant;

use rayon::prelude::*;
use tars_index::index::{Builder, DEFAULT_EF_CONSTRUCTION, DEFAULT_M, Graph, Shape, dot};

const DIMS: usize = 384;
const QUERIES: usize = 1000;
const EFS: [usize; 8] = [10, 16, 24, 32, 48, 64, 128, 256];

fn main() {
    // `cargo bench` passes `--bench`; a name filter that is not ours means another bench was asked for.
    if std::env::args().skip(1).any(|a| !a.starts_with('-') && !"ann".contains(a.as_str())) {
        return;
    }
    let n: usize = std::env::var("ANN_N").ok().and_then(|v| v.parse().ok()).unwrap_or(100_000);
    let dir = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join(format!("ann-{n}"));
    std::fs::create_dir_all(&dir).expect("bench dir");
    let all = common::clustered(n + QUERIES, DIMS, 100, 42);
    let (base, queries) = all.split_at(n * DIMS);
    eprintln!("{n} × {DIMS} clustered unit vectors, {QUERIES} queries; exact top-10 …");
    let truth = exact_top10(base, queries);
    write_f32(&dir.join("base.f32"), base);
    write_f32(&dir.join("queries.f32"), queries);
    let truth_bytes: Vec<u8> = truth.iter().flatten().flat_map(|i| i.to_le_bytes()).collect();
    std::fs::write(dir.join("truth.u32"), truth_bytes).expect("write truth");

    let peer = hnswlib(&dir);

    let shape = Shape { dims: DIMS, m: DEFAULT_M, ef_construction: DEFAULT_EF_CONSTRUCTION };
    let started = Instant::now();
    let mut builder = Builder::new(shape, n);
    for (i, v) in base.chunks_exact(DIMS).enumerate() {
        builder.push(i as u64, v);
    }
    let graph = builder.finish();
    let build = started.elapsed().as_secs_f64();
    let path = dir.join("graph.hnsw");
    graph.save(&path).expect("save");
    drop(graph);
    let started = Instant::now();
    let graph = Graph::open(&path).expect("open");
    let open = started.elapsed().as_secs_f64();
    // Warm: every vector resident, as after a batch of queries (an opened graph reads vectors on demand at first).
    for q in queries.chunks_exact(DIMS).cycle().take(2 * n / 500 + 10) {
        graph.search(q, 10, 64, None).expect("search");
    }

    println!("\n{n} × {DIMS}, M = {DEFAULT_M}, ef_construction = {DEFAULT_EF_CONSTRUCTION}, k = 10\n");
    let peer_build = peer.as_ref().map(|p| p.build);
    println!("| build (2 threads) | tars-index | hnswlib | ratio (hnswlib time / ours) |\n|---|---|---|---|");
    println!(
        "| seconds | {build:.2} | {} | {} |",
        peer_build.map_or("–".into(), |b| format!("{b:.2}")),
        peer_build.map_or("–".into(), |b| format!("{:.2}×", b / build))
    );
    println!("\nOpening the saved graph (links read and checked, vectors left on disk): {:.1} ms\n", open * 1e3);
    println!("| ef | recall@10 tars-index | recall@10 hnswlib | QPS tars-index (1 core) | QPS hnswlib | ratio |");
    println!("|---|---|---|---|---|---|");
    let mut ours = Vec::new();
    for ef in EFS {
        let (recall, qps) = measure(&graph, queries, &truth, ef);
        ours.push((ef, recall, qps));
        let theirs = peer.as_ref().and_then(|p| p.searches.iter().find(|s| s.0 == ef));
        println!(
            "| {ef} | {recall:.4} | {} | {qps:.0} | {} | {} |",
            theirs.map_or("–".into(), |t| format!("{:.4}", t.1)),
            theirs.map_or("–".into(), |t| format!("{:.0}", t.2)),
            theirs.map_or("–".into(), |t| format!("{:.2}×", qps / t.2)),
        );
    }
    // The baseline every graph must beat: score all vectors, one query at a time on this thread.
    let sample = &queries[..100 * DIMS];
    let started = Instant::now();
    for q in sample.chunks_exact(DIMS) {
        std::hint::black_box(exact_one(base, q));
    }
    println!("| exact | 1 | 1 | {:.0} | | |", 100.0 / started.elapsed().as_secs_f64());
    if let Some(peer) = &peer {
        for target in [0.95, 0.99] {
            let at = |list: &[(usize, f64, f64)]| list.iter().find(|s| s.1 >= target).copied();
            if let (Some(a), Some(b)) = (at(&ours), at(&peer.searches)) {
                println!(
                    "\nAt recall@10 ≥ {target}: tars-index {:.0} QPS (ef {}, {:.4}), hnswlib {:.0} QPS (ef {}, {:.4}): {:.2}×",
                    a.2,
                    a.0,
                    a.1,
                    b.2,
                    b.0,
                    b.1,
                    a.2 / b.2
                );
            }
        }
        println!("(hnswlib {})", peer.version);
    }
}

struct Peer {
    version: String,
    build: f64,
    searches: Vec<(usize, f64, f64)>,
}

fn hnswlib(dir: &Path) -> Option<Peer> {
    let python = std::env::var_os("TARS_INDEX_ANN_PYTHON")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("target/py-ann/bin/python"));
    let script = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("scripts/bench_hnswlib.py");
    let efs: Vec<String> = EFS.iter().map(|e| e.to_string()).collect();
    eprintln!("hnswlib ({}) …", python.display());
    let output = std::process::Command::new(&python)
        .arg(script)
        .arg(dir)
        .args([DIMS.to_string(), DEFAULT_M.to_string(), DEFAULT_EF_CONSTRUCTION.to_string(), efs.join(",")])
        .output();
    let output = match output {
        Ok(o) if o.status.success() => o,
        Ok(o) => {
            eprintln!("hnswlib left out: {}", String::from_utf8_lossy(&o.stderr).trim());
            return None;
        }
        Err(e) => {
            eprintln!("hnswlib left out: {}: {e}", python.display());
            return None;
        }
    };
    let json: serde_json::Value = serde_json::from_slice(&output.stdout).expect("hnswlib output");
    Some(Peer {
        version: json["version"].as_str().unwrap_or("?").to_owned(),
        build: json["build_secs"].as_f64().expect("build_secs"),
        searches: json["searches"]
            .as_array()
            .expect("searches")
            .iter()
            .map(|s| {
                (
                    s["ef"].as_u64().expect("ef") as usize,
                    s["recall"].as_f64().expect("recall"),
                    s["qps"].as_f64().expect("qps"),
                )
            })
            .collect(),
    })
}

/// Recall@10 and the best of three passes' queries per second, one query at a time on this thread.
fn measure(graph: &Graph, queries: &[f32], truth: &[Vec<u32>], ef: usize) -> (f64, f64) {
    let mut hits = 0;
    for (q, t) in queries.chunks_exact(DIMS).zip(truth) {
        let found = graph.search(q, 10, ef, None).expect("search");
        hits += found.iter().filter(|n| t.contains(&n.node)).count();
    }
    let mut best = f64::INFINITY;
    for _ in 0..3 {
        let started = Instant::now();
        let mut total = 0;
        for q in queries.chunks_exact(DIMS) {
            total += graph.search(std::hint::black_box(q), 10, ef, None).expect("search").len();
        }
        assert_eq!(total, 10 * truth.len());
        best = best.min(started.elapsed().as_secs_f64());
    }
    (hits as f64 / (10 * truth.len()) as f64, truth.len() as f64 / best)
}

fn exact_top10(base: &[f32], queries: &[f32]) -> Vec<Vec<u32>> {
    queries.par_chunks_exact(DIMS).map(|q| exact_one(base, q)).collect()
}

fn exact_one(base: &[f32], q: &[f32]) -> Vec<u32> {
    let mut scored: Vec<(f32, u32)> = base.chunks_exact(DIMS).enumerate().map(|(i, v)| (dot(q, v), i as u32)).collect();
    scored.select_nth_unstable_by(10, |a, b| b.0.total_cmp(&a.0));
    scored.truncate(10);
    scored.sort_by(|a, b| b.0.total_cmp(&a.0));
    scored.into_iter().map(|(_, i)| i).collect()
}

fn write_f32(path: &Path, values: &[f32]) {
    let bytes: Vec<u8> = values.iter().flat_map(|v| v.to_le_bytes()).collect();
    std::fs::write(path, bytes).expect("write vectors");
}
