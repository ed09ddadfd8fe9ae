//! Structured removal of a linear layer's output rows or input columns — the tensor surgery
//! behind removing FFN neurons and attention heads (compress-prune's structured pruners, the
//! model's `keep_*` methods).
//!
//! Dense and low-rank layers are cut exactly (`U`'s rows or `V`'s columns for a low-rank layer),
//! keeping the bias entries and any sparsity mask of the kept weights. Quantized layers are cut
//! exactly too where no scale group is split: any rows (groups run along rows), and columns with
//! per-channel scales or, with per-group scales, a prefix of whole groups (what slicing a nested
//! model needs); other column cuts are refused, as are layers with a low-rank correction.

use std::sync::Arc;

use burn::tensor::{Int, Tensor, TensorData};

use crate::linear::{
    CompressedLinear, DenseLinear, LowRankLinear, QuantizedLinear, QuantizedLowRankLinear,
};
use crate::packed::{Granularity, PackedWeight};
use crate::sparsity::SparsityMask;

/// Which dimension of a `[out, in]` weight to cut.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Axis {
    /// Output features (rows; the bias follows).
    Rows,
    /// Input features (columns).
    Cols,
}

/// The layer with only the rows or columns `keep` (in that order), or why it cannot be cut.
pub fn keep_indices(
    lin: &CompressedLinear,
    axis: Axis,
    keep: &[usize],
) -> Result<CompressedLinear, String> {
    let (out, inp) = (lin.out_features(), lin.in_features());
    let len = if axis == Axis::Rows { out } else { inp };
    if let Some(&bad) = keep.iter().find(|&&i| i >= len) {
        return Err(format!("index {bad} is out of range for {len} {axis:?}"));
    }
    if keep.is_empty() {
        return Err(format!("cannot remove every one of the {len} {axis:?}"));
    }
    let pick = |t: Tensor<2>, dim: usize| {
        let device = t.device();
        let idx: Vec<i64> = keep.iter().map(|&i| i as i64).collect();
        let idx = Tensor::<1, Int>::from_data(TensorData::new(idx, [keep.len()]), &device);
        t.select(dim, idx)
    };
    let bias = |b: Option<Tensor<1>>| -> Option<Tensor<1>> {
        match (b, axis) {
            (Some(b), Axis::Rows) => {
                let device = b.device();
                let idx: Vec<i64> = keep.iter().map(|&i| i as i64).collect();
                let idx = Tensor::<1, Int>::from_data(TensorData::new(idx, [keep.len()]), &device);
                Some(b.select(0, idx))
            }
            (b, _) => b,
        }
    };
    match lin {
        CompressedLinear::Dense(l) => {
            let dim = if axis == Axis::Rows { 0 } else { 1 };
            let mut d = DenseLinear::new(pick(l.weight.val(), dim), bias(lin.bias()));
            d.mask = l.mask.as_ref().map(|m| Arc::new(cut_mask(m, axis, keep)));
            Ok(CompressedLinear::Dense(d))
        }
        CompressedLinear::LowRank(l) => {
            let (up, down) = match axis {
                Axis::Rows => (pick(l.up.val(), 0), l.down.val()),
                Axis::Cols => (l.up.val(), pick(l.down.val(), 1)),
            };
            Ok(CompressedLinear::LowRank(LowRankLinear::new(
                up,
                down,
                bias(lin.bias()),
            )))
        }
        CompressedLinear::Quantized(q) => {
            if q.correction.is_some() {
                return Err("the layer carries a low-rank correction fitted to all its weights: remove structures before correcting".into());
            }
            let packed = cut_packed(&q.packed, axis, keep)?;
            Ok(CompressedLinear::Quantized(QuantizedLinear::new(
                packed,
                bias(lin.bias()),
                &q.device(),
            )))
        }
        CompressedLinear::QuantizedLowRank(l) => {
            // Output rows are Û's rows, input columns V̂'s columns.
            let (up, down) = match axis {
                Axis::Rows => (
                    cut_packed(&l.up.packed, axis, keep)?,
                    (*l.down.packed).clone(),
                ),
                Axis::Cols => (
                    (*l.up.packed).clone(),
                    cut_packed(&l.down.packed, axis, keep)?,
                ),
            };
            Ok(CompressedLinear::QuantizedLowRank(
                QuantizedLowRankLinear::new(up, down, bias(lin.bias()), &l.up.device()),
            ))
        }
    }
}

