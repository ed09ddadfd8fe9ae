//! How many singular directions a factorized layer keeps.
//!
//! A rank-`r` factorization of an `[out, in]` weight stores `r·(out + in)` values instead of
//! `out·in`, so it saves parameters only below the break-even rank `out·in / (out + in)`
//! (288 for SmolLM2's 576×576 projections, 418 for its 576×1536 MLP).

use serde::{Deserialize, Serialize};

/// A rule choosing the rank of one layer from its singular values.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum RankRule {
    /// Exactly this rank (capped at `min(out, in)`).
    Fixed(usize),
    /// Keep this fraction of the layer's parameters: the largest `r` with
    /// `r·(out + in) ≤ ratio·out·in`, at least 1. `ratio = 0.8` is a 20% parameter reduction.
    ParamRatio(f64),
    /// The smallest rank whose singular values hold this fraction of `Σσ²` (in (0, 1]).
    Energy(f64),
}

impl RankRule {
    /// Checks the rule's parameter, naming the bad value.
    pub fn validate(&self) -> Result<(), String> {
        match *self {
            RankRule::Fixed(0) => Err("rank = 0: keep at least one direction".into()),
            RankRule::ParamRatio(r) if !(r > 0.0 && r <= 1.0) => Err(format!(
                "ratio = {r}: the kept parameter fraction must lie in (0, 1]"
            )),
            RankRule::Energy(e) if !(e > 0.0 && e <= 1.0) => {
                Err(format!("energy = {e}: must lie in (0, 1]"))
            }
            _ => Ok(()),
        }
    }

    /// The rank for an `[out, in]` layer with singular values `sigma` (descending).
    pub fn rank(&self, sigma: &[f64], out: usize, inp: usize) -> usize {
        let full = out.min(inp).max(1);
        let r = match *self {
            RankRule::Fixed(r) => r,
            RankRule::ParamRatio(ratio) => {
                ((ratio * (out * inp) as f64) / (out + inp) as f64).floor() as usize
            }
            RankRule::Energy(e) => {
                let total: f64 = sigma.iter().map(|s| s * s).sum();
                let mut acc = 0.0;
                let mut r = sigma.len();
                for (i, s) in sigma.iter().enumerate() {
                    acc += s * s;
                    // A relative slack of 1e-12 so that energy = 1 keeps exactly the non-zero
                    // directions despite rounding in the sum.
                    if acc >= e * total * (1.0 - 1e-12) {
                        r = i + 1;
                        break;
                    }
                }
                r
            }
        };
        r.clamp(1, full)
    }
}

/// Rank at which a factorization stores as many values as the dense `[out, in]` layer.
pub fn break_even_rank(out: usize, inp: usize) -> usize {
    (out * inp) / (out + inp).max(1)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rules_pick_the_documented_ranks() {
        let sigma = [4.0, 2.0, 1.0, 1.0];
        // Energies 16, 4, 1, 1 of 22: 16/22 = 0.727, 20/22 = 0.909, 21/22 = 0.955.
        assert_eq!(RankRule::Energy(0.7).rank(&sigma, 4, 4), 1);
        assert_eq!(RankRule::Energy(0.9).rank(&sigma, 4, 4), 2);
        assert_eq!(RankRule::Energy(1.0).rank(&sigma, 4, 4), 4);
        assert_eq!(RankRule::Fixed(9).rank(&sigma, 4, 4), 4);
        // 576×1536: break-even 418; keeping 80% of the parameters allows rank 335.
        assert_eq!(break_even_rank(576, 1536), 418);
        let r = RankRule::ParamRatio(0.8).rank(&[], 576, 1536);
        assert_eq!(r, 335);
        assert!(r * (576 + 1536) <= (0.8 * 576.0 * 1536.0) as usize);
        assert!((r + 1) * (576 + 1536) > (0.8 * 576.0 * 1536.0) as usize);
        assert!(RankRule::ParamRatio(0.0).validate().is_err());
        assert!(RankRule::Energy(1.5).validate().is_err());
        assert!(RankRule::Fixed(0).validate().is_err());
    }
}
