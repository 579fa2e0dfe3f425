//! tars-index: embed document corpora through TARS (or any OpenAI-compatible endpoint) into Parquet, and search
//! them with a local HNSW index.
//!
//! The modules follow the pipeline, one stage each, joined by bounded channels in [`pipeline`]:
//!
//! | stage | module | boundary |
//! |---|---|---|
//! | read documents | [`source`] | [`source::Source`] |
//! | describe images (a vision model) | [`caption`] | [`caption::Captioner`] |
//! | split into token-bounded chunks | [`chunk`] | [`chunk::Chunker`] |
//! | pack chunks into requests | [`batch`] | [`batch::Batcher`] |
//! | embed, with retries | [`embed`] | [`embed::Embedder`] |
//! | write Parquet + manifest | [`store`] | [`store::DatasetWriter`] |
//! | build, save, load and search the HNSW graph | [`index`] | [`index::SearchIndex`] |
//!
//! [`query`] answers searches (filtered or not) from the newest version of a dataset, whether or not its index has
//! caught up: [`query::Engine`] holds a dataset open, [`query::Searcher`] adds its model, for every caller (the CLI
//! and [`server`], which serves them over HTTP). [`embed::ModelEmbedder`] is the one place that knows which embedder a model name asks for.
//! [`tars`] is what every request to the gateway shares (endpoint, key, errors, retries) and its chat client, on
//! which [`query::ask`] answers questions from a dataset with checked citations.
//! [`stats`] holds the counters every stage reports to; [`config`] reads pipeline files; [`cli`] is the only module
//! that prints.

pub mod batch;
pub mod caption;
pub mod chunk;
pub mod cli;
pub mod config;
pub mod embed;
pub mod error;
pub mod export;
pub mod index;
pub mod pipeline;
pub mod query;
pub mod server;
pub mod source;
pub mod stats;
pub mod store;
pub mod tars;
