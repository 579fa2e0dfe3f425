//! `ask`: retrieve with the query engine, give a chat model the hits as numbered sources, stream its answer, then
//! check every `[n]` it cites against the sources it was given.
//!
//! Nothing here prints: the sources and the answer's text go to the caller's sink as they come, and the result says what was
//! cited, what was cited that was never given, and whether the model said the sources do not answer.

use std::collections::BTreeSet;
use std::fmt::Write as _;

use super::{Columns, Filter, Mode, QueryError, SearchHit, Searcher, TextQuery};
use crate::chunk::count_tokens;
use crate::tars::chat::{ChatClient, ChatError, ChatRequest, Completion, Message, Tool, ToolCall, ToolChoice, Usage};

/// A cost-effective chat model through TARS.
pub const DEFAULT_CHAT_MODEL: &str = "tars/gpt-4o-mini";

/// Sources given to the model unless told otherwise.
pub const DEFAULT_SOURCES: usize = 5;

/// What the model is told to say when the sources do not answer; [`Asked::answered`] looks for it.
pub const NO_ANSWER: &str = "The sources do not answer this question.";

const SYSTEM_PROMPT: &str = "You answer questions using only the numbered sources the user gives you, never outside \
knowledge. After each statement, cite the sources that support it by their numbers in square brackets, like [1] or \
[2][3]. Cite only numbers that were given. If the sources do not contain the answer, say exactly \"The sources do \
not answer this question.\" and then, in one sentence, what they do cover. Be concise.";

/// How to ask.
#[derive(Debug, Clone, Copy, Default)]
pub struct AskSettings {
    /// The output budget (the model family's default when `None`).
    pub max_tokens: Option<u32>,
    pub temperature: Option<f32>,
}

/// The `[n]` citations of an answer, checked against the sources given (numbered from 1).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Citations {
    /// Sources cited, in order of number.
    pub cited: Vec<usize>,
    /// Numbers cited that name no source given.
    pub unknown: Vec<usize>,
}

/// What an ask reports while it runs, in order: sources as they are found, then the answer's text piece by piece
/// (with `--agent`, sources again after each search, and any text the model writes between its searches).
#[derive(Debug, Clone, Copy)]
pub enum AskEvent<'a> {
    /// Sources given to the model, the first of them numbered `first`.
    Sources { first: usize, hits: &'a [SearchHit] },
    /// A piece of the answer, as it streamed in.
    Text(&'a str),
}

/// Where an ask's events go.
pub type AskSink<'s> = dyn FnMut(AskEvent<'_>) + Send + 's;

/// An answer and what it rests on.
#[derive(Debug, Clone)]
pub struct Asked {
    /// The version searched, and how.
    pub generation: u64,
    pub mode: Mode,
    /// The sources the model was given, numbered from 1 in this order.
    pub sources: Vec<SearchHit>,
    /// The final completion (text, finish reason); `None` when no source matched and nothing was sent.
    pub completion: Option<Completion>,
    pub citations: Citations,
    /// Agent mode: the searches the model asked for, in order.
    pub searches: Vec<ToolSearch>,
    /// Summed over every model turn.
    pub usage: Option<Usage>,
}

impl Asked {
    pub fn text(&self) -> &str {
        self.completion.as_ref().map_or("", |c| c.text.as_str())
    }

    /// False when nothing matched, or the model said the sources do not answer.
    pub fn answered(&self) -> bool {
        self.completion.is_some() && !says_unanswered(self.text())
    }
}

/// One search the model made through the tool.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ToolSearch {
    pub query: String,
    pub k: usize,
    pub filter: Option<String>,
    /// The source numbers of its hits (a chunk found twice keeps its first number).
    pub sources: Vec<usize>,
    /// Why it could not be run (bad arguments, a filter that does not parse); the model was told.
    pub error: Option<String>,
}

fn add_usage(total: &mut Option<Usage>, more: Option<Usage>) {
    let Some(more) = more else { return };
    let sum = |a: Option<u64>, b: Option<u64>| match (a, b) {
        (None, None) => None,
        (a, b) => Some(a.unwrap_or(0) + b.unwrap_or(0)),
    };
    *total = Some(match *total {
        None => more,
        Some(t) => Usage {
            prompt_tokens: sum(t.prompt_tokens, more.prompt_tokens),
            completion_tokens: sum(t.completion_tokens, more.completion_tokens),
            total_tokens: sum(t.total_tokens, more.total_tokens),
        },
    });
}

