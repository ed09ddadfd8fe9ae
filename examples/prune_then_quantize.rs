//! Prune a model's linear layers (magnitude, Wanda or SparseGPT; unstructured or N:M), optionally
//! quantize what is left — after pruning, or in the same SparseGPT sweep (`--joint`) — then
//! measure what it cost: perplexity before and after and KL divergence to the original model.
//!
//! ```text
//! cargo run --release --example prune_then_quantize        # embedded stories260K: SparseGPT 50%, then GPTQ 4-bit g32
//! cargo run --release --example prune_then_quantize -- --method wanda --nm 2:4 --bits 0
//! cargo run --release --example prune_then_quantize -- --nm 2:4 --joint     # one sweep prunes and quantizes
//! cargo run --release --example prune_then_quantize -- --recipe examples/recipes/sparsegpt-2of4-w4-joint.toml
//! # structured: remove 25% of every block's FFN neurons and heads (by activation energy), no masks
//! cargo run --release --example prune_then_quantize -- --ffn 0.25 --heads 0.25 --sparsity 0 --bits 0
//! cargo run --release --example prune_then_quantize -- --drop-blocks 1 --sparsity 0 --bits 0
//! cargo run --release --example prune_then_quantize -- --model .cache/models/SmolLM2-135M-Instruct.Q4_1.gguf \
//!     --calib ../shared/data/wikitext-2/wiki.valid.stripped.txt \
//!     --text ../shared/data/wikitext-2/wiki.test.raw --context 2048 --limit 4 --nsamples 64 --seqlen 512
//! ```

use std::path::PathBuf;

#[path = "common/mod.rs"]
mod common;

use clap::{Parser, ValueEnum};
use compress::core::calibration::sample_windows;
use compress::core::recipe::StepMethod;
use compress::core::recipe::{RecipeStep, RECIPE_VERSION};
use compress::eval::plot::{plot, Chart, Series};
use compress::prune::recipe::{
    JointQuantConfig, PatternConfig, PruneMethod, ScoreConfig, SparseGptConfig,
};
use compress::prune::structured::{
    block_influence, least_influential, prune_structured, Importance, StructuredConfig,
};
use compress::quant::mixed::measure_sensitivity;
use compress::quant::recipe::{GptqConfig, QuantMethod};
use compress::recipe::{Method, Recipe};

#[derive(Copy, Clone, Debug, PartialEq, ValueEnum)]
enum Pruner {
    /// Smallest |w| per layer (no calibration).
    Magnitude,
    /// |w|·‖x‖ per output row (Sun et al. 2023).
    Wanda,
    /// OBS mask selection with weight reconstruction (Frantar & Alistarh 2023).
    Sparsegpt,
}

#[derive(Copy, Clone, Debug, PartialEq, ValueEnum)]
enum Rank {
    /// Weight norms of the structure.
    Magnitude,
    /// Energy of the structure's output on calibration data.
    Activation,
    /// Heads only: attention entropy on calibration data (diffuse heads go first).
    Entropy,
    /// First-order Taylor (gradient × weight) of the calibration loss, via burn autodiff.
    Taylor,
}

impl From<Rank> for Importance {
    fn from(r: Rank) -> Self {
        match r {
            Rank::Magnitude => Importance::Magnitude,
            Rank::Activation => Importance::Activation,
            Rank::Entropy => Importance::Entropy,
            Rank::Taylor => Importance::Taylor,
        }
    }
}

