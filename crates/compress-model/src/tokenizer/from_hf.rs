//! A GGUF vocabulary (`tokenizer.ggml.*`) from a Hugging Face `tokenizer.json`, so models loaded
//! from safetensors checkpoints can be written as GGUF with their tokenizer.
//!
//! Byte-level BPE tokenizers (GPT-2 family: SmolLM, Llama 3, Qwen2) convert directly, as
//! llama.cpp's `convert_hf_to_gguf.py` does: `tokens` are the vocabulary strings by id (added
//! tokens included), `merges` the merge list in priority order, `token_type` CONTROL for special
//! added tokens and USER_DEFINED for the other added ones, NORMAL otherwise. `tokenizer.ggml.pre`
//! names the pre-tokenizer; it is identified by *behaviour*: the tokenizer's own pre-tokenizer
//! and each one this crate implements ([`super::bpe::pre_tokenizer`]) split a probe text
//! covering contractions, digit runs, punctuation, newlines and runs of spaces, and the first that
//! splits it identically is the name (regexes that differ only in spelling, such as `(?i:'s)`
//! against `'[sS]`, so still match).
//!
//! SentencePiece-style tokenizers (`byte_fallback`, Metaspace) would need per-token scores
//! llama.cpp's `llama` vocabulary ranks merges by; they are refused with that reason.

use serde_json::Value;

use super::bpe::{pre_tokenizer, SUPPORTED_PRE};
use super::{token_type, GgufVocab, LlmTokenizer, TokenizerError};

/// Text that separates the pre-tokenizers this crate knows: contractions, letter runs after
/// punctuation, digit runs of several lengths, punctuation runs, newlines, trailing spaces.
const PROBE: &str = "Hello world! It's 2024: we'll test 1234567 tokens, \
                     don't we?\n\n  Indented\tline... ÆØÅ 123abc 'S 'LL\r\n  end   ";

fn invalid(msg: impl Into<String>) -> TokenizerError {
    TokenizerError::InvalidVocab(msg.into())
}

/// The pieces `pre` splits [`PROBE`] into.
fn split_probe(pre: &dyn tokenizers::PreTokenizer) -> Result<Vec<String>, TokenizerError> {
    let mut s = tokenizers::PreTokenizedString::from(PROBE);
    pre.pre_tokenize(&mut s).map_err(TokenizerError::lib)?;
    Ok(s.get_splits(
        tokenizers::OffsetReferential::Original,
        tokenizers::OffsetType::Byte,
    )
    .into_iter()
    .map(|(piece, _, _)| piece.to_string())
    .collect())
}

/// The `tokenizer.ggml.pre` name whose pre-tokenizer behaves like `t`'s.
fn pre_name(t: &tokenizers::Tokenizer) -> Result<String, TokenizerError> {
    let own = t
        .get_pre_tokenizer()
        .ok_or_else(|| invalid("a byte-level BPE tokenizer.json without a pre-tokenizer"))?;
    let want = split_probe(own)?;
    // Canonical names first (`gpt2` before its alias `gpt-2`, ...).
    for name in ["smollm", "llama-bpe", "qwen2", "gpt2"] {
        debug_assert!(SUPPORTED_PRE.contains(&name));
        let seq = tokenizers::pre_tokenizers::sequence::Sequence::new(pre_tokenizer(Some(name))?);
        if split_probe(&seq)? == want {
            return Ok(name.to_string());
        }
    }
    Err(invalid(format!(
        "the tokenizer.json pre-tokenizer splits text like none of {} (llama.cpp names \
         pre-tokenizers; this one has no name here)",
        SUPPORTED_PRE.join(", ")
    )))
}

/// One merge as `"left right"`, from either serialisation (`"a b"` or `["a", "b"]`).
fn merge_text(m: &Value) -> Result<String, TokenizerError> {
    match m {
        Value::String(s) => Ok(s.clone()),
        Value::Array(p) if p.len() == 2 => match (&p[0], &p[1]) {
            (Value::String(a), Value::String(b)) => Ok(format!("{a} {b}")),
            _ => Err(invalid("a merge pair that is not two strings")),
        },
        _ => Err(invalid("a merge that is neither \"a b\" nor [a, b]")),
    }
}

impl GgufVocab {
    /// The GGUF vocabulary of a byte-level BPE `tokenizer.json` tokenizer (see the module docs);
    /// special ids and the BOS default come from `t`.
    pub fn from_hf_tokenizer(t: &LlmTokenizer) -> Result<Self, TokenizerError> {
        let json: Value = serde_json::from_str(&t.to_json()?).map_err(TokenizerError::lib)?;
        let model = &json["model"];
        if model["type"].as_str() != Some("BPE") {
            return Err(invalid(format!(
                "GGUF export converts byte-level BPE tokenizers; this tokenizer.json's model is {}",
                model["type"]
            )));
        }
        if model["byte_fallback"].as_bool() == Some(true) {
            return Err(invalid(
                "a SentencePiece-style tokenizer.json (BPE with byte fallback) has no per-token \
                 scores for llama.cpp's `llama` vocabulary; save to the container instead",
            ));
        }
        let vocab = model["vocab"]
            .as_object()
            .ok_or_else(|| invalid("model.vocab is not an object"))?;
        let added = json["added_tokens"].as_array().cloned().unwrap_or_default();
        let n = vocab
            .values()
            .filter_map(Value::as_u64)
            .chain(added.iter().filter_map(|a| a["id"].as_u64()))
            .max()
            .map_or(0, |m| m as usize + 1);
        let mut tokens: Vec<Option<String>> = vec![None; n];
        let mut types = vec![token_type::NORMAL; n];
        for (text, id) in vocab {
            let id = id
                .as_u64()
                .ok_or_else(|| invalid("a vocabulary id that is not a number"))?;
            tokens[id as usize] = Some(text.clone());
        }
        for a in &added {
            let (Some(id), Some(text)) = (a["id"].as_u64(), a["content"].as_str()) else {
                return Err(invalid("an added token without id or content"));
            };
            tokens[id as usize] = Some(text.to_string());
            types[id as usize] = if a["special"].as_bool() == Some(true) {
                token_type::CONTROL
            } else {
                token_type::USER_DEFINED
            };
        }
        let tokens: Vec<String> = tokens
            .into_iter()
            .enumerate()
            .map(|(i, t)| t.ok_or_else(|| invalid(format!("no token has id {i}"))))
            .collect::<Result<_, _>>()?;
        let merges = model["merges"]
            .as_array()
            .ok_or_else(|| invalid("model.merges is missing"))?
            .iter()
            .map(merge_text)
            .collect::<Result<Vec<_>, _>>()?;
        let special = t.special_tokens();
        let v = GgufVocab {
            model: "gpt2".into(),
            pre: Some(pre_name(t.inner())?),
            tokens,
            scores: None,
            token_types: Some(types),
            merges: Some(merges),
            bos_id: special.bos,
            eos_id: special.eos,
            unk_id: special.unk,
            pad_id: special.pad,
            add_bos: Some(special.add_bos),
            add_eos: None,
            add_space_prefix: None,
        };
        v.check()?;
        Ok(v)
    }
}
