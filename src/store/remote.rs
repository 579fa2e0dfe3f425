//! Datasets on object storage (`s3://bucket/prefix`, `file:///dir`, and `gs://`, `az://` with their cargo
//! features), through the object_store crate.
//!
//! Object stores have no rename, no append and no lock, so a remote dataset is laid out for them:
//!
//! ```text
//! <url>/
//!   _versions/00000000000000000042.json   one immutable manifest per version, created with put-if-absent: the commit
//!   _latest.json                          a hint naming the newest version (readers check for newer ones)
//!   data/ docs/ failed/                   immutable files, named per run so two writers never share a name
//!   index/ keyword/                       the indexes, uploaded pointer files last
//!   cache/seg-*.log                       the embedding cache as immutable segments, uploaded as they fill
//! ```
//!
//! The work itself happens in a local *mirror* of the dataset (`$TARS_INDEX_MIRROR_DIR`, else
//! `~/.cache/tars-index/mirrors/<name>-<digest of the url>`): [`Remote::pull`] brings the files a version references
//! into it (files are immutable, so what is there already is never fetched again), the ordinary local code reads and
//! writes it, and [`Remote::push`] uploads what a new version added and then commits it. The graph and the keyword
//! index are memory-mapped, which needs local files in any case.
//!
//! Two writers can never both publish version g+1: the manifest object is created with `PutMode::Create`, and the
//! loser gets [`StoreError::Conflict`] (its cache segments stay, so its rerun pays for nothing twice). A store that
//! ignores conditional writes would let both through; [`Remote::probe`] refuses such a store before a first commit.

use std::collections::{HashMap, HashSet};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use futures::{StreamExt, TryStreamExt};
use object_store::path::Path as ObjectPath;
use object_store::{ObjectStore, ObjectStoreExt, PutMode, PutOptions, PutPayload};
use serde::{Deserialize, Serialize};

use super::cache::CACHE_DIR;
use super::captions::CAPTIONS_DIR;
use super::docs::DOCS_DIR;
use super::failed::FAILED_DIR;
use super::manifest::write_json_atomic;
use super::writer::DATA_DIR;
use super::{MANIFEST_FILE, Manifest, StoreError};

pub const VERSIONS_DIR: &str = "_versions";
const LATEST_FILE: &str = "_latest.json";
/// Trees of the indexes, mirrored whole (their pointer files say which of their files are current).
const INDEX_TREES: [&str; 2] = ["index", "keyword"];
/// Files at least this big go up in parts (S3 refuses single PUTs over 5 GiB; parts also retry separately).
const MULTIPART_BYTES: u64 = 16 << 20;
const PART_BYTES: usize = 8 << 20;
/// Newer versions looked for past the `_latest.json` hint before falling back to a listing.
const MAX_HINT_PROBES: u64 = 8;

/// Where a dataset lives, as the user named it.
#[derive(Debug, Clone)]
pub enum Location {
    Local(PathBuf),
    Remote(Arc<Remote>),
}

impl Location {
    /// A local path, or a URL with a scheme this build supports. Credentials and endpoints come from the
    /// environment (`AWS_ACCESS_KEY_ID`, `AWS_ENDPOINT_URL`, `AWS_ALLOW_HTTP`, ... for S3), never from the URL.
    pub fn parse(text: &str) -> Result<Self, StoreError> {
        match url_scheme(text) {
            None => Ok(Location::Local(PathBuf::from(text))),
            Some(_) => Ok(Location::Remote(Arc::new(Remote::open(text)?))),
        }
    }

    /// The dataset as the user should see it named.
    pub fn display(&self) -> String {
        match self {
            Location::Local(path) => path.display().to_string(),
            Location::Remote(remote) => remote.url.clone(),
        }
    }
}

/// The scheme of `text` when it is a URL (`s3` of `s3://b/p`), not a path (a Windows drive letter is one letter).
pub fn url_scheme(text: &str) -> Option<&str> {
    let (scheme, rest) = text.split_once("://")?;
    let valid = scheme.len() > 1
        && scheme.chars().all(|c| c.is_ascii_alphanumeric() || c == '+' || c == '-' || c == '.')
        && scheme.starts_with(|c: char| c.is_ascii_alphabetic());
    (valid && !rest.is_empty()).then_some(scheme)
}

