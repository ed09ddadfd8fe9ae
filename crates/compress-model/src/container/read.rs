//! Loading a container (format in the [module docs](super)), verifying everything it states.

use std::path::Path;
use std::sync::Arc;

use burn::module::Param;
use burn::tensor::{Device, Tensor, TensorData};
use compress_core::linear::{
    CompressedLinear, DenseLinear, LowRankLinear, QuantizedLinear, QuantizedLowRankLinear,
};
use compress_core::packed::{Bits, Granularity, PackedWeight, QuantScheme, Symmetry};
use compress_core::sparsity::SparsityMask;
use half::f16;
use memmap2::Mmap;
use safetensors::{Dtype, SafeTensors};

use super::write::precision_name;
use super::{
    GranularityEntry, Header, LayerEntry, PackedEntry, TokenizerKind, FORMAT, METADATA_KEY, VERSION,
};
use crate::config::LayerAttention;
use crate::error::ModelError;
use crate::llama::build::{attention_scale, ropes};
use crate::llama::{
    Attention, AttentionPrecision, Block, FeedForward, LlamaModel, Mlp, Moe, RmsNorm,
};
use crate::load::LoadedModel;
use crate::tokenizer::{GgufVocab, LlmTokenizer};
use compress_core::layer_id::{Expert, LinearId, LinearKind};

/// Whether `path` is a container: a safetensors file whose metadata has the `compress` key.
/// Reads only the header; `false` for anything unreadable.
pub fn is_container(path: &Path) -> bool {
    let Ok(file) = compress_core::input::open_regular(path) else {
        return false;
    };
    // SAFETY: read-only map; the file is not modified while mapped by this function.
    let Ok(map) = (unsafe { Mmap::map(&file) }) else {
        return false;
    };
    SafeTensors::read_metadata(&map)
        .ok()
        .and_then(|(_, m)| m.metadata().as_ref().map(|m| m.contains_key(METADATA_KEY)))
        .unwrap_or(false)
}

/// Reads only the header of the container at `path` (provenance, layer kinds, config).
pub fn read_header(path: &Path) -> Result<Header, ModelError> {
    let io = |source| ModelError::Io {
        path: path.to_path_buf(),
        source,
    };
    let file = compress_core::input::open_regular(path).map_err(io)?;
    // SAFETY: read-only map, only the header is parsed.
    let map = unsafe { Mmap::map(&file) }.map_err(io)?;
    let (_, metadata) = SafeTensors::read_metadata(&map).map_err(|e| ModelError::Safetensors {
        path: path.to_path_buf(),
        message: format!("header: {e} (the file is truncated or corrupt)"),
    })?;
    parse_header(path, &metadata)
}

fn parse_header(
    path: &Path,
    metadata: &safetensors::tensor::Metadata,
) -> Result<Header, ModelError> {
    let json = metadata
        .metadata()
        .as_ref()
        .and_then(|m| m.get(METADATA_KEY))
        .ok_or_else(|| ModelError::Safetensors {
            path: path.to_path_buf(),
            message: format!(
                "a safetensors file without a `{METADATA_KEY}` header is not a compress container"
            ),
        })?;
    serde_json::from_str(json).map_err(|e| ModelError::Json {
        path: path.to_path_buf(),
        message: format!("container header: {e}"),
    })
}

struct Reader<'a> {
    path: &'a Path,
    st: SafeTensors<'a>,
    header: &'a Header,
    device: &'a Device,
}

