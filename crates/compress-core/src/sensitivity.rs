//! Per-layer sensitivity to any compression method, and budgeted allocation over it.
//!
//! 1. **Sensitivity** ([`measure_sensitivity`]): each layer is compressed *alone* with each
//!    candidate method (any recipe method: quantizers at several widths, pruners at several
//!    sparsities, low-rank factorizations at several ratios — calibrated on the uncompressed
//!    model's activations) and the KL divergence of the model's next-token distribution to the
//!    uncompressed model's is measured on calibration windows. Only the blocks from the layer's
//!    block onward are re-run (their inputs are kept from one base pass).
//! 2. **Allocation** ([`allocate`]): every layer starts at its cheapest option; the upgrade with
//!    the largest KLD decrease per extra stored bit is applied repeatedly while the budget
//!    allows (the greedy solution of the Lagrangian relaxation, optimal on the lower convex hull
//!    of each layer's error-vs-bits curve when the layers' errors add up).
//!
//! `compress_quant::mixed` turns an allocation into per-layer bit widths and
//! `compress_lowrank::allocate` into per-layer ranks; both write the result as a recipe with one
//! step per layer.
//!
//! Why end-to-end KLD and not each layer's own output error: a layer's own error says little
//! about how much the rest of the network amplifies it (measured for quantization in
//! `compress_quant::mixed`).

use crate::compressor::{Compressor, LayerView, StatsRequest};
use crate::layer_id::LinearId;
use crate::linear::CompressedLinear;
use crate::pipeline::{collect_stats, BlockwiseModel, LayerFilter, Pipeline, PipelineError};
use crate::recipe::{CalibrationConfig, Recipe, RecipeStep, StepMethod, RECIPE_VERSION};
use burn::tensor::activation::log_softmax;
use burn::tensor::Tensor;

/// Error and storage of each candidate on one layer.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct LayerSensitivity {
    /// The layer (serialized as its path).
    pub id: LinearId,
    /// Number of weights.
    pub weights: usize,
    /// `(stored bits per weight, mean KL divergence per token)` per candidate, in candidate order.
    pub options: Vec<(f64, f64)>,
}

/// Measures every linear of every block with every candidate (see the [module docs](self)).
/// The model is restored before returning; `progress(done, total)` is called after each layer.
/// Candidates may be any recipe method.
pub fn measure_sensitivity<M: BlockwiseModel, S: StepMethod>(
    model: &mut M,
    calibration: &[Vec<u32>],
    candidates: &[S],
    progress: impl FnMut(usize, usize),
) -> Result<Vec<LayerSensitivity>, PipelineError> {
    measure_sensitivity_of(model, calibration, candidates, &LayerFilter::All, progress)
}

