//! Walking inputs: files and directories, include/exclude globs, text versus binary.

use std::collections::VecDeque;
use std::fs::File;
use std::io::Read as _;
use std::path::{Path, PathBuf};

use globset::{Glob, GlobSet, GlobSetBuilder};

use super::jsonl::JsonlReader;
use super::meta::RecordMapping;
use super::{
    DocMeta, Document, Excluded, FileStat, Format, Origin, SkipReason, SourceError, SourceItem, TextFormat,
    UnchangedFilter, file_key,
};

/// Files larger than this are skipped rather than read whole into memory (record files, JSONL, CSV and Parquet,
/// are streamed, so they have no limit).
pub const DEFAULT_MAX_FILE_BYTES: u64 = 256 * 1024 * 1024;

/// `--format FORMAT` (every file) or `--format GLOB=FORMAT` (files whose path below their input matches): how a
/// file is read, instead of what its extension says. The first rule that matches wins.
#[derive(Debug, Clone)]
pub struct FormatRule {
    glob: Option<globset::GlobMatcher>,
    pub format: Format,
}

impl FormatRule {
    pub fn parse(text: &str) -> Result<Self, SourceError> {
        let bad = || SourceError::Format(text.to_owned());
        let (glob, format) = match text.rsplit_once('=') {
            Some((glob, format)) => {
                let glob = Glob::new(glob.trim())
                    .map_err(|source| SourceError::Glob { glob: glob.to_owned(), source })?
                    .compile_matcher();
                (Some(glob), format)
            }
            None => (None, text),
        };
        Ok(Self { glob, format: Format::parse(format).ok_or_else(bad)? })
    }

    fn matches(&self, relative: &Path) -> bool {
        self.glob.as_ref().is_none_or(|g| g.is_match(relative))
    }
}

/// How many leading bytes are checked for NUL when deciding whether a file is binary (as git and ripgrep do).
const BINARY_SNIFF_BYTES: usize = 8192;

/// What to read and how.
#[derive(Debug, Clone)]
pub struct SourceOptions {
    pub inputs: Vec<PathBuf>,
    pub include: Vec<String>,
    pub exclude: Vec<String>,
    /// How records (JSONL, CSV, Parquet) become documents: the text field, the id field (without one, records are
    /// named `<file>:<line>`, `<file>:<row>` for Parquet) and the metadata fields.
    pub records: RecordMapping,
    /// Formats chosen by hand, over the extension's.
    pub formats: Vec<FormatRule>,
    pub max_file_bytes: u64,
    /// Follow symbolic links to directories (`--follow`), as ripgrep's `-L`; loops are detected and reported.
    /// Links to files are always read.
    pub follow_links: bool,
    /// Images become documents for the caption stage (a caption model is set); otherwise they are skipped.
    pub images: bool,
    /// Directories never walked, wherever they are below an input: the dataset being written (a dataset inside
    /// its own input must not index its own files).
    pub skip_dirs: Vec<PathBuf>,
}

