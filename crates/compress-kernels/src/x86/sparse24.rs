//! AVX-512 GEMV row of the 2:4-sparse layout ([`crate::sparse24`]).
//!
//! Per 32 dense columns (8 blocks of 4): 8 code bytes hold the 16 kept codes (lane `l` is the
//! nibble at bit `4l`) and 4 index bytes their offsets (lane `l` at bit `2l`); variable shifts
//! spread both over 16 lanes, `block base + offset` indexes the 32 activations held in two
//! vectors, one `vpermt2ps` gathers them, and `s·c − s·z` times the gathered activations
//! accumulates in one fused multiply-add.

use std::arch::x86_64::*;

use crate::sparse24::Sparse24;

/// Lane constants of the 32-column step.
struct Lanes {
    code_shift: __m512i,
    index_shift: __m512i,
    base: __m512i,
    nib: __m512i,
    two_bits: __m512i,
}

impl Lanes {
    #[inline(always)]
    unsafe fn new() -> Self {
        Lanes {
            code_shift: _mm512_setr_epi32(0, 4, 8, 12, 16, 20, 24, 28, 0, 4, 8, 12, 16, 20, 24, 28),
            index_shift: _mm512_setr_epi32(
                0, 2, 4, 6, 8, 10, 12, 14, 16, 18, 20, 22, 24, 26, 28, 30,
            ),
            base: _mm512_setr_epi32(0, 0, 4, 4, 8, 8, 12, 12, 16, 16, 20, 20, 24, 24, 28, 28),
            nib: _mm512_set1_epi32(15),
            two_bits: _mm512_set1_epi32(3),
        }
    }

    /// The 16 kept weights `s·c − s·z` of the 32 columns at code byte `c / 4` and index byte
    /// `c / 8`, and their dense columns relative to the step (0–31).
    #[inline(always)]
    unsafe fn decode(
        &self,
        codes: *const u8,
        index: *const u8,
        sv: __m512,
        szv: __m512,
    ) -> (__m512, __m512i) {
        // SAFETY (caller): 8 readable bytes at `codes`, 4 at `index`.
        let (u, ix) = unsafe {
            (
                codes.cast::<u64>().read_unaligned(),
                index.cast::<u32>().read_unaligned(),
            )
        };
        let halves = _mm512_mask_blend_epi32(
            0xff00,
            _mm512_set1_epi32(u as u32 as i32),
            _mm512_set1_epi32((u >> 32) as u32 as i32),
        );
        let q = _mm512_and_si512(_mm512_srlv_epi32(halves, self.code_shift), self.nib);
        let off = _mm512_and_si512(
            _mm512_srlv_epi32(_mm512_set1_epi32(ix as i32), self.index_shift),
            self.two_bits,
        );
        (
            _mm512_fmsub_ps(_mm512_cvtepi32_ps(q), sv, szv),
            _mm512_add_epi32(self.base, off),
        )
    }
}

