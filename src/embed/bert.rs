//! A BERT encoder for CPU inference, adapted from candle-transformers' `models::bert` (MIT/Apache-2.0) for speed.
//!
//! Profiling candle-transformers' model on the full-window benchmark put only 44% of the time in matrix products;
//! the rest went to scalar `erf` in GELU, a softmax built from separate exp/sum/div passes, per-batch matmuls over
//! (T × H) slices, and the thread-pool barriers of many small element-wise ops. Here:
//! - query, key and value are one fused projection, and every linear layer is one 2-D product over all tokens;
//! - softmax is candle-nn's single-pass last-dimension kernel;
//! - GELU uses a rational approximation of erf (Eigen's, |error| < 1e-6, checked in the tests) that the compiler
//!   vectorises, split over the cores.
//!
//! Same weights, same arithmetic up to float rounding: the reference test holds it to sentence-transformers.

use candle_core::{CpuStorage, CustomOp1, DType, Layout, Module, Result, Shape, Tensor};
use candle_nn::{Embedding, LayerNorm, VarBuilder};
use candle_transformers::models::bert::{Config, HiddenAct};
use rayon::prelude::*;

/// A linear layer stored as (in, out) so that `x · W` is one contiguous product.
struct Dense {
    weight_t: Tensor,
    bias: Tensor,
}

impl Dense {
    fn load(vb: &VarBuilder, inputs: usize, outputs: usize) -> Result<Self> {
        let weight = vb.get((outputs, inputs), "weight")?;
        Ok(Self { weight_t: weight.t()?.contiguous()?, bias: vb.get(outputs, "bias")? })
    }

    /// Query, key and value weights side by side: (in, 3 × out).
    fn fused(parts: &[Dense]) -> Result<Self> {
        let weights: Vec<&Tensor> = parts.iter().map(|d| &d.weight_t).collect();
        let biases: Vec<&Tensor> = parts.iter().map(|d| &d.bias).collect();
        Ok(Self { weight_t: Tensor::cat(&weights, 1)?.contiguous()?, bias: Tensor::cat(&biases, 0)? })
    }

    /// `x`: (rows, in) → (rows, out).
    fn forward(&self, x: &Tensor) -> Result<Tensor> {
        x.matmul(&self.weight_t)?.broadcast_add(&self.bias)
    }
}

struct Layer {
    qkv: Dense,
    attention_out: Dense,
    attention_norm: LayerNorm,
    intermediate: Dense,
    output: Dense,
    output_norm: LayerNorm,
}

pub struct Bert {
    word: Embedding,
    position: Embedding,
    token_type: Embedding,
    embeddings_norm: LayerNorm,
    layers: Vec<Layer>,
    heads: usize,
    head_size: usize,
    hidden: usize,
    act: HiddenAct,
}

fn layer_norm(vb: VarBuilder, size: usize, eps: f64) -> Result<LayerNorm> {
    Ok(LayerNorm::new(vb.get(size, "weight")?, vb.get(size, "bias")?, eps))
}

