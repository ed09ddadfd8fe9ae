//! Nested bit widths: one stored 8-bit code whose most significant bits are the 4-bit and 2-bit
//! codes (the idea of Matryoshka Quantization, Nair et al. 2025, arXiv:2502.06786).
//!
//! An 8-bit weight `w ≈ s (c − z)` with code `c ∈ [0, 255]` is sliced to `b` bits by keeping the
//! top bits, `c_b = c >> (8 − b)`. Code `c_b` stands for the bucket of 8-bit codes
//! `[2^(8−b) c_b, 2^(8−b) (c_b + 1))`, and is dequantized at the bucket's centre:
//!
//! `w_b = s (2^(8−b) c_b + 2^(7−b) − z) = s_b (c_b − z_b)` with `s_b = s · 2^(8−b)` and
//! `z_b = (z − 2^(7−b)) / 2^(8−b)`,
//!
//! so the sliced weight is an ordinary asymmetric `b`-bit [`PackedWeight`] with the same groups,
//! which every kernel and file format already handles. Slicing costs no calibration and no
//! storage: the 2- and 4-bit models are read out of the 8-bit one at load time. MatQuant rounds
//! instead of truncating; truncation keeps "the int4 code is the top nibble" literally true, and
//! the bucket centre removes the half-bucket bias truncation would otherwise add.

use compress_core::packed::{PackedError, PackedWeight, QuantScheme, Symmetry};
use half::f16;

/// The `bits`-bit model nested in an 8-bit packed weight (see the module docs); `bits = 8`
/// returns a copy. The result is asymmetric and keeps the groups and any sparsity mask.
pub fn slice_bits(weight: &PackedWeight, bits: u8) -> Result<PackedWeight, PackedError> {
    let scheme = weight.scheme();
    if scheme.bits.get() != 8 {
        return Err(PackedError::Bits(scheme.bits.get()));
    }
    if bits == 8 {
        return Ok(weight.clone());
    }
    let shift = 8 - QuantScheme::new(bits, None, Symmetry::Asymmetric)?
        .bits
        .get();
    let step = (1u32 << shift) as f32;
    let half = step / 2.0;
    let codes: Vec<u8> = weight
        .unpack_codes()
        .into_iter()
        .map(|c| c >> shift)
        .collect();
    let scales: Vec<f16> = weight
        .scales()
        .iter()
        .map(|s| f16::from_f32(s.to_f32() * step))
        .collect();
    let mid = scheme.bits.mid_code() as f32;
    let zeros: Vec<f16> = match weight.zeros() {
        Some(z) => z
            .iter()
            .map(|z| f16::from_f32((z.to_f32() - half) / step))
            .collect(),
        None => vec![f16::from_f32((mid - half) / step); scales.len()],
    };
    let sliced = QuantScheme {
        bits: compress_core::packed::Bits::new(bits)?,
        granularity: scheme.granularity,
        symmetry: Symmetry::Asymmetric,
    };
    let [out, inp] = weight.shape();
    let p = PackedWeight::from_codes(sliced, out, inp, &codes, scales, Some(zeros))?;
    match weight.mask() {
        Some(m) => p.with_mask(m.clone()),
        None => Ok(p),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::grid::GridConfig;
    use crate::rtn::quantize_rtn;

    fn weights(n: usize, seed: u64) -> Vec<f32> {
        let mut x = seed | 1;
        (0..n)
            .map(|_| {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                (x % 20_000) as f32 / 10_000.0 - 1.0
            })
            .collect()
    }

    fn rel_err(a: &[f32], b: &[f32]) -> f64 {
        let num: f64 = a.iter().zip(b).map(|(x, y)| ((x - y) as f64).powi(2)).sum();
        let den: f64 = a.iter().map(|x| (*x as f64).powi(2)).sum();
        (num / den).sqrt()
    }

    #[test]
    fn sliced_codes_are_the_top_bits_and_dequantize_at_bucket_centres() {
        let (out, inp) = (4, 70); // ragged last group of 32
        let w = weights(out * inp, 7);
        for sym in [Symmetry::Asymmetric, Symmetry::Symmetric] {
            let scheme = QuantScheme::new(8, Some(32), sym).unwrap();
            let q8 =
                quantize_rtn("t", &w, out, inp, &scheme, &GridConfig::default(), None).unwrap();
            let c8 = q8.unpack_codes();
            let d8 = q8.dequantize();
            let mut last = 0.0;
            for bits in [6u8, 4, 3, 2] {
                let q = slice_bits(&q8, bits).unwrap();
                let shift = 8 - bits;
                assert_eq!(q.scheme().bits.get(), bits);
                assert!(q
                    .unpack_codes()
                    .iter()
                    .zip(&c8)
                    .all(|(&c, &c8)| c == c8 >> shift));
                // w_b = s (2^shift c_b + 2^(shift−1) − z), up to the f16 rounding of z_b
                // (|Δz_b| ≤ 2^b · 2^−12, so |Δw| ≤ s_b |Δz_b| ≤ s / 16).
                let d = q.dequantize();
                for (i, (&db, &c)) in d.iter().zip(&c8).enumerate() {
                    let (s, z) = q8.scale_zero(i / inp, i % inp);
                    let centre =
                        ((c >> shift) as f32 * (1 << shift) as f32 + (1 << shift) as f32 / 2.0 - z)
                            * s;
                    assert!(
                        (db - centre).abs() <= s.abs() / 16.0 + 1e-6,
                        "{db} vs {centre}"
                    );
                }
                // Fewer bits, larger error, and the bucket centre keeps it within one
                // half-bucket of the 8-bit weight.
                let e = rel_err(&d8, &d);
                assert!(e > last, "{bits} bits: {e} after {last}");
                last = e;
                for (i, (&a, &b)) in d8.iter().zip(&d).enumerate() {
                    let (s, _) = q8.scale_zero(i / inp, i % inp);
                    assert!(
                        (a - b).abs()
                            <= s.abs() * (1 << shift) as f32 / 2.0 + s.abs() / 16.0 + 1e-6
                    );
                }
            }
        }
    }

    #[test]
    fn only_8_bit_weights_slice() {
        let w = weights(64, 3);
        let scheme = QuantScheme::new(4, Some(32), Symmetry::Asymmetric).unwrap();
        let q4 = quantize_rtn("t", &w, 2, 32, &scheme, &GridConfig::default(), None).unwrap();
        assert_eq!(slice_bits(&q4, 2), Err(PackedError::Bits(4)));
        let scheme = QuantScheme::new(8, Some(32), Symmetry::Asymmetric).unwrap();
        let q8 = quantize_rtn("t", &w, 2, 32, &scheme, &GridConfig::default(), None).unwrap();
        assert_eq!(slice_bits(&q8, 1), Err(PackedError::Bits(1)));
        assert_eq!(slice_bits(&q8, 8).unwrap(), q8);
    }
}
