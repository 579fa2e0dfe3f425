//! `search` through the CLI: filters over metadata and built-in columns, `--explain`, errors that point at the
//! offending part of a filter.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};

use crate::util::mock::MockServer;
use crate::util::{cli, corpus, json_lines, run};

/// Six records with typed metadata (one without a year), a Markdown guide and a text note.
fn dataset(mock: &MockServer) -> (tempfile::TempDir, PathBuf) {
    let records = [
        r#"{"id": "r1", "text": "Tune the bicycle gears before a long ride.", "year": 2019, "lang": "en", "score": 0.5, "draft": false, "published": "2019-03-01"}"#,
        r#"{"id": "r2", "text": "Das Fahrrad braucht neue Bremsen und eine Kette.", "year": 2021, "lang": "de", "score": 0.9, "draft": true, "published": "2021-06-15T12:00:00Z"}"#,
        r#"{"id": "r3", "text": "Oil the chain of the bicycle every month.", "year": 2023, "lang": "en", "score": 0.7, "draft": false, "published": "2023-01-10"}"#,
        r#"{"id": "r4", "text": "Le vélo a besoin d'un nouveau dérailleur.", "year": 2020, "lang": "fr", "score": 0.1, "draft": false, "published": "2020-09-30"}"#,
        r#"{"id": "r5", "text": "Pump the bicycle tyres to the pressure on their side.", "lang": "en", "score": 0.3, "draft": true}"#,
        r#"{"id": "r6", "text": "Replace worn brake pads on the bicycle.", "year": 2024, "lang": "en", "score": 1.5, "draft": false, "published": "2024-02-29"}"#,
    ];
    let input = corpus(&[
        ("records.jsonl", &(records.join("\n") + "\n")),
        ("guides/bicycle.md", "# Bicycle care\n\nClean the bicycle chain and check the brakes."),
        ("notes/bicycle.txt", "A note about bicycle bells."),
    ]);
    let dataset = input.path().join("ds");
    let metadata = [
        "--metadata",
        "year:int64",
        "--metadata",
        "lang",
        "--metadata",
        "score:float64",
        "--metadata",
        "draft:bool",
        "--metadata",
        "published:timestamp",
    ];
    let mut cmd = cli(Some(&mock.base()));
    cmd.arg("embed").arg(input.path()).arg("--out").arg(&dataset).args(["--id-field", "id"]).args(metadata);
    let embedded = run(&mut cmd);
    assert_eq!(embedded.code, 0, "{}", embedded.all_output());
    let indexed = run(cli(Some(&mock.base())).arg("index").arg(&dataset));
    assert_eq!(indexed.code, 0, "{}", indexed.all_output());
    (input, dataset)
}

fn search(mock: &MockServer, dataset: &Path, args: &[&str]) -> crate::util::Run {
    run(cli(Some(&mock.base())).arg("search").arg(dataset).arg("bicycle").args(args))
}

/// The documents `filter` lets through (k larger than the dataset).
fn docs_matching(mock: &MockServer, dataset: &Path, filters: &[&str]) -> BTreeSet<String> {
    let mut args = vec!["-k", "100", "--json"];
    for f in filters {
        args.extend(["--filter", f]);
    }
    let found = search(mock, dataset, &args);
    assert_eq!(found.code, 0, "{filters:?}: {}", found.all_output());
    json_lines(&found.stdout).iter().map(|hit| hit["doc"].as_str().expect("doc").to_owned()).collect()
}

fn set(docs: &[&str]) -> BTreeSet<String> {
    docs.iter().map(|d| (*d).to_owned()).collect()
}

