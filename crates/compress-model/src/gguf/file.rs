//! [`GgufFile`]: an opened, validated GGUF file.

use std::collections::HashMap;
use std::ops::Deref;
use std::path::Path;

use super::dequant;
use super::error::GgufError;
use super::reader::parse_header;
use super::types::TensorInfo;
use super::value::GgufValue;

type Result<T> = std::result::Result<T, GgufError>;

/// The bytes of a GGUF file: memory-mapped or owned.
#[derive(Debug)]
pub enum GgufBytes {
    /// A read-only memory map of a file on disk.
    Mmap(memmap2::Mmap),
    /// An in-memory buffer.
    Owned(Vec<u8>),
}

impl Deref for GgufBytes {
    type Target = [u8];

    fn deref(&self) -> &[u8] {
        match self {
            GgufBytes::Mmap(m) => m,
            GgufBytes::Owned(v) => v,
        }
    }
}

/// A parsed GGUF file (format versions 2 and 3, little-endian).
///
/// The header is fully validated on construction: every tensor's data lies inside
/// the file, is aligned, and has a known type whose block size divides `ne[0]`.
#[derive(Debug)]
pub struct GgufFile {
    bytes: GgufBytes,
    version: u32,
    metadata: Vec<(String, GgufValue)>,
    key_index: HashMap<String, usize>,
    tensors: Vec<TensorInfo>,
    tensor_index: HashMap<String, usize>,
    alignment: u64,
    data_start: u64,
}

impl GgufFile {
    /// Memory-maps and parses the file at `path`.
    ///
    /// The map is read-only; as with any memory map, the file must not be modified
    /// by another process while the `GgufFile` is alive.
    pub fn open(path: impl AsRef<Path>) -> Result<GgufFile> {
        let path = path.as_ref();
        let io_err = |source| GgufError::Io {
            path: path.to_path_buf(),
            source,
        };
        let file = compress_core::input::open_regular(path).map_err(io_err)?;
        // SAFETY: the map is read-only and only ever read through bounds-checked
        // slices; the documented contract is that the file is not modified while mapped.
        let map = unsafe { memmap2::Mmap::map(&file) }.map_err(io_err)?;
        Self::from_gguf_bytes(GgufBytes::Mmap(map))
    }

    /// Parses an in-memory GGUF image.
    pub fn from_bytes(bytes: Vec<u8>) -> Result<GgufFile> {
        Self::from_gguf_bytes(GgufBytes::Owned(bytes))
    }

    /// Parses already-obtained file bytes.
    pub fn from_gguf_bytes(bytes: GgufBytes) -> Result<GgufFile> {
        let h = parse_header(&bytes)?;
        Ok(GgufFile {
            bytes,
            version: h.version,
            metadata: h.metadata,
            key_index: h.key_index,
            tensors: h.tensors,
            tensor_index: h.tensor_index,
            alignment: h.alignment,
            data_start: h.data_start,
        })
    }

    /// The GGUF format version (2 or 3).
    pub fn version(&self) -> u32 {
        self.version
    }

    /// The data alignment (`general.alignment`, default 32).
    pub fn alignment(&self) -> u64 {
        self.alignment
    }

    /// Absolute file offset of the tensor data section.
    pub fn data_start(&self) -> u64 {
        self.data_start
    }

    /// The whole file's bytes.
    pub fn as_bytes(&self) -> &[u8] {
        &self.bytes
    }

    /// All metadata entries in file order.
    pub fn metadata(&self) -> &[(String, GgufValue)] {
        &self.metadata
    }

    /// The value stored under `key`, if any.
    pub fn get(&self, key: &str) -> Option<&GgufValue> {
        self.key_index.get(key).map(|&i| &self.metadata[i].1)
    }

    /// Looks `key` up and converts it with `conv`, naming `expected` on a type mismatch.
    fn typed<'a, T>(
        &'a self,
        key: &str,
        expected: &'static str,
        conv: impl FnOnce(&'a GgufValue) -> Option<T>,
    ) -> Result<T> {
        let v = self
            .get(key)
            .ok_or_else(|| GgufError::MissingKey(key.into()))?;
        conv(v).ok_or_else(|| GgufError::WrongValueType {
            key: key.into(),
            expected,
            found: match v.as_i128_display() {
                Some(n) => format!("{} {n} (out of range)", v.type_description()),
                None => v.type_description(),
            },
        })
    }

    /// An integer of any width under `key` that fits in a `u32`.
    pub fn get_u32(&self, key: &str) -> Result<u32> {
        self.typed(key, "an integer fitting in u32", GgufValue::as_u32)
    }

    /// An integer of any width under `key` that fits in an `i32`.
    pub fn get_i32(&self, key: &str) -> Result<i32> {
        self.typed(key, "an integer fitting in i32", GgufValue::as_i32)
    }

    /// An integer of any width under `key` that fits in a `u64`.
    pub fn get_u64(&self, key: &str) -> Result<u64> {
        self.typed(key, "an integer fitting in u64", GgufValue::as_u64)
    }

    /// An integer of any width under `key` that fits in an `i64`.
    pub fn get_i64(&self, key: &str) -> Result<i64> {
        self.typed(key, "an integer fitting in i64", GgufValue::as_i64)
    }

