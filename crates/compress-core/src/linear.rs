//! The replaceable linear layer.
//!
//! Every projection of a `compress` model is a [`CompressedLinear`]: the model code calls
//! [`CompressedLinear::forward`] and never looks at how the weight is stored. Compressors swap the
//! storage — a low-rank factorization today, packed low-bit codes with the quantization crates —
//! without touching the model.
//!
//! Weights follow the PyTorch / GGUF convention `[out_features, in_features]`, so row `o` holds the
//! weights of output `o`; `y = x Wᵀ + b`.

use std::sync::Arc;

use burn::module::{Module, Param};
use burn::tensor::{Device, Tensor, TensorData};

use compress_kernels::dense::DensePrecision;

use crate::compressor::LayerWeights;
use crate::packed::PackedWeight;
use crate::sparsity::SparsityMask;

mod quantized;
pub use quantized::{QuantizedLinear, QuantizedLowRankLinear};

/// A dense `y = x Wᵀ + b` layer, `W` of shape `[out, in]`, optionally pruned.
#[derive(Module, Debug)]
pub struct DenseLinear {
    /// Weight, `[out_features, in_features]` (exactly 0 where `mask` prunes).
    pub weight: Param<Tensor<2>>,
    /// Optional bias, `[out_features]`.
    pub bias: Option<Param<Tensor<1>>>,
    /// Which weights are kept, when the layer was pruned (later steps keep pruned weights at 0).
    #[module(skip)]
    pub mask: Option<Arc<SparsityMask>>,
    /// Arithmetic of the product on the CPU backends: f32 (the default), or bf16 operands with
    /// f32 sums (AMX or AVX-512 BF16) — what the calibration pipeline asks for with
    /// [`Pipeline::calibration_precision`](crate::pipeline::Pipeline::calibration_precision).
    #[module(skip)]
    pub precision: DensePrecision,
}

impl DenseLinear {
    /// A dense layer from a `[out, in]` weight and an optional `[out]` bias.
    ///
    /// # Panics
    /// If the bias length differs from the weight's output dimension (a programming error; loaders
    /// validate shapes from files before calling this).
    pub fn new(weight: Tensor<2>, bias: Option<Tensor<1>>) -> Self {
        Self::from_param(Param::from_tensor(weight), bias)
    }

    /// A dense layer from a weight parameter, which may be lazily initialized (a model loader
    /// can leave a weight in its file until the first product reads it): the shape is read with
    /// [`Param::lazy_shape`], so building the layer does not load the weight.
    ///
    /// # Panics
    /// As [`DenseLinear::new`].
    pub fn from_param(weight: Param<Tensor<2>>, bias: Option<Tensor<1>>) -> Self {
        if let Some(b) = &bias {
            assert_eq!(
                b.dims()[0],
                weight.lazy_shape()[0],
                "bias length must equal out_features"
            );
        }
        Self {
            weight,
            bias: bias.map(Param::from_tensor),
            mask: None,
            precision: DensePrecision::F32,
        }
    }
}

/// A rank-`r` factorized layer `y = U (V x) + b`, with `U: [out, r]` and `V: [r, in]`.
///
/// Stores `r·(in + out)` weights instead of `in·out`; it is the storage that the low-rank crate's
/// truncated and activation-aware SVDs produce.
#[derive(Module, Debug)]
pub struct LowRankLinear {
    /// Left factor `U`, `[out_features, rank]`.
    pub up: Param<Tensor<2>>,
    /// Right factor `V`, `[rank, in_features]`.
    pub down: Param<Tensor<2>>,
    /// Optional bias, `[out_features]`.
    pub bias: Option<Param<Tensor<1>>>,
    /// Arithmetic of both products on the CPU backends (see [`DenseLinear::precision`]).
    #[module(skip)]
    pub precision: DensePrecision,
}

