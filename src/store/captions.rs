//! The caption cache (`captions/`): every caption a vision model wrote for an image of the corpus, by the image's
//! content and the caption model, so that no run pays for the same description twice — not after a crash, a
//! rename, a `--overwrite`, a new embedding model, or an image deleted and added back. Unlike the embedding cache it
//! is never emptied: a caption is worth keeping as long as its image may come back.
//!
//! One JSON line per caption (or per failure, the images' dead-letter entries) in a log of the run's own,
//! `captions/<run>.jsonl`, appended and fsynced before the caption is used; a line torn by a crash is the end of
//! its log and is ignored. Opening reads every log once and keeps, per caption, only where its line is (a 32-byte
//! key and a position), so memory is ~60 bytes per image however long the captions.

use std::collections::HashMap;
use std::fs::{File, OpenOptions};
use std::io::{BufRead, BufReader, ErrorKind, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};
use std::sync::Mutex;

use serde::{Deserialize, Serialize};

use super::StoreError;
use super::manifest::{sync_dir, unix_now};

pub const CAPTIONS_DIR: &str = "captions";
const LOG_EXTENSION: &str = "jsonl";

/// One line of a caption log.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct CaptionLine {
    /// blake3 of the image file, hex.
    pub hash: String,
    /// The caption model as the user named it.
    pub model: String,
    /// Names the request the caption answers (prompt and image limits): a new prompt is a new caption.
    pub prompt: String,
    /// The description, or `None` for a failure.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub caption: Option<String>,
    /// Why the image could not be captioned (a dead-letter entry; the next run tries again).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    /// The file it was read from, for people reading the log.
    pub file: String,
    /// The image as sent.
    #[serde(default)]
    pub width: u32,
    #[serde(default)]
    pub height: u32,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub prompt_tokens: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub completion_tokens: Option<u64>,
    pub unix: u64,
}

impl CaptionLine {
    fn key(&self) -> [u8; 32] {
        key(&self.hash, &self.model, &self.prompt)
    }
}

fn key(hash: &str, model: &str, prompt: &str) -> [u8; 32] {
    let mut hasher = blake3::Hasher::new();
    for part in [hash, model, prompt] {
        hasher.update(part.as_bytes());
        hasher.update(b"\0");
    }
    *hasher.finalize().as_bytes()
}

/// Where a caption's line is: the log (index into `logs`) and its byte offset.
#[derive(Debug, Clone, Copy)]
struct Loc {
    log: u32,
    offset: u64,
}

pub struct CaptionCache {
    dir: PathBuf,
    read_only: bool,
    inner: Mutex<Inner>,
}

struct Inner {
    logs: Vec<PathBuf>,
    index: HashMap<[u8; 32], Loc>,
    /// This run's log, created with its first line: the file, its index in `logs`, and its length.
    own: Option<(File, u32, u64)>,
}

impl CaptionCache {
    /// Opens `<dataset>/captions` for reading and appending (creating it when the first caption is written).
    pub fn open(dataset: &Path) -> Result<Self, StoreError> {
        Self::open_with(dataset, false)
    }

    /// Opens the cache for lookups only (`--dry-run`): writes nothing.
    pub fn open_read_only(dataset: &Path) -> Result<Self, StoreError> {
        Self::open_with(dataset, true)
    }

    fn open_with(dataset: &Path, read_only: bool) -> Result<Self, StoreError> {
        let dir = dataset.join(CAPTIONS_DIR);
        let mut logs = Vec::new();
        match std::fs::read_dir(&dir) {
            Ok(entries) => {
                for entry in entries {
                    let path = entry.map_err(StoreError::io(&dir))?.path();
                    if path.extension().and_then(|e| e.to_str()) == Some(LOG_EXTENSION) {
                        logs.push(path);
                    }
                }
            }
            Err(e) if e.kind() == ErrorKind::NotFound => {}
            Err(e) => return Err(StoreError::Io { path: dir, source: e }),
        }
        logs.sort();
        let mut index = HashMap::new();
        for (n, log) in logs.iter().enumerate() {
            scan(log, |offset, line| {
                if line.caption.is_some() {
                    index.insert(line.key(), Loc { log: n as u32, offset });
                }
            })?;
        }
        Ok(Self { dir, read_only, inner: Mutex::new(Inner { logs, index, own: None }) })
    }

