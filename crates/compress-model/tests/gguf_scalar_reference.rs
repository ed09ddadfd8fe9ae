//! Property tests: our block dequantizers against per-element scalar formulas written
//! directly from the ggml block layouts (value of element `i` computed on its own),
//! with an independent f16 decoder. Comparison is bit-exact.

use compress_model::gguf::{dequantize_into, GgmlType};
use proptest::prelude::*;

/// IEEE half -> f32 from first principles (not the `half` crate).
fn f16_ref(bits: u16) -> f32 {
    let sign = if bits & 0x8000 != 0 { -1.0f64 } else { 1.0 };
    let exp = i32::from((bits >> 10) & 0x1F);
    let man = f64::from(bits & 0x3FF);
    let mag = match exp {
        0 => man * 2f64.powi(-24),
        31 if man == 0.0 => f64::INFINITY,
        31 => f64::NAN,
        e => (1.0 + man / 1024.0) * 2f64.powi(e - 15),
    };
    (sign * mag) as f32
}

/// bfloat16 -> f32 from first principles (NaNs checked separately).
fn bf16_ref(bits: u16) -> f32 {
    let sign = if bits & 0x8000 != 0 { -1.0f64 } else { 1.0 };
    let exp = i32::from((bits >> 7) & 0xFF);
    let man = f64::from(bits & 0x7F);
    let mag = match exp {
        0 => man * 2f64.powi(-133),
        255 if man == 0.0 => f64::INFINITY,
        255 => f64::NAN,
        e => (1.0 + man / 128.0) * 2f64.powi(e - 127),
    };
    (sign * mag) as f32
}

fn h(x: &[u8], at: usize) -> f32 {
    f16_ref(u16::from_le_bytes([x[at], x[at + 1]]))
}

/// 4-bit value `i` of a 32-element block whose nibbles start at `qs`:
/// elements 0..16 are low nibbles, 16..32 high nibbles of the same 16 bytes.
fn nib32(x: &[u8], qs: usize, i: usize) -> u8 {
    if i < 16 {
        x[qs + i] & 0xF
    } else {
        x[qs + i - 16] >> 4
    }
}

fn q4_0(x: &[u8], i: usize) -> f32 {
    (i32::from(nib32(x, 2, i)) - 8) as f32 * h(x, 0)
}
fn q4_1(x: &[u8], i: usize) -> f32 {
    f32::from(nib32(x, 4, i)) * h(x, 0) + h(x, 2)
}
fn q5_0(x: &[u8], i: usize) -> f32 {
    let qh = u32::from_le_bytes([x[2], x[3], x[4], x[5]]);
    let v = i32::from(nib32(x, 6, i)) | (((qh >> i) & 1) as i32) << 4;
    (v - 16) as f32 * h(x, 0)
}
fn q5_1(x: &[u8], i: usize) -> f32 {
    let qh = u32::from_le_bytes([x[4], x[5], x[6], x[7]]);
    let v = u32::from(nib32(x, 8, i)) | ((qh >> i) & 1) << 4;
    v as f32 * h(x, 0) + h(x, 2)
}
fn q8_0(x: &[u8], i: usize) -> f32 {
    f32::from(x[2 + i] as i8) * h(x, 0)
}

/// Q2_K/Q3_K 2-bit planes: element `i` lives in `qs` byte `32 * (i / 128) + i % 32`,
/// bits `2j..2j+2` with `j = (i % 128) / 32`. Returns (byte index, j).
fn plane(i: usize) -> (usize, usize) {
    let n = i / 128;
    let j = (i % 128) / 32;
    (32 * n + i % 32, j)
}

fn q2_k(x: &[u8], i: usize) -> f32 {
    let (b, j) = plane(i);
    let q = (x[16 + b] >> (2 * j)) & 3;
    let sc = x[i / 16];
    let dl = h(x, 80) * f32::from(sc & 0xF);
    let ml = h(x, 82) * f32::from(sc >> 4);
    dl * f32::from(q) - ml
}

fn q3_k(x: &[u8], i: usize) -> f32 {
    let (b, j) = plane(i);
    let low = i32::from((x[32 + b] >> (2 * j)) & 3);
    // hmask bit (4n + j) of byte i % 32 set => no offset, clear => subtract 4.
    let hbit = (x[i % 32] >> (4 * (i / 128) + j)) & 1;
    let q = low - if hbit == 1 { 0 } else { 4 };
    // 16 six-bit scales: low nibbles in bytes 96..104 (low then high nibble halves),
    // 2-bit high parts in bytes 104..108 (bits 2*(s/4) of byte s % 4).
    let s = i / 16;
    let sc = &x[96..108];
    let low4 = if s < 8 { sc[s] & 0xF } else { sc[s - 8] >> 4 };
    let hi2 = (sc[8 + s % 4] >> (2 * (s / 4))) & 3;
    let scale = i32::from(low4 | (hi2 << 4)) - 32;
    (h(x, 108) * scale as f32) * q as f32
}

