//! `compress run`, `quantize`, `prune` and `lowrank`: a recipe over the block-by-block pipeline, then the
//! output file, then (with `--eval`) perplexity and KL divergence against the input model.
//!
//! `quantize`, `prune` and `lowrank` are one-step recipes built from their flags, so they behave exactly
//! like `run` with the equivalent recipe file (and `--json` prints that recipe).

use std::collections::BTreeMap;
use std::path::Path;

use compress::core::calibration::sample_windows;
use compress::core::kquant::KQuant;
use compress::core::packed::Symmetry;
use compress::eval::kld::{kl_divergence, KldReport};
use compress::eval::perplexity::{PerplexityConfig, Scoring};
use compress::eval::seeds::{summarize, SeedSummary};
use compress::model::container::{write_container, ContainerOptions};
use compress::model::gguf::GgmlType;
use compress::model::save::{
    write_compressed_tensors, write_gguf, CompressedTensorsExport, GgufExport, HfDtype,
};
use compress::model::LoadedModel;
use compress::recipe::Recipe;
use serde::Serialize;

use crate::cli::{
    CompressArgs, DenseType, Format, LowRankMethodName, LowrankArgs, PruneArgs, QuantMethodName,
    QuantizeArgs, RunArgs,
};
use crate::progress::{bar, counter};
use crate::{load_model, print_json, read_text, CliError, CliResult};

/// What was written.
#[derive(Debug, Clone, Serialize)]
pub struct OutputReport {
    /// The file.
    pub path: String,
    /// `container`, `gguf` or `compressed-tensors`.
    pub format: String,
    /// File size.
    pub bytes: u64,
    /// Layers written dense because the format cannot express them, with the reason.
    pub dense_fallbacks: Vec<(String, String)>,
    /// GGUF: largest |w_file − w_model| over all tensors (0 when every conversion is exact).
    pub max_abs_error: f32,
}

/// What a compression command reports.
#[derive(Debug, Clone, Serialize)]
pub struct CompressReport {
    /// The recipe that ran (TOML).
    pub recipe: String,
    /// Layer steps applied.
    pub layer_steps: usize,
    /// Wall time of the pipeline, seconds.
    pub seconds: f64,
    /// Calibration tokens.
    pub calibration_tokens: usize,
    /// Peak resident memory, bytes (Linux).
    pub peak_rss_bytes: Option<u64>,
    /// Stored bits per weight over the blocks' linear layers.
    pub linear_bits_per_weight: f64,
    /// The output file.
    pub output: OutputReport,
    /// With `--eval`: perplexities and KL divergence to the input model.
    pub eval: Option<KldReport>,
    /// The recipe's `[heal]` stage, when it has one.
    pub heal: Option<HealReport>,
    /// With `--repeat-seeds N > 1`: quality over the N calibration seeds.
    pub seeds: Option<SeedRuns>,
}

/// Quality of one recipe compressed with several calibration seeds.
#[derive(Debug, Clone, Serialize)]
pub struct SeedRuns {
    /// The calibration seeds, in run order.
    pub seeds: Vec<u64>,
    /// Perplexity of the compressed model per seed (all-token scoring of the `--eval` text).
    pub perplexity: SeedSummary,
    /// Mean KL divergence to the input model per seed.
    pub kld: SeedSummary,
}

/// What a `[heal]` stage did.
#[derive(Debug, Clone, Serialize)]
pub struct HealReport {
    /// Optimiser steps run.
    pub steps: usize,
    /// Wall time, seconds.
    pub seconds: f64,
    /// Distillation loss (KL to the uncompressed model) of the first and the last step.
    pub kl_first_last: (f64, f64),
}

/// Runs `compress run`.
pub fn run_recipe(args: &RunArgs, device: &burn::tensor::Device, json: bool) -> CliResult<()> {
    let recipe = Recipe::from_file(&args.recipe)
        .map_err(|e| CliError::usage(format!("{}: {e}", args.recipe.display())))?;
    execute(recipe, &args.common, device, json, None)
}

fn one_step(
    step: toml::Table,
    layers: &Option<String>,
    common: &CompressArgs,
) -> CliResult<Recipe> {
    let mut step = step;
    if let Some(l) = layers {
        step.insert("layers".into(), l.clone().into());
    }
    let mut root = toml::Table::new();
    root.insert("version".into(), 1.into());
    let mut calib = toml::Table::new();
    calib.insert(
        "nsamples".into(),
        (common.nsamples.unwrap_or(128) as i64).into(),
    );
    calib.insert(
        "seqlen".into(),
        (common.seqlen.unwrap_or(128) as i64).into(),
    );
    calib.insert("seed".into(), (common.seed.unwrap_or(0) as i64).into());
    root.insert("calibration".into(), calib.into());
    root.insert("step".into(), toml::Value::Array(vec![step.into()]));
    let text = toml::to_string(&root).map_err(CliError::failed)?;
    Recipe::from_toml(&text).map_err(CliError::usage)
}

