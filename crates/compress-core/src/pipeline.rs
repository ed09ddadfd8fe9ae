//! The block-by-block calibration pipeline.
//!
//! A model exposes itself as a sequence of blocks ([`BlockwiseModel`]); the pipeline walks them in
//! order holding only the calibration activations of the current block:
//!
//! 1. the calibration sequences are embedded once (block 0's inputs);
//! 2. for each block, for each *stage* in true-sequential order (for a llama block: q/k/v, then
//!    o, then gate/up, then down), the stage's input is recomputed from the block input through the
//!    sub-layers compressed so far, the statistics the matching compressors asked for are
//!    accumulated on the model's device (`XᵀX` by matmul, column norms, abs-max; f32 accumulation),
//!    and each matching linear is compressed by its compressors in recipe order;
//! 3. the block's outputs are recomputed with its compressed weights and become the next block's
//!    inputs, so every layer is calibrated on the activations the compressed model really produces.
//!
//! If no compressor needs statistics (RTN, HQQ) the pipeline runs no forward pass at all.
//! Every step checks for NaN/Inf and fails naming the block or layer.

use std::time::Instant;

use burn::tensor::{Device, Int, Tensor, TensorData};
use rayon::prelude::*;

use compress_kernels::dense::{DensePath, DensePrecision};

use crate::compressor::{
    ensure_finite, output_rel_error, output_rel_error_host, weight_rel_error, CompressError,
    Compressor, LayerReport, LayerStats, LayerView, LayerWeights, StatsRequest,
};
use crate::linear::CompressedLinear;

mod stats;
pub use stats::{collect_stats, collect_stats_in};
use stats::{stats_of_inputs, to_host};

/// The linears of one block that read the same input, compressed together.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StageSpec {
    /// Name of the stage's input, e.g. `attn_in`.
    pub name: &'static str,
    /// Linear names within the block, e.g. `attn.q_proj`.
    pub linears: Vec<&'static str>,
}

/// A model the pipeline can compress block by block.
///
/// A block is walked with a per-batch cache of its intermediate results, so each sub-layer runs
/// once per batch however many stages there are: [`begin_block`](Self::begin_block), then
/// [`stage_input`](Self::stage_input) for stages in increasing order (some may be skipped), then
/// [`finish_block`](Self::finish_block). Between two calls the linears of the earlier stages may
/// have been replaced; later results must be computed with the replaced weights, while results
/// that no replaced layer influences may come from the cache.
///
/// The pipeline runs calibration batches two at a time on the CPU backends (see
/// [`collect_stats_in`]), so a model is shared between threads (`Sync`) and a batch's cache
/// moves to the thread that runs it (`Send`).
pub trait BlockwiseModel: Sync {
    /// Intermediate results of one block for one calibration batch.
    type Cache: Send;
    /// Number of blocks.
    fn num_blocks(&self) -> usize;
    /// The stages of every block, in true-sequential order.
    fn stages(&self) -> Vec<StageSpec>;
    /// The device the weights live on.
    fn device(&self) -> Device;
    /// Block 0's input for token ids `[batch, seq]`: `[batch, seq, hidden]`, f32 or in the
    /// activation storage precision ([`set_activation_precision`](Self::set_activation_precision)).
    fn embed_tokens(&self, tokens: Tensor<2, Int>) -> Tensor<3>;
    /// Called once the calibration sequences are embedded: drops what only embedding needs,
    /// where the model can read it again on demand (a lazily loaded model's token embedding).
    /// The default keeps everything.
    fn release_embedding(&mut self) {}
    /// Starts block `block` on input `x` (`[batch, seq, hidden]`).
    fn begin_block(&self, block: usize, x: Tensor<3>) -> Self::Cache;
    /// The input of stage `stage` (`[batch, seq, in]`), computed with the block's current weights.
    fn stage_input(&self, block: usize, stage: usize, cache: &mut Self::Cache) -> Tensor<3>;
    /// The block's output (`[batch, seq, hidden]`) with its current weights.
    fn finish_block(&self, block: usize, cache: Self::Cache) -> Tensor<3>;
    /// A linear of a block by name.
    fn linear(&self, block: usize, name: &str) -> &CompressedLinear;
    /// A linear of a block by name, to replace it.
    fn linear_mut(&mut self, block: usize, name: &str) -> &mut CompressedLinear;
    /// Logits `[batch, seq, vocab]` from the last block's output (final norm and output head).
    fn head_logits(&self, x: Tensor<3>) -> Tensor<3>;
    /// The output head, if a recipe may compress it (its path is [`HEAD_PATH`]); `None` by
    /// default.
    fn head(&self) -> Option<&CompressedLinear> {
        None
    }
    /// The output head, to replace it.
    fn head_mut(&mut self) -> Option<&mut CompressedLinear> {
        None
    }
    /// The head's input for the last block's output `x` (e.g. after the final norm).
    fn head_input(&self, x: Tensor<3>) -> Tensor<3> {
        x
    }

