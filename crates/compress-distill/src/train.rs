//! The distillation training loop on burn autodiff.
//!
//! Each step draws `batch_size` windows of `seq_len` tokens from the training stream (seeded by
//! `(seed, step)`, so the data order does not depend on where a run resumed), runs the teacher
//! without gradients and the student with them, and takes one AdamW step (Loshchilov & Hutter
//! 2019, arXiv:1711.05101; burn-optim's implementation) with a linear warm-up then cosine decay
//! of the learning rate and clipping of the global gradient norm.
//!
//! With a [`WidthSchedule::Nested`] schedule the step also trains prefix sub-models of the same
//! weights (MatFormer, Devvrit et al. 2023, arXiv:2310.07707): the full student learns from the
//! teacher, and each sampled prefix width learns from the full student's (detached) output —
//! the smaller models are distilled from the largest, in one backward pass over the summed
//! loss. With [`TrainConfig::nested_bits`] it likewise trains nested bit widths through fake
//! quantization ([`crate::matryoshka::NestedBits`]).

use std::ops::ControlFlow;
use std::path::PathBuf;
use std::time::Instant;

use burn::module::{Lora, Module, ModuleVisitor, Param, ParamGroup, ParamId};
use burn::optim::{AdamWConfig, GradientsParams, ModuleOptimizer};
use burn::tensor::{Int, Tensor, TensorData};
use compress_core::calibration::sample_windows;
use compress_core::layer_id::LinearId;
use compress_core::linear::CompressedLinear;
use compress_model::llama::PrefixWidth;
use compress_model::llama::BLOCK_LINEARS;
use compress_model::LlamaModel;
use rand::rngs::StdRng;
use rand::seq::SliceRandom;
use rand::SeedableRng;
use serde::{Deserialize, Serialize};

use crate::checkpoint::{self, CheckpointState};
use crate::error::DistillError;
use crate::loss::{ce_loss, hidden_mse, kl_loss, DistillLoss};
use crate::matryoshka::qat::fake_quantized;
use crate::matryoshka::NestedBits;

/// Optimiser, schedule and data settings of a run.
#[derive(Debug, Clone, PartialEq)]
pub struct TrainConfig {
    /// Optimiser steps.
    pub steps: usize,
    /// Windows per step.
    pub batch_size: usize,
    /// Tokens per window.
    pub seq_len: usize,
    /// Peak learning rate.
    pub lr: f64,
    /// Steps of linear warm-up from `lr / warmup_steps` to `lr`.
    pub warmup_steps: usize,
    /// The cosine decays to `lr · min_lr_ratio` at the last step.
    pub min_lr_ratio: f64,
    /// AdamW's decoupled weight decay.
    pub weight_decay: f32,
    /// Clip the global gradient norm to this value (`None`: no clipping).
    pub grad_clip: Option<f32>,
    /// Seed of the data order, of the sub-width sampling and of the LoRA initialisation.
    pub seed: u64,
    /// Write a checkpoint every this many steps into this directory, and resume from the
    /// latest one found there.
    pub checkpoint: Option<(usize, PathBuf)>,
    /// Train LoRA adapters on the block projections instead of every weight (healing), merged
    /// into the weights at the end.
    pub lora: Option<LoraConfig>,
    /// Also train nested bit widths with fake quantization (Matryoshka Quantization; see
    /// [`crate::matryoshka::NestedBits`]): each width's loss is the KL divergence to the
    /// full-precision student's detached output.
    pub nested_bits: Option<NestedBits>,
}

/// LoRA adapters (Hu et al. 2021, "LoRA: Low-Rank Adaptation of Large Language Models",
/// arXiv:2106.09685): each block projection `W` becomes `W + (α / r)·A B` with trainable `A`, `B`
/// of rank `r` (B starts at 0, so training starts from the compressed model) and `W` frozen;
/// burn's `Module::apply_lora` implements it. After training the product is merged into `W`, and
/// a pruned layer's mask is applied again so its sparsity is kept (the merged update at pruned
/// positions is dropped).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct LoraConfig {
    /// Rank `r` of the adapters.
    pub rank: usize,
    /// Scale numerator `α` (the update is scaled by `α / r`).
    pub alpha: f64,
    /// Which projections of every block get adapters (the others stay frozen as they are).
    pub targets: LoraTargets,
}

