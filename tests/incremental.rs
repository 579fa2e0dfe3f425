//! Scheduled re-indexing: incremental runs, crash safety, the dataset lock and pipeline files, through the CLI
//! against the mock server.

use std::collections::HashSet;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use crate::util::mock::MockServer;
use crate::util::{age, cached_hashes, cli, corpus, json_lines, live_content, live_rows, manifest, run, text_hash};

/// A paragraph with words no other paragraph has, so every chunk text is distinct and searchable.
fn paragraph(doc: &str, n: usize) -> String {
    format!("Paragraph {n} of {doc} talks about {doc}word{n} and {doc}topic with several more words to fill it out.")
}

fn document(doc: &str, paragraphs: usize) -> String {
    (0..paragraphs).map(|n| paragraph(doc, n)).collect::<Vec<_>>().join("\n\n")
}

/// Eight text documents of three paragraphs and a JSONL file of three records.
fn standard_files() -> Vec<(String, String)> {
    let mut files: Vec<(String, String)> = ["alpha", "bravo", "charlie", "delta", "echo", "foxtrot", "golf", "hotel"]
        .iter()
        .map(|d| (format!("{d}.txt"), document(d, 3)))
        .collect();
    let records: Vec<String> = ["india", "juliet", "kilo"]
        .iter()
        .map(|d| serde_json::json!({"id": d, "text": document(d, 2)}).to_string())
        .collect();
    files.push(("records.jsonl".into(), records.join("\n") + "\n"));
    files
}

fn write_corpus(files: &[(String, String)]) -> tempfile::TempDir {
    let refs: Vec<(&str, &str)> = files.iter().map(|(n, t)| (n.as_str(), t.as_str())).collect();
    corpus(&refs)
}

const CHUNKING: [&str; 4] = ["--chunk-tokens", "30", "--chunk-overlap", "0"];

fn embed(mock: &MockServer, input: &Path, dataset: &Path) -> Command {
    let mut cmd = cli(Some(&mock.base()));
    cmd.arg("embed").arg(input).arg("--out").arg(dataset).args(["--id-field", "id", "--json"]).args(CHUNKING);
    cmd
}

fn report(run: &crate::util::Run) -> serde_json::Value {
    json_lines(&run.stdout).pop().unwrap_or_else(|| panic!("no JSON report on stdout:\n{}", run.all_output()))
}

fn search(mock: &MockServer, dataset: &Path, query: &str) -> Vec<String> {
    let found = run(cli(Some(&mock.base())).arg("search").arg(dataset).arg(query).args(["-k", "5", "--json"]));
    assert_eq!(found.code, 0, "{}", found.all_output());
    eprintln!("search {query:?}:\n{}", found.stdout);
    json_lines(&found.stdout).iter().map(|h| h["doc"].as_str().expect("doc").to_owned()).collect()
}

#[test]
fn a_rerun_on_unchanged_input_sends_nothing_and_reads_nothing() {
    let mock = MockServer::start();
    let input = write_corpus(&standard_files());
    age(input.path());
    let out = tempfile::tempdir().expect("tempdir");
    let dataset = out.path().join("ds");

    let first = run(&mut embed(&mock, input.path(), &dataset));
    assert_eq!(first.code, 0, "{}", first.all_output());
    let r = report(&first);
    assert_eq!((r["documents"]["new"].as_u64(), r["generation"].as_u64()), (Some(11), Some(1)), "{r}");
    let sent = mock.texts().len();
    assert_eq!(sent as u64, r["chunks"]["embedded"].as_u64().expect("embedded"));
    let before = live_content(&dataset);
    let manifest_before = manifest(&dataset);

    let again = run(&mut embed(&mock, input.path(), &dataset));
    assert_eq!(again.code, 0, "{}", again.all_output());
    let r = report(&again);
    assert_eq!(mock.texts().len(), sent, "an unchanged corpus sends nothing");
    assert_eq!(r["documents"]["read"], 0, "unchanged files are not even read: {r}");
    assert_eq!(r["documents"]["unchanged"], 11, "{r}");
    assert_eq!(r["chunks"]["embedded"], 0, "{r}");
    assert_eq!(manifest(&dataset), manifest_before, "a no-op run publishes no new version");
    assert_eq!(live_content(&dataset), before);

    // Rewritten with the same bytes: read again (new mtime), recognised by its hash, still nothing sent.
    std::fs::write(input.path().join("alpha.txt"), document("alpha", 3)).expect("rewrite");
    let touched = run(&mut embed(&mock, input.path(), &dataset));
    assert_eq!(touched.code, 0, "{}", touched.all_output());
    let r = report(&touched);
    assert_eq!((r["documents"]["read"].as_u64(), r["documents"]["unchanged"].as_u64()), (Some(1), Some(11)), "{r}");
    assert_eq!(mock.texts().len(), sent);
    assert_eq!(live_content(&dataset), before);
    assert!(dataset.join("runs").read_dir().expect("runs").count() >= 3, "every run leaves a report");
}

