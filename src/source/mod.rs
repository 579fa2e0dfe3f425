//! Stage 1: where documents come from.
//!
//! A [`Source`] yields documents one at a time (and notes about what it skipped), so a corpus never has to fit in
//! memory. [`FileSource`] walks files and directories and reads each file by its [`Format`]: plain text and
//! Markdown whole; JSONL, CSV/TSV and Parquet as one document per record ([`RecordMapping`]); HTML and PDF as their
//! text; images as documents whose text a vision model writes later (see [`crate::caption`]).

mod csv;
mod files;
mod html;
mod jsonl;
pub mod meta;
mod parquet;
mod pdf;

use std::fmt;
use std::path::PathBuf;

pub use files::{FileSource, FormatRule, ScanTotals, SourceOptions};
pub use meta::{FieldType, Fields, MetadataSpec, RecordMapping, Value};

/// The key a file is known by between runs: its absolute, normalised path, however the input was spelled (`docs`,
/// `./docs`, `/srv/docs`), since it decides what an unreadable folder keeps.
pub fn file_key(path: &std::path::Path) -> String {
    let absolute = std::path::absolute(path).unwrap_or_else(|_| path.to_path_buf());
    crate::config::normal_path(&absolute).to_string_lossy().into_owned()
}

/// How a document's text is structured, which decides how it is split.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TextFormat {
    Plain,
    Markdown,
}

/// How a file is read: chosen by its extension, or by `--format` / the pipeline file's `input.format`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Format {
    Text,
    Markdown,
    Jsonl,
    Csv,
    Tsv,
    Parquet,
    Html,
    Pdf,
    /// PNG, JPEG, GIF or WebP: read as a document without text, which the caption stage writes.
    Image,
}

impl Format {
    pub const ALL: [Format; 9] = [
        Format::Text,
        Format::Markdown,
        Format::Jsonl,
        Format::Csv,
        Format::Tsv,
        Format::Parquet,
        Format::Html,
        Format::Pdf,
        Format::Image,
    ];

    pub fn name(self) -> &'static str {
        match self {
            Format::Text => "text",
            Format::Markdown => "markdown",
            Format::Jsonl => "jsonl",
            Format::Csv => "csv",
            Format::Tsv => "tsv",
            Format::Parquet => "parquet",
            Format::Html => "html",
            Format::Pdf => "pdf",
            Format::Image => "image",
        }
    }

    pub fn parse(name: &str) -> Option<Format> {
        let name = name.trim().to_ascii_lowercase();
        Format::ALL.into_iter().find(|f| f.name() == name).or(match name.as_str() {
            "txt" | "plain" => Some(Format::Text),
            "md" => Some(Format::Markdown),
            "ndjson" => Some(Format::Jsonl),
            "htm" => Some(Format::Html),
            _ => None,
        })
    }

    /// The format a file's extension names; anything unknown is text (binary files are recognised and skipped).
    pub fn of_path(path: &std::path::Path) -> Format {
        let extension = path.extension().and_then(|e| e.to_str()).map(str::to_ascii_lowercase).unwrap_or_default();
        match extension.as_str() {
            "md" | "markdown" | "mdx" => Format::Markdown,
            "jsonl" | "ndjson" => Format::Jsonl,
            "csv" => Format::Csv,
            "tsv" | "tab" => Format::Tsv,
            "parquet" | "pq" => Format::Parquet,
            "html" | "htm" | "xhtml" => Format::Html,
            "pdf" => Format::Pdf,
            "png" | "jpg" | "jpeg" | "webp" | "gif" => Format::Image,
            _ => Format::Text,
        }
    }

    /// Formats whose files hold one document per record.
    pub fn is_records(self) -> bool {
        matches!(self, Format::Jsonl | Format::Csv | Format::Tsv | Format::Parquet)
    }
}

impl fmt::Display for Format {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// One document to be chunked and embedded.
#[derive(Debug, Clone)]
pub struct Document {
    /// The document's name in the dataset: the path relative to its input root, or the record's id.
    pub doc: String,
    pub text: String,
    pub format: TextFormat,
    /// Where it was read from, for messages.
    pub origin: Origin,
    /// Size and mtime of the file it came from, when read from a file.
    pub stat: Option<FileStat>,
    /// What is known of it besides its text.
    pub meta: DocMeta,
}

impl Document {
    /// blake3 of what decides the document's chunks, hex: its text, and for a paged document where its pages start.
    pub fn content_hash(&self) -> String {
        let mut hasher = blake3::Hasher::new();
        hasher.update(self.text.as_bytes());
        if !self.meta.pages.is_empty() {
            hasher.update(b"\0pages");
            for start in &self.meta.pages {
                hasher.update(&start.to_le_bytes());
            }
        }
        hasher.finalize().to_hex().to_string()
    }

