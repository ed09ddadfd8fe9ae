//! Gemma 2 (Gemma Team 2024, arXiv:2408.00118): `(1 + w)` RMSNorms before *and after* attention
//! and the MLP, a GELU-tanh gated MLP, embeddings scaled by `√hidden`, queries scaled by
//! `query_pre_attn_scalar^−½`, attention scores and final logits soft-capped (`c·tanh(x/c)`),
//! and a sliding window on every other layer (the even ones). GGUF files store the norms with the
//! 1 already added.

use super::{Family, HfConfigJson, HfLayout};
use crate::config::{Activation, Architecture, LayerAttention, LlamaConfig};
use crate::error::ModelError;
use crate::gguf::{GgufFile, GgufValue};

/// The activation a Gemma config names (`hidden_activation`, or the older `hidden_act`).
pub(super) fn gemma_activation(hf: &HfConfigJson) -> Result<Activation, ModelError> {
    let name = match hf.str("hidden_activation")? {
        Some(a) => Some(a),
        None => hf.str("hidden_act")?,
    };
    match name.unwrap_or("gelu_pytorch_tanh") {
        "gelu_pytorch_tanh" | "gelu_new" | "gelu_fast" => Ok(Activation::GeluTanh),
        "silu" | "swish" => Ok(Activation::Silu),
        other => Err(ModelError::InvalidConfig(format!(
            "hidden activation `{other}` is not supported (gelu_pytorch_tanh, silu)"
        ))),
    }
}

/// The parts Gemma 2 and 3 share: sandwich norms, GELU-tanh, √d embeddings, the query scale.
pub(super) fn gemma_common(hf: &HfConfigJson, c: &mut LlamaConfig) -> Result<(), ModelError> {
    let v = &mut c.variant;
    v.sandwich_norms = true;
    v.activation = gemma_activation(hf)?;
    v.embedding_scale = Some((c.hidden_size as f32).sqrt());
    let scalar = hf.f32("query_pre_attn_scalar")?.unwrap_or(256.0);
    if !(scalar.is_finite() && scalar > 0.0) {
        return Err(ModelError::InvalidConfig(format!(
            "query_pre_attn_scalar ({scalar}) must be positive"
        )));
    }
    v.attention_scale = Some((1.0 / (scalar as f64).sqrt()) as f32);
    Ok(())
}

/// Layer `l` is sliding unless `(l + 1)` is a multiple of `pattern` (transformers' and
/// llama.cpp's rule; Gemma 2 uses 2, Gemma 3 uses 6).
pub(super) fn sliding_pattern(layers: usize, pattern: usize) -> Vec<LayerAttention> {
    (0..layers)
        .map(|l| {
            if pattern == 0 || !(l + 1).is_multiple_of(pattern) {
                LayerAttention::Sliding
            } else {
                LayerAttention::Global
            }
        })
        .collect()
}

fn read_hf(hf: &HfConfigJson, c: &mut LlamaConfig) -> Result<(), ModelError> {
    gemma_common(hf, c)?;
    let v = &mut c.variant;
    v.attn_softcap = match hf.get("attn_logit_softcapping") {
        None if hf.contains("attn_logit_softcapping") => None,
        _ => Some(hf.f32("attn_logit_softcapping")?.unwrap_or(50.0)),
    };
    v.final_softcap = match hf.get("final_logit_softcapping") {
        None if hf.contains("final_logit_softcapping") => None,
        _ => Some(hf.f32("final_logit_softcapping")?.unwrap_or(30.0)),
    };
    v.sliding_window = Some(hf.usize("sliding_window")?.unwrap_or(4096));
    v.layer_attention = match hf.layer_types()? {
        Some(t) => t,
        None => sliding_pattern(c.num_layers, 2),
    };
    Ok(())
}

/// llama.cpp's query scale for Gemma 2/3: `1/√head_dim`, except for the 27B models
/// (`layers_27b` blocks), which use `1/√(hidden/heads)` — it is not stored in the file.
pub(super) fn gguf_query_scale(c: &LlamaConfig, layers_27b: usize) -> f32 {
    let d = if c.num_layers == layers_27b {
        (c.hidden_size / c.num_heads) as f64
    } else {
        c.head_dim as f64
    };
    (1.0 / d.sqrt()) as f32
}

