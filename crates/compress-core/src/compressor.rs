//! The [`Compressor`] trait: one algorithm that transforms one linear layer.
//!
//! Algorithms work on host memory: the pipeline hands a compressor the layer's current dense weight
//! (`[out, in]`, row-major f32) and the calibration statistics it declared it needs, and gets back
//! the layer's new storage ([`LayerWeights`]) and a [`LayerReport`]. Keeping the maths on plain
//! slices keeps every algorithm backend-independent (the same GPTQ runs for a model on flex, wgpu
//! or CUDA) and testable without a model; the pipeline moves the result onto the model's device.

use std::fmt;

use burn::tensor::Tensor;

use crate::packed::PackedWeight;
use crate::sparsity::SparsityMask;

/// Which statistics of a layer's inputs a compressor needs (the pipeline accumulates only these).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct StatsRequest {
    /// `Σ x xᵀ` over calibration tokens, `[in, in]` (GPTQ, SparseGPT, SVD-LLM).
    pub gram: bool,
    /// `Σ x_j²` per input column (Wanda, ASVD, AWQ's activation magnitudes).
    pub col_sq_norms: bool,
    /// `max |x_j|` per input column (SmoothQuant-style scales).
    pub abs_max: bool,
}

impl StatsRequest {
    /// No statistics (calibration-free methods such as RTN or HQQ).
    pub const NONE: Self = Self {
        gram: false,
        col_sq_norms: false,
        abs_max: false,
    };

    /// The union of two requests.
    pub fn union(self, other: Self) -> Self {
        Self {
            gram: self.gram || other.gram,
            col_sq_norms: self.col_sq_norms || other.col_sq_norms,
            abs_max: self.abs_max || other.abs_max,
        }
    }

    /// Whether anything is requested (if not, the pipeline runs no calibration forward for it).
    pub fn any(self) -> bool {
        self.gram || self.col_sq_norms || self.abs_max
    }
}

/// Statistics of one linear layer's inputs over the calibration tokens.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct LayerStats {
    /// Number of calibration tokens (rows of `X`) accumulated.
    pub tokens: usize,
    /// `XᵀX`, row-major `[in, in]`, when requested.
    pub gram: Option<Vec<f32>>,
    /// `Σ_t x_tj²` per input column, when requested.
    pub col_sq_norms: Option<Vec<f32>>,
    /// `max_t |x_tj|` per input column, when requested.
    pub abs_max: Option<Vec<f32>>,
}

impl LayerStats {
    /// `XᵀX`, or the error naming the layer and the method that needs it.
    pub fn require_gram(&self, layer: &str, method: &str) -> Result<&[f32], CompressError> {
        self.gram
            .as_deref()
            .ok_or_else(|| missing(layer, method, "the input Gram matrix XᵀX"))
    }

    /// The per-column input norms `Σx²`, checked finite, or the error naming the layer and the
    /// method that needs them.
    pub fn require_col_sq_norms(&self, layer: &str, method: &str) -> Result<&[f32], CompressError> {
        let v = self
            .col_sq_norms
            .as_deref()
            .ok_or_else(|| missing(layer, method, "per-column input norms"))?;
        ensure_finite(layer, "input norms", v)?;
        Ok(v)
    }
}

fn missing(layer: &str, method: &str, what: &'static str) -> CompressError {
    CompressError::MissingStats {
        layer: layer.into(),
        method: method.into(),
        what,
    }
}

