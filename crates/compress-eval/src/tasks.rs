//! Zero-shot multiple-choice tasks and LAMBADA, in the file format of `../shared/data/tasks`.
//!
//! Each line is one question: `requests[i]` is choice `i` (a context and a continuation) and
//! `gold` the right one. A choice is scored by the summed log-probability of its continuation
//! tokens given the context (Brown et al. 2020's zero-shot protocol, as in lm-evaluation-harness):
//! `acc` takes the argmax of that sum, `acc_norm` the argmax of the sum divided by the
//! continuation's length in bytes. The choices of one question share their context and are run
//! as one padded batch. LAMBADA (Paperno et al. 2016) has a single continuation, the last word:
//! it is right when greedy decoding reproduces every one of its tokens; we also report the
//! perplexity of the target tokens.
//!
//! Standard errors are binomial, `√(p(1−p)/n)`, with 95% intervals `p ± 1.96·se`.

use std::path::Path;

use serde::{Deserialize, Serialize};

use crate::stats::{log_softmax, MeanCi, Z95};
use crate::EvalError;

/// One choice: the text before it and the text it adds.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Request {
    /// Shared prefix (question, passage).
    pub context: String,
    /// The choice's text, usually starting with a space.
    pub continuation: String,
}

/// One question of a task file.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TaskItem {
    /// Identifier within the source dataset.
    pub doc_id: u64,
    /// Index of the right choice in `requests`.
    pub gold: usize,
    /// The choices.
    pub requests: Vec<Request>,
}

/// Reads a task file (JSON lines), keeping at most `limit` questions.
pub fn load_jsonl(
    path: impl AsRef<Path>,
    limit: Option<usize>,
) -> Result<Vec<TaskItem>, EvalError> {
    let path = path.as_ref();
    let text = std::fs::read_to_string(path)
        .map_err(|e| EvalError::InvalidInput(format!("cannot read {}: {e}", path.display())))?;
    let mut items = Vec::new();
    for (i, line) in text.lines().filter(|l| !l.trim().is_empty()).enumerate() {
        if limit.is_some_and(|l| items.len() >= l) {
            break;
        }
        let item: TaskItem = serde_json::from_str(line).map_err(|e| {
            EvalError::InvalidInput(format!("{} line {}: {e}", path.display(), i + 1))
        })?;
        if item.requests.is_empty() || item.gold >= item.requests.len() {
            return Err(EvalError::InvalidInput(format!(
                "{} line {}: gold {} with {} choices",
                path.display(),
                i + 1,
                item.gold,
                item.requests.len()
            )));
        }
        items.push(item);
    }
    Ok(items)
}

/// A model that scores several token sequences at once.
pub trait BatchScorer {
    /// Logits `[len_i, vocab]` (row-major) for each sequence; sequences may differ in length.
    fn batch_logits(&self, seqs: &[Vec<u32>]) -> Result<Vec<Vec<f32>>, EvalError>;

    /// Logits `[len_i, vocab]` of each `suffixes[i]` continuing the shared `prefix`: row `j`
    /// follows `prefix ++ suffixes[i][..=j]`. The default scores the concatenations with
    /// [`Self::batch_logits`] and drops the prefix rows; a model with a KV cache runs the prefix
    /// once (the choices of a question share their context).
    fn prefix_logits(
        &self,
        prefix: &[u32],
        suffixes: &[Vec<u32>],
    ) -> Result<Vec<Vec<f32>>, EvalError> {
        let seqs: Vec<Vec<u32>> = suffixes
            .iter()
            .map(|s| prefix.iter().chain(s).copied().collect())
            .collect();
        let v = self.vocab();
        Ok(self
            .batch_logits(&seqs)?
            .into_iter()
            .map(|rows| rows[prefix.len() * v..].to_vec())
            .collect())
    }
    /// Vocabulary size.
    fn vocab(&self) -> usize;
}

/// A tokenizer as the task scorer needs it.
pub trait Tokenize {
    /// Token ids of `text`, with BOS first.
    fn tokens(&self, text: &str) -> Result<Vec<u32>, EvalError>;
}

