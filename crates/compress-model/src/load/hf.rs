//! Loading Hugging Face checkpoints: a directory with `config.json`, `model.safetensors` (or
//! shards listed in `model.safetensors.index.json`) and, for text, `tokenizer.json`.
//!
//! Files are memory-mapped; each tensor is converted to f32 when the model asks for it.
//! HF checkpoints use the "rotate half" RoPE pairing for every supported family. The family
//! (`architectures[0]`) decides the config keys read and the tensor names
//! ([`crate::family`]); fused projections are split and `1 + w` norm gains resolved here, so
//! the decoder sees one layout.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use crate::config::LlamaConfig;
use crate::error::ModelError;
use crate::family::{Family, HfConfigJson};
use crate::tokenizer::LlmTokenizer;
use crate::weights::{HostTensor, Proj, WeightName, WeightSource};
use memmap2::Mmap;
use safetensors::tensor::{Dtype, Metadata};
use safetensors::SafeTensors;

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
    family: &'static Family,
    config: LlamaConfig,
    /// Modules stored compressed-tensors `pack-quantized`, with their schemes.
    packed: HashMap<String, super::compressed::PackScheme>,
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
        let limit = compress_core::input::CONFIG_LIMIT;
        let text = compress_core::input::read_text(&config_path, limit).map_err(|source| {
            ModelError::Io {
                path: config_path.clone(),
                source,
            }
        })?;
        let hf = HfConfigJson::parse(&text).map_err(|message| ModelError::Json {
            path: config_path.clone(),
            message,
        })?;
        let family = crate::family::by_hf_class(hf.class())?;
        let config = hf.to_config(family)?;
        let id = |k: &str| -> Result<Option<u32>, ModelError> {
            // An id, or a list of ids (Llama 3.1); the first is used.
            Ok(match hf.get(k) {
                Some(serde_json::Value::Array(v)) => v.first().and_then(|x| x.as_u64()),
                Some(v) => v.as_u64(),
                None => None,
            }
            .and_then(|x| u32::try_from(x).ok()))
        };
        let (bos, eos) = (id("bos_token_id")?, id("eos_token_id")?);

        let index_path = dir.join("model.safetensors.index.json");
        let files: Vec<String> = if index_path.exists() {
            let text = compress_core::input::read_text(&index_path, limit).map_err(|source| {
                ModelError::Io {
                    path: index_path.clone(),
                    source,
                }
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
        let groups = super::compressed::config_groups(&hf)?;
        let packed = super::compressed::packed_modules(index.keys(), &groups);
        let model = Self {
            dir,
            family,
            config,
            packed,
            bos,
            eos,
            shards,
            index,
        };
        model.check_block_count()?;
        Ok(model)
    }

    /// `num_hidden_layers` must be the number of blocks the checkpoint holds: the last declared
    /// block's attention norm is there and the next block's is not (fewer declared blocks
    /// would silently drop tensors).
    fn check_block_count(&self) -> Result<(), ModelError> {
        let n = self.config.num_layers;
        let has = |l: usize| {
            let (name, _) = self.location(WeightName::AttnNorm(l));
            self.index.contains_key(&name)
        };
        if has(n) {
            let more = (n..n + 1024).take_while(|&l| has(l)).count();
            return Err(ModelError::InvalidConfig(format!(
                "num_hidden_layers = {n}, but the checkpoint holds {} more blocks' tensors \
                 (from {})",
                more,
                self.location(WeightName::AttnNorm(n)).0
            )));
        }
        Ok(())
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

impl HfModel {
    /// The family the checkpoint's `config.json` names.
    pub fn family(&self) -> &'static Family {
        self.family
    }

    /// The name of the tensor `name` in the files, and for a projection stored fused
    /// (Phi-3's `qkv_proj`, `gate_up_proj`) the rows of it that are `name`.
    fn location(&self, name: WeightName) -> (String, Option<std::ops::Range<usize>>) {
        let fused = self.family.hf.fused;
        let proj = |p: Proj| match p {
            Proj::Q => "self_attn.q_proj",
            Proj::K => "self_attn.k_proj",
            Proj::V => "self_attn.v_proj",
            Proj::O => "self_attn.o_proj",
            Proj::Gate => "mlp.gate_proj",
            Proj::Up => "mlp.up_proj",
            Proj::Down => "mlp.down_proj",
        };
        let fused_rows = |p: Proj| {
            crate::weights::fused_rows(&self.config, p)
                .map(|(t, rows)| (["self_attn.qkv_proj", "mlp.gate_up_proj"][t], rows))
        };
        let layer = |l: usize, rest: &str| format!("model.layers.{l}.{rest}.weight");
        let (moe, names) = self.family.hf.moe_names;
        let expert = |p: Proj| match p {
            Proj::Gate => names[0],
            Proj::Up => names[1],
            _ => names[2],
        };
        match name {
            WeightName::TokenEmbedding => ("model.embed_tokens.weight".into(), None),
            WeightName::OutputNorm => ("model.norm.weight".into(), None),
            WeightName::Output => ("lm_head.weight".into(), None),
            WeightName::AttnNorm(l) => (layer(l, "input_layernorm"), None),
            WeightName::FfnNorm(l) => (layer(l, self.family.hf.ffn_norm), None),
            WeightName::PostAttnNorm(l) => (layer(l, "post_attention_layernorm"), None),
            WeightName::PostFfnNorm(l) => (layer(l, "post_feedforward_layernorm"), None),
            WeightName::QNorm(l) => (layer(l, "self_attn.q_norm"), None),
            WeightName::KNorm(l) => (layer(l, "self_attn.k_norm"), None),
            WeightName::Weight(l, p) => match fused_rows(p).filter(|_| fused) {
                Some((stored, rows)) => (layer(l, stored), Some(rows)),
                None => (layer(l, proj(p)), None),
            },
            WeightName::Bias(l, p) => (format!("model.layers.{l}.{}.bias", proj(p)), None),
            WeightName::Router(l) => (layer(l, &format!("{moe}.gate")), None),
            WeightName::Expert(l, e, p) => {
                (layer(l, &format!("{moe}.experts.{e}.{}", expert(p))), None)
            }
            WeightName::SharedExpert(l, p) => (
                layer(
                    l,
                    &format!("mlp.shared_expert.{}", proj(p).trim_start_matches("mlp.")),
                ),
                None,
            ),
            WeightName::SharedGate(l) => (layer(l, "mlp.shared_expert_gate"), None),
        }
    }
}

impl WeightSource for HfModel {
    fn config(&self) -> &LlamaConfig {
        &self.config
    }

    fn file_name(&self, name: WeightName) -> String {
        match self.location(name) {
            (file, None) => file,
            (file, Some(rows)) => format!("{file} (rows {}..{})", rows.start, rows.end),
        }
    }

    fn tensor(&self, name: WeightName) -> Result<Option<HostTensor>, ModelError> {
        let (file_name, rows) = self.location(name);
        let Some(mut t) = self.read_f32(&file_name)? else {
            return Ok(None);
        };
        // A slice of a fused tensor: whole rows, checked against the stored shape.
        if let Some(r) = rows {
            t = t.rows(r, &file_name)?;
        }
        let offset = self.family.hf.norm_offset;
        if offset != 0.0 && name.is_norm() {
            // Gemma's `(1 + w)` gains, added in f32 as transformers does.
            for v in &mut t.data {
                *v += offset;
            }
        }
        Ok(Some(t))
    }
}

impl HfModel {
    /// The bytes, dtype and shape of tensor `name`, if the files hold it.
    fn raw(&self, name: &str) -> Option<(&Shard, &[u8], Dtype, Vec<usize>)> {
        let &i = self.index.get(name)?;
        let shard = &self.shards[i];
        let info = shard
            .metadata
            .info(name)
            .expect("index built from this metadata");
        let (start, end) = info.data_offsets;
        let bytes = &shard.mmap[8 + shard.header_len + start..8 + shard.header_len + end];
        Some((shard, bytes, info.dtype, info.shape.clone()))
    }

    /// Tensor `name` as f32 (a float tensor converted, or a `pack-quantized` module's
    /// `{module}.weight` decompressed), with its shape; `None` if the files hold neither.
    fn read_f32(&self, name: &str) -> Result<Option<HostTensor>, ModelError> {
        if let Some((shard, bytes, dtype, shape)) = self.raw(name) {
            let data = floats(bytes, dtype).ok_or_else(|| ModelError::UnsupportedDtype {
                tensor: format!("{name} in {}", shard.path.display()),
                dtype: format!("{dtype:?}"),
            })?;
            // The values are copied out: the file's pages need not stay resident (a model
            // built lazily reads a block's tensors again when it first runs), as for GGUF.
            crate::pages::release(&shard.mmap, bytes);
            return Ok(Some(HostTensor { shape, data }));
        }
        let Some((module, scheme)) = name
            .strip_suffix(".weight")
            .and_then(|m| self.packed.get(m).map(|s| (m, s)))
        else {
            return Ok(None);
        };
        let part = |suffix: &str| self.raw(&format!("{module}.{suffix}"));
        let missing = |suffix: &str| ModelError::MissingTensor(format!("{module}.{suffix}"));
        let (_, packed, _, _) = part("weight_packed").ok_or_else(|| missing("weight_packed"))?;
        let (_, shape_bytes, _, _) = part("weight_shape").ok_or_else(|| missing("weight_shape"))?;
        let dims: Vec<usize> = shape_bytes
            .chunks_exact(8)
            .map(|b| i64::from_le_bytes(b.try_into().expect("8 bytes")) as usize)
            .collect();
        let [out, inp] = dims[..] else {
            return Err(ModelError::InvalidConfig(format!(
                "{module}.weight_shape is {dims:?}, not [out, in]"
            )));
        };
        let (_, scale_bytes, scale_dtype, _) =
            part("weight_scale").ok_or_else(|| missing("weight_scale"))?;
        let scale =
            floats(scale_bytes, scale_dtype).ok_or_else(|| ModelError::UnsupportedDtype {
                tensor: format!("{module}.weight_scale"),
                dtype: format!("{scale_dtype:?}"),
            })?;
        let module_data = super::compressed::PackedModule {
            packed,
            scale,
            zero_point: part("weight_zero_point").map(|(_, b, _, _)| b),
            shape: [out, inp],
        };
        let data = super::compressed::dequantize(module, &module_data, scheme)?;
        Ok(Some(HostTensor {
            shape: vec![out, inp],
            data,
        }))
    }
}

/// Little-endian f32 / f16 / bf16 bytes as f32; `None` for other dtypes.
fn floats(bytes: &[u8], dtype: Dtype) -> Option<Vec<f32>> {
    Some(match dtype {
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
        _ => return None,
    })
}

fn open_shard(path: PathBuf) -> Result<Shard, ModelError> {
    let file = compress_core::input::open_regular(&path).map_err(|source| ModelError::Io {
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
