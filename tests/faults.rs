//! Fault injection through the mock server: every kind of failure a gateway produces, and for each, that the run
//! completes (or stops cleanly), the dataset holds exactly the chunks that succeeded with their correct vectors, and
//! every chunk given up on is in the dead-letter file, from which the next run or `retry-failed` completes it.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::time::Duration;

use crate::util::mock::{DEFAULT_DIMS, Fault, MockServer, Poison, mock_embedding};
use crate::util::{Run, cli, corpus, json_lines, live_content, live_rows, manifest, run};

/// 12 documents; `poisoned` holds one sentence with the marker among others, so that it chunks into several chunks
/// of which one carries the marker.
fn documents() -> tempfile::TempDir {
    let mut files: Vec<(String, String)> = (0..11)
        .map(|i| (format!("d{i:02}.txt"), format!("Document {i} is about subject{i} and nothing more.")))
        .collect();
    files.push((
        "poisoned.txt".into(),
        "The first part is harmless text about rivers. The second part holds POISON right here. The third part \
         is harmless text about mountains."
            .into(),
    ));
    let refs: Vec<(&str, &str)> = files.iter().map(|(n, t)| (n.as_str(), t.as_str())).collect();
    corpus(&refs)
}

/// `embed` with small chunks, 4 per request unless `extra` says otherwise.
fn embed(mock: &MockServer, input: &Path, dataset: &Path, extra: &[&str]) -> Run {
    let batch: &[&str] = if extra.contains(&"--batch-inputs") { &[] } else { &["--batch-inputs", "4"] };
    run(cli(Some(&mock.base()))
        .arg("embed")
        .arg(input)
        .arg("--out")
        .arg(dataset)
        .args(["--json", "--chunk-tokens", "12", "--chunk-overlap", "0"])
        .args(batch)
        .args(extra))
}

fn retry_failed(mock: &MockServer, dataset: &Path, extra: &[&str]) -> Run {
    run(cli(Some(&mock.base())).arg("retry-failed").arg(dataset).arg("--json").args(extra))
}

fn report(result: &Run) -> serde_json::Value {
    json_lines(&result.stdout).pop().unwrap_or_else(|| panic!("no JSON report:\n{}", result.all_output()))
}

/// The dead-letter entries of the published version.
fn dead_letter(dataset: &Path) -> Vec<serde_json::Value> {
    let Some(file) = manifest(dataset)["failed_file"].as_str().map(str::to_owned) else { return Vec::new() };
    let text = std::fs::read_to_string(dataset.join(file)).expect("dead-letter file");
    text.lines().map(|l| serde_json::from_str(l).expect("dead-letter line is JSON")).collect()
}

/// Every live row has the vector the mock gives its text.
fn assert_vectors_correct(dataset: &Path) {
    for row in live_rows(dataset) {
        assert_eq!(row.embedding, mock_embedding(&row.text, DEFAULT_DIMS), "row {} of {}", row.chunk_index, row.doc);
    }
}

/// The corpus, a scratch directory, and in it a clean build of the corpus (`clean`) to compare with.
fn with_clean_build() -> (tempfile::TempDir, tempfile::TempDir, PathBuf) {
    let input = documents();
    let out = tempfile::tempdir().expect("tempdir");
    let clean = out.path().join("clean");
    let result = embed(&MockServer::start(), input.path(), &clean, &[]);
    assert_eq!(result.code, 0, "{}", result.all_output());
    (input, out, clean)
}

#[test]
fn transient_faults_of_every_kind_are_retried_until_every_chunk_is_right() {
    let (input, out, clean) = with_clean_build();

    let faults = vec![
        Fault::RateLimited { retry_after_ms: Some(20) },
        Fault::RateLimited { retry_after_ms: None },
        Fault::RateLimitedMessage,
        Fault::Status(500),
        Fault::Status(502),
        Fault::Status(503),
        Fault::PlainText503,
        Fault::Reset,
        Fault::Malformed,
        Fault::WrongCount,
        Fault::DuplicateIndex,
        Fault::NaN,
        Fault::ShortVector,
        Fault::Hang(Duration::from_secs(5)),
    ];
    for fault in faults {
        let mock = MockServer::start();
        mock.script([fault.clone()]);
        let dataset = out.path().join(format!("{fault:?}").replace(|c: char| !c.is_alphanumeric(), "_"));
        let result = embed(&mock, input.path(), &dataset, &["--timeout", "1", "--concurrency", "2"]);
        assert_eq!(result.code, 0, "{fault:?}: {}", result.all_output());
        let r = report(&result);
        assert_eq!(r["chunks"]["failed"], 0, "{fault:?}: {r}");
        assert_eq!(r["retries"], 1, "{fault:?}: one fault costs one retry: {r}");
        assert!(dead_letter(&dataset).is_empty(), "{fault:?}");
        assert_eq!(live_content(&dataset), live_content(&clean), "{fault:?}: the dataset equals a clean build");
        assert!(mock.observed().violations.is_empty(), "{:?}", mock.observed().violations);
    }
}

