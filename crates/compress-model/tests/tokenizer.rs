//! Tokenizers built from GGUF metadata: llama.cpp's ids on the reference texts (the parity
//! checks themselves live in `stories260k.rs` and `smollm2.rs`), round trips, byte fallback,
//! special tokens and the `tokenizer.json` export.

mod common;

use common::{shared, smollm2, Reference};
use compress_model::load::GgufModel;
use compress_model::LlmTokenizer;

fn stories() -> Option<LlmTokenizer> {
    Some(
        GgufModel::open(shared("models/stories260K.gguf")?)
            .unwrap()
            .tokenizer()
            .unwrap(),
    )
}

fn smol() -> Option<LlmTokenizer> {
    Some(GgufModel::open(smollm2()?).unwrap().tokenizer().unwrap())
}

const TEXTS: &[&str] = &[
    "Once upon a time, there was a little girl named Lily.",
    "  two leading spaces, a\ttab and\nnew lines\n\n",
    "Unicode outside the vocabulary: café, naïve, 東京, 🦀 — byte fallback.",
    "Numbers 12345 and 3.14159; punctuation!?",
];

#[test]
fn stories260k_reference_prefix_and_round_trips() {
    let Some(tok) = stories() else { return };
    let reference = Reference::load("reference/stories260K_llamacpp.json").unwrap();
    let text = std::fs::read(shared("data/tinystories/val.txt").unwrap()).unwrap();
    let ids = tok
        .encode(std::str::from_utf8(&text[..2000]).unwrap(), true)
        .unwrap();
    assert_eq!(&ids[..65], reference.tokens().as_slice());
    assert_eq!(tok.bos_id(), Some(1));
    assert_eq!(tok.eos_id(), Some(2));
    assert!(tok.add_bos_default());
    for t in TEXTS {
        let ids = tok.encode(t, true).unwrap();
        assert_eq!(ids[0], 1);
        assert_eq!(tok.decode(&ids).unwrap(), *t, "round trip of {t:?}");
    }
    // A 512-token vocabulary has no "東": each of its three UTF-8 bytes is a <0xNN> token.
    let ids = tok.encode("東", false).unwrap();
    let pieces: Vec<String> = ids.iter().map(|&i| tok.token_text(i).unwrap()).collect();
    assert!(
        pieces.ends_with(&["<0xE6>".to_string(), "<0x9D>".into(), "<0xB1>".into()]),
        "{pieces:?}"
    );
}

#[test]
fn smollm2_round_trips_and_special_tokens() {
    let Some(tok) = smol() else { return };
    for t in TEXTS {
        let ids = tok.encode(t, false).unwrap();
        assert_eq!(tok.decode(&ids).unwrap(), *t, "round trip of {t:?}");
    }
    // SmolLM2 splits every digit (pre-tokenizer "smollm").
    let digits = tok.encode("2024", false).unwrap();
    assert_eq!(digits.len(), 4, "{digits:?}");
    // Chat-template markers are single control tokens and are skipped on decode.
    let im_start = tok
        .inner()
        .token_to_id("<|im_start|>")
        .expect("SmolLM2 has <|im_start|>");
    let ids = tok.encode("<|im_start|>user\nHi", false).unwrap();
    assert_eq!(ids[0], im_start);
    assert_eq!(tok.decode(&ids).unwrap(), "user\nHi");
}

/// Every line of the shared evaluation texts decodes back to itself (SentencePiece drops only
/// the space it prepends; byte-level BPE is lossless). Whole files: ~800 kB of TinyStories,
/// 1.3 MB of WikiText-2 (test) and the ARC-Easy questions.
#[test]
fn shared_data_round_trips() {
    let (Some(spm), Some(bpe)) = (stories(), smol()) else {
        return;
    };
    let mut lines = 0;
    for rel in [
        "data/tinystories/val.txt",
        "data/wikitext-2/wiki.test.raw",
        "data/tasks/arc_easy.jsonl",
    ] {
        let text = std::fs::read_to_string(shared(rel).unwrap()).unwrap();
        for line in text.lines().filter(|l| !l.is_empty()) {
            for (name, tok) in [("stories260K", &spm), ("SmolLM2", &bpe)] {
                let ids = tok.encode(line, true).unwrap();
                assert_eq!(
                    tok.decode(&ids).unwrap(),
                    line,
                    "{name} round trip of a line of {rel}"
                );
            }
            lines += 1;
        }
    }
    eprintln!("{lines} lines round-tripped through both tokenizers");
}

