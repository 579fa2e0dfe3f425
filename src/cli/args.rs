//! Command-line arguments (clap).

use std::path::PathBuf;

use clap::{Args, Parser, Subcommand};

use crate::index::{DEFAULT_EF_CONSTRUCTION, DEFAULT_EF_SEARCH, DEFAULT_M};

#[derive(Debug, Parser)]
#[command(name = "tars-index", version, about, long_about = None, max_term_width = 110)]
pub struct Cli {
    /// More log output on stderr (-v info, -vv debug).
    #[arg(short, long, action = clap::ArgAction::Count, global = true)]
    pub verbose: u8,
    /// Only errors on stderr; no progress display.
    #[arg(short, long, global = true)]
    pub quiet: bool,
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Read, chunk and embed documents into a Parquet dataset (incrementally, when the dataset exists).
    Embed(EmbedArgs),
    /// Run a pipeline file: embed (incrementally) and bring the index up to date.
    Run(RunArgs),
    /// Check pipeline files without running them.
    Validate(ValidateArgs),
    /// Build or update the HNSW index of a dataset.
    Index(IndexArgs),
    /// Send again only the chunks a run gave up on (listed in the dataset's dead-letter file); reads no input.
    RetryFailed(RetryFailedArgs),
    /// Check every file of a dataset and drop damaged ones from it, so that the next run embeds only what they held.
    Repair(RepairArgs),
    /// Find the chunks that answer a query: by vector, keyword or both.
    Search(SearchArgs),
    /// Answer a question from a dataset with a chat model through TARS: the answer streamed as it arrives, its
    /// [n] citations checked against the sources it was given.
    Ask(AskArgs),
    /// Measure retrieval against labelled queries: recall@k, MRR@10 and nDCG@10 per mode.
    Eval(EvalArgs),
    /// Serve datasets over HTTP: a JSON search API, a search page, health and Prometheus metrics; each dataset is
    /// reloaded without downtime when a run publishes a new version.
    Serve(ServeArgs),
    /// Serve datasets to AI agents over the Model Context Protocol on stdin/stdout: tools search, list_datasets,
    /// get_document and count.
    Mcp(McpArgs),
    /// List the models the endpoint offers (GET /models).
    Models(ModelsArgs),
    /// Publish a sharded run whose shards are all done as one version, and index it (idempotent: the last shard to
    /// finish does this itself; run it as the final step of a sharded job in case that shard died).
    Commit(CommitArgs),
    /// Sharded runs of a dataset: where one stands.
    #[command(subcommand)]
    Runs(RunsCommand),
    /// Remove what no version of a dataset needs: attempts of sharded runs that lost or were abandoned, files of
    /// runs that died before publishing, old versions' manifests.
    Vacuum(VacuumArgs),
    /// Copy a dataset's live rows (texts, metadata, vectors) into a vector database, incrementally: only the
    /// documents changed since the last export are written, and deleted ones are removed.
    #[command(subcommand)]
    Export(ExportCommand),
}

#[derive(Debug, Args)]
pub struct VacuumArgs {
    /// The dataset (a path or a URL such as s3://bucket/prefix).
    #[arg(value_name = "DATASET")]
    pub dataset: PathBuf,
    /// Only objects (and versions) older than this: a run may be uploading younger ones, a reader may be pinned to
    /// a younger version. 7d, 12h, 30m, 45s.
    #[arg(long, value_name = "AGE", default_value = "7d", value_parser = crate::store::parse_age)]
    pub older_than: std::time::Duration,
    /// List what would be removed, remove nothing.
    #[arg(long)]
    pub dry_run: bool,
    /// Print what was removed as JSON.
    #[arg(long)]
    pub json: bool,
}

#[derive(Debug, Subcommand)]
pub enum ExportCommand {
    /// Into a Postgres table with pgvector (COPY, an HNSW index for cosine distance, one transaction per export).
    Pgvector(PgvectorArgs),
    /// Into a Qdrant collection over its REST API (batched upserts; a full export builds a new collection and
    /// switches an alias to it).
    Qdrant(QdrantArgs),
}

