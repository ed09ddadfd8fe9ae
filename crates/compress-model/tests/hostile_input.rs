//! Hostile and broken input (issue #36): one generated input per failure class, each giving a
//! typed error (or loading correctly) without a panic, a hang, or memory beyond a stated bound —
//! measured from inside the test by counting the heap (`CountingAllocator`).
//!
//! Inputs are derived from stories260K (a 1.2 MB GGUF): its metadata and tensors are copied
//! into a new file with one key changed.

mod common;

use std::path::{Path, PathBuf};

use compress_core::backend::BackendKind;
use compress_core::memory::{live_heap_bytes, take_peak_heap_bytes, CountingAllocator};
use compress_model::gguf::{GgufFile, GgufValue, GgufWriter};
use compress_model::ModelError;

#[global_allocator]
static ALLOC: CountingAllocator = CountingAllocator;

/// Memory allowance for loading a 1.2 MB model: the f32 weights (4× the file, ~5 MB), the
/// tokenizer and burn's buffers stay far below it; a table sized from a declared context of
/// 10⁸ positions would take gigabytes.
const LOAD_BOUND: usize = 64 << 20;

/// Tests of this binary run one at a time: the heap counter is process-wide, so a measured
/// load must not overlap another test's allocations.
fn serial() -> std::sync::MutexGuard<'static, ()> {
    static LOCK: std::sync::Mutex<()> = std::sync::Mutex::new(());
    LOCK.lock().unwrap_or_else(|e| e.into_inner())
}

fn stories() -> Option<PathBuf> {
    common::shared("models/stories260K.gguf")
}

/// stories260K's metadata and tensors copied into a new file, then `edit` applied to it (set a
/// key, add a tensor; the source file is passed for reference).
fn rewritten(
    src: &Path,
    dir: &Path,
    name: &str,
    edit: impl Fn(&mut GgufWriter, &GgufFile),
) -> PathBuf {
    let f = GgufFile::open(src).unwrap();
    let mut w = GgufWriter::new();
    for (k, v) in f.metadata() {
        w.set(k, v.clone());
    }
    for t in f.tensors() {
        let shape: Vec<usize> = t.shape_row_major().iter().map(|&d| d as usize).collect();
        w.add_tensor(t.name(), &shape, t.ggml_type(), f.tensor_bytes(t).to_vec())
            .unwrap();
    }
    edit(&mut w, &f);
    let out = dir.join(name);
    w.write(&out).unwrap();
    out
}

/// Loads `path` on flex, returning the result and the peak heap growth during the load.
fn load_measured(path: &Path) -> (Result<compress_model::LoadedModel, ModelError>, usize) {
    let device = BackendKind::Flex.device().unwrap();
    let before = live_heap_bytes();
    take_peak_heap_bytes();
    let r = compress_model::load(path, &device);
    (r, take_peak_heap_bytes().saturating_sub(before))
}

