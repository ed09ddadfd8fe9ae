//! The borrowed, validated view of a packed low-bit weight that every kernel reads.
//!
//! The layout is compress-core's `PackedWeight` layout (documented there), described here without
//! depending on it so this crate stays free of burn:
//!
//! - codes: `b`-bit unsigned integers, `b ∈ 2..=8`, each row packed on its own LSB-first into
//!   `ceil(in · b / 8)` bytes (4 bits: even column in the low nibble);
//! - scales: `f16`, one per group of `g` consecutive weights of a row (the last group of a row may
//!   be shorter), row-major `[out, ceil(in / g)]`, or a single value for the whole matrix;
//! - zeros: `f16` zero points in code units (asymmetric), or none, meaning the middle code
//!   `2^(b−1)` (symmetric).
//!
//! The weight a code stands for is `w = scale · (code − zero)`.

use half::f16;

/// Errors from building a [`QuantMatrix`] or calling a kernel with mismatched buffers.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum KernelError {
    /// The bit width is outside `2..=8`.
    #[error("bit width {0} is not supported (codes are 2 to 8 bits)")]
    Bits(u8),
    /// A group size of zero was asked for.
    #[error("a group holds at least one weight (group size 0)")]
    ZeroGroup,
    /// A buffer has the wrong length for the declared shape.
    #[error("{what}: expected {expected} entries, found {found}")]
    Length {
        /// Which buffer.
        what: &'static str,
        /// Length the shape implies.
        expected: usize,
        /// Length given.
        found: usize,
    },
    /// A scale or zero point is NaN or infinite.
    #[error("{what} at index {index} is not finite")]
    NonFinite {
        /// `"scale"` or `"zero"`.
        what: &'static str,
        /// Index into the buffer.
        index: usize,
    },
    /// The requested kernel tier cannot run here (CPU feature missing) or cannot run this format.
    #[error("kernel tier {tier} cannot run {what}")]
    Unsupported {
        /// The tier asked for.
        tier: &'static str,
        /// Why: the missing CPU feature or the format.
        what: String,
    },
    /// Sizes that do not describe a valid operation (e.g. query heads not a multiple of the
    /// key/value heads).
    #[error("invalid shape: {0}")]
    Shape(String),
}

/// How scales are shared.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ScaleLayout {
    /// One scale (and zero) for the whole matrix.
    PerTensor,
    /// One scale per run of `group_len` consecutive weights of a row; `group_len ≥ in` means one
    /// per row. The last group of a row is shorter when `group_len` does not divide the row.
    PerGroup {
        /// Weights per group.
        group_len: usize,
    },
}

/// A validated view of a packed `[out, in]` weight (the layout in the [module docs](self)).
#[derive(Debug, Clone, Copy)]
pub struct QuantMatrix<'a> {
    bits: u8,
    out_features: usize,
    in_features: usize,
    layout: ScaleLayout,
    group_len: usize,
    groups_per_row: usize,
    row_bytes: usize,
    codes: &'a [u8],
    scales: &'a [f16],
    zeros: Option<&'a [f16]>,
}

impl<'a> QuantMatrix<'a> {
    /// Checks every buffer length against the shape and layout, and every scale and zero for
    /// NaN/Inf, and returns the view. `zeros = None` means symmetric (zero point `2^(b−1)`).
    pub fn new(
        bits: u8,
        [out_features, in_features]: [usize; 2],
        layout: ScaleLayout,
        codes: &'a [u8],
        scales: &'a [f16],
        zeros: Option<&'a [f16]>,
    ) -> Result<Self, KernelError> {
        let m = Self::with_lengths_checked(
            bits,
            [out_features, in_features],
            layout,
            codes,
            scales,
            zeros,
        )?;
        check_finite("scale", scales)?;
        if let Some(z) = zeros {
            check_finite("zero", z)?;
        }
        Ok(m)
    }