    /// An integer of any width under `key` that fits in a `usize`.
    pub fn get_usize(&self, key: &str) -> Result<usize> {
        self.typed(key, "an integer fitting in usize", GgufValue::as_usize)
    }

    /// A float under `key` (`float32`, or `float64` rounded to `f32`).
    pub fn get_f32(&self, key: &str) -> Result<f32> {
        self.typed(key, "a float", GgufValue::as_f32)
    }

    /// A float under `key` as `f64`.
    pub fn get_f64(&self, key: &str) -> Result<f64> {
        self.typed(key, "a float", GgufValue::as_f64)
    }

    /// A bool under `key`.
    pub fn get_bool(&self, key: &str) -> Result<bool> {
        self.typed(key, "bool", GgufValue::as_bool)
    }

    /// A string under `key`.
    pub fn get_str(&self, key: &str) -> Result<&str> {
        self.typed(key, "string", GgufValue::as_str)
    }

    /// An array of strings under `key`.
    pub fn get_str_array(&self, key: &str) -> Result<&[String]> {
        self.typed(key, "array<string>", GgufValue::as_str_array)
    }

    /// An array of `float32` under `key`.
    pub fn get_f32_array(&self, key: &str) -> Result<&[f32]> {
        self.typed(key, "array<f32>", GgufValue::as_f32_array)
    }

    /// An array of `int32` under `key`.
    pub fn get_i32_array(&self, key: &str) -> Result<&[i32]> {
        self.typed(key, "array<i32>", GgufValue::as_i32_array)
    }

    /// An array of integers of any width under `key`, widened to `i64`.
    pub fn get_int_array(&self, key: &str) -> Result<Vec<i64>> {
        self.typed(key, "an integer array fitting in i64", |v| {
            v.as_array().and_then(|a| a.to_i64_vec())
        })
    }

    /// `general.architecture`, e.g. `"llama"`.
    pub fn architecture(&self) -> Result<&str> {
        self.get_str("general.architecture")
    }

    /// All tensor infos in file order.
    pub fn tensors(&self) -> &[TensorInfo] {
        &self.tensors
    }

    /// The tensor named `name`, if any.
    pub fn tensor(&self, name: &str) -> Option<&TensorInfo> {
        self.tensor_index.get(name).map(|&i| &self.tensors[i])
    }

    /// The raw data bytes of `info`.
    ///
    /// For a `TensorInfo` obtained from this file the slice is exactly
    /// `info.n_bytes()` long; for one describing data outside this file it is empty.
    pub fn tensor_bytes(&self, info: &TensorInfo) -> &[u8] {
        let range = self
            .data_start
            .checked_add(info.offset())
            .and_then(|s| Some((s, s.checked_add(info.n_bytes())?)))
            .and_then(|(s, e)| Some(usize::try_from(s).ok()?..usize::try_from(e).ok()?));
        range.and_then(|r| self.bytes.get(r)).unwrap_or(&[])
    }

    /// Tells the kernel that the mapped pages wholly inside `info`'s bytes are not needed any
    /// more (`madvise(MADV_DONTNEED)`), so a tensor already copied out stops counting towards
    /// the process's resident memory; a later read faults the same bytes back in from the file.
    /// Advisory: a no-op for in-memory files and on platforms without `madvise`, and errors are
    /// ignored.
    pub fn release_tensor_pages(&self, info: &TensorInfo) {
        if let GgufBytes::Mmap(map) = &self.bytes {
            crate::pages::release(map, self.tensor_bytes(info));
        }
    }

    /// Dequantizes the tensor named `name` to f32 values in ggml order
    /// (row-major with `ne[0]` innermost).
    pub fn dequantize(&self, name: &str) -> Result<Vec<f32>> {
        let info = self
            .tensor(name)
            .ok_or_else(|| GgufError::TensorNotFound(name.into()))?;
        self.dequantize_tensor(info)
    }

    /// Dequantizes the tensor described by `info` (see [`GgufFile::dequantize`]).
    pub fn dequantize_tensor(&self, info: &TensorInfo) -> Result<Vec<f32>> {
        let ty = info.ggml_type();
        if !ty.can_dequantize() {
            return Err(GgufError::UnsupportedType {
                name: info.name().into(),
                ty,
            });
        }
        let bytes = self.tensor_bytes(info);
        let n = usize::try_from(info.n_elements()).map_err(|_| GgufError::TooLargeForPlatform {
            name: info.name().into(),
            n_elements: info.n_elements(),
        })?;
        // Check sizes before allocating (an info from another file has no bytes here).
        if ty.bytes_for(info.n_elements()) != Some(bytes.len() as u64) {
            return Err(GgufError::BufferSize {
                ty,
                bytes: bytes.len(),
                elements: n,
                block_size: ty.block_size(),
                type_size: ty.type_size(),
            });
        }
        let mut out = vec![0f32; n];
        dequant::dequantize_into(ty, bytes, &mut out)?;
        Ok(out)
    }
}

// A parsed file can be shared across threads (the map is read-only).
const _: fn() = || {
    fn send_sync<T: Send + Sync>() {}
    send_sync::<GgufFile>();
};

impl GgufValue {
    /// The integer value as text, for "out of range" error messages.
    fn as_i128_display(&self) -> Option<String> {
        self.as_i64()
            .map(|x| x.to_string())
            .or_else(|| self.as_u64().map(|x| x.to_string()))
    }
}