#[test]
fn declared_sizes_are_checked_before_anything_is_sized_from_them() {
    let _serial = serial();
    let Some(src) = stories() else { return };
    let dir = tempfile::tempdir().unwrap();
    let key = |k: &str| format!("llama.{k}");

    // A context of 10⁸ positions: loads, and the RoPE tables are built for the positions run.
    let p = rewritten(&src, dir.path(), "ctx.gguf", |w, _| {
        w.set(&key("context_length"), GgufValue::U32(100_000_000))
    });
    let (m, peak) = load_measured(&p);
    let m = m.unwrap();
    assert_eq!(m.model.config().max_seq_len, 100_000_000);
    assert!(peak < LOAD_BOUND, "loading took {peak} bytes of heap");
    eprintln!("context_length 10^8: loaded with a heap peak of {peak} bytes");
    let ids = m.tokenizer.encode("Once upon a time", true).unwrap();
    let options = compress_model::generate::GenerateOptions {
        max_new_tokens: 4,
        sampling: compress_model::generate::Sampling::Greedy,
        stop_token: None,
    };
    let out = compress_model::generate::generate(&m.model, &ids, &options, |_| {}).unwrap();
    assert_eq!(out.tokens.len(), 4);

    // Sizes past any real model, and ones that would overflow a product: typed errors naming
    // the field, before anything is allocated from them.
    for (k, v, field) in [
        ("context_length", GgufValue::U64(1 << 62), "max_seq_len"),
        ("block_count", GgufValue::U32(1_000_000), "num_layers"),
        ("block_count", GgufValue::U64(1 << 62), "num_layers"),
        ("embedding_length", GgufValue::U64(1 << 40), "hidden_size"),
        (
            "feed_forward_length",
            GgufValue::U64(1 << 40),
            "intermediate_size",
        ),
    ] {
        let p = rewritten(&src, dir.path(), "big.gguf", |w, _| {
            w.set(&key(k), v.clone())
        });
        let (r, peak) = load_measured(&p);
        let e = r.err().unwrap_or_else(|| panic!("{k} = {v:?} loaded"));
        assert!(
            matches!(e, ModelError::InvalidConfig(_)) && e.to_string().contains(field),
            "{k}: {e}"
        );
        assert!(
            peak < LOAD_BOUND,
            "{k}: {peak} bytes of heap before the error"
        );
    }
}

#[test]
fn block_count_must_match_the_blocks_present() {
    let _serial = serial();
    let Some(src) = stories() else { return };
    let dir = tempfile::tempdir().unwrap();
    // Fewer blocks declared than present: the rest would be silently ignored.
    let p = rewritten(&src, dir.path(), "fewer.gguf", |w, _| {
        w.set("llama.block_count", GgufValue::U32(3))
    });
    let e = load_measured(&p).0.err().unwrap().to_string();
    assert!(
        e.contains("block_count = 3") && e.contains("5 blocks"),
        "{e}"
    );
    // More declared than present.
    let p = rewritten(&src, dir.path(), "more.gguf", |w, _| {
        w.set("llama.block_count", GgufValue::U32(7))
    });
    let e = load_measured(&p).0.err().unwrap().to_string();
    assert!(
        e.contains("block_count = 7") && e.contains("5 blocks"),
        "{e}"
    );
}

#[test]
fn files_are_told_apart_and_special_files_refused() {
    let _serial = serial();
    let Some(src) = stories() else { return };
    let dir = tempfile::tempdir().unwrap();
    let device = BackendKind::Flex.device().unwrap();
    // A FIFO: refused at once (opening it for reading would wait for a writer forever).
    #[cfg(unix)]
    {
        let fifo = dir.path().join("model.gguf");
        let c = std::ffi::CString::new(fifo.to_str().unwrap()).unwrap();
        // SAFETY: a valid NUL-terminated path.
        assert_eq!(unsafe { libc::mkfifo(c.as_ptr(), 0o600) }, 0);
        let e = compress_model::load(&fifo, &device)
            .err()
            .unwrap()
            .to_string();
        assert!(e.contains("a FIFO"), "{e}");
    }
    // A container cut short is reported as a damaged safetensors file, not as a bad GGUF.
    let m = compress_model::load(&src, &device).unwrap();
    let container = dir.path().join("c.safetensors");
    compress_model::container::write_container(
        &m.model,
        &m.tokenizer,
        &container,
        &Default::default(),
    )
    .unwrap();
    let bytes = std::fs::read(&container).unwrap();
    let cut = dir.path().join("cut.safetensors");
    std::fs::write(&cut, &bytes[..bytes.len() / 2]).unwrap();
    let e = compress_model::load(&cut, &device)
        .err()
        .unwrap()
        .to_string();
    assert!(e.contains("safetensors") && !e.contains("GGUF"), "{e}");
}

