//! Malformed files: each must give its specific typed error (naming the key or
//! tensor at fault), never a panic, and never a large allocation.

#[path = "gguf_support/mod.rs"]
mod common;

use std::alloc::{GlobalAlloc, Layout, System};
use std::cell::Cell;

use common::{build_gguf, model_or_skip, TensorSpec, Writer, STORIES};
use compress_model::gguf::{GgufArray, GgufError, GgufFile, GgufValue};

/// Allocator wrapper recording the largest single allocation made on this thread.
struct Track;
thread_local! { static MAX_ALLOC: Cell<usize> = const { Cell::new(0) }; }
fn note(size: usize) {
    let _ = MAX_ALLOC.try_with(|m| m.set(m.get().max(size)));
}
unsafe impl GlobalAlloc for Track {
    unsafe fn alloc(&self, l: Layout) -> *mut u8 {
        note(l.size());
        System.alloc(l)
    }
    unsafe fn alloc_zeroed(&self, l: Layout) -> *mut u8 {
        note(l.size());
        System.alloc_zeroed(l)
    }
    unsafe fn dealloc(&self, p: *mut u8, l: Layout) {
        System.dealloc(p, l)
    }
    unsafe fn realloc(&self, p: *mut u8, l: Layout, new: usize) -> *mut u8 {
        note(new);
        System.realloc(p, l, new)
    }
}
#[global_allocator]
static GLOBAL: Track = Track;

/// Parses `bytes`, asserting no single allocation above 1 MiB, and returns the error.
fn parse_err(bytes: Vec<u8>) -> GgufError {
    MAX_ALLOC.with(|m| m.set(0));
    let r = GgufFile::from_bytes(bytes);
    let max = MAX_ALLOC.with(|m| m.get());
    assert!(max < 1 << 20, "parse allocated {max} bytes at once");
    match r {
        Ok(_) => panic!("malformed input parsed successfully"),
        Err(e) => e,
    }
}

fn s(v: &str) -> GgufValue {
    GgufValue::String(v.into())
}

fn f32_tensor(name: &str, n: u64) -> TensorSpec {
    TensorSpec {
        name: name.into(),
        dims: vec![n],
        type_id: 0,
        data: vec![0; 4 * n as usize],
    }
}

/// One-tensor file with a hand-written tensor info and `data_len` data bytes.
fn one_tensor(dims: &[u64], type_id: u32, offset: u64, data_len: usize) -> Vec<u8> {
    let mut w = Writer::new();
    w.header(3, 1, 0)
        .tensor_info("blk.0.w", dims, type_id, offset)
        .pad_to(32);
    w.bytes(&vec![0; data_len]);
    w.buf
}

#[test]
fn allocation_tracker_works() {
    MAX_ALLOC.with(|m| m.set(0));
    let v = std::hint::black_box(vec![1u8; 2 << 20]);
    assert!(MAX_ALLOC.with(|m| m.get()) >= 2 << 20);
    drop(v);
}

#[test]
fn bad_magic_and_versions() {
    let mut ok = build_gguf(
        &[("general.architecture", s("llama"))],
        &[f32_tensor("x", 8)],
    );
    GgufFile::from_bytes(ok.clone()).unwrap();
    ok[..4].copy_from_slice(b"GGML");
    assert!(matches!(parse_err(ok.clone()), GgufError::BadMagic(m) if &m == b"GGML"));
    ok[..4].copy_from_slice(b"GGUF");
    for v in [0u32, 1, 4, 0x0300_0000] {
        ok[4..8].copy_from_slice(&v.to_le_bytes());
        let e = parse_err(ok.clone());
        assert!(
            matches!(e, GgufError::UnsupportedVersion(x) if x == v),
            "{e}"
        );
    }
    ok[4..8].copy_from_slice(&2u32.to_le_bytes());
    assert_eq!(GgufFile::from_bytes(ok).unwrap().version(), 2);
    for len in 0..24 {
        let e = parse_err(Writer::new().header(3, 0, 0).buf[..len].to_vec());
        assert!(matches!(e, GgufError::Truncated { .. }), "len {len}: {e}");
    }
    assert_eq!(
        GgufFile::from_bytes(Writer::new().header(3, 0, 0).buf.clone())
            .unwrap()
            .tensors()
            .len(),
        0
    );
}

