//! KL divergence of a compressed model to its base model, in one pass over both.
//!
//! For every scored position (same windows and protocol as [`crate::perplexity`]) with base
//! distribution `P` and compressed distribution `Q` over the vocabulary,
//! `KL(P‖Q) = Σ_i P_i (ln P_i − ln Q_i)` (Kullback & Leibler, 1951) — how many nats per token
//! the compressed model loses against the base, 0 when they agree exactly. Alongside it, the
//! statistics llama.cpp's `perplexity --kl-divergence` prints, so numbers can be compared:
//! KLD mean (± 95%), median and upper percentiles; "same top token" (fraction of positions where
//! both models' argmax agree, ± 95%); and `Δp = Q(correct) − P(correct)`, the change in the
//! probability of the actual next token (mean ± 95%, RMS, percentiles).
//!
//! Nothing is stored per vocabulary entry: each window's two logit matrices are reduced to
//! three numbers per position and dropped.

use serde::{Deserialize, Serialize};

use crate::perplexity::{
    scored_positions, window_inputs, window_logits, LogitSource, PerplexityConfig,
};
use crate::stats::{log_softmax, mean_ci, quantile_sorted, MeanCi};
use crate::EvalError;

/// Percentiles of a distribution of per-token values.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct Percentiles {
    /// Smallest value.
    pub min: f64,
    /// 1st percentile.
    pub p01: f64,
    /// 5th percentile.
    pub p05: f64,
    /// Median.
    pub p50: f64,
    /// 95th percentile.
    pub p95: f64,
    /// 99th percentile.
    pub p99: f64,
    /// Largest value.
    pub max: f64,
}

impl Percentiles {
    fn of(mut xs: Vec<f64>) -> Self {
        xs.sort_by(f64::total_cmp);
        let q = |p| quantile_sorted(&xs, p);
        Self {
            min: xs[0],
            p01: q(0.01),
            p05: q(0.05),
            p50: q(0.5),
            p95: q(0.95),
            p99: q(0.99),
            max: xs[xs.len() - 1],
        }
    }
}

/// The comparison of a compressed model with its base on one text.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct KldReport {
    /// Positions compared.
    pub tokens: usize,
    /// Mean KL(base‖compressed) in nats per token, with its 95% interval.
    pub kld: MeanCi,
    /// Percentiles of the per-token KLD.
    pub kld_percentiles: Percentiles,
    /// Fraction of positions where both models rank the same token first, with its 95% interval.
    pub same_top: MeanCi,
    /// `Q(correct) − P(correct)`: mean with 95% interval.
    pub delta_p: MeanCi,
    /// Root mean square of `Δp`.
    pub delta_p_rms: f64,
    /// Percentiles of `Δp`.
    pub delta_p_percentiles: Percentiles,
    /// Mean NLL of the base and of the compressed model on the same positions.
    pub mean_nll: (f64, f64),
}

/// What one position contributes to a [`KldReport`].
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct RowComparison {
    /// `KL(P‖Q)` in nats (clamped at 0 against rounding).
    pub kl: f64,
    /// Whether both argmaxes agree (ties go to the lower id).
    pub same_top: bool,
    /// `Q(y) − P(y)` for the actual next token `y`.
    pub delta_p: f64,
    /// `−ln P(y)`.
    pub nll_base: f64,
    /// `−ln Q(y)`.
    pub nll_compressed: f64,
}

/// Compares the base row `P` and the compressed row `Q` (logits) at a position whose actual
/// next token is `target`.
pub fn compare_rows(base: &[f32], compressed: &[f32], target: u32) -> RowComparison {
    let lp = log_softmax(base);
    let lq = log_softmax(compressed);
    let kl: f64 = lp.iter().zip(&lq).map(|(&a, &b)| a.exp() * (a - b)).sum();
    let argmax = |l: &[f64]| {
        l.iter()
            .enumerate()
            .max_by(|a, b| a.1.total_cmp(b.1).then(b.0.cmp(&a.0)))
            .map(|(i, _)| i)
    };
    let y = target as usize;
    RowComparison {
        kl: kl.max(0.0),
        same_top: argmax(&lp) == argmax(&lq),
        delta_p: lq[y].exp() - lp[y].exp(),
        nll_base: -lp[y],
        nll_compressed: -lq[y],
    }
}

