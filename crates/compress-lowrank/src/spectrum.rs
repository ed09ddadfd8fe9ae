//! Singular-value decay of a weight: which layers are inherently low-rank.

use serde::Serialize;

use crate::factor::{singular_values, FactorError};

/// The spectrum of one `[out, in]` weight.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Spectrum {
    /// `σ_i / σ_0`, descending.
    pub normalized: Vec<f64>,
    /// Effective rank `exp(H(p))`, `p_i = σ_i / Σσ` (Roy & Vetterli 2007): the number of
    /// directions a uniform spectrum with the same entropy would have.
    pub effective_rank: f64,
    /// Stable rank `‖W‖_F² / σ_0²`.
    pub stable_rank: f64,
    /// Fraction of `Σσ²` in the top 10%, 25% and 50% of the directions.
    pub energy_at: [(f64, f64); 3],
}

/// The spectrum of a row-major `[out, in]` weight.
pub fn spectrum(w: &[f32], out: usize, inp: usize) -> Result<Spectrum, FactorError> {
    let sigma = singular_values(w, out, inp)?;
    let top = sigma.first().copied().unwrap_or(0.0);
    let sum: f64 = sigma.iter().sum();
    let energy: f64 = sigma.iter().map(|s| s * s).sum();
    let entropy: f64 = sigma
        .iter()
        .filter(|&&s| s > 0.0)
        .map(|&s| {
            let p = s / sum;
            -p * p.ln()
        })
        .sum();
    let at = |frac: f64| {
        let k = ((frac * sigma.len() as f64).ceil() as usize).min(sigma.len());
        let e: f64 = sigma[..k].iter().map(|s| s * s).sum();
        (frac, if energy > 0.0 { e / energy } else { 0.0 })
    };
    Ok(Spectrum {
        normalized: sigma
            .iter()
            .map(|s| if top > 0.0 { s / top } else { 0.0 })
            .collect(),
        effective_rank: entropy.exp(),
        stable_rank: if top > 0.0 { energy / (top * top) } else { 0.0 },
        energy_at: [at(0.10), at(0.25), at(0.50)],
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn known_spectra() {
        // diag(3, 3, 3, 3): flat spectrum, effective and stable rank 4.
        let mut w = vec![0f32; 16];
        for i in 0..4 {
            w[i * 4 + i] = 3.0;
        }
        let s = spectrum(&w, 4, 4).unwrap();
        assert!((s.effective_rank - 4.0).abs() < 1e-9);
        assert!((s.stable_rank - 4.0).abs() < 1e-9);
        assert!((s.energy_at[2].1 - 0.5).abs() < 1e-12);
        // A rank-1 outer product: one direction holds everything.
        let w: Vec<f32> = (0..12)
            .map(|i| ((i / 4) + 1) as f32 * ((i % 4) + 1) as f32)
            .collect();
        let s = spectrum(&w, 3, 4).unwrap();
        assert!(
            (s.effective_rank - 1.0).abs() < 1e-6,
            "{}",
            s.effective_rank
        );
        assert!((s.energy_at[0].1 - 1.0).abs() < 1e-9);
    }
}