/// A linear layer as a compressor sees it.
#[derive(Debug, Clone, Copy)]
pub struct LayerView<'a> {
    /// The layer's path in the model, e.g. `layers.3.attn.q_proj`.
    pub path: &'a str,
    /// The current dense weight, row-major `[out, in]`.
    pub weight: &'a [f32],
    /// Output features (rows).
    pub out_features: usize,
    /// Input features (columns).
    pub in_features: usize,
    /// The layer's sparsity mask when an earlier step pruned it (its pruned weights are 0 in
    /// `weight`). Compressors that move weights (GPTQ) keep them at 0; the pipeline re-attaches
    /// the mask to whatever a step returns, so a pruned weight stays pruned.
    pub mask: Option<&'a SparsityMask>,
    /// The layer's packed codes when an earlier step quantized it (`weight` is their dequantized
    /// value). Pruners use it to prune a quantized layer without leaving its grid.
    pub packed: Option<&'a PackedWeight>,
    /// The layer's weight before the first step of this pipeline run touched it (after any
    /// function-preserving stage scaling), when the pipeline provides it: what a correction
    /// step measures the accumulated error against.
    pub original: Option<&'a [f32]>,
}

impl<'a> LayerView<'a> {
    /// A view of an unpruned layer.
    pub fn new(path: &'a str, weight: &'a [f32], out_features: usize, in_features: usize) -> Self {
        Self {
            path,
            weight,
            out_features,
            in_features,
            mask: None,
            packed: None,
            original: None,
        }
    }
}

/// What a compressor turns a layer into (host memory; the pipeline uploads it).
#[derive(Debug, Clone, PartialEq)]
pub enum LayerWeights {
    /// A dense weight (for example a pruned one, zeros included), row-major `[out, in]`.
    Dense(Vec<f32>),
    /// A pruned dense weight, row-major `[out, in]`, exactly 0 wherever `mask` prunes.
    Sparse {
        /// The values, zeros included.
        weight: Vec<f32>,
        /// Which weights are kept.
        mask: SparsityMask,
    },
    /// Packed low-bit codes with scales and zeros (and a mask when also pruned).
    Quantized(PackedWeight),
    /// Packed codes plus a rank-`rank` correction term: `W ≈ Q + U V` (`up` `[out, rank]`,
    /// `down` `[rank, in]`), the low-rank approximation of the quantization residual.
    QuantizedCorrected {
        /// The packed codes (unpruned).
        packed: PackedWeight,
        /// `U`, `[out, rank]`.
        up: Vec<f32>,
        /// `V`, `[rank, in]`.
        down: Vec<f32>,
        /// The rank of the correction.
        rank: usize,
    },
    /// A rank-`r` factorization with packed factors, `W ≈ Û V̂` (`up` `[out, r]`, `down`
    /// `[r, in]`): what a factor-wise quantizer ([`Compressor::factor_wise`]) makes of a
    /// low-rank layer.
    QuantizedLowRank {
        /// `Û`, `[out, r]`.
        up: PackedWeight,
        /// `V̂`, `[r, in]`.
        down: PackedWeight,
    },
    /// A rank-`rank` factorization `W ≈ U V`: `up` = `U`, row-major `[out, rank]`; `down` =
    /// `V`, row-major `[rank, in]`.
    LowRank {
        /// `U`, `[out, rank]`.
        up: Vec<f32>,
        /// `V`, `[rank, in]`.
        down: Vec<f32>,
        /// The rank.
        rank: usize,
    },
}

impl LayerWeights {
    /// The dense weight the storage stands for, row-major `[out, in]`.
    pub fn to_dense(&self) -> Vec<f32> {
        match self {
            LayerWeights::Dense(w) | LayerWeights::Sparse { weight: w, .. } => w.clone(),
            LayerWeights::Quantized(p) => p.dequantize(),
            LayerWeights::LowRank { up, down, rank } => low_rank_product(up, down, *rank),
            LayerWeights::QuantizedCorrected {
                packed,
                up,
                down,
                rank,
            } => {
                let mut w = packed.dequantize();
                for (x, c) in w.iter_mut().zip(low_rank_product(up, down, *rank)) {
                    *x += c;
                }
                w
            }
            LayerWeights::QuantizedLowRank { up, down } => {
                low_rank_product(&up.dequantize(), &down.dequantize(), down.shape()[0])
            }
        }
    }