#[test]
fn huge_counts_fail_fast() {
    let mut w = Writer::new();
    w.header(3, 1 << 40, 0).bytes(&[0; 100]);
    let e = parse_err(w.buf);
    assert!(
        matches!(&e, GgufError::CountTooLarge { count, what, .. } if *count == 1 << 40 && what == "tensor count"),
        "{e}"
    );

    let mut w = Writer::new();
    w.header(3, 0, u64::MAX).bytes(&[0; 100]);
    assert!(matches!(
        parse_err(w.buf),
        GgufError::CountTooLarge {
            count: u64::MAX,
            ..
        }
    ));

    // Huge key length.
    let mut w = Writer::new();
    w.header(3, 0, 1).u64(1 << 62).bytes(&[b'a'; 64]);
    let e = parse_err(w.buf);
    assert!(
        matches!(&e, GgufError::CountTooLarge { what, .. } if what.contains("key of metadata entry #0")),
        "{e}"
    );

    // Huge string value length.
    let mut w = Writer::new();
    w.header(3, 0, 1)
        .str("general.name")
        .u32(8)
        .u64(1 << 50)
        .bytes(&[b'a'; 64]);
    let e = parse_err(w.buf);
    assert!(
        matches!(&e, GgufError::CountTooLarge { count, .. } if *count == 1 << 50),
        "{e}"
    );
    assert!(e.to_string().contains("general.name"), "{e}");

    // Huge array lengths, for string, u8 and nested-array elements.
    for (elem, len) in [
        (8u32, 1u64 << 40),
        (0, u64::MAX),
        (9, 1 << 61),
        (12, u64::MAX / 4),
    ] {
        let mut w = Writer::new();
        w.header(3, 0, 1)
            .str("tokenizer.ggml.tokens")
            .u32(9)
            .u32(elem)
            .u64(len)
            .bytes(&[7; 256]);
        let e = parse_err(w.buf);
        assert!(
            matches!(&e, GgufError::CountTooLarge { count, .. } if *count == len),
            "{e}"
        );
        assert!(e.to_string().contains("tokenizer.ggml.tokens"), "{e}");
    }

    // Huge tensor name length.
    let mut w = Writer::new();
    w.header(3, 1, 0).u64(u64::MAX - 3).bytes(&[0; 64]);
    let e = parse_err(w.buf);
    assert!(
        matches!(&e, GgufError::CountTooLarge { what, .. } if what.contains("tensor info #0")),
        "{e}"
    );
}

#[test]
fn tensor_info_errors_name_the_tensor() {
    let e = parse_err(one_tensor(&[8], 0, 0, 16));
    assert!(
        matches!(&e, GgufError::TensorOutOfBounds { name, size: 32, .. } if name == "blk.0.w"),
        "{e}"
    );
    let e = parse_err(one_tensor(&[8], 0, u64::MAX - 7, 64));
    assert!(
        matches!(
            &e,
            GgufError::Misaligned { .. } | GgufError::TensorOutOfBounds { .. }
        ),
        "{e}"
    );
    let e = parse_err(one_tensor(&[8], 0, u64::MAX - 31, 64));
    assert!(
        matches!(&e, GgufError::TensorOutOfBounds { name, .. } if name == "blk.0.w"),
        "{e}"
    );
    let e = parse_err(one_tensor(&[8], 0, 4, 64));
    assert!(
        matches!(&e, GgufError::Misaligned { name, offset: 4, alignment: 32 } if name == "blk.0.w"),
        "{e}"
    );
    for id in [4u32, 5, 31, 99, u32::MAX] {
        let e = parse_err(one_tensor(&[32], id, 0, 64));
        assert!(
            matches!(&e, GgufError::UnknownType { name, type_id } if name == "blk.0.w" && *type_id == id),
            "{e}"
        );
    }
    let e = parse_err(one_tensor(&[1, 1, 1, 1, 1], 0, 0, 64));
    assert!(
        matches!(&e, GgufError::TooManyDims { name, n_dims: 5 } if name == "blk.0.w"),
        "{e}"
    );
    let e = parse_err(one_tensor(&[33, 2], 2, 0, 64));
    assert!(
        matches!(&e, GgufError::ShapeMismatch { name, ne0: 33, block_size: 32, .. } if name == "blk.0.w"),
        "{e}"
    );
    for dims in [
        &[1u64 << 62, 4][..],
        &[u64::MAX][..],
        &[1 << 32, 1 << 32][..],
        &[1 << 62][..],
    ] {
        let e = parse_err(one_tensor(dims, 0, 0, 64));
        assert!(
            matches!(&e, GgufError::DimsOverflow { name, .. } if name == "blk.0.w"),
            "{dims:?}: {e}"
        );
    }
    // A legitimately-sized tensor whose bytes are all present parses.
    let f = GgufFile::from_bytes(one_tensor(&[32], 2, 0, 18)).unwrap();
    assert_eq!(f.tensors()[0].n_bytes(), 18);
}

