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
//! prompt, median of `--repeats` runs; prompt tokens/s is the prompt's length over the time of
//! its one forward pass and first token (the kernels' GEMM path: int8 on VNNI CPUs for the
//! int8-activation rows).

mod common;

use std::path::PathBuf;
use std::time::Instant;

use clap::Parser;
use compress::core::calibration::sample_windows;
use compress::core::kernels::{Activations, Tier};
use compress::core::packed::{QuantScheme, Symmetry};
use compress::eval::perplexity::{perplexity, PerplexityConfig, Scoring};
use compress::model::generate::{generate, GenerateOptions, Sampling};
use compress::model::LlamaModel;
use compress::quant::rtn::Rtn;
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
    /// Runs per configuration, interleaved (the median is reported).
    #[arg(long, default_value_t = 3)]
    repeats: usize,
    /// Also measure the model with its output head quantized by RTN at this width (per channel,
    /// symmetric); 0 leaves the head dense. The head is a 49152 × 576 f32 matrix on SmolLM2
    /// (113 MB read per token), which no block recipe touches.
    #[arg(long, default_value_t = 8)]
    head_bits: u8,
    /// Perplexity windows (512 tokens of `--text`) per model, to show what each row costs in
    /// quality; 0 skips.
    #[arg(long, default_value_t = 4)]
    ppl_windows: usize,
    /// Backend (the kernels run on flex and ndarray).
    #[arg(long, default_value_t = compress::core::backend::BackendKind::Flex)]
    backend: compress::core::backend::BackendKind,
}

/// Decode tokens/s, prompt (prefill) tokens/s of one greedy run, and the generated ids.
fn decode(
    model: &LlamaModel,
    prompt: &[u32],
    args: &Args,
) -> Result<(f64, f64, Vec<u32>), Box<dyn std::error::Error>> {
    let options = GenerateOptions {
        max_new_tokens: args.new_tokens,
        sampling: Sampling::Greedy,
        stop_token: None,
    };
    let out = generate(model, prompt, &options, |_| {})?;
    let prefill = prompt.len() as f64 / out.prefill.as_secs_f64();
    Ok((out.decode_tokens_per_second(), prefill, out.tokens))
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
    recipe.without_heal("this example")?;
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

    // Every configuration is its own model (kernel modes differ per layer), and the repeats
    // interleave the configurations, so drift in the machine's speed hits all of them alike.
    let mut configs: Vec<(String, LlamaModel)> = vec![("dense f32".into(), m.model.clone())];
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
        let mut q = quantized.clone();
        let tiers = q.set_kernels(mode);
        let mut used: Vec<&str> = tiers.iter().flatten().map(|t: &Tier| t.name()).collect();
        used.sort();
        used.dedup();
        let tiers = if used.is_empty() {
            String::new()
        } else {
            format!(" [{}]", used.join(", "))
        };
        configs.push((format!("{name}{tiers}"), q));
    }
    if args.head_bits > 0 {
        let mut with_head = quantized.clone();
        let head = QuantScheme::new(args.head_bits, None, Symmetry::Symmetric)?;
        with_head.lm_head =
            Rtn::new(head).quantize_linear("lm_head", &with_head.lm_head, &device)?;
        with_head.set_kernels(Some(Activations::Int8));
        configs.push((
            format!(
                "quantized + int{} head, kernels (int8 activations)",
                args.head_bits
            ),
            with_head,
        ));
    }
    let mut rates = vec![Vec::new(); configs.len()];
    let mut prefills = vec![Vec::new(); configs.len()];
    let mut outputs = vec![Vec::new(); configs.len()];
    for _ in 0..args.repeats.max(1) {
        for (i, (_, model)) in configs.iter().enumerate() {
            let (rate, prefill, tokens) = decode(model, prompt, &args)?;
            rates[i].push(rate);
            prefills[i].push(prefill);
            outputs[i] = tokens;
        }
    }
    let median = |v: &mut Vec<f64>| {
        v.sort_by(f64::total_cmp);
        v[v.len() / 2]
    };
    let rows: Vec<(String, f64, f64, Vec<u32>)> = configs
        .iter()
        .zip(rates.iter_mut())
        .zip(prefills.iter_mut())
        .zip(&outputs)
        .map(|((((name, _), r), p), t)| (name.clone(), median(r), median(p), t.clone()))
        .collect();
    let (dense, dense_prefill, dense_tokens) = (rows[0].1, rows[0].2, rows[0].3.clone());

    println!(
        "\ndecode, {} new tokens after a {}-token prompt, {} backend, median of {}:\n",
        args.new_tokens, args.prompt_tokens, args.backend, args.repeats
    );
    println!("| weights | decode tokens/s | × dense | prompt tokens/s | × dense | greedy tokens as dense | as dequantized |");
    println!("|---|---|---|---|---|---|---|");
    let agree = |a: &[u32], b: &[u32]| a.iter().zip(b).take_while(|(x, y)| x == y).count();
    let reference = rows[1].3.clone();
    for (i, (name, rate, prefill, tokens)) in rows.iter().enumerate() {
        let vs_deq = if i >= 1 {
            format!("{}/{}", agree(tokens, &reference), reference.len())
        } else {
            "–".into()
        };
        println!(
            "| {name} | {rate:.1} | {:.2}× | {prefill:.0} | {:.2}× | {}/{} | {vs_deq} |",
            rate / dense,
            prefill / dense_prefill,
            agree(tokens, &dense_tokens),
            dense_tokens.len()
        );
    }
    if args.ppl_windows > 0 {
        let ids = m.tokenizer.encode(&text, true)?;
        let config = PerplexityConfig {
            context: 512,
            scoring: Scoring::AllTokens,
            max_windows: Some(args.ppl_windows),
            bos: m.tokenizer.bos_id(),
        };
        println!(
            "\nperplexity on {} × 512 tokens of {}:\n",
            args.ppl_windows,
            args.text.display()
        );
        // Dense, the f32-activation kernels, and every int8-activation row (their 512-token
        // windows run the int8 GEMM where the weight's groups are whole blocks).
        // configs[1] (dequantized weights) is the f32-activation kernels' model up to rounding.
        for (name, model) in configs
            .iter()
            .enumerate()
            .filter(|(i, _)| *i != 1)
            .map(|(_, c)| c)
        {
            let r = perplexity(model, &ids, text.len(), &config, |_, _| {})?;
            println!("- {name}: {:.3}", r.ppl);
        }
    }
    Ok(())
}