    /// Stored bits per weight: 32 for dense f32, pruned or not (the zeros are stored); the packed
    /// size, mask included, for quantized weights; `32·r·(out + in) / (out·in)` for a rank-`r`
    /// factorization (its factors' packed sizes over `out·in` when they are quantized).
    pub fn bits_per_weight(&self) -> f64 {
        match self {
            LayerWeights::Dense(_) | LayerWeights::Sparse { .. } => 32.0,
            LayerWeights::Quantized(p) => p.bits_per_weight(),
            LayerWeights::LowRank { up, down, rank } => {
                // 32 bits for each of the r·(out + in) factor entries, over the out·in weights.
                let r = (*rank).max(1);
                let weights = (up.len() / r) * (down.len() / r);
                32.0 * (up.len() + down.len()) as f64 / weights.max(1) as f64
            }
            LayerWeights::QuantizedCorrected {
                packed, up, down, ..
            } => {
                let [out, inp] = packed.shape();
                packed.bits_per_weight()
                    + 32.0 * (up.len() + down.len()) as f64 / (out * inp).max(1) as f64
            }
            LayerWeights::QuantizedLowRank { up, down } => {
                let bytes = (up.storage_bytes() + down.storage_bytes()) as f64;
                8.0 * bytes / (up.shape()[0] * down.shape()[1]).max(1) as f64
            }
        }
    }

    /// The sparsity mask, if the weight is pruned.
    pub fn mask(&self) -> Option<&SparsityMask> {
        match self {
            LayerWeights::Dense(_)
            | LayerWeights::LowRank { .. }
            | LayerWeights::QuantizedCorrected { .. }
            | LayerWeights::QuantizedLowRank { .. } => None,
            LayerWeights::Sparse { mask, .. } => Some(mask),
            LayerWeights::Quantized(p) => p.mask(),
        }
    }

    /// The same storage also pruned by `mask` (intersected with any mask it has): pruned values
    /// become exactly 0. A low-rank factorization (or a quantized layer with a low-rank
    /// correction) cannot hold a mask; it becomes the masked dense weight (the factorization is
    /// lost, so prune after factorizing only when that is what is wanted).
    ///
    /// # Panics
    /// If the mask's shape differs from the weight's (the pipeline builds both from one layer).
    pub fn with_mask(self, mask: &SparsityMask) -> Self {
        let merged =
            |own: Option<&SparsityMask>| own.map_or_else(|| mask.clone(), |m| m.intersect(mask));
        match self {
            LayerWeights::Dense(mut weight) => {
                mask.apply(&mut weight);
                LayerWeights::Sparse {
                    weight,
                    mask: mask.clone(),
                }
            }
            LayerWeights::Sparse {
                mut weight,
                mask: own,
            } => {
                let mask = merged(Some(&own));
                mask.apply(&mut weight);
                LayerWeights::Sparse { weight, mask }
            }
            LayerWeights::Quantized(p) => {
                let m = merged(p.mask());
                LayerWeights::Quantized(p.with_mask(m).expect("mask shape equals the layer's"))
            }
            low_rank @ (LayerWeights::LowRank { .. }
            | LayerWeights::QuantizedCorrected { .. }
            | LayerWeights::QuantizedLowRank { .. }) => {
                LayerWeights::Dense(low_rank.to_dense()).with_mask(mask)
            }
        }
    }
}

/// `U V` for `U: [out, r]`, `V: [r, in]` (row-major), accumulated in f32 in index order.
fn low_rank_product(up: &[f32], down: &[f32], rank: usize) -> Vec<f32> {
    if rank == 0 {
        return Vec::new();
    }
    let (out, inp) = (up.len() / rank, down.len() / rank);
    let mut w = vec![0f32; out * inp];
    for (o, row) in w.chunks_exact_mut(inp.max(1)).enumerate() {
        for k in 0..rank {
            let u = up[o * rank + k];
            for (x, &v) in row.iter_mut().zip(&down[k * inp..(k + 1) * inp]) {
                *x += u * v;
            }
        }
    }
    w
}

