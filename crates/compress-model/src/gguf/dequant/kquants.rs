//! The 256-element k-quant super-block formats: Q2_K, Q3_K, Q4_K, Q5_K and Q6_K.
//!
//! Layouts follow `ggml-common.h`; the loops mirror `dequantize_row_q*_K` in
//! `ggml-quants.c` including the order of every f32 operation, so results are
//! bit-identical.

use super::f16_at;

/// Elements per k-quant super-block (`QK_K`).
pub const QK_K: usize = 256;
/// Bytes per Q2_K block: `{ u8 scales[16]; u8 qs[64]; f16 d; f16 dmin; }`.
pub const Q2_K_BYTES: usize = 84;
/// Bytes per Q3_K block: `{ u8 hmask[32]; u8 qs[64]; u8 scales[12]; f16 d; }`.
pub const Q3_K_BYTES: usize = 110;
/// Bytes per Q4_K block: `{ f16 d; f16 dmin; u8 scales[12]; u8 qs[128]; }`.
pub const Q4_K_BYTES: usize = 144;
/// Bytes per Q5_K block: `{ f16 d; f16 dmin; u8 scales[12]; u8 qh[32]; u8 qs[128]; }`.
pub const Q5_K_BYTES: usize = 176;
/// Bytes per Q6_K block: `{ u8 ql[128]; u8 qh[64]; i8 scales[16]; f16 d; }`.
pub const Q6_K_BYTES: usize = 210;

/// Q2_K: 16 sub-blocks of 16, each with a 4-bit scale and 4-bit min:
/// `y = d * (sc & 15) * q - dmin * (sc >> 4)` with 2-bit `q`.
pub fn dequantize_row_q2_k(src: &[u8], dst: &mut [f32]) {
    for (x, y) in src.chunks_exact(Q2_K_BYTES).zip(dst.chunks_exact_mut(QK_K)) {
        let scales = &x[0..16];
        let qs = &x[16..80];
        let d = f16_at(x, 80);
        let min = f16_at(x, 82);
        let mut is = 0;
        let mut out = y.iter_mut();
        for q in qs.chunks_exact(32) {
            for shift in [0u32, 2, 4, 6] {
                for half in q.chunks_exact(16) {
                    let sc = scales[is];
                    is += 1;
                    let dl = d * (sc & 0xF) as f32;
                    let ml = min * (sc >> 4) as f32;
                    for (&b, o) in half.iter().zip(out.by_ref()) {
                        *o = dl * ((b >> shift) & 3) as i8 as f32 - ml;
                    }
                }
            }
        }
    }
}

/// Unpacks the twelve bytes of Q3_K scales into sixteen 6-bit values minus 32.
fn q3_k_scales(s: &[u8]) -> [i8; 16] {
    let mut out = [0i8; 16];
    for (k, o) in out.iter_mut().enumerate() {
        let low = if k < 8 { s[k] & 0x0F } else { s[k - 8] >> 4 };
        let high = (s[8 + k % 4] >> (2 * (k / 4))) & 3;
        *o = (low | (high << 4)) as i8 - 32;
    }
    out
}

/// Q3_K: 16 sub-blocks of 16 with 6-bit signed scales; 3-bit values are two low bits
/// from `qs` and a high bit from `hmask` that, when *clear*, subtracts 4.
pub fn dequantize_row_q3_k(src: &[u8], dst: &mut [f32]) {
    for (x, y) in src.chunks_exact(Q3_K_BYTES).zip(dst.chunks_exact_mut(QK_K)) {
        let hm = &x[0..32];
        let qs = &x[32..96];
        let scales = q3_k_scales(&x[96..108]);
        let d_all = f16_at(x, 108);
        let mut is = 0;
        let mut yi = 0;
        let mut m = 1u8;
        for q in qs.chunks_exact(32) {
            for shift in [0u32, 2, 4, 6] {
                for h in 0..2 {
                    let dl = d_all * (scales[is] as i32) as f32;
                    is += 1;
                    for l in 16 * h..16 * h + 16 {
                        let low = ((q[l] >> shift) & 3) as i8;
                        let sub = if hm[l] & m != 0 { 0 } else { 4 };
                        y[yi] = dl * (low - sub) as f32;
                        yi += 1;
                    }
                }
                m = m.wrapping_shl(1);
            }
        }
    }
}

/// Unpacks 6-bit scale and min number `j` (0..8) of a Q4_K/Q5_K block
/// (`get_scale_min_k4` in ggml).
#[inline]
fn scale_min_k4(j: usize, q: &[u8]) -> (u8, u8) {
    if j < 4 {
        (q[j] & 63, q[j + 4] & 63)
    } else {
        (
            (q[j + 4] & 0xF) | ((q[j - 4] >> 6) << 4),
            (q[j + 4] >> 4) | ((q[j] >> 6) << 4),
        )
    }
}

