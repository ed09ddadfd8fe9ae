//! Quantize a model's linear layers with GPTQ (or RTN or HQQ, for comparison) block by block, then
//! measure what it cost: perplexity before and after, and KL divergence to the original model
//! (one pass over both models gives all three).
//!
//! ```text
//! cargo run --release --example quantize_gptq                  # embedded stories260K, 4-bit g32 GPTQ
//! cargo run --release --example quantize_gptq -- --method rtn --bits 3
//! cargo run --release --example quantize_gptq -- --model .cache/models/SmolLM2-135M-Instruct.Q4_1.gguf \
//!     --calib ../shared/data/wikitext-2/wiki.valid.stripped.txt \
//!     --text ../shared/data/wikitext-2/wiki.test.raw --context 2048 --limit 8 \
//!     --nsamples 128 --seqlen 512 --bits 4 --group 128
//! # mixed precision: 2/3/4/8 bits per layer from measured sensitivity, 3.5 bits/weight on average
//! cargo run --release --example quantize_gptq -- --budget 3.5 --save-recipe mixed.toml
//! ```
//!
//! A group size that does not divide a layer's input width (stories260K's `down_proj` reads 172
//! features, SmolLM2's attention 576) leaves a shorter last group in each row.

use std::path::PathBuf;

#[path = "common/mod.rs"]
mod common;

use clap::{Parser, ValueEnum};
use compress::core::calibration::sample_windows;
use compress::core::recipe::{RecipeStep, RECIPE_VERSION};
use compress::eval::progress::ProgressLine;
use compress::model::LlamaModel;
use compress::quant::mixed::{allocate, allocation_recipe, average_bits, measure_sensitivity};
use compress::quant::recipe::{AwqConfig, GptqConfig, HqqConfig, QuantMethod, RtnConfig};
use compress::recipe::Recipe;

/// The recipes this example builds from its flags hold quantizers only.
type QuantRecipe = compress::core::recipe::Recipe<QuantMethod>;

#[derive(Copy, Clone, Debug, PartialEq, ValueEnum)]
enum Method {
    /// GPTQ (Frantar et al. 2022).
    Gptq,
    /// Round to nearest (no calibration).
    Rtn,
    /// HQQ (Badri & Shaji 2023), calibration-free; always asymmetric.
    Hqq,
    /// AWQ (Lin et al. 2023): activation-aware scales, then RTN.
    Awq,
}

#[derive(Parser, Debug)]
#[command(about = "GPTQ/RTN weight quantization with before/after perplexity and KL divergence.")]
struct Args {
    #[command(flatten)]
    run: common::RunArgs,
    /// Quantizer.
    #[arg(long, value_enum, default_value_t = Method::Gptq)]
    method: Method,
    /// Bits per weight code (2–8).
    #[arg(long, default_value_t = 4)]
    bits: u8,
    /// Weights per scale along a row; 0 = one scale per output channel.
    #[arg(long, default_value_t = 32)]
    group: usize,
    /// Asymmetric grids (a zero point per group).
    #[arg(long)]
    asym: bool,
    /// GPTQ: quantize columns in order of decreasing activation energy (static groups).
    #[arg(long)]
    act_order: bool,
    /// Search each group's scale for the least squared error (both methods).
    #[arg(long)]
    search: bool,
    /// A recipe file (examples/recipes/*.toml): its steps and calibration settings replace
    /// --method, --bits, --group, --asym, --act-order, --search, --nsamples, --seqlen, --seed.
    #[arg(long)]
    recipe: Option<PathBuf>,
    /// Mixed precision: choose 2, 3, 4 or 8 bits per layer (with --method and --group) from
    /// each layer's measured KL divergence, to average at most this many stored bits per weight.
    #[arg(long)]
    budget: Option<f64>,
    /// Calibration windows used to measure sensitivity for --budget.
    #[arg(long, default_value_t = 4)]
    sensitivity_samples: usize,
}

