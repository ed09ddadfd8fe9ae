//! GPTQ (Frantar, Ashkboos, Hoefler, Alistarh 2022, "GPTQ: Accurate Post-Training Quantization
//! for Generative Pre-trained Transformers", arXiv:2210.17323).
//!
//! GPTQ quantizes a layer one input column at a time and, after each column, spreads that
//! column's rounding error over the columns not yet quantized so that the layer's *outputs* on the
//! calibration inputs change as little as possible (the optimal-brain-surgeon update, see
//! [`crate::hessian`]). With `U` the upper Cholesky factor of `H⁻¹`, quantizing column `k` is
//!
//! ```text
//! q      = round_grid(w_k)                 (every output row at once)
//! e      = (w_k − q) / U_kk
//! w_j   −= e · U_kj                        for the later columns j > k
//! ```
//!
//! Implementation choices, all from the paper or its reference code:
//! - **lazy batches**: the update of columns beyond the current block of `block_size` (128)
//!   columns is deferred and applied once per block as a matrix product (faer, parallel), turning
//!   the sweep from memory-bound vector updates into a GEMM;
//! - **groups**: each group's grid is fitted when the sweep reaches its first column, from the
//!   weights as updated so far (so the grid sees the error feedback); with **activation order**
//!   the grids are fitted up front from the original weights ("static groups"), so a group is
//!   still a run of consecutive original columns and the packed layout stays the plain one;
//! - **dead columns** (inputs always zero) are zeroed, **damping** is a fraction of the mean
//!   Hessian diagonal.
//!
//! The sweep itself is [`crate::obs`], shared with SparseGPT; its working layout is `Wᵀ`
//! (`[in, out]`, row-major), so a weight column is a contiguous row.

use compress_core::compressor::{
    ensure_finite, CompressError, Compressor, LayerStats, LayerView, LayerWeights, StatsRequest,
};
use compress_core::packed::{PackedWeight, QuantScheme};

use crate::grid::GridConfig;
use crate::hessian::prepare_hessian;
use crate::obs::{obs_quantize, SweepQuant};
use crate::rtn::scheme_tag;

/// GPTQ configuration.
#[derive(Debug, Clone, PartialEq)]
pub struct Gptq {
    /// Bits, granularity and symmetry of the codes.
    pub scheme: QuantScheme,
    /// Clipping and scale search used when fitting each group's grid.
    pub grid: GridConfig,
    /// Damping as a fraction of the mean Hessian diagonal (0.01 in the paper).
    pub damp: f64,
    /// Columns per lazy batch (128 in the paper).
    pub block_size: usize,
    /// Quantize columns in order of decreasing input energy (`H_jj`), with static groups.
    pub act_order: bool,
}

impl Gptq {
    /// The paper's defaults: damping 0.01, blocks of 128, no activation order.
    pub fn new(scheme: QuantScheme) -> Self {
        Self {
            scheme,
            grid: GridConfig::default(),
            damp: 0.01,
            block_size: 128,
            act_order: false,
        }
    }
}

impl Compressor for Gptq {
    fn name(&self) -> String {
        let ao = if self.act_order { "-act" } else { "" };
        let k = self
            .grid
            .k_quant
            .map(|k| format!("-{k}"))
            .unwrap_or_default();
        format!("gptq-{}{ao}{k}", scheme_tag(&self.scheme))
    }

    /// On a low-rank layer each factor is quantized (see [`Compressor::factor_wise`]).
    fn factor_wise(&self) -> bool {
        true
    }

    fn stats(&self) -> StatsRequest {
        StatsRequest {
            gram: true,
            ..StatsRequest::NONE
        }
    }

    fn compress(
        &self,
        layer: LayerView<'_>,
        stats: &LayerStats,
    ) -> Result<LayerWeights, CompressError> {
        let gram = stats.require_gram(layer.path, &self.name())?;
        gptq_quantize(layer, gram, stats.tokens, self).map(LayerWeights::Quantized)
    }
}