    /// As [`Self::new`] but without the NaN/Inf scan of scales and zeros, for owners that
    /// validated them when they were built (compress-core's `PackedWeight` does, and calls this
    /// on every forward pass, where the scan would cost as much as a small product). Lengths are
    /// still checked: the kernels' memory safety depends on them, not on finiteness.
    pub fn with_lengths_checked(
        bits: u8,
        [out_features, in_features]: [usize; 2],
        layout: ScaleLayout,
        codes: &'a [u8],
        scales: &'a [f16],
        zeros: Option<&'a [f16]>,
    ) -> Result<Self, KernelError> {
        if !(2..=8).contains(&bits) {
            return Err(KernelError::Bits(bits));
        }
        let (group_len, groups_per_row, num_scales) = match layout {
            ScaleLayout::PerTensor => (in_features.max(1), 1, 1),
            ScaleLayout::PerGroup { group_len: 0 } => return Err(KernelError::ZeroGroup),
            ScaleLayout::PerGroup { group_len } => {
                let g = group_len.min(in_features.max(1));
                let gpr = in_features.div_ceil(g);
                (g, gpr, out_features * gpr)
            }
        };
        let row_bytes = (in_features * bits as usize).div_ceil(8);
        check_len("codes", out_features * row_bytes, codes.len())?;
        check_len("scales", num_scales, scales.len())?;
        if let Some(z) = zeros {
            check_len("zeros", num_scales, z.len())?;
        }
        Ok(Self {
            bits,
            out_features,
            in_features,
            layout,
            group_len,
            groups_per_row,
            row_bytes,
            codes,
            scales,
            zeros,
        })
    }

    /// Code width in bits.
    pub fn bits(&self) -> u8 {
        self.bits
    }

    /// `[out, in]`.
    pub fn shape(&self) -> [usize; 2] {
        [self.out_features, self.in_features]
    }

    /// Output features (rows of the weight, columns of the product).
    pub fn out_features(&self) -> usize {
        self.out_features
    }

    /// Input features (the reduction length `K`).
    pub fn in_features(&self) -> usize {
        self.in_features
    }

    /// The scale layout.
    pub fn layout(&self) -> ScaleLayout {
        self.layout
    }

    /// Weights per group (the row length for per-tensor scales or groups at least a row long).
    pub fn group_len(&self) -> usize {
        self.group_len
    }

    /// Groups per row, `ceil(in / group_len)`.
    pub fn groups_per_row(&self) -> usize {
        self.groups_per_row
    }

    /// Whether zero points are stored (asymmetric).
    pub fn is_asymmetric(&self) -> bool {
        self.zeros.is_some()
    }

    /// Bytes of one packed row.
    pub fn row_bytes(&self) -> usize {
        self.row_bytes
    }

    /// The packed bytes of row `row`.
    #[inline]
    pub fn row_codes(&self, row: usize) -> &'a [u8] {
        &self.codes[row * self.row_bytes..(row + 1) * self.row_bytes]
    }

    /// The scales of row `row` (`groups_per_row` values; the single value of a per-tensor layout).
    #[inline]
    pub fn row_scales(&self, row: usize) -> &'a [f16] {
        match self.layout {
            ScaleLayout::PerTensor => self.scales,
            ScaleLayout::PerGroup { .. } => {
                &self.scales[row * self.groups_per_row..(row + 1) * self.groups_per_row]
            }
        }
    }

    /// The zero points of row `row` (asymmetric), laid out as [`Self::row_scales`].
    #[inline]
    pub fn row_zeros(&self, row: usize) -> Option<&'a [f16]> {
        let z = self.zeros?;
        Some(match self.layout {
            ScaleLayout::PerTensor => z,
            ScaleLayout::PerGroup { .. } => {
                &z[row * self.groups_per_row..(row + 1) * self.groups_per_row]
            }
        })
    }

    /// The zero point of a symmetric layout, `2^(b−1)`.
    #[inline]
    pub fn mid_code(&self) -> f32 {
        (1u32 << (self.bits - 1)) as f32
    }

    /// Bytes the kernels read per product: codes, scales and zeros.
    pub fn storage_bytes(&self) -> usize {
        self.codes.len() + 2 * self.scales.len() + 2 * self.zeros.map_or(0, <[f16]>::len)
    }

    /// `(scale, zero)` of group `group` of row `row`, as f32.
    #[inline]
    pub fn scale_zero(&self, row: usize, group: usize) -> (f32, f32) {
        let idx = match self.layout {
            ScaleLayout::PerTensor => 0,
            ScaleLayout::PerGroup { .. } => row * self.groups_per_row + group,
        };
        let zero = match self.zeros {
            Some(z) => z[idx].to_f32(),
            None => self.mid_code(),
        };
        (self.scales[idx].to_f32(), zero)
    }

    /// The code of weight `(row, col)`, read bit by bit (the reference tier's accessor).
    pub fn code(&self, row: usize, col: usize) -> u8 {
        let b = self.bits as usize;
        let src = self.row_codes(row);
        let bit = col * b;
        let (byte, off) = (bit / 8, bit % 8);
        let mut v = (src[byte] as u16) >> off;
        if off + b > 8 {
            v |= (src[byte + 1] as u16) << (8 - off);
        }
        (v & ((1u16 << b) - 1)) as u8
    }

    /// Unpacks codes `start..start + out.len()` of row `row` into one byte per code.
    pub fn unpack_range(&self, row: usize, start: usize, out: &mut [u8]) {
        let src = self.row_codes(row);
        match self.bits {
            8 => out.copy_from_slice(&src[start..start + out.len()]),
            4 => {
                for (i, o) in out.iter_mut().enumerate() {
                    let c = start + i;
                    *o = (src[c / 2] >> (4 * (c % 2))) & 0x0f;
                }
            }
            _ => {
                for (i, o) in out.iter_mut().enumerate() {
                    *o = self.code(row, start + i);
                }
            }
        }
    }

    /// The group ranges `[start, end)` of a row, in order.
    pub fn groups(&self) -> impl Iterator<Item = (usize, usize)> + '_ {
        (0..self.groups_per_row).map(move |g| {
            let s = g * self.group_len;
            (s, (s + self.group_len).min(self.in_features))
        })
    }
}