/// What one compressor did to one layer.
#[derive(Debug, Clone, PartialEq)]
pub struct LayerReport {
    /// The layer (its printed form is the layer's path).
    pub id: crate::layer_id::LinearId,
    /// Compressor name.
    pub method: String,
    /// `‖W − Ŵ‖_F / ‖W‖_F`.
    pub weight_rel_error: f64,
    /// `‖XWᵀ − XŴᵀ‖_F² / ‖XWᵀ‖_F²` over the calibration inputs, from `XᵀX` (when it was
    /// accumulated): the error that matters for the model's outputs.
    pub output_rel_error: Option<f64>,
    /// Stored bits per weight after the step.
    pub bits_per_weight: f64,
    /// Fraction of the layer's weights pruned after the step (0 when unpruned).
    pub sparsity: f64,
    /// Wall time of the step, seconds.
    pub seconds: f64,
    /// Calibration tokens (rows of `X`) the layer's statistics came from (0 without
    /// calibration). For an expert of a mixture-of-experts block, the tokens routed to it — or
    /// every token of the block, see [`Self::all_tokens`].
    pub calibration_tokens: usize,
    /// The layer is an expert that the router sent too few calibration tokens
    /// ([`Pipeline::min_routed_tokens`](crate::pipeline::Pipeline::min_routed_tokens)), so its
    /// statistics come from every token of the block instead.
    pub all_tokens: bool,
}

/// Errors of a compression step, naming the layer at fault.
#[derive(Debug, thiserror::Error)]
pub enum CompressError {
    /// The compressor needs statistics the pipeline did not provide.
    #[error("{layer}: {method} needs {what}, which was not accumulated")]
    MissingStats {
        /// Layer path.
        layer: String,
        /// Compressor name.
        method: String,
        /// The missing statistic.
        what: &'static str,
    },
    /// The layer's shape does not suit the compressor's configuration.
    #[error("{layer}: {message}")]
    Shape {
        /// Layer path.
        layer: String,
        /// What is wrong.
        message: String,
    },
    /// NaN or infinity appeared in a weight or statistic.
    #[error("{layer}: non-finite value in {what}")]
    NonFinite {
        /// Layer path.
        layer: String,
        /// Where.
        what: &'static str,
    },
    /// A numerical step failed (e.g. a Cholesky factorization).
    #[error("{layer}: {message}")]
    Numerical {
        /// Layer path.
        layer: String,
        /// What failed.
        message: String,
    },
}

/// One algorithm that transforms one linear layer given statistics of its inputs.
///
/// Implementations are plain configuration plus maths; the pipeline owns the model, calibration and
/// ordering. A compressor must be deterministic: the same layer, statistics and configuration give
/// bit-identical output.
pub trait Compressor: fmt::Debug + Send + Sync {
    /// A short name for reports, e.g. `gptq-w4g128`.
    fn name(&self) -> String;

    /// The statistics [`Compressor::compress`] reads.
    fn stats(&self) -> StatsRequest;

    /// Compresses one layer.
    fn compress(
        &self,
        layer: LayerView<'_>,
        stats: &LayerStats,
    ) -> Result<LayerWeights, CompressError>;

