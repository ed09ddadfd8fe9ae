//! The uniform quantization grid of one group of weights: fitting its scale and zero point, and
//! rounding weights onto it.
//!
//! A group's grid is `w ≈ s · (q − z)` with integer codes `q ∈ [0, 2^b − 1]` (the layout of
//! [`compress_core::packed`]). Every quantizer in this crate fits grids with [`fit_grid`] and rounds
//! with [`Grid::code`], so RTN, GPTQ and HQQ agree on what a code means, and the scale and zero are
//! rounded to f16 *before* any weight is rounded: the codes are chosen for the grid that is stored.
//!
//! - **Symmetric**: `z = 2^(b−1)` and `s = −m / 2^(b−1)` where `m` is the group's value of largest
//!   magnitude (with its sign), so `m` lands exactly on code 0 and the full range
//!   `[−2^(b−1), 2^(b−1) − 1]` is used — llama.cpp's `Q4_0` rule.
//! - **Asymmetric**: `s = (max − min) / (2^b − 1)`, `z = −min / s` (fractional, stored as f16), so
//!   `min` and `max` land on codes 0 and `2^b − 1`.
//! - **Clipping** shrinks the range by a factor `c ≤ 1` before fitting: outliers saturate, every
//!   other weight gets a finer grid.
//! - **Scale search** (as llama.cpp's quantizers do) tries a ladder of shrink factors and, for each,
//!   also the least-squares refit of the grid to the codes it produced (`s = Σ w q / Σ q²` for
//!   symmetric, a line fit of `w` on `q` for asymmetric), keeping whichever candidate has the
//!   smallest (importance-weighted) squared error `Σ_i a_i (w_i − ŵ_i)²`.

use compress_core::kquant::KQuant;
use compress_core::packed::{Bits, Symmetry};
use half::f16;

/// Range handling when fitting a grid.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct GridConfig {
    /// Fraction of the group's range kept, in `(0, 1]` (1 = no clipping).
    pub clip: f32,
    /// Optional search for the scale that minimises the reconstruction error.
    pub search: Option<ScaleSearch>,
    /// Fit every 256-weight super-block's grids to this llama.cpp k-quant's two-level form
    /// ([`crate::kquant`]) so the layer can be written as that GGUF type exactly; the scheme
    /// must be the format's ([`KQuant::scheme`]).
    pub k_quant: Option<KQuant>,
}

impl Default for GridConfig {
    fn default() -> Self {
        Self {
            clip: 1.0,
            search: None,
            k_quant: None,
        }
    }
}

impl GridConfig {
    /// Checks `clip` and the search parameters, naming the bad field.
    pub fn validate(&self) -> Result<(), String> {
        if !(self.clip > 0.0 && self.clip <= 1.0) {
            return Err(format!("clip = {} must lie in (0, 1]", self.clip));
        }
        if let Some(s) = self.search {
            if s.steps == 0 {
                return Err("search.steps must be at least 1".into());
            }
            if !(s.min_shrink > 0.0 && s.min_shrink <= 1.0) {
                return Err(format!(
                    "search.min_shrink = {} must lie in (0, 1]",
                    s.min_shrink
                ));
            }
        }
        Ok(())
    }
}

/// A ladder of `steps` shrink factors from 1 down to `min_shrink`, each tried with and without a
/// least-squares refit.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct ScaleSearch {
    /// Number of shrink factors tried.
    pub steps: usize,
    /// Smallest shrink factor.
    pub min_shrink: f32,
}

impl Default for ScaleSearch {
    /// 20 steps down to 0.8 (GPTQ's `mse` grid uses 100 steps to 0.2 with a coarser error; 0.8
    /// covers the clipping ratios that win on LLM weights in practice).
    fn default() -> Self {
        Self {
            steps: 20,
            min_shrink: 0.8,
        }
    }
}

/// A fitted grid: the stored f16 scale and zero point (in code units) and the largest code.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Grid {
    /// Step between codes, as stored.
    pub scale: f16,
    /// Code that stands for 0, as stored (the middle code for symmetric grids).
    pub zero: f16,
    /// Largest code, `2^b − 1`.
    pub max_code: u8,
}

impl Grid {
    /// The code nearest to `w`: `clamp(round(w / s + z), 0, 2^b − 1)`; the zero point's code when
    /// the scale is 0 (an all-zero group).
    #[inline]
    pub fn code(&self, w: f32) -> u8 {
        let s = self.scale.to_f32();
        let z = self.zero.to_f32();
        let q = if s == 0.0 { z } else { w / s + z };
        q.round().clamp(0.0, self.max_code as f32) as u8
    }

