//! [`QuantizedLinear`] and [`QuantizedLowRankLinear`]: layers stored as packed low-bit codes,
//! multiplied through the [`packed_matmul`](crate::packed_matmul) backend extension.

use std::sync::{Arc, OnceLock};

use burn::backend::Dispatch;
use burn::module::{Module, Param};
use burn::tensor::{Device, Int, Tensor, TensorData};

use compress_kernels::dense::DensePrecision;
use compress_kernels::device_layout::{DeviceLayout, DeviceMeta};
use compress_kernels::Activations;

use super::{matmul_wt, LowRankLinear};
use crate::packed::PackedWeight;
use crate::packed_matmul::{
    dense_operand, device_operand, packed_matmul, HostKernel, PackedOperand,
};

/// A layer whose weight is stored as packed low-bit codes ([`PackedWeight`]).
///
/// The packed codes are the layer's storage (what is saved and counted in bits/weight). On the
/// CPU backends (flex, ndarray) without autodiff, the forward pass runs compress-kernels' fused
/// matmul straight from the codes (SIMD tier chosen at run time, see [`Self::kernel`]).
/// A 4-bit layer pruned 2:4 runs the compact layout of its kept codes
/// ([`PackedWeight::sparse24`]) on CPUs with AVX-512 when its rows and groups are multiples
/// of 32 columns. On the CubeCL backends (wgpu, CUDA) it runs compress-kernels' CubeCL kernels on
/// a copy of the codes in device memory ([`DeviceLayout`]). Elsewhere — libtorch, training
/// through autodiff, pruned asymmetric layers, formats a tier does not cover — it multiplies by
/// the dequantized weight: numerically the same product up to f32 rounding. Every case is one
/// call of the [`packed_matmul`](crate::packed_matmul) backend extension, except autodiff,
/// which multiplies by the dequantized weight so that the product is recorded.
///
/// No dense copy of the weight is kept where the kernels run the layer: the dequantized
/// `[out, in]` f32 matrix is made the first time something needs it (a path without a kernel,
/// bf16 products, [`Self::dense_weight`]) and kept from then on, until
/// [`Self::set_precision`] returns the layer to its kernels.
#[derive(Module, Debug)]
pub struct QuantizedLinear {
    /// The device the layer's tensors live on.
    #[module(skip)]
    layer_device: Device,
    /// The dequantized weight, once made (see the type's documentation).
    #[module(skip)]
    dense: Arc<OnceLock<Tensor<2>>>,
    /// Whether (and at which activation precision) the fused kernels run the forward pass
    /// (the activation precision applies to the CPU kernels; the CubeCL kernels take f32);
    /// `None` always uses the dequantized weight (for side-by-side comparisons).
    #[module(skip)]
    pub kernel: Option<Activations>,
    /// The product precision (see [`Self::precision`]).
    #[module(skip)]
    precision: DensePrecision,
    /// For a pruned symmetric layer, the codes with pruned weights at the zero point (see
    /// [`PackedWeight::masked_kernel_codes`]), which the kernels read instead of the mask.
    #[module(skip)]
    kernel_codes: Option<Arc<Vec<u8>>>,
    /// For a 4-bit layer pruned 2:4, the compact layout of its kept codes
    /// ([`PackedWeight::sparse24`]), which the kernels read in preference to the dense codes.
    #[module(skip)]
    sparse24: Option<Arc<compress_kernels::sparse24::Sparse24>>,
    /// On a CubeCL device, the codes and scale pairs in device memory ([`DeviceLayout`]).
    #[module(skip)]
    device_copy: Option<DeviceCopy>,
    /// The packed codes, scales and zeros.
    #[module(skip)]
    pub packed: Arc<PackedWeight>,
    /// Optional bias, `[out_features]`.
    pub bias: Option<Param<Tensor<1>>>,
    /// Optional low-rank correction `U V` added to the dequantized weight (the approximation of
    /// the quantization residual `W − Q`); stored in f32 next to the codes.
    pub correction: Option<LowRankLinear>,
}

