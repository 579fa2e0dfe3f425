//! The run report: what a run did, for people (text on stdout), schedulers (`--json` on stdout) and later audits
//! (`<dataset>/runs/`, the last [`KEPT_REPORTS`] runs).

use std::io::Write;
use std::path::Path;

use serde::Serialize;

use super::job::JobSpec;
use crate::caption::CAPTION_MAX_TOKENS;
use crate::embed::price::estimate_usd;
use crate::error::count;
use crate::index::IndexMeta;
use crate::pipeline::RunOutcome;
use crate::stats::Entry;
use crate::store::{RunStatus, write_json_atomic};
use crate::tars::price::chat_usd;

const RUNS_DIR: &str = "runs";
/// The models the dry-run cost table lists.
const PRICED_MODELS: [&str; 3] =
    ["tars/text-embedding-3-small", "tars/text-embedding-3-large", "tars/text-embedding-ada-002"];
const KEPT_REPORTS: usize = 100;

#[derive(Debug, Serialize)]
pub struct RunReport {
    pub dataset: String,
    pub model: String,
    pub status: RunStatus,
    /// Whether the run published a new version (a run from scratch that did not finish keeps the old one).
    pub published: bool,
    pub generation: Option<u64>,
    pub live_rows: Option<u64>,
    pub stored_rows: Option<u64>,
    pub documents: Documents,
    pub chunks: Chunks,
    pub requests: u64,
    /// Requests split in two to isolate an input the server refused.
    pub requests_split: u64,
    /// Requests sent to the fallback endpoint (`--fallback-base`).
    pub fallback_requests: u64,
    pub retries: u64,
    /// 429 rate-limit responses (each paused new requests and narrowed the concurrency window).
    pub rate_limited: u64,
    /// Tokens of the chunks sent, counted on our side.
    pub tokens: u64,
    /// Tokens the server reported in `usage`.
    pub usage_tokens: u64,
    /// From `usage` when the server reports it, else from our count; `null` for a model without a known price.
    pub estimated_cost_usd: Option<f64>,
    pub index: Option<IndexReport>,
    /// The dead-letter file of the published version, when chunks are missing from it.
    pub failed_file: Option<String>,
    /// Entries of the input that were not read, and why (the first 1000; `documents.files_skipped` counts all).
    pub not_read: Vec<Entry>,
    /// Files and directories that could not be read (the first 1000; `documents.read_errors` counts all). Their
    /// documents kept their previous version.
    pub read_errors: Vec<Entry>,
    /// Records skipped (`file:line`, `file row N`), and why (the first 1000; `documents.records_skipped` counts all).
    pub records_skipped: Vec<Entry>,
    /// Metadata values stored as null, by record (the first 1000; `documents.metadata_nulls` counts all).
    pub metadata_nulls: Vec<Entry>,
    /// The vision model that captions images (`--caption-model`), and what the run did with them.
    pub caption_model: Option<String>,
    pub images: ImagesReport,
    /// Images that could not be captioned, and why (the first 1000; `images.failed` counts all). Each is also a
    /// dead-letter line in the dataset's `captions/` log; the next run tries them again.
    pub caption_failures: Vec<Entry>,
    /// Why the run refused to publish, when it would have deleted too many documents.
    pub mass_delete: Option<String>,
    /// Nothing was sent or written: the counts are what a run would do.
    pub dry_run: bool,
    pub budget_reached: bool,
    pub started_unix: u64,
    pub duration_secs: f64,
}

#[derive(Debug, Serialize)]
pub struct Documents {
    pub read: u64,
    pub new: u64,
    pub changed: u64,
    pub unchanged: u64,
    /// Documents whose text is unchanged and whose metadata changed: updated without embedding.
    pub metadata_updated: u64,
    pub deleted: u64,
    pub duplicate_names: u64,
    /// Documents whose missing chunks were sent again.
    pub retried: u64,
    /// New or changed documents left at their previous version because some chunks failed.
    pub incomplete: u64,
    /// Entries not read (listed in `not_read`).
    pub files_skipped: u64,
    pub records_skipped: u64,
    /// Metadata values of the wrong type or missing, stored as null (listed in `metadata_nulls`).
    pub metadata_nulls: u64,
    pub lossy_utf8: u64,
    /// Files and directories that could not be read (listed in `read_errors`).
    pub read_errors: u64,
    /// Documents that kept their previous version because their file could not be read.
    pub kept_unreadable: u64,
    /// Entries left out by --include / --exclude.
    pub excluded: u64,
    /// Hidden entries inside directory inputs (a hidden directory counts once).
    pub hidden: u64,
}