/// The recipe configuration the flags describe, at `bits`.
fn method_config(args: &Args, bits: u8) -> QuantMethod {
    let group = (args.group > 0).then_some(args.group);
    match args.method {
        Method::Gptq => QuantMethod::Gptq(GptqConfig {
            bits,
            group,
            symmetric: !args.asym,
            damp: 0.01,
            block_size: 128,
            act_order: args.act_order,
            clip: 1.0,
            search: args.search,
            k_quant: None,
        }),
        Method::Rtn => QuantMethod::Rtn(RtnConfig {
            bits,
            group,
            symmetric: !args.asym,
            clip: 1.0,
            search: args.search,
            use_activations: false,
            k_quant: None,
        }),
        Method::Awq => QuantMethod::Awq(AwqConfig {
            bits,
            group,
            symmetric: !args.asym,
            n_grid: 20,
            search: args.search,
        }),
        Method::Hqq => QuantMethod::Hqq(HqqConfig {
            bits,
            group,
            iters: None,
            lp: None,
        }),
    }
}

/// Per-layer widths from measured sensitivity (2, 3, 4 or 8 bits) meeting `budget`.
fn mixed_recipe(
    args: &Args,
    model: &mut LlamaModel,
    windows: &[Vec<u32>],
    budget: f64,
) -> Result<QuantRecipe, Box<dyn std::error::Error>> {
    let candidates: Vec<QuantMethod> = [2, 3, 4, 8]
        .iter()
        .map(|&b| method_config(args, b))
        .collect();
    let probe = &windows[..args.sensitivity_samples.min(windows.len())];
    let mut line = ProgressLine::new("sensitivity");
    let sens = measure_sensitivity(model, probe, &candidates, |d, t| {
        line.update(d, t, "layers,")
    })?;
    let choice = allocate(&sens, budget)?;
    let calibration = args.run.calibration();
    eprintln!(
        "allocation: {:.3} bits/weight; layers at 2/3/4/8 bits: {:?}",
        average_bits(&sens, &choice),
        (0..4)
            .map(|k| choice.iter().filter(|&&c| c == k).count())
            .collect::<Vec<_>>()
    );
    Ok(allocation_recipe(&sens, &choice, &candidates, calibration))
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args = Args::parse();
    let device = args.run.backend.device()?;
    let mut m = common::load_model(args.run.model.as_deref(), &device)?;
    common::trace_memory_at("after loading the model", &args.run);
    let (calib_text, eval_text) =
        common::calibration_and_eval_text(&args.run.calib, &args.run.text)?;
    let calib_tokens = m.tokenizer.encode(&calib_text, true)?;
    common::trace_memory_at("after tokenizing the calibration text", &args.run);
    let (pipeline, windows) = match &args.recipe {
        Some(path) => {
            let mut recipe = Recipe::from_file(path)?;
            // A --calib-precision other than the default overrides the recipe's.
            if args.run.calib_precision != Default::default() {
                recipe.calibration.precision = args.run.calib_precision;
            }
            recipe.calibration.keep_intermediates |= args.run.keep_intermediates;
            let c = &recipe.calibration;
            let windows = sample_windows(&calib_tokens, c.nsamples, c.seqlen, c.seed)?;
            recipe.without_heal("this example")?;
            (recipe.pipeline()?, windows)
        }
        None => {
            let windows = sample_windows(
                &calib_tokens,
                args.run.nsamples,
                args.run.seqlen,
                args.run.seed,
            )?;
            let recipe = match args.budget {
                Some(budget) => mixed_recipe(&args, &mut m.model, &windows, budget)?,
                None => QuantRecipe {
                    version: RECIPE_VERSION,
                    calibration: args.run.calibration(),
                    steps: vec![RecipeStep {
                        layers: None,
                        method: method_config(&args, args.bits),
                    }],
                    heal: None,
                },
            };
            if let Some(path) = &args.run.save_recipe {
                std::fs::write(path, recipe.to_toml()?)?;
                eprintln!("recipe written to {}", path.display());
            }
            (recipe.pipeline()?, windows)
        }
    };

    // The base model is kept for the KL divergence (its weights are shared until replaced).
    let base = (!args.run.no_eval).then(|| m.model.clone());
    // Moved, not cloned: a clone shares the block weights `load` reads on first use, so it
    // would keep every block's dense weights after the pipeline replaced them.
    let mut model = m.model;
    let progress = common::pipeline_progress_traced("quantize", args.run.trace_memory);
    let report = pipeline.run(&mut model, &windows, progress)?;
    let steps = match pipeline.steps.as_slice() {
        [one] => one.compressor.name(),
        steps => format!("{} recipe steps", steps.len()),
    };
    common::print_summary(&steps, &report, &model)?;
    match base {
        Some(base) => common::evaluate(
            &base,
            &model,
            &m.tokenizer,
            &eval_text,
            args.run.context,
            args.run.limit,
        ),
        None => Ok(()),
    }
}
