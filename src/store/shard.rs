//! Sharded runs: N processes (Kubernetes Indexed Job pods, Ray tasks, array jobs) each embed the documents whose
//! name hashes to their index, and one commit publishes all their work as one version, by reference (no data file
//! is copied).
//!
//! ```text
//! <dataset>/_runs/<run>/plan.json                        created if absent by the first shard: the base version, N,
//!                                                        the vector space; every shard and the commit check it
//! <dataset>/_runs/<run>/shard-0003/<attempt>/...         one shard's new data files, documents table, dead letters
//! <dataset>/_runs/<run>/done/0003.json                   created if absent when the shard is complete: which attempt
//!                                                        won and its manifest (two pods of one index never both win)
//! <dataset>/_runs/<run>/docs-<gen>.parquet               the merged documents table the commit writes
//! ```
//!
//! A document belongs to shard `u64::from_le_bytes(blake3(name)[0..8]) % N` ([`shard_of`]), where the name is its
//! `doc` in the documents table. Each shard starts from the base version's documents of its slice, so unchanged
//! documents send nothing and deletions are noticed by the shard that owns the name. Row ids of shard i's new rows
//! start at `base + i·ROW_STRIDE`, so shards never collide and the physical `row_id` column stays true; the ids
//! left unused between shards are only gaps.

use std::collections::{BTreeMap, HashMap};
use std::path::Path;

use serde::{Deserialize, Serialize};

use super::docs::{read_docs, write_docs};
use super::failed::{read_failed, write_failed};
use super::reader::Dataset;
use super::remote::Remote;
use super::{ChunkingInfo, DataFile, DocRecord, FailedChunk, Manifest, RunStatus, StoreError, unix_now};

pub const RUNS_DIR: &str = "_runs";
/// Row ids each shard may hand out in one run (2^36, 68 billion); the next run starts after the highest used.
pub const ROW_STRIDE: u64 = 1 << 36;

/// This process's part of a sharded run: `index` of `count`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Shard {
    pub index: u32,
    pub count: u32,
}

impl Shard {
    pub fn new(index: u32, count: u32) -> Result<Self, String> {
        if count == 0 || count > 100_000 {
            return Err(format!("the number of shards must be between 1 and 100000 (got {count})"));
        }
        if index >= count {
            return Err(format!("shard {index} does not exist in {count} shards (they are numbered from 0)"));
        }
        Ok(Self { index, count })
    }

    /// `I/N`, as `--shard` takes it.
    pub fn parse(text: &str) -> Result<Self, String> {
        let (index, count) = text.split_once('/').ok_or_else(|| format!("{text:?}: expected I/N, as in 3/16"))?;
        let number = |s: &str| s.trim().parse::<u32>().map_err(|_| format!("{text:?}: expected I/N, as in 3/16"));
        Self::new(number(index)?, number(count)?)
    }

    pub fn owns(&self, doc: &str) -> bool {
        shard_of(doc, self.count) == self.index
    }

    /// Where this shard's new rows start, after `base_next` (the base version's next row id).
    pub fn first_row(&self, base_next: u64) -> u64 {
        base_next + u64::from(self.index) * ROW_STRIDE
    }
}

impl std::fmt::Display for Shard {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}/{}", self.index, self.count)
    }
}

/// The shard a document belongs to, of `count`: stable across machines, releases and languages (blake3 is on
/// PyPI too, for a driver that wants to know).
pub fn shard_of(doc: &str, count: u32) -> u32 {
    let hash = blake3::hash(doc.as_bytes());
    let mut first = [0u8; 8];
    first.copy_from_slice(&hash.as_bytes()[..8]);
    (u64::from_le_bytes(first) % u64::from(count.max(1))) as u32
}

/// What every shard of a run and its commit agree on.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Plan {
    pub run: String,
    pub shards: u32,
    /// The version the run builds on (`None`: the dataset had none).
    pub base_generation: Option<u64>,
    /// Whether the shards build on the base (same vector space, no `--overwrite`) or start from scratch.
    pub appends: bool,
    /// The lineage of the version the run publishes.
    pub lineage: String,
    pub model: String,
    pub requested_dimensions: Option<u32>,
    pub chunking: ChunkingInfo,
    pub metadata_spec: Vec<String>,
    pub created_unix: u64,
}

