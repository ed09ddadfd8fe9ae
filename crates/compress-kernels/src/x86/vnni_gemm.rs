//! The VNNI tier's GEMM path (prefill, calibration forwards): `Y = X · Wᵀ` for `M ≥ 8` rows of
//! activations quantized to int8 per block of 32 — exactly as the GEMV path quantizes them, so
//! each output differs from the GEMV's only in the order of its f32 sums — against 4- or 8-bit
//! codes, on `vpdpbusd`.
//!
//! **Why a layout of its own.** The GEMV walks one weight row against one activation row. A
//! product of many rows wants every loaded value to meet several others, so this path keeps a
//! register tile of `WR` weight rows × `16·JV` activation rows (24 `i32` vectors): one step of
//! four columns loads `JV` vectors of 16 activation rows × 4 int8 values and broadcasts four
//! codes of each weight row, and each `vpdpbusd` then does 64 exact multiply-adds. For that
//! the activations are re-laid once per product (16 rows interleaved per column quad, the
//! transpose the broadcast needs) and each task unpacks its weight rows to one byte per code.
//!
//! **Scales.** After each block of 32 columns the tile's `i32` sums are converted and added to
//! f32 sums with the factor `s_g · d_b` (weight scale of the block's group times the
//! activation row's block scale). A symmetric weight's zero point `z` is folded into the
//! integers: each lane starts the block at `−z · Σ q` of its activation row (exact); an
//! asymmetric weight's zero `z_g` is taken out in f32 per block, `− s_g z_g · d_b Σ q`.
//!
//! **Where it applies** ([`applies`]): 4- and 8-bit codes whose groups are whole blocks
//! (`K` a multiple of 32, groups of a multiple of 32 or one per row). Other shapes take the
//! exact f32 GEMM.

use std::arch::x86_64::*;

use rayon::prelude::*;

use crate::matrix::QuantMatrix;
use crate::prepare::BLOCK;

/// Activation rows in one vector of `i32` lanes.
const LANES: usize = 16;
/// Weight rows per task (a multiple of every tile's `WR`: 6, 8, 12, 24).
const CHUNK: usize = 48;
/// Below this many weights × rows the product stays on the calling thread.
const PARALLEL_MIN_WORK: usize = 1 << 22;

/// Whether this path runs `w` (see the [module docs](self)).
pub(crate) fn applies(w: &QuantMatrix<'_>) -> bool {
    matches!(w.bits(), 4 | 8)
        && w.in_features().is_multiple_of(BLOCK)
        && (w.groups_per_row() == 1 || w.group_len().is_multiple_of(BLOCK))
}

/// The activations of one product, quantized and laid out for the tiles.
struct Acts {
    /// `m` rounded up to whole groups of 16 rows.
    rows: usize,
    /// Blocks of 32 per row.
    blocks: usize,
    /// Group `r` of 16 rows, column quad `t`, lane `l`: the four int8 values of row `16r + l`
    /// at columns `4t..4t + 4` (zeros for padding rows).
    q: Vec<i8>,
    /// `[r][b][l]`: the block scale `d` of row `16r + l`, block `b`.
    d: Vec<f32>,
    /// `[r][b][l]`: `−z · Σ q` over the block (symmetric weights' integer start values).
    bias: Vec<i32>,
    /// `[r][b][l]`: `d · Σ q` over the block (asymmetric weights' zero-point term).
    dsum: Vec<f32>,
}

/// One task's weight rows: codes one byte each, f32 scales and `scale · zero` per group.
#[derive(Default)]
struct Chunk {
    /// Rows in this chunk that exist in `W` (the rest are zero padding).
    rows: usize,
    /// `CHUNK × K` codes.
    codes: Vec<u8>,
    /// `CHUNK × G` scales.
    s: Vec<f32>,
    /// `CHUNK × G` products `s · z` (asymmetric weights only).
    sz: Vec<f32>,
}

