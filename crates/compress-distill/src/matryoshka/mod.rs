//! Matryoshka models: nested widths and nested bits in one set of weights.
//!
//! - [`sort_by_importance`] (post-hoc, any model): reorders every block's FFN neurons and
//!   key/value groups (with their query heads) by decreasing importance, so that each prefix is
//!   the sub-model of that size that keeps the most important structures. The reordered model
//!   computes the same function (a permutation of the sum over neurons and heads).
//! - Trained nesting (MatFormer-style): [`crate::train::distill`] with
//!   [`WidthSchedule::Nested`](crate::train::WidthSchedule::Nested).
//! - Nested bits: [`quantize_nested`] stores every projection as 8-bit codes whose top bits are
//!   the 4- and 2-bit models ([`compress_quant::nested`]); [`NestedBits`] trains those widths
//!   with fake quantization first (quantization-aware, through [`crate::train::distill`]).
//! - [`slice()`] cuts a real, smaller model out: prefix widths and/or fewer bits.
//!
//! A width is a fraction of the FFN neurons and of the key/value groups of every block; heads
//! go by whole groups, so that the sliced model is an ordinary grouped-query model.

pub(crate) mod qat;
mod slice;
mod sort;

pub use qat::NestedBits;
pub use slice::{quantize_nested, quantize_projections, slice, SliceReport, SliceSpec};
pub use sort::{sort_by_activation, sort_by_importance, NestedOrder};

use compress_core::layer_id::Expert;
use compress_model::llama::PrefixWidth;
use compress_model::LlamaModel;

use crate::error::DistillError;

/// A nested width: the fractions of every block's FFN neurons and key/value groups kept.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Width {
    /// Fraction of FFN neurons, in `(0, 1]`.
    pub ffn: f64,
    /// Fraction of key/value groups (with their query heads), in `(0, 1]`.
    pub heads: f64,
}

impl Width {
    /// The same fraction of neurons and of groups.
    pub fn uniform(fraction: f64) -> Self {
        Self {
            ffn: fraction,
            heads: fraction,
        }
    }

    /// A fraction of the FFN neurons; every head stays (MatFormer nests the FFN only).
    pub fn ffn_only(fraction: f64) -> Self {
        Self {
            ffn: fraction,
            heads: 1.0,
        }
    }

    /// The prefix of `model` this width keeps: `round(ffn · F)` neurons and `round(heads · G)`
    /// groups (at least one of each) of blocks with `F` neurons and `G` groups. Every block
    /// must have the same shape. In a mixture of experts `F` is each routed expert's width, and
    /// the shared expert keeps `round(ffn · S)` of its `S` neurons.
    pub fn prefix(&self, model: &LlamaModel) -> Result<PrefixWidth, DistillError> {
        for (name, f) in [("ffn", self.ffn), ("heads", self.heads)] {
            if !(f > 0.0 && f <= 1.0) {
                return Err(DistillError::Config(format!(
                    "width.{name} = {f}: must lie in (0, 1]"
                )));
            }
        }
        let blocks = model.layers.len();
        if blocks == 0 {
            return Err(DistillError::Config("the model has no blocks".into()));
        }
        let (ffn, kv) = (model.ffn_width(0), model.head_shape(0).kv_heads);
        if let Some(b) =
            (1..blocks).find(|&b| model.ffn_width(b) != ffn || model.head_shape(b).kv_heads != kv)
        {
            return Err(DistillError::Config(format!(
                "layers.{b} differs in shape from layers.0: nested widths need uniform blocks"
            )));
        }
        let count = |f: f64, n: usize| ((f * n as f64).round() as usize).clamp(1.min(n), n);
        let shared = model
            .unit_ffn_width(0, Some(Expert::Shared))
            .unwrap_or_default();
        Ok(PrefixWidth {
            ffn: count(self.ffn, ffn),
            kv_groups: count(self.heads, kv),
            shared_ffn: count(self.ffn, shared),
        })
    }
}