impl Default for SourceOptions {
    fn default() -> Self {
        Self {
            inputs: Vec::new(),
            include: Vec::new(),
            exclude: Vec::new(),
            records: RecordMapping::default(),
            formats: Vec::new(),
            max_file_bytes: DEFAULT_MAX_FILE_BYTES,
            follow_links: false,
            images: false,
            skip_dirs: Vec::new(),
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
    /// The record file being read (JSONL, CSV, Parquet), a record at a time.
    records: Option<Box<dyn Iterator<Item = SourceItem> + Send>>,
    include: Option<GlobSet>,
    exclude: Option<GlobSet>,
    options: SourceOptions,
    /// Items produced while handling one file but not yet returned (a lossy-UTF-8 note precedes its document).
    queued: VecDeque<SourceItem>,
    unchanged: Option<UnchangedFilter>,
    /// Entries the walk pruned (counted inside walkdir's filter).
    pruned: std::sync::Arc<Pruned>,
    /// Bytes of input read so far (or passed over unchanged), for the progress bar.
    bytes_read: std::sync::Arc<std::sync::atomic::AtomicU64>,
}

/// What a pre-scan found: files to read and their bytes (for the progress bar's total).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ScanTotals {
    pub files: u64,
    pub bytes: u64,
}

#[derive(Default)]
struct Pruned {
    hidden: std::sync::atomic::AtomicU64,
    /// Directories `--exclude` leaves out whole.
    excluded: std::sync::atomic::AtomicU64,
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
            records: None,
            include: build_globset(&options.include)?,
            exclude: build_globset(&options.exclude)?,
            options,
            queued: VecDeque::new(),
            unchanged: None,
            pruned: Default::default(),
            bytes_read: Default::default(),
        })
    }

    /// Counts the bytes read into `counter` as the source goes (a file's size once read whole, a record file's
    /// bytes as its records are).
    pub fn with_progress(mut self, counter: std::sync::Arc<std::sync::atomic::AtomicU64>) -> Self {
        self.bytes_read = counter;
        self
    }

    /// Walks the inputs as a run would, without reading any file: the files it would read and their bytes,
    /// reported to `seen` as it goes (directories of millions of files take a while to list). Stops early once
    /// `stop` is set.
    pub fn prescan(
        options: SourceOptions,
        stop: &std::sync::atomic::AtomicBool,
        mut seen: impl FnMut(ScanTotals),
    ) -> Result<ScanTotals, SourceError> {
        let mut source = FileSource::new(options)?;
        let mut totals = ScanTotals::default();
        while let Some(next) = source.next_entry() {
            if stop.load(std::sync::atomic::Ordering::Relaxed) {
                break;
            }
            if let Next::File(path, ..) = next {
                totals.files += 1;
                totals.bytes += std::fs::metadata(&path).map_or(0, |m| m.len());
                if totals.files % 256 == 0 {
                    seen(totals);
                }
            }
        }
        seen(totals);
        Ok(totals)
    }

    fn count_read(&self, bytes: u64) {
        self.bytes_read.fetch_add(bytes, std::sync::atomic::Ordering::Relaxed);
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

    /// The next file to read, or an item about an entry that will not be read.
    fn next_entry(&mut self) -> Option<Next> {
        loop {
            if let Some(walk) = &mut self.walk {
                match walk.entries.next() {
                    Some(Ok(entry)) => {
                        let relative = entry.path().strip_prefix(&walk.root).unwrap_or(entry.path()).to_path_buf();
                        if let Some(next) = self.classify(entry, &relative) {
                            return Some(next);
                        }
                        continue;
                    }
                    Some(Err(err)) => {
                        let root = walk.root.clone();
                        if let Some(next) = self.walk_error(err, &root) {
                            return Some(next);
                        }
                        continue;
                    }
                    None => self.walk = None,
                }
            }
            let root = self.pending_roots.pop_front()?;
            if root.is_dir() {
                let (pruned, exclude, top) = (std::sync::Arc::clone(&self.pruned), self.exclude.clone(), root.clone());
                let skip: Vec<PathBuf> = self.options.skip_dirs.iter().map(|d| absolute_normal(d)).collect();
                let entries = walkdir::WalkDir::new(&root)
                    .follow_links(self.options.follow_links)
                    .sort_by_file_name()
                    .into_iter()
                    .filter_entry(move |e| {
                        if e.depth() == 0 {
                            return true;
                        }
                        let counter = if is_hidden(e.file_name()) {
                            &pruned.hidden
                        } else if e.file_type().is_dir()
                            && !skip.is_empty()
                            && skip.contains(&absolute_normal(e.path()))
                        {
                            return false;
                        } else if e.file_type().is_dir()
                            && exclude
                                .as_ref()
                                .is_some_and(|x| excludes_dir(x, e.path().strip_prefix(&top).unwrap_or(e.path())))
                        {
                            // Not walked at all: an excluded folder that cannot be read (`lost+found`) is no error.
                            &pruned.excluded
                        } else {
                            return true;
                        };
                        counter.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                        false
                    });
                self.walk = Some(Walk { root, entries: Box::new(entries) });
            } else {
                // A file named on the command line is read even when the globs would not select it: the user
                // asked for it by name. Its dataset name is the path as given.
                let name = path_name(&root);
                let format = self.format_of(&root, Path::new(root.file_name().unwrap_or(root.as_os_str())));
                return Some(Next::File(root, name, format));
            }
        }
    }

    /// What to do with one entry of a directory walk; `None` for directories (the walk goes into them).
    fn classify(&self, entry: walkdir::DirEntry, relative: &Path) -> Option<Next> {
        let kind = entry.file_type();
        if kind.is_dir() {
            return None;
        }
        let not_read =
            |path: &Path, reason| Some(Next::Item(SourceItem::NotRead { origin: Origin::file(path), reason }));
        // A link (only seen as such when links are not followed) is read if it leads to a file.
        let target_is_file = if kind.is_symlink() {
            match std::fs::metadata(entry.path()) {
                Ok(target) if target.is_file() => true,
                Ok(target) if target.is_dir() => {
                    let excluded = self.exclude.as_ref().is_some_and(|e| e.is_match(relative));
                    return if excluded {
                        Some(Next::Item(SourceItem::Excluded(Excluded::Glob)))
                    } else {
                        not_read(entry.path(), SkipReason::LinkToDirectory)
                    };
                }
                Ok(_) => false,
                // A broken link (its target on a share that is gone, perhaps) keeps what was read through it.
                Err(error) => {
                    let name = Some(path_name(relative));
                    return Some(Next::Item(SourceItem::ReadError { path: entry.into_path(), name, error }));
                }
            }
        } else {
            kind.is_file()
        };
        if !self.selected(relative) {
            return Some(Next::Item(SourceItem::Excluded(Excluded::Glob)));
        }
        if !target_is_file {
            return not_read(entry.path(), SkipReason::NotRegular);
        }
        let name = path_name(relative);
        let format = self.format_of(entry.path(), relative);
        Some(Next::File(entry.into_path(), name, format))
    }

    /// The first `--format` rule matching the path below its input, else the extension's format.
    fn format_of(&self, path: &Path, relative: &Path) -> Format {
        self.options.formats.iter().find(|r| r.matches(relative)).map_or_else(|| Format::of_path(path), |r| r.format)
    }

    fn read_file(&mut self, path: PathBuf, name: String, format: Format) {
        if let Some(filter) = &self.unchanged
            && let Ok(metadata) = std::fs::metadata(&path)
        {
            let key = file_key(&path);
            if filter(&key, FileStat::of(&metadata), format) {
                self.count_read(metadata.len());
                self.queued.push_back(SourceItem::Unchanged(key));
                return;
            }
        }
        let (records, progress) = (&self.options.records, std::sync::Arc::clone(&self.bytes_read));
        let opened: std::io::Result<Box<dyn Iterator<Item = SourceItem> + Send>> = match format {
            Format::Jsonl => JsonlReader::open(&path, &name, records, progress).map(|r| Box::new(r) as _),
            Format::Csv | Format::Tsv => super::csv::CsvReader::open(&path, &name, records, format, progress),
            Format::Parquet => super::parquet::ParquetReader::open(&path, &name, records, progress),
            Format::Text | Format::Markdown | Format::Html | Format::Pdf => {
                self.read_whole(path, name, format);
                return;
            }
            Format::Image => {
                self.image(path, name);
                return;
            }
        };
        match opened {
            Ok(reader) => self.records = Some(reader),
            Err(error) => self.queued.extend(read_error(path, Some(name), error)),
        }
    }

    /// An image: a document without text, read by the caption stage (only its stat here, so the channels between
    /// stages never hold image bytes).
    fn image(&mut self, path: PathBuf, name: String) {
        let metadata = match std::fs::metadata(&path) {
            Ok(metadata) => metadata,
            Err(error) => {
                self.queued.extend(read_error(path, Some(name), error));
                return;
            }
        };
        self.count_read(metadata.len());
        let origin = Origin::file(path.clone());
        if !self.options.images {
            self.queued.push_back(SourceItem::ImageNotCaptioned(path));
            return;
        }
        let limit = self.options.max_file_bytes;
        if metadata.len() > limit {
            let reason = SkipReason::TooLarge { bytes: metadata.len(), limit };
            self.queued.push_back(SourceItem::NotRead { origin, reason });
            return;
        }
        self.queued.push_back(SourceItem::Document(Document {
            doc: name,
            text: String::new(),
            format: TextFormat::Plain,
            origin,
            stat: Some(FileStat::of(&metadata)),
            meta: DocMeta { source: Some(Format::Image), ..DocMeta::default() },
        }));
    }

    /// A file that is one document: read whole, and its text extracted when it is HTML or PDF.
    fn read_whole(&mut self, path: PathBuf, name: String, format: Format) {
        let origin = Origin::file(path.clone());
        let binary_ok = format == Format::Pdf;
        let (bytes, stat) = match read_bytes(&path, self.options.max_file_bytes, binary_ok) {
            Ok(Read::Bytes { bytes, stat }) => {
                self.count_read(stat.size);
                (bytes, stat)
            }
            Ok(Read::Skipped(reason)) => {
                self.count_read(std::fs::metadata(&path).map_or(0, |m| m.len()));
                self.queued.push_back(SourceItem::NotRead { origin, reason });
                return;
            }
            Err(error) => {
                self.queued.extend(read_error(path, Some(name), error));
                return;
            }
        };
        let mut meta = DocMeta { source: Some(format), ..DocMeta::default() };
        let (text, text_format) = match format {
            Format::Pdf => match super::pdf::extract(&bytes) {
                Ok(pdf) => {
                    meta.title = pdf.title;
                    meta.pages = pdf.pages;
                    (pdf.text, TextFormat::Plain)
                }
                Err(reason) => {
                    self.queued.push_back(SourceItem::NotRead { origin, reason });
                    return;
                }
            },
            _ => {
                let (text, lossy) = decode_utf8(bytes);
                if lossy {
                    self.queued.push_back(SourceItem::LossyUtf8(origin.clone()));
                }
                match format {
                    Format::Html => {
                        let page = super::html::extract(&text);
                        meta.title = page.title;
                        (page.markdown, TextFormat::Markdown)
                    }
                    Format::Markdown => {
                        meta.title = markdown_title(&text);
                        (text, TextFormat::Markdown)
                    }
                    _ => (text, TextFormat::Plain),
                }
            }
        };
        self.queued.push_back(SourceItem::Document(Document {
            doc: name,
            text,
            format: text_format,
            origin,
            stat: Some(stat),
            meta,
        }));
    }

    /// What a walk error means: a link loop (with `--follow`) is an entry not read; a directory that cannot be
    /// listed, or a link whose target is missing, is a read error for everything under it; an entry gone since its
    /// directory was listed is gone.
    fn walk_error(&self, err: walkdir::Error, root: &Path) -> Option<Next> {
        let path = err.path().map_or_else(|| root.to_path_buf(), Path::to_path_buf);
        let relative = path.strip_prefix(root).unwrap_or(&path).to_path_buf();
        if self.exclude.as_ref().is_some_and(|x| x.is_match(&relative) || excludes_dir(x, &relative)) {
            return Some(Next::Item(SourceItem::Excluded(Excluded::Glob)));
        }
        if err.loop_ancestor().is_some() {
            let origin = Origin::file(path);
            return Some(Next::Item(SourceItem::NotRead { origin, reason: SkipReason::LinkLoop }));
        }
        let error = err.into_io_error()?;
        read_error(path, Some(path_name(&relative)), error).map(Next::Item)
    }
}

