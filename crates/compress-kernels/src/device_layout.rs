//! The packed weight as GPU kernels read it: 32-bit code words and f32 scale pairs.
//!
//! The CPU layout ([`QuantMatrix`]) packs each row into `ceil(K·b / 8)` bytes, least-significant
//! bit first, with f16 scales (and zero points) per group. GPU shading languages address 32-bit
//! words and not every device converts f16 in shaders (Mesa's lavapipe, which CI runs the wgpu
//! backend on, among them), so the device copy is
//!
//! - **words**: each row's bit stream unchanged, padded to a whole number of little-endian
//!   `u32` words, so row `r` starts at word `r · words_per_row` and code `c` of a row sits at
//!   bit `c·b` of its stream (it straddles two words only when `b` does not divide 32, i.e. 3,
//!   5, 6 and 7 bits);
//! - **params**: two f32 per group, `(s, s·z)`, so that a weight is `s·c − s·z`, one fused
//!   multiply-add (a symmetric grid stores its middle code `2^(b−1)` as `z`). Per-tensor scales
//!   are repeated once per row, which keeps the kernels' indexing the same for every layout.
//!
//! On the device this costs `b` bits per weight for the codes (plus at most 31 bits of padding
//! per row) and 64 bits per group for the parameters: 6 bits per weight for int4 with groups of
//! 32, against 32 for a dense f32 weight.

use crate::matrix::{QuantMatrix, ScaleLayout};

/// The device copy of a packed weight (see the [module docs](self)).
#[derive(Debug, Clone, PartialEq)]
pub struct DeviceLayout {
    /// Shape and format.
    pub meta: DeviceMeta,
    /// The code words, `N · words_per_row`.
    pub words: Vec<u32>,
    /// `(s, s·z)` per group, row-major: `N · groups_per_row · 2` values.
    pub params: Vec<f32>,
}

impl DeviceLayout {
    /// Repacks a validated CPU weight into the device layout.
    pub fn from_matrix(w: &QuantMatrix<'_>) -> Self {
        let [n, k] = w.shape();
        let bits = u32::from(w.bits());
        let (group_len, groups_per_row) = match w.layout() {
            ScaleLayout::PerTensor => (k.max(1), 1),
            ScaleLayout::PerGroup { .. } => (w.group_len(), w.groups_per_row()),
        };
        let words_per_row = (k * bits as usize).div_ceil(32);
        let mut words = vec![0u32; n * words_per_row];
        let mut params = Vec::with_capacity(n * groups_per_row * 2);
        for r in 0..n {
            let row = &mut words[r * words_per_row..(r + 1) * words_per_row];
            for (i, byte) in w.row_codes(r).iter().enumerate() {
                row[i / 4] |= u32::from(*byte) << (8 * (i % 4));
            }
            let scales = w.row_scales(r);
            let zeros = w.row_zeros(r);
            for g in 0..groups_per_row {
                // A per-tensor layout has one value, repeated for every row.
                let at = g.min(scales.len() - 1);
                let s = scales[at].to_f32();
                let z = zeros.map_or(w.mid_code(), |z| z[at].to_f32());
                params.push(s);
                params.push(s * z);
            }
        }
        Self {
            meta: DeviceMeta {
                bits,
                out_features: n,
                in_features: k,
                group_len,
                groups_per_row,
                words_per_row,
            },
            words,
            params,
        }
    }

    /// The code of weight `(row, col)`, read from the words as the kernels do.
    pub fn code(&self, row: usize, col: usize) -> u32 {
        let m = &self.meta;
        let bit = col * m.bits as usize;
        let at = row * m.words_per_row + bit / 32;
        let shift = (bit % 32) as u32;
        let mut v = self.words[at] >> shift;
        if shift + m.bits > 32 {
            v |= self.words[at + 1] << (32 - shift);
        }
        v & ((1u32 << m.bits) - 1)
    }

    /// The weight `(row, col)` stands for, `s·c − s·z`, computed as the kernels do.
    pub fn weight(&self, row: usize, col: usize) -> f32 {
        let p = 2 * (row * self.meta.groups_per_row + col / self.meta.group_len);
        self.params[p].mul_add(self.code(row, col) as f32, -self.params[p + 1])
    }

