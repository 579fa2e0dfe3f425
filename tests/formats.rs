//! Corpora as users have them: CSV, TSV, Parquet, HTML and PDF inputs and their metadata, through the CLI against the
//! mock server, read back with arrow.

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::Arc;

use arrow::array::{
    Array, ArrayRef, AsArray, Float64Array, Int32Array, Int64Array, ListArray, RecordBatch, StringArray,
    TimestampMillisecondArray,
};
use arrow::datatypes::{DataType, Field, Float64Type, Int64Type, Schema, TimeUnit, TimestampMicrosecondType};
use parquet::arrow::ArrowWriter;
use parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder;

use crate::util::mock::MockServer;
use crate::util::{cli, corpus, json_lines, live_rows, manifest, pdf, run};

fn report(run: &crate::util::Run) -> serde_json::Value {
    assert!(matches!(run.code, 0 | 1), "exit {}:\n{}", run.code, run.all_output());
    json_lines(&run.stdout).pop().unwrap_or_else(|| panic!("no JSON report on stdout:\n{}", run.all_output()))
}

fn embed(mock: &MockServer, input: &Path, dataset: &Path, args: &[&str]) -> crate::util::Run {
    let mut cmd = cli(Some(&mock.base()));
    cmd.arg("embed").arg(input).arg("--out").arg(dataset).arg("--json").args(args);
    run(&mut cmd)
}

/// The documents table, one batch.
fn docs_table(dataset: &Path) -> RecordBatch {
    let relative = manifest(dataset)["docs_file"].as_str().expect("docs_file").to_owned();
    let file = std::fs::File::open(dataset.join(relative)).expect("docs table");
    let reader = ParquetRecordBatchReaderBuilder::try_new(file).expect("parquet").build().expect("reader");
    let batches: Vec<RecordBatch> = reader.map(|b| b.expect("batch")).collect();
    arrow::compute::concat_batches(&batches[0].schema(), &batches).expect("concat")
}

/// Column `name` of the documents table as strings by document name (nulls as "null"), whatever its type.
fn column(table: &RecordBatch, name: &str) -> BTreeMap<String, String> {
    let docs = table.column_by_name("doc").expect("doc").as_string::<i32>();
    let values = table.column_by_name(name).unwrap_or_else(|| panic!("no column {name}: {:?}", table.schema()));
    let shown = arrow::compute::cast(values, &DataType::Utf8).expect("cast");
    let shown = shown.as_string::<i32>();
    (0..table.num_rows())
        .map(|i| (docs.value(i).to_owned(), if shown.is_null(i) { "null".into() } else { shown.value(i).to_owned() }))
        .collect()
}

fn type_of(table: &RecordBatch, name: &str) -> DataType {
    table.schema().field_with_name(name).expect("field").data_type().clone()
}

