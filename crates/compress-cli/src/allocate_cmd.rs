//! `compress lowrank --allocate`: per-layer ranks under one parameter budget from measured
//! sensitivity ([`compress::lowrank::allocate`]), turned into a per-layer recipe that the
//! ordinary pipeline then runs.

use compress::core::pipeline::LayerFilter;
use compress::lowrank::allocate::{measure_ranks, RankSensitivity};
use compress::model::LoadedModel;
use compress::recipe::{Method, Recipe};

use crate::cli::LowrankArgs;
use crate::progress::{bar, counter};
use crate::{read_text, CliError, CliResult};

/// Replaces the one-step `recipe` (`compress lowrank --ratio R`) by the allocation at budget
/// `R`: measures (or reads) each layer's sensitivity on the first `--probe-samples` windows,
/// allocates, saves what was asked and prints the per-layer-kind ratios (to stderr with
/// `--json`, so stdout stays one JSON line).
pub fn allocate(
    args: &LowrankArgs,
    m: &mut LoadedModel,
    windows: &[Vec<u32>],
    recipe: &Recipe,
    json: bool,
) -> CliResult<Recipe> {
    let budget = args
        .ratio
        .ok_or_else(|| CliError::usage("--allocate needs --ratio"))?;
    let [step] = recipe.steps.as_slice() else {
        return Err(CliError::usage(
            "--allocate plans a one-step lowrank recipe",
        ));
    };
    let Method::LowRank(method) = &step.method else {
        return Err(CliError::usage("--allocate plans a low-rank step"));
    };
    let filter = match &step.layers {
        Some(p) => LayerFilter::regex(p).map_err(CliError::usage)?,
        None => LayerFilter::All,
    };
    let sensitivity = match &args.sensitivity {
        Some(path) => {
            let s: RankSensitivity = serde_json::from_str(&read_text(path)?)
                .map_err(|e| CliError::input(format!("{}: {e}", path.display())))?;
            let same_method = s.method.with_ratio(0.5).ok() == method.with_ratio(0.5).ok();
            if !same_method || s.ratios != args.candidates {
                return Err(CliError::usage(format!(
                    "{} measured {:?} at ratios {:?}, not {:?} at {:?}",
                    path.display(),
                    s.method,
                    s.ratios,
                    method,
                    args.candidates
                )));
            }
            s
        }
        None => {
            if args.probe_samples == 0 {
                return Err(CliError::usage("--probe-samples must be at least 1"));
            }
            let probe = &windows[..args.probe_samples.min(windows.len())];
            let pb = bar("sensitivity", "layers", 0, json);
            let s = measure_ranks(
                &mut m.model,
                probe,
                method,
                &args.candidates,
                &filter,
                counter(&pb),
            )
            .map_err(|e| match e {
                compress::core::pipeline::PipelineError::Config(c) => CliError::usage(c),
                e => CliError::failed(e),
            })?;
            pb.finish_and_clear();
            s
        }
    };
    if let Some(path) = &args.save_sensitivity {
        let text = serde_json::to_string_pretty(&sensitivity).map_err(CliError::failed)?;
        std::fs::write(path, text)
            .map_err(|e| CliError::failed(format!("{}: {e}", path.display())))?;
    }
    let plan = sensitivity.allocate(budget).map_err(CliError::usage)?;
    let planned = plan.recipe(recipe.calibration.clone());
    let planned = Recipe {
        version: planned.version,
        calibration: planned.calibration,
        steps: planned
            .steps
            .into_iter()
            .map(|s| compress::core::recipe::RecipeStep {
                layers: s.layers,
                method: Method::LowRank(s.method),
            })
            .collect(),
        heal: None,
    };
    let text = planned.to_toml().map_err(CliError::failed)?;
    if let Some(path) = &args.save_recipe {
        std::fs::write(path, &text)
            .map_err(|e| CliError::failed(format!("{}: {e}", path.display())))?;
    }
    let kinds: Vec<String> = plan
        .by_layer_name()
        .iter()
        .map(|(n, r)| format!("{n} {r:.2}"))
        .collect();
    let line = format!(
        "allocated {:.4} of the parameters (budget {budget}) over {} layers from sensitivity on {} probe tokens; {} stay dense; mean kept ratio: {}",
        plan.kept_fraction(),
        plan.layers.len(),
        sensitivity.probe_tokens,
        plan.choice.iter().filter(|&&k| k == plan.ratios.len()).count(),
        kinds.join(", ")
    );
    if json {
        eprintln!("{line}");
    } else {
        println!("{line}");
    }
    Ok(planned)
}
