//! `eval`: labelled queries answered in every mode the dataset supports, and the figures that compare them.

use std::io::Write;
use std::sync::Arc;

use super::target::Target;
use super::{EvalArgs, Failure, exit};
use crate::embed::RequestSettings;
use crate::query::eval::{self, Judged, Summary};
use crate::query::{Filter, Mode, QueryError, Searcher, TextQuery};
use crate::stats::Stats;

pub async fn eval(args: EvalArgs) -> Result<u8, Failure> {
    let judged = match &args.queries {
        Some(queries) => eval::read_beir(&args.qrels, queries),
        None => eval::read_jsonl(&args.qrels),
    }
    .map_err(Failure::usage)?;
    if judged.is_empty() {
        return Err(Failure::usage(anyhow::anyhow!("{}: no labelled query", args.qrels.display())));
    }
    let usage = |e: QueryError| if e.is_usage() { Failure::usage(e) } else { Failure::run(e) };
    let stats = Arc::new(Stats::default());
    let target = Target::for_read(&args.dataset).await.map_err(Failure::usage)?;
    let searcher = Searcher::open(&target.dir, RequestSettings::default(), &stats).await.map_err(usage)?;
    let columns = searcher.engine().columns().map_err(usage)?;
    let filter = Filter::parse_all(&args.filter, &columns).map_err(|e| Failure::usage(QueryError::Filter(e)))?;
    let has_keyword = crate::index::keyword::KeywordIndex::open(&searcher.engine().dataset().map_err(usage)?).is_ok();
    let modes: Vec<Mode> = match args.mode.as_deref().and_then(Mode::parse) {
        Some(mode) => vec![mode],
        None if has_keyword => vec![Mode::Vector, Mode::Keyword, Mode::Hybrid],
        None => {
            tracing::warn!(
                "the dataset has no keyword index, so only vector mode is measured; `tars-index index {}` builds one",
                args.dataset.display()
            );
            vec![Mode::Vector]
        }
    };
    for j in &judged {
        searcher
            .check(&j.query, true)
            .map_err(|e| Failure::usage(anyhow::anyhow!("{}:{}: {e}", args.qrels.display(), j.line)))?;
    }
    // Each query is embedded once, for every mode that uses its vector.
    let texts: Vec<&str> = judged.iter().map(|j| j.query.as_str()).collect();
    let vectors = if modes.iter().any(|m| m.needs_vector()) {
        searcher.embed(&texts).await.map_err(|e| match e {
            QueryError::Embed(e) => Failure::api(e),
            e => usage(e),
        })?
    } else {
        Vec::new()
    };
    let k = usize::from(args.k);
    // Documents ranked, not chunks: look deeper so that k distinct documents remain.
    let depth = (k.max(10) * 4).min(1000);
    let mut results: Vec<(Mode, Summary)> = Vec::new();
    for mode in modes {
        let inputs = judged
            .iter()
            .enumerate()
            .map(|(i, j)| {
                let query = TextQuery {
                    k: depth,
                    ef: usize::from(args.ef).max(depth),
                    filter: filter.clone(),
                    mode: Some(mode),
                    rrf_k: args.rrf_k,
                    candidates: usize::from(args.candidates),
                    ..TextQuery::new(&j.query)
                };
                (query, Ok(mode.needs_vector().then(|| vectors[i].clone())))
            })
            .collect();
        let answers = searcher.search_embedded(inputs).await.map_err(usage)?;
        let mut scores = Vec::with_capacity(judged.len());
        for (j, answer) in judged.iter().zip(answers) {
            let answer = answer.map_err(|e| {
                let code = if e.is_usage() { exit::USAGE } else { exit::FAILURES };
                Failure { code, error: anyhow::anyhow!("{}:{}: {e}", args.qrels.display(), j.line), advice: None }
            })?;
            let hits: Vec<(String, u32)> =
                answer.hits.iter().map(|h| (h.chunk.doc.clone(), h.chunk.chunk_index)).collect();
            scores.push(eval::score(j, &hits, k));
        }
        results.push((mode, Summary::of(&scores)));
    }
    print(&args, &judged, &results);
    Ok(exit::SUCCESS)
}

fn print(args: &EvalArgs, judged: &[Judged], results: &[(Mode, Summary)]) {
    let mut stdout = std::io::stdout().lock();
    let k = args.k;
    if args.json {
        let modes: serde_json::Map<String, serde_json::Value> = results
            .iter()
            .map(|(mode, s)| {
                let figures = serde_json::json!({
                    format!("recall@{k}"): s.recall, "mrr@10": s.mrr, "ndcg@10": s.ndcg, "queries": s.queries,
                });
                (mode.name().to_owned(), figures)
            })
            .collect();
        let value = serde_json::json!({ "k": k, "queries": judged.len(), "filter": args.filter, "modes": modes });
        let _ = writeln!(stdout, "{value}");
        return;
    }
    let _ = writeln!(
        stdout,
        "{:<8} {:>7} {:>10} {:>7} {:>8}",
        "mode",
        "queries",
        format!("recall@{k}"),
        "MRR@10",
        "nDCG@10"
    );
    for (mode, s) in results {
        let _ =
            writeln!(stdout, "{:<8} {:>7} {:>10.3} {:>7.3} {:>8.3}", mode.name(), s.queries, s.recall, s.mrr, s.ndcg);
    }
}
