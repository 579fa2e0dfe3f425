//! Resolving a job's settings: command-line flags over pipeline-file values over defaults, each value remembering
//! where it came from so that an error names the flag, or the file, line and key.

use std::path::PathBuf;
use std::time::Duration;

use super::args::{JobFlags, RequestFlags};
use crate::batch::{BatchLimits, BatchLimitsError, MAX_BATCH_TOKENS};
use crate::chunk::{ChunkSettings, ChunkSettingsError};
use crate::config::{Origin, Pipeline, Setting, normal_path};
use crate::embed::price::usd_per_million_tokens;
use crate::embed::{FallbackError, RateLimits, check_fallback};
use crate::index::{IndexParamError, IndexParams};
use crate::pipeline::DeleteLimit;
use crate::source::{FormatRule, MetadataSpec, RecordMapping, SourceOptions};
use crate::store::Manifest;

pub const DEFAULT_MODEL: &str = "tars/text-embedding-3-small";

/// A job's settings, resolved but not yet checked against the model.
#[derive(Debug)]
pub struct JobSpec {
    /// The inputs; formats and metadata are added by [`JobSpec::source_options`], which checks them.
    pub source: SourceOptions,
    /// `--format` / `input.format`, as given.
    pub formats: Option<Setting<Vec<String>>>,
    /// `--metadata` / `input.metadata`, as given.
    pub metadata: Option<Setting<Vec<String>>>,
    /// `--caption-model` / `input.caption_model`: images are read and captioned only with one.
    pub caption_model: Option<Setting<String>>,
    pub out: PathBuf,
    /// Where `out` came from, for messages about it.
    pub out_origin: Origin,
    pub model: Setting<String>,
    pub dimensions: Option<Setting<u32>>,
    pub concurrency: Option<Setting<u16>>,
    pub batch_inputs: Setting<usize>,
    pub batch_tokens: Setting<usize>,
    pub chunk_tokens: Option<Setting<usize>>,
    pub chunk_overlap: Option<Setting<usize>>,
    pub timeout: Setting<u64>,
    pub max_retries: Setting<u32>,
    pub m: Setting<usize>,
    pub ef_construction: Setting<usize>,
    pub fresh: bool,
    pub json: bool,
    pub wait_lock: Duration,
    pub dry_run: bool,
    pub max_failures: Option<Setting<u64>>,
    pub rpm: Option<Setting<u32>>,
    pub tpm: Option<Setting<u64>>,
    pub max_tokens: Option<Setting<u64>>,
    pub max_cost: Option<Setting<f64>>,
    pub price: Option<Setting<f64>>,
    /// `retry-failed`: send the dead-letter file's chunks, read no input.
    pub retry_failed: bool,
    pub fallback_base: Option<Setting<String>>,
    pub fallback_model: Option<Setting<String>>,
    /// `--max-delete` as given, or `None` for `--allow-mass-delete` (checked by [`JobSpec::delete_limit`]).
    pub max_delete: Option<Setting<Option<String>>>,
    /// `--no-index`: publish without touching the index.
    pub no_index: bool,
    /// `--shard`, `--shards`, `--run-id`, as given (see [`JobSpec::sharding`]).
    pub shard: Option<String>,
    pub shards: Option<u32>,
    pub run_id: Option<String>,
    /// `--repair`: check the dataset's files and drop damaged ones before the run.
    pub repair: bool,
}

/// The flag's value if given, else the file's (`value` at `key`), else none.
fn pick<T: Clone>(
    flag: Option<T>,
    name: &'static str,
    pipeline: Option<&Pipeline>,
    value: Option<&toml::Spanned<T>>,
    key: &'static str,
) -> Option<Setting<T>> {
    flag.map(|v| Setting::new(v, Origin::Flag(name))).or_else(|| pipeline.zip(value).map(|(p, v)| p.setting(v, key)))
}

fn or_default<T>(setting: Option<Setting<T>>, default: T) -> Setting<T> {
    setting.unwrap_or(Setting { value: default, origin: Origin::Default })
}

