//! Activations held in f16 or bf16: `Y = X · Wᵀ` for `X` in the precision a caller keeps its
//! hidden states in (GPU-style mixed precision, a bf16 checkpoint's inputs), without the caller
//! converting them first.
//!
//! Every f16 and every bf16 value is exactly an f32 value (both formats have fewer exponent
//! and mantissa bits than f32), so the activations are widened once to f32 — F16C for f16 where
//! the CPU has it (the `half` crate's slice conversion), a 16-bit shift for bf16 — and the
//! product is then the f32 path's, bit for bit: the same tiers, the same int8 quantization on
//! the VNNI tier, the same results as for the widened values. The widened copy is `M × K`
//! floats, the size of the preparation buffers the f32 path makes anyway.
//!
//! ```
//! use compress_kernels::half_input::{matmul_with_input, Input};
//! use compress_kernels::{QuantMatrix, ScaleLayout, Tier};
//! use half::{bf16, f16};
//!
//! // The 2 × 4 weight of the `matmul` example: row 0 is [0.5, 1, 0, -0.5], row 1 zeros.
//! let codes = [0xa9, 0x78, 0x88, 0x88];
//! let scales = [f16::from_f32(0.5); 2];
//! let w = QuantMatrix::new(4, [2, 4], ScaleLayout::PerGroup { group_len: 4 }, &codes, &scales, None)?;
//! let x: Vec<bf16> = [1.0f32, 2.0, 3.0, 4.0].iter().map(|&v| bf16::from_f32(v)).collect();
//! let mut y = [0.0; 2];
//! matmul_with_input(Tier::Portable, Input::Bf16(&x), 1, &w, &mut y)?;
//! assert_eq!(y, [0.5, 0.0]);
//! # Ok::<(), compress_kernels::KernelError>(())
//! ```

use std::borrow::Cow;

use half::slice::HalfFloatSliceExt;
use half::{bf16, f16};

use crate::matmul::matmul_with;
use crate::matrix::QuantMatrix;
use crate::tier::{Activations, Tier};
use crate::KernelError;

/// Activations `X` (`M × K`, row-major) in the precision the caller holds them.
#[derive(Debug, Clone, Copy)]
pub enum Input<'a> {
    /// f32 values (used as they are).
    F32(&'a [f32]),
    /// IEEE half precision.
    F16(&'a [f16]),
    /// bfloat16.
    Bf16(&'a [bf16]),
}

impl Input<'_> {
    /// Number of values.
    pub fn len(&self) -> usize {
        match self {
            Input::F32(x) => x.len(),
            Input::F16(x) => x.len(),
            Input::Bf16(x) => x.len(),
        }
    }

    /// Whether there are no values.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The values as f32 (exact: borrowed for f32, widened for f16 and bf16).
    pub fn to_f32(&self) -> Cow<'_, [f32]> {
        match *self {
            Input::F32(x) => Cow::Borrowed(x),
            Input::F16(x) => {
                let mut out = vec![0f32; x.len()];
                x.convert_to_f32_slice(&mut out);
                Cow::Owned(out)
            }
            Input::Bf16(x) => {
                let mut out = vec![0f32; x.len()];
                x.convert_to_f32_slice(&mut out);
                Cow::Owned(out)
            }
        }
    }
}

impl<'a> From<&'a [f32]> for Input<'a> {
    fn from(x: &'a [f32]) -> Self {
        Input::F32(x)
    }
}

impl<'a> From<&'a [f16]> for Input<'a> {
    fn from(x: &'a [f16]) -> Self {
        Input::F16(x)
    }
}

impl<'a> From<&'a [bf16]> for Input<'a> {
    fn from(x: &'a [bf16]) -> Self {
        Input::Bf16(x)
    }
}

/// [`crate::matmul`] for activations in any [`Input`] precision: the fastest tier for `w` with
/// f32 arithmetic on the widened values; returns the tier that ran.
pub fn matmul_input<'a>(
    x: impl Into<Input<'a>>,
    m: usize,
    w: &QuantMatrix<'_>,
    out: &mut [f32],
) -> Result<Tier, KernelError> {
    let tier = Tier::select(w, Activations::F32);
    matmul_with_input(tier, x.into(), m, w, out)?;
    Ok(tier)
}

/// [`crate::matmul_with`] for activations in any [`Input`] precision (same errors; the length
/// check counts values of the given precision).
pub fn matmul_with_input(
    tier: Tier,
    x: Input<'_>,
    m: usize,
    w: &QuantMatrix<'_>,
    out: &mut [f32],
) -> Result<(), KernelError> {
    // Check the length before widening, so a wrong call costs nothing.
    crate::matrix::check_len(
        "activations (m × in_features)",
        m * w.in_features(),
        x.len(),
    )?;
    matmul_with(tier, &x.to_f32(), m, w, out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ScaleLayout;

    /// A seeded 4-bit weight with groups of 32 and zero points.
    fn weight(n: usize, k: usize) -> (Vec<u8>, Vec<f16>, Vec<f16>) {
        let codes = (0..n * k / 2).map(|i| (i * 37 % 251) as u8).collect();
        let g = n * k / 32;
        let scales = (0..g)
            .map(|i| f16::from_f32(0.01 + (i % 7) as f32 * 0.003))
            .collect();
        let zeros = (0..g).map(|i| f16::from_f32((i % 15) as f32)).collect();
        (codes, scales, zeros)
    }

    #[test]
    fn half_inputs_give_the_results_of_their_f32_values_on_every_tier() {
        let (n, k) = (40, 256);
        let (codes, scales, zeros) = weight(n, k);
        let w = QuantMatrix::new(
            4,
            [n, k],
            ScaleLayout::PerGroup { group_len: 32 },
            &codes,
            &scales,
            Some(&zeros),
        )
        .unwrap();
        for m in [1, 9] {
            let raw: Vec<f32> = (0..m * k)
                .map(|i| ((i * 7919 % 1000) as f32 - 500.0) / 97.0)
                .collect();
            let h: Vec<f16> = raw.iter().map(|&v| f16::from_f32(v)).collect();
            let b: Vec<bf16> = raw.iter().map(|&v| bf16::from_f32(v)).collect();
            for tier in Tier::ALL.into_iter().filter(|t| t.is_available()) {
                let cases: [(&str, Input<'_>, Vec<f32>); 2] = [
                    (
                        "f16",
                        Input::F16(&h),
                        h.iter().map(|v| v.to_f32()).collect(),
                    ),
                    (
                        "bf16",
                        Input::Bf16(&b),
                        b.iter().map(|v| v.to_f32()).collect(),
                    ),
                ];
                for (name, input, widened) in cases {
                    let mut got = vec![f32::NAN; m * n];
                    matmul_with_input(tier, input, m, &w, &mut got).unwrap();
                    let mut want = vec![f32::NAN; m * n];
                    matmul_with(tier, &widened, m, &w, &mut want).unwrap();
                    assert_eq!(got, want, "{tier}, m {m}, {name}");
                }
            }
        }
    }

    #[test]
    fn wrong_lengths_are_errors() {
        let (codes, scales, zeros) = weight(2, 64);
        let w = QuantMatrix::new(
            4,
            [2, 64],
            ScaleLayout::PerGroup { group_len: 32 },
            &codes,
            &scales,
            Some(&zeros),
        )
        .unwrap();
        let x = [bf16::ONE; 63];
        let mut y = [0f32; 2];
        let e = matmul_input(&x[..], 1, &w, &mut y).unwrap_err();
        assert!(matches!(e, KernelError::Length { .. }), "{e}");
    }
}
