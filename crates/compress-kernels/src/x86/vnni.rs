//! The AVX-512 VNNI tier (int8 activations): `vpdpbusd` multiplies 32 unsigned codes by 32
//! signed 8-bit activations and sums each four into an i32 lane, exactly; each block's i32 sums
//! are scaled by the block's activation scale in f32, each group's by the weight scale.
//!
//! The result differs from the exact product only by the activation rounding: at most
//! `Σ_k |w_k| · d_b(k) / 2` (`d_b = max|x| / 127` over the block of 32 holding `k`), plus f32
//! rounding. This is the precision llama.cpp's CPU backend runs quantized models at.
//!
//! 4-bit weights whose groups are whole blocks (group size a multiple of 32, or one group per
//! row) take a four-block loop ([`row_dot_quads`]): one 64-byte load holds four blocks' codes;
//! a mask and a shift split it into their low and high nibbles, two `vpdpbusd` multiply all
//! 128 codes by activations laid out to meet them ([`Int8Activations::interleave_quads`]) into
//! 16 `i32` lanes, four per block, and one conversion and one fused multiply-add by the
//! per-lane factors `s_g · d_b` (weight scale times activation scale, made in a register for
//! each run of 16 blocks and spread over the lanes with one permute) add them to the f32
//! total: about ten vector instructions per 128 weights, with no per-group work in the loop. A symmetric weight's zero point is folded into the integer
//! sums (each lane starts at `−z · Σ q`, [`Int8Activations::lane_bias`]), so only asymmetric
//! weights pay a correction, once per group.

use std::arch::x86_64::*;

use crate::matrix::QuantMatrix;
use crate::prepare::{Int8Activations, BLOCK, QUAD};
use half::f16;

use crate::x86::{dot3, hsum, row_scales, widen, Scratch, SCALE_CHUNK};

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

/// Blocks whose factors `s_g · d_b` one register holds (four steps of the loop).
const RUN: usize = 16;

/// Whether [`row_dot_quads`] runs `w`: 4-bit, groups made of whole blocks (or one per row).
pub(crate) fn quads_apply(w: &QuantMatrix<'_>) -> bool {
    w.bits() == 4 && (w.groups_per_row() == 1 || w.group_len().is_multiple_of(BLOCK))
}

