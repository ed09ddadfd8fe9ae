//! Text generation: greedy decoding and seeded temperature / nucleus (top-p) sampling over a
//! [`LlamaModel`] with a KV cache.

use std::time::{Duration, Instant};

use burn::tensor::{Int, Tensor, TensorData};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

use crate::error::ModelError;
use crate::llama::LlamaModel;

/// How the next token is chosen from the logits.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Sampling {
    /// The most likely token (ties go to the lowest id, as in llama.cpp).
    Greedy,
    /// Nucleus sampling (Holtzman et al. 2020, arXiv:1904.09751): softmax of `logits /
    /// temperature`, keep the most likely tokens whose probabilities sum to `top_p`, renormalise,
    /// draw with a generator seeded by `seed` (same seed, same text).
    TopP {
        /// Softmax temperature (> 0).
        temperature: f32,
        /// Probability mass kept, in (0, 1].
        top_p: f32,
        /// Seed of the random generator.
        seed: u64,
    },
}

/// Options of [`generate`].
#[derive(Clone, Debug)]
pub struct GenerateOptions {
    /// Most tokens to generate after the prompt.
    pub max_new_tokens: usize,
    /// Token choice rule.
    pub sampling: Sampling,
    /// Stop when this token is produced (usually the tokenizer's EOS); it is not returned.
    pub stop_token: Option<u32>,
}

/// The result of [`generate`].
#[derive(Clone, Debug)]
pub struct Generation {
    /// Generated token ids (prompt excluded).
    pub tokens: Vec<u32>,
    /// Time to process the prompt and produce the first token.
    pub prefill: Duration,
    /// Time spent producing the remaining tokens.
    pub decode: Duration,
}

impl Generation {
    /// Decode speed in tokens per second (tokens after the first, over [`Self::decode`]).
    pub fn decode_tokens_per_second(&self) -> f64 {
        let n = self.tokens.len().saturating_sub(1) as f64;
        let s = self.decode.as_secs_f64();
        if s > 0.0 {
            n / s
        } else {
            0.0
        }
    }
}

/// Chooses tokens from logits.
#[derive(Debug)]
pub struct Sampler {
    sampling: Sampling,
    rng: StdRng,
}

impl Sampler {
    /// A sampler for `sampling`; fails on a non-positive temperature or `top_p` outside (0, 1].
    pub fn new(sampling: Sampling) -> Result<Self, ModelError> {
        let seed = match sampling {
            Sampling::Greedy => 0,
            Sampling::TopP {
                temperature,
                top_p,
                seed,
            } => {
                if !(temperature.is_finite() && temperature > 0.0) {
                    return Err(ModelError::InvalidInput(format!(
                        "temperature must be > 0, got {temperature}"
                    )));
                }
                if !(top_p > 0.0 && top_p <= 1.0) {
                    return Err(ModelError::InvalidInput(format!(
                        "top_p must be in (0, 1], got {top_p}"
                    )));
                }
                seed
            }
        };
        Ok(Self {
            sampling,
            rng: StdRng::seed_from_u64(seed),
        })
    }

    /// The next token for one position's logits.
    pub fn sample(&mut self, logits: &[f32]) -> u32 {
        match self.sampling {
            Sampling::Greedy => argmax(logits),
            Sampling::TopP {
                temperature, top_p, ..
            } => {
                let max = logits.iter().copied().fold(f32::NEG_INFINITY, f32::max);
                let mut probs: Vec<(u32, f64)> = logits
                    .iter()
                    .enumerate()
                    .map(|(i, &l)| (i as u32, (((l - max) / temperature) as f64).exp()))
                    .collect();
                probs.sort_by(|a, b| b.1.total_cmp(&a.1).then(a.0.cmp(&b.0)));
                let total: f64 = probs.iter().map(|p| p.1).sum();
                let mut kept = 0.0;
                let mut cut = probs.len();
                for (i, p) in probs.iter().enumerate() {
                    kept += p.1 / total;
                    if kept >= top_p as f64 {
                        cut = i + 1;
                        break;
                    }
                }
                let kept_mass: f64 = probs[..cut].iter().map(|p| p.1).sum();
                let mut u = self.rng.random::<f64>() * kept_mass;
                for &(id, p) in &probs[..cut] {
                    if u < p {
                        return id;
                    }
                    u -= p;
                }
                probs[cut - 1].0
            }
        }
    }
}

