//! Writing a model as a Hugging Face checkpoint in the compressed-tensors `pack-quantized`
//! format (what vLLM and llm-compressor load).
//!
//! The directory holds `config.json` (the architecture plus a `quantization_config` with one
//! config group per distinct quantization scheme, targeting its layers by name),
//! `model.safetensors` and `tokenizer.json`. A packed layer `M` becomes
//!
//! - `M.weight_packed`: int32 `[out, ceil(in·b/32)]`, each row a little-endian bit stream of
//!   its codes (element `i` at bit `i·b`), codes stored unsigned as `q + 2^(b−1)`;
//! - `M.weight_scale`: `[out, in/g]` (groups), `[out, 1]` (channel) or `[1]` (tensor), in the
//!   checkpoint dtype;
//! - `M.weight_zero_point` (asymmetric only): int32, the signed zero points `z − 2^(b−1)`
//!   packed the same way along the output dimension: `[ceil(out·b/32), in/g]`;
//! - `M.weight_shape`: int64 `[out, in]`.
//!
//! and decompresses to `(q − zp)·scale`. Our packed layout is the same bit stream per row
//! (padded to bytes instead of words) with the code as the unsigned value, so codes are copied,
//! not requantized; with f16 scales the stored scales are ours exactly. The format needs whole
//! groups (`in` a multiple of the group size) and integer zero points: this project's
//! asymmetric quantizers keep fractional f16 zero points (a finer grid placement than
//! rounding them), so asymmetric layers are written only when every zero is an integer —
//! symmetric schemes always are. Pruned weights are written as the code of zero (exact). Everything else — dense layers, norms, the embedding — is stored in the
//! checkpoint dtype; low-rank layers are refused unless `fallback_dense`.
//!
//! Each family is written in its own layout ([`crate::family`]): its `config.json` keys
//! (Gemma's query scale, soft-caps, window and layer kinds; Qwen's sliding keys; Phi-3's
//! partial rotary and LongRoPE), its norm names with Gemma's gains stored as `w` for `1 + w`,
//! and Phi-3's fused `qkv_proj` / `gate_up_proj` (one packed module from the projections'
//! codes when they share a scheme). Hugging Face checkpoints pair RoPE dimensions NeoX-style,
//! so q/k rows (and q/k norm gains) of a model loaded from GGUF (interleaved) are permuted on
//! the way out.

use std::collections::BTreeMap;
use std::path::Path;

use compress_core::linear::CompressedLinear;
use compress_core::packed::{pack_row, Granularity, PackedWeight, Symmetry};
use compress_core::pipeline::BlockwiseModel;
use half::{bf16, f16};
use safetensors::tensor::TensorView;
use safetensors::Dtype;
use serde_json::{json, Value};

use super::{head_is_tied_copy, host, rope_row_order};
use crate::config::{Activation, RopeLayout, RopeScaling};
use crate::error::ModelError;
use crate::llama::{FeedForward, LlamaModel, RmsNorm};
use crate::tokenizer::LlmTokenizer;
use compress_core::layer_id::{LinearId, LinearKind};
use compress_core::pipeline::BlockWalk;

/// Floating-point dtype of the checkpoint's unquantized tensors and scales.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HfDtype {
    /// `float16`: f16 scales are stored exactly.
    F16,
    /// `bfloat16`: scales are rounded to bf16.
    Bf16,
}

/// Options of [`write_compressed_tensors`].
#[derive(Debug, Clone)]
pub struct CompressedTensorsExport {
    /// Dtype of dense tensors and scales.
    pub dtype: HfDtype,
    /// Write layers the format cannot express (low-rank, ragged groups, fractional zeros) as
    /// dense weights instead of failing.
    pub fallback_dense: bool,
}

impl Default for CompressedTensorsExport {
    fn default() -> Self {
        Self {
            dtype: HfDtype::F16,
            fallback_dense: false,
        }
    }
}

/// What [`write_compressed_tensors`] wrote.
#[derive(Debug, Clone, Default)]
pub struct CompressedTensorsReport {
    /// Quantized modules, by HF name.
    pub quantized: Vec<String>,
    /// Linear modules written dense, with the reason when they were compressed.
    pub dense: Vec<(String, Option<String>)>,
    /// Number of quantization config groups (distinct schemes).
    pub config_groups: usize,
}

struct Tensors {
    map: BTreeMap<String, (Dtype, Vec<usize>, Vec<u8>)>,
    dtype: HfDtype,
}