    /// Bytes the device copy occupies (words and parameters).
    pub fn device_bytes(&self) -> usize {
        4 * (self.words.len() + self.params.len())
    }
}

/// The shape and format of a weight already on the device (what the CubeCL kernels' `launch` needs besides the
/// buffers); built from a [`DeviceLayout`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct DeviceMeta {
    /// Code width in bits (2–8).
    pub bits: u32,
    /// Output features `N`.
    pub out_features: usize,
    /// Input features `K`.
    pub in_features: usize,
    /// Weights per group.
    pub group_len: usize,
    /// Groups per row.
    pub groups_per_row: usize,
    /// `u32` words per row.
    pub words_per_row: usize,
}

impl DeviceMeta {
    /// Number of `u32` words of the codes.
    pub fn num_words(&self) -> usize {
        self.out_features * self.words_per_row
    }

    /// Number of f32 parameters (two per group).
    pub fn num_params(&self) -> usize {
        self.out_features * self.groups_per_row * 2
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use half::f16;
    use proptest::prelude::*;

    /// Packs codes LSB-first per row, as compress-core's `pack_row` does.
    fn pack(codes: &[u8], n: usize, k: usize, bits: u8) -> Vec<u8> {
        let row_bytes = (k * bits as usize).div_ceil(8);
        let mut out = vec![0u8; n * row_bytes];
        for r in 0..n {
            for c in 0..k {
                let bit = c * bits as usize;
                let v = u16::from(codes[r * k + c]) << (bit % 8);
                out[r * row_bytes + bit / 8] |= v as u8;
                if bit % 8 + bits as usize > 8 {
                    out[r * row_bytes + bit / 8 + 1] |= (v >> 8) as u8;
                }
            }
        }
        out
    }

    proptest! {
        /// Every code and weight of the device copy equals the CPU layout's, for every width,
        /// ragged groups, per-tensor scales, and symmetric or asymmetric grids.
        #[test]
        fn device_copy_reads_back_every_weight(
            bits in 2u8..=8, n in 1usize..6, k in 1usize..90, group in 0usize..40,
            asym in any::<bool>(), seed in any::<u64>(),
        ) {
            let layout = if group == 0 {
                ScaleLayout::PerTensor
            } else {
                ScaleLayout::PerGroup { group_len: group }
            };
            let groups = match layout {
                ScaleLayout::PerTensor => 1,
                ScaleLayout::PerGroup { group_len } => n * k.div_ceil(group_len),
            };
            let mut state = seed | 1;
            let mut next = || {
                state ^= state << 13;
                state ^= state >> 7;
                state ^= state << 17;
                state
            };
            let codes: Vec<u8> = (0..n * k).map(|_| (next() % (1 << bits)) as u8).collect();
            let scales: Vec<f16> = (0..groups)
                .map(|_| f16::from_f32((next() % 1000) as f32 / 997.0 + 0.01))
                .collect();
            let zeros: Vec<f16> = (0..groups)
                .map(|_| f16::from_f32((next() % 64) as f32 / 4.0))
                .collect();
            let packed = pack(&codes, n, k, bits);
            let w = QuantMatrix::new(
                bits, [n, k], layout, &packed, &scales, asym.then_some(zeros.as_slice()),
            ).unwrap();
            let d = DeviceLayout::from_matrix(&w);
            prop_assert_eq!(d.words.len(), n * (k * bits as usize).div_ceil(32));
            for r in 0..n {
                let s = w.row_scales(r);
                let z = w.row_zeros(r);
                for c in 0..k {
                    prop_assert_eq!(d.code(r, c), u32::from(codes[r * k + c]));
                    let g = match layout {
                        ScaleLayout::PerTensor => 0,
                        ScaleLayout::PerGroup { group_len } => c / group_len,
                    };
                    let zero = z.map_or(w.mid_code(), |z| z[g].to_f32());
                    let expect = s[g].to_f32() * (codes[r * k + c] as f32 - zero);
                    // `s·c − s·z` in one fused step differs from `s·(c − z)` by the rounding
                    // of `s·z`: half an ulp of it.
                    let tol = (s[g].to_f32() * zero).abs() * f32::EPSILON + 1e-7;
                    prop_assert!((d.weight(r, c) - expect).abs() <= tol,
                        "({}, {}): {} vs {}", r, c, d.weight(r, c), expect);
                }
            }
        }
    }
}
