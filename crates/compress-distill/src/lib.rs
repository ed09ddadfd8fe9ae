//! # compress-distill
//!
//! Knowledge distillation and recovery (planned): logit-KL and hidden-state losses, a training
//! loop on burn autodiff, LoRA healing after compression, and Matryoshka (nested width and nested
//! bits) training.
//!
//! This crate holds no API yet. See `docs/STATUS.md`.
