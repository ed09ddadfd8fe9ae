//! Weight-distribution statistics of a layer: moments, excess kurtosis, outlier fraction and a
//! histogram — what changes when a layer is pruned or quantized, and which layers have the heavy
//! tails that make low-bit grids hard.
//!
//! All sums are in f64. Excess kurtosis is `m₄ / m₂² − 3` with central moments `m_k` (0 for a
//! Gaussian, −1.2 for a uniform distribution; LLM weight matrices with outlier features are far
//! above 0). The outlier fraction counts weights more than `k` standard deviations from the mean
//! (0.27% for a Gaussian at `k = 3`). Statistics of the *kept* weights skip exact zeros when asked,
//! so a 50%-pruned layer is described by what survives.

/// Summary of one weight matrix.
#[derive(Debug, Clone, PartialEq)]
pub struct WeightStats {
    /// Number of values described.
    pub count: usize,
    /// Fraction of all values that are exactly 0 (before any zero skipping).
    pub zero_fraction: f64,
    /// Mean.
    pub mean: f64,
    /// Standard deviation (population).
    pub std: f64,
    /// Excess kurtosis `m₄ / m₂² − 3` (0 when the variance is 0).
    pub excess_kurtosis: f64,
    /// Fraction of values with `|w − mean| > outlier_sigmas · std`.
    pub outlier_fraction: f64,
    /// The threshold used, in standard deviations.
    pub outlier_sigmas: f64,
    /// Largest `|w|`.
    pub abs_max: f64,
    /// Counts in equal bins over `[−abs_max, abs_max]`.
    pub histogram: Vec<u64>,
}

/// Statistics of `w` with `bins` histogram bins and outliers beyond `sigmas` standard deviations;
/// `skip_zeros` describes only the non-zero values.
pub fn weight_stats(w: &[f32], bins: usize, sigmas: f64, skip_zeros: bool) -> WeightStats {
    let zeros = w.iter().filter(|&&v| v == 0.0).count();
    let vals = || {
        w.iter()
            .filter(move |&&v| !(skip_zeros && v == 0.0))
            .map(|&v| v as f64)
    };
    let count = vals().count();
    let n = count.max(1) as f64;
    let mean = vals().sum::<f64>() / n;
    let (mut m2, mut m4, mut amax) = (0f64, 0f64, 0f64);
    for v in vals() {
        let d = v - mean;
        m2 += d * d;
        m4 += d * d * d * d;
        amax = amax.max(v.abs());
    }
    m2 /= n;
    m4 /= n;
    let std = m2.sqrt();
    let excess_kurtosis = if m2 > 0.0 { m4 / (m2 * m2) - 3.0 } else { 0.0 };
    let outliers = vals().filter(|v| (v - mean).abs() > sigmas * std).count();
    let mut histogram = vec![0u64; bins.max(1)];
    if amax > 0.0 {
        for v in vals() {
            let b = (((v + amax) / (2.0 * amax)) * bins as f64).floor() as usize;
            histogram[b.min(bins - 1)] += 1;
        }
    } else {
        histogram[bins.max(1) / 2] = count as u64;
    }
    WeightStats {
        count,
        zero_fraction: zeros as f64 / w.len().max(1) as f64,
        mean,
        std,
        excess_kurtosis,
        outlier_fraction: outliers as f64 / n,
        outlier_sigmas: sigmas,
        abs_max: amax,
        histogram,
    }
}

/// A histogram with fixed bins: `bins` equal bins over `[lo, hi)`, of `w / scale` (so weights
/// of layers with different spreads can share one axis, e.g. `scale` = the layer's standard
/// deviation); values outside the range go to the end bins, and `skip_zeros` leaves exact zeros
/// out. Accumulates into `counts` (length `bins`), so several layers can be summed.
pub fn accumulate_histogram(
    counts: &mut [u64],
    w: &[f32],
    scale: f64,
    (lo, hi): (f64, f64),
    skip_zeros: bool,
) {
    let bins = counts.len();
    // NaN bounds or scale fail these comparisons too.
    let valid = hi > lo && scale > 0.0;
    if bins == 0 || !valid {
        return;
    }
    let width = (hi - lo) / bins as f64;
    for &v in w {
        if skip_zeros && v == 0.0 {
            continue;
        }
        let b = ((v as f64 / scale - lo) / width).floor();
        counts[(b.max(0.0) as usize).min(bins - 1)] += 1;
    }
}