impl JobSpec {
    /// Settings for `embed INPUTS --out DIR [flags]`.
    pub fn from_flags(inputs: Vec<PathBuf>, out: PathBuf, flags: JobFlags) -> Self {
        Self::resolve(None, inputs, Some(out), None, None, flags)
    }

    /// Settings for `run FILE [flags]`: flags win over the file.
    pub fn from_pipeline(
        pipeline: &Pipeline,
        out: Option<PathBuf>,
        m: Option<usize>,
        ef_construction: Option<usize>,
        flags: JobFlags,
    ) -> Self {
        let inputs = pipeline.file.input.paths.get_ref().iter().map(|p| pipeline.resolve_path(p)).collect();
        Self::resolve(Some(pipeline), inputs, out, m, ef_construction, flags)
    }

    fn resolve(
        p: Option<&Pipeline>,
        inputs: Vec<PathBuf>,
        out: Option<PathBuf>,
        m: Option<usize>,
        ef_construction: Option<usize>,
        flags: JobFlags,
    ) -> Self {
        let f = p.map(|p| &p.file);
        let out_origin = match (&out, p) {
            (Some(_), _) => Origin::Flag("--out"),
            (None, Some(p)) => p.origin(p.file.output.dataset.span(), "output.dataset"),
            (None, None) => Origin::Default,
        };
        let out = out.or_else(|| p.map(|p| p.resolve_path(p.file.output.dataset.get_ref()))).unwrap_or_default();
        let out = normal_path(&out);
        let inputs = inputs.iter().map(|i| normal_path(i)).collect();
        let file_input = f.map(|f| &f.input);
        let nonempty = |flag: Vec<String>, file: Option<&Vec<String>>| {
            if flag.is_empty() { file.cloned().unwrap_or_default() } else { flag }
        };
        let requests = f.map(|f| &f.requests);
        let chunking = f.map(|f| &f.chunking);
        let index = f.map(|f| &f.index);
        let budget = f.map(|f| &f.budget);
        Self {
            source: SourceOptions {
                inputs,
                include: nonempty(flags.include, file_input.map(|i| &i.include)),
                exclude: nonempty(flags.exclude, file_input.map(|i| &i.exclude)),
                records: RecordMapping::new(
                    flags
                        .text_field
                        .or_else(|| file_input.and_then(|i| i.text_field.clone()))
                        .unwrap_or_else(|| "text".to_owned()),
                    flags.id_field.or_else(|| file_input.and_then(|i| i.id_field.clone())),
                    MetadataSpec::default(),
                    Default::default(),
                ),
                follow_links: flags.follow || file_input.is_some_and(|i| i.follow),
                ..SourceOptions::default()
            },
            formats: if !flags.format.is_empty() {
                Some(Setting::new(flags.format, Origin::Flag("--format")))
            } else {
                p.zip(file_input.and_then(|i| i.format.as_ref())).map(|(p, format)| {
                    Setting::new(format.get_ref().clone().into_vec(), p.origin(format.span(), "input.format"))
                })
            },
            metadata: if !flags.metadata.is_empty() {
                Some(Setting::new(flags.metadata, Origin::Flag("--metadata")))
            } else {
                p.zip(file_input.and_then(|i| i.metadata.as_ref())).map(|(p, m)| p.setting(m, "input.metadata"))
            },
            caption_model: pick(
                flags.caption_model,
                "--caption-model",
                p,
                file_input.and_then(|i| i.caption_model.as_ref()),
                "input.caption_model",
            ),
            out,
            out_origin,
            model: or_default(
                pick(flags.model, "--model", p, f.and_then(|f| f.model.name.as_ref()), "model.name"),
                DEFAULT_MODEL.to_owned(),
            ),
            dimensions: pick(
                flags.dimensions,
                "--dimensions",
                p,
                f.and_then(|f| f.model.dimensions.as_ref()),
                "model.dimensions",
            ),
            concurrency: pick(
                flags.requests.concurrency,
                "--concurrency",
                p,
                requests.and_then(|r| r.concurrency.as_ref()),
                "requests.concurrency",
            ),
            batch_inputs: or_default(
                pick(
                    flags.requests.batch_inputs,
                    "--batch-inputs",
                    p,
                    requests.and_then(|r| r.batch_inputs.as_ref()),
                    "requests.batch_inputs",
                ),
                128,
            ),
            batch_tokens: or_default(
                pick(
                    flags.requests.batch_tokens,
                    "--batch-tokens",
                    p,
                    requests.and_then(|r| r.batch_tokens.as_ref()),
                    "requests.batch_tokens",
                ),
                MAX_BATCH_TOKENS,
            ),
            chunk_tokens: pick(
                flags.chunk_tokens,
                "--chunk-tokens",
                p,
                chunking.and_then(|c| c.max_tokens.as_ref()),
                "chunking.max_tokens",
            ),
            chunk_overlap: pick(
                flags.chunk_overlap,
                "--chunk-overlap",
                p,
                chunking.and_then(|c| c.overlap.as_ref()),
                "chunking.overlap",
            ),
            timeout: or_default(
                pick(
                    flags.requests.timeout,
                    "--timeout",
                    p,
                    requests.and_then(|r| r.timeout_secs.as_ref()),
                    "requests.timeout_secs",
                ),
                120,
            ),
            max_retries: or_default(
                pick(
                    flags.requests.max_retries,
                    "--max-retries",
                    p,
                    requests.and_then(|r| r.max_retries.as_ref()),
                    "requests.max_retries",
                ),
                6,
            ),
            m: or_default(pick(m, "--m", p, index.and_then(|i| i.m.as_ref()), "index.m"), IndexParams::default().m),
            ef_construction: or_default(
                pick(
                    ef_construction,
                    "--ef-construction",
                    p,
                    index.and_then(|i| i.ef_construction.as_ref()),
                    "index.ef_construction",
                ),
                IndexParams::default().ef_construction,
            ),
            max_tokens: pick(
                flags.requests.max_tokens,
                "--max-tokens",
                p,
                budget.and_then(|b| b.max_tokens.as_ref()),
                "budget.max_tokens",
            ),
            max_cost: pick(
                flags.requests.max_cost,
                "--max-cost",
                p,
                budget.and_then(|b| b.max_cost_usd.as_ref()),
                "budget.max_cost_usd",
            ),
            price: pick(
                flags.requests.price,
                "--price",
                p,
                budget.and_then(|b| b.usd_per_million_tokens.as_ref()),
                "budget.usd_per_million_tokens",
            ),
            dry_run: flags.requests.dry_run,
            max_failures: pick(
                flags.requests.max_failures,
                "--max-failures",
                p,
                requests.and_then(|r| r.max_failures.as_ref()),
                "requests.max_failures",
            ),
            rpm: pick(flags.requests.rpm, "--rpm", p, requests.and_then(|r| r.rpm.as_ref()), "requests.rpm"),
            tpm: pick(flags.requests.tpm, "--tpm", p, requests.and_then(|r| r.tpm.as_ref()), "requests.tpm"),
            fresh: flags.overwrite,
            shard: flags.shard,
            shards: flags.shards,
            run_id: flags.run_id,
            json: flags.requests.json,
            wait_lock: Duration::from_secs(flags.requests.wait_lock),
            retry_failed: false,
            fallback_base: pick(
                flags.requests.fallback_base,
                "--fallback-base",
                p,
                requests.and_then(|r| r.fallback_base.as_ref()),
                "requests.fallback_base",
            ),
            fallback_model: pick(
                flags.requests.fallback_model,
                "--fallback-model",
                p,
                requests.and_then(|r| r.fallback_model.as_ref()),
                "requests.fallback_model",
            ),
            // One setting with two spellings, each as a flag or a file key: a flag wins over the file.
            max_delete: if flags.allow_mass_delete {
                Some(Setting::new(None, Origin::Flag("--allow-mass-delete")))
            } else if let Some(text) = flags.max_delete {
                Some(Setting::new(Some(text), Origin::Flag("--max-delete")))
            } else {
                let output = f.map(|f| &f.output);
                let allowed = output.and_then(|o| o.allow_mass_delete.as_ref()).filter(|a| *a.get_ref());
                match (p, allowed, output.and_then(|o| o.max_delete.as_ref())) {
                    (Some(p), Some(allowed), _) => {
                        Some(Setting::new(None, p.setting(allowed, "output.allow_mass_delete").origin))
                    }
                    (Some(p), None, Some(limit)) => {
                        let s = p.setting(limit, "output.max_delete");
                        Some(Setting::new(Some(s.value.text()), s.origin))
                    }
                    _ => None,
                }
            },
            no_index: flags.no_index,
            repair: flags.repair,
        }
    }

