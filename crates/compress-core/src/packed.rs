//! The packed low-bit weight layout shared by the quantizers (compress-quant) and the kernels
//! (compress-kernels).
//!
//! A quantized `[out, in]` weight is stored as
//!
//! - **codes**: one unsigned `b`-bit integer per weight, `b ∈ 2..=8`. Each row is packed on its own,
//!   least-significant bit first, into `ceil(in · b / 8)` bytes (so a row always starts on a byte
//!   boundary). For 4 bits this is "two codes per byte, even column in the low nibble", the order
//!   GGUF's and most CPU kernels' nibble unpacking expects; for 8 bits one code per byte; for 3 bits
//!   a plain bit stream.
//! - **scales**: `f16`, one per group of `g` consecutive weights of a row (the last group of a row
//!   is shorter when `g` does not divide it, as with groups of 128 on SmolLM2's 576-wide rows),
//!   row-major `[out, ceil(in / g)]` (a single value for a per-tensor scheme).
//! - **zeros** (asymmetric schemes only): `f16` zero points *in code units*, same shape as scales.
//!   Symmetric schemes store no zeros: the zero point is the middle code `2^(b-1)`.
//!
//! The weight a code stands for is `w = scale · (code − zero)`. Symmetric 4-bit with groups of 32
//! is exactly llama.cpp's `Q4_0` block (`d = scale`, `q = code`), and symmetric 8-bit is `Q8_0` up to
//! its signed code convention, which is why the zero point of a symmetric scheme is the middle code.
//!
//! - **mask** (pruned and quantized layers only): a [`SparsityMask`] bitmap, one bit per weight;
//!   a pruned weight dequantizes to exactly 0 whatever its code (an asymmetric grid need not have
//!   0 on it).
//!
//! [`PackedWeight::bits_per_weight`] counts everything stored (codes, scales, zeros and the mask),
//! which is the number quality-versus-size comparisons in this project use.

use std::num::NonZeroUsize;

use half::f16;

use crate::sparsity::SparsityMask;

/// Errors from building or validating a packed weight.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum PackedError {
    /// The bit width is outside `2..=8`.
    #[error("bit width {0} is not supported (codes are 2 to 8 bits)")]
    Bits(u8),
    /// A group size of zero was asked for.
    #[error("a group holds at least one weight (group size 0)")]
    ZeroGroup,
    /// A buffer has the wrong length for the declared shape and scheme.
    #[error("{what}: expected {expected} entries, found {found}")]
    Length {
        /// Which buffer.
        what: &'static str,
        /// Length the shape and scheme imply.
        expected: usize,
        /// Length given.
        found: usize,
    },
    /// Zero points were given for a symmetric scheme, or are missing for an asymmetric one.
    #[error("zero points {0}")]
    Zeros(&'static str),
    /// A sparsity mask's shape differs from the weight's.
    #[error("sparsity mask is {mask:?}, the weight {weight:?}")]
    MaskShape {
        /// The mask's shape.
        mask: [usize; 2],
        /// The weight's shape.
        weight: [usize; 2],
    },
    /// A scale or zero point is NaN or infinite.
    #[error("{what} at index {index} is not finite")]
    NonFinite {
        /// `"scale"` or `"zero"`.
        what: &'static str,
        /// Index into the buffer.
        index: usize,
    },
}

/// Width of one quantized code, validated to `2..=8` bits.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Bits(u8);

impl Bits {
    /// A bit width; fails outside `2..=8`.
    pub fn new(bits: u8) -> Result<Self, PackedError> {
        if (2..=8).contains(&bits) {
            Ok(Self(bits))
        } else {
            Err(PackedError::Bits(bits))
        }
    }

    /// The number of bits.
    pub fn get(self) -> u8 {
        self.0
    }

    /// The largest code, `2^b − 1`.
    pub fn max_code(self) -> u8 {
        ((1u16 << self.0) - 1) as u8
    }

    /// The zero point of a symmetric scheme: the middle code `2^(b−1)`.
    pub fn mid_code(self) -> u8 {
        1u8 << (self.0 - 1)
    }
}

