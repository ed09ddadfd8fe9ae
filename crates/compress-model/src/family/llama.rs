//! Llama 1/2/3.x (and SmolLM, TinyLlama, llama2.c models): the baseline decoder. Llama 3.1+
//! checkpoints scale RoPE (`rope_scaling` of type `llama3`, read with the common keys).

use super::{Family, GgufLayout, HfConfigJson};
use crate::config::{Architecture, LlamaConfig, RopeLayout};
use crate::error::ModelError;

/// Refuses llama variants the decoder does not run.
fn read_hf(hf: &HfConfigJson, _c: &mut LlamaConfig) -> Result<(), ModelError> {
    if hf.bool("mlp_bias")? == Some(true) {
        return Err(ModelError::InvalidConfig(
            "`mlp_bias: true` (biases on the MLP projections) is not supported".into(),
        ));
    }
    Ok(())
}

fn write_hf(_: &LlamaConfig, keys: &mut super::HfKeys) -> Result<(), String> {
    keys.insert("mlp_bias".into(), false.into());
    Ok(())
}

/// RoPE scaling keys; a file with `llama.expert_count` is a Mixtral (llama.cpp converts Mixtral
/// as `llama`, renormalizing the chosen experts).
fn read_gguf(
    file: &crate::gguf::GgufFile,
    prefix: &str,
    c: &mut LlamaConfig,
) -> Result<(), ModelError> {
    if let Some(moe) = super::moe::gguf_moe(file, prefix, c, true)? {
        c.architecture = Architecture::Mixtral;
        c.variant.moe = Some(moe);
    }
    super::gguf_rope_scaling(file, prefix, c)
}

/// Llama.
pub(crate) static FAMILY: Family = Family {
    architecture: Architecture::Llama,
    name: "llama",
    hf_classes: &["LlamaForCausalLM"],
    gguf_names: &["llama"],
    hf: super::LLAMA_HF,
    gguf: GgufLayout {
        write_as: "llama",
        rope_layout: RopeLayout::Interleaved,
        fused: false,
    },
    read_hf,
    read_gguf,
    gguf_keys: super::no_gguf_keys,
    hf_model_type: "llama",
    write_hf,
};