impl LowRankLinear {
    /// A low-rank layer from `U: [out, r]`, `V: [r, in]` and an optional `[out]` bias.
    ///
    /// # Panics
    /// If the inner dimensions of `U` and `V` differ or the bias length is not `out`.
    pub fn new(up: Tensor<2>, down: Tensor<2>, bias: Option<Tensor<1>>) -> Self {
        assert_eq!(
            up.dims()[1],
            down.dims()[0],
            "U is [out, r] and V is [r, in]: ranks differ"
        );
        if let Some(b) = &bias {
            assert_eq!(
                b.dims()[0],
                up.dims()[0],
                "bias length must equal out_features"
            );
        }
        Self {
            up: Param::from_tensor(up),
            down: Param::from_tensor(down),
            bias: bias.map(Param::from_tensor),
            precision: DensePrecision::F32,
        }
    }

    /// The rank `r` of the factorization.
    pub fn rank(&self) -> usize {
        self.up.dims()[1]
    }
}

/// How one linear layer of a model is stored, and how it computes `y = f(x)`.
// The variants differ in size by a few words; a model holds a few hundred of them.
#[allow(clippy::large_enum_variant)]
#[derive(Module, Debug)]
pub enum CompressedLinear {
    /// Uncompressed weights.
    Dense(DenseLinear),
    /// A low-rank factorization `U V`.
    LowRank(LowRankLinear),
    /// Packed low-bit codes.
    Quantized(QuantizedLinear),
    /// A low-rank factorization with packed low-bit factors.
    QuantizedLowRank(QuantizedLowRankLinear),
}

impl CompressedLinear {
    /// Applies the layer to `x` of shape `[..., in_features]`, giving `[..., out_features]`.
    pub fn forward<const D: usize>(&self, x: Tensor<D>) -> Tensor<D> {
        match self {
            CompressedLinear::Dense(l) => {
                let y = dense_product(x, l.weight.val(), l.precision);
                add_bias(y, &l.bias)
            }
            CompressedLinear::LowRank(l) => {
                let h = dense_product(x, l.down.val(), l.precision);
                add_bias(dense_product(h, l.up.val(), l.precision), &l.bias)
            }
            CompressedLinear::Quantized(l) => add_bias(l.product(x), &l.bias),
            CompressedLinear::QuantizedLowRank(l) => {
                add_bias(l.up.product(l.down.product(x)), &l.bias)
            }
        }
    }

    /// Sets the arithmetic of the layer's products on the CPU backends (f32, or bf16 on AMX
    /// or AVX-512 BF16: see [`DenseLinear::precision`] and [`QuantizedLinear::precision`]).
    pub fn set_precision(&mut self, precision: DensePrecision) {
        match self {
            CompressedLinear::Dense(l) => l.precision = precision,
            CompressedLinear::LowRank(l) => l.precision = precision,
            CompressedLinear::Quantized(l) => l.set_precision(precision),
            CompressedLinear::QuantizedLowRank(l) => {
                l.up.set_precision(precision);
                l.down.set_precision(precision);
            }
        }
    }

    /// Drops the dequantized copies quantized layers keep for products that do not run on their
    /// codes ([`QuantizedLinear::release_dense_weight`]); they are made again on first need.
    /// Dense and low-rank layers hold nothing of the kind.
    pub fn release_dense_copies(&mut self) {
        match self {
            CompressedLinear::Dense(_) | CompressedLinear::LowRank(_) => {}
            CompressedLinear::Quantized(l) => l.release_dense_weight(),
            CompressedLinear::QuantizedLowRank(l) => {
                l.up.release_dense_weight();
                l.down.release_dense_weight();
            }
        }
    }

    /// Number of input features.
    pub fn in_features(&self) -> usize {
        match self {
            CompressedLinear::Dense(l) => l.weight.lazy_shape()[1],
            CompressedLinear::LowRank(l) => l.down.dims()[1],
            CompressedLinear::Quantized(l) => l.packed.shape()[1],
            CompressedLinear::QuantizedLowRank(l) => l.down.packed.shape()[1],
        }
    }

