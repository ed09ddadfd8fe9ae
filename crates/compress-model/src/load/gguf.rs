//! Loading llama-family models from GGUF files (llama.cpp's format).
//!
//! Hyper-parameters come from the `{arch}.*` metadata keys, the tokenizer from the
//! `tokenizer.ggml.*` keys, and weights from the tensors named `token_embd.weight`,
//! `blk.{l}.attn_q.weight`, ... (llama.cpp's names), dequantized to f32 on read.

use std::path::Path;

use crate::config::{Architecture, LlamaConfig, RopeLayout};
use crate::error::ModelError;
use crate::gguf::{GgufError, GgufFile};
use crate::tokenizer::{GgufVocab, LlmTokenizer};
use crate::weights::{HostTensor, Proj, WeightName, WeightSource};

/// A GGUF file opened as a model: the memory map, the parsed config, and the tensor names.
pub struct GgufModel {
    file: GgufFile,
    config: LlamaConfig,
}

impl GgufModel {
    /// Opens `path`, validates its structure (see [`GgufFile::open`]) and reads the config.
    pub fn open(path: impl AsRef<Path>) -> Result<Self, ModelError> {
        let file = GgufFile::open(path.as_ref())?;
        Self::from_file(file)
    }

    /// Reads the config of an already parsed file.
    pub fn from_file(file: GgufFile) -> Result<Self, ModelError> {
        let config = read_config(&file)?;
        Ok(Self { file, config })
    }

    /// The underlying file (metadata and raw tensors).
    pub fn file(&self) -> &GgufFile {
        &self.file
    }

    /// Builds the tokenizer stored in the file's metadata.
    pub fn tokenizer(&self) -> Result<LlmTokenizer, ModelError> {
        let vocab = read_vocab(&self.file)?;
        Ok(LlmTokenizer::from_gguf_vocab(&vocab)?)
    }
}

impl WeightSource for GgufModel {
    fn config(&self) -> &LlamaConfig {
        &self.config
    }

    fn file_name(&self, name: WeightName) -> String {
        let proj = |p: Proj| match p {
            Proj::Q => "attn_q",
            Proj::K => "attn_k",
            Proj::V => "attn_v",
            Proj::O => "attn_output",
            Proj::Gate => "ffn_gate",
            Proj::Up => "ffn_up",
            Proj::Down => "ffn_down",
        };
        match name {
            WeightName::TokenEmbedding => "token_embd.weight".into(),
            WeightName::OutputNorm => "output_norm.weight".into(),
            WeightName::Output => "output.weight".into(),
            WeightName::AttnNorm(l) => format!("blk.{l}.attn_norm.weight"),
            WeightName::FfnNorm(l) => format!("blk.{l}.ffn_norm.weight"),
            WeightName::Weight(l, p) => format!("blk.{l}.{}.weight", proj(p)),
            WeightName::Bias(l, p) => format!("blk.{l}.{}.bias", proj(p)),
        }
    }

    fn tensor(&self, name: WeightName) -> Result<Option<HostTensor>, ModelError> {
        let file_name = self.file_name(name);
        let Some(info) = self.file.tensor(&file_name) else {
            return Ok(None);
        };
        let shape = info
            .shape_row_major()
            .into_iter()
            .map(|d| d as usize)
            .collect();
        let data = self.file.dequantize(&file_name)?;
        // The values are copied out: the file's pages need not stay resident (a model built
        // lazily reads a block's tensors again when the block first runs).
        self.file.release_tensor_pages(info);
        Ok(Some(HostTensor { shape, data }))
    }
}

fn arch_of(file: &GgufFile) -> Result<(String, Architecture), ModelError> {
    let name = file.get_str("general.architecture")?.to_string();
    let arch = match name.as_str() {
        "llama" => Architecture::Llama,
        "mistral" => Architecture::Mistral,
        "qwen2" => Architecture::Qwen2,
        _ => return Err(ModelError::UnknownArchitecture(name)),
    };
    Ok((name, arch))
}

