//! Qwen2 / Qwen2.5: llama with biases on the q, k and v projections. Sliding windows apply only
//! with `use_sliding_window`, to the layers from `max_window_layers` on.

use super::{Family, GgufLayout, HfConfigJson, HfLayout};
use crate::config::{Architecture, LayerAttention, LlamaConfig, RopeLayout};
use crate::error::ModelError;

/// The Qwen rule for sliding layers (`layer_types` when the file has it).
pub(super) fn qwen_sliding(hf: &HfConfigJson, c: &mut LlamaConfig) -> Result<(), ModelError> {
    if let Some(types) = hf.layer_types()? {
        c.variant.layer_attention = types;
        c.variant.sliding_window = hf.usize("sliding_window")?;
        return Ok(());
    }
    if hf.bool("use_sliding_window")? == Some(true) {
        let from = hf.usize("max_window_layers")?.unwrap_or(c.num_layers);
        c.variant.sliding_window = hf.usize("sliding_window")?;
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
    hf: HfLayout {
        ffn_norm: "post_attention_layernorm",
        fused: false,
        norm_offset: 0.0,
        tie_default: false,
    },
    gguf: GgufLayout {
        write_as: "qwen2",
        rope_layout: RopeLayout::NeoX,
        fused: false,
    },
    read_hf,
    read_gguf: super::gguf_rope_scaling,
    gguf_keys: super::no_gguf_keys,
};