/// A packed weight in device memory, as the CubeCL kernels read it.
#[derive(Clone, Debug)]
struct DeviceCopy {
    words: Tensor<1, Int>,
    params: Tensor<1>,
    meta: DeviceMeta,
}

impl DeviceCopy {
    /// The device copy of `packed` (with `codes` in place of its codes for a pruned symmetric
    /// layer); `None` for a pruned asymmetric layer, which has no kernel view.
    fn new(packed: &PackedWeight, codes: Option<&[u8]>, device: &Device) -> Option<Self> {
        let view = match codes {
            Some(c) => packed.kernel_matrix_with_codes(c),
            None => packed.kernel_matrix(),
        }?;
        let layout = DeviceLayout::from_matrix(&view);
        // The words are bit patterns: stored as i32 (every backend has 32-bit integers), read
        // back as u32 by the kernels.
        let words: Vec<i32> = layout.words.iter().map(|&w| w as i32).collect();
        let n = words.len();
        let words = Tensor::<1, Int>::from_data(TensorData::new(words, [n]), device);
        let params_len = layout.params.len();
        let params =
            Tensor::<1>::from_data(TensorData::new(layout.params.clone(), [params_len]), device);
        Some(Self {
            words,
            params,
            meta: layout.meta,
        })
    }
}

impl QuantizedLinear {
    /// A quantized layer on `device` from packed codes and an optional `[out]` bias.
    ///
    /// # Panics
    /// If the bias length differs from the packed weight's output dimension.
    pub fn new(packed: PackedWeight, bias: Option<Tensor<1>>, device: &Device) -> Self {
        let [out, _] = packed.shape();
        if let Some(b) = &bias {
            assert_eq!(b.dims()[0], out, "bias length must equal out_features");
        }
        let on_cube = crate::backend::is_cube(device);
        let sparse24 = (!on_cube && compress_kernels::Tier::Avx512.is_available())
            .then(|| packed.sparse24())
            .flatten()
            .filter(|s| s.tier() != compress_kernels::Tier::Portable)
            .map(Arc::new);
        // The compact 2:4 copy only where its SIMD loop runs; then the dense kernel copy of the
        // codes is never read, so it is not made.
        let kernel_codes = match &sparse24 {
            Some(_) => None,
            None => packed.masked_kernel_codes().map(Arc::new),
        };
        let device_copy = on_cube
            .then(|| DeviceCopy::new(&packed, kernel_codes.as_ref().map(|c| c.as_slice()), device))
            .flatten();
        Self {
            layer_device: device.clone(),
            dense: Arc::new(OnceLock::new()),
            kernel: Some(Activations::F32),
            precision: DensePrecision::F32,
            kernel_codes,
            sparse24,
            device_copy,
            packed: Arc::new(packed),
            bias: bias.map(Param::from_tensor),
            correction: None,
        }
    }

    /// The device the layer lives on.
    pub fn device(&self) -> Device {
        self.layer_device.clone()
    }

    /// The dense f32 weight the codes stand for, `[out, in]`, on the layer's device (without the
    /// correction term): dequantized on the first call and kept until [`Self::set_precision`]
    /// gives the layer back to its kernels or [`Self::release_dense_weight`] drops it.
    pub fn dense_weight(&self) -> Tensor<2> {
        self.dense
            .get_or_init(|| {
                let [out, inp] = self.packed.shape();
                Tensor::from_data(
                    TensorData::new(self.packed.dequantize(), [out, inp]),
                    &self.layer_device,
                )
            })
            .clone()
    }

    /// Whether the dequantized weight is currently held in memory next to the codes.
    pub fn holds_dense_weight(&self) -> bool {
        self.dense.get().is_some()
    }

    /// Drops the dequantized weight (clones of the layer made before keep theirs); the next
    /// product that needs it dequantizes again. The calibration pipeline calls this for every
    /// finished block, whose layers it does not run again.
    pub fn release_dense_weight(&mut self) {
        self.dense = Arc::new(OnceLock::new());
    }

