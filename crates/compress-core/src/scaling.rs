//! Equivalent per-channel rescaling of a stage (the transform AWQ searches over).
//!
//! For linears that share an input `x`, `y = (x / s) · (W · diag(s))ᵀ = x Wᵀ` for any positive
//! per-input-channel `s`. The pipeline asks a compressor for `s`
//! ([`Compressor::stage_scales`]), asks the model to divide the stage's input by `s` where it is
//! produced ([`ScaleFolds::fold_input_scales`](crate::pipeline::ScaleFolds::fold_input_scales)),
//! scales the weight columns, and rewrites the already collected input statistics for the
//! scaled input — so nothing has to be recomputed:
//! `XᵀX → diag(1/s) XᵀX diag(1/s)`, `Σx² → Σx² / s²`, `max|x| → max|x| / s`.

use burn::tensor::{Tensor, TensorData};

use crate::compressor::{CompressError, Compressor, LayerStats, LayerView, LayerWeights};
use crate::layer_id::LinearId;
use crate::linear::CompressedLinear;
use crate::pipeline::{BlockwiseModel, PipelineError};

/// Asks `compressor` for scales over the linears `ids` of stage `stage` of block `block` and, if
/// it gives some and the model can fold them, applies them; returns the statistics of the
/// (possibly) scaled input.
pub fn apply_stage_scales<M: BlockwiseModel>(
    model: &mut M,
    block: usize,
    stage: usize,
    ids: &[LinearId],
    compressor: &dyn Compressor,
    stats: LayerStats,
) -> Result<LayerStats, PipelineError> {
    let paths: Vec<String> = ids.iter().map(LinearId::to_string).collect();
    let mut weights = Vec::with_capacity(ids.len());
    for (&id, path) in ids.iter().zip(&paths) {
        let lin = model.expect_linear(id);
        let w = lin
            .dense_weight()
            .into_data()
            .try_to_vec::<f32>()
            .map_err(|e| PipelineError::Config(format!("reading {path}: {e:?}")))?;
        weights.push((w, lin.out_features(), lin.in_features()));
    }
    let masks: Vec<_> = ids
        .iter()
        .map(|&id| model.expect_linear(id).mask().cloned())
        .collect();
    let views: Vec<LayerView<'_>> = weights
        .iter()
        .zip(&paths)
        .zip(&masks)
        .map(|(((w, o, i), path), mask)| LayerView {
            path,
            weight: w,
            out_features: *o,
            in_features: *i,
            mask: mask.as_ref(),
            packed: None,
            original: None,
        })
        .collect();
    let Some(s) = compressor.stage_scales(&views, &stats)? else {
        return Ok(stats);
    };
    let n = views.first().map_or(0, |v| v.in_features);
    if s.len() != n || s.iter().any(|&v| !(v.is_finite() && v > 0.0)) {
        return Err(CompressError::Numerical {
            layer: paths.join(", "),
            message: format!(
                "{} gave {} stage scales (need {n} finite positive values)",
                compressor.name(),
                s.len()
            ),
        }
        .into());
    }
    if !model.fold_input_scales(block, stage, &s) {
        return Ok(stats);
    }
    let device = model.device();
    for (&id, (w, o, i)) in ids.iter().zip(weights) {
        let scaled: Vec<f32> = w.iter().enumerate().map(|(k, &v)| v * s[k % i]).collect();
        let lin = model.expect_linear(id);
        let bias = lin.bias();
        let mut weights = LayerWeights::Dense(scaled);
        if let Some(m) = lin.mask() {
            weights = weights.with_mask(m);
        }
        *model.expect_linear_mut(id) = CompressedLinear::from_weights(weights, o, i, bias, &device);
    }
    Ok(scale_stats(stats, &s))
}

/// The statistics of `x / s` given those of `x`.
pub fn scale_stats(mut stats: LayerStats, s: &[f32]) -> LayerStats {
    let n = s.len();
    if let Some(g) = stats.gram.as_mut() {
        for (k, v) in g.iter_mut().enumerate() {
            *v /= s[k / n] * s[k % n];
        }
    }
    if let Some(c) = stats.col_sq_norms.as_mut() {
        for (v, &f) in c.iter_mut().zip(s) {
            *v /= f * f;
        }
    }
    if let Some(m) = stats.abs_max.as_mut() {
        for (v, &f) in m.iter_mut().zip(s) {
            *v /= f;
        }
    }
    stats
}

