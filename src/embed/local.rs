//! The embedded local model: a BERT-family sentence-transformers model run in-process on CPU (weights read from
//! safetensors, inference by the encoder in `bert.rs`).
//!
//! `local/all-minilm-l6-v2` is sentence-transformers/all-MiniLM-L6-v2 (384 dimensions, mean pooling, L2-normalised),
//! installed by `scripts/fetch-model.sh`; `local/<DIR>` loads any BERT-family sentence-transformers folder. Inference
//! runs on the blocking pool, in passes of about 2,048 tokens spread over the cores by the encoder (`bert.rs`),
//! which stacks texts of any lengths without padding.

use std::ops::Range;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use safetensors::SafeTensors;
use serde::Deserialize;
use tokenizers::Tokenizer;

use super::bert::{Bert, BertConfig, Weights};
use super::{EmbedError, Embedder, Embeddings};
use crate::stats::Stats;

/// The name of the default local model, and of its folder in the model cache.
pub const DEFAULT_LOCAL_MODEL: &str = "all-minilm-l6-v2";
/// Prefix of local model names on the command line.
pub const LOCAL_PREFIX: &str = "local/";
/// Tokens per forward pass: large enough for efficient matrix products, small enough to bound the activation
/// buffers (about 15 KiB per token for MiniLM). `TARS_INDEX_TOKENS_PER_PASS` overrides it.
const TOKENS_PER_PASS: usize = 2048;

/// Splits texts, in order, into runs of at most `budget` tokens (a longer text goes alone). The encoder does not pad,
/// so there is nothing to gain from sorting by length.
fn passes(lengths: &[usize], budget: usize) -> Vec<Range<usize>> {
    let mut runs = Vec::new();
    let (mut start, mut tokens) = (0, 0);
    for (i, &len) in lengths.iter().enumerate() {
        if i > start && tokens + len > budget {
            runs.push(start..i);
            (start, tokens) = (i, 0);
        }
        tokens += len;
    }
    if start < lengths.len() {
        runs.push(start..lengths.len());
    }
    runs
}

#[derive(Debug, thiserror::Error)]
pub enum LocalModelError {
    #[error("model folder {dir} not found; fetch the default model with scripts/fetch-model.sh")]
    Missing { dir: PathBuf },
    #[error("{path}: {message}")]
    File { path: PathBuf, message: String },
    #[error("inference failed: {0}")]
    Inference(String),
    #[error("input {index} has {tokens} tokens, more than the model's window of {window}")]
    TooLong { index: usize, tokens: usize, window: usize },
}

/// Where `local/<name>` models live: `$TARS_INDEX_MODELS`, else `$XDG_CACHE_HOME/tars-index/models`, else
/// `~/.cache/tars-index/models` (the same rule as scripts/fetch-model.sh).
pub fn model_cache_dir() -> PathBuf {
    if let Some(dir) = std::env::var_os("TARS_INDEX_MODELS").filter(|d| !d.is_empty()) {
        return PathBuf::from(dir);
    }
    let cache = std::env::var_os("XDG_CACHE_HOME")
        .filter(|d| !d.is_empty())
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".cache")))
        .unwrap_or_else(|| PathBuf::from(".cache"));
    cache.join("tars-index").join("models")
}

/// The folder a `local/…` model name refers to: a bare name is looked up in the model cache, anything with a path
/// separator (or an existing folder) is a path.
pub fn resolve_local_model(name: &str) -> Option<PathBuf> {
    let rest = name.strip_prefix(LOCAL_PREFIX)?;
    let as_path = Path::new(rest);
    if rest.contains('/') || rest.contains(std::path::MAIN_SEPARATOR) || as_path.is_dir() {
        Some(as_path.to_path_buf())
    } else {
        Some(model_cache_dir().join(rest))
    }
}

#[derive(Deserialize, Default)]
struct PoolingConfig {
    #[serde(default)]
    pooling_mode_cls_token: bool,
    #[serde(default)]
    pooling_mode_mean_tokens: bool,
}

#[derive(Deserialize)]
struct SentenceBertConfig {
    max_seq_length: Option<usize>,
}

