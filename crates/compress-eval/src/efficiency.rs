//! What a compressed model costs to store and to run: size (model bytes and bits per weight,
//! counting codes, scales, zero points, sparsity masks and low-rank factors) and speed (prefill
//! and decode tokens per second, peak resident memory).

use std::time::Instant;

use compress_core::linear::CompressedLinear;
use compress_model::generate::{generate, GenerateOptions, Sampling};
use compress_model::LlamaModel;
use serde::{Deserialize, Serialize};

use crate::EvalError;

/// Storage of a model.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SizeReport {
    /// Weights the model stands for (dense-equivalent): embedding, every projection and bias,
    /// norms, and the head unless it is tied to the embedding and stored as that same matrix.
    pub parameters: u64,
    /// Weights of the projections (and of a separately stored head), `out · in` each.
    pub linear_weights: u64,
    /// Bits stored for those projections: packed codes, f16 scales and zeros, mask bitmaps,
    /// low-rank factors, 32 per dense weight.
    pub linear_bits: u64,
    /// `linear_bits / linear_weights`: the "bits per weight" quantization tables quote.
    pub linear_bits_per_weight: f64,
    /// Bytes of the whole model as stored: the projections' bits plus 4 bytes per other weight
    /// (embedding, norms, biases).
    pub model_bytes: u64,
    /// `8 · model_bytes / parameters`.
    pub bits_per_weight: f64,
}

impl SizeReport {
    /// The storage of `model`. A head tied to the embedding counts once while it is the dense
    /// embedding; once compressed it is a separate matrix and counts on its own.
    pub fn of(model: &LlamaModel) -> Self {
        let mut linear_weights = 0u64;
        let mut linear_bits = 0u64;
        let mut other = 0u64; // f32 weights outside the projections
        let mut add = |l: &CompressedLinear| {
            linear_weights += (l.out_features() * l.in_features()) as u64;
            linear_bits += l.storage_bits();
            other += l.bias().map_or(0, |b| b.dims()[0]) as u64;
        };
        let mut norm_weights = 0u64;
        for (b, layer) in model.layers.iter().enumerate() {
            for (_, l) in layer.linears(b) {
                add(l);
            }
            norm_weights += layer
                .variant_norms()
                .iter()
                .map(|(_, n)| n.weight.val().dims()[0] as u64)
                .sum::<u64>();
        }
        let c = model.config();
        let head_is_embedding =
            c.tie_word_embeddings && matches!(model.lm_head, CompressedLinear::Dense(_));
        if !head_is_embedding {
            add(&model.lm_head);
        }
        let d = c.hidden_size as u64;
        let embedding = c.vocab_size as u64 * d;
        let norms = (2 * c.num_layers as u64 + 1) * d + norm_weights;
        other += embedding + norms;
        let parameters = linear_weights + other;
        let model_bytes = linear_bits.div_ceil(8) + 4 * other;
        Self {
            parameters,
            linear_weights,
            linear_bits,
            linear_bits_per_weight: linear_bits as f64 / linear_weights.max(1) as f64,
            model_bytes,
            bits_per_weight: 8.0 * model_bytes as f64 / parameters.max(1) as f64,
        }
    }
}

/// Generation speed of a model on its device.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SpeedReport {
    /// Prompt length.
    pub prompt_tokens: usize,
    /// Tokens generated after the prompt (greedy, no stop token).
    pub new_tokens: usize,
    /// Prompt tokens per second of the prefill (which also produces the first new token).
    pub prefill_tokens_per_second: f64,
    /// Tokens per second after the first.
    pub decode_tokens_per_second: f64,
    /// Seconds for the whole generation.
    pub seconds: f64,
    /// The process's peak resident memory so far (Linux `VmHWM`), when known: an upper bound
    /// on what this model needs, since it includes everything the process did before.
    pub peak_rss_bytes: Option<u64>,
}

/// Greedy generation of `new_tokens` after `prompt`, timed (a warm-up run of a few tokens
/// first, so one-off set-up costs do not count).
pub fn measure_speed(
    model: &LlamaModel,
    prompt: &[u32],
    new_tokens: usize,
) -> Result<SpeedReport, EvalError> {
    if prompt.is_empty() || new_tokens < 2 {
        return Err(EvalError::InvalidInput(
            "speed needs a prompt and at least 2 new tokens".into(),
        ));
    }
    let options = |n| GenerateOptions {
        max_new_tokens: n,
        sampling: Sampling::Greedy,
        stop_token: None,
    };
    generate(model, prompt, &options(2), |_| {})?;
    let start = Instant::now();
    let out = generate(model, prompt, &options(new_tokens), |_| {})?;
    Ok(SpeedReport {
        prompt_tokens: prompt.len(),
        new_tokens: out.tokens.len(),
        prefill_tokens_per_second: prompt.len() as f64 / out.prefill.as_secs_f64().max(1e-12),
        decode_tokens_per_second: out.decode_tokens_per_second(),
        seconds: start.elapsed().as_secs_f64(),
        peak_rss_bytes: compress_core::pipeline::peak_rss_bytes(),
    })
}
