//! Every dense family against Hugging Face transformers: a tiny random-weight checkpoint per
//! family (made by `scripts/family-fixtures/make_hf.py`, weights drawn so that every norm,
//! bias and soft-cap matters), loaded by our HF loader, must give transformers' f32 logits on
//! 24 fixed tokens, its greedy continuation of a fixed prompt (through the KV cache, so
//! incremental decoding with sliding windows and local RoPE is checked too), and its
//! tokenizer's ids for a fixed text.
//!
//! Tolerance: `max |Δlogit| ≤ 1e-3 · max(1, max |logit|)` (the "1e-3 relative"). Both
//! sides compute in f32 with different reduction orders and transcendental implementations
//! (tanh, exp, cos/sin tables from f64 here, f32 in torch); on these 32-wide models the measured
//! differences are ~1e-6 relative, so the bound has two orders of magnitude of headroom and
//! still fails on any real mistake (a missing `1 +` on a norm moves logits by whole units).

mod common;

use std::path::PathBuf;

use compress_core::backend::BackendKind;
use compress_model::generate::{generate, GenerateOptions, Sampling};
use compress_model::load::HfModel;

use common::{family_fixture as fixture, json_ids as ids, logits as logits_of, FAMILIES, MOE};

fn reference(name: &str) -> serde_json::Value {
    let text = std::fs::read_to_string(fixture(name).join("reference.json")).unwrap();
    serde_json::from_str(&text).unwrap()
}

/// Compares `m` with a reference file of the fixtures' format (`reference.json`,
/// `llamacpp.json`): logits on its `tokens` within `bound(max |logit|)`, its greedy continuation
/// and its token ids for `text`; the differences, named after `who`.
fn compare(
    name: &str,
    who: &str,
    m: &compress_model::LoadedModel,
    r: &serde_json::Value,
    bound: impl Fn(f32) -> f32,
) -> Vec<String> {
    let mut failures = Vec::new();
    let tokens = ids(&r["tokens"]);
    let want: Vec<f32> = r["logits"]
        .as_array()
        .unwrap()
        .iter()
        .flat_map(|row| {
            row.as_array()
                .unwrap()
                .iter()
                .map(|x| x.as_f64().unwrap() as f32)
        })
        .collect();
    let got = logits_of(&m.model, &tokens);
    assert_eq!(got.len(), want.len(), "{name}: logits shape");
    let scale = want.iter().fold(0f32, |a, v| a.max(v.abs()));
    let diff = common::max_abs_diff(&got, &want);
    println!("{name}: max |Δlogit| {diff:.2e} vs {who} (max |logit| {scale:.2})");
    if diff > bound(scale) {
        failures.push(format!(
            "{name}: logits differ from {who}'s by {diff} (bound {})",
            bound(scale)
        ));
    }
    let prompt = ids(&r["greedy"]["prompt"]);
    let want_greedy = ids(&r["greedy"]["tokens"]);
    let options = GenerateOptions {
        max_new_tokens: want_greedy.len(),
        sampling: Sampling::Greedy,
        stop_token: None,
    };
    let out = generate(&m.model, &prompt, &options, |_| {}).unwrap();
    if out.tokens != want_greedy {
        failures.push(format!(
            "{name}: greedy {:?}, {who} {want_greedy:?}",
            out.tokens
        ));
    }
    let text = r["text"].as_str().unwrap();
    let want_ids = ids(&r["text_ids"]);
    let bos = m
        .tokenizer
        .bos_id()
        .is_some_and(|b| want_ids.first() == Some(&b));
    let got_ids = m.tokenizer.encode(text, bos).unwrap();
    if got_ids != want_ids {
        failures.push(format!(
            "{name}: tokenizer ids {got_ids:?}, {who} {want_ids:?}"
        ));
    }
    failures
}

