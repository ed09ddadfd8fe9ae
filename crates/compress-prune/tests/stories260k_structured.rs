//! Structured pruning of the real stories260K model (`../shared`): the pruned model computes what
//! the masked original computes, with exactly the expected parameter count; block removal by
//! block influence.

#[path = "../../compress-model/tests/common/mod.rs"]
mod common;

use burn::tensor::{Tensor, TensorData};
use compress_core::backend::BackendKind;
use compress_core::calibration::sample_windows;
use compress_core::linear::{CompressedLinear, DenseLinear};
use compress_model::LlamaModel;
use compress_prune::structured::{
    block_influence, least_influential, prune_structured, Importance, StructuredConfig,
};

fn load() -> Option<(compress_model::LoadedModel, Vec<u32>)> {
    let path = common::shared("models/stories260K.gguf")?;
    let text = std::fs::read_to_string(common::shared("data/tinystories/val.txt")?).unwrap();
    let m = compress_model::load(path, &BackendKind::Flex.device().unwrap()).unwrap();
    let tokens = m.tokenizer.encode(&text[..text.len() / 2], true).unwrap();
    Some((m, tokens))
}

/// `lin` with the input columns outside `keep` set to 0.
fn zero_cols(lin: &CompressedLinear, keep: &[usize]) -> CompressedLinear {
    let w = lin.dense_weight();
    let [o, i] = w.dims();
    let mut v: Vec<f32> = w.clone().into_data().try_to_vec::<f32>().unwrap();
    for r in 0..o {
        for c in 0..i {
            if keep.binary_search(&c).is_err() {
                v[r * i + c] = 0.0;
            }
        }
    }
    let t = Tensor::<2>::from_data(TensorData::new(v, [o, i]), &w.device());
    CompressedLinear::Dense(DenseLinear::new(t, lin.bias()))
}

#[test]
fn removed_structures_equal_masked_ones_and_shrink_the_model() {
    let Some((m, tokens)) = load() else { return };
    let windows = sample_windows(&tokens, 8, 64, 0).unwrap();
    let base = &m.model;
    let cfg0 = base.config().clone();
    for (importance, heads) in [
        (Importance::Magnitude, Importance::Magnitude),
        (Importance::Activation, Importance::Activation),
        (Importance::Activation, Importance::Entropy),
        (Importance::Taylor, Importance::Taylor),
    ] {
        let mut pruned = base.clone();
        let cfg = StructuredConfig {
            ffn_fraction: 0.25,
            head_fraction: 0.25,
            ffn_importance: importance,
            head_importance: heads,
        };
        let report = prune_structured(&mut pruned, &windows, &cfg, |_, _| {}).unwrap();
        // stories260K: 8 heads in 4 groups of 2 → one whole group (2 query + 1 kv head) per
        // block; FFN 172 → 43 neurons removed per block.
        assert_eq!(report.heads_removed, (2, 1));
        assert_eq!(report.ffn_removed, 43);
        let (d, hd, blocks) = (cfg0.hidden_size, cfg0.head_dim, cfg0.num_layers);
        let expected = blocks * (43 * 3 * d + 2 * hd * d * 2 + hd * d * 2);
        assert_eq!(report.parameters.0 - report.parameters.1, expected);
        assert_eq!(pruned.config().intermediate_size, 172 - 43);
        assert_eq!(
            (pruned.config().num_heads, pruned.config().num_kv_heads),
            (6, 3)
        );

        // The masked original: zero the down_proj columns of removed neurons and the o_proj
        // columns of removed heads.
        let mut masked = base.clone();
        for (b, l) in masked.layers.iter_mut().enumerate() {
            l.mlp.dense_mut().unwrap().down_proj =
                zero_cols(&l.mlp.dense_mut().unwrap().down_proj, &report.kept_ffn[b]);
            let cols: Vec<usize> = report.kept_heads[b]
                .iter()
                .flat_map(|&h| h * hd..(h + 1) * hd)
                .collect();
            l.attn.o_proj = zero_cols(&l.attn.o_proj, &cols);
        }
        let ids: Vec<u32> = tokens[..48].to_vec();
        let (a, b) = (common::logits(&pruned, &ids), common::logits(&masked, &ids));
        let diff = common::max_abs_diff(&a, &b);
        // Same maths with fewer zero terms in each sum: f32 reordering only (logits are ~10).
        assert!(diff < 1e-4, "{importance:?}/{heads:?}: max |Δlogit| {diff}");
        eprintln!(
            "{importance:?}/{heads:?}: {} → {} parameters, block 0 keeps heads {:?}, max |Δlogit| vs masked {diff:.1e}",
            report.parameters.0, report.parameters.1, report.kept_heads[0]
        );
    }
}