impl Plan {
    /// Why a shard started with other settings cannot join this run (a permanent error: retrying cannot help).
    pub fn mismatch(&self, other: &Plan) -> Option<String> {
        let differs = |what: &str, a: String, b: String| Some(format!("{what}: the run has {a}, this shard {b}"));
        if self.shards != other.shards {
            return differs("shards", self.shards.to_string(), other.shards.to_string());
        }
        if self.model != other.model || self.requested_dimensions != other.requested_dimensions {
            return differs("model", self.model.clone(), other.model.clone());
        }
        if self.chunking != other.chunking {
            return differs("chunking", format!("{:?}", self.chunking), format!("{:?}", other.chunking));
        }
        if self.metadata_spec != other.metadata_spec {
            return differs("metadata", self.metadata_spec.join(","), other.metadata_spec.join(","));
        }
        None
    }
}

/// A shard's completion: the attempt that won and what it wrote.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Done {
    pub shard: u32,
    pub attempt: String,
    /// The shard's own version: paths relative to its attempt folder, base files as they are.
    pub manifest: Manifest,
    /// Cache segments the shard used or wrote: removed once the run is committed.
    pub cache_segments: Vec<String>,
    /// Rows the shard added (the rest of its live rows are the base version's).
    #[serde(default)]
    pub new_rows: u64,
    pub finished_unix: u64,
}

/// One attempt of one shard: what it is and where it worked.
#[derive(Debug, Clone, Copy)]
pub struct Attempt<'a> {
    pub shard: Shard,
    pub id: &'a str,
    /// The local folder its pipeline ran in.
    pub work: &'a Path,
    /// The base version's files (the rest of its version's files are its own).
    pub base_files: &'a [DataFile],
}

/// How a shard's completion went.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Finished {
    /// This attempt is the shard's.
    Recorded,
    /// Another attempt of the same shard finished first (this one's files are removed).
    AnotherAttempt,
}

/// Where a run stands.
#[derive(Debug, Clone, Serialize)]
pub struct RunState {
    pub plan: Plan,
    /// Shards done, with their rows and chunks.
    pub done: Vec<ShardState>,
    pub missing: Vec<u32>,
    /// The version the run was committed as, if it was.
    pub committed: Option<u64>,
}

#[derive(Debug, Clone, Serialize)]
pub struct ShardState {
    pub shard: u32,
    pub attempt: String,
    pub live_rows: u64,
    pub new_rows: u64,
    pub status: RunStatus,
}

fn run_key(run: &str, name: &str) -> String {
    format!("{RUNS_DIR}/{run}/{name}")
}

fn done_key(run: &str, shard: u32) -> String {
    run_key(run, &format!("done/{shard:04}.json"))
}

/// The folder of one attempt of one shard.
pub fn attempt_prefix(run: &str, shard: u32, attempt: &str) -> String {
    run_key(run, &format!("shard-{shard:04}/{attempt}"))
}

/// A run id must name a folder on every store.
pub fn check_run_id(run: &str) -> Result<(), String> {
    let fine = !run.is_empty()
        && run.len() <= 128
        && run.chars().all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'))
        && !run.starts_with('.');
    if fine { Ok(()) } else { Err(format!("{run:?}: a run id is 1-128 of A-Z a-z 0-9 - _ . (not starting with .)")) }
}

impl Remote {
    /// The run's plan: `proposed` if this shard is the first, else the one there, which must agree with it.
    pub async fn plan(&self, proposed: &Plan) -> Result<Plan, StoreError> {
        let key = run_key(&proposed.run, "plan.json");
        let bytes = serde_json::to_vec_pretty(proposed).unwrap_or_default();
        if self.create(&key, bytes).await? {
            return Ok(proposed.clone());
        }
        let plan = self.read_plan(&proposed.run).await?;
        if let Some(why) = plan.mismatch(proposed) {
            return Err(StoreError::RunSettings {
                url: self.url.clone(),
                message: format!("run {} was started with other settings ({why}); use a new --run-id", plan.run),
            });
        }
        Ok(plan)
    }

    pub async fn read_plan(&self, run: &str) -> Result<Plan, StoreError> {
        let key = run_key(run, "plan.json");
        let bytes = self.get_bytes(&key).await?.ok_or_else(|| StoreError::Remote {
            url: self.url.clone(),
            message: format!("no run {run} here (no {key})"),
            source: None,
        })?;
        serde_json::from_slice(&bytes)
            .map_err(|e| StoreError::Manifest { path: self.object_name(&key), message: e.to_string() })
    }

    pub async fn shard_done(&self, run: &str, shard: u32) -> Result<Option<Done>, StoreError> {
        let key = done_key(run, shard);
        match self.get_bytes(&key).await? {
            Some(bytes) => serde_json::from_slice(&bytes)
                .map(Some)
                .map_err(|e| StoreError::Manifest { path: self.object_name(&key), message: e.to_string() }),
            None => Ok(None),
        }
    }