/// A dataset on object storage and its local mirror.
pub struct Remote {
    store: Arc<dyn ObjectStore>,
    root: ObjectPath,
    /// The URL as given, for messages (it holds no credentials: those come from the environment).
    pub url: String,
    pub mirror: PathBuf,
}

impl std::fmt::Debug for Remote {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Remote").field("url", &self.url).field("mirror", &self.mirror).finish()
    }
}

/// What `_latest.json` holds.
#[derive(Debug, Serialize, Deserialize)]
struct Latest {
    generation: u64,
}

/// An object's name and size, from a listing.
type Listing = HashMap<String, u64>;

impl Remote {
    fn open(text: &str) -> Result<Self, StoreError> {
        let url = text.trim_end_matches('/').to_owned();
        let bad = |message: String| StoreError::Remote { url: url.clone(), message, source: None };
        let cannot_open = |e: object_store::Error| StoreError::Remote {
            url: url.clone(),
            message: "cannot open".into(),
            source: Some(e),
        };
        let parsed = reqwest::Url::parse(&url).map_err(|e| bad(format!("not a valid URL: {e}")))?;
        let store: Arc<dyn ObjectStore> = match parsed.scheme() {
            "s3" | "s3a" => {
                let bucket = parsed.host_str().filter(|b| !b.is_empty()).ok_or_else(|| bad("no bucket".into()))?;
                let store = object_store::aws::AmazonS3Builder::from_env()
                    .with_bucket_name(bucket)
                    .build()
                    .map_err(cannot_open)?;
                Arc::new(store)
            }
            "file" => {
                let root = parsed.to_file_path().map_err(|()| bad("not a local path".into()))?;
                std::fs::create_dir_all(&root).map_err(StoreError::io(&root))?;
                let store = object_store::local::LocalFileSystem::new_with_prefix(&root).map_err(cannot_open)?;
                return Ok(Self { store: Arc::new(store), root: ObjectPath::default(), mirror: mirror_dir(&url), url });
            }
            #[cfg(feature = "gcs")]
            "gs" => {
                let bucket = parsed.host_str().ok_or_else(|| bad("no bucket".into()))?;
                let store = object_store::gcp::GoogleCloudStorageBuilder::from_env()
                    .with_bucket_name(bucket)
                    .build()
                    .map_err(cannot_open)?;
                Arc::new(store)
            }
            #[cfg(feature = "azure")]
            "az" | "azure" | "abfs" | "abfss" => {
                let container = parsed.host_str().ok_or_else(|| bad("no container".into()))?;
                let store = object_store::azure::MicrosoftAzureBuilder::from_env()
                    .with_container_name(container)
                    .build()
                    .map_err(cannot_open)?;
                Arc::new(store)
            }
            other => {
                return Err(bad(format!(
                    "unsupported scheme {other:?}: use a local path, s3://, or file:// (gs:// and az:// need a build \
                     with the gcs or azure feature)"
                )));
            }
        };
        let root = ObjectPath::from(parsed.path().trim_matches('/'));
        Ok(Self { store, root, mirror: mirror_dir(&url), url })
    }

    /// A remote over any store (tests use object_store's in-memory one).
    pub fn with_store(store: Arc<dyn ObjectStore>, url: &str, mirror: PathBuf) -> Self {
        Self { store, root: ObjectPath::default(), url: url.to_owned(), mirror }
    }

    pub(super) fn key(&self, relative: &str) -> ObjectPath {
        relative.split('/').filter(|p| !p.is_empty()).fold(self.root.clone(), |key, part| key.join(part))
    }

    pub(super) fn error(&self, what: String) -> impl FnOnce(object_store::Error) -> StoreError {
        let url = self.url.clone();
        move |source| StoreError::Remote { url, message: what, source: Some(source) }
    }

    pub(super) fn version_key(generation: u64) -> String {
        format!("{VERSIONS_DIR}/{generation:020}.json")
    }

    pub(super) async fn get_bytes(&self, relative: &str) -> Result<Option<bytes::Bytes>, StoreError> {
        match self.store.get(&self.key(relative)).await {
            Ok(found) => Ok(Some(found.bytes().await.map_err(self.error(format!("cannot read {relative}")))?)),
            Err(object_store::Error::NotFound { .. }) => Ok(None),
            Err(e) => Err(self.error(format!("cannot read {relative}"))(e)),
        }
    }

