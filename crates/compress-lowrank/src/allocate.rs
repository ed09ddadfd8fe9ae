//! Rank allocation across layers under one model-wide parameter budget, from measured
//! sensitivity.
//!
//! A uniform kept-parameter ratio gives every layer the same cut, but layers differ both in
//! how low-rank they are (SmolLM2's query projections hold 55% of their spectral energy in 10%
//! of their directions, its MLP matrices 26–31%) and in how much the rest of the network
//! amplifies their error. The allocation measures the second directly:
//!
//! 1. every layer is factorized *alone* at each candidate ratio (e.g. 0.25, 0.5, 0.75, 0.9 of
//!    its parameters, by the step's own method: SVD-LLM, ASVD or SVD) and the KL divergence of
//!    the model's next-token distribution to the uncompressed model's is measured on probe
//!    windows ([`compress_core::sensitivity::measure_sensitivity_of`]); keeping the layer dense
//!    is one more option, at its full size and zero divergence;
//! 2. the greedy allocation of [`compress_core::sensitivity::allocate`] starts every layer at
//!    its smallest option and repeatedly applies the upgrade with the largest divergence saved
//!    per extra stored parameter while the total stays within `budget · Σ out·in`;
//! 3. the result is a recipe with one step per factorized layer (layers kept dense get none).
//!
//! This is the sensitivity-driven budget of the SVD-LLM follow-ups (e.g. ASVD's
//! sensitivity-based truncation-rank search, Yuan et al. 2023 §3.3, which also measures each
//! layer's perplexity change alone at a set of parameter ratios and allocates under a global
//! target), with the KL divergence instead of perplexity as the measured loss.
//!
//! ```no_run
//! # fn demo(model: &mut compress_model::llama::LlamaModel, probe: &[Vec<u32>]) {
//! use compress_core::pipeline::LayerFilter;
//! use compress_core::recipe::CalibrationConfig;
//! use compress_lowrank::allocate::{allocate_ranks, DEFAULT_RATIOS};
//! use compress_lowrank::recipe::{LowRankConfig, LowRankMethod};
//!
//! let method = LowRankMethod::SvdLlm(LowRankConfig::ratio(0.8));
//! let plan = allocate_ranks(model, probe, &method, &DEFAULT_RATIOS, 0.8, &LayerFilter::All, |_, _| {})
//!     .unwrap();
//! assert!(plan.kept_fraction() <= 0.8);
//! let recipe = plan.recipe(CalibrationConfig::default());
//! println!("{}", recipe.to_toml().unwrap());
//! # }
//! ```

use compress_core::pipeline::{BlockwiseModel, LayerFilter, PipelineError};
use compress_core::recipe::{CalibrationConfig, Recipe};
use compress_core::sensitivity::{
    allocate, average_bits, measure_sensitivity_of, per_layer_recipe, LayerSensitivity,
};

use serde::{Deserialize, Serialize};

use crate::recipe::LowRankMethod;

/// Candidate kept-parameter ratios per layer when none are given.
pub const DEFAULT_RATIOS: [f64; 4] = [0.25, 0.5, 0.75, 0.9];

/// Bits per stored value of the f32 factors and of a dense layer (options are compared in
/// stored bits, as [`allocate`] does for quantization).
const F32_BITS: f64 = 32.0;

/// Per-layer ranks chosen under a global budget.
#[derive(Debug, Clone, PartialEq)]
pub struct RankAllocation {
    /// The method every factorized layer uses (with its rank rule replaced per layer).
    pub method: LowRankMethod,
    /// The candidate kept-parameter ratios, in option order.
    pub ratios: Vec<f64>,
    /// Measured options per layer: one `(stored bits per weight, KLD)` per ratio, then the
    /// dense option `(32, 0)` last.
    pub layers: Vec<LayerSensitivity>,
    /// The chosen option per layer (`ratios.len()` = kept dense).
    pub choice: Vec<usize>,
}

impl RankAllocation {
    /// The method for layer `i`, or `None` if it stays dense.
    pub fn method_for(&self, i: usize) -> Option<LowRankMethod> {
        let k = self.choice[i];
        (k < self.ratios.len()).then(|| {
            self.method
                .with_ratio(self.ratios[k])
                .expect("ratios were validated")
        })
    }

    /// The chosen kept-parameter ratio of layer `i` (1 when it stays dense).
    pub fn ratio_of(&self, i: usize) -> f64 {
        self.ratios.get(self.choice[i]).copied().unwrap_or(1.0)
    }

