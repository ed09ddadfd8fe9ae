//! Bounds-checked parsing of the GGUF header (metadata and tensor infos).
//!
//! Every read is checked against the buffer length, and every count or length
//! prefix is checked against the bytes that remain *before* anything is
//! allocated for it, so a hostile header cannot trigger a huge allocation.

use std::collections::HashMap;

use super::error::GgufError;
use super::types::{GgmlType, TensorInfo};
use super::value::{GgufArray, GgufValue, GgufValueType};

/// Default data alignment when `general.alignment` is absent.
pub const DEFAULT_ALIGNMENT: u64 = 32;
/// Metadata key that overrides the data alignment.
pub const ALIGNMENT_KEY: &str = "general.alignment";
/// Maximum number of tensor dimensions (`GGML_MAX_DIMS`).
pub const MAX_DIMS: u32 = 4;
/// Maximum nesting depth of metadata arrays (an array of arrays has depth 2).
pub const MAX_ARRAY_DEPTH: usize = 4;

/// Minimum encoded size of one tensor info: name length (8), n_dims (4), type (4), offset (8).
const MIN_TENSOR_INFO_SIZE: u64 = 8 + 4 + 4 + 8;
/// Minimum encoded size of one metadata entry: key length (8), value type (4), 1-byte value.
const MIN_KV_SIZE: u64 = 8 + 4 + 1;

type Result<T> = std::result::Result<T, GgufError>;

/// A checked little-endian reader over a byte slice.
pub(crate) struct Cursor<'a> {
    buf: &'a [u8],
    pos: usize,
}

impl<'a> Cursor<'a> {
    /// Starts reading at the beginning of `buf`.
    pub(crate) fn new(buf: &'a [u8]) -> Self {
        Cursor { buf, pos: 0 }
    }

    /// Current byte offset.
    pub(crate) fn pos(&self) -> usize {
        self.pos
    }

    /// Bytes left after the current position.
    fn remaining(&self) -> u64 {
        (self.buf.len() - self.pos) as u64
    }

    /// Takes `n` bytes, or reports `what` as truncated.
    fn bytes(&mut self, n: usize, what: impl FnOnce() -> String) -> Result<&'a [u8]> {
        match self.buf.get(self.pos..).and_then(|rest| rest.get(..n)) {
            Some(s) => {
                self.pos += n;
                Ok(s)
            }
            None => Err(GgufError::Truncated {
                what: what(),
                offset: self.pos as u64,
            }),
        }
    }

    fn array<const N: usize>(&mut self, what: impl FnOnce() -> String) -> Result<[u8; N]> {
        let s = self.bytes(N, what)?;
        let mut a = [0u8; N];
        a.copy_from_slice(s);
        Ok(a)
    }

    pub(crate) fn u32(&mut self, what: impl FnOnce() -> String) -> Result<u32> {
        self.array(what).map(u32::from_le_bytes)
    }

    pub(crate) fn u64(&mut self, what: impl FnOnce() -> String) -> Result<u64> {
        self.array(what).map(u64::from_le_bytes)
    }

    /// Reads a u64 count of items each at least `min_size` bytes long and checks that
    /// they can fit in the rest of the buffer.
    fn count(&mut self, min_size: u64, what: impl Fn() -> String) -> Result<usize> {
        let count = self.u64(&what)?;
        check_count(count, min_size, self.remaining(), what)
    }

    /// Reads a GGUF string (u64 byte length + bytes); invalid UTF-8 is replaced.
    fn string(&mut self, what: impl Fn() -> String) -> Result<String> {
        let len = self.count(1, &what)?;
        let bytes = self.bytes(len, what)?;
        Ok(String::from_utf8_lossy(bytes).into_owned())
    }
}

/// Checks that `count` items of at least `min_size` bytes fit in `remaining` bytes.
fn check_count(
    count: u64,
    min_size: u64,
    remaining: u64,
    what: impl FnOnce() -> String,
) -> Result<usize> {
    let fits = count
        .checked_mul(min_size)
        .is_some_and(|need| need <= remaining);
    match usize::try_from(count) {
        Ok(n) if fits => Ok(n),
        _ => Err(GgufError::CountTooLarge {
            what: what(),
            count,
            remaining,
        }),
    }
}

/// Everything the header describes, with offsets validated against the file.
#[derive(Debug)]
pub(crate) struct Header {
    pub(crate) version: u32,
    pub(crate) metadata: Vec<(String, GgufValue)>,
    pub(crate) key_index: HashMap<String, usize>,
    pub(crate) tensors: Vec<TensorInfo>,
    pub(crate) tensor_index: HashMap<String, usize>,
    pub(crate) alignment: u64,
    pub(crate) data_start: u64,
}