/// `out = X · Wᵀ` (`x`: `m × K`, `out`: `m × N`, both row-major) with int8 activations.
///
/// # Safety
/// The CPU has AVX-512 F/BW/VL and VNNI; [`applies`] holds for `w`; the buffers have the
/// lengths [`crate::matmul_with`] checked.
pub(crate) unsafe fn gemm(x: &[f32], m: usize, w: &QuantMatrix<'_>, out: &mut [f32]) {
    let [n, k] = w.shape();
    let symmetric = !w.is_asymmetric();
    let zero = if symmetric { w.mid_code() as i32 } else { 0 };
    let big = n * k * m >= PARALLEL_MIN_WORK;
    // SAFETY: the caller's contract.
    let acts = unsafe { quantize(x, m, k, zero, big) };
    let chunks = n.div_ceil(CHUNK);
    let run = |c: &mut Chunk, i: usize| {
        // SAFETY: as above; `fill` lays the chunk out for `product`.
        unsafe {
            fill(c, w, i * CHUNK);
            product(&acts, c, m, w, symmetric)
        }
    };
    let results: Vec<Vec<f32>> = if big {
        (0..chunks)
            .into_par_iter()
            .map_init(Chunk::default, run)
            .collect()
    } else {
        let mut c = Chunk::default();
        (0..chunks).map(|i| run(&mut c, i)).collect()
    };
    for (i, part) in results.iter().enumerate() {
        let (c0, cols) = (i * CHUNK, CHUNK.min(n - i * CHUNK));
        for (yrow, prow) in out.chunks_exact_mut(n).zip(part.chunks_exact(CHUNK)) {
            yrow[c0..c0 + cols].copy_from_slice(&prow[..cols]);
        }
    }
}

/// One group of 16 rows of [`Acts`]: `q`, `d`, `bias`, `dsum` (as rayon's `zip` nests them).
type GroupSlices<'a> = (
    ((&'a mut [i8], &'a mut [f32]), &'a mut [i32]),
    &'a mut [f32],
);

/// Quantizes `x` per block of 32 (the rounding of [`crate::prepare::Int8Activations`]) into
/// the tiles' layout.
#[target_feature(enable = "avx512f,avx512bw,avx512vl")]
unsafe fn quantize(x: &[f32], m: usize, k: usize, zero: i32, parallel: bool) -> Acts {
    let rows = m.next_multiple_of(LANES);
    let blocks = k / BLOCK;
    let mut acts = Acts {
        rows,
        blocks,
        q: vec![0; rows * k],
        d: vec![0.0; rows * blocks],
        bias: vec![0; rows * blocks],
        dsum: vec![0.0; rows * blocks],
    };
    let group = |(r, (((q, d), bias), dsum)): (usize, GroupSlices<'_>)| {
        for l in 0..LANES.min(m.saturating_sub(r * LANES)) {
            let row = &x[(r * LANES + l) * k..(r * LANES + l + 1) * k];
            for b in 0..blocks {
                // SAFETY: the block's 32 values are in `row`; the features are enabled here.
                let (scale, sum, words) = unsafe { quantize_block(row.as_ptr().add(b * BLOCK)) };
                let at = b * LANES + l;
                d[at] = scale;
                bias[at] = -zero * sum;
                dsum[at] = scale * sum as f32;
                for (j, word) in words.into_iter().enumerate() {
                    let t = b * BLOCK / 4 + j;
                    q[(t * LANES + l) * 4..(t * LANES + l) * 4 + 4].copy_from_slice(&word);
                }
            }
        }
    };
    let per = LANES * blocks;
    if parallel {
        let q = acts.q.par_chunks_mut(LANES * k);
        let d = acts.d.par_chunks_mut(per);
        let bias = acts.bias.par_chunks_mut(per);
        let dsum = acts.dsum.par_chunks_mut(per);
        q.zip(d).zip(bias).zip(dsum).enumerate().for_each(group);
    } else {
        let q = acts.q.chunks_mut(LANES * k);
        let d = acts.d.chunks_mut(per);
        let bias = acts.bias.chunks_mut(per);
        let dsum = acts.dsum.chunks_mut(per);
        q.zip(d).zip(bias).zip(dsum).enumerate().for_each(group);
    }
    acts
}

