//! The one operation a quantized layer calls on every backend: `y = x · Wᵀ` for a packed `W`,
//! through burn's backend-extension mechanism.
//!
//! [`PackedMatmulBackend::packed_matmul`] is implemented once per backend, and burn's dispatch
//! picks the implementation from the device `x` lives on:
//!
//! | backend | operand | what runs |
//! |---|---|---|
//! | flex, ndarray | [`PackedOperand::Host`] | compress-kernels' fused SIMD kernels on the host codes |
//! | CubeCL (wgpu, CUDA) | [`PackedOperand::Device`] | the CubeCL kernels on the codes in device memory (`compress_kernels::cube`) |
//! | flex, ndarray | [`PackedOperand::Dense`] | `compress_kernels::dense`: faer's f32 GEMM, or bf16 (AMX, AVX-512 BF16) when asked |
//! | CubeCL, libtorch | [`PackedOperand::Dense`] | the backend's own matmul (f32 whatever the precision asked) |
//!
//! [`QuantizedLinear`](crate::linear::QuantizedLinear) builds the operand its device calls for,
//! and dense layers ([`DenseLinear`](crate::linear::DenseLinear)) call the same operation with
//! their weight, so a compressed model runs on every backend with the same model code. Autodiff
//! devices never reach this operation: training multiplies by the dequantized weight, which
//! records the graph.

// burn-ndarray (and burn-tch) are deprecated upstream but still supported backends: the
// extension names them, and the code it generates refers to them throughout this module.
#![allow(deprecated)]

use std::sync::Arc;

use burn::backend::tensor::{FloatTensor, IntTensor};
use burn::backend::{backend_extension, Backend, Dispatch, ExtensionType, TensorMetadata};
use burn::tensor::{Int, Shape, Tensor, TensorData};

use compress_kernels::dense::DensePrecision;
use compress_kernels::device_layout::DeviceMeta;
use compress_kernels::sparse24::Sparse24;
use compress_kernels::{KernelError, Tier};

use crate::packed::PackedWeight;

/// A packed weight as one backend's implementation of [`PackedMatmulBackend`] reads it.
#[derive(ExtensionType)]
pub enum PackedOperand<B: Backend> {
    /// The codes and scale pairs in device memory, in compress-kernels' `DeviceLayout`
    /// (CubeCL backends).
    Device {
        /// Code words (`u32` bit patterns stored in a 32-bit integer tensor).
        words: IntTensor<B>,
        /// `(s, s·z)` per group, f32.
        params: FloatTensor<B>,
        /// Shape and format.
        meta: DeviceMeta,
    },
    /// A dense (or dequantized) `[out, in]` weight: dense layers, libtorch, quantized layers no
    /// kernel covers. `precision` applies on the CPU backends.
    Dense {
        /// The weight, `[out, in]`.
        weight: FloatTensor<B>,
        /// f32, or bf16 products on AMX or AVX-512 BF16 (CPU backends only).
        precision: DensePrecision,
    },
    /// The packed codes in host memory, read by the fused CPU kernels (flex, ndarray).
    Host(Arc<HostKernel>),
}

/// The packed-weight product as a burn backend extension (see the [module docs](self)).
#[backend_extension(Cube: cfg(feature = "cube"), Flex, NdArray, LibTorch: cfg(feature = "tch"))]
pub trait PackedMatmulBackend: Backend {
    /// `x · Wᵀ` for `x` of shape `[..., in]`, giving `[..., out]` (no bias).
    fn packed_matmul(
        x: FloatTensor<Self>,
        #[extension_type] weight: PackedOperand<Self>,
    ) -> FloatTensor<Self>;
}

/// `x · Wᵀ` through [`PackedMatmulBackend::packed_matmul`] on `x`'s backend.
///
/// # Panics
/// If `x` is on an autodiff device (the operation records no gradient), or the operand does not
/// suit the backend (a [`PackedOperand::Device`] on a CPU backend, say): both programming
/// errors that [`QuantizedLinear`](crate::linear::QuantizedLinear) rules out.
pub fn packed_matmul<const D: usize>(x: Tensor<D>, weight: PackedOperand<Dispatch>) -> Tensor<D> {
    Tensor::from_dispatch(<Dispatch as PackedMatmulBackend>::packed_matmul(
        x.into_dispatch(),
        weight,
    ))
}