#[derive(Debug, Args)]
pub struct QdrantArgs {
    /// The dataset (a path or a URL such as s3://bucket/prefix).
    #[arg(value_name = "DATASET")]
    pub dataset: PathBuf,
    /// Qdrant's REST endpoint.
    #[arg(long, value_name = "URL", env = "QDRANT_URL")]
    pub to: String,
    /// The name to query: an alias of the collection the export writes. Default: the dataset's name.
    #[arg(long, value_name = "NAME")]
    pub collection: Option<String>,
    /// The environment variable holding the API key, if the server wants one (sent as `api-key`).
    #[arg(long, value_name = "VAR", default_value = "QDRANT_API_KEY")]
    pub api_key_env: String,
    /// Write everything into a new collection and switch the alias to it, whatever the server holds.
    #[arg(long)]
    pub full: bool,
    /// Points per upsert request (Qdrant advises 64 to 256).
    #[arg(long, default_value_t = 256, value_parser = clap::value_parser!(u32).range(1..=10000))]
    pub batch: u32,
    /// Upsert requests in flight.
    #[arg(long, default_value_t = 2, value_parser = clap::value_parser!(u32).range(1..=64))]
    pub parallel: u32,
    /// HNSW: links per node (Qdrant's m).
    #[arg(long, default_value_t = 16, value_parser = clap::value_parser!(u32).range(2..=100))]
    pub m: u32,
    /// HNSW: candidate list size while building (Qdrant's ef_construct).
    #[arg(long, default_value_t = 100, value_parser = clap::value_parser!(u32).range(4..=1000))]
    pub ef_construct: u32,
    /// Print what was done as JSON.
    #[arg(long)]
    pub json: bool,
}

#[derive(Debug, Args)]
pub struct PgvectorArgs {
    /// The dataset (a path or a URL such as s3://bucket/prefix).
    #[arg(value_name = "DATASET")]
    pub dataset: PathBuf,
    /// The database: a postgres:// URL or a libpq key=value string. Prefer the environment variable: a password
    /// on a command line can be seen by other users of the machine.
    #[arg(long, value_name = "URL", env = "DATABASE_URL", hide_env_values = true)]
    pub to: String,
    /// The table ([SCHEMA.]NAME). Default: the dataset's name, lowercased, other characters as _.
    #[arg(long, value_name = "NAME")]
    pub table: Option<String>,
    /// Write everything into a new table and swap it in, whatever the database holds.
    #[arg(long)]
    pub full: bool,
    /// HNSW: links per node (pgvector's m).
    #[arg(long, default_value_t = 16, value_parser = clap::value_parser!(u32).range(2..=100))]
    pub m: u32,
    /// HNSW: candidate list size while building (pgvector's ef_construction; at least 2 * m).
    #[arg(long, default_value_t = 64, value_parser = clap::value_parser!(u32).range(4..=1000))]
    pub ef_construction: u32,
    /// Build no HNSW index (queries then scan the table; build one yourself with your own settings).
    #[arg(long)]
    pub no_index: bool,
    /// Print what was done as JSON.
    #[arg(long)]
    pub json: bool,
}

#[derive(Debug, Args)]
pub struct CommitArgs {
    /// The dataset (a path or a URL such as s3://bucket/prefix).
    #[arg(value_name = "DATASET")]
    pub dataset: PathBuf,
    /// The run to commit (its shards' --run-id).
    #[arg(long, value_name = "ID", env = "TARS_INDEX_RUN_ID")]
    pub run_id: String,
    /// Publish without building or updating the index.
    #[arg(long)]
    pub no_index: bool,
}

#[derive(Debug, Subcommand)]
pub enum RunsCommand {
    /// Shards done and missing, their rows, and whether the run was committed.
    Status(RunsStatusArgs),
}

#[derive(Debug, Args)]
pub struct RunsStatusArgs {
    #[arg(value_name = "DATASET")]
    pub dataset: PathBuf,
    #[arg(long, value_name = "ID", env = "TARS_INDEX_RUN_ID")]
    pub run_id: String,
    /// Print the state as JSON.
    #[arg(long)]
    pub json: bool,
}

