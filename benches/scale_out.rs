//! Past one machine, measured on this one:
//! - sharded runs: a latency-bound corpus (the tests' mock endpoint answering every request after 100 ms) embedded
//!   by 1, 2 and 4 shard processes at once, each shard's throughput as a fraction of the one-process run's;
//! - export to pgvector: rows/s of `tars-index export pgvector` (full, with and without the HNSW build) against a real
//!   Postgres 16 + pgvector on 127.0.0.1, next to the server's own binary COPY of the same table from a file.
//!
//! ```text
//! cargo bench --bench scale_out                 # both; the export part needs TARS_INDEX_PGSERVER (scripts/test.sh)
//! cargo bench --bench scale_out -- shards
//! EXPORT_N=100000 cargo bench --bench scale_out -- export
//! ```

#[path = "../tests/util/chat.rs"]
#[allow(dead_code)]
mod chat;
mod common;
#[path = "../tests/util/mock.rs"]
#[allow(dead_code)]
mod mock;
#[path = "../tests/util/pg.rs"]
#[allow(dead_code)]
mod pg;

use std::io::Write;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

const LATENCY: Duration = Duration::from_millis(100);
const CONCURRENCY: usize = 4;
const BATCH: usize = 16;

/// For `pg.rs`: Postgres runs as nobody when this is root.
pub fn is_root() -> bool {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| s.lines().find(|l| l.starts_with("Uid:")).map(|l| l.split_whitespace().nth(1) == Some("0")))
        .unwrap_or(false)
}

fn main() {
    let args: Vec<String> = std::env::args().skip(1).filter(|a| !a.starts_with('-')).collect();
    let wanted = |part: &str| args.is_empty() || args.iter().any(|a| a == part || a == "scale_out");
    if wanted("shards") {
        shards();
    }
    if wanted("export") {
        export();
    }
}

fn tars_index(base: &str) -> Command {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_tars-index"));
    cmd.env("TARS_API_BASE", base).env("TARS_API_KEY", mock::KEY).env_remove("RUST_LOG");
    cmd
}

fn shards() {
    let chunks: usize = std::env::var("SHARD_CHUNKS").ok().and_then(|v| v.parse().ok()).unwrap_or(6400);
    let mock = mock::MockServer::start();
    mock.set_delay(LATENCY);
    let dir = tempfile::tempdir().expect("tempdir");
    let input = dir.path().join("corpus.jsonl");
    let mut out = std::io::BufWriter::new(std::fs::File::create(&input).expect("corpus"));
    for i in 0..chunks {
        let words: Vec<&str> = (0..18).map(|j| common::WORDS[(i * 7 + j * 13) % common::WORDS.len()]).collect();
        writeln!(
            out,
            "{}",
            serde_json::json!({ "id": format!("doc-{i}"), "text": format!("{} n{i}.", words.join(" ")) })
        )
        .expect("write");
    }
    drop(out);
    let ideal = (CONCURRENCY * BATCH) as f64 / LATENCY.as_secs_f64();
    println!(
        "\n{chunks} one-chunk documents; the mock answers after {} ms; each process --concurrency {CONCURRENCY} \
         --batch-inputs {BATCH} (ideal {ideal:.0} chunks/s per process)\n",
        LATENCY.as_millis()
    );
    println!("| shards | wall (all done, committed) | chunks/s | slowest shard | per shard, of one process |");
    println!("|---|---|---|---|---|");
    let mut one = None;
    for n in [1usize, 2, 4] {
        let dataset = dir.path().join(format!("ds-{n}"));
        let mirror = dir.path().join(format!("mirror-{n}"));
        let started = Instant::now();
        let children: Vec<_> = (0..n)
            .map(|i| {
                let mut cmd = tars_index(&mock.base());
                cmd.env("TARS_INDEX_MIRROR_DIR", mirror.join(i.to_string()))
                    .arg("embed")
                    .arg(&input)
                    .arg("--out")
                    .arg(&dataset)
                    .args(["--concurrency", &CONCURRENCY.to_string(), "--batch-inputs", &BATCH.to_string()])
                    .args(["--quiet", "--json"]);
                if n > 1 {
                    cmd.args(["--shard", &format!("{i}/{n}"), "--run-id", "bench"]);
                }
                let child = cmd.stdout(Stdio::piped()).stderr(Stdio::piped()).spawn().expect("spawn");
                (child, Instant::now())
            })
            .collect();
        // Each shard's own time and chunks: (seconds, chunks embedded).
        let mut per_shard = Vec::new();
        for (child, spawned) in children {
            let out = child.wait_with_output().expect("wait");
            let seconds = spawned.elapsed().as_secs_f64();
            assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
            let report: serde_json::Value = String::from_utf8_lossy(&out.stdout)
                .lines()
                .rev()
                .find_map(|l| serde_json::from_str(l).ok())
                .expect("a JSON report");
            let embedded = report["chunks"]["embedded"].as_u64().expect("chunks.embedded") as f64;
            per_shard.push((seconds, embedded));
        }
        let wall = started.elapsed().as_secs_f64();
        let total: f64 = per_shard.iter().map(|s| s.1).sum();
        assert_eq!(total as usize, chunks, "every chunk embedded once");
        let slowest = per_shard.iter().map(|s| s.0).fold(0.0, f64::max);
        let rate = |(s, c): &(f64, f64)| c / s;
        let one_rate = *one.get_or_insert(total / wall);
        let fractions: Vec<String> = per_shard.iter().map(|s| format!("{:.2}", rate(s) / one_rate)).collect();
        println!("| {n} | {wall:.2} s | {:.0} | {slowest:.2} s | {} |", total / wall, fractions.join(" / "));
    }
}