#[derive(Parser, Debug, Clone)]
#[command(about = "Pruning (and quantization) with before/after perplexity and KL divergence.")]
struct Args {
    #[command(flatten)]
    run: common::RunArgs,
    /// Pruner.
    #[arg(long, value_enum, default_value_t = Pruner::Sparsegpt)]
    method: Pruner,
    /// Unstructured sparsity in [0, 1) (ignored with --nm).
    #[arg(long, default_value_t = 0.5)]
    sparsity: f64,
    /// N:M sparsity instead, e.g. 2:4 (at most N kept in every M weights of a row).
    #[arg(long)]
    nm: Option<String>,
    /// Magnitude and Wanda: which weights compete for an unstructured budget, `layer` or `row`
    /// [default: layer for magnitude, row for Wanda, as in the papers].
    #[arg(long)]
    compare: Option<String>,
    /// Quantize the kept weights to this many bits after pruning (GPTQ); 0 = prune only.
    #[arg(long, default_value_t = 4)]
    bits: u8,
    /// Weights per scale along a row; 0 = one scale per output channel.
    #[arg(long, default_value_t = 32)]
    group: usize,
    /// SparseGPT only: quantize in the same sweep that prunes, instead of a GPTQ step after it.
    #[arg(long)]
    joint: bool,
    /// Quantize first (GPTQ), then prune the quantized layers: masks only, the codes are kept.
    #[arg(long)]
    quant_first: bool,
    /// Structured: remove this fraction of every block's FFN neurons first (the model shrinks).
    #[arg(long, default_value_t = 0.0)]
    ffn: f64,
    /// Structured: remove about this fraction of every block's attention heads first.
    #[arg(long, default_value_t = 0.0)]
    heads: f64,
    /// Structured: how FFN neurons and heads are ranked.
    #[arg(long, value_enum, default_value_t = Rank::Activation)]
    importance: Rank,
    /// Structured: rank heads differently from FFN neurons (e.g. `entropy`).
    #[arg(long, value_enum)]
    head_importance: Option<Rank>,
    /// Structured: remove this many blocks of least influence (ShortGPT) first.
    #[arg(long, default_value_t = 0)]
    drop_blocks: usize,
    /// Layer sensitivity instead of a run: prune each layer alone with --method and the pattern,
    /// and print the KL divergence it causes, measured on this many calibration windows.
    #[arg(long)]
    sensitivity: Option<usize>,
    /// A recipe file (examples/recipes/*.toml): replaces the method, pattern, quantization and
    /// calibration flags.
    #[arg(long)]
    recipe: Option<PathBuf>,
    /// Print each kind of layer's weight distribution before and after (kurtosis, outliers).
    #[arg(long)]
    weight_stats: bool,
    /// With --weight-stats: also draw the distributions before and after (each weight in units
    /// of its dense layer's standard deviation; attention q/k apart from the rest), .svg or .png.
    #[arg(long, requires = "weight_stats")]
    plot_weights: Option<PathBuf>,
    /// With --sensitivity: also draw the KL divergence per block, a line per kind of layer
    /// (.svg or .png).
    #[arg(long, requires = "sensitivity")]
    plot_sensitivity: Option<PathBuf>,
}

/// The recipe the flags describe.
fn flags_recipe(args: &Args) -> Result<Recipe, String> {
    let pattern = match &args.nm {
        Some(nm) => PatternConfig {
            sparsity: None,
            nm: Some(nm.clone()),
        },
        None => PatternConfig {
            sparsity: Some(args.sparsity),
            nm: None,
        },
    };
    let group = (args.group > 0).then_some(args.group);
    let mut steps = Vec::new();
    let no_mask = args.nm.is_none() && args.sparsity == 0.0;
    if no_mask && !args.joint {
        // Nothing to mask: only the quantization step, if any.
        if args.bits > 0 {
            steps.push(RecipeStep {
                layers: None,
                method: Method::from(gptq(args.bits, group)),
            });
        }
        return Ok(recipe_of(args, steps));
    }
    if args.joint && (args.method != Pruner::Sparsegpt || args.bits == 0) {
        return Err("--joint needs --method sparsegpt and --bits > 0".into());
    }
    let score = ScoreConfig {
        pattern: pattern.clone(),
        compare: args.compare.clone(),
    };
    let prune = match args.method {
        Pruner::Magnitude => PruneMethod::Magnitude(score),
        Pruner::Wanda => PruneMethod::Wanda(score),
        Pruner::Sparsegpt => PruneMethod::Sparsegpt(SparseGptConfig {
            pattern,
            damp: 0.01,
            block_size: 128,
            quantize: args.joint.then_some(JointQuantConfig {
                bits: args.bits,
                group,
                symmetric: true,
            }),
        }),
    };
    let prune = RecipeStep {
        layers: None,
        method: Method::from(prune),
    };
    let quant = (args.bits > 0 && !args.joint).then(|| RecipeStep {
        layers: None,
        method: Method::from(gptq(args.bits, group)),
    });
    if args.quant_first && quant.is_none() {
        return Err("--quant-first needs --bits > 0 and no --joint".into());
    }
    if args.quant_first {
        steps.extend(quant);
        steps.push(prune);
    } else {
        steps.push(prune);
        steps.extend(quant);
    }
    Ok(recipe_of(args, steps))
}

