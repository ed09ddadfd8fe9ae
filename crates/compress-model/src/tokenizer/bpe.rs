//! GPT-2 style byte-level BPE vocabularies (`tokenizer.ggml.model = "gpt2"`).
//!
//! Byte-level BPE (Radford et al., 2019; Sennrich et al., 2016,
//! <https://arxiv.org/abs/1508.07909>) first splits text into words with a regular expression
//! (the *pre-tokenizer*), maps every byte of a word to a printable character (space becomes
//! `Ġ`), and then applies the ranked merges stored in `tokenizer.ggml.merges`. The regular
//! expressions differ between model families; GGUF names them in `tokenizer.ggml.pre`, and the
//! ones below are the ones llama.cpp uses for those names.

use tokenizers::decoders::byte_level::ByteLevel as ByteLevelDecoder;
use tokenizers::models::bpe::BPE;
use tokenizers::pre_tokenizers::byte_level::ByteLevel;
use tokenizers::pre_tokenizers::digits::Digits;
use tokenizers::pre_tokenizers::sequence::Sequence;
use tokenizers::pre_tokenizers::split::{Split, SplitPattern};
use tokenizers::{PreTokenizerWrapper, SplitDelimiterBehavior, Tokenizer};

use super::{GgufVocab, TokenizerError};

/// `tokenizer.ggml.pre` values this module implements.
pub const SUPPORTED_PRE: &[&str] = &[
    "gpt2",
    "gpt-2",
    "smollm",
    "llama3",
    "llama-bpe",
    "llama-v3",
    "qwen2",
];

/// Llama 3's word-splitting expression: letters with at most one leading non-letter, numbers
/// in groups of up to three digits, punctuation runs, newlines.
const LLAMA3_REGEX: &str = r"(?:'[sS]|'[tT]|'[rR][eE]|'[vV][eE]|'[mM]|'[lL][lL]|'[dD])|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+";

/// Qwen2's expression: as Llama 3's, but every digit is its own word.
const QWEN2_REGEX: &str = r"(?:'[sS]|'[tT]|'[rR][eE]|'[vV][eE]|'[mM]|'[lL][lL]|'[dD])|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+";

/// The pre-tokenizer pipeline for a `tokenizer.ggml.pre` name (absent means GPT-2's).
pub fn pre_tokenizer(pre: Option<&str>) -> Result<Vec<PreTokenizerWrapper>, TokenizerError> {
    let lib = TokenizerError::lib;
    // ByteLevel(add_prefix_space, trim_offsets, use_regex): with use_regex it applies GPT-2's
    // expression itself; after a custom Split it only maps bytes to characters.
    let split = |re: &str| -> Result<PreTokenizerWrapper, TokenizerError> {
        Ok(Split::new(
            SplitPattern::Regex(re.to_string()),
            SplitDelimiterBehavior::Isolated,
            false,
        )
        .map_err(lib)?
        .into())
    };
    Ok(match pre.unwrap_or("gpt2") {
        "gpt2" | "gpt-2" => vec![ByteLevel::new(false, true, true).into()],
        "smollm" => vec![
            Digits::new(true).into(),
            ByteLevel::new(false, true, true).into(),
        ],
        "llama3" | "llama-bpe" | "llama-v3" => vec![
            split(LLAMA3_REGEX)?,
            ByteLevel::new(false, true, false).into(),
        ],
        "qwen2" => vec![
            split(QWEN2_REGEX)?,
            ByteLevel::new(false, true, false).into(),
        ],
        other => return Err(TokenizerError::UnsupportedPreTokenizer(other.to_string())),
    })
}

/// Builds the tokenizer for a byte-level BPE GGUF vocabulary.
pub fn build(vocab: &GgufVocab) -> Result<Tokenizer, TokenizerError> {
    let lib = TokenizerError::lib;
    let raw = vocab.merges.as_ref().ok_or_else(|| {
        TokenizerError::InvalidVocab("a `gpt2` vocabulary needs `tokenizer.ggml.merges`".into())
    })?;
    let mut merges = Vec::with_capacity(raw.len());
    for (i, m) in raw.iter().enumerate() {
        let (l, r) = m.split_once(' ').ok_or_else(|| {
            TokenizerError::InvalidVocab(format!(
                "merge {i} `{m}` is not two space-separated tokens"
            ))
        })?;
        merges.push((l.to_string(), r.to_string()));
    }
    let map = vocab.vocab_map()?;
    let known: std::collections::HashSet<&str> = vocab.tokens.iter().map(String::as_str).collect();
    super::merges::check_merges(
        &known,
        merges.iter().map(|(l, r)| (l.as_str(), r.as_str())),
        "",
    )?;
    let pre = pre_tokenizer(vocab.pre.as_deref())?;
    let ignore_merges = matches!(
        vocab.pre.as_deref(),
        Some("llama3" | "llama-bpe" | "llama-v3")
    );
    let model = BPE::builder()
        .vocab_and_merges(map, merges)
        .ignore_merges(ignore_merges)
        .build()
        .map_err(lib)?;
    let mut tok = Tokenizer::new(model);
    tok.with_pre_tokenizer(Some(Sequence::new(pre)));
    tok.with_decoder(Some(ByteLevelDecoder::default()));
    Ok(tok)
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokenizers::{OffsetReferential, OffsetType, PreTokenizedString, PreTokenizer};

    fn words(pre: &str, text: &str) -> Vec<String> {
        let seq = Sequence::new(pre_tokenizer(Some(pre)).unwrap());
        let mut s = PreTokenizedString::from(text);
        seq.pre_tokenize(&mut s).unwrap();
        s.get_splits(OffsetReferential::Original, OffsetType::Char)
            .into_iter()
            .map(|(w, _, _)| w.to_string())
            .collect()
    }

    #[test]
    fn pre_tokenizers_split_numbers_as_their_models_do() {
        // Words are shown after the byte-to-character map (space -> Ġ).
        assert_eq!(words("gpt2", "in 2024!"), ["in", "Ġ2024", "!"]);
        assert_eq!(
            words("smollm", "in 2024!"),
            ["in", "Ġ", "2", "0", "2", "4", "!"]
        );
        assert_eq!(words("llama3", "in 20245"), ["in", "Ġ", "202", "45"]);
        assert_eq!(words("qwen2", "in 24"), ["in", "Ġ", "2", "4"]);
    }

    #[test]
    fn unknown_pre_tokenizer_is_an_error() {
        let e = pre_tokenizer(Some("jais-v9")).unwrap_err();
        assert!(
            e.to_string().contains("jais-v9") && e.to_string().contains("smollm"),
            "{e}"
        );
    }
}
