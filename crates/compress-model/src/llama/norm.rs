//! RMSNorm (Zhang & Sennrich 2019, arXiv:1910.07467): `y = x / sqrt(mean(x²) + ε) · g`.

use burn::module::{Module, Param};
use burn::tensor::{Tensor, TensorData};
use compress_core::backend::{runs_cpu_kernels, with_host_f32};

/// Root-mean-square layer normalisation over the last dimension, with a learned gain.
#[derive(Module, Debug)]
pub struct RmsNorm {
    /// Gain `g`, `[hidden]`.
    pub weight: Param<Tensor<1>>,
    #[module(skip)]
    eps: f32,
}

impl RmsNorm {
    /// A norm with gain `weight` and stabiliser `eps`.
    pub fn new(weight: Tensor<1>, eps: f32) -> Self {
        Self {
            weight: Param::from_tensor(weight),
            eps,
        }
    }

    /// Normalises `x: [..., hidden]` (on the CPU backends without autodiff, in one fused pass:
    /// compress-kernels' `rms_norm`).
    pub fn forward<const D: usize>(&self, x: Tensor<D>) -> Tensor<D> {
        if let Some(y) = self.fused(&x) {
            return y;
        }
        let ms = x.clone().square().mean_dim(D - 1);
        let inv = (ms + self.eps as f64).sqrt().recip();
        x * inv * self.weight.val().unsqueeze::<D>()
    }

    /// The fused CPU form, where it applies (a CPU backend, neither `x` nor the gain tracked by
    /// autodiff).
    fn fused<const D: usize>(&self, x: &Tensor<D>) -> Option<Tensor<D>> {
        let (device, gain) = (x.device(), self.weight.val());
        if !runs_cpu_kernels(&device) || gain.device().is_autodiff() {
            return None;
        }
        let g = compress_core::backend::host_f32(&gain)?;
        let y = with_host_f32(x, |xs| {
            let mut y = vec![0f32; xs.len()];
            compress_core::kernels::norm::rms_norm(xs, &g, self.eps, &mut y)
                .ok()
                .map(|_| y)
        })??;
        Some(Tensor::from_data(TensorData::new(y, x.dims()), &device))
    }
}
