//! Walking inputs: files and directories, include/exclude globs, text versus binary.

use std::collections::VecDeque;
use std::fs::File;
use std::io::Read;
use std::path::{Path, PathBuf};

use globset::{Glob, GlobSet, GlobSetBuilder};

use super::jsonl::JsonlReader;
use super::{Document, FileStat, Origin, SkipReason, SourceError, SourceItem, TextFormat, UnchangedFilter, file_key};

/// Files larger than this are skipped rather than read whole into memory (JSONL files are streamed, so they have no
/// limit).
pub const DEFAULT_MAX_FILE_BYTES: u64 = 256 * 1024 * 1024;

/// How many leading bytes are checked for NUL when deciding whether a file is binary (as git and ripgrep do).
const BINARY_SNIFF_BYTES: usize = 8192;

/// What to read and how.
#[derive(Debug, Clone)]
pub struct SourceOptions {
    pub inputs: Vec<PathBuf>,
    pub include: Vec<String>,
    pub exclude: Vec<String>,
    /// JSONL field holding the text.
    pub text_field: String,
    /// JSONL field holding the document id; without it, records are named `<file>:<line>`.
    pub id_field: Option<String>,
    pub max_file_bytes: u64,
}

impl Default for SourceOptions {
    fn default() -> Self {
        Self {
            inputs: Vec::new(),
            include: Vec::new(),
            exclude: Vec::new(),
            text_field: "text".to_owned(),
            id_field: None,
            max_file_bytes: DEFAULT_MAX_FILE_BYTES,
        }
    }
}

/// Reads every input, walking directories recursively in a stable (sorted) order.
///
/// Hidden files and directories (names starting with `.`) inside a directory input are not read, as in ripgrep;
/// name one as an input to read it.
pub struct FileSource {
    pending_roots: VecDeque<PathBuf>,
    walk: Option<Walk>,
    jsonl: Option<JsonlReader>,
    include: Option<GlobSet>,
    exclude: Option<GlobSet>,
    options: SourceOptions,
    /// Items produced while handling one file but not yet returned (a lossy-UTF-8 note precedes its document).
    queued: VecDeque<SourceItem>,
    unchanged: Option<UnchangedFilter>,
}

struct Walk {
    root: PathBuf,
    entries: Box<dyn Iterator<Item = walkdir::Result<walkdir::DirEntry>> + Send>,
}

impl FileSource {
    /// Checks every input exists and every glob parses; reads nothing yet.
    pub fn new(options: SourceOptions) -> Result<Self, SourceError> {
        for input in &options.inputs {
            if !input.exists() {
                return Err(SourceError::MissingInput { path: input.clone() });
            }
        }
        Ok(Self {
            pending_roots: options.inputs.iter().cloned().collect(),
            walk: None,
            jsonl: None,
            include: build_globset(&options.include)?,
            exclude: build_globset(&options.exclude)?,
            options,
            queued: VecDeque::new(),
            unchanged: None,
        })
    }

    /// Files `filter` says are unchanged are not read; an [`SourceItem::Unchanged`] stands in for them.
    pub fn with_unchanged_filter(mut self, filter: UnchangedFilter) -> Self {
        self.unchanged = Some(filter);
        self
    }

    fn selected(&self, relative: &Path) -> bool {
        if let Some(exclude) = &self.exclude
            && exclude.is_match(relative)
        {
            return false;
        }
        match &self.include {
            Some(include) => include.is_match(relative),
            None => true,
        }
    }

    /// The next file to read, as (path on disk, name in the dataset).
    fn next_file(&mut self) -> Option<(PathBuf, String)> {
        loop {
            if let Some(walk) = &mut self.walk {
                match walk.entries.next() {
                    Some(Ok(entry)) => {
                        if !entry.file_type().is_file() {
                            continue;
                        }
                        let relative = entry.path().strip_prefix(&walk.root).unwrap_or(entry.path());
                        if self.selected(relative) {
                            let name = path_name(relative);
                            return Some((entry.into_path(), name));
                        }
                        continue;
                    }
                    Some(Err(err)) => {
                        let path = err.path().map(Path::to_path_buf).unwrap_or_else(|| walk.root.clone());
                        self.queued.push_back(SourceItem::SkippedFile {
                            origin: Origin { path, line: None },
                            reason: SkipReason::Unreadable(io_message(&err)),
                        });
                        return None;
                    }
                    None => self.walk = None,
                }
            }
            let root = self.pending_roots.pop_front()?;
            if root.is_dir() {
                let entries = walkdir::WalkDir::new(&root)
                    .sort_by_file_name()
                    .into_iter()
                    .filter_entry(|e| e.depth() == 0 || !is_hidden(e.file_name()));
                self.walk = Some(Walk { root, entries: Box::new(entries) });
            } else {
                // A file named on the command line is read even when the globs would not select it: the user
                // asked for it by name. Its dataset name is the path as given.
                let name = path_name(&root);
                return Some((root, name));
            }
        }
    }

