//! Writing stories260K (`../shared`) out and reading it back: the container (bit-identical
//! round trip, corruption and truncation detected, atomic writes that survive a kill) and GGUF
//! (our reader, and gguf-py's when it is installed — required under `CI=true`).
//!
//! Compressed layers (packed codes, masks, low-rank factors) are round-tripped by the facade's
//! `tests/save_compressed.rs`, which has the quantizers.

mod common;

use std::path::Path;
use std::process::Command;

use common::{logits, max_abs_diff, shared};
use compress_core::backend::BackendKind;
use compress_model::container::{read_container, write_container, ContainerOptions};
use compress_model::gguf::{GgmlType, GgufFile};
use compress_model::save::{write_atomic, write_gguf, GgufExport};
use compress_model::{load, LoadedModel};

const TEXT: &str = "Once upon a time, there was a little girl who liked to sing.";

fn stories() -> Option<LoadedModel> {
    let path = shared("models/stories260K.gguf")?;
    Some(load(path, &BackendKind::Flex.device().unwrap()).unwrap())
}

#[test]
fn container_round_trip_is_bit_identical() {
    let Some(m) = stories() else { return };
    let dir = tempfile::tempdir().unwrap();
    let (a, b) = (
        dir.path().join("a.safetensors"),
        dir.path().join("b.safetensors"),
    );
    let mut options = ContainerOptions::default();
    options
        .provenance
        .insert("source".into(), "stories260K.gguf".into());
    let header = write_container(&m.model, &m.tokenizer, &a, &options).unwrap();
    assert_eq!(header.tied_head, m.model.config().tie_word_embeddings);
    assert_eq!(header.provenance["source"], "stories260K.gguf");
    let back = load(&a, &BackendKind::Flex.device().unwrap()).unwrap();
    assert_eq!(back.model.config(), m.model.config());
    let ids = m.tokenizer.encode(TEXT, true).unwrap();
    assert_eq!(back.tokenizer.encode(TEXT, true).unwrap(), ids);
    assert_eq!(
        back.tokenizer.special_tokens(),
        m.tokenizer.special_tokens()
    );
    assert_eq!(back.tokenizer.gguf_vocab(), m.tokenizer.gguf_vocab());
    // Same f32 tensors, same kernels: the logits are equal bit for bit.
    assert_eq!(logits(&back.model, &ids), logits(&m.model, &ids));
    write_container(&back.model, &back.tokenizer, &b, &options).unwrap();
    assert_eq!(
        std::fs::read(&a).unwrap(),
        std::fs::read(&b).unwrap(),
        "re-saving is byte-identical"
    );
}

#[test]
fn corrupt_and_truncated_containers_are_detected() {
    let Some(m) = stories() else { return };
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("m.safetensors");
    write_container(&m.model, &m.tokenizer, &path, &Default::default()).unwrap();
    let bytes = std::fs::read(&path).unwrap();
    let device = BackendKind::Flex.device().unwrap();
    let bad = dir.path().join("bad.safetensors");

    // One flipped bit in the last tensor's data (the file ends with tensor bytes).
    let mut flipped = bytes.clone();
    let i = flipped.len() - 100;
    flipped[i] ^= 0x10;
    std::fs::write(&bad, &flipped).unwrap();
    let e = read_container(&bad, &device).err().unwrap().to_string();
    assert!(e.contains("corrupt") && e.contains("CRC-32"), "{e}");

    for keep in [bytes.len() - 1, bytes.len() / 2, 100, 4] {
        std::fs::write(&bad, &bytes[..keep]).unwrap();
        let e = read_container(&bad, &device).err().unwrap().to_string();
        assert!(e.contains("truncated or corrupt"), "{keep} bytes: {e}");
    }

    // A header from a future version is refused, not half-read.
    let text = String::from_utf8_lossy(&bytes[8..8 + 4096]).into_owned();
    let at = text
        .find("\\\"version\\\":1")
        .expect("version field in the header");
    let mut future = bytes.clone();
    future[8 + at + 12] = b'9';
    std::fs::write(&bad, &future).unwrap();
    let e = read_container(&bad, &device).err().unwrap().to_string();
    assert!(e.contains("newer than this build"), "{e}");
}