/// One output of a 4-bit row against int8 activations laid out by
/// [`Int8Activations::interleave_quads`] (see the module docs); `SYMMETRIC` says the layout
/// carries the weight's zero point in [`Int8Activations::lane_bias`].
///
/// The row is walked in runs of 16 blocks: one register of the run's factors `s_g · d_b`
/// (scales widened straight from the row, times the activation scales), then four steps of
/// four blocks, each spreading its four factors over its 16 lanes with one permute. Nothing is
/// stored and read back per row.
///
/// # Safety
/// As [`row_dot`]; `quads_apply` must hold for `w`, and `a` must have been laid out for `w`
/// with `interleave_quads` (with the zero point exactly when `SYMMETRIC`).
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512vnni,avx2,fma,f16c")]
pub unsafe fn row_dot_quads<const SYMMETRIC: bool>(
    w: &QuantMatrix<'_>,
    row: usize,
    a: &Int8Activations,
    scratch: &mut Scratch,
) -> f32 {
    let codes = w.row_codes(row).as_ptr();
    let (k, gpr) = (w.in_features(), w.groups_per_row());
    // With groups of whole blocks, the full blocks are the first ⌊k/32⌋ of the row and only the
    // last group can have a tail.
    let nb = k / BLOCK;
    let groups = RunGroups::new(w);
    let scales = w.row_scales(row);
    let q = a.q.as_ptr();
    let bias = a.lane_bias.as_ptr();
    let d = a.block_scales.as_ptr();
    let nibble = _mm512_set1_epi8(0x0f);
    let pick = [
        _mm512_set_epi32(3, 3, 3, 3, 2, 2, 2, 2, 1, 1, 1, 1, 0, 0, 0, 0),
        _mm512_set_epi32(7, 7, 7, 7, 6, 6, 6, 6, 5, 5, 5, 5, 4, 4, 4, 4),
        _mm512_set_epi32(11, 11, 11, 11, 10, 10, 10, 10, 9, 9, 9, 9, 8, 8, 8, 8),
        _mm512_set_epi32(
            15, 15, 15, 15, 14, 14, 14, 14, 13, 13, 13, 13, 12, 12, 12, 12,
        ),
    ];
    let step = |b: usize, load: __mmask64, fac: __m512, j: usize| {
        let dot = quad::<SYMMETRIC>(codes, q, bias, b, load, nibble);
        (_mm512_cvtepi32_ps(dot), _mm512_permutexvar_ps(pick[j], fac))
    };
    let (mut acc0, mut acc1) = (_mm512_setzero_ps(), _mm512_setzero_ps());
    let mut r = 0;
    while r + RUN <= nb {
        // Codes 1 KiB ahead (four cache lines per run of 16 blocks): from DRAM the loop
        // otherwise waits on the hardware prefetcher (int4 g32 GEMV over 256 MiB on this
        // project's 2-core AMD EPYC: 17 → 21 GB/s on one thread; distances of 0.5–4 KiB were
        // tried, docs/kernels.md). Prefetches past the row are harmless hints.
        let pf = codes.add(r * BLOCK / 2 + 1024);
        _mm_prefetch::<_MM_HINT_T0>(pf.cast());
        _mm_prefetch::<_MM_HINT_T0>(pf.add(64).cast());
        _mm_prefetch::<_MM_HINT_T0>(pf.add(128).cast());
        _mm_prefetch::<_MM_HINT_T0>(pf.add(192).cast());
        let fac = groups.factors(scales, r, d, &mut scratch.sb);
        let (d0, f0) = step(r, u64::MAX, fac, 0);
        let (d1, f1) = step(r + QUAD, u64::MAX, fac, 1);
        let (d2, f2) = step(r + 2 * QUAD, u64::MAX, fac, 2);
        let (d3, f3) = step(r + 3 * QUAD, u64::MAX, fac, 3);
        acc0 = _mm512_fmadd_ps(d0, f0, acc0);
        acc1 = _mm512_fmadd_ps(d1, f1, acc1);
        acc0 = _mm512_fmadd_ps(d2, f2, acc0);
        acc1 = _mm512_fmadd_ps(d3, f3, acc1);
        r += RUN;
    }
    if r < nb {
        // The last 1–15 blocks; the final step of four may be partial: a masked load (no read
        // past the row; missing codes are 0, and so are the padded activations and factors).
        let fac = groups.factors(scales, r, d, &mut scratch.sb);
        for j in 0..(nb - r).div_ceil(QUAD) {
            let b = r + j * QUAD;
            let load = match nb - b {
                n if n >= QUAD => u64::MAX,
                n => (1u64 << (n * BLOCK / 2)) - 1,
            };
            let (d0, f0) = step(b, load, fac, j);
            acc0 = _mm512_fmadd_ps(d0, f0, acc0);
        }
    }
    let mut sum = _mm512_reduce_add_ps(_mm512_add_ps(acc0, acc1));
    if !SYMMETRIC {
        let Scratch { sb, zb, .. } = scratch;
        for c0 in (0..gpr).step_by(SCALE_CHUNK) {
            let cn = SCALE_CHUNK.min(gpr - c0);
            row_scales(w, row, c0, cn, sb, zb);
            sum -= dot3(&sb[..cn], &zb[..cn], &a.group_corrections[c0..c0 + cn]);
        }
    }
    if nb * BLOCK < k {
        let (s, z) = w.scale_zero(row, gpr - 1);
        for c in nb * BLOCK..k {
            sum += s * (w.code(row, c) as f32 - z) * a.x[c];
        }
    }
    sum
}

/// How a run of 16 blocks (starting at a multiple of 16) meets a weight's groups.
struct RunGroups {
    /// Blocks per group (all of the row's when it has one group).
    per_group: usize,
    /// Whether every run meets its groups in one fixed pattern: groups of 1, 2, 4 or 8 blocks
    /// (block `l` of a run in group `l / per_group` of it), of a multiple of 16 blocks, or one
    /// group per row (one group for the whole run).
    fixed: bool,
    /// `log2(per_group)` when it is a power of two (the group of block `b` is `b >> shift`).
    shift: Option<u32>,
    /// For a fixed pattern, the group of the run each lane reads.
    spread: __m512i,
}

