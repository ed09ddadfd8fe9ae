//! Loading llama-family models from GGUF files (llama.cpp's format).
//!
//! Hyper-parameters come from the `{arch}.*` metadata keys, the tokenizer from the
//! `tokenizer.ggml.*` keys, and weights from the tensors named `token_embd.weight`,
//! `blk.{l}.attn_q.weight`, ... (llama.cpp's names), dequantized to f32 on read.

use std::path::Path;

use crate::config::{LlamaConfig, RopeScaling, Variant};
use crate::error::ModelError;
use crate::family::{gguf_optional as optional, Family};
use crate::gguf::GgufFile;
use crate::tokenizer::{GgufVocab, LlmTokenizer};
use crate::weights::{HostTensor, Proj, WeightName, WeightSource};

/// A GGUF file opened as a model: the memory map, the parsed config, and the tensor names.
pub struct GgufModel {
    file: GgufFile,
    family: &'static Family,
    config: LlamaConfig,
    /// Names of the tensors read so far ([`WeightSource::unread_tensors`]).
    read: std::sync::Mutex<std::collections::HashSet<String>>,
}

impl GgufModel {
    /// Opens `path`, validates its structure (see [`GgufFile::open`]) and reads the config.
    pub fn open(path: impl AsRef<Path>) -> Result<Self, ModelError> {
        let file = GgufFile::open(path.as_ref())?;
        Self::from_file(file)
    }

    /// Reads the config of an already parsed file.
    pub fn from_file(file: GgufFile) -> Result<Self, ModelError> {
        let (family, config) = read_config(&file)?;
        // RoPE factor tensors are read with the config.
        let read = [
            "rope_freqs.weight",
            "rope_factors_short.weight",
            "rope_factors_long.weight",
        ]
        .into_iter()
        .map(str::to_string)
        .collect();
        Ok(Self {
            file,
            family,
            config,
            read: std::sync::Mutex::new(read),
        })
    }

    /// The family the file's `general.architecture` names.
    pub fn family(&self) -> &'static Family {
        self.family
    }

    /// The name of the tensor `name` in the file, and the part of it that is `name`: rows of a
    /// projection stored fused (Phi-3's `attn_qkv`, `ffn_up` holding gate and up), or one
    /// expert of the experts stacked along the outer dimension (`ffn_*_exps`).
    fn location(&self, name: WeightName) -> (String, Option<Part>) {
        let proj = |p: Proj| match p {
            Proj::Q => "attn_q",
            Proj::K => "attn_k",
            Proj::V => "attn_v",
            Proj::O => "attn_output",
            Proj::Gate => "ffn_gate",
            Proj::Up => "ffn_up",
            Proj::Down => "ffn_down",
        };
        let fused_rows = |p: Proj| {
            crate::weights::fused_rows(&self.config, p)
                .map(|(t, rows)| (["attn_qkv", "ffn_up"][t], rows))
        };
        let blk = |l: usize, rest: &str| format!("blk.{l}.{rest}.weight");
        match name {
            WeightName::TokenEmbedding => ("token_embd.weight".into(), None),
            WeightName::OutputNorm => ("output_norm.weight".into(), None),
            WeightName::Output => ("output.weight".into(), None),
            WeightName::AttnNorm(l) => (blk(l, "attn_norm"), None),
            WeightName::FfnNorm(l) => (blk(l, "ffn_norm"), None),
            WeightName::PostAttnNorm(l) => (blk(l, "post_attention_norm"), None),
            WeightName::PostFfnNorm(l) => (blk(l, "post_ffw_norm"), None),
            WeightName::QNorm(l) => (blk(l, "attn_q_norm"), None),
            WeightName::KNorm(l) => (blk(l, "attn_k_norm"), None),
            WeightName::Weight(l, p) => match fused_rows(p).filter(|_| self.family.gguf.fused) {
                Some((stored, rows)) => (blk(l, stored), Some(Part::Rows(rows))),
                None => (blk(l, proj(p)), None),
            },
            WeightName::Bias(l, p) => (format!("blk.{l}.{}.bias", proj(p)), None),
            WeightName::Router(l) => (blk(l, "ffn_gate_inp"), None),
            WeightName::Expert(l, e, p) => (
                blk(l, &format!("{}_exps", proj(p))),
                Some(Part::Expert(e as usize)),
            ),
            WeightName::SharedExpert(l, p) => (blk(l, &format!("{}_shexp", proj(p))), None),
            WeightName::SharedGate(l) => (blk(l, "ffn_gate_inp_shexp"), None),
        }
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
        match self.location(name) {
            (file, None) => file,
            (file, Some(Part::Rows(rows))) => format!("{file} (rows {}..{})", rows.start, rows.end),
            (file, Some(Part::Expert(e))) => format!("{file} (expert {e})"),
        }
    }

    fn unread_tensors(&self) -> Vec<String> {
        let read = self.read.lock().unwrap_or_else(|e| e.into_inner());
        let mut unread: Vec<String> = self
            .file
            .tensors()
            .iter()
            .map(|t| t.name().to_string())
            .filter(|n| !read.contains(n))
            .collect();
        unread.sort();
        unread
    }

    fn tensor(&self, name: WeightName) -> Result<Option<HostTensor>, ModelError> {
        let (file_name, rows) = self.location(name);
        let Some(info) = self.file.tensor(&file_name) else {
            return Ok(None);
        };
        self.read
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert(file_name.clone());
        let mut shape: Vec<usize> = info
            .shape_row_major()
            .into_iter()
            .map(|d| d as usize)
            .collect();
        let mut data = self.file.dequantize(&file_name)?;
        // The values are copied out: the file's pages need not stay resident (a model built
        // lazily reads a block's tensors again when the block first runs).
        self.file.release_tensor_pages(info);
        match rows {
            None => {}
            Some(Part::Rows(r)) => {
                return HostTensor { shape, data }.rows(r, &file_name).map(Some);
            }
            Some(Part::Expert(e)) => {
                let [experts, rows, cols] = shape.as_slice() else {
                    return Err(ModelError::InvalidConfig(format!(
                        "`{file_name}` has shape {shape:?}, expected [experts, rows, columns]"
                    )));
                };
                let (experts, rows, cols) = (*experts, *rows, *cols);
                if e >= experts {
                    return Err(ModelError::MissingTensor(format!(
                        "expert {e} of `{file_name}` ({experts} experts)"
                    )));
                }
                data = data[e * rows * cols..(e + 1) * rows * cols].to_vec();
                shape = vec![rows, cols];
            }
        }
        Ok(Some(HostTensor { shape, data }))
    }
}

