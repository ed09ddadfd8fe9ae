//! The AVX2 + FMA tier (f32 activations): as the AVX-512 tier with 8 lanes. A block of 32 4-bit
//! codes is two loads of 8 bytes, each widened to 8 × i32 and split into nibbles; a block of 32
//! 2-bit codes is one load of 8 bytes split into four 2-bit planes (the AVX-512 tier runs these
//! loops too).

use std::arch::x86_64::*;

use crate::matrix::QuantMatrix;
use crate::portable::{tail_dequantize, tail_dot};
use crate::prepare::{F32Activations, BLOCK};
use crate::x86::{dot3, hsum, row_scales, Scratch, SCALE_CHUNK};

/// One output: row `row` of `w` against `a` (block-permuted for 4-bit).
///
/// # Safety
/// The CPU must support AVX2, FMA and F16C; `w` must be 2-, 4- or 8-bit, with groups starting on
/// a byte.
#[target_feature(enable = "avx2,fma,f16c")]
pub unsafe fn row_dot(
    w: &QuantMatrix<'_>,
    row: usize,
    a: &F32Activations,
    scratch: &mut Scratch,
) -> f32 {
    let codes = w.row_codes(row).as_ptr();
    let x = a.x.as_ptr();
    let (k, g, gpr) = (w.in_features(), w.group_len(), w.groups_per_row());
    let four = w.bits() == 4;
    let two = w.bits() == 2;
    let nib = _mm256_set1_epi32(0x0f);
    let crumb = _mm256_set1_epi32(0x03);
    let mut total = _mm256_setzero_ps();
    let mut scalar = 0f32;
    let Scratch { sb, zb, .. } = scratch;
    for c0 in (0..gpr).step_by(SCALE_CHUNK) {
        let cn = SCALE_CHUNK.min(gpr - c0);
        row_scales(w, row, c0, cn, sb, zb);
        for (j, &sj) in sb[..cn].iter().enumerate() {
            let s0 = (c0 + j) * g;
            let e = (s0 + g).min(k);
            let full = (e - s0) / BLOCK * BLOCK;
            let mut acc0 = _mm256_setzero_ps();
            let mut acc1 = _mm256_setzero_ps();
            // Four chains for the four 2-bit planes (two would wait on the FMA latency).
            let (mut acc2, mut acc3) = (_mm256_setzero_ps(), _mm256_setzero_ps());
            let mut b = s0;
            while two && b < s0 + full {
                // 8 bytes = 32 codes; bits 2j of the 8 widened bytes meet positions 8j..8j+8.
                let xb = x.add(b);
                let v = _mm256_cvtepu8_epi32(_mm_loadl_epi64(codes.add(b / 4).cast()));
                let c0 = _mm256_cvtepi32_ps(_mm256_and_si256(v, crumb));
                let c1 = _mm256_cvtepi32_ps(_mm256_and_si256(_mm256_srli_epi32::<2>(v), crumb));
                let c2 = _mm256_cvtepi32_ps(_mm256_and_si256(_mm256_srli_epi32::<4>(v), crumb));
                let c3 = _mm256_cvtepi32_ps(_mm256_srli_epi32::<6>(v));
                acc0 = _mm256_fmadd_ps(c0, _mm256_loadu_ps(xb), acc0);
                acc1 = _mm256_fmadd_ps(c1, _mm256_loadu_ps(xb.add(8)), acc1);
                acc2 = _mm256_fmadd_ps(c2, _mm256_loadu_ps(xb.add(16)), acc2);
                acc3 = _mm256_fmadd_ps(c3, _mm256_loadu_ps(xb.add(24)), acc3);
                b += BLOCK;
            }
            acc0 = _mm256_add_ps(acc0, acc2);
            acc1 = _mm256_add_ps(acc1, acc3);
            while b < s0 + full {
                let xb = x.add(b);
                for half in 0..2 {
                    if four {
                        let v = _mm256_cvtepu8_epi32(_mm_loadl_epi64(
                            codes.add(b / 2 + 8 * half).cast(),
                        ));
                        let lo = _mm256_cvtepi32_ps(_mm256_and_si256(v, nib));
                        let hi = _mm256_cvtepi32_ps(_mm256_srli_epi32::<4>(v));
                        acc0 = _mm256_fmadd_ps(lo, _mm256_loadu_ps(xb.add(8 * half)), acc0);
                        acc1 = _mm256_fmadd_ps(hi, _mm256_loadu_ps(xb.add(16 + 8 * half)), acc1);
                    } else {
                        let v0 =
                            _mm256_cvtepu8_epi32(_mm_loadl_epi64(codes.add(b + 16 * half).cast()));
                        let v1 = _mm256_cvtepu8_epi32(_mm_loadl_epi64(
                            codes.add(b + 16 * half + 8).cast(),
                        ));
                        let xh = xb.add(16 * half);
                        acc0 = _mm256_fmadd_ps(_mm256_cvtepi32_ps(v0), _mm256_loadu_ps(xh), acc0);
                        acc1 = _mm256_fmadd_ps(
                            _mm256_cvtepi32_ps(v1),
                            _mm256_loadu_ps(xh.add(8)),
                            acc1,
                        );
                    }
                }
                b += BLOCK;
            }
            total = _mm256_fmadd_ps(_mm256_add_ps(acc0, acc1), _mm256_set1_ps(sj), total);
            if full < e - s0 {
                scalar += sj * tail_dot(w, row, s0 + full, e, &a.x);
            }
        }
        scalar -= dot3(&sb[..cn], &zb[..cn], &a.group_sums[c0..c0 + cn]);
    }
    hsum(total) + scalar
}