fn gptq(bits: u8, group: Option<usize>) -> QuantMethod {
    QuantMethod::Gptq(GptqConfig {
        bits,
        group,
        symmetric: true,
        damp: 0.01,
        block_size: 128,
        act_order: false,
        clip: 1.0,
        search: false,
        k_quant: None,
    })
}

fn recipe_of(args: &Args, steps: Vec<RecipeStep<Method>>) -> Recipe {
    Recipe {
        version: RECIPE_VERSION,
        calibration: args.run.calibration(),
        steps,
        heal: None,
    }
}

/// Removes blocks, FFN neurons and heads as the flags ask (before any masking step).
fn structured(
    args: &Args,
    model: &mut compress::model::LlamaModel,
    windows: &[Vec<u32>],
) -> Result<(), Box<dyn std::error::Error>> {
    if args.drop_blocks > 0 {
        let bi = block_influence(model, windows)?;
        let drop = least_influential(&bi, args.drop_blocks);
        let before = model.num_parameters();
        model.remove_blocks(&drop)?;
        println!(
            "removed blocks {drop:?} (block influence {:?}): {before} → {} parameters",
            drop.iter()
                .map(|&b| format!("{:.4}", bi[b]))
                .collect::<Vec<_>>(),
            model.num_parameters()
        );
    }
    if args.ffn > 0.0 || args.heads > 0.0 {
        let cfg = StructuredConfig {
            ffn_fraction: args.ffn,
            head_fraction: args.heads,
            ffn_importance: args.importance.into(),
            head_importance: args.head_importance.unwrap_or(args.importance).into(),
        };
        let t0 = std::time::Instant::now();
        let mut line = compress::eval::progress::ProgressLine::new("structured");
        let r = prune_structured(model, windows, &cfg, |d, t| line.update(d, t, "blocks,"))?;
        println!(
            "structured (FFN by {:?}, heads by {:?}): removed {} FFN neurons and {} query / {} key-value heads per block in {:.1} s: {} → {} parameters ({:.1}% fewer)",
            args.importance,
            args.head_importance.unwrap_or(args.importance),
            r.ffn_removed,
            r.heads_removed.0,
            r.heads_removed.1,
            t0.elapsed().as_secs_f64(),
            r.parameters.0,
            r.parameters.1,
            100.0 * (1.0 - r.parameters.1 as f64 / r.parameters.0 as f64)
        );
    }
    Ok(())
}

