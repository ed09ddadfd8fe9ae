//! Fuzz entry points of the facade: the recipe reader (the model readers' are in
//! [`compress_model::fuzz`]). Shared by the `cargo afl` target in `fuzz/` and the corpus replay
//! test `tests/recipe_corpus.rs`.

/// A recipe TOML: parsed and validated into the concrete [`crate::recipe::Recipe`]; whether it
/// was accepted.
pub fn recipe(data: &[u8]) -> bool {
    std::str::from_utf8(data).is_ok_and(|t| crate::recipe::Recipe::from_toml(t).is_ok())
}