/// A set of block projections ([`BLOCK_LINEARS`]; named `attn.q_proj` … `mlp.down_proj`): the
/// linears LoRA adapts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LoraTargets(u8);

impl LoraTargets {
    /// Every projection of every block (the default).
    pub const ALL: LoraTargets = LoraTargets((1 << BLOCK_LINEARS.len()) - 1);

    /// The projections named in `names`, each either in full (`attn.q_proj`) or by its last
    /// part (`q_proj`); an unknown or empty list is an error naming the offender.
    pub fn from_names<S: AsRef<str>>(names: &[S]) -> Result<Self, DistillError> {
        if names.is_empty() {
            return Err(DistillError::Config(
                "LoRA targets: the list is empty (omit it to adapt every projection)".into(),
            ));
        }
        let full: Vec<String> = BLOCK_LINEARS
            .iter()
            .map(|&k| LinearId::block(0, k).name_in_block())
            .collect();
        let mut bits = 0u8;
        for n in names {
            let n = n.as_ref();
            let i = BLOCK_LINEARS
                .iter()
                .zip(&full)
                .position(|(k, f)| f == n || k.short_name() == n)
                .ok_or_else(|| {
                    DistillError::Config(format!(
                        "LoRA target {n:?}: not a block projection (expected one of {})",
                        full.join(", ")
                    ))
                })?;
            bits |= 1 << i;
        }
        Ok(LoraTargets(bits))
    }

    /// Whether the projection at `index` of [`BLOCK_LINEARS`] is in the set.
    pub fn contains(self, index: usize) -> bool {
        index < BLOCK_LINEARS.len() && self.0 & (1 << index) != 0
    }
}

impl Default for LoraTargets {
    fn default() -> Self {
        LoraTargets::ALL
    }
}

impl Default for TrainConfig {
    /// 200 steps of 8 × 128 tokens at a peak rate of 1e-3, 20 warm-up steps, decay to 10%,
    /// weight decay 0, clipping at 1.0, seed 0, no checkpoints.
    fn default() -> Self {
        Self {
            steps: 200,
            batch_size: 8,
            seq_len: 128,
            lr: 1e-3,
            warmup_steps: 20,
            min_lr_ratio: 0.1,
            weight_decay: 0.0,
            grad_clip: Some(1.0),
            seed: 0,
            checkpoint: None,
            lora: None,
            nested_bits: None,
        }
    }
}

impl TrainConfig {
    /// The learning rate of `step` (0-based): linear warm-up, then cosine decay to
    /// `lr · min_lr_ratio` at step `steps − 1`.
    pub fn lr_at(&self, step: usize) -> f64 {
        if step < self.warmup_steps {
            return self.lr * (step + 1) as f64 / self.warmup_steps as f64;
        }
        let span = self.steps.saturating_sub(self.warmup_steps + 1).max(1) as f64;
        let progress = ((step - self.warmup_steps) as f64 / span).min(1.0);
        let floor = self.lr * self.min_lr_ratio;
        floor + 0.5 * (self.lr - floor) * (1.0 + (std::f64::consts::PI * progress).cos())
    }

