//! Dense f32 products on the CPU — `Y = X · Wᵀ` (a linear layer) and `G += XᵀX` (the Gram
//! matrix calibration accumulates) — in f32 through faer, or in bf16 with f32 accumulation on
//! Intel AMX tiles.
//!
//! **bf16** (`DensePrecision::Bf16`): both operands are rounded to bf16 (8 significant bits,
//! round to nearest even) and the products summed in f32 by AMX's `tdpbf16ps`, as GPU
//! calibration in bf16 does. On the development CPU (2 Sapphire-Rapids-class cores) this ran
//! 6–14× faster than faer's f32 GEMM (docs/performance.md). Each element of a product then
//! carries the input rounding, a relative error of up to `2⁻⁸` per factor, on top of f32
//! summation — meant for calibration statistics, not for the logits of an evaluation.
//!
//! The operands are converted and laid out in tiles on every call (`Y = X·Wᵀ` with `W` given
//! row-major as a linear layer's `[out, in]` weight); nothing is cached, so a weight changed
//! between calls is always read fresh. Where AMX is missing, a bf16 request runs in f32 and
//! the returned [`DensePath`] says so.

use faer::linalg::matmul::matmul as faer_matmul;
use faer::{Accum, MatMut, MatRef, Par};
use rayon::prelude::*;

use crate::matrix::{check_len, KernelError};

/// Arithmetic a dense product is asked to use.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub enum DensePrecision {
    /// f32 operands and sums (faer).
    #[default]
    F32,
    /// bf16 operands, f32 sums (AMX where available, else f32).
    Bf16,
}

/// The arithmetic a dense product actually ran.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum DensePath {
    /// f32 on faer's GEMM.
    F32,
    /// bf16 tiles on AMX.
    Bf16Amx,
}

/// Whether bf16 products run on AMX on this machine (see [`crate::x86::amx::available`]).
pub fn bf16_available() -> bool {
    #[cfg(target_arch = "x86_64")]
    {
        crate::x86::amx::available()
    }
    #[cfg(not(target_arch = "x86_64"))]
    {
        false
    }
}

/// The path `precision` runs on here.
pub fn path_for(precision: DensePrecision) -> DensePath {
    match precision {
        DensePrecision::Bf16 if bf16_available() => DensePath::Bf16Amx,
        _ => DensePath::F32,
    }
}

/// `y = x · wᵀ` for `x` of `m × k` and `w` of `n × k` (both row-major), into `y` (`m × n`).
pub fn matmul(
    x: &[f32],
    m: usize,
    w: &[f32],
    n: usize,
    k: usize,
    y: &mut [f32],
    precision: DensePrecision,
) -> Result<DensePath, KernelError> {
    check_len("activations", m * k, x.len())?;
    check_len("weight", n * k, w.len())?;
    check_len("output", m * n, y.len())?;
    let path = path_for(precision);
    match path {
        DensePath::F32 => {
            let lhs = MatRef::from_row_major_slice(x, m, k);
            let rhs = MatRef::from_row_major_slice(w, n, k).transpose();
            let out = MatMut::from_row_major_slice_mut(y, m, n);
            faer_matmul(out, Accum::Replace, lhs, rhs, 1.0, Par::rayon(0));
        }
        DensePath::Bf16Amx => {
            #[cfg(target_arch = "x86_64")]
            tiles::gemm(
                tiles::View::row_major(x, m, k),
                tiles::View::row_major(w, n, k),
                y,
                false,
                false,
            );
        }
    }
    Ok(path)
}

