//! Per-product preparation of the activations: done once per row of `X`, reused by every row of
//! the weight.
//!
//! Every tier computes, per weight row and group, `s · (Σ c·x − z · Σ x)`: the zero point leaves
//! the inner loop, which then only multiplies codes by activations. Two preparations serve that:
//!
//! - [`F32Activations`]: the row (for 4-bit SIMD tiers re-ordered inside each block of 32 so the
//!   low nibbles of 16 bytes meet the even columns and the high nibbles the odd ones; for 2-bit,
//!   so that bits `2j` of 8 bytes meet columns `4l + j` — permutations of the reduction index,
//!   so the dot product is unchanged) and `Σ x` per group.
//! - [`Int8Activations`]: the same blocks quantized to `i8` with one scale per block of 32
//!   (`x ≈ d · q`, `d = max|x| / 127`), the form integer dot-product instructions (VNNI) consume,
//!   as llama.cpp's CPU backend does; the columns after the last full block of a group stay f32.

use crate::matrix::QuantMatrix;

/// Width of the activation blocks the SIMD tiers consume.
pub const BLOCK: usize = 32;

/// Rounds `v` (|v| ≤ 127 up to rounding) to the nearest integer, ties to even, as an `i8`.
///
/// Adding and subtracting 1.5·2²³ rounds any |v| < 2²² to an integer in the current (nearest-even)
/// mode without a call to `roundf`, which baseline x86-64 (no SSE4.1) would otherwise make.
#[inline(always)]
fn round_to_i8(v: f32) -> i8 {
    const MAGIC: f32 = 12_582_912.0;
    ((v + MAGIC) - MAGIC).clamp(-127.0, 127.0) as i8
}

/// Re-orders one block of 32 values from natural column order to `[even 16, odd 16]` (4-bit
/// codes: low nibbles, then high nibbles).
#[inline]
fn permute_block<T: Copy>(src: &[T], dst: &mut [T]) {
    for p in 0..BLOCK / 2 {
        dst[p] = src[2 * p];
        dst[BLOCK / 2 + p] = src[2 * p + 1];
    }
}

/// Re-orders one block of 32 values for 2-bit codes: 8 bytes hold columns `4l + j` at bits
/// `2j` of byte `l`, so widening the bytes to 8 lanes and taking bits `2j` gives columns
/// `4l + j`, which meet positions `8j + l`.
#[inline]
fn permute_block_2bit<T: Copy>(src: &[T], dst: &mut [T]) {
    for j in 0..4 {
        for l in 0..BLOCK / 4 {
            dst[8 * j + l] = src[4 * l + j];
        }
    }
}

/// A row of f32 activations laid out for one weight (see the [module docs](self)).
#[derive(Debug, Clone)]
pub struct F32Activations {
    /// The row, block-permuted when `permuted`.
    pub x: Vec<f32>,
    /// `Σ x` over each group of the weight's rows.
    pub group_sums: Vec<f32>,
    /// Whether full blocks of 32 are in `[even, odd]` order.
    pub permuted: bool,
}

impl F32Activations {
    /// Prepares `x` (length `in_features`) for `w`; `permute` re-orders full blocks of 32 inside
    /// each group for `w`'s code width (4- and 2-bit codes, whose groups must then start on a
    /// byte).
    pub fn new(x: &[f32], w: &QuantMatrix<'_>, permute: bool) -> Self {
        let mut out = x.to_vec();
        let mut group_sums = Vec::with_capacity(w.groups_per_row());
        for (s, e) in w.groups() {
            group_sums.push(x[s..e].iter().sum());
            if permute {
                let full = (e - s) / BLOCK * BLOCK;
                for b in (s..s + full).step_by(BLOCK) {
                    if w.bits() == 2 {
                        permute_block_2bit(&x[b..b + BLOCK], &mut out[b..b + BLOCK]);
                    } else {
                        permute_block(&x[b..b + BLOCK], &mut out[b..b + BLOCK]);
                    }
                }
            }
        }
        Self {
            x: out,
            group_sums,
            permuted: permute,
        }
    }
}