/// Builds the [`PackedOperand::Device`] operand from a weight's device tensors.
pub fn device_operand(
    words: Tensor<1, Int>,
    params: Tensor<1>,
    meta: DeviceMeta,
) -> PackedOperand<Dispatch> {
    PackedOperand::Device {
        words: words.into_dispatch(),
        params: params.into_dispatch(),
        meta,
    }
}

/// Builds the [`PackedOperand::Dense`] operand from a dense `[out, in]` weight.
pub fn dense_operand(weight: Tensor<2>, precision: DensePrecision) -> PackedOperand<Dispatch> {
    PackedOperand::Dense {
        weight: weight.into_dispatch(),
        precision,
    }
}

/// What the fused CPU kernels multiply by: a packed weight (or the compact 2:4 copy of its kept
/// codes) and the tier that runs it, all owned so the operation can carry it.
#[derive(Debug)]
pub struct HostKernel {
    packed: Arc<PackedWeight>,
    /// For a pruned symmetric layer, its codes with pruned weights at the zero point.
    codes: Option<Arc<Vec<u8>>>,
    sparse24: Option<Arc<Sparse24>>,
    tier: Tier,
}

impl HostKernel {
    /// The kernel for the dense packed codes (or `codes`, their masked copy) on `tier`.
    pub(crate) fn dense(
        packed: Arc<PackedWeight>,
        codes: Option<Arc<Vec<u8>>>,
        tier: Tier,
    ) -> Self {
        Self {
            packed,
            codes,
            sparse24: None,
            tier,
        }
    }

    /// The kernel for the compact 2:4 layout `sparse24` of `packed` on `tier`.
    pub(crate) fn sparse24(packed: Arc<PackedWeight>, sparse24: Arc<Sparse24>, tier: Tier) -> Self {
        Self {
            packed,
            codes: None,
            sparse24: Some(sparse24),
            tier,
        }
    }

    /// Whether it runs the compact 2:4 layout.
    pub fn is_sparse24(&self) -> bool {
        self.sparse24.is_some()
    }

    /// The tier that runs the product.
    pub fn tier(&self) -> Tier {
        self.tier
    }

    /// `[out, in]` of the weight.
    pub fn shape(&self) -> [usize; 2] {
        self.packed.shape()
    }

    /// `y = xs · Wᵀ` for `rows` rows of `xs`.
    pub fn product(&self, xs: &[f32], rows: usize, y: &mut [f32]) -> Result<(), KernelError> {
        if let Some(s) = &self.sparse24 {
            return compress_kernels::sparse24::matmul_with(self.tier, xs, rows, s, y);
        }
        let view = match &self.codes {
            Some(codes) => self.packed.kernel_matrix_with_codes(codes),
            None => self.packed.kernel_matrix(),
        };
        let view = view.ok_or_else(|| {
            KernelError::Shape("the packed weight has no kernel view (pruned asymmetric)".into())
        })?;
        compress_kernels::matmul_with(self.tier, xs, rows, &view, y)
    }
}

/// Shapes of `x · Wᵀ`: the rows (all leading dimensions together) and the output shape.
fn product_shape(x: &Shape, out_features: usize) -> (usize, Shape) {
    let dims = x.as_slice();
    let rows = dims[..dims.len() - 1].iter().product();
    let mut out = dims.to_vec();
    *out.last_mut().expect("a tensor of rank ≥ 1") = out_features;
    (rows, Shape::from(out))
}

/// `x · Wᵀ` with a dequantized `w` (`[out, in]`) on any backend (the GPU and libtorch path).
#[cfg_attr(not(any(feature = "cube", feature = "tch")), allow(dead_code))]
fn dense_product<B: Backend>(x: FloatTensor<B>, w: FloatTensor<B>) -> FloatTensor<B> {
    let shape = x.shape();
    let k = shape[shape.num_dims() - 1];
    let (rows, out) = product_shape(&shape, w.shape()[0]);
    let x2 = B::float_reshape(x, Shape::from(vec![rows, k]));
    let y = B::float_matmul(x2, B::float_transpose(w));
    B::float_reshape(y, out)
}

