//! # compress-kernels
//!
//! Fused low-bit matrix multiplication (planned): scalar reference, portable and AVX2/AVX-512
//! (VNNI) CPU kernels chosen at run time, a CubeCL kernel for GPUs, wired into burn through its
//! backend-extension mechanism.
//!
//! This crate holds no API yet. See `docs/STATUS.md`.
