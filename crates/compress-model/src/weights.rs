//! Format-independent access to a model's weights.
//!
//! Loaders ([`crate::load()`]) translate the canonical names below to their file's names (GGUF's
//! `blk.0.attn_q.weight`, HF's `model.layers.0.self_attn.q_proj.weight`) and return f32 data;
//! [`crate::llama::LlamaModel::from_source`] checks every shape against the config and every value
//! for NaN/Inf before a tensor reaches the device.

use std::fmt;

use crate::config::LlamaConfig;
use crate::error::ModelError;

/// A tensor in host memory: f32 values in row-major order, `shape` outermost first
/// (a linear weight is `[out_features, in_features]`).
#[derive(Clone, Debug, PartialEq)]
pub struct HostTensor {
    /// Dimensions, outermost first.
    pub shape: Vec<usize>,
    /// Values, row-major.
    pub data: Vec<f32>,
}

impl HostTensor {
    /// Rows `r` of a `[rows, cols]` tensor (a projection inside a fused one); an error naming
    /// `name` when the tensor is not 2-D or too short.
    pub fn rows(self, r: std::ops::Range<usize>, name: &str) -> Result<Self, ModelError> {
        let (stored, cols) = match self.shape.as_slice() {
            [rows, cols] => (*rows, *cols),
            _ => (0, 0),
        };
        if r.end > stored {
            return Err(ModelError::ShapeMismatch {
                tensor: name.to_string(),
                expected: vec![r.end, cols],
                found: self.shape,
            });
        }
        Ok(Self {
            shape: vec![r.len(), cols],
            data: self.data[r.start * cols..r.end * cols].to_vec(),
        })
    }

    /// Fails with [`ModelError::NonFinite`] naming `name` and the first bad index if any value is
    /// NaN or infinite.
    pub fn check_finite(&self, name: &str) -> Result<(), ModelError> {
        match self.data.iter().position(|v| !v.is_finite()) {
            None => Ok(()),
            Some(index) => Err(ModelError::NonFinite {
                tensor: name.to_string(),
                index,
                value: self.data[index],
            }),
        }
    }
}

/// The linear projections of a decoder block.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Proj {
    /// Attention query projection.
    Q,
    /// Attention key projection.
    K,
    /// Attention value projection.
    V,
    /// Attention output projection.
    O,
    /// MLP gate projection.
    Gate,
    /// MLP up projection.
    Up,
    /// MLP down projection.
    Down,
}

impl Proj {
    /// Every projection of a block, in the order the block computes them.
    pub const ALL: [Proj; 7] = [
        Proj::Q,
        Proj::K,
        Proj::V,
        Proj::O,
        Proj::Gate,
        Proj::Up,
        Proj::Down,
    ];
}

/// Where projection `p` lies in a fused tensor (Phi-3's): q/k/v as rows `[q; k; v]` of one
/// qkv tensor (`Ok(0)`), gate/up as rows `[gate; up]` of one gate-up tensor (`Ok(1)`); `None`
/// for projections stored alone (o, down). The index picks the file's name for the fused tensor.
pub(crate) fn fused_rows(c: &LlamaConfig, p: Proj) -> Option<(usize, std::ops::Range<usize>)> {
    let (q, kv, f) = (
        c.num_heads * c.head_dim,
        c.num_kv_heads * c.head_dim,
        c.intermediate_size,
    );
    match p {
        Proj::Q => Some((0, 0..q)),
        Proj::K => Some((0, q..q + kv)),
        Proj::V => Some((0, q + kv..q + 2 * kv)),
        Proj::Gate => Some((1, 0..f)),
        Proj::Up => Some((1, f..2 * f)),
        Proj::O | Proj::Down => None,
    }
}

