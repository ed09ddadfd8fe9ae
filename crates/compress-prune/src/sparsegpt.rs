//! SparseGPT (Frantar & Alistarh 2023, "SparseGPT: Massive Language Models Can Be Accurately
//! Pruned in One Shot", arXiv:2301.00774), unstructured or N:M, optionally quantizing the kept
//! weights in the same sweep (the paper's joint mode).
//!
//! SparseGPT solves the same layer-wise problem as GPTQ — keep `‖XWᵀ − XŴᵀ‖²` small — with the
//! same machinery: the damped inverse Hessian of the layer's inputs and one column sweep that
//! spreads each fixed column's error over the columns not yet visited. Here the "rounding" of a
//! pruned weight is to 0, and which weights to prune is decided inside the sweep by the OBS
//! saliency `w² / U_jj²` of the weights *as updated so far*, where `U_jj²` is the inverse
//! Hessian's diagonal entry once the columns already visited are eliminated (the reference
//! implementation's `W² / diag(Hinv₁)²`). Both live in compress-quant
//! ([`compress_quant::hessian`], [`compress_quant::obs`]) and are shared with GPTQ, not copied.
//!
//! With `quant` set the sweep also rounds every kept weight onto its group's grid, so pruning and
//! quantization errors are compensated together; the result is packed codes plus the mask.
//!
//! A layer that is already quantized (GPTQ, then SparseGPT) is pruned without any weight update —
//! moving the kept weights would take them off their grid — by the single-weight OBS saliency
//! `w² / [H⁻¹]_jj`, compared within each output row; its codes are kept and the mask attached.

use compress_core::compressor::{
    CompressError, Compressor, LayerStats, LayerView, LayerWeights, StatsRequest,
};
use compress_core::sparsity::SparsityPattern;
use compress_quant::hessian::prepare_hessian;
use compress_quant::obs::{obs_prune, obs_quantize, SweepQuant};
use compress_quant::rtn::scheme_tag;

use crate::select::{select_mask, Comparison};
use crate::{check_pattern, pattern_name, pruned_result};

/// SparseGPT configuration.
#[derive(Debug, Clone, PartialEq)]
pub struct SparseGpt {
    /// What to produce.
    pub pattern: SparsityPattern,
    /// Damping as a fraction of the mean Hessian diagonal (0.01 in the paper).
    pub damp: f64,
    /// Columns per block: mask selection and lazy updates (128 in the paper).
    pub block_size: usize,
    /// Quantize the kept weights in the same sweep (joint mode).
    pub quant: Option<SweepQuant>,
}

impl SparseGpt {
    /// The paper's defaults (damping 0.01, blocks of 128), pruning only.
    pub fn new(pattern: SparsityPattern) -> Self {
        Self {
            pattern,
            damp: 0.01,
            block_size: 128,
            quant: None,
        }
    }

    /// The same, also quantizing the kept weights in the sweep.
    pub fn joint(pattern: SparsityPattern, quant: SweepQuant) -> Self {
        Self {
            quant: Some(quant),
            ..Self::new(pattern)
        }
    }
}

impl Compressor for SparseGpt {
    fn name(&self) -> String {
        let base = pattern_name("sparsegpt", &self.pattern);
        match &self.quant {
            Some(q) => format!("{base}+{}", scheme_tag(&q.scheme)),
            None => base,
        }
    }

    fn stats(&self) -> StatsRequest {
        StatsRequest {
            gram: true,
            ..StatsRequest::NONE
        }
    }