    /// Number of output features.
    pub fn out_features(&self) -> usize {
        match self {
            CompressedLinear::Dense(l) => l.weight.lazy_shape()[0],
            CompressedLinear::LowRank(l) => l.up.dims()[0],
            CompressedLinear::Quantized(l) => l.packed.shape()[0],
            CompressedLinear::QuantizedLowRank(l) => l.up.packed.shape()[0],
        }
    }

    /// The dense `[out, in]` weight this layer is equivalent to (`U V` for a low-rank layer).
    /// Compressors use it to read the current weight whatever the storage.
    pub fn dense_weight(&self) -> Tensor<2> {
        match self {
            CompressedLinear::Dense(l) => l.weight.val(),
            CompressedLinear::LowRank(l) => l.up.val().matmul(l.down.val()),
            CompressedLinear::Quantized(l) => match &l.correction {
                Some(c) => l.dense_weight() + c.up.val().matmul(c.down.val()),
                None => l.dense_weight(),
            },
            CompressedLinear::QuantizedLowRank(l) => {
                l.up.dense_weight().matmul(l.down.dense_weight())
            }
        }
    }

    /// The sparsity mask of a pruned layer (dense or quantized), if any.
    pub fn mask(&self) -> Option<&SparsityMask> {
        match self {
            CompressedLinear::Dense(l) => l.mask.as_deref(),
            CompressedLinear::LowRank(_) | CompressedLinear::QuantizedLowRank(_) => None,
            CompressedLinear::Quantized(l) => l.packed.mask(),
        }
    }

    /// The bias, if any.
    pub fn bias(&self) -> Option<Tensor<1>> {
        match self {
            CompressedLinear::Dense(l) => l.bias.as_ref().map(|b| b.val()),
            CompressedLinear::LowRank(l) => l.bias.as_ref().map(|b| b.val()),
            CompressedLinear::Quantized(l) => l.bias.as_ref().map(|b| b.val()),
            CompressedLinear::QuantizedLowRank(l) => l.bias.as_ref().map(|b| b.val()),
        }
    }

    /// A layer on `device` with the given storage and bias (what the pipeline builds from a
    /// compressor's output).
    pub fn from_weights(
        weights: LayerWeights,
        out_features: usize,
        in_features: usize,
        bias: Option<Tensor<1>>,
        device: &Device,
    ) -> Self {
        match weights {
            LayerWeights::Dense(w) => {
                let w = Tensor::from_data(TensorData::new(w, [out_features, in_features]), device);
                CompressedLinear::Dense(DenseLinear::new(w, bias))
            }
            LayerWeights::Sparse { weight, mask } => {
                let w =
                    Tensor::from_data(TensorData::new(weight, [out_features, in_features]), device);
                let mut l = DenseLinear::new(w, bias);
                l.mask = Some(Arc::new(mask));
                CompressedLinear::Dense(l)
            }
            LayerWeights::Quantized(p) => {
                CompressedLinear::Quantized(QuantizedLinear::new(p, bias, device))
            }
            LayerWeights::QuantizedCorrected {
                packed,
                up,
                down,
                rank,
            } => {
                let up = Tensor::from_data(TensorData::new(up, [out_features, rank]), device);
                let down = Tensor::from_data(TensorData::new(down, [rank, in_features]), device);
                CompressedLinear::Quantized(
                    QuantizedLinear::new(packed, bias, device).with_correction(up, down),
                )
            }
            LayerWeights::LowRank { up, down, rank } => {
                let up = Tensor::from_data(TensorData::new(up, [out_features, rank]), device);
                let down = Tensor::from_data(TensorData::new(down, [rank, in_features]), device);
                CompressedLinear::LowRank(LowRankLinear::new(up, down, bias))
            }
            LayerWeights::QuantizedLowRank { up, down } => CompressedLinear::QuantizedLowRank(
                QuantizedLowRankLinear::new(up, down, bias, device),
            ),
        }
    }