/// Canonical name of one tensor of a llama-family model.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum WeightName {
    /// Token embedding, `[vocab, hidden]`.
    TokenEmbedding,
    /// Final RMSNorm gain, `[hidden]`.
    OutputNorm,
    /// Output head, `[vocab, hidden]` (absent when tied to the embedding).
    Output,
    /// Pre-attention RMSNorm gain of block `l`.
    AttnNorm(usize),
    /// Pre-MLP RMSNorm gain of block `l`.
    FfnNorm(usize),
    /// RMSNorm gain on the attention output of block `l` (Gemma's sandwich norms).
    PostAttnNorm(usize),
    /// RMSNorm gain on the MLP output of block `l` (Gemma's sandwich norms).
    PostFfnNorm(usize),
    /// Per-head query RMSNorm gain of block `l`, `[head_dim]` (Qwen3, Gemma 3).
    QNorm(usize),
    /// Per-head key RMSNorm gain of block `l`, `[head_dim]`.
    KNorm(usize),
    /// Weight of a projection of block `l`, `[out, in]`.
    Weight(usize, Proj),
    /// Bias of a projection of block `l`, `[out]` (q/k/v of Qwen2).
    Bias(usize, Proj),
    /// Router of the mixture-of-experts MLP of block `l`, `[experts, hidden]`.
    Router(usize),
    /// Projection (gate, up or down) of routed expert `e` of block `l`.
    Expert(usize, u32, Proj),
    /// Projection (gate, up or down) of the shared expert of block `l`.
    SharedExpert(usize, Proj),
    /// Gate of the shared expert's output, `[1, hidden]`.
    SharedGate(usize),
}

impl WeightName {
    /// Whether the tensor is a norm's gain (Gemma's files store `w` for a gain of `1 + w`).
    pub fn is_norm(&self) -> bool {
        matches!(
            self,
            WeightName::OutputNorm
                | WeightName::AttnNorm(_)
                | WeightName::FfnNorm(_)
                | WeightName::PostAttnNorm(_)
                | WeightName::PostFfnNorm(_)
                | WeightName::QNorm(_)
                | WeightName::KNorm(_)
        )
    }
}

impl fmt::Display for WeightName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            WeightName::TokenEmbedding => write!(f, "token_embedding"),
            WeightName::OutputNorm => write!(f, "output_norm"),
            WeightName::Output => write!(f, "output"),
            WeightName::AttnNorm(l) => write!(f, "layers.{l}.attn_norm"),
            WeightName::FfnNorm(l) => write!(f, "layers.{l}.ffn_norm"),
            WeightName::PostAttnNorm(l) => write!(f, "layers.{l}.post_attn_norm"),
            WeightName::PostFfnNorm(l) => write!(f, "layers.{l}.post_ffn_norm"),
            WeightName::QNorm(l) => write!(f, "layers.{l}.q_norm"),
            WeightName::KNorm(l) => write!(f, "layers.{l}.k_norm"),
            WeightName::Weight(l, p) => write!(f, "layers.{l}.{p:?}.weight"),
            WeightName::Bias(l, p) => write!(f, "layers.{l}.{p:?}.bias"),
            WeightName::Router(l) => write!(f, "layers.{l}.router"),
            WeightName::Expert(l, e, p) => write!(f, "layers.{l}.experts.{e}.{p:?}"),
            WeightName::SharedExpert(l, p) => write!(f, "layers.{l}.shared_expert.{p:?}"),
            WeightName::SharedGate(l) => write!(f, "layers.{l}.shared_expert_gate"),
        }
    }
}

/// A source of model weights: a parsed config plus tensors by canonical name.
pub trait WeightSource {
    /// The model's hyper-parameters.
    fn config(&self) -> &LlamaConfig;

    /// Reads one tensor as f32, or `Ok(None)` when the file does not hold it (an untied output
    /// head, absent biases). Errors name the tensor as the file calls it.
    fn tensor(&self, name: WeightName) -> Result<Option<HostTensor>, ModelError>;

    /// The name the file gives `name` (used in error messages); the canonical name by default.
    fn file_name(&self, name: WeightName) -> String {
        name.to_string()
    }

    /// Tensors the file holds that no [`Self::tensor`] call has read so far, by file name
    /// (sorted); after a model is built from the source, what it does not use. Sources that do
    /// not track reads report none.
    fn unread_tensors(&self) -> Vec<String> {
        Vec::new()
    }
}
