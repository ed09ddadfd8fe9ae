//! The Hugging Face loader, checked by converting stories260K from GGUF to an HF checkpoint
//! directory (config.json + safetensors + tokenizer.json) and comparing the two models' logits.
//!
//! The conversion undoes llama.cpp's q/k row permutation, so the HF model runs RoPE in the NeoX
//! ("rotate half") pairing while the GGUF model runs the interleaved pairing: equal logits prove
//! both RoPE layouts, the safetensors reader (f32, f16 and bf16) and the config mapping.

mod common;

use std::path::Path;

use common::{logits, shared};
use compress_core::backend::BackendKind;
use compress_model::load::{GgufModel, HfModel};
use compress_model::weights::{Proj, WeightName, WeightSource};
use compress_model::{load, ModelError};
use safetensors::tensor::{Dtype, TensorView};

/// A rewrite of a tensor's row-major data (e.g. undoing llama.cpp's q/k permutation).
type Fixup<'a> = dyn Fn(Vec<f32>, &[usize]) -> Vec<f32> + 'a;

/// GGUF's interleaved q/k rows → HF's rotate-half rows, per head: row `2i` → `i`, `2i+1` → `d/2+i`.
fn unpermute(data: &[f32], heads: usize, head_dim: usize, cols: usize) -> Vec<f32> {
    let mut out = vec![0.0; data.len()];
    for h in 0..heads {
        for i in 0..head_dim / 2 {
            for (src, dst) in [(2 * i, i), (2 * i + 1, head_dim / 2 + i)] {
                let s = (h * head_dim + src) * cols;
                let d = (h * head_dim + dst) * cols;
                out[d..d + cols].copy_from_slice(&data[s..s + cols]);
            }
        }
    }
    out
}

#[derive(Clone, Copy)]
enum Precision {
    F32,
    F16,
    Bf16,
}

/// Writes stories260K as an HF checkpoint in `dir`, weights in `precision`.
fn convert(gguf: &Path, dir: &Path, precision: Precision) {
    let src = GgufModel::open(gguf).unwrap();
    let c = src.config().clone();
    let mut tensors: Vec<(String, Vec<usize>, Vec<u8>)> = Vec::new();
    let encode = |v: &[f32]| -> Vec<u8> {
        match precision {
            Precision::F32 => v.iter().flat_map(|x| x.to_le_bytes()).collect(),
            Precision::F16 => v
                .iter()
                .flat_map(|x| half::f16::from_f32(*x).to_le_bytes())
                .collect(),
            Precision::Bf16 => v
                .iter()
                .flat_map(|x| half::bf16::from_f32(*x).to_le_bytes())
                .collect(),
        }
    };
    let mut put = |name: String, w: WeightName, fix: &Fixup<'_>| {
        let t = src.tensor(w).unwrap().unwrap();
        let data = fix(t.data, &t.shape);
        tensors.push((name, t.shape.clone(), encode(&data)));
    };
    let keep = |d: Vec<f32>, _: &[usize]| d;
    put(
        "model.embed_tokens.weight".into(),
        WeightName::TokenEmbedding,
        &keep,
    );
    put("model.norm.weight".into(), WeightName::OutputNorm, &keep);
    for l in 0..c.num_layers {
        let p = format!("model.layers.{l}");
        put(
            format!("{p}.input_layernorm.weight"),
            WeightName::AttnNorm(l),
            &keep,
        );
        put(
            format!("{p}.post_attention_layernorm.weight"),
            WeightName::FfnNorm(l),
            &keep,
        );
        let (h, kvh, hd) = (c.num_heads, c.num_kv_heads, c.head_dim);
        put(
            format!("{p}.self_attn.q_proj.weight"),
            WeightName::Weight(l, Proj::Q),
            &|d, s| unpermute(&d, h, hd, s[1]),
        );
        put(
            format!("{p}.self_attn.k_proj.weight"),
            WeightName::Weight(l, Proj::K),
            &|d, s| unpermute(&d, kvh, hd, s[1]),
        );
        put(
            format!("{p}.self_attn.v_proj.weight"),
            WeightName::Weight(l, Proj::V),
            &keep,
        );
        put(
            format!("{p}.self_attn.o_proj.weight"),
            WeightName::Weight(l, Proj::O),
            &keep,
        );
        put(
            format!("{p}.mlp.gate_proj.weight"),
            WeightName::Weight(l, Proj::Gate),
            &keep,
        );
        put(
            format!("{p}.mlp.up_proj.weight"),
            WeightName::Weight(l, Proj::Up),
            &keep,
        );
        put(
            format!("{p}.mlp.down_proj.weight"),
            WeightName::Weight(l, Proj::Down),
            &keep,
        );
    }
    if !c.tie_word_embeddings {
        put("lm_head.weight".into(), WeightName::Output, &keep);
    }
    let dtype = match precision {
        Precision::F32 => Dtype::F32,
        Precision::F16 => Dtype::F16,
        Precision::Bf16 => Dtype::BF16,
    };
    let views: Vec<(String, TensorView)> = tensors
        .iter()
        .map(|(n, s, b)| (n.clone(), TensorView::new(dtype, s.clone(), b).unwrap()))
        .collect();
    safetensors::serialize_to_file(views, None, &dir.join("model.safetensors")).unwrap();
    let config = serde_json::json!({
        "architectures": ["LlamaForCausalLM"],
        "vocab_size": c.vocab_size,
        "hidden_size": c.hidden_size,
        "intermediate_size": c.intermediate_size,
        "num_hidden_layers": c.num_layers,
        "num_attention_heads": c.num_heads,
        "num_key_value_heads": c.num_kv_heads,
        "rms_norm_eps": c.rms_norm_eps,
        "rope_theta": c.rope_theta,
        "max_position_embeddings": c.max_seq_len,
        "tie_word_embeddings": c.tie_word_embeddings,
    });
    std::fs::write(
        dir.join("config.json"),
        serde_json::to_string_pretty(&config).unwrap(),
    )
    .unwrap();
    src.tokenizer()
        .unwrap()
        .inner()
        .save(dir.join("tokenizer.json"), false)
        .unwrap();
}

