//! Deterministic inputs shared by the benches (no network, no files from outside the repository).

#![allow(dead_code)]

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
