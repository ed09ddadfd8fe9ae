//! Config keys shared by the mixture-of-experts families.

use super::HfConfigJson;
use crate::config::{LlamaConfig, MoeConfig};
use crate::error::ModelError;
use crate::gguf::GgufFile;

/// The MoE config from `config.json`: the expert count (`num_local_experts` or `num_experts`),
/// `num_experts_per_tok`, the expert width (`moe_intermediate_size`, else `intermediate_size`
/// as in Mixtral), `norm_topk_prob` (default `normalize`), the shared expert's width, and the
/// dense layers (`mlp_only_layers`, and the layers `decoder_sparse_step` skips).
pub(super) fn hf_moe(
    hf: &HfConfigJson,
    c: &LlamaConfig,
    normalize: bool,
) -> Result<MoeConfig, ModelError> {
    let experts = match hf.usize("num_local_experts")? {
        Some(n) => n,
        None => hf.required_usize("num_experts")?,
    };
    let step = hf.usize("decoder_sparse_step")?.unwrap_or(1).max(1);
    let mut dense_layers: Vec<usize> = match hf.get("mlp_only_layers") {
        None => Vec::new(),
        Some(v) => v
            .as_array()
            .and_then(|a| a.iter().map(|x| x.as_u64().map(|x| x as usize)).collect())
            .ok_or_else(|| {
                ModelError::InvalidConfig(format!(
                    "`mlp_only_layers` must be a list of layers, found {v}"
                ))
            })?,
    };
    dense_layers.extend((0..c.num_layers).filter(|l| !(l + 1).is_multiple_of(step)));
    dense_layers.sort_unstable();
    dense_layers.dedup();
    Ok(MoeConfig {
        num_experts: experts,
        experts_per_token: hf.required_usize("num_experts_per_tok")?,
        expert_intermediate_size: match hf.usize("moe_intermediate_size")? {
            Some(f) => f,
            None => c.intermediate_size,
        },
        normalize_weights: hf.bool("norm_topk_prob")?.unwrap_or(normalize),
        shared_expert_intermediate_size: hf.usize("shared_expert_intermediate_size")?,
        dense_layers,
    })
}

/// The MoE config from llama.cpp's keys (`{arch}.expert_count`, `expert_used_count`,
/// `expert_feed_forward_length`, `expert_shared_feed_forward_length`), `None` without experts.
/// llama.cpp fixes the renormalization per architecture (`normalize`).
pub(super) fn gguf_moe(
    file: &GgufFile,
    prefix: &str,
    c: &LlamaConfig,
    normalize: bool,
) -> Result<Option<MoeConfig>, ModelError> {
    let key = |k: &str| format!("{prefix}.{k}");
    let get = |k: &str| super::gguf_optional(file, &key(k), GgufFile::get_usize);
    let Some(experts) = get("expert_count")?.filter(|&n| n > 0) else {
        return Ok(None);
    };
    let used = get("expert_used_count")?.ok_or_else(|| {
        ModelError::InvalidConfig(format!("`{}` is missing", key("expert_used_count")))
    })?;
    Ok(Some(MoeConfig {
        num_experts: experts,
        experts_per_token: used,
        expert_intermediate_size: get("expert_feed_forward_length")?.unwrap_or(c.intermediate_size),
        normalize_weights: normalize,
        shared_expert_intermediate_size: get("expert_shared_feed_forward_length")?,
        dense_layers: Vec::new(),
    }))
}

/// The MoE keys llama.cpp reads.
pub(super) fn gguf_moe_keys(c: &LlamaConfig) -> Result<super::GgufKeys, String> {
    use crate::gguf::GgufValue;
    let Some(m) = &c.variant.moe else {
        return Err("a mixture-of-experts family without experts".into());
    };
    if !m.dense_layers.is_empty() {
        return Err("llama.cpp's MoE architectures have no dense layers between MoE ones".into());
    }
    let mut keys = vec![
        ("expert_count", GgufValue::U32(m.num_experts as u32)),
        (
            "expert_used_count",
            GgufValue::U32(m.experts_per_token as u32),
        ),
        (
            "expert_feed_forward_length",
            GgufValue::U32(m.expert_intermediate_size as u32),
        ),
    ];
    if let Some(f) = m.shared_expert_intermediate_size {
        keys.push((
            "expert_shared_feed_forward_length",
            GgufValue::U32(f as u32),
        ));
    }
    Ok(keys)
}

/// The MoE keys of a `config.json` (Qwen naming; Mixtral renames two of them).
pub(super) fn write_hf_moe(c: &LlamaConfig, keys: &mut super::HfKeys) -> Result<(), String> {
    let Some(m) = &c.variant.moe else {
        return Err("a mixture-of-experts family without experts".into());
    };
    keys.insert("num_experts".into(), m.num_experts.into());
    keys.insert("num_experts_per_tok".into(), m.experts_per_token.into());
    keys.insert(
        "moe_intermediate_size".into(),
        m.expert_intermediate_size.into(),
    );
    keys.insert("norm_topk_prob".into(), m.normalize_weights.into());
    keys.insert("decoder_sparse_step".into(), 1.into());
    keys.insert("mlp_only_layers".into(), m.dense_layers.clone().into());
    if let Some(f) = m.shared_expert_intermediate_size {
        keys.insert("shared_expert_intermediate_size".into(), f.into());
    }
    Ok(())
}
