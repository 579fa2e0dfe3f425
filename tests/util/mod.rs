//! Helpers shared by the integration tests: the mock server, running the CLI, reading datasets back.

pub mod chat;
pub mod mock;
pub mod pg;
pub mod qdrant;
pub mod s3;

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use arrow::array::AsArray;
use arrow::datatypes::{Float32Type, UInt32Type, UInt64Type};
use parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder;

/// What a CLI run printed and returned.
#[derive(Debug)]
pub struct Run {
    pub code: i32,
    pub stdout: String,
    pub stderr: String,
}

impl Run {
    pub fn all_output(&self) -> String {
        format!("{}{}", self.stdout, self.stderr)
    }
}

impl From<Output> for Run {
    fn from(output: Output) -> Self {
        Run {
            code: output.status.code().unwrap_or(-1),
            stdout: String::from_utf8_lossy(&output.stdout).into_owned(),
            stderr: String::from_utf8_lossy(&output.stderr).into_owned(),
        }
    }
}

/// The CLI with the environment pointed at `base` (or with no API settings at all when `base` is None).
pub fn cli(base: Option<&str>) -> Command {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_tars-index"));
    cmd.env_remove("TARS_API_BASE").env_remove("TARS_API_KEY").env_remove("RUST_LOG");
    if let Some(base) = base {
        cmd.env("TARS_API_BASE", base).env("TARS_API_KEY", mock::KEY);
    }
    cmd
}

/// Whether the tests run as root, for whom file permissions do not apply.
pub fn is_root() -> bool {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| s.lines().find(|l| l.starts_with("Uid:")).map(|l| l.split_whitespace().nth(2) == Some("0")))
        .unwrap_or(false)
}

/// The CLI as [`cli`] makes it, but subject to file permissions: as root, started through `setpriv` without the
/// capabilities that let root read and search any directory, so a `chmod 000` directory is really unreadable.
pub fn cli_without_override(base: Option<&str>) -> Command {
    if !is_root() {
        return cli(base);
    }
    let mut cmd = Command::new("setpriv");
    cmd.args(["--bounding-set=-dac_override,-dac_read_search", "--"]).arg(env!("CARGO_BIN_EXE_tars-index"));
    cmd.env_remove("TARS_API_BASE").env_remove("TARS_API_KEY").env_remove("RUST_LOG");
    if let Some(base) = base {
        cmd.env("TARS_API_BASE", base).env("TARS_API_KEY", mock::KEY);
    }
    cmd
}

pub fn run(cmd: &mut Command) -> Run {
    let run: Run = cmd.output().expect("run tars-index").into();
    assert!(!run.all_output().contains(mock::KEY), "the API key leaked into the output:\n{}", run.all_output());
    run
}

/// Writes `files` (relative path, contents) under a new temp dir.
pub fn corpus(files: &[(&str, &str)]) -> tempfile::TempDir {
    let dir = tempfile::tempdir().expect("tempdir");
    for (name, text) in files {
        let path = dir.path().join(name);
        std::fs::create_dir_all(path.parent().expect("parent")).expect("mkdir");
        std::fs::write(path, text).expect("write corpus file");
    }
    dir
}

/// Moves the mtime of every file under `dir` an hour back, as if the corpus had been written long before the run.
/// A run trusts the stat of a file older than its own start (less a grace period, as git does with racily clean
/// files); a file written just before the run is read again by the next one, which then records its stat as
/// trusted: a new version. Tests of "an unchanged corpus publishes nothing" age their corpus first.
pub fn age(dir: &std::path::Path) {
    let past = std::time::SystemTime::now() - std::time::Duration::from_secs(3600);
    let mut pending = vec![dir.to_path_buf()];
    while let Some(dir) = pending.pop() {
        for entry in std::fs::read_dir(&dir).expect("read_dir") {
            let path = entry.expect("entry").path();
            if path.is_dir() {
                pending.push(path);
            } else {
                let file = std::fs::File::options().write(true).open(&path).expect("open");
                file.set_modified(past).expect("set mtime");
            }
        }
    }
}

/// One row of a dataset, read back with arrow.
#[derive(Debug, Clone)]
pub struct Row {
    pub row_id: u64,
    pub id: String,
    pub doc: String,
    pub chunk_index: u32,
    pub start: u64,
    pub end: u64,
    pub tokens: u32,
    pub text: String,
    pub hash: String,
    pub embedding: Vec<f32>,
}

/// The dataset's current manifest: `manifest.json`, or for object storage's layout (`file://`) the newest
/// `_versions/<generation>.json`.
pub fn manifest(dataset: &Path) -> serde_json::Value {
    let path = dataset.join("manifest.json");
    let path = if path.exists() {
        path
    } else {
        let mut versions: Vec<PathBuf> = std::fs::read_dir(dataset.join("_versions"))
            .expect("manifest.json or _versions/")
            .map(|e| e.expect("entry").path())
            .collect();
        versions.sort();
        versions.pop().expect("a version")
    };
    let bytes = std::fs::read(&path).expect("manifest");
    serde_json::from_slice(&bytes).expect("manifest is JSON")
}

