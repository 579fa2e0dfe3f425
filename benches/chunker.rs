//! Chunker throughput (MB/s of input text): prose (plain text and Markdown) at the default chunk size, and text
//! without whitespace, where the splitter alone is quadratic.

mod common;

use std::hint::black_box;

use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use rayon::prelude::*;
use tars_index::chunk::{ChunkSettings, Chunker, TokenChunker, TokenCounter, count_tokens};
use tars_index::source::{Document, TextFormat};
use text_splitter::{ChunkConfig, TextSplitter};

fn document(text: String, format: TextFormat) -> Document {
    Document::new("bench", text, format)
}

fn chunker(c: &mut Criterion) {
    let text = common::prose(1 << 20, 1);
    let mut group = c.benchmark_group("chunker");
    group.sample_size(10);
    group.throughput(Throughput::Bytes(text.len() as u64));
    for (name, format) in
        [("plain_512_overlap_64", TextFormat::Plain), ("markdown_512_overlap_64", TextFormat::Markdown)]
    {
        let chunker = TokenChunker::new(ChunkSettings::new(512, 64).expect("valid"));
        let doc = document(text.clone(), format);
        group.bench_function(name, |b| b.iter(|| black_box(chunker.chunk(black_box(&doc))).len()));
    }
    // The splitter over the whole text at once, as before long documents were split a window at a time.
    let config = ChunkConfig::new(512).with_sizer(TokenCounter::Cl100k).with_overlap(64).expect("valid");
    let whole = TextSplitter::new(config);
    group.bench_function("plain_512_overlap_64_whole_text", |b| {
        b.iter(|| whole.chunk_indices(black_box(&text)).count())
    });
    // The floor: tokenising the text once with cl100k_base.
    group.bench_function("tokenize_only", |b| b.iter(|| count_tokens(black_box(&text))));
    group.finish();
}

/// Text without boundaries (one line of DNA, minified JSON, one long paragraph) at two sizes: equal throughput at both means chunking
/// time is linear in the length. The peer is text-splitter run over the whole text, as the chunker did before it
/// split long documents a window at a time.
fn unbroken(c: &mut Criterion) {
    let dna = |kb: usize| "ACGT".repeat(kb * 256);
    let json = |kb: usize| "{\"k\":[1,2,3],\"v\":\"abc\"},".repeat(kb * 1024 / 24);
    // One paragraph of words with no sentence punctuation and no line breaks.
    let paragraph = |kb: usize| ["alpha", "beta", "gamma", "delta", "epsilon"].repeat(kb * 1024 / 30).join(" ");
    let mut group = c.benchmark_group("chunker_unbroken");
    group.sample_size(10);
    let chunker = TokenChunker::new(ChunkSettings::new(512, 64).expect("valid"));
    for (name, text) in [
        ("dna_line_256k", dna(256)),
        ("dna_line_1m", dna(1024)),
        ("minified_json_256k", json(256)),
        ("minified_json_1m", json(1024)),
        ("paragraph_256k", paragraph(256)),
        ("paragraph_1m", paragraph(1024)),
    ] {
        group.throughput(Throughput::Bytes(text.len() as u64));
        let doc = document(text, TextFormat::Plain);
        group.bench_function(name, |b| b.iter(|| black_box(chunker.chunk(black_box(&doc))).len()));
    }
    let config = ChunkConfig::new(512).with_sizer(TokenCounter::Cl100k).with_overlap(64).expect("valid");
    let whole = TextSplitter::new(config);
    for (name, text) in [
        ("dna_line_64k_whole_text", dna(64)),
        ("dna_line_128k_whole_text", dna(128)),
        ("paragraph_256k_whole_text", paragraph(256)),
        ("paragraph_1m_whole_text", paragraph(1024)),
    ] {
        group.throughput(Throughput::Bytes(text.len() as u64));
        group.bench_function(name, |b| b.iter(|| whole.chunk_indices(black_box(&text)).count()));
    }
    group.finish();
}

/// Real man pages rendered to text (`scripts/man-corpus.sh`, 1,000 pages): one document per page, chunked one after
/// another, then on every core (documents in parallel, as the pipeline does), against the exact splitter (every
/// candidate tokenised, as the chunker did before) and against one cl100k_base tokenisation of every page, the floor.
fn man_pages(c: &mut Criterion) {
    let dir = std::env::var("MAN_CORPUS").unwrap_or_else(|_| "target/bench-corpus/man-1000".to_owned());
    let Ok(entries) = std::fs::read_dir(&dir) else {
        eprintln!("chunker_man_pages: no corpus at {dir}: run scripts/man-corpus.sh (or set MAN_CORPUS)");
        return;
    };
    let mut paths: Vec<_> = entries.filter_map(|e| e.ok()).map(|e| e.path()).collect();
    paths.retain(|p| p.extension().is_some_and(|x| x == "txt"));
    paths.sort();
    let docs: Vec<Document> =
        paths.iter().map(|p| document(std::fs::read_to_string(p).expect("man page text"), TextFormat::Plain)).collect();
    let bytes: usize = docs.iter().map(|d| d.text.len()).sum();
    eprintln!("chunker_man_pages: {} pages, {bytes} bytes from {dir}", docs.len());
    let mut group = c.benchmark_group("chunker_man_pages");
    group.sample_size(10);
    group.throughput(Throughput::Bytes(bytes as u64));
    let chunker = TokenChunker::new(ChunkSettings::new(512, 64).expect("valid"));
    group.bench_function("one_thread", |b| {
        b.iter(|| docs.iter().map(|d| chunker.chunk(black_box(d)).len()).sum::<usize>())
    });
    group.bench_function("all_cores", |b| {
        b.iter(|| docs.par_iter().map(|d| chunker.chunk(black_box(d)).len()).sum::<usize>())
    });
    let config = ChunkConfig::new(512).with_sizer(TokenCounter::Cl100k).with_overlap(64).expect("valid");
    let exact = TextSplitter::new(config);
    group.bench_function("exact_splitter_one_thread", |b| {
        b.iter(|| docs.iter().map(|d| exact.chunk_indices(black_box(&d.text)).count()).sum::<usize>())
    });
    group.bench_function("tokenize_only_one_thread", |b| {
        b.iter(|| docs.iter().map(|d| count_tokens(black_box(&d.text))).sum::<usize>())
    });
    // The tokenizer the chunker used before bpe-openai, for the same floor.
    let tiktoken = tiktoken_rs::cl100k_base_singleton();
    group.bench_function("tokenize_only_tiktoken_rs_one_thread", |b| {
        b.iter(|| docs.iter().map(|d| tiktoken.encode_ordinary(black_box(&d.text)).len()).sum::<usize>())
    });
    group.finish();
}

criterion_group!(benches, chunker, unbroken, man_pages);
criterion_main!(benches);