    /// Divides the input of stage `stage` by `scales` (one per input channel) by rescaling the
    /// operation that produces it — a norm's gain, the rows of a previous projection — so that
    /// scaling the stage's weight columns by `scales` keeps the model's function. Results already
    /// cached for later stages must stay valid. Returns false, changing nothing, where there is
    /// no such operation (the default).
    fn fold_input_scales(&mut self, _block: usize, _stage: usize, _scales: &[f32]) -> bool {
        false
    }

    /// Keeps the activations a calibration walk holds between calls — block inputs and outputs,
    /// the intermediates a [`Cache`](Self::Cache) stores — in `precision`:
    /// [`DensePrecision::Bf16`] halves their memory (values rounded to bf16 when stored, read
    /// back as f32 for every computation), [`DensePrecision::F32`] keeps them exact. Tensors
    /// passed in ([`begin_block`](Self::begin_block), [`head_input`](Self::head_input)) may be
    /// of either dtype; [`stage_input`](Self::stage_input) returns f32. The pipeline sets its
    /// calibration precision for a run (bf16 only where the CPU multiplies in bf16 too) and f32
    /// after it. The default ignores the request.
    fn set_activation_precision(&mut self, _precision: DensePrecision) {}

    /// Lets a calibration walk keep intermediate results it would otherwise compute twice,
    /// holding them for every batch until [`finish_block`](Self::finish_block) — for a llama
    /// block, `down_proj`'s `[tokens, intermediate]` input, whose gate/up products
    /// `finish_block` would otherwise run again. Results must be the same either way; only time
    /// and memory change. The pipeline sets [`Pipeline::keep_intermediates()`] for a run and
    /// false after it; the default ignores the request.
    fn set_keep_intermediates(&mut self, _keep: bool) {}

    /// The block's output for input `x` in one go.
    fn block_forward(&self, block: usize, x: Tensor<3>) -> Tensor<3> {
        let cache = self.begin_block(block, x);
        self.finish_block(block, cache)
    }
}

/// The path of a linear in reports and filters: `layers.{block}.{name}`.
pub fn layer_path(block: usize, name: &str) -> String {
    format!("layers.{block}.{name}")
}

/// The path of the output head in reports and filters.
pub const HEAD_PATH: &str = "lm_head";

/// Which layers a step applies to.
#[derive(Debug, Clone)]
pub enum LayerFilter {
    /// Every linear of every block (not the output head: the head is compressed only when a
    /// filter names it).
    All,
    /// Layers whose path matches the regular expression (unanchored: `q_proj` matches every
    /// query projection, `^layers\.0\.` the first block, `^lm_head$` the output head).
    Regex(regex::Regex),
}

impl LayerFilter {
    /// A regex filter; the error names the pattern.
    pub fn regex(pattern: &str) -> Result<Self, PipelineError> {
        regex::Regex::new(pattern)
            .map(LayerFilter::Regex)
            .map_err(|e| PipelineError::Config(format!("layer filter `{pattern}`: {e}")))
    }

    /// Whether the filter selects the block linear at `path`.
    pub fn matches(&self, path: &str) -> bool {
        match self {
            LayerFilter::All => true,
            LayerFilter::Regex(r) => r.is_match(path),
        }
    }

    /// Whether the filter selects the output head ([`HEAD_PATH`]): only a regex that matches it.
    pub fn matches_head(&self) -> bool {
        match self {
            LayerFilter::All => false,
            LayerFilter::Regex(r) => r.is_match(HEAD_PATH),
        }
    }
}

/// One step of a pipeline: a compressor and the layers it applies to.
#[derive(Debug)]
pub struct PipelineStep {
    /// Layers the step applies to.
    pub filter: LayerFilter,
    /// The algorithm.
    pub compressor: Box<dyn Compressor>,
}