#[derive(Debug, Serialize)]
pub struct Chunks {
    pub chunked: u64,
    pub embedded: u64,
    pub reused: u64,
    pub removed: u64,
    /// Chunks this run gave up on (each in the dead-letter file).
    pub failed: u64,
    /// Chunks the published version lacks (failed in this run or an earlier one), all in the dead-letter file.
    pub missing: Option<u64>,
}

#[derive(Debug, Serialize)]
pub struct ImagesReport {
    #[serde(flatten)]
    pub counts: crate::stats::Images,
    /// At the caption model's list price, from the tokens it reported (or, in a dry run, the estimated prompt
    /// tokens); `null` for a model without a known price.
    pub estimated_cost_usd: Option<f64>,
}

#[derive(Debug, Serialize)]
pub struct IndexReport {
    pub mode: String,
    pub points: u64,
    pub inserted: u64,
    pub dead_points: u64,
    pub secs: f64,
}

impl RunReport {
    pub fn new(
        spec: &JobSpec,
        outcome: &RunOutcome,
        index: Option<&IndexMeta>,
        started_unix: u64,
        price: Option<f64>,
    ) -> Self {
        let s = &outcome.summary;
        let billed = if s.usage_tokens > 0 { s.usage_tokens } else { s.tokens };
        Self {
            dataset: spec.out.display().to_string(),
            model: spec.model.value.clone(),
            status: outcome.status.clone(),
            published: outcome.published.is_some(),
            generation: outcome.published.as_ref().map(|m| m.generation),
            live_rows: outcome.published.as_ref().map(|m| m.live_rows),
            stored_rows: outcome.published.as_ref().map(|m| m.rows),
            documents: Documents {
                read: s.documents,
                new: s.docs_new,
                changed: s.docs_changed,
                unchanged: s.docs_unchanged,
                metadata_updated: s.docs_metadata_updated,
                deleted: s.docs_deleted,
                duplicate_names: s.docs_duplicate,
                retried: s.docs_retried,
                incomplete: outcome.incomplete_docs as u64,
                files_skipped: s.files_skipped,
                records_skipped: s.records_skipped,
                metadata_nulls: s.metadata_nulls,
                lossy_utf8: s.documents_lossy_utf8,
                read_errors: s.read_errors,
                kept_unreadable: s.docs_unreadable,
                excluded: s.entries_excluded,
                hidden: s.entries_hidden,
            },
            chunks: Chunks {
                chunked: s.chunks,
                embedded: s.chunks_embedded,
                reused: s.chunks_reused,
                removed: s.chunks_removed,
                failed: s.chunks_failed,
                missing: outcome.published.as_ref().map(|m| m.failed_chunks),
            },
            requests: s.requests,
            requests_split: s.batches_split,
            fallback_requests: s.fallback_requests,
            retries: s.retries,
            rate_limited: s.rate_limited,
            tokens: s.tokens,
            usage_tokens: s.usage_tokens,
            estimated_cost_usd: price.map(|p| p * billed as f64 / 1e6),
            index: index.map(|m| IndexReport {
                mode: m.mode.clone(),
                points: m.points,
                inserted: m.inserted,
                dead_points: m.dead_points,
                secs: m.build_secs,
            }),
            failed_file: outcome
                .published
                .as_ref()
                .and_then(|m| m.failed_file.as_ref())
                .map(|f| spec.out.join(f).display().to_string()),
            not_read: s.named.not_read.clone(),
            read_errors: s.named.read_errors.clone(),
            records_skipped: s.named.records_skipped.clone(),
            metadata_nulls: s.named.metadata_nulls.clone(),
            caption_model: spec.caption_model.as_ref().map(|m| m.value.clone()),
            images: ImagesReport {
                counts: s.images.clone(),
                estimated_cost_usd: spec.caption_model.as_ref().and_then(|m| {
                    let i = &s.images;
                    chat_usd(&m.value, i.prompt_tokens + i.estimated_image_tokens, i.completion_tokens)
                }),
            },
            caption_failures: s.named.caption_failures.clone(),
            mass_delete: outcome.mass_delete.as_ref().map(ToString::to_string),
            dry_run: spec.dry_run,
            budget_reached: outcome.budget_reached,
            started_unix,
            duration_secs: s.elapsed_secs,
        }
    }

