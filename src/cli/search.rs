//! `search`: one query, or a file of them; the query engine answers, this module prints.
//!
//! JSON output, one object per hit, as [`crate::query::json::hit`] describes; with `--queries`, also `query_id`.

use std::io::{BufRead, Write};
use std::path::Path;
use std::sync::Arc;

use super::target::Target;
use super::{Failure, SearchArgs, damage_advice, exit, report};
use crate::embed::RequestSettings;
use crate::query::{Answer, Columns, Filter, Method, Mode, QueryError, ScanReason, Searcher, TextQuery, json};
use crate::stats::Stats;

/// Queries of a `--queries` file embedded and searched together (their hits share the data files' pages, which
/// are then read once for all of them).
const QUERY_BATCH: usize = 256;

pub(super) fn failure(dataset: &Path) -> impl Fn(QueryError) -> Failure + '_ {
    move |e| match e {
        e if e.is_usage() => Failure::usage(e),
        QueryError::Embed(e) => Failure::api(e),
        e => {
            let advice = match &e {
                QueryError::Store(e) => damage_advice(e, dataset),
                _ => None,
            };
            Failure { advice, ..Failure::run(e) }
        }
    }
}

/// The dataset (local or remote) with its model, its columns, and `filters` parsed against them.
pub(super) async fn open(dataset: &Path, filters: &[String]) -> Result<(Searcher, Columns, Option<Filter>), Failure> {
    let failure = failure(dataset);
    let stats = Arc::new(Stats::default());
    let target = Target::for_read(dataset).await.map_err(Failure::usage)?;
    let searcher = Searcher::open(&target.dir, RequestSettings::default(), &stats).await.map_err(&failure)?;
    let columns = searcher.engine().columns().map_err(&failure)?;
    let filter = Filter::parse_all(filters, &columns).map_err(|e| Failure::usage(QueryError::Filter(e)))?;
    Ok((searcher, columns, filter))
}

pub async fn search(args: SearchArgs) -> Result<u8, Failure> {
    let failure = failure(&args.dataset);
    if args.query.as_deref().is_some_and(|q| q.trim().is_empty()) {
        return Err(Failure::usage(QueryError::EmptyQuery));
    }
    let (searcher, columns, filter) = open(&args.dataset, &args.filter).await?;
    let base = TextQuery {
        k: usize::from(args.k),
        ef: usize::from(args.ef),
        // Metadata is printed in JSON only; without it the documents table need not be read.
        documents: args.json || args.queries.is_some(),
        filter,
        mode: args.mode.as_deref().and_then(Mode::parse),
        rrf_k: args.rrf_k,
        candidates: usize::from(args.candidates),
        ..TextQuery::new("")
    };
    if let Some(file) = &args.queries {
        return search_file(&searcher, &args, file, &columns, &base).await;
    }
    let query = TextQuery { text: args.query.clone().unwrap_or_default(), ..base };
    let answer = searcher.search(&query).await.map_err(&failure)?;
    notes(&args, &query, &answer);

    let mut stdout = std::io::stdout().lock();
    if args.explain {
        let lines = if args.json {
            vec![serde_json::json!({ "explain": json::explain(&answer) }).to_string()]
        } else {
            report::explain_lines(&answer)
        };
        for line in lines {
            let _ = writeln!(stdout, "{line}");
        }
    }
    for (rank, hit) in answer.hits.iter().enumerate() {
        let (rank, row) = (rank + 1, &hit.chunk);
        let line = if args.json {
            json::hit(rank, hit).to_string()
        } else if args.explain {
            let at = |r: Option<u32>| r.map_or_else(|| "-".to_owned(), |r| r.to_string());
            format!(
                "{rank:>3}. {:.4}  {} #{}  [vector {} keyword {}{}]  {}",
                hit.score,
                row.doc,
                row.chunk_index,
                at(hit.ranks.vector),
                at(hit.ranks.keyword),
                if hit.ranks.exact { " exact" } else { "" },
                snippet(&row.text, 160)
            )
        } else {
            format!("{rank:>3}. {:.4}  {} #{}  {}", hit.score, row.doc, row.chunk_index, snippet(&row.text, 160))
        };
        if writeln!(stdout, "{line}").is_err() {
            break; // a closed pipe (`| head`) is not an error
        }
    }
    Ok(exit::SUCCESS)
}

/// What the user should know about how a search was answered (on stderr, through the log).
fn notes(args: &SearchArgs, query: &TextQuery, answer: &Answer) {
    if query.mode.is_none() && answer.mode == Mode::Vector {
        tracing::info!(
            "vector mode: the dataset has no usable keyword index; `tars-index index {}` builds one (then searches \
             are hybrid)",
            args.dataset.display()
        );
    }
    if let Some(kw) = answer.keyword_generation.filter(|g| *g != answer.generation) {
        tracing::info!(
            "the keyword index is of version {kw}, the dataset at version {}: the rows added since were searched in \
             memory (`tars-index index` brings it up to date)",
            answer.generation
        );
    }
    match &answer.method {
        None | Some(Method::Index) => {}
        Some(Method::IndexAndScan { index_generation, rows_scanned }) => tracing::info!(
            "the index is of version {index_generation}, the dataset at version {}: {rows_scanned} rows added since \
             were scored exactly (`tars-index index` brings it up to date)",
            answer.generation
        ),
        Some(Method::Scan { reason, rows_scanned }) => tracing::warn!(
            "{}: all {rows_scanned} rows were scored exactly; `tars-index index {}` builds one for faster searches",
            match reason {
                ScanReason::NoIndex => "the dataset has no index yet",
                ScanReason::OtherLineage => "the index is from before the dataset was rebuilt",
                ScanReason::IndexAhead => "the index is of a newer version than the dataset",
            },
            args.dataset.display()
        ),
    }
}

