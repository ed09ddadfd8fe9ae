//! Quantization-aware training of nested bit widths (Matryoshka Quantization, Nair et al. 2025,
//! arXiv:2502.06786): every step also runs the student with its block projections fake-quantized
//! to each nested width, so the 8-bit store [`super::quantize_nested`] writes afterwards slices
//! into better 4- and 2-bit models.
//!
//! For width `b` a weight `w` of a group with the 8-bit grid `(s, z)` — the min–max grid
//! [`super::quantize_nested`] fits, recomputed from the current weights every step and treated as
//! a constant — becomes the value its nested code stands for:
//!
//! `c = clamp(round(w / s + z), 0, 255)`, `c_b = ⌊c / 2^(8−b)⌋`, `ŵ = s_b · (c_b − z_b)`
//!
//! with `(s_b, z_b)` the sliced grid of [`compress_quant::nested::slice_bits`] (bucket centres),
//! so training sees exactly the weights slicing will produce. Rounding has no gradient; the
//! straight-through estimator (Bengio et al. 2013) passes it as the identity:
//! `w + (ŵ − w).detach()`. Each width's loss is the KL divergence to the full-precision student's
//! detached output, as the nested widths of [`crate::train::WidthSchedule::Nested`] learn from
//! the full model.

use burn::module::Param;
use burn::tensor::{Tensor, TensorData};
use compress_core::linear::CompressedLinear;
use compress_core::packed::{Bits, Symmetry};
use compress_model::LlamaModel;
use compress_quant::grid::{fit_grid, GridConfig};
use half::f16;

use super::slice::projections;
use crate::error::DistillError;

/// Nested bit widths trained alongside the full-precision student.
#[derive(Debug, Clone, PartialEq)]
pub struct NestedBits {
    /// Widths trained every step, each in `2..=8` (8 = the stored codes themselves), with the
    /// weight of its loss term (MatQuant's per-width weights: the narrowest width has by far the
    /// largest loss and, at weight 1, pulls the shared weights away from the wider models).
    pub bits: Vec<(u8, f64)>,
    /// Weights per group of the 8-bit store (as [`super::quantize_nested`] will use).
    pub group: usize,
}

impl NestedBits {
    /// Checks the widths and the group size, naming the bad field.
    pub fn validate(&self) -> Result<(), DistillError> {
        if self.bits.is_empty() {
            return Err(DistillError::Config(
                "nested_bits.bits is empty: name at least one width".into(),
            ));
        }
        if let Some((b, _)) = self.bits.iter().find(|(b, _)| !(2..=8).contains(b)) {
            return Err(DistillError::Config(format!(
                "nested_bits.bits contains {b}: widths are 2 to 8 bits"
            )));
        }
        if let Some((b, w)) = self.bits.iter().find(|(_, w)| !(w.is_finite() && *w > 0.0)) {
            return Err(DistillError::Config(format!(
                "nested_bits.bits: width {b} has loss weight {w}; weights must be positive"
            )));
        }
        if self.group == 0 {
            return Err(DistillError::Config(
                "nested_bits.group = 0: a group holds at least one weight".into(),
            ));
        }
        Ok(())
    }
}

/// Per-weight grids of a `[out, in]` weight at every trained width, as device tensors:
/// the 8-bit `(s, z)` and, per width, the sliced `(s_b, z_b)`.
struct Grids {
    s8: Tensor<2>,
    z8: Tensor<2>,
    sliced: Vec<(u8, Tensor<2>, Tensor<2>)>,
}

fn grids(
    w: &[f32],
    [out, inp]: [usize; 2],
    group: usize,
    widths: &[u8],
    device: &burn::tensor::Device,
) -> Grids {
    let bits8 = Bits::new(8).expect("8 bits is valid");
    let n = out * inp;
    let (mut s8, mut z8) = (vec![0f32; n], vec![0f32; n]);
    let mut sliced: Vec<(Vec<f32>, Vec<f32>)> = widths
        .iter()
        .map(|_| (vec![0f32; n], vec![0f32; n]))
        .collect();
    for (r, row) in w.chunks(inp.max(1)).enumerate() {
        for (gi, chunk) in row.chunks(group).enumerate() {
            let g = fit_grid(
                chunk,
                None,
                bits8,
                Symmetry::Asymmetric,
                &GridConfig::default(),
            );
            let (s, z) = (g.scale.to_f32(), g.zero.to_f32());
            let at = r * inp + gi * group;
            s8[at..at + chunk.len()].fill(s);
            z8[at..at + chunk.len()].fill(z);
            for (&b, (sb, zb)) in widths.iter().zip(&mut sliced) {
                // slice_bits: s_b = s · 2^(8−b), z_b = (z − 2^(7−b)) / 2^(8−b), each an f16.
                let step = (1u32 << (8 - b)) as f32;
                let (ss, zz) = if b == 8 {
                    (s, z)
                } else {
                    (
                        f16::from_f32(s * step).to_f32(),
                        f16::from_f32((z - step / 2.0) / step).to_f32(),
                    )
                };
                sb[at..at + chunk.len()].fill(ss);
                zb[at..at + chunk.len()].fill(zz);
            }
        }
    }
    let t = |v: Vec<f32>| Tensor::<2>::from_data(TensorData::new(v, [out, inp]), device);
    Grids {
        s8: t(s8),
        z8: t(z8),
        sliced: widths
            .iter()
            .zip(sliced)
            .map(|(&b, (s, z))| (b, t(s), t(z)))
            .collect(),
    }
}

