//! Writing models out: atomic file output, GGUF export for llama.cpp, and the lossless
//! [container](crate::container).
//!
//! | format | function | what it keeps |
//! |--------|----------|---------------|
//! | container (safetensors + JSON header) | [`crate::container::write_container`] | everything, bit for bit: packed codes, masks, low-rank factors, per-block widths |
//! | GGUF v3 | [`write_gguf`] | what ggml can express: F32/F16/BF16, Q4_0, Q4_1, Q5_0, Q5_1, Q8_0 (see [`crate::gguf::encode`]) |
//! | compressed-tensors (HF directory) | [`write_compressed_tensors`] | packed 2–8-bit codes with whole groups and integer zero points, for vLLM |

mod atomic;
mod compressed_tensors;
mod gguf;
mod gguf_meta;

pub use atomic::{temp_path_for, write_atomic, write_atomic_dir};
pub use compressed_tensors::{
    write_compressed_tensors, CompressedTensorsExport, CompressedTensorsReport, HfDtype,
};
pub use gguf::{write_gguf, GgufExport, GgufReport, TensorWritten};

use burn::tensor::Tensor;
use compress_core::linear::CompressedLinear;

use crate::config::RopeLayout;
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

/// Row order that converts q/k rows from layout `from` to `to`, head by head (`hd` wide):
/// interleaved row `2i` (`2i + 1`) is NeoX row `i` (`i + hd/2`).
pub(crate) fn rope_row_order(
    rows: usize,
    hd: usize,
    from: RopeLayout,
    to: RopeLayout,
) -> Option<Vec<usize>> {
    if from == to {
        return None;
    }
    let half = hd / 2;
    let mut order = vec![0; rows];
    for h in 0..rows / hd {
        for i in 0..half {
            let (inter, neox) = ([2 * i, 2 * i + 1], [i, i + half]);
            for k in 0..2 {
                let (dst, src) = match to {
                    RopeLayout::Interleaved => (inter[k], neox[k]),
                    RopeLayout::NeoX => (neox[k], inter[k]),
                };
                order[h * hd + dst] = h * hd + src;
            }
        }
    }
    Some(order)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rope_orders_are_inverse_permutations() {
        let to_inter = rope_row_order(8, 4, RopeLayout::NeoX, RopeLayout::Interleaved).unwrap();
        // Head of 4: interleaved rows (0,1,2,3) are NeoX rows (0,2,1,3).
        assert_eq!(to_inter, vec![0, 2, 1, 3, 4, 6, 5, 7]);
        let (a, b) = (
            rope_row_order(16, 8, RopeLayout::NeoX, RopeLayout::Interleaved).unwrap(),
            rope_row_order(16, 8, RopeLayout::Interleaved, RopeLayout::NeoX).unwrap(),
        );
        assert_eq!(a[..8], [0, 4, 1, 5, 2, 6, 3, 7]);
        // Converting there and back (new[d] = old[order[d]], twice) is the identity.
        let round: Vec<usize> = (0..16).map(|d| a[b[d]]).collect();
        assert_eq!(round, (0..16).collect::<Vec<_>>());
        assert!(rope_row_order(8, 4, RopeLayout::NeoX, RopeLayout::NeoX).is_none());
    }
}
