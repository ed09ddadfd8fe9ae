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
//! Each family is written as llama.cpp's converter writes it ([`crate::family`]): its
//! architecture name (Mistral as `llama`), its own keys (Gemma's soft-caps, sliding window and
//! local RoPE base; Phi-3's window), its extra norms (`post_attention_norm`, `post_ffw_norm`,
//! `attn_q_norm`, `attn_k_norm`), Phi-3's fused `attn_qkv` and `ffn_up` (rows stacked straight
//! from each projection's codes when they share a block format), and RoPE scaling as keys or
//! factor tensors. A model llama.cpp would run differently — a query scale or sliding pattern
//! its loader fixes otherwise — is refused with the reason. GGUF `llama` files pair RoPE
//! dimensions interleaved, the other families NeoX-style; a model whose layout differs from its
//! target's (a Llama loaded from Hugging Face safetensors) has its q/k rows permuted on the way
//! out, exactly as llama.cpp's converter does.

use std::path::Path;

use burn::tensor::Tensor;
use compress_core::linear::CompressedLinear;

use super::gguf_meta::{file_type, rope_scaling, set_vocab};
use super::{host, rope_row_order};
use crate::config::RopeScaling;
use crate::error::ModelError;
use crate::gguf::encode::{encode_float, encode_packed, encode_q8_0, Encoded};
use crate::gguf::{GgmlType, GgufValue, GgufWriter};
use crate::llama::{FeedForward, LlamaModel, RmsNorm};
use crate::tokenizer::{GgufVocab, LlmTokenizer};
use compress_core::layer_id::{Expert, LinearId, LinearKind};
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
    /// What llama.cpp will run differently from the model, though its converter writes the
    /// family this way too (a Mistral's sliding window, which the `llama` architecture does
    /// not read). Empty when the file means exactly the model.
    pub notes: Vec<String>,
}

