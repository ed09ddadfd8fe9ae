//! # compress-kernels
//!
//! Fused low-bit matrix multiplication over the packed layout compress-quant writes:
//! `Y = X · Wᵀ` with f32 activations `X` (`M × K`) and a packed weight `W` (`N × K`, 2–8-bit codes,
//! f16 scales per group, optional f16 zero points), into f32 `Y` (`M × N`). No dequantized copy of
//! `W` is ever materialised: GEMV (decode) widens codes in registers; GEMM (prefill) dequantizes
//! one cache-sized tile of rows at a time and hands it to faer's GEMM.
//!
//! Tiers, chosen at run time by CPU feature detection ([`Tier::select`]), each tested against
//! the reference:
//!
//! | tier | formats | activations | error vs exact product |
//! |---|---|---|---|
//! | [`Tier::Reference`] | all | f32, f64 sums | the yardstick |
//! | [`Tier::Portable`] | all | f32 | f32 rounding |
//! | [`Tier::Avx2`] | 4, 8-bit | f32 | f32 rounding |
//! | [`Tier::Avx512`] | 4, 8-bit | f32 | f32 rounding |
//! | [`Tier::Avx512Vnni`] | 4, 8-bit | int8 per block of 32 | + activation rounding |
//!
//! The crate does not depend on burn: compress-core wires it into its quantized linear layer.
//! With the `cube` feature, [`cube`] holds the same product as CubeCL kernels for GPUs, over the
//! device copy of a weight in [`device_layout`].
//!
//! ```
//! use compress_kernels::{matmul, QuantMatrix, ScaleLayout, Tier};
//! use half::f16;
//!
//! // 64 × 128 asymmetric 4-bit weight, groups of 32: codes, scales and zeros as compress-quant
//! // packs them (two codes per byte, even column in the low nibble).
//! let (n, k) = (64, 128);
//! let codes: Vec<u8> = (0..n * k / 2).map(|i| (i * 37 % 256) as u8).collect();
//! let scales = vec![f16::from_f32(0.01); n * k / 32];
//! let zeros = vec![f16::from_f32(7.5); n * k / 32];
//! let w = QuantMatrix::new(4, [n, k], ScaleLayout::PerGroup { group_len: 32 }, &codes, &scales, Some(&zeros))?;
//!
//! let x: Vec<f32> = (0..k).map(|i| (i as f32).sin()).collect();
//! let mut fast = vec![0.0; n];
//! let tier = matmul(&x, 1, &w, &mut fast)?;
//! let mut exact = vec![0.0; n];
//! compress_kernels::matmul_with(Tier::Reference, &x, 1, &w, &mut exact)?;
//! for (a, b) in fast.iter().zip(&exact) {
//!     assert!((a - b).abs() < 1e-4, "{tier}: {a} vs {b}");
//! }
//! # Ok::<(), compress_kernels::KernelError>(())
//! ```

#![warn(missing_docs)]

pub mod activation;
pub mod attention;
pub mod bandwidth;
#[cfg(feature = "cube")]
pub mod cube;
pub mod dense;
pub mod device_layout;
pub mod half_input;
pub mod matmul;
pub mod matrix;
pub mod norm;
pub mod portable;
pub mod prepare;
pub mod reference;
pub mod rope;
pub mod sparse24;
pub mod tier;
pub mod vexp;
#[cfg(target_arch = "x86_64")]
pub mod x86;

pub use half_input::{matmul_input, matmul_with_input, Input};
pub use matmul::{matmul, matmul_with};
pub use matrix::{KernelError, QuantMatrix, ScaleLayout};
pub use tier::{Activations, Tier};

/// The README's example, compiled and run as a doctest.
#[doc = include_str!("../README.md")]
#[cfg(doctest)]
pub struct ReadmeDoctests;
