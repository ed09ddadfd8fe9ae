//! SentencePiece-BPE vocabularies (`tokenizer.ggml.model = "llama"`) as a `tokenizers` BPE.
//!
//! SentencePiece's BPE mode (Kudo & Richardson, 2018, <https://arxiv.org/abs/1808.06226>) stores
//! no merge list: it repeatedly joins the adjacent pair of pieces whose concatenation is the
//! vocabulary entry with the highest score (ties: leftmost pair first), and after merging
//! spells any character that is not in the vocabulary as `<0xNN>` byte tokens. llama.cpp
//! implements exactly this (`llm_tokenizer_spm`).
//!
//! A rank-ordered merge list reproduces it: for every vocabulary entry `t` and every split of
//! `t` into two entries `l + r`, emit the merge `(l, r)`, ordered by the score of `t`
//! (highest first). A BPE that always applies the lowest-ranked available merge then makes
//! the same choices as the score-driven loop. Text is normalized the way llama.cpp does it:
//! a leading space (when `add_space_prefix`, the default) and every space replaced by `▁`.

use tokenizers::decoders::byte_fallback::ByteFallback;
use tokenizers::decoders::fuse::Fuse;
use tokenizers::decoders::sequence::Sequence as DecoderSequence;
use tokenizers::decoders::strip::Strip;
use tokenizers::models::bpe::BPE;
use tokenizers::normalizers::{Prepend, Replace, Sequence as NormalizerSequence};
use tokenizers::{DecoderWrapper, NormalizerWrapper, Tokenizer};

use super::{GgufVocab, TokenizerError};

/// The SentencePiece word-boundary marker that stands for a space.
pub const SPACE_MARKER: &str = "\u{2581}";

/// Derives the rank-ordered merge list from SentencePiece scores (see the module docs), in
/// time linear in the vocabulary's bytes ([`super::merges::spm_merges`]).
pub fn merges_from_scores(
    tokens: &[String],
    scores: &[f32],
) -> Result<Vec<(String, String)>, TokenizerError> {
    let mut merges = super::merges::spm_merges(tokens)?;
    // By the merged token's score (highest first), then its id, then the left half's id.
    merges.sort_by(|a, b| {
        scores[b.0]
            .total_cmp(&scores[a.0])
            .then(a.0.cmp(&b.0))
            .then(a.1.cmp(&b.1))
    });
    Ok(merges
        .into_iter()
        .map(|(_, _, l, r)| (l.to_string(), r.to_string()))
        .collect())
}

/// Builds the tokenizer for a SentencePiece-BPE GGUF vocabulary.
pub fn build(vocab: &GgufVocab) -> Result<Tokenizer, TokenizerError> {
    let lib = TokenizerError::lib;
    let scores = vocab.scores.as_ref().ok_or_else(|| {
        TokenizerError::InvalidVocab("a `llama` vocabulary needs `tokenizer.ggml.scores`".into())
    })?;
    let map = vocab.vocab_map()?;
    let merges = merges_from_scores(&vocab.tokens, scores)?;
    let mut builder = BPE::builder()
        .vocab_and_merges(map, merges)
        .byte_fallback(true)
        .fuse_unk(true);
    if let Some(unk) = vocab.unk_id {
        builder = builder.unk_token(vocab.tokens[unk as usize].clone());
    }
    let model = builder.build().map_err(lib)?;

    let prefix = vocab.add_space_prefix.unwrap_or(true);
    let mut normalizers: Vec<NormalizerWrapper> = Vec::new();
    if prefix {
        normalizers.push(Prepend::new(SPACE_MARKER.into()).into());
    }
    normalizers.push(Replace::new(" ", SPACE_MARKER).map_err(lib)?.into());
    let mut decoders: Vec<DecoderWrapper> = vec![
        Replace::new(SPACE_MARKER, " ").map_err(lib)?.into(),
        ByteFallback::new().into(),
        Fuse::new().into(),
    ];
    if prefix {
        decoders.push(Strip::new(' ', 1, 0).into());
    }

    let mut tok = Tokenizer::new(model);
    tok.with_normalizer(Some(NormalizerSequence::new(normalizers)))
        .map_err(lib)?;
    tok.with_decoder(Some(DecoderSequence::new(decoders)));
    Ok(tok)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn merges_are_ordered_by_merged_score() {
        let tokens: Vec<String> = ["a", "b", "c", "ab", "bc", "abc"]
            .iter()
            .map(|s| s.to_string())
            .collect();
        let scores = [0.0, 0.0, 0.0, -3.0, -1.0, -2.0];
        let m = merges_from_scores(&tokens, &scores).unwrap();
        let pairs: Vec<(&str, &str)> = m.iter().map(|(l, r)| (l.as_str(), r.as_str())).collect();
        assert_eq!(
            pairs,
            vec![("b", "c"), ("a", "bc"), ("ab", "c"), ("a", "b")]
        );
    }

    #[test]
    fn multibyte_pieces_split_on_char_boundaries() {
        let tokens: Vec<String> = ["é", "▁", "▁é"].iter().map(|s| s.to_string()).collect();
        let m = merges_from_scores(&tokens, &[0.0, 0.0, -1.0]).unwrap();
        assert_eq!(m, vec![("▁".to_string(), "é".to_string())]);
    }
}
