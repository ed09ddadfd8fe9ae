//! CubeCL kernels: `Y = X · Wᵀ` straight from the packed codes on GPUs (wgpu, CUDA, and every
//! other CubeCL runtime).
//!
//! Both kernels read the [`DeviceLayout`] (codes in `u32` words, `(s, s·z)` f32 pairs per
//! group) and f32 activations, and write f32 outputs; no dequantized copy of `W` is ever
//! stored. Every code width from 2 to 8 bits and any group length run; 4- and 8-bit codes take
//! a faster word-at-a-time path.
//!
//! - [`packed_gemv`] (`M ≤ GEMV_MAX_ROWS`, decode): a cube of 8 × 32 units computes 8 outputs;
//!   the 32 units of an output split its row into chunks of 8 columns (one `u32` word of 4-bit
//!   codes, so neighbouring units read neighbouring words), each accumulates
//!   `s · Σ c·x − s·z · Σ x` per chunk, and the 32 partial sums are added in shared memory.
//!   One activation row per cube row of the launch grid.
//! - [`packed_gemm`] (prefill): a cube of 16 × 16 units computes a 64 × 64 output tile; for
//!   each slice of 32 columns the units load the activations and dequantize the matching 64 ×
//!   32 weights into shared memory once, then each unit accumulates a 4 × 4 block of outputs
//!   from shared memory.
//!
//! [`launch`] picks the kernel; the burn integration (compress-core's `PackedMatmul` backend
//! extension) calls it with the buffers of burn's CubeCL tensors.

use cubecl::prelude::*;
use cubecl::server::Handle;

use crate::device_layout::DeviceMeta;

/// Activation rows up to which [`launch`] runs the GEMV kernel (each row re-reads the codes,
/// which then come from the GPU's cache); above it, the tiled GEMM.
pub const GEMV_MAX_ROWS: usize = 4;

/// Outputs per GEMV cube (one per row of 32 units).
const GEMV_ROWS: u32 = 8;
/// Output tile of the GEMM kernel (rows and columns) and its slice of the reduction.
const TILE: u32 = 64;
const TILE_K: u32 = 32;
/// Shared-memory row pitch: one word of padding keeps column reads free of bank conflicts.
const PITCH: u32 = TILE_K + 1;

pub use kernels::{packed_gemm, packed_gemv};

/// The `#[cube]` functions (the macro's generated launch items carry no docs of their own).
#[allow(missing_docs)]
mod kernels {
    use super::*;

    /// The code of column `c` of the row whose words start at `base` (least-significant bit first;
    /// a code straddles two words when `bits` does not divide 32).
    // The outer `if` is decided when the kernel is compiled, the inner one when it runs.
    #[allow(clippy::collapsible_if)]
    #[cube]
    fn read_code(words: &[u32], base: usize, c: u32, #[comptime] bits: u32) -> u32 {
        let bit = c * bits;
        let at = base + (bit / 32) as usize;
        let shift = bit % 32;
        let mut v = words[at] >> shift;
        if comptime![32 % bits != 0] {
            if shift + bits > 32 {
                v |= words[at + 1] << (32 - shift);
            }
        }
        v & comptime![(1u32 << bits) - 1]
    }

    /// `Σ c·x` and `Σ x` over the 8 columns `c0..c0 + 8` of one row (all inside the row).
    #[cube]
    fn chunk_sums(
        x: &[f32],
        xbase: usize,
        words: &[u32],
        wbase: usize,
        c0: u32,
        #[comptime] bits: u32,
    ) -> (f32, f32) {
        let mut cx = 0.0f32;
        let mut sx = 0.0f32;
        if comptime![bits == 4] {
            // Eight 4-bit codes are exactly one word: word `c0 / 8` of the row.
            let word = words[wbase + (c0 / 8) as usize];
            #[unroll]
            for i in 0..8u32 {
                let xv = x[xbase + (c0 + i) as usize];
                cx += f32::cast_from((word >> (4 * i)) & 15u32) * xv;
                sx += xv;
            }
        } else if comptime![bits == 8] {
            // Eight 8-bit codes are two words.
            let w0 = words[wbase + (c0 / 4) as usize];
            let w1 = words[wbase + (c0 / 4) as usize + 1];
            #[unroll]
            for i in 0..4u32 {
                let xa = x[xbase + (c0 + i) as usize];
                let xb = x[xbase + (c0 + 4 + i) as usize];
                cx += f32::cast_from((w0 >> (8 * i)) & 255u32) * xa;
                cx += f32::cast_from((w1 >> (8 * i)) & 255u32) * xb;
                sx += xa + xb;
            }
        } else {
            #[unroll]
            for i in 0..8u32 {
                let xv = x[xbase + (c0 + i) as usize];
                cx += f32::cast_from(read_code(words, wbase, c0 + i, bits)) * xv;
                sx += xv;
            }
        }
        (cx, sx)
    }

