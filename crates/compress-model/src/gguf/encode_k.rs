//! Encoding packed weights as llama.cpp's k-quants (`Q2_K` … `Q6_K`, 256-weight super-blocks;
//! formats in [`compress_core::kquant`]).
//!
//! The codes are copied (regrouped into ggml's bit planes); the scales are the two-level
//! `d · k_i` (and `dmin · m_i`) recovered from the packed f16 scales and zero points by
//! [`fit_two_level`]. A layer quantized with `k_quant` (compress-quant fits its grids to this
//! form) is recovered *faithfully*: every scale exactly, every minimum to within the f16
//! rounding of its zero point — bit-exact weights for the symmetric Q3_K and Q6_K, within half an
//! f16 ulp of the zero point per step for the asymmetric ones, the same kind of rounding Q4_1
//! has. Any other layer of a k-quant's scheme is approximated (its scales rounded to the
//! two-level form), and [`KEncoded::faithful`] says which happened; the measured largest
//! deviation is in [`Encoded::max_abs_error`] either way.
//!
//! Element order inside a super-block, as `dequantize_row_q*_K` reads it:
//! - Q6_K: `ql[64n + l]` holds elements `128n + l` (low nibble) and `128n + l + 64` (high);
//!   `ql[64n + l + 32]` elements `+ 32` and `+ 96`; `qh[32n + l]` their top two bits in that
//!   order (bits 0–1, 2–3, 4–5, 6–7); codes are stored as is (ggml subtracts 32).
//! - Q3_K: element `128c + 32s + l` has its low two bits at bits `2s` of `qs[32c + l]` and its
//!   third bit at bit `4c + s` of `hmask[l]` (ggml subtracts 4 when it is clear).
//! - Q4_K / Q5_K: `qs[32j + l]` holds elements `64j + l` (low nibble) and `64j + 32 + l` (high);
//!   Q5_K's fifth bits are bits `2j` / `2j + 1` of `qh[l]`.
//! - Q2_K: element `128c + 32s + l` sits at bits `2s` of `qs[32c + l]`.

use compress_core::kquant::{fit_two_level, KQuant, SUPER_BLOCK};
use compress_core::packed::{PackedWeight, Symmetry};
use half::f16;

use super::dequant::dequantize_into;
use super::encode::{row_codes_for_ggml, Encoded};
use super::types::GgmlType;

/// A k-quant encoding and whether it reproduces the packed grids (see the module docs).
#[derive(Debug, Clone)]
pub struct KEncoded {
    /// The encoded tensor.
    pub encoded: Encoded,
    /// Every scale recovered exactly and every minimum within the f16 rounding of its zero
    /// point (a layer quantized with `k_quant`).
    pub faithful: bool,
}

/// The ggml type of a k-quant.
pub fn ggml_type(format: KQuant) -> GgmlType {
    match format {
        KQuant::Q2K => GgmlType::Q2_K,
        KQuant::Q3K => GgmlType::Q3_K,
        KQuant::Q4K => GgmlType::Q4_K,
        KQuant::Q5K => GgmlType::Q5_K,
        KQuant::Q6K => GgmlType::Q6_K,
    }
}

/// The k-quant a packed weight's scheme is, when its rows are whole super-blocks (and, for the
/// asymmetric formats, no sparsity mask: 0 is not on their grids).
pub fn k_quant_for(w: &PackedWeight) -> Option<KQuant> {
    let format = KQuant::ALL.into_iter().find(|k| k.scheme() == w.scheme())?;
    let cols = w.shape()[1];
    let whole = cols > 0 && cols.is_multiple_of(SUPER_BLOCK);
    let masked_asym = format.symmetry() == Symmetry::Asymmetric && w.mask().is_some();
    (whole && !masked_asym).then_some(format)
}

/// Two-level scales of one super-block: `(d, k_i)` and, for asymmetric formats, `(dmin, m_i)`.
struct SuperScales {
    d: f16,
    k: Vec<i32>,
    dmin: f16,
    m: Vec<i32>,
    faithful: bool,
}

