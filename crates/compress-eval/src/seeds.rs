//! Repeated runs that differ only in a seed (the calibration sample, a training data order):
//! mean ± standard deviation over seeds, and a paired test of two methods run with the same
//! seeds.
//!
//! The paired test is an exact sign-flip permutation test of the mean per-seed difference
//! (Fisher 1935; no normality assumption, fine for the 3–10 seeds a run can afford): under "no
//! difference" each paired difference is as likely to have either sign, so the p-value is the
//! fraction of the `2^n` sign assignments whose mean is at least as far from 0 as the observed
//! one. With `n` seeds the smallest possible p-value is `2 / 2^n`, so 5 seeds are needed before
//! anything can be significant at 0.05.
//!
//! ```
//! use compress_eval::seeds::{paired_over_seeds, summarize};
//! let gptq = [8.21, 8.25, 8.19, 8.30];
//! let awq = [8.40, 8.38, 8.45, 8.41];
//! let s = summarize(&gptq)?;
//! assert!((s.mean - 8.2375).abs() < 1e-12 && s.n == 4);
//! let t = paired_over_seeds(&gptq, &awq)?;
//! assert!(t.mean_diff > 0.0 && t.wins_b == 0);
//! assert_eq!(t.p_value, 2.0 / 16.0); // all four differences have the same sign
//! # Ok::<(), compress_eval::EvalError>(())
//! ```

use serde::{Deserialize, Serialize};

use crate::report::{Quality, Report};
use crate::EvalError;

/// Most seeds the exact test enumerates (`2^20` sign patterns).
const MAX_EXACT: usize = 20;

/// A metric over seeds.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SeedSummary {
    /// Number of seeds.
    pub n: usize,
    /// Mean.
    pub mean: f64,
    /// Sample standard deviation (`n − 1` in the denominator; 0 for one seed).
    pub std: f64,
    /// Smallest value.
    pub min: f64,
    /// Largest value.
    pub max: f64,
    /// The values, in seed order.
    pub values: Vec<f64>,
}

impl std::fmt::Display for SeedSummary {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{:.4} ± {:.4} (n = {})", self.mean, self.std, self.n)
    }
}

/// Mean, standard deviation and range of `values` (one per seed), summed in f64; NaN or
/// infinite values are an error naming the seed.
pub fn summarize(values: &[f64]) -> Result<SeedSummary, EvalError> {
    if values.is_empty() {
        return Err(EvalError::InvalidInput("no seeds to summarize".into()));
    }
    if let Some(i) = values.iter().position(|v| !v.is_finite()) {
        return Err(EvalError::NonFinite(format!("value of seed #{i}")));
    }
    let n = values.len();
    let mean = values.iter().sum::<f64>() / n as f64;
    let var = if n > 1 {
        values.iter().map(|v| (v - mean).powi(2)).sum::<f64>() / (n - 1) as f64
    } else {
        0.0
    };
    Ok(SeedSummary {
        n,
        mean,
        std: var.sqrt(),
        min: values.iter().copied().fold(f64::INFINITY, f64::min),
        max: values.iter().copied().fold(f64::NEG_INFINITY, f64::max),
        values: values.to_vec(),
    })
}

/// [`summarize`] of one quality measure over reports of the same method with different seeds;
/// a report without that measure is an error.
pub fn over_seeds(reports: &[Report], quality: Quality) -> Result<SeedSummary, EvalError> {
    let values: Option<Vec<f64>> = reports.iter().map(|r| r.quality(quality)).collect();
    summarize(
        &values.ok_or_else(|| EvalError::InvalidInput(format!("a report lacks {quality:?}")))?,
    )
}