pub(crate) fn check_len(
    what: &'static str,
    expected: usize,
    found: usize,
) -> Result<(), KernelError> {
    if expected == found {
        Ok(())
    } else {
        Err(KernelError::Length {
            what,
            expected,
            found,
        })
    }
}

fn check_finite(what: &'static str, v: &[f16]) -> Result<(), KernelError> {
    match v.iter().position(|x| !x.is_finite()) {
        Some(index) => Err(KernelError::NonFinite { what, index }),
        None => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rejects_bad_buffers() {
        let codes = [0u8; 8];
        let scales = [f16::ONE; 2];
        let ok = QuantMatrix::new(
            4,
            [2, 8],
            ScaleLayout::PerGroup { group_len: 8 },
            &codes,
            &scales,
            None,
        );
        assert!(ok.is_ok());
        let short = QuantMatrix::new(
            4,
            [2, 8],
            ScaleLayout::PerGroup { group_len: 8 },
            &codes[..7],
            &scales,
            None,
        );
        assert!(matches!(
            short,
            Err(KernelError::Length { what: "codes", .. })
        ));
        let nan = [f16::NAN, f16::ONE];
        let bad = QuantMatrix::new(
            4,
            [2, 8],
            ScaleLayout::PerGroup { group_len: 8 },
            &codes,
            &nan,
            None,
        );
        assert_eq!(
            bad.unwrap_err(),
            KernelError::NonFinite {
                what: "scale",
                index: 0
            }
        );
        assert_eq!(
            QuantMatrix::new(9, [2, 8], ScaleLayout::PerTensor, &codes, &scales, None).unwrap_err(),
            KernelError::Bits(9)
        );
    }

    #[test]
    fn code_reads_every_width() {
        // Row of 3-bit codes 0..8 packed LSB-first by hand: values 0,1,..,7.
        let vals: Vec<u8> = (0..8).collect();
        let mut packed = [0u8; 3];
        for (i, &v) in vals.iter().enumerate() {
            let bit = i * 3;
            let w = (v as u16) << (bit % 8);
            packed[bit / 8] |= w as u8;
            if bit % 8 + 3 > 8 {
                packed[bit / 8 + 1] |= (w >> 8) as u8;
            }
        }
        let s = [f16::ONE];
        let m = QuantMatrix::new(3, [1, 8], ScaleLayout::PerTensor, &packed, &s, None).unwrap();
        let read: Vec<u8> = (0..8).map(|c| m.code(0, c)).collect();
        assert_eq!(read, vals);
        let mut un = [0u8; 5];
        m.unpack_range(0, 3, &mut un);
        assert_eq!(un, [3, 4, 5, 6, 7]);
    }
}
