//! The portable tier: any bit width and group size, plain Rust the compiler vectorizes.
//!
//! Per group it unpacks the codes into a small buffer, forms `Σ c·x` with eight independent f32
//! accumulators, and applies `s · (Σ c·x − z · Σ x)` (the zero point outside the inner loop).

use crate::matrix::QuantMatrix;
use crate::prepare::F32Activations;

/// Codes unpacked per inner step.
const CHUNK: usize = 256;

/// `Σ_k c_k · x_k` for one unpacked chunk, eight lanes at a time.
#[inline]
fn dot_codes(codes: &[u8], x: &[f32]) -> f32 {
    let mut acc = [0f32; 8];
    let (cc, ct) = codes.split_at(codes.len() / 8 * 8);
    let (xc, xt) = x.split_at(cc.len());
    for (c8, x8) in cc.chunks_exact(8).zip(xc.chunks_exact(8)) {
        for l in 0..8 {
            acc[l] += c8[l] as f32 * x8[l];
        }
    }
    let mut s: f32 = acc.iter().sum();
    for (&c, &v) in ct.iter().zip(xt) {
        s += c as f32 * v;
    }
    s
}

/// One output: row `row` of `w` against prepared activations in natural column order.
pub fn row_dot(w: &QuantMatrix<'_>, row: usize, a: &F32Activations) -> f32 {
    debug_assert!(!a.permuted);
    let mut buf = [0u8; CHUNK];
    let mut total = 0f32;
    for (gi, (s0, e)) in w.groups().enumerate() {
        let (scale, zero) = w.scale_zero(row, gi);
        let mut d = 0f32;
        let mut c = s0;
        while c < e {
            let n = (e - c).min(CHUNK);
            w.unpack_range(row, c, &mut buf[..n]);
            d += dot_codes(&buf[..n], &a.x[c..c + n]);
            c += n;
        }
        total += scale * (d - zero * a.group_sums[gi]);
    }
    total
}

/// Dequantizes row `row` into `out` in natural column order.
pub fn dequantize_row(w: &QuantMatrix<'_>, row: usize, out: &mut [f32]) {
    let mut buf = [0u8; CHUNK];
    for (gi, (s0, e)) in w.groups().enumerate() {
        let (scale, zero) = w.scale_zero(row, gi);
        let mut c = s0;
        while c < e {
            let n = (e - c).min(CHUNK);
            w.unpack_range(row, c, &mut buf[..n]);
            for (o, &q) in out[c..c + n].iter_mut().zip(&buf[..n]) {
                *o = scale * (q as f32 - zero);
            }
            c += n;
        }
    }
}

/// `Σ c·x` over columns `start..end` of row `row`, one code at a time (the SIMD tiers' tails).
#[inline]
pub(crate) fn tail_dot(
    w: &QuantMatrix<'_>,
    row: usize,
    start: usize,
    end: usize,
    x: &[f32],
) -> f32 {
    (start..end).map(|c| w.code(row, c) as f32 * x[c]).sum()
}

/// Dequantizes columns `start..end` of row `row` into `out[start..end]`, one code at a time.
#[inline]
pub(crate) fn tail_dequantize(
    w: &QuantMatrix<'_>,
    row: usize,
    (start, end): (usize, usize),
    (scale, zero): (f32, f32),
    out: &mut [f32],
) {
    for (c, o) in out[start..end].iter_mut().enumerate() {
        *o = scale * (w.code(row, start + c) as f32 - zero);
    }
}
