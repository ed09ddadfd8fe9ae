//! Model loaders: GGUF files and Hugging Face checkpoint directories.

mod compressed;
mod detect;
mod gguf;
mod hf;

pub use detect::{detect_format, ModelFormat};
pub use gguf::GgufModel;
pub use hf::HfModel;

use std::path::Path;
use std::sync::Arc;

use burn::tensor::Device;

use crate::error::ModelError;
use crate::llama::LlamaModel;
use crate::tokenizer::LlmTokenizer;
use crate::weights::WeightSource;

/// A model ready to run: weights on a device plus its tokenizer.
pub struct LoadedModel {
    /// The decoder.
    pub model: LlamaModel,
    /// The tokenizer that came with it.
    pub tokenizer: LlmTokenizer,
}

/// Loads a model onto `device` from a GGUF file, a `compress` container
/// ([`crate::container`]) or a Hugging Face checkpoint directory, told apart by
/// [`detect_format`] (a path that is none of them is refused with what it holds).
///
/// ```no_run
/// # fn main() -> Result<(), compress_model::ModelError> {
/// let device = compress_core::backend::BackendKind::default().device().unwrap();
/// let loaded = compress_model::load("model.gguf", &device)?;
/// let ids = loaded.tokenizer.encode("Once upon a time", true)?;
/// # Ok(()) }
/// ```
pub fn load(path: impl AsRef<Path>, device: &Device) -> Result<LoadedModel, ModelError> {
    load_with(path, device, &LoadOptions::default())
}

/// How strict [`load_with`] is. The default is strict.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct LoadOptions {
    /// Load a GGUF file that holds tensors the model does not read (by default an error: they
    /// mean a block count, architecture or feature the config does not describe, and ignoring
    /// them runs a different model than the file's author meant). Useful for files carrying
    /// extra tensors for other runtimes.
    pub allow_unused_tensors: bool,
}

/// [`load`] with `options`.
pub fn load_with(
    path: impl AsRef<Path>,
    device: &Device,
    options: &LoadOptions,
) -> Result<LoadedModel, ModelError> {
    let path = path.as_ref();
    match detect_format(path)? {
        ModelFormat::HfDirectory => {
            let source = HfModel::open(path)?;
            let tokenizer = source.tokenizer()?;
            LoadedModel::from_source(Arc::new(source), tokenizer, false, options, device)
        }
        ModelFormat::Container => crate::container::read_container(path, device),
        ModelFormat::Gguf => {
            let source = GgufModel::open(path)?;
            let tokenizer = source.tokenizer()?;
            LoadedModel::from_source(Arc::new(source), tokenizer, true, options, device)
        }
    }
}

/// Checks a tokenizer against the embedding it feeds: no id the tokenizer can produce (and no
/// special id) indexes past the `vocab_size` embedding rows; with `exact` (GGUF, whose
/// vocabulary llama.cpp requires to match the embedding row for row) the sizes must be equal.
/// A Hugging Face checkpoint may pad its embedding beyond the tokenizer (Qwen2 does).
pub(crate) fn check_vocabulary(
    tokenizer: &LlmTokenizer,
    vocab_size: usize,
    exact: bool,
    what: &str,
) -> Result<(), ModelError> {
    let n = tokenizer.vocab_size();
    if n > vocab_size || (exact && n != vocab_size) {
        return Err(ModelError::InvalidConfig(format!(
            "{what}: the tokenizer has {n} tokens, the embedding {vocab_size} rows{}",
            if n > vocab_size {
                ": ids past the embedding would index outside it"
            } else {
                " (a GGUF vocabulary matches the embedding row for row)"
            }
        )));
    }
    let s = tokenizer.special_tokens();
    for (name, id) in [
        ("bos", s.bos),
        ("eos", s.eos),
        ("unk", s.unk),
        ("pad", s.pad),
    ] {
        if let Some(id) = id.filter(|&id| id as usize >= n) {
            return Err(ModelError::InvalidConfig(format!(
                "{what}: the {name} token id {id} is past the tokenizer's {n} tokens"
            )));
        }
    }
    Ok(())
}

/// Loads a GGUF file held in memory (for example one embedded with `include_bytes!`).
pub fn load_gguf_bytes(bytes: Vec<u8>, device: &Device) -> Result<LoadedModel, ModelError> {
    let source = GgufModel::from_file(crate::gguf::GgufFile::from_bytes(bytes)?)?;
    let tokenizer = source.tokenizer()?;
    LoadedModel::from_source(
        Arc::new(source),
        tokenizer,
        true,
        &LoadOptions::default(),
        device,
    )
}

impl LoadedModel {
    /// The blocks' projection weights stay in `source` (a GGUF's memory map, a checkpoint's
    /// safetensors maps) until a product first reads them ([`LlamaModel::from_shared_source`]):
    /// a model is resident only as far as it has been run, which is what lets the calibration
    /// pipeline hold about one uncompressed block at a time. The tokenizer is checked against
    /// the embedding first ([`check_vocabulary`]; `exact` for GGUF).
    fn from_source(
        source: Arc<dyn WeightSource + Send + Sync>,
        tokenizer: LlmTokenizer,
        exact: bool,
        options: &LoadOptions,
        device: &Device,
    ) -> Result<Self, ModelError> {
        let what = if exact {
            "the GGUF file"
        } else {
            "the checkpoint"
        };
        check_vocabulary(&tokenizer, source.config().vocab_size, exact, what)?;
        let model = LlamaModel::from_shared_source(source.clone(), device)?;
        let unread = source.unread_tensors();
        if !unread.is_empty() && !options.allow_unused_tensors {
            return Err(ModelError::InvalidInput(format!(
                "{what} holds {} tensors the model does not use ({}{}): a block count, \
                 architecture or feature the config does not describe (load with \
                 `LoadOptions::allow_unused_tensors` to ignore them)",
                unread.len(),
                unread
                    .iter()
                    .take(5)
                    .cloned()
                    .collect::<Vec<_>>()
                    .join(", "),
                if unread.len() > 5 { ", …" } else { "" }
            )));
        }
        Ok(LoadedModel { model, tokenizer })
    }
}