#[derive(Deserialize)]
struct Module {
    #[serde(rename = "type", default)]
    kind: String,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Pooling {
    Mean,
    Cls,
}

/// A loaded model, ready to embed.
pub struct LocalModel {
    model: Bert,
    /// No padding, no truncation: over-long inputs are an error, and batches are padded in `forward`.
    counter: Arc<Tokenizer>,
    dims: usize,
    /// Most tokens per input including [CLS] and [SEP].
    window: usize,
    pooling: Pooling,
    normalize: bool,
}

fn file_error(path: &Path, message: impl ToString) -> LocalModelError {
    LocalModelError::File { path: path.to_path_buf(), message: message.to_string() }
}

fn read_json<T: serde::de::DeserializeOwned>(path: &Path) -> Result<T, LocalModelError> {
    let text = std::fs::read_to_string(path).map_err(|e| file_error(path, e))?;
    serde_json::from_str(&text).map_err(|e| file_error(path, format!("invalid JSON: {e}")))
}

impl LocalModel {
    /// Loads a sentence-transformers folder: config.json, tokenizer.json, model.safetensors, and where present
    /// 1_Pooling/config.json, sentence_bert_config.json and modules.json.
    pub fn load(dir: &Path) -> Result<Self, LocalModelError> {
        if !dir.is_dir() {
            return Err(LocalModelError::Missing { dir: dir.to_path_buf() });
        }
        let config: BertConfig = read_json(&dir.join("config.json"))?;
        let pooling_path = dir.join("1_Pooling/config.json");
        let pooling_config: PoolingConfig =
            if pooling_path.exists() { read_json(&pooling_path)? } else { PoolingConfig::default() };
        let pooling = if pooling_config.pooling_mode_cls_token && !pooling_config.pooling_mode_mean_tokens {
            Pooling::Cls
        } else {
            Pooling::Mean
        };
        let st_path = dir.join("sentence_bert_config.json");
        let max_seq = if st_path.exists() { read_json::<SentenceBertConfig>(&st_path)?.max_seq_length } else { None };
        let window = max_seq.unwrap_or(config.max_position_embeddings).min(config.max_position_embeddings);
        let modules_path = dir.join("modules.json");
        // Without modules.json, normalise anyway: cosine search wants unit vectors.
        let normalize = !modules_path.exists()
            || read_json::<Vec<Module>>(&modules_path)?.iter().any(|m| m.kind.ends_with("Normalize"));

        let tokenizer_path = dir.join("tokenizer.json");
        let mut counter = Tokenizer::from_file(&tokenizer_path).map_err(|e| file_error(&tokenizer_path, e))?;
        // The bundled tokenizer.json pads and truncates to 128; sentence-transformers does neither.
        counter.with_padding(None);
        counter.with_truncation(None).map_err(|e| file_error(&tokenizer_path, e))?;

        let weights_path = dir.join("model.safetensors");
        let weights = std::fs::read(&weights_path).map_err(|e| file_error(&weights_path, e))?;
        let tensors = SafeTensors::deserialize(&weights).map_err(|e| file_error(&weights_path, e))?;
        let model = Bert::load(Weights::new(&tensors), &config).map_err(|e| file_error(&weights_path, e))?;
        Ok(Self { model, counter: Arc::new(counter), dims: config.hidden_size, window, pooling, normalize })
    }

    pub fn dimensions(&self) -> usize {
        self.dims
    }

    /// Most content tokens per input: the window less [CLS] and [SEP].
    pub fn max_input_tokens(&self) -> usize {
        self.window.saturating_sub(2)
    }

    /// The tokenizer, for sizing chunks to fit the window.
    pub fn counter(&self) -> Arc<Tokenizer> {
        Arc::clone(&self.counter)
    }

