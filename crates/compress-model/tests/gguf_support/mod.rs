//! Shared test helpers: a tiny GGUF writer and paths to real model files.
#![allow(dead_code)]

use std::path::{Path, PathBuf};

use compress_model::gguf::{GgufArray, GgufValue};

/// The small all-F32 llama model of the shared test assets.
pub const STORIES: &str = concat!(
    env!("CARGO_MANIFEST_DIR"),
    "/../../../shared/models/stories260K.gguf"
);
/// A quantized model (Q4_1 linears, Q8_0 embedding) fetched by `scripts/fetch-models`.
pub const SMOLLM2: &str = concat!(
    env!("CARGO_MANIFEST_DIR"),
    "/../../.cache/models/SmolLM2-135M-Instruct.Q4_1.gguf"
);

/// `Some(path)` if the file exists, else prints why the caller skips and gives `None`.
/// Under `CI=true` a missing file is a failure, never a skip.
pub fn model_or_skip(path: &str) -> Option<PathBuf> {
    let p = Path::new(path);
    if p.is_file() {
        Some(p.to_path_buf())
    } else if std::env::var("CI").is_ok_and(|v| v == "true") {
        panic!("model file {path} is missing under CI=true");
    } else {
        eprintln!("SKIPPED: model file {path} is not present");
        None
    }
}

/// Path of a file under `tests/fixtures`.
pub fn fixture(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures")
        .join(name)
}

/// Little-endian byte writer with GGUF encodings.
#[derive(Default)]
pub struct Writer {
    /// Bytes written so far.
    pub buf: Vec<u8>,
}

impl Writer {
    pub fn new() -> Self {
        Self::default()
    }
    pub fn u8(&mut self, v: u8) -> &mut Self {
        self.buf.push(v);
        self
    }
    pub fn u32(&mut self, v: u32) -> &mut Self {
        self.buf.extend_from_slice(&v.to_le_bytes());
        self
    }
    pub fn u64(&mut self, v: u64) -> &mut Self {
        self.buf.extend_from_slice(&v.to_le_bytes());
        self
    }
    pub fn bytes(&mut self, b: &[u8]) -> &mut Self {
        self.buf.extend_from_slice(b);
        self
    }
    /// GGUF string: u64 length + bytes.
    pub fn str(&mut self, s: &str) -> &mut Self {
        self.u64(s.len() as u64).bytes(s.as_bytes())
    }
    /// Magic, version, tensor count, kv count.
    pub fn header(&mut self, version: u32, n_tensors: u64, n_kv: u64) -> &mut Self {
        self.bytes(b"GGUF").u32(version).u64(n_tensors).u64(n_kv)
    }
    /// A metadata entry: key, value type, value.
    pub fn kv(&mut self, key: &str, v: &GgufValue) -> &mut Self {
        self.str(key).u32(value_type_id(v));
        self.value(v)
    }
    /// A value's payload (no type tag), encoded by the library's writer.
    pub fn value(&mut self, v: &GgufValue) -> &mut Self {
        compress_model::gguf::writer::encode_value(&mut self.buf, v);
        self
    }
    /// An array payload: element type, length, elements.
    pub fn array(&mut self, a: &GgufArray) -> &mut Self {
        compress_model::gguf::writer::encode_array(&mut self.buf, a);
        self
    }
    /// A tensor info: name, n_dims, dims, type id, offset.
    pub fn tensor_info(
        &mut self,
        name: &str,
        dims: &[u64],
        type_id: u32,
        offset: u64,
    ) -> &mut Self {
        self.str(name).u32(dims.len() as u32);
        for &d in dims {
            self.u64(d);
        }
        self.u32(type_id).u64(offset)
    }
    /// Zero-pads to a multiple of `align`.
    pub fn pad_to(&mut self, align: usize) -> &mut Self {
        while !self.buf.len().is_multiple_of(align) {
            self.buf.push(0);
        }
        self
    }
}

/// The GGUF type id of a value.
pub fn value_type_id(v: &GgufValue) -> u32 {
    v.value_type().id()
}

/// One tensor to place in a built file.
pub struct TensorSpec {
    pub name: String,
    pub dims: Vec<u64>,
    pub type_id: u32,
    pub data: Vec<u8>,
}

/// Builds a GGUF v3 image, tensors laid out in order with 32-byte alignment, or
/// with `general.alignment` from `kvs` when that is a sane power of two.
pub fn build_gguf(kvs: &[(&str, GgufValue)], tensors: &[TensorSpec]) -> Vec<u8> {
    let align = kvs
        .iter()
        .find(|(k, _)| *k == "general.alignment")
        .and_then(|(_, v)| v.as_u64())
        .filter(|a| a.is_power_of_two() && *a <= 4096)
        .unwrap_or(32) as usize;
    let mut w = Writer::new();
    w.header(3, tensors.len() as u64, kvs.len() as u64);
    for (k, v) in kvs {
        w.kv(k, v);
    }
    let mut offset = 0u64;
    for t in tensors {
        w.tensor_info(&t.name, &t.dims, t.type_id, offset);
        offset += (t.data.len() as u64).next_multiple_of(align as u64);
    }
    w.pad_to(align);
    for t in tensors {
        w.bytes(&t.data).pad_to(align);
    }
    w.buf
}

/// Decodes a lowercase hex string.
pub fn from_hex(s: &str) -> Vec<u8> {
    (0..s.len() / 2)
        .map(|i| u8::from_str_radix(&s[2 * i..2 * i + 2], 16).expect("hex"))
        .collect()
}
