//! The AVX-512 VNNI tier (int8 activations): `vpdpbusd` multiplies 32 unsigned codes by 32
//! signed 8-bit activations and sums each four into an i32 lane, exactly; each block's i32 sums
//! are scaled by the block's activation scale in f32, each group's by the weight scale.
//!
//! The result differs from the exact product only by the activation rounding: at most
//! `Σ_k |w_k| · d_b(k) / 2` (`d_b = max|x| / 127` over the block of 32 holding `k`), plus f32
//! rounding. This is the precision llama.cpp's CPU backend runs quantized models at.

use std::arch::x86_64::*;

use crate::matrix::QuantMatrix;
use crate::prepare::{Int8Activations, BLOCK};

/// Horizontal sum of 8 lanes.
#[inline]
#[target_feature(enable = "avx2")]
unsafe fn hsum(v: __m256) -> f32 {
    let s = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps::<1>(v));
    let s = _mm_add_ps(s, _mm_movehl_ps(s, s));
    let s = _mm_add_ss(s, _mm_shuffle_ps::<1>(s, s));
    _mm_cvtss_f32(s)
}

/// One output: row `row` of `w` against int8 activations (block-permuted for 4-bit).
///
/// # Safety
/// The CPU must support AVX-512F/BW/VL and VNNI; `w` must be 4- or 8-bit, with even group starts
/// for 4-bit.
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512vnni,avx2,fma")]
pub unsafe fn row_dot(w: &QuantMatrix<'_>, row: usize, a: &Int8Activations) -> f32 {
    let codes = w.row_codes(row);
    let q = a.q.as_ptr();
    let mut total = _mm256_setzero_ps();
    let mut scalar = 0f32;
    let nib = _mm_set1_epi8(0x0f);
    let mut blk = 0usize;
    for (gi, (s0, e)) in w.groups().enumerate() {
        let (s, z) = w.scale_zero(row, gi);
        let nb = (e - s0) / BLOCK;
        let mut acc = _mm256_setzero_ps();
        for j in 0..nb {
            let cv = if w.bits() == 4 {
                let b = _mm_loadu_si128(codes.as_ptr().add(s0 / 2 + 16 * j).cast());
                let lo = _mm_and_si128(b, nib);
                let hi = _mm_and_si128(_mm_srli_epi16::<4>(b), nib);
                _mm256_set_m128i(hi, lo)
            } else {
                _mm256_loadu_si256(codes.as_ptr().add(s0 + BLOCK * j).cast())
            };
            let qv = _mm256_loadu_si256(q.add((blk + j) * BLOCK).cast());
            let dot = _mm256_dpbusd_epi32(_mm256_setzero_si256(), cv, qv);
            acc = _mm256_fmadd_ps(
                _mm256_cvtepi32_ps(dot),
                _mm256_set1_ps(*a.block_scales.get_unchecked(blk + j)),
                acc,
            );
        }
        blk += nb;
        total = _mm256_fmadd_ps(acc, _mm256_set1_ps(s), total);
        scalar -= s * z * a.group_corrections[gi];
        for c in s0 + nb * BLOCK..e {
            scalar += s * (w.code(row, c) as f32 - z) * a.x[c];
        }
    }
    hsum(total) + scalar
}
