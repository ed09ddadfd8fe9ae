//! # compress-prune
//!
//! Pruning for `compress` models. Every pruner implements
//! [`Compressor`](compress_core::compressor::Compressor) and returns a sparse layer (a dense
//! weight with a [`SparsityMask`]) or, in SparseGPT's
//! joint mode, packed low-bit codes with the mask. Later steps keep pruned weights at 0: GPTQ
//! compensates their error in the kept weights; the pipeline re-applies the mask after any step.
//!
//! - [`magnitude`]: smallest `|w|` (calibration-free baseline);
//! - [`wanda`]: `|W_ij| · ‖X_j‖₂` per output row (Sun et al. 2023);
//! - [`sparsegpt`]: OBS mask selection with weight reconstruction (Frantar & Alistarh 2023), on
//!   the inverse-Hessian sweep shared with GPTQ; optionally quantizing in the same sweep;
//! - [`select`]: exact-count mask selection from scores;
//! - [`structured`]: removing FFN neurons, attention heads (grouped-query aware) and blocks, by
//!   weight magnitude, activation energy, attention entropy, first-order Taylor importance or
//!   block influence (ShortGPT) — the model gets smaller;
//! - [`recipe`]: the pruners' recipe configurations (`method = "magnitude" | "wanda" |
//!   "sparsegpt"`).
//!
//! Patterns ([`SparsityPattern`]) are unstructured at any sparsity in `[0, 1)`, with exact counts,
//! or N:M ("2:4": at most 2 kept in every 4 consecutive weights of a row).
//!
//! ```
//! use compress_core::compressor::{Compressor, LayerStats, LayerView};
//! use compress_core::sparsity::SparsityPattern;
//! use compress_prune::magnitude::Magnitude;
//!
//! let w: Vec<f32> = (0..16).map(|i| (i as f32 - 7.5) / 10.0).collect();
//! let view = LayerView::new("demo", &w, 2, 8);
//! let pruned = Magnitude::new(SparsityPattern::NM { n: 2, m: 4 })
//!     .compress(view, &LayerStats::default())
//!     .unwrap();
//! let mask = pruned.mask().unwrap();
//! assert!(mask.satisfies_n_m(2, 4));
//! assert_eq!(mask.sparsity(), 0.5);
//! ```

#![warn(missing_docs)]

use compress_core::compressor::{CompressError, LayerView, LayerWeights};
use compress_core::sparsity::SparsityMask;
pub use compress_core::sparsity::SparsityPattern;

pub mod magnitude;
pub mod recipe;
pub mod select;
pub mod sparsegpt;
pub mod structured;
pub mod wanda;

/// The pruned layer: a sparse dense weight, or — when the layer was already quantized — the same
/// packed codes with the mask (pruning a quantized layer never moves its kept weights off their
/// grid).
pub(crate) fn pruned_result(
    layer: &LayerView<'_>,
    mask: SparsityMask,
) -> Result<LayerWeights, CompressError> {
    let mask = match layer.mask {
        Some(prior) => mask.intersect(prior),
        None => mask,
    };
    match layer.packed {
        Some(p) => p
            .clone()
            .with_mask(mask)
            .map(LayerWeights::Quantized)
            .map_err(|e| CompressError::Shape {
                layer: layer.path.into(),
                message: e.to_string(),
            }),
        None => {
            let mut weight = layer.weight.to_vec();
            mask.apply(&mut weight);
            Ok(LayerWeights::Sparse { weight, mask })
        }
    }
}

/// Checks a pattern, naming the layer.
pub(crate) fn check_pattern(path: &str, p: &SparsityPattern) -> Result<(), CompressError> {
    p.validate().map_err(|message| CompressError::Shape {
        layer: path.into(),
        message,
    })
}

/// `method-tag`, e.g. `wanda-50`, `sparsegpt-2of4`.
pub(crate) fn pattern_name(method: &str, p: &SparsityPattern) -> String {
    format!("{method}-{}", p.tag())
}

/// The README's examples, compiled and run as doctests.
#[doc = include_str!("../README.md")]
#[cfg(doctest)]
pub struct ReadmeDoctests;
