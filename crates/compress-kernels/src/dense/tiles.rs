//! Operand packing into bf16 tiles and the blocked, threaded driver, which runs each 32 × 32
//! block of `C` on AMX ([`amx::block_32x32`]) or, without AMX, on AVX-512 BF16's `vdpbf16ps`
//! ([`bf16_dot::block_32x32`]) over the same tiles.
//!
//! `A` (`M × K`) is cut into panels of 16 rows and steps of 32 columns: tile `(p, s)` at
//! index `p · steps + s` holds `A[16p + r][32s + c]` at `r · 32 + c`. `B` is given as
//! `N × K` (a weight, or `Xᵀ` for a Gram matrix) and laid out for `C = A · Bᵀ` in AMX's
//! pair ("VNNI") layout: tile `(p, s)` holds `B[16p + n][32s + 2r + e]` at
//! `r · 32 + 2n + e`. Rows are padded to a multiple of 32 and columns to a multiple of 32
//! with zeros, which add nothing to the sums. Successive steps of a panel are 1 KiB apart,
//! so the micro-kernel walks `K` by pointer increments.

use std::mem::MaybeUninit;

use super::*;
use crate::x86::amx::{self, Tile, TileScope};
use crate::x86::{bf16_dot, bf16_tiles};

/// Steps of 32 along `K` per pass over a block of `C` (its tiles are loaded and stored once
/// per pass).
const MAX_STEPS: usize = 32;
/// 32-column blocks of `B` taken together, to keep them in L2 while `A` panels stream.
const N_BLOCKS: usize = 16;

/// An f32 matrix of `rows × cols`, row-major, or the transpose of a row-major
/// `cols × rows` matrix.
#[derive(Clone, Copy)]
pub(super) struct View<'a> {
    data: &'a [f32],
    rows: usize,
    cols: usize,
    transposed: bool,
}

impl<'a> View<'a> {
    /// A row-major `rows × cols` matrix.
    pub(super) fn row_major(data: &'a [f32], rows: usize, cols: usize) -> Self {
        Self {
            data,
            rows,
            cols,
            transposed: false,
        }
    }

    /// The transpose (`rows × cols`) of a row-major `cols × rows` matrix.
    pub(super) fn transposed(data: &'a [f32], rows: usize, cols: usize) -> Self {
        Self {
            data,
            rows,
            cols,
            transposed: true,
        }
    }
}

/// `v`'s tiles in the `A` layout (`pairs = false`) or the `B` pair layout (`pairs = true`):
/// converted and rearranged in AVX-512 registers ([`bf16_tiles`]), each tile written once.
fn pack(v: View<'_>, pairs: bool) -> Vec<Tile> {
    if !bf16_tiles::available() {
        return pack_scalar(v, pairs);
    }
    let panels = v.rows.div_ceil(32) * 2;
    let steps = v.cols.div_ceil(32);
    let mut tiles: Vec<MaybeUninit<Tile>> = Vec::with_capacity(panels * steps);
    tiles.resize_with(panels * steps, MaybeUninit::uninit);
    let data = SendPtr(v.data.as_ptr() as *mut f32);
    tiles
        .par_chunks_mut(steps)
        .enumerate()
        .for_each(|(p, panel)| {
            let i0 = 16 * p;
            for (s, tile) in panel.iter_mut().enumerate() {
                let j0 = 32 * s;
                if i0 >= v.rows {
                    tile.write(Tile::ZERO);
                    continue;
                }
                let (rows, cols) = ((v.rows - i0).min(16), (v.cols - j0).min(32));
                let (at, ld) = if v.transposed {
                    (j0 * v.rows + i0, v.rows)
                } else {
                    (i0 * v.cols + j0, v.cols)
                };
                let block = bf16_tiles::Block {
                    // SAFETY: `at` indexes the block's first value, inside `v.data`.
                    src: unsafe { data.get().add(at) },
                    ld,
                    rows,
                    cols,
                    transposed: v.transposed,
                };
                // SAFETY: checked `available`; the block's rows and columns lie inside
                // `v.data` (`rows`, `cols` clipped to the matrix); the tile is 1 KiB.
                unsafe { bf16_tiles::fill(block, pairs, tile.as_mut_ptr()) };
            }
        });
    // SAFETY: every tile was written above; `MaybeUninit<Tile>` has `Tile`'s layout.
    unsafe {
        let mut tiles = std::mem::ManuallyDrop::new(tiles);
        Vec::from_raw_parts(
            tiles.as_mut_ptr() as *mut Tile,
            tiles.len(),
            tiles.capacity(),
        )
    }
}

