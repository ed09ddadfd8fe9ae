//! # compress-cli
//!
//! The `compress` command: `inspect`, `run RECIPE.toml`, `quantize`, `prune`, `lowrank`, `slice`,
//! `eval`, `generate` over llama-family models (GGUF files, compress containers, Hugging Face
//! checkpoints), writing the lossless container or GGUF. Run `compress --help` for the flags
//! and examples; `--json` prints one machine-readable object per command on stdout.
//!
//! The library half exposes the commands so they can be driven (and tested) without a
//! process:
//!
//! ```no_run
//! use clap::Parser;
//! let cli = compress_cli::cli::Cli::parse_from(["compress", "inspect", "--json"]);
//! compress_cli::run(cli).unwrap();
//! ```
//!
#![warn(missing_docs)]

pub mod allocate_cmd;
pub mod cli;
pub mod compress_cmd;
pub mod error;
pub mod eval_cmd;
pub mod generate_cmd;
pub mod inspect;
pub mod progress;
pub mod slice_cmd;
pub mod values;

use std::path::Path;

use compress::model::LoadedModel;

pub use error::{CliError, CliResult};

/// stories260K (1.2 MB, MIT, karpathy/tinyllamas), the default model of every command.
pub static EMBEDDED_MODEL: &[u8] = include_bytes!("../../../assets/stories260K.gguf");

/// Loads `path` (any supported format), or the embedded stories260K when `None`.
pub fn load_model(path: Option<&Path>, device: &burn::tensor::Device) -> CliResult<LoadedModel> {
    match path {
        Some(p) => compress::model::load(p, device)
            .map_err(|e| CliError::input(format!("{}: {e}", p.display()))),
        None => compress::model::load::load_gguf_bytes(EMBEDDED_MODEL.to_vec(), device)
            .map_err(CliError::failed),
    }
}

/// The nesting recorded in a container's header (`None` for any other input or a container
/// without one).
pub fn input_nesting(
    path: Option<&Path>,
) -> CliResult<Option<compress::model::container::NestingEntry>> {
    match path {
        Some(p) if compress::model::container::is_container(p) => {
            Ok(compress::model::container::read_header(p)
                .map_err(CliError::input)?
                .nesting)
        }
        _ => Ok(None),
    }
}

/// Reads a text file, naming it in the error.
pub fn read_text(path: &Path) -> CliResult<String> {
    compress::core::input::read_text(path, compress::core::input::TEXT_LIMIT)
        .map_err(|e| CliError::input(format!("{}: {e}", path.display())))
}

/// Prints `value` as one line of JSON.
pub fn print_json(value: &impl serde::Serialize) -> CliResult<()> {
    println!(
        "{}",
        serde_json::to_string(value).map_err(CliError::failed)?
    );
    Ok(())
}

/// Runs a parsed command line.
pub fn run(cli: cli::Cli) -> CliResult<()> {
    let device = cli.backend.device().map_err(CliError::usage)?;
    match cli.command {
        cli::Command::Inspect(a) => inspect::inspect(&a, &device, cli.json),
        cli::Command::Run(a) => compress_cmd::run_recipe(&a, &device, cli.json),
        cli::Command::Quantize(a) => compress_cmd::quantize(&a, &device, cli.json),
        cli::Command::Prune(a) => compress_cmd::prune(&a, &device, cli.json),
        cli::Command::Lowrank(a) => compress_cmd::lowrank(&a, &device, cli.json),
        cli::Command::Eval(a) => eval_cmd::eval(&a, &device, cli.json),
        cli::Command::Slice(a) => slice_cmd::slice_cmd(&a, &device, cli.json),
        cli::Command::Generate(a) => generate_cmd::generate(&a, &device, cli.json),
    }
}

/// The README, checked by rustdoc (its examples are shell commands, not Rust).
#[doc = include_str!("../README.md")]
#[cfg(doctest)]
pub struct ReadmeDoctests;