impl Tensors {
    fn float(&mut self, name: String, shape: Vec<usize>, values: &[f32]) {
        let (dt, data) = match self.dtype {
            HfDtype::F16 => (
                Dtype::F16,
                values
                    .iter()
                    .flat_map(|&v| f16::from_f32(v).to_le_bytes())
                    .collect(),
            ),
            HfDtype::Bf16 => (
                Dtype::BF16,
                values
                    .iter()
                    .flat_map(|&v| bf16::from_f32(v).to_le_bytes())
                    .collect(),
            ),
        };
        self.map.insert(name, (dt, shape, data));
    }
}

/// The compressed-tensors `QuantizationArgs` of a packed weight, or why it has none.
fn scheme_args(p: &PackedWeight) -> Result<Value, String> {
    let s = p.scheme();
    let [_, inp] = p.shape();
    let (strategy, group) = match s.granularity {
        Granularity::PerTensor => ("tensor", None),
        Granularity::PerChannel => ("channel", None),
        Granularity::PerGroup(g) if inp.is_multiple_of(g.get()) => ("group", Some(g.get())),
        Granularity::PerGroup(g) => {
            return Err(format!(
                "rows of {inp} weights are not whole groups of {g} (compressed-tensors needs them)"
            ))
        }
    };
    if let Some(z) = p.zeros() {
        if let Some(bad) = z.iter().find(|z| z.to_f32().fract() != 0.0) {
            return Err(format!("zero point {bad} is not an integer"));
        }
        if strategy == "tensor" {
            return Err("asymmetric per-tensor zero points are not packed by the format".into());
        }
    }
    Ok(json!({
        "num_bits": s.bits.get(),
        "type": "int",
        "symmetric": s.symmetry == Symmetry::Symmetric,
        "strategy": strategy,
        "group_size": group,
        "dynamic": false,
        "observer": "minmax",
    }))
}

/// Little-endian bit stream of `values` (each `< 2^bits`), as int32 words (`ceil(n·b/32)`).
fn pack_words(values: &[u8], bits: compress_core::packed::Bits) -> Vec<u8> {
    let mut bytes = vec![0u8; (values.len() * bits.get() as usize).div_ceil(8)];
    pack_row(values, bits, &mut bytes);
    bytes.resize((values.len() * bits.get() as usize).div_ceil(32) * 4, 0);
    bytes
}

/// Writes one packed layer's tensors under `m`, rows reordered by `order`.
/// Writes the packed tensors of `parts` (one scheme, one input width; each with an optional row
/// order) as one module `m`, their rows stacked in order (a fused projection).
fn packed_tensors(t: &mut Tensors, m: &str, parts: &[(&PackedWeight, Option<&[usize]>)]) {
    let p = parts[0].0;
    let [_, inp] = p.shape();
    let bits = p.scheme().bits;
    let rows: Vec<(&PackedWeight, usize)> = parts
        .iter()
        .flat_map(|&(p, order)| {
            let out = p.shape()[0];
            order
                .map_or_else(|| (0..out).collect(), <[usize]>::to_vec)
                .into_iter()
                .map(move |r| (p, r))
        })
        .collect();
    let out = rows.len();
    let gpr = p.scheme().num_scales(p.shape()[0], inp) / p.shape()[0].max(1);
    let per_tensor = p.scheme().granularity == Granularity::PerTensor;
    let mut codes = vec![0u8; inp];
    let (mut packed, mut scales, mut zero_codes) = (Vec::new(), Vec::new(), Vec::new());
    for &(p, r) in &rows {
        p.unpack_row(r, &mut codes);
        if let Some(mask) = p.mask() {
            for (c, code) in codes.iter_mut().enumerate() {
                if !mask.is_kept(r, c) {
                    // The code of 0: the zero point (an integer, checked by scheme_args).
                    *code = p.scale_zero(r, c).1 as u8;
                }
            }
        }
        packed.extend(pack_words(&codes, bits));
        if !per_tensor {
            let g = p.scheme().group_len(inp);
            for k in 0..gpr {
                let (s, z) = p.scale_zero(r, k * g);
                scales.push(s);
                zero_codes.push(z as u8);
            }
        }
    }
    let words = (inp * bits.get() as usize).div_ceil(32);
    t.map.insert(
        format!("{m}.weight_packed"),
        (Dtype::I32, vec![out, words], packed),
    );
    if per_tensor {
        t.float(
            format!("{m}.weight_scale"),
            vec![1],
            &[p.scale_zero(0, 0).0],
        );
    } else {
        t.float(format!("{m}.weight_scale"), vec![out, gpr], &scales);
    }
    let shape: Vec<u8> = [out as i64, inp as i64]
        .iter()
        .flat_map(|v| v.to_le_bytes())
        .collect();
    t.map
        .insert(format!("{m}.weight_shape"), (Dtype::I64, vec![2], shape));
    if p.zeros().is_some() {
        // Packed along the output dimension: one bit stream per group column.
        let mut data = Vec::new();
        let col_words = (out * bits.get() as usize).div_ceil(32);
        let mut cols = vec![Vec::new(); gpr];
        for g in 0..gpr {
            let column: Vec<u8> = (0..out).map(|r| zero_codes[r * gpr + g]).collect();
            cols[g] = pack_words(&column, bits);
        }
        // Row-major [col_words, gpr] of int32 words.
        for w in 0..col_words {
            for col in &cols {
                data.extend_from_slice(&col[4 * w..4 * w + 4]);
            }
        }
        t.map.insert(
            format!("{m}.weight_zero_point"),
            (Dtype::I32, vec![col_words, gpr], data),
        );
    }
}