/// `g += xᵀ · x` for `x` of `t × d` (row-major; `t` samples of `d` features), `g` of `d × d`.
/// On the bf16 path only the upper block triangle is multiplied and mirrored, so `g` must be
/// symmetric on entry (zeros, or earlier sums of this function).
pub fn gram(
    x: &[f32],
    t: usize,
    d: usize,
    g: &mut [f32],
    precision: DensePrecision,
) -> Result<DensePath, KernelError> {
    check_len("samples", t * d, x.len())?;
    check_len("Gram matrix", d * d, g.len())?;
    let path = path_for(precision);
    match path {
        DensePath::F32 => {
            let xr = MatRef::from_row_major_slice(x, t, d);
            let out = MatMut::from_row_major_slice_mut(g, d, d);
            faer_matmul(out, Accum::Add, xr.transpose(), xr, 1.0, Par::rayon(0));
        }
        DensePath::Bf16Amx => {
            #[cfg(target_arch = "x86_64")]
            {
                let xt = tiles::View::transposed(x, d, t);
                tiles::gemm(xt, xt, g, true, true);
                mirror_upper(g, d);
            }
        }
    }
    Ok(path)
}

/// Copies the upper triangle of a `d × d` matrix onto its lower triangle.
fn mirror_upper(g: &mut [f32], d: usize) {
    for i in 1..d {
        for j in 0..i {
            g[i * d + j] = g[j * d + i];
        }
    }
}

/// f32 → bf16 bits, rounding to nearest even (NaN stays NaN).
pub fn to_bf16(x: f32) -> u16 {
    let b = x.to_bits();
    if x.is_nan() {
        return ((b >> 16) | 0x40) as u16;
    }
    (b.wrapping_add(0x7fff + ((b >> 16) & 1)) >> 16) as u16
}

/// bf16 bits → f32 (exact).
pub fn from_bf16(h: u16) -> f32 {
    f32::from_bits(u32::from(h) << 16)
}

#[cfg(target_arch = "x86_64")]
mod tiles {
    //! Operand packing into AMX tiles and the blocked, threaded driver.
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
    use crate::x86::bf16_tiles;

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

    /// `src` as bf16 bits, same layout (AVX-512 BF16 conversion where the CPU has it, which
    /// every AMX CPU does), in parallel.
    fn to_bf16_all(src: &[f32]) -> Vec<u16> {
        let mut out = vec![0u16; src.len()];
        let vector = std::arch::is_x86_feature_detected!("avx512bf16");
        out.par_chunks_mut(1 << 14)
            .zip(src.par_chunks(1 << 14))
            .for_each(|(d, s)| {
                if vector {
                    // SAFETY: the CPU has AVX-512 BF16 (checked above).
                    unsafe { convert_avx512(s, d) }
                } else {
                    for (d, s) in d.iter_mut().zip(s) {
                        *d = to_bf16(*s);
                    }
                }
            });
        out
    }

