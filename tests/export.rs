//! Export to vector databases: the CLI against a real Postgres with pgvector on 127.0.0.1, a mock Qdrant that checks
//! request bodies against Qdrant's schemas (and a real Qdrant when `QDRANT_URL` is set), and the mock embedding
//! server. The target holds the dataset's live rows and answers a vector query as `search` does in exact mode; it
//! follows the corpus incrementally, and a Postgres export that fails leaves the table as it was.

use std::collections::BTreeMap;
use std::path::Path;

use serde_json::json;

use crate::util::mock::{DEFAULT_DIMS, MockServer, mock_embedding};
use crate::util::pg::PgServer;
use crate::util::qdrant::MockQdrant;
use crate::util::{Run, cli, json_lines, live_row_ids, manifest, run};

const PASSWORD: &str = "pw-hunter2-f81c";

/// One JSONL record per document: (id, text, lang, year).
fn records(docs: &[(&str, &str, &str, i64)]) -> String {
    docs.iter()
        .map(|(id, text, lang, year)| {
            serde_json::json!({ "id": id, "text": text, "lang": lang, "year": year }).to_string() + "\n"
        })
        .collect()
}

fn text(topic: &str) -> String {
    (0..3)
        .map(|n| format!("Part {n} on {topic}: the {topic}{n} notes cover {topic} tuning and {topic}{n} limits."))
        .collect::<Vec<_>>()
        .join("\n\n")
}

fn embed(mock: &MockServer, input: &Path, dataset: &Path) {
    let out = run(cli(Some(&mock.base()))
        .arg("embed")
        .arg(input)
        .arg("--out")
        .arg(dataset)
        .args(["--id-field", "id", "--metadata", "lang", "--metadata", "year:int64"])
        .args(["--chunk-tokens", "30", "--chunk-overlap", "0", "--json"]));
    assert_eq!(out.code, 0, "{}", out.all_output());
}

fn export(pg: &PgServer, dataset: &Path, extra: &[&str]) -> Run {
    let table: &[&str] = if extra.contains(&"--table") { &[] } else { &["--table", "chunks"] };
    let out = run(cli(None)
        .args(["export", "pgvector"])
        .arg(dataset)
        .args(["--to", &pg.url(PASSWORD), "--json"])
        .args(table)
        .args(extra));
    assert!(!out.all_output().contains(PASSWORD), "the password leaked:\n{}", out.all_output());
    out
}

fn report(out: &Run) -> serde_json::Value {
    assert_eq!(out.code, 0, "{}", out.all_output());
    json_lines(&out.stdout).pop().expect("a report")
}

/// (row id, doc) of every row in the table.
fn table_rows(pg: &PgServer) -> BTreeMap<u64, String> {
    pg.sql("SELECT row_id, doc FROM chunks ORDER BY row_id")
        .lines()
        .map(|l| {
            let (id, doc) = l.split_once('\t').expect("two columns");
            (id.parse().expect("row id"), doc.to_owned())
        })
        .collect()
}

/// `search`'s top 10 in vector mode (the dataset has no index: an exact scan), as (doc, chunk, cosine).
fn search_top10(mock: &MockServer, dataset: &Path, query: &str) -> Vec<(String, u64, f64)> {
    let out = run(cli(Some(&mock.base()))
        .arg("search")
        .arg(dataset)
        .args([query, "--mode", "vector", "-k", "10"])
        .arg("--json"));
    assert_eq!(out.code, 0, "{}", out.all_output());
    json_lines(&out.stdout)
        .iter()
        .map(|h| {
            let doc = h["doc"].as_str().expect("doc").to_owned();
            (doc, h["chunk_index"].as_u64().expect("chunk"), h["score"].as_f64().expect("score"))
        })
        .collect()
}