/// Errors of a pipeline run.
#[derive(Debug, thiserror::Error)]
pub enum PipelineError {
    /// A compressor failed on a layer.
    #[error(transparent)]
    Compress(#[from] CompressError),
    /// Activations became NaN or infinite.
    #[error("non-finite activations at {0}")]
    NonFinite(String),
    /// Invalid pipeline configuration or calibration data.
    #[error("invalid pipeline configuration: {0}")]
    Config(String),
}

/// What a pipeline run did.
#[derive(Debug, Clone, PartialEq)]
pub struct PipelineReport {
    /// One entry per compression step applied, in order.
    pub layers: Vec<LayerReport>,
    /// Calibration tokens per layer statistic (0 if no calibration was needed).
    pub calibration_tokens: usize,
    /// Wall time of the whole run, seconds.
    pub seconds: f64,
    /// Peak resident memory of the process at the end of the run (Linux `VmHWM`), bytes.
    pub peak_rss_bytes: Option<u64>,
}

/// A sequence of compression steps run block by block over calibration data.
#[derive(Debug, Default)]
pub struct Pipeline {
    /// Steps, applied to each matching layer in order.
    pub steps: Vec<PipelineStep>,
    /// Calibration sequences per forward pass (memory vs speed; default 4).
    pub batch_size: usize,
    /// Arithmetic of the calibration forward passes' dense products and of `XᵀX` on the CPU
    /// backends (default f32; see [`Self::calibration_precision`]).
    pub precision: DensePrecision,
    /// Keep intermediate results between a block's stages instead of recomputing them
    /// ([`BlockwiseModel::set_keep_intermediates`]; see [`Self::keep_intermediates()`]).
    pub keep_intermediates: bool,
}

impl Pipeline {
    /// An empty pipeline with batches of 2 sequences. On the CPU backends two batches run side
    /// by side, so as many tokens are in flight as with one batch of 4: on SmolLM2-135M with
    /// 128 × 512 bf16 calibration tokens 110.5 s and 328 MiB peak, against 138.9 s and 331 MiB
    /// for batches of 4 one at a time (docs/quantization.md).
    pub fn new() -> Self {
        Self {
            steps: Vec::new(),
            batch_size: 2,
            precision: DensePrecision::F32,
            keep_intermediates: false,
        }
    }

    /// Keeps intermediate results a block walk would otherwise compute twice (for a llama
    /// block, `down_proj`'s input: saves the gate/up products' second run, about a quarter of
    /// the calibration FLOPs, for `tokens × intermediate` activations held per block — 201 MB
    /// in bf16 for SmolLM2 with 128 × 512 tokens). Same results either way.
    pub fn keep_intermediates(mut self, keep: bool) -> Self {
        self.keep_intermediates = keep;
        self
    }

    /// Runs the calibration forward passes' dense products and the `XᵀX` statistics in
    /// `precision`. [`DensePrecision::Bf16`] rounds both operands to bf16 and sums in f32 on AMX
    /// tiles or with AVX-512 BF16 — 2–4.5× faster products on CPUs that have them
    /// (`compress_kernels::dense`), as GPU calibration in bf16 is — and stores the activations
    /// kept between calls in bf16 ([`BlockwiseModel::set_activation_precision`]); on a CPU with
    /// neither unit the whole run stays f32. Every linear of the model's blocks (dense, and
    /// compressed ones through their dequantized weight) is set to it for the run and back to
    /// f32 after it.
    pub fn calibration_precision(mut self, precision: DensePrecision) -> Self {
        self.precision = precision;
        self
    }

    /// Adds a step.
    pub fn step(mut self, filter: LayerFilter, compressor: impl Compressor + 'static) -> Self {
        self.steps.push(PipelineStep {
            filter,
            compressor: Box::new(compressor),
        });
        self
    }

