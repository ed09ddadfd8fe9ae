//! # compress-lowrank
//!
//! Low-rank factorization of linear layers: a weight `W: [out, in]` becomes `U V` with
//! `U: [out, r]`, `V: [r, in]` — stored as a real two-matrix layer
//! ([`compress_core::linear::LowRankLinear`]), `r·(out + in)` values instead of `out·in`.
//!
//! - [`factor`]: the shared maths — truncated SVD of `W T` for an input transform `T`, with
//!   `T = I` (plain SVD), `T = diag(rms(x)^α)` (ASVD, Yuan et al. 2023) or the Cholesky factor
//!   of `XᵀX` (SVD-LLM, Wang et al. 2024), in f64 with faer;
//! - [`rank`]: the rank of each layer from a fixed rank, a kept-parameter ratio or a spectral
//!   energy threshold;
//! - [`svd`]: the [`Compressor`](compress_core::compressor::Compressor) (`LowRank`) the
//!   calibration pipeline runs; [`recipe`]: its recipe steps (`svd`, `asvd`, `svd-llm`);
//! - [`allocate`]: per-layer ranks under one model-wide parameter budget, from each layer's
//!   measured effect on the model's output distribution (KL divergence);
//! - [`spectrum`]: singular-value decay, effective and stable rank, energy at 10/25/50% rank;
//! - [`correction`]: a low-rank correction of quantization error (`W ≈ Q + U V`), a recipe
//!   step after any quantizer.
//!
//! ```
//! use compress_lowrank::factor::{factorize, InputTransform};
//! use compress_lowrank::rank::RankRule;
//! // A rank-1 matrix is recovered exactly at rank 1.
//! let w = [1.0f32, 2.0, 3.0, 2.0, 4.0, 6.0];
//! let f = factorize(&w, 2, 3, &InputTransform::Identity, RankRule::Fixed(1)).unwrap();
//! assert_eq!(f.rank, 1);
//! assert!(f.tail_energy() < 1e-12);
//! ```

#![warn(missing_docs)]

pub mod allocate;
pub mod correction;
pub mod factor;
pub mod rank;
pub mod recipe;
pub mod spectrum;
pub mod svd;

/// The README's examples, compiled and run as doctests.
#[doc = include_str!("../README.md")]
#[cfg(doctest)]
pub struct ReadmeDoctests;
