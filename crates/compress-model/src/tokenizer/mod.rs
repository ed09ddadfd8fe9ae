//! Tokenizers that encode text exactly as llama.cpp does for the same GGUF file.
//!
//! Two vocabulary families are built from GGUF metadata (`tokenizer.ggml.*`):
//!
//! - **SentencePiece BPE** (`tokenizer.ggml.model = "llama"`, Llama 1/2, TinyStories): a
//!   vocabulary with per-token scores and no merge list. llama.cpp merges the adjacent pair
//!   whose concatenation is the highest-scoring vocabulary entry, repeatedly, then falls
//!   back to `<0xNN>` byte tokens for characters outside the vocabulary. [`spm`] turns the
//!   scores into an ordered merge list so the `tokenizers` crate's BPE gives the same result.
//! - **GPT-2 byte-level BPE** (`tokenizer.ggml.model = "gpt2"`, SmolLM, Llama 3, Qwen2):
//!   explicit merges plus a pre-tokenizer regex named by `tokenizer.ggml.pre`; see [`bpe`].
//!
//! Hugging Face checkpoints bring their own `tokenizer.json`, loaded by
//! [`LlmTokenizer::from_file`]; a byte-level BPE one converts back to a GGUF vocabulary with
//! [`GgufVocab::from_hf_tokenizer`] (how such models are written as GGUF).
//!
//! ```no_run
//! # fn main() -> Result<(), Box<dyn std::error::Error>> {
//! use compress_model::load::GgufModel;
//! let model = GgufModel::open("stories260K.gguf")?;
//! let tok = model.tokenizer()?;
//! let ids = tok.encode("Once upon a time", true)?; // BOS first
//! assert_eq!(tok.decode(&ids)?, "Once upon a time");
//! # Ok(()) }
//! ```

pub mod bpe;
mod from_hf;
pub mod merges;
pub mod spm;

use std::path::Path;

/// Errors from building or running a tokenizer.
#[derive(Debug, thiserror::Error)]
pub enum TokenizerError {
    /// The vocabulary in the file is inconsistent (for example scores of the wrong length).
    #[error("invalid vocabulary: {0}")]
    InvalidVocab(String),
    /// `tokenizer.ggml.model` names a tokenizer family this crate does not implement.
    #[error("unsupported tokenizer model `{0}` (supported: llama, gpt2)")]
    UnsupportedModel(String),
    /// `tokenizer.ggml.pre` names a pre-tokenizer this crate does not implement.
    #[error("unsupported pre-tokenizer `{0}` (supported: {supported})", supported = bpe::SUPPORTED_PRE.join(", "))]
    UnsupportedPreTokenizer(String),
    /// A token id outside the vocabulary was passed to `decode`.
    #[error("token id {id} is outside the vocabulary of {vocab_size} tokens")]
    IdOutOfRange {
        /// The offending id.
        id: u32,
        /// Number of tokens in the vocabulary.
        vocab_size: usize,
    },
    /// An error from the `tokenizers` crate (loading `tokenizer.json`, encoding, decoding).
    #[error("{0}")]
    Library(String),
}

impl TokenizerError {
    fn lib(e: impl std::fmt::Display) -> Self {
        TokenizerError::Library(e.to_string())
    }
}

/// GGUF token types (`tokenizer.ggml.token_type`), as llama.cpp numbers them.
pub mod token_type {
    /// An ordinary vocabulary entry.
    pub const NORMAL: i32 = 1;
    /// The unknown token.
    pub const UNKNOWN: i32 = 2;
    /// A control token such as BOS or EOS; never produced from plain text, skipped on decode.
    pub const CONTROL: i32 = 3;
    /// A user-defined token matched verbatim in the text.
    pub const USER_DEFINED: i32 = 4;
    /// An unused slot.
    pub const UNUSED: i32 = 5;
    /// A `<0xNN>` byte-fallback token.
    pub const BYTE: i32 = 6;
}