    /// What a `--dry-run` found, with the cost at each priced model (they share the cl100k tokenizer, so the token
    /// count is the same for all of them).
    pub fn print_dry_run(&self, json: bool) {
        let mut out = std::io::stdout().lock();
        let table: Vec<(&str, f64)> =
            PRICED_MODELS.iter().filter_map(|m| estimate_usd(m, self.tokens).map(|usd| (*m, usd))).collect();
        if json {
            let value = serde_json::json!({
                "report": self,
                "cost_by_model_usd": table.iter().map(|(m, usd)| ((*m).to_owned(), *usd)).collect::<std::collections::BTreeMap<_, _>>(),
            });
            let _ = writeln!(out, "{value}");
            return;
        }
        let (d, c) = (&self.documents, &self.chunks);
        let _ = writeln!(
            out,
            "dry run (nothing sent, nothing written): {} new, {} changed, {} unchanged, {} deleted documents",
            d.new, d.changed, d.unchanged, d.deleted
        );
        let _ = writeln!(
            out,
            "would send {} in {}, {} ({} reused){}",
            count(c.embedded, "chunk"),
            count(self.requests, "request"),
            count(self.tokens, "token"),
            count(c.reused, "chunk"),
            if self.budget_reached { "; the token budget stops the run before the end" } else { "" }
        );
        let cost = self.estimated_cost_usd.map_or_else(|| "unknown price".to_owned(), |usd| format!("${usd:.4}"));
        let _ = writeln!(out, "estimated cost with {}: {cost}", self.model);
        if let Some(model) = &self.caption_model {
            let i = &self.images.counts;
            let cost =
                self.images.estimated_cost_usd.map_or_else(|| "unknown price".to_owned(), |usd| format!("${usd:.4}"));
            let most = chat_usd(model, 0, i.to_caption * u64::from(CAPTION_MAX_TOKENS))
                .map_or_else(String::new, |usd| format!(" (at most ${usd:.4})"));
            let _ = writeln!(
                out,
                "would caption {} with {model}: ≈ {} prompt tokens for the images ({cost}), plus ~60 for the prompt and up to \
                 {CAPTION_MAX_TOKENS} output tokens each{most}; {} cached{}",
                count(i.to_caption, "image"),
                i.estimated_image_tokens,
                i.cached,
                if i.failed > 0 { format!(", {} unreadable", i.failed) } else { String::new() }
            );
            let _ = writeln!(out, "(the embedding figures above leave out the captions still to be written)");
        } else if self.images.counts.skipped > 0 {
            let _ =
                writeln!(out, "{} would be skipped (no --caption-model)", count(self.images.counts.skipped, "image"));
        }
        if let Some(refusal) = &self.mass_delete {
            let _ = writeln!(out, "a real run would stop before publishing: {refusal}");
        }
        for (model, usd) in table {
            let _ = writeln!(out, "  {model:<32} ${usd:.4}");
        }
    }

    /// Adds the report to the dataset's run history. Best effort: a report that cannot be saved is a warning, not a
    /// failed run.
    pub fn save(&self, dataset: &Path) {
        let dir = dataset.join(RUNS_DIR);
        let result = std::fs::create_dir_all(&dir).map_err(anyhow::Error::from).and_then(|()| {
            let name = format!("{}-{}.json", self.started_unix, std::process::id());
            write_json_atomic(&dir.join(name), self)?;
            prune(&dir)
        });
        if let Err(e) = result {
            tracing::warn!("could not save the run report in {}: {e:#}", dir.display());
        }
    }