    /// The fallback endpoint's base URL and model name, checked to give vectors in the same space as the primary's
    /// at `primary_base`; `None` without a fallback.
    pub fn fallback(&self, primary_base: &str) -> anyhow::Result<Option<(String, String)>> {
        if self.fallback_base.is_none() && self.fallback_model.is_none() {
            return Ok(None);
        }
        let (model, base) = (self.fallback_model.as_ref(), self.fallback_base.as_ref());
        check_fallback(&self.model.value, primary_base, model.map(|m| m.value.as_str()), base.map(|b| b.value.as_str()))
            .map(Some)
            .map_err(|e| {
                let origin = match &e {
                    FallbackError::BadBase(_) | FallbackError::SameEndpoint => base.or(model),
                    FallbackError::Local | FallbackError::DifferentModel { .. } => model.or(base),
                };
                origin.map_or_else(|| anyhow::Error::new(e.clone()), |o| o.error(&e))
            })
    }

    /// Settings for `retry-failed DATASET [flags]`: the dataset's model, size and chunking, so the chunks sent
    /// again land in the same vector space and documents.
    pub fn for_retry(dataset: PathBuf, manifest: &Manifest, requests: RequestFlags) -> Self {
        let flags = JobFlags {
            model: Some(manifest.model.clone()),
            dimensions: manifest.requested_dimensions,
            chunk_tokens: Some(manifest.chunking.max_tokens),
            chunk_overlap: Some(manifest.chunking.overlap),
            requests,
            ..JobFlags::default()
        };
        let mut spec = Self::resolve(None, Vec::new(), Some(dataset), None, None, flags);
        spec.retry_failed = true;
        spec
    }