pub fn data_files(dataset: &Path) -> Vec<PathBuf> {
    manifest(dataset)["files"]
        .as_array()
        .expect("files")
        .iter()
        .map(|f| dataset.join(f["path"].as_str().expect("path")))
        .collect()
}

/// Every stored row, dead ones included.
pub fn read_rows(dataset: &Path) -> Vec<Row> {
    let mut rows = Vec::new();
    let firsts: Vec<u64> = manifest(dataset)["files"]
        .as_array()
        .expect("files")
        .iter()
        .map(|f| f["first_row"].as_u64().unwrap_or(0))
        .collect();
    for (path, first) in data_files(dataset).into_iter().zip(firsts) {
        let mut next = first;
        let file = std::fs::File::open(&path).expect("open parquet");
        let reader = ParquetRecordBatchReaderBuilder::try_new(file).expect("parquet").build().expect("reader");
        for batch in reader {
            let batch = batch.expect("batch");
            let s = |n: &str| batch.column_by_name(n).expect(n).as_string::<i32>().clone();
            let (id, doc, text, hash) = (s("id"), s("doc"), s("text"), s("hash"));
            let u32c = |n: &str| batch.column_by_name(n).expect(n).as_primitive::<UInt32Type>().clone();
            let u64c = |n: &str| batch.column_by_name(n).expect(n).as_primitive::<UInt64Type>().clone();
            let (ci, tokens, start, end) = (u32c("chunk_index"), u32c("tokens"), u64c("start"), u64c("end"));
            let emb = batch.column_by_name("embedding").expect("embedding").as_fixed_size_list().clone();
            let physical = batch.column_by_name("row_id").map(|c| c.as_primitive::<UInt64Type>().clone());
            for i in 0..batch.num_rows() {
                if let Some(ids) = &physical {
                    assert_eq!(ids.value(i), next, "{}: the row_id column says what the manifest says", path.display());
                }
                let v = emb.value(i);
                rows.push(Row {
                    row_id: next,
                    id: id.value(i).to_owned(),
                    doc: doc.value(i).to_owned(),
                    chunk_index: ci.value(i),
                    start: start.value(i),
                    end: end.value(i),
                    tokens: tokens.value(i),
                    text: text.value(i).to_owned(),
                    hash: hash.value(i).to_owned(),
                    embedding: v.as_primitive::<Float32Type>().values().to_vec(),
                });
                next += 1;
            }
        }
    }
    rows
}

/// Parses `--json` output lines.
pub fn json_lines(text: &str) -> Vec<serde_json::Value> {
    text.lines().filter(|l| !l.trim().is_empty()).map(|l| serde_json::from_str(l).expect("JSON line")).collect()
}

/// Row ids the documents table lists (the live rows), with their documents.
pub fn live_row_ids(dataset: &Path) -> std::collections::BTreeMap<u64, String> {
    let m = manifest(dataset);
    let mut live = std::collections::BTreeMap::new();
    let Some(docs) = m["docs_file"].as_str() else { return live };
    let file = std::fs::File::open(dataset.join(docs)).expect("docs table");
    let reader = ParquetRecordBatchReaderBuilder::try_new(file).expect("parquet").build().expect("reader");
    for batch in reader {
        let batch = batch.expect("batch");
        let doc = batch.column_by_name("doc").expect("doc").as_string::<i32>().clone();
        let rows = batch.column_by_name("rows").expect("rows").as_list::<i32>().clone();
        for i in 0..batch.num_rows() {
            for id in rows.value(i).as_primitive::<UInt64Type>().values() {
                assert!(live.insert(*id, doc.value(i).to_owned()).is_none(), "row {id} listed twice");
            }
        }
    }
    live
}

/// The live rows, sorted by (doc, chunk_index): what a reader of the dataset should see.
pub fn live_rows(dataset: &Path) -> Vec<Row> {
    let live = live_row_ids(dataset);
    let mut rows: Vec<Row> = read_rows(dataset).into_iter().filter(|r| live.contains_key(&r.row_id)).collect();
    assert_eq!(rows.len(), live.len(), "the documents table lists rows that no data file holds");
    rows.sort_by(|a, b| (&a.doc, a.chunk_index).cmp(&(&b.doc, b.chunk_index)));
    rows
}

/// A live row without its row id: (doc, chunk index, start, end, text, chunk id, vector bits).
pub type RowContent = (String, u32, u64, u64, String, String, Vec<u32>);

