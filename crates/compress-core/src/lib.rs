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
//!
//! The `Compressor` trait, calibration statistics and recipes arrive with the quantization
//! pipeline; this crate holds no API for them until they exist.
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
pub mod linear;
