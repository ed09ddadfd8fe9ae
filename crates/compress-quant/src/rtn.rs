//! Round-to-nearest (RTN) quantization: every group gets its own grid ([`fit_grid`]) and every
//! weight its nearest code. The baseline every other quantizer is measured against, and with
//! scale search and activation importances (llama.cpp's "imatrix" idea: weight each column's error
//! by its mean squared input) a strong calibration-light method on its own.
//!
//! Error bound (tested): without clipping or search, a weight inside its grid's range
//! `[s·(0 − z), s·(2^b − 1 − z)]` is off by at most half a step, `|w − ŵ| ≤ |s| / 2`, plus what
//! the f16 rounding of the scale and zero point moves the grid (at most `m · 2^−9` for a group
//! whose largest magnitude is `m`). A weight outside it — only possible on the short side of a
//! symmetric grid, which reaches `−2^(b−1)` steps one way and `2^(b−1) − 1` the other — saturates
//! at the nearest end of the range.

use burn::tensor::Device;
use compress_core::compressor::{
    ensure_finite, CompressError, Compressor, LayerStats, LayerView, LayerWeights, StatsRequest,
};
use compress_core::linear::CompressedLinear;
use compress_core::packed::{Granularity, PackedWeight, QuantScheme};
use half::f16;

use crate::grid::{fit_grid, Grid, GridConfig};
use crate::kquant::snap_row;

/// Round-to-nearest quantization with a fixed scheme.
#[derive(Debug, Clone, PartialEq)]
pub struct Rtn {
    /// Bits, granularity and symmetry of the codes.
    pub scheme: QuantScheme,
    /// Clipping and scale search.
    pub grid: GridConfig,
    /// Weight each input column's error by its calibration activations' mean square (needs
    /// per-column input norms); without it every weight counts the same.
    pub use_activations: bool,
}

impl Rtn {
    /// Plain RTN (no clipping, no search, no activations).
    pub fn new(scheme: QuantScheme) -> Self {
        Self {
            scheme,
            grid: GridConfig::default(),
            use_activations: false,
        }
    }
}

/// Short name of a scheme for reports, e.g. `w4g128`, `w8c` (per-channel), `w4g32a` (asymmetric).
pub fn scheme_tag(s: &QuantScheme) -> String {
    let g = match s.granularity {
        Granularity::PerTensor => "t".to_string(),
        Granularity::PerChannel => "c".to_string(),
        Granularity::PerGroup(g) => format!("g{g}"),
    };
    let a = match s.symmetry {
        compress_core::packed::Symmetry::Symmetric => "",
        compress_core::packed::Symmetry::Asymmetric => "a",
    };
    format!("w{}{g}{a}", s.bits.get())
}

impl Rtn {
    /// Quantizes one whole layer outside a pipeline (RTN needs no calibration): the layer's
    /// current weight, whatever its storage, becomes packed codes on `device`; bias and sparsity
    /// mask are kept. `path` names the layer in errors. Useful for layers no block recipe
    /// touches, such as the output head.
    pub fn quantize_linear(
        &self,
        path: &str,
        lin: &CompressedLinear,
        device: &Device,
    ) -> Result<CompressedLinear, CompressError> {
        let weight: Vec<f32> = lin
            .dense_weight()
            .into_data()
            .convert::<f32>()
            .try_into_vec::<f32>()
            .map_err(|e| CompressError::Shape {
                layer: path.to_string(),
                message: format!("cannot read the weight as f32: {e:?}"),
            })?;
        let (out_features, in_features) = (lin.out_features(), lin.in_features());
        let view = LayerView {
            path,
            weight: &weight,
            out_features,
            in_features,
            mask: lin.mask(),
            packed: None,
            original: None,
        };
        let mut weights = self.compress(view, &LayerStats::default())?;
        if let Some(mask) = lin.mask() {
            weights = weights.with_mask(mask);
        }
        Ok(CompressedLinear::from_weights(
            weights,
            out_features,
            in_features,
            lin.bias(),
            device,
        ))
    }
}

impl Compressor for Rtn {
    fn name(&self) -> String {
        let k = self
            .grid
            .k_quant
            .map(|k| format!("-{k}"))
            .unwrap_or_default();
        format!("rtn-{}{k}", scheme_tag(&self.scheme))
    }

    /// On a low-rank layer each factor is quantized (see [`Compressor::factor_wise`]).
    fn factor_wise(&self) -> bool {
        true
    }

    fn stats(&self) -> StatsRequest {
        StatsRequest {
            col_sq_norms: self.use_activations,
            ..StatsRequest::NONE
        }
    }

    fn compress(
        &self,
        layer: LayerView<'_>,
        stats: &LayerStats,
    ) -> Result<LayerWeights, CompressError> {
        ensure_finite(layer.path, "weight", layer.weight)?;
        let importance = if self.use_activations {
            Some(stats.require_col_sq_norms(layer.path, &self.name())?)
        } else {
            None
        };
        let packed = quantize_rtn(
            layer.path,
            layer.weight,
            layer.out_features,
            layer.in_features,
            &self.scheme,
            &self.grid,
            importance,
        )?;
        Ok(LayerWeights::Quantized(packed))
    }
}