/// Runs `compress quantize`.
pub fn quantize(args: &QuantizeArgs, device: &burn::tensor::Device, json: bool) -> CliResult<()> {
    let name = format!("{:?}", args.method).to_lowercase();
    let mut t = toml::Table::new();
    t.insert("method".into(), name.clone().into());
    if let Some(k) = &args.k_quant {
        let k = KQuant::parse(k).map_err(|e| CliError::usage(format!("--k-quant: {e}")))?;
        if !matches!(args.method, QuantMethodName::Rtn | QuantMethodName::Gptq) {
            return Err(CliError::usage(format!(
                "--k-quant works with --method rtn or gptq, not {name}"
            )));
        }
        t.insert("bits".into(), i64::from(k.bits()).into());
        t.insert("group".into(), (k.group() as i64).into());
        t.insert(
            "symmetric".into(),
            (k.symmetry() == Symmetry::Symmetric).into(),
        );
        t.insert("k_quant".into(), k.name().into());
    } else {
        t.insert("bits".into(), i64::from(args.bits).into());
        if !args.per_channel {
            t.insert("group".into(), (args.group as i64).into());
        }
        if name == "hqq" {
            if !args.asym {
                eprintln!("note: HQQ is always asymmetric");
            }
        } else {
            t.insert("symmetric".into(), (!args.asym).into());
        }
    }
    execute(
        one_step(t, &args.layers, &args.common)?,
        &args.common,
        device,
        json,
        None,
    )
}

/// Runs `compress prune`.
pub fn prune(args: &PruneArgs, device: &burn::tensor::Device, json: bool) -> CliResult<()> {
    let mut t = toml::Table::new();
    t.insert(
        "method".into(),
        format!("{:?}", args.method).to_lowercase().into(),
    );
    if let Some(s) = args.sparsity {
        t.insert("sparsity".into(), s.into());
    }
    if let Some(nm) = &args.nm {
        t.insert("nm".into(), nm.clone().into());
    }
    if let Some(bits) = args.quantize_bits {
        let mut q = toml::Table::new();
        q.insert("bits".into(), i64::from(bits).into());
        q.insert("group".into(), (args.quantize_group as i64).into());
        t.insert("quantize".into(), q.into());
    }
    execute(
        one_step(t, &args.layers, &args.common)?,
        &args.common,
        device,
        json,
        None,
    )
}

/// Runs `compress lowrank`.
pub fn lowrank(args: &LowrankArgs, device: &burn::tensor::Device, json: bool) -> CliResult<()> {
    let mut t = toml::Table::new();
    let method = match args.method {
        LowRankMethodName::Svd => "svd",
        LowRankMethodName::Asvd => "asvd",
        LowRankMethodName::SvdLlm => "svd-llm",
    };
    t.insert("method".into(), method.into());
    if let Some(r) = args.ratio {
        t.insert("ratio".into(), r.into());
    }
    if let Some(e) = args.energy {
        t.insert("energy".into(), e.into());
    }
    if let Some(r) = args.rank {
        t.insert("rank".into(), (r as i64).into());
    }
    let recipe = one_step(t, &args.layers, &args.common)?;
    if !args.allocate {
        return execute(recipe, &args.common, device, json, None);
    }
    let plan = |m: &mut LoadedModel, windows: &[Vec<u32>], recipe: &Recipe| {
        crate::allocate_cmd::allocate(args, m, windows, recipe, json)
    };
    execute(recipe, &args.common, device, json, Some(&plan))
}

/// The calibration text and the evaluation text; when both are the same file, calibration
/// gets its first half (up to a line break) and evaluation the second.
pub(crate) fn texts(calib: &Path, eval: Option<&Path>) -> CliResult<(String, Option<String>)> {
    let calib_text = read_text(calib)?;
    let Some(eval) = eval else {
        return Ok((calib_text, None));
    };
    if std::fs::canonicalize(calib).ok() != std::fs::canonicalize(eval).ok() {
        return Ok((calib_text, Some(read_text(eval)?)));
    }
    eprintln!(
        "calibrating on the first half of {}, evaluating on the second",
        calib.display()
    );
    let (c, e) = compress::core::calibration::split_halves(&calib_text);
    Ok((c.to_string(), Some(e.to_string())))
}