fn super_scales(w: &PackedWeight, format: KQuant, row: usize, start: usize) -> SuperScales {
    let group = format.group();
    let (scales, zeros): (Vec<f32>, Vec<f32>) = (start..start + SUPER_BLOCK)
        .step_by(group)
        .map(|c| w.scale_zero(row, c))
        .unzip();
    let bits = format.super_scale_bits();
    let (d, k, err) = fit_two_level(&scales, None, format.scale_range(), bits);
    let mut faithful = err == 0.0;
    let (mut dmin, mut m) = (f16::ZERO, Vec::new());
    if format.symmetry() == Symmetry::Asymmetric {
        // ggml subtracts dmin · m_i ≥ 0; the packed grid's minimum is −s_i · z_i.
        let mins: Vec<f32> = scales.iter().zip(&zeros).map(|(s, z)| s * z).collect();
        faithful &= mins.iter().all(|&t| t >= 0.0);
        let clamped: Vec<f32> = mins.iter().map(|t| t.max(0.0)).collect();
        let per_step: Vec<f32> = scales
            .iter()
            .map(|&s| if s > 0.0 { 1.0 / s } else { 0.0 })
            .collect();
        let (dm, ms, err_steps) =
            fit_two_level(&clamped, Some(&per_step), (0, format.scale_range().1), bits);
        let half_ulp = zeros
            .iter()
            .map(|&z| {
                let h = f16::from_f32(z.abs());
                (f16::from_bits(h.to_bits() + 1).to_f32() - h.to_f32()) * 0.5
            })
            .fold(0f32, f32::max);
        faithful &= err_steps <= half_ulp * 1.001;
        (dmin, m) = (dm, ms);
    }
    SuperScales {
        d,
        k,
        dmin,
        m,
        faithful,
    }
}

/// Encodes `w` as `format` (see [`k_quant_for`] for when it applies).
///
/// # Panics
/// If `w`'s scheme is not `format`'s or its rows are not whole super-blocks.
pub fn encode_k(w: &PackedWeight, format: KQuant) -> KEncoded {
    let ty = ggml_type(format);
    let [rows, cols] = w.shape();
    assert!(
        format.scheme() == w.scheme() && cols.is_multiple_of(SUPER_BLOCK),
        "encode_k: the layer is not {format}"
    );
    let mut codes = vec![0u8; cols];
    let mut data = Vec::with_capacity(rows * cols / SUPER_BLOCK * ty.type_size() as usize);
    let mut faithful = true;
    for r in 0..rows {
        row_codes_for_ggml(w, r, &mut codes);
        for (b, q) in codes.chunks_exact(SUPER_BLOCK).enumerate() {
            let s = super_scales(w, format, r, b * SUPER_BLOCK);
            faithful &= s.faithful;
            match format {
                KQuant::Q6K => push_q6_k(&mut data, q, &s),
                KQuant::Q3K => push_q3_k(&mut data, q, &s),
                KQuant::Q4K | KQuant::Q5K => push_q45_k(&mut data, q, &s, format == KQuant::Q5K),
                KQuant::Q2K => push_q2_k(&mut data, q, &s),
            }
        }
    }
    // The deviation, measured: ggml's dequantization (this crate's reader, bit-exact with it)
    // against the packed weight's.
    let mut back = vec![0f32; rows * cols];
    dequantize_into(ty, &data, &mut back).expect("whole super-blocks of the declared type");
    let max_abs_error = back
        .iter()
        .zip(w.dequantize())
        .map(|(a, b)| (a - b).abs())
        .fold(0f32, f32::max);
    KEncoded {
        encoded: Encoded {
            ty,
            data,
            max_abs_error,
        },
        faithful,
    }
}

fn push_q6_k(data: &mut Vec<u8>, q: &[u8], s: &SuperScales) {
    let (mut ql, mut qh) = ([0u8; 128], [0u8; 64]);
    for n in 0..2 {
        for l in 0..32 {
            let e = |o: usize| q[128 * n + l + o];
            ql[64 * n + l] = (e(0) & 0xF) | ((e(64) & 0xF) << 4);
            ql[64 * n + l + 32] = (e(32) & 0xF) | ((e(96) & 0xF) << 4);
            qh[32 * n + l] =
                (e(0) >> 4) | ((e(32) >> 4) << 2) | ((e(64) >> 4) << 4) | ((e(96) >> 4) << 6);
        }
    }
    data.extend_from_slice(&ql);
    data.extend_from_slice(&qh);
    data.extend(s.k.iter().map(|&k| k as i8 as u8));
    data.extend_from_slice(&s.d.to_le_bytes());
}