/// Runs GPTQ on one layer given `XᵀX` over `tokens` calibration tokens. A pruned layer
/// (`layer.mask`) keeps its pruned weights at 0: the sweep compensates their error in the kept
/// weights, and the packed result carries the mask.
pub fn gptq_quantize(
    layer: LayerView<'_>,
    gram: &[f32],
    tokens: usize,
    cfg: &Gptq,
) -> Result<PackedWeight, CompressError> {
    let path = layer.path;
    ensure_finite(path, "weight", layer.weight)?;
    if cfg.block_size == 0 {
        return Err(CompressError::Shape {
            layer: path.into(),
            message: "block_size must be at least 1".into(),
        });
    }
    let hi = prepare_hessian(
        path,
        gram,
        layer.in_features,
        tokens,
        cfg.damp,
        cfg.act_order,
    )?;
    let quant = SweepQuant {
        scheme: cfg.scheme,
        grid: cfg.grid,
        static_groups: cfg.act_order,
    };
    obs_quantize(layer, &hi, cfg.block_size, &quant, None)
}

#[cfg(test)]
mod tests {
    use super::*;
    use compress_core::compressor::weight_rel_error;
    use compress_core::packed::Symmetry;

    /// Correlated synthetic inputs (a random-walk across features) and weights; pure maths.
    fn problem(out: usize, n: usize, tokens: usize, seed: u64) -> (Vec<f32>, Vec<f32>, Vec<f32>) {
        let mut s = seed | 1;
        let mut rnd = move || {
            s ^= s << 13;
            s ^= s >> 7;
            s ^= s << 17;
            (s >> 40) as f32 / (1u64 << 24) as f32 - 0.5
        };
        let mut x = vec![0f32; tokens * n];
        for t in 0..tokens {
            let mut acc = 0.0;
            for j in 0..n {
                acc = 0.8 * acc + rnd();
                x[t * n + j] = acc * if j % 7 == 0 { 4.0 } else { 1.0 };
            }
        }
        let w: Vec<f32> = (0..out * n).map(|_| rnd() * 0.1).collect();
        let mut g = vec![0f32; n * n];
        for t in 0..tokens {
            let row = &x[t * n..(t + 1) * n];
            for i in 0..n {
                for j in 0..n {
                    g[i * n + j] += row[i] * row[j];
                }
            }
        }
        (w, x, g)
    }

    fn out_err(w: &[f32], wq: &[f32], x: &[f32], out: usize, n: usize) -> f64 {
        let tokens = x.len() / n;
        let (mut num, mut den) = (0f64, 0f64);
        for t in 0..tokens {
            for r in 0..out {
                let (mut a, mut b) = (0f64, 0f64);
                for j in 0..n {
                    a += (x[t * n + j] * w[r * n + j]) as f64;
                    b += (x[t * n + j] * wq[r * n + j]) as f64;
                }
                num += (a - b).powi(2);
                den += a * a;
            }
        }
        num / den
    }

    /// GPTQ of `w` with `cfg` and RTN with the same scheme and grid, and their output errors on
    /// `x` (`(gptq, rtn)`), with the GPTQ result.
    fn gptq_vs_rtn(
        w: &[f32],
        x: &[f32],
        g: &[f32],
        [out, n, tokens]: [usize; 3],
        cfg: &Gptq,
    ) -> (PackedWeight, f64, f64) {
        let view = LayerView::new("t", w, out, n);
        let q = gptq_quantize(view, g, tokens, cfg).unwrap();
        let rtn = crate::rtn::quantize_rtn("t", w, out, n, &cfg.scheme, &cfg.grid, None).unwrap();
        let (eg, er) = (
            out_err(w, &q.dequantize(), x, out, n),
            out_err(w, &rtn.dequantize(), x, out, n),
        );
        (q, eg, er)
    }