    /// Embeds `texts` in order (blocking; call from a blocking thread).
    pub fn embed(&self, texts: &[&str]) -> Result<Vec<f32>, LocalModelError> {
        // Tokenised once, here: the length check and the forward pass both use these ids.
        let ids: Vec<Vec<u32>> = texts
            .iter()
            .map(|t| self.counter.encode_fast(*t, true).map(|e| e.get_ids().to_vec()))
            .collect::<Result<_, _>>()
            .map_err(|e| LocalModelError::Inference(format!("tokenizer: {e}")))?;
        let lengths: Vec<usize> = ids.iter().map(Vec::len).collect();
        if let Some((index, &tokens)) = lengths.iter().enumerate().find(|(_, l)| **l > self.window) {
            return Err(LocalModelError::TooLong { index, tokens, window: self.window });
        }
        // Only possible with a tokenizer that adds no [CLS]/[SEP]; there would be nothing to pool.
        if let Some(index) = lengths.iter().position(|&l| l == 0) {
            return Err(LocalModelError::Inference(format!("input {index} has no tokens")));
        }
        let budget =
            std::env::var("TARS_INDEX_TOKENS_PER_PASS").ok().and_then(|v| v.parse().ok()).unwrap_or(TOKENS_PER_PASS);
        let mut out = Vec::with_capacity(texts.len() * self.dims);
        for run in passes(&lengths, budget) {
            let batch: Vec<&[u32]> = ids[run].iter().map(Vec::as_slice).collect();
            out.extend(self.forward(&batch)?);
        }
        Ok(out)
    }

    /// One forward pass over token ids (with [CLS]/[SEP]); the encoder stacks the texts without padding.
    fn forward(&self, batch: &[&[u32]]) -> Result<Vec<f32>, LocalModelError> {
        let hidden = self.model.forward(batch).map_err(|e| LocalModelError::Inference(e.to_string()))?;
        let d = self.dims;
        let mut out = Vec::with_capacity(batch.len() * d);
        let mut start = 0;
        for ids in batch {
            let rows = &hidden[start * d..(start + ids.len()) * d];
            start += ids.len();
            let first = out.len();
            match self.pooling {
                Pooling::Cls => out.extend_from_slice(&rows[..d]),
                Pooling::Mean => {
                    out.resize(first + d, 0.0);
                    for row in rows.chunks(d) {
                        out[first..].iter_mut().zip(row).for_each(|(o, v)| *o += v);
                    }
                    let n = ids.len().max(1) as f32;
                    out[first..].iter_mut().for_each(|o| *o /= n);
                }
            }
            if self.normalize {
                let norm = out[first..].iter().map(|v| v * v).sum::<f32>().sqrt();
                if norm > 0.0 {
                    out[first..].iter_mut().for_each(|o| *o /= norm);
                }
            }
        }
        Ok(out)
    }
}

/// The local model behind the [`Embedder`] boundary.
pub struct LocalEmbedder {
    model: Arc<LocalModel>,
    name: String,
    stats: Arc<Stats>,
}

impl LocalEmbedder {
    pub fn new(name: &str, model: Arc<LocalModel>, stats: Arc<Stats>) -> Self {
        Self { model, name: name.to_owned(), stats }
    }

    pub fn local_model(&self) -> &LocalModel {
        &self.model
    }
}

impl Embedder for LocalEmbedder {
    async fn embed(&self, inputs: &[&str]) -> Result<Embeddings, EmbedError> {
        let model = Arc::clone(&self.model);
        let texts: Vec<String> = inputs.iter().map(|s| (*s).to_owned()).collect();
        Stats::add(&self.stats.requests, 1);
        self.stats.requests_in_flight.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let result = tokio::task::spawn_blocking(move || {
            let refs: Vec<&str> = texts.iter().map(String::as_str).collect();
            model.embed(&refs)
        })
        .await;
        self.stats.requests_in_flight.fetch_sub(1, std::sync::atomic::Ordering::Relaxed);
        let vectors = result
            .map_err(|e| EmbedError::Model { message: format!("inference thread failed: {e}") })?
            .map_err(|e| EmbedError::Model { message: e.to_string() })?;
        Ok(Embeddings { dimensions: self.model.dimensions(), vectors, usage_tokens: None })
    }

    fn model(&self) -> &str {
        &self.name
    }
}

#[cfg(test)]
mod tests {
    //! These need the default model in the model cache (scripts/fetch-model.sh; scripts/test.sh and CI fetch it).
    //! They fail, not skip, without it.

    use super::*;
    use crate::index::dot;