    /// Checks the settings that do not depend on the model.
    pub fn check_general(&self) -> anyhow::Result<()> {
        if self.out.as_os_str().is_empty() {
            anyhow::bail!("no dataset directory: pass --out or set output.dataset");
        }
        if self.out.exists() && !self.out.is_dir() {
            anyhow::bail!("{}: {} is a file, not a dataset directory", self.out_origin, self.out.display());
        }
        if let Some(c) = &self.concurrency
            && !(1..=256).contains(&c.value)
        {
            return Err(c.error(format!("must be between 1 and 256 (got {})", c.value)));
        }
        if let Some(r) = self.rpm.as_ref().filter(|r| r.value == 0) {
            return Err(r.error("must be at least 1"));
        }
        if let Some(t) = self.tpm.as_ref().filter(|t| t.value == 0) {
            return Err(t.error("must be at least 1"));
        }
        if self.timeout.value == 0 {
            return Err(self.timeout.error("must be at least 1 second"));
        }
        self.index_params()?;
        self.token_budget()?;
        self.delete_limit()?;
        Ok(())
    }

    /// The inputs with their formats and metadata fields, checked.
    pub fn source_options(&self) -> anyhow::Result<SourceOptions> {
        let mut options = self.source.clone();
        if let Some(model) = &self.caption_model {
            if model.value.trim().is_empty() {
                return Err(model.error("the caption model is empty"));
            }
            options.images = true;
        }
        if let Some(formats) = &self.formats {
            options.formats = formats
                .value
                .iter()
                .map(|f| FormatRule::parse(f).map_err(|e| formats.error(e)))
                .collect::<anyhow::Result<_>>()?;
        }
        if let Some(metadata) = &self.metadata {
            let spec = MetadataSpec::parse(&metadata.value).map_err(|e| metadata.error(e))?;
            let records = &options.records;
            for field in [Some(&records.text_field), records.id_field.as_ref()].into_iter().flatten() {
                if spec.declared(field).is_some() {
                    return Err(metadata.error(format!(
                        "{field:?} is the text or id field: it has its own column, so it cannot be metadata too"
                    )));
                }
            }
            options.records =
                RecordMapping::new(records.text_field.clone(), records.id_field.clone(), spec, Default::default());
        }
        Ok(options)
    }

