//! Saving a model as a container (format in the [module docs](super)).

use std::collections::{BTreeMap, HashMap};
use std::path::Path;

use compress_core::linear::CompressedLinear;
use compress_core::packed::{Granularity, Symmetry};
use compress_core::pipeline::BlockwiseModel;
use safetensors::tensor::TensorView;
use safetensors::Dtype;

use super::{
    BlockEntry, ContainerOptions, GranularityEntry, Header, LayerEntry, PackedEntry,
    TokenizerEntry, TokenizerKind, FORMAT, METADATA_KEY, TOKENIZER_TENSOR,
};
use crate::error::ModelError;
use crate::llama::{AttentionPrecision, LlamaModel};
use crate::save::{head_is_tied_copy, host, write_atomic};
use crate::tokenizer::LlmTokenizer;
use compress_core::pipeline::BlockWalk;

/// One tensor's bytes before serialisation.
struct Owned {
    dtype: Dtype,
    shape: Vec<usize>,
    data: Vec<u8>,
}

#[derive(Default)]
struct Tensors(BTreeMap<String, Owned>);

impl Tensors {
    fn put(&mut self, name: String, dtype: Dtype, shape: Vec<usize>, data: Vec<u8>) {
        self.0.insert(name, Owned { dtype, shape, data });
    }

    fn f32<const D: usize>(
        &mut self,
        name: String,
        t: burn::tensor::Tensor<D>,
    ) -> Result<(), ModelError> {
        let shape = t.dims().to_vec();
        let values = host(t, &name)?;
        let data = values.iter().flat_map(|v| v.to_le_bytes()).collect();
        self.put(name, Dtype::F32, shape, data);
        Ok(())
    }

    fn f16(&mut self, name: String, values: &[half::f16]) {
        let data = values.iter().flat_map(|v| v.to_le_bytes()).collect();
        self.put(name, Dtype::F16, vec![values.len()], data);
    }

    fn mask(&mut self, name: String, mask: &compress_core::sparsity::SparsityMask) {
        let words = mask.words();
        let data = words.iter().flat_map(|w| w.to_le_bytes()).collect();
        self.put(name, Dtype::U64, vec![words.len()], data);
    }

    /// Stores one linear under `path` and says how.
    fn linear(&mut self, path: &str, lin: &CompressedLinear) -> Result<LayerEntry, ModelError> {
        let bias = lin.bias();
        let has_bias = bias.is_some();
        if let Some(b) = bias {
            self.f32(format!("{path}.bias"), b)?;
        }
        Ok(match lin {
            CompressedLinear::Dense(l) => {
                self.f32(format!("{path}.weight"), l.weight.val())?;
                if let Some(m) = &l.mask {
                    self.mask(format!("{path}.mask"), m);
                }
                LayerEntry::Dense {
                    bias: has_bias,
                    mask: l.mask.is_some(),
                }
            }
            CompressedLinear::LowRank(l) => {
                self.f32(format!("{path}.up"), l.up.val())?;
                self.f32(format!("{path}.down"), l.down.val())?;
                LayerEntry::LowRank { bias: has_bias }
            }
            CompressedLinear::Quantized(q) => {
                let p = &q.packed;
                let e = self.packed(path, p);
                if let Some(m) = p.mask() {
                    self.mask(format!("{path}.mask"), m);
                }
                if let Some(c) = &q.correction {
                    self.f32(format!("{path}.correction_up"), c.up.val())?;
                    self.f32(format!("{path}.correction_down"), c.down.val())?;
                }
                LayerEntry::Quantized {
                    shape: p.shape(),
                    bits: e.bits,
                    granularity: e.granularity,
                    symmetric: e.symmetric,
                    bias: has_bias,
                    mask: p.mask().is_some(),
                    correction_rank: q.correction.as_ref().map(|c| c.rank()),
                }
            }
            CompressedLinear::QuantizedLowRank(l) => LayerEntry::QuantizedLowRank {
                rank: l.rank(),
                up: self.packed(&format!("{path}.up"), &l.up.packed),
                down: self.packed(&format!("{path}.down"), &l.down.packed),
                bias: has_bias,
            },
        })
    }

    /// Stores packed codes (unmasked) as `{prefix}.codes`, `.scales`, `.zeros`.
    fn packed(&mut self, prefix: &str, p: &compress_core::packed::PackedWeight) -> PackedEntry {
        let [out, inp] = p.shape();
        let scheme = p.scheme();
        self.put(
            format!("{prefix}.codes"),
            Dtype::U8,
            vec![out, scheme.row_bytes(inp)],
            p.packed_codes().to_vec(),
        );
        self.f16(format!("{prefix}.scales"), p.scales());
        if let Some(z) = p.zeros() {
            self.f16(format!("{prefix}.zeros"), z);
        }
        PackedEntry {
            bits: scheme.bits.get(),
            granularity: match scheme.granularity {
                Granularity::PerTensor => GranularityEntry::Tensor,
                Granularity::PerChannel => GranularityEntry::Channel,
                Granularity::PerGroup(g) => GranularityEntry::Group(g.get()),
            },
            symmetric: scheme.symmetry == Symmetry::Symmetric,
        }
    }
}

