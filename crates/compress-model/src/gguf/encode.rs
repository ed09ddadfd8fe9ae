//! Encoding weights as ggml tensor data: f32/f16/bf16, and the 32-weight block formats that the
//! packed layout of `compress_core::packed` expresses (exactly, or with a stated rounding).
//!
//! | packed scheme (groups of 32)  | ggml  | block                               | exact?            |
//! |-------------------------------|-------|-------------------------------------|-------------------|
//! | 4-bit symmetric               | Q4_0  | `d`, 16 bytes of nibbles            | yes (`q = code`)  |
//! | 4-bit asymmetric              | Q4_1  | `d`, `m`, 16 bytes of nibbles       | `m = −d·z` in f16 |
//! | 5-bit symmetric               | Q5_0  | `d`, 32 high bits, 16 bytes         | yes               |
//! | 5-bit asymmetric              | Q5_1  | `d`, `m`, 32 high bits, 16 bytes    | `m = −d·z` in f16 |
//! | 8-bit symmetric               | Q8_0  | `d`, 32 signed bytes                | yes (`q = code − 128`) |
//!
//! A symmetric code stands for `d·(code − mid)`, which is what ggml computes for `Q4_0`/`Q5_0`
//! (`mid` = 8 / 16) and `Q8_0` (signed codes). An asymmetric code stands for `d·(code − z)`
//! with an f16 zero point `z` in code units; `Q4_1`/`Q5_1` compute `d·code + m`, so `m = −d·z`
//! must be rounded to f16 and the result can differ from the packed weight by up to half an
//! f16 ulp of `m` (the encoder reports the largest difference). Within a block, ggml stores
//! element `j` in the low nibble of byte `j` and element `j + 16` in its high nibble (our
//! packed layout puts consecutive columns in one byte), so codes are regrouped, not copied.
//!
//! Pruned weights of a symmetric layer are encoded as the middle code, which is exactly 0.
//!
//! Packed schemes of llama.cpp's k-quants (6-bit symmetric groups of 16 ↔ Q6_K, 3-bit ↔ Q3_K,
//! 4-/5-bit asymmetric groups of 32 ↔ Q4_K/Q5_K, 2-bit asymmetric groups of 16 ↔ Q2_K) on rows
//! of whole 256-weight super-blocks are written by [`super::encode_k`]; [`encode_packed`]
//! prefers them over Q4_1/Q5_1 when the layer was quantized to the k-quant's form.

use compress_core::kquant::{KQuant, SUPER_BLOCK};
use compress_core::packed::{Granularity, PackedWeight, Symmetry};
use half::{bf16, f16};

use super::encode_k::{encode_k, k_quant_for};
use super::types::GgmlType;

/// Weights per block of the formats above.
pub const BLOCK: usize = 32;

/// Encoded tensor data and how far it is from the weights it encodes.
#[derive(Debug, Clone)]
pub struct Encoded {
    /// The ggml type.
    pub ty: GgmlType,
    /// The tensor bytes, rows in order.
    pub data: Vec<u8>,
    /// Largest `|w_ggml − w|` over the tensor (0 for an exact encoding).
    pub max_abs_error: f32,
}

/// f32 values as `ty` (`F32`, `F16` or `BF16`; f16/bf16 round to nearest even).
///
/// # Panics
/// If `ty` is not one of the three float types.
pub fn encode_float(values: &[f32], ty: GgmlType) -> Encoded {
    let mut data = Vec::with_capacity(values.len() * 4);
    let mut max_abs_error = 0f32;
    for &v in values {
        let stored = match ty {
            GgmlType::F32 => {
                data.extend_from_slice(&v.to_le_bytes());
                v
            }
            GgmlType::F16 => {
                let h = f16::from_f32(v);
                data.extend_from_slice(&h.to_le_bytes());
                h.to_f32()
            }
            GgmlType::BF16 => {
                let b = bf16::from_f32(v);
                data.extend_from_slice(&b.to_le_bytes());
                b.to_f32()
            }
            other => panic!("encode_float takes F32, F16 or BF16, not {other}"),
        };
        max_abs_error = max_abs_error.max((stored - v).abs());
    }
    Encoded {
        ty,
        data,
        max_abs_error,
    }
}

