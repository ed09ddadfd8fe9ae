//! Recipes over every method the workspace implements so far.
//!
//! [`Method`] is the union of the method crates' recipe configurations; today the quantizers
//! (`rtn`, `gptq`, `hqq`). See [`compress_core::recipe`] for the file format and
//! `examples/recipes/` for complete recipes.
//!
//! ```
//! let recipe = compress::recipe::Recipe::from_toml(r#"
//! version = 1
//! [[step]]
//! method = "gptq"
//! bits = 4
//! group = 128
//! "#).unwrap();
//! assert_eq!(recipe.pipeline().unwrap().steps[0].compressor.name(), "gptq-w4g128");
//! ```

/// A step's method and parameters.
pub type Method = compress_quant::recipe::QuantMethod;

/// A recipe over [`Method`].
pub type Recipe = compress_core::recipe::Recipe<Method>;