    /// A document of plain text or Markdown read from nowhere in particular (tests, benches, `retry-failed`).
    pub fn new(doc: impl Into<String>, text: impl Into<String>, format: TextFormat) -> Self {
        let doc = doc.into();
        Document {
            origin: Origin::file(PathBuf::from(&doc)),
            doc,
            text: text.into(),
            format,
            stat: None,
            meta: DocMeta::default(),
        }
    }
}

/// A document's built-in metadata and its record's metadata fields.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct DocMeta {
    /// The format it was read as.
    pub source: Option<Format>,
    /// Markdown's first heading, HTML's `<title>` (or first heading), a PDF's document title.
    pub title: Option<String>,
    /// For a PDF: the byte offset in `text` where each page starts (the first at 0), so each chunk knows its page.
    pub pages: Vec<u64>,
    /// The record's metadata fields (JSONL, CSV, Parquet).
    pub fields: Fields,
}

impl DocMeta {
    /// The 1-based page holding byte `offset` of the text, for a paged document.
    pub fn page_at(&self, offset: u64) -> Option<u32> {
        if self.pages.is_empty() {
            return None;
        }
        Some(self.pages.partition_point(|&start| start <= offset).max(1) as u32)
    }
}

/// What an incremental run compares to decide whether a file may have changed without reading it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FileStat {
    pub size: u64,
    /// Modification time, nanoseconds since the Unix epoch (0 when the platform does not say).
    pub mtime_ns: i64,
}

impl FileStat {
    pub fn of(metadata: &std::fs::Metadata) -> Self {
        let mtime_ns = metadata
            .modified()
            .ok()
            .and_then(|t| t.duration_since(std::time::UNIX_EPOCH).ok())
            .map_or(0, |d| i64::try_from(d.as_nanos()).unwrap_or(i64::MAX));
        Self { size: metadata.len(), mtime_ns }
    }
}

/// Decides, from a file's key, stat and the format it would be read as, that it is unchanged since the last run and
/// need not be read (a file read as another format now, by a new `--format` rule, is read again).
pub type UnchangedFilter = Box<dyn Fn(&str, FileStat, Format) -> bool + Send>;

/// A file, or a record of one: a line of a JSONL or CSV file, a row of a Parquet file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Origin {
    pub path: PathBuf,
    pub at: Option<At>,
}

/// Where in a file a record is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum At {
    /// 1-based line.
    Line(u64),
    /// 1-based row (Parquet).
    Row(u64),
}

impl Origin {
    pub fn file(path: impl Into<PathBuf>) -> Self {
        Self { path: path.into(), at: None }
    }

    pub fn line(path: impl Into<PathBuf>, line: u64) -> Self {
        Self { path: path.into(), at: Some(At::Line(line)) }
    }

    pub fn row(path: impl Into<PathBuf>, row: u64) -> Self {
        Self { path: path.into(), at: Some(At::Row(row)) }
    }

    /// The line or row number, when the origin is a record.
    pub fn position(&self) -> Option<u64> {
        self.at.map(|(At::Line(n) | At::Row(n))| n)
    }
}

impl fmt::Display for Origin {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.at {
            Some(At::Line(line)) => write!(f, "{}:{line}", self.path.display()),
            Some(At::Row(row)) => write!(f, "{} row {row}", self.path.display()),
            None => write!(f, "{}", self.path.display()),
        }
    }
}

