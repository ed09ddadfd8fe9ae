//! Qwen3: llama with an RMSNorm over each head's queries and keys before RoPE (`q_norm`,
//! `k_norm`), no q/k/v bias, an explicit `head_dim`.

use super::{Family, HfConfigJson};
use crate::config::{Architecture, LlamaConfig};
use crate::error::ModelError;

fn read_hf(hf: &HfConfigJson, c: &mut LlamaConfig) -> Result<(), ModelError> {
    c.variant.qk_norm = true;
    super::qwen2::qwen_sliding(hf, c)
}

fn write_hf(c: &LlamaConfig, keys: &mut super::HfKeys) -> Result<(), String> {
    if !c.variant.qk_norm {
        return Err("a Qwen3 config always has q/k norms".into());
    }
    super::qwen2::write_qwen_sliding(c, keys)
}

fn read_gguf(
    file: &crate::gguf::GgufFile,
    prefix: &str,
    c: &mut LlamaConfig,
) -> Result<(), ModelError> {
    c.variant.qk_norm = true;
    super::gguf_rope_scaling(file, prefix, c)
}

/// Qwen3.
pub(crate) static FAMILY: Family = Family {
    architecture: Architecture::Qwen3,
    name: "qwen3",
    hf_classes: &["Qwen3ForCausalLM"],
    gguf_names: &["qwen3"],
    hf: super::LLAMA_HF,
    gguf: super::neox_gguf("qwen3"),
    read_hf,
    read_gguf,
    gguf_keys: super::no_gguf_keys,
    hf_model_type: "qwen3",
    write_hf,
};
