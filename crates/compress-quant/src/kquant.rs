//! Fitting grids to llama.cpp's k-quant super-blocks ([`compress_core::kquant`]), so that GPTQ
//! (or RTN) codes can be written as `Q2_K` … `Q6_K` with no requantization.
//!
//! [`snap_super_block`] replaces the grids of one 256-weight super-block by the nearest grids of
//! the format's two-level form: scales `d · k_i` ([`snap_two_level`]: `d` rounded up so no group
//! is clipped, with only [`KQuant::super_scale_bits`] significant bits so that every `d · k_i` is
//! an f16, the scale the packed layout stores). For the symmetric formats (Q3_K, Q6_K) the packed
//! weights then *are* the k-quant's values, bit for bit. For the asymmetric ones the minimum is
//! snapped the same way (`dmin · m_i`) and the packed zero point `z_i = dmin·m_i / (d·k_i)` is
//! rounded to f16, so the two differ by at most half an f16 ulp of `z_i` times the scale (≤ 2⁻⁸
//! of a step for 4-bit codes). The minimum is clamped to `≤ 0` (`m_i ≥ 0`) as llama.cpp's
//! quantizer does: a group of only positive weights is refitted on a range that includes 0.
//!
//! Quantizers apply it through [`GridConfig::k_quant`]: RTN snaps each row's grids before
//! choosing codes, GPTQ fits every grid up front from the original weights (static groups) and
//! snaps them before the sweep. Rows that are not a whole number of super-blocks are left as
//! plain groups ([`snap_row`] says so): llama.cpp stores such tensors in another type (Q4_1 for
//! Q4_K's codes, Q5_1 for Q5_K's), and so does this project's GGUF writer.

use compress_core::kquant::{snap_two_level, KQuant, SUPER_BLOCK};
use compress_core::packed::Symmetry;
use half::f16;

use crate::grid::{fit_grid, Grid, GridConfig};

/// Replaces the `grids` of one super-block (its [`KQuant::group`]-sized groups in order, covering
/// `values`, with optional per-weight `importance` for refits) by grids of `format`'s form; see
/// the module docs. `values.len()` is [`SUPER_BLOCK`] and `grids.len()` is `values.len() / group`.
pub fn snap_super_block(
    values: &[f32],
    importance: Option<&[f32]>,
    grids: &mut [Grid],
    format: KQuant,
    cfg: &GridConfig,
) {
    let group = format.group();
    debug_assert_eq!(grids.len() * group, values.len());
    let bits = format.super_scale_bits();
    let scheme = format.scheme();
    if format.symmetry() == Symmetry::Asymmetric {
        // ggml's minimum is subtracted (`m_i ≥ 0`): refit any group whose grid does not reach 0.
        for (gi, g) in grids.iter_mut().enumerate() {
            if g.scale.to_f32() < 0.0 || g.zero.to_f32() < 0.0 {
                let chunk = &values[gi * group..(gi + 1) * group];
                let mut with_zero = chunk.to_vec();
                with_zero.push(0.0);
                let imp = importance.map(|a| {
                    let mut v = a[gi * group..(gi + 1) * group].to_vec();
                    v.push(0.0);
                    v
                });
                let cfg = GridConfig {
                    k_quant: None,
                    ..*cfg
                };
                *g = fit_grid(
                    &with_zero,
                    imp.as_deref(),
                    scheme.bits,
                    scheme.symmetry,
                    &cfg,
                );
                if g.zero.to_f32() < 0.0 || g.scale.to_f32() < 0.0 {
                    // A refit that still misses 0: the plain min–max grid over [min(lo, 0), hi].
                    *g = fit_grid(
                        &with_zero,
                        None,
                        scheme.bits,
                        scheme.symmetry,
                        &GridConfig::default(),
                    );
                }
            }
        }
    }
    let scales: Vec<f32> = grids.iter().map(|g| g.scale.to_f32()).collect();
    let (d, ks) = snap_two_level(&scales, format.scale_range(), bits);
    match format.symmetry() {
        Symmetry::Symmetric => {
            for (g, k) in grids.iter_mut().zip(ks) {
                g.scale = exact_f16(d * k as f32);
            }
        }
        Symmetry::Asymmetric => {
            let mins: Vec<f32> = grids
                .iter()
                .map(|g| g.scale.to_f32() * g.zero.to_f32())
                .collect();
            let (dmin, ms) = snap_two_level(&mins, (0, format.scale_range().1), bits);
            for ((g, k), m) in grids.iter_mut().zip(ks).zip(ms) {
                let s = d * k as f32;
                g.scale = exact_f16(s);
                g.zero = if s == 0.0 {
                    f16::ZERO
                } else {
                    f16::from_f32(dmin * m as f32 / s)
                };
            }
        }
    }
}

/// `v` as f16, which the construction guarantees is exact.
fn exact_f16(v: f32) -> f16 {
    let h = f16::from_f32(v);
    debug_assert_eq!(h.to_f32(), v, "d·k must be an f16");
    h
}

