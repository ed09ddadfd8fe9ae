//! 2:4-sparse 4-bit weights: only the kept codes and their positions are stored and read.
//!
//! A 2:4 pattern (NVIDIA's semi-structured sparsity, Mishra et al. 2021, arXiv:2104.08378)
//! keeps 2 of every 4 consecutive weights of a row. The dense packed layout still spends 4 bits
//! on each pruned weight (plus a mask bit); this one keeps, per block of 4 columns,
//!
//! - one **code byte**: the first kept weight's code in the low nibble, the second's in the high
//!   nibble (4-bit codes, as in the dense layout);
//! - one **index nibble**: the first kept column's offset in the block (0–3) in bits 0–1, the
//!   second's in bits 2–3; two blocks per byte, the even block in the low nibble.
//!
//! That is 12 bits per 4 weights — 3 bits per weight plus the f16 group scales (and zeros) —
//! against 4 + 1 for the dense codes and the mask. Scales and zero points are the dense layout's
//! (one per `group_len` columns of the dense row), so `w = s · (c − z)` as everywhere else, and
//! pruned weights are exactly 0.
//!
//! Products: the reference (f64 sums over the dequantized row), a portable tier (any group that
//! is a multiple of 8 columns), and an AVX-512 tier for groups that are multiples of 32: per 32
//! columns it expands 16 codes and 16 positions in registers, gathers the 16 kept activations
//! from two vectors with one two-source permute (`vpermt2ps`), and fuses `s·(c − z)·x` (rows
//! and groups must be multiples of 32 columns; others run the portable loop). The GEMM
//! path (prefill) dequantizes tiles of rows (zeros where pruned) for faer, as the dense layout's.
//!
//! ```
//! use compress_kernels::sparse24::{self, Sparse24};
//! use compress_kernels::{QuantMatrix, ScaleLayout};
//! use half::f16;
//!
//! // One row of 8 symmetric 4-bit codes (zero point 8), scale 0.5: weights
//! // [0.5, 1, 1.5, 2, -0.5, -1, -1.5, -2]; keep columns 0, 3 of the first block, 5, 6 of the second.
//! let codes = [0xa9, 0xcb, 0x67, 0x45]; // codes 9, 10, 11, 12, 7, 6, 5, 4
//! let scale = [f16::from_f32(0.5)];
//! let w = QuantMatrix::new(4, [1, 8], ScaleLayout::PerTensor, &codes, &scale, None)?;
//! let s = Sparse24::from_quant(&w, |_, c| [0, 3, 5, 6].contains(&c))?;
//! let mut y = [0.0];
//! sparse24::matmul(&[1.0; 8], 1, &s, &mut y)?;
//! assert_eq!(y[0], 0.5 + 2.0 - 1.0 - 1.5);
//! # Ok::<(), compress_kernels::KernelError>(())
//! ```

use half::f16;

use crate::matmul::gemm_tiles;
use crate::matrix::{check_len, KernelError, QuantMatrix};
use crate::tier::Tier;

/// A validated, owned 2:4-sparse 4-bit `[out, in]` matrix (the layout in the module docs).
#[derive(Debug, Clone, PartialEq)]
pub struct Sparse24 {
    out_features: usize,
    in_features: usize,
    group_len: usize,
    groups_per_row: usize,
    codes: Vec<u8>,
    index: Vec<u8>,
    scales: Vec<f16>,
    zeros: Option<Vec<f16>>,
}

