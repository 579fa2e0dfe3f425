//! Pipeline files (`pipelines/*.toml`): one job per file, the same settings as the `embed` and `index` flags.
//!
//! ```toml
//! [input]
//! paths = ["../docs"]            # relative to this file's directory
//! include = ["**/*.md"]
//!
//! [model]
//! name = "tars/text-embedding-3-small"
//!
//! [output]
//! dataset = "../target/docs-index"
//! ```
//!
//! Unknown keys are errors (a typo must not silently fall back to a default), and every error names the file, the
//! line and the key. Values keep where they came from ([`Origin`]) so that a value rejected later, once the model
//! is known, is reported at its line too.

use std::fmt;
use std::path::{Path, PathBuf};

use serde::Deserialize;
use toml::Spanned;

/// Where a setting's value came from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Origin {
    Default,
    Flag(&'static str),
    File { path: PathBuf, line: usize, key: &'static str },
}

impl fmt::Display for Origin {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Origin::Default => write!(f, "default"),
            Origin::Flag(flag) => write!(f, "{flag}"),
            Origin::File { path, line, key } => write!(f, "{}:{line}: {key}", path.display()),
        }
    }
}

/// A setting and where it came from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Setting<T> {
    pub value: T,
    pub origin: Origin,
}

impl<T> Setting<T> {
    pub fn new(value: T, origin: Origin) -> Self {
        Self { value, origin }
    }

