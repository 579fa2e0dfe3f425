//! The distance the graph is built with: `1 - a·b` on unit vectors, clamped at 0.
//!
//! hnsw_rs's own `DistDot` asserts `1 - dot >= 0` and panics when rounding pushes the dot of two (near-)identical
//! unit vectors past 1, and `DistCosine` recomputes both norms in f64 on every call. Vectors are normalised once
//! when they enter the index, so a clamped dot product is exact enough and several times cheaper.

use hnsw_rs::prelude::Distance;

#[derive(Debug, Clone, Copy, Default)]
pub struct DistUnitDot;

impl Distance<f32> for DistUnitDot {
    fn eval(&self, a: &[f32], b: &[f32]) -> f32 {
        (1.0 - dot(a, b)).max(0.0)
    }
}

/// Dot product with eight independent accumulators, which the compiler turns into SIMD lanes (a single running
/// sum cannot be vectorised without reordering float additions).
pub fn dot(a: &[f32], b: &[f32]) -> f32 {
    let n = a.len().min(b.len());
    let (a, b) = (&a[..n], &b[..n]);
    let mut acc = [0f32; 8];
    let (a_chunks, b_chunks) = (a.chunks_exact(8), b.chunks_exact(8));
    let (a_tail, b_tail) = (a_chunks.remainder(), b_chunks.remainder());
    for (x, y) in a_chunks.zip(b_chunks) {
        for ((acc, x), y) in acc.iter_mut().zip(x).zip(y) {
            *acc += x * y;
        }
    }
    let mut sum: f32 = acc.iter().sum();
    for (x, y) in a_tail.iter().zip(b_tail) {
        sum += x * y;
    }
    sum
}

/// Scales `v` to unit length in place; a zero vector stays zero (it is then equally far from everything).
pub fn normalize(v: &mut [f32]) {
    let norm = dot(v, v).sqrt();
    if norm > 0.0 && norm.is_finite() {
        v.iter_mut().for_each(|x| *x /= norm);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dot_matches_naive_sum_for_every_length() {
        for n in 0..40 {
            let a: Vec<f32> = (0..n).map(|i| (i as f32 * 0.37).sin()).collect();
            let b: Vec<f32> = (0..n).map(|i| (i as f32 * 0.11).cos()).collect();
            let naive: f32 = a.iter().zip(&b).map(|(x, y)| x * y).sum();
            assert!((dot(&a, &b) - naive).abs() < 1e-4, "n={n}");
        }
    }

    #[test]
    fn self_distance_never_negative_and_normalize_makes_unit() {
        let mut v: Vec<f32> = (0..1536).map(|i| ((i * 7919) % 113) as f32 - 56.0).collect();
        normalize(&mut v);
        assert!((dot(&v, &v) - 1.0).abs() < 1e-5);
        assert_eq!(DistUnitDot.eval(&v, &v), DistUnitDot.eval(&v, &v).max(0.0));
        assert!(DistUnitDot.eval(&v, &v) < 1e-5);
        let mut zero = vec![0.0; 4];
        normalize(&mut zero);
        assert_eq!(zero, [0.0; 4]);
    }
}
