//! Slicing a nested model: a real, smaller model with fewer neurons, heads and bits.

use compress_core::layer_id::LinearId;
use compress_core::linear::{CompressedLinear, QuantizedLinear};
use compress_core::packed::{QuantScheme, Symmetry};
use compress_model::llama::{PrefixWidth, BLOCK_LINEARS};
use compress_model::LlamaModel;
use compress_quant::grid::GridConfig;
use compress_quant::nested::slice_bits;
use compress_quant::rtn::quantize_rtn;

use super::Width;
use crate::error::DistillError;

/// What to cut out of a nested model.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct SliceSpec {
    /// Fractions of the FFN neurons and key/value groups kept.
    pub width: Width,
    /// Bits of the sliced projections, read from the top bits of their 8-bit codes
    /// ([`quantize_nested`]); `None` keeps the stored weights.
    pub bits: Option<u8>,
}

/// What [`slice()`] produced.
#[derive(Debug, Clone, PartialEq)]
pub struct SliceReport {
    /// The prefix kept in every block.
    pub prefix: PrefixWidth,
    /// Parameters before and after ([`LlamaModel::num_parameters`]).
    pub parameters: (usize, usize),
    /// Storage bits of all block projections after slicing (codes, scales, zeros, masks).
    pub projection_bits: u64,
}

pub(crate) fn projections(model: &mut LlamaModel) -> Vec<(String, &mut CompressedLinear)> {
    let mut out = Vec::new();
    for (i, b) in model.layers.iter_mut().enumerate() {
        for (kind, l) in BLOCK_LINEARS.into_iter().zip(b.linears_mut()) {
            out.push((LinearId::block(i, kind).to_string(), l));
        }
    }
    out
}

/// Stores every block projection of `model` as 8-bit asymmetric codes in groups of `group`
/// (round to nearest, min–max grid), the nested store from which [`slice()`] reads 4-, 3- and
/// 2-bit models. The embedding, norms and output head stay as they are.
pub fn quantize_nested(model: &mut LlamaModel, group: usize) -> Result<(), DistillError> {
    quantize_projections(model, 8, group)
}

/// Round-to-nearest quantization of every block projection to `bits`-bit asymmetric codes in
/// groups of `group` (min–max grid) — [`quantize_nested`] at 8 bits, and the separately
/// quantized baseline a nested slice is compared with at fewer bits.
pub fn quantize_projections(
    model: &mut LlamaModel,
    bits: u8,
    group: usize,
) -> Result<(), DistillError> {
    let scheme = QuantScheme::new(bits, Some(group), Symmetry::Asymmetric)
        .map_err(|e| DistillError::Config(format!("{bits} bits, group = {group}: {e}")))?;
    for (name, lin) in projections(model) {
        let (out, inp) = (lin.out_features(), lin.in_features());
        let device = lin.dense_weight().device();
        let w = lin
            .dense_weight()
            .into_data()
            .try_to_vec::<f32>()
            .map_err(|e| DistillError::Config(format!("{name}: {e:?}")))?;
        let packed = quantize_rtn(&name, &w, out, inp, &scheme, &GridConfig::default(), None)
            .map_err(|e| DistillError::Config(e.to_string()))?;
        *lin = CompressedLinear::Quantized(QuantizedLinear::new(packed, lin.bias(), &device));
    }
    Ok(())
}

/// A copy of `model` cut to `spec`: the first FFN neurons and key/value groups of every block
/// (the model should be nested: [`super::sort_by_importance`] or nested training), and with
/// `spec.bits`, every 8-bit projection re-expressed by its top bits. The matrices really shrink.
///
/// Quantized layers are cut exactly when no scale group is split: with per-group codes the
/// kept FFN width and head columns must be multiples of the group size (the error says so).
pub fn slice(
    model: &LlamaModel,
    spec: &SliceSpec,
) -> Result<(LlamaModel, SliceReport), DistillError> {
    let prefix = spec.width.prefix(model)?;
    let before = model.num_parameters();
    let mut m = model.clone();
    m.keep_prefix(prefix)?;
    if let Some(bits) = spec.bits {
        for (name, lin) in projections(&mut m) {
            let CompressedLinear::Quantized(q) = &*lin else {
                return Err(DistillError::Config(format!(
                    "{name} is {}: slicing bits needs 8-bit nested codes (quantize_nested)",
                    lin.describe()
                )));
            };
            if q.correction.is_some() {
                return Err(DistillError::Config(format!(
                    "{name} has a low-rank correction fitted to its 8-bit codes"
                )));
            }
            let packed = slice_bits(&q.packed, bits)
                .map_err(|e| DistillError::Config(format!("{name}: {e}")))?;
            let device = q.device();
            *lin = CompressedLinear::Quantized(QuantizedLinear::new(packed, lin.bias(), &device));
        }
    }
    let projection_bits = projections(&mut m)
        .iter()
        .map(|(_, l)| l.storage_bits())
        .sum();
    let after = m.num_parameters();
    Ok((
        m,
        SliceReport {
            prefix,
            parameters: (before, after),
            projection_bits,
        },
    ))
}
