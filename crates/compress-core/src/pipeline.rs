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

use compress_kernels::dense::DensePrecision;

use crate::compressor::{
    ensure_finite, output_rel_error, output_rel_error_host, weight_rel_error, CompressError,
    Compressor, LayerReport, LayerStats, LayerView, LayerWeights, StatsRequest,
};
use crate::layer_id::LinearId;
use crate::linear::CompressedLinear;

mod model;
mod stats;
pub use model::{ActivationPolicy, BlockWalk, BlockwiseModel, Linears, ScaleFolds, StageSpec};
pub use stats::{collect_stats, collect_stats_in};
use stats::{stats_of_inputs, to_host};

/// Which layers a step applies to.
#[derive(Debug, Clone)]
pub enum LayerFilter {
    /// Every linear of every block but the mixture-of-experts routers (not the output head
    /// either: the head and routers are compressed only when a filter names them).
    All,
    /// Layers whose printed path ([`LinearId`]'s `Display`) matches the regular expression
    /// (unanchored: `q_proj` matches every query projection, `^layers\.0\.` the first block,
    /// `^lm_head$` the output head, `experts\.\d+\.` every routed expert).
    Regex(regex::Regex),
}

impl LayerFilter {
    /// A regex filter; the error names the pattern.
    pub fn regex(pattern: &str) -> Result<Self, PipelineError> {
        regex::Regex::new(pattern)
            .map(LayerFilter::Regex)
            .map_err(|e| PipelineError::Config(format!("layer filter `{pattern}`: {e}")))
    }

    /// Whether the filter selects the linear `id` ([`LayerFilter::All`] selects every linear
    /// but the head).
    pub fn matches(&self, id: LinearId) -> bool {
        match self {
            // Routers (and shared-expert gates) steer the mixture: like llm-compressor's
            // recipes, keep them in full precision unless a filter names them.
            LayerFilter::All => !id.is_head() && id.kind() != crate::layer_id::LinearKind::Router,
            LayerFilter::Regex(r) => r.is_match(&id.to_string()),
        }
    }

    /// Whether the filter selects the output head: only a regex that matches `lm_head`.
    pub fn matches_head(&self) -> bool {
        self.matches(LinearId::HEAD)
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
    /// ([`ActivationPolicy::keep_intermediates`]; see [`Self::keep_intermediates()`]).
    pub keep_intermediates: bool,
    /// The fewest calibration tokens an expert of a mixture-of-experts block is calibrated on
    /// ([`StageSpec::routed`] stages): an expert the router sends fewer tokens is calibrated on
    /// every token of the block instead (what llm-compressor's "calibrate all experts" does for
    /// every expert), and its [`LayerReport::all_tokens`] says so. `None` (the default): the
    /// stage's input width — below it the routed tokens' `XᵀX` is singular, so GPTQ/SparseGPT
    /// would rest on damping alone.
    pub min_routed_tokens: Option<usize>,
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
            min_routed_tokens: None,
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
    /// kept between calls in bf16 ([`ActivationPolicy::storage`]); on a CPU with
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
        let result = self.run_steps(model, calibration, progress);
        set_dense_precision(model, DensePrecision::F32);
        result
    }