    /// Names (relative to the dataset) and sizes of the objects under `dir`.
    pub(super) async fn list(&self, dir: &str) -> Result<Listing, StoreError> {
        Ok(self.list_dated(dir).await?.into_iter().map(|(name, size, _)| (name, size)).collect())
    }

    /// Objects under `dir`: name relative to the dataset, size, last modified.
    pub(super) async fn list_dated(&self, dir: &str) -> Result<Vec<(String, u64, std::time::SystemTime)>, StoreError> {
        let skip = self.root.parts().count();
        self.store
            .list(Some(&self.key(dir)))
            .map_err(|e| StoreError::Remote {
                url: self.url.clone(),
                message: format!("cannot list {dir}/"),
                source: Some(e),
            })
            .map_ok(|meta| {
                let relative: Vec<String> = meta.location.parts().skip(skip).map(|p| p.as_ref().to_owned()).collect();
                (relative.join("/"), meta.size, std::time::SystemTime::from(meta.last_modified))
            })
            .try_collect()
            .await
    }

    /// The newest version: the one after the `_latest.json` hint that does not exist yet says where to stop, a
    /// listing of `_versions/` is the fallback, and a `manifest.json` alone (a local dataset copied up) is version
    /// one of its own. `None` for no dataset at all.
    pub async fn latest(&self) -> Result<Option<Manifest>, StoreError> {
        let hinted = match self.get_bytes(LATEST_FILE).await? {
            Some(bytes) => match serde_json::from_slice::<Latest>(&bytes) {
                Ok(latest) => self.newer_than(latest.generation).await?,
                Err(_) => None,
            },
            None => None,
        };
        if let Some(generation) = hinted
            && let Some(manifest) = self.read_version(generation).await?
        {
            return Ok(Some(manifest));
        }
        // No hint, one too far behind, or one naming a version since removed: the listing knows.
        if let Some(generation) = self.listed_generation().await? {
            return self.read_version(generation).await;
        }
        match self.get_bytes(MANIFEST_FILE).await? {
            Some(bytes) => Manifest::from_bytes(&bytes, &self.object_name(MANIFEST_FILE)).map(Some),
            None => Ok(None),
        }
    }

    /// The newest version from `generation` on, found by asking for the next ones; `None` past a few.
    async fn newer_than(&self, mut generation: u64) -> Result<Option<u64>, StoreError> {
        for _ in 0..MAX_HINT_PROBES {
            match self.store.head(&self.key(&Self::version_key(generation + 1))).await {
                Ok(_) => generation += 1,
                Err(object_store::Error::NotFound { .. }) => return Ok(Some(generation)),
                Err(e) => return Err(self.error(format!("cannot read {VERSIONS_DIR}/"))(e)),
            }
        }
        Ok(None)
    }

    async fn listed_generation(&self) -> Result<Option<u64>, StoreError> {
        let prefix = format!("{VERSIONS_DIR}/");
        Ok(self
            .list(VERSIONS_DIR)
            .await?
            .keys()
            .filter_map(|k| k.strip_prefix(&prefix)?.strip_suffix(".json")?.parse::<u64>().ok())
            .max())
    }

    pub async fn read_version(&self, generation: u64) -> Result<Option<Manifest>, StoreError> {
        let relative = Self::version_key(generation);
        match self.get_bytes(&relative).await? {
            Some(bytes) => Manifest::from_bytes(&bytes, &self.object_name(&relative)).map(Some),
            None => Ok(None),
        }
    }

    /// An object's name for messages: the dataset's URL and the name in it.
    pub(super) fn object_name(&self, relative: &str) -> PathBuf {
        PathBuf::from(format!("{}/{relative}", self.url))
    }