/// `x · Wᵀ` on the fused CPU kernels: `x` read back to host f32, the product written into a
/// new tensor on `x`'s device.
fn host_product<B: Backend>(x: FloatTensor<B>, kernel: &HostKernel) -> FloatTensor<B> {
    let device = x.device();
    let (rows, out) = product_shape(&x.shape(), kernel.shape()[0]);
    let y = host_kernel_product(&host_values::<B>(x), rows, kernel);
    B::float_from_data(TensorData::new(y, out), &device)
}

/// Checks that `xs` holds `rows` rows of `k` values (the operation's callers build both from
/// the same tensors, so a mismatch is a programming error).
fn check_rows(xs: &[f32], rows: usize, k: usize) {
    assert_eq!(
        xs.len(),
        rows * k,
        "x has {} columns, W {k}",
        xs.len() / rows.max(1)
    );
}

/// `xs · Wᵀ` (`rows` rows) on the fused CPU kernels.
fn host_kernel_product(xs: &[f32], rows: usize, kernel: &HostKernel) -> Vec<f32> {
    let [n, k] = kernel.shape();
    check_rows(xs, rows, k);
    let mut y = vec![0f32; rows * n];
    // The tier was chosen for this weight's format on this CPU when the operand was built, and
    // the lengths are checked above, so the kernels cannot refuse the product.
    kernel
        .product(xs, rows, &mut y)
        .expect("the kernel tier was validated for this weight");
    y
}

/// A CPU tensor's values as host f32 (one copy).
fn host_values<B: Backend>(t: FloatTensor<B>) -> Vec<f32> {
    burn::tensor::try_read_sync(B::float_into_data(t))
        .expect("reading a CPU tensor cannot wait on a device")
        .expect("a CPU backend reads its own tensors back")
        .convert::<f32>()
        .try_into_vec::<f32>()
        .expect("converted to f32")
}

/// `x · wᵀ` on the host with `compress_kernels::dense` (f32 on faer, or bf16 on AMX / AVX-512 BF16), for slices
/// `xs` (`rows × k`) and `ws` (`n × k`).
fn host_dense(
    xs: &[f32],
    rows: usize,
    ws: &[f32],
    n: usize,
    precision: DensePrecision,
) -> Vec<f32> {
    let k = ws.len() / n.max(1);
    check_rows(xs, rows, k);
    compress_kernels::dense::matmul_new(xs, rows, ws, n, k, precision)
        .expect("lengths checked above")
        .0
}

/// The implementation every CPU backend shares (copies `x` and a dense weight to the host).
fn cpu_packed_matmul<B: Backend>(x: FloatTensor<B>, weight: PackedOperand<B>) -> FloatTensor<B> {
    match weight {
        PackedOperand::Host(kernel) => host_product::<B>(x, &kernel),
        PackedOperand::Dense { weight, precision } => {
            let device = x.device();
            let n = weight.shape()[0];
            let (rows, out) = product_shape(&x.shape(), n);
            let y = host_dense(
                &host_values::<B>(x),
                rows,
                &host_values::<B>(weight),
                n,
                precision,
            );
            B::float_from_data(TensorData::new(y, out), &device)
        }
        PackedOperand::Device { .. } => {
            panic!("a device-layout operand was given to a CPU backend (use PackedOperand::Host)")
        }
    }
}

