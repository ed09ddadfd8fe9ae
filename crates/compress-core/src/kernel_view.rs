//! The view of a [`PackedWeight`] that compress-kernels' fused matmul reads, and the kernel copy
//! of a pruned symmetric weight's codes.

use crate::packed::{pack_row, Granularity, PackedWeight};

impl PackedWeight {
    /// The view compress-kernels' fused matmul reads (codes, scales and zeros are borrowed, not
    /// copied), or `None` for a pruned layer: its pruned weights must read as 0 whatever their
    /// codes (see [`Self::masked_kernel_codes`]).
    pub fn kernel_matrix(&self) -> Option<compress_kernels::QuantMatrix<'_>> {
        if self.mask().is_some() {
            return None;
        }
        self.kernel_matrix_with_codes(self.packed_codes())
    }

    /// The kernels' view of this weight's scales and zeros over `codes` (packed like
    /// [`Self::packed_codes`]), e.g. those of [`Self::masked_kernel_codes`]; `None` when their
    /// length does not fit the shape.
    pub fn kernel_matrix_with_codes<'a>(
        &'a self,
        codes: &'a [u8],
    ) -> Option<compress_kernels::QuantMatrix<'a>> {
        let layout = match self.scheme().granularity {
            Granularity::PerTensor => compress_kernels::ScaleLayout::PerTensor,
            Granularity::PerChannel => compress_kernels::ScaleLayout::PerGroup {
                group_len: self.shape()[1].max(1),
            },
            Granularity::PerGroup(g) => {
                compress_kernels::ScaleLayout::PerGroup { group_len: g.get() }
            }
        };
        // Scales and zeros were checked finite, and every buffer against the same shape and
        // scheme, when `self` was built; only the (cheap) length checks run again.
        compress_kernels::QuantMatrix::with_lengths_checked(
            self.scheme().bits.get(),
            self.shape(),
            layout,
            codes,
            self.scales(),
            self.zeros(),
        )
        .ok()
    }

    /// For a pruned symmetric weight: the packed codes with every pruned weight's code set to the
    /// zero point `2^(b−1)`, so that it dequantizes to exactly 0 and the kernels need no mask.
    /// `None` when the weight is not pruned, or is asymmetric (a fractional zero point has no
    /// code that reads as exactly 0).
    pub fn masked_kernel_codes(&self) -> Option<Vec<u8>> {
        let mask = self.mask()?;
        if self.zeros().is_some() {
            return None;
        }
        let scheme = self.scheme();
        let [out_features, in_features] = self.shape();
        let (bits, mid) = (scheme.bits, scheme.bits.mid_code());
        let rb = scheme.row_bytes(in_features);
        let mut out = vec![0u8; self.packed_codes().len()];
        let mut row = vec![0u8; in_features];
        for r in 0..out_features {
            self.unpack_row(r, &mut row);
            for (c, code) in row.iter_mut().enumerate() {
                if !mask.is_kept(r, c) {
                    *code = mid;
                }
            }
            pack_row(&row, bits, &mut out[r * rb..(r + 1) * rb]);
        }
        Some(out)
    }

    /// For a 4-bit weight pruned to a 2:4 pattern (every 4 consecutive weights of a row keep at
    /// most 2): the compact layout that stores only the kept codes and their positions
    /// ([`compress_kernels::sparse24`], 3 bits per weight plus scales), which symmetric and
    /// asymmetric grids alike run on. `None` for other weights, and where the layout cannot
    /// hold this one (rows or groups not a multiple of 8; an asymmetric block keeping fewer
    /// than 2).
    pub fn sparse24(&self) -> Option<compress_kernels::sparse24::Sparse24> {
        let mask = self.mask()?;
        if self.scheme().bits.get() != 4 || !mask.satisfies_n_m(2, 4) {
            return None;
        }
        let view = self.kernel_matrix_with_codes(self.packed_codes())?;
        compress_kernels::sparse24::Sparse24::from_quant(&view, |r, c| mask.is_kept(r, c)).ok()
    }
}

#[cfg(test)]
mod tests {
    use half::f16;

    use crate::packed::{PackedWeight, QuantScheme, Symmetry};
    use crate::sparsity::SparsityMask;

    #[test]
    fn masked_kernel_codes_read_as_zero_where_pruned() {
        // 3-bit symmetric (zero point 4), 2 × 5, every code 7 (weight 3·s); prune three weights.
        let s = QuantScheme::new(3, None, Symmetry::Symmetric).unwrap();
        let kept = [
            true, false, true, true, false, false, true, true, true, true,
        ];
        let w =
            PackedWeight::from_codes(s, 2, 5, &[7; 10], vec![f16::ONE, f16::from_f32(0.5)], None)
                .unwrap()
                .with_mask(SparsityMask::from_kept(2, 5, &kept))
                .unwrap();
        let codes = w.masked_kernel_codes().unwrap();
        let m = w.kernel_matrix_with_codes(&codes).unwrap();
        let mut row = [0f32; 5];
        let mut all = Vec::new();
        for r in 0..2 {
            compress_kernels::reference::dequantize_row(&m, r, &mut row);
            all.extend_from_slice(&row);
        }
        assert_eq!(all, w.dequantize());
        assert!(
            w.kernel_matrix().is_none(),
            "the mask is not in the plain view"
        );
        let a = QuantScheme::new(3, None, Symmetry::Asymmetric).unwrap();
        let wa = PackedWeight::from_codes(
            a,
            2,
            5,
            &[7; 10],
            vec![f16::ONE; 2],
            Some(vec![f16::from_f32(3.5); 2]),
        )
        .unwrap()
        .with_mask(SparsityMask::from_kept(2, 5, &kept))
        .unwrap();
        assert!(
            wa.masked_kernel_codes().is_none(),
            "no code reads as 0 at zero point 3.5"
        );
    }
}