/// Replaces a one-step recipe by a planned one, given the loaded model and the calibration
/// windows (rank allocation).
type Planner<'a> = &'a dyn Fn(&mut LoadedModel, &[Vec<u32>], &Recipe) -> CliResult<Recipe>;

fn execute(
    mut recipe: Recipe,
    args: &CompressArgs,
    device: &burn::tensor::Device,
    json: bool,
    planner: Option<Planner>,
) -> CliResult<()> {
    let c = &mut recipe.calibration;
    c.nsamples = args.nsamples.unwrap_or(c.nsamples);
    c.seqlen = args.seqlen.unwrap_or(c.seqlen);
    c.seed = args.seed.unwrap_or(c.seed);
    c.precision = args.calib_precision.unwrap_or(c.precision);
    c.keep_intermediates |= args.keep_intermediates;
    // Checked before the model loads, so a bad recipe fails fast.
    recipe.pipeline().map_err(CliError::usage)?;
    let format = match args.format {
        Some(f) => f,
        None if args.output.extension().is_some_and(|e| e == "gguf") => Format::Gguf,
        None => Format::Container,
    };
    if args.embedding_q8 && format != Format::Gguf {
        return Err(CliError::usage(
            "--embedding-q8 applies to GGUF output (a .gguf path or --format gguf)",
        ));
    }
    if format == Format::CompressedTensors && args.output.exists() {
        return Err(CliError::usage(format!(
            "{} exists: compressed-tensors output is a new directory",
            args.output.display()
        )));
    }
    let mut m = load_model(args.model.model.as_deref(), device)?;
    let base = match args.eval {
        Some(_) => Some(load_model(args.model.model.as_deref(), device)?),
        None => None,
    };
    let (calib_text, eval_text) = texts(&args.calib, args.eval.as_deref())?;
    let calib_tokens = m
        .tokenizer
        .encode(&calib_text, true)
        .map_err(CliError::failed)?;
    let c = recipe.calibration.clone();
    let windows = sample_windows(&calib_tokens, c.nsamples, c.seqlen, c.seed)
        .map_err(|e| CliError::input(format!("{}: {e}", args.calib.display())))?;
    if let Some(plan) = planner {
        recipe = plan(&mut m, &windows, &recipe)?;
    }
    let pipeline = recipe.pipeline().map_err(CliError::usage)?;
    let recipe_text = recipe.to_toml().map_err(CliError::failed)?;

    // The uncompressed model a [heal] stage distils from (the evaluation base when loaded).
    let teacher = match (&recipe.heal, &base) {
        (None, _) => None,
        (Some(_), Some(b)) => Some(b.model.clone()),
        (Some(_), None) => Some(m.model.clone()),
    };
    let (report, heal) = compress_once(
        &pipeline,
        &mut m,
        &windows,
        &calib_tokens,
        teacher.as_ref(),
        &recipe,
        "compress",
        json,
    )?;

    // Layer steps keep every neuron's and head's place, so a nested model stays nested.
    let nesting = crate::input_nesting(args.model.model.as_deref())?;
    let output = save(&m, args, format, &recipe_text, nesting)?;
    let eval = match (&base, &eval_text) {
        (Some(base), Some(text)) => Some(evaluate(base, &m, text, args, json)?),
        _ => None,
    };
    let seeds = match (&base, &eval_text, &eval) {
        (Some(base), Some(text), Some(first)) if args.repeat_seeds > 1 => {
            let mut seeds = vec![c.seed];
            let (mut ppl, mut kld) = (vec![first.mean_nll.1.exp()], vec![first.kld.mean]);
            for k in 1..args.repeat_seeds {
                let seed = c.seed + k as u64;
                let windows = sample_windows(&calib_tokens, c.nsamples, c.seqlen, seed)
                    .map_err(|e| CliError::input(format!("{}: {e}", args.calib.display())))?;
                let mut run = LoadedModel {
                    model: base.model.clone(),
                    tokenizer: base.tokenizer.clone(),
                };
                compress_once(
                    &pipeline,
                    &mut run,
                    &windows,
                    &calib_tokens,
                    Some(&base.model),
                    &recipe,
                    &format!("seed {seed}"),
                    json,
                )?;
                let k = evaluate(base, &run, text, args, json)?;
                seeds.push(seed);
                ppl.push(k.mean_nll.1.exp());
                kld.push(k.kld.mean);
            }
            Some(SeedRuns {
                seeds,
                perplexity: summarize(&ppl).map_err(CliError::failed)?,
                kld: summarize(&kld).map_err(CliError::failed)?,
            })
        }
        _ => None,
    };
    let r = CompressReport {
        recipe: recipe_text,
        layer_steps: report.layers.len(),
        seconds: report.seconds,
        calibration_tokens: report.calibration_tokens,
        peak_rss_bytes: report.peak_rss_bytes,
        linear_bits_per_weight: crate::inspect::report(&m, String::new(), String::new())
            .linear_bits_per_weight,
        output,
        eval,
        heal,
        seeds,
    };
    if json {
        return print_json(&r);
    }
    println!(
        "{} layer steps in {:.1} s on {} calibration tokens (peak RSS {:.0} MiB); block linears at {:.3} bits/weight",
        r.layer_steps,
        r.seconds,
        r.calibration_tokens,
        r.peak_rss_bytes.unwrap_or(0) as f64 / (1 << 20) as f64,
        r.linear_bits_per_weight
    );
    println!(
        "wrote {} ({}, {:.2} MB)",
        r.output.path,
        r.output.format,
        r.output.bytes as f64 / 1e6
    );
    for (name, why) in &r.output.dense_fallbacks {
        println!("  {name}: written dense ({why})");
    }
    if r.output.max_abs_error > 0.0 {
        println!(
            "  largest |Δw| from format conversion: {:.2e} (Q4_1/Q5_1/k-quant minimums rounded to f16, dense f16/bf16, or the Q8_0 embedding)",
            r.output.max_abs_error
        );
    }
    if let Some(h) = &r.heal {
        println!(
            "healed: {} LoRA steps in {:.1} s, distillation KL {:.4} → {:.4}",
            h.steps, h.seconds, h.kl_first_last.0, h.kl_first_last.1
        );
    }
    if let Some(k) = &r.eval {
        print_kld(args.context, k);
    }
    if let Some(s) = &r.seeds {
        println!(
            "over calibration seeds {:?}: perplexity {}, KLD {}",
            s.seeds, s.perplexity, s.kld
        );
    }
    Ok(())
}