#[test]
fn csv_rows_become_documents_with_typed_metadata_and_bad_rows_are_named() {
    let mock = MockServer::start();
    let input = corpus(&[(
        "papers.csv",
        "key,body,year,score,open,published,venue\n\
         p1,Vector search with graphs,2019,4.5,true,2019-05-01,VLDB\n\
         p2,\"Quantised vectors, small and fast\",2021,3.25,false,2021-07-10T12:30:00Z,SIGMOD\n\
         p3,Broken row with,too,many,fields,here,x,y\n\
         p4,Filters before ranking,unknown,2,yes,2022-01-01,\n",
    )]);
    let dataset = input.path().join("ds");
    let args = [
        "--text-field",
        "body",
        "--id-field",
        "key",
        "--metadata",
        "year:int64",
        "--metadata",
        "score:float64",
        "--metadata",
        "open:bool",
        "--metadata",
        "published:timestamp",
        "--metadata",
        "venue",
    ];
    let out = embed(&mock, &input.path().join("papers.csv"), &dataset, &args);
    let report = report(&out);
    assert_eq!(out.code, 0, "a bad row is reported, not a failure:\n{}", out.all_output());
    assert_eq!(report["documents"]["new"], 3, "{report:#}");
    assert_eq!(report["documents"]["records_skipped"], 1);
    let skipped = report["records_skipped"][0]["path"].as_str().expect("named").to_owned();
    assert!(skipped.ends_with("papers.csv:4"), "{skipped}");
    assert_eq!(report["documents"]["metadata_nulls"], 1, "p4's year is not an integer");
    let null = &report["metadata_nulls"][0];
    assert!(null["path"].as_str().expect("path").ends_with("papers.csv:5"), "{null}");
    assert!(null["reason"].as_str().expect("reason").contains("\"year\""), "{null}");

    let texts: Vec<String> = live_rows(&dataset).into_iter().map(|r| r.text).collect();
    assert!(texts.contains(&"Quantised vectors, small and fast".to_owned()), "{texts:?}");
    let table = docs_table(&dataset);
    assert_eq!(type_of(&table, "year"), DataType::Int64);
    assert_eq!(type_of(&table, "score"), DataType::Float64);
    assert_eq!(type_of(&table, "open"), DataType::Boolean);
    assert_eq!(type_of(&table, "published"), DataType::Timestamp(TimeUnit::Microsecond, Some(Arc::from("UTC"))));
    assert_eq!(type_of(&table, "venue"), DataType::Utf8);
    let year = column(&table, "year");
    assert_eq!((year["p1"].as_str(), year["p4"].as_str()), ("2019", "null"));
    let published = table.column_by_name("published").expect("published").as_primitive::<TimestampMicrosecondType>();
    let docs = column(&table, "doc");
    let p2 = docs.keys().position(|d| d == "p2").expect("p2");
    assert_eq!(published.value(p2), 1_625_920_200_000_000, "2021-07-10T12:30:00Z");
    assert_eq!(column(&table, "venue")["p4"], "null", "an empty CSV field is null");
    assert_eq!(column(&table, "format")["p1"], "csv");
    let types = &manifest(&dataset)["metadata"];
    assert_eq!(types["year"], "int64", "{types}");
    assert_eq!(types["published"], "timestamp");

    // search --json carries the metadata with each hit.
    let found = run(cli(Some(&mock.base())).arg("search").arg(&dataset).arg("Filters before ranking").arg("--json"));
    assert_eq!(found.code, 0, "{}", found.all_output());
    let hits = json_lines(&found.stdout);
    let p4 = hits.iter().find(|h| h["doc"] == "p4").expect("p4 is a hit");
    assert_eq!(p4["metadata"]["score"], 2.0);
    assert_eq!(p4["metadata"]["open"], true);
    assert_eq!(p4["metadata"]["year"], serde_json::Value::Null);
    assert_eq!(p4["metadata"]["published"], "2022-01-01T00:00:00Z");
    assert_eq!(p4["format"], "csv");
}

#[test]
fn a_clashing_or_malformed_metadata_field_is_an_error_at_start() {
    let mock = MockServer::start();
    let input = corpus(&[("a.jsonl", "{\"text\": \"one\"}\n")]);
    let dataset = input.path().join("ds");
    for (flag, expected) in [("title", "built-in column"), ("year:decimal", "FIELD:TYPE"), ("text", "built-in")] {
        let out = embed(&mock, &input.path().join("a.jsonl"), &dataset, &["--metadata", flag]);
        assert_eq!(out.code, 2, "{flag}: {}", out.all_output());
        assert!(out.stderr.contains("--metadata") && out.stderr.contains(expected), "{flag}: {}", out.stderr);
        assert!(!dataset.exists(), "nothing is written for a run that cannot start");
    }
    assert_eq!(mock.requests(), 0);
}

/// A Parquet file: ids, texts, typed columns and a list column.
fn write_parquet(path: &Path, rows: usize) {
    let schema = Arc::new(Schema::new(vec![
        Field::new("id", DataType::Int64, false),
        Field::new("body", DataType::Utf8, true),
        Field::new("year", DataType::Int32, true),
        Field::new("rating", DataType::Float64, true),
        Field::new("seen", DataType::Timestamp(TimeUnit::Millisecond, None), true),
        Field::new("tags", DataType::List(Arc::new(Field::new("item", DataType::Utf8, true))), true),
    ]));
    let ids: Vec<i64> = (0..rows as i64).collect();
    let bodies: Vec<Option<String>> =
        (0..rows).map(|i| (i != 3).then(|| format!("Row {i} is about subject{i} in plain words."))).collect();
    let tags = ListArray::from_iter_primitive::<arrow::datatypes::Int32Type, _, _>(
        (0..rows).map(|i| Some(vec![Some(i as i32)])),
    );
    // A list of strings is what the schema says; build it from the int list's offsets.
    let tags = ListArray::new(
        Arc::new(Field::new("item", DataType::Utf8, true)),
        tags.offsets().clone(),
        Arc::new(StringArray::from_iter_values((0..rows).map(|i| format!("t{i}")))),
        None,
    );
    let columns: Vec<ArrayRef> = vec![
        Arc::new(Int64Array::from(ids)),
        Arc::new(StringArray::from(bodies)),
        Arc::new(Int32Array::from_iter((0..rows).map(|i| Some(2000 + i as i32)))),
        Arc::new(Float64Array::from_iter((0..rows).map(|i| Some(i as f64 / 2.0)))),
        Arc::new(TimestampMillisecondArray::from_iter((0..rows).map(|i| Some(1_700_000_000_000 + i as i64)))),
        Arc::new(tags),
    ];
    let batch = RecordBatch::try_new(Arc::clone(&schema), columns).expect("batch");
    let props = parquet::file::properties::WriterProperties::builder().set_max_row_group_row_count(Some(4)).build();
    let mut writer =
        ArrowWriter::try_new(std::fs::File::create(path).expect("create"), schema, Some(props)).expect("writer");
    writer.write(&batch).expect("write");
    writer.close().expect("close");
}

