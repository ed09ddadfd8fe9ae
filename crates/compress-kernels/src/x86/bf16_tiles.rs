//! Filling AMX bf16 tiles straight from f32 matrices with AVX-512 (convert, interleave and
//! transpose in registers), for the operand packing of [`crate::dense`].
//!
//! A tile is 16 rows of 64 bytes. The two layouts `TDPBF16PS` reads are
//! - **rows** (its `A` operand): tile row `r` holds 32 consecutive bf16 values of one matrix
//!   row — one `vcvtne2ps2bf16` of two 16-float loads;
//! - **pairs** (its `B` operand): tile row `r`, 32-bit lane `n` holds the pair
//!   `(M[n][2r], M[n][2r + 1])` — the 16 × 16 transpose, in 32-bit units, of the rows layout.
//!
//! For a matrix given transposed (the `Xᵀ` of a Gram matrix `XᵀX`, with `X` row-major) the
//! pairs layout is the cheap one instead: lane `n` of row `r` pairs `X[2r][n]` with
//! `X[2r + 1][n]`, an interleave of two consecutive rows of `X` (`vpermw`), and the rows layout
//! is its transpose. So every case is one of two register fills plus, for two of the four, a
//! 16 × 16 transpose of 32-bit lanes. Values outside the matrix (ragged edges) are zeros, so
//! every byte of the tile is written.

use std::arch::x86_64::*;

use super::amx::Tile;

/// Whether the CPU has what these routines need (AVX-512 F/BW and BF16; every AMX CPU does).
pub fn available() -> bool {
    std::arch::is_x86_feature_detected!("avx512f")
        && std::arch::is_x86_feature_detected!("avx512bw")
        && std::arch::is_x86_feature_detected!("avx512bf16")
}

/// A mask of the low `n` of 16 lanes.
#[inline(always)]
fn lanes(n: usize) -> __mmask16 {
    if n >= 16 {
        0xffff
    } else {
        ((1u32 << n) - 1) as __mmask16
    }
}

/// Tile rows from `rows ≤ 16` rows of `cols ≤ 32` f32 values at `src`, `ld` apart: row `r`
/// becomes the bf16 values of source row `r` (zeros past `cols` and past `rows`).
///
/// # Safety
/// The CPU has AVX-512 F/BW/BF16; `src + r·ld + c` is readable for `r < rows`, `c < cols`.
#[target_feature(enable = "avx512f,avx512bw,avx512bf16")]
unsafe fn fill_rows(src: *const f32, ld: usize, rows: usize, cols: usize) -> [__m512i; 16] {
    let (lo, hi) = (lanes(cols), lanes(cols.saturating_sub(16)));
    let mut out = [_mm512_setzero_si512(); 16];
    for (r, o) in out.iter_mut().enumerate().take(rows) {
        // SAFETY: masked loads touch only the `cols` readable values of row `r`.
        unsafe {
            let p = src.add(r * ld);
            let a = _mm512_maskz_loadu_ps(lo, p);
            let b = _mm512_maskz_loadu_ps(hi, p.add(16));
            *o = std::mem::transmute::<__m512bh, __m512i>(_mm512_cvtne2ps_pbh(b, a));
        }
    }
    out
}

/// Tile rows in the pairs layout from `rows ≤ 32` rows of `cols ≤ 16` f32 values at `src`,
/// `ld` apart: lane `n` of tile row `r` is `(src[2r][n], src[2r + 1][n])` (zeros outside).
///
/// # Safety
/// As [`fill_rows`], for `rows ≤ 32` rows of `cols ≤ 16` values.
#[target_feature(enable = "avx512f,avx512bw,avx512bf16")]
unsafe fn fill_pairs(src: *const f32, ld: usize, rows: usize, cols: usize) -> [__m512i; 16] {
    let m = lanes(cols);
    // Word 2n takes word n (the even row), word 2n + 1 takes word 16 + n (the odd row).
    let interleave = _mm512_set_epi16(
        31, 15, 30, 14, 29, 13, 28, 12, 27, 11, 26, 10, 25, 9, 24, 8, 23, 7, 22, 6, 21, 5, 20, 4,
        19, 3, 18, 2, 17, 1, 16, 0,
    );
    let mut out = [_mm512_setzero_si512(); 16];
    for (r, o) in out.iter_mut().enumerate() {
        let (e, od) = (2 * r, 2 * r + 1);
        if e >= rows {
            break;
        }
        // SAFETY: rows `e` (< rows) and `od` (only when < rows) hold `cols` readable values.
        unsafe {
            let a = _mm512_maskz_loadu_ps(m, src.add(e * ld));
            let b = if od < rows {
                _mm512_maskz_loadu_ps(m, src.add(od * ld))
            } else {
                _mm512_setzero_ps()
            };
            let v = std::mem::transmute::<__m512bh, __m512i>(_mm512_cvtne2ps_pbh(b, a));
            *o = _mm512_permutexvar_epi16(interleave, v);
        }
    }
    out
}