#[derive(Debug, Args)]
pub struct EmbedArgs {
    /// Files or directories (walked recursively). .jsonl/.ndjson files hold one document per line; any other
    /// non-binary file is read as UTF-8 text.
    #[arg(required = true, value_name = "INPUT")]
    pub inputs: Vec<PathBuf>,
    /// Dataset directory to write. An existing dataset is updated: only new and changed documents are embedded.
    #[arg(short, long, value_name = "DATASET_DIR")]
    pub out: PathBuf,
    #[command(flatten)]
    pub job: JobFlags,
}

/// Job settings shared by `embed` and `run`. Every one is optional here: `run` takes unset ones from the pipeline
/// file, and both fall back to the defaults in the help text.
#[derive(Debug, Args, Default)]
pub struct JobFlags {
    /// Embed only shard I of N (0-based) of the documents, by a stable hash of their names: one of N processes of
    /// a sharded run, published as one version when all are done. `auto` reads I (and N where the engine gives it)
    /// from JOB_COMPLETION_INDEX (Kubernetes Indexed Jobs, N from --shards), CLOUD_RUN_TASK_INDEX/_COUNT,
    /// AWS_BATCH_JOB_ARRAY_INDEX/_SIZE or SLURM_ARRAY_TASK_ID/_COUNT. --tpm and --rpm are then the whole run's:
    /// each shard takes 1/N of them.
    #[arg(long, value_name = "I/N|auto", help_heading = "Sharded runs")]
    pub shard: Option<String>,
    /// The number of shards, for `--shard auto` where the engine does not say (Kubernetes).
    #[arg(long, value_name = "N", env = "TARS_INDEX_SHARDS", help_heading = "Sharded runs")]
    pub shards: Option<u32>,
    /// Names the sharded run all N shards belong to (the same for all of them, new for each run: a Kubernetes Job's
    /// name, say).
    #[arg(long, value_name = "ID", env = "TARS_INDEX_RUN_ID", help_heading = "Sharded runs")]
    pub run_id: Option<String>,
    /// Embedding model: `tars/<id>` (or any id the endpoint offers; `tars/` is stripped on the wire), or
    /// `local/all-minilm-l6-v2` / `local/<DIR>` for the in-process model (no key, no network)
    /// [default: tars/text-embedding-3-small].
    #[arg(short, long)]
    pub model: Option<String>,
    /// Vector size to ask for (text-embedding-3 models only).
    #[arg(long, value_name = "N")]
    pub dimensions: Option<u32>,
    /// Most tokens per chunk, counted with the model's tokenizer [default: 512, or a local model's window].
    #[arg(long, value_name = "N")]
    pub chunk_tokens: Option<usize>,
    /// Tokens shared by neighbouring chunks [default: chunk-tokens / 8].
    #[arg(long, value_name = "N")]
    pub chunk_overlap: Option<usize>,
    /// Only read files whose path (relative to the input directory) matches; repeatable.
    #[arg(long, value_name = "GLOB")]
    pub include: Vec<String>,
    /// Skip files whose path (relative to the input directory) matches; repeatable, wins over --include.
    #[arg(long, value_name = "GLOB")]
    pub exclude: Vec<String>,
    /// Field (JSONL) or column (CSV, TSV, Parquet) holding the text [default: text].
    #[arg(long, value_name = "FIELD")]
    pub text_field: Option<String>,
    /// Field or column naming each record [default: <file>:<line>, <file>:<row> for Parquet].
    #[arg(long, value_name = "FIELD")]
    pub id_field: Option<String>,
    /// Carry a record field into the dataset as a typed metadata column (TYPE: string, int64, float64, bool,
    /// timestamp; without one, the field's own type); `*` carries every scalar field. Repeatable.
    #[arg(long, value_name = "FIELD[:TYPE]")]
    pub metadata: Vec<String>,
    /// Read files as FORMAT (text, markdown, jsonl, csv, tsv, parquet, html, pdf, image) instead of by extension; with
    /// GLOB=FORMAT only files whose path below the input matches. Repeatable, the first match wins.
    #[arg(long, value_name = "[GLOB=]FORMAT")]
    pub format: Vec<String>,
    /// Describe the images of the input (.png, .jpg, .jpeg, .webp, .gif) with this vision model through TARS
    /// (`tars/gpt-4o-mini`, say): the description, with any visible text, becomes the image's text. Captions are
    /// cached in the dataset by image content and model. Without it, images are not read (and the run says how
    /// many it skipped).
    #[arg(long, value_name = "MODEL")]
    pub caption_model: Option<String>,
    /// Follow symbolic links to directories, detecting loops (links to files are always read).
    #[arg(short = 'L', long)]
    pub follow: bool,
    /// Reuse nothing from an existing dataset: embed everything again. The old version stays readable until the
    /// new one is complete.
    #[arg(long)]
    pub overwrite: bool,
    /// Most of the dataset's documents one run may delete, as a count or a share (100, 10%) [default: 50%]. A run
    /// that would delete more (an empty or missing input, a wrong --include) stops before publishing, exit 2.
    #[arg(long, value_name = "N|P%")]
    pub max_delete: Option<String>,
    /// Let the run delete any number of the dataset's documents (no --max-delete limit).
    #[arg(long, conflicts_with = "max_delete")]
    pub allow_mass_delete: bool,
    /// Leave the index as it is (`embed` otherwise brings an existing index up to date, `run` builds one).
    #[arg(long)]
    pub no_index: bool,
    /// Check the dataset's files first and drop damaged ones (as `tars-index repair`), so that this run embeds
    /// again only what they held.
    #[arg(long, conflicts_with = "dry_run")]
    pub repair: bool,
    #[command(flatten)]
    pub requests: RequestFlags,
}