#[test]
fn every_family_matches_transformers() {
    let device = BackendKind::Flex.device().unwrap();
    let mut failures = Vec::new();
    for &name in FAMILIES {
        let m =
            compress_model::load(fixture(name), &device).unwrap_or_else(|e| panic!("{name}: {e}"));
        failures.extend(compare(name, "transformers", &m, &reference(name), |s| {
            1e-3 * s.max(1.0)
        }));
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}

/// The family descriptions read each config as transformers does: the fields that make the
/// families differ come out as the fixtures' configs say.
#[test]
fn configs_carry_each_familys_structure() {
    use compress_model::config::{Activation, LayerAttention, RopeScaling};
    use compress_model::weights::WeightSource;
    let open = |n: &str| HfModel::open(fixture(n)).unwrap();

    let g2 = open("gemma2");
    let c = g2.config();
    assert!(c.variant.sandwich_norms && !c.variant.qk_norm);
    assert_eq!(c.variant.activation, Activation::GeluTanh);
    assert_eq!(c.variant.attn_softcap, Some(50.0));
    assert_eq!(c.variant.final_softcap, Some(30.0));
    assert_eq!(c.variant.attention_scale, Some((1.0 / 24f64.sqrt()) as f32));
    assert_eq!(c.variant.attention_of(0), LayerAttention::Sliding);
    assert_eq!(c.variant.attention_of(1), LayerAttention::Global);

    let g3 = open("gemma3");
    let c = g3.config();
    assert!(c.variant.sandwich_norms && c.variant.qk_norm);
    assert_eq!(c.variant.attn_softcap, None);
    assert_eq!(c.variant.local_rope_theta, Some(10_000.0));
    assert_eq!(c.rope_theta, 1_000_000.0);
    assert_eq!(
        c.variant.rope_scaling,
        Some(RopeScaling::Linear { factor: 8.0 })
    );
    let globals: Vec<usize> = (0..c.num_layers)
        .filter(|&l| c.variant.attention_of(l) == LayerAttention::Global)
        .collect();
    assert_eq!(globals, vec![5]);

    assert!(open("qwen3").config().variant.qk_norm);
    assert!(open("qwen2").config().attention_bias);
    // Phi-3 has no head_dim key: 32 / 4 heads = 8, of which 0.75 rotate.
    let p4 = open("phi4mini");
    assert_eq!(p4.config().head_dim, 8);
    assert_eq!(p4.config().variant.rotary_dims, Some(6));
    assert!(matches!(
        open("llama3").config().variant.rope_scaling,
        Some(RopeScaling::Llama3 { .. })
    ));
}

/// Every family survives the lossless container bit for bit: the family's extra norms, its
/// variant (sliding layers, soft-caps, RoPE scaling, partial rotary) and its tokenizer.
#[test]
fn every_family_round_trips_through_the_container() {
    use compress_model::container::{read_container, write_container, ContainerOptions};
    let device = BackendKind::Flex.device().unwrap();
    let dir = tempfile::tempdir().unwrap();
    for &name in FAMILIES {
        let m = compress_model::load(fixture(name), &device).unwrap();
        let path = dir.path().join(format!("{name}.safetensors"));
        write_container(&m.model, &m.tokenizer, &path, &ContainerOptions::default())
            .unwrap_or_else(|e| panic!("{name}: {e}"));
        let back = read_container(&path, &device).unwrap_or_else(|e| panic!("{name}: {e}"));
        assert_eq!(back.model.config(), m.model.config(), "{name}");
        let tokens = ids(&reference(name)["tokens"]);
        assert_eq!(
            logits_of(&back.model, &tokens),
            logits_of(&m.model, &tokens),
            "{name}: logits after the round trip"
        );
        let text = "Once upon a time";
        assert_eq!(
            back.tokenizer.encode(text, false).unwrap(),
            m.tokenizer.encode(text, false).unwrap(),
            "{name}: tokenizer"
        );
    }
}

/// The same fixtures converted to GGUF by llama.cpp's `convert_hf_to_gguf.py` (f16 weights,
/// `scripts/family-fixtures/make_gguf.py`) and run by llama.cpp (f32 KV cache): our GGUF loader
/// must give llama.cpp's logits, greedy tokens and token ids. Where llama.cpp's reading of a
/// family differs from transformers' (it ignores Mistral's sliding window and Gemma's
/// `query_pre_attn_scalar`), the GGUF loader follows llama.cpp, so these compare like with like.
///
/// Tolerance: `0.05 + 2e-3 · max |logit|`. ggml multiplies f16 weights by activations rounded to
/// f16 (its `vec_dot_type`), and evaluates GELU through an f16 table; both round at 2⁻¹¹
/// relative, once per product, over 2–6 blocks of ~7 products. Our f32 activations differ by
/// that rounding; the measured worst case is printed.
#[test]
fn every_family_gguf_matches_llama_cpp() {
    let device = BackendKind::Flex.device().unwrap();
    let mut failures = Vec::new();
    for &name in FAMILIES {
        let text = std::fs::read_to_string(fixture(name).join("llamacpp.json")).unwrap();
        let r: serde_json::Value = serde_json::from_str(&text).unwrap();
        let m = compress_model::load(fixture(name).join("model.gguf"), &device)
            .unwrap_or_else(|e| panic!("{name}: {e}"));
        failures.extend(compare(name, "llama.cpp", &m, &r, |s| 0.05 + 2e-3 * s));
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}

/// GGUF export writes each family's own metadata and tensor layout (sandwich and q/k norms,
/// soft-caps, sliding windows and local RoPE base, fused Phi-3 `attn_qkv` / `ffn_up`, partial
/// rotary): a model loaded from the family's GGUF fixture, written back out, reloads with the
/// same configuration and bit-identical logits, and gguf-py reads the written file with the same
/// tensors and values (required under `CI=true`).
#[test]
fn every_family_exports_to_gguf() {
    use compress_model::save::{write_gguf, GgufExport};
    let device = BackendKind::Flex.device().unwrap();
    let dir = tempfile::tempdir().unwrap();
    let script = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/gguf_py_dump.py");
    let gguf_py = common::python_has(
        "gguf, numpy",
        common::under_ci(),
        "pip install gguf==0.19.0",
    );
    for &name in FAMILIES {
        let m = compress_model::load(fixture(name).join("model.gguf"), &device).unwrap();
        let out = dir.path().join(format!("{name}.gguf"));
        write_gguf(&m.model, &m.tokenizer, &out, &GgufExport::default())
            .unwrap_or_else(|e| panic!("{name}: {e}"));
        let back = compress_model::load(&out, &device).unwrap();
        assert_eq!(back.model.config(), m.model.config(), "{name}: config");
        let tokens = ids(&reference(name)["tokens"]);
        assert_eq!(
            logits_of(&back.model, &tokens),
            logits_of(&m.model, &tokens),
            "{name}: logits after GGUF export"
        );
        if gguf_py {
            common::compare_with_gguf_py(&script, &out);
        }
    }
}

/// What llama.cpp fixes in code cannot be exported silently: a Gemma 2 whose query scale is not
/// llama.cpp's `1/√head_dim` (the transformers fixture uses `query_pre_attn_scalar = 24` with
/// heads of 16) is refused with the reason.
#[test]
fn gguf_export_refuses_what_llama_cpp_would_run_differently() {
    use compress_model::save::{write_gguf, GgufExport};
    let device = BackendKind::Flex.device().unwrap();
    let m = compress_model::load(fixture("gemma2"), &device).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let e = write_gguf(
        &m.model,
        &m.tokenizer,
        &dir.path().join("g.gguf"),
        &GgufExport::default(),
    )
    .unwrap_err()
    .to_string();
    assert!(
        e.contains("query_pre_attn_scalar") && e.contains("gemma2"),
        "{e}"
    );
}

/// Mixture of experts: our router sends every token of the fixture's input to the experts
/// transformers' router chose, in the same order (by weight), in every layer — the fixtures
/// keep every decision at least 0.003 router-logit units from a tie.
#[test]
fn moe_routing_matches_transformers() {
    let device = BackendKind::Flex.device().unwrap();
    for &name in MOE {
        let r = reference(name);
        let m = compress_model::load(fixture(name), &device).unwrap();
        let tokens = ids(&r["tokens"]);
        let ours = m.model.expert_routing(&tokens).unwrap();
        let theirs = r["routing"].as_array().unwrap();
        assert_eq!(ours.len(), theirs.len(), "{name}: MoE layers");
        for (l, (routing, want)) in ours.iter().zip(theirs).enumerate() {
            let routing = routing
                .as_ref()
                .unwrap_or_else(|| panic!("{name}: layer {l} is dense"));
            for (t, (chosen, want)) in routing
                .tokens
                .iter()
                .zip(want.as_array().unwrap())
                .enumerate()
            {
                let got: Vec<u32> = chosen.iter().map(|(e, _)| *e as u32).collect();
                assert_eq!(got, ids(want), "{name}: layer {l}, token {t}");
            }
        }
    }
}

/// Every family's Hugging Face `tokenizer.json` converts to a GGUF vocabulary (how a checkpoint
/// loaded from safetensors is written as GGUF) equal to what llama.cpp's converter wrote in the
/// fixture's `model.gguf`: the same tokens, token types, model, space prefix and special ids —
/// for the SentencePiece-style tokenizers (Mistral, Gemma) with scores derived from the merge
/// order where llama.cpp read `tokenizer.model`'s —, and the tokenizer built from it gives
/// the `tokenizer.json`'s and the llama.cpp vocabulary's ids on TinyStories text.
#[test]
fn every_family_tokenizer_converts_to_llama_cpps_vocabulary() {
    use compress_model::tokenizer::GgufVocab;
    use compress_model::LlmTokenizer;
    let device = BackendKind::Flex.device().unwrap();
    let text = common::shared("data/tinystories/val.txt")
        .map(|p| std::fs::read_to_string(p).unwrap())
        .unwrap_or_default();
    let lines: Vec<&str> = text.lines().filter(|l| !l.is_empty()).take(300).collect();
    for &name in FAMILIES {
        let hf = compress_model::load(fixture(name), &device)
            .unwrap()
            .tokenizer;
        let gguf = compress_model::load(fixture(name).join("model.gguf"), &device)
            .unwrap()
            .tokenizer;
        let theirs = gguf.gguf_vocab().unwrap();
        let ours = GgufVocab::from_hf_tokenizer(&hf).unwrap_or_else(|e| panic!("{name}: {e}"));
        assert_eq!(ours.model, theirs.model, "{name}: model");
        assert_eq!(ours.tokens, theirs.tokens, "{name}: tokens");
        assert_eq!(ours.token_types, theirs.token_types, "{name}: token types");
        // llama.cpp reads `gpt-2` and `gpt2` as one pre-tokenizer.
        let canonical = |p: &Option<String>| p.as_deref().map(|p| p.replace("gpt-2", "gpt2"));
        assert_eq!(
            canonical(&ours.pre),
            canonical(&theirs.pre),
            "{name}: pre-tokenizer"
        );
        assert_eq!(
            ours.add_space_prefix.unwrap_or(true),
            theirs.add_space_prefix.unwrap_or(true),
            "{name}: space prefix"
        );
        assert_eq!(
            (ours.bos_id, ours.eos_id),
            (theirs.bos_id, theirs.eos_id),
            "{name}: special ids"
        );
        // A byte-level BPE never emits its unknown token (llama.cpp's converter may leave it
        // out); a SentencePiece vocabulary falls back to it.
        if ours.model == "llama" {
            assert_eq!(ours.unk_id, theirs.unk_id, "{name}: unknown id");
        }
        let rebuilt = LlmTokenizer::from_gguf_vocab(&ours).unwrap();
        for line in lines
            .iter()
            .copied()
            .chain(["Hello world!  It's 2024\n\tok"])
        {
            let want = hf.encode(line, false).unwrap();
            assert_eq!(
                rebuilt.encode(line, false).unwrap(),
                want,
                "{name}: {line:?}"
            );
            assert_eq!(gguf.encode(line, false).unwrap(), want, "{name}: {line:?}");
        }
    }
}
