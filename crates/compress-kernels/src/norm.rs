//! Fused RMSNorm (Zhang & Sennrich 2019, arXiv:1910.07467): `y = x / sqrt(mean(x²) + ε) · g`
//! over the last dimension, one pass per row, rows across threads.
//!
//! Each row's mean of squares is summed in f32 over 16 independent lanes (vectorizable); the
//! scale `1 / sqrt(ms + ε)` and the two products `(x · scale) · g` are rounded as the separate
//! tensor operations round them, so the result differs from the unfused form only by the order
//! of the row sum (a few ulp of `ms`).
//!
//! ```
//! let x = [3.0f32, 4.0]; // mean of squares 12.5
//! let mut y = [0.0f32; 2];
//! compress_kernels::norm::rms_norm(&x, &[1.0, 2.0], 0.0, &mut y)?;
//! let s = 1.0 / 12.5f32.sqrt();
//! assert_eq!(y, [3.0 * s, 4.0 * s * 2.0]);
//! # Ok::<(), compress_kernels::KernelError>(())
//! ```

use rayon::prelude::*;

use crate::matrix::KernelError;

/// Rows per parallel task below which work stays on the calling thread.
const PARALLEL_MIN: usize = 1 << 14;

/// `out = rms_norm(x)` for rows of `gain.len()` values (`x.len()` a multiple of it).
pub fn rms_norm(x: &[f32], gain: &[f32], eps: f32, out: &mut [f32]) -> Result<(), KernelError> {
    let width = gain.len();
    if width == 0 || !x.len().is_multiple_of(width) {
        return Err(KernelError::Shape(format!(
            "rms_norm of {} values in rows of {width}",
            x.len()
        )));
    }
    if out.len() != x.len() {
        return Err(KernelError::Length {
            what: "rms_norm output",
            expected: x.len(),
            found: out.len(),
        });
    }
    let row = |(src, dst): (&[f32], &mut [f32])| {
        let mut acc = [0f32; 16];
        let chunks = src.chunks_exact(16);
        let tail: f32 = chunks.remainder().iter().map(|v| v * v).sum();
        for c in chunks {
            for (a, v) in acc.iter_mut().zip(c) {
                *a += v * v;
            }
        }
        let ms = (acc.iter().sum::<f32>() + tail) / width as f32;
        let scale = 1.0 / (ms + eps).sqrt();
        for ((d, &v), &g) in dst.iter_mut().zip(src).zip(gain) {
            *d = v * scale * g;
        }
    };
    if x.len() < PARALLEL_MIN {
        x.chunks_exact(width)
            .zip(out.chunks_exact_mut(width))
            .for_each(row);
    } else {
        x.par_chunks_exact(width)
            .zip(out.par_chunks_exact_mut(width))
            .for_each(row);
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Against an f64 computation on rows of awkward widths: within a few f32 ulp (the row sum
    /// in f32, then 5 roundings).
    #[test]
    fn matches_f64_rows() {
        for width in [1usize, 7, 64, 577] {
            let rows = 40;
            let x: Vec<f32> = (0..rows * width)
                .map(|i| ((i * 37 % 101) as f32 - 50.0) / 7.0)
                .collect();
            let g: Vec<f32> = (0..width).map(|i| 0.5 + (i % 5) as f32 / 4.0).collect();
            let mut y = vec![0f32; x.len()];
            rms_norm(&x, &g, 1e-5, &mut y).unwrap();
            for r in 0..rows {
                let xs = &x[r * width..][..width];
                let ms: f64 =
                    xs.iter().map(|&v| f64::from(v) * f64::from(v)).sum::<f64>() / width as f64;
                let s = 1.0 / (ms + 1e-5).sqrt();
                for c in 0..width {
                    let want = f64::from(xs[c]) * s * f64::from(g[c]);
                    let got = f64::from(y[r * width + c]);
                    assert!(
                        (got - want).abs() <= 8.0 * f64::from(f32::EPSILON) * want.abs() + 1e-30,
                        "width {width} row {r} col {c}: {got} vs {want}"
                    );
                }
            }
        }
    }

    #[test]
    fn bad_shapes_are_refused() {
        let mut y = [0f32; 3];
        assert!(rms_norm(&[0.0; 3], &[1.0, 1.0], 0.0, &mut y).is_err());
        assert!(rms_norm(&[0.0; 4], &[1.0, 1.0], 0.0, &mut y).is_err());
    }
}