/// The weight `w` as its `b`-bit nested code stands for it (module docs), with the
/// straight-through gradient.
fn fake_quant(w: &Tensor<2>, g: &Grids, k: usize) -> Tensor<2> {
    let (b, sb, zb) = &g.sliced[k];
    let step = (1u32 << (8 - b)) as f32;
    let safe_s = g.s8.clone().clamp_min(f32::MIN_POSITIVE);
    let c = (w.clone().detach() / safe_s + g.z8.clone())
        .round()
        .clamp(0.0, 255.0);
    let cb = if *b == 8 { c } else { (c / step).floor() };
    // A zero scale (an all-zero group) stands for 0 whatever the code.
    let q = (cb - zb.clone()) * sb.clone();
    w.clone() + (q - w.clone()).detach()
}

/// Copies of `student` with every dense block projection fake-quantized to each width of
/// `cfg.bits` (same order), sharing the student's parameters so gradients reach them.
pub(crate) fn fake_quantized(
    student: &LlamaModel,
    cfg: &NestedBits,
) -> Result<Vec<(u8, LlamaModel)>, DistillError> {
    let mut copies: Vec<(u8, LlamaModel)> = cfg
        .bits
        .iter()
        .map(|&(b, _)| (b, student.clone()))
        .collect();
    let widths: Vec<u8> = cfg.bits.iter().map(|&(b, _)| b).collect();
    let mut base = student.clone();
    for (pi, (name, lin)) in projections(&mut base).into_iter().enumerate() {
        let CompressedLinear::Dense(d) = lin else {
            return Err(DistillError::Config(format!(
                "{name} is {}: nested-bit training needs dense projections",
                lin.describe()
            )));
        };
        let w = d.weight.val();
        let (dims, device) = (w.dims(), w.device());
        let host = w
            .clone()
            .into_data()
            .convert::<f32>()
            .try_to_vec::<f32>()
            .map_err(|e| DistillError::Config(format!("{name}: {e:?}")))?;
        let g = grids(&host, dims, cfg.group, &widths, &device);
        for (k, (_, m)) in copies.iter_mut().enumerate() {
            let (_, target) = projections(m)
                .into_iter()
                .nth(pi)
                .expect("a clone has the same projections");
            if let CompressedLinear::Dense(t) = target {
                t.weight = Param::initialized(t.weight.id, fake_quant(&w, &g, k));
            }
        }
    }
    Ok(copies)
}

#[cfg(test)]
mod tests {
    use super::*;
    use compress_core::backend::BackendKind;
    use compress_core::packed::QuantScheme;
    use compress_quant::nested::slice_bits;
    use compress_quant::rtn::quantize_rtn;

    /// The fake-quantized weights are the weights the 8-bit store slices into (pure maths on
    /// deterministic values; ragged last group included).
    #[test]
    fn fake_quantized_weights_equal_the_sliced_store() {
        let device = BackendKind::Flex.device().unwrap();
        let (out, inp, group) = (3, 40, 16);
        let w: Vec<f32> = (0..out * inp)
            .map(|i| ((i * 37 % 101) as f32 / 50.0 - 1.0) * (1.0 + (i / inp) as f32))
            .collect();
        let bits = [8u8, 4, 2];
        let g = grids(&w, [out, inp], group, &bits, &device);
        let wt = Tensor::<2>::from_data(TensorData::new(w.clone(), [out, inp]), &device);
        let scheme = QuantScheme::new(8, Some(group), Symmetry::Asymmetric).unwrap();
        let store = quantize_rtn("t", &w, out, inp, &scheme, &GridConfig::default(), None).unwrap();
        for (k, &b) in bits.iter().enumerate() {
            let got: Vec<f32> = fake_quant(&wt, &g, k).into_data().try_to_vec().unwrap();
            let want = slice_bits(&store, b).unwrap().dequantize();
            let worst = got
                .iter()
                .zip(&want)
                .map(|(a, b)| (a - b).abs())
                .fold(0f32, f32::max);
            // Same grids and codes; burn rounds ties to even where Rust rounds them away from
            // zero, and the product order differs: well under a step of the finest width.
            assert!(worst < 1e-5, "{b} bits: {worst}");
        }
    }

    #[test]
    fn bad_settings_name_the_field() {
        let bad = |bits: Vec<(u8, f64)>, group| {
            NestedBits { bits, group }
                .validate()
                .unwrap_err()
                .to_string()
        };
        assert!(bad(vec![], 32).contains("empty"));
        assert!(bad(vec![(4, 1.0), (9, 1.0)], 32).contains("9"));
        assert!(bad(vec![(4, 0.0)], 32).contains("loss weight 0"));
        assert!(bad(vec![(4, 1.0)], 0).contains("group = 0"));
    }
}