/// Runs the recipe's layer steps on `m` (a progress bar labelled `label`), then its `[heal]`
/// stage, distilling from `teacher`, when it has one.
#[allow(clippy::too_many_arguments)]
fn compress_once(
    pipeline: &compress::core::pipeline::Pipeline,
    m: &mut LoadedModel,
    windows: &[Vec<u32>],
    tokens: &[u32],
    teacher: Option<&compress::model::LlamaModel>,
    recipe: &Recipe,
    label: &str,
    json: bool,
) -> CliResult<(compress::core::pipeline::PipelineReport, Option<HealReport>)> {
    let pb = bar(label, "blocks", m.model.layers.len(), json);
    let report = pipeline
        .run(&mut m.model, windows, |r, block, _| {
            pb.set_position(block as u64);
            pb.set_message(format!(
                "{} ({}, out err {:.1e})",
                r.id,
                r.method,
                r.output_rel_error.unwrap_or(f64::NAN)
            ));
        })
        .map_err(CliError::failed)?;
    pb.finish_and_clear();
    let heal = match (&recipe.heal, teacher) {
        (Some(h), Some(t)) => Some(run_heal(m, t, tokens, h, recipe, json)?),
        _ => None,
    };
    Ok((report, heal))
}

/// Runs a recipe's `[heal]` stage on the compressed model in `m`.
fn run_heal(
    m: &mut LoadedModel,
    teacher: &compress::model::LlamaModel,
    tokens: &[u32],
    h: &compress::core::recipe::HealConfig,
    recipe: &Recipe,
    json: bool,
) -> CliResult<HealReport> {
    let c = &recipe.calibration;
    let pb = bar("heal", "steps", h.steps, json);
    let clock = std::time::Instant::now();
    let student = m.model.clone();
    let out = compress::distill::heal::heal(student, teacher, tokens, h, c.seqlen, c.seed, |i| {
        pb.set_position(i.loss.step as u64 + 1);
        pb.set_message(format!("KL {:.4}", i.loss.total));
    })
    .map_err(|e| match e {
        compress::distill::DistillError::Config(c) => CliError::usage(format!("[heal]: {c}")),
        e => CliError::failed(e),
    })?;
    pb.finish_and_clear();
    m.model = out.student;
    let kl = |s: Option<&compress::distill::train::StepLoss>| s.map_or(f64::NAN, |s| s.total);
    Ok(HealReport {
        steps: out.history.len(),
        seconds: clock.elapsed().as_secs_f64(),
        kl_first_last: (kl(out.history.first()), kl(out.history.last())),
    })
}