impl Sparse24 {
    /// Converts a dense 4-bit matrix whose kept weights (`kept(row, col)`) follow a 2:4 pattern.
    ///
    /// Fails when `w` is not 4-bit, when `in` or the group length is not a multiple of 8, or
    /// when a block of 4 does not keep exactly 2 weights — except that a block keeping fewer
    /// than 2 of a *symmetric* matrix is padded with zero codes (`2³`, exactly 0); an asymmetric
    /// grid has no exact zero to pad with.
    pub fn from_quant(
        w: &QuantMatrix<'_>,
        kept: impl Fn(usize, usize) -> bool,
    ) -> Result<Self, KernelError> {
        let [n, k] = w.shape();
        let bad = |what: String| KernelError::Unsupported {
            tier: "sparse24",
            what,
        };
        if w.bits() != 4 {
            return Err(bad(format!(
                "{}-bit codes (the 2:4 layout is 4-bit)",
                w.bits()
            )));
        }
        let g = w.group_len();
        if k % 8 != 0 || !g.is_multiple_of(8) {
            return Err(bad(format!(
                "rows of {k} with groups of {g} (both must be multiples of 8)"
            )));
        }
        let mut codes = Vec::with_capacity(n * k / 4);
        let mut index = Vec::with_capacity(n * k / 8);
        for r in 0..n {
            for b8 in 0..k / 8 {
                let mut ib = 0u8;
                for half in 0..2 {
                    let c0 = b8 * 8 + half * 4;
                    let keep: [bool; 4] = std::array::from_fn(|i| kept(r, c0 + i));
                    let count = keep.iter().filter(|&&k| k).count();
                    if count > 2 {
                        return Err(bad(format!(
                            "row {r}, columns {c0}..{}: {count} kept weights in a block of 4",
                            c0 + 4
                        )));
                    }
                    if count < 2 && w.is_asymmetric() {
                        return Err(bad(format!(
                            "row {r}, columns {c0}..{}: fewer than 2 kept weights in an \
                             asymmetric matrix (no exact zero code to pad with)",
                            c0 + 4
                        )));
                    }
                    // The kept offsets in order, padded with the first unkept ones (written as
                    // the zero code 8, exactly 0 in a symmetric grid).
                    let mut pad = 2 - count;
                    let mut slots = [0usize; 2];
                    let mut n_slots = 0;
                    for (i, &k) in keep.iter().enumerate() {
                        if k || (pad > 0 && {
                            pad -= 1;
                            true
                        }) {
                            slots[n_slots] = i;
                            n_slots += 1;
                        }
                    }
                    let mut byte = 0u8;
                    for (s, &i) in slots.iter().enumerate() {
                        let code = if keep[i] { w.code(r, c0 + i) } else { 8 };
                        byte |= code << (4 * s);
                        ib |= (i as u8) << (4 * half + 2 * s);
                    }
                    codes.push(byte);
                }
                index.push(ib);
            }
        }
        let scales: Vec<f16> = (0..n)
            .flat_map(|r| w.row_scales(r).iter().copied())
            .collect();
        let zeros = w.is_asymmetric().then(|| {
            (0..n)
                .flat_map(|r| w.row_zeros(r).unwrap_or(&[]).iter().copied())
                .collect()
        });
        // Per-tensor layouts give their one value per row here, so every layout reads
        // `row * groups_per_row + group`.
        check_len("sparse24 scales", n * w.groups_per_row(), scales.len())?;
        Ok(Self {
            out_features: n,
            in_features: k,
            group_len: g,
            groups_per_row: w.groups_per_row(),
            codes,
            index,
            scales,
            zeros,
        })
    }

    /// `[out, in]` of the dense matrix.
    pub fn shape(&self) -> [usize; 2] {
        [self.out_features, self.in_features]
    }

    /// Dense columns per scale group.
    pub fn group_len(&self) -> usize {
        self.group_len
    }

    /// Bytes the kernels read per product: kept codes, positions, scales and zeros.
    pub fn storage_bytes(&self) -> usize {
        self.codes.len()
            + self.index.len()
            + 2 * self.scales.len()
            + 2 * self.zeros.as_ref().map_or(0, Vec::len)
    }

    /// Stored bits per dense weight (codes, positions, scales, zeros).
    pub fn bits_per_weight(&self) -> f64 {
        8.0 * self.storage_bytes() as f64 / (self.out_features * self.in_features).max(1) as f64
    }

    /// The kept weights of row `r` in column order: `f(group, dense column, code, scale, zero)`.
    #[inline]
    fn for_kept(&self, r: usize, mut f: impl FnMut(usize, usize, u8, f32, f32)) {
        let (codes, index, scales, zeros) = self.row_parts(r);
        let per_group = self.group_len / 8;
        for (gi, s) in scales.iter().enumerate() {
            let (s, z) = (s.to_f32(), zeros.map_or(8.0, |z| z[gi].to_f32()));
            let end = ((gi + 1) * per_group).min(index.len());
            for b8 in gi * per_group..end {
                let (ib, c0, c1) = (index[b8], codes[2 * b8], codes[2 * b8 + 1]);
                let base = 8 * b8;
                f(gi, base + (ib & 3) as usize, c0 & 15, s, z);
                f(gi, base + (ib >> 2 & 3) as usize, c0 >> 4, s, z);
                f(gi, base + 4 + (ib >> 4 & 3) as usize, c1 & 15, s, z);
                f(gi, base + 4 + (ib >> 6) as usize, c1 >> 4, s, z);
            }
        }
    }

