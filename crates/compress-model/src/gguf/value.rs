//! Metadata values.

/// The type tag of a metadata value (`enum gguf_type` in the GGUF spec).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[repr(u32)]
pub enum GgufValueType {
    /// `uint8`, id 0.
    U8 = 0,
    /// `int8`, id 1.
    I8 = 1,
    /// `uint16`, id 2.
    U16 = 2,
    /// `int16`, id 3.
    I16 = 3,
    /// `uint32`, id 4.
    U32 = 4,
    /// `int32`, id 5.
    I32 = 5,
    /// `float32`, id 6.
    F32 = 6,
    /// `bool` (one byte), id 7.
    Bool = 7,
    /// Length-prefixed UTF-8 string, id 8.
    String = 8,
    /// Typed, length-prefixed array, id 9.
    Array = 9,
    /// `uint64`, id 10.
    U64 = 10,
    /// `int64`, id 11.
    I64 = 11,
    /// `float64`, id 12.
    F64 = 12,
}

impl GgufValueType {
    /// Looks a value type up by its id; `None` for ids outside the spec.
    pub fn from_id(id: u32) -> Option<GgufValueType> {
        use GgufValueType::*;
        Some(match id {
            0 => U8,
            1 => I8,
            2 => U16,
            3 => I16,
            4 => U32,
            5 => I32,
            6 => F32,
            7 => Bool,
            8 => String,
            9 => Array,
            10 => U64,
            11 => I64,
            12 => F64,
            _ => return None,
        })
    }

    /// The on-disk type id.
    pub fn id(self) -> u32 {
        self as u32
    }

    /// Smallest number of bytes one value of this type occupies in a file.
    /// Used to reject counts that cannot fit in the remaining bytes.
    pub fn min_encoded_size(self) -> u64 {
        use GgufValueType::*;
        match self {
            U8 | I8 | Bool => 1,
            U16 | I16 => 2,
            U32 | I32 | F32 => 4,
            U64 | I64 | F64 => 8,
            // u64 length
            String => 8,
            // u32 element type + u64 length
            Array => 12,
        }
    }

    /// Short lowercase name, e.g. `"u32"` or `"string"`.
    pub fn name(self) -> &'static str {
        use GgufValueType::*;
        match self {
            U8 => "u8",
            I8 => "i8",
            U16 => "u16",
            I16 => "i16",
            U32 => "u32",
            I32 => "i32",
            F32 => "f32",
            Bool => "bool",
            String => "string",
            Array => "array",
            U64 => "u64",
            I64 => "i64",
            F64 => "f64",
        }
    }
}

/// One metadata value.
#[derive(Debug, Clone, PartialEq)]
pub enum GgufValue {
    /// `uint8`.
    U8(u8),
    /// `int8`.
    I8(i8),
    /// `uint16`.
    U16(u16),
    /// `int16`.
    I16(i16),
    /// `uint32`.
    U32(u32),
    /// `int32`.
    I32(i32),
    /// `float32`.
    F32(f32),
    /// `bool`; any non-zero byte reads as `true`.
    Bool(bool),
    /// A string (invalid UTF-8 is replaced with U+FFFD).
    String(String),
    /// A typed array.
    Array(GgufArray),
    /// `uint64`.
    U64(u64),
    /// `int64`.
    I64(i64),
    /// `float64`.
    F64(f64),
}

/// A metadata array, stored compactly by element type.
#[derive(Debug, Clone, PartialEq)]
pub enum GgufArray {
    /// `uint8` elements.
    U8(Vec<u8>),
    /// `int8` elements.
    I8(Vec<i8>),
    /// `uint16` elements.
    U16(Vec<u16>),
    /// `int16` elements.
    I16(Vec<i16>),
    /// `uint32` elements.
    U32(Vec<u32>),
    /// `int32` elements.
    I32(Vec<i32>),
    /// `float32` elements.
    F32(Vec<f32>),
    /// `bool` elements.
    Bool(Vec<bool>),
    /// String elements.
    String(Vec<String>),
    /// Nested arrays.
    Array(Vec<GgufArray>),
    /// `uint64` elements.
    U64(Vec<u64>),
    /// `int64` elements.
    I64(Vec<i64>),
    /// `float64` elements.
    F64(Vec<f64>),
}

impl GgufArray {
    /// The element type.
    pub fn element_type(&self) -> GgufValueType {
        use GgufArray as A;
        use GgufValueType as T;
        match self {
            A::U8(_) => T::U8,
            A::I8(_) => T::I8,
            A::U16(_) => T::U16,
            A::I16(_) => T::I16,
            A::U32(_) => T::U32,
            A::I32(_) => T::I32,
            A::F32(_) => T::F32,
            A::Bool(_) => T::Bool,
            A::String(_) => T::String,
            A::Array(_) => T::Array,
            A::U64(_) => T::U64,
            A::I64(_) => T::I64,
            A::F64(_) => T::F64,
        }
    }

    /// Number of elements.
    pub fn len(&self) -> usize {
        use GgufArray as A;
        match self {
            A::U8(v) => v.len(),
            A::I8(v) => v.len(),
            A::U16(v) => v.len(),
            A::I16(v) => v.len(),
            A::U32(v) => v.len(),
            A::I32(v) => v.len(),
            A::F32(v) => v.len(),
            A::Bool(v) => v.len(),
            A::String(v) => v.len(),
            A::Array(v) => v.len(),
            A::U64(v) => v.len(),
            A::I64(v) => v.len(),
            A::F64(v) => v.len(),
        }
    }

