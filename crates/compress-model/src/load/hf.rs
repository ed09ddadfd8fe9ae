//! Loading Hugging Face checkpoints: a directory with `config.json`, `model.safetensors` (or
//! shards listed in `model.safetensors.index.json`) and, for text, `tokenizer.json`.
//!
//! Files are memory-mapped; each tensor is converted to f32 when the model asks for it.
//! HF checkpoints use the "rotate half" RoPE pairing for every supported family.

use std::collections::HashMap;
use std::fs::File;
use std::path::{Path, PathBuf};

use memmap2::Mmap;
use safetensors::tensor::{Dtype, Metadata};
use safetensors::SafeTensors;
use serde::Deserialize;

use crate::config::{Architecture, LlamaConfig, RopeLayout};
use crate::error::ModelError;
use crate::tokenizer::LlmTokenizer;
use crate::weights::{HostTensor, Proj, WeightName, WeightSource};

/// The fields of `config.json` this loader reads.
#[derive(Debug, Deserialize)]
struct HfConfig {
    #[serde(default)]
    architectures: Vec<String>,
    vocab_size: usize,
    hidden_size: usize,
    intermediate_size: usize,
    num_hidden_layers: usize,
    num_attention_heads: usize,
    num_key_value_heads: Option<usize>,
    head_dim: Option<usize>,
    #[serde(default = "default_eps")]
    rms_norm_eps: f32,
    #[serde(default = "default_theta")]
    rope_theta: f32,
    #[serde(default = "default_ctx")]
    max_position_embeddings: usize,
    #[serde(default)]
    tie_word_embeddings: bool,
    attention_bias: Option<bool>,
    rope_scaling: Option<serde_json::Value>,
    sliding_window: Option<usize>,
    use_sliding_window: Option<bool>,
    bos_token_id: Option<u32>,
    /// An id, or a list of ids (Llama 3.1); the first is used as the stop token.
    eos_token_id: Option<serde_json::Value>,
}

impl HfConfig {
    fn eos(&self) -> Option<u32> {
        match self.eos_token_id.as_ref()? {
            serde_json::Value::Array(v) => v.first()?.as_u64().map(|x| x as u32),
            v => v.as_u64().map(|x| x as u32),
        }
    }
}

fn default_eps() -> f32 {
    1e-6
}
fn default_theta() -> f32 {
    10_000.0
}
fn default_ctx() -> usize {
    2048
}

/// One memory-mapped safetensors file with its parsed header.
struct Shard {
    path: PathBuf,
    mmap: Mmap,
    header_len: usize,
    metadata: Metadata,
}

/// A Hugging Face checkpoint directory opened as a model.
pub struct HfModel {
    dir: PathBuf,
    config: LlamaConfig,
    bos: Option<u32>,
    eos: Option<u32>,
    shards: Vec<Shard>,
    /// Tensor name → index into `shards`.
    index: HashMap<String, usize>,
}

impl HfModel {
    /// Opens the checkpoint in `dir`: parses `config.json` and maps the safetensors file(s).
    pub fn open(dir: impl AsRef<Path>) -> Result<Self, ModelError> {
        let dir = dir.as_ref().to_path_buf();
        let config_path = dir.join("config.json");
        let text = std::fs::read_to_string(&config_path).map_err(|source| ModelError::Io {
            path: config_path.clone(),
            source,
        })?;
        let hf: HfConfig = serde_json::from_str(&text).map_err(|e| ModelError::Json {
            path: config_path.clone(),
            message: e.to_string(),
        })?;
        let config = convert_config(&hf)?;

        let index_path = dir.join("model.safetensors.index.json");
        let files: Vec<String> = if index_path.exists() {
            let text = std::fs::read_to_string(&index_path).map_err(|source| ModelError::Io {
                path: index_path.clone(),
                source,
            })?;
            let json: serde_json::Value =
                serde_json::from_str(&text).map_err(|e| ModelError::Json {
                    path: index_path.clone(),
                    message: e.to_string(),
                })?;
            let map = json
                .get("weight_map")
                .and_then(|m| m.as_object())
                .ok_or_else(|| ModelError::Json {
                    path: index_path.clone(),
                    message: "no `weight_map` object".into(),
                })?;
            let mut files: Vec<String> = map
                .values()
                .filter_map(|v| v.as_str().map(str::to_string))
                .collect();
            files.sort();
            files.dedup();
            files
        } else {
            vec!["model.safetensors".to_string()]
        };

        let mut shards = Vec::with_capacity(files.len());
        let mut index = HashMap::new();
        for (i, name) in files.iter().enumerate() {
            if name.contains('/') || name.contains("..") {
                return Err(ModelError::Json {
                    path: index_path.clone(),
                    message: format!("shard name `{name}` must be a plain file name"),
                });
            }
            let shard = open_shard(dir.join(name))?;
            for tensor in shard.metadata.tensors().keys() {
                index.insert(tensor.clone(), i);
            }
            shards.push(shard);
        }
        Ok(Self {
            dir,
            config,
            bos: hf.bos_token_id,
            eos: hf.eos(),
            shards,
            index,
        })
    }

    /// The tokenizer from `tokenizer.json` in the checkpoint directory, with BOS/EOS ids taken
    /// from `config.json` where it names them.
    pub fn tokenizer(&self) -> Result<LlmTokenizer, ModelError> {
        let path = self.dir.join("tokenizer.json");
        if !path.exists() {
            return Err(ModelError::MissingTokenizer(format!(
                "{} does not exist",
                path.display()
            )));
        }
        Ok(LlmTokenizer::from_file(&path)?.with_special_ids(self.bos, self.eos))
    }
}

