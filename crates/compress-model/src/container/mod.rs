//! The `compress` container: a compressed model saved losslessly, loadable bit for bit.
//!
//! A container is a [safetensors](https://github.com/huggingface/safetensors) file — so any
//! safetensors reader can list and read its tensors — whose `__metadata__` holds one key,
//! `compress`, with a versioned JSON [header](Header) that says what every tensor is:
//!
//! | tensor                       | dtype | shape            | for                                  |
//! |------------------------------|-------|------------------|--------------------------------------|
//! | `embedding`, `norm`          | F32   | `[vocab, d]`, `[d]` | token embedding, final norm       |
//! | `layers.{l}.attn_norm`, `.ffn_norm` | F32 | `[d]`     | block norms                          |
//! | `{layer}.weight`             | F32   | `[out, in]`      | dense layer                          |
//! | `{layer}.codes`              | U8    | `[out, row_bytes]` | packed codes (`compress_core::packed`) |
//! | `{layer}.scales`, `.zeros`   | F16   | `[n_scales]`     | group scales, zero points (code units) |
//! | `{layer}.mask`               | U64   | `[ceil(out·in/64)]` | sparsity bitmap, bit set = kept   |
//! | `{layer}.up`, `{layer}.down` | F32   | `[out, r]`, `[r, in]` | low-rank factors `U`, `V`       |
//! | `{layer}.correction_up`, `.correction_down` | F32 | `[out, r]`, `[r, in]` | low-rank correction of a quantized layer (v2) |
//! | `{layer}.up.codes`, `.up.scales`, `.up.zeros`, and the same under `.down` | U8, F16 | as above | quantized low-rank factors `Û`, `V̂` (v3) |
//! | `{layer}.bias`               | F32   | `[out]`          | bias                                 |
//! | `tokenizer`                  | U8    | `[bytes]`        | the tokenizer as JSON (below)        |
//!
//! `{layer}` is the layer path used everywhere in this project (`layers.3.mlp.down_proj`,
//! `lm_head`). The header records the model config, each block's head counts (structured
//! pruning can leave blocks of different widths, which the container keeps), each layer's kind
//! and quantization scheme, the tokenizer kind (a GGUF vocabulary, so GGUF export stays
//! possible, or a `tokenizer.json`) with its special tokens, free-form provenance notes, and a
//! CRC-32 of every tensor's bytes. Loading verifies all of them: a truncated file fails in the
//! safetensors parser, a flipped bit fails the checksum of the tensor that holds it, and a
//! header from a newer format version is refused rather than half-read.
//!
//! Everything is stored exactly as the model holds it (f32 weights, the packed codes and f16
//! scales as the quantizer produced them), so [`read_container`] rebuilds a model whose
//! tensors equal the saved ones bit for bit, and saving it again gives an identical file.
//! Files are written atomically ([`crate::save::write_atomic`]).
//!
//! ```no_run
//! # fn main() -> Result<(), compress_model::ModelError> {
//! use compress_model::container::{read_container, write_container};
//! let device = compress_core::backend::BackendKind::default().device().unwrap();
//! let m = compress_model::load("../shared/models/stories260K.gguf", &device)?;
//! write_container(&m.model, &m.tokenizer, "model.safetensors".as_ref(), &Default::default())?;
//! let back = read_container("model.safetensors".as_ref(), &device)?;
//! assert_eq!(back.model.config(), m.model.config());
//! # Ok(()) }
//! ```

pub(crate) mod read;
mod write;

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::config::LlamaConfig;
use crate::tokenizer::SpecialTokens;

pub use read::{is_container, read_container, read_header};
pub use write::write_container;

/// Value of the header's `format` field.
pub const FORMAT: &str = "compress";
/// The newest header version this build reads and writes. Version 2 adds low-rank corrections
/// of quantized layers, version 3 low-rank layers with quantized factors; a file is written
/// with the lowest version that can describe it (1 when it uses neither), so older builds read
/// what they can.
pub const VERSION: u32 = 3;
/// The `__metadata__` key holding the header.
pub const METADATA_KEY: &str = "compress";
/// The tensor holding the tokenizer JSON.
pub const TOKENIZER_TENSOR: &str = "tokenizer";

