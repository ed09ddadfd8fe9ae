//! ggml tensor types and tensor descriptors.

use std::fmt;

/// Number of elements in a k-quant super-block (`QK_K` in ggml).
pub const QK_K: u64 = 256;

macro_rules! ggml_types {
    ($($(#[doc = $doc:literal])* $v:ident = $id:literal, $bs:expr, $ts:expr;)*) => {
        /// A ggml tensor element type, with its on-disk id (`enum ggml_type` in `ggml.h`).
        ///
        /// Ids 4, 5, 31–33 and 36–38 belonged to removed types and are unknown here.
        #[allow(non_camel_case_types)]
        #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
        #[non_exhaustive]
        pub enum GgmlType {
            $($(#[doc = $doc])* $v,)*
        }

        impl GgmlType {
            /// Every known type, in id order.
            pub const ALL: &'static [GgmlType] = &[$(GgmlType::$v,)*];

            /// Looks a type up by its ggml id; `None` for ids this reader does not know.
            pub fn from_id(id: u32) -> Option<GgmlType> {
                match id {
                    $($id => Some(GgmlType::$v),)*
                    _ => None,
                }
            }

            /// The ggml type id as stored in GGUF tensor infos.
            pub fn id(self) -> u32 {
                match self {
                    $(GgmlType::$v => $id,)*
                }
            }

            /// The ggml name, e.g. `"Q4_K"`.
            pub fn name(self) -> &'static str {
                match self {
                    $(GgmlType::$v => stringify!($v),)*
                }
            }

            /// Number of elements per block (1 for plain scalar types).
            pub fn block_size(self) -> u64 {
                match self {
                    $(GgmlType::$v => $bs,)*
                }
            }

            /// Number of bytes per block (`sizeof(block_xxx)` in ggml).
            pub fn type_size(self) -> u64 {
                match self {
                    $(GgmlType::$v => $ts,)*
                }
            }
        }
    };
}

ggml_types! {
    /// 32-bit IEEE float.
    F32 = 0, 1, 4;
    /// 16-bit IEEE half float.
    F16 = 1, 1, 2;
    /// 4-bit, 32-element blocks with an f16 scale, zero point 8.
    Q4_0 = 2, 32, 2 + 16;
    /// 4-bit, 32-element blocks with an f16 scale and an f16 minimum.
    Q4_1 = 3, 32, 2 + 2 + 16;
    /// 5-bit, 32-element blocks with an f16 scale, zero point 16.
    Q5_0 = 6, 32, 2 + 4 + 16;
    /// 5-bit, 32-element blocks with an f16 scale and an f16 minimum.
    Q5_1 = 7, 32, 2 + 2 + 4 + 16;
    /// 8-bit, 32-element blocks with an f16 scale.
    Q8_0 = 8, 32, 2 + 32;
    /// 8-bit activation format: `{ f16 d; f16 s; i8 qs[32] }` (36 bytes, as in ggml).
    Q8_1 = 9, 32, 2 + 2 + 32;
    /// 2-bit k-quant (256-element super-blocks).
    Q2_K = 10, QK_K, 16 + 64 + 2 + 2;
    /// 3-bit k-quant.
    Q3_K = 11, QK_K, 32 + 64 + 12 + 2;
    /// 4-bit k-quant.
    Q4_K = 12, QK_K, 2 + 2 + 12 + 128;
    /// 5-bit k-quant.
    Q5_K = 13, QK_K, 2 + 2 + 12 + 32 + 128;
    /// 6-bit k-quant.
    Q6_K = 14, QK_K, 128 + 64 + 16 + 2;
    /// 8-bit k-quant (activation format).
    Q8_K = 15, QK_K, 4 + 256 + 32;
    /// i-quant, 2.06 bits per weight.
    IQ2_XXS = 16, QK_K, 2 + 64;
    /// i-quant, 2.31 bits per weight.
    IQ2_XS = 17, QK_K, 2 + 64 + 8;
    /// i-quant, 3.06 bits per weight.
    IQ3_XXS = 18, QK_K, 2 + 64 + 32;
    /// i-quant, 1.56 bits per weight.
    IQ1_S = 19, QK_K, 2 + 32 + 16;
    /// i-quant, non-linear 4-bit, 32-element blocks.
    IQ4_NL = 20, 32, 2 + 16;
    /// i-quant, 3.44 bits per weight.
    IQ3_S = 21, QK_K, 2 + 64 + 32 + 8 + 4;
    /// i-quant, 2.5 bits per weight.
    IQ2_S = 22, QK_K, 2 + 64 + 16;
    /// i-quant, non-linear 4-bit, 256-element super-blocks.
    IQ4_XS = 23, QK_K, 2 + 2 + 128 + 4;
    /// 8-bit signed integer.
    I8 = 24, 1, 1;
    /// 16-bit signed integer.
    I16 = 25, 1, 2;
    /// 32-bit signed integer.
    I32 = 26, 1, 4;
    /// 64-bit signed integer.
    I64 = 27, 1, 8;
    /// 64-bit IEEE float.
    F64 = 28, 1, 8;
    /// i-quant, 1.75 bits per weight.
    IQ1_M = 29, QK_K, 32 + 16 + 8;
    /// bfloat16.
    BF16 = 30, 1, 2;
    /// Ternary, 1.69 bits per weight.
    TQ1_0 = 34, QK_K, 2 + 52;
    /// Ternary, 2.06 bits per weight.
    TQ2_0 = 35, QK_K, 2 + 64;
    /// Microscaling FP4 (e2m1 values with an e8m0 scale per 32 elements).
    MXFP4 = 39, 32, 1 + 16;
    /// NVIDIA FP4 (64-element blocks).
    NVFP4 = 40, 64, 4 + 32;
    /// 1-bit, 128-element blocks.
    Q1_0 = 41, 128, 2 + 16;
}

impl GgmlType {
    /// Whether the type is block-quantized (block size > 1).
    pub fn is_quantized(self) -> bool {
        self.block_size() > 1
    }

    /// Whether [`crate::gguf::dequant::dequantize_into`] can convert this type to f32.
    pub fn can_dequantize(self) -> bool {
        use GgmlType::*;
        matches!(
            self,
            F32 | F16 | BF16 | Q4_0 | Q4_1 | Q5_0 | Q5_1 | Q8_0 | Q2_K | Q3_K | Q4_K | Q5_K | Q6_K
        )
    }

    /// Byte size of `n_elements` elements, or `None` if `n_elements` is not a whole
    /// number of blocks or the size overflows `u64`.
    pub fn bytes_for(self, n_elements: u64) -> Option<u64> {
        if !n_elements.is_multiple_of(self.block_size()) {
            return None;
        }
        (n_elements / self.block_size()).checked_mul(self.type_size())
    }
}

impl fmt::Display for GgmlType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// Description of one tensor in a GGUF file, validated against the file when parsed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TensorInfo {
    pub(crate) name: String,
    pub(crate) dims: Vec<u64>,
    pub(crate) ggml_type: GgmlType,
    pub(crate) offset: u64,
    pub(crate) n_elements: u64,
    pub(crate) n_bytes: u64,
}

impl TensorInfo {
    /// The tensor name, e.g. `"blk.0.attn_q.weight"`.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// Dimensions in ggml order: `ne[0]` (the innermost, contiguous one) first.
    pub fn dims(&self) -> &[u64] {
        &self.dims
    }

    /// Dimensions outermost first (ggml dims reversed): a linear layer stored with
    /// `ne = [in, out]` gives the PyTorch-style weight shape `[out, in]`.
    pub fn shape_row_major(&self) -> Vec<u64> {
        self.dims.iter().rev().copied().collect()
    }

    /// The element type.
    pub fn ggml_type(&self) -> GgmlType {
        self.ggml_type
    }

    /// Offset of the tensor data relative to the start of the data section.
    pub fn offset(&self) -> u64 {
        self.offset
    }

    /// Number of elements (product of the dims; 1 for a 0-dimensional tensor).
    pub fn n_elements(&self) -> u64 {
        self.n_elements
    }

    /// Number of bytes of tensor data.
    pub fn n_bytes(&self) -> u64 {
        self.n_bytes
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn table_is_consistent() {
        let all = GgmlType::ALL;
        for (i, t) in all.iter().enumerate() {
            assert_eq!(GgmlType::from_id(t.id()), Some(*t));
            assert!(all[i + 1..].iter().all(|u| u.id() > t.id()));
        }
        assert_eq!(all.len(), 34);
        assert_eq!(GgmlType::from_id(4), None);
        assert_eq!(GgmlType::Q4_K.bytes_for(512), Some(288));
        assert_eq!(GgmlType::Q4_K.bytes_for(100), None);
    }
}
