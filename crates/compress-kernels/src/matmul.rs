//! The entry points: `Y = X · Wᵀ` for f32 activations `X` (`M × K`, row-major) and a packed
//! weight `W` (`N × K`), into f32 `Y` (`M × N`, row-major).
//!
//! - **GEMV path** (`M < GEMM_MIN_ROWS`, decode): each output is one fused pass over a packed
//!   row (codes widened in registers, never written out); rows are split across threads (rayon).
//! - **GEMM path** (prefill): threads take tiles of [`tile_rows`] weight rows, dequantize the
//!   tile into a per-task buffer (about 512 KiB of f32: it stays in cache, and the whole `W` is
//!   never materialised) and multiply with faer's register-blocked GEMM, so the unpacking cost is
//!   shared by all `M` rows. On the VNNI tier, weights whose groups are whole blocks of 32 take
//!   an int8 register-tiled GEMM instead (`x86/vnni_gemm.rs`, docs/kernels.md).

use faer::linalg::matmul::matmul as faer_matmul;
use faer::{Accum, MatMut, MatRef, Par};
use rayon::prelude::*;

use crate::matrix::{check_len, KernelError, QuantMatrix};
use crate::prepare::{F32Activations, Int8Activations};
use crate::tier::{Activations, Tier};
use crate::{portable, reference};

/// From this many activation rows on, the GEMM path is used.
pub const GEMM_MIN_ROWS: usize = 8;
/// f32 values of one dequantized GEMM tile (512 KiB).
const TILE_FLOATS: usize = 1 << 17;
/// Below this many weights per product, work stays on the calling thread.
const PARALLEL_MIN_WEIGHTS: usize = 1 << 19;

/// `Y = X · Wᵀ` on the fastest tier for this CPU and format (f32 activations); returns the tier
/// that ran. `x` is `m × K`, `out` is `m × N`, both row-major.
///
/// ```
/// use compress_kernels::{matmul, QuantMatrix, ScaleLayout};
/// use half::f16;
///
/// // A 2 × 4 symmetric 4-bit weight (zero point 8), one scale of 0.5 per row:
/// // row 0 codes [9, 10, 8, 7] → weights [0.5, 1, 0, -0.5]; row 1 all code 8 → zeros.
/// let codes = [0xa9, 0x78, 0x88, 0x88];
/// let scales = [f16::from_f32(0.5); 2];
/// let w = QuantMatrix::new(4, [2, 4], ScaleLayout::PerGroup { group_len: 4 }, &codes, &scales, None)?;
/// let x = [1.0, 2.0, 3.0, 4.0];
/// let mut y = [0.0; 2];
/// matmul(&x, 1, &w, &mut y)?;
/// assert_eq!(y, [0.5 + 2.0 - 2.0, 0.0]);
/// # Ok::<(), compress_kernels::KernelError>(())
/// ```
pub fn matmul(
    x: &[f32],
    m: usize,
    w: &QuantMatrix<'_>,
    out: &mut [f32],
) -> Result<Tier, KernelError> {
    let tier = Tier::select(w, Activations::F32);
    matmul_with(tier, x, m, w, out)?;
    Ok(tier)
}

/// `Y = X · Wᵀ` on a chosen tier. Fails with [`KernelError::Unsupported`] when this CPU lacks the
/// tier's features or the tier cannot run the format, and with [`KernelError::Length`] on
/// mismatched buffers. [`Tier::Avx512Vnni`] quantizes activations to int8 per block of 32 on
/// the GEMV path and, for weights whose groups are whole blocks, on the GEMM path too (an int8
/// register-tiled product); other weights' GEMM is the exact AVX-512 one
/// ([`quantizes_activations`] says which).
pub fn matmul_with(
    tier: Tier,
    x: &[f32],
    m: usize,
    w: &QuantMatrix<'_>,
    out: &mut [f32],
) -> Result<(), KernelError> {
    let [n, k] = w.shape();
    check_len("activations (m × in_features)", m * k, x.len())?;
    check_len("output (m × out_features)", m * n, out.len())?;
    if !tier.is_available() {
        return Err(KernelError::Unsupported {
            tier: tier.name(),
            what: "this CPU (missing instruction-set features)".into(),
        });
    }
    if let Some(why) = tier.format_limit(w) {
        return Err(KernelError::Unsupported {
            tier: tier.name(),
            what: why,
        });
    }
    if m == 0 || n == 0 {
        return Ok(());
    }
    if k == 0 {
        out.fill(0.0);
        return Ok(());
    }
    match tier {
        Tier::Reference => reference::matmul(x, m, w, out),
        _ if m >= GEMM_MIN_ROWS => gemm(tier, x, m, w, out),
        _ => {
            for (xr, yr) in x.chunks_exact(k).zip(out.chunks_exact_mut(n)) {
                gemv(tier, xr, w, yr);
            }
        }
    }
    Ok(())
}