#[derive(Debug, thiserror::Error)]
pub enum AskError {
    #[error(transparent)]
    Query(#[from] QueryError),
    #[error(transparent)]
    Chat(#[from] ChatError),
}

/// The messages of a question over `sources`: the rules, then the numbered sources and the question.
pub fn prompt(question: &str, sources: &[SearchHit]) -> Vec<Message> {
    let mut user = String::from("Sources:\n");
    for (n, hit) in sources.iter().enumerate() {
        user.push('\n');
        write_source(&mut user, n + 1, hit);
    }
    let _ = write!(user, "\nQuestion: {}", question.trim());
    vec![Message::system(SYSTEM_PROMPT), Message::user(user)]
}

/// `[n] doc (chunk i), page p, title: t, field: value` and the chunk's text.
fn write_source(out: &mut String, number: usize, hit: &SearchHit) {
    let chunk = &hit.chunk;
    let _ = write!(out, "[{number}] {} (chunk {})", chunk.doc, chunk.chunk_index);
    if let Some(page) = chunk.page {
        let _ = write!(out, ", page {page}");
    }
    if let Some(document) = &hit.document {
        if let Some(title) = document.title.as_deref().filter(|t| !t.trim().is_empty()) {
            let _ = write!(out, ", title: {}", one_line(title));
        }
        for (key, value) in document.fields.iter() {
            if let Some(value) = field_text(value) {
                let _ = write!(out, ", {key}: {}", one_line(&value));
            }
        }
    }
    let _ = writeln!(out, "\n{}", chunk.text.trim());
}

fn field_text(value: &crate::source::Value) -> Option<String> {
    use crate::source::Value;
    Some(match value {
        Value::Null => return None,
        Value::String(s) => s.clone(),
        Value::Int64(n) => n.to_string(),
        Value::Float64(x) => x.to_string(),
        Value::Bool(b) => b.to_string(),
        Value::Timestamp(t) => crate::source::meta::format_timestamp(*t),
    })
}

fn one_line(text: &str) -> String {
    text.split_whitespace().collect::<Vec<_>>().join(" ")
}

/// Finds `[1]`, `[2, 3]`, `[2][3]`, `[1-3]` and `[source 2]` in `answer`; anything else in brackets (a Markdown
/// link's text, `[x]`) is not a citation.
pub fn citations(answer: &str, sources: usize) -> Citations {
    let (mut cited, mut unknown) = (BTreeSet::new(), BTreeSet::new());
    let mut rest = answer;
    while let Some(open) = rest.find('[') {
        let after = &rest[open + 1..];
        let Some(close) = after.find(']') else { break };
        let inside = &after[..close];
        // `[text](url)` is a link, whatever its text.
        let is_link = after[close + 1..].starts_with('(');
        if !is_link && let Some(numbers) = cited_numbers(inside) {
            for n in numbers {
                if (1..=sources).contains(&n) {
                    cited.insert(n);
                } else {
                    unknown.insert(n);
                }
            }
        }
        rest = &after[close..];
    }
    Citations { cited: cited.into_iter().collect(), unknown: unknown.into_iter().collect() }
}

/// The numbers of one bracket's contents, or `None` when they are not a citation.
fn cited_numbers(inside: &str) -> Option<Vec<usize>> {
    let lower = inside.trim().to_ascii_lowercase();
    let list = lower.strip_prefix("sources").or_else(|| lower.strip_prefix("source")).unwrap_or(&lower);
    let mut numbers = Vec::new();
    for part in list.split([',', ';']) {
        let part = part.trim();
        if part.is_empty() {
            return None;
        }
        let number = |s: &str| s.trim().parse::<usize>().ok();
        match part.split_once(['-', '–']) {
            Some((a, b)) => {
                let (a, b) = (number(a)?, number(b)?);
                // A range is a citation only when it is short and forwards; `[1-100000]` is not.
                if a > b || b - a > 50 {
                    return None;
                }
                numbers.extend(a..=b);
            }
            None => numbers.push(number(part)?),
        }
    }
    (!numbers.is_empty()).then_some(numbers)
}

fn says_unanswered(text: &str) -> bool {
    let key = NO_ANSWER.trim_end_matches('.').to_ascii_lowercase();
    one_line(text).to_ascii_lowercase().contains(&key)
}

/// Retrieves for `query`, then streams the model's answer over what was found into `sink`. When nothing matches,
/// nothing is sent to the model.
pub async fn ask(
    searcher: &Searcher,
    chat: &ChatClient,
    query: &TextQuery,
    settings: AskSettings,
    sink: &mut AskSink<'_>,
) -> Result<Asked, AskError> {
    // Checked before retrieval: a wrong --temperature should not cost a search first.
    settings.check(chat, &query.text)?;
    let search = searcher.search(&TextQuery { documents: true, ..query.clone() }).await?;
    let mut asked = Asked {
        generation: search.generation,
        mode: search.mode,
        sources: search.hits,
        completion: None,
        citations: Citations::default(),
        searches: Vec::new(),
        usage: None,
    };
    if asked.sources.is_empty() {
        return Ok(asked);
    }
    sink(AskEvent::Sources { first: 1, hits: &asked.sources });
    let request = settings.request(prompt(&query.text, &asked.sources));
    let completion = chat.complete(&request, &mut |text| sink(AskEvent::Text(text))).await?;
    asked.citations = citations(&completion.text, asked.sources.len());
    add_usage(&mut asked.usage, completion.usage);
    asked.completion = Some(completion);
    Ok(asked)
}

impl AskSettings {
    /// A request of `messages` with these settings.
    pub fn request(&self, messages: Vec<Message>) -> ChatRequest {
        ChatRequest { max_tokens: self.max_tokens, temperature: self.temperature, ..ChatRequest::new(messages) }
    }

    /// Refuses what `chat`'s model cannot take (a temperature out of its range), before anything is searched or sent.
    pub fn check(&self, chat: &ChatClient, question: &str) -> Result<(), ChatError> {
        chat.check(&self.request(vec![Message::user(question)]))
    }
}

/// Most hits one tool call may ask for.
pub const MAX_TOOL_K: usize = 20;

const AGENT_PROMPT: &str = "You answer questions about a document collection using only what its search tool \
returns, never outside knowledge. Call `search` (several times if the question has parts, or if the first results \
are not enough; rephrase rather than repeat), then answer. Every result is numbered like [3]; after each statement \
of your answer, cite the results that support it by their numbers in square brackets, like [1] or [2][3]. Cite \
only numbers the tool returned. If the results do not contain the answer, say exactly \"The sources do not answer \
this question.\" and then, in one sentence, what they do cover. Be concise.";

/// The `search` tool: the schema of tars-chat.md §6, with a filter over the dataset's columns.
fn search_tool(columns: &Columns) -> Tool {
    Tool {
        name: "search".to_owned(),
        description: format!(
            "Search the document collection. Returns the most relevant passages, each numbered [n] for citing. \
             Optional filter: a SQL-like expression over these columns: {}; e.g. doc LIKE 'guides/%'.",
            columns.listing()
        ),
        parameters: serde_json::json!({
            "type": "object",
            "properties": {
                "query": { "type": "string", "description": "What to look for." },
                "k": { "type": "integer", "minimum": 1, "maximum": MAX_TOOL_K, "description": "How many passages (default 5)." },
                "filter": { "type": "string", "description": "Only passages matching this expression." },
            },
            "required": ["query"],
            "additionalProperties": false,
        }),
    }
}

/// The model searches through a `search` tool as often as it needs (up to `max_steps` turns that call tools; then
/// it must answer), and answers citing what the tool returned. `query` gives the user's question, the defaults of
/// a search (k, mode) and a filter every search is held to.
pub async fn ask_agent(
    searcher: &Searcher,
    chat: &ChatClient,
    query: &TextQuery,
    settings: AskSettings,
    max_steps: usize,
    sink: &mut AskSink<'_>,
) -> Result<Asked, AskError> {
    let mut messages = vec![Message::system(AGENT_PROMPT), Message::user(query.text.trim())];
    settings.check(chat, &query.text)?;
    let columns = searcher.engine().columns()?;
    let tool = search_tool(&columns);
    let summary = searcher.engine().summary()?;
    let mut asked = Asked {
        generation: summary.generation,
        mode: query.mode.unwrap_or(Mode::Hybrid),
        sources: Vec::new(),
        completion: None,
        citations: Citations::default(),
        searches: Vec::new(),
        usage: None,
    };
    for step in 0..=max_steps {
        let last = step == max_steps;
        let request = ChatRequest {
            tools: vec![tool.clone()],
            // Out of steps: answer with what was found.
            tool_choice: if last { ToolChoice::None } else { ToolChoice::Auto },
            ..settings.request(messages.clone())
        };
        let completion = chat.complete(&request, &mut |text| sink(AskEvent::Text(text))).await?;
        add_usage(&mut asked.usage, completion.usage);
        // Whether to run tools is decided by the calls, not the finish reason (§4: some send "stop" with calls).
        if completion.tool_calls.is_empty() || last {
            if !completion.tool_calls.is_empty() {
                tracing::warn!("the model still called tools after its last step (--max-steps {max_steps}); ignored");
            }
            asked.citations = citations(&completion.text, asked.sources.len());
            asked.completion = Some(completion);
            return Ok(asked);
        }
        messages.push(Message::assistant(&completion));
        // One result per call, in the calls' order, right after the assistant turn (§6).
        let known = asked.sources.len();
        for call in &completion.tool_calls {
            let (result, search) = run_tool(searcher, &columns, query, call, &mut asked).await?;
            asked.searches.push(search);
            messages.push(Message::tool(&call.id, result));
        }
        if asked.sources.len() > known {
            sink(AskEvent::Sources { first: known + 1, hits: &asked.sources[known..] });
        }
    }
    unreachable!("the last step returns")
}

/// Runs one tool call; a call that cannot be run is answered with the reason, for the model to correct.
async fn run_tool(
    searcher: &Searcher,
    columns: &Columns,
    query: &TextQuery,
    call: &ToolCall,
    asked: &mut Asked,
) -> Result<(String, ToolSearch), AskError> {
    let mut search = ToolSearch { query: String::new(), k: 0, filter: None, sources: Vec::new(), error: None };
    let refuse = |mut search: ToolSearch, why: String| {
        let text = format!("The search could not be run: {why}");
        search.error = Some(why);
        (text, search)
    };
    if call.name != "search" {
        return Ok(refuse(search, format!("there is no tool named {:?}; the only tool is search", call.name)));
    }
    let arguments = match call.parse_arguments() {
        Ok(serde_json::Value::Object(map)) => map,
        Ok(other) => return Ok(refuse(search, format!("the arguments must be a JSON object, not {other}"))),
        Err(e) => return Ok(refuse(search, e)),
    };
    search.query = arguments.get("query").and_then(|q| q.as_str()).unwrap_or_default().trim().to_owned();
    search.k =
        arguments.get("k").and_then(serde_json::Value::as_u64).map_or(query.k, |k| k as usize).clamp(1, MAX_TOOL_K);
    search.filter =
        arguments.get("filter").and_then(|f| f.as_str()).map(str::trim).filter(|f| !f.is_empty()).map(str::to_owned);
    if search.query.is_empty() {
        return Ok(refuse(search, "`query` is missing or empty".to_owned()));
    }
    let filter = match &search.filter {
        None => query.filter.clone(),
        Some(expr) => match Filter::parse(expr, columns) {
            // The user's --filter holds for every search the model makes.
            Ok(f) => Some(match query.filter.clone() {
                Some(base) => Filter::And(Box::new(base), Box::new(f)),
                None => f,
            }),
            Err(e) => return Ok(refuse(search, format!("the filter does not parse: {e}"))),
        },
    };
    let text_query = TextQuery { text: search.query.clone(), k: search.k, documents: true, filter, ..query.clone() };
    let answer = match searcher.search(&text_query).await {
        Ok(answer) => answer,
        Err(e) if e.is_usage() => return Ok(refuse(search, e.to_string())),
        Err(e) => return Err(e.into()),
    };
    asked.mode = answer.mode;
    let mut text = String::new();
    for hit in answer.hits {
        let found =
            asked.sources.iter().position(|s| s.chunk.ordinal == hit.chunk.ordinal && s.chunk.doc == hit.chunk.doc);
        let number = match found {
            Some(at) => at + 1,
            None => {
                asked.sources.push(hit);
                asked.sources.len()
            }
        };
        search.sources.push(number);
        write_source(&mut text, number, &asked.sources[number - 1]);
        text.push('\n');
    }
    if text.is_empty() {
        text = "No passages matched.".to_owned();
    }
    Ok((text, search))
}

/// What a prompt will cost, before it is sent.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Estimate {
    /// cl100k tokens of the messages, plus OpenAI's few tokens of framing per message; other tokenizers differ by
    /// some percent.
    pub prompt_tokens: u64,
    /// The output budget: the most the answer can cost.
    pub max_output_tokens: u64,
    /// At the provider's list price, when the model is known.
    pub max_usd: Option<f64>,
}

pub fn estimate(model: &str, messages: &[Message], max_output_tokens: u32) -> Estimate {
    let prompt_tokens = messages.iter().map(|m| count_tokens(&m.text_content()) as u64 + 4).sum::<u64>() + 3;
    let max_output_tokens = u64::from(max_output_tokens);
    let max_usd = crate::tars::price::chat_usd(model, prompt_tokens, max_output_tokens);
    Estimate { prompt_tokens, max_output_tokens, max_usd }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn citations_found_and_checked() {
        let c = citations("Paris is the capital [1]. It is large [2][3], old [2, 4] and [source 5].", 4);
        assert_eq!(c, Citations { cited: vec![1, 2, 3, 4], unknown: vec![5] });
        let c = citations("See [1-3] and [Sources 1; 2].", 5);
        assert_eq!(c.cited, [1, 2, 3]);
        // Not citations: links, checkboxes, words, empty brackets, huge ranges, unclosed brackets.
        let c = citations("A [link](http://x/1) and [x] and [] and [a, 1] and [1-1000] and [7", 9);
        assert_eq!(c, Citations::default());
        let c = citations("Zero [0] is never a source.", 3);
        assert_eq!(c.unknown, [0]);
    }

    #[test]
    fn unanswered_is_told_apart() {
        assert!(says_unanswered("The sources do not answer this question. They cover\ninstallation."));
        assert!(says_unanswered("**The sources do not answer this question.**"));
        assert!(!says_unanswered("The capital is Paris [1]."));
    }
}
