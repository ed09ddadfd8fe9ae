//! Calibration statistics of a stage's inputs: `XᵀX`, per-column squared norms and abs-max,
//! accumulated in f32 over the calibration batches (on the host through compress-kernels on the
//! CPU backends, with the backend's ops elsewhere), checked for NaN/Inf.

use burn::tensor::{Tensor, TensorData};
use compress_kernels::dense::DensePrecision;

use super::{BlockwiseModel, PipelineError};
use crate::compressor::{LayerStats, StatsRequest};

/// Accumulates the requested statistics of the input of stage `stage` of block `block` over the
/// block caches (one per calibration batch), on the model's device, in f32.
pub fn collect_stats<M: BlockwiseModel>(
    model: &M,
    block: usize,
    stage: usize,
    caches: &mut [M::Cache],
    request: StatsRequest,
) -> Result<LayerStats, PipelineError> {
    collect_stats_in(model, block, stage, caches, request, DensePrecision::F32)
}

/// [`collect_stats`] with `XᵀX` accumulated in `precision` on the CPU backends.
///
/// On the CPU backends the batches run in two lanes side by side (the first half of `caches`
/// and the second, each summed in order, then the two sums added), so one batch's serial work —
/// norms, conversions, checks — overlaps the other's products instead of leaving a core idle.
/// The result is deterministic, and the same for any thread count.
pub fn collect_stats_in<M: BlockwiseModel>(
    model: &M,
    block: usize,
    stage: usize,
    caches: &mut [M::Cache],
    request: StatsRequest,
    precision: DensePrecision,
) -> Result<LayerStats, PipelineError> {
    collect_stats_of(model, block, stage, caches, request, precision, false)
}

/// [`collect_stats_in`], over every token of the block for a routed stage when `all_tokens`
/// ([`BlockWalk::stage_input_all_tokens`](super::BlockWalk::stage_input_all_tokens)).
pub(super) fn collect_stats_of<M: BlockwiseModel>(
    model: &M,
    block: usize,
    stage: usize,
    caches: &mut [M::Cache],
    request: StatsRequest,
    precision: DensePrecision,
    all_tokens: bool,
) -> Result<LayerStats, PipelineError> {
    let stage_name = model
        .stages(block)
        .get(stage)
        .map_or_else(|| "?".to_string(), |s| s.name.clone());
    let what = format!("the {stage_name} input of block {block}");
    let lane = |caches: &mut [M::Cache]| {
        let mut acc = Accumulator::default();
        for cache in caches {
            let input = match all_tokens {
                true => model
                    .stage_input_all_tokens(block, stage, cache)
                    .ok_or_else(|| {
                        PipelineError::Config(format!("{what}: the stage has no all-token input"))
                    })?,
                false => model.stage_input(block, stage, cache),
            };
            acc.add(input, request, &what, precision)?;
        }
        Ok::<_, PipelineError>(acc)
    };
    let acc = if side_by_side(caches.len(), &model.device()) {
        let (a, b) = caches.split_at_mut(caches.len().div_ceil(2));
        let (a, b) = rayon::join(|| lane(a), || lane(b));
        a?.merge(b?)
    } else {
        lane(caches)?
    };
    acc.finish(&what)
}

/// Whether `items` independent pieces of calibration work — batches (in two lanes, see
/// [`collect_stats_in`]) or a stage's linears — run side by side: on the CPU backends, where
/// the host kernels share one thread pool, and for two items or more.
pub(super) fn side_by_side(items: usize, device: &burn::tensor::Device) -> bool {
    items >= 2 && crate::backend::runs_cpu_kernels(device)
}

/// Accumulates the requested statistics over layer inputs `[batch, seq, in]` (one per
/// calibration batch); `what` names them in errors.
pub(super) fn stats_of_inputs(
    inputs: impl Iterator<Item = Tensor<3>>,
    request: StatsRequest,
    what: &str,
    precision: DensePrecision,
) -> Result<LayerStats, PipelineError> {
    let mut acc = Accumulator::default();
    for inp in inputs {
        acc.add(inp, request, what, precision)?;
    }
    acc.finish(what)
}

/// Running sums of a stage's statistics over some of its batches.
#[derive(Default)]
struct Accumulator {
    tokens: usize,
    /// `XᵀX` on the model's device (backends without the host kernels).
    gram: Option<Tensor<2>>,
    /// `XᵀX` summed on the host by compress-kernels (faer in f32, or AMX / AVX-512 BF16 in
    /// bf16): at least its upper triangle, mirrored in [`Self::finish`].
    host_gram: Option<Vec<f32>>,
    sq: Option<Tensor<1>>,
    amax: Option<Tensor<1>>,
}