/// Runs `f(scratch, row)` for every output, on the calling thread for small products; each task
/// makes one scratch value for all its rows.
fn for_rows<S: Default>(
    w: &QuantMatrix<'_>,
    out: &mut [f32],
    f: impl Fn(&mut S, usize) -> f32 + Sync,
) {
    let [n, k] = w.shape();
    for_rows_of(n * k, out, f);
}

/// `out[r] = f(r)` for every output row of a product over `weights` weights, across threads
/// when it is large enough (the 2:4-sparse GEMV's driver).
pub(crate) fn par_rows(weights: usize, out: &mut [f32], f: impl Fn(usize) -> f32 + Sync) {
    for_rows_of(weights, out, |_: &mut (), r| f(r));
}

/// [`for_rows`] for a product over `weights` weights into `out` (one value per weight row).
fn for_rows_of<S: Default>(
    weights: usize,
    out: &mut [f32],
    f: impl Fn(&mut S, usize) -> f32 + Sync,
) {
    let n = out.len();
    if weights < PARALLEL_MIN_WEIGHTS {
        let mut s = S::default();
        out.iter_mut()
            .enumerate()
            .for_each(|(r, o)| *o = f(&mut s, r));
        return;
    }
    let chunk = (n / (4 * rayon::current_num_threads())).clamp(8, 256);
    out.par_chunks_mut(chunk).enumerate().for_each(|(c, o)| {
        let mut s = S::default();
        for (i, y) in o.iter_mut().enumerate() {
            *y = f(&mut s, c * chunk + i);
        }
    });
}

/// One activation row against every weight row.
fn gemv(tier: Tier, x: &[f32], w: &QuantMatrix<'_>, out: &mut [f32]) {
    let permute = tier.permutes(w.bits());
    match tier {
        #[cfg(target_arch = "x86_64")]
        Tier::Avx512Vnni => {
            use crate::x86::vnni;
            if vnni::quads_apply(w) {
                let mut a = Int8Activations::new(x, w, permute);
                let zero = (!w.is_asymmetric()).then(|| w.mid_code() as i32);
                a.interleave_quads(zero);
                // SAFETY: `matmul_with` checked the CPU features and the format, `quads_apply`
                // the four-block loop's conditions, and `a` is laid out for it (with the zero
                // point exactly when `w` is symmetric).
                if zero.is_some() {
                    for_rows(w, out, |s, r| unsafe {
                        vnni::row_dot_quads::<true>(w, r, &a, s)
                    });
                } else {
                    for_rows(w, out, |s, r| unsafe {
                        vnni::row_dot_quads::<false>(w, r, &a, s)
                    });
                }
            } else {
                let a = Int8Activations::new(x, w, permute);
                // SAFETY: `matmul_with` checked the CPU features and the format.
                for_rows(w, out, |s, r| unsafe { vnni::row_dot(w, r, &a, s) });
            }
        }
        #[cfg(target_arch = "x86_64")]
        Tier::Avx512 => {
            let a = F32Activations::new(x, w, permute);
            // SAFETY: as above.
            for_rows(w, out, |s, r| unsafe {
                crate::x86::avx512::row_dot(w, r, &a, s)
            });
        }
        #[cfg(target_arch = "x86_64")]
        Tier::Avx2 => {
            let a = F32Activations::new(x, w, permute);
            // SAFETY: as above.
            for_rows(w, out, |s, r| unsafe {
                crate::x86::avx2::row_dot(w, r, &a, s)
            });
        }
        _ => {
            let a = F32Activations::new(x, w, false);
            for_rows(w, out, |_: &mut (), r| portable::row_dot(w, r, &a));
        }
    }
}

/// Dequantizes row `r` in the tier's activation order.
fn dequantize_row(tier: Tier, w: &QuantMatrix<'_>, r: usize, dst: &mut [f32]) {
    match tier {
        // SAFETY: `matmul_with` checked the CPU features and the format.
        #[cfg(target_arch = "x86_64")]
        Tier::Avx512 | Tier::Avx512Vnni => unsafe { crate::x86::avx512::dequantize_row(w, r, dst) },
        // SAFETY: as above.
        #[cfg(target_arch = "x86_64")]
        Tier::Avx2 => unsafe { crate::x86::avx2::dequantize_row(w, r, dst) },
        Tier::Reference => reference::dequantize_row(w, r, dst),
        _ => portable::dequantize_row(w, r, dst),
    }
}

