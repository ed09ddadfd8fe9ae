//! Perplexity of a language model on a token stream.
//!
//! The stream is cut into non-overlapping windows of `context` tokens; within a window the
//! model sees tokens `0..context` and predicts each next token. With `n` scored predictions
//! and `ℓ_i = −ln p(x_i | x_<i)`, the mean negative log-likelihood is `NLL = Σℓ_i / n` and the
//! perplexity `PPL = exp(NLL)`. Two scoring protocols (see `../shared/data/README.md`):
//!
//! - [`Scoring::AllTokens`] — the GPTQ / SparseGPT / Wanda protocol: every prediction in the
//!   window counts (`context − 1` per window).
//! - [`Scoring::SecondHalf`] — llama.cpp's `perplexity` tool: the first token of each window is
//!   replaced by BOS, and only predictions made with at least `context / 2` tokens of context
//!   count (positions `context/2 .. context−1`, i.e. `context/2 − 1` predictions per window).
//!
//! The 95% interval treats per-token NLLs as independent (as llama.cpp's report does):
//! `NLL ± 1.96·s/√n` with `s` the sample standard deviation, mapped through `exp` for PPL
//! ([`crate::stats::mean_ci`]). Log-softmax is computed with an f64 accumulator.

use rayon::prelude::*;
use serde::{Deserialize, Serialize};

use crate::stats::{log_sum_exp, mean_ci, MeanCi};
use crate::EvalError;

/// Which predictions of a window are scored.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum Scoring {
    /// Every prediction of every window (GPTQ-style "WikiText-2 PPL").
    AllTokens,
    /// llama.cpp's protocol: BOS first, score the second half of each window.
    SecondHalf,
}

/// Anything that turns one sequence of token ids into next-token logits.
pub trait LogitSource {
    /// Vocabulary size (length of one logit row).
    fn vocab_size(&self) -> usize;
    /// Logits `[ids.len(), vocab]`, row-major: row `t` predicts token `t + 1`.
    fn logits(&self, ids: &[u32]) -> Result<Vec<f32>, EvalError>;
}

/// How to evaluate.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct PerplexityConfig {
    /// Window length in tokens (state it with every number: 2048 for SmolLM2 in the papers).
    pub context: usize,
    /// Scoring protocol.
    pub scoring: Scoring,
    /// Evaluate at most this many windows (quick runs); `None` for all.
    pub max_windows: Option<usize>,
    /// BOS id, used by [`Scoring::SecondHalf`] for the first token of each window.
    pub bos: Option<u32>,
}

/// The result of a perplexity evaluation.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PerplexityReport {
    /// Scoring protocol used.
    pub scoring: Scoring,
    /// Window length.
    pub context: usize,
    /// Windows evaluated.
    pub windows: usize,
    /// Predictions scored.
    pub tokens_scored: usize,
    /// Mean negative log-likelihood per scored token, in nats.
    pub mean_nll: f64,
    /// `exp(mean_nll)`.
    pub ppl: f64,
    /// 95% interval of the perplexity, `(low, high)`.
    pub ppl_ci95: (f64, f64),
    /// Bits per byte of text: `mean_nll / ln 2 × tokens / bytes`, using the whole text's average
    /// bytes per token (present when the caller gave the byte count).
    pub bits_per_byte: Option<f64>,
}

/// Negative log-likelihood `−ln softmax(row)[target]`, accumulated in f64.
pub fn nll(row: &[f32], target: u32) -> f64 {
    log_sum_exp(row) - row[target as usize] as f64
}

/// The positions `t` of a window whose prediction (of token `t + 1`) is scored.
pub fn scored_positions(context: usize, scoring: Scoring) -> std::ops::Range<usize> {
    match scoring {
        Scoring::AllTokens => 0..context - 1,
        Scoring::SecondHalf => context / 2..context - 1,
    }
}

/// Per-token NLLs of every scored prediction, window by window, calling `progress(done, total)`
/// after each window.
pub fn token_nlls(
    model: &dyn LogitSource,
    tokens: &[u32],
    config: &PerplexityConfig,
    mut progress: impl FnMut(usize, usize),
) -> Result<Vec<Vec<f64>>, EvalError> {
    let windows = window_inputs(tokens, config)?;
    let mut out = Vec::with_capacity(windows.len());
    for (w, ids) in windows.iter().enumerate() {
        let logits = window_logits(model, ids)?;
        let vocab = model.vocab_size();
        // Positions in parallel: a 2048-token window of a 49k vocabulary is 10⁸ exponentials.
        let nlls: Vec<f64> = scored_positions(ids.len(), config.scoring)
            .into_par_iter()
            .map(|t| nll(&logits[t * vocab..(t + 1) * vocab], ids[t + 1]))
            .collect();
        if let Some(i) = nlls.iter().position(|v| !v.is_finite()) {
            let t = scored_positions(ids.len(), config.scoring).start + i;
            return Err(EvalError::NonFinite(format!(
                "NLL at window {w}, position {t}"
            )));
        }
        out.push(nlls);
        progress(w + 1, windows.len());
    }
    Ok(out)
}

/// The token ids of each evaluated window: non-overlapping slices of `config.context` tokens
/// (at most `config.max_windows`), with BOS as first token under [`Scoring::SecondHalf`].
pub fn window_inputs(
    tokens: &[u32],
    config: &PerplexityConfig,
) -> Result<Vec<Vec<u32>>, EvalError> {
    let c = config.context;
    if c < 4 {
        return Err(EvalError::InvalidInput(format!(
            "context {c} is too short (need ≥ 4 tokens)"
        )));
    }
    let available = tokens.len() / c;
    if available == 0 {
        return Err(EvalError::InvalidInput(format!(
            "the text has {} tokens, fewer than one window of {c}",
            tokens.len()
        )));
    }
    let windows = config.max_windows.map_or(available, |m| m.min(available));
    Ok((0..windows)
        .map(|w| {
            let mut ids = tokens[w * c..(w + 1) * c].to_vec();
            if let (Scoring::SecondHalf, Some(bos)) = (config.scoring, config.bos) {
                ids[0] = bos;
            }
            ids
        })
        .collect())
}

