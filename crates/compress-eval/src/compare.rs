//! Is model B really different from model A on the same items? Paired tests.
//!
//! - [`mcnemar`] for right/wrong outcomes on the same questions (McNemar, 1947): only the
//!   discordant questions matter — `b` right only under A, `c` right only under B. Under the
//!   null hypothesis each discordant question is a fair coin, so the exact two-sided p-value is
//!   `min(1, 2·P(X ≤ min(b, c)))` with `X ~ Binomial(b + c, ½)`.
//! - [`paired_bootstrap`] for per-item scores (per-token NLL, per-question log-probability;
//!   Efron & Tibshirani, 1993): resample items with replacement, recompute the mean difference
//!   `B − A`, and read the 95% interval from the 2.5th and 97.5th percentiles; the two-sided
//!   p-value is twice the smaller tail mass on either side of 0. Seeded, so repeatable.

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use serde::{Deserialize, Serialize};

use crate::stats::quantile_sorted;
use crate::EvalError;

/// The result of McNemar's exact test.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct McNemar {
    /// Questions right under A only.
    pub a_only: usize,
    /// Questions right under B only.
    pub b_only: usize,
    /// Exact two-sided p-value.
    pub p_value: f64,
}

/// McNemar's exact test on paired right/wrong outcomes.
pub fn mcnemar(a: &[bool], b: &[bool]) -> Result<McNemar, EvalError> {
    if a.len() != b.len() {
        return Err(EvalError::InvalidInput(format!(
            "{} outcomes for A, {} for B",
            a.len(),
            b.len()
        )));
    }
    let a_only = a.iter().zip(b).filter(|(x, y)| **x && !**y).count();
    let b_only = a.iter().zip(b).filter(|(x, y)| !**x && **y).count();
    let n = a_only + b_only;
    let k = a_only.min(b_only);
    // P(X ≤ k) for X ~ Bin(n, ½), summing pmf terms computed in log space.
    let ln_half_n = n as f64 * 0.5f64.ln();
    let mut ln_choose = 0.0; // ln C(n, 0)
    let mut tail = 0.0;
    for i in 0..=k {
        if i > 0 {
            ln_choose += ((n - i + 1) as f64).ln() - (i as f64).ln();
        }
        tail += (ln_choose + ln_half_n).exp();
    }
    Ok(McNemar {
        a_only,
        b_only,
        p_value: (2.0 * tail).min(1.0),
    })
}

/// The result of a paired bootstrap of the mean difference `B − A`.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct PairedBootstrap {
    /// Observed mean of `b_i − a_i`.
    pub mean_diff: f64,
    /// 95% percentile interval of the resampled mean difference.
    pub ci95: (f64, f64),
    /// Two-sided bootstrap p-value for "no difference".
    pub p_value: f64,
    /// Number of resamples.
    pub resamples: usize,
}

/// Paired bootstrap of the mean difference between per-item scores `b` and `a`.
pub fn paired_bootstrap(
    a: &[f64],
    b: &[f64],
    resamples: usize,
    seed: u64,
) -> Result<PairedBootstrap, EvalError> {
    if a.len() != b.len() || a.is_empty() {
        return Err(EvalError::InvalidInput(format!(
            "{} scores for A, {} for B",
            a.len(),
            b.len()
        )));
    }
    if resamples < 100 {
        return Err(EvalError::InvalidInput(format!(
            "{resamples} resamples; use at least 100"
        )));
    }
    let d: Vec<f64> = a.iter().zip(b).map(|(x, y)| y - x).collect();
    let n = d.len();
    let mean_diff = d.iter().sum::<f64>() / n as f64;
    let mut rng = StdRng::seed_from_u64(seed);
    let mut means: Vec<f64> = (0..resamples)
        .map(|_| (0..n).map(|_| d[rng.random_range(0..n)]).sum::<f64>() / n as f64)
        .collect();
    means.sort_by(f64::total_cmp);
    let below = means.iter().filter(|&&m| m <= 0.0).count() as f64 / resamples as f64;
    let above = means.iter().filter(|&&m| m >= 0.0).count() as f64 / resamples as f64;
    Ok(PairedBootstrap {
        mean_diff,
        ci95: (
            quantile_sorted(&means, 0.025),
            quantile_sorted(&means, 0.975),
        ),
        p_value: (2.0 * below.min(above)).min(1.0),
        resamples,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mcnemar_by_hand() {
        // 10 discordant questions, all won by A: p = 2 · 0.5^10.
        let a = [true; 12];
        let mut b = [false; 12];
        b[10] = true;
        b[11] = true;
        let r = mcnemar(&a, &b).unwrap();
        assert_eq!((r.a_only, r.b_only), (10, 0));
        assert!((r.p_value - 2.0 * 0.5f64.powi(10)).abs() < 1e-12);
        // 3 vs 3 discordant: perfectly balanced, p = 1.
        let a = [true, true, true, false, false, false];
        let b = [false, false, false, true, true, true];
        assert_eq!(mcnemar(&a, &b).unwrap().p_value, 1.0);
        // 1 vs 4 of 5: p = 2 · (1 + 5) / 32 = 0.375.
        let a = [true, false, false, false, false];
        let b = [false, true, true, true, true];
        assert!((mcnemar(&a, &b).unwrap().p_value - 0.375).abs() < 1e-12);
        assert!(mcnemar(&a, &b[..4]).is_err());
    }

    #[test]
    fn bootstrap_sees_a_clear_shift_and_no_shift() {
        let a: Vec<f64> = (0..200).map(|i| (i % 7) as f64).collect();
        let same = paired_bootstrap(&a, &a, 1000, 0).unwrap();
        assert_eq!(
            (same.mean_diff, same.ci95, same.p_value),
            (0.0, (0.0, 0.0), 1.0)
        );
        let b: Vec<f64> = a
            .iter()
            .enumerate()
            .map(|(i, x)| x + 0.5 + 0.1 * ((i % 3) as f64 - 1.0))
            .collect();
        let r = paired_bootstrap(&a, &b, 1000, 0).unwrap();
        assert!((r.mean_diff - 0.5).abs() < 0.01, "{r:?}");
        assert!(
            r.ci95.0 > 0.4 && r.ci95.1 < 0.6 && r.p_value < 0.01,
            "{r:?}"
        );
        assert_eq!(
            r,
            paired_bootstrap(&a, &b, 1000, 0).unwrap(),
            "seeded runs repeat"
        );
    }
}