#[test]
fn structural_errors() {
    let dup = [f32_tensor("a", 8), f32_tensor("a", 8)];
    assert!(matches!(parse_err(build_gguf(&[], &dup)), GgufError::DuplicateTensor(n) if n == "a"));
    let kvs = [("k", s("1")), ("k", s("2"))];
    assert!(matches!(parse_err(build_gguf(&kvs, &[])), GgufError::DuplicateKey(k) if k == "k"));

    let mut w = Writer::new();
    w.header(3, 0, 1).str("general.weird").u32(13).u64(0);
    let e = parse_err(w.buf);
    assert!(
        matches!(&e, GgufError::UnknownValueType { key, type_id: 13 } if key == "general.weird"),
        "{e}"
    );
    let mut w = Writer::new();
    w.header(3, 0, 1).str("general.weird").u32(9).u32(77).u64(0);
    assert!(matches!(
        parse_err(w.buf),
        GgufError::UnknownValueType { type_id: 77, .. }
    ));

    // Arrays nested 5 deep are refused; 4 deep are fine.
    let mut nested = GgufArray::U8(vec![1, 2]);
    for depth in 2..=5 {
        nested = GgufArray::Array(vec![nested]);
        let bytes = build_gguf(&[("deep", GgufValue::Array(nested.clone()))], &[]);
        if depth <= 4 {
            let f = GgufFile::from_bytes(bytes).unwrap();
            assert_eq!(f.get("deep"), Some(&GgufValue::Array(nested.clone())));
        } else {
            let e = parse_err(bytes);
            assert!(
                matches!(&e, GgufError::NestingTooDeep { key, limit: 4 } if key == "deep"),
                "{e}"
            );
        }
    }
    // A very deep nesting bomb fails on depth, not on the stack.
    let mut w = Writer::new();
    w.header(3, 0, 1).str("bomb").u32(9);
    for _ in 0..100_000 {
        w.u32(9).u64(1);
    }
    assert!(matches!(parse_err(w.buf), GgufError::NestingTooDeep { .. }));
}

#[test]
fn alignment_rules() {
    for bad in [0u32, 3, 48] {
        let kvs = [("general.alignment", GgufValue::U32(bad))];
        let e = parse_err(build_gguf(&kvs, &[]));
        assert!(
            matches!(e, GgufError::BadAlignment(a) if a == u64::from(bad)),
            "{e}"
        );
    }
    let kvs = [("general.alignment", s("64"))];
    let e = parse_err(build_gguf(&kvs, &[]));
    assert!(
        matches!(&e, GgufError::WrongValueType { key, .. } if key == "general.alignment"),
        "{e}"
    );
    let kvs = [("general.alignment", GgufValue::U32(64))];
    let f =
        GgufFile::from_bytes(build_gguf(&kvs, &[f32_tensor("a", 3), f32_tensor("b", 5)])).unwrap();
    assert_eq!((f.alignment(), f.data_start() % 64), (64, 0));
    assert_eq!(f.tensor("b").unwrap().offset(), 64);
    // A huge (but power-of-two) alignment puts the data section past the end.
    let kvs = [("general.alignment", GgufValue::U64(1 << 63))];
    let e = parse_err(build_gguf(&kvs, &[f32_tensor("a", 8)]));
    assert!(
        matches!(&e, GgufError::TensorOutOfBounds { data_start, .. } if *data_start == 1 << 63),
        "{e}"
    );
}

#[test]
fn unsupported_type_names_the_tensor() {
    let t = TensorSpec {
        name: "blk.3.iq".into(),
        dims: vec![256],
        type_id: 16,
        data: vec![0; 66],
    };
    let f = GgufFile::from_bytes(build_gguf(&[], &[t])).unwrap();
    let e = f.dequantize("blk.3.iq").unwrap_err();
    assert!(
        matches!(&e, GgufError::UnsupportedType { name, .. } if name == "blk.3.iq"),
        "{e}"
    );
    assert!(e.to_string().contains("blk.3.iq") && e.to_string().contains("IQ2_XXS"));
}

/// Offset of the first occurrence of `needle` in `hay`.
fn find(hay: &[u8], needle: &[u8]) -> usize {
    hay.windows(needle.len())
        .position(|w| w == needle)
        .expect("needle")
}