    /// Brings `manifest`'s files (and, with `indexes`, the index trees) into the mirror, then writes the mirror's
    /// `manifest.json`, so that the local code sees exactly that version. Returns the mirror.
    pub async fn pull(&self, manifest: &Manifest, indexes: bool) -> Result<PathBuf, StoreError> {
        std::fs::create_dir_all(&self.mirror).map_err(StoreError::io(&self.mirror))?;
        let mut wanted: Vec<String> = manifest.files.iter().map(|f| f.path.clone()).collect();
        wanted.extend(manifest.docs_file.clone());
        wanted.extend(manifest.failed_file.clone());
        let remote = self.list_folders_of(&wanted).await?;
        let missing: Vec<(String, u64)> = wanted
            .into_iter()
            .filter_map(|relative| {
                let size = remote.get(&relative).copied();
                let have = std::fs::metadata(self.mirror.join(&relative)).ok().map(|m| m.len());
                (have.is_none() || have != size).then_some((relative, size.unwrap_or(0)))
            })
            .collect();
        self.download_all(missing).await?;
        if indexes {
            self.pull_indexes().await?;
        }
        write_json_atomic(&self.mirror.join(MANIFEST_FILE), manifest)?;
        Ok(self.mirror.clone())
    }

    /// What the store holds in the folders `files` are in: `data/` and the like, and for a version a sharded run
    /// committed, its shards'.
    async fn list_folders_of(&self, files: &[String]) -> Result<Listing, StoreError> {
        let mut dirs: Vec<&str> = files.iter().filter_map(|w| w.rsplit_once('/').map(|(d, _)| d)).collect();
        dirs.sort_unstable();
        dirs.dedup();
        let mut listing = Listing::new();
        for dir in dirs {
            listing.extend(self.list(dir).await?);
        }
        Ok(listing)
    }

    /// Brings the mirror's indexes up to date with the store's (a server polls this: the index of a version goes up
    /// after the version itself).
    pub async fn pull_indexes(&self) -> Result<(), StoreError> {
        for tree in INDEX_TREES {
            self.pull_tree(tree).await?;
        }
        Ok(())
    }

    /// What identifies the store's current index (its `index/index.json`), to tell when to pull it again.
    pub async fn index_stamp(&self) -> Result<Option<String>, StoreError> {
        match self.store.head(&self.key("index/index.json")).await {
            Ok(meta) => Ok(Some(format!("{:?}/{}/{}", meta.e_tag, meta.last_modified, meta.size))),
            Err(object_store::Error::NotFound { .. }) => Ok(None),
            Err(e) => Err(self.error("cannot read index/index.json".into())(e)),
        }
    }

    /// Makes the mirror's `tree/` equal the remote one: fetches what is new or changed (pointer files always),
    /// removes what the remote no longer has.
    async fn pull_tree(&self, tree: &str) -> Result<(), StoreError> {
        let remote = self.list(tree).await?;
        let local = local_tree(&self.mirror, tree);
        let fetch: Vec<(String, u64)> = remote
            .iter()
            .filter(|(name, size)| is_pointer(name) || local.get(*name) != Some(*size))
            .map(|(name, size)| (name.clone(), *size))
            .collect();
        self.download_all(fetch).await?;
        for name in local.keys().filter(|name| !remote.contains_key(*name)) {
            let path = self.mirror.join(name);
            std::fs::remove_file(&path).map_err(StoreError::io(&path))?;
        }
        Ok(())
    }

    async fn download_all(&self, files: Vec<(String, u64)>) -> Result<(), StoreError> {
        futures::stream::iter(files)
            .map(|(relative, _)| async move { self.download(&relative).await })
            .buffer_unordered(8)
            .try_collect::<Vec<()>>()
            .await
            .map(drop)
    }

    /// Streams one object to the mirror, through a temp file renamed when complete.
    async fn download(&self, relative: &str) -> Result<(), StoreError> {
        self.download_to(relative, &self.mirror.join(relative)).await
    }

    /// Streams the object `relative` to the local file `path`.
    pub(super) async fn download_to(&self, relative: &str, path: &Path) -> Result<(), StoreError> {
        let path = path.to_path_buf();
        if let Some(parent) = path.parent() {
            std::fs::create_dir_all(parent).map_err(StoreError::io(parent))?;
        }
        let tmp = path.with_file_name(format!(
            ".{}.part-{}",
            path.file_name().map(|n| n.to_string_lossy()).unwrap_or_default(),
            std::process::id()
        ));
        let what = format!("cannot read {relative}");
        let found = self.store.get(&self.key(relative)).await.map_err(self.error(what.clone()))?;
        let mut stream = found.into_stream();
        let mut file = std::fs::File::create(&tmp).map_err(StoreError::io(&tmp))?;
        while let Some(chunk) = stream.next().await {
            let chunk = match chunk {
                Ok(chunk) => chunk,
                Err(e) => {
                    let _ = std::fs::remove_file(&tmp);
                    return Err(self.error(what)(e));
                }
            };
            if let Err(e) = file.write_all(&chunk) {
                let _ = std::fs::remove_file(&tmp);
                return Err(StoreError::Io { path: tmp, source: e });
            }
        }
        drop(file);
        std::fs::rename(&tmp, &path).map_err(StoreError::io(&path))
    }

