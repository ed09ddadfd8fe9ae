//! Truncated SVD of a weight in a transformed input space — the maths all three methods share.
//!
//! For `W: [out, in]` and an invertible input transform `T: [in, in]`, factorize `A = W T`
//! (thin SVD `A = U Σ Vᵀ`), keep the top `r` directions and undo the transform:
//!
//! `W ≈ (U_r Σ_r^½) · (Σ_r^½ V_rᵀ T⁻¹)`, stored as `up = U_r Σ_r^½` (`[out, r]`) and
//! `down = Σ_r^½ V_rᵀ T⁻¹` (`[r, in]`).
//!
//! Where `Σ_r` goes does not change the product, but it matters once the factors are quantized
//! (a quantizer after a factorization quantizes each factor, see
//! `compress_core::compressor::Compressor::factor_wise`): with all of `Σ_r` in `U`, the codes
//! of one group of a row of `U` share a scale across directions whose magnitudes differ by
//! `σ_1/σ_r`, and the small ones round to zero. On stories260K (SVD-LLM at 80% of the parameters, then GPTQ
//! 3-bit g32 on both factors, `tests/stories260k_quantized_factors.rs`) the KL divergence to
//! the base model was 3.85 with `Σ_r` in `U`, 3.40 with it in `V` and 2.98 split evenly (the
//! f32 factorization alone: 1.89), so the factors are balanced, as in SVD-LLM's own code.
//!
//! By Eckart–Young the truncation is the best rank-`r` approximation of `A` in Frobenius norm,
//! with error `‖A − A_r‖_F² = Σ_{i≥r} σ_i²`. What that optimises depends on `T`:
//!
//! - `T = I` (plain SVD): the weight error `‖W − Ŵ‖_F`.
//! - `T = diag(s)`, `s_j = rms(x_j)^α` (ASVD, Yuan et al. 2023, arXiv:2312.05821): input
//!   channels that carry large activations weigh more, an approximation of the output error.
//! - `T = L`, the Cholesky factor of `XᵀX = L Lᵀ` (SVD-LLM, Wang et al. 2024,
//!   arXiv:2403.07378): since `‖(W − Ŵ) Xᵀ‖_F² = ‖(W − Ŵ) L‖_F²`, the truncation error of `A`
//!   *is* the output error on the calibration inputs, so the retained directions are the
//!   optimal ones for it (truncation-aware whitening).
//!
//! All arithmetic is f64 (faer); the factors are returned in f32.

use faer::linalg::solvers::{Llt, Svd};
use faer::{Mat, Par, Side};

use crate::rank::RankRule;

/// The input-space transform applied before the SVD.
#[derive(Debug, Clone, PartialEq)]
pub enum InputTransform {
    /// `T = I`.
    Identity,
    /// `T = diag(s)` with every `s_j > 0`.
    Diagonal(Vec<f64>),
    /// `T = L`, lower triangular, row-major `[in, in]`, from `XᵀX = L Lᵀ`.
    Cholesky(Mat<f64>),
}

/// A truncated factorization.
#[derive(Debug, Clone, PartialEq)]
pub struct Factorization {
    /// `U_r Σ_r^½`, row-major `[out, rank]`.
    pub up: Vec<f32>,
    /// `Σ_r^½ V_rᵀ T⁻¹`, row-major `[rank, in]`.
    pub down: Vec<f32>,
    /// Kept rank.
    pub rank: usize,
    /// Every singular value of `W T`, descending.
    pub singular_values: Vec<f64>,
}

impl Factorization {
    /// `Σ_{i ≥ rank} σ_i²`: the squared Frobenius error of the truncation in the transformed
    /// space (Eckart–Young).
    pub fn tail_energy(&self) -> f64 {
        self.singular_values[self.rank..]
            .iter()
            .map(|s| s * s)
            .sum()
    }
}

/// Errors of a factorization.
#[derive(Debug, thiserror::Error, PartialEq)]
pub enum FactorError {
    /// The SVD did not converge.
    #[error("the SVD did not converge")]
    Svd,
    /// `XᵀX` is not positive definite even after damping.
    #[error("the input Gram matrix is not positive definite even with damping {damp}")]
    NotPositiveDefinite {
        /// The largest damping fraction tried.
        damp: f64,
    },
    /// A buffer length does not match the shape.
    #[error("{0}")]
    Shape(String),
}

/// Thin SVD of a row-major `[rows, cols]` matrix given in f64.
fn thin_svd(a: &Mat<f64>) -> Result<Svd<f64>, FactorError> {
    a.thin_svd().map_err(|_| FactorError::Svd)
}

