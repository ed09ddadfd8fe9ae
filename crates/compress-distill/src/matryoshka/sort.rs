//! Post-hoc nesting: importance-sorted FFN neurons and key/value groups.

use compress_core::layer_id::Expert;
use compress_model::LlamaModel;
use compress_prune::structured::{structure_scores, Importance};

use crate::error::DistillError;

/// The permutation applied to every block: original indices in their new order.
#[derive(Debug, Clone, PartialEq)]
pub struct NestedOrder {
    /// Per block, the dense MLP's original neuron at each new position (empty for a mixture of
    /// experts).
    pub ffn: Vec<Vec<usize>>,
    /// Per block, each expert's original neuron at each new position (empty for a dense
    /// block); every expert is sorted by its own scores.
    pub experts: Vec<Vec<(Expert, Vec<usize>)>>,
    /// Per block, the original query head at each new position.
    pub heads: Vec<Vec<usize>>,
}

/// Indices of `scores` by decreasing score (ties: lower index first).
fn descending(scores: &[f64]) -> Vec<usize> {
    let mut idx: Vec<usize> = (0..scores.len()).collect();
    idx.sort_by(|&a, &b| scores[b].total_cmp(&scores[a]).then(a.cmp(&b)));
    idx
}

/// The head order for one block: key/value groups by decreasing summed head score, and
/// inside each group its heads by decreasing score.
fn head_order(scores: &[f64], kv_heads: usize) -> Vec<usize> {
    let g = scores.len() / kv_heads;
    let group_scores: Vec<f64> = (0..kv_heads)
        .map(|k| scores[k * g..(k + 1) * g].iter().sum())
        .collect();
    descending(&group_scores)
        .into_iter()
        .flat_map(|k| {
            descending(&scores[k * g..(k + 1) * g])
                .into_iter()
                .map(move |h| k * g + h)
        })
        .collect()
}

/// Reorders every block of `model` by importance measured on `calibration` windows (see
/// [`Importance`]; activation energy is a good default, magnitude needs no data), so that every
/// prefix keeps the most important neurons and key/value groups. The model's function is
/// unchanged. `progress(block, blocks)` reports scoring.
pub fn sort_by_importance(
    model: &mut LlamaModel,
    calibration: &[Vec<u32>],
    ffn: Importance,
    heads: Importance,
    progress: impl FnMut(usize, usize),
) -> Result<NestedOrder, DistillError> {
    let scores = structure_scores(model, calibration, ffn, heads, progress)?;
    let mut order = NestedOrder {
        ffn: Vec::new(),
        heads: Vec::new(),
        experts: Vec::new(),
    };
    for (b, s) in scores.iter().enumerate() {
        let f = descending(&s.ffn);
        let h = head_order(&s.heads, model.head_shape(b).kv_heads);
        if !f.is_empty() {
            model.reorder_ffn_neurons(b, &f)?;
        }
        let mut experts = Vec::with_capacity(s.experts.len());
        for (e, sc) in &s.experts {
            let o = descending(sc);
            model.reorder_unit_neurons(b, Some(*e), &o)?;
            experts.push((*e, o));
        }
        model.reorder_heads(b, &h)?;
        order.ffn.push(f);
        order.experts.push(experts);
        order.heads.push(h);
    }
    Ok(order)
}

/// [`sort_by_importance`] with activation energy for both neurons and heads — the default
/// post-hoc nesting.
pub fn sort_by_activation(
    model: &mut LlamaModel,
    calibration: &[Vec<u32>],
) -> Result<NestedOrder, DistillError> {
    sort_by_importance(
        model,
        calibration,
        Importance::Activation,
        Importance::Activation,
        |_, _| {},
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn groups_move_whole_and_heads_sort_inside_them() {
        // 6 heads in 3 groups of 2: group sums 3, 10, 1 → groups 1, 0, 2.
        let s = [1.0, 2.0, 9.0, 1.0, 0.5, 0.5];
        assert_eq!(head_order(&s, 3), vec![2, 3, 1, 0, 4, 5]);
        assert_eq!(descending(&[0.1, 0.3, 0.2]), vec![1, 2, 0]);
    }
}
