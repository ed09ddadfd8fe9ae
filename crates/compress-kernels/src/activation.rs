//! Fused SwiGLU activation (Shazeer 2020, arXiv:2002.05202): `silu(g) ⊙ u`, with
//! `silu(g) = g · σ(g) = g / (1 + e^(−g))`, in one pass over the gate and up projections'
//! outputs, across threads, on [`crate::vexp`]'s vectorized `exp`.
//!
//! ```
//! let gate = [0.0f32, 1.0, -2.0];
//! let up = [3.0f32, 2.0, 1.0];
//! let mut out = [0.0f32; 3];
//! compress_kernels::activation::swiglu(&gate, &up, &mut out)?;
//! let silu = |g: f32| g / (1.0 + (-g).exp());
//! for i in 0..3 {
//!     assert!((out[i] - silu(gate[i]) * up[i]).abs() < 1e-6);
//! }
//! # Ok::<(), compress_kernels::KernelError>(())
//! ```

use rayon::prelude::*;

use crate::matrix::KernelError;
use crate::vexp::exp_in_place;

/// Elements per parallel task (64 KiB of output: large enough to amortise scheduling).
const CHUNK: usize = 1 << 14;

/// `out[i] = silu(gate[i]) · up[i]`. For `g ≥ −85` the error of `silu` is that of the `exp`
/// (≤ 1 ulp) plus three f32 roundings; below, where `e^(−g)` is clamped at `e^87`, `silu(g)`
/// is about `g · 1.6·10⁻³⁸` instead of a smaller true value (both 0 to f32 work). No overflow
/// for any input; `silu(g) → g` for large `g`.
pub fn swiglu(gate: &[f32], up: &[f32], out: &mut [f32]) -> Result<(), KernelError> {
    for (what, len) in [("swiglu up", up.len()), ("swiglu output", out.len())] {
        if len != gate.len() {
            return Err(KernelError::Length {
                what,
                expected: gate.len(),
                found: len,
            });
        }
    }
    let run = |((o, g), u): ((&mut [f32], &[f32]), &[f32])| {
        for (o, &g) in o.iter_mut().zip(g) {
            *o = -g;
        }
        exp_in_place(o);
        for ((o, &g), &u) in o.iter_mut().zip(g).zip(u) {
            *o = g / (1.0 + *o) * u;
        }
    };
    if gate.len() <= CHUNK {
        run(((out, gate), up));
    } else {
        out.par_chunks_mut(CHUNK)
            .zip(gate.par_chunks(CHUNK))
            .zip(up.par_chunks(CHUNK))
            .for_each(run);
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn matches_the_definition_in_f64() {
        let n = 3 * CHUNK + 17; // several parallel chunks and a ragged one
        let gate: Vec<f32> = (0..n).map(|i| ((i as f32) * 0.013).sin() * 30.0).collect();
        let up: Vec<f32> = (0..n).map(|i| ((i as f32) * 0.007).cos()).collect();
        let mut out = vec![0f32; n];
        swiglu(&gate, &up, &mut out).unwrap();
        for i in 0..n {
            let g = f64::from(gate[i]);
            let want = g / (1.0 + (-g).exp()) * f64::from(up[i]);
            // 1e-6 relative (the exp's ulp plus f32 rounding of three operations) or 1e-30
            // absolute where silu underflows.
            let err = (f64::from(out[i]) - want).abs();
            assert!(
                err <= 1e-6 * want.abs() + 1e-30,
                "{i}: {} vs {want}",
                out[i]
            );
        }
        let mut big = [0f32; 2];
        swiglu(&[200.0, -200.0], &[1.0, 1.0], &mut big).unwrap();
        assert_eq!(big[0], 200.0);
        assert!(big[1].abs() < 1e-30 && big[1].is_finite());
    }

    #[test]
    fn mismatched_lengths_are_refused() {
        let e = swiglu(&[1.0; 4], &[1.0; 3], &mut [0.0; 4]).unwrap_err();
        assert!(e.to_string().contains("swiglu up"), "{e}");
    }
}