/// Parses and validates a whole GGUF header against `buf` (the entire file).
pub(crate) fn parse_header(buf: &[u8]) -> Result<Header> {
    let mut c = Cursor::new(buf);
    let magic: [u8; 4] = c.array(|| "magic".into())?;
    if &magic != b"GGUF" {
        return Err(GgufError::BadMagic(magic));
    }
    let version = c.u32(|| "version".into())?;
    if version != 2 && version != 3 {
        return Err(GgufError::UnsupportedVersion(version));
    }
    let n_tensors = c.u64(|| "tensor count".into())?;
    let n_kv = c.u64(|| "metadata key/value count".into())?;
    let n_kv = check_count(n_kv, MIN_KV_SIZE, c.remaining(), || {
        "metadata key/value count".into()
    })?;

    let mut metadata = Vec::with_capacity(n_kv);
    let mut key_index = HashMap::with_capacity(n_kv);
    for i in 0..n_kv {
        let key = c.string(|| format!("key of metadata entry #{i}"))?;
        let type_id = c.u32(|| format!("value type of metadata key `{key}`"))?;
        let value = read_value(&mut c, type_id, &key, 0)?;
        if key_index.insert(key.clone(), metadata.len()).is_some() {
            return Err(GgufError::DuplicateKey(key));
        }
        metadata.push((key, value));
    }

    let alignment = match key_index.get(ALIGNMENT_KEY).map(|&i| &metadata[i].1) {
        None => DEFAULT_ALIGNMENT,
        Some(v) => match v.as_u64() {
            Some(a) if a.is_power_of_two() => a,
            Some(a) => return Err(GgufError::BadAlignment(a)),
            None => {
                return Err(GgufError::WrongValueType {
                    key: ALIGNMENT_KEY.into(),
                    expected: "an integer",
                    found: v.type_description(),
                })
            }
        },
    };

    // Tensor infos follow the metadata: check their count against what is left now.
    let n_tensors = check_count(n_tensors, MIN_TENSOR_INFO_SIZE, c.remaining(), || {
        "tensor count".into()
    })?;
    let mut tensors = Vec::with_capacity(n_tensors);
    let mut tensor_index = HashMap::with_capacity(n_tensors);
    for i in 0..n_tensors {
        let info = read_tensor_info(&mut c, i)?;
        if tensor_index
            .insert(info.name.clone(), tensors.len())
            .is_some()
        {
            return Err(GgufError::DuplicateTensor(info.name));
        }
        tensors.push(info);
    }

    let header_end = c.pos() as u64;
    let data_start = header_end
        .checked_next_multiple_of(alignment)
        .ok_or(GgufError::BadAlignment(alignment))?;
    let file_len = buf.len() as u64;
    for t in &tensors {
        if !t.offset.is_multiple_of(alignment) {
            return Err(GgufError::Misaligned {
                name: t.name.clone(),
                offset: t.offset,
                alignment,
            });
        }
        let end = data_start
            .checked_add(t.offset)
            .and_then(|s| s.checked_add(t.n_bytes));
        if end.is_none_or(|e| e > file_len) {
            return Err(GgufError::TensorOutOfBounds {
                name: t.name.clone(),
                offset: t.offset,
                size: t.n_bytes,
                data_start,
                file_len,
            });
        }
    }

    Ok(Header {
        version,
        metadata,
        key_index,
        tensors,
        tensor_index,
        alignment,
        data_start,
    })
}

/// Reads one tensor info and computes its element count and byte size.
fn read_tensor_info(c: &mut Cursor<'_>, index: usize) -> Result<TensorInfo> {
    let name = c.string(|| format!("name of tensor info #{index}"))?;
    let n_dims = c.u32(|| format!("number of dims of tensor `{name}`"))?;
    if n_dims > MAX_DIMS {
        return Err(GgufError::TooManyDims { name, n_dims });
    }
    let mut dims = Vec::with_capacity(n_dims as usize);
    for j in 0..n_dims {
        dims.push(c.u64(|| format!("dim {j} of tensor `{name}`"))?);
    }
    let type_id = c.u32(|| format!("type of tensor `{name}`"))?;
    let offset = c.u64(|| format!("data offset of tensor `{name}`"))?;
    let Some(ty) = GgmlType::from_id(type_id) else {
        return Err(GgufError::UnknownType { name, type_id });
    };

    // Like ggml: every dim must fit in an i64, and so must the element count and size.
    let n_elements = dims
        .iter()
        .try_fold(1u64, |acc, &d| acc.checked_mul(d))
        .filter(|&n| n <= i64::MAX as u64 && dims.iter().all(|&d| d <= i64::MAX as u64));
    let Some(n_elements) = n_elements else {
        return Err(GgufError::DimsOverflow { name, dims });
    };
    let ne0 = dims.first().copied().unwrap_or(1);
    if !ne0.is_multiple_of(ty.block_size()) {
        return Err(GgufError::ShapeMismatch {
            name,
            ty,
            ne0,
            block_size: ty.block_size(),
        });
    }
    let Some(n_bytes) = ty.bytes_for(n_elements).filter(|&b| b <= i64::MAX as u64) else {
        return Err(GgufError::DimsOverflow { name, dims });
    };
    Ok(TensorInfo {
        name,
        dims,
        ggml_type: ty,
        offset,
        n_elements,
        n_bytes,
    })
}