    /// How many of the dataset's documents the run may delete.
    pub fn delete_limit(&self) -> anyhow::Result<DeleteLimit> {
        match &self.max_delete {
            Some(Setting { value: Some(text), origin }) => {
                DeleteLimit::parse(text).map_err(|e| Setting::new((), origin.clone()).error(e))
            }
            Some(Setting { value: None, .. }) => Ok(DeleteLimit::Unlimited),
            None => Ok(DeleteLimit::default()),
        }
    }

    /// The shard this process runs and the run it belongs to, for a sharded run.
    pub fn sharding(&self) -> anyhow::Result<Option<(crate::store::Shard, String)>> {
        let Some(given) = &self.shard else { return Ok(None) };
        let shard = if given == "auto" {
            shard_from_env(self.shards, |name| std::env::var(name).ok())?
        } else {
            crate::store::Shard::parse(given).map_err(|e| anyhow::anyhow!("--shard {e}"))?
        };
        let run = self.run_id.clone().ok_or_else(|| {
            anyhow::anyhow!("--shard needs --run-id (or TARS_INDEX_RUN_ID): the name every shard of this run shares")
        })?;
        crate::store::check_run_id(&run).map_err(|e| anyhow::anyhow!("--run-id {e}"))?;
        Ok(Some((shard, run)))
    }

    /// `--rpm`/`--tpm`: the key's limits, which the N shards of a sharded run share evenly (each takes 1/N).
    pub fn rate_limits(&self) -> RateLimits {
        let shards = self.sharding().ok().flatten().map_or(1, |(shard, _)| shard.count);
        RateLimits {
            requests_per_minute: self.rpm.as_ref().map(|r| (r.value / shards).max(1)),
            tokens_per_minute: self.tpm.as_ref().map(|t| (t.value / u64::from(shards)).max(1)),
        }
    }

    /// The price per million tokens: the override, else the built-in table's.
    pub fn price(&self) -> anyhow::Result<Option<f64>> {
        match &self.price {
            Some(p) if !(p.value.is_finite() && p.value >= 0.0) => Err(p.error(format!("{} is not a price", p.value))),
            Some(p) => Ok(Some(p.value)),
            None => Ok(usd_per_million_tokens(&self.model.value)),
        }
    }

    /// The token budget: `max_tokens`, and `max_cost` converted at the model's price, whichever is lower.
    pub fn token_budget(&self) -> anyhow::Result<Option<u64>> {
        let mut budget = self.max_tokens.as_ref().map(|t| t.value);
        if let Some(cost) = &self.max_cost {
            if !(cost.value.is_finite() && cost.value >= 0.0) {
                return Err(cost.error(format!("{} is not an amount", cost.value)));
            }
            let Some(price) = self.price()? else {
                return Err(cost.error(format!(
                    "no known price for {}; give one with --price (US dollars per million tokens)",
                    self.model.value
                )));
            };
            let tokens = if price > 0.0 { (cost.value / price * 1e6).floor() as u64 } else { u64::MAX };
            budget = Some(budget.map_or(tokens, |b| b.min(tokens)));
        }
        Ok(budget)
    }

    pub fn index_params(&self) -> anyhow::Result<IndexParams> {
        let params = IndexParams { m: self.m.value, ef_construction: self.ef_construction.value };
        params.validate().map_err(|e| match e {
            IndexParamError::M(_) => self.m.error(e),
            IndexParamError::EfConstruction { .. } => self.ef_construction.error(e),
        })?;
        Ok(params)
    }

