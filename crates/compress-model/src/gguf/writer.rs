//! Writing GGUF v3 files: metadata, tensor infos, aligned tensor data.
//!
//! Layout (ggml's `gguf.md`): magic `GGUF`, version 3, tensor count, metadata count (u64 each),
//! the metadata entries (key string, value type, value), the tensor infos (name, dimension
//! count, dimensions innermost first, type id, offset into the data section), padding to the
//! alignment, then every tensor's bytes, each starting at a multiple of the alignment.
//! Everything is little-endian; strings are a u64 length followed by UTF-8 bytes.
//!
//! [`GgufWriter`] checks what a reader would reject — duplicate keys or names, data whose
//! length does not match the type and shape, rows that are not whole blocks — before a byte
//! is written, and writes atomically ([`crate::save::write_atomic`]).
//!
//! ```
//! use compress_model::gguf::{GgmlType, GgufFile, GgufValue, GgufWriter};
//! # fn main() -> Result<(), compress_model::ModelError> {
//! let mut w = GgufWriter::new();
//! w.set("general.architecture", GgufValue::String("llama".into()));
//! let values: Vec<u8> = [1.0f32, 2.0, 3.0, 4.0, 5.0, 6.0].iter().flat_map(|v| v.to_le_bytes()).collect();
//! w.add_tensor("t", &[2, 3], GgmlType::F32, values)?; // shape outermost first: 2 rows of 3
//! let file = GgufFile::from_bytes(w.to_bytes())?;
//! assert_eq!(file.dequantize("t")?, vec![1.0, 2.0, 3.0, 4.0, 5.0, 6.0]);
//! # Ok(()) }
//! ```

use std::io::Write;
use std::path::Path;

use super::reader::{ALIGNMENT_KEY, DEFAULT_ALIGNMENT};
use super::types::GgmlType;
use super::value::{GgufArray, GgufValue};
use crate::error::ModelError;

/// Appends the payload of `v` (no type tag) in GGUF encoding.
pub fn encode_value(buf: &mut Vec<u8>, v: &GgufValue) {
    use GgufValue as V;
    match v {
        V::U8(x) => buf.push(*x),
        V::I8(x) => buf.extend_from_slice(&x.to_le_bytes()),
        V::U16(x) => buf.extend_from_slice(&x.to_le_bytes()),
        V::I16(x) => buf.extend_from_slice(&x.to_le_bytes()),
        V::U32(x) => buf.extend_from_slice(&x.to_le_bytes()),
        V::I32(x) => buf.extend_from_slice(&x.to_le_bytes()),
        V::F32(x) => buf.extend_from_slice(&x.to_le_bytes()),
        V::Bool(x) => buf.push(*x as u8),
        V::String(s) => encode_str(buf, s),
        V::U64(x) => buf.extend_from_slice(&x.to_le_bytes()),
        V::I64(x) => buf.extend_from_slice(&x.to_le_bytes()),
        V::F64(x) => buf.extend_from_slice(&x.to_le_bytes()),
        V::Array(a) => encode_array(buf, a),
    }
}

/// Appends a GGUF string: u64 byte length, then the bytes.
pub fn encode_str(buf: &mut Vec<u8>, s: &str) {
    buf.extend_from_slice(&(s.len() as u64).to_le_bytes());
    buf.extend_from_slice(s.as_bytes());
}

/// Appends an array payload: element type id, u64 length, the elements.
pub fn encode_array(buf: &mut Vec<u8>, a: &GgufArray) {
    use GgufArray as A;
    buf.extend_from_slice(&a.element_type().id().to_le_bytes());
    buf.extend_from_slice(&(a.len() as u64).to_le_bytes());
    macro_rules! le {
        ($v:expr) => {
            $v.iter()
                .for_each(|x| buf.extend_from_slice(&x.to_le_bytes()))
        };
    }
    match a {
        A::U8(v) => buf.extend_from_slice(v),
        A::I8(v) => le!(v),
        A::U16(v) => le!(v),
        A::I16(v) => le!(v),
        A::U32(v) => le!(v),
        A::I32(v) => le!(v),
        A::F32(v) => le!(v),
        A::U64(v) => le!(v),
        A::I64(v) => le!(v),
        A::F64(v) => le!(v),
        A::Bool(v) => v.iter().for_each(|&x| buf.push(x as u8)),
        A::String(v) => v.iter().for_each(|s| encode_str(buf, s)),
        A::Array(v) => v.iter().for_each(|x| encode_array(buf, x)),
    }
}