impl Bert {
    pub fn load(vb: VarBuilder, config: &Config) -> Result<Self> {
        // Some checkpoints nest the weights under "bert." (or the model type).
        let vb = if vb.contains_tensor("bert.embeddings.word_embeddings.weight") { vb.pp("bert") } else { vb };
        let (h, eps) = (config.hidden_size, config.layer_norm_eps);
        let e = vb.pp("embeddings");
        let embedding = |name: &str, rows: usize| -> Result<Embedding> {
            Ok(Embedding::new(e.pp(name).get((rows, h), "weight")?, h))
        };
        let word = embedding("word_embeddings", config.vocab_size)?;
        let position = embedding("position_embeddings", config.max_position_embeddings)?;
        let token_type = embedding("token_type_embeddings", config.type_vocab_size)?;
        let embeddings_norm = layer_norm(e.pp("LayerNorm"), h, eps)?;
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
                    qkv: Dense::fused(&parts)?,
                    attention_out: Dense::load(&a.pp("output.dense"), h, h)?,
                    attention_norm: layer_norm(a.pp("output.LayerNorm"), h, eps)?,
                    intermediate: Dense::load(&l.pp("intermediate.dense"), h, config.intermediate_size)?,
                    output: Dense::load(&l.pp("output.dense"), config.intermediate_size, h)?,
                    output_norm: layer_norm(l.pp("output.LayerNorm"), h, eps)?,
                })
            })
            .collect::<Result<Vec<_>>>()?;
        Ok(Self {
            word,
            position,
            token_type,
            embeddings_norm,
            layers,
            heads: config.num_attention_heads,
            head_size: h / config.num_attention_heads,
            hidden: h,
            act: config.hidden_act,
        })
    }

    /// Hidden states (batch, tokens, hidden) for token ids and a 0/1 attention mask, both (batch, tokens).
    pub fn forward(&self, ids: &Tensor, mask: &Tensor) -> Result<Tensor> {
        let (batch, tokens) = ids.dims2()?;
        let positions = Tensor::arange(0u32, tokens as u32, ids.device())?;
        let x = self
            .word
            .forward(ids)?
            .broadcast_add(&self.token_type.forward(&ids.zeros_like()?)?)?
            .broadcast_add(&self.position.forward(&positions)?)?;
        let mut x = self.embeddings_norm.forward(&x)?.reshape((batch * tokens, self.hidden))?;
        let keys = mask.to_dtype(DType::F32)?.contiguous()?;
        let softmax = MaskedSoftmax { scale: 1.0 / (self.head_size as f32).sqrt() };
        for layer in &self.layers {
            let qkv = layer.qkv.forward(&x)?.reshape((batch, tokens, 3, self.heads, self.head_size))?;
            let part = |i: usize| qkv.narrow(2, i, 1)?.squeeze(2)?.transpose(1, 2)?.contiguous();
            let (q, k, v) = (part(0)?, part(1)?, part(2)?);
            let probs = q.matmul(&k.t()?)?.apply_op2_no_bwd(&keys, &softmax)?;
            let context = probs.matmul(&v)?.transpose(1, 2)?.contiguous()?.reshape((batch * tokens, self.hidden))?;
            let attended = layer.attention_norm.forward(&(layer.attention_out.forward(&context)? + &x)?)?;
            let inner = layer.intermediate.forward(&attended)?;
            let inner = match self.act {
                HiddenAct::Gelu => inner.apply_op1_no_bwd(&FastGelu)?,
                HiddenAct::GeluApproximate => inner.gelu()?,
                HiddenAct::Relu => inner.relu()?,
            };
            x = layer.output_norm.forward(&(layer.output.forward(&inner)? + &attended)?)?;
        }
        x.reshape((batch, tokens, self.hidden))
    }
}

/// Eigen's rational approximation of erf for f32 (inputs clamped to [-4, 4], beyond which erf is ±1 in f32).
/// Plain multiply-adds, not `mul_add`: without a target-wide FMA feature that becomes a libm call per operation.
#[inline]
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
#[inline]
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

/// softmax(scale × scores) over the last dimension, with padded keys (mask 0) given zero weight: one pass per row
/// instead of separate scale, mask, max, exp, sum and divide passes. Scores are (batch, heads, queries, keys), the
/// mask (batch, keys).
struct MaskedSoftmax {
    scale: f32,
}

impl candle_core::CustomOp2 for MaskedSoftmax {
    fn name(&self) -> &'static str {
        "masked-softmax"
    }

    fn cpu_fwd(&self, s1: &CpuStorage, l1: &Layout, s2: &CpuStorage, l2: &Layout) -> Result<(CpuStorage, Shape)> {
        let (CpuStorage::F32(scores), Some((start, end)), CpuStorage::F32(mask), Some((m_start, m_end))) =
            (s1, l1.contiguous_offsets(), s2, l2.contiguous_offsets())
        else {
            candle_core::bail!("masked-softmax takes contiguous f32 tensors");
        };
        let (batch, heads, queries, keys) = l1.shape().dims4()?;
        let mask = &mask[m_start..m_end];
        if mask.len() != batch * keys {
            candle_core::bail!("masked-softmax: mask has {} values for {batch} × {keys}", mask.len());
        }
        let scores = &scores[start..end];
        let rows_per_item = heads * queries;
        let scale = self.scale;
        let mut out = vec![0f32; scores.len()];
        out.par_chunks_mut(keys).zip(scores.par_chunks(keys)).enumerate().for_each(|(row, (o, xs))| {
            let m = &mask[(row / rows_per_item) * keys..][..keys];
            softmax_row(o, xs, m, scale);
        });
        Ok((CpuStorage::F32(out), l1.shape().clone()))
    }
}