/// Reads one metadata value of type `type_id` for `key`.
fn read_value(c: &mut Cursor<'_>, type_id: u32, key: &str, depth: usize) -> Result<GgufValue> {
    use GgufValueType as T;
    let ty = GgufValueType::from_id(type_id).ok_or_else(|| GgufError::UnknownValueType {
        key: key.into(),
        type_id,
    })?;
    let what = || format!("value of metadata key `{key}`");
    Ok(match ty {
        T::U8 => GgufValue::U8(c.array::<1>(what)?[0]),
        T::I8 => GgufValue::I8(i8::from_le_bytes(c.array(what)?)),
        T::U16 => GgufValue::U16(u16::from_le_bytes(c.array(what)?)),
        T::I16 => GgufValue::I16(i16::from_le_bytes(c.array(what)?)),
        T::U32 => GgufValue::U32(u32::from_le_bytes(c.array(what)?)),
        T::I32 => GgufValue::I32(i32::from_le_bytes(c.array(what)?)),
        T::F32 => GgufValue::F32(f32::from_le_bytes(c.array(what)?)),
        T::Bool => GgufValue::Bool(c.array::<1>(what)?[0] != 0),
        T::String => GgufValue::String(c.string(what)?),
        T::U64 => GgufValue::U64(u64::from_le_bytes(c.array(what)?)),
        T::I64 => GgufValue::I64(i64::from_le_bytes(c.array(what)?)),
        T::F64 => GgufValue::F64(f64::from_le_bytes(c.array(what)?)),
        T::Array => GgufValue::Array(read_array(c, key, depth + 1)?),
    })
}

/// Reads an array (element type, u64 length, elements) for `key`.
fn read_array(c: &mut Cursor<'_>, key: &str, depth: usize) -> Result<GgufArray> {
    use GgufValueType as T;
    if depth > MAX_ARRAY_DEPTH {
        return Err(GgufError::NestingTooDeep {
            key: key.into(),
            limit: MAX_ARRAY_DEPTH,
        });
    }
    let elem_id = c.u32(|| format!("array element type of metadata key `{key}`"))?;
    let elem = GgufValueType::from_id(elem_id).ok_or_else(|| GgufError::UnknownValueType {
        key: key.into(),
        type_id: elem_id,
    })?;
    let what = || format!("array length of metadata key `{key}`");
    let n = c.count(elem.min_encoded_size(), what)?;
    let what = || format!("array elements of metadata key `{key}`");

    /// Decodes `n` fixed-size little-endian elements in one bounds-checked read.
    macro_rules! fixed {
        ($variant:ident, $t:ty) => {{
            const SZ: usize = std::mem::size_of::<$t>();
            let bytes = c.bytes(n * SZ, what)?;
            let v = bytes
                .chunks_exact(SZ)
                .map(|ch| {
                    let mut a = [0u8; SZ];
                    a.copy_from_slice(ch);
                    <$t>::from_le_bytes(a)
                })
                .collect();
            GgufArray::$variant(v)
        }};
    }

    Ok(match elem {
        T::U8 => GgufArray::U8(c.bytes(n, what)?.to_vec()),
        T::I8 => fixed!(I8, i8),
        T::U16 => fixed!(U16, u16),
        T::I16 => fixed!(I16, i16),
        T::U32 => fixed!(U32, u32),
        T::I32 => fixed!(I32, i32),
        T::F32 => fixed!(F32, f32),
        T::U64 => fixed!(U64, u64),
        T::I64 => fixed!(I64, i64),
        T::F64 => fixed!(F64, f64),
        T::Bool => GgufArray::Bool(c.bytes(n, what)?.iter().map(|&b| b != 0).collect()),
        T::String => {
            let mut v = Vec::with_capacity(n);
            for i in 0..n {
                v.push(c.string(|| format!("string #{i} of metadata key `{key}`"))?);
            }
            GgufArray::String(v)
        }
        T::Array => {
            let mut v = Vec::with_capacity(n);
            for _ in 0..n {
                v.push(read_array(c, key, depth + 1)?);
            }
            GgufArray::Array(v)
        }
    })
}