    /// Per-input-channel scales `s` for a whole stage — the linears that read one input — to be
    /// folded in before any of them is compressed: `W ← W·diag(s)` for each linear and
    /// `x ← x / s` in the operation that produces their input, which leaves the model's function
    /// unchanged (AWQ). `stats` describe the unscaled input. `None`, the default: no scaling.
    fn stage_scales(
        &self,
        _stage: &[LayerView<'_>],
        _stats: &LayerStats,
    ) -> Result<Option<Vec<f32>>, CompressError> {
        Ok(None)
    }

    /// Whether, on a low-rank layer `U V`, the step compresses each factor in turn instead of
    /// the product: `V` against the layer's inputs, then `U` against `V̂`'s outputs (whose
    /// Gram matrix `V̂ XᵀX V̂ᵀ` the pipeline derives exactly from the layer's). Quantizers say
    /// yes (SVD-LLM then GPTQ keeps the factorization and stores both factors as codes);
    /// the default, no, hands the step the dense product `U V`.
    fn factor_wise(&self) -> bool {
        false
    }
}

/// Checks that every value of `v` is finite, naming the layer and the buffer otherwise.
pub fn ensure_finite(layer: &str, what: &'static str, v: &[f32]) -> Result<(), CompressError> {
    if v.iter().all(|x| x.is_finite()) {
        Ok(())
    } else {
        Err(CompressError::NonFinite {
            layer: layer.to_string(),
            what,
        })
    }
}

/// `‖W − Ŵ‖_F / ‖W‖_F` (f64 accumulation); 0 for an all-zero `W` equal to `Ŵ`.
pub fn weight_rel_error(w: &[f32], w_hat: &[f32]) -> f64 {
    let (mut num, mut den) = (0f64, 0f64);
    for (&a, &b) in w.iter().zip(w_hat) {
        num += ((a - b) as f64).powi(2);
        den += (a as f64).powi(2);
    }
    if den == 0.0 {
        if num == 0.0 {
            0.0
        } else {
            f64::INFINITY
        }
    } else {
        (num / den).sqrt()
    }
}

/// `tr(Δ G Δᵀ) / tr(W G Wᵀ)` with `Δ = W − Ŵ`, `G = XᵀX`: the relative squared output error
/// `‖XΔᵀ‖² / ‖XWᵀ‖²` over the calibration inputs, computed from the Gram matrix alone (two
/// matmuls on the tensors' device; f32 accumulation inside the matmul, the final sums in f64).
pub fn output_rel_error(w: Tensor<2>, w_hat: Tensor<2>, gram: Tensor<2>) -> f64 {
    let quad = |m: Tensor<2>| -> f64 {
        let v: Vec<f32> = (m.clone().matmul(gram.clone()) * m)
            .sum_dim(1)
            .into_data()
            .try_to_vec::<f32>()
            .unwrap_or_default();
        v.iter().map(|&x| x as f64).sum()
    };
    let den = quad(w.clone());
    if den == 0.0 {
        return 0.0;
    }
    quad(w - w_hat) / den
}

/// [`output_rel_error`] on host slices (`w`, `w_hat`: `[out, in]`; `gram`: `[in, in]`, symmetric),
/// with the products on compress-kernels' dense GEMM in `precision`: what the pipeline uses on
/// the CPU backends. In bf16 (a pipeline calibrating in bf16) `M` and `G` are rounded to bf16
/// before the f32-accumulated product, so each quadratic form carries a relative error of about
/// `2⁻⁸` (`output_error_in_bf16_is_close_to_f32` measures it) — plenty for a reported error
/// ratio, at half the f32 time.
pub fn output_rel_error_host(
    w: &[f32],
    w_hat: &[f32],
    out: usize,
    inp: usize,
    gram: &[f32],
    precision: compress_kernels::dense::DensePrecision,
) -> f64 {
    let quad = |m: &[f32]| -> f64 {
        // (M G) ⊙ M summed; G symmetric, so M·Gᵀ = M·G is the kernels' `x · wᵀ`.
        let mut mg = vec![0f32; out * inp];
        if compress_kernels::dense::matmul(m, out, gram, inp, inp, &mut mg, precision).is_err() {
            return f64::NAN;
        }
        mg.iter()
            .zip(m)
            .map(|(&a, &b)| f64::from(a) * f64::from(b))
            .sum()
    };
    let den = quad(w);
    if den == 0.0 {
        return 0.0;
    }
    let delta: Vec<f32> = w.iter().zip(w_hat).map(|(a, b)| a - b).collect();
    quad(&delta) / den
}

#[cfg(test)]
mod tests {
    use super::*;
    use burn::tensor::TensorData;