/// The table's top 10 for the same query vector, by cosine distance; `index`: through the HNSW index (checked with
/// EXPLAIN), else a sequential scan.
fn pg_top10(pg: &PgServer, query: &str, index: bool) -> Vec<(String, u64, f64)> {
    let vector: Vec<String> = mock_embedding(query, DEFAULT_DIMS).iter().map(|x| x.to_string()).collect();
    let select = format!(
        "SELECT doc, chunk_index, 1 - (embedding <=> '[{}]') FROM chunks ORDER BY embedding <=> '[{}]' LIMIT 10",
        vector.join(","),
        vector.join(",")
    );
    let scan = if index { "SET enable_seqscan = off" } else { "SET enable_indexscan = off" };
    let plan = pg.session(&[scan, "SET hnsw.ef_search = 200", &format!("EXPLAIN {select}")]);
    assert_eq!(plan.contains("chunks_embedding_idx"), index, "{plan}");
    pg.session(&[scan, "SET hnsw.ef_search = 200", &select])
        .lines()
        .map(|l| {
            let cells: Vec<&str> = l.split('\t').collect();
            (cells[0].to_owned(), cells[1].parse().expect("chunk"), cells[2].parse().expect("score"))
        })
        .collect()
}

/// The same top 10: the same scores, rank by rank, and the same hits at each score, except at the last one, where
/// rows tied with the tenth may take its place. (Chunks that differ only in words a query lacks tie exactly.)
fn assert_same_hits(expected: &[(String, u64, f64)], found: &[(String, u64, f64)]) {
    assert_eq!(found.len(), expected.len(), "\npostgres: {found:?}\nsearch:   {expected:?}");
    for ((_, _, a), (_, _, b)) in expected.iter().zip(found) {
        assert!((a - b).abs() < 1e-5, "scores {a} and {b}:\npostgres: {found:?}\nsearch:   {expected:?}");
    }
    let last = expected.last().map_or(0.0, |h| h.2);
    let above = |hits: &[(String, u64, f64)]| {
        let mut ids: Vec<(String, u64)> =
            hits.iter().filter(|h| h.2 > last + 1e-5).map(|(d, c, _)| (d.clone(), *c)).collect();
        ids.sort();
        ids
    };
    assert_eq!(above(found), above(expected), "\npostgres: {found:?}\nsearch:   {expected:?}");
}

fn assert_answers_like_search(pg: &PgServer, mock: &MockServer, dataset: &Path) {
    for query in ["kernel tuning limits", "networking1 notes", "storage2 audio0 limits"] {
        let expected = search_top10(mock, dataset, query);
        assert_eq!(expected.len(), 10);
        assert_same_hits(&expected, &pg_top10(pg, query, false));
        assert_same_hits(&expected, &pg_top10(pg, query, true));
    }
}

