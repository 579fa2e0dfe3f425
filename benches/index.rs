//! HNSW build and query on clustered unit vectors, with exact brute-force search as the baseline in the same run.

mod common;

use std::hint::black_box;

use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use tars_index::index::{DEFAULT_EF_SEARCH, IndexParams, dot, insert_vectors, new_graph};

const N: usize = 10_000;
const DIMS: usize = 384;
const QUERIES: usize = 200;

fn exact_top10(data: &[f32], q: &[f32]) -> Vec<usize> {
    let mut scored: Vec<(f32, usize)> = data.chunks_exact(DIMS).enumerate().map(|(i, v)| (dot(q, v), i)).collect();
    scored.select_nth_unstable_by(10, |a, b| b.0.total_cmp(&a.0));
    scored.truncate(10);
    scored.into_iter().map(|(_, i)| i).collect()
}

fn index(c: &mut Criterion) {
    let all = common::clustered(N + QUERIES, DIMS, 50, 4);
    let (data, queries) = all.split_at(N * DIMS);

    let mut group = c.benchmark_group("index_build");
    group.sample_size(10);
    group.throughput(Throughput::Elements(N as u64));
    group.bench_function(format!("{N}x{DIMS}_m16_efc200"), |b| {
        b.iter(|| {
            let graph = new_graph(IndexParams::default(), N).expect("graph");
            insert_vectors(&graph, 0, data, DIMS);
            graph
        })
    });
    group.finish();

    let graph = new_graph(IndexParams::default(), N).expect("graph");
    insert_vectors(&graph, 0, data, DIMS);
    let mut group = c.benchmark_group("index_query");
    group.throughput(Throughput::Elements(QUERIES as u64));
    for ef in [32, DEFAULT_EF_SEARCH, 128] {
        let mut hits = 0;
        for q in queries.chunks_exact(DIMS) {
            let truth = exact_top10(data, q);
            hits += graph.search(q, 10, ef).iter().filter(|n| truth.contains(&n.d_id)).count();
        }
        eprintln!("recall@10 at ef={ef}: {:.4}", hits as f64 / (QUERIES * 10) as f64);
        group.bench_function(format!("hnsw_k10_ef{ef}"), |b| {
            b.iter(|| queries.chunks_exact(DIMS).map(|q| graph.search(black_box(q), 10, ef).len()).sum::<usize>())
        });
    }
    group.sample_size(10);
    group.bench_function("exact_k10", |b| {
        b.iter(|| queries.chunks_exact(DIMS).map(|q| exact_top10(data, black_box(q)).len()).sum::<usize>())
    });
    group.finish();
}

criterion_group!(benches, index);
criterion_main!(benches);
