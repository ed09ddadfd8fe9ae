//! Dense f32 products on the CPU — `Y = X · Wᵀ` (a linear layer) and `G += XᵀX` (the Gram
//! matrix calibration accumulates) — in f32 through faer, or in bf16 with f32 accumulation on
//! Intel AMX tiles or, on CPUs with AVX-512 BF16 but no AMX (AMD Zen 4), with `vdpbf16ps`.
//!
//! **bf16** (`DensePrecision::Bf16`): both operands are rounded to bf16 (8 significant bits,
//! round to nearest even) and the products summed in f32 by AMX's `tdpbf16ps` or AVX-512's
//! `vdpbf16ps`, as GPU calibration in bf16 does. On the development CPU (2 Sapphire-Rapids-class
//! cores) AMX ran 6–14× faster than faer's f32 GEMM; `vdpbf16ps` does twice an f32 FMA's
//! multiply-adds per instruction (docs/performance.md has both measurements). Each element of
//! a product then carries the input rounding, a relative error of up to `2⁻⁸` per factor, on
//! top of f32 summation — meant for calibration statistics, not for the logits of an
//! evaluation.
//!
//! The operands are converted and laid out in tiles on every call (`Y = X·Wᵀ` with `W` given
//! row-major as a linear layer's `[out, in]` weight); nothing is cached, so a weight changed
//! between calls is always read fresh. Where neither AMX nor AVX-512 BF16 is present, a bf16
//! request runs in f32 and the returned [`DensePath`] says so.

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
    /// bf16 operands, f32 sums (AMX or AVX-512 BF16 where available, else f32).
    Bf16,
}

/// The arithmetic a dense product actually ran.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum DensePath {
    /// f32 on faer's GEMM.
    F32,
    /// bf16 tiles on AMX.
    Bf16Amx,
    /// The same bf16 tiles multiplied with AVX-512 BF16's `vdpbf16ps` (CPUs without AMX).
    Bf16Avx512,
}

/// Whether bf16 products run in bf16 on this machine (AMX, see
/// [`crate::x86::amx::available`], or AVX-512 BF16) rather than falling back to f32.
pub fn bf16_available() -> bool {
    path_for(DensePrecision::Bf16) != DensePath::F32
}

