//! HQQ, half-quadratic quantization (Badri & Shaji 2023, "Half-Quadratic Quantization of Large
//! Machine Learning Models", mobiusml.github.io/hqq_blog). Calibration-free.
//!
//! Min-max grids waste resolution on outliers. HQQ instead fits each group's zero point to
//! minimise a sparsity-promoting `ℓ_p` error (`p < 1`), `min_z ‖W − s(Q(W) − z)‖_p^p`, which lets
//! a few outliers keep large errors while the bulk of the weights fit the grid well. Half-quadratic
//! splitting introduces an auxiliary error variable `E` and alternates two closed-form steps:
//!
//! ```text
//! E ← shrink_p(W − s(q − z), β)        shrink_p(x, β) = sign(x) · max(|x| − |x|^(p−1) / β, 0)
//! z ← mean(q − (W − E) / s)            (q = round(W / s + z), re-rounded every iteration)
//! β ← κ β
//! ```
//!
//! The scale stays at its min-max value (the paper's default, which optimises the zero point
//! only); iterations stop when the mean absolute error stops improving, and the best zero seen is
//! kept. Defaults are the reference implementation's: `p = 0.7`, `β = 10`, `κ = 1.01`, 20 steps.
//! HQQ needs a free zero point, so it takes asymmetric schemes only.

use compress_core::compressor::{
    ensure_finite, CompressError, Compressor, LayerStats, LayerView, LayerWeights, StatsRequest,
};
use compress_core::packed::{Granularity, QuantScheme, Symmetry};
use half::f16;

use crate::grid::{fit_grid, Grid, GridConfig};
use crate::rtn::{check_layer, pack, scheme_tag};

/// HQQ configuration.
#[derive(Debug, Clone, PartialEq)]
pub struct Hqq {
    /// Bits and granularity; the symmetry must be asymmetric.
    pub scheme: QuantScheme,
    /// The `p` of the `ℓ_p` error, in `(0, 1]`.
    pub lp: f32,
    /// Initial half-quadratic penalty `β`.
    pub beta: f32,
    /// Growth of `β` per iteration.
    pub kappa: f32,
    /// Maximum iterations.
    pub iters: usize,
}

impl Hqq {
    /// The reference defaults for an asymmetric scheme (p 0.7, β 10, κ 1.01, 20 iterations).
    pub fn new(scheme: QuantScheme) -> Self {
        Self {
            scheme,
            lp: 0.7,
            beta: 10.0,
            kappa: 1.01,
            iters: 20,
        }
    }
}

impl Compressor for Hqq {
    fn name(&self) -> String {
        format!("hqq-{}", scheme_tag(&self.scheme))
    }

    /// On a low-rank layer each factor is quantized (see [`Compressor::factor_wise`]).
    fn factor_wise(&self) -> bool {
        true
    }

    fn stats(&self) -> StatsRequest {
        StatsRequest::NONE
    }

    fn compress(
        &self,
        layer: LayerView<'_>,
        _stats: &LayerStats,
    ) -> Result<LayerWeights, CompressError> {
        let path = layer.path;
        let bad = |message: String| CompressError::Shape {
            layer: path.into(),
            message,
        };
        if self.scheme.symmetry != Symmetry::Asymmetric {
            return Err(bad(
                "HQQ optimises the zero point: use an asymmetric scheme".into(),
            ));
        }
        if self.scheme.granularity == Granularity::PerTensor {
            return Err(bad(
                "HQQ works per channel or per group, not per tensor".into()
            ));
        }
        let valid = self.lp > 0.0 && self.lp <= 1.0 && self.beta > 0.0 && self.kappa >= 1.0;
        if !valid {
            return Err(bad(format!(
                "HQQ needs 0 < lp ≤ 1, beta > 0, kappa ≥ 1 (got {}, {}, {})",
                self.lp, self.beta, self.kappa
            )));
        }
        ensure_finite(path, "weight", layer.weight)?;
        let n = layer.in_features;
        let group = check_layer(path, &self.scheme, &GridConfig::default(), n)?.max(1);
        let mut codes = vec![0u8; layer.weight.len()];
        let mut grids = Vec::with_capacity(layer.weight.len() / group);
        for (row, crow) in layer
            .weight
            .chunks(n.max(1))
            .zip(codes.chunks_mut(n.max(1)))
        {
            // Groups of a row; the last one is shorter when the group does not divide the row.
            for (chunk, c) in row.chunks(group).zip(crow.chunks_mut(group)) {
                let g = self.fit(chunk);
                for (c, &w) in c.iter_mut().zip(chunk) {
                    *c = g.code(w);
                }
                grids.push(g);
            }
        }
        pack(path, &self.scheme, layer.out_features, n, &codes, &grids).map(LayerWeights::Quantized)
    }
}