/// The child half of [`killed_write_leaves_no_output`]: starts an atomic write and never
/// finishes it (the parent kills this process). Ignored so it only runs when asked for.
#[test]
#[ignore = "run by killed_write_leaves_no_output as a child process"]
fn atomic_write_child() {
    let Some(target) = std::env::var_os("COMPRESS_KILL_TARGET") else {
        return;
    };
    let target = std::path::PathBuf::from(target);
    let _ = write_atomic(&target, |tmp| {
        std::fs::write(tmp, vec![7u8; 1 << 20]).unwrap();
        std::fs::write(target.with_extension("ready"), b"").unwrap();
        std::thread::sleep(std::time::Duration::from_secs(120));
        Ok(())
    });
}

#[test]
fn killed_write_leaves_no_output() {
    let dir = tempfile::tempdir().unwrap();
    let target = dir.path().join("out.gguf");
    let mut child = Command::new(std::env::current_exe().unwrap())
        .args(["--ignored", "--exact", "atomic_write_child", "--nocapture"])
        .env("COMPRESS_KILL_TARGET", &target)
        .spawn()
        .unwrap();
    let ready = target.with_extension("ready");
    let start = std::time::Instant::now();
    while !ready.exists() {
        assert!(
            start.elapsed().as_secs() < 60,
            "the child never started writing"
        );
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    child.kill().unwrap(); // SIGKILL: no destructor, no cleanup runs
    child.wait().unwrap();
    assert!(
        !target.exists(),
        "a killed write must not leave the output file"
    );
    let partial: Vec<_> = std::fs::read_dir(dir.path())
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|n| n.contains(".partial-"))
        .collect();
    assert_eq!(
        partial.len(),
        1,
        "only the hidden temporary remains: {partial:?}"
    );
}

#[test]
fn gguf_round_trip_through_our_reader() {
    let Some(m) = stories() else { return };
    let dir = tempfile::tempdir().unwrap();
    let ids = m.tokenizer.encode(TEXT, true).unwrap();
    let want = logits(&m.model, &ids);
    let device = BackendKind::Flex.device().unwrap();
    // f32: the same tensors, so the same logits bit for bit; f16/bf16 round every weight.
    for (ty, tol) in [
        (GgmlType::F32, 0.0f32),
        (GgmlType::F16, 0.1),
        (GgmlType::BF16, 1.0),
    ] {
        let path = dir.path().join(format!("m-{ty}.gguf"));
        let options = GgufExport {
            dense: ty,
            ..GgufExport::default()
        };
        let report = write_gguf(&m.model, &m.tokenizer, &path, &options).unwrap();
        assert_eq!(report.bytes, std::fs::metadata(&path).unwrap().len());
        let file = GgufFile::open(&path).unwrap();
        assert_eq!(file.tensor("token_embd.weight").unwrap().ggml_type(), ty);
        assert_eq!(
            file.tensor("blk.0.attn_norm.weight").unwrap().ggml_type(),
            GgmlType::F32
        );
        assert_eq!(
            file.tensor("output.weight").is_some(),
            !m.model.config().tie_word_embeddings
        );
        let back = load(&path, &device).unwrap();
        assert_eq!(back.model.config(), m.model.config());
        assert_eq!(back.tokenizer.encode(TEXT, true).unwrap(), ids);
        assert_eq!(back.tokenizer.gguf_vocab(), m.tokenizer.gguf_vocab());
        let worst = max_abs_diff(&logits(&back.model, &ids), &want);
        assert!(worst <= tol, "{ty}: max |Δlogit| {worst} > {tol}");
    }

    // The token embedding quantized to Q8_0 at export: the report names it and gives its
    // deviation, and the model reads back with the dequantized embedding.
    let path = dir.path().join("m-emb-q8.gguf");
    let options = GgufExport {
        embedding: Some(GgmlType::Q8_0),
        ..GgufExport::default()
    };
    let report = write_gguf(&m.model, &m.tokenizer, &path, &options).unwrap();
    let emb = report
        .tensors
        .iter()
        .find(|t| t.name == "token_embd.weight")
        .unwrap();
    assert_eq!(emb.ty, GgmlType::Q8_0);
    assert!(emb.fallback.is_none() && emb.max_abs_error > 0.0);
    let file = GgufFile::open(&path).unwrap();
    let want_emb: Vec<f32> = m.model.embedding.val().into_data().try_to_vec().unwrap();
    let got_emb = file.dequantize("token_embd.weight").unwrap();
    assert_eq!(max_abs_diff(&got_emb, &want_emb), emb.max_abs_error);
    let back = load(&path, &device).unwrap();
    let worst = max_abs_diff(&logits(&back.model, &ids), &want);
    eprintln!(
        "Q8_0 embedding: weights within {:.2e}, max |Δlogit| {worst:.2e}",
        emb.max_abs_error
    );
    // Half a Q8_0 step of the embedding (measured above) moves the logits (magnitude ~20) by a
    // few hundredths at most.
    assert!(worst > 0.0 && worst < 0.1, "max |Δlogit| {worst}");
    let bad = GgufExport {
        embedding: Some(GgmlType::Q4_K),
        ..GgufExport::default()
    };
    let e = write_gguf(&m.model, &m.tokenizer, &dir.path().join("x.gguf"), &bad).unwrap_err();
    assert!(e.to_string().contains("token embedding"), "{e}");
}

