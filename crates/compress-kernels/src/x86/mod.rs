//! x86-64 SIMD tiers, each compiled with `#[target_feature]` and only called after run-time CPU
//! feature detection ([`crate::Tier::is_available`]).
//!
//! The tiers walk a row's groups in chunks of `SCALE_CHUNK`: the chunk's f16 scales and zeros
//! are widened to f32 eight at a time (F16C) into stack buffers, and the zero-point correction
//! `Σ_g s_g · z_g · Σx_g` is one vectorized dot product per chunk, so the per-group work left in
//! the inner loop is a broadcast and a fused multiply-add.

use std::arch::x86_64::*;

use half::f16;

use crate::matrix::QuantMatrix;

pub mod amx;
pub mod avx2;
pub mod avx512;
pub mod bf16_dot;
pub mod bf16_tiles;
pub mod sparse24;
pub mod vnni;
pub(crate) mod vnni_gemm;

/// Groups whose scales are widened at once.
pub(crate) const SCALE_CHUNK: usize = 128;

/// Per-thread buffers of the row kernels, made once per task rather than zeroed per row.
pub struct Scratch {
    /// A chunk of one row's scales as f32.
    pub(crate) sb: [f32; SCALE_CHUNK],
    /// The matching zero points.
    pub(crate) zb: [f32; SCALE_CHUNK],
}

impl Default for Scratch {
    fn default() -> Self {
        Self {
            sb: [0.0; SCALE_CHUNK],
            zb: [0.0; SCALE_CHUNK],
        }
    }
}

/// Widens `src` (at most [`SCALE_CHUNK`] values) into `dst`.
#[inline]
#[target_feature(enable = "avx2,f16c")]
pub(crate) unsafe fn widen(src: &[f16], dst: &mut [f32; SCALE_CHUNK]) {
    let n = src.len();
    let mut i = 0;
    while i + 8 <= n {
        let v = _mm256_cvtph_ps(_mm_loadu_si128(src.as_ptr().add(i).cast()));
        _mm256_storeu_ps(dst.as_mut_ptr().add(i), v);
        i += 8;
    }
    if i < n {
        // The last < 8 values through a zero-padded copy, still one F16C conversion (a scalar
        // `f16::to_f32` per value costs more than the whole row on short rows).
        let mut pad = [f16::ZERO; 8];
        pad[..n - i].copy_from_slice(&src[i..]);
        let mut out = [0f32; 8];
        _mm256_storeu_ps(
            out.as_mut_ptr(),
            _mm256_cvtph_ps(_mm_loadu_si128(pad.as_ptr().cast())),
        );
        dst[i..n].copy_from_slice(&out[..n - i]);
    }
}

/// f32 scales and zeros of groups `c0..c0 + n` of row `row` (`n ≤ SCALE_CHUNK`).
#[inline]
#[target_feature(enable = "avx2,f16c")]
pub(crate) unsafe fn row_scales(
    w: &QuantMatrix<'_>,
    row: usize,
    c0: usize,
    n: usize,
    s: &mut [f32; SCALE_CHUNK],
    z: &mut [f32; SCALE_CHUNK],
) {
    widen(&w.row_scales(row)[c0..c0 + n], s);
    match w.row_zeros(row) {
        Some(zeros) => widen(&zeros[c0..c0 + n], z),
        None => z[..n].fill(w.mid_code()),
    }
}

/// Horizontal sum of 8 lanes.
#[inline]
#[target_feature(enable = "avx2")]
pub(crate) unsafe fn hsum(v: __m256) -> f32 {
    let s = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps::<1>(v));
    let s = _mm_add_ps(s, _mm_movehl_ps(s, s));
    let s = _mm_add_ss(s, _mm_shuffle_ps::<1>(s, s));
    _mm_cvtss_f32(s)
}

/// `Σ_j a_j · b_j · c_j` with eight independent lanes (vectorized in the caller's features).
#[inline(always)]
pub(crate) fn dot3(a: &[f32], b: &[f32], c: &[f32]) -> f32 {
    let mut acc = [0f32; 8];
    let n = a.len() / 8 * 8;
    for i in (0..n).step_by(8) {
        for l in 0..8 {
            acc[l] += a[i + l] * b[i + l] * c[i + l];
        }
    }
    let mut s: f32 = acc.iter().sum();
    for i in n..a.len() {
        s += a[i] * b[i] * c[i];
    }
    s
}
