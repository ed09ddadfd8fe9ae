//! Run-time backend selection.
//!
//! burn 0.22 carries no backend in the tensor type: the [`Device`] a tensor lives on picks the
//! backend. This module names the backends `compress` supports, tells which were compiled into
//! this build, and builds their devices. Selection is always explicit (an argument, never an
//! environment variable read deep inside the library).

use std::fmt;
use std::str::FromStr;

use burn::tensor::{DType, Device, FloatDType, Tensor, TensorData};
use half::slice::HalfFloatSliceExt;

/// Whether tensors on `device` may take compress-kernels' fused CPU paths (quantized matmul,
/// attention, SwiGLU): a CPU backend (flex, ndarray) without autodiff. The kernels work on
/// plain slices, so on an autodiff device they would cut the gradient graph, and on a GPU they
/// would copy every operand to the host.
pub fn runs_cpu_kernels(device: &Device) -> bool {
    #[allow(deprecated)] // burn-ndarray is deprecated upstream but still a supported backend
    let cpu = *device == Device::flex() || *device == Device::ndarray();
    cpu && !device.is_autodiff()
}

/// Whether `device` belongs to burn's CubeCL backend (wgpu, CUDA, ...), where quantized layers
/// run compress-kernels' CubeCL kernels. Always `false` in builds without a CubeCL backend.
pub fn is_cube(device: &Device) -> bool {
    #[cfg(feature = "cube")]
    {
        matches!(device.as_dispatch(), burn::backend::DispatchDevice::Cube(_))
    }
    #[cfg(not(feature = "cube"))]
    {
        let _ = device;
        false
    }
}

/// Calls `f` with the values of `x` as host f32 (row-major): borrowed in place when `x` is a
/// contiguous f32 tensor of the flex backend, else read back into a new vector
/// ([`host_f32`]). `None` if the data cannot be read back.
pub fn with_host_f32<const D: usize, R>(
    x: &burn::tensor::Tensor<D>,
    f: impl FnOnce(&[f32]) -> R,
) -> Option<R> {
    if let Ok(p) = x.clone().try_into_primitive::<burn::backend::Flex>() {
        if let Some(s) = p.as_slice::<f32>() {
            return Some(f(s));
        }
    }
    host_f32(x).map(|v| f(&v))
}

/// The values of `x` as a host `Vec<f32>` (row-major, converted from its dtype), the input
/// the fused CPU kernels read; `None` if the data cannot be read back.
pub fn host_f32<const D: usize>(x: &burn::tensor::Tensor<D>) -> Option<Vec<f32>> {
    x.clone()
        .into_data()
        .convert::<f32>()
        .try_into_vec::<f32>()
        .ok()
}

/// `x` stored as bf16 (rounded to nearest even): half the memory of f32, for activations that
/// are kept rather than computed on (the calibration pipeline's, with
/// [`DensePrecision::Bf16`](compress_kernels::dense::DensePrecision)). On the flex backend the
/// rounding runs in parallel with AVX-512 BF16 where the CPU has it
/// ([`compress_kernels::dense::slice_to_bf16`]) into a memory map of the tensor's own
/// ([`crate::memory::bf16_mapped`]), so long-lived activations stay off the heap; elsewhere it
/// is burn's cast.
pub fn to_bf16_storage<const D: usize>(x: Tensor<D>) -> Tensor<D> {
    if x.dtype() == DType::BF16 {
        return x;
    }
    let device = x.device();
    if device == Device::flex() && x.dtype() == DType::F32 {
        // In a memory map of its own (`memory::bf16_mapped`), off the heap.
        if let Some(Some(bytes)) = with_host_f32(&x, crate::memory::bf16_mapped) {
            let data = TensorData::from_bytes(bytes, x.shape(), DType::BF16);
            return Tensor::from_data(data, (&device, DType::BF16));
        }
        let bits = with_host_f32(&x, |s| {
            let mut out = vec![half::bf16::ZERO; s.len()];
            compress_kernels::dense::slice_to_bf16(s, out.reinterpret_cast_mut());
            out
        });
        if let Some(bits) = bits {
            return Tensor::from_data(TensorData::new(bits, x.shape()), (&device, DType::BF16));
        }
    }
    x.cast(FloatDType::BF16)
}

/// `x` as f32 (exact from bf16 or f16; `x` itself when it is f32) — the inverse of
/// [`to_bf16_storage`] for computing on stored activations.
pub fn to_f32<const D: usize>(x: Tensor<D>) -> Tensor<D> {
    if x.dtype() == DType::F32 {
        return x;
    }
    let device = x.device();
    if x.dtype() == DType::BF16 {
        if let Ok(p) = x.clone().try_into_primitive::<burn::backend::Flex>() {
            if let Some(s) = p.as_slice::<half::bf16>() {
                let out = compress_kernels::dense::vec_from_bf16(s.reinterpret_cast());
                return Tensor::from_data(TensorData::new(out, x.shape()), &device);
            }
        }
    }
    x.cast(FloatDType::F32)
}

