//! # compress-eval
//!
//! Evaluation of compressed models. Implemented so far:
//!
//! - [`perplexity`] on a token stream with both common protocols (full windows as in
//!   GPTQ/SparseGPT/Wanda, and llama.cpp's second-half scoring), 95% interval, bits per byte;
//! - [`kld`]: KL divergence of a compressed model to its base in one pass over both, with the
//!   statistics of llama.cpp's `perplexity --kl-divergence` (same-top-token rate, Δp);
//! - [`tasks`]: zero-shot multiple choice (acc, acc_norm per byte) and LAMBADA, on the
//!   `../shared/data/tasks` files, with the choices of a question run as one padded batch;
//! - [`compare`]: paired tests of two models on the same items (McNemar's exact test, paired
//!   bootstrap);
//! - [`stats`]: the intervals and percentiles they share;
//! - [`weights`]: weight-distribution statistics (excess kurtosis, outlier fraction, histogram);
//! - [`progress`]: a throttled progress line with ETA for long runs;
//! - [`plot`]: SVG/PNG line and scatter charts (elasticity curves, quality vs bits/weight with
//!   the Pareto frontier).
//!
//! Planned (issue #3): aggregation over seeds, speed and memory, JSON/Markdown reports.
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

pub mod compare;
pub mod efficiency;
pub mod kld;
pub mod perplexity;
pub mod plot;
pub mod progress;
pub mod report;
pub mod seeds;
pub mod stats;
pub mod tasks;
pub mod weights;

use burn::tensor::{Bool, Int, Tensor, TensorData};
use compress_model::{LlamaModel, LlmTokenizer};

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

impl tasks::BatchScorer for LlamaModel {
    fn vocab(&self) -> usize {
        self.config().vocab_size
    }

    /// One right-padded batch; the padding mask keeps each row's logits those of the row alone.
    fn batch_logits(&self, seqs: &[Vec<u32>]) -> Result<Vec<Vec<f32>>, EvalError> {
        let (b, t, v) = (
            seqs.len(),
            seqs.iter().map(Vec::len).max().unwrap_or(0),
            self.config().vocab_size,
        );
        if b == 0 || t == 0 {
            return Err(EvalError::InvalidInput("empty batch".into()));
        }
        let ids = right_padded(seqs, t);
        let real: Vec<bool> = seqs
            .iter()
            .flat_map(|s| (0..t).map(move |j| j < s.len()))
            .collect();
        let device = self.device();
        let x = Tensor::<2, Int>::from_data(TensorData::new(ids, [b, t]), &device);
        let mask = Tensor::<2, Bool>::from_data(TensorData::new(real, [b, t]), &device);
        per_sequence(self.forward(x, Some(mask))?, seqs, t, v)
    }

    /// The prefix once through the KV cache (no output head), then the suffixes as one
    /// right-padded batch over the repeated cache. No padding mask is needed: the suffixes all
    /// start at the same position, and causality keeps a real token from seeing the padding
    /// after it.
    fn prefix_logits(
        &self,
        prefix: &[u32],
        suffixes: &[Vec<u32>],
    ) -> Result<Vec<Vec<f32>>, EvalError> {
        let (b, t, v) = (
            suffixes.len(),
            suffixes.iter().map(Vec::len).max().unwrap_or(0),
            self.config().vocab_size,
        );
        if b == 0 || t == 0 || suffixes.iter().any(Vec::is_empty) {
            return Err(EvalError::InvalidInput("empty suffix batch".into()));
        }
        if prefix.is_empty() {
            return self.batch_logits(suffixes);
        }
        let device = self.device();
        let ids = |data: Vec<i64>, rows: usize, len: usize| {
            Tensor::<2, Int>::from_data(TensorData::new(data, [rows, len]), &device)
        };
        let mut cache = self.new_cache();
        self.prefill(
            ids(prefix.iter().map(|&x| x as i64).collect(), 1, prefix.len()),
            &mut cache,
        )?;
        let mut cache = cache.repeat_batch(b)?;
        let logits = self.forward_cached(ids(right_padded(suffixes, t), b, t), &mut cache)?;
        per_sequence(logits, suffixes, t, v)
    }
}

/// The token ids of `seqs` as one `[len, t]` batch, each row right-padded with id 0.
fn right_padded(seqs: &[Vec<u32>], t: usize) -> Vec<i64> {
    seqs.iter()
        .flat_map(|s| {
            s.iter()
                .map(|&x| i64::from(x))
                .chain(std::iter::repeat_n(0, t - s.len()))
        })
        .collect()
}

/// Each sequence's rows `[len_i, v]` of batch logits `[len, t, v]` (padding rows dropped).
fn per_sequence(
    logits: Tensor<3>,
    seqs: &[Vec<u32>],
    t: usize,
    v: usize,
) -> Result<Vec<Vec<f32>>, EvalError> {
    let all = logits
        .into_data()
        .try_to_vec::<f32>()
        .map_err(|e| EvalError::InvalidInput(format!("reading logits: {e:?}")))?;
    Ok(seqs
        .iter()
        .enumerate()
        .map(|(i, s)| all[i * t * v..(i * t + s.len()) * v].to_vec())
        .collect())
}

impl tasks::Tokenize for LlmTokenizer {
    fn tokens(&self, text: &str) -> Result<Vec<u32>, EvalError> {
        self.encode(text, true)
            .map_err(|e| EvalError::InvalidInput(format!("tokenizing: {e}")))
    }
}