    /// Uploads what a shard's attempt wrote in `work` (the files its version has that `base_files` do not) and
    /// records the shard as done, unless another attempt did first.
    pub async fn finish_shard(
        &self,
        plan: &Plan,
        attempt: &Attempt<'_>,
        manifest: &Manifest,
        cache_segments: Vec<String>,
    ) -> Result<Finished, StoreError> {
        let Attempt { shard, id: attempt, work, base_files } = *attempt;
        if self.shard_done(&plan.run, shard.index).await?.is_some() {
            return Ok(Finished::AnotherAttempt);
        }
        let prefix = attempt_prefix(&plan.run, shard.index, attempt);
        let mut own: Vec<&str> = manifest
            .files
            .iter()
            .filter(|f| !base_files.iter().any(|b| b.path == f.path))
            .map(|f| f.path.as_str())
            .collect();
        let new_rows = manifest.files.iter().filter(|f| own.contains(&f.path.as_str())).map(|f| f.rows).sum();
        own.extend(manifest.docs_file.as_deref());
        own.extend(manifest.failed_file.as_deref());
        for relative in &own {
            self.upload_from(&work.join(relative), &format!("{prefix}/{relative}")).await?;
        }
        let done = Done {
            shard: shard.index,
            attempt: attempt.to_owned(),
            manifest: manifest.clone(),
            cache_segments,
            new_rows,
            finished_unix: unix_now(),
        };
        let bytes = serde_json::to_vec_pretty(&done).unwrap_or_default();
        if self.create(&done_key(&plan.run, shard.index), bytes).await? {
            return Ok(Finished::Recorded);
        }
        for relative in &own {
            self.delete_quietly(&format!("{prefix}/{relative}")).await;
        }
        Ok(Finished::AnotherAttempt)
    }

    /// The run's plan, its shards done and missing, and whether it was committed.
    pub async fn run_state(&self, run: &str) -> Result<RunState, StoreError> {
        let plan = self.read_plan(run).await?;
        let (mut done, mut missing) = (Vec::new(), Vec::new());
        let listed = self.list(&run_key(run, "done")).await?;
        for shard in 0..plan.shards {
            if !listed.contains_key(&done_key(run, shard)) {
                missing.push(shard);
                continue;
            }
            match self.shard_done(run, shard).await? {
                Some(d) => done.push(ShardState {
                    shard,
                    attempt: d.attempt,
                    live_rows: d.manifest.live_rows,
                    new_rows: d.new_rows,
                    status: d.manifest.status,
                }),
                None => missing.push(shard),
            }
        }
        let latest = self.latest().await?;
        let committed = latest.filter(|m| m.run_id.as_deref() == Some(run)).map(|m| m.generation);
        Ok(RunState { plan, done, missing, committed })
    }

