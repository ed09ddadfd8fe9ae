//! Rotary position embedding (RoFormer, Su et al. 2021, arXiv:2104.09864).
//!
//! Pair `i` of a head's dimensions is rotated by the angle `θ_i(p) = p · base^(-2i/d)` at position
//! `p`: `(a, b) ↦ (a cos θ − b sin θ, a sin θ + b cos θ)`. Which dimensions form a pair is the
//! [`RopeLayout`]. The cos/sin tables are computed once, in f64, for every position up to the
//! model's context, then stored as f32.

use burn::module::Module;
use burn::tensor::{Device, Int, Tensor, TensorData};

use crate::config::RopeLayout;

/// Precomputed RoPE tables for one head width.
#[derive(Module, Debug)]
pub struct Rope {
    /// `cos θ_i(p)`, `[max_positions, head_dim / 2]`.
    cos: Tensor<2>,
    /// `sin θ_i(p)`, `[max_positions, head_dim / 2]`.
    sin: Tensor<2>,
    #[module(skip)]
    layout: RopeLayout,
    /// The same tables on the host (`cos`, `sin`), for compress-kernels' fused CPU rotation.
    #[module(skip)]
    host: std::sync::Arc<(Vec<f32>, Vec<f32>)>,
}

impl Rope {
    /// Tables for `max_positions` positions of heads of width `head_dim`.
    pub fn new(
        head_dim: usize,
        max_positions: usize,
        base: f32,
        layout: RopeLayout,
        device: &Device,
    ) -> Self {
        let half = head_dim / 2;
        let mut cos = Vec::with_capacity(max_positions * half);
        let mut sin = Vec::with_capacity(max_positions * half);
        for p in 0..max_positions {
            for i in 0..half {
                let inv_freq = (base as f64).powf(-2.0 * i as f64 / head_dim as f64);
                let angle = p as f64 * inv_freq;
                cos.push(angle.cos() as f32);
                sin.push(angle.sin() as f32);
            }
        }
        Self {
            cos: Tensor::from_data(TensorData::new(cos.clone(), [max_positions, half]), device),
            sin: Tensor::from_data(TensorData::new(sin.clone(), [max_positions, half]), device),
            layout,
            host: std::sync::Arc::new((cos, sin)),
        }
    }

    /// Rotates host `x` of `[tokens, heads, head_dim]` into `out` (same shape), token `t` at
    /// `positions[t]`, with compress-kernels' fused loop: the same values as [`Self::apply`].
    pub fn apply_host(
        &self,
        x: &[f32],
        out: &mut [f32],
        heads: usize,
        positions: &[usize],
    ) -> Result<(), compress_core::kernels::KernelError> {
        let head_dim = 2 * self.cos.dims()[1];
        let pairs = match self.layout {
            RopeLayout::NeoX => compress_core::kernels::rope::RopePairs::Halves,
            RopeLayout::Interleaved => compress_core::kernels::rope::RopePairs::Adjacent,
        };
        let (cos, sin) = &*self.host;
        compress_core::kernels::rope::rope(x, out, heads, head_dim, positions, cos, sin, pairs)
    }

    /// Number of positions the tables cover.
    pub fn max_positions(&self) -> usize {
        self.cos.dims()[0]
    }

    /// Rotates `x: [batch, heads, seq, head_dim]` whose token `t` of batch row `b` sits at position
    /// `positions[b, t]` (`positions: [batch, seq]`, each below [`Self::max_positions`]).
    pub fn apply(&self, x: Tensor<4>, positions: Tensor<2, Int>) -> Tensor<4> {
        let [b, h, t, d] = x.dims();
        let half = d / 2;
        let flat = positions.reshape([b * t]);
        let cos = self
            .cos
            .clone()
            .select(0, flat.clone())
            .reshape([b, 1, t, half]);
        let sin = self.sin.clone().select(0, flat).reshape([b, 1, t, half]);
        match self.layout {
            RopeLayout::NeoX => {
                let x0 = x.clone().narrow(3, 0, half);
                let x1 = x.narrow(3, half, half);
                let r0 = x0.clone() * cos.clone() - x1.clone() * sin.clone();
                let r1 = x0 * sin + x1 * cos;
                Tensor::cat(vec![r0, r1], 3)
            }
            RopeLayout::Interleaved => {
                let pairs = x.reshape([b, h, t, half, 2]);
                let x0 = pairs.clone().narrow(4, 0, 1).reshape([b, h, t, half]);
                let x1 = pairs.narrow(4, 1, 1).reshape([b, h, t, half]);
                let r0 = x0.clone() * cos.clone() - x1.clone() * sin.clone();
                let r1 = x0 * sin + x1 * cos;
                Tensor::stack::<5>(vec![r0, r1], 4).reshape([b, h, t, d])
            }
        }
    }
}