#[test]
fn parquet_rows_keep_their_column_types_and_a_list_column_is_refused_by_name() {
    let mock = MockServer::start();
    let input = tempfile::tempdir().expect("tempdir");
    let file = input.path().join("table.parquet");
    write_parquet(&file, 10);
    let dataset = input.path().join("ds");
    let args = ["--text-field", "body", "--id-field", "id", "--metadata", "*", "--metadata", "tags"];
    let out = embed(&mock, &file, &dataset, &args);
    let report = report(&out);
    assert_eq!(report["documents"]["new"], 9, "one row has a null text: {report:#}");
    let skipped = report["records_skipped"][0]["path"].as_str().expect("named").to_owned();
    assert!(skipped.ends_with("table.parquet row 4"), "{skipped}");
    let refused = &report["metadata_nulls"][0];
    assert!(refused["reason"].as_str().expect("reason").contains("\"tags\" is a column of List"), "{refused}");
    let table = docs_table(&dataset);
    assert_eq!(type_of(&table, "year"), DataType::Int64, "int32 carried as int64");
    assert_eq!(type_of(&table, "rating"), DataType::Float64);
    assert_eq!(type_of(&table, "seen"), DataType::Timestamp(TimeUnit::Microsecond, Some(Arc::from("UTC"))));
    let year = table.column_by_name("year").expect("year").as_primitive::<Int64Type>();
    let rating = table.column_by_name("rating").expect("rating").as_primitive::<Float64Type>();
    let docs = column(&table, "doc");
    let at = docs.keys().position(|d| d == "7").expect("row 7 named by its id");
    assert_eq!((year.value(at), rating.value(at)), (2007, 3.5));
    assert_eq!(column(&table, "tags")["7"], "null");
    assert_eq!(column(&table, "format")["7"], "parquet");
}

#[test]
fn html_is_embedded_as_text_with_its_title_and_structure() {
    let mock = MockServer::start();
    let page = "<html><head><title>Release notes</title><style>body { margin: 0 }</style>\
                <script>trackVisitor();</script></head><body><h1>Version 2</h1>\
                <p>Faster <b>search</b> and <a href=\"https://example.com/x\">filters</a>.</p>\
                <h2>Upgrading</h2><p>Run the migration.</p></body></html>";
    let input = corpus(&[("site/notes.html", page), ("site/bare.htm", "<p>No title here</p><h3>But a heading</h3>")]);
    let dataset = input.path().join("ds");
    let out = embed(&mock, &input.path().join("site"), &dataset, &[]);
    report(&out);
    let texts: String = mock.texts().join("\n");
    for absent in ["<", "margin", "trackVisitor", "https://"] {
        assert!(!texts.contains(absent), "{absent:?} was sent: {texts}");
    }
    assert!(texts.contains("# Version 2") && texts.contains("Faster **search** and filters."), "{texts}");
    let table = docs_table(&dataset);
    let titles = column(&table, "title");
    assert_eq!(titles["notes.html"], "Release notes");
    assert_eq!(titles["bare.htm"], "But a heading");
    assert_eq!(column(&table, "format")["notes.html"], "html");
}