struct PendingTensor {
    name: String,
    /// ggml order: innermost first.
    dims: Vec<u64>,
    ty: GgmlType,
    data: Vec<u8>,
}

/// A GGUF file being assembled in memory; see the [module docs](self).
pub struct GgufWriter {
    metadata: Vec<(String, GgufValue)>,
    tensors: Vec<PendingTensor>,
}

impl Default for GgufWriter {
    fn default() -> Self {
        Self::new()
    }
}

impl GgufWriter {
    /// An empty file (alignment 32 unless `general.alignment` is set).
    pub fn new() -> Self {
        Self {
            metadata: Vec::new(),
            tensors: Vec::new(),
        }
    }

    /// Sets a metadata key, replacing any earlier value (keys keep their first position).
    pub fn set(&mut self, key: &str, value: GgufValue) {
        match self.metadata.iter_mut().find(|(k, _)| k == key) {
            Some(entry) => entry.1 = value,
            None => self.metadata.push((key.to_string(), value)),
        }
    }

    /// The metadata set so far, in file order.
    pub fn metadata(&self) -> &[(String, GgufValue)] {
        &self.metadata
    }

    /// Adds a tensor: `shape` outermost first (a linear weight is `[out, in]`), `data` already
    /// encoded in `ty`. Fails, naming the tensor, on a duplicate name, a row that is not a whole
    /// number of `ty`'s blocks, or a data length that differs from what `ty` and `shape` imply.
    pub fn add_tensor(
        &mut self,
        name: &str,
        shape: &[usize],
        ty: GgmlType,
        data: Vec<u8>,
    ) -> Result<(), ModelError> {
        let bad = |msg: String| {
            Err(ModelError::InvalidInput(format!(
                "GGUF tensor `{name}`: {msg}"
            )))
        };
        if self.tensors.iter().any(|t| t.name == name) {
            return bad("added twice".into());
        }
        if shape.is_empty() || shape.len() > 4 {
            return bad(format!("{} dimensions (GGUF holds 1 to 4)", shape.len()));
        }
        let dims: Vec<u64> = shape.iter().rev().map(|&d| d as u64).collect();
        if !dims[0].is_multiple_of(ty.block_size()) {
            return bad(format!(
                "rows of {} elements are not whole {ty} blocks of {}",
                dims[0],
                ty.block_size()
            ));
        }
        let n: u64 = dims.iter().product();
        match ty.bytes_for(n) {
            Some(bytes) if bytes == data.len() as u64 => {}
            expected => {
                return bad(format!(
                    "{} data bytes, {ty} of shape {shape:?} needs {expected:?}",
                    data.len()
                ))
            }
        }
        self.tensors.push(PendingTensor {
            name: name.to_string(),
            dims,
            ty,
            data,
        });
        Ok(())
    }

    fn alignment(&self) -> u64 {
        self.metadata
            .iter()
            .find(|(k, _)| k == ALIGNMENT_KEY)
            .and_then(|(_, v)| v.as_u64())
            .filter(|a| a.is_power_of_two())
            .unwrap_or(DEFAULT_ALIGNMENT)
    }

    /// The header: everything before the data section, padded to the alignment.
    fn header(&self) -> Vec<u8> {
        let align = self.alignment();
        let mut buf = Vec::new();
        buf.extend_from_slice(b"GGUF");
        buf.extend_from_slice(&3u32.to_le_bytes());
        buf.extend_from_slice(&(self.tensors.len() as u64).to_le_bytes());
        buf.extend_from_slice(&(self.metadata.len() as u64).to_le_bytes());
        for (k, v) in &self.metadata {
            encode_str(&mut buf, k);
            buf.extend_from_slice(&v.value_type().id().to_le_bytes());
            encode_value(&mut buf, v);
        }
        let mut offset = 0u64;
        for t in &self.tensors {
            encode_str(&mut buf, &t.name);
            buf.extend_from_slice(&(t.dims.len() as u32).to_le_bytes());
            t.dims
                .iter()
                .for_each(|d| buf.extend_from_slice(&d.to_le_bytes()));
            buf.extend_from_slice(&t.ty.id().to_le_bytes());
            buf.extend_from_slice(&offset.to_le_bytes());
            offset += (t.data.len() as u64).next_multiple_of(align);
        }
        buf.resize((buf.len() as u64).next_multiple_of(align) as usize, 0);
        buf
    }

