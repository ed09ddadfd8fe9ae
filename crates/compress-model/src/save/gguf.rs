//! Writing a [`LlamaModel`] as a GGUF file llama.cpp loads.
//!
//! Hyper-parameters go to the `{arch}.*` keys llama.cpp reads (`context_length`,
//! `embedding_length`, `block_count`, `feed_forward_length`, head counts, RMSNorm ε, RoPE base
//! and dimension count), the tokenizer to `tokenizer.ggml.*` (copied from the GGUF vocabulary
//! the model was loaded with, or converted from a byte-level BPE `tokenizer.json`), tensors to llama.cpp's names (`blk.{l}.attn_q.weight`, ...).
//!
//! Each linear is written in the most faithful type available: packed layers whose scheme is a
//! ggml block format ([`crate::gguf::encode`]) as that format, with no dequantize-requantize
//! round trip; dense layers (and, when [`GgufExport::fallback_dense`] allows it, layers with no
//! ggml equivalent: low-rank, 3-bit, groups of 128, ...) as [`GgufExport::dense`]. Norms are
//! always f32. The [`GgufReport`] lists every tensor with its type and its largest deviation
//! from the model's weights, so nothing is converted silently.
//!
//! GGUF `llama` files pair RoPE dimensions interleaved, `qwen2` files NeoX-style; a model whose
//! layout differs from its target architecture's (a Llama loaded from Hugging Face safetensors)
//! has its q/k rows permuted on the way out, exactly as llama.cpp's converter does.

use std::path::Path;

use burn::tensor::Tensor;
use compress_core::linear::CompressedLinear;
use compress_core::pipeline::BlockwiseModel;

use super::{host, rope_row_order};
use crate::config::{Architecture, RopeLayout};
use crate::error::ModelError;
use crate::gguf::encode::{encode_float, encode_packed, encode_q8_0, Encoded};
use crate::gguf::{GgmlType, GgufArray, GgufValue, GgufWriter};
use crate::llama::LlamaModel;
use crate::tokenizer::{GgufVocab, LlmTokenizer};
use compress_core::layer_id::LinearKind;
use compress_core::pipeline::BlockWalk;

/// Options of [`write_gguf`].
#[derive(Debug, Clone)]
pub struct GgufExport {
    /// Type of dense weights (embedding, unquantized linears): `F32`, `F16` or `BF16`.
    pub dense: GgmlType,
    /// Write layers with no ggml block format as dense [`Self::dense`] weights (reported as
    /// such) instead of failing.
    pub fallback_dense: bool,
    /// Type of the token embedding (and so of a tied output head), when not [`Self::dense`]:
    /// `F32`, `F16`, `BF16`, or `Q8_0` — quantized at export by round to nearest, the one lossy
    /// step of the writer (reported with its deviation), as llama.cpp stores it in its own
    /// quantized files.
    pub embedding: Option<GgmlType>,
    /// `general.name`.
    pub name: String,
}

impl Default for GgufExport {
    fn default() -> Self {
        Self {
            dense: GgmlType::F32,
            fallback_dense: false,
            embedding: None,
            name: "compress".into(),
        }
    }
}

/// One tensor as written.
#[derive(Debug, Clone)]
pub struct TensorWritten {
    /// GGUF name.
    pub name: String,
    /// ggml type.
    pub ty: GgmlType,
    /// Largest `|w_file − w_model|`; 0 when exact.
    pub max_abs_error: f32,
    /// Why a compressed layer was written dense, if it was.
    pub fallback: Option<String>,
}

/// What [`write_gguf`] wrote.
#[derive(Debug, Clone)]
pub struct GgufReport {
    /// Every tensor, in file order.
    pub tensors: Vec<TensorWritten>,
    /// File size in bytes.
    pub bytes: u64,
}

/// llama.cpp's name of a block projection (`attn_q`, …, `ffn_down`); `None` for kinds a
/// llama-layout block does not have.
fn gguf_proj(kind: LinearKind) -> Option<&'static str> {
    Some(match kind {
        LinearKind::Q => "attn_q",
        LinearKind::K => "attn_k",
        LinearKind::V => "attn_v",
        LinearKind::O => "attn_output",
        LinearKind::Gate => "ffn_gate",
        LinearKind::Up => "ffn_up",
        LinearKind::Down => "ffn_down",
        _ => return None,
    })
}

/// Reorders the rows of encoded tensor data (every ggml format encodes rows independently).
fn permute_rows(data: &[u8], order: &[usize]) -> Vec<u8> {
    let row = data.len() / order.len();
    order
        .iter()
        .flat_map(|&r| &data[r * row..(r + 1) * row])
        .copied()
        .collect()
}

struct Export<'a> {
    writer: GgufWriter,
    report: Vec<TensorWritten>,
    options: &'a GgufExport,
}