    /// Uploads one mirror file to the same name, in parts when it is big.
    async fn upload(&self, relative: &str) -> Result<(), StoreError> {
        self.upload_from(&self.mirror.join(relative), relative).await
    }

    /// Uploads the local file `path` as `relative`.
    pub(super) async fn upload_from(&self, path: &Path, relative: &str) -> Result<(), StoreError> {
        let what = format!("cannot write {relative}");
        let size = std::fs::metadata(path).map_err(StoreError::io(path))?.len();
        let key = self.key(relative);
        if size < MULTIPART_BYTES {
            let bytes = std::fs::read(path).map_err(StoreError::io(path))?;
            self.store.put(&key, PutPayload::from(bytes)).await.map_err(self.error(what))?;
            return Ok(());
        }
        let upload = self.store.put_multipart(&key).await.map_err(self.error(what.clone()))?;
        let mut parts = object_store::WriteMultipart::new_with_chunk_size(upload, PART_BYTES);
        let mut file = std::fs::File::open(path).map_err(StoreError::io(path))?;
        let mut buffer = vec![0u8; PART_BYTES];
        loop {
            let read = std::io::Read::read(&mut file, &mut buffer).map_err(StoreError::io(path))?;
            if read == 0 {
                break;
            }
            parts.wait_for_capacity(4).await.map_err(self.error(what.clone()))?;
            parts.write(&buffer[..read]);
        }
        parts.finish().await.map_err(self.error(what)).map(drop)
    }

