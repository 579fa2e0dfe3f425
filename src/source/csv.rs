//! CSV and TSV input: a header row naming the fields, then one document per row, streamed. A row that does not
//! parse is skipped with its line; the rest of the file is read.

use std::collections::VecDeque;
use std::fs::File;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use super::meta::{self, RecordMapping, Value};
use super::{DocMeta, Document, FileStat, Format, Origin, SkipReason, SourceItem, TextFormat};

pub(super) struct CsvReader {
    reader: csv::Reader<Lines<File>>,
    path: PathBuf,
    name: String,
    format: Format,
    mapping: RecordMapping,
    headers: Vec<String>,
    text_column: usize,
    id_column: Option<usize>,
    stat: Option<FileStat>,
    record: csv::ByteRecord,
    pending: VecDeque<SourceItem>,
    done: bool,
    bytes_read: Arc<AtomicU64>,
    /// The reader's byte position when progress was last counted.
    counted: u64,
}

impl CsvReader {
    /// Opens the file and reads its header. A header without the text or id column makes the file one item saying
    /// so (not an error: the file is what it is).
    pub(super) fn open(
        path: &Path,
        name: &str,
        mapping: &RecordMapping,
        format: Format,
        bytes_read: Arc<AtomicU64>,
    ) -> std::io::Result<Box<dyn Iterator<Item = SourceItem> + Send>> {
        let file = File::open(path)?;
        let stat = file.metadata().ok().map(|m| FileStat::of(&m));
        let tsv = format == Format::Tsv;
        let mut reader = csv::ReaderBuilder::new()
            .delimiter(if tsv { b'\t' } else { b',' })
            // TSV (IANA) has no quoting: a quote is part of the text.
            .quoting(!tsv)
            .has_headers(true)
            .flexible(false)
            .from_reader(Lines::new(file));
        let not_read = |message: String| super::table_not_read(path, message);
        let headers: Vec<String> = match reader.byte_headers() {
            // A spreadsheet's "CSV UTF-8" starts with a byte-order mark, which is not part of the first name.
            Ok(h) => h
                .iter()
                .enumerate()
                .map(|(i, f)| {
                    let f = if i == 0 { f.strip_prefix(b"\xEF\xBB\xBF").unwrap_or(f) } else { f };
                    String::from_utf8_lossy(f).trim().to_owned()
                })
                .collect(),
            Err(e) => return into_io(e).map(|message| not_read(format!("the header row does not parse: {message}"))),
        };
        if headers.iter().all(String::is_empty) {
            return Ok(not_read("no header row (an empty file)".into()));
        }
        let column = |field: &str| headers.iter().position(|h| h == field);
        let columns = || headers.iter().map(|h| format!("{h:?}")).collect::<Vec<_>>().join(", ");
        let Some(text_column) = column(&mapping.text_field) else {
            let message =
                format!("no column {:?} for the text (columns: {}); see --text-field", mapping.text_field, columns());
            return Ok(not_read(message));
        };
        let id_column = match &mapping.id_field {
            Some(field) => match column(field) {
                Some(c) => Some(c),
                None => {
                    return Ok(not_read(format!(
                        "no column {field:?} for the id (columns: {}); see --id-field",
                        columns()
                    )));
                }
            },
            None => None,
        };
        Ok(Box::new(Self {
            reader,
            path: path.to_path_buf(),
            name: name.to_owned(),
            format,
            mapping: mapping.clone(),
            headers,
            text_column,
            id_column,
            stat,
            record: csv::ByteRecord::new(),
            pending: VecDeque::new(),
            done: false,
            bytes_read,
            counted: 0,
        }))
    }

