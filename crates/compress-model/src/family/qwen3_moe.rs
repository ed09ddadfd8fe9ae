//! Qwen3-MoE: Qwen3's attention (q/k norms) with routed experts (`mlp.experts.{e}`, router
//! `mlp.gate`, the chosen experts' softmax weights renormalized when `norm_topk_prob`, which
//! llama.cpp always does).

use super::{Family, HfConfigJson};
use crate::config::{Architecture, LlamaConfig};
use crate::error::ModelError;
use crate::gguf::GgufFile;

fn read_hf(hf: &HfConfigJson, c: &mut LlamaConfig) -> Result<(), ModelError> {
    c.variant.qk_norm = true;
    super::qwen2::qwen_sliding(hf, c)?;
    c.variant.moe = Some(super::moe::hf_moe(hf, c, false)?);
    Ok(())
}

fn read_gguf(file: &GgufFile, prefix: &str, c: &mut LlamaConfig) -> Result<(), ModelError> {
    c.variant.qk_norm = true;
    c.variant.moe = super::moe::gguf_moe(file, prefix, c, true)?;
    super::gguf_rope_scaling(file, prefix, c)
}

fn write_hf(c: &LlamaConfig, keys: &mut super::HfKeys) -> Result<(), String> {
    super::qwen2::write_qwen_sliding(c, keys)?;
    super::moe::write_hf_moe(c, keys)
}

/// llama.cpp always renormalizes Qwen3-MoE's chosen experts.
fn gguf_keys(c: &LlamaConfig) -> Result<super::GgufKeys, String> {
    if c.variant.moe.as_ref().is_some_and(|m| !m.normalize_weights) {
        return Err("llama.cpp renormalizes Qwen3-MoE's chosen experts (norm_topk_prob)".into());
    }
    super::moe::gguf_moe_keys(c)
}

/// Qwen3-MoE.
pub(crate) static FAMILY: Family = Family {
    architecture: Architecture::Qwen3Moe,
    name: "qwen3_moe",
    hf_classes: &["Qwen3MoeForCausalLM"],
    gguf_names: &["qwen3moe"],
    hf: super::LLAMA_HF,
    gguf: super::neox_gguf("qwen3moe"),
    read_hf,
    read_gguf,
    gguf_keys,
    hf_model_type: "qwen3_moe",
    write_hf,
};