    /// Whether the array has no elements.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// All elements widened to `i64` if this is an integer array whose values all fit.
    pub fn to_i64_vec(&self) -> Option<Vec<i64>> {
        use GgufArray as A;
        fn conv<T: Copy>(v: &[T], f: impl Fn(T) -> Option<i64>) -> Option<Vec<i64>> {
            v.iter().map(|&x| f(x)).collect()
        }
        match self {
            A::U8(v) => conv(v, |x| Some(x.into())),
            A::I8(v) => conv(v, |x| Some(x.into())),
            A::U16(v) => conv(v, |x| Some(x.into())),
            A::I16(v) => conv(v, |x| Some(x.into())),
            A::U32(v) => conv(v, |x| Some(x.into())),
            A::I32(v) => conv(v, |x| Some(x.into())),
            A::U64(v) => conv(v, |x| i64::try_from(x).ok()),
            A::I64(v) => Some(v.clone()),
            _ => None,
        }
    }
}

impl GgufValue {
    /// The value's type tag.
    pub fn value_type(&self) -> GgufValueType {
        use GgufValue as V;
        use GgufValueType as T;
        match self {
            V::U8(_) => T::U8,
            V::I8(_) => T::I8,
            V::U16(_) => T::U16,
            V::I16(_) => T::I16,
            V::U32(_) => T::U32,
            V::I32(_) => T::I32,
            V::F32(_) => T::F32,
            V::Bool(_) => T::Bool,
            V::String(_) => T::String,
            V::Array(_) => T::Array,
            V::U64(_) => T::U64,
            V::I64(_) => T::I64,
            V::F64(_) => T::F64,
        }
    }

    /// A readable type name such as `"u32"` or `"array<string>"`, for error messages.
    pub fn type_description(&self) -> String {
        match self {
            GgufValue::Array(a) => format!("array<{}>", a.element_type().name()),
            v => v.value_type().name().to_string(),
        }
    }

    /// The value as an `i128` if it is an integer of any width.
    fn as_i128(&self) -> Option<i128> {
        use GgufValue as V;
        Some(match *self {
            V::U8(x) => x.into(),
            V::I8(x) => x.into(),
            V::U16(x) => x.into(),
            V::I16(x) => x.into(),
            V::U32(x) => x.into(),
            V::I32(x) => x.into(),
            V::U64(x) => x.into(),
            V::I64(x) => x.into(),
            _ => return None,
        })
    }

    /// Any integer value that fits in a `u64`.
    pub fn as_u64(&self) -> Option<u64> {
        self.as_i128().and_then(|x| u64::try_from(x).ok())
    }

    /// Any integer value that fits in an `i64`.
    pub fn as_i64(&self) -> Option<i64> {
        self.as_i128().and_then(|x| i64::try_from(x).ok())
    }

    /// Any integer value that fits in a `u32`.
    pub fn as_u32(&self) -> Option<u32> {
        self.as_i128().and_then(|x| u32::try_from(x).ok())
    }

    /// Any integer value that fits in an `i32`.
    pub fn as_i32(&self) -> Option<i32> {
        self.as_i128().and_then(|x| i32::try_from(x).ok())
    }

    /// Any integer value that fits in a `usize`.
    pub fn as_usize(&self) -> Option<usize> {
        self.as_i128().and_then(|x| usize::try_from(x).ok())
    }

    /// A `float32` value, or a `float64` value rounded to `f32`.
    pub fn as_f32(&self) -> Option<f32> {
        match *self {
            GgufValue::F32(x) => Some(x),
            GgufValue::F64(x) => Some(x as f32),
            _ => None,
        }
    }

    /// A `float64` or `float32` value as `f64`.
    pub fn as_f64(&self) -> Option<f64> {
        match *self {
            GgufValue::F32(x) => Some(x.into()),
            GgufValue::F64(x) => Some(x),
            _ => None,
        }
    }

    /// A `bool` value.
    pub fn as_bool(&self) -> Option<bool> {
        match *self {
            GgufValue::Bool(b) => Some(b),
            _ => None,
        }
    }

    /// A string value.
    pub fn as_str(&self) -> Option<&str> {
        match self {
            GgufValue::String(s) => Some(s),
            _ => None,
        }
    }

    /// An array value.
    pub fn as_array(&self) -> Option<&GgufArray> {
        match self {
            GgufValue::Array(a) => Some(a),
            _ => None,
        }
    }

    /// An array of strings.
    pub fn as_str_array(&self) -> Option<&[String]> {
        match self {
            GgufValue::Array(GgufArray::String(v)) => Some(v),
            _ => None,
        }
    }

    /// An array of `float32`.
    pub fn as_f32_array(&self) -> Option<&[f32]> {
        match self {
            GgufValue::Array(GgufArray::F32(v)) => Some(v),
            _ => None,
        }
    }

    /// An array of `int32`.
    pub fn as_i32_array(&self) -> Option<&[i32]> {
        match self {
            GgufValue::Array(GgufArray::I32(v)) => Some(v),
            _ => None,
        }
    }

    /// An array of `uint32`.
    pub fn as_u32_array(&self) -> Option<&[u32]> {
        match self {
            GgufValue::Array(GgufArray::U32(v)) => Some(v),
            _ => None,
        }
    }
}