    /// A short description of the storage: `dense f32`, `dense f32, 50.0% pruned`, `int4 g32 sym`,
    /// `int3 per-channel asym, 50.0% pruned`, `low-rank r16`,
    /// `low-rank r16, factors int4 g128 sym / int4 g128 sym`.
    pub fn describe(&self) -> String {
        use crate::packed::{Granularity, Symmetry};
        let scheme = |p: &PackedWeight| {
            let s = p.scheme();
            let g = match s.granularity {
                Granularity::PerTensor => "per-tensor".to_string(),
                Granularity::PerChannel => "per-channel".to_string(),
                Granularity::PerGroup(g) => format!("g{g}"),
            };
            let sym = match s.symmetry {
                Symmetry::Symmetric => "sym",
                Symmetry::Asymmetric => "asym",
            };
            format!("int{} {g} {sym}", s.bits.get())
        };
        let pruned = |m: Option<&SparsityMask>| match m {
            Some(m) => format!(", {:.1}% pruned", 100.0 * m.sparsity()),
            None => String::new(),
        };
        match self {
            CompressedLinear::Dense(l) => format!("dense f32{}", pruned(l.mask.as_deref())),
            CompressedLinear::LowRank(l) => format!("low-rank r{}", l.rank()),
            CompressedLinear::Quantized(q) => {
                let correction = q
                    .correction
                    .as_ref()
                    .map_or(String::new(), |c| format!(" + r{} correction", c.rank()));
                format!(
                    "{}{}{correction}",
                    scheme(&q.packed),
                    pruned(q.packed.mask())
                )
            }
            CompressedLinear::QuantizedLowRank(l) => format!(
                "low-rank r{}, factors {} / {}",
                l.rank(),
                scheme(&l.up.packed),
                scheme(&l.down.packed)
            ),
        }
    }

    /// Stored bits per weight of the `[out, in]` matrix ([`Self::storage_bits`] / (out · in)).
    pub fn bits_per_weight(&self) -> f64 {
        self.storage_bits() as f64 / (self.out_features() * self.in_features()).max(1) as f64
    }

    /// Number of stored parameters-equivalent bits (weights only, bias excluded): 32 per dense
    /// or low-rank f32 value, the packed size for quantized layers.
    pub fn storage_bits(&self) -> u64 {
        match self {
            CompressedLinear::Dense(l) => 32 * l.weight.lazy_shape().num_elements() as u64,
            CompressedLinear::LowRank(l) => {
                32 * (l.up.dims().iter().product::<usize>()
                    + l.down.dims().iter().product::<usize>()) as u64
            }
            CompressedLinear::Quantized(l) => {
                let correction = l.correction.as_ref().map_or(0, |c| {
                    32 * (c.up.dims().iter().product::<usize>()
                        + c.down.dims().iter().product::<usize>()) as u64
                });
                8 * l.packed.storage_bytes() as u64 + correction
            }
            CompressedLinear::QuantizedLowRank(l) => {
                8 * (l.up.packed.storage_bytes() + l.down.packed.storage_bytes()) as u64
            }
        }
    }
}

/// `x Wᵀ` for `x: [..., in]`, `W: [out, in]`: folds the leading dimensions into rows so the
/// backend sees one 2-D matmul (one pass over `W`, whatever the batch shape).
/// `x Wᵀ` for a dense `[out, in]` weight: through the [`packed_matmul`](crate::packed_matmul)
/// extension (faer, AMX or AVX-512 BF16 on the CPU backends, the backend's matmul elsewhere), or — when
/// either operand is tracked by autodiff — as a recorded burn matmul.
fn dense_product<const D: usize>(
    x: Tensor<D>,
    w: Tensor<2>,
    precision: DensePrecision,
) -> Tensor<D> {
    let (xd, wd) = (x.device(), w.device());
    // An autodiff device compares equal to its inner one, so each is checked on its own.
    if xd.is_autodiff() || wd.is_autodiff() || xd != wd {
        return matmul_wt(x, w);
    }
    crate::packed_matmul::packed_matmul(x, crate::packed_matmul::dense_operand(w, precision))
}