/// The model's logits for one window, checked to be `[ids.len(), vocab]`.
pub(crate) fn window_logits(model: &dyn LogitSource, ids: &[u32]) -> Result<Vec<f32>, EvalError> {
    let logits = model.logits(ids)?;
    let (c, vocab) = (ids.len(), model.vocab_size());
    if logits.len() != c * vocab {
        return Err(EvalError::InvalidInput(format!(
            "the model returned {} logits for {c} tokens × {vocab} vocabulary",
            logits.len()
        )));
    }
    Ok(logits)
}

/// Summarizes per-token NLLs into a report; `bytes_per_token` (text bytes / tokens) enables
/// bits per byte.
pub fn summarize(
    nlls: &[Vec<f64>],
    config: &PerplexityConfig,
    bytes_per_token: Option<f64>,
) -> PerplexityReport {
    let all: Vec<f64> = nlls.iter().flatten().copied().collect();
    let MeanCi { mean, lo, hi, .. } = mean_ci(&all);
    PerplexityReport {
        scoring: config.scoring,
        context: config.context,
        windows: nlls.len(),
        tokens_scored: all.len(),
        mean_nll: mean,
        ppl: mean.exp(),
        ppl_ci95: (lo.exp(), hi.exp()),
        bits_per_byte: bytes_per_token.map(|b| mean / std::f64::consts::LN_2 / b),
    }
}

/// Perplexity of `tokens`, the tokenized text, which was `text_bytes` bytes long (0 leaves
/// bits per byte out); `progress(done, total)` is called after each window.
pub fn perplexity(
    model: &dyn LogitSource,
    tokens: &[u32],
    text_bytes: usize,
    config: &PerplexityConfig,
    progress: impl FnMut(usize, usize),
) -> Result<PerplexityReport, EvalError> {
    let nlls = token_nlls(model, tokens, config, progress)?;
    let bytes_per_token = (text_bytes > 0).then(|| text_bytes as f64 / tokens.len() as f64);
    Ok(summarize(&nlls, config, bytes_per_token))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Equal logits everywhere: every prediction has probability 1/V.
    struct Uniform(usize);

    impl LogitSource for Uniform {
        fn vocab_size(&self) -> usize {
            self.0
        }
        fn logits(&self, ids: &[u32]) -> Result<Vec<f32>, EvalError> {
            Ok(vec![0.25; ids.len() * self.0])
        }
    }

    fn config(context: usize, scoring: Scoring) -> PerplexityConfig {
        PerplexityConfig {
            context,
            scoring,
            max_windows: None,
            bos: Some(1),
        }
    }

    #[test]
    fn nll_is_log_softmax() {
        // softmax([0, ln 3]) = [1/4, 3/4].
        let row = [0.0, 3f32.ln()];
        assert!((nll(&row, 0) - 4f64.ln()).abs() < 1e-6);
        assert!((nll(&row, 1) - (4.0f64 / 3.0).ln()).abs() < 1e-6);
        // Large logits do not overflow.
        assert!((nll(&[1000.0, 1000.0], 1) - 2f64.ln()).abs() < 1e-9);
    }

    #[test]
    fn protocols_agree_on_a_uniform_model() {
        // 40 tokens, context 8: 5 windows. AllTokens scores 7 predictions per window (35),
        // SecondHalf positions 4..7, 3 per window (15). Every NLL is ln 32, so PPL = 32 in both.
        let tokens: Vec<u32> = (0..40).map(|i| i % 32).collect();
        let a = perplexity(
            &Uniform(32),
            &tokens,
            0,
            &config(8, Scoring::AllTokens),
            |_, _| {},
        )
        .unwrap();
        let b = perplexity(
            &Uniform(32),
            &tokens,
            0,
            &config(8, Scoring::SecondHalf),
            |_, _| {},
        )
        .unwrap();
        assert_eq!((a.windows, a.tokens_scored), (5, 35));
        assert_eq!((b.windows, b.tokens_scored), (5, 15));
        for r in [&a, &b] {
            assert!((r.ppl - 32.0).abs() < 1e-6, "{r:?}");
            assert!((r.ppl_ci95.0 - 32.0).abs() < 1e-6 && (r.ppl_ci95.1 - 32.0).abs() < 1e-6);
            assert_eq!(r.bits_per_byte, None);
        }
    }

    #[test]
    fn bits_per_byte_and_interval() {
        // Two windows with NLLs {ln 2, ln 8}: mean 2 ln 2, PPL 4; at 2 bytes/token,
        // bits/byte = 2 ln2 / ln2 / 2 = 1.
        let nlls = vec![vec![2f64.ln()], vec![8f64.ln()]];
        let r = summarize(&nlls, &config(2, Scoring::AllTokens), Some(2.0));
        assert!((r.ppl - 4.0).abs() < 1e-9);
        assert!((r.bits_per_byte.unwrap() - 1.0).abs() < 1e-12);
        assert!(r.ppl_ci95.0 < 4.0 && r.ppl_ci95.1 > 4.0);
    }

    #[test]
    fn too_little_text_is_an_error() {
        let e = perplexity(
            &Uniform(8),
            &[1, 2, 3],
            0,
            &config(8, Scoring::AllTokens),
            |_, _| {},
        )
        .unwrap_err();
        assert!(e.to_string().contains("fewer than one window"), "{e}");
    }
}
