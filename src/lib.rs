//! # compress
//!
//! Make large language models smaller and faster — quantization, pruning, low-rank factorization,
//! distillation, Matryoshka slicing — and measure what each method costs in quality and buys in
//! speed. Built on [burn](https://burn.dev) 0.22: a tensor's device picks the backend (flex or
//! ndarray on the CPU, wgpu, CUDA, libtorch), and every pipeline runs on all of them.
//!
//! This facade re-exports the workspace crates:
//!
//! - [`core`] — backend selection and the replaceable linear layer.
//! - [`model`] — llama-family models, GGUF / safetensors loading, tokenizers, generation.
//! - [`eval`] — perplexity (both protocols), KL divergence to a base model, zero-shot tasks.
//! - [`quant`] — RTN, GPTQ, AWQ and HQQ weight quantization into the packed low-bit layout.
//! - [`prune`] — magnitude, Wanda and SparseGPT pruning (unstructured, N:M; joint with
//!   quantization).
//! - [`lowrank`] — truncated SVD, ASVD, SVD-LLM and low-rank correction of quantization error.
//! - [`distill`] — distillation (logit KL, hidden MSE, AdamW training with exact resume),
//!   Matryoshka sorting, nested-width training, nested bits and slicing.
//! - [`kernels`] — fused low-bit matmul (reference, portable, AVX2, AVX-512, VNNI tiers chosen at
//!   run time) that quantized layers run on the CPU backends.
//! - [`recipe`] — TOML recipes over all of the above.
//!
//! ```no_run
//! use compress::core::backend::BackendKind;
//! use compress::model::generate::{generate, GenerateOptions, Sampling};
//!
//! # fn main() -> Result<(), Box<dyn std::error::Error>> {
//! let device = BackendKind::default().device()?;
//! let m = compress::model::load("../shared/models/stories260K.gguf", &device)?;
//! let prompt = m.tokenizer.encode("Once upon a time", true)?;
//! let options = GenerateOptions { max_new_tokens: 32, sampling: Sampling::Greedy, stop_token: m.tokenizer.eos_id() };
//! let out = generate(&m.model, &prompt, &options, |_| {})?;
//! println!("{}", m.tokenizer.decode(&out.tokens)?);
//! # Ok(()) }
//! ```

#![warn(missing_docs)]

pub use compress_core as core;
pub use compress_distill as distill;
pub use compress_eval as eval;
pub use compress_kernels as kernels;
pub use compress_lowrank as lowrank;
pub use compress_model as model;
pub use compress_prune as prune;
pub use compress_quant as quant;

pub mod fuzz;
pub mod recipe;

/// The README's examples, compiled as doctests.
#[doc = include_str!("../README.md")]
#[cfg(doctest)]
pub struct ReadmeDoctests;
