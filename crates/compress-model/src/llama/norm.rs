//! RMSNorm (Zhang & Sennrich 2019, arXiv:1910.07467): `y = x / sqrt(mean(x²) + ε) · g`.

use burn::module::{Module, Param};
use burn::tensor::Tensor;

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

    /// Normalises `x: [..., hidden]`.
    pub fn forward<const D: usize>(&self, x: Tensor<D>) -> Tensor<D> {
        let ms = x.clone().square().mean_dim(D - 1);
        let inv = (ms + self.eps as f64).sqrt().recip();
        x * inv * self.weight.val().unsqueeze::<D>()
    }
}