#[test]
fn edits_additions_and_deletions_send_only_new_text_and_match_a_build_from_scratch() {
    let mock = MockServer::start();
    let mut files = standard_files();
    // Enough unchanged documents that the changes stay under the index's rebuild threshold.
    files.extend((0..14).map(|i| (format!("filler/f{i:02}.txt"), document(&format!("filler{i}"), 3))));
    let input = write_corpus(&files);
    let out = tempfile::tempdir().expect("tempdir");
    let dataset = out.path().join("ds");
    assert_eq!(run(&mut embed(&mock, input.path(), &dataset)).code, 0);
    assert_eq!(run(cli(None).arg("index").arg(&dataset)).code, 0);
    let old_texts: HashSet<String> = live_rows(&dataset).into_iter().map(|r| r.text).collect();
    assert!(search(&mock, &dataset, &paragraph("charlie", 1)).first().is_some_and(|d| d == "charlie.txt"));

    // Edit the last paragraph of bravo, add juliet-like new doc, delete charlie, edit one record, drop another.
    files.retain(|(n, _)| n != "charlie.txt");
    for (name, text) in &mut files {
        if name == "bravo.txt" {
            *text =
                text.replace(&paragraph("bravo", 2), "The third paragraph of bravo now discusses zucchini gardens.");
        }
        if name == "records.jsonl" {
            let records = [
                serde_json::json!({"id": "india", "text": document("india", 2)}),
                serde_json::json!({"id": "juliet", "text": format!("{}\n\nJuliet gained a paragraph on xylophones.", document("juliet", 2))}),
            ];
            *text = records.iter().map(|r| r.to_string() + "\n").collect();
        }
    }
    files.push(("sub/lima.txt".into(), document("lima", 2)));
    std::fs::remove_dir_all(input.path()).expect("clear corpus");
    for (name, text) in &files {
        let path = input.path().join(name);
        std::fs::create_dir_all(path.parent().expect("parent")).expect("mkdir");
        std::fs::write(path, text).expect("write");
    }

    let sent_before = mock.texts().len();
    let update = run(&mut embed(&mock, input.path(), &dataset));
    assert_eq!(update.code, 0, "{}", update.all_output());
    let r = report(&update);
    let sent: Vec<String> = mock.texts()[sent_before..].to_vec();
    let new_texts: HashSet<String> = live_rows(&dataset).into_iter().map(|r| r.text).collect();
    let expected: HashSet<String> = new_texts.difference(&old_texts).cloned().collect();
    assert_eq!(sent.iter().cloned().collect::<HashSet<_>>(), expected, "only texts never embedded are sent");
    assert_eq!(sent.len(), expected.len(), "each new text is sent once");
    assert!(!expected.is_empty() && expected.len() <= 4, "a handful of chunks, not the corpus: {expected:?}");
    let d = &r["documents"];
    assert_eq!(
        (d["new"].as_u64(), d["changed"].as_u64(), d["deleted"].as_u64(), d["unchanged"].as_u64()),
        (Some(1), Some(2), Some(2), Some(21)),
        "{r}"
    );

    // The updated dataset holds exactly what a build from scratch of the new corpus holds.
    let fresh = out.path().join("fresh");
    let mock2 = MockServer::start();
    assert_eq!(run(&mut embed(&mock2, input.path(), &fresh)).code, 0);
    assert_eq!(live_content(&dataset), live_content(&fresh));

    // The run extended the index in place; deleted documents never come back from search.
    assert_eq!(r["index"]["mode"], "extended", "{r}");
    let written = r["chunks"]["embedded"].as_u64().expect("embedded") + r["chunks"]["reused"].as_u64().expect("reused");
    assert_eq!(r["index"]["inserted"].as_u64(), Some(written), "the rows this run wrote, no more: {r}");
    let meta_file = dataset.join("index/index.json");
    let written_at = std::fs::metadata(&meta_file).expect("index.json").modified().expect("mtime");
    let again = run(cli(None).arg("index").arg(&dataset).arg("--json"));
    let again: serde_json::Value = serde_json::from_str(again.stdout.trim()).expect("index json");
    assert_eq!(again["mode"], "current", "an index that matches the version is left alone: {again}");
    assert_eq!(std::fs::metadata(&meta_file).expect("index.json").modified().expect("mtime"), written_at);
    for query in [paragraph("charlie", 1), paragraph("kilo", 0), paragraph("bravo", 2)] {
        let docs = search(&mock, &dataset, &query);
        assert!(!docs.iter().any(|d| d == "charlie.txt" || d == "kilo"), "{query}: deleted documents found: {docs:?}");
        assert!(!docs.is_empty(), "{query}: the filter left no results");
    }
    assert_eq!(search(&mock, &dataset, &paragraph("lima", 1))[0], "sub/lima.txt");
    assert_eq!(search(&mock, &dataset, "The third paragraph of bravo now discusses zucchini gardens.")[0], "bravo.txt");
    let rebuilt = run(cli(None).arg("index").arg(&dataset).args(["--rebuild", "--json"]));
    let meta: serde_json::Value = serde_json::from_str(rebuilt.stdout.trim()).expect("index json");
    assert_eq!((meta["mode"].as_str(), meta["dead_points"].as_u64()), (Some("built"), Some(0)), "{meta}");
}

