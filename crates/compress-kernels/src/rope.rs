//! Rotary position embedding (RoFormer, Su et al. 2021, arXiv:2104.09864) on host buffers, in
//! the layout the projections produce: `[tokens, heads, head_dim]`.
//!
//! Pair `i` of a head's dimensions is rotated by the angle of its token's position,
//! `(a, b) ↦ (a cos θ − b sin θ, a sin θ + b cos θ)`, with `cos θ` and `sin θ` read from tables
//! of `[positions, head_dim / 2]` (compress-model computes them once per model). Which
//! dimensions pair up is [`RopePairs`]. The products and the difference are rounded one by one,
//! as separate tensor operations would round them (no fused multiply-add), so the result equals
//! the unfused computation bit for bit.

use rayon::prelude::*;

use crate::matrix::KernelError;

/// Which dimensions of a head form a rotated pair.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RopePairs {
    /// `(i, i + head_dim / 2)` — GPT-NeoX / Hugging Face "rotate half".
    Halves,
    /// `(2i, 2i + 1)` — the original RoFormer and GGUF `llama` layout.
    Adjacent,
}

/// `out = rope(x)` for `x` of `[tokens, heads, head_dim]` (row-major), token `t` at
/// `positions[t]`, with `cos` and `sin` tables of `[positions, head_dim / 2]`.
#[allow(clippy::too_many_arguments)]
pub fn rope(
    x: &[f32],
    out: &mut [f32],
    heads: usize,
    head_dim: usize,
    positions: &[usize],
    cos: &[f32],
    sin: &[f32],
    pairs: RopePairs,
) -> Result<(), KernelError> {
    let half = head_dim / 2;
    let width = heads * head_dim;
    if head_dim == 0
        || !head_dim.is_multiple_of(2)
        || cos.len() != sin.len()
        || !cos.len().is_multiple_of(half.max(1))
    {
        return Err(KernelError::Shape(format!(
            "rope over heads of {head_dim} with tables of {} and {} values",
            cos.len(),
            sin.len()
        )));
    }
    let table_positions = cos.len() / half;
    let want = positions.len() * width;
    for (what, got) in [("rope input", x.len()), ("rope output", out.len())] {
        if got != want {
            return Err(KernelError::Length {
                what,
                expected: want,
                found: got,
            });
        }
    }
    if let Some(&p) = positions.iter().find(|&&p| p >= table_positions) {
        return Err(KernelError::Shape(format!(
            "position {p} beyond the {table_positions} positions of the rope tables"
        )));
    }
    let rotate = |(t, (src, dst)): (usize, (&[f32], &mut [f32]))| {
        let at = positions[t] * half;
        let (c, s) = (&cos[at..at + half], &sin[at..at + half]);
        for (hs, hd) in src
            .chunks_exact(head_dim)
            .zip(dst.chunks_exact_mut(head_dim))
        {
            match pairs {
                RopePairs::Halves => {
                    let (x0, x1) = hs.split_at(half);
                    let (r0, r1) = hd.split_at_mut(half);
                    for i in 0..half {
                        r0[i] = x0[i] * c[i] - x1[i] * s[i];
                        r1[i] = x0[i] * s[i] + x1[i] * c[i];
                    }
                }
                RopePairs::Adjacent => {
                    for i in 0..half {
                        let (a, b) = (hs[2 * i], hs[2 * i + 1]);
                        hd[2 * i] = a * c[i] - b * s[i];
                        hd[2 * i + 1] = a * s[i] + b * c[i];
                    }
                }
            }
        }
    };
    let rows = x.chunks_exact(width).zip(out.chunks_exact_mut(width));
    if want < 1 << 16 {
        rows.enumerate().for_each(rotate);
    } else {
        x.par_chunks_exact(width)
            .zip(out.par_chunks_exact_mut(width))
            .enumerate()
            .for_each(rotate);
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// One head of 4 dimensions at position 1 with θ = (π/2, π): each layout rotates its own
    /// pairs by the table's angles.
    #[test]
    fn rotates_the_pairs_of_each_layout() {
        let (c, s) = ([1.0, 1.0, 0.0, -1.0], [0.0, 0.0, 1.0, 0.0]);
        let x = [1.0f32, 2.0, 3.0, 4.0];
        let mut out = [0f32; 4];
        rope(&x, &mut out, 1, 4, &[1], &c, &s, RopePairs::Halves).unwrap();
        // pairs (x0, x2) by π/2 and (x1, x3) by π.
        assert_eq!(out, [-3.0, -2.0, 1.0, -4.0]);
        rope(&x, &mut out, 1, 4, &[1], &c, &s, RopePairs::Adjacent).unwrap();
        // pairs (x0, x1) by π/2 and (x2, x3) by π.
        assert_eq!(out, [-2.0, 1.0, -3.0, -4.0]);
        rope(&x, &mut out, 1, 4, &[0], &c, &s, RopePairs::Adjacent).unwrap();
        assert_eq!(out, x, "position 0 is the identity");
    }

    #[test]
    fn bad_shapes_are_refused() {
        let mut out = [0f32; 4];
        let t = [1.0f32; 4];
        assert!(rope(&[0.0; 4], &mut out, 1, 4, &[2], &t, &t, RopePairs::Halves).is_err());
        assert!(rope(&[0.0; 3], &mut out, 1, 4, &[0], &t, &t, RopePairs::Halves).is_err());
        assert!(rope(&[0.0; 4], &mut out, 1, 3, &[0], &t, &t, RopePairs::Halves).is_err());
    }
}