    #[test]
    fn gptq_beats_rtn_on_output_error_and_is_deterministic() {
        let (out, n, tokens) = (16, 64, 256);
        let (w, x, g) = problem(out, n, tokens, 11);
        for (bits, group, act) in [(4, Some(16), false), (3, None, false), (3, Some(16), true)] {
            let scheme = QuantScheme::new(bits, group, Symmetry::Symmetric).unwrap();
            let cfg = Gptq {
                act_order: act,
                block_size: 24, // not a divisor of 64: exercises the ragged last block
                ..Gptq::new(scheme)
            };
            let (q, eg, er) = gptq_vs_rtn(&w, &x, &g, [out, n, tokens], &cfg);
            assert!(
                eg < 0.8 * er,
                "bits {bits} act {act}: gptq {eg} vs rtn {er}"
            );
            // Weight error is larger (GPTQ trades weight error for output error) but sane.
            assert!(weight_rel_error(&w, &q.dequantize()) < 1.0);
            let view = LayerView::new("t", &w, out, n);
            let again = gptq_quantize(view, &g, tokens, &cfg).unwrap();
            assert_eq!(again, q, "same input must give bit-identical packed output");
        }
    }

    /// With `k_quant`, GPTQ's grids are the format's two-level scales (recovered exactly, as the
    /// GGUF writer does), and GPTQ still beats RTN fitted to the same form.
    #[test]
    fn k_quant_grids_keep_the_two_level_form_and_gptq_beats_rtn() {
        use compress_core::kquant::{fit_two_level, KQuant};
        let (out, n, tokens) = (8, 256, 512);
        let (w, x, g) = problem(out, n, tokens, 3);
        for format in [KQuant::Q4K, KQuant::Q6K, KQuant::Q3K] {
            let scheme = format.scheme();
            let cfg = Gptq {
                grid: GridConfig {
                    k_quant: Some(format),
                    ..GridConfig::default()
                },
                ..Gptq::new(scheme)
            };
            let (q, eg, er) = gptq_vs_rtn(&w, &x, &g, [out, n, tokens], &cfg);
            for r in 0..out {
                let scales: Vec<f32> = (0..n)
                    .step_by(format.group())
                    .map(|c| q.scale_zero(r, c).0)
                    .collect();
                let (_, _, err) = fit_two_level(
                    &scales,
                    None,
                    format.scale_range(),
                    format.super_scale_bits(),
                );
                assert_eq!(err, 0.0, "{format} row {r}");
            }
            assert!(eg < 0.8 * er, "{format}: gptq {eg} vs rtn {er}");
        }
    }

    #[test]
    fn one_column_block_equals_lazy_blocks() {
        // Lazy batching reorders floating-point sums only: codes must agree almost everywhere.
        let (out, n, tokens) = (8, 32, 128);
        let (w, _, g) = problem(out, n, tokens, 5);
        let scheme = QuantScheme::new(4, Some(8), Symmetry::Asymmetric).unwrap();
        let view = LayerView {
            path: "t",
            weight: &w,
            out_features: out,
            in_features: n,
            mask: None,
            packed: None,
            original: None,
        };
        let a = gptq_quantize(
            view,
            &g,
            tokens,
            &Gptq {
                block_size: 1,
                ..Gptq::new(scheme)
            },
        )
        .unwrap();
        let b = gptq_quantize(view, &g, tokens, &Gptq::new(scheme)).unwrap();
        let (ca, cb) = (a.unpack_codes(), b.unpack_codes());
        let same = ca.iter().zip(&cb).filter(|(x, y)| x == y).count();
        assert!(same * 100 >= ca.len() * 99, "{same}/{}", ca.len());
    }

    #[test]
    fn dead_columns_are_zeroed_and_missing_gram_is_an_error() {
        let (out, n) = (2, 4);
        let w = vec![0.5f32; out * n];
        // Column 3 never sees input.
        let mut g = vec![0f32; n * n];
        for i in 0..3 {
            g[i * n + i] = 1.0;
        }
        let scheme = QuantScheme::new(8, None, Symmetry::Symmetric).unwrap();
        let view = LayerView {
            path: "t",
            weight: &w,
            out_features: out,
            in_features: n,
            mask: None,
            packed: None,
            original: None,
        };
        let q = gptq_quantize(view, &g, 1, &Gptq::new(scheme)).unwrap();
        let d = q.dequantize();
        assert_eq!(d[3], 0.0);
        assert_eq!(d[7], 0.0);
        let e = Gptq::new(scheme)
            .compress(view, &LayerStats::default())
            .unwrap_err();
        assert!(matches!(e, CompressError::MissingStats { .. }));
    }
}