    fn compress(
        &self,
        layer: LayerView<'_>,
        stats: &LayerStats,
    ) -> Result<LayerWeights, CompressError> {
        check_pattern(layer.path, &self.pattern)?;
        let gram = stats.require_gram(layer.path, &self.name())?;
        let hi = prepare_hessian(
            layer.path,
            gram,
            layer.in_features,
            stats.tokens,
            self.damp,
            false,
        )?;
        if let Some(packed) = layer.packed {
            // Already quantized (e.g. GPTQ, then SparseGPT): choose the mask by OBS saliency
            // w² / [H⁻¹]_jj but update nothing, so the kept weights stay on their grid.
            let n = layer.in_features;
            let mut hinv_diag = vec![0f32; n];
            for k in 0..n {
                for (j, d) in hinv_diag.iter_mut().enumerate().skip(k) {
                    *d += hi.upper[k * n + j].powi(2);
                }
            }
            let dense = packed.dequantize();
            let scores: Vec<f32> = dense
                .iter()
                .enumerate()
                .map(|(i, &w)| w * w / hinv_diag[i % n])
                .collect();
            let mask = select_mask(
                &scores,
                layer.out_features,
                n,
                self.pattern,
                Comparison::Row,
            );
            return pruned_result(&layer, mask);
        }
        match &self.quant {
            Some(q) => obs_quantize(layer, &hi, self.block_size, q, Some(self.pattern))
                .map(LayerWeights::Quantized),
            None => obs_prune(layer, &hi, self.block_size, Some(self.pattern)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use compress_core::packed::{QuantScheme, Symmetry};
    use compress_quant::grid::GridConfig;

    /// Correlated synthetic inputs (a random walk across features); pure maths.
    fn problem(out: usize, n: usize, tokens: usize) -> (Vec<f32>, Vec<f32>, Vec<f32>) {
        let mut s = 0x9e37_79b9_u64;
        let mut rnd = move || {
            s ^= s << 13;
            s ^= s >> 7;
            s ^= s << 17;
            (s >> 40) as f32 / (1u64 << 24) as f32 - 0.5
        };
        let mut x = vec![0f32; tokens * n];
        for t in 0..tokens {
            let mut acc = 0.0;
            for j in 0..n {
                acc = 0.7 * acc + rnd();
                x[t * n + j] = acc * if j % 5 == 0 { 3.0 } else { 1.0 };
            }
        }
        let w: Vec<f32> = (0..out * n).map(|_| rnd()).collect();
        let mut g = vec![0f32; n * n];
        for t in 0..tokens {
            let row = &x[t * n..(t + 1) * n];
            for i in 0..n {
                for j in 0..n {
                    g[i * n + j] += row[i] * row[j];
                }
            }
        }
        (w, x, g)
    }

    fn out_err(w: &[f32], w_hat: &[f32], x: &[f32], out: usize, n: usize) -> f64 {
        let mut e = 0f64;
        for t in x.chunks_exact(n) {
            for r in 0..out {
                let d: f64 = (0..n)
                    .map(|j| (t[j] * (w[r * n + j] - w_hat[r * n + j])) as f64)
                    .sum();
                e += d * d;
            }
        }
        e
    }

    #[test]
    fn beats_magnitude_and_wanda_and_keeps_exact_patterns() {
        let (out, n, tokens) = (12, 48, 256);
        let (w, x, g) = problem(out, n, tokens);
        let stats = LayerStats {
            tokens,
            gram: Some(g.clone()),
            col_sq_norms: Some((0..n).map(|j| g[j * n + j]).collect()),
            abs_max: None,
        };
        let view = LayerView::new("t", &w, out, n);
        for pattern in [
            SparsityPattern::Unstructured(0.5),
            SparsityPattern::NM { n: 2, m: 4 },
        ] {
            let cfg = SparseGpt {
                block_size: 20, // not a divisor of 48 (rounded to 20 for 2:4): ragged last block
                ..SparseGpt::new(pattern)
            };
            let sg = cfg.compress(view, &stats).unwrap();
            let mask = sg.mask().unwrap();
            match pattern {
                SparsityPattern::NM { n: k, m } => assert!(mask.satisfies_n_m(k, m)),
                SparsityPattern::Unstructured(s) => {
                    assert_eq!(mask.pruned(), (s * (out * n) as f64).round() as usize)
                }
            }
            let dense = sg.to_dense();
            assert!((0..out * n).all(|i| mask.is_kept_flat(i) || dense[i] == 0.0));
            let wanda = crate::wanda::Wanda::new(pattern)
                .compress(view, &stats)
                .unwrap();
            let mag = crate::magnitude::Magnitude::new(pattern)
                .compress(view, &stats)
                .unwrap();
            let (es, ew, em) = (
                out_err(&w, &dense, &x, out, n),
                out_err(&w, &wanda.to_dense(), &x, out, n),
                out_err(&w, &mag.to_dense(), &x, out, n),
            );
            assert!(
                es < ew && ew < em,
                "{pattern:?}: sparsegpt {es} wanda {ew} magnitude {em}"
            );
            assert_eq!(cfg.compress(view, &stats).unwrap(), sg, "deterministic");
        }
    }

    #[test]
    fn joint_mode_packs_codes_with_the_mask_and_respects_a_prior_mask() {
        let (out, n, tokens) = (8, 32, 128);
        let (w, x, g) = problem(out, n, tokens);
        let stats = LayerStats {
            tokens,
            gram: Some(g),
            ..LayerStats::default()
        };
        let view = LayerView::new("t", &w, out, n);
        let quant = SweepQuant {
            scheme: QuantScheme::new(4, Some(16), Symmetry::Asymmetric).unwrap(),
            grid: GridConfig::default(),
            static_groups: false,
        };
        let pattern = SparsityPattern::NM { n: 2, m: 4 };
        let joint = SparseGpt::joint(pattern, quant)
            .compress(view, &stats)
            .unwrap();
        let LayerWeights::Quantized(p) = &joint else {
            panic!("joint mode returns packed codes")
        };
        let mask = p.mask().unwrap();
        assert!(mask.satisfies_n_m(2, 4));
        let d = p.dequantize();
        // Asymmetric grids need not hold 0: the mask makes pruned weights exactly 0.
        assert!((0..out * n).all(|i| mask.is_kept_flat(i) || d[i] == 0.0));
        // 4-bit codes + (f16 scale + f16 zero) per 16 weights + a 1-bit mask.
        assert_eq!(joint.bits_per_weight(), 4.0 + 2.0 + 1.0);
        // Quantization adds little to the pruning error (4-bit codes vs 50% of the weights
        // removed), and the joint result still beats unquantized magnitude pruning.
        let pruned = SparseGpt::new(pattern).compress(view, &stats).unwrap();
        let (ej, ep) = (
            out_err(&w, &d, &x, out, n),
            out_err(&w, &pruned.to_dense(), &x, out, n),
        );
        let magnitude = crate::magnitude::Magnitude::new(pattern)
            .compress(view, &stats)
            .unwrap();
        let em = out_err(&w, &magnitude.to_dense(), &x, out, n);
        assert!(
            ej < 1.1 * ep && ej < em,
            "joint {ej} sparsegpt {ep} magnitude {em}"
        );

        // GPTQ on the pruned layer keeps its mask, and relative to its own (sparse) input it
        // beats RTN with the same mask: masked weights are fixed at 0, the kept ones absorb
        // their rounding error.
        let m = pruned.mask().unwrap().clone();
        let sparse = pruned.to_dense();
        let view2 = LayerView {
            mask: Some(&m),
            ..LayerView::new("t", &sparse, out, n)
        };
        let gptq = compress_quant::gptq::Gptq::new(quant.scheme)
            .compress(view2, &stats)
            .unwrap();
        assert_eq!(gptq.mask(), Some(&m), "GPTQ keeps the prior mask");
        let gd = gptq.to_dense();
        assert!((0..out * n).all(|i| m.is_kept_flat(i) || gd[i] == 0.0));
        let rtn = compress_quant::rtn::Rtn::new(quant.scheme)
            .compress(view2, &stats)
            .unwrap()
            .with_mask(&m);
        let (eg, er) = (
            out_err(&sparse, &gd, &x, out, n),
            out_err(&sparse, &rtn.to_dense(), &x, out, n),
        );
        assert!(eg < 0.8 * er, "gptq {eg} rtn {er}");
    }
}