impl Accumulator {
    fn add(
        &mut self,
        inp: Tensor<3>,
        request: StatsRequest,
        what: &str,
        precision: DensePrecision,
    ) -> Result<(), PipelineError> {
        let [b, t, d] = inp.dims();
        if b * t == 0 {
            // An expert no token of this batch was routed to.
            return Ok(());
        }
        self.tokens += b * t;
        let flat = inp.reshape([b * t, d]);
        if request.gram && crate::backend::runs_cpu_kernels(&flat.device()) {
            let g = self.host_gram.get_or_insert_with(|| vec![0f32; d * d]);
            // Read in place where the backend allows (flex), not copied twice per batch.
            crate::backend::with_host_f32(&flat, |xs| {
                if !all_finite(xs) {
                    return Err(PipelineError::NonFinite(what.to_string()));
                }
                // Mirrored once after the last batch, not once per batch.
                compress_kernels::dense::gram_upper(xs, b * t, d, g, precision)
                    .map(|_| ())
                    .map_err(|e| PipelineError::Config(format!("{what}: {e}")))
            })
            .ok_or_else(|| PipelineError::Config(format!("reading {what} back failed")))??;
        } else if request.gram {
            let g = flat.clone().transpose().matmul(flat.clone());
            self.gram = Some(match self.gram.take() {
                Some(acc) => acc + g,
                None => g,
            });
        }
        if request.col_sq_norms {
            let s = flat.clone().square().sum_dim(0).reshape([d]);
            self.sq = Some(match self.sq.take() {
                Some(acc) => acc + s,
                None => s,
            });
        }
        if request.abs_max {
            let m = flat.abs().max_dim(0).reshape([d]);
            self.amax = Some(match self.amax.take() {
                Some(acc) => acc.max_pair(m),
                None => m,
            });
        }
        Ok(())
    }

    /// The sums of `self`'s batches and `other`'s (added in that order).
    fn merge(self, other: Self) -> Self {
        fn both<T>(a: Option<T>, b: Option<T>, f: impl FnOnce(T, T) -> T) -> Option<T> {
            match (a, b) {
                (Some(a), Some(b)) => Some(f(a, b)),
                (a, b) => a.or(b),
            }
        }
        Self {
            tokens: self.tokens + other.tokens,
            gram: both(self.gram, other.gram, |a, b| a + b),
            host_gram: both(self.host_gram, other.host_gram, |mut a, b| {
                a.iter_mut().zip(&b).for_each(|(x, y)| *x += y);
                a
            }),
            sq: both(self.sq, other.sq, |a, b| a + b),
            amax: both(self.amax, other.amax, |a, b| a.max_pair(b)),
        }
    }

    fn finish(self, what: &str) -> Result<LayerStats, PipelineError> {
        let host = |t: Option<Tensor<1>>| -> Result<Option<Vec<f32>>, PipelineError> {
            t.map(|t| to_host(t.into_data(), what)).transpose()
        };
        let gram = match (self.gram, self.host_gram) {
            (Some(g), _) => {
                let n = g.dims()[0];
                Some(to_host(g.reshape([n * n]).into_data(), what)?)
            }
            (None, mut host) => {
                if let Some(g) = host.as_mut() {
                    let d = (g.len() as f64).sqrt() as usize;
                    compress_kernels::dense::symmetrize_upper(g, d);
                }
                host
            }
        };
        Ok(LayerStats {
            tokens: self.tokens,
            gram,
            col_sq_norms: host(self.sq)?,
            abs_max: host(self.amax)?,
        })
    }
}

pub(super) fn to_host(data: TensorData, what: &str) -> Result<Vec<f32>, PipelineError> {
    let v = data
        .try_to_vec::<f32>()
        .map_err(|e| PipelineError::Config(format!("reading {what}: {e:?}")))?;
    if v.iter().any(|x| !x.is_finite()) {
        return Err(PipelineError::NonFinite(what.to_string()));
    }
    Ok(v)
}

/// Whether every value is finite, checked in parallel (a serial pass over a batch's
/// `[tokens, 1536]` inputs leaves the other core idle for ~10 ms).
fn all_finite(xs: &[f32]) -> bool {
    use rayon::prelude::*;
    xs.par_chunks(1 << 16)
        .all(|c| c.iter().all(|x| x.is_finite()))
}
