//! Training data: a tokenized text file, or text sampled from the teacher itself (data-free
//! distillation, as in LLM-QAT, Liu et al. 2023, arXiv:2305.17888, which distils on the model's
//! own generations).

use compress_model::generate::{generate, GenerateOptions, Sampling};
use compress_model::LlamaModel;

use crate::error::DistillError;

/// `n` sequences of up to `len` tokens sampled from `teacher` (top-p 0.95 at temperature 1,
/// seeded by `seed + i` for sequence `i`), each starting from `bos` and stopping early at `eos`,
/// concatenated into one stream (each begins with `bos`).
pub fn teacher_samples(
    teacher: &LlamaModel,
    n: usize,
    len: usize,
    bos: u32,
    eos: Option<u32>,
    seed: u64,
    mut progress: impl FnMut(usize, usize),
) -> Result<Vec<u32>, DistillError> {
    if n == 0 || len < 2 {
        return Err(DistillError::Config(format!(
            "teacher samples: n = {n}, len = {len} (need n ≥ 1 and len ≥ 2)"
        )));
    }
    let mut out = Vec::with_capacity(n * len);
    for i in 0..n {
        let options = GenerateOptions {
            max_new_tokens: len - 1,
            sampling: Sampling::TopP {
                temperature: 1.0,
                top_p: 0.95,
                seed: seed.wrapping_add(i as u64),
            },
            stop_token: eos,
        };
        let g = generate(teacher, &[bos], &options, |_| {})?;
        out.push(bos);
        out.extend(g.tokens);
        progress(i + 1, n);
    }
    Ok(out)
}