    /// Chunking and batching for a model that takes at most `limit` tokens per input.
    pub fn chunking(&self, limit: usize) -> anyhow::Result<(ChunkSettings, BatchLimits)> {
        let chunk_tokens = or_default(self.chunk_tokens.clone(), 512.min(limit));
        let overlap = or_default(self.chunk_overlap.clone(), chunk_tokens.value / 8);
        let chunking = ChunkSettings::with_limit(chunk_tokens.value, overlap.value, limit).map_err(|e| match e {
            ChunkSettingsError::MaxTokens { .. } => chunk_tokens.error(e),
            ChunkSettingsError::Overlap { .. } => overlap.error(format!("{e} ({})", chunk_tokens.origin)),
        })?;
        let batching = BatchLimits::new(self.batch_inputs.value, self.batch_tokens.value, chunk_tokens.value).map_err(
            |e| match e {
                BatchLimitsError::Inputs(_) => self.batch_inputs.error(e),
                BatchLimitsError::Tokens { .. } => self.batch_tokens.error(e),
            },
        )?;
        Ok((chunking, batching))
    }
}

/// The shard the engine running this process assigned it, from its environment (`lookup`).
pub fn shard_from_env(
    shards: Option<u32>,
    lookup: impl Fn(&str) -> Option<String>,
) -> anyhow::Result<crate::store::Shard> {
    let number = |name: &str| -> anyhow::Result<Option<u32>> {
        lookup(name)
            .map(|v| v.trim().parse::<u32>().map_err(|_| anyhow::anyhow!("{name}={v:?} is not a number")))
            .transpose()
    };
    let make = |index: u32, count: Option<u32>, from: &str| -> anyhow::Result<crate::store::Shard> {
        let count = count.or(shards).ok_or_else(|| {
            anyhow::anyhow!("--shard auto: {from} gives the index; give the number of shards with --shards N")
        })?;
        crate::store::Shard::new(index, count).map_err(|e| anyhow::anyhow!("--shard auto ({from}): {e}"))
    };
    if let Some(index) = number("JOB_COMPLETION_INDEX")? {
        return make(index, None, "JOB_COMPLETION_INDEX");
    }
    if let Some(index) = number("CLOUD_RUN_TASK_INDEX")? {
        return make(index, number("CLOUD_RUN_TASK_COUNT")?, "CLOUD_RUN_TASK_INDEX");
    }
    if let Some(index) = number("AWS_BATCH_JOB_ARRAY_INDEX")? {
        return make(index, number("AWS_BATCH_JOB_ARRAY_SIZE")?, "AWS_BATCH_JOB_ARRAY_INDEX");
    }
    if let Some(id) = number("SLURM_ARRAY_TASK_ID")? {
        // Slurm arrays may start anywhere (--array=1-16): count from the first.
        let min = number("SLURM_ARRAY_TASK_MIN")?.unwrap_or(0);
        let index = id
            .checked_sub(min)
            .ok_or_else(|| anyhow::anyhow!("SLURM_ARRAY_TASK_ID {id} is below SLURM_ARRAY_TASK_MIN {min}"))?;
        return make(index, number("SLURM_ARRAY_TASK_COUNT")?, "SLURM_ARRAY_TASK_ID");
    }
    anyhow::bail!(
        "--shard auto: none of JOB_COMPLETION_INDEX, CLOUD_RUN_TASK_INDEX, AWS_BATCH_JOB_ARRAY_INDEX or \
         SLURM_ARRAY_TASK_ID is set; give the shard as --shard I/N"
    )
}

#[cfg(test)]
mod shard_tests {
    use super::shard_from_env;
    use crate::store::Shard;