    /// Checks every setting, naming the bad one.
    pub fn validate(&self) -> Result<(), DistillError> {
        let bad = |m: String| Err(DistillError::Config(m));
        if self.steps == 0 || self.batch_size == 0 {
            return bad(format!(
                "steps = {}, batch_size = {}: both must be positive",
                self.steps, self.batch_size
            ));
        }
        if self.seq_len < 2 {
            return bad(format!("seq_len = {}: at least 2 tokens", self.seq_len));
        }
        if !(self.lr > 0.0 && self.lr.is_finite()) {
            return bad(format!("lr = {}: must be positive", self.lr));
        }
        if !(0.0..=1.0).contains(&self.min_lr_ratio) {
            return bad(format!(
                "min_lr_ratio = {}: must lie in [0, 1]",
                self.min_lr_ratio
            ));
        }
        if self
            .grad_clip
            .is_some_and(|c| c.partial_cmp(&0.0) != Some(std::cmp::Ordering::Greater))
        {
            return bad(format!(
                "grad_clip = {:?}: must be positive",
                self.grad_clip
            ));
        }
        if let Some((0, _)) = self.checkpoint {
            return bad("checkpoint every 0 steps".into());
        }
        if let Some(l) = self.lora {
            if l.rank == 0 || !(l.alpha.is_finite() && l.alpha > 0.0) {
                return bad(format!("lora = {l:?}: rank and alpha must be positive"));
            }
            if self.nested_bits.is_some() {
                return bad(
                    "lora with nested_bits: fake quantization trains the dense projections".into(),
                );
            }
        }
        if let Some(nb) = &self.nested_bits {
            nb.validate()?;
        }
        Ok(())
    }
}

/// Which widths of the student each step trains.
#[derive(Debug, Clone, PartialEq)]
pub enum WidthSchedule {
    /// Only the whole student.
    Full,
    /// MatFormer-style nested training: the whole student plus `per_step` prefix widths drawn
    /// (seeded, without replacement) from `widths`.
    Nested {
        /// Candidate prefix widths (each smaller than the model).
        widths: Vec<PrefixWidth>,
        /// Prefix widths trained per step (at most `widths.len()`).
        per_step: usize,
    },
}

/// Loss values of one step (the values before the step's update).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct StepLoss {
    /// 0-based step.
    pub step: usize,
    /// Learning rate used.
    pub lr: f64,
    /// Sum of every term.
    pub total: f64,
    /// The whole student's loss.
    pub full: f64,
    /// `(ffn, kv_groups, loss)` of each prefix width trained this step.
    pub widths: Vec<(usize, usize, f64)>,
    /// `(bits, loss)` of each nested bit width trained this step ([`TrainConfig::nested_bits`];
    /// the loss before its weight).
    #[serde(default)]
    pub bits: Vec<(u8, f64)>,
    /// Global gradient norm before clipping.
    pub grad_norm: f64,
}

/// What a progress callback sees after each step.
#[derive(Debug, Clone)]
pub struct StepInfo<'a> {
    /// The step's losses.
    pub loss: &'a StepLoss,
    /// Total steps of the run.
    pub steps: usize,
    /// Training tokens per second so far in this process.
    pub tokens_per_s: f64,
}

/// The result of [`distill`].
#[derive(Debug)]
pub struct TrainOutcome {
    /// The trained student (on the device it came from, without autodiff).
    pub student: LlamaModel,
    /// Losses of every step, including steps run before a resume.
    pub history: Vec<StepLoss>,
    /// The step the run resumed from (0 for a fresh run).
    pub resumed_from: usize,
    /// Whether the progress callback stopped the run early.
    pub stopped: bool,
}

struct Ids(Vec<(ParamId, usize)>);

impl ModuleVisitor for Ids {
    fn visit_float<const D: usize>(&mut self, param: &Param<Tensor<D>>) {
        self.0.push((param.id, D));
    }
}