#[test]
fn a_new_model_or_size_re_embeds_everything_and_new_chunking_reuses_identical_texts() {
    let mock = MockServer::start();
    let input = write_corpus(&standard_files());
    let out = tempfile::tempdir().expect("tempdir");
    let dataset = out.path().join("ds");
    assert_eq!(run(embed(&mock, input.path(), &dataset).args(["--dimensions", "32"])).code, 0);
    let chunks = live_rows(&dataset).len();
    assert_eq!(manifest(&dataset)["dimensions"], 32);

    let sent = mock.texts().len();
    let resized = run(&mut embed(&mock, input.path(), &dataset));
    assert_eq!(resized.code, 0, "{}", resized.all_output());
    assert_eq!(mock.texts().len() - sent, chunks, "another vector space: every chunk is embedded again");
    assert_eq!(report(&resized)["chunks"]["reused"], 0);
    assert!(resized.stderr.contains("embedded again"), "{}", resized.stderr);
    assert_eq!(manifest(&dataset)["dimensions"], 64);
    assert!(live_rows(&dataset).iter().all(|r| r.embedding.len() == 64), "never a dataset that mixes sizes");

    // Longer chunks: documents are chunked again; the JSONL records' short paragraphs come out the same and keep
    // their vectors.
    let sent = mock.texts().len();
    let rechunked = run(cli(Some(&mock.base())).arg("embed").arg(input.path()).arg("--out").arg(&dataset).args([
        "--id-field",
        "id",
        "--json",
        "--chunk-tokens",
        "60",
        "--chunk-overlap",
        "0",
    ]));
    assert_eq!(rechunked.code, 0, "{}", rechunked.all_output());
    let r = report(&rechunked);
    assert_eq!(r["documents"]["changed"], 11, "{r}");
    let new_rows = live_rows(&dataset);
    assert_eq!(
        mock.texts().len() - sent + r["chunks"]["reused"].as_u64().expect("reused") as usize,
        new_rows.len(),
        "{r}"
    );
    assert_eq!(manifest(&dataset)["chunking"]["max_tokens"], 60);
}

