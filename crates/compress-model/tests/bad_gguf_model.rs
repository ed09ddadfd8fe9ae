//! Model-level errors on GGUF files that parse but do not describe a model we can run.
//! (Structural corruption — truncation, absurd counts, out-of-bounds tensors — is tested with the
//! reader in `src/gguf`.)

mod common;

use common::shared;
use compress_core::backend::BackendKind;
use compress_model::load::GgufModel;
use compress_model::{load, ModelError};

/// stories260K's bytes with the first occurrence of `from` replaced by `to` (same length).
fn patched(from: &[u8], to: &[u8]) -> Option<tempfile::NamedTempFile> {
    assert_eq!(from.len(), to.len());
    let mut bytes = std::fs::read(shared("models/stories260K.gguf")?).unwrap();
    let at = bytes
        .windows(from.len())
        .position(|w| w == from)
        .expect("pattern present");
    bytes[at..at + to.len()].copy_from_slice(to);
    let file = tempfile::NamedTempFile::new().unwrap();
    std::fs::write(file.path(), bytes).unwrap();
    Some(file)
}

#[test]
fn unknown_architecture_is_named() {
    // The value of `general.architecture` is the first "llama" string after its key.
    let Some(f) = patched(
        b"architecture\x08\x00\x00\x00\x05\x00\x00\x00\x00\x00\x00\x00llama",
        b"architecture\x08\x00\x00\x00\x05\x00\x00\x00\x00\x00\x00\x00gpt-j",
    ) else {
        return;
    };
    let err = GgufModel::open(f.path()).err().unwrap();
    assert!(
        matches!(&err, ModelError::UnknownArchitecture(a) if a == "gpt-j"),
        "{err}"
    );
}

#[test]
fn missing_tokenizer_is_reported() {
    let Some(f) = patched(b"tokenizer.ggml.model", b"tokenizer.ggml.mode_") else {
        return;
    };
    let err = load(f.path(), &BackendKind::Flex.device().unwrap())
        .err()
        .unwrap();
    assert!(matches!(err, ModelError::MissingTokenizer(_)), "{err}");
}

#[test]
fn missing_tensor_is_named() {
    let Some(f) = patched(b"blk.3.ffn_up.weight", b"blk.3.ffn_XX.weight") else {
        return;
    };
    let err = load(f.path(), &BackendKind::Flex.device().unwrap())
        .err()
        .unwrap();
    assert!(
        matches!(&err, ModelError::MissingTensor(t) if t == "blk.3.ffn_up.weight"),
        "{err}"
    );
}