#[test]
fn one_poison_input_is_isolated_recorded_and_completed_later() {
    let (input, out, clean) = with_clean_build();
    let all_texts: BTreeSet<String> = live_rows(&clean).into_iter().map(|r| r.text).collect();
    let poison_text = all_texts.iter().find(|t| t.contains("POISON")).expect("a chunk holds the marker").clone();
    assert!(live_rows(&clean).iter().filter(|r| r.doc == "poisoned.txt").count() >= 3, "the document has 3+ chunks");

    let mock = MockServer::start();
    mock.set_poison(Some(Poison::TooLong("POISON".into())));
    let dataset = out.path().join("ds");
    let result = embed(&mock, input.path(), &dataset, &["--concurrency", "1"]);
    assert_eq!(result.code, 1, "a run with a failed chunk is partial: {}", result.all_output());
    let r = report(&result);
    assert_eq!(r["chunks"]["failed"], 1, "{r}");
    assert_eq!(r["chunks"]["missing"], 1, "{r}");
    assert!(r["requests_split"].as_u64().is_some_and(|n| n >= 1), "{r}");
    assert!(r["failed_file"].as_str().is_some_and(|f| f.ends_with(".jsonl")), "{r}");

    // The dataset holds every other chunk, the poisoned document's other chunks included, with correct vectors.
    let live: BTreeSet<String> = live_rows(&dataset).into_iter().map(|r| r.text).collect();
    let mut expected = all_texts.clone();
    expected.remove(&poison_text);
    assert_eq!(live, expected);
    assert_vectors_correct(&dataset);

    // The dead-letter file names the chunk, its document, the server's message and the attempts.
    let entries = dead_letter(&dataset);
    assert_eq!(entries.len(), 1, "{entries:?}");
    let entry = &entries[0];
    assert_eq!(entry["doc"], "poisoned.txt");
    assert_eq!(entry["text"], poison_text.as_str());
    assert!(entry["error"].as_str().is_some_and(|e| e.contains("maximum context length")), "{entry}");
    assert!(
        entry["attempts"].as_u64().is_some_and(|a| a >= 2),
        "the poison travelled in its batch, then alone: {entry}"
    );
    assert!(entry["chunk_id"].as_str().is_some_and(|id| !id.is_empty()), "{entry}");
    assert_eq!(manifest(&dataset)["failed_chunks"], 1);

    // retry-failed while the input is still refused: one request, still recorded, nothing else touched.
    let before = mock.requests();
    let result = retry_failed(&mock, &dataset, &[]);
    assert_eq!(result.code, 1, "{}", result.all_output());
    assert_eq!(mock.requests() - before, 1, "only the failed chunk is sent");
    assert_eq!(dead_letter(&dataset).len(), 1);
    assert_eq!(live_rows(&dataset).len(), expected.len());

    // Once the server accepts it, retry-failed sends that chunk alone and the dataset equals a clean build.
    mock.set_poison(None);
    let texts_before = mock.texts().len();
    let result = retry_failed(&mock, &dataset, &[]);
    assert_eq!(result.code, 0, "{}", result.all_output());
    assert_eq!(mock.texts()[texts_before..], *std::slice::from_ref(&poison_text), "the one failed text, nothing else");
    assert_eq!(report(&result)["documents"]["retried"], 1);
    assert!(dead_letter(&dataset).is_empty());
    assert_eq!(manifest(&dataset)["failed_chunks"], 0);
    assert_eq!(live_content(&dataset), live_content(&clean));

    // And a normal run afterwards has nothing to do.
    let before = mock.requests();
    let result = embed(&mock, input.path(), &dataset, &[]);
    assert_eq!(result.code, 0, "{}", result.all_output());
    assert_eq!(mock.requests(), before);
}

#[test]
fn the_next_normal_run_retries_failed_chunks_without_reading_them_twice() {
    let (input, out, clean) = with_clean_build();

    // NaN for the marked input, on every attempt: the response check rejects the batch, retries run out, the
    // batch is split until the culprit is alone.
    let mock = MockServer::start();
    mock.set_poison(Some(Poison::NaN("POISON".into())));
    let dataset = out.path().join("ds");
    let result = embed(&mock, input.path(), &dataset, &["--max-retries", "1"]);
    assert_eq!(result.code, 1, "{}", result.all_output());
    let entries = dead_letter(&dataset);
    assert_eq!(entries.len(), 1, "{entries:?}");
    assert!(entries[0]["error"].as_str().is_some_and(|e| e.contains("non-finite")), "{}", entries[0]);
    assert_vectors_correct(&dataset);

    // The next scheduled run, corpus unchanged: sends the one missing text and nothing else.
    mock.set_poison(None);
    let texts_before = mock.texts().len();
    let result = embed(&mock, input.path(), &dataset, &[]);
    assert_eq!(result.code, 0, "{}", result.all_output());
    let sent = &mock.texts()[texts_before..];
    assert_eq!(sent.len(), 1, "{sent:?}");
    assert!(sent[0].contains("POISON"));
    assert!(dead_letter(&dataset).is_empty());
    assert_eq!(live_content(&dataset), live_content(&clean));
}