impl Export<'_> {
    fn add(
        &mut self,
        name: String,
        shape: &[usize],
        e: Encoded,
        order: Option<&[usize]>,
        fallback: Option<String>,
    ) -> Result<(), ModelError> {
        let data = match order {
            Some(o) => permute_rows(&e.data, o),
            None => e.data,
        };
        self.writer.add_tensor(&name, shape, e.ty, data)?;
        self.report.push(TensorWritten {
            name,
            ty: e.ty,
            max_abs_error: e.max_abs_error,
            fallback,
        });
        Ok(())
    }

    fn float<const D: usize>(
        &mut self,
        name: String,
        t: Tensor<D>,
        ty: GgmlType,
        order: Option<&[usize]>,
    ) -> Result<(), ModelError> {
        let shape = t.dims().to_vec();
        let values = host(t, &name)?;
        self.add(name, &shape, encode_float(&values, ty), order, None)
    }

    fn linear(
        &mut self,
        name: &str,
        lin: &CompressedLinear,
        order: Option<&[usize]>,
    ) -> Result<(), ModelError> {
        let weight = format!("{name}.weight");
        let shape = [lin.out_features(), lin.in_features()];
        let why = match lin {
            CompressedLinear::Dense(_) => None,
            CompressedLinear::LowRank(l) => Some(format!("a rank-{} factorization", l.rank())),
            CompressedLinear::QuantizedLowRank(l) => Some(format!(
                "a rank-{} factorization with quantized factors",
                l.rank()
            )),
            CompressedLinear::Quantized(q) if q.correction.is_some() => {
                Some("a low-rank correction term (ggml has no such layer)".to_string())
            }
            CompressedLinear::Quantized(q) => match encode_packed(&q.packed) {
                Ok(e) => return self.add(weight, &shape, e, order, None),
                Err(why) => Some(why),
            },
        };
        if let Some(why) = &why {
            if !self.options.fallback_dense {
                return Err(ModelError::InvalidInput(format!(
                    "{weight}: {why}; allow writing it as dense {} (fallback_dense / --dense-fallback) \
                     or choose a ggml-compatible scheme",
                    self.options.dense
                )));
            }
        }
        let values = host(lin.dense_weight(), &weight)?;
        let e = encode_float(&values, self.options.dense);
        self.add(weight, &shape, e, order, why)
    }
}