    /// Stored parameters over the dense parameters of the allocated layers (≤ the budget).
    pub fn kept_fraction(&self) -> f64 {
        average_bits(&self.layers, &self.choice) / F32_BITS
    }

    /// Sum of the chosen options' single-layer divergences (the allocation's objective; the
    /// real divergence of the whole model is measured end to end).
    pub fn predicted_kld(&self) -> f64 {
        self.layers
            .iter()
            .zip(&self.choice)
            .map(|(l, &k)| l.options[k].1)
            .sum()
    }

    /// Mean chosen ratio per layer name (`attn.q_proj`, `mlp.down_proj`, …), weighted by the
    /// layers' sizes, in first-seen order.
    pub fn by_layer_name(&self) -> Vec<(String, f64)> {
        let mut out: Vec<(String, f64, f64)> = Vec::new();
        for (i, l) in self.layers.iter().enumerate() {
            let name = l.id.name_in_block();
            let w = l.weights as f64;
            match out.iter_mut().find(|(n, _, _)| *n == name) {
                Some(e) => {
                    e.1 += w * self.ratio_of(i);
                    e.2 += w;
                }
                None => out.push((name, w * self.ratio_of(i), w)),
            }
        }
        out.into_iter().map(|(n, s, w)| (n, s / w)).collect()
    }

    /// The recipe: one step per factorized layer, filtered to exactly that layer.
    pub fn recipe(&self, calibration: CalibrationConfig) -> Recipe<LowRankMethod> {
        let steps: Vec<_> = (0..self.layers.len())
            .filter_map(|i| self.method_for(i).map(|m| (self.layers[i].id, m)))
            .collect();
        per_layer_recipe(steps, calibration)
    }
}

/// The measured sensitivity of every layer at each candidate ratio: the expensive part of an
/// allocation, saved as JSON so that several budgets reuse one measurement.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RankSensitivity {
    /// The method measured.
    pub method: LowRankMethod,
    /// The candidate kept-parameter ratios, in option order.
    pub ratios: Vec<f64>,
    /// Probe tokens the divergences were measured on.
    pub probe_tokens: usize,
    /// One `(stored bits per weight, KLD)` per ratio and layer (without the dense option).
    pub layers: Vec<LayerSensitivity>,
}

/// Measures every layer `filter` matches at each of `ratios` with `method` on the `probe`
/// windows (see the [module docs](self)). `progress(done, total)` is called once per layer.
pub fn measure_ranks<M: BlockwiseModel>(
    model: &mut M,
    probe: &[Vec<u32>],
    method: &LowRankMethod,
    ratios: &[f64],
    filter: &LayerFilter,
    progress: impl FnMut(usize, usize),
) -> Result<RankSensitivity, PipelineError> {
    if ratios.is_empty() {
        return Err(PipelineError::Config(
            "rank allocation needs at least one candidate ratio".into(),
        ));
    }
    let candidates: Vec<LowRankMethod> = ratios
        .iter()
        .map(|&r| {
            if r >= 1.0 {
                return Err(format!(
                    "candidate ratio {r}: must be below 1 (keeping a layer dense is always an option)"
                ));
            }
            method.with_ratio(r)
        })
        .collect::<Result<_, _>>()
        .map_err(PipelineError::Config)?;
    let layers = measure_sensitivity_of(model, probe, &candidates, filter, progress)?;
    if layers.is_empty() {
        return Err(PipelineError::Config(
            "the layer filter matches no block linear".into(),
        ));
    }
    Ok(RankSensitivity {
        method: method.clone(),
        ratios: ratios.to_vec(),
        probe_tokens: probe.iter().map(Vec::len).sum(),
        layers,
    })
}

impl RankSensitivity {
    /// Ratios per layer so that the stored parameters are at most `budget` (a kept fraction in
    /// (0, 1]) of the measured layers' dense parameters; an error if even the smallest
    /// candidate everywhere exceeds it.
    pub fn allocate(&self, budget: f64) -> Result<RankAllocation, String> {
        if !(budget > 0.0 && budget <= 1.0) {
            return Err(format!(
                "budget = {budget}: the kept parameter fraction must lie in (0, 1]"
            ));
        }
        let mut layers = self.layers.clone();
        for l in &mut layers {
            if l.options.len() != self.ratios.len() {
                return Err(format!(
                    "{}: {} measured options for {} ratios",
                    l.id,
                    l.options.len(),
                    self.ratios.len()
                ));
            }
            l.options.push((F32_BITS, 0.0));
        }
        let choice = allocate(&layers, budget * F32_BITS).map_err(|e| {
            format!(
                "{e} (the smallest candidate ratio is {:.2} of each layer)",
                self.ratios.iter().cloned().fold(f64::INFINITY, f64::min)
            )
        })?;
        Ok(RankAllocation {
            method: self.method.clone(),
            ratios: self.ratios.clone(),
            layers,
            choice,
        })
    }
}