    /// The product precision: [`DensePrecision::Bf16`] multiplies by the dequantized weight in
    /// bf16 (AMX or AVX-512 BF16) on the CPU backends (what the calibration pipeline asks for, see
    /// [`Pipeline::calibration_precision`](crate::pipeline::Pipeline::calibration_precision)),
    /// in place of the fused kernels; [`DensePrecision::F32`] (the default) leaves
    /// [`Self::kernel`] in charge.
    pub fn precision(&self) -> DensePrecision {
        self.precision
    }

    /// Sets the product precision ([`Self::precision`]). Going back to
    /// [`DensePrecision::F32`] drops the dequantized weight when a kernel runs the layer, so a
    /// layer that was multiplied in bf16 during calibration keeps only its codes afterwards.
    pub fn set_precision(&mut self, precision: DensePrecision) {
        self.precision = precision;
        if precision == DensePrecision::F32 && self.kernel_runs(&self.layer_device) {
            self.dense = Arc::new(OnceLock::new());
        }
    }

    /// Whether the forward pass on `device` (not autodiff) runs a kernel on the codes rather
    /// than the dequantized weight, at f32 precision.
    fn kernel_runs(&self, device: &Device) -> bool {
        !device.is_autodiff() && (self.host_kernel().is_some() || self.runs_device_kernel())
    }

    /// The kernels' view of the weight: the packed codes, or for a pruned symmetric layer the
    /// codes with pruned weights at the zero point; `None` for a pruned asymmetric layer.
    fn kernel_view(&self) -> Option<compress_kernels::QuantMatrix<'_>> {
        match (&self.kernel_codes, self.packed.mask()) {
            (Some(codes), _) => self.packed.kernel_matrix_with_codes(codes),
            (None, Some(_)) => None,
            (None, None) => self.packed.kernel_matrix(),
        }
    }

    /// The kernel tier the forward pass runs on, or `None` when it uses the dequantized weight:
    /// [`Self::kernel`] is `None`; the layer is pruned with an asymmetric grid (unless it is
    /// 4-bit 2:4 in the shapes the compact layout's SIMD loop covers, see
    /// [`Self::runs_sparse24`]); its format has
    /// no SIMD tier on this CPU (3, 5–7 bits: the portable tier is an order of magnitude
    /// slower than the dense product, 0.58 ms against about 0.06 ms for a 3-bit 576×1536 GEMV
    /// on the development machine); it is 2-bit (the SIMD loop is 5× dense f32 at 4096×4096
    /// but 0.7× at SmolLM2's 576×1536, so the cached dense product stays faster on the small
    /// layers this project runs; `compress_kernels::matmul` runs it directly); or it lives on a
    /// non-CPU backend or an autodiff device (the kernels read plain f32 host memory and record
    /// no graph).
    pub fn kernel_tier(&self) -> Option<compress_kernels::Tier> {
        self.host_kernel().map(|k| k.tier())
    }

    /// Whether the forward pass runs the compact 2:4-sparse layout (a 4-bit layer pruned 2:4
    /// whose rows and groups are multiples of 32 columns, on a CPU with AVX-512; see
    /// [`PackedWeight::sparse24`]) rather than the dense codes.
    pub fn runs_sparse24(&self) -> bool {
        self.host_kernel().is_some_and(|k| k.is_sparse24())
    }

    /// Whether the forward pass runs compress-kernels' CubeCL kernels (the layer lives on a
    /// CubeCL device — wgpu, CUDA — and is not a pruned asymmetric layer, and [`Self::kernel`]
    /// is set).
    pub fn runs_device_kernel(&self) -> bool {
        self.kernel.is_some() && self.device_copy.is_some()
    }

    /// The fused CPU kernel the forward pass runs (see [`Self::kernel_tier`]). The 2:4 layout
    /// has f32 activations only and is used whenever its SIMD tier runs here, whatever
    /// [`Self::kernel`]'s activation precision.
    fn host_kernel(&self) -> Option<HostKernel> {
        let activations = self.kernel?;
        if !crate::backend::runs_cpu_kernels(&self.layer_device) {
            return None;
        }
        if let Some(s) = &self.sparse24 {
            if s.tier() != compress_kernels::Tier::Portable {
                return Some(HostKernel::sparse24(
                    self.packed.clone(),
                    s.clone(),
                    s.tier(),
                ));
            }
        }
        let w = self.kernel_view()?;
        if w.bits() == 2 {
            return None;
        }
        let tier = compress_kernels::Tier::select(&w, activations);
        (tier != compress_kernels::Tier::Portable)
            .then(|| HostKernel::dense(self.packed.clone(), self.kernel_codes.clone(), tier))
    }

    /// The operand of the [`packed_matmul`] extension for `x`'s device, or `None` when `x` is on
    /// an autodiff device (the product must be recorded) or not on the layer's device.
    fn operand(&self, device: &Device) -> Option<PackedOperand<Dispatch>> {
        // An autodiff device compares equal to its inner one, so `x`'s is checked on its own.
        if *device != self.layer_device || device.is_autodiff() {
            return None;
        }
        if self.precision == DensePrecision::Bf16 && crate::backend::runs_cpu_kernels(device) {
            return Some(dense_operand(self.dense_weight(), DensePrecision::Bf16));
        }
        if let Some(kernel) = self.host_kernel() {
            return Some(PackedOperand::Host(Arc::new(kernel)));
        }
        if let (Some(_), Some(d)) = (self.kernel, &self.device_copy) {
            return Some(device_operand(d.words.clone(), d.params.clone(), d.meta));
        }
        Some(dense_operand(self.dense_weight(), DensePrecision::F32))
    }

    /// `x Wᵀ` (plus the correction's `x Vᵀ Uᵀ`), bias excluded: one call of the
    /// [`packed_matmul`] extension (fused kernels, or the dequantized weight where none runs),
    /// or on autodiff devices a recorded product with the dequantized weight.
    pub(super) fn product<const D: usize>(&self, x: Tensor<D>) -> Tensor<D> {
        let y = match self.operand(&x.device()) {
            Some(operand) => packed_matmul(x.clone(), operand),
            None => matmul_wt(x.clone(), self.dense_weight()),
        };
        match &self.correction {
            Some(c) => y + matmul_wt(matmul_wt(x, c.down.val()), c.up.val()),
            None => y,
        }
    }

    /// The same layer plus the correction `U V` (`U: [out, r]`, `V: [r, in]`).
    ///
    /// # Panics
    /// If the factors' outer dimensions differ from the layer's.
    pub fn with_correction(mut self, up: Tensor<2>, down: Tensor<2>) -> Self {
        let [out, inp] = self.packed.shape();
        assert!(
            up.dims()[0] == out && down.dims()[1] == inp,
            "a correction of a [{out}, {inp}] layer is [{out}, r]·[r, {inp}]"
        );
        self.correction = Some(LowRankLinear::new(up, down, None));
        self
    }
}