/// Waits until `f` holds, or panics after `limit`.
fn wait_for(limit: Duration, what: &str, mut f: impl FnMut() -> bool) {
    let start = Instant::now();
    while !f() {
        assert!(start.elapsed() < limit, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(20));
    }
}

#[test]
fn a_run_killed_at_any_point_leaves_the_old_version_and_the_next_run_pays_for_nothing_twice() {
    let mock = MockServer::start();
    let out = tempfile::tempdir().expect("tempdir");
    let dataset = out.path().join("ds");
    let mut files = standard_files();
    let input = write_corpus(&files);
    assert_eq!(run(&mut embed(&mock, input.path(), &dataset)).code, 0);
    let v1 = live_content(&dataset);
    let v1_manifest = manifest(&dataset);

    // Sixty new one-chunk documents, sent one per request, slowly.
    for i in 0..60 {
        files.push((format!("new/n{i:02}.txt"), paragraph(&format!("new{i}"), 0)));
        std::fs::create_dir_all(input.path().join("new")).expect("mkdir");
        std::fs::write(input.path().join(format!("new/n{i:02}.txt")), paragraph(&format!("new{i}"), 0)).expect("write");
    }
    mock.set_delay(Duration::from_millis(100));
    for kill_after in [3, 9, 16] {
        let mut child = embed(&mock, input.path(), &dataset)
            .args(["--batch-inputs", "1", "--concurrency", "2"])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("spawn");
        let target = mock.answered() + kill_after;
        wait_for(Duration::from_secs(60), "answered requests", || mock.answered() >= target);
        child.kill().expect("SIGKILL");
        child.wait().expect("wait");
        // The published version is untouched and still searchable as it was.
        assert_eq!(manifest(&dataset), v1_manifest, "killed after {kill_after} answers");
        assert_eq!(live_content(&dataset), v1);
    }

    mock.set_delay(Duration::ZERO);
    let cached = cached_hashes(&dataset);
    assert!(cached.len() >= 16, "the killed runs' answers are in the cache: {}", cached.len());
    let sent_before = mock.texts().len();
    let resumed = run(&mut embed(&mock, input.path(), &dataset));
    assert_eq!(resumed.code, 0, "{}", resumed.all_output());
    let resent: Vec<String> =
        mock.texts()[sent_before..].iter().filter(|t| cached.contains(&text_hash(t))).cloned().collect();
    assert!(resent.is_empty(), "chunks paid for before the kills were sent again: {resent:?}");
    let r = report(&resumed);
    assert_eq!(r["chunks"]["reused"].as_u64(), Some(cached.len() as u64), "{r}");
    assert_eq!(r["chunks"]["embedded"].as_u64(), Some(60 - cached.len() as u64), "{r}");
    assert_eq!(cached_hashes(&dataset).len(), 0, "a complete run empties the cache");

    let clean = out.path().join("clean");
    let mock2 = MockServer::start();
    assert_eq!(run(&mut embed(&mock2, input.path(), &clean)).code, 0);
    assert_eq!(live_content(&dataset), live_content(&clean), "nothing lost, nothing duplicated");
}

#[test]
fn a_second_run_on_the_same_dataset_is_refused_or_waits() {
    let mock = MockServer::start();
    let input = write_corpus(&standard_files());
    let out = tempfile::tempdir().expect("tempdir");
    let dataset = out.path().join("ds");
    mock.set_delay(Duration::from_millis(150));
    let first = embed(&mock, input.path(), &dataset)
        .args(["--batch-inputs", "2", "--concurrency", "1"])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn");
    let pid = first.id();
    wait_for(Duration::from_secs(30), "the first request", || mock.requests() >= 1);

    let refused = run(&mut embed(&mock, input.path(), &dataset));
    assert_eq!(refused.code, 75, "{}", refused.all_output());
    assert!(
        refused.stderr.contains("another run") && refused.stderr.contains(&format!("pid {pid}")),
        "{}",
        refused.stderr
    );

    let waited = run(embed(&mock, input.path(), &dataset).args(["--wait-lock", "120"]));
    let first = crate::util::Run::from(first.wait_with_output().expect("first run"));
    assert_eq!(first.code, 0, "{}", first.all_output());
    assert_eq!(waited.code, 0, "{}", waited.all_output());
    assert_eq!(report(&waited)["chunks"]["embedded"], 0, "the waiting run found the work done: {}", waited.stdout);
    assert_eq!(live_rows(&dataset).len() as u64, report(&first)["chunks"]["embedded"].as_u64().expect("embedded"));
}