    fn model() -> &'static LocalModel {
        static MODEL: std::sync::OnceLock<LocalModel> = std::sync::OnceLock::new();
        MODEL.get_or_init(|| {
            let dir = model_cache_dir().join(DEFAULT_LOCAL_MODEL);
            LocalModel::load(&dir).unwrap_or_else(|e| panic!("{e} (run scripts/fetch-model.sh)"))
        })
    }

    fn cosines(texts: &[&str]) -> Vec<Vec<f32>> {
        let m = model();
        let v = m.embed(texts).expect("embed");
        let d = m.dimensions();
        (0..texts.len())
            .map(|i| (0..texts.len()).map(|j| dot(&v[i * d..(i + 1) * d], &v[j * d..(j + 1) * d])).collect())
            .collect()
    }

    #[test]
    fn matches_the_similarities_sentence_transformers_publishes() {
        // From the sentence-transformers documentation for all-MiniLM-L6-v2.
        let c = cosines(&["The weather is lovely today.", "It's so sunny outside!", "He drove to the stadium."]);
        for (got, want) in [(c[0][1], 0.6660), (c[0][2], 0.1046), (c[1][2], 0.1411)] {
            assert!((got - want).abs() < 0.002, "cosine {got:.4}, published {want}");
        }
        let c = cosines(&["The new movie is awesome", "The new movie is so great"]);
        assert!((c[0][1] - 0.8939).abs() < 0.002, "{}", c[0][1]);
        let c = cosines(&["The cat sits outside", "The cat plays in the garden"]);
        assert!((c[0][1] - 0.6788).abs() < 0.002, "{}", c[0][1]);
    }

    #[test]
    fn agrees_with_sentence_transformers_on_the_reference_fixture() {
        #[derive(Deserialize)]
        struct Fixture {
            sentences: Vec<String>,
            tokens: Vec<usize>,
            vectors: Vec<Vec<f32>>,
        }
        let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/minilm_reference.json");
        let fixture: Fixture =
            serde_json::from_str(&std::fs::read_to_string(&path).expect("fixture")).expect("fixture JSON");
        let texts: Vec<&str> = fixture.sentences.iter().map(String::as_str).collect();
        let m = model();
        let got = m.embed(&texts).expect("embed");
        let d = m.dimensions();
        let mut worst = f32::MAX;
        for (i, want) in fixture.vectors.iter().enumerate() {
            let v = &got[i * d..(i + 1) * d];
            let cosine = dot(v, want) / dot(want, want).sqrt();
            worst = worst.min(cosine);
            assert!(cosine >= 0.999, "sentence {i} ({:?}): cosine {cosine:.6} with sentence-transformers", texts[i]);
            let tokens = m.counter.encode_fast(texts[i], true).expect("encode").len();
            assert_eq!(tokens, fixture.tokens[i], "token count of sentence {i}");
        }
        eprintln!("lowest cosine against sentence-transformers: {worst:.7}");
    }

    #[test]
    fn unit_vectors_in_input_order_whatever_the_batch() {
        let m = model();
        let d = m.dimensions();
        assert_eq!(d, 384);
        assert_eq!(m.max_input_tokens(), 254);
        let long = "A much longer sentence that goes on and on about many different things. ".repeat(6);
        let texts = ["short", long.as_str(), "a medium length sentence about rust", "", "emoji 🦀 and ünïcödé"];
        let batch = m.embed(&texts).expect("batch");
        for (i, text) in texts.iter().enumerate() {
            let alone = m.embed(&[text]).expect("alone");
            let v = &batch[i * d..(i + 1) * d];
            assert!((dot(v, v) - 1.0).abs() < 1e-4, "input {i} is not unit length");
            // Padding in a mixed batch must not change a text's vector.
            assert!(dot(v, &alone) > 0.9999, "input {i}: batched and alone differ ({})", dot(v, &alone));
        }
    }