/// One block of 32 values at `src`: its scale `d = max|x| / 127`, `Σ q` and the int8 values
/// `q = round(x / d)` (nearest, ties to even) as eight words of four.
#[inline]
#[target_feature(enable = "avx512f,avx512bw,avx512vl")]
unsafe fn quantize_block(src: *const f32) -> (f32, i32, [[i8; 4]; 8]) {
    let a = _mm512_loadu_ps(src);
    let b = _mm512_loadu_ps(src.add(16));
    let amax = _mm512_reduce_max_ps(_mm512_max_ps(_mm512_abs_ps(a), _mm512_abs_ps(b)));
    let d = amax / 127.0;
    let inv = _mm512_set1_ps(if d > 0.0 { 1.0 / d } else { 0.0 });
    let (lo, hi) = (_mm512_set1_epi32(-127), _mm512_set1_epi32(127));
    // `cvtps` rounds in the current mode, nearest-even, as `prepare`'s scalar rounding does.
    let qa = _mm512_min_epi32(
        _mm512_max_epi32(_mm512_cvtps_epi32(_mm512_mul_ps(a, inv)), lo),
        hi,
    );
    let qb = _mm512_min_epi32(
        _mm512_max_epi32(_mm512_cvtps_epi32(_mm512_mul_ps(b, inv)), lo),
        hi,
    );
    let sum = _mm512_reduce_add_epi32(_mm512_add_epi32(qa, qb));
    let mut words = [[0i8; 4]; 8];
    let p = words.as_mut_ptr().cast::<__m128i>();
    _mm_storeu_si128(p, _mm512_cvtepi32_epi8(qa));
    _mm_storeu_si128(p.add(1), _mm512_cvtepi32_epi8(qb));
    (d, sum, words)
}

/// Unpacks weight rows `r0..r0 + CHUNK` (zeros past `N`) with their scales into `c`.
#[target_feature(enable = "avx2")]
unsafe fn fill(c: &mut Chunk, w: &QuantMatrix<'_>, r0: usize) {
    let [n, k] = w.shape();
    let groups = w.groups_per_row();
    c.rows = CHUNK.min(n - r0);
    c.codes.clear();
    c.codes.resize(CHUNK * k, 0);
    c.s.clear();
    c.s.resize(CHUNK * groups, 0.0);
    c.sz.clear();
    c.sz.resize(CHUNK * groups, 0.0);
    let mask = _mm_set1_epi8(0x0f);
    for i in 0..c.rows {
        let src = w.row_codes(r0 + i);
        let dst = &mut c.codes[i * k..(i + 1) * k];
        if w.bits() == 8 {
            dst.copy_from_slice(src);
        } else {
            // 16 bytes → 32 codes: low nibble first (the packing order), interleaved.
            for (o, s) in dst.chunks_exact_mut(32).zip(src.chunks_exact(16)) {
                // SAFETY: 16 readable bytes, 32 writable ones.
                unsafe {
                    let v = _mm_loadu_si128(s.as_ptr().cast());
                    let lo = _mm_and_si128(v, mask);
                    let hi = _mm_and_si128(_mm_srli_epi16::<4>(v), mask);
                    _mm_storeu_si128(o.as_mut_ptr().cast(), _mm_unpacklo_epi8(lo, hi));
                    _mm_storeu_si128(o.as_mut_ptr().add(16).cast(), _mm_unpackhi_epi8(lo, hi));
                }
            }
        }
        for g in 0..groups {
            let (s, z) = w.scale_zero(r0 + i, g);
            c.s[i * groups + g] = s;
            c.sz[i * groups + g] = s * z;
        }
    }
}

/// The chunk's columns of `Y` for all `m` rows, `m × CHUNK` row-major.
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512vnni")]
unsafe fn product(a: &Acts, c: &Chunk, m: usize, w: &QuantMatrix<'_>, symmetric: bool) -> Vec<f32> {
    let mut y = vec![0f32; m * CHUNK];
    let per_group = if w.groups_per_row() == 1 {
        usize::MAX
    } else {
        w.group_len() / BLOCK
    };
    let geo = Geometry {
        k: w.in_features(),
        blocks: a.blocks,
        groups: w.groups_per_row(),
        per_group,
    };
    let mut r = 0;
    while r < a.rows / LANES {
        let jv = (a.rows / LANES - r).min(4);
        // SAFETY: the features are enabled; `r + jv` groups of 16 rows exist in `a`.
        unsafe {
            match (jv, symmetric) {
                (4, true) => run::<4, 6, true>(a, c, &geo, r, m, &mut y),
                (4, false) => run::<4, 6, false>(a, c, &geo, r, m, &mut y),
                (3, true) => run::<3, 8, true>(a, c, &geo, r, m, &mut y),
                (3, false) => run::<3, 8, false>(a, c, &geo, r, m, &mut y),
                (2, true) => run::<2, 12, true>(a, c, &geo, r, m, &mut y),
                (2, false) => run::<2, 12, false>(a, c, &geo, r, m, &mut y),
                (_, true) => run::<1, 24, true>(a, c, &geo, r, m, &mut y),
                (_, false) => run::<1, 24, false>(a, c, &geo, r, m, &mut y),
            }
        }
        r += jv;
    }
    y
}

