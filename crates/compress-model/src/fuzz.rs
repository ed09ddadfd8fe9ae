//! Entry points for fuzzing the readers of untrusted bytes, shared by the coverage-guided fuzz
//! targets (`fuzz/`, built with `cargo afl`) and by the corpus replay test that runs in CI
//! (`tests/fuzz_corpus.rs`). Each takes arbitrary bytes, runs them through one reader the way a
//! load does, and says whether they were accepted; an error is a correct outcome, a panic, hang
//! or unbounded allocation is a bug.

use std::path::Path;

use compress_core::backend::BackendKind;

/// Inputs larger than this are skipped (the fuzzer's inputs are small; the readers' size checks
/// are tested separately).
pub const MAX_INPUT: usize = 1 << 20;

/// A GGUF image: header and metadata, the model config, the tokenizer built from its
/// vocabulary, and the model built lazily on the CPU backend (every tensor's shape and type
/// checked against the config).
pub fn gguf(data: &[u8]) -> bool {
    if data.len() > MAX_INPUT {
        return false;
    }
    let Ok(device) = BackendKind::Flex.device() else {
        return false;
    };
    crate::load::load_gguf_bytes(data.to_vec(), &device).is_ok()
}

/// A compress container (safetensors with the container header), read completely.
pub fn container(data: &[u8]) -> bool {
    if data.len() > MAX_INPUT {
        return false;
    }
    let Ok(device) = BackendKind::Flex.device() else {
        return false;
    };
    crate::container::read::read_container_bytes(Path::new("<fuzz input>"), data, &device).is_ok()
}

/// A Hugging Face `config.json`: parsed, its family found and its config validated.
pub fn hf_config(data: &[u8]) -> bool {
    let Ok(text) = std::str::from_utf8(data) else {
        return false;
    };
    let Ok(hf) = crate::family::HfConfigJson::parse(text) else {
        return false;
    };
    let Ok(family) = crate::family::by_hf_class(hf.class()) else {
        return false;
    };
    hf.to_config(family).is_ok_and(|c| c.validate().is_ok())
}

/// A `tokenizer.json`: built, then used to encode and decode a short text.
pub fn tokenizer_json(data: &[u8]) -> bool {
    if data.len() > MAX_INPUT {
        return false;
    }
    let Ok(text) = std::str::from_utf8(data) else {
        return false;
    };
    let Ok(t) = crate::LlmTokenizer::from_json_str(text, Default::default()) else {
        return false;
    };
    let Ok(ids) = t.encode("Hello wörld 123!", false) else {
        return false;
    };
    t.decode(&ids).is_ok()
}