#[test]
fn pdf_pages_are_known_to_their_chunks_and_a_scanned_pdf_is_skipped_with_a_reason() {
    let mock = MockServer::start();
    let input = tempfile::tempdir().expect("tempdir");
    let pages = [
        "First page about alpha particles and more words to fill a chunk or two of text",
        "Second page about beta decay with its own words for another chunk of text here",
        "Third page about gamma rays closing the document with a last few words of text",
    ];
    std::fs::write(input.path().join("physics.pdf"), pdf(&pages, Some("Radiation notes"))).expect("write");
    std::fs::write(input.path().join("scan.pdf"), pdf(&[], None)).expect("write");
    let dataset = input.path().join("ds");
    let out = embed(&mock, input.path(), &dataset, &["--chunk-tokens", "20", "--chunk-overlap", "0"]);
    let report = report(&out);
    let not_read = &report["not_read"];
    let scan =
        not_read.as_array().expect("not_read").iter().find(|e| e["path"].as_str().unwrap_or("").ends_with("scan.pdf"));
    let scan = scan.unwrap_or_else(|| panic!("scan.pdf not reported: {report:#}"));
    assert!(scan["reason"].as_str().expect("reason").contains("no pages"), "{scan}");

    let rows = live_rows(&dataset);
    assert!(rows.len() >= 3, "{rows:?}");
    let pages_of = crate::util::pages(&dataset);
    for row in &rows {
        let page = pages_of[&row.row_id].expect("every PDF chunk has a page");
        let word = ["alpha", "beta", "gamma"][page as usize - 1];
        assert!(
            row.text.contains(word) || !["alpha", "beta", "gamma"].iter().any(|w| row.text.contains(w)),
            "chunk on page {page} reads {:?}",
            row.text
        );
    }
    let gamma = rows.iter().find(|r| r.text.contains("gamma")).expect("gamma chunk");
    assert_eq!(pages_of[&gamma.row_id], Some(3));
    let table = docs_table(&dataset);
    assert_eq!(column(&table, "title")["physics.pdf"], "Radiation notes");
    assert_eq!(column(&table, "format")["physics.pdf"], "pdf");
}

#[test]
fn format_flags_override_extensions_per_glob() {
    let mock = MockServer::start();
    let input = corpus(&[
        ("logs/a.txt", "{\"text\": \"record one\", \"id\": \"r1\"}\n{\"text\": \"record two\", \"id\": \"r2\"}\n"),
        ("notes/b.txt", "{\"text\": \"stays plain\"}\n"),
    ]);
    let out = tempfile::tempdir().expect("tempdir");
    let dataset = out.path().join("ds");
    // Read as text first; the files then age (so their size and mtime would let a run skip them) and a rule reads
    // logs/*.txt as JSONL: the files are read again, because they are read as another format now.
    report(&embed(&mock, input.path(), &dataset, &["--id-field", "id"]));
    let past = std::time::SystemTime::now() - std::time::Duration::from_secs(3600);
    for file in ["logs/a.txt", "notes/b.txt"] {
        let file = std::fs::File::options().write(true).open(input.path().join(file)).expect("open");
        file.set_modified(past).expect("mtime");
    }
    report(&embed(&mock, input.path(), &dataset, &["--id-field", "id"]));
    let out = embed(&mock, input.path(), &dataset, &["--format", "logs/*.txt=jsonl", "--id-field", "id"]);
    let report = report(&out);
    assert_eq!(report["documents"]["new"], 2, "{report:#}");
    assert_eq!(report["documents"]["unchanged"], 1, "notes/b.txt is read as text as before: {report:#}");
    let docs: Vec<String> = column(&docs_table(&dataset), "doc").into_keys().collect();
    assert_eq!(docs, ["notes/b.txt", "r1", "r2"]);
    let bad = embed(&mock, input.path(), &dataset, &["--format", "docx"]);
    assert_eq!(bad.code, 2, "{}", bad.all_output());
    assert!(bad.stderr.contains("--format") && bad.stderr.contains("\"docx\""), "{}", bad.stderr);
}