#[test]
fn filters_select_on_every_operator_and_type() {
    let mock = MockServer::start();
    let (_input, ds) = dataset(&mock);
    let md = "guides/bicycle.md";
    let txt = "notes/bicycle.txt";
    let cases: &[(&str, &[&str])] = &[
        ("year = 2021", &["r2"]),
        ("year != 2021", &["r1", "r3", "r4", "r6"]),
        ("year < 2020", &["r1"]),
        ("year <= 2020", &["r1", "r4"]),
        ("year > 2021", &["r3", "r6"]),
        ("year >= 2023.5", &["r6"]),
        ("year IN (2019, 2024)", &["r1", "r6"]),
        ("year IS NULL", &["r5", md, txt]),
        ("year IS NOT NULL AND NOT year = 2019", &["r2", "r3", "r4", "r6"]),
        ("lang = 'en'", &["r1", "r3", "r5", "r6"]),
        ("lang NOT IN ('en', 'de')", &["r4"]),
        ("lang LIKE 'd%'", &["r2"]),
        ("score > 0.6 OR lang = 'fr'", &["r2", "r3", "r4", "r6"]),
        ("score BETWEEN_IS_NOT_SUPPORTED", &[]),
        ("draft = true", &["r2", "r5"]),
        ("draft != true AND (year < 2021 OR year > 2023)", &["r1", "r4", "r6"]),
        ("published >= '2021-06-15T12:00:00Z'", &["r2", "r3", "r6"]),
        ("published < '2020-01-01'", &["r1"]),
        ("format = 'markdown'", &[md]),
        ("format IN ('text', 'markdown')", &[md, txt]),
        ("doc LIKE 'notes/%'", &[txt]),
        ("title = 'Bicycle care'", &[md]),
        ("file LIKE '%records.jsonl'", &["r1", "r2", "r3", "r4", "r5", "r6"]),
        ("size > 0", &["r1", "r2", "r3", "r4", "r5", "r6", md, txt]),
        ("modified > '2000-01-01'", &["r1", "r2", "r3", "r4", "r5", "r6", md, txt]),
        ("page IS NULL AND chunk_index = 0", &["r1", "r2", "r3", "r4", "r5", "r6", md, txt]),
    ];
    for (filter, want) in cases {
        if filter.contains("NOT_SUPPORTED") {
            let found = search(&mock, &ds, &["--filter", filter]);
            assert_eq!(found.code, 2, "{filter}: {}", found.all_output());
            continue;
        }
        assert_eq!(docs_matching(&mock, &ds, &[filter]), set(want), "--filter {filter:?}");
    }
    // Repeated --filter: all must match.
    assert_eq!(docs_matching(&mock, &ds, &["lang = 'en'", "year > 2020"]), set(&["r3", "r6"]));
    // Fewer matches than k: all of them; more: exactly k.
    let found = search(&mock, &ds, &["-k", "2", "--filter", "lang = 'en'", "--json"]);
    assert_eq!(json_lines(&found.stdout).len(), 2, "{}", found.all_output());
}

#[test]
fn a_bad_filter_exits_2_and_points_at_the_problem() {
    let mock = MockServer::start();
    let (_input, ds) = dataset(&mock);
    let requests_before = mock.requests();
    // (filter, message, the part pointed at: "" for the end)
    let cases = [
        ("yeer > 2000", "no column \"yeer\"", "yeer"),
        ("year = 'new'", "\"year\" is an int64 and this is a string", "'new'"),
        ("lang = en", "quote strings with single quotes", "en"),
        ("year > 2000 AND", "expected a column name, found the end", ""),
        ("(year > 2000", "this '(' is never closed", "("),
        ("draft < true", "compare it with = or !=", "<"),
        ("published > 'yesterday'", "is not a timestamp", "'yesterday'"),
        ("lang LIKE 5", "expected a quoted pattern", "5"),
    ];
    for (filter, message, part) in cases {
        let found = search(&mock, &ds, &["--filter", filter]);
        assert_eq!(found.code, 2, "{filter}: {}", found.all_output());
        assert!(found.stderr.contains(message), "{filter}: {}", found.stderr);
        let at = if part.is_empty() { filter.len() } else { filter.find(part).expect("part") };
        let caret = format!("  {filter}\n  {}{}\n", " ".repeat(at), "^".repeat(part.len().max(1)));
        assert!(found.stderr.contains(&caret), "{filter}: caret {caret:?} in\n{}", found.stderr);
        assert!(found.stderr.contains(&format!("--filter at column {}:", at + 1)), "{}", found.stderr);
        assert!(found.stdout.is_empty(), "{filter}: {}", found.stdout);
    }
    // Checked before the query is embedded: nothing was sent.
    assert_eq!(mock.requests(), requests_before);
}