/// Why an entry of the input was not read, or a record of it not turned into a document. None of these is an
/// error: the entry is what it is (binary, a link to a directory, ...), and a document read from it before is
/// deleted like one whose file is gone.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SkipReason {
    /// The file looks binary (it has NUL bytes).
    Binary,
    /// The file is larger than the per-file limit.
    TooLarge { bytes: u64, limit: u64 },
    /// A symbolic link to a directory, and links are not followed (`--follow`).
    LinkToDirectory,
    /// A symbolic link that leads back to a directory above it (with `--follow`).
    LinkLoop,
    /// A FIFO, socket or device.
    NotRegular,
    /// A JSONL line is not a JSON object.
    InvalidJson(String),
    /// A record lacks the text field, or it is not a string.
    MissingField(String),
    /// A CSV row that does not parse (unbalanced quotes, invalid UTF-8, a different number of fields).
    BadRow(String),
    /// A file of a table format that cannot be read as asked (no text column, a column of the wrong type).
    Table(String),
    /// A PDF without text to extract (scanned pages, images only), or one the extractor cannot read.
    NoText(String),
}

impl fmt::Display for SkipReason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            SkipReason::Binary => write!(f, "binary file (contains NUL bytes)"),
            SkipReason::TooLarge { bytes, limit } => {
                write!(f, "file is {bytes} bytes, over the {limit}-byte limit")
            }
            SkipReason::LinkToDirectory => write!(f, "symbolic link to a directory (pass --follow to read it)"),
            SkipReason::LinkLoop => write!(f, "symbolic link loop"),
            SkipReason::NotRegular => write!(f, "not a regular file (FIFO, socket or device)"),
            SkipReason::InvalidJson(e) => write!(f, "not a JSON object: {e}"),
            SkipReason::MissingField(e) | SkipReason::BadRow(e) | SkipReason::Table(e) | SkipReason::NoText(e) => {
                write!(f, "{e}")
            }
        }
    }
}

/// Entries left out by the user's own rules, only counted.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Excluded {
    /// Matched `--exclude`, or not `--include`.
    Glob,
    /// A hidden file or directory (its name starts with `.`) inside a directory input.
    Hidden,
}

/// Something a source produced.
#[derive(Debug)]
pub enum SourceItem {
    Document(Document),
    /// A file the [`UnchangedFilter`] said is unchanged; it was not read. Its path as [`Origin`] shows it.
    Unchanged(String),
    /// An image, not read because no caption model was set: what was read from it before is kept.
    ImageNotCaptioned(PathBuf),
    /// Invalid UTF-8 was replaced with U+FFFD; the document follows as usual.
    LossyUtf8(Origin),
    /// An entry that was not read, for the reason given.
    NotRead {
        origin: Origin,
        reason: SkipReason,
    },
    /// A file or directory that could not be read (permissions, an I/O error, a share gone, a link whose target
    /// is missing): what was read from it before must be kept, not taken for deleted. For a directory, that is
    /// everything under it.
    ReadError {
        path: PathBuf,
        /// The dataset name the entry has (its path relative to the input directory), when it has one: documents
        /// named so, or below it, are kept too.
        name: Option<String>,
        error: std::io::Error,
    },
    /// One record was skipped.
    SkippedRecord {
        origin: Origin,
        reason: SkipReason,
    },
    /// A metadata field of a record could not be carried as asked: it is null (the document follows as usual).
    FieldProblem {
        origin: Origin,
        problem: meta::FieldProblem,
    },
    Excluded(Excluded),
}

/// A table file (CSV, TSV, Parquet) that cannot be read as asked, as the one item its reader yields.
pub(super) fn table_not_read(path: &std::path::Path, message: String) -> Box<dyn Iterator<Item = SourceItem> + Send> {
    let item = SourceItem::NotRead { origin: Origin::file(path), reason: SkipReason::Table(message) };
    Box::new(std::iter::once(item))
}

/// Stage boundary: anything that yields [`SourceItem`]s, lazily, from a blocking thread.
pub trait Source: Iterator<Item = SourceItem> + Send {}

impl<T: Iterator<Item = SourceItem> + Send> Source for T {}

/// A bad input path or glob: a usage error, reported before any work.
#[derive(Debug, thiserror::Error)]
pub enum SourceError {
    #[error("input {path} does not exist")]
    MissingInput { path: PathBuf },
    #[error("invalid glob {glob:?}")]
    Glob {
        glob: String,
        #[source]
        source: globset::Error,
    },
    #[error("{0:?}: expected FORMAT or GLOB=FORMAT, FORMAT one of {formats}", formats = format_names())]
    Format(String),
}

fn format_names() -> String {
    Format::ALL.iter().map(|f| f.name()).collect::<Vec<_>>().join(", ")
}