/// The 16 × 16 transpose of 32-bit lanes: lane `j` of row `i` moves to lane `i` of row `j`.
#[target_feature(enable = "avx512f")]
fn transpose(r: [__m512i; 16]) -> [__m512i; 16] {
    // 2 × 2 blocks of lanes, then 4 × 4, within 128-bit lanes; then the 128-bit blocks.
    let mut t = [_mm512_setzero_si512(); 16];
    for i in 0..8 {
        t[2 * i] = _mm512_unpacklo_epi32(r[2 * i], r[2 * i + 1]);
        t[2 * i + 1] = _mm512_unpackhi_epi32(r[2 * i], r[2 * i + 1]);
    }
    let mut u = [_mm512_setzero_si512(); 16];
    for i in 0..4 {
        let b = 4 * i;
        u[b] = _mm512_unpacklo_epi64(t[b], t[b + 2]);
        u[b + 1] = _mm512_unpackhi_epi64(t[b], t[b + 2]);
        u[b + 2] = _mm512_unpacklo_epi64(t[b + 1], t[b + 3]);
        u[b + 3] = _mm512_unpackhi_epi64(t[b + 1], t[b + 3]);
    }
    // u[4q + k] holds, in 128-bit block b, lane k of rows 4b'.. — the 4 × 4 block (rows 4q..,
    // lanes 4b..) transposed. Gather the blocks: even 128-bit blocks (0x88), odd (0xdd).
    let mut v = [_mm512_setzero_si512(); 16];
    for k in 0..4 {
        v[k] = _mm512_shuffle_i32x4::<0x88>(u[k], u[4 + k]);
        v[4 + k] = _mm512_shuffle_i32x4::<0xdd>(u[k], u[4 + k]);
        v[8 + k] = _mm512_shuffle_i32x4::<0x88>(u[8 + k], u[12 + k]);
        v[12 + k] = _mm512_shuffle_i32x4::<0xdd>(u[8 + k], u[12 + k]);
    }
    let mut w = [_mm512_setzero_si512(); 16];
    for k in 0..4 {
        w[k] = _mm512_shuffle_i32x4::<0x88>(v[k], v[8 + k]);
        w[4 + k] = _mm512_shuffle_i32x4::<0x88>(v[4 + k], v[12 + k]);
        w[8 + k] = _mm512_shuffle_i32x4::<0xdd>(v[k], v[8 + k]);
        w[12 + k] = _mm512_shuffle_i32x4::<0xdd>(v[4 + k], v[12 + k]);
    }
    w
}

/// Stores 16 registers as the 16 rows of `tile`.
///
/// # Safety
/// `tile` is valid for a 1 KiB write (alignment not required).
#[target_feature(enable = "avx512f")]
unsafe fn store(tile: *mut Tile, rows: [__m512i; 16]) {
    let p = tile as *mut __m512i;
    for (r, v) in rows.into_iter().enumerate() {
        // SAFETY: row `r` of the tile is 64 bytes at offset 64·r.
        unsafe { _mm512_storeu_si512(p.add(r), v) };
    }
}

