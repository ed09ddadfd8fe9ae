//! Helpers shared by the compression examples: model loading with the embedded default, the
//! calibration / evaluation text split, the pipeline summary line and the before/after
//! evaluation.
#![allow(dead_code)] // each example uses a subset

use std::path::{Path, PathBuf};

use compress::core::pipeline::PipelineReport;
use compress::eval::kld::kl_divergence;
use compress::eval::perplexity::{PerplexityConfig, Scoring};
use compress::eval::progress::ProgressLine;
use compress::model::{LlamaModel, LlmTokenizer, LoadedModel};

/// The flags every compression example shares: model, texts, calibration, evaluation, backend.
#[derive(clap::Args, Debug, Clone)]
pub struct RunArgs {
    /// GGUF file or Hugging Face checkpoint directory [default: embedded stories260K].
    #[arg(long)]
    pub model: Option<PathBuf>,
    /// Calibration text.
    #[arg(long, default_value = "../shared/data/tinystories/val.txt")]
    pub calib: PathBuf,
    /// Evaluation text (perplexity and KL divergence).
    #[arg(long, default_value = "../shared/data/tinystories/val.txt")]
    pub text: PathBuf,
    /// Calibration windows.
    #[arg(long, default_value_t = 128)]
    pub nsamples: usize,
    /// Tokens per calibration window.
    #[arg(long, default_value_t = 128)]
    pub seqlen: usize,
    /// Calibration windows per forward pass (memory vs speed; two batches run side by side).
    #[arg(long, default_value_t = 2)]
    pub batch_size: usize,
    /// Calibration sampling seed.
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
    /// Evaluation window length.
    #[arg(long, default_value_t = 256)]
    pub context: usize,
    /// Evaluate at most this many windows.
    #[arg(long)]
    pub limit: Option<usize>,
    /// Write the recipe that was run to this file.
    #[arg(long)]
    pub save_recipe: Option<PathBuf>,
    /// Compress only: no evaluation, and no copy of the base model (measures the pipeline's own
    /// time and memory).
    #[arg(long)]
    pub no_eval: bool,
    /// Calibration arithmetic: f32, or bf16 (AMX or AVX-512 BF16 where the CPU has them; see
    /// `Pipeline::calibration_precision`).
    #[arg(long, default_value_t = compress::core::recipe::CalibrationPrecision::F32)]
    pub calib_precision: compress::core::recipe::CalibrationPrecision,
    /// Keep each block's MLP activations between calibration stages instead of recomputing
    /// them: faster, more memory (`Pipeline::keep_intermediates`).
    #[arg(long)]
    pub keep_intermediates: bool,
    /// Backend: flex, ndarray, wgpu, cuda, tch.
    #[arg(long, default_value_t = compress::core::backend::BackendKind::default())]
    pub backend: compress::core::backend::BackendKind,
    /// After each compressed layer, print the live heap (bytes allocated and not freed), its
    /// peak since the previous layer, and the resident set: where calibration memory goes.
    #[arg(long)]
    pub trace_memory: bool,
}

impl RunArgs {
    /// The calibration settings the flags give.
    pub fn calibration(&self) -> compress::core::recipe::CalibrationConfig {
        compress::core::recipe::CalibrationConfig {
            nsamples: self.nsamples,
            seqlen: self.seqlen,
            seed: self.seed,
            batch_size: self.batch_size,
            precision: self.calib_precision,
            keep_intermediates: self.keep_intermediates,
        }
    }
}

/// Every example counts its heap allocations, so `--trace-memory` can tell live heap bytes from
/// the resident set (two relaxed atomic updates per allocation).
#[global_allocator]
static ALLOC: compress::core::memory::CountingAllocator = compress::core::memory::CountingAllocator;

/// stories260K, embedded so the examples run with no arguments.
pub static EMBEDDED: &[u8] = include_bytes!("../../assets/stories260K.gguf");

/// Loads `path`, or the embedded stories260K when `None`.
pub fn load_model(
    path: Option<&Path>,
    device: &burn::tensor::Device,
) -> Result<LoadedModel, Box<dyn std::error::Error>> {
    Ok(match path {
        Some(p) => compress::model::load(p, device)?,
        None => compress::model::load::load_gguf_bytes(EMBEDDED.to_vec(), device)?,
    })
}

fn read(p: &Path) -> Result<String, String> {
    std::fs::read_to_string(p).map_err(|e| format!("cannot read {}: {e}", p.display()))
}

/// The calibration text and the evaluation text. When both are the same file, calibration gets
/// its first half (up to a line break) and evaluation the second: never the same text twice.
pub fn calibration_and_eval_text(
    calib: &Path,
    eval: &Path,
) -> Result<(String, String), Box<dyn std::error::Error>> {
    let same_file = std::fs::canonicalize(calib).ok() == std::fs::canonicalize(eval).ok();
    let calib_text = read(calib)?;
    if !same_file {
        return Ok((calib_text, read(eval)?));
    }
    eprintln!(
        "calibrating on the first half of {}, evaluating on the second",
        calib.display()
    );
    let (c, e) = compress::core::calibration::split_halves(&calib_text);
    Ok((c.to_string(), e.to_string()))
}

