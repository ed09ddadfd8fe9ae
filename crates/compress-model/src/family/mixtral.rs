//! Mixtral (Jiang et al. 2024, arXiv:2401.04088): Mistral's attention with a sparse
//! mixture-of-experts MLP — a softmax router over `num_local_experts` experts, each token
//! through its top `num_experts_per_tok`, weights renormalized over the chosen ones. Experts
//! are `block_sparse_moe.experts.{e}.w1/w3/w2` (gate/up/down). llama.cpp converts Mixtral as
//! `llama` with `expert_count` and stacked `ffn_*_exps` tensors (the llama family reads those
//! files as Mixtral).

use super::{Family, GgufLayout, HfConfigJson, HfLayout};
use crate::config::{Architecture, LlamaConfig, RopeLayout};
use crate::error::ModelError;

fn read_hf(hf: &HfConfigJson, c: &mut LlamaConfig) -> Result<(), ModelError> {
    hf.sliding_everywhere(c, true)?;
    let mut moe = super::moe::hf_moe(hf, c, true)?;
    // Mixtral always renormalizes (its config has no `norm_topk_prob`).
    moe.normalize_weights = true;
    c.variant.moe = Some(moe);
    Ok(())
}

fn write_hf(c: &LlamaConfig, keys: &mut super::HfKeys) -> Result<(), String> {
    let Some(m) = &c.variant.moe else {
        return Err("a Mixtral without experts".into());
    };
    if m.shared_expert_intermediate_size.is_some() || !m.normalize_weights {
        return Err("Mixtral has no shared expert and renormalizes the chosen experts".into());
    }
    if m.expert_intermediate_size != c.intermediate_size || !m.dense_layers.is_empty() {
        return Err("Mixtral's experts are `intermediate_size` wide, in every layer".into());
    }
    keys.insert("num_local_experts".into(), m.num_experts.into());
    keys.insert("num_experts_per_tok".into(), m.experts_per_token.into());
    let all = (0..c.num_layers)
        .all(|l| c.variant.attention_of(l) == crate::config::LayerAttention::Sliding);
    keys.insert(
        "sliding_window".into(),
        c.variant.sliding_window.filter(|_| all).into(),
    );
    Ok(())
}

/// Mixtral.
pub(crate) static FAMILY: Family = Family {
    architecture: Architecture::Mixtral,
    name: "mixtral",
    hf_classes: &["MixtralForCausalLM"],
    gguf_names: &["mixtral"],
    hf: HfLayout {
        ffn_norm: "post_attention_layernorm",
        fused: false,
        norm_offset: 0.0,
        tie_default: false,
        moe_names: ("block_sparse_moe", ["w1", "w3", "w2"]),
    },
    gguf: GgufLayout {
        write_as: "llama",
        rope_layout: RopeLayout::Interleaved,
        fused: false,
    },
    read_hf,
    read_gguf: super::gguf_rope_scaling,
    gguf_keys: super::moe::gguf_moe_keys,
    hf_model_type: "mixtral",
    write_hf,
};