#[test]
fn pipeline_files_run_embed_and_index_with_flags_overriding_and_errors_naming_key_and_line() {
    let mock = MockServer::start();
    let input = write_corpus(&standard_files());
    let jobs = tempfile::tempdir().expect("tempdir");
    let toml = format!(
        "# nightly docs job\n[input]\npaths = [{:?}]\nid_field = \"id\"\n\n[chunking]\nmax_tokens = 30\noverlap = 0\n\n\
         [requests]\nconcurrency = 2\n\n[output]\ndataset = \"out/ds\"\n\n[index]\nm = 8\nef_construction = 64\n",
        input.path().display().to_string()
    );
    let file = jobs.path().join("job.toml");
    std::fs::write(&file, &toml).expect("write toml");

    let first = run(cli(Some(&mock.base())).arg("run").arg(&file).arg("--json"));
    assert_eq!(first.code, 0, "{}", first.all_output());
    let r = report(&first);
    let dataset = jobs.path().join("out/ds");
    assert_eq!(r["index"]["mode"], "built", "{r}");
    assert_eq!(r["index"]["points"], live_rows(&dataset).len(), "{r}");
    assert_eq!(manifest(&dataset)["chunking"]["max_tokens"], 30);
    assert_eq!(search(&mock, &dataset, &paragraph("echo", 2))[0], "echo.txt");
    assert!(mock.peak_in_flight() <= 2);

    std::fs::write(input.path().join("mike.txt"), document("mike", 1)).expect("write");
    let second = run(cli(Some(&mock.base())).arg("run").arg(&file).arg("--json"));
    let r = report(&second);
    assert_eq!((r["documents"]["new"].as_u64(), r["chunks"]["embedded"].as_u64()), (Some(1), Some(1)), "{r}");
    assert_eq!(r["index"]["mode"], "extended", "{r}");
    assert_eq!(search(&mock, &dataset, &paragraph("mike", 0))[0], "mike.txt");

    // A flag wins over the file.
    let other = jobs.path().join("elsewhere");
    let moved =
        run(cli(Some(&mock.base())).arg("run").arg(&file).arg("--out").arg(&other).args(["--chunk-tokens", "60"]));
    assert_eq!(moved.code, 0, "{}", moved.all_output());
    assert_eq!(manifest(&other)["chunking"]["max_tokens"], 60);

    let ok = run(cli(None).arg("validate").arg(&file));
    assert_eq!(ok.code, 0, "{}", ok.all_output());
    for (bad, needle) in [
        (toml.replace("[chunking]", "[chunkin]"), "chunkin"),
        (toml.replace("max_tokens = 30", "max_tokens = 9000"), "job.toml:7: chunking.max_tokens"),
        (toml.replace("overlap = 0", "overlap = 30"), "job.toml:8: chunking.overlap"),
        (toml.replace("concurrency = 2", "concurrency = \"two\""), "line 11"),
        (toml.replace("m = 8", "m = 1"), "job.toml:17: index.m"),
        (toml.replace("[input]", "[input]\nmodel = \"x\""), "model"),
    ] {
        std::fs::write(&file, &bad).expect("write toml");
        let result = run(cli(None).arg("validate").arg(&file));
        assert_eq!(result.code, 2, "{needle}: {}", result.all_output());
        assert!(result.stderr.contains(needle), "{needle}: {}", result.stderr);
        let result = run(cli(Some(&mock.base())).arg("run").arg(&file));
        assert_eq!(result.code, 2, "{needle}: {}", result.all_output());
    }
}