    /// The value code `q` stands for, `s · (q − z)`.
    #[inline]
    pub fn value(&self, q: u8) -> f32 {
        self.scale.to_f32() * (q as f32 - self.zero.to_f32())
    }

    /// `w` rounded onto the grid.
    #[inline]
    pub fn round(&self, w: f32) -> f32 {
        self.value(self.code(w))
    }

    /// `Σ_i a_i (w_i − ŵ_i)²` over a group (`a_i = 1` without importances), in f64.
    pub fn error(&self, values: &[f32], importance: Option<&[f32]>) -> f64 {
        let mut e = 0f64;
        for (i, &w) in values.iter().enumerate() {
            let d = (w - self.round(w)) as f64;
            e += importance.map_or(1.0, |a| a[i] as f64) * d * d;
        }
        e
    }
}

/// Fits a grid to `values`, optionally weighting each value's squared error by `importance`
/// (same length, non-negative). Deterministic; never fails on finite input.
pub fn fit_grid(
    values: &[f32],
    importance: Option<&[f32]>,
    bits: Bits,
    symmetry: Symmetry,
    cfg: &GridConfig,
) -> Grid {
    let max_code = bits.max_code();
    let base = |shrink: f32| -> Grid {
        match symmetry {
            Symmetry::Symmetric => symmetric(values, bits, shrink),
            Symmetry::Asymmetric => asymmetric(values, max_code, shrink),
        }
    };
    let first = base(cfg.clip);
    let Some(search) = cfg.search else {
        return first;
    };
    let mut best = first;
    let mut best_err = first.error(values, importance);
    for k in 0..search.steps {
        let t = if search.steps == 1 {
            0.0
        } else {
            k as f32 / (search.steps - 1) as f32
        };
        let shrink = cfg.clip * (1.0 - (1.0 - search.min_shrink) * t);
        let g = base(shrink);
        for cand in [Some(g), refit(&g, values, importance, symmetry)]
            .into_iter()
            .flatten()
        {
            let e = cand.error(values, importance);
            if e < best_err {
                best = cand;
                best_err = e;
            }
        }
    }
    best
}

fn symmetric(values: &[f32], bits: Bits, shrink: f32) -> Grid {
    let m = values
        .iter()
        .copied()
        .fold(0f32, |m, v| if v.abs() > m.abs() { v } else { m });
    let mid = bits.mid_code();
    Grid {
        scale: f16::from_f32(-m * shrink / mid as f32),
        zero: f16::from_f32(mid as f32),
        max_code: bits.max_code(),
    }
}

fn asymmetric(values: &[f32], max_code: u8, shrink: f32) -> Grid {
    let (mut lo, mut hi) = values
        .iter()
        .fold((f32::INFINITY, f32::NEG_INFINITY), |(lo, hi), &v| {
            (lo.min(v), hi.max(v))
        });
    if values.is_empty() {
        (lo, hi) = (0.0, 0.0);
    }
    if lo == hi {
        // A constant group: widen the range to include 0 so the constant is a grid point.
        (lo, hi) = (lo.min(0.0), hi.max(0.0));
    }
    let g = min_max_grid(lo * shrink, hi * shrink, max_code);
    if g.zero.is_finite() && (g.scale.to_f32() != 0.0 || hi == lo) {
        g
    } else {
        // A nearly constant group far from 0: the f16 scale underflows or the zero point
        // overflows f16. Widening the range to include 0 keeps the zero point in [0, 2^b − 1].
        min_max_grid(lo.min(0.0) * shrink, hi.max(0.0) * shrink, max_code)
    }
}

fn min_max_grid(lo: f32, hi: f32, max_code: u8) -> Grid {
    let scale = f16::from_f32((hi - lo) / max_code as f32);
    let zero = if scale.to_f32() == 0.0 {
        f16::ZERO
    } else {
        f16::from_f32(-lo / scale.to_f32())
    };
    Grid {
        scale,
        zero,
        max_code,
    }
}