/// A rank-`r` factorization whose two factors are packed low-bit codes:
/// `y = Û (V̂ x) + b` with `V̂: [r, in]` and `Û: [out, r]` each a [`QuantizedLinear`] (so each
/// runs the fused CPU kernels where the plain quantized layer would). It is what a quantizer
/// makes of a low-rank layer (SVD-LLM then GPTQ): `r·(out + in)` codes instead of `r·(out + in)`
/// f32 values.
#[derive(Module, Debug)]
pub struct QuantizedLowRankLinear {
    /// The left factor `Û`, `[out_features, rank]`.
    pub up: QuantizedLinear,
    /// The right factor `V̂`, `[rank, in_features]`.
    pub down: QuantizedLinear,
    /// Optional bias, `[out_features]`.
    pub bias: Option<Param<Tensor<1>>>,
}

impl QuantizedLowRankLinear {
    /// A layer from packed `Û: [out, r]`, `V̂: [r, in]` and an optional `[out]` bias.
    ///
    /// # Panics
    /// If the inner dimensions differ or the bias length is not `out`.
    pub fn new(
        up: PackedWeight,
        down: PackedWeight,
        bias: Option<Tensor<1>>,
        device: &Device,
    ) -> Self {
        assert_eq!(
            up.shape()[1],
            down.shape()[0],
            "U is [out, r] and V is [r, in]: ranks differ"
        );
        if let Some(b) = &bias {
            assert_eq!(
                b.dims()[0],
                up.shape()[0],
                "bias length must equal out_features"
            );
        }
        Self {
            up: QuantizedLinear::new(up, None, device),
            down: QuantizedLinear::new(down, None, device),
            bias: bias.map(Param::from_tensor),
        }
    }

