//! Matryoshka sorting, slicing and distillation on the real stories260K model (`../shared`).
//!
//! Calibration and training use the first half of the TinyStories validation text, perplexity
//! the second.

#[path = "../../compress-model/tests/common/mod.rs"]
mod common;

use std::ops::ControlFlow;

use burn::tensor::{Int, Tensor, TensorData};
use compress_core::calibration::sample_windows;
use compress_distill::loss::{kl_loss, DistillLoss};
use compress_distill::matryoshka::{
    quantize_nested, slice, sort_by_activation, sort_by_importance, SliceSpec, Width,
};
use compress_distill::train::{distill, TrainConfig, WidthSchedule};
use compress_eval::perplexity::{perplexity, PerplexityConfig, Scoring};
use compress_model::LlamaModel;
use compress_prune::structured::Importance;

use common::{logits, max_abs_diff, stories_split};

fn ppl(model: &LlamaModel, eval: &[u32], bytes: usize) -> f64 {
    let cfg = PerplexityConfig {
        context: 128,
        scoring: Scoring::AllTokens,
        max_windows: Some(16),
        bos: None,
    };
    perplexity(model, eval, bytes, &cfg, |_, _| {}).unwrap().ppl
}

/// Reordering by importance leaves the 100% model's logits unchanged, and every prefix of the
/// sorted model beats the same prefix of the unsorted one (the naive slice).
#[test]
fn sorting_keeps_the_full_model_and_improves_every_prefix() {
    let Some(s) = stories_split() else { return };
    let calib = sample_windows(&s.calib, 16, 128, 0).unwrap();
    let ids = &s.eval[..64];
    let mut sorted = s.m.model.clone();
    let order = sort_by_importance(
        &mut sorted,
        &calib,
        Importance::Activation,
        Importance::Activation,
        |_, _| {},
    )
    .unwrap();
    // f32 sums in a different order: a few ulps of logits of magnitude ~10.
    let d = max_abs_diff(&logits(&s.m.model, ids), &logits(&sorted, ids));
    assert!(d < 1e-4, "reordered model differs by {d}");
    assert!(
        order.ffn.iter().any(|o| o.windows(2).any(|w| w[0] > w[1])),
        "nothing moved"
    );
    for f in [0.25, 0.5, 0.75] {
        let spec = SliceSpec {
            width: Width::uniform(f),
            bits: None,
        };
        let (naive, _) = slice(&s.m.model, &spec).unwrap();
        let (nested, report) = slice(&sorted, &spec).unwrap();
        let (p_naive, p_nested) = (
            ppl(&naive, &s.eval, s.eval_bytes),
            ppl(&nested, &s.eval, s.eval_bytes),
        );
        assert!(
            p_nested < p_naive,
            "{f}: sorted {p_nested:.2} vs naive {p_naive:.2}"
        );
        assert_eq!(report.parameters.1, nested.num_parameters());
    }
}

