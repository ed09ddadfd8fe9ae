//! Wanda (Sun, Liu, Bair, Kolter 2023, "A Simple and Effective Pruning Approach for Large Language
//! Models", arXiv:2306.11695): prune by `|W_ij| · ‖X_j‖₂`, weight magnitude times the norm of
//! the input feature it multiplies, comparing weights within each output row.
//!
//! The score is the first-order size of each weight's contribution to its output: a large weight
//! on a feature that is always near zero matters less than a small weight on an outlier feature,
//! which is exactly the case magnitude pruning gets wrong in LLMs (a few input features carry
//! activations 100× the others). No weight update, one pass, per-column input norms only.

use compress_core::compressor::{
    ensure_finite, CompressError, Compressor, LayerStats, LayerView, LayerWeights, StatsRequest,
};
use compress_core::sparsity::SparsityPattern;

use crate::select::{select_mask, Comparison};
use crate::{check_pattern, pattern_name, pruned_result};

/// Wanda configuration.
#[derive(Debug, Clone, PartialEq)]
pub struct Wanda {
    /// What to produce.
    pub pattern: SparsityPattern,
    /// Which weights compete for an unstructured budget (default: each output row, as in the
    /// paper).
    pub comparison: Comparison,
}

impl Wanda {
    /// Wanda to `pattern`, comparing within output rows.
    pub fn new(pattern: SparsityPattern) -> Self {
        Self {
            pattern,
            comparison: Comparison::Row,
        }
    }
}

impl Compressor for Wanda {
    fn name(&self) -> String {
        pattern_name("wanda", &self.pattern)
    }

    fn stats(&self) -> StatsRequest {
        StatsRequest {
            col_sq_norms: true,
            ..StatsRequest::NONE
        }
    }

    fn compress(
        &self,
        layer: LayerView<'_>,
        stats: &LayerStats,
    ) -> Result<LayerWeights, CompressError> {
        check_pattern(layer.path, &self.pattern)?;
        ensure_finite(layer.path, "weight", layer.weight)?;
        let sq = stats.require_col_sq_norms(layer.path, &self.name())?;
        let (out, n) = (layer.out_features, layer.in_features);
        if sq.len() != n {
            return Err(CompressError::Shape {
                layer: layer.path.into(),
                message: format!("{} input norms for {n} input features", sq.len()),
            });
        }
        let norms: Vec<f32> = sq.iter().map(|v| v.max(0.0).sqrt()).collect();
        let scores: Vec<f32> = layer
            .weight
            .iter()
            .enumerate()
            .map(|(i, w)| w.abs() * norms[i % n])
            .collect();
        let mask = select_mask(&scores, out, n, self.pattern, self.comparison);
        pruned_result(&layer, mask)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn input_norms_change_the_choice() {
        // One row; the large weight sits on a silent feature, the small one on a loud feature.
        let w = [1.0f32, 0.1, 0.5, 0.4];
        let stats = LayerStats {
            tokens: 4,
            col_sq_norms: Some(vec![0.0001, 100.0, 1.0, 1.0]),
            ..LayerStats::default()
        };
        let view = LayerView::new("t", &w, 1, 4);
        let out = Wanda::new(SparsityPattern::Unstructured(0.5))
            .compress(view, &stats)
            .unwrap();
        // Scores: 0.01, 1.0, 0.5, 0.4 → prune columns 0 and 3 (magnitude would prune 1 and 3).
        assert_eq!(out.to_dense(), vec![0.0, 0.1, 0.5, 0.0]);
        let e = Wanda::new(SparsityPattern::Unstructured(0.5))
            .compress(view, &LayerStats::default())
            .unwrap_err();
        assert!(e.to_string().contains("input norms"), "{e}");
    }
}
