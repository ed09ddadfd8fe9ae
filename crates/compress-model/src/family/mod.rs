//! Model families as descriptions.
//!
//! One decoder ([`LlamaModel`](crate::llama::LlamaModel)) runs every family; what differs — the
//! names a family's files use, which norms it has and where, its activation, its attention
//! variants, how its config files spell all that — is one [`Family`] value per family, in a file
//! of its own (`llama.rs`, `gemma2.rs`, …), registered in [`FAMILIES`]. Loaders and writers look
//! a family up by the name a file gives it ([`by_hf_class`], [`by_gguf_name`]) or by the
//! model's [`Architecture`] ([`family_of`]).
//!
//! Adding a family: write `family/<name>.rs` with a `pub(crate) static FAMILY: Family` (its
//! names, norm layout, and the two functions that read its config keys), add an
//! [`Architecture`] variant, and list it in [`FAMILIES`]. docs/ARCHITECTURE.md walks through it.

mod gemma2;
mod gemma3;
pub(crate) mod hf_config;
mod llama;
mod mistral;
mod mixtral;
mod moe;
mod phi3;
mod qwen2;
mod qwen2_moe;
mod qwen3;
mod qwen3_moe;

pub use hf_config::HfConfigJson;

use crate::config::{Architecture, LlamaConfig, RopeLayout, RopeScaling};
use crate::error::ModelError;
use crate::gguf::{GgufFile, GgufValue};

/// How a family's Hugging Face checkpoints lay out a block's tensors.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct HfLayout {
    /// Name of the norm before the MLP (`post_attention_layernorm` in llama, whose norm after
    /// attention *is* the MLP's input norm; `pre_feedforward_layernorm` in Gemma, where
    /// `post_attention_layernorm` is the sandwich norm of the attention output).
    pub ffn_norm: &'static str,
    /// q/k/v stored as one `self_attn.qkv_proj` and gate/up as one `mlp.gate_up_proj` (Phi-3),
    /// split into separate projections on load.
    pub fused: bool,
    /// Stored norm gains `w` mean `offset + w` (Gemma's `1 + w`; 0 elsewhere).
    pub norm_offset: f32,
    /// `tie_word_embeddings` when `config.json` does not say (transformers' per-family default).
    pub tie_default: bool,
    /// Where a mixture-of-experts block's tensors live: the module (`block_sparse_moe` in
    /// Mixtral, `mlp` in Qwen-MoE, which holds `gate` = the router and `experts.{e}.…`) and the
    /// names of an expert's gate, up and down projections (`w1`, `w3`, `w2` in Mixtral).
    pub moe_names: (&'static str, [&'static str; 3]),
}

/// The Hugging Face module path of the linear `id` within its layer (`self_attn.q_proj`,
/// `block_sparse_moe.experts.3.w2`, `mlp.shared_expert_gate`), in `family`'s naming.
pub(crate) fn hf_module(family: &Family, id: compress_core::layer_id::LinearId) -> String {
    use compress_core::layer_id::{Expert, LinearKind};
    let (moe, names) = family.hf.moe_names;
    let expert_name = |k: LinearKind| match k {
        LinearKind::Gate => names[0],
        LinearKind::Up => names[1],
        _ => names[2],
    };
    match (id.expert_ref(), id.kind()) {
        (None, LinearKind::Router) => format!("{moe}.gate"),
        (None, k) if k.is_attention() => format!("self_attn.{}", k.short_name()),
        (None, k) => format!("mlp.{}", k.short_name()),
        (Some(Expert::Shared), LinearKind::Router) => "mlp.shared_expert_gate".into(),
        (Some(Expert::Shared), k) => format!("mlp.shared_expert.{}", k.short_name()),
        (Some(Expert::Routed(e)), k) => format!("{moe}.experts.{e}.{}", expert_name(k)),
    }
}

/// The MoE names of families that follow the Qwen/llama naming.
pub(crate) const MLP_NAMES: (&str, [&str; 3]) = ("mlp", ["gate_proj", "up_proj", "down_proj"]);

/// The Hugging Face layout of llama and of the families that keep it (change fields with
/// struct update syntax).
pub(crate) const LLAMA_HF: HfLayout = HfLayout {
    ffn_norm: "post_attention_layernorm",
    fused: false,
    norm_offset: 0.0,
    tie_default: false,
    moe_names: MLP_NAMES,
};

/// llama.cpp's layout for the NeoX-RoPE families written under `write_as`.
pub(crate) const fn neox_gguf(write_as: &'static str) -> GgufLayout {
    GgufLayout {
        write_as,
        rope_layout: RopeLayout::NeoX,
        fused: false,
    }
}

