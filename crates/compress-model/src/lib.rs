//! # compress-model
//!
//! Llama-family language models on burn, and everything needed to get real weights into them:
//!
//! - [`llama`]: the decoder (RMSNorm, RoPE in both pairings, grouped-query attention, SwiGLU,
//!   tied or separate head, optional q/k/v bias), full-sequence forward with a padding mask, and a
//!   KV cache. Every projection is a replaceable
//!   [`CompressedLinear`](compress_core::linear::CompressedLinear).
//! - [`gguf`]: a validating GGUF reader over mmap with dequantization of F32/F16/BF16, Q4_0, Q4_1,
//!   Q5_0, Q5_1, Q8_0 and the k-quants Q2_K–Q6_K.
//! - [`load()`]: GGUF files, containers and Hugging Face checkpoints (`config.json` +
//!   safetensors) → model.
//! - [`tokenizer`]: tokenizers that encode exactly like llama.cpp, built from GGUF metadata
//!   (SentencePiece-style and GPT-2 byte-level BPE vocabularies) or from `tokenizer.json`.
//! - [`generate`]: greedy and seeded top-p sampling.
//! - [`container`] and [`save`]: the lossless `compress` container (safetensors + a versioned
//!   JSON header; every compressed layer round-trips bit for bit) and GGUF export for
//!   llama.cpp, both written atomically.
//!
//! ```no_run
//! use compress_core::backend::BackendKind;
//! use compress_model::generate::{generate, GenerateOptions, Sampling};
//!
//! # fn main() -> Result<(), compress_model::ModelError> {
//! let device = BackendKind::default().device().unwrap();
//! let m = compress_model::load("../shared/models/stories260K.gguf", &device)?;
//! let prompt = m.tokenizer.encode("Once upon a time", true)?;
//! let options = GenerateOptions { max_new_tokens: 20, sampling: Sampling::Greedy, stop_token: m.tokenizer.eos_id() };
//! let out = generate(&m.model, &prompt, &options, |_| {})?;
//! println!("{}", m.tokenizer.decode(&out.tokens)?);
//! # Ok(()) }
//! ```

#![warn(missing_docs)]

pub mod config;
pub mod container;
pub mod error;
pub mod family;
pub mod fuzz;
pub mod generate;
pub mod gguf;
pub mod llama;
pub mod load;
mod pages;
pub mod save;
pub mod tokenizer;
pub mod weights;

pub use config::{Architecture, LlamaConfig, RopeLayout};
pub use error::ModelError;
pub use llama::LlamaModel;
pub use load::{load, load_with, LoadOptions, LoadedModel};
pub use tokenizer::LlmTokenizer;

/// The README's examples, compiled as doctests.
#[doc = include_str!("../README.md")]
#[cfg(doctest)]
pub struct ReadmeDoctests;