    fn env<'a>(vars: &'a [(&'a str, &'a str)]) -> impl Fn(&str) -> Option<String> + 'a {
        move |name| vars.iter().find(|(k, _)| *k == name).map(|(_, v)| (*v).to_owned())
    }

    #[test]
    fn shards_share_the_keys_rate_limits() {
        let flags = |shard: Option<&str>| crate::cli::JobFlags {
            shard: shard.map(str::to_owned),
            run_id: Some("r".into()),
            requests: crate::cli::RequestFlags { tpm: Some(1_000_000), rpm: Some(10), ..Default::default() },
            ..Default::default()
        };
        let limits = |shard| super::JobSpec::from_flags(vec![], "ds".into(), flags(shard)).rate_limits();
        let quarter = limits(Some("1/4"));
        assert_eq!((quarter.tokens_per_minute, quarter.requests_per_minute), (Some(250_000), Some(2)));
        let whole = limits(None);
        assert_eq!((whole.tokens_per_minute, whole.requests_per_minute), (Some(1_000_000), Some(10)));
        assert_eq!(limits(Some("0/64")).requests_per_minute, Some(1), "never below one");
    }

    #[test]
    fn each_engine_says_which_shard_this_is() {
        let k8s = [("JOB_COMPLETION_INDEX", "3")];
        assert_eq!(shard_from_env(Some(8), env(&k8s)).expect("k8s"), Shard { index: 3, count: 8 });
        assert!(shard_from_env(None, env(&k8s)).expect_err("no count").to_string().contains("--shards N"));
        let cloud_run = [("CLOUD_RUN_TASK_INDEX", "1"), ("CLOUD_RUN_TASK_COUNT", "4")];
        assert_eq!(shard_from_env(None, env(&cloud_run)).expect("cloud run"), Shard { index: 1, count: 4 });
        let batch = [("AWS_BATCH_JOB_ARRAY_INDEX", "0"), ("AWS_BATCH_JOB_ARRAY_SIZE", "2")];
        assert_eq!(shard_from_env(None, env(&batch)).expect("batch"), Shard { index: 0, count: 2 });
        let slurm = [("SLURM_ARRAY_TASK_ID", "5"), ("SLURM_ARRAY_TASK_MIN", "1"), ("SLURM_ARRAY_TASK_COUNT", "8")];
        assert_eq!(shard_from_env(None, env(&slurm)).expect("slurm"), Shard { index: 4, count: 8 });
        assert!(shard_from_env(Some(4), env(&[("JOB_COMPLETION_INDEX", "4")])).is_err(), "out of range");
        assert!(shard_from_env(Some(4), env(&[("JOB_COMPLETION_INDEX", "x")])).is_err());
        assert!(shard_from_env(Some(4), env(&[])).expect_err("no index").to_string().contains("--shard I/N"));
    }
}

#[cfg(test)]
mod caption_tests {
    use super::JobSpec;
    use crate::config::Pipeline;

    fn spec(toml: &str, flag: Option<&str>) -> JobSpec {
        let pipeline = Pipeline::parse(std::path::Path::new("p/job.toml"), toml.to_owned()).expect("valid");
        let flags = crate::cli::JobFlags { caption_model: flag.map(str::to_owned), ..Default::default() };
        JobSpec::from_pipeline(&pipeline, None, None, None, flags)
    }

    #[test]
    fn images_are_read_only_with_a_caption_model_from_the_flag_or_the_file() {
        let file = "[input]\npaths = [\"d\"]\ncaption_model = \"tars/gpt-4o-mini\"\n[output]\ndataset = \"o\"\n";
        let from_file = spec(file, None);
        assert_eq!(from_file.caption_model.as_ref().map(|m| m.value.as_str()), Some("tars/gpt-4o-mini"));
        assert!(from_file.source_options().expect("options").images);
        let flag = spec(file, Some("tars/claude-sonnet-4"));
        assert_eq!(flag.caption_model.as_ref().map(|m| m.value.as_str()), Some("tars/claude-sonnet-4"));

        let none = spec("[input]\npaths = [\"d\"]\n[output]\ndataset = \"o\"\n", None);
        assert!(!none.source_options().expect("options").images);

        let empty = spec("[input]\npaths = [\"d\"]\ncaption_model = \" \"\n[output]\ndataset = \"o\"\n", None);
        let error = empty.source_options().expect_err("an empty model").to_string();
        assert_eq!(error, "p/job.toml:3: input.caption_model: the caption model is empty");
    }
}
