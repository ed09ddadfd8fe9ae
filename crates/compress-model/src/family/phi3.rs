//! Phi-3 / Phi-3.5 / Phi-4-mini: llama with q/k/v fused into `qkv_proj` and gate/up into
//! `gate_up_proj` (rows `[q; k; v]` and `[gate; up]`, split into separate projections on load),
//! a sliding window on every layer when `sliding_window` is set, partial rotary embeddings
//! (`partial_rotary_factor`, Phi-4-mini: 0.75) and LongRoPE scaling.

use super::{Family, GgufLayout, HfConfigJson, HfLayout};
use crate::config::{Architecture, LlamaConfig, RopeLayout};
use crate::error::ModelError;
use crate::gguf::{GgufFile, GgufValue};

fn read_hf(hf: &HfConfigJson, c: &mut LlamaConfig) -> Result<(), ModelError> {
    if let Some(f) = hf.f32("partial_rotary_factor")? {
        if !(f > 0.0 && f <= 1.0) {
            return Err(ModelError::InvalidConfig(format!(
                "partial_rotary_factor ({f}) must lie in (0, 1]"
            )));
        }
        let dims = (c.head_dim as f64 * f as f64) as usize;
        if dims < c.head_dim {
            c.variant.rotary_dims = Some(dims);
        }
    }
    hf.sliding_everywhere(c, true)
}

/// llama.cpp runs Phi-3 GGUFs without the sliding window (it reads
/// `{arch}.attention.sliding_window` but turns SWA off for this architecture), so the window is
/// not applied here either: logits then match llama.cpp on the same file.
fn read_gguf(file: &GgufFile, prefix: &str, c: &mut LlamaConfig) -> Result<(), ModelError> {
    super::gguf_rope_scaling(file, prefix, c)
}

fn write_hf(c: &LlamaConfig, keys: &mut super::HfKeys) -> Result<(), String> {
    let rot = c.rotary_dims();
    keys.insert(
        "partial_rotary_factor".into(),
        (rot as f64 / c.head_dim as f64).into(),
    );
    let all = (0..c.num_layers)
        .all(|l| c.variant.attention_of(l) == crate::config::LayerAttention::Sliding);
    keys.insert(
        "sliding_window".into(),
        c.variant.sliding_window.filter(|_| all).into(),
    );
    if let Some(crate::config::RopeScaling::LongRope {
        original_max_position_embeddings,
        ..
    }) = &c.variant.rope_scaling
    {
        keys.insert(
            "original_max_position_embeddings".into(),
            (*original_max_position_embeddings).into(),
        );
    }
    Ok(())
}

/// The window as llama.cpp's converter writes it (0 for none); llama.cpp then runs without it.
fn gguf_keys(c: &LlamaConfig) -> Result<super::GgufKeys, String> {
    let w = c.variant.sliding_window.unwrap_or(0);
    Ok(vec![("attention.sliding_window", GgufValue::U32(w as u32))])
}

/// Phi-3.
pub(crate) static FAMILY: Family = Family {
    architecture: Architecture::Phi3,
    name: "phi3",
    hf_classes: &["Phi3ForCausalLM"],
    gguf_names: &["phi3"],
    hf: HfLayout {
        ffn_norm: "post_attention_layernorm",
        fused: true,
        norm_offset: 0.0,
        tie_default: false,
        moe_names: super::MLP_NAMES,
    },
    gguf: GgufLayout {
        write_as: "phi3",
        rope_layout: RopeLayout::NeoX,
        fused: true,
    },
    read_hf,
    read_gguf,
    gguf_keys,
    hf_model_type: "phi3",
    write_hf,
};