impl RunGroups {
    #[inline]
    #[target_feature(enable = "avx512f")]
    unsafe fn new(w: &QuantMatrix<'_>) -> Self {
        let one_group = w.groups_per_row() == 1;
        // One group per row: a power of two past any row length, so every block is in group 0.
        let per_group = if one_group {
            1 << 62
        } else {
            w.group_len() / BLOCK
        };
        let fixed = one_group
            || per_group.is_multiple_of(RUN)
            || (per_group.is_power_of_two() && per_group < RUN);
        let mut lanes = [0i32; RUN];
        if per_group < RUN {
            for (l, v) in lanes.iter_mut().enumerate() {
                *v = (l / per_group) as i32;
            }
        }
        Self {
            per_group,
            fixed,
            shift: per_group
                .is_power_of_two()
                .then(|| per_group.trailing_zeros()),
            spread: _mm512_loadu_si512(lanes.as_ptr().cast()),
        }
    }

    /// The group of block `b`.
    #[inline(always)]
    fn group(&self, b: usize) -> usize {
        match self.shift {
            Some(s) => b >> s,
            None => b / self.per_group,
        }
    }

    /// The factors `s_g · d_b` of blocks `r..r + 16` (`r` a multiple of 16; `d` padded with
    /// zeros to a multiple of 16 blocks, so blocks past the row get 0).
    ///
    /// # Safety
    /// Only called from [`row_dot_quads`] (whose features it is inlined with); `d` must hold
    /// `r + 16` values.
    #[inline(always)]
    unsafe fn factors(
        &self,
        scales: &[f16],
        r: usize,
        d: *const f32,
        sb: &mut [f32; SCALE_CHUNK],
    ) -> __m512 {
        let dv = _mm512_loadu_ps(d.add(r));
        if self.fixed {
            // The run's first group and at most 16 scales from it, never past the row (masked
            // lanes are 0).
            let g = self.group(r);
            let left = (scales.len() - g).min(RUN);
            let raw = _mm256_maskz_loadu_epi16(
                (1u32 << left).wrapping_sub(1) as u16,
                scales.as_ptr().add(g).cast(),
            );
            let s = _mm512_permutexvar_ps(self.spread, _mm512_cvtph_ps(raw));
            return _mm512_mul_ps(s, dv);
        }
        // Other group sizes (3, 5, 6, 7, 9–15 blocks, …): one scale per lane.
        let g0 = self.group(r);
        let g1 = (self.group(r + RUN - 1) + 1).min(scales.len());
        widen(&scales[g0..g1], sb);
        let mut lanes = [0f32; RUN];
        for (l, v) in lanes.iter_mut().enumerate() {
            *v = sb[self.group(r + l).min(g1 - 1) - g0];
        }
        _mm512_mul_ps(_mm512_loadu_ps(lanes.as_ptr()), dv)
    }
}

/// The 16 `i32` lanes of blocks `b..b + 4` (four lanes per block): `Σ c · q`, or with
/// `SYMMETRIC` `Σ (c − z) · q` (from the lane biases). `load` masks the code bytes read.
#[inline]
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512vnni")]
unsafe fn quad<const SYMMETRIC: bool>(
    codes: *const u8,
    q: *const i8,
    bias: *const i32,
    b: usize,
    load: __mmask64,
    nibble: __m512i,
) -> __m512i {
    let v = _mm512_maskz_loadu_epi8(load, codes.add(b * BLOCK / 2).cast());
    let lo = _mm512_and_si512(v, nibble);
    let hi = _mm512_and_si512(_mm512_srli_epi16::<4>(v), nibble);
    let start = if SYMMETRIC {
        _mm512_loadu_si512(bias.add(b / QUAD * 16).cast())
    } else {
        _mm512_setzero_si512()
    };
    let qb = q.add(b * BLOCK);
    let acc = _mm512_dpbusd_epi32(start, lo, _mm512_loadu_si512(qb.cast()));
    _mm512_dpbusd_epi32(acc, hi, _mm512_loadu_si512(qb.add(2 * BLOCK).cast()))
}