    #[test]
    fn paraphrases_score_above_unrelated_pairs() {
        let c = cosines(&[
            "How do I reset my password?",
            "I forgot my login password and need to change it",
            "The stock market fell sharply today",
            "Bananas are rich in potassium",
        ]);
        assert!(c[0][1] > 0.5, "{}", c[0][1]);
        for unrelated in [c[0][2], c[0][3], c[1][2], c[2][3]] {
            assert!(c[0][1] > unrelated + 0.3, "paraphrase {} vs unrelated {unrelated}", c[0][1]);
        }
    }

    #[test]
    fn over_long_input_is_an_error_not_a_truncation() {
        let text = "word ".repeat(400);
        match model().embed(&["fine", &text]) {
            Err(LocalModelError::TooLong { index: 1, tokens, window: 256 }) => assert!(tokens > 256),
            other => panic!("expected TooLong, got {:?}", other.map(|v| v.len())),
        }
    }

    #[test]
    fn ids_the_model_cannot_take_are_errors_not_panics() {
        let beyond_vocabulary = [101u32, 30_522, 102];
        let err = model().forward(&[&beyond_vocabulary]).expect_err("id outside the vocabulary");
        assert!(err.to_string().contains("token id 30522 is outside the vocabulary of 30522"), "{err}");
        let beyond_positions = vec![1000u32; 513];
        let err = model().forward(&[&[101, 102], &beyond_positions]).expect_err("too many positions");
        assert!(err.to_string().contains("513 tokens, more than the model's 512 positions"), "{err}");
    }

    #[test]
    fn missing_or_corrupt_folders_are_clear_errors() {
        let err = LocalModel::load(Path::new("/no/such/model")).err().expect("missing");
        assert!(matches!(err, LocalModelError::Missing { .. }) && err.to_string().contains("fetch-model.sh"), "{err}");

        let source = model_cache_dir().join(DEFAULT_LOCAL_MODEL);
        let copy = |skip: &str| {
            let dir = tempfile::tempdir().expect("tempdir");
            for name in
                ["config.json", "tokenizer.json", "model.safetensors", "modules.json", "sentence_bert_config.json"]
            {
                if name != skip {
                    std::fs::copy(source.join(name), dir.path().join(name)).expect("copy");
                }
            }
            dir
        };
        let dir = copy("config.json");
        std::fs::write(dir.path().join("config.json"), "{ not json").expect("write");
        let err = LocalModel::load(dir.path()).err().expect("bad config");
        assert!(err.to_string().contains("config.json"), "{err}");

        let dir = copy("model.safetensors");
        let weights = std::fs::read(source.join("model.safetensors")).expect("read");
        std::fs::write(dir.path().join("model.safetensors"), &weights[..weights.len() / 3]).expect("write");
        let err = LocalModel::load(dir.path()).err().expect("truncated weights");
        assert!(err.to_string().contains("model.safetensors"), "{err}");

        let dir = copy("tokenizer.json");
        let err = LocalModel::load(dir.path()).err().expect("no tokenizer");
        assert!(err.to_string().contains("tokenizer.json"), "{err}");
    }

    #[test]
    fn passes_stay_within_the_token_budget() {
        let lengths = [5, 100, 3, 40, 40, 300, 7];
        let runs = passes(&lengths, 100);
        let flat: Vec<usize> = runs.iter().cloned().flatten().collect();
        assert_eq!(flat, (0..lengths.len()).collect::<Vec<_>>(), "every text once, in order");
        for run in &runs {
            assert!(run.len() == 1 || lengths[run.clone()].iter().sum::<usize>() <= 100, "{run:?}");
        }
        // 5 | 100 | 3 + 40 + 40 | 300 (alone: longer than the budget) | 7
        assert_eq!(runs, [0..1, 1..2, 2..5, 5..6, 6..7]);
        assert!(passes(&[], 100).is_empty());
    }

    #[test]
    fn local_names_resolve_to_the_cache_or_a_path() {
        assert_eq!(resolve_local_model("local/all-minilm-l6-v2"), Some(model_cache_dir().join("all-minilm-l6-v2")));
        assert_eq!(resolve_local_model("local//opt/models/x"), Some(PathBuf::from("/opt/models/x")));
        assert_eq!(resolve_local_model("local/./my-model"), Some(PathBuf::from("./my-model")));
        assert_eq!(resolve_local_model("tars/text-embedding-3-small"), None);
    }
}
