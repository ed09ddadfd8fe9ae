//! The AVX-512 VNNI tier (int8 activations): `vpdpbusd` multiplies 32 unsigned codes by 32
//! signed 8-bit activations and sums each four into an i32 lane, exactly; each block's i32 sums
//! are scaled by the block's activation scale in f32, each group's by the weight scale.
//!
//! The result differs from the exact product only by the activation rounding: at most
//! `Σ_k |w_k| · d_b(k) / 2` (`d_b = max|x| / 127` over the block of 32 holding `k`), plus f32
//! rounding. This is the precision llama.cpp's CPU backend runs quantized models at.
//!
//! 4-bit weights whose groups are whole blocks (group size a multiple of 32, or one group per
//! row) take a two-block loop ([`row_dot_pairs`]): one 32-byte load, broadcast to both halves
//! of a 64-byte register, a per-half shift and a mask give both blocks' low and high nibbles,
//! and one `vpdpbusd` multiplies 64 codes. Each block's factor `s_g · d_b` (weight scale times
//! activation scale) is computed per row up front, so the loop carries no per-group work.

use std::arch::x86_64::*;

use crate::matrix::QuantMatrix;
use crate::prepare::{Int8Activations, BLOCK};
use crate::x86::{dot3, hsum, row_scales, Scratch, SCALE_CHUNK};

/// One output: row `row` of `w` against int8 activations (block-permuted for 4-bit).
///
/// # Safety
/// The CPU must support AVX-512F/BW/VL, VNNI and F16C; `w` must be 4- or 8-bit, with even group
/// starts for 4-bit.
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512vnni,avx2,fma,f16c")]
pub unsafe fn row_dot(
    w: &QuantMatrix<'_>,
    row: usize,
    a: &Int8Activations,
    scratch: &mut Scratch,
) -> f32 {
    let codes = w.row_codes(row).as_ptr();
    let q = a.q.as_ptr();
    let d = a.block_scales.as_ptr();
    let (k, g, gpr) = (w.in_features(), w.group_len(), w.groups_per_row());
    let four = w.bits() == 4;
    let nib = _mm_set1_epi8(0x0f);
    let mut total = _mm256_setzero_ps();
    let mut scalar = 0f32;
    let mut blk = 0usize;
    let Scratch { sb, zb, .. } = scratch;
    for c0 in (0..gpr).step_by(SCALE_CHUNK) {
        let cn = SCALE_CHUNK.min(gpr - c0);
        row_scales(w, row, c0, cn, sb, zb);
        for j in 0..cn {
            let s0 = (c0 + j) * g;
            let e = (s0 + g).min(k);
            let nb = (e - s0) / BLOCK;
            let mut acc = _mm256_setzero_ps();
            for i in 0..nb {
                let cv = if four {
                    let b = _mm_loadu_si128(codes.add(s0 / 2 + 16 * i).cast());
                    let lo = _mm_and_si128(b, nib);
                    let hi = _mm_and_si128(_mm_srli_epi16::<4>(b), nib);
                    _mm256_set_m128i(hi, lo)
                } else {
                    _mm256_loadu_si256(codes.add(s0 + BLOCK * i).cast())
                };
                let qv = _mm256_loadu_si256(q.add((blk + i) * BLOCK).cast());
                let dot = _mm256_dpbusd_epi32(_mm256_setzero_si256(), cv, qv);
                acc = _mm256_fmadd_ps(
                    _mm256_cvtepi32_ps(dot),
                    _mm256_set1_ps(*d.add(blk + i)),
                    acc,
                );
            }
            blk += nb;
            total = _mm256_fmadd_ps(acc, _mm256_set1_ps(sb[j]), total);
            for c in s0 + nb * BLOCK..e {
                scalar += sb[j] * (w.code(row, c) as f32 - zb[j]) * a.x[c];
            }
        }
        scalar -= dot3(&sb[..cn], &zb[..cn], &a.group_corrections[c0..c0 + cn]);
    }
    hsum(total) + scalar
}

/// Per-block factors held at once (one chunk of groups of one block).
pub(crate) const PAIR_MAX_BLOCKS: usize = SCALE_CHUNK;

/// Whether [`row_dot_pairs`] runs `w`: 4-bit, groups made of whole blocks (or one per row).
pub(crate) fn pairs_apply(w: &QuantMatrix<'_>) -> bool {
    w.bits() == 4 && (w.groups_per_row() == 1 || w.group_len().is_multiple_of(BLOCK))
}