/// Prunes each layer alone and prints the KL divergence to the unpruned model, per layer, per
/// block and per kind of layer.
fn sensitivity(
    args: &Args,
    model: &mut compress::model::LlamaModel,
    windows: &[Vec<u32>],
) -> Result<(), Box<dyn std::error::Error>> {
    let recipe = flags_recipe(&Args {
        bits: 0,
        joint: false,
        ..args.clone()
    })?;
    let Some(step) = recipe.steps.first() else {
        return Err("--sensitivity needs a sparsity or --nm".into());
    };
    let mut line = compress::eval::progress::ProgressLine::new("sensitivity");
    let sens = measure_sensitivity(
        model,
        windows,
        std::slice::from_ref(&step.method),
        |d, t| line.update(d, t, "layers,"),
    )?;
    let name = step.method.build()?.name();
    println!(
        "{name}: KL divergence with one layer pruned ({} windows)",
        windows.len()
    );
    let mut by_block = std::collections::BTreeMap::<usize, Vec<f64>>::new();
    let mut by_kind = std::collections::BTreeMap::<String, Vec<(usize, f64)>>::new();
    for l in &sens {
        let kld = l.options[0].1;
        println!("{:<24} {kld:.5}", l.id.to_string());
        let block = l.id.block_index().ok_or("the head is never measured")?;
        by_block.entry(block).or_default().push(kld);
        let kind = l.id.kind().short_name().to_string();
        by_kind.entry(kind).or_default().push((block, kld));
    }
    let mean = |v: &Vec<f64>| v.iter().sum::<f64>() / v.len().max(1) as f64;
    for (b, v) in &by_block {
        println!(
            "block {b:>2}: mean {:.5}, max {:.5}",
            mean(v),
            v.iter().cloned().fold(0.0, f64::max)
        );
    }
    for (k, v) in &by_kind {
        let klds: Vec<f64> = v.iter().map(|p| p.1).collect();
        println!("{k:<10} mean over blocks {:.5}", mean(&klds));
    }
    if let Some(path) = &args.plot_sensitivity {
        let series: Vec<Series> = by_kind
            .iter()
            .map(|(kind, v)| Series {
                name: kind.clone(),
                points: v.iter().map(|&(b, k)| (b as f64, k)).collect(),
            })
            .collect();
        let chart = Chart {
            title: format!("{name}: KL divergence with one layer pruned"),
            x_label: "block".into(),
            y_label: "KLD to the dense model (nats/token)".into(),
            log_y: true,
            lines: true,
        };
        plot(path, &chart, &series)?;
        eprintln!("sensitivity chart written to {}", path.display());
    }
    Ok(())
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args = Args::parse();
    let device = args.run.backend.device()?;
    let m = common::load_model(args.run.model.as_deref(), &device)?;
    let (calib_text, eval_text) =
        common::calibration_and_eval_text(&args.run.calib, &args.run.text)?;
    let calib_tokens = m.tokenizer.encode(&calib_text, true)?;
    let recipe = match &args.recipe {
        Some(path) => Recipe::from_file(path)?,
        None => flags_recipe(&args)?,
    };
    if let Some(path) = &args.run.save_recipe {
        std::fs::write(path, recipe.to_toml()?)?;
        eprintln!("recipe written to {}", path.display());
    }
    let c = &recipe.calibration;
    let windows = sample_windows(&calib_tokens, c.nsamples, c.seqlen, c.seed)?;
    if let Some(n) = args.sensitivity {
        return sensitivity(
            &args,
            &mut m.model.clone(),
            &windows[..n.clamp(1, windows.len())],
        );
    }
    let base = (!args.run.no_eval).then(|| m.model.clone());
    let mut model = m.model.clone();
    structured(&args, &mut model, &windows)?;
    if !recipe.steps.is_empty() {
        recipe.validate()?;
        recipe.without_heal("this example")?;
        let pipeline = recipe.pipeline()?;
        let names: Vec<String> = pipeline.steps.iter().map(|s| s.compressor.name()).collect();
        let report = pipeline.run(&mut model, &windows, common::pipeline_progress("compress"))?;
        common::print_summary(&names.join(" → "), &report, &model)?;
    } else if args.ffn == 0.0 && args.heads == 0.0 && args.drop_blocks == 0 {
        return Err(
            "nothing to do: give a sparsity, --nm, --bits, --ffn, --heads or --drop-blocks".into(),
        );
    }
    if args.weight_stats {
        common::print_weight_stats(&m.model, &model);
        if let Some(path) = &args.plot_weights {
            common::plot_weight_distributions(&m.model, &model, path)?;
            eprintln!("weight distributions written to {}", path.display());
        }
    }
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