    /// The rank `r` of the factorization.
    pub fn rank(&self) -> usize {
        self.down.packed.shape()[0]
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::backend::BackendKind;
    use crate::packed::{QuantScheme, Symmetry};
    use half::f16;

    /// A seeded `[out, inp]` layer of `bits`-bit codes, groups of 32, scales in `[0.01, 0.02)`.
    fn layer(bits: u8, out: usize, inp: usize, device: &Device) -> QuantizedLinear {
        let s = QuantScheme::new(bits, Some(32), Symmetry::Symmetric).unwrap();
        let levels = 1u32 << bits;
        let codes: Vec<u8> = (0..out * inp)
            .map(|i| ((i as u32).wrapping_mul(2_654_435_761) >> 7) % levels)
            .map(|c| c as u8)
            .collect();
        let scales = (0..out * inp / 32)
            .map(|i| f16::from_f32(0.01 + 0.01 * (i % 7) as f32 / 7.0))
            .collect();
        let packed = PackedWeight::from_codes(s, out, inp, &codes, scales, None).unwrap();
        QuantizedLinear::new(packed, None, device)
    }

    fn run(l: &QuantizedLinear, device: &Device) -> Vec<f32> {
        let [_, inp] = l.packed.shape();
        let x: Vec<f32> = (0..2 * inp)
            .map(|i| ((i % 13) as f32 - 6.0) / 6.0)
            .collect();
        let x = Tensor::<2>::from_data(TensorData::new(x, [2, inp]), device);
        l.product(x).into_data().try_to_vec::<f32>().unwrap()
    }

    #[test]
    fn dense_weight_is_made_only_when_a_path_needs_it() {
        let device = BackendKind::Flex.device().unwrap();
        let mut q4 = layer(4, 48, 64, &device);
        assert!(
            !q4.holds_dense_weight(),
            "nothing dequantized at construction"
        );
        let kernel = run(&q4, &device);
        // A CPU with a SIMD tier runs the codes; without one the dense weight is the path.
        assert_eq!(q4.holds_dense_weight(), q4.kernel_tier().is_none());
        q4.set_precision(DensePrecision::Bf16);
        let bf16 = run(&q4, &device);
        assert!(
            q4.holds_dense_weight(),
            "bf16 products read the dequantized weight"
        );
        q4.set_precision(DensePrecision::F32);
        assert_eq!(q4.holds_dense_weight(), q4.kernel_tier().is_none());
        // The same product either way: x is O(1), |w| < 0.16 over 64 terms; bf16 rounds each
        // operand to 8 significant bits (relative 2^-9), so 64 · 1 · 0.16 · 2 · 2^-9 ≈ 0.04.
        for (a, b) in kernel.iter().zip(&bf16) {
            assert!((a - b).abs() < 0.04, "{a} vs {b}");
        }
        // 3-bit codes have no SIMD tier: the dense weight is made on the first product and
        // kept, also across a return to f32.
        let mut q3 = layer(3, 48, 64, &device);
        assert!(!q3.holds_dense_weight());
        run(&q3, &device);
        assert!(q3.holds_dense_weight());
        q3.set_precision(DensePrecision::F32);
        assert!(q3.holds_dense_weight());
        // Released explicitly (what the pipeline does after a block), it is made again on need.
        let before = run(&q3, &device);
        q3.release_dense_weight();
        assert!(!q3.holds_dense_weight());
        assert_eq!(run(&q3, &device), before);
        assert!(q3.holds_dense_weight());
        // The weight on demand equals the codes' dequantization exactly.
        let w: Vec<f32> = q4.dense_weight().into_data().try_to_vec::<f32>().unwrap();
        assert_eq!(w, q4.packed.dequantize());
    }
}
