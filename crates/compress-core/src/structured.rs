//! Structured removal of a linear layer's output rows or input columns — the tensor surgery
//! behind removing FFN neurons and attention heads (compress-prune's structured pruners, the
//! model's `keep_*` methods).
//!
//! Dense and low-rank layers are cut exactly (`U`'s rows or `V`'s columns for a low-rank layer),
//! keeping the bias entries and any sparsity mask of the kept weights. Quantized layers are refused:
//! their groups run along rows, so removing columns would break them, and structured pruning is a
//! step that comes before quantization.

use std::sync::Arc;

use burn::tensor::{Int, Tensor, TensorData};

use crate::linear::{CompressedLinear, DenseLinear, LowRankLinear};
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
            Ok(CompressedLinear::LowRank(LowRankLinear::new(up, down, bias(lin.bias()))))
        }
        CompressedLinear::Quantized(_) => Err(
            "the layer is quantized: remove structures before quantizing (cutting packed groups is not exact)"
                .into(),
        ),
    }
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
}