/// The path `precision` runs on here: bf16 prefers AMX, then AVX-512 BF16.
pub fn path_for(precision: DensePrecision) -> DensePath {
    if precision == DensePrecision::F32 {
        return DensePath::F32;
    }
    #[cfg(target_arch = "x86_64")]
    {
        if crate::x86::amx::available() {
            return DensePath::Bf16Amx;
        }
        if crate::x86::bf16_tiles::available() {
            return DensePath::Bf16Avx512;
        }
    }
    DensePath::F32
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
        DensePath::Bf16Amx | DensePath::Bf16Avx512 => {
            #[cfg(target_arch = "x86_64")]
            tiles::gemm(
                path,
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

/// [`matmul`] into a new `m × n` vector. On the bf16 paths the product is written straight
/// into fresh memory, which is not zero-filled first (the tiles replace every value): at
/// calibration sizes that fill was a pass over megabytes per product.
///
/// ```
/// use compress_kernels::dense::{matmul_new, DensePrecision};
///
/// // [1 2; 3 4] · [1 0; 0 1; 1 1]ᵀ
/// let (y, _) = matmul_new(&[1.0, 2.0, 3.0, 4.0], 2, &[1.0, 0.0, 0.0, 1.0, 1.0, 1.0], 3, 2,
///                         DensePrecision::Bf16)?;
/// assert_eq!(y, vec![1.0, 2.0, 3.0, 3.0, 4.0, 7.0]);
/// # Ok::<(), compress_kernels::KernelError>(())
/// ```
pub fn matmul_new(
    x: &[f32],
    m: usize,
    w: &[f32],
    n: usize,
    k: usize,
    precision: DensePrecision,
) -> Result<(Vec<f32>, DensePath), KernelError> {
    check_len("activations", m * k, x.len())?;
    check_len("weight", n * k, w.len())?;
    let path = path_for(precision);
    #[cfg(target_arch = "x86_64")]
    if path != DensePath::F32 && k > 0 {
        let mut y: Vec<f32> = Vec::with_capacity(m * n);
        // SAFETY: the bf16 paths are available (`path_for`); with `upper` and `accumulate`
        // false and `k > 0` the tiles write all `m × n` values before any is read, so the
        // length may be set afterwards; the spare capacity is exclusively ours.
        unsafe {
            tiles::gemm_raw(
                path,
                tiles::View::row_major(x, m, k),
                tiles::View::row_major(w, n, k),
                y.as_mut_ptr(),
                false,
                false,
            );
            y.set_len(m * n);
        }
        return Ok((y, path));
    }
    let mut y = vec![0f32; m * n];
    let path = matmul(x, m, w, n, k, &mut y, precision)?;
    Ok((y, path))
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
    let path = gram_upper(x, t, d, g, precision)?;
    symmetrize_upper(g, d);
    Ok(path)
}

/// [`gram`] without the mirroring, for sums over many batches: adds `xᵀ · x` to at least the
/// upper triangle of `g` (on the bf16 paths only the 32 × 32 blocks on or above the diagonal are
/// multiplied; the blocks below are left as they are). After the last batch,
/// [`symmetrize_upper`] copies the upper triangle down once instead of once per batch (a
/// strided pass over the whole matrix, 3 ms at `d = 1536`). Sums of several such accumulators
/// may be added elementwise before it.
pub fn gram_upper(
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
        DensePath::Bf16Amx | DensePath::Bf16Avx512 => {
            #[cfg(target_arch = "x86_64")]
            {
                let xt = tiles::View::transposed(x, d, t);
                tiles::gemm(path, xt, xt, g, true, true);
            }
        }
    }
    Ok(path)
}

/// Copies the upper triangle of a `d × d` row-major matrix onto its lower triangle, in
/// parallel over bands of rows and in 64 × 64 tiles so the strided reads stay in cache.
///
/// # Panics
/// If `g` is not `d × d`.
pub fn symmetrize_upper(g: &mut [f32], d: usize) {
    assert_eq!(g.len(), d * d, "symmetrize_upper: not a {d} × {d} matrix");
    const T: usize = 64;
    if d < 2 {
        return;
    }
    // Rows `i` take column `j < i` from row `j`: a band of rows reads only rows above it,
    // which no band writes below their diagonal, so bands are independent.
    let ptr = SendPtr(g.as_mut_ptr());
    (0..d.div_ceil(T)).into_par_iter().for_each(|bi| {
        let p = ptr.get();
        let (i0, i1) = (bi * T, ((bi + 1) * T).min(d));
        for j0 in (0..i1).step_by(T) {
            for i in i0..i1 {
                for j in j0..(j0 + T).min(i) {
                    // SAFETY: `i, j < d`; this band writes only its rows' entries below the
                    // diagonal (`j < i`) and reads entries above it (`(j, i)`, `j < i`), which
                    // nothing writes.
                    unsafe { *p.add(i * d + j) = *p.add(j * d + i) };
                }
            }
        }
    });
}

/// A pointer that may cross threads, for tasks that write disjoint parts of one buffer
/// (blocks of C in `tiles::gemm`, bands of rows in [`symmetrize_upper`]).
#[derive(Clone, Copy)]
struct SendPtr<T>(*mut T);
// SAFETY: every use writes disjoint elements from different threads (see the uses).
unsafe impl<T> Send for SendPtr<T> {}
unsafe impl<T> Sync for SendPtr<T> {}

impl<T> SendPtr<T> {
    /// The pointer (a method, so closures capture the whole `Send` wrapper).
    fn get(&self) -> *mut T {
        self.0
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

/// `dst[i] = to_bf16(src[i])` in parallel, 32 values per instruction with AVX-512 BF16's
/// `vcvtne2ps2bf16` (the same rounding, to nearest even) where the CPU has it; that instruction
/// treats subnormal inputs (below 1.2e-38 in magnitude) as zero.
///
/// # Panics
/// If the lengths differ.
pub fn slice_to_bf16(src: &[f32], dst: &mut [u16]) {
    assert_eq!(src.len(), dst.len(), "slice_to_bf16: lengths differ");
    #[cfg(target_arch = "x86_64")]
    let vector = std::arch::is_x86_feature_detected!("avx512bf16");
    #[cfg(not(target_arch = "x86_64"))]
    let vector = false;
    dst.par_chunks_mut(1 << 14)
        .zip(src.par_chunks(1 << 14))
        .for_each(|(d, s)| {
            #[cfg(target_arch = "x86_64")]
            if vector {
                // SAFETY: the CPU has AVX-512 BF16 (checked above).
                unsafe { convert_avx512(s, d) };
                return;
            }
            let _ = vector;
            for (d, s) in d.iter_mut().zip(s) {
                *d = to_bf16(*s);
            }
        });
}

/// `src` widened to f32 in a new vector (exact; a shift the compiler vectorizes), converted in
/// parallel straight into its fresh memory, with no zero-filled output buffer first.
pub fn vec_from_bf16(src: &[u16]) -> Vec<f32> {
    let mut out: Vec<f32> = Vec::with_capacity(src.len());
    out.spare_capacity_mut()[..src.len()]
        .par_chunks_mut(1 << 14)
        .zip(src.par_chunks(1 << 14))
        .for_each(|(d, s)| {
            for (d, s) in d.iter_mut().zip(s) {
                d.write(from_bf16(*s));
            }
        });
    // SAFETY: every one of the first `src.len()` values was written above.
    unsafe { out.set_len(src.len()) };
    out
}

/// `d[i] = bf16(s[i])` with `vcvtne2ps2bf16` (round to nearest even), 32 at a time.
#[cfg(target_arch = "x86_64")]
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

#[cfg(target_arch = "x86_64")]
mod tiles;

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

    /// The parallel (and, where the CPU has it, AVX-512 BF16) slice conversions agree with the
    /// scalar definitions on every value, at a length that leaves a scalar tail.
    #[test]
    fn slice_conversions_equal_the_scalar_ones() {
        let mut src = values(100_003, 11);
        src[5] = f32::INFINITY;
        src[6] = f32::NEG_INFINITY;
        src[7] = 1.0 + f32::EPSILON; // rounds down to 1
        src[8] = f32::MIN_POSITIVE / 4.0; // subnormal
        let mut bits = vec![0u16; src.len()];
        slice_to_bf16(&src, &mut bits);
        for (i, (s, b)) in src.iter().zip(&bits).enumerate() {
            // `vcvtne2ps2bf16` treats subnormal inputs as zero.
            let flushed = s.is_subnormal() && b & 0x7fff == 0;
            assert!(*b == to_bf16(*s) || flushed, "value {i}: {s}");
        }
        // Into a fresh vector, at lengths around and across the parallel chunks.
        for len in [0, 1, 31, bits.len()] {
            let back = vec_from_bf16(&bits[..len]);
            assert_eq!(back.len(), len);
            for (b, f) in bits.iter().zip(&back) {
                assert_eq!(f.to_bits(), from_bf16(*b).to_bits());
            }
        }
    }

    /// The product into fresh memory equals the product into a buffer bit for bit, on both
    /// paths, at shapes with ragged edge blocks, several passes over `K` (> 32 steps of 32),
    /// and an empty `K` (all zeros).
    #[test]
    fn matmul_new_equals_matmul() {
        for (m, n, k) in [
            (1, 1, 1),
            (37, 45, 70),
            (64, 33, 1100),
            (5, 7, 0),
            (0, 3, 4),
        ] {
            let (x, w) = (values(m * k, 7), values(n * k, 8));
            for precision in [DensePrecision::F32, DensePrecision::Bf16] {
                let mut want = vec![f32::NAN; m * n];
                let p0 = matmul(&x, m, &w, n, k, &mut want, precision).unwrap();
                if k == 0 {
                    // An empty sum is zero, whatever the buffer held.
                    want.iter_mut().for_each(|v| *v = 0.0);
                }
                let (got, p1) = matmul_new(&x, m, &w, n, k, precision).unwrap();
                assert_eq!(p0, p1);
                assert_eq!(got.len(), m * n);
                assert!(
                    got.iter()
                        .zip(&want)
                        .all(|(a, b)| a.to_bits() == b.to_bits()),
                    "{precision:?} {m}×{n}×{k}"
                );
            }
        }
        assert!(matmul_new(&[0.0; 3], 2, &[0.0; 2], 1, 2, DensePrecision::F32).is_err());
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
                    DensePath::Bf16Amx | DensePath::Bf16Avx512 => (round(&x), round(&w)),
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
                    DensePath::Bf16Amx | DensePath::Bf16Avx512 => round(&x),
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

    /// Batches summed with `gram_upper` and mirrored once equal `gram` called per batch bit for
    /// bit (the same products and additions in the same order; only the copy moves), for sizes
    /// around the 64-wide mirroring tiles and the 32-wide blocks.
    #[test]
    fn upper_sums_mirrored_once_equal_per_batch_mirroring() {
        for (t, d) in [(40, 1), (70, 33), (50, 64), (90, 65), (33, 150)] {
            let x = values(t * d, 4);
            for precision in [DensePrecision::F32, DensePrecision::Bf16] {
                let (mut once, mut each) = (vec![0f32; d * d], vec![0f32; d * d]);
                for batch in x.chunks(10 * d) {
                    let rows = batch.len() / d;
                    gram_upper(batch, rows, d, &mut once, precision).unwrap();
                    gram(batch, rows, d, &mut each, precision).unwrap();
                }
                symmetrize_upper(&mut once, d);
                assert_eq!(once, each, "{precision:?} {t}×{d}");
            }
        }
    }

    /// On a Linux CPU that lists `amx_bf16` (the Intel development machine does), bf16
    /// products run on AMX (the detection and the permission request work); on one that lists
    /// `avx512_bf16` without AMX (the AMD Zen 4 machine), on `vdpbf16ps`.
    #[test]
    fn bf16_runs_on_the_best_unit_the_cpu_has() {
        let path = path_for(DensePrecision::Bf16);
        eprintln!("bf16 products run on {path:?}");
        let flags = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
        let listed = |f: &str| flags.split_whitespace().any(|g| g == f);
        if listed("amx_bf16") {
            assert_eq!(path, DensePath::Bf16Amx);
        } else if listed("avx512_bf16") {
            assert_eq!(path, DensePath::Bf16Avx512);
        }
        assert_eq!(bf16_available(), path != DensePath::F32);
        assert_eq!(path_for(DensePrecision::F32), DensePath::F32);
    }

    #[test]
    fn wrong_lengths_are_refused() {
        let mut y = vec![0f32; 4];
        assert!(matmul(&[0.0; 5], 2, &[0.0; 6], 2, 3, &mut y, DensePrecision::F32).is_err());
        assert!(gram(&[0.0; 6], 2, 3, &mut y, DensePrecision::Bf16).is_err());
    }
}