/// Dequantizes row `row` of `w` into `out` (`in` values, pruned weights 0): per 32 columns the
/// 16 kept weights are spread back to their columns with permutes and position compares.
///
/// # Safety
/// As [`row_dot`]; `out` must hold `in` values.
#[target_feature(enable = "avx512f")]
pub unsafe fn dequantize_row(w: &Sparse24, row: usize, out: &mut [f32]) {
    let (codes, index, scales, zeros) = w.row_parts(row);
    let [_, k] = w.shape();
    let g = w.group_len();
    debug_assert!(g.is_multiple_of(32) && out.len() >= k);
    // SAFETY: the caller's CPU has AVX-512F.
    let l = unsafe { Lanes::new() };
    // Dense column p of a 16-column half reads lane 2·(p / 4) (first kept) or the next one.
    let first = _mm512_setr_epi32(0, 0, 0, 0, 2, 2, 2, 2, 4, 4, 4, 4, 6, 6, 6, 6);
    let second = _mm512_add_epi32(first, _mm512_set1_epi32(1));
    let eight = _mm512_set1_epi32(8);
    let col = _mm512_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15);
    let op = out.as_mut_ptr();
    for (gi, &s) in scales.iter().enumerate() {
        let s = s.to_f32();
        let z = zeros.map_or(8.0, |z| z[gi].to_f32());
        let (sv, szv) = (_mm512_set1_ps(s), _mm512_set1_ps(s * z));
        let end = ((gi + 1) * g).min(k);
        let mut c = gi * g;
        while c + 32 <= end {
            // SAFETY: `c + 32 ≤ k`, as in `row_dot`.
            let (wv, pos) = unsafe {
                l.decode(
                    codes.as_ptr().add(c / 4),
                    index.as_ptr().add(c / 8),
                    sv,
                    szv,
                )
            };
            for (h, at) in [(0, col), (1, _mm512_add_epi32(col, _mm512_set1_epi32(16)))] {
                let (i0, i1) = if h == 0 {
                    (first, second)
                } else {
                    (
                        _mm512_add_epi32(first, eight),
                        _mm512_add_epi32(second, eight),
                    )
                };
                let m0 = _mm512_cmpeq_epi32_mask(_mm512_permutexvar_epi32(i0, pos), at);
                let m1 = _mm512_cmpeq_epi32_mask(_mm512_permutexvar_epi32(i1, pos), at);
                let v = _mm512_mask_mov_ps(_mm512_setzero_ps(), m0, _mm512_permutexvar_ps(i0, wv));
                let v = _mm512_mask_mov_ps(v, m1, _mm512_permutexvar_ps(i1, wv));
                // SAFETY: 16 floats at `c + 16·h`, inside `out`.
                unsafe { _mm512_storeu_ps(op.add(c + 16 * h), v) };
            }
            c += 32;
        }
    }
}

/// One output: row `row` of `w` against the activation row `x`.
///
/// # Safety
/// The CPU must support AVX-512F; `w`'s rows and groups must be multiples of 32 columns (so
/// the 32-column steps cover every group, the last included) and `x` must hold `in` values.
#[target_feature(enable = "avx512f")]
pub unsafe fn row_dot(w: &Sparse24, row: usize, x: &[f32]) -> f32 {
    let (codes, index, scales, zeros) = w.row_parts(row);
    let [_, k] = w.shape();
    let g = w.group_len();
    debug_assert!(g.is_multiple_of(32) && x.len() == k);
    // SAFETY: the caller's CPU has AVX-512F.
    let l = unsafe { Lanes::new() };
    let mut acc = _mm512_setzero_ps();
    let xp = x.as_ptr();
    for (gi, &s) in scales.iter().enumerate() {
        let s = s.to_f32();
        let z = zeros.map_or(8.0, |z| z[gi].to_f32());
        let (sv, szv) = (_mm512_set1_ps(s), _mm512_set1_ps(s * z));
        let start = gi * g;
        let end = (start + g).min(k);
        let mut c = start;
        while c + 32 <= end {
            // SAFETY: `c + 32 ≤ k`: 8 code bytes from `c / 4` and 4 index bytes from `c / 8`
            // lie inside the row's `k / 4` and `k / 8` bytes, 32 floats inside `x`.
            let (wv, pos, xlo, xhi) = unsafe {
                let (wv, pos) = l.decode(
                    codes.as_ptr().add(c / 4),
                    index.as_ptr().add(c / 8),
                    sv,
                    szv,
                );
                (
                    wv,
                    pos,
                    _mm512_loadu_ps(xp.add(c)),
                    _mm512_loadu_ps(xp.add(c + 16)),
                )
            };
            let xg = _mm512_permutex2var_ps(xlo, pos, xhi);
            acc = _mm512_fmadd_ps(wv, xg, acc);
            c += 32;
        }
    }
    _mm512_reduce_add_ps(acc)
}