/// The tokenizer metadata of a GGUF file (`tokenizer.ggml.*` keys), read by
/// [`crate::load::GgufModel`].
#[derive(Debug, Clone, Default, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct GgufVocab {
    /// `tokenizer.ggml.model`: `llama` (SentencePiece) or `gpt2` (byte-level BPE).
    pub model: String,
    /// `tokenizer.ggml.pre`: the pre-tokenizer of a `gpt2` vocabulary.
    pub pre: Option<String>,
    /// `tokenizer.ggml.tokens`: token strings, indexed by id.
    pub tokens: Vec<String>,
    /// `tokenizer.ggml.scores`: SentencePiece scores, one per token.
    pub scores: Option<Vec<f32>>,
    /// `tokenizer.ggml.token_type`: see [`token_type`].
    pub token_types: Option<Vec<i32>>,
    /// `tokenizer.ggml.merges`: `"left right"` pairs, highest priority first.
    pub merges: Option<Vec<String>>,
    /// Beginning-of-sequence id.
    pub bos_id: Option<u32>,
    /// End-of-sequence id.
    pub eos_id: Option<u32>,
    /// Unknown-token id.
    pub unk_id: Option<u32>,
    /// Padding id.
    pub pad_id: Option<u32>,
    /// Whether llama.cpp prepends BOS by default.
    pub add_bos: Option<bool>,
    /// Whether llama.cpp appends EOS by default.
    pub add_eos: Option<bool>,
    /// Whether a SentencePiece vocabulary prepends a space to the text (default true).
    pub add_space_prefix: Option<bool>,
}

impl GgufVocab {
    fn token_type(&self, id: usize) -> i32 {
        self.token_types
            .as_ref()
            .and_then(|t| t.get(id).copied())
            .unwrap_or(token_type::NORMAL)
    }

    fn check(&self) -> Result<(), TokenizerError> {
        let n = self.tokens.len();
        if n == 0 {
            return Err(TokenizerError::InvalidVocab(
                "the vocabulary is empty".into(),
            ));
        }
        if let Some(s) = &self.scores {
            if s.len() != n {
                return Err(TokenizerError::InvalidVocab(format!(
                    "{} scores for {n} tokens",
                    s.len()
                )));
            }
        }
        if let Some(t) = &self.token_types {
            if t.len() != n {
                return Err(TokenizerError::InvalidVocab(format!(
                    "{} token types for {n} tokens",
                    t.len()
                )));
            }
        }
        for (name, id) in [
            ("bos", self.bos_id),
            ("eos", self.eos_id),
            ("unk", self.unk_id),
            ("pad", self.pad_id),
        ] {
            if let Some(id) = id {
                if id as usize >= n {
                    return Err(TokenizerError::InvalidVocab(format!(
                        "{name} id {id} >= vocabulary size {n}"
                    )));
                }
            }
        }
        Ok(())
    }

    /// Token string → id, as the `tokenizers` BPE model wants it; duplicate strings are an error.
    fn vocab_map(&self) -> Result<tokenizers::models::bpe::Vocab, TokenizerError> {
        let map: tokenizers::models::bpe::Vocab = self
            .tokens
            .iter()
            .enumerate()
            .map(|(i, t)| (t.clone(), i as u32))
            .collect();
        if map.len() != self.tokens.len() {
            return Err(TokenizerError::InvalidVocab(
                "duplicate token strings".into(),
            ));
        }
        Ok(map)
    }

    /// Control and user-defined tokens, registered with the `tokenizers` crate as added tokens
    /// so that decode can skip control tokens and encode matches user-defined ones verbatim.
    fn added_tokens(&self) -> Vec<tokenizers::AddedToken> {
        let mut out = Vec::new();
        for (id, text) in self.tokens.iter().enumerate() {
            match self.token_type(id) {
                token_type::CONTROL => out.push(tokenizers::AddedToken::from(text.clone(), true)),
                token_type::USER_DEFINED => {
                    out.push(tokenizers::AddedToken::from(text.clone(), false))
                }
                _ => {}
            }
        }
        out
    }
}

/// The special-token ids of a tokenizer and whether BOS is prepended by default (`Default`:
/// none, and no BOS).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct SpecialTokens {
    /// Beginning-of-sequence id.
    pub bos: Option<u32>,
    /// End-of-sequence id.
    pub eos: Option<u32>,
    /// Unknown-token id.
    pub unk: Option<u32>,
    /// Padding id.
    pub pad: Option<u32>,
    /// Whether BOS is prepended by default.
    pub add_bos: bool,
}

/// A tokenizer plus the special-token ids a language model needs.
#[derive(Clone)]
pub struct LlmTokenizer {
    inner: tokenizers::Tokenizer,
    bos: Option<u32>,
    eos: Option<u32>,
    unk: Option<u32>,
    pad: Option<u32>,
    add_bos_default: bool,
    /// The GGUF vocabulary it was built from, kept so the model can be written back to GGUF
    /// or to the container with the exact same tokenizer.
    gguf_vocab: Option<std::sync::Arc<GgufVocab>>,
}

