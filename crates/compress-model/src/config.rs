//! Hyper-parameters of a llama-family decoder, independent of the file format they came from.

use serde::{Deserialize, Serialize};

/// The model families this crate runs. They share one decoder; each family's structure is
/// described by its [`Family`](crate::family::Family) (norms, activation, attention variants,
/// file layouts) and captured per model in [`LlamaConfig`] and its [`Variant`].
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum Architecture {
    /// Llama 1/2/3.x, SmolLM, TinyLlama, stories (karpathy/llama2.c) ...
    Llama,
    /// Mistral: llama plus sliding-window attention on every layer.
    Mistral,
    /// Qwen2 / Qwen2.5: llama with biases on the q, k and v projections.
    Qwen2,
    /// Qwen3: llama with an RMSNorm over each head's queries and keys.
    Qwen3,
    /// Gemma 2: `(1 + w)` norms before and after attention and the MLP, GELU-tanh, soft-capped
    /// attention and logits, sliding window on alternate layers, embeddings scaled by √d.
    Gemma2,
    /// Gemma 3 (text): Gemma 2 without soft-capping, with q/k norms, five sliding-window layers
    /// per global one and a local RoPE base for the sliding layers.
    Gemma3,
    /// Phi-3 / Phi-4-mini: fused `qkv_proj` and `gate_up_proj` (split on load), optionally
    /// partial rotary embeddings.
    Phi3,
    /// Mixtral: Mistral's attention with a mixture-of-experts MLP (softmax router, top-k
    /// renormalized).
    Mixtral,
    /// Qwen2-MoE / Qwen1.5-MoE: Qwen2 with routed experts plus a sigmoid-gated shared expert.
    Qwen2Moe,
    /// Qwen3-MoE: Qwen3 with routed experts.
    Qwen3Moe,
}

/// A mixture-of-experts MLP (Shazeer et al. 2017; Mixtral, Jiang et al. 2024): a router
/// `[experts, hidden]` scores every expert, each token runs through its `experts_per_token`
/// best (softmax weights, renormalized over the chosen ones where the family says so), and
/// the weighted outputs are summed, plus an always-on shared expert scaled by
/// `σ(shared_gate · x)` where the family has one (Qwen2-MoE).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct MoeConfig {
    /// Routed experts per MoE layer.
    pub num_experts: usize,
    /// Experts each token runs through (top-k).
    pub experts_per_token: usize,
    /// Hidden width of each routed expert's gated MLP.
    pub expert_intermediate_size: usize,
    /// The chosen experts' softmax weights are renormalized to sum to 1 (Mixtral, Qwen3-MoE's
    /// `norm_topk_prob`); otherwise they are the full softmax's.
    pub normalize_weights: bool,
    /// Hidden width of the shared expert, which every token runs through (Qwen2-MoE).
    pub shared_expert_intermediate_size: Option<usize>,
    /// Layers with a dense MLP of `intermediate_size` instead (Qwen2-MoE's `mlp_only_layers`
    /// and `decoder_sparse_step`).
    #[serde(default)]
    pub dense_layers: Vec<usize>,
}

impl MoeConfig {
    /// Whether layer `layer` has experts.
    pub fn is_moe_layer(&self, layer: usize) -> bool {
        !self.dense_layers.contains(&layer)
    }
}

/// The activation of a gated MLP: `down(act(gate(x)) ⊙ up(x))`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub enum Activation {
    /// `silu(x) = x·σ(x)` (SwiGLU: Llama, Qwen, Mistral, Phi).
    #[default]
    Silu,
    /// The tanh approximation of GELU, `0.5·x·(1 + tanh(√(2/π)·(x + 0.044715·x³)))` (GeGLU:
    /// Gemma's `gelu_pytorch_tanh`).
    GeluTanh,
}

/// Which attention a layer runs.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub enum LayerAttention {
    /// Every earlier position.
    #[default]
    Global,
    /// Only the last [`Variant::sliding_window`] positions (the query's own included), with the
    /// local RoPE tables where the family has them.
    Sliding,
}