    pub fn print(&self, json: bool) {
        let mut out = std::io::stdout().lock();
        if json {
            let _ = writeln!(out, "{}", serde_json::to_string(self).unwrap_or_default());
            return;
        }
        let (d, c) = (&self.documents, &self.chunks);
        let cost = self.estimated_cost_usd.map_or_else(|| "cost unknown".to_owned(), |usd| format!("≈ ${usd:.4}"));
        let _ = writeln!(
            out,
            "documents: {} new, {} changed, {} unchanged{}, {} deleted ({} not read, {} records skipped, {} with \
             invalid UTF-8 replaced; {} excluded by --include/--exclude, {} hidden)",
            d.new,
            d.changed,
            d.unchanged,
            if d.metadata_updated > 0 {
                format!(", {} with new metadata only", d.metadata_updated)
            } else {
                String::new()
            },
            d.deleted,
            d.files_skipped,
            d.records_skipped,
            d.lossy_utf8,
            d.excluded,
            d.hidden
        );
        self.print_entries(&mut out);
        self.print_images(&mut out);
        let _ = writeln!(
            out,
            "chunks: {} embedded, {} reused, {} removed, {} failed; {} tokens ({} billed, {cost})",
            c.embedded, c.reused, c.removed, c.failed, self.tokens, self.usage_tokens
        );
        let version = match (self.generation, self.live_rows) {
            (Some(g), Some(rows)) => format!("version {g}, {}", count(rows, "chunk")),
            _ => "no new version published".to_owned(),
        };
        let _ = writeln!(
            out,
            "{} ({} split), {} ({} rate-limited); {}: {version} ({:.1}s)",
            count(self.requests, "request"),
            self.requests_split,
            if self.retries == 1 { "1 retry".to_owned() } else { format!("{} retries", self.retries) },
            self.rate_limited,
            self.dataset,
            self.duration_secs
        );
        if self.fallback_requests > 0 {
            let _ = writeln!(out, "{} went to the fallback endpoint", count(self.fallback_requests, "request"));
        }
        if let (Some(missing), Some(file)) = (c.missing.filter(|m| *m > 0), &self.failed_file) {
            let _ = writeln!(
                out,
                "{} missing from their documents, listed in {file}; the next run, or `tars-index retry-failed \
                 {}`, sends them again",
                if missing == 1 { "1 chunk is".to_owned() } else { format!("{missing} chunks are") },
                self.dataset
            );
        }
        if let Some(i) = &self.index {
            let _ = writeln!(
                out,
                "index {}: {} points inserted, {} in the graph ({} dead) in {:.2}s",
                i.mode, i.inserted, i.points, i.dead_points, i.secs
            );
        }
    }
}

impl RunReport {
    /// What became of the images, and the first failures by name.
    fn print_images(&self, out: &mut impl Write) {
        let i = &self.images.counts;
        if !i.any() {
            return;
        }
        let Some(model) = &self.caption_model else {
            let _ = writeln!(
                out,
                "images: {} skipped (no --caption-model; those captioned before keep their captions)",
                i.skipped
            );
            return;
        };
        let cost =
            self.images.estimated_cost_usd.map_or_else(|| "cost unknown".to_owned(), |usd| format!("≈ ${usd:.4}"));
        let _ = writeln!(
            out,
            "images: {} captioned by {model}, {} from the caption cache, {} failed; {} prompt + {} output tokens ({cost})",
            i.captioned, i.cached, i.failed, i.prompt_tokens, i.completion_tokens
        );
        if i.failed > 0 {
            let _ = writeln!(
                out,
                "{} not captioned (each in the dataset's captions/ log; the next run tries again{}):",
                count(i.failed, "image"),
                if i.kept > 0 {
                    format!("; {} kept the caption they had", count(i.kept, "image"))
                } else {
                    String::new()
                }
            );
            for entry in self.caption_failures.iter().take(10) {
                let _ = writeln!(out, "  {}: {}", entry.path, entry.reason);
            }
            if i.failed > 10 {
                let _ = writeln!(out, "  … and {} more (--json lists up to 1000)", i.failed - 10);
            }
        }
    }