/// The least-squares grid for the codes `g` assigns to `values` (`None` if degenerate).
fn refit(g: &Grid, values: &[f32], importance: Option<&[f32]>, symmetry: Symmetry) -> Option<Grid> {
    let z = g.zero.to_f32() as f64;
    let (mut sa, mut sq, mut sqq, mut sw, mut swq) = (0f64, 0f64, 0f64, 0f64, 0f64);
    for (i, &w) in values.iter().enumerate() {
        let a = importance.map_or(1.0, |a| a[i] as f64);
        let q = g.code(w) as f64;
        let w = w as f64;
        match symmetry {
            Symmetry::Symmetric => {
                sqq += a * (q - z) * (q - z);
                swq += a * w * (q - z);
            }
            Symmetry::Asymmetric => {
                sa += a;
                sq += a * q;
                sqq += a * q * q;
                sw += a * w;
                swq += a * w * q;
            }
        }
    }
    match symmetry {
        Symmetry::Symmetric => (sqq > 0.0).then(|| Grid {
            scale: f16::from_f64(swq / sqq),
            ..*g
        }),
        Symmetry::Asymmetric => {
            // w ≈ s q + b, with z = −b / s.
            let det = sa * sqq - sq * sq;
            if sa == 0.0 || det.abs() <= f64::EPSILON * sa * sqq {
                return None;
            }
            let s = (sa * swq - sq * sw) / det;
            let b = (sw - s * sq) / sa;
            let scale = f16::from_f64(s);
            let zero = f16::from_f64(-b / scale.to_f64());
            (scale.to_f64() != 0.0 && scale.is_finite() && zero.is_finite()).then_some(Grid {
                scale,
                zero,
                max_code: g.max_code,
            })
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn bits(b: u8) -> Bits {
        Bits::new(b).unwrap()
    }

    #[test]
    fn symmetric_grid_puts_the_extreme_on_code_zero() {
        // Values exact in f16, so the expected grid is exact too.
        let v = [0.25f32, -2.0, 0.5, 1.75];
        let g = fit_grid(
            &v,
            None,
            bits(4),
            Symmetry::Symmetric,
            &GridConfig::default(),
        );
        // s = −m / 8 with m = −2 (the signed extreme).
        assert_eq!(g.scale.to_f32(), 0.25);
        assert_eq!(g.code(-2.0), 0);
        assert_eq!(g.round(-2.0), -2.0);
        // The positive side reaches 7 steps: 1.75 is code 15.
        assert_eq!(g.code(1.75), 15);
    }

    #[test]
    fn asymmetric_grid_hits_both_ends() {
        let v = [0.25f32, 1.0, 4.0];
        let g = fit_grid(
            &v,
            None,
            bits(2),
            Symmetry::Asymmetric,
            &GridConfig::default(),
        );
        assert_eq!(g.scale.to_f32(), 1.25);
        assert_eq!(g.code(0.25), 0);
        assert_eq!(g.code(4.0), 3);
        assert!((g.round(4.0) - 4.0).abs() < 1e-3);
    }

    #[test]
    fn degenerate_groups_are_exact() {
        let zeros = [0f32; 8];
        for sym in [Symmetry::Symmetric, Symmetry::Asymmetric] {
            let g = fit_grid(&zeros, None, bits(3), sym, &GridConfig::default());
            assert!(zeros.iter().all(|&w| g.round(w) == 0.0));
            let c = [0.5f32; 4];
            let g = fit_grid(&c, None, bits(3), sym, &GridConfig::default());
            assert!(
                c.iter().all(|&w| (g.round(w) - 0.5).abs() < 1e-3),
                "{sym:?}"
            );
        }
    }

    #[test]
    fn nearly_constant_groups_keep_finite_zero_points() {
        // The range 1e-7 is below f16's smallest step: the zero point −lo/s would overflow f16.
        let v = [0.05f32, 0.050_000_1];
        let g = fit_grid(
            &v,
            None,
            bits(4),
            Symmetry::Asymmetric,
            &GridConfig::default(),
        );
        assert!(g.zero.is_finite() && g.scale.is_finite());
        assert!(v.iter().all(|&w| (g.round(w) - w).abs() <= 0.05 / 15.0));
    }

    #[test]
    fn search_never_loses_to_the_plain_grid() {
        // Deterministic heavy-tailed values: the search should find a strictly better grid.
        let v: Vec<f32> = (0..64)
            .map(|i| {
                let x = ((i * 37 % 64) as f32 / 32.0) - 1.0;
                x * x * x * if i == 5 { 4.0 } else { 1.0 }
            })
            .collect();
        for sym in [Symmetry::Symmetric, Symmetry::Asymmetric] {
            let plain = fit_grid(&v, None, bits(3), sym, &GridConfig::default());
            let cfg = GridConfig {
                search: Some(ScaleSearch::default()),
                ..GridConfig::default()
            };
            let searched = fit_grid(&v, None, bits(3), sym, &cfg);
            assert!(searched.error(&v, None) < plain.error(&v, None), "{sym:?}");
        }
    }

    #[test]
    fn config_validation_names_the_field() {
        let bad = GridConfig {
            clip: 1.5,
            ..GridConfig::default()
        };
        assert!(bad.validate().unwrap_err().contains("clip"));
        let bad = GridConfig {
            k_quant: None,
            clip: 1.0,
            search: Some(ScaleSearch {
                steps: 0,
                min_shrink: 0.5,
            }),
        };
        assert!(bad.validate().unwrap_err().contains("steps"));
    }
}