fn max_diff(a: &[f32], b: &[f32]) -> f32 {
    a.iter()
        .zip(b)
        .map(|(x, y)| (x - y).abs())
        .fold(0.0, f32::max)
}

#[test]
fn hf_checkpoint_gives_the_gguf_logits_in_every_precision() {
    let Some(gguf) = shared("models/stories260K.gguf") else {
        return;
    };
    let device = BackendKind::Flex.device().unwrap();
    let reference = load(&gguf, &device).unwrap();
    let text = "Once upon a time, there was a little girl who liked to sing.";
    let ids = reference.tokenizer.encode(text, true).unwrap();
    let want = logits(&reference.model, &ids);
    // f32 is exact up to summation order; f16 / bf16 round every weight (relative error 2^-11 /
    // 2^-8), which moves logits of magnitude ~15 by up to ~0.05 / ~0.5.
    for (precision, tol) in [
        (Precision::F32, 1e-3f32),
        (Precision::F16, 0.1),
        (Precision::Bf16, 1.0),
    ] {
        let dir = tempdir();
        convert(&gguf, dir.path(), precision);
        let hf = load(dir.path(), &device).unwrap();
        assert_eq!(
            hf.model.config().rope_layout,
            compress_model::RopeLayout::NeoX
        );
        assert_eq!(
            hf.tokenizer.encode(text, true).unwrap(),
            ids,
            "tokenizer.json round trip"
        );
        let got = logits(&hf.model, &ids);
        let worst = max_diff(&got, &want);
        assert!(
            worst <= tol,
            "{:?}: max |Δlogit| {worst} > {tol}",
            precision as u8
        );
    }
}

#[test]
fn sharded_checkpoints_load_through_the_index() {
    let Some(gguf) = shared("models/stories260K.gguf") else {
        return;
    };
    let dir = tempdir();
    convert(&gguf, dir.path(), Precision::F32);
    // Split model.safetensors into two shards plus an index.
    let bytes = std::fs::read(dir.path().join("model.safetensors")).unwrap();
    let st = safetensors::SafeTensors::deserialize(&bytes).unwrap();
    let mut names: Vec<String> = st.names().into_iter().map(str::to_string).collect();
    names.sort();
    let (first, second) = names.split_at(names.len() / 2);
    let mut weight_map = serde_json::Map::new();
    for (file, part) in [
        ("model-00001-of-00002.safetensors", first),
        ("model-00002-of-00002.safetensors", second),
    ] {
        let views: Vec<(String, TensorView)> = part
            .iter()
            .map(|n| (n.clone(), st.tensor(n).unwrap()))
            .collect();
        safetensors::serialize_to_file(views, None, &dir.path().join(file)).unwrap();
        for n in part {
            weight_map.insert(n.clone(), serde_json::Value::String(file.into()));
        }
    }
    std::fs::remove_file(dir.path().join("model.safetensors")).unwrap();
    let index = serde_json::json!({ "metadata": {}, "weight_map": weight_map });
    std::fs::write(
        dir.path().join("model.safetensors.index.json"),
        index.to_string(),
    )
    .unwrap();

    let device = BackendKind::Flex.device().unwrap();
    let sharded = load(dir.path(), &device).unwrap();
    let reference = load(&gguf, &device).unwrap();
    let ids = reference.tokenizer.encode("The dog ran.", true).unwrap();
    assert!(
        max_diff(
            &logits(&sharded.model, &ids),
            &logits(&reference.model, &ids)
        ) <= 1e-3
    );
}