    /// Dequantizes row `r` into `out` (`in` values; pruned weights 0).
    pub fn dequantize_row(&self, r: usize, out: &mut [f32]) {
        out.fill(0.0);
        let out = &mut out[..self.in_features];
        self.for_kept(r, |_, c, q, s, z| out[c] = s * (q as f32 - z));
    }

    /// Whether the AVX-512 loops cover every column: rows and groups multiples of 32 (so no
    /// group, the last one included, ends inside a 32-column step).
    fn simd_shape(&self) -> bool {
        self.group_len.is_multiple_of(32) && self.in_features.is_multiple_of(32)
    }

    /// The tier [`matmul`] runs: AVX-512 when the CPU has it and rows and groups are multiples
    /// of 32 columns, else the portable loop.
    pub fn tier(&self) -> Tier {
        if Tier::Avx512.is_available() && self.simd_shape() {
            Tier::Avx512
        } else {
            Tier::Portable
        }
    }

    /// `Σ_kept s·(c − z)·x` for row `r` (the portable tier): per group `s·(Σ c·x − z·Σ x)`.
    fn row_dot_portable(&self, r: usize, x: &[f32]) -> f32 {
        let x = &x[..self.in_features];
        // (group, scale, zero, Σ c·x, Σ x) of the group being summed.
        let mut open: Option<(usize, f32, f32, f32, f32)> = None;
        let mut total = 0f32;
        self.for_kept(r, |gi, c, q, s, z| {
            let acc = match open {
                Some(ref mut a) if a.0 == gi => a,
                _ => {
                    if let Some((_, ps, pz, dc, dx)) = open {
                        total += ps * (dc - pz * dx);
                    }
                    open.insert((gi, s, z, 0.0, 0.0))
                }
            };
            acc.3 += q as f32 * x[c];
            acc.4 += x[c];
        });
        if let Some((_, s, z, dc, dx)) = open {
            total += s * (dc - z * dx);
        }
        total
    }
}

/// `Y = X · Wᵀ` for a 2:4-sparse `w` on [`Sparse24::tier`]; returns the tier that ran.
pub fn matmul(x: &[f32], m: usize, w: &Sparse24, out: &mut [f32]) -> Result<Tier, KernelError> {
    let tier = w.tier();
    matmul_with(tier, x, m, w, out)?;
    Ok(tier)
}

/// `Y = X · Wᵀ` on a chosen tier: [`Tier::Reference`], [`Tier::Portable`] or [`Tier::Avx512`]
/// (CPU with AVX-512F, rows and groups multiples of 32 columns); others are refused.
pub fn matmul_with(
    tier: Tier,
    x: &[f32],
    m: usize,
    w: &Sparse24,
    out: &mut [f32],
) -> Result<(), KernelError> {
    let [n, k] = w.shape();
    check_len("activations (m × in_features)", m * k, x.len())?;
    check_len("output (m × out_features)", m * n, out.len())?;
    let refuse = |what: &str| {
        Err(KernelError::Unsupported {
            tier: tier.name(),
            what: what.into(),
        })
    };
    match tier {
        Tier::Reference | Tier::Portable => {}
        Tier::Avx512 if !tier.is_available() => return refuse("this CPU (no AVX-512F)"),
        Tier::Avx512 if !w.simd_shape() => {
            return refuse("2:4-sparse rows or groups that are not multiples of 32 columns")
        }
        Tier::Avx512 => {}
        _ => return refuse("the 2:4-sparse layout"),
    }
    if m == 0 || n == 0 {
        return Ok(());
    }
    if tier == Tier::Reference {
        let mut row = vec![0f32; k];
        for r in 0..n {
            w.dequantize_row(r, &mut row);
            for i in 0..m {
                let xr = &x[i * k..(i + 1) * k];
                let acc: f64 = xr
                    .iter()
                    .zip(&row)
                    .map(|(&a, &b)| f64::from(a) * f64::from(b))
                    .sum();
                out[i * n + r] = acc as f32;
            }
        }
        return Ok(());
    }
    if m >= crate::matmul::GEMM_MIN_ROWS {
        gemm_tiles(
            x,
            m,
            [n, k],
            |r, dst| {
                #[cfg(target_arch = "x86_64")]
                if tier == Tier::Avx512 {
                    // SAFETY: availability and the group condition were checked above.
                    return unsafe { crate::x86::sparse24::dequantize_row(w, r, dst) };
                }
                w.dequantize_row(r, dst)
            },
            out,
        );
        return Ok(());
    }
    for (xr, yr) in x.chunks_exact(k).zip(out.chunks_exact_mut(n)) {
        let dot = |r: usize| -> f32 {
            #[cfg(target_arch = "x86_64")]
            if tier == Tier::Avx512 {
                // SAFETY: availability and the group condition were checked above.
                return unsafe { crate::x86::sparse24::row_dot(w, r, xr) };
            }
            w.row_dot_portable(r, xr)
        };
        crate::matmul::par_rows(n * k, yr, dot);
    }
    Ok(())
}