/// Which weights share one scale (and zero point).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Granularity {
    /// One scale for the whole matrix.
    PerTensor,
    /// One scale per output row.
    PerChannel,
    /// One scale per run of this many consecutive weights of a row; when it does not divide the
    /// row length, the row's last group is shorter.
    PerGroup(NonZeroUsize),
}

/// Whether a zero point is stored.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Symmetry {
    /// Zero point fixed at the middle code; only scales are stored.
    Symmetric,
    /// A zero point per group is stored (f16, in code units).
    Asymmetric,
}

/// The three independent choices of a weight-quantization layout.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct QuantScheme {
    /// Code width.
    pub bits: Bits,
    /// Scale sharing.
    pub granularity: Granularity,
    /// Zero-point handling.
    pub symmetry: Symmetry,
}

impl QuantScheme {
    /// A scheme; `group = None` means per-channel.
    pub fn new(bits: u8, group: Option<usize>, symmetry: Symmetry) -> Result<Self, PackedError> {
        let granularity = match group {
            None => Granularity::PerChannel,
            Some(g) => Granularity::PerGroup(NonZeroUsize::new(g).ok_or(PackedError::ZeroGroup)?),
        };
        Ok(Self {
            bits: Bits::new(bits)?,
            granularity,
            symmetry,
        })
    }

    /// Weights per scale along a row of `in_features` (the last group of a row is shorter when the
    /// group size does not divide the row). Per-tensor and per-channel schemes report the row
    /// length (a row never straddles two scales); at least 1.
    pub fn group_len(&self, in_features: usize) -> usize {
        match self.granularity {
            Granularity::PerTensor | Granularity::PerChannel => in_features.max(1),
            Granularity::PerGroup(g) => g.get(),
        }
    }

    /// Scales per row of `in_features`: `ceil(in / group)` (1 for per-tensor and per-channel).
    pub fn groups_per_row(&self, in_features: usize) -> usize {
        match self.granularity {
            Granularity::PerGroup(g) => in_features.div_ceil(g.get()),
            _ => 1,
        }
    }

    /// Number of scales stored for an `[out, in]` matrix.
    pub fn num_scales(&self, out_features: usize, in_features: usize) -> usize {
        match self.granularity {
            Granularity::PerTensor => 1,
            _ => out_features * self.groups_per_row(in_features),
        }
    }

    /// Bytes of one packed row of `in_features` codes.
    pub fn row_bytes(&self, in_features: usize) -> usize {
        (in_features * self.bits.get() as usize).div_ceil(8)
    }
}

/// A quantized `[out, in]` weight in the packed layout described in the [module docs](self).
#[derive(Debug, Clone, PartialEq)]
pub struct PackedWeight {
    scheme: QuantScheme,
    out_features: usize,
    in_features: usize,
    codes: Vec<u8>,
    scales: Vec<f16>,
    zeros: Option<Vec<f16>>,
    mask: Option<SparsityMask>,
}

impl PackedWeight {
    /// Packs unpacked codes (one `u8` per weight, row-major `[out, in]`, each `≤ 2^b − 1`) with
    /// their scales and zeros, validating every length against the shape and scheme.
    pub fn from_codes(
        scheme: QuantScheme,
        out_features: usize,
        in_features: usize,
        codes: &[u8],
        scales: Vec<f16>,
        zeros: Option<Vec<f16>>,
    ) -> Result<Self, PackedError> {
        check_len("codes", out_features * in_features, codes.len())?;
        let max = scheme.bits.max_code();
        if let Some(&bad) = codes.iter().find(|&&c| c > max) {
            return Err(PackedError::Length {
                what: "code value (must fit the bit width)",
                expected: max as usize,
                found: bad as usize,
            });
        }
        let row_bytes = scheme.row_bytes(in_features);
        let mut packed = vec![0u8; out_features * row_bytes];
        if in_features > 0 {
            for (row, dst) in codes
                .chunks_exact(in_features)
                .zip(packed.chunks_exact_mut(row_bytes))
            {
                pack_row(row, scheme.bits, dst);
            }
        }
        Self::from_packed(scheme, out_features, in_features, packed, scales, zeros)
    }

