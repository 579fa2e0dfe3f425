//! A BERT encoder for CPU inference, written for speed after candle-transformers' `models::bert` (MIT/Apache-2.0).
//!
//! candle's tensor ops spent 40% of the full-window benchmark outside matrix products: copies for every transpose,
//! zero-filled outputs, a separate pass per element-wise op, SSE2-only code for the custom kernels, and 96 small
//! attention products per layer each split over the cores with its own barrier. Here activations are plain
//! row-major buffers and the products are faer's, so:
//! - no padding: the texts of a pass are stacked row after row, and attention runs per text over its own tokens;
//! - query, key and value are one fused projection, read in place through strided views (no transposes);
//! - biases and residuals are written into the output first and the product is accumulated onto them;
//! - attention runs one (text, head) pair per task, each product on one core, scores staying in cache;
//! - GELU (with bias), softmax and layer norm are single passes compiled for the CPU found at run time (pulp).
//!
//! Same weights, same arithmetic up to float rounding: the reference test holds it to sentence-transformers.
//!
//! The weights are read straight from `model.safetensors` with the `safetensors` crate, and `config.json` into
//! [`BertConfig`]: no tensor library is needed for that.

use faer::{Accum, MatMut, MatRef, Par};
use rayon::prelude::*;
use safetensors::{Dtype, SafeTensors};
use serde::Deserialize;

/// What `config.json` says of the architecture (Hugging Face's BERT configuration; other keys are ignored).
#[derive(Debug, Clone, Deserialize)]
pub struct BertConfig {
    pub vocab_size: usize,
    pub hidden_size: usize,
    pub num_hidden_layers: usize,
    pub num_attention_heads: usize,
    pub intermediate_size: usize,
    #[serde(default)]
    pub hidden_act: HiddenAct,
    pub max_position_embeddings: usize,
    #[serde(default = "one")]
    pub type_vocab_size: usize,
    #[serde(default = "layer_norm_eps")]
    pub layer_norm_eps: f64,
}

fn one() -> usize {
    1
}

fn layer_norm_eps() -> f64 {
    1e-12
}

/// The feed-forward activation, by the names Hugging Face configurations use.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
pub enum HiddenAct {
    /// GELU with the exact erf.
    #[default]
    #[serde(rename = "gelu")]
    Gelu,
    /// GELU's tanh approximation.
    #[serde(alias = "gelu_new", alias = "gelu_pytorch_tanh", alias = "gelu_fast", alias = "geluapproximate")]
    GeluApproximate,
    #[serde(rename = "relu")]
    Relu,
}

/// Why the encoder could not be built or run.
#[derive(Debug, thiserror::Error)]
pub enum BertError {
    #[error("the weights: {0}")]
    Weights(#[from] safetensors::SafeTensorError),
    #[error("tensor {name:?}: {message}")]
    Tensor { name: String, message: String },
    #[error("{0}")]
    Config(String),
    #[error("{0}")]
    Input(String),
}

type Result<T> = std::result::Result<T, BertError>;

/// The tensors of a safetensors file under a name prefix (`bert.encoder.layer.0.`…).
#[derive(Clone)]
pub struct Weights<'a> {
    tensors: &'a SafeTensors<'a>,
    prefix: String,
}

impl<'a> Weights<'a> {
    pub fn new(tensors: &'a SafeTensors<'a>) -> Self {
        Self { tensors, prefix: String::new() }
    }

    /// The tensors under `name.`.
    fn pp(&self, name: impl AsRef<str>) -> Self {
        Self { tensors: self.tensors, prefix: format!("{}{}.", self.prefix, name.as_ref()) }
    }

    fn contains(&self, name: &str) -> bool {
        self.tensors.tensor(&format!("{}{name}", self.prefix)).is_ok()
    }

    /// Tensor `name` as float32 values in row-major order, checked to have `shape`.
    fn get(&self, shape: &[usize], name: &str) -> Result<Vec<f32>> {
        let name = format!("{}{name}", self.prefix);
        let fail = |message: String| BertError::Tensor { name: name.clone(), message };
        let view = self.tensors.tensor(&name).map_err(|e| fail(e.to_string()))?;
        if view.shape() != shape {
            return Err(fail(format!("shape {:?}, expected {shape:?}", view.shape())));
        }
        // Half-precision checkpoints are widened once at load: inference runs in f32 either way.
        let data = view.data();
        match view.dtype() {
            Dtype::F32 => Ok(data.chunks_exact(4).map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]])).collect()),
            Dtype::F16 => Ok(data.chunks_exact(2).map(|b| half::f16::from_le_bytes([b[0], b[1]]).to_f32()).collect()),
            Dtype::BF16 => Ok(data.chunks_exact(2).map(|b| half::bf16::from_le_bytes([b[0], b[1]]).to_f32()).collect()),
            other => Err(fail(format!("{other:?} values; the encoder reads F32, F16 and BF16 weights"))),
        }
    }
}