/// [`measure_sensitivity`] of the block linears `filter` matches (the output head is never
/// measured).
pub fn measure_sensitivity_of<M: BlockwiseModel, S: StepMethod>(
    model: &mut M,
    calibration: &[Vec<u32>],
    candidates: &[S],
    filter: &LayerFilter,
    mut progress: impl FnMut(usize, usize),
) -> Result<Vec<LayerSensitivity>, PipelineError> {
    let compressors: Vec<Box<dyn Compressor>> = candidates
        .iter()
        .map(|c| c.build().map_err(PipelineError::Config))
        .collect::<Result<_, _>>()?;
    let device = model.device();
    let request = compressors
        .iter()
        .fold(StatsRequest::NONE, |r, c| r.union(c.stats()));
    let blocks = model.num_blocks();
    // One base pass: every block's inputs, and the base log-probabilities.
    let mut inputs: Vec<Vec<Tensor<3>>> = Vec::with_capacity(blocks + 1);
    inputs.push(Pipeline::new().embed_calibration(model, calibration, &device)?);
    for b in 0..blocks {
        let next = inputs[b]
            .iter()
            .map(|x| model.block_forward(b, x.clone()))
            .collect();
        inputs.push(next);
    }
    let base: Vec<Tensor<3>> = inputs[blocks]
        .iter()
        .map(|x| log_softmax(model.head_logits(x.clone()), 2))
        .collect();
    let total = model
        .block_linears()
        .into_iter()
        .filter(|&id| filter.matches(id))
        .count();
    let mut out = Vec::with_capacity(total);
    let policy = Default::default();
    for (block, block_inputs) in inputs.iter().enumerate().take(blocks) {
        for (si, stage) in model.stages(block).iter().enumerate() {
            if !stage.linears.iter().any(|&id| filter.matches(id)) {
                continue;
            }
            let mut caches: Vec<M::Cache> = block_inputs
                .iter()
                .map(|x| model.begin_block(block, x.clone(), &policy))
                .collect();
            let stats = collect_stats(model, block, si, &mut caches, request)?;
            drop(caches);
            for &id in &stage.linears {
                if !filter.matches(id) {
                    continue;
                }
                let path = id.to_string();
                let original = model.expect_linear(id).clone();
                let (o, i) = (original.out_features(), original.in_features());
                let bias = original.bias();
                let w: Vec<f32> = original
                    .dense_weight()
                    .into_data()
                    .try_to_vec::<f32>()
                    .map_err(|e| PipelineError::Config(format!("{path}: {e:?}")))?;
                let mask = original.mask().cloned();
                let packed = match &original {
                    CompressedLinear::Quantized(q) if q.correction.is_none() => {
                        Some(q.packed.clone())
                    }
                    _ => None,
                };
                let view = LayerView {
                    path: &path,
                    weight: &w,
                    out_features: o,
                    in_features: i,
                    mask: mask.as_ref(),
                    packed: packed.as_deref(),
                    original: None,
                };
                let mut options = Vec::with_capacity(compressors.len());
                for c in &compressors {
                    let mut q = c.compress(view, &stats)?;
                    if let Some(m) = &mask {
                        // As in the pipeline: a pruned weight stays pruned.
                        q = q.with_mask(m);
                    }
                    let bits = q.bits_per_weight();
                    *model.expect_linear_mut(id) =
                        CompressedLinear::from_weights(q, o, i, bias.clone(), &device);
                    let kld = kld_from_block(model, block, block_inputs, &base);
                    if !kld.is_finite() {
                        return Err(PipelineError::NonFinite(format!(
                            "the KL divergence with {path} compressed by {}",
                            c.name()
                        )));
                    }
                    options.push((bits, kld));
                }
                *model.expect_linear_mut(id) = original;
                out.push(LayerSensitivity {
                    id,
                    weights: o * i,
                    options,
                });
                progress(out.len(), total);
            }
        }
    }
    Ok(out)
}

/// Mean KL(base ‖ model) per token, running blocks `from..` on the kept inputs.
fn kld_from_block<M: BlockwiseModel>(
    model: &M,
    from: usize,
    inputs: &[Tensor<3>],
    base: &[Tensor<3>],
) -> f64 {
    let (mut sum, mut tokens) = (0f64, 0usize);
    for (x, lp) in inputs.iter().zip(base) {
        let mut x = x.clone();
        for b in from..model.num_blocks() {
            x = model.block_forward(b, x);
        }
        let lq = log_softmax(model.head_logits(x), 2);
        let [bs, t, _] = lp.dims();
        let kl: f32 = (lp.clone().exp() * (lp.clone() - lq))
            .sum()
            .into_scalar::<f32>();
        sum += kl as f64;
        tokens += bs * t;
    }
    sum / tokens.max(1) as f64
}