/// Cuts a packed weight exactly: any rows (each row has its own groups), or columns when no
/// group is split — per-channel and per-tensor scales allow any columns, per-group scales a
/// prefix `0..k` that ends on a group boundary (or at the row's end).
fn cut_packed(p: &PackedWeight, axis: Axis, keep: &[usize]) -> Result<PackedWeight, String> {
    let scheme = p.scheme();
    let [out, inp] = p.shape();
    let gpr = p.groups_per_row();
    let per_tensor = scheme.granularity == Granularity::PerTensor;
    let codes = p.unpack_codes();
    let (o, i, new_codes, scale_idx): (usize, usize, Vec<u8>, Vec<usize>) = match axis {
        Axis::Rows => {
            let c = keep
                .iter()
                .flat_map(|&r| codes[r * inp..(r + 1) * inp].iter().copied())
                .collect();
            let idx = if per_tensor {
                vec![0]
            } else {
                keep.iter().flat_map(|&r| r * gpr..(r + 1) * gpr).collect()
            };
            (keep.len(), inp, c, idx)
        }
        Axis::Cols => {
            let g = scheme.group_len(inp);
            let new_gpr = match scheme.granularity {
                Granularity::PerGroup(_) => {
                    let k = keep.len();
                    let prefix = keep.iter().enumerate().all(|(j, &c)| j == c);
                    if !prefix || (!k.is_multiple_of(g) && k != inp) {
                        return Err(format!(
                            "cutting columns of a layer quantized in groups of {g} must keep a prefix of whole groups (asked for {k} of {inp} columns{}); quantize after slicing or pick a width that is a multiple of {g}",
                            if prefix { "" } else { ", not a prefix" }
                        ));
                    }
                    k.div_ceil(g)
                }
                _ => 1,
            };
            let c = (0..out)
                .flat_map(|r| keep.iter().map(move |&c| (r, c)))
                .map(|(r, c)| codes[r * inp + c])
                .collect();
            let idx = if per_tensor {
                vec![0]
            } else {
                (0..out).flat_map(|r| r * gpr..r * gpr + new_gpr).collect()
            };
            (out, keep.len(), c, idx)
        }
    };
    let scales = scale_idx.iter().map(|&j| p.scales()[j]).collect();
    let zeros = p.zeros().map(|z| scale_idx.iter().map(|&j| z[j]).collect());
    let mut cut = PackedWeight::from_codes(scheme, o, i, &new_codes, scales, zeros)
        .map_err(|e| e.to_string())?;
    if let Some(m) = p.mask() {
        cut = cut
            .with_mask(cut_mask(m, axis, keep))
            .map_err(|e| e.to_string())?;
    }
    Ok(cut)
}

