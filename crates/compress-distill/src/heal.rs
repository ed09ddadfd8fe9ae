//! A recipe's `[heal]` stage ([`HealConfig`]): LoRA healing of a compressed model by
//! distillation from the uncompressed one, with the recipe's settings mapped onto
//! [`train::distill`](crate::train::distill).

use std::ops::ControlFlow;

use compress_core::recipe::HealConfig;
use compress_model::llama::LlamaModel;

use crate::error::DistillError;
use crate::loss::DistillLoss;
use crate::train::{distill, LoraConfig, StepInfo, TrainConfig, TrainOutcome, WidthSchedule};

/// The training configuration a `[heal]` stage stands for: LoRA of `rank` (α = 2·rank unless
/// given), `steps` steps of `batch_size` windows of `seqlen` tokens (`default_seqlen`, the
/// recipe's calibration length, when absent), warm-up over the first 10% of the steps, the
/// data order seeded by `seed`.
pub fn heal_config(heal: &HealConfig, default_seqlen: usize, seed: u64) -> TrainConfig {
    TrainConfig {
        steps: heal.steps,
        batch_size: heal.batch_size,
        seq_len: heal.seqlen.unwrap_or(default_seqlen),
        lr: heal.lr,
        warmup_steps: (heal.steps / 10).max(1),
        seed,
        lora: Some(LoraConfig {
            rank: heal.rank,
            alpha: heal.alpha.unwrap_or(2.0 * heal.rank as f64),
        }),
        ..TrainConfig::default()
    }
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
    let cfg = heal_config(heal, default_seqlen, seed);
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
        let c = heal_config(&h, 256, 7);
        assert_eq!((c.steps, c.batch_size, c.seq_len, c.seed), (30, 8, 256, 7));
        assert_eq!(c.warmup_steps, 3);
        assert_eq!(
            c.lora,
            Some(LoraConfig {
                rank: 4,
                alpha: 8.0
            })
        );
        assert!(c.validate().is_ok());
    }
}