#[test]
fn bad_checkpoints_give_typed_errors() {
    let Some(gguf) = shared("models/stories260K.gguf") else {
        return;
    };
    let device = BackendKind::Flex.device().unwrap();
    let dir = tempdir();
    convert(&gguf, dir.path(), Precision::F32);
    let config_path = dir.path().join("config.json");
    let config = std::fs::read_to_string(&config_path).unwrap();

    // Unknown architecture.
    std::fs::write(
        &config_path,
        config.replace("LlamaForCausalLM", "GPT2LMHeadModel"),
    )
    .unwrap();
    let err = HfModel::open(dir.path()).err().unwrap();
    assert!(
        matches!(&err, ModelError::UnknownArchitecture(a) if a == "GPT2LMHeadModel"),
        "{err}"
    );

    // Config inconsistent with the tensors: the error names the tensor and both shapes.
    let mut wrong: serde_json::Value = serde_json::from_str(&config).unwrap();
    wrong["intermediate_size"] = serde_json::json!(100);
    std::fs::write(&config_path, wrong.to_string()).unwrap();
    let err = load(dir.path(), &device).err().unwrap();
    assert!(
        matches!(&err, ModelError::ShapeMismatch { tensor, .. } if tensor == "model.layers.0.mlp.gate_proj.weight"),
        "{err}"
    );
    std::fs::write(&config_path, &config).unwrap();

    // Missing tokenizer.
    std::fs::remove_file(dir.path().join("tokenizer.json")).unwrap();
    let err = load(dir.path(), &device).err().unwrap();
    assert!(matches!(err, ModelError::MissingTokenizer(_)), "{err}");

    // Truncated safetensors file.
    let st = dir.path().join("model.safetensors");
    let bytes = std::fs::read(&st).unwrap();
    std::fs::write(&st, &bytes[..bytes.len() / 2]).unwrap();
    let err = HfModel::open(dir.path()).err().unwrap();
    assert!(matches!(err, ModelError::Safetensors { .. }), "{err}");

    // Missing config.json.
    std::fs::remove_file(&config_path).unwrap();
    let err = HfModel::open(dir.path()).err().unwrap();
    assert!(matches!(err, ModelError::Io { .. }), "{err}");
}

fn tempdir() -> tempfile::TempDir {
    tempfile::tempdir().unwrap()
}

/// A Hugging Face (NeoX-layout) model written as GGUF `llama` gets llama.cpp's interleaved q/k
/// rows back: the file holds exactly the original GGUF's tensors, so the reloaded model gives
/// the original logits bit for bit, and its converted tokenizer the original ids. The container
/// keeps the `tokenizer.json` tokenizer.
#[test]
fn hf_model_saves_to_gguf_and_container() {
    let Some(gguf) = shared("models/stories260K.gguf") else {
        return;
    };
    let device = BackendKind::Flex.device().unwrap();
    let reference = load(&gguf, &device).unwrap();
    let text = "Once upon a time, there was a little girl who liked to sing.";
    let ids = reference.tokenizer.encode(text, true).unwrap();
    let dir = tempdir();
    convert(&gguf, dir.path(), Precision::F32);
    let hf = load(dir.path(), &device).unwrap();

    let out = dir.path().join("back.gguf");
    // The HF directory's SentencePiece-style tokenizer.json converts back to a `llama`
    // vocabulary that tokenizes like the original.
    let options = compress_model::save::GgufExport::default();
    compress_model::save::write_gguf(&hf.model, &hf.tokenizer, &out, &options).unwrap();
    let back = load(&out, &device).unwrap();
    assert_eq!(back.tokenizer.encode(text, true).unwrap(), ids);
    assert_eq!(
        back.model.config().rope_layout,
        compress_model::RopeLayout::Interleaved
    );
    let (a, b) = (
        GgufModel::open(&gguf).unwrap(),
        GgufModel::open(&out).unwrap(),
    );
    for l in 0..a.config().num_layers {
        for p in [Proj::Q, Proj::K, Proj::V, Proj::O] {
            let name = WeightName::Weight(l, p);
            assert_eq!(a.tensor(name).unwrap(), b.tensor(name).unwrap(), "{name}");
        }
    }
    assert_eq!(logits(&back.model, &ids), logits(&reference.model, &ids));

    let container = dir.path().join("hf.safetensors");
    compress_model::container::write_container(
        &hf.model,
        &hf.tokenizer,
        &container,
        &Default::default(),
    )
    .unwrap();
    let c = load(&container, &device).unwrap();
    assert!(c.tokenizer.gguf_vocab().is_none());
    assert_eq!(c.tokenizer.encode(text, true).unwrap(), ids);
    assert_eq!(c.tokenizer.special_tokens(), hf.tokenizer.special_tokens());
    assert_eq!(logits(&c.model, &ids), logits(&hf.model, &ids));
}