#[test]
fn explain_says_how_the_hits_were_found() {
    let mock = MockServer::start();
    let (_input, ds) = dataset(&mock);
    let found = search(&mock, &ds, &["--filter", "lang = 'en'", "--explain"]);
    assert_eq!(found.code, 0, "{}", found.all_output());
    let (comments, hits): (Vec<&str>, Vec<&str>) = found.stdout.lines().partition(|l| l.starts_with('#'));
    assert_eq!(hits.len(), 4, "{}", found.stdout);
    let said = |what: &str| comments.iter().any(|c| c.contains(what));
    assert!(said("vector: the index of this version"), "{comments:?}");
    assert!(said("keyword: the BM25 index of version 1"), "{comments:?}");
    assert!(said("matched 4 of 8 live rows (50.00%)") && said("score them all exactly"), "{comments:?}");
    // Each hit says where it stood in each list.
    assert!(hits.iter().all(|h| h.contains("[vector ") && h.contains(" keyword ")), "{hits:?}");

    let found = search(&mock, &ds, &["--filter", "draft = true", "--explain", "--json"]);
    let lines = json_lines(&found.stdout);
    let explain = &lines[0]["explain"];
    assert_eq!((&explain["method"], &explain["mode"]), (&serde_json::json!("index"), &serde_json::json!("hybrid")));
    assert_eq!(explain["filter"]["matched"], 2);
    assert_eq!(explain["filter"]["strategy"], "exact");
    assert_eq!(lines.len(), 3, "{}", found.stdout);
    assert!(lines[1..].iter().all(|hit| hit["metadata"]["draft"] == true), "{lines:?}");
}

/// Twelve notes on the same topic; one holds an error code and a flag that no other does.
fn notes(mock: &MockServer) -> (tempfile::TempDir, PathBuf) {
    let mut files: Vec<(String, String)> = (0..12)
        .map(|i| {
            let text = format!(
                "Note {i} about retries and quotas. The client retries a request when the gateway answers with an \
                 error, and waits longer after each attempt. Quotas reset every minute, topic {i}."
            );
            (format!("notes/n{i:02}.txt"), text)
        })
        .collect();
    files[7].1.push_str(" When the gateway answers ERR_QUOTA_7731 the run stops; lower --max-inflight and retry.");
    let refs: Vec<(&str, &str)> = files.iter().map(|(p, t)| (p.as_str(), t.as_str())).collect();
    let input = corpus(&refs);
    let dataset = input.path().join("ds");
    let embedded = run(cli(Some(&mock.base())).arg("embed").arg(input.path().join("notes")).arg("--out").arg(&dataset));
    assert_eq!(embedded.code, 0, "{}", embedded.all_output());
    assert_eq!(run(cli(Some(&mock.base())).arg("index").arg(&dataset)).code, 0);
    (input, dataset)
}

fn first_docs(mock: &MockServer, dataset: &Path, query: &str, args: &[&str]) -> Vec<String> {
    let found =
        run(cli(Some(&mock.base())).arg("search").arg(dataset).args(["--json"]).args(args).arg("--").arg(query));
    assert_eq!(found.code, 0, "{query}: {}", found.all_output());
    json_lines(&found.stdout).iter().map(|h| h["doc"].as_str().expect("doc").to_owned()).collect()
}

#[test]
fn an_exact_identifier_is_found_first_in_keyword_and_hybrid_modes() {
    let mock = MockServer::start();
    let (_input, ds) = notes(&mock);
    for query in ["ERR_QUOTA_7731", "--max-inflight", "what does ERR_QUOTA_7731 mean?"] {
        for mode in ["keyword", "hybrid"] {
            let docs = first_docs(&mock, &ds, query, &["--mode", mode]);
            assert_eq!(docs.first().map(String::as_str), Some("n07.txt"), "{mode} {query:?}: {docs:?}");
        }
        // Hybrid is the default once the dataset has a keyword index.
        assert_eq!(first_docs(&mock, &ds, query, &[])[0], "n07.txt");
    }
    let hit = &json_lines(
        &run(cli(Some(&mock.base())).arg("search").arg(&ds).args(["--json", "--", "ERR_QUOTA_7731"])).stdout,
    )[0];
    assert_eq!((&hit["exact"], hit["ranks"]["keyword"].as_u64()), (&serde_json::json!(true), Some(1)), "{hit}");
    // Keyword mode needs no embedding: nothing is sent.
    let before = mock.requests();
    first_docs(&mock, &ds, "ERR_QUOTA_7731", &["--mode", "keyword"]);
    assert_eq!(mock.requests(), before);
}