/// Q4_K: 8 sub-blocks of 32 with 6-bit scales and mins:
/// `y = (d * sc) * q - dmin * m` with 4-bit `q`.
pub fn dequantize_row_q4_k(src: &[u8], dst: &mut [f32]) {
    for (x, y) in src.chunks_exact(Q4_K_BYTES).zip(dst.chunks_exact_mut(QK_K)) {
        let d = f16_at(x, 0);
        let min = f16_at(x, 2);
        let scales = &x[4..16];
        let qs = &x[16..144];
        for (j, (q, yy)) in qs.chunks_exact(32).zip(y.chunks_exact_mut(64)).enumerate() {
            let (sc1, m1) = scale_min_k4(2 * j, scales);
            let (sc2, m2) = scale_min_k4(2 * j + 1, scales);
            let (d1, m1) = (d * sc1 as f32, min * m1 as f32);
            let (d2, m2) = (d * sc2 as f32, min * m2 as f32);
            let (lo, hi) = yy.split_at_mut(32);
            for ((&b, a), c) in q.iter().zip(lo).zip(hi) {
                *a = d1 * (b & 0xF) as f32 - m1;
                *c = d2 * (b >> 4) as f32 - m2;
            }
        }
    }
}

/// Q5_K: like Q4_K with a fifth bit per value from `qh` (bit `2j` for the low
/// nibbles of group `j`, bit `2j + 1` for the high nibbles) adding 16.
pub fn dequantize_row_q5_k(src: &[u8], dst: &mut [f32]) {
    for (x, y) in src.chunks_exact(Q5_K_BYTES).zip(dst.chunks_exact_mut(QK_K)) {
        let d = f16_at(x, 0);
        let min = f16_at(x, 2);
        let scales = &x[4..16];
        let qh = &x[16..48];
        let ql = &x[48..176];
        for (j, (q, yy)) in ql.chunks_exact(32).zip(y.chunks_exact_mut(64)).enumerate() {
            let (sc1, m1) = scale_min_k4(2 * j, scales);
            let (sc2, m2) = scale_min_k4(2 * j + 1, scales);
            let (d1, m1) = (d * sc1 as f32, min * m1 as f32);
            let (d2, m2) = (d * sc2 as f32, min * m2 as f32);
            let u1 = 1u8 << (2 * j);
            let u2 = 2u8 << (2 * j);
            let (lo, hi) = yy.split_at_mut(32);
            for (((&b, &h), a), c) in q.iter().zip(qh).zip(lo).zip(hi) {
                let v1 = (b & 0xF) + if h & u1 != 0 { 16 } else { 0 };
                let v2 = (b >> 4) + if h & u2 != 0 { 16 } else { 0 };
                *a = d1 * v1 as f32 - m1;
                *c = d2 * v2 as f32 - m2;
            }
        }
    }
}

/// Q6_K: 16 sub-blocks of 16 with signed 8-bit scales; 6-bit values are a nibble
/// from `ql` and two bits from `qh`, minus 32: `y = (d * sc) * q`.
pub fn dequantize_row_q6_k(src: &[u8], dst: &mut [f32]) {
    for (x, y) in src.chunks_exact(Q6_K_BYTES).zip(dst.chunks_exact_mut(QK_K)) {
        let d = f16_at(x, 208);
        let sc = &x[192..208];
        for (n, yy) in y.chunks_exact_mut(128).enumerate() {
            let ql = &x[64 * n..64 * n + 64];
            let qh = &x[128 + 32 * n..128 + 32 * n + 32];
            let sc = &sc[8 * n..8 * n + 8];
            for l in 0..32 {
                let is = l / 16;
                let q1 = ((ql[l] & 0xF) | ((qh[l] & 3) << 4)) as i8 - 32;
                let q2 = ((ql[l + 32] & 0xF) | (((qh[l] >> 2) & 3) << 4)) as i8 - 32;
                let q3 = ((ql[l] >> 4) | (((qh[l] >> 4) & 3) << 4)) as i8 - 32;
                let q4 = ((ql[l + 32] >> 4) | (((qh[l] >> 6) & 3) << 4)) as i8 - 32;
                yy[l] = d * (sc[is] as i8) as f32 * q1 as f32;
                yy[l + 32] = d * (sc[is + 2] as i8) as f32 * q2 as f32;
                yy[l + 64] = d * (sc[is + 4] as i8) as f32 * q3 as f32;
                yy[l + 96] = d * (sc[is + 6] as i8) as f32 * q4 as f32;
            }
        }
    }
}