/// A slice is a real smaller model: its parameter count is what the shapes say, and it
/// computes exactly what the gated prefix forward of the big model computes.
#[test]
fn slices_have_the_stated_size_and_equal_the_gated_prefix() {
    let Some(s) = stories_split() else { return };
    let model = &s.m.model;
    let cfg = model.config().clone();
    let (d, hd) = (cfg.hidden_size, cfg.hidden_size / cfg.num_heads);
    let group = cfg.num_heads / cfg.num_kv_heads;
    let ids: Vec<i64> = s.eval[..48].iter().map(|&t| t as i64).collect();
    let device = model.device();
    let tokens = Tensor::<2, Int>::from_data(TensorData::new(ids.clone(), [1, 48]), &device);
    // The training forward without gates is the ordinary forward (tied head from the embedding).
    let (full, _) = model.forward_train(tokens.clone(), None, &[]).unwrap();
    let plain = model.forward(tokens.clone(), None).unwrap();
    let v = |t: Tensor<3>| t.into_data().try_to_vec::<f32>().unwrap();
    assert!(max_abs_diff(&v(full), &v(plain)) < 1e-4);
    for f in [0.25, 0.5, 0.75, 1.0] {
        let spec = SliceSpec {
            width: Width::uniform(f),
            bits: None,
        };
        let (small, report) = slice(model, &spec).unwrap();
        let p = report.prefix;
        assert_eq!(p.ffn, ((f * cfg.intermediate_size as f64).round() as usize));
        assert_eq!(
            p.kv_groups,
            ((f * cfg.num_kv_heads as f64).round() as usize)
        );
        // Per block: q, o (heads·hd·d each), k, v (groups·hd·d each), three FFN matrices, 2 norms.
        let heads = p.kv_groups * group;
        let block = 2 * heads * hd * d + 2 * p.kv_groups * hd * d + 3 * p.ffn * d + 2 * d;
        let head = if cfg.tie_word_embeddings {
            0
        } else {
            cfg.vocab_size * d
        };
        let expected = cfg.vocab_size * d + cfg.num_layers * block + d + head;
        assert_eq!(small.num_parameters(), expected, "width {f}");
        assert_eq!(report.parameters, (model.num_parameters(), expected));
        let gates = model.prefix_gates(p, &device).unwrap();
        let (gated, _) = model
            .forward_train(tokens.clone(), Some(&gates), &[])
            .unwrap();
        let cut = small.forward(tokens.clone(), None).unwrap();
        let diff = max_abs_diff(&v(gated), &v(cut));
        assert!(
            diff < 1e-4,
            "width {f}: slice and gated prefix differ by {diff}"
        );
    }
    let bad = SliceSpec {
        width: Width::uniform(0.0),
        bits: None,
    };
    assert!(slice(model, &bad)
        .unwrap_err()
        .to_string()
        .contains("width.ffn"));
}

/// Nested bits: the 8-bit store is close to f32, its top 4 bits are a valid 4-bit model that
/// is worse than 8 bits, and 2 bits worse again; a bits slice of a dense model is refused.
#[test]
fn nested_bits_slice_to_smaller_models() {
    let Some(s) = stories_split() else { return };
    let base = ppl(&s.m.model, &s.eval, s.eval_bytes);
    let mut q = s.m.model.clone();
    quantize_nested(&mut q, 32).unwrap();
    let mut last = base;
    let mut last_bits = u64::MAX;
    for bits in [8u8, 4, 2] {
        let spec = SliceSpec {
            width: Width::uniform(1.0),
            bits: Some(bits),
        };
        let (m, report) = slice(&q, &spec).unwrap();
        let p = ppl(&m, &s.eval, s.eval_bytes);
        assert!(
            p.is_finite() && p >= last * 0.99,
            "{bits} bits: {p:.3} after {last:.3}"
        );
        assert!(report.projection_bits < last_bits);
        if bits == 8 {
            // RTN 8-bit g32 on a 260K model: within 1% of f32 perplexity.
            assert!(p < base * 1.01, "8-bit {p:.3} vs f32 {base:.3}");
        }
        last = p;
        last_bits = report.projection_bits;
    }
    let dense_bits = SliceSpec {
        width: Width::uniform(1.0),
        bits: Some(4),
    };
    let err = slice(&s.m.model, &dense_bits).unwrap_err().to_string();
    assert!(err.contains("8-bit nested codes"), "{err}");
}

fn kl_on(student: &LlamaModel, teacher: &LlamaModel, window: &[u32]) -> f64 {
    let ids: Vec<i64> = window.iter().map(|&t| t as i64).collect();
    let tokens =
        Tensor::<2, Int>::from_data(TensorData::new(ids, [1, window.len()]), &student.device());
    let s = student.forward(tokens.clone(), None).unwrap();
    let t = teacher.forward(tokens, None).unwrap();
    kl_loss(s, t, 1.0).into_data().try_to_vec::<f32>().unwrap()[0] as f64
}