type Doc = (String, String, &'static str, i64);

/// Eight documents on their own topics, with a `lang` and a `year`.
fn first_corpus() -> Vec<Doc> {
    let topics = ["kernel", "networking", "storage", "scheduling", "memory", "security", "graphics", "audio"];
    topics
        .iter()
        .enumerate()
        .map(|(i, t)| (format!("d{i}"), text(t), if i % 2 == 0 { "en" } else { "de" }, 2000 + i as i64))
        .collect()
}

/// New text for d1, new metadata only for d2, d3 deleted, d8 added.
fn second_corpus(v1: &[Doc]) -> Vec<Doc> {
    let mut v2 = v1.to_vec();
    v2[1].1 = text("filesystems");
    v2[2].2 = "fr";
    v2.remove(3);
    v2.push(("d8".into(), text("printing"), "en", 2008));
    v2
}

/// The first corpus embedded: the mock, the scratch directory, the input file and the dataset.
fn embedded() -> (MockServer, tempfile::TempDir, std::path::PathBuf, std::path::PathBuf) {
    let mock = MockServer::start();
    let scratch = tempfile::tempdir().expect("tempdir");
    let (input, dataset) = (scratch.path().join("records.jsonl"), scratch.path().join("ds"));
    write_corpus(&input, &first_corpus());
    embed(&mock, &input, &dataset);
    (mock, scratch, input, dataset)
}

fn write_corpus(input: &Path, docs: &[Doc]) {
    let refs: Vec<(&str, &str, &str, i64)> =
        docs.iter().map(|(id, text, lang, year)| (id.as_str(), text.as_str(), *lang, *year)).collect();
    std::fs::write(input, records(&refs)).expect("write records");
}

#[test]
fn pgvector_holds_the_live_rows_answers_like_exact_search_and_follows_the_corpus() {
    let Some(pg) = PgServer::start() else { return };
    let (mock, _scratch, input, dataset) = embedded();
    let v1 = first_corpus();

    // First export: everything, typed columns, one row per live row.
    let first = report(&export(&pg, &dataset, &[]));
    assert_eq!(first["kind"]["full"]["reason"], "first", "{first}");
    let live = live_row_ids(&dataset);
    assert_eq!(first["rows_written"], live.len() as u64);
    assert_eq!(table_rows(&pg), live);
    let types = pg.sql(
        "SELECT attname, format_type(atttypid, atttypmod) FROM pg_attribute \
         WHERE attrelid = 'chunks'::regclass AND attname IN ('embedding', 'lang', 'year', 'modified', 'row_id') \
         ORDER BY attname",
    );
    assert_eq!(
        types,
        format!(
            "embedding\tvector({DEFAULT_DIMS})\nlang\ttext\nmodified\ttimestamp with time zone\nrow_id\tbigint\nyear\tbigint"
        )
    );
    assert_eq!(pg.sql("SELECT DISTINCT lang, year FROM chunks WHERE doc = 'd3'"), "de\t2003");
    assert_answers_like_search(&pg, &mock, &dataset);

    // Nothing changed: nothing to do.
    let again = report(&export(&pg, &dataset, &[]));
    assert_eq!((again["kind"].as_str(), again["rows_written"].as_u64()), (Some("up_to_date"), Some(0)), "{again}");

    let d2_rows: Vec<u64> = live.iter().filter(|(_, d)| *d == "d2").map(|(r, _)| *r).collect();
    let v2 = second_corpus(&v1);
    write_corpus(&input, &v2);
    embed(&mock, &input, &dataset);
    let update = report(&export(&pg, &dataset, &[]));
    assert_eq!(update["kind"], "incremental", "{update}");
    // d1's rows are replaced and d8's added; the other documents share the JSONL file, whose size and mtime they
    // carry, so their metadata is updated in place (d2's new lang with it), and nothing else of them is sent.
    let counts = ["docs_written", "docs_updated", "docs_deleted"].map(|k| update[k].as_u64().expect(k));
    assert_eq!(counts, [2, 6, 1], "{update}");
    let new_rows = live_row_ids(&dataset).values().filter(|d| *d == "d1" || *d == "d8").count() as u64;
    assert_eq!(update["rows_written"], new_rows, "{update}");
    let live = live_row_ids(&dataset);
    assert_eq!(table_rows(&pg), live, "the table holds exactly the live rows");
    assert_eq!(update["rows"], live.len() as u64);
    assert_eq!(pg.sql("SELECT count(*) FROM chunks WHERE doc = 'd3'"), "0");
    assert_eq!(pg.sql("SELECT DISTINCT lang FROM chunks WHERE doc = 'd2'"), "fr");
    let d2_now: Vec<u64> = live.iter().filter(|(_, d)| *d == "d2").map(|(r, _)| *r).collect();
    assert_eq!(d2_now, d2_rows, "a change of metadata alone re-embeds nothing: same rows");
    assert!(pg.sql("SELECT string_agg(text, ' ') FROM chunks WHERE doc = 'd1'").contains("filesystems"));
    let generation = manifest(&dataset)["generation"].as_u64().expect("generation");
    assert_eq!(
        pg.sql("SELECT generation, rows FROM tars_index_exports WHERE \"table\" = 'chunks'"),
        format!("{generation}\t{}", live.len())
    );
    assert_answers_like_search(&pg, &mock, &dataset);

    // --full: a new table swapped in, named and indexed as before, nothing left of the load.
    let full = report(&export(&pg, &dataset, &["--full"]));
    assert_eq!(full["kind"]["full"]["reason"], "asked", "{full}");
    assert_eq!(table_rows(&pg), live);
    assert_eq!(
        pg.sql("SELECT string_agg(relname::text, ',' ORDER BY relname) FROM pg_class WHERE relname LIKE 'chunks%'"),
        "chunks,chunks__docs,chunks__docs_pkey,chunks_doc_idx,chunks_embedding_idx,chunks_pkey"
    );
    assert_answers_like_search(&pg, &mock, &dataset);

    // An export that fails half-way (a data file of the new version is damaged) leaves the table as it was.
    let mut v3 = v2.clone();
    v3[0].1 = text("virtualisation");
    write_corpus(&input, &v3);
    embed(&mock, &input, &dataset);
    let newest = manifest(&dataset)["files"].as_array().expect("files").last().expect("file")["path"]
        .as_str()
        .expect("path")
        .to_owned();
    let path = dataset.join(newest);
    let bytes = std::fs::read(&path).expect("data file");
    std::fs::write(&path, &bytes[..bytes.len() / 2]).expect("damage it");
    let failed = export(&pg, &dataset, &[]);
    assert_eq!(failed.code, 1, "{}", failed.all_output());
    assert_eq!(table_rows(&pg), live, "the table is the previous version's");
    assert_eq!(pg.sql("SELECT generation FROM tars_index_exports WHERE \"table\" = 'chunks'"), generation.to_string());
}

#[test]
fn pgvector_refuses_a_table_it_did_not_write_and_never_shows_the_password() {
    let Some(pg) = PgServer::start() else { return };
    let mock = MockServer::start();
    let scratch = tempfile::tempdir().expect("tempdir");
    let (input, dataset) = (scratch.path().join("records.jsonl"), scratch.path().join("ds"));
    std::fs::write(&input, records(&[("a", &text("kernel"), "en", 2020)])).expect("write");
    embed(&mock, &input, &dataset);

    pg.sql("CREATE TABLE chunks (note text); INSERT INTO chunks VALUES ('mine')");
    let refused = export(&pg, &dataset, &[]);
    assert_eq!(refused.code, 2, "{}", refused.all_output());
    assert!(refused.stderr.contains("chunks exists") && refused.stderr.contains("--table"), "{}", refused.stderr);
    assert_eq!(pg.sql("SELECT note FROM chunks"), "mine", "left alone");

    let bad_name = export(&pg, &dataset, &["--table", "x; DROP TABLE chunks"]);
    assert_eq!(bad_name.code, 2, "{}", bad_name.all_output());
    assert!(bad_name.stderr.contains("not a table name"), "{}", bad_name.stderr);

    // A server that is not there: the error names it, without the password.
    let closed = std::net::TcpListener::bind("127.0.0.1:0").and_then(|l| l.local_addr()).expect("port").port();
    let out = run(cli(None)
        .args(["export", "pgvector"])
        .arg(&dataset)
        .args(["--to", &format!("postgres://postgres:{PASSWORD}@127.0.0.1:{closed}/postgres")]));
    assert_eq!(out.code, 1, "{}", out.all_output());
    assert!(
        out.stderr.contains(&format!("cannot connect to postgres://postgres@127.0.0.1:{closed}/postgres")),
        "{}",
        out.stderr
    );
    assert!(!out.all_output().contains(PASSWORD), "{}", out.all_output());

    // The URL from the environment is not shown by --help either.
    let help = run(cli(None).args(["export", "pgvector", "--help"]).env("DATABASE_URL", pg.url(PASSWORD)));
    assert_eq!(help.code, 0);
    assert!(!help.all_output().contains(PASSWORD), "{}", help.stdout);
}

const QDRANT_KEY: &str = "qk-7d1e5b-never-shown";

fn export_qdrant(url: &str, dataset: &Path, extra: &[&str]) -> Run {
    let out = run(cli(None)
        .args(["export", "qdrant"])
        .arg(dataset)
        .args(["--to", url, "--collection", "chunks", "--json", "--batch", "7"])
        .env("QDRANT_API_KEY", QDRANT_KEY)
        .args(extra));
    assert!(!out.all_output().contains(QDRANT_KEY), "the API key leaked:\n{}", out.all_output());
    out
}

/// Qdrant's top 10 for the query's vector (POST /points/query, through the alias), as (doc, chunk, cosine).
fn qdrant_top10(url: &str, query: &str) -> Vec<(String, u64, f64)> {
    let body = json!({ "query": mock_embedding(query, DEFAULT_DIMS), "limit": 10, "with_payload": true });
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().expect("runtime");
    let answer: serde_json::Value = rt.block_on(async {
        let response = reqwest::Client::new()
            .post(format!("{url}/collections/chunks/points/query"))
            .header("api-key", QDRANT_KEY)
            .json(&body)
            .send()
            .await
            .expect("query");
        assert!(response.status().is_success(), "{}", response.status());
        response.json().await.expect("JSON")
    });
    answer["result"]["points"]
        .as_array()
        .expect("points")
        .iter()
        .map(|p| {
            let payload = &p["payload"];
            let doc = payload["doc"].as_str().expect("doc").to_owned();
            (doc, payload["chunk_index"].as_u64().expect("chunk"), p["score"].as_f64().expect("score"))
        })
        .collect()
}

/// The export flow against any Qdrant at `url`: first export, nothing to do, an incremental one, a full one; the
/// collection answers like `search` after each.
fn qdrant_follows_the_corpus(url: &str, points: impl Fn() -> BTreeMap<u64, String>) {
    let (mock, _scratch, input, dataset) = embedded();
    let v1 = first_corpus();
    let answers_like_search = || {
        for query in ["kernel tuning limits", "networking1 notes", "storage2 audio0 limits"] {
            assert_same_hits(&search_top10(&mock, &dataset, query), &qdrant_top10(url, query));
        }
    };

    let first = report(&export_qdrant(url, &dataset, &["--full"]));
    assert!(first["kind"]["full"]["reason"] == "first" || first["kind"]["full"]["reason"] == "asked", "{first}");
    assert_eq!(points(), live_row_ids(&dataset));
    answers_like_search();
    let again = report(&export_qdrant(url, &dataset, &[]));
    assert_eq!(again["kind"], "up_to_date", "{again}");

    write_corpus(&input, &second_corpus(&v1));
    embed(&mock, &input, &dataset);
    let update = report(&export_qdrant(url, &dataset, &[]));
    assert_eq!(update["kind"], "incremental", "{update}");
    let counts = ["docs_written", "docs_updated", "docs_deleted"].map(|k| update[k].as_u64().expect(k));
    assert_eq!(counts, [2, 6, 1], "{update}");
    assert_eq!(points(), live_row_ids(&dataset), "the collection holds exactly the live rows");
    answers_like_search();

    let full = report(&export_qdrant(url, &dataset, &["--full"]));
    assert_eq!(full["kind"]["full"]["reason"], "asked", "{full}");
    assert_eq!(points(), live_row_ids(&dataset));
    answers_like_search();
}

#[test]
fn qdrant_holds_the_live_rows_answers_like_exact_search_and_follows_the_corpus() {
    let qdrant = MockQdrant::start();
    qdrant.lock().key = Some(QDRANT_KEY.into());
    let points = || -> BTreeMap<u64, String> {
        let s = qdrant.lock();
        let physical = s.aliases.get("chunks").expect("the alias").clone();
        s.collections[&physical]
            .points
            .iter()
            .map(|(id, (_, payload))| match id {
                crate::util::qdrant::PointId::Num(n) => (*n, payload["doc"].as_str().expect("doc").to_owned()),
                other => panic!("point id {other:?} is not a row id"),
            })
            .collect()
    };
    qdrant_follows_the_corpus(&qdrant.url, points);

    let s = qdrant.lock();
    // One physical collection and its companion are left; the alias points at the newest.
    let mut names: Vec<&String> = s.collections.keys().collect();
    names.sort();
    let physical = s.aliases["chunks"].clone();
    assert_eq!(names, [&physical, &format!("{physical}__tars_docs")], "the old collections are deleted");
    let c = &s.collections[&physical];
    assert_eq!((c.hnsw_m, c.indexed.as_slice()), (Some(16), &["doc".to_owned()][..]), "HNSW on after the load");
    let (_, payload) = c.points.values().find(|(_, p)| p["doc"] == "d2").expect("d2");
    assert_eq!((payload["lang"].as_str(), payload["year"].as_i64()), (Some("fr"), Some(2002)), "{payload:?}");
    assert!(payload["modified"].is_string() && payload["text"].is_string(), "{payload:?}");
}

#[test]
fn qdrant_retries_what_may_pass_and_refuses_a_wrong_key_or_a_foreign_collection() {
    let qdrant = MockQdrant::start();
    let (_mock, _scratch, _input, dataset) = embedded();

    qdrant.lock().fail_upserts = 2;
    let out = report(&export_qdrant(&qdrant.url, &dataset, &[]));
    assert_eq!(out["rows_written"], live_row_ids(&dataset).len() as u64, "{out}");
    assert_eq!(qdrant.lock().fail_upserts, 0, "two 503s, retried");

    qdrant.lock().key = Some("another-key".into());
    let refused = export_qdrant(&qdrant.url, &dataset, &["--full"]);
    assert_eq!(refused.code, 2, "{}", refused.all_output());
    assert!(refused.stderr.contains("401") && refused.stderr.contains("API key"), "{}", refused.stderr);

    qdrant.lock().key = None;
    qdrant.lock().collections.insert("theirs".into(), Default::default());
    let foreign =
        run(cli(None).args(["export", "qdrant"]).arg(&dataset).args(["--to", &qdrant.url, "--collection", "theirs"]));
    assert_eq!(foreign.code, 2, "{}", foreign.all_output());
    assert!(foreign.stderr.contains("theirs is a collection"), "{}", foreign.stderr);
    assert!(qdrant.lock().collections["theirs"].points.is_empty(), "left alone");
}

/// Against a real Qdrant, when `QDRANT_URL` names one (with `QDRANT_API_KEY` if it wants a key): the same flow.
#[test]
fn qdrant_live_when_qdrant_url_is_set() {
    let Ok(url) = std::env::var("QDRANT_URL") else {
        eprintln!("skipped: QDRANT_URL is not set");
        return;
    };
    let points = || -> BTreeMap<u64, String> {
        let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().expect("runtime");
        rt.block_on(async {
            let mut found = BTreeMap::new();
            let mut offset = serde_json::Value::Null;
            loop {
                let mut body = json!({ "limit": 1000, "with_payload": ["doc"], "with_vector": false });
                if !offset.is_null() {
                    body["offset"] = offset.clone();
                }
                let page: serde_json::Value = reqwest::Client::new()
                    .post(format!("{url}/collections/chunks/points/scroll"))
                    .header("api-key", std::env::var("QDRANT_API_KEY").unwrap_or_default())
                    .json(&body)
                    .send()
                    .await
                    .expect("scroll")
                    .json()
                    .await
                    .expect("JSON");
                for p in page["result"]["points"].as_array().expect("points") {
                    found.insert(p["id"].as_u64().expect("id"), p["payload"]["doc"].as_str().expect("doc").to_owned());
                }
                offset = page["result"]["next_page_offset"].clone();
                if offset.is_null() {
                    return found;
                }
            }
        })
    };
    qdrant_follows_the_corpus(&url, points);
}