/// One output of a 4-bit row against int8 activations laid out by
/// [`Int8Activations::interleave_pairs`] (see the module docs).
///
/// Groups of one block (32) take per-block factors `s_g · d_b`, computed for the row up front
/// with one vectorized multiply; larger groups accumulate `d_b · dot_b` over the group (factors
/// that do not depend on the row) and multiply by `s_g` once per group.
///
/// # Safety
/// As [`row_dot`], and `pairs_apply` must hold for `w`.
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512vnni,avx2,fma,f16c")]
pub unsafe fn row_dot_pairs(
    w: &QuantMatrix<'_>,
    row: usize,
    a: &Int8Activations,
    scratch: &mut Scratch,
) -> f32 {
    let codes = w.row_codes(row).as_ptr();
    let (k, g, gpr) = (w.in_features(), w.group_len(), w.groups_per_row());
    // With groups of whole blocks, the full blocks are the first ⌊k/32⌋ of the row and only the
    // last group can have a tail.
    let nb = k / BLOCK;
    let per_group = if gpr == 1 { nb.max(1) } else { g / BLOCK };
    let Scratch { sb, zb, f } = scratch;
    let q = a.q.as_ptr();
    let consts = (
        _mm512_set1_epi8(0x0f),
        _mm512_inserti64x4::<1>(_mm512_setzero_si512(), _mm256_set1_epi16(4)),
        _mm512_set_epi32(1, 1, 1, 1, 0, 0, 0, 0, 1, 1, 1, 1, 0, 0, 0, 0),
    );
    let mut total = _mm512_setzero_ps();
    let mut sum = 0f32;
    let mut correction = 0f32;
    let mut b = 0;
    for c0 in (0..gpr).step_by(SCALE_CHUNK) {
        let cn = SCALE_CHUNK.min(gpr - c0);
        row_scales(w, row, c0, cn, sb, zb);
        correction += dot3(&sb[..cn], &zb[..cn], &a.group_corrections[c0..c0 + cn]);
        if per_group == 1 {
            // One block per group: factors s_g · d_b for the chunk, then pairs across groups.
            let b1 = (c0 + cn).min(nb);
            for ((fb, &s), &d) in f[..b1 - c0]
                .iter_mut()
                .zip(&sb[..cn])
                .zip(&a.block_scales[c0..b1])
            {
                *fb = s * d;
            }
            let fp = f.as_ptr().sub(c0);
            let (acc, odd) = blocks(codes, q, fp, &mut b, b1, consts);
            total = _mm512_add_ps(total, acc);
            sum += odd;
            continue;
        }
        let dp = a.block_scales.as_ptr();
        if a.span > 1 {
            // Runs of `span` blocks share one activation scale: sum each run in i32 (exact:
            // at most 8 × 32 × 15 × 127 per lane), convert once, scale by s_g · d_run.
            for (j, &s) in sb[..cn].iter().enumerate() {
                let b1 = ((c0 + j + 1) * per_group).min(nb);
                while b < b1 {
                    let run_end = (b + a.span).min(b1);
                    let d = *dp.add(b);
                    let mut acc = _mm512_setzero_si512();
                    let mut single_sum = 0i32;
                    while b + 2 <= run_end {
                        acc = pair_i32(codes, q, b, acc, consts.0, consts.1);
                        b += 2;
                    }
                    if b < run_end {
                        single_sum = single_i32(codes, q, b);
                        b += 1;
                    }
                    let total_i = _mm512_reduce_add_epi32(acc) + single_sum;
                    sum += s * d * total_i as f32;
                }
            }
            continue;
        }
        for (j, &s) in sb[..cn].iter().enumerate() {
            let b1 = ((c0 + j + 1) * per_group).min(nb);
            let (acc, odd) = blocks(codes, q, dp, &mut b, b1, consts);
            total = _mm512_fmadd_ps(acc, _mm512_set1_ps(s), total);
            sum += s * odd;
        }
    }
    sum += _mm512_reduce_add_ps(total);
    if nb * BLOCK < k {
        let (s, z) = w.scale_zero(row, gpr - 1);
        for c in nb * BLOCK..k {
            sum += s * (w.code(row, c) as f32 - z) * a.x[c];
        }
    }
    sum - correction
}

