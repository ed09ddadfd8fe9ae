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
pub fn collect_stats_in<M: BlockwiseModel>(
    model: &M,
    block: usize,
    stage: usize,
    caches: &mut [M::Cache],
    request: StatsRequest,
    precision: DensePrecision,
) -> Result<LayerStats, PipelineError> {
    let stage_name = model.stages().get(stage).map_or("?", |s| s.name);
    let inputs = caches
        .iter_mut()
        .map(|cache| model.stage_input(block, stage, cache));
    stats_of_inputs(
        inputs,
        request,
        &format!("the {stage_name} input of block {block}"),
        precision,
    )
}

/// Accumulates the requested statistics over layer inputs `[batch, seq, in]` (one per
/// calibration batch); `what` names them in errors.
pub(super) fn stats_of_inputs(
    inputs: impl Iterator<Item = Tensor<3>>,
    request: StatsRequest,
    what: &str,
    precision: DensePrecision,
) -> Result<LayerStats, PipelineError> {
    let (mut gram, mut sq, mut amax): (Option<Tensor<2>>, Option<Tensor<1>>, Option<Tensor<1>>) =
        (None, None, None);
    // On the CPU backends `XᵀX` is summed on the host by compress-kernels (faer in f32, or AMX /
    // AVX-512 BF16 in bf16), elsewhere with the backend's matmul.
    let mut host_gram: Option<Vec<f32>> = None;
    let mut tokens = 0;
    for inp in inputs {
        let [b, t, d] = inp.dims();
        tokens += b * t;
        let flat = inp.reshape([b * t, d]);
        if request.gram && crate::backend::runs_cpu_kernels(&flat.device()) {
            let g = host_gram.get_or_insert_with(|| vec![0f32; d * d]);
            // Read in place where the backend allows (flex), not copied twice per batch.
            crate::backend::with_host_f32(&flat, |xs| {
                if xs.iter().any(|x| !x.is_finite()) {
                    return Err(PipelineError::NonFinite(what.to_string()));
                }
                compress_kernels::dense::gram(xs, b * t, d, g, precision)
                    .map(|_| ())
                    .map_err(|e| PipelineError::Config(format!("{what}: {e}")))
            })
            .ok_or_else(|| PipelineError::Config(format!("reading {what} back failed")))??;
        } else if request.gram {
            let g = flat.clone().transpose().matmul(flat.clone());
            gram = Some(match gram {
                Some(acc) => acc + g,
                None => g,
            });
        }
        if request.col_sq_norms {
            let s = flat.clone().square().sum_dim(0).reshape([d]);
            sq = Some(match sq {
                Some(acc) => acc + s,
                None => s,
            });
        }
        if request.abs_max {
            let m = flat.abs().max_dim(0).reshape([d]);
            amax = Some(match amax {
                Some(acc) => acc.max_pair(m),
                None => m,
            });
        }
    }
    let host = |t: Option<Tensor<1>>| -> Result<Option<Vec<f32>>, PipelineError> {
        t.map(|t| to_host(t.into_data(), what)).transpose()
    };
    let gram = match (gram, host_gram) {
        (Some(g), _) => {
            let n = g.dims()[0];
            Some(to_host(g.reshape([n * n]).into_data(), what)?)
        }
        (None, host) => host,
    };
    Ok(LayerStats {
        tokens,
        gram,
        col_sq_norms: host(sq)?,
        abs_max: host(amax)?,
    })
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
