//! Mask selection from per-weight scores, shared by the score-based pruners (magnitude, Wanda).
//!
//! A pruner scores every weight (higher = more important) and prunes the lowest scores within
//! each *comparison group*: the whole matrix, each output row, or — for N:M — each run of `M`
//! consecutive weights of a row. Counts follow [`compress_core::sparsity`]: cumulative rounding,
//! each group within one weight of its share and the layer total exactly `round(s · out · in)`.

use compress_core::sparsity::{lowest_k, n_m_quota, quota, SparsityMask, SparsityPattern};

/// Which weights compete with each other for an unstructured sparsity budget.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Comparison {
    /// All weights of the layer (magnitude pruning's usual rule).
    Layer,
    /// The weights of one output row (Wanda's rule: every output keeps the same share, to within
    /// one weight).
    Row,
}

/// The mask that prunes the lowest `scores` (row-major `[out, n]`) under `pattern`; N:M ignores
/// `comparison` (its groups are the runs).
pub fn select_mask(
    scores: &[f32],
    out: usize,
    n: usize,
    pattern: SparsityPattern,
    comparison: Comparison,
) -> SparsityMask {
    let mut kept = vec![true; out * n];
    let mut picked = Vec::new();
    match pattern {
        SparsityPattern::Unstructured(s) => match comparison {
            Comparison::Layer => lowest_k(scores, quota(s, 0, out * n), &mut picked),
            Comparison::Row => {
                let mut row_picked = Vec::new();
                for r in 0..out {
                    row_picked.clear();
                    let k = quota(s, r * n, (r + 1) * n);
                    lowest_k(&scores[r * n..(r + 1) * n], k, &mut row_picked);
                    picked.extend(row_picked.iter().map(|&c| r * n + c));
                }
            }
        },
        SparsityPattern::NM { n: keep, m } => {
            let mut run_picked = Vec::new();
            for r in 0..out {
                for start in (0..n).step_by(m) {
                    let end = (start + m).min(n);
                    run_picked.clear();
                    let k = n_m_quota(keep, m, end - start);
                    lowest_k(&scores[r * n + start..r * n + end], k, &mut run_picked);
                    picked.extend(run_picked.iter().map(|&c| r * n + start + c));
                }
            }
        }
    }
    for i in picked {
        kept[i] = false;
    }
    SparsityMask::from_kept(out, n, &kept)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn scores(len: usize, seed: u64) -> Vec<f32> {
        let mut s = seed | 1;
        (0..len)
            .map(|_| {
                s ^= s << 13;
                s ^= s >> 7;
                s ^= s << 17;
                (s >> 40) as f32
            })
            .collect()
    }

    #[test]
    fn lowest_scores_are_pruned() {
        // Row-major 2×4; per-row at 50% prunes the two smallest of each row.
        let s = [4.0f32, 1.0, 3.0, 2.0, 0.5, 0.6, 9.0, 8.0];
        let m = select_mask(
            &s,
            2,
            4,
            SparsityPattern::Unstructured(0.5),
            Comparison::Row,
        );
        let kept: Vec<bool> = (0..8).map(|i| m.is_kept_flat(i)).collect();
        assert_eq!(kept, [true, false, true, false, false, false, true, true]);
        // Per layer the four smallest overall: 0.5, 0.6, 1, 2.
        let m = select_mask(
            &s,
            2,
            4,
            SparsityPattern::Unstructured(0.5),
            Comparison::Layer,
        );
        let kept: Vec<bool> = (0..8).map(|i| m.is_kept_flat(i)).collect();
        assert_eq!(kept, [true, false, true, false, false, false, true, true]);
        let s = [4.0f32, 1.0, 3.0, 2.0, 0.5, 0.6, 9.0, 0.1];
        let m = select_mask(
            &s,
            2,
            4,
            SparsityPattern::Unstructured(0.5),
            Comparison::Layer,
        );
        assert_eq!(m.pruned_in_row(0), 1);
        assert_eq!(m.pruned_in_row(1), 3);
    }

    proptest! {
        /// Every comparison group prunes exactly its quota, and the layer total is exact.
        #[test]
        fn counts_are_exact(out in 1usize..9, n in 1usize..70, s in 0.0f64..0.95, seed in 0u64..1000) {
            let sc = scores(out * n, seed);
            let total = (s * (out * n) as f64).round() as usize;
            for cmp in [Comparison::Layer, Comparison::Row] {
                let m = select_mask(&sc, out, n, SparsityPattern::Unstructured(s), cmp);
                prop_assert_eq!(m.pruned(), total);
                if cmp == Comparison::Row {
                    for r in 0..out {
                        prop_assert_eq!(m.pruned_in_row(r), quota(s, r * n, (r + 1) * n));
                    }
                }
            }
        }

        /// N:M masks keep exactly N in every full run and prune the tail's share.
        #[test]
        fn n_m_pattern_is_exact(out in 1usize..6, n in 1usize..50, nm in prop_oneof![Just((2usize, 4usize)), Just((4, 8)), Just((1, 4))], seed in 0u64..1000) {
            let (keep, m) = nm;
            let sc = scores(out * n, seed);
            let mask = select_mask(&sc, out, n, SparsityPattern::NM { n: keep, m }, Comparison::Row);
            prop_assert!(mask.satisfies_n_m(keep, m));
            for r in 0..out {
                for start in (0..n).step_by(m) {
                    let end = (start + m).min(n);
                    let pruned = (start..end).filter(|&c| !mask.is_kept(r, c)).count();
                    prop_assert_eq!(pruned, n_m_quota(keep, m, end - start));
                }
            }
        }
    }
}