    /// Publishes a run whose shards are all done as one version: the base version's files that still hold a live
    /// row, every shard's new files where they are, the shards' documents tables merged. Idempotent: a run already
    /// committed returns its version; any number of processes may try at once, and one version results.
    pub async fn commit_run(&self, run: &str) -> Result<Manifest, StoreError> {
        let plan = self.read_plan(run).await?;
        let latest = self.latest().await?;
        if let Some(m) = latest.as_ref().filter(|m| m.run_id.as_deref() == Some(run)) {
            return Ok(m.clone());
        }
        let fail = |message: String| StoreError::Remote { url: self.url.clone(), message, source: None };
        let now = latest.as_ref().map(|m| m.generation);
        if now != plan.base_generation {
            return Err(fail(format!(
                "run {run} was planned on version {} but the dataset is at version {} now (another run published \
                 meanwhile); start a new run (what the shards embedded is cached and will not be paid again)",
                plan.base_generation.map_or_else(|| "none".into(), |g| g.to_string()),
                now.map_or_else(|| "none".into(), |g| g.to_string())
            )));
        }
        let mut shards = Vec::with_capacity(plan.shards as usize);
        let mut missing = Vec::new();
        for shard in 0..plan.shards {
            match self.shard_done(run, shard).await? {
                Some(done) => shards.push(done),
                None => missing.push(shard.to_string()),
            }
        }
        if !missing.is_empty() {
            return Err(fail(format!(
                "run {run}: {} of {} shards are not done yet (missing: {})",
                missing.len(),
                plan.shards,
                missing.join(", ")
            )));
        }
        let base = match (plan.base_generation, plan.appends) {
            (Some(generation), true) => self.read_version(generation).await?,
            _ => None,
        };
        let generation = plan.base_generation.map_or(1, |g| g + 1);

        // The shards' documents and dead letters, fetched into the mirror under their names in the store.
        let mut docs: HashMap<String, DocRecord> = HashMap::new();
        let mut failed: Vec<FailedChunk> = Vec::new();
        let mut types: BTreeMap<String, crate::source::FieldType> = BTreeMap::new();
        let mut files: Vec<DataFile> = Vec::new();
        let base_files: Vec<&DataFile> = base.iter().flat_map(|b| b.files.iter()).collect();
        let mut status_failed = 0u64;
        let mut aborted = None;
        for done in &shards {
            let prefix = attempt_prefix(run, done.shard, &done.attempt);
            let m = &done.manifest;
            if let Some(docs_file) = &m.docs_file {
                let relative = format!("{prefix}/{docs_file}");
                self.download_to(&relative, &self.mirror.join(&relative)).await?;
                read_docs(&self.mirror, &relative, |record| {
                    docs.insert(record.doc.clone(), record);
                })?;
            }
            if let Some(failed_file) = &m.failed_file {
                let relative = format!("{prefix}/{failed_file}");
                self.download_to(&relative, &self.mirror.join(&relative)).await?;
                read_failed(&self.mirror, &relative, |chunk| failed.push(chunk))?;
            }
            types.extend(m.metadata.iter().map(|(k, v)| (k.clone(), *v)));
            for file in &m.files {
                if !base_files.iter().any(|b| b.path == file.path) {
                    files.push(DataFile { path: format!("{prefix}/{}", file.path), ..file.clone() });
                }
            }
            match &m.status {
                RunStatus::Complete => {}
                RunStatus::Partial { failed_chunks } => status_failed += failed_chunks,
                RunStatus::Aborted { reason } => aborted = Some(format!("shard {}: {reason}", done.shard)),
                RunStatus::Failed { error } => aborted = Some(format!("shard {}: {error}", done.shard)),
            }
        }
        let mut live: Vec<u64> = docs.values().flat_map(|d| d.rows.iter().copied()).collect();
        live.sort_unstable();
        let mut all: Vec<DataFile> =
            base_files.into_iter().filter(|f| super::writer::holds_live_row(f, &live)).cloned().collect();
        all.extend(files);
        all.sort_by_key(|f| f.first_row);

        let mut manifest = Manifest::new(plan.model.clone(), plan.requested_dimensions, plan.chunking.clone());
        manifest.generation = generation;
        manifest.lineage = plan.lineage.clone();
        manifest.dimensions =
            shards.iter().find_map(|d| d.manifest.dimensions).or(base.as_ref().and_then(|b| b.dimensions));
        manifest.created_unix = base.as_ref().map_or(plan.created_unix, |b| b.created_unix);
        manifest.next_row_id = all
            .iter()
            .map(|f| f.first_row + f.rows)
            .chain(shards.iter().map(|d| d.manifest.next_row()))
            .chain(base.as_ref().map(Manifest::next_row))
            .max()
            .unwrap_or(0);
        manifest.rows = all.iter().map(|f| f.rows).sum();
        manifest.files = all;
        manifest.live_rows = live.len() as u64;
        manifest.metadata = types;
        manifest.metadata_spec = plan.metadata_spec.clone();
        manifest.run_id = Some(run.to_owned());
        let docs_file = run_key(run, &format!("docs-{generation:06}.parquet"));
        write_docs(&self.mirror, &docs_file, &docs, &manifest.metadata)?;
        self.upload_from(&self.mirror.join(&docs_file), &docs_file).await?;
        manifest.docs_file = Some(docs_file);
        if !failed.is_empty() {
            let failed_file = run_key(run, &format!("failed-{generation:06}.jsonl"));
            write_failed(&self.mirror, &failed_file, &failed)?;
            self.upload_from(&self.mirror.join(&failed_file), &failed_file).await?;
            manifest.failed_file = Some(failed_file);
        }
        manifest.failed_chunks = failed.len() as u64;
        manifest.status = match aborted {
            Some(reason) => RunStatus::Aborted { reason },
            None if status_failed > 0 || !failed.is_empty() => {
                RunStatus::Partial { failed_chunks: status_failed.max(failed.len() as u64) }
            }
            None => RunStatus::Complete,
        };
        match self.commit(&manifest).await {
            Ok(()) => {}
            // Another committer of this very run may have won with an equal version: that is success.
            Err(StoreError::Conflict { .. }) => match self.latest().await? {
                Some(m) if m.run_id.as_deref() == Some(run) => return Ok(m),
                _ => return Err(StoreError::Conflict { url: self.url.clone(), generation }),
            },
            Err(e) => return Err(e),
        }
        let segments: Vec<String> = shards.iter().flat_map(|d| d.cache_segments.iter().cloned()).collect();
        self.remove_cache(&segments).await;
        Ok(manifest)
    }
}