/// How requests are made and paced, and what a run may spend: shared by `embed`, `run` and `retry-failed`.
#[derive(Debug, Args, Default)]
pub struct RequestFlags {
    /// Requests in flight at once [default: 8; 1 for a local model, which uses every core per batch].
    #[arg(short = 'j', long, value_parser = clap::value_parser!(u16).range(1..=256))]
    pub concurrency: Option<u16>,
    /// Most inputs per request, at most 2048 [default: 128]. Smaller requests spread a small corpus over the
    /// concurrent slots; larger ones spend less of a requests-per-minute limit.
    #[arg(long, value_name = "N")]
    pub batch_inputs: Option<usize>,
    /// Most tokens per request, summed over its inputs, at most 300000 [default: 300000].
    #[arg(long, value_name = "N")]
    pub batch_tokens: Option<usize>,
    /// Seconds before a request is abandoned and retried [default: 120].
    #[arg(long, value_name = "SECS")]
    pub timeout: Option<u64>,
    /// Retries of a failing request before its chunks count as failed [default: 6]. Rate-limit 429s have their
    /// own budget of 30.
    #[arg(long, value_name = "N")]
    pub max_retries: Option<u32>,
    /// Stop the run once more than N chunks have failed (retries exhausted): the endpoint is clearly broken.
    #[arg(long, value_name = "N")]
    pub max_failures: Option<u64>,
    /// Requests per minute to stay under, enforced before sending (else learned from x-ratelimit-* headers).
    #[arg(long, value_name = "N")]
    pub rpm: Option<u32>,
    /// Tokens per minute to stay under, counted with cl100k_base before sending (else learned from headers).
    #[arg(long, value_name = "N")]
    pub tpm: Option<u64>,
    /// Another OpenAI-compatible base URL serving the same model, for requests the primary gave up on (key from
    /// TARS_FALLBACK_API_KEY, else TARS_API_KEY).
    #[arg(long, value_name = "URL")]
    pub fallback_base: Option<String>,
    /// The model's name at the fallback endpoint, when it differs only by its provider prefix (such as
    /// `openai/text-embedding-3-small`); any other model is refused, since its vectors are not comparable.
    #[arg(long, value_name = "MODEL")]
    pub fallback_model: Option<String>,
    /// Wait up to SECS for another run writing the same dataset to finish, instead of failing at once.
    #[arg(long, value_name = "SECS", default_value_t = 0)]
    pub wait_lock: u64,
    /// Print the run report as JSON on stdout.
    #[arg(long)]
    pub json: bool,
    /// Count documents, chunks, requests and tokens and estimate the cost, without calling the API or writing
    /// anything. Counts what an incremental run would send, not the whole corpus.
    #[arg(long)]
    pub dry_run: bool,
    /// Stop cleanly before a request that would take the run past N tokens (work done so far is kept).
    #[arg(long, value_name = "N")]
    pub max_tokens: Option<u64>,
    /// Stop cleanly before a request that would take the estimated cost past USD.
    #[arg(long, value_name = "USD")]
    pub max_cost: Option<f64>,
    /// Price in US dollars per million tokens, instead of the built-in table (text-embedding-3-small 0.02,
    /// -3-large 0.13, ada-002 0.10; local models 0).
    #[arg(long, value_name = "USD")]
    pub price: Option<f64>,
}