#[test]
fn the_keyword_index_is_updated_with_the_dataset_and_equals_a_rebuild() {
    let mock = MockServer::start();
    let (input, ds) = notes(&mock);
    let queries = ["retries quotas", "ERR_QUOTA_7731", "topic 3", "zebra stripes"];
    // A document deleted, one changed, one added: embed updates both indexes.
    std::fs::remove_file(input.path().join("notes/n03.txt")).expect("rm");
    std::fs::write(input.path().join("notes/n05.txt"), "Zebra stripes confuse flies, topic 5.").expect("write");
    std::fs::write(input.path().join("notes/n12.txt"), "More zebra stripes here, and ERR_QUOTA_7731 too.").expect("w");
    let updated = run(cli(Some(&mock.base())).arg("embed").arg(input.path().join("notes")).arg("--out").arg(&ds));
    assert_eq!(updated.code, 0, "{}", updated.all_output());
    let keyword = |q: &str| first_docs(&mock, &ds, q, &["--mode", "keyword", "-k", "100"]);
    let incremental: Vec<Vec<String>> = queries.iter().map(|q| keyword(q)).collect();
    assert!(!incremental.iter().flatten().any(|d| d == "n03.txt"), "a deleted document matched: {incremental:?}");
    let sets =
        |lists: &[Vec<String>]| lists.iter().map(|l| l.iter().cloned().collect::<BTreeSet<_>>()).collect::<Vec<_>>();
    assert_eq!(sets(&incremental[3..]), vec![set(&["n05.txt", "n12.txt"])]);
    // The two chunks holding the identifier come first (other notes match its word "quota").
    assert_eq!(sets(&[incremental[1][..2].to_vec()]), vec![set(&["n07.txt", "n12.txt"])], "{incremental:?}");

    let rebuilt = run(cli(None).arg("index").arg(&ds).args(["--rebuild", "--json"]));
    assert_eq!(rebuilt.code, 0, "{}", rebuilt.all_output());
    let from_scratch: Vec<Vec<String>> = queries.iter().map(|q| keyword(q)).collect();
    assert_eq!(sets(&incremental), sets(&from_scratch), "the same documents match");
    assert_eq!(incremental[1][0], from_scratch[1][0]);
}

#[test]
fn a_damaged_or_missing_keyword_index_is_refused_with_a_message() {
    let mock = MockServer::start();
    let (_input, ds) = notes(&mock);
    std::fs::write(ds.join("keyword/keyword.json"), "{not json").expect("damage");
    let found = run(cli(Some(&mock.base())).arg("search").arg(&ds).args(["--mode", "keyword", "quotas"]));
    assert_eq!(found.code, 2, "{}", found.all_output());
    assert!(found.stderr.contains("damaged") && found.stderr.contains("tars-index index"), "{}", found.stderr);
    // The default mode still answers, from the vectors, and says why.
    let found = run(cli(Some(&mock.base())).arg("search").arg(&ds).arg("quotas"));
    assert_eq!(found.code, 0, "{}", found.all_output());
    assert!(found.stderr.contains("keyword index"), "{}", found.stderr);
    // Files of the tantivy index cut short: refused, never a panic.
    assert_eq!(run(cli(None).arg("index").arg(&ds).arg("--rebuild")).code, 0);
    for entry in walk(&ds.join("keyword")) {
        if entry.extension().is_some_and(|e| e != "json" && e != "lock") {
            std::fs::write(&entry, b"").expect("truncate");
        }
    }
    let found = run(cli(Some(&mock.base())).arg("search").arg(&ds).args(["--mode", "keyword", "quotas"]));
    assert!(found.code == 2 || found.code == 1, "{}", found.all_output());
    assert!(!found.stderr.contains("panicked"), "{}", found.stderr);
    std::fs::remove_dir_all(ds.join("keyword")).expect("rm");
    let found = run(cli(Some(&mock.base())).arg("search").arg(&ds).args(["--mode", "hybrid", "quotas"]));
    assert_eq!(found.code, 2, "{}", found.all_output());
    assert!(found.stderr.contains("no keyword index yet"), "{}", found.stderr);
}

fn walk(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    for entry in std::fs::read_dir(dir).expect("read_dir").filter_map(Result::ok) {
        let path = entry.path();
        if path.is_dir() { out.extend(walk(&path)) } else { out.push(path) }
    }
    out
}