    /// The contribution `Σ w·x` of the 8 columns `c0..c0 + 8` of one row.
    #[cube]
    #[allow(clippy::too_many_arguments)]
    fn chunk_term(
        x: &[f32],
        xbase: usize,
        words: &[u32],
        wbase: usize,
        params: &[f32],
        pbase: usize,
        c0: u32,
        group_len: u32,
        #[comptime] bits: u32,
        #[comptime] chunks_in_group: bool,
    ) -> f32 {
        let mut acc = 0.0f32;
        if comptime![chunks_in_group] {
            let (cx, sx) = chunk_sums(x, xbase, words, wbase, c0, bits);
            let p = pbase + (2 * (c0 / group_len)) as usize;
            acc = params[p] * cx - params[p + 1] * sx;
        } else {
            // A chunk may cross a group boundary: weight by weight.
            for i in 0..8u32 {
                let c = c0 + i;
                let p = pbase + (2 * (c / group_len)) as usize;
                let code = f32::cast_from(read_code(words, wbase, c, bits));
                acc += (params[p] * code - params[p + 1]) * x[xbase + c as usize];
            }
        }
        acc
    }

    /// GEMV: `y[m, n] = Σ_k x[m, k] · w[n, k]` for a cube of 8 outputs of activation row
    /// `CUBE_POS_Y` (see the [module docs](self)). Launched with cubes of 32 × 8 units.
    #[cube(launch)]
    pub fn packed_gemv(
        x: &[f32],
        words: &[u32],
        params: &[f32],
        y: &mut [f32],
        k: u32,
        n: u32,
        words_per_row: u32,
        groups_per_row: u32,
        group_len: u32,
        #[comptime] bits: u32,
        #[comptime] chunks_in_group: bool,
    ) {
        let lane = UNIT_POS_X;
        let row = CUBE_POS_X * GEMV_ROWS + UNIT_POS_Y;
        let m = CUBE_POS_Y;
        let mut partial = Shared::<[f32]>::new_slice(comptime![(GEMV_ROWS * 32) as usize]);
        let mut acc = 0.0f32;
        if row < n {
            let wbase = (row * words_per_row) as usize;
            let pbase = (row * groups_per_row * 2) as usize;
            let xbase = (m * k) as usize;
            let whole = k / 8;
            // Two chunks per iteration (independent loads in flight), then the odd one.
            let mut j = lane;
            while j + 32u32 < whole {
                let a = chunk_term(
                    x,
                    xbase,
                    words,
                    wbase,
                    params,
                    pbase,
                    j * 8,
                    group_len,
                    bits,
                    chunks_in_group,
                );
                let b = chunk_term(
                    x,
                    xbase,
                    words,
                    wbase,
                    params,
                    pbase,
                    (j + 32u32) * 8,
                    group_len,
                    bits,
                    chunks_in_group,
                );
                acc += a + b;
                j += 64u32;
            }
            if j < whole {
                acc += chunk_term(
                    x,
                    xbase,
                    words,
                    wbase,
                    params,
                    pbase,
                    j * 8,
                    group_len,
                    bits,
                    chunks_in_group,
                );
            }
            // The last `k % 8` columns.
            let c = whole * 8 + lane;
            if c < k {
                let p = pbase + (2 * (c / group_len)) as usize;
                let code = f32::cast_from(read_code(words, wbase, c, bits));
                acc += (params[p] * code - params[p + 1]) * x[xbase + c as usize];
            }
        }
        let slot = (UNIT_POS_Y * 32 + lane) as usize;
        partial[slot] = acc;
        sync_cube();
        let mut stride = 16u32;
        while stride > 0 {
            if lane < stride {
                partial[slot] += partial[slot + stride as usize];
            }
            sync_cube();
            stride /= 2u32;
        }
        if lane == 0 && row < n {
            y[(m * n + row) as usize] = partial[slot];
        }
    }