/// Distilling the full model into its sorted 50% slice lowers the KL on the training batch,
/// and a nested-width step reports a loss for each sub-width it trained.
#[test]
fn training_steps_lower_the_loss_on_a_fixed_batch() {
    let Some(s) = stories_split() else { return };
    let teacher = &s.m.model;
    let calib = sample_windows(&s.calib, 8, 64, 0).unwrap();
    let mut sorted = teacher.clone();
    sort_by_activation(&mut sorted, &calib).unwrap();
    let spec = SliceSpec {
        width: Width::ffn_only(0.5),
        bits: None,
    };
    let (student, _) = slice(&sorted, &spec).unwrap();
    // One window as the whole training stream: every step sees the same batch.
    let window = &s.calib[..64];
    let before = kl_on(&student, teacher, window);
    let cfg = TrainConfig {
        steps: 3,
        batch_size: 1,
        seq_len: 64,
        lr: 2e-3,
        warmup_steps: 0,
        ..TrainConfig::default()
    };
    let out = distill(
        student,
        teacher,
        window,
        &cfg,
        &DistillLoss::default(),
        &WidthSchedule::Full,
        |_| ControlFlow::Continue(()),
    )
    .unwrap();
    let after = kl_on(&out.student, teacher, window);
    assert!(after < before, "KL {before:.4} → {after:.4}");
    // The recorded first loss is the loss before any update.
    assert!((out.history[0].full - before).abs() < 1e-3 * before.max(1e-3));
    assert!(
        out.history.windows(2).all(|w| w[1].full < w[0].full),
        "{:?}",
        out.history
    );

    // Nested: the full student plus one of two prefix widths per step.
    let nested = WidthSchedule::Nested {
        widths: vec![
            Width::ffn_only(0.25).prefix(&sorted).unwrap(),
            Width::ffn_only(0.5).prefix(&sorted).unwrap(),
        ],
        per_step: 1,
    };
    let out = distill(
        sorted.clone(),
        teacher,
        window,
        &TrainConfig { steps: 2, ..cfg },
        &DistillLoss::default(),
        &nested,
        |_| ControlFlow::Continue(()),
    )
    .unwrap();
    for h in &out.history {
        assert_eq!(h.widths.len(), 1);
        assert!((h.total - h.full - h.widths[0].2).abs() < 1e-4 * h.total.max(1.0));
        // The sub-width is distilled from the full student; it is not yet equal to it.
        assert!(h.widths[0].2 > 0.0);
    }
}

/// Stopping after a checkpoint and resuming gives the same loss trajectory as an uninterrupted
/// run (the data order, learning rate and optimizer moments are all restored) — full training,
/// and LoRA training (adapters and their optimizer state in the checkpoint).
#[test]
fn resume_after_a_checkpoint_repeats_the_uninterrupted_run() {
    resume_case(None);
    resume_case(Some(compress_distill::train::LoraConfig {
        rank: 4,
        alpha: 8.0,
        // Attention projections only: a frozen MLP is checked below.
        targets: compress_distill::train::LoraTargets::from_names(&[
            "q_proj", "k_proj", "v_proj", "o_proj",
        ])
        .unwrap(),
    }));
}

fn resume_case(lora: Option<compress_distill::train::LoraConfig>) {
    let Some(s) = stories_split() else { return };
    let teacher = &s.m.model;
    let (student, _) = slice(
        teacher,
        &SliceSpec {
            width: Width::uniform(0.5),
            bits: None,
        },
    )
    .unwrap();
    let base = TrainConfig {
        steps: 4,
        batch_size: 2,
        seq_len: 32,
        lr: 1e-3,
        warmup_steps: 1,
        seed: 5,
        lora,
        ..TrainConfig::default()
    };
    let run = |cfg: &TrainConfig, stop_at: Option<usize>| {
        distill(
            student.clone(),
            teacher,
            &s.calib,
            cfg,
            &DistillLoss::default(),
            &WidthSchedule::Full,
            |i| match stop_at {
                Some(k) if i.loss.step + 1 == k => ControlFlow::Break(()),
                _ => ControlFlow::Continue(()),
            },
        )
        .unwrap()
    };
    let straight = run(&base, None);
    // A LoRA run resumed on a fresh apply_lora must still train the adapters: losses move.
    assert_ne!(straight.history[0].total, straight.history[3].total);
    let dir = tempfile::tempdir().unwrap();
    let ck = TrainConfig {
        checkpoint: Some((2, dir.path().to_path_buf())),
        ..base.clone()
    };
    let first = run(&ck, Some(2));
    assert!(first.stopped);
    assert_eq!(first.history.len(), 2);
    let resumed = run(&ck, None);
    assert_eq!(resumed.resumed_from, 2);
    assert_eq!(resumed.history.len(), 4);
    for (a, b) in straight.history.iter().zip(&resumed.history) {
        assert_eq!(a.step, b.step);
        assert!(
            (a.total - b.total).abs() <= 1e-6 * a.total.abs().max(1.0),
            "{lora:?} step {}: {} vs {}",
            a.step,
            a.total,
            b.total
        );
    }
    if lora.is_some() {
        // Only the targeted (attention) projections moved; the MLP is the student's, bit for bit.
        use compress_core::layer_id::{LinearId, LinearKind};
        use compress_core::pipeline::BlockwiseModel;
        let dense = |m: &LlamaModel, b: usize, kind: LinearKind| {
            m.expect_linear(LinearId::block(b, kind))
                .dense_weight()
                .into_data()
                .try_to_vec::<f32>()
                .unwrap()
        };
        for b in 0..student.layers.len() {
            assert_ne!(
                dense(&student, b, LinearKind::Q),
                dense(&straight.student, b, LinearKind::Q)
            );
            for kind in [LinearKind::Gate, LinearKind::Up, LinearKind::Down] {
                assert_eq!(
                    dense(&student, b, kind),
                    dense(&straight.student, b, kind),
                    "block {b} {kind:?}"
                );
            }
        }
    }
    // The trained models agree too (for LoRA: after merging the adapters); 1e-4 of the logits'
    // scale allows the f32 rounding of a different but equivalent operation order on resume.
    let ids = &s.eval[..32];
    let (a, b) = (
        logits(&straight.student, ids),
        logits(&resumed.student, ids),
    );
    let scale = a.iter().fold(0f32, |m, v| m.max(v.abs()));
    assert!(
        max_abs_diff(&a, &b) <= 1e-4 * scale,
        "{lora:?}: {} of {scale}",
        max_abs_diff(&a, &b)
    );
    // Different seeds draw different data.
    let other = run(&TrainConfig { seed: 6, ..base }, None);
    assert_ne!(other.history[0].total, straight.history[0].total);
}