fn cut_mask(m: &SparsityMask, axis: Axis, keep: &[usize]) -> SparsityMask {
    let [out, inp] = m.shape();
    let (o, i) = match axis {
        Axis::Rows => (keep.len(), inp),
        Axis::Cols => (out, keep.len()),
    };
    let mut kept = Vec::with_capacity(o * i);
    for r in 0..o {
        for c in 0..i {
            kept.push(match axis {
                Axis::Rows => m.is_kept(keep[r], c),
                Axis::Cols => m.is_kept(r, keep[c]),
            });
        }
    }
    SparsityMask::from_kept(o, i, &kept)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::backend::BackendKind;

    #[test]
    fn rows_and_columns_are_cut_with_bias_and_mask() {
        let device = BackendKind::Flex.device().unwrap();
        // W = [[1,2,3],[4,5,6]], b = [10, 20].
        let w = Tensor::<2>::from_data(
            TensorData::new(vec![1f32, 2., 3., 4., 5., 6.], [2, 3]),
            &device,
        );
        let b = Tensor::<1>::from_data(TensorData::new(vec![10f32, 20.], [2]), &device);
        let mut d = DenseLinear::new(w, Some(b));
        let mut mask = SparsityMask::all_kept(2, 3);
        mask.prune(1, 2);
        d.mask = Some(Arc::new(mask));
        let lin = CompressedLinear::Dense(d);
        let rows = keep_indices(&lin, Axis::Rows, &[1]).unwrap();
        let v = |l: &CompressedLinear| l.dense_weight().into_data().try_to_vec::<f32>().unwrap();
        assert_eq!(v(&rows), vec![4., 5., 6.]);
        assert_eq!(
            rows.bias()
                .unwrap()
                .into_data()
                .try_to_vec::<f32>()
                .unwrap(),
            vec![20.]
        );
        assert!(!rows.mask().unwrap().is_kept(0, 2));
        let cols = keep_indices(&lin, Axis::Cols, &[2, 0]).unwrap();
        assert_eq!(v(&cols), vec![3., 1., 6., 4.]);
        assert_eq!(cols.mask().unwrap().pruned(), 1);
        assert!(!cols.mask().unwrap().is_kept(1, 0));
        assert!(keep_indices(&lin, Axis::Cols, &[3])
            .unwrap_err()
            .contains("out of range"));
        assert!(keep_indices(&lin, Axis::Rows, &[]).is_err());
    }

    #[test]
    fn quantized_layers_cut_rows_and_whole_group_prefixes_exactly() {
        use crate::packed::{QuantScheme, Symmetry};
        use half::f16;
        let device = BackendKind::Flex.device().unwrap();
        // 3 × 10, 4-bit groups of 4 (ragged last group of 2): codes r·10 + c mod 16.
        let (out, inp) = (3, 10);
        let codes: Vec<u8> = (0..out * inp).map(|i| (i % 16) as u8).collect();
        let scheme = QuantScheme::new(4, Some(4), Symmetry::Asymmetric).unwrap();
        let n = scheme.num_scales(out, inp);
        let scales: Vec<f16> = (0..n)
            .map(|i| f16::from_f32(0.1 + i as f32 * 0.01))
            .collect();
        let zeros: Vec<f16> = (0..n).map(|i| f16::from_f32(i as f32 * 0.5)).collect();
        let p = PackedWeight::from_codes(scheme, out, inp, &codes, scales, Some(zeros)).unwrap();
        let full = p.dequantize();
        let lin = CompressedLinear::Quantized(QuantizedLinear::new(p, None, &device));
        let v = |l: &CompressedLinear| l.dense_weight().into_data().try_to_vec::<f32>().unwrap();
        let rows = keep_indices(&lin, Axis::Rows, &[2, 0]).unwrap();
        assert_eq!(v(&rows), [&full[20..30], &full[0..10]].concat());
        for k in [4, 8, 10] {
            let cols = keep_indices(&lin, Axis::Cols, &(0..k).collect::<Vec<_>>()).unwrap();
            let expect: Vec<f32> = (0..out)
                .flat_map(|r| full[r * inp..r * inp + k].to_vec())
                .collect();
            assert_eq!(v(&cols), expect, "prefix of {k}");
            assert!(matches!(cols, CompressedLinear::Quantized(_)));
        }
        let err = keep_indices(&lin, Axis::Cols, &[0, 1, 2]).unwrap_err();
        assert!(err.contains("whole groups"), "{err}");
        assert!(keep_indices(&lin, Axis::Cols, &[1, 2, 3, 4]).is_err());
    }
}