/// Rows per task in element-wise passes: enough work to amortise scheduling, enough tasks to balance the cores.
const ROWS_PER_TASK: usize = 16;

/// A linear layer stored as (in, out), row-major, so that `x · W` reads it in place.
struct Dense {
    weight: Vec<f32>,
    bias: Vec<f32>,
    inputs: usize,
    outputs: usize,
}

impl Dense {
    /// A PyTorch linear layer, whose weight is stored as (out, in): transposed here, once.
    fn load(vb: &Weights<'_>, inputs: usize, outputs: usize) -> Result<Self> {
        let stored = vb.get(&[outputs, inputs], "weight")?;
        let mut weight = vec![0f32; inputs * outputs];
        for (o, row) in stored.chunks_exact(inputs).enumerate() {
            for (i, w) in row.iter().enumerate() {
                weight[i * outputs + o] = *w;
            }
        }
        Ok(Self { weight, bias: vb.get(&[outputs], "bias")?, inputs, outputs })
    }

    /// Layers with the same inputs side by side: (in, Σ out), one product instead of several.
    fn fused(parts: &[Dense]) -> Self {
        let inputs = parts.first().map_or(0, |p| p.inputs);
        let outputs = parts.iter().map(|p| p.outputs).sum();
        let mut weight = Vec::with_capacity(inputs * outputs);
        for row in 0..inputs {
            for p in parts {
                weight.extend_from_slice(&p.weight[row * p.outputs..(row + 1) * p.outputs]);
            }
        }
        let bias = parts.iter().flat_map(|p| p.bias.iter().copied()).collect();
        Self { weight, bias, inputs, outputs }
    }

    fn weight(&self) -> MatRef<'_, f32> {
        MatRef::from_row_major_slice(&self.weight, self.inputs, self.outputs)
    }

    /// `out = x · W + bias (+ residual)`: the bias and residual are written first and the product is accumulated
    /// onto them, which saves a pass over the output.
    fn forward_into(&self, x: &[f32], out: &mut [f32], residual: Option<&[f32]>) {
        let (rows, width) = (x.len() / self.inputs, self.outputs);
        let tasks = out.par_chunks_mut(width * ROWS_PER_TASK);
        match residual {
            Some(residual) => tasks.zip(residual.par_chunks(width * ROWS_PER_TASK)).for_each(|(out, residual)| {
                for (out, residual) in out.chunks_mut(width).zip(residual.chunks(width)) {
                    for ((o, b), r) in out.iter_mut().zip(&self.bias).zip(residual) {
                        *o = b + r;
                    }
                }
            }),
            None => tasks.for_each(|out| out.chunks_mut(width).for_each(|row| row.copy_from_slice(&self.bias))),
        }
        self.product_into(x, rows, out, Accum::Add);
    }

    /// `out (=|+=) x · W`, over all cores.
    fn product_into(&self, x: &[f32], rows: usize, out: &mut [f32], accum: Accum) {
        faer::linalg::matmul::matmul(
            MatMut::from_row_major_slice_mut(out, rows, self.outputs),
            accum,
            MatRef::from_row_major_slice(x, rows, self.inputs),
            self.weight(),
            1.0,
            Par::rayon(0),
        );
    }
}

struct Norm {
    weight: Vec<f32>,
    bias: Vec<f32>,
    eps: f32,
}

impl Norm {
    fn load(vb: Weights<'_>, size: usize, eps: f64) -> Result<Self> {
        Ok(Self { weight: vb.get(&[size], "weight")?, bias: vb.get(&[size], "bias")?, eps: eps as f32 })
    }

    /// Layer norm of every row of `x` in place.
    fn apply(&self, arch: pulp::Arch, x: &mut [f32]) {
        let width = self.weight.len();
        x.par_chunks_mut(width * ROWS_PER_TASK).for_each(|rows| arch.dispatch(NormRows { norm: self, rows }));
    }
}

