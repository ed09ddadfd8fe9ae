//! # compress-quant
//!
//! Weight quantization for `compress` models. Every quantizer implements
//! [`Compressor`](compress_core::compressor::Compressor) and writes the packed layout of
//! [`compress_core::packed`] (2–8-bit codes, f16 scales, optional f16 zero points), the layout
//! compress-kernels runs.
//!
//! - [`rtn`]: round-to-nearest, per-tensor / per-channel / per-group, symmetric or asymmetric,
//!   with optional clipping, scale search and activation-weighted error.
//! - [`gptq`]: GPTQ (Frantar et al. 2022) with lazy batches, groups, activation order and damping,
//!   on the shared inverse-Hessian machinery of [`hessian`] (dense linear algebra by faer).
//! - [`awq`]: AWQ (Lin et al. 2023), per-channel scales from activation magnitudes searched per
//!   stage and folded into the previous norm or projection, then RTN.
//! - [`hqq`]: HQQ (Badri & Shaji 2023), calibration-free half-quadratic fitting of zero points.
//! - [`mixed`]: automatic mixed precision — per-layer bit widths from measured sensitivity that
//!   meet an average bits-per-weight budget, written out as a recipe.
//! - [`nested`]: nested bit widths — the 4- and 2-bit models inside one 8-bit code (Matryoshka
//!   Quantization).
//! - [`recipe`]: the quantizers' recipe configurations (`method = "rtn" | "gptq" | "hqq"`).
//! - [`kquant`]: fitting grids to llama.cpp's k-quant super-blocks (`Q2_K` … `Q6_K`), so GGUF
//!   export of the codes is exact.
//! - [`grid`]: how one group's scale and zero point are fitted and weights rounded — shared by all.
//!
//! ```
//! use compress_core::compressor::{Compressor, LayerStats, LayerView};
//! use compress_core::packed::{QuantScheme, Symmetry};
//! use compress_quant::rtn::Rtn;
//!
//! // A 2×8 weight, 4-bit symmetric with groups of 4.
//! let w: Vec<f32> = (0..16).map(|i| (i as f32 - 7.5) / 10.0).collect();
//! let rtn = Rtn::new(QuantScheme::new(4, Some(4), Symmetry::Symmetric).unwrap());
//! let view = LayerView::new("demo", &w, 2, 8);
//! let q = rtn.compress(view, &LayerStats::default()).unwrap();
//! assert_eq!(q.bits_per_weight(), 8.0); // 4 bits + a 16-bit scale per 4 weights
//! let err = compress_core::compressor::weight_rel_error(&w, &q.to_dense());
//! assert!(err < 0.1);
//! ```

#![warn(missing_docs)]

pub mod awq;
pub mod gptq;
pub mod grid;
pub mod hessian;
pub mod hqq;
pub mod kquant;
pub mod mixed;
pub mod nested;
pub mod obs;
pub mod recipe;
pub mod rtn;

/// The README's examples, compiled and run as doctests.
#[doc = include_str!("../README.md")]
#[cfg(doctest)]
pub struct ReadmeDoctests;