/// RoPE frequency scaling for contexts beyond the pre-training length. Each rule rewrites the
/// inverse frequencies `ω_i = base^(−2i/d)`; the formulas are those of transformers'
/// `modeling_rope_utils` (which llama.cpp follows).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub enum RopeScaling {
    /// Position interpolation (Chen et al. 2023, arXiv:2306.15595): `ω_i / factor`.
    Linear {
        /// Context extension factor.
        factor: f32,
    },
    /// Llama 3.1's rule: wavelengths longer than `original / low_freq_factor` are divided by
    /// `factor`, shorter than `original / high_freq_factor` kept, and the band between
    /// interpolated smoothly.
    Llama3 {
        /// Context extension factor.
        factor: f32,
        /// Low-frequency boundary factor.
        low_freq_factor: f32,
        /// High-frequency boundary factor.
        high_freq_factor: f32,
        /// Pre-training context length.
        original_max_position_embeddings: usize,
    },
    /// YaRN (Peng et al. 2023, arXiv:2309.00071): interpolation for low frequencies,
    /// extrapolation for high ones with a linear ramp between the dimensions that rotate
    /// `beta_fast` and `beta_slow` times over the original context, and cos/sin scaled by the
    /// attention factor (`0.1·ln(factor) + 1` unless given).
    Yarn {
        /// Context extension factor.
        factor: f32,
        /// Pre-training context length.
        original_max_position_embeddings: usize,
        /// Rotations at which extrapolation starts (default 32).
        beta_fast: f32,
        /// Rotations below which interpolation is full (default 1).
        beta_slow: f32,
        /// cos/sin scale; `None` for `0.1·ln(factor) + 1`.
        attention_factor: Option<f32>,
    },
    /// Per-pair divisors of `ω_i` as llama.cpp stores them in a GGUF (`rope_freqs.weight`, which
    /// its converter computes from Llama 3.1's rule).
    Divisors {
        /// One divisor per rotated pair.
        factors: Vec<f32>,
    },
    /// Phi-3's LongRoPE: per-dimension divisors of `ω_i` (the short factors, which apply up to
    /// the original context; the model's context is capped there) and cos/sin scaled by
    /// `√(1 + ln(max/original) / ln(original))`.
    LongRope {
        /// Per-pair divisors of the inverse frequencies.
        short_factor: Vec<f32>,
        /// Per-pair divisors beyond the original context (kept for export; not used).
        long_factor: Vec<f32>,
        /// Pre-training context length.
        original_max_position_embeddings: usize,
        /// The extended context the factors were fitted for (`max_position_embeddings`).
        max_position_embeddings: usize,
    },
}

/// The structure a family adds to the llama baseline (all off by default: plain llama).
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct Variant {
    /// MLP activation.
    pub activation: Activation,
    /// RMSNorm over each head's queries and keys before RoPE (Qwen3, Gemma 3).
    pub qk_norm: bool,
    /// Norms on the attention and MLP outputs before the residual add (Gemma 2/3's
    /// `post_attention_layernorm` / `post_feedforward_layernorm`).
    pub sandwich_norms: bool,
    /// Embeddings multiplied by this factor (Gemma: `√hidden`).
    pub embedding_scale: Option<f32>,
    /// The attention score scale; `None` for `1/√head_dim` (Gemma: `query_pre_attn_scalar^−½`).
    pub attention_scale: Option<f32>,
    /// Attention scores soft-capped as `c·tanh(s/c)` before the softmax (Gemma 2).
    pub attn_softcap: Option<f32>,
    /// Final logits soft-capped as `c·tanh(z/c)` (Gemma 2).
    pub final_softcap: Option<f32>,
    /// Length of the sliding window of [`LayerAttention::Sliding`] layers.
    pub sliding_window: Option<usize>,
    /// Attention kind per layer; empty means every layer is global.
    pub layer_attention: Vec<LayerAttention>,
    /// RoPE base of the sliding layers when it differs from the global one (Gemma 3's
    /// `rope_local_base_freq`; no scaling applies to it).
    pub local_rope_theta: Option<f32>,
    /// RoPE scaling of the global layers.
    pub rope_scaling: Option<RopeScaling>,
    /// Dimensions of each head that RoPE rotates (the first ones); `None` for all (Phi-4-mini:
    /// 3/4 of the head).
    pub rotary_dims: Option<usize>,
    /// Mixture-of-experts MLPs.
    pub moe: Option<MoeConfig>,
}

impl Variant {
    /// The attention kind of layer `layer`.
    pub fn attention_of(&self, layer: usize) -> LayerAttention {
        self.layer_attention
            .get(layer)
            .copied()
            .unwrap_or(LayerAttention::Global)
    }
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
    /// The family's additions to the llama structure (absent in containers written before
    /// they existed: plain llama).
    #[serde(default)]
    pub variant: Variant,
}

impl LlamaConfig {
    /// Checks the relations the decoder relies on; returns a message naming the field at fault.
    pub fn validate(&self) -> Result<(), String> {
        self.validate_sizes()?;
        self.validate_relations()
    }

    /// Every size positive and within [`Self::validate_bounds`]'s limits: what loaders check
    /// before anything is sized from the config.
    pub(crate) fn validate_sizes(&self) -> Result<(), String> {
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
        self.validate_bounds()
    }

    fn validate_relations(&self) -> Result<(), String> {
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
        self.validate_variant()
    }