fn push_q3_k(data: &mut Vec<u8>, q: &[u8], s: &SuperScales) {
    let (mut hmask, mut qs, mut sc) = ([0u8; 32], [0u8; 64], [0u8; 12]);
    for c in 0..2 {
        for sh in 0..4 {
            for l in 0..32 {
                let code = q[128 * c + 32 * sh + l];
                qs[32 * c + l] |= (code & 3) << (2 * sh);
                hmask[l] |= (code >> 2) << (4 * c + sh);
            }
        }
    }
    for (i, &k) in s.k.iter().enumerate() {
        let u = (k + 32) as u8;
        sc[i % 8] |= (u & 0xF) << (4 * (i / 8));
        sc[8 + i % 4] |= (u >> 4) << (2 * (i / 4));
    }
    data.extend_from_slice(&hmask);
    data.extend_from_slice(&qs);
    data.extend_from_slice(&sc);
    data.extend_from_slice(&s.d.to_le_bytes());
}

/// The twelve bytes of eight 6-bit scales and minimums (`get_scale_min_k4`'s layout).
fn pack_scale_min_k4(k: &[i32], m: &[i32]) -> [u8; 12] {
    let mut sc = [0u8; 12];
    for j in 0..8 {
        let (k, m) = (k[j] as u8, m[j] as u8);
        if j < 4 {
            sc[j] |= k;
            sc[j + 4] |= m;
        } else {
            sc[j + 4] = (k & 0xF) | ((m & 0xF) << 4);
            sc[j - 4] |= (k >> 4) << 6;
            sc[j] |= (m >> 4) << 6;
        }
    }
    sc
}

fn push_q45_k(data: &mut Vec<u8>, q: &[u8], s: &SuperScales, five: bool) {
    data.extend_from_slice(&s.d.to_le_bytes());
    data.extend_from_slice(&s.dmin.to_le_bytes());
    data.extend_from_slice(&pack_scale_min_k4(&s.k, &s.m));
    if five {
        let mut qh = [0u8; 32];
        for j in 0..4 {
            for (l, h) in qh.iter_mut().enumerate() {
                *h |= (q[64 * j + l] >> 4) << (2 * j);
                *h |= (q[64 * j + 32 + l] >> 4) << (2 * j + 1);
            }
        }
        data.extend_from_slice(&qh);
    }
    for j in 0..4 {
        data.extend((0..32).map(|l| (q[64 * j + l] & 0xF) | ((q[64 * j + 32 + l] & 0xF) << 4)));
    }
}

fn push_q2_k(data: &mut Vec<u8>, q: &[u8], s: &SuperScales) {
    data.extend(
        s.k.iter()
            .zip(&s.m)
            .map(|(&k, &m)| k as u8 | ((m as u8) << 4)),
    );
    let mut qs = [0u8; 64];
    for c in 0..2 {
        for sh in 0..4 {
            for l in 0..32 {
                qs[32 * c + l] |= (q[128 * c + 32 * sh + l] & 3) << (2 * sh);
            }
        }
    }
    data.extend_from_slice(&qs);
    data.extend_from_slice(&s.d.to_le_bytes());
    data.extend_from_slice(&s.dmin.to_le_bytes());
}

#[cfg(test)]
mod tests {
    use super::*;
    use compress_core::kquant::snap_two_level;
    use compress_core::packed::QuantScheme;
    use compress_core::sparsity::SparsityMask;