/// A burn backend `compress` can run on.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum BackendKind {
    /// burn-flex: pure-Rust CPU backend (rayon + SIMD). The CPU default; see `docs/backends.md`
    /// for the measurements behind that choice.
    Flex,
    /// burn-ndarray: CPU backend on the `ndarray` crate (deprecated upstream, kept for comparison).
    NdArray,
    /// CubeCL on wgpu (Vulkan, Metal, DX12; Mesa's lavapipe on machines without a GPU).
    /// Needs the `wgpu` feature.
    Wgpu,
    /// CubeCL on CUDA. Needs the `cuda` feature and a CUDA toolkit.
    Cuda,
    /// libtorch through `tch`, CPU device. Needs the `tch` feature and libtorch.
    LibTorch,
}

/// A backend that was asked for but cannot be used.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum BackendError {
    /// The name matches no backend.
    #[error("unknown backend `{0}` (expected one of: flex, ndarray, wgpu, cuda, tch)")]
    Unknown(String),
    /// The backend exists but this build was compiled without its cargo feature.
    #[error(
        "backend `{kind}` is not compiled into this build: rebuild with `--features {feature}`"
    )]
    NotCompiled {
        /// The backend asked for.
        kind: BackendKind,
        /// The cargo feature that enables it.
        feature: &'static str,
    },
    /// The backend is compiled in but its device does not work here (no GPU or driver).
    #[error("backend `{kind}` is unavailable on this machine: {reason}")]
    Unavailable {
        /// The backend asked for.
        kind: BackendKind,
        /// What went wrong when a first tensor was created on it.
        reason: String,
    },
}

impl BackendKind {
    /// Every backend kind, compiled in or not.
    pub const ALL: [BackendKind; 5] = [
        BackendKind::Flex,
        BackendKind::NdArray,
        BackendKind::Wgpu,
        BackendKind::Cuda,
        BackendKind::LibTorch,
    ];

    /// The short name used on command lines (`flex`, `ndarray`, `wgpu`, `cuda`, `tch`).
    pub fn name(self) -> &'static str {
        match self {
            BackendKind::Flex => "flex",
            BackendKind::NdArray => "ndarray",
            BackendKind::Wgpu => "wgpu",
            BackendKind::Cuda => "cuda",
            BackendKind::LibTorch => "tch",
        }
    }

    /// The cargo feature of `compress` (and `compress-core`) that compiles this backend in.
    /// The CPU backends are always compiled.
    pub fn feature(self) -> Option<&'static str> {
        match self {
            BackendKind::Flex | BackendKind::NdArray => None,
            BackendKind::Wgpu => Some("wgpu"),
            BackendKind::Cuda => Some("cuda"),
            BackendKind::LibTorch => Some("tch"),
        }
    }

    /// Whether this build can create a device of this kind.
    pub fn is_compiled(self) -> bool {
        match self {
            BackendKind::Flex | BackendKind::NdArray => true,
            BackendKind::Wgpu => cfg!(feature = "wgpu"),
            BackendKind::Cuda => cfg!(feature = "cuda"),
            BackendKind::LibTorch => cfg!(feature = "tch"),
        }
    }

    /// The backends compiled into this build.
    pub fn compiled() -> Vec<BackendKind> {
        Self::ALL.into_iter().filter(|k| k.is_compiled()).collect()
    }

    /// The default device of this backend (the first GPU for wgpu/cuda, the CPU otherwise).
    ///
    /// GPU devices are checked by running a tiny computation on them first, so a machine
    /// without a usable adapter gets [`BackendError::Unavailable`] here instead of a panic in
    /// the middle of the first model call.
    pub fn device(self) -> Result<Device, BackendError> {
        let device = self.unchecked_device()?;
        match self {
            BackendKind::Wgpu | BackendKind::Cuda => probe(self, device),
            _ => Ok(device),
        }
    }

    fn unchecked_device(self) -> Result<Device, BackendError> {
        match self {
            BackendKind::Flex => Ok(Device::flex()),
            #[allow(deprecated)] // ndarray is deprecated upstream; we keep it for comparison.
            BackendKind::NdArray => Ok(Device::ndarray()),
            #[cfg(feature = "wgpu")]
            BackendKind::Wgpu => Ok(Device::wgpu(Default::default())),
            #[cfg(feature = "cuda")]
            BackendKind::Cuda => Ok(Device::cuda(0)),
            #[cfg(feature = "tch")]
            #[allow(deprecated)]
            BackendKind::LibTorch => Ok(Device::libtorch()),
            #[allow(unreachable_patterns)] // reachable only when a backend feature is off
            other => Err(BackendError::NotCompiled {
                kind: other,
                feature: other.feature().unwrap_or("<none>"),
            }),
        }
    }
}

