//! The gated feed-forward sub-layer (Shazeer 2020, arXiv:2002.05202):
//! `down(act(gate(x)) ⊙ up(x))` with `act` = SiLU (SwiGLU) or tanh-approximated GELU (GeGLU,
//! Gemma).

use burn::module::Module;
use burn::tensor::activation::silu;
use burn::tensor::{Tensor, TensorData};
use compress_core::backend::{runs_cpu_kernels, with_host_f32};
use compress_core::kernels;
use compress_core::linear::CompressedLinear;

use crate::config::Activation;

/// Gated feed-forward network of a decoder block.
#[derive(Module, Debug)]
pub struct Mlp {
    /// Gate projection, `[intermediate, hidden]`.
    pub gate_proj: CompressedLinear,
    /// Up projection, `[intermediate, hidden]`.
    pub up_proj: CompressedLinear,
    /// Down projection, `[hidden, intermediate]`.
    pub down_proj: CompressedLinear,
    /// The gate's activation.
    #[module(skip)]
    pub activation: Activation,
}

impl Mlp {
    /// The projection of kind `kind` (gate, up or down).
    pub fn linear(&self, kind: compress_core::layer_id::LinearKind) -> Option<&CompressedLinear> {
        use compress_core::layer_id::LinearKind;
        match kind {
            LinearKind::Gate => Some(&self.gate_proj),
            LinearKind::Up => Some(&self.up_proj),
            LinearKind::Down => Some(&self.down_proj),
            _ => None,
        }
    }

    /// [`Self::linear`], to replace it.
    pub fn linear_mut(
        &mut self,
        kind: compress_core::layer_id::LinearKind,
    ) -> Option<&mut CompressedLinear> {
        use compress_core::layer_id::LinearKind;
        match kind {
            LinearKind::Gate => Some(&mut self.gate_proj),
            LinearKind::Up => Some(&mut self.up_proj),
            LinearKind::Down => Some(&mut self.down_proj),
            _ => None,
        }
    }

    /// Gate, up and down, to change them in place.
    pub fn linears_mut(&mut self) -> [&mut CompressedLinear; 3] {
        [&mut self.gate_proj, &mut self.up_proj, &mut self.down_proj]
    }

    /// Applies the MLP to `x: [..., hidden]`.
    pub fn forward<const D: usize>(&self, x: Tensor<D>) -> Tensor<D> {
        self.down_proj.forward(self.gated(x))
    }

    /// `act(gate(x)) ⊙ up(x)`, `[..., intermediate]`: the input of `down_proj`. SwiGLU on the
    /// CPU backends without autodiff runs in one fused parallel pass (compress-kernels'
    /// `swiglu`).
    pub fn gated<const D: usize>(&self, x: Tensor<D>) -> Tensor<D> {
        let g = self.gate_proj.forward(x.clone());
        let u = self.up_proj.forward(x);
        match self.activation {
            Activation::Silu => fused_swiglu(&g, &u).unwrap_or_else(|| silu(g) * u),
            Activation::GeluTanh => gelu_tanh(g) * u,
        }
    }
}

/// `0.5·x·(1 + tanh(√(2/π)·(x + 0.044715·x³)))`, PyTorch's `gelu(approximate="tanh")`.
pub(crate) fn gelu_tanh<const D: usize>(x: Tensor<D>) -> Tensor<D> {
    let c = (2.0f64 / std::f64::consts::PI).sqrt();
    let inner = (x.clone() + x.clone().powi_scalar(3) * 0.044715) * c;
    x * (inner.tanh() + 1.0) * 0.5
}

/// `silu(g) ⊙ u` through the fused kernel, when the tensors are on a device it serves.
fn fused_swiglu<const D: usize>(g: &Tensor<D>, u: &Tensor<D>) -> Option<Tensor<D>> {
    let device = g.device();
    if !runs_cpu_kernels(&device) {
        return None;
    }
    let out = with_host_f32(g, |gs| {
        with_host_f32(u, |us| {
            let mut out = vec![0f32; gs.len()];
            kernels::activation::swiglu(gs, us, &mut out)
                .ok()
                .map(|_| out)
        })
    })???;
    Some(Tensor::from_data(TensorData::new(out, g.dims()), &device))
}