fn matmul_wt<const D: usize>(x: Tensor<D>, w: Tensor<2>) -> Tensor<D> {
    let dims = x.dims();
    let d_in = dims[D - 1];
    let rows: usize = dims[..D - 1].iter().product();
    let d_out = w.dims()[0];
    let y = x.reshape([rows, d_in]).matmul(w.transpose());
    let mut out_dims = dims;
    out_dims[D - 1] = d_out;
    y.reshape(out_dims)
}

fn add_bias<const D: usize>(y: Tensor<D>, bias: &Option<Param<Tensor<1>>>) -> Tensor<D> {
    match bias {
        Some(b) => y + b.val().unsqueeze::<D>(),
        None => y,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::backend::BackendKind;
    use burn::tensor::Distribution;

    fn close(a: &[f32], b: &[f32], tol: f32) {
        assert_eq!(a.len(), b.len());
        for (i, (x, y)) in a.iter().zip(b).enumerate() {
            assert!((x - y).abs() <= tol, "element {i}: {x} vs {y}");
        }
    }

    #[test]
    fn dense_matches_hand_computation_with_bias() {
        let device = BackendKind::Flex.device().unwrap();
        // W = [[1,2],[3,4],[5,6]], b = [0.5, -1, 2], x = [[1, -1], [2, 0.5]]
        let w = Tensor::<2>::from_data(
            TensorData::new(vec![1f32, 2., 3., 4., 5., 6.], [3, 2]),
            &device,
        );
        let b = Tensor::<1>::from_data(TensorData::new(vec![0.5f32, -1., 2.], [3]), &device);
        let layer = CompressedLinear::Dense(DenseLinear::new(w, Some(b)));
        let x = Tensor::<3>::from_data(
            TensorData::new(vec![1f32, -1., 2., 0.5], [1, 2, 2]),
            &device,
        );
        let y = layer.forward(x);
        assert_eq!(y.dims(), [1, 2, 3]);
        let y: Vec<f32> = y.into_data().try_to_vec::<f32>().unwrap();
        close(&y, &[-0.5, -2.0, 1.0, 3.5, 7.0, 15.0], 0.0);
        assert_eq!((layer.in_features(), layer.out_features()), (2, 3));
    }

    #[test]
    fn low_rank_forward_equals_u_of_v_x() {
        let device = BackendKind::Flex.device().unwrap();
        burn::tensor::Device::seed(&device, 7);
        let (out, r, inp) = (12, 3, 9);
        let u = Tensor::<2>::random([out, r], Distribution::Normal(0.0, 1.0), &device);
        let v = Tensor::<2>::random([r, inp], Distribution::Normal(0.0, 1.0), &device);
        let x = Tensor::<2>::random([5, inp], Distribution::Normal(0.0, 1.0), &device);
        let layer = CompressedLinear::LowRank(LowRankLinear::new(u.clone(), v.clone(), None));
        let expected = u
            .clone()
            .matmul(v.clone().matmul(x.clone().transpose()))
            .transpose();
        let got: Vec<f32> = layer
            .forward(x.clone())
            .into_data()
            .try_to_vec::<f32>()
            .unwrap();
        let want: Vec<f32> = expected.into_data().try_to_vec::<f32>().unwrap();
        // Two f32 matmuls over 9 and 3 terms of O(1) values: 1e-4 is ~100 ulps of the results.
        close(&got, &want, 1e-4);
        // And the equivalent dense weight gives the same outputs.
        let dense = CompressedLinear::Dense(DenseLinear::new(layer.dense_weight(), None));
        let via_dense: Vec<f32> = dense.forward(x).into_data().try_to_vec::<f32>().unwrap();
        close(&via_dense, &want, 1e-4);
        if let CompressedLinear::LowRank(l) = &layer {
            assert_eq!(l.rank(), r);
        }
    }
}