/// The header's spelling of an attention precision.
pub(super) fn precision_name(p: AttentionPrecision) -> &'static str {
    match p {
        AttentionPrecision::F32 => "f32",
        AttentionPrecision::F16KvCache => "f16_kv_cache",
    }
}

/// Saves `model` and `tokenizer` to `path` as a container, atomically. Every tensor is stored
/// as the model holds it; see the [module docs](super) for the layout.
pub fn write_container(
    model: &LlamaModel,
    tokenizer: &LlmTokenizer,
    path: &Path,
    options: &ContainerOptions,
) -> Result<Header, ModelError> {
    if let Some(n) = &options.nesting {
        n.validate().map_err(ModelError::InvalidInput)?;
    }
    let mut t = Tensors::default();
    t.f32("embedding".into(), model.embedding.val())?;
    t.f32("norm".into(), model.norm.weight.val())?;
    let mut layers = BTreeMap::new();
    let mut blocks = Vec::with_capacity(model.layers.len());
    for (l, block) in model.layers.iter().enumerate() {
        t.f32(
            format!("layers.{l}.attn_norm"),
            block.attn_norm.weight.val(),
        )?;
        t.f32(format!("layers.{l}.ffn_norm"), block.ffn_norm.weight.val())?;
        for (name, norm) in block.variant_norms() {
            t.f32(format!("layers.{l}.{name}"), norm.weight.val())?;
        }
        for id in model.stages(l).into_iter().flat_map(|s| s.linears) {
            let path = id.to_string();
            let entry = t.linear(&path, model.expect_linear(id))?;
            layers.insert(path, entry);
        }
        blocks.push(BlockEntry {
            num_heads: block.attn.num_heads,
            num_kv_heads: block.attn.num_kv_heads,
        });
    }
    let tied_head = head_is_tied_copy(model)?;
    if !tied_head {
        layers.insert("lm_head".into(), t.linear("lm_head", &model.lm_head)?);
    }
    let (kind, tokenizer_bytes) = match tokenizer.gguf_vocab() {
        Some(v) => (
            TokenizerKind::GgufVocab,
            serde_json::to_vec(v).map_err(|e| ModelError::InvalidInput(e.to_string()))?,
        ),
        None => (
            TokenizerKind::TokenizerJson,
            tokenizer.to_json()?.into_bytes(),
        ),
    };
    let n = tokenizer_bytes.len();
    t.put(TOKENIZER_TENSOR.into(), Dtype::U8, vec![n], tokenizer_bytes);

    let checksums =
        t.0.iter()
            .map(|(name, o)| (name.clone(), crc32fast::hash(&o.data)))
            .collect();
    let header = Header {
        format: FORMAT.into(),
        version: layers
            .values()
            .map(|e| match e {
                LayerEntry::QuantizedLowRank { .. } => 3,
                LayerEntry::Quantized {
                    correction_rank: Some(_),
                    ..
                } => 2,
                _ => 1,
            })
            .max()
            .unwrap_or(1),
        config: model.config().clone(),
        attention_precision: precision_name(model.attention_precision()).into(),
        blocks,
        layers,
        tied_head,
        tokenizer: TokenizerEntry {
            kind,
            special: tokenizer.special_tokens(),
        },
        provenance: options.provenance.clone(),
        nesting: options.nesting.clone(),
        checksums,
    };
    let json =
        serde_json::to_string(&header).map_err(|e| ModelError::InvalidInput(e.to_string()))?;
    let metadata = HashMap::from([(METADATA_KEY.to_string(), json)]);
    let views =
        t.0.iter()
            .map(|(name, o)| {
                TensorView::new(o.dtype, o.shape.clone(), &o.data)
                    .map(|v| (name.clone(), v))
                    .map_err(|e| ModelError::InvalidInput(format!("tensor {name}: {e}")))
            })
            .collect::<Result<Vec<_>, _>>()?;
    write_atomic(path, |tmp| {
        safetensors::serialize_to_file(views, Some(metadata), tmp).map_err(|e| {
            ModelError::Safetensors {
                path: tmp.to_path_buf(),
                message: e.to_string(),
            }
        })
    })?;
    Ok(header)
}