/// Content of the live rows without row ids: equal for two datasets that hold the same chunks and vectors.
pub fn live_content(dataset: &Path) -> Vec<RowContent> {
    live_rows(dataset)
        .into_iter()
        .map(|r| {
            (r.doc, r.chunk_index, r.start, r.end, r.text, r.id, r.embedding.iter().map(|x| x.to_bits()).collect())
        })
        .collect()
}

/// Text hashes held by the dataset's embedding cache (its logs, read here by their documented layout: a header,
/// then records of length, 8-byte checksum, and a payload of rows, dimensions, length-prefixed hashes, vectors).
pub fn cached_hashes(dataset: &Path) -> std::collections::HashSet<String> {
    let mut out = std::collections::HashSet::new();
    let Ok(entries) = std::fs::read_dir(dataset.join("cache")) else { return out };
    let u32_at = |b: &[u8], at: usize| u32::from_le_bytes(b[at..at + 4].try_into().expect("4 bytes")) as usize;
    for entry in entries {
        let path = entry.expect("entry").path();
        if path.extension().is_none_or(|e| e != "log") {
            continue;
        }
        let bytes = std::fs::read(&path).expect("cache log");
        assert_eq!(&bytes[..16], b"tars-index-cch1\n", "{}", path.display());
        let mut at = 20 + u32_at(&bytes, 16);
        while at + 12 <= bytes.len() {
            let len = u32_at(&bytes, at);
            let Some(payload) = bytes.get(at + 12..at + 12 + len) else { break }; // a torn last record
            let rows = u32_at(payload, 0);
            let mut h = 8;
            for _ in 0..rows {
                let n = payload[h] as usize;
                out.insert(String::from_utf8(payload[h + 1..h + 1 + n].to_vec()).expect("utf-8 hash"));
                h += 1 + n;
            }
            at += 12 + len;
        }
    }
    out
}

pub fn text_hash(text: &str) -> String {
    blake3::hash(text.as_bytes()).to_hex().to_string()
}

/// The `page` of every stored row, by row id (None for rows without one).
pub fn pages(dataset: &Path) -> std::collections::HashMap<u64, Option<u32>> {
    let mut pages = std::collections::HashMap::new();
    for path in data_files(dataset) {
        let file = std::fs::File::open(&path).expect("data file");
        let reader = ParquetRecordBatchReaderBuilder::try_new(file).expect("parquet").build().expect("reader");
        for batch in reader {
            let batch = batch.expect("batch");
            let ids = batch.column_by_name("row_id").expect("row_id").as_primitive::<UInt64Type>().clone();
            let page = batch.column_by_name("page").expect("page").as_primitive::<UInt32Type>().clone();
            for i in 0..batch.num_rows() {
                pages.insert(ids.value(i), arrow::array::Array::is_valid(&page, i).then(|| page.value(i)));
            }
        }
    }
    pages
}

/// A PDF with one line of text per page (Courier, a standard font) and, when given, a document title. No pages at
/// all stands for a scan: nothing to extract.
pub fn pdf(pages: &[&str], title: Option<&str>) -> Vec<u8> {
    use lopdf::content::{Content, Operation};
    use lopdf::{Document, Object, Stream, dictionary};
    let mut doc = Document::with_version("1.5");
    let pages_id = doc.new_object_id();
    let font = doc.add_object(dictionary! { "Type" => "Font", "Subtype" => "Type1", "BaseFont" => "Courier" });
    let resources = doc.add_object(dictionary! { "Font" => dictionary! { "F1" => font } });
    let mut kids: Vec<Object> = Vec::new();
    for text in pages {
        let content = Content {
            operations: vec![
                Operation::new("BT", vec![]),
                Operation::new("Tf", vec!["F1".into(), 10.into()]),
                Operation::new("Td", vec![40.into(), 700.into()]),
                Operation::new("Tj", vec![Object::string_literal(*text)]),
                Operation::new("ET", vec![]),
            ],
        };
        let stream = doc.add_object(Stream::new(dictionary! {}, content.encode().expect("content")));
        kids.push(doc.add_object(dictionary! { "Type" => "Page", "Parent" => pages_id, "Contents" => stream }).into());
    }
    let count = kids.len() as i64;
    let tree = dictionary! {
        "Type" => "Pages", "Kids" => kids, "Count" => count, "Resources" => resources,
        "MediaBox" => vec![0.into(), 0.into(), 595.into(), 842.into()],
    };
    doc.objects.insert(pages_id, Object::Dictionary(tree));
    let catalog = doc.add_object(dictionary! { "Type" => "Catalog", "Pages" => pages_id });
    doc.trailer.set("Root", catalog);
    if let Some(title) = title {
        let info = doc.add_object(dictionary! { "Title" => Object::string_literal(title) });
        doc.trailer.set("Info", info);
    }
    let mut bytes = Vec::new();
    doc.save_to(&mut bytes).expect("save pdf");
    bytes
}