#[derive(Debug, Args)]
pub struct RetryFailedArgs {
    /// The dataset whose failed chunks (its dead-letter file) to send again, with the dataset's model.
    #[arg(value_name = "DATASET_DIR")]
    pub dataset: PathBuf,
    #[command(flatten)]
    pub requests: RequestFlags,
}

#[derive(Debug, Args)]
pub struct RepairArgs {
    #[arg(value_name = "DATASET_DIR")]
    pub dataset: PathBuf,
    /// Wait up to SECS for a run writing the dataset to finish.
    #[arg(long, value_name = "SECS", default_value_t = 0)]
    pub wait_lock: u64,
    /// Print what was found and done as JSON.
    #[arg(long)]
    pub json: bool,
}

#[derive(Debug, Args)]
pub struct RunArgs {
    /// The pipeline file (TOML; see pipelines/).
    #[arg(value_name = "PIPELINE_TOML")]
    pub pipeline: PathBuf,
    /// Dataset directory, instead of the file's output.dataset.
    #[arg(short, long, value_name = "DATASET_DIR")]
    pub out: Option<PathBuf>,
    #[command(flatten)]
    pub job: JobFlags,
    /// Links per node and layer of the index, instead of the file's index.m [default: 16].
    #[arg(long)]
    pub m: Option<usize>,
    /// Candidate list size while building, instead of the file's index.ef_construction [default: 200].
    #[arg(long)]
    pub ef_construction: Option<usize>,
    /// Rebuild the index from scratch instead of extending it.
    #[arg(long)]
    pub rebuild_index: bool,
}

#[derive(Debug, Args)]
pub struct ValidateArgs {
    /// Pipeline files to check.
    #[arg(required = true, value_name = "PIPELINE_TOML")]
    pub pipelines: Vec<PathBuf>,
}

#[derive(Debug, Args)]
pub struct IndexArgs {
    #[arg(value_name = "DATASET_DIR")]
    pub dataset: PathBuf,
    /// Links per node and layer.
    #[arg(long, default_value_t = DEFAULT_M)]
    pub m: usize,
    /// Candidate list size while building (higher: better graph, slower build).
    #[arg(long, default_value_t = DEFAULT_EF_CONSTRUCTION)]
    pub ef_construction: usize,
    /// Rebuild from scratch instead of extending the existing index with the rows added since.
    #[arg(long)]
    pub rebuild: bool,
    /// Check every byte of the index files against their checksums and change nothing (a search checks sizes and
    /// the first and last 64 KiB only).
    #[arg(long, conflicts_with = "rebuild")]
    pub verify: bool,
    /// Wait up to SECS for a run writing the dataset to finish.
    #[arg(long, value_name = "SECS", default_value_t = 0)]
    pub wait_lock: u64,
    /// Print the result as JSON.
    #[arg(long)]
    pub json: bool,
}