/// Prepares `work` (emptied first) as the dataset a shard's pipeline runs on: the base version's documents and dead
/// letters of the shard's slice, its data files linked from `mirror` (for vectors a metadata change reuses), and the
/// mirror's cache segments. Returns the base version's files.
pub fn prepare_work(
    mirror: &Path,
    work: &Path,
    base: Option<&Manifest>,
    shard: Shard,
) -> Result<Vec<DataFile>, StoreError> {
    if work.exists() {
        std::fs::remove_dir_all(work).map_err(StoreError::io(work))?;
    }
    std::fs::create_dir_all(work).map_err(StoreError::io(work))?;
    let cache = mirror.join(super::CACHE_DIR);
    if let Ok(entries) = std::fs::read_dir(&cache) {
        let target = work.join(super::CACHE_DIR);
        std::fs::create_dir_all(&target).map_err(StoreError::io(&target))?;
        for entry in entries.flatten() {
            let path = entry.path();
            if path.extension().is_some_and(|e| e == "log") {
                link(&path, &target.join(entry.file_name()))?;
            }
        }
    }
    let Some(base) = base else { return Ok(Vec::new()) };
    let dataset = Dataset { dir: mirror.to_path_buf(), manifest: base.clone() };
    let mut docs = HashMap::new();
    dataset.for_each_doc(|record| {
        if shard.owns(&record.doc) {
            docs.insert(record.doc.clone(), record);
        }
    })?;
    let failed: Vec<FailedChunk> =
        dataset.failed_chunks()?.into_iter().filter(|chunk| shard.owns(&chunk.doc)).collect();
    for file in &base.files {
        let target = work.join(&file.path);
        if let Some(parent) = target.parent() {
            std::fs::create_dir_all(parent).map_err(StoreError::io(parent))?;
        }
        link(&mirror.join(&file.path), &target)?;
    }
    let mut manifest = base.clone();
    let docs_file = format!("{}/docs-base.parquet", super::DOCS_DIR);
    write_docs(work, &docs_file, &docs, &base.metadata)?;
    manifest.docs_file = Some(docs_file);
    manifest.failed_file = None;
    if !failed.is_empty() {
        let failed_file = format!("{}/failed-base.jsonl", super::FAILED_DIR);
        write_failed(work, &failed_file, &failed)?;
        manifest.failed_file = Some(failed_file);
    }
    manifest.failed_chunks = failed.len() as u64;
    manifest.live_rows = docs.values().map(|d| d.rows.len() as u64).sum();
    manifest.save(work)?;
    Ok(base.files.clone())
}

/// A hard link, or a copy where the filesystem has none.
fn link(from: &Path, to: &Path) -> Result<(), StoreError> {
    if std::fs::hard_link(from, to).is_err() {
        std::fs::copy(from, to).map_err(StoreError::io(to))?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The assignment is part of the format: drivers (a Ray script, say) may compute it themselves.
    #[test]
    fn documents_go_to_shards_by_a_stable_hash_of_their_name() {
        let golden = [("README.md", 4, 2), ("docs/guide.md", 16, 10), ("records.jsonl:17", 3, 0), ("", 7, 1)];
        for (doc, count, shard) in golden {
            assert_eq!(shard_of(doc, count), shard, "{doc:?} of {count}");
        }
        assert!((0..1000).all(|i| shard_of(&format!("doc-{i}"), 1) == 0));
        let mut sizes = [0u32; 4];
        for i in 0..4000 {
            sizes[shard_of(&format!("doc-{i}"), 4) as usize] += 1;
        }
        assert!(sizes.iter().all(|&n| (900..1100).contains(&n)), "balanced: {sizes:?}");
    }

    #[test]
    fn shards_and_run_ids_are_checked() {
        assert_eq!(Shard::parse("3/16"), Ok(Shard { index: 3, count: 16 }));
        assert!(Shard::parse("16/16").expect_err("out of range").contains("numbered from 0"));
        assert!(Shard::parse("0/0").is_err() && Shard::parse("3").is_err() && Shard::parse("a/b").is_err());
        assert!(check_run_id("nightly-2026-12-03").is_ok());
        assert!(check_run_id("../x").is_err() && check_run_id("").is_err() && check_run_id("a b").is_err());
    }
}