#[test]
fn quota_and_auth_errors_stop_at_once_keeping_the_work_done() {
    let input = documents();
    let out = tempfile::tempdir().expect("tempdir");
    for (fault, code, says) in [(Fault::Quota, 1, "quota"), (Fault::Unauthorized, 2, "TARS_API_KEY")] {
        let mock = MockServer::start();
        // Three requests succeed, the fourth is refused.
        mock.script([Fault::Ok, Fault::Ok, Fault::Ok, fault.clone()]);
        let dataset = out.path().join(format!("{code}"));
        let result = embed(&mock, input.path(), &dataset, &["--concurrency", "1", "--batch-inputs", "1"]);
        assert_eq!(result.code, code, "{fault:?}: {}", result.all_output());
        assert!(result.stderr.contains(says), "{fault:?}: {}", result.stderr);
        assert_eq!(mock.requests(), 4, "{fault:?}: no request after the stop");
        let r = report(&result);
        assert_eq!(r["chunks"]["failed"], 0, "a stop records nothing as failed: {r}");
        assert!(dead_letter(&dataset).is_empty());
        let kept = live_rows(&dataset);
        assert!(!kept.is_empty(), "{fault:?}: the documents completed before the stop are published");
        assert_vectors_correct(&dataset);

        // The next run sends only what was not done.
        mock.set_always(None);
        let texts_before = mock.texts().len();
        let result = embed(&mock, input.path(), &dataset, &["--concurrency", "1", "--batch-inputs", "1"]);
        assert_eq!(result.code, 0, "{}", result.all_output());
        let sent: BTreeSet<String> = mock.texts()[texts_before..].iter().cloned().collect();
        assert!(kept.iter().all(|r| !sent.contains(&r.text)), "{fault:?}: kept chunks were not sent again");
    }
}

#[test]
fn retry_failed_with_nothing_to_retry_sends_nothing() {
    let input = documents();
    let out = tempfile::tempdir().expect("tempdir");
    let dataset = out.path().join("ds");
    let mock = MockServer::start();
    assert_eq!(embed(&mock, input.path(), &dataset, &[]).code, 0);
    let before = (mock.requests(), manifest(&dataset)["generation"].clone());
    let result = retry_failed(&mock, &dataset, &[]);
    assert_eq!(result.code, 0, "{}", result.all_output());
    assert_eq!((mock.requests(), manifest(&dataset)["generation"].clone()), before, "no request, no new version");

    let result = retry_failed(&mock, &out.path().join("nope"), &[]);
    assert_eq!(result.code, 2, "{}", result.all_output());
    assert!(result.stderr.contains("not a tars-index dataset"), "{}", result.stderr);
}

#[test]
fn a_failing_endpoint_hands_over_to_its_fallback() {
    let (input, out, clean) = with_clean_build();
    let primary = MockServer::start();
    primary.set_always(Some(Fault::Status(503)));
    let fallback = MockServer::start();
    let dataset = out.path().join("ds");
    let flags = ["--max-retries", "0", "--concurrency", "1", "--fallback-base", &fallback.base()];
    let result = embed(&primary, input.path(), &dataset, &flags);
    assert_eq!(result.code, 0, "{}", result.all_output());
    let r = report(&result);
    let batches = fallback.answered() as u64;
    assert!(batches >= 4, "{batches}");
    assert_eq!(r["fallback_requests"], batches, "{r}");
    assert_eq!(primary.requests(), 3, "after 3 failures in a row the primary rests");
    assert_eq!(fallback.observed().models[0], "text-embedding-3-small", "same model, prefix stripped");
    assert_eq!(live_content(&dataset), live_content(&clean));
}

#[test]
fn a_fallback_in_another_vector_space_is_refused_before_any_request() {
    let input = documents();
    let out = tempfile::tempdir().expect("tempdir");
    let primary = MockServer::start();
    let other = MockServer::start();
    let flags = ["--fallback-base", &other.base(), "--fallback-model", "tars/text-embedding-3-large"];
    let result = embed(&primary, input.path(), &out.path().join("a"), &flags);
    assert_eq!(result.code, 2, "{}", result.all_output());
    assert!(
        result.stderr.contains("--fallback-model") && result.stderr.contains("different space"),
        "{}",
        result.stderr
    );
    let result = embed(&primary, input.path(), &out.path().join("b"), &["--fallback-base", &primary.base()]);
    assert_eq!(result.code, 2, "{}", result.all_output());
    assert!(result.stderr.contains("primary endpoint itself"), "{}", result.stderr);
    assert_eq!(primary.requests() + other.requests(), 0);
}