/// The tensors of block `l` as llama.cpp names them: `(name, linears, stacked)`, the linears'
/// rows stacked into one tensor (Phi-3's fused `attn_qkv` and `ffn_up` when `fused`), or the
/// routed experts stacked as `[experts, rows, cols]` (`ffn_gate_exps` …), in `ids` order.
fn gguf_tensors(
    l: usize,
    ids: &[LinearId],
    fused: bool,
) -> Result<Vec<(String, Vec<LinearId>, bool)>, ModelError> {
    let id = |k| LinearId::block(l, k);
    if fused {
        return Ok(vec![
            (
                "attn_qkv".into(),
                vec![id(LinearKind::Q), id(LinearKind::K), id(LinearKind::V)],
                false,
            ),
            ("attn_output".into(), vec![id(LinearKind::O)], false),
            (
                "ffn_up".into(),
                vec![id(LinearKind::Gate), id(LinearKind::Up)],
                false,
            ),
            ("ffn_down".into(), vec![id(LinearKind::Down)], false),
        ]);
    }
    let mut out: Vec<(String, Vec<LinearId>, bool)> = Vec::new();
    for &i in ids {
        let proj = gguf_proj(i.kind()).ok_or_else(|| {
            ModelError::InvalidInput(format!("GGUF export has no tensor name for `{i}`"))
        });
        match (i.expert_ref(), i.kind()) {
            (None, LinearKind::Router) => out.push(("ffn_gate_inp".into(), vec![i], false)),
            (None, _) => out.push((proj?.into(), vec![i], false)),
            (Some(Expert::Shared), LinearKind::Router) => {
                out.push(("ffn_gate_inp_shexp".into(), vec![i], false))
            }
            (Some(Expert::Shared), _) => out.push((format!("{}_shexp", proj?), vec![i], false)),
            (Some(Expert::Routed(_)), _) => {
                let name = format!("{}_exps", proj?);
                match out.iter_mut().find(|(n, _, _)| *n == name) {
                    Some((_, group, _)) => group.push(i),
                    None => out.push((name, vec![i], true)),
                }
            }
        }
    }
    Ok(out)
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
        self.linears(name, &[(lin, order.map(<[usize]>::to_vec))], false)
    }

    /// Writes `parts` (each with an optional row order) as one tensor `{name}.weight`, their
    /// rows stacked in order (a fused projection), all in one ggml type: their common block
    /// format when every part has it, else — when [`GgufExport::fallback_dense`] allows it —
    /// all dense. With `stacked`, the parts (experts, all of one shape) form a 3-D tensor
    /// `[parts, rows, cols]` (llama.cpp's `ffn_*_exps`) with the same bytes.
    fn linears(
        &mut self,
        name: &str,
        parts: &[(&CompressedLinear, Option<Vec<usize>>)],
        stacked: bool,
    ) -> Result<(), ModelError> {
        let weight = format!("{name}.weight");
        let cols = parts.first().map_or(0, |(l, _)| l.in_features());
        let rows: usize = parts.iter().map(|(l, _)| l.out_features()).sum();
        if parts.iter().any(|(l, _)| l.in_features() != cols) {
            return Err(ModelError::InvalidInput(format!(
                "{weight}: fused projections read inputs of different widths"
            )));
        }
        // `Ok(None)`: dense; `Ok(Some(_))`: a ggml block format; `Err(why)`: neither.
        let encoded: Vec<Result<Option<Encoded>, String>> =
            parts.iter().map(|(lin, _)| packed_encoding(lin)).collect();
        let all_dense = encoded.iter().all(|e| matches!(e, Ok(None)));
        let types: Option<Vec<GgmlType>> = encoded
            .iter()
            .map(|e| e.as_ref().ok().and_then(|e| e.as_ref().map(|e| e.ty)))
            .collect();
        let packed = types.is_some_and(|t| t.windows(2).all(|w| w[0] == w[1]));
        let why = if packed || all_dense {
            None
        } else {
            Some(
                encoded
                    .iter()
                    .find_map(|e| e.as_ref().err().cloned())
                    .unwrap_or_else(|| "fused parts stored in different formats".into()),
            )
        };
        let blocks: Option<Vec<Encoded>> = packed.then(|| {
            encoded
                .into_iter()
                .filter_map(|e| e.ok().flatten())
                .collect()
        });
        let e = match blocks {
            Some(blocks) => {
                let mut data = Vec::new();
                let (mut ty, mut max_abs_error) = (GgmlType::F32, 0f32);
                for (e, (_, order)) in blocks.into_iter().zip(parts) {
                    data.extend(match order {
                        Some(o) => permute_rows(&e.data, o),
                        None => e.data,
                    });
                    (ty, max_abs_error) = (e.ty, max_abs_error.max(e.max_abs_error));
                }
                Encoded {
                    ty,
                    data,
                    max_abs_error,
                }
            }
            None => {
                if let (Some(why), false) = (&why, self.options.fallback_dense) {
                    return Err(ModelError::InvalidInput(format!(
                        "{weight}: {why}; allow writing it as dense {} (fallback_dense / --dense-fallback) \
                         or choose a ggml-compatible scheme",
                        self.options.dense
                    )));
                }
                let mut values = Vec::with_capacity(rows * cols);
                for (lin, order) in parts {
                    let v = host(lin.dense_weight(), &weight)?;
                    match order {
                        Some(o) => {
                            for &r in o {
                                values.extend_from_slice(&v[r * cols..(r + 1) * cols]);
                            }
                        }
                        None => values.extend(v),
                    }
                }
                encode_float(&values, self.options.dense)
            }
        };
        let shape = if stacked {
            let per = parts.first().map_or(0, |(l, _)| l.out_features());
            if parts.iter().any(|(l, _)| l.out_features() != per) {
                return Err(ModelError::InvalidInput(format!(
                    "{weight}: experts of different widths"
                )));
            }
            vec![parts.len(), per, cols]
        } else {
            vec![rows, cols]
        };
        self.add(weight, &shape, e, None, why)
    }
}

