//! The bf16 block kernel of [`crate::dense`] for CPUs with AVX-512 BF16 but no AMX (AMD Zen 4,
//! Intel Cooper Lake), reading the same packed tiles as [`super::amx::block_32x32`].
//!
//! `vdpbf16ps` takes two registers of 16 bf16 pairs and adds each lane's two products to an
//! f32 lane: `c[n] += a[2n]·b[2n] + a[2n+1]·b[2n+1]` (Intel SDM, "VDPBF16PS"). A `B` tile in the
//! pairs layout already holds, in row `r`, lane `n`, the pair `(B[n][2r], B[n][2r+1])` of output
//! column `n`, so one 64-byte row of it is a whole right operand; the left operand is the pair
//! `(A[i][2r], A[i][2r+1])` of one activation row broadcast to all lanes — one 32-bit load from
//! the row-layout `A` tile. Each instruction is 32 multiply-adds, twice an f32 FMA's 16, which
//! is the speed-up over faer's f32 GEMM this buys where AMX is missing.
//!
//! A 32 × 32 block of `C` is computed as four strips of 8 rows × 32 columns: 16 accumulators
//! held in registers over all `K`, two `B` rows loaded per pair step and reused by the 8 rows.

use std::arch::x86_64::*;

use super::amx::Tile;

/// `C[32 × 32] += A · B` (or `C = A · B` when `accumulate` is false), the contract of
/// [`super::amx::block_32x32`] without a tile scope: `a0`/`a1` point at the first row-layout
/// tiles of rows 0–15 and 16–31 of `A`, `b0`/`b1` at the first pairs-layout tiles of columns
/// 0–15 and 16–31 of `B`, each next step of 32 along `K` 1 KiB later; `c` is f32 with rows
/// `ldc` floats apart.
///
/// # Safety
/// The CPU has AVX-512 F and BF16 ([`super::bf16_tiles::available`]); every pointer is valid
/// for `k_tiles` tiles and the 32 × 32 block of `c` read and written.
#[target_feature(enable = "avx512f,avx512bf16")]
#[allow(clippy::too_many_arguments)]
pub unsafe fn block_32x32(
    a0: *const Tile,
    a1: *const Tile,
    b0: *const Tile,
    b1: *const Tile,
    k_tiles: usize,
    c: *mut f32,
    ldc: usize,
    accumulate: bool,
) {
    for strip in 0..4 {
        let a = if strip < 2 { a0 } else { a1 };
        let first = (strip % 2) * 8;
        let mut acc = [[_mm512_setzero_ps(); 2]; 8];
        for s in 0..k_tiles {
            // SAFETY: step `s` of each panel is inside the caller's tiles; a tile is 16 rows of
            // 16 u32 (bf16 pairs) or of one 64-byte register.
            unsafe {
                let at = a.add(s) as *const u32;
                let (bt0, bt1) = (b0.add(s) as *const __m512i, b1.add(s) as *const __m512i);
                for pair in 0..16 {
                    let v0: __m512bh = std::mem::transmute(_mm512_load_si512(bt0.add(pair)));
                    let v1: __m512bh = std::mem::transmute(_mm512_load_si512(bt1.add(pair)));
                    for (r, acc) in acc.iter_mut().enumerate() {
                        let x = *at.add((first + r) * 16 + pair) as i32;
                        let x: __m512bh = std::mem::transmute(_mm512_set1_epi32(x));
                        acc[0] = _mm512_dpbf16_ps(acc[0], x, v0);
                        acc[1] = _mm512_dpbf16_ps(acc[1], x, v1);
                    }
                }
            }
        }
        for (r, acc) in acc.iter().enumerate() {
            // SAFETY: row `8·strip + r` of the caller's 32 × 32 block.
            unsafe {
                let p = c.add((8 * strip + r) * ldc);
                let (mut lo, mut hi) = (acc[0], acc[1]);
                if accumulate {
                    lo = _mm512_add_ps(lo, _mm512_loadu_ps(p));
                    hi = _mm512_add_ps(hi, _mm512_loadu_ps(p.add(16)));
                }
                _mm512_storeu_ps(p, lo);
                _mm512_storeu_ps(p.add(16), hi);
            }
        }
    }
}
