//! Real model files: stories260K (all F32) and, when present, SmolLM2-135M Q4_1
//! compared against gguf-py's reading of it (tests/fixtures/smollm2_ref.json).

#[path = "gguf_support/mod.rs"]
mod common;

use std::collections::BTreeSet;

use common::{fixture, model_or_skip, SMOLLM2, STORIES};
use compress_model::gguf::{GgmlType, GgufError, GgufFile, GgufValue};
use serde_json::Value;

#[test]
fn stories260k_metadata() {
    let Some(path) = model_or_skip(STORIES) else {
        return;
    };
    let f = GgufFile::open(path).unwrap();
    assert_eq!(f.version(), 3);
    assert_eq!(f.alignment(), 32);
    assert_eq!(f.data_start(), 14176);
    assert_eq!(f.metadata().len(), 19);
    assert_eq!(f.architecture().unwrap(), "llama");
    assert_eq!(f.get_str("general.name").unwrap(), "llama");
    assert_eq!(f.get_u32("llama.embedding_length").unwrap(), 64);
    assert_eq!(f.get_u32("llama.block_count").unwrap(), 5);
    assert_eq!(f.get_u32("llama.attention.head_count").unwrap(), 8);
    assert_eq!(f.get_u32("llama.attention.head_count_kv").unwrap(), 4);
    assert_eq!(f.get_u32("llama.feed_forward_length").unwrap(), 172);
    assert_eq!(f.get_u32("llama.context_length").unwrap(), 2048);
    assert_eq!(f.get_u32("llama.rope.dimension_count").unwrap(), 8);
    assert_eq!(f.get_usize("llama.context_length").unwrap(), 2048);
    assert_eq!(f.get_i64("llama.context_length").unwrap(), 2048);
    assert_eq!(
        f.get_f32("llama.attention.layer_norm_rms_epsilon").unwrap(),
        1e-5f32
    );
    assert_eq!(f.get_str("tokenizer.ggml.model").unwrap(), "llama");
    assert_eq!(f.get_u32("tokenizer.ggml.bos_token_id").unwrap(), 1);
    assert_eq!(f.get_u32("tokenizer.ggml.eos_token_id").unwrap(), 2);

    let tokens = f.get_str_array("tokenizer.ggml.tokens").unwrap();
    assert_eq!(tokens.len(), 512);
    assert_eq!(&tokens[..3], ["<unk>", "<s>", "</s>"]);
    assert_eq!(f.get_f32_array("tokenizer.ggml.scores").unwrap().len(), 512);
    let tt = f.get_i32_array("tokenizer.ggml.token_type").unwrap();
    assert_eq!((tt.len(), &tt[..3]), (512, &[2, 3, 3][..]));
    assert_eq!(f.get_int_array("tokenizer.ggml.token_type").unwrap()[0], 2);

    // u32::MAX fits u32/u64/i64 but not i32: a typed error, naming the key.
    let sep = "tokenizer.ggml.seperator_token_id";
    assert_eq!(f.get_u32(sep).unwrap(), u32::MAX);
    assert_eq!(f.get_i64(sep).unwrap(), i64::from(u32::MAX));
    let e = f.get_i32(sep).unwrap_err();
    assert!(
        matches!(&e, GgufError::WrongValueType { key, .. } if key == sep),
        "{e}"
    );
    assert!(e.to_string().contains(sep));
    // Wrong types and missing keys.
    let e = f.get_str("llama.block_count").unwrap_err();
    assert!(
        matches!(
            &e,
            GgufError::WrongValueType {
                expected: "string",
                ..
            }
        ),
        "{e}"
    );
    let e = f.get_u32("tokenizer.ggml.tokens").unwrap_err();
    assert!(e.to_string().contains("array<string>"), "{e}");
    let e = f.get_u32("llama.nope").unwrap_err();
    assert!(
        matches!(&e, GgufError::MissingKey(k) if k == "llama.nope"),
        "{e}"
    );
    assert!(matches!(f.get("general.architecture"), Some(GgufValue::String(s)) if s == "llama"));
    assert!(f.get("llama.nope").is_none());
}

#[test]
fn stories260k_tensors() {
    let Some(path) = model_or_skip(STORIES) else {
        return;
    };
    let f = GgufFile::open(path).unwrap();
    assert_eq!(f.tensors().len(), 48);
    let mut want: BTreeSet<String> = ["token_embd.weight", "output_norm.weight", "output.weight"]
        .map(String::from)
        .into();
    for l in 0..5 {
        for t in [
            "attn_q",
            "attn_k",
            "attn_v",
            "attn_output",
            "attn_norm",
            "ffn_gate",
            "ffn_down",
            "ffn_up",
            "ffn_norm",
        ] {
            want.insert(format!("blk.{l}.{t}.weight"));
        }
    }
    let got: BTreeSet<String> = f.tensors().iter().map(|t| t.name().to_string()).collect();
    assert_eq!(got, want);

    let emb = f.tensor("token_embd.weight").unwrap();
    assert_eq!(emb.dims(), [64, 512]);
    assert_eq!(emb.shape_row_major(), [512, 64]);
    assert_eq!((emb.ggml_type(), emb.offset()), (GgmlType::F32, 0));
    assert_eq!((emb.n_elements(), emb.n_bytes()), (32768, 131072));
    let k = f.tensor("blk.0.attn_k.weight").unwrap();
    assert_eq!(k.shape_row_major(), [32, 64]); // [n_kv_heads * head_dim, dim]
    assert_eq!(f.tensor("blk.4.ffn_down.weight").unwrap().dims(), [172, 64]);
    assert!(f.tensor("nope").is_none());

    let v = f.dequantize("token_embd.weight").unwrap();
    assert_eq!(v.len(), 512 * 64);
    assert!(v.iter().all(|x| x.is_finite()));
    assert!(v.iter().any(|&x| x != 0.0));
    // F32 "dequantization" is the raw little-endian data.
    let raw = f.tensor_bytes(emb);
    assert_eq!(raw.len(), 131072);
    assert!(raw
        .chunks_exact(4)
        .zip(&v)
        .all(|(b, x)| x.to_bits() == u32::from_le_bytes([b[0], b[1], b[2], b[3]])));
    for t in f.tensors() {
        let v = f.dequantize_tensor(t).unwrap();
        assert_eq!(v.len() as u64, t.n_elements());
        assert!(v.iter().all(|x| x.is_finite()), "{}", t.name());
    }
    let e = f.dequantize("nope").unwrap_err();
    assert!(
        matches!(&e, GgufError::TensorNotFound(n) if n == "nope"),
        "{e}"
    );

    // The in-memory path gives the same result as the memory map.
    let owned = GgufFile::from_bytes(std::fs::read(STORIES).unwrap()).unwrap();
    assert_eq!(owned.tensors(), f.tensors());
    assert_eq!(owned.metadata(), f.metadata());
}

