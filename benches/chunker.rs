//! Chunker throughput (MB/s of input text), plain text and Markdown, at the default chunk size.

mod common;

use std::hint::black_box;

use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use tars_index::chunk::{ChunkSettings, Chunker, TokenChunker, count_tokens};
use tars_index::source::{Document, Origin, TextFormat};

fn chunker(c: &mut Criterion) {
    let text = common::prose(1 << 20, 1);
    let mut group = c.benchmark_group("chunker");
    group.sample_size(10);
    group.throughput(Throughput::Bytes(text.len() as u64));
    for (name, format) in
        [("plain_512_overlap_64", TextFormat::Plain), ("markdown_512_overlap_64", TextFormat::Markdown)]
    {
        let chunker = TokenChunker::new(ChunkSettings::new(512, 64).expect("valid"));
        let doc = Document {
            doc: "bench".into(),
            text: text.clone(),
            format,
            origin: Origin { path: "bench".into(), line: None },
            stat: None,
        };
        group.bench_function(name, |b| b.iter(|| black_box(chunker.chunk(black_box(&doc))).len()));
    }
    // The floor: tokenising the text once with cl100k_base.
    group.bench_function("tokenize_only", |b| b.iter(|| count_tokens(black_box(&text))));
    group.finish();
}

criterion_group!(benches, chunker);
criterion_main!(benches);
