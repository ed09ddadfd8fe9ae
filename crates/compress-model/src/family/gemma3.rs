//! Gemma 3, text only (Gemma Team 2025, arXiv:2503.19786): Gemma 2's block without
//! soft-capping, with `(1 + w)` q/k norms, five sliding-window layers per global one, and RoPE
//! of base `rope_local_base_freq` (10 000, unscaled) on the sliding layers while the global
//! layers use `rope_theta` (1 000 000) and, from 4B up, linear scaling by 8.

use super::gemma2::{gemma_common, gguf_common, gguf_query_scale, sliding_pattern};
use super::{Family, HfConfigJson, HfLayout};
use crate::config::{Architecture, LlamaConfig};
use crate::error::ModelError;
use crate::gguf::{GgufFile, GgufValue};

fn read_hf(hf: &HfConfigJson, c: &mut LlamaConfig) -> Result<(), ModelError> {
    gemma_common(hf, c)?;
    let (global_theta, _) = hf.rope(Some("full_attention"), None)?;
    let (local_theta, _) = hf.rope(Some("sliding_attention"), Some("rope_local_base_freq"))?;
    c.rope_theta = global_theta.unwrap_or(1_000_000.0);
    let v = &mut c.variant;
    v.qk_norm = true;
    v.attn_softcap = hf.f32("attn_logit_softcapping")?;
    v.final_softcap = hf.f32("final_logit_softcapping")?;
    v.local_rope_theta = Some(local_theta.unwrap_or(10_000.0));
    v.sliding_window = Some(hf.usize("sliding_window")?.unwrap_or(4096));
    v.layer_attention = match hf.layer_types()? {
        Some(t) => t,
        None => sliding_pattern(
            c.num_layers,
            hf.usize("sliding_window_pattern")?.unwrap_or(6),
        ),
    };
    Ok(())
}

fn read_gguf(file: &GgufFile, prefix: &str, c: &mut LlamaConfig) -> Result<(), ModelError> {
    gguf_common(file, prefix, c, 6)?;
    c.variant.qk_norm = true;
    c.variant.attention_scale = Some(gguf_query_scale(c, 62));
    c.variant.local_rope_theta = Some(
        super::gguf_optional(
            file,
            &format!("{prefix}.rope.freq_base_swa"),
            GgufFile::get_f32,
        )?
        .unwrap_or(10_000.0),
    );
    super::gguf_rope_scaling(file, prefix, c)
}

fn write_hf(c: &LlamaConfig, keys: &mut super::HfKeys) -> Result<(), String> {
    if !c.variant.qk_norm {
        return Err("a Gemma 3 config has q/k norms".into());
    }
    super::gemma2::write_gemma_common(c, keys)?;
    keys.insert(
        "rope_local_base_freq".into(),
        c.variant.local_rope_theta.unwrap_or(c.rope_theta).into(),
    );
    Ok(())
}

fn gguf_keys(c: &LlamaConfig) -> Result<super::GgufKeys, String> {
    super::gemma2::check_gguf_scale(c, 62)?;
    super::check_gguf_pattern(c, 6)?;
    let v = &c.variant;
    if v.attn_softcap.is_some() {
        return Err("llama.cpp does not soft-cap Gemma 3's attention; this model does".into());
    }
    let mut keys = vec![(
        "rope.freq_base_swa",
        GgufValue::F32(v.local_rope_theta.unwrap_or(c.rope_theta)),
    )];
    if let Some(w) = v.sliding_window {
        keys.push(("attention.sliding_window", GgufValue::U32(w as u32)));
    }
    if let Some(cap) = v.final_softcap {
        keys.push(("final_logit_softcapping", GgufValue::F32(cap)));
    }
    Ok(keys)
}

/// Gemma 3.
pub(crate) static FAMILY: Family = Family {
    architecture: Architecture::Gemma3,
    name: "gemma3",
    hf_classes: &["Gemma3ForCausalLM"],
    gguf_names: &["gemma3"],
    hf: HfLayout {
        ffn_norm: "pre_feedforward_layernorm",
        fused: false,
        norm_offset: 1.0,
        tie_default: true,
        moe_names: super::MLP_NAMES,
    },
    gguf: super::neox_gguf("gemma3"),
    read_hf,
    read_gguf,
    gguf_keys,
    hf_model_type: "gemma3_text",
    write_hf,
};
