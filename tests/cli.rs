//! End-to-end tests: the real binary, real HTTP to a mock OpenAI-compatible server on 127.0.0.1.

use std::path::Path;
use std::time::Duration;

use crate::util::mock::{DEFAULT_DIMS, Fault, MockServer, mock_embedding};
use crate::util::{cli, corpus, json_lines, manifest, read_rows, run};

const ASTRONOMY: &str = "Telescopes gather light from distant galaxies. A nebula is a cloud of gas and dust \
where stars are born. Astronomers measure the redshift of galaxies to learn how fast they recede.";
const COOKING: &str = "# Pasta\n\nBoil the pasta in salted water. Make a tomato sauce with garlic, olive oil and \
basil.\n\n## Serving\n\nServe the pasta hot with grated parmesan cheese.";
const GARDENING: &str = "Compost enriches the soil. Water the seeds every morning, and keep seedlings out of \
frost until spring.";

fn standard_corpus() -> tempfile::TempDir {
    corpus(&[
        ("guides/astronomy.txt", ASTRONOMY),
        ("guides/cooking.md", COOKING),
        ("notes/gardening.txt", GARDENING),
        (
            "records.jsonl",
            "{\"id\": \"bike-1\", \"text\": \"Oil the bicycle chain and adjust the gears and brakes.\"}\n\
             {\"id\": \"bike-2\", \"body\": \"no text field here\"}\n\
             {\"id\": \"sail-1\", \"text\": \"Trim the sails and steer the boat into the wind.\"}\n",
        ),
    ])
}

fn embed_args(mock: &MockServer, input: &Path, out: &Path) -> std::process::Command {
    let mut cmd = cli(Some(&mock.base()));
    cmd.arg("embed").arg(input).arg("--out").arg(out).args(["--id-field", "id", "--json"]);
    cmd
}

fn summary(run: &crate::util::Run) -> serde_json::Value {
    json_lines(&run.stdout).pop().unwrap_or_else(|| panic!("no JSON summary on stdout:\n{}", run.all_output()))
}

