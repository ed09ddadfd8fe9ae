//! Which format a model path holds, decided from what is there — a directory, or a file's
//! first bytes and header structure — never by trying one reader after another, so an error
//! names the format found and what is wrong with it.
//!
//! - a directory: a Hugging Face checkpoint (`config.json`, safetensors, `tokenizer.json`);
//! - `GGUF` magic: a GGUF file;
//! - an 8-byte little-endian header length followed by `{`: safetensors — a compress container
//!   when its `__metadata__` carries the container header, otherwise a plain safetensors file
//!   (refused: a checkpoint is loaded as its directory, which has the config and tokenizer);
//! - anything else: refused, showing the first bytes.
//!
//! Only regular files are opened ([`compress_core::input::open_regular`]): a FIFO, device or
//! socket is refused before anything is read.

use std::io::Read;
use std::path::Path;

use memmap2::Mmap;
use safetensors::SafeTensors;

use crate::error::ModelError;

/// The format of a model path.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ModelFormat {
    /// A Hugging Face checkpoint directory.
    HfDirectory,
    /// A GGUF file.
    Gguf,
    /// A compress container (safetensors with the container header).
    Container,
}

/// The format of `path` (see the [module docs](self)), or an error naming what the path holds
/// and why it cannot be loaded.
pub fn detect_format(path: &Path) -> Result<ModelFormat, ModelError> {
    let io = |source| ModelError::Io {
        path: path.to_path_buf(),
        source,
    };
    if std::fs::metadata(path).map_err(io)?.is_dir() {
        return Ok(ModelFormat::HfDirectory);
    }
    let mut file = compress_core::input::open_regular(path).map_err(io)?;
    let len = file.metadata().map_err(io)?.len();
    let mut head = [0u8; 9];
    let n = read_prefix(&mut file, &mut head).map_err(io)?;
    let head = &head[..n];
    if head.starts_with(b"GGUF") {
        return Ok(ModelFormat::Gguf);
    }
    let bad = |message: String| ModelError::Safetensors {
        path: path.to_path_buf(),
        message,
    };
    if n == 9 && head[8] == b'{' {
        let declared = u64::from_le_bytes(head[..8].try_into().expect("8 bytes"));
        if declared.checked_add(8).is_none_or(|end| end > len) {
            return Err(bad(format!(
                "a safetensors file (a compress container or a checkpoint shard) cut short: its \
                 header declares {declared} bytes, the file has {len}"
            )));
        }
        // SAFETY: read-only map of a regular file, only parsed here.
        let map = unsafe { Mmap::map(&file) }.map_err(io)?;
        let (_, meta) = SafeTensors::read_metadata(&map).map_err(|e| {
            bad(format!(
                "a damaged safetensors file (a compress container or a checkpoint shard): {e}"
            ))
        })?;
        let is_container = meta
            .metadata()
            .as_ref()
            .is_some_and(|m| m.contains_key(crate::container::METADATA_KEY));
        if is_container {
            return Ok(ModelFormat::Container);
        }
        return Err(bad(
            "a plain safetensors file, not a compress container: load a Hugging Face checkpoint \
             as its directory (config.json, tokenizer.json and the safetensors files)"
                .into(),
        ));
    }
    let shown: Vec<String> = head.iter().take(8).map(|b| format!("{b:02x}")).collect();
    Err(ModelError::InvalidInput(format!(
        "{}: not a model file this crate reads ({} bytes, starting {}): expected a GGUF file \
         (magic `GGUF`), a compress container (safetensors) or a Hugging Face checkpoint \
         directory",
        path.display(),
        len,
        if shown.is_empty() {
            "empty".to_string()
        } else {
            shown.join(" ")
        }
    )))
}

/// Reads up to `buf.len()` bytes from the start of `file`; the count read.
fn read_prefix(file: &mut std::fs::File, buf: &mut [u8]) -> std::io::Result<usize> {
    let mut n = 0;
    while n < buf.len() {
        match file.read(&mut buf[n..])? {
            0 => break,
            k => n += k,
        }
    }
    Ok(n)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn formats_are_told_apart_by_their_bytes() {
        let dir = tempfile::tempdir().unwrap();
        assert_eq!(detect_format(dir.path()).unwrap(), ModelFormat::HfDirectory);
        let write = |name: &str, bytes: &[u8]| {
            let p = dir.path().join(name);
            std::fs::write(&p, bytes).unwrap();
            p
        };
        let gguf = write("a.gguf", b"GGUF\x03\0\0\0");
        assert_eq!(detect_format(&gguf).unwrap(), ModelFormat::Gguf);
        let e = detect_format(&write("e", b"")).unwrap_err().to_string();
        assert!(e.contains("empty"), "{e}");
        let e = detect_format(&write("t", b"hello world"))
            .unwrap_err()
            .to_string();
        assert!(e.contains("68 65 6c 6c"), "{e}");
        // A safetensors header longer than the file.
        let mut cut = 1000u64.to_le_bytes().to_vec();
        cut.extend_from_slice(b"{\"a\":");
        let e = detect_format(&write("c", &cut)).unwrap_err().to_string();
        assert!(
            e.contains("cut short") && e.contains("declares 1000"),
            "{e}"
        );
        // A plain safetensors file.
        let header = br#"{"w":{"dtype":"F32","shape":[1],"data_offsets":[0,4]}}"#;
        let mut plain = (header.len() as u64).to_le_bytes().to_vec();
        plain.extend_from_slice(header);
        plain.extend_from_slice(&1f32.to_le_bytes());
        let e = detect_format(&write("p", &plain)).unwrap_err().to_string();
        assert!(e.contains("plain safetensors"), "{e}");
        // Damaged: offsets that do not tile the data.
        let header = br#"{"w":{"dtype":"F32","shape":[2],"data_offsets":[0,8]}}"#;
        let mut bad = (header.len() as u64).to_le_bytes().to_vec();
        bad.extend_from_slice(header);
        bad.extend_from_slice(&1f32.to_le_bytes());
        let e = detect_format(&write("d", &bad)).unwrap_err().to_string();
        assert!(e.contains("damaged safetensors"), "{e}");
    }
}