#[test]
fn attention_entropy_is_bounded_and_bad_configs_are_errors() {
    let Some((m, tokens)) = load() else { return };
    let windows = sample_windows(&tokens, 2, 32, 2).unwrap();
    let x = compress_core::pipeline::Pipeline::new()
        .embed_calibration(&m.model, &windows, &m.model.device())
        .unwrap()
        .remove(0);
    let e = m.model.head_entropy(0, x);
    // Causal attention over at most 32 keys: 0 ≤ H ≤ mean over queries of ln(keys) < ln 32.
    assert_eq!(e.len(), m.model.head_shape(0).heads);
    assert!(e.iter().all(|&v| (0.0..32f64.ln()).contains(&v)), "{e:?}");
    let cfg = StructuredConfig {
        ffn_fraction: 0.25,
        head_fraction: 0.0,
        ffn_importance: Importance::Entropy,
        head_importance: Importance::Activation,
    };
    let e = prune_structured(&mut m.model.clone(), &windows, &cfg, |_, _| {}).unwrap_err();
    assert!(e.to_string().contains("ffn_importance"), "{e}");
    let cfg = StructuredConfig {
        ffn_fraction: 1.0,
        ..cfg
    };
    assert!(prune_structured(&mut m.model.clone(), &windows, &cfg, |_, _| {}).is_err());
}

#[test]
fn block_influence_ranks_and_removal_keeps_a_valid_model() {
    let Some((m, tokens)) = load() else { return };
    let windows = sample_windows(&tokens, 8, 64, 1).unwrap();
    let bi = block_influence(&m.model, &windows).unwrap();
    assert_eq!(bi.len(), m.model.layers.len());
    assert!(
        bi.iter()
            .all(|&v| v.is_finite() && (0.0..=2.0).contains(&v)),
        "{bi:?}"
    );
    eprintln!("stories260K block influence: {bi:?}");
    let drop = least_influential(&bi, 1);
    let mut shorter: LlamaModel = m.model.clone();
    let before = shorter.num_parameters();
    shorter.remove_blocks(&drop).unwrap();
    assert_eq!(shorter.layers.len(), m.model.layers.len() - 1);
    assert_eq!(shorter.config().num_layers, shorter.layers.len());
    assert!(shorter.num_parameters() < before);
    assert_eq!(before, m.model.config().num_parameters());
    let logits = common::logits(&shorter, &tokens[..16]);
    assert!(logits.iter().all(|v| v.is_finite()));
    assert!(shorter
        .remove_blocks(&(0..shorter.layers.len()).collect::<Vec<_>>())
        .is_err());
}

/// The Taylor score is the loss's sensitivity to a structure's gate: scaling the most important
/// FFN neuron of block 1 by 1 − ε changes the loss by about ε · score (finite difference).
#[test]
fn taylor_scores_match_a_finite_difference() {
    let Some((m, tokens)) = load() else { return };
    let window = tokens[..64].to_vec();
    let scores = m
        .model
        .taylor_scores(std::slice::from_ref(&window))
        .unwrap();
    assert_eq!(scores.ffn.len(), m.model.layers.len());
    assert_eq!(scores.heads[0].len(), m.model.head_shape(0).heads);
    let ffn = &scores.ffn[1];
    let (i, &score) = ffn
        .iter()
        .enumerate()
        .max_by(|a, b| a.1.total_cmp(b.1))
        .unwrap();
    let vocab = m.model.config().vocab_size;
    let loss =
        |model: &LlamaModel| common::mean_nll(&common::logits(model, &window), &window, vocab);
    let eps = 0.05f32;
    let mut scaled = m.model.clone();
    let lin = &scaled.layers[1].mlp.dense().unwrap().down_proj;
    let w = lin.dense_weight();
    let [o, n] = w.dims();
    let mut v: Vec<f32> = w.clone().into_data().try_to_vec::<f32>().unwrap();
    for r in 0..o {
        v[r * n + i] *= 1.0 - eps;
    }
    let t = Tensor::<2>::from_data(TensorData::new(v, [o, n]), &w.device());
    scaled.layers[1].mlp.dense_mut().unwrap().down_proj =
        CompressedLinear::Dense(DenseLinear::new(t, lin.bias()));
    let fd = ((loss(&scaled) - loss(&m.model)) / eps as f64).abs();
    eprintln!("block 1 neuron {i}: Taylor {score:.5}, finite difference {fd:.5}");
    // First order in ε: the second-order term and f32 rounding of the loss (≈1e-7 relative on
    // a loss of ~2, i.e. ~4e-6 after dividing by ε) stay well inside 10%.
    assert!(
        (fd - score).abs() < 0.1 * score,
        "Taylor {score} vs finite difference {fd}"
    );
}
