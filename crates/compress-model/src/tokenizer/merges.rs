//! Merge lists from untrusted vocabularies: checked before they reach the `tokenizers` crate,
//! and derived from SentencePiece scores in time and memory linear in the vocabulary.
//!
//! - [`check_merges`]: every merge `(l, r)` must name two vocabulary tokens whose
//!   concatenation is a token too. The `tokenizers` crate assumes the last (it copies `l + r`
//!   into a buffer as long as the longest token, and panics when it is longer); a GGUF file, a
//!   `tokenizer.json` or a container can say anything.
//! - [`spm_merges`]: the merges that make a BPE behave like SentencePiece's score-driven loop
//!   (see [`super::spm`]) are all splits of every token into two tokens. Splits are found with
//!   two byte tries, one of the tokens and one of the reversed tokens: walking a token through
//!   the first gives every prefix that is a token, through the second every suffix, so each
//!   token costs its length rather than its length squared (a 1 M-character token would
//!   otherwise take minutes). The merge strings are bounded too: their total size is checked
//!   against [`MERGE_BYTES_LIMIT`] before any is allocated.

use std::collections::{HashMap, HashSet};

use super::TokenizerError;

/// The most bytes the derived merge strings may take together (4 GiB of merge text would be
/// needed by no real vocabulary: Gemma 3's 262,144 tokens derive a few MiB).
pub const MERGE_BYTES_LIMIT: usize = 256 << 20;

fn invalid(msg: String) -> TokenizerError {
    TokenizerError::InvalidVocab(msg)
}

/// Checks that every merge names two tokens of `vocab` whose concatenation (after removing
/// `prefix` from the right half: a continuing-subword prefix) is a token too.
pub fn check_merges<'a>(
    vocab: &HashSet<&str>,
    merges: impl IntoIterator<Item = (&'a str, &'a str)>,
    prefix: &str,
) -> Result<(), TokenizerError> {
    let mut joined = String::new();
    for (i, (l, r)) in merges.into_iter().enumerate() {
        for half in [l, r] {
            if !vocab.contains(half) {
                return Err(invalid(format!(
                    "merge {i} (`{l} {r}`): `{half}` is not in the vocabulary"
                )));
            }
        }
        joined.clear();
        joined.push_str(l);
        joined.push_str(r.strip_prefix(prefix).unwrap_or(r));
        if !vocab.contains(joined.as_str()) {
            return Err(invalid(format!(
                "merge {i} (`{l} {r}`): the merged token `{joined}` is not in the vocabulary"
            )));
        }
    }
    Ok(())
}

/// A byte trie: `edges[(node, byte)] = child`, `token[node]` = the id of the token ending
/// there, if one does.
struct Trie {
    edges: HashMap<(u32, u8), u32>,
    token: Vec<Option<u32>>,
}

impl Trie {
    /// The trie of `words` (each a token's bytes, in id order).
    fn new<W: IntoIterator<Item = u8>>(words: impl Iterator<Item = W>) -> Self {
        let mut t = Trie {
            edges: HashMap::new(),
            token: vec![None],
        };
        for (id, word) in words.enumerate() {
            let mut node = 0u32;
            for b in word {
                let next = t.token.len() as u32;
                node = *t.edges.entry((node, b)).or_insert(next);
                if node == next {
                    t.token.push(None);
                }
            }
            t.token[node as usize] = Some(id as u32);
        }
        t
    }

    /// The prefixes of `bytes` that are tokens, as `(length, id)` by increasing length.
    fn prefixes(&self, bytes: impl Iterator<Item = u8>, out: &mut Vec<(usize, u32)>) {
        out.clear();
        let mut node = 0u32;
        for (k, b) in bytes.enumerate() {
            match self.edges.get(&(node, b)) {
                Some(&n) => node = n,
                None => return,
            }
            if let Some(id) = self.token[node as usize] {
                out.push((k + 1, id));
            }
        }
    }
}

/// Every split `(l, r)` of every token into two tokens, as `(merged id, left id, l, r)`
/// (see the module docs), refusing a vocabulary whose merge strings would exceed
/// [`MERGE_BYTES_LIMIT`].
pub fn spm_merges(tokens: &[String]) -> Result<Vec<(usize, usize, &str, &str)>, TokenizerError> {
    let forward = Trie::new(tokens.iter().map(|t| t.bytes()));
    let backward = Trie::new(tokens.iter().map(|t| t.bytes().rev()));
    let (mut pre, mut suf) = (Vec::new(), Vec::new());
    let mut splits = Vec::new();
    let mut bytes = 0usize;
    for (id, piece) in tokens.iter().enumerate() {
        let n = piece.len();
        forward.prefixes(piece.bytes(), &mut pre);
        backward.prefixes(piece.bytes().rev(), &mut suf);
        for &(k, left) in &pre {
            let is_suffix = suf.binary_search_by_key(&(n - k), |&(len, _)| len).is_ok();
            if k < n && is_suffix && piece.is_char_boundary(k) {
                let (l, r) = piece.split_at(k);
                bytes += n;
                if bytes > MERGE_BYTES_LIMIT {
                    return Err(invalid(format!(
                        "the SentencePiece merges this vocabulary implies exceed {MERGE_BYTES_LIMIT} \
                         bytes (at token {id} of {}, {n} bytes long)",
                        tokens.len()
                    )));
                }
                splits.push((id, left as usize, l, r));
            }
        }
    }
    Ok(splits)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn strings(v: &[&str]) -> Vec<String> {
        v.iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn splits_are_every_two_token_split() {
        let t = strings(&["a", "b", "ab", "abb", "bb", "é", "aé"]);
        let mut got: Vec<(&str, &str)> = spm_merges(&t)
            .unwrap()
            .into_iter()
            .map(|(_, _, l, r)| (l, r))
            .collect();
        got.sort();
        assert_eq!(
            got,
            vec![("a", "b"), ("a", "bb"), ("a", "é"), ("ab", "b"), ("b", "b")]
        );
    }

    #[test]
    fn a_long_token_is_linear_and_huge_merge_sets_are_refused() {
        // One token of 1 M characters: found in linear time (no split: "b" is not a token).
        let mut t = strings(&["a"]);
        t.push(format!("a{}", "b".repeat(1 << 20)));
        assert!(spm_merges(&t).unwrap().is_empty());
        // "a", "aa", …: n(n−1)/2 splits of up to n bytes each — about n³/3 bytes of merges.
        let t: Vec<String> = (1..=1200).map(|n| "a".repeat(n)).collect();
        let e = spm_merges(&t).unwrap_err().to_string();
        assert!(e.contains("exceed"), "{e}");
    }

    #[test]
    fn merges_must_name_tokens_and_their_concatenation() {
        let v: HashSet<&str> = ["a", "b", "ab", "abc"].into_iter().collect();
        assert!(check_merges(&v, [("a", "b")], "").is_ok());
        let e = check_merges(&v, [("a", "c")], "").unwrap_err().to_string();
        assert!(e.contains("`c` is not in the vocabulary"), "{e}");
        let e = check_merges(&v, [("b", "a")], "").unwrap_err().to_string();
        assert!(e.contains("merged token `ba`"), "{e}");
    }
}
