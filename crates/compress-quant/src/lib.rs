//! # compress-quant
//!
//! Weight quantization for `compress` models (planned, tracked in the project's issues): round-to-nearest
//! with optional scale search, GPTQ (Frantar et al. 2022), AWQ (Lin et al. 2023), HQQ (Badri &
//! Shaji 2023) and SmoothQuant, packed 8/4/3/2-bit storage with f16 scales, and mixed precision.
//!
//! This crate holds no API yet: it is created with the workspace so that the layout of
//! `../shared/DESIGN.md` is in place. See `docs/STATUS.md` for what exists today.
