//! Typed errors for GGUF parsing and dequantization.

use std::path::PathBuf;

use super::types::GgmlType;

/// Everything that can go wrong while reading a GGUF file or dequantizing a tensor.
///
/// Every variant that concerns a particular metadata key or tensor names it, so a
/// message is actionable on its own.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum GgufError {
    /// The file could not be opened or memory-mapped.
    #[error("cannot read GGUF file {path}: {source}")]
    Io {
        /// Path that was being opened.
        path: PathBuf,
        /// Underlying I/O error.
        #[source]
        source: std::io::Error,
    },

    /// The first four bytes are not `GGUF`.
    #[error("not a GGUF file: magic is {0:02x?}, expected \"GGUF\"")]
    BadMagic([u8; 4]),

    /// The format version is not 2 or 3 (version 1 and big-endian files are rejected).
    #[error("unsupported GGUF version {0} (only little-endian versions 2 and 3 are supported)")]
    UnsupportedVersion(u32),

    /// The file ended while a field was being read.
    #[error("file truncated while reading {what} at byte offset {offset}")]
    Truncated {
        /// Description of the field being read (names the key or tensor).
        what: String,
        /// Byte offset at which the field starts.
        offset: u64,
    },

    /// A count or length field claims more items than the rest of the file could hold.
    #[error("{what}: count {count} cannot fit in the {remaining} bytes left in the file (truncated or corrupt)")]
    CountTooLarge {
        /// Which count (names the key or tensor).
        what: String,
        /// The claimed count.
        count: u64,
        /// Bytes left in the file after the count field.
        remaining: u64,
    },

    /// Metadata arrays nested deeper than the supported limit.
    #[error("metadata key `{key}`: arrays nested deeper than {limit} levels")]
    NestingTooDeep {
        /// Key whose value is too deeply nested.
        key: String,
        /// The maximum nesting depth accepted.
        limit: usize,
    },

    /// A metadata value type id outside the GGUF specification.
    #[error("metadata key `{key}`: unknown value type id {type_id}")]
    UnknownValueType {
        /// Key whose value has the bad type.
        key: String,
        /// The raw type id.
        type_id: u32,
    },

    /// The same metadata key appears twice.
    #[error("duplicate metadata key `{0}`")]
    DuplicateKey(String),

    /// `general.alignment` is zero or not a power of two.
    #[error("invalid `general.alignment` {0}: must be a non-zero power of two")]
    BadAlignment(u64),

    /// A tensor declares more than 4 dimensions.
    #[error("tensor `{name}`: {n_dims} dimensions (at most 4 are allowed)")]
    TooManyDims {
        /// Tensor name.
        name: String,
        /// The declared number of dimensions.
        n_dims: u32,
    },

    /// A tensor's dimensions overflow (element count or byte size does not fit in 63 bits).
    #[error("tensor `{name}`: dimensions {dims:?} overflow the element count or byte size")]
    DimsOverflow {
        /// Tensor name.
        name: String,
        /// The declared dimensions (ggml order, `ne[0]` first).
        dims: Vec<u64>,
    },

    /// `ne[0]` is not a multiple of the tensor type's block size.
    #[error(
        "tensor `{name}`: ne[0] = {ne0} is not a multiple of the {ty} block size {block_size}"
    )]
    ShapeMismatch {
        /// Tensor name.
        name: String,
        /// The tensor type.
        ty: GgmlType,
        /// The innermost dimension.
        ne0: u64,
        /// The type's block size in elements.
        block_size: u64,
    },

    /// A ggml tensor type id this reader does not know at all.
    #[error("tensor `{name}`: unknown ggml type id {type_id}")]
    UnknownType {
        /// Tensor name (or a description of the buffer).
        name: String,
        /// The raw type id.
        type_id: u32,
    },

    /// A known ggml tensor type that cannot be dequantized by this module.
    #[error("tensor `{name}`: dequantizing type {ty} is not supported")]
    UnsupportedType {
        /// Tensor name (or a description of the buffer).
        name: String,
        /// The tensor type.
        ty: GgmlType,
    },

    /// Two tensors share a name.
    #[error("duplicate tensor name `{0}`")]
    DuplicateTensor(String),

    /// A tensor's data offset is not a multiple of the file alignment.
    #[error(
        "tensor `{name}`: data offset {offset} is not a multiple of the alignment {alignment}"
    )]
    Misaligned {
        /// Tensor name.
        name: String,
        /// Offset relative to the start of the data section.
        offset: u64,
        /// The file's alignment.
        alignment: u64,
    },

    /// A tensor's data would extend past the end of the file.
    #[error(
        "tensor `{name}`: data at offset {offset} + {size} bytes (data section starts at \
         {data_start}) extends past the end of the {file_len}-byte file"
    )]
    TensorOutOfBounds {
        /// Tensor name.
        name: String,
        /// Offset relative to the start of the data section.
        offset: u64,
        /// Byte size of the tensor data.
        size: u64,
        /// Absolute file offset of the data section.
        data_start: u64,
        /// Total file length.
        file_len: u64,
    },

    /// A required metadata key is absent.
    #[error("missing metadata key `{0}`")]
    MissingKey(String),

    /// A metadata value exists but has another type than requested (or is out of range).
    #[error("metadata key `{key}`: expected {expected}, found {found}")]
    WrongValueType {
        /// The key.
        key: String,
        /// What the caller asked for.
        expected: &'static str,
        /// What the file holds (type name, or a note on the out-of-range value).
        found: String,
    },

    /// No tensor of that name exists in the file.
    #[error("no tensor named `{0}`")]
    TensorNotFound(String),

    /// Source bytes and destination length disagree in a raw dequantization call.
    #[error(
        "dequantizing {ty}: {bytes} source bytes do not match {elements} output elements \
         (block size {block_size}, {type_size} bytes per block)"
    )]
    BufferSize {
        /// The tensor type.
        ty: GgmlType,
        /// Source length in bytes.
        bytes: usize,
        /// Destination length in elements.
        elements: usize,
        /// Elements per block.
        block_size: u64,
        /// Bytes per block.
        type_size: u64,
    },

    /// A tensor has more elements than this platform can address.
    #[error("tensor `{name}`: {n_elements} elements do not fit in memory on this platform")]
    TooLargeForPlatform {
        /// Tensor name.
        name: String,
        /// Element count.
        n_elements: u64,
    },
}