/// f32 values (a whole number of blocks of 32) as `Q8_0`, quantized here by round to nearest
/// with llama.cpp's rule (`d = max|x| / 127` as f16, `q = round(x / d)`): the one lossy
/// encoding of this module, for tensors the pipeline leaves dense (the token embedding).
///
/// # Panics
/// If `values.len()` is not a multiple of 32.
pub fn encode_q8_0(values: &[f32]) -> Encoded {
    assert!(
        values.len().is_multiple_of(BLOCK),
        "Q8_0 takes whole blocks of {BLOCK}"
    );
    let mut data = Vec::with_capacity(values.len() / BLOCK * 34);
    let mut max_abs_error = 0f32;
    for block in values.chunks_exact(BLOCK) {
        let amax = block.iter().fold(0f32, |m, v| m.max(v.abs()));
        let d = f16::from_f32(amax / 127.0);
        let df = d.to_f32();
        let inv = if df > 0.0 { 1.0 / df } else { 0.0 };
        data.extend_from_slice(&d.to_le_bytes());
        for &v in block {
            let q = (v * inv).round().clamp(-127.0, 127.0) as i8;
            data.push(q as u8);
            max_abs_error = max_abs_error.max((q as f32 * df - v).abs());
        }
    }
    Encoded {
        ty: GgmlType::Q8_0,
        data,
        max_abs_error,
    }
}

/// The ggml block type a packed weight maps to, or why it has none.
pub fn block_type_for(w: &PackedWeight) -> Result<GgmlType, String> {
    let s = w.scheme();
    match s.granularity {
        Granularity::PerGroup(g) if g.get() == BLOCK => {}
        other => {
            return Err(format!(
                "ggml's block formats use groups of {BLOCK}, this layer is {other:?}"
            ))
        }
    }
    if !w.shape()[1].is_multiple_of(BLOCK) {
        return Err(format!(
            "rows of {} weights are not whole blocks of {BLOCK}",
            w.shape()[1]
        ));
    }
    let sym = s.symmetry == Symmetry::Symmetric;
    let ty = match (s.bits.get(), sym) {
        (4, true) => GgmlType::Q4_0,
        (4, false) => GgmlType::Q4_1,
        (5, true) => GgmlType::Q5_0,
        (5, false) => GgmlType::Q5_1,
        (8, true) => GgmlType::Q8_0,
        (bits, _) => {
            return Err(format!(
                "{bits}-bit {} codes have no ggml block format",
                if sym { "symmetric" } else { "asymmetric" }
            ))
        }
    };
    if !sym && w.mask().is_some() {
        return Err(format!(
            "a pruned asymmetric layer cannot be {ty}: 0 is not on its grid"
        ));
    }
    Ok(ty)
}

/// Encodes a packed weight in its most faithful ggml type: a k-quant
/// ([`super::encode_k`]) when its scheme is one, its rows are whole super-blocks and its
/// scales have the k-quant's two-level form (or no 32-weight block type exists for it), else
/// the 32-weight block type of [`block_type_for`].
pub fn encode_packed(w: &PackedWeight) -> Result<Encoded, String> {
    let legacy = block_type_for(w);
    if let Some(format) = k_quant_for(w) {
        let k = encode_k(w, format);
        if k.faithful || legacy.is_err() {
            return Ok(k.encoded);
        }
    } else if let Some(format) = KQuant::ALL.into_iter().find(|k| k.scheme() == w.scheme()) {
        if legacy.is_err() {
            return Err(format!(
                "{format} needs rows of whole {SUPER_BLOCK}-weight super-blocks{}, this layer's rows \
                 are {} weights",
                if format.symmetry() == Symmetry::Asymmetric {
                    " and no sparsity mask"
                } else {
                    ""
                },
                w.shape()[1]
            ));
        }
    }
    let ty = legacy?;
    let [rows, cols] = w.shape();
    let mut codes = vec![0u8; cols];
    let mut data = Vec::with_capacity(rows * cols / BLOCK * ty.type_size() as usize);
    let mut max_abs_error = 0f32;
    for r in 0..rows {
        row_codes_for_ggml(w, r, &mut codes);
        for (b, block) in codes.chunks_exact(BLOCK).enumerate() {
            let (scale, zero) = w.scale_zero(r, b * BLOCK);
            let d = f16::from_f32(scale);
            data.extend_from_slice(&d.to_le_bytes());
            match ty {
                GgmlType::Q8_0 => data.extend(block.iter().map(|&c| (c as i16 - 128) as i8 as u8)),
                GgmlType::Q4_0 | GgmlType::Q5_0 => push_nibbles(&mut data, block, ty),
                _ => {
                    // Asymmetric: w = d·code + m with m = −d·z rounded to f16.
                    let m = f16::from_f32(-(d.to_f32() * zero));
                    data.extend_from_slice(&m.to_le_bytes());
                    push_nibbles(&mut data, block, ty);
                    let (d, m) = (d.to_f32(), m.to_f32());
                    for &c in block {
                        let exact = scale * (c as f32 - zero);
                        max_abs_error = max_abs_error.max((c as f32 * d + m - exact).abs());
                    }
                }
            }
        }
    }
    Ok(Encoded {
        ty,
        data,
        max_abs_error,
    })
}