    /// A packed weight from already-packed code bytes (e.g. read from a file), validated.
    pub fn from_packed(
        scheme: QuantScheme,
        out_features: usize,
        in_features: usize,
        codes: Vec<u8>,
        scales: Vec<f16>,
        zeros: Option<Vec<f16>>,
    ) -> Result<Self, PackedError> {
        check_len(
            "packed codes",
            out_features * scheme.row_bytes(in_features),
            codes.len(),
        )?;
        let n_scales = scheme.num_scales(out_features, in_features);
        check_len("scales", n_scales, scales.len())?;
        check_finite("scale", &scales)?;
        match (scheme.symmetry, &zeros) {
            (Symmetry::Symmetric, Some(_)) => {
                return Err(PackedError::Zeros("given for a symmetric scheme"))
            }
            (Symmetry::Asymmetric, None) => {
                return Err(PackedError::Zeros("missing for an asymmetric scheme"))
            }
            (Symmetry::Asymmetric, Some(z)) => {
                check_len("zeros", n_scales, z.len())?;
                check_finite("zero", z)?;
            }
            (Symmetry::Symmetric, None) => {}
        }
        Ok(Self {
            scheme,
            out_features,
            in_features,
            codes,
            scales,
            zeros,
            mask: None,
        })
    }

    /// The same codes with a sparsity mask: pruned weights dequantize to 0. Replaces any mask
    /// already attached; fails if the shapes differ.
    pub fn with_mask(mut self, mask: SparsityMask) -> Result<Self, PackedError> {
        if mask.shape() != self.shape() {
            return Err(PackedError::MaskShape {
                mask: mask.shape(),
                weight: self.shape(),
            });
        }
        self.mask = Some(mask);
        Ok(self)
    }

    /// The sparsity mask, if the weight is pruned as well as quantized.
    pub fn mask(&self) -> Option<&SparsityMask> {
        self.mask.as_ref()
    }

    /// The layout's scheme.
    pub fn scheme(&self) -> QuantScheme {
        self.scheme
    }

    /// `[out_features, in_features]`.
    pub fn shape(&self) -> [usize; 2] {
        [self.out_features, self.in_features]
    }

    /// The packed code bytes, `out · row_bytes` long.
    pub fn packed_codes(&self) -> &[u8] {
        &self.codes
    }

    /// The scales, row-major `[out, groups_per_row]` (one value per tensor for per-tensor).
    pub fn scales(&self) -> &[f16] {
        &self.scales
    }

    /// The zero points in code units (asymmetric schemes only).
    pub fn zeros(&self) -> Option<&[f16]> {
        self.zeros.as_deref()
    }

    /// Unpacks row `row` into one code per weight.
    pub fn unpack_row(&self, row: usize, out: &mut [u8]) {
        let rb = self.scheme.row_bytes(self.in_features);
        unpack_row(
            &self.codes[row * rb..(row + 1) * rb],
            self.scheme.bits,
            &mut out[..self.in_features],
        );
    }

    /// All codes, one `u8` per weight, row-major.
    pub fn unpack_codes(&self) -> Vec<u8> {
        let mut out = vec![0u8; self.out_features * self.in_features];
        if self.in_features > 0 {
            for (r, row) in out.chunks_exact_mut(self.in_features).enumerate() {
                self.unpack_row(r, row);
            }
        }
        out
    }

    /// `(scale, zero)` of the group holding `(row, col)`.
    pub fn scale_zero(&self, row: usize, col: usize) -> (f32, f32) {
        let idx = match self.scheme.granularity {
            Granularity::PerTensor => 0,
            _ => {
                let g = self.scheme.group_len(self.in_features);
                row * self.groups_per_row() + col / g
            }
        };
        let zero = match &self.zeros {
            Some(z) => z[idx].to_f32(),
            None => self.scheme.bits.mid_code() as f32,
        };
        (self.scales[idx].to_f32(), zero)
    }

