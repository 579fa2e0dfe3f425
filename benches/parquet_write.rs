//! Parquet write throughput (MB/s of vectors + text) for 1536-dimension rows, zstd.

mod common;

use std::sync::Arc;

use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use std::collections::HashMap;
use tars_index::chunk::{ChunkSettings, Chunker, TokenChunker};
use tars_index::embed::Embeddings;
use tars_index::source::{Document, TextFormat};

use tars_index::store::{ChunkingInfo, DatasetWriter, Manifest, RunStatus};

const DIMS: usize = 1536;

fn parquet_write(c: &mut Criterion) {
    let text = common::prose(2 << 20, 2);
    let doc = Document::new("bench.txt", text, TextFormat::Plain);
    let chunks = TokenChunker::new(ChunkSettings::new(512, 0).expect("valid")).chunk(&doc);
    let vectors = common::clustered(chunks.len(), DIMS, 16, 3);
    let embeddings = Embeddings { dimensions: DIMS, vectors, usage_tokens: None };
    let bytes: usize = chunks.iter().map(|c| c.text.len()).sum::<usize>() + embeddings.vectors.len() * 4;
    let dir = tempfile::tempdir().expect("tempdir");

    let mut group = c.benchmark_group("parquet_write");
    group.sample_size(10);
    group.throughput(Throughput::Bytes(bytes as u64));
    group.bench_function(format!("{}_rows_x_{DIMS}_dims", chunks.len()), |b| {
        b.iter(|| {
            let manifest = Manifest::new(
                "bench".into(),
                None,
                ChunkingInfo { tokenizer: "cl100k_base".into(), max_tokens: 512, overlap: 0 },
            );
            let mut writer = DatasetWriter::begin(&dir.path().join("ds"), manifest, None, false).expect("begin");
            // Batches of 256 rows, as the embedder hands them over.
            for (i, batch) in chunks.chunks(256).enumerate() {
                let start = i * 256 * DIMS;
                writer.write(batch, &embeddings.vectors[start..start + batch.len() * DIMS], DIMS).expect("write");
            }
            Arc::new(writer.finish(&HashMap::new(), &[], RunStatus::Complete).expect("finish"))
        })
    });
    group.finish();
}

criterion_group!(benches, parquet_write);
criterion_main!(benches);
