//! Low-rank factorization of the real stories260K model (`../shared`): the three methods on
//! captured activations of real layers, Eckart–Young on real weights, and the pipeline end to
//! end (every linear factorized at the rank the budget allows, the model still runs).
//!
//! Calibration uses the first half of the TinyStories validation text, perplexity the second.

#[path = "../../compress-model/tests/common/mod.rs"]
mod common;

use burn::tensor::{Tensor, TensorData};
use compress_core::calibration::sample_windows;
use compress_core::compressor::{output_rel_error, Compressor, LayerView, StatsRequest};
use compress_core::layer_id::{LinearId, LinearKind};
use compress_core::linear::CompressedLinear;
use compress_core::pipeline::{BlockWalk, BlockwiseModel, LayerFilter, Pipeline};
use compress_eval::perplexity::{perplexity, PerplexityConfig, Scoring};
use compress_lowrank::factor::{factorize, InputTransform};
use compress_lowrank::rank::RankRule;
use compress_lowrank::spectrum::spectrum;
use compress_lowrank::svd::LowRank;
use compress_model::llama::BLOCK_LINEARS;

use common::stories_split;

/// At the same rank, on captured inputs of real layers: SVD-LLM's output error is below plain
/// SVD's and ASVD's (it minimises exactly that error, up to damping); plain SVD has the lowest
/// weight error (it minimises that one). Eckart–Young holds on the real weights.
#[test]
fn svd_llm_has_the_lowest_output_error_on_real_layers() {
    let Some(s) = stories_split() else { return };
    let model = &s.m.model;
    let device = BlockWalk::device(model);
    let request = StatsRequest {
        gram: true,
        col_sq_norms: true,
        ..StatsRequest::NONE
    };
    for (stage, kind) in [
        (0, LinearKind::Q),
        (2, LinearKind::Up),
        (3, LinearKind::Down),
    ] {
        let stats = common::block1_stats(&s, stage, request);
        let id = LinearId::block(1, kind);
        let name = id.name_in_block();
        let lin = model.expect_linear(id);
        let (out, inp) = (lin.out_features(), lin.in_features());
        let w: Vec<f32> = lin.dense_weight().into_data().try_to_vec::<f32>().unwrap();

        // Eckart–Young on the real weight.
        let total: f64 = w.iter().map(|&v| (v as f64).powi(2)).sum();
        let f = factorize(&w, out, inp, &InputTransform::Identity, RankRule::Fixed(16)).unwrap();
        let mut err = 0f64;
        for i in 0..out {
            for j in 0..inp {
                let wh: f64 = (0..16)
                    .map(|k| f.up[i * 16 + k] as f64 * f.down[k * inp + j] as f64)
                    .sum();
                err += (w[i * inp + j] as f64 - wh).powi(2);
            }
        }
        assert!(
            (err - f.tail_energy()).abs() < 1e-5 * total,
            "{name}: {err} vs {}",
            f.tail_energy()
        );

        let view = LayerView::new(&name, &w, out, inp);
        let t =
            |v: Vec<f32>, sh: [usize; 2]| Tensor::<2>::from_data(TensorData::new(v, sh), &device);
        let gram = stats.gram.clone().unwrap();
        let errors = |c: &dyn Compressor| {
            let wh = c.compress(view, &stats).unwrap().to_dense();
            let we = compress_core::compressor::weight_rel_error(&w, &wh);
            let oe = output_rel_error(
                t(w.clone(), [out, inp]),
                t(wh, [out, inp]),
                t(gram.clone(), [inp, inp]),
            );
            (we, oe)
        };
        let rule = RankRule::ParamRatio(0.5);
        let (svd_w, svd_o) = errors(&LowRank::svd(rule));
        let (asvd_w, asvd_o) = errors(&LowRank::asvd(rule));
        let (llm_w, llm_o) = errors(&LowRank::svd_llm(rule));
        eprintln!(
            "{name} [{out}×{inp}] at half the parameters: output error svd {svd_o:.4}, asvd {asvd_o:.4}, svd-llm {llm_o:.4}; weight error {svd_w:.4} / {asvd_w:.4} / {llm_w:.4}"
        );
        assert!(
            llm_o < svd_o && llm_o < asvd_o,
            "{name}: svd-llm {llm_o} vs svd {svd_o}, asvd {asvd_o}"
        );
        assert!(
            svd_w <= asvd_w && svd_w <= llm_w,
            "{name}: plain SVD minimises the weight error"
        );

        let sp = spectrum(&w, out, inp).unwrap();
        assert!(sp.effective_rank > 1.0 && sp.effective_rank <= out.min(inp) as f64);
        assert!(sp.energy_at[0].1 < sp.energy_at[1].1 && sp.energy_at[1].1 < sp.energy_at[2].1);
    }
}