    /// Runs the pipeline on `model` with `calibration` sequences (all of one length), calling
    /// `progress` after each layer step with its report and the block count.
    ///
    /// Sets the process's allocator to keep freed large buffers
    /// ([`crate::memory::retain_freed_buffers`]), which makes calibration about 10% faster, and
    /// returns the allocator's free pages to the kernel ([`crate::memory::release_free_memory`])
    /// at the start, after each stage's statistics and after each block, so the resident set
    /// follows what is live instead of the heap's high-water mark.
    pub fn run<M: BlockwiseModel>(
        &self,
        model: &mut M,
        calibration: &[Vec<u32>],
        progress: impl FnMut(&LayerReport, usize, usize),
    ) -> Result<PipelineReport, PipelineError> {
        crate::memory::retain_freed_buffers();
        // What the caller freed before (a tokenizer's work buffers, a loader's) is not needed.
        crate::memory::release_free_memory();
        set_dense_precision(model, self.precision);
        // bf16 storage only where the products run in bf16 too: rounding the kept activations
        // without the speed of bf16 products is not worth its error.
        let storage = match compress_kernels::dense::path_for(self.precision) {
            DensePath::F32 => DensePrecision::F32,
            _ => self.precision,
        };
        model.set_activation_precision(storage);
        model.set_keep_intermediates(self.keep_intermediates);
        let result = self.run_steps(model, calibration, progress);
        model.set_keep_intermediates(false);
        model.set_activation_precision(DensePrecision::F32);
        set_dense_precision(model, DensePrecision::F32);
        result
    }

    fn run_steps<M: BlockwiseModel>(
        &self,
        model: &mut M,
        calibration: &[Vec<u32>],
        mut progress: impl FnMut(&LayerReport, usize, usize),
    ) -> Result<PipelineReport, PipelineError> {
        let start = Instant::now();
        let needs_stats = self
            .steps
            .iter()
            .fold(StatsRequest::NONE, |r, s| r.union(s.compressor.stats()))
            .any();
        let device = model.device();
        let mut xs = if needs_stats {
            self.embed_calibration(model, calibration, &device)?
        } else {
            Vec::new()
        };
        model.release_embedding();
        let tokens: usize = xs.iter().map(|x| x.dims()[0] * x.dims()[1]).sum();
        let blocks = model.num_blocks();
        let stages = model.stages();
        let mut reports = Vec::new();
        for block in 0..blocks {
            let mut caches: Vec<M::Cache> = std::mem::take(&mut xs)
                .into_iter()
                .map(|x| model.begin_block(block, x))
                .collect();
            for (si, stage) in stages.iter().enumerate() {
                let paths: Vec<(&str, String)> = stage
                    .linears
                    .iter()
                    .map(|&n| (n, layer_path(block, n)))
                    .collect();
                let request = paths
                    .iter()
                    .flat_map(|(_, p)| self.steps.iter().filter(move |s| s.filter.matches(p)))
                    .fold(StatsRequest::NONE, |r, s| r.union(s.compressor.stats()));
                if !paths
                    .iter()
                    .any(|(_, p)| self.steps.iter().any(|s| s.filter.matches(p)))
                {
                    continue;
                }
                // Output errors are reported whenever calibration runs, so GPTQ and RTN layers
                // of the same run are comparable.
                let request = StatsRequest {
                    gram: request.gram || needs_stats,
                    ..request
                };
                let mut stats = if needs_stats {
                    collect_stats_in(model, block, si, &mut caches, request, self.precision)?
                } else {
                    LayerStats::default()
                };
                for step in &self.steps {
                    if paths.iter().all(|(_, p)| step.filter.matches(p)) {
                        let names: Vec<&str> = paths.iter().map(|(n, _)| *n).collect();
                        stats = crate::scaling::apply_stage_scales(
                            model,
                            block,
                            si,
                            &names,
                            step.compressor.as_ref(),
                            stats,
                        )?;
                    }
                }
                // The statistics' per-batch buffers are freed: give their pages back before the
                // compressors allocate (see `memory::release_free_memory`).
                crate::memory::release_free_memory();
                // The stage's linears share their statistics and nothing else: on the CPU
                // backends they are compressed side by side (q/k/v, gate/up), so one layer's
                // serial work (a GPTQ sweep, packing) overlaps another's. Reports keep the
                // stage's order.
                let results: Vec<_> = {
                    let model = &*model;
                    let one = |(name, path): &(&str, String)| {
                        self.compress_layer(model.linear(block, name), path, &stats, &device)
                    };
                    if stats::side_by_side(paths.len(), &device) {
                        paths.par_iter().map(one).collect()
                    } else {
                        paths.iter().map(one).collect()
                    }
                };
                for ((name, _), result) in paths.iter().zip(results) {
                    if let Some((new, layer_reports)) = result? {
                        *model.linear_mut(block, name) = new;
                        for r in layer_reports {
                            progress(&r, block, blocks);
                            reports.push(r);
                        }
                    }
                }
            }
            if needs_stats {
                xs = finish_blocks(&*model, block, caches);
                check_finite_tensors(&xs, &format!("the output of block {block}"))?;
            }
            // The block is not run again during calibration: its quantized layers drop the
            // dequantized weights its products used (made again if the model is run later), so
            // only the block being calibrated is ever held dense.
            for name in stages.iter().flat_map(|s| s.linears.iter()) {
                model.linear_mut(block, name).release_dense_copies();
            }
            crate::memory::release_free_memory();
        }
        let head_steps: Vec<&PipelineStep> = self
            .steps
            .iter()
            .filter(|s| s.filter.matches_head())
            .collect();
        if !head_steps.is_empty() && model.head().is_some() {
            let request = head_steps
                .iter()
                .fold(StatsRequest::NONE, |r, s| r.union(s.compressor.stats()));
            let stats = if needs_stats {
                let request = StatsRequest {
                    gram: true,
                    ..request
                };
                let inputs = xs.iter().map(|x| model.head_input(x.clone()));
                stats_of_inputs(
                    inputs,
                    request,
                    &format!("the input of {HEAD_PATH}"),
                    self.precision,
                )?
            } else {
                LayerStats::default()
            };
            let mut original = None;
            for step in head_steps {
                let head = model.head().expect("checked above");
                let (new, r) = compress_linear(
                    head,
                    HEAD_PATH,
                    step,
                    &stats,
                    &mut original,
                    &device,
                    self.precision,
                )?;
                *model.head_mut().expect("checked above") = new;
                progress(&r, blocks, blocks);
                reports.push(r);
            }
        }
        Ok(PipelineReport {
            layers: reports,
            calibration_tokens: tokens,
            seconds: start.elapsed().as_secs_f64(),
            peak_rss_bytes: peak_rss_bytes(),
        })
    }