/// How one continuation scored.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct ChoiceScore {
    /// Σ ln p(continuation token | everything before it).
    pub logprob: f64,
    /// Whether every continuation token is the model's argmax.
    pub greedy: bool,
    /// Number of continuation tokens.
    pub tokens: usize,
}

/// Splits `context + continuation` into the full token sequence and the index where the
/// continuation starts: after the longest common prefix with the context's own tokens, and
/// never later than the last token (a continuation has at least one token).
pub fn split_request(tok: &dyn Tokenize, r: &Request) -> Result<(Vec<u32>, usize), EvalError> {
    let ctx = tok.tokens(&r.context)?;
    let full = tok.tokens(&format!("{}{}", r.context, r.continuation))?;
    if full.len() < 2 {
        return Err(EvalError::InvalidInput(format!(
            "request {:?} tokenizes to fewer than 2 tokens",
            r.context
        )));
    }
    let common = ctx.iter().zip(&full).take_while(|(a, b)| a == b).count();
    let start = common.clamp(1, full.len() - 1);
    Ok((full, start))
}

/// Scores every choice of one question in one batch, the shared context run once
/// ([`BatchScorer::prefix_logits`]).
pub fn score_item(
    model: &dyn BatchScorer,
    tok: &dyn Tokenize,
    item: &TaskItem,
) -> Result<Vec<ChoiceScore>, EvalError> {
    let split: Vec<(Vec<u32>, usize)> = item
        .requests
        .iter()
        .map(|r| split_request(tok, r))
        .collect::<Result<_, _>>()?;
    // Every choice's tokens agree with its context's up to its `start`, so with one shared
    // context the first `min(start) − 1` tokens are one shared prefix (the last context token
    // stays in each suffix: its logits score the first continuation token).
    let Some((first, _)) = split.first() else {
        return Err(EvalError::InvalidInput(format!(
            "question {} has no choices",
            item.doc_id
        )));
    };
    // Capped by what all the sequences share, should the choices' contexts differ.
    let common = split
        .iter()
        .map(|(s, _)| s.iter().zip(first).take_while(|(a, b)| a == b).count())
        .min()
        .unwrap_or(0);
    let prefix = split
        .iter()
        .map(|(_, start)| start - 1)
        .min()
        .unwrap_or(0)
        .min(common);
    let suffixes: Vec<Vec<u32>> = split.iter().map(|(s, _)| s[prefix..].to_vec()).collect();
    let logits = model.prefix_logits(&first[..prefix], &suffixes)?;
    let v = model.vocab();
    let mut out = Vec::with_capacity(split.len());
    for ((ids, start), rows) in split.iter().zip(&logits) {
        let (mut logprob, mut greedy) = (0.0, true);
        for t in *start..ids.len() {
            let row = &rows[(t - 1 - prefix) * v..(t - prefix) * v];
            let lp = log_softmax(row);
            logprob += lp[ids[t] as usize];
            let top = lp
                .iter()
                .enumerate()
                .max_by(|a, b| a.1.total_cmp(b.1).then(b.0.cmp(&a.0)))
                .map(|(i, _)| i);
            greedy &= top == Some(ids[t] as usize);
        }
        if !logprob.is_finite() {
            return Err(EvalError::NonFinite(format!(
                "log-probability of a choice of doc {}",
                item.doc_id
            )));
        }
        out.push(ChoiceScore {
            logprob,
            greedy,
            tokens: ids.len() - start,
        });
    }
    Ok(out)
}

/// Accuracy of a task.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TaskReport {
    /// Questions scored.
    pub n: usize,
    /// Fraction right by summed log-probability (for LAMBADA: greedy reproduces the word).
    pub acc: MeanCi,
    /// Fraction right by log-probability per byte of continuation (equal to `acc` for LAMBADA).
    pub acc_norm: MeanCi,
    /// Perplexity of the continuation tokens of the gold choices (LAMBADA's second metric).
    pub gold_ppl: f64,
    /// Per question, whether `acc` counted it right — the input of a paired test
    /// ([`crate::compare::mcnemar`]) against another model on the same questions.
    pub correct: Vec<bool>,
}

