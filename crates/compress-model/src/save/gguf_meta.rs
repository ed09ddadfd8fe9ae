//! GGUF metadata of an export: RoPE scaling as llama.cpp reads it, the tokenizer's
//! `tokenizer.ggml.*` keys, and `general.file_type`.

use super::gguf::TensorWritten;
use crate::config::{LlamaConfig, RopeScaling};
use crate::error::ModelError;
use crate::gguf::{GgmlType, GgufArray, GgufValue, GgufWriter};
use crate::tokenizer::GgufVocab;

/// Writes `c`'s RoPE scaling the way llama.cpp reads it: keys for linear and YaRN scaling, and
/// per-dimension factors as tensors — `rope_freqs.weight` (divisors of `ω_i`; Llama 3.1's rule
/// becomes these, as in llama.cpp's converter) and Phi-3's `rope_factors_short.weight` /
/// `rope_factors_long.weight` with `rope.scaling.attn_factor`. Returns the tensors to add.
pub(super) fn rope_scaling(
    w: &mut GgufWriter,
    key: &dyn Fn(&str) -> String,
    c: &LlamaConfig,
) -> Result<Vec<(&'static str, Vec<f32>)>, ModelError> {
    let s = |x: &str| GgufValue::String(x.into());
    let Some(scaling) = &c.variant.rope_scaling else {
        return Ok(Vec::new());
    };
    match scaling {
        RopeScaling::Linear { factor } => {
            w.set(&key("rope.scaling.type"), s("linear"));
            w.set(&key("rope.scaling.factor"), GgufValue::F32(*factor));
            Ok(Vec::new())
        }
        RopeScaling::Yarn {
            factor,
            original_max_position_embeddings,
            beta_fast,
            beta_slow,
            attention_factor,
        } => {
            w.set(&key("rope.scaling.type"), s("yarn"));
            w.set(&key("rope.scaling.factor"), GgufValue::F32(*factor));
            w.set(
                &key("rope.scaling.original_context_length"),
                GgufValue::U32(*original_max_position_embeddings as u32),
            );
            w.set(
                &key("rope.scaling.yarn_beta_fast"),
                GgufValue::F32(*beta_fast),
            );
            w.set(
                &key("rope.scaling.yarn_beta_slow"),
                GgufValue::F32(*beta_slow),
            );
            if let Some(a) = attention_factor {
                w.set(&key("rope.scaling.attn_factor"), GgufValue::F32(*a));
            }
            Ok(Vec::new())
        }
        RopeScaling::Llama3 { .. } | RopeScaling::Divisors { .. } => {
            let rot = c.rotary_dims();
            let (plain, _) = crate::llama::rope::inverse_frequencies(rot, c.rope_theta, None);
            let (scaled, _) =
                crate::llama::rope::inverse_frequencies(rot, c.rope_theta, Some(scaling));
            let divisors = plain
                .iter()
                .zip(&scaled)
                .map(|(p, q)| (p / q) as f32)
                .collect();
            Ok(vec![("rope_freqs.weight", divisors)])
        }
        RopeScaling::LongRope {
            short_factor,
            long_factor,
            original_max_position_embeddings,
            ..
        } => {
            let (_, attn) = crate::llama::rope::inverse_frequencies(
                c.rotary_dims(),
                c.rope_theta,
                Some(scaling),
            );
            w.set(
                &key("rope.scaling.original_context_length"),
                GgufValue::U32(*original_max_position_embeddings as u32),
            );
            w.set(
                &key("rope.scaling.attn_factor"),
                GgufValue::F32(attn as f32),
            );
            Ok(vec![
                ("rope_factors_long.weight", long_factor.clone()),
                ("rope_factors_short.weight", short_factor.clone()),
            ])
        }
    }
}

pub(super) fn set_vocab(w: &mut GgufWriter, v: &GgufVocab) {
    let s = |x: &str| GgufValue::String(x.to_string());
    w.set("tokenizer.ggml.model", s(&v.model));
    if let Some(pre) = &v.pre {
        w.set("tokenizer.ggml.pre", s(pre));
    }
    w.set(
        "tokenizer.ggml.tokens",
        GgufValue::Array(GgufArray::String(v.tokens.clone())),
    );
    if let Some(scores) = &v.scores {
        w.set(
            "tokenizer.ggml.scores",
            GgufValue::Array(GgufArray::F32(scores.clone())),
        );
    }
    if let Some(types) = &v.token_types {
        w.set(
            "tokenizer.ggml.token_type",
            GgufValue::Array(GgufArray::I32(types.clone())),
        );
    }
    if let Some(merges) = &v.merges {
        w.set(
            "tokenizer.ggml.merges",
            GgufValue::Array(GgufArray::String(merges.clone())),
        );
    }
    for (k, id) in [
        ("bos_token_id", v.bos_id),
        ("eos_token_id", v.eos_id),
        ("unknown_token_id", v.unk_id),
        ("padding_token_id", v.pad_id),
    ] {
        if let Some(id) = id {
            w.set(&format!("tokenizer.ggml.{k}"), GgufValue::U32(id));
        }
    }
    for (k, flag) in [
        ("add_bos_token", v.add_bos),
        ("add_eos_token", v.add_eos),
        ("add_space_prefix", v.add_space_prefix),
    ] {
        if let Some(flag) = flag {
            w.set(&format!("tokenizer.ggml.{k}"), GgufValue::Bool(flag));
        }
    }
}

/// `general.file_type` (llama.cpp's `llama_ftype`) of the most common type among the 2-D
/// weights: 0 all F32, 1 F16, 2 Q4_0, 3 Q4_1, 7 Q8_0, 8 Q5_0, 9 Q5_1, 10 Q2_K, 11 Q3_K_S,
/// 14 Q4_K_S, 16 Q5_K_S, 18 Q6_K, 32 BF16 (the `_S` mixes are "mostly this k-quant").
pub(super) fn file_type(tensors: &[TensorWritten]) -> u32 {
    let mut counts: Vec<(GgmlType, usize)> = Vec::new();
    for t in tensors
        .iter()
        .filter(|t| t.name.ends_with(".weight") && !t.name.contains("norm"))
    {
        match counts.iter_mut().find(|(ty, _)| *ty == t.ty) {
            Some(c) => c.1 += 1,
            None => counts.push((t.ty, 1)),
        }
    }
    let quantized = counts
        .iter()
        .filter(|(ty, _)| ty.is_quantized())
        .max_by_key(|(_, n)| *n);
    let ty = quantized
        .or_else(|| counts.iter().max_by_key(|(_, n)| *n))
        .map_or(GgmlType::F32, |(ty, _)| *ty);
    match ty {
        GgmlType::F16 => 1,
        GgmlType::Q4_0 => 2,
        GgmlType::Q4_1 => 3,
        GgmlType::Q8_0 => 7,
        GgmlType::Q5_0 => 8,
        GgmlType::Q5_1 => 9,
        GgmlType::Q2_K => 10,
        GgmlType::Q3_K => 11,
        GgmlType::Q4_K => 14,
        GgmlType::Q5_K => 16,
        GgmlType::Q6_K => 18,
        GgmlType::BF16 => 32,
        _ => 0,
    }
}