/// Row `r`'s codes with pruned weights set to the middle code (exactly 0 on a symmetric grid),
/// as every ggml encoder here writes them.
pub(super) fn row_codes_for_ggml(w: &PackedWeight, r: usize, codes: &mut [u8]) {
    w.unpack_row(r, codes);
    if let Some(mask) = w.mask() {
        let mid = w.scheme().bits.mid_code();
        for (c, code) in codes.iter_mut().enumerate() {
            if !mask.is_kept(r, c) {
                *code = mid;
            }
        }
    }
}

/// Appends the 5th bits (Q5 types, as a little-endian u32: bit `j` is element `j`'s) and the
/// low nibbles (element `j` low, `j + 16` high) of one block.
fn push_nibbles(data: &mut Vec<u8>, block: &[u8], ty: GgmlType) {
    if matches!(ty, GgmlType::Q5_0 | GgmlType::Q5_1) {
        let qh = block
            .iter()
            .enumerate()
            .fold(0u32, |h, (j, &c)| h | (((c >> 4) as u32 & 1) << j));
        data.extend_from_slice(&qh.to_le_bytes());
    }
    data.extend((0..BLOCK / 2).map(|j| (block[j] & 0xF) | ((block[j + BLOCK / 2] & 0xF) << 4)));
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::gguf::dequantize_into;
    use compress_core::packed::QuantScheme;
    use compress_core::sparsity::SparsityMask;

    /// Deterministic codes and scales for a `[rows, cols]` weight.
    fn packed(bits: u8, symmetric: bool, rows: usize, cols: usize) -> PackedWeight {
        let sym = if symmetric {
            Symmetry::Symmetric
        } else {
            Symmetry::Asymmetric
        };
        let scheme = QuantScheme::new(bits, Some(BLOCK), sym).unwrap();
        let max = scheme.bits.max_code() as usize;
        let codes: Vec<u8> = (0..rows * cols)
            .map(|i| ((i * 7 + i / 5) % (max + 1)) as u8)
            .collect();
        let n = scheme.num_scales(rows, cols);
        let scales = (0..n)
            .map(|i| f16::from_f32(0.01 + 0.003 * i as f32))
            .collect();
        let zeros = (!symmetric).then(|| {
            (0..n)
                .map(|i| f16::from_f32((i % (max + 1)) as f32 * 0.9))
                .collect()
        });
        PackedWeight::from_codes(scheme, rows, cols, &codes, scales, zeros).unwrap()
    }

    /// ggml's dequantization of the encoded bytes (this crate's reader, itself checked
    /// bit-exact against gguf-py) against the packed weight's own dequantization.
    fn check(w: &PackedWeight, expect_ty: GgmlType, exact: bool) {
        let e = encode_packed(w).unwrap();
        assert_eq!(e.ty, expect_ty);
        let mut back = vec![0f32; w.shape()[0] * w.shape()[1]];
        dequantize_into(e.ty, &e.data, &mut back).unwrap();
        let want = w.dequantize();
        let worst = back
            .iter()
            .zip(&want)
            .map(|(a, b)| (a - b).abs())
            .fold(0.0, f32::max);
        if exact {
            assert_eq!(back, want, "{expect_ty} must be bit-exact");
            assert_eq!(e.max_abs_error, 0.0);
        } else {
            // The reported bound is the measured one; both sides compute in f32.
            assert!(
                worst <= e.max_abs_error * 1.0001 + 1e-9,
                "{worst} > {}",
                e.max_abs_error
            );
            // Half an f16 ulp of |m| ≤ 0.03·15: about 2.2e-4.
            assert!(e.max_abs_error < 3e-4, "{}", e.max_abs_error);
        }
    }

    #[test]
    fn every_block_format_matches_ggml_dequantization() {
        check(&packed(4, true, 3, 64), GgmlType::Q4_0, true);
        check(&packed(5, true, 3, 64), GgmlType::Q5_0, true);
        check(&packed(8, true, 3, 64), GgmlType::Q8_0, true);
        check(&packed(4, false, 3, 64), GgmlType::Q4_1, false);
        check(&packed(5, false, 3, 64), GgmlType::Q5_1, false);
    }

    #[test]
    fn pruned_symmetric_weights_encode_as_exact_zeros() {
        let mut mask = SparsityMask::all_kept(2, 32);
        for c in (0..32).step_by(3) {
            mask.prune(1, c);
        }
        let w = packed(4, true, 2, 32).with_mask(mask).unwrap();
        check(&w, GgmlType::Q4_0, true);
    }

    #[test]
    fn inexpressible_layouts_say_why() {
        let g128 = PackedWeight::from_codes(
            QuantScheme::new(4, Some(128), Symmetry::Symmetric).unwrap(),
            1,
            128,
            &[0; 128],
            vec![f16::ONE],
            None,
        )
        .unwrap();
        assert!(block_type_for(&g128).unwrap_err().contains("groups of 32"));
        assert!(block_type_for(&packed(3, true, 1, 32))
            .unwrap_err()
            .contains("3-bit"));
        let masked = packed(4, false, 1, 32)
            .with_mask(SparsityMask::all_kept(1, 32))
            .unwrap();
        assert!(block_type_for(&masked)
            .unwrap_err()
            .contains("0 is not on its grid"));
    }

    #[test]
    fn q8_0_quantization_is_within_half_a_step_and_dequantizes_as_ggml() {
        let v: Vec<f32> = (0..96)
            .map(|i| ((i * 37 % 97) as f32 - 48.0) / 17.0)
            .collect();
        let e = encode_q8_0(&v);
        assert_eq!((e.ty, e.data.len()), (GgmlType::Q8_0, 3 * 34));
        let mut back = vec![0f32; 96];
        dequantize_into(GgmlType::Q8_0, &e.data, &mut back).unwrap();
        let worst = back
            .iter()
            .zip(&v)
            .map(|(a, b)| (a - b).abs())
            .fold(0f32, f32::max);
        assert_eq!(
            worst, e.max_abs_error,
            "the reported error is the measured one"
        );
        // Half a step of the largest block's grid (max |x| ≈ 2.8 / 127), plus the f16 rounding of d.
        assert!(worst <= 2.83 / 127.0 * 0.5 * 1.01, "{worst}");
        assert!(encode_q8_0(&[0.0; 32]).max_abs_error == 0.0);
    }

    #[test]
    fn floats_round_trip_with_their_error() {
        let v = [1.0f32, -0.1, 1.234_567, 65504.0];
        assert_eq!(encode_float(&v, GgmlType::F32).max_abs_error, 0.0);
        let h = encode_float(&v, GgmlType::F16);
        assert_eq!(h.data.len(), 8);
        assert!(h.max_abs_error > 0.0 && h.max_abs_error < 1e-3);
        // bf16 keeps 8 significant bits: half an ulp is 2^-9 of the value (65504 → 65536).
        let b = encode_float(&v, GgmlType::BF16).max_abs_error;
        assert!(b > 0.0 && b <= 65504.0 / 512.0, "{b}");
    }
}