    /// Upper bounds on every size (generous: several times the largest published models), so
    /// that sizes computed from them — `vocab · hidden`, experts × FFN × layers, a parameter
    /// count — fit in 64 bits and a hostile file cannot make a loader allocate or loop from a
    /// declared number alone.
    fn validate_bounds(&self) -> Result<(), String> {
        let mut bounded = vec![
            ("vocab_size", self.vocab_size, 1usize << 24),
            ("hidden_size", self.hidden_size, 1 << 17),
            ("intermediate_size", self.intermediate_size, 1 << 19),
            ("num_layers", self.num_layers, 1 << 10),
            ("num_heads", self.num_heads, 1 << 10),
            ("num_kv_heads", self.num_kv_heads, 1 << 10),
            ("head_dim", self.head_dim, 1 << 11),
            ("max_seq_len", self.max_seq_len, 1 << 31),
        ];
        if let Some(m) = &self.variant.moe {
            bounded.push(("num_experts", m.num_experts, 1 << 10));
            bounded.push(("experts_per_token", m.experts_per_token, m.num_experts));
            bounded.push((
                "expert_intermediate_size",
                m.expert_intermediate_size,
                1 << 19,
            ));
            if let Some(f) = m.shared_expert_intermediate_size {
                bounded.push(("shared_expert_intermediate_size", f, 1 << 19));
            }
        }
        if let Some(w) = self.variant.sliding_window {
            bounded.push(("sliding_window", w, 1 << 31));
        }
        for (name, v, max) in bounded {
            if v > max {
                return Err(format!(
                    "{name} = {v} is larger than this crate accepts ({max})"
                ));
            }
        }
        Ok(())
    }

    fn validate_variant(&self) -> Result<(), String> {
        let v = &self.variant;
        let positive = |name: &str, x: Option<f32>| match x {
            Some(x) if !(x.is_finite() && x > 0.0) => Err(format!("{name} ({x}) must be positive")),
            _ => Ok(()),
        };
        positive("embedding_scale", v.embedding_scale)?;
        positive("attention_scale", v.attention_scale)?;
        positive("attn_softcap", v.attn_softcap)?;
        positive("final_softcap", v.final_softcap)?;
        if let Some(theta) = v.local_rope_theta {
            if !(theta.is_finite() && theta > 1.0) {
                return Err(format!("local_rope_theta ({theta}) must be greater than 1"));
            }
        }
        if !v.layer_attention.is_empty() && v.layer_attention.len() != self.num_layers {
            return Err(format!(
                "layer_attention names {} layers, the model has {}",
                v.layer_attention.len(),
                self.num_layers
            ));
        }
        let sliding = v.layer_attention.contains(&LayerAttention::Sliding);
        match v.sliding_window {
            Some(0) => return Err("sliding_window must be positive".into()),
            None if sliding => return Err("sliding layers need a sliding_window length".into()),
            _ => {}
        }
        if let Some(r) = v.rotary_dims {
            if r == 0 || r > self.head_dim || !r.is_multiple_of(2) {
                return Err(format!(
                    "rotary_dims ({r}) must be even and within the head dim ({})",
                    self.head_dim
                ));
            }
        }
        if let Some(scaling) = &v.rope_scaling {
            crate::llama::rope::check_scaling(scaling, self.rotary_dims())?;
        }
        if let Some(m) = &v.moe {
            if m.num_experts == 0 || m.experts_per_token == 0 || m.experts_per_token > m.num_experts
            {
                return Err(format!(
                    "a mixture of {} experts cannot route each token to {}",
                    m.num_experts, m.experts_per_token
                ));
            }
            if m.expert_intermediate_size == 0 || m.shared_expert_intermediate_size == Some(0) {
                return Err("expert widths must be positive".into());
            }
            if let Some(&l) = m.dense_layers.iter().find(|&&l| l >= self.num_layers) {
                return Err(format!(
                    "dense layer {l} is beyond the {} layers",
                    self.num_layers
                ));
            }
        }
        Ok(())
    }

    /// Dimensions of each head that RoPE rotates.
    pub fn rotary_dims(&self) -> usize {
        self.variant.rotary_dims.unwrap_or(self.head_dim)
    }

    /// Number of weights in the model (embedding, blocks, norms, and the head unless tied).
    pub fn num_parameters(&self) -> usize {
        let d = self.hidden_size;
        let q = self.num_heads * self.head_dim;
        let kv = self.num_kv_heads * self.head_dim;
        let bias = if self.attention_bias { q + 2 * kv } else { 0 };
        let attn = d * q + 2 * d * kv + q * d + bias;
        let dense_mlp = 3 * d * self.intermediate_size;
        let moe_mlp = self.variant.moe.as_ref().map(|m| {
            let shared = m
                .shared_expert_intermediate_size
                .map_or(0, |f| 3 * d * f + d);
            m.num_experts * (3 * d * m.expert_intermediate_size + d) + shared
        });
        let moe_layers = self.variant.moe.as_ref().map_or(0, |m| {
            (0..self.num_layers).filter(|&l| m.is_moe_layer(l)).count()
        });
        let mlp_total = match moe_mlp {
            Some(moe) => moe_layers * moe + (self.num_layers - moe_layers) * dense_mlp,
            None => self.num_layers * dense_mlp,
        };
        let qk_norm = if self.variant.qk_norm {
            2 * self.head_dim
        } else {
            0
        };
        let norms = if self.variant.sandwich_norms {
            4 * d
        } else {
            2 * d
        };
        let block = attn + norms + qk_norm;
        let head = if self.tie_word_embeddings {
            0
        } else {
            self.vocab_size * d
        };
        self.vocab_size * d + self.num_layers * block + mlp_total + d + head
    }
}
