//! Qwen2-MoE / Qwen1.5-MoE: Qwen2's attention (q/k/v bias) with routed experts
//! (`mlp.experts.{e}`, router `mlp.gate`, softmax weights not renormalized unless
//! `norm_topk_prob`) plus a shared expert every token runs through, scaled by
//! `σ(shared_expert_gate · x)`. Layers in `mlp_only_layers` (or skipped by
//! `decoder_sparse_step`) keep a dense MLP.

use super::{Family, HfConfigJson};
use crate::config::{Architecture, LlamaConfig};
use crate::error::ModelError;
use crate::gguf::GgufFile;

fn read_hf(hf: &HfConfigJson, c: &mut LlamaConfig) -> Result<(), ModelError> {
    c.attention_bias = match hf.bool("attention_bias")? {
        Some(b) => b,
        None => hf.bool("qkv_bias")?.unwrap_or(true),
    };
    super::qwen2::qwen_sliding(hf, c)?;
    c.variant.moe = Some(super::moe::hf_moe(hf, c, false)?);
    Ok(())
}

fn read_gguf(file: &GgufFile, prefix: &str, c: &mut LlamaConfig) -> Result<(), ModelError> {
    // llama.cpp does not renormalize Qwen2-MoE's chosen experts.
    c.variant.moe = super::moe::gguf_moe(file, prefix, c, false)?;
    super::gguf_rope_scaling(file, prefix, c)
}

fn write_hf(c: &LlamaConfig, keys: &mut super::HfKeys) -> Result<(), String> {
    super::qwen2::write_qwen_sliding(c, keys)?;
    keys.insert("qkv_bias".into(), c.attention_bias.into());
    super::moe::write_hf_moe(c, keys)
}

/// Qwen2-MoE.
pub(crate) static FAMILY: Family = Family {
    architecture: Architecture::Qwen2Moe,
    name: "qwen2_moe",
    hf_classes: &["Qwen2MoeForCausalLM"],
    gguf_names: &["qwen2moe"],
    hf: super::LLAMA_HF,
    gguf: super::neox_gguf("qwen2moe"),
    read_hf,
    read_gguf,
    gguf_keys: super::moe::gguf_moe_keys,
    hf_model_type: "qwen2_moe",
    write_hf,
};
