//! The layer-wise Hessian machinery shared by GPTQ and SparseGPT (Frantar et al. 2022, 2023).
//!
//! For the layer objective `‖X Wᵀ − X Ŵᵀ‖²` every output row has the same Hessian `H = 2 XᵀX`
//! (the factor 2 and the token count cancel in everything below, so `H = XᵀX / tokens` here). The
//! optimal-brain-surgeon update after fixing column `j` of a row to `q` is
//! `δ = −(w_j − q) / [H⁻¹]_jj · [H⁻¹]_{j,:}` over the not-yet-fixed columns; GPTQ's observation
//! is that the `H⁻¹` rows it needs, after eliminating columns in order, are exactly the rows of
//! the upper Cholesky factor `U` of `H⁻¹ = UᵀU`, so one factorization serves the whole sweep.
//!
//! Preparation, in the order of the reference implementation:
//! 1. columns whose input is always zero (`H_jj = 0`, "dead") get `H_jj = 1` and are reported so
//!    the caller zeroes their weights (they never affect the output);
//! 2. optional activation order: columns sorted by decreasing `H_jj`, so the columns with the
//!    largest inputs are quantized first while the most columns remain to absorb their error;
//! 3. damping `H += λ · mean(diag H) · I` (λ = 0.01 by default) for a well-conditioned inverse —
//!    retried with 10× larger λ (up to three times) if the Cholesky factorization still fails;
//! 4. `U = chol(H⁻¹)ᵀ`, in f64 (from one factorization of `H` with its columns reversed, see
//!    `inverse_upper_factor`), returned in f32 for the sweep.

use compress_core::compressor::{ensure_finite, CompressError};
use faer::dyn_stack::{MemBuffer, MemStack};
use faer::linalg::cholesky::llt::factor::{cholesky_in_place, cholesky_in_place_scratch};
use faer::linalg::triangular_inverse::invert_lower_triangular;
use faer::{Mat, Par};

/// The inverse-Hessian factor a GPTQ/SparseGPT sweep runs on.
#[derive(Debug, Clone, PartialEq)]
pub struct HessianInverse {
    /// Number of input columns.
    pub n: usize,
    /// Upper-triangular `U` with `H⁻¹ = UᵀU`, row-major `[n, n]`, in the permuted column order.
    pub upper: Vec<f32>,
    /// `perm[k]` = original column handled at sweep position `k` (identity without act-order).
    pub perm: Vec<usize>,
    /// Original columns whose inputs were all zero; their weights must be zeroed.
    pub dead: Vec<usize>,
    /// Damping fraction λ actually used (larger than asked if a retry was needed).
    pub damp_used: f64,
}

/// Builds the damped, optionally permuted inverse-Hessian factor from `gram = XᵀX` (`[n, n]`,
/// row-major) over `tokens` calibration tokens.
pub fn prepare_hessian(
    path: &str,
    gram: &[f32],
    n: usize,
    tokens: usize,
    damp: f64,
    act_order: bool,
) -> Result<HessianInverse, CompressError> {
    if gram.len() != n * n {
        return Err(CompressError::Shape {
            layer: path.into(),
            message: format!(
                "input Gram matrix has {} entries, expected {n}×{n}",
                gram.len()
            ),
        });
    }
    if !(damp >= 0.0 && damp.is_finite()) {
        return Err(CompressError::Shape {
            layer: path.into(),
            message: format!("damping fraction {damp} must be a finite value ≥ 0"),
        });
    }
    ensure_finite(path, "input Gram matrix", gram)?;
    let inv_t = 1.0 / tokens.max(1) as f64;
    let mut diag: Vec<f64> = (0..n).map(|i| gram[i * n + i] as f64 * inv_t).collect();
    let dead: Vec<usize> = (0..n).filter(|&i| diag[i] <= 0.0).collect();
    for &i in &dead {
        diag[i] = 1.0;
    }
    let mut perm: Vec<usize> = (0..n).collect();
    if act_order {
        // Stable sort: ties keep their original order, so the permutation is deterministic.
        perm.sort_by(|&a, &b| diag[b].total_cmp(&diag[a]));
    }
    let mean_diag = diag.iter().sum::<f64>() / n.max(1) as f64;
    // `H` permuted and damped, its columns reversed (see `inverse_upper_factor`), built straight
    // from the Gram matrix for each attempt: with the factor and its inverse, two `n × n` f64
    // matrices are live at most (38 MB for a 1536-wide layer) instead of five.
    let reversed = |add: f64| {
        Mat::<f64>::from_fn(n, n, |i, j| {
            let (a, b) = (perm[n - 1 - i], perm[n - 1 - j]);
            if a == b {
                diag[a] + add
            } else if diag_is_dead(&dead, a) || diag_is_dead(&dead, b) {
                0.0
            } else {
                gram[a * n + b] as f64 * inv_t
            }
        })
    };
    let mut lambda = damp;
    for attempt in 0..4 {
        let add = lambda.max(if attempt > 0 { 1e-6 } else { 0.0 }) * mean_diag;
        if let Some(upper) = inverse_upper_factor(reversed(add)) {
            return Ok(HessianInverse {
                n,
                upper,
                perm,
                dead,
                damp_used: lambda,
            });
        }
        lambda = if lambda > 0.0 { lambda * 10.0 } else { 1e-6 };
    }
    Err(CompressError::Numerical {
        layer: path.into(),
        message: format!(
            "the input Hessian is not positive definite even with damping {lambda:.1e}·mean(diag); \
             use more calibration tokens"
        ),
    })
}