#[test]
fn embed_index_and_search_end_to_end() {
    let mock = MockServer::start();
    let input = standard_corpus();
    std::fs::write(input.path().join("logo.ico"), b"\0\0\x01\0\x01\0\x10\x10").expect("write");
    std::fs::write(input.path().join("photo.png"), b"\x89PNG\r\n\x1a\n\0\0\0\rIHDR").expect("write");
    std::fs::write(input.path().join("latin1.txt"), b"caf\xe9 cr\xe8me").expect("write");
    let out = tempfile::tempdir().expect("tempdir");
    let dataset = out.path().join("ds");

    let embedded = run(&mut embed_args(&mock, input.path(), &dataset));
    assert_eq!(embedded.code, 0, "{}", embedded.all_output());
    let s = summary(&embedded);
    assert_eq!(s["status"], "complete");
    assert_eq!(s["documents"]["read"], 6, "{s}");
    assert_eq!(s["documents"]["files_skipped"], 1, "the icon: {s}");
    assert_eq!(s["images"]["skipped"], 1, "the PNG, without --caption-model: {s}");
    assert_eq!(s["documents"]["records_skipped"], 1, "bike-2 has no text: {s}");
    assert_eq!(s["documents"]["lossy_utf8"], 1, "{s}");
    assert!(embedded.stderr.contains("logo.ico") && embedded.stderr.contains("binary"), "{}", embedded.stderr);
    assert!(embedded.stderr.contains("records.jsonl:2"), "skip names file and line: {}", embedded.stderr);
    assert!(embedded.stderr.contains("latin1.txt"), "{}", embedded.stderr);
    assert!(mock.observed().violations.is_empty(), "{:?}", mock.observed().violations);
    assert!(mock.observed().models.iter().all(|m| m == "text-embedding-3-small"));
    assert!(mock.observed().encodings.iter().all(|e| e == "base64"));

    // Every row's vector is what the server returned for that row's text, and the offsets point at the text.
    let rows = read_rows(&dataset);
    assert_eq!(rows.len() as u64, s["chunks"]["chunked"].as_u64().expect("chunks"));
    assert_eq!(rows.len() as u64, manifest(&dataset)["rows"].as_u64().expect("rows"));
    for row in &rows {
        assert_eq!(row.embedding, mock_embedding(&row.text, DEFAULT_DIMS), "row {row:?}");
        assert_eq!(row.hash, blake3::hash(row.text.as_bytes()).to_hex().as_str());
        assert_eq!(row.tokens as usize, tiktoken_rs::cl100k_base_singleton().encode_ordinary(&row.text).len());
        if let Some(name) =
            ["guides/astronomy.txt", "guides/cooking.md", "notes/gardening.txt"].iter().find(|n| **n == row.doc)
        {
            let source = std::fs::read_to_string(input.path().join(name)).expect("read");
            assert_eq!(&source[row.start as usize..row.end as usize], row.text);
        }
    }
    let docs: std::collections::BTreeSet<&str> = rows.iter().map(|r| r.doc.as_str()).collect();
    assert_eq!(
        docs.into_iter().collect::<Vec<_>>(),
        ["bike-1", "guides/astronomy.txt", "guides/cooking.md", "latin1.txt", "notes/gardening.txt", "sail-1"]
    );
    let m = manifest(&dataset);
    assert_eq!(m["model"], "tars/text-embedding-3-small");
    assert_eq!(m["dimensions"], DEFAULT_DIMS);
    assert_eq!(m["metric"], "cosine");

    let indexed = run(cli(None).arg("index").arg(&dataset));
    assert_eq!(indexed.code, 0, "{}", indexed.all_output());
    assert!(indexed.stdout.contains(&format!("index built: {} vectors", rows.len())), "{}", indexed.stdout);

    let found = run(cli(Some(&mock.base())).arg("search").arg(&dataset).args([
        "telescope galaxies nebula",
        "-k",
        "3",
        "--json",
    ]));
    assert_eq!(found.code, 0, "{}", found.all_output());
    let hits = json_lines(&found.stdout);
    assert_eq!(hits.len(), 3);
    assert_eq!(hits[0]["rank"], 1);
    assert_eq!(hits[0]["doc"], "guides/astronomy.txt", "{hits:?}");
    assert!(hits[0]["text"].as_str().expect("text").contains("nebula"));
    assert!(hits[0]["score"].as_f64() >= hits[1]["score"].as_f64());
    assert!(hits[0].get("chunk_index").is_some());

    let found = run(cli(Some(&mock.base())).arg("search").arg(&dataset).arg("bicycle chain gears brakes"));
    assert_eq!(found.code, 0, "{}", found.all_output());
    let first = found.stdout.lines().next().expect("a result line");
    assert!(first.trim_start().starts_with("1.") && first.contains("bike-1"), "{}", found.stdout);
}

#[test]
fn concurrency_limit_is_observed_by_the_server() {
    let text: String = (0..60).map(|i| format!("Paragraph {i} talks about topic {i} at length.\n\n")).collect();
    let input = corpus(&[("big.txt", &text)]);
    for (limit, expect_parallel) in [(4usize, true), (1, false)] {
        let mock = MockServer::start();
        mock.set_delay(Duration::from_millis(60));
        let out = tempfile::tempdir().expect("tempdir");
        let result = run(embed_args(&mock, input.path(), &out.path().join("ds")).args([
            "--chunk-tokens",
            "12",
            "--chunk-overlap",
            "0",
            "--batch-inputs",
            "2",
            "--concurrency",
            &limit.to_string(),
        ]));
        assert_eq!(result.code, 0, "{}", result.all_output());
        let peak = mock.peak_in_flight();
        assert!(peak <= limit, "peak {peak} in flight with --concurrency {limit}");
        if expect_parallel {
            assert!(peak > 1, "requests never overlapped (peak {peak}) with --concurrency {limit}");
        }
        assert!(mock.requests() >= 20, "expected many small requests, got {}", mock.requests());
    }
}

