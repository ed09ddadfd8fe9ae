//! # compress-lowrank
//!
//! Low-rank factorization of linear layers (planned): truncated SVD, activation-aware SVD (ASVD,
//! SVD-LLM), rank allocation under a parameter budget, and low-rank correction of quantization
//! error. Factorized layers are stored as
//! [`LowRankLinear`](../compress_core/linear/struct.LowRankLinear.html) in compress-core.
//!
//! This crate holds no API yet. See `docs/STATUS.md`.