/// Scales every gradient so their global L2 norm is at most `max`; returns the norm before.
fn clip_global_norm(
    grads: &mut GradientsParams,
    ids: &[(ParamId, usize)],
    max: Option<f32>,
) -> f64 {
    let sq = |g: &GradientsParams, id: ParamId, d: usize| -> f64 {
        let s = match d {
            1 => g.get::<1>(id).map(|t| t.square().sum()),
            2 => g.get::<2>(id).map(|t| t.square().sum()),
            _ => None,
        };
        s.map_or(0.0, |t| {
            t.into_data().try_to_vec::<f32>().unwrap_or_default()[0] as f64
        })
    };
    let norm = ids
        .iter()
        .map(|&(id, d)| sq(grads, id, d))
        .sum::<f64>()
        .sqrt();
    if let Some(max) = max {
        if norm > max as f64 {
            let f = max as f64 / (norm + 1e-12);
            for &(id, d) in ids {
                match d {
                    1 => {
                        if let Some(g) = grads.remove::<1>(id) {
                            grads.register(id, g * f);
                        }
                    }
                    2 => {
                        if let Some(g) = grads.remove::<2>(id) {
                            grads.register(id, g * f);
                        }
                    }
                    _ => {}
                }
            }
        }
    }
    norm
}

/// The burn ids of the weights of every block projection in `targets` (the LoRA targets; an
/// expert's gate/up/down count as gate/up/down, routers are never targets), in block order.
fn projection_weight_ids(model: &LlamaModel, targets: LoraTargets) -> Vec<ParamId> {
    let mut ids = Vec::new();
    for (i, b) in model.layers.iter().enumerate() {
        for (id, l) in b.linears(i) {
            let target = BLOCK_LINEARS
                .iter()
                .position(|&k| k == id.kind())
                .is_some_and(|k| targets.contains(k));
            if let (true, CompressedLinear::Dense(d)) = (target, l) {
                ids.push(d.weight.id);
            }
        }
    }
    ids
}

/// Zeroes the pruned weights of every masked dense projection again (after a LoRA merge).
fn reapply_masks(model: &mut LlamaModel) {
    for b in &mut model.layers {
        for l in b.linears_mut() {
            if let CompressedLinear::Dense(d) = l {
                if let Some(mask) = d.mask.clone() {
                    let w = d.weight.val();
                    let (device, dims) = (w.device(), w.dims());
                    let mut v = w.into_data().try_to_vec::<f32>().unwrap_or_default();
                    mask.apply(&mut v);
                    let t = Tensor::<2>::from_data(TensorData::new(v, dims), &device);
                    d.weight = Param::initialized(d.weight.id, t);
                }
            }
        }
    }
}

fn scalar(t: &Tensor<1>) -> f64 {
    t.clone()
        .into_data()
        .convert::<f32>()
        .try_to_vec::<f32>()
        .unwrap_or_default()[0] as f64
}

fn check_dense(model: &LlamaModel) -> Result<(), DistillError> {
    for (i, b) in model.layers.iter().enumerate() {
        for (name, l) in b.linears(i) {
            if !matches!(l, CompressedLinear::Dense(_)) {
                return Err(DistillError::Config(format!(
                    "{name} is {}: full distillation trains dense layers only",
                    l.describe()
                )));
            }
        }
    }
    Ok(())
}

