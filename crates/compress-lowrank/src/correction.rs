//! Low-rank correction of quantization error: after a quantizer, approximate the residual
//! `R = W − Q(W)` by a rank-`r` term `U V` kept beside the codes, so the layer computes
//! `x (Q + U V)ᵀ`.
//!
//! The residual is factorized like a weight (see [`crate::factor`]); with the default SVD-LLM
//! whitening the rank-`r` term minimises the *output* error `‖(R − U V) Xᵀ‖_F` left on the
//! calibration inputs, so the correction spends its parameters where the inputs make the
//! quantization error visible (the idea of LQER, Zhang et al. 2024, arXiv:2402.02446, with
//! SVD-LLM's exact whitening in place of LQER's diagonal scaling). A rank-`r` correction of an
//! `[out, in]` layer stores `32·r·(out + in)` extra bits: 0.67 bits/weight at rank 16 for
//! SmolLM2's 576×1536 MLP matrices.
//!
//! A correction step needs the weight from before quantization, which the pipeline passes as
//! [`LayerView::original`], and a quantized layer (it must follow a quantizer). Pruned layers
//! are refused: a dense correction would un-prune them.

use compress_core::compressor::{
    ensure_finite, CompressError, Compressor, LayerStats, LayerView, LayerWeights, StatsRequest,
};

use crate::factor::{factorize, gram_cholesky, InputTransform};
use crate::rank::RankRule;

/// Adds a rank-`rank` correction of the quantization residual to a quantized layer.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct LowRankCorrection {
    /// Rank of the correction term.
    pub rank: usize,
    /// Whiten the residual by the Cholesky factor of `XᵀX` (SVD-LLM, minimising the output
    /// error; default) with this damping fraction; `None`: plain SVD of the residual.
    pub whitening_damp: Option<f64>,
}

impl LowRankCorrection {
    /// A whitened rank-`rank` correction (damping 0.01).
    pub fn new(rank: usize) -> Self {
        Self {
            rank,
            whitening_damp: Some(0.01),
        }
    }
}

impl Compressor for LowRankCorrection {
    fn name(&self) -> String {
        match self.whitening_damp {
            Some(_) => format!("lrc-r{}", self.rank),
            None => format!("lrc-plain-r{}", self.rank),
        }
    }

    fn stats(&self) -> StatsRequest {
        StatsRequest {
            gram: self.whitening_damp.is_some(),
            ..StatsRequest::NONE
        }
    }

    fn compress(
        &self,
        layer: LayerView<'_>,
        stats: &LayerStats,
    ) -> Result<LayerWeights, CompressError> {
        let (path, out, inp) = (layer.path, layer.out_features, layer.in_features);
        let shape = |message: String| CompressError::Shape {
            layer: path.into(),
            message,
        };
        if self.rank == 0 {
            return Err(shape("a correction of rank 0 does nothing".into()));
        }
        let packed = layer.packed.ok_or_else(|| {
            shape("a low-rank correction needs a quantized layer: put it after a quantizer".into())
        })?;
        if layer.mask.is_some() {
            return Err(shape(
                "a dense correction would un-prune this pruned layer; correct before pruning or not at all".into(),
            ));
        }
        let original = layer.original.ok_or_else(|| {
            shape("the pipeline did not provide the weight before quantization".into())
        })?;
        ensure_finite(path, "original weight", original)?;
        let residual: Vec<f32> = original
            .iter()
            .zip(layer.weight)
            .map(|(w, q)| w - q)
            .collect();
        let transform = match self.whitening_damp {
            None => InputTransform::Identity,
            Some(damp) => {
                let gram = stats.require_gram(path, &self.name())?;
                InputTransform::Cholesky(gram_cholesky(gram, inp, stats.tokens, damp).map_err(
                    |e| CompressError::Numerical {
                        layer: path.into(),
                        message: e.to_string(),
                    },
                )?)
            }
        };
        let f = factorize(&residual, out, inp, &transform, RankRule::Fixed(self.rank)).map_err(
            |e| CompressError::Numerical {
                layer: path.into(),
                message: e.to_string(),
            },
        )?;
        ensure_finite(path, "correction factors", &f.up)?;
        ensure_finite(path, "correction factors", &f.down)?;
        Ok(LayerWeights::QuantizedCorrected {
            packed: packed.clone(),
            up: f.up,
            down: f.down,
            rank: f.rank,
        })
    }
}