fn diag_is_dead(dead: &[usize], i: usize) -> bool {
    dead.binary_search(&i).is_ok()
}

/// `U` (row-major, f32) with `H⁻¹ = UᵀU` from `reversed = J H J`, or `None` if `H` is not
/// positive definite.
///
/// With `J` the reversal permutation and `J H J = L Lᵀ` (Cholesky),
/// `H⁻¹ = (J L⁻ᵀ J)(J L⁻¹ J)` and `J L⁻¹ J` is upper triangular with a positive diagonal, so it
/// is the `U` sought (the upper Cholesky factor of `H⁻¹` is unique). One factorization (in place)
/// and one triangular inverse (`2n³/3` flops) replace the reference's factorization, inverse and
/// second factorization of the inverse (`4n³/3`), and no explicit `H⁻¹` is formed.
fn inverse_upper_factor(mut reversed: Mat<f64>) -> Option<Vec<f32>> {
    let n = reversed.nrows();
    let par = Par::rayon(0);
    let mut buf = MemBuffer::new(cholesky_in_place_scratch::<f64>(n, par, Default::default()));
    cholesky_in_place(
        reversed.as_mut(),
        Default::default(),
        par,
        MemStack::new(&mut buf),
        Default::default(),
    )
    .ok()?;
    drop(buf);
    let mut l_inv = Mat::<f64>::zeros(n, n);
    invert_lower_triangular(l_inv.as_mut(), reversed.as_ref(), par);
    drop(reversed);
    let mut upper = vec![0f32; n * n];
    for i in 0..n {
        for j in i..n {
            // U = J L⁻¹ J: U[i][j] = L⁻¹[n−1−i][n−1−j], on or below L⁻¹'s diagonal.
            let v = l_inv[(n - 1 - i, n - 1 - j)];
            if !v.is_finite() {
                return None;
            }
            upper[i * n + j] = v as f32;
        }
    }
    Some(upper)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn factor_reconstructs_the_damped_inverse() {
        // X: 6 tokens × 3 features, with column 1 dead.
        let x = [
            [1.0f32, 0.0, 2.0],
            [0.5, 0.0, -1.0],
            [-1.0, 0.0, 0.5],
            [2.0, 0.0, 1.0],
            [0.0, 0.0, 1.5],
            [1.0, 0.0, -0.5],
        ];
        let mut g = vec![0f32; 9];
        for t in &x {
            for i in 0..3 {
                for j in 0..3 {
                    g[i * 3 + j] += t[i] * t[j];
                }
            }
        }
        let hi = prepare_hessian("t", &g, 3, 6, 0.01, true).unwrap();
        assert_eq!(hi.dead, vec![1]);
        // diag = [7.25, 0, 8.75] / 6 with the dead column set to 1 → act-order puts column 2
        // first and the dead one last.
        assert_eq!(hi.perm, vec![2, 0, 1]);
        // Rebuild H (permuted, damped) and check (UᵀU)·H = I.
        let mut diag: Vec<f64> = (0..3).map(|i| g[i * 3 + i] as f64 / 6.0).collect();
        diag[1] = 1.0;
        let mean = diag.iter().sum::<f64>() / 3.0;
        let h = |i: usize, j: usize| -> f64 {
            let (a, b) = (hi.perm[i], hi.perm[j]);
            if a == b {
                diag[a] + 0.01 * mean
            } else if a == 1 || b == 1 {
                0.0
            } else {
                g[a * 3 + b] as f64 / 6.0
            }
        };
        let u = |i: usize, j: usize| hi.upper[i * 3 + j] as f64;
        for i in 0..3 {
            for j in 0..3 {
                let mut v = 0.0;
                for k in 0..3 {
                    let hinv_ik: f64 = (0..3).map(|m| u(m, i) * u(m, k)).sum();
                    v += hinv_ik * h(k, j);
                }
                let want = if i == j { 1.0 } else { 0.0 };
                assert!((v - want).abs() < 1e-5, "({i},{j}) = {v}");
            }
            for j in 0..i {
                assert_eq!(u(i, j), 0.0, "U must be upper triangular");
            }
        }
    }

    #[test]
    fn factor_equals_the_references_three_step_form() {
        // The reference computes chol(chol_inverse(chol(H)))ᵀ; the reversed factorization must
        // give the same U (unique upper Cholesky factor of H⁻¹) up to f64 rounding, here on a
        // 48×48 XᵀX of deterministic pseudo-random inputs plus 1% damping.
        let (n, t) = (48, 96);
        let x: Vec<f64> = (0..n * t)
            .map(|i| ((i as f64 * 0.7548776662).fract() - 0.5) * (1.0 + (i % 7) as f64))
            .collect();
        let mut h = Mat::<f64>::from_fn(n, n, |i, j| {
            (0..t).map(|k| x[k * n + i] * x[k * n + j]).sum()
        });
        let mean = (0..n).map(|i| h[(i, i)]).sum::<f64>() / n as f64;
        for i in 0..n {
            h[(i, i)] += 0.01 * mean;
        }
        use faer::linalg::solvers::DenseSolveCore;
        use faer::Side;
        let inv = h.llt(Side::Lower).unwrap().inverse();
        let inv = Mat::<f64>::from_fn(n, n, |i, j| 0.5 * (inv[(i, j)] + inv[(j, i)]));
        let reference = inv.llt(Side::Lower).unwrap();
        let reference = reference.L();
        let got =
            inverse_upper_factor(Mat::from_fn(n, n, |i, j| h[(n - 1 - i, n - 1 - j)])).unwrap();
        let scale = (0..n).map(|i| reference[(i, i)].abs()).fold(0.0, f64::max);
        for i in 0..n {
            for j in 0..n {
                let want = if j >= i { reference[(j, i)] } else { 0.0 };
                let diff = (got[i * n + j] as f64 - want).abs();
                // f32 storage: half an ulp of the largest entry, with room for f64 rounding.
                assert!(
                    diff <= 2e-7 * scale,
                    "U[{i}][{j}] = {} vs {want}",
                    got[i * n + j]
                );
            }
        }
    }

    #[test]
    fn bad_inputs_name_the_layer() {
        let e = prepare_hessian("layers.1.attn.o_proj", &[1.0; 3], 2, 1, 0.01, false).unwrap_err();
        assert!(e.to_string().contains("layers.1.attn.o_proj"));
        let e = prepare_hessian("l", &[1.0, f32::NAN, 0.0, 1.0], 2, 1, 0.01, false).unwrap_err();
        assert!(matches!(e, CompressError::NonFinite { .. }));
    }

    #[test]
    fn rank_deficient_gram_is_rescued_by_damping() {
        // Two identical columns: XᵀX is singular; damping makes it positive definite.
        let g = [4.0f32, 4.0, 4.0, 4.0];
        let hi = prepare_hessian("t", &g, 2, 1, 0.01, false).unwrap();
        assert!(hi.upper.iter().all(|v| v.is_finite()));
    }
}
