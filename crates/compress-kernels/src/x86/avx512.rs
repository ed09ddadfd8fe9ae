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
use crate::x86::{dot3, row_scales, Scratch, SCALE_CHUNK};

/// One output: row `row` of `w` against `a` (block-permuted for 4-bit).
///
/// # Safety
/// The CPU must support AVX-512F and F16C; `w` must be 2-, 4- or 8-bit, with groups starting on
/// a byte.
#[target_feature(enable = "avx512f,avx2,f16c,fma")]
pub unsafe fn row_dot(
    w: &QuantMatrix<'_>,
    row: usize,
    a: &F32Activations,
    scratch: &mut Scratch,
) -> f32 {
    if w.bits() == 2 {
        // SAFETY: the AVX-512 tier's features include the AVX2 tier's.
        return unsafe { crate::x86::avx2::row_dot(w, row, a, scratch) };
    }
    let codes = w.row_codes(row).as_ptr();
    let x = a.x.as_ptr();
    let (k, g, gpr) = (w.in_features(), w.group_len(), w.groups_per_row());
    let four = w.bits() == 4;
    let nib = _mm512_set1_epi32(0x0f);
    // Two totals, so consecutive small groups do not wait on one fused multiply-add chain.
    let mut total = _mm512_setzero_ps();
    let mut total1 = _mm512_setzero_ps();
    let mut scalar = 0f32;
    let Scratch { sb, zb, .. } = scratch;
    for c0 in (0..gpr).step_by(SCALE_CHUNK) {
        let cn = SCALE_CHUNK.min(gpr - c0);
        row_scales(w, row, c0, cn, sb, zb);
        for (j, &sj) in sb[..cn].iter().enumerate() {
            let s0 = (c0 + j) * g;
            let e = (s0 + g).min(k);
            let full = (e - s0) / BLOCK * BLOCK;
            let mut acc0 = _mm512_setzero_ps();
            let mut acc1 = _mm512_setzero_ps();
            let mut b = s0;
            while b < s0 + full {
                let (v0, v1) = if four {
                    let v = _mm512_cvtepu8_epi32(_mm_loadu_si128(codes.add(b / 2).cast()));
                    (_mm512_and_si512(v, nib), _mm512_srli_epi32::<4>(v))
                } else {
                    (
                        _mm512_cvtepu8_epi32(_mm_loadu_si128(codes.add(b).cast())),
                        _mm512_cvtepu8_epi32(_mm_loadu_si128(codes.add(b + 16).cast())),
                    )
                };
                acc0 = _mm512_fmadd_ps(_mm512_cvtepi32_ps(v0), _mm512_loadu_ps(x.add(b)), acc0);
                acc1 =
                    _mm512_fmadd_ps(_mm512_cvtepi32_ps(v1), _mm512_loadu_ps(x.add(b + 16)), acc1);
                b += BLOCK;
            }
            total = _mm512_fmadd_ps(acc0, _mm512_set1_ps(sj), total);
            total1 = _mm512_fmadd_ps(acc1, _mm512_set1_ps(sj), total1);
            if full < e - s0 {
                scalar += sj * tail_dot(w, row, s0 + full, e, &a.x);
            }
        }
        scalar -= dot3(&sb[..cn], &zb[..cn], &a.group_sums[c0..c0 + cn]);
    }
    _mm512_reduce_add_ps(_mm512_add_ps(total, total1)) + scalar
}

/// Dequantizes row `row` into `out`, in the order [`row_dot`]'s activations use (block-permuted
/// for 4-bit), so a GEMM over the result needs activations prepared the same way.
///
/// # Safety
/// As [`row_dot`].
#[target_feature(enable = "avx512f,avx2,f16c,fma")]
pub unsafe fn dequantize_row(w: &QuantMatrix<'_>, row: usize, out: &mut [f32]) {
    if w.bits() == 2 {
        // SAFETY: as in `row_dot`.
        return unsafe { crate::x86::avx2::dequantize_row(w, row, out) };
    }
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