/// `Σ_b f[b] · dot_b` over blocks `*b..b1`, two at a time (as 16 f32 lanes) plus an odd last
/// block (as a scalar); advances `*b` to `b1`.
#[inline]
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512vnni,avx2")]
unsafe fn blocks(
    codes: *const u8,
    q: *const i8,
    f: *const f32,
    b: &mut usize,
    b1: usize,
    consts: (__m512i, __m512i, __m512i),
) -> (__m512, f32) {
    let (mut acc0, mut acc1) = (_mm512_setzero_ps(), _mm512_setzero_ps());
    while *b + 4 <= b1 {
        let (d0, f0) = pair(codes, q, f, *b, consts);
        let (d1, f1) = pair(codes, q, f, *b + 2, consts);
        acc0 = _mm512_fmadd_ps(d0, f0, acc0);
        acc1 = _mm512_fmadd_ps(d1, f1, acc1);
        *b += 4;
    }
    if *b + 2 <= b1 {
        let (d0, f0) = pair(codes, q, f, *b, consts);
        acc0 = _mm512_fmadd_ps(d0, f0, acc0);
        *b += 2;
    }
    let mut odd = 0f32;
    if *b < b1 {
        odd = single(codes, q, *b) * *f.add(*b);
        *b += 1;
    }
    (_mm512_add_ps(acc0, acc1), odd)
}

/// `Σ c·q` of one block (an odd one out of the two-block loop): `[low | high]` nibbles against
/// its `[e o]` activations.
#[inline]
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512vnni,avx2")]
unsafe fn single(codes: *const u8, q: *const i8, b: usize) -> f32 {
    single_i32(codes, q, b) as f32
}

/// [`single`] as an exact i32.
#[inline]
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512vnni,avx2")]
unsafe fn single_i32(codes: *const u8, q: *const i8, b: usize) -> i32 {
    let v = _mm_loadu_si128(codes.add(b * BLOCK / 2).cast());
    let nib = _mm_set1_epi8(0x0f);
    let cv = _mm256_set_m128i(
        _mm_and_si128(_mm_srli_epi16::<4>(v), nib),
        _mm_and_si128(v, nib),
    );
    let dot = _mm256_dpbusd_epi32(
        _mm256_setzero_si256(),
        cv,
        _mm256_loadu_si256(q.add(b * BLOCK).cast()),
    );
    let s = _mm_add_epi32(
        _mm256_castsi256_si128(dot),
        _mm256_extracti128_si256::<1>(dot),
    );
    let s = _mm_add_epi32(s, _mm_shuffle_epi32::<0b01_00_11_10>(s));
    let s = _mm_add_epi32(s, _mm_shuffle_epi32::<0b10_11_00_01>(s));
    _mm_cvtsi128_si32(s)
}

/// Blocks `b` and `b + 1` accumulated into the i32 lanes of `acc` (`vpdpbusd`).
#[inline]
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512vnni")]
unsafe fn pair_i32(
    codes: *const u8,
    q: *const i8,
    b: usize,
    acc: __m512i,
    mask: __m512i,
    shifts: __m512i,
) -> __m512i {
    let v = _mm512_broadcast_i64x4(_mm256_loadu_si256(codes.add(b * BLOCK / 2).cast()));
    let c = _mm512_and_si512(_mm512_srlv_epi16(v, shifts), mask);
    _mm512_dpbusd_epi32(acc, c, _mm512_loadu_si512(q.add(b * BLOCK).cast()))
}

/// Blocks `b` and `b + 1`: their 64 codes times their int8 activations (`vpdpbusd`, as f32) and
/// the per-lane factors `f[b]`, `f[b + 1]`.
#[inline]
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512vnni")]
unsafe fn pair(
    codes: *const u8,
    q: *const i8,
    f: *const f32,
    b: usize,
    (mask, shifts, lanes): (__m512i, __m512i, __m512i),
) -> (__m512, __m512) {
    let v = _mm512_broadcast_i64x4(_mm256_loadu_si256(codes.add(b * BLOCK / 2).cast()));
    let c = _mm512_and_si512(_mm512_srlv_epi16(v, shifts), mask);
    let qv = _mm512_loadu_si512(q.add(b * BLOCK).cast());
    let dot = _mm512_dpbusd_epi32(_mm512_setzero_si512(), c, qv);
    let two = _mm_castsi128_ps(_mm_loadl_epi64(f.add(b).cast()));
    let fac = _mm512_permutexvar_ps(lanes, _mm512_castps128_ps512(two));
    (_mm512_cvtepi32_ps(dot), fac)
}