/// The kernels below are `pulp::WithSimd` operations so that their loops are compiled for the instruction set found
/// at run time (AVX2 and FMA on current x86-64): `Arch::dispatch` calls `with_simd` from a function with those
/// target features, and everything it calls is `#[inline(always)]` so that it is compiled there too. (A closure
/// passed to `dispatch` is not reliably inlined, and then runs as baseline SSE2 code.)
struct NormRows<'a> {
    norm: &'a Norm,
    rows: &'a mut [f32],
}

impl pulp::WithSimd for NormRows<'_> {
    type Output = ();

    #[inline(always)]
    fn with_simd<S: pulp::Simd>(self, _: S) {
        let Norm { weight, bias, eps } = self.norm;
        for x in self.rows.chunks_mut(weight.len()) {
            let n = x.len() as f32;
            let mean = lane_sum(x) / n;
            let mut squares = [0f32; LANES];
            for chunk in x.chunks(LANES) {
                for (s, v) in squares.iter_mut().zip(chunk) {
                    *s += (v - mean) * (v - mean);
                }
            }
            let inv = 1.0 / (squares.iter().sum::<f32>() / n + eps).sqrt();
            for ((v, w), b) in x.iter_mut().zip(weight).zip(bias) {
                *v = (*v - mean) * inv * w + b;
            }
        }
    }
}

/// Lanes of the element-wise kernels' partial sums, so that the compiler keeps them in vector registers.
const LANES: usize = 8;

#[inline(always)]
fn lane_sum(x: &[f32]) -> f32 {
    let mut sums = [0f32; LANES];
    for chunk in x.chunks(LANES) {
        for (s, v) in sums.iter_mut().zip(chunk) {
            *s += v;
        }
    }
    sums.iter().sum()
}

struct Layer {
    qkv: Dense,
    attention_out: Dense,
    attention_norm: Norm,
    intermediate: Dense,
    output: Dense,
    output_norm: Norm,
}

pub struct Bert {
    word: Vec<f32>,
    position: Vec<f32>,
    /// Row 0 only: single-segment inputs.
    token_type: Vec<f32>,
    embeddings_norm: Norm,
    layers: Vec<Layer>,
    heads: usize,
    head_size: usize,
    hidden: usize,
    act: HiddenAct,
}

impl Bert {
    pub fn load(vb: Weights<'_>, config: &BertConfig) -> Result<Self> {
        // Some checkpoints nest the weights under "bert." (or the model type).
        let vb = if vb.contains("bert.embeddings.word_embeddings.weight") { vb.pp("bert") } else { vb };
        let (h, eps) = (config.hidden_size, config.layer_norm_eps);
        if config.num_attention_heads == 0 || h % config.num_attention_heads != 0 {
            return Err(BertError::Config(format!(
                "hidden_size {h} is not a multiple of num_attention_heads {}",
                config.num_attention_heads
            )));
        }
        let e = vb.pp("embeddings");
        let table = |name: &str, rows: usize| -> Result<Vec<f32>> { e.pp(name).get(&[rows, h], "weight") };
        let layers = (0..config.num_hidden_layers)
            .map(|i| {
                let l = vb.pp(format!("encoder.layer.{i}"));
                let a = l.pp("attention");
                let s = a.pp("self");
                let parts = ["query", "key", "value"]
                    .iter()
                    .map(|n| Dense::load(&s.pp(n), h, h))
                    .collect::<Result<Vec<_>>>()?;
                Ok(Layer {
                    qkv: Dense::fused(&parts),
                    attention_out: Dense::load(&a.pp("output.dense"), h, h)?,
                    attention_norm: Norm::load(a.pp("output.LayerNorm"), h, eps)?,
                    intermediate: Dense::load(&l.pp("intermediate.dense"), h, config.intermediate_size)?,
                    output: Dense::load(&l.pp("output.dense"), config.intermediate_size, h)?,
                    output_norm: Norm::load(l.pp("output.LayerNorm"), h, eps)?,
                })
            })
            .collect::<Result<Vec<_>>>()?;
        Ok(Self {
            word: table("word_embeddings", config.vocab_size)?,
            position: table("position_embeddings", config.max_position_embeddings)?,
            token_type: table("token_type_embeddings", config.type_vocab_size)?,
            embeddings_norm: Norm::load(e.pp("LayerNorm"), h, eps)?,
            layers,
            heads: config.num_attention_heads,
            head_size: h / config.num_attention_heads,
            hidden: h,
            act: config.hidden_act,
        })
    }