    /// Groups (scales) per row, `ceil(in / group)`; 1 for per-tensor and per-channel.
    pub fn groups_per_row(&self) -> usize {
        self.scheme.groups_per_row(self.in_features)
    }

    /// The dense f32 weight the codes stand for, row-major `[out, in]`.
    pub fn dequantize(&self) -> Vec<f32> {
        let mut out = vec![0f32; self.out_features * self.in_features];
        let mut codes = vec![0u8; self.in_features];
        let g = self.scheme.group_len(self.in_features);
        for r in 0..self.out_features {
            self.unpack_row(r, &mut codes);
            let dst = &mut out[r * self.in_features..(r + 1) * self.in_features];
            for (gi, (dchunk, cchunk)) in dst.chunks_mut(g).zip(codes.chunks(g)).enumerate() {
                let (s, z) = self.scale_zero(r, gi * g);
                for (d, &c) in dchunk.iter_mut().zip(cchunk) {
                    *d = s * (c as f32 - z);
                }
            }
        }
        if let Some(m) = &self.mask {
            m.apply(&mut out);
        }
        out
    }

    /// Multiplies every scale of row `r` by the `r`-th factor (rounding to f16), which multiplies
    /// the row's dequantized weights by it; codes and zero points are unchanged. Returns false,
    /// changing nothing, when that is not exact to f16 precision: a per-tensor scheme (one scale
    /// for all rows), or a product that would leave f16's normal range (subnormal scales lose
    /// relative precision; overflow would be infinite).
    pub fn scale_rows(&mut self, factors: &[f32]) -> bool {
        if self.scheme.granularity == Granularity::PerTensor || factors.len() != self.out_features {
            return false;
        }
        let gpr = self.groups_per_row().max(1);
        let scaled: Vec<f16> = self
            .scales
            .iter()
            .enumerate()
            .map(|(i, s)| f16::from_f32(s.to_f32() * factors[i / gpr]))
            .collect();
        let exact = scaled
            .iter()
            .zip(&self.scales)
            .all(|(n, o)| n.is_finite() && (n.is_normal() || o.to_f32() == 0.0));
        if exact {
            self.scales = scaled;
        }
        exact
    }

    /// Bytes stored: packed codes + 2 per scale + 2 per zero + the mask's bitmap.
    pub fn storage_bytes(&self) -> usize {
        self.codes.len()
            + 2 * self.scales.len()
            + 2 * self.zeros.as_ref().map_or(0, Vec::len)
            + self.mask.as_ref().map_or(0, SparsityMask::storage_bytes)
    }

    /// Stored bits per weight, counting scales and zeros (e.g. 4.5 for symmetric 4-bit, group 32).
    pub fn bits_per_weight(&self) -> f64 {
        let n = (self.out_features * self.in_features).max(1);
        8.0 * self.storage_bytes() as f64 / n as f64
    }
}

fn check_len(what: &'static str, expected: usize, found: usize) -> Result<(), PackedError> {
    if expected == found {
        Ok(())
    } else {
        Err(PackedError::Length {
            what,
            expected,
            found,
        })
    }
}

fn check_finite(what: &'static str, v: &[f16]) -> Result<(), PackedError> {
    match v.iter().position(|x| !x.is_finite()) {
        Some(index) => Err(PackedError::NonFinite { what, index }),
        None => Ok(()),
    }
}

/// Packs `codes` (each `< 2^bits`) LSB-first into `dst` (`ceil(len·bits/8)` bytes, zeroed).
pub fn pack_row(codes: &[u8], bits: Bits, dst: &mut [u8]) {
    let b = bits.get() as usize;
    match b {
        8 => dst[..codes.len()].copy_from_slice(codes),
        4 => {
            for (d, pair) in dst.iter_mut().zip(codes.chunks(2)) {
                *d = pair[0] | pair.get(1).map_or(0, |&hi| hi << 4);
            }
        }
        _ => {
            let mut bit = 0usize;
            for &c in codes {
                let (byte, off) = (bit / 8, bit % 8);
                let v = (c as u16) << off;
                dst[byte] |= v as u8;
                if off + b > 8 {
                    dst[byte + 1] |= (v >> 8) as u8;
                }
                bit += b;
            }
        }
    }
}

