//! Hyper-parameters of a llama-family decoder, independent of the file format they came from.

use serde::{Deserialize, Serialize};

/// The model families this crate runs. They share one decoder; the differences are captured by
/// the flags of [`LlamaConfig`] (q/k/v bias, RoPE layout, tied head).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Architecture {
    /// Llama 1/2/3, SmolLM, TinyLlama, stories (karpathy/llama2.c) ...
    Llama,
    /// Mistral: llama plus sliding-window attention. Within one window that is plain causal
    /// attention, so the loader caps the context at the window length.
    Mistral,
    /// Qwen2: llama with biases on the q, k and v projections.
    Qwen2,
}

/// How RoPE pairs the dimensions of a head it rotates.
///
/// RoFormer (Su et al. 2021) rotates pairs of dimensions by position-dependent angles
/// `θ_i = pos · base^(-2i/d)`. Implementations differ in *which* dimensions form pair `i`:
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum RopeLayout {
    /// Pair `(2i, 2i+1)`: the original layout, used by Meta's llama code and by GGUF files of
    /// the `llama` architecture (llama.cpp's converter permutes the HF q/k weights back to it;
    /// llama.cpp calls this `LLAMA_ROPE_TYPE_NORM`).
    Interleaved,
    /// Pair `(i, i + d/2)` ("rotate half"): used by HF transformers checkpoints of every family
    /// and by GGUF files of `qwen2` (llama.cpp's `LLAMA_ROPE_TYPE_NEOX`).
    NeoX,
}

/// Everything needed to build a llama-family decoder.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct LlamaConfig {
    /// Model family.
    pub architecture: Architecture,
    /// Number of token ids.
    pub vocab_size: usize,
    /// Width of the residual stream (`d_model`).
    pub hidden_size: usize,
    /// Width of the SwiGLU hidden layer.
    pub intermediate_size: usize,
    /// Number of decoder blocks.
    pub num_layers: usize,
    /// Number of query heads.
    pub num_heads: usize,
    /// Number of key/value heads (grouped-query attention when smaller than `num_heads`).
    pub num_kv_heads: usize,
    /// Width of one attention head.
    pub head_dim: usize,
    /// ε of RMSNorm.
    pub rms_norm_eps: f32,
    /// RoPE base frequency.
    pub rope_theta: f32,
    /// RoPE pairing of dimensions.
    pub rope_layout: RopeLayout,
    /// Longest context the model was trained for (RoPE tables are built for it).
    pub max_seq_len: usize,
    /// The output head reuses the token embedding matrix.
    pub tie_word_embeddings: bool,
    /// q, k and v projections carry a bias (Qwen2).
    pub attention_bias: bool,
}

impl LlamaConfig {
    /// Checks the relations the decoder relies on; returns a message naming the field at fault.
    pub fn validate(&self) -> Result<(), String> {
        let positive = [
            ("vocab_size", self.vocab_size),
            ("hidden_size", self.hidden_size),
            ("intermediate_size", self.intermediate_size),
            ("num_layers", self.num_layers),
            ("num_heads", self.num_heads),
            ("num_kv_heads", self.num_kv_heads),
            ("head_dim", self.head_dim),
            ("max_seq_len", self.max_seq_len),
        ];
        for (name, v) in positive {
            if v == 0 {
                return Err(format!("{name} must be positive"));
            }
        }
        if !self.num_heads.is_multiple_of(self.num_kv_heads) {
            return Err(format!(
                "num_heads ({}) must be a multiple of num_kv_heads ({})",
                self.num_heads, self.num_kv_heads
            ));
        }
        if !self.head_dim.is_multiple_of(2) {
            return Err(format!(
                "head_dim ({}) must be even for RoPE",
                self.head_dim
            ));
        }
        if !(self.rms_norm_eps.is_finite() && self.rms_norm_eps > 0.0) {
            return Err(format!(
                "rms_norm_eps ({}) must be positive",
                self.rms_norm_eps
            ));
        }
        if !(self.rope_theta.is_finite() && self.rope_theta > 1.0) {
            return Err(format!(
                "rope_theta ({}) must be greater than 1",
                self.rope_theta
            ));
        }
        Ok(())
    }

    /// Number of weights in the model (embedding, blocks, norms, and the head unless tied).
    pub fn num_parameters(&self) -> usize {
        let d = self.hidden_size;
        let q = self.num_heads * self.head_dim;
        let kv = self.num_kv_heads * self.head_dim;
        let bias = if self.attention_bias { q + 2 * kv } else { 0 };
        let attn = d * q + 2 * d * kv + q * d + bias;
        let mlp = 3 * d * self.intermediate_size;
        let block = attn + mlp + 2 * d;
        let head = if self.tie_word_embeddings {
            0
        } else {
            self.vocab_size * d
        };
        self.vocab_size * d + self.num_layers * block + d + head
    }
}
