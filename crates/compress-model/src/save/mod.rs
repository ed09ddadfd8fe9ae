//! Writing models out: atomic file output, GGUF export for llama.cpp, and the lossless
//! [container](crate::container).
//!
//! | format | function | what it keeps |
//! |--------|----------|---------------|
//! | container (safetensors + JSON header) | [`crate::container::write_container`] | everything, bit for bit: packed codes, masks, low-rank factors, per-block widths |
//! | GGUF v3 | [`write_gguf`] | what ggml can express: F32/F16/BF16, Q4_0, Q4_1, Q5_0, Q5_1, Q8_0 (see [`crate::gguf::encode`]) |

mod atomic;
mod gguf;

pub use atomic::{temp_path_for, write_atomic};
pub use gguf::{write_gguf, GgufExport, GgufReport, TensorWritten};

use burn::tensor::Tensor;
use compress_core::linear::CompressedLinear;

use crate::error::ModelError;
use crate::llama::LlamaModel;

/// A tensor's values in host memory, row-major; `what` names it in the error.
pub(crate) fn host<const D: usize>(t: Tensor<D>, what: &str) -> Result<Vec<f32>, ModelError> {
    t.into_data()
        .convert::<f32>()
        .try_into_vec::<f32>()
        .map_err(|e| ModelError::InvalidInput(format!("reading `{what}` from the device: {e:?}")))
}

/// Whether the output head is the tied token embedding, unchanged (then formats store it once).
pub(crate) fn head_is_tied_copy(model: &LlamaModel) -> Result<bool, ModelError> {
    if !model.config().tie_word_embeddings {
        return Ok(false);
    }
    match &model.lm_head {
        CompressedLinear::Dense(l) if l.bias.is_none() && l.mask.is_none() => {
            Ok(host(l.weight.val(), "lm_head")? == host(model.embedding.val(), "embedding")?)
        }
        _ => Ok(false),
    }
}