/// Checks the grid configuration, returning the scheme's group length for the layer.
pub(crate) fn check_layer(
    path: &str,
    scheme: &QuantScheme,
    grid: &GridConfig,
    in_features: usize,
) -> Result<usize, CompressError> {
    let shape_err = |message: String| CompressError::Shape {
        layer: path.into(),
        message,
    };
    grid.validate().map_err(shape_err)?;
    if let Some(k) = grid.k_quant {
        k.check_scheme(scheme).map_err(shape_err)?;
    }
    Ok(scheme.group_len(in_features))
}

/// The codes of one row, on `fixed` (a per-tensor grid) or on grids fitted per group (snapped
/// to a k-quant's super-blocks when the grid config asks); returns the fitted grids (none with
/// `fixed`).
fn quantize_row(
    row: &[f32],
    scheme: &QuantScheme,
    grid_cfg: &GridConfig,
    importance: Option<&[f32]>,
    fixed: Option<Grid>,
    codes: &mut [u8],
) -> Vec<Grid> {
    let group = scheme.group_len(row.len());
    if let Some(g) = fixed {
        for (c, &w) in codes.iter_mut().zip(row) {
            *c = g.code(w);
        }
        return Vec::new();
    }
    let mut grids: Vec<Grid> = row
        .chunks(group)
        .enumerate()
        .map(|(gi, chunk)| {
            let imp = importance.map(|a| &a[gi * group..gi * group + chunk.len()]);
            fit_grid(chunk, imp, scheme.bits, scheme.symmetry, grid_cfg)
        })
        .collect();
    if let Some(k) = grid_cfg.k_quant {
        snap_row(row, importance, &mut grids, k, grid_cfg);
    }
    for ((c, chunk), g) in codes.chunks_mut(group).zip(row.chunks(group)).zip(&grids) {
        for (c, &w) in c.iter_mut().zip(chunk) {
            *c = g.code(w);
        }
    }
    grids
}

/// RTN of a row-major `[out, in]` weight into the packed layout.
pub fn quantize_rtn(
    path: &str,
    weight: &[f32],
    out_features: usize,
    in_features: usize,
    scheme: &QuantScheme,
    grid: &GridConfig,
    importance: Option<&[f32]>,
) -> Result<PackedWeight, CompressError> {
    check_layer(path, scheme, grid, in_features)?;
    let mut codes = vec![0u8; weight.len()];
    let mut grids = Vec::new();
    let fixed = match scheme.granularity {
        Granularity::PerTensor => {
            // One grid for the matrix; importances repeat per row.
            let imp: Option<Vec<f32>> =
                importance.map(|a| (0..out_features).flat_map(|_| a.iter().copied()).collect());
            let g = fit_grid(weight, imp.as_deref(), scheme.bits, scheme.symmetry, grid);
            grids.push(g);
            Some(g)
        }
        _ => None,
    };
    if in_features > 0 {
        for (row, c) in weight
            .chunks_exact(in_features)
            .zip(codes.chunks_exact_mut(in_features))
        {
            grids.extend(quantize_row(row, scheme, grid, importance, fixed, c));
        }
    }
    pack(path, scheme, out_features, in_features, &codes, &grids)
}