/// Index of the largest value (ties go to the first).
fn argmax(xs: impl Iterator<Item = f64>) -> usize {
    xs.enumerate()
        .fold((0, f64::NEG_INFINITY), |best, (i, x)| {
            if x > best.1 {
                (i, x)
            } else {
                best
            }
        })
        .0
}

/// Proportion of 0/1 outcomes with the textbook binomial standard error √(p(1−p)/n).
fn binomial(hits: &[f64]) -> MeanCi {
    let n = hits.len() as f64;
    let p = hits.iter().sum::<f64>() / n;
    let se = (p * (1.0 - p) / n).sqrt();
    MeanCi {
        mean: p,
        se,
        lo: p - Z95 * se,
        hi: p + Z95 * se,
    }
}

/// Evaluates a task; `progress(done, total)` after each question. Single-choice items (LAMBADA)
/// count as right when greedy decoding reproduces the continuation.
pub fn evaluate(
    model: &dyn BatchScorer,
    tok: &dyn Tokenize,
    items: &[TaskItem],
    mut progress: impl FnMut(usize, usize),
) -> Result<TaskReport, EvalError> {
    if items.is_empty() {
        return Err(EvalError::InvalidInput("no questions to evaluate".into()));
    }
    let (mut acc, mut acc_norm, mut nll, mut gold_tokens) = (Vec::new(), Vec::new(), 0.0, 0usize);
    for (i, item) in items.iter().enumerate() {
        let scores = score_item(model, tok, item)?;
        let (a, an) = if scores.len() == 1 {
            let right = f64::from(u8::from(scores[0].greedy));
            (right, right)
        } else {
            let raw = argmax(scores.iter().map(|s| s.logprob));
            let per_byte = argmax(
                scores
                    .iter()
                    .zip(&item.requests)
                    .map(|(s, r)| s.logprob / r.continuation.len().max(1) as f64),
            );
            (
                f64::from(u8::from(raw == item.gold)),
                f64::from(u8::from(per_byte == item.gold)),
            )
        };
        acc.push(a);
        acc_norm.push(an);
        nll -= scores[item.gold].logprob;
        gold_tokens += scores[item.gold].tokens;
        progress(i + 1, items.len());
    }
    Ok(TaskReport {
        n: items.len(),
        acc: binomial(&acc),
        acc_norm: binomial(&acc_norm),
        gold_ppl: (nll / gold_tokens as f64).exp(),
        correct: acc.iter().map(|&x| x > 0.5).collect(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn argmax_takes_the_first_of_ties() {
        assert_eq!(argmax([1.0, 3.0, 3.0, 2.0].into_iter()), 1);
    }

    #[test]
    fn binomial_interval_by_hand() {
        // 3 of 4 right: p = 0.75, se = √(0.75·0.25/4) = √3/8.
        let b = binomial(&[1.0, 1.0, 0.0, 1.0]);
        assert!((b.mean - 0.75).abs() < 1e-12 && (b.se - 3f64.sqrt() / 8.0).abs() < 1e-12);
    }

    #[test]
    fn bad_task_lines_are_reported() {
        let dir = std::env::temp_dir().join(format!("compress-eval-task-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let p = dir.join("bad.jsonl");
        std::fs::write(&p, "{\"doc_id\": 0, \"gold\": 2, \"requests\": [{\"context\": \"a\", \"continuation\": \" b\"}]}\n").unwrap();
        let e = load_jsonl(&p, None).unwrap_err();
        assert!(
            e.to_string().contains("line 1: gold 2 with 1 choices"),
            "{e}"
        );
        std::fs::write(&p, "not json\n").unwrap();
        assert!(load_jsonl(&p, None)
            .unwrap_err()
            .to_string()
            .contains("line 1"));
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