fn read_config(file: &GgufFile) -> Result<LlamaConfig, ModelError> {
    let (prefix, architecture) = arch_of(file)?;
    let key = |k: &str| format!("{prefix}.{k}");
    let required = |k: &str| -> Result<usize, ModelError> { Ok(file.get_usize(&key(k))?) };
    let opt_usize = |k: &str| -> Result<Option<usize>, ModelError> {
        optional(file, &key(k), GgufFile::get_usize)
    };
    let hidden_size = required("embedding_length")?;
    let num_heads = required("attention.head_count")?;
    let num_kv_heads = opt_usize("attention.head_count_kv")?.unwrap_or(num_heads);
    let head_dim = match opt_usize("attention.key_length")? {
        Some(hd) => hd,
        None if num_heads > 0 && hidden_size % num_heads == 0 => hidden_size / num_heads,
        None => {
            return Err(ModelError::InvalidConfig(format!(
                "embedding_length {hidden_size} is not a multiple of head_count {num_heads}"
            )))
        }
    };
    if let Some(rope_dims) = opt_usize("rope.dimension_count")? {
        if rope_dims != head_dim {
            return Err(ModelError::InvalidConfig(format!(
                "partial RoPE (`{}` = {rope_dims}, head dim {head_dim}) is not supported",
                key("rope.dimension_count")
            )));
        }
    }
    let embd = file
        .tensor("token_embd.weight")
        .ok_or_else(|| ModelError::MissingTensor("token_embd.weight".into()))?;
    let vocab_size = match opt_usize("vocab_size")? {
        Some(v) => v,
        None => *embd.shape_row_major().first().unwrap_or(&0) as usize,
    };
    let f32_key = |k: &str, default: f32| -> Result<f32, ModelError> {
        Ok(optional(file, &key(k), GgufFile::get_f32)?.unwrap_or(default))
    };
    Ok(LlamaConfig {
        architecture,
        vocab_size,
        hidden_size,
        intermediate_size: required("feed_forward_length")?,
        num_layers: required("block_count")?,
        num_heads,
        num_kv_heads,
        head_dim,
        rms_norm_eps: f32_key("attention.layer_norm_rms_epsilon", 1e-5)?,
        rope_theta: f32_key("rope.freq_base", 10_000.0)?,
        rope_layout: match architecture {
            Architecture::Llama | Architecture::Mistral => RopeLayout::Interleaved,
            Architecture::Qwen2 => RopeLayout::NeoX,
        },
        max_seq_len: required("context_length")?,
        tie_word_embeddings: file.tensor("output.weight").is_none(),
        attention_bias: file.tensor("blk.0.attn_q.bias").is_some(),
    })
}

/// `Ok(None)` when `key` is absent; the typed value, or a wrong-type error, when present.
fn optional<'a, T>(
    file: &'a GgufFile,
    key: &str,
    get: impl Fn(&'a GgufFile, &str) -> Result<T, GgufError>,
) -> Result<Option<T>, ModelError> {
    match file.get(key) {
        None => Ok(None),
        Some(_) => Ok(Some(get(file, key)?)),
    }
}

fn read_vocab(file: &GgufFile) -> Result<GgufVocab, ModelError> {
    let missing = |k: &str| ModelError::MissingTokenizer(format!("the GGUF file has no `{k}` key"));
    let model = optional(file, "tokenizer.ggml.model", GgufFile::get_str)?
        .ok_or_else(|| missing("tokenizer.ggml.model"))?
        .to_string();
    let tokens = optional(file, "tokenizer.ggml.tokens", GgufFile::get_str_array)?
        .ok_or_else(|| missing("tokenizer.ggml.tokens"))?
        .to_vec();
    // llama.cpp writes -1 (0xFFFFFFFF) for "no such token".
    let id = |k: &str| -> Result<Option<u32>, ModelError> {
        Ok(optional(file, k, GgufFile::get_u32)?.filter(|&id| id != u32::MAX))
    };
    let flag =
        |k: &str| -> Result<Option<bool>, ModelError> { optional(file, k, GgufFile::get_bool) };
    Ok(GgufVocab {
        model,
        pre: optional(file, "tokenizer.ggml.pre", GgufFile::get_str)?.map(str::to_string),
        tokens,
        scores: optional(file, "tokenizer.ggml.scores", GgufFile::get_f32_array)?
            .map(<[f32]>::to_vec),
        token_types: optional(file, "tokenizer.ggml.token_type", GgufFile::get_i32_array)?
            .map(<[i32]>::to_vec),
        merges: optional(file, "tokenizer.ggml.merges", GgufFile::get_str_array)?
            .map(<[String]>::to_vec),
        bos_id: id("tokenizer.ggml.bos_token_id")?,
        eos_id: id("tokenizer.ggml.eos_token_id")?,
        unk_id: id("tokenizer.ggml.unknown_token_id")?,
        pad_id: id("tokenizer.ggml.padding_token_id")?,
        add_bos: flag("tokenizer.ggml.add_bos_token")?,
        add_eos: flag("tokenizer.ggml.add_eos_token")?,
        add_space_prefix: flag("tokenizer.ggml.add_space_prefix")?,
    })
}