/// [`pack`] one value at a time, for CPUs without AVX-512 BF16 (none with AMX is known).
fn pack_scalar(v: View<'_>, pairs: bool) -> Vec<Tile> {
    // Converted once in the source's own (contiguous) layout; the tiles are then assembled
    // from 16-bit values.
    let mut src = vec![0u16; v.data.len()];
    slice_to_bf16(v.data, &mut src);
    let panels = v.rows.div_ceil(32) * 2;
    let steps = v.cols.div_ceil(32);
    let mut tiles = vec![Tile::ZERO; panels * steps];
    tiles
        .par_chunks_mut(steps)
        .enumerate()
        .for_each(|(p, panel)| {
            let i0 = 16 * p;
            if i0 >= v.rows {
                return;
            }
            let rows = (v.rows - i0).min(16);
            for (s, tile) in panel.iter_mut().enumerate() {
                let j0 = 32 * s;
                let cols = (v.cols - j0).min(32);
                let t = &mut tile.0;
                match (v.transposed, pairs) {
                    (false, false) => {
                        // Tile row r is 32 consecutive values of source row i0 + r.
                        for r in 0..rows {
                            let at = (i0 + r) * v.cols + j0;
                            t[r * 32..r * 32 + cols].copy_from_slice(&src[at..at + cols]);
                        }
                    }
                    (false, true) => {
                        // Element (r, c) of the block goes to pair row c / 2, column r.
                        for r in 0..rows {
                            let row = &src[(i0 + r) * v.cols + j0..][..cols];
                            for (c, &e) in row.iter().enumerate() {
                                t[(c / 2) * 32 + 2 * r + (c % 2)] = e;
                            }
                        }
                    }
                    (true, false) => {
                        // Element (r, c) is source (j0 + c, i0 + r): read source rows.
                        for c in 0..cols {
                            let row = &src[(j0 + c) * v.rows + i0..][..rows];
                            for (r, &e) in row.iter().enumerate() {
                                t[r * 32 + c] = e;
                            }
                        }
                    }
                    (true, true) => {
                        for c in 0..cols {
                            let row = &src[(j0 + c) * v.rows + i0..][..rows];
                            let base = (c / 2) * 32 + (c % 2);
                            for (r, &e) in row.iter().enumerate() {
                                t[base + 2 * r] = e;
                            }
                        }
                    }
                }
            }
        });
    tiles
}

/// `c (M × N) += a · bᵀ` (`accumulate`) or `c = a · bᵀ` for `a` of `M × K` and `b` of
/// `N × K`; with `upper`, only the 32 × 32 blocks on or above the block diagonal (for a
/// symmetric result; the others are left as they are).
///
/// `path` is [`DensePath::Bf16Amx`] or [`DensePath::Bf16Avx512`].
///
/// # Panics
/// If `path` is not available here (callers take it from [`path_for`]) or is `F32`.
pub(super) fn gemm(
    path: DensePath,
    a: View<'_>,
    b: View<'_>,
    c: &mut [f32],
    upper: bool,
    accumulate: bool,
) {
    assert_eq!(c.len(), a.rows * b.rows);
    // SAFETY: `c` is valid for reads and writes of `M × N` initialised values.
    unsafe { gemm_raw(path, a, b, c.as_mut_ptr(), upper, accumulate) }
}