/// Whether `exclude` leaves out everything below the directory `relative` (`dir/**`), so it need not be walked.
fn excludes_dir(exclude: &GlobSet, relative: &Path) -> bool {
    // A child named `*` stands for any child: `dir/**` and `**/dir/*` match it, `dir/*.md` does not.
    exclude.is_match(relative) || exclude.is_match(relative.join("*"))
}

/// What the walk found next.
enum Next {
    /// A file to read: its path on disk, its name in the dataset and how to read it.
    File(PathBuf, String, Format),
    Item(SourceItem),
}

/// A failed read, unless the file is simply gone (deleted since it was listed): then it is treated as deleted. A
/// link to a missing target is a read error: what was read through it is kept.
fn read_error(path: PathBuf, name: Option<String>, error: std::io::Error) -> Option<SourceItem> {
    if error.kind() == std::io::ErrorKind::NotFound {
        match std::fs::symlink_metadata(&path) {
            Ok(link) if link.file_type().is_symlink() => {
                let error = std::io::Error::new(error.kind(), "symbolic link to a missing target");
                return Some(SourceItem::ReadError { path, name, error });
            }
            Ok(_) => {}
            Err(_) => {
                tracing::debug!("{}: removed while the run was reading", path.display());
                return None;
            }
        }
    }
    Some(SourceItem::ReadError { path, name, error })
}