/// Sizes shared by a product's tiles.
struct Geometry {
    k: usize,
    blocks: usize,
    groups: usize,
    /// Blocks per group (`usize::MAX` for one group per row).
    per_group: usize,
}

/// Activation rows `16r..16(r + JV)` against every weight row of the chunk, `WR` at a time,
/// into `y` (`m × CHUNK`).
#[inline]
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512vnni")]
unsafe fn run<const JV: usize, const WR: usize, const SYM: bool>(
    a: &Acts,
    c: &Chunk,
    geo: &Geometry,
    r: usize,
    m: usize,
    y: &mut [f32],
) {
    for i0 in (0..c.rows).step_by(WR) {
        // SAFETY: forwarded; `i0 + WR ≤ CHUNK` since WR divides CHUNK.
        let tile = unsafe { tile::<JV, WR, SYM>(a, c, geo, r, i0) };
        let mut lanes = [0f32; LANES];
        for (j, col) in (0..JV).zip((r * LANES..).step_by(LANES)) {
            for (i, acc) in tile.iter().enumerate() {
                // SAFETY: a plain store of 16 floats.
                unsafe { _mm512_storeu_ps(lanes.as_mut_ptr(), acc[j]) };
                for (l, v) in lanes.iter().enumerate().take(m.saturating_sub(col)) {
                    y[(col + l) * CHUNK + i0 + i] = *v;
                }
            }
        }
    }
}

/// The register tile: `WR` weight rows from `i0` × `16·JV` activation rows from `16r`, over
/// every block of the rows (see the [module docs](self)).
#[inline]
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512vnni")]
unsafe fn tile<const JV: usize, const WR: usize, const SYM: bool>(
    a: &Acts,
    c: &Chunk,
    geo: &Geometry,
    r: usize,
    i0: usize,
) -> [[__m512; JV]; WR] {
    let quads = geo.k / 4;
    let q = a.q.as_ptr().cast::<i32>();
    let codes = c.codes.as_ptr();
    let mut y = [[_mm512_setzero_ps(); JV]; WR];
    for b in 0..geo.blocks {
        let g = if geo.per_group == usize::MAX {
            0
        } else {
            b / geo.per_group
        };
        let at = |j: usize| ((r + j) * geo.blocks + b) * LANES;
        let mut acc = [[_mm512_setzero_si512(); JV]; WR];
        if SYM {
            for j in 0..JV {
                let start = _mm512_loadu_si512(a.bias.as_ptr().add(at(j)).cast());
                for row in acc.iter_mut() {
                    row[j] = start;
                }
            }
        }
        for t in b * BLOCK / 4..(b + 1) * BLOCK / 4 {
            let mut av = [_mm512_setzero_si512(); JV];
            for (j, v) in av.iter_mut().enumerate() {
                *v = _mm512_loadu_si512(q.add(((r + j) * quads + t) * LANES).cast());
            }
            for (i, row) in acc.iter_mut().enumerate() {
                let word = codes
                    .add((i0 + i) * geo.k + 4 * t)
                    .cast::<i32>()
                    .read_unaligned();
                let wv = _mm512_set1_epi32(word);
                for j in 0..JV {
                    row[j] = _mm512_dpbusd_epi32(row[j], wv, av[j]);
                }
            }
        }
        let mut dv = [_mm512_setzero_ps(); JV];
        let mut qv = [_mm512_setzero_ps(); JV];
        for j in 0..JV {
            dv[j] = _mm512_loadu_ps(a.d.as_ptr().add(at(j)));
            if !SYM {
                qv[j] = _mm512_loadu_ps(a.dsum.as_ptr().add(at(j)));
            }
        }
        for i in 0..WR {
            let s = _mm512_set1_ps(*c.s.get_unchecked((i0 + i) * geo.groups + g));
            let sz = _mm512_set1_ps(*c.sz.get_unchecked((i0 + i) * geo.groups + g));
            for j in 0..JV {
                let v = _mm512_mul_ps(_mm512_cvtepi32_ps(acc[i][j]), dv[j]);
                y[i][j] = _mm512_fmadd_ps(v, s, y[i][j]);
                if !SYM {
                    y[i][j] = _mm512_fnmadd_ps(qv[j], sz, y[i][j]);
                }
            }
        }
    }
    y
}