/// [`gemm`] into `M × N` values at `c`. With `accumulate` and `upper` both false and `K > 0`,
/// every value is written before any is read (each block's first pass over `K` replaces it),
/// so `c` may point at uninitialised memory; the values are all initialised on return. With
/// `M`, `N` or `K` zero nothing is written.
///
/// # Safety
/// `c` is valid for writes of `M × N` values (and for reads of them, initialised, when
/// `accumulate` or `upper` is true) and not accessed elsewhere during the call.
pub(super) unsafe fn gemm_raw(
    path: DensePath,
    a: View<'_>,
    b: View<'_>,
    c: *mut f32,
    upper: bool,
    accumulate: bool,
) {
    let amx = match path {
        DensePath::Bf16Amx => true,
        DensePath::Bf16Avx512 => false,
        DensePath::F32 => panic!("tiles::gemm runs the bf16 paths only"),
    };
    if amx {
        assert!(amx::available(), "AMX bf16 is not available");
    } else {
        assert!(bf16_tiles::available(), "AVX-512 BF16 is not available");
    }
    let (m, n, k) = (a.rows, b.rows, a.cols);
    assert_eq!(b.cols, k);
    if m == 0 || n == 0 || k == 0 {
        return;
    }
    let at = pack(a, false);
    let bt = pack(b, true);
    let steps = k.div_ceil(32);
    let (mb, nb) = (m.div_ceil(32), n.div_ceil(32));
    // Tasks own whole block columns (or rows, when there are fewer columns), so no two
    // write the same block of C.
    let by_cols = nb >= mb;
    let total = if by_cols { nb } else { mb };
    // Blocks of C each task's block column (or row) holds: a triangle's columns are uneven, so
    // equal column counts would leave one thread with three quarters of a Gram matrix. Several
    // tasks per thread let rayon balance what remains (and calls running side by side).
    let blocks_in = |i: usize| match (upper, by_cols) {
        (false, _) => 1,
        (true, true) => (i + 1).min(mb),
        (true, false) => nb.saturating_sub(i),
    };
    let ranges = balanced_ranges(total, 4 * rayon::current_num_threads(), blocks_in);
    let parts = ranges.len();
    let cp = SendPtr(c);
    let (ap, bp) = (
        SendPtr(at.as_ptr() as *mut Tile),
        SendPtr(bt.as_ptr() as *mut Tile),
    );
    let work = |part: usize| {
        let (lo, hi) = (ranges[part].start, ranges[part].end);
        let (rows, cols) = if by_cols {
            (0..mb, lo..hi)
        } else {
            (lo..hi, 0..nb)
        };
        let (cp, ap, bp) = (cp, ap, bp);
        // SAFETY: the path's instructions are available (asserted); the tile pointers stay
        // inside `at`/`bt` (panel·steps + step < len) and the C blocks inside `c` or `edge`;
        // blocks of different tasks are disjoint.
        unsafe {
            let scope = amx.then(|| TileScope::new());
            let mut edge = [[0f32; 32]; 32];
            let chunks = steps.div_ceil(MAX_STEPS);
            let per = steps.div_ceil(chunks);
            let mut s0 = 0;
            while s0 < steps {
                let ks = per.min(steps - s0);
                let mut n0 = cols.start;
                while n0 < cols.end {
                    let n1 = (n0 + N_BLOCKS).min(cols.end);
                    for bi in rows.clone() {
                        let a0 = ap.0.add(2 * bi * steps + s0);
                        let a1 = ap.0.add((2 * bi + 1) * steps + s0);
                        for bj in n0..n1 {
                            if upper && bj < bi {
                                continue;
                            }
                            let b0 = bp.0.add(2 * bj * steps + s0);
                            let b1 = bp.0.add((2 * bj + 1) * steps + s0);
                            let (i0, j0) = (32 * bi, 32 * bj);
                            let full = i0 + 32 <= m && j0 + 32 <= n;
                            // The first pass over K replaces C unless asked to add to it.
                            let add = accumulate || s0 > 0;
                            let (dst, ld) = if full {
                                (cp.0.add(i0 * n + j0), n)
                            } else if !add {
                                (edge.as_mut_ptr() as *mut f32, 32)
                            } else {
                                for (i, row) in edge.iter_mut().enumerate() {
                                    for (j, e) in row.iter_mut().enumerate() {
                                        *e = if i0 + i < m && j0 + j < n {
                                            *cp.0.add((i0 + i) * n + j0 + j)
                                        } else {
                                            0.0
                                        };
                                    }
                                }
                                (edge.as_mut_ptr() as *mut f32, 32)
                            };
                            match &scope {
                                Some(scope) => {
                                    amx::block_32x32(scope, a0, a1, b0, b1, ks, dst, 4 * ld, add)
                                }
                                None => bf16_dot::block_32x32(a0, a1, b0, b1, ks, dst, ld, add),
                            }
                            if !full {
                                for (i, row) in edge.iter().enumerate().take(m - i0) {
                                    for (j, e) in row.iter().enumerate().take(n - j0) {
                                        *cp.0.add((i0 + i) * n + j0 + j) = *e;
                                    }
                                }
                            }
                        }
                    }
                    n0 = n1;
                }
                s0 += ks;
            }
        }
    };
    if parts == 1 {
        work(0);
    } else {
        (0..parts).into_par_iter().for_each(work);
    }
}