    /// Hidden states of every token of every text, stacked text after text: (Σ lengths, hidden), row-major. Each
    /// text attends only to its own tokens, so texts of any lengths share a pass without padding.
    pub fn forward(&self, texts: &[&[u32]]) -> Result<Vec<f32>> {
        let h = self.hidden;
        let (vocab, positions) = (self.word.len() / h, self.position.len() / h);
        let mut spans = Vec::with_capacity(texts.len());
        let mut rows = 0;
        for ids in texts {
            if ids.len() > positions {
                return Err(BertError::Input(format!(
                    "{} tokens, more than the model's {positions} positions",
                    ids.len()
                )));
            }
            if let Some(id) = ids.iter().find(|&&id| id as usize >= vocab) {
                return Err(BertError::Input(format!("token id {id} is outside the vocabulary of {vocab}")));
            }
            spans.push(Span { start: rows, len: ids.len() });
            rows += ids.len();
        }
        let arch = pulp::Arch::new();
        let mut x = vec![0f32; rows * h];
        let tokens = texts.iter().flat_map(|ids| ids.iter().enumerate());
        for (row, (position, &id)) in x.chunks_mut(h).zip(tokens) {
            let word = &self.word[id as usize * h..][..h];
            let position = &self.position[position * h..][..h];
            for (((v, w), p), t) in row.iter_mut().zip(word).zip(position).zip(&self.token_type[..h]) {
                *v = w + p + t;
            }
        }
        self.embeddings_norm.apply(arch, &mut x);

        let mut qkv = vec![0f32; rows * 3 * h];
        let mut context = vec![0f32; rows * h];
        let mut attended = vec![0f32; rows * h];
        let inner_width = self.layers.first().map_or(0, |l| l.intermediate.outputs);
        let mut inner = vec![0f32; rows * inner_width];
        for layer in &self.layers {
            layer.qkv.forward_into(&x, &mut qkv, None);
            self.attend(arch, &qkv, &spans, &mut context);
            layer.attention_out.forward_into(&context, &mut attended, Some(&x));
            layer.attention_norm.apply(arch, &mut attended);
            layer.intermediate.product_into(&attended, rows, &mut inner, Accum::Replace);
            activate(arch, self.act, &layer.intermediate.bias, &mut inner);
            layer.output.forward_into(&inner, &mut x, Some(&attended));
            layer.output_norm.apply(arch, &mut x);
        }
        Ok(x)
    }

    /// Multi-head self-attention of each text over its own tokens, into `context` (rows, hidden). One task per
    /// (text, head): its scores (at most positions²) stay in the core's cache, and its output is a disjoint block.
    fn attend(&self, arch: pulp::Arch, qkv: &[f32], spans: &[Span], context: &mut [f32]) {
        let (h, d) = (self.hidden, self.head_size);
        let rows = qkv.len() / (3 * h);
        let qkv = MatRef::from_row_major_slice(qkv, rows, 3 * h);
        let scale = 1.0 / (d as f32).sqrt();
        let mut blocks = Vec::with_capacity(spans.len() * self.heads);
        let mut rest = MatMut::from_row_major_slice_mut(context, rows, h);
        for span in spans {
            let (mut text, tail) = rest.split_at_row_mut(span.len);
            rest = tail;
            for head in 0..self.heads {
                let (block, others) = text.split_at_col_mut(d);
                text = others;
                blocks.push((span, head, block));
            }
        }
        blocks.into_par_iter().for_each_init(Vec::new, |scores: &mut Vec<f32>, (span, head, out)| {
            let (start, len) = (span.start, span.len);
            let q = qkv.submatrix(start, head * d, len, d);
            let k = qkv.submatrix(start, h + head * d, len, d);
            let v = qkv.submatrix(start, 2 * h + head * d, len, d);
            scores.resize(len * len, 0.0);
            let scores = &mut scores[..len * len];
            let product = MatMut::from_row_major_slice_mut(scores, len, len);
            faer::linalg::matmul::matmul(product, Accum::Replace, q, k.transpose(), scale, Par::Seq);
            arch.dispatch(SoftmaxRows { rows: scores, width: len });
            let probs = MatRef::from_row_major_slice(scores, len, len);
            faer::linalg::matmul::matmul(out, Accum::Replace, probs, v, 1.0, Par::Seq);
        });
    }
}