    #[test]
    fn output_error_matches_explicit_inputs() {
        // X = [[1, 2], [0, 1], [3, -1]] (3 tokens, 2 features); W = [[1, 0], [0.5, 1]].
        let x = [[1f32, 2.], [0., 1.], [3., -1.]];
        let mut gram = [0f32; 4];
        for t in &x {
            for i in 0..2 {
                for j in 0..2 {
                    gram[i * 2 + j] += t[i] * t[j];
                }
            }
        }
        let w = [1f32, 0., 0.5, 1.];
        let w_hat = [1f32, 0.25, 0.5, 0.5];
        let y = |m: &[f32]| -> Vec<f32> {
            x.iter()
                .flat_map(|t| (0..2).map(move |o| t[0] * m[o * 2] + t[1] * m[o * 2 + 1]))
                .collect()
        };
        let (yw, yh) = (y(&w), y(&w_hat));
        let num: f64 = yw
            .iter()
            .zip(&yh)
            .map(|(a, b)| ((a - b) as f64).powi(2))
            .sum();
        let den: f64 = yw.iter().map(|a| (*a as f64).powi(2)).sum();
        let device = crate::backend::BackendKind::Flex.device().unwrap();
        let t = |v: &[f32]| Tensor::<2>::from_data(TensorData::new(v.to_vec(), [2, 2]), &device);
        let got = output_rel_error(t(&w), t(&w_hat), t(&gram));
        // Small integers and quarters: every f32 product and sum here is exact.
        assert!((got - num / den).abs() < 1e-12, "{got} vs {}", num / den);
        assert_eq!(weight_rel_error(&w, &w), 0.0);
    }

    #[test]
    fn output_error_in_bf16_is_close_to_f32() {
        use compress_kernels::dense::DensePrecision;
        // 256 tokens × 96 features of deterministic pseudo-random inputs with uneven channel
        // scales; a 64 × 96 weight and a copy perturbed by ~1% (a quantization-sized error).
        let (t, inp, out) = (256, 96, 64);
        let r = |i: usize, a: f64| ((i as f64 * a).fract() - 0.5) as f32;
        let x: Vec<f32> = (0..t * inp)
            .map(|i| r(i, 0.618034) * (1.0 + (i % inp) as f32 / 16.0))
            .collect();
        let mut gram = vec![0f32; inp * inp];
        for row in x.chunks(inp) {
            for i in 0..inp {
                for j in 0..inp {
                    gram[i * inp + j] += row[i] * row[j];
                }
            }
        }
        let w: Vec<f32> = (0..out * inp).map(|i| r(i, 0.7548777)).collect();
        let w_hat: Vec<f32> = w
            .iter()
            .enumerate()
            .map(|(i, v)| v + 0.01 * r(i, 0.5698403))
            .collect();
        let f32_err = output_rel_error_host(&w, &w_hat, out, inp, &gram, DensePrecision::F32);
        let bf16_err = output_rel_error_host(&w, &w_hat, out, inp, &gram, DensePrecision::Bf16);
        assert!(f32_err > 0.0 && f32_err.is_finite());
        // Each quadratic form's operands carry ≤ 2⁻⁹ relative rounding (≈ 0.6% for the form
        // with three rounded factors per term); the ratio of two such forms stays within 0.5% (measured: 0.03%).
        let rel = (bf16_err - f32_err).abs() / f32_err;
        assert!(rel < 0.005, "bf16 {bf16_err} vs f32 {f32_err} ({rel})");
    }

    #[test]
    fn stats_requests_union() {
        let a = StatsRequest {
            gram: true,
            ..StatsRequest::NONE
        };
        let b = StatsRequest {
            abs_max: true,
            ..StatsRequest::NONE
        };
        let u = a.union(b);
        assert!(u.gram && u.abs_max && !u.col_sq_norms && u.any());
        assert!(!StatsRequest::NONE.any());
    }
}
