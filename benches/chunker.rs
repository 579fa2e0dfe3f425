//! Chunker throughput (MB/s of input text): prose (plain text and Markdown) at the default chunk size, and text
//! without whitespace, where the splitter alone is quadratic.

mod common;

use std::hint::black_box;

use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use tars_index::chunk::{ChunkSettings, Chunker, TokenChunker, TokenCounter, count_tokens};
use tars_index::source::{Document, Origin, TextFormat};
use text_splitter::{ChunkConfig, TextSplitter};

fn document(text: String, format: TextFormat) -> Document {
    Document { doc: "bench".into(), text, format, origin: Origin { path: "bench".into(), line: None }, stat: None }
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

criterion_group!(benches, chunker, unbroken);
criterion_main!(benches);