#[test]
fn truncated_real_file() {
    let Some(path) = model_or_skip(STORIES) else {
        return;
    };
    let full = std::fs::read(path).unwrap();
    let data_start = GgufFile::from_bytes(full.clone()).unwrap().data_start() as usize;

    // Mid-header.
    for cut in [0, 2, 6, 12, 20] {
        assert!(matches!(
            parse_err(full[..cut].to_vec()),
            GgufError::Truncated { .. }
        ));
    }
    // Mid-metadata: inside the u32 value of llama.context_length.
    let key = b"llama.context_length";
    let value_at = find(&full, key) + key.len() + 4;
    let e = parse_err(full[..value_at + 2].to_vec());
    assert!(
        matches!(&e, GgufError::Truncated { what, offset } if what.contains("llama.context_length") && *offset == value_at as u64),
        "{e}"
    );
    // Mid-metadata: inside the string array of tokens.
    let e = parse_err(full[..find(&full, b"<unk>") + 300].to_vec());
    assert!(e.to_string().contains("tokenizer.ggml.tokens"), "{e}");
    // Mid-tensor-info, early: the 48 infos cannot fit in the bytes left.
    let name = b"blk.0.attn_q.weight";
    let dim0 = find(&full, name) + name.len() + 4;
    let e = parse_err(full[..dim0 + 3].to_vec());
    assert!(
        matches!(&e, GgufError::CountTooLarge { what, count: 48, .. } if what == "tensor count"),
        "{e}"
    );
    // Mid-tensor-info, late: inside dim 0 of the last tensor info.
    let name = b"blk.4.ffn_norm.weight";
    let dim0 = find(&full, name) + name.len() + 4;
    let e = parse_err(full[..dim0 + 3].to_vec());
    assert!(
        matches!(&e, GgufError::Truncated { what, .. } if what == "dim 0 of tensor `blk.4.ffn_norm.weight`"),
        "{e}"
    );
    // Mid-data: the first tensor whose bytes are missing is named.
    let e = parse_err(full[..data_start + 1000].to_vec());
    assert!(
        matches!(&e, GgufError::TensorOutOfBounds { name, .. } if name == "token_embd.weight"),
        "{e}"
    );
    let e = parse_err(full[..full.len() - 4].to_vec());
    let last = "blk.4.ffn_norm.weight";
    assert!(
        matches!(&e, GgufError::TensorOutOfBounds { name, .. } if name == last),
        "{e}"
    );

    // Sweep: every cut is a typed "not enough bytes" error.
    let cuts = (0..data_start)
        .step_by(5)
        .chain((data_start..full.len()).step_by(4099));
    for cut in cuts {
        let e = parse_err(full[..cut].to_vec());
        let ok = match e {
            GgufError::Truncated { .. } | GgufError::CountTooLarge { .. } => cut < data_start,
            GgufError::TensorOutOfBounds { .. } => cut + 32 > data_start,
            _ => false,
        };
        assert!(ok, "cut at {cut}: {e}");
    }
}

#[test]
fn patched_real_header() {
    let Some(path) = model_or_skip(STORIES) else {
        return;
    };
    let full = std::fs::read(path).unwrap();
    let mut b = full.clone();
    b[8..16].copy_from_slice(&(1u64 << 40).to_le_bytes());
    assert!(matches!(parse_err(b), GgufError::CountTooLarge { count, .. } if count == 1 << 40));
    // The ggml type of token_embd.weight (first tensor info) set to 99.
    let name = b"token_embd.weight";
    let ty_at = find(&full, name) + name.len() + 4 + 16;
    let mut b = full.clone();
    b[ty_at..ty_at + 4].copy_from_slice(&99u32.to_le_bytes());
    let e = parse_err(b);
    assert!(
        matches!(&e, GgufError::UnknownType { name, type_id: 99 } if name == "token_embd.weight"),
        "{e}"
    );
    // Its offset set to 8 (misaligned), then to just past the end.
    let mut b = full.clone();
    b[ty_at + 4..ty_at + 12].copy_from_slice(&8u64.to_le_bytes());
    assert!(matches!(
        parse_err(b),
        GgufError::Misaligned { offset: 8, .. }
    ));
    let mut b = full.clone();
    let past = (full.len() as u64).next_multiple_of(32);
    b[ty_at + 4..ty_at + 12].copy_from_slice(&past.to_le_bytes());
    assert!(matches!(parse_err(b), GgufError::TensorOutOfBounds { .. }));
}
