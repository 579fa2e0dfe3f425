//! JSONL input: one document per line, streamed so a file of any size reads in constant memory.

use std::collections::VecDeque;
use std::fs::File;
use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use serde_json::Value;

use super::files::decode_utf8;
use super::meta::{self, RecordMapping};
use super::{DocMeta, Document, Format, Origin, SkipReason, SourceItem, TextFormat};

pub(super) struct JsonlReader {
    reader: BufReader<File>,
    path: PathBuf,
    name: String,
    line: u64,
    mapping: RecordMapping,
    buf: Vec<u8>,
    stat: Option<super::FileStat>,
    /// Items waiting behind the one returned (a lossy-UTF-8 note and metadata notes precede their document).
    pending: VecDeque<SourceItem>,
    /// A read failed: nothing more comes from this file.
    done: bool,
    bytes_read: Arc<AtomicU64>,
}

impl JsonlReader {
    pub(super) fn open(
        path: &Path,
        name: &str,
        mapping: &RecordMapping,
        bytes_read: Arc<AtomicU64>,
    ) -> std::io::Result<Self> {
        let file = File::open(path)?;
        let stat = file.metadata().ok().map(|m| super::FileStat::of(&m));
        Ok(Self {
            reader: BufReader::with_capacity(256 * 1024, file),
            stat,
            path: path.to_path_buf(),
            name: name.to_owned(),
            line: 0,
            mapping: mapping.clone(),
            buf: Vec::new(),
            pending: VecDeque::new(),
            done: false,
            bytes_read,
        })
    }

    fn origin(&self) -> Origin {
        Origin::line(self.path.clone(), self.line)
    }

    fn skip_item(&self, reason: SkipReason) -> SourceItem {
        SourceItem::SkippedRecord { origin: self.origin(), reason }
    }

    /// The items of one line: a skipped record, or its metadata notes and its document.
    fn parse_line(&mut self, text: &str) -> Vec<SourceItem> {
        let value: Value = match serde_json::from_str(text) {
            Ok(value) => value,
            Err(err) => return vec![self.skip_item(SkipReason::InvalidJson(err.to_string()))],
        };
        let Value::Object(record) = value else {
            return vec![self.skip_item(SkipReason::InvalidJson("the line is JSON but not an object".into()))];
        };
        let text_field = &self.mapping.text_field;
        let body = match record.get(text_field) {
            Some(Value::String(s)) => s.clone(),
            Some(other) => {
                let reason = format!("field {text_field:?} is {}, not a string", json_kind(other));
                return vec![self.skip_item(SkipReason::MissingField(reason))];
            }
            None => return vec![self.skip_item(SkipReason::MissingField(format!("no field {text_field:?}")))],
        };
        let doc = match &self.mapping.id_field {
            None => format!("{}:{}", self.name, self.line),
            Some(field) => match record.get(field) {
                Some(Value::String(s)) if !s.is_empty() => s.clone(),
                Some(Value::Number(n)) => n.to_string(),
                Some(other) => {
                    let reason = format!("id field {field:?} is {}, not a string or number", json_kind(other));
                    return vec![self.skip_item(SkipReason::MissingField(reason))];
                }
                None => return vec![self.skip_item(SkipReason::MissingField(format!("no id field {field:?}")))],
            },
        };
        let (fields, problems) = self.mapping.collect(record.iter().map(|(k, v)| (k.as_str(), meta::from_json(v))));
        let document = Document {
            doc,
            text: body,
            format: TextFormat::Plain,
            origin: self.origin(),
            stat: self.stat,
            meta: DocMeta { source: Some(Format::Jsonl), fields, ..DocMeta::default() },
        };
        meta::record_items(document, problems).collect()
    }
}

fn json_kind(value: &Value) -> &'static str {
    match value {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "an array",
        Value::Object(_) => "an object",
    }
}

impl Iterator for JsonlReader {
    type Item = SourceItem;

    fn next(&mut self) -> Option<SourceItem> {
        if let Some(item) = self.pending.pop_front() {
            return Some(item);
        }
        if self.done {
            return None;
        }
        loop {
            self.buf.clear();
            match self.reader.read_until(b'\n', &mut self.buf) {
                Ok(0) => return None,
                Ok(n) => {
                    self.bytes_read.fetch_add(n as u64, Ordering::Relaxed);
                }
                Err(error) => {
                    // The rest of the file is not reached: its records keep their previous version (a read error
                    // may persist, so this reader stops here).
                    self.done = true;
                    return Some(SourceItem::ReadError { path: self.path.clone(), name: None, error });
                }
            }
            self.line += 1;
            let (text, lossy) = decode_utf8(std::mem::take(&mut self.buf));
            if text.trim().is_empty() {
                continue;
            }
            let items = self.parse_line(&text);
            if lossy && items.iter().any(|i| matches!(i, SourceItem::Document(_))) {
                self.pending.push_back(SourceItem::LossyUtf8(self.origin()));
            }
            self.pending.extend(items);
            return self.pending.pop_front();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::source::{FileSource, SourceOptions};

    #[test]
    fn reads_records_and_names_bad_lines() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("corpus.jsonl");
        std::fs::write(
            &path,
            concat!(
                "{\"id\": \"alpha\", \"body\": \"first\"}\n",
                "\n",
                "not json\n",
                "{\"id\": 7, \"body\": \"second\"}\n",
                "{\"id\": \"x\", \"body\": 3}\n",
                "[1, 2]\n",
                "{\"body\": \"no id\"}\n",
            ),
        )
        .expect("write");
        let options = SourceOptions {
            inputs: vec![path],
            records: RecordMapping::new("body".into(), Some("id".into()), Default::default(), Default::default()),
            ..Default::default()
        };
        let items: Vec<SourceItem> = FileSource::new(options).expect("valid").collect();
        let docs: Vec<(String, String)> = items
            .iter()
            .filter_map(|i| match i {
                SourceItem::Document(d) => Some((d.doc.clone(), d.text.clone())),
                _ => None,
            })
            .collect();
        assert_eq!(docs, [("alpha".to_owned(), "first".to_owned()), ("7".to_owned(), "second".to_owned())]);
        let skipped_lines: Vec<u64> = items
            .iter()
            .filter_map(|i| match i {
                SourceItem::SkippedRecord { origin, .. } => origin.position(),
                _ => None,
            })
            .collect();
        assert_eq!(skipped_lines, [3, 5, 6, 7]);
    }

    #[test]
    fn records_without_id_field_are_named_by_line() {
        let dir = tempfile::tempdir().expect("tempdir");
        std::fs::write(dir.path().join("c.jsonl"), "{\"text\": \"a\"}\n{\"text\": \"b\"}\n").expect("write");
        let options = SourceOptions { inputs: vec![dir.path().to_path_buf()], ..Default::default() };
        let names: Vec<String> = FileSource::new(options)
            .expect("valid")
            .filter_map(|i| match i {
                SourceItem::Document(d) => Some(d.doc),
                _ => None,
            })
            .collect();
        assert_eq!(names, ["c.jsonl:1", "c.jsonl:2"]);
    }
}
