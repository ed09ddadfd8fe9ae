//! Model loaders: GGUF files and Hugging Face checkpoint directories.

mod compressed;
mod gguf;
mod hf;

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
        let tokenizer = source.tokenizer()?;
        LoadedModel::from_source(Arc::new(source), tokenizer, device)
    } else if crate::container::is_container(path) {
        crate::container::read_container(path, device)
    } else {
        let source = GgufModel::open(path)?;
        let tokenizer = source.tokenizer()?;
        LoadedModel::from_source(Arc::new(source), tokenizer, device)
    }
}

/// Loads a GGUF file held in memory (for example one embedded with `include_bytes!`).
pub fn load_gguf_bytes(bytes: Vec<u8>, device: &Device) -> Result<LoadedModel, ModelError> {
    let source = GgufModel::from_file(crate::gguf::GgufFile::from_bytes(bytes)?)?;
    let tokenizer = source.tokenizer()?;
    LoadedModel::from_source(Arc::new(source), tokenizer, device)
}

impl LoadedModel {
    /// The blocks' projection weights stay in `source` (a GGUF's memory map, a checkpoint's
    /// safetensors maps) until a product first reads them ([`LlamaModel::from_shared_source`]):
    /// a model is resident only as far as it has been run, which is what lets the calibration
    /// pipeline hold about one uncompressed block at a time.
    fn from_source(
        source: Arc<dyn WeightSource + Send + Sync>,
        tokenizer: LlmTokenizer,
        device: &Device,
    ) -> Result<Self, ModelError> {
        Ok(LoadedModel {
            model: LlamaModel::from_shared_source(source, device)?,
            tokenizer,
        })
    }
}