    /// The entries not read and the read errors, a few of each by name.
    fn print_entries(&self, out: &mut impl Write) {
        const SHOWN: usize = 10;
        let d = &self.documents;
        for (count, entries, what) in [
            (d.files_skipped, &self.not_read, "not read"),
            (d.read_errors, &self.read_errors, "could not be read (their documents keep their previous version)"),
            (d.records_skipped, &self.records_skipped, "skipped"),
            (d.metadata_nulls, &self.metadata_nulls, "stored as null"),
        ] {
            if count == 0 {
                continue;
            }
            let noun = match what {
                "skipped" => {
                    if count == 1 {
                        "record"
                    } else {
                        "records"
                    }
                }
                "stored as null" => {
                    if count == 1 {
                        "metadata value"
                    } else {
                        "metadata values"
                    }
                }
                _ => {
                    if count == 1 {
                        "entry"
                    } else {
                        "entries"
                    }
                }
            };
            let _ = writeln!(out, "{count} {noun} {what}:");
            for entry in entries.iter().take(SHOWN) {
                let _ = writeln!(out, "  {}: {}", entry.path, entry.reason);
            }
            if count > SHOWN as u64 {
                let _ = writeln!(out, "  … and {} more (--json lists up to 1000)", count - SHOWN as u64);
            }
        }
    }
}

pub fn index_line(meta: &IndexMeta) -> String {
    let keyword = meta.keyword.as_ref().map_or_else(String::new, |k| {
        format!("; keyword index {}: {} rows (+{} -{})", k.mode, k.rows, k.added_now, k.deleted_now)
    });
    format!(
        "index {}: {} vectors of {} dimensions inserted, {} in the graph ({} dead; M={}, ef_construction={}) in {:.2}s",
        meta.mode,
        meta.inserted,
        meta.dimensions,
        meta.points,
        meta.dead_points,
        meta.params.m,
        meta.params.ef_construction,
        meta.build_secs
    ) + &keyword
}

/// `search --explain`: how the hits were found, as `# ` lines (so `grep -v '^#'` leaves the hits).
pub fn explain_lines(answer: &crate::query::Answer) -> Vec<String> {
    use crate::query::{FilterStrategy, Method, Mode};
    let mut lines = Vec::new();
    match &answer.method {
        None => {}
        Some(Method::Index) => {
            lines.push(format!("# version {}: vector: the index of this version", answer.generation))
        }
        Some(Method::IndexAndScan { index_generation, rows_scanned }) => lines.push(format!(
            "# version {}: vector: the index of version {index_generation}, and the {rows_scanned} rows added since \
             scored exactly",
            answer.generation
        )),
        Some(Method::Scan { reason, rows_scanned }) => lines.push(format!(
            "# version {}: vector: no usable index ({}), {rows_scanned} rows scored exactly",
            answer.generation,
            serde_json::to_value(reason).ok().and_then(|v| v.as_str().map(str::to_owned)).unwrap_or_default()
        )),
    }
    if let Some(kw) = answer.keyword_generation {
        lines.push(format!("# version {}: keyword: the BM25 index of version {kw}", answer.generation));
    }
    if answer.mode == Mode::Hybrid {
        lines.push("# hybrid: reciprocal rank fusion, score = sum of 1/(rrf_k + rank) over both lists".to_owned());
    }
    if let Some(plan) = &answer.filter {
        let share = 100.0 * plan.matched as f64 / plan.live_rows.max(1) as f64;
        let how = match plan.strategy {
            FilterStrategy::Exact => "few enough to score them all exactly",
            FilterStrategy::Graph => "searched the graph with the filter applied inside it",
            FilterStrategy::GraphThenExact => "the graph found fewer than k of them, so all were scored exactly",
            FilterStrategy::Keyword => "applied inside the keyword search",
        };
        lines.push(format!(
            "# filter: matched {} of {} live rows ({share:.2}%); {how}; {} rows scored exactly",
            plan.matched, plan.live_rows, plan.rows_scored
        ));
    }
    lines
}

/// Keeps the newest [`KEPT_REPORTS`] reports (names start with the start time, so they sort by age).
fn prune(dir: &Path) -> anyhow::Result<()> {
    let mut names: Vec<_> = std::fs::read_dir(dir)?
        .filter_map(Result::ok)
        .map(|e| e.path())
        .filter(|p| p.extension().is_some_and(|e| e == "json"))
        .collect();
    if names.len() > KEPT_REPORTS {
        names.sort_by_key(|p| {
            let stem = p.file_stem().map(|s| s.to_string_lossy().into_owned()).unwrap_or_default();
            stem.split('-').next().and_then(|t| t.parse::<u64>().ok()).unwrap_or(0)
        });
        for old in &names[..names.len() - KEPT_REPORTS] {
            std::fs::remove_file(old)?;
        }
    }
    Ok(())
}