/// With `--trace-memory`, one line of where memory stands at `point` (live heap and its peak
/// since the previous line, resident set and its peak).
pub fn trace_memory_at(point: &str, args: &RunArgs) {
    use compress::core::memory::{
        live_heap_bytes, peak_rss_bytes, rss_bytes, take_peak_heap_bytes,
    };
    if args.trace_memory {
        let mib = |b: u64| b as f64 / (1u64 << 20) as f64;
        eprintln!(
            "memory {point}: live heap {:.1} MiB, heap peak {:.1} MiB, RSS {:.1} MiB (peak {:.1} MiB)",
            mib(live_heap_bytes() as u64),
            mib(take_peak_heap_bytes() as u64),
            mib(rss_bytes().unwrap_or(0)),
            mib(peak_rss_bytes().unwrap_or(0)),
        );
    }
}

/// A progress callback for [`Pipeline::run`](compress::core::pipeline::Pipeline::run): blocks
/// done, the layer and its output error.
pub fn pipeline_progress(
    what: &str,
) -> impl FnMut(&compress::core::compressor::LayerReport, usize, usize) {
    pipeline_progress_traced(what, false)
}

/// [`pipeline_progress`], with one memory line per layer when `trace_memory` (see
/// [`RunArgs::trace_memory`]): live heap now, its peak since the previous line (which covers
/// the layer's statistics and its compression), and the resident set now and at its peak.
pub fn pipeline_progress_traced(
    what: &str,
    trace_memory: bool,
) -> impl FnMut(&compress::core::compressor::LayerReport, usize, usize) {
    use compress::core::memory::{
        allocator_stats, live_heap_bytes, peak_rss_bytes, rss_bytes, take_peak_heap_bytes,
    };
    let mut line = ProgressLine::new(what);
    let mib = |b: u64| b as f64 / (1u64 << 20) as f64;
    move |r, block, blocks| {
        if trace_memory {
            let glibc = allocator_stats().map_or(String::new(), |a| {
                format!(
                    "; glibc: heap in use {:.1}, heap free {:.1}, mapped {:.1} MiB",
                    mib(a.heap_in_use),
                    mib(a.heap_free),
                    mib(a.mapped)
                )
            });
            eprintln!(
                "memory after {:<24} live heap {:7.1} MiB, heap peak {:7.1} MiB, RSS {:7.1} MiB (peak {:7.1} MiB){glibc}",
                r.id.to_string(),
                mib(live_heap_bytes() as u64),
                mib(take_peak_heap_bytes() as u64),
                mib(rss_bytes().unwrap_or(0)),
                mib(peak_rss_bytes().unwrap_or(0)),
            );
        }
        let detail = format!(
            "blocks, {:<22} output err {:.1e},",
            r.id.to_string(),
            r.output_rel_error.unwrap_or(f64::NAN)
        );
        line.update(
            block + usize::from(r.id.kind() == compress::core::layer_id::LinearKind::Down),
            blocks,
            &detail,
        )
    }
}

/// Prints what a pipeline run did: steps, time, calibration tokens, peak memory, and the stored
/// bits per weight and sparsity over the layers it changed (each layer's last step counts).
pub fn print_summary(
    steps: &str,
    report: &PipelineReport,
    model: &LlamaModel,
) -> Result<(), Box<dyn std::error::Error>> {
    let mut last = std::collections::BTreeMap::new();
    for r in &report.layers {
        last.insert(r.id, r);
    }
    let (mut bits, mut pruned, mut weights) = (0.0, 0.0, 0usize);
    for (id, r) in &last {
        let lin = model
            .linear(*id)
            .ok_or_else(|| format!("the report names `{id}`, which the model lacks"))?;
        let n = lin.in_features() * lin.out_features();
        bits += r.bits_per_weight * n as f64;
        pruned += r.sparsity * n as f64;
        weights += n;
    }
    let maths: f64 = report.layers.iter().map(|r| r.seconds).sum();
    let w = weights.max(1) as f64;
    println!(
        "{steps}: {} layer steps in {:.1} s ({:.1} s in the compressors, the rest calibration forward passes and statistics) on {} calibration tokens, peak RSS {:.0} MiB; over the {} compressed layers {:.3} stored bits/weight, {:.2}% of weights pruned",
        report.layers.len(),
        report.seconds,
        maths,
        report.calibration_tokens,
        report.peak_rss_bytes.unwrap_or(0) as f64 / (1 << 20) as f64,
        last.len(),
        bits / w,
        100.0 * pruned / w,
    );
    Ok(())
}