#[test]
fn batches_respect_input_and_token_limits() {
    let text: String = (0..80).map(|i| format!("Sentence number {i} is here. ")).collect();
    let input = corpus(&[("a.txt", &text), ("b.txt", &text.to_uppercase())]);
    let mock = MockServer::start();
    let out = tempfile::tempdir().expect("tempdir");
    let result = run(embed_args(&mock, input.path(), &out.path().join("ds")).args([
        "--chunk-tokens",
        "30",
        "--batch-inputs",
        "5",
        "--batch-tokens",
        "70",
    ]));
    assert_eq!(result.code, 0, "{}", result.all_output());
    let observed = mock.observed();
    assert!(observed.batches.len() > 3);
    for (inputs, tokens) in &observed.batches {
        assert!(*inputs <= 5, "{inputs} inputs in one request");
        assert!(*tokens <= 70, "{tokens} tokens in one request");
    }
    let total: usize = observed.batches.iter().map(|b| b.0).sum();
    assert_eq!(total, read_rows(&out.path().join("ds")).len());
}

#[test]
fn transient_faults_are_retried_and_every_chunk_lands_once() {
    let input = standard_corpus();
    let mock = MockServer::start();
    mock.script([
        Fault::RateLimited { retry_after_ms: Some(20) },
        Fault::RateLimitedMessage,
        Fault::Status(500),
        Fault::PlainText503,
        Fault::Status(502),
        Fault::Malformed,
        Fault::WrongCount,
        Fault::NaN,
    ]);
    let out = tempfile::tempdir().expect("tempdir");
    let dataset = out.path().join("ds");
    let result = run(embed_args(&mock, input.path(), &dataset).args(["--batch-inputs", "1", "--concurrency", "2"]));
    assert_eq!(result.code, 0, "{}", result.all_output());
    let s = summary(&result);
    assert_eq!(s["retries"], 8, "{s}");
    assert_eq!(s["chunks"]["failed"], 0, "{s}");
    let rows = read_rows(&dataset);
    assert_eq!(rows.len() as u64, s["chunks"]["chunked"].as_u64().expect("chunks"));
    let ids: std::collections::HashSet<&str> = rows.iter().map(|r| r.id.as_str()).collect();
    assert_eq!(ids.len(), rows.len(), "a chunk was written twice");
    for row in &rows {
        assert_eq!(row.embedding, mock_embedding(&row.text, DEFAULT_DIMS));
    }
}

#[test]
fn a_slow_request_times_out_and_is_retried() {
    let input = corpus(&[("a.txt", "one short document")]);
    let mock = MockServer::start();
    mock.script([Fault::Hang(Duration::from_secs(5))]);
    let out = tempfile::tempdir().expect("tempdir");
    let result = run(embed_args(&mock, input.path(), &out.path().join("ds")).args(["--timeout", "1"]));
    assert_eq!(result.code, 0, "{}", result.all_output());
    assert_eq!(summary(&result)["retries"], 1);
    assert_eq!(read_rows(&out.path().join("ds")).len(), 1);
}

#[test]
fn exhausted_retries_fail_the_batch_not_the_run() {
    let input = corpus(&[("a.txt", "alpha document"), ("b.txt", "beta document")]);
    let mock = MockServer::start();
    // The first request fails for good (1 attempt + 1 retry); the second succeeds.
    mock.script([Fault::Status(503), Fault::Status(503)]);
    let out = tempfile::tempdir().expect("tempdir");
    let dataset = out.path().join("ds");
    let result = run(embed_args(&mock, input.path(), &dataset).args([
        "--batch-inputs",
        "1",
        "--concurrency",
        "1",
        "--max-retries",
        "1",
    ]));
    assert_eq!(result.code, 1, "{}", result.all_output());
    let s = summary(&result);
    assert_eq!(s["chunks"]["failed"], 1, "{s}");
    assert_eq!(s["status"]["partial"]["failed_chunks"], 1, "{s}");
    assert!(result.stderr.contains("gave up after 2 attempts"), "{}", result.stderr);
    let rows = read_rows(&dataset);
    assert_eq!(rows.len(), 1);
    assert_eq!(rows[0].doc, "b.txt");
}