#[test]
fn open_missing_file_is_io_error() {
    let e = GgufFile::open("/nonexistent/dir/model.gguf").unwrap_err();
    assert!(matches!(e, GgufError::Io { .. }), "{e}");
    assert!(e.to_string().contains("/nonexistent/dir/model.gguf"));
}

/// Position-weighted checksum, identical to make_smollm2_ref.py's.
fn checksum(v: &[f32]) -> u64 {
    v.iter().enumerate().fold(0u64, |acc, (i, x)| {
        acc.wrapping_add(u64::from(x.to_bits()).wrapping_mul(2 * i as u64 + 1))
    })
}

#[test]
fn smollm2_q4_1_matches_gguf_py() {
    let Some(path) = model_or_skip(SMOLLM2) else {
        return;
    };
    let text = std::fs::read_to_string(fixture("smollm2_ref.json")).unwrap();
    let r: Value = serde_json::from_str(&text).unwrap();
    let meta = std::fs::metadata(&path).unwrap();
    if meta.len() != r["file_size"].as_u64().unwrap() {
        eprintln!("SKIPPED: {SMOLLM2} is not the file smollm2_ref.json was made from");
        return;
    }
    let f = GgufFile::open(&path).unwrap();
    assert_eq!(f.tensors().len() as u64, r["n_tensors"].as_u64().unwrap());
    assert_eq!(f.data_start(), r["data_offset"].as_u64().unwrap());
    assert_eq!(f.architecture().unwrap(), "llama");
    assert_eq!(f.get_u32("llama.embedding_length").unwrap(), 576);
    assert_eq!(f.get_u32("llama.vocab_size").unwrap(), 49152);
    assert_eq!(
        f.get_str_array("tokenizer.ggml.tokens").unwrap().len(),
        49152
    );
    assert_eq!(
        f.get_str_array("tokenizer.ggml.merges").unwrap().len(),
        48900
    );
    assert!(!f.get_bool("tokenizer.ggml.add_bos_token").unwrap());
    assert_eq!(f.get_f32("llama.rope.freq_base").unwrap(), 100000.0);
    assert_eq!(
        f.tensor("blk.0.attn_k.weight").unwrap().shape_row_major(),
        [192, 576]
    );

    for t in r["tensors"].as_array().unwrap() {
        let name = t["name"].as_str().unwrap();
        let info = f.tensor(name).unwrap();
        assert_eq!(
            info.ggml_type().name(),
            t["type"].as_str().unwrap(),
            "{name}"
        );
        let dims: Vec<u64> = t["dims"]
            .as_array()
            .unwrap()
            .iter()
            .map(|d| d.as_u64().unwrap())
            .collect();
        assert_eq!(info.dims(), &dims[..], "{name}");
        assert_eq!(
            f.data_start() + info.offset(),
            t["abs_offset"].as_u64().unwrap()
        );
        assert_eq!(info.n_bytes(), t["n_bytes"].as_u64().unwrap(), "{name}");
        let v = f.dequantize(name).unwrap();
        assert_eq!(v.len() as u64, t["n_elements"].as_u64().unwrap(), "{name}");
        let bits = |key: &str| -> Vec<u32> {
            t[key]
                .as_array()
                .unwrap()
                .iter()
                .map(|b| b.as_u64().unwrap() as u32)
                .collect()
        };
        let first: Vec<u32> = v[..64].iter().map(|x| x.to_bits()).collect();
        assert_eq!(first, bits("first_bits"), "{name}: first values");
        let stride = t["stride"].as_u64().unwrap() as usize;
        let strided: Vec<u32> = v
            .iter()
            .step_by(stride)
            .take(64)
            .map(|x| x.to_bits())
            .collect();
        assert_eq!(strided, bits("strided_bits"), "{name}: strided values");
        let want: u64 = t["checksum"].as_str().unwrap().parse().unwrap();
        assert_eq!(checksum(&v), want, "{name}: checksum of all values");
    }
    // Linear weights are Q4_1, the embedding Q8_0, norms F32.
    for t in f.tensors() {
        let ty = t.ggml_type();
        assert!(
            matches!(ty, GgmlType::F32 | GgmlType::Q4_1 | GgmlType::Q8_0),
            "{}",
            t.name()
        );
    }
}
