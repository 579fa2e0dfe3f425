//! The dataset a command names: a local directory, used in place, or a URL on object storage, worked on in its
//! local mirror (see `store::Remote`): pulled before the command, pushed and committed after it.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use crate::store::{DataFile, Location, Manifest, Plan, Remote, Shard, StoreError, clear_cache, prepare_work};

pub(crate) struct Target {
    /// Where the local code reads and writes: the dataset itself, or the mirror.
    pub dir: PathBuf,
    /// The dataset as the user named it, for messages.
    pub name: String,
    pub remote: Option<Arc<Remote>>,
    /// The remote version pulled into the mirror, which a commit replaces.
    pub base: Option<Manifest>,
    /// The remote cache segments there were when the command started (removed once a version holds them).
    pub cached: Vec<String>,
}

impl Target {
    fn local(dir: &Path) -> Self {
        Self { dir: dir.to_path_buf(), name: dir.display().to_string(), remote: None, base: None, cached: Vec::new() }
    }

    fn location(dataset: &Path) -> Result<Location, StoreError> {
        match dataset.to_str() {
            Some(text) => Location::parse(text),
            None => Ok(Location::Local(dataset.to_path_buf())),
        }
    }

    /// For `search`, `serve`, `eval`: the newest version and its indexes, pulled into the mirror.
    pub async fn for_read(dataset: &Path) -> Result<Self, StoreError> {
        let remote = match Self::location(dataset)? {
            Location::Local(dir) => return Ok(Self::local(&dir)),
            Location::Remote(remote) => remote,
        };
        let Some(base) = remote.latest().await? else {
            return Err(StoreError::NotADataset { path: PathBuf::from(&remote.url) });
        };
        let dir = remote.pull(&base, true).await?;
        Ok(Self { dir, name: remote.url.clone(), remote: Some(remote), base: Some(base), cached: Vec::new() })
    }

    /// For the commands that publish (`embed`, `run`, `index`, `repair`, `retry-failed`): checks once that the store
    /// honours conditional writes, then pulls the newest version, its indexes and the cache segments.
    pub async fn for_write(dataset: &Path, dry_run: bool) -> Result<Self, StoreError> {
        let remote = match Self::location(dataset)? {
            Location::Local(dir) => return Ok(Self::local(&dir)),
            Location::Remote(remote) => remote,
        };
        if !dry_run {
            remote.probe().await?;
        }
        let base = remote.latest().await?;
        match &base {
            Some(base) => {
                remote.pull(base, true).await?;
            }
            None => forget_local_version(&remote.mirror)?,
        }
        let cached = remote.pull_cache().await?;
        remote.pull_captions().await?;
        let dir = remote.mirror.clone();
        Ok(Self { dir, name: remote.url.clone(), remote: Some(remote), base, cached })
    }

    /// For one shard of a sharded run: the run's plan (made by the first shard to get here), the version it builds
    /// on pulled into the mirror, and a work folder holding that version's documents of this shard's slice, where
    /// the pipeline runs. A local dataset is worked on through `file://`, as on object storage.
    pub async fn for_shard(
        dataset: &Path,
        shard: Shard,
        settings: ShardSettings,
    ) -> Result<(Self, ShardRun), StoreError> {
        let remote = match Self::location(dataset)? {
            Location::Remote(remote) => remote,
            Location::Local(dir) => {
                std::fs::create_dir_all(&dir).map_err(StoreError::io(&dir))?;
                let absolute = std::path::absolute(&dir).map_err(StoreError::io(&dir))?;
                match Location::parse(&format!("file://{}", absolute.display()))? {
                    Location::Remote(remote) => remote,
                    Location::Local(_) => unreachable!("a file:// URL is remote"),
                }
            }
        };
        remote.probe().await?;
        let latest = remote.latest().await?;
        let appends = !settings.fresh
            && latest
                .as_ref()
                .is_some_and(|m| m.model == settings.model && m.requested_dimensions == settings.requested_dimensions);
        let proposed = Plan {
            run: settings.run.clone(),
            shards: shard.count,
            base_generation: latest.as_ref().map(|m| m.generation),
            appends,
            lineage: match (&latest, appends) {
                (Some(m), true) => m.lineage.clone(),
                _ => format!("{:016x}", rand::random::<u64>()),
            },
            model: settings.model,
            requested_dimensions: settings.requested_dimensions,
            chunking: settings.chunking,
            metadata_spec: settings.metadata_spec,
            created_unix: crate::store::unix_now(),
        };
        let committed =
            latest.as_ref().filter(|m| m.run_id.as_deref() == Some(settings.run.as_str())).map(|m| m.generation);
        let plan = match committed {
            Some(_) => remote.read_plan(&settings.run).await?,
            None => remote.plan(&proposed).await?,
        };
        let base = match (plan.base_generation, plan.appends) {
            (Some(generation), true) => remote.read_version(generation).await?,
            _ => None,
        };
        if let Some(base) = &base {
            remote.pull(base, false).await?;
        }
        let cached = remote.pull_cache().await?;
        remote.pull_captions().await?;
        let attempt = format!("{:016x}", rand::random::<u64>());
        let work = remote.mirror.join(crate::store::RUNS_DIR).join(&plan.run).join(format!("shard-{:04}", shard.index));
        let base_files = prepare_work(&remote.mirror, &work, base.as_ref(), shard)?;
        let target = Self { dir: work, name: remote.url.clone(), remote: Some(remote), base: base.clone(), cached };
        Ok((target, ShardRun { shard, plan, attempt, base_files, committed }))
    }

