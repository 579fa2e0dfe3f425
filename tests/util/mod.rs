//! Helpers shared by the integration tests: the mock server, running the CLI, reading datasets back.

#![allow(dead_code)]

pub mod mock;

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

/// One row of a dataset, read back with arrow.
#[derive(Debug, Clone)]
pub struct Row {
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

pub fn manifest(dataset: &Path) -> serde_json::Value {
    let bytes = std::fs::read(dataset.join("manifest.json")).expect("manifest.json");
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

pub fn read_rows(dataset: &Path) -> Vec<Row> {
    let mut rows = Vec::new();
    for path in data_files(dataset) {
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
            for i in 0..batch.num_rows() {
                let v = emb.value(i);
                rows.push(Row {
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
            }
        }
    }
    rows
}

/// Parses `--json` output lines.
pub fn json_lines(text: &str) -> Vec<serde_json::Value> {
    text.lines().filter(|l| !l.trim().is_empty()).map(|l| serde_json::from_str(l).expect("JSON line")).collect()
}