    /// Checks that the store refuses to create an object twice, as the commit relies on: a store that ignores
    /// `If-None-Match` (or a gateway in front of it that drops it) would let two writers publish one version.
    pub async fn probe(&self) -> Result<(), StoreError> {
        let nanos = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_nanos());
        let key = self.key(&format!("_probe/{nanos:x}-{}", std::process::id()));
        let create = PutOptions { mode: PutMode::Create, ..Default::default() };
        let what = "cannot write a probe object (_probe/)".to_owned();
        self.store
            .put_opts(&key, PutPayload::from_static(b"1"), create.clone())
            .await
            .map_err(self.error(what.clone()))?;
        let second = self.store.put_opts(&key, PutPayload::from_static(b"2"), create).await;
        let _ = self.store.delete(&key).await;
        match second {
            Err(object_store::Error::AlreadyExists { .. }) => Ok(()),
            Ok(_) => Err(StoreError::Remote {
                url: self.url.clone(),
                message: "the store overwrote an object it was asked to create only if absent, so two runs could both \
                          publish a version; use a store with conditional writes (S3, GCS, Azure, R2, Ceph RGW, ...)"
                    .into(),
                source: None,
            }),
            Err(object_store::Error::NotImplemented { .. }) => Err(StoreError::Remote {
                url: self.url.clone(),
                message: "the store does not support conditional writes, so commits cannot be made safe".into(),
                source: None,
            }),
            Err(e) => Err(self.error(what)(e)),
        }
    }

    /// Publishes the mirror's `manifest`: uploads the files it references that the store lacks, then creates
    /// `_versions/<generation>.json` if absent (the commit), then moves the hint; and last removes the files
    /// neither this version nor `base` (the one it replaces, which readers may still be pulling) references.
    pub async fn push(&self, manifest: &Manifest, base: Option<&Manifest>) -> Result<(), StoreError> {
        let mut remote = Listing::new();
        for dir in [DATA_DIR, DOCS_DIR, FAILED_DIR] {
            remote.extend(self.list(dir).await?);
        }
        let files = referenced(manifest);
        // Files a sharded run committed live under `_runs/`: there already, not to be sent again.
        let present = self.list_folders_of(&files).await?;
        let uploads: Vec<String> =
            files.iter().filter(|r| !remote.contains_key(*r) && !present.contains_key(*r)).cloned().collect();
        futures::stream::iter(uploads)
            .map(|relative| async move { self.upload(&relative).await })
            .buffer_unordered(4)
            .try_collect::<Vec<()>>()
            .await?;
        self.commit(manifest).await?;
        let keep: HashSet<String> = files.into_iter().chain(base.map(referenced).unwrap_or_default()).collect();
        for name in remote.keys().filter(|name| !keep.contains(*name)) {
            if let Err(e) = self.store.delete(&self.key(name)).await {
                tracing::warn!("{}: could not remove {name}, which no version uses: {e}", self.url);
            }
        }
        Ok(())
    }

    /// Creates `relative` holding `bytes` unless it exists: `Ok(false)` when it did.
    pub(super) async fn create(&self, relative: &str, bytes: Vec<u8>) -> Result<bool, StoreError> {
        let create = PutOptions { mode: PutMode::Create, ..Default::default() };
        match self.store.put_opts(&self.key(relative), PutPayload::from(bytes), create).await {
            Ok(_) => Ok(true),
            Err(object_store::Error::AlreadyExists { .. }) => Ok(false),
            Err(e) => Err(self.error(format!("cannot write {relative}"))(e)),
        }
    }

    pub(super) async fn delete_quietly(&self, relative: &str) {
        if let Err(e) = self.store.delete(&self.key(relative)).await {
            tracing::debug!("{}: could not remove {relative}: {e}", self.url);
        }
    }

    /// Creates the version object; a version of that number already there is a conflict, unless it is this very
    /// manifest (a retry after a lost answer).
    pub async fn commit(&self, manifest: &Manifest) -> Result<(), StoreError> {
        let relative = Self::version_key(manifest.generation);
        let bytes = serde_json::to_vec_pretty(manifest)
            .map_err(|e| StoreError::Manifest { path: relative.clone().into(), message: e.to_string() })?;
        let create = PutOptions { mode: PutMode::Create, ..Default::default() };
        match self.store.put_opts(&self.key(&relative), PutPayload::from(bytes), create).await {
            Ok(_) => {}
            Err(object_store::Error::AlreadyExists { .. }) => {
                let theirs = self.get_bytes(&relative).await?;
                let same = theirs.and_then(|b| serde_json::from_slice::<Manifest>(&b).ok()).is_some_and(|m| {
                    m.lineage == manifest.lineage && m.files == manifest.files && m.docs_file == manifest.docs_file
                });
                if !same {
                    return Err(StoreError::Conflict { url: self.url.clone(), generation: manifest.generation });
                }
            }
            Err(e) => return Err(self.error(format!("cannot write {relative}"))(e)),
        }
        let latest = serde_json::to_vec(&Latest { generation: manifest.generation }).unwrap_or_default();
        if let Err(e) = self.store.put(&self.key(LATEST_FILE), PutPayload::from(latest)).await {
            // Only a hint: readers look past it.
            tracing::warn!("{}: could not update {LATEST_FILE}: {e}", self.url);
        }
        Ok(())
    }

    /// Uploads the mirror's index trees: data files first, pointer files after them, `index/index.json` (which
    /// says what both indexes hold) last; then removes remote files the mirror no longer has.
    pub async fn push_indexes(&self) -> Result<(), StoreError> {
        let mut uploads = Vec::new();
        let mut stale = Vec::new();
        for tree in INDEX_TREES {
            let remote = self.list(tree).await?;
            let local = local_tree(&self.mirror, tree);
            uploads.extend(
                local
                    .iter()
                    .filter(|(name, size)| is_pointer(name) || remote.get(*name) != Some(*size))
                    .map(|(n, _)| n.clone()),
            );
            stale.extend(remote.into_keys().filter(|name| !local.contains_key(name)));
        }
        let (pointers, files): (Vec<String>, Vec<String>) = uploads.into_iter().partition(|n| is_pointer(n));
        futures::stream::iter(files)
            .map(|relative| async move { self.upload(&relative).await })
            .buffer_unordered(4)
            .try_collect::<Vec<()>>()
            .await?;
        let (last, pointers): (Vec<String>, Vec<String>) = pointers.into_iter().partition(|n| n == "index/index.json");
        for relative in pointers.iter().chain(&last) {
            self.upload(relative).await?;
        }
        for name in stale {
            if let Err(e) = self.store.delete(&self.key(&name)).await {
                tracing::warn!("{}: could not remove {name}: {e}", self.url);
            }
        }
        Ok(())
    }

    /// Fetches the cache segments the mirror lacks (written by runs on other machines, or by one that was killed),
    /// and returns the names of all of them.
    pub async fn pull_cache(&self) -> Result<Vec<String>, StoreError> {
        let remote = self.list(CACHE_DIR).await?;
        let missing: Vec<(String, u64)> = remote
            .iter()
            .filter(|(name, size)| {
                name.ends_with(".log")
                    && std::fs::metadata(self.mirror.join(name.as_str())).map(|m| m.len()).ok() != Some(**size)
            })
            .map(|(n, s)| (n.clone(), *s))
            .collect();
        self.download_all(missing).await?;
        Ok(remote.into_keys().collect())
    }

    /// Fetches the caption logs the mirror lacks (or holds shorter: a log grows while its run goes on).
    pub async fn pull_captions(&self) -> Result<(), StoreError> {
        let remote = self.list(CAPTIONS_DIR).await?;
        let missing: Vec<(String, u64)> = remote
            .into_iter()
            .filter(|(name, size)| {
                name.ends_with(".jsonl")
                    && std::fs::metadata(self.mirror.join(name.as_str())).map(|m| m.len()).ok() != Some(*size)
            })
            .collect();
        self.download_all(missing).await
    }

    /// Uploads the mirror's caption logs the store lacks or holds shorter: every run's captions are kept for the
    /// next, on whichever machine it runs.
    pub async fn push_captions(&self) -> Result<(), StoreError> {
        let remote = self.list(CAPTIONS_DIR).await?;
        for (name, size) in local_tree(&self.mirror, CAPTIONS_DIR) {
            if name.ends_with(".jsonl") && remote.get(&name) != Some(&size) {
                self.upload_from(&self.mirror.join(&name), &name).await?;
            }
        }
        Ok(())
    }

    /// Uploads one closed cache segment (`cache/<name>`) of the dataset in `dir` (the mirror, or a shard's work).
    pub async fn push_cache_segment(&self, dir: &Path, relative: &str) -> Result<(), StoreError> {
        self.upload_from(&dir.join(relative), relative).await
    }

    /// Uploads every cache segment of the dataset in `dir` the store lacks (at the end of a run that did not
    /// complete).
    pub async fn push_cache(&self, dir: &Path) -> Result<(), StoreError> {
        let remote = self.list(CACHE_DIR).await?;
        for (name, size) in local_tree(dir, CACHE_DIR) {
            if name.ends_with(".log") && remote.get(&name) != Some(&size) {
                self.upload_from(&dir.join(&name), &name).await?;
            }
        }
        Ok(())
    }

    /// Removes cache segments once a version holds their vectors.
    pub async fn remove_cache(&self, names: &[String]) {
        for name in names {
            if let Err(e) = self.store.delete(&self.key(name)).await {
                tracing::warn!("{}: could not remove {name}: {e}", self.url);
            }
        }
    }
}