#[test]
fn non_retryable_errors_stop_at_once_with_advice() {
    let input = standard_corpus();
    let out = tempfile::tempdir().expect("tempdir");

    // Wrong key: 401, exit 2, says to check TARS_API_KEY.
    let mock = MockServer::start();
    let mut cmd = embed_args(&mock, input.path(), &out.path().join("a"));
    cmd.env("TARS_API_KEY", "sk-wrong-key-123456");
    let result = run(&mut cmd);
    assert_eq!(result.code, 2, "{}", result.all_output());
    assert!(result.stderr.contains("TARS_API_KEY") && result.stderr.contains("401"), "{}", result.stderr);
    assert!(!result.all_output().contains("sk-wrong-key-123456"));
    assert!(mock.requests() <= 8, "401 must not be retried: {} requests", mock.requests());

    // Unknown model: 404, exit 2, with the close matches from GET /models.
    let mock = MockServer::start();
    let result = run(embed_args(&mock, input.path(), &out.path().join("b")).args(["--model", "tars/no-such-model"]));
    assert_eq!(result.code, 2, "{}", result.all_output());
    assert!(
        result.stderr.contains("text-embedding-3-small") && result.stderr.contains("tars-index models"),
        "{}",
        result.stderr
    );

    // Quota: exit 1, says what to do, keeps what was embedded before.
    let mock = MockServer::start();
    mock.script([Fault::Ok, Fault::Quota]);
    let result =
        run(embed_args(&mock, input.path(), &out.path().join("c")).args(["--concurrency", "1", "--batch-inputs", "1"]));
    assert_eq!(result.code, 1, "{}", result.all_output());
    assert!(result.stderr.contains("quota"), "{}", result.stderr);
    let m = manifest(&out.path().join("c"));
    assert!(m["status"]["aborted"]["reason"].as_str().expect("reason").contains("quota"), "{m}");

    // No key at all: exit 2 before any request.
    let mock = MockServer::start();
    let mut cmd = embed_args(&mock, input.path(), &out.path().join("d"));
    cmd.env_remove("TARS_API_KEY");
    let result = run(&mut cmd);
    assert_eq!(result.code, 2, "{}", result.all_output());
    assert!(result.stderr.contains("TARS_API_KEY is not set"), "{}", result.stderr);
    assert_eq!(mock.requests(), 0);
}

#[test]
fn usage_errors_exit_2_and_name_the_problem() {
    let mock = MockServer::start();
    let input = standard_corpus();
    let out = tempfile::tempdir().expect("tempdir");
    let dataset = out.path().join("ds");

    let result = run(&mut embed_args(&mock, Path::new("/no/such/input"), &dataset));
    assert_eq!(result.code, 2);
    assert!(result.stderr.contains("/no/such/input"), "{}", result.stderr);

    for (flags, needle) in [
        (vec!["--chunk-tokens", "9000"], "--chunk-tokens"),
        (vec!["--chunk-tokens", "100", "--chunk-overlap", "100"], "--chunk-overlap"),
        (vec!["--batch-inputs", "3000"], "--batch-inputs"),
        (vec!["--batch-tokens", "400000"], "--batch-tokens"),
        (vec!["--include", "a/["], "glob"),
        (vec!["--dimensions", "5000"], "--dimensions"),
        (vec!["--model", "tars/other", "--dimensions", "256"], "text-embedding-3"),
        (vec!["--concurrency", "0"], "concurrency"),
    ] {
        let result = run(embed_args(&mock, input.path(), &dataset).args(&flags));
        assert_eq!(result.code, 2, "{flags:?}: {}", result.all_output());
        assert!(result.stderr.contains(needle), "{flags:?}: {}", result.stderr);
    }
    assert_eq!(mock.requests(), 0);

    let first = run(&mut embed_args(&mock, input.path(), &dataset));
    assert_eq!(first.code, 0, "{}", first.all_output());
    let replaced = run(embed_args(&mock, input.path(), &dataset).arg("--overwrite"));
    assert_eq!(replaced.code, 0, "{}", replaced.all_output());
    assert_eq!(summary(&replaced)["chunks"]["reused"], 0, "--overwrite reuses nothing");

    let result = run(cli(None).arg("index").arg(out.path().join("nothing-here")));
    assert_eq!(result.code, 2);
    assert!(result.stderr.contains("not a tars-index dataset"), "{}", result.stderr);
    let result = run(cli(Some(&mock.base())).arg("search").arg(&dataset).arg("pasta"));
    assert_eq!(result.code, 0, "no index yet: every row is scored: {}", result.all_output());
    assert!(result.stderr.contains("no index yet") && result.stderr.contains("tars-index index"), "{}", result.stderr);
}