/// Snaps every whole super-block of a row's grids (`grids[i]` covers `row[i·group..]`); `false`
/// (nothing changed) when the row is not a whole number of super-blocks — llama.cpp stores such
/// tensors in another type, and so will the GGUF writer.
pub fn snap_row(
    row: &[f32],
    importance: Option<&[f32]>,
    grids: &mut [Grid],
    format: KQuant,
    cfg: &GridConfig,
) -> bool {
    if row.is_empty() || !row.len().is_multiple_of(SUPER_BLOCK) {
        return false;
    }
    let per = SUPER_BLOCK / format.group();
    for (b, (vals, gs)) in row
        .chunks_exact(SUPER_BLOCK)
        .zip(grids.chunks_exact_mut(per))
        .enumerate()
    {
        let imp = importance.map(|a| &a[b * SUPER_BLOCK..(b + 1) * SUPER_BLOCK]);
        snap_super_block(vals, imp, gs, format, cfg);
    }
    true
}

#[cfg(test)]
mod tests {
    use super::*;
    use compress_core::kquant::fit_two_level;
    use proptest::prelude::*;

    fn row(seed: u64, n: usize) -> Vec<f32> {
        let mut x = seed | 1;
        (0..n)
            .map(|i| {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                let u = (x >> 40) as f32 / (1u64 << 24) as f32 - 0.5;
                // Groups of very different ranges, as in real weights.
                u * (0.01 + 0.2 * ((i / 16) % 7) as f32)
            })
            .collect()
    }

    fn fitted(values: &[f32], format: KQuant) -> Vec<Grid> {
        let s = format.scheme();
        values
            .chunks(format.group())
            .map(|c| fit_grid(c, None, s.bits, s.symmetry, &GridConfig::default()))
            .collect()
    }

    proptest! {
        #[test]
        fn snapped_grids_have_the_two_level_form(seed in 1u64..1000, fi in 0usize..5) {
            let format = KQuant::ALL[fi];
            let values = row(seed, SUPER_BLOCK);
            let mut grids = fitted(&values, format);
            snap_super_block(&values, None, &mut grids, format, &GridConfig::default());
            let scales: Vec<f32> = grids.iter().map(|g| g.scale.to_f32()).collect();
            // Every scale is d · k_i for one f16 d (the GGUF writer's search finds it exactly).
            let bits = format.super_scale_bits();
            let (d, ks, err) = fit_two_level(&scales, None, format.scale_range(), bits);
            prop_assert_eq!(err, 0.0);
            for (&s, &k) in scales.iter().zip(&ks) {
                prop_assert_eq!(d.to_f32() * k as f32, s);
            }
            if format.symmetry() == Symmetry::Asymmetric {
                // The zero points stand for minimums dmin · m_i up to their f16 rounding: in steps
                // of each group, the recovered minimums are within half an ulp of the zeros.
                let mins: Vec<f32> = grids.iter().map(|g| g.scale.to_f32() * g.zero.to_f32()).collect();
                let per_step: Vec<f32> = grids.iter().map(|g| 1.0 / g.scale.to_f32()).collect();
                let (_, _, err) = fit_two_level(&mins, Some(&per_step), (0, format.scale_range().1), bits);
                let half_ulp = grids
                    .iter()
                    .map(|g| (f16::from_bits(g.zero.to_bits() + 1).to_f32() - g.zero.to_f32()) * 0.5)
                    .fold(0f32, f32::max);
                prop_assert!(err <= half_ulp * 1.001, "{} > {}", err, half_ulp);
            }
        }
    }

    #[test]
    fn snapping_costs_little_reconstruction_error() {
        for format in KQuant::ALL {
            let values = row(7, 4 * SUPER_BLOCK);
            let plain = fitted(&values, format);
            let mut snapped = plain.clone();
            assert!(snap_row(
                &values,
                None,
                &mut snapped,
                format,
                &GridConfig::default()
            ));
            let err = |gs: &[Grid]| -> f64 {
                values
                    .chunks(format.group())
                    .zip(gs)
                    .map(|(c, g)| g.error(c, None))
                    .sum()
            };
            let (e0, e1) = (err(&plain), err(&snapped));
            // Scales move by at most half a step of d (≲ 1/2·reach of the largest): the squared
            // error grows by well under a third at every width.
            assert!(e1 < e0 * 1.3, "{format}: {e1} vs plain {e0}");
        }
    }

    #[test]
    fn positive_groups_get_a_minimum_at_or_below_zero() {
        let mut values = row(3, SUPER_BLOCK);
        for v in &mut values[..32] {
            *v = v.abs() + 0.5;
        }
        let mut grids = fitted(&values, KQuant::Q4K);
        assert!(grids[0].zero.to_f32() < 0.0, "the plain fit has min > 0");
        snap_super_block(
            &values,
            None,
            &mut grids,
            KQuant::Q4K,
            &GridConfig::default(),
        );
        assert!(grids[0].zero.to_f32() >= 0.0);
        for &w in &values[..32] {
            // The range still covers the group: no weight saturates by more than a step.
            assert!((grids[0].round(w) - w).abs() <= grids[0].scale.to_f32());
        }
    }

    #[test]
    fn rows_of_partial_super_blocks_are_left_alone() {
        let values = row(1, 576);
        let mut grids = fitted(&values, KQuant::Q6K);
        let before = grids.clone();
        assert!(!snap_row(
            &values,
            None,
            &mut grids,
            KQuant::Q6K,
            &GridConfig::default()
        ));
        assert_eq!(grids, before);
    }
}