impl WeightSource for HfModel {
    fn config(&self) -> &LlamaConfig {
        &self.config
    }

    fn file_name(&self, name: WeightName) -> String {
        let proj = |p: Proj| match p {
            Proj::Q => "self_attn.q_proj",
            Proj::K => "self_attn.k_proj",
            Proj::V => "self_attn.v_proj",
            Proj::O => "self_attn.o_proj",
            Proj::Gate => "mlp.gate_proj",
            Proj::Up => "mlp.up_proj",
            Proj::Down => "mlp.down_proj",
        };
        match name {
            WeightName::TokenEmbedding => "model.embed_tokens.weight".into(),
            WeightName::OutputNorm => "model.norm.weight".into(),
            WeightName::Output => "lm_head.weight".into(),
            WeightName::AttnNorm(l) => format!("model.layers.{l}.input_layernorm.weight"),
            WeightName::FfnNorm(l) => format!("model.layers.{l}.post_attention_layernorm.weight"),
            WeightName::Weight(l, p) => format!("model.layers.{l}.{}.weight", proj(p)),
            WeightName::Bias(l, p) => format!("model.layers.{l}.{}.bias", proj(p)),
        }
    }

    fn tensor(&self, name: WeightName) -> Result<Option<HostTensor>, ModelError> {
        let file_name = self.file_name(name);
        let Some(&i) = self.index.get(&file_name) else {
            return Ok(None);
        };
        let shard = &self.shards[i];
        let info = shard
            .metadata
            .info(&file_name)
            .expect("index built from this metadata");
        let (start, end) = info.data_offsets;
        let bytes = &shard.mmap[8 + shard.header_len + start..8 + shard.header_len + end];
        let data = match info.dtype {
            Dtype::F32 => bytes
                .chunks_exact(4)
                .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]))
                .collect(),
            Dtype::F16 => bytes
                .chunks_exact(2)
                .map(|b| half::f16::from_le_bytes([b[0], b[1]]).to_f32())
                .collect(),
            Dtype::BF16 => bytes
                .chunks_exact(2)
                .map(|b| half::bf16::from_le_bytes([b[0], b[1]]).to_f32())
                .collect(),
            other => {
                return Err(ModelError::UnsupportedDtype {
                    tensor: format!("{file_name} in {}", shard.path.display()),
                    dtype: format!("{other:?}"),
                })
            }
        };
        // The values are copied out: the file's pages need not stay resident (a model built
        // lazily reads a block's tensors again when the block first runs), as for GGUF.
        crate::pages::release(&shard.mmap, bytes);
        Ok(Some(HostTensor {
            shape: info.shape.clone(),
            data,
        }))
    }
}

fn open_shard(path: PathBuf) -> Result<Shard, ModelError> {
    let file = File::open(&path).map_err(|source| ModelError::Io {
        path: path.clone(),
        source,
    })?;
    // SAFETY: the map is read-only; like every mmap-based loader we assume the file is not
    // truncated by another process while the model is open.
    let mmap = unsafe { Mmap::map(&file) }.map_err(|source| ModelError::Io {
        path: path.clone(),
        source,
    })?;
    // `read_metadata` checks the header length and that the tensors' offsets tile the data
    // section exactly, so slicing with them below cannot go out of bounds.
    let (header_len, metadata) =
        SafeTensors::read_metadata(&mmap).map_err(|e| ModelError::Safetensors {
            path: path.clone(),
            message: e.to_string(),
        })?;
    Ok(Shard {
        path,
        mmap,
        header_len,
        metadata,
    })
}

fn convert_config(hf: &HfConfig) -> Result<LlamaConfig, ModelError> {
    let arch_name = hf.architectures.first().map(String::as_str).unwrap_or("");
    let architecture = match arch_name {
        "LlamaForCausalLM" => Architecture::Llama,
        "MistralForCausalLM" => Architecture::Mistral,
        "Qwen2ForCausalLM" => Architecture::Qwen2,
        _ => return Err(ModelError::UnknownArchitecture(arch_name.to_string())),
    };
    if let Some(scaling) = &hf.rope_scaling {
        if !scaling.is_null() {
            return Err(ModelError::InvalidConfig(format!(
                "`rope_scaling` ({scaling}) is not supported yet"
            )));
        }
    }
    // Within its window, sliding-window attention is plain causal attention: cap the context at
    // the window so longer inputs fail with `ContextTooLong` instead of being computed wrongly.
    let window_applies =
        architecture == Architecture::Mistral || hf.use_sliding_window == Some(true);
    let max_seq_len = match (window_applies, hf.sliding_window) {
        (true, Some(window)) => hf.max_position_embeddings.min(window),
        _ => hf.max_position_embeddings,
    };
    if hf.num_attention_heads == 0 {
        return Err(ModelError::InvalidConfig(
            "num_attention_heads must be positive".into(),
        ));
    }
    Ok(LlamaConfig {
        architecture,
        vocab_size: hf.vocab_size,
        hidden_size: hf.hidden_size,
        intermediate_size: hf.intermediate_size,
        num_layers: hf.num_hidden_layers,
        num_heads: hf.num_attention_heads,
        num_kv_heads: hf.num_key_value_heads.unwrap_or(hf.num_attention_heads),
        head_dim: hf
            .head_dim
            .unwrap_or(hf.hidden_size / hf.num_attention_heads),
        rms_norm_eps: hf.rms_norm_eps,
        rope_theta: hf.rope_theta,
        rope_layout: RopeLayout::NeoX,
        max_seq_len,
        tie_word_embeddings: hf.tie_word_embeddings,
        attention_bias: hf
            .attention_bias
            .unwrap_or(architecture == Architecture::Qwen2),
    })
}
