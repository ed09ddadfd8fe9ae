//! Qwen2 / Qwen2.5: llama with biases on the q, k and v projections. Sliding windows apply only
//! with `use_sliding_window`, to the layers from `max_window_layers` on.

use super::{Family, HfConfigJson};
use crate::config::{Architecture, LayerAttention, LlamaConfig};
use crate::error::ModelError;

/// The Qwen rule for sliding layers (`layer_types` when the file has it).
pub(super) fn qwen_sliding(hf: &HfConfigJson, c: &mut LlamaConfig) -> Result<(), ModelError> {
    if let Some(types) = hf.layer_types()? {
        c.variant.layer_attention = types;
        // transformers writes 0 for "no window".
        c.variant.sliding_window = hf.usize("sliding_window")?.filter(|&w| w > 0);
        return Ok(());
    }
    if hf.bool("use_sliding_window")? == Some(true) {
        let from = hf.usize("max_window_layers")?.unwrap_or(c.num_layers);
        c.variant.sliding_window = hf.usize("sliding_window")?.filter(|&w| w > 0);
        c.variant.layer_attention = (0..c.num_layers)
            .map(|l| {
                if l >= from {
                    LayerAttention::Sliding
                } else {
                    LayerAttention::Global
                }
            })
            .collect();
    }
    Ok(())
}

/// The Qwen sliding keys: `use_sliding_window` with `max_window_layers` = the first sliding
/// layer (every later one sliding), and `layer_types`.
pub(super) fn write_qwen_sliding(c: &LlamaConfig, keys: &mut super::HfKeys) -> Result<(), String> {
    let first = (0..c.num_layers).find(|&l| c.variant.attention_of(l) == LayerAttention::Sliding);
    if let Some(f) = first {
        if (f..c.num_layers).any(|l| c.variant.attention_of(l) != LayerAttention::Sliding) {
            return Err("Qwen configs slide on the layers from max_window_layers on, only".into());
        }
    }
    keys.insert("use_sliding_window".into(), first.is_some().into());
    keys.insert(
        "max_window_layers".into(),
        first.unwrap_or(c.num_layers).into(),
    );
    keys.insert("sliding_window".into(), c.variant.sliding_window.into());
    keys.insert("layer_types".into(), super::hf_config::layer_types_json(c));
    Ok(())
}

fn write_hf(c: &LlamaConfig, keys: &mut super::HfKeys) -> Result<(), String> {
    write_qwen_sliding(c, keys)
}

fn read_hf(hf: &HfConfigJson, c: &mut LlamaConfig) -> Result<(), ModelError> {
    c.attention_bias = hf.bool("attention_bias")?.unwrap_or(true);
    qwen_sliding(hf, c)
}

/// Qwen2.
pub(crate) static FAMILY: Family = Family {
    architecture: Architecture::Qwen2,
    name: "qwen2",
    hf_classes: &["Qwen2ForCausalLM"],
    gguf_names: &["qwen2"],
    hf: super::LLAMA_HF,
    gguf: super::neox_gguf("qwen2"),
    read_hf,
    read_gguf: super::gguf_rope_scaling,
    gguf_keys: super::no_gguf_keys,
    hf_model_type: "qwen2",
    write_hf,
};