#[derive(Debug, Args)]
pub struct SearchArgs {
    #[arg(value_name = "DATASET_DIR")]
    pub dataset: PathBuf,
    #[arg(required_unless_present = "queries")]
    pub query: Option<String>,
    /// Answer every query in FILE (`-`: standard input) in one process, as JSON lines with each hit's query_id: one
    /// query per line, or JSON objects {"query" (or "text"), "id" (or "_id"), "filter", "k", "mode"}.
    #[arg(long, value_name = "FILE", conflicts_with = "query")]
    pub queries: Option<PathBuf>,
    /// Number of results.
    #[arg(short, default_value_t = 10, value_parser = clap::value_parser!(u16).range(1..=1000))]
    pub k: u16,
    /// Candidate list size while searching (higher: better recall, slower).
    #[arg(long, default_value_t = DEFAULT_EF_SEARCH as u16, value_parser = clap::value_parser!(u16).range(1..=10000))]
    pub ef: u16,
    /// Only chunks matching EXPR, over the metadata columns and the built-ins (doc, file, format, title,
    /// modified, size, page, chunk_index): `year >= 2020 AND lang IN ('en', 'de')`, `doc LIKE 'guides/%'`,
    /// `title IS NULL`. Repeated: all must match.
    #[arg(long, value_name = "EXPR")]
    pub filter: Vec<String>,
    /// vector (nearest embeddings), keyword (BM25 over texts, titles and identifiers) or hybrid (both, fused by
    /// reciprocal rank). Default: hybrid when the dataset has a keyword index, else vector.
    #[arg(long, value_parser = ["vector", "keyword", "hybrid"])]
    pub mode: Option<String>,
    /// Hybrid: RRF's k (a hit at rank r in a list adds 1/(k + r)).
    #[arg(long, default_value_t = crate::query::DEFAULT_RRF_K, value_parser = positive_f64)]
    pub rrf_k: f64,
    /// Hybrid: hits each retriever contributes to the fusion (at least -k).
    #[arg(long, default_value_t = crate::query::DEFAULT_CANDIDATES as u16, value_parser = clap::value_parser!(u16).range(1..=10000))]
    pub candidates: u16,
    /// Say how the hits were found: the index used, the filter's matches and strategy, rows scored, and each hit's
    /// vector rank, keyword rank and fused score.
    #[arg(long)]
    pub explain: bool,
    /// One JSON object per result line.
    #[arg(long)]
    pub json: bool,
}

#[derive(Debug, Args)]
pub struct AskArgs {
    #[arg(value_name = "DATASET_DIR")]
    pub dataset: PathBuf,
    pub question: String,
    /// The chat model, through TARS.
    #[arg(long, env = "TARS_CHAT_MODEL", default_value = crate::query::ask::DEFAULT_CHAT_MODEL)]
    pub model: String,
    /// Sources given to the model (with --agent: the default k of its searches).
    #[arg(short, default_value_t = crate::query::ask::DEFAULT_SOURCES as u16, value_parser = clap::value_parser!(u16).range(1..=50))]
    pub k: u16,
    /// Only chunks matching EXPR (as in `search`); with --agent, every search the model makes is held to it.
    #[arg(long, value_name = "EXPR")]
    pub filter: Vec<String>,
    /// How sources are found: vector, keyword or hybrid (the default when the dataset has a keyword index).
    #[arg(long, value_parser = ["vector", "keyword", "hybrid"])]
    pub mode: Option<String>,
    /// The answer's output budget [default: 1024; 4000 for reasoning models].
    #[arg(long, value_name = "TOKENS", value_parser = clap::value_parser!(u32).range(1..=1_000_000))]
    pub max_tokens: Option<u32>,
    /// Sampling temperature, where the model takes one [default: the model's].
    #[arg(long)]
    pub temperature: Option<f32>,
    /// Let the model search the dataset itself through a `search` tool, as often as it needs.
    #[arg(long)]
    pub agent: bool,
    /// With --agent: model turns that may call the tool before it must answer.
    #[arg(long, default_value_t = 4, value_parser = clap::value_parser!(u16).range(1..=32))]
    pub max_steps: u16,
    /// One JSON object once the answer is complete: the answer, its sources, what was cited, the usage.
    #[arg(long)]
    pub json: bool,
    /// Print the prompt and its estimated cost; send nothing to the chat model.
    #[arg(long)]
    pub dry_run: bool,
}