/// The config group arguments of `parts` written as one packed module: every part packed
/// (without a correction term) in the same scheme (and, per tensor, the same scale). `Err(None)`
/// for dense parts (written dense as they are), `Err(Some(why))` otherwise.
fn fused_scheme(
    parts: &[(&CompressedLinear, Option<Vec<usize>>)],
) -> Result<Value, Option<String>> {
    if parts
        .iter()
        .all(|(l, _)| matches!(l, CompressedLinear::Dense(_)))
    {
        return Err(None);
    }
    let mut args: Option<Value> = None;
    let mut tensor_scale = None;
    for (lin, _) in parts {
        let q = match lin {
            CompressedLinear::Quantized(q) if q.correction.is_some() => {
                return Err(Some(
                    "a low-rank correction term (the format has no such layer)".into(),
                ))
            }
            CompressedLinear::Quantized(q) => q,
            CompressedLinear::LowRank(l) => {
                return Err(Some(format!("a rank-{} factorization", l.rank())))
            }
            CompressedLinear::QuantizedLowRank(l) => {
                return Err(Some(format!(
                    "a rank-{} factorization with quantized factors",
                    l.rank()
                )))
            }
            CompressedLinear::Dense(_) => {
                return Err(Some("fused projections stored differently".into()))
            }
        };
        let a = scheme_args(&q.packed).map_err(Some)?;
        if args.as_ref().is_some_and(|prev| *prev != a) {
            return Err(Some("fused projections in different schemes".into()));
        }
        if q.packed.scheme().granularity == Granularity::PerTensor {
            let s = q.packed.scale_zero(0, 0);
            if tensor_scale.is_some_and(|prev| prev != s) {
                return Err(Some(
                    "fused per-tensor projections with different scales".into(),
                ));
            }
            tensor_scale = Some(s);
        }
        args = Some(a);
    }
    args.ok_or(None)
}