    fn read_file(&mut self, path: PathBuf, name: String) {
        let origin = Origin { path: path.clone(), line: None };
        if let Some(filter) = &self.unchanged
            && let Ok(metadata) = std::fs::metadata(&path)
        {
            let key = file_key(&path);
            if filter(&key, FileStat::of(&metadata)) {
                self.queued.push_back(SourceItem::Unchanged(key));
                return;
            }
        }
        if is_jsonl(&path) {
            match JsonlReader::open(&path, &name, &self.options) {
                Ok(reader) => self.jsonl = Some(reader),
                Err(err) => self
                    .queued
                    .push_back(SourceItem::SkippedFile { origin, reason: SkipReason::Unreadable(err.to_string()) }),
            }
            return;
        }
        match read_text_file(&path, self.options.max_file_bytes) {
            Ok((text, lossy, stat)) => {
                if lossy {
                    self.queued.push_back(SourceItem::LossyUtf8(origin.clone()));
                }
                self.queued.push_back(SourceItem::Document(Document {
                    doc: name,
                    text,
                    format: format_of(&path),
                    origin,
                    stat: Some(stat),
                }));
            }
            Err(reason) => self.queued.push_back(SourceItem::SkippedFile { origin, reason }),
        }
    }
}

impl Iterator for FileSource {
    type Item = SourceItem;

    fn next(&mut self) -> Option<SourceItem> {
        loop {
            if let Some(item) = self.queued.pop_front() {
                return Some(item);
            }
            if let Some(reader) = &mut self.jsonl {
                match reader.next() {
                    Some(item) => return Some(item),
                    None => self.jsonl = None,
                }
            }
            match self.next_file() {
                Some((path, name)) => self.read_file(path, name),
                // A walk error queues a skip and returns None; only stop when nothing is queued either.
                None if self.queued.is_empty() && self.walk.is_none() && self.pending_roots.is_empty() => {
                    return None;
                }
                None => {}
            }
        }
    }
}

fn build_globset(globs: &[String]) -> Result<Option<GlobSet>, SourceError> {
    if globs.is_empty() {
        return Ok(None);
    }
    let mut builder = GlobSetBuilder::new();
    for glob in globs {
        let parsed = Glob::new(glob).map_err(|source| SourceError::Glob { glob: glob.clone(), source })?;
        builder.add(parsed);
    }
    builder.build().map(Some).map_err(|source| SourceError::Glob { glob: globs.join(", "), source })
}

fn is_hidden(name: &std::ffi::OsStr) -> bool {
    name.to_str().is_some_and(|n| n.starts_with('.') && n != "." && n != "..")
}

fn extension(path: &Path) -> String {
    path.extension().and_then(|e| e.to_str()).map(str::to_ascii_lowercase).unwrap_or_default()
}

fn is_jsonl(path: &Path) -> bool {
    matches!(extension(path).as_str(), "jsonl" | "ndjson")
}

fn format_of(path: &Path) -> TextFormat {
    match extension(path).as_str() {
        "md" | "markdown" | "mdx" => TextFormat::Markdown,
        _ => TextFormat::Plain,
    }
}

/// A dataset name for a path: forward slashes on every platform, so names are stable across machines.
fn path_name(path: &Path) -> String {
    let parts: Vec<String> = path
        .components()
        .filter(|c| !matches!(c, std::path::Component::CurDir))
        .map(|c| c.as_os_str().to_string_lossy().into_owned())
        .collect();
    parts.join("/")
}

fn io_message(err: &dyn std::error::Error) -> String {
    let mut message = err.to_string();
    let mut source = err.source();
    while let Some(inner) = source {
        message.push_str(": ");
        message.push_str(&inner.to_string());
        source = inner.source();
    }
    message
}

