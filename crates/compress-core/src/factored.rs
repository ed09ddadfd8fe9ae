//! Compressing a low-rank layer factor by factor ([`Compressor::factor_wise`]).
//!
//! A low-rank layer computes `y = U (V x)`. A quantizer applied to the product `U V` would give
//! back a full `[out, in]` matrix of codes and lose the factorization's savings; applied to the
//! factors it keeps them: `V` (`[r, in]`) is quantized against the layer's own inputs `x`, then
//! `U` (`[out, r]`) against the inputs it really sees, `z = V̂ x` with the *quantized* `V̂`, so
//! a calibrated quantizer (GPTQ) compensates `V`'s rounding error in `U` as it does between the
//! columns of one matrix. `U`'s input statistics follow exactly from the layer's:
//!
//! `Σ_t z_t z_tᵀ = V̂ (Σ_t x_t x_tᵀ) V̂ᵀ` and `Σ_t z_tj² = (V̂ XᵀX V̂ᵀ)_jj`,
//!
//! so no second calibration pass is needed (a per-channel maximum `max_t |z_tj|` does not
//! follow and is not provided).

use burn::tensor::{Device, Tensor, TensorData};

use crate::compressor::{Compressor, LayerStats, LayerView, LayerWeights};
use crate::linear::CompressedLinear;
use crate::packed::PackedWeight;
use crate::pipeline::PipelineError;

/// A low-rank layer's factors on the host: `U` (`[out, r]`), `V` (`[r, in]`) and `r`.
type HostFactors = (Vec<f32>, Vec<f32>, usize);

/// The host factors of a low-rank layer (dense or quantized factors), or `None` for any other
/// layer.
fn factors(lin: &CompressedLinear, path: &str) -> Result<Option<HostFactors>, PipelineError> {
    let (up, down) = match lin {
        CompressedLinear::LowRank(l) => (l.up.val(), l.down.val()),
        CompressedLinear::QuantizedLowRank(l) => (l.up.dense_weight(), l.down.dense_weight()),
        _ => return Ok(None),
    };
    let r = down.dims()[0];
    let host = |t: Tensor<2>, what: &str| {
        t.into_data()
            .convert::<f32>()
            .try_into_vec::<f32>()
            .map_err(|e| PipelineError::Config(format!("{path}: reading {what}: {e:?}")))
    };
    Ok(Some((host(up, "U")?, host(down, "V")?, r)))
}

/// `V̂ G V̂ᵀ` (`[r, r]`) for `V̂: [r, in]`, `G: [in, in]`, on `device` (f32 accumulation).
fn projected_gram(v_hat: &[f32], gram: &[f32], r: usize, inp: usize, device: &Device) -> Vec<f32> {
    let v = Tensor::<2>::from_data(TensorData::new(v_hat.to_vec(), [r, inp]), device);
    let g = Tensor::<2>::from_data(TensorData::new(gram.to_vec(), [inp, inp]), device);
    v.clone()
        .matmul(g)
        .matmul(v.transpose())
        .into_data()
        .convert::<f32>()
        .try_into_vec::<f32>()
        .expect("an f32 tensor reads back as f32")
}

/// The statistics of `z = V̂ x` from those of `x` (see the [module docs](self)).
pub(crate) fn factor_input_stats(
    v_hat: &[f32],
    stats: &LayerStats,
    r: usize,
    inp: usize,
    device: &Device,
) -> LayerStats {
    let gram = stats
        .gram
        .as_ref()
        .map(|g| projected_gram(v_hat, g, r, inp, device));
    let col_sq_norms = match (&stats.col_sq_norms, &gram) {
        (Some(_), Some(g)) => Some((0..r).map(|j| g[j * r + j].max(0.0)).collect()),
        _ => None,
    };
    LayerStats {
        tokens: stats.tokens,
        gram,
        col_sq_norms,
        abs_max: None,
    }
}

/// Runs a factor-wise `compressor` on the factors of `lin` when it is a low-rank layer:
/// `Ok(None)` for any other layer. Each factor must come back as packed codes.
pub(crate) fn compress_factors(
    lin: &CompressedLinear,
    path: &str,
    compressor: &dyn Compressor,
    stats: &LayerStats,
    device: &Device,
) -> Result<Option<LayerWeights>, PipelineError> {
    let Some((u, v, r)) = factors(lin, path)? else {
        return Ok(None);
    };
    let (out, inp) = (lin.out_features(), lin.in_features());
    let packed = |w: LayerWeights, which: &str| -> Result<PackedWeight, PipelineError> {
        match w {
            LayerWeights::Quantized(p) => Ok(p),
            _ => Err(PipelineError::Config(format!(
                "{path}: {} is factor-wise but did not return packed codes for {which}",
                compressor.name()
            ))),
        }
    };
    let v_path = format!("{path}.down");
    let down = packed(
        compressor.compress(LayerView::new(&v_path, &v, r, inp), stats)?,
        "V",
    )?;
    let z_stats = factor_input_stats(&down.dequantize(), stats, r, inp, device);
    let u_path = format!("{path}.up");
    let up = packed(
        compressor.compress(LayerView::new(&u_path, &u, out, r), &z_stats)?,
        "U",
    )?;
    Ok(Some(LayerWeights::QuantizedLowRank { up, down }))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::backend::BackendKind;

    #[test]
    fn factor_statistics_are_those_of_the_projected_inputs() {
        let device = BackendKind::Flex.device().unwrap();
        // x_t rows, V̂ [2, 3]; z_t = V̂ x_t. Small integers: every product is exact in f32.
        let xs = [
            [1.0f32, 2.0, -1.0],
            [0.0, 1.0, 3.0],
            [2.0, -2.0, 1.0],
            [1.0, 1.0, 1.0],
        ];
        let v = [1.0f32, 0.0, 2.0, -1.0, 1.0, 1.0];
        let mut gram = vec![0f32; 9];
        let mut sq = vec![0f32; 3];
        for x in &xs {
            for i in 0..3 {
                sq[i] += x[i] * x[i];
                for j in 0..3 {
                    gram[i * 3 + j] += x[i] * x[j];
                }
            }
        }
        let stats = LayerStats {
            tokens: 4,
            gram: Some(gram),
            col_sq_norms: Some(sq),
            abs_max: Some(vec![2.0; 3]),
        };
        let got = factor_input_stats(&v, &stats, 2, 3, &device);
        let (mut want_g, mut want_sq) = (vec![0f32; 4], vec![0f32; 2]);
        for x in &xs {
            let z = [
                v[0] * x[0] + v[1] * x[1] + v[2] * x[2],
                v[3] * x[0] + v[4] * x[1] + v[5] * x[2],
            ];
            for i in 0..2 {
                want_sq[i] += z[i] * z[i];
                for j in 0..2 {
                    want_g[i * 2 + j] += z[i] * z[j];
                }
            }
        }
        assert_eq!(got.tokens, 4);
        assert_eq!(got.gram.unwrap(), want_g);
        assert_eq!(got.col_sq_norms.unwrap(), want_sq);
        assert_eq!(
            got.abs_max, None,
            "a maximum does not follow from the Gram matrix"
        );
    }
}
