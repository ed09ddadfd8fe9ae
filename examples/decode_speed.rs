//! End-to-end decode speed: a model with dense f32 weights against the same model quantized by
//! a recipe (default: GPTQ 4-bit, groups of 128), on the same CPU backend in one run — the
//! quantized layers through the fused kernels (f32 and int8 activations) and through their
//! dequantized weights, so every ratio is measured side by side.
//!
//! ```text
//! scripts/fetch-models
//! cargo run --release --example decode_speed -- --model .cache/models/SmolLM2-135M-Instruct.Q4_1.gguf
//! cargo run --release --example decode_speed              # embedded stories260K, seconds
//! ```
//! Decode speed is greedy generation of `--new-tokens` after a `--prompt-tokens` WikiText-2
//! prompt, median of `--repeats` runs.

mod common;

use std::path::PathBuf;
use std::time::Instant;

use clap::Parser;
use compress::core::calibration::sample_windows;
use compress::core::kernels::{Activations, Tier};
use compress::model::generate::{generate, GenerateOptions, Sampling};
use compress::model::LlamaModel;
use compress::recipe::Recipe;

#[derive(Parser, Debug)]
#[command(about = "Decode tokens/s: dense f32 vs quantized through the fused kernels")]
struct Args {
    /// GGUF file, container or HF directory [default: embedded stories260K].
    #[arg(long)]
    model: Option<PathBuf>,
    /// The compression recipe.
    #[arg(long, default_value = "examples/recipes/gptq-w4g128.toml")]
    recipe: PathBuf,
    /// Override the recipe's calibration windows (fewer = faster quantization).
    #[arg(long, default_value_t = 32)]
    nsamples: usize,
    /// Calibration text.
    #[arg(
        long,
        default_value = "../shared/data/wikitext-2/wiki.valid.stripped.txt"
    )]
    calib: PathBuf,
    /// Prompt text (its first `--prompt-tokens` tokens).
    #[arg(long, default_value = "../shared/data/wikitext-2/wiki.test.raw")]
    text: PathBuf,
    /// Prompt length in tokens.
    #[arg(long, default_value_t = 64)]
    prompt_tokens: usize,
    /// Tokens generated per run.
    #[arg(long, default_value_t = 64)]
    new_tokens: usize,
    /// Runs per configuration (the median is reported).
    #[arg(long, default_value_t = 3)]
    repeats: usize,
    /// Backend (the kernels run on flex and ndarray).
    #[arg(long, default_value_t = compress::core::backend::BackendKind::Flex)]
    backend: compress::core::backend::BackendKind,
}

/// Median decode tokens/s and the generated ids.
fn decode(
    model: &LlamaModel,
    prompt: &[u32],
    args: &Args,
) -> Result<(f64, Vec<u32>), Box<dyn std::error::Error>> {
    let options = GenerateOptions {
        max_new_tokens: args.new_tokens,
        sampling: Sampling::Greedy,
        stop_token: None,
    };
    let mut rates = Vec::new();
    let mut tokens = Vec::new();
    for _ in 0..args.repeats.max(1) {
        let out = generate(model, prompt, &options, |_| {})?;
        rates.push(out.decode_tokens_per_second());
        tokens = out.tokens;
    }
    rates.sort_by(f64::total_cmp);
    Ok((rates[rates.len() / 2], tokens))
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args = Args::parse();
    let device = args.backend.device()?;
    let m = common::load_model(args.model.as_deref(), &device)?;
    let read = |p: &PathBuf| {
        std::fs::read_to_string(p).map_err(|e| format!("cannot read {}: {e}", p.display()))
    };
    let text = read(&args.text)?;
    let head = &text[..text.floor_char_boundary(text.len().min(100_000))];
    let prompt_ids = m.tokenizer.encode(head, true)?;
    if prompt_ids.len() < args.prompt_tokens {
        return Err(format!(
            "{} has fewer than {} tokens",
            args.text.display(),
            args.prompt_tokens
        )
        .into());
    }
    let prompt = &prompt_ids[..args.prompt_tokens];
    let calib = read(&args.calib)?;
    let ids = m.tokenizer.encode(&calib, true)?;

    let mut recipe = Recipe::from_file(&args.recipe)?;
    recipe.calibration.nsamples = args.nsamples;
    let c = recipe.calibration.clone();
    let windows = sample_windows(&ids, c.nsamples, c.seqlen.min(ids.len() / 2), c.seed)?;
    let pipeline = recipe.pipeline()?;
    let t = Instant::now();
    let mut quantized = m.model.clone();
    let report = pipeline.run(
        &mut quantized,
        &windows,
        common::pipeline_progress("quantize"),
    )?;
    eprintln!("quantized in {:.1} s", t.elapsed().as_secs_f64());
    common::print_summary(&args.recipe.display().to_string(), &report, &quantized)?;

    let (dense, dense_tokens) = decode(&m.model, prompt, &args)?;
    let mut rows = vec![("dense f32".to_string(), dense, dense_tokens.clone())];
    let modes = [
        ("quantized, dequantized weights", None),
        (
            "quantized, kernels (f32 activations)",
            Some(Activations::F32),
        ),
        (
            "quantized, kernels (int8 activations)",
            Some(Activations::Int8),
        ),
    ];
    for (name, mode) in modes {
        let tiers = quantized.set_kernels(mode);
        let mut used: Vec<Tier> = tiers.iter().flatten().copied().collect();
        used.sort_by_key(|t| t.name());
        used.dedup();
        let (rate, tokens) = decode(&quantized, prompt, &args)?;
        let tiers = if used.is_empty() {
            String::new()
        } else {
            format!(
                " [{}]",
                used.iter().map(|t| t.name()).collect::<Vec<_>>().join(", ")
            )
        };
        rows.push((format!("{name}{tiers}"), rate, tokens));
    }
    quantized.set_kernels(Some(Activations::F32));

    println!(
        "\ndecode, {} new tokens after a {}-token prompt, {} backend, median of {}:\n",
        args.new_tokens, args.prompt_tokens, args.backend, args.repeats
    );
    println!("| weights | decode tokens/s | × dense | greedy tokens as dense | as dequantized |");
    println!("|---|---|---|---|---|");
    let agree = |a: &[u32], b: &[u32]| a.iter().zip(b).take_while(|(x, y)| x == y).count();
    let reference = rows[1].2.clone();
    for (i, (name, rate, tokens)) in rows.iter().enumerate() {
        let vs_deq = if i >= 1 {
            format!("{}/{}", agree(tokens, &reference), reference.len())
        } else {
            "–".into()
        };
        println!(
            "| {name} | {rate:.1} | {:.2}× | {}/{} | {vs_deq} |",
            rate / dense,
            agree(tokens, &dense_tokens),
            dense_tokens.len()
        );
    }
    Ok(())
}