    /// How the run's block walks keep activations: bf16 storage only where the products run in
    /// bf16 too (rounding the kept activations without the speed of bf16 products is not worth
    /// its error), and [`Self::keep_intermediates`].
    pub fn activation_policy(&self) -> ActivationPolicy {
        ActivationPolicy {
            storage: model::storage_for(self.precision),
            keep_intermediates: self.keep_intermediates,
        }
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
        let policy = self.activation_policy();
        let mut reports = Vec::new();
        for block in 0..blocks {
            let stages = model.stages(block);
            let mut caches: Vec<M::Cache> = std::mem::take(&mut xs)
                .into_iter()
                .map(|x| model.begin_block(block, x, &policy))
                .collect();
            for (si, stage) in stages.iter().enumerate() {
                let ids = &stage.linears;
                let request = ids
                    .iter()
                    .flat_map(|&id| self.steps.iter().filter(move |s| s.filter.matches(id)))
                    .fold(StatsRequest::NONE, |r, s| r.union(s.compressor.stats()));
                if !ids
                    .iter()
                    .any(|&id| self.steps.iter().any(|s| s.filter.matches(id)))
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
                let width = model.expect_linear(ids[0]).in_features();
                let floor = self.min_routed_tokens.unwrap_or(width);
                let all_tokens = needs_stats && stage.routed && stats.tokens < floor;
                if all_tokens {
                    stats = stats::collect_stats_of(
                        model,
                        block,
                        si,
                        &mut caches,
                        request,
                        self.precision,
                        true,
                    )?;
                }
                for step in &self.steps {
                    if ids.iter().all(|&id| step.filter.matches(id)) {
                        stats = crate::scaling::apply_stage_scales(
                            model,
                            block,
                            si,
                            ids,
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
                    let one = |&id: &LinearId| {
                        self.compress_layer(model.expect_linear(id), id, &stats, &device)
                    };
                    if stats::side_by_side(ids.len(), &device) {
                        ids.par_iter().map(one).collect()
                    } else {
                        ids.iter().map(one).collect()
                    }
                };
                for (&id, result) in ids.iter().zip(results) {
                    if let Some((new, layer_reports)) = result? {
                        *model.expect_linear_mut(id) = new;
                        for mut r in layer_reports {
                            r.calibration_tokens = stats.tokens;
                            r.all_tokens = all_tokens;
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
            for &id in stages.iter().flat_map(|s| s.linears.iter()) {
                model.expect_linear_mut(id).release_dense_copies();
            }
            crate::memory::release_free_memory();
        }
        let head_steps: Vec<&PipelineStep> = self
            .steps
            .iter()
            .filter(|s| s.filter.matches_head())
            .collect();
        if !head_steps.is_empty() && model.linear(LinearId::HEAD).is_some() {
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
                    &format!("the input of {}", LinearId::HEAD),
                    self.precision,
                )?
            } else {
                LayerStats::default()
            };
            let mut original = None;
            for step in head_steps {
                let head = model.expect_linear(LinearId::HEAD);
                let (new, r) = compress_linear(
                    head,
                    LinearId::HEAD,
                    step,
                    &stats,
                    &mut original,
                    &device,
                    self.precision,
                )?;
                *model.expect_linear_mut(LinearId::HEAD) = new;
                let r = LayerReport {
                    calibration_tokens: stats.tokens,
                    ..r
                };
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

    /// Runs every step that matches `id` on `lin` in order; the compressed layer (set to the
    /// run's product precision) and one report per step, or `None` when no step matches.
    fn compress_layer(
        &self,
        lin: &CompressedLinear,
        id: LinearId,
        stats: &LayerStats,
        device: &Device,
    ) -> Result<Option<(CompressedLinear, Vec<LayerReport>)>, PipelineError> {
        // The layer's weight before its first step, for correction steps.
        let mut original = None;
        let mut current: Option<CompressedLinear> = None;
        let mut reports = Vec::new();
        for step in self.steps.iter().filter(|s| s.filter.matches(id)) {
            let (mut new, r) = compress_linear(
                current.as_ref().unwrap_or(lin),
                id,
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
        let policy = self.activation_policy();
        Ok(calibration
            .chunks(bs)
            .map(|chunk| {
                let ids: Vec<i64> = chunk.iter().flatten().map(|&t| t as i64).collect();
                let t =
                    Tensor::<2, Int>::from_data(TensorData::new(ids, [chunk.len(), len]), device);
                model.embed_tokens(t, &policy)
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
    for id in model.block_linears() {
        model.expect_linear_mut(id).set_precision(precision);
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
    id: LinearId,
    step: &PipelineStep,
    stats: &LayerStats,
    original: &mut Option<Vec<f32>>,
    device: &Device,
    precision: DensePrecision,
) -> Result<(CompressedLinear, LayerReport), PipelineError> {
    let t0 = Instant::now();
    let path = id.to_string();
    let path = path.as_str();
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
        id,
        method: step.compressor.name(),
        weight_rel_error: weight_rel_error(&w, &dense),
        output_rel_error,
        bits_per_weight: new.bits_per_weight(),
        sparsity: new.mask().map_or(0.0, |m| m.sparsity()),
        seconds: t0.elapsed().as_secs_f64(),
        calibration_tokens: 0,
        all_tokens: false,
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
        use crate::layer_id::LinearKind;
        let f = LayerFilter::regex(r"\.(q|k)_proj$").unwrap();
        assert!(f.matches(LinearId::block(3, LinearKind::Q)));
        assert!(!f.matches(LinearId::block(3, LinearKind::O)));
        assert!(!f.matches_head());
        assert!(LayerFilter::All.matches(LinearId::block(9, LinearKind::Down)));
        assert!(!LayerFilter::All.matches_head());
        assert!(LayerFilter::regex("^lm_head$").unwrap().matches_head());
        let e = LayerFilter::regex("(").unwrap_err();
        assert!(e.to_string().contains("`(`"), "{e}");
    }
}