impl Reader<'_> {
    fn err(&self, message: String) -> ModelError {
        ModelError::Safetensors {
            path: self.path.to_path_buf(),
            message,
        }
    }

    /// The bytes of `name`, checked for dtype, shape and checksum.
    fn bytes(&self, name: &str, dtype: Dtype, shape: &[usize]) -> Result<&[u8], ModelError> {
        let view = self
            .st
            .tensor(name)
            .map_err(|_| self.err(format!("tensor `{name}` is missing")))?;
        if view.dtype() != dtype || view.shape() != shape {
            return Err(self.err(format!(
                "tensor `{name}` is {:?} {:?}, expected {dtype:?} {shape:?}",
                view.dtype(),
                view.shape()
            )));
        }
        Ok(view.data())
    }

    /// The shape of `name` as stored (for tensors whose size the header does not state).
    fn shape(&self, name: &str) -> Result<Vec<usize>, ModelError> {
        self.st
            .tensor(name)
            .map(|v| v.shape().to_vec())
            .map_err(|_| self.err(format!("tensor `{name}` is missing")))
    }

    fn f32<const D: usize>(&self, name: &str, shape: [usize; D]) -> Result<Tensor<D>, ModelError> {
        let values: Vec<f32> = self
            .bytes(name, Dtype::F32, &shape)?
            .chunks_exact(4)
            .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]))
            .collect();
        if let Some(i) = values.iter().position(|v| !v.is_finite()) {
            return Err(ModelError::NonFinite {
                tensor: name.into(),
                index: i,
                value: values[i],
            });
        }
        Ok(Tensor::from_data(
            TensorData::new(values, shape),
            self.device,
        ))
    }

    fn f16(&self, name: &str, len: usize) -> Result<Vec<f16>, ModelError> {
        Ok(self
            .bytes(name, Dtype::F16, &[len])?
            .chunks_exact(2)
            .map(|b| f16::from_le_bytes([b[0], b[1]]))
            .collect())
    }

    fn mask(&self, name: &str, [out, inp]: [usize; 2]) -> Result<SparsityMask, ModelError> {
        let n = (out * inp).div_ceil(64);
        let words = self
            .bytes(name, Dtype::U64, &[n])?
            .chunks_exact(8)
            .map(|b| u64::from_le_bytes(b.try_into().expect("8 bytes")))
            .collect();
        SparsityMask::from_words(out, inp, words).map_err(|e| self.err(format!("`{name}`: {e}")))
    }

    /// A dense layer's mask only prunes weights that are zero (what every pruner writes): a
    /// mask over non-zero weights would change the layer's function depending on which path
    /// (masked dense product or kernel) runs it.
    fn check_masked_zero(
        &self,
        path: &str,
        l: &DenseLinear,
        mask: &SparsityMask,
    ) -> Result<(), ModelError> {
        let w = l.weight.val().into_data();
        let w = w
            .as_slice::<f32>()
            .map_err(|e| self.err(format!("`{path}.weight`: {e:?}")))?;
        if let Some(i) = (0..w.len()).find(|&i| !mask.is_kept_flat(i) && w[i] != 0.0) {
            let cols = mask.shape()[1];
            return Err(self.err(format!(
                "`{path}.mask` prunes non-zero weights (first at row {}, column {}: {})",
                i / cols,
                i % cols,
                w[i]
            )));
        }
        Ok(())
    }

    /// Output width of a stored layer, from the tensor that states it.
    fn out_features(&self, path: &str) -> Result<usize, ModelError> {
        let first = |name: String| -> Result<usize, ModelError> {
            self.shape(&name)?
                .first()
                .copied()
                .ok_or_else(|| self.err(format!("`{name}` has no dimensions")))
        };
        match self.header.layers.get(path) {
            Some(LayerEntry::Quantized { shape, .. }) => Ok(shape[0]),
            Some(LayerEntry::Dense { .. }) => first(format!("{path}.weight")),
            Some(LayerEntry::LowRank { .. }) => first(format!("{path}.up")),
            Some(LayerEntry::QuantizedLowRank { .. }) => first(format!("{path}.up.codes")),
            None => Err(self.err(format!("the header does not describe layer `{path}`"))),
        }
    }

    fn linear(&self, path: &str, out: usize, inp: usize) -> Result<CompressedLinear, ModelError> {
        let entry = self
            .header
            .layers
            .get(path)
            .ok_or_else(|| self.err(format!("the header does not describe layer `{path}`")))?;
        let bias_of = |has: bool| -> Result<Option<Tensor<1>>, ModelError> {
            has.then(|| self.f32(&format!("{path}.bias"), [out]))
                .transpose()
        };
        Ok(match entry {
            LayerEntry::Dense { bias, mask } => {
                let mut l = DenseLinear::new(
                    self.f32(&format!("{path}.weight"), [out, inp])?,
                    bias_of(*bias)?,
                );
                if *mask {
                    let mask = self.mask(&format!("{path}.mask"), [out, inp])?;
                    self.check_masked_zero(path, &l, &mask)?;
                    l.mask = Some(Arc::new(mask));
                }
                CompressedLinear::Dense(l)
            }
            LayerEntry::LowRank { bias } => {
                let up_shape = self.shape(&format!("{path}.up"))?;
                let rank = match up_shape.as_slice() {
                    [o, r] if *o == out => *r,
                    other => {
                        return Err(
                            self.err(format!("`{path}.up` is {other:?}, expected [{out}, rank]"))
                        )
                    }
                };
                CompressedLinear::LowRank(LowRankLinear::new(
                    self.f32(&format!("{path}.up"), [out, rank])?,
                    self.f32(&format!("{path}.down"), [rank, inp])?,
                    bias_of(*bias)?,
                ))
            }
            LayerEntry::Quantized {
                shape,
                bits,
                granularity,
                symmetric,
                bias,
                mask,
                correction_rank,
            } => {
                if *shape != [out, inp] {
                    return Err(self.err(format!(
                        "layer `{path}` is {shape:?} in the header, the model needs [{out}, {inp}]"
                    )));
                }
                let entry = PackedEntry {
                    bits: *bits,
                    granularity: *granularity,
                    symmetric: *symmetric,
                };
                let mut packed = self.packed(path, path, &entry, [out, inp])?;
                if *mask {
                    packed = packed
                        .with_mask(self.mask(&format!("{path}.mask"), [out, inp])?)
                        .map_err(|e| self.err(format!("layer `{path}`: {e}")))?;
                }
                let mut q = QuantizedLinear::new(packed, bias_of(*bias)?, self.device);
                if let Some(r) = *correction_rank {
                    q = q.with_correction(
                        self.f32(&format!("{path}.correction_up"), [out, r])?,
                        self.f32(&format!("{path}.correction_down"), [r, inp])?,
                    );
                }
                CompressedLinear::Quantized(q)
            }
            LayerEntry::QuantizedLowRank {
                rank,
                up,
                down,
                bias,
            } => {
                let up = self.packed(path, &format!("{path}.up"), up, [out, *rank])?;
                let down = self.packed(path, &format!("{path}.down"), down, [*rank, inp])?;
                CompressedLinear::QuantizedLowRank(QuantizedLowRankLinear::new(
                    up,
                    down,
                    bias_of(*bias)?,
                    self.device,
                ))
            }
        })
    }

    /// Packed codes `{prefix}.codes`, `.scales`, `.zeros` of an `[out, inp]` matrix of layer
    /// `path`, with the scheme `e`.
    fn packed(
        &self,
        path: &str,
        prefix: &str,
        e: &PackedEntry,
        [out, inp]: [usize; 2],
    ) -> Result<PackedWeight, ModelError> {
        let bad = |e: compress_core::packed::PackedError| self.err(format!("layer `{path}`: {e}"));
        let scheme = QuantScheme {
            bits: Bits::new(e.bits).map_err(bad)?,
            granularity: match e.granularity {
                GranularityEntry::Tensor => Granularity::PerTensor,
                GranularityEntry::Channel => Granularity::PerChannel,
                GranularityEntry::Group(g) => Granularity::PerGroup(
                    std::num::NonZeroUsize::new(g)
                        .ok_or_else(|| self.err(format!("layer `{path}`: group size 0")))?,
                ),
            },
            symmetry: if e.symmetric {
                Symmetry::Symmetric
            } else {
                Symmetry::Asymmetric
            },
        };
        let codes = self
            .bytes(
                &format!("{prefix}.codes"),
                Dtype::U8,
                &[out, scheme.row_bytes(inp)],
            )?
            .to_vec();
        let n = scheme.num_scales(out, inp);
        let scales = self.f16(&format!("{prefix}.scales"), n)?;
        let zeros = (!e.symmetric)
            .then(|| self.f16(&format!("{prefix}.zeros"), n))
            .transpose()?;
        PackedWeight::from_packed(scheme, out, inp, codes, scales, zeros).map_err(bad)
    }

    fn tokenizer(&self) -> Result<LlmTokenizer, ModelError> {
        let len = self.shape(super::TOKENIZER_TENSOR)?.iter().product();
        let bytes = self.bytes(super::TOKENIZER_TENSOR, Dtype::U8, &[len])?;
        let t = &self.header.tokenizer;
        Ok(match t.kind {
            TokenizerKind::GgufVocab => {
                let vocab: GgufVocab = serde_json::from_slice(bytes)
                    .map_err(|e| self.err(format!("tokenizer vocabulary: {e}")))?;
                LlmTokenizer::from_gguf_vocab(&vocab)?
            }
            TokenizerKind::TokenizerJson => {
                let json = std::str::from_utf8(bytes)
                    .map_err(|e| self.err(format!("tokenizer.json: {e}")))?;
                LlmTokenizer::from_json_str(json, t.special)?
            }
        })
    }
}