#[test]
fn batch_queries_equal_one_by_one_queries_in_one_request() {
    let mock = MockServer::start();
    let (input, ds) = dataset(&mock);
    let file = input.path().join("queries.txt");
    std::fs::write(
        &file,
        "bicycle chain\n\n{\"query\": \"brakes\", \"id\": \"q-brakes\", \"k\": 2}\n\
         {\"text\": \"gears\", \"_id\": 7, \"filter\": \"lang = 'en'\"}\n\
         {\"query\": \"tyres\", \"filter\": \"yeer > 1\"}\n\
         not json but a query {\n",
    )
    .expect("write");
    let before = mock.requests();
    let batch = run(cli(Some(&mock.base())).arg("search").arg(&ds).arg("--queries").arg(&file));
    assert_eq!(mock.requests() - before, 1, "one embedding request for the whole file");
    // The bad line is reported with its file and line; the others are answered; the exit code says one failed.
    assert_eq!(batch.code, 1, "{}", batch.all_output());
    assert!(
        batch.stderr.contains(&format!("{}:5: --filter at column 1: no column \"yeer\"", file.display())),
        "{}",
        batch.stderr
    );
    let hits = json_lines(&batch.stdout);
    let of = |id: serde_json::Value| -> Vec<String> {
        hits.iter().filter(|h| h["query_id"] == id).map(|h| h["doc"].as_str().expect("doc").to_owned()).collect()
    };
    let one = |query: &str, args: &[&str]| -> Vec<String> {
        let found = search_text(&mock, &ds, query, args);
        json_lines(&found.stdout).iter().map(|h| h["doc"].as_str().expect("doc").to_owned()).collect()
    };
    assert_eq!(of(1.into()), one("bicycle chain", &[]));
    assert_eq!(of("q-brakes".into()), one("brakes", &["-k", "2"]));
    assert_eq!(of(7.into()), one("gears", &["--filter", "lang = 'en'"]));
    assert_eq!(of(6.into()), one("not json but a query {", &[]));
    assert_eq!(of("q-brakes".into()).len(), 2);
    // Standard input works the same.
    let mut cmd = cli(Some(&mock.base()));
    cmd.arg("search").arg(&ds).args(["--queries", "-"]).stdin(std::fs::File::open(&file).expect("open"));
    assert_eq!(json_lines(&run(&mut cmd).stdout), hits);
}

fn search_text(mock: &MockServer, dataset: &Path, query: &str, args: &[&str]) -> crate::util::Run {
    let found = run(cli(Some(&mock.base())).arg("search").arg(dataset).arg("--json").args(args).arg("--").arg(query));
    assert_eq!(found.code, 0, "{query}: {}", found.all_output());
    found
}

#[test]
fn eval_reports_each_mode_and_agrees_with_the_searches_it_makes() {
    let mock = MockServer::start();
    let (input, ds) = dataset(&mock);
    let qrels = input.path().join("qrels.jsonl");
    std::fs::write(
        &qrels,
        "{\"query\": \"bicycle chain\", \"relevant\": [\"r3\", \"guides/bicycle.md\"]}\n\
         {\"query\": \"brake pads\", \"relevant\": [\"r6\"]}\n",
    )
    .expect("write");
    let found = run(cli(Some(&mock.base())).arg("eval").arg(&ds).arg("--qrels").arg(&qrels).arg("--json"));
    assert_eq!(found.code, 0, "{}", found.all_output());
    let figures = &json_lines(&found.stdout)[0];
    assert_eq!(figures["queries"], 2);
    for mode in ["vector", "keyword", "hybrid"] {
        // MRR@10 by hand, from the documents `search` returns in that mode.
        let mut mrr = 0.0;
        for (query, relevant) in [("bicycle chain", &["r3", "guides/bicycle.md"][..]), ("brake pads", &["r6"][..])] {
            let docs = first_docs(&mock, &ds, query, &["--mode", mode, "-k", "40"]);
            let mut seen = BTreeSet::new();
            let ranked: Vec<&String> = docs.iter().filter(|d| seen.insert(d.as_str())).collect();
            if let Some(at) = ranked.iter().take(10).position(|d| relevant.contains(&d.as_str())) {
                mrr += 1.0 / (at as f64 + 1.0);
            }
        }
        let got = figures["modes"][mode]["mrr@10"].as_f64().expect("mrr");
        assert!((got - mrr / 2.0).abs() < 1e-9, "{mode}: eval says {got}, the searches {}", mrr / 2.0);
        assert!(figures["modes"][mode]["recall@10"].as_f64().is_some_and(|r| (0.0..=1.0).contains(&r)));
    }
    let table = run(cli(Some(&mock.base())).arg("eval").arg(&ds).arg("--qrels").arg(&qrels));
    assert!(table.stdout.starts_with("mode     queries  recall@10  MRR@10  nDCG@10\nvector "), "{}", table.stdout);
    std::fs::write(&qrels, "{\"query\": \"x\"}\n").expect("write");
    let bad = run(cli(Some(&mock.base())).arg("eval").arg(&ds).arg("--qrels").arg(&qrels));
    assert_eq!(bad.code, 2, "{}", bad.all_output());
    assert!(bad.stderr.contains("qrels.jsonl:1: no \"relevant\" list"), "{}", bad.stderr);
}