/// Writes `model` (with `tokenizer`'s GGUF vocabulary, or the one
/// [`GgufVocab::from_hf_tokenizer`] converts from its `tokenizer.json`) to `path` as GGUF v3,
/// atomically.
///
/// Fails, naming the block or layer, when the model cannot be expressed: blocks of different
/// widths (after structured pruning; llama.cpp's `llama` reader expects one width), a
/// `tokenizer.json` that does not convert (SentencePiece-style, or an unnamed pre-tokenizer), or
/// (without [`GgufExport::fallback_dense`]) a layer with no ggml format.
///
/// ```no_run
/// # fn main() -> Result<(), compress_model::ModelError> {
/// use compress_model::save::{write_gguf, GgufExport};
/// let device = compress_core::backend::BackendKind::default().device().unwrap();
/// let m = compress_model::load("../shared/models/stories260K.gguf", &device)?;
/// let report = write_gguf(&m.model, &m.tokenizer, "out.gguf".as_ref(), &GgufExport::default())?;
/// println!("{} tensors, {} bytes", report.tensors.len(), report.bytes);
/// # Ok(()) }
/// ```
pub fn write_gguf(
    model: &LlamaModel,
    tokenizer: &LlmTokenizer,
    path: &Path,
    options: &GgufExport,
) -> Result<GgufReport, ModelError> {
    if !matches!(
        options.dense,
        GgmlType::F32 | GgmlType::F16 | GgmlType::BF16
    ) {
        return Err(ModelError::InvalidInput(format!(
            "dense GGUF weights are F32, F16 or BF16, not {}",
            options.dense
        )));
    }
    if let Some(ty) = options.embedding {
        let cols = model.config().hidden_size;
        let ok = match ty {
            GgmlType::F32 | GgmlType::F16 | GgmlType::BF16 => true,
            GgmlType::Q8_0 => cols.is_multiple_of(32),
            _ => false,
        };
        if !ok {
            return Err(ModelError::InvalidInput(format!(
                "the token embedding can be F32, F16, BF16 or Q8_0 (rows a multiple of 32; this \
                 model's are {cols}), not {ty}"
            )));
        }
    }
    let c = model.config();
    let converted;
    let vocab = match tokenizer.gguf_vocab() {
        Some(v) => v,
        None => {
            converted = GgufVocab::from_hf_tokenizer(tokenizer).map_err(|e| {
                ModelError::InvalidInput(format!(
                    "GGUF export needs a GGUF vocabulary, and this tokenizer.json does not convert \
                     to one: {e}"
                ))
            })?;
            &converted
        }
    };
    for (l, b) in model.layers.iter().enumerate() {
        let (f, h, kv) = (
            b.mlp.gate_proj.out_features(),
            b.attn.num_heads,
            b.attn.num_kv_heads,
        );
        if (f, h, kv) != (c.intermediate_size, c.num_heads, c.num_kv_heads) {
            return Err(ModelError::InvalidInput(format!(
                "block {l} has FFN width {f} and {h}/{kv} heads, the model {} and {}/{}: GGUF \
                 needs one shape for every block (save to the container format instead)",
                c.intermediate_size, c.num_heads, c.num_kv_heads
            )));
        }
    }
    let (arch, target_layout) = match c.architecture {
        Architecture::Llama | Architecture::Mistral => ("llama", RopeLayout::Interleaved),
        Architecture::Qwen2 => ("qwen2", RopeLayout::NeoX),
        other => {
            return Err(ModelError::InvalidInput(format!(
                "GGUF export of the {} family is not implemented yet (llama, mistral and qwen2 \
                 are); save to the container format instead",
                crate::family::family_of(other).name
            )))
        }
    };
    let mut ex = Export {
        writer: GgufWriter::new(),
        report: Vec::new(),
        options,
    };
    let w = &mut ex.writer;
    let u32v = |v: usize| GgufValue::U32(v as u32);
    let key = |k: &str| format!("{arch}.{k}");
    w.set("general.architecture", GgufValue::String(arch.into()));
    w.set("general.name", GgufValue::String(options.name.clone()));
    w.set(&key("context_length"), u32v(c.max_seq_len));
    w.set(&key("embedding_length"), u32v(c.hidden_size));
    w.set(&key("block_count"), u32v(c.num_layers));
    w.set(&key("feed_forward_length"), u32v(c.intermediate_size));
    w.set(&key("attention.head_count"), u32v(c.num_heads));
    w.set(&key("attention.head_count_kv"), u32v(c.num_kv_heads));
    w.set(&key("attention.key_length"), u32v(c.head_dim));
    w.set(&key("attention.value_length"), u32v(c.head_dim));
    w.set(&key("rope.dimension_count"), u32v(c.head_dim));
    w.set(&key("rope.freq_base"), GgufValue::F32(c.rope_theta));
    w.set(
        &key("attention.layer_norm_rms_epsilon"),
        GgufValue::F32(c.rms_norm_eps),
    );
    w.set(&key("vocab_size"), u32v(c.vocab_size));
    set_vocab(w, vocab);

    match options.embedding.unwrap_or(options.dense) {
        GgmlType::Q8_0 => {
            let t = model.embedding.val();
            let shape = t.dims().to_vec();
            let values = host(t, "token_embd.weight")?;
            // Reported through its deviation (`max_abs_error`); it is not a dense fallback.
            ex.add(
                "token_embd.weight".into(),
                &shape,
                encode_q8_0(&values),
                None,
                None,
            )?;
        }
        ty => ex.float("token_embd.weight".into(), model.embedding.val(), ty, None)?,
    }
    let hd = c.head_dim;
    for (l, block) in model.layers.iter().enumerate() {
        ex.float(
            format!("blk.{l}.attn_norm.weight"),
            block.attn_norm.weight.val(),
            GgmlType::F32,
            None,
        )?;
        for id in model.stages(l).into_iter().flat_map(|s| s.linears) {
            let lin = model.expect_linear(id);
            let proj = gguf_proj(id.kind()).ok_or_else(|| {
                ModelError::InvalidInput(format!("GGUF export has no tensor name for `{id}`"))
            })?;
            let gguf = format!("blk.{l}.{proj}");
            let order = if id.kind().is_rotated() {
                rope_row_order(lin.out_features(), hd, c.rope_layout, target_layout)
            } else {
                None
            };
            ex.linear(&gguf, lin, order.as_deref())?;
            if let Some(bias) = lin.bias() {
                ex.float(
                    format!("{gguf}.bias"),
                    bias,
                    GgmlType::F32,
                    order.as_deref(),
                )?;
            }
        }
        ex.float(
            format!("blk.{l}.ffn_norm.weight"),
            block.ffn_norm.weight.val(),
            GgmlType::F32,
            None,
        )?;
    }
    ex.float(
        "output_norm.weight".into(),
        model.norm.weight.val(),
        GgmlType::F32,
        None,
    )?;
    if !super::head_is_tied_copy(model)? {
        ex.linear("output", &model.lm_head, None)?;
    }
    let file_type = file_type(&ex.report);
    ex.writer
        .set("general.file_type", GgufValue::U32(file_type));
    ex.writer
        .set("general.quantization_version", GgufValue::U32(2));
    ex.writer.write(path)?;
    let bytes = std::fs::metadata(path)
        .map_err(|source| ModelError::Io {
            path: path.to_path_buf(),
            source,
        })?
        .len();
    Ok(GgufReport {
        tensors: ex.report,
        bytes,
    })
}

fn set_vocab(w: &mut GgufWriter, v: &GgufVocab) {
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
fn file_type(tensors: &[TensorWritten]) -> u32 {
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rows_are_permuted_whole() {
        let data: Vec<u8> = (0..8).flat_map(|r| [r, r]).collect();
        let order = rope_row_order(8, 4, RopeLayout::NeoX, RopeLayout::Interleaved).unwrap();
        assert_eq!(permute_rows(&data, &order)[2..4], [2, 2]);
    }
}