    /// Writes the file to `out`.
    pub fn write_to(&self, out: &mut impl Write) -> std::io::Result<()> {
        let align = self.alignment() as usize;
        out.write_all(&self.header())?;
        let zeros = vec![0u8; align];
        for t in &self.tensors {
            out.write_all(&t.data)?;
            out.write_all(&zeros[..t.data.len().next_multiple_of(align) - t.data.len()])?;
        }
        out.flush()
    }

    /// The whole file in memory.
    pub fn to_bytes(&self) -> Vec<u8> {
        let mut buf = Vec::new();
        self.write_to(&mut buf)
            .expect("writing to a Vec cannot fail");
        buf
    }

    /// Writes the file to `path` atomically (a temporary file renamed into place).
    pub fn write(&self, path: &Path) -> Result<(), ModelError> {
        crate::save::write_atomic(path, |tmp| {
            let io = |source| ModelError::Io {
                path: tmp.to_path_buf(),
                source,
            };
            let mut f = std::io::BufWriter::new(std::fs::File::create(tmp).map_err(io)?);
            self.write_to(&mut f).map_err(io)
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::gguf::GgufFile;

    #[test]
    fn metadata_and_tensors_read_back() {
        let mut w = GgufWriter::new();
        w.set("general.alignment", GgufValue::U32(64));
        w.set("a.u32", GgufValue::U32(7));
        w.set(
            "a.strs",
            GgufValue::Array(GgufArray::String(vec!["x".into(), "yz".into()])),
        );
        w.set("a.f32s", GgufValue::Array(GgufArray::F32(vec![0.5, -1.25])));
        w.set("a.u32", GgufValue::U32(9)); // replaces, keeps position
        let f16: Vec<u8> = [1.5f32, -2.0, 0.25]
            .iter()
            .flat_map(|&v| half::f16::from_f32(v).to_le_bytes())
            .collect();
        w.add_tensor("h", &[3], GgmlType::F16, f16).unwrap();
        w.add_tensor("f", &[1, 2], GgmlType::F32, vec![0; 8])
            .unwrap();
        let file = GgufFile::from_bytes(w.to_bytes()).unwrap();
        assert_eq!(file.alignment(), 64);
        assert_eq!(file.get_u32("a.u32").unwrap(), 9);
        assert_eq!(file.metadata()[1].0, "a.u32");
        assert_eq!(file.get_str_array("a.strs").unwrap(), ["x", "yz"]);
        assert_eq!(file.get_f32_array("a.f32s").unwrap(), [0.5, -1.25]);
        assert_eq!(file.dequantize("h").unwrap(), vec![1.5, -2.0, 0.25]);
        assert_eq!(file.tensor("f").unwrap().offset() % 64, 0);
        assert_eq!(file.tensor("f").unwrap().shape_row_major(), vec![1, 2]);
    }

    #[test]
    fn inconsistent_tensors_are_rejected_with_their_name() {
        let mut w = GgufWriter::new();
        let e = w
            .add_tensor("q", &[2, 16], GgmlType::Q4_0, vec![0; 36])
            .unwrap_err();
        assert!(
            e.to_string().contains("`q`") && e.to_string().contains("blocks"),
            "{e}"
        );
        let e = w
            .add_tensor("f", &[2, 2], GgmlType::F32, vec![0; 15])
            .unwrap_err();
        assert!(e.to_string().contains("15 data bytes"), "{e}");
        w.add_tensor("g", &[2], GgmlType::F32, vec![0; 8]).unwrap();
        let e = w
            .add_tensor("g", &[2], GgmlType::F32, vec![0; 8])
            .unwrap_err();
        assert!(e.to_string().contains("twice"), "{e}");
    }
}