/// Scale and min of sub-block `k` (0..8) from the 12 packed bytes (see gguf-py's
/// diagram: bytes 0-3 `..AAAAAA` scales, 4-7 `..aaaaaa` mins, 8-11 `eeeeEEEE`,
/// with the two top bits of scales/mins 4..8 in the top bits of bytes 0-3 / 4-7).
fn k4_scale_min(s: &[u8], k: usize) -> (u8, u8) {
    if k < 4 {
        (s[k] & 0x3F, s[4 + k] & 0x3F)
    } else {
        let sc = (s[8 + k - 4] & 0xF) | ((s[k - 4] >> 6) << 4);
        let mn = (s[8 + k - 4] >> 4) | ((s[k] >> 6) << 4);
        (sc, mn)
    }
}

/// 4-bit value `i` of a 256-element k-quant: groups of 64 share 32 bytes,
/// first 32 elements low nibbles, next 32 high nibbles.
fn nib256(x: &[u8], qs: usize, i: usize) -> u8 {
    let b = x[qs + 32 * (i / 64) + i % 32];
    if i % 64 < 32 {
        b & 0xF
    } else {
        b >> 4
    }
}

fn q4_k(x: &[u8], i: usize) -> f32 {
    let (sc, mn) = k4_scale_min(&x[4..16], i / 32);
    (h(x, 0) * f32::from(sc)) * f32::from(nib256(x, 16, i)) - h(x, 2) * f32::from(mn)
}

fn q5_k(x: &[u8], i: usize) -> f32 {
    let (sc, mn) = k4_scale_min(&x[4..16], i / 32);
    let hbit = (x[16 + i % 32] >> (i / 32)) & 1;
    let q = nib256(x, 48, i) + 16 * hbit;
    (h(x, 0) * f32::from(sc)) * f32::from(q) - h(x, 2) * f32::from(mn)
}

fn q6_k(x: &[u8], i: usize) -> f32 {
    let (n, r) = (i / 128, i % 128);
    let (k, l) = (r / 32, r % 32);
    let lb = x[64 * n + 32 * (k % 2) + l];
    let low4 = if k < 2 { lb & 0xF } else { lb >> 4 };
    let hi2 = (x[128 + 32 * n + l] >> (2 * k)) & 3;
    let q = i32::from(low4 | (hi2 << 4)) - 32;
    let sc = x[192 + i / 16] as i8;
    (h(x, 208) * f32::from(sc)) * q as f32
}

type Formula = fn(&[u8], usize) -> f32;

/// Byte offsets of f16 scale fields, used to force finite scales.
fn spec(ty: GgmlType) -> (Formula, &'static [usize]) {
    use GgmlType as T;
    match ty {
        T::Q4_0 => (q4_0, &[0]),
        T::Q4_1 => (q4_1, &[0, 2]),
        T::Q5_0 => (q5_0, &[0]),
        T::Q5_1 => (q5_1, &[0, 2]),
        T::Q8_0 => (q8_0, &[0]),
        T::Q2_K => (q2_k, &[80, 82]),
        T::Q3_K => (q3_k, &[108]),
        T::Q4_K => (q4_k, &[0, 2]),
        T::Q5_K => (q5_k, &[0, 2]),
        T::Q6_K => (q6_k, &[208]),
        _ => unreachable!(),
    }
}

const QUANT_TYPES: [GgmlType; 10] = [
    GgmlType::Q4_0,
    GgmlType::Q4_1,
    GgmlType::Q5_0,
    GgmlType::Q5_1,
    GgmlType::Q8_0,
    GgmlType::Q2_K,
    GgmlType::Q3_K,
    GgmlType::Q4_K,
    GgmlType::Q5_K,
    GgmlType::Q6_K,
];

/// Runs our dequantizer on `bytes` and compares every element with the formula.
/// With `finite_scales` the f16 scale fields are first made finite and the check is
/// bit-exact; otherwise any NaN must be matched by a NaN.
fn check(ty: GgmlType, mut bytes: Vec<u8>, finite_scales: bool) -> Result<(), TestCaseError> {
    let (formula, f16_fields) = spec(ty);
    let (bs, ts) = (ty.block_size() as usize, ty.type_size() as usize);
    let n_blocks = bytes.len() / ts;
    bytes.truncate(n_blocks * ts);
    if finite_scales {
        for blk in bytes.chunks_exact_mut(ts) {
            for &off in f16_fields {
                if blk[off + 1] & 0x7C == 0x7C {
                    blk[off + 1] &= !0x04; // clear one exponent bit: finite
                }
            }
        }
    }
    let mut out = vec![0f32; n_blocks * bs];
    dequantize_into(ty, &bytes, &mut out).unwrap();
    for (b, blk) in bytes.chunks_exact(ts).enumerate() {
        for i in 0..bs {
            let (got, want) = (out[b * bs + i], formula(blk, i));
            let same = got.to_bits() == want.to_bits()
                || (!finite_scales && got.is_nan() && want.is_nan());
            prop_assert!(
                same,
                "{ty} block {b} elem {i}: ours {got:e} vs formula {want:e}"
            );
        }
    }
    Ok(())
}

