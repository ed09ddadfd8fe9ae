//! `compress generate`: greedy or seeded top-p continuation of a prompt.

use compress::model::generate::{generate as run_generation, GenerateOptions, Sampling};
use serde::Serialize;

use compress::core::kernels::Activations;

use crate::cli::{GenerateArgs, KernelMode};
use crate::{load_model, print_json, CliError, CliResult};

/// What `generate` reports.
#[derive(Debug, Clone, Serialize)]
pub struct GenerateReport {
    /// The prompt.
    pub prompt: String,
    /// The generated text (prompt excluded).
    pub text: String,
    /// Generated token ids.
    pub tokens: Vec<u32>,
    /// Seconds to process the prompt and produce the first token.
    pub prefill_seconds: f64,
    /// Tokens per second after the first.
    pub decode_tokens_per_second: f64,
}

/// Runs `generate`, streaming tokens to stdout unless `json`.
pub fn generate(args: &GenerateArgs, device: &burn::tensor::Device, json: bool) -> CliResult<()> {
    let mut m = load_model(args.model.model.as_deref(), device)?;
    m.model.set_kernels(match args.kernels {
        KernelMode::F32 => Some(Activations::F32),
        KernelMode::Int8 => Some(Activations::Int8),
        KernelMode::Off => None,
    });
    let prompt = m
        .tokenizer
        .encode(&args.prompt, true)
        .map_err(CliError::failed)?;
    let sampling = match args.temperature {
        None => Sampling::Greedy,
        Some(temperature) => Sampling::TopP {
            temperature,
            top_p: args.top_p,
            seed: args.seed,
        },
    };
    let options = GenerateOptions {
        max_new_tokens: args.max_tokens,
        sampling,
        stop_token: m.tokenizer.eos_id(),
    };
    if !json {
        print!("{}", args.prompt);
    }
    let mut printed = String::new();
    let mut so_far = Vec::new();
    let out = run_generation(&m.model, &prompt, &options, |t| {
        if json {
            return;
        }
        // Decode the whole continuation each time so multi-token characters print correctly.
        so_far.push(t);
        if let Ok(text) = m.tokenizer.decode(&so_far) {
            if let Some(new) = text.strip_prefix(printed.as_str()) {
                print!("{new}");
                use std::io::Write;
                let _ = std::io::stdout().flush();
                printed = text;
            }
        }
    })
    .map_err(|e| CliError::usage(e.to_string()))?;
    let text = m.tokenizer.decode(&out.tokens).map_err(CliError::failed)?;
    let r = GenerateReport {
        prompt: args.prompt.clone(),
        text,
        tokens: out.tokens.clone(),
        prefill_seconds: out.prefill.as_secs_f64(),
        decode_tokens_per_second: out.decode_tokens_per_second(),
    };
    if json {
        return print_json(&r);
    }
    println!();
    eprintln!(
        "{} tokens; prefill {:.3} s, decode {:.1} tokens/s",
        r.tokens.len(),
        r.prefill_seconds,
        r.decode_tokens_per_second
    );
    Ok(())
}