    /// Captions held.
    pub fn len(&self) -> usize {
        self.inner.lock().map_or(0, |inner| inner.index.len())
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The caption `model` wrote for the image whose blake3 is `hash`, in answer to `prompt`.
    pub fn get(&self, hash: &str, model: &str, prompt: &str) -> Result<Option<String>, StoreError> {
        let (path, offset) = {
            let inner = self.inner.lock().map_err(|_| poisoned(&self.dir))?;
            let Some(loc) = inner.index.get(&key(hash, model, prompt)) else { return Ok(None) };
            (inner.logs[loc.log as usize].clone(), loc.offset)
        };
        let mut reader = BufReader::new(File::open(&path).map_err(StoreError::io(&path))?);
        reader.seek(SeekFrom::Start(offset)).map_err(StoreError::io(&path))?;
        let mut text = String::new();
        reader.read_line(&mut text).map_err(StoreError::io(&path))?;
        let line: CaptionLine = serde_json::from_str(&text).map_err(|e| StoreError::Corrupt {
            path: path.clone(),
            message: format!("caption at byte {offset}: {e}"),
        })?;
        Ok(line.caption)
    }

    /// Appends `line` to this run's log and syncs it; a caption can be looked up at once. Nothing is written by a
    /// read-only cache.
    pub fn put(&self, mut line: CaptionLine) -> Result<(), StoreError> {
        if self.read_only {
            return Ok(());
        }
        if line.unix == 0 {
            line.unix = unix_now();
        }
        let mut text = serde_json::to_string(&line).map_err(|e| StoreError::Corrupt {
            path: self.dir.clone(),
            message: format!("a caption cannot be serialised: {e}"),
        })?;
        text.push('\n');
        let mut inner = self.inner.lock().map_err(|_| poisoned(&self.dir))?;
        if inner.own.is_none() {
            std::fs::create_dir_all(&self.dir).map_err(StoreError::io(&self.dir))?;
            let path = self.dir.join(log_name());
            let file = OpenOptions::new().create_new(true).append(true).open(&path).map_err(StoreError::io(&path))?;
            sync_dir(&self.dir);
            let n = inner.logs.len() as u32;
            inner.logs.push(path);
            inner.own = Some((file, n, 0));
        }
        let Inner { logs, index, own } = &mut *inner;
        let Some((file, n, length)) = own.as_mut() else { unreachable!("opened above") };
        let path = &logs[*n as usize];
        if let Err(e) = file.write_all(text.as_bytes()).and_then(|()| file.sync_data()) {
            // A line cut short by a full disk must not run into the next one: later captions go to a new log.
            let error = StoreError::Io { path: path.clone(), source: e };
            *own = None;
            return Err(error);
        }
        let loc = Loc { log: *n, offset: *length };
        *length += text.len() as u64;
        if line.caption.is_some() {
            index.insert(line.key(), loc);
        }
        Ok(())
    }
}

/// A name no other run's log has: start time, pid and a random part.
fn log_name() -> String {
    let nanos = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_nanos());
    format!("{nanos:032x}-{}-{:08x}.{LOG_EXTENSION}", std::process::id(), rand::random::<u32>())
}

fn poisoned(dir: &Path) -> StoreError {
    StoreError::Corrupt { path: dir.to_path_buf(), message: "the caption cache lock was poisoned".to_owned() }
}