/// Distils `teacher` into `student` on windows of `tokens` (a tokenized training text or teacher
/// samples, [`crate::data::teacher_samples`]).
///
/// `progress` runs after every step; returning `ControlFlow::Break(())` stops the run after
/// that step (and after its checkpoint, if one was due) — what an interrupted run looks like.
pub fn distill(
    student: LlamaModel,
    teacher: &LlamaModel,
    tokens: &[u32],
    cfg: &TrainConfig,
    objective: &DistillLoss,
    widths: &WidthSchedule,
    mut progress: impl FnMut(&StepInfo) -> ControlFlow<()>,
) -> Result<TrainOutcome, DistillError> {
    cfg.validate()?;
    check_dense(&student)?;
    if student.config().vocab_size != teacher.config().vocab_size {
        return Err(DistillError::Config(format!(
            "student vocabulary {} differs from the teacher's {}",
            student.config().vocab_size,
            teacher.config().vocab_size
        )));
    }
    if objective.temperature.is_nan() || objective.temperature <= 0.0 {
        return Err(DistillError::Config(format!(
            "temperature = {}: must be positive",
            objective.temperature
        )));
    }
    if let WidthSchedule::Nested {
        widths: w,
        per_step,
    } = widths
    {
        if *per_step > w.len() {
            return Err(DistillError::Config(format!(
                "per_step = {per_step} with {} candidate widths",
                w.len()
            )));
        }
        for &pw in w {
            student.prefix_gates(pw, &student.device())?;
        }
    }
    let hidden_at: Vec<usize> = objective.hidden.iter().map(|&(b, _)| b).collect();
    let base = student.device();
    let ad = base.clone().autodiff();
    let mut optim: ModuleOptimizer = AdamWConfig::new()
        .with_weight_decay(cfg.weight_decay)
        .with_epsilon(1e-8)
        .init();

    // LoRA adapters are attached before a checkpoint is restored: the checkpoint holds them
    // (after each adapted weight, in visiting order) and gives them back their saved ids.
    let student = match cfg.lora {
        None => student,
        Some(l) => {
            // The adapters' random A factors come from the device's generator: seed it.
            base.seed(cfg.seed);
            let group = ParamGroup::from_ids(projection_weight_ids(&student, l.targets));
            student.apply_lora(Lora::new(l.rank, l.alpha).set_param_group(group))
        }
    };
    let (student, mut history, start) = match &cfg.checkpoint {
        Some((_, dir)) => match checkpoint::latest(dir) {
            Some(path) => {
                let (m, o, state) = checkpoint::load(&path, student, optim, &base)?;
                optim = o;
                (m, state.history, state.next_step)
            }
            None => (student, Vec::new(), 0),
        },
        None => (student, Vec::new(), 0),
    };
    let student = match cfg.lora {
        // Loaded weights do not track gradients; every parameter of the student trains.
        None => student.train().set_require_grad(true),
        // Only the adapter factors train (LoRA froze the base weights).
        Some(_) => student.train(),
    };
    let mut ids = Ids(Vec::new());
    student.visit(&mut ids);
    let ids = ids.0;
    let mut student = student;
    let clock = Instant::now();
    let mut stopped = false;
    for step in start..cfg.steps {
        let windows = sample_windows(
            tokens,
            cfg.batch_size,
            cfg.seq_len,
            cfg.seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) ^ step as u64,
        )
        .map_err(|e| DistillError::Config(format!("training data: {e}")))?;
        let ids_flat: Vec<i64> = windows.iter().flatten().map(|&t| t as i64).collect();
        let shape = [cfg.batch_size, cfg.seq_len];
        let on = |d| Tensor::<2, Int>::from_data(TensorData::new(ids_flat.clone(), shape), d);
        let (t_logits, t_hidden) = teacher.forward_train(on(&base), None, &hidden_at)?;
        let batch = on(&ad);
        let (s_logits, s_hidden) = student.forward_train(batch.clone(), None, &hidden_at)?;
        let term = |logits: Tensor<3>, target: Tensor<3>| {
            let mut l = kl_loss(logits.clone(), target, objective.temperature) * objective.kl;
            if objective.ce > 0.0 {
                l = l + ce_loss(logits, batch.clone()) * objective.ce;
            }
            l
        };
        let mut full = term(s_logits.clone(), t_logits);
        for ((&(_, w), s), t) in objective.hidden.iter().zip(s_hidden).zip(t_hidden) {
            full = full + hidden_mse(s, t) * w;
        }
        let mut total = full.clone();
        let mut width_losses = Vec::new();
        if let WidthSchedule::Nested {
            widths: w,
            per_step,
        } = widths
        {
            let mut pick = w.clone();
            let mut rng = StdRng::seed_from_u64(cfg.seed ^ (step as u64).rotate_left(32));
            pick.shuffle(&mut rng);
            let target = s_logits.clone().detach();
            for pw in pick.into_iter().take(*per_step) {
                let gates = student.prefix_gates(pw, &ad)?;
                let (logits, _) = student.forward_train(batch.clone(), Some(&gates), &[])?;
                let l = term(logits, target.clone());
                width_losses.push((pw.ffn, pw.kv_groups, scalar(&l)));
                total = total + l;
            }
        }
        let mut bit_losses = Vec::new();
        if let Some(nb) = &cfg.nested_bits {
            let target = s_logits.clone().detach();
            for ((b, fake), &(_, weight)) in fake_quantized(&student, nb)?.into_iter().zip(&nb.bits)
            {
                let (logits, _) = fake.forward_train(batch.clone(), None, &[])?;
                let l = term(logits, target.clone());
                bit_losses.push((b, scalar(&l)));
                total = total + l * weight;
            }
        }
        let total_v = scalar(&total);
        if !total_v.is_finite() {
            return Err(DistillError::NonFinite {
                step,
                value: total_v,
            });
        }
        let mut grads = GradientsParams::from_grads(total.backward(), &student);
        let grad_norm = clip_global_norm(&mut grads, &ids, cfg.grad_clip);
        let lr = cfg.lr_at(step);
        student = optim.step(lr, student, grads);
        history.push(StepLoss {
            step,
            lr,
            total: total_v,
            full: scalar(&full),
            widths: width_losses,
            bits: bit_losses,
            grad_norm,
        });
        if let Some((every, dir)) = &cfg.checkpoint {
            if (step + 1) % every == 0 || step + 1 == cfg.steps {
                let state = CheckpointState::new(step + 1, history.clone());
                checkpoint::save(dir, &student.valid(), &optim, &state)?;
            }
        }
        let done = (step + 1 - start) as f64;
        let info = StepInfo {
            loss: history.last().expect("just pushed"),
            steps: cfg.steps,
            tokens_per_s: done * (cfg.batch_size * cfg.seq_len) as f64
                / clock.elapsed().as_secs_f64().max(1e-9),
        };
        if progress(&info).is_break() {
            stopped = step + 1 < cfg.steps;
            break;
        }
    }
    let mut student = student.valid();
    if cfg.lora.is_some() {
        student = student.materialize();
        reapply_masks(&mut student);
    }
    student.retie_head();
    Ok(TrainOutcome {
        student,
        history,
        resumed_from: start,
        stopped,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn schedule_warms_up_then_decays_to_the_floor() {
        let cfg = TrainConfig {
            steps: 110,
            warmup_steps: 10,
            lr: 1.0,
            min_lr_ratio: 0.1,
            ..TrainConfig::default()
        };
        assert!((cfg.lr_at(0) - 0.1).abs() < 1e-12);
        assert!((cfg.lr_at(9) - 1.0).abs() < 1e-12);
        assert!((cfg.lr_at(10) - 1.0).abs() < 1e-12);
        assert!((cfg.lr_at(109) - 0.1).abs() < 1e-12);
        // Half-way through the decay: the mean of peak and floor.
        let mid = cfg.lr_at(10 + 99 / 2);
        assert!((mid - 0.55).abs() < 0.02, "{mid}");
        assert!((1..110).all(|s| s < 10 || cfg.lr_at(s) <= cfg.lr_at(s - 1) + 1e-12));
    }

    #[test]
    fn bad_settings_are_rejected_naming_the_field() {
        let bad = |c: TrainConfig| c.validate().unwrap_err().to_string();
        assert!(bad(TrainConfig {
            steps: 0,
            ..Default::default()
        })
        .contains("steps"));
        assert!(bad(TrainConfig {
            seq_len: 1,
            ..Default::default()
        })
        .contains("seq_len"));
        assert!(bad(TrainConfig {
            lr: -1.0,
            ..Default::default()
        })
        .contains("lr"));
        assert!(bad(TrainConfig {
            grad_clip: Some(0.0),
            ..Default::default()
        })
        .contains("grad_clip"));
    }
}