/// Singular values (descending) of a row-major `[out, in]` f32 weight.
pub fn singular_values(w: &[f32], out: usize, inp: usize) -> Result<Vec<f64>, FactorError> {
    check_len(w, out, inp)?;
    let a = Mat::<f64>::from_fn(out, inp, |i, j| w[i * inp + j] as f64);
    a.singular_values().map_err(|_| FactorError::Svd)
}

fn check_len(w: &[f32], out: usize, inp: usize) -> Result<(), FactorError> {
    if w.len() != out * inp {
        return Err(FactorError::Shape(format!(
            "weight has {} values, expected {out}×{inp}",
            w.len()
        )));
    }
    Ok(())
}

/// The Cholesky factor `L` of `XᵀX/tokens + λ·mean(diag)·I` (`gram` row-major `[n, n]`),
/// with λ = `damp`, retried ×10 up to three times if the factorization fails.
pub fn gram_cholesky(
    gram: &[f32],
    n: usize,
    tokens: usize,
    damp: f64,
) -> Result<Mat<f64>, FactorError> {
    if gram.len() != n * n {
        return Err(FactorError::Shape(format!(
            "Gram matrix has {} values, expected {n}×{n}",
            gram.len()
        )));
    }
    let inv_t = 1.0 / tokens.max(1) as f64;
    let mean_diag = (0..n).map(|i| gram[i * n + i] as f64).sum::<f64>() * inv_t / n.max(1) as f64;
    let mean_diag = if mean_diag > 0.0 { mean_diag } else { 1.0 };
    let mut lambda = damp;
    for _ in 0..4 {
        let h = Mat::<f64>::from_fn(n, n, |i, j| {
            let v = gram[i * n + j] as f64 * inv_t;
            if i == j {
                v + lambda * mean_diag
            } else {
                v
            }
        });
        if let Ok(llt) = Llt::new(h.as_ref(), Side::Lower) {
            return Ok(llt.L().to_owned());
        }
        lambda = if lambda > 0.0 { lambda * 10.0 } else { 1e-6 };
    }
    Err(FactorError::NotPositiveDefinite { damp: lambda })
}