/// Compares `compressed` with `base` on `tokens`, window by window; `progress(done, total)`
/// is called after each window.
pub fn kl_divergence(
    base: &dyn LogitSource,
    compressed: &dyn LogitSource,
    tokens: &[u32],
    config: &PerplexityConfig,
    mut progress: impl FnMut(usize, usize),
) -> Result<KldReport, EvalError> {
    let vocab = base.vocab_size();
    if compressed.vocab_size() != vocab {
        return Err(EvalError::InvalidInput(format!(
            "vocabularies differ: base {vocab}, compressed {}",
            compressed.vocab_size()
        )));
    }
    let windows = window_inputs(tokens, config)?;
    let (mut kls, mut same, mut dps, mut nll_p, mut nll_q) =
        (Vec::new(), Vec::new(), Vec::new(), 0.0, 0.0);
    for (w, ids) in windows.iter().enumerate() {
        let lb = window_logits(base, ids)?;
        let lc = window_logits(compressed, ids)?;
        for t in scored_positions(ids.len(), config.scoring) {
            let row = t * vocab..(t + 1) * vocab;
            let RowComparison {
                kl,
                same_top,
                delta_p,
                nll_base,
                nll_compressed,
            } = compare_rows(&lb[row.clone()], &lc[row], ids[t + 1]);
            if !(kl.is_finite() && nll_base.is_finite() && nll_compressed.is_finite()) {
                return Err(EvalError::NonFinite(format!(
                    "KLD or NLL at window {w}, position {t}"
                )));
            }
            kls.push(kl);
            same.push(if same_top { 1.0 } else { 0.0 });
            dps.push(delta_p);
            nll_p += nll_base;
            nll_q += nll_compressed;
        }
        progress(w + 1, windows.len());
    }
    let n = kls.len() as f64;
    Ok(KldReport {
        tokens: kls.len(),
        kld: mean_ci(&kls),
        same_top: mean_ci(&same),
        delta_p: mean_ci(&dps),
        delta_p_rms: (dps.iter().map(|d| d * d).sum::<f64>() / n).sqrt(),
        kld_percentiles: Percentiles::of(kls),
        delta_p_percentiles: Percentiles::of(dps),
        mean_nll: (nll_p / n, nll_q / n),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kl_of_two_distributions_by_hand() {
        // P = (1/2, 1/2), Q = (1/4, 3/4): KL = ½ ln 2 + ½ ln(2/3).
        let p = [0.0f32, 0.0];
        let q = [0.0f32, 3f32.ln()];
        let r = compare_rows(&p, &q, 1);
        let want = 0.5 * 2f64.ln() + 0.5 * (2.0f64 / 3.0).ln();
        assert!((r.kl - want).abs() < 1e-7, "{} vs {want}", r.kl);
        assert!(
            !r.same_top,
            "P's argmax is token 0 (tie to the lower id), Q's is token 1"
        );
        assert!((r.delta_p - 0.25).abs() < 1e-7);
        assert!((r.nll_base - 2f64.ln()).abs() < 1e-7);
        assert!((r.nll_compressed - (4.0f64 / 3.0).ln()).abs() < 1e-7);
    }

    #[test]
    fn identical_rows_give_zero() {
        let row = [0.3f32, -1.0, 2.5, 0.0];
        let r = compare_rows(&row, &row, 2);
        assert_eq!((r.kl, r.same_top, r.delta_p), (0.0, true, 0.0));
        assert_eq!(r.nll_base, r.nll_compressed);
    }
}