/// Two methods compared seed by seed.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PairedSeeds {
    /// Seeds compared.
    pub n: usize,
    /// Mean of `b_i − a_i`.
    pub mean_diff: f64,
    /// Sample standard deviation of the differences.
    pub std_diff: f64,
    /// Seeds where `b < a` (B better when lower is better).
    pub wins_b: usize,
    /// Seeds where `a < b`.
    pub wins_a: usize,
    /// Two-sided exact sign-flip p-value for "no difference" (see the module docs).
    pub p_value: f64,
}

/// Paired comparison of `a[i]` and `b[i]`, measured with the same seed `i`.
pub fn paired_over_seeds(a: &[f64], b: &[f64]) -> Result<PairedSeeds, EvalError> {
    if a.len() != b.len() || a.is_empty() {
        return Err(EvalError::InvalidInput(format!(
            "{} seeds for A, {} for B: pair them seed by seed",
            a.len(),
            b.len()
        )));
    }
    if a.len() > MAX_EXACT {
        return Err(EvalError::InvalidInput(format!(
            "{} seeds: the exact test enumerates at most {MAX_EXACT}",
            a.len()
        )));
    }
    let d: Vec<f64> = a.iter().zip(b).map(|(x, y)| y - x).collect();
    let s = summarize(&d)?;
    let observed = s.mean.abs();
    let n = d.len();
    // Count sign patterns whose |mean| reaches the observed one (with a relative slack for
    // the rounding of equal sums taken in a different order).
    let slack = 1e-12 * d.iter().map(|x| x.abs()).sum::<f64>();
    let extreme = (0u32..1 << n)
        .filter(|mask| {
            let sum: f64 = d
                .iter()
                .enumerate()
                .map(|(i, x)| if mask >> i & 1 == 1 { -x } else { *x })
                .sum();
            (sum / n as f64).abs() >= observed - slack
        })
        .count();
    Ok(PairedSeeds {
        n,
        mean_diff: s.mean,
        std_diff: s.std,
        wins_b: d.iter().filter(|&&x| x < 0.0).count(),
        wins_a: d.iter().filter(|&&x| x > 0.0).count(),
        p_value: extreme as f64 / (1u64 << n) as f64,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn summary_by_hand() {
        let s = summarize(&[1.0, 2.0, 3.0, 6.0]).unwrap();
        assert_eq!((s.n, s.mean, s.min, s.max), (4, 3.0, 1.0, 6.0));
        // Σ(x − 3)² = 4 + 1 + 0 + 9 = 14, / 3.
        assert!((s.std - (14.0f64 / 3.0).sqrt()).abs() < 1e-15);
        assert_eq!(summarize(&[5.0]).unwrap().std, 0.0);
        assert!(summarize(&[]).is_err());
        assert!(matches!(
            summarize(&[1.0, f64::NAN]),
            Err(EvalError::NonFinite(_))
        ));
    }

    #[test]
    fn sign_flip_p_values_by_hand() {
        // Differences +1, +2, +3: of the 8 sign patterns only all-plus and all-minus reach
        // |mean| = 2, so p = 2/8.
        let t = paired_over_seeds(&[0.0, 0.0, 0.0], &[1.0, 2.0, 3.0]).unwrap();
        assert_eq!((t.p_value, t.wins_a, t.wins_b), (0.25, 3, 0));
        // Differences +1, −1: every pattern has |mean| ≥ 0 = observed: p = 1.
        let t = paired_over_seeds(&[0.0, 0.0], &[1.0, -1.0]).unwrap();
        assert_eq!(t.p_value, 1.0);
        // +3, −1, +2, +2: observed mean 1.5; patterns reaching |sum| ≥ 6: {+3,−1,+2,+2} and its
        // negation only (flipping the −1 gives 8, also ≥ 6: and its negation) → 4 of 16.
        let t = paired_over_seeds(&[0.0; 4], &[3.0, -1.0, 2.0, 2.0]).unwrap();
        assert_eq!(t.p_value, 4.0 / 16.0);
        assert!(paired_over_seeds(&[1.0], &[1.0, 2.0]).is_err());
    }
}