fn export() {
    let Some(pg) = pg::PgServer::start() else {
        eprintln!("export: no Postgres (set TARS_INDEX_PGSERVER, as scripts/test.sh does)");
        return;
    };
    let n: usize = std::env::var("EXPORT_N").ok().and_then(|v| v.parse().ok()).unwrap_or(20_000);
    let mock = mock::MockServer::start();
    let (dataset, _) = common::search_dataset(n, &mock.base(), mock::KEY);
    let url = pg.url("unused");
    let run = |table: &str, extra: &[&str]| -> (f64, serde_json::Value) {
        let started = Instant::now();
        let out = tars_index(&mock.base())
            .args(["export", "pgvector"])
            .arg(&dataset)
            .args(["--to", &url, "--table", table, "--json"])
            .args(extra)
            .output()
            .expect("export");
        let seconds = started.elapsed().as_secs_f64();
        assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
        (seconds, serde_json::from_slice(&out.stdout).expect("report"))
    };
    println!(
        "\n{n} rows of 384 dimensions (the search benches' dataset), Postgres 16.14 + pgvector 0.8.5 on 127.0.0.1\n"
    );
    println!("| what | seconds | rows/s |\n|---|---|---|");
    let (copy_only, report) = run("bench_plain", &["--no-index"]);
    let rows = report["rows_written"].as_f64().expect("rows");
    assert_eq!(rows as usize, n);
    println!("| export, full, no HNSW index (COPY of every row) | {copy_only:.2} | {:.0} |", rows / copy_only);
    let (with_index, _) = run("bench_hnsw", &[]);
    println!(
        "| export, full, HNSW built after (m 16, ef_construction 64) | {with_index:.2} | {:.0} |",
        rows / with_index
    );
    let (again, report) = run("bench_hnsw", &[]);
    assert_eq!(report["kind"], "up_to_date");
    println!("| export again, nothing changed | {again:.2} | |");
    // The server's own ceiling for the same rows: binary COPY of the exported table from a file it reads itself.
    let file = Path::new("/tmp").join(format!("tars-index-bench-{}.bin", std::process::id()));
    pg.sql(&format!("COPY bench_plain TO '{}' (FORMAT binary)", file.display()));
    pg.sql("CREATE TABLE bench_copy (LIKE bench_plain)");
    let started = Instant::now();
    pg.sql(&format!("COPY bench_copy FROM '{}' (FORMAT binary)", file.display()));
    let server = started.elapsed().as_secs_f64();
    let _ = std::fs::remove_file(&file);
    println!("| the server's COPY FROM a local file of the same rows (psql) | {server:.2} | {:.0} |", rows / server);
    println!("\nexport without the index / server COPY: {:.2}", copy_only / server);
}