#[test]
fn every_shipped_pipeline_file_validates() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("pipelines");
    let files: Vec<_> = std::fs::read_dir(&dir)
        .expect("pipelines/")
        .map(|e| e.expect("entry").path())
        .filter(|p| p.extension().is_some_and(|e| e == "toml"))
        .collect();
    assert!(files.len() >= 2, "pipelines/ ships a local and a TARS example: {files:?}");
    for file in files {
        let result = run(cli(None).arg("validate").arg(&file));
        assert_eq!(result.code, 0, "{}: {}", file.display(), result.all_output());
    }
}

#[test]
fn one_percent_of_documents_changed_costs_about_one_percent() {
    let mock = MockServer::start();
    let files: Vec<(String, String)> =
        (0..200).map(|i| (format!("d{i:03}.txt"), document(&format!("doc{i}"), 3))).collect();
    let input = write_corpus(&files);
    age(input.path());
    let out = tempfile::tempdir().expect("tempdir");
    let dataset = out.path().join("ds");
    let full = run(embed(&mock, input.path(), &dataset).args(["--batch-inputs", "8"]));
    assert_eq!(full.code, 0, "{}", full.all_output());
    let full = report(&full);

    for i in [17, 123] {
        let name = format!("doc{i}");
        let text = document(&name, 3).replace(&paragraph(&name, 1), "This paragraph was rewritten today.");
        std::fs::write(input.path().join(format!("d{i:03}.txt")), text).expect("edit");
    }
    let update = run(embed(&mock, input.path(), &dataset).args(["--batch-inputs", "8"]));
    assert_eq!(update.code, 0, "{}", update.all_output());
    let update = report(&update);
    let ratio = |key: &str| update[key].as_f64().expect(key) / full[key].as_f64().expect(key);
    assert_eq!(update["documents"]["read"], 2, "only the edited files are read: {update}");
    assert_eq!(update["chunks"]["embedded"], 2, "{update}");
    eprintln!(
        "update/full: tokens {:.4}, requests {:.4} ({} of {})",
        ratio("tokens"),
        ratio("requests"),
        update["requests"],
        full["requests"]
    );
    assert!(ratio("tokens") <= 0.01, "tokens: {:.4} of a full run", ratio("tokens"));
    assert!(ratio("requests") <= 0.02, "requests: {:.4} of a full run", ratio("requests"));
}

#[test]
fn deleting_most_documents_compacts_the_dataset() {
    let mock = MockServer::start();
    let files = standard_files();
    let input = write_corpus(&files);
    let out = tempfile::tempdir().expect("tempdir");
    let dataset = out.path().join("ds");
    assert_eq!(run(&mut embed(&mock, input.path(), &dataset)).code, 0);
    assert_eq!(run(cli(None).arg("index").arg(&dataset)).code, 0);
    let lineage = manifest(&dataset)["lineage"].clone();
    for name in ["alpha", "bravo", "charlie", "delta", "echo", "foxtrot"] {
        std::fs::remove_file(input.path().join(format!("{name}.txt"))).expect("remove");
    }
    let update = run(embed(&mock, input.path(), &dataset).arg("--allow-mass-delete"));
    assert_eq!(update.code, 0, "{}", update.all_output());
    let m = manifest(&dataset);
    assert_eq!(m["rows"], m["live_rows"], "dead rows are gone from the files: {m}");
    assert_ne!(m["lineage"], lineage);
    let fresh = out.path().join("fresh");
    assert_eq!(run(&mut embed(&mock, input.path(), &fresh)).code, 0);
    assert_eq!(live_content(&dataset), live_content(&fresh));
    // The run rebuilt the index it found (compaction renumbered the rows): it is current, and it answers.
    assert_eq!(report(&update)["index"]["mode"], "built", "{}", update.stdout);
    let indexed = run(cli(None).arg("index").arg(&dataset).arg("--json"));
    let meta: serde_json::Value = serde_json::from_str(indexed.stdout.trim()).expect("index json");
    assert_eq!(meta["mode"], "current", "{meta}");
    assert_eq!(search(&mock, &dataset, &paragraph("golf", 1))[0], "golf.txt");
}