/// [`measure_ranks`] then [`RankSensitivity::allocate`] at `budget`.
pub fn allocate_ranks<M: BlockwiseModel>(
    model: &mut M,
    probe: &[Vec<u32>],
    method: &LowRankMethod,
    ratios: &[f64],
    budget: f64,
    filter: &LayerFilter,
    progress: impl FnMut(usize, usize),
) -> Result<RankAllocation, PipelineError> {
    if !(budget > 0.0 && budget <= 1.0) {
        return Err(PipelineError::Config(format!(
            "budget = {budget}: the kept parameter fraction must lie in (0, 1]"
        )));
    }
    measure_ranks(model, probe, method, ratios, filter, progress)?
        .allocate(budget)
        .map_err(PipelineError::Config)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::recipe::LowRankConfig;
    use compress_core::layer_id::{LinearId, LinearKind};

    fn allocation(options: Vec<Vec<(f64, f64)>>, choice: Vec<usize>) -> RankAllocation {
        let layers = options
            .into_iter()
            .enumerate()
            .map(|(i, options)| LayerSensitivity {
                id: LinearId::block(i, LinearKind::Q),
                weights: 100,
                options,
            })
            .collect();
        RankAllocation {
            method: LowRankMethod::SvdLlm(LowRankConfig::ratio(0.5)),
            ratios: vec![0.25, 0.5],
            layers,
            choice,
        }
    }

    #[test]
    fn a_saved_measurement_allocates_any_budget() {
        let layer = |i: usize| LayerSensitivity {
            id: LinearId::block(i, LinearKind::Up),
            weights: 100,
            options: vec![(8.0, 1.0 + i as f64), (16.0, 0.5)],
        };
        let m = RankSensitivity {
            method: LowRankMethod::Svd(LowRankConfig::ratio(0.5)),
            ratios: vec![0.25, 0.5],
            probe_tokens: 64,
            layers: vec![layer(0), layer(1)],
        };
        let text = serde_json::to_string(&m).unwrap();
        let back: RankSensitivity = serde_json::from_str(&text).unwrap();
        assert_eq!(back, m);
        // At 0.375 only one layer can grow from 0.25 to 0.5: the more sensitive one (layer 1
        // saves 1.5 per 800 extra bits, layer 0 0.5).
        let a = back.allocate(0.375).unwrap();
        assert_eq!(a.choice, vec![0, 1]);
        assert_eq!(a.kept_fraction(), 0.375);
        // At 1.0 both stay dense; below the smallest candidate there is no allocation.
        assert_eq!(back.allocate(1.0).unwrap().choice, vec![2, 2]);
        assert!(back
            .allocate(0.2)
            .unwrap_err()
            .contains("smallest candidate ratio"));
        assert!(back.allocate(0.0).unwrap_err().contains("budget"));
    }

    #[test]
    fn the_recipe_has_a_step_per_factorized_layer_only() {
        let a = allocation(
            vec![
                vec![(8.0, 1.0), (16.0, 0.5), (32.0, 0.0)],
                vec![(8.0, 1.0), (16.0, 0.5), (32.0, 0.0)],
            ],
            vec![0, 2],
        );
        assert_eq!(a.kept_fraction(), (8.0 + 32.0) / 2.0 / 32.0);
        assert_eq!(a.predicted_kld(), 1.0);
        assert_eq!(a.by_layer_name(), vec![("attn.q_proj".to_string(), 0.625)]);
        let r = a.recipe(CalibrationConfig::default());
        assert_eq!(r.steps.len(), 1);
        assert_eq!(
            r.steps[0].layers.as_deref(),
            Some(r"^layers\.0\.attn\.q_proj$")
        );
        assert_eq!(
            r.steps[0].method,
            LowRankMethod::SvdLlm(LowRankConfig::ratio(0.25))
        );
        // The recipe round-trips through TOML as any hand-written one.
        let text = r.to_toml().unwrap();
        assert!(text.contains("ratio = 0.25"), "{text}");
    }
}