#[test]
fn dimensions_are_sent_recorded_and_used_for_queries() {
    let mock = MockServer::start();
    let input = standard_corpus();
    let out = tempfile::tempdir().expect("tempdir");
    let dataset = out.path().join("ds");
    let result = run(embed_args(&mock, input.path(), &dataset).args(["--dimensions", "32"]));
    assert_eq!(result.code, 0, "{}", result.all_output());
    assert!(read_rows(&dataset).iter().all(|r| r.embedding.len() == 32));
    assert_eq!(manifest(&dataset)["dimensions"], 32);
    assert_eq!(run(cli(None).arg("index").arg(&dataset)).code, 0);
    let found = run(cli(Some(&mock.base())).arg("search").arg(&dataset).args(["pasta tomato basil", "--json"]));
    assert_eq!(found.code, 0, "{}", found.all_output());
    assert_eq!(json_lines(&found.stdout)[0]["doc"], "guides/cooking.md");
    assert!(mock.observed().dimensions.iter().all(|d| *d == Some(32)));
}

#[test]
fn damaged_or_stale_index_is_refused_without_crashing() {
    let mock = MockServer::start();
    let input = standard_corpus();
    let out = tempfile::tempdir().expect("tempdir");
    let dataset = out.path().join("ds");
    assert_eq!(run(&mut embed_args(&mock, input.path(), &dataset)).code, 0);
    assert_eq!(run(cli(None).arg("index").arg(&dataset)).code, 0);
    let graph_file = || {
        std::fs::read_dir(dataset.join("index"))
            .expect("index dir")
            .filter_map(Result::ok)
            .map(|e| e.path())
            .find(|p| p.extension().is_some_and(|e| e == "hnsw"))
            .expect("graph file")
    };
    let graph = graph_file();
    let mut bytes = std::fs::read(&graph).expect("read");
    let mid = bytes.len() / 2;
    bytes[mid] ^= 0xff;
    std::fs::write(&graph, bytes).expect("write");
    let result = run(cli(Some(&mock.base())).arg("search").arg(&dataset).arg("pasta"));
    assert_eq!(result.code, 2, "{}", result.all_output());
    assert!(result.stderr.contains("damaged"), "{}", result.stderr);
    let verified = run(cli(None).arg("index").arg(&dataset).arg("--verify"));
    assert_eq!(verified.code, 1, "{}", verified.all_output());
    assert!(verified.stderr.contains("does not match its checksum"), "{}", verified.stderr);

    // A truncated file fails the size check that every search makes.
    assert_eq!(run(cli(None).arg("index").arg(&dataset).arg("--rebuild")).code, 0);
    let verified = run(cli(None).arg("index").arg(&dataset).arg("--verify"));
    assert_eq!(verified.code, 0, "{}", verified.all_output());
    assert!(
        verified.stdout.starts_with("index ok: ") && verified.stdout.contains(" in 1 file match"),
        "{}",
        verified.stdout
    );
    let file = std::fs::OpenOptions::new().write(true).open(graph_file()).expect("open");
    file.set_len(file.metadata().expect("stat").len() - 1).expect("truncate");
    let result = run(cli(Some(&mock.base())).arg("search").arg(&dataset).arg("pasta"));
    assert_eq!(result.code, 2, "{}", result.all_output());
    assert!(result.stderr.contains("damaged"), "{}", result.stderr);

    // An index from before the graph file format (hnsw_rs's dumps; index.json without "format") is refused with
    // what to run, and `index` replaces it rather than trying to extend it.
    assert_eq!(run(cli(None).arg("index").arg(&dataset).arg("--rebuild")).code, 0);
    let meta_path = dataset.join("index/index.json");
    let mut meta: serde_json::Value = serde_json::from_slice(&std::fs::read(&meta_path).expect("read")).expect("json");
    meta.as_object_mut().expect("object").remove("format");
    std::fs::write(&meta_path, serde_json::to_vec(&meta).expect("json")).expect("write");
    let result = run(cli(Some(&mock.base())).arg("search").arg(&dataset).arg("pasta"));
    assert_eq!(result.code, 2, "{}", result.all_output());
    assert!(result.stderr.contains("built by an earlier tars-index"), "{}", result.stderr);
    let rebuilt = run(cli(None).arg("index").arg(&dataset));
    assert_eq!(rebuilt.code, 0, "{}", rebuilt.all_output());
    assert_eq!(run(cli(Some(&mock.base())).arg("search").arg(&dataset).arg("pasta")).code, 0);

    // Rebuilding repairs it. A version the index does not cover (here from scratch, with --no-index) is still
    // searched, exactly, with a warning that says how to build the index again.
    assert_eq!(run(cli(None).arg("index").arg(&dataset)).code, 0);
    assert_eq!(run(cli(Some(&mock.base())).arg("search").arg(&dataset).arg("pasta")).code, 0);
    let extra = corpus(&[("new.txt", "something else entirely")]);
    let replaced =
        run(embed_args(&mock, extra.path(), &dataset).args(["--overwrite", "--allow-mass-delete", "--no-index"]));
    assert_eq!(replaced.code, 0, "{}", replaced.all_output());
    let result = run(cli(Some(&mock.base())).arg("search").arg(&dataset).arg("pasta").arg("--json"));
    assert_eq!(result.code, 0, "{}", result.all_output());
    let docs: Vec<String> =
        json_lines(&result.stdout).iter().map(|h| h["doc"].as_str().unwrap_or("").to_owned()).collect();
    assert_eq!(docs, ["new.txt"]);
    assert!(result.stderr.contains("tars-index index"), "{}", result.stderr);
}

