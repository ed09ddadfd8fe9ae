//! A recipe's `[heal]` stage ([`HealConfig`]): LoRA healing of a compressed model by
//! distillation from the uncompressed one, with the recipe's settings mapped onto
//! [`train::distill`](crate::train::distill).

use std::ops::ControlFlow;

use compress_core::recipe::HealConfig;
use compress_model::llama::LlamaModel;

use crate::error::DistillError;
use crate::loss::DistillLoss;
use crate::train::{
    distill, LoraConfig, LoraTargets, StepInfo, TrainConfig, TrainOutcome, WidthSchedule,
};

/// The training configuration a `[heal]` stage stands for: LoRA of `rank` (α = 2·rank unless
/// given) on its `targets` (every projection when absent), `steps` steps of `batch_size`
/// windows of `seqlen` tokens (`default_seqlen`, the recipe's calibration length, when
/// absent), warm-up over the first 10% of the steps, the data order seeded by `seed`. Fails on
/// an unknown target name.
pub fn heal_config(
    heal: &HealConfig,
    default_seqlen: usize,
    seed: u64,
) -> Result<TrainConfig, DistillError> {
    let targets = match &heal.targets {
        None => LoraTargets::ALL,
        Some(names) => LoraTargets::from_names(names)
            .map_err(|e| DistillError::Config(format!("heal.targets: {e}")))?,
    };
    Ok(TrainConfig {
        steps: heal.steps,
        batch_size: heal.batch_size,
        seq_len: heal.seqlen.unwrap_or(default_seqlen),
        lr: heal.lr,
        warmup_steps: (heal.steps / 10).max(1),
        seed,
        lora: Some(LoraConfig {
            rank: heal.rank,
            alpha: heal.alpha.unwrap_or(2.0 * heal.rank as f64),
            targets,
        }),
        ..TrainConfig::default()
    })
}

/// Heals `student` towards `teacher` (the uncompressed model) on windows of `tokens` (the
/// calibration text) with the logit-KL objective; `progress` follows every step.
pub fn heal(
    student: LlamaModel,
    teacher: &LlamaModel,
    tokens: &[u32],
    heal: &HealConfig,
    default_seqlen: usize,
    seed: u64,
    mut progress: impl FnMut(&StepInfo),
) -> Result<TrainOutcome, DistillError> {
    heal.validate().map_err(DistillError::Config)?;
    let cfg = heal_config(heal, default_seqlen, seed)?;
    distill(
        student,
        teacher,
        tokens,
        &cfg,
        &DistillLoss::default(),
        &WidthSchedule::Full,
        |i| {
            progress(i);
            ControlFlow::Continue(())
        },
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_stage_maps_onto_a_lora_run() {
        let h = HealConfig {
            rank: 4,
            steps: 30,
            ..HealConfig::default()
        };
        let c = heal_config(&h, 256, 7).unwrap();
        assert_eq!((c.steps, c.batch_size, c.seq_len, c.seed), (30, 8, 256, 7));
        assert_eq!(c.warmup_steps, 3);
        assert_eq!(
            c.lora,
            Some(LoraConfig {
                rank: 4,
                alpha: 8.0,
                targets: LoraTargets::ALL,
            })
        );
        assert!(c.validate().is_ok());
        // Targets by short or full name; unknown ones are refused naming the field.
        let qv = HealConfig {
            targets: Some(vec!["q_proj".into(), "attn.v_proj".into()]),
            ..h.clone()
        };
        let t = heal_config(&qv, 256, 7).unwrap().lora.unwrap().targets;
        assert!((0..7).all(|i| t.contains(i) == (i == 0 || i == 2)));
        let bad = HealConfig {
            targets: Some(vec!["qproj".into()]),
            ..h
        };
        let e = heal_config(&bad, 256, 7).unwrap_err().to_string();
        assert!(e.contains("heal.targets") && e.contains("qproj"), "{e}");
        assert!(LoraTargets::from_names::<&str>(&[]).is_err());
    }
}