/// Builds the packed weight from codes and grids (row-major `[out, groups]`).
pub(crate) fn pack(
    path: &str,
    scheme: &QuantScheme,
    out_features: usize,
    in_features: usize,
    codes: &[u8],
    grids: &[Grid],
) -> Result<PackedWeight, CompressError> {
    let scales: Vec<f16> = grids.iter().map(|g| g.scale).collect();
    let zeros = match scheme.symmetry {
        compress_core::packed::Symmetry::Symmetric => None,
        compress_core::packed::Symmetry::Asymmetric => Some(grids.iter().map(|g| g.zero).collect()),
    };
    PackedWeight::from_codes(*scheme, out_features, in_features, codes, scales, zeros).map_err(
        |e| CompressError::Numerical {
            layer: path.into(),
            message: format!("packing failed: {e}"),
        },
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use compress_core::packed::Symmetry;
    use proptest::prelude::*;

    fn weights(n: usize, seed: u64) -> Vec<f32> {
        let mut x = seed | 1;
        (0..n)
            .map(|_| {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                ((x >> 40) as f32 / (1u64 << 24) as f32 - 0.5) * 0.2
            })
            .collect()
    }

    proptest! {
        #[test]
        fn rtn_error_is_within_half_a_step(
            bits in 2u8..=8,
            group in prop::sample::select(vec![8usize, 16, 32]),
            asym in any::<bool>(),
            tail in 0usize..8,
            seed in any::<u64>(),
        ) {
            // A ragged last group unless `tail` is 0.
            let (out, inp) = (3, group * 3 + tail);
            let w = weights(out * inp, seed);
            let sym = if asym { Symmetry::Asymmetric } else { Symmetry::Symmetric };
            let scheme = QuantScheme::new(bits, Some(group), sym).unwrap();
            let p = quantize_rtn("t", &w, out, inp, &scheme, &GridConfig::default(), None).unwrap();
            let deq = p.dequantize();
            for (i, (&a, &b)) in w.iter().zip(&deq).enumerate() {
                let (r, c) = (i / inp, i % inp);
                let (s, z) = p.scale_zero(r, c);
                let gstart = r * inp + (c / group) * group;
                let gend = (gstart + group).min((r + 1) * inp);
                let m = w[gstart..gend].iter().fold(0f32, |m, v| m.max(v.abs()));
                // The f16 rounding of the scale (relative 2^-11, up to 2^b − 1 steps from the zero
                // point: ≤ range · 2^-11) and of an asymmetric zero point (≤ 2^-12 · range), with
                // range ≤ 2m, moves the grid by at most m · 3 · 2^-11 < m · 2^-9.
                let slack = m * 2f32.powi(-9) + 1e-7;
                let ends = [s * (0.0 - z), s * (((1u32 << bits) - 1) as f32 - z)];
                let (lo, hi) = (ends[0].min(ends[1]), ends[0].max(ends[1]));
                if a >= lo - slack && a <= hi + slack {
                    // Inside the grid's range: at most half a step.
                    prop_assert!((a - b).abs() <= s.abs() / 2.0 + slack, "w={a} ŵ={b} s={s}");
                } else {
                    // Outside (the short side of a symmetric grid): saturates at the nearest end.
                    let end = if a < lo { lo } else { hi };
                    prop_assert!((b - end).abs() <= slack, "w={a} ŵ={b} end={end}");
                }
            }
        }
    }

    #[test]
    fn per_tensor_and_per_channel_store_one_and_out_scales() {
        let w = weights(4 * 16, 7);
        let t = QuantScheme {
            granularity: Granularity::PerTensor,
            ..QuantScheme::new(8, None, Symmetry::Symmetric).unwrap()
        };
        let p = quantize_rtn("t", &w, 4, 16, &t, &GridConfig::default(), None).unwrap();
        assert_eq!(p.scales().len(), 1);
        let c = QuantScheme::new(8, None, Symmetry::Symmetric).unwrap();
        let p = quantize_rtn("t", &w, 4, 16, &c, &GridConfig::default(), None).unwrap();
        assert_eq!(p.scales().len(), 4);
        // 8-bit per-channel is within 1% relative error on these weights.
        let e = compress_core::compressor::weight_rel_error(&w, &p.dequantize());
        assert!(e < 0.01, "{e}");
    }

    #[test]
    fn ragged_groups_and_bad_input_naming_the_layer() {
        // Groups of 32 on 48-wide rows: a group of 32 and a group of 16 per row.
        let s = QuantScheme::new(4, Some(32), Symmetry::Symmetric).unwrap();
        let w = weights(2 * 48, 9);
        let view = LayerView {
            path: "layers.0.mlp.up_proj",
            weight: &w,
            out_features: 2,
            in_features: 48,
            mask: None,
            packed: None,
            original: None,
        };
        let LayerWeights::Quantized(p) =
            Rtn::new(s).compress(view, &LayerStats::default()).unwrap()
        else {
            panic!("RTN gives packed weights");
        };
        assert_eq!((p.groups_per_row(), p.scales().len()), (2, 4));
        // The short group gets its own grid: its extreme is exact.
        let tail = &w[32..48];
        let m = tail
            .iter()
            .fold(0f32, |m, &v| if v.abs() > m.abs() { v } else { m });
        let i = 32 + tail.iter().position(|&v| v == m).unwrap();
        assert!((p.dequantize()[i] - m).abs() <= m.abs() * 2f32.powi(-10));

        let mut bad = Rtn::new(s);
        bad.grid.clip = 1.5;
        let e = bad.compress(view, &LayerStats::default()).unwrap_err();
        assert!(
            e.to_string().contains("layers.0.mlp.up_proj") && e.to_string().contains("clip"),
            "{e}"
        );
        let mut nan = w.clone();
        nan[3] = f32::NAN;
        let view = LayerView {
            weight: &nan,
            ..view
        };
        let e = Rtn::new(s)
            .compress(view, &LayerStats::default())
            .unwrap_err();
        assert!(matches!(e, CompressError::NonFinite { .. }), "{e}");
    }

    #[test]
    fn activation_weighting_needs_its_statistics() {
        let s = QuantScheme::new(4, Some(16), Symmetry::Symmetric).unwrap();
        let r = Rtn {
            use_activations: true,
            ..Rtn::new(s)
        };
        assert!(r.stats().col_sq_norms);
        let w = weights(16, 3);
        let view = LayerView {
            path: "x",
            weight: &w,
            out_features: 1,
            in_features: 16,
            mask: None,
            packed: None,
            original: None,
        };
        let e = r.compress(view, &LayerStats::default()).unwrap_err();
        assert!(matches!(e, CompressError::MissingStats { .. }));
    }
}
