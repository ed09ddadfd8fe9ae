//! Errors of model loading and running.

use std::path::PathBuf;

/// Everything that can go wrong loading or running a model. Messages name the file, key, tensor
/// or layer at fault.
#[derive(Debug, thiserror::Error)]
pub enum ModelError {
    /// Reading a GGUF file failed.
    #[error("GGUF: {0}")]
    Gguf(#[from] crate::gguf::GgufError),
    /// Building or running a tokenizer failed.
    #[error("tokenizer: {0}")]
    Tokenizer(#[from] crate::tokenizer::TokenizerError),
    /// An I/O error on a named file.
    #[error("{path}: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// The error.
        source: std::io::Error,
    },
    /// A JSON file (config.json, safetensors index) is malformed.
    #[error("{path}: {message}")]
    Json {
        /// The file.
        path: PathBuf,
        /// What is wrong.
        message: String,
    },
    /// A safetensors file is malformed or a tensor cannot be read.
    #[error("{path}: {message}")]
    Safetensors {
        /// The file.
        path: PathBuf,
        /// What is wrong.
        message: String,
    },
    /// The file describes a model family this crate does not run.
    #[error("unsupported architecture `{0}` (supported: {supported})", supported = crate::family::supported())]
    UnknownArchitecture(String),
    /// A hyper-parameter is missing or inconsistent.
    #[error("invalid model config: {0}")]
    InvalidConfig(String),
    /// A tensor the model needs is not in the file.
    #[error("missing tensor `{0}`")]
    MissingTensor(String),
    /// A tensor has a different shape than the config implies.
    #[error("tensor `{tensor}` has shape {found:?}, expected {expected:?}")]
    ShapeMismatch {
        /// The tensor.
        tensor: String,
        /// Shape implied by the config.
        expected: Vec<usize>,
        /// Shape in the file.
        found: Vec<usize>,
    },
    /// A tensor holds NaN or infinite values.
    #[error("tensor `{tensor}` holds a non-finite value {value} at index {index}")]
    NonFinite {
        /// The tensor (or layer output).
        tensor: String,
        /// Flat index of the first bad value.
        index: usize,
        /// The value.
        value: f32,
    },
    /// A tensor is stored in a dtype this loader does not read.
    #[error("tensor `{tensor}` has dtype {dtype}, which is not supported here")]
    UnsupportedDtype {
        /// The tensor.
        tensor: String,
        /// The dtype as the file names it.
        dtype: String,
    },
    /// The model file carries no tokenizer and none was given.
    #[error("no tokenizer: {0}")]
    MissingTokenizer(String),
    /// A sequence is longer than the model's context.
    #[error("sequence of {len} tokens exceeds the model's context of {max}")]
    ContextTooLong {
        /// Requested length.
        len: usize,
        /// The model's maximum.
        max: usize,
    },
    /// A caller passed inconsistent arguments.
    #[error("invalid input: {0}")]
    InvalidInput(String),
}