/// The JSON header of a container (see the [module docs](self)).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Header {
    /// Always [`FORMAT`].
    pub format: String,
    /// Format version ([`VERSION`] when written by this build).
    pub version: u32,
    /// The model's hyper-parameters (for structurally pruned models: the largest block).
    pub config: LlamaConfig,
    /// Attention numerics (`f32` or `f16_kv_cache`).
    pub attention_precision: String,
    /// Per block, its head counts (its FFN width is the shape of its tensors).
    pub blocks: Vec<BlockEntry>,
    /// Every linear layer by path, including `lm_head` unless it is the tied embedding.
    pub layers: BTreeMap<String, LayerEntry>,
    /// The output head is the token embedding (no `lm_head` tensors are stored).
    pub tied_head: bool,
    /// How the `tokenizer` tensor is to be read.
    pub tokenizer: TokenizerEntry,
    /// Free-form notes: source model, recipe, tool version.
    #[serde(default)]
    pub provenance: BTreeMap<String, String>,
    /// How the model's prefixes nest (Matryoshka), when it was built to be sliced. Older
    /// builds ignore the field.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub nesting: Option<NestingEntry>,
    /// CRC-32 (IEEE) of every tensor's bytes, by tensor name.
    pub checksums: BTreeMap<String, u32>,
}

/// What a nested (Matryoshka) model promises about its prefixes: which slices are meant to be
/// cut from it (`compress slice`, `compress_distill::matryoshka::slice`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct NestingEntry {
    /// How the prefix order was made.
    pub order: NestingOrder,
    /// Prefix widths (fractions of every block's FFN neurons and KV groups, in (0, 1)) the model
    /// was trained at; empty for a post-hoc sorted model, where any prefix is the best by the
    /// sorting criterion but none was trained.
    #[serde(default)]
    pub widths: Vec<f64>,
    /// Width of the stored codes whose most significant bits form the smaller models (nested
    /// bits, 8), when the linears hold nested codes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub nested_bits: Option<u8>,
}

/// How a nested model's neurons and heads were ordered.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum NestingOrder {
    /// Trained nested (MatFormer-style) at [`NestingEntry::widths`].
    Trained,
    /// Sorted by importance after training (function unchanged at full width).
    Sorted,
}

impl NestingEntry {
    /// The entry for the model cut from this one at a uniform `width` (a fraction of this
    /// model): trained widths below `width` become fractions of the slice; the order and the
    /// nested bits carry over.
    pub fn after_slice(&self, width: f64) -> Self {
        Self {
            order: self.order,
            widths: self
                .widths
                .iter()
                .filter(|&&w| w < width - 1e-9)
                .map(|&w| w / width)
                .collect(),
            nested_bits: self.nested_bits,
        }
    }

    /// Whether a uniform slice at `width` is one the model was trained for (always true for
    /// the full model and for a sorted model, which promises no particular width).
    pub fn covers(&self, width: f64) -> bool {
        self.order == NestingOrder::Sorted
            || (width - 1.0).abs() < 1e-9
            || self.widths.iter().any(|w| (w - width).abs() < 1e-6)
    }

    /// Checks the widths and the bit width, naming the bad value.
    pub fn validate(&self) -> Result<(), String> {
        if let Some(w) = self.widths.iter().find(|w| !(**w > 0.0 && **w < 1.0)) {
            return Err(format!("nesting width {w}: must lie in (0, 1)"));
        }
        match self.nested_bits {
            Some(b) if !(2..=8).contains(&b) => Err(format!("nested_bits = {b}: must be 2–8")),
            _ => Ok(()),
        }
    }
}

/// The shape of one block's attention.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct BlockEntry {
    /// Query heads.
    pub num_heads: usize,
    /// Key/value heads.
    pub num_kv_heads: usize,
}