#[test]
fn tokenizer_json_export_round_trips() {
    let Some(tok) = stories() else { return };
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("tokenizer.json");
    tok.inner().save(&path, false).unwrap();
    let back = LlmTokenizer::from_file(&path).unwrap();
    assert_eq!(back.bos_id(), Some(1));
    assert_eq!(back.eos_id(), Some(2));
    for t in TEXTS {
        assert_eq!(
            back.encode(t, true).unwrap(),
            tok.encode(t, true).unwrap(),
            "{t:?}"
        );
    }
    let e = LlmTokenizer::from_file(dir.path().join("absent.json")).unwrap_err();
    assert!(e.to_string().contains("absent.json"), "{e}");
}

/// SmolLM2's GGUF vocabulary → `tokenizer.json` → back to a GGUF vocabulary (how a model loaded
/// from a Hugging Face checkpoint is written as GGUF): the same tokens, merges, token types,
/// pre-tokenizer name and special ids as the original file, and the same ids on every text.
#[test]
fn tokenizer_json_converts_back_to_the_gguf_vocabulary() {
    use compress_model::tokenizer::GgufVocab;
    let Some(tok) = smol() else { return };
    let original = tok.gguf_vocab().unwrap().clone();
    let hf = LlmTokenizer::from_json_str(&tok.to_json().unwrap(), tok.special_tokens()).unwrap();
    assert!(hf.gguf_vocab().is_none());
    let back = GgufVocab::from_hf_tokenizer(&hf).unwrap();
    assert_eq!(back.model, "gpt2");
    assert_eq!(back.pre, original.pre);
    assert_eq!(back.tokens, original.tokens);
    assert_eq!(back.merges, original.merges);
    let types = |v: &GgufVocab| v.token_types.clone().unwrap_or_default();
    let differ: Vec<usize> = (0..back.tokens.len())
        .filter(|&i| types(&back)[i] != types(&original)[i])
        .collect();
    assert!(differ.is_empty(), "token types differ at {differ:?}");
    assert_eq!(
        (back.bos_id, back.eos_id),
        (original.bos_id, original.eos_id)
    );
    let rebuilt = LlmTokenizer::from_gguf_vocab(&back).unwrap();
    for t in TEXTS {
        assert_eq!(
            rebuilt.encode(t, false).unwrap(),
            tok.encode(t, false).unwrap(),
            "{t:?}"
        );
    }
}

/// stories260K's SentencePiece vocabulary (real scores) → `tokenizer.json` → back to a `llama`
/// GGUF vocabulary with scores derived from the merge order: the same tokens, token types,
/// special ids and space prefix; the derived scores rank every merged token as the original
/// scores do; and the rebuilt tokenizer gives the original's ids on every TinyStories line.
#[test]
fn sentencepiece_tokenizer_json_converts_to_a_llama_vocabulary() {
    use compress_model::tokenizer::GgufVocab;
    let Some(tok) = stories() else { return };
    let original = tok.gguf_vocab().unwrap().clone();
    let hf = LlmTokenizer::from_json_str(&tok.to_json().unwrap(), tok.special_tokens()).unwrap();
    let back = GgufVocab::from_hf_tokenizer(&hf).unwrap();
    assert_eq!(back.model, "llama");
    assert_eq!(back.tokens, original.tokens);
    assert_eq!(back.token_types, original.token_types);
    assert_eq!(
        (back.bos_id, back.eos_id, back.unk_id),
        (original.bos_id, original.eos_id, original.unk_id)
    );
    assert_eq!(back.add_space_prefix, Some(true));
    // Merged tokens (score above the floor) keep the original order of their scores.
    let (derived, real) = (back.scores.unwrap(), original.scores.unwrap());
    let floor = derived.iter().copied().fold(f32::INFINITY, f32::min);
    let mut merged: Vec<usize> = (0..derived.len()).filter(|&i| derived[i] > floor).collect();
    assert!(merged.len() > 100, "{} merged tokens", merged.len());
    merged.sort_by(|&a, &b| derived[b].total_cmp(&derived[a]));
    assert!(
        merged.windows(2).all(|w| real[w[0]] >= real[w[1]]),
        "derived scores order merged tokens unlike the original scores"
    );
    let rebuilt = LlmTokenizer::from_gguf_vocab(&GgufVocab {
        scores: Some(derived),
        ..back
    })
    .unwrap();
    let Some(path) = shared("data/tinystories/val.txt") else {
        return;
    };
    let text = std::fs::read_to_string(path).unwrap();
    let mut lines = 0;
    for line in text.lines().filter(|l| !l.trim().is_empty()).take(2000) {
        assert_eq!(
            rebuilt.encode(line, true).unwrap(),
            tok.encode(line, true).unwrap(),
            "{line:?}"
        );
        lines += 1;
    }
    for t in TEXTS {
        assert_eq!(
            rebuilt.encode(t, true).unwrap(),
            tok.encode(t, true).unwrap(),
            "{t:?}"
        );
    }
    assert!(lines > 100, "{lines} lines");
}