/// How a family's GGUF files (llama.cpp's converter) lay out a block's tensors.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct GgufLayout {
    /// `general.architecture` written on export (llama.cpp converts Mistral as `llama`).
    pub write_as: &'static str,
    /// RoPE pairing the file's q/k rows assume (llama.cpp's `LLAMA_ROPE_TYPE_NORM` = interleaved,
    /// `NEOX` = halves).
    pub rope_layout: RopeLayout,
    /// q/k/v stored as one `attn_qkv` and gate/up as one `ffn_up` of twice the width (Phi-3).
    pub fused: bool,
}

/// GGUF metadata a family writes: `(key after "{arch}.", value)` pairs.
pub type GgufKeys = Vec<(&'static str, GgufValue)>;

/// A model family: everything the loaders and writers need to know about it.
#[derive(Debug)]
pub struct Family {
    /// The decoder structure it maps to.
    pub architecture: Architecture,
    /// Short name (`qwen3`), as in messages and docs.
    pub name: &'static str,
    /// `architectures[0]` values of `config.json` that are this family.
    pub hf_classes: &'static [&'static str],
    /// `general.architecture` values of GGUF files that are this family (the first is written).
    pub gguf_names: &'static [&'static str],
    /// Hugging Face tensor layout.
    pub hf: HfLayout,
    /// GGUF tensor layout.
    pub gguf: GgufLayout,
    /// Reads the family's own `config.json` keys into `config` (its [`Variant`](crate::config::Variant),
    /// q/k/v bias, sliding windows); the common keys are already read.
    pub read_hf: fn(&HfConfigJson, &mut LlamaConfig) -> Result<(), ModelError>,
    /// Reads the family's own GGUF metadata (`{arch}.…` keys, `prefix` is the arch name) into
    /// `config`; the common keys are already read.
    pub read_gguf: fn(&GgufFile, &str, &mut LlamaConfig) -> Result<(), ModelError>,
    /// The family's own GGUF metadata for `config` (keys after `{arch}.`), or why llama.cpp
    /// could not run it as this model (a structure its loader fixes differently).
    pub gguf_keys: fn(&LlamaConfig) -> Result<GgufKeys, String>,
    /// `model_type` of the family's `config.json`.
    pub hf_model_type: &'static str,
    /// Writes the family's own `config.json` keys for `config` (the inverse of
    /// [`Self::read_hf`]; the common keys are written by the caller), or says why transformers
    /// could not express it.
    pub write_hf: fn(&LlamaConfig, &mut HfKeys) -> Result<(), String>,
}

/// `config.json` keys a family writes.
pub type HfKeys = serde_json::Map<String, serde_json::Value>;

/// Every supported family, in the order messages list them.
pub static FAMILIES: &[&Family] = &[
    &llama::FAMILY,
    &mistral::FAMILY,
    &qwen2::FAMILY,
    &qwen3::FAMILY,
    &gemma2::FAMILY,
    &gemma3::FAMILY,
    &phi3::FAMILY,
    &mixtral::FAMILY,
    &qwen2_moe::FAMILY,
    &qwen3_moe::FAMILY,
];

/// The family a `config.json`'s `architectures[0]` names.
pub fn by_hf_class(class: &str) -> Result<&'static Family, ModelError> {
    FAMILIES
        .iter()
        .copied()
        .find(|f| f.hf_classes.contains(&class))
        .ok_or_else(|| ModelError::UnknownArchitecture(class.to_string()))
}

/// The family a GGUF's `general.architecture` names.
pub fn by_gguf_name(name: &str) -> Result<&'static Family, ModelError> {
    FAMILIES
        .iter()
        .copied()
        .find(|f| f.gguf_names.contains(&name))
        .ok_or_else(|| ModelError::UnknownArchitecture(name.to_string()))
}

/// The family of a decoder built for `architecture`.
pub fn family_of(architecture: Architecture) -> &'static Family {
    FAMILIES
        .iter()
        .copied()
        .find(|f| f.architecture == architecture)
        .expect("every architecture has a registered family")
}

/// The supported families as a message lists them: `llama (LlamaForCausalLM, GGUF llama), …`.
pub fn supported() -> String {
    FAMILIES
        .iter()
        .map(|f| {
            format!(
                "{} ({}; GGUF {})",
                f.name,
                f.hf_classes.join(", "),
                f.gguf_names.join(", ")
            )
        })
        .collect::<Vec<_>>()
        .join("; ")
}

