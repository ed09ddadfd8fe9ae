//! Mistral: llama with sliding-window attention on every layer (`sliding_window`, or none when
//! it is `null` as in Mistral v0.2+).

use super::{Family, GgufLayout, HfConfigJson};
use crate::config::{Architecture, LlamaConfig, RopeLayout};
use crate::error::ModelError;

fn read_hf(hf: &HfConfigJson, c: &mut LlamaConfig) -> Result<(), ModelError> {
    hf.sliding_everywhere(c, true)
}

/// `sliding_window`: the window when every layer slides, `null` when none does.
fn write_hf(c: &LlamaConfig, keys: &mut super::HfKeys) -> Result<(), String> {
    let sliding = (0..c.num_layers)
        .filter(|&l| c.variant.attention_of(l) == crate::config::LayerAttention::Sliding)
        .count();
    let window = match sliding {
        0 => serde_json::Value::Null,
        n if n == c.num_layers => c.variant.sliding_window.into(),
        _ => return Err("Mistral configs slide on every layer or on none".into()),
    };
    keys.insert("sliding_window".into(), window);
    Ok(())
}

/// Mistral.
pub(crate) static FAMILY: Family = Family {
    architecture: Architecture::Mistral,
    name: "mistral",
    hf_classes: &["MistralForCausalLM"],
    gguf_names: &["mistral"],
    hf: super::LLAMA_HF,
    gguf: GgufLayout {
        write_as: "llama",
        rope_layout: RopeLayout::Interleaved,
        fused: false,
    },
    read_hf,
    read_gguf: super::gguf_sliding_all,
    gguf_keys: super::no_gguf_keys,
    hf_model_type: "mistral",
    write_hf,
};
