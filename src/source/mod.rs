//! Stage 1: where documents come from.
//!
//! A [`Source`] yields documents one at a time (and notes about what it skipped), so a corpus never has to fit in
//! memory. [`FileSource`] walks files and directories and reads plain text and JSONL.

mod files;
mod jsonl;

use std::fmt;
use std::path::PathBuf;

pub use files::{FileSource, SourceOptions};

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

/// One document to be chunked and embedded.
#[derive(Debug, Clone)]
pub struct Document {
    /// The document's name in the dataset: the path relative to its input root, or the JSONL record's id.
    pub doc: String,
    pub text: String,
    pub format: TextFormat,
    /// Where it was read from, for messages.
    pub origin: Origin,
    /// Size and mtime of the file it came from, when read from a file.
    pub stat: Option<FileStat>,
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

/// Decides, from a file's path and stat, that it is unchanged since the last run and need not be read.
pub type UnchangedFilter = Box<dyn Fn(&str, FileStat) -> bool + Send>;

/// A file, or a line of a JSONL file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Origin {
    pub path: PathBuf,
    pub line: Option<u64>,
}

impl fmt::Display for Origin {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.line {
            Some(line) => write!(f, "{}:{line}", self.path.display()),
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
    /// A JSONL record lacks the text field, or it is not a string.
    MissingField(String),
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
            SkipReason::MissingField(e) => write!(f, "{e}"),
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
    /// One JSONL record was skipped.
    SkippedRecord {
        origin: Origin,
        reason: SkipReason,
    },
    Excluded(Excluded),
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
}