    fn row(&mut self, line: u64) -> Vec<SourceItem> {
        let origin = Origin::line(self.path.clone(), line);
        let mut values = Vec::with_capacity(self.record.len());
        for (i, field) in self.record.iter().enumerate() {
            match std::str::from_utf8(field) {
                Ok(text) => values.push(text),
                Err(_) => {
                    let column = self.headers.get(i).map_or("?", String::as_str);
                    let reason = SkipReason::BadRow(format!("field {column:?} is not valid UTF-8"));
                    return vec![SourceItem::SkippedRecord { origin, reason }];
                }
            }
        }
        let text = values[self.text_column].to_owned();
        let doc = match self.id_column {
            None => format!("{}:{line}", self.name),
            Some(c) if values[c].trim().is_empty() => {
                let reason = SkipReason::MissingField(format!("the id field {:?} is empty", self.headers[c]));
                return vec![SourceItem::SkippedRecord { origin, reason }];
            }
            Some(c) => values[c].trim().to_owned(),
        };
        let headers = &self.headers;
        // An empty CSV field is null, not an empty string: that is how spreadsheets and pandas mean it.
        let record = headers
            .iter()
            .zip(&values)
            .map(|(h, v)| (h.as_str(), if v.is_empty() { Value::Null } else { Value::String((*v).to_owned()) }));
        let (fields, problems) = self.mapping.collect(record);
        let document = Document {
            doc,
            text,
            format: TextFormat::Plain,
            origin,
            stat: self.stat,
            meta: DocMeta { source: Some(self.format), fields, ..DocMeta::default() },
        };
        meta::record_items(document, problems).collect()
    }
}

/// A CSV error that is an I/O error becomes one (the file's other records are kept); any other is a message.
fn into_io(error: csv::Error) -> std::io::Result<String> {
    if error.is_io_error() {
        if let csv::ErrorKind::Io(e) = error.into_kind() {
            return Err(e);
        }
        return Ok("I/O error".into());
    }
    Ok(error.to_string())
}

/// Counts the lines of what it reads, so a record's line in the file is known from its byte offset (csv's own
/// line count takes a run of line breaks for one).
struct Lines<R> {
    inner: R,
    offset: u64,
    /// Where each line break read but not yet passed by a record starts, and its length (`\n` or `\r\n`): csv
    /// reads ahead of the record it returns.
    breaks: VecDeque<(u64, u8)>,
    /// Line breaks before the first of `breaks`.
    passed: u64,
    last_was_cr: bool,
}

impl<R> Lines<R> {
    fn new(inner: R) -> Self {
        Self { inner, offset: 0, breaks: VecDeque::new(), passed: 0, last_was_cr: false }
    }

    /// The 1-based line where the record at byte `at` begins; offsets must not decrease from one call to the next.
    /// csv starts a record after the previous one's line break, so blank lines before it are skipped here.
    fn line_at(&mut self, mut at: u64) -> u64 {
        while let Some(&(start, len)) = self.breaks.front() {
            let end = start + u64::from(len);
            if start > at {
                break;
            }
            if end > at {
                // A blank line before the record, or `at` inside a `\r\n` that ended the previous one.
                at = end;
            }
            self.breaks.pop_front();
            self.passed += 1;
        }
        self.passed + 1
    }
}

impl<R: std::io::Read> std::io::Read for Lines<R> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        let n = self.inner.read(buf)?;
        for (i, &byte) in buf[..n].iter().enumerate() {
            if byte == b'\n' {
                let cr = if i == 0 { self.last_was_cr } else { buf[i - 1] == b'\r' };
                let at = self.offset + i as u64;
                self.breaks.push_back(if cr { (at - 1, 2) } else { (at, 1) });
            }
        }
        if n > 0 {
            self.last_was_cr = buf[n - 1] == b'\r';
        }
        self.offset += n as u64;
        Ok(n)
    }
}

impl Iterator for CsvReader {
    type Item = SourceItem;

