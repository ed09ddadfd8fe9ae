//! Errors of distillation and Matryoshka slicing.

use std::path::{Path, PathBuf};

use compress_core::pipeline::PipelineError;
use compress_model::ModelError;

/// Why a distillation run or a slice failed.
#[derive(Debug, thiserror::Error)]
pub enum DistillError {
    /// A setting is out of range or inconsistent; the message names it.
    #[error("invalid configuration: {0}")]
    Config(String),
    /// The model cannot be trained or sliced as asked (e.g. a quantized layer in a student).
    #[error(transparent)]
    Model(#[from] ModelError),
    /// Importance scoring failed.
    #[error(transparent)]
    Pipeline(#[from] PipelineError),
    /// A loss became NaN or infinite.
    #[error(
        "step {step}: the loss is {value} (not finite); lower the learning rate or enable clipping"
    )]
    NonFinite {
        /// The step at which it happened.
        step: usize,
        /// The loss value.
        value: f64,
    },
    /// A checkpoint could not be read.
    #[error("checkpoint {}: {message}", path.display())]
    Checkpoint {
        /// The checkpoint directory.
        path: PathBuf,
        /// What is wrong with it.
        message: String,
    },
    /// A file operation failed.
    #[error("{}: {source}", path.display())]
    Io {
        /// The file or directory.
        path: PathBuf,
        /// The cause.
        source: std::io::Error,
    },
}

impl DistillError {
    pub(crate) fn io(path: &Path, source: std::io::Error) -> Self {
        Self::Io {
            path: path.to_path_buf(),
            source,
        }
    }
}
