//! The SwiGLU feed-forward sub-layer (Shazeer 2020, arXiv:2002.05202):
//! `down(silu(gate(x)) ⊙ up(x))`.

use burn::module::Module;
use burn::tensor::activation::silu;
use burn::tensor::Tensor;
use compress_core::linear::CompressedLinear;

/// Gated feed-forward network of a decoder block.
#[derive(Module, Debug)]
pub struct Mlp {
    /// Gate projection, `[intermediate, hidden]`.
    pub gate_proj: CompressedLinear,
    /// Up projection, `[intermediate, hidden]`.
    pub up_proj: CompressedLinear,
    /// Down projection, `[hidden, intermediate]`.
    pub down_proj: CompressedLinear,
}

impl Mlp {
    /// Applies the MLP to `x: [..., hidden]`.
    pub fn forward<const D: usize>(&self, x: Tensor<D>) -> Tensor<D> {
        self.down_proj.forward(self.gated(x))
    }

    /// `silu(gate(x)) ⊙ up(x)`, `[..., intermediate]`: the input of `down_proj`.
    pub fn gated<const D: usize>(&self, x: Tensor<D>) -> Tensor<D> {
        silu(self.gate_proj.forward(x.clone())) * self.up_proj.forward(x)
    }
}