#[test]
fn vocabularies_with_impossible_merges_are_errors_not_panics() {
    let _serial = serial();
    use compress_model::tokenizer::GgufVocab;
    use compress_model::LlmTokenizer;
    let tokens: Vec<String> = ["a", "b", "ab"].iter().map(|s| s.to_string()).collect();
    // GGUF `gpt2` vocabulary: a merge whose concatenation is longer than any token.
    let vocab = GgufVocab {
        model: "gpt2".into(),
        tokens: tokens.clone(),
        merges: Some(vec!["ab ab".into()]),
        ..Default::default()
    };
    let e = LlmTokenizer::from_gguf_vocab(&vocab)
        .err()
        .unwrap()
        .to_string();
    assert!(e.contains("merged token `abab`"), "{e}");
    // The same in a tokenizer.json.
    let json = r#"{"version":"1.0","truncation":null,"padding":null,"added_tokens":[],
        "normalizer":null,"pre_tokenizer":null,"post_processor":null,"decoder":null,
        "model":{"type":"BPE","dropout":null,"unk_token":null,"continuing_subword_prefix":null,
        "end_of_word_suffix":null,"fuse_unk":false,"byte_fallback":false,"ignore_merges":false,
        "vocab":{"a":0,"b":1,"ab":2},"merges":[["ab","ab"]]}}"#;
    let special = Default::default();
    let e = LlmTokenizer::from_json_str(json, special)
        .err()
        .unwrap()
        .to_string();
    assert!(e.contains("merged token `abab`"), "{e}");
    // A SentencePiece vocabulary with a 1 M-character token builds in linear time.
    let mut tokens = tokens;
    tokens.push(format!("a{}", "b".repeat(1 << 20)));
    let vocab = GgufVocab {
        model: "llama".into(),
        scores: Some(vec![0.0; tokens.len()]),
        tokens,
        ..Default::default()
    };
    let t = LlmTokenizer::from_gguf_vocab(&vocab).unwrap();
    assert_eq!(t.encode("ab", false).unwrap(), vec![2]);
}

/// A container whose header says what its tensors do not: version 0, nesting widths or bits out
/// of range, a stored head under `tied_head`, special ids past the vocabulary — each refused
/// naming the field (the tensors and their checksums are untouched; only the header JSON is
/// rewritten).
#[test]
fn container_headers_are_checked_field_by_field() {
    let _serial = serial();
    use serde_json::{json, Value};
    let Some(src) = stories() else { return };
    let device = BackendKind::Flex.device().unwrap();
    let m = compress_model::load(&src, &device).unwrap();
    // A tokenizer.json tokenizer, so the special ids live in the header.
    let tok = compress_model::LlmTokenizer::from_json_str(
        &m.tokenizer.to_json().unwrap(),
        m.tokenizer.special_tokens(),
    )
    .unwrap();
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("c.safetensors");
    compress_model::container::write_container(&m.model, &tok, &path, &Default::default()).unwrap();
    let bytes = std::fs::read(&path).unwrap();
    let n = u64::from_le_bytes(bytes[..8].try_into().unwrap()) as usize;
    let outer: Value = serde_json::from_slice(&bytes[8..8 + n]).unwrap();
    let inner: Value =
        serde_json::from_str(outer["__metadata__"]["compress"].as_str().unwrap()).unwrap();
    let edited = |name: &str, edit: &dyn Fn(&mut Value)| -> PathBuf {
        let mut h = inner.clone();
        edit(&mut h);
        let mut o = outer.clone();
        o["__metadata__"]["compress"] = Value::String(h.to_string());
        let mut header = o.to_string().into_bytes();
        while !header.len().is_multiple_of(8) {
            header.push(b' ');
        }
        let mut out = (header.len() as u64).to_le_bytes().to_vec();
        out.extend(header);
        out.extend_from_slice(&bytes[8 + n..]);
        let p = dir.path().join(name);
        std::fs::write(&p, out).unwrap();
        p
    };
    // The unedited rewrite loads (the helper itself is sound).
    assert!(compress_model::load(edited("same", &|_| {}), &device).is_ok());
    let stores_head = inner["tied_head"] == false;
    type Edit = Box<dyn Fn(&mut Value)>;
    let mut cases: Vec<(&str, Edit, &str)> = vec![
        ("v0", Box::new(|h| h["version"] = json!(0)), "version 0"),
        (
            "width",
            Box::new(|h| h["nesting"] = json!({"order": "sorted", "widths": [1.5]})),
            "nesting width 1.5",
        ),
        (
            "bits",
            Box::new(|h| h["nesting"] = json!({"order": "sorted", "nested_bits": 9})),
            "nested_bits = 9",
        ),
        (
            "bos",
            Box::new(|h| h["tokenizer"]["special"]["bos"] = json!(100_000)),
            "bos token id 100000",
        ),
    ];
    if stores_head {
        cases.push((
            "tied",
            Box::new(|h| h["tied_head"] = json!(true)),
            "stores `lm_head",
        ));
    }
    for (name, edit, want) in cases {
        let e = compress_model::load(edited(name, &*edit), &device)
            .err()
            .unwrap_or_else(|| panic!("{name}: loaded"))
            .to_string();
        assert!(e.contains(want), "{name}: {e}");
    }
}

