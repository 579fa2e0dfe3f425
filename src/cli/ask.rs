//! `ask`: the answer printed as it streams in, then the sources it was given, each marked when cited; `--json`:
//! one object once the answer is complete; `--dry-run`: the prompt and its estimated cost, nothing sent.
//!
//! JSON: as [`crate::query::json::asked`] describes.

use std::io::{IsTerminal as _, Write};

use super::search::failure as query_failure;
use super::{AskArgs, Failure, exit};
use crate::query::ask::{self, AskError, AskSettings, Asked};
use crate::query::{Mode, QueryError, Searcher, TextQuery, json};
use crate::tars::chat::{ChatClient, ChatConfig, ChatError};
use crate::tars::{DEFAULT_API_BASE, Endpoint};

fn chat_failure(error: ChatError) -> Failure {
    // A request the endpoint refused (bad key, unknown model, a parameter) is the user's to fix; the rest failed.
    let code = match &error {
        ChatError::Invalid(_) => exit::USAGE,
        ChatError::Rejected { status, .. } if (400..500).contains(status) && *status != 429 => exit::USAGE,
        _ => exit::FAILURES,
    };
    let advice = error.advice().map(str::to_owned);
    Failure { code, error: anyhow::Error::new(error), advice }
}

pub async fn ask(args: AskArgs) -> Result<u8, Failure> {
    if args.question.trim().is_empty() {
        return Err(Failure::usage(QueryError::EmptyQuery));
    }
    let failure = query_failure(&args.dataset);
    // A dry run sends nothing, so it needs no key.
    let endpoint = match Endpoint::from_env() {
        Err(crate::tars::EndpointError::MissingKey) if args.dry_run => {
            let base = std::env::var("TARS_API_BASE").ok().filter(|b| !b.trim().is_empty());
            Endpoint::new(base.as_deref().unwrap_or(DEFAULT_API_BASE), "").map_err(Failure::usage)?
        }
        endpoint => endpoint.map_err(Failure::usage)?,
    };
    let chat = ChatClient::new(ChatConfig::new(endpoint, &args.model)).map_err(chat_failure)?;
    let settings = AskSettings { max_tokens: args.max_tokens, temperature: args.temperature };
    // Before the dataset and its model are loaded.
    settings.check(&chat, &args.question).map_err(chat_failure)?;

    let (searcher, _, filter) = super::search::open(&args.dataset, &args.filter).await?;
    let query = TextQuery {
        k: usize::from(args.k),
        documents: true,
        filter,
        mode: args.mode.as_deref().and_then(Mode::parse),
        ..TextQuery::new(&args.question)
    };
    if args.dry_run {
        if args.agent {
            return Err(Failure::usage(anyhow::anyhow!(
                "--dry-run shows the one prompt of a plain ask; with --agent the prompts depend on the model's searches"
            )));
        }
        return dry_run(&args, &searcher, &chat, &query, settings).await;
    }

    let mut stdout = std::io::stdout();
    let mut printed = false;
    let streamed = !args.json;
    let mut sink = |event: ask::AskEvent<'_>| {
        if let ask::AskEvent::Text(text) = event
            && streamed
        {
            printed = true;
            // A closed pipe ends the printing, not the answer: the result is still checked and reported.
            let _ = stdout.write_all(text.as_bytes()).and_then(|()| stdout.flush());
        }
    };
    let result = if args.agent {
        ask::ask_agent(&searcher, &chat, &query, settings, usize::from(args.max_steps), &mut sink).await
    } else {
        ask::ask(&searcher, &chat, &query, settings, &mut sink).await
    };
    let mut stdout = std::io::stdout().lock();
    if printed {
        let _ = writeln!(stdout);
    }
    let asked = match result {
        Ok(asked) => asked,
        Err(AskError::Query(e)) => return Err(failure(e)),
        Err(AskError::Chat(e)) => return Err(chat_failure(e)),
    };
    if let Some(model) = asked.completion.as_ref().and_then(|c| c.model.as_deref()) {
        tracing::debug!("answered by {model}");
    }
    warn_about(&asked);
    if args.json {
        let _ = writeln!(stdout, "{}", json::asked(&args.question, &args.model, &asked));
        return Ok(exit::SUCCESS);
    }
    if asked.completion.is_none() {
        return Ok(exit::SUCCESS);
    }
    let _ = writeln!(stdout, "\nSources:");
    let marked = std::io::stdout().is_terminal();
    for (n, hit) in asked.sources.iter().enumerate() {
        let number = n + 1;
        let cited = asked.citations.cited.contains(&number);
        let mark = match (cited, marked) {
            (true, true) => "  \u{2713} cited",
            (true, false) => "  cited",
            (false, _) => "",
        };
        let title =
            hit.document.as_ref().and_then(|d| d.title.as_deref()).map(|t| format!("  {t}")).unwrap_or_default();
        let line = format!("[{number}] {} #{}{title}{mark}", hit.chunk.doc, hit.chunk.chunk_index);
        if writeln!(stdout, "{line}").is_err() {
            break;
        }
    }
    Ok(exit::SUCCESS)
}

/// What the user should know about the answer, on stderr.
fn warn_about(asked: &Asked) {
    if asked.completion.is_none() {
        tracing::warn!("no chunk matched the question; nothing was sent to the model");
        return;
    }
    let given = asked.sources.len();
    for n in &asked.citations.unknown {
        tracing::warn!("the answer cites [{n}], which is not one of the {given} sources it was given");
    }
    if asked.answered() && asked.citations.cited.is_empty() {
        tracing::warn!("the answer cites none of its sources: check it against them before relying on it");
    }
    if asked.completion.as_ref().is_some_and(|c| c.finish_reason.as_deref() == Some("length")) {
        tracing::warn!("the answer stopped at the output budget (--max-tokens): it may be incomplete");
    }
    if asked.completion.as_ref().is_some_and(|c| c.refused) {
        tracing::warn!("the model refused to answer");
    }
}

async fn dry_run(
    args: &AskArgs,
    searcher: &Searcher,
    chat: &ChatClient,
    query: &TextQuery,
    settings: AskSettings,
) -> Result<u8, Failure> {
    let search = searcher.search(query).await.map_err(query_failure(&args.dataset))?;
    let request = settings.request(ask::prompt(&query.text, &search.hits));
    let max_output = settings.max_tokens.unwrap_or_else(|| chat.family().default_max_tokens());
    let estimate = ask::estimate(&args.model, &request.messages, max_output);
    let mut stdout = std::io::stdout().lock();
    if args.json {
        let out = serde_json::json!({
            "request": chat.body(&request),
            "sources": search.hits.len(),
            "estimate": {
                "prompt_tokens": estimate.prompt_tokens,
                "max_output_tokens": estimate.max_output_tokens,
                "max_usd": estimate.max_usd,
            },
        });
        let _ = writeln!(stdout, "{out}");
        return Ok(exit::SUCCESS);
    }
    for message in &request.messages {
        let role = serde_json::to_value(message.role).ok().and_then(|r| r.as_str().map(str::to_owned));
        let _ = writeln!(stdout, "--- {} ---\n{}\n", role.unwrap_or_default(), message.text_content());
    }
    let cost = estimate
        .max_usd
        .map(|usd| format!(", at most ${usd:.4} at {}'s list price", args.model))
        .unwrap_or_else(|| format!(" ({} has no known price)", args.model));
    let _ = writeln!(
        stdout,
        "dry run: nothing sent; about {} prompt tokens and up to {} output tokens{cost}",
        estimate.prompt_tokens, estimate.max_output_tokens
    );
    Ok(exit::SUCCESS)
}