#[test]
fn a_metadata_only_change_is_written_without_embedding_and_then_nothing_is_sent() {
    let mock = MockServer::start();
    let record =
        |id: &str, stars: i64| serde_json::json!({"id": id, "text": format!("Document {id} text."), "stars": stars});
    let write = |dir: &Path, stars_b: i64| {
        let lines = [record("a", 1), record("b", stars_b), record("c", 3)].map(|r| r.to_string()).join("\n");
        std::fs::write(dir.join("c.jsonl"), lines + "\n").expect("write");
    };
    let input = tempfile::tempdir().expect("tempdir");
    write(input.path(), 2);
    let dataset = input.path().join("ds");
    let file = input.path().join("c.jsonl");
    let args = ["--id-field", "id", "--metadata", "stars"];
    report(&embed(&mock, &file, &dataset, &args));
    let sent = mock.requests();
    assert!(sent > 0);

    write(input.path(), 5);
    let changed = report(&embed(&mock, &file, &dataset, &args));
    assert_eq!(mock.requests(), sent, "a metadata change re-embeds nothing");
    assert_eq!(changed["documents"]["metadata_updated"], 1, "{changed:#}");
    assert_eq!(column(&docs_table(&dataset), "stars")["b"], "5");

    let again = report(&embed(&mock, &file, &dataset, &args));
    assert_eq!(mock.requests(), sent);
    assert_eq!(again["documents"]["metadata_updated"], 0, "{again:#}");

    // Adding a field and then removing every one rewrite the metadata, and embed nothing.
    let added = report(&embed(&mock, &file, &dataset, &["--id-field", "id", "--metadata", "*"]));
    assert_eq!(mock.requests(), sent);
    assert_eq!(added["documents"]["metadata_updated"], 0, "the field set changed, the values did not: {added:#}");
    assert_eq!(column(&docs_table(&dataset), "stars")["c"], "3");
    assert_eq!(manifest(&dataset)["metadata_spec"], serde_json::json!(["*"]), "the new field set is recorded");
    report(&embed(&mock, &file, &dataset, &["--id-field", "id"]));
    assert_eq!(mock.requests(), sent);
    assert!(docs_table(&dataset).column_by_name("stars").is_none(), "the column is gone");
    assert!(manifest(&dataset).get("metadata").is_none());
}

#[test]
fn pipeline_files_choose_formats_and_metadata_per_input_with_errors_at_their_line() {
    let mock = MockServer::start();
    let input = corpus(&[("logs/a.txt", "{\"text\": \"from a log\", \"id\": \"l1\", \"stars\": 4}\n")]);
    let job = |format: &str| {
        format!(
            "[input]\npaths = [{:?}]\nid_field = \"id\"\nformat = {format}\nmetadata = [\"stars:int64\"]\n\n\
             [output]\ndataset = \"ds\"\n",
            input.path().display().to_string()
        )
    };
    let file = input.path().join("job.toml");
    std::fs::write(&file, job("[\"logs/*.txt=jsonl\"]")).expect("write");
    let out = run(cli(Some(&mock.base())).arg("run").arg(&file).arg("--json"));
    report(&out);
    let dataset = input.path().join("ds");
    assert_eq!(column(&docs_table(&dataset), "stars")["l1"], "4");
    assert_eq!(manifest(&dataset)["metadata_spec"], serde_json::json!(["stars:int64"]));

    std::fs::write(&file, job("\"rtf\"")).expect("write");
    let bad = run(cli(Some(&mock.base())).arg("run").arg(&file));
    assert_eq!(bad.code, 2, "{}", bad.all_output());
    assert!(bad.stderr.contains("job.toml:4: input.format") && bad.stderr.contains("\"rtf\""), "{}", bad.stderr);
}

#[test]
fn a_fields_type_is_fixed_once_per_run_and_records_lacking_a_field_are_no_change() {
    let mock = MockServer::start();
    let input = corpus(&[
        ("a.jsonl", "{\"id\": \"a1\", \"text\": \"first\", \"code\": \"A7\", \"n\": 1}\n"),
        ("b.jsonl", "{\"id\": \"b1\", \"text\": \"second\", \"code\": 17, \"n\": 2.5, \"extra\": true}\n"),
    ]);
    let out = tempfile::tempdir().expect("tempdir");
    let dataset = out.path().join("ds");
    let args = ["--id-field", "id", "--metadata", "*"];
    let first = report(&embed(&mock, input.path(), &dataset, &args));
    let table = docs_table(&dataset);
    // The first value seen in the run fixes the type, whichever file it is in; JSON integers widen to float.
    assert_eq!(type_of(&table, "code"), DataType::Utf8);
    assert_eq!(column(&table, "code")["b1"], "17");
    assert_eq!(type_of(&table, "n"), DataType::Float64);
    assert_eq!(column(&table, "n")["a1"], "1.0");
    assert_eq!(first["documents"]["metadata_nulls"], 0, "{first:#}");
    // a1 has no `extra`: null in the table, and no change when read again.
    let again = report(&embed(&mock, input.path(), &dataset, &args));
    assert_eq!(again["documents"]["metadata_updated"], 0, "{again:#}");
    // (The second run may publish: the files' stat became trustworthy. The third has nothing to record.)
    let third = report(&embed(&mock, input.path(), &dataset, &args));
    assert_eq!(third["generation"], again["generation"], "nothing changed, nothing published: {third:#}");
}