/// Weight rows per GEMM task for rows of `k`: a dequantized tile of about 512 KiB (half this
/// machine's L2), between 16 and 256 rows, so short rows still give faer a sizeable product.
pub fn tile_rows(k: usize) -> usize {
    ((TILE_FLOATS / k.max(1)) / 8 * 8).clamp(16, 256)
}

/// Whether a product of `m` activation rows with `w` on `tier` rounds the activations to int8
/// (the VNNI tier: always on the GEMV path; on the GEMM path when the weight's groups are whole
/// blocks of 32, see [`crate::x86`]'s `vnni_gemm`) rather than using them in f32.
pub fn quantizes_activations(tier: Tier, w: &QuantMatrix<'_>, m: usize) -> bool {
    if tier != Tier::Avx512Vnni || tier.format_limit(w).is_some() {
        return false;
    }
    if m < GEMM_MIN_ROWS {
        return true;
    }
    #[cfg(target_arch = "x86_64")]
    {
        crate::x86::vnni_gemm::applies(w)
    }
    #[cfg(not(target_arch = "x86_64"))]
    {
        false
    }
}

fn gemm(tier: Tier, x: &[f32], m: usize, w: &QuantMatrix<'_>, out: &mut [f32]) {
    #[cfg(target_arch = "x86_64")]
    if tier == Tier::Avx512Vnni && crate::x86::vnni_gemm::applies(w) {
        // SAFETY: `matmul_with` checked the CPU features, the format and the buffer lengths;
        // `applies` the path's own conditions.
        unsafe { crate::x86::vnni_gemm::gemm(x, m, w, out) };
        return;
    }
    let [_, k] = w.shape();
    let permute = tier.permutes(w.bits());
    let xp: Vec<f32> = if permute {
        x.chunks_exact(k)
            .flat_map(|r| F32Activations::new(r, w, true).x)
            .collect()
    } else {
        x.to_vec()
    };
    gemm_tiles(
        &xp,
        m,
        w.shape(),
        |r, dst| dequantize_row(tier, w, r, dst),
        out,
    );
}

/// `out = x · Wᵀ` for `x` of `m × k` and an `[n, k]` weight given row by row
/// (`dequantize(row, dst)` writes row `row` into `dst` in `x`'s column order): threads take
/// tiles of [`tile_rows`] rows, dequantize them into a per-task buffer and multiply with faer.
pub(crate) fn gemm_tiles(
    x: &[f32],
    m: usize,
    [n, k]: [usize; 2],
    dequantize: impl Fn(usize, &mut [f32]) + Sync,
    out: &mut [f32],
) {
    let lhs = MatRef::from_row_major_slice(x, m, k);
    let tr = tile_rows(k);
    let tiles = n.div_ceil(tr);
    // One dequantized tile buffer per task, reused across its tiles.
    let run = |wt: &mut Vec<f32>, t: usize| {
        let r0 = t * tr;
        let rows = tr.min(n - r0);
        wt.resize(tr * k, 0.0);
        for (i, dst) in wt[..rows * k].chunks_exact_mut(k).enumerate() {
            dequantize(r0 + i, dst);
        }
        let mut yt = vec![0f32; m * rows];
        faer_matmul(
            MatMut::from_row_major_slice_mut(&mut yt, m, rows),
            Accum::Replace,
            lhs,
            MatRef::from_column_major_slice(&wt[..rows * k], k, rows),
            1.0f32,
            Par::Seq,
        );
        (r0, rows, yt)
    };
    let results: Vec<(usize, usize, Vec<f32>)> = if n * k < PARALLEL_MIN_WEIGHTS {
        let mut wt = Vec::new();
        (0..tiles).map(|t| run(&mut wt, t)).collect()
    } else {
        (0..tiles)
            .into_par_iter()
            .map_init(Vec::new, |wt, t| run(wt, t))
            .collect()
    };
    for (r0, rows, yt) in results {
        for (yrow, trow) in out.chunks_exact_mut(n).zip(yt.chunks_exact(rows)) {
            yrow[r0..r0 + rows].copy_from_slice(trow);
        }
    }
}
