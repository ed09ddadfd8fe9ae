//! # compress-eval
//!
//! Evaluation of compressed models. Implemented so far:
//!
//! - [`perplexity`] on a token stream with both common protocols (full windows as in
//!   GPTQ/SparseGPT/Wanda, and llama.cpp's second-half scoring), 95% interval, bits per byte;
//! - [`kld`]: KL divergence of a compressed model to its base in one pass over both, with the
//!   statistics of llama.cpp's `perplexity --kl-divergence` (same-top-token rate, Δp);
//! - [`stats`]: the intervals and percentiles they share.
//!
//! Planned (issue #3): zero-shot multiple-choice tasks, paired significance tests, speed and
//! memory, JSON/Markdown reports and plots.
//!
//! ```no_run
//! # fn main() -> Result<(), Box<dyn std::error::Error>> {
//! use compress_core::backend::BackendKind;
//! use compress_eval::perplexity::{perplexity, PerplexityConfig, Scoring};
//!
//! let m = compress_model::load("stories260K.gguf", &BackendKind::default().device()?)?;
//! let text = std::fs::read_to_string("val.txt")?;
//! let tokens = m.tokenizer.encode(&text, true)?;
//! let config = PerplexityConfig { context: 256, scoring: Scoring::AllTokens, max_windows: None, bos: m.tokenizer.bos_id() };
//! let report = perplexity(&m.model, &tokens, text.len(), &config, |done, total| eprint!("\r{done}/{total}"))?;
//! println!("PPL {:.3} ({:.3}–{:.3})", report.ppl, report.ppl_ci95.0, report.ppl_ci95.1);
//! # Ok(()) }
//! ```
#![warn(missing_docs)]

pub mod kld;
pub mod perplexity;
pub mod stats;

use burn::tensor::{Int, Tensor, TensorData};
use compress_model::LlamaModel;

/// Errors from an evaluation.
#[derive(Debug, thiserror::Error)]
pub enum EvalError {
    /// The model failed.
    #[error(transparent)]
    Model(#[from] compress_model::ModelError),
    /// The input cannot be evaluated (too short, wrong shape).
    #[error("invalid input: {0}")]
    InvalidInput(String),
    /// A NaN or infinity appeared; the message says where.
    #[error("non-finite value: {0}")]
    NonFinite(String),
}

impl perplexity::LogitSource for LlamaModel {
    fn vocab_size(&self) -> usize {
        self.config().vocab_size
    }

    fn logits(&self, ids: &[u32]) -> Result<Vec<f32>, EvalError> {
        let data: Vec<i64> = ids.iter().map(|&t| t as i64).collect();
        let x = Tensor::<2, Int>::from_data(TensorData::new(data, [1, ids.len()]), &self.device());
        self.forward(x, None)?
            .into_data()
            .try_to_vec::<f32>()
            .map_err(|e| EvalError::InvalidInput(format!("reading logits: {e:?}")))
    }
}