#[test]
fn models_lists_what_the_endpoint_offers() {
    let mock = MockServer::start();
    let result = run(cli(Some(&mock.base())).arg("models"));
    assert_eq!(result.code, 0, "{}", result.all_output());
    assert_eq!(
        result.stdout.lines().collect::<Vec<_>>(),
        ["gpt-4o-mini", "text-embedding-3-large", "text-embedding-3-small"]
    );
    let result = run(cli(Some(&mock.base())).args(["models", "--json"]));
    let models = json_lines(&result.stdout);
    assert_eq!(models[1]["input_price"], "0.00000013");
    let mut cmd = cli(Some(&mock.base()));
    cmd.env("TARS_API_KEY", "sk-bad-000000");
    let result = run(cmd.arg("models"));
    assert_eq!(result.code, 2, "{}", result.all_output());
    assert!(result.stderr.contains("TARS_API_KEY"));
}

#[test]
fn progress_is_not_drawn_when_output_is_piped() {
    let mock = MockServer::start();
    let input = standard_corpus();
    let out = tempfile::tempdir().expect("tempdir");
    let result = run(cli(Some(&mock.base())).arg("embed").arg(input.path()).arg("--out").arg(out.path().join("ds")));
    assert_eq!(result.code, 0, "{}", result.all_output());
    assert!(
        !result.all_output().contains('\r') && !result.all_output().contains("\u{1b}["),
        "{:?}",
        result.all_output()
    );
    assert!(result.stdout.contains("chunks:") && result.stdout.contains("1 request ("), "{}", result.stdout);
}

