//! Task scoring on stories260K: a hand-made two-question file with known answers, and the
//! batched log-probabilities against an unbatched, independent computation.

#[path = "../../compress-model/tests/common/mod.rs"]
mod common;

use compress_core::backend::BackendKind;
use compress_eval::tasks::{evaluate, load_jsonl, score_item, split_request};

fn fixture() -> std::path::PathBuf {
    std::path::PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/two_questions.jsonl")
}

#[test]
fn two_question_file_gives_the_known_answers() {
    let Some(path) = common::shared("models/stories260K.gguf") else {
        return;
    };
    let m = compress_model::load(path, &BackendKind::Flex.device().unwrap()).unwrap();
    let items = load_jsonl(fixture(), None).unwrap();
    assert_eq!(items.len(), 2);
    let mut seen = Vec::new();
    let r = evaluate(&m.model, &m.tokenizer, &items, |d, t| seen.push((d, t))).unwrap();
    eprintln!("{r:?}");
    // A TinyStories model names the girl Lily and plays in the park: both questions right.
    assert_eq!((r.n, r.acc.mean, r.acc_norm.mean), (2, 1.0, 1.0));
    assert_eq!(seen, [(1, 2), (2, 2)]);
    assert_eq!(r.correct, [true, true]);
    // Against itself McNemar finds no discordant question.
    let same = compress_eval::compare::mcnemar(&r.correct, &r.correct).unwrap();
    assert_eq!((same.a_only, same.b_only, same.p_value), (0, 0, 1.0));
    assert!(r.gold_ppl.is_finite() && r.gold_ppl >= 1.0);
    assert_eq!(load_jsonl(fixture(), Some(1)).unwrap().len(), 1);

    // Each batched choice score equals the sum computed from an unbatched forward pass.
    let vocab = m.model.config().vocab_size;
    for item in &items {
        let scores = score_item(&m.model, &m.tokenizer, item).unwrap();
        for (req, score) in item.requests.iter().zip(&scores) {
            let (ids, start) = split_request(&m.tokenizer, req).unwrap();
            let logits = common::logits(&m.model, &ids);
            let mut want = 0.0f64;
            for t in start..ids.len() {
                want += common::log_prob(&logits[(t - 1) * vocab..t * vocab], ids[t]);
            }
            // Padded batch vs single row: the padding test in compress-model bounds logits
            // differences by 1e-3, so a sum over a few tokens agrees to 1e-2.
            assert!(
                (score.logprob - want).abs() < 1e-2,
                "{req:?}: {} vs {want}",
                score.logprob
            );
            assert_eq!(score.tokens, ids.len() - start);
        }
    }
}

#[test]
fn lambada_items_score_by_greedy_match() {
    let Some(path) = common::shared("models/stories260K.gguf") else {
        return;
    };
    let m = compress_model::load(path, &BackendKind::Flex.device().unwrap()).unwrap();
    // A single-continuation item is right iff greedy decoding reproduces it; the greedy
    // continuation of this prompt is documented in compress-model's stories260k test.
    let item = |cont: &str| compress_eval::tasks::TaskItem {
        doc_id: 0,
        gold: 0,
        requests: vec![compress_eval::tasks::Request {
            context: "Once upon a time, there was a little girl named".into(),
            continuation: cont.into(),
        }],
    };
    let right = evaluate(&m.model, &m.tokenizer, &[item(" Lily")], |_, _| {}).unwrap();
    let wrong = evaluate(&m.model, &m.tokenizer, &[item(" Xavier")], |_, _| {}).unwrap();
    assert_eq!((right.acc.mean, wrong.acc.mean), (1.0, 0.0));
    assert!(right.gold_ppl < wrong.gold_ppl);

    let lambada = load_jsonl(common::shared("data/tasks/lambada.jsonl").unwrap(), Some(3)).unwrap();
    let r = evaluate(&m.model, &m.tokenizer, &lambada, |_, _| {}).unwrap();
    assert_eq!(r.n, 3);
    assert!(r.gold_ppl.is_finite());
}

/// Only `batch_logits`: scores through the trait's default `prefix_logits` (concatenation).
struct Unshared<'a>(&'a compress_model::LlamaModel);

impl compress_eval::tasks::BatchScorer for Unshared<'_> {
    fn batch_logits(&self, seqs: &[Vec<u32>]) -> Result<Vec<Vec<f32>>, compress_eval::EvalError> {
        self.0.batch_logits(seqs)
    }
    fn vocab(&self) -> usize {
        self.0.config().vocab_size
    }
}

#[test]
fn a_shared_context_runs_once_with_the_same_logits() {
    use compress_eval::tasks::{BatchScorer, Tokenize};
    let Some(path) = common::shared("models/stories260K.gguf") else {
        return;
    };
    let m = compress_model::load(path, &BackendKind::Flex.device().unwrap()).unwrap();
    let prefix = m.tokenizer.tokens("Once upon a time, there was a").unwrap();
    let suffixes: Vec<Vec<u32>> = [
        " little girl named Lily.",
        " dog",
        " big red ball that liked to bounce",
    ]
    .iter()
    .map(|s| m.tokenizer.encode(s, false).unwrap())
    .collect();
    let cached = m.model.prefix_logits(&prefix, &suffixes).unwrap();
    let plain = Unshared(&m.model)
        .prefix_logits(&prefix, &suffixes)
        .unwrap();
    let vocab = m.model.config().vocab_size;
    for ((c, p), s) in cached.iter().zip(&plain).zip(&suffixes) {
        assert_eq!((c.len(), p.len()), (s.len() * vocab, s.len() * vocab));
        let diff = c.iter().zip(p).fold(0f32, |d, (a, b)| d.max((a - b).abs()));
        // Same tolerance as compress-model's padding and cache tests: 1e-3.
        assert!(diff < 1e-3, "max |Δlogit| {diff}");
    }
    // Whole questions score the same either way, on a real task file.
    let items = load_jsonl(
        common::shared("data/tasks/arc_easy.jsonl").unwrap(),
        Some(5),
    )
    .unwrap();
    let a = evaluate(&m.model, &m.tokenizer, &items, |_, _| {}).unwrap();
    let b = evaluate(&Unshared(&m.model), &m.tokenizer, &items, |_, _| {}).unwrap();
    assert_eq!(
        (a.correct.clone(), a.acc_norm.mean),
        (b.correct.clone(), b.acc_norm.mean)
    );
    assert!(
        (a.gold_ppl - b.gold_ppl).abs() < 1e-3 * b.gold_ppl,
        "{} vs {}",
        a.gold_ppl,
        b.gold_ppl
    );
    assert!(m.model.new_cache().repeat_batch(2).is_err());
}