/// Perplexity of both models and the KL divergence of `model` to `base` in one pass over
/// `text`, printed.
pub fn evaluate(
    base: &LlamaModel,
    model: &LlamaModel,
    tokenizer: &LlmTokenizer,
    text: &str,
    context: usize,
    limit: Option<usize>,
) -> Result<(), Box<dyn std::error::Error>> {
    let tokens = tokenizer.encode(text, true)?;
    let config = PerplexityConfig {
        context,
        scoring: Scoring::AllTokens,
        max_windows: limit,
        bos: tokenizer.bos_id(),
    };
    let mut line = ProgressLine::new("KL divergence");
    let kld = kl_divergence(base, model, &tokens, &config, |d, t| {
        line.update(d, t, "windows,")
    })?;
    println!(
        "perplexity (context {context}, {} tokens scored): {:.4} → {:.4}; KLD {:.5} (95% {:.5}–{:.5}), same top token {:.4}",
        kld.tokens,
        kld.mean_nll.0.exp(),
        kld.mean_nll.1.exp(),
        kld.kld.mean,
        kld.kld.lo,
        kld.kld.hi,
        kld.same_top.mean
    );
    Ok(())
}

/// Prints, per kind of layer (averaged over blocks), the weight distribution of `base` and of
/// `model`'s kept (non-zero) weights: standard deviation, excess kurtosis, 3σ outlier fraction,
/// largest |w| and the zero fraction.
pub fn print_weight_stats(base: &LlamaModel, model: &LlamaModel) {
    use compress::core::layer_id::LinearId;
    use compress::eval::weights::weight_stats;
    println!("weight distribution (mean over blocks; after = non-zero weights): kind, std, excess kurtosis, 3σ outliers %, max|w|, zeros %");
    for kind in compress::model::llama::BLOCK_LINEARS {
        let mut acc = [[0f64; 5]; 2];
        let blocks = base.num_blocks().min(model.num_blocks());
        for b in 0..blocks {
            for (k, m) in [base, model].into_iter().enumerate() {
                // Dense blocks only (a mixture-of-experts block has no such single layer).
                let w: Vec<f32> = m
                    .linear(LinearId::block(b, kind))
                    .map(|l| {
                        l.dense_weight()
                            .into_data()
                            .try_to_vec::<f32>()
                            .unwrap_or_default()
                    })
                    .unwrap_or_default();
                let s = weight_stats(&w, 1, 3.0, k == 1);
                for (a, v) in acc[k].iter_mut().zip([
                    s.std,
                    s.excess_kurtosis,
                    100.0 * s.outlier_fraction,
                    s.abs_max,
                    100.0 * s.zero_fraction,
                ]) {
                    *a += v / blocks.max(1) as f64;
                }
            }
        }
        let [b, a] = acc;
        let kind = LinearId::block(0, kind).name_in_block();
        println!(
            "{kind:<14} std {:.4} → {:.4}, kurtosis {:.2} → {:.2}, outliers {:.3}% → {:.3}%, max {:.3} → {:.3}, zeros {:.1}% → {:.1}%",
            b[0], a[0], b[1], a[1], b[2], a[2], b[3], a[3], b[4], a[4]
        );
    }
}

/// Draws the weight distributions of `base` and of `model`'s kept (non-zero) weights into `path`
/// (.svg or .png): every weight in units of its dense layer's standard deviation, summed over
/// blocks, attention `q`/`k` projections (the heavy-tailed ones) apart from the other linears;
/// log-scale densities over ±10σ.
pub fn plot_weight_distributions(
    base: &LlamaModel,
    model: &LlamaModel,
    path: &std::path::Path,
) -> Result<(), Box<dyn std::error::Error>> {
    use compress::eval::plot::{plot, Chart, Series};
    use compress::eval::weights::{accumulate_histogram, density_points, weight_stats};
    const RANGE: (f64, f64) = (-10.0, 10.0);
    // [dense q/k, dense other, kept q/k, kept other]
    let mut counts = vec![vec![0u64; 100]; 4];
    let blocks = base.num_blocks().min(model.num_blocks());
    for b in 0..blocks {
        for kind in compress::model::llama::BLOCK_LINEARS {
            let host = |m: &LlamaModel| -> Vec<f32> {
                m.linear(compress::core::layer_id::LinearId::block(b, kind))
                    .map(|l| {
                        l.dense_weight()
                            .into_data()
                            .try_to_vec::<f32>()
                            .unwrap_or_default()
                    })
                    .unwrap_or_default()
            };
            let (w0, w1) = (host(base), host(model));
            let sigma = weight_stats(&w0, 1, 3.0, false).std;
            let g = usize::from(!kind.is_rotated());
            accumulate_histogram(&mut counts[g], &w0, sigma, RANGE, false);
            accumulate_histogram(&mut counts[2 + g], &w1, sigma, RANGE, true);
        }
    }
    let names = [
        "dense, attention q/k",
        "dense, other linears",
        "kept, attention q/k",
        "kept, other linears",
    ];
    let series: Vec<Series> = names
        .iter()
        .zip(&counts)
        .map(|(n, c)| Series {
            name: n.to_string(),
            points: density_points(c, RANGE),
        })
        .collect();
    let chart = Chart {
        title: "Weight distribution before and after".into(),
        x_label: "weight / standard deviation of its dense layer".into(),
        y_label: "density".into(),
        log_y: true,
        lines: true,
    };
    plot(path, &chart, &series)?;
    Ok(())
}