    /// A `[rows, 512]` packed weight of `format`'s scheme with deterministic codes, and scales
    /// (and zero points) either snapped to the two-level form or arbitrary.
    fn packed(format: KQuant, rows: usize, snapped: bool) -> PackedWeight {
        let cols = 2 * SUPER_BLOCK;
        let scheme: QuantScheme = format.scheme();
        let max = scheme.bits.max_code() as usize;
        let codes: Vec<u8> = (0..rows * cols)
            .map(|i| ((i * 7 + i / 5) % (max + 1)) as u8)
            .collect();
        let n = scheme.num_scales(rows, cols);
        let raw: Vec<f32> = (0..n)
            .map(|i| {
                let sign = if format.symmetry() == Symmetry::Symmetric && i % 3 == 0 {
                    -1.0
                } else {
                    1.0
                };
                sign * (0.002 + 0.0007 * ((i * 5) % 17) as f32)
            })
            .collect();
        let raw_zeros: Vec<f32> = (0..n).map(|i| (i % (max + 1)) as f32 * 0.9).collect();
        let per = SUPER_BLOCK / format.group();
        let bits = format.super_scale_bits();
        let (mut scales, mut zeros) = (Vec::new(), Vec::new());
        for (s, z) in raw.chunks(per).zip(raw_zeros.chunks(per)) {
            if !snapped {
                scales.extend(s.iter().map(|&v| f16::from_f32(v)));
                zeros.extend(z.iter().map(|&v| f16::from_f32(v)));
                continue;
            }
            let (d, k) = snap_two_level(s, format.scale_range(), bits);
            let mins: Vec<f32> = s.iter().zip(z).map(|(s, z)| s * z).collect();
            let (dmin, m) = snap_two_level(&mins, (0, format.scale_range().1), bits);
            for (&k, &m) in k.iter().zip(&m) {
                let sc = d * k as f32;
                scales.push(f16::from_f32(sc));
                zeros.push(f16::from_f32(dmin * m as f32 / sc));
            }
        }
        let zeros = (format.symmetry() == Symmetry::Asymmetric).then_some(zeros);
        PackedWeight::from_codes(scheme, rows, cols, &codes, scales, zeros).unwrap()
    }

    #[test]
    fn snapped_layers_encode_faithfully() {
        for format in KQuant::ALL {
            let w = packed(format, 3, true);
            assert_eq!(k_quant_for(&w), Some(format));
            let e = encode_k(&w, format);
            assert!(e.faithful, "{format}");
            assert_eq!(e.encoded.ty, ggml_type(format));
            assert_eq!(
                e.encoded.data.len(),
                3 * 2 * e.encoded.ty.type_size() as usize
            );
            if format.symmetry() == Symmetry::Symmetric {
                // Codes and scales both exact: ggml's values are the packed weights.
                assert_eq!(e.encoded.max_abs_error, 0.0, "{format}");
            } else {
                // Half an f16 ulp of a zero point below 32 (2⁻⁶) times a scale below 0.014.
                assert!(
                    e.encoded.max_abs_error <= 0.014 / 64.0,
                    "{format}: {}",
                    e.encoded.max_abs_error
                );
            }
        }
    }

    #[test]
    fn unsnapped_layers_are_approximated_and_say_so() {
        for format in KQuant::ALL {
            let w = packed(format, 2, false);
            let e = encode_k(&w, format);
            assert!(!e.faithful, "{format}");
            // Scales move by at most half a step of d (≤ 0.014 / reach); times the largest code
            // offset, plus the minimums' rounding.
            let reach = format.scale_range().1.min(15) as f32;
            let bound = 0.014 / reach * 0.5 * (1 << format.bits()) as f32 * 2.0;
            assert!(
                e.encoded.max_abs_error > 0.0 && e.encoded.max_abs_error < bound,
                "{format}: {} vs {bound}",
                e.encoded.max_abs_error
            );
        }
    }

    #[test]
    fn pruned_symmetric_weights_stay_zero_and_partial_rows_do_not_apply() {
        let mut mask = SparsityMask::all_kept(3, 2 * SUPER_BLOCK);
        for c in (0..2 * SUPER_BLOCK).step_by(3) {
            mask.prune(1, c);
        }
        let w = packed(KQuant::Q6K, 3, true)
            .with_mask(mask.clone())
            .unwrap();
        let e = encode_k(&w, KQuant::Q6K);
        assert_eq!(e.encoded.max_abs_error, 0.0);
        let asym = packed(KQuant::Q4K, 3, true).with_mask(mask).unwrap();
        assert_eq!(k_quant_for(&asym), None);
        let s = KQuant::Q4K.scheme();
        let short = PackedWeight::from_codes(
            s,
            1,
            64,
            &[0; 64],
            vec![f16::ONE; 2],
            Some(vec![f16::ZERO; 2]),
        )
        .unwrap();
        assert_eq!(k_quant_for(&short), None);
    }
}