/// Unpacks `out.len()` codes of width `bits` from `src` (the inverse of [`pack_row`]).
pub fn unpack_row(src: &[u8], bits: Bits, out: &mut [u8]) {
    let b = bits.get() as usize;
    match b {
        8 => out.copy_from_slice(&src[..out.len()]),
        4 => {
            for (i, o) in out.iter_mut().enumerate() {
                *o = (src[i / 2] >> (4 * (i % 2))) & 0x0f;
            }
        }
        _ => {
            let mask = bits.max_code() as u16;
            for (i, o) in out.iter_mut().enumerate() {
                let bit = i * b;
                let (byte, off) = (bit / 8, bit % 8);
                let lo = src[byte] as u16;
                let hi = if off + b > 8 { src[byte + 1] as u16 } else { 0 };
                *o = (((lo | (hi << 8)) >> off) & mask) as u8;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn four_bit_layout_is_low_nibble_first() {
        let bits = Bits::new(4).unwrap();
        let mut dst = [0u8; 2];
        pack_row(&[0x1, 0xf, 0x7], bits, &mut dst);
        assert_eq!(dst, [0xf1, 0x07]);
    }

    #[test]
    fn three_bit_stream_crosses_bytes() {
        let bits = Bits::new(3).unwrap();
        // codes 5,3,7 -> bits 101 | 011 | 111 LSB first = 0b11_011_101, 0b0000000_1
        let mut dst = [0u8; 2];
        pack_row(&[5, 3, 7], bits, &mut dst);
        assert_eq!(dst, [0b1101_1101, 0b0000_0001]);
        let mut back = [0u8; 3];
        unpack_row(&dst, bits, &mut back);
        assert_eq!(back, [5, 3, 7]);
    }

    #[test]
    fn bits_per_weight_counts_scales_and_zeros() {
        let s = QuantScheme::new(4, Some(32), Symmetry::Symmetric).unwrap();
        let w = PackedWeight::from_codes(s, 2, 64, &[0; 128], vec![f16::ONE; 4], None).unwrap();
        // 4 bits + 16 bits / 32 weights = 4.5, the bits/weight of llama.cpp's Q4_0.
        assert_eq!(w.bits_per_weight(), 4.5);
        let a = QuantScheme::new(4, Some(32), Symmetry::Asymmetric).unwrap();
        let w = PackedWeight::from_codes(
            a,
            2,
            64,
            &[0; 128],
            vec![f16::ONE; 4],
            Some(vec![f16::ZERO; 4]),
        )
        .unwrap();
        assert_eq!(w.bits_per_weight(), 5.0);
    }

    #[test]
    fn invalid_inputs_are_rejected_with_the_field() {
        assert_eq!(Bits::new(1), Err(PackedError::Bits(1)));
        assert_eq!(Bits::new(9), Err(PackedError::Bits(9)));
        assert_eq!(
            QuantScheme::new(4, Some(0), Symmetry::Symmetric),
            Err(PackedError::ZeroGroup)
        );
        let s = QuantScheme::new(4, None, Symmetry::Symmetric).unwrap();
        let e = PackedWeight::from_codes(s, 2, 4, &[0; 8], vec![f16::ONE; 3], None).unwrap_err();
        assert!(matches!(e, PackedError::Length { what: "scales", .. }));
        let e = PackedWeight::from_codes(s, 2, 4, &[16; 8], vec![f16::ONE; 2], None).unwrap_err();
        assert!(matches!(e, PackedError::Length { .. }));
        let e = PackedWeight::from_codes(s, 1, 4, &[0; 4], vec![f16::NAN], None).unwrap_err();
        assert_eq!(
            e,
            PackedError::NonFinite {
                what: "scale",
                index: 0
            }
        );
        let e = PackedWeight::from_codes(s, 1, 4, &[0; 4], vec![f16::ONE], Some(vec![f16::ONE]))
            .unwrap_err();
        assert!(matches!(e, PackedError::Zeros(_)));
    }

    #[test]
    fn dequantize_uses_group_scale_and_zero() {
        let s = QuantScheme::new(2, Some(2), Symmetry::Asymmetric).unwrap();
        let codes = [0u8, 3, 1, 2];
        let scales = vec![f16::from_f32(0.5), f16::from_f32(2.0)];
        let zeros = Some(vec![f16::from_f32(1.0), f16::from_f32(1.5)]);
        let w = PackedWeight::from_codes(s, 1, 4, &codes, scales, zeros).unwrap();
        assert_eq!(w.dequantize(), vec![-0.5, 1.0, -1.0, 1.0]);
        let sym = QuantScheme::new(8, None, Symmetry::Symmetric).unwrap();
        let w = PackedWeight::from_codes(sym, 1, 2, &[128, 130], vec![f16::from_f32(0.25)], None)
            .unwrap();
        assert_eq!(w.dequantize(), vec![0.0, 0.5]);
    }

    #[test]
    fn scale_rows_refuses_what_f16_cannot_hold() {
        let s = QuantScheme::new(4, Some(2), Symmetry::Symmetric).unwrap();
        let scales = vec![f16::from_f32(0.5), f16::from_f32(0.25), f16::ONE, f16::ONE];
        let mut w =
            PackedWeight::from_codes(s, 2, 4, &[8, 9, 10, 11, 8, 9, 10, 11], scales, None).unwrap();
        assert!(w.scale_rows(&[2.0, 0.5]));
        assert_eq!(w.dequantize(), vec![0.0, 1.0, 1.0, 1.5, 0.0, 0.5, 1.0, 1.5]);
        let before = w.clone();
        // 1e-6 · 0.5 is subnormal in f16: refused, nothing changed.
        assert!(!w.scale_rows(&[1e-6, 1.0]));
        assert_eq!(w, before);
    }

    fn scheme_strategy() -> impl Strategy<Value = (u8, usize, usize, usize)> {
        // (bits, group, groups per row, rows)
        (
            2u8..=8,
            prop::sample::select(vec![1usize, 2, 3, 8, 16, 32, 64, 128]),
            1usize..5,
            1usize..4,
        )
    }

    proptest! {
        #[test]
        fn pack_unpack_round_trips((bits, group, gpr, rows) in scheme_strategy(), tail in 0usize..8, seed in any::<u64>()) {
            let b = Bits::new(bits).unwrap();
            // A ragged last group when `tail` is not a multiple of the group.
            let cols = group * gpr + tail % group;
            let n_scales = rows * cols.div_ceil(group);
            let mut x = seed | 1;
            let codes: Vec<u8> = (0..rows * cols).map(|_| {
                x ^= x << 13; x ^= x >> 7; x ^= x << 17;
                (x as u8) & b.max_code()
            }).collect();
            let s = QuantScheme::new(bits, Some(group), Symmetry::Symmetric).unwrap();
            let scales: Vec<f16> = (0..n_scales).map(|i| f16::from_f32(i as f32)).collect();
            let w = PackedWeight::from_codes(s, rows, cols, &codes, scales, None).unwrap();
            prop_assert_eq!(w.packed_codes().len(), rows * (cols * bits as usize).div_ceil(8));
            prop_assert_eq!(w.unpack_codes(), codes.clone());
            // Each weight dequantizes with its own group's scale.
            let deq = w.dequantize();
            for (i, &c) in codes.iter().enumerate() {
                let (r, col) = (i / cols, i % cols);
                let scale = (r * cols.div_ceil(group) + col / group) as f32;
                let want = scale * (c as f32 - b.mid_code() as f32);
                prop_assert_eq!(deq[i], want);
            }
            // Re-wrapping the packed bytes gives the same weight.
            let again = PackedWeight::from_packed(s, rows, cols, w.packed_codes().to_vec(), w.scales().to_vec(), None).unwrap();
            prop_assert_eq!(again, w);
        }
    }
}