/// Where a tile's values come from: a `rows × cols` block (`rows ≤ 16`, `cols ≤ 32`) of a
/// logical matrix `M`, at `src` in memory that holds `M` row-major (`transposed = false`,
/// `src` at `M[i0][j0]`, rows `ld` apart) or `Mᵀ` row-major (`transposed = true`, `src` at
/// `Mᵀ[j0][i0]`, rows of `Mᵀ` `ld` apart).
#[derive(Clone, Copy, Debug)]
pub struct Block {
    /// The block's first value in memory.
    pub src: *const f32,
    /// Distance between consecutive rows of the stored matrix, in values.
    pub ld: usize,
    /// Rows of `M` in the block (≤ 16).
    pub rows: usize,
    /// Columns of `M` in the block (≤ 32).
    pub cols: usize,
    /// Whether memory holds `Mᵀ` rather than `M`.
    pub transposed: bool,
}

/// Writes the tile of `block` in the rows layout (`pairs = false`) or the pairs layout.
///
/// # Safety
/// [`available`] is true; the block's values are readable as described by [`Block`]; `tile`
/// is valid for a 1 KiB write.
pub unsafe fn fill(block: Block, pairs: bool, tile: *mut Tile) {
    let Block {
        src,
        ld,
        rows,
        cols,
        transposed,
    } = block;
    debug_assert!(rows <= 16 && cols <= 32);
    // SAFETY: the caller's guarantees are those of the helpers.
    unsafe {
        let regs = if transposed {
            // Memory rows are columns of M: `cols` of them, `rows` values each.
            let p = fill_pairs(src, ld, cols, rows);
            if pairs {
                p
            } else {
                transpose(p)
            }
        } else {
            let r = fill_rows(src, ld, rows, cols);
            if pairs {
                transpose(r)
            } else {
                r
            }
        };
        store(tile, regs);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::dense::to_bf16;

    /// The layouts by definition, one value at a time.
    fn reference(
        m: &[f32],
        mcols: usize,
        i0: usize,
        j0: usize,
        rows: usize,
        cols: usize,
        pairs: bool,
    ) -> Tile {
        let mut t = Tile::ZERO;
        for r in 0..rows {
            for c in 0..cols {
                let v = to_bf16(m[(i0 + r) * mcols + j0 + c]);
                let at = if pairs {
                    (c / 2) * 32 + 2 * r + c % 2
                } else {
                    r * 32 + c
                };
                t.0[at] = v;
            }
        }
        t
    }

    #[test]
    fn every_layout_and_edge_matches_the_definition() {
        if !available() {
            eprintln!("skipped: no AVX-512 BF16 on this CPU");
            return;
        }
        let (mrows, mcols) = (40, 70);
        let m: Vec<f32> = (0..mrows * mcols)
            .map(|i| (i as f32 * 0.731).sin() * 3.0)
            .collect();
        let mut mt = vec![0f32; m.len()];
        for i in 0..mrows {
            for j in 0..mcols {
                mt[j * mrows + i] = m[i * mcols + j];
            }
        }
        for &(i0, j0, rows, cols) in &[
            (0, 0, 16, 32),
            (3, 5, 16, 32),
            (24, 38, 16, 32),
            (30, 60, 10, 10),
            (1, 2, 1, 1),
            (0, 0, 7, 31),
            (5, 0, 16, 17),
        ] {
            for pairs in [false, true] {
                let want = reference(&m, mcols, i0, j0, rows, cols, pairs);
                for transposed in [false, true] {
                    let block = if transposed {
                        Block {
                            src: mt[j0 * mrows + i0..].as_ptr(),
                            ld: mrows,
                            rows,
                            cols,
                            transposed,
                        }
                    } else {
                        Block {
                            src: m[i0 * mcols + j0..].as_ptr(),
                            ld: mcols,
                            rows,
                            cols,
                            transposed,
                        }
                    };
                    let mut got = Tile([0xffff; 512]);
                    // SAFETY: checked `available`; the block lies inside `m`/`mt`.
                    unsafe { fill(block, pairs, &mut got) };
                    assert!(
                        got.0 == want.0,
                        "block ({i0}, {j0}) {rows}×{cols}, pairs {pairs}, transposed {transposed}"
                    );
                }
            }
        }
    }
}
