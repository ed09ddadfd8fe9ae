//! The 32-element "legacy" block formats: Q4_0, Q4_1, Q5_0, Q5_1 and Q8_0.
//!
//! Layouts follow `ggml-common.h`; arithmetic follows `dequantize_row_*` in
//! `ggml-quants.c` operation for operation (f32 multiply, then f32 add), so results
//! are bit-identical.

use super::f16_at;

/// Elements per legacy block (`QK4_0` = `QK4_1` = `QK5_0` = `QK5_1` = `QK8_0`).
pub const QK: usize = 32;
/// Bytes per Q4_0 block: `{ f16 d; u8 qs[16]; }`.
pub const Q4_0_BYTES: usize = 18;
/// Bytes per Q4_1 block: `{ f16 d; f16 m; u8 qs[16]; }`.
pub const Q4_1_BYTES: usize = 20;
/// Bytes per Q5_0 block: `{ f16 d; u8 qh[4]; u8 qs[16]; }`.
pub const Q5_0_BYTES: usize = 22;
/// Bytes per Q5_1 block: `{ f16 d; f16 m; u8 qh[4]; u8 qs[16]; }`.
pub const Q5_1_BYTES: usize = 24;
/// Bytes per Q8_0 block: `{ f16 d; i8 qs[32]; }`.
pub const Q8_0_BYTES: usize = 34;

/// Q4_0: `y[j] = (lo_nibble(qs[j]) - 8) * d`, `y[j + 16] = (hi_nibble(qs[j]) - 8) * d`.
pub fn dequantize_row_q4_0(src: &[u8], dst: &mut [f32]) {
    for (x, y) in src.chunks_exact(Q4_0_BYTES).zip(dst.chunks_exact_mut(QK)) {
        let d = f16_at(x, 0);
        let qs = &x[2..18];
        let (lo, hi) = y.split_at_mut(QK / 2);
        for ((&q, a), b) in qs.iter().zip(lo).zip(hi) {
            *a = ((q & 0x0F) as i32 - 8) as f32 * d;
            *b = ((q >> 4) as i32 - 8) as f32 * d;
        }
    }
}

/// Q4_1: `y[j] = lo_nibble(qs[j]) * d + m`, `y[j + 16] = hi_nibble(qs[j]) * d + m`.
pub fn dequantize_row_q4_1(src: &[u8], dst: &mut [f32]) {
    for (x, y) in src.chunks_exact(Q4_1_BYTES).zip(dst.chunks_exact_mut(QK)) {
        let d = f16_at(x, 0);
        let m = f16_at(x, 2);
        let qs = &x[4..20];
        let (lo, hi) = y.split_at_mut(QK / 2);
        for ((&q, a), b) in qs.iter().zip(lo).zip(hi) {
            *a = (q & 0x0F) as f32 * d + m;
            *b = (q >> 4) as f32 * d + m;
        }
    }
}

/// Reads the 32 high bits of a Q5 block as a little-endian u32.
#[inline]
fn qh_at(x: &[u8], i: usize) -> u32 {
    u32::from_le_bytes([x[i], x[i + 1], x[i + 2], x[i + 3]])
}

/// Q5_0: 5-bit value = nibble | (bit j of qh) << 4; `y = (value - 16) * d`.
pub fn dequantize_row_q5_0(src: &[u8], dst: &mut [f32]) {
    for (x, y) in src.chunks_exact(Q5_0_BYTES).zip(dst.chunks_exact_mut(QK)) {
        let d = f16_at(x, 0);
        let qh = qh_at(x, 2);
        let qs = &x[6..22];
        for (j, &q) in qs.iter().enumerate() {
            let xh0 = (((qh >> j) << 4) & 0x10) as u8;
            let xh1 = ((qh >> (j + 12)) & 0x10) as u8;
            let x0 = ((q & 0x0F) | xh0) as i32 - 16;
            let x1 = ((q >> 4) | xh1) as i32 - 16;
            y[j] = x0 as f32 * d;
            y[j + QK / 2] = x1 as f32 * d;
        }
    }
}

/// Q5_1: 5-bit value = nibble | (bit j of qh) << 4; `y = value * d + m`.
pub fn dequantize_row_q5_1(src: &[u8], dst: &mut [f32]) {
    for (x, y) in src.chunks_exact(Q5_1_BYTES).zip(dst.chunks_exact_mut(QK)) {
        let d = f16_at(x, 0);
        let m = f16_at(x, 2);
        let qh = qh_at(x, 4);
        let qs = &x[8..24];
        for (j, &q) in qs.iter().enumerate() {
            let xh0 = (((qh >> j) << 4) & 0x10) as u8;
            let xh1 = ((qh >> (j + 12)) & 0x10) as u8;
            let x0 = (q & 0x0F) | xh0;
            let x1 = (q >> 4) | xh1;
            y[j] = x0 as f32 * d + m;
            y[j + QK / 2] = x1 as f32 * d + m;
        }
    }
}

/// Q8_0: `y[j] = qs[j] as i8 * d`.
pub fn dequantize_row_q8_0(src: &[u8], dst: &mut [f32]) {
    for (x, y) in src.chunks_exact(Q8_0_BYTES).zip(dst.chunks_exact_mut(QK)) {
        let d = f16_at(x, 0);
        for (&q, out) in x[2..34].iter().zip(y.iter_mut()) {
            *out = q as i8 as f32 * d;
        }
    }
}
