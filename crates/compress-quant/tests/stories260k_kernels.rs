//! The fused CPU kernels (compress-kernels) inside a real quantized model: stories260K quantized
//! with RTN in several formats gives the same logits through the kernels (GEMM path for a
//! 96-token sequence, GEMV for one token) as through the dequantized weight, and the
//! int8-activation (VNNI) path costs < 1% perplexity, token by token (GEMV) and over a whole
//! window (the int8 GEMM).
//!
//! Tolerance: the two paths compute the same product in a different f32 summation order, so
//! they differ by rounding only — about 1e-6 relative per layer. After five blocks, the norm and
//! the head, 1e-3 of the largest logit is a wide margin for that and far below any real bug
//! (a wrong code or scale moves logits by more than 1e-1 here).

#[path = "../../compress-model/tests/common/mod.rs"]
mod common;

use compress_core::packed::{QuantScheme, Symmetry};
use compress_core::pipeline::{LayerFilter, Pipeline};
use compress_kernels::{Activations, Tier};
use compress_model::LlamaModel;
use compress_quant::rtn::Rtn;

/// Every block linear of `model` quantized with RTN at `scheme` (no calibration needed).
fn rtn_model(model: &LlamaModel, scheme: QuantScheme) -> LlamaModel {
    let mut q = model.clone();
    // RTN needs no statistics: the pipeline runs no calibration forward for it.
    Pipeline::new()
        .step(LayerFilter::All, Rtn::new(scheme))
        .run(&mut q, &[], |_, _, _| {})
        .unwrap();
    q
}

#[test]
fn kernels_give_the_dequantized_models_logits() {
    let Some(s) = common::stories_split() else {
        return;
    };
    let ids = &s.eval[..96];
    // stories260K rows are 64 and 172 wide: groups of 32 leave a short last group of 12 on the
    // down projection, per-channel and 3-bit exercise the other paths.
    let schemes = [
        QuantScheme::new(4, Some(32), Symmetry::Symmetric).unwrap(),
        QuantScheme::new(4, Some(32), Symmetry::Asymmetric).unwrap(),
        QuantScheme::new(8, None, Symmetry::Symmetric).unwrap(),
        QuantScheme::new(3, Some(64), Symmetry::Asymmetric).unwrap(),
    ];
    for scheme in schemes {
        let mut q = rtn_model(&s.m.model, scheme);
        let tiers = q.set_kernels(Some(Activations::F32));
        assert_eq!(tiers.len(), 7 * q.layers.len());
        assert!(tiers.iter().all(|t| *t == tiers[0]), "{tiers:?}");
        let simd = Tier::Avx512.is_available() || Tier::Avx2.is_available();
        if scheme.bits.get() == 3 || !simd {
            // No SIMD tier for the format: the dequantized product is faster than the portable
            // kernel, so the layer keeps it.
            assert_eq!(tiers[0], None, "{scheme:?}");
        } else if Tier::Avx512.is_available() {
            assert_eq!(
                tiers[0],
                Some(Tier::Avx512),
                "the SIMD tier runs the model's layers"
            );
        }
        let tier = tiers[0];
        // 96 tokens at once (the GEMM path) and the last one alone through the cache (GEMV).
        let fused = common::logits(&q, ids);
        let fused_one = common::logits(&q, &ids[..1]);
        assert!(q.set_kernels(None).iter().all(Option::is_none));
        let dequantized = common::logits(&q, ids);
        let dequantized_one = common::logits(&q, &ids[..1]);
        let scale = dequantized.iter().fold(0f32, |m, v| m.max(v.abs()));
        let diff = common::max_abs_diff(&fused, &dequantized);
        let diff_one = common::max_abs_diff(&fused_one, &dequantized_one);
        eprintln!("{scheme:?}: tier {tier:?}, max |Δlogit| {diff:.2e} (96 tokens), {diff_one:.2e} (1 token) of {scale:.1}");
        assert!(diff <= 1e-3 * scale, "{scheme:?}: {diff} vs {scale}");
        assert!(
            diff_one <= 1e-3 * scale,
            "{scheme:?}: {diff_one} vs {scale}"
        );
    }
}

/// Mean next-token NLL of `ids`, fed one token at a time through the KV cache (decode-sized
/// products: the GEMV path).
fn decode_nll(model: &LlamaModel, ids: &[u32]) -> f64 {
    use burn::tensor::{Int, Tensor, TensorData};
    let device = model.device();
    let mut cache = model.new_cache();
    let mut nll = 0f64;
    for (i, &t) in ids[..ids.len() - 1].iter().enumerate() {
        let x = Tensor::<2, Int>::from_data(TensorData::new(vec![t as i64], [1, 1]), &device);
        let logits = model.forward_cached(x, &mut cache).unwrap();
        let row = logits.into_data().try_to_vec::<f32>().unwrap();
        nll -= common::log_prob(&row, ids[i + 1]);
    }
    nll / (ids.len() - 1) as f64
}