    /// `d[i] = bf16(s[i])` with `vcvtne2ps2bf16` (round to nearest even), 32 at a time.
    #[target_feature(enable = "avx512f,avx512bf16")]
    unsafe fn convert_avx512(s: &[f32], d: &mut [u16]) {
        use std::arch::x86_64::*;
        let whole = s.len() / 32 * 32;
        // SAFETY: every load and store is within the first `whole` elements.
        unsafe {
            for i in (0..whole).step_by(32) {
                let lo = _mm512_loadu_ps(s.as_ptr().add(i));
                let hi = _mm512_loadu_ps(s.as_ptr().add(i + 16));
                let v: __m512i = std::mem::transmute(_mm512_cvtne2ps_pbh(hi, lo));
                _mm512_storeu_si512(d.as_mut_ptr().add(i) as *mut __m512i, v);
            }
        }
        for i in whole..s.len() {
            d[i] = to_bf16(s[i]);
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
                let data = data;
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
                        src: unsafe { data.0.add(at) },
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
        let src = to_bf16_all(v.data);
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

    #[derive(Clone, Copy)]
    struct SendPtr<T>(*mut T);
    // SAFETY: tasks write disjoint blocks of C through it (see `gemm`).
    unsafe impl<T> Send for SendPtr<T> {}
    unsafe impl<T> Sync for SendPtr<T> {}

    /// `c (M × N) += a · bᵀ` (`accumulate`) or `c = a · bᵀ` for `a` of `M × K` and `b` of
    /// `N × K`; with `upper`, only the 32 × 32 blocks on or above the block diagonal (for a
    /// symmetric result; the others are left as they are).
    ///
    /// # Panics
    /// If AMX is unavailable (callers check [`path_for`]).
    pub(super) fn gemm(a: View<'_>, b: View<'_>, c: &mut [f32], upper: bool, accumulate: bool) {
        assert!(amx::available(), "AMX bf16 is not available");
        let (m, n, k) = (a.rows, b.rows, a.cols);
        assert_eq!(b.cols, k);
        assert_eq!(c.len(), m * n);
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
        let parts = rayon::current_num_threads().clamp(1, if by_cols { nb } else { mb });
        let total = if by_cols { nb } else { mb };
        let cp = SendPtr(c.as_mut_ptr());
        let (ap, bp) = (
            SendPtr(at.as_ptr() as *mut Tile),
            SendPtr(bt.as_ptr() as *mut Tile),
        );
        let work = |part: usize| {
            let (lo, hi) = (part * total / parts, (part + 1) * total / parts);
            let (rows, cols) = if by_cols {
                (0..mb, lo..hi)
            } else {
                (lo..hi, 0..nb)
            };
            let (cp, ap, bp) = (cp, ap, bp);
            // SAFETY: AMX is available (asserted); the tile pointers stay inside `at`/`bt`
            // (panel·steps + step < len) and the C blocks inside `c` or `edge`; blocks of
            // different tasks are disjoint.
            unsafe {
                let scope = TileScope::new();
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
                                amx::block_32x32(&scope, a0, a1, b0, b1, ks, dst, 4 * ld, add);
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

    #[cfg(test)]
    mod tests {
        use super::*;

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
}

#[cfg(test)]
mod tests {
    use super::*;

    fn values(len: usize, seed: u64) -> Vec<f32> {
        let mut s = seed.wrapping_mul(0x9e37_79b9_7f4a_7c15) | 1;
        (0..len)
            .map(|_| {
                s ^= s << 13;
                s ^= s >> 7;
                s ^= s << 17;
                (s >> 40) as f32 / (1u64 << 23) as f32 - 1.0
            })
            .collect()
    }

    fn round(v: &[f32]) -> Vec<f32> {
        v.iter().map(|&x| from_bf16(to_bf16(x))).collect()
    }

    /// `Σ x·w` in f64 and `Σ |x·w|` (the scale of f32 summation error), per output.
    fn exact(x: &[f32], m: usize, w: &[f32], n: usize, k: usize) -> (Vec<f64>, Vec<f64>) {
        let mut e = vec![0f64; m * n];
        let mut a = vec![0f64; m * n];
        for i in 0..m {
            for j in 0..n {
                for c in 0..k {
                    let p = f64::from(x[i * k + c]) * f64::from(w[j * k + c]);
                    e[i * n + j] += p;
                    a[i * n + j] += p.abs();
                }
            }
        }
        (e, a)
    }

    #[test]
    fn bf16_rounds_to_nearest_even() {
        assert_eq!(to_bf16(1.0), 0x3f80);
        assert_eq!(to_bf16(f32::from_bits(0x3f80_8000)), 0x3f80); // tie to even (down)
        assert_eq!(to_bf16(f32::from_bits(0x3f81_8000)), 0x3f82); // tie to even (up)
        assert_eq!(to_bf16(f32::from_bits(0x3f80_8001)), 0x3f81);
        assert!(from_bf16(to_bf16(f32::NAN)).is_nan());
        assert_eq!(from_bf16(to_bf16(-2.5)), -2.5);
    }

    /// Both paths against an f64 product of the operands they multiply (bf16-rounded for the
    /// bf16 path): f32 summation error only, bounded by `K·u·Σ|x·w|` (Higham §3.1).
    #[test]
    fn products_match_f64_of_their_operands() {
        let shapes = [
            (1, 1, 1),
            (5, 200, 31),
            (37, 45, 70),
            (64, 96, 600),
            (33, 17, 1100),
        ];
        for (m, n, k) in shapes {
            let (x, w) = (values(m * k, 1), values(n * k, 2));
            for precision in [DensePrecision::F32, DensePrecision::Bf16] {
                let mut y = vec![f32::NAN; m * n];
                let path = matmul(&x, m, &w, n, k, &mut y, precision).unwrap();
                let (xs, ws) = match path {
                    DensePath::F32 => (x.clone(), w.clone()),
                    DensePath::Bf16Amx => (round(&x), round(&w)),
                };
                let (e, a) = exact(&xs, m, &ws, n, k);
                for i in 0..m * n {
                    let tol = (k + 2) as f64 * f64::from(f32::EPSILON) * a[i] + 1e-30;
                    assert!(
                        (f64::from(y[i]) - e[i]).abs() <= tol,
                        "{path:?} {m}×{n}×{k} [{i}]: {} vs {} (tol {tol:e})",
                        y[i],
                        e[i]
                    );
                }
            }
        }
    }

    /// The Gram matrix accumulates (`g += xᵀx` twice = `2 xᵀx`), is symmetric, and matches
    /// the f64 product within the same bound, on both paths.
    #[test]
    fn gram_accumulates_symmetric_sums() {
        for (t, d) in [(1, 1), (70, 33), (300, 64), (129, 100)] {
            let x = values(t * d, 3);
            for precision in [DensePrecision::F32, DensePrecision::Bf16] {
                let mut g = vec![0f32; d * d];
                gram(&x, t, d, &mut g, precision).unwrap();
                let path = gram(&x, t, d, &mut g, precision).unwrap();
                let xs = match path {
                    DensePath::F32 => x.clone(),
                    DensePath::Bf16Amx => round(&x),
                };
                // xᵀ as a d × t matrix times itself.
                let xt: Vec<f32> = (0..d * t).map(|i| xs[(i % t) * d + i / t]).collect();
                let (e, a) = exact(&xt, d, &xt, d, t);
                for i in 0..d {
                    for j in 0..d {
                        assert_eq!(g[i * d + j], g[j * d + i], "{path:?} not symmetric");
                        let tol = 2.0 * (t + 2) as f64 * f64::from(f32::EPSILON) * a[i * d + j];
                        let got = f64::from(g[i * d + j]);
                        assert!(
                            (got - 2.0 * e[i * d + j]).abs() <= tol + 1e-30,
                            "{path:?} {t}×{d} [{i},{j}]: {got} vs {}",
                            2.0 * e[i * d + j]
                        );
                    }
                }
            }
        }
    }

    /// On a Linux CPU that lists `amx_bf16` (the development machine does), bf16 products run
    /// on AMX: the detection and the permission request work.
    #[test]
    fn bf16_runs_on_amx_where_the_cpu_has_it() {
        let path = path_for(DensePrecision::Bf16);
        eprintln!("bf16 products run on {path:?}");
        let listed = std::fs::read_to_string("/proc/cpuinfo")
            .is_ok_and(|c| c.split_whitespace().any(|f| f == "amx_bf16"));
        if listed {
            assert_eq!(path, DensePath::Bf16Amx);
        }
        assert_eq!(path_for(DensePrecision::F32), DensePath::F32);
    }

    #[test]
    fn wrong_lengths_are_refused() {
        let mut y = vec![0f32; 4];
        assert!(matmul(&[0.0; 5], 2, &[0.0; 6], 2, 3, &mut y, DensePrecision::F32).is_err());
        assert!(gram(&[0.0; 6], 2, 3, &mut y, DensePrecision::Bf16).is_err());
    }
}