/// Factorizes the row-major `[out, in]` weight `w` in the space of `transform`, keeping the rank
/// `rule` chooses from the transformed singular values (module docs).
pub fn factorize(
    w: &[f32],
    out: usize,
    inp: usize,
    transform: &InputTransform,
    rule: RankRule,
) -> Result<Factorization, FactorError> {
    check_len(w, out, inp)?;
    let wt = Mat::<f64>::from_fn(out, inp, |i, j| w[i * inp + j] as f64);
    let a = match transform {
        InputTransform::Identity => wt,
        InputTransform::Diagonal(s) => {
            if s.len() != inp || s.iter().any(|&v| !(v > 0.0 && v.is_finite())) {
                return Err(FactorError::Shape(format!(
                    "{} channel scales for {inp} inputs (each must be positive)",
                    s.len()
                )));
            }
            Mat::from_fn(out, inp, |i, j| wt[(i, j)] * s[j])
        }
        InputTransform::Cholesky(l) => {
            if l.nrows() != inp || l.ncols() != inp {
                return Err(FactorError::Shape(format!(
                    "Cholesky factor is {}×{}, expected {inp}×{inp}",
                    l.nrows(),
                    l.ncols()
                )));
            }
            &wt * l
        }
    };
    let svd = thin_svd(&a)?;
    let sigma: Vec<f64> = (0..svd.S().dim()).map(|i| svd.S()[i]).collect();
    let rank = rule.rank(&sigma, out, inp);
    let (u, v) = (svd.U(), svd.V());
    // Σ_r is split evenly between the factors (see the module docs).
    let root: Vec<f64> = sigma[..rank].iter().map(|s| s.sqrt()).collect();
    let mut up = Vec::with_capacity(out * rank);
    for i in 0..out {
        for k in 0..rank {
            up.push((u[(i, k)] * root[k]) as f32);
        }
    }
    // down = Σ_r^½ V_rᵀ T⁻¹: the transpose of T⁻ᵀ V_r, rows scaled below.
    let mut z = Mat::<f64>::from_fn(inp, rank, |j, k| v[(j, k)]);
    match transform {
        InputTransform::Identity => {}
        InputTransform::Diagonal(s) => {
            for k in 0..rank {
                for j in 0..inp {
                    z[(j, k)] /= s[j];
                }
            }
        }
        InputTransform::Cholesky(l) => {
            // Solve Lᵀ Z = V_r (Lᵀ is upper triangular).
            faer::linalg::triangular_solve::solve_upper_triangular_in_place(
                l.transpose(),
                z.as_mut(),
                Par::Seq,
            );
        }
    }
    let mut down = Vec::with_capacity(rank * inp);
    for k in 0..rank {
        for j in 0..inp {
            down.push((z[(j, k)] * root[k]) as f32);
        }
    }
    Ok(Factorization {
        up,
        down,
        rank,
        singular_values: sigma,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::{Rng, SeedableRng};

    fn random(n: usize, seed: u64) -> Vec<f32> {
        let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
        (0..n).map(|_| rng.random_range(-1.0f32..1.0)).collect()
    }

    fn product(f: &Factorization, out: usize, inp: usize) -> Vec<f64> {
        let mut w = vec![0f64; out * inp];
        for i in 0..out {
            for k in 0..f.rank {
                for j in 0..inp {
                    w[i * inp + j] += f.up[i * f.rank + k] as f64 * f.down[k * inp + j] as f64;
                }
            }
        }
        w
    }

    /// Eckart–Young on a random matrix: the reconstruction error is the tail of the spectrum,
    /// and the spectrum's energy is ‖W‖_F² (an independent check of the singular values).
    #[test]
    fn plain_truncation_error_is_the_tail_energy() {
        let (out, inp) = (23, 17);
        let w = random(out * inp, 1);
        let total: f64 = w.iter().map(|&v| (v as f64).powi(2)).sum();
        for r in [1, 5, 16, 17] {
            let f = factorize(&w, out, inp, &InputTransform::Identity, RankRule::Fixed(r)).unwrap();
            assert_eq!(f.rank, r);
            let energy: f64 = f.singular_values.iter().map(|s| s * s).sum();
            assert!((energy - total).abs() < 1e-9 * total);
            let err: f64 = product(&f, out, inp)
                .iter()
                .zip(&w)
                .map(|(a, &b)| (a - b as f64).powi(2))
                .sum();
            // f32 factors: relative rounding ~1e-7 of ‖W‖² on each entry.
            assert!(
                (err - f.tail_energy()).abs() < 1e-5 * total,
                "rank {r}: {err} vs {}",
                f.tail_energy()
            );
        }
    }

    /// SVD-LLM's identity: with `L` from `XᵀX`, the output error `‖(W − Ŵ)Xᵀ‖²` (over the same
    /// X) equals the tail energy of `W L` — checked without damping on random data.
    #[test]
    fn whitened_truncation_error_is_the_output_error() {
        let (out, inp, tokens) = (11, 9, 40);
        let w = random(out * inp, 2);
        // Correlated inputs: x = z M with a random mixing matrix.
        let z = random(tokens * inp, 3);
        let m = random(inp * inp, 4);
        let mut x = vec![0f32; tokens * inp];
        for t in 0..tokens {
            for j in 0..inp {
                x[t * inp + j] = (0..inp).map(|k| z[t * inp + k] * m[k * inp + j]).sum();
            }
        }
        let mut gram = vec![0f32; inp * inp];
        for t in 0..tokens {
            for i in 0..inp {
                for j in 0..inp {
                    gram[i * inp + j] += x[t * inp + i] * x[t * inp + j];
                }
            }
        }
        let l = gram_cholesky(&gram, inp, 1, 0.0).unwrap();
        let f = factorize(
            &w,
            out,
            inp,
            &InputTransform::Cholesky(l),
            RankRule::Fixed(4),
        )
        .unwrap();
        let wh = product(&f, out, inp);
        let mut err = 0f64;
        for t in 0..tokens {
            for i in 0..out {
                let d: f64 = (0..inp)
                    .map(|j| (w[i * inp + j] as f64 - wh[i * inp + j]) * x[t * inp + j] as f64)
                    .sum();
                err += d * d;
            }
        }
        let rel = (err - f.tail_energy()).abs() / f.tail_energy();
        assert!(
            rel < 1e-4,
            "output error {err}, tail energy {}",
            f.tail_energy()
        );
    }

    #[test]
    fn diagonal_transform_is_undone_exactly_at_full_rank() {
        let (out, inp) = (6, 5);
        let w = random(out * inp, 5);
        let s: Vec<f64> = (0..inp).map(|j| 0.5 + j as f64).collect();
        let f = factorize(
            &w,
            out,
            inp,
            &InputTransform::Diagonal(s),
            RankRule::Fixed(5),
        )
        .unwrap();
        for (a, &b) in product(&f, out, inp).iter().zip(&w) {
            assert!((a - b as f64).abs() < 1e-5);
        }
        let bad = InputTransform::Diagonal(vec![1.0, 0.0, 1.0, 1.0, 1.0]);
        assert!(factorize(&w, out, inp, &bad, RankRule::Fixed(2)).is_err());
    }
}
