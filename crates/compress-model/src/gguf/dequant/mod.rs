//! Conversion of ggml tensor data to f32, bit-exact with ggml's `dequantize_row_*`.
//!
//! Each per-type function takes a byte slice of whole blocks and writes
//! `block_size` values per block into the output; it converts
//! `min(src.len() / type_size, dst.len() / block_size)` blocks and never panics.
//! [`dequantize_into`] is the checked entry point that validates both lengths.

pub mod float;
pub mod kquants;
pub mod legacy;

use super::error::GgufError;
use super::types::GgmlType;

/// Decodes the little-endian IEEE half float at `b[i..i + 2]` (`GGML_FP16_TO_FP32`).
#[inline]
pub(crate) fn f16_at(b: &[u8], i: usize) -> f32 {
    match b.get(i..i + 2) {
        Some(&[lo, hi]) => half::f16::from_le_bytes([lo, hi]).to_f32(),
        _ => 0.0,
    }
}

/// Dequantizes `src` (whole blocks of type `ty`) into `dst`.
///
/// `dst.len()` must be a multiple of the type's block size and `src.len()` must be
/// exactly the matching number of bytes, else [`GgufError::BufferSize`]. A type this
/// module cannot convert gives [`GgufError::UnsupportedType`].
pub fn dequantize_into(ty: GgmlType, src: &[u8], dst: &mut [f32]) -> Result<(), GgufError> {
    use GgmlType as T;
    if !ty.can_dequantize() {
        return Err(GgufError::UnsupportedType {
            name: "(raw buffer)".into(),
            ty,
        });
    }
    let expected = ty.bytes_for(dst.len() as u64);
    if expected != Some(src.len() as u64) {
        return Err(GgufError::BufferSize {
            ty,
            bytes: src.len(),
            elements: dst.len(),
            block_size: ty.block_size(),
            type_size: ty.type_size(),
        });
    }
    match ty {
        T::F32 => float::dequantize_row_f32(src, dst),
        T::F16 => float::dequantize_row_f16(src, dst),
        T::BF16 => float::dequantize_row_bf16(src, dst),
        T::Q4_0 => legacy::dequantize_row_q4_0(src, dst),
        T::Q4_1 => legacy::dequantize_row_q4_1(src, dst),
        T::Q5_0 => legacy::dequantize_row_q5_0(src, dst),
        T::Q5_1 => legacy::dequantize_row_q5_1(src, dst),
        T::Q8_0 => legacy::dequantize_row_q8_0(src, dst),
        T::Q2_K => kquants::dequantize_row_q2_k(src, dst),
        T::Q3_K => kquants::dequantize_row_q3_k(src, dst),
        T::Q4_K => kquants::dequantize_row_q4_k(src, dst),
        T::Q5_K => kquants::dequantize_row_q5_k(src, dst),
        T::Q6_K => kquants::dequantize_row_q6_k(src, dst),
        _ => {
            return Err(GgufError::UnsupportedType {
                name: "(raw buffer)".into(),
                ty,
            })
        }
    }
    Ok(())
}