fn blocks_of(ty: GgmlType) -> impl Strategy<Value = Vec<u8>> {
    let ts = ty.type_size() as usize;
    (1usize..4).prop_flat_map(move |n| prop::collection::vec(any::<u8>(), n * ts))
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(200))]

    #[test]
    fn legacy_types_match_scalar_formula(
        t in 0usize..5,
        seed in prop::collection::vec(any::<u8>(), 3 * 34),
        finite in any::<bool>(),
    ) {
        let ty = QUANT_TYPES[t];
        let ts = ty.type_size() as usize;
        check(ty, seed[..seed.len() / ts * ts].to_vec(), finite)?;
    }

    #[test]
    fn q2_k_matches_scalar_formula(b in blocks_of(GgmlType::Q2_K), f in any::<bool>()) {
        check(GgmlType::Q2_K, b, f)?;
    }

    #[test]
    fn q3_k_matches_scalar_formula(b in blocks_of(GgmlType::Q3_K), f in any::<bool>()) {
        check(GgmlType::Q3_K, b, f)?;
    }

    #[test]
    fn q4_k_matches_scalar_formula(b in blocks_of(GgmlType::Q4_K), f in any::<bool>()) {
        check(GgmlType::Q4_K, b, f)?;
    }

    #[test]
    fn q5_k_matches_scalar_formula(b in blocks_of(GgmlType::Q5_K), f in any::<bool>()) {
        check(GgmlType::Q5_K, b, f)?;
    }

    #[test]
    fn q6_k_matches_scalar_formula(b in blocks_of(GgmlType::Q6_K), f in any::<bool>()) {
        check(GgmlType::Q6_K, b, f)?;
    }

    #[test]
    fn f32_is_a_bit_copy(words in prop::collection::vec(any::<u32>(), 0..64)) {
        let bytes: Vec<u8> = words.iter().flat_map(|w| w.to_le_bytes()).collect();
        let mut out = vec![0f32; words.len()];
        dequantize_into(GgmlType::F32, &bytes, &mut out).unwrap();
        prop_assert!(out.iter().zip(&words).all(|(o, w)| o.to_bits() == *w));
    }
}

/// Every legacy type gets its own deterministic coverage too (the proptest above
/// picks among them at random).
#[test]
fn every_quant_type_all_zero_and_all_ones_blocks() {
    for ty in QUANT_TYPES {
        let ts = ty.type_size() as usize;
        for fill in [0x00u8, 0xFF, 0x55, 0xAA] {
            check(ty, vec![fill; 2 * ts], true).unwrap();
            check(ty, vec![fill; 2 * ts], false).unwrap();
        }
    }
}

/// All 65536 f16 patterns: exact for non-NaN, NaN for NaN.
#[test]
fn f16_exhaustive() {
    let bytes: Vec<u8> = (0..=u16::MAX).flat_map(u16::to_le_bytes).collect();
    let mut out = vec![0f32; 65536];
    dequantize_into(GgmlType::F16, &bytes, &mut out).unwrap();
    for (bits, got) in (0..=u16::MAX).zip(out) {
        let want = f16_ref(bits);
        assert!(
            got.to_bits() == want.to_bits() || (got.is_nan() && want.is_nan()),
            "f16 {bits:#06x}: {got:e} vs {want:e}"
        );
    }
}

/// All 65536 bf16 patterns: exact for non-NaN; NaN payloads kept bit for bit (ggml).
#[test]
fn bf16_exhaustive() {
    let bytes: Vec<u8> = (0..=u16::MAX).flat_map(u16::to_le_bytes).collect();
    let mut out = vec![0f32; 65536];
    dequantize_into(GgmlType::BF16, &bytes, &mut out).unwrap();
    for (bits, got) in (0..=u16::MAX).zip(out) {
        let want = bf16_ref(bits);
        if want.is_nan() {
            assert_eq!(got.to_bits(), u32::from(bits) << 16, "bf16 NaN {bits:#06x}");
        } else {
            assert_eq!(got.to_bits(), want.to_bits(), "bf16 {bits:#06x}");
        }
    }
}
