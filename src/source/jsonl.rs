//! JSONL input: one document per line, streamed so a file of any size reads in constant memory.

use std::fs::File;
use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};

use serde_json::Value;

use super::files::{SourceOptions, decode_utf8};
use super::{Document, Origin, SkipReason, SourceItem, TextFormat};

pub(super) struct JsonlReader {
    reader: BufReader<File>,
    path: PathBuf,
    name: String,
    line: u64,
    text_field: String,
    id_field: Option<String>,
    buf: Vec<u8>,
    stat: Option<super::FileStat>,
    /// A document waiting behind its lossy-UTF-8 note.
    pending: Option<SourceItem>,
    /// A read failed: nothing more comes from this file.
    done: bool,
}

impl JsonlReader {
    pub(super) fn open(path: &Path, name: &str, options: &SourceOptions) -> std::io::Result<Self> {
        let file = File::open(path)?;
        let stat = file.metadata().ok().map(|m| super::FileStat::of(&m));
        Ok(Self {
            reader: BufReader::with_capacity(256 * 1024, file),
            stat,
            path: path.to_path_buf(),
            name: name.to_owned(),
            line: 0,
            text_field: options.text_field.clone(),
            id_field: options.id_field.clone(),
            buf: Vec::new(),
            pending: None,
            done: false,
        })
    }

    fn origin(&self) -> Origin {
        Origin { path: self.path.clone(), line: Some(self.line) }
    }

    fn skip_item(&self, reason: SkipReason) -> SourceItem {
        SourceItem::SkippedRecord { origin: self.origin(), reason }
    }

    fn parse_line(&self, text: &str) -> SourceItem {
        let value: Value = match serde_json::from_str(text) {
            Ok(value) => value,
            Err(err) => return self.skip_item(SkipReason::InvalidJson(err.to_string())),
        };
        let Value::Object(record) = value else {
            return self.skip_item(SkipReason::InvalidJson("the line is JSON but not an object".into()));
        };
        let body = match record.get(&self.text_field) {
            Some(Value::String(s)) => s.clone(),
            Some(other) => {
                return self.skip_item(SkipReason::MissingField(format!(
                    "field {:?} is {}, not a string",
                    self.text_field,
                    json_kind(other)
                )));
            }
            None => return self.skip_item(SkipReason::MissingField(format!("no field {:?}", self.text_field))),
        };
        let doc = match &self.id_field {
            None => format!("{}:{}", self.name, self.line),
            Some(field) => match record.get(field) {
                Some(Value::String(s)) if !s.is_empty() => s.clone(),
                Some(Value::Number(n)) => n.to_string(),
                Some(other) => {
                    return self.skip_item(SkipReason::MissingField(format!(
                        "id field {field:?} is {}, not a string or number",
                        json_kind(other)
                    )));
                }
                None => return self.skip_item(SkipReason::MissingField(format!("no id field {field:?}"))),
            },
        };
        SourceItem::Document(Document {
            doc,
            text: body,
            format: TextFormat::Plain,
            origin: self.origin(),
            stat: self.stat,
        })
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
        if let Some(item) = self.pending.take() {
            return Some(item);
        }
        if self.done {
            return None;
        }
        loop {
            self.buf.clear();
            match self.reader.read_until(b'\n', &mut self.buf) {
                Ok(0) => return None,
                Ok(_) => {}
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
            let item = self.parse_line(&text);
            if lossy && matches!(item, SourceItem::Document(_)) {
                self.pending = Some(item);
                return Some(SourceItem::LossyUtf8(self.origin()));
            }
            return Some(item);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::source::FileSource;

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
            text_field: "body".into(),
            id_field: Some("id".into()),
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
                SourceItem::SkippedRecord { origin, .. } => origin.line,
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