/// The files a version consists of (its index aside).
pub(super) fn referenced(manifest: &Manifest) -> Vec<String> {
    let mut files: Vec<String> = manifest.files.iter().map(|f| f.path.clone()).collect();
    files.extend(manifest.docs_file.clone());
    files.extend(manifest.failed_file.clone());
    files
}

/// Small files rewritten in place (the indexes' pointers, tantivy's `meta.json`): compared by content, not size.
fn is_pointer(name: &str) -> bool {
    name.ends_with(".json")
}

/// Files under `dir/tree`, by name relative to `dir`, with their sizes (temp files left out).
fn local_tree(dir: &Path, tree: &str) -> Listing {
    walkdir::WalkDir::new(dir.join(tree))
        .into_iter()
        .filter_map(Result::ok)
        .filter(|e| e.file_type().is_file())
        .filter(|e| !e.file_name().to_string_lossy().starts_with('.') || e.file_name() == ".managed.json")
        .filter_map(|e| {
            let relative = e.path().strip_prefix(dir).ok()?.to_str()?.replace('\\', "/");
            Some((relative, e.metadata().ok()?.len()))
        })
        .collect()
}

/// The mirror of `url`: `$TARS_INDEX_MIRROR_DIR/<name>-<digest>` (default `~/.cache/tars-index/mirrors`).
fn mirror_dir(url: &str) -> PathBuf {
    let base = std::env::var_os("TARS_INDEX_MIRROR_DIR").map(PathBuf::from).unwrap_or_else(|| {
        std::env::var_os("XDG_CACHE_HOME")
            .map(PathBuf::from)
            .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".cache")))
            .unwrap_or_else(std::env::temp_dir)
            .join("tars-index")
            .join("mirrors")
    });
    let name: String = url
        .rsplit('/')
        .next()
        .unwrap_or("dataset")
        .chars()
        .map(|c| if c.is_ascii_alphanumeric() || c == '-' || c == '_' { c } else { '_' })
        .take(40)
        .collect();
    base.join(format!("{name}-{}", &blake3::hash(url.as_bytes()).to_hex()[..12]))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::ChunkingInfo;

    fn version(generation: u64, lineage: &str) -> Manifest {
        let chunking = ChunkingInfo { tokenizer: "cl100k_base".into(), max_tokens: 8, overlap: 0 };
        Manifest { generation, lineage: lineage.to_owned(), ..Manifest::new("tars/m".into(), None, chunking) }
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn of_writers_racing_for_one_version_exactly_one_commits() {
        let dir = tempfile::tempdir().expect("tempdir");
        let store = Arc::new(object_store::memory::InMemory::new());
        let remote = Arc::new(Remote::with_store(store, "memory://race", dir.path().to_path_buf()));
        remote.probe().await.expect("an in-memory store honours create-if-absent");
        let tasks: Vec<_> = (0..16)
            .map(|i| {
                let remote = Arc::clone(&remote);
                tokio::spawn(async move { remote.commit(&version(1, &format!("writer-{i}"))).await })
            })
            .collect();
        let mut won = Vec::new();
        for (i, task) in tasks.into_iter().enumerate() {
            match task.await.expect("task") {
                Ok(()) => won.push(i),
                Err(StoreError::Conflict { generation: 1, .. }) => {}
                Err(e) => panic!("unexpected {e}"),
            }
        }
        assert_eq!(won.len(), 1, "{won:?}");
        let winner = version(1, &format!("writer-{}", won[0]));
        remote.commit(&winner).await.expect("the winner's retry after a lost answer is no conflict");
        assert_eq!(remote.latest().await.expect("latest").map(|m| m.lineage), Some(winner.lineage.clone()));
    }

    #[tokio::test]
    async fn the_newest_version_is_found_past_a_stale_hint_and_without_one() {
        let dir = tempfile::tempdir().expect("tempdir");
        let store = Arc::new(object_store::memory::InMemory::new());
        let remote = Remote::with_store(store.clone(), "memory://hint", dir.path().to_path_buf());
        assert!(remote.latest().await.expect("empty").is_none());
        for generation in 1..=3 {
            remote.commit(&version(generation, "l")).await.expect("commit");
        }
        let stale = serde_json::to_vec(&Latest { generation: 1 }).expect("json");
        store.put(&ObjectPath::from(LATEST_FILE), PutPayload::from(stale)).await.expect("put");
        assert_eq!(remote.latest().await.expect("latest").map(|m| m.generation), Some(3));
        store.delete(&ObjectPath::from(LATEST_FILE)).await.expect("delete");
        assert_eq!(remote.latest().await.expect("latest").map(|m| m.generation), Some(3));
        // A version object that is not a manifest is named in the error.
        let junk = PutPayload::from_static(b"{ not json");
        store.put(&ObjectPath::from(Remote::version_key(4).as_str()), junk).await.expect("put");
        let err = remote.latest().await.expect_err("junk");
        assert!(err.to_string().contains("memory://hint/_versions/00000000000000000004.json"), "{err}");
    }

    #[test]
    fn urls_are_told_from_paths() {
        assert_eq!(url_scheme("s3://bucket/prefix"), Some("s3"));
        assert_eq!(url_scheme("file:///tmp/x"), Some("file"));
        assert_eq!(url_scheme("out/dataset"), None);
        assert_eq!(url_scheme("C://x"), None, "a drive letter");
        assert_eq!(url_scheme("s3://"), None);
        assert!(matches!(Location::parse("nope://x/y"), Err(StoreError::Remote { .. })));
    }
}
