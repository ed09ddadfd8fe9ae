//! # compress-cli
//!
//! The `compress` command-line tool (planned): `inspect`, `quantize`, `prune`, `lowrank`, `slice`,
//! `run RECIPE.toml`, `eval`, `generate`. Until it lands, the examples at the workspace root are
//! the command-line entry points (`cargo run --release --example generate`).
//!
//! This crate holds no API yet. See `docs/STATUS.md`.