/// A dense layer's stored mask may only prune zero weights.
#[test]
fn a_mask_over_non_zero_weights_is_refused() {
    let _serial = serial();
    use compress_core::linear::CompressedLinear;
    use compress_core::sparsity::SparsityMask;
    let Some(src) = stories() else { return };
    let device = BackendKind::Flex.device().unwrap();
    let mut m = compress_model::load(&src, &device).unwrap();
    let CompressedLinear::Dense(l) = &mut m.model.layers[0].attn.q_proj else {
        panic!("dense q_proj expected")
    };
    let [o, i] = l.weight.val().dims();
    let mut mask = SparsityMask::all_kept(o, i);
    mask.prune(0, 0); // the weight there is not zero
    l.mask = Some(std::sync::Arc::new(mask));
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("m.safetensors");
    compress_model::container::write_container(&m.model, &m.tokenizer, &path, &Default::default())
        .unwrap();
    let e = compress_model::load(&path, &device)
        .err()
        .unwrap()
        .to_string();
    assert!(
        e.contains("prunes non-zero weights") && e.contains("q_proj"),
        "{e}"
    );
}

/// A tensor the model does not read (here a bias on one block's query projection while the
/// others have none, so the config says "no biases") is an error by default; the documented
/// opt-out loads the file.
#[test]
fn tensors_the_model_does_not_use_are_refused_by_default() {
    let _serial = serial();
    use compress_model::gguf::GgmlType;
    let Some(src) = stories() else { return };
    let dir = tempfile::tempdir().unwrap();
    let p = rewritten(&src, dir.path(), "extra.gguf", |w, f| {
        let rows = f.tensor("blk.2.attn_q.weight").unwrap().shape_row_major()[0] as usize;
        w.add_tensor(
            "blk.2.attn_q.bias",
            &[rows],
            GgmlType::F32,
            vec![0; 4 * rows],
        )
        .unwrap();
    });
    let device = BackendKind::Flex.device().unwrap();
    let e = compress_model::load(&p, &device).err().unwrap().to_string();
    assert!(
        e.contains("blk.2.attn_q.bias") && e.contains("does not use"),
        "{e}"
    );
    let options = compress_model::LoadOptions {
        allow_unused_tensors: true,
    };
    assert!(compress_model::load_with(&p, &device, &options).is_ok());
}

/// Found by fuzzing (`fuzz/regressions/tokenizer_json/`): a `tokenizer.json` whose
/// single-sequence template names sequence `B` made the `tokenizers` crate index out of bounds
/// when encoding. It is refused when the tokenizer is built, naming the template.
#[test]
fn a_template_naming_a_missing_sequence_is_refused() {
    let _serial = serial();
    let path = std::path::PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../../fuzz/regressions/tokenizer_json/template-names-sequence-b.json");
    let text = std::fs::read_to_string(path).unwrap();
    let special = Default::default();
    let e = compress_model::LlmTokenizer::from_json_str(&text, special)
        .err()
        .unwrap()
        .to_string();
    assert!(e.contains("single template names sequence `B`"), "{e}");
}