/// A text's rows in the stacked activations.
struct Span {
    start: usize,
    len: usize,
}

/// `x = act(x + bias)` over the rows of `x`, in place.
fn activate(arch: pulp::Arch, act: HiddenAct, bias: &[f32], x: &mut [f32]) {
    x.par_chunks_mut(bias.len() * ROWS_PER_TASK).for_each(|rows| arch.dispatch(Activate { act, bias, rows }));
}

struct Activate<'a> {
    act: HiddenAct,
    bias: &'a [f32],
    rows: &'a mut [f32],
}

impl pulp::WithSimd for Activate<'_> {
    type Output = ();

    #[inline(always)]
    fn with_simd<S: pulp::Simd>(self, _: S) {
        for row in self.rows.chunks_mut(self.bias.len()) {
            match self.act {
                HiddenAct::Gelu => {
                    for (v, b) in row.iter_mut().zip(self.bias) {
                        *v = gelu_erf(*v + b);
                    }
                }
                HiddenAct::GeluApproximate => {
                    for (v, b) in row.iter_mut().zip(self.bias) {
                        *v = gelu_tanh(*v + b);
                    }
                }
                HiddenAct::Relu => {
                    for (v, b) in row.iter_mut().zip(self.bias) {
                        *v = (*v + b).max(0.0);
                    }
                }
            }
        }
    }
}

/// Softmax of each row in place.
struct SoftmaxRows<'a> {
    rows: &'a mut [f32],
    width: usize,
}

impl pulp::WithSimd for SoftmaxRows<'_> {
    type Output = ();

    #[inline(always)]
    fn with_simd<S: pulp::Simd>(self, _: S) {
        for row in self.rows.chunks_mut(self.width) {
            softmax_row(row);
        }
    }
}

/// GELU with erf: what BERT's "gelu" means.
#[inline(always)]
fn gelu_erf(x: f32) -> f32 {
    0.5 * x * (1.0 + erf_fast(x * std::f32::consts::FRAC_1_SQRT_2))
}

/// GELU's tanh approximation ("gelu_new"), with tanh(y) = 1 − 2 / (e^{2y} + 1).
#[inline(always)]
fn gelu_tanh(x: f32) -> f32 {
    let y = 0.797_884_6 * (x + 0.044_715 * x * x * x);
    0.5 * x * (2.0 - 2.0 / (exp_fast(2.0 * y) + 1.0))
}

/// Eigen's rational approximation of erf for f32 (inputs clamped to [-4, 4], beyond which erf is ±1 in f32).
/// Plain multiply-adds, not `mul_add`: without a target-wide FMA feature that becomes a libm call per operation.
#[inline(always)]
pub fn erf_fast(x: f32) -> f32 {
    let x = x.clamp(-4.0, 4.0);
    let x2 = x * x;
    let mut p = x2 * -2.726_142_3e-10 + 2.770_681_4e-8;
    p = x2 * p + -2.101_024e-6;
    p = x2 * p + -5.692_506_4e-5;
    p = x2 * p + -7.349_906_3e-4;
    p = x2 * p + -2.954_600_2e-3;
    p = x2 * p + -1.609_603_3e-2;
    let mut q = x2 * -1.456_607_2e-5 + -2.133_740_6e-4;
    q = x2 * q + -1.682_827e-3;
    q = x2 * q + -7.373_329e-3;
    q = x2 * q + -1.426_474e-2;
    x * p / q
}

/// `exp` for softmax: Cephes' polynomial after range reduction, |relative error| < 2e-7 (checked in the tests),
/// written so that it vectorises on baseline x86-64 (rounding by the 1.5 × 2^23 trick, no libm calls).
#[inline(always)]
pub fn exp_fast(x: f32) -> f32 {
    const ROUND: f32 = 12_582_912.0; // 1.5 × 2^23
    let x = x.clamp(-87.0, 88.0);
    let t = x * std::f32::consts::LOG2_E + ROUND;
    let n = t - ROUND;
    let r = x - n * 0.693_359_4 - n * -2.121_944_4e-4;
    let mut p = 1.987_569_1e-4;
    p = p * r + 1.398_199_9e-3;
    p = p * r + 8.333_452e-3;
    p = p * r + 4.166_579_6e-2;
    p = p * r + 0.166_666_65;
    p = p * r + 0.5;
    let y = p * r * r + r + 1.0;
    let exponent = (t.to_bits() as i32).wrapping_sub(0x4B40_0000); // n as an integer
    y * f32::from_bits(((exponent + 127) << 23) as u32)
}