/// A row of activations quantized to `i8` per block of 32 (see the [module docs](self)).
#[derive(Debug, Clone)]
pub struct Int8Activations {
    /// Quantized full blocks of every group, in column order of the blocks (block-permuted for
    /// 4-bit); the tail of each group is not stored here.
    pub q: Vec<i8>,
    /// One scale per full block, in the same order.
    pub block_scales: Vec<f32>,
    /// Per group, `Σ_b d_b · Σ q_b` over its full blocks (the zero-point correction).
    pub group_corrections: Vec<f32>,
    /// The original row (tails are computed from it in f32).
    pub x: Vec<f32>,
    /// Per `i32` lane of each run of four blocks, `−z · Σ q` over the eight activations the
    /// lane meets, for a symmetric weight with zero point `z` laid out by
    /// [`Self::interleave_quads`]: starting each lane's integer sum there makes it
    /// `Σ (c − z) · q` exactly, so no zero-point correction is left. Empty otherwise.
    pub lane_bias: Vec<i32>,
}

impl Int8Activations {
    /// Quantizes `x` for `w` with one scale per block of 32, permuting blocks when `permute`
    /// (4-bit codes).
    pub fn new(x: &[f32], w: &QuantMatrix<'_>, permute: bool) -> Self {
        let mut q = Vec::with_capacity(x.len());
        let mut block_scales = Vec::with_capacity(x.len() / BLOCK);
        let mut group_corrections = Vec::with_capacity(w.groups_per_row());
        let mut natural = [0i8; BLOCK];
        let mut ordered = [0i8; BLOCK];
        for (s, e) in w.groups() {
            let full = (e - s) / BLOCK * BLOCK;
            let mut corr = 0f32;
            for b in (s..s + full).step_by(BLOCK) {
                let amax = x[b..b + BLOCK].iter().fold(0f32, |m, v| m.max(v.abs()));
                let d = amax / 127.0;
                let inv = if d > 0.0 { 1.0 / d } else { 0.0 };
                let mut sum = 0i32;
                for (n, &v) in natural.iter_mut().zip(&x[b..b + BLOCK]) {
                    *n = round_to_i8(v * inv);
                    sum += *n as i32;
                }
                if permute {
                    permute_block(&natural, &mut ordered);
                    q.extend_from_slice(&ordered);
                } else {
                    q.extend_from_slice(&natural);
                }
                block_scales.push(d);
                corr += d * sum as f32;
            }
            group_corrections.push(corr);
        }
        Self {
            q,
            block_scales,
            group_corrections,
            x: x.to_vec(),
            lane_bias: Vec::new(),
        }
    }
}

/// Blocks of 32 in one step of the VNNI tier's four-block loop.
pub const QUAD: usize = 4;