    fn next(&mut self) -> Option<SourceItem> {
        loop {
            if let Some(item) = self.pending.pop_front() {
                return Some(item);
            }
            if self.done {
                return None;
            }
            let read = self.reader.read_byte_record(&mut self.record);
            let at = self.reader.position().byte();
            self.bytes_read.fetch_add(at.saturating_sub(self.counted), Ordering::Relaxed);
            self.counted = at;
            match read {
                Ok(false) => return None,
                Ok(true) => {
                    let line = self.record.position().map_or(0, |p| self.reader.get_mut().line_at(p.byte()));
                    if self.record.len() == 1 && self.record.get(0).is_some_and(|f| f.is_empty()) {
                        continue; // a blank line
                    }
                    let items = self.row(line);
                    self.pending.extend(items);
                }
                Err(error) => {
                    let line = error.position().map(|p| self.reader.get_mut().line_at(p.byte()));
                    match into_io(error) {
                        Err(error) => {
                            self.done = true;
                            return Some(SourceItem::ReadError { path: self.path.clone(), name: None, error });
                        }
                        Ok(message) => {
                            let origin = match line {
                                Some(line) => Origin::line(self.path.clone(), line),
                                None => Origin::file(self.path.clone()),
                            };
                            return Some(SourceItem::SkippedRecord { origin, reason: SkipReason::BadRow(message) });
                        }
                    }
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::source::{FileSource, MetadataSpec, SourceOptions};

    fn read(name: &str, content: &str, mapping: RecordMapping) -> Vec<SourceItem> {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join(name);
        std::fs::write(&path, content).expect("write");
        FileSource::new(SourceOptions { inputs: vec![path], records: mapping, ..Default::default() })
            .expect("valid")
            .collect()
    }

    #[test]
    fn rows_become_documents_and_bad_rows_are_named_by_line() {
        let spec = MetadataSpec::parse(&["year:int64", "lang"]).expect("spec");
        let mapping = RecordMapping::new("body".into(), Some("key".into()), spec, Default::default());
        let csv = "key,body,year,lang\n\
                   a,\"first, with a comma\",2020,en\n\
                   b,second,soon,\n\
                   c,too,many,fields,here\n\
                   \n\
                   d,\"multi\nline\",1999,fr\n";
        let items = read("t.csv", csv, mapping);
        let docs: Vec<(&str, &str, u64)> = items
            .iter()
            .filter_map(|i| match i {
                SourceItem::Document(d) => Some((d.doc.as_str(), d.text.as_str(), d.origin.position()?)),
                _ => None,
            })
            .collect();
        assert_eq!(docs, [("a", "first, with a comma", 2), ("b", "second", 3), ("d", "multi\nline", 6)]);
        let year = |doc: &str| {
            items.iter().find_map(|i| match i {
                SourceItem::Document(d) if d.doc == doc => {
                    Some(d.meta.fields.get("year").cloned().unwrap_or(Value::Null))
                }
                _ => None,
            })
        };
        assert_eq!(year("a"), Some(Value::Int64(2020)));
        assert_eq!(year("b"), Some(Value::Null));
        let skipped: Vec<String> = items
            .iter()
            .filter_map(|i| match i {
                SourceItem::SkippedRecord { origin, reason } => Some(format!("{}: {reason}", origin.position()?)),
                _ => None,
            })
            .collect();
        assert_eq!(skipped.len(), 1, "{skipped:?}");
        assert!(skipped[0].starts_with("4: "), "{skipped:?}");
        let problems: Vec<String> = items
            .iter()
            .filter_map(|i| match i {
                SourceItem::FieldProblem { origin, problem } => Some(format!("{origin}: {problem}")),
                _ => None,
            })
            .collect();
        assert_eq!(problems.len(), 1, "{problems:?}");
        assert!(problems[0].ends_with(r#"t.csv:3: field "year" is "soon", not int64: stored as null"#), "{problems:?}");
    }

    #[test]
    fn a_byte_order_mark_is_not_part_of_the_first_column_name() {
        let items = read("x.csv", "\u{feff}text,id\nhello,1\n", RecordMapping::default());
        assert!(items.iter().any(|i| matches!(i, SourceItem::Document(d) if d.text == "hello")), "{items:?}");
    }

    #[test]
    fn lines_are_counted_with_crlf_and_blank_lines() {
        let items =
            read("w.csv", "text,id\r\nx,1\r\n\r\n\r\ny,2\r\n\"multi\r\nline\",3\r\nz,4\r\n", RecordMapping::default());
        let lines: Vec<u64> = items
            .iter()
            .filter_map(|i| match i {
                SourceItem::Document(d) => d.origin.position(),
                _ => None,
            })
            .collect();
        assert_eq!(lines, [2, 5, 6, 8]);
    }

    #[test]
    fn a_missing_text_column_is_named_with_the_columns_there_are() {
        let items = read("t.tsv", "title\tbody\nx\ty\n", RecordMapping::default());
        let [SourceItem::NotRead { reason, .. }] = &items[..] else { panic!("{items:?}") };
        assert_eq!(reason.to_string(), r#"no column "text" for the text (columns: "title", "body"); see --text-field"#);
        let items = read("t.tsv", "text\tnote\n\"quoted\ttab\n", RecordMapping::default());
        let texts: Vec<&str> = items
            .iter()
            .filter_map(|i| match i {
                SourceItem::Document(d) => Some(d.text.as_str()),
                _ => None,
            })
            .collect();
        assert_eq!(texts, ["\"quoted"], "TSV has no quoting");
    }
}