/// Chooses one candidate per layer so that the weighted average of stored bits per weight is at
/// most `budget`, minimising the summed error greedily (see the [module docs](self)). Returns the
/// chosen candidate index per layer, or an error if even the cheapest choice exceeds the budget.
pub fn allocate(layers: &[LayerSensitivity], budget: f64) -> Result<Vec<usize>, String> {
    let total: f64 = layers.iter().map(|l| l.weights as f64).sum();
    let cost = |l: &LayerSensitivity, k: usize| l.options[k].0 * l.weights as f64;
    let mut choice: Vec<usize> = Vec::with_capacity(layers.len());
    for l in layers {
        let k = (0..l.options.len())
            .min_by(|&a, &b| l.options[a].0.total_cmp(&l.options[b].0))
            .ok_or_else(|| format!("{}: no candidates", l.id))?;
        choice.push(k);
    }
    let mut used: f64 = layers.iter().zip(&choice).map(|(l, &k)| cost(l, k)).sum();
    let limit = budget * total;
    if used > limit * (1.0 + 1e-12) {
        return Err(format!(
            "the cheapest candidates already store {:.3} bits/weight, above the budget {budget}",
            used / total
        ));
    }
    loop {
        // The best upgrade (error saved per extra bit) that still fits.
        let mut best: Option<(usize, usize, f64)> = None;
        for (li, l) in layers.iter().enumerate() {
            let (bits0, err0) = l.options[choice[li]];
            for (k, &(bits, err)) in l.options.iter().enumerate() {
                let extra = (bits - bits0) * l.weights as f64;
                if bits <= bits0 || err >= err0 || used + extra > limit * (1.0 + 1e-12) {
                    continue;
                }
                let gain = (err0 - err) / extra;
                if best.is_none_or(|(_, _, g)| gain > g) {
                    best = Some((li, k, gain));
                }
            }
        }
        let Some((li, k, _)) = best else { break };
        used += cost(&layers[li], k) - cost(&layers[li], choice[li]);
        choice[li] = k;
    }
    Ok(choice)
}

/// A recipe with one step per `(layer, method)`, each filtered to exactly that layer
/// (`^layers\\.3\\.mlp\\.down_proj$`), so an allocation is saved, inspected and re-run like any
/// hand-written recipe.
pub fn per_layer_recipe<S>(
    steps: impl IntoIterator<Item = (LinearId, S)>,
    calibration: CalibrationConfig,
) -> Recipe<S> {
    let steps = steps
        .into_iter()
        .map(|(id, method)| RecipeStep {
            layers: Some(format!("^{}$", regex::escape(&id.to_string()))),
            method,
        })
        .collect();
    Recipe {
        version: RECIPE_VERSION,
        calibration,
        steps,
        heal: None,
    }
}

/// Average stored bits per weight of an allocation.
pub fn average_bits(layers: &[LayerSensitivity], choice: &[usize]) -> f64 {
    let (mut bits, mut n) = (0.0, 0.0);
    for (l, &k) in layers.iter().zip(choice) {
        bits += l.options[k].0 * l.weights as f64;
        n += l.weights as f64;
    }
    bits / n.max(1.0)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn layer(block: usize, weights: usize, options: &[(f64, f64)]) -> LayerSensitivity {
        LayerSensitivity {
            id: LinearId::block(block, crate::layer_id::LinearKind::Down),
            weights,
            options: options.to_vec(),
        }
    }

    #[test]
    fn greedy_upgrades_the_most_sensitive_layer_first() {
        // Two equal-sized layers with 2/4/8-bit options; layer b loses much more at low bits.
        let a = layer(0, 100, &[(2.0, 1.0), (4.0, 0.5), (8.0, 0.4)]);
        let b = layer(1, 100, &[(2.0, 10.0), (4.0, 1.0), (8.0, 0.1)]);
        let layers = [a, b];
        // Budget 3: only one layer can go to 4 bits; b gains 9 per 200 bits, a 0.5.
        assert_eq!(allocate(&layers, 3.0).unwrap(), vec![0, 1]);
        assert_eq!(average_bits(&layers, &[0, 1]), 3.0);
        // Budget 6 (1200 bits): b→4 (9 per 200 bits), then a→4 (0.5/200 beats b→8's 0.9/400),
        // then b→8 (fills the budget exactly); a→8 no longer fits.
        let c = allocate(&layers, 6.0).unwrap();
        assert_eq!(c, vec![1, 2]);
        assert_eq!(average_bits(&layers, &c), 6.0);
        assert!(allocate(&layers, 1.0)
            .unwrap_err()
            .contains("above the budget"));
    }
}
