//! Magnitude pruning: remove the weights of smallest `|w|` (the classic baseline; Han et al. 2015,
//! "Learning both Weights and Connections for Efficient Neural Networks", arXiv:1506.02626).
//!
//! Calibration-free. Unstructured sparsity compares all weights of a layer by default (the rule
//! the Wanda and SparseGPT papers use for their magnitude baseline); N:M compares within each run.

use compress_core::compressor::{
    ensure_finite, CompressError, Compressor, LayerStats, LayerView, LayerWeights, StatsRequest,
};
use compress_core::sparsity::SparsityPattern;

use crate::select::{select_mask, Comparison};
use crate::{check_pattern, pattern_name, pruned_result};

/// Magnitude pruning configuration.
#[derive(Debug, Clone, PartialEq)]
pub struct Magnitude {
    /// What to produce.
    pub pattern: SparsityPattern,
    /// Which weights compete for an unstructured budget (default: the whole layer).
    pub comparison: Comparison,
}

impl Magnitude {
    /// Magnitude pruning to `pattern`, comparing across the whole layer.
    pub fn new(pattern: SparsityPattern) -> Self {
        Self {
            pattern,
            comparison: Comparison::Layer,
        }
    }
}

impl Compressor for Magnitude {
    fn name(&self) -> String {
        pattern_name("magnitude", &self.pattern)
    }

    fn stats(&self) -> StatsRequest {
        StatsRequest::NONE
    }

    fn compress(
        &self,
        layer: LayerView<'_>,
        _stats: &LayerStats,
    ) -> Result<LayerWeights, CompressError> {
        check_pattern(layer.path, &self.pattern)?;
        ensure_finite(layer.path, "weight", layer.weight)?;
        let scores: Vec<f32> = layer.weight.iter().map(|w| w.abs()).collect();
        let (out, n) = (layer.out_features, layer.in_features);
        let mask = select_mask(&scores, out, n, self.pattern, self.comparison);
        pruned_result(&layer, mask)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn prunes_the_smallest_magnitudes() {
        let w = [0.1f32, -3.0, 0.2, 4.0, -0.05, 1.0];
        let view = LayerView::new("t", &w, 2, 3);
        let out = Magnitude::new(SparsityPattern::Unstructured(0.5))
            .compress(view, &LayerStats::default())
            .unwrap();
        assert_eq!(out.to_dense(), vec![0.0, -3.0, 0.0, 4.0, 0.0, 1.0]);
        assert_eq!(out.mask().unwrap().pruned(), 3);
        let bad = Magnitude::new(SparsityPattern::Unstructured(1.5));
        let e = bad.compress(view, &LayerStats::default()).unwrap_err();
        assert!(e.to_string().contains("t: sparsity = 1.5"), "{e}");
    }
}