/// SVD-LLM keeping 80% of every linear's parameters through the block-by-block pipeline: each
/// layer becomes a real `U·V` layer with the largest rank the budget allows, the stored
/// parameters are at most 80% of the dense ones, and the model still predicts the text.
#[test]
fn pipeline_factorizes_every_layer_within_the_budget() {
    let Some(s) = stories_split() else { return };
    let mut model = s.m.model.clone();
    let windows = sample_windows(&s.calib, 16, 128, 0).unwrap();
    let ratio = 0.8;
    let report = Pipeline::new()
        .step(
            LayerFilter::All,
            LowRank::svd_llm(RankRule::ParamRatio(ratio)),
        )
        .run(&mut model, &windows, |_, _, _| {})
        .unwrap();
    assert_eq!(report.layers.len(), 35);
    let (mut stored, mut dense) = (0usize, 0usize);
    for l in 0..model.num_blocks() {
        for name in BLOCK_LINEARS.map(|k| LinearId::block(l, k)) {
            let lin = model.expect_linear(name);
            let (out, inp) = (lin.out_features(), lin.in_features());
            let CompressedLinear::LowRank(lr) = lin else {
                panic!("layers.{l}.{name} is not low-rank")
            };
            let r = lr.rank();
            assert_eq!(
                r,
                RankRule::ParamRatio(ratio).rank(&[], out, inp),
                "layers.{l}.{name}"
            );
            assert!(r * (out + inp) <= (ratio * (out * inp) as f64) as usize);
            stored += r * (out + inp);
            dense += out * inp;
        }
    }
    assert!(stored as f64 <= ratio * dense as f64, "{stored} of {dense}");
    let config = PerplexityConfig {
        context: 128,
        scoring: Scoring::AllTokens,
        max_windows: Some(16),
        bos: s.m.tokenizer.bos_id(),
    };
    let base = perplexity(&s.m.model, &s.eval, s.eval_bytes, &config, |_, _| {})
        .unwrap()
        .ppl;
    let ppl = perplexity(&model, &s.eval, s.eval_bytes, &config, |_, _| {})
        .unwrap()
        .ppl;
    eprintln!("stories260K perplexity {base:.3} → {ppl:.3} with SVD-LLM at {ratio} of the parameters ({stored} of {dense})");
    // A 20% parameter cut costs quality but leaves a working model: the uniform-guess
    // perplexity over 512 tokens is 512.
    assert!(
        ppl.is_finite() && ppl > base && ppl < 100.0,
        "{base} → {ppl}"
    );
}

/// GPTQ 3-bit, then a rank-8 whitened correction of each layer's quantization residual: every
/// layer keeps its codes and gains the `U V` term, the corrected model is closer to the base
/// model than the plain 3-bit one, the container keeps the correction bit for bit, and GGUF
/// export refuses a layer it cannot express.
#[test]
fn correction_after_gptq_recovers_quality_and_round_trips() {
    use compress_core::packed::{QuantScheme, Symmetry};
    use compress_eval::kld::kl_divergence;
    use compress_lowrank::correction::LowRankCorrection;
    use compress_quant::gptq::Gptq;

    let Some(s) = stories_split() else { return };
    let windows = sample_windows(&s.calib, 16, 128, 0).unwrap();
    let scheme = QuantScheme::new(3, Some(32), Symmetry::Symmetric).unwrap();
    let mut plain = s.m.model.clone();
    Pipeline::new()
        .step(LayerFilter::All, Gptq::new(scheme))
        .run(&mut plain, &windows, |_, _, _| {})
        .unwrap();
    let mut corrected = s.m.model.clone();
    let report = Pipeline::new()
        .step(LayerFilter::All, Gptq::new(scheme))
        .step(LayerFilter::All, LowRankCorrection::new(8))
        .run(&mut corrected, &windows, |_, _, _| {})
        .unwrap();
    assert_eq!(report.layers.len(), 70);
    for l in 0..corrected.num_blocks() {
        for name in BLOCK_LINEARS.map(|k| LinearId::block(l, k)) {
            let (a, b) = (plain.expect_linear(name), corrected.expect_linear(name));
            let (CompressedLinear::Quantized(a), CompressedLinear::Quantized(b)) = (a, b) else {
                panic!("{name} is not quantized");
            };
            // Same calibration inputs (block 0's first stage, before any correction changed
            // downstream activations): the correction keeps GPTQ's codes exactly.
            if l == 0 && matches!(name.kind(), LinearKind::Q | LinearKind::K | LinearKind::V) {
                assert_eq!(
                    a.packed, b.packed,
                    "{name}: the correction keeps GPTQ's codes"
                );
            }
            assert_eq!(b.correction.as_ref().map(|c| c.rank()), Some(8));
        }
    }
    let config = PerplexityConfig {
        context: 128,
        scoring: Scoring::AllTokens,
        max_windows: Some(16),
        bos: s.m.tokenizer.bos_id(),
    };
    let k_plain = kl_divergence(&s.m.model, &plain, &s.eval, &config, |_, _| {}).unwrap();
    let k_corr = kl_divergence(&s.m.model, &corrected, &s.eval, &config, |_, _| {}).unwrap();
    eprintln!(
        "stories260K GPTQ 3-bit g32: KLD {:.4} (PPL {:.3}); + rank-8 correction: KLD {:.4} (PPL {:.3}); base PPL {:.3}",
        k_plain.kld.mean,
        k_plain.mean_nll.1.exp(),
        k_corr.kld.mean,
        k_corr.mean_nll.1.exp(),
        k_plain.mean_nll.0.exp()
    );
    assert!(
        k_corr.kld.hi < k_plain.kld.lo,
        "the correction must help beyond noise"
    );

    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("c.safetensors");
    let header = compress_model::container::write_container(
        &corrected,
        &s.m.tokenizer,
        &path,
        &Default::default(),
    )
    .unwrap();
    assert_eq!(header.version, 2);
    let back = compress_model::container::read_container(&path, &corrected.device()).unwrap();
    let ids = &s.eval[..64];
    assert_eq!(
        common::logits(&back.model, ids),
        common::logits(&corrected, ids)
    );
    let e = compress_model::save::write_gguf(
        &corrected,
        &s.m.tokenizer,
        &dir.path().join("c.gguf"),
        &Default::default(),
    )
    .unwrap_err()
    .to_string();
    assert!(e.contains("correction"), "{e}");
}