/// Reads a whole text file; `true` when invalid UTF-8 had to be replaced. The stat is taken before reading, so a
/// write during the read shows up as a change next time.
fn read_text_file(path: &Path, max_bytes: u64) -> Result<(String, bool, FileStat), SkipReason> {
    let mut file = File::open(path).map_err(|e| SkipReason::Unreadable(e.to_string()))?;
    let metadata = file.metadata().map_err(|e| SkipReason::Unreadable(e.to_string()))?;
    let stat = FileStat::of(&metadata);
    let len = metadata.len();
    if len > max_bytes {
        return Err(SkipReason::TooLarge { bytes: len, limit: max_bytes });
    }
    let mut bytes = Vec::with_capacity(len as usize);
    file.read_to_end(&mut bytes).map_err(|e| SkipReason::Unreadable(e.to_string()))?;
    if bytes[..bytes.len().min(BINARY_SNIFF_BYTES)].contains(&0) {
        return Err(SkipReason::Binary);
    }
    let (text, lossy) = decode_utf8(bytes);
    Ok((text, lossy, stat))
}

/// UTF-8 with invalid sequences replaced; `true` when any were. A UTF-8 byte-order mark is dropped.
pub(super) fn decode_utf8(mut bytes: Vec<u8>) -> (String, bool) {
    if bytes.starts_with(b"\xEF\xBB\xBF") {
        bytes.drain(..3);
    }
    match String::from_utf8(bytes) {
        Ok(text) => (text, false),
        Err(err) => (String::from_utf8_lossy(err.as_bytes()).into_owned(), true),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn collect(options: SourceOptions) -> Vec<SourceItem> {
        FileSource::new(options).expect("valid options").collect()
    }

    fn docs(items: &[SourceItem]) -> Vec<&str> {
        items
            .iter()
            .filter_map(|i| match i {
                SourceItem::Document(d) => Some(d.doc.as_str()),
                _ => None,
            })
            .collect()
    }

    #[test]
    fn walks_sorted_skips_hidden_and_binary_and_applies_globs() {
        let dir = tempfile::tempdir().expect("tempdir");
        let root = dir.path();
        std::fs::create_dir_all(root.join("sub")).expect("mkdir");
        std::fs::create_dir_all(root.join(".git")).expect("mkdir");
        std::fs::write(root.join("b.txt"), "bee").expect("write");
        std::fs::write(root.join("a.md"), "# A").expect("write");
        std::fs::write(root.join("sub/c.txt"), "sea").expect("write");
        std::fs::write(root.join(".git/config"), "hidden").expect("write");
        std::fs::write(root.join("img.png"), b"\x89PNG\0\0\0").expect("write");
        std::fs::write(root.join("bad.txt"), b"caf\xe9").expect("write");

        let items = collect(SourceOptions { inputs: vec![root.to_path_buf()], ..Default::default() });
        assert_eq!(docs(&items), ["a.md", "b.txt", "bad.txt", "sub/c.txt"]);
        assert!(items.iter().any(|i| matches!(i, SourceItem::SkippedFile { reason: SkipReason::Binary, origin } if origin.path.ends_with("img.png"))));
        assert!(items.iter().any(|i| matches!(i, SourceItem::LossyUtf8(o) if o.path.ends_with("bad.txt"))));
        let bad = items.iter().find_map(|i| match i {
            SourceItem::Document(d) if d.doc == "bad.txt" => Some(d.text.clone()),
            _ => None,
        });
        assert_eq!(bad.as_deref(), Some("caf\u{FFFD}"));

        let items = collect(SourceOptions {
            inputs: vec![root.to_path_buf()],
            include: vec!["*.txt".into()],
            exclude: vec!["sub/**".into()],
            ..Default::default()
        });
        assert_eq!(docs(&items), ["b.txt", "bad.txt"]);
    }

    #[test]
    fn missing_input_and_bad_glob_are_usage_errors() {
        let err = FileSource::new(SourceOptions { inputs: vec!["/no/such/dir".into()], ..Default::default() });
        assert!(matches!(err, Err(SourceError::MissingInput { .. })));
        let err = FileSource::new(SourceOptions { include: vec!["a/[".into()], ..Default::default() });
        assert!(matches!(err, Err(SourceError::Glob { .. })));
    }
}