/// One row's buffers: kept codes, positions, scales, zero points.
pub(crate) type RowParts<'a> = (&'a [u8], &'a [u8], &'a [f16], Option<&'a [f16]>);

impl Sparse24 {
    /// Row `r`'s buffers (the SIMD tier's inputs).
    pub(crate) fn row_parts(&self, r: usize) -> RowParts<'_> {
        let (k, g) = (self.in_features, self.groups_per_row);
        (
            &self.codes[r * k / 4..(r + 1) * k / 4],
            &self.index[r * k / 8..(r + 1) * k / 8],
            &self.scales[r * g..(r + 1) * g],
            self.zeros.as_ref().map(|z| &z[r * g..(r + 1) * g]),
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::matrix::ScaleLayout;
    use proptest::prelude::*;

    /// The 4-bit `[n, k]` view with groups of `g` over the given buffers.
    fn view<'a>(
        n: usize,
        k: usize,
        g: usize,
        codes: &'a [u8],
        scales: &'a [f16],
        zeros: Option<&'a [f16]>,
    ) -> QuantMatrix<'a> {
        QuantMatrix::new(
            4,
            [n, k],
            ScaleLayout::PerGroup { group_len: g },
            codes,
            scales,
            zeros,
        )
        .unwrap()
    }

    /// A random 4-bit matrix and a 2:4 keep pattern (seeded), as owned buffers.
    fn case(
        n: usize,
        k: usize,
        g: usize,
        asym: bool,
        seed: u64,
    ) -> (Vec<u8>, Vec<f16>, Option<Vec<f16>>, Vec<bool>) {
        let mut st = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
        let mut next = move || {
            st ^= st << 13;
            st ^= st >> 7;
            st ^= st << 17;
            st
        };
        let codes: Vec<u8> = (0..n * k / 2).map(|_| next() as u8).collect();
        let groups = n * k.div_ceil(g);
        let scales = (0..groups)
            .map(|_| f16::from_f32(0.01 + (next() % 100) as f32 * 1e-3))
            .collect();
        let zeros = asym.then(|| {
            (0..groups)
                .map(|_| f16::from_f32((next() % 160) as f32 / 10.0))
                .collect()
        });
        let mut kept = vec![false; n * k];
        for r in 0..n {
            for b in 0..k / 4 {
                let i0 = (next() % 4) as usize;
                let i1 = (i0 + 1 + (next() % 3) as usize) % 4;
                kept[r * k + 4 * b + i0] = true;
                kept[r * k + 4 * b + i1] = true;
            }
        }
        (codes, scales, zeros, kept)
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(32))]
        /// Every tier equals the dense product of the masked matrix (the dense reference tier on
        /// `w` with pruned weights zeroed) within f32 rounding: 1e-4 of Σ|x·w|.
        #[test]
        fn tiers_match_the_masked_dense_product(n in 1usize..40, k8 in 1usize..48, gsel in 0usize..5,
                                               asym in any::<bool>(), m in prop::sample::select(vec![1usize, 3, 9]), seed in 0u64..500) {
            // Rows of any multiple of 8; groups of 8–128 columns (a shorter last group where
            // they do not divide the row).
            let k = 8 * k8;
            let g = [8usize, 16, 32, 64, 128][gsel].min(k);
            let (codes, scales, zeros, kept) = case(n, k, g, asym, seed);
            let w = view(n, k, g, &codes, &scales, zeros.as_deref());
            let s = Sparse24::from_quant(&w, |r, c| kept[r * k + c]).unwrap();
            let x: Vec<f32> = (0..m * k).map(|i| ((i as f32) * 0.37 + seed as f32).sin()).collect();
            // Yardstick: dense f64 product with pruned weights zeroed.
            let mut want = vec![0f64; m * n];
            let mut mag = vec![0f64; m * n];
            let mut row = vec![0f32; k];
            for r in 0..n {
                crate::reference::dequantize_row(&w, r, &mut row);
                for i in 0..m {
                    for c in 0..k {
                        if kept[r * k + c] {
                            want[i * n + r] += f64::from(x[i * k + c]) * f64::from(row[c]);
                            mag[i * n + r] += (f64::from(x[i * k + c]) * f64::from(row[c])).abs();
                        }
                    }
                }
            }
            let mut tiers = vec![Tier::Reference, Tier::Portable];
            let simd = g % 32 == 0 && k % 32 == 0;
            if Tier::Avx512.is_available() && simd {
                tiers.push(Tier::Avx512);
            } else if Tier::Avx512.is_available() {
                let mut out = vec![0f32; m * n];
                prop_assert!(matmul_with(Tier::Avx512, &x, m, &s, &mut out).is_err());
            }
            prop_assert_eq!(s.tier() == Tier::Avx512, Tier::Avx512.is_available() && simd);
            for t in tiers {
                let mut out = vec![0f32; m * n];
                matmul_with(t, &x, m, &s, &mut out).unwrap();
                for j in 0..m * n {
                    prop_assert!((f64::from(out[j]) - want[j]).abs() <= 1e-4 * mag[j] + 1e-6,
                        "{t:?} element {j}: {} vs {}", out[j], want[j]);
                }
            }
        }
    }

    #[test]
    fn storage_is_three_bits_plus_scales() {
        let (n, k, g) = (16, 256, 32);
        let (codes, scales, _, kept) = case(n, k, g, false, 1);
        let w = view(n, k, g, &codes, &scales, None);
        let s = Sparse24::from_quant(&w, |r, c| kept[r * k + c]).unwrap();
        // 3 bits per weight + a 16-bit scale per 32 weights = 3.5.
        assert!(
            (s.bits_per_weight() - 3.5).abs() < 1e-12,
            "{}",
            s.bits_per_weight()
        );
        assert!(s.storage_bytes() < w.storage_bytes());
        // The dequantized row is the dense one where kept, 0 elsewhere.
        let (mut a, mut b) = (vec![0f32; k], vec![0f32; k]);
        s.dequantize_row(3, &mut a);
        crate::reference::dequantize_row(&w, 3, &mut b);
        for c in 0..k {
            assert_eq!(a[c], if kept[3 * k + c] { b[c] } else { 0.0 }, "column {c}");
        }
    }

    #[test]
    fn patterns_and_formats_it_cannot_hold_are_refused() {
        let (n, k, g) = (2, 32, 32);
        let (codes, scales, zeros, _) = case(n, k, g, true, 2);
        let asym = view(n, k, g, &codes, &scales, zeros.as_deref());
        let e = Sparse24::from_quant(&asym, |_, c| c % 4 == 0).unwrap_err();
        assert!(e.to_string().contains("asymmetric"), "{e}");
        let e = Sparse24::from_quant(&asym, |_, c| c % 4 != 3).unwrap_err();
        assert!(e.to_string().contains("3 kept"), "{e}");
        // Symmetric: a block keeping one weight is padded with an exact zero.
        let sym = view(n, k, g, &codes, &scales, None);
        let s = Sparse24::from_quant(&sym, |_, c| c % 4 == 1).unwrap();
        let mut row = vec![0f32; k];
        s.dequantize_row(0, &mut row);
        assert!(row.iter().enumerate().all(|(c, &v)| c % 4 == 1 || v == 0.0));
        let c8: Vec<u8> = vec![0; n * k];
        let w8 = QuantMatrix::new(
            8,
            [n, k],
            ScaleLayout::PerGroup { group_len: g },
            &c8,
            &scales,
            None,
        )
        .unwrap();
        assert!(Sparse24::from_quant(&w8, |_, _| true).is_err());
        let mut out = vec![0f32; n];
        let e = matmul_with(Tier::Avx2, &[0.0; 32], 1, &s, &mut out).unwrap_err();
        assert!(e.to_string().contains("2:4"), "{e}");
    }
}
