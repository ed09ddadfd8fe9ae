//! # compress-prune
//!
//! Pruning for `compress` models (planned): magnitude, Wanda (Sun et al. 2023) and SparseGPT
//! (Frantar & Alistarh 2023) masks, unstructured and N:M; structured removal of heads, FFN
//! neurons and blocks; joint prune + quantize in one OBS sweep.
//!
//! This crate holds no API yet. See `docs/STATUS.md`.