/// gguf-py (the reference reader llama.cpp ships) reads our file: every tensor's dequantized
/// values equal ours. Skipped without python3 + gguf, except under `CI=true`.
#[test]
fn gguf_read_by_gguf_py() {
    let Some(m) = stories() else { return };
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/gguf_py_dump.py");
    if !common::python_has(
        "gguf, numpy",
        common::under_ci(),
        ".ci/run installs gguf-py",
    ) {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("m.gguf");
    let options = GgufExport {
        dense: GgmlType::F16,
        ..GgufExport::default()
    };
    write_gguf(&m.model, &m.tokenizer, &path, &options).unwrap();
    common::compare_with_gguf_py(&script, &path);
    // With the embedding quantized to Q8_0 at export.
    let q8 = dir.path().join("m-q8.gguf");
    let options = GgufExport {
        embedding: Some(GgmlType::Q8_0),
        ..options
    };
    write_gguf(&m.model, &m.tokenizer, &q8, &options).unwrap();
    common::compare_with_gguf_py(&script, &q8);
}

/// A model loaded from a Hugging Face checkpoint is written as GGUF with its `tokenizer.json`
/// converted to `tokenizer.ggml.*`: SmolLM2 GGUF → HF directory (f16 safetensors +
/// tokenizer.json) → loaded → GGUF. The written file carries the original file's vocabulary
/// (tokens, merges, token types, pre-tokenizer, special ids), tokenizes the same, and computes
/// the HF model's logits (its f16 weights written as F32; only the RoPE pairing differs,
/// permuted exactly).
#[test]
fn hf_checkpoint_exports_to_gguf_with_its_tokenizer() {
    use compress_model::save::{write_compressed_tensors, CompressedTensorsExport};
    let Some(path) = common::smollm2() else {
        return;
    };
    let device = BackendKind::Flex.device().unwrap();
    let m = load(&path, &device).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let hf_dir = dir.path().join("hf");
    let options = CompressedTensorsExport::default();
    write_compressed_tensors(&m.model, &m.tokenizer, &hf_dir, &options).unwrap();
    let hf = load(&hf_dir, &device).unwrap();
    assert!(
        hf.tokenizer.gguf_vocab().is_none(),
        "the HF tokenizer is tokenizer.json"
    );
    let out = dir.path().join("from-hf.gguf");
    write_gguf(&hf.model, &hf.tokenizer, &out, &GgufExport::default()).unwrap();
    let file = GgufFile::open(&out).unwrap();
    let original = GgufFile::open(&path).unwrap();
    for key in ["tokenizer.ggml.model", "tokenizer.ggml.pre"] {
        assert_eq!(
            file.get_str(key).unwrap(),
            original.get_str(key).unwrap(),
            "{key}"
        );
    }
    for key in ["tokenizer.ggml.bos_token_id", "tokenizer.ggml.eos_token_id"] {
        assert_eq!(
            file.get_u64(key).unwrap(),
            original.get_u64(key).unwrap(),
            "{key}"
        );
    }
    let back = load(&out, &device).unwrap();
    let (v0, v1) = (
        m.tokenizer.gguf_vocab().unwrap(),
        back.tokenizer.gguf_vocab().unwrap(),
    );
    assert_eq!(v1.tokens, v0.tokens);
    assert_eq!(v1.merges, v0.merges);
    assert_eq!(v1.token_types, v0.token_types);
    let ids = m.tokenizer.encode(TEXT, true).unwrap();
    assert_eq!(back.tokenizer.encode(TEXT, true).unwrap(), ids);
    let worst = max_abs_diff(&logits(&back.model, &ids), &logits(&hf.model, &ids));
    // Same f16-rounded weights; the interleaved and rotate-half RoPE paths sum in another order.
    assert!(worst < 1e-3, "max |Δlogit| {worst}");
}