impl Int8Activations {
    /// Lays out the blocks (already in `[even 16, odd 16]` order) for the VNNI tier's
    /// four-block loop: zero blocks pad `q` to a whole number of runs of four, and each run
    /// `[e₀ o₀] [e₁ o₁] [e₂ o₂] [e₃ o₃]` becomes `[e₀ e₁ e₂ e₃ o₀ o₁ o₂ o₃]` — the order in which
    /// the low nibbles, then the high nibbles, of the runs' 64 code bytes meet them. Lane `l` of
    /// a 16-lane `i32` dot product then sums eight products of block `l / 4` alone.
    ///
    /// `zero` is the weight's zero point when it is symmetric (an integer code, `2^(b−1)`):
    /// [`Self::lane_bias`] is then filled so that the loop needs no zero-point correction.
    /// `block_scales` is padded with zeros to a multiple of 16 blocks.
    pub fn interleave_quads(&mut self, zero: Option<i32>) {
        let h = BLOCK / 2;
        let run = QUAD * BLOCK;
        self.q.resize(self.q.len().div_ceil(run) * run, 0);
        // The loop computes the factors of 16 blocks at once (zero for the padding).
        self.block_scales
            .resize(self.block_scales.len().next_multiple_of(16), 0.0);
        let mut tmp = [0i8; QUAD * BLOCK];
        for quad in self.q.chunks_exact_mut(run) {
            for (b, block) in quad.chunks_exact(BLOCK).enumerate() {
                tmp[b * h..(b + 1) * h].copy_from_slice(&block[..h]);
                tmp[run / 2 + b * h..run / 2 + (b + 1) * h].copy_from_slice(&block[h..]);
            }
            quad.copy_from_slice(&tmp);
        }
        self.lane_bias = match zero {
            Some(z) => self
                .q
                .chunks_exact(run)
                .flat_map(|quad| {
                    let (even, odd) = quad.split_at(run / 2);
                    (0..16).map(move |l| {
                        let lane = even[4 * l..4 * l + 4].iter().chain(&odd[4 * l..4 * l + 4]);
                        -z * lane.map(|&v| v as i32).sum::<i32>()
                    })
                })
                .collect(),
            None => Vec::new(),
        };
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::matrix::ScaleLayout;
    use half::f16;

    #[test]
    fn permutation_keeps_values_and_sums() {
        let x: Vec<f32> = (0..70).map(|i| i as f32).collect();
        let codes = vec![0u8; 35];
        let scales = vec![f16::ONE; 2];
        let w = QuantMatrix::new(
            4,
            [1, 70],
            ScaleLayout::PerGroup { group_len: 64 },
            &codes,
            &scales,
            None,
        )
        .unwrap();
        let p = F32Activations::new(&x, &w, true);
        assert_eq!(&p.x[..4], &[0.0, 2.0, 4.0, 6.0]);
        assert_eq!(p.x[16], 1.0);
        assert_eq!(p.x[32], 32.0);
        assert_eq!(
            &p.x[64..],
            &x[64..],
            "the short last group is not a full block"
        );
        assert_eq!(
            p.group_sums,
            vec![
                (0..64).sum::<i32>() as f32,
                64.0 + 65.0 + 66.0 + 67.0 + 68.0 + 69.0
            ]
        );
        let mut sorted = p.x.clone();
        sorted.sort_by(f32::total_cmp);
        assert_eq!(sorted, x);
    }

    #[test]
    fn rounding_is_to_nearest_even() {
        for (v, r) in [
            (0.5f32, 0i8),
            (1.5, 2),
            (2.5, 2),
            (-0.5, 0),
            (-1.5, -2),
            (126.6, 127),
            (-127.4, -127),
            (3.49, 3),
        ] {
            assert_eq!(round_to_i8(v), r, "{v}");
        }
    }

    #[test]
    fn int8_blocks_reconstruct_within_half_a_step() {
        let x: Vec<f32> = (0..64)
            .map(|i| ((i * 37 % 17) as f32 - 8.0) * 0.31)
            .collect();
        let codes = vec![0u8; 64];
        let scales = vec![f16::ONE];
        let w =
            QuantMatrix::new(8, [1, 64], ScaleLayout::PerTensor, &codes, &scales, None).unwrap();
        let a = Int8Activations::new(&x, &w, false);
        assert_eq!(a.block_scales.len(), 2);
        for (i, &v) in x.iter().enumerate() {
            let d = a.block_scales[i / BLOCK];
            assert!(
                (a.q[i] as f32 * d - v).abs() <= d / 2.0 + 1e-6,
                "column {i}"
            );
        }
        let corr: f32 = (0..2)
            .map(|b| {
                a.block_scales[b]
                    * a.q[b * 32..(b + 1) * 32]
                        .iter()
                        .map(|&q| q as f32)
                        .sum::<f32>()
            })
            .sum();
        assert!((a.group_corrections[0] - corr).abs() < 1e-4);
    }
}