/// Dequantizes row `row` into `out` in [`row_dot`]'s activation order (block-permuted for 4-bit).
///
/// # Safety
/// As [`row_dot`].
#[target_feature(enable = "avx2,fma,f16c")]
pub unsafe fn dequantize_row(w: &QuantMatrix<'_>, row: usize, out: &mut [f32]) {
    let codes = w.row_codes(row);
    let nib = _mm256_set1_epi32(0x0f);
    let crumb = _mm256_set1_epi32(0x03);
    for (gi, (s0, e)) in w.groups().enumerate() {
        let (s, z) = w.scale_zero(row, gi);
        let (vs, vb) = (_mm256_set1_ps(s), _mm256_set1_ps(-s * z));
        let o = out.as_mut_ptr().add(s0);
        let full = match w.bits() {
            2 => {
                let full = (e - s0) / BLOCK * BLOCK;
                let base = codes.as_ptr().add(s0 / 4);
                for b in (0..full).step_by(BLOCK) {
                    let v = _mm256_cvtepu8_epi32(_mm_loadl_epi64(base.add(b / 4).cast()));
                    for (j, c) in [
                        _mm256_and_si256(v, crumb),
                        _mm256_and_si256(_mm256_srli_epi32::<2>(v), crumb),
                        _mm256_and_si256(_mm256_srli_epi32::<4>(v), crumb),
                        _mm256_srli_epi32::<6>(v),
                    ]
                    .into_iter()
                    .enumerate()
                    {
                        let c = _mm256_cvtepi32_ps(c);
                        _mm256_storeu_ps(o.add(b + 8 * j), _mm256_fmadd_ps(c, vs, vb));
                    }
                }
                full
            }
            4 => {
                let full = (e - s0) / BLOCK * BLOCK;
                let base = codes.as_ptr().add(s0 / 2);
                for b in (0..full).step_by(BLOCK) {
                    for half in 0..2 {
                        let v = _mm256_cvtepu8_epi32(_mm_loadl_epi64(
                            base.add(b / 2 + 8 * half).cast(),
                        ));
                        let lo = _mm256_cvtepi32_ps(_mm256_and_si256(v, nib));
                        let hi = _mm256_cvtepi32_ps(_mm256_srli_epi32::<4>(v));
                        _mm256_storeu_ps(o.add(b + 8 * half), _mm256_fmadd_ps(lo, vs, vb));
                        _mm256_storeu_ps(o.add(b + 16 + 8 * half), _mm256_fmadd_ps(hi, vs, vb));
                    }
                }
                full
            }
            _ => {
                let full = (e - s0) / 8 * 8;
                let base = codes.as_ptr().add(s0);
                for b in (0..full).step_by(8) {
                    let v = _mm256_cvtepu8_epi32(_mm_loadl_epi64(base.add(b).cast()));
                    _mm256_storeu_ps(o.add(b), _mm256_fmadd_ps(_mm256_cvtepi32_ps(v), vs, vb));
                }
                full
            }
        };
        tail_dequantize(w, row, (s0 + full, e), (s, z), out);
    }
}