impl std::fmt::Debug for LlmTokenizer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LlmTokenizer")
            .field("vocab_size", &self.vocab_size())
            .field("bos", &self.bos)
            .field("eos", &self.eos)
            .finish()
    }
}

impl LlmTokenizer {
    /// Builds the tokenizer that llama.cpp would use for this GGUF vocabulary.
    pub fn from_gguf_vocab(vocab: &GgufVocab) -> Result<Self, TokenizerError> {
        vocab.check()?;
        let mut inner = match vocab.model.as_str() {
            "llama" => spm::build(vocab)?,
            "gpt2" => bpe::build(vocab)?,
            other => return Err(TokenizerError::UnsupportedModel(other.to_string())),
        };
        let added = vocab.added_tokens();
        if !added.is_empty() {
            inner.add_tokens(added).map_err(TokenizerError::lib)?;
        }
        Ok(Self {
            inner,
            bos: vocab.bos_id,
            eos: vocab.eos_id,
            unk: vocab.unk_id,
            pad: vocab.pad_id,
            add_bos_default: vocab.add_bos.unwrap_or(vocab.model == "llama"),
            gguf_vocab: Some(std::sync::Arc::new(vocab.clone())),
        })
    }

    /// Loads a Hugging Face `tokenizer.json`. BOS and EOS are guessed from the common special
    /// token names (`<s>`, `</s>`, `<|begin_of_text|>`, `<|endoftext|>`, ...); override them
    /// with [`LlmTokenizer::with_special_ids`] when the model's `config.json` says otherwise.
    pub fn from_file(path: impl AsRef<Path>) -> Result<Self, TokenizerError> {
        let path = path.as_ref();
        let text = compress_core::input::read_text(path, compress_core::input::TEXT_LIMIT)
            .map_err(|e| TokenizerError::Library(format!("{}: {e}", path.display())))?;
        let inner = parse_tokenizer_json(&text)
            .map_err(|e| TokenizerError::Library(format!("{}: {e}", path.display())))?;
        Ok(Self::from_tokenizer(inner))
    }

    /// Wraps a `tokenizers` tokenizer, guessing BOS, EOS and UNK as [`Self::from_file`] does.
    fn from_tokenizer(inner: tokenizers::Tokenizer) -> Self {
        let find = |names: &[&str]| names.iter().find_map(|n| inner.token_to_id(n));
        let bos = find(&["<s>", "<|begin_of_text|>", "<|endoftext|>", "<|im_start|>"]);
        let eos = find(&["</s>", "<|end_of_text|>", "<|endoftext|>", "<|im_end|>"]);
        let unk = find(&["<unk>"]);
        Self {
            inner,
            bos,
            eos,
            unk,
            pad: None,
            add_bos_default: bos.is_some(),
            gguf_vocab: None,
        }
    }

    /// A tokenizer from the text of a `tokenizer.json` and explicit special tokens (how the
    /// container format stores a Hugging Face tokenizer).
    pub fn from_json_str(json: &str, special: SpecialTokens) -> Result<Self, TokenizerError> {
        let inner = parse_tokenizer_json(json)?;
        let mut t = Self::from_tokenizer(inner);
        t.bos = special.bos;
        t.eos = special.eos;
        t.unk = special.unk;
        t.pad = special.pad;
        t.add_bos_default = special.add_bos;
        Ok(t)
    }

    /// The special-token ids and the BOS default, as [`Self::from_json_str`] takes them.
    pub fn special_tokens(&self) -> SpecialTokens {
        SpecialTokens {
            bos: self.bos,
            eos: self.eos,
            unk: self.unk,
            pad: self.pad,
            add_bos: self.add_bos_default,
        }
    }

    /// The GGUF vocabulary this tokenizer was built from (`None` for a `tokenizer.json`).
    pub fn gguf_vocab(&self) -> Option<&GgufVocab> {
        self.gguf_vocab.as_deref()
    }

    /// The tokenizer as `tokenizer.json` text.
    pub fn to_json(&self) -> Result<String, TokenizerError> {
        self.inner.to_string(false).map_err(TokenizerError::lib)
    }