/// What `serve` and `mcp` share: the datasets, their names, and how they are kept fresh and queried.
#[derive(Debug, Args)]
pub struct ServedFlags {
    /// Datasets to serve, each named by its directory's name unless --name says otherwise.
    #[arg(required = true, value_name = "DATASET_DIR")]
    pub datasets: Vec<PathBuf>,
    /// Names for the datasets, in the order they are given (repeat it; the rest keep their directory's name).
    #[arg(long, value_name = "NAME")]
    pub name: Vec<String>,
    /// How often to look for new versions of the datasets.
    #[arg(long, value_name = "SECONDS", default_value_t = 1.0, value_parser = positive_f64)]
    pub poll_interval: f64,
    /// Query vectors kept, per dataset, for repeated queries (0: none).
    #[arg(long, value_name = "QUERIES", default_value_t = 1024)]
    pub cache: usize,
    /// Longest a request may take, embedding included, before it is answered with an error (HTTP 504).
    #[arg(long, value_name = "SECONDS", default_value_t = 30.0, value_parser = positive_f64)]
    pub request_timeout: f64,
    /// The chat model that answers `POST /v1/ask` and the `ask` tool, through TARS (off without TARS_API_KEY).
    #[arg(long, env = "TARS_CHAT_MODEL", default_value = crate::query::ask::DEFAULT_CHAT_MODEL)]
    pub chat_model: String,
}

#[derive(Debug, Args)]
pub struct ServeArgs {
    #[command(flatten)]
    pub served: ServedFlags,
    /// Address to listen on; port 0 picks a free one (the address is printed on stdout).
    #[arg(long, default_value = "127.0.0.1:8080")]
    pub addr: std::net::SocketAddr,
    /// Clients must send `Authorization: Bearer <token>` with the token held in this environment variable.
    #[arg(long, value_name = "VAR")]
    pub token_env: Option<String>,
    /// On SIGTERM or Ctrl-C: longest to wait for requests in flight.
    #[arg(long, value_name = "SECONDS", default_value_t = 10.0, value_parser = positive_f64)]
    pub shutdown_timeout: f64,
}

#[derive(Debug, Args)]
pub struct McpArgs {
    #[command(flatten)]
    pub served: ServedFlags,
}

#[derive(Debug, Args)]
pub struct EvalArgs {
    #[arg(value_name = "DATASET_DIR")]
    pub dataset: PathBuf,
    /// Labelled queries: JSON lines {"query": ..., "relevant": ["doc" or "doc#chunk", ...]}, or with --queries a
    /// BEIR qrels TSV (query-id, corpus-id, score).
    #[arg(long, value_name = "FILE")]
    pub qrels: PathBuf,
    /// BEIR queries JSONL ({"_id", "text"}) for a qrels TSV.
    #[arg(long, value_name = "FILE")]
    pub queries: Option<PathBuf>,
    /// Recall is measured at k (MRR and nDCG at 10).
    #[arg(short, default_value_t = 10, value_parser = clap::value_parser!(u16).range(1..=1000))]
    pub k: u16,
    /// Only chunks matching EXPR (as `search --filter`); repeated: all must match.
    #[arg(long, value_name = "EXPR")]
    pub filter: Vec<String>,
    /// Only this mode (default: every mode the dataset supports).
    #[arg(long, value_parser = ["vector", "keyword", "hybrid"])]
    pub mode: Option<String>,
    #[arg(long, default_value_t = DEFAULT_EF_SEARCH as u16, value_parser = clap::value_parser!(u16).range(1..=10000))]
    pub ef: u16,
    #[arg(long, default_value_t = crate::query::DEFAULT_RRF_K, value_parser = positive_f64)]
    pub rrf_k: f64,
    #[arg(long, default_value_t = crate::query::DEFAULT_CANDIDATES as u16, value_parser = clap::value_parser!(u16).range(1..=10000))]
    pub candidates: u16,
    /// Print the figures as JSON.
    #[arg(long)]
    pub json: bool,
}

#[derive(Debug, Args)]
pub struct ModelsArgs {
    /// One JSON object per model line.
    #[arg(long)]
    pub json: bool,
}

fn positive_f64(value: &str) -> Result<f64, String> {
    match value.parse::<f64>() {
        Ok(x) if x.is_finite() && x >= 0.0 => Ok(x),
        _ => Err(format!("{value:?} is not a number of 0 or more")),
    }
}
