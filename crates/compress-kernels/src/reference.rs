//! The scalar reference tier: obviously correct, slow, and the yardstick of every other tier.
//!
//! Each weight is dequantized on its own exactly as compress-core's `PackedWeight::dequantize`
//! does (`w = s · (c − z)` in f32), and each output is the f64 sum of `x · w`.

use crate::matrix::QuantMatrix;

/// `out[m·N + n] = Σ_k x[m·K + k] · w[n, k]` for `x` of `m × K`, accumulated in f64.
///
/// Lengths are the caller's responsibility (the public entry points check them).
pub fn matmul(x: &[f32], m: usize, w: &QuantMatrix<'_>, out: &mut [f32]) {
    let [n_out, k] = w.shape();
    let g = w.group_len();
    for i in 0..m {
        let xr = &x[i * k..(i + 1) * k];
        for n in 0..n_out {
            let mut acc = 0f64;
            for (col, &xv) in xr.iter().enumerate() {
                let (s, z) = w.scale_zero(n, col / g);
                let wv = s * (w.code(n, col) as f32 - z);
                acc += xv as f64 * wv as f64;
            }
            out[i * n_out + n] = acc as f32;
        }
    }
}

/// Dequantizes row `row` of `w` into `out` (natural column order), the reference way.
pub fn dequantize_row(w: &QuantMatrix<'_>, row: usize, out: &mut [f32]) {
    let g = w.group_len();
    for (col, o) in out.iter_mut().enumerate().take(w.in_features()) {
        let (s, z) = w.scale_zero(row, col / g);
        *o = s * (w.code(row, col) as f32 - z);
    }
}