/// One row of [`MaskedSoftmax`], branch-free and in eight lanes so that the compiler vectorises every loop.
fn softmax_row(out: &mut [f32], scores: &[f32], mask: &[f32], scale: f32) {
    const LANES: usize = 8;
    let mut lanes = [f32::MIN; LANES];
    for (x, m) in scores.chunks(LANES).zip(mask.chunks(LANES)) {
        for i in 0..x.len() {
            lanes[i] = lanes[i].max(if m[i] > 0.0 { x[i] } else { f32::MIN });
        }
    }
    let max = lanes.iter().copied().fold(f32::MIN, f32::max);
    for ((o, x), m) in out.iter_mut().zip(scores).zip(mask) {
        *o = exp_fast((x - max) * scale) * m;
    }
    let mut sums = [0f32; LANES];
    for chunk in out.chunks(LANES) {
        for (s, v) in sums.iter_mut().zip(chunk) {
            *s += v;
        }
    }
    let sum: f32 = sums.iter().sum();
    let inv = if sum > 0.0 { 1.0 / sum } else { 0.0 };
    out.iter_mut().for_each(|v| *v *= inv);
}

/// GELU with erf (what BERT's "gelu" means), computed with [`erf_fast`] over all cores.
struct FastGelu;

impl CustomOp1 for FastGelu {
    fn name(&self) -> &'static str {
        "fast-gelu-erf"
    }

    fn cpu_fwd(&self, storage: &CpuStorage, layout: &Layout) -> Result<(CpuStorage, Shape)> {
        let (CpuStorage::F32(data), Some((start, end))) = (storage, layout.contiguous_offsets()) else {
            candle_core::bail!("fast-gelu-erf takes a contiguous f32 tensor");
        };
        let out: Vec<f32> = data[start..end]
            .par_iter()
            .with_min_len(16 * 1024)
            .map(|&x| 0.5 * x * (1.0 + erf_fast(x * std::f32::consts::FRAC_1_SQRT_2)))
            .collect();
        Ok((CpuStorage::F32(out), layout.shape().clone()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

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
    fn masked_softmax_matches_the_plain_one_and_ignores_padding() {
        let scores = Tensor::new(&[[[[1.0f32, 2.0, 3.0, 50.0], [0.5, -1.0, 0.0, -50.0]]]], &candle_core::Device::Cpu)
            .expect("scores");
        let mask = Tensor::new(&[[1.0f32, 1.0, 1.0, 0.0]], &candle_core::Device::Cpu).expect("mask");
        let probs = scores.apply_op2_no_bwd(&mask, &MaskedSoftmax { scale: 0.5 }).expect("softmax");
        let rows: Vec<Vec<f32>> = probs.squeeze(0).and_then(|t| t.squeeze(0)).and_then(|t| t.to_vec2()).expect("rows");
        for (row, xs) in rows.iter().zip([[1.0f32, 2.0, 3.0], [0.5, -1.0, 0.0]]) {
            let e: Vec<f64> = xs.iter().map(|x| (f64::from(*x) * 0.5).exp()).collect();
            let sum: f64 = e.iter().sum();
            for (got, want) in row.iter().zip(e.iter().map(|v| v / sum)) {
                assert!((f64::from(*got) - want).abs() < 1e-6, "{row:?}");
            }
            assert_eq!(row[3], 0.0, "a padded key gets no weight");
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