/// The part of a stored tensor that one canonical weight is.
enum Part {
    /// Rows of a fused projection.
    Rows(std::ops::Range<usize>),
    /// One expert of experts stacked along the outermost dimension.
    Expert(usize),
}

fn read_config(file: &GgufFile) -> Result<(&'static Family, LlamaConfig), ModelError> {
    let prefix = file.get_str("general.architecture")?.to_string();
    let family = crate::family::by_gguf_name(&prefix)?;
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
    let rotary_dims = match opt_usize("rope.dimension_count")? {
        Some(r) if r == head_dim => None,
        Some(r) if r < head_dim => Some(r),
        Some(r) => {
            return Err(ModelError::InvalidConfig(format!(
                "`{}` = {r} exceeds the head dim {head_dim}",
                key("rope.dimension_count")
            )))
        }
        None => None,
    };
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
    let mut config = LlamaConfig {
        architecture: family.architecture,
        vocab_size,
        hidden_size,
        intermediate_size: required("feed_forward_length")?,
        num_layers: required("block_count")?,
        num_heads,
        num_kv_heads,
        head_dim,
        rms_norm_eps: f32_key("attention.layer_norm_rms_epsilon", 1e-5)?,
        rope_theta: f32_key("rope.freq_base", 10_000.0)?,
        rope_layout: family.gguf.rope_layout,
        max_seq_len: required("context_length")?,
        tie_word_embeddings: file.tensor("output.weight").is_none(),
        attention_bias: file.tensor("blk.0.attn_q.bias").is_some(),
        variant: Variant {
            rotary_dims,
            ..Variant::default()
        },
    };
    config.validate_sizes().map_err(ModelError::InvalidConfig)?;
    check_block_count(file, config.num_layers)?;
    (family.read_gguf)(file, &prefix, &mut config)?;
    read_rope_factors(file, &prefix, &mut config)?;
    Ok((family, config))
}

/// `block_count` must be the number of blocks the file holds tensors for (`blk.N.*`): fewer
/// would silently drop blocks, more would fail later on a missing tensor after sizing the model
/// from the declared number.
fn check_block_count(file: &GgufFile, declared: usize) -> Result<(), ModelError> {
    let present = file
        .tensors()
        .iter()
        .filter_map(|t| {
            t.name
                .strip_prefix("blk.")?
                .split('.')
                .next()?
                .parse::<usize>()
                .ok()
        })
        .max()
        .map_or(0, |b| b + 1);
    if present != declared {
        return Err(ModelError::InvalidConfig(format!(
            "block_count = {declared}, but the file holds tensors for {present} blocks \
             (blk.0 … blk.{})",
            present.saturating_sub(1)
        )));
    }
    Ok(())
}

/// Per-dimension RoPE factors stored as tensors: `rope_freqs.weight` (Llama 3.1's rule, as
/// divisors) or Phi-3's `rope_factors_short.weight` / `rope_factors_long.weight` (LongRoPE).
fn read_rope_factors(file: &GgufFile, prefix: &str, c: &mut LlamaConfig) -> Result<(), ModelError> {
    let read = |name: &str| -> Result<Option<Vec<f32>>, ModelError> {
        match file.tensor(name) {
            None => Ok(None),
            Some(_) => Ok(Some(file.dequantize(name)?)),
        }
    };
    if let Some(factors) = read("rope_freqs.weight")? {
        c.variant.rope_scaling = Some(RopeScaling::Divisors { factors });
    } else if let Some(short_factor) = read("rope_factors_short.weight")? {
        let long_factor = read("rope_factors_long.weight")?.unwrap_or_else(|| short_factor.clone());
        let original = optional(
            file,
            &format!("{prefix}.rope.scaling.original_context_length"),
            GgufFile::get_usize,
        )?
        .unwrap_or(c.max_seq_len);
        c.variant.rope_scaling = Some(RopeScaling::LongRope {
            short_factor,
            long_factor,
            original_max_position_embeddings: original,
            max_position_embeddings: c.max_seq_len,
        });
        c.max_seq_len = c.max_seq_len.min(original);
    }
    Ok(())
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
