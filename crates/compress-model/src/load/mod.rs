//! Model loaders: GGUF files and Hugging Face checkpoint directories.

mod gguf;
mod hf;

pub use gguf::GgufModel;
pub use hf::HfModel;

use std::path::Path;

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
/// ([`crate::container`]) or a Hugging Face checkpoint directory.
///
/// ```no_run
/// # fn main() -> Result<(), compress_model::ModelError> {
/// let device = compress_core::backend::BackendKind::default().device().unwrap();
/// let loaded = compress_model::load("model.gguf", &device)?;
/// let ids = loaded.tokenizer.encode("Once upon a time", true)?;
/// # Ok(()) }
/// ```
pub fn load(path: impl AsRef<Path>, device: &Device) -> Result<LoadedModel, ModelError> {
    let path = path.as_ref();
    if path.is_dir() {
        let source = HfModel::open(path)?;
        LoadedModel::from_source(&source, source.tokenizer()?, device)
    } else if crate::container::is_container(path) {
        crate::container::read_container(path, device)
    } else {
        let source = GgufModel::open(path)?;
        LoadedModel::from_source(&source, source.tokenizer()?, device)
    }
}

/// Loads a GGUF file held in memory (for example one embedded with `include_bytes!`).
pub fn load_gguf_bytes(bytes: Vec<u8>, device: &Device) -> Result<LoadedModel, ModelError> {
    let source = GgufModel::from_file(crate::gguf::GgufFile::from_bytes(bytes)?)?;
    LoadedModel::from_source(&source, source.tokenizer()?, device)
}

impl LoadedModel {
    fn from_source(
        source: &dyn WeightSource,
        tokenizer: LlmTokenizer,
        device: &Device,
    ) -> Result<Self, ModelError> {
        Ok(LoadedModel {
            model: LlamaModel::from_source(source, device)?,
            tokenizer,
        })
    }
}