/// Loads a container written by [`super::write_container`] onto `device`.
///
/// Verifies, before building anything, that the safetensors structure is intact (a truncated
/// file fails here), that the header is a `compress` header of a version this build reads, and
/// that every tensor's CRC-32 matches the header (naming the first corrupt tensor); then checks
/// every tensor's dtype and shape against the config and every f32 value for NaN/Inf.
pub fn read_container(path: &Path, device: &Device) -> Result<LoadedModel, ModelError> {
    let io = |source| ModelError::Io {
        path: path.to_path_buf(),
        source,
    };
    let file = compress_core::input::open_regular(path).map_err(io)?;
    // SAFETY: read-only map; like every mmap-based loader we assume the file is not truncated
    // by another process while it is being read.
    let map = unsafe { Mmap::map(&file) }.map_err(io)?;
    read_container_bytes(path, &map, device)
}

/// [`read_container`] over the file's bytes (`path` names it in messages).
pub(crate) fn read_container_bytes(
    path: &Path,
    map: &[u8],
    device: &Device,
) -> Result<LoadedModel, ModelError> {
    let st_err = |what: &str, e: safetensors::SafeTensorError| ModelError::Safetensors {
        path: path.to_path_buf(),
        message: format!("{what}: {e} (the file is truncated or corrupt)"),
    };
    let (_, metadata) = SafeTensors::read_metadata(map).map_err(|e| st_err("header", e))?;
    let st = SafeTensors::deserialize(map).map_err(|e| st_err("layout", e))?;
    let header = parse_header(path, &metadata)?;
    let r = Reader {
        path,
        st,
        header: &header,
        device,
    };
    if header.format != FORMAT {
        return Err(r.err(format!(
            "header format `{}` is not `{FORMAT}`",
            header.format
        )));
    }
    if header.version > VERSION {
        return Err(r.err(format!(
            "container version {} is newer than this build reads ({VERSION}); upgrade compress",
            header.version
        )));
    }
    if header.version == 0 {
        return Err(r.err("container version 0 does not exist (versions start at 1)".into()));
    }
    if let Some(n) = &header.nesting {
        n.validate().map_err(|e| r.err(format!("nesting: {e}")))?;
    }
    if header.tied_head {
        if let Some(name) = r.st.names().into_iter().find(|n| n.starts_with("lm_head.")) {
            return Err(r.err(format!(
                "the header ties the head to the embedding, but the file stores `{name}`"
            )));
        }
    }
    verify_checksums(&r)?;
    let c = header.config.clone();
    c.validate().map_err(ModelError::InvalidConfig)?;
    if header.blocks.len() != c.num_layers {
        return Err(r.err(format!(
            "{} block entries for {} layers",
            header.blocks.len(),
            c.num_layers
        )));
    }
    let precision = match header.attention_precision.as_str() {
        p if p == precision_name(AttentionPrecision::F32) => AttentionPrecision::F32,
        p if p == precision_name(AttentionPrecision::F16KvCache) => AttentionPrecision::F16KvCache,
        other => return Err(r.err(format!("unknown attention precision `{other}`"))),
    };
    let d = c.hidden_size;
    let embedding = r.f32("embedding", [c.vocab_size, d])?;
    let mut layers = Vec::with_capacity(c.num_layers);
    for (l, b) in header.blocks.iter().enumerate() {
        if b.num_kv_heads == 0 || !b.num_heads.is_multiple_of(b.num_kv_heads) {
            return Err(r.err(format!(
                "block {l}: {} heads, {} KV heads",
                b.num_heads, b.num_kv_heads
            )));
        }
        let (q, kv) = (b.num_heads * c.head_dim, b.num_kv_heads * c.head_dim);
        let path = |k: LinearKind| LinearId::block(l, k).to_string();
        let lin = |k: LinearKind, out, inp| r.linear(&path(k), out, inp);
        // A gated MLP stored under the ids `id(kind)`: its width from the gate's rows.
        let mlp_at = |id: &dyn Fn(LinearKind) -> LinearId| -> Result<Mlp, ModelError> {
            let width = r.out_features(&id(LinearKind::Gate).to_string())?;
            let m = |k: LinearKind, out, inp| r.linear(&id(k).to_string(), out, inp);
            Ok(Mlp {
                gate_proj: m(LinearKind::Gate, width, d)?,
                up_proj: m(LinearKind::Up, width, d)?,
                down_proj: m(LinearKind::Down, d, width)?,
                activation: c.variant.activation,
            })
        };
        let mlp = match &c.variant.moe {
            Some(m) if m.is_moe_layer(l) => {
                let shared = |k| LinearId::expert(l, Expert::Shared, k);
                let has_shared = m.shared_expert_intermediate_size.is_some();
                FeedForward::Moe(Moe {
                    router: lin(LinearKind::Router, m.num_experts, d)?,
                    experts: (0..m.num_experts as u32)
                        .map(|e| mlp_at(&|k| LinearId::expert(l, Expert::Routed(e), k)))
                        .collect::<Result<_, _>>()?,
                    shared: has_shared.then(|| mlp_at(&shared)).transpose()?,
                    shared_gate: has_shared
                        .then(|| r.linear(&shared(LinearKind::Router).to_string(), 1, d))
                        .transpose()?,
                    top_k: m.experts_per_token,
                    normalize: m.normalize_weights,
                })
            }
            _ => FeedForward::Dense(mlp_at(&|k| LinearId::block(l, k))?),
        };
        let v = &c.variant;
        let norm = |name: &str, width: usize| -> Result<RmsNorm, ModelError> {
            Ok(RmsNorm::new(
                r.f32(&format!("layers.{l}.{name}"), [width])?,
                c.rms_norm_eps,
            ))
        };
        let optional_norm =
            |on: bool, name: &str, width: usize| on.then(|| norm(name, width)).transpose();
        layers.push(Block {
            attn_norm: norm("attn_norm", d)?,
            attn: Attention {
                q_proj: lin(LinearKind::Q, q, d)?,
                k_proj: lin(LinearKind::K, kv, d)?,
                v_proj: lin(LinearKind::V, kv, d)?,
                o_proj: lin(LinearKind::O, d, q)?,
                q_norm: optional_norm(v.qk_norm, "q_norm", c.head_dim)?,
                k_norm: optional_norm(v.qk_norm, "k_norm", c.head_dim)?,
                scale: attention_scale(&c),
                softcap: v.attn_softcap,
                num_heads: b.num_heads,
                num_kv_heads: b.num_kv_heads,
                head_dim: c.head_dim,
                precision,
            },
            post_attn_norm: optional_norm(v.sandwich_norms, "post_attn_norm", d)?,
            ffn_norm: norm("ffn_norm", d)?,
            mlp,
            post_ffn_norm: optional_norm(v.sandwich_norms, "post_ffn_norm", d)?,
            sliding: v.attention_of(l) == LayerAttention::Sliding,
        });
    }
    let norm = RmsNorm::new(r.f32("norm", [d])?, c.rms_norm_eps);
    let lm_head = if header.tied_head {
        CompressedLinear::Dense(DenseLinear::new(embedding.clone(), None))
    } else {
        r.linear("lm_head", c.vocab_size, d)?
    };
    let tokenizer = r.tokenizer()?;
    crate::load::check_vocabulary(&tokenizer, c.vocab_size, false, "the container")?;
    let (rope, rope_local) = ropes(&c, device);
    let model = LlamaModel {
        embedding: Param::from_tensor(embedding),
        layers,
        norm,
        lm_head,
        rope,
        rope_local,
        config: c,
        mlp_folds: 0,
        embedding_source: None,
    };
    Ok(LoadedModel { model, tokenizer })
}

/// Every tensor in the file is listed in the header and matches its CRC-32, and vice versa.
fn verify_checksums(r: &Reader<'_>) -> Result<(), ModelError> {
    let names = r.st.names();
    for name in &names {
        let want = r
            .header
            .checksums
            .get(*name)
            .ok_or_else(|| r.err(format!("tensor `{name}` has no checksum in the header")))?;
        let view = r.st.tensor(name).map_err(|e| r.err(e.to_string()))?;
        let got = crc32fast::hash(view.data());
        if got != *want {
            return Err(r.err(format!(
                "tensor `{name}` is corrupt: CRC-32 {got:08x}, the header says {want:08x}"
            )));
        }
    }
    if let Some(missing) = r
        .header
        .checksums
        .keys()
        .find(|k| !names.contains(&k.as_str()))
    {
        return Err(r.err(format!(
            "tensor `{missing}` is in the header but not in the file"
        )));
    }
    Ok(())
}
