//! The Model Context Protocol server (rmcp): the served datasets as tools an agent can call, over stdio
//! (`tars-index mcp`) or streamable HTTP (`/mcp` on `serve`). Each tool runs the same code as the HTTP API
//! ([`super::api`]) and answers with its JSON; a call that fails returns a tool error saying why, never a crash.

use std::sync::Arc;

use rmcp::handler::server::router::tool::ToolRouter;
use rmcp::handler::server::wrapper::Parameters;
use rmcp::model::{Implementation, ServerCapabilities, ServerConfig};
use rmcp::{ServerHandler, tool, tool_handler, tool_router};
use schemars::JsonSchema;
use serde::Deserialize;
use serde_json::Value;

use super::Server;
use super::api::{self, ApiError, SearchRequest};

/// The tools, over the datasets a [`Server`] holds.
#[derive(Clone)]
pub struct Mcp {
    server: Arc<Server>,
    tool_router: ToolRouter<Self>,
}

#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct SearchArgs {
    /// What to look for: a question, keywords, or an exact identifier, flag or error message.
    pub query: String,
    /// The dataset to search (see list_datasets); may be left out when only one is served.
    #[serde(default)]
    pub dataset: Option<String>,
    /// How many chunks to return (1 to 1000; default 10).
    #[serde(default)]
    pub k: Option<u64>,
    /// "hybrid" (default when the dataset has a keyword index: embeddings and BM25 fused), "vector" (meaning only)
    /// or "keyword" (BM25 over the words; best for exact names, codes and flags).
    #[serde(default)]
    pub mode: Option<String>,
    /// Only chunks matching this expression over the metadata columns (see list_datasets) and the built-ins doc,
    /// file, format, title, modified, size, page, chunk_index: for example `lang = 'en' AND year >= 2022`,
    /// `doc LIKE 'guides/%'`, `format IN ('pdf', 'html')`, `title IS NOT NULL`.
    #[serde(default)]
    pub filter: Option<String>,
}

#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct AskArgs {
    /// The question, in plain words.
    pub question: String,
    /// The dataset to answer from; may be left out when only one is served.
    #[serde(default)]
    pub dataset: Option<String>,
    /// How many chunks the answer may draw on (1 to 50; default 5).
    #[serde(default)]
    pub k: Option<u64>,
    /// Only chunks matching this expression (as in search).
    #[serde(default)]
    pub filter: Option<String>,
}

#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct DocumentArgs {
    /// The document's name, as search hits give it in "doc".
    pub doc: String,
    /// The dataset it is in; may be left out when only one is served.
    #[serde(default)]
    pub dataset: Option<String>,
}

#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct CountArgs {
    /// Count only chunks matching this expression (as in search); all chunks without it.
    #[serde(default)]
    pub filter: Option<String>,
    /// The dataset; may be left out when only one is served.
    #[serde(default)]
    pub dataset: Option<String>,
}

/// A tool's answer: its JSON, or the error's message (with its code) as a tool error.
fn answer(result: Result<Value, ApiError>) -> Result<String, String> {
    match result {
        Ok(value) => serde_json::to_string(&value).map_err(|e| e.to_string()),
        Err(e) => Err(format!("{} ({})", e.message, e.code)),
    }
}

#[tool_router(router = tool_router)]
impl Mcp {
    pub fn new(server: Arc<Server>) -> Self {
        Self { server, tool_router: Self::tool_router() }
    }

    #[tool(
        name = "search",
        description = "Search the indexed documents and return the best-matching chunks, best first, each with its \
                       document name (doc), chunk_index, score, text, title, page and metadata. Use filter to narrow by \
                       metadata; use mode \"keyword\" for exact identifiers. Cite hits by doc and chunk_index."
    )]
    async fn search(&self, Parameters(args): Parameters<SearchArgs>) -> Result<String, String> {
        let request = SearchRequest {
            dataset: args.dataset,
            query: Some(args.query),
            k: args.k,
            mode: args.mode,
            filter: args.filter,
            ..SearchRequest::default()
        };
        answer(api::search(&self.server, request).await)
    }

    #[tool(
        name = "ask",
        description = "Answer a question from the indexed documents with the server's chat model: the answer, citing \
                       its sources as [n], with the sources (doc, chunk_index, text) and which of them it cited. The \
                       answer says so when the sources do not answer the question. Off when the server has no TARS key."
    )]
    async fn ask(&self, Parameters(args): Parameters<AskArgs>) -> Result<String, String> {
        let request = api::AskRequest {
            dataset: args.dataset,
            question: args.question,
            k: args.k,
            filter: args.filter,
            ..api::AskRequest::default()
        };
        answer(api::ask(&self.server, request).await)
    }

    #[tool(
        name = "list_datasets",
        description = "List the datasets that can be searched: name, embedding model, number of chunks and documents, \
                       version, last update, and the metadata columns (with their types) that filters can use."
    )]
    async fn list_datasets(&self) -> Result<String, String> {
        answer(api::datasets(&self.server).await)
    }

    #[tool(
        name = "get_document",
        description = "Get one whole document by its name (the doc field of a search hit): its title, file, format, \
                       metadata and all its chunks in order. Use it to read around a hit."
    )]
    async fn get_document(&self, Parameters(args): Parameters<DocumentArgs>) -> Result<String, String> {
        answer(api::document(&self.server, args.dataset.as_deref(), &args.doc).await)
    }

    #[tool(
        name = "count",
        description = "Count the chunks that match a filter expression (or all chunks), for example to check how \
                       much of a dataset a filter selects before searching it."
    )]
    async fn count(&self, Parameters(args): Parameters<CountArgs>) -> Result<String, String> {
        answer(api::count(&self.server, args.dataset.as_deref(), args.filter.as_deref()).await)
    }
}

#[tool_handler(router = self.tool_router)]
impl ServerHandler for Mcp {
    fn get_info(&self) -> ServerConfig {
        ServerConfig::new(ServerCapabilities::builder().enable_tools().build())
            .with_server_info(Implementation::new("tars-index", env!("CARGO_PKG_VERSION")))
            .with_instructions(format!(
                "Searches document collections indexed by tars-index ({}). Call search with a question or keywords; \
                 get_document reads a whole document; list_datasets tells the datasets and the metadata columns \
                 filters can use.",
                self.server.names.join(", ")
            ))
    }
}

/// Serves the tools on standard input and output until the client closes them.
pub async fn serve_stdio(server: Arc<Server>) -> Result<(), String> {
    use rmcp::ServiceExt;
    let running = Mcp::new(server).serve(rmcp::transport::stdio()).await.map_err(|e| e.to_string())?;
    running.waiting().await.map_err(|e| e.to_string())?;
    Ok(())
}

/// The tools over streamable HTTP, for `serve`'s `/mcp`: stateless (no sessions to keep), answers as plain JSON.
/// Behind the same bearer token as the rest of the API. Host names are checked against loopback (against DNS
/// rebinding) unless the server was bound where other machines reach it.
pub fn streamable_http(
    server: Arc<Server>,
) -> rmcp::transport::StreamableHttpService<
    Mcp,
    rmcp::transport::streamable_http_server::session::local::LocalSessionManager,
> {
    use rmcp::transport::streamable_http_server::StreamableHttpServerConfig;
    let mut config = StreamableHttpServerConfig::default();
    config.legacy_session_mode = false;
    config.json_response = true;
    config.max_request_body_bytes = server.limits.max_body;
    if server.exposed {
        config = config.disable_allowed_hosts();
    }
    rmcp::transport::StreamableHttpService::new(move || Ok(Mcp::new(Arc::clone(&server))), Default::default(), config)
}
