//! Plain floating-point tensor types: F32, F16 and BF16.

/// Copies little-endian f32 values (4 bytes each).
pub fn dequantize_row_f32(src: &[u8], dst: &mut [f32]) {
    for (x, y) in src.chunks_exact(4).zip(dst.iter_mut()) {
        *y = f32::from_le_bytes([x[0], x[1], x[2], x[3]]);
    }
}

/// Widens little-endian IEEE half floats (2 bytes each) to f32 (exact; NaNs stay NaN).
pub fn dequantize_row_f16(src: &[u8], dst: &mut [f32]) {
    for (x, y) in src.chunks_exact(2).zip(dst.iter_mut()) {
        *y = half::f16::from_le_bytes([x[0], x[1]]).to_f32();
    }
}

/// Widens little-endian bfloat16 values (2 bytes each) to f32 by a 16-bit shift,
/// exactly like `GGML_BF16_TO_FP32` (NaN payloads are kept bit for bit; `half`'s
/// conversion would set the quiet bit, so it is not used here).
pub fn dequantize_row_bf16(src: &[u8], dst: &mut [f32]) {
    for (x, y) in src.chunks_exact(2).zip(dst.iter_mut()) {
        *y = f32::from_bits(u32::from(u16::from_le_bytes([x[0], x[1]])) << 16);
    }
}
