//! Unit vectors: the graph scores `1 - a·b` on vectors normalised once, when they enter the index, which is exact
//! enough for cosine and several times cheaper than recomputing both norms on every comparison.

use super::hnsw::dot;

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
        for n in 0..200 {
            let a: Vec<f32> = (0..n).map(|i| (i as f32 * 0.37).sin()).collect();
            let b: Vec<f32> = (0..n).map(|i| (i as f32 * 0.11).cos()).collect();
            let naive: f32 = a.iter().zip(&b).map(|(x, y)| x * y).sum();
            assert!((dot(&a, &b) - naive).abs() < 1e-4, "n={n}");
        }
    }

    #[test]
    fn normalize_makes_unit_vectors_and_leaves_zero_alone() {
        let mut v: Vec<f32> = (0..1536).map(|i| ((i * 7919) % 113) as f32 - 56.0).collect();
        normalize(&mut v);
        assert!((dot(&v, &v) - 1.0).abs() < 1e-5);
        let mut zero = vec![0.0; 4];
        normalize(&mut zero);
        assert_eq!(zero, [0.0; 4]);
    }
}