/// The dataset must read as is in the tools people use: pyarrow, DuckDB and Polars. Needs a Python with those
/// three (`TARS_INDEX_PYTHON`, else `python3`); scripts/test.sh provides one. Fails rather than skips without it.
#[test]
fn dataset_reads_in_pyarrow_duckdb_and_polars() {
    let python = std::env::var("TARS_INDEX_PYTHON").unwrap_or_else(|_| "python3".to_owned());
    let probe = std::process::Command::new(&python).args(["-c", "import pyarrow, duckdb, polars"]).output();
    assert!(
        probe.as_ref().is_ok_and(|o| o.status.success()),
        "{python} cannot import pyarrow, duckdb and polars: run the tests with scripts/test.sh, or set \
         TARS_INDEX_PYTHON to a Python that has them ({probe:?})"
    );
    let mock = MockServer::start();
    let input = standard_corpus();
    // Records with metadata, which the documents table carries as typed columns.
    std::fs::write(
        input.path().join("papers.csv"),
        "id,text,year,venue,published\np1,Graphs for vector search,2019,VLDB,2019-05-01\np2,Quantised vectors,2021,,2021-07-10\n",
    )
    .expect("write");
    let metadata = ["--metadata", "year:int64", "--metadata", "venue", "--metadata", "published:timestamp"];
    let out = tempfile::tempdir().expect("tempdir");
    let dataset = out.path().join("ds");
    let embedded = run(embed_args(&mock, input.path(), &dataset).args(metadata));
    assert_eq!(embedded.code, 0, "{}", embedded.all_output());
    // A second version without one document: its rows stay in the files but are no longer live.
    std::fs::remove_file(input.path().join("guides/astronomy.txt")).expect("remove");
    let updated = run(embed_args(&mock, input.path(), &dataset).args(metadata));
    assert_eq!(updated.code, 0, "{}", updated.all_output());
    let rows = read_rows(&dataset);
    let live = crate::util::live_rows(&dataset);
    assert!(live.len() < rows.len());

    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/interop.py");
    let output = std::process::Command::new(&python).arg(script).arg(&dataset).output().expect("run python");
    assert!(output.status.success(), "{}", String::from_utf8_lossy(&output.stderr));
    let seen: serde_json::Value = serde_json::from_slice(&output.stdout).expect("JSON from interop.py");
    let n = rows.len() as u64;
    let first = rows.iter().find(|r| r.id == seen["pyarrow"]["first_id"].as_str().expect("id")).expect("first row");
    let first_value = f64::from(first.embedding[0]);

    assert_eq!(seen["pyarrow"]["rows"], n);
    assert_eq!(
        seen["pyarrow"]["columns"],
        serde_json::json!([
            "row_id",
            "id",
            "doc",
            "chunk_index",
            "start",
            "end",
            "tokens",
            "text",
            "hash",
            "embedding",
            "page"
        ])
    );
    // The metadata columns, typed, in the documents table; joined to the chunks as the README shows.
    let docs = &seen["docs"];
    assert_eq!(docs["pyarrow_types"]["year"], "int64", "{seen}");
    assert_eq!(docs["pyarrow_types"]["venue"], "string");
    assert_eq!(docs["pyarrow_types"]["published"], "timestamp[us, tz=UTC]");
    assert_eq!(docs["pyarrow_types"]["title"], "string");
    assert_eq!(docs["pyarrow_types"]["modified"], "timestamp[ns, tz=UTC]");
    assert_eq!(docs["duckdb_join"], serde_json::json!(["p1", 2019, "VLDB", "2019-05-01", "Graphs for vector search"]));
    assert_eq!(docs["polars_null_venue"], serde_json::json!(["p2"]));
    assert_eq!(seen["pyarrow"]["list_size"], DEFAULT_DIMS, "{seen}");
    assert_eq!(seen["pyarrow"]["model"], "tars/text-embedding-3-small");
    assert_eq!(seen["pyarrow"]["dimensions"], DEFAULT_DIMS.to_string());
    assert_eq!(seen["pyarrow"]["schema_model"], "tars/text-embedding-3-small");
    assert_eq!(seen["duckdb"]["rows"], n);
    assert_eq!(seen["duckdb"]["live_rows"], live.len(), "the README's live-rows query: {seen}");
    assert_eq!(
        (seen["duckdb"]["min_len"].clone(), seen["duckdb"]["max_len"].clone()),
        (DEFAULT_DIMS.into(), DEFAULT_DIMS.into())
    );
    assert_eq!(seen["polars"]["rows"], n);
    assert!(seen["polars"]["embedding_dtype"].as_str().expect("dtype").contains(&DEFAULT_DIMS.to_string()), "{seen}");
    for tool in ["pyarrow", "duckdb", "polars"] {
        let v = seen[tool]["first_value"].as_f64().expect("value");
        assert!((v - first_value).abs() < 1e-6, "{tool} read {v}, arrow-rs {first_value}");
    }
}