    /// GEMM: one 64 × 64 tile of `y` per cube of 16 × 16 units (see the [module docs](self)).
    #[cube(launch)]
    pub fn packed_gemm(
        x: &[f32],
        words: &[u32],
        params: &[f32],
        y: &mut [f32],
        m: u32,
        k: u32,
        n: u32,
        words_per_row: u32,
        groups_per_row: u32,
        group_len: u32,
        #[comptime] bits: u32,
    ) {
        let tx = UNIT_POS_X;
        let ty = UNIT_POS_Y;
        let unit = ty * 16 + tx;
        let m0 = CUBE_POS_Y * TILE;
        let n0 = CUBE_POS_X * TILE;
        let mut xs = Shared::<[f32]>::new_slice(comptime![(TILE * PITCH) as usize]);
        let mut ws = Shared::<[f32]>::new_slice(comptime![(TILE * PITCH) as usize]);
        let mut acc = Array::<f32>::new(16usize);
        #[unroll]
        for i in 0..16usize {
            acc[i] = 0.0f32;
        }
        // Each unit loads 8 consecutive columns of one row of each tile.
        let lrow = unit / 4;
        let lcol = (unit % 4) * 8;
        let mut k0 = 0u32;
        while k0 < k {
            let xm = m0 + lrow;
            let wn = n0 + lrow;
            #[unroll]
            for i in 0..8u32 {
                let c = k0 + lcol + i;
                let at = (lrow * PITCH + lcol + i) as usize;
                let mut xv = 0.0f32;
                if xm < m && c < k {
                    xv = x[(xm * k + c) as usize];
                }
                xs[at] = xv;
                let mut wv = 0.0f32;
                if wn < n && c < k {
                    let p = (wn * groups_per_row * 2 + 2 * (c / group_len)) as usize;
                    let code = read_code(words, (wn * words_per_row) as usize, c, bits);
                    wv = params[p] * f32::cast_from(code) - params[p + 1];
                }
                ws[at] = wv;
            }
            sync_cube();
            for kk in 0..TILE_K {
                #[unroll]
                for i in 0..4u32 {
                    let xv = xs[((ty + 16 * i) * PITCH + kk) as usize];
                    #[unroll]
                    for j in 0..4u32 {
                        let idx = (i * 4 + j) as usize;
                        acc[idx] += xv * ws[((tx + 16 * j) * PITCH + kk) as usize];
                    }
                }
            }
            sync_cube();
            k0 += TILE_K;
        }
        #[unroll]
        for i in 0..4u32 {
            let row = m0 + ty + 16 * i;
            #[unroll]
            for j in 0..4u32 {
                let col = n0 + tx + 16 * j;
                if row < m && col < n {
                    y[(row * n + col) as usize] = acc[(i * 4 + j) as usize];
                }
            }
        }
    }
}

/// Which kernel [`launch`] runs for `rows` activation rows.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CubeKernel {
    /// [`packed_gemv`].
    Gemv,
    /// [`packed_gemm`].
    Gemm,
}

impl CubeKernel {
    /// The kernel for `rows` activation rows.
    pub fn for_rows(rows: usize) -> Self {
        if rows <= GEMV_MAX_ROWS {
            CubeKernel::Gemv
        } else {
            CubeKernel::Gemm
        }
    }
}

/// Queues `y = x · Wᵀ` on `client`: `x` holds `rows × K` f32 values, `words` and `params` the
/// weight in the [`DeviceLayout`], `y` room for `rows × N` f32 values (all contiguous,
/// row-major). Returns the kernel it queued.
///
/// # Panics
/// If a dimension exceeds `u32` (the kernels index with 32-bit integers) or the bit width is
/// outside 2–8.
pub fn launch(
    client: &cubecl::client::Client,
    x: Handle,
    words: Handle,
    params: Handle,
    y: Handle,
    rows: usize,
    meta: &DeviceMeta,
) -> CubeKernel {
    assert!((2..=8).contains(&meta.bits), "bit width {}", meta.bits);
    let fits = |v: usize| u32::try_from(v).expect("dimension exceeds u32");
    let (k, n) = (meta.in_features, meta.out_features);
    // Indices up to rows·max(K, N) and N·words_per_row are formed in u32.
    fits(rows * k.max(n));
    fits(meta.num_words());
    fits(meta.num_params());
    let kernel = CubeKernel::for_rows(rows);
    // SAFETY: every buffer holds the number of elements stated (the caller's contract, checked
    // by the burn integration against the tensors' shapes), and the kernels index within them.
    let (xa, wa, pa, ya) = unsafe {
        (
            BufferArg::from_raw_parts(x, rows * k),
            BufferArg::from_raw_parts(words, meta.num_words()),
            BufferArg::from_raw_parts(params, meta.num_params()),
            BufferArg::from_raw_parts(y, rows * n),
        )
    };
    match kernel {
        CubeKernel::Gemv => {
            let chunks_in_group = meta.group_len.is_multiple_of(8);
            packed_gemv::launch(
                client,
                CubeCount::Static(fits(n.div_ceil(GEMV_ROWS as usize)), fits(rows), 1),
                CubeDim::new_2d(32, GEMV_ROWS),
                xa,
                wa,
                pa,
                ya,
                fits(k),
                fits(n),
                fits(meta.words_per_row),
                fits(meta.groups_per_row),
                fits(meta.group_len),
                meta.bits,
                chunks_in_group,
            );
        }
        CubeKernel::Gemm => {
            packed_gemm::launch(
                client,
                CubeCount::Static(
                    fits(n.div_ceil(TILE as usize)),
                    fits(rows.div_ceil(TILE as usize)),
                    1,
                ),
                CubeDim::new_2d(16, 16),
                xa,
                wa,
                pa,
                ya,
                fits(rows),
                fits(k),
                fits(n),
                fits(meta.words_per_row),
                fits(meta.groups_per_row),
                fits(meta.group_len),
                meta.bits,
            );
        }
    }
    kernel
}