impl PackedMatmulBackend for burn::backend::Flex {
    fn packed_matmul(x: FloatTensor<Self>, weight: PackedOperand<Self>) -> FloatTensor<Self> {
        use burn::backend::flex::FlexTensor;
        // Flex tensors expose their storage: contiguous f32 operands are read in place
        // rather than copied (the weight would otherwise be copied on every call).
        let contiguous_f32 =
            |t: &FlexTensor| t.is_contiguous() && t.dtype() == burn::tensor::DType::F32;
        match weight {
            PackedOperand::Dense { weight, precision }
                if contiguous_f32(&x) && contiguous_f32(&weight) =>
            {
                let n = weight.shape()[0];
                let (rows, out) = product_shape(&x.shape(), n);
                let (xs, ws) = (x.as_slice::<f32>(), weight.as_slice::<f32>());
                let y = host_dense(
                    xs.expect("contiguous f32"),
                    rows,
                    ws.expect("contiguous f32"),
                    n,
                    precision,
                );
                FlexTensor::from_data(TensorData::new(y, out))
            }
            PackedOperand::Host(kernel) if contiguous_f32(&x) => {
                let [n, _] = kernel.shape();
                let (rows, out) = product_shape(&x.shape(), n);
                let y = host_kernel_product(
                    x.as_slice::<f32>().expect("contiguous f32"),
                    rows,
                    &kernel,
                );
                FlexTensor::from_data(TensorData::new(y, out))
            }
            other => cpu_packed_matmul::<Self>(x, other),
        }
    }
}

impl PackedMatmulBackend for burn::backend::NdArray {
    fn packed_matmul(x: FloatTensor<Self>, weight: PackedOperand<Self>) -> FloatTensor<Self> {
        cpu_packed_matmul::<Self>(x, weight)
    }
}

#[cfg(feature = "tch")]
impl PackedMatmulBackend for burn::backend::LibTorch {
    fn packed_matmul(x: FloatTensor<Self>, weight: PackedOperand<Self>) -> FloatTensor<Self> {
        match weight {
            PackedOperand::Dense { weight, .. } => dense_product::<Self>(x, weight),
            _ => panic!("libtorch multiplies by the dequantized weight (PackedOperand::Dense)"),
        }
    }
}

#[cfg(feature = "cube")]
mod cube {
    use super::*;
    use burn::backend::Cube;
    use burn::tensor::DType;
    use burn_cubecl::kernel::into_contiguous;
    use burn_cubecl::tensor::CubeTensor;

    impl PackedMatmulBackend for Cube {
        fn packed_matmul(x: FloatTensor<Self>, weight: PackedOperand<Self>) -> FloatTensor<Self> {
            match weight {
                PackedOperand::Device {
                    words,
                    params,
                    meta,
                } => device_product(x, words, params, &meta),
                PackedOperand::Dense { weight, .. } => dense_product::<Self>(x, weight),
                PackedOperand::Host(_) => {
                    panic!(
                        "a host operand was given to a CubeCL backend (use PackedOperand::Device)"
                    )
                }
            }
        }
    }

    /// Runs compress-kernels' CubeCL kernels on the buffers of `x`, `words` and `params`.
    fn device_product(
        x: CubeTensor,
        words: CubeTensor,
        params: CubeTensor,
        meta: &DeviceMeta,
    ) -> CubeTensor {
        assert_eq!(
            x.dtype,
            DType::F32,
            "the CubeCL packed matmul takes f32 activations"
        );
        assert_eq!(params.dtype, DType::F32, "scale pairs are f32");
        assert_eq!(
            words.dtype.size(),
            4,
            "code words are 32-bit ({:?})",
            words.dtype
        );
        assert_eq!(words.shape().num_elements(), meta.num_words(), "code words");
        assert_eq!(
            params.shape().num_elements(),
            meta.num_params(),
            "scale pairs"
        );
        let shape = x.shape();
        let k = shape[shape.num_dims() - 1];
        assert_eq!(
            k, meta.in_features,
            "x has {k} columns, W {}",
            meta.in_features
        );
        let (rows, out) = product_shape(&shape, meta.out_features);
        let x = into_contiguous(x);
        let words = into_contiguous(words);
        let params = into_contiguous(params);
        let y = x.client.empty(rows * meta.out_features * 4);
        compress_kernels::cube::launch(
            &x.client,
            x.handle.clone(),
            words.handle.clone(),
            params.handle.clone(),
            y.clone(),
            rows,
            meta,
        );
        CubeTensor::new_contiguous(x.client.clone(), x.device.clone(), out, y, DType::F32)
    }
}
