//! The Parquet schema of a dataset: one row per chunk.

use std::sync::Arc;

use arrow::datatypes::{DataType, Field, Schema, SchemaRef};

/// The row's id in the dataset, stable across versions; the documents table lists the live ones.
pub const ROW_ID: &str = "row_id";
pub const ID: &str = "id";
pub const DOC: &str = "doc";
pub const CHUNK_INDEX: &str = "chunk_index";
pub const START: &str = "start";
pub const END: &str = "end";
pub const TOKENS: &str = "tokens";
pub const TEXT: &str = "text";
pub const HASH: &str = "hash";
pub const EMBEDDING: &str = "embedding";
/// The 1-based page a chunk starts on (PDF documents; null for others). Data files written before schema 3 lack it.
pub const PAGE: &str = "page";

/// Keys of the Parquet key-value metadata (the same facts as the manifest, so a lone file explains itself).
pub const META_MODEL: &str = "tars_index.model";
pub const META_DIMENSIONS: &str = "tars_index.dimensions";
pub const META_METRIC: &str = "tars_index.metric";
pub const META_SCHEMA_VERSION: &str = "tars_index.schema_version";

pub fn embedding_type(dimensions: usize) -> DataType {
    DataType::FixedSizeList(Arc::new(Field::new("item", DataType::Float32, false)), dimensions as i32)
}

pub fn dataset_schema(dimensions: usize) -> SchemaRef {
    Arc::new(Schema::new(vec![
        Field::new(ROW_ID, DataType::UInt64, false),
        Field::new(ID, DataType::Utf8, false),
        Field::new(DOC, DataType::Utf8, false),
        Field::new(CHUNK_INDEX, DataType::UInt32, false),
        Field::new(START, DataType::UInt64, false),
        Field::new(END, DataType::UInt64, false),
        Field::new(TOKENS, DataType::UInt32, false),
        Field::new(TEXT, DataType::Utf8, false),
        Field::new(HASH, DataType::Utf8, false),
        Field::new(EMBEDDING, embedding_type(dimensions), false),
        Field::new(PAGE, DataType::UInt32, true),
    ]))
}