/// Bin centres and densities (`count / (total · width)`, integrating to 1) of a histogram from
/// [`accumulate_histogram`], leaving out empty bins (for log-scale plots).
pub fn density_points(counts: &[u64], (lo, hi): (f64, f64)) -> Vec<(f64, f64)> {
    let total: u64 = counts.iter().sum();
    let width = (hi - lo) / counts.len().max(1) as f64;
    counts
        .iter()
        .enumerate()
        .filter(|(_, &c)| c > 0)
        .map(|(i, &c)| {
            (
                lo + (i as f64 + 0.5) * width,
                c as f64 / (total as f64 * width),
            )
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fixed_histograms_clamp_scale_and_integrate_to_one() {
        let mut c = vec![0u64; 4];
        // Scale 2: values −4, −1, 0 (skipped), 1, 3, 100 → −2, −0.5, 0.5, 1.5, 50 on [−2, 2).
        accumulate_histogram(
            &mut c,
            &[-4.0, -1.0, 0.0, 1.0, 3.0, 100.0],
            2.0,
            (-2.0, 2.0),
            true,
        );
        assert_eq!(c, vec![1, 1, 1, 2]);
        accumulate_histogram(&mut c, &[0.0], 2.0, (-2.0, 2.0), false);
        assert_eq!(c, vec![1, 1, 2, 2]);
        let d = density_points(&c, (-2.0, 2.0));
        assert_eq!(d[0], (-1.5, 1.0 / 6.0));
        let integral: f64 = d.iter().map(|(_, y)| y * 1.0).sum();
        assert!((integral - 1.0).abs() < 1e-12);
        assert!(density_points(&[0, 3], (0.0, 1.0)).len() == 1);
    }

    #[test]
    fn known_distributions() {
        // A fine uniform grid on [−1, 1]: excess kurtosis → −1.2, no 3σ outliers (σ = 0.577).
        let u: Vec<f32> = (0..20001).map(|i| i as f32 / 10000.0 - 1.0).collect();
        let s = weight_stats(&u, 10, 3.0, false);
        assert!(
            (s.excess_kurtosis + 1.2).abs() < 1e-3,
            "{}",
            s.excess_kurtosis
        );
        assert!(s.mean.abs() < 1e-6 && (s.std - (1.0f64 / 3.0).sqrt()).abs() < 1e-3);
        assert_eq!(s.outlier_fraction, 0.0);
        assert_eq!(s.histogram.iter().sum::<u64>(), 20001);
        // Two-point distribution ±1: kurtosis 1, excess −2.
        let t = [1.0f32, -1.0, 1.0, -1.0];
        assert!((weight_stats(&t, 4, 3.0, false).excess_kurtosis + 2.0).abs() < 1e-12);
        // One big value among many small ones: heavy tail, one outlier.
        let mut h = vec![0.01f32; 999];
        for (i, v) in h.iter_mut().enumerate() {
            if i % 2 == 0 {
                *v = -0.01;
            }
        }
        h.push(5.0);
        let s = weight_stats(&h, 8, 3.0, false);
        assert!(s.excess_kurtosis > 100.0);
        assert!((s.outlier_fraction - 0.001).abs() < 1e-12);
        // Zeros: counted, and skipped when asked.
        let z = [0.0f32, 0.0, 1.0, -1.0];
        let s = weight_stats(&z, 2, 3.0, true);
        assert_eq!((s.count, s.zero_fraction), (2, 0.5));
        assert_eq!(s.histogram, vec![1, 1]);
    }
}