    /// A value-specific error, prefixed with where the value came from.
    pub fn error(&self, message: impl fmt::Display) -> anyhow::Error {
        anyhow::anyhow!("{}: {message}", self.origin)
    }
}

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("{path}", path = path.display())]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    /// toml's message gives the line, the column and the key, with the offending text underlined.
    #[error("{path}: {message}")]
    Parse { path: PathBuf, message: String },
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PipelineFile {
    pub input: InputSection,
    #[serde(default)]
    pub model: ModelSection,
    #[serde(default)]
    pub chunking: ChunkingSection,
    #[serde(default)]
    pub requests: RequestsSection,
    pub output: OutputSection,
    #[serde(default)]
    pub index: IndexSection,
    #[serde(default)]
    pub budget: BudgetSection,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BudgetSection {
    pub max_tokens: Option<Spanned<u64>>,
    pub max_cost_usd: Option<Spanned<f64>>,
    pub usd_per_million_tokens: Option<Spanned<f64>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct InputSection {
    /// Files or directories, relative to the pipeline file's directory.
    pub paths: Spanned<Vec<String>>,
    #[serde(default)]
    pub include: Vec<String>,
    #[serde(default)]
    pub exclude: Vec<String>,
    pub text_field: Option<String>,
    pub id_field: Option<String>,
    /// Metadata fields, `FIELD[:TYPE]` or `*`, as `--metadata`.
    pub metadata: Option<Spanned<Vec<String>>>,
    /// `FORMAT` or `GLOB=FORMAT` rules, as `--format`: one string or a list.
    pub format: Option<Spanned<OneOrMany>>,
    /// Follow symbolic links to directories.
    #[serde(default)]
    pub follow: bool,
    /// The vision model that describes the images of the input, as `--caption-model`.
    pub caption_model: Option<Spanned<String>>,
}

/// A key that takes one string or a list of them.
#[derive(Debug, Clone, Deserialize)]
#[serde(untagged)]
pub enum OneOrMany {
    One(String),
    Many(Vec<String>),
}

impl OneOrMany {
    pub fn into_vec(self) -> Vec<String> {
        match self {
            OneOrMany::One(s) => vec![s],
            OneOrMany::Many(v) => v,
        }
    }
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ModelSection {
    pub name: Option<Spanned<String>>,
    pub dimensions: Option<Spanned<u32>>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ChunkingSection {
    pub max_tokens: Option<Spanned<usize>>,
    pub overlap: Option<Spanned<usize>>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RequestsSection {
    pub concurrency: Option<Spanned<u16>>,
    pub batch_inputs: Option<Spanned<usize>>,
    pub batch_tokens: Option<Spanned<usize>>,
    pub timeout_secs: Option<Spanned<u64>>,
    pub max_retries: Option<Spanned<u32>>,
    pub max_failures: Option<Spanned<u64>>,
    pub rpm: Option<Spanned<u32>>,
    pub tpm: Option<Spanned<u64>>,
    pub fallback_base: Option<Spanned<String>>,
    pub fallback_model: Option<Spanned<String>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct OutputSection {
    /// The dataset directory, relative to the pipeline file's directory.
    pub dataset: Spanned<String>,
    /// Most documents one run may delete: a count (`100`) or a share (`"10%"`).
    pub max_delete: Option<Spanned<MaxDelete>>,
    /// No limit on deletions.
    pub allow_mass_delete: Option<Spanned<bool>>,
}

/// `max_delete = 100` or `max_delete = "10%"`.
#[derive(Debug, Clone, Deserialize)]
#[serde(untagged)]
pub enum MaxDelete {
    Count(u64),
    Text(String),
}

impl MaxDelete {
    pub fn text(&self) -> String {
        match self {
            MaxDelete::Count(n) => n.to_string(),
            MaxDelete::Text(t) => t.clone(),
        }
    }
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct IndexSection {
    pub m: Option<Spanned<usize>>,
    pub ef_construction: Option<Spanned<usize>>,
}

/// `path` without `.` components and without `dir/..` pairs (`pipelines/../README.md` is `README.md`), as paths
/// are shown and recorded. A `..` after a symbolic link stays, since it leads out of the link's target, not back
/// to where the link is.
pub fn normal_path(path: &Path) -> PathBuf {
    use std::path::Component;
    // A dataset on object storage: `s3://b/p` is no path to tidy.
    if path.to_str().and_then(crate::store::url_scheme).is_some() {
        return path.to_path_buf();
    }
    let mut out = PathBuf::new();
    for component in path.components() {
        match component {
            Component::CurDir => {}
            Component::ParentDir => {
                let last_is_dir = matches!(out.components().next_back(), Some(Component::Normal(_)))
                    && !std::fs::symlink_metadata(&out).is_ok_and(|m| m.file_type().is_symlink());
                if last_is_dir {
                    out.pop();
                } else if !matches!(out.components().next_back(), Some(Component::RootDir)) {
                    out.push("..");
                }
            }
            other => out.push(other),
        }
    }
    if out.as_os_str().is_empty() { PathBuf::from(".") } else { out }
}

/// A parsed pipeline file, with what is needed to point at its lines.
#[derive(Debug)]
pub struct Pipeline {
    pub path: PathBuf,
    text: String,
    pub file: PipelineFile,
}

impl Pipeline {
    pub fn load(path: &Path) -> Result<Self, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Io { path: path.into(), source })?;
        Self::parse(path, text)
    }

    pub fn parse(path: &Path, text: String) -> Result<Self, ConfigError> {
        let file: PipelineFile = toml::from_str(&text)
            .map_err(|e| ConfigError::Parse { path: path.into(), message: e.to_string().trim_end().to_owned() })?;
        let pipeline = Self { path: path.to_path_buf(), text, file };
        if pipeline.file.input.paths.get_ref().is_empty() {
            let at = pipeline.origin(pipeline.file.input.paths.span(), "input.paths");
            return Err(ConfigError::Parse { path: path.into(), message: format!("{at}: lists no paths") });
        }
        Ok(pipeline)
    }

    /// The directory relative paths in the file are resolved against.
    pub fn base_dir(&self) -> PathBuf {
        match self.path.parent() {
            Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
            _ => PathBuf::from("."),
        }
    }

    /// A path of the file, resolved against the file's directory and normalised ([`normal_path`]).
    pub fn resolve_path(&self, relative: &str) -> PathBuf {
        if crate::store::url_scheme(relative).is_some() {
            return PathBuf::from(relative);
        }
        let p = Path::new(relative);
        normal_path(&if p.is_absolute() { p.to_path_buf() } else { self.base_dir().join(p) })
    }

    pub fn origin(&self, span: std::ops::Range<usize>, key: &'static str) -> Origin {
        let line = self.text.get(..span.start).map_or(0, |t| t.matches('\n').count()) + 1;
        Origin::File { path: self.path.clone(), line, key }
    }

    /// A spanned value as a [`Setting`] named `key`.
    pub fn setting<T: Clone>(&self, value: &Spanned<T>, key: &'static str) -> Setting<T> {
        Setting::new(value.get_ref().clone(), self.origin(value.span(), key))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(text: &str) -> Result<Pipeline, ConfigError> {
        Pipeline::parse(Path::new("p/job.toml"), text.to_owned())
    }

    #[test]
    fn values_know_their_line_and_paths_resolve_against_the_file() {
        let p = parse(
            "[input]\npaths = [\"docs\", \"/abs\"]\n\n[chunking]\nmax_tokens = 300\n\n[output]\ndataset = \"out\"\n",
        )
        .expect("valid");
        let max = p.file.chunking.max_tokens.as_ref().expect("max_tokens");
        let setting = p.setting(max, "chunking.max_tokens");
        assert_eq!(setting.value, 300);
        assert_eq!(setting.error("too big").to_string(), "p/job.toml:5: chunking.max_tokens: too big");
        assert_eq!(p.resolve_path("docs"), Path::new("p/docs"));
        assert_eq!(p.resolve_path("/abs"), Path::new("/abs"));
    }

    #[test]
    fn paths_are_normalised_but_not_through_symbolic_links() {
        for (given, normal) in [
            ("pipelines/../README.md", "README.md"),
            ("./docs/./a/../b", "docs/b"),
            ("../x", "../x"),
            ("a/../../x", "../x"),
            ("/../etc", "/etc"),
            ("a/..", "."),
        ] {
            assert_eq!(normal_path(Path::new(given)), Path::new(normal), "{given}");
        }
        let dir = tempfile::tempdir().expect("tempdir");
        std::fs::create_dir_all(dir.path().join("real/deep")).expect("mkdir");
        #[cfg(unix)]
        {
            std::os::unix::fs::symlink(dir.path().join("real/deep"), dir.path().join("link")).expect("link");
            let through = dir.path().join("link/../x");
            assert_eq!(normal_path(&through), through, "link/.. is real/, not the link's directory");
        }
    }

    #[test]
    fn unknown_keys_wrong_types_and_missing_sections_are_named() {
        let err =
            parse("[input]\npaths = [\"d\"]\n[modle]\nname = \"x\"\n[output]\ndataset = \"o\"\n").expect_err("typo");
        let text = err.to_string();
        assert!(text.contains("line 3") && text.contains("modle"), "{text}");

        let err = parse("[input]\npaths = [\"d\"]\n[chunking]\nmax_tokens = \"big\"\n[output]\ndataset = \"o\"\n")
            .expect_err("type");
        assert!(err.to_string().contains("line 4"), "{err}");

        let err = parse("[input]\npaths = [\"d\"]\n").expect_err("no output");
        assert!(err.to_string().contains("output"), "{err}");

        let err = parse("[input]\npaths = []\n[output]\ndataset = \"o\"\n").expect_err("no paths");
        assert!(err.to_string().contains("p/job.toml:2: input.paths"), "{err}");
    }
}
