//! The embedded local model (all-MiniLM-L6-v2 in the own encoder, CPU): embeddings per second for short (~20-token) and
//! full-window (~250-token) inputs. scripts/bench_sentence_transformers.py times the same texts with
//! sentence-transformers for the comparison in BENCHMARKS.md. Needs the model (scripts/fetch-model.sh).

use std::hint::black_box;

#[global_allocator]
static ALLOC: mimalloc::MiMalloc = mimalloc::MiMalloc;

use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use tars_index::embed::{DEFAULT_LOCAL_MODEL, LocalModel, model_cache_dir};

/// The same texts as scripts/bench_sentence_transformers.py.
fn texts(n: usize, long: bool) -> Vec<String> {
    let sentence =
        "The embedding pipeline reads documents, splits them into chunks, and writes vectors to Parquet files.";
    (0..n)
        .map(|i| if long { format!("Note {i}: {}", [sentence; 11].join(" ")) } else { format!("Note {i}: {sentence}") })
        .collect()
}

fn local_model(c: &mut Criterion) {
    let dir = model_cache_dir().join(DEFAULT_LOCAL_MODEL);
    let model = LocalModel::load(&dir).unwrap_or_else(|e| panic!("{e}"));
    let mut group = c.benchmark_group("local_model");
    group.sample_size(10);
    for (name, n, long) in [("short_x64", 64, false), ("full_window_x32", 32, true)] {
        let owned = texts(n, long);
        let refs: Vec<&str> = owned.iter().map(String::as_str).collect();
        group.throughput(Throughput::Elements(n as u64));
        group.bench_function(name, |b| b.iter(|| model.embed(black_box(&refs)).expect("embed").len()));
    }
    group.finish();
}

criterion_group!(benches, local_model);
criterion_main!(benches);