    /// Runs every step that matches `path` on `lin` in order; the compressed layer (set to the
    /// run's product precision) and one report per step, or `None` when no step matches.
    fn compress_layer(
        &self,
        lin: &CompressedLinear,
        path: &str,
        stats: &LayerStats,
        device: &Device,
    ) -> Result<Option<(CompressedLinear, Vec<LayerReport>)>, PipelineError> {
        // The layer's weight before its first step, for correction steps.
        let mut original = None;
        let mut current: Option<CompressedLinear> = None;
        let mut reports = Vec::new();
        for step in self.steps.iter().filter(|s| s.filter.matches(path)) {
            let (mut new, r) = compress_linear(
                current.as_ref().unwrap_or(lin),
                path,
                step,
                stats,
                &mut original,
                device,
                self.precision,
            )?;
            new.set_precision(self.precision);
            current = Some(new);
            reports.push(r);
        }
        Ok(current.map(|c| (c, reports)))
    }

    /// Block 0's inputs for `calibration` sequences (all of one length), in batches of
    /// `batch_size` sequences.
    pub fn embed_calibration<M: BlockwiseModel>(
        &self,
        model: &M,
        calibration: &[Vec<u32>],
        device: &Device,
    ) -> Result<Vec<Tensor<3>>, PipelineError> {
        let len = calibration.first().map_or(0, Vec::len);
        if len == 0 || calibration.iter().any(|s| s.len() != len) {
            return Err(PipelineError::Config(
                "calibration needs at least one sequence, all of the same non-zero length".into(),
            ));
        }
        let bs = self.batch_size.max(1);
        Ok(calibration
            .chunks(bs)
            .map(|chunk| {
                let ids: Vec<i64> = chunk.iter().flatten().map(|&t| t as i64).collect();
                let t =
                    Tensor::<2, Int>::from_data(TensorData::new(ids, [chunk.len(), len]), device);
                model.embed_tokens(t)
            })
            .collect())
    }
}

/// The block's outputs for every batch, in order; on the CPU backends in two lanes side by side
/// (the first half of the batches and the second), as [`collect_stats_in`] runs them.
fn finish_blocks<M: BlockwiseModel>(
    model: &M,
    block: usize,
    mut caches: Vec<M::Cache>,
) -> Vec<Tensor<3>> {
    let lane = |caches: Vec<M::Cache>| -> Vec<Tensor<3>> {
        caches
            .into_iter()
            .map(|c| model.finish_block(block, c))
            .collect()
    };
    if !stats::side_by_side(caches.len(), &model.device()) {
        return lane(caches);
    }
    let second = caches.split_off(caches.len().div_ceil(2));
    let (mut a, b) = rayon::join(|| lane(caches), || lane(second));
    a.extend(b);
    a
}

/// Sets the product precision of every linear of `model`'s blocks.
fn set_dense_precision<M: BlockwiseModel>(model: &mut M, precision: DensePrecision) {
    let names: Vec<&str> = model
        .stages()
        .iter()
        .flat_map(|s| s.linears.clone())
        .collect();
    for block in 0..model.num_blocks() {
        for name in &names {
            model.linear_mut(block, name).set_precision(precision);
        }
    }
}

fn check_finite_tensors(xs: &[Tensor<3>], what: &str) -> Result<(), PipelineError> {
    for x in xs {
        let finite = x.clone().is_finite().all().into_scalar::<bool>();
        if !finite {
            return Err(PipelineError::NonFinite(what.to_string()));
        }
    }
    Ok(())
}

/// Runs one step on one linear and returns its new storage; `original` is the layer's weight
/// before its first step (filled on that first step).
fn compress_linear(
    lin: &CompressedLinear,
    path: &str,
    step: &PipelineStep,
    stats: &LayerStats,
    original: &mut Option<Vec<f32>>,
    device: &Device,
    precision: DensePrecision,
) -> Result<(CompressedLinear, LayerReport), PipelineError> {
    let t0 = Instant::now();
    let (out, inp) = (lin.out_features(), lin.in_features());
    let bias = lin.bias();
    let w_tensor = lin.dense_weight();
    let w = to_host(
        w_tensor.clone().into_data(),
        &format!("the weight of {path}"),
    )?;
    ensure_finite(path, "weight", &w)?;
    if original.is_none() {
        *original = Some(w.clone());
    }
    let mask = lin.mask().cloned();
    // A layer with a low-rank correction is not its codes alone: later steps see its dense
    // weight (a pruner after a correction prunes Q + U V, it does not drop U V).
    let packed = match lin {
        CompressedLinear::Quantized(q) if q.correction.is_none() => Some(q.packed.clone()),
        _ => None,
    };
    let view = LayerView {
        path,
        weight: &w,
        out_features: out,
        in_features: inp,
        mask: mask.as_ref(),
        packed: packed.as_deref(),
        original: original.as_deref(),
    };
    let factored = if step.compressor.factor_wise() {
        crate::factored::compress_factors(lin, path, step.compressor.as_ref(), stats, device)?
    } else {
        None
    };
    let mut new: LayerWeights = match factored {
        Some(f) => f,
        None => step.compressor.compress(view, stats)?,
    };
    if let Some(m) = &mask {
        // A pruned weight stays pruned whatever the step does (e.g. RTN after a pruner).
        new = new.with_mask(m);
    }
    let dense = new.to_dense();
    ensure_finite(path, "compressed weight", &dense)?;
    let output_rel_error = stats.gram.as_ref().map(|g| {
        if crate::backend::runs_cpu_kernels(device) {
            output_rel_error_host(&w, &dense, out, inp, g, precision)
        } else {
            let gram = Tensor::<2>::from_data(TensorData::new(g.clone(), [inp, inp]), device);
            let w_hat = Tensor::<2>::from_data(TensorData::new(dense.clone(), [out, inp]), device);
            output_rel_error(w_tensor, w_hat, gram)
        }
    });
    let report = LayerReport {
        path: path.to_string(),
        method: step.compressor.name(),
        weight_rel_error: weight_rel_error(&w, &dense),
        output_rel_error,
        bits_per_weight: new.bits_per_weight(),
        sparsity: new.mask().map_or(0.0, |m| m.sparsity()),
        seconds: t0.elapsed().as_secs_f64(),
    };
    Ok((
        CompressedLinear::from_weights(new, out, inp, bias, device),
        report,
    ))
}

pub use crate::memory::peak_rss_bytes;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn filters_match_paths() {
        let f = LayerFilter::regex(r"\.(q|k)_proj$").unwrap();
        assert!(f.matches(&layer_path(3, "attn.q_proj")));
        assert!(!f.matches(&layer_path(3, "attn.o_proj")));
        assert!(LayerFilter::All.matches("anything"));
        let e = LayerFilter::regex("(").unwrap_err();
        assert!(e.to_string().contains("`(`"), "{e}");
    }
}