/// One line of a `--queries` file, read.
struct FileQuery {
    line: usize,
    id: serde_json::Value,
    query: TextQuery,
}

/// `--queries FILE`: every query answered in one process, `QUERY_BATCH` at a time,
/// as JSON lines with the query's id. A line that cannot be read or answered is reported with its line number and
/// the rest go on; the exit code is then 1.
async fn search_file(
    searcher: &Searcher,
    args: &SearchArgs,
    file: &Path,
    columns: &Columns,
    base: &TextQuery,
) -> Result<u8, Failure> {
    let name = file.display().to_string();
    let reader: Box<dyn BufRead> = if file == Path::new("-") {
        Box::new(std::io::BufReader::new(std::io::stdin()))
    } else {
        let opened = std::fs::File::open(file).map_err(|e| Failure::usage(anyhow::anyhow!("{name}: {e}")))?;
        Box::new(std::io::BufReader::new(opened))
    };
    let mut failed = 0u64;
    let mut batch: Vec<FileQuery> = Vec::with_capacity(QUERY_BATCH);
    for (i, line) in reader.lines().enumerate() {
        let line_no = i + 1;
        let line = line.map_err(|e| Failure::run(anyhow::anyhow!("{name}:{line_no}: {e}")))?;
        if line.trim().is_empty() {
            continue;
        }
        match parse_line(&line, line_no, columns, base) {
            Ok(query) => batch.push(query),
            Err(message) => {
                eprintln!("error: {name}:{line_no}: {message}");
                failed += 1;
            }
        }
        if batch.len() == QUERY_BATCH {
            failed += answer_batch(searcher, args, &name, std::mem::take(&mut batch)).await?;
        }
    }
    if !batch.is_empty() {
        failed += answer_batch(searcher, args, &name, batch).await?;
    }
    Ok(if failed == 0 { exit::SUCCESS } else { exit::FAILURES })
}

fn parse_line(line: &str, line_no: usize, columns: &Columns, base: &TextQuery) -> Result<FileQuery, String> {
    let trimmed = line.trim();
    if !trimmed.starts_with('{') {
        let query = TextQuery { text: trimmed.to_owned(), ..base.clone() };
        return Ok(FileQuery { line: line_no, id: line_no.into(), query });
    }
    let object: serde_json::Map<String, serde_json::Value> =
        serde_json::from_str(trimmed).map_err(|e| format!("not a JSON object: {e}"))?;
    let text = object
        .get("query")
        .or_else(|| object.get("text"))
        .and_then(|v| v.as_str())
        .ok_or("no \"query\" (or \"text\") string")?;
    let id = object.get("id").or_else(|| object.get("_id")).cloned().unwrap_or_else(|| line_no.into());
    let mut query = TextQuery { text: text.to_owned(), ..base.clone() };
    if let Some(k) = object.get("k") {
        query.k = k.as_u64().filter(|k| (1..=1000).contains(k)).ok_or("\"k\" must be a whole number from 1 to 1000")?
            as usize;
    }
    if let Some(mode) = object.get("mode") {
        query.mode = Some(mode.as_str().and_then(Mode::parse).ok_or("\"mode\" must be vector, keyword or hybrid")?);
    }
    if let Some(filter) = object.get("filter") {
        let filter = filter.as_str().ok_or("\"filter\" must be a string")?;
        let parsed = Filter::parse(filter, columns).map_err(|e| e.to_string())?;
        query.filter = Some(match query.filter.take() {
            Some(common) => Filter::And(Box::new(common), Box::new(parsed)),
            None => parsed,
        });
    }
    Ok(FileQuery { line: line_no, id, query })
}

/// Answers one batch and prints its hits; returns how many of its queries failed.
async fn answer_batch(
    searcher: &Searcher,
    args: &SearchArgs,
    name: &str,
    batch: Vec<FileQuery>,
) -> Result<u64, Failure> {
    let queries: Vec<TextQuery> = batch.iter().map(|q| q.query.clone()).collect();
    let answers = searcher.search_batch(&queries).await.map_err(failure(&args.dataset))?;
    let mut failed = 0;
    let mut stdout = std::io::stdout().lock();
    for (query, answer) in batch.iter().zip(answers) {
        match answer {
            Ok(answer) => {
                for (rank, hit) in answer.hits.iter().enumerate() {
                    let mut line = json::hit(rank + 1, hit);
                    if let Some(object) = line.as_object_mut() {
                        object.insert("query_id".into(), query.id.clone());
                    }
                    if writeln!(stdout, "{line}").is_err() {
                        return Ok(failed);
                    }
                }
            }
            Err(e) => {
                eprintln!("error: {name}:{}: {e}", query.line);
                failed += 1;
            }
        }
    }
    Ok(failed)
}

/// The first `max` characters of `text` on one line.
fn snippet(text: &str, max: usize) -> String {
    let flat: String = text.split_whitespace().collect::<Vec<_>>().join(" ");
    match flat.char_indices().nth(max) {
        Some((cut, _)) => format!("{}…", &flat[..cut]),
        None => flat,
    }
}
