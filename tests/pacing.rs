//! Pacing through the CLI against the mock server: 429 storms and a tokens-per-minute limit.

use std::time::{Duration, Instant};

use crate::util::mock::{DEFAULT_DIMS, Fault, MockServer, mock_embedding};
use crate::util::{Run, cli, corpus, json_lines, live_rows, run};

fn documents() -> tempfile::TempDir {
    let files: Vec<(String, String)> = (0..16)
        .map(|i| (format!("d{i:02}.txt"), format!("Document {i} is about subject{i} and nothing more.")))
        .collect();
    let refs: Vec<(&str, &str)> = files.iter().map(|(n, t)| (n.as_str(), t.as_str())).collect();
    corpus(&refs)
}

/// `embed` of `documents()` into `dataset` with `--json` and `flags`; the run and its report (checked to exit 0).
fn embed_ok(mock: &MockServer, dataset: &std::path::Path, flags: &[&str]) -> (Run, serde_json::Value) {
    let input = documents();
    let result =
        run(cli(Some(&mock.base())).arg("embed").arg(input.path()).arg("--out").arg(dataset).arg("--json").args(flags));
    assert_eq!(result.code, 0, "{}", result.all_output());
    let report = json_lines(&result.stdout).pop().expect("report");
    assert_eq!(report["chunks"]["failed"], 0, "{report}");
    (result, report)
}

#[test]
fn a_429_storm_is_ridden_out_without_losing_or_duplicating_a_chunk() {
    let mock = MockServer::start();
    mock.script((0..10).map(|_| Fault::RateLimited { retry_after_ms: Some(30) }));
    let out = tempfile::tempdir().expect("tempdir");
    let dataset = out.path().join("ds");
    let (_, report) = embed_ok(&mock, &dataset, &["--batch-inputs", "1", "--concurrency", "8"]);
    assert_eq!(report["rate_limited"], 10, "{report}");
    assert_eq!(mock.requests(), 16 + 10, "every 429 cost one retry, no more");
    let rows = live_rows(&dataset);
    assert_eq!(rows.len(), 16);
    for row in rows {
        assert_eq!(row.embedding, mock_embedding(&row.text, DEFAULT_DIMS));
    }
}

#[test]
fn a_tokens_per_minute_limit_is_kept_before_sending() {
    let mock = MockServer::start();
    let input = documents();
    let out = tempfile::tempdir().expect("tempdir");
    let dataset = out.path().join("ds");
    // 16 chunks of 11 tokens, one per request; 900 tokens per minute = 15 per second after a burst of 150.
    let started = Instant::now();
    let result = run(cli(Some(&mock.base())).arg("embed").arg(input.path()).arg("--out").arg(&dataset).args([
        "--json",
        "--batch-inputs",
        "1",
        "--tpm",
        "900",
    ]));
    let elapsed = started.elapsed();
    assert_eq!(result.code, 0, "{}", result.all_output());
    let tokens: u64 = mock.observed().batches.iter().map(|(_, t)| *t as u64).sum();
    assert!(tokens > 150, "the corpus must outrun the burst: {tokens} tokens");
    let floor = Duration::from_secs_f64((tokens - 150) as f64 / 15.0 * 0.9);
    assert!(elapsed >= floor, "{tokens} tokens at 900/min took {elapsed:?}, less than {floor:?}");
    assert_eq!(live_rows(&dataset).len(), 16);
}

#[test]
fn max_failures_stops_a_clearly_broken_run() {
    let mock = MockServer::start();
    // 408, not a 5xx: the circuit breaker would stop a run of 5xx failures first.
    mock.set_always(Some(Fault::Status(408)));
    let input = documents();
    let out = tempfile::tempdir().expect("tempdir");
    let result = run(cli(Some(&mock.base()))
        .arg("embed")
        .arg(input.path())
        .arg("--out")
        .arg(out.path().join("ds"))
        .args(["--batch-inputs", "1", "--concurrency", "1", "--max-retries", "0", "--max-failures", "3"]));
    assert_eq!(result.code, 1, "{}", result.all_output());
    assert!(result.stderr.contains("--max-failures 3"), "{}", result.stderr);
    assert_eq!(mock.requests(), 4, "the fourth failure stops the run, not the sixteenth");
}

#[test]
fn rate_limits_are_back_pressure_not_failures_and_their_figures_are_learned() {
    let mock = MockServer::start();
    // Twelve 429s in a row, without headers, more than --max-retries allows for other errors; the message states the
    // limit, which the client then keeps to.
    mock.script((0..12).map(|_| Fault::RateLimitedMessage));
    let out = tempfile::tempdir().expect("tempdir");
    let dataset = out.path().join("ds");
    let (_, report) = embed_ok(&mock, &dataset, &["--batch-inputs", "4", "--concurrency", "1", "--max-retries", "2"]);
    assert_eq!(report["rate_limited"], 12, "{report}");
    assert_eq!(live_rows(&dataset).len(), 16);
}
