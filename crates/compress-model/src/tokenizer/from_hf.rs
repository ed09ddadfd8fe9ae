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
//! SentencePiece-style tokenizers (BPE with `byte_fallback`: Llama 2, Mistral, Gemma) become a
//! `llama` vocabulary. llama.cpp ranks that vocabulary's merges by per-token scores, which a
//! `tokenizer.json` does not carry (`convert_hf_to_gguf.py` reads them from `tokenizer.model`,
//! and without one writes −1000 for every token, which loses the merge order). The scores are
//! derived from the merge list instead: a token's score is `−r` for the rank `r` of the first
//! merge that produces it, so "highest score first" is "lowest rank first" — the order
//! Hugging Face's converter wrote the merges in from the SentencePiece scores. Tokens no merge
//! produces (single characters, bytes, added tokens) score `−(merges + 1)`, below every merged
//! token. Types: `<0xNN>` tokens BYTE, the unknown token UNKNOWN, special added tokens CONTROL,
//! other added ones USER_DEFINED. `add_space_prefix` is read from the normalizer (`Prepend("▁")`)
//! or the Metaspace pre-tokenizer's prepend scheme. The result is checked by behaviour: the
//! tokenizer built from the converted vocabulary must split a probe text into the same ids as
//! the `tokenizer.json` itself, or the conversion is refused.

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
    /// The GGUF vocabulary of a `tokenizer.json` tokenizer: `gpt2` for byte-level BPE, `llama`
    /// for SentencePiece-style BPE with byte fallback (see the module docs); special ids and the
    /// BOS default come from `t`.
    pub fn from_hf_tokenizer(t: &LlmTokenizer) -> Result<Self, TokenizerError> {
        let json: Value = serde_json::from_str(&t.to_json()?).map_err(TokenizerError::lib)?;
        let model = &json["model"];
        if model["type"].as_str() != Some("BPE") {
            return Err(invalid(format!(
                "GGUF export converts byte-level BPE tokenizers; this tokenizer.json's model is {}",
                model["type"]
            )));
        }
        let spm = model["byte_fallback"].as_bool() == Some(true);
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
        let mut v = GgufVocab {
            model: "gpt2".into(),
            pre: None,
            tokens,
            scores: None,
            token_types: Some(types),
            merges: None,
            bos_id: special.bos,
            eos_id: special.eos,
            unk_id: special.unk,
            pad_id: special.pad,
            add_bos: Some(special.add_bos),
            add_eos: None,
            add_space_prefix: None,
        };
        if spm {
            v.model = "llama".into();
            v.pre = Some("default".into());
            v.scores = Some(scores_from_merges(&v.tokens, &merges));
            let types = v.token_types.as_mut().expect("set above");
            for (i, tok) in v.tokens.iter().enumerate() {
                if types[i] == token_type::NORMAL && is_byte_token(tok) {
                    types[i] = token_type::BYTE;
                }
            }
            if let Some(unk) = v.unk_id {
                types[unk as usize] = token_type::UNKNOWN;
            }
            v.add_space_prefix = Some(space_prefix(&json));
            v.check()?;
            same_split(t, &v)?;
        } else {
            v.pre = Some(pre_name(t.inner())?);
            v.merges = Some(merges);
            v.check()?;
        }
        Ok(v)
    }
}

/// `<0xNN>`: a SentencePiece byte-fallback token.
fn is_byte_token(t: &str) -> bool {
    let b = t.as_bytes();
    b.len() == 6
        && t.starts_with("<0x")
        && t.ends_with('>')
        && b[3..5].iter().all(u8::is_ascii_hexdigit)
}

/// SentencePiece scores from a rank-ordered merge list (see the module docs).
fn scores_from_merges(tokens: &[String], merges: &[String]) -> Vec<f32> {
    let ids: std::collections::HashMap<&str, usize> = tokens
        .iter()
        .enumerate()
        .map(|(i, t)| (t.as_str(), i))
        .collect();
    let floor = -(merges.len() as f32 + 1.0);
    let mut scores = vec![floor; tokens.len()];
    let mut merged = String::new();
    for (rank, m) in merges.iter().enumerate() {
        merged.clear();
        merged.extend(m.splitn(2, ' '));
        if let Some(&id) = ids.get(merged.as_str()) {
            if scores[id] == floor {
                scores[id] = -(rank as f32);
            }
        }
    }
    scores
}

/// Whether the SentencePiece-style `tokenizer.json` prepends `▁` to the text: a `Prepend`
/// normalizer, or a Metaspace pre-tokenizer whose prepend scheme is not `never`.
fn space_prefix(json: &Value) -> bool {
    fn any(v: &Value, f: &dyn Fn(&Value) -> bool) -> bool {
        f(v) || ["normalizers", "pretokenizers"]
            .iter()
            .filter_map(|k| v[*k].as_array())
            .flatten()
            .any(|c| any(c, f))
    }
    let prepend = |n: &Value| n["type"] == "Prepend" && n["prepend"] == super::spm::SPACE_MARKER;
    let metaspace = |p: &Value| {
        p["type"] == "Metaspace"
            && p["prepend_scheme"].as_str().unwrap_or("always") != "never"
            && p["add_prefix_space"].as_bool() != Some(false)
    };
    any(&json["normalizer"], &prepend) || any(&json["pre_tokenizer"], &metaspace)
}

/// Refuses a converted SentencePiece vocabulary whose tokenizer splits [`PROBE`] differently
/// from the `tokenizer.json` it came from.
fn same_split(t: &LlmTokenizer, v: &GgufVocab) -> Result<(), TokenizerError> {
    let rebuilt = super::spm::build(v)?;
    let ids = |tok: &tokenizers::Tokenizer| -> Result<Vec<u32>, TokenizerError> {
        Ok(tok
            .encode(PROBE, false)
            .map_err(TokenizerError::lib)?
            .get_ids()
            .to_vec())
    };
    let (want, got) = (ids(t.inner())?, ids(&rebuilt)?);
    if want != got {
        return Err(invalid(format!(
            "the SentencePiece vocabulary converted from this tokenizer.json splits a probe text \
             differently ({} tokens instead of {}): its normalizer or pre-tokenizer does more than \
             llama.cpp's `llama` vocabulary",
            got.len(),
            want.len()
        )));
    }
    Ok(())
}
