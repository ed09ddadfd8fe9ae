//! # compress-distill
//!
//! Knowledge distillation and Matryoshka (nested) models.
//!
//! - [`loss`]: logit KL at a temperature, next-token cross-entropy, hidden-state MSE.
//! - [`train`]: the training loop on burn autodiff — AdamW, warm-up + cosine schedule, global
//!   gradient-norm clipping, seeded data order, checkpoints that resume exactly
//!   ([`checkpoint`]), MatFormer-style nested-width training, and LoRA healing
//!   ([`train::LoraConfig`]: adapters on the block projections, merged, pruning masks kept).
//! - [`heal`]: a recipe's `[heal]` stage (LoRA healing after the compression steps).
//! - [`data`]: training text from a file or sampled from the teacher (data-free).
//! - [`matryoshka`]: post-hoc importance sorting of neurons and heads, nested 8/4/2-bit codes,
//!   and [`matryoshka::slice()`], which cuts a real smaller model out of a nested one.
//!
//! ```no_run
//! use compress_core::backend::BackendKind;
//! use compress_distill::matryoshka::{slice, sort_by_importance, SliceSpec, Width};
//! use compress_prune::structured::Importance;
//!
//! # fn main() -> Result<(), Box<dyn std::error::Error>> {
//! let device = BackendKind::default().device().unwrap();
//! let mut m = compress_model::load("../shared/models/stories260K.gguf", &device)?;
//! let text = std::fs::read_to_string("../shared/data/tinystories/val.txt")?;
//! let (calib_text, _eval_text) = compress_core::calibration::split_halves(&text);
//! let tokens = m.tokenizer.encode(calib_text, true)?;
//! let calib = compress_core::calibration::sample_windows(&tokens, 16, 128, 0)?;
//! sort_by_importance(&mut m.model, &calib, Importance::Activation, Importance::Activation, |_, _| {})?;
//! let spec = SliceSpec { width: Width::uniform(0.5), bits: None };
//! let (half, report) = slice(&m.model, &spec)?;
//! println!("{} → {} parameters", report.parameters.0, report.parameters.1);
//! # let _ = half; Ok(()) }
//! ```

#![warn(missing_docs)]

pub mod checkpoint;
pub mod data;
pub mod error;
pub mod heal;
pub mod loss;
pub mod matryoshka;
pub mod train;

pub use error::DistillError;

/// The README's example, compiled and run as a doctest.
#[doc = include_str!("../README.md")]
#[cfg(doctest)]
pub struct ReadmeDoctests;
