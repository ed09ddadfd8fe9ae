//! # compress-core
//!
//! The foundations every other `compress` crate builds on:
//!
//! - [`backend`]: choosing a burn device (flex, ndarray, wgpu, cuda, libtorch) by name at run time,
//!   with a clear error when a backend was not compiled in.
//! - [`linear`]: [`CompressedLinear`](linear::CompressedLinear), the linear layer every model in
//!   this project is built from. A model never assumes its weights are dense: compressors replace
//!   a layer's storage (dense, low-rank, and — as later crates add them — packed low-bit) and the
//!   model keeps running on any backend.
//! - [`packed_matmul`]: the one operation quantized layers call, a burn backend extension with
//!   an implementation per backend (SIMD kernels on the CPU, CubeCL kernels on GPUs, a dense
//!   matmul on libtorch).
//! - [`packed`]: the packed 2–8-bit weight layout (codes, f16 scales and zeros) shared by the
//!   quantizers and the kernels.
//! - [`kquant`]: llama.cpp's k-quant super-block formats (two-level scales) as packed schemes.
//! - [`sparsity`]: sparsity masks (one bit per weight) and patterns (unstructured, N:M) shared by
//!   the pruners, the quantizers that must keep pruned weights at 0, and the packed layout.
//! - [`structured`]: cutting a linear's rows or columns (removing FFN neurons, attention heads).
//! - [`compressor`]: the [`Compressor`](compressor::Compressor) trait — one algorithm, one linear
//!   layer, the calibration statistics it declares — and the layer-level error measures.
//! - [`calibration`]: seeded sampling of calibration windows from a token stream.
//! - [`layer_id`]: [`LinearId`](layer_id::LinearId), the typed identity of a linear layer (block,
//!   expert, kind) that filters, reports, containers and exporters share; printed as its path.
//! - [`pipeline`]: the block-by-block, true-sequential calibration pipeline that runs compressors
//!   over any model implementing [`BlockwiseModel`](pipeline::BlockwiseModel) (walking blocks,
//!   linears by id, scale folds: three small traits).
//! - [`scaling`]: folding per-channel input scales into a stage (AWQ-style equivalent transforms).
//! - [`sensitivity`]: per-layer sensitivity (KLD with one layer compressed) to any method, and
//!   greedy allocation of per-layer settings under a model-wide budget.
//! - [`recipe`]: versioned TOML recipes — calibration settings and steps with layer filters.
//!
//! ```
//! use burn::tensor::{Tensor, TensorData};
//! use compress_core::backend::BackendKind;
//! use compress_core::linear::{CompressedLinear, DenseLinear};
//!
//! let device = BackendKind::default().device().unwrap();
//! // A 2-in, 3-out layer stored as [out, in], the PyTorch/GGUF convention.
//! let w = Tensor::<2>::from_data(TensorData::new(vec![1.0f32, 0.0, 0.0, 1.0, 1.0, 1.0], [3, 2]), &device);
//! let layer = CompressedLinear::Dense(DenseLinear::new(w, None));
//! let x = Tensor::<2>::from_data(TensorData::new(vec![2.0f32, 3.0], [1, 2]), &device);
//! let y: Vec<f32> = layer.forward(x).into_data().try_to_vec::<f32>().unwrap();
//! assert_eq!(y, vec![2.0, 3.0, 5.0]);
//! ```

#![warn(missing_docs)]

pub mod backend;
pub mod calibration;
pub mod compressor;
mod factored;
pub mod input;
mod kernel_view;
pub mod kquant;
pub mod layer_id;
pub mod linear;
pub mod memory;
pub mod packed;
pub mod packed_matmul;
pub mod pipeline;
pub mod recipe;
pub mod scaling;
pub mod sensitivity;
pub mod sparsity;
pub mod structured;

/// The fused low-bit kernels quantized layers run on the CPU backends (re-exported so crates
/// that set [`linear::QuantizedLinear::kernel`] need no extra dependency).
pub use compress_kernels as kernels;

/// The README's examples, compiled and run as doctests.
#[doc = include_str!("../README.md")]
#[cfg(doctest)]
pub struct ReadmeDoctests;