impl Hqq {
    /// The optimised grid of one group.
    pub fn fit(&self, w: &[f32]) -> Grid {
        let init = fit_grid(
            w,
            None,
            self.scheme.bits,
            Symmetry::Asymmetric,
            &GridConfig::default(),
        );
        let s = init.scale.to_f32();
        if s == 0.0 {
            return init;
        }
        let max_q = init.max_code as f32;
        let mut z = init.zero.to_f32();
        let mut beta = self.beta;
        let mut best = (mean_abs_err(w, s, z, max_q), z);
        let mut e = vec![0f32; w.len()];
        for _ in 0..self.iters {
            // Shrinkage of the current error, then the closed-form zero update.
            let mut acc = 0f64;
            for (ei, &wi) in e.iter_mut().zip(w) {
                let q = (wi / s + z).round().clamp(0.0, max_q);
                let x = wi - s * (q - z);
                let a = x.abs();
                let t = if a > 0.0 {
                    a - a.powf(self.lp - 1.0) / beta
                } else {
                    0.0
                };
                *ei = x.signum() * t.max(0.0);
                acc += (q - (wi - *ei) / s) as f64;
            }
            z = (acc / w.len() as f64) as f32;
            beta *= self.kappa;
            let err = mean_abs_err(w, s, z, max_q);
            if err < best.0 {
                best = (err, z);
            } else {
                break;
            }
        }
        let g = Grid {
            zero: f16::from_f32(best.1),
            ..init
        };
        // Rounding the zero to f16 must not make things worse than the min-max start.
        if mean_abs_err(w, s, g.zero.to_f32(), max_q)
            <= mean_abs_err(w, s, init.zero.to_f32(), max_q)
        {
            g
        } else {
            init
        }
    }
}

fn mean_abs_err(w: &[f32], s: f32, z: f32, max_q: f32) -> f64 {
    w.iter()
        .map(|&wi| {
            let q = (wi / s + z).round().clamp(0.0, max_q);
            (wi - s * (q - z)).abs() as f64
        })
        .sum::<f64>()
        / w.len().max(1) as f64
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Gaussian-like weights with a few outliers, the case HQQ's ℓ_p fit is made for.
    fn heavy_tailed(n: usize, seed: u64) -> Vec<f32> {
        let mut x = seed | 1;
        (0..n)
            .map(|i| {
                let mut s = 0.0;
                for _ in 0..4 {
                    x ^= x << 13;
                    x ^= x >> 7;
                    x ^= x << 17;
                    s += (x >> 40) as f32 / (1u64 << 24) as f32 - 0.5;
                }
                if i % 61 == 0 {
                    s * 8.0
                } else {
                    s
                }
            })
            .collect()
    }

    #[test]
    fn hqq_lowers_the_mean_absolute_error_of_min_max() {
        let w = heavy_tailed(64 * 64, 3);
        for bits in [2u8, 3, 4] {
            let scheme = QuantScheme::new(bits, Some(64), Symmetry::Asymmetric).unwrap();
            let view = LayerView {
                path: "t",
                weight: &w,
                out_features: 64,
                in_features: 64,
                mask: None,
                packed: None,
                original: None,
            };
            let h = Hqq::new(scheme)
                .compress(view, &LayerStats::default())
                .unwrap();
            let r = crate::rtn::Rtn::new(scheme)
                .compress(view, &LayerStats::default())
                .unwrap();
            let mae = |d: Vec<f32>| -> f64 {
                w.iter()
                    .zip(&d)
                    .map(|(a, b)| (a - b).abs() as f64)
                    .sum::<f64>()
                    / w.len() as f64
            };
            let (eh, er) = (mae(h.to_dense()), mae(r.to_dense()));
            assert!(eh < er, "w{bits}: hqq {eh} vs min-max {er}");
        }
    }

    #[test]
    fn symmetric_schemes_are_rejected() {
        let scheme = QuantScheme::new(4, Some(8), Symmetry::Symmetric).unwrap();
        let w = vec![0.1f32; 8];
        let view = LayerView {
            path: "layers.2.attn.v_proj",
            weight: &w,
            out_features: 1,
            in_features: 8,
            mask: None,
            packed: None,
            original: None,
        };
        let e = Hqq::new(scheme)
            .compress(view, &LayerStats::default())
            .unwrap_err();
        assert!(
            e.to_string().contains("layers.2.attn.v_proj") && e.to_string().contains("asymmetric")
        );
    }
}