/// Divides row `r` of a layer's output by `s[r]` (the fold of input scales into the projection
/// that produces a stage's input). Dense and low-rank layers are rescaled exactly; a quantized
/// layer's group scales are rescaled (rounded to f16) and its codes kept. Returns false, changing
/// nothing, where a quantized layer cannot take the factors exactly (see
/// [`PackedWeight::scale_rows`](crate::packed::PackedWeight::scale_rows)).
pub fn scale_output_rows(linear: &mut CompressedLinear, s: &[f32]) -> bool {
    let inv_s: Vec<f32> = s.iter().map(|v| 1.0 / v).collect();
    let mut rescaled = None;
    // Output rows live in the codes' rows (of `Û` for quantized factors).
    let rows = match linear {
        CompressedLinear::Quantized(l) => Some(&l.packed),
        CompressedLinear::QuantizedLowRank(l) => Some(&l.up.packed),
        _ => None,
    };
    if let Some(p) = rows {
        let mut packed = (**p).clone();
        if !packed.scale_rows(&inv_s) {
            return false;
        }
        rescaled = Some(packed);
    }
    let device = match linear {
        CompressedLinear::Dense(l) => l.weight.val().device(),
        CompressedLinear::LowRank(l) => l.up.val().device(),
        CompressedLinear::Quantized(l) => l.device(),
        CompressedLinear::QuantizedLowRank(l) => l.up.device(),
    };
    let inv = Tensor::<1>::from_data(TensorData::new(inv_s, [s.len()]), &device);
    let col = inv.clone().unsqueeze_dim::<2>(1);
    match linear {
        CompressedLinear::Dense(l) => {
            l.weight = l.weight.clone().map(|w| w * col.clone());
            l.bias = l.bias.take().map(|b| b.map(|b| b * inv.clone()));
        }
        CompressedLinear::LowRank(l) => {
            l.up = l.up.clone().map(|u| u * col.clone());
            l.bias = l.bias.take().map(|b| b.map(|b| b * inv.clone()));
        }
        CompressedLinear::Quantized(l) => {
            let packed = rescaled.take().expect("rescaled above");
            let bias = l.bias.take().map(|b| b.val() * inv.clone());
            let correction = l.correction.take();
            *l = crate::linear::QuantizedLinear::new(packed, bias, &device);
            if let Some(c) = correction {
                // U V rows scale with U's rows.
                *l = l
                    .clone()
                    .with_correction(c.up.val() * col.clone(), c.down.val());
            }
        }
        CompressedLinear::QuantizedLowRank(l) => {
            let packed = rescaled.take().expect("rescaled above");
            l.up = crate::linear::QuantizedLinear::new(packed, None, &device);
            l.bias = l.bias.take().map(|b| b.map(|b| b * inv.clone()));
        }
    }
    true
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn scaled_stats_equal_stats_of_the_scaled_input() {
        let x = [[1.0f32, -2.0], [0.5, 4.0], [-3.0, 1.0]];
        let s = [2.0f32, 0.5];
        let stats_of = |x: &[[f32; 2]]| {
            let mut g = vec![0f32; 4];
            let (mut sq, mut mx) = (vec![0f32; 2], vec![0f32; 2]);
            for t in x {
                for i in 0..2 {
                    sq[i] += t[i] * t[i];
                    mx[i] = mx[i].max(t[i].abs());
                    for j in 0..2 {
                        g[i * 2 + j] += t[i] * t[j];
                    }
                }
            }
            LayerStats {
                tokens: x.len(),
                gram: Some(g),
                col_sq_norms: Some(sq),
                abs_max: Some(mx),
            }
        };
        let xs: Vec<[f32; 2]> = x.iter().map(|t| [t[0] / s[0], t[1] / s[1]]).collect();
        // Powers of two: every value here is exact in f32.
        assert_eq!(scale_stats(stats_of(&x), &s), stats_of(&xs));
    }
}