    /// Replaces the BOS and EOS ids (for example with `bos_token_id` / `eos_token_id` from a
    /// checkpoint's `config.json`). `None` keeps the current id.
    pub fn with_special_ids(mut self, bos: Option<u32>, eos: Option<u32>) -> Self {
        self.bos = bos.or(self.bos);
        self.eos = eos.or(self.eos);
        self
    }

    /// Encodes `text` into token ids, prepending BOS when `add_bos` is true and the vocabulary
    /// has one. Special tokens written in the text (`<|im_start|>`) are matched verbatim.
    pub fn encode(&self, text: &str, add_bos: bool) -> Result<Vec<u32>, TokenizerError> {
        // A panic inside the `tokenizers` crate (a tokenizer.json it accepted but cannot run)
        // is an error here, not a crash of the caller.
        let enc = std::panic::catch_unwind(|| self.inner.encode(text, false))
            .map_err(|_| {
                TokenizerError::Library("the tokenizers crate failed on this text".into())
            })?
            .map_err(TokenizerError::lib)?;
        let mut ids = Vec::with_capacity(enc.len() + 1);
        if add_bos {
            ids.extend(self.bos);
        }
        ids.extend_from_slice(enc.get_ids());
        Ok(ids)
    }

    /// Decodes ids into text, skipping control tokens (BOS, EOS). A SentencePiece vocabulary
    /// drops the one space it prepended on encoding, so `decode(encode(t)) == t` for plain text.
    pub fn decode(&self, ids: &[u32]) -> Result<String, TokenizerError> {
        let n = self.vocab_size();
        if let Some(&id) = ids.iter().find(|&&id| id as usize >= n) {
            return Err(TokenizerError::IdOutOfRange { id, vocab_size: n });
        }
        std::panic::catch_unwind(|| self.inner.decode(ids, true))
            .map_err(|_| {
                TokenizerError::Library("the tokenizers crate failed on these ids".into())
            })?
            .map_err(TokenizerError::lib)
    }

    /// The vocabulary string of one token (`▁the`, `Ġthe`, `<0x0A>`), if `id` is in range.
    pub fn token_text(&self, id: u32) -> Option<String> {
        self.inner.id_to_token(id)
    }

    /// Beginning-of-sequence id.
    pub fn bos_id(&self) -> Option<u32> {
        self.bos
    }

    /// End-of-sequence id, where generation stops.
    pub fn eos_id(&self) -> Option<u32> {
        self.eos
    }

    /// Unknown-token id.
    pub fn unk_id(&self) -> Option<u32> {
        self.unk
    }

    /// Padding id, if the vocabulary names one.
    pub fn pad_id(&self) -> Option<u32> {
        self.pad
    }

    /// Whether the source format asks for BOS to be prepended by default.
    pub fn add_bos_default(&self) -> bool {
        self.add_bos_default
    }

    /// Number of token ids, added tokens included.
    pub fn vocab_size(&self) -> usize {
        self.inner.get_vocab_size(true)
    }

    /// The underlying `tokenizers` tokenizer, for saving it as `tokenizer.json` or for features
    /// not wrapped here (offsets, batch encoding).
    pub fn inner(&self) -> &tokenizers::Tokenizer {
        &self.inner
    }
}

/// Checks a `TemplateProcessing` post-processor (also inside a `Sequence` of them): the
/// single-sequence template may only name sequence `A`, the pair template `A` and `B`, and every
/// special token a template names must be defined — the `tokenizers` crate indexes out of
/// bounds otherwise, at encode time.
fn check_templates(p: &serde_json::Value) -> Result<(), TokenizerError> {
    let bad = |m: String| TokenizerError::InvalidVocab(format!("post_processor: {m}"));
    match p["type"].as_str() {
        Some("Sequence") => {
            for q in p["processors"].as_array().into_iter().flatten() {
                check_templates(q)?;
            }
        }
        Some("TemplateProcessing") => {
            let specials = &p["special_tokens"];
            for (which, allowed) in [("single", &["A"][..]), ("pair", &["A", "B"][..])] {
                for piece in p[which].as_array().into_iter().flatten() {
                    if let Some(id) = piece["Sequence"]["id"].as_str() {
                        if !allowed.contains(&id) {
                            return Err(bad(format!(
                                "the {which} template names sequence `{id}` (it has {})",
                                allowed.join(" and ")
                            )));
                        }
                    }
                    if let Some(id) = piece["SpecialToken"]["id"].as_str() {
                        let ids = specials[id]["ids"].as_array();
                        if ids.is_none_or(|v| v.is_empty()) {
                            return Err(bad(format!(
                                "the {which} template names the undefined special token `{id}`"
                            )));
                        }
                    }
                }
            }
        }
        _ => {}
    }
    Ok(())
}