/// Calls `f` with each whole line of `log` and its offset. A line that does not parse ends the log when it is the
/// last (torn by a crash); one in the middle is skipped with a warning.
fn scan(log: &Path, mut f: impl FnMut(u64, CaptionLine)) -> Result<(), StoreError> {
    let mut reader = BufReader::new(File::open(log).map_err(StoreError::io(log))?);
    let (mut offset, mut text) = (0u64, String::new());
    loop {
        text.clear();
        let read = reader.read_line(&mut text).map_err(StoreError::io(log))?;
        if read == 0 {
            return Ok(());
        }
        match serde_json::from_str::<CaptionLine>(&text) {
            Ok(line) if text.ends_with('\n') => f(offset, line),
            Ok(_) => {}
            Err(_) if !text.ends_with('\n') => {}
            Err(e) => tracing::warn!("{}: caption at byte {offset} skipped: {e}", log.display()),
        }
        offset += read as u64;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn line(hash: &str, model: &str, caption: Option<&str>) -> CaptionLine {
        CaptionLine {
            hash: hash.to_owned(),
            model: model.to_owned(),
            prompt: "p1".to_owned(),
            caption: caption.map(str::to_owned),
            error: caption.is_none().then(|| "refused".to_owned()),
            file: "/corpus/a.png".to_owned(),
            width: 10,
            height: 20,
            prompt_tokens: Some(100),
            completion_tokens: Some(20),
            unix: 0,
        }
    }

    #[test]
    fn captions_survive_reopening_by_content_model_and_prompt_and_failures_are_not_captions() {
        let dir = tempfile::tempdir().expect("tempdir");
        let cache = CaptionCache::open(dir.path()).expect("open");
        assert!(cache.is_empty());
        assert!(!dir.path().join(CAPTIONS_DIR).exists(), "nothing is created before the first caption");
        cache.put(line("aa", "tars/gpt-4o-mini", Some("a red \"bicycle\"\nby a wall"))).expect("put");
        cache.put(line("bb", "tars/gpt-4o-mini", None)).expect("put a failure");
        assert_eq!(
            cache.get("aa", "tars/gpt-4o-mini", "p1").expect("get").as_deref(),
            Some("a red \"bicycle\"\nby a wall"),
            "looked up in the run that wrote it"
        );
        drop(cache);

        // Another run appends to a log of its own.
        let cache = CaptionCache::open(dir.path()).expect("reopen");
        assert_eq!(cache.len(), 1, "the failure is a dead-letter entry, not a caption");
        cache.put(line("cc", "tars/claude-sonnet-4", Some("a chart"))).expect("put");
        drop(cache);
        let logs = std::fs::read_dir(dir.path().join(CAPTIONS_DIR)).expect("list").count();
        assert_eq!(logs, 2);

        let cache = CaptionCache::open_read_only(dir.path()).expect("reopen read-only");
        assert_eq!(
            cache.get("aa", "tars/gpt-4o-mini", "p1").expect("get").as_deref(),
            Some("a red \"bicycle\"\nby a wall")
        );
        assert_eq!(cache.get("cc", "tars/claude-sonnet-4", "p1").expect("get").as_deref(), Some("a chart"));
        assert_eq!(cache.get("aa", "tars/claude-sonnet-4", "p1").expect("get"), None, "another model");
        assert_eq!(cache.get("aa", "tars/gpt-4o-mini", "p2").expect("get"), None, "another prompt");
        assert_eq!(cache.get("bb", "tars/gpt-4o-mini", "p1").expect("get"), None, "a failure");
        cache.put(line("dd", "m", Some("x"))).expect("a read-only put is a no-op");
        assert_eq!(std::fs::read_dir(dir.path().join(CAPTIONS_DIR)).expect("list").count(), 2);
    }

    #[test]
    fn a_line_torn_by_a_crash_ends_its_log_and_the_rest_is_read() {
        let dir = tempfile::tempdir().expect("tempdir");
        let cache = CaptionCache::open(dir.path()).expect("open");
        cache.put(line("aa", "m", Some("first"))).expect("put");
        cache.put(line("bb", "m", Some("second"))).expect("put");
        drop(cache);
        let log =
            std::fs::read_dir(dir.path().join(CAPTIONS_DIR)).expect("list").next().expect("a log").expect("entry");
        let text = std::fs::read_to_string(log.path()).expect("read");
        // The second line loses its end, as a write cut by a crash leaves it.
        std::fs::write(log.path(), &text[..text.len() - 10]).expect("tear");

        let cache = CaptionCache::open(dir.path()).expect("reopen");
        assert_eq!(cache.get("aa", "m", "p1").expect("get").as_deref(), Some("first"));
        assert_eq!(cache.get("bb", "m", "p1").expect("get"), None);
    }
}