/// Index of the largest value; the lowest index among equals.
pub fn argmax(values: &[f32]) -> u32 {
    let mut best = 0;
    for (i, v) in values.iter().enumerate() {
        if *v > values[best] {
            best = i;
        }
    }
    best as u32
}

/// Generates up to `options.max_new_tokens` tokens after `prompt`, calling `on_token` with each as
/// soon as it is chosen (for streaming output).
pub fn generate(
    model: &LlamaModel,
    prompt: &[u32],
    options: &GenerateOptions,
    mut on_token: impl FnMut(u32),
) -> Result<Generation, ModelError> {
    if prompt.is_empty() {
        return Err(ModelError::InvalidInput(
            "the prompt must hold at least one token".into(),
        ));
    }
    let vocab = model.config().vocab_size;
    if let Some(&bad) = prompt.iter().find(|&&t| t as usize >= vocab) {
        return Err(ModelError::InvalidInput(format!(
            "token id {bad} is outside the vocabulary of {vocab}"
        )));
    }
    let device = model.device();
    let mut sampler = Sampler::new(options.sampling)?;
    let mut cache = model.new_cache();
    let mut tokens = Vec::new();
    let start = Instant::now();
    let mut input: Vec<u32> = prompt.to_vec();
    let mut prefill = Duration::ZERO;
    for step in 0..options.max_new_tokens {
        let ids: Vec<i64> = input.iter().map(|&t| t as i64).collect();
        let t = ids.len();
        let x = Tensor::<2, Int>::from_data(TensorData::new(ids, [1, t]), &device);
        let last: Vec<f32> = model
            .forward_cached_last(x, &mut cache)?
            .into_data()
            .try_to_vec::<f32>()
            .map_err(|e| ModelError::InvalidInput(format!("reading logits: {e:?}")))?;
        if let Some(index) = last.iter().position(|v| !v.is_finite()) {
            return Err(ModelError::NonFinite {
                tensor: "logits".into(),
                index,
                value: last[index],
            });
        }
        let next = sampler.sample(&last);
        if step == 0 {
            prefill = start.elapsed();
        }
        if Some(next) == options.stop_token {
            break;
        }
        on_token(next);
        tokens.push(next);
        input = vec![next];
    }
    let decode = start.elapsed().saturating_sub(prefill);
    Ok(Generation {
        tokens,
        prefill,
        decode,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn greedy_picks_first_maximum() {
        let mut s = Sampler::new(Sampling::Greedy).unwrap();
        assert_eq!(s.sample(&[0.1, 3.0, -1.0, 3.0]), 1);
    }

    #[test]
    fn top_p_is_seeded_and_respects_the_nucleus() {
        // Probabilities ∝ exp([4, 3, 0, -5]): the top two hold ~0.96 of the mass, so with
        // top_p = 0.9 tokens 2 and 3 can never be drawn.
        let logits = [4.0f32, 3.0, 0.0, -5.0];
        let draw = |seed| {
            let mut s = Sampler::new(Sampling::TopP {
                temperature: 1.0,
                top_p: 0.9,
                seed,
            })
            .unwrap();
            (0..200).map(|_| s.sample(&logits)).collect::<Vec<_>>()
        };
        let a = draw(11);
        assert_eq!(a, draw(11), "same seed, same draws");
        assert_ne!(a, draw(12), "different seeds differ");
        assert!(a.iter().all(|&t| t < 2));
        // Token 0 has p0/(p0+p1) = 1/(1+e⁻¹) ≈ 0.731 of the nucleus; 200 draws: ±0.1 is > 3 σ.
        let frac0 = a.iter().filter(|&&t| t == 0).count() as f64 / 200.0;
        assert!((frac0 - 0.731).abs() < 0.1, "{frac0}");
    }

    #[test]
    fn invalid_sampling_parameters_are_rejected() {
        assert!(Sampler::new(Sampling::TopP {
            temperature: 0.0,
            top_p: 0.9,
            seed: 0
        })
        .is_err());
        assert!(Sampler::new(Sampling::TopP {
            temperature: 1.0,
            top_p: 1.5,
            seed: 0
        })
        .is_err());
    }
}