/// How one linear layer is stored.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum LayerEntry {
    /// `{layer}.weight`, optionally `{layer}.mask`.
    Dense {
        /// `{layer}.bias` is stored.
        bias: bool,
        /// `{layer}.mask` is stored.
        mask: bool,
    },
    /// `{layer}.codes`, `{layer}.scales`, `{layer}.zeros` (asymmetric), `{layer}.mask`.
    Quantized {
        /// `[out, in]`.
        shape: [usize; 2],
        /// Code width, 2–8.
        bits: u8,
        /// Scale sharing.
        granularity: GranularityEntry,
        /// Zero point fixed at the middle code (no `zeros` tensor).
        symmetric: bool,
        /// `{layer}.bias` is stored.
        bias: bool,
        /// `{layer}.mask` is stored.
        mask: bool,
        /// Rank of the low-rank correction `{layer}.correction_up` · `{layer}.correction_down`
        /// added to the dequantized weight (version 2).
        #[serde(default, skip_serializing_if = "Option::is_none")]
        correction_rank: Option<usize>,
    },
    /// `{layer}.up` (`U`), `{layer}.down` (`V`).
    LowRank {
        /// `{layer}.bias` is stored.
        bias: bool,
    },
    /// A rank-`rank` factorization with packed factors: `{layer}.up.codes`, `.up.scales`,
    /// `.up.zeros` (asymmetric) for `Û: [out, rank]`, the same under `{layer}.down.` for
    /// `V̂: [rank, in]` (version 3).
    QuantizedLowRank {
        /// The rank `r`.
        rank: usize,
        /// `Û`'s scheme.
        up: PackedEntry,
        /// `V̂`'s scheme.
        down: PackedEntry,
        /// `{layer}.bias` is stored.
        bias: bool,
    },
}

/// The quantization scheme of one packed factor.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct PackedEntry {
    /// Code width, 2–8.
    pub bits: u8,
    /// Scale sharing.
    pub granularity: GranularityEntry,
    /// Zero point fixed at the middle code (no `zeros` tensor).
    pub symmetric: bool,
}

/// Scale sharing of a quantized layer, as the header spells it (`"tensor"`, `"channel"`,
/// `{"group": 32}`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum GranularityEntry {
    /// One scale for the matrix.
    Tensor,
    /// One scale per row.
    Channel,
    /// One scale per this many weights of a row.
    Group(usize),
}

/// How the tokenizer is stored.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct TokenizerEntry {
    /// `gguf_vocab` (the GGUF `tokenizer.ggml.*` vocabulary as JSON) or `tokenizer_json`.
    pub kind: TokenizerKind,
    /// Special tokens and the BOS default.
    pub special: SpecialTokens,
}

/// What the `tokenizer` tensor holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum TokenizerKind {
    /// A [`crate::tokenizer::GgufVocab`] serialised as JSON.
    GgufVocab,
    /// A Hugging Face `tokenizer.json`.
    TokenizerJson,
}

/// Options of [`write_container`].
#[derive(Debug, Clone, Default)]
pub struct ContainerOptions {
    /// Notes stored in the header (source model, recipe text, command line).
    pub provenance: BTreeMap<String, String>,
    /// The model's nesting, for a Matryoshka model ([`Header::nesting`]).
    pub nesting: Option<NestingEntry>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nesting_follows_a_slice_and_checks_its_values() {
        let n = NestingEntry {
            order: NestingOrder::Trained,
            widths: vec![0.25, 0.5, 0.75],
            nested_bits: Some(8),
        };
        assert!(n.covers(0.5) && n.covers(1.0) && !n.covers(0.6));
        let half = n.after_slice(0.5);
        assert_eq!(half.widths, vec![0.5]);
        assert_eq!(half.nested_bits, Some(8));
        let sorted = NestingEntry {
            order: NestingOrder::Sorted,
            widths: vec![],
            nested_bits: None,
        };
        assert!(sorted.covers(0.37));
        assert!(n.validate().is_ok());
        let bad = NestingEntry {
            widths: vec![1.5],
            ..n.clone()
        };
        assert!(bad.validate().unwrap_err().contains("1.5"));
        let bad = NestingEntry {
            nested_bits: Some(9),
            ..n
        };
        assert!(bad.validate().unwrap_err().contains("nested_bits"));
        // Headers without the field (older files) still read.
        let json = r#"{"order":"sorted"}"#;
        let e: NestingEntry = serde_json::from_str(json).unwrap();
        assert_eq!(e, sorted);
    }
}
