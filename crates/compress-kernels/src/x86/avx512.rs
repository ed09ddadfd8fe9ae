//! The AVX-512 tier (f32 activations): 4- and 8-bit codes widened to f32 in registers and
//! multiplied with fused multiply-adds, 16 lanes at a time. Exact up to f32 rounding.
//!
//! 4-bit: 16 bytes hold a block of 32 codes; zero-extending them to 16 × i32 and masking /
//! shifting gives the even columns (low nibbles) and the odd ones (high nibbles), which meet
//! activations prepared in `[even 16, odd 16]` order ([`crate::prepare`]).

use std::arch::x86_64::*;

use crate::matrix::QuantMatrix;
use crate::portable::{tail_dequantize, tail_dot};
use crate::prepare::{F32Activations, BLOCK};

/// One output: row `row` of `w` against `a` (block-permuted for 4-bit).
///
/// # Safety
/// The CPU must support AVX-512F; `w` must be 4- or 8-bit, with even group starts for 4-bit.
#[target_feature(enable = "avx512f")]
pub unsafe fn row_dot(w: &QuantMatrix<'_>, row: usize, a: &F32Activations) -> f32 {
    let codes = w.row_codes(row);
    let x = a.x.as_ptr();
    let mut total = _mm512_setzero_ps();
    let mut scalar = 0f32;
    let nib = _mm512_set1_epi32(0x0f);
    for (gi, (s0, e)) in w.groups().enumerate() {
        let (s, z) = w.scale_zero(row, gi);
        let mut acc0 = _mm512_setzero_ps();
        let mut acc1 = _mm512_setzero_ps();
        let full = match w.bits() {
            4 => {
                let full = (e - s0) / BLOCK * BLOCK;
                debug_assert!(s0 % 2 == 0 && (s0 + full) / 2 <= codes.len());
                let base = codes.as_ptr().add(s0 / 2);
                let mut b = 0;
                while b < full {
                    let v = _mm512_cvtepu8_epi32(_mm_loadu_si128(base.add(b / 2).cast()));
                    let lo = _mm512_cvtepi32_ps(_mm512_and_si512(v, nib));
                    let hi = _mm512_cvtepi32_ps(_mm512_srli_epi32::<4>(v));
                    acc0 = _mm512_fmadd_ps(lo, _mm512_loadu_ps(x.add(s0 + b)), acc0);
                    acc1 = _mm512_fmadd_ps(hi, _mm512_loadu_ps(x.add(s0 + b + 16)), acc1);
                    b += BLOCK;
                }
                full
            }
            _ => {
                let full = (e - s0) / 32 * 32;
                let base = codes.as_ptr().add(s0);
                let mut b = 0;
                while b < full {
                    let v0 = _mm512_cvtepu8_epi32(_mm_loadu_si128(base.add(b).cast()));
                    let v1 = _mm512_cvtepu8_epi32(_mm_loadu_si128(base.add(b + 16).cast()));
                    acc0 = _mm512_fmadd_ps(
                        _mm512_cvtepi32_ps(v0),
                        _mm512_loadu_ps(x.add(s0 + b)),
                        acc0,
                    );
                    acc1 = _mm512_fmadd_ps(
                        _mm512_cvtepi32_ps(v1),
                        _mm512_loadu_ps(x.add(s0 + b + 16)),
                        acc1,
                    );
                    b += 32;
                }
                full
            }
        };
        total = _mm512_fmadd_ps(_mm512_add_ps(acc0, acc1), _mm512_set1_ps(s), total);
        let tail = tail_dot(w, row, s0 + full, e, &a.x);
        scalar += s * (tail - z * a.group_sums[gi]);
    }
    _mm512_reduce_add_ps(total) + scalar
}

/// Dequantizes row `row` into `out`, in the order [`row_dot`]'s activations use (block-permuted
/// for 4-bit), so a GEMM over the result needs activations prepared the same way.
///
/// # Safety
/// As [`row_dot`].
#[target_feature(enable = "avx512f")]
pub unsafe fn dequantize_row(w: &QuantMatrix<'_>, row: usize, out: &mut [f32]) {
    let codes = w.row_codes(row);
    let nib = _mm512_set1_epi32(0x0f);
    for (gi, (s0, e)) in w.groups().enumerate() {
        let (s, z) = w.scale_zero(row, gi);
        let (vs, vb) = (_mm512_set1_ps(s), _mm512_set1_ps(-s * z));
        let o = out.as_mut_ptr().add(s0);
        let full = match w.bits() {
            4 => {
                let full = (e - s0) / BLOCK * BLOCK;
                let base = codes.as_ptr().add(s0 / 2);
                for b in (0..full).step_by(BLOCK) {
                    let v = _mm512_cvtepu8_epi32(_mm_loadu_si128(base.add(b / 2).cast()));
                    let lo = _mm512_cvtepi32_ps(_mm512_and_si512(v, nib));
                    let hi = _mm512_cvtepi32_ps(_mm512_srli_epi32::<4>(v));
                    _mm512_storeu_ps(o.add(b), _mm512_fmadd_ps(lo, vs, vb));
                    _mm512_storeu_ps(o.add(b + 16), _mm512_fmadd_ps(hi, vs, vb));
                }
                full
            }
            _ => {
                let full = (e - s0) / 16 * 16;
                let base = codes.as_ptr().add(s0);
                for b in (0..full).step_by(16) {
                    let v = _mm512_cvtepu8_epi32(_mm_loadu_si128(base.add(b).cast()));
                    _mm512_storeu_ps(o.add(b), _mm512_fmadd_ps(_mm512_cvtepi32_ps(v), vs, vb));
                }
                full
            }
        };
        tail_dequantize(w, row, (s0 + full, e), (s, z), out);
    }
}