/// Softmax of one row of scores in place, branch-free and in [`LANES`] lanes so that every loop vectorises.
#[inline(always)]
fn softmax_row(x: &mut [f32]) {
    let mut lanes = [f32::MIN; LANES];
    for chunk in x.chunks(LANES) {
        for (m, v) in lanes.iter_mut().zip(chunk) {
            *m = m.max(*v);
        }
    }
    let max = lanes.iter().copied().fold(f32::MIN, f32::max);
    for v in x.iter_mut() {
        *v = exp_fast(*v - max);
    }
    let inv = 1.0 / lane_sum(x);
    for v in x.iter_mut() {
        *v *= inv;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn stored(tensors: &[(&str, Dtype, Vec<usize>, Vec<u8>)]) -> Vec<u8> {
        let views: Vec<_> = tensors
            .iter()
            .map(|(name, dtype, shape, data)| {
                (name.to_string(), safetensors::tensor::TensorView::new(*dtype, shape.clone(), data).expect("view"))
            })
            .collect();
        safetensors::serialize(views, None).expect("serialize")
    }

    #[test]
    fn weights_are_read_as_f32_from_any_float_width_and_checked() {
        let values = [1.5f32, -2.0, 0.25, 65504.0];
        let f32s: Vec<u8> = values.iter().flat_map(|v| v.to_le_bytes()).collect();
        let f16s: Vec<u8> = values.iter().flat_map(|v| half::f16::from_f32(*v).to_le_bytes()).collect();
        let bf16s: Vec<u8> = values.iter().flat_map(|v| half::bf16::from_f32(*v).to_le_bytes()).collect();
        let ints: Vec<u8> = [1i32, 2, 3, 4].iter().flat_map(|v| v.to_le_bytes()).collect();
        let bytes = stored(&[
            ("a.full", Dtype::F32, vec![2, 2], f32s),
            ("a.half", Dtype::F16, vec![2, 2], f16s),
            ("a.brain", Dtype::BF16, vec![2, 2], bf16s),
            ("a.ints", Dtype::I32, vec![4], ints),
        ]);
        let tensors = SafeTensors::deserialize(&bytes).expect("deserialize");
        let w = Weights::new(&tensors).pp("a");
        assert_eq!(w.get(&[2, 2], "full").expect("tensor"), values);
        assert_eq!(w.get(&[2, 2], "half").expect("tensor"), values);
        // bf16 keeps 8 bits of mantissa: 65504 rounds to 65536.
        assert_eq!(w.get(&[2, 2], "brain").expect("tensor"), [1.5, -2.0, 0.25, 65536.0]);
        let wrong_shape = w.get(&[4], "full").expect_err("refused").to_string();
        assert!(wrong_shape.contains("\"a.full\"") && wrong_shape.contains("[2, 2]"), "{wrong_shape}");
        let ints = w.get(&[4], "ints").expect_err("refused").to_string();
        assert!(ints.contains("I32"), "{ints}");
        assert!(w.get(&[4], "absent").expect_err("refused").to_string().contains("\"a.absent\""));
        assert!(w.contains("full") && !w.contains("absent"));
    }

    #[test]
    fn configurations_name_activations_as_hugging_face_does() {
        let config = |act: &str| -> BertConfig {
            serde_json::from_str(&format!(
                r#"{{"vocab_size": 10, "hidden_size": 4, "num_hidden_layers": 1, "num_attention_heads": 2,
                    "intermediate_size": 8, "max_position_embeddings": 16, "hidden_act": "{act}"}}"#
            ))
            .expect("config")
        };
        assert_eq!(config("gelu").hidden_act, HiddenAct::Gelu);
        assert_eq!(config("gelu_new").hidden_act, HiddenAct::GeluApproximate);
        assert_eq!(config("gelu_pytorch_tanh").hidden_act, HiddenAct::GeluApproximate);
        assert_eq!(config("relu").hidden_act, HiddenAct::Relu);
        let defaults = config("gelu");
        assert_eq!((defaults.type_vocab_size, defaults.layer_norm_eps), (1, 1e-12));
        let unknown = r#"{"vocab_size": 10, "hidden_size": 4, "num_hidden_layers": 1, "num_attention_heads": 2,
            "intermediate_size": 8, "max_position_embeddings": 16, "hidden_act": "swish"}"#;
        assert!(serde_json::from_str::<BertConfig>(unknown).expect_err("unknown").to_string().contains("swish"));
    }

    #[test]
    fn exp_fast_matches_std_closely() {
        let mut worst = 0f64;
        for i in -870_000..=0 {
            let x = i as f32 / 10_000.0;
            let exact = f64::from(x).exp();
            worst = worst.max((f64::from(exp_fast(x)) - exact).abs() / exact);
        }
        assert!(worst < 2e-7, "largest relative error {worst:e}");
    }

    #[test]
    fn softmax_matches_the_plain_one() {
        // Eleven values: one full vector of lanes and a remainder; a wide spread to exercise the max shift.
        let xs = [1.0f32, 2.0, 3.0, 50.0, 0.5, -1.0, 0.0, -50.0, 7.25, 49.0, -3.0];
        let mut row = xs;
        softmax_row(&mut row);
        let e: Vec<f64> = xs.iter().map(|x| f64::from(*x).exp()).collect();
        let sum: f64 = e.iter().sum();
        for (got, want) in row.iter().zip(e.iter().map(|v| v / sum)) {
            assert!((f64::from(*got) - want).abs() < 1e-6, "{row:?}");
        }
    }

    #[test]
    fn gelu_tanh_matches_the_formula() {
        for i in -800..=800 {
            let x = i as f32 / 100.0;
            let y = f64::from(x);
            let exact = 0.5 * y * (1.0 + (0.797_884_560_802_865_4 * (y + 0.044_715 * y * y * y)).tanh());
            assert!((f64::from(gelu_tanh(x)) - exact).abs() < 1e-5, "x = {x}");
        }
    }

    #[test]
    fn layer_norm_matches_the_plain_one() {
        let norm = Norm { weight: (0..12).map(|i| 0.5 + i as f32 / 10.0).collect(), bias: vec![0.25; 12], eps: 1e-12 };
        let xs: Vec<f32> = (0..24).map(|i| ((i * 7) % 11) as f32 - 3.0).collect();
        let mut rows = xs.clone();
        norm.apply(pulp::Arch::new(), &mut rows);
        for (got, x) in rows.chunks(12).zip(xs.chunks(12)) {
            let mean = x.iter().map(|v| f64::from(*v)).sum::<f64>() / 12.0;
            let var = x.iter().map(|v| (f64::from(*v) - mean).powi(2)).sum::<f64>() / 12.0;
            for (i, (g, v)) in got.iter().zip(x).enumerate() {
                let want = (f64::from(*v) - mean) / (var + 1e-12).sqrt() * f64::from(norm.weight[i]) + 0.25;
                assert!((f64::from(*g) - want).abs() < 1e-5, "{got:?}");
            }
        }
    }

    #[test]
    fn erf_fast_matches_libm_closely() {
        let mut worst = 0f64;
        for i in -60_000..=60_000 {
            let x = i as f32 / 10_000.0;
            let exact = libm_erf(f64::from(x));
            worst = worst.max((f64::from(erf_fast(x)) - exact).abs());
        }
        assert!(worst < 1e-6, "largest error {worst:e}");
    }

    /// erf by its series / continued fraction, in f64, as the reference.
    fn libm_erf(x: f64) -> f64 {
        // Abramowitz–Stegun 7.1.5 (the Maclaurin series) converges well for |x| < 3; beyond, erf is 1 - tiny.
        if x.abs() > 3.0 {
            let t = 1.0 - erfc_asymptotic(x.abs());
            return t.copysign(x);
        }
        let mut sum = 0.0;
        let mut term = x;
        let mut n = 0.0;
        while term.abs() > 1e-17 || n < 3.0 {
            sum += term / (2.0 * n + 1.0);
            n += 1.0;
            term *= -x * x / n;
        }
        sum * 2.0 / std::f64::consts::PI.sqrt()
    }

    fn erfc_asymptotic(x: f64) -> f64 {
        // Continued fraction (Lentz) for erfc, accurate for x > 2.
        let mut f = 0.0;
        for k in (1..60).rev() {
            f = (k as f64 / 2.0) / (x + f);
        }
        (-x * x).exp() / std::f64::consts::PI.sqrt() / (x + f)
    }
}