/// The GGUF keys of both Gemma generations: sandwich norms, GELU, √d embeddings, the window.
pub(super) fn gguf_common(
    file: &GgufFile,
    prefix: &str,
    c: &mut LlamaConfig,
    pattern: usize,
) -> Result<(), ModelError> {
    let v = &mut c.variant;
    v.sandwich_norms = true;
    v.activation = Activation::GeluTanh;
    v.embedding_scale = Some((c.hidden_size as f32).sqrt());
    v.sliding_window = super::gguf_optional(
        file,
        &format!("{prefix}.attention.sliding_window"),
        GgufFile::get_usize,
    )?;
    if v.sliding_window.is_some() {
        v.layer_attention = sliding_pattern(c.num_layers, pattern);
    }
    Ok(())
}

fn read_gguf(file: &GgufFile, prefix: &str, c: &mut LlamaConfig) -> Result<(), ModelError> {
    gguf_common(file, prefix, c, 2)?;
    c.variant.attention_scale = Some(gguf_query_scale(c, 46));
    let cap = |k: &str| super::gguf_optional(file, &format!("{prefix}.{k}"), GgufFile::get_f32);
    c.variant.attn_softcap = cap("attn_logit_softcapping")?;
    c.variant.final_softcap = cap("final_logit_softcapping")?;
    Ok(())
}

/// The query scale llama.cpp will use must be this model's.
pub(super) fn check_gguf_scale(c: &LlamaConfig, layers_27b: usize) -> Result<(), String> {
    let want = gguf_query_scale(c, layers_27b);
    let have = crate::llama::build::attention_scale(c);
    if (have - want).abs() > 1e-6 * want {
        return Err(format!(
            "llama.cpp scales this family's queries by {want} (1/√head_dim, or 1/√(hidden/heads) \
             for the 27B model) and stores no scale; this model uses {have} \
             (query_pre_attn_scalar)"
        ));
    }
    Ok(())
}

fn gguf_keys(c: &LlamaConfig) -> Result<super::GgufKeys, String> {
    check_gguf_scale(c, 46)?;
    super::check_gguf_pattern(c, 2)?;
    let v = &c.variant;
    let (Some(attn), Some(last)) = (v.attn_softcap, v.final_softcap) else {
        return Err(
            "llama.cpp soft-caps Gemma 2's attention and logits; this model does not".into(),
        );
    };
    let mut keys = vec![
        ("attn_logit_softcapping", GgufValue::F32(attn)),
        ("final_logit_softcapping", GgufValue::F32(last)),
    ];
    if let Some(w) = v.sliding_window {
        keys.push(("attention.sliding_window", GgufValue::U32(w as u32)));
    }
    Ok(keys)
}

/// The keys Gemma 2 and 3 share: activation, query scale, window and layer kinds.
pub(super) fn write_gemma_common(c: &LlamaConfig, keys: &mut super::HfKeys) -> Result<(), String> {
    let v = &c.variant;
    if !v.sandwich_norms || v.embedding_scale != Some((c.hidden_size as f32).sqrt()) {
        return Err("a Gemma config has sandwich norms and √hidden embedding scaling".into());
    }
    let scale = crate::llama::build::attention_scale(c) as f64;
    keys.insert(
        "hidden_activation".into(),
        match v.activation {
            Activation::GeluTanh => "gelu_pytorch_tanh",
            Activation::Silu => "silu",
        }
        .into(),
    );
    // scale = query_pre_attn_scalar^(-1/2); integers in every released config.
    let scalar = 1.0 / (scale * scale);
    let value = if (scalar - scalar.round()).abs() < 1e-3 {
        // transformers types it as an integer.
        serde_json::Value::from(scalar.round() as u64)
    } else {
        scalar.into()
    };
    keys.insert("query_pre_attn_scalar".into(), value);
    keys.insert("sliding_window".into(), v.sliding_window.into());
    keys.insert("layer_types".into(), super::hf_config::layer_types_json(c));
    keys.insert("attn_logit_softcapping".into(), v.attn_softcap.into());
    keys.insert("final_logit_softcapping".into(), v.final_softcap.into());
    Ok(())
}

fn write_hf(c: &LlamaConfig, keys: &mut super::HfKeys) -> Result<(), String> {
    if c.variant.qk_norm {
        return Err("a Gemma 2 config has no q/k norms".into());
    }
    write_gemma_common(c, keys)
}

/// Gemma 2.
pub(crate) static FAMILY: Family = Family {
    architecture: Architecture::Gemma2,
    name: "gemma2",
    hf_classes: &["Gemma2ForCausalLM"],
    gguf_names: &["gemma2"],
    hf: HfLayout {
        ffn_norm: "pre_feedforward_layernorm",
        fused: false,
        norm_offset: 1.0,
        tie_default: true,
        moe_names: super::MLP_NAMES,
    },
    gguf: super::neox_gguf("gemma2"),
    read_hf,
    read_gguf,
    gguf_keys,
    hf_model_type: "gemma2",
    write_hf,
};