/// `Ok(None)` when `key` is absent; the typed value, or a wrong-type error, when present.
pub(crate) fn gguf_optional<'a, T>(
    file: &'a GgufFile,
    key: &str,
    get: impl Fn(&'a GgufFile, &str) -> Result<T, crate::gguf::GgufError>,
) -> Result<Option<T>, ModelError> {
    match file.get(key) {
        None => Ok(None),
        Some(_) => Ok(Some(get(file, key)?)),
    }
}

/// Reads llama.cpp's RoPE scaling keys (`{arch}.rope.scaling.type` = `linear` / `yarn`, its
/// `factor` and `original_context_length`). Per-dimension factors stored as tensors
/// (`rope_freqs.weight`) are read by the loader.
pub(crate) fn gguf_rope_scaling(
    file: &GgufFile,
    prefix: &str,
    c: &mut LlamaConfig,
) -> Result<(), ModelError> {
    let key = |k: &str| format!("{prefix}.rope.scaling.{k}");
    let kind = gguf_optional(file, &key("type"), GgufFile::get_str)?;
    let factor = gguf_optional(file, &key("factor"), GgufFile::get_f32)?;
    let original = gguf_optional(file, &key("original_context_length"), GgufFile::get_usize)?;
    let need_factor = || {
        factor.ok_or_else(|| ModelError::InvalidConfig(format!("`{}` is missing", key("factor"))))
    };
    c.variant.rope_scaling = match kind {
        None | Some("none") => None,
        Some("linear") => Some(RopeScaling::Linear {
            factor: need_factor()?,
        }),
        Some("yarn") => Some(RopeScaling::Yarn {
            factor: need_factor()?,
            original_max_position_embeddings: original.unwrap_or(c.max_seq_len),
            beta_fast: gguf_optional(file, &key("yarn_beta_fast"), GgufFile::get_f32)?
                .unwrap_or(32.0),
            beta_slow: gguf_optional(file, &key("yarn_beta_slow"), GgufFile::get_f32)?
                .unwrap_or(1.0),
            attention_factor: gguf_optional(file, &key("attn_factor"), GgufFile::get_f32)?,
        }),
        Some(other) => {
            return Err(ModelError::InvalidConfig(format!(
                "`{}` = {other} is not supported (linear, yarn)",
                key("type")
            )))
        }
    };
    Ok(())
}

/// No keys beyond the common ones.
pub(crate) fn no_gguf_keys(_: &LlamaConfig) -> Result<GgufKeys, String> {
    Ok(Vec::new())
}

/// Checks that `c`'s sliding layers are the ones llama.cpp's fixed pattern makes sliding for
/// this family (`pattern`, see [`gemma2::sliding_pattern`]).
pub(crate) fn check_gguf_pattern(c: &LlamaConfig, pattern: usize) -> Result<(), String> {
    let want = gemma2::sliding_pattern(c.num_layers, pattern);
    let have: Vec<_> = (0..c.num_layers)
        .map(|l| c.variant.attention_of(l))
        .collect();
    if have != want {
        return Err(format!(
            "llama.cpp makes every layer but each {pattern}th sliding for this family; this \
             model's layer kinds are {have:?}"
        ));
    }
    Ok(())
}

/// Every layer sliding when `{arch}.attention.sliding_window` is present (Mistral, Phi-3).
pub(crate) fn gguf_sliding_all(
    file: &GgufFile,
    prefix: &str,
    c: &mut LlamaConfig,
) -> Result<(), ModelError> {
    let window = gguf_optional(
        file,
        &format!("{prefix}.attention.sliding_window"),
        GgufFile::get_usize,
    )?;
    if let Some(w) = window.filter(|&w| w > 0) {
        c.variant.sliding_window = Some(w);
        c.variant.layer_attention = vec![crate::config::LayerAttention::Sliding; c.num_layers];
    }
    gguf_rope_scaling(file, prefix, c)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_architecture_has_one_family_and_names_are_unique() {
        let mut hf = std::collections::HashSet::new();
        let mut gguf = std::collections::HashSet::new();
        for f in FAMILIES {
            assert_eq!(family_of(f.architecture).name, f.name);
            for c in f.hf_classes {
                assert!(hf.insert(*c), "{c} registered twice");
            }
            for g in f.gguf_names {
                assert!(gguf.insert(*g), "{g} registered twice");
            }
        }
        let e = by_hf_class("GPT2LMHeadModel").unwrap_err().to_string();
        assert!(
            e.contains("GPT2LMHeadModel") && e.contains("Qwen3ForCausalLM"),
            "{e}"
        );
    }
}