/// A layer's ggml block encoding straight from its packed codes, `None` for a dense layer, or
/// why it has neither.
fn packed_encoding(lin: &CompressedLinear) -> Result<Option<Encoded>, String> {
    match lin {
        CompressedLinear::Dense(_) => Ok(None),
        CompressedLinear::LowRank(l) => Err(format!("a rank-{} factorization", l.rank())),
        CompressedLinear::QuantizedLowRank(l) => Err(format!(
            "a rank-{} factorization with quantized factors",
            l.rank()
        )),
        CompressedLinear::Quantized(q) if q.correction.is_some() => {
            Err("a low-rank correction term (ggml has no such layer)".to_string())
        }
        CompressedLinear::Quantized(q) => encode_packed(&q.packed).map(Some),
    }
}

/// Writes `model` (with `tokenizer`'s GGUF vocabulary, or the one
/// [`GgufVocab::from_hf_tokenizer`] converts from its `tokenizer.json`) to `path` as GGUF v3,
/// atomically.
///
/// Fails, naming the block or layer, when the model cannot be expressed: blocks of different
/// widths (after structured pruning; llama.cpp's `llama` reader expects one width), a
/// `tokenizer.json` that does not convert (an unnamed pre-tokenizer, or a SentencePiece-style
/// normalizer llama.cpp's `llama` vocabulary cannot express), or
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
    let family = crate::family::family_of(c.architecture);
    let (arch, target_layout) = (family.gguf.write_as, family.gguf.rope_layout);
    let family_keys = (family.gguf_keys)(c).map_err(|why| {
        ModelError::InvalidInput(format!(
            "this {} model cannot be written as a GGUF llama.cpp runs as the same model: {why}",
            family.name
        ))
    })?;
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
        let (f, h, kv) = (model.ffn_width(l), b.attn.num_heads, b.attn.num_kv_heads);
        let want = match (&b.mlp, &c.variant.moe) {
            (FeedForward::Moe(_), Some(m)) => m.expert_intermediate_size,
            _ => c.intermediate_size,
        };
        if (f, h, kv) != (want, c.num_heads, c.num_kv_heads) {
            return Err(ModelError::InvalidInput(format!(
                "block {l} has FFN width {f} and {h}/{kv} heads, the model {want} and {}/{}: GGUF \
                 needs one shape for every block (save to the container format instead)",
                c.num_heads, c.num_kv_heads
            )));
        }
    }
    let rotary = c.rotary_dims();
    if rotary < c.head_dim && c.rope_layout != target_layout {
        return Err(ModelError::InvalidInput(format!(
            "partial rotary embeddings ({rotary} of {} dims) with a RoPE pairing to convert",
            c.head_dim
        )));
    }
    let mut ex = Export {
        writer: GgufWriter::new(),
        report: Vec::new(),
        options,
    };
    let w = &mut ex.writer;
    let u32v = |v: usize| GgufValue::U32(v as u32);
    let key = |k: &str| format!("{arch}.{k}");
    let context = match &c.variant.rope_scaling {
        Some(RopeScaling::LongRope {
            max_position_embeddings,
            ..
        }) => *max_position_embeddings,
        _ => c.max_seq_len,
    };
    w.set("general.architecture", GgufValue::String(arch.into()));
    w.set("general.name", GgufValue::String(options.name.clone()));
    w.set(&key("context_length"), u32v(context));
    w.set(&key("embedding_length"), u32v(c.hidden_size));
    w.set(&key("block_count"), u32v(c.num_layers));
    w.set(&key("feed_forward_length"), u32v(c.intermediate_size));
    w.set(&key("attention.head_count"), u32v(c.num_heads));
    w.set(&key("attention.head_count_kv"), u32v(c.num_kv_heads));
    w.set(&key("attention.key_length"), u32v(c.head_dim));
    w.set(&key("attention.value_length"), u32v(c.head_dim));
    w.set(&key("rope.dimension_count"), u32v(rotary));
    w.set(&key("rope.freq_base"), GgufValue::F32(c.rope_theta));
    w.set(
        &key("attention.layer_norm_rms_epsilon"),
        GgufValue::F32(c.rms_norm_eps),
    );
    w.set(&key("vocab_size"), u32v(c.vocab_size));
    let mut notes = Vec::new();
    let sliding = (0..c.num_layers)
        .any(|l| c.variant.attention_of(l) == crate::config::LayerAttention::Sliding);
    if sliding
        && !family_keys
            .iter()
            .any(|(k, _)| *k == "attention.sliding_window")
    {
        let w = c.variant.sliding_window.unwrap_or(0);
        notes.push(format!(
            "the sliding window of {w} tokens is not written: llama.cpp's `{arch}` architecture \
             attends to the whole context (as llama.cpp's converter writes {} models), so the \
             file computes this model's logits only for sequences of up to {w} tokens",
            family.name
        ));
    }
    for (k, v) in family_keys {
        w.set(&key(k), v);
    }
    let rope_tensors = rope_scaling(w, &key, c)?;
    set_vocab(w, vocab);
    for (name, values) in rope_tensors {
        let n = values.len();
        ex.add(
            name.into(),
            &[n],
            encode_float(&values, GgmlType::F32),
            None,
            None,
        )?;
    }

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
    let norm = |ex: &mut Export<'_>, name: String, n: &RmsNorm, order: Option<&[usize]>| {
        ex.float(name, n.weight.val(), GgmlType::F32, order)
    };
    // q/k norm gains act within a head: permuted with the head's rows.
    let head_order = rope_row_order(hd, hd, c.rope_layout, target_layout);
    for (l, block) in model.layers.iter().enumerate() {
        let blk = |t: &str| format!("blk.{l}.{t}");
        norm(&mut ex, blk("attn_norm.weight"), &block.attn_norm, None)?;
        let order = |kind: LinearKind, lin: &CompressedLinear| {
            if kind.is_rotated() {
                rope_row_order(lin.out_features(), hd, c.rope_layout, target_layout)
            } else {
                None
            }
        };
        let ids: Vec<_> = model
            .stages(l)
            .into_iter()
            .flat_map(|s| s.linears)
            .collect();
        // Fused files (Phi-3): q/k/v as one `attn_qkv`, gate/up as one `ffn_up`.
        let groups = gguf_tensors(l, &ids, family.gguf.fused)?;
        for (proj, group, stacked) in groups {
            let parts: Vec<(&CompressedLinear, Option<Vec<usize>>)> = group
                .iter()
                .map(|&id| {
                    let lin = block.linear(id).ok_or_else(|| {
                        ModelError::InvalidInput(format!("block {l} has no `{id}`"))
                    })?;
                    Ok((lin, order(id.kind(), lin)))
                })
                .collect::<Result<_, ModelError>>()?;
            let gguf = blk(&proj);
            ex.linears(&gguf, &parts, stacked)?;
            let biases: Vec<_> = parts
                .iter()
                .filter_map(|(lin, o)| lin.bias().map(|b| (b, o)))
                .collect();
            match biases.as_slice() {
                [] => {}
                [(bias, o)] if parts.len() == 1 => ex.float(
                    format!("{gguf}.bias"),
                    bias.clone(),
                    GgmlType::F32,
                    o.as_deref(),
                )?,
                _ => {
                    return Err(ModelError::InvalidInput(format!(
                        "{gguf}: biases on fused projections are not written"
                    )))
                }
            }
        }
        norm(&mut ex, blk("ffn_norm.weight"), &block.ffn_norm, None)?;
        for (name, n) in block.variant_norms() {
            let (gguf, o) = match name {
                "q_norm" => ("attn_q_norm", head_order.as_deref()),
                "k_norm" => ("attn_k_norm", head_order.as_deref()),
                "post_attn_norm" => ("post_attention_norm", None),
                "post_ffn_norm" => ("post_ffw_norm", None),
                other => {
                    return Err(ModelError::InvalidInput(format!(
                        "GGUF export has no tensor name for the {other} of block {l}"
                    )))
                }
            };
            norm(&mut ex, blk(&format!("{gguf}.weight")), n, o)?;
        }
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
        notes,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::RopeLayout;

    #[test]
    fn rows_are_permuted_whole() {
        let data: Vec<u8> = (0..8).flat_map(|r| [r, r]).collect();
        let order = rope_row_order(8, 4, RopeLayout::NeoX, RopeLayout::Interleaved).unwrap();
        assert_eq!(permute_rows(&data, &order)[2..4], [2, 2]);
    }
}