/// Prints the perplexities and KL divergence of an `--eval` run on one line.
pub(crate) fn print_kld(context: usize, k: &KldReport) {
    println!(
        "perplexity (context {context}, {} tokens): {:.4} → {:.4}; KLD {:.5} (95% {:.5}–{:.5}), same top token {:.4}",
        k.tokens,
        k.mean_nll.0.exp(),
        k.mean_nll.1.exp(),
        k.kld.mean,
        k.kld.lo,
        k.kld.hi,
        k.same_top.mean
    );
}

pub(crate) fn save(
    m: &LoadedModel,
    args: &CompressArgs,
    format: Format,
    recipe: &str,
    nesting: Option<compress::model::container::NestingEntry>,
) -> CliResult<OutputReport> {
    let path = &args.output;
    let (dense_fallbacks, max_abs_error) = match format {
        Format::Container => {
            let mut provenance = BTreeMap::new();
            provenance.insert(
                "source".into(),
                args.model
                    .model
                    .as_ref()
                    .map_or("embedded stories260K".into(), |p| p.display().to_string()),
            );
            provenance.insert("recipe".into(), recipe.to_string());
            provenance.insert(
                "tool".into(),
                format!("compress-cli {}", env!("CARGO_PKG_VERSION")),
            );
            let options = ContainerOptions {
                provenance,
                nesting,
            };
            write_container(&m.model, &m.tokenizer, path, &options).map_err(CliError::failed)?;
            (Vec::new(), 0.0)
        }
        Format::CompressedTensors => {
            let options = CompressedTensorsExport {
                dtype: match args.dense_type {
                    None | Some(DenseType::F16) => HfDtype::F16,
                    Some(DenseType::Bf16) => HfDtype::Bf16,
                    Some(DenseType::F32) => {
                        return Err(CliError::usage(
                            "compressed-tensors checkpoints are f16 or bf16 (--dense-type)",
                        ))
                    }
                },
                fallback_dense: args.dense_fallback,
            };
            let r = write_compressed_tensors(&m.model, &m.tokenizer, path, &options)
                .map_err(CliError::failed)?;
            let fallbacks = r
                .dense
                .into_iter()
                .filter_map(|(name, why)| why.map(|w| (name, w)))
                .collect();
            (fallbacks, 0.0)
        }
        Format::Gguf => {
            let options = GgufExport {
                dense: match args.dense_type {
                    None | Some(DenseType::F32) => GgmlType::F32,
                    Some(DenseType::F16) => GgmlType::F16,
                    Some(DenseType::Bf16) => GgmlType::BF16,
                },
                fallback_dense: args.dense_fallback,
                embedding: args.embedding_q8.then_some(GgmlType::Q8_0),
                name: "compress".into(),
            };
            let r = write_gguf(&m.model, &m.tokenizer, path, &options).map_err(CliError::failed)?;
            for note in &r.notes {
                eprintln!("note: {note}");
            }
            let fallbacks = r
                .tensors
                .iter()
                .filter_map(|t| t.fallback.clone().map(|f| (t.name.clone(), f)))
                .collect();
            let worst = r
                .tensors
                .iter()
                .map(|t| t.max_abs_error)
                .fold(0.0, f32::max);
            (fallbacks, worst)
        }
    };
    let bytes = if path.is_dir() {
        std::fs::read_dir(path)
            .map_err(CliError::failed)?
            .filter_map(|e| e.ok()?.metadata().ok())
            .map(|m| m.len())
            .sum()
    } else {
        std::fs::metadata(path).map_err(CliError::failed)?.len()
    };
    Ok(OutputReport {
        path: path.display().to_string(),
        format: match format {
            Format::Container => "container",
            Format::Gguf => "gguf",
            Format::CompressedTensors => "compressed-tensors",
        }
        .into(),
        bytes,
        dense_fallbacks,
        max_abs_error,
    })
}

pub(crate) fn evaluate(
    base: &LoadedModel,
    m: &LoadedModel,
    text: &str,
    args: &CompressArgs,
    json: bool,
) -> CliResult<KldReport> {
    let tokens = m.tokenizer.encode(text, true).map_err(CliError::failed)?;
    let config = PerplexityConfig {
        context: args.context,
        scoring: Scoring::AllTokens,
        max_windows: args.limit,
        bos: m.tokenizer.bos_id(),
    };
    let pb = bar("evaluate", "windows", 0, json);
    let r = kl_divergence(&base.model, &m.model, &tokens, &config, counter(&pb))
        .map_err(CliError::failed)?;
    pb.finish_and_clear();
    Ok(r)
}
