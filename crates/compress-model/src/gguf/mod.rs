//! GGUF file reader, dequantizer and writer.
//!
//! [`GgufFile`] memory-maps (or takes ownership of) a GGUF v2/v3 file, validates the
//! whole header against the file length without trusting any count, and exposes the
//! metadata, the tensor descriptors, the raw tensor bytes and f32 dequantization
//! that is bit-exact with ggml's `dequantize_row_*` for F32, F16, BF16, Q4_0, Q4_1,
//! Q5_0, Q5_1, Q8_0, Q2_K, Q3_K, Q4_K, Q5_K and Q6_K.
//!
//! ```no_run
//! use compress_model::gguf::GgufFile;
//! # fn main() -> Result<(), compress_model::gguf::GgufError> {
//! let file = GgufFile::open("model.gguf")?;
//! let dim = file.get_u32("llama.embedding_length")?;
//! let emb: Vec<f32> = file.dequantize("token_embd.weight")?; // ne[0] innermost
//! # Ok(()) }
//! ```

pub mod dequant;
pub mod encode;
pub mod encode_k;
pub mod error;
pub mod file;
pub mod reader;
pub mod types;
pub mod value;
pub mod writer;

pub use dequant::dequantize_into;
pub use error::GgufError;
pub use file::{GgufBytes, GgufFile};
pub use types::{GgmlType, TensorInfo, QK_K};
pub use value::{GgufArray, GgufValue, GgufValueType};
pub use writer::GgufWriter;