/// `0..total` cut into at most `parts` consecutive non-empty ranges of about equal total
/// `weight` (every index weighs at least nothing; ranges of zero weight are merged away).
fn balanced_ranges(
    total: usize,
    parts: usize,
    weight: impl Fn(usize) -> usize,
) -> Vec<std::ops::Range<usize>> {
    let sum: usize = (0..total).map(&weight).sum();
    let parts = parts.clamp(1, total.max(1));
    let mut ranges = Vec::with_capacity(parts);
    let (mut start, mut acc) = (0, 0);
    for i in 0..total {
        acc += weight(i);
        // Close the range once it holds its share of the whole (`acc / sum ≥ next / parts`).
        if acc * parts >= (ranges.len() + 1) * sum && ranges.len() + 1 < parts {
            ranges.push(start..i + 1);
            start = i + 1;
        }
    }
    if start < total {
        ranges.push(start..total);
    }
    ranges
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn balanced_ranges_cover_everything_with_even_work() {
        for (total, parts) in [(1, 8), (7, 8), (48, 8), (48, 2), (100, 3)] {
            let tri = |i: usize| i + 1;
            let r = balanced_ranges(total, parts, tri);
            assert!(r.len() <= parts && !r.is_empty());
            assert_eq!(r[0].start, 0);
            assert_eq!(r.last().unwrap().end, total);
            for w in r.windows(2) {
                assert_eq!(w[0].end, w[1].start);
                assert!(w[0].start < w[0].end);
            }
            if total >= 4 * parts {
                // Each part within one column's weight of an equal share.
                let sum: usize = (0..total).map(tri).sum();
                for x in &r {
                    let w: usize = x.clone().map(tri).sum();
                    assert!(w.abs_diff(sum / r.len()) <= total, "{total} {parts} {r:?}");
                }
            }
        }
        // A triangle split in two: the first part takes ~71% of the columns, not half.
        let r = balanced_ranges(48, 2, |i| i + 1);
        assert_eq!(r.len(), 2);
        assert!((33..=35).contains(&r[0].end), "{r:?}");
    }

    /// The vectorized packing writes exactly the tiles of the scalar definition, for every
    /// layout and for edges that cut a tile in both directions (needs AVX-512 BF16, not AMX,
    /// so it runs on AMD Zen 4 as well).
    #[test]
    fn vector_packing_equals_the_scalar_definition() {
        if !bf16_tiles::available() {
            eprintln!("skipped: this CPU lacks AVX-512 BF16, so `pack` is `pack_scalar`");
            return;
        }
        for (rows, cols) in [(1, 1), (16, 32), (17, 33), (45, 70), (64, 64), (7, 100)] {
            let data: Vec<f32> = (0..rows * cols)
                .map(|i| ((i * 7919) % 1013) as f32 / 97.0 - 5.0)
                .collect();
            for transposed in [false, true] {
                let view = if transposed {
                    View::transposed(&data, rows, cols)
                } else {
                    View::row_major(&data, rows, cols)
                };
                for pairs in [false, true] {
                    let fast = pack(view, pairs);
                    let slow = pack_scalar(view, pairs);
                    assert_eq!(fast.len(), slow.len());
                    for (t, (f, s)) in fast.iter().zip(&slow).enumerate() {
                        assert!(
                            f.0 == s.0,
                            "tile {t} differs: {rows}×{cols} transposed={transposed} pairs={pairs}"
                        );
                    }
                }
            }
        }
    }
}