/// Decode and whole-window perplexity with int8 activations (one scale per block of 32) within
/// 1% of f32 activations, for weight groups of 32 and of 128 (the 64-wide rows hold a single group).
#[test]
fn int8_activations_cost_under_one_percent_perplexity() {
    let Some(s) = common::stories_split() else {
        return;
    };
    let ids = &s.eval[..200];
    for group in [32, 128] {
        let mut q = rtn_model(
            &s.m.model,
            QuantScheme::new(4, Some(group), Symmetry::Symmetric).unwrap(),
        );
        q.set_kernels(Some(Activations::F32));
        let exact = decode_nll(&q, ids).exp();
        let vocab = q.config().vocab_size;
        let exact_window = common::mean_nll(&common::logits(&q, ids), ids, vocab).exp();
        let tiers = q.set_kernels(Some(Activations::Int8));
        let int8 = decode_nll(&q, ids).exp();
        // The whole window in one forward: 200-row products, the int8 GEMM on the 64-wide
        // projections (whole blocks of 32); the 172-wide down projection keeps the f32 GEMM.
        let int8_window = common::mean_nll(&common::logits(&q, ids), ids, vocab).exp();
        let window_change = int8_window / exact_window - 1.0;
        eprintln!(
            "g{group}: window perplexity over 199 tokens, f32 activations {exact_window:.4}, int8 {int8_window:.4} ({:+.3}%)",
            100.0 * window_change
        );
        assert!(
            window_change.abs() < 0.01,
            "g{group}: {exact_window} vs {int8_window}"
        );
        let change = int8 / exact - 1.0;
        eprintln!(
            "g{group}: decode perplexity over 199 tokens, f32 activations {exact:.4}, int8 {int8:.4} ({:+.3}%), tier {:?}",
            100.0 * change,
            tiers[0]
        );
        // llama.cpp runs its CPU matmuls with int8 (Q8) activations at a perplexity cost usually
        // quoted well under 1%; the same holds here or the int8 path is wrong.
        assert!(change.abs() < 0.01, "g{group}: {exact} vs {int8}");
        if Tier::Avx512Vnni.is_available() {
            assert_eq!(tiers[0], Some(Tier::Avx512Vnni));
            assert_ne!(exact, int8, "the VNNI path ran and rounded the activations");
            assert_ne!(
                exact_window, int8_window,
                "the int8 GEMM ran and rounded the activations"
            );
        }
    }
}

/// On the wgpu backend (Mesa's lavapipe in CI) every quantized layer of stories260K runs
/// compress-kernels' CubeCL kernels through the `packed_matmul` backend extension, and the model
/// gives the logits of the same model through its dequantized weights, and of the flex model
/// through the SIMD kernels. Same summation-order tolerance as above (1e-3 of the largest logit).
#[test]
fn device_kernels_give_the_dequantized_models_logits() {
    use compress_core::backend::BackendKind;
    if !BackendKind::Wgpu.is_compiled() {
        eprintln!("SKIPPED: built without the wgpu feature");
        return;
    }
    let device = match BackendKind::Wgpu.device() {
        Ok(d) => d,
        Err(e) => {
            assert!(!common::under_ci(), "CI must run the wgpu backend: {e}");
            eprintln!("SKIPPED: {e}");
            return;
        }
    };
    let Some(s) = common::stories_split() else {
        return;
    };
    let path = common::shared("models/stories260K.gguf").unwrap();
    let gpu = compress_model::load(path, &device).unwrap();
    // Short sequences keep lavapipe (a software rasterizer) quick: 24 tokens run the GEMM
    // kernel, 1 token the GEMV kernel.
    let ids = &s.eval[..24];
    let schemes = [
        QuantScheme::new(4, Some(32), Symmetry::Symmetric).unwrap(),
        QuantScheme::new(8, None, Symmetry::Symmetric).unwrap(),
        QuantScheme::new(3, Some(64), Symmetry::Asymmetric).unwrap(),
    ];
    for scheme in schemes {
        let mut q = rtn_model(&gpu.model, scheme);
        let on_device = q
            .layers
            .iter()
            .flat_map(|l| {
                [
                    &l.attn.q_proj, &l.attn.k_proj, &l.attn.v_proj, &l.attn.o_proj,
                    &l.mlp.dense().unwrap().gate_proj, &l.mlp.dense().unwrap().up_proj, &l.mlp.dense().unwrap().down_proj,
                ]
            })
            .filter(|l| matches!(l, compress_core::linear::CompressedLinear::Quantized(q) if q.runs_device_kernel()))
            .count();
        assert_eq!(
            on_device,
            7 * q.layers.len(),
            "{scheme:?}: every layer on the CubeCL kernels"
        );
        let fused = common::logits(&q, ids);
        let fused_one = common::logits(&q, &ids[..1]);
        let mut cpu = rtn_model(&s.m.model, scheme);
        cpu.set_kernels(Some(Activations::F32));
        let simd = common::logits(&cpu, ids);
        q.set_kernels(None);
        let dequantized = common::logits(&q, ids);
        let dequantized_one = common::logits(&q, &ids[..1]);
        let scale = dequantized.iter().fold(0f32, |m, v| m.max(v.abs()));
        let diff = common::max_abs_diff(&fused, &dequantized);
        let diff_one = common::max_abs_diff(&fused_one, &dequantized_one);
        let diff_cpu = common::max_abs_diff(&fused, &simd);
        eprintln!("{scheme:?} on wgpu: max |Δlogit| {diff:.2e} (24 tokens), {diff_one:.2e} (1 token), {diff_cpu:.2e} vs flex, of {scale:.1}");
        assert!(diff <= 1e-3 * scale, "{scheme:?}: {diff} vs {scale}");
        assert!(
            diff_one <= 1e-3 * scale,
            "{scheme:?}: {diff_one} vs {scale}"
        );
        assert!(
            diff_cpu <= 1e-3 * scale,
            "{scheme:?}: {diff_cpu} vs {scale}"
        );
    }
}
