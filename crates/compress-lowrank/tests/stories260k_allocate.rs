//! Rank allocation under a global parameter budget on the real stories260K model (`../shared`):
//! measured per-layer sensitivity, the budget met by the real factorized model, and the
//! allocated model against the uniform ratio at the same budget.
//!
//! Calibration and the sensitivity probe use the first half of the TinyStories validation text,
//! the comparison the second.

#[path = "../../compress-model/tests/common/mod.rs"]
mod common;

use compress_core::calibration::sample_windows;
use compress_core::layer_id::LinearId;
use compress_core::linear::CompressedLinear;
use compress_core::pipeline::{BlockwiseModel, LayerFilter};
use compress_core::recipe::CalibrationConfig;
use compress_eval::kld::kl_divergence;
use compress_eval::perplexity::{PerplexityConfig, Scoring};
use compress_lowrank::allocate::{allocate_ranks, DEFAULT_RATIOS};
use compress_lowrank::recipe::{LowRankConfig, LowRankMethod};
use compress_model::llama::LlamaModel;
use compress_model::llama::BLOCK_LINEARS;

use common::stories_split;

/// Stored and dense parameters of the blocks' linears.
fn linear_params(model: &LlamaModel) -> (usize, usize) {
    let (mut stored, mut dense) = (0, 0);
    for b in 0..model.num_blocks() {
        for name in BLOCK_LINEARS.map(|k| LinearId::block(b, k)) {
            let l = model.expect_linear(name);
            let (o, i) = (l.out_features(), l.in_features());
            stored += match l {
                CompressedLinear::LowRank(lr) => lr.rank() * (o + i),
                _ => o * i,
            };
            dense += o * i;
        }
    }
    (stored, dense)
}

/// SVD-LLM at a 25% parameter cut: uniform (every layer keeps 75%) against the allocation
/// from measured sensitivity at the same budget. The allocated model stores at most 75% of the
/// parameters (counted on the real layers after the pipeline), is not uniform, and is closer
/// to the base model in KL divergence on held-out text.
#[test]
fn allocated_ranks_meet_the_budget_and_beat_uniform_ranks() {
    let Some(s) = stories_split() else { return };
    let budget = 0.75;
    let method = LowRankMethod::SvdLlm(LowRankConfig::ratio(budget));
    let windows = sample_windows(&s.calib, 16, 128, 0).unwrap();
    let probe = &windows[..4];

    let mut model = s.m.model.clone();
    let plan = allocate_ranks(
        &mut model,
        probe,
        &method,
        &DEFAULT_RATIOS,
        budget,
        &LayerFilter::All,
        |_, _| {},
    )
    .unwrap();
    assert_eq!(plan.layers.len(), 35);
    assert!(plan.kept_fraction() <= budget, "{}", plan.kept_fraction());
    for (name, r) in plan.by_layer_name() {
        eprintln!("  {name}: mean kept ratio {r:.3}");
    }
    let distinct: std::collections::BTreeSet<usize> = plan.choice.iter().copied().collect();
    assert!(
        distinct.len() > 1,
        "the allocation is uniform: {:?}",
        plan.choice
    );
    // Every option's divergence is finite and the dense option costs nothing.
    for l in &plan.layers {
        assert_eq!(*l.options.last().unwrap(), (32.0, 0.0), "{}", l.id);
        assert!(
            l.options.iter().all(|o| o.1.is_finite() && o.1 >= -1e-6),
            "{l:?}"
        );
    }

    let config = PerplexityConfig {
        context: 128,
        scoring: Scoring::AllTokens,
        max_windows: Some(16),
        bos: s.m.tokenizer.bos_id(),
    };
    let run = |recipe_steps: &compress_core::recipe::Recipe<LowRankMethod>| {
        let mut m = s.m.model.clone();
        recipe_steps
            .pipeline()
            .unwrap()
            .run(&mut m, &windows, |_, _, _| {})
            .unwrap();
        let kld = kl_divergence(&s.m.model, &m, &s.eval, &config, |_, _| {}).unwrap();
        (m, kld)
    };
    let allocated = plan.recipe(CalibrationConfig::default());
    let (m_alloc, k_alloc) = run(&allocated);
    let uniform = compress_core::recipe::Recipe {
        version: compress_core::recipe::RECIPE_VERSION,
        calibration: CalibrationConfig::default(),
        steps: vec![compress_core::recipe::RecipeStep {
            layers: None,
            method,
        }],
        heal: None,
    };
    let (m_uni, k_uni) = run(&uniform);
    let (stored_a, dense) = linear_params(&m_alloc);
    let (stored_u, _) = linear_params(&m_uni);
    assert!(
        stored_a as f64 <= budget * dense as f64,
        "{stored_a} of {dense}"
    );
    eprintln!(
        "stories260K SVD-LLM at {budget}: uniform {stored_u} params, KLD {:.4} [{:.4}, {:.4}]; \
         allocated {stored_a} params, KLD {:.4} [{:.4}, {:.4}] (predicted sum {:.4}); of {dense}",
        k_uni.kld.mean,
        k_uni.kld.lo,
        k_uni.kld.hi,
        k_alloc.kld.mean,
        k_alloc.kld.lo,
        k_alloc.kld.hi,
        plan.predicted_kld()
    );
    assert!(
        k_alloc.kld.mean < k_uni.kld.mean,
        "allocated KLD {} not below uniform {}",
        k_alloc.kld.mean,
        k_uni.kld.mean
    );
}