impl Iterator for FileSource {
    type Item = SourceItem;

    fn next(&mut self) -> Option<SourceItem> {
        loop {
            if let Some(item) = self.queued.pop_front() {
                return Some(item);
            }
            if let Some(reader) = &mut self.records {
                match reader.next() {
                    Some(item) => return Some(item),
                    None => self.records = None,
                }
            }
            match self.next_entry() {
                Some(Next::File(path, name, format)) => self.read_file(path, name, format),
                Some(Next::Item(item)) => return Some(item),
                None => {
                    // Counted while walking; reported once the walks are over.
                    let take = |n: &std::sync::atomic::AtomicU64| n.swap(0, std::sync::atomic::Ordering::Relaxed);
                    let (hidden, excluded) = (take(&self.pruned.hidden), take(&self.pruned.excluded));
                    if hidden + excluded == 0 {
                        return None;
                    }
                    self.queued.extend((0..hidden).map(|_| SourceItem::Excluded(Excluded::Hidden)));
                    self.queued.extend((0..excluded).map(|_| SourceItem::Excluded(Excluded::Glob)));
                }
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

/// A Markdown document's title: its first ATX heading (`# Title`), or a setext one (a line underlined with `=`).
pub(super) fn markdown_title(text: &str) -> Option<String> {
    let mut lines = text.lines().peekable();
    let mut in_front_matter = text.starts_with("---\n") || text.starts_with("---\r\n");
    let mut first = true;
    while let Some(line) = lines.next() {
        if in_front_matter {
            // YAML front matter: its `title:` if it has one, else the first heading after it.
            if !first && line.trim_end() == "---" {
                in_front_matter = false;
            } else if let Some(title) = line.strip_prefix("title:") {
                let title = title.trim().trim_matches(|c| c == '"' || c == '\'').trim();
                if !title.is_empty() {
                    return Some(title.to_owned());
                }
            }
            first = false;
            continue;
        }
        let trimmed = line.trim_start();
        if let Some(rest) = trimmed.strip_prefix('#') {
            let rest = rest.trim_start_matches('#');
            if rest.is_empty() || rest.starts_with(' ') || rest.starts_with('\t') {
                let title = rest.trim().trim_end_matches('#').trim();
                if !title.is_empty() {
                    return Some(title.to_owned());
                }
            }
        } else if !trimmed.is_empty()
            && let Some(next) = lines.peek()
            && next.trim().len() >= 3
            && next.trim().chars().all(|c| c == '=')
        {
            return Some(trimmed.trim().to_owned());
        }
    }
    None
}

fn absolute_normal(path: &Path) -> PathBuf {
    crate::config::normal_path(&std::path::absolute(path).unwrap_or_else(|_| path.to_path_buf()))
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

/// A file's contents, or why it is not read.
enum Read {
    Bytes { bytes: Vec<u8>, stat: FileStat },
    Skipped(SkipReason),
}

/// Reads a whole file; one with NUL bytes near its start is binary and skipped, unless `binary_ok`. The stat is
/// taken before reading, so a write during the read shows up as a change next time.
fn read_bytes(path: &Path, max_bytes: u64, binary_ok: bool) -> std::io::Result<Read> {
    let mut file = File::open(path)?;
    let metadata = file.metadata()?;
    let stat = FileStat::of(&metadata);
    let len = metadata.len();
    if len > max_bytes {
        return Ok(Read::Skipped(SkipReason::TooLarge { bytes: len, limit: max_bytes }));
    }
    let mut bytes = Vec::with_capacity(len as usize);
    file.read_to_end(&mut bytes)?;
    if !binary_ok && bytes[..bytes.len().min(BINARY_SNIFF_BYTES)].contains(&0) {
        return Ok(Read::Skipped(SkipReason::Binary));
    }
    Ok(Read::Bytes { bytes, stat })
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
        std::fs::write(root.join("blob.bin"), b"\x89PNG\0\0\0").expect("write");
        std::fs::write(root.join("bad.txt"), b"caf\xe9").expect("write");

        let items = collect(SourceOptions { inputs: vec![root.to_path_buf()], ..Default::default() });
        assert_eq!(docs(&items), ["a.md", "b.txt", "bad.txt", "sub/c.txt"]);
        assert!(items.iter().any(|i| matches!(i, SourceItem::NotRead { reason: SkipReason::Binary, origin } if origin.path.ends_with("blob.bin"))));
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
    fn the_dataset_being_written_is_never_walked_even_inside_its_input() {
        let dir = tempfile::tempdir().expect("tempdir");
        let root = dir.path();
        std::fs::create_dir_all(root.join("ds/captions")).expect("mkdir");
        std::fs::write(root.join("ds/captions/run.jsonl"), "{\"text\":\"a caption\"}\n").expect("write");
        std::fs::write(root.join("ds/manifest.json"), "{}").expect("write");
        std::fs::write(root.join("notes.txt"), "text").expect("write");
        // Named another way than the walk sees it.
        let skip = root.join("./ds/../ds");
        let items =
            collect(SourceOptions { inputs: vec![root.to_path_buf()], skip_dirs: vec![skip], ..Default::default() });
        assert_eq!(docs(&items), ["notes.txt"]);
    }

    #[test]
    fn images_are_documents_for_the_caption_stage_only_when_captions_are_on() {
        let dir = tempfile::tempdir().expect("tempdir");
        let root = dir.path();
        std::fs::write(root.join("photo.JPG"), b"\xff\xd8\xff\xe0 not decoded here").expect("write");
        std::fs::write(root.join("huge.png"), vec![0u8; 64]).expect("write");
        std::fs::write(root.join("notes.txt"), "text").expect("write");

        let options = SourceOptions { inputs: vec![root.to_path_buf()], max_file_bytes: 40, ..Default::default() };
        let items = collect(options.clone());
        assert_eq!(docs(&items), ["notes.txt"]);
        let skipped: Vec<&Path> = items
            .iter()
            .filter_map(|i| match i {
                SourceItem::ImageNotCaptioned(path) => path.file_name().map(Path::new),
                _ => None,
            })
            .collect();
        assert_eq!(skipped, [Path::new("huge.png"), Path::new("photo.JPG")]);

        let items = collect(SourceOptions { images: true, ..options });
        assert_eq!(docs(&items), ["notes.txt", "photo.JPG"]);
        let photo = items.iter().find_map(|i| match i {
            SourceItem::Document(d) if d.doc == "photo.JPG" => Some(d),
            _ => None,
        });
        let photo = photo.expect("the image document");
        assert_eq!((photo.text.as_str(), photo.meta.source), ("", Some(Format::Image)));
        assert_eq!(photo.stat.map(|s| s.size), Some(21));
        assert_eq!(not_read(&items), [("huge.png".to_owned(), SkipReason::TooLarge { bytes: 64, limit: 40 })]);
    }

    fn not_read(items: &[SourceItem]) -> Vec<(String, SkipReason)> {
        items
            .iter()
            .filter_map(|i| match i {
                SourceItem::NotRead { origin, reason } => {
                    Some((origin.path.file_name()?.to_string_lossy().into_owned(), reason.clone()))
                }
                _ => None,
            })
            .collect()
    }

    #[cfg(unix)]
    #[test]
    fn symlinked_files_are_read_and_symlinked_directories_followed_only_when_asked() {
        use std::os::unix::fs::symlink;
        let dir = tempfile::tempdir().expect("tempdir");
        let (real, root) = (dir.path().join("real"), dir.path().join("root"));
        std::fs::create_dir_all(real.join("deep")).expect("mkdir");
        std::fs::create_dir_all(root.join("sub")).expect("mkdir");
        std::fs::write(real.join("a.txt"), "alpha").expect("write");
        std::fs::write(real.join("deep/b.txt"), "beta").expect("write");
        symlink(real.join("a.txt"), root.join("a.txt")).expect("link");
        symlink(&real, root.join("linked")).expect("link");
        symlink(root.join("missing.txt"), root.join("broken.txt")).expect("link");
        symlink(&root, root.join("sub/loop")).expect("link");

        let options = SourceOptions { inputs: vec![root.clone()], ..Default::default() };
        let items = collect(options.clone());
        assert_eq!(docs(&items), ["a.txt"], "a symlinked file is read like any file");
        let mut skipped = not_read(&items);
        skipped.sort_by(|a, b| a.0.cmp(&b.0));
        assert_eq!(
            skipped,
            [("linked".to_owned(), SkipReason::LinkToDirectory), ("loop".to_owned(), SkipReason::LinkToDirectory)]
        );
        // A link to a missing target (a share gone) keeps what was read through it: a read error, by name.
        assert_eq!(read_errors(&items), [(root.join("broken.txt"), Some("broken.txt".to_owned()))]);

        let items = collect(SourceOptions { follow_links: true, ..options });
        assert_eq!(docs(&items), ["a.txt", "linked/a.txt", "linked/deep/b.txt"]);
        let mut skipped = not_read(&items);
        skipped.sort_by(|a, b| a.0.cmp(&b.0));
        assert_eq!(skipped, [("loop".to_owned(), SkipReason::LinkLoop)], "the loop is reported once and not walked");
        assert_eq!(read_errors(&items), [(root.join("broken.txt"), Some("broken.txt".to_owned()))]);
    }

    fn read_errors(items: &[SourceItem]) -> Vec<(PathBuf, Option<String>)> {
        items
            .iter()
            .filter_map(|i| match i {
                SourceItem::ReadError { path, name, .. } => Some((path.clone(), name.clone())),
                _ => None,
            })
            .collect()
    }

    #[cfg(unix)]
    #[test]
    fn excluded_folders_are_not_walked_so_an_unreadable_one_is_no_error() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().expect("tempdir");
        std::fs::create_dir_all(dir.path().join("lost+found/deep")).expect("mkdir");
        std::fs::write(dir.path().join("lost+found/deep/x.txt"), "x").expect("write");
        std::fs::write(dir.path().join("a.txt"), "a").expect("write");
        // Unreadable for everyone but root; for root, the folder is simply never opened.
        std::fs::set_permissions(dir.path().join("lost+found"), std::fs::Permissions::from_mode(0o000)).expect("chmod");
        let items = collect(SourceOptions {
            inputs: vec![dir.path().to_path_buf()],
            exclude: vec!["lost+found/**".into()],
            ..Default::default()
        });
        std::fs::set_permissions(dir.path().join("lost+found"), std::fs::Permissions::from_mode(0o755)).expect("chmod");
        assert_eq!(docs(&items), ["a.txt"]);
        assert!(read_errors(&items).is_empty());
        assert_eq!(items.iter().filter(|i| matches!(i, SourceItem::Excluded(Excluded::Glob))).count(), 1);
    }

    #[cfg(unix)]
    #[test]
    fn special_files_are_named_and_read_errors_keep_their_path() {
        let dir = tempfile::tempdir().expect("tempdir");
        let fifo = dir.path().join("pipe");
        let made = std::process::Command::new("mkfifo").arg(&fifo).status().expect("mkfifo");
        assert!(made.success());
        // /proc/self/mem opens but fails to read at offset 0 (EIO), for root too: a real I/O error.
        std::os::unix::fs::symlink("/proc/self/mem", dir.path().join("eio.txt")).expect("link");
        std::fs::write(dir.path().join("ok.txt"), "fine").expect("write");
        let items = collect(SourceOptions { inputs: vec![dir.path().to_path_buf()], ..Default::default() });
        assert_eq!(docs(&items), ["ok.txt"]);
        assert_eq!(not_read(&items), [("pipe".to_owned(), SkipReason::NotRegular)]);
        let errors: Vec<&PathBuf> = items
            .iter()
            .filter_map(|i| match i {
                SourceItem::ReadError { path, .. } => Some(path),
                _ => None,
            })
            .collect();
        assert_eq!(errors, [&dir.path().join("eio.txt")]);
    }

    #[test]
    fn excluded_and_hidden_entries_are_counted() {
        let dir = tempfile::tempdir().expect("tempdir");
        for name in ["a.md", "b.txt", "c.txt", ".hidden/x.md", ".dotfile"] {
            let path = dir.path().join(name);
            std::fs::create_dir_all(path.parent().expect("parent")).expect("mkdir");
            std::fs::write(path, "text").expect("write");
        }
        let items = collect(SourceOptions {
            inputs: vec![dir.path().to_path_buf()],
            include: vec!["*.md".into()],
            ..Default::default()
        });
        assert_eq!(docs(&items), ["a.md"]);
        let count = |kind| items.iter().filter(|i| matches!(i, SourceItem::Excluded(k) if *k == kind)).count();
        assert_eq!((count(Excluded::Glob), count(Excluded::Hidden)), (2, 2));
    }

    #[test]
    fn missing_input_and_bad_glob_are_usage_errors() {
        let err = FileSource::new(SourceOptions { inputs: vec!["/no/such/dir".into()], ..Default::default() });
        assert!(matches!(err, Err(SourceError::MissingInput { .. })));
        let err = FileSource::new(SourceOptions { include: vec!["a/[".into()], ..Default::default() });
        assert!(matches!(err, Err(SourceError::Glob { .. })));
    }
}