/// Runs a two-element sum on `device`; a panic (how burn reports a missing adapter) becomes
/// [`BackendError::Unavailable`].
fn probe(kind: BackendKind, device: Device) -> Result<Device, BackendError> {
    let d = device.clone();
    let run = std::panic::AssertUnwindSafe(move || {
        burn::tensor::Tensor::<1>::from_floats([1.0, 2.0], &d)
            .sum()
            .into_data()
            .try_to_vec::<f32>()
    });
    match std::panic::catch_unwind(run) {
        Ok(Ok(v)) if v == [3.0] => Ok(device),
        Ok(other) => Err(BackendError::Unavailable {
            kind,
            reason: format!("1 + 2 gave {other:?}"),
        }),
        Err(payload) => {
            let reason = payload
                .downcast_ref::<String>()
                .cloned()
                .or_else(|| payload.downcast_ref::<&str>().map(|s| s.to_string()))
                .unwrap_or_else(|| "the device panicked".into());
            Err(BackendError::Unavailable { kind, reason })
        }
    }
}

impl Default for BackendKind {
    /// The CPU default: [`BackendKind::Flex`] (measured faster than ndarray on this project's
    /// model forward; numbers in `docs/backends.md`).
    fn default() -> Self {
        BackendKind::Flex
    }
}

impl fmt::Display for BackendKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

impl FromStr for BackendKind {
    type Err = BackendError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s.to_ascii_lowercase().as_str() {
            "flex" | "cpu" => Ok(BackendKind::Flex),
            "ndarray" => Ok(BackendKind::NdArray),
            "wgpu" | "vulkan" => Ok(BackendKind::Wgpu),
            "cuda" => Ok(BackendKind::Cuda),
            "tch" | "libtorch" | "torch" => Ok(BackendKind::LibTorch),
            _ => Err(BackendError::Unknown(s.to_string())),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bf16_storage_rounds_and_reads_back_on_flex() {
        let device = Device::flex();
        let values: Vec<f32> = (0..3 * 5 * 7)
            .map(|i| (i as f32 * 0.37).sin() * 100.0)
            .collect();
        let x = Tensor::<3>::from_data(TensorData::new(values.clone(), [3, 5, 7]), &device);
        let stored = to_bf16_storage(x);
        assert_eq!(stored.dtype(), DType::BF16);
        // Round to nearest even, as burn's own cast does.
        let want: Vec<f32> = values
            .iter()
            .map(|&v| half::bf16::from_f32(v).to_f32())
            .collect();
        // Read back through the host conversion, through burn's data path, and after an op
        // that makes a new tensor from the mapped one.
        let back = to_f32(stored.clone());
        assert_eq!(back.into_data().try_to_vec::<f32>().unwrap(), want);
        let via_burn = stored.clone().cast(FloatDType::F32);
        assert_eq!(via_burn.into_data().try_to_vec::<f32>().unwrap(), want);
        let reshaped = to_f32(stored.reshape([15, 7])) * 2.0;
        let doubled: Vec<f32> = want.iter().map(|v| v * 2.0).collect();
        assert_eq!(reshaped.into_data().try_to_vec::<f32>().unwrap(), doubled);
    }

    #[test]
    fn mapped_bf16_bytes_hold_the_rounded_values() {
        let src = [1.0f32, -2.5, 3.0e-3, 65504.0, 0.1];
        let bytes = crate::memory::bf16_mapped(&src).unwrap();
        assert_eq!(bytes.len(), 2 * src.len());
        for (i, &v) in src.iter().enumerate() {
            let bits = u16::from_le_bytes([bytes[2 * i], bytes[2 * i + 1]]);
            assert_eq!(bits, half::bf16::from_f32(v).to_bits(), "value {i}");
        }
        assert!(crate::memory::bf16_mapped(&[]).is_none());
    }

    #[test]
    fn names_round_trip() {
        for kind in BackendKind::ALL {
            assert_eq!(kind.name().parse::<BackendKind>(), Ok(kind));
        }
        assert_eq!(
            "metal3".parse::<BackendKind>(),
            Err(BackendError::Unknown("metal3".into()))
        );
    }

    #[test]
    fn cpu_backends_are_always_compiled() {
        assert!(BackendKind::Flex.device().is_ok());
        assert!(BackendKind::NdArray.device().is_ok());
        assert!(BackendKind::compiled().contains(&BackendKind::Flex));
    }

    #[test]
    fn missing_backend_names_its_feature() {
        for kind in BackendKind::ALL.into_iter().filter(|k| !k.is_compiled()) {
            let err = kind.device().unwrap_err();
            let feature = kind.feature().unwrap();
            assert!(
                err.to_string().contains(&format!("--features {feature}")),
                "{err}"
            );
        }
    }
}