/// Healing: LoRA adapters distilled from the dense model lower the perplexity of a Wanda-50%
/// stories260K, and after the merge every pruned weight is still exactly 0.
#[test]
fn lora_healing_after_wanda_keeps_the_mask_and_lowers_perplexity() {
    use compress_core::pipeline::{LayerFilter, Pipeline};
    use compress_core::sparsity::SparsityPattern;
    use compress_distill::train::LoraConfig;
    use compress_prune::wanda::Wanda;
    let Some(s) = stories_split() else { return };
    let teacher = &s.m.model;
    let mut pruned = teacher.clone();
    let calib = sample_windows(&s.calib, 16, 128, 0).unwrap();
    Pipeline::new()
        .step(
            LayerFilter::All,
            Wanda::new(SparsityPattern::Unstructured(0.5)),
        )
        .run(&mut pruned, &calib, |_, _, _| {})
        .unwrap();
    let before = ppl(&pruned, &s.eval, s.eval_bytes);
    let cfg = TrainConfig {
        steps: 40,
        batch_size: 8,
        seq_len: 128,
        lr: 5e-3,
        warmup_steps: 4,
        lora: Some(LoraConfig {
            rank: 8,
            alpha: 16.0,
            targets: Default::default(),
        }),
        ..TrainConfig::default()
    };
    let out = distill(
        pruned,
        teacher,
        &s.calib,
        &cfg,
        &DistillLoss::default(),
        &WidthSchedule::Full,
        |_| ControlFlow::Continue(()),
    )
    .unwrap();
    // Clipping sees the adapters' gradients (the frozen weights have none).
    assert!(
        out.history.iter().all(|h| h.grad_norm > 0.0),
        "{:?}",
        out.history
    );
    let healed = out.student;
    let after = ppl(&healed, &s.eval, s.eval_bytes);
    let dense = ppl(teacher, &s.eval, s.eval_bytes);
    eprintln!(
        "Wanda 50%: PPL {before:.3} → {after:.3} after a rank-8 LoRA heal (dense {dense:.3})"
    );
    assert!(after < before, "PPL {before:.3} → {after:.3}");
    for b in &healed.layers {
        let lin = &b.mlp.dense().unwrap().down_proj;
        let mask = lin.mask().expect("the mask survives healing");
        let w = lin.dense_weight().into_data().try_to_vec::<f32>().unwrap();
        let [_, inp] = mask.shape();
        for (i, &v) in w.iter().enumerate() {
            if !mask.is_kept(i / inp, i % inp) {
                assert_eq!(v, 0.0);
            }
        }
        assert!((mask.sparsity() - 0.5).abs() < 0.01);
    }
}
