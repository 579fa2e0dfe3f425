//! Cost control through the CLI against the mock server: dry runs, token and cost budgets.

use std::collections::HashSet;
use std::path::Path;
use std::process::Command;

use crate::util::mock::MockServer;
use crate::util::{cli, corpus, json_lines, live_rows, manifest, run};

/// The twelve documents written to a new temp dir.
fn write_corpus() -> tempfile::TempDir {
    let owned = files();
    let refs: Vec<(&str, &str)> = owned.iter().map(|(n, t)| (n.as_str(), t.as_str())).collect();
    corpus(&refs)
}

fn files() -> Vec<(String, String)> {
    (0..12)
        .map(|i| {
            let text = (0..3)
                .map(|p| format!("Document {i} paragraph {p} covers topic{i}x{p} in a few plain words."))
                .collect::<Vec<_>>()
                .join("\n\n");
            (format!("doc{i:02}.txt"), text)
        })
        .collect()
}

fn embed(base: Option<&str>, input: &Path, dataset: &Path) -> Command {
    let mut cmd = cli(base);
    cmd.arg("embed").arg(input).arg("--out").arg(dataset);
    cmd.args(["--json", "--chunk-tokens", "30", "--chunk-overlap", "0", "--batch-inputs", "4"]);
    cmd
}

fn last_json(run: &crate::util::Run) -> serde_json::Value {
    json_lines(&run.stdout).pop().unwrap_or_else(|| panic!("no JSON on stdout:\n{}", run.all_output()))
}

#[test]
fn a_dry_run_counts_what_a_run_would_send_without_a_key_or_a_request() {
    let mock = MockServer::start();
    let input = write_corpus();
    let out = tempfile::tempdir().expect("tempdir");
    let dataset = out.path().join("ds");

    // No TARS_API_KEY, no server: nothing is needed to estimate.
    let dry = run(embed(None, input.path(), &dataset).arg("--dry-run"));
    assert_eq!(dry.code, 0, "{}", dry.all_output());
    assert!(!dataset.exists(), "a dry run writes nothing");
    let estimate = last_json(&dry);
    let report = &estimate["report"];
    assert_eq!(report["dry_run"], true);
    let tokens = report["tokens"].as_u64().expect("tokens");
    let small = estimate["cost_by_model_usd"]["tars/text-embedding-3-small"].as_f64().expect("3-small");
    let large = estimate["cost_by_model_usd"]["tars/text-embedding-3-large"].as_f64().expect("3-large");
    assert!((small - tokens as f64 * 0.02 / 1e6).abs() < 1e-12, "{estimate}");
    assert!((large - tokens as f64 * 0.13 / 1e6).abs() < 1e-12, "{estimate}");

    let real = run(&mut embed(Some(&mock.base()), input.path(), &dataset));
    assert_eq!(real.code, 0, "{}", real.all_output());
    let real = last_json(&real);
    for key in ["tokens", "requests"] {
        assert_eq!(real[key], report[key], "{key}: the estimate matches the run");
    }
    assert_eq!(real["chunks"]["embedded"], report["chunks"]["embedded"]);

    // On an existing dataset the estimate covers only what changed.
    std::fs::write(input.path().join("doc03.txt"), "A rewritten document about something else entirely.")
        .expect("edit");
    let before = manifest(&dataset);
    let requests = mock.requests();
    let dry = run(embed(Some(&mock.base()), input.path(), &dataset).arg("--dry-run"));
    assert_eq!(dry.code, 0, "{}", dry.all_output());
    let report = &last_json(&dry)["report"];
    assert_eq!((report["chunks"]["embedded"].as_u64(), report["documents"]["changed"].as_u64()), (Some(1), Some(1)));
    assert_eq!(mock.requests(), requests, "a dry run sends nothing");
    assert_eq!(manifest(&dataset), before, "a dry run publishes nothing");

    let text = run(cli(None).arg("embed").arg(input.path()).arg("--out").arg(&dataset).args([
        "--dry-run",
        "--model",
        "tars/text-embedding-3-large",
    ]));
    assert_eq!(text.code, 0, "{}", text.all_output());
    assert!(text.stdout.contains("estimated cost with tars/text-embedding-3-large"), "{}", text.stdout);
}

#[test]
fn a_token_budget_stops_before_it_is_exceeded_and_the_next_run_continues() {
    let mock = MockServer::start();
    let input = write_corpus();
    let out = tempfile::tempdir().expect("tempdir");
    let dataset = out.path().join("ds");
    let total = last_json(&run(embed(None, input.path(), &dataset).arg("--dry-run")))["report"]["tokens"]
        .as_u64()
        .expect("tokens");

    let budget = total / 2;
    let limited = run(embed(Some(&mock.base()), input.path(), &dataset).args(["--max-tokens", &budget.to_string()]));
    assert_eq!(limited.code, 1, "{}", limited.all_output());
    assert!(limited.stderr.contains("budget"), "{}", limited.stderr);
    let sent: u64 = mock.observed().batches.iter().map(|(_, tokens)| *tokens as u64).sum();
    assert!(sent <= budget && sent > 0, "sent {sent} tokens against a budget of {budget}");
    let r = last_json(&limited);
    assert_eq!(r["budget_reached"], true);
    assert_eq!(r["status"]["aborted"]["reason"], "token budget reached", "{r}");
    let kept = live_rows(&dataset).len();
    assert!(kept > 0, "completed documents are published");

    let first_texts: HashSet<String> = mock.texts().into_iter().collect();
    let rest = run(&mut embed(Some(&mock.base()), input.path(), &dataset));
    assert_eq!(rest.code, 0, "{}", rest.all_output());
    let again: Vec<String> =
        mock.texts().into_iter().skip(first_texts.len()).filter(|t| first_texts.contains(t)).collect();
    assert!(again.is_empty(), "texts paid for under the budget were sent again: {again:?}");
    assert_eq!(live_rows(&dataset).len(), 36);

    // A cost budget needs a price: the table's, or --price for a model it does not know.
    let unknown = run(embed(Some(&mock.base()), input.path(), &out.path().join("other")).args([
        "--model",
        "tars/new-model",
        "--max-cost",
        "0.01",
    ]));
    assert_eq!(unknown.code, 2, "{}", unknown.all_output());
    assert!(unknown.stderr.contains("--max-cost") && unknown.stderr.contains("--price"), "{}", unknown.stderr);
    let priced = run(embed(Some(&mock.base()), input.path(), &out.path().join("other")).args([
        "--model",
        "tars/new-model",
        "--max-cost",
        "0",
        "--price",
        "1.0",
    ]));
    assert_eq!(priced.code, 1, "a zero budget sends nothing: {}", priced.all_output());
    assert_eq!(last_json(&priced)["requests"], 0);
}