/// Writes `model` to the directory `dir` (which must not exist) as a compressed-tensors
/// checkpoint, atomically (a temporary directory renamed into place).
pub fn write_compressed_tensors(
    model: &LlamaModel,
    tokenizer: &LlmTokenizer,
    dir: &Path,
    options: &CompressedTensorsExport,
) -> Result<CompressedTensorsReport, ModelError> {
    let c = model.config();
    let family = crate::family::family_of(c.architecture);
    let unexpressible = |why: String| {
        ModelError::InvalidInput(format!(
            "this {} model has no Hugging Face config transformers reads as the same model: {why}",
            family.name
        ))
    };
    let mut family_keys = crate::family::HfKeys::new();
    (family.write_hf)(c, &mut family_keys).map_err(unexpressible)?;
    let rope_scaling = c
        .variant
        .rope_scaling
        .as_ref()
        .map(crate::family::hf_config::rope_scaling_json)
        .transpose()
        .map_err(unexpressible)?;
    for (l, b) in model.layers.iter().enumerate() {
        let width = model.ffn_width(l);
        let want = match (&b.mlp, &c.variant.moe) {
            (FeedForward::Moe(_), Some(m)) => m.expert_intermediate_size,
            _ => c.intermediate_size,
        };
        if (width, b.attn.num_heads) != (want, c.num_heads) {
            return Err(ModelError::InvalidInput(format!(
                "block {l} has a different width from the config: a Hugging Face config has one \
                 width for every block (save to the container format instead)"
            )));
        }
    }
    let mut t = Tensors {
        map: BTreeMap::new(),
        dtype: options.dtype,
    };
    let mut report = CompressedTensorsReport::default();
    let mut groups: Vec<(Value, Vec<String>)> = Vec::new();
    let emb = model.embedding.val();
    let shape = emb.dims().to_vec();
    t.float(
        "model.embed_tokens.weight".into(),
        shape,
        &host(emb, "embedding")?,
    );
    // One module from `parts` (a projection, or Phi-3's fused ones), rows stacked in order.
    let mut linear = |t: &mut Tensors,
                      report: &mut CompressedTensorsReport,
                      m: String,
                      parts: &[(&CompressedLinear, Option<Vec<usize>>)]|
     -> Result<(), ModelError> {
        let biases: Vec<_> = parts
            .iter()
            .filter_map(|(l, o)| l.bias().map(|b| (b, o)))
            .collect();
        if !biases.is_empty() {
            if biases.len() != parts.len() {
                return Err(ModelError::InvalidInput(format!(
                    "{m}: fused projections with and without biases"
                )));
            }
            let mut v = Vec::new();
            for (b, order) in biases {
                let b = host(b, &m)?;
                match order {
                    Some(o) => v.extend(o.iter().map(|&i| b[i])),
                    None => v.extend(b),
                }
            }
            t.float(format!("{m}.bias"), vec![v.len()], &v);
        }
        let why = match fused_scheme(parts) {
            Ok(args) => {
                let packed: Vec<(&PackedWeight, Option<&[usize]>)> = parts
                    .iter()
                    .filter_map(|(l, o)| match l {
                        CompressedLinear::Quantized(q) => Some((&*q.packed, o.as_deref())),
                        _ => None,
                    })
                    .collect();
                packed_tensors(t, &m, &packed);
                match groups.iter_mut().find(|(a, _)| *a == args) {
                    Some((_, targets)) => targets.push(m.clone()),
                    None => groups.push((args, vec![m.clone()])),
                }
                report.quantized.push(m);
                return Ok(());
            }
            Err(why) => why,
        };
        if let (Some(why), false) = (&why, options.fallback_dense) {
            return Err(ModelError::InvalidInput(format!(
                "{m}: {why}; allow writing it dense (fallback_dense / --dense-fallback)"
            )));
        }
        let inp = parts[0].0.in_features();
        let mut w = Vec::new();
        for (lin, order) in parts {
            let v = host(lin.dense_weight(), &m)?;
            match order {
                Some(o) => w.extend(o.iter().flat_map(|&r| v[r * inp..(r + 1) * inp].to_vec())),
                None => w.extend(v),
            }
        }
        t.float(format!("{m}.weight"), vec![w.len() / inp, inp], &w);
        report.dense.push((m, why));
        Ok(())
    };
    let offset = family.hf.norm_offset;
    let norm = |t: &mut Tensors, name: String, n: &RmsNorm, order: Option<&[usize]>| {
        let v = host(n.weight.val(), &name)?;
        let v: Vec<f32> = match order {
            Some(o) => o.iter().map(|&i| v[i] - offset).collect(),
            None => v.iter().map(|x| x - offset).collect(),
        };
        t.float(name, vec![v.len()], &v);
        Ok::<_, ModelError>(())
    };
    let hd = c.head_dim;
    let head_order = rope_row_order(hd, hd, c.rope_layout, RopeLayout::NeoX);
    for (l, block) in model.layers.iter().enumerate() {
        let p = format!("model.layers.{l}");
        norm(
            &mut t,
            format!("{p}.input_layernorm.weight"),
            &block.attn_norm,
            None,
        )?;
        norm(
            &mut t,
            format!("{p}.{}.weight", family.hf.ffn_norm),
            &block.ffn_norm,
            None,
        )?;
        for (name, n) in block.variant_norms() {
            let (hf, order) = match name {
                "q_norm" => ("self_attn.q_norm", head_order.as_deref()),
                "k_norm" => ("self_attn.k_norm", head_order.as_deref()),
                "post_attn_norm" => ("post_attention_layernorm", None),
                _ => ("post_feedforward_layernorm", None),
            };
            norm(&mut t, format!("{p}.{hf}.weight"), n, order)?;
        }
        let id = |k| LinearId::block(l, k);
        let modules: Vec<(String, Vec<LinearId>)> = if family.hf.fused {
            vec![
                (
                    "self_attn.qkv_proj".into(),
                    vec![id(LinearKind::Q), id(LinearKind::K), id(LinearKind::V)],
                ),
                ("self_attn.o_proj".into(), vec![id(LinearKind::O)]),
                (
                    "mlp.gate_up_proj".into(),
                    vec![id(LinearKind::Gate), id(LinearKind::Up)],
                ),
                ("mlp.down_proj".into(), vec![id(LinearKind::Down)]),
            ]
        } else {
            model
                .stages(l)
                .into_iter()
                .flat_map(|s| s.linears)
                .map(|i| (crate::family::hf_module(family, i), vec![i]))
                .collect()
        };
        for (module, ids) in modules {
            let parts = ids
                .iter()
                .map(|&i| {
                    let lin = model.expect_linear(i);
                    let order = i
                        .kind()
                        .is_rotated()
                        .then(|| {
                            rope_row_order(lin.out_features(), hd, c.rope_layout, RopeLayout::NeoX)
                        })
                        .flatten();
                    (lin, order)
                })
                .collect::<Vec<_>>();
            linear(&mut t, &mut report, format!("{p}.{module}"), &parts)?;
        }
    }
    norm(&mut t, "model.norm.weight".into(), &model.norm, None)?;
    let tied = head_is_tied_copy(model)?;
    if !tied {
        linear(
            &mut t,
            &mut report,
            "lm_head".into(),
            &[(&model.lm_head, None)],
        )?;
    }
    report.config_groups = groups.len();

    let dtype_name = match options.dtype {
        HfDtype::F16 => "float16",
        HfDtype::Bf16 => "bfloat16",
    };
    let config_groups: serde_json::Map<String, Value> = groups
        .iter()
        .enumerate()
        .map(|(i, (args, targets))| {
            (
                format!("group_{i}"),
                json!({
                    "targets": targets,
                    "weights": args,
                    "input_activations": null,
                    "output_activations": null,
                    "format": "pack-quantized",
                }),
            )
        })
        .collect();
    let ignore: Vec<&String> = report.dense.iter().map(|(m, _)| m).collect();
    let max_pos = match &c.variant.rope_scaling {
        Some(RopeScaling::LongRope {
            max_position_embeddings,
            ..
        }) => *max_position_embeddings,
        _ => c.max_seq_len,
    };
    let mut config = json!({
        "architectures": [family.hf_classes[0]],
        "model_type": family.hf_model_type,
        "vocab_size": c.vocab_size,
        "hidden_size": c.hidden_size,
        "intermediate_size": c.intermediate_size,
        "num_hidden_layers": c.num_layers,
        "num_attention_heads": c.num_heads,
        "num_key_value_heads": c.num_kv_heads,
        "head_dim": c.head_dim,
        "rms_norm_eps": c.rms_norm_eps,
        "rope_theta": c.rope_theta,
        "rope_scaling": rope_scaling,
        "max_position_embeddings": max_pos,
        "tie_word_embeddings": tied,
        "attention_bias": c.attention_bias,
        "hidden_act": match c.variant.activation {
            Activation::Silu => "silu",
            Activation::GeluTanh => "gelu_pytorch_tanh",
        },
        "torch_dtype": dtype_name,
        "bos_token_id": tokenizer.bos_id(),
        "eos_token_id": tokenizer.eos_id(),
        // Explicit: some families' config classes default it to an id outside this vocabulary
        // (Phi-3's 32000).
        "pad_token_id": tokenizer.pad_id(),
    });
    for (k, v) in family_keys {
        config[k] = v;
    }
    if !groups.is_empty() {
        config["quantization_config"] = json!({
            "quant_method": "compressed-tensors",
            "format": "pack-quantized",
            "quantization_status": "compressed",
            "config_groups": config_groups,
            "ignore": ignore,
            "kv_cache_scheme": null,
        });
    }
    let config_text = serde_json::to_string_pretty(&config)
        .map_err(|e| ModelError::InvalidInput(e.to_string()))?;
    let tokenizer_json = tokenizer.to_json()?;
    super::write_atomic_dir(dir, |tmp| {
        let io = |path: &Path| {
            let path = path.to_path_buf();
            move |source| ModelError::Io { path, source }
        };
        let cfg = tmp.join("config.json");
        std::fs::write(&cfg, &config_text).map_err(io(&cfg))?;
        let tok = tmp.join("tokenizer.json");
        std::fs::write(&tok, &tokenizer_json).map_err(io(&tok))?;
        let st = tmp.join("model.safetensors");
        let views = t
            .map
            .iter()
            .map(|(name, (dt, shape, data))| {
                TensorView::new(*dt, shape.clone(), data)
                    .map(|v| (name.clone(), v))
                    .map_err(|e| ModelError::InvalidInput(format!("tensor {name}: {e}")))
            })
            .collect::<Result<Vec<_>, _>>()?;
        let meta = std::collections::HashMap::from([("format".to_string(), "pt".to_string())]);
        safetensors::serialize_to_file(views, Some(meta), &st).map_err(|e| {
            ModelError::Safetensors {
                path: st.clone(),
                message: e.to_string(),
            }
        })
    })?;
    Ok(report)
}
