//! Perplexity of stories260K on TinyStories validation text (`../shared`), checked against an
//! independent computation: the compress-model test helpers' logits and f64 log-softmax.

#[path = "../../compress-model/tests/common/mod.rs"]
mod common;

use compress_core::backend::BackendKind;
use compress_eval::perplexity::{perplexity, scored_positions, PerplexityConfig, Scoring};

#[test]
fn stories260k_perplexity_matches_an_independent_computation() {
    let Some(path) = common::shared("models/stories260K.gguf") else {
        return;
    };
    let m = compress_model::load(path, &BackendKind::Flex.device().unwrap()).unwrap();
    let text =
        std::fs::read_to_string(common::shared("data/tinystories/val.txt").unwrap()).unwrap();
    let tokens = m.tokenizer.encode(&text, true).unwrap();
    let (context, windows) = (128, 4);

    let config = PerplexityConfig {
        context,
        scoring: Scoring::AllTokens,
        max_windows: Some(windows),
        bos: m.tokenizer.bos_id(),
    };
    let mut calls = Vec::new();
    let r = perplexity(&m.model, &tokens, text.len(), &config, |done, total| {
        calls.push((done, total))
    })
    .unwrap();
    assert_eq!(calls.last(), Some(&(windows, windows)));
    assert_eq!(
        (r.windows, r.tokens_scored),
        (windows, windows * (context - 1))
    );
    assert!(r.ppl.is_finite() && r.ppl > 1.0, "{r:?}");
    assert!((r.ppl - r.mean_nll.exp()).abs() <= 1e-12 * r.ppl);
    assert!(r.ppl_ci95.0 < r.ppl && r.ppl < r.ppl_ci95.1);

    // Independent: whole-window mean NLL from the test helpers, averaged over equal windows.
    let vocab = m.model.config().vocab_size;
    let mut sum = 0.0;
    for w in 0..windows {
        let ids = &tokens[w * context..(w + 1) * context];
        sum += common::mean_nll(&common::logits(&m.model, ids), ids, vocab);
    }
    let independent = sum / windows as f64;
    // Both accumulate in f64 over the same f32 logits: only summation order differs.
    assert!(
        (r.mean_nll - independent).abs() <= 1e-9,
        "{} vs {independent}",
        r.mean_nll
    );
    // Same ballpark as llama.cpp's NLL on the first window of this text (1.368, reference file).
    assert!((1.0..2.0).contains(&r.mean_nll), "{}", r.mean_nll);
    eprintln!("stories260K, {windows} windows of {context}: {r:?}");

    // llama.cpp's protocol scores positions 64..127 of each window, after forcing BOS first.
    let half = PerplexityConfig {
        scoring: Scoring::SecondHalf,
        ..config
    };
    let h = perplexity(&m.model, &tokens, text.len(), &half, |_, _| {}).unwrap();
    assert_eq!(
        h.tokens_scored,
        windows * scored_positions(context, Scoring::SecondHalf).len()
    );
    assert!(h.ppl.is_finite() && h.ppl > 1.0, "{h:?}");
    // With half a window of context every scored token is predicted at least as well on
    // average on this text; allow noise of 5%.
    assert!(
        h.ppl <= r.ppl * 1.05,
        "second half {} vs all {}",
        h.ppl,
        r.ppl
    );
}

/// KLD of stories260K to itself is exactly 0 with top-1 agreement 1; to the same weights with
/// llama.cpp-style f16 attention numerics it is small but positive.
#[test]
fn stories260k_kl_divergence() {
    use compress_eval::kld::kl_divergence;
    use compress_model::llama::AttentionPrecision;

    let Some(path) = common::shared("models/stories260K.gguf") else {
        return;
    };
    let device = BackendKind::Flex.device().unwrap();
    let base = compress_model::load(&path, &device).unwrap();
    let text =
        std::fs::read_to_string(common::shared("data/tinystories/val.txt").unwrap()).unwrap();
    let tokens = base.tokenizer.encode(&text, true).unwrap();
    let config = PerplexityConfig {
        context: 128,
        scoring: Scoring::AllTokens,
        max_windows: Some(4),
        bos: base.tokenizer.bos_id(),
    };

    let same = kl_divergence(&base.model, &base.model, &tokens, &config, |_, _| {}).unwrap();
    assert_eq!(same.tokens, 4 * 127);
    assert_eq!(
        (same.kld.mean, same.kld_percentiles.max, same.same_top.mean),
        (0.0, 0.0, 1.0)
    );
    assert_eq!((same.delta_p.mean, same.delta_p_rms), (0.0, 0.0));
    assert_eq!(same.mean_nll.0, same.mean_nll.1);

    let mut f16 = compress_model::load(&path, &device).unwrap();
    f16.model
        .set_attention_precision(AttentionPrecision::F16KvCache);
    let r = kl_divergence(&base.model, &f16.model, &tokens, &config, |_, _| {}).unwrap();
    eprintln!("f32 vs f16-attention: {r:?}");
    // f16 rounding of q/k/v moves logits by ~1e-2 at most (stories260k.rs), so KLD is tiny.
    assert!(r.kld.mean > 0.0 && r.kld.mean < 1e-4, "{:?}", r.kld);
    assert!(r.same_top.mean > 0.98, "{:?}", r.same_top);
    assert!((r.mean_nll.0 - r.mean_nll.1).abs() < 1e-3);
}
