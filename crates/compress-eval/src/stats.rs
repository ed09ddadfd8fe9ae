//! Small statistics used by every report: means with normal-approximation 95% intervals,
//! percentiles, and the log-softmax all metrics are built on.

use serde::{Deserialize, Serialize};

/// z-value of a two-sided 95% normal interval.
pub const Z95: f64 = 1.96;

/// A mean with its standard error and 95% interval `mean ± 1.96·se`.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct MeanCi {
    /// Sample mean.
    pub mean: f64,
    /// Standard error of the mean, `s / √n` with the sample standard deviation `s`.
    pub se: f64,
    /// Lower end of the 95% interval.
    pub lo: f64,
    /// Upper end of the 95% interval.
    pub hi: f64,
}

/// Mean, standard error and 95% interval of `xs` (treated as independent samples); the
/// standard error is 0 for fewer than two samples. Sums run in f64.
pub fn mean_ci(xs: &[f64]) -> MeanCi {
    let n = xs.len() as f64;
    let mean = xs.iter().sum::<f64>() / n;
    let se = if xs.len() > 1 {
        (xs.iter().map(|x| (x - mean).powi(2)).sum::<f64>() / (n - 1.0) / n).sqrt()
    } else {
        0.0
    };
    MeanCi {
        mean,
        se,
        lo: mean - Z95 * se,
        hi: mean + Z95 * se,
    }
}

/// The `q`-quantile (`0 ≤ q ≤ 1`) of already sorted values, by linear interpolation between
/// the closest ranks (the "type 7" definition of numpy's default).
pub fn quantile_sorted(sorted: &[f64], q: f64) -> f64 {
    assert!(!sorted.is_empty(), "quantile of no values");
    let pos = q.clamp(0.0, 1.0) * (sorted.len() - 1) as f64;
    let (i, frac) = (pos.floor() as usize, pos.fract());
    match sorted.get(i + 1) {
        Some(next) => sorted[i] + frac * (next - sorted[i]),
        None => sorted[i],
    }
}

/// `ln Σ_j exp(row_j)`, shifted by the maximum so large logits cannot overflow: the
/// exponentials in f32 (each within 1 ulp), their sum and the logarithm in f64.
pub fn log_sum_exp(row: &[f32]) -> f64 {
    let max = row.iter().copied().fold(f32::NEG_INFINITY, f32::max);
    if !max.is_finite() {
        // All −∞ (or a NaN/∞ logit): the plain formula says what it is.
        let m = f64::from(max);
        return m + row
            .iter()
            .map(|&x| (f64::from(x) - m).exp())
            .sum::<f64>()
            .ln();
    }
    // exp(x − max) ≤ 1 on compress-kernels' vectorized f32 exp (≤ 1 ulp; a vocabulary row is
    // 10⁴–10⁵ exponentials), in chunks, summed in f64.
    let mut sum = 0f64;
    let mut buf = [0f32; 1024];
    for chunk in row.chunks(buf.len()) {
        let b = &mut buf[..chunk.len()];
        for (d, &x) in b.iter_mut().zip(chunk) {
            *d = x - max;
        }
        compress_core::kernels::vexp::exp_in_place(b);
        sum += b.iter().map(|&e| f64::from(e)).sum::<f64>();
    }
    f64::from(max) + sum.ln()
}

/// `ln softmax(row)` in f64: `row_i − ln Σ_j exp(row_j)`.
pub fn log_softmax(row: &[f32]) -> Vec<f64> {
    let lse = log_sum_exp(row);
    row.iter().map(|&x| x as f64 - lse).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mean_ci_by_hand() {
        // 1, 2, 3: mean 2, s² = 1, se = 1/√3.
        let m = mean_ci(&[1.0, 2.0, 3.0]);
        assert!((m.mean - 2.0).abs() < 1e-12);
        assert!((m.se - 1.0 / 3f64.sqrt()).abs() < 1e-12);
        assert!((m.hi - m.mean - Z95 * m.se).abs() < 1e-12);
        assert_eq!(mean_ci(&[5.0]).se, 0.0);
    }

    #[test]
    fn quantiles_interpolate() {
        let v = [1.0, 2.0, 3.0, 4.0, 5.0];
        assert_eq!(quantile_sorted(&v, 0.0), 1.0);
        assert_eq!(quantile_sorted(&v, 0.5), 3.0);
        assert_eq!(quantile_sorted(&v, 1.0), 5.0);
        assert!((quantile_sorted(&v, 0.9) - 4.6).abs() < 1e-12);
    }

    #[test]
    fn log_softmax_normalizes() {
        let l = log_softmax(&[0.0, 3f32.ln()]);
        assert!((l[0] - 0.25f64.ln()).abs() < 1e-7 && (l[1] - 0.75f64.ln()).abs() < 1e-7);
    }
}