/// Parses `tokenizer.json` text, first checking a BPE model's merges ([`merges::check_merges`]:
/// the `tokenizers` crate panics on merges whose concatenation is not a token) and containing
/// any other panic of the crate as an error, so none crosses this library's boundary.
fn parse_tokenizer_json(text: &str) -> Result<tokenizers::Tokenizer, TokenizerError> {
    let json: serde_json::Value = serde_json::from_str(text).map_err(TokenizerError::lib)?;
    let model = &json["model"];
    if model["type"] == "BPE" {
        let vocab: std::collections::HashSet<&str> = model["vocab"]
            .as_object()
            .map(|v| v.keys().map(String::as_str).collect())
            .unwrap_or_default();
        let pairs: Vec<(&str, &str)> = model["merges"]
            .as_array()
            .map(|m| {
                m.iter()
                    .filter_map(|m| match m {
                        serde_json::Value::String(s) => s.split_once(' '),
                        serde_json::Value::Array(p) => {
                            Some((p.first()?.as_str()?, p.get(1)?.as_str()?))
                        }
                        _ => None,
                    })
                    .collect()
            })
            .unwrap_or_default();
        let prefix = model["continuing_subword_prefix"].as_str().unwrap_or("");
        merges::check_merges(&vocab, pairs, prefix)?;
    }
    check_templates(&json["post_processor"])?;
    std::panic::catch_unwind(|| text.parse::<tokenizers::Tokenizer>())
        .map_err(|_| {
            TokenizerError::Library("the tokenizers crate failed on this tokenizer.json".into())
        })?
        .map_err(TokenizerError::lib)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tiny_spm() -> GgufVocab {
        let tokens = [
            "<unk>", "<s>", "</s>", "▁", "a", "b", "▁a", "ab", "▁ab", "<0x0A>", "<0x21>",
        ];
        let types = [2, 3, 3, 1, 1, 1, 1, 1, 1, 6, 6];
        GgufVocab {
            model: "llama".into(),
            tokens: tokens.iter().map(|s| s.to_string()).collect(),
            scores: Some(vec![
                0.0, 0.0, 0.0, -1.0, -2.0, -3.0, -4.0, -5.0, -0.5, 0.0, 0.0,
            ]),
            token_types: Some(types.to_vec()),
            bos_id: Some(1),
            eos_id: Some(2),
            unk_id: Some(0),
            ..Default::default()
        }
    }

    #[test]
    fn spm_merges_by_score_and_falls_back_to_bytes() {
        let tok = LlmTokenizer::from_gguf_vocab(&tiny_spm()).unwrap();
        // " ab": "▁ab" (score -0.5) wins over "▁a" + "b"; "!" is outside the vocab -> <0x21>.
        assert_eq!(tok.encode("ab!", true).unwrap(), vec![1, 8, 10]);
        assert_eq!(tok.decode(&[1, 8, 10, 2]).unwrap(), "ab!");
        assert_eq!(tok.encode("ab\n", false).unwrap(), vec![8, 9]);
    }

    #[test]
    fn bad_vocab_is_rejected() {
        let mut v = tiny_spm();
        v.scores = Some(vec![0.0; 3]);
        assert!(matches!(
            LlmTokenizer::from_gguf_vocab(&v),
            Err(TokenizerError::InvalidVocab(_))
        ));
        let mut v = tiny_spm();
        v.bos_id = Some(99);
        assert!(matches!(
            LlmTokenizer::from_gguf_vocab(&v),
            Err(TokenizerError::InvalidVocab(_))
        ));
        let mut v = tiny_spm();
        v.model = "bert".into();
        assert!(matches!(
            LlmTokenizer::from_gguf_vocab(&v),
            Err(TokenizerError::UnsupportedModel(_))
        ));
    }

    #[test]
    fn decode_rejects_ids_out_of_range() {
        let tok = LlmTokenizer::from_gguf_vocab(&tiny_spm()).unwrap();
        let e = tok.decode(&[4, 11]).unwrap_err();
        assert!(
            matches!(
                e,
                TokenizerError::IdOutOfRange {
                    id: 11,
                    vocab_size: 11
                }
            ),
            "{e}"
        );
    }
}