    pub fn is_remote(&self) -> bool {
        self.remote.is_some()
    }

    /// Commits the version a command published in the mirror as the next version of the remote dataset, and
    /// returns it as committed (numbered after the version it builds on, whatever the mirror went through: a
    /// compaction publishes twice there). A local dataset is already published.
    pub async fn commit(&mut self, published: &Manifest) -> Result<Manifest, StoreError> {
        let Some(remote) = &self.remote else { return Ok(published.clone()) };
        let unchanged = self.base.as_ref().is_some_and(|b| {
            b.generation == published.generation && b.lineage == published.lineage && b.files == published.files
        });
        if unchanged {
            return Ok(published.clone());
        }
        let mut committed = published.clone();
        committed.generation = self.base.as_ref().map_or(0, |b| b.generation) + 1;
        remote.push(&committed, self.base.as_ref()).await?;
        crate::store::write_json_atomic(&self.dir.join(crate::store::MANIFEST_FILE), &committed)?;
        self.base = Some(committed.clone());
        Ok(committed)
    }

    /// Uploads the mirror's indexes after an index update.
    pub async fn push_indexes(&self) -> Result<(), StoreError> {
        match &self.remote {
            Some(remote) => remote.push_indexes().await,
            None => Ok(()),
        }
    }

    /// Where the caption cache is: the dataset's folder, or for one on object storage its mirror (a shard's work
    /// folder is its own, the captions are the dataset's).
    pub fn captions_dir(&self) -> PathBuf {
        self.remote.as_ref().map_or_else(|| self.dir.clone(), |r| r.mirror.clone())
    }

    /// After a run on a remote dataset, however it ended: the captions it paid for go up for the next run.
    pub async fn push_captions(&self) {
        if let Some(remote) = &self.remote
            && let Err(e) = remote.push_captions().await
        {
            tracing::warn!("could not upload the caption cache to {}: {}", self.name, crate::error::Chain(&e));
        }
    }

    /// After a run on a remote dataset: a version that holds every vector makes the cache segments redundant
    /// (`uploaded` are this run's); otherwise what the run embedded goes up for the next run.
    pub async fn settle_cache(&self, committed_complete: bool, uploaded: Vec<String>) -> Result<(), StoreError> {
        let Some(remote) = &self.remote else { return Ok(()) };
        if committed_complete {
            let mut names = self.cached.clone();
            names.extend(uploaded);
            remote.remove_cache(&names).await;
            clear_cache(&self.dir)
        } else {
            remote.push_cache(&self.dir).await
        }
    }
}

/// What a shard proposes for its run's plan.
pub(crate) struct ShardSettings {
    pub run: String,
    pub model: String,
    pub requested_dimensions: Option<u32>,
    pub chunking: crate::store::ChunkingInfo,
    pub metadata_spec: Vec<String>,
    pub fresh: bool,
}

/// This process's part in a sharded run.
pub(crate) struct ShardRun {
    pub shard: Shard,
    pub plan: Plan,
    pub attempt: String,
    pub base_files: Vec<DataFile>,
    /// The version the run was already committed as (a shard started again after the commit has nothing to do).
    pub committed: Option<u64>,
}

/// A mirror whose dataset is gone from the store (or was never committed) must not offer its stale version.
fn forget_local_version(mirror: &Path) -> Result<(), StoreError> {
    let manifest = mirror.join(crate::store::MANIFEST_FILE);
    match std::fs::remove_file(&manifest) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(StoreError::Io { path: manifest, source: e }),
    }
}

/// Runs the uploads of a run's closed cache segments as they come; returns their names when the sender is gone.
pub(crate) fn spawn_segment_uploads(
    remote: Arc<Remote>,
    dir: PathBuf,
) -> (crate::store::SegmentSink, tokio::task::JoinHandle<Vec<String>>) {
    let (sink, mut closed) = tokio::sync::mpsc::unbounded_channel::<String>();
    let task = tokio::spawn(async move {
        let mut sent = Vec::new();
        while let Some(name) = closed.recv().await {
            match remote.push_cache_segment(&dir, &name).await {
                Ok(()) => sent.push(name),
                // The segment stays in the mirror, and goes up with the rest at the end of the run.
                Err(e) => tracing::warn!("could not upload cache segment {name}: {}", crate::error::Chain(&e)),
            }
        }
        sent
    });
    (sink, task)
}
