//! The low-rank compressors: plain truncated SVD, ASVD and SVD-LLM as one [`Compressor`]
//! parameterised by its input whitening (see [`crate::factor`] for the maths).

use compress_core::compressor::{
    ensure_finite, CompressError, Compressor, LayerStats, LayerView, LayerWeights, StatsRequest,
};

use crate::factor::{factorize, gram_cholesky, FactorError, InputTransform};
use crate::rank::RankRule;

/// Which input-space transform precedes the SVD.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Whitening {
    /// None: plain truncated SVD of `W` (minimises the weight error).
    None,
    /// ASVD (Yuan et al. 2023): scale input channel `j` by `rms(x_j)^alpha` (the paper's
    /// default `alpha = 0.5`). The RMS comes from the accumulated `Σx_j²` (the paper uses the
    /// mean |x_j|; both measure the channel's activation magnitude).
    Activation {
        /// The exponent α.
        alpha: f64,
    },
    /// SVD-LLM (Wang et al. 2024): whiten by the Cholesky factor of `XᵀX` (damped by
    /// `damp · mean(diag)` for a positive-definite factor), so truncation minimises the output
    /// error.
    Cholesky {
        /// Damping fraction.
        damp: f64,
    },
}

/// Factorizes each layer into `U V` (stored as a low-rank layer).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct LowRank {
    /// The input transform.
    pub whitening: Whitening,
    /// How the rank is chosen.
    pub rule: RankRule,
}

impl LowRank {
    /// Plain truncated SVD.
    pub fn svd(rule: RankRule) -> Self {
        Self {
            whitening: Whitening::None,
            rule,
        }
    }

    /// ASVD with the paper's α = 0.5.
    pub fn asvd(rule: RankRule) -> Self {
        Self {
            whitening: Whitening::Activation { alpha: 0.5 },
            rule,
        }
    }

    /// SVD-LLM with damping 0.01.
    pub fn svd_llm(rule: RankRule) -> Self {
        Self {
            whitening: Whitening::Cholesky { damp: 0.01 },
            rule,
        }
    }
}

fn numerical(layer: &str, e: FactorError) -> CompressError {
    CompressError::Numerical {
        layer: layer.into(),
        message: e.to_string(),
    }
}

impl Compressor for LowRank {
    fn name(&self) -> String {
        let method = match self.whitening {
            Whitening::None => "svd",
            Whitening::Activation { .. } => "asvd",
            Whitening::Cholesky { .. } => "svd-llm",
        };
        let rule = match self.rule {
            RankRule::Fixed(r) => format!("r{r}"),
            RankRule::ParamRatio(p) => format!("p{p}"),
            RankRule::Energy(e) => format!("e{e}"),
        };
        format!("{method}-{rule}")
    }

    fn stats(&self) -> StatsRequest {
        match self.whitening {
            Whitening::None => StatsRequest::NONE,
            Whitening::Activation { .. } => StatsRequest {
                col_sq_norms: true,
                ..StatsRequest::NONE
            },
            Whitening::Cholesky { .. } => StatsRequest {
                gram: true,
                ..StatsRequest::NONE
            },
        }
    }

    fn compress(
        &self,
        layer: LayerView<'_>,
        stats: &LayerStats,
    ) -> Result<LayerWeights, CompressError> {
        let (path, out, inp) = (layer.path, layer.out_features, layer.in_features);
        self.rule
            .validate()
            .map_err(|message| CompressError::Shape {
                layer: path.into(),
                message,
            })?;
        ensure_finite(path, "weight", layer.weight)?;
        let name = self.name();
        let transform = match self.whitening {
            Whitening::None => InputTransform::Identity,
            Whitening::Activation { alpha } => {
                let sq = stats.require_col_sq_norms(path, &name)?;
                let tokens = stats.tokens.max(1) as f64;
                let mut s: Vec<f64> = sq
                    .iter()
                    .map(|&v| (v as f64 / tokens).sqrt().powf(alpha))
                    .collect();
                // Channels that never fire get the smallest positive scale (any positive value
                // keeps T invertible; their weights do not affect the output).
                let floor = s
                    .iter()
                    .copied()
                    .filter(|&v| v > 0.0)
                    .fold(f64::INFINITY, f64::min);
                let floor = if floor.is_finite() { floor } else { 1.0 };
                for v in &mut s {
                    if v.is_nan() || *v <= 0.0 {
                        *v = floor;
                    }
                }
                InputTransform::Diagonal(s)
            }
            Whitening::Cholesky { damp } => {
                let gram = stats.require_gram(path, &name)?;
                InputTransform::Cholesky(
                    gram_cholesky(gram, inp, stats.tokens, damp).map_err(|e| numerical(path, e))?,
                )
            }
        };
        let f = factorize(layer.weight, out, inp, &transform, self.rule)
            .map_err(|e| numerical(path, e))?;
        ensure_finite(path, "low-rank factors", &f.up)?;
        ensure_finite(path, "low-rank factors", &f.down)?;
        Ok(LayerWeights::LowRank {
            up: f.up,
            down: f.down,
            rank: f.rank,
        })
    }
}