#[cfg(unix)]
#[test]
fn sigterm_stops_the_run_and_keeps_what_was_embedded() {
    let files: Vec<(String, String)> =
        (0..20).map(|i| (format!("doc{i:02}.txt"), format!("document number {i}"))).collect();
    let refs: Vec<(&str, &str)> = files.iter().map(|(n, t)| (n.as_str(), t.as_str())).collect();
    let input = corpus(&refs);
    let mock = MockServer::start();
    mock.set_delay(Duration::from_millis(300));
    let out = tempfile::tempdir().expect("tempdir");
    let dataset = out.path().join("ds");
    let child = embed_args(&mock, input.path(), &dataset)
        .args(["--batch-inputs", "1", "--concurrency", "1"])
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("spawn");
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    while mock.requests() < 3 && std::time::Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(20));
    }
    let killed = std::process::Command::new("kill").args(["-TERM", &child.id().to_string()]).status().expect("kill");
    assert!(killed.success());
    let result: crate::util::Run = child.wait_with_output().expect("wait").into();
    assert_eq!(result.code, 130, "{}", result.all_output());
    assert!(result.stderr.contains("interrupted"), "{}", result.stderr);
    let m = manifest(&dataset);
    assert_eq!(m["status"]["aborted"]["reason"], "interrupted", "{m}");
    let rows = read_rows(&dataset);
    assert!(rows.len() >= 2 && rows.len() < 20, "{} rows kept", rows.len());
    assert_eq!(rows.len() as u64, m["rows"].as_u64().expect("rows"));
    for row in &rows {
        assert_eq!(row.embedding, mock_embedding(&row.text, DEFAULT_DIMS));
    }
}

/// The embedded local model end to end: no key, no network. Needs the model (scripts/fetch-model.sh).
#[test]
fn local_model_embeds_indexes_and_finds_paraphrased_queries() {
    let input = standard_corpus();
    let out = tempfile::tempdir().expect("tempdir");
    let dataset = out.path().join("ds");
    let result = run(cli(None).arg("embed").arg(input.path()).args(["--out"]).arg(&dataset).args([
        "--model",
        "local/all-minilm-l6-v2",
        "--id-field",
        "id",
        "--json",
    ]));
    assert_eq!(result.code, 0, "{}", result.all_output());
    let s = summary(&result);
    assert_eq!(s["chunks"]["failed"], 0, "{s}");
    let m = manifest(&dataset);
    assert_eq!((m["model"].as_str(), m["dimensions"].as_u64()), (Some("local/all-minilm-l6-v2"), Some(384)));
    assert_eq!(m["chunking"]["max_tokens"], 254, "chunks sized to the model's window: {m}");
    for row in read_rows(&dataset) {
        let norm: f32 = row.embedding.iter().map(|x| x * x).sum::<f32>().sqrt();
        assert!((norm - 1.0).abs() < 1e-4, "{norm}");
    }
    assert_eq!(run(cli(None).arg("index").arg(&dataset)).code, 0);
    for (query, doc) in [
        ("observing stars and outer space", "guides/astronomy.txt"),
        ("how to prepare an Italian dinner", "guides/cooking.md"),
        ("growing vegetables in the backyard", "notes/gardening.txt"),
        ("fixing my bike", "bike-1"),
    ] {
        let found = run(cli(None).arg("search").arg(&dataset).args([query, "-k", "1", "--json"]));
        assert_eq!(found.code, 0, "{}", found.all_output());
        assert_eq!(json_lines(&found.stdout)[0]["doc"], doc, "query {query:?}");
    }

    let mut cmd = cli(None);
    cmd.env("TARS_INDEX_MODELS", out.path().join("no-models-here"));
    let missing = run(cmd
        .arg("embed")
        .arg(input.path())
        .arg("--out")
        .arg(out.path().join("x"))
        .args(["--model", "local/all-minilm-l6-v2"]));
    assert_eq!(missing.code, 2, "{}", missing.all_output());
    assert!(missing.stderr.contains("scripts/fetch-model.sh"), "{}", missing.stderr);
    let too_big = run(cli(None).arg("embed").arg(input.path()).arg("--out").arg(out.path().join("y")).args([
        "--model",
        "local/all-minilm-l6-v2",
        "--chunk-tokens",
        "300",
    ]));
    assert_eq!(too_big.code, 2, "{}", too_big.all_output());
    assert!(too_big.stderr.contains("254"), "{}", too_big.stderr);
}
